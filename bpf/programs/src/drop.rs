//! Drops: every drop is counted per reason (`counter`) and reported on the ring buffer; a report
//! that does not fit is counted as lost, never silently discarded.
use aya_ebpf::{bindings::TC_ACT_SHOT, helpers::bpf_ktime_get_ns, programs::TcContext};
use weir_bpf_common::{counters, Addr16, DatapathEvent, DropReason, EVENT_DROP, OBS_UNKNOWN};

use crate::{
    counter::count,
    parse::{Ipv4, IP_DADDR_OFF, IP_SADDR_OFF},
    WEIR_EVENTS,
};

#[inline(always)]
pub fn shot(ctx: &TcContext, reason: DropReason) -> i32 {
    count(reason as u32);
    report(ctx, reason as u32);
    TC_ACT_SHOT
}

/// Puts a drop on the ring buffer with what can be read of the packet's tuple.
#[inline(never)]
fn report(ctx: &TcContext, reason: u32) {
    let Some(mut slot) = WEIR_EVENTS.reserve::<DatapathEvent>(0) else {
        count(counters::EVENTS_LOST);
        return;
    };
    // The tuple as flow reports carry it (a packet too short for one reports zeroes).
    let (proto, (sport_be, dport_be, tcp_flags, _)) = match Ipv4::parse(ctx) {
        Ok(ip) => (ip.proto, crate::flow::l4(ctx, &ip)),
        Err(_) => (0, (0, 0, 0, 0)),
    };
    slot.write(DatapathEvent {
        saddr: Addr16::from_v4_be(ctx.load::<u32>(IP_SADDR_OFF).unwrap_or(0)),
        daddr: Addr16::from_v4_be(ctx.load::<u32>(IP_DADDR_OFF).unwrap_or(0)),
        packets: 1,
        bytes: ctx.len() as u64,
        // SAFETY: a helper without arguments.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: the context pointer is valid for the whole program run.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        sport_be,
        dport_be,
        kind: EVENT_DROP,
        reason: reason as u8,
        proto,
        point: OBS_UNKNOWN,
        tcp_flags,
        flags: 0,
        svc_port_be: 0,
        svc_addr: Addr16 { bytes: [0; 16] },
        proc_tgid: 0,
        proc_comm: [0; 16],
        _pad: [0; 4],
    });
    slot.submit(crate::flow::submit_flags(core::mem::size_of::<DatapathEvent>()));
}
