//! Masquerade (SNAT to the node address) for traffic leaving the cluster, and its reverse.
//!
//! `WEIR_NAT_FWD` maps the pod-side tuple to the allocated node port; `WEIR_NAT_REV` maps the
//! reply tuple back to the pod and owns the port. A port is claimed by inserting the reverse
//! entry with `BPF_NOEXIST`, so two live connections never share one; the reverse entry records
//! the connection's TCP state and when it last carried a packet either way, and a port whose
//! connection is over (`nat_state::expired`: closed, or idle past its timeout) is taken over by
//! the next connection that probes it — its old forward entry deleted with it. A forward entry
//! is used only while the reverse entry of its port still points back to it: one whose port was
//! taken over (or whose reverse entry the LRU evicted) claims a port again, so replies never
//! reach another pod. ICMP echo uses its identifier as the port.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use weir_bpf_common::{nat_state, Addr16, DropReason, NatEntry, NatKey};

use crate::{
    outcome::MaybeAddr,
    parse::{Ipv4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF},
    WEIR_NAT_FWD, WEIR_NAT_PORT_MAX, WEIR_NAT_PORT_MIN, WEIR_NAT_REV, WEIR_NAT_SCR,
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

/// Seconds since boot: the clock of `NatEntry::seen`.
#[inline(always)]
fn now_secs() -> u32 {
    // SAFETY: a helper without arguments.
    (unsafe { bpf_ktime_get_ns() } / 1_000_000_000) as u32
}

/// TCP flags of the packet (0 for other protocols).
#[inline(always)]
fn tcp_flags(ctx: &TcContext, ip: &Ipv4) -> Result<u8, DropReason> {
    if ip.proto != IPPROTO_TCP {
        return Ok(0);
    }
    ctx.load::<u8>(ip.l4_off + 13).map_err(|_| DropReason::Malformed)
}

/// One outbound packet's connection as masquerade sees it (in `Scratch`, passed by reference:
/// a BPF call takes at most five arguments, and the stack is scarce).
#[repr(C)]
struct Conn {
    saddr: u32,
    daddr: u32,
    node: u32,
    now: u32,
    sport_be: u16,
    dport_be: u16,
    proto: u8,
    flags: u8,
}

impl Conn {
    #[inline(always)]
    fn fwd_key(&self) -> NatKey {
        NatKey::new(
            Addr16::from_v4_be(self.saddr),
            Addr16::from_v4_be(self.daddr),
            self.sport_be,
            self.dport_be,
            self.proto,
        )
    }

    #[inline(always)]
    fn rev_key(&self, port_be: u16) -> NatKey {
        NatKey::new(Addr16::from_v4_be(self.daddr), Addr16::from_v4_be(self.node), self.dport_be, port_be, self.proto)
    }

    #[inline(always)]
    fn write_fwd_key(&self, k: &mut NatKey) {
        k.saddr = Addr16::from_v4_be(self.saddr);
        k.daddr = Addr16::from_v4_be(self.daddr);
        k.sport_be = self.sport_be;
        k.dport_be = self.dport_be;
        k.proto = self.proto;
        k._pad = [0; 3];
    }

    /// A bare SYN: the first packet of a new TCP connection.
    #[inline(always)]
    fn syn(&self) -> bool {
        self.flags & (nat_state::TCP_SYN | nat_state::TCP_ACK) == nat_state::TCP_SYN
    }
}

/// The port the connection already has, if its forward entry exists and the port's reverse
/// entry still points back to it (refreshing the reverse entry's time and state); else 0.
#[inline(never)]
fn known_port(c: &Conn) -> u16 {
    // SAFETY: read-only lookup of a plain-data value.
    let Some(port_be) = (unsafe { WEIR_NAT_FWD.get(c.fwd_key()) }).map(|e| e.port_be) else {
        return 0;
    };
    let Some(r) = WEIR_NAT_REV.get_ptr_mut(c.rev_key(port_be)) else {
        return 0;
    };
    // SAFETY: the map's value; concurrent updates of these plain fields only race on which
    // timestamp or state bit lands first.
    let r = unsafe { &mut *r };
    if r.addr.v4_be() != c.saddr || r.port_be != c.sport_be {
        return 0;
    }
    let mut state = r.state;
    if c.syn() && nat_state::closed(state) {
        // The same tuple opens a new connection over a closed one.
        state = 0;
    }
    state |= nat_state::from_flags(c.flags, true);
    if state != r.state {
        r.state = state;
    }
    if r.seen != c.now {
        r.seen = c.now;
    }
    port_be
}

/// Claiming's map keys and value, in per-CPU map memory (`WEIR_NAT_SCR`) rather than on the
/// stack: the reverse key being probed, the forward key (the old connection's while taking a
/// port over, then this one's), and this connection's reverse entry.
#[repr(C)]
pub struct Scratch {
    conn: Conn,
    rev: NatKey,
    fwd: NatKey,
    back: NatEntry,
}

/// Whether `port_be` is now the connection's: free (its reverse entry inserted with
/// `BPF_NOEXIST`), or its connection is over (taken over, the old forward entry deleted).
// Keys and values are passed as references into `Scratch` on purpose: by value they would be
// copied onto the stack this memory exists to spare.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(never)]
fn try_port(s: &mut Scratch, port_be: u16) -> bool {
    let (daddr, node, dport_be, proto) = (s.conn.daddr, s.conn.node, s.conn.dport_be, s.conn.proto);
    s.rev.saddr = Addr16::from_v4_be(daddr);
    s.rev.daddr = Addr16::from_v4_be(node);
    s.rev.sport_be = dport_be;
    s.rev.dport_be = port_be;
    s.rev.proto = proto;
    s.rev._pad = [0; 3];
    if WEIR_NAT_REV.insert(&s.rev, &s.back, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    // SAFETY: read-only lookup of a plain-data value.
    let Some(old) = (unsafe { WEIR_NAT_REV.get(&s.rev) }) else {
        return false;
    };
    if !nat_state::expired(proto, old.state, old.seen, s.conn.now, s.conn.syn()) {
        return false;
    }
    // The old connection is over: its forward entry goes, so it can never send with this port
    // again, and the port is this connection's.
    s.fwd.saddr = old.addr;
    s.fwd.daddr = Addr16::from_v4_be(daddr);
    s.fwd.sport_be = old.port_be;
    s.fwd.dport_be = dport_be;
    s.fwd.proto = proto;
    s.fwd._pad = [0; 3];
    let _ = WEIR_NAT_FWD.remove(&s.fwd);
    WEIR_NAT_REV.insert(&s.rev, &s.back, BPF_ANY as u64).is_ok()
}

/// Claims a node port for the connection: a free one (by inserting its reverse entry with
/// `BPF_NOEXIST`), else one whose connection is over, taken over with its old forward entry
/// deleted; then records the forward entry. Returns the port in network order, or 0 when every
/// probe was live.
// Keys and values are passed as references into `Scratch` on purpose: by value they would be
// copied onto the stack this memory exists to spare.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(never)]
fn claim(s: &mut Scratch) -> u16 {
    let min = WEIR_NAT_PORT_MIN.load();
    let span = WEIR_NAT_PORT_MAX.load().saturating_sub(min) + 1;
    // The forward key is written in place (a whole key built first would be a temporary on the
    // stack) and hashed where it lies.
    let Scratch { conn, fwd, .. } = s;
    conn.write_fwd_key(fwd);
    let h = hash(fwd, false);
    s.back.addr = Addr16::from_v4_be(s.conn.saddr);
    s.back.port_be = s.conn.sport_be;
    s.back.state = nat_state::from_flags(s.conn.flags, true);
    s.back._pad = 0;
    s.back.seen = s.conn.now;
    let mut claimed = 0;
    for i in 0..PORT_PROBES {
        // checked_rem: no divide-by-zero panic path for the verifier to reject.
        let Some(off) = h.wrapping_add(i.wrapping_mul(40503)).checked_rem(span) else {
            break;
        };
        let port_be = ((min + off) as u16).to_be();
        if try_port(s, port_be) {
            claimed = port_be;
            break;
        }
    }
    if claimed != 0 {
        // `try_port` may have used the forward key for the connection it took the port from.
        let Scratch { conn, fwd, .. } = s;
        conn.write_fwd_key(fwd);
        s.back.addr = Addr16::from_v4_be(s.conn.node);
        s.back.port_be = claimed;
        s.back.state = 0;
        s.back.seen = 0;
        if WEIR_NAT_FWD.insert(&s.fwd, &s.back, BPF_ANY as u64).is_err() {
            return 0;
        }
    }
    claimed
}

/// Translate the source of an outbound packet to `node_be` and a claimed port.
#[inline(never)]
pub fn masquerade(ctx: &TcContext, ip: &Ipv4, node_be: u32) -> Result<(), DropReason> {
    if ip.fragment {
        return Err(DropReason::Fragmented);
    }
    let l4 = l4_layout(ctx, ip, true)?;
    let icmp = ip.proto == IPPROTO_ICMP;
    let sport = load_port(ctx, l4.sport_off, false)?;
    let dport = load_port(ctx, l4.dport_off, icmp)?;
    let Some(s) = WEIR_NAT_SCR.get_ptr_mut(0) else {
        return Err(DropReason::NatPortsExhausted);
    };
    // SAFETY: this CPU's element; a program runs to completion on its CPU before another
    // packet uses it.
    let s = unsafe { &mut *s };
    s.conn = Conn {
        saddr: ip.saddr,
        daddr: ip.daddr,
        node: node_be,
        now: now_secs(),
        sport_be: sport,
        dport_be: dport,
        proto: ip.proto,
        flags: tcp_flags(ctx, ip)?,
    };
    let mut new_port = known_port(&s.conn);
    if new_port == 0 {
        new_port = claim(s);
        if new_port == 0 {
            return Err(DropReason::NatPortsExhausted);
        }
    }
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
/// leave it alone. Not inlined, to keep its keys off the caller's stack frame (the verifier caps
/// the combined depth).
#[inline(never)]
pub fn reverse(ctx: &TcContext, ip: &Ipv4) -> Result<MaybeAddr, DropReason> {
    if ip.fragment {
        return Ok(MaybeAddr::NONE);
    }
    let l4 = match l4_layout(ctx, ip, false) {
        Ok(l4) => l4,
        Err(_) => return Ok(MaybeAddr::NONE),
    };
    let icmp = ip.proto == IPPROTO_ICMP;
    let sport = load_port(ctx, l4.sport_off, icmp)?;
    let dport = load_port(ctx, l4.dport_off, false)?;
    let key = NatKey::new(Addr16::from_v4_be(ip.saddr), Addr16::from_v4_be(ip.daddr), sport, dport, ip.proto);
    let Some(back) = WEIR_NAT_REV.get_ptr_mut(key) else {
        return Ok(MaybeAddr::NONE);
    };
    // SAFETY: the map's value (see `masquerade`).
    let back = unsafe { &mut *back };
    let flags = tcp_flags(ctx, ip)?;
    let state = back.state | nat_state::REPLIED | nat_state::from_flags(flags, false);
    if state != back.state {
        back.state = state;
    }
    let now = now_secs();
    if back.seen != now {
        back.seen = now;
    }
    let back = *back;
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
    Ok(MaybeAddr::some(pod))
}
