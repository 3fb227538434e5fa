//! Per-service and per-backend traffic counters, in per-CPU hashes. Entries
//! are created and removed by the control plane together with their
//! frontend or backend; here they are only looked up (this CPU's copy) and
//! added to, so counting never allocates nor contends on the packet path.
//! A missing entry is skipped.

use aya_ebpf::maps::PerCpuHashMap;
use proxy_common::TrafficStats;

use crate::maps::{SL_BE_STATS, SL_SVC_STATS};

#[derive(Clone, Copy)]
pub enum Direction {
    /// Client to backend.
    Forward,
    /// Backend to client.
    Reverse,
}

/// Counts one translated packet of `len` bytes for its frontend and backend.
#[inline(always)]
pub fn account(rev_nat_index: u32, backend_id: u32, dir: Direction, len: u32, new_flow: bool) {
    add(&SL_SVC_STATS, rev_nat_index, dir, len, new_flow);
    add(&SL_BE_STATS, backend_id, dir, len, new_flow);
}

#[inline(always)]
fn add(map: &PerCpuHashMap<u32, TrafficStats>, key: u32, dir: Direction, len: u32, new_flow: bool) {
    let Some(s) = map.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: `s` is this CPU's copy of a live entry; only this CPU writes
    // it while the program runs (preemption is off).
    let s = unsafe { &mut *s };
    match dir {
        Direction::Forward => {
            s.fwd_packets += 1;
            s.fwd_bytes += u64::from(len);
        }
        Direction::Reverse => {
            s.rev_packets += 1;
            s.rev_bytes += u64::from(len);
        }
    }
    if new_flow {
        s.new_flows += 1;
    }
}

/// Counts a flow balanced at the socket level (its packets are never
/// translated, so only the flow is counted).
#[inline(always)]
pub fn socket_flow(rev_nat_index: u32, backend_id: u32) {
    for (map, key) in [(&SL_SVC_STATS, rev_nat_index), (&SL_BE_STATS, backend_id)] {
        if let Some(s) = map.get_ptr_mut(key) {
            // SAFETY: this CPU's copy of a live entry.
            unsafe { (*s).new_flows += 1 };
        }
    }
}
