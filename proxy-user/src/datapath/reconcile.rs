//! Writes the model's desired frontends into the service maps.
//!
//! Order (Cilium's): for each frontend, backends first, then the backend
//! slots, then the reverse-NAT entry, then the master entry with the new
//! count, then surplus slots are removed, then backends nobody uses. The
//! kernel therefore never sees a slot `<= count` without a backend behind
//! it, nor a master entry whose reverse NAT is missing. A frontend that goes
//! away loses its master entry first, so no new flow can start on it while
//! the rest is removed.
//!
//! `loadBalancerSourceRanges` entries are written before the master entry
//! sets `SVC_FLAG_SOURCE_RANGES` and removed only after the master entry
//! has dropped the flag (or is gone), so the kernel never sees the flag
//! without the frontend's ranges (which would deny every client). While a
//! list changes, the union of old and new ranges is allowed for a moment.
//!
//! The applied state is updated after each write that succeeded, so a
//! failed sync leaves an exact record and the next sync carries on from
//! there: nothing is leaked and nothing is written twice. At start the
//! applied state is restored from the pinned maps (ids stay stable across
//! agent restarts) and entries nobody owns are pruned.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use proxy_common::{
    BACKEND_FLAG_LOCAL, BACKEND_STATE_ACTIVE, BACKEND_STATE_MASK, BACKEND_STATE_TERMINATING,
    Backend, RevNat, SVC_FLAG_AFFINITY, SVC_FLAG_DROP_EMPTY, SVC_FLAG_EXTERNAL, SVC_FLAG_LOCAL,
    SVC_FLAG_SCOPE_INTERNAL, SVC_FLAG_SOURCE_RANGES, SVC_FLAG_TWO_SCOPES, ServiceKey, ServiceValue,
};

use super::{
    Error, Result,
    maps::{LbMaps, SourceRangeEntry, StatsMap},
};
use crate::model::{
    BackendState, Desired, Frontend, FrontendKey, FrontendPolicy, Protocol, Scope, cache::Changes,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AppliedBackend {
    id: u32,
    state: BackendState,
    local: bool,
}

/// What is known to be in the maps for one frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Applied {
    rev_nat_index: u32,
    rev_nat_written: bool,
    /// The master entry's count, `None` when no master entry is written.
    count: Option<u16>,
    /// The master entry's session affinity timeout.
    affinity: Option<u32>,
    /// The master entry's session-affinity group (0: its own).
    affinity_id: u32,
    /// The master entry's `SVC_FLAG_*` bits other than affinity.
    flags: u16,
    /// Counted in `SL_VIPS` (its address is a ClusterIP). Tracked apart
    /// from `flags`, which change only once the master entry is written: a
    /// failed master write must not count the frontend again on the retry.
    vip_counted: bool,
    /// Backend id per slot (`slots[0]` is slot 1); 0 = unknown/missing.
    slots: Vec<u32>,
    backends: BTreeMap<(Ipv4Addr, u16), AppliedBackend>,
    /// `SL_SRC_RANGES` entries of this frontend.
    ranges: BTreeSet<Ipv4Network>,
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncOutcome {
    /// Frontends whose entries changed.
    pub changed: usize,
    /// Frontends removed.
    pub removed: usize,
    /// Frontends that could not be (fully) written; retried next sync.
    pub errors: Vec<(FrontendKey, Error)>,
    /// Conntrack entries of removed UDP backends that were flushed.
    pub ct_flushed: usize,
    /// Flushing them failed (logged; the entries age out of the LRU).
    pub ct_flush_error: Option<Error>,
    /// UDP backends removed from a frontend during this sync: sockets that
    /// socket LB connected to them are to be terminated
    /// ([`super::sockterm`]).
    pub removed_udp: Vec<RemovedBackend>,
}

/// A backend removed from a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemovedBackend {
    /// The frontend's reverse-NAT index (as socket LB recorded it).
    pub rev_nat_index: u32,
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// What restoring from the pinned maps found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RestoreOutcome {
    pub frontends: usize,
    pub backends: usize,
    /// Entries nobody owned, removed.
    pub pruned: usize,
}

pub struct Reconciler<M> {
    maps: M,
    applied: BTreeMap<FrontendKey, Applied>,
    used_backend_ids: BTreeSet<u32>,
    used_rev_nats: BTreeSet<u32>,
    next_backend_id: u32,
    next_rev_nat: u32,
    /// UDP backends removed during this sync, whose conntrack entries are
    /// flushed at its end.
    removed_udp_backends: BTreeSet<u32>,
    /// The same backends by frontend and address, for socket termination.
    removed_udp: Vec<RemovedBackend>,
    /// Number of frontends (with a master entry) per address, as in `SL_VIPS`.
    vips: BTreeMap<Ipv4Addr, u32>,
    /// Frontends the last sync could not (fully) write: a partial sync
    /// retries them whether or not they changed.
    failed: BTreeSet<FrontendKey>,
    /// The desired frontends with session affinity (the only ones the
    /// affinity-group pass looks at).
    with_affinity: BTreeSet<FrontendKey>,
    /// Whether the reverse-NAT indexes / backend ids have wrapped around
    /// since the start (see [`Self::clear_reused_stats`]).
    ids_wrapped: [bool; 2],
}

/// Hands out ids in increasing order (wrapping, skipping 0 and ids in use),
/// so a removed id is not reused soon: a flow that still names it in
/// conntrack finds it gone rather than pointing at another backend. Among
/// `used + 1` consecutive candidates one is free.
fn alloc_id(used: &mut BTreeSet<u32>, next: &mut u32) -> Option<u32> {
    for _ in 0..=used.len() + 1 {
        let id = *next;
        *next = id.wrapping_add(1).max(1);
        if id != 0 && used.insert(id) {
            return Some(id);
        }
    }
    None
}

fn state_to_map(state: BackendState, local: bool) -> u8 {
    let value = match state {
        BackendState::Active => BACKEND_STATE_ACTIVE,
        BackendState::Terminating => BACKEND_STATE_TERMINATING,
    };
    if local { value | BACKEND_FLAG_LOCAL } else { value }
}

fn state_from_map(state: u8) -> (BackendState, bool) {
    let local = state & BACKEND_FLAG_LOCAL != 0;
    if state & BACKEND_STATE_MASK == BACKEND_STATE_ACTIVE {
        (BackendState::Active, local)
    } else {
        (BackendState::Terminating, local)
    }
}

/// A frontend's policy (and whether it has source ranges) as `SVC_FLAG_*`
/// bits.
fn policy_flags(policy: &FrontendPolicy, scope: Scope, source_ranges: bool) -> u16 {
    let mut flags = 0;
    if scope == Scope::Internal {
        flags |= SVC_FLAG_SCOPE_INTERNAL;
    }
    if policy.two_scopes {
        flags |= SVC_FLAG_TWO_SCOPES;
    }
    if source_ranges {
        flags |= SVC_FLAG_SOURCE_RANGES;
    }
    if policy.external {
        flags |= SVC_FLAG_EXTERNAL;
    }
    if policy.local {
        flags |= SVC_FLAG_LOCAL;
    }
    if policy.drop_when_empty {
        flags |= SVC_FLAG_DROP_EMPTY;
    }
    flags
}

/// Whether a frontend's address counts in `SL_VIPS` (only ClusterIPs do:
/// other ports of a cluster IP are rejected, those of a node address or an
/// external IP are not ours).
fn is_vip(flags: u16) -> bool {
    flags & SVC_FLAG_EXTERNAL == 0
}

fn service_key(fk: &FrontendKey, slot: u16) -> ServiceKey {
    ServiceKey::scoped(fk.addr, fk.port, fk.proto.number(), slot, fk.scope.number())
}

impl<M: LbMaps> Reconciler<M> {
    /// Adopts what is pinned in `maps`: every complete frontend (master entry
    /// present) is restored with its ids; everything else is pruned.
    pub fn restore(mut maps: M) -> Result<(Self, RestoreOutcome)> {
        let services = maps.services()?;
        let backends = maps.backends()?;
        let rev_nats = maps.rev_nats()?;
        let pinned_vips = maps.vips()?;
        let mut outcome = RestoreOutcome::default();

        let mut applied: BTreeMap<FrontendKey, Applied> = BTreeMap::new();
        let mut by_rev_nat: BTreeMap<u32, FrontendKey> = BTreeMap::new();
        let mut slots: BTreeMap<(FrontendKey, u16), u32> = BTreeMap::new();
        let mut stray_keys = Vec::new();
        for (key, value) in &services {
            let (Some(proto), Some(scope)) =
                (Protocol::from_number(key.proto), Scope::from_number(key.scope))
            else {
                stray_keys.push(*key);
                continue;
            };
            let fk = FrontendKey::new(key.addr(), key.port(), proto).in_scope(scope);
            if key.backend_slot == 0 {
                if value.rev_nat_index == 0 || by_rev_nat.contains_key(&value.rev_nat_index) {
                    stray_keys.push(*key);
                    continue;
                }
                by_rev_nat.insert(value.rev_nat_index, fk);
                applied.insert(
                    fk,
                    Applied {
                        rev_nat_index: value.rev_nat_index,
                        rev_nat_written: false,
                        count: Some(value.count),
                        affinity: value.affinity_timeout(),
                        affinity_id: value.affinity_id,
                        flags: value.flags & !SVC_FLAG_AFFINITY,
                        // Set by the recount below.
                        vip_counted: false,
                        slots: Vec::new(),
                        backends: BTreeMap::new(),
                        ranges: BTreeSet::new(),
                    },
                );
            } else {
                slots.insert((fk, key.backend_slot), value.backend_id);
            }
        }
        // Slots: within the master's count they are the frontend's; beyond
        // it, or without a master, nobody's.
        for ((fk, slot), backend_id) in slots {
            match applied.get_mut(&fk) {
                Some(a) if slot <= a.count.unwrap_or(0) => {
                    let i = usize::from(slot) - 1;
                    if a.slots.len() <= i {
                        a.slots.resize(i + 1, 0);
                    }
                    a.slots[i] = backend_id;
                }
                _ => stray_keys.push(service_key(&fk, slot)),
            }
        }
        for a in applied.values_mut() {
            // Missing slots stay 0 (unknown), so the next sync rewrites them.
            a.slots.resize(usize::from(a.count.unwrap_or(0)), 0);
        }
        let mut stray_backends = Vec::new();
        for (id, b) in &backends {
            match by_rev_nat.get(&b.rev_nat_index).and_then(|fk| applied.get_mut(fk)) {
                Some(a) if *id != 0 => {
                    a.backends.insert((b.addr(), b.port()), {
                        let (state, local) = state_from_map(b.state);
                        AppliedBackend { id: *id, state, local }
                    });
                    outcome.backends += 1;
                }
                _ => stray_backends.push(*id),
            }
        }
        let mut stray_rev_nats = Vec::new();
        for (index, rn) in &rev_nats {
            match by_rev_nat.get(index).and_then(|fk| applied.get_mut(fk)) {
                Some(a) if rn.addr() == by_rev_nat[index].addr => a.rev_nat_written = true,
                _ => stray_rev_nats.push(*index),
            }
        }

        let mut stray_ranges = Vec::new();
        for entry in maps.source_ranges()? {
            match entry {
                SourceRangeEntry::Range(rev, range) => {
                    match by_rev_nat.get(&rev).and_then(|fk| applied.get_mut(fk)) {
                        Some(a) => {
                            a.ranges.insert(range);
                        }
                        None => stray_ranges.push(entry),
                    }
                }
                SourceRangeEntry::Invalid(..) => stray_ranges.push(entry),
            }
        }

        // Prune what nobody owns, in the safe order: slots, then backends,
        // then reverse NAT. (Ranges of no restored master are no one's:
        // no flag points at them.)
        for key in &stray_keys {
            maps.delete_service(key)?;
        }
        for entry in &stray_ranges {
            maps.delete_source_range(entry)?;
        }
        for id in &stray_backends {
            maps.delete_backend(*id)?;
        }
        for index in &stray_rev_nats {
            maps.delete_rev_nat(*index)?;
        }
        outcome.pruned =
            stray_keys.len() + stray_backends.len() + stray_rev_nats.len() + stray_ranges.len();
        outcome.frontends = applied.len();

        // Counters: keep those of restored frontends and backends (they go
        // on counting across restarts), drop the rest. Missing ones are
        // created by the kernel programs on first use.
        let live_svc: BTreeSet<u32> = applied.values().map(|a| a.rev_nat_index).collect();
        let live_be: BTreeSet<u32> =
            applied.values().flat_map(|a| a.backends.values().map(|b| b.id)).collect();
        for (which, live) in [(StatsMap::Service, &live_svc), (StatsMap::Backend, &live_be)] {
            let present: BTreeSet<u32> = maps.stats_keys(which)?.into_iter().collect();
            for key in present.difference(live) {
                maps.delete_stats(which, *key)?;
                outcome.pruned += 1;
            }
        }

        // Frontend addresses: recount from the restored masters and fix
        // what differs.
        let mut vips: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
        for (fk, a) in &mut applied {
            if a.count.is_some() && is_vip(a.flags) {
                a.vip_counted = true;
                *vips.entry(fk.addr).or_default() += 1;
            }
        }
        for (raw, count) in &pinned_vips {
            let addr = proxy_common::addr_from_map(*raw);
            match vips.get(&addr) {
                Some(n) if n == count => {}
                Some(n) => maps.put_vip(*raw, *n)?,
                None => {
                    maps.delete_vip(*raw)?;
                    outcome.pruned += 1;
                }
            }
        }
        for (addr, n) in &vips {
            if !pinned_vips.iter().any(|(raw, _)| proxy_common::addr_from_map(*raw) == *addr) {
                maps.put_vip(proxy_common::addr_to_map(*addr), *n)?;
            }
        }

        let used_backend_ids: BTreeSet<u32> =
            applied.values().flat_map(|a| a.backends.values().map(|b| b.id)).collect();
        let used_rev_nats: BTreeSet<u32> = applied.values().map(|a| a.rev_nat_index).collect();
        let next_backend_id = used_backend_ids.last().map_or(1, |m| m.wrapping_add(1).max(1));
        let next_rev_nat = used_rev_nats.last().map_or(1, |m| m.wrapping_add(1).max(1));
        Ok((
            Self {
                maps,
                applied,
                used_backend_ids,
                used_rev_nats,
                next_backend_id,
                next_rev_nat,
                removed_udp_backends: BTreeSet::new(),
                removed_udp: Vec::new(),
                vips,
                failed: BTreeSet::new(),
                with_affinity: BTreeSet::new(),
                ids_wrapped: [false; 2],
            },
            outcome,
        ))
    }

    /// The maps, e.g. to inspect a fake in tests.
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// Number of frontends known to be applied.
    #[must_use]
    pub fn frontends(&self) -> usize {
        self.applied.len()
    }

    /// Makes the maps equal to `desired`. Frontends that fail are reported
    /// and retried by the next call; the others are written regardless.
    pub fn sync(&mut self, desired: &Desired) -> SyncOutcome {
        let gone: Vec<FrontendKey> =
            self.applied.keys().filter(|k| !desired.contains_key(k)).copied().collect();
        self.with_affinity =
            desired.iter().filter(|(_, f)| f.affinity_timeout.is_some()).map(|(k, _)| *k).collect();
        self.sync_some(desired, gone, desired.keys().copied())
    }

    /// [`Self::sync`] for the frontends `changes` names (plus those that
    /// failed before): the others are known to be programmed already.
    pub fn sync_changes(&mut self, desired: &Desired, changes: &Changes) -> SyncOutcome {
        let Changes::Keys(keys) = changes else { return self.sync(desired) };
        let mut keys = keys.clone();
        keys.extend(std::mem::take(&mut self.failed));
        let (present, gone): (Vec<FrontendKey>, Vec<FrontendKey>) =
            keys.into_iter().partition(|k| desired.contains_key(k));
        let gone: Vec<FrontendKey> =
            gone.into_iter().filter(|k| self.applied.contains_key(k)).collect();
        for fk in &gone {
            self.with_affinity.remove(fk);
        }
        for fk in &present {
            if desired[fk].affinity_timeout.is_some() {
                self.with_affinity.insert(*fk);
            } else {
                self.with_affinity.remove(fk);
            }
        }
        self.sync_some(desired, gone, present.into_iter())
    }

    fn sync_some(
        &mut self,
        desired: &Desired,
        gone: Vec<FrontendKey>,
        present: impl Iterator<Item = FrontendKey>,
    ) -> SyncOutcome {
        let mut outcome = SyncOutcome::default();
        // Removals first: they free ids and map room for the additions.
        for fk in gone {
            match self.remove_frontend(&fk) {
                Ok(()) => outcome.removed += 1,
                Err(e) => outcome.errors.push((fk, e)),
            }
        }
        // Affinity groups span frontends: one whose group changed is
        // rewritten even when nothing else about it did.
        let groups = self.affinity_groups(desired, &mut outcome);
        let mut todo: BTreeSet<FrontendKey> = present.collect();
        todo.extend(self.with_affinity.iter().filter(|fk| {
            if !desired.contains_key(fk) {
                return false;
            }
            let group = groups.get(fk).copied().unwrap_or(0);
            self.applied.get(fk).map(|a| a.affinity_id) != Some(group)
        }));
        // A two-scope frontend's internal entries before the master entry
        // that sends this node's traffic to them (until they exist the
        // kernel uses scope `All` for it, and a flow started there would
        // move to the other scope's backends when they appear).
        let (internal, all): (Vec<FrontendKey>, Vec<FrontendKey>) =
            todo.into_iter().partition(|fk| fk.scope == Scope::Internal);
        for fk in internal.into_iter().chain(all) {
            let group = groups.get(&fk).copied().unwrap_or(0);
            match self.apply_frontend(&fk, &desired[&fk], group) {
                Ok(true) => outcome.changed += 1,
                Ok(false) => {}
                Err(e) => outcome.errors.push((fk, e)),
            }
        }
        self.failed = outcome.errors.iter().map(|(fk, _)| *fk).collect();
        // UDP has no connection teardown: flows of a removed backend would
        // keep stale conntrack until they age out (kube-proxy #139628 is
        // what this avoids). Flush them now, in one pass.
        if !self.removed_udp_backends.is_empty() {
            let ids = std::mem::take(&mut self.removed_udp_backends);
            match self.maps.flush_ct_backends(&ids) {
                Ok(n) => outcome.ct_flushed = n,
                Err(e) => outcome.ct_flush_error = Some(e),
            }
        }
        outcome.removed_udp = std::mem::take(&mut self.removed_udp);
        outcome
    }

    fn alloc_backend_id(&mut self) -> Result<u32> {
        let id = alloc_id(&mut self.used_backend_ids, &mut self.next_backend_id)
            .ok_or(Error::IdsExhausted("backend"))?;
        self.ids_wrapped[1] |= self.next_backend_id <= id;
        Ok(id)
    }

    fn alloc_rev_nat(&mut self) -> Result<u32> {
        let id = alloc_id(&mut self.used_rev_nats, &mut self.next_rev_nat)
            .ok_or(Error::IdsExhausted("reverse-NAT"))?;
        self.ids_wrapped[0] |= self.next_rev_nat <= id;
        Ok(id)
    }

    /// Removes the counters a newly handed-out id may still have. Ids are
    /// handed out in increasing order and counters are removed with their
    /// frontend or backend (and unowned ones at start), so only once the
    /// ids have wrapped around can a late packet of an id's previous holder
    /// have left some: before that this costs nothing.
    fn clear_reused_stats(&mut self, which: StatsMap, id: u32) -> Result<()> {
        let wrapped = match which {
            StatsMap::Service => self.ids_wrapped[0],
            StatsMap::Backend => self.ids_wrapped[1],
        };
        if wrapped { self.maps.delete_stats(which, id) } else { Ok(()) }
    }

    /// Session affinity is per service port (kube-proxy): the frontends of
    /// one port (ClusterIP, NodePort, externalIPs, LB IPs) that serve the
    /// same backends share an affinity group, named by the lowest of their
    /// reverse-NAT indexes. Frontends alone in their group get 0 (their
    /// own). New frontends get their reverse-NAT index here already, so a
    /// group can name them.
    fn affinity_groups(
        &mut self,
        desired: &Desired,
        outcome: &mut SyncOutcome,
    ) -> BTreeMap<FrontendKey, u32> {
        type GroupKey<'a> = (&'a crate::manifest::ObjectKey, &'a str, Protocol, Vec<BackendKey>);
        type BackendKey = (Ipv4Addr, u16, BackendState);
        let mut groups: BTreeMap<GroupKey<'_>, Vec<(u32, FrontendKey)>> = BTreeMap::new();
        for fk in &self.with_affinity.clone() {
            let Some(frontend) = desired.get(fk) else { continue };
            if !self.applied.contains_key(fk) {
                match self.alloc_rev_nat() {
                    Ok(rev_nat_index) => {
                        self.applied.insert(*fk, Applied { rev_nat_index, ..Applied::default() });
                    }
                    Err(e) => {
                        outcome.errors.push((*fk, e));
                        continue;
                    }
                }
            }
            let backends = frontend.backends.iter().map(|b| (b.addr, b.port, b.state)).collect();
            let key = (&frontend.service, frontend.port_name.as_str(), fk.proto, backends);
            groups.entry(key).or_default().push((self.applied[fk].rev_nat_index, *fk));
        }
        let mut ids = BTreeMap::new();
        for members in groups.values().filter(|m| m.len() > 1) {
            let id = members.iter().map(|(rev, _)| *rev).min().unwrap_or(0);
            ids.extend(members.iter().map(|(_, fk)| (*fk, id)));
        }
        ids
    }

    /// Returns whether anything was written. `affinity_id`: the frontend's
    /// session-affinity group (0: its own).
    fn apply_frontend(
        &mut self,
        fk: &FrontendKey,
        frontend: &Frontend,
        affinity_id: u32,
    ) -> Result<bool> {
        if !self.applied.contains_key(fk) {
            let rev_nat_index = self.alloc_rev_nat()?;
            self.applied.insert(*fk, Applied { rev_nat_index, ..Applied::default() });
        }
        let before = self.applied[fk].clone();
        let rev = before.rev_nat_index;
        let proto = fk.proto.number();

        // 1. Backends: new ones get ids, changed states are rewritten.
        let mut active_ids = Vec::new();
        for b in &frontend.backends {
            let existing = self.applied[fk].backends.get(&(b.addr, b.port)).copied();
            let id = match existing {
                Some(ab) if ab.state == b.state && ab.local == b.local => ab.id,
                Some(ab) => {
                    let state = state_to_map(b.state, b.local);
                    let value = Backend::new(b.addr, b.port, proto, state, rev);
                    self.maps.put_backend(ab.id, &value)?;
                    self.entry(fk).backends.insert(
                        (b.addr, b.port),
                        AppliedBackend { id: ab.id, state: b.state, local: b.local },
                    );
                    ab.id
                }
                None => {
                    let id = self.alloc_backend_id()?;
                    let state = state_to_map(b.state, b.local);
                    let value = Backend::new(b.addr, b.port, proto, state, rev);
                    // The kernel creates the counters on first use; an id
                    // handed out again may have some left by a late packet
                    // of its previous holder.
                    let written = self
                        .clear_reused_stats(StatsMap::Backend, id)
                        .and_then(|()| self.maps.put_backend(id, &value));
                    if let Err(e) = written {
                        self.used_backend_ids.remove(&id);
                        return Err(e);
                    }
                    self.entry(fk).backends.insert(
                        (b.addr, b.port),
                        AppliedBackend { id, state: b.state, local: b.local },
                    );
                    id
                }
            };
            if b.state == BackendState::Active {
                active_ids.push(id);
            }
        }
        let count = u16::try_from(active_ids.len()).map_err(|_| Error::MapFull {
            name: proxy_common::MAP_SERVICES,
            capacity: u32::from(u16::MAX),
        })?;

        // 2. Slots 1..=count.
        for (i, id) in active_ids.iter().enumerate() {
            if self.applied[fk].slots.get(i) != Some(id) {
                let slot = u16::try_from(i + 1).expect("count fits u16");
                self.maps.put_service(&service_key(fk, slot), &ServiceValue::slot(*id, rev))?;
                let a = self.entry(fk);
                if a.slots.len() <= i {
                    a.slots.resize(i + 1, 0);
                }
                a.slots[i] = *id;
            }
        }

        // 3. Reverse NAT.
        if !self.applied[fk].rev_nat_written {
            self.maps.put_rev_nat(rev, &RevNat::new(fk.addr, fk.port))?;
            self.entry(fk).rev_nat_written = true;
        }

        // 3b. Source ranges, before a master entry flag sends the kernel
        // looking for them.
        let ranges: BTreeSet<Ipv4Network> = frontend.source_ranges.iter().copied().collect();
        let missing: Vec<Ipv4Network> =
            ranges.difference(&self.applied[fk].ranges).copied().collect();
        for range in missing {
            self.maps.put_source_range(rev, range)?;
            self.entry(fk).ranges.insert(range);
        }

        // 4. The master entry, now that everything it points at exists; a
        // new frontend first registers its address.
        let flags = policy_flags(&frontend.policy, fk.scope, !ranges.is_empty());
        if self.applied[fk].count.is_none() {
            self.clear_reused_stats(StatsMap::Service, rev)?;
        }
        // A new ClusterIP frontend, or a frontend key turned external or back.
        let vip = is_vip(flags);
        if self.applied[fk].vip_counted != vip {
            if vip {
                self.add_vip(fk.addr)?;
            } else {
                self.remove_vip(fk.addr)?;
            }
            self.entry(fk).vip_counted = vip;
        }
        let affinity = frontend.affinity_timeout;
        let affinity_id = if affinity.is_some() { affinity_id } else { 0 };
        let a = &self.applied[fk];
        if a.count != Some(count)
            || a.affinity != affinity
            || a.flags != flags
            || a.affinity_id != affinity_id
        {
            let master = ServiceValue::master_with(count, rev, affinity, flags)
                .in_affinity_group(affinity_id);
            self.maps.put_service(&service_key(fk, 0), &master)?;
            let a = self.entry(fk);
            a.count = Some(count);
            a.affinity = affinity;
            a.flags = flags;
            a.affinity_id = affinity_id;
        }

        // 4b. Ranges no longer wanted, now that the master entry no longer
        // relies on them.
        let surplus: Vec<Ipv4Network> =
            self.applied[fk].ranges.difference(&ranges).copied().collect();
        for range in surplus {
            self.maps.delete_source_range(&SourceRangeEntry::Range(rev, range))?;
            self.entry(fk).ranges.remove(&range);
        }

        // 5. Surplus slots.
        while self.applied[fk].slots.len() > active_ids.len() {
            let slot = u16::try_from(self.applied[fk].slots.len()).expect("slots fit u16");
            self.maps.delete_service(&service_key(fk, slot))?;
            self.entry(fk).slots.pop();
        }

        // 6. Backends no longer wanted.
        let wanted: BTreeSet<(Ipv4Addr, u16)> =
            frontend.backends.iter().map(|b| (b.addr, b.port)).collect();
        let unwanted: Vec<((Ipv4Addr, u16), u32)> = self.applied[fk]
            .backends
            .iter()
            .filter(|(k, _)| !wanted.contains(k))
            .map(|(k, b)| (*k, b.id))
            .collect();
        for (k, id) in unwanted {
            self.delete_backend(fk, k, id)?;
        }

        Ok(self.applied[fk] != before)
    }

    fn remove_frontend(&mut self, fk: &FrontendKey) -> Result<()> {
        // Master first: no new flow can start on this frontend afterwards.
        if self.applied[fk].count.is_some() {
            self.maps.delete_service(&service_key(fk, 0))?;
            self.entry(fk).count = None;
        }
        if self.applied[fk].vip_counted {
            self.remove_vip(fk.addr)?;
            self.entry(fk).vip_counted = false;
        }
        let rev = self.applied[fk].rev_nat_index;
        let ranges: Vec<Ipv4Network> = self.applied[fk].ranges.iter().copied().collect();
        for range in ranges {
            self.maps.delete_source_range(&SourceRangeEntry::Range(rev, range))?;
            self.entry(fk).ranges.remove(&range);
        }
        while let Some(&_id) = self.applied[fk].slots.last() {
            let slot = u16::try_from(self.applied[fk].slots.len()).expect("slots fit u16");
            self.maps.delete_service(&service_key(fk, slot))?;
            self.entry(fk).slots.pop();
        }
        let ids: Vec<((Ipv4Addr, u16), u32)> =
            self.applied[fk].backends.iter().map(|(k, b)| (*k, b.id)).collect();
        for (k, id) in ids {
            self.delete_backend(fk, k, id)?;
        }
        if self.applied[fk].rev_nat_written {
            self.maps.delete_rev_nat(rev)?;
        }
        self.maps.delete_stats(StatsMap::Service, rev)?;
        self.applied.remove(fk);
        self.used_rev_nats.remove(&rev);
        Ok(())
    }

    /// Removes one backend of `fk` (its entry, then its counters), and
    /// remembers UDP ones for the conntrack flush.
    fn delete_backend(&mut self, fk: &FrontendKey, key: (Ipv4Addr, u16), id: u32) -> Result<()> {
        self.maps.delete_backend(id)?;
        if fk.proto == Protocol::Udp {
            self.removed_udp_backends.insert(id);
            self.removed_udp.push(RemovedBackend {
                rev_nat_index: self.applied[fk].rev_nat_index,
                addr: key.0,
                port: key.1,
            });
        }
        self.maps.delete_stats(StatsMap::Backend, id)?;
        self.entry(fk).backends.remove(&key);
        self.used_backend_ids.remove(&id);
        Ok(())
    }

    /// One more frontend on `addr` in `SL_VIPS`.
    fn add_vip(&mut self, addr: Ipv4Addr) -> Result<()> {
        let n = self.vips.get(&addr).copied().unwrap_or(0) + 1;
        self.maps.put_vip(proxy_common::addr_to_map(addr), n)?;
        self.vips.insert(addr, n);
        Ok(())
    }

    /// One frontend fewer on `addr` in `SL_VIPS`.
    fn remove_vip(&mut self, addr: Ipv4Addr) -> Result<()> {
        let n = self.vips.get(&addr).copied().unwrap_or(1).saturating_sub(1);
        let raw = proxy_common::addr_to_map(addr);
        if n == 0 {
            self.maps.delete_vip(raw)?;
            self.vips.remove(&addr);
        } else {
            self.maps.put_vip(raw, n)?;
            self.vips.insert(addr, n);
        }
        Ok(())
    }

    fn entry(&mut self, fk: &FrontendKey) -> &mut Applied {
        self.applied.get_mut(fk).expect("frontend is applied")
    }
}

#[cfg(test)]
mod tests;
