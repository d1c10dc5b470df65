//! Per-run collections shaped for the common case, because an instance holds every open run in
//! memory (issue #19: 100,000 open runs within 200 MiB).
//!
//! - [`SeqFindings`]: a sequence's four finding slots. Almost every sequence has none, so
//!   they live behind one pointer that is null until the first finding (8 bytes, not 96).
//! - [`TimerSet`]: a run's pending timers. Most runs have one to a few; a B-tree set's first
//!   leaf reserves room for eleven (about 280 bytes). A sorted vector up to
//!   `VEC_TIMERS_UP_TO`, a B-tree set beyond, so a run with thousands of pending sequences
//!   still inserts and removes in logarithmic time.
//!
//! Both serialise exactly as the plain types they replaced (`[Option<FindingState>; 4]`; the
//! timer set is never stored), so stored run states and changelog records keep their format.

use std::collections::BTreeSet;
use std::ops::{Index, IndexMut};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::run::{FindingState, Timer};

const FINDING_KINDS: usize = 4;

/// A sequence's findings by [`crate::FindingKind::index`]; no allocation while all are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqFindings(Option<Box<[Option<FindingState>; FINDING_KINDS]>>);

const NO_FINDING: Option<FindingState> = None;
static NO_FINDINGS: [Option<FindingState>; FINDING_KINDS] = [NO_FINDING; FINDING_KINDS];

impl SeqFindings {
    pub fn iter(&self) -> std::slice::Iter<'_, Option<FindingState>> {
        self.0.as_deref().unwrap_or(&NO_FINDINGS).iter()
    }

    /// The bytes its slots take on the heap (none until the first finding).
    pub fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |_| std::mem::size_of::<[Option<FindingState>; FINDING_KINDS]>())
    }

    fn as_array(&self) -> [Option<FindingState>; FINDING_KINDS] {
        self.0.as_deref().copied().unwrap_or(NO_FINDINGS)
    }
}

impl Index<usize> for SeqFindings {
    type Output = Option<FindingState>;

    fn index(&self, kind: usize) -> &Option<FindingState> {
        &self.0.as_deref().unwrap_or(&NO_FINDINGS)[kind]
    }
}

/// Allocates the slots on first use: write through it only to record a finding.
impl IndexMut<usize> for SeqFindings {
    fn index_mut(&mut self, kind: usize) -> &mut Option<FindingState> {
        &mut self.0.get_or_insert_with(|| Box::new(NO_FINDINGS))[kind]
    }
}

impl From<[Option<FindingState>; FINDING_KINDS]> for SeqFindings {
    fn from(slots: [Option<FindingState>; FINDING_KINDS]) -> Self {
        SeqFindings(slots.iter().any(Option::is_some).then(|| Box::new(slots)))
    }
}

impl Serialize for SeqFindings {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_array().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SeqFindings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <[Option<FindingState>; FINDING_KINDS]>::deserialize(deserializer).map(SeqFindings::from)
    }
}

/// Up to this many timers a run keeps them in a sorted vector (inserts are nearly always
/// appends: deadlines follow event time); past it, in a B-tree set.
const VEC_TIMERS_UP_TO: usize = 32;

/// A run's pending timers, a set in ascending order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimerSet {
    /// Strictly ascending, at most `VEC_TIMERS_UP_TO` entries.
    Small(Vec<Timer>),
    Large(BTreeSet<Timer>),
}

impl Default for TimerSet {
    fn default() -> Self {
        TimerSet::Small(Vec::new())
    }
}

impl TimerSet {
    pub fn clear(&mut self) {
        *self = TimerSet::default();
    }

    pub fn is_empty(&self) -> bool {
        match self {
            TimerSet::Small(v) => v.is_empty(),
            TimerSet::Large(s) => s.is_empty(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            TimerSet::Small(v) => v.len(),
            TimerSet::Large(s) => s.len(),
        }
    }

    pub fn insert(&mut self, timer: Timer) {
        match self {
            TimerSet::Small(v) => {
                let at = match v.last() {
                    Some(last) if timer > *last => v.len(),
                    _ => match v.binary_search(&timer) {
                        Ok(_) => return,
                        Err(at) => at,
                    },
                };
                if v.len() < VEC_TIMERS_UP_TO {
                    v.insert(at, timer);
                } else {
                    let mut set: BTreeSet<Timer> = v.drain(..).collect();
                    set.insert(timer);
                    *self = TimerSet::Large(set);
                }
            }
            TimerSet::Large(s) => {
                s.insert(timer);
            }
        }
    }

    pub fn remove(&mut self, timer: &Timer) {
        match self {
            TimerSet::Small(v) => {
                if let Ok(at) = v.binary_search(timer) {
                    v.remove(at);
                }
            }
            TimerSet::Large(s) => {
                s.remove(timer);
                // Back to a vector once it is small again (half the threshold: no flapping).
                if s.len() <= VEC_TIMERS_UP_TO / 2 {
                    *self = TimerSet::Small(std::mem::take(s).into_iter().collect());
                }
            }
        }
    }

    pub fn first(&self) -> Option<&Timer> {
        match self {
            TimerSet::Small(v) => v.first(),
            TimerSet::Large(s) => s.first(),
        }
    }

    pub fn last(&self) -> Option<&Timer> {
        match self {
            TimerSet::Small(v) => v.last(),
            TimerSet::Large(s) => s.last(),
        }
    }

    /// In ascending order.
    pub fn iter(&self) -> TimerIter<'_> {
        match self {
            TimerSet::Small(v) => TimerIter::Small(v.iter()),
            TimerSet::Large(s) => TimerIter::Large(s.iter()),
        }
    }
}

/// [`TimerSet::iter`]'s iterator.
pub enum TimerIter<'a> {
    Small(std::slice::Iter<'a, Timer>),
    Large(std::collections::btree_set::Iter<'a, Timer>),
}

impl<'a> Iterator for TimerIter<'a> {
    type Item = &'a Timer;

    fn next(&mut self) -> Option<&'a Timer> {
        match self {
            TimerIter::Small(i) => i.next(),
            TimerIter::Large(i) => i.next(),
        }
    }
}

impl Extend<Timer> for TimerSet {
    fn extend<I: IntoIterator<Item = Timer>>(&mut self, timers: I) {
        for timer in timers {
            self.insert(timer);
        }
    }
}
