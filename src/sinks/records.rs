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
/// record while the input topic retains it). The whole dead letter (key, headers, value) is also
/// held under the budget of [`DeadLetterBudget`]. Cost: this much memory per in-flight dead
/// letter.
pub const DEAD_LETTER_VALUE_BYTES_MAX: usize = 900 * 1024;

/// Longest dead-letter key: a record key longer than this (a key is normally a `world_id` of at
/// most 256 bytes) is cut, with its full length in `ackwatch.original_key_bytes`.
pub const DEAD_LETTER_KEY_BYTES_MAX: usize = 1024;

/// Longest `ackwatch.detail` header (a reason's explanation may quote a key or a field).
pub const DEAD_LETTER_DETAIL_BYTES_MAX: usize = 1024;

/// What a record takes besides its key, value and headers (batch and record framing), kept
/// free in every dead letter's budget.
const RECORD_OVERHEAD_BYTES: usize = 1024;

/// The size a dead letter must stay under: the smaller of the producer's `message.max.bytes`
/// and the dead-letter topic's `max.message.bytes` (read at start), less framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadLetterBudget {
    pub bytes: usize,
}

impl DeadLetterBudget {
    /// librdkafka's default `message.max.bytes`; a broker's default `max.message.bytes` is larger.
    pub const PRODUCER_DEFAULT: usize = 1_000_000;

    pub fn new(producer_max_bytes: usize, topic_max_bytes: Option<usize>) -> Self {
        let limit = topic_max_bytes.map_or(producer_max_bytes, |t| t.min(producer_max_bytes));
        DeadLetterBudget {
            bytes: limit.saturating_sub(RECORD_OVERHEAD_BYTES),
        }
    }
}

/// A dead letter ready to produce: every part bounded, what was cut said in headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'static str, String)>,
    /// Whether the key, the value or the detail was cut.
    pub cut: bool,
}

impl<'a> DeadLetter<'a> {
    /// The dead letter of an invalid record with `key` and `value` from `origin`, within
    /// `budget`: key, detail and value cut as needed (at UTF-8 boundaries for the detail).
    pub fn new(
        invalid: &Invalid,
        origin: Origin<'_>,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        budget: DeadLetterBudget,
    ) -> Self {
        let mut headers = vec![
            ("ackwatch.reason", invalid.reason.label().to_string()),
            (
                "ackwatch.detail",
                cut_str(&invalid.detail, DEAD_LETTER_DETAIL_BYTES_MAX).to_string(),
            ),
            ("ackwatch.topic", origin.topic.to_string()),
            ("ackwatch.partition", origin.partition.to_string()),
            ("ackwatch.offset", origin.offset.to_string()),
        ];
        let mut cut = invalid.detail.len() > DEAD_LETTER_DETAIL_BYTES_MAX;
        let key = key.map(|k| {
            if k.len() > DEAD_LETTER_KEY_BYTES_MAX {
                headers.push(("ackwatch.original_key_bytes", k.len().to_string()));
                cut = true;
                &k[..DEAD_LETTER_KEY_BYTES_MAX]
            } else {
                k
            }
        });
        let headers_len: usize = headers.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        // Room for the `ackwatch.original_bytes` header the value may need.
        let room = budget
            .bytes
            .saturating_sub(key.map_or(0, <[u8]>::len) + headers_len + 64)
            .min(DEAD_LETTER_VALUE_BYTES_MAX);
        let value = value.map(|v| {
            if v.len() > room {
                headers.push(("ackwatch.original_bytes", v.len().to_string()));
                cut = true;
                &v[..room]
            } else {
                v
            }
        });
        DeadLetter {
            key,
            value,
            headers,
            cut,
        }
    }

    /// The stub that replaces a dead letter the producer or broker still refused: no value,
    /// the key cut to a few bytes, the reason and origin kept, `ackwatch.stub` set.
    pub fn stub(&self) -> DeadLetter<'a> {
        const STUB_KEY_BYTES: usize = 64;
        let mut headers = self.headers.clone();
        headers.push(("ackwatch.stub", "true".to_string()));
        DeadLetter {
            key: self.key.map(|k| &k[..k.len().min(STUB_KEY_BYTES)]),
            value: None,
            headers,
            cut: true,
        }
    }

    /// Every byte the dead letter asks the producer to send (key, value, headers).
    pub fn size(&self) -> usize {
        self.key.map_or(0, <[u8]>::len)
            + self.value.map_or(0, <[u8]>::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// `text` cut to at most `max` bytes, at a UTF-8 character boundary.
fn cut_str(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

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

    fn invalid(detail: &str) -> Invalid {
        Invalid {
            reason: ackwatch_topology::decode::InvalidReason::KeyMismatch,
            detail: detail.to_string(),
        }
    }

    const ORIGIN: Origin<'static> = Origin {
        topic: "activation",
        partition: 3,
        offset: 42,
    };

    /// Whatever the record, its dead letter fits the budget, and what was cut is said.
    #[test]
    fn dead_letters_fit_their_budget_and_say_what_was_cut() {
        let budget = DeadLetterBudget::new(DeadLetterBudget::PRODUCER_DEFAULT, None);
        let check = |key_len: usize, value_len: usize, detail_len: usize| {
            let key = vec![b'k'; key_len];
            let value = vec![b'v'; value_len];
            let detail = "d".repeat(detail_len);
            let dl = DeadLetter::new(&invalid(&detail), ORIGIN, Some(&key), Some(&value), budget);
            assert!(
                dl.size() <= budget.bytes,
                "{key_len}/{value_len}: {} > {}",
                dl.size(),
                budget.bytes
            );
            let header = |name: &str| {
                dl.headers
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(header("ackwatch.offset").as_deref(), Some("42"));
            assert_eq!(
                dl.cut,
                key_len > DEAD_LETTER_KEY_BYTES_MAX
                    || value_len > dl.value.unwrap().len()
                    || detail_len > DEAD_LETTER_DETAIL_BYTES_MAX
            );
            if key_len > DEAD_LETTER_KEY_BYTES_MAX {
                assert_eq!(
                    header("ackwatch.original_key_bytes"),
                    Some(key_len.to_string())
                );
            }
            if dl.value.unwrap().len() < value_len {
                assert_eq!(
                    header("ackwatch.original_bytes"),
                    Some(value_len.to_string())
                );
            }
        };
        check(10, 100, 10);
        check(600 * 1024, 100, 10);
        check(100 * 1024, 920 * 1024, 10);
        check(10, 2 << 20, 600 * 1024);
        // A topic that takes less than the producer: the budget follows it.
        let small = DeadLetterBudget::new(DeadLetterBudget::PRODUCER_DEFAULT, Some(200_000));
        let value = vec![b'v'; 500_000];
        let dl = DeadLetter::new(&invalid("x"), ORIGIN, Some(b"w"), Some(&value), small);
        assert!(dl.size() <= small.bytes && dl.cut);
    }

    #[test]
    fn a_stub_keeps_the_reason_and_origin_only() {
        let budget = DeadLetterBudget::new(DeadLetterBudget::PRODUCER_DEFAULT, None);
        let key = vec![b'k'; 5000];
        let dl = DeadLetter::new(&invalid("why"), ORIGIN, Some(&key), Some(b"value"), budget);
        let stub = dl.stub();
        assert_eq!(stub.value, None);
        assert_eq!(stub.key.unwrap().len(), 64);
        for name in [
            "ackwatch.reason",
            "ackwatch.detail",
            "ackwatch.topic",
            "ackwatch.partition",
            "ackwatch.offset",
            "ackwatch.stub",
        ] {
            assert!(stub.headers.iter().any(|(k, _)| *k == name), "{name}");
        }
        assert!(stub.size() < 2048);
    }

    #[test]
    fn details_are_cut_at_character_boundaries() {
        assert_eq!(cut_str("ab\u{e9}cd", 3), "ab");
        assert_eq!(cut_str("abc", 3), "abc");
    }
}
