//! HTTP/1.x message starts a pod sends or receives (truncated heads, lying Content-Lengths,
//! pipelined messages, bytes that are not HTTP at all): parsed or refused, never a panic or a
//! loop; then paired as the agent pairs them, whatever order requests and responses come in.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use weir_operator_agent::observe::http::{parse, Message, Pairing, Pending};

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = parse(data) else { return };
    let conn = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 40000, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 80);
    let mut p = Pairing::default();
    for (t, m) in messages.into_iter().enumerate() {
        match m {
            Message::Request { method, path, .. } => {
                assert!(path.len() <= weir_operator_agent::observe::http::PATH_MAX);
                let _ = p.request(conn, Pending { ktime_ns: t as u64, method, url: path, counted_here: true });
            }
            Message::Response { .. } => {
                let _ = p.response(&conn, t as u64);
            }
        }
    }
});
