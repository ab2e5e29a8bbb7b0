//! Kubernetes NetworkPolicy (networking.k8s.io/v1).
//!
//! * this module: the validated model ([`Policy`]), parsed from the API type with every error
//!   naming the field that is wrong ([`parse`]), and label selectors;
//! * [`oracle`]: a direct, spec-level evaluator (is this packet allowed, and by which rules?),
//!   written from the API documentation and used only as the reference in tests;
//! * [`compile`]: identities, the IP → identity table and the per-endpoint allow entries that
//!   the datapath reads, and the lookup that `weir policy explain` answers with — the same
//!   entries, looked up the way the kernel looks them up.
pub mod compile;
pub mod oracle;
pub mod report;
pub mod sync;

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use k8s_openapi::{
    api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use serde::Serialize;

/// The label every namespace carries (set by the API server) with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// One rule of one policy: `cluster.policies[policy]`, its `direction` rules, number `rule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RuleRef {
    pub policy: usize,
    pub direction: Direction,
    pub rule: usize,
}

/// A validated NetworkPolicy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    /// Selects the pods of `namespace` the policy applies to.
    pub pods: Selector,
    /// `None`: the policy does not apply to ingress (`policyTypes`). `Some(empty)`: deny all.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn rules(&self, d: Direction) -> Option<&[Rule]> {
        match d {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// ipBlock prefixes the policy names (each `cidr` and each `except`, counted per peer).
    pub fn prefixes(&self) -> usize {
        let rules = self.ingress.iter().chain(&self.egress).flatten();
        let peers = rules.flat_map(|r| r.peers.iter().flatten());
        peers.map(|p| if let Peer::Block(b) = p { 1 + b.except.len() } else { 0 }).sum()
    }

    /// The same policy with every rule gone: the pods it selects isolated in its directions.
    pub fn closed(&self) -> Policy {
        Policy {
            ingress: self.ingress.as_ref().map(|_| Vec::new()),
            egress: self.egress.as_ref().map(|_| Vec::new()),
            ..self.clone()
        }
    }
}

/// One ingress or egress rule: traffic to/from any of `peers` on any of `ports`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// `None`: every peer (the `from`/`to` list was absent or empty).
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port of every protocol (the `ports` list was absent or empty).
    pub ports: Option<Vec<PortMatch>>,
}

impl Rule {
    /// Hubble's policy match type of a connection this rule allows: by peer and port (L3+L4),
    /// peer only, port only, or everything.
    pub fn match_type(&self) -> u8 {
        use weir_operator_api::flow::policy_match::{ALL, L3_L4, L3_ONLY, L4_ONLY};
        match (&self.peers, &self.ports) {
            (Some(_), Some(_)) => L3_L4,
            (Some(_), None) => L3_ONLY,
            (None, Some(_)) => L4_ONLY,
            (None, None) => ALL,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Peer {
    /// Pods matching `pods` in the namespaces matching `namespaces` (`None`: the policy's own
    /// namespace). A peer with only a namespace selector has `pods` = everything.
    Pods {
        pods: Selector,
        namespaces: Option<Selector>,
    },
    Block(IpBlock),
}

/// `ipBlock`: `cidr` minus every `except`. Matches any address, pods' included.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    pub cidr: Ipv4Network,
    pub except: Vec<Ipv4Network>,
}

impl IpBlock {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMatch {
    /// IP protocol number (TCP, UDP or SCTP).
    pub proto: u8,
    pub port: PortSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// Every port of the protocol.
    Any,
    /// `port` … `endPort` (a single port is `Range(p, p)`).
    Range(u16, u16),
    /// A container port name, resolved on the destination pod.
    Named(String),
}

/// A label selector: every `matchLabels` pair and every expression must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub labels: Vec<(String, String)>,
    pub exprs: Vec<Expr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// Does a label set, given as a lookup, satisfy the selector?
    pub fn matches<'l>(&self, get: &dyn Fn(&str) -> Option<&'l str>) -> bool {
        self.labels.iter().all(|(k, v)| get(k) == Some(v.as_str()))
            && self.exprs.iter().all(|e| match e {
                Expr::In(k, vs) => get(k).is_some_and(|v| vs.contains(v)),
                Expr::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(v)),
                Expr::Exists(k) => get(k).is_some(),
                Expr::DoesNotExist(k) => get(k).is_none(),
            })
    }

    pub fn is_everything(&self) -> bool {
        self.labels.is_empty() && self.exprs.is_empty()
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_everything() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let list = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        for e in &self.exprs {
            parts.push(match e {
                Expr::In(k, vs) => format!("{k} in ({})", list(vs)),
                Expr::NotIn(k, vs) => format!("{k} notin ({})", list(vs)),
                Expr::Exists(k) => k.clone(),
                Expr::DoesNotExist(k) => format!("!{k}"),
            });
        }
        f.write_str(&parts.join(", "))
    }
}

/// Why a NetworkPolicy was rejected: the field path and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("networkpolicy {namespace}/{name}: {field}: {message}")]
pub struct PolicyError {
    pub namespace: String,
    pub name: String,
    pub field: String,
    pub message: String,
}

struct Ctx<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> PolicyError {
        PolicyError {
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// ipBlock prefixes (each `cidr` and `except`) one policy may name. Each distinct prefix is an
/// entry of the node's IP → identity map, which every tenant shares: a policy over the limit is
/// rejected by name instead of crowding out everyone else's (see [`compile::BLOCK_PREFIX_BUDGET`]
/// for the node-wide budget).
pub const MAX_POLICY_PREFIXES: usize = 4096;

/// What every valid policy has before its rules: name, pod selector and policy types.
struct Header {
    namespace: String,
    name: String,
    pods: Selector,
    ingress: bool,
    egress: bool,
}

fn header(p: &NetworkPolicy) -> Result<Header, PolicyError> {
    let namespace = p.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
    let name = p.metadata.name.clone().unwrap_or_default();
    let cx = Ctx { namespace: &namespace, name: &name };
    if name.is_empty() {
        return Err(cx.err("metadata.name", "missing"));
    }
    let spec = p.spec.as_ref();
    let pods = selector(&cx, "spec.podSelector", spec.and_then(|s| s.pod_selector.as_ref()))?;
    let has_egress_rules = spec.and_then(|s| s.egress.as_ref()).is_some_and(|e| !e.is_empty());
    let types: Vec<String> = match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(t) if !t.is_empty() => t.clone(),
        _ => {
            let mut t = vec!["Ingress".to_owned()];
            if has_egress_rules {
                t.push("Egress".to_owned());
            }
            t
        }
    };
    for (i, t) in types.iter().enumerate() {
        if t != "Ingress" && t != "Egress" {
            return Err(cx.err(format!("spec.policyTypes[{i}]"), format!("{t:?} is not Ingress or Egress")));
        }
    }
    let ingress = types.iter().any(|t| t == "Ingress");
    let egress = types.iter().any(|t| t == "Egress");
    Ok(Header { namespace, name, pods, ingress, egress })
}

/// Validates a NetworkPolicy the way the API server would, and a little more (what the datapath
/// cannot enforce is an error, never silently widened; more than [`MAX_POLICY_PREFIXES`]
/// ipBlock prefixes is an error).
pub fn parse(p: &NetworkPolicy) -> Result<Policy, PolicyError> {
    let Header { namespace, name, pods, ingress, egress } = header(p)?;
    let cx = Ctx { namespace: &namespace, name: &name };
    let spec = p.spec.clone().unwrap_or_default();
    let ingress = if ingress {
        let mut rules = Vec::new();
        for (i, r) in spec.ingress.iter().flatten().enumerate() {
            let f = format!("spec.ingress[{i}]");
            rules.push(rule(&cx, &f, r.from.as_deref(), "from", r.ports.as_deref())?);
        }
        Some(rules)
    } else {
        None
    };
    let egress = if egress {
        let mut rules = Vec::new();
        for (i, r) in spec.egress.iter().flatten().enumerate() {
            let f = format!("spec.egress[{i}]");
            rules.push(rule(&cx, &f, r.to.as_deref(), "to", r.ports.as_deref())?);
        }
        Some(rules)
    } else {
        None
    };
    let policy = Policy { namespace: namespace.clone(), name: name.clone(), pods, ingress, egress };
    let n = policy.prefixes();
    if n > MAX_POLICY_PREFIXES {
        return Err(cx.err(
            "spec",
            format!("names {n} ipBlock prefixes (cidr and except); at most {MAX_POLICY_PREFIXES} per policy"),
        ));
    }
    Ok(policy)
}

/// The closed form of a policy that was rejected and has no valid earlier version: the pods it
/// selects are isolated in the directions it names, with nothing allowed. A policy the API
/// server accepted was meant to isolate them; leaving them open would let a malformed or
/// oversized policy switch enforcement off. `None` when even the selector or the policy types
/// are invalid (then nothing is known to select).
pub fn closed(p: &NetworkPolicy) -> Option<Policy> {
    let h = header(p).ok()?;
    Some(Policy {
        namespace: h.namespace,
        name: h.name,
        pods: h.pods,
        ingress: h.ingress.then(Vec::new),
        egress: h.egress.then(Vec::new),
    })
}

fn rule(
    cx: &Ctx<'_>,
    field: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    peers_name: &str,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<Rule, PolicyError> {
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => {
            let mut out = Vec::new();
            for (i, p) in list.iter().enumerate() {
                out.push(peer(cx, &format!("{field}.{peers_name}[{i}]"), p)?);
            }
            Some(out)
        }
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => {
            let mut out = Vec::new();
            for (i, p) in list.iter().enumerate() {
                out.push(port(cx, &format!("{field}.ports[{i}]"), p)?);
            }
            Some(out)
        }
    };
    Ok(Rule { peers, ports })
}

fn peer(cx: &Ctx<'_>, field: &str, p: &NetworkPolicyPeer) -> Result<Peer, PolicyError> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(cx.err(field, "ipBlock cannot be combined with podSelector or namespaceSelector"));
        }
        let cidr = cidr(cx, &format!("{field}.ipBlock.cidr"), &b.cidr)?;
        let mut except = Vec::new();
        for (i, e) in b.except.iter().flatten().enumerate() {
            let f = format!("{field}.ipBlock.except[{i}]");
            let e = self::cidr(cx, &f, e)?;
            if !(cidr.contains(e.network()) && e.prefix() > cidr.prefix()) {
                return Err(cx.err(f, format!("{e} is not strictly inside {cidr}")));
            }
            except.push(e);
        }
        except.sort();
        except.dedup();
        return Ok(Peer::Block(IpBlock { cidr, except }));
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return Err(cx.err(field, "must set podSelector, namespaceSelector or ipBlock"));
    }
    let pods = selector(cx, &format!("{field}.podSelector"), p.pod_selector.as_ref())?;
    let namespaces = match &p.namespace_selector {
        Some(s) => Some(selector(cx, &format!("{field}.namespaceSelector"), Some(s))?),
        None => None,
    };
    Ok(Peer::Pods { pods, namespaces })
}

fn cidr(cx: &Ctx<'_>, field: &str, s: &str) -> Result<Ipv4Network, PolicyError> {
    if s.contains(':') {
        // Pods have no IPv6 yet: an IPv6 block can match nothing; say so rather than guess.
        return Err(cx.err(field, format!("{s:?}: IPv6 blocks are not supported yet (pods are IPv4-only)")));
    }
    let n: Ipv4Network = s.parse().map_err(|e| cx.err(field, format!("{s:?} is not a CIDR: {e}")))?;
    if !s.contains('/') {
        return Err(cx.err(field, format!("{s:?} is not a CIDR (no prefix length)")));
    }
    // The API server accepts host bits set; the block is the network they belong to.
    Ok(Ipv4Network::new(n.network(), n.prefix()).expect("prefix already valid"))
}

/// IP protocol number of a Kubernetes protocol name; "" is TCP (a container port's default).
pub fn proto_number(s: &str) -> Option<u8> {
    match s {
        "TCP" | "" => Some(IPPROTO_TCP),
        "UDP" => Some(IPPROTO_UDP),
        "SCTP" => Some(IPPROTO_SCTP),
        _ => None,
    }
}

fn protocol(cx: &Ctx<'_>, field: &str, s: Option<&str>) -> Result<u8, PolicyError> {
    let s = s.unwrap_or("TCP");
    proto_number(s).filter(|_| !s.is_empty()).ok_or_else(|| cx.err(field, format!("{s:?} is not TCP, UDP or SCTP")))
}

fn port(cx: &Ctx<'_>, field: &str, p: &NetworkPolicyPort) -> Result<PortMatch, PolicyError> {
    let proto = protocol(cx, &format!("{field}.protocol"), p.protocol.as_deref())?;
    let number = |f: &str, n: i32| -> Result<u16, PolicyError> {
        u16::try_from(n).ok().filter(|&n| n != 0).ok_or_else(|| cx.err(f, format!("{n} is not a port (1-65535)")))
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => PortSpec::Any,
        (None, Some(_)) => return Err(cx.err(format!("{field}.endPort"), "endPort needs port")),
        (Some(IntOrString::Int(n)), end) => {
            let start = number(&format!("{field}.port"), *n)?;
            let end = match end {
                Some(e) => number(&format!("{field}.endPort"), e)?,
                None => start,
            };
            if end < start {
                return Err(cx.err(format!("{field}.endPort"), format!("{end} is below port {start}")));
            }
            PortSpec::Range(start, end)
        }
        (Some(IntOrString::String(s)), end) => {
            if end.is_some() {
                return Err(cx.err(format!("{field}.endPort"), "endPort needs a numeric port"));
            }
            if let Ok(n) = s.parse::<i32>() {
                // An int-or-string holding digits is still a number to the API server.
                PortSpec::Range(number(&format!("{field}.port"), n)?, number(&format!("{field}.port"), n)?)
            } else {
                if !valid_port_name(s) {
                    return Err(cx.err(
                        format!("{field}.port"),
                        format!("{s:?} is not a port name (1-15 lowercase letters, digits, '-', with a letter)"),
                    ));
                }
                PortSpec::Named(s.clone())
            }
        }
    };
    Ok(PortMatch { proto, port })
}

/// IANA_SVC_NAME, as the API server validates container port names.
fn valid_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    let prefix_ok = prefix.is_none_or(|p| {
        (1..=253).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    });
    name_ok && prefix_ok
}

fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

fn selector(cx: &Ctx<'_>, field: &str, s: Option<&LabelSelector>) -> Result<Selector, PolicyError> {
    let Some(s) = s else { return Ok(Selector::default()) };
    let mut out = Selector::default();
    for (k, v) in s.match_labels.iter().flatten() {
        if !valid_label_key(k) {
            return Err(cx.err(format!("{field}.matchLabels"), format!("{k:?} is not a label key")));
        }
        if !valid_label_value(v) {
            return Err(cx.err(format!("{field}.matchLabels.{k}"), format!("{v:?} is not a label value")));
        }
        out.labels.push((k.clone(), v.clone()));
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if !valid_label_key(&e.key) {
            return Err(cx.err(format!("{f}.key"), format!("{:?} is not a label key", e.key)));
        }
        let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
        if let Some(bad) = values.iter().find(|v| !valid_label_value(v)) {
            return Err(cx.err(format!("{f}.values"), format!("{bad:?} is not a label value")));
        }
        let key = e.key.clone();
        out.exprs.push(match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(cx.err(format!("{f}.values"), format!("operator {} needs at least one value", e.operator)));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(cx.err(format!("{f}.values"), format!("operator {} takes no values", e.operator)));
            }
            "In" => Expr::In(key, values),
            "NotIn" => Expr::NotIn(key, values),
            "Exists" => Expr::Exists(key),
            "DoesNotExist" => Expr::DoesNotExist(key),
            other => {
                return Err(
                    cx.err(format!("{f}.operator"), format!("{other:?} is not In, NotIn, Exists or DoesNotExist"))
                );
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn np(yaml: &str) -> NetworkPolicy {
        serde_saphyr::from_str(yaml).expect("test policy parses")
    }

    #[test]
    fn policy_types_default_from_rules() {
        let p = parse(&np("metadata: {name: a, namespace: x}\nspec: {podSelector: {}}")).unwrap();
        assert_eq!(p.ingress, Some(vec![]), "no types, no rules: ingress isolation (deny all)");
        assert_eq!(p.egress, None);
        let p = parse(&np("metadata: {name: a, namespace: x}\nspec: {podSelector: {}, egress: [{}]}")).unwrap();
        assert_eq!(p.egress.as_ref().map(Vec::len), Some(1));
        assert!(p.ingress.is_some(), "Ingress is always implied without policyTypes");
        let p = parse(&np(
            "metadata: {name: a, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress], ingress: [{}]}",
        ))
        .unwrap();
        assert_eq!(p.ingress, None, "rules of a direction not in policyTypes are ignored");
        assert_eq!(p.egress, Some(vec![]));
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            (
                "spec: {podSelector: {matchExpressions: [{key: a, operator: Has}]}}",
                "spec.podSelector.matchExpressions[0].operator",
            ),
            (
                "spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}}",
                "spec.podSelector.matchExpressions[0].values",
            ),
            (
                "spec: {podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}",
                "spec.podSelector.matchExpressions[0].values",
            ),
            ("spec: {podSelector: {matchLabels: {'bad key!': x}}}", "spec.podSelector.matchLabels"),
            (
                "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}",
                "spec.ingress[0].from[0].ipBlock.except[0]",
            ),
            (
                "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
                "spec.ingress[0].from[0]",
            ),
            ("spec: {podSelector: {}, ingress: [{from: [{}]}]}", "spec.ingress[0].from[0]"),
            ("spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}", "spec.ingress[0].ports[0].port"),
            (
                "spec: {podSelector: {}, ingress: [{ports: [{port: 90, endPort: 80}]}]}",
                "spec.ingress[0].ports[0].endPort",
            ),
            (
                "spec: {podSelector: {}, ingress: [{ports: [{port: http, endPort: 80}]}]}",
                "spec.ingress[0].ports[0].endPort",
            ),
            ("spec: {podSelector: {}, ingress: [{ports: [{port: Not_A_Name}]}]}", "spec.ingress[0].ports[0].port"),
            ("spec: {podSelector: {}, egress: [{ports: [{protocol: QUIC}]}]}", "spec.egress[0].ports[0].protocol"),
            ("spec: {podSelector: {}, policyTypes: [Sideways]}", "spec.policyTypes[0]"),
        ];
        for (spec, field) in cases {
            let err = parse(&np(&format!("metadata: {{name: bad, namespace: x}}\n{spec}"))).expect_err(spec);
            assert_eq!(err.field, field, "{spec}: {err}");
            assert!(err.to_string().starts_with("networkpolicy x/bad: "), "{err}");
        }
    }

    #[test]
    fn selectors_follow_the_spec() {
        let p = parse(&np(
            "metadata: {name: a, namespace: x}\nspec: {podSelector: {matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [a, b]}, {key: env, operator: NotIn, values: [prod]}, {key: x, operator: Exists}, {key: y, operator: DoesNotExist}]}}",
        ))
        .unwrap();
        let labels = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(a, _)| *a == k).map(|(_, v)| *v)
        };
        assert!(p.pods.matches(&labels(&[("app", "web"), ("tier", "a"), ("x", "")])));
        assert!(p.pods.matches(&labels(&[("app", "web"), ("tier", "b"), ("x", "1"), ("env", "dev")])));
        assert!(!p.pods.matches(&labels(&[("app", "web"), ("tier", "b"), ("x", "1"), ("env", "prod")])));
        assert!(!p.pods.matches(&labels(&[("app", "web"), ("tier", "c"), ("x", "1")])));
        assert!(!p.pods.matches(&labels(&[("app", "web"), ("tier", "a")])), "Exists");
        assert!(!p.pods.matches(&labels(&[("app", "web"), ("tier", "a"), ("x", ""), ("y", "")])), "DoesNotExist");
        assert!(!p.pods.matches(&labels(&[("app", "db"), ("tier", "a"), ("x", "")])));
    }
}

#[cfg(test)]
mod differential;
