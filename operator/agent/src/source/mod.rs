//! Cluster state sources. Every source (the manifest directory, the Kubernetes API) delivers
//! complete [`ClusterSnapshot`]s over one channel; the agent does not care where they came from.
//! A source that reads something unusable logs it, naming the object, and keeps delivering the
//! last good state.
pub mod k8s;
pub mod manifest;

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};

/// Namespaced objects keyed by (namespace, name).
pub type Named<T> = BTreeMap<(String, String), T>;

/// Everything the agent knows about the cluster, keyed by name (namespace/name for pods).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterSnapshot {
    pub nodes: BTreeMap<String, Node>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: Named<Pod>,
    pub services: Named<Service>,
    pub endpoint_slices: Named<EndpointSlice>,
}

/// One parsed Kubernetes object that the agent understands.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterObject {
    Node(Box<Node>),
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    /// A kind the agent does not consume yet (Services, NetworkPolicies, ...): kept by name
    /// so that manifests holding them are still accepted.
    Other {
        kind: String,
        name: String,
    },
}

impl ClusterSnapshot {
    pub fn insert(&mut self, obj: ClusterObject) {
        match obj {
            ClusterObject::Node(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                self.nodes.insert(name, *n);
            }
            ClusterObject::Namespace(n) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                self.namespaces.insert(name, *n);
            }
            ClusterObject::Pod(p) => {
                let key = namespaced(&p.metadata);
                self.pods.insert(key, *p);
            }
            ClusterObject::Service(s) => {
                let key = namespaced(&s.metadata);
                self.services.insert(key, *s);
            }
            ClusterObject::EndpointSlice(s) => {
                let key = namespaced(&s.metadata);
                self.endpoint_slices.insert(key, *s);
            }
            ClusterObject::Other { .. } => {}
        }
    }
}

/// (namespace, name), the namespace defaulting to `default` as the API server does.
pub fn namespaced(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (m.namespace.clone().unwrap_or_else(|| "default".into()), m.name.clone().unwrap_or_default())
}
