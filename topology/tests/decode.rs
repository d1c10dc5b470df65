//! Decoding and classification (docs/semantics.md §1), table-driven through one `check`, plus a property
//! that no byte sequence panics the decoder.

use ackwatch_topology::decode::{
    decode, decode_precise, Decoded, InvalidReason, Phase, RawRecord, Side,
};
use proptest::prelude::*;

/// What a record should decode to, compactly.
#[derive(Debug, PartialEq)]
enum Want {
    Tracked {
        world: String,
        run: String,
        seq: u64,
        phase: Phase,
        etag: Option<String>,
        ms: i64,
    },
    Ack {
        world: String,
        run: String,
        seq: u64,
        ms: i64,
    },
    Untracked,
    Invalid(&'static str),
}

fn tracked(world: &str, run: &str, seq: u64, phase: Phase, etag: Option<&str>, ms: i64) -> Want {
    Want::Tracked {
        world: world.into(),
        run: run.into(),
        seq,
        phase,
        etag: etag.map(Into::into),
        ms,
    }
}

fn ack(world: &str, run: &str, seq: u64, ms: i64) -> Want {
    Want::Ack {
        world: world.into(),
        run: run.into(),
        seq,
        ms,
    }
}

fn check(key: Option<&str>, record_ts: Option<i64>, value: Option<&str>, want: Want) {
    let record = RawRecord {
        side: Side::Activation,
        partition: 0,
        offset: 0,
        timestamp_ms: record_ts,
        key: key.map(str::as_bytes),
        value: value.map(str::as_bytes),
    };
    let decoded = decode(&record);
    assert_eq!(
        decoded,
        decode_precise(&record),
        "fast and precise paths disagree on {value:?}"
    );
    let got = match decoded {
        Decoded::Tracked(a) => Want::Tracked {
            world: a.run.world_id.into_owned(),
            run: a.run.run_id.into_owned(),
            seq: a.sequence,
            phase: a.phase,
            etag: a.etag.map(|e| e.into_owned()),
            ms: a.event_ms,
        },
        Decoded::Ack(a) => Want::Ack {
            world: a.run.world_id.into_owned(),
            run: a.run.run_id.into_owned(),
            seq: a.sequence,
            ms: a.event_ms,
        },
        Decoded::Untracked => Want::Untracked,
        Decoded::Invalid(i) => {
            assert!(!i.detail.is_empty(), "an invalid record always says why");
            Want::Invalid(i.reason.label())
        }
    };
    assert_eq!(got, want, "value {value:?}");
}

const T0: i64 = 1_772_442_001_000; // 2026-03-02T09:00:01Z

#[test]
fn cloudevents_envelope() {
    let ce = |data: &str| {
        format!(
            r#"{{"specversion":"1.0","type":"activation_updated","time":"2026-03-02T09:00:01.500+00:00","data":{data}}}"#
        )
    };
    check(
        Some("w"),
        Some(9),
        Some(&ce(
            r#"{"world_id":"w","run_id":"r","sequence":3,"requires_ack":true,"phase":"freeze","etag":"e","ts":"2026-03-02T09:00:01Z"}"#,
        )),
        // A whole-second `ts` may be cut to the second: the CloudEvents time within it wins.
        tracked("w", "r", 3, Phase::Freeze, Some("e"), T0 + 500),
    );
    // No ts: the CloudEvents time; no time either: the record timestamp; none at all: invalid.
    check(
        Some("w"),
        Some(9),
        Some(&ce(
            r#"{"world_id":"w","run_id":"r","sequence":0,"requires_ack":true}"#,
        )),
        tracked("w", "r", 0, Phase::Unknown, None, T0 + 500),
    );
    let no_time = r#"{"specversion":"1.0","type":"activation_updated","data":{"world_id":"w","run_id":"r","sequence":1,"requires_ack":true}}"#;
    check(
        Some("w"),
        Some(9),
        Some(no_time),
        tracked("w", "r", 1, Phase::Unknown, None, 9),
    );
    check(
        Some("w"),
        None,
        Some(no_time),
        Want::Invalid("no_event_time"),
    );
    // Untracked: no requires_ack, requires_ack false, other ControlBus events.
    check(
        Some("w"),
        Some(9),
        Some(&ce(r#"{"world_id":"w","run_id":"","version":41}"#)),
        Want::Untracked,
    );
    check(
        Some("w"),
        Some(9),
        Some(&ce(
            r#"{"world_id":"w","requires_ack":false,"sequence":"x"}"#,
        )),
        Want::Untracked,
    );
    check(
        Some("w"),
        Some(9),
        Some(r#"{"specversion":"1.0","type":"policy_updated","data":{"world_id":"w"}}"#),
        Want::Untracked,
    );
    // Acks: ack_ts, else ts, else time.
    let ack_ce = |data: &str| {
        format!(
            r#"{{"specversion":"1.0","type":"activation_ack","time":"2026-03-02T09:00:03Z","data":{data}}}"#
        )
    };
    check(
        Some("w"),
        Some(9),
        Some(&ack_ce(
            r#"{"world_id":"w","run_id":"r","sequence":2,"ts":"2026-03-02T09:00:02Z","ack_ts":"2026-03-02T09:00:01Z"}"#,
        )),
        ack("w", "r", 2, T0),
    );
    check(
        Some("w"),
        Some(9),
        Some(&ack_ce(
            r#"{"world_id":"w","run_id":"r","sequence":2,"ts":"2026-03-02T09:00:02Z"}"#,
        )),
        ack("w", "r", 2, T0 + 1000),
    );
    check(
        Some("w"),
        Some(9),
        Some(&ack_ce(r#"{"world_id":"w","run_id":"r","sequence":2}"#)),
        ack("w", "r", 2, T0 + 2000),
    );
    // Envelope problems.
    check(
        Some("w"),
        Some(9),
        Some(r#"{"specversion":"0.3","type":"activation_ack","data":{}}"#),
        Want::Invalid("unsupported_version"),
    );
    check(
        Some("w"),
        Some(9),
        Some(r#"{"specversion":"1.0","type":"activation_ack","data":[1]}"#),
        Want::Invalid("bad_envelope"),
    );
    check(
        Some("w"),
        Some(9),
        Some(r#"{"specversion":"1.0","type":"activation_ack"}"#),
        Want::Invalid("bad_envelope"),
    );
    check(
        Some("w"),
        Some(9),
        Some(r#"{"specversion":"1.0","data":{}}"#),
        Want::Invalid("missing_type"),
    );
}

#[test]
fn flat_envelope() {
    check(
        Some("w"),
        Some(9),
        Some(
            r#"{"type":"ActivationUpdated","version":1,"world_id":"w","run_id":"r","sequence":17,"requires_ack":true,"phase":"unfreeze","etag":"e","ts":"2026-03-02T09:00:01+01:00"}"#,
        ),
        tracked("w", "r", 17, Phase::Unfreeze, Some("e"), T0 - 3_600_000),
    );
    check(
        Some("w"),
        Some(9),
        Some(
            r#"{"type":"ActivationAck","version":1,"world_id":"w","run_id":"r","sequence":17,"ack_ts":"2026-03-02T09:00:01.120Z"}"#,
        ),
        ack("w", "r", 17, T0 + 120),
    );
    check(
        Some("w"),
        Some(9),
        Some(r#"{"type":"ActivationAck","version":2,"world_id":"w","run_id":"r","sequence":17}"#),
        Want::Invalid("unsupported_version"),
    );
    check(
        Some("w"),
        Some(9),
        Some(r#"{"type":"QueueUpdated","version":1,"tags":["BTC"]}"#),
        Want::Untracked,
    );
    check(
        Some("w"),
        Some(9),
        Some(r#"{"version":1,"world_id":"w"}"#),
        Want::Invalid("missing_type"),
    );
}

#[test]
fn invalid_records_say_why() {
    let flat = |fields: &str| format!(r#"{{"type":"ActivationUpdated","version":1,{fields}}}"#);
    let base = r#""world_id":"w","run_id":"r","requires_ack":true"#;
    check(Some("w"), Some(9), None, Want::Invalid("no_value"));
    check(
        Some("w"),
        Some(9),
        Some("not json"),
        Want::Invalid("not_json"),
    );
    check(
        Some("w"),
        Some(9),
        Some("{\"type\":"),
        Want::Invalid("not_json"),
    );
    check(
        Some("w"),
        Some(9),
        Some("[1,2]"),
        Want::Invalid("not_object"),
    );
    check(Some("w"), Some(9), Some("42"), Want::Invalid("not_object"));
    check(
        Some("w"),
        Some(9),
        Some(&flat(base)),
        Want::Invalid("missing_field"),
    );
    check(
        Some("w"),
        Some(9),
        Some(&flat(&format!(r#"{base},"sequence":"3""#))),
        Want::Invalid("mistyped_field"),
    );
    check(
        Some("w"),
        Some(9),
        Some(&flat(&format!(r#"{base},"sequence":3.5"#))),
        Want::Invalid("mistyped_field"),
    );
    check(
        Some("w"),
        Some(9),
        Some(&flat(&format!(r#"{base},"sequence":-1"#))),
        Want::Invalid("negative_sequence"),
    );
    check(
        Some("w"),
        Some(9),
        Some(&flat(
            r#""world_id":"w","run_id":"r","requires_ack":"yes","sequence":1"#,
        )),
        Want::Invalid("mistyped_field"),
    );
    check(
        Some("w"),
        Some(9),
        Some(&flat(
            r#""world_id":7,"run_id":"r","requires_ack":true,"sequence":1"#,
        )),
        Want::Invalid("mistyped_field"),
    );
    check(
        Some("w"),
        Some(9),
        Some(&flat(
            r#""world_id":"w","run_id":"","requires_ack":true,"sequence":1"#,
        )),
        Want::Invalid("missing_field"),
    );
    check(
        Some("w"),
        Some(9),
        Some(&flat(&format!(r#"{base},"sequence":1,"phase":"thaw""#))),
        Want::Invalid("mistyped_field"),
    );
    check(
        Some("w"),
        Some(9),
        Some(&flat(&format!(r#"{base},"sequence":1,"ts":"yesterday""#))),
        Want::Invalid("bad_timestamp"),
    );
    check(
        Some("w"),
        Some(9),
        Some(&flat(&format!(r#"{base},"sequence":1,"ts":12"#))),
        Want::Invalid("bad_timestamp"),
    );
    check(
        Some("other"),
        Some(9),
        Some(&flat(&format!(r#"{base},"sequence":1"#))),
        Want::Invalid("key_mismatch"),
    );
    check(
        None,
        Some(9),
        Some(&flat(&format!(r#"{base},"sequence":1"#))),
        Want::Invalid("key_mismatch"),
    );
    let long = "x".repeat(300);
    check(
        Some(&long),
        Some(9),
        Some(&flat(&format!(
            r#""world_id":"{long}","run_id":"r","requires_ack":true,"sequence":1"#
        ))),
        Want::Invalid("field_too_long"),
    );
    let huge = format!(
        r#"{{"type":"ActivationAck","pad":"{}"}}"#,
        "x".repeat(200_000)
    );
    check(Some("w"), Some(9), Some(&huge), Want::Invalid("too_large"));
    check(
        Some("w"),
        Some(9),
        Some(&flat(&format!(r#"{base},"sequence":1,"world_id":"w""#))),
        Want::Invalid("not_json"),
    );
    // A sequence of 2^63 is a valid (if absurd) sequence; limits bound what it costs later.
    check(
        Some("w"),
        Some(9),
        Some(&flat(&format!(r#"{base},"sequence":9223372036854775808"#))),
        tracked("w", "r", 1 << 63, Phase::Unknown, None, 9),
    );
    // Escaped strings decode like plain ones.
    check(
        Some("w\"1"),
        Some(9),
        Some(&flat(
            r#""world_id":"w\"1","run_id":"r\u0031","requires_ack":true,"sequence":1"#,
        )),
        tracked("w\"1", "r1", 1, Phase::Unknown, None, 9),
    );
}

#[test]
fn every_reason_has_a_distinct_label() {
    let mut labels = InvalidReason::LABELS.to_vec();
    labels.sort();
    labels.dedup();
    assert_eq!(labels.len(), InvalidReason::LABELS.len());
}

/// Decodes through both paths and requires them to agree exactly.
fn decode_bytes<'a>(key: Option<&'a [u8]>, value: &'a [u8]) -> Decoded<'a> {
    let record = RawRecord {
        side: Side::Ack,
        partition: 0,
        offset: 0,
        timestamp_ms: Some(0),
        key,
        value: Some(value),
    };
    let fast = decode(&record);
    assert_eq!(
        fast,
        decode_precise(&record),
        "fast and precise paths disagree on {:?}",
        String::from_utf8_lossy(value)
    );
    fast
}

const SAMPLE: &str = r#"{"specversion":"1.0","type":"activation_ack","time":"2026-03-02T09:00:03Z","data":{"world_id":"w","run_id":"r","sequence":2,"phase":"freeze","ts":"2026-03-02T09:00:02Z","ack_ts":"2026-03-02T09:00:01Z"}}"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_bytes(Some(b"w"), &bytes);
    }

    /// Mutations of a real record (byte flips, truncation, insertion) reach the deeper paths.
    #[test]
    fn mutated_records_never_panic(cut in 0..SAMPLE.len(), at in 0..SAMPLE.len(), byte in any::<u8>(), insert in any::<bool>()) {
        let mut bytes = SAMPLE.as_bytes().to_vec();
        if insert { bytes.insert(at, byte) } else { bytes[at] = byte }
        let _ = decode_bytes(Some(b"w"), &bytes);
        let _ = decode_bytes(Some(b"w"), &bytes[..cut]);
    }

    /// Any JSON value in any field position classifies without panicking, identically on both paths.
    #[test]
    fn any_field_values_never_panic(
        field in "(world_id|run_id|sequence|requires_ack|phase|etag|ts|ack_ts|time|data|type|specversion|version)",
        value in "(null|true|false|-?[0-9]{1,25}(\\.[0-9]{1,3})?|\"[a-z0-9:.+ -]{0,30}\"|\\[\\]|\\{\\})",
    ) {
        let text = format!(r#"{{"type":"ActivationUpdated","world_id":"w","run_id":"r","requires_ack":true,"sequence":1,"{field}":{value}}}"#);
        let _ = decode_bytes(Some(b"w"), text.as_bytes());
        let nested = format!(r#"{{"specversion":"1.0","type":"activation_ack","data":{{"world_id":"w","run_id":"r","sequence":1,"{field}":{value}}}}}"#);
        let _ = decode_bytes(Some(b"w"), nested.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The scanner that finds an oversized record's envelope type without parsing it agrees
    /// with a JSON parser on every object: nested `type` keys, strings with escaped quotes and
    /// braces, arrays, numbers, whitespace. (Keys are distinct: JSON leaves duplicates open.)
    #[test]
    fn the_type_scanner_agrees_with_a_parser(
        members in proptest::collection::btree_map(
            prop_oneof![Just("type"), Just("data"), Just("id"), Just("time"), Just("\\u0074ag"), Just("x")],
            prop_oneof![
                "\"[a-z_{}:,\\[\\]]{0,12}\"",
                Just(r#""a\"b\\""#.to_string()),
                Just(r#""activation_\u0075pdated""#.to_string()),
                "-?[1-9][0-9]{0,5}",
                Just("true".to_string()),
                Just("null".to_string()),
                Just(r#"{"type":"inner","k":[1,{"a":"}"}]}"#.to_string()),
                Just(r#"["type",{},[]]"#.to_string()),
            ],
            0..5,
        ),
        spaces in "[ \n\t]{0,2}",
    ) {
        let body: Vec<String> = members.iter().map(|(k, v)| format!("{spaces}\"{k}\"{spaces}:{spaces}{v}")).collect();
        let text = format!("{spaces}{{{}}}", body.join(","));
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("generated JSON is valid");
        let want = parsed.get("type").and_then(|t| t.as_str()).map(str::to_string);
        let got = ackwatch_topology::decode::envelope_type(text.as_bytes()).map(|t| t.into_owned());
        prop_assert_eq!(got, want, "{}", text);
    }
}

#[test]
fn the_type_scanner_unescapes_keys_and_values() {
    let check = |text: &str, want: Option<&str>| {
        let got = ackwatch_topology::decode::envelope_type(text.as_bytes());
        assert_eq!(got.as_deref(), want, "{text}");
    };
    check(r#"{"t\u0079pe":"policy_updated"}"#, Some("policy_updated"));
    check(
        r#"{"type":"activation_\u0075pdated"}"#,
        Some("activation_updated"),
    );
    check(r#"{"data":{"type":"inner"}}"#, None);
    check(r#"{"type":7}"#, None);
    check(r#"["type"]"#, None);
    check(r#"{"id":"unterminated"#, None);
}
