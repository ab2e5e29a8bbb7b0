//! The per-CPU counters (`WEIR_COUNTERS`): drop reasons and forwarding outcomes, indexed as
//! `weir_bpf_common` declares them (`DropReason`, `counters`). Everything that counts comes here,
//! so reporting a drop (`drop`) and reporting a flow (`flow`) need not import each other.
use crate::WEIR_COUNTERS;

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = WEIR_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; no other writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}
