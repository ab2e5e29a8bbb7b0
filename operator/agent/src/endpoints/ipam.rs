//! IPv4 address allocation from the node's pod CIDR. Pure: the endpoint store is the record of
//! what is allocated, so an allocation and its endpoint are persisted together and can never
//! disagree. Callers serialise allocations (the agent's single writer), so two pods never get
//! one address.
//!
//! A released address rests in quarantine before it is handed out again: for a while after a
//! pod goes, other nodes' policy maps, EndpointSlices and conntrack may still tie its address to
//! it, and a new pod there would inherit what the old one was allowed. Only when every other
//! address is taken does an allocation reuse a quarantined one (the one released longest ago),
//! and says so.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use ipnetwork::Ipv4Network;

/// How an address was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// Never used, or out of quarantine.
    Free,
    /// Still in quarantine: the pool had nothing else.
    Quarantined,
}

/// The lowest free host address of `cidr` that is out of quarantine, skipping the network and
/// broadcast addresses and the first host address (kept for the node's own use); failing that,
/// the quarantined one released longest ago. `released` maps addresses to when they were
/// released (Unix seconds).
pub fn allocate(
    cidr: Ipv4Network,
    used: &BTreeSet<Ipv4Addr>,
    released: &BTreeMap<Ipv4Addr, u64>,
    now: u64,
    quarantine: Duration,
) -> Option<(Ipv4Addr, Allocation)> {
    let net = u32::from(cidr.network());
    let size = cidr.size();
    if size < 4 {
        return None;
    }
    let resting = |a: &Ipv4Addr| released.get(a).is_some_and(|&t| now.saturating_sub(t) < quarantine.as_secs());
    let mut oldest: Option<(u64, Ipv4Addr)> = None;
    for a in (2..size - 1).map(|i| Ipv4Addr::from(net + i)).filter(|a| !used.contains(a)) {
        if !resting(&a) {
            return Some((a, Allocation::Free));
        }
        let t = released[&a];
        if oldest.is_none_or(|(o, _)| t < o) {
            oldest = Some((t, a));
        }
    }
    oldest.map(|(_, a)| (a, Allocation::Quarantined))
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Duration = Duration::from_secs(60);

    fn next(
        cidr: &str,
        used: &BTreeSet<Ipv4Addr>,
        released: &BTreeMap<Ipv4Addr, u64>,
        now: u64,
    ) -> Option<(u8, Allocation)> {
        allocate(cidr.parse().expect("cidr"), used, released, now, Q).map(|(a, how)| (a.octets()[3], how))
    }

    #[test]
    fn allocates_lowest_free_and_never_reuses_a_used_address() {
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        while let Some((a, how)) = next("10.244.1.0/29", &used, &BTreeMap::new(), 0) {
            assert_eq!(how, Allocation::Free);
            assert!(used.insert(Ipv4Addr::new(10, 244, 1, a)), "{a} handed out twice");
            got.push(a);
        }
        assert_eq!(got, [2, 3, 4, 5, 6], "network, .1 and broadcast are never handed out");
        used.remove(&Ipv4Addr::new(10, 244, 1, 4));
        assert_eq!(next("10.244.1.0/29", &used, &BTreeMap::new(), 0), Some((4, Allocation::Free)));
    }

    #[test]
    fn released_addresses_rest_unless_nothing_else_is_left() {
        let a = |o: u8| Ipv4Addr::new(10, 244, 1, o);
        let used: BTreeSet<Ipv4Addr> = [a(3), a(5)].into();
        let released: BTreeMap<Ipv4Addr, u64> = [(a(2), 1000), (a(4), 990)].into();
        // .2 and .4 rest; .6 is free.
        assert_eq!(next("10.244.1.0/29", &used, &released, 1010), Some((6, Allocation::Free)));
        // Once their quarantine is over they are free again, lowest first.
        assert_eq!(next("10.244.1.0/29", &used, &released, 1060), Some((2, Allocation::Free)));
        // With .6 taken too, the one released longest ago is reused, and said so.
        let full: BTreeSet<Ipv4Addr> = [a(3), a(5), a(6)].into();
        assert_eq!(next("10.244.1.0/29", &full, &released, 1010), Some((4, Allocation::Quarantined)));
        let all: BTreeSet<Ipv4Addr> = (2..=6).map(a).collect();
        assert_eq!(next("10.244.1.0/29", &all, &released, 1010), None);
    }

    #[test]
    fn tiny_cidrs_have_no_pod_addresses() {
        assert_eq!(next("10.0.0.0/31", &BTreeSet::new(), &BTreeMap::new(), 0), None);
    }
}
