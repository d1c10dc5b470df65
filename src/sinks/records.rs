//! What the live processor writes to Kafka (docs/semantics.md §3): gap events, signals and dead letters, as
//! versioned JSON envelopes keyed by `world_id`.
//!
//! An envelope holds only the fact, so the same fact is the same bytes whatever emitted it (a
//! restart, a replay, another instance). When it was emitted is a record header
//! (`ackwatch.emitted_at`), not part of the value.

use ackwatch_topology::decode::Invalid;
use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{Action, Output};
use serde_json::json;

/// Largest dead-letter value: a poison record larger than this is cut to this many bytes, with
/// its full length in the `ackwatch.original_bytes` header (its origin headers point at the full
/// record while the input topic retains it). Cost: this much memory per in-flight dead letter;
/// it stays under the broker's default `message.max.bytes` (1 MiB) with room for headers.
pub const DEAD_LETTER_VALUE_BYTES_MAX: usize = 900 * 1024;

/// Which output topic a record goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Gap,
    Signal,
}

/// An output record ready to produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub sink: Sink,
    pub key: String,
    pub value: String,
    /// The idempotency key, also sent as the `ackwatch.idempotency_key` header.
    pub idempotency_key: String,
}

/// Encodes an engine output for its topic; outputs that are not records (latency samples,
/// escalations, dropped runs) give `None`.
pub fn encode(output: &Output) -> Option<Encoded> {
    match output {
        Output::Detected(d) => Some(Encoded {
            sink: Sink::Gap,
            key: d.world_id.clone(),
            value: json!({
                "type": "ActivationGapDetected",
                "version": 1,
                "world_id": d.world_id,
                "run_id": d.run_id,
                "kind": d.kind.as_str(),
                "sequences": d.sequences,
                "phase": d.phase,
                "blocked_by": d.blocked_by,
                "detected_at": format_rfc3339_ms(d.detected_at),
                "idempotency_key": d.idempotency_key,
            })
            .to_string(),
            idempotency_key: d.idempotency_key.clone(),
        }),
        Output::Resolved(r) => Some(Encoded {
            sink: Sink::Gap,
            key: r.world_id.clone(),
            value: json!({
                "type": "ActivationGapResolved",
                "version": 1,
                "world_id": r.world_id,
                "run_id": r.run_id,
                "kind": r.kind.as_str(),
                "sequences": r.sequences,
                "phase": r.phase,
                "blocked_by": r.blocked_by,
                "detected_at": format_rfc3339_ms(r.detected_at),
                "resolved_at": format_rfc3339_ms(r.resolved_at),
                "idempotency_key": r.idempotency_key,
            })
            .to_string(),
            idempotency_key: r.idempotency_key.clone(),
        }),
        Output::Signal(s) => Some(Encoded {
            sink: Sink::Signal,
            key: s.world_id.clone(),
            value: json!({
                "type": signal_type(s.action),
                "version": 1,
                "world_id": s.world_id,
                "run_id": s.run_id,
                "action": s.action.as_str(),
                "episode": s.episode,
                "at": format_rfc3339_ms(s.at),
                "idempotency_key": s.idempotency_key,
            })
            .to_string(),
            idempotency_key: s.idempotency_key.clone(),
        }),
        Output::Escalated { .. }
        | Output::Released { .. }
        | Output::Latency { .. }
        | Output::RunDropped { .. } => None,
    }
}

pub fn signal_type(action: Action) -> &'static str {
    match action {
        Action::Pause => "ApplyPauseRequested",
        Action::Rollback => "ApplyRollbackRequested",
        Action::Resume => "ApplyResumeAllowed",
    }
}

/// Where a dead letter came from.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The headers of a dead letter: reason, detail, origin, and the original length when cut.
pub fn dead_letter_headers(
    invalid: &Invalid,
    origin: Origin<'_>,
    value_len: usize,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("ackwatch.reason", invalid.reason.label().to_string()),
        ("ackwatch.detail", invalid.detail.clone()),
        ("ackwatch.topic", origin.topic.to_string()),
        ("ackwatch.partition", origin.partition.to_string()),
        ("ackwatch.offset", origin.offset.to_string()),
    ];
    if value_len > DEAD_LETTER_VALUE_BYTES_MAX {
        headers.push(("ackwatch.original_bytes", value_len.to_string()));
    }
    headers
}

/// The value a dead letter carries: the record's value, cut to [`DEAD_LETTER_VALUE_BYTES_MAX`].
pub fn dead_letter_value(value: &[u8]) -> &[u8] {
    &value[..value.len().min(DEAD_LETTER_VALUE_BYTES_MAX)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ackwatch_topology::{FindingKind, GapDetected, GapResolved, Phase, RunKey, Signal};

    fn check(output: Output, expected: Option<(Sink, &str)>) {
        let got = encode(&output).map(|e| {
            assert_eq!(
                e.key,
                serde_json::from_str::<serde_json::Value>(&e.value).unwrap()["world_id"]
            );
            (e.sink, e.value)
        });
        let expected = expected.map(|(s, v)| {
            (
                s,
                serde_json::from_str::<serde_json::Value>(v)
                    .unwrap()
                    .to_string(),
            )
        });
        assert_eq!(got, expected);
    }

    #[test]
    fn envelopes() {
        check(
            Output::Detected(GapDetected {
                world_id: "w".into(),
                run_id: "r".into(),
                kind: FindingKind::AckMissing,
                sequences: vec![2, 3],
                phase: Some(Phase::Freeze),
                blocked_by: Some(1),
                detected_at: 1_000,
                idempotency_key: "k1".into(),
            }),
            Some((
                Sink::Gap,
                r#"{"type":"ActivationGapDetected","version":1,"world_id":"w","run_id":"r","kind":"ack_missing",
                    "sequences":[2,3],"phase":"freeze","blocked_by":1,"detected_at":"1970-01-01T00:00:01.000Z","idempotency_key":"k1"}"#,
            )),
        );
        check(
            Output::Resolved(GapResolved {
                world_id: "w".into(),
                run_id: "r".into(),
                kind: FindingKind::OrphanAck,
                sequences: vec![4],
                phase: None,
                blocked_by: None,
                detected_at: 1_000,
                resolved_at: 2_500,
                idempotency_key: "k2".into(),
            }),
            Some((
                Sink::Gap,
                r#"{"type":"ActivationGapResolved","version":1,"world_id":"w","run_id":"r","kind":"orphan_ack",
                    "sequences":[4],"phase":null,"blocked_by":null,"detected_at":"1970-01-01T00:00:01.000Z",
                    "resolved_at":"1970-01-01T00:00:02.500Z","idempotency_key":"k2"}"#,
            )),
        );
        check(
            Output::Signal(Signal {
                world_id: "w".into(),
                run_id: "r".into(),
                action: Action::Rollback,
                episode: 2,
                at: 31_000,
                idempotency_key: "k3".into(),
            }),
            Some((
                Sink::Signal,
                r#"{"type":"ApplyRollbackRequested","version":1,"world_id":"w","run_id":"r","action":"rollback",
                    "episode":2,"at":"1970-01-01T00:00:31.000Z","idempotency_key":"k3"}"#,
            )),
        );
        check(
            Output::Latency {
                phase: Phase::Unknown,
                ms: 3,
                clock_skew: false,
            },
            None,
        );
        check(
            Output::Escalated {
                run: RunKey::new("w", "r"),
                episode: 1,
                at: 0,
            },
            None,
        );
    }

    #[test]
    fn dead_letters_are_cut_to_their_limit_and_say_so() {
        let big = vec![b'x'; DEAD_LETTER_VALUE_BYTES_MAX + 10];
        assert_eq!(dead_letter_value(&big).len(), DEAD_LETTER_VALUE_BYTES_MAX);
        assert_eq!(dead_letter_value(b"small"), b"small");
    }
}
