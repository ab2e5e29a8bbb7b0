//! Per-packet Service load balancing, for traffic no socket hook saw: clients outside the cluster
//! reaching a NodePort, an external IP or a LoadBalancer IP on this node's uplink.
//!
//! * Forward: the frontend's backend is chosen once per connection — `WEIR_LB_CT` remembers it,
//!   else the frontend's Maglev table (`WEIR_MAGLEV`) picks it from the 5-tuple hash, so every
//!   node picks the same backend and a backend change moves few other flows. The destination is
//!   rewritten (DNAT); `WEIR_LB_REV` keys the reply tuple to the frontend.
//! * Reverse: a reply from the backend to the client gets the frontend back as its source.
//!
//! A backend on another node is also masqueraded to this node (the caller does it) so that its
//! reply returns here, where both translations are undone.
use aya_ebpf::programs::TcContext;
use weir_bpf_common::{Addr16, BackendAddr, BackendKey, DropReason, NatEntry, NatKey, ServiceKey, MAGLEV_M};

use crate::{
    nat::{self, Rewrite},
    outcome::Translated,
    parse::{Ipv4, IPPROTO_TCP, IPPROTO_UDP, IP_DADDR_OFF, IP_SADDR_OFF},
    WEIR_BACKENDS, WEIR_LB_CT, WEIR_LB_REV, WEIR_MAGLEV, WEIR_SERVICES,
};

/// What [`forward`] did, read with [`Forwarded::get`]. It crosses the call as one `u32` (see
/// [`crate::outcome`]): the backend address (network order), or 0.0.0.0 and 255.255.255.255,
/// which are never a backend, for the other two outcomes.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Forwarded(u32);

/// What [`forward`] did to a packet.
pub enum Forward {
    /// Not for a Service frontend: left alone.
    NotService,
    /// A frontend without backends: the node's stack answers (TCP RST, ICMP port unreachable).
    NoBackend,
    /// Rewritten to this backend address (network order).
    To(u32),
}

impl Forwarded {
    const NOT_SERVICE: Self = Forwarded(0);
    const NO_BACKEND: Self = Forwarded(u32::MAX);

    #[inline(always)]
    pub fn get(self) -> Forward {
        match self.0 {
            0 => Forward::NotService,
            u32::MAX => Forward::NoBackend,
            backend => Forward::To(backend),
        }
    }
}

/// Source and destination port of a TCP or UDP packet that is not a fragment.
#[inline(always)]
pub fn ports(ctx: &TcContext, ip: &Ipv4) -> Option<(u16, u16)> {
    if ip.fragment || (ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP) {
        return None;
    }
    let sport = ctx.load::<u16>(ip.l4_off).ok()?;
    let dport = ctx.load::<u16>(ip.l4_off + 2).ok()?;
    Some((sport, dport))
}

/// The backend for a new connection with flow hash `h`: its Maglev slot, or a plain hash when the
/// table is missing or does not fit the frontend's set (only between the map writes of a
/// frontend update).
#[inline(always)]
fn pick(key: &ServiceKey, h: u32, set: u32, count: u32) -> Option<BackendAddr> {
    // SAFETY: read-only lookup of a plain-data value.
    let slot = match unsafe { WEIR_MAGLEV.get(key) } {
        Some(t) => {
            let i = (h as usize).checked_rem(MAGLEV_M)?;
            // SAFETY: reading a local; the volatile read keeps the bound check below for the verifier.
            let i = unsafe { core::ptr::read_volatile(&i) };
            u32::from(*t.slots.get(i)?)
        }
        None => count,
    };
    let slot = if slot < count { slot } else { h.checked_rem(count)? };
    // SAFETY: read-only lookup of a plain-data value.
    unsafe { WEIR_BACKENDS.get(BackendKey { set, slot }) }.copied()
}

/// DNAT a packet addressed to a Service frontend to one of its backends. Not inlined (stack).
#[inline(never)]
pub fn forward(ctx: &TcContext, ip: &Ipv4) -> Result<Forwarded, DropReason> {
    let Some((sport, dport)) = ports(ctx, ip) else { return Ok(Forwarded::NOT_SERVICE) };
    let front = Addr16::from_v4_be(ip.daddr);
    let key = ServiceKey { addr: front, port_be: dport, proto: ip.proto, _pad: [0; 5] };
    // SAFETY: read-only lookup of a plain-data value.
    let Some(svc) = (unsafe { WEIR_SERVICES.get(key) }) else { return Ok(Forwarded::NOT_SERVICE) };
    let (count, set) = (u32::from(svc.count), svc.set);
    if count == 0 {
        return Ok(Forwarded::NO_BACKEND);
    }
    let client = Addr16::from_v4_be(ip.saddr);
    let tuple = NatKey::new(client, front, sport, dport, ip.proto);
    // SAFETY: read-only lookup of a plain-data value.
    let b = match unsafe { WEIR_LB_CT.get(tuple) } {
        Some(e) => BackendAddr { addr: e.addr, port_be: e.port_be, _pad: [0; 6] },
        None => {
            // sessionAffinity: ClientIP hashes the client address alone, so every connection
            // of a client picks the same slot on every node (sticky while the backends are
            // unchanged; the timeout applies only to the socket-level path).
            let h = nat::hash(&tuple, svc.affinity_timeout_s != 0);
            let b = pick(&key, h, set, count).ok_or(DropReason::NoRoute)?;
            // Without the entry the next packet picks again: the same backend while the table
            // is unchanged, so a failed insert costs stickiness only across an update.
            let _ = WEIR_LB_CT.insert(tuple, NatEntry::new(b.addr, b.port_be), 0);
            b
        }
    };
    let rev = NatKey::new(b.addr, client, b.port_be, sport, ip.proto);
    WEIR_LB_REV.insert(rev, NatEntry::new(front, dport), 0).map_err(|_| DropReason::NatPortsExhausted)?;
    let l4 = nat::l4_layout(ctx, ip, false)?;
    let backend = b.addr.v4_be();
    let r = Rewrite {
        addr_off: IP_DADDR_OFF as u32,
        old_addr: ip.daddr,
        new_addr: backend,
        port_off: l4.dport_off,
        old_port: dport,
        new_port: b.port_be,
    };
    nat::rewrite(ctx, &l4, r)?;
    Ok(Forwarded(backend))
}

/// A backend's reply to a load-balanced client: restore the frontend as the source. `ip` holds
/// the addresses as they are now in the packet. Not inlined: its keys stay off the callers'
/// stack frames (the verifier caps the combined depth).
#[inline(never)]
pub fn reverse(ctx: &TcContext, ip: &Ipv4) -> Result<Translated, DropReason> {
    let Some((sport, dport)) = ports(ctx, ip) else { return Ok(Translated::NO) };
    let key = NatKey::new(Addr16::from_v4_be(ip.saddr), Addr16::from_v4_be(ip.daddr), sport, dport, ip.proto);
    // SAFETY: read-only lookup of a plain-data value.
    let Some(front) = (unsafe { WEIR_LB_REV.get(key) }).copied() else { return Ok(Translated::NO) };
    let l4 = nat::l4_layout(ctx, ip, true)?;
    let r = Rewrite {
        addr_off: IP_SADDR_OFF as u32,
        old_addr: ip.saddr,
        new_addr: front.addr.v4_be(),
        port_off: l4.sport_off,
        old_port: sport,
        new_port: front.port_be,
    };
    nat::rewrite(ctx, &l4, r)?;
    Ok(Translated::YES)
}
