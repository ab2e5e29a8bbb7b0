//! DNS messages a pod sends or receives (compression pointers, truncation, counts that lie):
//! parsed or refused, never a panic or a loop.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = weir_operator_agent::observe::dns::parse(data);
});
