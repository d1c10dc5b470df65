//! Records the commit the binary was built from (`ackwatch_build_info{revision}`, the audit
//! report's provenance): `ACKWATCH_REVISION` when set (a container build without `.git`), else
//! `git rev-parse HEAD`, else `unknown`.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=ACKWATCH_REVISION");
    // A new commit changes .git/logs/HEAD; a checkout without .git reruns only on build.rs.
    for path in [".git/HEAD", ".git/logs/HEAD"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    let revision = std::env::var("ACKWATCH_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ACKWATCH_REVISION={revision}");
}
