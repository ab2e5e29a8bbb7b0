//! Masquerade (SNAT to the node address) for traffic leaving the cluster, and its reverse.
//!
//! `WEIR_NAT_FWD` maps the pod-side tuple to the allocated node port; `WEIR_NAT_REV` maps the
//! reply tuple back to the pod. A port is claimed by inserting the reverse entry with
//! `BPF_NOEXIST`, so two connections never share one. ICMP echo uses its identifier as the port.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    programs::TcContext,
};
use weir_bpf_common::{Addr16, DropReason, NatEntry, NatKey};

use crate::{
    parse::{Ipv4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF},
    WEIR_NAT_FWD, WEIR_NAT_PORT_MAX, WEIR_NAT_PORT_MIN, WEIR_NAT_REV,
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// How many ports a new connection tries before giving up.
const PORT_PROBES: u32 = 32;

/// Where the "ports" of a packet live and how its L4 checksum must be fixed.
pub struct L4 {
    /// Offset of the port (or ICMP identifier) that masquerade rewrites on egress.
    pub sport_off: u32,
    pub dport_off: u32,
    csum_off: u32,
    /// Whether the L4 checksum covers the IP pseudo header.
    pseudo: bool,
    /// UDP: a zero checksum means "none" and must stay zero.
    udp: bool,
}

#[inline(always)]
pub fn l4_layout(ctx: &TcContext, ip: &Ipv4, egress: bool) -> Result<L4, DropReason> {
    let o = ip.l4_off as u32;
    match ip.proto {
        IPPROTO_TCP => Ok(L4 { sport_off: o, dport_off: o + 2, csum_off: o + 16, pseudo: true, udp: false }),
        IPPROTO_UDP => Ok(L4 { sport_off: o, dport_off: o + 2, csum_off: o + 6, pseudo: true, udp: true }),
        IPPROTO_ICMP => {
            let ty: u8 = ctx.load(o as usize).map_err(|_| DropReason::Malformed)?;
            let want = if egress { ICMP_ECHO_REQUEST } else { ICMP_ECHO_REPLY };
            if ty != want {
                return Err(DropReason::NatUnsupported);
            }
            // The identifier plays the port on both sides; the peer "port" is always 0.
            Ok(L4 { sport_off: o + 4, dport_off: o + 4, csum_off: o + 2, pseudo: false, udp: false })
        }
        _ => Err(DropReason::NatUnsupported),
    }
}

/// The port at `off`; the ICMP peer "port" is always 0.
#[inline(always)]
pub fn load_port(ctx: &TcContext, off: u32, icmp_peer: bool) -> Result<u16, DropReason> {
    if icmp_peer {
        return Ok(0);
    }
    ctx.load::<u16>(off as usize).map_err(|_| DropReason::Malformed)
}

/// One address and one port to replace, with checksum fix-ups.
pub struct Rewrite {
    pub addr_off: u32,
    pub old_addr: u32,
    pub new_addr: u32,
    pub port_off: u32,
    pub old_port: u16,
    pub new_port: u16,
}

#[inline(always)]
pub fn rewrite(ctx: &TcContext, l4: &L4, r: Rewrite) -> Result<(), DropReason> {
    let err = |_| DropReason::RewriteFailed;
    let mangled = if l4.udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    if l4.pseudo {
        ctx.l4_csum_replace(
            l4.csum_off as usize,
            r.old_addr as u64,
            r.new_addr as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .map_err(err)?;
    }
    ctx.l4_csum_replace(l4.csum_off as usize, r.old_port as u64, r.new_port as u64, mangled | 2).map_err(err)?;
    ctx.l3_csum_replace(IP_CSUM_OFF, r.old_addr as u64, r.new_addr as u64, 4).map_err(err)?;
    ctx.store(r.addr_off as usize, &r.new_addr, 0).map_err(err)?;
    ctx.store(r.port_off as usize, &r.new_port, 0).map_err(err)?;
    Ok(())
}

/// A flow's hash; with `client_only`, of its source address alone (every connection of a
/// client, to any frontend on any node, alike).
#[inline(always)]
pub fn hash(k: &NatKey, client_only: bool) -> u32 {
    let s = k.saddr.v4_be();
    let (d, p) = if client_only { (0, 0) } else { (k.daddr.v4_be(), ((k.sport_be as u32) << 16) | k.dport_be as u32) };
    (s ^ d.rotate_left(7) ^ p ^ k.proto as u32).wrapping_mul(2654435761)
}

/// Claims a free node port for the connection `fwd_key` (by inserting its reverse entry with
/// `BPF_NOEXIST`); returns it in network order, or 0 when every probe was taken.
#[inline(always)]
fn claim(fwd_key: &NatKey, node: &Addr16) -> u16 {
    let min = WEIR_NAT_PORT_MIN.load();
    let span = WEIR_NAT_PORT_MAX.load().saturating_sub(min) + 1;
    let h = hash(fwd_key, false);
    let back = NatEntry { addr: fwd_key.saddr, port_be: fwd_key.sport_be, _pad: [0; 6] };
    for i in 0..PORT_PROBES {
        // checked_rem: no divide-by-zero panic path for the verifier to reject.
        let Some(off) = h.wrapping_add(i.wrapping_mul(40503)).checked_rem(span) else {
            break;
        };
        let port_be = ((min + off) as u16).to_be();
        let rev_key = NatKey::new(fwd_key.daddr, *node, fwd_key.dport_be, port_be, fwd_key.proto);
        if WEIR_NAT_REV.insert(rev_key, back, BPF_NOEXIST as u64).is_ok() {
            return port_be;
        }
    }
    0
}

/// Translate the source of an outbound packet to `node_be` and a claimed port.
pub fn masquerade(ctx: &TcContext, ip: &Ipv4, node_be: u32) -> Result<(), DropReason> {
    if ip.fragment {
        return Err(DropReason::Fragmented);
    }
    let l4 = l4_layout(ctx, ip, true)?;
    let icmp = ip.proto == IPPROTO_ICMP;
    let sport = load_port(ctx, l4.sport_off, false)?;
    let dport = load_port(ctx, l4.dport_off, icmp)?;
    let fwd_key = NatKey::new(Addr16::from_v4_be(ip.saddr), Addr16::from_v4_be(ip.daddr), sport, dport, ip.proto);
    let node = Addr16::from_v4_be(node_be);
    // SAFETY: read-only lookup of a plain-data value.
    let new_port = match unsafe { WEIR_NAT_FWD.get(fwd_key) } {
        Some(e) => e.port_be,
        None => {
            let port_be = claim(&fwd_key, &node);
            if port_be == 0 {
                return Err(DropReason::NatPortsExhausted);
            }
            let fwd = NatEntry { addr: node, port_be, _pad: [0; 6] };
            WEIR_NAT_FWD.insert(fwd_key, fwd, 0).map_err(|_| DropReason::NatPortsExhausted)?;
            port_be
        }
    };
    let r = Rewrite {
        addr_off: IP_SADDR_OFF as u32,
        old_addr: ip.saddr,
        new_addr: node_be,
        port_off: l4.sport_off,
        old_port: sport,
        new_port,
    };
    rewrite(ctx, &l4, r)
}

/// For a packet addressed to the node: if it answers a masqueraded connection, translate its
/// destination back to the original source and return that address (network order); otherwise
/// leave it alone and return 0. Not inlined, to keep its keys off the caller's stack frame (the
/// verifier caps the combined depth), and so a plain `u32` rather than an `Option`.
#[inline(never)]
pub fn reverse(ctx: &TcContext, ip: &Ipv4) -> Result<u32, DropReason> {
    if ip.fragment {
        return Ok(0);
    }
    let l4 = match l4_layout(ctx, ip, false) {
        Ok(l4) => l4,
        Err(_) => return Ok(0),
    };
    let icmp = ip.proto == IPPROTO_ICMP;
    let sport = load_port(ctx, l4.sport_off, icmp)?;
    let dport = load_port(ctx, l4.dport_off, false)?;
    let key = NatKey::new(Addr16::from_v4_be(ip.saddr), Addr16::from_v4_be(ip.daddr), sport, dport, ip.proto);
    // SAFETY: read-only lookup of a plain-data value.
    let Some(back) = (unsafe { WEIR_NAT_REV.get(key) }).copied() else {
        return Ok(0);
    };
    let pod = back.addr.v4_be();
    let r = Rewrite {
        addr_off: IP_DADDR_OFF as u32,
        old_addr: ip.daddr,
        new_addr: pod,
        port_off: l4.dport_off,
        old_port: dport,
        new_port: back.port_be,
    };
    rewrite(ctx, &l4, r)?;
    Ok(pod)
}
