//! Crafted frames for datapath tests, with real checksums so rewrites can be verified.
use std::net::Ipv4Addr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

/// Internet checksum of `data` (its checksum field zeroed or included: a valid packet sums to 0).
pub fn csum(data: &[u8]) -> u16 {
    fold(sum16(data))
}

fn l4_csum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut s = sum16(&src.octets()) + sum16(&dst.octets()) + u32::from(proto) + l4.len() as u32;
    s += sum16(l4);
    fold(s)
}

/// An Ethernet + IPv4 + (TCP|UDP|ICMP echo) frame. For ICMP, `sport` is the echo identifier.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = match proto {
        TCP => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..8].copy_from_slice(&1u32.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = 0x02; // SYN
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            h
        }
        UDP => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            h
        }
        ICMP => {
            let mut h = vec![0u8; 8];
            h[0] = if dport == 0 { 8 } else { 0 }; // request, or reply when dport != 0
            h[4..6].copy_from_slice(&sport.to_be_bytes());
            h[6..8].copy_from_slice(&1u16.to_be_bytes());
            h
        }
        _ => Vec::new(),
    };
    l4.extend_from_slice(payload);
    match proto {
        TCP => {
            let c = l4_csum(src, dst, proto, &l4);
            l4[16..18].copy_from_slice(&c.to_be_bytes());
        }
        UDP => {
            let c = l4_csum(src, dst, proto, &l4);
            l4[6..8].copy_from_slice(&c.to_be_bytes());
        }
        ICMP => {
            let c = csum(&l4);
            l4[2..4].copy_from_slice(&c.to_be_bytes());
        }
        _ => {}
    }
    let mut f = ipv4_raw(src, dst, proto, &l4);
    // Don't fragment, as a TCP stack sends.
    f[14 + 6] = 0x40;
    f[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let c = csum(&f[14..34]);
    f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    f
}

/// A TCP segment with `flags` (byte 13 of the header: FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = ipv4(src, dst, TCP, sport, dport, b"");
    let l4 = 14 + 20;
    f[l4 + 13] = flags;
    f[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
    let c = l4_csum(src, dst, TCP, &f[l4..]);
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

/// Parsed view of a frame produced by [`ipv4`] (after a program rewrote it).
#[derive(Debug)]
pub struct View {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub ip_csum_ok: bool,
    pub l4_csum_ok: bool,
}

pub fn view(f: &[u8]) -> View {
    let ip = &f[14..34];
    let l4 = &f[34..];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let (sport, dport) = if proto == ICMP {
        (u16::from_be_bytes([l4[4], l4[5]]), 0)
    } else {
        (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]))
    };
    let l4_csum_ok = match proto {
        TCP | UDP => l4_csum(src, dst, proto, l4) == 0,
        _ => csum(l4) == 0,
    };
    View {
        dst_mac: f[0..6].try_into().unwrap_or_default(),
        src_mac: f[6..12].try_into().unwrap_or_default(),
        src,
        dst,
        sport,
        dport,
        ip_csum_ok: csum(ip) == 0,
        l4_csum_ok,
    }
}

/// Makes an IPv4 fragment of `frame` (an [`ipv4`] frame): the IP ID, the MF flag and the
/// offset in 8-byte units set, DF cleared, the header checksum recomputed. The payload stays
/// whatever the caller put in the frame (a later fragment's bytes are just data).
pub fn fragment(mut frame: Vec<u8>, id: u16, offset_units: u16, more: bool) -> Vec<u8> {
    let ip = &mut frame[14..34];
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    let frags = (if more { 0x2000 } else { 0 }) | (offset_units & 0x1fff);
    ip[6..8].copy_from_slice(&frags.to_be_bytes());
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = csum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    frame
}

/// An IPv4 frame of protocol `proto` with `l4` as its payload as given (no checksum work).
pub fn ipv4_raw(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

/// An ICMP error (`ty`/`code`, e.g. 3/4 "fragmentation needed") from `src` to `dst` quoting the
/// IP header and first 8 transport bytes of `quoted` (an [`ipv4`] frame), as routers send them.
pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut l4 = vec![ty, code, 0, 0, 0, 0, 0x05, 0xdc]; // next-hop MTU 1500 for 3/4
    l4.extend_from_slice(&quoted[14..14 + 28]);
    let c = csum(&l4);
    l4[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4_raw(src, dst, ICMP, &l4)
}

/// What an ICMP error in `f` quotes, after a program rewrote it.
#[derive(Debug)]
pub struct QuotedView {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// The quoted IP header's checksum is valid.
    pub ip_csum_ok: bool,
    /// The ICMP checksum over the whole message is valid.
    pub icmp_csum_ok: bool,
}

pub fn quoted(f: &[u8]) -> QuotedView {
    let icmp = &f[34..];
    let q = &icmp[8..];
    QuotedView {
        src: Ipv4Addr::new(q[12], q[13], q[14], q[15]),
        dst: Ipv4Addr::new(q[16], q[17], q[18], q[19]),
        sport: u16::from_be_bytes([q[20], q[21]]),
        dport: u16::from_be_bytes([q[22], q[23]]),
        ip_csum_ok: csum(&q[..20]) == 0,
        icmp_csum_ok: csum(icmp) == 0,
    }
}
