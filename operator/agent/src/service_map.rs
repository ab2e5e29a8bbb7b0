//! From the compiled Service table to `WEIR_SERVICES`: the pure plan (which frontends, which
//! backends for this node, what a rejected Service keeps) and [`ServiceSync`], the agent's one
//! writer of the map, which diffs against what it last wrote instead of re-reading the kernel.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use weir_bpf_common::{Addr16, BackendAddr, MaglevTable, ServiceKey, ServiceValue, MAX_INLINE_BACKENDS};
use weir_dataplane::maps::{self, KeyValueMap};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{maglev, services, source::Named};

/// What `WEIR_SERVICES` should hold, which Service owns each frontend, and what was rejected.
#[derive(Debug, Default, PartialEq)]
pub struct ServiceMapPlan {
    pub want: BTreeMap<ServiceKey, ServiceValue>,
    /// Maglev tables of the frontends the per-packet load balancer serves (NodePort, external
    /// and LoadBalancer IPs); ClusterIPs are served at connect() and need none.
    pub maglev: BTreeMap<ServiceKey, MaglevTable>,
    pub owners: BTreeMap<ServiceKey, String>,
    /// Rejected Services (`namespace/name`) and why.
    pub rejected: BTreeMap<String, String>,
}

/// What the two maps hold (or should hold).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Written {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub maglev: BTreeMap<ServiceKey, MaglevTable>,
}

/// One frontend as written: its map value and, for per-packet frontends, its Maglev table.
type Planned = (ServiceValue, Option<MaglevTable>);

/// Pure: one Service's compiled frontends → what this node writes for each, or why none of it
/// can be written (a Service is written whole or not at all).
fn plan_service<'a>(
    entries: impl IntoIterator<Item = (&'a services::Frontend, &'a services::ServiceEntry)>,
    node: &str,
) -> Result<BTreeMap<ServiceKey, Planned>, String> {
    let mut out = BTreeMap::new();
    for (f, e) in entries {
        // internalTrafficPolicy Local keeps this node's pods on endpoints of this node, and
        // externalTrafficPolicy Local does the same for NodePort and external traffic; neither
        // falls back (no local endpoint → refused).
        let cluster_ip = e.kind == services::FrontendKind::ClusterIp;
        let local_only = if cluster_ip { e.internal_traffic_local } else { e.external_traffic_local };
        let backends: Vec<&services::Backend> =
            e.backends.iter().filter(|b| !local_only || b.node.as_deref() == Some(node)).collect();
        if backends.len() > MAX_INLINE_BACKENDS {
            return Err(format!(
                "{} backends behind {}:{}; at most {MAX_INLINE_BACKENDS} for now",
                backends.len(),
                f.ip,
                f.port
            ));
        }
        let mut value = ServiceValue {
            count: backends.len() as u16,
            affinity_timeout_s: e.affinity_timeout.unwrap_or(0),
            ..Default::default()
        };
        for (slot, b) in value.backends.iter_mut().zip(&backends) {
            *slot = BackendAddr { addr: Addr16::from_v4_octets(b.ip.octets()), port_be: b.port.to_be(), _pad: [0; 6] };
        }
        let table = (!cluster_ip && !backends.is_empty()).then(|| {
            let names: Vec<String> = backends.iter().map(|b| format!("{}:{}", b.ip, b.port)).collect();
            maglev::table(&names)
        });
        out.insert(service_key(f), (value, table));
    }
    Ok(out)
}

/// Pure: the compiled table, the previous owners and the map as it is now → the map to write. A
/// rejected Service (bad spec, or more backends than a frontend holds) keeps the entries it had.
pub fn service_map_plan(
    table: &services::ServiceTable,
    node: &str,
    prev_owners: &BTreeMap<ServiceKey, String>,
    current: &Written,
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
                for (k, (v, t)) in keys {
                    plan.want.insert(k, v);
                    if let Some(t) = t {
                        plan.maglev.insert(k, t);
                    }
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
            if let Some(v) = current.services.get(k) {
                plan.want.insert(*k, *v);
                plan.owners.insert(*k, owner.clone());
            }
            if let Some(t) = current.maglev.get(k) {
                plan.maglev.insert(*k, *t);
            }
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

/// The Services and EndpointSlices (namespace, name) that were added, changed or removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectChanges {
    pub services: BTreeSet<(String, String)>,
    pub slices: BTreeSet<(String, String)>,
}

impl ObjectChanges {
    /// What differs between two states. A watch-based source knows this from its events; for
    /// a snapshot source it is one ordered walk of both maps.
    pub fn between(
        old_services: &Named<Service>,
        new_services: &Named<Service>,
        old_slices: &Named<EndpointSlice>,
        new_slices: &Named<EndpointSlice>,
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
                    if va != vb {
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
    fn build(plan: &ServiceMapPlan, slices: &Named<EndpointSlice>, node: &str, node_ips: &[Ipv4Addr]) -> Self {
        let mut ix = Index { node: node.to_owned(), node_ips: node_ips.to_vec(), ..Default::default() };
        for (k, owner) in &plan.owners {
            ix.keys_of.entry(owner.clone()).or_default().insert(*k);
        }
        for (key, s) in slices {
            ix.link_slice(key, s);
        }
        ix
    }

    fn link_slice(&mut self, key: &(String, String), s: &EndpointSlice) -> Option<(String, String)> {
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

/// The agent's writer of `WEIR_SERVICES` and `WEIR_MAGLEV`. It remembers what it wrote, so an
/// update costs a diff in memory plus the changed entries, not a walk of the kernel map; given
/// the objects that changed ([`ServiceSync::apply_changes`]) it recompiles only their Services.
/// After a failed write (or at start) it re-reads the kernel maps once.
#[derive(Debug, Default)]
pub struct ServiceSync {
    /// Which Service (`namespace/name`) each frontend belongs to.
    pub owners: BTreeMap<ServiceKey, String>,
    /// Services rejected now, with the reason.
    pub rejected: BTreeMap<String, String>,
    written: Option<Written>,
    index: Option<Index>,
}

/// What one [`ServiceSync::apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    pub changes: maps::Changes,
    /// The rejected list differs from the previous one (worth a log line).
    pub rejected_changed: bool,
    /// Services recompiled (all of them on a full pass).
    pub recompiled: usize,
}

impl ServiceSync {
    /// Compiles every Service for `node` and makes the maps hold the result. A new Maglev
    /// table is written before its frontend, and a frontend removed before its table.
    pub fn apply<S, G>(
        &mut self,
        svcs: &Named<Service>,
        slices: &Named<EndpointSlice>,
        node_ips: &[Ipv4Addr],
        node: &str,
        services_map: &mut S,
        maglev_map: &mut G,
    ) -> weir_dataplane::Result<Applied>
    where
        S: KeyValueMap<Key = ServiceKey, Value = ServiceValue>,
        G: KeyValueMap<Key = ServiceKey, Value = MaglevTable>,
    {
        self.index = None;
        let table = services::compile(svcs, slices, node_ips);
        let have = match self.written.take() {
            Some(w) => w,
            None => Written { services: services_map.list()?, maglev: maglev_map.list()? },
        };
        let plan = service_map_plan(&table, node, &self.owners, &have);
        // Tables first (upserts only), then frontends, then the tables' removals.
        let mut staged = have.maglev.clone();
        staged.extend(plan.maglev.iter().map(|(k, v)| (*k, *v)));
        maps::sync_from(maglev_map, &have.maglev, &staged)?;
        let changes = maps::sync_from(services_map, &have.services, &plan.want)?;
        maps::sync_from(maglev_map, &staged, &plan.maglev)?;
        let mut ix = Index::build(&plan, slices, node, node_ips);
        ix.conflicted = table.conflicted;
        self.index = Some(ix);
        self.written = Some(Written { services: plan.want, maglev: plan.maglev });
        self.owners = plan.owners;
        let rejected_changed = plan.rejected != self.rejected;
        self.rejected = plan.rejected;
        Ok(Applied { changes, rejected_changed, recompiled: svcs.len() })
    }

    /// Like [`ServiceSync::apply`], given which objects changed since the previous call: only
    /// the Services those objects touch are recompiled and written. Falls back to a full pass
    /// when there is no previous state, the node or node addresses changed, or a frontend is
    /// contested between Services.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_changes<S, G>(
        &mut self,
        svcs: &Named<Service>,
        slices: &Named<EndpointSlice>,
        changed: &ObjectChanges,
        node_ips: &[Ipv4Addr],
        node: &str,
        services_map: &mut S,
        maglev_map: &mut G,
    ) -> weir_dataplane::Result<Applied>
    where
        S: KeyValueMap<Key = ServiceKey, Value = ServiceValue>,
        G: KeyValueMap<Key = ServiceKey, Value = MaglevTable>,
    {
        let usable = self.written.is_some()
            && self.index.as_ref().is_some_and(|ix| ix.node == node && ix.node_ips == node_ips && !ix.conflicted);
        if !usable {
            return self.apply(svcs, slices, node_ips, node, services_map, maglev_map);
        }
        let Some(mut ix) = self.index.take() else { unreachable!("checked above") };
        let mut affected = changed.services.clone();
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
                    let mine: Vec<&EndpointSlice> = names
                        .into_iter()
                        .flatten()
                        .filter_map(|n| slices.get(&(ns.clone(), n.clone())))
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
                        return self.apply(svcs, slices, node_ips, node, services_map, maglev_map);
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
        let Some(mut written) = self.written.take() else { unreachable!("checked above") };
        let mut changes = maps::Changes::default();
        let wrote = (|| {
            for (id, keys) in staged {
                let old = ix.keys_of.remove(&id).unwrap_or_default();
                // Tables first, then frontends, then what the Service no longer has.
                for (k, (_, t)) in &keys {
                    if let Some(t) = t {
                        if written.maglev.get(k) != Some(t) {
                            maglev_map.upsert(*k, *t)?;
                            written.maglev.insert(*k, *t);
                        }
                    }
                }
                for (k, (v, _)) in &keys {
                    if written.services.get(k) != Some(v) {
                        services_map.upsert(*k, *v)?;
                        written.services.insert(*k, *v);
                        changes.upserted += 1;
                    }
                    self.owners.insert(*k, id.clone());
                }
                for k in old.iter().filter(|k| !keys.contains_key(k)) {
                    services_map.remove(*k)?;
                    written.services.remove(k);
                    self.owners.remove(k);
                    changes.removed += 1;
                }
                for k in old.iter().chain(keys.keys()) {
                    let keep = keys.get(k).is_some_and(|(_, t)| t.is_some());
                    if !keep && written.maglev.contains_key(k) {
                        maglev_map.remove(*k)?;
                        written.maglev.remove(k);
                    }
                }
                if !keys.is_empty() {
                    ix.keys_of.insert(id, keys.into_keys().collect());
                }
            }
            Ok::<_, weir_dataplane::Error>(())
        })();
        // After a failed write the next call re-reads the kernel and recompiles everything.
        wrote?;
        self.written = Some(written);
        self.index = Some(ix);
        let rejected_changed = rejected != self.rejected;
        self.rejected = rejected;
        Ok(Applied { changes, rejected_changed, recompiled })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> services::ServiceTable {
        let snap = crate::source::manifest::snapshot_of(yaml, "t").expect("parse");
        services::compile(&snap.services, &snap.endpoint_slices, &[])
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
                       spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}\n---\n\
                       apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                       metadata: {name: web-0, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
                       addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.244.1.2]}]\n";

    #[test]
    fn a_rejected_service_keeps_its_datapath_entries() {
        let good = service_map_plan(&table(SVC), "n1", &BTreeMap::new(), &Written::default());
        assert_eq!(good.want.len(), 1);
        let (key, value) = good.want.iter().next().map(|(k, v)| (*k, *v)).expect("entry");
        assert_eq!((value.count, u16::from_be(value.backends[0].port_be)), (1, 8080));
        let bad = table(&SVC.replace("port: 80}", "port: 80, protocol: SCTP}"));
        let plan = service_map_plan(&bad, "n1", &good.owners, &written(&good));
        assert_eq!(plan.rejected.len(), 1);
        assert_eq!(plan.want.get(&key), Some(&value), "previous state kept");
        // Once the Service is gone for good, so is its entry.
        let plan = service_map_plan(&table(""), "n1", &plan.owners, &written(&plan));
        assert!(plan.want.is_empty());
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
            let plan = service_map_plan(&table(&yaml), node, &BTreeMap::new(), &Written::default());
            let v = *plan.want.values().next().expect("entry");
            (v.count, Ipv4Addr::from(v.backends[0].addr.v4_octets()), v.affinity_timeout_s)
        };
        assert_eq!(on("n1"), (1, Ipv4Addr::new(10, 244, 1, 2), 10_800));
        assert_eq!(on("n2"), (1, Ipv4Addr::new(10, 244, 2, 2), 10_800));
        assert_eq!(on("n3").0, 0, "no local endpoint: refused, no fallback");
    }

    #[test]
    fn too_many_backends_is_an_explicit_rejection() {
        let endpoints: Vec<String> =
            (2..=(MAX_INLINE_BACKENDS + 2)).map(|i| format!("{{addresses: [10.244.1.{i}]}}")).collect();
        let yaml =
            SVC.replace("endpoints: [{addresses: [10.244.1.2]}]", &format!("endpoints: [{}]", endpoints.join(", ")));
        let plan = service_map_plan(&table(&yaml), "n1", &BTreeMap::new(), &Written::default());
        assert!(plan.want.is_empty(), "never a half-written frontend");
        assert!(plan.rejected.values().any(|why| why.contains("at most 16")), "{:?}", plan.rejected);
    }

    fn written(p: &ServiceMapPlan) -> Written {
        Written { services: p.want.clone(), maglev: p.maglev.clone() }
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
        let t = services::compile(&snap.services, &snap.endpoint_slices, &node_ips);
        let plan = service_map_plan(&t, "n1", &BTreeMap::new(), &Written::default());
        let count = |port: u16| {
            plan.want.iter().find(|(k, _)| u16::from_be(k.port_be) == port).map(|(_, v)| v.count).expect("frontend")
        };
        assert_eq!(count(80), 2, "ClusterIP: every endpoint");
        assert_eq!(count(30080), 1, "NodePort with externalTrafficPolicy Local: this node's only");
        assert_eq!(plan.maglev.len(), 1, "only the per-packet frontend has a Maglev table");
        let plan = service_map_plan(&t, "n3", &BTreeMap::new(), &Written::default());
        assert!(plan.maglev.is_empty(), "no local endpoint: refused, no table");
    }

    #[test]
    fn sync_writes_only_changes_and_recovers_from_a_failed_write() {
        let snap = crate::source::manifest::snapshot_of(SVC, "t").expect("parse");
        let mut map = maps::FakeMap::default();
        let mut maglev = maps::FakeMap::default();
        let mut s = ServiceSync::default();
        let a = s.apply(&snap.services, &snap.endpoint_slices, &[], "n1", &mut map, &mut maglev).expect("apply");
        assert_eq!((a.changes.upserted, a.changes.removed), (1, 0));
        let a = s.apply(&snap.services, &snap.endpoint_slices, &[], "n1", &mut map, &mut maglev).expect("apply");
        assert_eq!(a.changes, maps::Changes::default(), "idempotent");
        map.fail_writes = true;
        let (none, no_slices) = (Named::new(), Named::new());
        assert!(s.apply(&none, &no_slices, &[], "n1", &mut map, &mut maglev).is_err());
        map.fail_writes = false;
        let a = s.apply(&none, &no_slices, &[], "n1", &mut map, &mut maglev).expect("apply");
        assert_eq!(a.changes.removed, 1, "re-read the kernel after the failure");
        assert!(map.list().expect("list").is_empty());
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
        let endpoints: Vec<String> = (0..r.below(24))
            .map(|e| {
                let node = ["n1", "n2"][r.below(2) as usize];
                let (ready, terminating) =
                    [(true, false), (true, false), (false, true), (false, false)][r.below(4) as usize];
                format!(
                    "{{addresses: [10.244.{i}.{e}], nodeName: {node}, \
                     conditions: {{ready: {ready}, serving: true, terminating: {terminating}}}}}"
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
        let (mut inc_map, mut inc_maglev) = (maps::FakeMap::default(), maps::FakeMap::default());
        let (mut full_map, mut full_maglev) = (maps::FakeMap::default(), maps::FakeMap::default());
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
            let changed = ObjectChanges::between(
                &prev.services,
                &snap.services,
                &prev.endpoint_slices,
                &snap.endpoint_slices,
            );
            let a = inc
                .apply_changes(
                    &snap.services,
                    &snap.endpoint_slices,
                    &changed,
                    &node_ips,
                    "n1",
                    &mut inc_map,
                    &mut inc_maglev,
                )
                .expect("incremental");
            if a.recompiled < snap.services.len() {
                incremental_steps += 1;
            }
            full.apply(&snap.services, &snap.endpoint_slices, &node_ips, "n1", &mut full_map, &mut full_maglev)
                .expect("full");
            assert_eq!(inc_map.entries, full_map.entries, "seed {seed:#x} step {step}: services map");
            assert_eq!(inc_maglev.entries, full_maglev.entries, "seed {seed:#x} step {step}: Maglev tables");
            assert_eq!(inc.owners, full.owners, "seed {seed:#x} step {step}: owners");
            assert_eq!(inc.rejected, full.rejected, "seed {seed:#x} step {step}: rejected");
            for why in full.rejected.values() {
                let kind = ["already taken", "at most 16", "SCTP"].into_iter().find(|k| why.contains(k));
                seen.extend(kind);
            }
            prev = snap;
        }
        assert!(incremental_steps > 150, "the incremental path ran only {incremental_steps} times");
        assert_eq!(seen.len(), 3, "the walk must cover every kind of rejection: {seen:?}");
    }
}
