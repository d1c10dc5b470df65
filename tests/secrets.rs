//! Secrets never appear anywhere: every way a configuration value used to leak, each with a
//! secret string of its own, and the check that the string is in no output of ackwatch —
//! errors, `check` output, logs at debug level (librdkafka's own debug logs included),
//! `/metrics`, `/runs`.

mod support;

use std::path::Path;
use std::time::Duration;

use support::facts::*;
use support::{LiveTopics, Processor};

/// `ackwatch <args>` with `env`: (success, stdout + stderr).
fn ackwatch_with_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ackwatch"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn assert_absent(secret: &str, text: &str, place: &str) {
    assert!(
        !text.contains(secret),
        "{place} shows the secret {secret:?}:\n{text}"
    );
}

/// A config that fails to load, for `check` and `run` alike: the error names `must_name` and
/// never shows `secret`.
fn refused(dir: &Path, toml: &str, secret: &str, must_name: &str) {
    let path = dir.join(format!("{}.toml", support::unique("refused")));
    std::fs::write(&path, toml).unwrap();
    for command in ["check", "run"] {
        let (ok, text) = ackwatch_with_env(&[command, "--config", path.to_str().unwrap()], &[]);
        assert!(!ok, "{command} accepted {toml}");
        assert!(text.contains(must_name), "{command}: {text}");
        assert_absent(secret, &text, command);
    }
}

#[test]
fn configuration_errors_name_keys_and_positions_never_values() {
    let dir = tempfile::tempdir().unwrap();
    // A misspelt key: librdkafka's message quotes the value.
    refused(
        dir.path(),
        "[kafka.properties]\n\"sasl.pasword\" = \"misspelt-secret-1\"\n",
        "misspelt-secret-1",
        "sasl.pasword",
    );
    // A property librdkafka refuses the value of.
    refused(
        dir.path(),
        "[kafka.properties]\n\"security.protocol\" = \"refused-secret-2\"\n",
        "refused-secret-2",
        "security.protocol",
    );
    // A TOML syntax error on the line of a password: the position, not the line.
    refused(
        dir.path(),
        "[kafka.properties]\n\"sasl.password\" = \"syntax-secret-3\n",
        "syntax-secret-3",
        "line 2",
    );
    // A wrong type next to a URL with credentials: the config crate's message quotes values.
    refused(
        dir.path(),
        "[alerts]\nalertmanager_urls = \"http://am:typed-secret-4@127.0.0.1:9093\"\n",
        "typed-secret-4",
        "alertmanager_urls",
    );
    // The environment: a property the old mapping turned into `sasl_password`, now accepted.
    let path = dir.path().join("empty.toml");
    std::fs::write(&path, "").unwrap();
    let (ok, text) = ackwatch_with_env(
        &["topology", "--config", path.to_str().unwrap()],
        &[("ACKWATCH__KAFKA__PROPERTIES__SASL_PASSWORD", "env-secret-5")],
    );
    assert!(ok, "{text}");
    assert_absent("env-secret-5", &text, "topology");
}

#[test]
fn a_running_processor_shows_no_secret_anywhere() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let topics = rt.block_on(LiveTopics::create("secrets", 1));
    let app = support::unique("app-secrets");
    let (config, http) = support::live_config(dir.path(), &topics, &app, "i1", "at_least_once", "");
    // librdkafka's own debug logs of its configuration and security, too.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen(
        "[kafka.properties]\n",
        "[kafka.properties]\n\"debug\" = \"generic,conf,security,broker\"\n\"sasl.username\" = \"toml-user-secret-6\"\n",
        1,
    );
    let closed_port = support::free_port();
    let ws_port = support::free_port();
    let text = text.replace(
        "[http]",
        &format!(
            "[worldservice]\nurl = \"http://ws:ws-secret-7@127.0.0.1:{ws_port}/signals\"\n[http]"
        ),
    );
    std::fs::write(&config, text).unwrap();
    let password_file = dir.path().join("sasl-password");
    std::fs::write(&password_file, "file-secret-8\n").unwrap();
    let urls = format!(
        "http://am:am-secret-9@127.0.0.1:{closed_port},{}",
        support::alertmanager()
    );
    let env = [
        ("RUST_LOG", "debug"),
        ("ACKWATCH__KAFKA__PROPERTIES__SASL_MECHANISM", "PLAIN"),
        (
            "ACKWATCH__KAFKA__PROPERTY_FILES__SASL_PASSWORD",
            password_file.to_str().unwrap(),
        ),
        ("ACKWATCH__ALERTS__ALERTMANAGER_URLS", urls.as_str()),
    ];
    let secrets = [
        "toml-user-secret-6",
        "ws-secret-7",
        "file-secret-8",
        "am-secret-9",
    ];
    let mut processor = Processor::start_with_env(&config, &http, &env);
    processor.wait_ready(Duration::from_secs(60));
    // Both Alertmanager URLs were posted to (the list came through the environment), the one
    // with credentials failing: its warning and its label are written.
    let metrics = wait_for(|| {
        let (_, text) = support::http_get(&http, "/metrics")?;
        let posted = |result: &str| {
            text.contains(&format!("ackwatch_alert_posts_total{{result=\"{result}\""))
        };
        (posted("error") && posted("ok")).then_some(text)
    });
    assert!(
        metrics.contains(&format!("url=\"http://127.0.0.1:{closed_port}/\"")),
        "the URL label without its credentials:\n{metrics}"
    );
    let runs = support::http_get(&http, "/runs/w1").unwrap().1;
    // `check` beside the running processor lists every problem at once, URLs included
    // (without their credentials): the port in use, the closed Alertmanager, WorldService.
    let (check_ok, check) =
        ackwatch_with_env(&["check", "--config", config.to_str().unwrap()], &env);
    assert!(!check_ok, "{check}");
    for problem in [
        format!("problem: http.listen {http} cannot be bound"),
        format!("problem: Alertmanager http://127.0.0.1:{closed_port}/ cannot be reached"),
        format!("problem: WorldService http://127.0.0.1:{ws_port}/signals cannot be reached"),
        "3 problem(s) found".to_string(),
    ] {
        assert!(check.contains(&problem), "{problem:?} not in:\n{check}");
    }
    assert!(check.contains("ok: reached Kafka"), "{check}");
    assert!(processor.terminate(Duration::from_secs(30)).success());
    let log = processor.log_text();
    assert!(
        log.contains("delivering signals to WorldService")
            && log.contains("cannot post alerts")
            && log.contains("\"level\":\"DEBUG\""),
        "the log has the lines that used to leak, at debug level:\n{log}"
    );
    for secret in secrets {
        assert_absent(secret, &log, "the log");
        assert_absent(secret, &metrics, "/metrics");
        assert_absent(secret, &runs, "/runs");
        assert_absent(secret, &check, "check");
    }
}
