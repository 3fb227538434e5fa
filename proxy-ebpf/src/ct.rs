//! Connection tracking for translated flows, in the LRU hash `SL_CT`.
//!
//! A new flow to a service creates two entries: one keyed by the tuple the
//! client sent (direction `CT_DIR_SERVICE`: which backend the flow uses) and
//! one keyed by the tuple the backend replies with (`CT_DIR_REPLY`: which
//! frontend to restore). Both carry the backend id and the reverse-NAT index.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use proxy_common::{
    CT_DIR_REPLY, CT_DIR_SERVICE, CT_FLAG_HAIRPIN, CtEntry, CtKey, DropReason, HAIRPIN_ADDR,
};

/// `HAIRPIN_ADDR` as stored in packets and maps.
#[inline(always)]
pub fn hairpin_addr() -> u32 {
    u32::from_ne_bytes(HAIRPIN_ADDR)
}

use crate::maps::SL_CT;

#[inline(always)]
pub fn key(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8, dir: u8) -> CtKey {
    CtKey { saddr, daddr, sport, dport, proto, dir, _pad: [0; 2] }
}

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<CtEntry> {
    // SAFETY: CtEntry is plain data; we copy it out at once.
    unsafe { SL_CT.get(key) }.copied()
}

/// Records a new (or re-balanced) flow in both directions. Fails closed: a
/// flow that cannot be tracked cannot be reverse-translated, so it is dropped.
/// For a hairpinned flow the backend replies to `HAIRPIN_ADDR`, so that is
/// the reply entry's destination.
#[inline(always)]
pub fn create(
    client: (u32, u16),
    frontend: (u32, u16),
    backend: (u32, u16),
    proto: u8,
    backend_id: u32,
    rev_nat_index: u32,
    hairpin: bool,
) -> Result<(), DropReason> {
    let entry = CtEntry {
        backend_id,
        rev_nat_index,
        flags: if hairpin { CT_FLAG_HAIRPIN } else { 0 },
        _pad: 0,
        // SAFETY: a plain helper call.
        created_ns: unsafe { bpf_ktime_get_ns() },
    };
    let fwd = key(client.0, frontend.0, client.1, frontend.1, proto, CT_DIR_SERVICE);
    let reply_to = if hairpin { hairpin_addr() } else { client.0 };
    let rev = key(backend.0, reply_to, backend.1, client.1, proto, CT_DIR_REPLY);
    SL_CT.insert(&rev, &entry, 0).map_err(|_| DropReason::CtCreateFailed)?;
    SL_CT.insert(&fwd, &entry, 0).map_err(|_| DropReason::CtCreateFailed)
}
