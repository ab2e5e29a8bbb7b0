//! The kernel ABI of weir's datapath: every map key/value and event that crosses the
//! kernel/userspace boundary, the map and program names, and the one list of drop reasons.
//!
//! Rules (see STYLE.md §2): `#[repr(C)]`, fields ordered by size, explicit `_pad` fields, a size
//! assertion beside every type, no bool/enum/usize in map data. Addresses are 16 bytes: IPv4 is
//! stored IPv4-mapped (`::ffff:a.b.c.d`) so IPv6 needs no ABI change.
#![no_std]

/// Bumped whenever a map layout changes; pins live under `<bpffs>/weir/v{ABI_VERSION}/`.
pub const ABI_VERSION: u32 = 7;

/// Map names, as the eBPF object and the pins name them (kernel limit: 15 bytes).
pub mod maps {
    pub const ENDPOINTS: &str = "WEIR_ENDPOINTS";
    pub const TUNNEL: &str = "WEIR_TUNNEL";
    pub const NAT_FWD: &str = "WEIR_NAT_FWD";
    pub const NAT_REV: &str = "WEIR_NAT_REV";
    pub const COUNTERS: &str = "WEIR_COUNTERS";
    pub const EVENTS: &str = "WEIR_EVENTS";
    pub const SERVICES: &str = "WEIR_SERVICES";
    pub const BACKENDS: &str = "WEIR_BACKENDS";
    pub const SOCK_REVNAT: &str = "WEIR_SOCK_RNAT";
    pub const AFFINITY: &str = "WEIR_AFFINITY";
    pub const MAGLEV: &str = "WEIR_MAGLEV";
    pub const LB_CT: &str = "WEIR_LB_CT";
    pub const LB_REV: &str = "WEIR_LB_REV";
    pub const CT_IN: &str = "WEIR_CT_IN";
    /// Program array for tail calls (indices in [`crate::tails`]).
    pub const TAILS: &str = "WEIR_TAILS";
    /// NetworkPolicy: address prefix → identity.
    pub const IPCACHE: &str = "WEIR_IPCACHE";
    /// NetworkPolicy: per-endpoint allow entries (LPM).
    pub const POLICY: &str = "WEIR_POLICY";
    /// NetworkPolicy: local endpoint → identity and isolation flags.
    pub const POLICY_EP: &str = "WEIR_POLICY_EP";
    /// NetworkPolicy connection tracking: replies of accepted connections pass.
    pub const POLICY_CT: &str = "WEIR_POLICY_CT";
    /// Per-connection flow counters (observability).
    pub const FLOWS: &str = "WEIR_FLOWS";
    /// Run-time settings (indices in [`crate::settings`]).
    pub const SETTINGS: &str = "WEIR_SETTINGS";
    /// Every node's underlay address (this node's too) → `NODE_F_*` flags: who may send
    /// tunnel traffic, and whose tunnel port pods may not reach.
    pub const NODES: &str = "WEIR_NODES";
    /// The policy verdict of a fragmented datagram's first fragment, for the fragments after it.
    pub const FRAGS: &str = "WEIR_FRAGS";
    /// Socket cookie → the process that connected it (flows with their process).
    pub const SOCK_PROC: &str = "WEIR_SOCK_PROC";
    /// (cgroup id, port, protocol) → the process that bound it (`weir_sock_bind4`): what the
    /// agent reads at start, so connections accepted after a restart still name their process.
    pub const BINDS: &str = "WEIR_BINDS";
    pub const ALL: [&str; 25] = [
        ENDPOINTS,
        TUNNEL,
        NAT_FWD,
        NAT_REV,
        COUNTERS,
        EVENTS,
        SERVICES,
        BACKENDS,
        SOCK_REVNAT,
        AFFINITY,
        MAGLEV,
        LB_CT,
        LB_REV,
        CT_IN,
        TAILS,
        IPCACHE,
        POLICY,
        POLICY_EP,
        POLICY_CT,
        FLOWS,
        SETTINGS,
        NODES,
        FRAGS,
        SOCK_PROC,
        BINDS,
    ];
}

/// Program names (the function names in bpf/programs).
pub mod programs {
    /// tcx ingress of a pod's host-side veth: traffic leaving the pod.
    pub const FROM_POD: &str = "weir_from_pod";
    /// tcx ingress of the node's uplink: traffic arriving from other nodes or the outside.
    pub const FROM_WIRE: &str = "weir_from_wire";
    /// tcx ingress of the VXLAN device: decapsulated traffic from other nodes.
    pub const FROM_VXLAN: &str = "weir_from_vxlan";
    /// tcx egress of `weir_host`, where the agent routes the node's pod CIDR: what the node's
    /// stack sends to a pod (its own traffic, hostPort DNAT, other interfaces), judged and then
    /// handed into the pod's veth. Traffic weir redirects itself never passes here.
    pub const TO_POD: &str = "weir_to_pod";
    /// Tail call from `weir_from_wire`: a load-balanced packet whose backend is on another node
    /// (masquerade, then tunnel or FIB). A fresh stack frame: the verifier caps the combined
    /// depth of one program's call chain at 512 bytes.
    pub const LB_REMOTE: &str = "weir_lb_remote";
    /// Every tc program; the loader loads them all.
    pub const ALL: [&str; 5] = [FROM_POD, FROM_WIRE, FROM_VXLAN, LB_REMOTE, TO_POD];
    /// cgroup/connect4: socket-level Service translation at connect().
    pub const SOCK_CONNECT4: &str = "weir_sock_conn4";
    /// cgroup/sendmsg4: the same for unconnected UDP sends.
    pub const SOCK_SENDMSG4: &str = "weir_sock_send4";
    /// cgroup/recvmsg4: replies on unconnected UDP come from the Service address.
    pub const SOCK_RECVMSG4: &str = "weir_sock_recv4";
    /// cgroup/getpeername4: a connected socket's peer is the Service address.
    pub const SOCK_GETPEERNAME4: &str = "weir_sock_peer4";
    pub const SOCK: [&str; 4] = [SOCK_CONNECT4, SOCK_SENDMSG4, SOCK_RECVMSG4, SOCK_GETPEERNAME4];
    /// cgroup/post_bind4: with flow events on, a pod process's bind() is reported
    /// (`EVENT_BIND`), so connections accepted on that port name the process that bound it.
    pub const SOCK_POST_BIND4: &str = "weir_sock_bind4";
    /// cgroup/post_bind6: the same for IPv6 sockets, which is how many servers listen for IPv4
    /// too (a dual-stack `[::]` socket: Go's `:8080`, Java, Node.js).
    pub const SOCK_POST_BIND6: &str = "weir_sock_bind6";
    pub const SOCK_BIND: [&str; 2] = [SOCK_POST_BIND4, SOCK_POST_BIND6];
    /// BTF tracepoint `sched_process_exec`: the exec audit (attached only while an agent runs).
    pub const EXEC: &str = "weir_exec";
    /// The tracepoint `EXEC` attaches to.
    pub const EXEC_TRACEPOINT: &str = "sched_process_exec";
}

/// Load-time globals (`EbpfLoader::set_global`).
pub mod globals {
    /// Node address, IPv4, network byte order as stored in a packet (u32 from `to_ne_bytes`).
    pub const NODE_IPV4: &str = "WEIR_NODE_IPV4";
    /// Cluster pod CIDR: address (network byte order) and mask (network byte order).
    pub const CLUSTER_V4_ADDR: &str = "WEIR_CLUSTER_V4_ADDR";
    pub const CLUSTER_V4_MASK: &str = "WEIR_CLUSTER_V4_MASK";
    /// ifindex of the VXLAN device; 0 selects direct routing.
    pub const VXLAN_IFINDEX: &str = "WEIR_VXLAN_IFINDEX";
    pub const VXLAN_VNI: &str = "WEIR_VXLAN_VNI";
    /// UDP port of the VXLAN tunnel (host order); pods may not send to it on any node.
    pub const VXLAN_PORT: &str = "WEIR_VXLAN_PORT";
    /// First and last source port (host order) used by masquerade.
    pub const NAT_PORT_MIN: &str = "WEIR_NAT_PORT_MIN";
    pub const NAT_PORT_MAX: &str = "WEIR_NAT_PORT_MAX";
    /// Byte offsets of the kernel fields the exec audit reads, from the running kernel's BTF.
    pub const OFF_BPRM_FILENAME: &str = "WEIR_OFF_BPRM_FILENAME";
    pub const OFF_TASK_REAL_PARENT: &str = "WEIR_OFF_TASK_REAL_PARENT";
    pub const OFF_TASK_TGID: &str = "WEIR_OFF_TASK_TGID";
    pub const OFF_TASK_MM: &str = "WEIR_OFF_TASK_MM";
    pub const OFF_MM_ARG_START: &str = "WEIR_OFF_MM_ARG_START";
    pub const OFF_MM_ARG_END: &str = "WEIR_OFF_MM_ARG_END";
}

/// The exec audit's node pod cgroup: slot 0 of this cgroup array (not pinned; set by the agent
/// that attaches the audit). A process is recorded when it is in that cgroup or below it.
pub const EXEC_CGROUP_MAP: &str = "WEIR_EXEC_CGROUP";

/// Slots of `WEIR_SETTINGS`: run-time settings the agent writes at every start (a map, not a
/// load-time global, so that a restarted agent changes them for the programs already attached).
pub mod settings {
    /// Bits: `OBSERVE_FLOWS` (flow and DNS events), `OBSERVE_HTTP` (also HTTP/1.x message
    /// starts, only with flows); 0: only drops are reported.
    pub const OBSERVE: u32 = 0;
    pub const OBSERVE_FLOWS: u32 = 1;
    pub const OBSERVE_HTTP: u32 = 2;
    pub const LEN: u32 = 4;
}

/// Default map sizes; the agent may override them at load time.
pub mod sizes {
    pub const ENDPOINTS: u32 = 4096;
    pub const TUNNEL: u32 = 1024;
    pub const NAT: u32 = 65536;
    /// The event ring: 4 MiB, about 6500 HTTP records, some 40 ms of a saturated node's HTTP
    /// messages, so a reader the scheduler holds back for a few ticks loses none (256 KiB, 2 ms,
    /// lost tens of thousands a minute under load on 2 cores).
    pub const EVENTS_BYTES: u32 = 4 * 1024 * 1024;
    pub const SERVICES: u32 = 65536;
    /// Backend slots over all frontends (not preallocated).
    pub const BACKENDS: u32 = 1 << 20;
    pub const SOCK_REVNAT: u32 = 262144;
    pub const SOCK_PROC: u32 = 65536;
    pub const BINDS: u32 = 16384;
    pub const AFFINITY: u32 = 65536;
    /// Frontends reachable per packet (NodePort, externalIPs, LoadBalancer) with a Maglev table.
    pub const MAGLEV: u32 = 8192;
    pub const LB_CT: u32 = 131072;
    pub const CT_IN: u32 = 131072;
    pub const TAILS: u32 = 4;
    /// Address prefixes with an identity: pods' /32s and the ipBlock prefixes policies name.
    pub const IPCACHE: u32 = 65536;
    /// Policy allow entries over all local endpoints (LPM, not preallocated).
    pub const POLICY: u32 = 262144;
    pub const POLICY_EP: u32 = ENDPOINTS;
    pub const POLICY_CT: u32 = 262144;
    pub const FLOWS: u32 = 131072;
    /// Node underlay addresses.
    pub const NODES: u32 = 4096;
    /// Fragmented datagrams in flight (LRU: the oldest verdict goes first).
    pub const FRAGS: u32 = 16384;
}

/// Slots of the `WEIR_TAILS` program array.
pub mod tails {
    /// `programs::LB_REMOTE`.
    pub const LB_REMOTE: u32 = 0;
}

/// A 16-byte address; IPv4 is IPv4-mapped. Byte order: network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr16 {
    pub bytes: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Addr16>() == 16);

impl Addr16 {
    /// `be` is the address as it sits in a packet, read into a u32 with native byte order.
    #[inline(always)]
    pub const fn from_v4_be(be: u32) -> Self {
        let b = be.to_ne_bytes();
        Self { bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3]] }
    }
    pub const fn from_v4_octets(o: [u8; 4]) -> Self {
        Self { bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3]] }
    }
    pub const fn v4_octets(&self) -> [u8; 4] {
        [self.bytes[12], self.bytes[13], self.bytes[14], self.bytes[15]]
    }
    /// The IPv4 address in the packet's byte order (see `from_v4_be`).
    #[inline(always)]
    pub const fn v4_be(&self) -> u32 {
        u32::from_ne_bytes(self.v4_octets())
    }
}

/// `WEIR_ENDPOINTS` value: a local pod, keyed by its address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// ifindex of the host-side veth in the node namespace.
    pub ifindex: u32,
    /// `ENDPOINT_F_*` bits.
    pub flags: u32,
    /// MAC of the pod's eth0.
    pub pod_mac: [u8; 6],
    /// MAC of the host-side veth (the pod's gateway).
    pub host_mac: [u8; 6],
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 24);

/// `WEIR_TUNNEL` key data (LPM trie; prefix length is in the trie key wrapper). Network order.
pub type TunnelKey = Addr16;

/// `WEIR_TUNNEL` value: the node that owns a remote pod CIDR. Written in both routing modes:
/// VXLAN sends by it, and both modes verify by it that a packet's pod source belongs to the node
/// it came from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteNode {
    pub node_addr: Addr16,
    pub flags: u32,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<RemoteNode>() == 24);

/// `WEIR_NODES` key: a node's underlay IPv4 address as it sits in a packet (native `u32`).
pub type NodeKey = u32;
/// `WEIR_NODES` value flags: the address is this node's own.
pub const NODE_F_SELF: u32 = 1;

/// `WEIR_FRAGS` key: one fragmented datagram at one local endpoint and direction (the IP ID
/// names a datagram per source, destination and protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id_be: u16,
    pub proto: u8,
    pub direction: u8,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);

/// `WEIR_FRAGS` value: what the first fragment carried and how policy judged it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub sport_be: u16,
    pub dport_be: u16,
    /// 0: allowed; else the `DropReason` that stops the whole datagram.
    pub verdict: u32,
    /// When the first fragment was seen (`bpf_ktime_get_ns`): an ID reused after the kernel's
    /// reassembly timeout names a new datagram.
    pub seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 16);

/// A connection tuple as the NAT tables key it. Ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub saddr: Addr16,
    pub daddr: Addr16,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<NatKey>() == 40);

impl NatKey {
    #[inline(always)]
    pub const fn new(saddr: Addr16, daddr: Addr16, sport_be: u16, dport_be: u16, proto: u8) -> Self {
        Self { saddr, daddr, sport_be, dport_be, proto, _pad: [0; 3] }
    }
}

/// NAT translation target: the address/port to write in place of the original. In
/// `WEIR_NAT_REV` (masquerade's reverse entries) `state` (`nat_state::*`) and `seen` (seconds
/// since boot, `bpf_ktime_get_ns`) say when the claimed port may be taken by another connection
/// (`nat_state::expired`); other maps leave them 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub addr: Addr16,
    pub port_be: u16,
    pub state: u8,
    pub _pad: u8,
    pub seen: u32,
}
const _: () = assert!(core::mem::size_of::<NatEntry>() == 24);

impl NatEntry {
    #[inline(always)]
    pub const fn new(addr: Addr16, port_be: u16) -> Self {
        Self { addr, port_be, state: 0, _pad: 0, seen: 0 }
    }
}

/// Lifetimes of masquerade connections: what a reverse entry has seen, and when its port may go
/// to another connection. A port is never taken from a live connection; it is taken from one
/// that closed (RST, or FIN both ways) by the next connection's SYN at once, and from any
/// other after its idle timeout.
pub mod nat_state {
    /// The outside answered (TCP: the connection is established).
    pub const REPLIED: u8 = 1;
    pub const FIN_OUT: u8 = 2;
    pub const FIN_IN: u8 = 4;
    pub const RST: u8 = 8;
    /// Idle seconds before a port may go to another connection.
    pub const TCP_OPENING_SECS: u32 = 60;
    pub const TCP_ESTABLISHED_SECS: u32 = 21600;
    pub const TCP_CLOSED_SECS: u32 = 10;
    pub const OTHER_SECS: u32 = 60;
    /// TCP flag bits (byte 13 of the header).
    pub const TCP_FIN: u8 = 0x01;
    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_RST: u8 = 0x04;
    pub const TCP_ACK: u8 = 0x10;
    pub const IPPROTO_TCP: u8 = 6;

    /// A TCP connection that closed: reset, or finished both ways.
    #[inline(always)]
    pub const fn closed(state: u8) -> bool {
        state & RST != 0 || state & (FIN_OUT | FIN_IN) == FIN_OUT | FIN_IN
    }

    /// Whether the connection of a reverse entry last `seen` at second `seen` is over at `now`,
    /// for a new connection that starts with a bare SYN (`syn`) or not.
    #[inline(always)]
    pub const fn expired(proto: u8, state: u8, seen: u32, now: u32, syn: bool) -> bool {
        let idle = now.saturating_sub(seen);
        if proto != IPPROTO_TCP {
            return idle >= OTHER_SECS;
        }
        if closed(state) {
            return syn || idle >= TCP_CLOSED_SECS;
        }
        let limit = if state & REPLIED != 0 { TCP_ESTABLISHED_SECS } else { TCP_OPENING_SECS };
        idle >= limit
    }

    /// The state bits a TCP packet's `flags` add, seen leaving (`out`) or arriving.
    #[inline(always)]
    pub const fn from_flags(flags: u8, out: bool) -> u8 {
        let mut s = 0;
        if flags & TCP_RST != 0 {
            s |= RST;
        }
        if flags & TCP_FIN != 0 {
            s |= if out { FIN_OUT } else { FIN_IN };
        }
        s
    }
}

/// Most backends one frontend holds (slots `0..count` of its set in `WEIR_BACKENDS`). A frontend
/// with more is rejected by the agent, never half-written.
pub const MAX_BACKENDS: usize = 1024;

/// `WEIR_SERVICES` key: a Service frontend. `proto` is the IP protocol number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: Addr16,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 24);

/// One backend address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackendAddr {
    pub addr: Addr16,
    pub port_be: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<BackendAddr>() == 24);

/// `WEIR_SERVICES` value: how a frontend is served. Its backends are slots `0..count` of backend
/// set `set` in `WEIR_BACKENDS`; the agent writes a changed frontend's backends as a new set and
/// then switches `set` with one map update, so a frontend is never seen half-written.
/// `count == 0` means the Service exists but has no endpoints: clients are refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    pub count: u16,
    pub flags: u16,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 = no affinity.
    pub affinity_timeout_s: u32,
    pub set: u32,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);

/// `WEIR_BACKENDS` key: one slot of a backend set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub set: u32,
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<BackendKey>() == 8);

/// Maglev lookup-table size: a prime from the same series Cilium offers (251 … 16381). With up
/// to 16 backends (≥ 500 slots each) removing one moves < 1 % of the other backends' flows (1021
/// slots moved 3.8 %, 4093 1.3 %; see the agent's maglev tests); the spread stays even to a few
/// hundred backends and coarsens beyond.
pub const MAGLEV_M: usize = 8191;

/// `WEIR_MAGLEV` value: for each of the `MAGLEV_M` slots, a slot of the frontend's backend set.
/// Written before the frontend's `WEIR_SERVICES` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    pub slots: [u16; MAGLEV_M],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<MaglevTable>() == 16384);

impl Default for MaglevTable {
    fn default() -> Self {
        Self { slots: [0; MAGLEV_M], _pad: [0; 2] }
    }
}

/// `WEIR_AFFINITY` key: a client (its network namespace, i.e. its pod) and a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub frontend: ServiceKey,
}
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 32);

/// `WEIR_AFFINITY` value: the backend last chosen and when (CLOCK_MONOTONIC ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend: BackendAddr,
    pub last_used_ns: u64,
    /// The backend's slot in the frontend's set when it was chosen: affinity holds while that
    /// slot still holds that backend (the agent keeps a backend's slot across updates).
    pub slot: u32,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 40);

/// `WEIR_SOCK_RNAT` key: a socket and the backend it was translated to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: Addr16,
    pub port_be: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);

/// `WEIR_SOCK_PROC` value: the process that called connect() (or first sendmsg()) on a socket of
/// a pod, as the cgroup hook saw it in the caller's context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockProc {
    /// The calling thread's command name, NUL-padded (first: 8-byte aligned, copied as two words).
    pub comm: [u8; 16],
    /// Process id (the thread group id) in the node's (initial) PID namespace.
    pub tgid: u32,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<SockProc>() == 24);
const _: () = assert!(core::mem::offset_of!(SockProc, comm) == 0);

/// `WEIR_BINDS` key: a port bound by a process in cgroup `cgroup_id` (host order, as
/// `bpf_sock.src_port` gives it) over `proto` (6 or 17).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindKey {
    pub cgroup_id: u64,
    pub port: u16,
    pub proto: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<BindKey>() == 16);

/// `WEIR_IPCACHE` key data: an IPv4 address as it sits in a packet (read into a `u32` with native
/// byte order); the LPM prefix length (0–32) is in the trie key wrapper. IPv4-only like the policy
/// maps below: keeping policy keys small keeps the per-packet stack small; IPv6 gets its own maps.
pub type IpcacheKey = u32;

/// Identity of addresses in no pod and no policy prefix (no `WEIR_IPCACHE` entry).
pub const IDENTITY_WORLD: u32 = 1;
/// The peer wildcard of `WEIR_POLICY` keys: an entry for any peer.
pub const IDENTITY_ANY: u32 = 0;

/// Policy directions, as stored in keys.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// `WEIR_POLICY` key data (LPM trie, bit order as declared). An entry's prefix length covers the
/// endpoint, direction and peer identity (72 bits) for "every protocol", plus the protocol (80)
/// and `n` bits of the port (80 + n) otherwise. All fields are in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// The local pod's IPv4 address.
    pub endpoint: [u8; 4],
    pub direction: u8,
    /// The peer's identity, big-endian; `IDENTITY_ANY` for entries that allow any peer.
    pub identity: [u8; 4],
    pub proto: u8,
    /// Destination port, big-endian.
    pub port: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);

/// Prefix lengths of `WEIR_POLICY` entries.
pub const POLICY_PREFIX_ALL_PROTOCOLS: u32 = 72;
pub const POLICY_PREFIX_PROTOCOL: u32 = 80;
pub const POLICY_PREFIX_FULL: u32 = 96;

/// `WEIR_POLICY` value: an allow entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    /// The agent's id for the set of rules behind this entry (for attribution).
    pub attribution: u32,
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 8);

/// `WEIR_POLICY_EP` flags.
pub const POLICY_F_INGRESS: u32 = 1;
pub const POLICY_F_EGRESS: u32 = 2;
/// The endpoint's policy did not fit the maps: all its traffic is denied.
pub const POLICY_F_FAIL_CLOSED: u32 = 4;

/// `WEIR_POLICY_EP` value, keyed by the local pod's IPv4 address (`IpcacheKey` layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEndpoint {
    pub identity: u32,
    /// `POLICY_F_*`: which directions policies isolate.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyEndpoint>() == 8);

/// `WEIR_POLICY_CT` key: a connection as first seen in `direction` at a local endpoint. A packet
/// whose reversed tuple is present (with the other direction) is a reply and passes. Only
/// protocols with ports have entries (TCP, UDP, ICMP echo): a port-less packet is never a reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyCtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PolicyCtKey>() == 16);

/// `WEIR_POLICY_CT` value flags: the node's stack delivered the connection into the pod
/// (`weir_to_pod`: its own traffic, hostPort DNAT), so the pod's replies go back through the
/// stack, whose connection tracking undoes what it translated.
pub const POLICY_CT_F_STACK: u32 = 1;

/// Event kinds on the `WEIR_EVENTS` ring buffer.
pub const EVENT_DROP: u8 = 1;
/// First packet of a flow (one direction of a connection) at an observation point.
pub const EVENT_FLOW_NEW: u8 = 2;
/// Counters of a flow still sending, at most every `FLOW_REPORT_NS`.
pub const EVENT_FLOW_UPDATE: u8 = 3;
/// TCP FIN or RST seen: the flow's final counters.
pub const EVENT_FLOW_CLOSE: u8 = 4;
/// A DNS message (UDP or TCP port 53) with its first `PAYLOAD_CAPTURE` bytes ([`PayloadEvent`]).
pub const EVENT_DNS: u8 = 5;
/// The start of an HTTP/1.x request or response (a TCP segment whose payload begins with a
/// method or `HTTP/1.`, on a connection whose first payload did) with its first
/// `PAYLOAD_CAPTURE` bytes ([`PayloadEvent`]).
pub const EVENT_HTTP: u8 = 6;

/// Observation points (`DatapathEvent::point`, `FlowKey::point`).
/// Unknown (drops: the agent tells the side from the addresses and the interface).
pub const OBS_UNKNOWN: u8 = 0;
/// Leaving a local pod (`weir_from_pod`, before any translation).
pub const OBS_FROM_POD: u8 = 1;
/// Delivered to a local pod from the wire or the tunnel (after translation).
pub const OBS_TO_POD: u8 = 2;

/// A program started in a pod (`ExecEvent`).
pub const EVENT_EXEC: u8 = 7;
/// A segment of an HTTP/2 connection (one whose first payload was the client preface or a
/// server's SETTINGS frame) with its first `PAYLOAD_CAPTURE` bytes, its sequence number and its
/// length ([`PayloadEvent`]): every segment with a payload, since HPACK needs every header block.
pub const EVENT_H2: u8 = 8;
/// A process in a pod bound a TCP or UDP socket (`weir_sock_bind4`, in the process's context):
/// a [`DatapathEvent`] whose `saddr` and `sport_be` are the address and port bound, `proto` the
/// protocol, `proc_*` the process, and `packets` the process's cgroup id
/// ([`DatapathEvent::bind_cgroup_id`]). The agent attributes connections accepted on that port
/// in that pod to it.
pub const EVENT_BIND: u8 = 9;
/// Bytes of an executed file's path kept.
pub const EXEC_FILENAME: usize = 256;
/// Bytes of the argument list kept (NUL-separated, as the process has it).
pub const EXEC_ARGS: usize = 256;

/// An exec in a pod, from `sched_process_exec` (`weir_exec`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub ktime_ns: u64,
    /// The process's cgroup v2 id (its directory's inode number): the agent finds the pod by it.
    pub cgroup_id: u64,
    /// Process id and parent's, in the node's PID namespace.
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    /// Bytes of `filename` that hold the path (no NUL).
    pub filename_len: u16,
    /// Bytes of `args` that hold the argument list.
    pub args_len: u16,
    /// The whole argument list's size (more than `args_len`: cut short).
    pub args_total: u32,
    /// `EVENT_EXEC`.
    pub kind: u8,
    pub _pad: [u8; 3],
    pub comm: [u8; 16],
    pub filename: [u8; EXEC_FILENAME],
    pub args: [u8; EXEC_ARGS],
}
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 56 + EXEC_FILENAME + EXEC_ARGS);
// Records are told apart by size on the ring buffer.
const _: () = assert!(core::mem::size_of::<ExecEvent>() != core::mem::size_of::<DatapathEvent>());
const _: () = assert!(core::mem::size_of::<ExecEvent>() != core::mem::size_of::<PayloadEvent>());

/// `FlowStats::state`: the close event was sent.
pub const FLOW_S_CLOSED: u8 = 1;
/// `FlowStats::state`: the flow's first payload began an HTTP/1.x message: segments that begin
/// one are copied (`EVENT_HTTP`) while HTTP observation is on.
pub const FLOW_S_HTTP: u8 = 2;
/// `FlowStats::state`: the flow's first payload was something else: never looked at again.
pub const FLOW_S_OTHER: u8 = 4;
/// `FlowStats::state`: the flow's first payload began HTTP/2 (the client preface, or a server's
/// SETTINGS frame): every segment with a payload is copied (`EVENT_H2`) while HTTP observation
/// is on.
pub const FLOW_S_H2: u8 = 8;

/// `DatapathEvent::flags`: the flow's reverse was seen first (it is a connection's reply side).
pub const FLOW_F_REPLY: u8 = 1;
/// How often a flow that keeps sending reports its counters.
pub const FLOW_REPORT_NS: u64 = 5_000_000_000;
/// Bytes of a DNS message or an HTTP message start copied into its event (a UDP DNS message
/// without EDNS fits; an HTTP request line and its first headers).
pub const PAYLOAD_CAPTURE: usize = 512;

/// `WEIR_FLOWS` key: one direction of a connection at one observation point (IPv4, network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub point: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

/// `WEIR_FLOWS` value: the flow's counters since its first packet. Updated without atomics: a
/// flow's packets are handled on one CPU at a time in practice, and a lost increment under a
/// race only makes the counters approximate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    pub last_report_ns: u64,
    /// TCP flags seen so far (OR of every packet's).
    pub tcp_flags: u8,
    /// `FLOW_S_*` bits: the close event was sent; what the first payload looked like.
    pub state: u8,
    /// The Service frontend this flow was translated from (a backend's reply: translated back
    /// to), IPv4 and port in network order; 0 = none. Found once, when the flow starts.
    pub svc_port_be: u16,
    pub svc_addr: u32,
}
const _: () = assert!(core::mem::size_of::<FlowStats>() == 32);

/// A datapath event: a drop or a flow report. DNS and HTTP events start with one ([`PayloadEvent`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathEvent {
    pub saddr: Addr16,
    pub daddr: Addr16,
    /// Flow reports: packets and bytes since the flow began (drops: 1 and the packet's length).
    pub packets: u64,
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event was made.
    pub ktime_ns: u64,
    /// The interface the packet arrived on.
    pub ifindex: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    /// `EVENT_*`.
    pub kind: u8,
    /// `DropReason` of drops, else 0.
    pub reason: u8,
    pub proto: u8,
    /// `OBS_*`.
    pub point: u8,
    /// TCP flags of this packet (new, drop) or of the whole flow (update, close).
    pub tcp_flags: u8,
    /// `FLOW_F_*`.
    pub flags: u8,
    /// Flow reports: the Service frontend the flow's destination was translated from (or, on
    /// a reply, its source is translated back to); port 0 and address 0 = none.
    pub svc_port_be: u16,
    pub svc_addr: Addr16,
    /// A new flow leaving a pod from a socket whose connect() (or sendmsg()) weir saw: that
    /// process (`WEIR_SOCK_PROC`); tgid 0 = not known.
    pub proc_comm: [u8; 16],
    pub proc_tgid: u32,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<DatapathEvent>() == 112);

impl DatapathEvent {
    /// `EVENT_BIND`: the cgroup id of the process that bound the socket (kept in `packets`).
    pub const fn bind_cgroup_id(&self) -> u64 {
        self.packets
    }
}
const _: () = assert!(core::mem::offset_of!(DatapathEvent, proc_comm) % 8 == 0);

/// A message as it crossed an observation point: the packet's event (`kind` says which:
/// `EVENT_DNS`, `EVENT_HTTP`), then the start of the segment's payload (DNS over TCP: a two-byte
/// length then the message).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadEvent {
    pub event: DatapathEvent,
    /// Bytes of `data` that hold the message (at most `PAYLOAD_CAPTURE`).
    pub len: u16,
    /// 1 when the message came over TCP.
    pub tcp: u8,
    pub _pad: u8,
    /// TCP: the sequence number of the segment's first payload byte (host order).
    pub seq: u32,
    /// Payload bytes in the packet (of which `len` were copied).
    pub seg_len: u32,
    pub _pad2: [u8; 4],
    pub data: [u8; PAYLOAD_CAPTURE],
}
const _: () = assert!(core::mem::size_of::<PayloadEvent>() == 112 + 16 + PAYLOAD_CAPTURE);

impl PayloadEvent {
    /// The event `event` carrying `data` (cut at `PAYLOAD_CAPTURE`), as the datapath would
    /// report it: for tests, benchmarks and fuzzing.
    pub fn with_data(event: DatapathEvent, tcp: bool, data: &[u8]) -> Self {
        let n = data.len().min(PAYLOAD_CAPTURE);
        let mut p = Self {
            event,
            len: n as u16,
            tcp: u8::from(tcp),
            _pad: 0,
            seq: 0,
            seg_len: data.len() as u32,
            _pad2: [0; 4],
            data: [0; PAYLOAD_CAPTURE],
        };
        p.data[..n].copy_from_slice(&data[..n]);
        p
    }
}

/// Indexes of the `WEIR_COUNTERS` per-CPU array: one slot per drop reason, then the rest.
pub mod counters {
    /// Events that did not fit the ring buffer (never silently lost: counted here).
    pub const EVENTS_LOST: u32 = 64;
    pub const FORWARDED_LOCAL: u32 = 65;
    pub const FORWARDED_REMOTE: u32 = 66;
    pub const MASQUERADED: u32 = 67;
    pub const TO_STACK: u32 = 68;
    /// Packets translated by the per-packet Service load balancer (NodePort, externalIPs).
    pub const LB_TRANSLATED: u32 = 69;
    /// Service frontends reached per packet with no backend: handed to the stack, which refuses.
    pub const LB_NO_BACKEND: u32 = 70;
    /// Packets the node's stack delivered into a pod that its ingress policy let through.
    pub const FROM_STACK: u32 = 71;
    pub const LEN: u32 = 72;
}

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident = $val:literal, $label:literal;)*) => {
        /// Why the datapath dropped a packet. The one definition: eBPF, metrics labels and the
        /// flow API all use it. Stored as `u8` in events and as the counter index. `repr(u32)`, as
        /// wide as the `i32` action it shares a `Result` with: both variants then fill the same
        /// payload, and the verifier never sees half of it undefined.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum DropReason { $($(#[$doc])* $name = $val,)* }
        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// Stable label for metrics and the CLI.
            pub const fn label(self) -> &'static str { match self { $(DropReason::$name => $label,)* } }
            pub const fn from_u8(v: u8) -> Option<Self> { match v { $($val => Some(DropReason::$name),)* _ => None } }
        }
    };
}

drop_reasons! {
    /// Headers shorter than they claim.
    Malformed = 1, "malformed";
    /// An L3 protocol the datapath does not carry yet (IPv6 for now).
    UnsupportedL3 = 2, "unsupported_l3";
    /// Source address is not the one assigned to the sending pod.
    SpoofedSource = 3, "spoofed_source";
    /// No route for the destination.
    NoRoute = 4, "no_route";
    /// No free masquerade port for a new connection.
    NatPortsExhausted = 5, "nat_ports_exhausted";
    /// A destination inside the cluster CIDR that no node owns.
    UnknownClusterDest = 6, "unknown_cluster_destination";
    /// The kernel refused a redirect, tunnel key or header rewrite.
    RewriteFailed = 7, "rewrite_failed";
    /// IP fragments (not reassembled by the datapath).
    Fragmented = 8, "fragmented";
    /// Masquerade of a protocol it cannot translate (only TCP, UDP and ICMP echo).
    NatUnsupported = 9, "nat_unsupported_protocol";
    /// A tail call failed: the program array slot is empty (datapath not fully loaded).
    TailCallFailed = 10, "tail_call_failed";
    /// NetworkPolicy: the destination pod is isolated for ingress and no rule allows the packet.
    PolicyDeniedIngress = 11, "policy_denied_ingress";
    /// NetworkPolicy: the source pod is isolated for egress and no rule allows the packet.
    PolicyDeniedEgress = 12, "policy_denied_egress";
    /// NetworkPolicy: the pod's policy did not fit the datapath's maps; it is denied everything.
    PolicyFailClosed = 13, "policy_fail_closed";
    /// A decapsulated packet whose outer source is not another node weir knows.
    TunnelSourceInvalid = 14, "tunnel_source_invalid";
    /// A decapsulated packet with a VNI that is not weir's.
    TunnelVniInvalid = 15, "tunnel_vni_invalid";
    /// A decapsulated packet whose inner source is neither the sending node nor in its pod CIDR.
    TunnelInnerSourceInvalid = 16, "tunnel_inner_source_invalid";
    /// From the wire, a source no node owns that way: a pod address sent unencapsulated in
    /// VXLAN mode, or (direct routing) this node's own pod CIDR or a cluster address no node owns.
    SpoofedSourceFromWire = 17, "spoofed_source_from_wire";
    /// A pod sent to a node's tunnel port (VXLAN): only nodes encapsulate.
    TunnelPortFromPod = 18, "tunnel_port_from_pod";
    /// The endpoint's policy is not in force yet (its pod's labels are not known): closed.
    EndpointNotReady = 19, "endpoint_not_ready";
    /// A later fragment of a datagram whose first fragment was not seen here.
    FragmentWithoutFirst = 20, "fragment_without_first";
    /// A fragment that overlaps the transport header or contradicts the first fragment.
    FragmentInvalid = 21, "fragment_invalid";
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, have explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for Addr16 {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for RemoteNode {}
    unsafe impl aya::Pod for NatKey {}
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for DatapathEvent {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for BackendAddr {}
    unsafe impl aya::Pod for SockRevKey {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for MaglevTable {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for PolicyEndpoint {}
    unsafe impl aya::Pod for PolicyCtKey {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowStats {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for SockProc {}
    unsafe impl aya::Pod for BindKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_ports_outlive_their_connections_exactly_as_long_as_they_should() {
        use nat_state::*;
        let (tcp, udp) = (IPPROTO_TCP, 17);
        // Live connections keep their port, whatever asks.
        assert!(!expired(tcp, REPLIED, 100, 100 + TCP_ESTABLISHED_SECS - 1, true));
        assert!(!expired(tcp, 0, 100, 100 + TCP_OPENING_SECS - 1, true));
        assert!(!expired(udp, 0, 100, 100 + OTHER_SECS - 1, false));
        // Idle ones lose it.
        assert!(expired(tcp, REPLIED, 100, 100 + TCP_ESTABLISHED_SECS, false));
        assert!(expired(tcp, 0, 100, 100 + TCP_OPENING_SECS, false));
        assert!(expired(udp, 0, 100, 100 + OTHER_SECS, false));
        // A closed TCP connection gives its port to the next SYN at once, to anything else later.
        for closed_state in [REPLIED | FIN_OUT | FIN_IN, RST, REPLIED | RST] {
            assert!(expired(tcp, closed_state, 100, 100, true));
            assert!(!expired(tcp, closed_state, 100, 100, false));
            assert!(expired(tcp, closed_state, 100, 100 + TCP_CLOSED_SECS, false));
        }
        // Half-closed is still open.
        assert!(!expired(tcp, REPLIED | FIN_OUT, 100, 101, true));
        assert_eq!(from_flags(TCP_FIN | TCP_ACK, true), FIN_OUT);
        assert_eq!(from_flags(TCP_FIN, false), FIN_IN);
        assert_eq!(from_flags(TCP_RST, false), RST);
        assert_eq!(from_flags(TCP_SYN, true), 0);
        // A clock reading before `seen` (another CPU wrote later) is no age.
        assert!(!expired(udp, 0, 100, 50, false));
    }

    #[test]
    fn v4_mapping_round_trips() {
        let a = Addr16::from_v4_octets([10, 244, 1, 7]);
        assert_eq!(a.v4_octets(), [10, 244, 1, 7]);
        assert_eq!(Addr16::from_v4_be(a.v4_be()), a);
        assert_eq!(&a.bytes[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
    }

    #[test]
    fn drop_reasons_are_unique_and_fit_counters() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(DropReason::from_u8(*r as u8), Some(*r));
            assert!((*r as u32) < counters::EVENTS_LOST);
            for other in &DropReason::ALL[i + 1..] {
                assert_ne!(r.label(), other.label());
            }
        }
    }

    #[test]
    fn map_names_fit_the_kernel() {
        for n in
            maps::ALL.iter().chain(programs::ALL.iter()).chain(programs::SOCK.iter()).chain(programs::SOCK_BIND.iter())
        {
            assert!(n.len() <= 15, "{n} is longer than BPF_OBJ_NAME_LEN-1");
        }
    }
}
