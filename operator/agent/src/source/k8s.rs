//! The Kubernetes API source: one reflector (kube-runtime watcher + store) per kind the agent
//! reads — Nodes, Namespaces, Pods, Services, EndpointSlices — feeding the same
//! [`ClusterSnapshot`] channel as the manifest directory. Read-only: the agent writes nothing to
//! the API server.
//!
//! * Objects are trimmed before they are stored: `managedFields`, annotations, owner references
//!   and every field the agent has no use for (a Node's image list, a Pod's volumes, conditions
//!   and container statuses, ...).
//! * The first snapshot is published only once every reflector has listed its kind, so the
//!   datapath (and CNI STATUS) is not ready before the agent has seen the whole cluster.
//! * Watches that fail are retried with kube-runtime's default backoff; a 410 Gone (expired
//!   resourceVersion) makes the watcher list again. Meanwhile the last snapshot stays in force,
//!   so the datapath keeps its state while the API server is unreachable.
//! * Bursts of events are coalesced: a snapshot is rebuilt at most every [`COALESCE`].
use std::{fmt::Debug, hash::Hash, sync::Arc, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, NodeSpec, NodeStatus, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt as _,
    },
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use super::{namespaced, ClusterSnapshot, PodInfo};

/// (API group, resource) of every kind the source reads: what the agent's RBAC must grant
/// (get/list/watch) and nothing more; deploy/kubernetes/rbac.yaml is tested against it.
pub const READS: [(&str, &str); 5] =
    [("", "nodes"), ("", "namespaces"), ("", "pods"), ("", "services"), ("discovery.k8s.io", "endpointslices")];

/// Events arriving closer together than this make one snapshot.
pub const COALESCE: Duration = Duration::from_millis(50);

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

/// A Pod as the agent reads it: [`PodInfo`] already holds only what the agent uses; its
/// metadata is trimmed like every other kind's.
pub fn trim_pod(p: &mut PodInfo) {
    trim_meta(&mut p.metadata);
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

pub fn trim_slice(s: &mut EndpointSlice) {
    trim_meta(&mut s.metadata);
    for e in &mut s.endpoints {
        e.hints = None;
        e.deprecated_topology = None;
    }
}

/// Starts one kind's reflector; every change (and every relist) pokes `changed`.
fn reflect<K>(api: Api<K>, trim: fn(&mut K), changed: Arc<Notify>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default()).default_backoff().modify(trim).reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                // The watcher retries (with backoff) by itself; the last snapshot stays in force.
                Err(e) => tracing::warn!(%kind, error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}

/// The five stores.
struct Stores {
    nodes: Store<Node>,
    namespaces: Store<Namespace>,
    pods: Store<PodInfo>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

impl Stores {
    fn start(client: &Client, changed: &Arc<Notify>) -> Self {
        Stores {
            nodes: reflect(Api::all(client.clone()), trim_node, changed.clone()),
            namespaces: reflect(Api::all(client.clone()), trim_namespace, changed.clone()),
            pods: reflect(Api::all(client.clone()), trim_pod, changed.clone()),
            services: reflect(Api::all(client.clone()), trim_service, changed.clone()),
            slices: reflect(Api::all(client.clone()), trim_slice, changed.clone()),
        }
    }

    /// Waits until every kind has been listed once.
    async fn ready(&self) {
        // A store's writer lives as long as its reflector task, which never ends on its own.
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
    }

    fn snapshot(&self) -> ClusterSnapshot {
        let mut s = ClusterSnapshot::default();
        for n in self.nodes.state() {
            s.nodes.insert(n.metadata.name.clone().unwrap_or_default(), n.clone());
        }
        for n in self.namespaces.state() {
            s.namespaces.insert(n.metadata.name.clone().unwrap_or_default(), n.clone());
        }
        for p in self.pods.state() {
            s.pods.insert(namespaced(&p.metadata), p.clone());
        }
        for v in self.services.state() {
            s.services.insert(namespaced(&v.metadata), v.clone());
        }
        for e in self.slices.state() {
            s.endpoint_slices.insert(namespaced(&e.metadata), e.clone());
        }
        s
    }
}

/// Publishes a snapshot of the cluster on `tx` after the initial list of every kind, then after
/// every change. Runs until `tx` has no receiver.
pub async fn watch_api(client: Client, tx: watch::Sender<Option<ClusterSnapshot>>) {
    let changed = Arc::new(Notify::new());
    let stores = Stores::start(&client, &changed);
    stores.ready().await;
    tracing::info!("Kubernetes API: initial list of every kind done");
    loop {
        let snap = stores.snapshot();
        let unchanged = tx.borrow().as_ref().is_some_and(|last| last.same_objects(&snap));
        if !unchanged && tx.send(Some(snap)).is_err() {
            return;
        }
        changed.notified().await;
        tokio::time::sleep(COALESCE).await;
    }
}

/// A client from `--kubeconfig`, or else the in-cluster service account (or `$KUBECONFIG`).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("no in-cluster service account and no kubeconfig")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read<K: Resource<DynamicType = ()>>() -> (String, String) {
        (K::group(&()).into_owned(), K::plural(&()).into_owned())
    }

    #[test]
    fn reads_names_exactly_the_reflected_kinds() {
        let reflected =
            [read::<Node>(), read::<Namespace>(), read::<PodInfo>(), read::<Service>(), read::<EndpointSlice>()];
        let reads = READS.map(|(g, r)| (g.to_owned(), r.to_owned()));
        assert_eq!(reflected, reads);
    }
}
