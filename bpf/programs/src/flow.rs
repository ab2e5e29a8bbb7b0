//! Flow and DNS observability, from the programs that forward the packets.
//!
//! Flows are aggregated in the kernel: `WEIR_FLOWS` keeps one entry per direction of a
//! connection and observation point, and the ring buffer gets an event only when a flow starts
//! (`EVENT_FLOW_NEW`), when TCP closes it (FIN or RST: `EVENT_FLOW_CLOSE`) and at most every
//! `FLOW_REPORT_NS` while it keeps sending (`EVENT_FLOW_UPDATE`), not one per packet. DNS
//! messages (UDP or TCP port 53) are copied to the ring buffer whole, up to `DNS_CAPTURE` bytes,
//! for the agent to parse: no proxy, whatever server the pod asks. Every event that does not fit
//! the ring buffer is counted (`counters::EVENTS_LOST`), never dropped silently.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use weir_bpf_common::{
    counters, settings, Addr16, DatapathEvent, DnsEvent, FlowKey, FlowStats, DNS_CAPTURE, EVENT_DNS, EVENT_FLOW_CLOSE,
    EVENT_FLOW_NEW, EVENT_FLOW_UPDATE, FLOW_F_REPLY, FLOW_REPORT_NS, OBS_FROM_POD, OBS_TO_POD,
};

use crate::{
    drop,
    parse::{Ipv4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    WEIR_EVENTS, WEIR_FLOWS, WEIR_SETTINGS,
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const DNS_PORT_BE: u16 = 53u16.to_be();

/// Ports (TCP/UDP; ICMP: type and code as the source port, echo id as the destination port),
/// TCP flags and the offset of the payload. Fragments have no ports.
#[inline(always)]
pub fn l4(ctx: &TcContext, ip: &Ipv4) -> (u16, u16, u8, usize) {
    if ip.fragment {
        return (0, 0, 0, 0);
    }
    match ip.proto {
        IPPROTO_TCP => {
            let s = ctx.load::<u16>(ip.l4_off).unwrap_or(0);
            let d = ctx.load::<u16>(ip.l4_off + 2).unwrap_or(0);
            let doff = ctx.load::<u8>(ip.l4_off + 12).unwrap_or(0) as usize >> 4;
            let flags = ctx.load::<u8>(ip.l4_off + 13).unwrap_or(0);
            (s, d, flags, ip.l4_off + doff * 4)
        }
        IPPROTO_UDP => {
            let s = ctx.load::<u16>(ip.l4_off).unwrap_or(0);
            let d = ctx.load::<u16>(ip.l4_off + 2).unwrap_or(0);
            (s, d, 0, ip.l4_off + 8)
        }
        IPPROTO_ICMP => {
            let tc = ctx.load::<u16>(ip.l4_off).unwrap_or(0);
            let id = ctx.load::<u16>(ip.l4_off + 4).unwrap_or(0);
            (tc, id, 0, 0)
        }
        _ => (0, 0, 0, 0),
    }
}

/// A flow's counters from its first packet.
#[inline(always)]
fn fresh(bytes: u64, now: u64, tcp_flags: u8) -> FlowStats {
    FlowStats {
        packets: 1,
        bytes,
        last_report_ns: now,
        tcp_flags,
        closed: u8::from(tcp_flags & (TCP_FIN | TCP_RST) != 0),
        _pad: [0; 6],
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn event(
    ctx: &TcContext,
    key: &FlowKey,
    now: u64,
    kind: u8,
    packets: u64,
    bytes: u64,
    tcp_flags: u8,
    flags: u8,
) -> DatapathEvent {
    DatapathEvent {
        saddr: Addr16::from_v4_be(key.saddr),
        daddr: Addr16::from_v4_be(key.daddr),
        packets,
        bytes,
        ktime_ns: now,
        // SAFETY: the context pointer is valid for the whole program run.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        sport_be: key.sport_be,
        dport_be: key.dport_be,
        kind,
        reason: 0,
        proto: key.proto,
        point: key.point,
        tcp_flags,
        flags,
        _pad: [0; 2],
    }
}

/// Wake the agent's reader once this much is waiting; below it, events wait for the reader's
/// next periodic drain (every 50 ms). A wakeup per event would cost a context switch per event.
const WAKEUP_BYTES: u64 = 32 * 1024;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Submit flags for a ring-buffer record: wake the reader only when enough is waiting.
#[inline(always)]
pub fn submit_flags() -> u64 {
    if WEIR_EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
fn emit(ev: DatapathEvent) {
    match WEIR_EVENTS.reserve::<DatapathEvent>(0) {
        Some(mut slot) => {
            slot.write(ev);
            slot.submit(submit_flags());
        }
        None => drop::count(counters::EVENTS_LOST),
    }
}

/// Records the packet in `ctx` (addresses as in `ip`) as seen at observation point `point`.
#[inline(never)]
pub fn observe(ctx: &TcContext, ip: &Ipv4, point: u8) {
    if WEIR_SETTINGS.get(settings::OBSERVE).copied().unwrap_or(0) == 0 {
        return;
    }
    let (sport_be, dport_be, tcp_flags, payload_off) = l4(ctx, ip);
    let key = FlowKey { saddr: ip.saddr, daddr: ip.daddr, sport_be, dport_be, proto: ip.proto, point, _pad: [0; 2] };
    let len = ctx.len() as u64;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the kernel gives a pointer to this CPU's view of the value, valid during the run.
    match WEIR_FLOWS.get_ptr_mut(key) {
        // A SYN on a closed flow's tuple is a new connection that reuses it: report it anew.
        Some(s) if unsafe { (*s).closed } != 0 && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN => {
            // SAFETY: as above.
            unsafe { *s = fresh(len, now, tcp_flags) };
            emit(event(ctx, &key, now, EVENT_FLOW_NEW, 1, len, tcp_flags, 0));
        }
        Some(s) => {
            // SAFETY: as above; a concurrent update on another CPU can only lose an increment.
            let s = unsafe { &mut *s };
            s.packets += 1;
            s.bytes += len;
            s.tcp_flags |= tcp_flags;
            if tcp_flags & (TCP_FIN | TCP_RST) != 0 && s.closed == 0 {
                s.closed = 1;
                emit(event(ctx, &key, now, EVENT_FLOW_CLOSE, s.packets, s.bytes, s.tcp_flags, 0));
            } else if now.wrapping_sub(s.last_report_ns) >= FLOW_REPORT_NS {
                s.last_report_ns = now;
                emit(event(ctx, &key, now, EVENT_FLOW_UPDATE, s.packets, s.bytes, s.tcp_flags, 0));
            }
        }
        None => {
            // A reply's reverse was seen first, at either point: leaving this pod's peer on this
            // node (from-pod) or arriving from another node (to-pod).
            let mut reverse = FlowKey {
                saddr: ip.daddr,
                daddr: ip.saddr,
                sport_be: dport_be,
                dport_be: sport_be,
                proto: ip.proto,
                point: OBS_FROM_POD,
                _pad: [0; 2],
            };
            // SAFETY: read-only lookups of plain-data values.
            let mut reply = unsafe { WEIR_FLOWS.get(reverse) }.is_some();
            if !reply {
                reverse.point = OBS_TO_POD;
                // SAFETY: as above.
                reply = unsafe { WEIR_FLOWS.get(reverse) }.is_some();
            }
            // ICMP keys are not symmetric; an echo reply is told by its type instead.
            reply |= ip.proto == IPPROTO_ICMP && sport_be == 0;
            // A lost insert (map full of live entries) only means the next packet reports again.
            let _ = WEIR_FLOWS.insert(key, fresh(len, now, tcp_flags), 0);
            emit(event(ctx, &key, now, EVENT_FLOW_NEW, 1, len, tcp_flags, if reply { FLOW_F_REPLY } else { 0 }));
        }
    }
    if (ip.proto == IPPROTO_UDP || ip.proto == IPPROTO_TCP)
        && (sport_be == DNS_PORT_BE || dport_be == DNS_PORT_BE)
        && payload_off != 0
    {
        dns(ctx, &key, now, payload_off, tcp_flags);
    }
}

/// Copies the DNS message in the packet's payload to the ring buffer.
#[inline(always)]
fn dns(ctx: &TcContext, key: &FlowKey, now: u64, payload_off: usize, tcp_flags: u8) {
    let total = ctx.len() as usize;
    if payload_off >= total {
        return; // a bare TCP segment (SYN, ACK, FIN): no message
    }
    let mut n = total - payload_off;
    if n > DNS_CAPTURE {
        n = DNS_CAPTURE;
    }
    // 1..=DNS_CAPTURE in a form the verifier can follow (DNS_CAPTURE is a power of two).
    let n = ((n - 1) & (DNS_CAPTURE - 1)) + 1;
    let Some(mut slot) = WEIR_EVENTS.reserve::<DnsEvent>(0) else {
        drop::count(counters::EVENTS_LOST);
        return;
    };
    let p = slot.as_mut_ptr();
    // SAFETY: `p` is the reserved record, sized for a DnsEvent, ours until submitted.
    unsafe {
        (*p).event = event(ctx, key, now, EVENT_DNS, 1, total as u64, tcp_flags, 0);
        (*p).len = n as u16;
        (*p).tcp = u8::from(key.proto == IPPROTO_TCP);
        (*p)._pad = [0; 5];
    }
    // SAFETY: as above; the copy is bounded by `data`'s size (n is 1..=DNS_CAPTURE).
    let copied = unsafe {
        bpf_skb_load_bytes(ctx.skb.skb as *const _, payload_off as u32, (*p).data.as_mut_ptr().cast(), n as u32)
    };
    if copied != 0 {
        // SAFETY: as above.
        unsafe { (*p).len = 0 };
    }
    slot.submit(submit_flags());
}
