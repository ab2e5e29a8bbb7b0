//! `PolicySync`: the one writer of `WEIR_IPCACHE`, `WEIR_POLICY` and `WEIR_POLICY_EP`.
//!
//! Each pass compiles the cluster for this node's endpoints and writes only the differences
//! against what it last wrote, in an order that never opens a gap: new allow entries first,
//! then the addresses' identities, then endpoint flags, then removals — endpoints, addresses,
//! entries. So a pod becoming isolated already has its allow entries; a peer whose labels
//! change is allowed under its new identity before it carries it, and under its old one until
//! it no longer does (at every moment either the old or the new policy holds); a pod losing
//! isolation is open before its entries go.
//!
//! Every endpoint of this node gets a `WEIR_POLICY_EP` entry once its pod is known (open ones
//! with no isolation flags); the datapath keeps an endpoint without one closed. Identity numbers
//! are never reused within a run, and a restarted agent numbers above what the maps hold, so a
//! number never changes meaning while entries that use it are live.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use weir_bpf_common::{sizes, PolicyEndpoint, IDENTITY_WORLD, POLICY_F_EGRESS, POLICY_F_FAIL_CLOSED, POLICY_F_INGRESS};
use weir_dataplane::maps::{KeyValueMap, PolicyEntry};

use super::{
    compile::{
        compile_full, compile_pods, compile_policies, Cluster, Compiled, Identities, Incremental, ParseCache, PodKey,
        PodView, Touched,
    },
    Direction,
};
use crate::source::{Changes, ClusterSnapshot};

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
    /// What the last full compile left for pods-only passes (`None`: the next pass is full).
    incremental: Option<Incremental>,
    /// The local and unmanaged endpoints of the last pass.
    local: BTreeMap<PodKey, Ipv4Addr>,
    unmanaged: BTreeSet<Ipv4Addr>,
    /// Endpoints denied everything because their entries did not fit, counted per pass.
    pub fail_closed_total: u64,
    /// Passes made: full, and going on from the last (pods-only or policies-only).
    pub passes: (u64, u64),
}

/// Entry capacity left for endpoints: the map minus headroom for a pass's adds before removals.
pub const ENTRY_CAPACITY: usize = sizes::POLICY as usize * 3 / 4;

/// Which keys a pass looks at: every one (a full pass), or those of some addresses and
/// endpoints (a pods-only pass; everything else is as written).
enum Scope<'a> {
    All,
    Some(&'a Touched),
}

impl PolicySync {
    /// Compiles `snap` for the local endpoints (pod namespace/name → address, from the endpoint
    /// store: an endpoint has its policy before the API reports its address) and writes it.
    pub fn apply<I, P, E>(
        &mut self,
        snap: &ClusterSnapshot,
        local: &BTreeMap<PodKey, Ipv4Addr>,
        maps: &mut PolicyMaps<I, P, E>,
    ) -> weir_dataplane::Result<PassReport>
    where
        I: KeyValueMap<Key = (Ipv4Addr, u8), Value = u32>,
        P: KeyValueMap<Key = PolicyEntry, Value = u32>,
        E: KeyValueMap<Key = Ipv4Addr, Value = PolicyEndpoint>,
    {
        self.apply_with(snap, local, &BTreeSet::new(), maps)
    }

    /// What was written, or the kernel maps read back (numbering above what they hold).
    fn begin<I, P, E>(&mut self, maps: &PolicyMaps<I, P, E>) -> weir_dataplane::Result<Written>
    where
        I: KeyValueMap<Key = (Ipv4Addr, u8), Value = u32>,
        P: KeyValueMap<Key = PolicyEntry, Value = u32>,
        E: KeyValueMap<Key = Ipv4Addr, Value = PolicyEndpoint>,
    {
        if let Some(w) = self.written.take() {
            return Ok(w);
        }
        let w =
            Written { ipcache: maps.ipcache.list()?, entries: maps.entries.list()?, endpoints: maps.endpoints.list()? };
        // Number above whatever an earlier agent left in the maps.
        let highest = w
            .ipcache
            .values()
            .chain(w.endpoints.values().map(|e| &e.identity))
            .chain(w.entries.keys().map(|e| &e.identity))
            .copied()
            .max()
            .unwrap_or(0);
        self.ids.start_above(highest);
        Ok(w)
    }

    /// [`Self::apply`], and `unmanaged` endpoints (attachments of no Kubernetes pod: nothing
    /// selects them) open. A full pass: every pod, namespace and policy compiled.
    pub fn apply_with<I, P, E>(
        &mut self,
        snap: &ClusterSnapshot,
        local: &BTreeMap<PodKey, Ipv4Addr>,
        unmanaged: &BTreeSet<Ipv4Addr>,
        maps: &mut PolicyMaps<I, P, E>,
    ) -> weir_dataplane::Result<PassReport>
    where
        I: KeyValueMap<Key = (Ipv4Addr, u8), Value = u32>,
        P: KeyValueMap<Key = PolicyEntry, Value = u32>,
        E: KeyValueMap<Key = Ipv4Addr, Value = PolicyEndpoint>,
    {
        self.incremental = None;
        let have = self.begin(maps)?;
        let cluster = Cluster::from_snapshot_with(snap, Some(&self.cluster), local, &mut self.parsed);
        let (compiled, inc) = compile_full(&cluster, &mut self.ids, &is_local(local), ENTRY_CAPACITY);
        let report = self.write(have, &compiled, unmanaged, &Scope::All, maps)?;
        self.passes.0 += 1;
        self.finish(cluster, compiled, report, Some(inc), local, unmanaged)
    }

    /// The pass `changes` call for: full when a namespace's labels changed (they can change any
    /// peer set and selection), else going on from the last — policies first (ipBlocks that
    /// came or went included), then pods.
    pub fn apply_changes<I, P, E>(
        &mut self,
        snap: &ClusterSnapshot,
        changes: &Changes,
        local: &BTreeMap<PodKey, Ipv4Addr>,
        unmanaged: &BTreeSet<Ipv4Addr>,
        maps: &mut PolicyMaps<I, P, E>,
    ) -> weir_dataplane::Result<PassReport>
    where
        I: KeyValueMap<Key = (Ipv4Addr, u8), Value = u32>,
        P: KeyValueMap<Key = PolicyEntry, Value = u32>,
        E: KeyValueMap<Key = Ipv4Addr, Value = PolicyEndpoint>,
    {
        if changes.all || !changes.namespaces.is_empty() {
            return self.apply_with(snap, local, unmanaged, maps);
        }
        if changes.network_policies.is_empty() {
            return self.apply_pods(snap, &changes.pods, local, unmanaged, maps);
        }
        // Policies first, over the pods as they were; then the pods that changed with them.
        let usable = self.written.is_some() && self.incremental.is_some() && *unmanaged == self.unmanaged;
        let Some(mut inc) = self.incremental.take().filter(|_| usable) else {
            return self.apply_with(snap, local, unmanaged, maps);
        };
        let was_local = self.local.clone();
        let cluster = self.cluster.with_policies(snap, &mut self.parsed);
        let next = compile_policies(
            &self.cluster,
            &cluster,
            &self.compiled,
            &mut inc,
            &mut self.ids,
            &is_local(&was_local),
            ENTRY_CAPACITY,
        );
        let Some((compiled, touched)) = next else {
            return self.apply_with(snap, local, unmanaged, maps);
        };
        let have = self.begin(maps)?;
        let mut report = self.write(have, &compiled, unmanaged, &Scope::Some(&touched), maps)?;
        self.passes.1 += 1;
        report = self.finish(cluster, compiled, report, Some(inc), &was_local, unmanaged)?;
        if changes.pods.is_empty() && *local == was_local {
            return Ok(report);
        }
        let more = self.apply_pods(snap, &changes.pods, local, unmanaged, maps)?;
        report.upserted += more.upserted;
        report.removed += more.removed;
        report.rejected_changed |= more.rejected_changed;
        report.newly_fail_closed.extend(more.newly_fail_closed);
        Ok(report)
    }

    /// A pass after only pods changed (`changed`, by namespace/name): goes on from the last
    /// compilation, recompiling the identities, peer sets and endpoints those pods touch and
    /// writing only their keys. Falls back to a full pass where that cannot be exact.
    pub fn apply_pods<I, P, E>(
        &mut self,
        snap: &ClusterSnapshot,
        changed: &BTreeSet<PodKey>,
        local: &BTreeMap<PodKey, Ipv4Addr>,
        unmanaged: &BTreeSet<Ipv4Addr>,
        maps: &mut PolicyMaps<I, P, E>,
    ) -> weir_dataplane::Result<PassReport>
    where
        I: KeyValueMap<Key = (Ipv4Addr, u8), Value = u32>,
        P: KeyValueMap<Key = PolicyEntry, Value = u32>,
        E: KeyValueMap<Key = Ipv4Addr, Value = PolicyEndpoint>,
    {
        let usable = self.written.is_some() && self.incremental.is_some() && *unmanaged == self.unmanaged;
        let Some(mut inc) = self.incremental.take().filter(|_| usable) else {
            return self.apply_with(snap, local, unmanaged, maps);
        };
        // Endpoints that came, went or moved count as changed pods.
        let mut changed = changed.clone();
        for (k, ip) in local.iter().chain(&self.local) {
            if local.get(k) != Some(ip) || self.local.get(k) != Some(ip) {
                changed.insert(k.clone());
            }
        }
        let cluster = self.cluster.with_pods(snap, &changed, local);
        let next = compile_pods(
            &self.cluster,
            &cluster,
            &self.compiled,
            &mut inc,
            &mut self.ids,
            &changed,
            &is_local(local),
            ENTRY_CAPACITY,
        );
        let Some((compiled, touched)) = next else {
            return self.apply_with(snap, local, unmanaged, maps);
        };
        let have = self.begin(maps)?;
        let report = self.write(have, &compiled, unmanaged, &Scope::Some(&touched), maps)?;
        self.passes.1 += 1;
        self.finish(cluster, compiled, report, Some(inc), local, unmanaged)
    }

    fn finish(
        &mut self,
        cluster: Cluster,
        compiled: Compiled,
        mut report: PassReport,
        inc: Option<Incremental>,
        local: &BTreeMap<PodKey, Ipv4Addr>,
        unmanaged: &BTreeSet<Ipv4Addr>,
    ) -> weir_dataplane::Result<PassReport> {
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
        self.incremental = inc;
        self.local.clone_from(local);
        self.unmanaged.clone_from(unmanaged);
        Ok(report)
    }

    /// Makes the maps hold `compiled` within `scope`, in the order that never opens a gap (see
    /// the module docs). Until it succeeds what the maps hold is unknown (`written` stays None).
    fn write<I, P, E>(
        &mut self,
        mut have: Written,
        compiled: &Compiled,
        unmanaged: &BTreeSet<Ipv4Addr>,
        scope: &Scope<'_>,
        maps: &mut PolicyMaps<I, P, E>,
    ) -> weir_dataplane::Result<PassReport>
    where
        I: KeyValueMap<Key = (Ipv4Addr, u8), Value = u32>,
        P: KeyValueMap<Key = PolicyEntry, Value = u32>,
        E: KeyValueMap<Key = Ipv4Addr, Value = PolicyEndpoint>,
    {
        // What the scope should hold, and the keys it covers now.
        let mut want = Written::default();
        let endpoint_ips: Vec<Ipv4Addr> = match scope {
            Scope::All => {
                want.ipcache = compiled.ipcache.iter().map(|(k, v)| (*k, *v)).collect();
                compiled.endpoints.keys().chain(unmanaged).copied().collect()
            }
            Scope::Some(t) => {
                for prefix in &t.prefixes {
                    if let Some(id) = compiled.ipcache.get(prefix) {
                        want.ipcache.insert(*prefix, *id);
                    }
                }
                t.endpoints.iter().copied().collect()
            }
        };
        for ip in endpoint_ips {
            let Some(ep) = compiled.endpoints.get(&ip) else {
                if unmanaged.contains(&ip) {
                    want.endpoints.insert(ip, PolicyEndpoint { identity: IDENTITY_WORLD, flags: 0 });
                }
                continue;
            };
            let mut flags = 0;
            for (d, bit) in [(Direction::Ingress, POLICY_F_INGRESS), (Direction::Egress, POLICY_F_EGRESS)] {
                let Some(entries) = ep.entries(d) else { continue };
                flags |= bit;
                for (k, attr) in entries {
                    let e = PolicyEntry {
                        endpoint: ip,
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
            want.endpoints.insert(ip, PolicyEndpoint { identity: ep.identity, flags });
        }
        let stale = match scope {
            Scope::All => Written {
                ipcache: stale_of(&have.ipcache, &want.ipcache, have.ipcache.keys()),
                entries: stale_of(&have.entries, &want.entries, have.entries.keys()),
                endpoints: stale_of(&have.endpoints, &want.endpoints, have.endpoints.keys()),
            },
            Scope::Some(t) => {
                let entries = t.endpoints.iter().flat_map(|ip| {
                    let lo = PolicyEntry { endpoint: *ip, direction: 0, identity: 0, proto: 0, port: 0, port_bits: 0 };
                    let hi = PolicyEntry {
                        endpoint: *ip,
                        direction: u8::MAX,
                        identity: u32::MAX,
                        proto: u8::MAX,
                        port: u16::MAX,
                        port_bits: u8::MAX,
                    };
                    have.entries.range(lo..=hi).map(|(k, _)| k)
                });
                Written {
                    ipcache: stale_of(&have.ipcache, &want.ipcache, t.prefixes.iter()),
                    entries: stale_of(&have.entries, &want.entries, entries),
                    endpoints: stale_of(&have.endpoints, &want.endpoints, t.endpoints.iter()),
                }
            }
        };
        let mut report = PassReport::default();
        upsert(&mut maps.entries, &mut have.entries, &want.entries, &mut report)?;
        upsert(&mut maps.ipcache, &mut have.ipcache, &want.ipcache, &mut report)?;
        upsert(&mut maps.endpoints, &mut have.endpoints, &want.endpoints, &mut report)?;
        remove(&mut maps.endpoints, &mut have.endpoints, &stale.endpoints, &mut report)?;
        remove(&mut maps.ipcache, &mut have.ipcache, &stale.ipcache, &mut report)?;
        remove(&mut maps.entries, &mut have.entries, &stale.entries, &mut report)?;
        self.written = Some(have);
        Ok(report)
    }
}

/// Whether a pod is one of `local`'s endpoints (same namespace/name and address), without
/// allocating a key per pod asked about.
fn is_local(local: &BTreeMap<PodKey, Ipv4Addr>) -> impl Fn(&PodView) -> bool + '_ {
    let set: BTreeSet<(Ipv4Addr, &str, &str)> =
        local.iter().map(|((ns, name), ip)| (*ip, ns.as_str(), name.as_str())).collect();
    move |p| set.contains(&(p.ip, p.namespace(), p.name()))
}

/// Of `keys` (which `have` holds), those `want` does not, with their current values.
fn stale_of<'k, K: Ord + Copy + 'k, V: Copy>(
    have: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    keys: impl Iterator<Item = &'k K>,
) -> BTreeMap<K, V> {
    keys.filter(|k| !want.contains_key(k)).filter_map(|k| Some((*k, *have.get(k)?))).collect()
}

fn upsert<M: KeyValueMap>(
    map: &mut M,
    have: &mut BTreeMap<M::Key, M::Value>,
    want: &BTreeMap<M::Key, M::Value>,
    r: &mut PassReport,
) -> weir_dataplane::Result<()> {
    for (k, v) in want {
        if have.get(k) != Some(v) {
            map.upsert(*k, *v)?;
            have.insert(*k, *v);
            r.upserted += 1;
        }
    }
    Ok(())
}

fn remove<M: KeyValueMap>(
    map: &mut M,
    have: &mut BTreeMap<M::Key, M::Value>,
    stale: &BTreeMap<M::Key, M::Value>,
    r: &mut PassReport,
) -> weir_dataplane::Result<()> {
    for k in stale.keys() {
        map.remove(*k)?;
        have.remove(k);
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
    fn a_new_invalid_policy_isolates_what_it_selects() {
        let mut maps = fakes();
        let mut sync = PolicySync::default();
        let bad = DENY.replace("port: 5432", "port: 99999");
        let r = sync.apply(&snapshot(&format!("{PODS}{bad}")), &local(), &mut maps).expect("pass");
        assert!(r.rejected_changed);
        let b = maps.endpoints.entries[&Ipv4Addr::new(10, 244, 0, 3)];
        assert_eq!(b.flags, POLICY_F_INGRESS, "b is isolated, not left open, by a policy that cannot be enforced");
        assert!(maps.entries.entries.is_empty(), "and nothing is allowed");
    }

    /// One namespace's oversized ipBlock lists are refused by name; another namespace's policy
    /// is enforced and its pods keep working.
    #[test]
    fn an_oversized_ipblock_policy_is_refused_alone() {
        let mut maps = fakes();
        let mut sync = PolicySync::default();
        let except: Vec<String> = (0..5000u32).map(|i| format!("10.{}.{}.0/24", 1 + i / 256, i % 256)).collect();
        let huge = format!(
            "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: huge, namespace: evil}}
spec:
  podSelector: {{matchLabels: {{app: none}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{}]}}}}]}}]
",
            except.join(", ")
        );
        let r = sync.apply(&snapshot(&format!("{PODS}{DENY}{huge}")), &local(), &mut maps).expect("pass");
        assert!(r.rejected_changed);
        let names: Vec<String> = sync.cluster.rejected.iter().map(|e| format!("{}/{}", e.namespace, e.name)).collect();
        assert_eq!(names, ["evil/huge"]);
        assert!(sync.cluster.rejected[0].message.contains("5001 ipBlock prefixes"), "{}", sync.cluster.rejected[0]);
        assert!(maps.ipcache.entries.len() < 10, "none of its prefixes were written: {}", maps.ipcache.entries.len());
        assert_eq!(maps.endpoints.entries[&Ipv4Addr::new(10, 244, 0, 3)].flags, POLICY_F_INGRESS);
        assert_eq!(maps.entries.entries.len(), 1, "the other namespace's policy is enforced");
    }

    /// A policy of `ns` naming `n` prefixes (one block with `n - 1` excepts).
    fn blocky(ns: &str, name: &str, n: u32) -> crate::policy::Policy {
        use crate::policy::{IpBlock, Peer, Rule, Selector};
        let except = (1..n).map(|i| ipnetwork::Ipv4Network::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap());
        let block = IpBlock { cidr: "10.0.0.0/8".parse().unwrap(), except: except.collect() };
        crate::policy::Policy {
            namespace: ns.into(),
            name: name.into(),
            pods: Selector::default(),
            ingress: None,
            egress: Some(vec![Rule { peers: Some(vec![Peer::Block(block)]), ports: None }]),
        }
    }

    #[test]
    fn the_prefix_budget_refuses_the_biggest_asker_first() {
        use crate::policy::compile::within_budget;
        // Budget 100: a (10 + 20) and c (30) fit; b asks for 35 + 40 = 75 and gets 40 of the
        // 40 left: its smaller policy is admitted, its larger refused.
        let mut ps = vec![
            blocky("a", "p", 10),
            blocky("a", "q", 20),
            blocky("b", "big", 40),
            blocky("b", "small", 35),
            blocky("c", "p", 30),
        ];
        let errors = within_budget(&mut ps, None, 100);
        let refused: Vec<String> = errors.iter().map(|e| format!("{}/{}", e.namespace, e.name)).collect();
        assert_eq!(refused, ["b/big"]);
        assert!(errors[0].message.contains("namespace b asks for 75"), "{}", errors[0]);
        let big = ps.iter().find(|p| p.name == "big").unwrap();
        assert_eq!(big.egress.as_deref(), Some(&[][..]), "refused and enforced closed");
        assert!(ps.iter().filter(|p| p.name != "big").all(|p| p.prefixes() > 0), "the rest as written");
        // Within the budget nothing changes.
        let mut fits = vec![blocky("a", "p", 10), blocky("b", "q", 90)];
        assert!(within_budget(&mut fits, None, 100).is_empty());
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

    /// The three maps behind one cell, so a check can run after every single write of a pass.
    #[derive(Default)]
    struct Shared {
        ipcache: BTreeMap<(Ipv4Addr, u8), u32>,
        entries: BTreeMap<PolicyEntry, u32>,
        endpoints: BTreeMap<Ipv4Addr, PolicyEndpoint>,
        /// What the check saw after each write.
        seen: Vec<bool>,
    }

    type Cell = std::rc::Rc<std::cell::RefCell<Shared>>;
    type Check = std::rc::Rc<dyn Fn(&Shared) -> bool>;

    /// The datapath's ingress decision for `ep` and peer `peer` on TCP `port`, over the maps.
    fn allowed(m: &Shared, ep: Ipv4Addr, peer: Ipv4Addr, port: u16) -> bool {
        let Some(e) = m.endpoints.get(&ep) else { return false };
        if e.flags & POLICY_F_INGRESS == 0 {
            return true;
        }
        let p = u32::from(peer);
        let id = m
            .ipcache
            .iter()
            .filter(|((net, len), _)| {
                *len == 0 || (u32::from(*net) >> (32 - u32::from(*len))) == p >> (32 - u32::from(*len))
            })
            .max_by_key(|((_, len), _)| *len)
            .map_or(weir_bpf_common::IDENTITY_WORLD, |(_, id)| *id);
        m.entries.keys().any(|k| {
            k.endpoint == ep
                && k.direction == 0
                && (k.identity == id || k.identity == weir_bpf_common::IDENTITY_ANY)
                && (k.proto == 0 || (k.proto == 6 && (k.port_bits == 0 || (k.port ^ port) >> (16 - k.port_bits) == 0)))
        })
    }

    struct Stepping<K, V> {
        cell: Cell,
        check: Check,
        field: fn(&mut Shared) -> &mut BTreeMap<K, V>,
    }

    impl<K: Ord + Copy + std::fmt::Debug, V: PartialEq + Copy + std::fmt::Debug> KeyValueMap for Stepping<K, V> {
        type Key = K;
        type Value = V;
        fn list(&self) -> weir_dataplane::Result<BTreeMap<K, V>> {
            Ok((self.field)(&mut self.cell.borrow_mut()).clone())
        }
        fn upsert(&mut self, k: K, v: V) -> weir_dataplane::Result<()> {
            (self.field)(&mut self.cell.borrow_mut()).insert(k, v);
            let ok = (self.check)(&self.cell.borrow());
            self.cell.borrow_mut().seen.push(ok);
            Ok(())
        }
        fn remove(&mut self, k: K) -> weir_dataplane::Result<()> {
            (self.field)(&mut self.cell.borrow_mut()).remove(&k);
            let ok = (self.check)(&self.cell.borrow());
            self.cell.borrow_mut().seen.push(ok);
            Ok(())
        }
    }

    type SteppingMaps =
        PolicyMaps<Stepping<(Ipv4Addr, u8), u32>, Stepping<PolicyEntry, u32>, Stepping<Ipv4Addr, PolicyEndpoint>>;

    fn stepping(cell: &Cell, check: Check) -> SteppingMaps {
        PolicyMaps {
            ipcache: Stepping { cell: cell.clone(), check: check.clone(), field: |s| &mut s.ipcache },
            entries: Stepping { cell: cell.clone(), check: check.clone(), field: |s| &mut s.entries },
            endpoints: Stepping { cell: cell.clone(), check, field: |s| &mut s.endpoints },
        }
    }

    const TWO_RULES: &str = "
apiVersion: v1
kind: Pod
metadata: {name: t, namespace: x, labels: {app: t}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: LABEL}}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
status: {podIP: 10.244.1.9, phase: Running}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-a, namespace: x}
spec:
  podSelector: {matchLabels: {app: t}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b, namespace: x}
spec:
  podSelector: {matchLabels: {app: t}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]
";

    /// A peer's label change is written so that after every single map write either the old
    /// or the new policy holds: allowed before and after (a → b) stays allowed throughout; a
    /// change that removes access (a → z) goes from allowed to denied once, never back.
    #[test]
    fn a_label_change_never_opens_a_window_between_old_and_new_policy() {
        let (t, c) = (Ipv4Addr::new(10, 244, 0, 5), Ipv4Addr::new(10, 244, 1, 9));
        let local: BTreeMap<(String, String), Ipv4Addr> = [(("x".to_owned(), "t".to_owned()), t)].into();
        for (to, want_after) in [("b", true), ("z", false)] {
            let cell: Cell = Default::default();
            let check: Check = std::rc::Rc::new(move |m: &Shared| allowed(m, t, c, 80));
            let mut maps = stepping(&cell, check);
            let mut sync = PolicySync::default();
            sync.apply(&snapshot(&TWO_RULES.replace("LABEL", "a")), &local, &mut maps).expect("pass");
            assert!(allowed(&cell.borrow(), t, c, 80), "c (app=a) is allowed to start with");
            cell.borrow_mut().seen.clear();
            sync.apply(&snapshot(&TWO_RULES.replace("LABEL", to)), &local, &mut maps).expect("change");
            let seen = cell.borrow().seen.clone();
            assert!(!seen.is_empty(), "the change wrote something");
            assert_eq!(*seen.last().expect("writes"), want_after, "a -> {to}: {seen:?}");
            if want_after {
                assert!(seen.iter().all(|ok| *ok), "a -> {to}: denied in between: {seen:?}");
            } else {
                let first_denied = seen.iter().position(|ok| !ok).expect("denied at the end");
                assert!(seen[first_denied..].iter().all(|ok| !ok), "a -> {to}: allowed again after a denial: {seen:?}");
            }
        }
    }

    /// Endpoints of no Kubernetes pod are open; a restarted writer numbers identities above
    /// what the maps hold, so no number changes meaning under live entries.
    #[test]
    fn unmanaged_endpoints_are_open_and_a_restart_numbers_above_the_maps() {
        let mut maps = fakes();
        let plain = Ipv4Addr::new(10, 244, 0, 9);
        maps.ipcache.entries.insert((Ipv4Addr::new(10, 244, 7, 7), 32), 9000);
        let mut sync = PolicySync::default();
        sync.apply_with(&snapshot(&format!("{PODS}{DENY}")), &local(), &[plain].into(), &mut maps).expect("pass");
        assert_eq!(maps.endpoints.entries[&plain].flags, 0, "open");
        assert!(
            maps.ipcache.entries.values().filter(|id| **id != 9000).all(|id| *id > 9000),
            "{:?}",
            maps.ipcache.entries
        );
    }
}
