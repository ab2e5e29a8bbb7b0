//! Hubble-compatible gRPC: the `observer.Observer` service (`GetFlows`, `ServerStatus`) over a
//! unix socket (`--observer-socket`), and on TCP only when asked and only on loopback
//! (`--observer-addr`). Messages follow Hubble's field numbers (proto/), so Hubble's clients can
//! read weir's flows.
//!
//! `GetFlows` keeps Hubble's semantics: a flow passes when it matches any `whitelist` filter (or
//! there is none) and no `blacklist` filter; inside a filter every set field must match, and a
//! field matches when any of its entries does. Filters are compiled once per request
//! ([`Selection`]). HTTP filters follow Hubble: status `NNN` or a prefix with `+`, method (any case),
//! path as a regular expression over the URL path. Filter fields weir cannot evaluate (FQDNs, UUIDs, trace ids) are
//! refused with `InvalidArgument`, never silently ignored. Event sub-types are Cilium's (drop
//! reason, trace observation point); following with neither a number nor a start time sends
//! new flows only. Events the kernel lost are announced as a `LostEvent` first; a follower
//! that falls behind gets a `LostEvent` with how many it missed.
use std::{
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};
use weir_operator_api::flow::{
    http_status_matches, label_selector_matches, Cidr, Flow, FlowType, L7Type, NameRule, ObservationPoint,
    TrafficDirection, Verdict,
};

use crate::{
    observe::{flows::SharedFlowStore, mask::FieldMask},
    serve::view::{latest, SharedView},
};

pub mod proto {
    #![allow(clippy::all, missing_docs)]
    pub mod flow {
        tonic::include_proto!("flow");
    }
    pub mod observer {
        tonic::include_proto!("observer");
    }
    pub mod relay {
        tonic::include_proto!("relay");
    }
}

use proto::{
    flow as pb,
    observer::{
        get_flows_response::ResponseTypes,
        observer_server::{Observer, ObserverServer},
        GetFlowsRequest, GetFlowsResponse, GetNamespacesRequest, GetNamespacesResponse, GetNodesRequest,
        GetNodesResponse, Namespace, Node, ServerStatusRequest, ServerStatusResponse,
    },
    relay::NodeState,
};

/// What the observer says its version is (ServerStatus, GetNodes).
pub fn version() -> String {
    format!("weir {}", env!("CARGO_PKG_VERSION"))
}

/// The header in which a node's observer names the Hubble API it serves (Hubble's key).
pub const SERVER_VERSION_KEY: &str = "hubble-server-version";
/// The same, from a relay.
pub const RELAY_VERSION_KEY: &str = "hubble-relay-version";

/// The Hubble API weir serves, as Hubble's clients read it from the version headers (semver,
/// compared up to the minor version): the release weir targets, with weir's own version as
/// build metadata, e.g. `1.19.4+weir.0.1.0`.
pub fn api_version() -> String {
    format!("{}+weir.{}", super::hubble_api::HUBBLE_VERSION, env!("CARGO_PKG_VERSION"))
}

/// An answer with the version header `key`.
pub fn answer<T>(key: &'static str, message: T) -> Response<T> {
    let mut r = Response::new(message);
    if let Ok(v) = api_version().parse() {
        r.metadata_mut().insert(key, v);
    }
    r
}

/// A node that answered, as GetNodes lists it: its name, where it is reached, its status.
pub fn connected_node(name: String, address: String, s: ServerStatusResponse) -> Node {
    Node {
        name,
        version: s.version,
        address,
        state: NodeState::NodeConnected as i32,
        tls: None,
        uptime_ns: s.uptime_ns,
        num_flows: s.num_flows,
        max_flows: s.max_flows,
        seen_flows: s.seen_flows,
    }
}

/// How far back GetNamespaces looks in the stored flows (as Hubble: an hour).
pub const NAMESPACES_WINDOW_NS: u64 = 3_600_000_000_000;

/// Namespaces as GetNamespaces returns them: sorted, each once, without the empty one.
pub fn namespace_list<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Namespace> {
    let set: std::collections::BTreeSet<&str> = names.into_iter().filter(|n| !n.is_empty()).collect();
    set.into_iter().map(|n| Namespace { cluster: String::new(), namespace: n.to_owned() }).collect()
}

fn timestamp(unix_ns: u64) -> pb::Timestamp {
    pb::Timestamp { seconds: (unix_ns / 1_000_000_000) as i64, nanos: (unix_ns % 1_000_000_000) as i32 }
}

fn ts_ns(t: &pb::Timestamp) -> u64 {
    (t.seconds.max(0) as u64).saturating_mul(1_000_000_000).saturating_add(t.nanos.max(0) as u64)
}

/// weir's drop reason label → Hubble's drop reason code.
/// The event's sub-type as Cilium sends it, from which Hubble's clients print the TYPE column and
/// match `-t drop:…`/`-t trace:…`: a drop's reason code (133 policy denied); a trace's
/// observation point (monitor API: 0 to-endpoint, 5 from-endpoint); 0 otherwise.
pub fn sub_type(f: &Flow) -> i32 {
    const TRACE_TO_LXC: i32 = 0;
    const TRACE_FROM_LXC: i32 = 5;
    match f.event_type.kind {
        1 => drop_reason_code(&f.weir.drop_reason) as i32,
        4 => match f.trace_observation_point {
            Some(ObservationPoint::FromEndpoint) => TRACE_FROM_LXC,
            _ => TRACE_TO_LXC,
        },
        _ => 0,
    }
}

pub fn drop_reason_code(label: &str) -> pb::DropReason {
    use pb::DropReason as D;
    match label {
        "malformed" => D::InvalidPacketDropped,
        "unsupported_l3" => D::UnsupportedL3Protocol,
        "spoofed_source" => D::InvalidSourceIp,
        "no_route" => D::FibLookupFailed,
        "nat_ports_exhausted" => D::NoMappingForNatMasquerade,
        "unknown_cluster_destination" => D::StaleOrUnroutableIp,
        "rewrite_failed" => D::ErrorWritingToPacket,
        "fragmented" => D::IpFragmentationNotSupported,
        "nat_unsupported_protocol" => D::UnsupportedProtocolForNatMasquerade,
        "tail_call_failed" => D::MissedTailCall,
        "policy_denied_ingress" | "policy_denied_egress" => D::PolicyDenied,
        "policy_fail_closed" => D::NoConfigurationAvailableToPerformPolicyDecision,
        _ => D::Unknown,
    }
}

fn endpoint(e: &weir_operator_api::flow::Endpoint) -> pb::Endpoint {
    pb::Endpoint {
        id: 0,
        identity: e.identity,
        namespace: e.namespace.clone(),
        labels: e.labels.clone(),
        pod_name: e.pod_name.clone(),
        workloads: e.workloads.iter().map(|w| pb::Workload { name: w.name.clone(), kind: w.kind.clone() }).collect(),
    }
}

fn policies(v: &[weir_operator_api::flow::Policy]) -> Vec<pb::Policy> {
    v.iter()
        .map(|p| pb::Policy {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            labels: vec![],
            revision: 0,
            kind: "NetworkPolicy".into(),
        })
        .collect()
}

fn verdict_code(f: &Flow) -> i32 {
    let v = match f.verdict {
        Verdict::Unknown => pb::Verdict::Unknown,
        Verdict::Forwarded => pb::Verdict::Forwarded,
        Verdict::Dropped => pb::Verdict::Dropped,
        Verdict::Translated => pb::Verdict::Translated,
    };
    v as i32
}

fn service(s: Option<&weir_operator_api::flow::Service>) -> Option<pb::Service> {
    s.map(|s| pb::Service { name: s.name.clone(), namespace: s.namespace.clone() })
}

fn direction_code(f: &Flow) -> i32 {
    let d = match f.traffic_direction {
        TrafficDirection::Ingress => pb::TrafficDirection::Ingress,
        TrafficDirection::Egress => pb::TrafficDirection::Egress,
        TrafficDirection::Unknown => pb::TrafficDirection::Unknown,
    };
    d as i32
}

fn ip_version_code(f: &Flow) -> i32 {
    let v = if f.ip.ip_version == "IPv6" { pb::IpVersion::IPv6 } else { pb::IpVersion::IPv4 };
    v as i32
}

/// The wire form of a flow.
pub fn to_proto(f: &Flow) -> pb::Flow {
    let l4 = if let Some(t) = &f.l4.tcp {
        Some(pb::layer4::Protocol::Tcp(pb::Tcp {
            source_port: u32::from(t.source_port),
            destination_port: u32::from(t.destination_port),
            flags: Some(pb::TcpFlags {
                fin: t.flags.fin,
                syn: t.flags.syn,
                rst: t.flags.rst,
                psh: t.flags.psh,
                ack: t.flags.ack,
            }),
        }))
    } else if let Some(u) = &f.l4.udp {
        Some(pb::layer4::Protocol::Udp(pb::Udp {
            source_port: u32::from(u.source_port),
            destination_port: u32::from(u.destination_port),
        }))
    } else {
        f.l4.icmpv4
            .as_ref()
            .map(|i| pb::layer4::Protocol::IcmPv4(pb::IcmPv4 { r#type: u32::from(i.kind), code: u32::from(i.code) }))
    };
    let l7 = f.l7.as_ref().map(|l| pb::Layer7 {
        r#type: match l.kind {
            L7Type::Request => pb::L7FlowType::Request,
            L7Type::Response => pb::L7FlowType::Response,
            L7Type::Malformed => pb::L7FlowType::UnknownL7Type,
        } as i32,
        latency_ns: l.latency_ns,
        record: match (&l.dns, &l.http) {
            (_, Some(h)) => Some(pb::layer7::Record::Http(pb::Http {
                code: h.code,
                method: h.method.clone(),
                url: h.url.clone(),
                protocol: h.protocol.clone(),
                headers: h
                    .headers
                    .iter()
                    .map(|x| pb::HttpHeader { key: x.key.clone(), value: x.value.clone() })
                    .collect(),
            })),
            (Some(d), None) => Some(pb::layer7::Record::Dns(pb::Dns {
                query: d.query.clone(),
                ips: d.ips.clone(),
                ttl: d.ttl,
                cnames: d.cnames.clone(),
                observation_source: d.observation_source.clone(),
                rcode: d.rcode,
                qtypes: d.qtypes.clone(),
                rrtypes: d.rrtypes.clone(),
            })),
            (None, None) => None,
        },
    });
    let dropped = f.verdict == Verdict::Dropped;
    let reason = drop_reason_code(&f.weir.drop_reason);
    pb::Flow {
        time: Some(timestamp(f.weir.unix_ns)),
        verdict: verdict_code(f),
        drop_reason: if dropped { reason as u32 } else { 0 },
        ip: Some(pb::Ip {
            source: f.ip.source.clone(),
            destination: f.ip.destination.clone(),
            ip_version: ip_version_code(f),
        }),
        l4: Some(pb::Layer4 { protocol: l4 }),
        source: Some(endpoint(&f.source)),
        destination: Some(endpoint(&f.destination)),
        source_service: service(f.source_service.as_ref()),
        destination_service: service(f.destination_service.as_ref()),
        r#type: match f.kind {
            FlowType::Unknown => pb::FlowType::UnknownType,
            FlowType::L3L4 => pb::FlowType::L3L4,
            FlowType::L7 => pb::FlowType::L7,
        } as i32,
        node_name: f.node_name.clone(),
        l7,
        reply: f.is_reply,
        event_type: Some(pb::CiliumEventType { r#type: f.event_type.kind as i32, sub_type: sub_type(f) }),
        policy_match_type: f.policy_match_type,
        traffic_direction: direction_code(f),
        trace_observation_point: match f.trace_observation_point {
            Some(ObservationPoint::FromEndpoint) => pb::TraceObservationPoint::FromEndpoint,
            Some(ObservationPoint::ToEndpoint) => pb::TraceObservationPoint::ToEndpoint,
            None => pb::TraceObservationPoint::UnknownPoint,
        } as i32,
        drop_reason_desc: if dropped { reason as i32 } else { 0 },
        is_reply: Some(pb::BoolValue { value: f.is_reply }),
        interface: None,
        egress_allowed_by: policies(&f.egress_allowed_by),
        ingress_allowed_by: policies(&f.ingress_allowed_by),
        egress_denied_by: policies(&f.egress_denied_by),
        ingress_denied_by: policies(&f.ingress_denied_by),
        summary: f.summary.clone(),
    }
}

/// A Hubble `FlowFilter`, checked and compiled once per request: addresses parsed, ports as
/// numbers, protocols as kinds, DNS patterns as regexes. Matching a flow then allocates nothing
/// and parses nothing, which matters because it runs for every stored flow under the store's
/// lock, and for every new flow of every follower.
#[derive(Debug)]
pub struct HubbleFilter {
    raw: pb::FlowFilter,
    source_ip: Vec<Cidr>,
    destination_ip: Vec<Cidr>,
    source_port: Vec<u16>,
    destination_port: Vec<u16>,
    protocol: Vec<ProtocolSel>,
    dns_query: Vec<regex_lite::Regex>,
    http_path: Vec<regex_lite::Regex>,
    http_url: Vec<regex_lite::Regex>,
}

/// What a Hubble `protocol` entry selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProtocolSel {
    Tcp,
    Udp,
    Icmp,
    Dns,
    Http,
}

impl HubbleFilter {
    /// Refuses fields weir cannot evaluate, by name, and malformed values.
    pub fn compile(raw: pb::FlowFilter) -> Result<Self, String> {
        // Hubble 1.19's fields weir cannot evaluate, and why: refused, never ignored.
        let cel = raw.experimental.as_ref().is_some_and(|e| !e.cel_expression.is_empty());
        let unsupported = [
            ("uuid", !raw.uuid.is_empty(), "flows carry no UUID"),
            ("source_fqdn", !raw.source_fqdn.is_empty(), "flows carry no DNS names of their addresses"),
            ("destination_fqdn", !raw.destination_fqdn.is_empty(), "flows carry no DNS names of their addresses"),
            ("trace_id", !raw.trace_id.is_empty(), "no trace context is read from requests"),
            ("source_ip_xlated", !raw.source_ip_xlated.is_empty(), "flows carry no translated source address"),
            ("interface", !raw.interface.is_empty(), "flows carry no interface"),
            ("node_labels", !raw.node_labels.is_empty(), "flows carry no node labels"),
            ("source_cluster_name", !raw.source_cluster_name.is_empty(), "weir has no cluster names (no cluster mesh)"),
            (
                "destination_cluster_name",
                !raw.destination_cluster_name.is_empty(),
                "weir has no cluster names (no cluster mesh)",
            ),
            ("ip_trace_id", !raw.ip_trace_id.is_empty(), "weir does not read IP trace options"),
            ("experimental.cel_expression", cel, "CEL expressions are not evaluated"),
        ];
        if let Some((name, _, why)) = unsupported.iter().find(|(_, set, _)| *set) {
            return Err(format!("flow filter field {name} is not supported by weir: {why}"));
        }
        let cidrs = |v: &[String]| v.iter().map(|c| Cidr::parse(c)).collect::<Result<Vec<_>, _>>();
        let ports = |v: &[String]| {
            v.iter()
                .map(|p| p.parse::<u16>().map_err(|_| format!("port {p:?} is not a port number")))
                .collect::<Result<Vec<_>, _>>()
        };
        let protocol = raw
            .protocol
            .iter()
            .map(|p| match p.to_ascii_lowercase().as_str() {
                "tcp" => Ok(ProtocolSel::Tcp),
                "udp" => Ok(ProtocolSel::Udp),
                "icmp" | "icmpv4" => Ok(ProtocolSel::Icmp),
                "dns" => Ok(ProtocolSel::Dns),
                "http" => Ok(ProtocolSel::Http),
                _ => Err(format!("protocol {p:?}: weir knows tcp, udp, icmp, dns and http")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dns_query = raw
            .dns_query
            .iter()
            .map(|q| regex_lite::Regex::new(q).map_err(|e| format!("dns_query {q:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        for c in &raw.http_status_code {
            weir_operator_api::flow::http_status_valid(c).map_err(|e| format!("http_status_code: {e}"))?;
        }
        let http_path = raw
            .http_path
            .iter()
            .map(|q| regex_lite::Regex::new(q).map_err(|e| format!("http_path {q:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let http_url = raw
            .http_url
            .iter()
            .map(|q| regex_lite::Regex::new(q).map_err(|e| format!("http_url {q:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HubbleFilter {
            http_path,
            http_url,
            source_ip: cidrs(&raw.source_ip)?,
            destination_ip: cidrs(&raw.destination_ip)?,
            source_port: ports(&raw.source_port)?,
            destination_port: ports(&raw.destination_port)?,
            protocol,
            dns_query,
            raw,
        })
    }

    /// Does `f` match every set field? A field matches when any of its entries does.
    pub fn matches(&self, f: &Flow) -> bool {
        let r = &self.raw;
        let (sport, dport) = f.ports();
        let (verdict, direction, ip_version) = (verdict_code(f), direction_code(f), ip_version_code(f));
        let tcp = f.l4.tcp.as_ref().map(|t| &t.flags);
        let pod = NameRule::Prefix;
        any(&self.source_ip, |c| c.contains(&f.ip.source))
            && any(&self.destination_ip, |c| c.contains(&f.ip.destination))
            && any(&r.source_pod, |p| pod.pod(p, &f.source))
            && any(&r.destination_pod, |p| pod.pod(p, &f.destination))
            && any(&r.source_workload, |w| workload_matches(w, &f.source))
            && any(&r.destination_workload, |w| workload_matches(w, &f.destination))
            && any(&r.source_service, |s| pod.service(s, f.source_service.as_ref()))
            && any(&r.destination_service, |s| pod.service(s, f.destination_service.as_ref()))
            && any(&r.source_label, |s| label_selector_matches(s, &f.source.labels))
            && any(&r.destination_label, |s| label_selector_matches(s, &f.destination.labels))
            && any(&r.traffic_direction, |d| *d == direction)
            && any(&r.verdict, |v| *v == verdict)
            && any(&r.event_type, |e| {
                e.r#type == f.event_type.kind as i32 && (!e.match_sub_type || e.sub_type == sub_type(f))
            })
            && any(&self.protocol, |p| match p {
                ProtocolSel::Dns => f.l7.as_ref().is_some_and(|l| l.dns.is_some()),
                ProtocolSel::Http => f.http().is_some(),
                ProtocolSel::Icmp => f.protocol() == "icmp",
                ProtocolSel::Tcp => f.protocol() == "tcp" && f.l7.is_none(),
                ProtocolSel::Udp => f.protocol() == "udp" && f.l7.is_none(),
            })
            && any(&self.source_port, |p| *p == sport)
            && any(&self.destination_port, |p| *p == dport)
            && any(&r.reply, |x| *x == f.is_reply)
            && any(&self.dns_query, |re| f.l7.as_ref().is_some_and(|l| l.dns.is_some() && re.is_match(l.dns_query())))
            && any(&r.http_status_code, |c| f.http().is_some_and(|h| http_status_matches(c, h.code)))
            && any(&r.http_method, |m| f.http().is_some_and(|h| h.method.eq_ignore_ascii_case(m)))
            && any(&self.http_path, |re| f.http().is_some_and(|h| re.is_match(h.path())))
            && any(&self.http_url, |re| f.http().is_some_and(|h| !h.url.is_empty() && re.is_match(&h.url)))
            && any(&r.http_header, |want| {
                f.http().is_some_and(|h| h.headers.iter().any(|x| x.key == want.key && x.value == want.value))
            })
            && any(&r.drop_reason_desc, |d| {
                f.verdict == Verdict::Dropped && *d == drop_reason_code(&f.weir.drop_reason) as i32
            })
            // weir encrypts nothing: every flow is unencrypted.
            && any(&r.encrypted, |e| !*e)
            && any(&r.source_identity, |i| *i == f.source.identity)
            && any(&r.destination_identity, |i| *i == f.destination.identity)
            && any(&r.tcp_flags, |want| {
                tcp.is_some_and(|have| {
                    (!want.syn || have.syn)
                        && (!want.ack || have.ack)
                        && (!want.fin || have.fin)
                        && (!want.rst || have.rst)
                        && (!want.psh || have.psh)
                })
            })
            && any(&r.node_name, |n| match n.strip_suffix('*') {
                Some(prefix) => f.node_name.starts_with(prefix),
                None => &f.node_name == n,
            })
            && any(&r.ip_version, |v| *v == ip_version)
    }
}

/// Hubble's workload filter: the fields it sets (name, kind) equal one of the endpoint's.
fn workload_matches(want: &pb::Workload, e: &weir_operator_api::flow::Endpoint) -> bool {
    e.workloads
        .iter()
        .any(|w| (want.name.is_empty() || want.name == w.name) && (want.kind.is_empty() || want.kind == w.kind))
}

fn any<T>(list: &[T], pred: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(pred)
}

/// A `GetFlows` request's selection: any whitelist filter (or none), no blacklist filter.
#[derive(Debug)]
pub struct Selection {
    whitelist: Vec<HubbleFilter>,
    blacklist: Vec<HubbleFilter>,
}

impl Selection {
    pub fn compile(req: &GetFlowsRequest) -> Result<Self, String> {
        let all = |v: &[pb::FlowFilter]| v.iter().cloned().map(HubbleFilter::compile).collect::<Result<Vec<_>, _>>();
        Ok(Selection { whitelist: all(&req.whitelist)?, blacklist: all(&req.blacklist)? })
    }

    pub fn selected(&self, f: &Flow) -> bool {
        // Exec audit records are not flows: Hubble's clients never get them.
        if f.weir.exec.is_some() {
            return false;
        }
        (self.whitelist.is_empty() || self.whitelist.iter().any(|w| w.matches(f)))
            && !self.blacklist.iter().any(|b| b.matches(f))
    }
}

pub struct ObserverService {
    pub store: SharedFlowStore,
    /// The node's published view (the kernel's lost-event count), read without waiting.
    pub view: SharedView,
    pub node_name: String,
    pub started: Instant,
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

fn flow_response(node: &str, f: &Flow, mask: Option<&FieldMask>) -> GetFlowsResponse {
    let flow = to_proto(f);
    GetFlowsResponse {
        node_name: node.to_owned(),
        time: Some(timestamp(f.weir.unix_ns)),
        response_types: Some(ResponseTypes::Flow(match mask {
            Some(m) => m.apply(&flow),
            None => flow,
        })),
    }
}

/// A request's field mask (none: whole flows); a path Hubble's Flow does not have is refused.
pub fn field_mask(req: &GetFlowsRequest) -> Result<Option<FieldMask>, Status> {
    let paths = req.field_mask.as_ref().map(|m| m.paths.as_slice()).unwrap_or_default();
    FieldMask::compile(paths).map_err(Status::invalid_argument)
}

/// What Hubble's clients get of a stored flow: the policy verdict events derived from it (as
/// Cilium emits them beside a connection's first packet), then the flow, each one the selection
/// keeps.
fn hubble_responses(
    node: &str,
    f: &Flow,
    selection: &Selection,
    mask: Option<&FieldMask>,
    out: &mut Vec<GetFlowsResponse>,
) {
    for v in f.policy_verdicts() {
        if selection.selected(&v) {
            out.push(flow_response(node, &v, mask));
        }
    }
    if selection.selected(f) {
        out.push(flow_response(node, f, mask));
    }
}

fn lost_response(node: &str, source: pb::LostEventSource, n: u64) -> GetFlowsResponse {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    GetFlowsResponse {
        node_name: node.to_owned(),
        time: Some(timestamp(now)),
        response_types: Some(ResponseTypes::LostEvents(pb::LostEvent { source: source as i32, num_events_lost: n })),
    }
}

#[tonic::async_trait]
impl Observer for ObserverService {
    type GetFlowsStream = FlowStream;

    async fn get_flows(&self, request: Request<GetFlowsRequest>) -> Result<Response<Self::GetFlowsStream>, Status> {
        let req = request.into_inner();
        let selection = Selection::compile(&req).map_err(Status::invalid_argument)?;
        let mask = field_mask(&req)?;
        if req.first && req.follow {
            return Err(Status::invalid_argument("first and follow cannot be combined"));
        }
        let since = req.since.as_ref().map(ts_ns);
        let until = req.until.as_ref().map(ts_ns);
        let in_time = |f: &Flow| since.is_none_or(|s| f.weir.unix_ns >= s) && until.is_none_or(|u| f.weir.unix_ns <= u);
        let node = self.node_name.clone();
        // Following with neither a number nor a start time is Hubble's `observe -f`: new flows
        // only, no history first.
        let replay = !(req.follow && req.number == 0 && since.is_none());
        let (history, mut rx) = {
            let s = self.store.lock().unwrap_or_else(|p| p.into_inner());
            s.select(|f| replay && in_time(f))
        };
        let mut responses = Vec::new();
        for f in &history {
            hubble_responses(&node, f, &selection, mask.as_ref(), &mut responses);
        }
        // `number` (0: all of the selection).
        let n = usize::try_from(req.number).unwrap_or(usize::MAX);
        if n > 0 && responses.len() > n {
            if req.first {
                responses.truncate(n);
            } else {
                responses.drain(..responses.len() - n);
            }
        }
        let lost_in_kernel = latest(&self.view).events_lost();
        let (tx, out) = mpsc::channel(256);
        let first_lost = (lost_in_kernel > 0)
            .then(|| lost_response(&node, pb::LostEventSource::PerfEventRingBuffer, lost_in_kernel));
        tokio::spawn(async move {
            for r in first_lost.into_iter().chain(responses) {
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
            if !req.follow {
                return;
            }
            use tokio::sync::broadcast::error::RecvError;
            let mut batch = Vec::new();
            loop {
                match rx.recv().await {
                    Ok(f) if until.is_none_or(|u| f.weir.unix_ns <= u) => {
                        hubble_responses(&node, &f, &selection, mask.as_ref(), &mut batch)
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        batch.push(lost_response(&node, pb::LostEventSource::HubbleRingBuffer, n))
                    }
                    Err(RecvError::Closed) => return,
                };
                for msg in batch.drain(..) {
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(answer(SERVER_VERSION_KEY, Box::pin(ReceiverStream::new(out))))
    }

    async fn server_status(&self, _: Request<ServerStatusRequest>) -> Result<Response<ServerStatusResponse>, Status> {
        Ok(answer(SERVER_VERSION_KEY, self.status()))
    }

    async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Result<Response<GetNodesResponse>, Status> {
        Ok(answer(
            SERVER_VERSION_KEY,
            GetNodesResponse { nodes: vec![connected_node(self.node_name.clone(), String::new(), self.status())] },
        ))
    }

    async fn get_namespaces(
        &self,
        _: Request<GetNamespacesRequest>,
    ) -> Result<Response<GetNamespacesResponse>, Status> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let since = now.saturating_sub(NAMESPACES_WINDOW_NS);
        let flows = {
            let s = self.store.lock().unwrap_or_else(|p| p.into_inner());
            s.select(|f| f.weir.unix_ns >= since && f.weir.exec.is_none()).0
        };
        let names = flows.iter().flat_map(|f| [f.source.namespace.as_str(), f.destination.namespace.as_str()]);
        Ok(answer(SERVER_VERSION_KEY, GetNamespacesResponse { namespaces: namespace_list(names) }))
    }
}

impl ObserverService {
    fn status(&self) -> ServerStatusResponse {
        let (num, max, seen) = {
            let s = self.store.lock().unwrap_or_else(|p| p.into_inner());
            (s.len() as u64, s.capacity() as u64, s.seen())
        };
        ServerStatusResponse {
            num_flows: num,
            max_flows: max,
            seen_flows: seen,
            uptime_ns: self.started.elapsed().as_nanos() as u64,
            num_connected_nodes: None,
            num_unavailable_nodes: None,
            unavailable_nodes: vec![],
            version: version(),
        }
    }
}

/// PEM files of an observer served over TLS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<std::path::PathBuf>,
}

/// An observer served over TCP: a loopback address in the clear, any other only over TLS —
/// flows name every pod's peers.
#[derive(Clone, Debug)]
pub struct TcpServing {
    addr: std::net::SocketAddr,
    tls: Option<TlsFiles>,
}

impl TcpServing {
    /// `require_client_ca`: off loopback, clients must also prove who they are (a node's
    /// observer: only the relay reads it).
    pub fn new(addr: std::net::SocketAddr, tls: Option<TlsFiles>, require_client_ca: bool) -> Result<Self, String> {
        if !addr.ip().is_loopback() {
            match &tls {
                None => {
                    return Err(format!(
                        "{addr}: off loopback the observer is served only over TLS (give a certificate and key)"
                    ))
                }
                Some(t) if require_client_ca && t.client_ca.is_none() => {
                    return Err(format!(
                        "{addr}: off loopback the node's observer requires client certificates (give a client CA)"
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(Self { addr, tls })
    }

    fn tls_config(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        use anyhow::Context as _;
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let Some(t) = &self.tls else { return Ok(None) };
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(&t.cert)?, read(&t.key)?));
        if let Some(ca) = &t.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(Some(config))
    }
}

/// Serves an Observer (a node's, or the relay's) on a unix socket (replacing a stale file) and,
/// if given, over TCP.
pub async fn serve<S: Observer>(
    svc: S,
    socket: std::path::PathBuf,
    gid: Option<u32>,
    tcp: Option<TcpServing>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use futures::StreamExt as _;
    // Flows name every pod's peers: the socket is as private as the agent's own.
    let uds = crate::serve::local::bind_private(&socket, gid)?;
    let svc = Arc::new(svc);
    let mut tasks = tokio::task::JoinSet::new();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(uds)
        .filter(move |conn| {
            let allowed = match conn {
                Ok(stream) => crate::serve::local::peer_allowed(stream, gid).map_err(|why| {
                    tracing::warn!(reason = %why, "observer API connection refused");
                }),
                Err(_) => Ok(()),
            };
            std::future::ready(allowed.is_ok())
        })
        // Clients of any gRPC implementation: their socket-path `:authority` mended.
        .map(|conn| conn.map(super::authority::mend));
    let unix = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(64))
        .add_service(ObserverServer::from_arc(svc.clone()))
        .serve_with_incoming(incoming);
    tracing::info!(socket = %socket.display(), "Hubble-compatible observer API served");
    tasks.spawn(async move { unix.await.context("observer API on the unix socket") });
    if let Some(tcp) = tcp {
        let addr = tcp.addr;
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .max_concurrent_streams(Some(64));
        let tls = tcp.tls_config()?;
        let over_tls = tls.is_some();
        if let Some(config) = tls {
            builder = builder.tls_config(config).context("observer TLS")?;
        }
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        tracing::info!(%addr, tls = over_tls, "Hubble-compatible observer API served on TCP");
        let server = builder
            .add_service(ObserverServer::from_arc(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tasks.spawn(async move { server.await.context("observer API on TCP") });
    }
    match tasks.join_next().await {
        Some(r) => r.context("observer API task")?,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use weir_operator_api::flow::{Endpoint, Ip, Layer4, Tcp, TcpFlags, WeirInfo};

    use super::*;

    fn flow() -> Flow {
        Flow {
            verdict: Verdict::Dropped,
            ip: Ip { source: "10.244.1.2".into(), destination: "10.244.2.2".into(), ip_version: "IPv4".into() },
            l4: Layer4 {
                tcp: Some(Tcp { source_port: 40000, destination_port: 8081, flags: TcpFlags::from_bits(2) }),
                ..Default::default()
            },
            source: Endpoint {
                namespace: "shop".into(),
                pod_name: "client".into(),
                labels: vec!["k8s:app=client".into()],
                ..Default::default()
            }
            .into(),
            destination: Endpoint {
                namespace: "shop".into(),
                pod_name: "web-1".into(),
                labels: vec!["k8s:app=web".into()],
                identity: 258,
                ..Default::default()
            }
            .into(),
            node_name: "n2".into(),
            traffic_direction: TrafficDirection::Ingress,
            weir: WeirInfo {
                drop_reason: "policy_denied_ingress".into(),
                unix_ns: 1_700_000_000_123_456_789,
                ..Default::default()
            },
            ingress_denied_by: vec![weir_operator_api::flow::Policy {
                name: "p".into(),
                namespace: "shop".into(),
                rule: String::new(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn flows_encode_with_hubble_field_numbers() {
        let p = to_proto(&flow());
        assert_eq!(p.drop_reason_desc, pb::DropReason::PolicyDenied as i32);
        assert_eq!(p.verdict, pb::Verdict::Dropped as i32);
        assert_eq!(p.time, Some(pb::Timestamp { seconds: 1_700_000_000, nanos: 123_456_789 }));
        let bytes = p.encode_to_vec();
        // Field 2 (verdict) varint 2; field 25 (drop_reason_desc) varint 133; field 21005
        // (ingress_denied_by) length-delimited: tag (21005 << 3 | 2) as a varint.
        assert!(bytes.windows(2).any(|w| w == [2 << 3, 2]));
        assert!(bytes.windows(4).any(|w| w == [0xc8, 0x01, 0x85, 0x01]));
        let tag = (21005u32 << 3) | 2;
        let varint = [(tag & 0x7f) as u8 | 0x80, ((tag >> 7) & 0x7f) as u8 | 0x80, (tag >> 14) as u8];
        assert!(bytes.windows(3).any(|w| w == varint), "{bytes:?}");
        assert_eq!(pb::Flow::decode(bytes.as_slice()).expect("decode"), p);
    }

    /// A filter with the fields `build` sets.
    fn filter(build: &dyn Fn(&mut pb::FlowFilter)) -> pb::FlowFilter {
        let mut x = pb::FlowFilter::default();
        build(&mut x);
        x
    }

    fn matches(x: pb::FlowFilter, f: &Flow) -> bool {
        HubbleFilter::compile(x).expect("valid filter").matches(f)
    }

    #[test]
    fn filters_follow_hubble_semantics() {
        let f = flow();
        let validate = |x: pb::FlowFilter| HubbleFilter::compile(x).map(|_| ());
        assert!(matches(filter(&|x| x.destination_pod = vec!["shop/web-".into()]), &f));
        assert!(matches(filter(&|x| x.destination_pod = vec!["shop/".into()]), &f));
        assert!(!matches(filter(&|x| x.source_pod = vec!["shop/web".into()]), &f));
        assert!(matches(filter(&|x| x.destination_label = vec!["app=web".into(), "app=db".into()]), &f));
        assert!(matches(filter(&|x| x.source_label = vec!["app,!tier".into()]), &f));
        assert!(!matches(filter(&|x| x.source_label = vec!["app!=client".into()]), &f));
        assert!(matches(filter(&|x| x.verdict = vec![pb::Verdict::Dropped as i32]), &f));
        assert!(matches(filter(&|x| x.destination_port = vec!["8081".into()]), &f));
        assert!(!matches(
            filter(&|x| {
                x.destination_port = vec!["8081".into()];
                x.protocol = vec!["udp".into()]
            }),
            &f
        ));
        assert!(matches(filter(&|x| x.destination_ip = vec!["10.244.2.0/24".into()]), &f));
        assert!(matches(filter(&|x| x.tcp_flags = vec![pb::TcpFlags { syn: true, ..Default::default() }]), &f));
        assert!(matches(filter(&|x| x.destination_identity = vec![258]), &f));
        assert!(matches(filter(&|x| x.node_name = vec!["n*".into()]), &f));
        let req = GetFlowsRequest {
            whitelist: vec![
                filter(&|x| x.source_pod = vec!["nope/".into()]),
                filter(&|x| x.source_pod = vec!["shop/".into()]),
            ],
            blacklist: vec![filter(&|x| x.destination_port = vec!["8081".into()])],
            ..Default::default()
        };
        assert!(!Selection::compile(&req).expect("valid").selected(&f));
        assert!(validate(filter(&|x| x.source_fqdn = vec!["a.b".into()])).unwrap_err().contains("source_fqdn"));
        assert!(validate(filter(&|x| x.destination_port = vec!["http".into()])).is_err());
        assert!(validate(filter(&|x| x.dns_query = vec!["(".into()])).is_err());
        assert!(validate(filter(&|x| x.protocol = vec!["sctp".into()])).is_err());
    }

    #[test]
    fn hubble_1_19_filters_are_evaluated_or_refused_by_name() {
        let f = flow();
        // drop_reason_desc: a drop of that reason; never a forwarded flow.
        let denied = pb::DropReason::PolicyDenied as i32;
        assert!(matches(filter(&|x| x.drop_reason_desc = vec![denied]), &f));
        assert!(!matches(filter(&|x| x.drop_reason_desc = vec![pb::DropReason::FibLookupFailed as i32]), &f));
        let forwarded = Flow { verdict: Verdict::Forwarded, ..flow() };
        assert!(!matches(filter(&|x| x.drop_reason_desc = vec![denied]), &forwarded));
        // encrypted: weir encrypts nothing.
        assert!(matches(filter(&|x| x.encrypted = vec![false]), &f));
        assert!(!matches(filter(&|x| x.encrypted = vec![true]), &f));
        // http_url (a regular expression over the whole URL) and http_header (exact pairs).
        let mut http = flow();
        http.l7 = Some(weir_operator_api::flow::Layer7 {
            http: Some(weir_operator_api::flow::Http {
                code: 0,
                method: "POST".into(),
                url: "http://10.244.2.2:50051/weir.lab.Cart/Get".into(),
                protocol: "HTTP/2".into(),
                headers: vec![weir_operator_api::flow::HttpHeader {
                    key: "content-type".into(),
                    value: "application/grpc".into(),
                }],
            }),
            ..Default::default()
        });
        assert!(matches(filter(&|x| x.http_url = vec![":50051/weir\\.lab\\.Cart/".into()]), &http));
        assert!(!matches(filter(&|x| x.http_url = vec!["/Other/".into()]), &http));
        assert!(!matches(filter(&|x| x.http_url = vec![".*".into()]), &f));
        let header = |k: &str, v: &str| pb::HttpHeader { key: k.into(), value: v.into() };
        assert!(matches(filter(&|x| x.http_header = vec![header("content-type", "application/grpc")]), &http));
        assert!(!matches(filter(&|x| x.http_header = vec![header("content-type", "text/html")]), &http));
        assert!(HubbleFilter::compile(filter(&|x| x.http_url = vec!["(".into()])).unwrap_err().contains("http_url"));
        // What weir cannot evaluate: refused, each by its name and why.
        type Build<'a> = &'a dyn Fn(&mut pb::FlowFilter);
        let refused: [(&str, Build); 7] = [
            ("source_ip_xlated", &|x| x.source_ip_xlated = vec!["10.0.0.1".into()]),
            ("interface", &|x| x.interface = vec![pb::NetworkInterface { index: 2, name: String::new() }]),
            ("node_labels", &|x| x.node_labels = vec!["zone=a".into()]),
            ("source_cluster_name", &|x| x.source_cluster_name = vec!["default".into()]),
            ("destination_cluster_name", &|x| x.destination_cluster_name = vec!["default".into()]),
            ("ip_trace_id", &|x| x.ip_trace_id = vec![7]),
            ("experimental.cel_expression", &|x| {
                x.experimental =
                    Some(pb::flow_filter::Experimental { cel_expression: vec!["_flow.verdict == 2".into()] })
            }),
        ];
        for (name, build) in refused {
            let e = HubbleFilter::compile(filter(build)).expect_err(name);
            assert!(e.contains(&format!("field {name} is not supported by weir: ")), "{e}");
        }
    }

    #[test]
    fn a_judged_flow_comes_with_its_policy_verdict_events() {
        let sel = Selection::compile(&GetFlowsRequest::default()).expect("no filter");
        let types = |v: &[GetFlowsResponse]| {
            v.iter()
                .map(|r| match &r.response_types {
                    Some(ResponseTypes::Flow(f)) => {
                        let t = f.event_type.as_ref().expect("type");
                        (t.r#type, t.sub_type, f.verdict, f.traffic_direction, f.policy_match_type)
                    }
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        // A policy drop: its verdict event (DENIED, INGRESS, no match), then the drop.
        let drop = Flow { event_type: weir_operator_api::flow::EventType { kind: 1 }, ..flow() };
        let mut out = Vec::new();
        hubble_responses("n2", &drop, &sel, None, &mut out);
        assert_eq!(types(&out), [(5, 0, 2, 1, 0), (1, 133, 2, 1, 0)]);
        // A new connection allowed on egress by an L3+L4 rule and on ingress by an allow-all
        // one: two verdict events, then the trace; each event names only its side's rules.
        let rule =
            |n: &str| weir_operator_api::flow::Policy { name: n.into(), namespace: "shop".into(), rule: "x[0]".into() };
        let mut new = Flow {
            verdict: Verdict::Forwarded,
            event_type: weir_operator_api::flow::EventType { kind: 4 },
            egress_allowed_by: vec![rule("out")],
            ingress_allowed_by: vec![rule("in")],
            ingress_denied_by: vec![],
            ..flow()
        };
        new.weir.drop_reason.clear();
        new.weir.policy_match = weir_operator_api::flow::PolicyMatch { egress: 2, ingress: 4 };
        let mut out = Vec::new();
        hubble_responses("n2", &new, &sel, None, &mut out);
        assert_eq!(types(&out), [(5, 0, 1, 2, 2), (5, 0, 1, 1, 4), (4, 0, 1, 1, 0)]);
        let Some(ResponseTypes::Flow(egress)) = &out[0].response_types else { panic!() };
        assert_eq!((egress.egress_allowed_by.len(), egress.ingress_allowed_by.len()), (1, 0));
        // `-t policy-verdict` selects only the events; `-t trace` only the trace.
        let only = |t: i32| GetFlowsRequest {
            whitelist: vec![pb::FlowFilter {
                event_type: vec![pb::EventTypeFilter { r#type: t, ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        };
        for (t, n) in [(5, 2), (4, 1)] {
            let mut out = Vec::new();
            hubble_responses("n2", &new, &Selection::compile(&only(t)).unwrap(), None, &mut out);
            assert_eq!(out.len(), n, "type {t}");
        }
        // A forwarded report whose ingress a policy denies (the packet is dropped at the
        // server's side): its ingress verdict event is a POLICY_DENIED drop.
        let mut denied = new.clone();
        denied.ingress_allowed_by.clear();
        denied.ingress_denied_by = vec![rule("isolating")];
        let v = denied.policy_verdicts();
        let p = to_proto(&v[1]);
        assert_eq!((p.verdict, p.drop_reason_desc, p.traffic_direction), (2, 133, 1), "{p:?}");
        assert_eq!(to_proto(&v[0]).drop_reason_desc, 0);
        // A flow no policy judged has none.
        let plain = Flow { egress_allowed_by: vec![], ingress_allowed_by: vec![], ..new };
        assert!(plain.policy_verdicts().is_empty());
    }
}
