//! The reference evaluator: NetworkPolicy semantics applied directly to one packet, with no
//! identities, maps or prefixes. Tests hold the compiler (and, in the lab, the kernel) to it.
use std::net::Ipv4Addr;

use super::{compile::Cluster, compile::PodView, Direction, Peer, PortSpec, Rule, RuleRef};

/// The verdict of one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Side {
    /// The endpoint is not a pod here, or no policy selects it for this direction.
    Open,
    /// Allowed by these rules.
    Allowed(Vec<RuleRef>),
    /// Selected by policies, none of which allows it.
    Denied,
}

impl Side {
    pub fn allows(&self) -> bool {
        !matches!(self, Side::Denied)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub egress: Side,
    pub ingress: Side,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// Is a new connection `src` → `dst`:`port`/`proto` allowed?
pub fn evaluate(c: &Cluster, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> Verdict {
    if src == dst {
        // A pod talking to itself never leaves it.
        return Verdict { egress: Side::Open, ingress: Side::Open };
    }
    let src_pod = c.pod_by_ip(src);
    let dst_pod = c.pod_by_ip(dst);
    let egress = match src_pod {
        Some(s) => side(c, s, Direction::Egress, dst, dst_pod, proto, port, dst_pod),
        None => Side::Open,
    };
    let ingress = match dst_pod {
        Some(d) => side(c, d, Direction::Ingress, src, src_pod, proto, port, Some(d)),
        None => Side::Open,
    };
    Verdict { egress, ingress }
}

#[allow(clippy::too_many_arguments)]
fn side(
    c: &Cluster,
    ep: &PodView,
    dir: Direction,
    peer_ip: Ipv4Addr,
    peer_pod: Option<&PodView>,
    proto: u8,
    port: u16,
    port_owner: Option<&PodView>,
) -> Side {
    let mut selected = false;
    let mut allowed = Vec::new();
    for (pi, p) in c.policies.iter().enumerate() {
        if p.namespace != ep.namespace() || !p.pods.matches(&|k| ep.label(k)) {
            continue;
        }
        let Some(rules) = p.rules(dir) else { continue };
        selected = true;
        for (ri, r) in rules.iter().enumerate() {
            if rule_matches(c, &p.namespace, r, peer_ip, peer_pod, proto, port, port_owner) {
                allowed.push(RuleRef { policy: pi, direction: dir, rule: ri });
            }
        }
    }
    match (selected, allowed.is_empty()) {
        (false, _) => Side::Open,
        (true, true) => Side::Denied,
        (true, false) => Side::Allowed(allowed),
    }
}

#[allow(clippy::too_many_arguments)]
fn rule_matches(
    c: &Cluster,
    policy_ns: &str,
    r: &Rule,
    peer_ip: Ipv4Addr,
    peer_pod: Option<&PodView>,
    proto: u8,
    port: u16,
    port_owner: Option<&PodView>,
) -> bool {
    let peer_ok = r.peers.as_ref().is_none_or(|peers| {
        peers.iter().any(|peer| match peer {
            Peer::Block(b) => b.contains(peer_ip),
            Peer::Pods { pods, namespaces } => peer_pod.is_some_and(|pp| {
                let ns_ok = match namespaces {
                    None => pp.namespace() == policy_ns,
                    Some(sel) => sel.matches(&|k| c.namespace_label(pp.namespace(), k)),
                };
                ns_ok && pods.matches(&|k| pp.label(k))
            }),
        })
    });
    let port_ok = r.ports.as_ref().is_none_or(|ports| {
        ports.iter().any(|m| {
            m.proto == proto
                && match &m.port {
                    PortSpec::Any => true,
                    PortSpec::Range(a, b) => (*a..=*b).contains(&port),
                    PortSpec::Named(n) => port_owner.is_some_and(|o| o.named_port(n, proto) == Some(port)),
                }
        })
    });
    peer_ok && port_ok
}
