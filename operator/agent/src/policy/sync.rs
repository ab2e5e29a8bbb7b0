//! `PolicySync`: the one writer of `WEIR_IPCACHE`, `WEIR_POLICY` and `WEIR_POLICY_EP`.
//!
//! Each pass compiles the cluster for this node's endpoints and writes only the differences
//! against what it last wrote, in an order that never opens a gap: new identities and entries
//! first, then endpoint flags, then removals (so a pod becoming isolated already has its allow
//! entries, and a pod losing isolation is open before its entries go).
use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use weir_bpf_common::{sizes, PolicyEndpoint, POLICY_F_EGRESS, POLICY_F_FAIL_CLOSED, POLICY_F_INGRESS};
use weir_dataplane::maps::{KeyValueMap, PolicyEntry};

use super::{
    compile::{compile, Cluster, Compiled, Identities, ParseCache},
    Direction,
};
use crate::source::ClusterSnapshot;

/// The three maps, generic so the writer is tested against in-memory maps.
pub struct PolicyMaps<I, P, E> {
    pub ipcache: I,
    pub entries: P,
    pub endpoints: E,
}

pub type KernelPolicyMaps = PolicyMaps<
    weir_dataplane::maps::Ipcache,
    weir_dataplane::maps::PolicyEntries,
    weir_dataplane::maps::PolicyEndpoints,
>;

#[derive(Default)]
struct Written {
    ipcache: BTreeMap<(Ipv4Addr, u8), u32>,
    entries: BTreeMap<PolicyEntry, u32>,
    endpoints: BTreeMap<Ipv4Addr, PolicyEndpoint>,
}

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub upserted: usize,
    pub removed: usize,
    /// Rejected policies changed since the last pass (log them).
    pub rejected_changed: bool,
    /// Endpoints that are fail-closed now and were not before.
    pub newly_fail_closed: Vec<(String, String)>,
}

#[derive(Default)]
pub struct PolicySync {
    ids: Identities,
    parsed: ParseCache,
    /// The cluster and compilation last written (for explain and the CLI).
    pub cluster: Arc<Cluster>,
    pub compiled: Arc<Compiled>,
    /// What the maps hold (`None`: unknown, read them back first).
    written: Option<Written>,
    /// Endpoints denied everything because their entries did not fit, counted per pass.
    pub fail_closed_total: u64,
}

/// Entry capacity left for endpoints: the map minus headroom for a pass's adds before removals.
pub const ENTRY_CAPACITY: usize = sizes::POLICY as usize * 3 / 4;

impl PolicySync {
    /// Compiles `snap` for the local endpoints (pod namespace/name → address, from the endpoint
    /// store: an endpoint has its policy before the API reports its address) and writes it.
    pub fn apply<I, P, E>(
        &mut self,
        snap: &ClusterSnapshot,
        local: &BTreeMap<(String, String), Ipv4Addr>,
        maps: &mut PolicyMaps<I, P, E>,
    ) -> weir_dataplane::Result<PassReport>
    where
        I: KeyValueMap<Key = (Ipv4Addr, u8), Value = u32>,
        P: KeyValueMap<Key = PolicyEntry, Value = u32>,
        E: KeyValueMap<Key = Ipv4Addr, Value = PolicyEndpoint>,
    {
        let cluster = Cluster::from_snapshot_with(snap, Some(&self.cluster), local, &mut self.parsed);
        let compiled = compile(
            &cluster,
            &mut self.ids,
            &|p| local.get(&(p.namespace.clone(), p.name.clone())) == Some(&p.ip),
            ENTRY_CAPACITY,
        );
        let mut want = Written { ipcache: compiled.ipcache.clone(), ..Default::default() };
        for (ip, ep) in &compiled.endpoints {
            let mut flags = 0;
            for (d, bit) in [(Direction::Ingress, POLICY_F_INGRESS), (Direction::Egress, POLICY_F_EGRESS)] {
                let Some(entries) = ep.entries(d) else { continue };
                flags |= bit;
                for (k, attr) in entries {
                    let e = PolicyEntry {
                        endpoint: *ip,
                        direction: d as u8,
                        identity: k.peer,
                        proto: k.proto,
                        port: k.port,
                        port_bits: k.port_bits,
                    };
                    want.entries.insert(e, *attr);
                }
            }
            if ep.fail_closed.is_some() {
                flags |= POLICY_F_FAIL_CLOSED;
            }
            want.endpoints.insert(*ip, PolicyEndpoint { identity: ep.identity, flags });
        }
        let have = match self.written.take() {
            Some(w) => w,
            None => Written {
                ipcache: maps.ipcache.list()?,
                entries: maps.entries.list()?,
                endpoints: maps.endpoints.list()?,
            },
        };
        let mut report = PassReport::default();
        // Until this pass succeeds what the maps hold is unknown again (`written` stays None).
        upsert(&mut maps.ipcache, &have.ipcache, &want.ipcache, &mut report)?;
        upsert(&mut maps.entries, &have.entries, &want.entries, &mut report)?;
        upsert(&mut maps.endpoints, &have.endpoints, &want.endpoints, &mut report)?;
        remove(&mut maps.endpoints, &have.endpoints, &want.endpoints, &mut report)?;
        remove(&mut maps.entries, &have.entries, &want.entries, &mut report)?;
        remove(&mut maps.ipcache, &have.ipcache, &want.ipcache, &mut report)?;
        self.written = Some(want);
        report.rejected_changed = cluster.rejected != self.cluster.rejected;
        for (ip, ep) in &compiled.endpoints {
            let before = self.compiled.endpoints.get(ip).is_some_and(|e| e.fail_closed.is_some());
            if ep.fail_closed.is_some() && !before {
                report
                    .newly_fail_closed
                    .push((format!("{}/{}", ep.namespace, ep.name), ep.fail_closed.clone().unwrap_or_default()));
                self.fail_closed_total += 1;
            }
        }
        self.cluster = Arc::new(cluster);
        self.compiled = Arc::new(compiled);
        Ok(report)
    }
}

fn upsert<M: KeyValueMap>(
    map: &mut M,
    have: &BTreeMap<M::Key, M::Value>,
    want: &BTreeMap<M::Key, M::Value>,
    r: &mut PassReport,
) -> weir_dataplane::Result<()> {
    for (k, v) in want {
        if have.get(k) != Some(v) {
            map.upsert(*k, *v)?;
            r.upserted += 1;
        }
    }
    Ok(())
}

fn remove<M: KeyValueMap>(
    map: &mut M,
    have: &BTreeMap<M::Key, M::Value>,
    want: &BTreeMap<M::Key, M::Value>,
    r: &mut PassReport,
) -> weir_dataplane::Result<()> {
    for k in have.keys().filter(|k| !want.contains_key(k)) {
        map.remove(*k)?;
        r.removed += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use weir_dataplane::maps::FakeMap;

    use super::*;
    use crate::source::manifest::snapshot_of;

    type Fakes = PolicyMaps<FakeMap<(Ipv4Addr, u8), u32>, FakeMap<PolicyEntry, u32>, FakeMap<Ipv4Addr, PolicyEndpoint>>;

    fn fakes() -> Fakes {
        PolicyMaps { ipcache: FakeMap::default(), entries: FakeMap::default(), endpoints: FakeMap::default() }
    }

    fn snapshot(yaml: &str) -> ClusterSnapshot {
        snapshot_of(yaml, "test").expect("test manifests parse")
    }

    const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.244.0.2, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: db}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {phase: Pending}
";

    const DENY: &str = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-only, namespace: x}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]
";

    fn local() -> BTreeMap<(String, String), Ipv4Addr> {
        // b has no address in the API yet; the store knows it.
        [(("x".to_owned(), "b".to_owned()), Ipv4Addr::new(10, 244, 0, 3))].into_iter().collect()
    }

    #[test]
    fn writes_isolation_and_entries_then_converges() {
        let mut maps = fakes();
        let mut sync = PolicySync::default();
        let snap = snapshot(&format!("{PODS}{DENY}"));
        let r = sync.apply(&snap, &local(), &mut maps).expect("pass");
        assert!(r.upserted > 0);
        let b = maps.endpoints.entries[&Ipv4Addr::new(10, 244, 0, 3)];
        assert_eq!(b.flags, POLICY_F_INGRESS, "b is isolated for ingress only");
        let web = maps.ipcache.entries[&(Ipv4Addr::new(10, 244, 0, 2), 32)];
        let e = PolicyEntry {
            endpoint: Ipv4Addr::new(10, 244, 0, 3),
            direction: 0,
            identity: web,
            proto: 6,
            port: 5432,
            port_bits: 16,
        };
        assert!(maps.entries.entries.contains_key(&e), "{:?}", maps.entries.entries);
        assert_eq!(maps.entries.entries.len(), 1);
        let again = sync.apply(&snap, &local(), &mut maps).expect("second pass");
        assert_eq!((again.upserted, again.removed), (0, 0), "idempotent");
        // The policy goes: b is open again, its entries and the identity prefixes too.
        let r = sync.apply(&snapshot(PODS), &local(), &mut maps).expect("removal");
        assert!(r.removed >= 1);
        assert_eq!(maps.endpoints.entries[&Ipv4Addr::new(10, 244, 0, 3)].flags, 0);
        assert!(maps.entries.entries.is_empty());
    }

    #[test]
    fn an_invalid_update_keeps_the_previous_policy() {
        let mut maps = fakes();
        let mut sync = PolicySync::default();
        sync.apply(&snapshot(&format!("{PODS}{DENY}")), &local(), &mut maps).expect("pass");
        let before = maps.entries.entries.clone();
        let bad = DENY.replace("port: 5432", "port: 99999");
        let r = sync.apply(&snapshot(&format!("{PODS}{bad}")), &local(), &mut maps).expect("pass");
        assert!(r.rejected_changed);
        assert_eq!(sync.cluster.rejected.len(), 1);
        assert!(
            sync.cluster.rejected[0].to_string().contains("spec.ingress[0].ports[0].port"),
            "{:?}",
            sync.cluster.rejected
        );
        assert_eq!(maps.entries.entries, before, "the last valid version is still enforced");
    }

    #[test]
    fn a_failed_write_is_retried_from_the_kernel_state() {
        let mut maps = fakes();
        let mut sync = PolicySync::default();
        maps.entries.fail_writes = true;
        assert!(sync.apply(&snapshot(&format!("{PODS}{DENY}")), &local(), &mut maps).is_err());
        maps.entries.fail_writes = false;
        sync.apply(&snapshot(&format!("{PODS}{DENY}")), &local(), &mut maps).expect("retry");
        assert_eq!(maps.entries.entries.len(), 1);
        assert_eq!(maps.endpoints.entries[&Ipv4Addr::new(10, 244, 0, 3)].flags, POLICY_F_INGRESS);
    }
}
