//! Connection tracking for translated flows, in the LRU hash `SL_CT`.
//!
//! A new flow to a service creates two entries: one keyed by the tuple the
//! client sent (direction `CT_DIR_SERVICE`: which backend the flow uses) and
//! one keyed by the tuple the backend replies with (`CT_DIR_REPLY`: which
//! frontend to restore). Both carry the backend id and the reverse-NAT index;
//! SNATed flows also carry the other end's address and port.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use proxy_common::{
    Backend, CT_DIR_REPLY, CT_DIR_SERVICE, CT_FLAG_CLOSING, CT_FLAG_EXTERNAL, CT_FLAG_HAIRPIN,
    CT_FLAG_SNAT, CtEntry, CtKey, DropReason, HAIRPIN_ADDR, SVC_FLAG_EXTERNAL, ServiceValue,
};

use crate::{
    maps::{SL_CT, SL_REVNAT},
    parse::Ipv4,
};

/// `BPF_NOEXIST`: insert only if the key is not there yet.
const BPF_NOEXIST: u64 = 1;

/// `HAIRPIN_ADDR` as stored in packets and maps.
#[inline(always)]
pub fn hairpin_addr() -> u32 {
    u32::from_ne_bytes(HAIRPIN_ADDR)
}

#[inline(always)]
pub fn key(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8, dir: u8) -> CtKey {
    CtKey { saddr, daddr, sport, dport, proto, dir, _pad: [0; 2] }
}

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<CtEntry> {
    // SAFETY: CtEntry is plain data; we copy it out at once.
    unsafe { SL_CT.get(key) }.copied()
}

/// How long ago the flow of `entry` was created (or re-balanced).
#[inline(always)]
pub fn age_ns(entry: &CtEntry) -> u64 {
    // SAFETY: a plain helper call.
    unsafe { bpf_ktime_get_ns() }.wrapping_sub(entry.created_ns)
}

/// Marks the flow of the service-direction entry `fkey` closing
/// (`CT_FLAG_CLOSING`). Best effort: an entry gone meanwhile needs nothing.
#[inline(always)]
pub fn mark_closing(fkey: &CtKey) {
    if let Some(entry) = SL_CT.get_ptr_mut(fkey) {
        // SAFETY: a valid pointer into the map's value; a racing writer can
        // at worst lose the flag, which the age rule then stands in for.
        unsafe { (*entry).flags |= CT_FLAG_CLOSING };
    }
}

/// Removes the reply entry of the flow whose backend `backend` answers
/// `client` (raw addresses and ports), if there is one.
/// Its service-direction entry goes too: a later connection through the
/// frontend from the same port must record the flow afresh.
#[inline(always)]
pub fn forget_reply(backend: u32, client: u32, backend_port: u16, client_port: u16, proto: u8) {
    let rkey = key(backend, client, backend_port, client_port, proto, CT_DIR_REPLY);
    // Absent is the common case; nothing to do then.
    let Some(entry) = lookup(&rkey) else { return };
    // SAFETY: RevNat is plain data, copied out at once.
    if let Some(rn) = unsafe { SL_REVNAT.get(entry.rev_nat_index) }.copied() {
        let fkey = key(client, entry.frontend_addr, client_port, rn.port, proto, CT_DIR_SERVICE);
        let _ = SL_CT.remove(&fkey);
    }
    let _ = SL_CT.remove(&rkey);
}

/// A flow about to be recorded. Addresses and ports are raw (network order).
pub struct NewFlow {
    pub client: (u32, u16),
    pub frontend: (u32, u16),
    pub backend: (u32, u16),
    pub proto: u8,
    pub backend_id: u32,
    pub rev_nat_index: u32,
    /// The client is its own backend: requests are SNATed to `HAIRPIN_ADDR`.
    pub hairpin: bool,
    /// The frontend is an external one (`CT_FLAG_EXTERNAL`).
    pub external: bool,
    /// The source the backend sees when the flow is SNATed to the node.
    pub snat: Option<(u32, u16)>,
}

impl NewFlow {
    /// A flow from the packet's source to the frontend it addressed, sent to
    /// `backend`; hairpin when the client is the backend, external when the
    /// frontend is; not SNATed.
    #[inline(always)]
    pub fn new(
        ip: &Ipv4,
        ports: (u16, u16),
        backend_id: u32,
        backend: &Backend,
        svc: &ServiceValue,
    ) -> Self {
        Self {
            client: (ip.saddr, ports.0),
            frontend: (ip.daddr, ports.1),
            backend: (backend.addr, backend.port),
            proto: ip.proto,
            backend_id,
            rev_nat_index: svc.rev_nat_index,
            hairpin: backend.addr == ip.saddr,
            external: svc.flags & SVC_FLAG_EXTERNAL != 0,
            snat: None,
        }
    }
}

/// Records a new (or re-balanced) flow in both directions. Fails closed: a
/// flow that cannot be tracked cannot be reverse-translated, so it is dropped.
/// The reply entry is keyed by what the backend replies to: the client, the
/// hairpin address, or the SNAT address and port. For an SNATed flow the
/// reply entry must be new (`Err(SnatFailed)` when the port is taken), so
/// two flows never share a source port towards one backend.
#[inline(always)]
pub fn create(flow: &NewFlow) -> Result<(), DropReason> {
    let mut flags = 0;
    if flow.hairpin {
        flags |= CT_FLAG_HAIRPIN;
    }
    if flow.external {
        flags |= CT_FLAG_EXTERNAL;
    }
    // SAFETY: a plain helper call.
    let created_ns = unsafe { bpf_ktime_get_ns() };
    let mut entry = CtEntry {
        backend_id: flow.backend_id,
        rev_nat_index: flow.rev_nat_index,
        flags,
        nat_port: 0,
        nat_addr: 0,
        frontend_addr: flow.frontend.0,
        _pad: 0,
        created_ns,
    };
    let (client, backend, proto) = (flow.client, flow.backend, flow.proto);
    let fwd = key(client.0, flow.frontend.0, client.1, flow.frontend.1, proto, CT_DIR_SERVICE);
    if let Some((snat_addr, snat_port)) = flow.snat {
        entry.flags |= CT_FLAG_SNAT;
        // The reply entry restores the client.
        entry.nat_addr = client.0;
        entry.nat_port = client.1;
        let rev = key(backend.0, snat_addr, backend.1, snat_port, proto, CT_DIR_REPLY);
        SL_CT.insert(&rev, &entry, BPF_NOEXIST).map_err(|_| DropReason::SnatFailed)?;
        // The service entry gives later packets the same source.
        entry.nat_addr = snat_addr;
        entry.nat_port = snat_port;
        return SL_CT.insert(&fwd, &entry, 0).map_err(|_| DropReason::CtCreateFailed);
    }
    let reply_to = if flow.hairpin { hairpin_addr() } else { client.0 };
    let rev = key(backend.0, reply_to, backend.1, client.1, proto, CT_DIR_REPLY);
    SL_CT.insert(&rev, &entry, 0).map_err(|_| DropReason::CtCreateFailed)?;
    SL_CT.insert(&fwd, &entry, 0).map_err(|_| DropReason::CtCreateFailed)
}
