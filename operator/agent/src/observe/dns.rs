//! DNS messages (RFC 1035) as the datapath captured them: header, question, and the A, AAAA
//! and CNAME answers. Input is untrusted bytes from any pod: every read is bounds-checked,
//! compression pointers may only point backwards and are followed a bounded number of times,
//! names are capped at 255 bytes, and a truncated message yields what was complete (a capture
//! holds at most the first `DNS_CAPTURE` bytes). Nothing here can panic or loop.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub response: bool,
    pub rcode: u8,
    /// The first question's name, with its trailing dot.
    pub name: String,
    pub qtype: u16,
    pub ips: Vec<IpAddr>,
    pub cnames: Vec<String>,
    /// Types of the answers read.
    pub rrtypes: Vec<u16>,
    /// The smallest TTL among the answers read.
    pub ttl: Option<u32>,
    /// The answer section ended before its count (capture or packet cut short).
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header.
    Short,
    /// No question, or a question that cannot be read.
    BadQuestion,
}

const MAX_NAME: usize = 255;
const MAX_JUMPS: usize = 32;
const MAX_ANSWERS: usize = 64;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?, *b.get(at + 3)?]))
}

/// Reads the name at `at`; returns it and the offset just after it (in the original position,
/// not after a pointer's target).
fn name(b: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *b.get(at)? as usize;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    if out.is_empty() {
                        out.push('.');
                    }
                    return Some((out, end.unwrap_or(at + 1)));
                }
                let label = b.get(at + 1..at + 1 + len)?;
                if out.len() + len + 1 > MAX_NAME {
                    return None;
                }
                for &c in label {
                    // Printable ASCII as is; anything else escaped like dig does (\DDD).
                    if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                        out.push(c as char);
                    } else {
                        out.push_str(&format!("\\{c:03}"));
                    }
                }
                out.push('.');
                at += 1 + len;
            }
            0xc0 => {
                let target = (u16_at(b, at)? & 0x3fff) as usize;
                // Only backwards: a pointer to itself or forward could loop.
                if target >= at || jumps == MAX_JUMPS {
                    return None;
                }
                jumps += 1;
                end.get_or_insert(at + 2);
                at = target;
            }
            _ => return None, // 0x40 / 0x80: extended label types, not used
        }
    }
}

pub fn parse(b: &[u8]) -> Result<Message, ParseError> {
    let id = u16_at(b, 0).ok_or(ParseError::Short)?;
    let flags = u16_at(b, 2).ok_or(ParseError::Short)?;
    let qd = u16_at(b, 4).ok_or(ParseError::Short)?;
    let an = u16_at(b, 6).ok_or(ParseError::Short)?;
    if b.len() < 12 {
        return Err(ParseError::Short);
    }
    if qd == 0 {
        return Err(ParseError::BadQuestion);
    }
    let (qname, mut at) = name(b, 12).ok_or(ParseError::BadQuestion)?;
    let qtype = u16_at(b, at).ok_or(ParseError::BadQuestion)?;
    at += 4;
    let mut m = Message {
        id,
        response: flags & 0x8000 != 0,
        rcode: (flags & 0x000f) as u8,
        name: qname,
        qtype,
        ..Default::default()
    };
    // Further questions (rare) are skipped.
    for _ in 1..qd {
        let Some((_, next)) = name(b, at) else {
            m.truncated = true;
            return Ok(m);
        };
        at = next + 4;
    }
    for _ in 0..usize::from(an).min(MAX_ANSWERS) {
        let Some((_, next)) = name(b, at) else {
            m.truncated = true;
            break;
        };
        let (Some(ty), Some(ttl), Some(rdlen)) = (u16_at(b, next), u32_at(b, next + 4), u16_at(b, next + 8)) else {
            m.truncated = true;
            break;
        };
        let rdata_at = next + 10;
        let Some(rdata) = b.get(rdata_at..rdata_at + usize::from(rdlen)) else {
            m.truncated = true;
            break;
        };
        match ty {
            TYPE_A if rdata.len() == 4 => m.ips.push(IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]))),
            TYPE_AAAA if rdata.len() == 16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(rdata);
                m.ips.push(IpAddr::V6(Ipv6Addr::from(o)));
            }
            TYPE_CNAME => {
                if let Some((c, _)) = name(b, rdata_at) {
                    m.cnames.push(c);
                }
            }
            _ => {}
        }
        m.rrtypes.push(ty);
        m.ttl = Some(m.ttl.map_or(ttl, |t| t.min(ttl)));
        at = rdata_at + usize::from(rdlen);
    }
    Ok(m)
}

/// Query type names for the common types; others as `TYPE<n>` (RFC 3597).
pub fn type_name(t: u16) -> String {
    match type_label(t) {
        "OTHER" => format!("TYPE{t}"),
        name => name.to_owned(),
    }
}

/// A bounded label for metrics: the common type names, else OTHER (any pod can send any type).
pub fn type_label(t: u16) -> &'static str {
    match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        65 => "HTTPS",
        255 => "ANY",
        _ => "OTHER",
    }
}

pub fn rcode_name(r: u8) -> &'static str {
    match r {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response for `web.lab.test` A: a CNAME to `srv.lab.test` (compressed) and an A record.
    fn response() -> Vec<u8> {
        let mut b = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        for l in ["web", "lab", "test"] {
            b.push(l.len() as u8);
            b.extend_from_slice(l.as_bytes());
        }
        b.extend_from_slice(&[0, 0, 1, 0, 1]);
        // answer 1: name → pointer to 12, CNAME, ttl 300, rdata "srv" + pointer to "lab.test" (16)
        b.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 1, 44, 0, 6, 3, b's', b'r', b'v', 0xc0, 16]);
        // answer 2: srv.lab.test (pointer to the rdata above, offset 42) A 10.9.8.7, ttl 60
        b.extend_from_slice(&[0xc0, 42, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 9, 8, 7]);
        b
    }

    #[test]
    fn reads_question_answers_and_ttl() {
        let m = parse(&response()).expect("parse");
        assert_eq!(m.id, 0x1234);
        assert!(m.response);
        assert_eq!(m.rcode, 0);
        assert_eq!(m.name, "web.lab.test.");
        assert_eq!(m.qtype, TYPE_A);
        assert_eq!(m.cnames, ["srv.lab.test."]);
        assert_eq!(m.ips, [IpAddr::V4(Ipv4Addr::new(10, 9, 8, 7))]);
        assert_eq!(m.ttl, Some(60));
        assert_eq!(m.rrtypes, [TYPE_CNAME, TYPE_A]);
        assert!(!m.truncated);
    }

    #[test]
    fn a_cut_message_keeps_what_was_complete() {
        let full = response();
        let m = parse(&full[..full.len() - 3]).expect("parse");
        assert_eq!(m.cnames, ["srv.lab.test."]);
        assert!(m.ips.is_empty());
        assert!(m.truncated);
        assert_eq!(parse(&full[..8]), Err(ParseError::Short));
        assert_eq!(parse(&full[..15]), Err(ParseError::BadQuestion));
    }

    #[test]
    fn pointer_loops_and_forward_pointers_are_refused() {
        // The question name points at itself.
        let b = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(parse(&b), Err(ParseError::BadQuestion));
        // Forward pointer.
        let b = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 14, 0, 0, 1, 0, 1];
        assert_eq!(parse(&b), Err(ParseError::BadQuestion));
        // Answer names that point back and forth between two pointers.
        let mut b = response();
        let n = b.len();
        b[n - 16] = 0xc0;
        b[n - 15] = (n - 16) as u8;
        assert!(parse(&b).expect("question is fine").truncated);
    }

    #[test]
    fn odd_labels_are_escaped_and_long_names_refused() {
        let mut b = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'a', b'.', 0xff, 0, 0, 1, 0, 1];
        assert_eq!(parse(&b).expect("parse").name, "a\\046\\255.");
        b.truncate(12);
        for _ in 0..5 {
            b.push(63);
            b.extend_from_slice(&[b'x'; 63]);
        }
        b.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse(&b), Err(ParseError::BadQuestion));
    }

    /// Fuzz: random bytes, and valid messages with random bytes changed, cut or extended. The
    /// parser must return (never panic, never hang) for all of them; each call is bounded by the
    /// input size and the jump limit, which the time of this test reflects.
    #[test]
    fn fuzz_never_panics_or_hangs() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let base = response();
        let start = std::time::Instant::now();
        for i in 0..200_000 {
            let mut b = if i % 3 == 0 {
                let n = (next() % 600) as usize;
                (0..n).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                base.clone()
            };
            for _ in 0..(next() % 6) {
                if !b.is_empty() {
                    let at = (next() as usize) % b.len();
                    b[at] = next() as u8;
                }
            }
            match next() % 4 {
                0 => b.truncate((next() as usize) % (b.len() + 1)),
                1 => b.extend((0..next() % 40).map(|_| next() as u8)),
                _ => {}
            }
            let _ = parse(&b);
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "parser too slow: {:?}", start.elapsed());
    }
}
