//! Desired state, derived purely from a cluster snapshot: this node's pod CIDR and address,
//! and every other node's pod CIDR and address (for routes or tunnel entries). No I/O here.
use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;

use crate::source::ClusterSnapshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeRoute {
    pub pod_cidr: Ipv4Network,
    pub address: Ipv4Addr,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// This node, once its Node object has a pod CIDR and an InternalIP.
    pub own: Option<NodeRoute>,
    /// Other nodes by name.
    pub remotes: BTreeMap<String, NodeRoute>,
    /// Nodes that cannot be used, with the reason (logged by the caller).
    pub skipped: Vec<(String, String)>,
}

fn node_route(node: &Node) -> Result<NodeRoute, String> {
    let cidr = node
        .spec
        .as_ref()
        .and_then(|s| {
            s.pod_cidr.as_deref().or_else(|| s.pod_cidrs.as_ref().and_then(|v| v.first().map(String::as_str)))
        })
        .ok_or("no spec.podCIDR")?;
    let pod_cidr: Ipv4Network = cidr.parse().map_err(|e| format!("spec.podCIDR {cidr:?}: {e}"))?;
    let address = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .ok_or("no InternalIP in status.addresses")?;
    let address = address.address.parse().map_err(|e| format!("InternalIP {:?}: {e}", address.address))?;
    Ok(NodeRoute { pod_cidr, address })
}

/// The narrowest pod CIDR prefix length accepted from a Node: a wider one (a default route,
/// a /1) would take traffic that is not the node's pods'.
pub const WIDEST_POD_CIDR: u8 = 8;

/// A Node's route that cannot be right whatever the rest of the cluster holds: the pod CIDR must
/// be an ordinary unicast range no wider than [`WIDEST_POD_CIDR`], and the address an ordinary
/// unicast address outside it.
fn check_route(r: &NodeRoute) -> Result<(), String> {
    let (cidr, net) = (r.pod_cidr, r.pod_cidr.network());
    if cidr.prefix() < WIDEST_POD_CIDR {
        return Err(format!("spec.podCIDR {cidr} is wider than /{WIDEST_POD_CIDR}"));
    }
    if net.is_loopback() || net.is_multicast() || net.is_link_local() || net.octets()[0] == 0 || net.octets()[0] >= 240
    {
        return Err(format!("spec.podCIDR {cidr} is not an ordinary unicast range"));
    }
    let a = r.address;
    if a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || a.is_link_local()
        || a.is_broadcast()
        || a.octets()[0] >= 240
    {
        return Err(format!("InternalIP {a} is not an ordinary unicast address"));
    }
    if cidr.contains(a) {
        return Err(format!("InternalIP {a} is inside its own spec.podCIDR {cidr}"));
    }
    Ok(())
}

/// Computes what the datapath of `node_name` should hold. Nodes whose route cannot be used are
/// skipped by name with the reason: malformed ones, remote ones whose pod CIDR overlaps this
/// node's, another node's pod CIDR or contains another node's address, and ones that repeat an
/// address (of two conflicting remote nodes the first by name is kept, so every node agrees).
pub fn desired(snap: &ClusterSnapshot, node_name: &str) -> Desired {
    let mut d = Desired::default();
    for (name, node) in &snap.nodes {
        match node_route(node).and_then(|r| check_route(&r).map(|()| r)) {
            Ok(r) if name == node_name => d.own = Some(r),
            Ok(r) => {
                d.remotes.insert(name.clone(), r);
            }
            Err(why) => d.skipped.push((name.clone(), why)),
        }
    }
    let mut kept: Vec<(String, NodeRoute)> = d.own.map(|o| (node_name.to_owned(), o)).into_iter().collect();
    let remotes = std::mem::take(&mut d.remotes);
    for (name, r) in remotes {
        let conflict = kept.iter().find_map(|(other, o)| {
            let whose = if *other == node_name { "this node's".to_owned() } else { format!("node {other}'s") };
            if r.pod_cidr.overlaps(o.pod_cidr) {
                Some(format!("pod CIDR {} overlaps {whose} {}", r.pod_cidr, o.pod_cidr))
            } else if r.address == o.address {
                Some(format!("InternalIP {} is also {whose}", r.address))
            } else if r.pod_cidr.contains(o.address) {
                Some(format!("pod CIDR {} contains {whose} address {}", r.pod_cidr, o.address))
            } else if o.pod_cidr.contains(r.address) {
                Some(format!("InternalIP {} is inside {whose} pod CIDR {}", r.address, o.pod_cidr))
            } else {
                None
            }
        });
        match conflict {
            Some(why) => d.skipped.push((name, why)),
            None => kept.push((name, r)),
        }
    }
    d.remotes = kept.into_iter().filter(|(n, _)| n != node_name).collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifest::snapshot_of;

    fn snap(yaml: &str) -> ClusterSnapshot {
        snapshot_of(yaml, "t").expect("parse")
    }

    fn node(name: &str, cidr: &str, ip: &str) -> String {
        format!("---\napiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{podCIDR: {cidr}}}\nstatus: {{addresses: [{{type: InternalIP, address: {ip}}}]}}\n")
    }

    #[test]
    fn splits_own_and_remote_nodes() {
        let y = node("a", "10.244.1.0/24", "172.30.0.1") + &node("b", "10.244.2.0/24", "172.30.0.2");
        let d = desired(&snap(&y), "a");
        assert_eq!(d.own.map(|o| o.address), Some(Ipv4Addr::new(172, 30, 0, 1)));
        assert_eq!(d.remotes.len(), 1);
        assert_eq!(d.remotes["b"].pod_cidr.to_string(), "10.244.2.0/24");
    }

    #[test]
    fn unusable_and_overlapping_nodes_are_skipped_with_a_reason() {
        let y = node("a", "10.244.1.0/24", "172.30.0.1")
            + &node("b", "10.244.1.128/25", "172.30.0.2")
            + "---\napiVersion: v1\nkind: Node\nmetadata: {name: c}\n";
        let d = desired(&snap(&y), "a");
        assert!(d.remotes.is_empty());
        let reasons: Vec<_> = d.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(reasons, ["c", "b"]);
    }

    #[test]
    fn hostile_nodes_are_refused_by_name() {
        let y = node("a", "10.244.1.0/24", "172.30.0.1")
            + &node("default-route", "0.0.0.0/0", "172.30.0.9")
            + &node("wide", "10.0.0.0/7", "172.30.0.10")
            + &node("gateway", "169.254.0.0/16", "172.30.0.11")
            + &node("loopback-ip", "10.244.5.0/24", "127.0.0.1")
            + &node("self-inside", "10.244.6.0/24", "10.244.6.1")
            + &node("m-ok", "10.244.2.0/24", "172.30.0.2")
            + &node("n-steals-m", "10.244.2.128/25", "172.30.0.3")
            + &node("o-same-ip", "10.244.3.0/24", "172.30.0.2")
            + &node("p-covers-node", "172.30.0.0/24", "172.31.0.4");
        let d = desired(&snap(&y), "a");
        assert_eq!(d.remotes.keys().collect::<Vec<_>>(), ["m-ok"]);
        let skipped: BTreeMap<_, _> = d.skipped.iter().cloned().collect();
        for name in [
            "default-route",
            "wide",
            "gateway",
            "loopback-ip",
            "self-inside",
            "n-steals-m",
            "o-same-ip",
            "p-covers-node",
        ] {
            assert!(skipped.contains_key(name), "{name} refused: {skipped:?}");
        }
        assert!(skipped["default-route"].contains("wider than /8"), "{skipped:?}");
        assert!(skipped["n-steals-m"].contains("node m-ok's"), "{skipped:?}");
        assert!(skipped["p-covers-node"].contains("this node's address 172.30.0.1"), "{skipped:?}");
    }

    #[test]
    fn no_own_node_means_not_ready() {
        let d = desired(&snap(&node("b", "10.244.2.0/24", "172.30.0.2")), "a");
        assert!(d.own.is_none());
    }
}
