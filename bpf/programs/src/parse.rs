//! Header parsing with bounds-checked skb loads (network-types for the layouts).
use aya_ebpf::programs::TcContext;
use network_types::{eth::EthHdr, ip::Ipv4Hdr};
use weir_bpf_common::DropReason;

/// EtherTypes in network byte order, as loaded from the frame into a native u16.
pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_ARP: u16 = 0x0806u16.to_be();

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const L3_OFF: usize = EthHdr::LEN;
/// Offsets inside the IPv4 header.
pub const IP_CSUM_OFF: usize = L3_OFF + 10;
pub const IP_SADDR_OFF: usize = L3_OFF + 12;
pub const IP_DADDR_OFF: usize = L3_OFF + 16;

#[inline(always)]
pub fn eth_proto(ctx: &TcContext) -> Result<u16, DropReason> {
    ctx.load::<u16>(12).map_err(|_| DropReason::Malformed)
}

/// The IPv4 fields the datapath decides on. Addresses are network order in a native u32.
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
    /// True for any fragment (first or later).
    pub fragment: bool,
    /// Fragment offset in 8-byte units (0 for the first fragment and unfragmented packets).
    pub frag_off: u16,
    /// The IP identification field, as in the packet (names a datagram's fragments).
    pub id_be: u16,
}

impl Ipv4 {
    /// A fragment after the first: it carries no transport header.
    #[inline(always)]
    pub fn later_fragment(&self) -> bool {
        self.frag_off != 0
    }

    /// The first fragment of a fragmented datagram: the transport header, more to come.
    #[inline(always)]
    pub fn first_fragment(&self) -> bool {
        self.fragment && self.frag_off == 0
    }
}

impl Ipv4 {
    #[inline(always)]
    pub fn parse(ctx: &TcContext) -> Result<Self, DropReason> {
        let hdr: Ipv4Hdr = ctx.load(L3_OFF).map_err(|_| DropReason::Malformed)?;
        let ihl = hdr.ihl() as usize;
        if hdr.version() != 4 || ihl < Ipv4Hdr::LEN {
            return Err(DropReason::Malformed);
        }
        let frags = u16::from_be_bytes(hdr.frags);
        Ok(Self {
            saddr: u32::from_ne_bytes(hdr.src_addr),
            daddr: u32::from_ne_bytes(hdr.dst_addr),
            proto: hdr.proto,
            l4_off: L3_OFF + (ihl & 0x3c),
            // MF flag or a non-zero offset.
            fragment: frags & 0x3fff != 0,
            frag_off: frags & 0x1fff,
            id_be: u16::from_ne_bytes(hdr.id),
        })
    }
}
