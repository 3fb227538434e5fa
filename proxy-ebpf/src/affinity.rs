//! Session affinity (`sessionAffinity: ClientIP`), as kube-proxy's `recent`
//! match does it: a client's new flows to a service port (any of its
//! frontends serving the same backends: the master entries' `affinity_id`)
//! go to the backend its previous flow went to, as long as that was less than the timeout ago and
//! the backend is still active; otherwise a new pick, remembered.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use proxy_common::{AffinityKey, AffinityValue, Backend, DropReason, ServiceValue};

use crate::{
    lb,
    maps::{SL_AFFINITY, SL_BACKENDS},
    parse::Ipv4,
};

/// The backend for a new flow of a service with affinity.
#[inline(always)]
pub fn backend(
    ip: &Ipv4,
    svc_addr: u32,
    dport: u16,
    svc: &ServiceValue,
) -> Result<Option<(u32, Backend)>, DropReason> {
    // Per service port: the frontends of one share an affinity group.
    let group = if svc.affinity_id != 0 { svc.affinity_id } else { svc.rev_nat_index };
    let key = AffinityKey { client: ip.saddr, rev_nat_index: group };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = u64::from(svc.backend_id) * 1_000_000_000;
    // SAFETY: plain data, copied out at once.
    if let Some(a) = unsafe { SL_AFFINITY.get(key) }.copied()
        && now.wrapping_sub(a.last_used_ns) < timeout_ns
        // SAFETY: plain data, copied out at once.
        && let Some(b) = unsafe { SL_BACKENDS.get(a.backend_id) }.copied()
        && lb::is_active(&b)
        // The backend of another frontend only within a shared group (the
        // key says it was written by one of the group).
        && (b.rev_nat_index == svc.rev_nat_index || svc.affinity_id != 0)
    {
        remember(&key, a.backend_id, now);
        return Ok(Some((a.backend_id, b)));
    }
    let picked = lb::select_backend(svc_addr, dport, ip.proto, svc)?;
    if let Some((id, _)) = picked {
        remember(&key, id, now);
    }
    Ok(picked)
}

#[inline(always)]
fn remember(key: &AffinityKey, backend_id: u32, now: u64) {
    // Best effort: without the entry the next flow is simply balanced anew.
    let _ = SL_AFFINITY.insert(key, &AffinityValue { backend_id, _pad: 0, last_used_ns: now }, 0);
}
