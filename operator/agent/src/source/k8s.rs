//! The Kubernetes API source: one kube-runtime watcher per kind the agent reads — Nodes,
//! Namespaces, Pods, Services, EndpointSlices, NetworkPolicies — feeding the same
//! [`ClusterSnapshot`] channel as the manifest directory. Read-only: the agent writes nothing to
//! the API server.
//!
//! * Objects are trimmed before they are stored: `managedFields`, annotations, owner references
//!   (a Pod keeps only the workload its controller reference names) and every field the agent
//!   has no use for (a Node's image list, a Pod's volumes, conditions and container statuses, ...).
//! * The first snapshot is published only once every watcher has listed its kind, so the
//!   datapath (and CNI STATUS) is not ready before the agent has seen the whole cluster.
//! * Watches that fail are retried with kube-runtime's default backoff; a 410 Gone (expired
//!   resourceVersion) makes the watcher list again. Meanwhile the last snapshot stays in force,
//!   so the datapath keeps its state while the API server is unreachable.
//! * Changes are applied to the published snapshot in place, not by rebuilding it, and recorded
//!   in its change log: a pod update costs the same in a cluster of 100 pods as in one of 10k,
//!   and the reader recomputes only what it touches. An update that leaves what the agent keeps
//!   unchanged (status heartbeats, annotations) is dropped here. (The reconcile loop coalesces
//!   bursts.)
use std::{fmt::Debug, sync::Arc};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, NodeSpec, NodeStatus, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use super::{namespaced, pod::PodWire, put, Changed, ClusterSnapshot, PodInfo, SliceInfo};

/// (API group, resource) of every kind the source reads: what the agent's RBAC must grant
/// (get/list/watch) and nothing more; deploy/kubernetes/rbac.yaml is tested against it.
pub const READS: [(&str, &str); 6] = [
    ("", "nodes"),
    ("", "namespaces"),
    ("", "pods"),
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("networking.k8s.io", "networkpolicies"),
];

/// Metadata as the agent reads it: name, namespace, labels, uid, resourceVersion and deletion.
fn trim_meta(m: &mut ObjectMeta) {
    let kept = ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        labels: m.labels.take(),
        uid: m.uid.take(),
        resource_version: m.resource_version.take(),
        deletion_timestamp: m.deletion_timestamp.take(),
        ..Default::default()
    };
    *m = kept;
}

/// A Node as the agent reads it: name, labels, pod CIDRs, addresses.
pub fn trim_node(n: &mut Node) {
    trim_meta(&mut n.metadata);
    if let Some(spec) = n.spec.take() {
        n.spec = Some(NodeSpec { pod_cidr: spec.pod_cidr, pod_cidrs: spec.pod_cidrs, ..Default::default() });
    }
    if let Some(status) = n.status.take() {
        n.status = Some(NodeStatus { addresses: status.addresses, ..Default::default() });
    }
}

pub fn trim_namespace(n: &mut Namespace) {
    trim_meta(&mut n.metadata);
    n.spec = None;
    n.status = None;
}

pub fn trim_service(s: &mut Service) {
    trim_meta(&mut s.metadata);
    if let Some(status) = s.status.as_mut() {
        status.conditions = None;
    }
}

pub fn trim_network_policy(p: &mut NetworkPolicy) {
    trim_meta(&mut p.metadata);
}

/// A kind the source reflects: what the watcher reads (`Self`), what the snapshot keeps
/// (`Stored`: the trimmed object itself, or for Pods and EndpointSlices the compact [`PodInfo`] and [`SliceInfo`]), where and under
/// which key.
trait Kind: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static {
    type Key: Ord + Clone + Send + Sync + 'static;
    type Stored: PartialEq + Send + Sync + 'static;
    fn key(&self) -> Self::Key;
    fn map(s: &mut ClusterSnapshot) -> &mut imbl::OrdMap<Self::Key, Arc<Self::Stored>>;
    fn map_and_log(s: &mut ClusterSnapshot)
        -> (&mut imbl::OrdMap<Self::Key, Arc<Self::Stored>>, &mut super::ChangeLog);
    /// The log entry for a change of the object at `key`.
    fn changed(key: Self::Key) -> Changed;
    fn trim(&mut self);
    fn stored(self) -> Self::Stored;
}

macro_rules! kind {
    ($t:ty => $stored:ty, $key:ty, $field:ident, $change:ident, $trim:expr, $into:expr, |$o:ident| $k:expr) => {
        impl Kind for $t {
            type Key = $key;
            type Stored = $stored;
            fn key(&self) -> $key {
                let $o = self;
                $k
            }
            fn map(s: &mut ClusterSnapshot) -> &mut imbl::OrdMap<$key, Arc<$stored>> {
                &mut s.$field
            }
            fn map_and_log(s: &mut ClusterSnapshot) -> (&mut imbl::OrdMap<$key, Arc<$stored>>, &mut super::ChangeLog) {
                (&mut s.$field, &mut s.log)
            }
            fn changed(key: $key) -> Changed {
                Changed::$change(key)
            }
            fn trim(&mut self) {
                $trim(self)
            }
            fn stored(self) -> $stored {
                $into(self)
            }
        }
    };
    ($t:ty, $key:ty, $field:ident, $change:ident, $trim:ident, |$o:ident| $k:expr) => {
        kind!($t => $t, $key, $field, $change, $trim, std::convert::identity, |$o| $k);
    };
}
kind!(Node, String, nodes, Node, trim_node, |o| o.metadata.name.clone().unwrap_or_default());
kind!(Namespace, String, namespaces, Namespace, trim_namespace, |o| o.metadata.name.clone().unwrap_or_default());
// A Pod is converted, not trimmed: PodInfo keeps nothing else.
kind!(PodWire => PodInfo, (String, String), pods, Pod, |_: &mut PodWire| {}, PodInfo::from, |o| namespaced(&o.metadata));
kind!(Service, (String, String), services, Service, trim_service, |o| namespaced(&o.metadata));
// An EndpointSlice is converted too: SliceInfo keeps what the Services compiler reads.
kind!(EndpointSlice => SliceInfo, (String, String), endpoint_slices, EndpointSlice, |_: &mut EndpointSlice| {}, SliceInfo::from, |o| namespaced(&o.metadata));
kind!(NetworkPolicy, (String, String), network_policies, NetworkPolicy, trim_network_policy, |o| namespaced(
    &o.metadata
));

/// One change to the snapshot, from one kind's watcher.
struct Update {
    /// This kind's first complete list.
    first_list: bool,
    apply: Box<dyn FnOnce(&mut ClusterSnapshot) + Send>,
}

/// Runs one kind's watcher (kube-runtime: list, then watch; relist on 410 Gone; backoff on
/// errors) and turns its events into [`Update`]s. A relist is applied whole when it is complete,
/// so the snapshot never holds half a list.
fn reflect<K: Kind>(api: Api<K>, updates: mpsc::UnboundedSender<Update>)
where
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = watcher(api, watcher::Config::default()).default_backoff().modify(K::trim);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut relist: Option<imbl::OrdMap<K::Key, Arc<K::Stored>>> = None;
        let mut listed = false;
        while let Some(event) = stream.next().await {
            let mut first_list = false;
            let apply: Box<dyn FnOnce(&mut ClusterSnapshot) + Send> = match event {
                // An update that changes nothing the agent keeps (a status heartbeat, an
                // annotation) is no change at all.
                Ok(watcher::Event::Apply(o)) => Box::new(move |s| {
                    let (key, new) = (o.key(), Arc::new(o.stored()));
                    let (map, log) = K::map_and_log(s);
                    put(map, log, key, Some(new), K::changed)
                }),
                Ok(watcher::Event::Delete(o)) => Box::new(move |s| {
                    let (map, log) = K::map_and_log(s);
                    put(map, log, o.key(), None, K::changed)
                }),
                Ok(watcher::Event::Init) => {
                    relist = Some(Default::default());
                    continue;
                }
                Ok(watcher::Event::InitApply(o)) => {
                    relist.get_or_insert_default().insert(o.key(), Arc::new(o.stored()));
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    first_list = !listed;
                    listed = true;
                    let all = relist.take().unwrap_or_default();
                    Box::new(move |s| {
                        *K::map(s) = all;
                        s.log.record(Changed::All);
                    })
                }
                // The watcher retries (with backoff) by itself; the last snapshot stays in force.
                Err(e) => {
                    tracing::warn!(%kind, error = %e, "watch failed; retrying");
                    continue;
                }
            };
            if updates.send(Update { first_list, apply }).is_err() {
                return;
            }
        }
    });
}

/// Hands memory freed after the initial list (the list pages, the untrimmed objects) back to
/// the system. glibc keeps freed memory in per-thread arenas; without this, the peak of parsing
/// list pages stays in the agent's RSS for good.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps the cluster snapshot in `tx` up to date from the API server. The first snapshot is
/// published once every kind has been listed; after that every change is applied in place
/// (`send_modify`: no copy of the cluster per change) and receivers see the latest state.
/// Runs until `tx` has no receiver.
pub async fn watch_api(client: Client, tx: watch::Sender<Option<ClusterSnapshot>>) {
    let (updates, mut rx) = mpsc::unbounded_channel();
    reflect::<Node>(Api::all(client.clone()), updates.clone());
    reflect::<Namespace>(Api::all(client.clone()), updates.clone());
    reflect::<PodWire>(Api::all(client.clone()), updates.clone());
    reflect::<Service>(Api::all(client.clone()), updates.clone());
    reflect::<EndpointSlice>(Api::all(client.clone()), updates.clone());
    reflect::<NetworkPolicy>(Api::all(client), updates);

    let mut pending = ClusterSnapshot::default();
    let mut listed = 0;
    while listed < READS.len() {
        let Some(u) = rx.recv().await else { return };
        listed += usize::from(u.first_list);
        (u.apply)(&mut pending);
    }
    tracing::info!("Kubernetes API: initial list of every kind done");
    release_free_memory();
    if tx.send(Some(pending)).is_err() {
        return;
    }
    while let Some(u) = rx.recv().await {
        tx.send_modify(|s| {
            let s = s.get_or_insert_default();
            (u.apply)(s);
            // Whatever else has arrived goes in the same change.
            while let Ok(more) = rx.try_recv() {
                (more.apply)(s);
            }
        });
        if tx.is_closed() {
            return;
        }
    }
}

/// A client from `--kubeconfig`, or else the in-cluster service account (or `$KUBECONFIG`).
/// A client for the API server: from `kubeconfig`, else the in-cluster service account (or
/// `$KUBECONFIG`). With `api_server` (host, port: `--k8s-service-host`/`--k8s-service-port`)
/// that address replaces the configured one, keeping its scheme and credentials: without
/// kube-proxy the in-cluster address is the `kubernetes` Service's ClusterIP, which only weir's
/// own socket programs serve — and they are loaded only after the first complete list, so the
/// agent must reach the API server by its real address to start at all.
pub async fn client(kubeconfig: Option<&std::path::Path>, api_server: Option<(&str, u16)>) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("no in-cluster service account and no kubeconfig")?,
    };
    if let Some((host, port)) = api_server {
        let url = api_server_url(&config.cluster_url, host, port)?;
        tracing::info!(%url, "API server address from --k8s-service-host");
        config.cluster_url = url;
    }
    Client::try_from(config).context("building the Kubernetes client")
}

/// `url` with its host and port replaced (an IPv6 host is bracketed); scheme and path kept.
pub fn api_server_url(url: &http::Uri, host: &str, port: u16) -> anyhow::Result<http::Uri> {
    use anyhow::Context as _;
    let host = host.trim();
    anyhow::ensure!(!host.is_empty(), "--k8s-service-host is empty");
    let authority = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let scheme = url.scheme_str().unwrap_or("https");
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    format!("{scheme}://{authority}{path}")
        .parse()
        .with_context(|| format!("--k8s-service-host {host:?} --k8s-service-port {port}: not a valid address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<K: Resource<DynamicType = ()>>() -> (String, String) {
        (K::group(&()).into_owned(), K::plural(&()).into_owned())
    }

    #[test]
    fn reads_names_exactly_the_reflected_kinds() {
        let reflected = [
            read::<Node>(),
            read::<Namespace>(),
            read::<PodWire>(),
            read::<Service>(),
            read::<EndpointSlice>(),
            read::<NetworkPolicy>(),
        ];
        let reads = READS.map(|(g, r)| (g.to_owned(), r.to_owned()));
        assert_eq!(reflected, reads);
    }
}
