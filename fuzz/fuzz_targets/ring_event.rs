//! Ring-buffer records from the datapath, decoded and turned into flows (drop reasons, flags,
//! DNS payloads of any length and content a pod put on the wire) as the agent ingests them:
//! never a panic.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use weir_operator_agent::{observe::flows::Ingest, serve::metrics::Metrics};

fuzz_target!(|data: &[u8]| {
    let Some(ev) = weir_dataplane::events::Event::decode(data) else { return };
    let mut ingest = Ingest::new("n1".into(), Default::default(), Arc::new(Metrics::default()));
    let _ = ingest.flow(&ev);
});
