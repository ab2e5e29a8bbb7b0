//! The agent API's request decoding (one JSON line per request, from weir-cni and the CLI): any
//! line decodes or is refused without a panic, and what decodes re-encodes to the same request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weir_operator_api::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<Request>(data) {
        let again = serde_json::to_vec(&req).expect("encode");
        assert_eq!(serde_json::from_slice::<Request>(&again).expect("re-decode"), req);
    }
});
