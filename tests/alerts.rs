//! Alerts in the real Alertmanager (Debian's, started by scripts/alertmanager.sh on 127.0.0.1;
//! a private one, so it can be stopped): a missing ACK raises an alert Alertmanager shows, the
//! late ACK resolves it, and an alert raised while Alertmanager is down is delivered once it is
//! back (the firing set is derived from the run states, never from a queue of sends).

mod support;

use std::time::Duration;

use ackwatch::audit::kcat::KcatRecord;
use ackwatch_topology::time::format_rfc3339_ms;
use serde_json::Value;
use support::facts::*;
use support::{LiveTopics, Processor};

fn record(topic: &str, world: &str, payload: String) -> KcatRecord {
    KcatRecord {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        tstype: None,
        ts: Some(now_ms()),
        broker: None,
        key: Some(world.into()),
        payload: Some(payload),
        headers: None,
    }
}

fn activation(world: &str) -> KcatRecord {
    activation_of(world, "r1")
}

fn activation_of(world: &str, run: &str) -> KcatRecord {
    let payload = format!(
        r#"{{"type":"ActivationUpdated","version":1,"world_id":"{world}","run_id":"{run}","requires_ack":true,"sequence":1,"phase":"freeze","etag":"e1","ts":"{}"}}"#,
        format_rfc3339_ms(now_ms())
    );
    record("activation", world, payload)
}

fn ack(world: &str) -> KcatRecord {
    let payload = format!(
        r#"{{"type":"ActivationAck","version":1,"world_id":"{world}","run_id":"r1","sequence":1,"phase":"freeze","ack_ts":"{}"}}"#,
        format_rfc3339_ms(now_ms())
    );
    record("control.activation.ack", world, payload)
}

/// The alerts Alertmanager lists for `world` (its API leaves out resolved ones).
fn listed(address: &str, world: &str) -> Option<Vec<Value>> {
    let (status, body) = support::http_get(
        address,
        &format!("/api/v2/alerts?filter=world_id%3D%22{world}%22"),
    )?;
    (status == 200)
        .then(|| {
            serde_json::from_str::<Value>(&body)
                .ok()?
                .as_array()
                .cloned()
        })
        .flatten()
}

/// A private Alertmanager (started by the project's script) and a processor posting to it every
/// 2 s, with `extra` appended to its `[alerts]` section (or after it): the Alertmanager, its URL,
/// the topics, the ready processor.
fn with_alertmanager(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    prefix: &str,
    extra: &str,
) -> (support::Scripted, String, LiveTopics, Processor) {
    let am = support::Scripted {
        script: "alertmanager.sh",
        dir: dir.join("alertmanager"),
    };
    let url = am.run("start");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let topics = rt.block_on(LiveTopics::create(prefix, 1));
    let (config, http) = support::live_config(
        dir,
        &topics,
        &support::unique(&format!("app-{prefix}")),
        "i1",
        "at_least_once",
        "",
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += &format!("[alerts]\nalertmanager_urls = [{url:?}]\nresend_interval_ms = 2000\n{extra}");
    std::fs::write(&config, text).unwrap();
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));
    (am, url, topics, processor)
}

#[test]
fn a_gap_alerts_resolves_and_survives_an_alertmanager_restart() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (am, url, topics, mut processor) = with_alertmanager(
        &rt,
        dir.path(),
        "alerts",
        "runbook_url = \"https://runbooks.example/ackwatch\"\n",
    );
    let address = url.strip_prefix("http://").unwrap().to_string();
    let http = processor.http.clone();

    // An activation without its ACK: ack_missing after 3 s, an alert in Alertmanager.
    rt.block_on(support::produce_kcat(&[activation("am_w1")], &topics));
    let alerts = wait_for(|| listed(&address, "am_w1").filter(|a| !a.is_empty()));
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let labels = &alerts[0]["labels"];
    assert_eq!(labels["alertname"], "AckwatchFinding");
    assert_eq!(labels["kind"], "ack_missing");
    assert_eq!(labels["run_id"], "r1");
    assert_eq!(labels["severity"], "warning");
    assert_eq!(alerts[0]["annotations"]["sequences"], "1");
    assert_eq!(
        alerts[0]["annotations"]["runbook_url"],
        "https://runbooks.example/ackwatch#ack_missing"
    );
    assert_eq!(alerts[0]["status"]["state"], "active");

    // The late ACK resolves it.
    rt.block_on(support::produce_kcat(&[ack("am_w1")], &topics));
    wait_for(|| listed(&address, "am_w1").filter(|a| a.is_empty()));

    // Alertmanager down while a second run's ACK goes missing; back up, the alert arrives.
    am.run("stop");
    rt.block_on(support::produce_kcat(&[activation("am_w2")], &topics));
    std::thread::sleep(Duration::from_secs(6));
    let (_, metrics) = support::http_get(&http, "/metrics").unwrap();
    assert!(metrics.contains("ackwatch_alerts_firing 1"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "ackwatch_alert_posts_total{{result=\"error\",url=\"{url}\"}}"
        )),
        "{metrics}"
    );
    assert_eq!(am.run("restart"), url);
    let alerts = wait_for(|| listed(&address, "am_w2").filter(|a| !a.is_empty()));
    assert_eq!(alerts[0]["labels"]["kind"], "ack_missing");
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{}",
        processor.log_text()
    );
}

/// semantics §3: an escalation (rollback_after_ms passed, auto_rollback off) ends the warning
/// alert at once; Alertmanager then lists exactly one alert for the run, the critical one, and
/// never shows the warning copy active beside it (it would later be reported "resolved" for a
/// finding that got worse).
#[test]
fn an_escalation_replaces_the_warning_alert_instead_of_adding_one() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (_am, url, topics, mut processor) = with_alertmanager(
        &rt,
        dir.path(),
        "escalation",
        "[policy]\nrollback_after_ms = 4000\nauto_rollback = false\n",
    );
    let address = url.strip_prefix("http://").unwrap().to_string();

    rt.block_on(support::produce_kcat(&[activation("esc_w1")], &topics));
    let warning = wait_for(|| listed(&address, "esc_w1").filter(|a| !a.is_empty()));
    assert_eq!(warning.len(), 1, "{warning:?}");
    assert_eq!(warning[0]["labels"]["severity"], "warning");
    // No alerts.runbook_url: the link is the runbook this instance serves, and it answers.
    let link = warning[0]["annotations"]["runbook_url"].as_str().unwrap().to_string();
    assert_eq!(link, format!("http://{}/runbooks/ack_missing.md", processor.http));
    let (status, page) = support::http_get(&processor.http, "/runbooks/ack_missing.md").unwrap();
    assert_eq!(status, 200);
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/runbooks/ack_missing.md"),
    )
    .unwrap();
    assert_eq!(page, shipped);
    let (status, _) = support::http_get(&processor.http, "/runbooks/nope.md").unwrap();
    assert_eq!(status, 404);
    // Escalated 4 s after the pause: from then on only the critical copy is listed.
    let critical = wait_for(|| {
        listed(&address, "esc_w1")
            .filter(|a| a.iter().any(|x| x["labels"]["severity"] == "critical"))
    });
    assert_eq!(
        critical.len(),
        1,
        "the warning copy ended at once: {critical:?}"
    );
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(500));
        let now = listed(&address, "esc_w1").unwrap();
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(now[0]["labels"]["severity"], "critical", "{now:?}");
        assert_eq!(now[0]["status"]["state"], "active");
    }
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{}",
        processor.log_text()
    );
}

/// A bad Gateway pauses every run of its world: Alertmanager lists one AckwatchWorldPaused for
/// the world, saying how many runs, and (with the example config's inhibition rule, which the
/// project's Alertmanager script installs as shipped) the runs' own alerts are suppressed, so
/// the world is one page. A world with one paused run has no world alert.
#[test]
fn many_paused_runs_of_one_world_are_one_alert() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (_am, url, topics, mut processor) = with_alertmanager(&rt, dir.path(), "world", "");
    let address = url.strip_prefix("http://").unwrap().to_string();

    let runs = ["r1", "r2", "r3"].map(|r| activation_of("wp_w1", r));
    rt.block_on(support::produce_kcat(&runs, &topics));
    rt.block_on(support::produce_kcat(&[activation("wp_w2")], &topics));
    let world_alert = |alerts: &[Value]| {
        alerts
            .iter()
            .filter(|a| a["labels"]["alertname"] == "AckwatchWorldPaused")
            .cloned()
            .collect::<Vec<_>>()
    };
    // Every run's alert and the world's, the runs' suppressed by the world's.
    let alerts = wait_for(|| {
        listed(&address, "wp_w1").filter(|a| {
            a.len() == 4
                && a.iter()
                    .filter(|x| x["labels"]["alertname"] == "AckwatchFinding")
                    .all(|x| x["status"]["state"] == "suppressed")
        })
    });
    let world = world_alert(&alerts);
    assert_eq!(world.len(), 1, "{alerts:#?}");
    assert_eq!(world[0]["labels"]["world_id"], "wp_w1");
    assert_eq!(world[0]["annotations"]["paused_runs"], "3", "{world:?}");
    assert_eq!(world[0]["annotations"]["runs"], "r1,r2,r3", "{world:?}");
    assert_eq!(world[0]["status"]["state"], "active");
    for finding in alerts.iter().filter(|a| a["labels"]["alertname"] == "AckwatchFinding") {
        let by = finding["status"]["inhibitedBy"].as_array().unwrap();
        assert_eq!(by.len(), 1, "{finding}");
        assert_eq!(by[0], world[0]["fingerprint"], "{finding}");
    }
    // One paused run: its own alert, active; no world alert.
    let single = wait_for(|| listed(&address, "wp_w2").filter(|a| !a.is_empty()));
    assert!(world_alert(&single).is_empty(), "{single:#?}");
    assert_eq!(single.len(), 1, "{single:#?}");
    assert_eq!(single[0]["status"]["state"], "active", "{single:#?}");
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{}",
        processor.log_text()
    );
}
