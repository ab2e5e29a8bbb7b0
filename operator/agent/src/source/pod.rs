//! [`PodInfo`]: a Pod as the agent keeps it. k8s-openapi's `Pod` is over 2 KiB before any of its
//! strings (and each `Container` another 2 KiB), so at 10k pods the generated type alone would
//! cost tens of MiB; this one holds only what the agent reads — identity and labels, node, host
//! networking, named container ports (which NetworkPolicies may name), addresses and phase — in
//! the API's own JSON shape, so the API source deserializes list pages and watch events straight
//! into it (everything else is skipped while parsing) and the manifest source converts to it.
use std::borrow::Cow;

use k8s_openapi::{
    api::core::v1::{ContainerPort, Pod, PodIP},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PodInfo {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodInfoSpec,
    #[serde(default)]
    pub status: PodInfoStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfoSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    #[serde(default)]
    pub containers: Vec<PodInfoContainer>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PodInfoContainer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfoStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIP>,
}

impl From<Pod> for PodInfo {
    fn from(p: Pod) -> Self {
        let spec = p.spec.unwrap_or_default();
        let status = p.status.unwrap_or_default();
        PodInfo {
            metadata: p.metadata,
            spec: PodInfoSpec {
                node_name: spec.node_name,
                host_network: spec.host_network,
                containers: spec
                    .containers
                    .into_iter()
                    .map(|c| PodInfoContainer { name: c.name, ports: c.ports.unwrap_or_default() })
                    .collect(),
            },
            status: PodInfoStatus {
                phase: status.phase,
                pod_ip: status.pod_ip,
                pod_ips: status.pod_ips.unwrap_or_default(),
            },
        }
    }
}

impl kube::Resource for PodInfo {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
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
        "metadata":{"name":"web","namespace":"shop","labels":{"app":"web"},"managedFields":[{"manager":"kubelet"}]},
        "spec":{"nodeName":"n1","containers":[{"name":"c","image":"srv","ports":[{"name":"http","containerPort":8080}],
                "env":[{"name":"A","value":"b"}]}],"volumes":[{"name":"v","emptyDir":{}}]},
        "status":{"phase":"Running","podIP":"10.244.1.2","podIPs":[{"ip":"10.244.1.2"}],"conditions":[{"type":"Ready","status":"True"}]}}"#;

    #[test]
    fn reads_the_api_shape_and_matches_the_converted_pod() {
        let direct: PodInfo = serde_json::from_str(POD).expect("PodInfo from API JSON");
        let full: Pod = serde_json::from_str(POD).expect("Pod");
        let mut converted = PodInfo::from(full);
        // The API source strips managedFields before storing; compare what both keep.
        converted.metadata.managed_fields = None;
        let mut direct_trimmed = direct.clone();
        direct_trimmed.metadata.managed_fields = None;
        assert_eq!(direct_trimmed, converted);
        assert_eq!(direct.spec.node_name.as_deref(), Some("n1"));
        assert_eq!(direct.spec.containers[0].ports[0].name.as_deref(), Some("http"));
        assert_eq!(direct.status.pod_ips[0].ip, "10.244.1.2");
    }

    #[test]
    fn is_small() {
        assert!(std::mem::size_of::<PodInfo>() < 512, "{}", std::mem::size_of::<PodInfo>());
    }
}
