//! Cluster state sources. Every source (the manifest directory, the Kubernetes API) delivers
//! complete [`ClusterSnapshot`]s over one channel; the agent does not care where they came from.
//! A source that reads something unusable logs it, naming the object, and keeps delivering the
//! last good state.
pub mod k8s;
pub mod manifest;
pub mod pod;

pub use pod::{NamedPort, PodInfo};

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};

/// Namespaced objects keyed by (namespace, name). Objects are shared (`Arc`): a snapshot is
/// cheap to build from the API source's stores and to keep beside the previous one, and two
/// snapshots holding the same object compare by pointer first.
pub type Named<T> = BTreeMap<(String, String), Arc<T>>;

/// Everything the agent knows about the cluster, keyed by name (namespace/name for pods).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterSnapshot {
    pub nodes: BTreeMap<String, Arc<Node>>,
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    /// Pods, slimmed to what the agent reads ([`PodInfo`]).
    pub pods: Named<PodInfo>,
    pub services: Named<Service>,
    pub endpoint_slices: Named<EndpointSlice>,
    /// Read and kept for NetworkPolicy enforcement; nothing consumes them yet.
    pub network_policies: Named<NetworkPolicy>,
}

/// One parsed Kubernetes object that the agent understands.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterObject {
    Node(Box<Node>),
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
    /// A kind the agent does not consume yet (Services, NetworkPolicies, ...): kept by name
    /// so that manifests holding them are still accepted.
    Other {
        kind: String,
        name: String,
    },
}

impl ClusterSnapshot {
    /// True when both hold the very same objects (same keys, same shared `Arc`s): what the API
    /// source uses to tell a real change from a no-op (a relist returning what it had), without
    /// comparing objects field by field.
    pub fn same_objects(&self, other: &Self) -> bool {
        fn same<K: PartialEq, T>(a: &BTreeMap<K, Arc<T>>, b: &BTreeMap<K, Arc<T>>) -> bool {
            a.len() == b.len() && a.iter().zip(b).all(|((ka, va), (kb, vb))| ka == kb && Arc::ptr_eq(va, vb))
        }
        same(&self.nodes, &other.nodes)
            && same(&self.namespaces, &other.namespaces)
            && same(&self.pods, &other.pods)
            && same(&self.services, &other.services)
            && same(&self.endpoint_slices, &other.endpoint_slices)
            && same(&self.network_policies, &other.network_policies)
    }

    pub fn insert(&mut self, obj: ClusterObject) {
        match obj {
            ClusterObject::Node(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                self.nodes.insert(name, Arc::from(n));
            }
            ClusterObject::Namespace(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                self.namespaces.insert(name, Arc::from(n));
            }
            ClusterObject::Pod(p) => {
                let key = namespaced(&p.metadata);
                self.pods.insert(key, Arc::new(PodInfo::from(*p)));
            }
            ClusterObject::Service(s) => {
                let key = namespaced(&s.metadata);
                self.services.insert(key, Arc::from(s));
            }
            ClusterObject::EndpointSlice(s) => {
                let key = namespaced(&s.metadata);
                self.endpoint_slices.insert(key, Arc::from(s));
            }
            ClusterObject::NetworkPolicy(p) => {
                let key = namespaced(&p.metadata);
                self.network_policies.insert(key, Arc::from(p));
            }
            ClusterObject::Other { .. } => {}
        }
    }
}

/// (namespace, name), the namespace defaulting to `default` as the API server does.
pub fn namespaced(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (m.namespace.clone().unwrap_or_else(|| "default".into()), m.name.clone().unwrap_or_default())
}
