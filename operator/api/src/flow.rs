//! Flows as `weir observe` and the API show them, and the filters that select them.
//!
//! Field names follow Hubble's `flow.Flow` in its JSON form (`hubble observe -o json`), so tools
//! that read Hubble's JSON read weir's: `time`, `verdict`, `IP`, `l4`, `source`, `destination`,
//! `Type`, `node_name`, `l7.dns`, `is_reply`, `traffic_direction`, `Summary`, the
//! `*_allowed_by` / `*_denied_by` policy lists. What Hubble has no field for (aggregated
//! counters, the kind of report, weir's drop reason) is under `weir`.
use std::{net::IpAddr, sync::Arc};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// RFC 3339 with nanoseconds, UTC.
    pub time: String,
    /// FORWARDED, DROPPED, or TRANSLATED: the first packet of a connection whose destination
    /// was translated from a Service frontend (its later reports are FORWARDED).
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason_desc: Option<String>,
    #[serde(rename = "IP")]
    pub ip: Ip,
    pub l4: Layer4,
    /// Shared: the agent describes an address's endpoint once per cluster state and every record
    /// of that address points to the same description (a clone per record was a fifth of the
    /// agent's work per flow). Change one record's with `Arc::make_mut`.
    pub source: Arc<Endpoint>,
    pub destination: Arc<Endpoint>,
    /// A backend's reply to a connection made to a Service: that Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_service: Option<Service>,
    /// A connection made to a Service (translated to the backend in `IP.destination`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_service: Option<Service>,
    /// L3_L4, or L7 for DNS.
    #[serde(rename = "Type")]
    pub kind: FlowType,
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<Layer7>,
    pub is_reply: bool,
    pub event_type: EventType,
    /// INGRESS (into a local pod from elsewhere), EGRESS (out of a local pod) or
    /// TRAFFIC_DIRECTION_UNKNOWN.
    pub traffic_direction: TrafficDirection,
    /// Hubble's match type of the rule behind a policy verdict event (1 L3 only, 2 L3+L4, 3 L4
    /// only, 4 all; 0 none, as on a denial). Only on policy verdict events (event type 5), which
    /// the observer derives from a judged flow ([`Flow::policy_verdicts`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub policy_match_type: u32,
    /// FROM_ENDPOINT (leaving a pod) or TO_ENDPOINT (delivered to a pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_observation_point: Option<ObservationPoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_allowed_by: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_allowed_by: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_denied_by: Vec<Policy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_denied_by: Vec<Policy>,
    #[serde(rename = "Summary")]
    pub summary: String,
    pub weir: WeirInfo,
}

wire_enum! {
    /// Hubble's `flow.Verdict`, as far as weir reports them.
    Verdict {
        #[default]
        Unknown = "VERDICT_UNKNOWN",
        Forwarded = "FORWARDED",
        Dropped = "DROPPED",
        Translated = "TRANSLATED",
    }
}

wire_enum! {
    /// Hubble's `flow.TrafficDirection`.
    TrafficDirection {
        #[default]
        Unknown = "TRAFFIC_DIRECTION_UNKNOWN",
        Ingress = "INGRESS",
        Egress = "EGRESS",
    }
}

wire_enum! {
    /// Hubble's `flow.FlowType` (the JSON `Type`).
    FlowType {
        #[default]
        Unknown = "UNKNOWN_TYPE",
        L3L4 = "L3_L4",
        L7 = "L7",
    }
}

wire_enum! {
    /// Hubble's `flow.TraceObservationPoint`, the two weir observes.
    ObservationPoint {
        #[default]
        FromEndpoint = "FROM_ENDPOINT",
        ToEndpoint = "TO_ENDPOINT",
    }
}

wire_enum! {
    /// Hubble's `flow.L7FlowType`, plus weir's MALFORMED.
    L7Type {
        #[default]
        Request = "REQUEST",
        Response = "RESPONSE",
        Malformed = "MALFORMED",
    }
}

wire_enum! {
    /// What `weir observe --type` selects (Hubble's `-t` names): a flow is one of trace, drop and
    /// dns, and also policy-verdict when a policy judged it.
    ReportType {
        #[default]
        Trace = "trace",
        Drop = "drop",
        Dns = "dns",
        Http = "http",
        /// Any L7 record: DNS or HTTP (Hubble's `l7`).
        L7 = "l7",
        /// A program started in a pod (the exec audit; not a flow).
        Exec = "exec",
        PolicyVerdict = "policy-verdict",
    }
}

impl Verdict {
    /// `--verdict`'s value: forwarded, dropped or translated, any case.
    pub fn from_filter(s: &str) -> Result<Self, String> {
        match Self::parse(s) {
            Some(Verdict::Unknown) | None => Err(format!("--verdict {s}: expected forwarded, dropped or translated")),
            Some(v) => Ok(v),
        }
    }
}

impl ReportType {
    /// `--type`'s value.
    pub fn from_filter(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("--type {s}: expected trace, drop, dns, http, l7, exec or policy-verdict"))
    }
}

wire_enum! {
    /// The kind of kernel report a flow came from (weir): a connection's first packet, its
    /// aggregated update or close, a drop, or a DNS message.
    FlowEvent {
        #[default]
        New = "new",
        Update = "update",
        Close = "close",
        Drop = "drop",
        Dns = "dns",
        Http = "http",
        Exec = "exec",
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ip {
    pub source: String,
    pub destination: String,
    #[serde(rename = "ipVersion")]
    pub ip_version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer4 {
    #[serde(rename = "TCP", default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Tcp>,
    #[serde(rename = "UDP", default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<Udp>,
    #[serde(rename = "ICMPv4", default, skip_serializing_if = "Option::is_none")]
    pub icmpv4: Option<Icmp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tcp {
    pub source_port: u16,
    pub destination_port: u16,
    #[serde(default, skip_serializing_if = "TcpFlags::is_empty")]
    pub flags: TcpFlags,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub struct TcpFlags {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fin: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub syn: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rst: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub psh: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ack: bool,
}

impl TcpFlags {
    pub fn from_bits(b: u8) -> Self {
        Self { fin: b & 1 != 0, syn: b & 2 != 0, rst: b & 4 != 0, psh: b & 8 != 0, ack: b & 16 != 0 }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// "SYN, ACK" (Hubble's summary spelling).
    pub fn names(&self) -> String {
        let all = [(self.syn, "SYN"), (self.ack, "ACK"), (self.psh, "PSH"), (self.fin, "FIN"), (self.rst, "RST")];
        all.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Udp {
    pub source_port: u16,
    pub destination_port: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Icmp {
    #[serde(rename = "type")]
    pub kind: u8,
    pub code: u8,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The NetworkPolicy identity weir gave the address (0: unknown).
    #[serde(default)]
    pub identity: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// `k8s:KEY=VALUE`, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<Workload>,
    /// The node the pod runs on (weir: Hubble keeps this on the flow only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
}

impl Endpoint {
    /// `namespace/pod`, or empty when the address is no pod.
    pub fn pod(&self) -> String {
        if self.pod_name.is_empty() {
            String::new()
        } else {
            format!("{}/{}", self.namespace, self.pod_name)
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    pub kind: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
}

impl Service {
    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    /// Which of the policy's rules, e.g. `ingress[0]` (weir).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
}

/// Cilium's monitor message type of a policy verdict event.
pub const EVENT_POLICY_VERDICT: u32 = 5;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventType {
    /// Hubble's monitor message types: 1 drop, 4 trace, 5 policy verdict, 129 L7.
    #[serde(rename = "type")]
    pub kind: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer7 {
    /// REQUEST, RESPONSE, or MALFORMED (weir: a message that could not be parsed).
    #[serde(rename = "type")]
    pub kind: L7Type,
    /// Request to response (DNS: query to answer), for responses whose request was seen.
    #[serde(default)]
    pub latency_ns: u64,
    /// The record: one of `dns`, `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
}

impl Layer7 {
    pub fn dns_query(&self) -> &str {
        self.dns.as_ref().map_or("", |d| d.query.as_str())
    }
}

/// An HTTP/1.x or HTTP/2 request or response (a gRPC call is an HTTP/2 exchange) as Hubble shows
/// it. A response carries its request's method and URL when the request was seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Http {
    /// Status code of a response; 0 on a request.
    #[serde(default)]
    pub code: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// `http://HOST/PATH`: the Host header (else the server's address) and the path, query
    /// string removed, at most `HTTP_URL_MAX` bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// `HTTP/1.1`, `HTTP/1.0` or `HTTP/2`.
    pub protocol: String,
    /// Headers a record keeps: a gRPC call's `content-type` and, on its response, `grpc-status`
    /// and `grpc-message` (Hubble's `headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeader>,
}

/// One header of an [`Http`] record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHeader {
    pub key: String,
    pub value: String,
}

impl Http {
    /// A header's value, by its (lower-case) name.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.key == key).map(|h| h.value.as_str())
    }

    /// A gRPC call's status (`grpc-status`), on its response.
    pub fn grpc_status(&self) -> Option<u32> {
        self.header("grpc-status")?.parse().ok()
    }

    /// The URL's path (what `--http-path` matches).
    pub fn path(&self) -> &str {
        let rest = self.url.strip_prefix("http://").unwrap_or(&self.url);
        rest.find('/').map_or("", |i| &rest[i..])
    }
}

/// HTTP status filter: `NNN`, or a prefix with `+` (`4+`, `50+`), as Hubble takes it.
pub fn http_status_matches(want: &str, code: u32) -> bool {
    if code == 0 {
        return false;
    }
    let have = format!("{code:03}");
    match want.strip_suffix('+') {
        Some(prefix) => have.starts_with(prefix),
        None => have == want,
    }
}

/// Checks an HTTP status filter: `NNN` (100–599) or `N+` / `NN+`.
pub fn http_status_valid(want: &str) -> Result<(), String> {
    let b = want.as_bytes();
    let first_ok = |c: u8| (b'1'..=b'5').contains(&c);
    let ok = match want.strip_suffix('+') {
        Some(p) => matches!(p.len(), 1 | 2) && first_ok(p.as_bytes()[0]) && p.bytes().all(|c| c.is_ascii_digit()),
        None => b.len() == 3 && first_ok(b[0]) && want.bytes().all(|c| c.is_ascii_digit()),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("HTTP status {want:?}: expected a code (200) or a prefix with + (4+, 50+)"))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// The name asked, with its trailing dot.
    pub query: String,
    /// A and AAAA answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// The smallest TTL of the answers.
    #[serde(default)]
    pub ttl: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cnames: Vec<String>,
    /// Response code (0 NOERROR, 3 NXDOMAIN, ...).
    #[serde(default)]
    pub rcode: u32,
    /// Question types, e.g. ["A"].
    #[serde(default)]
    pub qtypes: Vec<String>,
    /// Answer record types.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rrtypes: Vec<String>,
    pub observation_source: String,
}

/// What Hubble has no field for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeirInfo {
    /// new, update, close (flow reports aggregated in the kernel), drop, dns.
    pub event: FlowEvent,
    /// Packets and bytes of the flow so far (one direction), or of the dropped packet.
    pub packets: u64,
    pub bytes: u64,
    /// weir's drop reason label (`weir datapath` counters use the same).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub drop_reason: String,
    /// DNS: the message arrived over TCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dns_tcp: bool,
    /// The Service frontend (`address:port`) the connection was translated from (a reply:
    /// translated back to), whether or not it still names a known Service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_frontend: String,
    /// An exec audit record (the record's `source` is the process's pod, when it is in one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Exec>,
    /// The process in the source pod that opened the connection (its connect(), or first
    /// sendmsg() on the socket), on a connection's first report leaving a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// The match type ([`Flow::policy_match_type`]'s numbers) of the rule that allowed the
    /// connection, per direction, where one did.
    #[serde(default, skip_serializing_if = "PolicyMatch::is_none")]
    pub policy_match: PolicyMatch,
    /// Order of this flow in its node's store (for follow and since).
    pub seq: u64,
    /// Unix time in nanoseconds (the same instant as `time`).
    pub unix_ns: u64,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Hubble's policy match types (Cilium's monitor API `PolicyMatch*`).
pub mod policy_match {
    pub const NONE: u8 = 0;
    pub const L3_ONLY: u8 = 1;
    pub const L3_L4: u8 = 2;
    pub const L4_ONLY: u8 = 3;
    pub const ALL: u8 = 4;
}

/// The match type of the allowing rule on each side of a judged connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyMatch {
    pub egress: u8,
    pub ingress: u8,
}

impl PolicyMatch {
    pub fn is_none(&self) -> bool {
        *self == PolicyMatch::default()
    }
}

/// A program started by a process under the node's pod cgroup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// The process and its parent, in the node's PID namespace.
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// The path executed (as the exec call named it; at most 255 bytes).
    pub binary: String,
    /// The arguments, `argv[0]` first, each escaped where not printable; the first 256 bytes.
    pub arguments: Vec<String>,
    /// False when the argument list was longer than what was copied.
    pub arguments_complete: bool,
    /// The process's cgroup below the node's pod cgroup root (empty: not found under it).
    pub cgroup: String,
    /// `pod` (the record's source names it), or why not: `not-in-a-pod` (a cgroup no known pod
    /// owns: a host process, or one whose pod the agent does not know), `cgroup-gone` (the
    /// cgroup was removed before the agent could look at it).
    pub attribution: String,
}

/// A process as the datapath's socket hooks saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Process id in the node's PID namespace (not the container's).
    pub pid: u32,
    /// The calling thread's name (the kernel's 15-character `comm`: the command, or the name a
    /// worker thread was given), non-printable bytes escaped.
    pub command: String,
    /// A connection the pod accepted: this is the process that bound its port (no hook runs in
    /// the accepting process's context; a server that forks workers after binding shows its
    /// parent). False: the process that connected the socket.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bound: bool,
}

impl Flow {
    pub fn ports(&self) -> (u16, u16) {
        match (&self.l4.tcp, &self.l4.udp) {
            (Some(t), _) => (t.source_port, t.destination_port),
            (_, Some(u)) => (u.source_port, u.destination_port),
            _ => (0, 0),
        }
    }

    /// The HTTP record of an L7 flow.
    pub fn http(&self) -> Option<&Http> {
        self.l7.as_ref().and_then(|l| l.http.as_ref())
    }

    pub fn protocol(&self) -> &'static str {
        if self.l4.tcp.is_some() {
            "tcp"
        } else if self.l4.udp.is_some() {
            "udp"
        } else if self.l4.icmpv4.is_some() {
            "icmp"
        } else {
            "other"
        }
    }

    /// trace, drop, dns, http or exec.
    pub fn report_type(&self) -> ReportType {
        if self.weir.exec.is_some() {
            ReportType::Exec
        } else if self.event_type.kind == EVENT_POLICY_VERDICT {
            ReportType::PolicyVerdict
        } else if self.l7.as_ref().is_some_and(|l| l.http.is_some()) {
            ReportType::Http
        } else if self.l7.is_some() {
            ReportType::Dns
        } else if self.verdict == Verdict::Dropped {
            ReportType::Drop
        } else {
            ReportType::Trace
        }
    }

    /// The policy verdict events of a judged flow, as Cilium emits them beside the trace or
    /// drop of a connection's first packet: one per direction a policy judged (egress on the
    /// client's side, ingress on the server's), allowed (FORWARDED, with the allowing rules and
    /// their match type) or denied (DROPPED, POLICY_DENIED, with the isolating policies).
    pub fn policy_verdicts(&self) -> Vec<Flow> {
        if self.event_type.kind == EVENT_POLICY_VERDICT || self.l7.is_some() || self.weir.exec.is_some() {
            return Vec::new();
        }
        let sides = [
            (TrafficDirection::Egress, &self.egress_allowed_by, &self.egress_denied_by, self.weir.policy_match.egress),
            (
                TrafficDirection::Ingress,
                &self.ingress_allowed_by,
                &self.ingress_denied_by,
                self.weir.policy_match.ingress,
            ),
        ];
        let mut out = Vec::new();
        for (direction, allowed, denied, match_type) in sides {
            let dropped_here = match direction {
                TrafficDirection::Egress => self.weir.drop_reason == "policy_denied_egress",
                _ => self.weir.drop_reason == "policy_denied_ingress",
            };
            let (verdict, match_type) = if !allowed.is_empty() {
                (Verdict::Forwarded, match_type)
            } else if !denied.is_empty() || dropped_here {
                (Verdict::Dropped, policy_match::NONE)
            } else {
                continue;
            };
            let mut v = self.clone();
            v.event_type.kind = EVENT_POLICY_VERDICT;
            v.verdict = verdict;
            v.drop_reason_desc = (verdict == Verdict::Dropped).then(|| "POLICY_DENIED".to_owned());
            v.weir.drop_reason = match (verdict, direction) {
                (Verdict::Dropped, TrafficDirection::Egress) => "policy_denied_egress".to_owned(),
                (Verdict::Dropped, _) => "policy_denied_ingress".to_owned(),
                _ => String::new(),
            };
            v.traffic_direction = direction;
            v.policy_match_type = u32::from(match_type);
            v.trace_observation_point = None;
            v.weir.policy_match = PolicyMatch::default();
            let (keep_allowed, keep_denied) = (allowed.clone(), denied.clone());
            v.egress_allowed_by.clear();
            v.ingress_allowed_by.clear();
            v.egress_denied_by.clear();
            v.ingress_denied_by.clear();
            if direction == TrafficDirection::Egress {
                (v.egress_allowed_by, v.egress_denied_by) = (keep_allowed, keep_denied);
            } else {
                (v.ingress_allowed_by, v.ingress_denied_by) = (keep_allowed, keep_denied);
            }
            out.push(v);
        }
        out
    }

    /// Some policy judged the flow: it names the rules that allowed or the policies that denied
    /// it, or a policy dropped it.
    pub fn policy_judged(&self) -> bool {
        let judged =
            [&self.egress_allowed_by, &self.ingress_allowed_by, &self.egress_denied_by, &self.ingress_denied_by];
        judged.iter().any(|v| !v.is_empty()) || self.weir.drop_reason.starts_with("policy_")
    }

    /// Whether `--type t` selects the flow.
    pub fn has_type(&self, t: ReportType) -> bool {
        match t {
            ReportType::PolicyVerdict => self.policy_judged(),
            ReportType::L7 => self.l7.is_some(),
            t => self.report_type() == t,
        }
    }

    /// Every type the flow has, e.g. "trace,policy-verdict".
    pub fn types(&self) -> String {
        let kind = self.report_type();
        let mut t = kind.as_str().to_owned();
        if kind != ReportType::PolicyVerdict && self.policy_judged() {
            t.push_str(",policy-verdict");
        }
        t
    }
}

/// One filter criterion of `weir observe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "kebab-case")]
pub enum Criterion {
    /// Either side is in the namespace.
    Namespace(String),
    /// Either side is the pod: `ns/name`, or `name` (any namespace); a trailing `*` matches a prefix.
    Pod(String),
    FromPod(String),
    ToPod(String),
    /// Either side is the Service a translated connection was made to: `ns/name` or `name`;
    /// a trailing `*` matches a prefix.
    Service(String),
    FromService(String),
    ToService(String),
    /// Either side's workload: `name` or `kind/name` (kind compared without case).
    Workload(String),
    FromWorkload(String),
    ToWorkload(String),
    /// Either side has the label: `key=value` or `key`.
    Label(String),
    FromLabel(String),
    ToLabel(String),
    /// Either side's address: an IPv4/IPv6 address or a CIDR.
    Ip(String),
    FromIp(String),
    ToIp(String),
    /// Either side's port.
    Port(u16),
    /// tcp, udp, icmp, dns or http.
    Protocol(String),
    /// FORWARDED, DROPPED or TRANSLATED.
    Verdict(Verdict),
    /// trace, drop, dns, http, l7 or policy-verdict.
    Type(ReportType),
    Node(String),
    /// A DNS flow whose name matches (suffix match; `*.` prefix allowed).
    DnsName(String),
    /// An HTTP response whose status is `NNN` or starts with the digits before `+` (`5+`).
    HttpStatus(String),
    /// An HTTP record of this method (any case).
    HttpMethod(String),
    /// An HTTP record whose URL path begins with this (`/api/`).
    HttpPath(String),
}

impl Criterion {
    /// Which criteria OR together (the same kind) rather than AND.
    pub fn group(&self) -> &'static str {
        match self {
            Criterion::Namespace(_) => "namespace",
            Criterion::Pod(_) => "pod",
            Criterion::FromPod(_) => "from-pod",
            Criterion::ToPod(_) => "to-pod",
            Criterion::Service(_) => "service",
            Criterion::FromService(_) => "from-service",
            Criterion::ToService(_) => "to-service",
            Criterion::Workload(_) => "workload",
            Criterion::FromWorkload(_) => "from-workload",
            Criterion::ToWorkload(_) => "to-workload",
            Criterion::Label(_) => "label",
            Criterion::FromLabel(_) => "from-label",
            Criterion::ToLabel(_) => "to-label",
            Criterion::Ip(_) => "ip",
            Criterion::FromIp(_) => "from-ip",
            Criterion::ToIp(_) => "to-ip",
            Criterion::Port(_) => "port",
            Criterion::Protocol(_) => "protocol",
            Criterion::Verdict(_) => "verdict",
            Criterion::Type(_) => "type",
            Criterion::Node(_) => "node",
            Criterion::DnsName(_) => "dns-name",
            Criterion::HttpStatus(_) => "http-status",
            Criterion::HttpMethod(_) => "http-method",
            Criterion::HttpPath(_) => "http-path",
        }
    }

    pub fn matches(&self, f: &Flow) -> bool {
        match self {
            Criterion::Namespace(n) => &f.source.namespace == n || &f.destination.namespace == n,
            Criterion::Pod(p) => pod_matches(p, &f.source) || pod_matches(p, &f.destination),
            Criterion::FromPod(p) => pod_matches(p, &f.source),
            Criterion::ToPod(p) => pod_matches(p, &f.destination),
            Criterion::Service(s) => {
                service_matches(s, f.source_service.as_ref()) || service_matches(s, f.destination_service.as_ref())
            }
            Criterion::FromService(s) => service_matches(s, f.source_service.as_ref()),
            Criterion::ToService(s) => service_matches(s, f.destination_service.as_ref()),
            Criterion::Workload(w) => workload_matches(w, &f.source) || workload_matches(w, &f.destination),
            Criterion::FromWorkload(w) => workload_matches(w, &f.source),
            Criterion::ToWorkload(w) => workload_matches(w, &f.destination),
            Criterion::Label(l) => label_matches(l, &f.source) || label_matches(l, &f.destination),
            Criterion::FromLabel(l) => label_matches(l, &f.source),
            Criterion::ToLabel(l) => label_matches(l, &f.destination),
            Criterion::Ip(c) => ip_matches(c, &f.ip.source) || ip_matches(c, &f.ip.destination),
            Criterion::FromIp(c) => ip_matches(c, &f.ip.source),
            Criterion::ToIp(c) => ip_matches(c, &f.ip.destination),
            Criterion::Port(p) => {
                let (s, d) = f.ports();
                *p == s || *p == d
            }
            Criterion::Protocol(p) if p == "dns" => f.l7.as_ref().is_some_and(|l| l.dns.is_some()),
            Criterion::Protocol(p) if p == "http" => f.l7.as_ref().is_some_and(|l| l.http.is_some()),
            Criterion::Protocol(p) => f.protocol() == p,
            Criterion::Verdict(v) => f.verdict == *v,
            Criterion::Type(t) => f.has_type(*t),
            Criterion::Node(n) => &f.node_name == n,
            Criterion::DnsName(n) => f.l7.as_ref().is_some_and(|l| dns_name_matches(n, l.dns_query())),
            Criterion::HttpStatus(s) => f.http().is_some_and(|h| http_status_matches(s, h.code)),
            Criterion::HttpMethod(m) => f.http().is_some_and(|h| h.method.eq_ignore_ascii_case(m)),
            Criterion::HttpPath(p) => f.http().is_some_and(|h| h.path().starts_with(p.as_str())),
        }
    }

    /// Checks the value (the CLI reports what is wrong before asking the agent).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Criterion::Ip(c) | Criterion::FromIp(c) | Criterion::ToIp(c) => Cidr::parse(c).map(|_| ()),
            Criterion::Protocol(p) if !["tcp", "udp", "icmp", "dns", "http"].contains(&p.as_str()) => {
                Err(format!("--protocol {p}: expected tcp, udp, icmp, dns or http"))
            }
            Criterion::HttpStatus(s) => http_status_valid(s).map_err(|e| format!("--http-status: {e}")),
            Criterion::HttpMethod(m) if m.is_empty() || !m.bytes().all(|c| c.is_ascii_alphabetic()) => {
                Err(format!("--http-method {m:?}: expected a method name (GET, POST, ...)"))
            }
            Criterion::HttpPath(p) if !p.starts_with('/') => Err(format!("--http-path {p:?}: a path begins with /")),
            Criterion::Verdict(Verdict::Unknown) => {
                Err("--verdict VERDICT_UNKNOWN: expected forwarded, dropped or translated".into())
            }
            Criterion::Label(l) | Criterion::FromLabel(l) | Criterion::ToLabel(l) if l.is_empty() => {
                Err("--label: expected KEY or KEY=VALUE".into())
            }
            _ => Ok(()),
        }
    }
}

fn pod_matches(want: &str, e: &Endpoint) -> bool {
    NameRule::Exact.pod(want, e)
}

fn workload_matches(want: &str, e: &Endpoint) -> bool {
    let (kind, name) = match want.split_once('/') {
        Some((k, n)) => (Some(k), n),
        None => (None, want),
    };
    e.workloads.iter().any(|w| w.name == name && kind.is_none_or(|k| k.eq_ignore_ascii_case(&w.kind)))
}

fn service_matches(want: &str, s: Option<&Service>) -> bool {
    NameRule::Exact.service(want, s)
}

/// How a filter names a pod or a Service (`ns/name` or `name`, any namespace). The two filter
/// languages weir answers differ here, so each says which rule it means:
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// `weir observe`: the name is compared whole; a trailing `*` asks for a prefix. `ns/`
    /// alone names nothing.
    Exact,
    /// Hubble's filters: the name is a prefix, so `ns/` is the whole namespace; without a
    /// namespace the endpoint must have a name.
    Prefix,
}

impl NameRule {
    pub fn matches(self, want: &str, namespace: &str, name: &str) -> bool {
        let (ns, want_name) = match want.split_once('/') {
            Some((ns, n)) => (Some(ns), n),
            None => (None, want),
        };
        if ns.is_some_and(|ns| ns != namespace) {
            return false;
        }
        match self {
            NameRule::Exact => match want_name.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == want_name,
            },
            NameRule::Prefix => (ns.is_some() || !name.is_empty()) && name.starts_with(want_name),
        }
    }

    /// The endpoint is a pod (Hubble's rule also takes a namespace-only endpoint for `ns/`).
    pub fn pod(self, want: &str, e: &Endpoint) -> bool {
        let named = match self {
            NameRule::Exact => !e.pod_name.is_empty(),
            NameRule::Prefix => !e.pod_name.is_empty() || !e.namespace.is_empty(),
        };
        named && self.matches(want, &e.namespace, &e.pod_name)
    }

    pub fn service(self, want: &str, s: Option<&Service>) -> bool {
        s.is_some_and(|s| self.matches(want, &s.namespace, &s.name))
    }
}

fn label_matches(want: &str, e: &Endpoint) -> bool {
    label_selector_matches(want, &e.labels)
}

/// A label selector over an endpoint's `key=value` labels: comma-separated terms `key`,
/// `!key`, `key=value`, `key==value`, `key!=value`, keys with or without the `k8s:` source
/// prefix. `weir observe --label` takes one term; Hubble's label filters take a selector.
pub fn label_selector_matches(sel: &str, labels: &[String]) -> bool {
    let value_of = |key: &str| {
        let key = key.trim().strip_prefix("k8s:").unwrap_or(key.trim());
        labels.iter().find_map(|l| {
            let l = l.strip_prefix("k8s:").unwrap_or(l);
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            (k == key).then_some(v)
        })
    };
    sel.split(',').all(|term| {
        let term = term.trim();
        if let Some((k, v)) = term.split_once("!=") {
            value_of(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            value_of(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            value_of(k).is_none()
        } else {
            value_of(term).is_some()
        }
    })
}

/// An address filter, parsed once: `addr` or `addr/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = |why: &str| format!("--ip {s}: {why}");
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad("the prefix length is not a number"))?)),
            None => (s, None),
        };
        let net: IpAddr = a.parse().map_err(|_| bad("not an IP address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad("prefix length too long"));
        }
        Ok(Cidr { net, len })
    }

    /// Is `addr` (a flow's address, as text) inside? False when it does not parse.
    pub fn contains(&self, addr: &str) -> bool {
        let Ok(a) = addr.parse::<IpAddr>() else { return false };
        match (self.net, a) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - u32::from(self.len)) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Is `addr` (text) inside `cidr` (`addr` or `addr/len`)? False when either does not parse.
fn ip_matches(cidr: &str, addr: &str) -> bool {
    Cidr::parse(cidr).is_ok_and(|c| c.contains(addr))
}

fn dns_name_matches(want: &str, name: &str) -> bool {
    let norm = |s: &str| s.trim_end_matches('.').to_ascii_lowercase();
    let (want, name) = (norm(want), norm(name));
    match want.strip_prefix("*.") {
        Some(suffix) => name.ends_with(&format!(".{suffix}")),
        None => name == want,
    }
}

/// The flows a query selects: every `include` group (criteria of one kind OR together; kinds
/// AND), none of `exclude`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowFilter {
    #[serde(default)]
    pub include: Vec<Criterion>,
    #[serde(default)]
    pub exclude: Vec<Criterion>,
}

impl FlowFilter {
    pub fn matches(&self, f: &Flow) -> bool {
        if self.exclude.iter().any(|c| c.matches(f)) {
            return false;
        }
        // Every kind present has a matching criterion of its kind. Filters hold a handful of
        // criteria, so the quadratic walk allocates nothing and costs less than sorting would.
        self.include.iter().all(|c| self.include.iter().filter(|d| d.group() == c.group()).any(|d| d.matches(f)))
    }
}

/// `weir observe` asks for flows with this.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowQuery {
    #[serde(default)]
    pub filter: FlowFilter,
    /// Only the newest N matching flows of the history.
    #[serde(default)]
    pub last: Option<usize>,
    /// Only flows at or after this Unix time (nanoseconds).
    #[serde(default)]
    pub since_unix_ns: Option<u64>,
    /// After the history, stream new matching flows until the client hangs up.
    #[serde(default)]
    pub follow: bool,
}

/// One batch of flows (a follow stream sends many).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flows {
    /// The node whose agent sent the batch.
    #[serde(default)]
    pub node: String,
    pub flows: Vec<Flow>,
    /// Flows this node's agent has recorded since it started.
    pub seen: u64,
    /// Events the kernel could not put on the ring buffer (counted, not silently lost).
    pub lost_in_kernel: u64,
    /// Flows evicted from the store before anyone read them is not tracked; this is its size.
    pub capacity: usize,
    /// A follower too slow for the stream skipped this many flows.
    #[serde(default)]
    pub skipped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            verdict: Verdict::Forwarded,
            ip: Ip { source: "10.244.1.5".into(), destination: "10.244.2.9".into(), ip_version: "IPv4".into() },
            l4: Layer4 {
                tcp: Some(Tcp { source_port: 40000, destination_port: 80, flags: TcpFlags::from_bits(2) }),
                ..Default::default()
            },
            source: Endpoint {
                namespace: "shop".into(),
                pod_name: "web-1".into(),
                labels: vec!["k8s:app=web".into()],
                ..Default::default()
            }
            .into(),
            destination: Endpoint { namespace: "db".into(), pod_name: "pg-0".into(), ..Default::default() }.into(),
            ..Default::default()
        }
    }

    #[test]
    fn criteria_match_either_side_or_one_side() {
        let f = flow();
        assert!(Criterion::Namespace("db".into()).matches(&f));
        assert!(Criterion::Pod("shop/web-1".into()).matches(&f));
        assert!(Criterion::Pod("web-*".into()).matches(&f));
        assert!(!Criterion::Pod("db/web-1".into()).matches(&f));
        assert!(Criterion::FromPod("web-1".into()).matches(&f));
        assert!(!Criterion::ToPod("web-1".into()).matches(&f));
        assert!(Criterion::Label("app".into()).matches(&f));
        assert!(Criterion::Label("app=web".into()).matches(&f));
        assert!(!Criterion::Label("app=db".into()).matches(&f));
        assert!(Criterion::Ip("10.244.2.0/24".into()).matches(&f));
        assert!(!Criterion::FromIp("10.244.2.0/24".into()).matches(&f));
        assert!(Criterion::Port(80).matches(&f));
        assert!(Criterion::Protocol("tcp".into()).matches(&f));
        assert!(!Criterion::Protocol("dns".into()).matches(&f));
        assert!(Criterion::Verdict(Verdict::Forwarded).matches(&f));
        assert!(!Criterion::Verdict(Verdict::Dropped).matches(&f));
        assert!(Criterion::Type(ReportType::Trace).matches(&f));
        assert!(!Criterion::Type(ReportType::PolicyVerdict).matches(&f));
    }

    #[test]
    fn service_criteria_match_the_side_the_service_is_on() {
        let svc = Service { name: "pg".into(), namespace: "db".into() };
        let f = Flow { destination_service: Some(svc.clone()), verdict: Verdict::Translated, ..flow() };
        assert!(Criterion::Service("db/pg".into()).matches(&f));
        assert!(Criterion::Service("p*".into()).matches(&f));
        assert!(Criterion::ToService("pg".into()).matches(&f));
        assert!(!Criterion::FromService("pg".into()).matches(&f));
        assert!(!Criterion::Service("shop/pg".into()).matches(&f));
        assert!(!Criterion::Service("pg".into()).matches(&flow()));
        assert!(Criterion::Verdict(Verdict::Translated).matches(&f));
        let reply = Flow { source_service: Some(svc), ..flow() };
        let mut w = flow();
        Arc::make_mut(&mut w.source).workloads = vec![Workload { name: "web".into(), kind: "Deployment".into() }];
        assert!(Criterion::Workload("web".into()).matches(&w));
        assert!(Criterion::FromWorkload("deployment/web".into()).matches(&w));
        assert!(!Criterion::FromWorkload("StatefulSet/web".into()).matches(&w));
        assert!(!Criterion::ToWorkload("web".into()).matches(&w));
        assert!(Criterion::FromService("db/pg".into()).matches(&reply));
        assert!(!Criterion::ToService("db/pg".into()).matches(&reply));
    }

    #[test]
    fn same_kind_ors_kinds_and_excludes_win() {
        let f = flow();
        let ns = |n: &str| Criterion::Namespace(n.into());
        let filter = FlowFilter { include: vec![ns("x"), ns("db"), Criterion::Port(80)], exclude: vec![] };
        assert!(filter.matches(&f));
        let filter = FlowFilter { include: vec![ns("db"), Criterion::Port(81)], exclude: vec![] };
        assert!(!filter.matches(&f));
        let filter = FlowFilter { include: vec![ns("db")], exclude: vec![Criterion::Protocol("tcp".into())] };
        assert!(!filter.matches(&f));
        assert!(FlowFilter::default().matches(&f));
    }

    #[test]
    fn bad_values_are_named() {
        assert!(Criterion::Ip("10.0.0.0/40".into()).validate().unwrap_err().contains("10.0.0.0/40"));
        assert!(Criterion::Ip("nope".into()).validate().is_err());
        assert!(Criterion::Protocol("sctp".into()).validate().unwrap_err().contains("sctp"));
        assert!(Verdict::from_filter("maybe").unwrap_err().contains("maybe"));
        assert!(Verdict::from_filter("verdict_unknown").is_err());
        assert!(ReportType::from_filter("kafka").unwrap_err().contains("kafka"));
        assert_eq!(Verdict::from_filter("DROPPED"), Ok(Verdict::Dropped));
        assert_eq!(Verdict::from_filter("dropped"), Ok(Verdict::Dropped));
        assert!(Criterion::Verdict(Verdict::Unknown).validate().is_err());
    }

    /// The typed names keep Hubble's JSON spelling, both ways.
    #[test]
    fn typed_names_keep_the_wire_form() {
        let f = Flow {
            kind: FlowType::L3L4,
            traffic_direction: TrafficDirection::Egress,
            trace_observation_point: Some(ObservationPoint::FromEndpoint),
            weir: WeirInfo { event: FlowEvent::New, ..Default::default() },
            ..flow()
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(
            (&v["verdict"], &v["Type"], &v["traffic_direction"], &v["trace_observation_point"], &v["weir"]["event"]),
            (&"FORWARDED".into(), &"L3_L4".into(), &"EGRESS".into(), &"FROM_ENDPOINT".into(), &"new".into())
        );
        let back: Flow = serde_json::from_value(v).unwrap();
        assert_eq!(back, f);
        for v in Verdict::ALL {
            assert_eq!(Verdict::parse(v.as_str()), Some(*v));
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
        }
        for t in ReportType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        let lower: Criterion = serde_json::from_str(r#"{"kind":"verdict","value":"dropped"}"#).unwrap();
        assert_eq!(lower, Criterion::Verdict(Verdict::Dropped));
        let bad = serde_json::from_str::<Criterion>(r#"{"kind":"verdict","value":"maybe"}"#).unwrap_err().to_string();
        assert!(bad.contains("maybe") && bad.contains("FORWARDED"), "{bad}");
        let unknown = serde_json::to_value(Flow { trace_observation_point: None, ..flow() }).unwrap();
        assert!(unknown.get("trace_observation_point").is_none());
        assert_eq!(unknown["traffic_direction"], "TRAFFIC_DIRECTION_UNKNOWN");
    }

    #[test]
    fn dns_names_match_exactly_or_by_suffix() {
        assert!(dns_name_matches("web.lab.test", "web.lab.test."));
        assert!(dns_name_matches("*.lab.test", "WEB.lab.test."));
        assert!(!dns_name_matches("*.lab.test", "lab.test."));
    }

    #[test]
    fn name_rules_differ_only_where_documented() {
        assert!(NameRule::Exact.matches("shop/web", "shop", "web"));
        assert!(!NameRule::Exact.matches("shop/we", "shop", "web"));
        assert!(NameRule::Exact.matches("shop/we*", "shop", "web"));
        assert!(NameRule::Exact.matches("web", "other", "web"));
        assert!(!NameRule::Exact.matches("shop/", "shop", "web"));
        assert!(NameRule::Prefix.matches("shop/we", "shop", "web"));
        assert!(NameRule::Prefix.matches("shop/", "shop", "web"));
        assert!(NameRule::Prefix.matches("we", "other", "web"));
        assert!(!NameRule::Prefix.matches("", "shop", ""));
        assert!(!NameRule::Prefix.matches("other/", "shop", "web"));
    }

    #[test]
    fn label_selectors_take_every_term_form() {
        let labels = vec!["k8s:app=web".to_owned(), "tier=front".to_owned()];
        for yes in ["app=web", "app", "k8s:tier==front", "app!=db", "!team", "app=web,tier"] {
            assert!(label_selector_matches(yes, &labels), "{yes}");
        }
        for no in ["app=db", "team", "!app", "app!=web", "app=web,team"] {
            assert!(!label_selector_matches(no, &labels), "{no}");
        }
    }
}
