//! Per-service and per-backend traffic counters, in per-CPU hashes. An
//! entry is created here by the first packet (or socket-level flow) of its
//! frontend or backend, so the control plane's programming of a service
//! does not pay the kernel's per-CPU insert (a fifth of a cold start at 100k
//! services); the control plane removes entries with their frontend or
//! backend. After that, counting is a lookup of this CPU's copy and an add:
//! no allocation, no contention. When the map is full a packet goes
//! uncounted.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::PerCpuHashMap};
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
    let Some(s) = entry(map, key) else {
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
        if let Some(s) = entry(map, key) {
            // SAFETY: this CPU's copy of a live entry.
            unsafe { (*s).new_flows += 1 };
        }
    }
}

/// This CPU's copy of `key`'s counters, created (zeroed on every CPU) when
/// missing; `None` when the map is full.
#[inline(always)]
fn entry(map: &PerCpuHashMap<u32, TrafficStats>, key: u32) -> Option<*mut TrafficStats> {
    if let Some(s) = map.get_ptr_mut(key) {
        return Some(s);
    }
    // NOEXIST: another CPU may have created it meanwhile; either way the
    // lookup below finds the one entry.
    let _ = map.insert(&key, &TrafficStats::default(), u64::from(BPF_NOEXIST));
    map.get_ptr_mut(key)
}
