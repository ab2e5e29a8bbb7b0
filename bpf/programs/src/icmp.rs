//! ICMP errors (destination unreachable — "fragmentation needed" among them —, time exceeded,
//! parameter problem) about connections weir translated on the way out, arriving on the uplink:
//! the error quotes the packet as it left (masqueraded to the node, or a load-balanced reply
//! whose source became the frontend), so both the error's destination and the quoted source are
//! translated back to the pod before it is delivered. Path MTU discovery works through NAT and
//! per-packet Services this way. (Socket-level Service translation needs nothing: the socket
//! itself is connected to the backend.)
//!
//! Whether the pod may receive the error is then policy's call (`policy.rs`: an error passes when
//! the packet it quotes belongs to an accepted connection of the pod).
use aya_ebpf::programs::TcContext;
use weir_bpf_common::{Addr16, DropReason, NatKey};

use crate::{
    outcome::MaybeAddr,
    parse::{Ipv4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IP_CSUM_OFF, IP_DADDR_OFF},
    WEIR_ENDPOINTS, WEIR_LB_CT, WEIR_NAT_REV, WEIR_NODE_IPV4,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// Where the quoted packet's fields sit, and what it was.
struct Quoted {
    /// Offsets from the start of the frame.
    csum_off: usize,
    saddr_off: usize,
    sport_off: usize,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
}

#[inline(always)]
fn quoted(ctx: &TcContext, ip: &Ipv4) -> Option<Quoted> {
    if ip.proto != IPPROTO_ICMP || ip.fragment {
        return None;
    }
    let ty: u8 = ctx.load(ip.l4_off).ok()?;
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED && ty != ICMP_PARAMETER_PROBLEM {
        return None;
    }
    let inner = ip.l4_off + 8;
    // Only quoted headers without options (what every sender of these errors quotes for ours).
    if ctx.load::<u8>(inner).ok()? != 0x45 {
        return None;
    }
    let proto: u8 = ctx.load(inner + 9).ok()?;
    let l4 = inner + 20;
    let (sport_off, sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP => (l4, ctx.load::<u16>(l4).ok()?, ctx.load::<u16>(l4 + 2).ok()?),
        // A masqueraded echo request: its identifier played the source port.
        IPPROTO_ICMP if ctx.load::<u8>(l4).ok()? == ICMP_ECHO_REQUEST => (l4 + 4, ctx.load::<u16>(l4 + 4).ok()?, 0),
        _ => return None,
    };
    Some(Quoted {
        csum_off: inner + 10,
        saddr_off: inner + 12,
        sport_off,
        saddr: ctx.load(inner + 12).ok()?,
        daddr: ctx.load(inner + 16).ok()?,
        sport,
        dport,
        proto,
    })
}

/// For an ICMP error quoting a packet weir translated on its way out from a pod of this node:
/// rewrites the quoted source and the error's destination back to the pod and returns the pod's
/// address (network order); none when the error is about nothing weir translated for a local pod
/// (left alone: a load-balanced connection to a backend on another node is not followed there).
/// Not inlined (stack).
#[inline(never)]
pub fn reverse_error(ctx: &TcContext, ip: &Ipv4) -> Result<MaybeAddr, DropReason> {
    let Some(q) = quoted(ctx, ip) else { return Ok(MaybeAddr::NONE) };
    let (s, d) = (Addr16::from_v4_be(q.saddr), Addr16::from_v4_be(q.daddr));
    // Masqueraded: the reverse NAT entry is keyed by the reply tuple of the quoted packet.
    let mut back = None;
    if ip.daddr == WEIR_NODE_IPV4.load() && q.saddr == ip.daddr {
        // SAFETY: read-only lookup of a plain-data value.
        back = unsafe { WEIR_NAT_REV.get(NatKey::new(d, s, q.dport, q.sport, q.proto)) }.copied();
    }
    // A load-balanced connection's reply (source rewritten to the frontend): the connection's
    // entry, keyed by the client's tuple, names the backend.
    if back.is_none() && q.proto != IPPROTO_ICMP {
        // SAFETY: as above.
        back = unsafe { WEIR_LB_CT.get(NatKey::new(d, s, q.dport, q.sport, q.proto)) }.copied();
    }
    let Some(back) = back else { return Ok(MaybeAddr::NONE) };
    // SAFETY: read-only lookup of a plain-data value.
    if unsafe { WEIR_ENDPOINTS.get(back.addr) }.is_none() {
        return Ok(MaybeAddr::NONE);
    }
    let pod = back.addr.v4_be();
    let err = |_| DropReason::RewriteFailed;
    let icmp_csum = ip.l4_off + 2;
    // The quoted header's checksum follows its address; the ICMP checksum covers both, and the
    // quoted port (no pseudo header for ICMP).
    let old_qcsum: u16 = ctx.load(q.csum_off).map_err(|_| DropReason::Malformed)?;
    ctx.l3_csum_replace(q.csum_off, q.saddr as u64, pod as u64, 4).map_err(err)?;
    let new_qcsum: u16 = ctx.load(q.csum_off).map_err(|_| DropReason::Malformed)?;
    ctx.l4_csum_replace(icmp_csum, q.saddr as u64, pod as u64, 4).map_err(err)?;
    ctx.l4_csum_replace(icmp_csum, old_qcsum as u64, new_qcsum as u64, 2).map_err(err)?;
    ctx.l4_csum_replace(icmp_csum, q.sport as u64, back.port_be as u64, 2).map_err(err)?;
    ctx.store(q.saddr_off, &pod, 0).map_err(err)?;
    ctx.store(q.sport_off, &back.port_be, 0).map_err(err)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, ip.daddr as u64, pod as u64, 4).map_err(err)?;
    ctx.store(IP_DADDR_OFF, &pod, 0).map_err(err)?;
    Ok(MaybeAddr::some(pod))
}
