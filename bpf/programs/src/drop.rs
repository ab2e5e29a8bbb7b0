//! Drops and counters: every drop is counted per reason and reported on the ring buffer; a
//! report that does not fit is counted as lost, never silently discarded.
use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use weir_bpf_common::{counters, Addr16, DatapathEvent, DropReason, EVENT_DROP};

use crate::{
    parse::{IP_DADDR_OFF, IP_SADDR_OFF},
    WEIR_COUNTERS, WEIR_EVENTS,
};

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = WEIR_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; no other writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn shot(ctx: &TcContext, reason: DropReason) -> i32 {
    count(reason as u32);
    match WEIR_EVENTS.reserve::<DatapathEvent>(0) {
        Some(mut slot) => {
            let ev = DatapathEvent {
                saddr: Addr16::from_v4_be(ctx.load::<u32>(IP_SADDR_OFF).unwrap_or(0)),
                daddr: Addr16::from_v4_be(ctx.load::<u32>(IP_DADDR_OFF).unwrap_or(0)),
                // SAFETY: the context pointer is valid for the whole program run.
                ifindex: unsafe { (*ctx.skb.skb).ifindex },
                sport_be: 0,
                dport_be: 0,
                kind: EVENT_DROP,
                reason: reason as u8,
                proto: 0,
                _pad: [0; 5],
            };
            slot.write(ev);
            slot.submit(0);
        }
        None => count(counters::EVENTS_LOST),
    }
    TC_ACT_SHOT
}
