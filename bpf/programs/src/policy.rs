//! NetworkPolicy enforcement: egress at the source pod (`weir_from_pod`), ingress at the
//! destination pod (wherever a packet is delivered to a local pod: redirected by weir, or handed
//! in by the node's stack through `weir_to_pod`), each independently.
//!
//! Per packet, for the local endpoint `ep` and its peer, in this order:
//! 1. Fail closed first: an endpoint without a `WEIR_POLICY_EP` entry has no policy in force yet
//!    (its pod's labels are not known) and passes nothing, not even replies; an endpoint whose
//!    policy did not fit the maps passes nothing either.
//! 2. A fragment after the first carries no ports: it gets the verdict its datagram's first
//!    fragment got here (`WEIR_FRAGS`), or is dropped when that was not seen. One that overlaps
//!    the transport header, or a second first fragment that names other ports, poisons the
//!    datagram.
//! 3. A reply passes: TCP, UDP and ICMP echo whose reversed tuple is in `WEIR_POLICY_CT`
//!    (recorded in the other direction when the connection was accepted); an ICMP error passes
//!    when the packet it quotes belongs to such a connection of this endpoint. Port-less
//!    traffic is never a reply: it is judged every time.
//! 4. If policies isolate `ep` in this direction, the peer's identity comes from `WEIR_IPCACHE`
//!    (longest prefix; none = world) and `WEIR_POLICY` is looked up twice: (ep, direction,
//!    identity, protocol, port), then the same with any peer. No entry: dropped. This runs on
//!    every packet of the original direction, so a policy that starts denying a connection
//!    stops it at its next packet. The node's own address may always reach its pods (the
//!    kubelet's probes); only the stack path (`weir_to_pod`) can carry that source, since
//!    every other path drops it as spoofed.
//! 5. An accepted packet with ports records the connection, so its replies pass.
use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key, programs::TcContext};
use weir_bpf_common::{
    DropReason, FragKey, FragValue, PolicyCtKey, PolicyKey, DIR_EGRESS, DIR_INGRESS, IDENTITY_ANY, IDENTITY_WORLD,
    POLICY_CT_F_STACK, POLICY_F_EGRESS, POLICY_F_FAIL_CLOSED, POLICY_F_INGRESS, POLICY_PREFIX_FULL,
};

use crate::{
    parse::{Ipv4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    WEIR_FRAGS, WEIR_IPCACHE, WEIR_NODE_IPV4, WEIR_POLICY, WEIR_POLICY_CT, WEIR_POLICY_EP,
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// A fragment's verdict is kept this long (the kernel's own reassembly timeout is 30 s).
const FRAG_TTL_NS: u64 = 30_000_000_000;

/// What a packet is to policy.
const TRACKED: u8 = 0;
const ICMP_ERROR: u8 = 1;
const PORTLESS: u8 = 2;

/// The tuple policy judges: ports for TCP/UDP (ICMP echo: the identifier, as the source port
/// of a request and the destination port of a reply, so a reply's reversed tuple is its
/// request's); for an ICMP error, the tuple of the packet it quotes.
#[derive(Clone, Copy)]
struct Tuple {
    kind: u8,
    proto: u8,
    sport: u16,
    dport: u16,
    /// ICMP errors: the quoted packet's addresses.
    saddr: u32,
    daddr: u32,
}

#[inline(always)]
fn is_icmp_error(ty: u8) -> bool {
    ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED || ty == ICMP_PARAMETER_PROBLEM
}

/// Ports of an ICMP echo at `off` (`(0, 0)` and PORTLESS for other types).
#[inline(always)]
fn echo_ports(ctx: &TcContext, off: usize) -> Result<(u8, u16, u16), DropReason> {
    let ty: u8 = ctx.load(off).map_err(|_| DropReason::Malformed)?;
    let id: u16 = ctx.load(off + 4).map_err(|_| DropReason::Malformed)?;
    Ok(match ty {
        ICMP_ECHO_REQUEST => (TRACKED, id, 0),
        ICMP_ECHO_REPLY => (TRACKED, 0, id),
        _ => (PORTLESS, 0, 0),
    })
}

/// The tuple of an unfragmented packet or a first fragment. A transport header too short to
/// hold what is judged is malformed (never read as port 0).
#[inline(always)]
fn tuple(ctx: &TcContext, ip: &Ipv4) -> Result<Tuple, DropReason> {
    let mut t = Tuple { kind: PORTLESS, proto: ip.proto, sport: 0, dport: 0, saddr: 0, daddr: 0 };
    let off = ip.l4_off;
    if ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP {
        t.kind = TRACKED;
        t.sport = ctx.load(off).map_err(|_| DropReason::Malformed)?;
        t.dport = ctx.load(off + 2).map_err(|_| DropReason::Malformed)?;
        return Ok(t);
    }
    if ip.proto != IPPROTO_ICMP {
        return Ok(t);
    }
    let ty: u8 = ctx.load(off).map_err(|_| DropReason::Malformed)?;
    if !is_icmp_error(ty) {
        let (kind, s, d) = echo_ports(ctx, off)?;
        t.kind = kind;
        t.sport = s;
        t.dport = d;
        return Ok(t);
    }
    // An error quotes the IP header (without options here) and 8 bytes of what it concerns;
    // anything else in it is judged as port-less ICMP.
    let portless_icmp = t;
    let inner = off + 8;
    let vihl: u8 = ctx.load(inner).map_err(|_| DropReason::Malformed)?;
    if vihl != 0x45 {
        return Ok(portless_icmp);
    }
    t.proto = ctx.load(inner + 9).map_err(|_| DropReason::Malformed)?;
    t.saddr = ctx.load(inner + 12).map_err(|_| DropReason::Malformed)?;
    t.daddr = ctx.load(inner + 16).map_err(|_| DropReason::Malformed)?;
    let l4 = inner + 20;
    if t.proto == IPPROTO_TCP || t.proto == IPPROTO_UDP {
        t.sport = ctx.load(l4).map_err(|_| DropReason::Malformed)?;
        t.dport = ctx.load(l4 + 2).map_err(|_| DropReason::Malformed)?;
    } else if t.proto == IPPROTO_ICMP {
        let (kind, s, d) = echo_ports(ctx, l4)?;
        if kind != TRACKED {
            return Ok(portless_icmp);
        }
        t.sport = s;
        t.dport = d;
    } else {
        return Ok(portless_icmp);
    }
    t.kind = ICMP_ERROR;
    Ok(t)
}

/// The flags of the connection entry, if there is one.
#[inline(always)]
fn ct_get(saddr: u32, daddr: u32, sport_be: u16, dport_be: u16, proto: u8, direction: u8) -> Option<u32> {
    let k = PolicyCtKey { saddr, daddr, sport_be, dport_be, proto, direction, _pad: [0; 2] };
    // SAFETY: read-only lookup of a plain-data value.
    unsafe { WEIR_POLICY_CT.get(k) }.copied()
}

#[inline(always)]
fn ct_has(saddr: u32, daddr: u32, sport_be: u16, dport_be: u16, proto: u8, direction: u8) -> bool {
    ct_get(saddr, daddr, sport_be, dport_be, proto, direction).is_some()
}

/// An ICMP error about a connection of the endpoint `ep`: the quoted packet is one `ep` sent
/// (an error arriving: ingress) or received (an error it sends: egress), and that connection
/// was accepted here in either direction.
#[inline(always)]
fn icmp_error_of_connection(t: &Tuple, ep: u32, dir: u8) -> bool {
    let ep_sent = dir == DIR_INGRESS;
    if (ep_sent && t.saddr != ep) || (!ep_sent && t.daddr != ep) {
        return false;
    }
    let other = if dir == DIR_EGRESS { DIR_INGRESS } else { DIR_EGRESS };
    // The quoted packet as its connection's original direction, or as a reply in it.
    ct_has(t.saddr, t.daddr, t.sport, t.dport, t.proto, other)
        || ct_has(t.daddr, t.saddr, t.dport, t.sport, t.proto, dir)
}

/// [`check`]: pass, a reply of a connection the node's stack delivered (hand it back to the
/// stack). Never a `DropReason` (those are below 64).
const PASS: u32 = 0;
const PASS_REPLY_TO_STACK: u32 = 0x100;

/// Checks the packet in `ctx` for the local endpoint on side `dir` (`DIR_EGRESS`: its source,
/// `DIR_INGRESS`: its destination); an accepted connection is recorded with `ct_flags`.
/// Returns `PASS`, `PASS_REPLY_TO_STACK` or the `DropReason` as `u32` (not a `Result`: this
/// function is not inlined, and both variants must fill the same bits).
#[inline(never)]
fn check(ctx: &TcContext, dir: u8, ct_flags: u32) -> u32 {
    let Ok(ip) = Ipv4::parse(ctx) else { return DropReason::Malformed as u32 };
    let (ep, peer) = if dir == DIR_EGRESS { (ip.saddr, ip.daddr) } else { (ip.daddr, ip.saddr) };
    // SAFETY: read-only lookup of a plain-data value.
    let Some(flags) = (unsafe { WEIR_POLICY_EP.get(ep) }).map(|e| e.flags) else {
        return DropReason::EndpointNotReady as u32;
    };
    if flags & POLICY_F_FAIL_CLOSED != 0 {
        return DropReason::PolicyFailClosed as u32;
    }
    if ip.later_fragment() {
        return later_fragment(&ip, dir);
    }
    let t = match tuple(ctx, &ip) {
        Ok(t) => t,
        Err(r) => return r as u32,
    };
    let verdict = judge(&ip, &t, dir, ep, peer, flags, ct_flags);
    if ip.first_fragment() {
        return first_fragment(&ip, &t, dir, verdict);
    }
    verdict
}

#[inline(always)]
fn judge(ip: &Ipv4, t: &Tuple, dir: u8, ep: u32, peer: u32, flags: u32, ct_flags: u32) -> u32 {
    let other = if dir == DIR_EGRESS { DIR_INGRESS } else { DIR_EGRESS };
    if t.kind == TRACKED {
        if let Some(f) = ct_get(ip.daddr, ip.saddr, t.dport, t.sport, ip.proto, other) {
            return if f & POLICY_CT_F_STACK != 0 && dir == DIR_EGRESS { PASS_REPLY_TO_STACK } else { PASS };
        }
    }
    if t.kind == ICMP_ERROR && icmp_error_of_connection(t, ep, dir) {
        return PASS;
    }
    let isolating = if dir == DIR_EGRESS { POLICY_F_EGRESS } else { POLICY_F_INGRESS };
    let from_node = dir == DIR_INGRESS && peer == WEIR_NODE_IPV4.load();
    if flags & isolating != 0 && !from_node {
        let identity = WEIR_IPCACHE.get(Key::new(32, peer)).copied().unwrap_or(IDENTITY_WORLD);
        // Only TCP/UDP have ports in policy; ICMP (echo included) and the rest match rules
        // that name no ports.
        let port = if ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP { t.dport } else { 0 };
        let mut key = PolicyKey {
            endpoint: ep.to_ne_bytes(),
            direction: dir,
            identity: identity.to_be_bytes(),
            proto: ip.proto,
            port: port.to_ne_bytes(),
        };
        let mut allowed = WEIR_POLICY.get(Key::new(POLICY_PREFIX_FULL, key)).is_some();
        if !allowed {
            key.identity = IDENTITY_ANY.to_be_bytes();
            allowed = WEIR_POLICY.get(Key::new(POLICY_PREFIX_FULL, key)).is_some();
        }
        if !allowed {
            return if dir == DIR_EGRESS {
                DropReason::PolicyDeniedEgress as u32
            } else {
                DropReason::PolicyDeniedIngress as u32
            };
        }
    }
    if t.kind == TRACKED {
        let seen = PolicyCtKey {
            saddr: ip.saddr,
            daddr: ip.daddr,
            sport_be: t.sport,
            dport_be: t.dport,
            proto: ip.proto,
            direction: dir,
            _pad: [0; 2],
        };
        // SAFETY: read-only lookup of a plain-data value.
        if unsafe { WEIR_POLICY_CT.get(seen) }.is_none() {
            // A lost entry only means a reply is judged by policy like a new packet.
            let _ = WEIR_POLICY_CT.insert(seen, ct_flags, 0);
        }
    }
    PASS
}

#[inline(always)]
fn frag_key(ip: &Ipv4, dir: u8) -> FragKey {
    FragKey { saddr: ip.saddr, daddr: ip.daddr, id_be: ip.id_be, proto: ip.proto, direction: dir }
}

/// Smallest transport header: a later fragment starting inside it could rewrite what the first
/// fragment was judged on.
#[inline(always)]
fn min_l4(proto: u8) -> u16 {
    match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP | IPPROTO_ICMP => 8,
        _ => 0,
    }
}

#[inline(always)]
fn later_fragment(ip: &Ipv4, dir: u8) -> u32 {
    if ip.frag_off * 8 < min_l4(ip.proto) {
        return DropReason::FragmentInvalid as u32;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: read-only lookup of a plain-data value.
    match unsafe { WEIR_FRAGS.get(frag_key(ip, dir)) } {
        Some(v) if now.wrapping_sub(v.seen_ns) < FRAG_TTL_NS => v.verdict,
        _ => DropReason::FragmentWithoutFirst as u32,
    }
}

/// Records a first fragment's verdict for the fragments after it. A second first fragment of
/// the same datagram that names other ports (an overlap trying to change what was judged)
/// poisons the datagram.
#[inline(always)]
fn first_fragment(ip: &Ipv4, t: &Tuple, dir: u8, verdict: u32) -> u32 {
    let key = frag_key(ip, dir);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut v = FragValue { sport_be: t.sport, dport_be: t.dport, verdict, seen_ns: now };
    // SAFETY: read-only lookup of a plain-data value.
    if let Some(old) = unsafe { WEIR_FRAGS.get(key) } {
        let live = now.wrapping_sub(old.seen_ns) < FRAG_TTL_NS;
        let denied = old.verdict != PASS && old.verdict != PASS_REPLY_TO_STACK;
        if live && (old.sport_be != t.sport || old.dport_be != t.dport || denied) {
            v.verdict = if denied { old.verdict } else { DropReason::FragmentInvalid as u32 };
        }
    }
    // A lost insert fails closed: the later fragments find nothing and are dropped.
    let _ = WEIR_FRAGS.insert(key, v, 0);
    v.verdict
}

const NOT_READY: u32 = DropReason::EndpointNotReady as u32;
const DENIED_INGRESS: u32 = DropReason::PolicyDeniedIngress as u32;
const DENIED_EGRESS: u32 = DropReason::PolicyDeniedEgress as u32;
const FAIL_CLOSED: u32 = DropReason::PolicyFailClosed as u32;
const WITHOUT_FIRST: u32 = DropReason::FragmentWithoutFirst as u32;
const FRAG_INVALID: u32 = DropReason::FragmentInvalid as u32;

/// [`check`]'s answer as a `Result` for the callers' `?`: `Ok(true)` for a reply the stack
/// must carry.
#[inline(always)]
fn verdict(r: u32) -> Result<bool, DropReason> {
    match r {
        PASS => Ok(false),
        PASS_REPLY_TO_STACK => Ok(true),
        NOT_READY => Err(DropReason::EndpointNotReady),
        DENIED_INGRESS => Err(DropReason::PolicyDeniedIngress),
        DENIED_EGRESS => Err(DropReason::PolicyDeniedEgress),
        FAIL_CLOSED => Err(DropReason::PolicyFailClosed),
        WITHOUT_FIRST => Err(DropReason::FragmentWithoutFirst),
        FRAG_INVALID => Err(DropReason::FragmentInvalid),
        _ => Err(DropReason::Malformed),
    }
}

/// Egress policy at the source pod. `Ok(true)`: the packet replies to a connection the node's
/// stack delivered into the pod, and must go back through the stack.
#[inline(always)]
pub fn egress(ctx: &TcContext) -> Result<bool, DropReason> {
    verdict(check(ctx, DIR_EGRESS, 0))
}

/// Ingress policy for a packet weir delivers to a local pod.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> Result<(), DropReason> {
    verdict(check(ctx, DIR_INGRESS, 0)).map(|_| ())
}

/// Ingress policy for a packet the node's stack delivers to a local pod (`weir_to_pod`); the
/// connection's replies are handed back to the stack.
#[inline(always)]
pub fn ingress_from_stack(ctx: &TcContext) -> Result<(), DropReason> {
    verdict(check(ctx, DIR_INGRESS, POLICY_CT_F_STACK)).map(|_| ())
}
