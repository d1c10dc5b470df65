//! Signals to WorldService over HTTP (optional; `[worldservice] url`, off when empty).
//!
//! Shaped like a Kafka Connect HTTP sink: a consumer of its own group
//! (`<application_id>-worldservice`) reads the signal topic (read_committed) and POSTs each
//! record's value as JSON, with its idempotency key in a header. An offset is stored only after
//! WorldService accepted the signal (2xx) or rejected it for good (4xx other than 408/429), so:
//! - delivery never blocks processing (another consumer, on the HTTP runtime);
//! - nothing is lost to a crash or an outage of WorldService: the topic holds the signal until
//!   it is delivered, and a restart re-delivers at most what was not committed (WorldService
//!   de-duplicates by the idempotency key);
//! - transient failures (connection errors, timeouts, 5xx, 408, 429) are retried with exponential
//!   backoff and jitter, in topic order, for as long as the signal is current: one older than
//!   `max_signal_age_ms` (by its record timestamp) is skipped and counted, so a long outage or a
//!   first start does not replay stale pauses into WorldService.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;

use crate::events::{SignalDelivered, SignalExpired, SignalPostFailed, SignalRejected};
use crate::metrics::Metrics;
use crate::settings::{ClientKind, Settings};

/// What became of one signal.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Accepted,
    Rejected(u16),
    /// Shutdown came first; the offset is not stored, the next start delivers it.
    Interrupted,
}

/// Whether an HTTP status means "try again" (the request may succeed later) rather than "never".
pub fn is_transient(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// The wait before retry `attempt` (0-based): exponential from `initial_ms`, capped at `max_ms`,
/// then a random point in its upper half (jitter, so many instances do not retry in step).
pub fn backoff(attempt: u32, initial_ms: u64, max_ms: u64, random: u64) -> Duration {
    let ceiling = initial_ms
        .saturating_mul(1u64 << attempt.min(32))
        .min(max_ms)
        .max(1);
    let half = ceiling / 2;
    Duration::from_millis(ceiling - half + random % (half + 1))
}

fn random_u64(n: u64) -> u64 {
    // A per-process random key (std's RandomState) hashing a counter: enough for jitter.
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    h.write_u64(n);
    h.finish()
}

fn idempotency_key(m: &BorrowedMessage<'_>) -> Option<String> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == "ackwatch.idempotency_key")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Consumes the signal topic and delivers each signal until `stop` is set.
pub async fn deliver_loop(settings: Settings, metrics: Arc<Metrics>, stop: Arc<AtomicBool>) {
    if let Err(e) = deliver_loop_inner(&settings, &metrics, &stop).await {
        // Processing goes on without HTTP delivery; the signal topic still has every signal.
        crate::events::WorldServiceDeliveryStopped { error: &e }.emit(&metrics);
    }
}

async fn deliver_loop_inner(
    settings: &Settings,
    metrics: &Metrics,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let ws = &settings.worldservice;
    let mut config = settings.client_config(ClientKind::Consumer, "worldservice");
    config
        .set(
            "group.id",
            format!("{}-worldservice", settings.runtime.application_id),
        )
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    if settings.runtime.static_membership {
        config.set(
            "group.instance.id",
            format!("{}-worldservice", settings.runtime.instance_id()),
        );
    }
    let consumer: StreamConsumer = config
        .create()
        .context("cannot create the WorldService delivery consumer")?;
    consumer
        .subscribe(&[&settings.topics.signal])
        .context("cannot subscribe to the signal topic")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(ws.timeout_ms))
        .build()
        .context("cannot build the HTTP client")?;
    tracing::info!(
        url = crate::secrets::display_url(&ws.url).as_str(),
        "delivering signals to WorldService"
    );
    let mut draws = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let message = match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
        {
            Err(_) => continue, // nothing new: look at `stop` again
            Ok(Err(e)) => {
                crate::events::SignalTopicReadFailed { error: &e }.emit();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Ok(Ok(m)) => m,
        };
        let key = idempotency_key(&message).unwrap_or_default();
        let age_ms = message
            .timestamp()
            .to_millis()
            .map_or(0, |t| crate::runtime::wall_ms() - t);
        if age_ms > ws.max_signal_age_ms as i64 {
            SignalExpired { key: &key, age_ms }.emit(metrics);
        } else {
            let body = message.payload().unwrap_or_default().to_vec();
            let mut attempt = 0u32;
            let outcome = loop {
                let sent = client
                    .post(&ws.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(ws.idempotency_header.as_str(), key.as_str())
                    .body(body.clone())
                    .send()
                    .await;
                let failure = match sent {
                    Ok(r) if r.status().is_success() => break Delivery::Accepted,
                    Ok(r) if !is_transient(r.status().as_u16()) => {
                        break Delivery::Rejected(r.status().as_u16())
                    }
                    Ok(r) => format!("status {}", r.status()),
                    // Without the URL: it may carry credentials.
                    Err(e) => e.without_url().to_string(),
                };
                draws += 1;
                let wait = backoff(
                    attempt,
                    ws.retry_initial_ms,
                    ws.retry_max_ms,
                    random_u64(draws),
                );
                SignalPostFailed {
                    key: &key,
                    error: &failure,
                    attempt,
                    retry_in: wait,
                }
                .emit(metrics);
                if sleep_unless_stopped(wait, stop).await {
                    break Delivery::Interrupted;
                }
                attempt = attempt.saturating_add(1);
            };
            match outcome {
                Delivery::Accepted => SignalDelivered {
                    key: &key,
                    attempts: attempt + 1,
                }
                .emit(metrics),
                Delivery::Rejected(status) => SignalRejected { key: &key, status }.emit(metrics),
                Delivery::Interrupted => break,
            }
        }
        consumer
            .store_offset_from_message(&message)
            .context("cannot store the delivered signal's offset")?;
    }
    // Closing commits the stored offsets (auto commit), so a restart does not re-deliver.
    drop(consumer);
    Ok(())
}

/// Sleeps `wait`, waking early when `stop` is set; true when stopped.
async fn sleep_unless_stopped(wait: Duration, stop: &AtomicBool) -> bool {
    let step = Duration::from_millis(100);
    let mut left = wait;
    while !left.is_zero() {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let nap = left.min(step);
        tokio::time::sleep(nap).await;
        left -= nap;
    }
    stop.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_statuses_are_retried_the_rest_are_final() {
        for (status, transient) in [
            (500, true),
            (503, true),
            (408, true),
            (429, true),
            (400, false),
            (404, false),
            (409, false),
            (200, false),
        ] {
            assert_eq!(is_transient(status), transient, "{status}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_jitters_within_the_upper_half() {
        let check = |attempt, random, expected_ms: u64| {
            assert_eq!(
                backoff(attempt, 100, 30_000, random),
                Duration::from_millis(expected_ms),
                "attempt {attempt}, random {random}"
            )
        };
        check(0, 0, 50);
        check(0, 50, 100);
        check(0, 51, 50);
        check(3, 0, 400);
        check(3, 400, 800);
        check(20, 0, 15_000);
        check(20, 15_000, 30_000);
        check(u32::MAX, 7, 15_007);
        for n in 0..1000 {
            let d = backoff(4, 100, 30_000, random_u64(n)).as_millis() as u64;
            assert!((800..=1600).contains(&d), "{d}");
        }
    }
}
