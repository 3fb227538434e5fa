//! Socket-level load balancing: cgroup hooks that pick the backend when a
//! socket connects (TCP, connected UDP) or sends (unconnected UDP), so the
//! flow's packets need no per-packet translation at all, and that show the
//! frontend again where the application looks at the peer (recvmsg source
//! address, getpeername).
//!
//! Services with session affinity or `loadBalancerSourceRanges` are left to
//! the per-packet path (the client's address is not known before the socket
//! is bound); so are protocols other than TCP and UDP.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use proxy_common::{
    SVC_FLAG_AFFINITY, SVC_FLAG_DROP_EMPTY, SVC_FLAG_SOURCE_RANGES, SockRevNat, SockRevNatKey,
    proto,
};

use crate::{
    lb,
    maps::{SL_SOCK_REVNAT, SL_VIPS},
    stats,
};

/// Allow the operation (possibly rewritten).
const ALLOW: i32 = 1;
/// Deny it; with `bpf_set_retval` the error the application sees.
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// connect4 and sendmsg4: rewrite a frontend destination to a backend.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid bpf_sock_addr.
    let (proto, daddr, dport) =
        unsafe { ((*sa).protocol as u8, (*sa).user_ip4, (*sa).user_port as u16) };
    if !matches!(proto, proto::TCP | proto::UDP) {
        return ALLOW;
    }
    let Some((svc, svc_addr)) = lb::lookup_service(daddr, dport, proto, lb::Origin::Node) else {
        if SL_VIPS.get_ptr(daddr).is_some() {
            return refuse();
        }
        return ALLOW;
    };
    if svc.flags & (SVC_FLAG_AFFINITY | SVC_FLAG_SOURCE_RANGES) != 0 {
        return ALLOW;
    }
    let (backend_id, backend) = match lb::select_backend(svc_addr, dport, proto, &svc) {
        Ok(Some(picked)) => picked,
        // A Local policy without local endpoint: the packet path drops it.
        Ok(None) if svc.flags & SVC_FLAG_DROP_EMPTY != 0 => return ALLOW,
        Ok(None) => return refuse(),
        // Mid-update: leave it to the per-packet path.
        Err(_) => return ALLOW,
    };
    // SAFETY: plain helper call on our context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rkey = SockRevNatKey { cookie, addr: backend.addr, port: backend.port, _pad: 0 };
    let rval = SockRevNat { addr: daddr, port: dport, _pad: 0, rev_nat_index: svc.rev_nat_index };
    if SL_SOCK_REVNAT.insert(&rkey, &rval, 0).is_err() {
        // Without the reverse entry the application would see the backend
        // as its peer: let the per-packet path translate instead.
        return ALLOW;
    }
    // SAFETY: writing the destination of this socket operation.
    unsafe {
        (*sa).user_ip4 = backend.addr;
        (*sa).user_port = u32::from(backend.port);
    }
    stats::socket_flow(svc.rev_nat_index, backend_id);
    ALLOW
}

/// recvmsg4 and getpeername4: show the frontend instead of the backend.
#[inline(always)]
pub fn to_frontend(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid bpf_sock_addr.
    let (addr, port) = unsafe { ((*sa).user_ip4, (*sa).user_port as u16) };
    // SAFETY: plain helper call on our context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevNatKey { cookie, addr, port, _pad: 0 };
    // SAFETY: plain data, copied out at once.
    if let Some(rn) = unsafe { SL_SOCK_REVNAT.get(key) }.copied() {
        // SAFETY: writing the address this operation reports.
        unsafe {
            (*sa).user_ip4 = rn.addr;
            (*sa).user_port = u32::from(rn.port);
        }
    }
    ALLOW
}

#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: plain helper call; makes connect()/sendmsg() fail with
    // ECONNREFUSED instead of EPERM.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    DENY
}
