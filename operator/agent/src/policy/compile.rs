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
use weir_bpf_common::sizes;

use super::{closed, parse, Direction, IpBlock, Peer, Policy, PolicyError, PortSpec, RuleRef, NAMESPACE_NAME_LABEL};
use crate::source::{ClusterSnapshot, PodInfo};

/// The peer wildcard in entry keys (never an identity).
pub const ANY_PEER: u32 = 0;
/// Addresses in no pod and no ipBlock: everything outside the cluster that no policy names.
pub const WORLD: u32 = 1;
const FIRST_ALLOCATED: u32 = 256;

/// A pod as policies see it: its object and the address policies judge it by.
#[derive(Clone, Debug)]
pub struct PodView {
    pub ip: Ipv4Addr,
    pub info: Arc<PodInfo>,
}

impl PodView {
    pub fn namespace(&self) -> &str {
        &self.info.namespace
    }
    pub fn name(&self) -> &str {
        &self.info.name
    }
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

/// A pod's namespace and name.
pub type PodKey = (String, String);

/// The cluster as policies see it: pods with an address, namespace labels, valid policies.
/// Persistent maps: a copy costs nothing, so a pass that changes a few pods starts from the
/// last one instead of rebuilding 10k views.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub pods: imbl::OrdMap<PodKey, PodView>,
    /// (address, pod) for every pod: the pods claiming an address are a range, in key order
    /// (one, unless a stale object lingers). A set rather than address → list: no list to
    /// allocate per pod.
    claims: imbl::OrdSet<(Ipv4Addr, PodKey)>,
    namespaces: Arc<BTreeMap<String, BTreeMap<String, String>>>,
    /// Valid policies, sorted by namespace/name ([`RuleRef::policy`] indexes this).
    pub policies: Arc<Vec<Policy>>,
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
        let mut c = Cluster { namespaces: Arc::new(namespaces), policies: Arc::new(policies), ..Default::default() };
        for p in pods {
            c.insert_pod(p);
        }
        c
    }

    fn insert_pod(&mut self, p: PodView) {
        let key = (p.namespace().to_owned(), p.name().to_owned());
        self.remove_pod(&key);
        self.claims.insert((p.ip, key.clone()));
        self.pods.insert(key, p);
    }

    fn remove_pod(&mut self, key: &PodKey) -> Option<PodView> {
        let p = self.pods.remove(key)?;
        self.claims.remove(&(p.ip, key.clone()));
        Some(p)
    }

    /// The pod a policy sees for one snapshot entry: one with an IPv4 address (this node's
    /// endpoints' from `local`: the agent knows them before the API reports them) that is not
    /// host-network and not finished.
    fn view(key: &PodKey, info: &Arc<PodInfo>, local: &BTreeMap<PodKey, Ipv4Addr>) -> Option<PodView> {
        if info.host_network || info.finished {
            return None;
        }
        let reported = info.ips.iter().find_map(|ip| ip.parse::<Ipv4Addr>().ok());
        let ip = local.get(key).copied().or(reported)?;
        Some(PodView { ip, info: info.clone() })
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
        local: &BTreeMap<PodKey, Ipv4Addr>,
        cache: &mut ParseCache,
    ) -> Self {
        let pods = s.pods.iter().filter_map(|(key, info)| Self::view(key, info, local)).collect();
        let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (name, n) in &s.namespaces {
            namespaces.insert(name.clone(), n.metadata.labels.clone().unwrap_or_default());
        }
        let (policies, rejected) = policies_of(s, previous, cache);
        let mut c = Cluster::new(pods, namespaces, policies);
        c.rejected = rejected;
        c
    }

    /// This cluster with the pods at `changed` keys taken again from `s` (namespaces and
    /// policies as they are): what a pass that only saw pods change compiles.
    pub fn with_pods(
        &self,
        s: &ClusterSnapshot,
        changed: &BTreeSet<PodKey>,
        local: &BTreeMap<PodKey, Ipv4Addr>,
    ) -> Self {
        let mut c = self.clone();
        for key in changed {
            c.remove_pod(key);
            if let Some(v) = s.pods.get(key).and_then(|info| Self::view(key, info, local)) {
                c.insert_pod(v);
            }
        }
        c
    }

    pub fn policy(&self, ns: &str, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.namespace == ns && p.name == name)
    }

    /// The pod owning an address: a terminating pod may still hold the address a new pod was
    /// given, and the live one wins; otherwise the first by namespace/name.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodView> {
        let claims = || self.claims.range((ip, PodKey::default())..).take_while(move |(a, _)| *a == ip);
        let (_, owner) =
            claims().find(|(_, k)| self.pods.get(k).is_some_and(|p| !p.info.deleting)).or(claims().next())?;
        self.pods.get(owner)
    }

    /// Whether `p` owns its address (see [`Cluster::pod_by_ip`]).
    pub fn owns(&self, p: &PodView) -> bool {
        self.pod_by_ip(p.ip).is_some_and(|q| q.namespace() == p.namespace() && q.name() == p.name())
    }

    pub fn pod(&self, ns: &str, name: &str) -> Option<&PodView> {
        self.pods.get(&(ns.to_owned(), name.to_owned()))
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
    /// Policies are sorted by namespace, so only that namespace's range is looked at.
    pub fn selecting(&self, ep: &PodView, dir: Direction) -> Vec<usize> {
        let first = self.policies.partition_point(|p| p.namespace.as_str() < ep.namespace());
        let end = first + self.policies[first..].partition_point(|p| p.namespace == ep.namespace());
        (first..end)
            .filter(|&i| {
                let p = &self.policies[i];
                p.rules(dir).is_some() && p.pods.matches(&|k| ep.label(k))
            })
            .collect()
    }

    /// This cluster (its pods and namespaces) with the policies of `s`: what a pass that only
    /// saw policies change compiles.
    pub fn with_policies(&self, s: &ClusterSnapshot, cache: &mut ParseCache) -> Self {
        let (mut policies, rejected) = policies_of(s, Some(self), cache);
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Cluster { policies: Arc::new(policies), rejected, ..self.clone() }
    }
}

/// ipBlock prefixes all policies together may name: half of the node's IP → identity map, the
/// other half is for pods' addresses.
pub const BLOCK_PREFIX_BUDGET: usize = sizes::IPCACHE as usize / 2;

/// The policies of `s` (parsed once per object version), and the rejected ones. A rejected
/// policy keeps its version in `previous`, if any; one that never had a valid version is
/// enforced closed (its pods isolated, nothing allowed: [`closed`]). Then the node-wide
/// ipBlock budget ([`within_budget`]).
fn policies_of(
    s: &ClusterSnapshot,
    previous: Option<&Cluster>,
    cache: &mut ParseCache,
) -> (Vec<Policy>, Vec<PolicyError>) {
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
                match previous.and_then(|c| c.policy(ns, name)) {
                    Some(old) => policies.push(old.clone()),
                    None => policies.extend(closed(p)),
                }
                rejected.push(e);
            }
        }
    }
    let over = within_budget(&mut policies, previous, BLOCK_PREFIX_BUDGET);
    rejected.extend(over);
    rejected.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    (policies, rejected)
}

/// Holds the policies' ipBlock prefixes to `budget`, so that one tenant cannot fill the map
/// every tenant's policies and pods share. Namespaces are admitted in order of what they ask
/// for (least first, then by name), each namespace's policies smallest first: whoever asks for
/// the most is the first refused, and a namespace that stays within its share is never refused
/// because of another. A policy that does not fit falls back to its previous version when that
/// fits, else it is enforced closed; either way it is reported.
pub fn within_budget(policies: &mut [Policy], previous: Option<&Cluster>, budget: usize) -> Vec<PolicyError> {
    let mut by_ns: BTreeMap<&str, usize> = BTreeMap::new();
    for p in policies.iter() {
        *by_ns.entry(&p.namespace).or_default() += p.prefixes();
    }
    if by_ns.values().sum::<usize>() <= budget {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..policies.len()).collect();
    order.sort_by_cached_key(|&i| {
        let p = &policies[i];
        (by_ns[p.namespace.as_str()], p.namespace.clone(), p.prefixes(), p.name.clone())
    });
    let asked: BTreeMap<String, usize> = by_ns.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let mut used = 0;
    let mut errors = Vec::new();
    for i in order {
        let p = &policies[i];
        let n = p.prefixes();
        if used + n <= budget {
            used += n;
            continue;
        }
        let message = format!(
            "names {n} ipBlock prefixes; the node's budget of {budget} for all policies has {} left \
             (namespace {} asks for {} in all)",
            budget - used,
            p.namespace,
            asked[&p.namespace]
        );
        let fallback = previous
            .and_then(|c| c.policy(&p.namespace, &p.name))
            .filter(|old| used + old.prefixes() <= budget && *old != p)
            .cloned();
        let replacement = match fallback {
            Some(old) => {
                used += old.prefixes();
                old
            }
            None => p.closed(),
        };
        errors.push(PolicyError {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            field: "spec".into(),
            message,
        });
        policies[i] = replacement;
    }
    errors
}

/// Every ipBlock the policies name.
fn blocks_in(policies: &[Policy]) -> BTreeSet<IpBlock> {
    let mut blocks = BTreeSet::new();
    for p in policies {
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
    blocks
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

    /// The number of a live key.
    pub fn get(&self, k: &IdentityKey) -> Option<u32> {
        if matches!(k, IdentityKey::Cidr { blocks } if blocks.is_empty()) {
            return Some(WORLD);
        }
        self.ids.get(k).copied()
    }

    /// The number of `k`, a new one if it has none (and whether it is new).
    pub fn acquire(&mut self, k: &IdentityKey) -> (u32, bool) {
        if let Some(id) = self.get(k) {
            return (id, false);
        }
        self.next = self.next.max(FIRST_ALLOCATED);
        let id = self.next;
        self.next += 1;
        self.ids.insert(k.clone(), id);
        (id, true)
    }

    /// `k` is no longer live; its number is never given out again.
    pub fn release(&mut self, k: &IdentityKey) {
        self.ids.remove(k);
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
    pub ipcache: imbl::OrdMap<(Ipv4Addr, u8), u32>,
    /// Local endpoints by address.
    pub endpoints: BTreeMap<Ipv4Addr, EndpointPolicy>,
    /// Attribution id `i + 1` → the rules behind an entry.
    pub attributions: imbl::Vector<Vec<RuleRef>>,
    pub identities: imbl::OrdMap<u32, IdentityKey>,
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
        self.attributions.get((id as usize).wrapping_sub(1)).map_or(&[], Vec::as_slice)
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

#[derive(Clone, Debug)]
enum PeerSet {
    Any,
    Ids(BTreeSet<u32>),
}

impl PeerSet {
    /// Calls `f` with each peer of an entry key: [`ANY_PEER`] for anyone, else each identity.
    fn each(&self, mut f: impl FnMut(u32)) {
        match self {
            PeerSet::Any => f(ANY_PEER),
            PeerSet::Ids(s) => s.iter().for_each(|&id| f(id)),
        }
    }
}

/// Rule sets (sorted) → attribution id, ids counting from 1 in the order sets were first seen.
type Interned = HashMap<Vec<RuleRef>, u32>;

/// What a full compile leaves for the next pass that only sees pods change
/// ([`compile_pods`]): the blocks index, how many pods hold each pod identity, the peer sets of
/// the rules local endpoints use, the interned rule sets, and the entries used.
#[derive(Debug, Default)]
pub struct Incremental {
    blocks: HashMap<(Ipv4Addr, u8), Vec<IpBlock>>,
    block_set: BTreeSet<IpBlock>,
    /// Identity of each block CIDR and except (a pod's /32 hides one of the same prefix).
    prefixes: BTreeMap<(Ipv4Addr, u8), u32>,
    /// How many blocks name each prefix (as their CIDR or an except).
    names: HashMap<(Ipv4Addr, u8), u32>,
    /// How many pods and prefixes hold each identity ([`WORLD`] is not counted).
    refs: HashMap<u32, u32>,
    peer_sets: HashMap<RuleRef, PeerSet>,
    interned: Interned,
    used: usize,
    fail_closed: bool,
}

/// The blocks containing every address whose longest prefix is `net/len`: CIDR covers it and no
/// except does (an except inside it is a longer prefix of its own). Found among the ≤ 33
/// shorter-or-equal prefixes of it, not by scanning every block (10k rules would make that
/// quadratic).
fn blocks_of(by_cidr: &HashMap<(Ipv4Addr, u8), Vec<IpBlock>>, net: Ipv4Addr, len: u8) -> Vec<IpBlock> {
    let mut out = Vec::new();
    for l in 0..=len {
        let outer = Ipv4Network::new(net, l).map(|n| n.network()).unwrap_or(net);
        for b in by_cidr.get(&(outer, l)).into_iter().flatten() {
            let excepted = b.except.iter().any(|e| e.prefix() <= len && e.contains(net));
            if !excepted {
                out.push(b.clone());
            }
        }
    }
    out.sort();
    out
}

fn pod_key(p: &PodView, by_cidr: &HashMap<(Ipv4Addr, u8), Vec<IpBlock>>) -> IdentityKey {
    IdentityKey::Pod {
        namespace: p.namespace().to_owned(),
        labels: p.info.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        named_ports: p.named_ports(),
        blocks: blocks_of(by_cidr, p.ip, 32),
    }
}

/// Whether rule `rr`'s peers take in the addresses of identity `key`.
fn admits(c: &Cluster, rr: RuleRef, key: &IdentityKey) -> bool {
    let p = &c.policies[rr.policy];
    let Some(r) = p.rules(rr.direction).and_then(|r| r.get(rr.rule)) else { return false };
    let Some(peers) = &r.peers else { return true };
    let (IdentityKey::Pod { blocks, .. } | IdentityKey::Cidr { blocks }) = key;
    peers.iter().any(|peer| match (peer, key) {
        (Peer::Block(b), _) => blocks.contains(b),
        (Peer::Pods { pods, namespaces }, IdentityKey::Pod { namespace, labels, .. }) => {
            let ns_ok = match namespaces {
                None => *namespace == p.namespace,
                Some(sel) => sel.matches(&|k| c.namespace_label(namespace, k)),
            };
            let get = |k: &str| labels.iter().find(|(lk, _)| lk == k).map(|(_, v)| v.as_str());
            ns_ok && pods.matches(&get)
        }
        (Peer::Pods { .. }, IdentityKey::Cidr { .. }) => false,
    })
}

/// Whether rule `rr` has an egress named port (its entries follow every pod identity's ports).
fn names_egress_ports(c: &Cluster, rr: RuleRef) -> bool {
    rr.direction == Direction::Egress
        && c.policies[rr.policy]
            .rules(rr.direction)
            .and_then(|r| r.get(rr.rule))
            .and_then(|r| r.ports.as_ref())
            .is_some_and(|ports| ports.iter().any(|m| matches!(m.port, PortSpec::Named(_))))
}

/// The allow entries of local pod `p` (identity `identity`), each direction a policy isolates.
/// Peer sets are taken from (or computed into) `peer_sets`; `named` gives a pod identity's
/// named ports.
#[allow(clippy::too_many_arguments)]
fn endpoint_policy(
    c: &Cluster,
    p: &PodView,
    identity: u32,
    peer_sets: &mut HashMap<RuleRef, PeerSet>,
    peer_set: &dyn Fn(RuleRef) -> PeerSet,
    named: &dyn Fn(u32) -> Option<Vec<(String, u8, u16)>>,
    pod_identities: &dyn Fn() -> Vec<u32>,
    interned: &mut Interned,
) -> EndpointPolicy {
    let mut ep = EndpointPolicy {
        namespace: p.namespace().to_owned(),
        name: p.name().to_owned(),
        identity,
        ..Default::default()
    };
    for d in Direction::BOTH {
        let selecting = c.selecting(p, d);
        if selecting.is_empty() {
            continue;
        }
        // (entry, rule allowing it) pairs, sorted and grouped by entry in close_and_intern.
        let mut raw: Vec<(EntryKey, RuleRef)> = Vec::new();
        for &pol in &selecting {
            for (ri, r) in c.policies[pol].rules(d).unwrap_or(&[]).iter().enumerate() {
                let rr = RuleRef { policy: pol, direction: d, rule: ri };
                let peers: &PeerSet = peer_sets.entry(rr).or_insert_with(|| peer_set(rr));
                let mut add = |k: EntryKey| raw.push((k, rr));
                let Some(ports) = &r.ports else {
                    peers.each(|id| add(EntryKey::all_protocols(id)));
                    continue;
                };
                for m in ports {
                    match &m.port {
                        PortSpec::Any => peers.each(|id| add(EntryKey::port(id, m.proto, 0, 0))),
                        PortSpec::Range(a, b) => {
                            for (start, bits) in range_prefixes(*a, *b) {
                                peers.each(|id| add(EntryKey::port(id, m.proto, start, bits)));
                            }
                        }
                        PortSpec::Named(n) if d == Direction::Ingress => {
                            if let Some(port) = p.named_port(n, m.proto) {
                                peers.each(|id| add(EntryKey::port(id, m.proto, port, 16)));
                            }
                        }
                        PortSpec::Named(n) => {
                            // Egress: the destination's own number for the name; only pods
                            // have named ports, so a peer set of "anyone" means every pod.
                            let candidates: Vec<u32> = match peers {
                                PeerSet::Any => pod_identities(),
                                PeerSet::Ids(s) => s.iter().copied().collect(),
                            };
                            for id in candidates {
                                let found = named(id)
                                    .and_then(|ps| ps.into_iter().find(|(pn, pr, _)| pn == n && *pr == m.proto));
                                if let Some((_, _, port)) = found {
                                    add(EntryKey::port(id, m.proto, port, 16));
                                }
                            }
                        }
                    }
                }
            }
        }
        let entries = close_and_intern(raw, interned);
        match d {
            Direction::Ingress => ep.ingress = Some(entries),
            Direction::Egress => ep.egress = Some(entries),
        }
        ep.selected_by[d as usize] = selecting;
    }
    ep
}

fn named_ports_of(identities: &imbl::OrdMap<u32, IdentityKey>, id: u32) -> Option<Vec<(String, u8, u16)>> {
    match identities.get(&id)? {
        IdentityKey::Pod { named_ports, .. } => Some(named_ports.clone()),
        IdentityKey::Cidr { .. } => None,
    }
}

fn pod_identity_ids(identities: &imbl::OrdMap<u32, IdentityKey>) -> Vec<u32> {
    identities.iter().filter(|(_, k)| matches!(k, IdentityKey::Pod { .. })).map(|(id, _)| *id).collect()
}

/// Compiles for the pods `local` selects (this node's endpoints). `capacity` bounds the entries
/// over all endpoints; an endpoint that does not fit is marked fail-closed with no entries.
pub fn compile(c: &Cluster, ids: &mut Identities, local: &dyn Fn(&PodView) -> bool, capacity: usize) -> Compiled {
    compile_full(c, ids, local, capacity).0
}

/// [`compile`], and what [`compile_pods`] needs to go on from it.
pub fn compile_full(
    c: &Cluster,
    ids: &mut Identities,
    local: &dyn Fn(&PodView) -> bool,
    capacity: usize,
) -> (Compiled, Incremental) {
    let mut inc = Incremental::default();
    // Every ipBlock any policy names, by CIDR.
    let blocks = blocks_in(&c.policies);
    for b in &blocks {
        inc.blocks.entry((b.cidr.network(), b.cidr.prefix())).or_default().push(b.clone());
    }

    // Identity keys of pods and of block prefixes.
    let pod_keys: Vec<IdentityKey> = c.pods.values().map(|p| pod_key(p, &inc.blocks)).collect();
    let mut prefixes: BTreeMap<(Ipv4Addr, u8), IdentityKey> = BTreeMap::new();
    for b in &blocks {
        for n in std::iter::once(&b.cidr).chain(&b.except) {
            *inc.names.entry((n.network(), n.prefix())).or_default() += 1;
            prefixes.insert(
                (n.network(), n.prefix()),
                IdentityKey::Cidr { blocks: blocks_of(&inc.blocks, n.network(), n.prefix()) },
            );
        }
    }
    let all: BTreeSet<IdentityKey> = pod_keys.iter().chain(prefixes.values()).cloned().collect();
    let numbers = ids.assign(all);
    let mut out = Compiled::default();
    for (k, id) in &numbers {
        out.identities.insert(*id, k.clone());
    }
    for (prefix, k) in &prefixes {
        let id = numbers[k];
        out.ipcache.insert(*prefix, id);
        inc.prefixes.insert(*prefix, id);
        if id != WORLD {
            *inc.refs.entry(id).or_default() += 1;
        }
    }
    // A pod whose address another pod also claims (a stale object) owns it only if the index
    // says so: computed once, used for the IP → identity entries and the local endpoints.
    let owns: Vec<bool> = c.pods.values().map(|p| c.owns(p)).collect();
    let mut pod_ids = Vec::with_capacity(c.pods.len());
    for ((p, k), &owns_ip) in c.pods.values().zip(&pod_keys).zip(&owns) {
        let id = numbers[k];
        pod_ids.push(id);
        *inc.refs.entry(id).or_default() += 1;
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
    let peer_set = |rr: RuleRef| -> PeerSet {
        let p = &c.policies[rr.policy];
        let r = &p.rules(rr.direction).expect("rule of a selected direction")[rr.rule];
        let Some(peers) = &r.peers else { return PeerSet::Any };
        let mut set = BTreeSet::new();
        for peer in peers {
            match peer {
                Peer::Block(b) => set.extend(in_block.get(b).into_iter().flatten().copied()),
                Peer::Pods { .. } => {
                    for (k, id) in &pod_identities {
                        if admits(c, rr, k) {
                            set.insert(*id);
                        }
                    }
                }
            }
        }
        PeerSet::Ids(set)
    };
    let identities = &out.identities;
    let named = |id: u32| named_ports_of(identities, id);
    let all_pods = || pod_identity_ids(identities);

    let mut endpoints = BTreeMap::new();
    for (pi, p) in c.pods.values().enumerate() {
        if !local(p) || !owns[pi] {
            continue;
        }
        let mut ep =
            endpoint_policy(c, p, pod_ids[pi], &mut inc.peer_sets, &peer_set, &named, &all_pods, &mut inc.interned);
        let n = ep.entry_count();
        if inc.used + n > capacity {
            ep.fail_closed = Some(format!(
                "{n} policy entries do not fit (map capacity {capacity}, {} used by other endpoints)",
                inc.used
            ));
            ep.ingress = Some(Entries::new());
            ep.egress = Some(Entries::new());
            inc.fail_closed = true;
        } else {
            inc.used += n;
        }
        endpoints.insert(p.ip, ep);
    }
    out.endpoints = endpoints;
    out.attributions = attributions(&inc.interned);
    inc.block_set = blocks;
    (out, inc)
}

/// Goes on from `prev` (compiled from `old`) to `c`, which differs from `old` only in its
/// policies: the identities and IP → identity entries of the pods and prefixes inside an ipBlock
/// that came or went are found again ([`rekey_blocks`]), the peer sets of unchanged policies'
/// rules are kept (under their new positions) and follow those identities, and every local
/// endpoint's entries are compiled again. `None` when that cannot be exact (an endpoint over
/// capacity, state that disagrees): the caller makes a full pass.
pub fn compile_policies(
    old: &Cluster,
    c: &Cluster,
    prev: &Compiled,
    inc: &mut Incremental,
    ids: &mut Identities,
    local: &dyn Fn(&PodView) -> bool,
    capacity: usize,
) -> Option<(Compiled, Touched)> {
    if inc.fail_closed {
        return None;
    }
    let old_index: HashMap<(&str, &str), usize> =
        old.policies.iter().enumerate().map(|(i, p)| ((p.namespace.as_str(), p.name.as_str()), i)).collect();
    let mut peer_sets = HashMap::new();
    for (j, p) in c.policies.iter().enumerate() {
        let Some(&i) = old_index.get(&(p.namespace.as_str(), p.name.as_str())) else { continue };
        if old.policies[i] != *p {
            continue;
        }
        for d in Direction::BOTH {
            for rule in 0..p.rules(d).map_or(0, <[_]>::len) {
                if let Some(set) = inc.peer_sets.remove(&RuleRef { policy: i, direction: d, rule }) {
                    peer_sets.insert(RuleRef { policy: j, direction: d, rule }, set);
                }
            }
        }
    }
    inc.peer_sets = peer_sets;
    let mut out = Compiled { ipcache: prev.ipcache.clone(), identities: prev.identities.clone(), ..Default::default() };
    let mut touched = Touched::default();
    let blocks = blocks_in(&c.policies);
    if blocks != inc.block_set {
        let (born, gone) = rekey_blocks(c, blocks, &mut out, inc, ids, &mut touched)?;
        // The kept peer sets follow (their rules are unchanged, so admitting is as before).
        for (rr, set) in &mut inc.peer_sets {
            let PeerSet::Ids(s) = set else { continue };
            for id in &gone {
                s.remove(id);
            }
            for (id, k) in &born {
                if admits(c, *rr, k) {
                    s.insert(*id);
                }
            }
        }
    }
    inc.interned.clear();
    inc.used = 0;
    let identities = out.identities.clone();
    let peer_set = |rr: RuleRef| -> PeerSet {
        let r = &c.policies[rr.policy].rules(rr.direction).expect("rule of a selected direction")[rr.rule];
        if r.peers.is_none() {
            return PeerSet::Any;
        }
        PeerSet::Ids(identities.iter().filter(|(_, k)| admits(c, rr, k)).map(|(id, _)| *id).collect())
    };
    let named = |id: u32| named_ports_of(&identities, id);
    let all_pods = || pod_identity_ids(&identities);
    for p in c.pods.values() {
        if !local(p) || !c.owns(p) {
            continue;
        }
        let id = ids.get(&pod_key(p, &inc.blocks))?;
        let ep = endpoint_policy(c, p, id, &mut inc.peer_sets, &peer_set, &named, &all_pods, &mut inc.interned);
        inc.used += ep.entry_count();
        if inc.used > capacity {
            return None;
        }
        out.endpoints.insert(p.ip, ep);
    }
    out.attributions = attributions(&inc.interned);
    touched.endpoints = prev.endpoints.keys().chain(out.endpoints.keys()).copied().collect();
    Some((out, touched))
}

/// Identities born (with their keys) and gone when blocks came or went.
type Rekeyed = (Vec<(u32, IdentityKey)>, Vec<u32>);

/// The ipBlocks named went from `inc.block_set` to `blocks` (pods as before): gives the pods
/// and prefixes inside a block that came or went their keys again, in `out`'s identities and
/// IP → identity entries and in `ids`, and records the prefixes whose entry may differ. Work is
/// in proportion to what those blocks contain, not to the cluster. Returns the identities born
/// (with their keys) and those gone; `None` when the state disagrees.
fn rekey_blocks(
    c: &Cluster,
    blocks: BTreeSet<IpBlock>,
    out: &mut Compiled,
    inc: &mut Incremental,
    ids: &mut Identities,
    touched: &mut Touched,
) -> Option<Rekeyed> {
    let added: Vec<IpBlock> = blocks.difference(&inc.block_set).cloned().collect();
    let removed: Vec<IpBlock> = inc.block_set.difference(&blocks).cloned().collect();
    // What lies inside those blocks, with the pods' keys under the old blocks.
    let mut pods: BTreeMap<&PodKey, IdentityKey> = BTreeMap::new();
    let mut prefixes: BTreeSet<(Ipv4Addr, u8)> = BTreeSet::new();
    for b in added.iter().chain(&removed) {
        let (lo, hi) = (b.cidr.network(), b.cidr.broadcast());
        for (_, key) in c.claims.range((lo, PodKey::default())..).take_while(|(ip, _)| *ip <= hi) {
            if !pods.contains_key(key) {
                pods.insert(key, pod_key(c.pods.get(key)?, &inc.blocks));
            }
        }
        prefixes.extend(inc.prefixes.range((lo, 0)..=(hi, 32)).map(|(k, _)| *k).filter(|k| k.1 >= b.cidr.prefix()));
        prefixes.extend(std::iter::once(&b.cidr).chain(&b.except).map(|n| (n.network(), n.prefix())));
    }
    for b in &removed {
        let k = (b.cidr.network(), b.cidr.prefix());
        let v = inc.blocks.get_mut(&k)?;
        v.retain(|x| x != b);
        if v.is_empty() {
            inc.blocks.remove(&k);
        }
        for n in std::iter::once(&b.cidr).chain(&b.except) {
            let k = (n.network(), n.prefix());
            let count = inc.names.get_mut(&k)?;
            *count -= 1;
            if *count == 0 {
                inc.names.remove(&k);
            }
        }
    }
    for b in &added {
        inc.blocks.entry((b.cidr.network(), b.cidr.prefix())).or_default().push(b.clone());
        for n in std::iter::once(&b.cidr).chain(&b.except) {
            *inc.names.entry((n.network(), n.prefix())).or_default() += 1;
        }
    }
    inc.block_set = blocks;

    // New numbers first, then the old ones let go: a key that stays keeps its number.
    let mut born = Vec::new();
    let mut acquire = |k: IdentityKey, ids: &mut Identities, out: &mut Compiled, inc: &mut Incremental| -> u32 {
        let (id, new) = ids.acquire(&k);
        if id != WORLD {
            *inc.refs.entry(id).or_default() += 1;
        }
        if new {
            out.identities.insert(id, k.clone());
            born.push((id, k));
        }
        id
    };
    let mut letting_go = Vec::new();
    for (key, old_k) in &pods {
        let p = c.pods.get(*key)?;
        let new_k = pod_key(p, &inc.blocks);
        if new_k == *old_k {
            continue;
        }
        let id = acquire(new_k, ids, out, inc);
        if c.owns(p) {
            out.ipcache.insert((p.ip, 32), id);
            touched.prefixes.insert((p.ip, 32));
        }
        letting_go.push(ids.get(old_k)?);
    }
    for prefix in &prefixes {
        let was = inc.prefixes.remove(prefix);
        let now = inc
            .names
            .contains_key(prefix)
            .then(|| IdentityKey::Cidr { blocks: blocks_of(&inc.blocks, prefix.0, prefix.1) })
            .map(|k| acquire(k, ids, out, inc));
        if let Some(id) = now {
            inc.prefixes.insert(*prefix, id);
        }
        // A pod's /32 hides a prefix of the same address and length.
        if prefix.1 != 32 || c.pod_by_ip(prefix.0).is_none() {
            match now {
                Some(id) => out.ipcache.insert(*prefix, id),
                None => out.ipcache.remove(prefix),
            };
        }
        touched.prefixes.insert(*prefix);
        letting_go.extend(was.filter(|&id| id != WORLD));
    }
    let mut gone = Vec::new();
    for id in letting_go {
        let refs = inc.refs.get_mut(&id)?;
        *refs -= 1;
        if *refs == 0 {
            inc.refs.remove(&id);
            let k = out.identities.remove(&id)?;
            ids.release(&k);
            gone.push(id);
        }
    }
    Some((born, gone))
}

fn attributions(interned: &Interned) -> imbl::Vector<Vec<RuleRef>> {
    let mut v = vec![Vec::new(); interned.len()];
    for (rules, id) in interned {
        v[*id as usize - 1] = rules.clone();
    }
    v.into_iter().collect()
}

/// What a pass going on from the last changed: the IP → identity entries (prefix, length) that
/// may differ and the local endpoints (by address) recompiled or gone.
#[derive(Debug, Default)]
pub struct Touched {
    pub prefixes: BTreeSet<(Ipv4Addr, u8)>,
    pub endpoints: BTreeSet<Ipv4Addr>,
}

/// Goes on from `prev` (compiled from `old`) to `c`, which differs from `old` only in the pods
/// at `changed` keys: their identities, the peer sets those identities join or leave, the /32s
/// of their old and new addresses, and the local endpoints that are those pods or whose policies'
/// peer sets changed. `None` when this cannot be done exactly (an endpoint over capacity, state
/// that disagrees): the caller makes a full pass. Tests hold it to the full compile.
#[allow(clippy::too_many_arguments)]
pub fn compile_pods(
    old: &Cluster,
    c: &Cluster,
    prev: &Compiled,
    inc: &mut Incremental,
    ids: &mut Identities,
    changed: &BTreeSet<PodKey>,
    local: &dyn Fn(&PodView) -> bool,
    capacity: usize,
) -> Option<(Compiled, Touched)> {
    if inc.fail_closed {
        return None;
    }
    let mut out = prev.clone();
    let mut touched = Touched::default();
    let mut addresses: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut rules_changed: BTreeSet<RuleRef> = BTreeSet::new();
    let mut identities_changed = false;
    let mut redo: BTreeSet<PodKey> = BTreeSet::new();
    // New identities first, then the old ones released: a pod whose key did not change keeps
    // its number.
    for key in changed {
        let Some(p) = c.pods.get(key) else { continue };
        let k = pod_key(p, &inc.blocks);
        let (id, new) = ids.acquire(&k);
        *inc.refs.entry(id).or_default() += 1;
        if new {
            identities_changed = true;
            for (rr, set) in &mut inc.peer_sets {
                if let PeerSet::Ids(s) = set {
                    if admits(c, *rr, &k) {
                        s.insert(id);
                        rules_changed.insert(*rr);
                    }
                }
            }
            out.identities.insert(id, k);
        }
    }
    for key in changed {
        let Some(p) = old.pods.get(key) else { continue };
        let k = pod_key(p, &inc.blocks);
        let id = ids.get(&k)?;
        let refs = inc.refs.get_mut(&id)?;
        *refs -= 1;
        if *refs == 0 {
            inc.refs.remove(&id);
            ids.release(&k);
            out.identities.remove(&id);
            identities_changed = true;
            for (rr, set) in &mut inc.peer_sets {
                if let PeerSet::Ids(s) = set {
                    if s.remove(&id) {
                        rules_changed.insert(*rr);
                    }
                }
            }
        }
        addresses.insert(p.ip);
    }
    for key in changed {
        if let Some(p) = c.pods.get(key) {
            addresses.insert(p.ip);
        }
        redo.insert(key.clone());
    }
    if identities_changed {
        // Egress named ports of "anyone" follow every pod identity's ports.
        rules_changed.extend(
            inc.peer_sets
                .iter()
                .filter(|(rr, set)| matches!(set, PeerSet::Any) && names_egress_ports(c, **rr))
                .map(|(rr, _)| *rr),
        );
    }
    // The /32s: the owner's identity, else the block prefix of that length, else nothing.
    for ip in &addresses {
        out.ipcache.remove(&(*ip, 32));
        if let Some(owner) = c.pod_by_ip(*ip) {
            out.ipcache.insert((*ip, 32), ids.get(&pod_key(owner, &inc.blocks))?);
            redo.insert((owner.namespace().to_owned(), owner.name().to_owned()));
        } else if let Some(id) = inc.prefixes.get(&(*ip, 32)) {
            out.ipcache.insert((*ip, 32), *id);
        }
        // The endpoint at a touched address is recompiled (or goes).
        if let Some(ep) = out.endpoints.remove(ip) {
            inc.used = inc.used.checked_sub(ep.entry_count())?;
            redo.insert((ep.namespace.clone(), ep.name.clone()));
            touched.endpoints.insert(*ip);
        }
    }
    // Endpoints selected by a policy with a rule whose peers changed.
    let stale: Vec<Ipv4Addr> = out
        .endpoints
        .iter()
        .filter(|(_, ep)| rules_changed.iter().any(|rr| ep.selected_by[rr.direction as usize].contains(&rr.policy)))
        .map(|(ip, _)| *ip)
        .collect();
    for ip in stale {
        if let Some(ep) = out.endpoints.remove(&ip) {
            inc.used = inc.used.checked_sub(ep.entry_count())?;
            redo.insert((ep.namespace, ep.name));
            touched.endpoints.insert(ip);
        }
    }
    let identities = out.identities.clone();
    let peer_set = |rr: RuleRef| -> PeerSet {
        let r = &c.policies[rr.policy].rules(rr.direction).expect("rule of a selected direction")[rr.rule];
        if r.peers.is_none() {
            return PeerSet::Any;
        }
        // Every identity, block prefixes' too (a rule's block takes them in).
        PeerSet::Ids(identities.iter().filter(|(_, k)| admits(c, rr, k)).map(|(id, _)| *id).collect())
    };
    let named = |id: u32| named_ports_of(&identities, id);
    let all_pods = || pod_identity_ids(&identities);
    for key in &redo {
        let Some(p) = c.pods.get(key) else { continue };
        if !local(p) || !c.owns(p) {
            continue;
        }
        let id = ids.get(&pod_key(p, &inc.blocks))?;
        if let Some(ep) = out.endpoints.remove(&p.ip) {
            inc.used = inc.used.checked_sub(ep.entry_count())?;
        }
        let ep = endpoint_policy(c, p, id, &mut inc.peer_sets, &peer_set, &named, &all_pods, &mut inc.interned);
        inc.used += ep.entry_count();
        if inc.used > capacity {
            return None;
        }
        touched.endpoints.insert(p.ip);
        out.endpoints.insert(p.ip, ep);
    }
    if out.attributions.len() != inc.interned.len() {
        out.attributions = attributions(&inc.interned);
    }
    touched.prefixes = addresses.into_iter().map(|ip| (ip, 32)).collect();
    Some((out, touched))
}

/// Copies the any-peer entries under every peer that has entries, gives each entry every rule
/// of the entries that cover it (so the longest match carries every allowing rule), and interns
/// the rule sets. `raw` holds (entry, rule) pairs in any order, repeats allowed.
///
/// Entries of one peer are covered only by that peer's and the any-peer entries, so the work is
/// done per peer, and a peer with one entry and no any-peer entries (an ipBlock rule's /32, say)
/// is interned as it is, without building a map.
fn close_and_intern(mut raw: Vec<(EntryKey, RuleRef)>, interned: &mut Interned) -> Entries {
    raw.sort_unstable();
    raw.dedup();
    let mut intern = |rules: &[RuleRef]| -> u32 {
        if let Some(id) = interned.get(rules) {
            return *id;
        }
        let id = interned.len() as u32 + 1;
        interned.insert(rules.to_vec(), id);
        id
    };
    // Runs of one entry key: (key, its rules, sorted and distinct).
    fn grouped(pairs: &[(EntryKey, RuleRef)]) -> BTreeMap<EntryKey, Vec<RuleRef>> {
        let mut m: BTreeMap<EntryKey, Vec<RuleRef>> = BTreeMap::new();
        for (k, rr) in pairs {
            m.entry(*k).or_default().push(*rr);
        }
        m
    }
    let mut out: Vec<(EntryKey, u32)> = Vec::with_capacity(raw.len());
    let close = |group: &BTreeMap<EntryKey, Vec<RuleRef>>,
                 out: &mut Vec<(EntryKey, u32)>,
                 intern: &mut dyn FnMut(&[RuleRef]) -> u32| {
        for (k, rules) in group {
            let mut all = rules.clone();
            let mut cover = |c: EntryKey| {
                if c != *k {
                    if let Some(r) = group.get(&c) {
                        all.extend_from_slice(r);
                    }
                }
            };
            if k.proto != 0 {
                for bits in 0..=k.port_bits {
                    cover(EntryKey::port(k.peer, k.proto, k.port, bits));
                }
            }
            cover(EntryKey::all_protocols(k.peer));
            all.sort_unstable();
            all.dedup();
            out.push((*k, intern(&all)));
        }
    };
    // Keys sort by peer first, and ANY_PEER is 0: the any-peer entries come first.
    let n_any = raw.partition_point(|(k, _)| k.peer == ANY_PEER);
    let (any, rest) = raw.split_at(n_any);
    let any = grouped(any);
    close(&any, &mut out, &mut intern);
    let mut i = 0;
    while i < rest.len() {
        let peer = rest[i].0.peer;
        let n = rest[i..].partition_point(|(k, _)| k.peer == peer);
        let own = &rest[i..i + n];
        i += n;
        if any.is_empty() && own.iter().all(|(k, _)| *k == own[0].0) {
            let rules: Vec<RuleRef> = own.iter().map(|(_, rr)| *rr).collect();
            out.push((own[0].0, intern(&rules)));
            continue;
        }
        let mut group: BTreeMap<EntryKey, Vec<RuleRef>> =
            any.iter().map(|(k, rules)| (EntryKey { peer, ..*k }, rules.clone())).collect();
        for (k, rr) in own {
            group.entry(*k).or_default().push(*rr);
        }
        close(&group, &mut out, &mut intern);
    }
    // Built in key order: the map is made in one pass.
    out.into_iter().collect()
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
