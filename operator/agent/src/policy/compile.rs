//! The policy compiler: NetworkPolicies + pods + namespaces → what the datapath reads.
//!
//! * **Identities.** Every peer a rule can name is a set of addresses with the same answer to
//!   every selector: pods with the same namespace, labels, named ports and ipBlock membership
//!   share one numeric identity; addresses outside pods get one identity per set of ipBlocks they
//!   fall in. Named ports are part of a pod identity because an egress rule's named port is
//!   resolved on the destination pod; ipBlock membership is part of it because a block matches
//!   pod addresses too. Numbers are node-local and stable for as long as their key lives.
//! * **IP → identity** (`ipcache`): pods' /32s, and every block CIDR and except, each with the
//!   identity of the blocks that contain it (the longest prefix containing an address decides
//!   which blocks contain it, because prefixes nest). An address in no prefix is [`WORLD`].
//! * **Per-endpoint entries**, for each local pod and direction a policy isolates: (peer identity
//!   or [`ANY_PEER`], protocol or all, port prefix) → the rules that allow it. Port ranges become
//!   port prefixes, and entries with a peer also carry the any-peer entries, so the longest
//!   match of one lookup names every rule that allows a packet.
//!
//! [`lookup`] is the datapath's lookup done in userspace; [`explain`] answers with it.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
};

use ipnetwork::Ipv4Network;
use serde::Serialize;

use super::{parse, Direction, IpBlock, Peer, Policy, PolicyError, PortSpec, RuleRef, NAMESPACE_NAME_LABEL};
use crate::source::{ClusterSnapshot, PodInfo};

/// The peer wildcard in entry keys (never an identity).
pub const ANY_PEER: u32 = 0;
/// Addresses in no pod and no ipBlock: everything outside the cluster that no policy names.
pub const WORLD: u32 = 1;
const FIRST_ALLOCATED: u32 = 256;

/// A pod as policies see it.
#[derive(Clone, Debug)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub info: Arc<PodInfo>,
}

impl PodView {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.info.label(k)
    }
    /// The number of the container port called `name` for protocol `proto`.
    pub fn named_port(&self, name: &str, proto: u8) -> Option<u16> {
        self.info
            .named_ports
            .iter()
            .find(|p| &*p.name == name && super::proto_number(&p.protocol) == Some(proto))
            .and_then(|p| u16::try_from(p.port).ok())
    }
    fn named_ports(&self) -> Vec<(String, u8, u16)> {
        let mut v: Vec<_> = self
            .info
            .named_ports
            .iter()
            .filter_map(|p| Some((p.name.to_string(), super::proto_number(&p.protocol)?, u16::try_from(p.port).ok()?)))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Parsed policies by namespace/name, with the object they were parsed from: an unchanged
/// object (the same shared `Arc`) is not parsed again.
pub type ParseCache =
    HashMap<(String, String), (Arc<k8s_openapi::api::networking::v1::NetworkPolicy>, Result<Policy, PolicyError>)>;

/// The cluster as policies see it: pods with an address, namespace labels, valid policies.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub pods: Vec<PodView>,
    by_ip: HashMap<Ipv4Addr, usize>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Valid policies, sorted by namespace/name ([`RuleRef::policy`] indexes this).
    pub policies: Vec<Policy>,
    /// Policies that failed validation; where an earlier version was valid it is still enforced.
    pub rejected: Vec<PolicyError>,
}

impl Cluster {
    pub fn new(
        pods: Vec<PodView>,
        namespaces: BTreeMap<String, BTreeMap<String, String>>,
        mut policies: Vec<Policy>,
    ) -> Self {
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut c = Cluster { pods, by_ip: HashMap::new(), namespaces, policies, rejected: Vec::new() };
        c.pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        for (i, p) in c.pods.iter().enumerate() {
            // A terminating pod may still hold the address a new pod was given: the live one wins.
            let replace = c.by_ip.get(&p.ip).is_none_or(|&j| c.pods[j].info.deleting && !p.info.deleting);
            if replace {
                c.by_ip.insert(p.ip, i);
            }
        }
        c
    }

    /// Pods with an IPv4 address that are not host-network and not finished, the namespaces'
    /// labels, and the valid policies; an invalid policy keeps the version in `previous`, if any.
    pub fn from_snapshot(s: &ClusterSnapshot, previous: Option<&Cluster>) -> Self {
        Self::from_snapshot_with(s, previous, &BTreeMap::new(), &mut ParseCache::default())
    }

    /// [`Cluster::from_snapshot`], with the addresses of this node's endpoints (namespace/name →
    /// address) taken from `local`: the agent knows them before the API reports them.
    pub fn from_snapshot_with(
        s: &ClusterSnapshot,
        previous: Option<&Cluster>,
        local: &BTreeMap<(String, String), Ipv4Addr>,
        cache: &mut ParseCache,
    ) -> Self {
        let mut pods = Vec::new();
        for ((ns, name), info) in &s.pods {
            if info.host_network || info.finished {
                continue;
            }
            let reported = info.ips.iter().find_map(|ip| ip.parse::<Ipv4Addr>().ok());
            let Some(ip) = local.get(&(ns.clone(), name.clone())).copied().or(reported) else { continue };
            pods.push(PodView { namespace: ns.clone(), name: name.clone(), ip, info: info.clone() });
        }
        let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (name, n) in &s.namespaces {
            namespaces.insert(name.clone(), n.metadata.labels.clone().unwrap_or_default());
        }
        let mut policies = Vec::new();
        let mut rejected = Vec::new();
        cache.retain(|k, _| s.network_policies.contains_key(k));
        for (key @ (ns, name), p) in &s.network_policies {
            let parsed = match cache.get(key) {
                Some((seen, r)) if Arc::ptr_eq(seen, p) => r.clone(),
                _ => {
                    let r = parse(p);
                    cache.insert(key.clone(), (p.clone(), r.clone()));
                    r
                }
            };
            match parsed {
                Ok(p) => policies.push(p),
                Err(e) => {
                    if let Some(old) = previous.and_then(|c| c.policy(ns, name)) {
                        policies.push(old.clone());
                    }
                    rejected.push(e);
                }
            }
        }
        let mut c = Cluster::new(pods, namespaces, policies);
        c.rejected = rejected;
        c
    }

    pub fn policy(&self, ns: &str, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.namespace == ns && p.name == name)
    }

    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodView> {
        self.by_ip.get(&ip).map(|&i| &self.pods[i])
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<&PodView> {
        self.pods.iter().find(|p| p.namespace == ns && p.name == name)
    }

    /// A namespace's label; every namespace has [`NAMESPACE_NAME_LABEL`] = its name.
    pub fn namespace_label<'a>(&'a self, ns: &'a str, k: &str) -> Option<&'a str> {
        if k == NAMESPACE_NAME_LABEL {
            return Some(ns);
        }
        self.namespaces.get(ns).and_then(|l| l.get(k)).map(String::as_str)
    }

    /// `RuleRef` as `namespace/name direction[i]`.
    pub fn rule_name(&self, r: &RuleRef) -> String {
        let p = &self.policies[r.policy];
        format!("{}/{} {}[{}]", p.namespace, p.name, r.direction.as_str(), r.rule)
    }

    /// Policies of `ep`'s namespace that select it for `dir`.
    pub fn selecting(&self, ep: &PodView, dir: Direction) -> Vec<usize> {
        self.policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.namespace == ep.namespace && p.rules(dir).is_some() && p.pods.matches(&|k| ep.label(k)))
            .map(|(i, _)| i)
            .collect()
    }
}

/// What identifies a set of equivalent addresses (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdentityKey {
    Pod { namespace: String, labels: Vec<(String, String)>, named_ports: Vec<(String, u8, u16)>, blocks: Vec<IpBlock> },
    Cidr { blocks: Vec<IpBlock> },
}

impl IdentityKey {
    /// A short description for the CLI.
    pub fn describe(&self) -> String {
        let blocks = |b: &[IpBlock]| {
            b.iter()
                .map(|b| {
                    let mut s = b.cidr.to_string();
                    for e in &b.except {
                        s.push_str(&format!(" except {e}"));
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        match self {
            IdentityKey::Pod { namespace, labels, .. } => {
                let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("pods in {namespace} with {{{}}}", l.join(","))
            }
            IdentityKey::Cidr { blocks: b } if b.is_empty() => "world".to_owned(),
            IdentityKey::Cidr { blocks: b } => format!("addresses in [{}]", blocks(b)),
        }
    }
}

/// Node-local identity numbers, stable while their key exists.
#[derive(Debug, Default)]
pub struct Identities {
    ids: BTreeMap<IdentityKey, u32>,
    next: u32,
}

impl Identities {
    /// New numbers start above `n` (what an earlier agent's maps hold), so a number written by
    /// it never names a different group of peers while its entries are live.
    pub fn start_above(&mut self, n: u32) {
        self.next = self.next.max(n.saturating_add(1)).max(FIRST_ALLOCATED);
    }

    fn assign(&mut self, keys: BTreeSet<IdentityKey>) -> BTreeMap<IdentityKey, u32> {
        if self.next < FIRST_ALLOCATED {
            self.next = FIRST_ALLOCATED;
        }
        let mut out = BTreeMap::new();
        for k in keys {
            if matches!(&k, IdentityKey::Cidr { blocks } if blocks.is_empty()) {
                out.insert(k, WORLD);
                continue;
            }
            let id = match self.ids.get(&k) {
                Some(id) => *id,
                None => {
                    let id = self.next;
                    self.next += 1;
                    id
                }
            };
            out.insert(k, id);
        }
        self.ids = out.iter().filter(|(_, id)| **id != WORLD).map(|(k, id)| (k.clone(), *id)).collect();
        out
    }
}

/// One allow entry of an endpoint and direction. `proto == 0`: every protocol (then `port` and
/// `port_bits` are 0). Otherwise the top `port_bits` bits of `port` must match (0 = any port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EntryKey {
    pub peer: u32,
    pub proto: u8,
    pub port: u16,
    pub port_bits: u8,
}

impl EntryKey {
    fn all_protocols(peer: u32) -> Self {
        EntryKey { peer, proto: 0, port: 0, port_bits: 0 }
    }
    fn port(peer: u32, proto: u8, port: u16, bits: u8) -> Self {
        EntryKey { peer, proto, port: port & mask(bits), port_bits: bits }
    }
    /// The first and last port the entry covers.
    pub fn port_range(&self) -> (u16, u16) {
        if self.proto == 0 {
            return (0, u16::MAX);
        }
        (self.port, self.port | !mask(self.port_bits))
    }
}

fn mask(bits: u8) -> u16 {
    if bits == 0 {
        0
    } else {
        u16::MAX << (16 - u32::from(bits))
    }
}

/// Entry → attribution id (index + 1 into [`Compiled::attributions`]).
pub type Entries = BTreeMap<EntryKey, u32>;

#[derive(Clone, Debug, Default)]
pub struct EndpointPolicy {
    pub namespace: String,
    pub name: String,
    pub identity: u32,
    /// `None`: no policy isolates this direction.
    pub ingress: Option<Entries>,
    pub egress: Option<Entries>,
    /// Policies selecting the endpoint, per direction (indexes into `Cluster::policies`).
    pub selected_by: [Vec<usize>; 2],
    /// Set when the endpoint's entries do not fit: the datapath then denies all its traffic.
    pub fail_closed: Option<String>,
}

impl EndpointPolicy {
    pub fn entries(&self, d: Direction) -> Option<&Entries> {
        match d {
            Direction::Ingress => self.ingress.as_ref(),
            Direction::Egress => self.egress.as_ref(),
        }
    }
    pub fn entry_count(&self) -> usize {
        self.ingress.as_ref().map_or(0, BTreeMap::len) + self.egress.as_ref().map_or(0, BTreeMap::len)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Compiled {
    /// (prefix, length) → identity.
    pub ipcache: BTreeMap<(Ipv4Addr, u8), u32>,
    /// Local endpoints by address.
    pub endpoints: BTreeMap<Ipv4Addr, EndpointPolicy>,
    /// Attribution id `i + 1` → the rules behind an entry.
    pub attributions: Vec<Vec<RuleRef>>,
    pub identities: BTreeMap<u32, IdentityKey>,
}

impl Compiled {
    /// The identity of an address, as the datapath's LPM lookup finds it.
    pub fn identity_of(&self, ip: Ipv4Addr) -> u32 {
        for len in (0..=32u8).rev() {
            let net = Ipv4Network::new(ip, len).map(|n| n.network()).unwrap_or(ip);
            if let Some(id) = self.ipcache.get(&(net, len)) {
                return *id;
            }
        }
        WORLD
    }

    pub fn attribution(&self, id: u32) -> &[RuleRef] {
        self.attributions.get(id as usize - 1).map_or(&[], Vec::as_slice)
    }

    pub fn total_entries(&self) -> usize {
        self.endpoints.values().map(EndpointPolicy::entry_count).sum()
    }
}

/// The datapath's lookup: the longest entry for the peer's identity, else for any peer.
pub fn lookup(entries: &Entries, peer: u32, proto: u8, port: u16) -> Option<u32> {
    for id in [peer, ANY_PEER] {
        for bits in (0..=16u8).rev() {
            if let Some(a) = entries.get(&EntryKey::port(id, proto, port, bits)) {
                return Some(*a);
            }
        }
        if let Some(a) = entries.get(&EntryKey::all_protocols(id)) {
            return Some(*a);
        }
    }
    None
}

/// Port prefixes covering `a..=b` exactly: (first port, significant bits).
pub fn range_prefixes(a: u16, b: u16) -> Vec<(u16, u8)> {
    let (mut lo, hi) = (u32::from(a), u32::from(b));
    let mut out = Vec::new();
    while lo <= hi {
        let mut size: u32 = if lo == 0 { 1 << 16 } else { lo & lo.wrapping_neg() };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

enum PeerSet {
    Any,
    Ids(BTreeSet<u32>),
}

/// Compiles for the pods `local` selects (this node's endpoints). `capacity` bounds the entries
/// over all endpoints; an endpoint that does not fit is marked fail-closed with no entries.
pub fn compile(c: &Cluster, ids: &mut Identities, local: &dyn Fn(&PodView) -> bool, capacity: usize) -> Compiled {
    // Every ipBlock any policy names.
    let mut blocks: BTreeSet<IpBlock> = BTreeSet::new();
    for p in &c.policies {
        for d in Direction::BOTH {
            for r in p.rules(d).into_iter().flatten() {
                for peer in r.peers.iter().flatten() {
                    if let Peer::Block(b) = peer {
                        blocks.insert(b.clone());
                    }
                }
            }
        }
    }
    // Blocks by CIDR: the blocks containing a prefix are found among the ≤ 33 shorter-or-equal
    // prefixes of it, not by scanning every block (10k rules would make that quadratic).
    let mut by_cidr: HashMap<(Ipv4Addr, u8), Vec<&IpBlock>> = HashMap::new();
    for b in &blocks {
        by_cidr.entry((b.cidr.network(), b.cidr.prefix())).or_default().push(b);
    }
    // The blocks containing every address whose longest prefix is `net/len`: CIDR covers it and
    // no except does (an except inside it is a longer prefix of its own).
    let blocks_of = |net: Ipv4Addr, len: u8| -> Vec<IpBlock> {
        let mut out = Vec::new();
        for l in 0..=len {
            let outer = Ipv4Network::new(net, l).map(|n| n.network()).unwrap_or(net);
            for b in by_cidr.get(&(outer, l)).into_iter().flatten() {
                let excepted = b.except.iter().any(|e| e.prefix() <= len && e.contains(net));
                if !excepted {
                    out.push((*b).clone());
                }
            }
        }
        out.sort();
        out
    };

    // Identity keys of pods and of block prefixes.
    let mut pod_keys: Vec<IdentityKey> = Vec::with_capacity(c.pods.len());
    for p in &c.pods {
        pod_keys.push(IdentityKey::Pod {
            namespace: p.namespace.clone(),
            labels: p.info.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            named_ports: p.named_ports(),
            blocks: blocks_of(p.ip, 32),
        });
    }
    let mut prefixes: BTreeMap<(Ipv4Addr, u8), IdentityKey> = BTreeMap::new();
    for b in &blocks {
        for n in std::iter::once(&b.cidr).chain(&b.except) {
            prefixes
                .insert((n.network(), n.prefix()), IdentityKey::Cidr { blocks: blocks_of(n.network(), n.prefix()) });
        }
    }
    let all: BTreeSet<IdentityKey> = pod_keys.iter().chain(prefixes.values()).cloned().collect();
    let numbers = ids.assign(all);
    let mut out = Compiled::default();
    for (k, id) in &numbers {
        out.identities.insert(*id, k.clone());
    }
    for (prefix, k) in &prefixes {
        out.ipcache.insert(*prefix, numbers[k]);
    }
    // A pod whose address another pod also claims (a stale object) owns it only if the index
    // says so: computed once, used for the IP → identity entries and the local endpoints.
    let owns: Vec<bool> = c
        .pods
        .iter()
        .map(|p| c.pod_by_ip(p.ip).is_some_and(|q| q.namespace == p.namespace && q.name == p.name))
        .collect();
    let mut pod_ids = Vec::with_capacity(c.pods.len());
    for ((p, k), &owns_ip) in c.pods.iter().zip(&pod_keys).zip(&owns) {
        let id = numbers[k];
        pod_ids.push(id);
        if owns_ip {
            out.ipcache.insert((p.ip, 32), id);
        }
    }

    // Identities inside each block.
    let mut in_block: HashMap<&IpBlock, Vec<u32>> = HashMap::new();
    for (k, id) in &numbers {
        let (IdentityKey::Pod { blocks: bs, .. } | IdentityKey::Cidr { blocks: bs }) = k;
        for b in bs {
            in_block.entry(b).or_default().push(*id);
        }
    }
    let pod_identities: Vec<(&IdentityKey, u32)> =
        numbers.iter().filter(|(k, _)| matches!(k, IdentityKey::Pod { .. })).map(|(k, id)| (k, *id)).collect();
    // Peer sets per rule, computed once over identities (not pods).
    let mut peer_sets: HashMap<RuleRef, PeerSet> = HashMap::new();
    let peer_set = |pi: usize, d: Direction, ri: usize| -> PeerSet {
        let p = &c.policies[pi];
        let r = &p.rules(d).expect("rule of a selected direction")[ri];
        let Some(peers) = &r.peers else { return PeerSet::Any };
        let mut set = BTreeSet::new();
        for peer in peers {
            match peer {
                Peer::Block(b) => set.extend(in_block.get(b).into_iter().flatten().copied()),
                Peer::Pods { pods, namespaces } => {
                    for (k, id) in &pod_identities {
                        let IdentityKey::Pod { namespace, labels, .. } = k else { continue };
                        let ns_ok = match namespaces {
                            None => *namespace == p.namespace,
                            Some(sel) => sel.matches(&|key| c.namespace_label(namespace, key)),
                        };
                        let get = |key: &str| labels.iter().find(|(lk, _)| lk == key).map(|(_, v)| v.as_str());
                        if ns_ok && pods.matches(&get) {
                            set.insert(*id);
                        }
                    }
                }
            }
        }
        PeerSet::Ids(set)
    };
    // Named ports of pod identities, for egress named ports.
    let named: BTreeMap<u32, &Vec<(String, u8, u16)>> = numbers
        .iter()
        .filter_map(|(k, id)| match k {
            IdentityKey::Pod { named_ports, .. } => Some((*id, named_ports)),
            IdentityKey::Cidr { .. } => None,
        })
        .collect();

    let mut interned: BTreeMap<Vec<RuleRef>, u32> = BTreeMap::new();
    let mut used = 0usize;
    for (pi, p) in c.pods.iter().enumerate() {
        if !local(p) || !owns[pi] {
            continue;
        }
        let mut ep = EndpointPolicy {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            identity: pod_ids[pi],
            ..Default::default()
        };
        for d in Direction::BOTH {
            let selecting = c.selecting(p, d);
            if selecting.is_empty() {
                continue;
            }
            let mut raw: BTreeMap<EntryKey, BTreeSet<RuleRef>> = BTreeMap::new();
            for &pol in &selecting {
                for (ri, r) in c.policies[pol].rules(d).unwrap_or(&[]).iter().enumerate() {
                    let rr = RuleRef { policy: pol, direction: d, rule: ri };
                    let peers = peer_sets.entry(rr).or_insert_with(|| peer_set(pol, d, ri));
                    let peer_ids: Vec<u32> = match peers {
                        PeerSet::Any => vec![ANY_PEER],
                        PeerSet::Ids(s) => s.iter().copied().collect(),
                    };
                    let mut add = |k: EntryKey| {
                        raw.entry(k).or_default().insert(rr);
                    };
                    let Some(ports) = &r.ports else {
                        for &id in &peer_ids {
                            add(EntryKey::all_protocols(id));
                        }
                        continue;
                    };
                    for m in ports {
                        match &m.port {
                            PortSpec::Any => peer_ids.iter().for_each(|&id| add(EntryKey::port(id, m.proto, 0, 0))),
                            PortSpec::Range(a, b) => {
                                for (start, bits) in range_prefixes(*a, *b) {
                                    peer_ids.iter().for_each(|&id| add(EntryKey::port(id, m.proto, start, bits)));
                                }
                            }
                            PortSpec::Named(n) if d == Direction::Ingress => {
                                if let Some(port) = p.named_port(n, m.proto) {
                                    peer_ids.iter().for_each(|&id| add(EntryKey::port(id, m.proto, port, 16)));
                                }
                            }
                            PortSpec::Named(n) => {
                                // Egress: the destination's own number for the name; only pods
                                // have named ports, so a peer set of "anyone" means every pod.
                                let candidates: Vec<u32> = match peers {
                                    PeerSet::Any => named.keys().copied().collect(),
                                    PeerSet::Ids(s) => s.iter().copied().collect(),
                                };
                                for id in candidates {
                                    let found = named
                                        .get(&id)
                                        .and_then(|ps| ps.iter().find(|(pn, pr, _)| pn == n && *pr == m.proto));
                                    if let Some((_, _, port)) = found {
                                        add(EntryKey::port(id, m.proto, *port, 16));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            let entries = close_and_intern(raw, &mut interned);
            match d {
                Direction::Ingress => ep.ingress = Some(entries),
                Direction::Egress => ep.egress = Some(entries),
            }
            ep.selected_by[d as usize] = selecting;
        }
        let n = ep.entry_count();
        if used + n > capacity {
            ep.fail_closed = Some(format!(
                "{n} policy entries do not fit (map capacity {capacity}, {used} used by other endpoints)"
            ));
            ep.ingress = Some(Entries::new());
            ep.egress = Some(Entries::new());
        } else {
            used += n;
        }
        out.endpoints.insert(p.ip, ep);
    }
    let mut attributions = vec![Vec::new(); interned.len()];
    for (rules, id) in interned {
        attributions[id as usize - 1] = rules;
    }
    out.attributions = attributions;
    out
}

/// Copies the any-peer entries under every peer that has entries, gives each entry every rule
/// of the entries that cover it (so the longest match carries every allowing rule), and interns
/// the rule sets.
fn close_and_intern(
    mut raw: BTreeMap<EntryKey, BTreeSet<RuleRef>>,
    interned: &mut BTreeMap<Vec<RuleRef>, u32>,
) -> Entries {
    let any: Vec<(EntryKey, BTreeSet<RuleRef>)> =
        raw.iter().filter(|(k, _)| k.peer == ANY_PEER).map(|(k, v)| (*k, v.clone())).collect();
    let peers: BTreeSet<u32> = raw.keys().map(|k| k.peer).filter(|&p| p != ANY_PEER).collect();
    for &peer in &peers {
        for (k, rules) in &any {
            raw.entry(EntryKey { peer, ..*k }).or_default().extend(rules.iter().copied());
        }
    }
    let mut out = Entries::new();
    for (k, rules) in &raw {
        let mut all = rules.clone();
        let mut cover = |c: EntryKey| {
            if c != *k {
                if let Some(r) = raw.get(&c) {
                    all.extend(r.iter().copied());
                }
            }
        };
        if k.proto != 0 {
            for bits in 0..=k.port_bits {
                cover(EntryKey::port(k.peer, k.proto, k.port, bits));
            }
        }
        cover(EntryKey::all_protocols(k.peer));
        let all: Vec<RuleRef> = all.into_iter().collect();
        let next = interned.len() as u32 + 1;
        let id = *interned.entry(all).or_insert(next);
        out.insert(*k, id);
    }
    out
}

/// One direction of [`explain`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum SideExplain {
    /// Not a local pod, or no policy isolates it in this direction.
    Open,
    Allowed {
        rules: Vec<RuleRef>,
    },
    /// Isolated by `selected_by`, and no rule of theirs allows it.
    Denied {
        selected_by: Vec<usize>,
    },
    /// The endpoint's policy did not fit the datapath: all its traffic is denied.
    FailClosed {
        reason: String,
    },
}

impl SideExplain {
    pub fn allows(&self) -> bool {
        matches!(self, SideExplain::Open | SideExplain::Allowed { .. })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub allowed: bool,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub egress: SideExplain,
    pub ingress: SideExplain,
}

/// The verdict for a new connection `src` → `dst`:`port`/`proto` from compiled entries, looked up
/// as the datapath looks them up (egress at the source, ingress at the destination).
pub fn decide(compiled: &Compiled, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> Explanation {
    let src_identity = compiled.identity_of(src);
    let dst_identity = compiled.identity_of(dst);
    let side = |ep: Ipv4Addr, peer: u32, d: Direction| -> SideExplain {
        if src == dst {
            return SideExplain::Open;
        }
        let Some(e) = compiled.endpoints.get(&ep) else { return SideExplain::Open };
        if let Some(reason) = &e.fail_closed {
            return SideExplain::FailClosed { reason: reason.clone() };
        }
        let Some(entries) = e.entries(d) else { return SideExplain::Open };
        match lookup(entries, peer, proto, port) {
            Some(a) => SideExplain::Allowed { rules: compiled.attribution(a).to_vec() },
            None => SideExplain::Denied { selected_by: e.selected_by[d as usize].clone() },
        }
    };
    let egress = side(src, dst_identity, Direction::Egress);
    let ingress = side(dst, src_identity, Direction::Ingress);
    Explanation { allowed: egress.allows() && ingress.allows(), src_identity, dst_identity, egress, ingress }
}

/// `weir policy explain`: compiles for the two endpoints (the same compiler the agent writes the
/// maps with) and decides.
pub fn explain(c: &Cluster, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> (Compiled, Explanation) {
    let mut ids = Identities::default();
    let compiled = compile(c, &mut ids, &|p| p.ip == src || p.ip == dst, usize::MAX);
    let e = decide(&compiled, src, dst, proto, port);
    (compiled, e)
}
