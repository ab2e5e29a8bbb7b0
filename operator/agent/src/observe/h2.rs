//! HTTP/2 over cleartext (h2c) and gRPC, from the segments the datapath copies of a connection
//! whose first payload was the HTTP/2 client preface or a server's SETTINGS (`EVENT_H2`: every
//! segment's first `PAYLOAD_CAPTURE` bytes, its TCP sequence number and its length).
//!
//! Each direction of a connection is read as the byte stream it is: segments are put in order
//! by sequence number (a retransmission's bytes already read are skipped), frames are cut from
//! it, and every header block (HEADERS and CONTINUATION) is decoded with HPACK, whose dynamic
//! table is shared by all header blocks of a direction: one missed block would make every later
//! one decode wrong. So a direction is decoded only when it is known to be complete from its
//! start, and stops being decoded, for good and counted (`weir_http2_lost_total`), at the first
//! thing that breaks that ([`Lost`]): a connection whose start was not seen (the agent started
//! after it), a segment missing (a lost event), a frame header or header block beyond what the
//! datapath copies of a segment (a large DATA frame followed by more frames in one segment), a
//! header block HPACK refuses, a server push. What was decoded before stays; nothing after it
//! is guessed.
//!
//! Streams pair a request (the client's HEADERS) with its response: plain HTTP/2 answers with
//! the server's HEADERS (`:status`); gRPC (`content-type: application/grpc…`) ends with trailers
//! carrying `grpc-status` (or a Trailers-Only response that carries it at once). A reset stream
//! is not answered.
use std::{collections::BTreeMap, net::IpAddr};

use super::{bounded::Bounded, http::Conn};

/// Connections followed at most (the oldest is dropped beyond, its waiting streams counted).
pub const CONNS: usize = 1024;
/// Streams waiting for a response on one connection, at most (the oldest are dropped).
pub const STREAMS_PER_CONN: usize = 256;
/// HPACK dynamic table a direction may grow to (an encoder's size update beyond it stops the
/// direction, counted): the protocol's default, which an encoder keeps unless its peer asked for
/// more. With [`CONNS`] connections of two directions each, the tables a hostile pod can make
/// the agent hold stay within about 8 MiB.
pub const TABLE_MAX: usize = 4096;
/// Buffers larger than this are given back after use rather than kept for the next frame.
const KEEP_CAPACITY: usize = 1024;
/// A header block (HEADERS and its CONTINUATIONs) gathered at most.
pub const BLOCK_MAX: usize = 16384;
/// Bytes of a `grpc-message` kept.
pub const GRPC_MESSAGE_MAX: usize = 128;

/// What a client sends first on an HTTP/2 connection with prior knowledge (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types and flags (RFC 9113 §6).
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PUSH_PROMISE: u8 = 5;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

/// A frame header's fields: payload length, type, flags, stream.
pub fn parse_head(h: &[u8; 9]) -> (usize, u8, u8, u32) {
    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
    (len, h[3], h[4], u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff)
}

/// The header block fragment of a HEADERS frame's payload: without its padding and priority;
/// `None` when those do not fit the payload.
pub fn headers_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let (mut at, mut end) = (0, payload.len());
    if flags & PADDED != 0 {
        at = 1;
        end = end.checked_sub(usize::from(*payload.first()?))?;
    }
    if flags & PRIORITY != 0 {
        at += 5;
    }
    payload.get(at..end)
}

/// A frame: its header, then `payload` (at most 2^24 - 1 bytes).
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Why a direction of a connection stopped being decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// Its first bytes were not seen (the connection predates the agent or the observation).
    StartMissed,
    /// A segment between two seen ones is missing.
    Gap,
    /// A frame header or header block lies beyond the bytes copied of its segment.
    BeyondCapture,
    /// A header block larger than `BLOCK_MAX`.
    BlockTooLarge,
    /// HPACK refused a header block (or a table beyond `TABLE_MAX`).
    Hpack,
    /// A server push (its header block is not followed).
    PushPromise,
    /// Frames out of the protocol's order (a CONTINUATION without its HEADERS, or the like).
    Malformed,
}

impl Lost {
    pub fn label(self) -> &'static str {
        match self {
            Lost::StartMissed => "start_missed",
            Lost::Gap => "gap",
            Lost::BeyondCapture => "beyond_capture",
            Lost::BlockTooLarge => "block_too_large",
            Lost::Hpack => "hpack",
            Lost::PushPromise => "push_promise",
            Lost::Malformed => "malformed",
        }
    }
}

/// The header fields a record uses, from one decoded header block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub status: Option<u16>,
    pub content_type: String,
    pub grpc_status: Option<u32>,
    pub grpc_message: String,
}

impl Fields {
    fn set(&mut self, name: &[u8], value: &[u8]) {
        let text = || String::from_utf8_lossy(value).into_owned();
        match name {
            b":method" if value.len() <= 32 => self.method = printable(value, 32),
            b":path" => self.path = super::http::clean_path(&String::from_utf8_lossy(value)),
            b":authority" if value.len() <= super::http::HOST_MAX => self.authority = printable(value, 253),
            b":status" => self.status = text().parse().ok(),
            b"content-type" => self.content_type = printable(value, 64),
            b"grpc-status" => self.grpc_status = text().trim().parse().ok(),
            b"grpc-message" => self.grpc_message = printable(value, GRPC_MESSAGE_MAX),
            _ => {}
        }
    }

    pub fn is_grpc(&self) -> bool {
        self.content_type.starts_with("application/grpc")
    }
}

/// At most `max` bytes of `v`, with anything not printable ASCII (and `%` itself)
/// percent-encoded.
fn printable(v: &[u8], max: usize) -> String {
    super::http::escaped(v, |b| (0x20..0x7f).contains(&b) && b != b'%', max)
}

/// What one direction's segment held.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A complete header block of `stream`; `end_stream`: the sender's last frame on it.
    Headers { stream: u32, end_stream: bool, fields: Fields },
    /// The stream was reset by this direction's sender.
    Reset { stream: u32 },
    /// The direction stopped being decoded (once).
    Lost(Lost),
}

/// One direction of a connection, read as a byte stream.
pub struct Reader {
    /// Sequence number of the next byte expected; `None` before the first segment.
    next_seq: Option<u32>,
    /// The client's direction starts with the preface; the server's with a SETTINGS frame.
    client: bool,
    /// A frame header being gathered (it may straddle segments).
    head: [u8; 9],
    head_len: usize,
    /// Payload bytes of the current frame still to come, kept (`keep`) or skipped.
    body_left: usize,
    keep: bool,
    frame: (u8, u8, u32),
    payload: Vec<u8>,
    /// A header block being gathered: its stream and whether its HEADERS ended the stream.
    block: Vec<u8>,
    block_of: Option<(u32, bool)>,
    decoder: super::hpack::Decoder,
    lost: Option<Lost>,
}

impl Reader {
    pub fn new(client: bool) -> Self {
        let decoder = super::hpack::Decoder::new(TABLE_MAX);
        Self {
            next_seq: None,
            client,
            head: [0; 9],
            head_len: 0,
            body_left: 0,
            keep: false,
            frame: (0, 0, 0),
            payload: Vec::new(),
            block: Vec::new(),
            block_of: None,
            decoder,
            lost: None,
        }
    }

    pub fn lost(&self) -> Option<Lost> {
        self.lost
    }

    /// Whether any segment of this direction was read here (a connection the node's own stack
    /// opens to a pod shows only its client's direction: the pod's replies go back to the stack
    /// unobserved).
    pub fn seen(&self) -> bool {
        self.next_seq.is_some() || self.lost.is_some()
    }

    /// Whether this direction began where a connection begins (it has been decoded from its
    /// first byte and has not been lost since).
    pub fn whole(&self) -> bool {
        self.next_seq.is_some() && self.lost.is_none()
    }

    /// Reads a segment of `seg_len` payload bytes starting at sequence number `seq`, of which
    /// `data` (its first bytes, at most `seg_len`) was copied; appends what it held to `out`.
    pub fn segment(&mut self, seq: u32, seg_len: usize, data: &[u8], out: &mut Vec<Item>) {
        if self.lost.is_some() || seg_len == 0 {
            return;
        }
        let data = &data[..data.len().min(seg_len)];
        let mut pos = 0;
        match self.next_seq {
            None => {
                let start = if self.client {
                    data.starts_with(PREFACE)
                } else {
                    data.len() >= 9 && data[3] == SETTINGS && data[4] & 1 == 0 && data[5..9] == [0; 4]
                };
                if !start {
                    return self.lose(Lost::StartMissed, out);
                }
                if self.client {
                    pos = PREFACE.len();
                }
            }
            Some(next) => {
                let ahead = seq.wrapping_sub(next) as i32;
                if ahead > 0 {
                    return self.lose(Lost::Gap, out);
                }
                // Bytes already read (a retransmission): skipped.
                let behind = ahead.unsigned_abs() as usize;
                if behind >= seg_len {
                    return;
                }
                pos = behind;
            }
        }
        self.next_seq = Some(seq.wrapping_add(seg_len as u32));
        while pos < seg_len {
            if self.body_left > 0 {
                let n = self.body_left.min(seg_len - pos);
                if self.keep {
                    let Some(bytes) = data.get(pos..pos + n) else { return self.lose(Lost::BeyondCapture, out) };
                    self.payload.extend_from_slice(bytes);
                }
                pos += n;
                self.body_left -= n;
                if self.body_left == 0 {
                    if let Err(l) = self.frame_done(out) {
                        return self.lose(l, out);
                    }
                }
                continue;
            }
            let n = (9 - self.head_len).min(seg_len - pos);
            let Some(bytes) = data.get(pos..pos + n) else { return self.lose(Lost::BeyondCapture, out) };
            self.head[self.head_len..self.head_len + n].copy_from_slice(bytes);
            self.head_len += n;
            pos += n;
            if self.head_len == 9 {
                self.head_len = 0;
                if let Err(l) = self.frame_start(out) {
                    return self.lose(l, out);
                }
            }
        }
    }

    fn lose(&mut self, why: Lost, out: &mut Vec<Item>) {
        self.lost = Some(why);
        // What it held is no use any more.
        self.payload = Vec::new();
        self.block = Vec::new();
        out.push(Item::Lost(why));
    }

    fn frame_start(&mut self, out: &mut Vec<Item>) -> Result<(), Lost> {
        let (len, kind, flags, stream) = parse_head(&self.head);
        // A header block in progress continues with CONTINUATION frames only (RFC 9113 §6.10).
        if self.block_of.is_some() != (kind == CONTINUATION) {
            return Err(Lost::Malformed);
        }
        self.frame = (kind, flags, stream);
        self.keep = matches!(kind, HEADERS | CONTINUATION);
        self.body_left = len;
        match kind {
            HEADERS | CONTINUATION if len + self.block.len() > BLOCK_MAX => return Err(Lost::BlockTooLarge),
            PUSH_PROMISE => return Err(Lost::PushPromise),
            RST_STREAM if stream != 0 => out.push(Item::Reset { stream }),
            DATA | RST_STREAM | SETTINGS | HEADERS | CONTINUATION => {}
            // PRIORITY, PING, GOAWAY, WINDOW_UPDATE and unknown frames: skipped.
            _ => {}
        }
        self.payload.clear();
        if len == 0 {
            self.frame_done(out)?;
        }
        Ok(())
    }

    fn frame_done(&mut self, out: &mut Vec<Item>) -> Result<(), Lost> {
        if !self.keep {
            return Ok(());
        }
        let (kind, flags, stream) = self.frame;
        let p = std::mem::take(&mut self.payload);
        let fragment = if kind == HEADERS {
            self.block_of = Some((stream, flags & END_STREAM != 0));
            headers_fragment(flags, &p).ok_or(Lost::Malformed)?
        } else {
            match self.block_of {
                Some((s, _)) if s == stream => &p[..],
                _ => return Err(Lost::Malformed),
            }
        };
        self.block.extend_from_slice(fragment);
        self.payload = if p.capacity() <= KEEP_CAPACITY { p } else { Vec::new() };
        if flags & END_HEADERS != 0 {
            let (stream, end_stream) = self.block_of.take().unwrap_or_default();
            let mut fields = Fields::default();
            let block = std::mem::take(&mut self.block);
            self.decoder.decode(&block, |n, v| fields.set(n, v)).map_err(|_| Lost::Hpack)?;
            self.block = if block.capacity() <= KEEP_CAPACITY { block } else { Vec::new() };
            self.block.clear();
            out.push(Item::Headers { stream, end_stream, fields });
        }
        Ok(())
    }
}

/// A request waiting for its response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub ktime_ns: u64,
    pub method: String,
    pub url: String,
    pub path: String,
    pub grpc: bool,
    /// The response's `:status` once seen (a gRPC call then waits for its trailers).
    pub status: Option<u16>,
    /// This node counts the exchange in metrics (as for HTTP/1.x).
    pub counted_here: bool,
}

/// A finished exchange (or a response without a request seen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub request: Option<Request>,
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub grpc_message: String,
    pub latency_ns: u64,
}

/// What one segment gave the ingest.
#[derive(Debug, PartialEq, Eq)]
pub enum Exchange {
    Request(Request),
    Response(Answer),
    Lost(Lost),
    /// Requests counted here that will not be answered (reset, evicted).
    Unanswered(u64),
}

/// One connection: both directions and the streams waiting for a response.
pub struct Connection {
    client: Reader,
    server: Reader,
    streams: BTreeMap<u32, Request>,
    /// The client's, the server's direction has ended (its FIN reported). The connection is
    /// followed until both have: the other end may still send (a response after the client's
    /// FIN, a GOAWAY after the server's).
    fin: (bool, bool),
}

/// The HTTP/2 connections being followed, by (client, server).
pub struct Connections {
    conns: Bounded<Conn, Connection>,
    /// Connections one direction of which has ended, oldest first (may name connections gone
    /// since): at most [`HALF_CLOSED`] of them are followed; beyond, the oldest is forgotten.
    /// The other direction's FIN may never be reported (its event lost, or an RST after a FIN),
    /// and such leftovers must not push live connections out of `conns`.
    half_closed: std::collections::VecDeque<Conn>,
}

/// Half-closed connections followed at most (see [`Connections`]).
pub const HALF_CLOSED: usize = 256;

impl Default for Connections {
    fn default() -> Self {
        Self { conns: Bounded::new(CONNS), half_closed: Default::default() }
    }
}

/// The segment's sender and receiver, as (address, port).
pub type Ends = ((IpAddr, u16), (IpAddr, u16));

/// One copied segment of a connection.
pub struct Segment<'a> {
    pub ends: Ends,
    /// Sequence number of its first payload byte.
    pub seq: u32,
    /// Payload bytes it had, of which `data` were copied.
    pub seg_len: usize,
    pub data: &'a [u8],
    pub now_ns: u64,
    /// This node counts a request this segment holds (its sender's node does).
    pub counted_here: bool,
}

impl Connections {
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The followed connection a segment sent `from` → `to` belongs to, and whether its
    /// sender is the client.
    fn followed(&self, (from, to): Ends) -> Option<(Conn, bool)> {
        let as_client: Conn = (from.0, from.1, to.0, to.1);
        let as_server: Conn = (to.0, to.1, from.0, from.1);
        if self.conns.contains(&as_client) {
            Some((as_client, true))
        } else if self.conns.contains(&as_server) {
            Some((as_server, false))
        } else {
            None
        }
    }

    /// Reads one copied segment; appends what it completed to `out`.
    pub fn segment(&mut self, s: &Segment<'_>, out: &mut Vec<Exchange>) {
        let (from, to) = s.ends;
        let (seq, seg_len, data, now_ns) = (s.seq, s.seg_len, s.data, s.now_ns);
        // Which end is the client: a connection already followed says; a new one is told by its
        // first bytes (the preface comes from the client).
        let (key, client_side) = self.followed(s.ends).unwrap_or_else(|| {
            if data.starts_with(PREFACE) {
                ((from.0, from.1, to.0, to.1), true)
            } else {
                ((to.0, to.1, from.0, from.1), false)
            }
        });
        let mut evicted = 0;
        let conn = self.conns.get_or_insert_with(key, || Connection {
            client: Reader::new(true),
            server: Reader::new(false),
            streams: BTreeMap::new(),
            fin: (false, false),
        });
        let mut items = Vec::new();
        if client_side {
            conn.client.segment(seq, seg_len, data, &mut items);
        } else {
            conn.server.segment(seq, seg_len, data, &mut items);
        }
        for item in items {
            match item {
                Item::Lost(l) => out.push(Exchange::Lost(l)),
                Item::Reset { stream } => {
                    if let Some(r) = conn.streams.remove(&stream) {
                        out.push(Exchange::Unanswered(u64::from(r.counted_here)));
                    }
                }
                Item::Headers { stream, fields, .. } if client_side => {
                    // A request's headers (its trailers, if any, carry nothing we use).
                    if fields.method.is_empty() {
                        continue;
                    }
                    let host = if fields.authority.is_empty() {
                        std::net::SocketAddr::new(to.0, to.1).to_string()
                    } else {
                        fields.authority.clone()
                    };
                    let grpc = fields.is_grpc();
                    let r = Request {
                        ktime_ns: now_ns,
                        url: format!("http://{host}{}", fields.path),
                        method: fields.method,
                        path: fields.path,
                        grpc,
                        status: None,
                        counted_here: s.counted_here,
                    };
                    out.push(Exchange::Request(r.clone()));
                    conn.streams.insert(stream, r);
                    while conn.streams.len() > STREAMS_PER_CONN {
                        if let Some((_, old)) = conn.streams.pop_first() {
                            evicted += u64::from(old.counted_here);
                        }
                    }
                }
                Item::Headers { stream, end_stream, fields } => {
                    // The server's header blocks are decoded only when the client's direction
                    // was followed from its preface too: otherwise this may be the middle of a
                    // connection that merely sent a SETTINGS frame first here.
                    if !conn.client.whole() {
                        conn.server.lost = Some(Lost::StartMissed);
                        out.push(Exchange::Lost(Lost::StartMissed));
                        break;
                    }
                    let waiting = conn.streams.get_mut(&stream);
                    let grpc = waiting.as_ref().map_or(fields.is_grpc(), |r| r.grpc);
                    if grpc && !end_stream && fields.grpc_status.is_none() {
                        // Response headers of a call: its status comes in the trailers.
                        if let Some(r) = waiting {
                            r.status = fields.status.or(r.status);
                        }
                        continue;
                    }
                    let request = conn.streams.remove(&stream);
                    let status = fields.status.or(request.as_ref().and_then(|r| r.status)).unwrap_or(0);
                    let latency_ns = request.as_ref().map_or(0, |r| now_ns.saturating_sub(r.ktime_ns));
                    out.push(Exchange::Response(Answer {
                        request,
                        status,
                        grpc_status: if grpc { fields.grpc_status } else { None },
                        grpc_message: fields.grpc_message,
                        latency_ns,
                    }));
                }
            }
        }
        self.conns.trim(|_, c| evicted += c.streams.values().filter(|r| r.counted_here).count() as u64);
        if evicted > 0 {
            out.push(Exchange::Unanswered(evicted));
        }
    }

    /// The direction `from` → `to` of a connection ended: reset (RST: the whole connection is
    /// gone) or finished (FIN: its sender sends nothing more). Streams left waiting when the
    /// server's direction ends will not be answered: returns how many of them this node
    /// counted. The connection is forgotten once both directions have ended, at once when the
    /// other direction was never seen here, and when more than [`HALF_CLOSED`] connections
    /// are half-closed (the oldest).
    pub fn closed(&mut self, ends: Ends, reset: bool) -> u64 {
        let Some((key, client_side)) = self.followed(ends) else { return 0 };
        let waiting = |c: &Connection| c.streams.values().filter(|r| r.counted_here).count() as u64;
        let Some(conn) = self.conns.get_mut(&key) else { return 0 };
        let was_open = conn.fin == (false, false);
        let other_seen = if client_side {
            conn.fin.0 = true;
            conn.server.seen()
        } else {
            conn.fin.1 = true;
            conn.client.seen()
        };
        if reset || conn.fin == (true, true) || !other_seen {
            return self.conns.remove(&key).map_or(0, |c| waiting(&c));
        }
        let mut n = 0;
        if !client_side {
            n = waiting(conn);
            conn.streams.clear();
        }
        if was_open {
            self.half_closed.push_back(key);
            while self.half_closed.len() > HALF_CLOSED {
                let Some(old) = self.half_closed.pop_front() else { break };
                if self.conns.get_mut(&old).is_some_and(|c| c.fin != (false, false)) {
                    n += self.conns.remove(&old).map_or(0, |c| waiting(&c));
                }
            }
        }
        n
    }
}

/// gRPC's status codes by number, as its documentation names them.
pub fn grpc_status_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("OTHER")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A literal field with incremental indexing and a new name (RFC 7541 §6.2.1): it enters
    /// the dynamic table.
    fn indexed_literal(name: &str, value: &str) -> Vec<u8> {
        let mut b = vec![0x40, name.len() as u8];
        b.extend_from_slice(name.as_bytes());
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
        b
    }

    /// A literal value for a static-table name, not indexed (§6.2.2).
    fn literal(static_index: u8, value: &str) -> Vec<u8> {
        let mut b = vec![static_index, value.len() as u8];
        b.extend_from_slice(value.as_bytes());
        b
    }

    const A: (IpAddr, u16) = (IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 40000);
    const B: (IpAddr, u16) = (IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)), 50051);

    /// The client's first segment: the preface, SETTINGS, and a gRPC call's HEADERS whose path
    /// enters the dynamic table.
    fn client_start() -> Vec<u8> {
        let mut seg = PREFACE.to_vec();
        seg.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        // :method POST (static 3), :scheme http (static 6), :path (dynamic), content-type.
        let mut block = vec![0x83, 0x86];
        block.extend(indexed_literal(":path", "/shop.Cart/Add"));
        block.extend(indexed_literal("content-type", "application/grpc"));
        block.extend(literal(0x01, "cart:50051")); // :authority, without indexing
        seg.extend(frame(HEADERS, END_HEADERS, 1, &block));
        seg.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 2, 8, 1]));
        seg
    }

    fn server_answer(stream: u32, grpc_status: &str) -> Vec<u8> {
        let mut seg = frame(SETTINGS, 0, 0, &[]);
        // :status 200 (static 8), content-type by its static name (31) with a literal value.
        let mut head = vec![0x88];
        // (Index 31 does not fit the 4-bit prefix: 15, then 16 in the next byte.)
        head.extend([0x0f, 0x10, 16]);
        head.extend(b"application/grpc");
        seg.extend(frame(HEADERS, END_HEADERS, stream, &head));
        seg.extend(frame(DATA, 0, stream, &[0, 0, 0, 0, 0]));
        let mut trailers = indexed_literal("grpc-status", grpc_status);
        trailers.extend(indexed_literal("grpc-message", "no such\ncart"));
        seg.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &trailers));
        seg
    }

    fn feed(c: &mut Connections, ends: Ends, seq: u32, seg: &[u8], now: u64) -> Vec<Exchange> {
        let mut out = Vec::new();
        let data = &seg[..seg.len().min(512)];
        c.segment(&Segment { ends, seq, seg_len: seg.len(), data, now_ns: now, counted_here: true }, &mut out);
        out
    }

    #[test]
    fn a_grpc_call_is_paired_with_its_trailers_status() {
        let mut c = Connections::default();
        let out = feed(&mut c, (A, B), 1000, &client_start(), 10);
        let [Exchange::Request(r)] = &out[..] else { panic!("{out:?}") };
        assert_eq!((r.method.as_str(), r.url.as_str(), r.grpc), ("POST", "http://cart:50051/shop.Cart/Add", true));
        let out = feed(&mut c, (B, A), 5000, &server_answer(1, "5"), 1_000_010);
        let [Exchange::Response(a)] = &out[..] else { panic!("{out:?}") };
        assert_eq!((a.status, a.grpc_status, a.latency_ns), (200, Some(5), 1_000_000));
        assert_eq!(a.grpc_message, "no such%0Acart", "control characters never reach a record");
        assert_eq!(a.request.as_ref().map(|r| r.path.as_str()), Some("/shop.Cart/Add"));
        // The next call on stream 3 names its path by the dynamic table entry (index 63: the
        // path went in before content-type).
        let seg = frame(HEADERS, END_HEADERS, 3, &[0x83, 0x86, 0xbf, 0xbe]);
        let out = feed(&mut c, (A, B), 1000 + client_start().len() as u32, &seg, 2_000_000);
        let [Exchange::Request(r)] = &out[..] else { panic!("{out:?}") };
        assert_eq!((r.path.as_str(), r.grpc), ("/shop.Cart/Add", true));
    }

    #[test]
    fn a_connection_whose_start_was_missed_is_reported_and_never_decoded() {
        let mut c = Connections::default();
        // A mid-connection segment that refers to the dynamic table: nothing is guessed.
        let seg = frame(HEADERS, END_HEADERS, 3, &[0x83, 0x86, 0xbf, 0xbe]);
        assert_eq!(feed(&mut c, (A, B), 77, &seg, 1), vec![Exchange::Lost(Lost::StartMissed)]);
        assert!(feed(&mut c, (A, B), 77 + seg.len() as u32, &seg, 2).is_empty(), "lost once, silent after");
        // The server's answers, starting with a SETTINGS frame, are not decoded either.
        let out = feed(&mut c, (B, A), 9000, &server_answer(3, "0"), 3);
        assert_eq!(out, vec![Exchange::Lost(Lost::StartMissed)]);
    }

    #[test]
    fn a_missing_segment_stops_the_direction_and_retransmissions_are_read_once() {
        let mut c = Connections::default();
        let start = client_start();
        assert_eq!(feed(&mut c, (A, B), 1, &start, 1).len(), 1);
        // The same segment again (a retransmission): nothing new.
        assert!(feed(&mut c, (A, B), 1, &start, 2).is_empty());
        // A segment beyond the next expected byte: a gap.
        let seg = frame(HEADERS, END_HEADERS, 3, &[0x83, 0x86, 0xbf, 0xbe]);
        let out = feed(&mut c, (A, B), 1 + start.len() as u32 + 40, &seg, 3);
        assert_eq!(out, vec![Exchange::Lost(Lost::Gap)]);
    }

    #[test]
    fn frames_straddling_segments_are_joined_and_beyond_the_copy_is_lost() {
        // The client's first segment cut in three at awkward places (inside the preface's
        // following frame header, inside the header block).
        let start = client_start();
        let mut c = Connections::default();
        let mut out = Vec::new();
        for (at, end) in [(0, 30), (30, 60), (60, start.len())] {
            out.extend(feed(&mut c, (A, B), 100 + at as u32, &start[at..end], 1));
        }
        assert!(matches!(&out[..], [Exchange::Request(r)] if r.path == "/shop.Cart/Add"), "{out:?}");
        // A segment whose header block lies beyond the 512 bytes copied of it.
        let mut c = Connections::default();
        let mut seg = PREFACE.to_vec();
        seg.extend(frame(DATA, 0, 1, &[0; 600]));
        seg.extend(frame(HEADERS, END_HEADERS, 1, &[0x83]));
        assert_eq!(feed(&mut c, (A, B), 1, &seg, 1), vec![Exchange::Lost(Lost::BeyondCapture)]);
    }

    #[test]
    fn resets_and_closes_leave_nothing_waiting_and_hostile_frames_stop_decoding() {
        let mut c = Connections::default();
        let start = client_start();
        feed(&mut c, (A, B), 1, &start, 1);
        let out = feed(&mut c, (A, B), 1 + start.len() as u32, &frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]), 2);
        assert_eq!(out, vec![Exchange::Unanswered(1)]);
        // A CONTINUATION without its HEADERS, and a push: decoding stops, counted.
        let mut c2 = Connections::default();
        let mut seg = PREFACE.to_vec();
        seg.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x83]));
        assert_eq!(feed(&mut c2, (A, B), 1, &seg, 1), vec![Exchange::Lost(Lost::Malformed)]);
        let mut c3 = Connections::default();
        feed(&mut c3, (A, B), 1, &start, 1);
        let mut push = frame(SETTINGS, 0, 0, &[]);
        push.extend(frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82]));
        assert_eq!(feed(&mut c3, (B, A), 1, &push, 2), vec![Exchange::Lost(Lost::PushPromise)]);
        // A header block HPACK refuses (an index beyond both tables).
        let mut c4 = Connections::default();
        let mut seg = PREFACE.to_vec();
        seg.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f]));
        assert_eq!(feed(&mut c4, (A, B), 1, &seg, 1), vec![Exchange::Lost(Lost::Hpack)]);
        // A table size update beyond TABLE_MAX.
        let mut c5 = Connections::default();
        let mut seg = PREFACE.to_vec();
        seg.extend(frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0xff, 0x03, 0x83]));
        assert_eq!(feed(&mut c5, (A, B), 1, &seg, 1), vec![Exchange::Lost(Lost::Hpack)]);
        assert_eq!(c.closed((A, B), true), 0);
        assert!(c.is_empty());
    }

    /// A GET on stream `id` (no body) and the server's 404 answering it.
    fn get(id: u32) -> Vec<u8> {
        frame(HEADERS, END_HEADERS | END_STREAM, id, &[0x82, 0x86, 0x84])
    }

    #[test]
    fn a_direction_that_ends_leaves_the_other_decoded_until_both_have() {
        const GOAWAY: u8 = 7;
        let mut seg = PREFACE.to_vec();
        seg.extend(get(1));
        let mut resp = frame(SETTINGS, 0, 0, &[]);
        resp.extend(frame(HEADERS, END_HEADERS, 1, &[0x8d]));
        // The client half-closes after its request (its FIN reported first; the server's
        // SETTINGS, sent when it accepted, already seen): the response that follows still
        // answers it, and the connection is forgotten when the server ends too.
        let mut c = Connections::default();
        let settings = frame(SETTINGS, 0, 0, &[]);
        assert!(feed(&mut c, (B, A), 1, &settings, 1).is_empty());
        assert_eq!(feed(&mut c, (A, B), 1, &seg, 1).len(), 1);
        assert_eq!(c.closed((A, B), false), 0);
        let out = feed(&mut c, (B, A), 1 + settings.len() as u32, &frame(HEADERS, END_HEADERS, 1, &[0x8d]), 5);
        assert!(matches!(&out[..], [Exchange::Response(a)] if a.status == 404 && a.latency_ns == 4), "{out:?}");
        assert_eq!((c.closed((B, A), false), c.len()), (0, 0));
        // Only the client's direction seen (the node's own stack opened it: the pod's replies
        // go back to the stack unobserved): forgotten at its FIN, its stream unanswered.
        let mut c = Connections::default();
        feed(&mut c, (A, B), 1, &seg, 1);
        assert_eq!((c.closed((A, B), false), c.len()), (1, 0));
        // The server ends first with a stream waiting: unanswered, counted once. The client's
        // GOAWAY after it is read on the same connection (not a connection begun before the
        // agent), then its FIN ends it.
        let mut c = Connections::default();
        feed(&mut c, (A, B), 1, &seg, 1);
        let mut two = get(3);
        two.extend(get(5));
        feed(&mut c, (A, B), 1 + seg.len() as u32, &two, 2);
        assert!(matches!(&feed(&mut c, (B, A), 1, &resp, 3)[..], [Exchange::Response(_)]));
        assert_eq!(c.closed((B, A), false), 2);
        assert_eq!(c.closed((B, A), false), 0, "a repeated close counts nothing again");
        let goaway = frame(GOAWAY, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0]);
        assert!(feed(&mut c, (A, B), 1 + (seg.len() + two.len()) as u32, &goaway, 4).is_empty());
        assert_eq!(c.len(), 1);
        assert_eq!((c.closed((A, B), false), c.len()), (0, 0));
        // A close of a connection never followed changes nothing.
        assert_eq!(c.closed((A, B), false), 0);

        // Half-closed connections whose other FIN never comes are bounded: beyond HALF_CLOSED
        // the oldest is forgotten (its waiting stream counted), live ones are left alone.
        let mut c = Connections::default();
        let live = (A.0, 1);
        feed(&mut c, (live, B), 1, &seg, 1);
        feed(&mut c, (B, live), 1, &settings, 1);
        let mut unanswered = 0;
        for port in 2..HALF_CLOSED as u16 + 3 {
            let client = (A.0, port);
            feed(&mut c, (client, B), 1, &seg, 1);
            feed(&mut c, (B, client), 1, &settings, 1);
            unanswered += c.closed((client, B), false);
        }
        assert_eq!((unanswered, c.len()), (1, HALF_CLOSED + 1));
        let out = feed(&mut c, (live, B), 1 + seg.len() as u32, &get(3), 2);
        assert!(matches!(&out[..], [Exchange::Request(_)]), "the live connection is still followed: {out:?}");
    }

    #[test]
    fn plain_http2_is_answered_by_its_status_and_grpc_names_are_known() {
        let mut c = Connections::default();
        let mut seg = PREFACE.to_vec();
        seg.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x82, 0x86, 0x84]));
        let out = feed(&mut c, (A, B), 1, &seg, 1);
        assert!(matches!(&out[..], [Exchange::Request(r)] if r.method == "GET" && r.path == "/" && !r.grpc));
        let mut resp = frame(SETTINGS, 0, 0, &[]);
        resp.extend(frame(HEADERS, END_HEADERS, 1, &[0x8d])); // :status 404
        let out = feed(&mut c, (B, A), 1, &resp, 5);
        assert!(matches!(&out[..], [Exchange::Response(a)] if a.status == 404 && a.grpc_status.is_none()), "{out:?}");
        assert_eq!((grpc_status_name(0), grpc_status_name(5), grpc_status_name(99)), ("OK", "NOT_FOUND", "OTHER"));
    }
}
