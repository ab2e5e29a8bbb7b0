//! A map that keeps at most `cap` entries and, beyond that, drops the ones inserted first: the
//! bounded waiting tables of the L7 parsers (DNS queries, HTTP requests) share it.
//!
//! Removal by key is O(1) and leaves the key's place in the insertion order behind as a stale
//! name; stale names are skipped when trimming and compacted away once they outnumber the
//! entries, so the order queue stays within a constant factor of the map.
use std::{collections::VecDeque, hash::Hash};

use foldhash::HashMap;

pub struct Bounded<K, V> {
    map: HashMap<K, V>,
    /// Keys in the order they were inserted; may hold names of removed entries.
    order: VecDeque<K>,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    pub fn new(cap: usize) -> Self {
        Self { map: HashMap::default(), order: VecDeque::new(), cap }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k)
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let v = self.map.remove(k);
        self.compact();
        v
    }

    /// The entry of `k`, made with `f` when there is none (it then counts as the newest). Call
    /// [`Bounded::trim`] after inserting.
    pub fn get_or_insert_with(&mut self, k: K, f: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&k) {
            self.order.push_back(k.clone());
        }
        self.map.entry(k).or_insert_with(f)
    }

    /// Sets `k` to `v`; a key already there keeps its place in the order.
    pub fn insert(&mut self, k: K, v: V) {
        if let Some(slot) = self.map.get_mut(&k) {
            *slot = v;
        } else {
            self.order.push_back(k.clone());
            self.map.insert(k, v);
        }
    }

    /// Drops the oldest entries while there are more than `cap`, handing each to `evicted`.
    pub fn trim(&mut self, mut evicted: impl FnMut(K, V)) {
        while self.map.len() > self.cap {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(v) = self.map.remove(&old) {
                evicted(old, v);
            }
        }
        self.compact();
    }

    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_inserted_go_first_and_stale_names_are_skipped() {
        let mut b = Bounded::new(2);
        b.insert(1, "a");
        b.insert(2, "b");
        b.insert(1, "a2"); // keeps its place: still the oldest
        b.remove(&2);
        b.insert(3, "c");
        b.insert(4, "d");
        let mut gone = Vec::new();
        b.trim(|k, v| gone.push((k, v)));
        assert_eq!(gone, vec![(1, "a2")]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.get_mut(&3), Some(&mut "c"));
        assert!(b.get_mut(&1).is_none());
    }

    #[test]
    fn the_order_queue_stays_bounded_under_insert_remove_churn() {
        let mut b = Bounded::new(4);
        for i in 0..10_000u32 {
            *b.get_or_insert_with(i, || 0) += 1;
            b.remove(&i);
        }
        assert!(b.is_empty());
        assert!(b.order.len() <= 64 + 1, "{}", b.order.len());
    }
}
