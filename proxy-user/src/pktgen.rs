//! Test packets: Ethernet + IPv4 (with options and fragments) + TCP/UDP/ICMP/
//! SCTP frames with correct checksums, and parsing/verification of frames that
//! the kernel programs rewrote. Used by the BPF_PROG_TEST_RUN tests and
//! benchmarks; the checksum code is RFC 1071, written out so the tests do
//! not trust the code under test.

use std::net::Ipv4Addr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const SCTP: u8 = 132;

/// CRC32c (Castagnoli, reflected polynomial 0x82f63b78), bit by bit: the
/// SCTP checksum (RFC 9260, appendix A).
#[must_use]
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// An SCTP packet with one INIT chunk, its CRC32c set (stored little-endian
/// as RFC 9260 appendix A says).
#[must_use]
pub fn sctp_init(sport: u16, dport: u16, init_tag: u32) -> Vec<u8> {
    let mut s = Vec::with_capacity(32);
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in INIT
    s.extend_from_slice(&[0; 4]); // checksum, below
    // INIT: type 1, flags 0, length 20, tag, a_rwnd, streams, initial TSN.
    s.extend_from_slice(&[1, 0, 0, 20]);
    s.extend_from_slice(&init_tag.to_be_bytes());
    s.extend_from_slice(&65_535u32.to_be_bytes());
    s.extend_from_slice(&10u16.to_be_bytes());
    s.extend_from_slice(&10u16.to_be_bytes());
    s.extend_from_slice(&init_tag.to_be_bytes());
    let c = crc32c(&s);
    s[8..12].copy_from_slice(&c.to_le_bytes());
    s
}

/// One's-complement sum of `data` (RFC 1071), folded, not inverted.
#[must_use]
pub fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(u16::from_be_bytes([*last, 0]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// The Internet checksum of `data`.
#[must_use]
pub fn checksum(data: &[u8]) -> u16 {
    !(ones_sum(data, 0) as u16)
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    ones_sum(&p, 0)
}

/// What to put in a test IPv4 packet.
#[derive(Clone, Debug)]
pub struct Ipv4Spec {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub id: u16,
    /// IP options (padded to 4 bytes by the caller): IHL = 5 + len/4.
    pub options: Vec<u8>,
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
}

impl Ipv4Spec {
    #[must_use]
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Self {
            src,
            dst,
            proto,
            id: 0x1234,
            options: Vec::new(),
            more_fragments: false,
            frag_offset: 0,
        }
    }
}

/// An Ethernet frame around an IPv4 header and `l4` (already built).
#[must_use]
pub fn frame(ip: &Ipv4Spec, l4: &[u8]) -> Vec<u8> {
    assert_eq!(ip.options.len() % 4, 0, "options must be padded to 4 bytes");
    let ihl = 5 + ip.options.len() / 4;
    let total = ihl * 4 + l4.len();
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let flags_frag = (u16::from(ip.more_fragments) << 13) | ip.frag_offset;
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&ip.id.to_be_bytes());
    h.extend_from_slice(&flags_frag.to_be_bytes());
    h.extend_from_slice(&[64, ip.proto, 0, 0]);
    h.extend_from_slice(&ip.src.octets());
    h.extend_from_slice(&ip.dst.octets());
    h.extend_from_slice(&ip.options);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(l4);
    f
}

/// A TCP segment (20-byte header, given flags) with a valid checksum.
#[must_use]
pub fn tcp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&1000u32.to_be_bytes());
    s.extend_from_slice(&0u32.to_be_bytes());
    s.extend_from_slice(&[0x50, flags]);
    s.extend_from_slice(&65535u16.to_be_bytes());
    s.extend_from_slice(&[0, 0, 0, 0]);
    s.extend_from_slice(payload);
    let c = !(ones_sum(&s, pseudo_sum(src, dst, TCP, s.len())) as u16);
    s[16..18].copy_from_slice(&c.to_be_bytes());
    s
}

/// A UDP datagram; `with_checksum: false` leaves the checksum 0 ("none").
#[must_use]
pub fn udp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
    with_checksum: bool,
) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut s = Vec::with_capacity(len);
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&(len as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    if with_checksum {
        let mut c = !(ones_sum(&s, pseudo_sum(src, dst, UDP, len)) as u16);
        if c == 0 {
            c = 0xffff;
        }
        s[6..8].copy_from_slice(&c.to_be_bytes());
    }
    s
}

/// An ICMP error (type/code) quoting `quoted` (an IPv4 packet without Ethernet).
#[must_use]
pub fn icmp_error(ty: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut s = vec![ty, code, 0, 0, 0, 0, 0, 0];
    s.extend_from_slice(quoted);
    let c = checksum(&s);
    s[2..4].copy_from_slice(&c.to_be_bytes());
    s
}

/// A parsed IPv4 frame with its checksums verified by recomputation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// Source and destination port (TCP/UDP/SCTP, not for later fragments).
    pub ports: Option<(u16, u16)>,
    pub ip_checksum_ok: bool,
    /// `None` when there is no L4 checksum to verify (later fragment,
    /// first fragment (needs the whole datagram), UDP checksum 0).
    pub l4_checksum_ok: Option<bool>,
    pub udp_checksum_zero: bool,
    /// The IPv4 header length in bytes.
    pub ihl_bytes: usize,
}

/// Parses an Ethernet + IPv4 frame and verifies its checksums.
#[must_use]
pub fn parse(f: &[u8]) -> Parsed {
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let fragmented = frag & 0x3fff != 0;
    let later = frag & 0x1fff != 0;
    let proto = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let ip_checksum_ok = checksum(&ip[..ihl]) == 0;
    let l4 = &ip[ihl..total];
    let mut ports = None;
    let mut l4_checksum_ok = None;
    let mut udp_checksum_zero = false;
    if !later && matches!(proto, TCP | UDP) {
        ports = Some((u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])));
        udp_checksum_zero = proto == UDP && l4[6] == 0 && l4[7] == 0;
        if !fragmented && !udp_checksum_zero {
            l4_checksum_ok = Some(ones_sum(l4, pseudo_sum(src, dst, proto, l4.len())) == 0xffff);
        }
    } else if !later && proto == ICMP {
        l4_checksum_ok = Some(checksum(l4) == 0);
    } else if !later && proto == SCTP {
        ports = Some((u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])));
        if !fragmented {
            let mut zeroed = l4.to_vec();
            zeroed[8..12].fill(0);
            let stored = u32::from_le_bytes([l4[8], l4[9], l4[10], l4[11]]);
            l4_checksum_ok = Some(crc32c(&zeroed) == stored);
        }
    }
    Parsed {
        src,
        dst,
        proto,
        ports,
        ip_checksum_ok,
        l4_checksum_ok,
        udp_checksum_zero,
        ihl_bytes: ihl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_verify() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let p = parse(&frame(&Ipv4Spec::new(a, b, TCP), &tcp(a, 1, b, 2, 0x02, b"hi")));
        assert!(p.ip_checksum_ok);
        assert_eq!(p.l4_checksum_ok, Some(true));
        assert_eq!(p.ports, Some((1, 2)));
        let u = parse(&frame(&Ipv4Spec::new(a, b, UDP), &udp(a, 1, b, 2, b"odd", true)));
        assert_eq!(u.l4_checksum_ok, Some(true));
    }

    #[test]
    fn crc32c_matches_the_rfc_check_value_and_sctp_verifies() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let p = parse(&frame(&Ipv4Spec::new(a, b, SCTP), &sctp_init(5000, 9000, 7)));
        assert_eq!((p.proto, p.ports, p.l4_checksum_ok), (SCTP, Some((5000, 9000)), Some(true)));
    }

    #[test]
    fn a_flipped_byte_fails_verification() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let mut f = frame(&Ipv4Spec::new(a, b, TCP), &tcp(a, 1, b, 2, 0x02, b"hi"));
        f[14 + 16] ^= 1; // destination address
        let p = parse(&f);
        assert!(!p.ip_checksum_ok);
        assert_eq!(p.l4_checksum_ok, Some(false));
    }
}
