//! A GetFlows request as a hostile client of the observer API sends it, raw bytes: the strict
//! codec's check, prost's decode, the filters and the field mask compiled, and the mask applied
//! to a flow — without a panic, and a mask never adding a field.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use weir_operator_agent::observe::{
    grpc::{proto, to_proto, Selection},
    mask::FieldMask,
    strict::Strict as _,
};
use weir_operator_api::flow::{Flow, Verdict};

fuzz_target!(|data: &[u8]| {
    if proto::observer::GetFlowsRequest::check(data).is_err() {
        return;
    }
    let Ok(req) = proto::observer::GetFlowsRequest::decode(data) else { return };
    let mut flow = Flow::default();
    flow.ip.source = "10.244.1.2".into();
    flow.ip.destination = "10.244.2.3".into();
    flow.verdict = Verdict::Dropped;
    std::sync::Arc::make_mut(&mut flow.source).pod_name = "client".into();
    flow.node_name = "n1".into();
    if let Ok(selection) = Selection::compile(&req) {
        let _ = selection.selected(&flow);
    }
    let paths = req.field_mask.map(|m| m.paths).unwrap_or_default();
    if let Ok(Some(mask)) = FieldMask::compile(&paths) {
        let whole = to_proto(&flow);
        let cut = mask.apply(&whole);
        // Nothing the flow did not have, and never larger.
        assert!(cut.encoded_len() <= whole.encoded_len());
    }
});
