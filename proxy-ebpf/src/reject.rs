//! Rejecting a packet the way kube-proxy does: an ICMP destination
//! unreachable (port unreachable) sent back to the client, so that a TCP
//! connect() fails at once with ECONNREFUSED and a connected UDP socket gets
//! ECONNREFUSED too, instead of a silent timeout.
//!
//! The packet itself is turned into the ICMP error (RFC 792: the original
//! IP header plus the first 8 bytes of its payload are quoted) and
//! redirected back out of the interface it came in on, i.e. into the pod.

use aya_ebpf::{
    EbpfContext as _,
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use proxy_common::DropReason;

use crate::parse::{self, ETH_HLEN, Frag, Ipv4};

const QUOTE_LEN: usize = 20 + 8;
const ICMP_LEN: usize = 8 + QUOTE_LEN;
const IP_LEN: usize = 20 + ICMP_LEN;
const FRAME_LEN: usize = ETH_HLEN + IP_LEN;

/// Replaces the packet by an ICMP port unreachable to its sender and
/// redirects it back. Returns the tc verdict. Packets that cannot be quoted
/// simply (IP options, later fragments) are dropped, counted under `reason`.
#[inline(always)]
pub fn port_unreachable(ctx: &TcContext, ip: &Ipv4, reason: DropReason) -> Result<i32, DropReason> {
    if ip.l4_off != ETH_HLEN + 20 || ip.frag == Frag::Later {
        return Err(reason);
    }
    let macs: [u8; 12] = parse::read(ctx, 0)?;
    let quote: [u8; QUOTE_LEN] = parse::read(ctx, ETH_HLEN)?;

    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&macs[6..12]);
    f[6..12].copy_from_slice(&macs[0..6]);
    f[12] = 0x08;
    f[13] = 0x00;
    let ip_hdr = ETH_HLEN;
    f[ip_hdr] = 0x45;
    f[ip_hdr + 2..ip_hdr + 4].copy_from_slice(&(IP_LEN as u16).to_be_bytes());
    f[ip_hdr + 8] = 64; // TTL
    f[ip_hdr + 9] = proxy_common::proto::ICMP;
    // From the address the client tried, to the client.
    f[ip_hdr + 12..ip_hdr + 16].copy_from_slice(&quote[16..20]);
    f[ip_hdr + 16..ip_hdr + 20].copy_from_slice(&quote[12..16]);
    let c = checksum(&f[ip_hdr..ip_hdr + 20]);
    f[ip_hdr + 10..ip_hdr + 12].copy_from_slice(&c.to_be_bytes());
    let icmp = ip_hdr + 20;
    f[icmp] = 3; // destination unreachable
    f[icmp + 1] = 3; // port unreachable
    f[icmp + 8..icmp + 8 + QUOTE_LEN].copy_from_slice(&quote);
    let c = checksum(&f[icmp..icmp + ICMP_LEN]);
    f[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());

    // SAFETY: plain helper calls on this program's own skb.
    unsafe {
        if bpf_skb_change_tail(ctx.as_ptr().cast(), FRAME_LEN as u32, 0) != 0 {
            return Err(reason);
        }
    }
    ctx.store(0, &f, 0).map_err(|_| reason)?;
    // SAFETY: reading the ingress interface index of our skb.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a plain helper call.
    let verdict = unsafe { bpf_redirect(ifindex, 0) };
    if verdict != i64::from(TC_ACT_REDIRECT) {
        return Err(reason);
    }
    Ok(TC_ACT_REDIRECT as i32)
}

/// The Internet checksum (RFC 1071) of an even-length buffer.
#[inline(always)]
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        sum += u32::from(u16::from_be_bytes([data[i], data[i + 1]]));
        i += 2;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
