//! From the compiled Service table to `WEIR_SERVICES`: the pure plan (which frontends, which
//! backends for this node, what a rejected Service keeps) and [`ServiceSync`], the agent's one
//! writer of the map, which diffs against what it last wrote instead of re-reading the kernel.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use weir_bpf_common::{Addr16, BackendAddr, MaglevTable, ServiceKey, ServiceValue, MAX_INLINE_BACKENDS};
use weir_dataplane::maps::{self, KeyValueMap};

use crate::{maglev, services, source::Named};

/// What `WEIR_SERVICES` should hold, which Service owns each frontend, and what was rejected.
#[derive(Debug, Default, PartialEq)]
pub struct ServiceMapPlan {
    pub want: BTreeMap<ServiceKey, ServiceValue>,
    /// Maglev tables of the frontends the per-packet load balancer serves (NodePort, external
    /// and LoadBalancer IPs); ClusterIPs are served at connect() and need none.
    pub maglev: BTreeMap<ServiceKey, MaglevTable>,
    pub owners: BTreeMap<ServiceKey, String>,
    pub rejected: Vec<(String, String)>,
}

/// What the two maps hold (or should hold).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Written {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub maglev: BTreeMap<ServiceKey, MaglevTable>,
}

/// Pure: the compiled table, the previous owners and the map as it is now → the map to write. A
/// rejected Service (bad spec, or more backends than a frontend holds) keeps the entries it had.
pub fn service_map_plan(
    table: &services::ServiceTable,
    node: &str,
    prev_owners: &BTreeMap<ServiceKey, String>,
    current: &Written,
) -> ServiceMapPlan {
    let mut plan = ServiceMapPlan { rejected: table.rejected.clone(), ..Default::default() };
    for (f, e) in &table.frontends {
        // internalTrafficPolicy Local keeps this node's pods on endpoints of this node, and
        // externalTrafficPolicy Local does the same for NodePort and external traffic; neither
        // falls back (no local endpoint → refused).
        let cluster_ip = e.kind == services::FrontendKind::ClusterIp;
        let local_only = if cluster_ip { e.internal_traffic_local } else { e.external_traffic_local };
        let backends: Vec<&services::Backend> =
            e.backends.iter().filter(|b| !local_only || b.node.as_deref() == Some(node)).collect();
        if backends.len() > MAX_INLINE_BACKENDS {
            let why = format!(
                "{} backends behind {}:{}; at most {MAX_INLINE_BACKENDS} for now",
                backends.len(),
                f.ip,
                f.port
            );
            plan.rejected.push((e.service.clone(), why));
            continue;
        }
        let mut value = ServiceValue {
            count: backends.len() as u16,
            affinity_timeout_s: e.affinity_timeout.unwrap_or(0),
            ..Default::default()
        };
        for (slot, b) in value.backends.iter_mut().zip(&backends) {
            *slot = BackendAddr { addr: Addr16::from_v4_octets(b.ip.octets()), port_be: b.port.to_be(), _pad: [0; 6] };
        }
        if !cluster_ip && !backends.is_empty() {
            let names: Vec<String> = backends.iter().map(|b| format!("{}:{}", b.ip, b.port)).collect();
            plan.maglev.insert(service_key(f), maglev::table(&names));
        }
        plan.want.insert(service_key(f), value);
        plan.owners.insert(service_key(f), e.service.clone());
    }
    let rejected: BTreeSet<&str> = plan.rejected.iter().map(|(n, _)| n.as_str()).collect();
    for (k, owner) in prev_owners {
        if rejected.contains(owner.as_str()) && !plan.want.contains_key(k) {
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

/// The agent's writer of `WEIR_SERVICES`. It remembers what it wrote, so an update costs a diff
/// in memory plus the changed entries, not a walk of the kernel map. After a failed write (or at
/// start) it re-reads the kernel map once.
#[derive(Debug, Default)]
pub struct ServiceSync {
    /// Which Service (`namespace/name`) each frontend belongs to.
    pub owners: BTreeMap<ServiceKey, String>,
    /// Services rejected at the last compile.
    pub rejected: Vec<(String, String)>,
    written: Option<Written>,
}

/// What one [`ServiceSync::apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    pub changes: maps::Changes,
    /// The rejected list differs from the previous one (worth a log line).
    pub rejected_changed: bool,
}

impl ServiceSync {
    /// Compiles `svcs` + `slices` for `node` and makes the maps hold the result. A new Maglev
    /// table is written before its frontend, and a frontend removed before its table.
    pub fn apply<S, G>(
        &mut self,
        svcs: &Named<k8s_openapi::api::core::v1::Service>,
        slices: &Named<k8s_openapi::api::discovery::v1::EndpointSlice>,
        node_ips: &[Ipv4Addr],
        node: &str,
        services_map: &mut S,
        maglev_map: &mut G,
    ) -> weir_dataplane::Result<Applied>
    where
        S: KeyValueMap<Key = ServiceKey, Value = ServiceValue>,
        G: KeyValueMap<Key = ServiceKey, Value = MaglevTable>,
    {
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
        self.written = Some(Written { services: plan.want, maglev: plan.maglev });
        self.owners = plan.owners;
        let rejected_changed = plan.rejected != self.rejected;
        self.rejected = plan.rejected;
        Ok(Applied { changes, rejected_changed })
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
        assert!(plan.rejected[0].1.contains("at most 16"), "{:?}", plan.rejected);
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
}
