//! The audit report's list of invalid records (reason, origin, a cut preview), through one
//! data-driven `check(records, expected rows, expected unlisted)`: records are replayed as the
//! audit replays them, and each listed row is rendered as `topic/partition@offset reason preview`.

use ackwatch_topology::limits::{INVALID_PREVIEW_BYTES_MAX, INVALID_RECORDS_LISTED_MAX};
use ackwatch_topology::partition_group::Buffered;
use ackwatch_topology::replay::Replay;
use ackwatch_topology::time::format_rfc3339_ms;
use ackwatch_topology::{Millis, Policy, Side};

const T0: Millis = 1_772_442_000_000;

/// `(side, partition, value)`: offsets count per side and partition, times 1 ms apart.
type Rec = (Side, i32, Option<Vec<u8>>);

fn act(seq: u64) -> Option<Vec<u8>> {
    Some(
        format!(
            r#"{{"type":"ActivationUpdated","version":1,"world_id":"w","run_id":"r","sequence":{seq},"requires_ack":true,"phase":"freeze","etag":"e","ts":"{}"}}"#,
            format_rfc3339_ms(T0)
        )
        .into_bytes(),
    )
}

fn check(records: &[Rec], expected: &[&str], unlisted: u64) {
    let mut observe = |_: &ackwatch_topology::Output| {};
    let mut replay = Replay::new(Policy::default(), &mut observe);
    let mut offsets = std::collections::BTreeMap::new();
    for (i, (side, partition, value)) in records.iter().enumerate() {
        let offset = offsets.entry((*side, *partition)).or_insert(0i64);
        replay.push(
            *side,
            *partition,
            Buffered {
                offset: *offset,
                timestamp_ms: Some(T0 + i as Millis),
                key: Some(b"w".to_vec().into_boxed_slice()),
                value: value.clone().map(Vec::into_boxed_slice),
            },
        );
        *offset += 1;
    }
    let report = replay.finish(None);
    let rows: Vec<String> = report
        .invalid_records
        .iter()
        .map(|r| {
            format!(
                "{}/{}@{} {} {}",
                r.topic,
                r.partition,
                r.offset,
                r.reason,
                r.preview.as_deref().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(rows.iter().take(expected.len()).collect::<Vec<_>>(), expected.iter().collect::<Vec<_>>());
    assert_eq!(report.invalid_records_unlisted, unlisted);
    assert_eq!(
        report.invalid_records.len() as u64 + unlisted,
        report.totals.invalid,
        "listed and unlisted add up to the total"
    );
}

#[test]
fn invalid_records_are_listed_with_reason_origin_and_preview() {
    use Side::*;
    check(&[], &[], 0);
    check(&[(Activation, 0, act(1)), (Ack, 0, act(1))], &[], 0);
    // Listed by topic, partition and offset, whatever the order they were read in.
    check(
        &[
            (Ack, 1, Some(b"{not json".to_vec())),
            (Activation, 0, act(1)),
            (Activation, 0, None),
            (Activation, 1, Some(b"[1,2]".to_vec())),
        ],
        &["activation/0@1 no_value -", "activation/1@0 not_object [1,2]", "ack/1@0 not_json {not json"],
        0,
    );
    // A long value is cut, on a character boundary, and says so.
    let long = "é".repeat(INVALID_PREVIEW_BYTES_MAX);
    let cut = "é".repeat(INVALID_PREVIEW_BYTES_MAX / 2);
    check(
        &[(Activation, 0, Some(long.clone().into_bytes()))],
        &[&format!("activation/0@0 not_json {cut}…")],
        0,
    );
    let odd = format!("x{long}");
    let cut = format!("x{}", "é".repeat(INVALID_PREVIEW_BYTES_MAX / 2 - 1));
    check(&[(Activation, 0, Some(odd.into_bytes()))], &[&format!("activation/0@0 not_json {cut}…")], 0);
}

#[test]
fn the_list_is_bounded_and_keeps_the_first_by_position() {
    let records: Vec<Rec> = (0..INVALID_RECORDS_LISTED_MAX + 5)
        .map(|_| (Side::Activation, 0, Some(b"nope".to_vec())))
        .collect();
    check(&records, &["activation/0@0 not_json nope", "activation/0@1 not_json nope"], 5);
}
