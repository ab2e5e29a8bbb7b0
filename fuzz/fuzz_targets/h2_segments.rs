//! Segments of HTTP/2 connections as the datapath copies them (a hostile pod chooses every
//! byte, the order, the sequence numbers and how much of each segment was copied): frames cut
//! across segments, header blocks HPACK must refuse, table size updates, retransmissions, gaps.
//! Decoded or given up on (counted once per direction), never a panic, an unbounded table or a
//! loop; waiting streams stay within their bound.
//!
//! Input: a list of segments, each `[dir, seq_delta(2), seg_len(2), copied(2)]` then `copied`
//! bytes; `dir` bit 0 picks the client's or the server's direction.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use weir_operator_agent::observe::h2::{Connections, Exchange, Segment, PREFACE};

fuzz_target!(|data: &[u8]| {
    let a = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 40000);
    let b = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 50051);
    let mut c = Connections::default();
    let mut seq = [0u32; 2];
    let mut rest = data;
    let mut out = Vec::new();
    let mut first = [true; 2];
    let mut lost = [0u32; 2];
    for t in 0u64.. {
        let [dir, d0, d1, l0, l1, c0, c1, tail @ ..] = rest else { break };
        let d = usize::from(dir & 1);
        let copied = usize::from(u16::from_le_bytes([*c0, *c1])).min(tail.len()).min(512);
        let mut bytes = tail[..copied].to_vec();
        rest = &tail[copied..];
        // The client's first segment usually carries the preface: let the fuzzer skip it.
        if d == 0 && first[0] && dir & 2 != 0 {
            bytes.splice(0..0, PREFACE.iter().copied());
        }
        first[d] = false;
        let seg_len = usize::from(u16::from_le_bytes([*l0, *l1])).max(bytes.len());
        seq[d] = seq[d].wrapping_add(u32::from(u16::from_le_bytes([*d0, *d1])));
        let ends = if d == 0 { (a, b) } else { (b, a) };
        let s = Segment { ends, seq: seq[d], seg_len, data: &bytes, now_ns: t, counted_here: true };
        out.clear();
        c.segment(&s, &mut out);
        for x in &out {
            if let Exchange::Lost(_) = x {
                lost[d] += 1;
            }
        }
        seq[d] = seq[d].wrapping_add(seg_len as u32);
    }
    // A direction is given up on at most once; one connection is followed.
    assert!(lost[0] <= 1 && lost[1] <= 1, "{lost:?}");
    assert!(c.len() <= 1);
});
