//! Forwarding: to a local pod (`bpf_redirect_peer`, or into its veth from an egress hook), into
//! the VXLAN tunnel, or by FIB lookup.
use core::mem;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, bpf_tunnel_key, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use weir_bpf_common::{DropReason, EndpointInfo};

use crate::parse::Ipv4;

const AF_INET: u8 = 2;

/// Rewrites the Ethernet addresses with direct packet access (no helper call on the fast path).
#[inline(always)]
fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), DropReason> {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return Err(DropReason::Malformed);
    }
    let eth = start as *mut [u8; 12];
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(dst);
    macs[6..].copy_from_slice(src);
    // SAFETY: bounds checked against data_end above; the verifier enforces the same.
    unsafe { eth.write_unaligned(macs) };
    Ok(())
}

#[inline(always)]
fn redirect_result(ret: i64) -> Result<i32, DropReason> {
    if ret == TC_ACT_REDIRECT as i64 {
        Ok(TC_ACT_REDIRECT)
    } else {
        Err(DropReason::RewriteFailed)
    }
}

/// Deliver to a pod on this node: into the peer (pod side) of its host veth, skipping the
/// node's stack and the backlog queue.
#[inline(always)]
pub fn to_local_pod(ctx: &TcContext, ep: &EndpointInfo) -> Result<i32, DropReason> {
    set_macs(ctx, &ep.pod_mac, &ep.host_mac)?;
    // SAFETY: plain helper call with scalar arguments.
    redirect_result(unsafe { bpf_redirect_peer(ep.ifindex, 0) })
}

/// Deliver to a pod on this node through the host side of its veth (from a tc egress hook, where
/// `bpf_redirect_peer` is not allowed): the veth hands it to the pod's side.
#[inline(always)]
pub fn into_pod_veth(ctx: &TcContext, ep: &EndpointInfo) -> Result<i32, DropReason> {
    set_macs(ctx, &ep.pod_mac, &ep.host_mac)?;
    // SAFETY: plain helper call with scalar arguments.
    redirect_result(unsafe { bpf_redirect(ep.ifindex, 0) })
}

/// Encapsulate towards `node_be` (network order) through the collect_metadata VXLAN device.
#[inline(always)]
pub fn to_tunnel(ctx: &TcContext, node_be: u32, vxlan_ifindex: u32, vni: u32) -> Result<i32, DropReason> {
    // SAFETY: bpf_tunnel_key is plain data; all-zero is a valid value.
    let mut key: bpf_tunnel_key = unsafe { mem::zeroed() };
    key.tunnel_id = vni;
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(node_be);
    key.tunnel_ttl = 64;
    // SAFETY: key lives on the stack for the call; the size matches the struct.
    let ret = unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, mem::size_of::<bpf_tunnel_key>() as u32, 0) };
    if ret != 0 {
        return Err(DropReason::RewriteFailed);
    }
    // SAFETY: plain helper call with scalar arguments.
    redirect_result(unsafe { bpf_redirect(vxlan_ifindex, 0) })
}

#[inline(always)]
fn fib_params(ip: &Ipv4, ifindex: u32) -> bpf_fib_lookup {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let mut p: bpf_fib_lookup = unsafe { mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = ip.proto;
    p.ifindex = ifindex;
    p.__bindgen_anon_3.ipv4_src = ip.saddr;
    p.__bindgen_anon_4.ipv4_dst = ip.daddr;
    p
}

/// A FIB lookup's answer, kept so one lookup serves both the decision and the send. Only what
/// the send needs is kept: this lives on the caller's stack across other calls.
pub struct Route {
    ret: i64,
    ifindex: u32,
    /// Next hop (for a neighbour lookup by the kernel), network order.
    nexthop: u32,
    dmac: [u8; 6],
    smac: [u8; 6],
}

impl Route {
    /// Looks `ip` up in the node's FIB as if it arrived on `ifindex`. Not inlined: the 64-byte
    /// lookup parameters stay off the callers' frames, which also hold the NAT paths' keys (the
    /// verifier caps the combined depth at 512 bytes).
    #[inline(never)]
    pub fn lookup(ctx: &TcContext, ip: &Ipv4, ifindex: u32) -> Self {
        let mut p = fib_params(ip, ifindex);
        // SAFETY: p lives on the stack for the call; the size matches the struct.
        let ret = unsafe { bpf_fib_lookup(ctx.skb.skb.cast(), &mut p, mem::size_of::<bpf_fib_lookup>() as i32, 0) };
        // SAFETY: reading the union member the FIB lookup filled for AF_INET.
        let nexthop = unsafe { p.__bindgen_anon_4.ipv4_dst };
        Self { ret, ifindex: p.ifindex, nexthop, dmac: p.dmac, smac: p.smac }
    }

    /// The FIB does not forward it: this node's own stack is the destination (or has no route).
    #[inline(always)]
    pub fn to_stack(&self) -> bool {
        self.ret == BPF_FIB_LKUP_RET_NOT_FWDED as i64
    }

    /// Hands the frame straight to the egress device; the kernel resolves the neighbour when
    /// the FIB has none yet. Not forwarded → the node's stack.
    #[inline(always)]
    pub fn send(&self, ctx: &TcContext) -> Result<i32, DropReason> {
        if self.ret == BPF_FIB_LKUP_RET_SUCCESS as i64 {
            set_macs(ctx, &self.dmac, &self.smac)?;
            // SAFETY: plain helper call with scalar arguments.
            return redirect_result(unsafe { bpf_redirect(self.ifindex, 0) });
        }
        if self.ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            // SAFETY: bpf_redir_neigh is plain data; all-zero is a valid value.
            let mut nh: bpf_redir_neigh = unsafe { mem::zeroed() };
            nh.nh_family = AF_INET as u32;
            nh.__bindgen_anon_1.ipv4_nh = self.nexthop;
            // SAFETY: nh lives on the stack for the call; the size matches the struct.
            return redirect_result(unsafe {
                bpf_redirect_neigh(self.ifindex, &mut nh, mem::size_of::<bpf_redir_neigh>() as i32, 0)
            });
        }
        if self.to_stack() {
            return Ok(aya_ebpf::bindings::TC_ACT_OK);
        }
        Err(DropReason::NoRoute)
    }
}
