//! The node's single writer: it owns the endpoint store (and so IPAM), the node-side links and
//! routes, and the BPF maps. Only this module mutates them; the API and the reconcile loop call
//! in through one lock, so concurrent ADDs are serialised and never share an address.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use ipnetwork::Ipv4Network;
use weir_bpf_common::{programs, EndpointInfo, ServiceKey};
use weir_dataplane::{
    events::Events,
    maps::{
        self, Backends, Endpoints, Ipcache, KeyValueMap, Maglev, Nodes, PolicyEndpoints, PolicyEntries, Services,
        Tunnel,
    },
    tcx::Attachment,
    Datapath, LoadConfig,
};
use weir_operator_api::{code, ApiError, Attachment as AddRequest, AttachmentRef, Endpoint};

use tokio::sync::watch;
use weir_dataplane::reader::Reader;

use crate::{
    config::{Config, Routing, GATEWAY},
    endpoints::ipam,
    endpoints::netlink::{self, is_not_found, LinkInfo, Netlink, PodSide},
    endpoints::store::{EndpointRecord, EndpointStore, Opened},
    observe::flows::{Enrichment, SharedEnrichment},
    policy::sync::{KernelPolicyMaps, PolicyMaps, PolicySync},
    serve::{
        api_err,
        view::{NodeView, Readiness, SharedView, Tallies},
    },
    services::map::{KernelServiceMaps, ObjectChanges, ServiceMaps, ServiceSync},
    source::{Changes, ClusterSnapshot},
    state::{self, Desired},
};

pub const VXLAN_DEVICE: &str = "weir_vxlan";
/// Where the node's stack sends everything for its pod CIDR (one route): `weir_to_pod` on its
/// egress judges each packet by the pod's ingress policy and hands it into the pod's veth. Its
/// veth peer only exists because a veth needs one.
pub const HOST_DEVICE: &str = "weir_host";
const HOST_DEVICE_PEER: &str = "weir_host_p";
const VXLAN_OVERHEAD: u32 = 50;

/// The loaded datapath and what was learnt bringing it up.
struct Loaded {
    dp: Datapath,
    endpoints: Endpoints,
    tunnel: Tunnel,
    nodes: Nodes,
    services: KernelServiceMaps,
    policy: KernelPolicyMaps,
    /// Read-only handles for the published views.
    reader: Arc<Reader>,
    uplink: LinkInfo,
    pod_cidr: Ipv4Network,
    mtu: u32,
    /// The exec audit, attached while this agent runs (`--observe-exec`); dropped: detached.
    _exec: Option<weir_dataplane::exec::ExecAudit>,
}

pub struct Node {
    cfg: Config,
    store: EndpointStore,
    nl: Netlink,
    loaded: Option<Loaded>,
    desired: Desired,
    /// The event ring, handed to the events stage once the datapath is up.
    events: Option<Events>,
    /// The one writer of `WEIR_SERVICES`.
    services: ServiceSync,
    /// The cluster's running pods with host ports, by namespace/name.
    host_port_pods: BTreeMap<(String, String), crate::services::HostPortPod>,
    /// The one writer of the policy maps, and the pods, namespaces and NetworkPolicies it was
    /// last given (an ADD compiles the new pod's policy from them before the pod can send).
    policy: PolicySync,
    policy_seen: ClusterSnapshot,
    /// Whether `policy_seen` came from a source yet, and what changed in it since the last
    /// policy pass.
    policy_learned: bool,
    policy_pending: Changes,
    /// Published after every policy pass for the events stage's flow enrichment.
    enrichment: SharedEnrichment,
    /// The frontend → Service map last handed to enrichment (copied only when it changes).
    services_published: Arc<BTreeMap<ServiceKey, String>>,
    /// ADDs that had to reuse an address still in quarantine (the pool was otherwise full).
    quarantine_bypassed: u64,
    /// Nodes with no routes or tunnel entries, and why (malformed, conflicting, off-link).
    /// Shared with the published view; replaced when it changes.
    rejected_nodes: Arc<Vec<(String, String)>>,
    /// Reconcile stages (remote nodes, NetworkPolicy, Services) that failed, since start.
    stage_failures: u64,
    /// Where every change is published for readers (status, metrics, the CLI, observers).
    view: watch::Sender<Arc<NodeView>>,
    /// The rejected Services as last published (copied when the Services stage changes them).
    rejected_services_published: Arc<BTreeMap<String, String>>,
}

/// A strict reverse-path check (`rp_filter` 1) on `all` would win over the per-interface 0 the
/// pod veths get (pods' replies arrive on their veth, the route to them is through
/// `weir_host`): loosen it to 2, which still refuses sources with no route back at all.
fn relax_strict_rp_filter() {
    let all = "/proc/sys/net/ipv4/conf/all/rp_filter";
    if std::fs::read_to_string(all).is_ok_and(|v| v.trim() == "1") {
        match std::fs::write(all, "2") {
            Ok(()) => tracing::warn!("net.ipv4.conf.all.rp_filter was 1 (strict); set to 2 (loose) for pods' replies"),
            Err(e) => {
                tracing::error!(error = %e, "net.ipv4.conf.all.rp_filter is 1 (strict): pods' replies to the node will be dropped")
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn attachment_hash(container_id: &str, ifname: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Prefix of every node-side pod interface the agent creates (and may therefore delete).
pub const HOST_IF_PREFIX: &str = "lxc";
/// Every host interface weir creates carries an alias starting with this (then the container
/// ID and interface): the orphan sweep removes only interfaces so marked, never another
/// plugin's `lxc*` devices.
pub const OWNER_ALIAS_PREFIX: &str = "weir:";

/// The alias that marks a host interface as weir's (at most 255 bytes, the kernel's limit).
pub fn owner_alias(container_id: &str, ifname: &str) -> String {
    let mut a = format!("{OWNER_ALIAS_PREFIX}{container_id}/{ifname}");
    let mut end = a.len().min(255);
    while !a.is_char_boundary(end) {
        end -= 1;
    }
    a.truncate(end);
    a
}

/// Node-side interface name for an attachment, stable across restarts: `lxc` + 11 hex digits
/// of a hash of (container ID, ifname).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    format!("{HOST_IF_PREFIX}{}", &format!("{:016x}", attachment_hash(container_id, ifname))[..11])
}

/// The pod interface's MAC: locally administered, unicast, derived from the attachment, so the
/// agent sets it at creation and never has to read it back from the pod's namespace.
pub fn pod_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let h = attachment_hash(container_id, ifname).to_be_bytes();
    [0x0a, h[0], h[1], h[2], h[3], h[4]]
}

impl Node {
    pub fn open(cfg: Config) -> anyhow::Result<Self> {
        let store = EndpointStore::open(&cfg.state_dir)?;
        let nl = Netlink::open()?;
        let cfg_name = cfg.node_name.clone();
        Ok(Self {
            cfg,
            store,
            nl,
            loaded: None,
            desired: Desired::default(),
            events: None,
            services: ServiceSync::default(),
            host_port_pods: BTreeMap::new(),

            policy: PolicySync::default(),
            policy_seen: ClusterSnapshot::default(),
            policy_learned: false,
            policy_pending: Changes::everything(),
            enrichment: SharedEnrichment::default(),
            services_published: Arc::default(),
            quarantine_bypassed: 0,
            rejected_nodes: Arc::default(),
            stage_failures: 0,
            view: watch::Sender::new(Arc::new(NodeView::new(cfg_name))),
            rejected_services_published: Arc::default(),
        })
    }

    /// The views this node publishes (see [`crate::serve::view`]).
    pub fn view(&self) -> SharedView {
        self.view.subscribe()
    }

    /// Publishes the node as it is now. Cheap (shared structure): called after every change.
    fn publish(&mut self) {
        let own_refused = self.desired.skipped.iter().find(|(n, _)| *n == self.cfg.node_name);
        let readiness = match (&self.loaded, &self.desired.own, own_refused) {
            (Some(l), _, _) => Readiness::Ready { pod_cidr: l.pod_cidr.to_string() },
            (None, None, Some((_, why))) => Readiness::Refused(why.clone()),
            (None, None, None) => Readiness::Waiting,
            (None, Some(_), _) => Readiness::Loading,
        };
        let mut node_ifaces = vec![self.cfg.uplink.clone(), HOST_DEVICE.to_owned()];
        if self.cfg.routing == Routing::Vxlan {
            node_ifaces.push(VXLAN_DEVICE.to_owned());
        }
        let view = NodeView {
            node: self.cfg.node_name.clone(),
            readiness,
            node_ifaces,
            records: self.store.records(),
            rejected_nodes: self.rejected_nodes.clone(),
            rejected_services: self.rejected_services_published.clone(),
            service_owners: self.services_published.clone(),
            policy: self.policy.cluster.clone(),
            compiled: self.policy.compiled.clone(),
            tallies: Tallies {
                stage_failures: self.stage_failures,
                fail_closed_total: self.policy.fail_closed_total,
                quarantine_bypassed: self.quarantine_bypassed,
                quarantined: self.store.released().len(),
                policy_entries: self.policy.compiled.total_entries(),
            },
            kernel: self.loaded.as_ref().map(|l| l.reader.clone()),
        };
        self.view.send_replace(Arc::new(view));
    }

    /// Whether the datapath is loaded (ADD can be served).
    pub fn ready(&self) -> bool {
        self.loaded.is_some()
    }

    /// Brings kernel state in line with the snapshot, looking only at what `changes` touch:
    /// remote nodes when Nodes changed, policy when pods, namespaces or NetworkPolicies did,
    /// Services when Services or EndpointSlices did (only those Services). `changes.all` (start,
    /// relist, resync, retry) looks at everything. Idempotent; safe to call repeatedly.
    pub async fn reconcile(&mut self, snap: ClusterSnapshot, changes: &Changes) -> anyhow::Result<()> {
        let r = self.reconcile_stages(snap, changes).await;
        self.publish();
        r
    }

    async fn reconcile_stages(&mut self, snap: ClusterSnapshot, changes: &Changes) -> anyhow::Result<()> {
        let desired = state::desired(&snap, &self.cfg.node_name);
        if desired.skipped != self.desired.skipped {
            for (node, why) in &desired.skipped {
                tracing::warn!(%node, reason = %why, "Node skipped");
            }
        }
        let nodes_changed = changes.all || desired != self.desired;
        self.desired = desired;
        if self.loaded.is_none() {
            let Some(own) = self.desired.own else { return Ok(()) };
            self.bring_up(own.pod_cidr, own.address).await?;
        }
        // A rebuilt endpoint that found its pod enters the policy pass like a new one.
        let resolved = self.store.all().any(|r| r.identity_unknown) && self.resolve_identities(&snap);
        if resolved {
            self.policy_pending.all = true;
        }
        // The stages are independent: one that fails (a map write refused, a route the kernel
        // will not take) is reported and retried, and never keeps the others from converging.
        let mut failed: Vec<String> = Vec::new();
        if changes.all {
            // A DEL weir-cni queued while this agent was starting (or between restarts) waits
            // no longer than the next resync.
            self.drain_delete_queue().await;
        }
        if nodes_changed {
            if let Err(e) = self.sync_remote_nodes().await {
                tracing::error!(error = %format!("{e:#}"), "remote nodes did not converge; retrying");
                failed.push(format!("remote nodes: {e:#}"));
            }
        }
        if changes.policy() || resolved {
            self.learn_policy_inputs(&snap);
            // Start, relist, resync and retries recompile everything.
            self.policy_pending.all |= changes.all;
            if let Err(e) = self.sync_policy(&self.local_endpoints(), &self.unmanaged_endpoints()) {
                tracing::error!(error = %format!("{e:#}"), "NetworkPolicy did not converge; retrying");
                failed.push(format!("NetworkPolicy: {e:#}"));
            }
        }
        // Pods with host ports are frontends too: a pod change is a Service change when the
        // set of running hostPort pods moved. Only the changed pods are looked at (a walk of
        // every pod per change cost 3 % of a CPU under churn at 10k pods).
        let mut host_ports_changed = false;
        if changes.all || nodes_changed || !changes.pods.is_empty() {
            let mut by_node: BTreeMap<String, Vec<Ipv4Addr>> =
                self.desired.remotes.iter().map(|(n, r)| (n.clone(), vec![r.address])).collect();
            if let Some(o) = self.desired.own {
                by_node.insert(self.cfg.node_name.clone(), vec![o.address]);
            }
            let mut moved = changes.all || nodes_changed;
            if moved {
                self.host_port_pods = crate::services::host_port_pods(&snap.pods, &by_node)
                    .into_iter()
                    .map(|p| ((p.namespace.clone(), p.name.clone()), p))
                    .collect();
            } else {
                for key in &changes.pods {
                    let now = snap.pods.get(key).and_then(|p| crate::services::host_port_pod(p, &by_node));
                    if now.as_ref() != self.host_port_pods.get(key) {
                        moved = true;
                        match now {
                            Some(p) => self.host_port_pods.insert(key.clone(), p),
                            None => self.host_port_pods.remove(key),
                        };
                    }
                }
            }
            if moved {
                host_ports_changed = self.services.set_host_ports(self.host_port_pods.values().cloned().collect());
            }
        }
        if changes.services() || nodes_changed || host_ports_changed {
            if let Err(e) = self.sync_services(&snap, changes, nodes_changed) {
                tracing::error!(error = %format!("{e:#}"), "Services did not converge; retrying");
                failed.push(format!("Services: {e:#}"));
            }
        }
        self.stage_failures += failed.len() as u64;
        if failed.is_empty() {
            self.finish_takeover();
        }
        if failed.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{}", failed.join("; "))
        }
    }

    /// After a pass in which every stage converged, the maps hold what the cluster asks for:
    /// attachments an earlier agent (an older version, or maps recreated) left deciding with
    /// its own maps are handed to this load's programs, and older versions' pins go.
    fn finish_takeover(&mut self) {
        let Some(l) = self.loaded.as_mut() else { return };
        if !l.dp.takeover_pending() {
            return;
        }
        match l.dp.finish_takeover() {
            Ok(r) => tracing::info!(
                replaced = r.replaced,
                detached = r.detached,
                versions_removed = ?r.versions_removed,
                "earlier agent's attachments taken over"
            ),
            Err(e) => {
                tracing::error!(error = %e, "taking over earlier attachments failed; retrying after the next pass")
            }
        }
    }

    /// An attachment the runtime made for a Kubernetes pod (containerd passes the pod's
    /// namespace and name). Others (a plain CNI user) have no Pod: no NetworkPolicy can select
    /// them, so they are not isolated.
    pub fn is_kubernetes_pod(a: &AddRequest) -> bool {
        !a.pod_namespace.is_empty() && !a.pod_name.is_empty()
    }

    /// `snap` holds the pod `ns/name`, the incarnation with `uid` when both sides know one (a
    /// pod re-created under the same name must not inherit the old one's labels).
    pub fn pod_in(snap: &ClusterSnapshot, ns: &str, name: &str, uid: &str) -> bool {
        snap.pods
            .get(&(ns.to_owned(), name.to_owned()))
            .is_some_and(|p| uid.is_empty() || p.uid.is_empty() || *p.uid == *uid)
    }

    /// Takes the pods, namespaces and policies of a newer cluster state than the last
    /// reconcile's (an ADD that waited for its pod compiles with what it waited for).
    /// What changed since the state last learned is kept for the next policy pass; an older
    /// state than the one learned (a pass that took its snapshot before an ADD learned a newer
    /// one) is ignored.
    pub fn learn_policy_inputs(&mut self, snap: &ClusterSnapshot) {
        let seen = self.policy_seen.log.head();
        if self.policy_learned && snap.log.head() < seen {
            return;
        }
        let changes = if self.policy_learned { snap.log.since(seen) } else { Changes::everything() };
        self.policy_pending.extend(changes);
        self.policy_learned = true;
        self.policy_seen = ClusterSnapshot {
            pods: snap.pods.clone(),
            namespaces: snap.namespaces.clone(),
            network_policies: snap.network_policies.clone(),
            log: snap.log.clone(),
            ..Default::default()
        };
    }

    /// This node's endpoints whose pod the cluster state shows: pod namespace/name → address.
    /// The others get no policy entry, and so stay closed in the datapath.
    fn local_endpoints(&self) -> BTreeMap<(String, String), Ipv4Addr> {
        self.store
            .all()
            .filter(|r| Self::pod_in(&self.policy_seen, &r.pod_namespace, &r.pod_name, &r.pod_uid))
            .map(|r| ((r.pod_namespace.clone(), r.pod_name.clone()), r.ip))
            .collect()
    }

    /// Endpoints of attachments that belong to no Kubernetes pod (open: nothing selects them).
    fn unmanaged_endpoints(&self) -> BTreeSet<Ipv4Addr> {
        // A rebuilt endpoint whose pod is not known yet is not one of them: it stays closed.
        self.store
            .all()
            .filter(|r| !r.identity_unknown && (r.pod_namespace.is_empty() || r.pod_name.is_empty()))
            .map(|r| r.ip)
            .collect()
    }

    /// NetworkPolicy for `local` endpoints into the policy maps (only the differences).
    fn sync_policy(
        &mut self,
        local: &BTreeMap<(String, String), Ipv4Addr>,
        unmanaged: &BTreeSet<Ipv4Addr>,
    ) -> anyhow::Result<()> {
        let Some(l) = self.loaded.as_mut() else { return Ok(()) };
        // Only pods changed: go on from the last compilation. Namespaces or policies changed,
        // or start, relist, resync: compile everything. (A failed pass leaves the writer
        // without its incremental state, so the next one is full.)
        let pending = std::mem::take(&mut self.policy_pending);
        let r = self.policy.apply_changes(&self.policy_seen, &pending, local, unmanaged, &mut l.policy)?;
        self.publish_enrichment();
        if r.rejected_changed {
            for e in &self.policy.cluster.rejected {
                tracing::warn!(error = %e, "NetworkPolicy rejected; its previous version (if any) stays enforced");
            }
        }
        for (pod, why) in &r.newly_fail_closed {
            tracing::error!(%pod, reason = %why, "policy does not fit the datapath: the pod is denied all traffic (fail closed)");
        }
        if r.upserted + r.removed > 0 {
            tracing::info!(upserted = r.upserted, removed = r.removed, "policy maps reconciled");
        }
        Ok(())
    }

    /// Hands the events stage what the last passes compiled (pods, policy, Service frontends).
    fn publish_enrichment(&self) {
        let published = Arc::new(Enrichment {
            cluster: self.policy.cluster.clone(),
            compiled: self.policy.compiled.clone(),
            services: self.services_published.clone(),
        });
        *self.enrichment.write().unwrap_or_else(|p| p.into_inner()) = published;
    }

    /// What flow enrichment reads (the pods, the compiled policy and the Service frontends of
    /// the last pass).
    pub fn enrichment(&self) -> SharedEnrichment {
        self.enrichment.clone()
    }

    /// Service frontends and their backends into `WEIR_SERVICES` (whole-frontend writes), only
    /// for the Services the changed objects touch (all of them when `changes.all` or the nodes'
    /// addresses changed). A rejected Service keeps what it had in the datapath ("bad input
    /// loses no state").
    fn sync_services(&mut self, snap: &ClusterSnapshot, changes: &Changes, nodes_changed: bool) -> anyhow::Result<()> {
        let Some(l) = self.loaded.as_mut() else { return Ok(()) };
        let mut node_ips: Vec<Ipv4Addr> = self.desired.remotes.values().map(|r| r.address).collect();
        node_ips.extend(self.desired.own.map(|o| o.address));
        let a = if changes.all || nodes_changed {
            self.services.apply(
                &snap.services,
                &snap.endpoint_slices,
                &node_ips,
                &self.cfg.node_name,
                &mut l.services,
            )?
        } else {
            let changed = ObjectChanges::from(changes);
            self.services.apply_changes(
                &snap.services,
                &snap.endpoint_slices,
                &changed,
                &node_ips,
                &self.cfg.node_name,
                &mut l.services,
            )?
        };
        if a.owners_changed {
            self.services_published = Arc::new(self.services.owners.clone());
            self.publish_enrichment();
        }
        if a.rejected_changed {
            self.rejected_services_published = Arc::new(self.services.rejected.clone());
            for (svc, why) in &self.services.rejected {
                tracing::warn!(service = %svc, reason = %why, "Service rejected; its previous datapath state is kept");
            }
        }
        let c = a.changes;
        if c != maps::Changes::default() {
            tracing::info!(upserted = c.upserted, removed = c.removed, "service map reconciled");
        }
        Ok(())
    }

    async fn bring_up(&mut self, pod_cidr: Ipv4Network, node_ip: Ipv4Addr) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        let uplink = self.nl.require_link(&cfg.uplink).await?;
        let vxlan = match cfg.routing {
            Routing::Vxlan => {
                Some(self.nl.ensure_vxlan(VXLAN_DEVICE, cfg.vxlan_port, uplink.mtu - VXLAN_OVERHEAD).await?)
            }
            Routing::Direct => {
                self.nl.delete_link(VXLAN_DEVICE).await?;
                None
            }
        };
        let mtu = cfg.mtu.unwrap_or(match vxlan {
            Some(_) => uplink.mtu - VXLAN_OVERHEAD,
            None => uplink.mtu,
        });
        let load = LoadConfig {
            bpffs_root: cfg.bpffs.clone(),
            node_ipv4: node_ip,
            cluster_cidr_v4: (cfg.cluster_cidr.network(), cfg.cluster_cidr.prefix()),
            vxlan_ifindex: vxlan.as_ref().map_or(0, |v| v.index),
            vxlan_vni: cfg.vxlan_vni,
            vxlan_port: cfg.vxlan_port,
            nat_ports: cfg.nat_ports,
            observe: cfg.observe,
            observe_http: cfg.observe_http,
            exec_audit: cfg.observe && cfg.observe_exec,
        };
        let mut dp = Datapath::load(&load).context("loading the eBPF datapath")?;
        for m in dp.retired_maps() {
            tracing::warn!(map = %m.name, reason = %m.reason, "pinned map does not match this build; recreated (refilled by the first pass)");
        }
        let how = dp.attach_ingress(&cfg.uplink, programs::FROM_WIRE)?;
        tracing::info!(iface = %cfg.uplink, ?how, "uplink program");
        // The stack's way into pods: the whole pod CIDR through `weir_host` and its program, so
        // nothing the stack sends a pod escapes its ingress policy.
        let host = self.nl.ensure_host_device(HOST_DEVICE, HOST_DEVICE_PEER, mtu).await?;
        for dev in [HOST_DEVICE, HOST_DEVICE_PEER] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
        }
        dp.attach_egress(HOST_DEVICE, programs::TO_POD)?;
        relax_strict_rp_filter();
        self.nl.replace_route(pod_cidr.network(), pod_cidr.prefix(), host.index, None).await?;
        if vxlan.is_some() {
            dp.attach_ingress(VXLAN_DEVICE, programs::FROM_VXLAN)?;
        }
        let endpoints = Endpoints::open(&mut dp)?;
        let tunnel = Tunnel::open(&mut dp)?;
        let nodes = Nodes::open(&mut dp)?;
        let services = ServiceMaps {
            services: Services::open(&mut dp)?,
            backends: Backends::open(&mut dp)?,
            maglev: Maglev::open(&mut dp)?,
        };
        let policy = PolicyMaps {
            ipcache: Ipcache::open(&mut dp)?,
            entries: PolicyEntries::open(&mut dp)?,
            endpoints: PolicyEndpoints::open(&mut dp)?,
        };
        let reader = Arc::new(Reader::open(&dp)?);
        if let Some(cg) = &cfg.cgroup_root {
            let how = dp.attach_cgroup(cg)?;
            tracing::info!(cgroup = %cg.display(), ?how, "socket-level Service translation");
        }
        // The exec audit: optional, so a kernel it cannot read leaves networking untouched.
        let exec = match &cfg.cgroup_root {
            Some(cg) if cfg.observe && cfg.observe_exec => match dp.attach_exec(cg) {
                Ok(a) => {
                    tracing::info!(cgroup = %cg.display(), "exec audit attached");
                    Some(a)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "exec audit not attached; flows and policy are unaffected");
                    None
                }
            },
            _ => None,
        };
        self.events = Some(Events::open(&mut dp)?);
        self.loaded =
            Some(Loaded { dp, endpoints, tunnel, nodes, services, policy, reader, uplink, pod_cidr, mtu, _exec: exec });
        if *self.store.opened() != Opened::Read {
            // Before the orphan sweep, which would take the pods' interfaces for orphans.
            self.rebuild_store().await?;
        }
        self.sync_endpoints().await?;
        self.drain_delete_queue().await;
        tracing::info!(%pod_cidr, %node_ip, routing = ?self.cfg.routing, mtu, "datapath ready");
        Ok(())
    }

    /// A lost or corrupt store is rebuilt from what the kernel holds, without touching a pod: each
    /// host interface weir marked (`weir:<container>/<ifname>`, whose name must be the one weir
    /// derives from them) is an endpoint, with the link's MTU. Its address and MACs come from the
    /// pinned endpoint map; when the map does not hold it (it was recreated empty because its
    /// layout changed: an upgrade), the address and pod MAC come from the runtime's CNI cache
    /// (the result weir returned) and the host MAC from the link, the address only if it lies in
    /// this node's pod CIDR and no other interface claims it. Its pod (and network namespace)
    /// come from that cache too; without an entry the endpoint is marked identity-unknown and
    /// stays closed to policy until the cluster state shows its pod (`resolve_identities`).
    async fn rebuild_store(&mut self) -> anyhow::Result<()> {
        let Some(l) = self.loaded.as_mut() else { return Ok(()) };
        let pod_cidr = l.pod_cidr;
        let in_map = l.endpoints.list()?;
        let by_ifindex: BTreeMap<u32, (Ipv4Addr, EndpointInfo)> =
            in_map.iter().map(|(ip, info)| (info.ifindex, (*ip, *info))).collect();
        let mut records: Vec<EndpointRecord> = Vec::new();
        let mut from_cache_only = 0;
        for (name, link) in self.nl.links_with_prefix(HOST_IF_PREFIX).await? {
            let alias = link.alias;
            let Some((container_id, ifname)) =
                alias.as_deref().and_then(|a| a.strip_prefix(OWNER_ALIAS_PREFIX)).and_then(|a| a.rsplit_once('/'))
            else {
                continue;
            };
            if host_ifname(container_id, ifname) != name {
                tracing::warn!(iface = %name, ?alias, "weir alias does not name this interface; not rebuilt");
                continue;
            }
            let cached = crate::endpoints::cni_cache::find(&self.cfg.cni_cache_dir, container_id, ifname);
            let from_map = by_ifindex.get(&link.index).map(|(ip, info)| (*ip, info.pod_mac, info.host_mac));
            let from_cache = || {
                cached
                    .as_ref()
                    .and_then(|c| Some((c.ip?, c.pod_mac?, link.mac?)))
                    .filter(|(ip, _, _)| pod_cidr.contains(*ip))
                    .filter(|(ip, _, _)| !in_map.contains_key(ip) && !records.iter().any(|r| r.ip == *ip))
            };
            let Some((ip, pod_mac, host_mac)) = from_map.or_else(from_cache) else {
                tracing::warn!(iface = %name, "weir interface neither in the endpoint map nor (with a usable address) in the CNI cache (an ADD that never finished); left to the orphan sweep");
                continue;
            };
            from_cache_only += usize::from(from_map.is_none());
            records.push(EndpointRecord {
                container_id: container_id.to_owned(),
                ifname: ifname.to_owned(),
                netns: cached.as_ref().map(|c| c.netns.clone()).unwrap_or_default(),
                pod_namespace: cached.as_ref().map(|c| c.pod_namespace.clone()).unwrap_or_default(),
                pod_name: cached.as_ref().map(|c| c.pod_name.clone()).unwrap_or_default(),
                pod_uid: cached.as_ref().map(|c| c.pod_uid.clone()).unwrap_or_default(),
                host_ifname: name,
                host_ifindex: link.index,
                host_mac,
                pod_mac,
                ip,
                mtu: link.mtu,
                identity_unknown: cached.is_none(),
            });
        }
        if from_cache_only > 0 {
            tracing::warn!(
                endpoints = from_cache_only,
                "endpoint map did not hold these interfaces (recreated by an upgrade); their addresses were taken from the CNI cache"
            );
        }
        let from_cache = records.iter().filter(|r| !r.identity_unknown).count();
        match self.store.opened() {
            Opened::Corrupt { kept, error } => tracing::error!(%error, kept = %kept.display(),
                endpoints = records.len(), from_cache, "endpoint store was corrupt; rebuilt from the kernel"),
            _ if !records.is_empty() => tracing::warn!(
                endpoints = records.len(),
                from_cache,
                "endpoint store was missing; rebuilt from the kernel"
            ),
            _ => {}
        }
        self.store.rebuilt(records)?;
        Ok(())
    }

    /// Endpoints rebuilt without their pod take it from the cluster state: the one pod on this
    /// node (not finished) whose addresses include the endpoint's.
    fn resolve_identities(&mut self, snap: &ClusterSnapshot) -> bool {
        let mut resolved = false;
        let unknown: Vec<EndpointRecord> = self.store.all().filter(|r| r.identity_unknown).cloned().collect();
        for mut r in unknown {
            let ip = r.ip.to_string();
            let mut owners = snap.pods.values().filter(|p| {
                !p.finished
                    && p.node_name.as_deref() == Some(self.cfg.node_name.as_str())
                    && p.ips.iter().any(|i| **i == *ip)
            });
            let (Some(p), None) = (owners.next(), owners.next()) else { continue };
            r.pod_namespace = p.namespace.to_string();
            r.pod_name = p.name.to_string();
            r.pod_uid = p.uid.to_string();
            r.identity_unknown = false;
            tracing::info!(pod = %format!("{}/{}", r.pod_namespace, r.pod_name), ip = %r.ip, "rebuilt endpoint's pod found by its address");
            match self.store.insert(r) {
                Ok(()) => resolved = true,
                Err(e) => tracing::error!(error = %e, "recording a rebuilt endpoint's pod failed; retrying next pass"),
            }
        }
        resolved
    }

    /// Makes the endpoint map and tcx links match the store (after a restart, adopting pins).
    async fn sync_endpoints(&mut self) -> anyhow::Result<()> {
        let Some(l) = self.loaded.as_mut() else { return Ok(()) };
        let links = self.nl.links_with_prefix(HOST_IF_PREFIX).await?;
        let mut want = BTreeMap::new();
        for r in self.store.all() {
            match links.get(&r.host_ifname) {
                Some(link) if link.index == r.host_ifindex => {
                    l.dp.attach_ingress(&r.host_ifname, programs::FROM_POD)?;
                    want.insert(r.ip, r.datapath_info());
                }
                _ => tracing::warn!(pod = %format!("{}/{}", r.pod_namespace, r.pod_name), ip = %r.ip,
                    "endpoint's host interface is gone; waiting for DEL or GC"),
            }
        }
        let c = maps::sync(&mut l.endpoints, &want)?;
        if c != maps::Changes::default() {
            tracing::info!(upserted = c.upserted, removed = c.removed, "endpoint map reconciled");
        }
        // Host interfaces weir made that no endpoint owns (an agent that died mid-ADD or
        // mid-DEL) go; `lxc*` interfaces without weir's mark are another's and stay.
        let owned: BTreeSet<&str> = self.store.all().map(|r| r.host_ifname.as_str()).collect();
        for (name, link) in links.iter().filter(|(n, _)| !owned.contains(n.as_str())) {
            if !link.alias.as_deref().is_some_and(|a| a.starts_with(OWNER_ALIAS_PREFIX)) {
                tracing::info!(iface = %name, "leaving an lxc interface weir did not make (no weir: alias)");
                continue;
            }
            tracing::warn!(iface = %name, "removing a host interface no endpoint owns");
            self.nl.delete_link(name).await?;
            l.dp.detach(name, programs::FROM_POD)?;
        }
        Ok(())
    }

    /// Routes (direct) or tunnel entries (VXLAN) for every other node's pod CIDR; the tunnel
    /// map (which node owns which pod CIDR) and the node addresses in both modes, for the
    /// datapath's source checks.
    async fn sync_remote_nodes(&mut self) -> anyhow::Result<()> {
        let Some(l) = self.loaded.as_mut() else { return Ok(()) };
        let vxlan = self.cfg.routing == Routing::Vxlan;
        // Direct routing reaches a node's pods through the node as a gateway on the uplink: a
        // node whose address is not on the uplink's networks cannot be a gateway (the kernel
        // would refuse the route, and the pass with it). Refused by name.
        let on_link = if vxlan { Vec::new() } else { self.nl.ipv4_networks(l.uplink.index).await? };
        let mut off_link = Vec::new();
        let remotes: Vec<&crate::state::NodeRoute> = self
            .desired
            .remotes
            .iter()
            .filter(|(name, r)| {
                let ok = vxlan || on_link.iter().any(|n| n.contains(r.address));
                if !ok {
                    off_link.push((
                        (*name).clone(),
                        format!(
                            "InternalIP {} is not on {}'s networks (direct routing needs it on-link)",
                            r.address, self.cfg.uplink
                        ),
                    ));
                }
                ok
            })
            .map(|(_, r)| r)
            .collect();
        for (node, why) in off_link.iter().filter(|o| !self.rejected_nodes.contains(o)) {
            tracing::warn!(%node, reason = %why, "Node skipped");
        }
        self.rejected_nodes = Arc::new(self.desired.skipped.iter().cloned().chain(off_link).collect());
        let want: BTreeMap<(Ipv4Addr, u8), Ipv4Addr> =
            remotes.iter().map(|r| ((r.pod_cidr.network(), r.pod_cidr.prefix()), r.address)).collect();
        let mut nodes: BTreeMap<Ipv4Addr, u32> = remotes.iter().map(|r| (r.address, 0)).collect();
        if let Some(own) = self.desired.own {
            nodes.insert(own.address, weir_bpf_common::NODE_F_SELF);
        }
        // Addresses first: a node's pods are never tunnelled from before the node is known.
        let c = maps::sync(&mut l.nodes, &nodes)?;
        if c != maps::Changes::default() {
            tracing::info!(upserted = c.upserted, removed = c.removed, "node address map reconciled");
        }
        let c = maps::sync(&mut l.tunnel, &want)?;
        if c != maps::Changes::default() {
            tracing::info!(upserted = c.upserted, removed = c.removed, "tunnel map reconciled");
        }
        let routes = self.nl.weir_routes().await?;
        // Node routes are weir's routes with a gateway. Without one: the route of this node's
        // pod CIDR through `weir_host`, and per-pod /32 routes an earlier agent made, which would
        // let the stack reach a pod around `weir_to_pod`: they go.
        let mut have_routes = BTreeSet::new();
        for (dst, len, gw, msg) in routes {
            let Some(gw) = gw else {
                if len == 32 {
                    self.nl.delete_route(msg).await?;
                }
                continue;
            };
            if vxlan || want.get(&(dst, len)) != Some(&gw) {
                self.nl.delete_route(msg).await?;
            } else {
                have_routes.insert((dst, len));
            }
        }
        if !vxlan {
            for ((dst, len), gw) in &want {
                if !have_routes.contains(&(*dst, *len)) {
                    self.nl.replace_route(*dst, *len, l.uplink.index, Some(*gw)).await?;
                }
            }
        }
        Ok(())
    }

    fn not_ready(&self) -> ApiError {
        ApiError::new(
            code::TRY_AGAIN_LATER,
            format!("weir-agent is not ready: {}", self.view.borrow().status().reason),
            "",
        )
    }

    pub async fn add(&mut self, req: &AddRequest) -> Result<Endpoint, ApiError> {
        let r = self.add_now(req).await;
        self.publish();
        r
    }

    async fn add_now(&mut self, req: &AddRequest) -> Result<Endpoint, ApiError> {
        let id = &req.id;
        if let Some(r) = self.store.get(&id.container_id, &id.ifname) {
            return Err(ApiError::new(
                code::ALREADY_ATTACHED,
                format!(
                    "container {} already has {} attached (address {}); DEL it first",
                    id.container_id, id.ifname, r.ip
                ),
                "",
            ));
        }
        let netns = PathBuf::from(&id.netns);
        if !netns.exists() {
            return Err(ApiError::new(
                code::UNKNOWN_CONTAINER,
                format!("network namespace {} does not exist", id.netns),
                "",
            ));
        }
        let Some(l) = self.loaded.as_ref() else { return Err(self.not_ready()) };
        let kubernetes = Self::is_kubernetes_pod(req);
        if kubernetes && !Self::pod_in(&self.policy_seen, &req.pod_namespace, &req.pod_name, &req.pod_uid) {
            return Err(ApiError::new(
                code::TRY_AGAIN_LATER,
                format!("pod {}/{} is not in weir-agent's cluster state yet", req.pod_namespace, req.pod_name),
                "",
            ));
        }
        let now = unix_now();
        let (ip, how) =
            ipam::allocate(l.pod_cidr, &self.store.used_ips(), self.store.released(), now, self.cfg.ip_quarantine)
                .ok_or_else(|| {
                    ApiError::new(
                        code::ADDRESSES_EXHAUSTED,
                        format!("no free address left in pod CIDR {}", l.pod_cidr),
                        "",
                    )
                })?;
        if how == ipam::Allocation::Quarantined {
            self.quarantine_bypassed += 1;
            tracing::warn!(%ip, pod_cidr = %l.pod_cidr, quarantine = ?self.cfg.ip_quarantine,
                "every free address is in quarantine: reusing the one released longest ago");
        }
        let mtu = req.mtu.unwrap_or(l.mtu);
        let host = host_ifname(&id.container_id, &id.ifname);
        // The pod's policy is in the maps before the pod can send or be reached (the endpoint
        // map entry, written last by `plumb`, is what lets its traffic through; without a policy
        // entry the datapath keeps the endpoint closed anyway).
        let mut local = self.local_endpoints();
        let mut unmanaged = self.unmanaged_endpoints();
        if kubernetes {
            local.insert((req.pod_namespace.clone(), req.pod_name.clone()), ip);
        } else {
            unmanaged.insert(ip);
        }
        self.sync_policy(&local, &unmanaged)
            .map_err(|e| api_err(code::DATAPATH, "writing the pod's network policy", format!("{e:#}")))?;
        match self.plumb(req, &netns, &host, ip, mtu).await {
            Ok(rec) => {
                let ep = rec.to_api();
                if let Err(e) = self.store.insert(rec) {
                    self.unplumb(&host, ip).await;
                    return Err(api_err(code::IO_FAILURE, "persisting the endpoint", e));
                }
                tracing::info!(pod = %format!("{}/{}", req.pod_namespace, req.pod_name), %ip, iface = %host, "endpoint added");
                Ok(ep)
            }
            Err(e) => {
                self.unplumb(&host, ip).await;
                Err(api_err(
                    code::DATAPATH,
                    format!("setting up {} for container {}", id.ifname, id.container_id),
                    format!("{e:#}"),
                ))
            }
        }
    }

    /// Creates the veth pair (peer straight into the pod namespace), configures both ends,
    /// attaches the program and writes the map. The tcx attach dominates: the kernel holds RTNL
    /// across an RCU grace period (7–16 ms measured here), so running the pod side in parallel
    /// gains nothing — every rtnetlink request waits for RTNL.
    async fn plumb(
        &mut self,
        req: &AddRequest,
        netns: &Path,
        host: &str,
        ip: Ipv4Addr,
        mtu: u32,
    ) -> anyhow::Result<EndpointRecord> {
        // A leftover of a failed earlier attempt would make the create fail.
        self.nl.delete_link(host).await?;
        let ns_fd = netlink::open_netns(netns)?;
        let pod_mac = pod_mac(&req.id.container_id, &req.id.ifname);
        self.nl.create_veth_into(host, &req.id.ifname, pod_mac, &ns_fd, mtu).await?;
        let host_link = self.nl.require_link(host).await?;
        // Marked as weir's at once (the orphan sweep removes only marked interfaces).
        self.nl.set_up_with_alias(host_link.index, &owner_alias(&req.id.container_id, &req.id.ifname)).await?;
        let side = PodSide {
            netns: netns.to_owned(),
            ifname: req.id.ifname.clone(),
            ip,
            gateway: GATEWAY,
            gateway_mac: host_link.mac,
        };
        tokio::task::block_in_place(|| netlink::configure_pod_side(side))?;
        self.plumb_node_side(host, &host_link, ip, pod_mac).await?;
        Ok(EndpointRecord {
            container_id: req.id.container_id.clone(),
            ifname: req.id.ifname.clone(),
            netns: req.id.netns.clone(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
            pod_uid: req.pod_uid.clone(),
            host_ifname: host.to_owned(),
            host_ifindex: host_link.index,
            host_mac: host_link.mac,
            pod_mac,
            ip,
            mtu,
            identity_unknown: false,
        })
    }

    async fn plumb_node_side(
        &mut self,
        host: &str,
        host_link: &LinkInfo,
        ip: Ipv4Addr,
        pod_mac: [u8; 6],
    ) -> anyhow::Result<()> {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{host}/disable_ipv6"), "1");
        // The pod's replies to what the stack sent it arrive here, while the route to the pod
        // is through `weir_host`: no strict reverse-path check on this interface.
        let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{host}/rp_filter"), "0");
        let l = self.loaded.as_mut().context("datapath not loaded")?;
        if l.dp.attach_ingress(host, programs::FROM_POD)? != Attachment::Attached {
            tracing::warn!(iface = %host, "took over an existing pinned link for a new interface");
        }
        let info = EndpointInfo { ifindex: host_link.index, flags: 0, pod_mac, host_mac: host_link.mac, _pad: [0; 4] };
        l.endpoints.upsert(ip, info)?;
        Ok(())
    }

    /// Best-effort removal of everything `plumb` may have created.
    /// Order: stop redirecting to the interface, delete it (the kernel detaches its tcx program
    /// with it), then drop the now defunct link pin — detaching first would cost one more RCU
    /// grace period per DEL.
    async fn unplumb(&mut self, host: &str, ip: Ipv4Addr) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(l) = self.loaded.as_mut() {
            if let Err(e) = l.endpoints.remove(ip) {
                errors.push(e.to_string());
            }
        }
        if let Err(e) = self.nl.delete_link(host).await {
            if !is_not_found(&e) {
                errors.push(e.to_string());
            }
        }
        if let Some(l) = self.loaded.as_mut() {
            if let Err(e) = l.dp.detach(host, programs::FROM_POD) {
                errors.push(e.to_string());
            }
        }
        errors
    }

    /// Idempotent: an unknown attachment is already deleted. Every teardown step is tried;
    /// if any fails the record stays so that a retry can finish the job.
    pub async fn del(&mut self, id: &AttachmentRef) -> Result<(), ApiError> {
        let r = self.del_now(id).await;
        self.publish();
        r
    }

    async fn del_now(&mut self, id: &AttachmentRef) -> Result<(), ApiError> {
        let Some(rec) = self.store.get(&id.container_id, &id.ifname).cloned() else { return Ok(()) };
        let errors = self.unplumb(&rec.host_ifname, rec.ip).await;
        if !errors.is_empty() {
            return Err(ApiError::new(code::DATAPATH, format!("tearing down {}", rec.host_ifname), errors.join("; ")));
        }
        self.store
            .remove(&id.container_id, &id.ifname)
            .map_err(|e| api_err(code::IO_FAILURE, "persisting the endpoint store", e))?;
        // The address rests before it is handed out again: other nodes, EndpointSlices and
        // conntrack may still tie it to this pod for a while.
        if let Err(e) = self.store.release(rec.ip, unix_now(), self.cfg.ip_quarantine) {
            tracing::warn!(ip = %rec.ip, error = %e, "could not persist the address quarantine; a restart may reuse it early");
        }
        tracing::info!(pod = %format!("{}/{}", rec.pod_namespace, rec.pod_name), ip = %rec.ip, "endpoint deleted");
        Ok(())
    }

    pub async fn check(&mut self, req: &AddRequest) -> Result<Endpoint, ApiError> {
        let id = &req.id;
        let Some(rec) = self.store.get(&id.container_id, &id.ifname).cloned() else {
            return Err(ApiError::new(
                code::UNKNOWN_CONTAINER,
                format!("no attachment {} for container {}", id.ifname, id.container_id),
                "",
            ));
        };
        let fail = |what: String| ApiError::new(code::CHECK_FAILED, what, "");
        match self.nl.link(&rec.host_ifname).await {
            Ok(Some(l)) if l.index == rec.host_ifindex => {}
            _ => return Err(fail(format!("host interface {} is missing or was re-created", rec.host_ifname))),
        }
        let Some(l) = self.loaded.as_ref() else { return Err(self.not_ready()) };
        let in_map = l.endpoints.list().map_err(|e| api_err(code::DATAPATH, "reading the endpoint map", e))?;
        if in_map.get(&rec.ip) != Some(&rec.datapath_info()) {
            return Err(fail(format!("{} is not in the datapath's endpoint map as expected", rec.ip)));
        }
        if l.dp.ingress_program_count(&rec.host_ifname).unwrap_or(0) == 0 {
            return Err(fail(format!("no program attached to {}", rec.host_ifname)));
        }
        // A record rebuilt without the CNI cache does not know the namespace: the runtime's is used.
        let netns = PathBuf::from(if rec.netns.is_empty() { &id.netns } else { &rec.netns });
        let (ifname, ip) = (rec.ifname.clone(), rec.ip);
        let ok = tokio::task::block_in_place(|| netlink::pod_side_has_address(&netns, &ifname, ip))
            .map_err(|e| fail(format!("inspecting the pod namespace: {e}")))?;
        if !ok {
            return Err(fail(format!("{} in {} does not hold {}", rec.ifname, rec.netns, rec.ip)));
        }
        Ok(rec.to_api())
    }

    /// Deletes every attachment not in `valid`; returns what was removed.
    pub async fn gc(&mut self, valid: &[AttachmentRef]) -> Result<Vec<AttachmentRef>, ApiError> {
        let r = self.gc_now(valid).await;
        self.publish();
        r
    }

    async fn gc_now(&mut self, valid: &[AttachmentRef]) -> Result<Vec<AttachmentRef>, ApiError> {
        let keep: BTreeSet<(&str, &str)> = valid.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
        let stale: Vec<AttachmentRef> = self
            .store
            .all()
            .filter(|r| !keep.contains(&(r.container_id.as_str(), r.ifname.as_str())))
            .map(|r| AttachmentRef {
                container_id: r.container_id.clone(),
                ifname: r.ifname.clone(),
                netns: r.netns.clone(),
            })
            .collect();
        let mut errors = Vec::new();
        for a in &stale {
            if let Err(e) = self.del(a).await {
                errors.push(format!("{}: {} ({})", a.container_id, e.msg, e.details));
            }
        }
        if errors.is_empty() {
            Ok(stale)
        } else {
            Err(ApiError::new(code::DATAPATH, "GC could not remove every stale attachment", errors.join("; ")))
        }
    }

    /// DELs that weir-cni queued while the agent was down.
    async fn drain_delete_queue(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.cfg.delete_queue) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<AttachmentRef>(&b).ok());
            match parsed {
                Some(id) => match self.del(&id).await {
                    Ok(()) => {
                        tracing::info!(container = %id.container_id, "queued DEL done");
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => {
                        tracing::warn!(container = %id.container_id, error = %e.msg, "queued DEL failed; will retry")
                    }
                },
                None => {
                    tracing::warn!(file = %path.display(), "unreadable queued DEL removed");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    /// The datapath's event ring, once, for the events stage to read.
    pub fn take_events(&mut self) -> Option<Events> {
        self.events.take()
    }

    /// The binds the datapath remembers (`WEIR_BINDS`), for the events stage to start from;
    /// none when the datapath is not loaded or the map cannot be read (logged).
    pub fn binds(&self) -> Vec<(weir_bpf_common::BindKey, weir_bpf_common::SockProc)> {
        let Some(l) = self.loaded.as_ref() else { return Vec::new() };
        weir_dataplane::reader::binds(&l.dp).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the binds made before this start; connections accepted on their ports name no process until they bind again");
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs_are_stable_short_and_distinct() {
        let h = host_ifname("0123456789abcdef", "eth0");
        assert_eq!(h.len(), 14);
        assert_eq!(host_ifname("0123456789abcdef", "eth0"), h);
        assert_ne!(host_ifname("0123456789abcdef", "eth1"), h);
        let m = pod_mac("0123456789abcdef", "eth0");
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
        assert_ne!(pod_mac("other", "eth0"), m);
    }
}
