//! Who may claim which source. A packet's source address decides its identity, and so its
//! policy verdict and what the flow log says; these checks make sure nothing outside a pod's own
//! node can claim a pod's address.
//!
//! * From the tunnel (`weir_from_vxlan`): the outer source must be another node in `WEIR_NODES`
//!   (not this one), the VNI weir's, and the inner source that node's own address or inside the
//!   pod CIDR `WEIR_TUNNEL` gives it.
//! * From the wire unencapsulated (`weir_from_wire`): never this node's own address; in VXLAN
//!   mode never a cluster (pod) address, since pods' traffic between nodes is always tunnelled;
//!   with direct routing a cluster address only inside another node's pod CIDR. Which node sent
//!   it cannot be verified without a tunnel: direct routing trusts the underlay's L2 for that.
//! * From a pod: never to a node's tunnel port (only nodes encapsulate; a pod could otherwise
//!   hand-build a tunnel packet that its node masquerades to a trusted node address).
use aya_ebpf::{bindings::bpf_tunnel_key, helpers::bpf_skb_get_tunnel_key, maps::lpm_trie::Key, programs::TcContext};
use weir_bpf_common::{Addr16, DropReason};

use crate::{
    parse::{Ipv4, IPPROTO_UDP},
    WEIR_CLUSTER_V4_ADDR, WEIR_CLUSTER_V4_MASK, WEIR_NODES, WEIR_NODE_IPV4, WEIR_TUNNEL, WEIR_VXLAN_IFINDEX,
    WEIR_VXLAN_PORT, WEIR_VXLAN_VNI,
};

#[inline(always)]
fn in_cluster(addr_be: u32) -> bool {
    addr_be & WEIR_CLUSTER_V4_MASK.load() == WEIR_CLUSTER_V4_ADDR.load()
}

/// A node's underlay address (this node's included).
#[inline(always)]
pub fn is_node(addr_be: u32) -> bool {
    // SAFETY: read-only lookup of a plain-data value.
    unsafe { WEIR_NODES.get(addr_be) }.is_some()
}

/// The node whose pod CIDR holds `addr_be` (network order), if any.
#[inline(always)]
fn owner(addr_be: u32) -> Option<u32> {
    WEIR_TUNNEL.get(Key::new(128, Addr16::from_v4_be(addr_be))).map(|n| n.node_addr.v4_be())
}

/// An unencapsulated packet from the wire.
#[inline(always)]
pub fn verify_wire_source(ip: &Ipv4) -> Result<(), DropReason> {
    if ip.saddr == WEIR_NODE_IPV4.load() {
        return Err(DropReason::SpoofedSourceFromWire);
    }
    if !in_cluster(ip.saddr) {
        return Ok(());
    }
    if WEIR_VXLAN_IFINDEX.load() != 0 || owner(ip.saddr).is_none() {
        return Err(DropReason::SpoofedSourceFromWire);
    }
    Ok(())
}

/// A packet the VXLAN device decapsulated. Not inlined: the tunnel key stays off the caller's
/// frame.
#[inline(never)]
pub fn verify_decapsulated(ctx: &TcContext, ip: &Ipv4) -> Result<(), DropReason> {
    // SAFETY: bpf_tunnel_key is plain data; all-zero is a valid value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: key lives on the stack for the call; the size matches the struct.
    let ret =
        unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, core::mem::size_of::<bpf_tunnel_key>() as u32, 0) };
    if ret != 0 {
        return Err(DropReason::TunnelSourceInvalid);
    }
    if key.tunnel_id != WEIR_VXLAN_VNI.load() {
        return Err(DropReason::TunnelVniInvalid);
    }
    // SAFETY: the union member the kernel fills for an IPv4 tunnel (host order there).
    let outer = unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be();
    if outer == WEIR_NODE_IPV4.load() || !is_node(outer) {
        return Err(DropReason::TunnelSourceInvalid);
    }
    if ip.saddr != outer && owner(ip.saddr) != Some(outer) {
        return Err(DropReason::TunnelInnerSourceInvalid);
    }
    Ok(())
}

/// Pods may not send to a node's tunnel port (VXLAN mode).
#[inline(always)]
pub fn refuse_tunnel_port(ctx: &TcContext, ip: &Ipv4) -> Result<(), DropReason> {
    if ip.proto != IPPROTO_UDP || ip.later_fragment() || WEIR_VXLAN_IFINDEX.load() == 0 {
        return Ok(());
    }
    let dport: u16 = ctx.load(ip.l4_off + 2).map_err(|_| DropReason::Malformed)?;
    if u32::from(u16::from_be(dport)) == WEIR_VXLAN_PORT.load() && is_node(ip.daddr) {
        return Err(DropReason::TunnelPortFromPod);
    }
    Ok(())
}
