//! weir's tc datapath. One object holds every tc program so that they share maps without
//! pin coordination (a deliberate deviation from one-[[bin]]-per-role: all roles here are tc and
//! share every map). Attach points:
//!
//! * `weir_from_pod`   tcx ingress, host-side veth of each pod: anti-spoof, same-node delivery
//!   with `bpf_redirect_peer`, cross-node by VXLAN or FIB (direct routing), masquerade otherwise.
//! * `weir_from_wire`  tcx ingress, node uplink: delivery to local pods, reverse masquerade,
//!   per-packet Service load balancing (NodePort, external and LoadBalancer IPs).
//! * `weir_from_vxlan` tcx ingress, VXLAN device (collect_metadata): delivery to local pods of
//!   what another node weir knows encapsulated (outer source, VNI and inner source verified).
//! * `weir_to_pod`     tcx egress of `weir_host`, where the node routes its pod CIDR: what the
//!   node's stack sends to a pod (its own traffic, hostPort DNAT, other interfaces) passes the
//!   pod's ingress policy too, then goes into the pod's veth.
//! * `weir_lb_remote`  tail call from `weir_from_wire` (slot `tails::LB_REMOTE` of `WEIR_TAILS`):
//!   a load-balanced packet, already DNATed, whose backend is on another node.
//!
//! Every entry point maps `Err(DropReason)` to `drop::shot`, which counts and reports the drop.
#![no_std]
#![no_main]

mod counter;
mod drop;
mod exec;
mod flow;
mod fwd;
mod icmp;
mod lb;
mod nat;
mod outcome;
mod parse;
mod policy;
mod sock;
mod tunnel;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK},
    macros::{btf_tracepoint, cgroup_sock, cgroup_sock_addr, classifier, map},
    maps::{Array, CgroupArray, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{BtfTracePointContext, SockAddrContext, SockContext, TcContext},
    Global,
};
use weir_bpf_common::{
    counters, settings, sizes, tails, Addr16, AffinityKey, AffinityValue, BackendAddr, BackendKey, BindKey, DropReason,
    EndpointInfo, FlowKey, FlowStats, FragKey, FragValue, IpcacheKey, MaglevTable, NatEntry, NatKey, NodeKey,
    PolicyCtKey, PolicyEndpoint, PolicyKey, PolicyValue, RemoteNode, ServiceKey, ServiceValue, SockProc, SockRevKey,
    OBS_FROM_POD, OBS_TO_POD,
};

use crate::{
    lb::Forward,
    outcome::MaybeAction,
    parse::{Ipv4, ETH_P_ARP, ETH_P_IP},
};

#[unsafe(no_mangle)]
static WEIR_NODE_IPV4: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static WEIR_CLUSTER_V4_ADDR: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static WEIR_CLUSTER_V4_MASK: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static WEIR_VXLAN_IFINDEX: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static WEIR_VXLAN_VNI: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static WEIR_VXLAN_PORT: Global<u32> = Global::new(4789);
#[unsafe(no_mangle)]
static WEIR_NAT_PORT_MIN: Global<u32> = Global::new(61000);
#[unsafe(no_mangle)]
static WEIR_NAT_PORT_MAX: Global<u32> = Global::new(65000);

#[map]
static WEIR_ENDPOINTS: HashMap<Addr16, EndpointInfo> = HashMap::pinned(sizes::ENDPOINTS, 0);
#[map]
static WEIR_TUNNEL: LpmTrie<Addr16, RemoteNode> = LpmTrie::pinned(sizes::TUNNEL, 0);
#[map]
static WEIR_NAT_FWD: LruHashMap<NatKey, NatEntry> = LruHashMap::pinned(sizes::NAT, 0);
#[map]
static WEIR_NAT_REV: LruHashMap<NatKey, NatEntry> = LruHashMap::pinned(sizes::NAT, 0);
#[map]
static WEIR_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::LEN, 0);
#[map]
static WEIR_EVENTS: RingBuf = RingBuf::pinned(sizes::EVENTS_BYTES, 0);
#[map]
static WEIR_SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(sizes::SERVICES, 0);
#[map]
static WEIR_BACKENDS: HashMap<BackendKey, BackendAddr> = HashMap::pinned(sizes::BACKENDS, BPF_F_NO_PREALLOC);
#[map]
static WEIR_SOCK_RNAT: LruHashMap<SockRevKey, NatEntry> = LruHashMap::pinned(sizes::SOCK_REVNAT, 0);
#[map]
static WEIR_AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(sizes::AFFINITY, 0);

// Not preallocated: 8 KiB tables exist only for the frontends that have one.
#[map]
static WEIR_MAGLEV: HashMap<ServiceKey, MaglevTable> = HashMap::pinned(sizes::MAGLEV, BPF_F_NO_PREALLOC);
#[map]
static WEIR_LB_CT: LruHashMap<NatKey, NatEntry> = LruHashMap::pinned(sizes::LB_CT, 0);
#[map]
static WEIR_LB_REV: LruHashMap<NatKey, NatEntry> = LruHashMap::pinned(sizes::LB_CT, 0);
/// Connections that reached a local pod from outside the cluster, keyed by their reply tuple:
/// replies keep the pod's address instead of being masqueraded.
#[map]
static WEIR_CT_IN: LruHashMap<NatKey, u32> = LruHashMap::pinned(sizes::CT_IN, 0);
/// NetworkPolicy (see `policy.rs`): address prefix → identity.
#[map]
static WEIR_IPCACHE: LpmTrie<IpcacheKey, u32> = LpmTrie::pinned(sizes::IPCACHE, BPF_F_NO_PREALLOC);
/// Per-endpoint allow entries.
#[map]
static WEIR_POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(sizes::POLICY, BPF_F_NO_PREALLOC);
/// Local endpoint → identity and isolation flags.
#[map]
static WEIR_POLICY_EP: HashMap<IpcacheKey, PolicyEndpoint> = HashMap::pinned(sizes::POLICY_EP, 0);
/// Connections accepted at a local endpoint, so their replies pass.
#[map]
static WEIR_POLICY_CT: LruHashMap<PolicyCtKey, u32> = LruHashMap::pinned(sizes::POLICY_CT, 0);
/// Flow counters per direction of a connection and observation point (see `flow.rs`).
#[map]
static WEIR_FLOWS: LruHashMap<FlowKey, FlowStats> = LruHashMap::pinned(sizes::FLOWS, 0);
/// Per-CPU scratch for masquerade's keys (`nat::Scratch`): off the BPF stack, which the verifier
/// caps at 512 bytes over all frames of a call chain. Not pinned: nothing outlives a packet.
#[map]
static WEIR_NAT_SCR: PerCpuArray<nat::Scratch> = PerCpuArray::with_max_entries(1, 0);
/// Run-time settings (`weir_bpf_common::settings`), written by the agent at every start.
#[map]
static WEIR_SETTINGS: Array<u32> = Array::pinned(settings::LEN, 0);
/// Every node's underlay address → `NODE_F_*` (see `tunnel.rs`).
#[map]
static WEIR_NODES: HashMap<NodeKey, u32> = HashMap::pinned(sizes::NODES, 0);
/// The process that connected each pod socket (`sock::remember_process`; flows read it).
#[map]
static WEIR_SOCK_PROC: LruHashMap<u64, SockProc> = LruHashMap::pinned(sizes::SOCK_PROC, 0);
/// Which process bound which port in which cgroup (`sock::report_bind`; the agent reads it at
/// start).
#[map]
static WEIR_BINDS: LruHashMap<BindKey, SockProc> = LruHashMap::pinned(sizes::BINDS, 0);
/// First-fragment verdicts for the fragments after them (see `policy.rs`).
#[map]
static WEIR_FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(sizes::FRAGS, 0);
/// Tail-call targets; the loader fills the slots of `tails`.
#[map]
static WEIR_TAILS: ProgramArray = ProgramArray::pinned(sizes::TAILS, 0);

/// What `try_from_wire` returns to ask its entry point for the `tails::LB_REMOTE` tail call
/// (never a tc action). The tail call is made from the entry point's own frame: the verifier
/// forbids tail calls below a call chain of 256 bytes or more.
const TAIL_LB_REMOTE: i32 = 0x7e1_0000;

/// The exec audit's cgroup (`EXEC_CGROUP_MAP`, slot 0). Not pinned: the audit lives with its agent.
#[map]
static WEIR_EXEC_CGROUP: CgroupArray = CgroupArray::with_max_entries(1, 0);

#[btf_tracepoint(function = "sched_process_exec")]
pub fn weir_exec(ctx: BtfTracePointContext) -> i32 {
    if WEIR_EXEC_CGROUP.current_task_under_cgroup(0) == Ok(true) {
        exec::record(&ctx);
    }
    0
}

#[cgroup_sock_addr(connect4)]
pub fn weir_sock_conn4(ctx: SockAddrContext) -> i32 {
    sock::remember_process(&ctx, false);
    sock::translate(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn weir_sock_send4(ctx: SockAddrContext) -> i32 {
    sock::remember_process(&ctx, true);
    sock::translate(&ctx)
}

#[cgroup_sock(post_bind4)]
pub fn weir_sock_bind4(ctx: SockContext) -> i32 {
    // SAFETY: the kernel hands a valid bpf_sock; post_bind4 may read its IPv4 address.
    let addr_be = unsafe { (*ctx.sock).src_ip4 };
    sock::report_bind(&ctx, addr_be);
    1
}

/// IPv6 sockets (a dual-stack `[::]` listener serves IPv4 clients too). post_bind6 may not read
/// `src_ip4`: the address is reported as 0 (the agent keys binds by port, not address).
#[cgroup_sock(post_bind6)]
pub fn weir_sock_bind6(ctx: SockContext) -> i32 {
    sock::report_bind(&ctx, 0);
    1
}

#[cgroup_sock_addr(recvmsg4)]
pub fn weir_sock_recv4(ctx: SockAddrContext) -> i32 {
    sock::restore(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn weir_sock_peer4(ctx: SockAddrContext) -> i32 {
    sock::restore(&ctx)
}

#[classifier]
pub fn weir_from_pod(ctx: TcContext) -> i32 {
    match try_from_pod(&ctx) {
        Ok(action) => action,
        Err(reason) => drop::shot(&ctx, reason),
    }
}

#[classifier]
pub fn weir_from_wire(ctx: TcContext) -> i32 {
    match try_from_wire(&ctx) {
        Ok(TAIL_LB_REMOTE) => {
            // SAFETY: the slot holds a tc program of this object; on success this never returns.
            unsafe { WEIR_TAILS.tail_call(&ctx, tails::LB_REMOTE) };
            drop::shot(&ctx, DropReason::TailCallFailed)
        }
        Ok(action) => action,
        Err(reason) => drop::shot(&ctx, reason),
    }
}

#[classifier]
pub fn weir_lb_remote(ctx: TcContext) -> i32 {
    match to_remote_backend(&ctx) {
        Ok(action) => action,
        Err(reason) => drop::shot(&ctx, reason),
    }
}

#[classifier]
pub fn weir_from_vxlan(ctx: TcContext) -> i32 {
    match try_from_vxlan(&ctx) {
        Ok(action) => action,
        Err(reason) => drop::shot(&ctx, reason),
    }
}

#[classifier]
pub fn weir_to_pod(ctx: TcContext) -> i32 {
    match try_to_pod(&ctx) {
        Ok(action) => action,
        Err(reason) => drop::shot(&ctx, reason),
    }
}

/// Counts `counter` when the packet actually went on its way.
#[inline(always)]
fn counted(r: Result<i32, DropReason>, counter: u32) -> Result<i32, DropReason> {
    if r.is_ok() {
        counter::count(counter);
    }
    r
}

#[inline(always)]
fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole program run.
    unsafe { (*ctx.skb.skb).ifindex }
}

fn try_from_pod(ctx: &TcContext) -> Result<i32, DropReason> {
    let proto = parse::eth_proto(ctx)?;
    if proto == ETH_P_ARP {
        // Pods resolve their gateway statically; any other ARP goes to the node's stack.
        return Ok(TC_ACT_OK);
    }
    if proto != ETH_P_IP {
        return Err(DropReason::UnsupportedL3);
    }
    let ip = Ipv4::parse(ctx)?;
    let src = Addr16::from_v4_be(ip.saddr);
    // SAFETY: read-only lookup of a plain-data value.
    match unsafe { WEIR_ENDPOINTS.get(src) } {
        Some(ep) if ep.ifindex == ingress_ifindex(ctx) => {}
        _ => return Err(DropReason::SpoofedSource),
    }
    tunnel::refuse_tunnel_port(ctx, &ip)?;
    // Egress policy at the source, for every destination (this node's addresses included). A
    // reply of a connection the stack delivered (the kubelet's probes, hostPort) goes back
    // through the stack, whose conntrack undoes any translation it made.
    if policy::egress(ctx)? {
        counter::count(counters::TO_STACK);
        return Ok(TC_ACT_OK);
    }
    let dst = Addr16::from_v4_be(ip.daddr);
    // SAFETY: as above.
    if let Some(ep) = unsafe { WEIR_ENDPOINTS.get(dst) } {
        let ep = *ep;
        policy::ingress(ctx)?;
        flow::observe(ctx, &ip, OBS_FROM_POD);
        return counted(fwd::to_local_pod(ctx, &ep), counters::FORWARDED_LOCAL);
    }
    // Observed before any translation: the flow names the pod and the address it asked for.
    flow::observe(ctx, &ip, OBS_FROM_POD);
    if ip.daddr & WEIR_CLUSTER_V4_MASK.load() == WEIR_CLUSTER_V4_ADDR.load() {
        return to_pod_node(ctx, &ip, counters::FORWARDED_REMOTE);
    }
    // Leaving the cluster. Destinations on this node go to its stack untranslated. Replies of
    // connections that came from outside keep (or, load-balanced, get back) their address;
    // everything else is masqueraded. One FIB lookup decides and sends.
    let route = fwd::Route::lookup(ctx, &ip, ingress_ifindex(ctx));
    if route.to_stack() {
        counter::count(counters::TO_STACK);
        return Ok(TC_ACT_OK);
    }
    if lb::reverse(ctx, &ip)?.translated() {
        return counted(route.send(ctx), counters::LB_TRANSLATED);
    }
    if inbound_reply(ctx, &ip) {
        // In VXLAN mode a pod's address crosses to another node only inside the tunnel (the
        // receiving node drops it unencapsulated): a reply to a node that load-balanced a
        // client to this pod goes back encapsulated.
        let vxlan = WEIR_VXLAN_IFINDEX.load();
        if vxlan != 0 && tunnel::is_node(ip.daddr) {
            let sent = fwd::to_tunnel(ctx, ip.daddr, vxlan, WEIR_VXLAN_VNI.load());
            return counted(sent, counters::FORWARDED_REMOTE);
        }
        return counted(route.send(ctx), counters::FORWARDED_REMOTE);
    }
    nat::masquerade(ctx, &ip, WEIR_NODE_IPV4.load())?;
    counted(route.send(ctx), counters::MASQUERADED)
}

#[inline(always)]
fn from_outside(ip: &Ipv4) -> bool {
    ip.saddr & WEIR_CLUSTER_V4_MASK.load() != WEIR_CLUSTER_V4_ADDR.load()
}

/// Remembers a connection from outside the cluster to a local pod (keyed by its reply tuple).
#[inline(never)]
fn note_inbound(ctx: &TcContext, ip: &Ipv4) {
    if !from_outside(ip) {
        return;
    }
    let Some((sport, dport)) = lb::ports(ctx, ip) else { return };
    let key = NatKey::new(Addr16::from_v4_be(ip.daddr), Addr16::from_v4_be(ip.saddr), dport, sport, ip.proto);
    // SAFETY: read-only lookup of a plain-data value.
    if unsafe { WEIR_CT_IN.get(key) }.is_none() {
        // A lost entry only means the reply is masqueraded, as before this map existed.
        let _ = WEIR_CT_IN.insert(key, 0, 0);
    }
}

#[inline(never)]
fn inbound_reply(ctx: &TcContext, ip: &Ipv4) -> bool {
    let Some((sport, dport)) = lb::ports(ctx, ip) else { return false };
    let key = NatKey::new(Addr16::from_v4_be(ip.saddr), Addr16::from_v4_be(ip.daddr), sport, dport, ip.proto);
    // SAFETY: read-only lookup of a plain-data value.
    unsafe { WEIR_CT_IN.get(key) }.is_some()
}

#[inline(always)]
fn local_pod(addr_be: u32) -> Option<EndpointInfo> {
    // SAFETY: read-only lookup of a plain-data value.
    unsafe { WEIR_ENDPOINTS.get(Addr16::from_v4_be(addr_be)) }.copied()
}

fn try_from_wire(ctx: &TcContext) -> Result<i32, DropReason> {
    // Everything that is not IPv4 for a pod, a Service or a translated reply belongs to the
    // node's stack.
    if parse::eth_proto(ctx)? != ETH_P_IP {
        return Ok(TC_ACT_OK);
    }
    let ip = Ipv4::parse(ctx)?;
    tunnel::verify_wire_source(&ip)?;
    if let Some(error_to) = icmp::reverse_error(ctx, &ip)?.get() {
        let ep = local_pod(error_to).ok_or(DropReason::NoRoute)?;
        return deliver(ctx, &Ipv4 { daddr: error_to, ..ip }, &ep, counters::FORWARDED_LOCAL);
    }
    if ip.daddr == WEIR_NODE_IPV4.load() {
        if let Some(action) = to_node_address(ctx, &ip)?.get() {
            return Ok(action);
        }
    }
    if let Some(ep) = local_pod(ip.daddr) {
        note_inbound(ctx, &ip);
        return deliver(ctx, &ip, &ep, counters::FORWARDED_LOCAL);
    }
    from_wire_to_service(ctx, &ip)
}

/// The one way weir hands a packet from the wire, the tunnel or a translation to a pod of this
/// node: the pod's ingress policy, the flow record (addresses as delivered), the redirect into
/// the pod, the counter. `ip` holds the packet's addresses as delivered. Not inlined: one copy,
/// and its callees' frames stay off the callers' (the verifier caps the combined depth).
#[inline(never)]
fn deliver(ctx: &TcContext, ip: &Ipv4, ep: &EndpointInfo, counter: u32) -> Result<i32, DropReason> {
    policy::ingress(ctx)?;
    flow::observe(ctx, ip, OBS_TO_POD);
    counted(fwd::to_local_pod(ctx, ep), counter)
}

/// A packet for this node's address that answers a masqueraded connection: translated back and
/// delivered to its pod, or sent on. None: not a translated reply, the caller goes on. Inlined
/// into the entry points, so `deliver` and `observe` below it add no frame of its own to the
/// call chain the verifier caps at 512 bytes.
#[inline(always)]
fn to_node_address(ctx: &TcContext, ip: &Ipv4) -> Result<MaybeAction, DropReason> {
    let Some(orig) = nat::reverse(ctx, ip)?.get() else {
        return Ok(MaybeAction::NONE);
    };
    let now = Ipv4 { daddr: orig, ..*ip };
    if let Some(ep) = local_pod(orig) {
        return deliver(ctx, &now, &ep, counters::FORWARDED_LOCAL).map(MaybeAction::some);
    }
    masquerade_reply_elsewhere(ctx, &now).map(MaybeAction::some)
}

/// A reply to this node's masquerade, already translated back (`now`: its addresses now), whose
/// destination is no local pod: a load-balanced client's reply from a backend on another node,
/// sent on to the client, or left to the stack. Not inlined (stack); delivery to a local pod is
/// the caller's, so `deliver` and `observe` sit one frame higher in the call chain.
#[inline(never)]
fn masquerade_reply_elsewhere(ctx: &TcContext, now: &Ipv4) -> Result<i32, DropReason> {
    if lb::reverse(ctx, now)?.translated() {
        let route = fwd::Route::lookup(ctx, now, ingress_ifindex(ctx));
        return counted(route.send(ctx), counters::LB_TRANSLATED);
    }
    Ok(TC_ACT_OK)
}

/// The per-packet load balancer's part of `weir_from_wire`.
#[inline(always)]
fn from_wire_to_service(ctx: &TcContext, ip: &Ipv4) -> Result<i32, DropReason> {
    match lb::forward(ctx, ip)?.get() {
        Forward::NotService => Ok(TC_ACT_OK),
        Forward::NoBackend => {
            counter::count(counters::LB_NO_BACKEND);
            Ok(TC_ACT_OK)
        }
        Forward::To(backend) => {
            if let Some(ep) = local_pod(backend) {
                return deliver(ctx, &Ipv4 { daddr: backend, ..*ip }, &ep, counters::LB_TRANSLATED);
            }
            Ok(TAIL_LB_REMOTE)
        }
    }
}

/// A load-balanced packet (already DNATed) whose backend runs on another node: masquerade it to
/// this node so the reply comes back here, then send it to that node.
fn to_remote_backend(ctx: &TcContext) -> Result<i32, DropReason> {
    let ip = Ipv4::parse(ctx)?;
    let node = WEIR_NODE_IPV4.load();
    nat::masquerade(ctx, &ip, node)?;
    to_pod_node(ctx, &Ipv4 { saddr: node, ..ip }, counters::LB_TRANSLATED)
}

/// The one path to another node: sends a packet for a pod address of another node to that
/// node and counts `counter`. VXLAN mode: encapsulated to the node the tunnel map names for the
/// address. Direct routing: by the FIB, which knows every node's pod CIDR. A cluster address no
/// node holds (no tunnel entry; a FIB that would hand it to this node's stack) is dropped.
#[inline(always)]
fn to_pod_node(ctx: &TcContext, ip: &Ipv4, counter: u32) -> Result<i32, DropReason> {
    let vxlan = WEIR_VXLAN_IFINDEX.load();
    if vxlan != 0 {
        let key = aya_ebpf::maps::lpm_trie::Key::new(128, Addr16::from_v4_be(ip.daddr));
        let node = WEIR_TUNNEL.get(key).ok_or(DropReason::UnknownClusterDest)?;
        return counted(fwd::to_tunnel(ctx, node.node_addr.v4_be(), vxlan, WEIR_VXLAN_VNI.load()), counter);
    }
    let route = fwd::Route::lookup(ctx, ip, ingress_ifindex(ctx));
    if route.to_stack() {
        return Err(DropReason::UnknownClusterDest);
    }
    counted(route.send(ctx), counter)
}

fn try_from_vxlan(ctx: &TcContext) -> Result<i32, DropReason> {
    if parse::eth_proto(ctx)? != ETH_P_IP {
        return Err(DropReason::UnsupportedL3);
    }
    let ip = Ipv4::parse(ctx)?;
    tunnel::verify_decapsulated(ctx, &ip)?;
    if ip.daddr == WEIR_NODE_IPV4.load() {
        return to_node_address(ctx, &ip)?.get().ok_or(DropReason::NoRoute);
    }
    match local_pod(ip.daddr) {
        Some(ep) => {
            note_inbound(ctx, &ip);
            deliver(ctx, &ip, &ep, counters::FORWARDED_LOCAL)
        }
        None => Err(DropReason::NoRoute),
    }
}

/// What the node's stack sends to a pod of this node (its own traffic — the kubelet's probes —,
/// hostPort DNAT, what it routes from other interfaces): the agent routes the node's whole pod
/// CIDR to the `weir_host` device, whose tcx egress runs this. Judged by the pod's ingress policy
/// like everything weir delivers itself, observed, then handed into the pod's veth; the
/// connection's replies go back through the stack (`policy::ingress_from_stack`). An address of
/// the pod CIDR that no pod holds goes nowhere.
fn try_to_pod(ctx: &TcContext) -> Result<i32, DropReason> {
    if parse::eth_proto(ctx)? != ETH_P_IP {
        // The device resolves no neighbours and IPv6 is off on it: nothing else belongs here.
        return Err(DropReason::UnsupportedL3);
    }
    let ip = Ipv4::parse(ctx)?;
    let ep = local_pod(ip.daddr).ok_or(DropReason::NoRoute)?;
    policy::ingress_from_stack(ctx)?;
    flow::observe(ctx, &ip, OBS_TO_POD);
    counted(fwd::into_pod_veth(ctx, &ep), counters::FROM_STACK)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
