//! Manifests and Kubernetes objects (YAML or the API's JSON): parsed, turned into a cluster
//! snapshot and this node's desired state without a panic, whatever a tenant wrote.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_operator_agent::{source::manifest, state};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = manifest::parse(text, "fuzz");
    if let Ok(snap) = manifest::snapshot_of(text, "fuzz") {
        let _ = state::desired(&snap, "n1");
    }
});
