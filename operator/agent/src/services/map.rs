//! From the compiled Service table to the Service maps: the pure plan (which frontends, which
//! backends for this node, what a rejected Service keeps) and [`ServiceSync`], the agent's one
//! writer of `WEIR_SERVICES`, `WEIR_BACKENDS` and `WEIR_MAGLEV`, which diffs against what it
//! last wrote instead of re-reading the kernel.
//!
//! A frontend's backends live in a backend set (`WEIR_BACKENDS`, slots `0..count`). A changed
//! backend list is written as a new set, then the frontend switches to it with one map update,
//! and the old set is deleted at the next pass (a program run may still be reading it). A
//! backend keeps its slot across updates where it can, so socket-level affinity survives
//! changes to the other backends.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use k8s_openapi::api::core::v1::Service;
use weir_bpf_common::{Addr16, BackendAddr, BackendKey, MaglevTable, ServiceKey, ServiceValue, MAX_BACKENDS};
use weir_dataplane::maps::{self, FakeMap, KeyValueMap};

use crate::{
    services,
    services::maglev,
    source::{Named, SliceInfo},
};

/// A [`KeyValueMap`] with these key and value types.
pub trait Kv<K, V>: KeyValueMap<Key = K, Value = V> {}
impl<K, V, M: KeyValueMap<Key = K, Value = V>> Kv<K, V> for M {}

/// The three Service maps, kernel or fake.
pub struct ServiceMaps<S, B, G> {
    pub services: S,
    pub backends: B,
    pub maglev: G,
}

pub type KernelServiceMaps = ServiceMaps<maps::Services, maps::Backends, maps::Maglev>;
pub type FakeServiceMaps =
    ServiceMaps<FakeMap<ServiceKey, ServiceValue>, FakeMap<BackendKey, BackendAddr>, FakeMap<ServiceKey, MaglevTable>>;

impl Default for FakeServiceMaps {
    fn default() -> Self {
        Self { services: FakeMap::default(), backends: FakeMap::default(), maglev: FakeMap::default() }
    }
}

/// One frontend as this node serves it, before it is given a backend set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendPlan {
    /// Sorted, no duplicates.
    pub backends: Vec<BackendAddr>,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 = none.
    pub affinity_timeout_s: u32,
    /// Served per packet (NodePort, external and LoadBalancer IPs): gets a Maglev table.
    /// ClusterIPs are served at connect() and need none.
    pub per_packet: bool,
}

/// What the maps should hold, which Service owns each frontend, and what was rejected.
#[derive(Debug, Default, PartialEq)]
pub struct ServiceMapPlan {
    pub want: BTreeMap<ServiceKey, FrontendPlan>,
    pub owners: BTreeMap<ServiceKey, String>,
    /// Rejected Services (`namespace/name`) and why.
    pub rejected: BTreeMap<String, String>,
    /// Frontends of rejected Services, left as they are written.
    pub keep: BTreeSet<ServiceKey>,
}

/// Pure: one Service's compiled frontends → what this node writes for each, or why none of it
/// can be written (a Service is written whole or not at all).
fn plan_service<'a>(
    entries: impl IntoIterator<Item = (&'a services::Frontend, &'a services::ServiceEntry)>,
    node: &str,
) -> Result<BTreeMap<ServiceKey, FrontendPlan>, String> {
    let mut out = BTreeMap::new();
    for (f, e) in entries {
        // internalTrafficPolicy Local keeps this node's pods on endpoints of this node, and
        // externalTrafficPolicy Local does the same for NodePort and external traffic; neither
        // falls back (no local endpoint → refused).
        let cluster_ip = e.kind == services::FrontendKind::ClusterIp;
        // A hostPort's one backend serves every node's pods (at connect()) and, per packet,
        // only reaches its own node (the frontend is that node's address).
        let local_only = match e.kind {
            services::FrontendKind::ClusterIp => e.internal_traffic_local,
            services::FrontendKind::HostPort => false,
            _ => e.external_traffic_local,
        };
        let backends: BTreeSet<BackendAddr> = e
            .backends
            .iter()
            .filter(|b| !local_only || b.node.as_deref() == Some(node))
            .map(|b| BackendAddr { addr: Addr16::from_v4_octets(b.ip.octets()), port_be: b.port.to_be(), _pad: [0; 6] })
            .collect();
        if backends.len() > MAX_BACKENDS {
            return Err(format!("{} backends behind {}:{}; at most {MAX_BACKENDS}", backends.len(), f.ip, f.port));
        }
        let plan = FrontendPlan {
            backends: backends.into_iter().collect(),
            affinity_timeout_s: e.affinity_timeout.unwrap_or(0),
            per_packet: !cluster_ip,
        };
        out.insert(service_key(f), plan);
    }
    Ok(out)
}

/// Pure: the compiled table and the previous owners → what the maps should hold. A rejected
/// Service (bad spec, or more backends than a frontend holds) keeps the frontends it had.
pub fn service_map_plan(
    table: &services::ServiceTable,
    node: &str,
    prev_owners: &BTreeMap<ServiceKey, String>,
) -> ServiceMapPlan {
    let mut plan = ServiceMapPlan::default();
    for (svc, why) in &table.rejected {
        plan.rejected.entry(svc.clone()).or_insert_with(|| why.clone());
    }
    let mut by_service: BTreeMap<&str, Vec<(&services::Frontend, &services::ServiceEntry)>> = BTreeMap::new();
    for (f, e) in &table.frontends {
        by_service.entry(e.service.as_str()).or_default().push((f, e));
    }
    for (svc, entries) in by_service {
        match plan_service(entries, node) {
            Ok(keys) => {
                for (k, p) in keys {
                    plan.want.insert(k, p);
                    plan.owners.insert(k, svc.to_owned());
                }
            }
            Err(why) => {
                plan.rejected.entry(svc.to_owned()).or_insert(why);
            }
        }
    }
    for (k, owner) in prev_owners {
        if plan.rejected.contains_key(owner) && !plan.want.contains_key(k) {
            plan.keep.insert(*k);
            plan.owners.insert(*k, owner.clone());
        }
    }
    plan
}

fn service_key(f: &services::Frontend) -> ServiceKey {
    let proto = match f.proto {
        services::Proto::Tcp => 6,
        services::Proto::Udp => 17,
    };
    ServiceKey { addr: Addr16::from_v4_octets(f.ip.octets()), port_be: f.port.to_be(), proto, _pad: [0; 5] }
}

/// Pure: the slot order of a frontend's new backend set. A backend that stays keeps its slot;
/// new ones fill the freed slots, then go at the end; freed slots left over take the last ones.
pub fn stable_slots(old: &[BackendAddr], want: &[BackendAddr]) -> Vec<BackendAddr> {
    let wanted: BTreeSet<&BackendAddr> = want.iter().collect();
    let mut slots: Vec<Option<BackendAddr>> = old.iter().map(|b| wanted.contains(b).then_some(*b)).collect();
    let kept: BTreeSet<BackendAddr> = slots.iter().flatten().copied().collect();
    let mut fresh = want.iter().filter(|b| !kept.contains(b)).copied();
    for s in slots.iter_mut().filter(|s| s.is_none()) {
        *s = fresh.next();
    }
    slots.extend(fresh.map(Some));
    let mut i = 0;
    while i < slots.len() {
        if slots[i].is_some() {
            i += 1;
            continue;
        }
        let last = slots.pop().flatten();
        if i < slots.len() {
            slots[i] = last;
        }
    }
    slots.into_iter().flatten().collect()
}

fn backend_name(b: &BackendAddr) -> String {
    format!("{}:{}", Ipv4Addr::from(b.addr.v4_octets()), u16::from_be(b.port_be))
}

/// What the three maps hold, as this writer last wrote (or read) them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Written {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// Backend set → its backends by slot.
    sets: BTreeMap<u32, Vec<BackendAddr>>,
    /// Backend slots over all sets (kept with `sets`: a pass that writes one Service does not
    /// count 30k sets to know the room left).
    slots: usize,
    /// Frontends that have a Maglev table.
    pub maglev: BTreeSet<ServiceKey>,
    /// Sets no frontend uses any more; deleted at the start of the next pass.
    retired: Vec<u32>,
    next_set: u32,
}

impl Written {
    /// What the kernel maps hold (at start, or after a failed write). Sets no frontend uses
    /// are retired; every Maglev table is rewritten at the next write of its frontend.
    fn read<S, B, G>(maps: &ServiceMaps<S, B, G>) -> weir_dataplane::Result<Self>
    where
        S: Kv<ServiceKey, ServiceValue>,
        B: Kv<BackendKey, BackendAddr>,
        G: Kv<ServiceKey, MaglevTable>,
    {
        let services = maps.services.list()?;
        let mut slots: BTreeMap<u32, BTreeMap<u32, BackendAddr>> = BTreeMap::new();
        for (k, b) in maps.backends.list()? {
            slots.entry(k.set).or_default().insert(k.slot, b);
        }
        let used: BTreeSet<u32> = services.values().map(|v| v.set).collect();
        let next_set = slots.keys().chain(&used).max().map_or(1, |m| m + 1);
        let retired = slots.keys().filter(|s| !used.contains(s)).copied().collect();
        // A set is trusted only as far as it is contiguous; a gap forces the frontend to be rewritten.
        let sets: BTreeMap<u32, Vec<BackendAddr>> = slots
            .into_iter()
            .map(|(set, by_slot)| {
                let dense = by_slot.iter().enumerate().take_while(|(i, (slot, _))| *i as u32 == **slot);
                (set, dense.map(|(_, (_, b))| *b).collect())
            })
            .collect();
        let maglev = maps.maglev.list()?.into_keys().collect();
        let slots = sets.values().map(Vec::len).sum();
        Ok(Self { services, sets, slots, maglev, retired, next_set })
    }

    /// Entries in use: frontends, backend slots (retired sets included), Maglev tables.
    fn usage(&self) -> [usize; 3] {
        debug_assert_eq!(self.slots, self.sets.values().map(Vec::len).sum::<usize>(), "slot count kept with the sets");
        [self.services.len(), self.slots, self.maglev.len()]
    }

    /// New entries that writing `keys` takes: frontends, backend slots, Maglev tables.
    fn needs(&self, keys: &BTreeMap<ServiceKey, FrontendPlan>) -> [usize; 3] {
        let mut n = [0; 3];
        for (k, p) in keys {
            let known = self.services.contains_key(k);
            n[0] += usize::from(!known);
            let old = self.services.get(k).and_then(|v| self.sets.get(&v.set)).map_or(&[][..], Vec::as_slice);
            if !known || stable_slots(old, &p.backends) != old {
                n[1] += p.backends.len();
            }
            n[2] += usize::from(p.per_packet && !p.backends.is_empty() && !self.maglev.contains(k));
        }
        n
    }

    /// Deletes the sets retired by the previous pass.
    fn purge<B: Kv<BackendKey, BackendAddr>>(&mut self, backends: &mut B) -> weir_dataplane::Result<()> {
        while let Some(set) = self.retired.pop() {
            let n = self.sets.get(&set).map_or(0, Vec::len);
            for slot in 0..n as u32 {
                if let Err(e) = backends.remove(BackendKey { set, slot }) {
                    self.retired.push(set);
                    return Err(e);
                }
            }
            if let Some(gone) = self.sets.remove(&set) {
                self.slots -= gone.len();
            }
        }
        Ok(())
    }

    /// Makes frontend `key` hold `want` (`None`: removes it): a new backend set first when the
    /// backends changed, then its Maglev table, then the frontend itself. (upserted, removed).
    fn write<S, B, G>(
        &mut self,
        key: ServiceKey,
        want: Option<&FrontendPlan>,
        maps: &mut ServiceMaps<S, B, G>,
    ) -> weir_dataplane::Result<(usize, usize)>
    where
        S: Kv<ServiceKey, ServiceValue>,
        B: Kv<BackendKey, BackendAddr>,
        G: Kv<ServiceKey, MaglevTable>,
    {
        let old = self.services.get(&key).copied();
        let Some(p) = want else {
            let Some(old) = old else { return Ok((0, 0)) };
            maps.services.remove(key)?;
            self.services.remove(&key);
            self.retired.push(old.set);
            if self.maglev.contains(&key) {
                maps.maglev.remove(key)?;
                self.maglev.remove(&key);
            }
            return Ok((0, 1));
        };
        let old_slots = old.and_then(|v| self.sets.get(&v.set)).map_or(&[][..], Vec::as_slice);
        let slots = stable_slots(old_slots, &p.backends);
        let same = old.is_some() && old_slots == slots.as_slice();
        let set = match old {
            Some(v) if same => v.set,
            _ => {
                let set = self.next_set;
                self.next_set += 1;
                for (slot, b) in slots.iter().enumerate() {
                    maps.backends.upsert(BackendKey { set, slot: slot as u32 }, *b)?;
                }
                self.slots += slots.len();
                if let Some(old) = self.sets.insert(set, slots.clone()) {
                    self.slots -= old.len();
                }
                set
            }
        };
        let table = p.per_packet && !slots.is_empty();
        if table && (!same || !self.maglev.contains(&key)) {
            let names: Vec<String> = slots.iter().map(backend_name).collect();
            maps.maglev.upsert(key, maglev::table(&names))?;
            self.maglev.insert(key);
        }
        let value = ServiceValue {
            count: slots.len() as u16,
            flags: 0,
            affinity_timeout_s: p.affinity_timeout_s,
            set,
            _pad: [0; 4],
        };
        let mut upserted = 0;
        if old != Some(value) {
            maps.services.upsert(key, value)?;
            self.services.insert(key, value);
            upserted = 1;
        }
        if let Some(o) = old.filter(|o| o.set != set) {
            self.retired.push(o.set);
        }
        if !table && self.maglev.contains(&key) {
            maps.maglev.remove(key)?;
            self.maglev.remove(&key);
        }
        Ok((upserted, 0))
    }
}

/// The Services and EndpointSlices (namespace, name) that were added, changed or removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectChanges {
    pub services: BTreeSet<(String, String)>,
    pub slices: BTreeSet<(String, String)>,
}

impl From<&crate::source::Changes> for ObjectChanges {
    /// The Service-related part of what a source logged.
    fn from(c: &crate::source::Changes) -> Self {
        Self { services: c.services.clone(), slices: c.endpoint_slices.clone() }
    }
}

impl ObjectChanges {
    /// What differs between two states. A watch-based source knows this from its events; for
    /// a snapshot source it is one ordered walk of both maps.
    pub fn between(
        old_services: &Named<Service>,
        new_services: &Named<Service>,
        old_slices: &Named<SliceInfo>,
        new_slices: &Named<SliceInfo>,
    ) -> Self {
        Self { services: differing(old_services, new_services), slices: differing(old_slices, new_slices) }
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty()
    }
}

/// Keys present in only one of two sorted maps, or with different values.
fn differing<T: PartialEq>(a: &Named<T>, b: &Named<T>) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let (mut ia, mut ib) = (a.iter().peekable(), b.iter().peekable());
    loop {
        match (ia.peek(), ib.peek()) {
            (None, None) => return out,
            (Some((k, _)), None) | (None, Some((k, _))) => {
                out.insert((*k).clone());
                if ia.peek().is_some() {
                    ia.next();
                } else {
                    ib.next();
                }
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.insert((*ka).clone());
                    ia.next();
                }
                std::cmp::Ordering::Greater => {
                    out.insert((*kb).clone());
                    ib.next();
                }
                std::cmp::Ordering::Equal => {
                    // The same shared object is unchanged without looking inside.
                    if !std::sync::Arc::ptr_eq(va, vb) && va != vb {
                        out.insert((*ka).clone());
                    }
                    ia.next();
                    ib.next();
                }
            },
        }
    }
}

/// What the incremental path needs to recompile one Service without looking at the others.
#[derive(Debug, Default)]
struct Index {
    node: String,
    node_ips: Vec<Ipv4Addr>,
    /// The frontends each Service (`namespace/name`) holds in the maps.
    keys_of: BTreeMap<String, BTreeSet<ServiceKey>>,
    /// EndpointSlice → the Service it belongs to, both (namespace, name).
    slice_owner: BTreeMap<(String, String), (String, String)>,
    /// Service → the names of its EndpointSlices.
    slices_of: BTreeMap<(String, String), BTreeSet<String>>,
    /// Two Services claimed one frontend at the last full compile.
    conflicted: bool,
}

impl Index {
    fn build(plan: &ServiceMapPlan, slices: &Named<SliceInfo>, node: &str, node_ips: &[Ipv4Addr]) -> Self {
        let mut ix = Index { node: node.to_owned(), node_ips: node_ips.to_vec(), ..Default::default() };
        for (k, owner) in &plan.owners {
            ix.keys_of.entry(owner.clone()).or_default().insert(*k);
        }
        for (key, s) in slices {
            ix.link_slice(key, s);
        }
        ix
    }

    fn link_slice(&mut self, key: &(String, String), s: &SliceInfo) -> Option<(String, String)> {
        let svc = (key.0.clone(), services::slice_service(s)?.to_owned());
        self.slice_owner.insert(key.clone(), svc.clone());
        self.slices_of.entry(svc.clone()).or_default().insert(key.1.clone());
        Some(svc)
    }

    fn unlink_slice(&mut self, key: &(String, String)) -> Option<(String, String)> {
        let svc = self.slice_owner.remove(key)?;
        if let Some(names) = self.slices_of.get_mut(&svc) {
            names.remove(&key.1);
            if names.is_empty() {
                self.slices_of.remove(&svc);
            }
        }
        Some(svc)
    }
}

/// What the maps can still take, counted from the writer's record (old sets are deleted only at
/// the next pass, so they count until then).
struct Room {
    left: [Option<usize>; 3],
}

impl Room {
    const MAPS: [&'static str; 3] = ["WEIR_SERVICES", "WEIR_BACKENDS", "WEIR_MAGLEV"];

    fn of<S, B, G>(maps: &ServiceMaps<S, B, G>, written: &Written) -> Self
    where
        S: Kv<ServiceKey, ServiceValue>,
        B: Kv<BackendKey, BackendAddr>,
        G: Kv<ServiceKey, MaglevTable>,
    {
        let caps = [maps.services.capacity(), maps.backends.capacity(), maps.maglev.capacity()];
        let used = written.usage();
        Room { left: [0, 1, 2].map(|i| caps[i].map(|c| (c as usize).saturating_sub(used[i]))) }
    }

    /// Reserves what writing `keys` takes, or says which map cannot hold it: the Service is
    /// then rejected whole and keeps what it had.
    fn take(&mut self, written: &Written, keys: &BTreeMap<ServiceKey, FrontendPlan>) -> Result<(), String> {
        let need = written.needs(keys);
        for ((left, need), map) in self.left.iter().zip(need).zip(Self::MAPS) {
            if let Some(left) = left.filter(|l| need > *l) {
                return Err(format!("{map} is full: {need} more entries needed, room for {left}"));
            }
        }
        for (left, need) in self.left.iter_mut().zip(need) {
            if let Some(left) = left.as_mut() {
                *left -= need;
            }
        }
        Ok(())
    }
}

/// The agent's writer of the Service maps. It remembers what it wrote, so an update costs a
/// diff in memory plus the changed entries, not a walk of the kernel maps; given the objects
/// that changed ([`ServiceSync::apply_changes`]) it recompiles only their Services. After a
/// failed write (or at start) it re-reads the kernel maps once.
#[derive(Debug, Default)]
pub struct ServiceSync {
    /// Which Service (`namespace/name`) each frontend belongs to.
    pub owners: BTreeMap<ServiceKey, String>,
    /// Services rejected now, with the reason.
    pub rejected: BTreeMap<String, String>,
    written: Option<Written>,
    index: Option<Index>,
    /// The hostPort pods of the last full pass.
    host_ports: Vec<services::HostPortPod>,
}

/// What one [`ServiceSync::apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    pub changes: maps::Changes,
    /// The rejected list differs from the previous one (worth a log line).
    pub rejected_changed: bool,
    /// Services recompiled (all of them on a full pass).
    pub recompiled: usize,
    /// Some frontend changed owner, appeared or went (flow enrichment names Services by it).
    pub owners_changed: bool,
}

impl ServiceSync {
    /// What the maps hold as last written, if this writer trusts its record.
    pub fn written(&self) -> Option<&Written> {
        self.written.as_ref()
    }

    /// The record of the maps, read from the kernel when there is none; old sets deleted.
    fn begin<S, B, G>(&mut self, maps: &mut ServiceMaps<S, B, G>) -> weir_dataplane::Result<Written>
    where
        S: Kv<ServiceKey, ServiceValue>,
        B: Kv<BackendKey, BackendAddr>,
        G: Kv<ServiceKey, MaglevTable>,
    {
        let mut w = match self.written.take() {
            Some(w) => w,
            None => Written::read(maps)?,
        };
        w.purge(&mut maps.backends)?;
        Ok(w)
    }

    /// Rejects (whole, keeping what they had) the Services of `plan` the maps cannot also hold,
    /// in name order.
    fn fit<S, B, G>(&self, plan: &mut ServiceMapPlan, written: &Written, maps: &ServiceMaps<S, B, G>)
    where
        S: Kv<ServiceKey, ServiceValue>,
        B: Kv<BackendKey, BackendAddr>,
        G: Kv<ServiceKey, MaglevTable>,
    {
        let mut room = Room::of(maps, written);
        let mut by_service: BTreeMap<String, BTreeMap<ServiceKey, FrontendPlan>> = BTreeMap::new();
        for (k, p) in &plan.want {
            if let Some(owner) = plan.owners.get(k) {
                by_service.entry(owner.clone()).or_default().insert(*k, p.clone());
            }
        }
        for (svc, keys) in by_service {
            let Err(why) = room.take(written, &keys) else { continue };
            for k in keys.keys() {
                plan.want.remove(k);
                plan.owners.remove(k);
            }
            for (k, owner) in &self.owners {
                if *owner == svc && written.services.contains_key(k) {
                    plan.keep.insert(*k);
                    plan.owners.insert(*k, svc.clone());
                }
            }
            plan.rejected.insert(svc, why);
        }
    }

    /// The cluster's running hostPort pods (see [`services::host_port_pods`]), compiled with
    /// the Services. They are few (DaemonSets mostly): a change among them makes the next pass
    /// full. Returns whether they changed.
    pub fn set_host_ports(&mut self, pods: Vec<services::HostPortPod>) -> bool {
        if pods == self.host_ports {
            return false;
        }
        self.host_ports = pods;
        self.index = None;
        true
    }

    /// Compiles every Service (and hostPort) for `node` and makes the maps hold the result.
    pub fn apply<S, B, G>(
        &mut self,
        svcs: &Named<Service>,
        slices: &Named<SliceInfo>,
        node_ips: &[Ipv4Addr],
        node: &str,
        maps: &mut ServiceMaps<S, B, G>,
    ) -> weir_dataplane::Result<Applied>
    where
        S: Kv<ServiceKey, ServiceValue>,
        B: Kv<BackendKey, BackendAddr>,
        G: Kv<ServiceKey, MaglevTable>,
    {
        self.index = None;
        let table = services::compile(svcs, slices, node_ips, &self.host_ports);
        let mut written = self.begin(maps)?;
        let mut plan = service_map_plan(&table, node, &self.owners);
        self.fit(&mut plan, &written, maps);
        let keys: BTreeSet<ServiceKey> =
            written.services.keys().chain(plan.want.keys()).filter(|k| !plan.keep.contains(k)).copied().collect();
        let mut changes = maps::Changes::default();
        for k in keys {
            // On an error the record is dropped: the next pass re-reads the kernel.
            let (u, r) = written.write(k, plan.want.get(&k), maps)?;
            changes.upserted += u;
            changes.removed += r;
        }
        let mut ix = Index::build(&plan, slices, node, node_ips);
        ix.conflicted = table.conflicted;
        self.index = Some(ix);
        self.written = Some(written);
        let owners_changed = plan.owners != self.owners;
        self.owners = plan.owners;
        let rejected_changed = plan.rejected != self.rejected;
        self.rejected = plan.rejected;
        Ok(Applied { changes, rejected_changed, recompiled: svcs.len(), owners_changed })
    }

    /// Like [`ServiceSync::apply`], given which objects changed since the previous call: only
    /// the Services those objects touch are recompiled and written. Falls back to a full pass
    /// when there is no previous state, the node or node addresses changed, or a frontend is
    /// contested between Services.
    pub fn apply_changes<S, B, G>(
        &mut self,
        svcs: &Named<Service>,
        slices: &Named<SliceInfo>,
        changed: &ObjectChanges,
        node_ips: &[Ipv4Addr],
        node: &str,
        maps: &mut ServiceMaps<S, B, G>,
    ) -> weir_dataplane::Result<Applied>
    where
        S: Kv<ServiceKey, ServiceValue>,
        B: Kv<BackendKey, BackendAddr>,
        G: Kv<ServiceKey, MaglevTable>,
    {
        let usable = self.written.is_some()
            && self.index.as_ref().is_some_and(|ix| ix.node == node && ix.node_ips == node_ips && !ix.conflicted);
        if !usable {
            return self.apply(svcs, slices, node_ips, node, maps);
        }
        let Some(mut ix) = self.index.take() else { unreachable!("checked above") };
        let mut affected = changed.services.clone();
        // Rejected Services are tried again every pass: a full map may have room now.
        // (A rejected pod's host ports are retried by the full pass its next change takes.)
        affected.extend(
            self.rejected
                .keys()
                .filter(|id| !id.starts_with("pod "))
                .filter_map(|id| id.split_once('/'))
                .map(|(ns, n)| (ns.into(), n.into())),
        );
        for key in &changed.slices {
            affected.extend(ix.unlink_slice(key));
            if let Some(s) = slices.get(key) {
                affected.extend(ix.link_slice(key, s));
            }
        }
        let mut staged = Vec::new();
        let mut rejected = self.rejected.clone();
        for (ns, name) in &affected {
            let id = format!("{ns}/{name}");
            let planned = match svcs.get(&(ns.clone(), name.clone())) {
                None => Ok(BTreeMap::new()),
                Some(svc) => {
                    let names = ix.slices_of.get(&(ns.clone(), name.clone()));
                    let mine: Vec<&SliceInfo> = names
                        .into_iter()
                        .flatten()
                        .filter_map(|n| slices.get(&(ns.clone(), n.clone())).map(|s| &**s))
                        .collect();
                    // In frontend order, as the full compile's table holds them.
                    services::compile_service(svc, &mine, node_ips).and_then(|entries| {
                        let entries: BTreeMap<services::Frontend, services::ServiceEntry> =
                            entries.into_iter().collect();
                        plan_service(&entries, node)
                    })
                }
            };
            match planned {
                Ok(keys) => {
                    if keys.keys().any(|k| self.owners.get(k).is_some_and(|o| *o != id)) {
                        // Contested frontend: who wins depends on every Service.
                        return self.apply(svcs, slices, node_ips, node, maps);
                    }
                    rejected.remove(&id);
                    staged.push((id, keys));
                }
                Err(why) => {
                    // Rejected: what the Service had stays written.
                    rejected.insert(id, why);
                }
            }
        }
        let recompiled = affected.len();
        let mut written = self.begin(maps)?;
        let mut room = Room::of(maps, &written);
        let mut changes = maps::Changes::default();
        let mut owners_changed = false;
        for (id, keys) in staged {
            if let Err(why) = room.take(&written, &keys) {
                rejected.insert(id, why);
                continue;
            }
            let old = ix.keys_of.remove(&id).unwrap_or_default();
            for k in old.iter().chain(keys.keys()).copied().collect::<BTreeSet<_>>() {
                // On an error the record is dropped: the next pass re-reads the kernel.
                let (u, r) = written.write(k, keys.get(&k), maps)?;
                changes.upserted += u;
                changes.removed += r;
                let before =
                    if keys.contains_key(&k) { self.owners.insert(k, id.clone()) } else { self.owners.remove(&k) };
                owners_changed |= before.as_ref() != keys.get(&k).map(|_| &id);
            }
            if !keys.is_empty() {
                ix.keys_of.insert(id, keys.into_keys().collect());
            }
        }
        self.written = Some(written);
        self.index = Some(ix);
        let rejected_changed = rejected != self.rejected;
        self.rejected = rejected;
        Ok(Applied { changes, rejected_changed, recompiled, owners_changed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> services::ServiceTable {
        let snap = crate::source::manifest::snapshot_of(yaml, "t").expect("parse");
        services::compile(&snap.services, &snap.endpoint_slices, &[], &[])
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
                       spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}\n---\n\
                       apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                       metadata: {name: web-0, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
                       addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.244.1.2]}]\n";

    #[test]
    fn a_rejected_service_keeps_its_datapath_entries() {
        let good = service_map_plan(&table(SVC), "n1", &BTreeMap::new());
        assert_eq!(good.want.len(), 1);
        let (key, value) = good.want.iter().next().map(|(k, v)| (*k, v.clone())).expect("entry");
        assert_eq!((value.backends.len(), u16::from_be(value.backends[0].port_be)), (1, 8080));
        let bad = table(&SVC.replace("port: 80}", "port: 80, protocol: SCTP}"));
        let plan = service_map_plan(&bad, "n1", &good.owners);
        assert_eq!(plan.rejected.len(), 1);
        assert!(plan.keep.contains(&key) && !plan.want.contains_key(&key), "previous state kept");
        // Once the Service is gone for good, so is its entry.
        let plan = service_map_plan(&table(""), "n1", &plan.owners);
        assert!(plan.want.is_empty() && plan.keep.is_empty());
    }

    #[test]
    fn internal_traffic_local_keeps_clients_on_their_node_and_affinity_is_carried() {
        let yaml = SVC
            .replace(
                "spec: {clusterIP: 10.96.0.10,",
                "spec: {internalTrafficPolicy: Local, sessionAffinity: ClientIP, clusterIP: 10.96.0.10,",
            )
            .replace(
                "endpoints: [{addresses: [10.244.1.2]}]",
                "endpoints: [{addresses: [10.244.1.2], nodeName: n1}, {addresses: [10.244.2.2], nodeName: n2}]",
            );
        let on = |node: &str| {
            let plan = service_map_plan(&table(&yaml), node, &BTreeMap::new());
            let v = plan.want.values().next().expect("entry").clone();
            let first = v.backends.first().map(|b| Ipv4Addr::from(b.addr.v4_octets()));
            (v.backends.len(), first, v.affinity_timeout_s)
        };
        assert_eq!(on("n1"), (1, Some(Ipv4Addr::new(10, 244, 1, 2)), 10_800));
        assert_eq!(on("n2"), (1, Some(Ipv4Addr::new(10, 244, 2, 2)), 10_800));
        assert_eq!(on("n3").0, 0, "no local endpoint: refused, no fallback");
    }

    #[test]
    fn too_many_backends_is_an_explicit_rejection() {
        let yaml_with = |n: usize| {
            let endpoints: Vec<String> =
                (0..n).map(|i| format!("{{addresses: [10.244.{}.{}]}}", i / 250, i % 250 + 2)).collect();
            SVC.replace("endpoints: [{addresses: [10.244.1.2]}]", &format!("endpoints: [{}]", endpoints.join(", ")))
        };
        let plan = service_map_plan(&table(&yaml_with(MAX_BACKENDS)), "n1", &BTreeMap::new());
        assert_eq!(plan.want.values().next().map(|p| p.backends.len()), Some(MAX_BACKENDS));
        let plan = service_map_plan(&table(&yaml_with(MAX_BACKENDS + 1)), "n1", &BTreeMap::new());
        assert!(plan.want.is_empty(), "never a half-written frontend");
        assert!(plan.rejected.values().any(|why| why.contains("at most 1024")), "{:?}", plan.rejected);
    }

    #[test]
    fn node_ports_get_maglev_tables_and_external_traffic_local_keeps_them_on_the_node() {
        let yaml = SVC
            .replace(
                "spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}",
                "spec: {type: NodePort, externalTrafficPolicy: Local, clusterIP: 10.96.0.10, \
                 ports: [{name: http, port: 80, nodePort: 30080}]}",
            )
            .replace(
                "endpoints: [{addresses: [10.244.1.2]}]",
                "endpoints: [{addresses: [10.244.1.2], nodeName: n1}, {addresses: [10.244.2.2], nodeName: n2}]",
            );
        let snap = crate::source::manifest::snapshot_of(&yaml, "t").expect("parse");
        let node_ips = [Ipv4Addr::new(172, 30, 0, 10)];
        let mut maps = FakeServiceMaps::default();
        let mut sync = ServiceSync::default();
        sync.apply(&snap.services, &snap.endpoint_slices, &node_ips, "n1", &mut maps).expect("apply");
        let count = |maps: &FakeServiceMaps, port: u16| {
            maps.services.entries.iter().find(|(k, _)| u16::from_be(k.port_be) == port).map(|(_, v)| v.count)
        };
        assert_eq!(count(&maps, 80), Some(2), "ClusterIP: every endpoint");
        assert_eq!(count(&maps, 30080), Some(1), "NodePort with externalTrafficPolicy Local: this node's only");
        assert_eq!(maps.maglev.entries.len(), 1, "only the per-packet frontend has a Maglev table");
        let mut maps = FakeServiceMaps::default();
        ServiceSync::default().apply(&snap.services, &snap.endpoint_slices, &node_ips, "n3", &mut maps).expect("apply");
        assert_eq!(count(&maps, 30080), Some(0));
        assert!(maps.maglev.entries.is_empty(), "no local endpoint: refused, no table");
    }

    /// A hostPort pod's frontend is written on every node (its one backend is not filtered by
    /// node) with a Maglev table (per packet on the pod's node); a change among hostPort pods
    /// makes the next pass full, and a pod gone takes its frontend with it.
    #[test]
    fn host_port_frontends_follow_their_pods() {
        let snap = crate::source::manifest::snapshot_of(SVC, "t").expect("parse");
        let pod = services::HostPortPod {
            namespace: "x".into(),
            name: "hp".into(),
            ip: Ipv4Addr::new(10, 244, 1, 9),
            node: "n1".into(),
            node_ips: vec![Ipv4Addr::new(172, 30, 0, 11)],
            ports: vec![crate::source::HostPort {
                host_port: 9090,
                container_port: 8080,
                protocol: "TCP".into(),
                host_ip: "".into(),
            }],
        };
        let hp = |m: &FakeServiceMaps| {
            m.services.entries.iter().find(|(k, _)| u16::from_be(k.port_be) == 9090).map(|(_, v)| v.count)
        };
        let mut m = FakeServiceMaps::default();
        let mut s = ServiceSync::default();
        s.apply(&snap.services, &snap.endpoint_slices, &[], "n2", &mut m).expect("apply");
        assert!(s.set_host_ports(vec![pod.clone()]), "a new hostPort pod is a change");
        assert!(!s.set_host_ports(vec![pod]), "the same set is not");
        let a = s
            .apply_changes(&snap.services, &snap.endpoint_slices, &ObjectChanges::default(), &[], "n2", &mut m)
            .expect("pass");
        assert_eq!(a.recompiled, snap.services.len(), "a full pass");
        assert_eq!(hp(&m), Some(1), "served on another node too (at connect())");
        assert_eq!(m.maglev.entries.len(), 1);
        assert_eq!(s.owners.values().filter(|o| *o == "pod x/hp").count(), 1);
        assert!(s.set_host_ports(Vec::new()));
        s.apply_changes(&snap.services, &snap.endpoint_slices, &ObjectChanges::default(), &[], "n2", &mut m)
            .expect("pass");
        assert_eq!(hp(&m), None, "gone with its pod");
    }

    #[test]
    fn sync_writes_only_changes_and_recovers_from_a_failed_write() {
        let snap = crate::source::manifest::snapshot_of(SVC, "t").expect("parse");
        let mut m = FakeServiceMaps::default();
        let mut s = ServiceSync::default();
        let a = s.apply(&snap.services, &snap.endpoint_slices, &[], "n1", &mut m).expect("apply");
        assert_eq!((a.changes.upserted, a.changes.removed), (1, 0));
        let a = s.apply(&snap.services, &snap.endpoint_slices, &[], "n1", &mut m).expect("apply");
        assert_eq!(a.changes, maps::Changes::default(), "idempotent");
        m.services.fail_writes = true;
        let (none, no_slices) = (Named::new(), Named::new());
        assert!(s.apply(&none, &no_slices, &[], "n1", &mut m).is_err());
        m.services.fail_writes = false;
        let a = s.apply(&none, &no_slices, &[], "n1", &mut m).expect("apply");
        assert_eq!(a.changes.removed, 1, "re-read the kernel after the failure");
        assert!(m.services.entries.is_empty());
        // The frontend's set is retired now and deleted by the next pass.
        s.apply(&none, &no_slices, &[], "n1", &mut m).expect("apply");
        assert!(m.backends.entries.is_empty(), "{:?}", m.backends.entries);
    }

    #[test]
    fn a_full_map_rejects_whole_services_keeps_the_rest_and_retries() {
        let two = |name: &str, ip: &str| {
            SVC.replace("name: web,", &format!("name: {name},"))
                .replace("service-name: web", &format!("service-name: {name}"))
                .replace("name: web-0", &format!("name: {name}-0"))
                .replace("10.96.0.10", ip)
                .replace("endpoints: [{addresses: [10.244.1.2]}]", "endpoints: [{addresses: [10.244.1.2, 10.244.1.3]}]")
        };
        let yaml = format!("{}---\n{}", two("api", "10.96.0.11"), two("web", "10.96.0.10"));
        let snap = crate::source::manifest::snapshot_of(&yaml, "t").expect("parse");
        let mut m = FakeServiceMaps::default();
        m.backends.capacity = Some(3);
        let mut s = ServiceSync::default();
        s.apply(&snap.services, &snap.endpoint_slices, &[], "n1", &mut m).expect("a full map is no error");
        assert_eq!(m.services.entries.len(), 1, "api fits, web does not");
        let why = s.rejected.get("shop/web").expect("web rejected");
        assert!(why.contains("WEIR_BACKENDS is full"), "{why}");
        assert_eq!(m.backends.entries.len(), 2, "nothing of web was written");
        // Room appears: the next pass, with nothing changed, writes web.
        m.backends.capacity = Some(8);
        let a = s
            .apply_changes(&snap.services, &snap.endpoint_slices, &ObjectChanges::default(), &[], "n1", &mut m)
            .expect("apply");
        assert_eq!((a.changes.upserted, s.rejected.len()), (1, 0), "{:?}", s.rejected);
        assert_eq!(resolve(&m).len(), 2);
    }

    /// Every frontend as a program sees it: count, affinity and the backends of its set's slots.
    fn resolve(m: &FakeServiceMaps) -> BTreeMap<ServiceKey, (u16, u32, Vec<Option<BackendAddr>>)> {
        m.services
            .entries
            .iter()
            .map(|(k, v)| {
                let slots = (0..u32::from(v.count))
                    .map(|slot| m.backends.entries.get(&BackendKey { set: v.set, slot }).copied())
                    .collect();
                (*k, (v.count, v.affinity_timeout_s, slots))
            })
            .collect()
    }

    #[test]
    fn a_backend_keeps_its_slot_and_old_sets_go_at_the_next_pass() {
        let b =
            |i: u8| BackendAddr { addr: Addr16::from_v4_octets([10, 0, 0, i]), port_be: 80u16.to_be(), _pad: [0; 6] };
        assert_eq!(stable_slots(&[], &[b(2), b(1)]), vec![b(2), b(1)]);
        assert_eq!(stable_slots(&[b(1), b(2), b(3)], &[b(1), b(3), b(4)]), vec![b(1), b(4), b(3)]);
        assert_eq!(stable_slots(&[b(1), b(2), b(3)], &[b(3)]), vec![b(3)]);
        assert_eq!(stable_slots(&[b(1), b(2), b(3), b(4)], &[b(1), b(4)]), vec![b(1), b(4)]);
        assert_eq!(stable_slots(&[b(1), b(2)], &[b(1), b(2), b(5)]), vec![b(1), b(2), b(5)]);

        let mut m = FakeServiceMaps::default();
        let mut s = ServiceSync::default();
        let two =
            SVC.replace("endpoints: [{addresses: [10.244.1.2]}]", "endpoints: [{addresses: [10.244.1.2, 10.244.1.3]}]");
        let snap = crate::source::manifest::snapshot_of(&two, "t").expect("parse");
        s.apply(&snap.services, &snap.endpoint_slices, &[], "n1", &mut m).expect("apply");
        let before = resolve(&m);
        let snap =
            crate::source::manifest::snapshot_of(SVC.replace("10.244.1.2", "10.244.1.3").as_str(), "t").expect("parse");
        s.apply(&snap.services, &snap.endpoint_slices, &[], "n1", &mut m).expect("apply");
        let after = resolve(&m);
        let slot_of = |r: &BTreeMap<ServiceKey, (u16, u32, Vec<Option<BackendAddr>>)>, ip: u8| {
            r.values().next().and_then(|(_, _, s)| s.iter().position(|b| b.map(|b| b.addr.v4_octets()[3]) == Some(ip)))
        };
        assert_eq!(slot_of(&after, 3), Some(0), "the remaining backend moved into the freed slot");
        assert_eq!(slot_of(&before, 3), Some(1));
        assert_eq!(m.backends.entries.len(), 3, "old set (2) still there for programs mid-run, new set (1)");
        s.apply(&snap.services, &snap.endpoint_slices, &[], "n1", &mut m).expect("apply");
        assert_eq!(m.backends.entries.len(), 1, "the old set is gone at the next pass");
    }

    /// xorshift64*: a deterministic generator for the randomized test below.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
    }

    fn random_service(r: &mut Rng, i: u64) -> String {
        // Now and then a ClusterIP another Service holds, or a protocol weir rejects.
        let ip = if r.below(10) == 0 { r.below(6) } else { i };
        let kind = ["ClusterIP", "NodePort", "LoadBalancer"][r.below(3) as usize];
        let proto = if r.below(12) == 0 { "SCTP" } else { "UDP" };
        let etp = ["Cluster", "Local"][r.below(2) as usize];
        let itp = ["Cluster", "Local"][r.below(2) as usize];
        let aff = ["None", "ClientIP"][r.below(2) as usize];
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: ns}}\n\
             spec: {{type: {kind}, clusterIP: 10.96.0.{ip}, externalTrafficPolicy: {etp}, \
             internalTrafficPolicy: {itp}, sessionAffinity: {aff}, ports: [{{name: http, port: 80, nodePort: {np}}}, \
             {{name: dns, port: 53, protocol: {proto}, nodePort: {np2}}}]}}\n\
             status: {{loadBalancer: {{ingress: [{{ip: 192.0.2.{i}}}]}}}}\n",
            np = 30000 + i,
            np2 = 31000 + i,
        )
    }

    fn random_slice(r: &mut Rng, i: u64) -> String {
        let owner = r.below(7);
        // Now and then more than a frontend may hold.
        let big = r.below(40) == 0;
        let n = if big { MAX_BACKENDS as u64 + 10 } else { r.below(24) };
        let endpoints: Vec<String> = (0..n)
            .map(|e| {
                let node = ["n1", "n2"][r.below(2) as usize];
                let (ready, terminating) = if big {
                    (true, false)
                } else {
                    [(true, false), (true, false), (false, true), (false, false)][r.below(4) as usize]
                };
                format!(
                    "{{addresses: [10.{i}.{}.{}], nodeName: {node}, \
                     conditions: {{ready: {ready}, serving: true, terminating: {terminating}}}}}",
                    e / 250,
                    e % 250
                )
            })
            .collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: e{i}, namespace: ns, labels: {{kubernetes.io/service-name: s{owner}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]\n\
             endpoints: [{}]\n",
            endpoints.join(", ")
        )
    }

    #[test]
    fn incremental_updates_end_where_a_full_compile_does() {
        for seed in [0x5eed_1234_abcd_9876, 0x0dd_ba11, 0xfeed_f00d_0042, 0x1234_5678_9abc_def1] {
            random_walk(seed);
        }
    }

    /// 300 random steps (Services and EndpointSlices added, changed, removed; contested
    /// frontends, SCTP, too many backends) through the incremental path and through full
    /// compiles side by side: the maps, owners and rejections must agree after every step.
    fn random_walk(seed: u64) {
        let node_ips = [Ipv4Addr::new(172, 30, 0, 11), Ipv4Addr::new(172, 30, 0, 12)];
        let mut r = Rng(seed);
        let mut objects: BTreeMap<String, String> = BTreeMap::new();
        let (mut inc, mut full) = (ServiceSync::default(), ServiceSync::default());
        let (mut inc_maps, mut full_maps) = (FakeServiceMaps::default(), FakeServiceMaps::default());
        let mut prev = crate::source::ClusterSnapshot::default();
        let mut incremental_steps = 0;
        let mut seen = BTreeSet::new();
        for step in 0..300 {
            for _ in 0..=r.below(2) {
                let i = r.below(6);
                match r.below(5) {
                    0 => objects.remove(&format!("s{i}")),
                    1 => objects.remove(&format!("e{i}")),
                    2 | 3 => objects.insert(format!("e{i}"), random_slice(&mut r, i)),
                    _ => objects.insert(format!("s{i}"), random_service(&mut r, i)),
                };
            }
            let yaml: String = objects.values().cloned().collect();
            let snap = crate::source::manifest::snapshot_of(&yaml, "t").expect("parse");
            let changed =
                ObjectChanges::between(&prev.services, &snap.services, &prev.endpoint_slices, &snap.endpoint_slices);
            let a = inc
                .apply_changes(&snap.services, &snap.endpoint_slices, &changed, &node_ips, "n1", &mut inc_maps)
                .expect("incremental");
            if a.recompiled < snap.services.len() {
                incremental_steps += 1;
            }
            full.apply(&snap.services, &snap.endpoint_slices, &node_ips, "n1", &mut full_maps).expect("full");
            assert_eq!(resolve(&inc_maps), resolve(&full_maps), "seed {seed:#x} step {step}: frontends");
            assert_eq!(inc_maps.maglev.entries, full_maps.maglev.entries, "seed {seed:#x} step {step}: Maglev tables");
            for m in [&inc_maps, &full_maps] {
                let sets: BTreeSet<u32> = m.backends.entries.keys().map(|k| k.set).collect();
                assert!(sets.len() <= m.services.entries.len() + 16, "seed {seed:#x} step {step}: sets pile up");
            }
            assert_eq!(inc.owners, full.owners, "seed {seed:#x} step {step}: owners");
            assert_eq!(inc.rejected, full.rejected, "seed {seed:#x} step {step}: rejected");
            for why in full.rejected.values() {
                let kind = ["already taken", "at most 1024", "SCTP"].into_iter().find(|k| why.contains(k));
                seen.extend(kind);
            }
            prev = snap;
        }
        assert!(incremental_steps > 150, "the incremental path ran only {incremental_steps} times");
        assert_eq!(seen.len(), 3, "the walk must cover every kind of rejection: {seen:?}");
    }
}
