//! Cluster state sources. Every source (the manifest directory now, the Kubernetes API later)
//! delivers complete [`ClusterSnapshot`]s over one channel; the agent does not care where they
//! came from. A source that reads something unusable logs it, naming the object, and keeps
//! delivering the last good state.
pub mod manifest;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};

/// Everything the agent knows about the cluster, keyed by name (namespace/name for pods).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterSnapshot {
    pub nodes: BTreeMap<String, Node>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<(String, String), Pod>,
}

/// One parsed Kubernetes object that the agent understands.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterObject {
    Node(Box<Node>),
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
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
                let ns = p.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                let name = p.metadata.name.clone().unwrap_or_default();
                self.pods.insert((ns, name), *p);
            }
            ClusterObject::Other { .. } => {}
        }
    }
}
