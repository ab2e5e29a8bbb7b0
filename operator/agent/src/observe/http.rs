//! HTTP/1.x from the starts of messages the datapath copies (`EVENT_HTTP`): parsed with
//! `httparse`, requests paired with their responses per connection for latency.
//!
//! The datapath copies the first `PAYLOAD_CAPTURE` bytes of every TCP segment that begins a
//! request or a response on a connection whose first payload did. From that:
//! * a request gives its method, path (query string removed, at most [`PATH_MAX`] bytes) and
//!   Host (when it is within the copy and looks like a host name);
//! * a response gives its status code, its request (the oldest one of its connection still
//!   waiting: HTTP/1.x answers in order, keep-alive and pipelining alike) and the latency from
//!   that request to it. A response with no request waiting is reported without one and
//!   counted, never paired with a guess;
//! * several messages in one segment (pipelining) are all read when their heads and
//!   `Content-Length` bodies lie within the copy; reading stops at the first that does not.
//!
//! Waiting requests are bounded ([`PENDING_CONNS`] connections, [`PENDING_PER_CONN`] each) and
//! expire after [`PENDING_TTL_NS`]; every request dropped without its response is counted
//! (`unanswered`), as is every segment that looked like HTTP but did not parse.
use std::{collections::VecDeque, mem::MaybeUninit, net::IpAddr};

use super::bounded::Bounded;

/// Bytes of a URL path kept (longer paths are cut at a character boundary).
pub const PATH_MAX: usize = 256;
/// Bytes of a Host header kept; a longer one is not used.
pub const HOST_MAX: usize = 253;
/// Connections with requests waiting for a response, at most (the oldest is dropped beyond).
pub const PENDING_CONNS: usize = 16384;
/// Requests waiting on one connection, at most (pipelining depth).
pub const PENDING_PER_CONN: usize = 64;
/// A request unanswered this long is dropped (counted as unanswered).
pub const PENDING_TTL_NS: u64 = 120_000_000_000;

/// One HTTP message start as parsed, borrowing the copied segment: nothing is allocated for a
/// message until a record of it is made ([`clean_path`], [`method`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// `path` as sent (query string included: [`clean_path`] makes the record's); `host` when
    /// within the copy and shaped like a host name.
    Request {
        method: &'a str,
        path: &'a str,
        host: Option<&'a str>,
        version: Option<u8>,
    },
    Response {
        code: u16,
        version: Option<u8>,
    },
}

/// A request method as kept while its response is awaited: the standard ones without an
/// allocation.
pub type Method = std::borrow::Cow<'static, str>;

/// `m` as a [`Method`]: a standard method (as sent: case kept) borrowed, anything else copied.
pub fn method(m: &str) -> Method {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    match KNOWN.iter().find(|k| **k == m) {
        Some(k) => Method::Borrowed(k),
        None => Method::Owned(m.to_owned()),
    }
}

/// `HTTP/1.0`, `HTTP/1.1`, or `HTTP/1` when the version was cut off.
pub fn protocol(version: Option<u8>) -> String {
    match version {
        Some(v) => format!("HTTP/1.{v}"),
        None => "HTTP/1".into(),
    }
}

/// Every message whose start lies in `data` (a copied segment start), in order. `Err` when the
/// first one does not parse.
pub fn parse(data: &[u8]) -> Result<Vec<Message<'_>>, httparse::Error> {
    let mut out = Vec::with_capacity(1);
    parse_each(data, |m| out.push(m))?;
    Ok(out)
}

/// [`parse`] handing each message to `f` as it is read, allocating nothing (the agent's path:
/// one call per copied segment). `Err`, before any call of `f`, when the first message does
/// not parse.
pub fn parse_each<'a>(data: &'a [u8], mut f: impl FnMut(Message<'a>)) -> Result<(), httparse::Error> {
    let mut at = 0;
    let mut first = true;
    while at < data.len() {
        let rest = &data[at..];
        let step = if rest.starts_with(b"HTTP/") { response(rest) } else { request(rest) };
        match step {
            Ok((m, next)) => {
                f(m);
                first = false;
                match next {
                    Some(n) if n > 0 => at += n,
                    _ => break,
                }
            }
            Err(e) if first => return Err(e),
            Err(_) => break,
        }
    }
    Ok(())
}

/// Room for a message's headers, left uninitialised: httparse writes the ones it finds (zeroing
/// 64 headers, 2 KiB, per message cost more than parsing a small one).
type Headers<'b> = [MaybeUninit<httparse::Header<'b>>; 64];

fn headers<'b>() -> Headers<'b> {
    [const { MaybeUninit::uninit() }; 64]
}

/// Where the next message starts after a complete head of `head_len` bytes with these
/// headers: after a `Content-Length` body, or right away without a body; `None` when the body's
/// end is not known (chunked, or no length).
fn next_start(head_len: usize, headers: &[httparse::Header<'_>], is_request: bool) -> Option<usize> {
    let header = |name: &str| headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    if header("transfer-encoding").is_some() {
        return None;
    }
    match header("content-length") {
        Some(v) => std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok().map(|n| head_len.saturating_add(n)),
        // A request without a length has no body; a response without one runs to the close.
        None if is_request => Some(head_len),
        None => None,
    }
}

fn request(data: &[u8]) -> Result<(Message<'_>, Option<usize>), httparse::Error> {
    let mut headers = headers();
    let mut req = httparse::Request::new(&mut []);
    let status = req.parse_with_uninit_headers(data, &mut headers)?;
    let (Some(method), Some(path)) = (req.method, req.path) else {
        // The request line itself did not fit the copy.
        return Err(httparse::Error::Token);
    };
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
        .filter(|h| !h.is_empty() && h.len() <= HOST_MAX && h.bytes().all(host_byte));
    let m = Message::Request { method, path, host, version: req.version };
    let next = match status {
        httparse::Status::Complete(n) => next_start(n, req.headers, true),
        httparse::Status::Partial => None,
    };
    Ok((m, next))
}

fn response(data: &[u8]) -> Result<(Message<'_>, Option<usize>), httparse::Error> {
    let mut headers = headers();
    let mut resp = httparse::Response::new(&mut []);
    let status = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, data, &mut headers)?;
    let Some(code) = resp.code else { return Err(httparse::Error::Status) };
    let m = Message::Response { code, version: resp.version };
    let next = match status {
        httparse::Status::Complete(n) => next_start(n, resp.headers, false),
        httparse::Status::Partial => None,
    };
    Ok((m, next))
}

/// Bytes a host name (or `host:port`, `[v6]:port`) may hold.
fn host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
}

/// The path without its query string or fragment, at most `PATH_MAX` bytes, printable ASCII
/// only (anything else is percent-encoded so a record never carries control characters).
pub fn clean_path(p: &str) -> String {
    let p = p.split(['?', '#']).next().unwrap_or("");
    escaped(p.as_bytes(), |b| (0x21..0x7f).contains(&b), PATH_MAX)
}

/// At most `max` bytes of `v`: the bytes `keep` accepts as they are, any other as `%XX`; cut
/// before the first byte (or escape) that would not fit whole. One allocation.
pub(crate) fn escaped(v: &[u8], keep: impl Fn(u8) -> bool, max: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(v.len().min(max));
    for &b in v {
        if keep(b) {
            if out.len() == max {
                break;
            }
            out.push(char::from(b));
        } else {
            if out.len() + 3 > max {
                break;
            }
            out.extend(['%', char::from(HEX[usize::from(b >> 4)]), char::from(HEX[usize::from(b & 15)])]);
        }
    }
    out
}

/// A connection as its client and server: (client address, client port, server address,
/// server port).
pub type Conn = (IpAddr, u16, IpAddr, u16);

/// A request waiting for its response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub ktime_ns: u64,
    pub method: Method,
    /// The request's URL when its exchange is recorded (its request record was kept, and its
    /// response's will be); `None` otherwise: most exchanges are only counted, and building a
    /// URL for each would cost more than counting it.
    pub url: Option<String>,
    /// This node counts the exchange in metrics (the client's node, or any node for a client
    /// outside the cluster): a cross-node exchange is seen on two nodes but counted once.
    pub counted_here: bool,
}

/// What happened to a request that leaves the table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Requests counted here that left without a response (expired, evicted, connection
    /// closed).
    pub unanswered: u64,
}

/// Requests waiting for their responses, per connection.
pub struct Pairing {
    conns: Bounded<Conn, VecDeque<Pending>>,
    /// Connections whose client half-closed with requests still waiting, oldest first (may
    /// name connections answered since): at most [`HALF_CLOSED`] are kept waiting; beyond,
    /// the oldest's requests are dropped as unanswered. A server whose replies this node does
    /// not see (a connection the node's own stack opened, such as a kubelet probe) never ends
    /// its side here, and its requests must not pile up until they push out live ones.
    half_closed: VecDeque<Conn>,
}

/// Half-closed connections whose requests wait at most (see [`Pairing`]).
pub const HALF_CLOSED: usize = 1024;

impl Default for Pairing {
    fn default() -> Self {
        Self { conns: Bounded::new(PENDING_CONNS), half_closed: VecDeque::new() }
    }
}

impl Pairing {
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Remembers a request; returns what had to be dropped to make room.
    pub fn request(&mut self, conn: Conn, p: Pending) -> Dropped {
        let mut dropped = Dropped::default();
        let q = self.conns.get_or_insert_with(conn, VecDeque::new);
        if q.len() >= PENDING_PER_CONN {
            dropped.unanswered += q.pop_front().map_or(0, |p| u64::from(p.counted_here));
        }
        q.push_back(p);
        self.conns.trim(|_, q| dropped.unanswered += counted(&q));
        dropped
    }

    /// The request a response at `now` answers: the oldest unexpired one of its connection.
    pub fn response(&mut self, conn: &Conn, now: u64) -> (Option<Pending>, Dropped) {
        let mut dropped = Dropped::default();
        let Some(q) = self.conns.get_mut(conn) else { return (None, dropped) };
        let mut found = None;
        while let Some(p) = q.pop_front() {
            if now.saturating_sub(p.ktime_ns) > PENDING_TTL_NS {
                dropped.unanswered += u64::from(p.counted_here);
                continue;
            }
            found = Some(p);
            break;
        }
        if q.is_empty() {
            self.conns.remove(conn);
        }
        (found, dropped)
    }

    /// The direction `from` → `to` of a connection ended: reset (RST) or finished (FIN). The
    /// requests waiting on it will not be answered once its server has ended its direction
    /// (or either end reset it); a client that only finished sending (a half-close after its
    /// request) may still get its responses.
    pub fn closed(&mut self, from: (IpAddr, u16), to: (IpAddr, u16), reset: bool) -> Dropped {
        let mut unanswered = 0;
        let from_server: Conn = (to.0, to.1, from.0, from.1);
        unanswered += self.conns.remove(&from_server).map_or(0, |q| counted(&q));
        let from_client: Conn = (from.0, from.1, to.0, to.1);
        if reset {
            unanswered += self.conns.remove(&from_client).map_or(0, |q| counted(&q));
        } else if self.conns.contains(&from_client) {
            self.half_closed.push_back(from_client);
            while self.half_closed.len() > HALF_CLOSED {
                let Some(old) = self.half_closed.pop_front() else { break };
                unanswered += self.conns.remove(&old).map_or(0, |q| counted(&q));
            }
        }
        Dropped { unanswered }
    }
}

fn counted(q: &VecDeque<Pending>) -> u64 {
    q.iter().filter(|p| p.counted_here).count() as u64
}

/// A request method as a metric label: the standard ones, else `OTHER` (bounded).
pub fn method_label(m: &str) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    KNOWN.iter().find(|k| k.eq_ignore_ascii_case(m)).copied().unwrap_or("OTHER")
}

/// `2xx` and so on.
pub fn status_class(code: u32) -> &'static str {
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn requests_and_responses_parse_with_their_fields() {
        let m = parse(b"GET /shop/items?id=7&x=y HTTP/1.1\r\nHost: web.shop\r\nAccept: */*\r\n\r\n").expect("request");
        assert_eq!(
            m,
            [Message::Request {
                method: "GET",
                path: "/shop/items?id=7&x=y",
                host: Some("web.shop"),
                version: Some(1)
            }]
        );
        assert_eq!(clean_path("/shop/items?id=7&x=y"), "/shop/items");
        let m = parse(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n").expect("response");
        assert_eq!(m, [Message::Response { code: 404, version: Some(0) }]);
        // Cut off inside the headers: the request line is enough; no Host seen.
        let m = parse(b"POST /a HTTP/1.1\r\nUser-Agent: x\r\nHo").expect("partial");
        assert!(matches!(&m[..], [Message::Request { method, host: None, .. }] if *method == "POST"));
        // Cut off inside the request line: not a request weir can name.
        assert!(parse(b"GET /very-long-path-without-end").is_err());
        assert!(parse(b"GET  HTTP/1.1\r\n\r\n").is_err());
        assert!(parse(b"\x00\x01binary").is_err());
    }

    #[test]
    fn hostile_fields_are_bounded_and_cleaned() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "p".repeat(400));
        let Message::Request { path, .. } = &parse(long.as_bytes()).expect("long")[0] else { panic!() };
        assert_eq!(clean_path(path).len(), PATH_MAX);
        // Cut where an escape would not fit whole.
        let escaped = format!("/{}\u{e9}", "p".repeat(PATH_MAX - 4));
        assert_eq!(clean_path(&escaped), format!("/{}%C3", "p".repeat(PATH_MAX - 4)));
        // A Host that is not a host name is not used; one with control characters is not
        // HTTP at all (refused, counted by the caller).
        let m = parse(b"GET / HTTP/1.1\r\nHost: evil name/<x>\r\n\r\n").expect("bad host");
        assert!(matches!(&m[0], Message::Request { host: None, .. }));
        assert!(parse(b"GET / HTTP/1.1\r\nHost: evil\x01\r\n\r\n").is_err());
        assert_eq!(clean_path("/a\u{e9}b c\x7f"), "/a%C3%A9b%20c%7F");
        // HTTP/2 header values: spaces kept, `%` escaped, cut before an escape that does not fit.
        let header_value = |b: u8| (0x20..0x7f).contains(&b) && b != b'%';
        assert_eq!(super::escaped(b"a b%\x01", header_value, 8), "a b%25");
        assert_eq!(super::escaped(b"abc", header_value, 2), "ab");
        // Standard methods are kept without a copy, others copied.
        assert!(matches!(method("GET"), Method::Borrowed("GET")));
        assert!(matches!(method("PROPFIND"), Method::Owned(m) if m == "PROPFIND"));
    }

    #[test]
    fn pipelined_messages_in_one_segment_are_all_read() {
        let two = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(parse(two).expect("two").len(), 2);
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n";
        let m = parse(resp).expect("two responses");
        assert_eq!(
            m,
            [Message::Response { code: 200, version: Some(1) }, Message::Response { code: 500, version: Some(1) }]
        );
        // A chunked body's end is unknown: reading stops after the first.
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(parse(chunked).expect("chunked").len(), 1);
    }

    fn pending(t: u64, path: &str) -> Pending {
        Pending { ktime_ns: t, method: method("GET"), url: Some(path.into()), counted_here: true }
    }

    #[test]
    fn responses_pair_in_order_per_connection() {
        let c: Conn = (Ipv4Addr::new(10, 0, 0, 1).into(), 40000, Ipv4Addr::new(10, 0, 0, 2).into(), 80);
        let other: Conn = (Ipv4Addr::new(10, 0, 0, 1).into(), 40001, Ipv4Addr::new(10, 0, 0, 2).into(), 80);
        let mut p = Pairing::default();
        p.request(c, pending(1, "/a"));
        p.request(c, pending(2, "/b"));
        p.request(other, pending(3, "/c"));
        assert_eq!(p.response(&c, 10).0.and_then(|r| r.url), Some("/a".into()));
        assert_eq!(p.response(&other, 10).0.and_then(|r| r.url), Some("/c".into()));
        assert_eq!(p.response(&c, 10).0.and_then(|r| r.url), Some("/b".into()));
        // Nothing waiting: no guess.
        assert_eq!(p.response(&c, 10).0, None);
        // Expired requests are counted, not paired.
        p.request(c, pending(1, "/old"));
        let (r, d) = p.response(&c, 1 + PENDING_TTL_NS + 1);
        assert_eq!((r, d.unanswered), (None, 1));
        // The client's FIN (a half-close after its request) leaves it waiting for its
        // response; the server's FIN drops what still waits, as does a reset either way.
        let (client, server) = ((c.0, c.1), (c.2, c.3));
        p.request(c, pending(5, "/x"));
        assert_eq!(p.closed(client, server, false).unanswered, 0);
        assert_eq!(p.response(&c, 6).0.and_then(|r| r.url), Some("/x".into()));
        p.request(c, pending(7, "/y"));
        assert_eq!(p.closed(server, client, false).unanswered, 1);
        assert!(p.is_empty());
        p.request(c, pending(8, "/z"));
        assert_eq!(p.closed(client, server, true).unanswered, 1);
        assert!(p.is_empty());
        // Half-closed clients whose server never answers nor ends (its side unseen here) are
        // bounded: beyond HALF_CLOSED the oldest's requests are dropped, counted.
        let mut dropped = 0;
        for port in 0..HALF_CLOSED as u16 + 2 {
            let k: Conn = (c.0, port, c.2, c.3);
            p.request(k, pending(9, "/probe"));
            dropped += p.closed((k.0, k.1), (k.2, k.3), false).unanswered;
        }
        assert_eq!((dropped, p.len()), (2, HALF_CLOSED));
    }

    #[test]
    fn waiting_requests_are_bounded() {
        let mut p = Pairing::default();
        let c: Conn = (Ipv4Addr::new(10, 0, 0, 1).into(), 1, Ipv4Addr::new(10, 0, 0, 2).into(), 80);
        let mut lost = 0;
        for i in 0..(PENDING_PER_CONN as u64 + 5) {
            lost += p.request(c, pending(i, "/")).unanswered;
        }
        assert_eq!(lost, 5);
        for port in 0..(PENDING_CONNS as u32 + 10) {
            let c: Conn = (Ipv4Addr::from(port).into(), 1, Ipv4Addr::new(10, 0, 0, 2).into(), 80);
            lost += p.request(c, pending(0, "/")).unanswered;
        }
        assert!(p.len() <= PENDING_CONNS);
        assert!(lost >= 5 + 10, "{lost}");
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_label("get"), "GET");
        assert_eq!(method_label("BREW"), "OTHER");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(0), "other");
    }
}
