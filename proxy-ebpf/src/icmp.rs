//! ICMP errors about translated flows.
//!
//! When a backend (or a router on the way back) answers a translated packet
//! with an ICMP error (destination/port unreachable, time exceeded,
//! parameter problem), the embedded packet is the one the client's flow had
//! after DNAT: client -> backend. The client only knows client -> frontend,
//! so the error is translated: the embedded destination address and port
//! become the frontend's, the embedded IP checksum and the ICMP checksum are
//! updated, and the outer source becomes the frontend when it was the
//! backend. (The embedded L4 checksum is left as is; receivers do not check
//! it, and a truncated quote may not even hold it.)

use aya_ebpf::programs::TcContext;
use proxy_common::{CT_DIR_REPLY, DropReason, proto};

use crate::{
    ct,
    maps::SL_REVNAT,
    nat,
    parse::{self, Frag, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, Ipv4},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
const ICMP_HDR_LEN: usize = 8;
const ICMP_CSUM_OFF: usize = 2;

#[inline(always)]
pub fn handle_error_from_backend(ctx: &TcContext, ip: &Ipv4) -> Result<(), DropReason> {
    if ip.frag != Frag::No {
        return Ok(());
    }
    let Ok(ty) = parse::read::<u8>(ctx, ip.l4_off) else {
        return Ok(());
    };
    if !matches!(ty, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB) {
        return Ok(());
    }
    let inner_off = ip.l4_off + ICMP_HDR_LEN;
    // A quote too short to identify a flow is not ours to judge.
    let Ok(inner) = parse::read::<[u32; 5]>(ctx, inner_off) else {
        return Ok(());
    };
    let b0 = inner[0].to_ne_bytes();
    let ihl = (b0[0] & 0x0f) as usize;
    let inner_proto = inner[2].to_ne_bytes()[1];
    if ihl < 5 || !matches!(inner_proto, proto::TCP | proto::UDP) {
        return Ok(());
    }
    let inner_saddr = inner[3];
    let inner_daddr = inner[4];
    let inner_l4 = inner_off + ihl * 4;
    let Ok(ports) = parse::read::<[u16; 2]>(ctx, inner_l4) else {
        return Ok(());
    };
    let (inner_sport, inner_dport) = (ports[0], ports[1]);

    // The quoted packet went client -> backend; its flow's reply entry is
    // keyed backend -> client.
    let rkey =
        ct::key(inner_daddr, inner_saddr, inner_dport, inner_sport, inner_proto, CT_DIR_REPLY);
    let Some(entry) = ct::lookup(&rkey) else {
        return Ok(());
    };
    // SAFETY: plain data, copied out at once.
    let Some(rn) = (unsafe { SL_REVNAT.get(entry.rev_nat_index) }).copied() else {
        // The service is gone: the client would get an error about an
        // address it never used. Drop it, counted.
        return Err(DropReason::IcmpErrorUntranslatable);
    };

    // The address the client used: a NodePort's is the node address (the
    // reverse-NAT entry of a NodePort holds none).
    let frontend = entry.frontend_addr;
    let icmp_csum = ip.l4_off + ICMP_CSUM_OFF;
    let fail = |_| DropReason::IcmpErrorUntranslatable;

    // Embedded destination address, with the embedded IP checksum; the ICMP
    // checksum covers both fields, so it follows both deltas.
    let old_inner_csum: u16 = parse::read(ctx, inner_off + IP_CSUM_OFF)?;
    ctx.l3_csum_replace(inner_off + IP_CSUM_OFF, u64::from(inner_daddr), u64::from(frontend), 4)
        .map_err(fail)?;
    let new_inner_csum: u16 = parse::read(ctx, inner_off + IP_CSUM_OFF)?;
    ctx.l4_csum_replace(icmp_csum, u64::from(inner_daddr), u64::from(frontend), 4).map_err(fail)?;
    ctx.l4_csum_replace(icmp_csum, u64::from(old_inner_csum), u64::from(new_inner_csum), 2)
        .map_err(fail)?;
    ctx.store(inner_off + IP_DADDR_OFF, &frontend, 0).map_err(fail)?;

    // Embedded destination port.
    if inner_dport != rn.port {
        ctx.l4_csum_replace(icmp_csum, u64::from(inner_dport), u64::from(rn.port), 2)
            .map_err(fail)?;
        ctx.store(inner_l4 + 2, &rn.port, 0).map_err(fail)?;
    }

    // Outer source: the backend itself sent the error.
    if ip.saddr == inner_daddr {
        nat::rewrite_l3_addr(ctx, ip.l3_off, IP_SADDR_OFF, ip.saddr, frontend)?;
    }
    Ok(())
}
