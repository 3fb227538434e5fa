//! IPv4 fragments. The first fragment of a datagram carries the L4 header;
//! its ports are recorded in `SL_FRAGS` under (saddr, daddr, id, proto) so
//! that later fragments, which carry no ports, go through the same conntrack
//! lookup and get the same translation (addresses only: the L4 checksum sits
//! in the first fragment). A later fragment whose first fragment was never
//! seen is passed untouched: it cannot be attributed to a flow.

use aya_ebpf::programs::TcContext;
use proxy_common::{DropReason, FragKey, FragPorts};

use crate::{
    maps::SL_FRAGS,
    parse::{self, Frag, Ipv4},
};

/// The (source, destination) ports of a TCP or UDP packet, raw. `None` for
/// a later fragment that cannot be attributed.
#[inline(always)]
pub fn ports(ctx: &TcContext, ip: &Ipv4) -> Result<Option<(u16, u16)>, DropReason> {
    match ip.frag {
        Frag::No => Ok(Some(read_ports(ctx, ip)?)),
        Frag::First => {
            let (sport, dport) = read_ports(ctx, ip)?;
            // Best effort: if it cannot be recorded, later fragments pass
            // untranslated, as if untracked.
            let _ = SL_FRAGS.insert(key(ip), FragPorts { sport, dport }, 0);
            Ok(Some((sport, dport)))
        }
        Frag::Later => {
            // SAFETY: FragPorts is plain data; a racing update yields either
            // the old or the new ports of the same datagram.
            Ok(unsafe { SL_FRAGS.get(key(ip)) }.map(|p| (p.sport, p.dport)))
        }
    }
}

#[inline(always)]
fn read_ports(ctx: &TcContext, ip: &Ipv4) -> Result<(u16, u16), DropReason> {
    let ports: [u16; 2] = parse::read(ctx, ip.l4_off)?;
    Ok((ports[0], ports[1]))
}

#[inline(always)]
fn key(ip: &Ipv4) -> FragKey {
    FragKey { saddr: ip.saddr, daddr: ip.daddr, id: ip.id, proto: ip.proto, _pad: 0 }
}
