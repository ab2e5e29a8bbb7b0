//! HTTP/1.x message starts a pod sends or receives (truncated heads, lying Content-Lengths,
//! pipelined messages, bytes that are not HTTP at all): parsed or refused, never a panic or a
//! loop; then paired as the agent pairs them, whatever order requests and responses come in.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use weir_operator_agent::observe::http::{clean_path, method, parse, Message, Pairing, Pending, PATH_MAX};

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = parse(data) else { return };
    let conn = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 40000, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 80);
    let mut p = Pairing::default();
    for (t, m) in messages.into_iter().enumerate() {
        match m {
            Message::Request { method: m, path, .. } => {
                let path = clean_path(path);
                assert!(path.len() <= PATH_MAX && path.bytes().all(|b| (0x21..0x7f).contains(&b)));
                let pending = Pending { ktime_ns: t as u64, method: method(m), url: Some(path), counted_here: true };
                let _ = p.request(conn, pending);
            }
            Message::Response { .. } => {
                let _ = p.response(&conn, t as u64);
            }
        }
    }
});
