//! Fast paths for TCP/UDP traffic leaving pods, after service translation
//! (the conntrack and NAT decisions are made before and do not depend on
//! them):
//!
//! - to a pod of this node (an `SL_ENDPOINTS` entry the CNI wrote): the
//!   MACs are rewritten as the node's stack would (source: the destination's
//!   host veth, destination: the pod) and `bpf_redirect_peer` hands the
//!   packet to the pod's `eth0` ingress, skipping the node's stack (and its
//!   netfilter hooks) and the host veth's transmit;
//! - to anything else inside the cluster's pod space (`SL_POD_CIDRS`): a FIB
//!   lookup, then `bpf_redirect` with the FIB's MACs, or `bpf_redirect_neigh`
//!   when the FIB knows no neighbour yet. A FIB answer the redirect cannot
//!   serve (local delivery, blackhole, unreachable, prohibited, forwarding
//!   off on the pod's interface, a packet larger than the route's MTU) leaves
//!   the packet to the stack, which answers as it would without the fast
//!   path. Destinations outside the pod space always go through the stack:
//!   its nftables table masquerades them;
//! - arriving on an external device (`deliver_local`, from the external
//!   program) for a pod of this node without service translation (another
//!   node's pod talking to it): peer redirect as above.
//!
//! Both decrement the TTL as the stack's forwarding does (a packet whose TTL
//! would expire goes to the stack, which sends the ICMP error), fixing the
//! IPv4 header checksum incrementally. The L4 checksum is untouched here;
//! a `CHECKSUM_PARTIAL` packet from a pod stays partial: a peer redirect
//! delivers it to a local socket (which accepts it as verified, as after a
//! veth transmit), a device redirect completes it on transmit. GSO packets
//! keep their segmentation; the FIB's MTU check applies to their segments.
//! Each decision is counted in `SL_FWD_STATS`. `SL_CONFIG` switches the two
//! paths on and off (`--fast-path`); off, every packet takes the stack.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, bpf_fib_lookup,
        bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use proxy_common::{
    CFG_FAST_PATH_FIB, CFG_FAST_PATH_PEER, DropReason, EndpointInfo, FWD_FIB, FWD_NEIGH, FWD_PEER,
    FWD_STACK,
};

use crate::{
    drop::Action,
    maps::{SL_CONFIG, SL_ENDPOINTS, SL_FWD_STATS, SL_POD_CIDRS},
    parse::{IP_CSUM_OFF, Ipv4},
};

const AF_INET: u8 = 2;
/// Offset of the TTL (followed by the protocol) in the IPv4 header.
const IP_TTL_OFF: usize = 8;
/// Offset of the total length in the IPv4 header.
const IP_TOT_LEN_OFF: usize = 2;

/// Delivers a translated packet from `saddr` to `daddr` by the fastest path
/// the configuration allows, or `Action::Pass` for the stack.
#[inline(always)]
pub fn forward(ctx: &TcContext, ip: &Ipv4, saddr: u32, daddr: u32) -> Result<Action, DropReason> {
    let flags = SL_CONFIG.get(0).map_or(0, |c| c.flags);
    if flags & (CFG_FAST_PATH_PEER | CFG_FAST_PATH_FIB) == 0 {
        return Ok(Action::Pass);
    }
    if flags & CFG_FAST_PATH_PEER != 0 {
        // SAFETY: plain data, copied out at once.
        if let Some(ep) = unsafe { SL_ENDPOINTS.get(daddr) }.copied() {
            return peer(ctx, ip, &ep);
        }
    }
    if flags & CFG_FAST_PATH_FIB == 0 || !in_pod_cidrs(daddr) {
        return Ok(Action::Pass);
    }
    fib_forward(ctx, ip, saddr, daddr)
}

/// For a packet that arrived on an external device (from another node, or
/// from outside): to a pod of this node it is delivered by peer redirect,
/// as the stack would route it; anything else is the stack's.
#[inline(always)]
pub fn deliver_local(ctx: &TcContext, ip: &Ipv4) -> Result<Action, DropReason> {
    let flags = SL_CONFIG.get(0).map_or(0, |c| c.flags);
    if flags & CFG_FAST_PATH_PEER == 0 {
        return Ok(Action::Pass);
    }
    // SAFETY: plain data, copied out at once.
    match unsafe { SL_ENDPOINTS.get(ip.daddr) }.copied() {
        Some(ep) => peer(ctx, ip, &ep),
        None => Ok(Action::Pass),
    }
}

/// Hands the packet to the pod of `ep` (its `eth0` ingress).
#[inline(always)]
fn peer(ctx: &TcContext, ip: &Ipv4, ep: &EndpointInfo) -> Result<Action, DropReason> {
    if ep.ifindex == 0 || !decrement_ttl(ctx, ip)? {
        return stack();
    }
    let mut macs = [0u8; 12];
    macs[0..6].copy_from_slice(&ep.mac);
    macs[6..12].copy_from_slice(&ep.node_mac);
    ctx.store(0, &macs, 0).map_err(|_| DropReason::NatFailed)?;
    // SAFETY: a plain helper call.
    let verdict = unsafe { bpf_redirect_peer(ep.ifindex, 0) };
    redirected(verdict, FWD_PEER)
}

/// FIB lookup and redirect out of the interface it names.
#[inline(always)]
fn fib_forward(ctx: &TcContext, ip: &Ipv4, saddr: u32, daddr: u32) -> Result<Action, DropReason> {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = ip.proto;
    // SAFETY: reading our skb's fields.
    let (ifindex, gso_size) = unsafe { ((*ctx.skb.skb).ingress_ifindex, (*ctx.skb.skb).gso_size) };
    params.ifindex = ifindex;
    // The FIB checks the route's MTU against the length of the packets that
    // will be sent: the packet itself, or for a GSO packet each segment
    // (headers plus `gso_size`). Too big: the stack answers (ICMP
    // "fragmentation needed", PMTU discovery) as it would.
    let tot_len = if gso_size == 0 {
        u16::from_be(crate::parse::read::<u16>(ctx, ip.l3_off + IP_TOT_LEN_OFF)?)
    } else {
        let l4_hdr = if ip.proto == proxy_common::proto::TCP {
            usize::from(crate::parse::read::<u8>(ctx, ip.l4_off + 12)? >> 4) * 4
        } else {
            8
        };
        (ip.l4_off - ip.l3_off + l4_hdr) as u16 + gso_size as u16
    };
    params.__bindgen_anon_1.tot_len = tot_len;
    params.__bindgen_anon_3.ipv4_src = saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: a helper call with a pointer to our own stack buffer.
    let rc = unsafe {
        fib_lookup(ctx.as_ptr(), &mut params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0)
    };
    if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        if !decrement_ttl(ctx, ip)? {
            return stack();
        }
        let mut macs = [0u8; 12];
        macs[0..6].copy_from_slice(&params.dmac);
        macs[6..12].copy_from_slice(&params.smac);
        ctx.store(0, &macs, 0).map_err(|_| DropReason::NatFailed)?;
        // SAFETY: a plain helper call.
        let verdict = unsafe { bpf_redirect(params.ifindex, 0) };
        return redirected(verdict, FWD_FIB);
    }
    if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        if !decrement_ttl(ctx, ip)? {
            return stack();
        }
        // The FIB's next hop (the gateway, or the destination itself on a
        // link route): the kernel resolves its neighbour and sends.
        // SAFETY: plain data; all-zero is a valid value.
        let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        nh.nh_family = u32::from(AF_INET);
        // SAFETY: writing a union field of our own stack value.
        unsafe { nh.__bindgen_anon_1.ipv4_nh = params.__bindgen_anon_4.ipv4_dst };
        // SAFETY: a helper call with a pointer to our own stack buffer.
        let verdict = unsafe {
            bpf_redirect_neigh(
                params.ifindex,
                &mut nh,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        };
        return redirected(verdict, FWD_NEIGH);
    }
    stack()
}

/// Whether `daddr` lies in the cluster's pod address space.
#[inline(never)]
fn in_pod_cidrs(daddr: u32) -> bool {
    SL_POD_CIDRS.get(&Key::new(32, daddr)).is_some()
}

/// Decrements the TTL and fixes the header checksum; `false` (packet
/// untouched) when the TTL would reach 0: the stack sends "time exceeded".
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, ip: &Ipv4) -> Result<bool, DropReason> {
    let old: [u8; 2] = crate::parse::read(ctx, ip.l3_off + IP_TTL_OFF)?;
    if old[0] <= 1 {
        return Ok(false);
    }
    let new = [old[0] - 1, old[1]];
    ctx.l3_csum_replace(
        ip.l3_off + IP_CSUM_OFF,
        u64::from(u16::from_ne_bytes(old)),
        u64::from(u16::from_ne_bytes(new)),
        2,
    )
    .map_err(|_| DropReason::NatFailed)?;
    ctx.store(ip.l3_off + IP_TTL_OFF, &new[0], 0).map_err(|_| DropReason::NatFailed)?;
    Ok(true)
}

/// The verdict of a redirect helper, counted under `slot`.
#[inline(always)]
fn redirected(verdict: i64, slot: u32) -> Result<Action, DropReason> {
    if verdict == i64::from(TC_ACT_REDIRECT) {
        count(slot);
        Ok(Action::Redirect(TC_ACT_REDIRECT as i32))
    } else {
        // Only bad flags or arguments fail, which these calls never pass;
        // the stack would still deliver the (already forwarded) packet.
        stack()
    }
}

/// Left to the stack although a fast path is on.
#[inline(always)]
fn stack() -> Result<Action, DropReason> {
    count(FWD_STACK);
    Ok(Action::Pass)
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = SL_FWD_STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot, only this CPU writes it while we run.
        unsafe { *c += 1 };
    }
}
