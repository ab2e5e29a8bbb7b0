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

/// Computes what the datapath of `node_name` should hold.
pub fn desired(snap: &ClusterSnapshot, node_name: &str) -> Desired {
    let mut d = Desired::default();
    for (name, node) in &snap.nodes {
        match node_route(node) {
            Ok(r) if name == node_name => d.own = Some(r),
            Ok(r) => {
                d.remotes.insert(name.clone(), r);
            }
            Err(why) => d.skipped.push((name.clone(), why)),
        }
    }
    if let Some(own) = d.own {
        // A remote CIDR overlapping ours would steal our pods' traffic: refuse it.
        let overlapping: Vec<String> =
            d.remotes.iter().filter(|(_, r)| r.pod_cidr.overlaps(own.pod_cidr)).map(|(n, _)| n.clone()).collect();
        for n in overlapping {
            d.remotes.remove(&n);
            d.skipped.push((n, format!("pod CIDR overlaps this node's {}", own.pod_cidr)));
        }
    }
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
    fn no_own_node_means_not_ready() {
        let d = desired(&snap(&node("b", "10.244.2.0/24", "172.30.0.2")), "a");
        assert!(d.own.is_none());
    }
}
