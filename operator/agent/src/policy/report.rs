//! What `weir policy explain` and `weir policy show` print, from the compiler's own output.
use std::{collections::BTreeMap, net::Ipv4Addr};

use weir_operator_api::{DirectionPolicy, EndpointPolicyRow, PolicyExplanation, PolicyReport, PolicySide, SideVerdict};

use super::{
    compile::{explain, Cluster, Compiled, EntryKey, SideExplain, ANY_PEER},
    Direction, Peer, PortSpec, Rule, RuleRef, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};

pub fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "TCP".into(),
        IPPROTO_UDP => "UDP".into(),
        IPPROTO_SCTP => "SCTP".into(),
        1 => "ICMP".into(),
        0 => "any".into(),
        n => format!("proto {n}"),
    }
}

fn describe_peers(policy_ns: &str, r: &Rule, dir: Direction) -> String {
    let word = if dir == Direction::Ingress { "from" } else { "to" };
    let Some(peers) = &r.peers else { return format!("{word} anywhere") };
    let parts: Vec<String> = peers
        .iter()
        .map(|p| match p {
            Peer::Pods { pods, namespaces: None } => format!("pods {{{pods}}} in {policy_ns}"),
            Peer::Pods { pods, namespaces: Some(ns) } => format!("pods {{{pods}}} in namespaces {{{ns}}}"),
            Peer::Block(b) => {
                let mut s = format!("ipBlock {}", b.cidr);
                if !b.except.is_empty() {
                    s.push_str(&format!(
                        " except {}",
                        b.except.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(",")
                    ));
                }
                s
            }
        })
        .collect();
    format!("{word} {}", parts.join(" or "))
}

fn describe_ports(r: &Rule) -> String {
    let Some(ports) = &r.ports else { return "all ports".into() };
    ports
        .iter()
        .map(|m| {
            let p = proto_name(m.proto);
            match &m.port {
                PortSpec::Any => format!("{p}/*"),
                PortSpec::Range(a, b) if a == b => format!("{p}/{a}"),
                PortSpec::Range(a, b) => format!("{p}/{a}-{b}"),
                PortSpec::Named(n) => format!("{p}/{n}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `namespace/name ingress[0]: from pods {app=web} in x; TCP/80`.
pub fn describe_rule(c: &Cluster, r: &RuleRef) -> String {
    let p = &c.policies[r.policy];
    let rule = &p.rules(r.direction).unwrap_or(&[])[r.rule];
    format!("{}: {}; {}", c.rule_name(r), describe_peers(&p.namespace, rule, r.direction), describe_ports(rule))
}

fn policy_names(c: &Cluster, idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| format!("{}/{}", c.policies[i].namespace, c.policies[i].name)).collect()
}

fn resolve(c: &Cluster, s: &str) -> Result<(Ipv4Addr, Option<String>), String> {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Ok((ip, c.pod_by_ip(ip).map(|p| format!("{}/{}", p.namespace(), p.name()))));
    }
    let (ns, name) = s.split_once('/').ok_or_else(|| format!("{s:?} is neither NAMESPACE/POD nor an IPv4 address"))?;
    let p = c.pod(ns, name).ok_or_else(|| format!("pod {ns}/{name} is not known or has no IPv4 address yet"))?;
    Ok((p.ip, Some(s.to_owned())))
}

fn describe_identity(compiled: &Compiled, id: u32) -> String {
    match compiled.identities.get(&id) {
        Some(k) => format!("{id} ({})", k.describe()),
        None => format!("{id} (world)"),
    }
}

pub fn explanation(c: &Cluster, from: &str, to: &str, protocol: &str, port: u16) -> Result<PolicyExplanation, String> {
    let proto = match protocol.to_ascii_lowercase().as_str() {
        "tcp" => IPPROTO_TCP,
        "udp" => IPPROTO_UDP,
        other => return Err(format!("protocol {other:?} is not tcp or udp")),
    };
    let (src, src_pod) = resolve(c, from)?;
    let (dst, dst_pod) = resolve(c, to)?;
    let (compiled, e) = explain(c, src, dst, proto, port);
    let side = |s: &SideExplain, pod: &Option<String>| -> PolicySide {
        let (verdict, rules, selected_by, reason) = match s {
            SideExplain::Open => (SideVerdict::NotIsolated, vec![], vec![], None),
            SideExplain::Allowed { rules } => {
                (SideVerdict::Allowed, rules.iter().map(|r| describe_rule(c, r)).collect(), vec![], None)
            }
            SideExplain::Denied { selected_by } => (SideVerdict::Denied, vec![], policy_names(c, selected_by), None),
            SideExplain::FailClosed { reason } => (SideVerdict::FailClosed, vec![], vec![], Some(reason.clone())),
        };
        PolicySide { verdict, endpoint: pod.clone(), rules, selected_by, reason }
    };
    Ok(PolicyExplanation {
        allowed: e.allowed,
        from: src_pod.clone().map_or(src.to_string(), |p| format!("{p} ({src})")),
        to: dst_pod.clone().map_or(dst.to_string(), |p| format!("{p} ({dst})")),
        protocol: proto_name(proto),
        port,
        src_identity: describe_identity(&compiled, e.src_identity),
        dst_identity: describe_identity(&compiled, e.dst_identity),
        egress: side(&e.egress, &src_pod),
        ingress: side(&e.ingress, &dst_pod),
    })
}

fn describe_entry(compiled: &Compiled, k: &EntryKey) -> String {
    let peer = if k.peer == ANY_PEER { "anyone".to_owned() } else { describe_identity(compiled, k.peer) };
    let ports = if k.proto == 0 {
        "all protocols".to_owned()
    } else {
        match k.port_range() {
            (0, u16::MAX) => format!("{}/*", proto_name(k.proto)),
            (a, b) if a == b => format!("{}/{a}", proto_name(k.proto)),
            (a, b) => format!("{}/{a}-{b}", proto_name(k.proto)),
        }
    };
    format!("{peer}: {ports}")
}

/// The effective policy of this node's endpoints (all, or the one `pod` names).
/// The compiled policy per endpoint of this node (`pod`: only that one), with the tallies.
pub fn report(
    c: &Cluster,
    compiled: &Compiled,
    fail_closed_total: u64,
    pod: Option<&str>,
) -> Result<PolicyReport, String> {
    let mut rows = Vec::new();
    for (ip, ep) in &compiled.endpoints {
        let name = format!("{}/{}", ep.namespace, ep.name);
        if pod.is_some_and(|p| p != name) {
            continue;
        }
        let dir = |d: Direction| -> Option<DirectionPolicy> {
            let entries = ep.entries(d)?;
            // Group identical rule sets: one line per entry, with the rules behind it.
            let mut allows = Vec::new();
            let mut by_attr: BTreeMap<u32, Vec<&EntryKey>> = BTreeMap::new();
            for (k, a) in entries {
                by_attr.entry(*a).or_default().push(k);
            }
            for (a, keys) in by_attr {
                let rules: Vec<String> = compiled.attribution(a).iter().map(|r| c.rule_name(r)).collect();
                for k in keys {
                    allows.push(format!("{}  [{}]", describe_entry(compiled, k), rules.join(", ")));
                }
            }
            Some(DirectionPolicy { selected_by: policy_names(c, &ep.selected_by[d as usize]), allows })
        };
        rows.push(EndpointPolicyRow {
            pod: name,
            ip: *ip,
            identity: ep.identity,
            ingress: dir(Direction::Ingress),
            egress: dir(Direction::Egress),
            fail_closed: ep.fail_closed.clone(),
            entries: ep.entry_count(),
        });
    }
    if let Some(p) = pod {
        if rows.is_empty() {
            return Err(format!("{p} is not an endpoint of this node"));
        }
    }
    Ok(PolicyReport {
        endpoints: rows,
        rejected: c.rejected.iter().map(ToString::to_string).collect(),
        fail_closed_total,
        identities: compiled.identities.len(),
        prefixes: compiled.ipcache.len(),
        entries: compiled.total_entries(),
    })
}
