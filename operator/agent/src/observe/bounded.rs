//! A map that keeps at most `cap` entries and, beyond that, drops the ones inserted (or
//! refreshed, [`Bounded::touch`]) longest ago: the bounded waiting tables of the L7 parsers (DNS
//! queries, HTTP requests) and the agent's table of binds share it.
//!
//! Removal by key is O(1) and leaves the key's place in the order behind as a stale name; every
//! name carries the generation its entry had when it was queued, so a stale name never drops a
//! newer entry of the same key (one removed and inserted again, or refreshed). Stale names are
//! skipped when trimming and compacted away once they outnumber the entries, so the order queue
//! stays within a constant factor of the map.
use std::{collections::VecDeque, hash::Hash};

use foldhash::HashMap;

pub struct Bounded<K, V> {
    /// Each entry with the generation of its live name in `order`.
    map: HashMap<K, (V, u64)>,
    /// Keys in the order they were inserted or refreshed, with the generation they had then;
    /// may hold names of removed or since-refreshed entries.
    order: VecDeque<(K, u64)>,
    cap: usize,
    next_gen: u64,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    pub fn new(cap: usize) -> Self {
        Self { map: HashMap::default(), order: VecDeque::new(), cap, next_gen: 0 }
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
        self.map.get_mut(k).map(|(v, _)| v)
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let v = self.map.remove(k).map(|(v, _)| v);
        self.compact();
        v
    }

    fn queue(&mut self, k: K) -> u64 {
        let g = self.next_gen;
        self.next_gen += 1;
        self.order.push_back((k, g));
        g
    }

    /// The entry of `k`, made with `f` when there is none (it then counts as the newest). Call
    /// [`Bounded::trim`] after inserting.
    pub fn get_or_insert_with(&mut self, k: K, f: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&k) {
            let g = self.queue(k.clone());
            self.map.insert(k.clone(), (f(), g));
        }
        &mut self.map.get_mut(&k).expect("present").0
    }

    /// Sets `k` to `v`; a key already there keeps its place in the order.
    pub fn insert(&mut self, k: K, v: V) {
        if let Some(slot) = self.map.get_mut(&k) {
            slot.0 = v;
        } else {
            let g = self.queue(k.clone());
            self.map.insert(k, (v, g));
        }
    }

    /// Makes `k`, if present, the newest entry (the last to be dropped).
    pub fn touch(&mut self, k: &K) {
        if self.map.contains_key(k) {
            let g = self.queue(k.clone());
            if let Some(slot) = self.map.get_mut(k) {
                slot.1 = g;
            }
            self.compact();
        }
    }

    /// Drops the oldest entries while there are more than `cap`, handing each to `evicted`.
    pub fn trim(&mut self, mut evicted: impl FnMut(K, V)) {
        while self.map.len() > self.cap {
            let Some((old, g)) = self.order.pop_front() else { break };
            if self.map.get(&old).is_some_and(|(_, live)| *live == g) {
                if let Some((v, _)) = self.map.remove(&old) {
                    evicted(old, v);
                }
            }
        }
        self.compact();
    }

    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|(k, g)| map.get(k).is_some_and(|(_, live)| live == g));
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

    #[test]
    fn a_refreshed_or_reinserted_key_is_not_dropped_by_its_old_name() {
        let mut b = Bounded::new(2);
        b.insert(1, "a");
        b.insert(2, "b");
        b.touch(&1); // now 2 is the oldest
        b.insert(3, "c");
        let mut gone = Vec::new();
        b.trim(|k, v| gone.push((k, v)));
        assert_eq!(gone, vec![(2, "b")]);
        // Removed and inserted again: the newest, whatever its old name says.
        b.remove(&1);
        b.insert(1, "a2");
        b.insert(4, "d");
        b.trim(|k, v| gone.push((k, v)));
        assert_eq!(gone, vec![(2, "b"), (3, "c")]);
        assert_eq!(b.get_mut(&1), Some(&mut "a2"));
        assert_eq!(b.get_mut(&4), Some(&mut "d"));
        // Many refreshes keep the queue bounded.
        for _ in 0..10_000 {
            b.touch(&1);
        }
        assert!(b.order.len() <= 2 * b.len() + 64 + 1, "{}", b.order.len());
    }
}
