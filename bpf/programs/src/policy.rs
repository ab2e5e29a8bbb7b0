//! NetworkPolicy enforcement: egress at the source pod (`weir_from_pod`), ingress at the
//! destination pod (wherever a packet is delivered to a local pod), each independently.
//!
//! Per packet, for the local endpoint `ep` and its peer:
//! 1. A reply — its reversed tuple is in `WEIR_POLICY_CT`, recorded in the other direction when
//!    the connection was accepted — passes.
//! 2. If policies isolate `ep` in this direction (`WEIR_POLICY_EP`), the peer's identity comes
//!    from `WEIR_IPCACHE` (longest prefix; none = world) and `WEIR_POLICY` is looked up twice:
//!    (ep, direction, identity, protocol, port), then the same with any peer. No entry: dropped.
//!    This runs on every packet of the original direction, so a policy that starts denying a
//!    connection stops it at its next packet.
//! 3. An accepted first packet records the connection, so its replies pass.
//!
//! Two hash lookups for a pod no policy selects; two more LPM lookups when one does. Neither
//! grows with the number of policies, rules or identities.
use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use weir_bpf_common::{
    DropReason, PolicyCtKey, PolicyKey, DIR_EGRESS, DIR_INGRESS, IDENTITY_ANY, IDENTITY_WORLD, POLICY_F_EGRESS,
    POLICY_F_FAIL_CLOSED, POLICY_F_INGRESS, POLICY_PREFIX_FULL,
};

use crate::{
    parse::{Ipv4, IPPROTO_TCP, IPPROTO_UDP},
    WEIR_IPCACHE, WEIR_POLICY, WEIR_POLICY_CT, WEIR_POLICY_EP,
};

const IPPROTO_ICMP: u8 = 1;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// Ports of the tuple: TCP/UDP ports; for ICMP echo the identifier, as the source port of a
/// request and the destination port of a reply (so a reply's reversed tuple is its request's).
#[inline(always)]
fn ports(ctx: &TcContext, ip: &Ipv4) -> (u16, u16) {
    if ip.fragment {
        return (0, 0);
    }
    if ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP {
        let s = ctx.load::<u16>(ip.l4_off).unwrap_or(0);
        let d = ctx.load::<u16>(ip.l4_off + 2).unwrap_or(0);
        return (s, d);
    }
    if ip.proto == IPPROTO_ICMP {
        let ty = ctx.load::<u8>(ip.l4_off).unwrap_or(u8::MAX);
        let id = ctx.load::<u16>(ip.l4_off + 4).unwrap_or(0);
        if ty == ICMP_ECHO_REQUEST {
            return (id, 0);
        }
        if ty == ICMP_ECHO_REPLY {
            return (0, id);
        }
    }
    (0, 0)
}

/// Checks the packet in `ctx` for the local endpoint on side `dir` (`DIR_EGRESS`: its source,
/// `DIR_INGRESS`: its destination). Returns 0 to pass, else the `DropReason` as `u32` (not a
/// `Result`: this function is not inlined, and both variants must fill the same bits).
#[inline(never)]
pub fn check(ctx: &TcContext, dir: u8) -> u32 {
    let Ok(ip) = Ipv4::parse(ctx) else { return DropReason::Malformed as u32 };
    let (sport, dport) = ports(ctx, &ip);
    let other = if dir == DIR_EGRESS { DIR_INGRESS } else { DIR_EGRESS };
    let reply = PolicyCtKey {
        saddr: ip.daddr,
        daddr: ip.saddr,
        sport_be: dport,
        dport_be: sport,
        proto: ip.proto,
        direction: other,
        _pad: [0; 2],
    };
    // SAFETY: read-only lookup of a plain-data value.
    if unsafe { WEIR_POLICY_CT.get(reply) }.is_some() {
        return 0;
    }
    let (ep, peer) = if dir == DIR_EGRESS { (ip.saddr, ip.daddr) } else { (ip.daddr, ip.saddr) };
    // SAFETY: as above.
    let flags = unsafe { WEIR_POLICY_EP.get(ep) }.map_or(0, |e| e.flags);
    let isolating = if dir == DIR_EGRESS { POLICY_F_EGRESS } else { POLICY_F_INGRESS };
    if flags & POLICY_F_FAIL_CLOSED != 0 {
        return DropReason::PolicyFailClosed as u32;
    }
    if flags & isolating != 0 {
        let identity = WEIR_IPCACHE.get(Key::new(32, peer)).copied().unwrap_or(IDENTITY_WORLD);
        let mut key = PolicyKey {
            endpoint: ep.to_ne_bytes(),
            direction: dir,
            identity: identity.to_be_bytes(),
            proto: ip.proto,
            port: dport.to_ne_bytes(),
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
    let seen = PolicyCtKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport_be: sport,
        dport_be: dport,
        proto: ip.proto,
        direction: dir,
        _pad: [0; 2],
    };
    // SAFETY: as above.
    if unsafe { WEIR_POLICY_CT.get(seen) }.is_none() {
        // A lost entry only means a reply is judged by policy like a new packet.
        let _ = WEIR_POLICY_CT.insert(seen, 0, 0);
    }
    0
}

const DENIED_INGRESS: u32 = DropReason::PolicyDeniedIngress as u32;
const DENIED_EGRESS: u32 = DropReason::PolicyDeniedEgress as u32;
const FAIL_CLOSED: u32 = DropReason::PolicyFailClosed as u32;

/// [`check`]'s answer as a `Result` for the callers' `?`.
#[inline(always)]
pub fn verdict(r: u32) -> Result<(), DropReason> {
    match r {
        0 => Ok(()),
        DENIED_INGRESS => Err(DropReason::PolicyDeniedIngress),
        DENIED_EGRESS => Err(DropReason::PolicyDeniedEgress),
        FAIL_CLOSED => Err(DropReason::PolicyFailClosed),
        _ => Err(DropReason::Malformed),
    }
}

#[inline(always)]
pub fn egress(ctx: &TcContext) -> Result<(), DropReason> {
    verdict(check(ctx, DIR_EGRESS))
}

#[inline(always)]
pub fn ingress(ctx: &TcContext) -> Result<(), DropReason> {
    verdict(check(ctx, DIR_INGRESS))
}
