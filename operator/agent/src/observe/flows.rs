//! Flows: datapath events turned into Hubble-shaped records, enriched, kept, and served.
//!
//! * [`Ingest`] turns one ring-buffer event into a [`Flow`]: addresses and ports, verdict and
//!   drop reason, observation point and direction, the pods on both sides (namespace, labels,
//!   node) and their policy identities, the policies that allowed or denied it (the datapath's
//!   own compiled policy, looked up the way the datapath does), the Service a connection was
//!   made to (the datapath reports the frontend it translated from), for DNS the parsed
//!   message with the query-to-response latency, and for HTTP/1.x each request and response
//!   (`observe::http`) with the request-to-response latency.
//! * [`FlowStore`] keeps the newest flows (capacity `--flow-capacity`) for history queries and
//!   fans new ones out to followers. A follower that cannot keep up is told how many it skipped.
//!
//! Enrichment reads a [`Enrichment`] that the node's writer publishes after every policy pass;
//! the reader thread never waits for the writer.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
};

use tokio::sync::broadcast;
use weir_bpf_common::nat_state::TCP_RST;
use weir_bpf_common::{
    Addr16, DatapathEvent, DropReason, ExecEvent, PayloadEvent, ServiceKey, EVENT_BIND, EVENT_DNS, EVENT_DROP,
    EVENT_FLOW_CLOSE, EVENT_FLOW_NEW, EVENT_FLOW_UPDATE, EVENT_H2, EVENT_HTTP, FLOW_F_REPLY, OBS_FROM_POD, OBS_TO_POD,
};
use weir_dataplane::events::{Event, EventRef};
use weir_operator_api::flow::{
    Dns, Endpoint, EventType, Flow, FlowEvent, FlowQuery, FlowType, Http, HttpHeader, Icmp, Ip, L7Type, Layer4, Layer7,
    ObservationPoint, Policy, Service, Tcp, TcpFlags, TrafficDirection, Udp, Verdict, WeirInfo,
};

use crate::{
    observe::{bounded::Bounded, dns, exec, h2, http, listeners},
    policy::{
        compile::{decide, Cluster, Compiled, SideExplain},
        Direction, RuleRef,
    },
    serve::metrics::Metrics,
};

/// What enrichment reads: the cluster's pods, the compiled policy the datapath enforces, and
/// the Service (`namespace/name`) of every frontend this node's datapath serves.
#[derive(Default)]
pub struct Enrichment {
    pub cluster: Arc<Cluster>,
    pub compiled: Arc<Compiled>,
    pub services: Arc<BTreeMap<ServiceKey, String>>,
}

pub type SharedEnrichment = Arc<RwLock<Arc<Enrichment>>>;

/// An event's address: IPv4 (mapped in the ABI) or IPv6; all zeroes is 0.0.0.0.
pub fn addr(a: &Addr16) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(a.bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None if a.bytes == [0; 16] => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V6(v6),
    }
}

/// Unmatched DNS queries kept for latency (oldest dropped beyond this).
const PENDING_DNS: usize = 4096;

pub struct Ingest {
    pub node: String,
    pub enrichment: SharedEnrichment,
    pub metrics: Arc<Metrics>,
    /// Unix time minus CLOCK_MONOTONIC, in ns: turns `ktime_ns` into wall time.
    pub clock_offset_ns: i128,
    /// (client address, client port, DNS id) → query time (ktime).
    pending: Bounded<(IpAddr, u16, u16), u64>,
    /// HTTP requests waiting for their responses.
    http: http::Pairing,
    /// HTTP/2 connections being decoded, and their streams waiting for responses.
    h2: h2::Connections,
    /// Cgroup ids under the node's pod cgroup root (exec records' and binds' pods).
    cgroups: exec::Cgroups,
    /// Which process bound which port in which pod (accepted connections' processes).
    listeners: listeners::Listeners,
    /// The enrichment the caches below were made from (see [`Ingest::refresh`]).
    derived_from: Option<Arc<Enrichment>>,
    /// Pod UID → address (exec records' pods), built at the first exec record of an enrichment.
    pods_by_uid: Option<HashMap<Box<str>, Ipv4Addr>>,
    /// What HTTP metrics need of an address.
    sides: foldhash::HashMap<IpAddr, Arc<Side>>,
    /// HTTP metric handles per (client, server, method label, status class).
    http_handles: foldhash::HashMap<
        (IpAddr, IpAddr, &'static str, &'static str),
        (prometheus::IntCounter, prometheus::Histogram),
    >,
    /// HTTP records kept per second at most (the rest are counted, not recorded).
    http_records: RateLimit,
    /// Endpoints already described, and their address as text.
    endpoints: foldhash::HashMap<IpAddr, (Arc<Endpoint>, String)>,
}

/// HTTP records kept per second unless configured (`--http-records-per-sec`).
pub const DEFAULT_HTTP_RECORDS_PER_SEC: u32 = 1000;

/// What an answered exchange is counted as.
enum Answered<'a> {
    /// An HTTP/1.x or HTTP/2 response: its request's method (empty: not seen) and its status.
    Http { method: &'a str, code: u32 },
    /// A gRPC call's status.
    Grpc { status: u32 },
}

/// The method slot of a gRPC call's metric handles (no HTTP method label is this).
const GRPC: &str = "gRPC";

fn header(key: &str, value: &str) -> HttpHeader {
    HttpHeader { key: key.to_owned(), value: value.to_owned() }
}

/// A side of an HTTP exchange as its metrics label it.
struct Side {
    namespace: String,
    workload: String,
    node: String,
    pod: String,
}

/// A token bucket: `rate` a second, as many in a burst; rate 0 lets everything through.
struct RateLimit {
    rate: u32,
    tokens: f64,
    last: std::time::Instant,
}

impl RateLimit {
    fn new(rate: u32) -> Self {
        Self { rate, tokens: f64::from(rate), last: std::time::Instant::now() }
    }

    fn take(&mut self) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = std::time::Instant::now();
        let rate = f64::from(self.rate);
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Endpoints cached at most (the cache is cleared beyond it and at every new enrichment).
const ENDPOINT_CACHE: usize = 65536;

/// Unix time minus CLOCK_MONOTONIC now.
pub fn clock_offset_ns() -> i128 {
    let real = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0, |t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()));
    real - mono
}

/// A stored flow as readers get it: with its `time` formatted.
pub fn for_reader(f: &Flow) -> Flow {
    let mut out = f.clone();
    out.time = rfc3339(f.weir.unix_ns);
    out
}

fn rfc3339(unix_ns: u64) -> String {
    let secs = (unix_ns / 1_000_000_000) as i64;
    let nanos = (unix_ns % 1_000_000_000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .unwrap_or_default()
}

fn rule_policy(c: &Cluster, r: &RuleRef) -> Policy {
    let p = &c.policies[r.policy];
    let dir = if r.direction == Direction::Ingress { "ingress" } else { "egress" };
    Policy { name: p.name.clone(), namespace: p.namespace.clone(), rule: format!("{dir}[{}]", r.rule) }
}

fn selected_by(c: &Cluster, idx: &[usize]) -> Vec<Policy> {
    idx.iter()
        .map(|&i| Policy {
            name: c.policies[i].name.clone(),
            namespace: c.policies[i].namespace.clone(),
            rule: String::new(),
        })
        .collect()
}

impl Ingest {
    pub fn new(node: String, enrichment: SharedEnrichment, metrics: Arc<Metrics>) -> Self {
        Self {
            node,
            enrichment,
            metrics,
            clock_offset_ns: clock_offset_ns(),
            pending: Bounded::new(PENDING_DNS),
            http: http::Pairing::default(),
            h2: h2::Connections::default(),
            cgroups: exec::Cgroups::new(None),
            listeners: listeners::Listeners::default(),
            derived_from: None,
            pods_by_uid: None,
            sides: Default::default(),
            http_handles: Default::default(),
            http_records: RateLimit::new(DEFAULT_HTTP_RECORDS_PER_SEC),
            endpoints: Default::default(),
        }
    }

    /// HTTP records kept per second at most (`--http-records-per-sec`; 0: every one).
    pub fn with_http_records_per_sec(mut self, rate: u32) -> Self {
        self.http_records = RateLimit::new(rate);
        self
    }

    /// Where the node's pod cgroups are (`--cgroup-root`): exec records find their pod there.
    pub fn with_cgroup_root(mut self, root: Option<std::path::PathBuf>) -> Self {
        self.cgroups = exec::Cgroups::new(root);
        self
    }

    /// The enrichment now, with every cache made from an older one (endpoint descriptions, the
    /// metrics' sides and handles, the pod UID index) dropped: each event handler starts here.
    fn refresh(&mut self) -> Arc<Enrichment> {
        let e = self.enrichment.read().unwrap_or_else(|p| p.into_inner()).clone();
        if !self.derived_from.as_ref().is_some_and(|c| Arc::ptr_eq(c, &e)) {
            self.endpoints.clear();
            self.sides.clear();
            self.http_handles.clear();
            self.pods_by_uid = None;
            self.derived_from = Some(e.clone());
        }
        e
    }

    /// The endpoint of `ip` and the address as text, described once per enrichment.
    fn cached_endpoint(&mut self, e: &Arc<Enrichment>, ip: IpAddr) -> (Arc<Endpoint>, String) {
        if self.endpoints.len() >= ENDPOINT_CACHE {
            self.endpoints.clear();
        }
        self.endpoints.entry(ip).or_insert_with(|| (Arc::new(Self::endpoint(e, ip)), ip.to_string())).clone()
    }

    fn endpoint(e: &Enrichment, ip: IpAddr) -> Endpoint {
        let IpAddr::V4(v4) = ip else { return Endpoint::default() };
        let identity = e.compiled.identity_of(v4);
        match e.cluster.pod_by_ip(v4) {
            Some(p) => Endpoint {
                identity,
                namespace: p.namespace().to_owned(),
                pod_name: p.name().to_owned(),
                labels: p.info.labels.iter().map(|(k, v)| format!("k8s:{k}={v}")).collect(),
                workloads: p
                    .info
                    .workload()
                    .into_iter()
                    .map(|w| weir_operator_api::flow::Workload { name: w.name.to_string(), kind: w.kind.to_string() })
                    .collect(),
                node_name: p.info.node_name.as_deref().unwrap_or_default().to_owned(),
            },
            None => Endpoint { identity, ..Default::default() },
        }
    }

    /// The first flow of one event, or `None` (an event of no known kind, an HTTP segment that
    /// did not parse).
    pub fn flow(&mut self, ev: &Event) -> Option<Flow> {
        let mut out = Vec::with_capacity(1);
        self.flows(ev, &mut out);
        out.into_iter().next()
    }

    /// The flows of one event, appended to `out`: one, except for an HTTP segment, which gives
    /// one per message it starts that is kept as a record (none when it does not parse: counted).
    pub fn flows(&mut self, ev: &Event, out: &mut Vec<Flow>) {
        self.flows_of(ev.as_ref(), out);
    }

    /// [`Ingest::flows`] of an event read in place ([`weir_dataplane::events::Events::for_each`]).
    pub fn flows_of(&mut self, ev: EventRef<'_>, out: &mut Vec<Flow>) {
        let (e, payload) = match ev {
            EventRef::Flow(e) => (e, None),
            EventRef::Payload(d) => (&d.event, Some(d)),
            EventRef::Exec(x) => {
                out.push(self.exec(x));
                return;
            }
        };
        let event = match (e.kind, payload) {
            (EVENT_BIND, None) => return self.bound(e),
            (EVENT_DROP, None) => FlowEvent::Drop,
            (EVENT_FLOW_NEW, None) => FlowEvent::New,
            (EVENT_FLOW_UPDATE, None) => FlowEvent::Update,
            (EVENT_FLOW_CLOSE, None) => FlowEvent::Close,
            (EVENT_DNS, Some(_)) => FlowEvent::Dns,
            (EVENT_HTTP, Some(d)) => return self.http(d, out),
            (EVENT_H2, Some(d)) => return self.h2(d, out),
            _ => return,
        };
        let enrichment = self.refresh();
        let mut f = self.base_flow(&enrichment, e, event);
        let (src, dst) = (addr(&e.saddr), addr(&e.daddr));
        let (sport, dport) = (u16::from_be(e.sport_be), u16::from_be(e.dport_be));
        let reason = if event == FlowEvent::Drop { DropReason::from_u8(e.reason) } else { None };
        if event == FlowEvent::Drop {
            f.weir.drop_reason = reason.map_or_else(|| format!("unknown_{}", e.reason), |r| r.label().to_owned());
            f.drop_reason_desc = Some(match reason {
                Some(DropReason::PolicyDeniedIngress | DropReason::PolicyDeniedEgress) => "POLICY_DENIED".into(),
                _ => f.weir.drop_reason.to_ascii_uppercase(),
            });
            match reason {
                Some(DropReason::PolicyDeniedEgress) => f.traffic_direction = TrafficDirection::Egress,
                Some(DropReason::PolicyDeniedIngress) => f.traffic_direction = TrafficDirection::Ingress,
                _ => {}
            }
        }
        // Policy: which rules let a connection's first packet through, or which policies
        // isolate the pod that dropped it. Looked up in the compiled policy the datapath holds.
        let policy_drop = matches!(reason, Some(DropReason::PolicyDeniedIngress | DropReason::PolicyDeniedEgress));
        if (event == FlowEvent::New && !f.is_reply) || policy_drop {
            if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) {
                self.attribute(&enrichment, &mut f, s, d, e.proto, dport);
            }
        }
        if e.proc_tgid != 0 {
            f.weir.process =
                Some(weir_operator_api::flow::Process { pid: e.proc_tgid, command: comm(&e.proc_comm), bound: false });
        } else if event == FlowEvent::New && (e.proto == 6 || e.proto == 17) {
            // A connection the pod accepted: leaving it as a reply, or arriving for it (not a
            // reply). Named by the process that bound the port, where that bind was seen.
            let local = match (e.point, f.is_reply) {
                (OBS_FROM_POD, true) => Some((src, sport)),
                (OBS_TO_POD, false) => Some((dst, dport)),
                _ => None,
            };
            if let Some((IpAddr::V4(ip), port)) = local.filter(|(_, port)| self.listeners.has(e.proto, *port)) {
                let uid = enrichment.cluster.pod_by_ip(ip).map(|p| &*p.info.uid).unwrap_or_default();
                if let Some(b) = self.listeners.binder(e.proto, port, uid, &mut self.cgroups) {
                    f.weir.process =
                        Some(weir_operator_api::flow::Process { pid: b.pid, command: b.command, bound: true });
                }
            }
        }
        if event == FlowEvent::Close && e.proto == 6 {
            // Requests still waiting when their server's direction ends (or the connection is
            // reset) will not be answered. The datapath reports a close after the closing
            // segment's payload, so that segment has been read.
            let reset = e.tcp_flags & TCP_RST != 0;
            let http = self.http.closed((src, sport), (dst, dport), reset);
            let h2 = self.h2.closed(((src, sport), (dst, dport)), reset);
            self.metrics.http_unanswered(http.unanswered + h2);
        }
        if let Some(d) = payload {
            self.dns(&mut f, d, src, sport, dst, dport);
        }
        if e.svc_port_be != 0 {
            Self::service(&enrichment, &mut f, e);
        }
        f.summary = summary(&f, e);
        self.metrics.flow(&f);
        out.push(f);
    }

    /// What every record of event `e` starts with: addresses, ports, pods, node, direction and
    /// observation point, the kind of report. A drop whose source could not be verified never
    /// names the pod it claimed to come from: the record keeps the address only.
    fn base_flow(&mut self, enrichment: &Arc<Enrichment>, e: &DatapathEvent, event: FlowEvent) -> Flow {
        let point = match e.point {
            OBS_FROM_POD => Some(ObservationPoint::FromEndpoint),
            OBS_TO_POD => Some(ObservationPoint::ToEndpoint),
            _ => None,
        };
        let unix_ns = (i128::from(e.ktime_ns) + self.clock_offset_ns).max(0) as u64;
        let (src, dst) = (addr(&e.saddr), addr(&e.daddr));
        let ((mut source, src_text), (destination, dst_text)) =
            (self.cached_endpoint(enrichment, src), self.cached_endpoint(enrichment, dst));
        if event == FlowEvent::Drop && DropReason::from_u8(e.reason).is_some_and(source_unverified) {
            source = Arc::default();
        }
        let l7 = matches!(event, FlowEvent::Dns | FlowEvent::Http);
        Flow {
            // Formatted when the flow is read (`for_reader`), not for every flow stored.
            time: String::new(),
            verdict: if event == FlowEvent::Drop { Verdict::Dropped } else { Verdict::Forwarded },
            ip: Ip {
                source: src_text,
                destination: dst_text,
                ip_version: if src.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
            },
            l4: layer4(e),
            source,
            destination,
            kind: if l7 { FlowType::L7 } else { FlowType::L3L4 },
            node_name: self.node.clone(),
            is_reply: e.flags & FLOW_F_REPLY != 0,
            event_type: EventType {
                kind: match event {
                    FlowEvent::Drop => 1,
                    FlowEvent::Dns | FlowEvent::Http => 129,
                    FlowEvent::Exec => 0,
                    FlowEvent::New | FlowEvent::Update | FlowEvent::Close => 4,
                },
            },
            traffic_direction: match point {
                Some(ObservationPoint::FromEndpoint) => TrafficDirection::Egress,
                Some(ObservationPoint::ToEndpoint) => TrafficDirection::Ingress,
                None => TrafficDirection::Unknown,
            },
            trace_observation_point: point,
            weir: WeirInfo { event, packets: e.packets, bytes: e.bytes, unix_ns, ..Default::default() },
            ..Default::default()
        }
    }

    /// The binds the datapath remembers from before this agent started (`WEIR_BINDS`).
    pub fn seed_binds(&mut self, binds: Vec<(weir_bpf_common::BindKey, weir_bpf_common::SockProc)>) {
        let n = binds.len();
        let mut forgotten = 0;
        for (k, p) in binds {
            let binder = listeners::Binder { pid: p.tgid, command: comm(&p.comm) };
            forgotten += self.listeners.bound(k.proto, k.port, k.cgroup_id, binder);
        }
        self.metrics.binds_forgotten(forgotten);
        if n > 0 {
            tracing::info!(binds = n, "ports bound before this start, for accepted connections' processes");
        }
    }

    /// A pod process bound a port (`EVENT_BIND`): remembered for the connections accepted on it.
    fn bound(&mut self, e: &DatapathEvent) {
        let binder = listeners::Binder { pid: e.proc_tgid, command: comm(&e.proc_comm) };
        let forgotten = self.listeners.bound(e.proto, u16::from_be(e.sport_be), e.bind_cgroup_id(), binder);
        self.metrics.binds_forgotten(forgotten);
    }

    /// An exec audit record, attributed to its pod by cgroup.
    fn exec(&mut self, x: &ExecEvent) -> Flow {
        let enrichment = self.refresh();
        let unix_ns = (i128::from(x.ktime_ns) + self.clock_offset_ns).max(0) as u64;
        let (cgroup, uids) = match self.cgroups.path_of(x.cgroup_id) {
            Some(p) => (p.display().to_string(), exec::pod_uids_in(p)),
            None => (String::new(), Vec::new()),
        };
        let by_uid = self.pods_by_uid.get_or_insert_with(|| {
            enrichment
                .cluster
                .pods
                .values()
                .filter(|p| !p.info.uid.is_empty())
                .map(|p| (p.info.uid.clone(), p.ip))
                .collect()
        });
        let pod_ip = uids.iter().find_map(|u| by_uid.get(u.as_str()).copied());
        let (source, attribution) = match (pod_ip, cgroup.is_empty()) {
            (Some(ip), _) => (self.cached_endpoint(&enrichment, IpAddr::V4(ip)).0, "pod"),
            (None, false) => (Arc::default(), "not-in-a-pod"),
            (None, true) => (Arc::default(), "cgroup-gone"),
        };
        // (Lengths as the kernel wrote them: bounded here, the record may be read in place.)
        let binary = exec::printable(&x.filename[..usize::from(x.filename_len).min(x.filename.len())]);
        let args = &x.args[..usize::from(x.args_len).min(x.args.len())];
        let (arguments, arguments_complete) = exec::arguments(args, x.args_total);
        self.metrics.exec(&source.namespace, attribution);
        let mut summary = format!("exec {binary}");
        for a in arguments.iter().skip(1) {
            summary.push(' ');
            summary.push_str(a);
        }
        if !arguments_complete {
            summary.push_str(" …");
        }
        if attribution != "pod" {
            summary.push_str(&format!(" ({attribution})"));
        }
        Flow {
            node_name: self.node.clone(),
            source,
            summary,
            weir: WeirInfo {
                event: FlowEvent::Exec,
                unix_ns,
                exec: Some(weir_operator_api::flow::Exec {
                    pid: x.tgid,
                    ppid: x.ppid,
                    uid: x.uid,
                    binary,
                    arguments,
                    arguments_complete,
                    cgroup,
                    attribution: attribution.into(),
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The HTTP messages an `EVENT_HTTP` segment starts. Every one is paired (requests wait for
    /// their responses, a response takes the oldest waiting request of its connection) and
    /// counted in the metrics, on a path that allocates nothing for a standard method; records
    /// (`l7.http`) are kept per exchange: a request takes one of `--http-records-per-sec`, and
    /// the response of a kept request is kept with it (so a response record always names its
    /// request), the rest counted as skipped. At tens of thousands of requests a second,
    /// building a record for each costs the node more than the requests themselves.
    fn http(&mut self, d: &PayloadEvent, out: &mut Vec<Flow>) {
        let data = &d.data[..usize::from(d.len).min(d.data.len())];
        let enrichment = self.refresh();
        if http::parse_each(data, |m| self.http_message(&enrichment, &d.event, m, out)).is_err() {
            self.metrics.http_unparsed();
        }
    }

    /// One HTTP/1.x message of the segment event `e`: paired, counted, and recorded on the
    /// record budget.
    fn http_message(
        &mut self,
        enrichment: &Arc<Enrichment>,
        e: &DatapathEvent,
        m: http::Message<'_>,
        out: &mut Vec<Flow>,
    ) {
        let (src, dst) = (addr(&e.saddr), addr(&e.daddr));
        let (sport, dport) = (u16::from_be(e.sport_be), u16::from_be(e.dport_be));
        match m {
            http::Message::Request { method, path, host, version } => {
                // Counted on the client's node (or on any node for a client outside the
                // cluster): a cross-node exchange is seen on both nodes, counted once.
                let counted_here = self.counts_here(enrichment, src);
                let url = self.keep_record().then(|| {
                    let path = http::clean_path(path);
                    match host {
                        Some(host) => format!("http://{host}{path}"),
                        None => format!("http://{}{path}", std::net::SocketAddr::new(dst, dport)),
                    }
                });
                let method = http::method(method);
                if let Some(url) = &url {
                    let http = Http {
                        code: 0,
                        method: method.clone().into_owned(),
                        url: url.clone(),
                        protocol: http::protocol(version),
                        headers: Vec::new(),
                    };
                    let l7 = Layer7 { kind: L7Type::Request, latency_ns: 0, dns: None, http: Some(http) };
                    self.l7_record(enrichment, e, l7, false, out);
                }
                let pending = http::Pending { ktime_ns: e.ktime_ns, method, url, counted_here };
                let dropped = self.http.request((src, sport, dst, dport), pending);
                self.metrics.http_unanswered(dropped.unanswered);
            }
            http::Message::Response { code, version } => {
                let (req, dropped) = self.http.response(&(dst, dport, src, sport), e.ktime_ns);
                self.metrics.http_unanswered(dropped.unanswered);
                let latency_ns = req.as_ref().map_or(0, |r| e.ktime_ns.saturating_sub(r.ktime_ns));
                let counted_here = match &req {
                    Some(r) => r.counted_here,
                    None => self.counts_here(enrichment, dst),
                };
                let code = u32::from(code);
                if counted_here {
                    let method = req.as_ref().map_or("", |r| &r.method);
                    let latency = req.is_some().then_some(latency_ns);
                    self.exchange_metrics(enrichment, dst, src, Answered::Http { method, code }, latency);
                }
                // Kept with its request's record; without a request, on the budget.
                let kept = match req {
                    Some(http::Pending { method, url: Some(url), .. }) => Some((method.into_owned(), url)),
                    Some(_) => {
                        self.metrics.http_record_skipped();
                        None
                    }
                    None => self.keep_record().then(Default::default),
                };
                if let Some((method, url)) = kept {
                    let http = Http { code, method, url, protocol: http::protocol(version), headers: Vec::new() };
                    let l7 = Layer7 { kind: L7Type::Response, latency_ns, dns: None, http: Some(http) };
                    self.l7_record(enrichment, e, l7, true, out);
                }
            }
        }
    }

    /// Whether the record budget (`--http-records-per-sec`) allows one more L7 record; counts
    /// it as skipped when not.
    fn keep_record(&mut self) -> bool {
        let kept = self.http_records.take();
        if !kept {
            self.metrics.http_record_skipped();
        }
        kept
    }

    /// The L7 record of event `e` (the caller has decided to keep it: [`Ingest::keep_record`]).
    fn l7_record(
        &mut self,
        enrichment: &Arc<Enrichment>,
        e: &DatapathEvent,
        l7: Layer7,
        is_reply: bool,
        out: &mut Vec<Flow>,
    ) {
        let mut f = self.base_flow(enrichment, e, FlowEvent::Http);
        f.is_reply = is_reply;
        f.l7 = Some(l7);
        if e.svc_port_be != 0 {
            Self::service(enrichment, &mut f, e);
        }
        f.summary = summary(&f, e);
        self.metrics.flow(&f);
        out.push(f);
    }

    /// A segment of an HTTP/2 connection (`EVENT_H2`): read in order into frames and header
    /// blocks (`h2`); requests, responses and gRPC calls' statuses are paired per stream and
    /// counted as HTTP/1.x messages are (metrics always, records within the budget).
    fn h2(&mut self, d: &PayloadEvent, out: &mut Vec<Flow>) {
        let e = &d.event;
        let data = &d.data[..usize::from(d.len).min(d.data.len())];
        let enrichment = self.refresh();
        let (src, dst) = (addr(&e.saddr), addr(&e.daddr));
        let (sport, dport) = (u16::from_be(e.sport_be), u16::from_be(e.dport_be));
        // (Only a request needs it, and a request comes from this segment's sender.)
        let counted_here = self.counts_here(&enrichment, src);
        let segment = h2::Segment {
            ends: ((src, sport), (dst, dport)),
            seq: d.seq,
            seg_len: d.seg_len as usize,
            data,
            now_ns: e.ktime_ns,
            counted_here,
        };
        let mut exchanges = Vec::new();
        self.h2.segment(&segment, &mut exchanges);
        for x in exchanges {
            match x {
                h2::Exchange::Lost(l) => self.metrics.http2_lost(l.label()),
                h2::Exchange::Unanswered(n) => self.metrics.http_unanswered(n),
                h2::Exchange::Request(r) => {
                    if !self.keep_record() {
                        continue;
                    }
                    let headers = if r.grpc { vec![header("content-type", "application/grpc")] } else { Vec::new() };
                    let http = Http { code: 0, method: r.method, url: r.url, protocol: "HTTP/2".into(), headers };
                    let l7 = Layer7 { kind: L7Type::Request, latency_ns: 0, dns: None, http: Some(http) };
                    self.l7_record(&enrichment, e, l7, false, out);
                }
                h2::Exchange::Response(a) => {
                    let counted_here = match &a.request {
                        Some(r) => r.counted_here,
                        None => self.counts_here(&enrichment, dst),
                    };
                    let (method, url) = a.request.map(|r| (r.method, r.url)).unwrap_or_default();
                    let latency = (!url.is_empty()).then_some(a.latency_ns);
                    if counted_here {
                        // A call whose request was not seen counts as a response without one.
                        let answered = match a.grpc_status {
                            Some(status) if !method.is_empty() => Answered::Grpc { status },
                            _ => Answered::Http { method: &method, code: u32::from(a.status) },
                        };
                        self.exchange_metrics(&enrichment, dst, src, answered, latency);
                    }
                    if !self.keep_record() {
                        continue;
                    }
                    let mut headers = Vec::new();
                    if let Some(s) = a.grpc_status {
                        headers.push(header("grpc-status", &s.to_string()));
                        if !a.grpc_message.is_empty() {
                            headers.push(header("grpc-message", &a.grpc_message));
                        }
                    }
                    let http = Http { code: u32::from(a.status), method, url, protocol: "HTTP/2".into(), headers };
                    let l7 = Layer7 { kind: L7Type::Response, latency_ns: a.latency_ns, dns: None, http: Some(http) };
                    self.l7_record(&enrichment, e, l7, true, out);
                }
            }
        }
    }

    /// Whether this node counts an exchange whose client is `client`: the client's node does, and
    /// any node does for a client outside the cluster.
    fn counts_here(&mut self, enrichment: &Arc<Enrichment>, client: IpAddr) -> bool {
        let side = self.side(enrichment, client);
        side.pod.is_empty() || side.node == self.node
    }

    /// What metrics need of an address (namespace, workload, node), described once per
    /// enrichment; cheaper than a whole endpoint.
    fn side(&mut self, enrichment: &Arc<Enrichment>, ip: IpAddr) -> Arc<Side> {
        if self.sides.len() >= ENDPOINT_CACHE {
            self.sides.clear();
            self.http_handles.clear();
        }
        self.sides
            .entry(ip)
            .or_insert_with(|| {
                let e = Self::endpoint(enrichment, ip);
                let workload = e.workloads.first().map_or(e.pod_name.clone(), |w| w.name.clone());
                Arc::new(Side { namespace: e.namespace, workload, node: e.node_name, pod: e.pod_name })
            })
            .clone()
    }

    /// Counts one answered exchange, through metric handles kept per (client, server, method,
    /// status class) — or (client, server, gRPC status) — so the labels are hashed once, not per
    /// request.
    fn exchange_metrics(
        &mut self,
        enrichment: &Arc<Enrichment>,
        client: IpAddr,
        server: IpAddr,
        answered: Answered<'_>,
        latency_ns: Option<u64>,
    ) {
        let key = match answered {
            Answered::Http { method: "", .. } => {
                self.metrics.http_without_request();
                return;
            }
            Answered::Http { method, code } => (client, server, http::method_label(method), http::status_class(code)),
            Answered::Grpc { status } => (client, server, GRPC, h2::grpc_status_name(status)),
        };
        if !self.http_handles.contains_key(&key) {
            let (c, s) = (self.side(enrichment, client), self.side(enrichment, server));
            let handles = match key.2 {
                GRPC => self.metrics.grpc_handles([&c.namespace, &c.workload, &s.namespace, &s.workload, key.3]),
                m => self.metrics.http_handles([&c.namespace, &c.workload, &s.namespace, &s.workload, m, key.3]),
            };
            if self.http_handles.len() >= ENDPOINT_CACHE {
                self.http_handles.clear();
            }
            self.http_handles.insert(key, handles);
        }
        if let Some((count, duration)) = self.http_handles.get(&key) {
            count.inc();
            if let Some(ns) = latency_ns {
                duration.observe(ns as f64 / 1e9);
            }
        }
    }

    /// The Service a translated connection was made to: its destination's, or — on a backend's
    /// reply or a DNS response — its source's. The frontend is kept even when no Service owns it
    /// any more.
    fn service(en: &Enrichment, f: &mut Flow, e: &DatapathEvent) {
        let key = ServiceKey { addr: e.svc_addr, port_be: e.svc_port_be, proto: e.proto, _pad: [0; 5] };
        f.weir.service_frontend = SocketAddr::new(addr(&e.svc_addr), u16::from_be(e.svc_port_be)).to_string();
        let svc = en.services.get(&key).map(|owner| {
            let (namespace, name) = owner.split_once('/').unwrap_or(("", owner));
            Service { name: name.to_owned(), namespace: namespace.to_owned() }
        });
        let response = f.l7.as_ref().is_some_and(|l| l.kind == L7Type::Response);
        if f.is_reply || response {
            f.source_service = svc;
        } else {
            f.destination_service = svc;
            if f.weir.event == FlowEvent::New {
                f.verdict = Verdict::Translated;
            }
        }
    }

    fn attribute(&self, en: &Enrichment, f: &mut Flow, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, dport: u16) {
        let x = decide(&en.compiled, src, dst, proto, dport);
        for (side, ingress) in [(&x.egress, false), (&x.ingress, true)] {
            let (allowed, denied) = match side {
                SideExplain::Allowed { rules } => {
                    let matched = rules.first().and_then(|r| {
                        en.cluster.policies.get(r.policy)?.rules(r.direction)?.get(r.rule).map(|x| x.match_type())
                    });
                    let m = matched.unwrap_or_default();
                    if ingress {
                        f.weir.policy_match.ingress = m;
                    } else {
                        f.weir.policy_match.egress = m;
                    }
                    (rules.iter().map(|r| rule_policy(&en.cluster, r)).collect(), vec![])
                }
                SideExplain::Denied { selected_by: s } => (vec![], selected_by(&en.cluster, s)),
                _ => continue,
            };
            let dir = if ingress { "ingress" } else { "egress" };
            self.metrics.policy_verdict(dir, if allowed.is_empty() { "denied" } else { "allowed" });
            if ingress {
                f.ingress_allowed_by = allowed;
                f.ingress_denied_by = denied;
            } else {
                f.egress_allowed_by = allowed;
                f.egress_denied_by = denied;
            }
        }
    }

    fn dns(&mut self, f: &mut Flow, d: &PayloadEvent, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) {
        let data = &d.data[..usize::from(d.len).min(d.data.len())];
        // Over TCP the segment starts with the message's two-byte length.
        let msg = if d.tcp != 0 { data.get(2..).unwrap_or_default() } else { data };
        f.weir.dns_tcp = d.tcp != 0;
        let Ok(m) = dns::parse(msg) else {
            self.metrics.dns_malformed();
            f.l7 = Some(Layer7 { kind: L7Type::Malformed, latency_ns: 0, dns: Some(Dns::default()), http: None });
            return;
        };
        let mut latency_ns = 0;
        if m.response {
            if let Some(t) = self.pending.remove(&(dst, dport, m.id)) {
                latency_ns = d.event.ktime_ns.saturating_sub(t);
            }
        } else {
            self.pending.insert((src, sport, m.id), d.event.ktime_ns);
            self.pending.trim(|_, _| {});
        }
        // As Hubble marks L7 records: a response is a reply.
        f.is_reply = m.response;
        let client_ns = if m.response { &f.destination.namespace } else { &f.source.namespace };
        self.metrics.dns(client_ns, &m, (latency_ns > 0).then_some(latency_ns));
        f.l7 = Some(Layer7 {
            kind: if m.response { L7Type::Response } else { L7Type::Request },
            latency_ns,
            http: None,
            dns: Some(Dns {
                query: m.name.clone(),
                ips: m.ips.iter().map(ToString::to_string).collect(),
                ttl: m.ttl.unwrap_or(0),
                cnames: m.cnames.clone(),
                rcode: u32::from(m.rcode),
                qtypes: vec![dns::type_name(m.qtype)],
                rrtypes: m.rrtypes.iter().map(|t| dns::type_name(*t)).collect(),
                observation_source: "weir-datapath".into(),
            }),
        });
    }
}

fn layer4(e: &DatapathEvent) -> Layer4 {
    let (sport, dport) = (u16::from_be(e.sport_be), u16::from_be(e.dport_be));
    match e.proto {
        6 => Layer4 {
            tcp: Some(Tcp { source_port: sport, destination_port: dport, flags: TcpFlags::from_bits(e.tcp_flags) }),
            ..Default::default()
        },
        17 => Layer4 { udp: Some(Udp { source_port: sport, destination_port: dport }), ..Default::default() },
        1 => {
            let [kind, code] = e.sport_be.to_ne_bytes();
            Layer4 { icmpv4: Some(Icmp { kind, code }), ..Default::default() }
        }
        _ => Layer4::default(),
    }
}

fn summary(f: &Flow, e: &DatapathEvent) -> String {
    if let Some(h) = f.http() {
        let l7 = f.l7.as_ref().map_or(L7Type::Request, |l| l.kind);
        if let (L7Type::Response, Some(status)) = (l7, h.grpc_status()) {
            let message = h.header("grpc-message").map(|m| format!(" \"{m}\"")).unwrap_or_default();
            let name = h2::grpc_status_name(status);
            return match h.url.is_empty() {
                true => format!("gRPC {name}{message} (request not seen)"),
                false => format!(
                    "gRPC {name}{message} {} ({})",
                    latency_text(f.l7.as_ref().map_or(0, |l| l.latency_ns)),
                    h.path()
                ),
            };
        }
        if l7 == L7Type::Request && h.header("content-type").is_some_and(|c| c.starts_with("application/grpc")) {
            return format!("gRPC call {} ({} {})", h.path(), h.protocol, h.url);
        }
        return match l7 {
            L7Type::Request => format!("{} {} {}", h.protocol, h.method, h.url),
            _ if h.url.is_empty() => format!("{} {} (request not seen)", h.protocol, h.code),
            _ => format!(
                "{} {} {} ({} {})",
                h.protocol,
                h.code,
                latency_text(f.l7.as_ref().map_or(0, |l| l.latency_ns)),
                h.method,
                h.url
            ),
        };
    }
    if let Some((l7, d)) = f.l7.as_ref().and_then(|l| Some((l, l.dns.as_ref()?))) {
        let qtype = d.qtypes.first().map_or("", String::as_str);
        return match l7.kind {
            L7Type::Request => format!("DNS query {} {qtype}", d.query),
            L7Type::Response => {
                let mut answers: Vec<String> = d.cnames.iter().map(|c| format!("CNAME {c}")).collect();
                answers.extend(d.ips.iter().cloned());
                format!(
                    "DNS answer {} {qtype} {}: {} TTL {}",
                    d.query,
                    dns::rcode_name(d.rcode as u8),
                    if answers.is_empty() { "-".into() } else { answers.join(", ") },
                    d.ttl
                )
            }
            L7Type::Malformed => "DNS message that could not be parsed".into(),
        };
    }
    let mut s = match (&f.l4.tcp, &f.l4.icmpv4) {
        (Some(t), _) => format!("TCP Flags: {}", t.flags.names()),
        (_, Some(i)) => match i.kind {
            8 => "ICMPv4 EchoRequest".into(),
            0 => "ICMPv4 EchoReply".into(),
            k => format!("ICMPv4 type {k} code {}", i.code),
        },
        _ if f.l4.udp.is_some() => "UDP".into(),
        _ => format!("IP protocol {}", e.proto),
    };
    if matches!(f.weir.event, FlowEvent::Update | FlowEvent::Close) {
        s.push_str(&format!(
            " ({} packets, {} bytes{})",
            e.packets,
            e.bytes,
            if f.weir.event == FlowEvent::Close { ", closed" } else { "" }
        ));
    }
    s
}

/// A kernel command name as text: up to its NUL, anything but printable ASCII escaped (a pod
/// names its own processes).
fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    raw[..end].iter().flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect()
}

/// A latency as people read it: `850us`, `12ms`, `1.5s`.
fn latency_text(ns: u64) -> String {
    match ns {
        n if n < 1_000_000 => format!("{}us", n / 1_000),
        n if n < 10_000_000_000 => format!("{}ms", n / 1_000_000),
        n => format!("{:.1}s", n as f64 / 1e9),
    }
}

/// The newest flows of this node, and the stream of new ones.
pub struct FlowStore {
    ring: VecDeque<Arc<Flow>>,
    capacity: usize,
    seq: u64,
    tx: broadcast::Sender<Arc<Flow>>,
}

pub type SharedFlowStore = Arc<Mutex<FlowStore>>;

/// A follower may fall this many flows behind before it skips.
const FOLLOW_BUFFER: usize = 16384;

impl FlowStore {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(FOLLOW_BUFFER);
        Self { ring: VecDeque::with_capacity(capacity.min(1 << 16)), capacity: capacity.max(1), seq: 0, tx }
    }

    pub fn push(&mut self, mut f: Flow) {
        self.seq += 1;
        f.weir.seq = self.seq;
        let f = Arc::new(f);
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(f.clone());
        // No follower: nothing to send to, not an error.
        let _ = self.tx.send(f);
    }

    pub fn seen(&self) -> u64 {
        self.seq
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Every stored flow `pred` selects, oldest first, and a receiver for the flows after them.
    pub fn select(&self, pred: impl Fn(&Flow) -> bool) -> (Vec<Arc<Flow>>, broadcast::Receiver<Arc<Flow>>) {
        (self.ring.iter().filter(|f| pred(f)).cloned().collect(), self.tx.subscribe())
    }

    /// The history part of a query, oldest first, and a receiver for what follows it.
    pub fn query(&self, q: &FlowQuery) -> (Vec<Flow>, broadcast::Receiver<Arc<Flow>>) {
        let mut out: Vec<Flow> = self
            .ring
            .iter()
            .rev()
            .filter(|f| q.since_unix_ns.is_none_or(|t| f.weir.unix_ns >= t) && q.filter.matches(f))
            .take(q.last.unwrap_or(usize::MAX))
            .map(|f| for_reader(f))
            .collect();
        out.reverse();
        (out, self.tx.subscribe())
    }
}

/// Drops whose whole point is that the packet's source address is not who it claims to be.
pub fn source_unverified(r: DropReason) -> bool {
    matches!(
        r,
        DropReason::SpoofedSource
            | DropReason::SpoofedSourceFromWire
            | DropReason::TunnelSourceInvalid
            | DropReason::TunnelVniInvalid
            | DropReason::TunnelInnerSourceInvalid
    )
}

#[cfg(test)]
mod tests {
    use weir_operator_api::flow::{Criterion, FlowFilter};

    use super::*;

    fn ev(kind: u8, sport: u16, dport: u16) -> DatapathEvent {
        DatapathEvent {
            saddr: Addr16::from_v4_octets([10, 244, 1, 2]),
            daddr: Addr16::from_v4_octets([10, 244, 2, 3]),
            packets: 1,
            bytes: 60,
            sport_be: sport.to_be(),
            dport_be: dport.to_be(),
            kind,
            proto: 6,
            point: OBS_FROM_POD,
            tcp_flags: 2,
            ..Default::default()
        }
    }

    fn ingest() -> Ingest {
        Ingest::new("n1".into(), Default::default(), Arc::new(Metrics::default()))
    }

    #[test]
    fn events_become_hubble_shaped_flows() {
        let mut i = ingest();
        let f = i.flow(&Event::Flow(ev(EVENT_FLOW_NEW, 40000, 80))).expect("flow");
        assert_eq!(f.verdict, Verdict::Forwarded);
        assert_eq!(f.ip.source, "10.244.1.2");
        assert_eq!(f.l4.tcp.as_ref().map(|t| (t.source_port, t.destination_port)), Some((40000, 80)));
        assert_eq!(f.summary, "TCP Flags: SYN");
        assert_eq!(f.traffic_direction, TrafficDirection::Egress);
        assert_eq!(f.event_type.kind, 4);
        let v = serde_json::to_value(&f).expect("json");
        assert_eq!(v["IP"]["destination"], "10.244.2.3");
        assert_eq!(v["l4"]["TCP"]["flags"]["SYN"], true);
        assert_eq!(v["Type"], "L3_L4");
        let d = i.flow(&Event::Flow(DatapathEvent { reason: 11, ..ev(EVENT_DROP, 1, 2) })).expect("drop");
        assert_eq!((d.verdict, d.weir.drop_reason.as_str()), (Verdict::Dropped, "policy_denied_ingress"));
        assert_eq!(d.drop_reason_desc.as_deref(), Some("POLICY_DENIED"));
        assert_eq!(d.traffic_direction, TrafficDirection::Ingress);
        assert!(i.flow(&Event::Flow(ev(99, 1, 2))).is_none());
        // The process that connected, its name escaped (a pod names its own processes).
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"cu\nrl\x01");
        let p =
            i.flow(&Event::Flow(DatapathEvent { proc_tgid: 4242, proc_comm: comm, ..ev(EVENT_FLOW_NEW, 40001, 80) }));
        let p = p.and_then(|f| f.weir.process).expect("process");
        assert_eq!((p.pid, p.command.as_str()), (4242, "cu\\nrl\\x01"));
    }

    /// A drop because the source could not be verified keeps the address and never names the
    /// pod that owns it; other drops do name it.
    #[test]
    fn drops_of_unverified_sources_never_name_the_claimed_pod() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n\
                    spec: {nodeName: n1, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.244.1.2}\n";
        let snap = crate::source::manifest::snapshot_of(yaml, "test").expect("pod");
        let cluster = Cluster::from_snapshot_with(&snap, None, &BTreeMap::new(), &mut Default::default());
        let en = Enrichment { cluster: Arc::new(cluster), ..Default::default() };
        let mut i = Ingest::new("n1".into(), Arc::new(RwLock::new(Arc::new(en))), Arc::new(Metrics::default()));
        let drop = |i: &mut Ingest, reason: DropReason| {
            i.flow(&Event::Flow(DatapathEvent { reason: reason as u8, ..ev(EVENT_DROP, 1, 2) })).expect("drop")
        };
        assert_eq!(drop(&mut i, DropReason::PolicyDeniedIngress).source.pod(), "x/a");
        for r in [DropReason::SpoofedSource, DropReason::SpoofedSourceFromWire, DropReason::TunnelInnerSourceInvalid] {
            let f = drop(&mut i, r);
            assert_eq!((f.source.pod(), f.ip.source.as_str()), (String::new(), "10.244.1.2"), "{r:?}");
        }
    }

    /// Exec records name their pod through the cgroup tree (the kubelet's `pod<UID>` layout),
    /// or say they are in none.
    #[test]
    fn exec_records_find_their_pod_by_cgroup() {
        use std::os::unix::fs::MetadataExt as _;
        let yaml =
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, uid: 0b1c2d3e-aaaa-bbbb-cccc-123456789abc}\n\
                    spec: {nodeName: n1, containers: [{name: c, image: i}]}\nstatus: {podIP: 10.244.1.2}\n";
        let snap = crate::source::manifest::snapshot_of(yaml, "test").expect("pod");
        let cluster = Cluster::from_snapshot_with(&snap, None, &BTreeMap::new(), &mut Default::default());
        let en = Enrichment { cluster: Arc::new(cluster), ..Default::default() };
        let root = std::env::temp_dir().join(format!("weir-exec-ingest-{}", std::process::id()));
        let in_pod = root.join("pod0b1c2d3e-aaaa-bbbb-cccc-123456789abc").join("ctr");
        let host = root.join("system");
        std::fs::create_dir_all(&in_pod).expect("dirs");
        std::fs::create_dir_all(&host).expect("dirs");
        let mut i = Ingest::new("n1".into(), Arc::new(RwLock::new(Arc::new(en))), Arc::new(Metrics::default()))
            .with_cgroup_root(Some(root.clone()));
        let record = |i: &mut Ingest, cgroup_id: u64| {
            let mut x = ExecEvent {
                ktime_ns: 5,
                cgroup_id,
                tgid: 77,
                ppid: 76,
                uid: 0,
                filename_len: 13,
                args_len: 23,
                args_total: 23,
                kind: weir_bpf_common::EVENT_EXEC,
                _pad: [0; 3],
                comm: [0; 16],
                filename: [0; 256],
                args: [0; 256],
            };
            x.filename[..13].copy_from_slice(b"/usr/bin/curl");
            x.args[..23].copy_from_slice(b"curl\0-s\0http://web:80/\0");
            i.flow(&Event::Exec(Box::new(x))).expect("record")
        };
        let f = record(&mut i, std::fs::metadata(&in_pod).expect("meta").ino());
        let x = f.weir.exec.clone().expect("exec");
        assert_eq!((f.source.pod(), x.attribution.as_str(), x.binary.as_str()), ("x/a".into(), "pod", "/usr/bin/curl"));
        assert_eq!(x.arguments, ["curl", "-s", "http://web:80/"]);
        assert_eq!(f.summary, "exec /usr/bin/curl -s http://web:80/");
        assert!(f.has_type(weir_operator_api::flow::ReportType::Exec));
        let h = record(&mut i, std::fs::metadata(&host).expect("meta").ino());
        assert_eq!((h.source.pod(), h.weir.exec.map(|x| x.attribution)), (String::new(), Some("not-in-a-pod".into())));
        let gone = record(&mut i, u64::MAX);
        assert!(gone.summary.ends_with("(cgroup-gone)"), "{}", gone.summary);

        // Connections the pod accepts name the process that bound the port there (nginx bound
        // 8080 in the pod, a host process bound 9090): the reply leaving the pod, the request
        // arriving for it; nothing for another port, for the host's bind, or for a connection
        // the pod opened itself (its own process, from the socket hooks, is the one named).
        let bind = |i: &mut Ingest, port: u16, cgroup: u64| {
            let mut b = DatapathEvent { packets: cgroup, proc_tgid: 90, ..ev(weir_bpf_common::EVENT_BIND, port, 0) };
            b.saddr = Addr16::default();
            b.proc_comm[..5].copy_from_slice(b"nginx");
            assert!(i.flow(&Event::Flow(b)).is_none(), "a bind is remembered, not recorded");
        };
        bind(&mut i, 8080, std::fs::metadata(&in_pod).expect("meta").ino());
        bind(&mut i, 9090, std::fs::metadata(&host).expect("meta").ino());
        let nginx = weir_operator_api::flow::Process { pid: 90, command: "nginx".into(), bound: true };
        let reply = DatapathEvent { flags: FLOW_F_REPLY, ..ev(EVENT_FLOW_NEW, 8080, 40000) };
        assert_eq!(i.flow(&Event::Flow(reply)).and_then(|f| f.weir.process), Some(nginx.clone()));
        let arriving = DatapathEvent {
            saddr: Addr16::from_v4_octets([10, 244, 2, 3]),
            daddr: Addr16::from_v4_octets([10, 244, 1, 2]),
            point: OBS_TO_POD,
            ..ev(EVENT_FLOW_NEW, 40000, 8080)
        };
        let f = i.flow(&Event::Flow(arriving)).expect("flow");
        assert_eq!(f.weir.process, Some(nginx));
        assert!(serde_json::to_string(&f).expect("json").contains(r#""bound":true"#));
        // A bind from before the agent started, read from WEIR_BINDS at start.
        let key = weir_bpf_common::BindKey {
            cgroup_id: std::fs::metadata(&in_pod).expect("meta").ino(),
            port: 7070,
            proto: 17,
            _pad: [0; 5],
        };
        let mut old = weir_bpf_common::SockProc { tgid: 12, ..Default::default() };
        old.comm[..3].copy_from_slice(b"old");
        i.seed_binds(vec![(key, old)]);
        let udp = DatapathEvent { flags: FLOW_F_REPLY, proto: 17, ..ev(EVENT_FLOW_NEW, 7070, 40000) };
        let named = i.flow(&Event::Flow(udp)).and_then(|f| f.weir.process).map(|p| (p.pid, p.command, p.bound));
        assert_eq!(named, Some((12, "old".into(), true)));
        for (port, flags) in [(8081, FLOW_F_REPLY), (9090, FLOW_F_REPLY), (8080, 0)] {
            let e = DatapathEvent { flags, ..ev(EVENT_FLOW_NEW, port, 40000) };
            assert_eq!(i.flow(&Event::Flow(e)).and_then(|f| f.weir.process), None, "port {port} flags {flags}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn translated_connections_name_their_service() {
        let front = ServiceKey {
            addr: Addr16::from_v4_octets([10, 96, 0, 10]),
            port_be: 80u16.to_be(),
            proto: 6,
            _pad: [0; 5],
        };
        let services = Arc::new(BTreeMap::from([(front, "shop/web".to_owned())]));
        let shared: SharedEnrichment = Arc::new(RwLock::new(Arc::new(Enrichment { services, ..Default::default() })));
        let mut i = Ingest::new("n1".into(), shared, Arc::new(Metrics::default()));
        let svc = |e: DatapathEvent| DatapathEvent { svc_addr: front.addr, svc_port_be: front.port_be, ..e };
        let f = i.flow(&Event::Flow(svc(ev(EVENT_FLOW_NEW, 40000, 8080)))).expect("flow");
        assert_eq!(f.verdict, Verdict::Translated);
        assert_eq!(f.destination_service.as_ref().map(|s| s.full_name()).as_deref(), Some("shop/web"));
        assert_eq!((f.source_service.as_ref(), f.weir.service_frontend.as_str()), (None, "10.96.0.10:80"));
        let v = serde_json::to_value(&f).expect("json");
        assert_eq!(
            (v["destination_service"]["namespace"].as_str(), v["destination_service"]["name"].as_str()),
            (Some("shop"), Some("web"))
        );
        // Later reports of the connection are plain forwards; a reply names the Service as its source.
        let u = i.flow(&Event::Flow(svc(ev(EVENT_FLOW_UPDATE, 40000, 8080)))).expect("update");
        assert_eq!((u.verdict, u.destination_service.is_some()), (Verdict::Forwarded, true));
        let r = i
            .flow(&Event::Flow(DatapathEvent { flags: FLOW_F_REPLY, ..svc(ev(EVENT_FLOW_NEW, 8080, 40000)) }))
            .expect("reply");
        assert_eq!((r.verdict, r.destination_service.is_some()), (Verdict::Forwarded, false));
        assert_eq!(r.source_service.map(|s| s.name).as_deref(), Some("web"));
        // A frontend no Service owns (any more) is still shown; no frontend, no Service.
        let gone = DatapathEvent { svc_port_be: 81u16.to_be(), ..svc(ev(EVENT_FLOW_NEW, 40001, 8080)) };
        let g = i.flow(&Event::Flow(gone)).expect("flow");
        assert_eq!((g.destination_service, g.weir.service_frontend.as_str()), (None, "10.96.0.10:81"));
        let plain = i.flow(&Event::Flow(ev(EVENT_FLOW_NEW, 40002, 8080))).expect("flow");
        assert!(plain.weir.service_frontend.is_empty() && plain.destination_service.is_none());
    }

    fn dns_event(payload: &[u8], sport: u16, dport: u16, response: bool, t: u64) -> Event {
        let event = DatapathEvent { proto: 17, ktime_ns: t, ..ev(EVENT_DNS, sport, dport) };
        let mut e = PayloadEvent::with_data(event, false, payload);
        if response {
            (e.event.saddr, e.event.daddr) = (e.event.daddr, e.event.saddr);
        }
        Event::Payload(Box::new(e))
    }

    fn http_event(payload: &[u8], client_port: u16, response: bool, t: u64) -> Event {
        let mut e =
            PayloadEvent::with_data(DatapathEvent { ktime_ns: t, ..ev(EVENT_HTTP, client_port, 8080) }, true, payload);
        if response {
            (e.event.saddr, e.event.daddr) = (e.event.daddr, e.event.saddr);
            (e.event.sport_be, e.event.dport_be) = (e.event.dport_be, e.event.sport_be);
        }
        Event::Payload(Box::new(e))
    }

    fn h2_event(payload: &[u8], client_port: u16, response: bool, seq: u32, t: u64) -> Event {
        let mut e =
            PayloadEvent::with_data(DatapathEvent { ktime_ns: t, ..ev(EVENT_H2, client_port, 50051) }, true, payload);
        e.seq = seq;
        if response {
            (e.event.saddr, e.event.daddr) = (e.event.daddr, e.event.saddr);
            (e.event.sport_be, e.event.dport_be) = (e.event.dport_be, e.event.sport_be);
        }
        Event::Payload(Box::new(e))
    }

    #[test]
    fn grpc_calls_become_hubble_http2_records_and_grpc_metrics() {
        let mut i = ingest();
        // The preface, then a call's HEADERS: POST, http, :path and content-type as literals.
        let mut seg = h2::PREFACE.to_vec();
        let mut block = vec![0x83, 0x86, 0x04, 14];
        block.extend(b"/shop.Cart/Add");
        block.extend([0x0f, 0x10, 16]);
        block.extend(b"application/grpc");
        seg.extend(h2::frame(1, 0x4, 1, &block));
        let mut out = Vec::new();
        i.flows(&h2_event(&seg, 40000, false, 1, 1_000), &mut out);
        let [req] = &out[..] else { panic!("{out:?}") };
        assert_eq!(req.summary, "gRPC call /shop.Cart/Add (HTTP/2 http://10.244.2.3:50051/shop.Cart/Add)");
        let http = req.http().expect("http");
        assert_eq!((http.method.as_str(), http.protocol.as_str(), http.code), ("POST", "HTTP/2", 0));
        // A Trailers-Only answer: :status 200, grpc-status 7 and a message, ending the stream.
        let mut answer = h2::frame(4, 0, 0, &[]);
        let mut block = vec![0x88, 0x00, 11];
        block.extend(b"grpc-status");
        block.extend([1, b'7', 0x00, 12]);
        block.extend(b"grpc-message");
        block.extend([6]);
        block.extend(b"denied");
        answer.extend(h2::frame(1, 0x5, 1, &block));
        out.clear();
        i.flows(&h2_event(&answer, 40000, true, 900, 3_001_000), &mut out);
        let [resp] = &out[..] else { panic!("{out:?}") };
        assert_eq!(resp.summary, "gRPC PERMISSION_DENIED \"denied\" 3ms (/shop.Cart/Add)");
        assert!(resp.is_reply);
        let http = resp.http().expect("http");
        assert_eq!((http.code, http.grpc_status(), http.header("grpc-message")), (200, Some(7), Some("denied")));
        assert_eq!(resp.l7.as_ref().map(|l| l.latency_ns), Some(3_000_000));
        let text = String::from_utf8(i.metrics.render()).expect("utf-8");
        assert!(
            text.contains("weir_grpc_requests_total{") && text.contains("grpc_status=\"PERMISSION_DENIED\""),
            "{text}"
        );
        assert!(!text.contains("weir_http_requests_total{"), "a gRPC call is not an HTTP metric:\n{text}");
        // A connection whose start was not seen: counted, nothing decoded.
        out.clear();
        i.flows(&h2_event(&h2::frame(1, 0x4, 3, &[0xbe]), 40001, false, 5, 4_000_000), &mut out);
        assert!(out.is_empty());
        let text = String::from_utf8(i.metrics.render()).expect("utf-8");
        assert!(text.contains("weir_http2_lost_total{reason=\"start_missed\"} 1"), "{text}");
        // An answer to a call that was never made (a hostile server): reported without a
        // request, counted as such, not as a gRPC call.
        let start = [&h2::PREFACE[..], &h2::frame(4, 0, 0, &[])].concat();
        i.flows(&h2_event(&start, 40002, false, 1, 5_000_000), &mut out);
        i.flows(&h2_event(&answer, 40002, true, 1, 6_000_000), &mut out);
        let text = String::from_utf8(i.metrics.render()).expect("utf-8");
        assert!(text.contains("\nweir_http_responses_without_request_total 1\n"), "{text}");
        assert_eq!(text.matches("weir_grpc_requests_total{").count(), 1, "{text}");
        assert!(out.last().is_some_and(|f| f.summary.ends_with("(request not seen)")), "{out:?}");
    }

    #[test]
    fn http_requests_and_responses_are_paired_per_connection() {
        let mut i = ingest();
        let req =
            i.flow(&http_event(b"GET /a?secret=1 HTTP/1.1\r\nHost: web\r\n\r\n", 40000, false, 1_000)).expect("req");
        assert_eq!(req.summary, "HTTP/1.1 GET http://web/a");
        assert_eq!((req.kind, req.event_type.kind, req.weir.event), (FlowType::L7, 129, FlowEvent::Http));
        // A request on another connection, answered first: no cross-pairing.
        i.flow(&http_event(b"POST /b HTTP/1.1\r\n\r\n", 40001, false, 2_000)).expect("req");
        let resp = i.flow(&http_event(b"HTTP/1.1 500 Oops\r\n\r\n", 40001, true, 5_002_000)).expect("resp");
        let h = resp.http().expect("http");
        assert_eq!((h.code, h.method.as_str(), h.url.as_str()), (500, "POST", "http://10.244.2.3:8080/b"));
        assert_eq!(resp.l7.as_ref().map(|l| (l.kind, l.latency_ns)), Some((L7Type::Response, 5_000_000)));
        assert!(resp.is_reply);
        assert_eq!(resp.summary, "HTTP/1.1 500 5ms (POST http://10.244.2.3:8080/b)");
        let v = serde_json::to_value(&resp).expect("json");
        assert_eq!(v["l7"]["http"]["code"], 500);
        assert_eq!(v["l7"]["type"], "RESPONSE");
        assert!(v["l7"].get("dns").is_none(), "{v}");
        let resp = i.flow(&http_event(b"HTTP/1.1 200 OK\r\n\r\n", 40000, true, 3_000)).expect("resp");
        assert_eq!(resp.http().map(|h| (h.code, h.url.as_str())), Some((200, "http://web/a")));
        // A response whose request was not seen: reported without one, no latency.
        let lone = i.flow(&http_event(b"HTTP/1.0 404 Not Found\r\n\r\n", 40000, true, 9_000)).expect("resp");
        assert_eq!(lone.http().map(|h| (h.code, h.method.as_str())), Some((404, "")));
        assert_eq!(lone.l7.as_ref().map(|l| l.latency_ns), Some(0));
        assert_eq!(lone.summary, "HTTP/1.0 404 (request not seen)");
        // Two pipelined requests in one segment: two records, two waiting.
        let mut out = Vec::new();
        i.flows(&http_event(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n", 40002, false, 10), &mut out);
        assert_eq!(out.len(), 2);
        // Not HTTP after all: nothing (counted).
        assert!(i.flow(&http_event(b"GET \x00\x01", 40003, false, 10)).is_none());
        let text = String::from_utf8(i.metrics.render()).expect("utf-8");
        assert!(text.contains("weir_http_unparsed_total 1"), "{text}");
        assert!(text.contains("weir_http_responses_without_request_total 1"), "{text}");
        assert!(text.contains("status=\"5xx\"} 1"), "{text}");
    }

    #[test]
    fn http_records_are_kept_per_exchange_and_every_exchange_is_counted() {
        // A budget of two records a second: one exchange's request and response.
        let mut i = ingest().with_http_records_per_sec(2);
        let mut out = Vec::new();
        for (port, t) in [(40000, 1_000), (40001, 2_000), (40002, 3_000)] {
            i.flows(&http_event(b"GET /x HTTP/1.1\r\nHost: web\r\n\r\n", port, false, t), &mut out);
        }
        // The second request took the last token; the third has none.
        assert_eq!(out.len(), 2, "{out:?}");
        out.clear();
        for (port, t) in [(40002, 9_000), (40001, 8_000), (40000, 7_000)] {
            i.flows(&http_event(b"HTTP/1.1 204 No Content\r\n\r\n", port, true, t), &mut out);
        }
        // The kept requests' responses are kept though the budget is spent, and name their
        // request; the unkept one's response is not kept without its request.
        let kept: Vec<_> = out.iter().filter_map(|f| f.http().map(|h| (f.ports().0, h.url.clone()))).collect();
        assert_eq!(kept, [(8080, "http://web/x".to_owned()), (8080, "http://web/x".to_owned())], "{out:?}");
        let latencies: Vec<_> = out.iter().filter_map(|f| f.l7.as_ref().map(|l| l.latency_ns)).collect();
        assert_eq!(latencies, [6_000, 6_000]);
        let text = String::from_utf8(i.metrics.render()).expect("utf-8");
        // Every exchange counted, with its latency, recorded or not.
        assert!(text.contains("status=\"2xx\"} 3"), "{text}");
        let durations = |l: &&str| l.starts_with("weir_http_request_duration_seconds_count{") && l.ends_with(" 3");
        assert_eq!(text.lines().filter(durations).count(), 1, "{text}");
        assert!(text.contains("weir_http_records_skipped_total 2"), "{text}");
    }

    #[test]
    fn dns_queries_and_answers_are_paired_for_latency() {
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'e', b'b', 0, 0, 1, 0, 1];
        let mut i = ingest();
        let fq = i.flow(&dns_event(&q, 5555, 53, false, 1_000)).expect("query");
        assert_eq!(fq.l7.as_ref().map(|l| l.kind), Some(L7Type::Request));
        assert_eq!(fq.summary, "DNS query web. A");
        q[2] = 0x81;
        q[3] = 0x80;
        q[7] = 1;
        q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 1, 2, 3]);
        let fr = i.flow(&dns_event(&q, 53, 5555, true, 251_000)).expect("response");
        let l7 = fr.l7.expect("l7");
        assert_eq!((l7.kind, l7.latency_ns), (L7Type::Response, 250_000));
        assert_eq!(l7.dns.as_ref().map(|d| d.ips.clone()), Some(vec!["10.1.2.3".to_owned()]));
        assert_eq!(fr.summary, "DNS answer web. A NOERROR: 10.1.2.3 TTL 30");
        let bad = i.flow(&dns_event(&[1, 2, 3], 5555, 53, false, 5)).expect("malformed");
        assert_eq!(bad.l7.map(|l| l.kind), Some(L7Type::Malformed));
    }

    #[test]
    fn the_store_keeps_the_newest_and_filters_history() {
        let mut s = FlowStore::new(3);
        let mut i = ingest();
        for port in [80, 81, 82, 83] {
            s.push(i.flow(&Event::Flow(ev(EVENT_FLOW_NEW, 40000, port))).expect("flow"));
        }
        assert_eq!((s.len(), s.seen()), (3, 4));
        let all = s.query(&FlowQuery::default()).0;
        assert_eq!(all.iter().map(|f| f.ports().1).collect::<Vec<_>>(), [81, 82, 83]);
        let q = FlowQuery {
            filter: FlowFilter { include: vec![], exclude: vec![Criterion::Port(82)] },
            last: Some(1),
            ..Default::default()
        };
        assert_eq!(s.query(&q).0.iter().map(|f| f.ports().1).collect::<Vec<_>>(), [83]);
    }
}
