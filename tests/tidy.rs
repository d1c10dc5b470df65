//! Checks that keep the docs true as the code moves: every limit is in the limits table, every
//! module is on the map, the pure crates depend on what the map says, warnings and errors go
//! through `src/events.rs`, long files say why, and nothing shipped points outside the
//! repository. No broker needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `.rs` file under `dir` (repo-relative), sorted.
fn rust_files(dir: &str) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    let mut names: Vec<String> = out
        .iter()
        .map(|p| p.strip_prefix(root()).unwrap().display().to_string())
        .collect();
    names.sort();
    names
}

const CODE_DIRS: [&str; 3] = ["src", "topology/src", "state/src"];

/// Names of constants that are limits or waits: `*_MAX`, `*_MIN`, `*_TIMEOUT`, `*_WAIT`.
fn limit_constants() -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for dir in CODE_DIRS {
        for file in rust_files(dir) {
            for line in read(&file).lines() {
                let line = line.trim_start();
                let rest = line
                    .strip_prefix("pub const ")
                    .or_else(|| line.strip_prefix("pub(crate) const "))
                    .or_else(|| line.strip_prefix("const "));
                let Some(name) = rest.and_then(|r| r.split(':').next()) else {
                    continue;
                };
                let limit = ["_MAX", "_MIN", "_TIMEOUT", "_WAIT"]
                    .iter()
                    .any(|suffix| name.ends_with(suffix));
                if limit
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
                {
                    found.insert((name.to_string(), file.clone()));
                }
            }
        }
    }
    found
}

#[test]
fn every_limit_is_in_the_limits_table() {
    let architecture = read("ARCHITECTURE.md");
    let table: String = architecture
        .lines()
        .filter(|l| l.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n");
    let missing: Vec<String> = limit_constants()
        .into_iter()
        .filter(|(name, _)| !table.contains(&format!("`{name}`")))
        .map(|(name, file)| format!("{name} ({file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "limits missing from ARCHITECTURE.md's limits table: {missing:?}"
    );
    assert!(limit_constants().len() > 20, "the scan finds the limits");
}

#[test]
fn every_module_is_on_the_map() {
    let architecture = read("ARCHITECTURE.md");
    let mut missing = Vec::new();
    for dir in CODE_DIRS {
        for file in rust_files(dir) {
            // A folder's mod.rs is named by the folder.
            let name = file.strip_suffix("mod.rs").unwrap_or(&file);
            if !architecture.contains(&format!("`{name}`")) {
                missing.push(name.to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not named in ARCHITECTURE.md: {missing:?}"
    );
}

/// The `Depends on:` line of a crate's section of ARCHITECTURE.md, as a set of crate names.
fn mapped_dependencies(architecture: &str, heading: &str) -> BTreeSet<String> {
    let section = architecture
        .split_once(heading)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no {heading:?} section"))
        .1;
    let line = section
        .lines()
        .find(|l| l.starts_with("Depends on:"))
        .unwrap_or_else(|| panic!("{heading:?} has no `Depends on:` line"));
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The `[dependencies]` of a crate's manifest (not dev-dependencies).
fn manifest_dependencies(manifest: &str) -> BTreeSet<String> {
    let text = read(manifest);
    let section = text.split_once("[dependencies]").unwrap().1;
    section
        .lines()
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once(['=', '.']).map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty() && !k.starts_with('#'))
        .collect()
}

#[test]
fn the_pure_crates_depend_on_what_the_map_says() {
    let architecture = read("ARCHITECTURE.md");
    for (heading, manifest) in [
        ("### `topology/`", "topology/Cargo.toml"),
        ("### `state/`", "state/Cargo.toml"),
    ] {
        assert_eq!(
            manifest_dependencies(manifest),
            mapped_dependencies(&architecture, heading),
            "{manifest} against ARCHITECTURE.md {heading}"
        );
    }
    for forbidden in ["rdkafka", "tokio", "reqwest", "axum"] {
        for manifest in ["topology/Cargo.toml", "state/Cargo.toml"] {
            assert!(
                !manifest_dependencies(manifest).contains(forbidden),
                "{manifest} must not depend on {forbidden}"
            );
        }
    }
    assert!(!manifest_dependencies("topology/Cargo.toml").contains("rocksdb"));
}

#[test]
fn warnings_and_errors_go_through_events() {
    let mut offenders = Vec::new();
    for file in rust_files("src") {
        if file == "src/events.rs" {
            continue;
        }
        for (n, line) in read(&file).lines().enumerate() {
            if ["tracing::warn!", "tracing::error!", " warn!(", " error!("]
                .iter()
                .any(|m| line.contains(m))
            {
                offenders.push(format!("{file}:{}", n + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "log warnings and errors through an event struct in src/events.rs: {offenders:?}"
    );
}

/// Files under src/ stay under about 600 lines, or say at their top why they are longer.
#[test]
fn long_files_say_why() {
    const LINES_MAX: usize = 650;
    let mut offenders = Vec::new();
    for dir in CODE_DIRS {
        for file in rust_files(dir) {
            let text = read(&file);
            let head: String = text.lines().take(15).collect::<Vec<_>>().join("\n");
            if text.lines().count() > LINES_MAX && !head.contains("Longer than") {
                offenders.push(format!("{file} ({} lines)", text.lines().count()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "split these, or say at the top why they are long (\"Longer than ... because\"): {offenders:?}"
    );
}

#[test]
fn nothing_shipped_points_outside_the_repository() {
    let mut shipped = vec![
        "README.md".to_string(),
        "ARCHITECTURE.md".to_string(),
        "BENCHMARKS.md".to_string(),
    ];
    for dir in ["docs", "deploy"] {
        let mut stack = vec![root().join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    shipped.push(path.strip_prefix(root()).unwrap().display().to_string());
                }
            }
        }
    }
    for dir in CODE_DIRS {
        shipped.extend(rust_files(dir));
    }
    let mut offenders = Vec::new();
    for file in &shipped {
        let Ok(text) = std::fs::read_to_string(root().join(file)) else {
            continue; // not text
        };
        for (n, line) in text.lines().enumerate() {
            if line.contains("../shared") || line.contains("SPEC.md") {
                offenders.push(format!("{file}:{}", n + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "these point outside the repository (a clone has no ../shared): {offenders:?}"
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_ackwatch"))
        .args(["audit", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        !help.contains("SPEC.md") && !help.contains("../shared"),
        "ackwatch audit --help points outside the repository:\n{help}"
    );
}
