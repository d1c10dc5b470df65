//! Signals to WorldService over HTTP, end to end: `ackwatch run` on the real broker with
//! `[worldservice] url` pointing at a stand-in WorldService (here, on 127.0.0.1) that fails its
//! first posts. Every signal on the signal topic arrives, in order, with its idempotency key in
//! the header; failures are retried and counted; a restart re-delivers nothing already accepted.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ackwatch_topology::Policy;
use axum::http::{HeaderMap, StatusCode};
use support::facts::*;
use support::{LiveTopics, Processor};

/// What the stand-in WorldService saw: every post, and the accepted ones.
#[derive(Default)]
struct Seen {
    posts: usize,
    accepted: Vec<(String, String)>,
}

/// Serves `POST /signals` on 127.0.0.1: 503 for the first `fail_first` posts, then 200.
fn stand_in_worldservice(fail_first: usize) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/signals", listener.local_addr().unwrap());
    let state = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let handler = move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    let mut seen = state.lock().unwrap();
                    seen.posts += 1;
                    if seen.posts <= fail_first {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let key = headers
                        .get("idempotency-key")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    seen.accepted.push((key, body));
                    StatusCode::OK
                }
            };
            let app = axum::Router::new().route("/signals", axum::routing::post(handler));
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (url, seen)
}

fn metric(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn signals_reach_worldservice_in_order_with_their_keys_through_failures_and_restarts() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let input =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scenarios/late_ack.kcat.jsonl");
    let topics = rt.block_on(LiveTopics::create("worldservice", 2));
    rt.block_on(support::produce_kcat(&read_kcat(&input), &topics));
    let (url, seen) = stand_in_worldservice(3);

    let app = support::unique("app-worldservice");
    let extra =
        format!("\n[worldservice]\nurl = {url:?}\nretry_initial_ms = 50\nretry_max_ms = 400\n");
    let (config, http) =
        support::live_config(dir.path(), &topics, &app, "i1", "at_least_once", &extra);
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));

    let want = reference(&input, Policy::default(), now_ms());
    let (_, signals) = read_outputs(&topics, &want, false);
    assert!(
        signals.len() >= 2,
        "late_ack pauses and resumes: {} signals",
        signals.len()
    );
    let expected: Vec<(String, String)> = signals
        .iter()
        .map(|s| {
            (
                s.header("ackwatch.idempotency_key").unwrap().to_string(),
                String::from_utf8(s.value.clone()).unwrap(),
            )
        })
        .collect();
    let accepted = wait_for(|| {
        let seen = seen.lock().unwrap();
        (seen.accepted.len() >= expected.len()).then(|| seen.accepted.clone())
    });
    assert_eq!(
        accepted, expected,
        "every signal, in topic order, key in the header"
    );
    assert!(accepted[0].0.contains(":pause:"), "{accepted:?}");
    assert_eq!(
        seen.lock().unwrap().posts,
        expected.len() + 3,
        "three 503s retried, no more"
    );

    let (_, metrics) = support::http_get(&http, "/metrics").unwrap();
    assert_eq!(
        metric(
            &metrics,
            "ackwatch_worldservice_posts_total{result=\"error\"}"
        ),
        Some(3),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "ackwatch_worldservice_posts_total{result=\"ok\"}"),
        Some(expected.len() as u64)
    );
    assert_eq!(
        metric(
            &metrics,
            "ackwatch_worldservice_signals_total{outcome=\"delivered\"}"
        ),
        Some(expected.len() as u64)
    );
    let log = processor.log_text();
    assert!(
        log.contains("cannot post a signal to WorldService; retrying"),
        "{log}"
    );

    // A clean stop commits what was delivered: the next start posts only what is new (a fresh
    // activation nobody ACKs, paused by the wall clock), not the signals accepted before.
    assert!(
        processor.terminate(Duration::from_secs(30)).success(),
        "{}",
        processor.log_text()
    );
    let mut processor = Processor::start(&config, &http);
    processor.wait_ready(Duration::from_secs(60));
    let fresh = fresh_activation("ws_world", "r9");
    rt.block_on(support::produce_kcat(&[fresh], &topics));
    let after = wait_for(|| {
        let seen = seen.lock().unwrap();
        (seen.accepted.len() > expected.len()).then(|| seen.accepted.clone())
    });
    std::thread::sleep(Duration::from_secs(2));
    let after_quiet = seen.lock().unwrap().accepted.clone();
    assert_eq!(after, after_quiet, "nothing more arrived");
    assert_eq!(&after[..expected.len()], &expected[..]);
    assert_eq!(
        after.len(),
        expected.len() + 1,
        "{after:?}\n{}",
        processor.log_text()
    );
    assert!(
        after[expected.len()]
            .0
            .starts_with("ackwatch:signal:ws_world:r9:pause:"),
        "{after:?}"
    );
    assert!(processor.terminate(Duration::from_secs(30)).success());
}
