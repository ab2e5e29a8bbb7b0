//! Flow and DNS observability, from the programs that forward the packets.
//!
//! Flows are aggregated in the kernel: `WEIR_FLOWS` keeps one entry per direction of a
//! connection and observation point, and the ring buffer gets an event only when a flow starts
//! (`EVENT_FLOW_NEW`), when TCP closes it (FIN or RST: `EVENT_FLOW_CLOSE`) and at most every
//! `FLOW_REPORT_NS` while it keeps sending (`EVENT_FLOW_UPDATE`), not one per packet. DNS
//! messages (UDP or TCP port 53) are copied to the ring buffer whole, up to `PAYLOAD_CAPTURE` bytes,
//! for the agent to parse: no proxy, whatever server the pod asks. With HTTP observation on,
//! a TCP flow's first payload decides whether it is looked at again: one that begins an
//! HTTP/1.x message (a method, or `HTTP/1.`) has every segment that begins one copied
//! (`EVENT_HTTP`, up to `PAYLOAD_CAPTURE` bytes: the request line or status line and the first
//! headers); one that begins HTTP/2 (the client preface, or a server's SETTINGS frame) has every
//! segment copied with its sequence number (`EVENT_H2`: HPACK needs every header block, in
//! order); any other flow costs one bit test per packet from then on. A closing segment's payload
//! is copied before its flow's close is reported, so the agent has read a direction's last data
//! when it learns that the direction ended. Every event that does not fit
//! the ring buffer is counted (`counters::EVENTS_LOST`), never dropped silently. A flow that a
//! Service translation made (or a reply to one) carries that Service's frontend, looked up once
//! when the flow starts, and a flow leaving a pod from a socket whose connect() weir saw carries
//! that process (`WEIR_SOCK_PROC`, written by the cgroup hooks), also looked up once.
use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use weir_bpf_common::{
    counters, settings, Addr16, DatapathEvent, FlowKey, FlowStats, NatKey, PayloadEvent, SockProc, SockRevKey,
    EVENT_DNS, EVENT_FLOW_CLOSE, EVENT_FLOW_NEW, EVENT_FLOW_UPDATE, EVENT_H2, EVENT_HTTP, FLOW_F_REPLY, FLOW_REPORT_NS,
    FLOW_S_CLOSED, FLOW_S_H2, FLOW_S_HTTP, FLOW_S_OTHER, OBS_FROM_POD, OBS_TO_POD, PAYLOAD_CAPTURE,
};

use crate::{
    counter,
    parse::{Ipv4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    WEIR_EVENTS, WEIR_FLOWS, WEIR_LB_REV, WEIR_SETTINGS, WEIR_SOCK_PROC, WEIR_SOCK_RNAT,
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const DNS_PORT_BE: u16 = 53u16.to_be();

/// Two bytes as they lie in the packet (network order kept, as the `_be` fields hold them).
#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

/// Ports (TCP/UDP; ICMP: type and code as the source port, echo id as the destination port),
/// TCP flags and the offset of the payload. Fragments, and headers cut short, have no ports.
/// One copy of the header per packet (each `bpf_skb_load_bytes` is a helper call).
#[inline(always)]
pub fn l4(ctx: &TcContext, ip: &Ipv4) -> (u16, u16, u8, usize) {
    if ip.fragment {
        return (0, 0, 0, 0);
    }
    match ip.proto {
        IPPROTO_TCP => match tcp_head(ctx, ip.l4_off) {
            Some(h) => (be16(&h, 0), be16(&h, 2), h[13], ip.l4_off + (h[12] >> 4) as usize * 4),
            None => (0, 0, 0, 0),
        },
        IPPROTO_UDP => match ctx.load::<[u8; 4]>(ip.l4_off) {
            Ok(h) => (be16(&h, 0), be16(&h, 2), 0, ip.l4_off + 8),
            Err(_) => (0, 0, 0, 0),
        },
        IPPROTO_ICMP => match ctx.load::<[u8; 6]>(ip.l4_off) {
            Ok(h) => (be16(&h, 0), be16(&h, 4), 0, 0),
            Err(_) => (0, 0, 0, 0),
        },
        _ => (0, 0, 0, 0),
    }
}

/// The first 14 bytes of the TCP header (ports, sequence number, data offset, flags); every
/// established packet pays for this.
#[inline(always)]
fn tcp_head(ctx: &TcContext, l4_off: usize) -> Option<[u8; 14]> {
    packet_bytes::<14>(ctx, l4_off)
}

/// `N` bytes of the packet at `off` (at most 255: headers end, and payloads start, within the
/// first 14 + 60 + 60 bytes): read in place where they lie in the linear part, without a helper
/// call, else copied out with one.
#[inline(always)]
fn packet_bytes<const N: usize>(ctx: &TcContext, off: usize) -> Option<[u8; N]> {
    // Bounded for the verifier.
    let at = off & 0xff;
    let start = ctx.data();
    if at == off && start + at + N <= ctx.data_end() {
        // SAFETY: bounds checked against data_end above; the verifier enforces the same.
        return Some(unsafe { ((start + at) as *const [u8; N]).read_unaligned() });
    }
    ctx.load::<[u8; N]>(off).ok()
}

/// A Service frontend (IPv4 address and port, network order); port 0 = none.
#[derive(Clone, Copy)]
struct Svc {
    addr: u32,
    port_be: u16,
}

const NO_SVC: Svc = Svc { addr: 0, port_be: 0 };

/// A flow's counters from its first packet.
#[inline(always)]
fn fresh(bytes: u64, now: u64, tcp_flags: u8, svc: Svc) -> FlowStats {
    FlowStats {
        packets: 1,
        bytes,
        last_report_ns: now,
        tcp_flags,
        state: if tcp_flags & (TCP_FIN | TCP_RST) != 0 { FLOW_S_CLOSED } else { 0 },
        svc_port_be: svc.port_be,
        svc_addr: svc.addr,
    }
}

/// The cookie of the pod socket a TCP or UDP packet leaving a pod was sent from (the socket still
/// rides with the packet on the host side of the veth: crossing namespaces keeps skb->sk); 0
/// elsewhere or without a socket.
#[inline(always)]
fn sock_cookie(ctx: &TcContext, key: &FlowKey) -> u64 {
    if key.point != OBS_FROM_POD || (key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP) {
        return 0;
    }
    // SAFETY: helper call on the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) }
}

/// The process that connected the socket `cookie` (null: none known).
#[inline(always)]
fn process(cookie: u64) -> *const SockProc {
    if cookie == 0 {
        return core::ptr::null();
    }
    match WEIR_SOCK_PROC.get_ptr(cookie) {
        Some(p) => p,
        None => core::ptr::null(),
    }
}

/// The Service frontend a new flow was translated from (or, for a backend's reply, is translated
/// back to). Looked up once per flow, never per packet. `reply`: the flow's reverse was seen
/// first.
#[inline(always)]
fn service(key: &FlowKey, cookie: u64, reply: bool) -> Svc {
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        return NO_SVC;
    }
    if key.point == OBS_FROM_POD {
        // Translated at connect()/sendmsg(): WEIR_SOCK_RNAT holds (socket, backend) → frontend.
        if cookie != 0 {
            let k = SockRevKey { cookie, addr: Addr16::from_v4_be(key.daddr), port_be: key.dport_be, _pad: [0; 6] };
            // SAFETY: read-only lookup of a plain-data value.
            if let Some(f) = unsafe { WEIR_SOCK_RNAT.get(k) } {
                return Svc { addr: f.addr.v4_be(), port_be: f.port_be };
            }
        }
        // A connection a pod opens is observed before any per-packet translation: only a
        // reply leaving a backend can match WEIR_LB_REV here (one lookup less per new
        // connection).
        if !reply {
            return NO_SVC;
        }
    }
    // Translated per packet (NodePort, external IPs): WEIR_LB_REV keys the backend's reply tuple
    // to the frontend. Delivered to the backend, the flow is the reverse of that tuple; leaving
    // the backend, its reply is that tuple.
    let (s, d) = (Addr16::from_v4_be(key.saddr), Addr16::from_v4_be(key.daddr));
    let rev = if key.point == OBS_TO_POD {
        NatKey::new(d, s, key.dport_be, key.sport_be, key.proto)
    } else {
        NatKey::new(s, d, key.sport_be, key.dport_be, key.proto)
    };
    // SAFETY: read-only lookup of a plain-data value.
    match unsafe { WEIR_LB_REV.get(rev) } {
        Some(f) => Svc { addr: f.addr.v4_be(), port_be: f.port_be },
        None => NO_SVC,
    }
}

const _: () = assert!(cfg!(target_endian = "little"), "put_v4 writes little-endian words");

/// Writes `be` (an IPv4 address in packet order, see `Addr16::from_v4_be`) as an IPv4-mapped
/// address at `dst` with two 8-byte stores: `dst` lies at an 8-byte aligned offset (0, 16, 72) of
/// a ring record, which is 8-byte aligned. Assigning an `Addr16` value instead zeroes its first
/// ten bytes with a call to the programs' byte-at-a-time `memset`, three times per event.
///
/// # Safety
/// `dst` is valid for writes and 8-byte aligned.
#[inline(always)]
unsafe fn put_v4(dst: *mut Addr16, be: u32) {
    let w = dst.cast::<u64>();
    // Bytes 8..16 as a little-endian word: 0, 0, 0xff, 0xff, then the address as it lies.
    // SAFETY: as the caller promises.
    unsafe {
        *w = 0;
        *w.add(1) = 0xffff_0000 | (u64::from(be) << 32);
    }
}

/// Fills a reserved flow event in place from `key` and `s` (counters and TCP flags; a new flow's:
/// this packet's) and the process `proc` (null: none). Field by field through the record's
/// pointer: no event on the stack, whose 512 bytes the programs' call chains already nearly fill.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fill(
    p: *mut DatapathEvent,
    ctx: &TcContext,
    key: &FlowKey,
    now: u64,
    kind: u8,
    (packets, bytes, tcp_flags): (u64, u64, u8),
    svc: Svc,
    flags: u8,
    proc: *const SockProc,
) {
    // SAFETY: `p` is a reserved ring-buffer record sized for a DatapathEvent, ours until
    // submitted; the context pointer is valid for the whole program run.
    unsafe {
        put_v4(core::ptr::addr_of_mut!((*p).saddr), key.saddr);
        put_v4(core::ptr::addr_of_mut!((*p).daddr), key.daddr);
        (*p).packets = packets;
        (*p).bytes = bytes;
        (*p).ktime_ns = now;
        (*p).ifindex = (*ctx.skb.skb).ifindex;
        (*p).sport_be = key.sport_be;
        (*p).dport_be = key.dport_be;
        (*p).kind = kind;
        (*p).reason = 0;
        (*p).proto = key.proto;
        (*p).point = key.point;
        (*p).tcp_flags = tcp_flags;
        (*p).flags = flags;
        (*p).svc_port_be = svc.port_be;
        let svc_addr = core::ptr::addr_of_mut!((*p).svc_addr);
        if svc.port_be == 0 {
            let w = svc_addr.cast::<u64>();
            *w = 0;
            *w.add(1) = 0;
        } else {
            put_v4(svc_addr, svc.addr);
        }
        (*p)._pad = [0; 4];
        if proc.is_null() {
            (*p).proc_tgid = 0;
            let dst = core::ptr::addr_of_mut!((*p).proc_comm).cast::<u64>();
            *dst = 0;
            *dst.add(1) = 0;
        } else {
            (*p).proc_tgid = (*proc).tgid;
            // Two aligned words (offset 88 of the record, 0 of the map value): a byte array
            // copy would be a call to memmove, a frame the verifier adds to the call chain.
            let (src, dst) = (
                core::ptr::addr_of!((*proc).comm).cast::<u64>(),
                core::ptr::addr_of_mut!((*p).proc_comm).cast::<u64>(),
            );
            *dst = *src;
            *dst.add(1) = *src.add(1);
        }
    }
}

/// Wake the agent's reader each time another this much is waiting (a sixteenth of the ring:
/// about 400 HTTP records); in between, events wait for the reader's next periodic drain
/// (every 50 ms). Each wakeup is a context switch taken from the pods' own work on a busy node:
/// at 32 KiB a saturated node woke the reader 3000 times a second.
const WAKEUP_BYTES: u64 = weir_bpf_common::sizes::EVENTS_BYTES as u64 / 16;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// A ring-buffer record's header (the kernel's `BPF_RINGBUF_HDR_SZ`).
const RINGBUF_HDR: u64 = 8;

/// Submit flags for a ring-buffer record of `size` bytes (reserved, not yet submitted): wake the
/// reader when this record takes what is waiting across a multiple of `WAKEUP_BYTES`, so a
/// backlog wakes it once per `WAKEUP_BYTES` rather than at every record. A crossing missed in a
/// race with another CPU is made up by the reader's periodic drain; nothing is lost either way.
#[inline(always)]
pub fn submit_flags(size: usize) -> u64 {
    let before = WEIR_EVENTS.query(BPF_RB_AVAIL_DATA);
    let after = before + ((size as u64 + RINGBUF_HDR + 7) & !7);
    if after / WAKEUP_BYTES != before / WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Reserves a record and fills it in place. The precise time is read only here: packets that
/// make no event pay for none.
#[inline(always)]
fn emit(ctx: &TcContext, key: &FlowKey, kind: u8, s: &FlowStats, flags: u8, proc: *const SockProc) {
    match WEIR_EVENTS.reserve::<DatapathEvent>(0) {
        Some(mut slot) => {
            // SAFETY: a helper without arguments.
            let now = unsafe { bpf_ktime_get_ns() };
            let svc = Svc { addr: s.svc_addr, port_be: s.svc_port_be };
            fill(slot.as_mut_ptr(), ctx, key, now, kind, (s.packets, s.bytes, s.tcp_flags), svc, flags, proc);
            slot.submit(submit_flags(core::mem::size_of::<DatapathEvent>()));
        }
        None => counter::count(counters::EVENTS_LOST),
    }
}

/// Records the packet in `ctx` (addresses as in `ip`) as seen at observation point `point`.
#[inline(never)]
pub fn observe(ctx: &TcContext, ip: &Ipv4, point: u8) {
    let on = WEIR_SETTINGS.get(settings::OBSERVE).copied().unwrap_or(0);
    if on & settings::OBSERVE_FLOWS == 0 {
        return;
    }
    let (sport_be, dport_be, tcp_flags, payload_off) = l4(ctx, ip);
    let key = FlowKey { saddr: ip.saddr, daddr: ip.daddr, sport_be, dport_be, proto: ip.proto, point, _pad: [0; 2] };
    let len = ctx.len() as u64;
    // The coarse clock (a tick's resolution) decides when a flow is due a report; events read
    // the precise one when they are made.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // The flow's entry, where it already had one (else null): what HTTP observation below reads
    // and marks.
    let mut entry: *mut FlowStats = core::ptr::null_mut();
    // This packet closes the flow (its first FIN or RST): reported after its payload, so the
    // agent reads a closing segment's data before it hears that the direction ended.
    let mut closing = false;
    // SAFETY: the kernel gives a pointer to this CPU's view of the value, valid during the run.
    let svc = match WEIR_FLOWS.get_ptr_mut(key) {
        // A SYN on a closed flow's tuple is a new connection that reuses it: report it anew.
        Some(s) if unsafe { (*s).state } & FLOW_S_CLOSED != 0 && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN => {
            let cookie = sock_cookie(ctx, &key);
            let svc = service(&key, cookie, false);
            // SAFETY: as above.
            let s = unsafe { &mut *s };
            *s = fresh(len, now, tcp_flags, svc);
            emit(ctx, &key, EVENT_FLOW_NEW, s, 0, process(cookie));
            svc
        }
        Some(p) => {
            entry = p;
            // SAFETY: as above; a concurrent update on another CPU can only lose an increment.
            let s = unsafe { &mut *p };
            s.packets += 1;
            s.bytes += len;
            s.tcp_flags |= tcp_flags;
            if tcp_flags & (TCP_FIN | TCP_RST) != 0 && s.state & FLOW_S_CLOSED == 0 {
                s.state |= FLOW_S_CLOSED;
                closing = true;
            } else if now.saturating_sub(s.last_report_ns) >= FLOW_REPORT_NS {
                // (Saturating: another CPU may have stored a later coarse time.)
                s.last_report_ns = now;
                emit(ctx, &key, EVENT_FLOW_UPDATE, s, 0, core::ptr::null());
            }
            Svc { addr: s.svc_addr, port_be: s.svc_port_be }
        }
        None => {
            // A reply's reverse was seen first, at either point: leaving this pod's peer on this
            // node (from-pod) or arriving from another node (to-pod).
            let mut reverse = FlowKey {
                saddr: ip.daddr,
                daddr: ip.saddr,
                sport_be: dport_be,
                dport_be: sport_be,
                proto: ip.proto,
                point: OBS_FROM_POD,
                _pad: [0; 2],
            };
            // A SYN without ACK opens a connection: never a reply, whatever an older connection
            // of the reverse tuple left in the map, and no lookup to pay on that first packet.
            let opening = ip.proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            let mut seen = None;
            if !opening {
                // SAFETY: read-only lookups of plain-data values.
                seen = unsafe { WEIR_FLOWS.get(reverse) }.map(|r| Svc { addr: r.svc_addr, port_be: r.svc_port_be });
            }
            if !opening && seen.is_none() {
                reverse.point = OBS_TO_POD;
                // SAFETY: as above.
                seen = unsafe { WEIR_FLOWS.get(reverse) }.map(|r| Svc { addr: r.svc_addr, port_be: r.svc_port_be });
            }
            // ICMP keys are not symmetric; an echo reply is told by its type instead.
            let reply = seen.is_some() || (ip.proto == IPPROTO_ICMP && sport_be == 0);
            // A reply of a translated connection seen here carries its Service back.
            let cookie = sock_cookie(ctx, &key);
            let mut svc = service(&key, cookie, seen.is_some());
            if let Some(r) = seen {
                if svc.port_be == 0 {
                    svc = r;
                }
            }
            let s = fresh(len, now, tcp_flags, svc);
            // A lost insert (map full of live entries) only means the next packet reports again.
            let _ = WEIR_FLOWS.insert(key, s, 0);
            emit(ctx, &key, EVENT_FLOW_NEW, &s, if reply { FLOW_F_REPLY } else { 0 }, process(cookie));
            svc
        }
    };
    if payload_off != 0 && payload_off < len as usize {
        // (Else no payload: a fragment, a bare TCP segment (SYN, ACK, FIN), a short header.)
        l7(ctx, ip, &key, entry, payload_off, tcp_flags, svc, on);
    }
    if closing {
        // SAFETY: `closing` is set only where `entry` is the flow's map value, valid this run.
        emit(ctx, &key, EVENT_FLOW_CLOSE, unsafe { &*entry }, 0, core::ptr::null());
    }
}

/// The payload of a packet `observe` recorded (at `payload_off`, within the packet): DNS copied
/// whole; with HTTP observation on (`on`), a TCP flow's first payload decides what its later
/// segments get (`entry`: the flow's map value, null for a flow this packet began).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn l7(
    ctx: &TcContext,
    ip: &Ipv4,
    key: &FlowKey,
    entry: *mut FlowStats,
    payload_off: usize,
    tcp_flags: u8,
    svc: Svc,
    on: u32,
) {
    let (sport_be, dport_be) = (key.sport_be, key.dport_be);
    if (ip.proto == IPPROTO_UDP || ip.proto == IPPROTO_TCP) && (sport_be == DNS_PORT_BE || dport_be == DNS_PORT_BE) {
        payload(ctx, key, ip.l4_off, payload_off, tcp_flags, svc, EVENT_DNS);
    } else if ip.proto == IPPROTO_TCP && on & settings::OBSERVE_HTTP != 0 {
        // A new flow's entry was made without a verdict on its payload: the next segment decides.
        if entry.is_null() {
            if l7_start(ctx, payload_off) == START_HTTP1 {
                payload(ctx, key, ip.l4_off, payload_off, tcp_flags, svc, EVENT_HTTP);
            }
            return;
        }
        // SAFETY: `entry` is the flow's map value (not null here), valid during the run.
        let state = unsafe { (*entry).state };
        if state & FLOW_S_OTHER != 0 {
            return;
        }
        if state & FLOW_S_H2 != 0 {
            payload(ctx, key, ip.l4_off, payload_off, tcp_flags, svc, EVENT_H2);
            return;
        }
        let start = l7_start(ctx, payload_off);
        if state & FLOW_S_HTTP == 0 {
            // Undecided: this, the flow's first payload, decides.
            let decided = match start {
                START_HTTP1 => FLOW_S_HTTP,
                START_H2 => FLOW_S_H2,
                _ => FLOW_S_OTHER,
            };
            // SAFETY: as above.
            unsafe { (*entry).state |= decided };
            if start == START_H2 {
                payload(ctx, key, ip.l4_off, payload_off, tcp_flags, svc, EVENT_H2);
                return;
            }
        }
        if start == START_HTTP1 {
            payload(ctx, key, ip.l4_off, payload_off, tcp_flags, svc, EVENT_HTTP);
        }
    }
}

/// What a payload begins (`l7_start`): nothing followed, an HTTP/1.x message, HTTP/2.
const START_NONE: u8 = 0;
const START_HTTP1: u8 = 1;
const START_H2: u8 = 2;

/// The first four bytes of an HTTP/1.x request method (with its space where the method is
/// shorter) or of a status line, as a little-endian `u32` of the payload's first bytes.
const fn word(b: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*b)
}
const HTTP_STARTS: [u32; 9] = [
    word(b"GET "),
    word(b"POST"),
    word(b"PUT "),
    word(b"HEAD"),
    word(b"DELE"),
    word(b"PATC"),
    word(b"OPTI"),
    word(b"CONN"),
    word(b"TRAC"),
];

/// What the payload at `off` begins: an HTTP/1.x message (a request method, or `HTTP/1.`),
/// HTTP/2 (the client preface `PRI * HTTP/2.0…`, or a server's first frame: a SETTINGS frame,
/// not an acknowledgement, on stream 0, whose length is a whole number of settings), or
/// neither.
#[inline(always)]
fn l7_start(ctx: &TcContext, off: usize) -> u8 {
    let Some(b) = packet_bytes::<9>(ctx, off) else { return START_NONE };
    let w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if w == word(b"HTTP") {
        return if b[4] == b'/' && b[5] == b'1' && b[6] == b'.' { START_HTTP1 } else { START_NONE };
    }
    if w == word(b"PRI ") {
        return if b[4] == b'*' && b[5] == b' ' && b[6] == b'H' && b[7] == b'T' { START_H2 } else { START_NONE };
    }
    let len = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
    if b[3] == 4 && b[4] & 1 == 0 && b[5] | b[6] | b[7] | b[8] == 0 && len.is_multiple_of(6) && len <= 96 {
        return START_H2;
    }
    let mut i = 0;
    while i < HTTP_STARTS.len() {
        if w == HTTP_STARTS[i] {
            return START_HTTP1;
        }
        i += 1;
    }
    START_NONE
}

/// Copies the start of the packet's payload (at `payload_off`, before the packet's end) to the
/// ring buffer as an event of `kind` (`EVENT_DNS`, `EVENT_HTTP`, `EVENT_H2`), with the payload's
/// length and, for TCP, its sequence number (the TCP header is at `l4_off`).
#[inline(always)]
fn payload(ctx: &TcContext, key: &FlowKey, l4_off: usize, payload_off: usize, tcp_flags: u8, svc: Svc, kind: u8) {
    let total = ctx.len() as usize;
    let mut n = total - payload_off;
    if n > PAYLOAD_CAPTURE {
        n = PAYLOAD_CAPTURE;
    }
    // 1..=PAYLOAD_CAPTURE in a form the verifier can follow (a power of two).
    let n = ((n - 1) & (PAYLOAD_CAPTURE - 1)) + 1;
    let Some(mut slot) = WEIR_EVENTS.reserve::<PayloadEvent>(0) else {
        counter::count(counters::EVENTS_LOST);
        return;
    };
    let p = slot.as_mut_ptr();
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `p` is the reserved record, sized for a PayloadEvent, ours until submitted.
    unsafe {
        let event = core::ptr::addr_of_mut!((*p).event);
        fill(event, ctx, key, now, kind, (1, total as u64, tcp_flags), svc, 0, core::ptr::null());
        (*p).len = n as u16;
        (*p).tcp = u8::from(key.proto == IPPROTO_TCP);
        (*p)._pad = 0;
        (*p).seq = if key.proto == IPPROTO_TCP {
            tcp_head(ctx, l4_off).map_or(0, |h| u32::from_be_bytes([h[4], h[5], h[6], h[7]]))
        } else {
            0
        };
        (*p).seg_len = (total - payload_off) as u32;
        (*p)._pad2 = [0; 4];
    }
    // SAFETY: as above; the copy is bounded by `data`'s size (n is 1..=PAYLOAD_CAPTURE).
    let copied = unsafe {
        bpf_skb_load_bytes(ctx.skb.skb as *const _, payload_off as u32, (*p).data.as_mut_ptr().cast(), n as u32)
    };
    if copied != 0 {
        // SAFETY: as above.
        unsafe { (*p).len = 0 };
    }
    slot.submit(submit_flags(core::mem::size_of::<PayloadEvent>()));
}
