//! Forwarding by FIB lookup and redirect, for packets the stack must not
//! route itself: after a NodePort's reverse translation a reply's source is
//! one of the node's own addresses, which the stack drops as a martian on
//! input; a request SNATed to the node address likewise. The redirect also
//! saves the stack's routing of the packet.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use proxy_common::DropReason;

use crate::drop::Action;

const AF_INET: u8 = 2;

/// Sends the (already translated) packet from `saddr` to `daddr` out of the
/// interface the FIB chooses, with the neighbour's MAC; `Action::Pass` when
/// the FIB has no answer the redirect can use (the stack then decides).
#[inline(always)]
pub fn redirect(ctx: &TcContext, proto: u8, saddr: u32, daddr: u32) -> Result<Action, DropReason> {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    // SAFETY: reading our skb's ingress interface.
    params.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    params.__bindgen_anon_3.ipv4_src = saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: a helper call with a pointer to our own stack buffer.
    let rc = unsafe {
        fib_lookup(ctx.as_ptr(), &mut params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0)
    };
    let verdict = if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        let mut macs = [0u8; 12];
        macs[0..6].copy_from_slice(&params.dmac);
        macs[6..12].copy_from_slice(&params.smac);
        ctx.store(0, &macs, 0).map_err(|_| DropReason::NatFailed)?;
        // SAFETY: a plain helper call.
        unsafe { bpf_redirect(params.ifindex, 0) }
    } else if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        // SAFETY: a plain helper call; the kernel resolves the neighbour.
        unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) }
    } else {
        return Ok(Action::Pass);
    };
    if verdict == i64::from(TC_ACT_REDIRECT) {
        Ok(Action::Redirect(TC_ACT_REDIRECT as i32))
    } else {
        Ok(Action::Pass)
    }
}
