//! [`SeqMap`]: a run's sequences, as one sorted vector.
//!
//! Why not a `BTreeMap`: most runs hold a handful of sequences, and a B-tree's first leaf
//! reserves room for eleven entries (about 2.4 KiB with a [`SeqState`]) however few it holds.
//! With tens of thousands of open runs that leaf was most of ackwatch's memory and much of its
//! time (fresh pages, cache misses). A sorted vector holds what it holds, and sequences arrive
//! nearly in order, so an insert is almost always an append. The size is bounded by
//! `RUN_SEQUENCES_MAX`; bulk inserts (a gap) go through [`SeqMap::insert_absent`], one merge.
//!
//! Serialised as a map from sequence to state, exactly as the `BTreeMap` it replaced, so stored
//! run states and changelog records keep their format.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::run::SeqState;

/// Sequences of one run and what is known of each, in ascending sequence order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqMap {
    /// Strictly ascending by sequence (asserted in debug builds after every change).
    entries: Vec<(u64, SeqState)>,
}

impl SeqMap {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries it has room for without reallocating (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    fn position(&self, seq: u64) -> Result<usize, usize> {
        // Sequences mostly arrive in order: check the end before searching.
        match self.entries.last() {
            Some(&(last, _)) if seq > last => Err(self.entries.len()),
            None => Err(0),
            _ => self.entries.binary_search_by_key(&seq, |(s, _)| *s),
        }
    }

    pub fn get(&self, seq: &u64) -> Option<&SeqState> {
        self.position(*seq).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, seq: &u64) -> Option<&mut SeqState> {
        self.position(*seq).ok().map(|i| &mut self.entries[i].1)
    }

    pub fn contains_key(&self, seq: &u64) -> bool {
        self.position(*seq).is_ok()
    }

    /// The state of `seq`, inserted empty when absent.
    pub fn get_or_default(&mut self, seq: u64) -> &mut SeqState {
        let i = match self.position(seq) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (seq, SeqState::default()));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// Inserts `seq` with `state`, returning the state it replaced.
    pub fn insert(&mut self, seq: u64, state: SeqState) -> Option<SeqState> {
        match self.position(seq) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, state)),
            Err(i) => {
                self.entries.insert(i, (seq, state));
                None
            }
        }
    }

    /// Inserts each of `new` (ascending, none present) with the state `make` gives it, in one
    /// merge: O(len + new) however the new sequences fall among the old ones.
    pub fn insert_absent(&mut self, new: &[u64], make: impl Fn() -> SeqState) {
        debug_assert!(new.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(new.iter().all(|s| !self.contains_key(s)));
        self.entries.reserve(new.len());
        self.entries.extend(new.iter().map(|&s| (s, make())));
        // Two sorted runs: the stable sort merges them in linear time.
        self.entries.sort_by_key(|(s, _)| *s);
        self.check();
    }

    pub fn iter(&self) -> Iter<'_> {
        self.entries.iter().map(split)
    }

    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|(s, _)| *s)
    }

    pub fn values(&self) -> impl Iterator<Item = &SeqState> {
        self.entries.iter().map(|(_, v)| v)
    }

    fn check(&self) {
        debug_assert!(
            self.entries.windows(2).all(|w| w[0].0 < w[1].0),
            "a SeqMap is strictly ascending"
        );
    }
}

type Iter<'a> = std::iter::Map<
    std::slice::Iter<'a, (u64, SeqState)>,
    fn(&'a (u64, SeqState)) -> (&'a u64, &'a SeqState),
>;

fn split(entry: &(u64, SeqState)) -> (&u64, &SeqState) {
    (&entry.0, &entry.1)
}

impl<'a> IntoIterator for &'a SeqMap {
    type Item = (&'a u64, &'a SeqState);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl std::ops::Index<&u64> for SeqMap {
    type Output = SeqState;

    fn index(&self, seq: &u64) -> &SeqState {
        self.get(seq).expect("sequence present in SeqMap")
    }
}

impl Serialize for SeqMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for SeqMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SeqMapVisitor)
    }
}

struct SeqMapVisitor;

impl<'de> Visitor<'de> for SeqMapVisitor {
    type Value = SeqMap;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map from sequence to sequence state, in ascending order")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SeqMap, A::Error> {
        // The size hint comes from the input: cap what it may reserve.
        let hint = map
            .size_hint()
            .unwrap_or(0)
            .min(crate::limits::RUN_SEQUENCES_MAX);
        let mut entries: Vec<(u64, SeqState)> = Vec::with_capacity(hint);
        while let Some((seq, state)) = map.next_entry::<u64, SeqState>()? {
            if entries.last().is_some_and(|&(last, _)| last >= seq) {
                return Err(serde::de::Error::custom(format!(
                    "sequence {seq} out of order or repeated in a stored run"
                )));
            }
            entries.push((seq, state));
        }
        Ok(SeqMap { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, i64),
        GetOrDefault(u64, i64),
        InsertAbsent(Vec<u64>, i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..64, any::<i64>()).prop_map(|(s, v)| Op::Insert(s, v)),
            (0u64..64, any::<i64>()).prop_map(|(s, v)| Op::GetOrDefault(s, v)),
            (
                proptest::collection::btree_set(0u64..64, 0..12),
                any::<i64>()
            )
                .prop_map(|(s, v)| Op::InsertAbsent(s.into_iter().collect(), v)),
        ]
    }

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap()
    }

    fn decode(bytes: &[u8]) -> Result<SeqMap, bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(m, _)| m)
    }

    fn state(v: i64) -> SeqState {
        SeqState {
            ack_ms: Some(v),
            ..SeqState::default()
        }
    }

    proptest! {
        /// A SeqMap behaves as the BTreeMap it replaced, and encodes as one, byte for byte.
        #[test]
        fn agrees_with_a_btreemap(ops in proptest::collection::vec(op(), 0..40)) {
            let mut map = SeqMap::default();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(s, v) => {
                        prop_assert_eq!(map.insert(s, state(v)), model.insert(s, state(v)));
                    }
                    Op::GetOrDefault(s, v) => {
                        map.get_or_default(s).ack_ms = Some(v);
                        model.entry(s).or_default().ack_ms = Some(v);
                    }
                    Op::InsertAbsent(new, v) => {
                        let new: Vec<u64> =
                            new.into_iter().filter(|s| !model.contains_key(s)).collect();
                        map.insert_absent(&new, || state(v));
                        for s in new {
                            model.insert(s, state(v));
                        }
                    }
                }
                prop_assert!(map.iter().map(|(s, v)| (*s, v.clone())).eq(model.clone()));
                prop_assert_eq!(map.len(), model.len());
            }
            for s in 0..64 {
                prop_assert_eq!(map.get(&s), model.get(&s));
            }
            let encoded = encode(&map);
            prop_assert_eq!(&encoded, &encode(&model));
            prop_assert_eq!(decode(&encoded).unwrap(), map);
        }
    }

    #[test]
    fn a_stored_map_out_of_order_is_an_error() {
        // A sequence of pairs encodes as a map does: length, then (key, value) pairs.
        let bytes = encode(&vec![(2u64, state(2)), (1u64, state(1))]);
        let err = decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("out of order"), "{err}");
    }
}
