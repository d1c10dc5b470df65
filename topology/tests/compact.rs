//! The compact per-run collections behave as the plain types they replaced: `TimerSet` as a
//! `BTreeSet<Timer>` (a reference model), `SeqFindings` as `[Option<FindingState>; 4]` (the
//! same bytes stored, the same values read).

use std::collections::BTreeSet;

use ackwatch_topology::compact::{SeqFindings, TimerSet};
use ackwatch_topology::run::{FindingState, SeqState, Timer, TimerKind};
use ackwatch_topology::FindingKind;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Insert(Timer),
    Remove(Timer),
    Clear,
}

fn timer() -> impl Strategy<Value = Timer> {
    // A small domain, so removes hit and the set crosses its vector/B-tree threshold both ways.
    (0i64..40, 0usize..3, 0u64..3).prop_map(|(due, kind, sequence)| Timer {
        due,
        kind: [TimerKind::Finding(FindingKind::AckMissing), TimerKind::Release, TimerKind::Rollback][kind],
        sequence,
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => timer().prop_map(Op::Insert),
        3 => timer().prop_map(Op::Remove),
        1 => Just(Op::Clear),
    ]
}

fn finding() -> impl Strategy<Value = Option<FindingState>> {
    proptest::option::of((0i64..1 << 40, proptest::option::of(0i64..1 << 40)).prop_map(
        |(detected_at, resolved_at)| FindingState {
            detected_at,
            resolved_at,
        },
    ))
}

proptest! {
    #[test]
    fn timer_set_is_a_sorted_set(ops in proptest::collection::vec(op(), 0..400)) {
        let mut set = TimerSet::default();
        let mut model = BTreeSet::new();
        for op in ops {
            match op {
                Op::Insert(t) => { set.insert(t); model.insert(t); }
                Op::Remove(t) => { set.remove(&t); model.remove(&t); }
                Op::Clear => { set.clear(); model.clear(); }
            }
            prop_assert_eq!(set.iter().copied().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(set.first(), model.first());
            prop_assert_eq!(set.last(), model.last());
            prop_assert_eq!(set.len(), model.len());
            prop_assert_eq!(set.is_empty(), model.is_empty());
        }
    }

    #[test]
    fn seq_findings_store_and_read_as_the_array(slots in proptest::array::uniform4(finding())) {
        let findings = SeqFindings::from(slots);
        let config = bincode::config::standard();
        let stored = bincode::serde::encode_to_vec(&findings, config).unwrap();
        prop_assert_eq!(&stored, &bincode::serde::encode_to_vec(slots, config).unwrap());
        let (read, _): (SeqFindings, usize) = bincode::serde::decode_from_slice(&stored, config).unwrap();
        prop_assert_eq!(&read, &findings);
        prop_assert_eq!(serde_json::to_string(&findings).unwrap(), serde_json::to_string(&slots).unwrap());
        for (i, slot) in slots.iter().enumerate() {
            prop_assert_eq!(&findings[i], slot);
        }
        prop_assert_eq!(findings.iter().copied().collect::<Vec<_>>(), slots.to_vec());
    }
}

#[test]
fn a_written_slot_reads_back_and_an_empty_sequence_allocates_nothing() {
    let mut findings = SeqFindings::default();
    assert_eq!(findings, SeqFindings::from([None; 4]), "all-empty slots are the empty value");
    let raised = FindingState {
        detected_at: 7,
        resolved_at: None,
    };
    findings[FindingKind::OrphanAck.index()] = Some(raised);
    assert_eq!(findings[FindingKind::OrphanAck.index()], Some(raised));
    assert_eq!(findings[FindingKind::AckMissing.index()], None);
}

/// The memory budget of a sequence (issue #19): 8 sequences of 100,000 open runs are 800,000
/// of these. A field that grows it should be a deliberate choice.
#[test]
fn a_sequence_state_fits_its_budget() {
    assert!(std::mem::size_of::<SeqState>() <= 72, "{} bytes", std::mem::size_of::<SeqState>());
    assert!(std::mem::size_of::<SeqFindings>() == 8);
}
