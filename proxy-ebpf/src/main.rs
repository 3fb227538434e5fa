//! sluice's kernel programs.
//!
//! One entry point per attach site (this file); the logic lives in
//! one-concern modules: `parse` (headers), `lb` (service lookup and backend
//! selection), `ct` (conntrack), `nat` (rewrites and checksums), `frag`
//! (IPv4 fragment tracking), `icmp` (ICMP errors of translated flows) and
//! `drop` (verdicts and drop counters), `sock` (socket-level LB), `fwd`
//! (fast paths: peer redirect and FIB forwarding of pod traffic).
#![no_std]
#![no_main]

mod affinity;
mod ct;
mod drop;
mod fib;
mod frag;
mod fwd;
mod icmp;
mod lb;
mod maps;
mod nat;
mod nodeport;
mod parse;
mod reject;
mod sock;
mod stats;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};

/// tc ingress on the host side of each pod's veth: every packet a pod sends.
///
/// Requests from a pod to a service frontend are DNATed to a backend;
/// replies from a backend (which also leave a pod) are reverse-translated so
/// that the client sees the frontend.
#[classifier]
pub fn sl_pod_ingress(ctx: TcContext) -> i32 {
    drop::verdict(lb::handle_pod_egress(&ctx))
}

/// tc ingress on the node's external devices (`--devices`): NodePort,
/// externalIPs and LoadBalancer IPs, and replies of flows whose backend is
/// on another node.
#[classifier]
pub fn sl_ext_ingress(ctx: TcContext) -> i32 {
    drop::verdict(nodeport::handle_external(&ctx))
}

/// Socket-level LB: connect() of TCP and UDP sockets in the cgroup.
#[cgroup_sock_addr(connect4)]
pub fn sl_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

/// Socket-level LB: sendto()/sendmsg() of unconnected UDP sockets.
#[cgroup_sock_addr(sendmsg4)]
pub fn sl_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

/// Socket-level LB: the source address recvfrom()/recvmsg() report.
#[cgroup_sock_addr(recvmsg4)]
pub fn sl_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx)
}

/// Socket-level LB: the peer getpeername() reports.
#[cgroup_sock_addr(getpeername4)]
pub fn sl_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::to_frontend(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
