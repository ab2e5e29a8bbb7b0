//! EndpointSlices as the agent keeps them. There is one endpoint per backing pod, and
//! k8s-openapi's `Endpoint` is 352 bytes before any of its strings (a target reference, hints,
//! topology and zone the agent never reads), so at 10k pods the slices were the largest thing
//! the agent held. [`SliceInfo`] keeps what the Services compiler reads: the Service it belongs
//! to, its address type, its ports, and per endpoint its addresses, conditions and node.
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label that names an EndpointSlice's Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceInfo {
    /// The `kubernetes.io/service-name` label: the Service this slice belongs to.
    pub service: Option<Box<str>>,
    /// `IPv4`, `IPv6` or `FQDN`.
    pub address_type: Box<str>,
    pub ports: Box<[SlicePort]>,
    pub endpoints: Box<[EndpointInfo]>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Option<Box<str>>,
    pub port: Option<i32>,
    pub protocol: Option<Box<str>>,
}

/// One endpoint. Conditions stay as the API gave them: an absent one has a meaning of its own
/// (ready and serving count as true when unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    pub addresses: Box<[Box<str>]>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<Box<str>>,
}

impl From<EndpointSlice> for SliceInfo {
    fn from(s: EndpointSlice) -> Self {
        let service = s.metadata.labels.as_ref().and_then(|l| l.get(LABEL_SERVICE_NAME)).map(|n| n.as_str().into());
        let ports = s
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| SlicePort { name: p.name.map(Into::into), port: p.port, protocol: p.protocol.map(Into::into) })
            .collect();
        let endpoints = s
            .endpoints
            .into_iter()
            .map(|e| {
                let c = e.conditions.unwrap_or_default();
                EndpointInfo {
                    addresses: e.addresses.into_iter().map(Into::into).collect(),
                    ready: c.ready,
                    serving: c.serving,
                    terminating: c.terminating,
                    node_name: e.node_name.map(Into::into),
                }
            })
            .collect();
        SliceInfo { service, address_type: s.address_type.into(), ports, endpoints }
    }
}
