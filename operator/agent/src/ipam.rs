//! IPv4 address allocation from the node's pod CIDR. Pure: the endpoint store is the record of
//! what is allocated, so an allocation and its endpoint are persisted together and can never
//! disagree. Callers serialise allocations (the agent's single writer), so two pods never get
//! one address.
use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnetwork::Ipv4Network;

/// Lowest free host address of `cidr`, skipping the network and broadcast addresses and the
/// first host address (kept for the node's own use).
pub fn allocate(cidr: Ipv4Network, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let net = u32::from(cidr.network());
    let size = cidr.size();
    if size < 4 {
        return None;
    }
    (2..size - 1).map(|i| Ipv4Addr::from(net + i)).find(|a| !used.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_and_never_reuses_a_used_address() {
        let cidr: Ipv4Network = "10.244.1.0/29".parse().expect("cidr");
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        while let Some(a) = allocate(cidr, &used) {
            assert!(used.insert(a), "{a} handed out twice");
            got.push(a.octets()[3]);
        }
        assert_eq!(got, [2, 3, 4, 5, 6], "network, .1 and broadcast are never handed out");
        used.remove(&Ipv4Addr::new(10, 244, 1, 4));
        assert_eq!(allocate(cidr, &used), Some(Ipv4Addr::new(10, 244, 1, 4)), "released address is reusable");
    }

    #[test]
    fn tiny_cidrs_have_no_pod_addresses() {
        assert_eq!(allocate("10.0.0.0/31".parse().expect("cidr"), &BTreeSet::new()), None);
    }
}
