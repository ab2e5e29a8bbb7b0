//! Pods as the agent keeps them. k8s-openapi's `Pod` is over 2 KiB before any of its strings (and
//! each `Container` another 2 KiB), and even its `ObjectMeta` allocates a full B-tree node for a
//! handful of labels. A cluster has far more Pods than anything else, so they get two types of
//! their own:
//!
//! * [`PodWire`]: what the API source's watcher deserializes list pages and watch events into —
//!   the API's JSON shape, only the fields the agent reads (everything else is skipped while
//!   parsing);
//! * [`PodInfo`]: what the snapshot holds — identity, labels, node, host networking, named
//!   container ports (NetworkPolicies may name them), addresses, phase, the workload that owns
//!   it (flow enrichment) — in boxed slices and strings, about 1 KiB per pod with its
//!   allocations.

use k8s_openapi::{
    api::core::v1::{ContainerPort, Pod, PodIP},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::Deserialize;

/// A Pod as stored in the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub name: Box<str>,
    pub namespace: Box<str>,
    /// `metadata.uid`: tells a pod from an earlier one of the same name (empty when unknown).
    pub uid: Box<str>,
    /// Sorted by key.
    pub labels: Box<[(Box<str>, Box<str>)]>,
    pub node_name: Option<Box<str>>,
    pub host_network: bool,
    /// `status.phase` is Succeeded or Failed: its containers are done, its address is free.
    pub finished: bool,
    /// `status.podIPs` (or `status.podIP` when that is all there is).
    pub ips: Box<[Box<str>]>,
    /// Container ports that have a name.
    pub named_ports: Box<[NamedPort]>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// What many pods lack, boxed so that a pod without it pays one pointer: the workload and
    /// the host ports.
    pub extra: Option<Box<PodExtra>>,
}

/// A pod's workload: its controller (`kind`, `name`), except that a ReplicaSet that a
/// Deployment made (its name is the Deployment's plus `-` and the pod's `pod-template-hash`)
/// is reported as that Deployment, as `kubectl` users think of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub kind: Box<str>,
    pub name: Box<str>,
}

impl Workload {
    fn of(meta: &ObjectMeta) -> Option<Workload> {
        let owner = meta.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))?;
        let hash = meta.labels.as_ref().and_then(|l| l.get("pod-template-hash"));
        let deployment = hash.and_then(|h| owner.name.strip_suffix(h.as_str())?.strip_suffix('-'));
        let (kind, name) = match deployment {
            Some(d) if owner.kind == "ReplicaSet" && !d.is_empty() => ("Deployment", d),
            _ => (owner.kind.as_str(), owner.name.as_str()),
        };
        Some(Workload { kind: kind.into(), name: name.into() })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodExtra {
    /// The workload that runs the pod, from its controller owner reference.
    pub workload: Option<Workload>,
    /// Container ports with a `hostPort` (served on the pod's node's addresses).
    pub host_ports: Box<[HostPort]>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamedPort {
    pub name: Box<str>,
    pub port: i32,
    /// TCP, UDP or SCTP (TCP when the Pod does not say).
    pub protocol: Box<str>,
}

/// A container port published on the node (`hostPort`), as the Pod spec says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host_port: i32,
    pub container_port: i32,
    /// TCP, UDP or SCTP (TCP when the Pod does not say).
    pub protocol: Box<str>,
    /// `hostIP`: one node address to publish on (empty: all of them).
    pub host_ip: Box<str>,
}

impl PodInfo {
    pub fn workload(&self) -> Option<&Workload> {
        self.extra.as_ref()?.workload.as_ref()
    }

    pub fn host_ports(&self) -> &[HostPort] {
        self.extra.as_ref().map_or(&[], |e| &e.host_ports)
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.binary_search_by(|(k, _)| (**k).cmp(key)).ok().map(|i| &*self.labels[i].1)
    }

    fn build(
        meta: ObjectMeta,
        node_name: Option<String>,
        host_network: Option<bool>,
        ports: impl Iterator<Item = ContainerPort>,
        phase: Option<String>,
        pod_ip: Option<String>,
        pod_ips: Vec<PodIP>,
    ) -> Self {
        let mut ips: Vec<Box<str>> = pod_ips.into_iter().map(|p| p.ip.into()).collect();
        if ips.is_empty() {
            ips.extend(pod_ip.map(Into::into));
        }
        let workload = Workload::of(&meta);
        let ports: Vec<ContainerPort> = ports.collect();
        let host_ports: Box<[HostPort]> = ports
            .iter()
            .filter(|p| p.host_port.is_some_and(|h| h != 0))
            .map(|p| HostPort {
                host_port: p.host_port.unwrap_or_default(),
                container_port: p.container_port,
                protocol: p.protocol.as_deref().unwrap_or("TCP").into(),
                host_ip: p.host_ip.as_deref().unwrap_or_default().into(),
            })
            .collect();
        let extra = (workload.is_some() || !host_ports.is_empty()).then(|| Box::new(PodExtra { workload, host_ports }));
        PodInfo {
            extra,
            name: meta.name.unwrap_or_default().into(),
            namespace: meta.namespace.unwrap_or_else(|| "default".into()).into(),
            uid: meta.uid.unwrap_or_default().into(),
            // A BTreeMap iterates in key order: the slice is sorted.
            labels: meta.labels.unwrap_or_default().into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            node_name: node_name.map(Into::into),
            host_network: host_network.unwrap_or(false),
            finished: matches!(phase.as_deref(), Some("Succeeded" | "Failed")),
            ips: ips.into(),
            named_ports: ports
                .into_iter()
                .filter_map(|p| {
                    Some(NamedPort {
                        name: p.name?.into(),
                        port: p.container_port,
                        protocol: p.protocol.unwrap_or_else(|| "TCP".into()).into(),
                    })
                })
                .collect(),
            deleting: meta.deletion_timestamp.is_some(),
        }
    }
}

impl From<Pod> for PodInfo {
    fn from(p: Pod) -> Self {
        let spec = p.spec.unwrap_or_default();
        let status = p.status.unwrap_or_default();
        PodInfo::build(
            p.metadata,
            spec.node_name,
            spec.host_network,
            spec.containers.into_iter().flat_map(|c| c.ports.unwrap_or_default()),
            status.phase,
            status.pod_ip,
            status.pod_ips.unwrap_or_default(),
        )
    }
}

/// A Pod as the watcher reads it from the API: only the fields [`PodInfo`] is made of.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodWire {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    spec: WireSpec,
    #[serde(default)]
    status: WireStatus,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    host_network: Option<bool>,
    #[serde(default)]
    containers: Vec<WireContainer>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct WireContainer {
    #[serde(default)]
    ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct WireStatus {
    #[serde(default)]
    phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<PodIP>,
}

impl From<PodWire> for PodInfo {
    fn from(p: PodWire) -> Self {
        PodInfo::build(
            p.metadata,
            p.spec.node_name,
            p.spec.host_network,
            p.spec.containers.into_iter().flat_map(|c| c.ports),
            p.status.phase,
            p.status.pod_ip,
            p.status.pod_ips,
        )
    }
}

#[cfg(feature = "kubernetes")]
impl kube::Resource for PodWire {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed("Pod")
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed("")
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed("pods")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"{"apiVersion":"v1","kind":"Pod",
        "metadata":{"name":"web","namespace":"shop","uid":"7d1c","labels":{"tier":"front","app":"web"},"managedFields":[{"manager":"kubelet"}]},
        "spec":{"nodeName":"n1","containers":[{"name":"c","image":"srv","ports":[{"name":"http","containerPort":8080},{"containerPort":9}],
                "env":[{"name":"A","value":"b"}]}],"volumes":[{"name":"v","emptyDir":{}}]},
        "status":{"phase":"Running","podIP":"10.244.1.2","podIPs":[{"ip":"10.244.1.2"}],"conditions":[{"type":"Ready","status":"True"}]}}"#;

    #[test]
    fn the_wire_shape_and_a_full_pod_give_the_same_info() {
        let wire: PodWire = serde_json::from_str(POD).expect("PodWire from API JSON");
        let full: Pod = serde_json::from_str(POD).expect("Pod");
        let info = PodInfo::from(wire);
        assert_eq!(info, PodInfo::from(full));
        assert_eq!((&*info.namespace, &*info.name, &*info.uid), ("shop", "web", "7d1c"));
        assert_eq!(info.label("app"), Some("web"));
        assert_eq!(info.label("tier"), Some("front"));
        assert_eq!(info.label("none"), None);
        assert_eq!(info.node_name.as_deref(), Some("n1"));
        assert_eq!(&*info.named_ports, [NamedPort { name: "http".into(), port: 8080, protocol: "TCP".into() }]);
        assert_eq!(&*info.ips, ["10.244.1.2".into()]);
        assert!(!info.deleting && !info.host_network);
    }

    #[test]
    fn the_workload_is_the_controller_and_a_deployments_replicaset_is_the_deployment() {
        let pod = |owners: &str, hash: &str| -> PodInfo {
            let j = format!(
                r#"{{"metadata":{{"name":"p","labels":{{"pod-template-hash":"{hash}"}},"ownerReferences":{owners}}}}}"#
            );
            PodInfo::from(serde_json::from_str::<PodWire>(&j).expect("pod"))
        };
        let owner = |kind: &str, name: &str, controller: bool| {
            format!(
                r#"[{{"apiVersion":"apps/v1","kind":"{kind}","name":"{name}","uid":"u","controller":{controller}}}]"#
            )
        };
        let w = |p: PodInfo| p.workload().map(|w| (w.kind.to_string(), w.name.to_string()));
        let pair = |k: &str, n: &str| Some((k.to_owned(), n.to_owned()));
        assert_eq!(w(pod(&owner("ReplicaSet", "web-5d8f7c9b6", true), "5d8f7c9b6")), pair("Deployment", "web"));
        assert_eq!(w(pod(&owner("ReplicaSet", "web-abc", true), "5d8f7c9b6")), pair("ReplicaSet", "web-abc"));
        assert_eq!(w(pod(&owner("StatefulSet", "pg", true), "x")), pair("StatefulSet", "pg"));
        assert_eq!(w(pod(&owner("DaemonSet", "agent", false), "x")), None, "not the controller");
        assert_eq!(w(pod("[]", "x")), None);
    }

    #[test]
    fn is_small() {
        assert!(std::mem::size_of::<PodInfo>() <= 128, "{}", std::mem::size_of::<PodInfo>());
    }
}
