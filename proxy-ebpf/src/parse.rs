//! Header parsing. Offsets are from the start of the Ethernet frame; every
//! read is bounds-checked by the kernel's load helper.

use aya_ebpf::programs::TcContext;
use proxy_common::DropReason;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// IPv4 "more fragments" flag and fragment offset mask (host order).
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// Offsets inside the IPv4 header.
pub const IP_CSUM_OFF: usize = 10;
pub const IP_SADDR_OFF: usize = 12;
pub const IP_DADDR_OFF: usize = 16;

/// Where a packet stands in fragmentation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment.
    No,
    /// The first fragment (offset 0, more fragments follow): has the L4 header.
    First,
    /// A later fragment: no L4 header.
    Later,
}

/// The parts of an IPv4 packet the programs work with. Addresses and the id
/// are raw (network byte order).
#[derive(Clone, Copy)]
pub struct Ipv4 {
    /// Offset of the IPv4 header (after Ethernet).
    pub l3_off: usize,
    /// Offset of the L4 header (honours IHL).
    pub l4_off: usize,
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    pub id: u16,
    pub frag: Frag,
}

/// Reads a `T` at `off` (bpf_skb_load_bytes: works on paged data too, and
/// keeps variable offsets, such as those after IP options, verifiable).
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, DropReason> {
    ctx.load::<T>(off).map_err(|_| DropReason::Truncated)
}

/// Parses Ethernet + IPv4. `Ok(None)` for anything that is not IPv4.
#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Result<Option<Ipv4>, DropReason> {
    let ethertype: u16 = match read(ctx, 12) {
        Ok(t) => t,
        // Shorter than an Ethernet header: not ours to judge.
        Err(_) => return Ok(None),
    };
    if ethertype != ETH_P_IP.to_be() {
        return Ok(None);
    }
    let l3_off = ETH_HLEN;
    let hdr: [u32; 5] = read(ctx, l3_off)?;
    let b0 = hdr[0].to_ne_bytes();
    let version_ihl = b0[0];
    if version_ihl >> 4 != 4 {
        return Err(DropReason::InvalidIpHeader);
    }
    let ihl = (version_ihl & 0x0f) as usize;
    if ihl < 5 {
        return Err(DropReason::InvalidIpHeader);
    }
    let tot_len = u16::from_be_bytes([b0[2], b0[3]]) as usize;
    if tot_len < ihl * 4 {
        return Err(DropReason::InvalidIpHeader);
    }
    let b1 = hdr[1].to_ne_bytes();
    let id = u16::from_ne_bytes([b1[0], b1[1]]);
    let frag_off = u16::from_be_bytes([b1[2], b1[3]]);
    let frag = if frag_off & IP_OFFSET != 0 {
        Frag::Later
    } else if frag_off & IP_MF != 0 {
        Frag::First
    } else {
        Frag::No
    };
    let proto = hdr[2].to_ne_bytes()[1];
    Ok(Some(Ipv4 {
        l3_off,
        l4_off: l3_off + ihl * 4,
        saddr: hdr[3],
        daddr: hdr[4],
        proto,
        id,
        frag,
    }))
}

/// Offset of the L4 checksum field from the start of the L4 header.
#[inline(always)]
pub fn l4_csum_off(proto: u8) -> Option<usize> {
    match proto {
        proxy_common::proto::TCP => Some(16),
        proxy_common::proto::UDP => Some(6),
        _ => None,
    }
}
