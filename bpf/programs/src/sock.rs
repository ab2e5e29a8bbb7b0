//! Socket-level Service translation (cgroup sock_addr hooks): a client's connect() or sendmsg()
//! to a Service frontend is rewritten to one backend before any packet exists, so east-west
//! Service traffic is translated once per connection and flows as plain pod-to-pod traffic.
//! getpeername() and recvmsg() report the Service address back. With observability on, the
//! same hooks, which run in the calling process's context, note which process connected each
//! socket (`WEIR_SOCK_PROC`), so a pod's flows name their process; and post_bind4 reports which
//! process bound which port (`EVENT_BIND`), so connections accepted on it name that process.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_netns_cookie,
        bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval,
    },
    programs::{SockAddrContext, SockContext},
};
use weir_bpf_common::{
    counters, settings, Addr16, AffinityKey, AffinityValue, BackendAddr, BackendKey, BindKey, DatapathEvent, NatEntry,
    ServiceKey, ServiceValue, SockProc, SockRevKey, EVENT_BIND,
};

use crate::{
    counter, WEIR_AFFINITY, WEIR_BACKENDS, WEIR_BINDS, WEIR_EVENTS, WEIR_SERVICES, WEIR_SETTINGS, WEIR_SOCK_PROC,
    WEIR_SOCK_RNAT,
};

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[inline(always)]
fn addr(ctx: &SockAddrContext) -> (u32, u16, u8) {
    // SAFETY: the kernel hands a valid bpf_sock_addr for the whole run.
    let sa = unsafe { &*ctx.sock_addr };
    (sa.user_ip4, sa.user_port as u16, sa.protocol as u8)
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: helper call on the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) }
}

/// connect4 and sendmsg4, with flow events on: the calling process becomes the socket's
/// (connect: always, the latest caller wins; sendmsg: only a socket no process has yet, so a
/// stream of datagrams costs one failed insert each, not an update).
#[inline(always)]
pub fn remember_process(ctx: &SockAddrContext, first_only: bool) {
    if WEIR_SETTINGS.get(settings::OBSERVE).copied().unwrap_or(0) & settings::OBSERVE_FLOWS == 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let v = SockProc { tgid, comm, _pad: [0; 4] };
    let flags = if first_only { u64::from(BPF_NOEXIST) } else { 0 };
    // A lost insert (already there, or the map refused) only leaves the flow without a process.
    let _ = WEIR_SOCK_PROC.insert(cookie(ctx), v, flags);
}

/// post_bind4 and post_bind6 (`addr_be`: the IPv4 address bound, 0 for IPv6), with flow events
/// on: a TCP or UDP socket of a pod process was bound (its port
/// already chosen when the caller asked for 0). Reported with the process and its cgroup: the
/// agent keeps (pod, protocol, port) → process and names it on connections accepted there
/// (no hook runs in the accepting process's context here; the one that bound the port is the
/// closest known: for a pre-forking server, its parent). A bind costs one record (a full ring
/// counts it lost) and an entry in `WEIR_BINDS`, which a restarted agent reads.
#[inline(always)]
pub fn report_bind(ctx: &SockContext, addr_be: u32) {
    if WEIR_SETTINGS.get(settings::OBSERVE).copied().unwrap_or(0) & settings::OBSERVE_FLOWS == 0 {
        return;
    }
    // SAFETY: the kernel hands a valid bpf_sock for the whole run.
    let sk = unsafe { &*ctx.sock };
    let (proto, ip_be, port) = (sk.protocol, addr_be, sk.src_port);
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: helpers without arguments, in the binding process's context.
    let (cgroup, now) = unsafe { (bpf_get_current_cgroup_id(), bpf_ktime_get_ns()) };
    let proc = SockProc { tgid, comm, _pad: [0; 4] };
    let key = BindKey { cgroup_id: cgroup, port: port as u16, proto: proto as u8, _pad: [0; 5] };
    // What a restarted agent starts from; a lost insert only costs that.
    let _ = WEIR_BINDS.insert(key, proc, 0);
    let Some(mut slot) = WEIR_EVENTS.reserve::<DatapathEvent>(0) else {
        counter::count(counters::EVENTS_LOST);
        return;
    };
    let e = DatapathEvent {
        saddr: Addr16::from_v4_be(ip_be),
        packets: cgroup,
        ktime_ns: now,
        // (src_port is in host order.)
        sport_be: (port as u16).to_be(),
        kind: EVENT_BIND,
        proto: proto as u8,
        proc_comm: comm,
        proc_tgid: tgid,
        ..DatapathEvent::default()
    };
    slot.write(e);
    slot.submit(crate::flow::submit_flags(core::mem::size_of::<DatapathEvent>()));
}

/// connect4 and sendmsg4: pick a backend and rewrite the destination; refuse when the Service
/// has none. Anything that is not a Service frontend is left alone.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext) -> i32 {
    let (ip, port_be, proto) = addr(ctx);
    let key = ServiceKey { addr: Addr16::from_v4_be(ip), port_be, proto, _pad: [0; 5] };
    // SAFETY: read-only lookup of a plain-data value.
    let Some(svc) = (unsafe { WEIR_SERVICES.get(key) }) else { return ALLOW };
    let count = u32::from(svc.count);
    if count == 0 {
        // SAFETY: plain helper call; the syscall then fails with ECONNREFUSED instead of EPERM.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    let b = match choose(ctx, &key, svc, count) {
        Some(b) => b,
        None => return ALLOW,
    };
    let rev = SockRevKey { cookie: cookie(ctx), addr: b.addr, port_be: b.port_be, _pad: [0; 6] };
    let front = NatEntry::new(key.addr, port_be);
    // Without the reverse entry getpeername/recvmsg would show the backend; still connect.
    let _ = WEIR_SOCK_RNAT.insert(rev, front, 0);
    // SAFETY: writes to the user address fields are what these hooks exist for.
    unsafe {
        (*ctx.sock_addr).user_ip4 = b.addr.v4_be();
        (*ctx.sock_addr).user_port = u32::from(b.port_be);
    }
    ALLOW
}

/// A backend of the frontend's set (slots `0..count`).
#[inline(always)]
fn backend(set: u32, slot: u32) -> Option<BackendAddr> {
    // SAFETY: read-only lookup of a plain-data value.
    unsafe { WEIR_BACKENDS.get(BackendKey { set, slot }) }.copied()
}

/// A random backend, or — with ClientIP affinity — the one this client's pod used last, while it
/// still holds its slot and the affinity has not timed out.
#[inline(always)]
fn choose(ctx: &SockAddrContext, key: &ServiceKey, svc: &ServiceValue, count: u32) -> Option<BackendAddr> {
    let (timeout_s, set) = (svc.affinity_timeout_s, svc.set);
    // SAFETY: plain helper calls on the program's own context.
    let (now, client) = unsafe { (bpf_ktime_get_ns(), bpf_get_netns_cookie(ctx.sock_addr.cast())) };
    let akey = AffinityKey { netns_cookie: client, frontend: *key };
    if timeout_s != 0 {
        // SAFETY: read-only lookup of a plain-data value.
        if let Some(prev) = unsafe { WEIR_AFFINITY.get(akey) }.copied() {
            let fresh = now.saturating_sub(prev.last_used_ns) < u64::from(timeout_s) * 1_000_000_000;
            if fresh && prev.slot < count && backend(set, prev.slot) == Some(prev.backend) {
                let _ = WEIR_AFFINITY.insert(akey, AffinityValue { last_used_ns: now, ..prev }, 0);
                return Some(prev.backend);
            }
        }
    }
    // SAFETY: plain helper call.
    let slot = unsafe { bpf_get_prandom_u32() }.checked_rem(count)?;
    let b = backend(set, slot)?;
    if timeout_s != 0 {
        let v = AffinityValue { backend: b, last_used_ns: now, slot, _pad: [0; 4] };
        let _ = WEIR_AFFINITY.insert(akey, v, 0);
    }
    Some(b)
}

/// recvmsg4 and getpeername4: show the Service address the socket was translated from.
#[inline(always)]
pub fn restore(ctx: &SockAddrContext) -> i32 {
    let (ip, port_be, _) = addr(ctx);
    let rev = SockRevKey { cookie: cookie(ctx), addr: Addr16::from_v4_be(ip), port_be, _pad: [0; 6] };
    // SAFETY: read-only lookup of a plain-data value.
    if let Some(front) = unsafe { WEIR_SOCK_RNAT.get(rev) } {
        let (a, p) = (front.addr.v4_be(), front.port_be);
        // SAFETY: as above.
        unsafe {
            (*ctx.sock_addr).user_ip4 = a;
            (*ctx.sock_addr).user_port = u32::from(p);
        }
    }
    ALLOW
}
