//! The agent's local API, spoken by `weir-cni` (and the CLI) over a unix socket: one JSON
//! request line, one JSON response line, per connection. Versioned by `PROTOCOL`.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Declares a closed set of names that travel as strings in JSON (Hubble's spelling where Hubble
/// has the field) and are typed everywhere else: `as_str` gives the wire name, `parse` takes it back, ignoring case.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $s)] $v),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $s),+
                }
            }

            /// The variant named `s` (any case).
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(s))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| {
                    let known: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    serde::de::Error::custom(format!("unknown {} {s:?} (expected {})", stringify!($name), known.join(", ")))
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

pub mod flow;

pub const PROTOCOL: u32 = 1;
/// Default socket path on a node.
pub const DEFAULT_SOCKET: &str = "/run/weir/agent.sock";

/// Error codes the agent returns. 1–11 and 50/51 are the CNI spec's; 100+ are weir's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    pub const PLUGIN_NOT_AVAILABLE_LIMITED: u32 = 51;
    /// ADD for a container/interface that already has an attachment.
    pub const ALREADY_ATTACHED: u32 = 100;
    /// The node's pod CIDR has no free address.
    pub const ADDRESSES_EXHAUSTED: u32 = 101;
    /// A kernel object (link, route, map, program) could not be set up.
    pub const DATAPATH: u32 = 102;
    /// CHECK found the attachment differs from what ADD set up.
    pub const CHECK_FAILED: u32 = 103;
    /// The agent refused the caller (neither root nor the agent's user).
    pub const PERMISSION_DENIED: u32 = 104;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Add(Attachment),
    Del(AttachmentRef),
    Check(Attachment),
    Status,
    Gc(GcRequest),
    /// Endpoints as the agent and the kernel maps see them (CLI).
    Endpoints,
    /// Programs attached per interface and the datapath counters, read from the kernel.
    Datapath,
    /// Service frontends and backends as the kernel's map holds them.
    Services,
    /// The most recent packet drops reported by the datapath (newest last).
    Drops {
        #[serde(default)]
        last: Option<usize>,
    },
    /// Would a new connection be allowed by NetworkPolicy, and by which rules? `from`/`to` are
    /// `namespace/pod` or an IPv4 address; `protocol` is tcp or udp.
    PolicyExplain {
        from: String,
        to: String,
        port: u16,
        protocol: String,
    },
    /// The effective policy of this node's endpoints (or of one pod, `namespace/pod`).
    Policies {
        #[serde(default)]
        pod: Option<String>,
    },
    /// Recent flows (and, with `follow`, a stream of new ones: one `Flows` line per batch until
    /// the client hangs up).
    Flows(flow::FlowQuery),
}

/// Identifies one attachment: the CNI spec's (container ID, ifname) pair.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentRef {
    pub container_id: String,
    pub ifname: String,
    /// May be empty on DEL (the runtime may no longer know it).
    #[serde(default)]
    pub netns: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(flatten)]
    pub id: AttachmentRef,
    #[serde(default)]
    pub pod_namespace: String,
    #[serde(default)]
    pub pod_name: String,
    #[serde(default)]
    pub pod_uid: String,
    /// MTU requested by the network config; the agent's default when absent.
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    /// Attachments to keep (`cni.dev/valid-attachments`); all others of this network go.
    pub valid: Vec<AttachmentRef>,
}

/// What ADD (and CHECK) report back: enough for the plugin to write the CNI result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub host_ifname: String,
    pub host_mac: String,
    pub pod_mac: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// True when the agent can serve ADD: datapath loaded and the node's pod CIDR known.
    pub ready: bool,
    pub reason: String,
    pub node: String,
    pub pod_cidr: Option<String>,
    /// Cluster objects this node refuses to apply, each with its kind, name and reason (a
    /// refused object keeps its last good version, or is enforced closed: see the docs).
    #[serde(default)]
    pub rejected: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRow {
    pub endpoint: Endpoint,
    /// Whether the kernel's endpoint map holds this pod with the expected ifindex.
    pub in_datapath: bool,
}

/// The datapath as the kernel reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathInfo {
    /// tcx ingress programs per interface, as `BPF_PROG_QUERY` lists them.
    pub attachments: Vec<IfacePrograms>,
    /// Counters summed over CPUs: `drop_<reason>`, `forwarded_local`, `events_lost`, ...
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// One Service frontend as `WEIR_SERVICES` holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    /// `namespace/name`, when the agent knows which Service wrote the entry.
    pub service: Option<String>,
    pub frontend: String,
    pub protocol: String,
    pub backends: Vec<String>,
}

/// A Service the agent did not write (or left as it was), and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedService {
    pub service: String,
    pub reason: String,
}

/// Drops as the datapath reported them on its ring buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    pub events: Vec<DropRecord>,
    /// Drops the agent has read since it started (the list keeps only the most recent).
    pub seen: u64,
    /// Events the datapath could not put on the ring buffer (counted in the kernel).
    pub lost: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRecord {
    /// Milliseconds since the Unix epoch when the agent read the event.
    pub unix_ms: u64,
    /// `DropReason` label, e.g. `spoofed_source`.
    pub reason: String,
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    pub ifindex: u32,
    /// `namespace/name` of the pod whose interface saw the packet, when it is one.
    #[serde(default)]
    pub pod: Option<String>,
}

wire_enum! {
    /// How one direction of a policy explanation ends.
    SideVerdict {
        /// No policy selects the endpoint in this direction: everything is allowed.
        #[default]
        NotIsolated = "not-isolated",
        Allowed = "allowed",
        /// Isolated, and no rule allows it.
        Denied = "denied",
        /// The endpoint's policy could not be compiled: the datapath denies until it can.
        FailClosed = "fail-closed",
    }
}

/// One direction of a policy explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySide {
    pub verdict: SideVerdict,
    /// The pod whose policy decides this direction (the source for egress, the destination
    /// for ingress), when it is a pod.
    pub endpoint: Option<String>,
    /// The rules that allow it: `namespace/name ingress[i]: <rule>`.
    #[serde(default)]
    pub rules: Vec<String>,
    /// The policies that isolate the endpoint in this direction.
    #[serde(default)]
    pub selected_by: Vec<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyExplanation {
    pub allowed: bool,
    pub from: String,
    pub to: String,
    pub protocol: String,
    pub port: u16,
    /// The identities the datapath sees for the two addresses, described.
    pub src_identity: String,
    pub dst_identity: String,
    pub egress: PolicySide,
    pub ingress: PolicySide,
}

/// One direction of an endpoint's effective policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionPolicy {
    pub selected_by: Vec<String>,
    /// What is allowed, one line per (peer, ports), with the rules behind it.
    pub allows: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointPolicyRow {
    pub pod: String,
    pub ip: Ipv4Addr,
    pub identity: u32,
    /// `None`: not isolated in this direction (everything allowed).
    pub ingress: Option<DirectionPolicy>,
    pub egress: Option<DirectionPolicy>,
    pub fail_closed: Option<String>,
    /// Entries this endpoint holds in the datapath.
    pub entries: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub endpoints: Vec<EndpointPolicyRow>,
    /// Policies that failed validation (their last valid version, if any, stays enforced).
    pub rejected: Vec<String>,
    /// Endpoints that went fail-closed since the agent started.
    pub fail_closed_total: u64,
    pub identities: usize,
    pub prefixes: usize,
    pub entries: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfacePrograms {
    pub iface: String,
    /// tcx ingress.
    pub programs: Vec<String>,
    /// tcx egress (pods' host veths: what the node's stack delivers into the pod).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
    /// The interface does not exist (an endpoint whose pod's namespace is gone, its DEL pending).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Added(Endpoint),
    Deleted,
    Checked(Endpoint),
    Status(Status),
    Collected {
        removed: Vec<AttachmentRef>,
    },
    Endpoints {
        rows: Vec<EndpointRow>,
    },
    Datapath(DatapathInfo),
    Drops(Drops),
    Services {
        rows: Vec<ServiceRow>,
        #[serde(default)]
        rejected: Vec<RejectedService>,
    },
    PolicyExplain(PolicyExplanation),
    Policies(PolicyReport),
    Flows(flow::Flows),
    Error(ApiError),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

impl ApiError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self { code, msg: msg.into(), details: details.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let req = Request::Add(Attachment {
            id: AttachmentRef { container_id: "c1".into(), ifname: "eth0".into(), netns: "/var/run/netns/x".into() },
            pod_namespace: "default".into(),
            pod_name: "web".into(),
            pod_uid: "u".into(),
            mtu: None,
        });
        let line = serde_json::to_string(&req).expect("serialize");
        assert!(line.contains(r#""op":"add""#) && line.contains(r#""container_id":"c1""#), "{line}");
        assert_eq!(serde_json::from_str::<Request>(&line).expect("parse"), req);
        let st: Request = serde_json::from_str(r#"{"op":"status"}"#).expect("status");
        assert_eq!(st, Request::Status);
    }
}

/// A synchronous client: one request, one response, with a deadline on both directions.
pub mod client {
    use std::{
        io::{BufRead, BufReader, Write},
        os::unix::net::UnixStream,
        path::Path,
        time::Duration,
    };

    use super::{Request, Response};

    #[derive(Debug)]
    pub enum CallError {
        /// Nobody is serving the socket (agent down).
        Connect(std::io::Error),
        /// The agent did not answer in time.
        Timeout(Duration),
        Io(std::io::Error),
        /// The answer was not a response this client understands.
        Decode(serde_json::Error),
    }

    impl std::fmt::Display for CallError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                CallError::Connect(e) => write!(f, "cannot reach weir-agent: {e}"),
                CallError::Timeout(d) => write!(f, "weir-agent did not answer within {d:?}"),
                CallError::Io(e) => write!(f, "talking to weir-agent: {e}"),
                CallError::Decode(e) => write!(f, "bad answer from weir-agent: {e}"),
            }
        }
    }

    impl std::error::Error for CallError {}

    pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, CallError> {
        let mut stream = UnixStream::connect(socket).map_err(CallError::Connect)?;
        stream.set_read_timeout(Some(timeout)).map_err(CallError::Io)?;
        stream.set_write_timeout(Some(timeout)).map_err(CallError::Io)?;
        let mut line = serde_json::to_vec(req).map_err(CallError::Decode)?;
        line.push(b'\n');
        stream.write_all(&line).map_err(CallError::Io)?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => CallError::Timeout(timeout),
            _ => CallError::Io(e),
        })?;
        serde_json::from_str(&reply).map_err(CallError::Decode)
    }

    /// Sends `req` and hands every response line to `each` until the agent closes the stream or
    /// `each` returns false. No read timeout: a follow stream can be quiet for long.
    pub fn stream(socket: &Path, req: &Request, mut each: impl FnMut(Response) -> bool) -> Result<(), CallError> {
        let mut stream = UnixStream::connect(socket).map_err(CallError::Connect)?;
        let mut line = serde_json::to_vec(req).map_err(CallError::Decode)?;
        line.push(b'\n');
        stream.write_all(&line).map_err(CallError::Io)?;
        for reply in BufReader::new(stream).lines() {
            let reply = reply.map_err(CallError::Io)?;
            if !each(serde_json::from_str(&reply).map_err(CallError::Decode)?) {
                break;
            }
        }
        Ok(())
    }
}
