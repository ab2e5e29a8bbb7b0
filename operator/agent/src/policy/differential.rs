//! The compiler against the reference evaluator: hand-written cases for each rule of the spec,
//! then random clusters and policies, every packet decided both ways (verdict and attribution).
use std::{net::Ipv4Addr, sync::Arc};

use super::{
    compile::{compile, decide, range_prefixes, Cluster, Compiled, Identities, PodView, SideExplain},
    oracle::{evaluate, Side},
    parse,
    tests::np,
    IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
};
use crate::source::{NamedPort, PodInfo};

fn pod(ns: &str, name: &str, ip: [u8; 4], labels: &[(&str, &str)], ports: &[(&str, i32, &str)]) -> PodView {
    let mut labels: Vec<(Box<str>, Box<str>)> = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    labels.sort();
    let info = PodInfo {
        name: name.into(),
        namespace: ns.into(),
        labels: labels.into(),
        ips: vec![Ipv4Addr::from(ip).to_string().into()].into(),
        named_ports: ports
            .iter()
            .map(|(n, p, proto)| NamedPort { name: (*n).into(), port: *p, protocol: (*proto).into() })
            .collect(),
        ..Default::default()
    };
    PodView { ip: Ipv4Addr::from(ip), info: Arc::new(info) }
}

fn cluster(pods: Vec<PodView>, ns_labels: &[(&str, &[(&str, &str)])], policies: &[String]) -> Cluster {
    let namespaces = ns_labels
        .iter()
        .map(|(n, l)| (n.to_string(), l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
        .collect();
    let policies = policies.iter().map(|y| parse(&np(y)).expect("valid test policy")).collect();
    Cluster::new(pods, namespaces, policies)
}

/// Both evaluators agree on `src → dst`; returns the verdict.
fn agree(c: &Cluster, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> bool {
    let mut ids = Identities::default();
    let compiled = compile(c, &mut ids, &|_| true, usize::MAX);
    agree_compiled(c, &compiled, src, dst, proto, port)
}

fn agree_compiled(c: &Cluster, compiled: &Compiled, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> bool {
    let got = decide(compiled, src, dst, proto, port);
    let want = evaluate(c, src, dst, proto, port);
    let ctx = || format!("{src} -> {dst} proto {proto} port {port}: compiled {got:?}, oracle {want:?}");
    assert_eq!(got.allowed, want.allowed(), "{}", ctx());
    for (g, w) in [(&got.egress, &want.egress), (&got.ingress, &want.ingress)] {
        match (g, w) {
            (SideExplain::Open, Side::Open) | (SideExplain::Denied { .. }, Side::Denied) => {}
            (SideExplain::Allowed { rules: a }, Side::Allowed(b)) => {
                let mut b = b.clone();
                b.sort();
                assert_eq!(a, &b, "attribution: {}", ctx());
            }
            _ => panic!("sides differ: {}", ctx()),
        }
    }
    got.allowed
}

const A: [u8; 4] = [10, 244, 0, 2];
const B: [u8; 4] = [10, 244, 0, 3];
const C: [u8; 4] = [10, 244, 1, 2];

fn three_pods() -> Vec<PodView> {
    vec![
        pod("x", "a", A, &[("app", "web")], &[("http", 8080, "TCP")]),
        pod("x", "b", B, &[("app", "db")], &[("http", 9090, "TCP"), ("dns", 53, "UDP")]),
        pod("y", "c", C, &[("app", "web")], &[]),
    ]
}

fn ip(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

#[test]
fn port_ranges_become_exact_prefixes() {
    assert_eq!(range_prefixes(80, 80), vec![(80, 16)]);
    assert_eq!(range_prefixes(0, 65535), vec![(0, 0)]);
    assert_eq!(range_prefixes(1, 65535).len(), 16);
    for (a, b) in [(79u16, 81u16), (1000, 2000), (32768, 65535), (5, 5), (65535, 65535)] {
        let mut covered: Vec<u32> = Vec::new();
        for (start, bits) in range_prefixes(a, b) {
            let size = 1u32 << (16 - u32::from(bits));
            covered.extend(u32::from(start)..u32::from(start) + size);
        }
        assert_eq!(covered, (u32::from(a)..=u32::from(b)).collect::<Vec<_>>(), "{a}-{b}");
    }
}

#[test]
fn default_allow_and_empty_rules_deny() {
    let c = cluster(three_pods(), &[], &[]);
    assert!(agree(&c, ip(A), ip(B), IPPROTO_TCP, 80), "no policy: allowed");
    let c = cluster(three_pods(), &[], &["metadata: {name: deny, namespace: x}\nspec: {podSelector: {}}".into()]);
    assert!(!agree(&c, ip(C), ip(A), IPPROTO_TCP, 80), "ingress isolated, no rules");
    assert!(agree(&c, ip(A), ip(C), IPPROTO_TCP, 80), "egress not isolated");
    assert!(agree(&c, ip(A), ip(A), IPPROTO_TCP, 80), "a pod to itself");
}

#[test]
fn named_ports_resolve_on_the_destination() {
    // Egress to "http": 8080 on a, 9090 on b.
    let p = "metadata: {name: out, namespace: y}\nspec: {podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {}}], ports: [{port: http}]}]}";
    let c = cluster(three_pods(), &[], &[p.into()]);
    assert!(agree(&c, ip(C), ip(A), IPPROTO_TCP, 8080));
    assert!(!agree(&c, ip(C), ip(A), IPPROTO_TCP, 9090));
    assert!(agree(&c, ip(C), ip(B), IPPROTO_TCP, 9090));
    assert!(!agree(&c, ip(C), ip(B), IPPROTO_TCP, 8080));
    assert!(!agree(&c, ip(C), ip(B), IPPROTO_UDP, 9090), "the name's protocol");
}

#[test]
fn ip_blocks_match_pods_too_and_except_carves_out() {
    let p = "metadata: {name: blk, namespace: x}\nspec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.0.0/24]}}]}]}";
    let c = cluster(three_pods(), &[], &[p.into()]);
    assert!(agree(&c, ip(C), ip(B), IPPROTO_TCP, 1), "pod c is inside the block");
    assert!(!agree(&c, ip(A), ip(B), IPPROTO_TCP, 1), "pod a is in the except");
    assert!(agree(&c, Ipv4Addr::new(10, 244, 9, 9), ip(B), IPPROTO_UDP, 7), "a non-pod address in the block");
    assert!(!agree(&c, Ipv4Addr::new(192, 0, 2, 1), ip(B), IPPROTO_UDP, 7), "world");
}

#[test]
fn sctp_never_opens_tcp_or_udp() {
    let p =
        "metadata: {name: s, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{protocol: SCTP, port: 80}]}]}";
    let c = cluster(three_pods(), &[], &[p.into()]);
    assert!(!agree(&c, ip(C), ip(A), IPPROTO_TCP, 80));
    assert!(!agree(&c, ip(C), ip(A), IPPROTO_UDP, 80));
    assert!(agree(&c, ip(C), ip(A), IPPROTO_SCTP, 80));
}

#[test]
fn peer_selectors_and_or() {
    // {namespaceSelector AND podSelector} vs two separate peers.
    let and = "metadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}, podSelector: {matchLabels: {app: web}}}]}]}";
    let or = "metadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}, {podSelector: {matchLabels: {app: web}}}]}]}";
    let ns: &[(&str, &[(&str, &str)])] = &[("x", &[("team", "red")]), ("y", &[("team", "blue")])];
    let c = cluster(three_pods(), ns, &[and.into()]);
    assert!(agree(&c, ip(C), ip(B), IPPROTO_TCP, 5), "web in a blue namespace");
    assert!(!agree(&c, ip(A), ip(B), IPPROTO_TCP, 5), "web in a red namespace");
    let c = cluster(three_pods(), ns, &[or.into()]);
    assert!(agree(&c, ip(C), ip(B), IPPROTO_TCP, 5));
    assert!(agree(&c, ip(A), ip(B), IPPROTO_TCP, 5), "web in the policy's namespace");
    let by_name = "metadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: y}}}]}]}";
    let c = cluster(three_pods(), &[], &[by_name.into()]);
    assert!(agree(&c, ip(C), ip(A), IPPROTO_TCP, 5), "the name label exists without a Namespace object");
    assert!(!agree(&c, ip(B), ip(A), IPPROTO_TCP, 5));
}

#[test]
fn fail_closed_when_entries_do_not_fit() {
    let p =
        "metadata: {name: r, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 1, endPort: 65535}]}]}";
    let c = cluster(three_pods(), &[], &[p.into()]);
    let mut ids = Identities::default();
    let compiled = compile(&c, &mut ids, &|_| true, 20);
    let a = &compiled.endpoints[&ip(A)];
    assert!(a.fail_closed.is_none(), "16 entries fit");
    let b = &compiled.endpoints[&ip(B)];
    assert!(b.fail_closed.is_some(), "the second endpoint does not: {b:?}");
    let e = decide(&compiled, ip(C), ip(B), IPPROTO_TCP, 80);
    assert!(!e.allowed && matches!(e.ingress, SideExplain::FailClosed { .. }));
}

/// xorshift64*: deterministic randomness for the differential walk.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

fn random_selector(r: &mut Rng, keys: &[&str], values: &[&str]) -> String {
    let mut parts = Vec::new();
    if r.chance(50) {
        parts.push(format!("matchLabels: {{{}: {}}}", r.pick(keys), r.pick(values)));
    }
    if r.chance(40) {
        let k = r.pick(keys);
        parts.push(match r.next() % 4 {
            0 => format!(
                "matchExpressions: [{{key: {k}, operator: In, values: [{}, {}]}}]",
                r.pick(values),
                r.pick(values)
            ),
            1 => format!("matchExpressions: [{{key: {k}, operator: NotIn, values: [{}]}}]", r.pick(values)),
            2 => format!("matchExpressions: [{{key: {k}, operator: Exists}}]"),
            _ => format!("matchExpressions: [{{key: {k}, operator: DoesNotExist}}]"),
        });
    }
    format!("{{{}}}", parts.join(", "))
}

fn random_peer(r: &mut Rng) -> String {
    let pods = || ["app"].as_slice();
    match r.next() % 5 {
        0 => format!("{{podSelector: {}}}", random_selector(r, pods(), &["web", "db", "api"])),
        1 => format!(
            "{{namespaceSelector: {}}}",
            random_selector(r, &["team", "kubernetes.io/metadata.name"], &["red", "blue", "a", "b"])
        ),
        2 => format!(
            "{{namespaceSelector: {}, podSelector: {}}}",
            random_selector(r, &["team"], &["red", "blue"]),
            random_selector(r, &["app", "tier"], &["web", "db", "fe"])
        ),
        3 => format!(
            "{{ipBlock: {{cidr: {}}}}}",
            r.pick(&["10.244.0.0/16", "10.244.1.0/24", "0.0.0.0/0", "192.0.2.0/24"])
        ),
        _ => format!(
            "{{ipBlock: {{cidr: {}, except: [{}]}}}}",
            r.pick(&["10.244.0.0/16", "0.0.0.0/0"]),
            r.pick(&["10.244.1.0/24", "10.244.0.0/30", "10.244.2.3/32"])
        ),
    }
}

fn random_ports(r: &mut Rng) -> String {
    let all = [
        "{port: 80}",
        "{protocol: UDP, port: 53}",
        "{port: 79, endPort: 81}",
        "{port: http}",
        "{protocol: UDP, port: dns}",
        "{protocol: SCTP, port: 80}",
        "{protocol: UDP}",
        "{port: 1024, endPort: 65535}",
    ];
    let n = 1 + r.next() % 2;
    let v: Vec<&str> = (0..n).map(|_| *r.pick(&all)).collect();
    format!("[{}]", v.join(", "))
}

fn random_rule(r: &mut Rng, peers_key: &str) -> String {
    let mut parts = Vec::new();
    if r.chance(70) {
        let n = 1 + r.next() % 2;
        let peers: Vec<String> = (0..n).map(|_| random_peer(r)).collect();
        parts.push(format!("{peers_key}: [{}]", peers.join(", ")));
    }
    if r.chance(70) {
        parts.push(format!("ports: {}", random_ports(r)));
    }
    format!("{{{}}}", parts.join(", "))
}

fn random_policy(r: &mut Rng, i: usize, ns: &str) -> String {
    let types =
        r.pick(&["", "policyTypes: [Ingress], ", "policyTypes: [Egress], ", "policyTypes: [Ingress, Egress], "]);
    let rules = |r: &mut Rng, key: &str| -> String {
        let n = r.next() % 3;
        (0..n).map(|_| random_rule(r, if key == "ingress" { "from" } else { "to" })).collect::<Vec<_>>().join(", ")
    };
    let ingress = rules(r, "ingress");
    let egress = rules(r, "egress");
    format!(
        "metadata: {{name: p{i}, namespace: {ns}}}\nspec: {{podSelector: {}, {types}ingress: [{ingress}], egress: [{egress}]}}",
        random_selector(r, &["app", "tier"], &["web", "db", "api", "fe"])
    )
}

fn random_cluster(r: &mut Rng) -> Cluster {
    let mut pods = Vec::new();
    for (n, ns) in ["a", "b"].iter().enumerate() {
        for i in 0..4u8 {
            let mut labels = vec![("app", *r.pick(&["web", "db", "api"]))];
            if r.chance(50) {
                labels.push(("tier", *r.pick(&["fe", "be"])));
            }
            let mut ports = Vec::new();
            if r.chance(60) {
                ports.push(("http", *r.pick(&[80, 8080]), "TCP"));
            }
            if r.chance(40) {
                ports.push(("dns", 53, "UDP"));
            }
            pods.push(pod(ns, &format!("p{i}"), [10, 244, n as u8, 2 + i], &labels, &ports));
        }
    }
    let team = |r: &mut Rng| *r.pick(&["red", "blue"]);
    let (ta, tb) = (team(r), team(r));
    let ns: &[(&str, &[(&str, &str)])] = &[("a", &[("team", ta)]), ("b", &[("team", tb)])];
    let n = 1 + r.next() % 4;
    let policies: Vec<String> = (0..n as usize).map(|i| random_policy(r, i, r_ns(i))).collect();
    cluster(pods, ns, &policies)
}

fn r_ns(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "a"
    } else {
        "b"
    }
}

#[test]
fn compiled_lookup_matches_the_spec_on_random_policies() {
    let probes: &[(u8, u16)] = &[
        (IPPROTO_TCP, 80),
        (IPPROTO_TCP, 8080),
        (IPPROTO_TCP, 81),
        (IPPROTO_TCP, 1023),
        (IPPROTO_TCP, 40000),
        (IPPROTO_UDP, 53),
        (IPPROTO_UDP, 80),
        (1, 0),
    ];
    let externals = [Ipv4Addr::new(192, 0, 2, 7), Ipv4Addr::new(10, 244, 2, 3), Ipv4Addr::new(8, 8, 8, 8)];
    let mut allowed = 0usize;
    let mut denied = 0usize;
    for seed in 1..=500u64 {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let c = random_cluster(&mut r);
        let ips: Vec<Ipv4Addr> = c.pods.values().map(|p| p.ip).chain(externals).collect();
        let compiled = compile(&c, &mut Identities::default(), &|_| true, usize::MAX);
        for &src in &ips {
            for &dst in &ips {
                if c.pod_by_ip(src).is_none() && c.pod_by_ip(dst).is_none() {
                    continue;
                }
                for &(proto, port) in probes {
                    if agree_compiled(&c, &compiled, src, dst, proto, port) {
                        allowed += 1;
                    } else {
                        denied += 1;
                    }
                }
            }
        }
    }
    // The walk must exercise both outcomes substantially, or it proves little.
    assert!(allowed > 10_000 && denied > 10_000, "allowed {allowed}, denied {denied}");
}

mod incremental {
    //! Passes that go on from the last ([`PolicySync::apply_changes`]) against full ones:
    //! random clusters, then random changes — pods (labels, ports, addresses shared with another
    //! pod, terminating, finished, created, deleted, local or not), policies (created, replaced,
    //! deleted), now and then a namespace's labels; after every step the maps the incremental
    //! writer holds mean the same as a fresh full compile's (identities compared by what they
    //! stand for, entries with the rules they carry).
    use std::collections::{BTreeMap, BTreeSet};

    use weir_bpf_common::PolicyEndpoint;
    use weir_dataplane::maps::{FakeMap, PolicyEntry};

    use super::*;
    use crate::{
        policy::{
            compile::{IdentityKey, ANY_PEER},
            sync::{PolicyMaps, PolicySync},
            RuleRef,
        },
        source::{Changes, ClusterSnapshot},
    };

    type Fakes = PolicyMaps<FakeMap<(Ipv4Addr, u8), u32>, FakeMap<PolicyEntry, u32>, FakeMap<Ipv4Addr, PolicyEndpoint>>;

    fn fakes() -> Fakes {
        PolicyMaps { ipcache: FakeMap::default(), entries: FakeMap::default(), endpoints: FakeMap::default() }
    }

    /// An identity by what it stands for.
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Who {
        Any,
        World,
        Key(IdentityKey),
        Unknown(u32),
    }

    type Meaning = (
        BTreeMap<(Ipv4Addr, u8), Who>,
        BTreeMap<Ipv4Addr, (Who, u32)>,
        BTreeMap<(Ipv4Addr, u8, Who, u8, u16, u8), Vec<RuleRef>>,
    );

    fn meaning(sync: &PolicySync, m: &Fakes) -> Meaning {
        let c = &sync.compiled;
        let who = |id: u32| match id {
            ANY_PEER => Who::Any,
            1 => Who::World,
            id => c.identities.get(&id).cloned().map_or(Who::Unknown(id), Who::Key),
        };
        let ipcache = m.ipcache.entries.iter().map(|(k, id)| (*k, who(*id))).collect();
        let endpoints = m.endpoints.entries.iter().map(|(ip, e)| (*ip, (who(e.identity), e.flags))).collect();
        let entries = m
            .entries
            .entries
            .iter()
            .map(|(e, a)| {
                ((e.endpoint, e.direction, who(e.identity), e.proto, e.port, e.port_bits), c.attribution(*a).to_vec())
            })
            .collect();
        (ipcache, endpoints, entries)
    }

    fn namespace(name: &str, team: &str) -> Arc<k8s_openapi::api::core::v1::Namespace> {
        Arc::new(
            serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {"team": team}}}))
                .expect("namespace"),
        )
    }

    /// A random pod; its address is picked among few so that pods share one now and then, and
    /// among prefixes the random ipBlocks name.
    fn random_pod(r: &mut Rng, ns: &str, name: &str) -> Arc<PodInfo> {
        let mut labels = vec![("app", *r.pick(&["web", "db", "api"]))];
        if r.chance(50) {
            labels.push(("tier", *r.pick(&["fe", "be"])));
        }
        let mut ports = Vec::new();
        if r.chance(60) {
            ports.push(("http", *r.pick(&[80, 8080]), "TCP"));
        }
        if r.chance(30) {
            ports.push(("dns", 53, "UDP"));
        }
        let ip = *r.pick(&[
            [10, 244, 0, 1],
            [10, 244, 0, 2],
            [10, 244, 0, 5],
            [10, 244, 1, 2],
            [10, 244, 1, 3],
            [10, 244, 2, 3],
            [10, 244, 2, 4],
            [10, 244, 3, 9],
        ]);
        let mut info = (*pod(ns, name, ip, &labels, &ports).info).clone();
        info.deleting = r.chance(10);
        info.finished = r.chance(5);
        Arc::new(info)
    }

    #[test]
    fn passes_from_changes_end_where_full_passes_do() {
        let mut incremental_passes = 0;
        for seed in 1..=300u64 {
            let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut snap = ClusterSnapshot::default();
            for ns in ["a", "b"] {
                let team: &&str = r.pick(&["red", "blue"]);
                snap.namespaces.insert(ns.into(), namespace(ns, team));
            }
            let names: Vec<(String, String)> =
                ["a", "b"].iter().flat_map(|ns| (0..5).map(move |i| (ns.to_string(), format!("p{i}")))).collect();
            for key in &names {
                if r.chance(70) {
                    let info = random_pod(&mut r, &key.0, &key.1);
                    snap.pods.insert(key.clone(), info);
                }
            }
            for i in 0..(1 + r.next() % 4) as usize {
                let p = np(&random_policy(&mut r, i, r_ns(i)));
                snap.network_policies.insert(
                    (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default()),
                    Arc::new(p),
                );
            }
            let local_of = |snap: &ClusterSnapshot, chosen: &BTreeSet<(String, String)>| {
                chosen
                    .iter()
                    .filter_map(|k| {
                        let ip = snap.pods.get(k)?.ips.first()?.parse::<Ipv4Addr>().ok()?;
                        Some((k.clone(), ip))
                    })
                    .collect::<BTreeMap<_, _>>()
            };
            let mut chosen: BTreeSet<(String, String)> = names.iter().filter(|_| r.chance(50)).cloned().collect();
            let (mut inc, mut maps) = (PolicySync::default(), fakes());
            inc.apply(&snap, &local_of(&snap, &chosen), &mut maps).expect("first pass");
            for step in 0..12 {
                let mut changed = BTreeSet::new();
                let mut changes = Changes::default();
                if r.chance(25) {
                    // A policy created, replaced or deleted.
                    let i = (r.next() % 5) as usize;
                    let p = np(&random_policy(&mut r, i, r_ns(i)));
                    let key =
                        (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default());
                    if r.chance(30) {
                        snap.network_policies.remove(&key);
                    } else {
                        snap.network_policies.insert(key.clone(), Arc::new(p));
                    }
                    changes.network_policies.insert(key);
                }
                if r.chance(5) {
                    let team: &&str = r.pick(&["red", "blue"]);
                    snap.namespaces.insert("b".into(), namespace("b", team));
                    changes.namespaces.insert("b".into());
                }
                for _ in 0..(r.next() % 4) {
                    let key = r.pick(&names).clone();
                    match r.next() % 4 {
                        0 => {
                            snap.pods.remove(&key);
                        }
                        1 => {
                            if !chosen.remove(&key) {
                                chosen.insert(key.clone());
                            }
                        }
                        _ => {
                            let info = random_pod(&mut r, &key.0, &key.1);
                            snap.pods.insert(key.clone(), info);
                        }
                    }
                    changed.insert(key);
                }
                let local = local_of(&snap, &chosen);
                changes.pods = changed;
                let (full_before, before) = inc.passes;
                inc.apply_changes(&snap, &changes, &local, &BTreeSet::new(), &mut maps).expect("pass");
                incremental_passes += inc.passes.1 - before;
                // Only a namespace's labels call for a full pass; policies (ipBlocks that come
                // and go included) and pods go on from the last.
                if changes.namespaces.is_empty() {
                    assert_eq!(inc.passes.0, full_before, "seed {seed} step {step}: a full pass for {changes:?}");
                }
                let (mut full, mut full_maps) = (PolicySync::default(), fakes());
                full.apply(&snap, &local, &mut full_maps).expect("full pass");
                let (a, b) = (meaning(&inc, &maps), meaning(&full, &full_maps));
                assert_eq!(a.0, b.0, "seed {seed} step {step}: IP → identity");
                assert_eq!(a.1, b.1, "seed {seed} step {step}: endpoints");
                assert_eq!(a.2, b.2, "seed {seed} step {step}: allow entries");
            }
        }
        assert!(incremental_passes > 3000, "passes from changes were made ({incremental_passes}), not full ones");
    }
}
