//! Address and port rewrites with incremental checksum updates (RFC 1624
//! through the kernel's csum helpers). The L4 checksum covers the pseudo
//! header, so address changes update it with `BPF_F_PSEUDO_HDR`; a UDP
//! checksum of zero ("none") is kept zero (`BPF_F_MARK_MANGLED_0`).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use proxy_common::{DropReason, proto};

use crate::parse::{self, Frag, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, Ipv4};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Source address and port (reverse NAT of replies).
    Source,
    /// Destination address and port (service DNAT).
    Destination,
}

/// Rewrites one side of a TCP/UDP packet from (`old_addr`, `old_port`) to
/// (`new_addr`, `new_port`), all raw (network byte order). For a later
/// fragment only the address is rewritten: it has no L4 header.
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    ip: &Ipv4,
    side: Side,
    old: (u32, u16),
    new: (u32, u16),
) -> Result<(), DropReason> {
    let (addr_off, port_off) = match side {
        Side::Source => (IP_SADDR_OFF, 0),
        Side::Destination => (IP_DADDR_OFF, 2),
    };
    if ip.frag != Frag::Later
        && let Some(csum_off) = parse::l4_csum_off(ip.proto)
    {
        let csum_at = ip.l4_off + csum_off;
        let mangled = if ip.proto == proto::UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 };
        if old.0 != new.0 {
            ctx.l4_csum_replace(
                csum_at,
                u64::from(old.0),
                u64::from(new.0),
                u64::from(BPF_F_PSEUDO_HDR) | mangled | 4,
            )
            .map_err(|_| DropReason::NatFailed)?;
        }
        if old.1 != new.1 {
            ctx.l4_csum_replace(csum_at, u64::from(old.1), u64::from(new.1), mangled | 2)
                .map_err(|_| DropReason::NatFailed)?;
            ctx.store(ip.l4_off + port_off, &new.1, 0).map_err(|_| DropReason::NatFailed)?;
        }
    }
    if old.0 != new.0 {
        rewrite_l3_addr(ctx, ip.l3_off, addr_off, old.0, new.0)?;
    }
    Ok(())
}

/// Replaces an address in an IPv4 header at `l3_off` and fixes its header
/// checksum.
#[inline(always)]
pub fn rewrite_l3_addr(
    ctx: &TcContext,
    l3_off: usize,
    addr_off: usize,
    old: u32,
    new: u32,
) -> Result<(), DropReason> {
    ctx.l3_csum_replace(l3_off + IP_CSUM_OFF, u64::from(old), u64::from(new), 4)
        .map_err(|_| DropReason::NatFailed)?;
    ctx.store(l3_off + addr_off, &new, 0).map_err(|_| DropReason::NatFailed)
}
