//! Ring-buffer records from the datapath (drop reasons, flags, DNS, HTTP and HTTP/2 payloads
//! of any length and content a pod put on the wire, lengths a record should not hold), read in
//! place and turned into flows as the agent's reader does: never a panic.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use weir_dataplane::events::EventRef;
use weir_operator_agent::{observe::flows::Ingest, serve::metrics::Metrics};

fuzz_target!(|data: &[u8]| {
    // 8-byte aligned, as the ring's records are.
    let mut words = vec![0u64; data.len().div_ceil(8)];
    // SAFETY: the byte view of `words`, which holds at least data.len() bytes.
    let aligned = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), data.len()) };
    aligned.copy_from_slice(data);
    let Some(ev) = EventRef::decode(aligned) else { return };
    let mut ingest = Ingest::new("n1".into(), Default::default(), Arc::new(Metrics::default()));
    let mut out = Vec::new();
    ingest.flows_of(ev, &mut out);
});
