//! Flow filters as the CLI and the observer API send them: validated, and matched against
//! flows, without a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_operator_api::flow::{Flow, FlowFilter};

fuzz_target!(|data: &[u8]| {
    let Ok(filter) = serde_json::from_slice::<FlowFilter>(data) else { return };
    for c in filter.include.iter().chain(&filter.exclude) {
        let _ = c.validate();
    }
    let mut flow = Flow::default();
    let _ = filter.matches(&flow);
    flow.ip.source = "10.244.1.2".into();
    flow.ip.destination = "10.96.0.10".into();
    flow.verdict = weir_operator_api::flow::Verdict::Forwarded;
    let _ = filter.matches(&flow);
});
