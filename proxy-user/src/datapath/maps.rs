//! Typed access to the service maps, behind a trait so that the reconciler
//! can be tested against an in-memory fake ([`FakeMaps`]) as well as run
//! against the pinned kernel maps ([`PinnedMaps`]).

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{
    HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
    lpm_trie::Key,
};
use ipnetwork::Ipv4Network;
use proxy_common::{
    Backend, CtEntry, CtKey, DropReason, MAP_BACKENDS, MAP_BE_STATS, MAP_CT, MAP_DROPS, MAP_REVNAT,
    MAP_SERVICES, MAP_SRC_RANGES, MAP_SVC_STATS, MAP_VIPS, RevNat, SRC_RANGE_ID_BITS, ServiceKey,
    ServiceValue, SourceRangeKey, TrafficStats,
};

use super::{Error, PinPaths, Result};

/// The service-side maps, as the reconciler needs them.
pub trait LbMaps {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>>;
    fn backends(&self) -> Result<Vec<(u32, Backend)>>;
    fn rev_nats(&self) -> Result<Vec<(u32, RevNat)>>;
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<()>;
    fn delete_backend(&mut self, id: u32) -> Result<()>;
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()>;
    fn delete_service(&mut self, key: &ServiceKey) -> Result<()>;
    fn put_rev_nat(&mut self, index: u32, rev_nat: &RevNat) -> Result<()>;
    fn delete_rev_nat(&mut self, index: u32) -> Result<()>;
    fn vips(&self) -> Result<Vec<(u32, u32)>>;
    /// Records that `count` frontends use address `addr` (raw, network order).
    fn put_vip(&mut self, addr: u32, count: u32) -> Result<()>;
    fn delete_vip(&mut self, addr: u32) -> Result<()>;
    /// Keys of a counter map.
    fn stats_keys(&self, which: StatsMap) -> Result<Vec<u32>>;
    /// Creates (or resets) a zeroed counter entry.
    fn put_stats(&mut self, which: StatsMap, key: u32) -> Result<()>;
    fn delete_stats(&mut self, which: StatsMap, key: u32) -> Result<()>;
    /// Deletes the conntrack entries (both directions) of flows to these
    /// backends; returns how many.
    fn flush_ct_backends(&mut self, backend_ids: &BTreeSet<u32>) -> Result<usize>;
    /// `SL_SRC_RANGES`: every entry; keys that are no valid range come
    /// back as [`SourceRangeEntry::Invalid`] so they can be pruned.
    fn source_ranges(&self) -> Result<Vec<SourceRangeEntry>>;
    fn put_source_range(&mut self, rev_nat_index: u32, range: Ipv4Network) -> Result<()>;
    fn delete_source_range(&mut self, entry: &SourceRangeEntry) -> Result<()>;
}

/// One `SL_SRC_RANGES` entry as read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceRangeEntry {
    /// A frontend's range.
    Range(u32, Ipv4Network),
    /// A key no writer of this version makes: (prefix_len, data).
    Invalid(u32, u32, u32),
}

/// The trie key of a frontend's range.
#[must_use]
pub fn source_range_key(rev_nat_index: u32, range: Ipv4Network) -> Key<SourceRangeKey> {
    let addr = proxy_common::addr_to_map(range.network());
    Key::new(SRC_RANGE_ID_BITS + u32::from(range.prefix()), SourceRangeKey { rev_nat_index, addr })
}

impl SourceRangeEntry {
    fn from_key(key: &Key<SourceRangeKey>) -> Self {
        let (len, data) = (key.prefix_len(), key.data());
        let range = len
            .checked_sub(SRC_RANGE_ID_BITS)
            .and_then(|p| u8::try_from(p).ok())
            .and_then(|p| Ipv4Network::new(proxy_common::addr_from_map(data.addr), p).ok());
        match range {
            Some(r) => Self::Range(data.rev_nat_index, r),
            None => Self::Invalid(len, data.rev_nat_index, data.addr),
        }
    }

    fn key(&self) -> Key<SourceRangeKey> {
        match *self {
            Self::Range(rev, range) => source_range_key(rev, range),
            Self::Invalid(len, rev_nat_index, addr) => {
                Key::new(len, SourceRangeKey { rev_nat_index, addr })
            }
        }
    }
}

/// The two counter maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatsMap {
    /// `SL_SVC_STATS`, keyed by reverse-NAT index.
    Service,
    /// `SL_BE_STATS`, keyed by backend id.
    Backend,
}

impl StatsMap {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            StatsMap::Service => MAP_SVC_STATS,
            StatsMap::Backend => MAP_BE_STATS,
        }
    }
}

/// The pinned kernel maps under a bpffs root.
pub struct PinnedMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, Backend>,
    rev_nats: HashMap<MapData, u32, RevNat>,
    vips: HashMap<MapData, u32, u32>,
    ct: HashMap<MapData, CtKey, CtEntry>,
    svc_stats: PerCpuHashMap<MapData, u32, TrafficStats>,
    be_stats: PerCpuHashMap<MapData, u32, TrafficStats>,
    src_ranges: LpmTrie<MapData, SourceRangeKey, u32>,
    capacities: [u32; 5],
    nr_cpus: usize,
}

/// Opens a pinned map as the typed map `T`.
pub fn open_pinned<T>(paths: &PinPaths, name: &'static str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = paths.map(name);
    let wrap = |source| Error::OpenMap { name, path: path.clone(), source: Box::new(source) };
    let data = MapData::from_pin(&path).map_err(wrap)?;
    let map = Map::from_map_data(data).map_err(wrap)?;
    T::try_from(map).map_err(wrap)
}

/// The `max_entries` of a pinned map.
pub fn capacity(paths: &PinPaths, name: &'static str) -> Result<u32> {
    let path = paths.map(name);
    let info = aya::maps::MapInfo::from_pin(&path).map_err(|source| Error::OpenMap {
        name,
        path,
        source: Box::new(source),
    })?;
    Ok(info.max_entries())
}

impl PinnedMaps {
    /// Opens the maps pinned under `paths` (made by the agent's loader).
    pub fn open(paths: &PinPaths) -> Result<Self> {
        Ok(Self {
            services: open_pinned(paths, MAP_SERVICES)?,
            backends: open_pinned(paths, MAP_BACKENDS)?,
            rev_nats: open_pinned(paths, MAP_REVNAT)?,
            vips: open_pinned(paths, MAP_VIPS)?,
            ct: open_pinned(paths, MAP_CT)?,
            svc_stats: open_pinned(paths, MAP_SVC_STATS)?,
            be_stats: open_pinned(paths, MAP_BE_STATS)?,
            src_ranges: open_pinned(paths, MAP_SRC_RANGES)?,
            nr_cpus: aya::util::nr_cpus()
                .map_err(|(what, source)| Error::Io { path: what.into(), source })?,
            capacities: [
                capacity(paths, MAP_SERVICES)?,
                capacity(paths, MAP_BACKENDS)?,
                capacity(paths, MAP_REVNAT)?,
                capacity(paths, MAP_VIPS)?,
                capacity(paths, MAP_SRC_RANGES)?,
            ],
        })
    }
}

/// Drop counters summed over CPUs, by reason.
pub fn read_drops(paths: &PinPaths) -> Result<Vec<(DropReason, u64)>> {
    let drops: PerCpuArray<MapData, u64> = open_pinned(paths, MAP_DROPS)?;
    DropReason::ALL
        .iter()
        .map(|&reason| {
            let per_cpu = drops.get(&(reason as u32), 0).map_err(|source| Error::MapOp {
                name: MAP_DROPS,
                op: "lookup",
                source: Box::new(source),
            })?;
            Ok((reason, per_cpu.iter().sum()))
        })
        .collect()
}

fn collect<K: aya::Pod, V: aya::Pod>(
    name: &'static str,
    map: &HashMap<MapData, K, V>,
) -> Result<Vec<(K, V)>> {
    map.iter().collect::<Result<Vec<_>, _>>().map_err(|source| Error::MapOp {
        name,
        op: "iterate",
        source: Box::new(source),
    })
}

fn write_err(name: &'static str, op: &'static str, capacity: u32, source: MapError) -> Error {
    if let MapError::SyscallError(e) = &source
        && matches!(e.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC))
    {
        return Error::MapFull { name, capacity };
    }
    Error::MapOp { name, op, source: Box::new(source) }
}

/// Deleting what is already gone is success (idempotent writes).
fn delete_ok(res: Result<(), MapError>, name: &'static str) -> Result<()> {
    match res {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(Error::MapOp { name, op: "delete", source: Box::new(source) }),
    }
}

impl LbMaps for PinnedMaps {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        collect(MAP_SERVICES, &self.services)
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        collect(MAP_BACKENDS, &self.backends)
    }

    fn rev_nats(&self) -> Result<Vec<(u32, RevNat)>> {
        collect(MAP_REVNAT, &self.rev_nats)
    }

    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.backends
            .insert(id, backend, 0)
            .map_err(|e| write_err(MAP_BACKENDS, "update", self.capacities[1], e))
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        delete_ok(self.backends.remove(&id), MAP_BACKENDS)
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(|e| write_err(MAP_SERVICES, "update", self.capacities[0], e))
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        delete_ok(self.services.remove(key), MAP_SERVICES)
    }

    fn put_rev_nat(&mut self, index: u32, rev_nat: &RevNat) -> Result<()> {
        self.rev_nats
            .insert(index, rev_nat, 0)
            .map_err(|e| write_err(MAP_REVNAT, "update", self.capacities[2], e))
    }

    fn delete_rev_nat(&mut self, index: u32) -> Result<()> {
        delete_ok(self.rev_nats.remove(&index), MAP_REVNAT)
    }

    fn vips(&self) -> Result<Vec<(u32, u32)>> {
        collect(MAP_VIPS, &self.vips)
    }

    fn put_vip(&mut self, addr: u32, count: u32) -> Result<()> {
        self.vips
            .insert(addr, count, 0)
            .map_err(|e| write_err(MAP_VIPS, "update", self.capacities[3], e))
    }

    fn delete_vip(&mut self, addr: u32) -> Result<()> {
        delete_ok(self.vips.remove(&addr), MAP_VIPS)
    }

    fn stats_keys(&self, which: StatsMap) -> Result<Vec<u32>> {
        let map = match which {
            StatsMap::Service => &self.svc_stats,
            StatsMap::Backend => &self.be_stats,
        };
        map.keys().collect::<Result<Vec<_>, _>>().map_err(|source| Error::MapOp {
            name: which.name(),
            op: "iterate",
            source: Box::new(source),
        })
    }

    fn put_stats(&mut self, which: StatsMap, key: u32) -> Result<()> {
        let (map, capacity) = match which {
            StatsMap::Service => (&mut self.svc_stats, self.capacities[2]),
            StatsMap::Backend => (&mut self.be_stats, self.capacities[1]),
        };
        let zeros =
            PerCpuValues::try_from(vec![TrafficStats::default(); self.nr_cpus]).map_err(|e| {
                Error::MapOp {
                    name: which.name(),
                    op: "update",
                    source: Box::new(MapError::IoError(e)),
                }
            })?;
        map.insert(key, zeros, 0).map_err(|e| write_err(which.name(), "update", capacity, e))
    }

    fn delete_stats(&mut self, which: StatsMap, key: u32) -> Result<()> {
        let map = match which {
            StatsMap::Service => &mut self.svc_stats,
            StatsMap::Backend => &mut self.be_stats,
        };
        delete_ok(map.remove(&key), which.name())
    }

    fn flush_ct_backends(&mut self, backend_ids: &BTreeSet<u32>) -> Result<usize> {
        // Collect first: deleting while iterating a hash map restarts or
        // skips buckets.
        let mut doomed = Vec::new();
        for item in self.ct.iter() {
            // An entry evicted between the key walk and its lookup is
            // simply gone.
            let Ok((key, entry)) = item else { continue };
            if backend_ids.contains(&entry.backend_id) {
                doomed.push(key);
            }
        }
        for key in &doomed {
            delete_ok(self.ct.remove(key), MAP_CT)?;
        }
        Ok(doomed.len())
    }

    fn source_ranges(&self) -> Result<Vec<SourceRangeEntry>> {
        let keys = self.src_ranges.keys().collect::<Result<Vec<_>, _>>().map_err(|source| {
            Error::MapOp { name: MAP_SRC_RANGES, op: "iterate", source: Box::new(source) }
        })?;
        Ok(keys.iter().map(SourceRangeEntry::from_key).collect())
    }

    fn put_source_range(&mut self, rev_nat_index: u32, range: Ipv4Network) -> Result<()> {
        self.src_ranges
            .insert(&source_range_key(rev_nat_index, range), 1, 0)
            .map_err(|e| write_err(MAP_SRC_RANGES, "update", self.capacities[4], e))
    }

    fn delete_source_range(&mut self, entry: &SourceRangeEntry) -> Result<()> {
        delete_ok(self.src_ranges.remove(&entry.key()), MAP_SRC_RANGES)
    }
}

/// Counters of one entry, summed over CPUs; `None` when there is no entry.
pub fn read_stats(paths: &PinPaths, which: StatsMap, key: u32) -> Result<Option<TrafficStats>> {
    let map: PerCpuHashMap<MapData, u32, TrafficStats> = open_pinned(paths, which.name())?;
    match map.get(&key, 0) {
        Ok(values) => Ok(Some(values.iter().fold(TrafficStats::default(), |mut acc, v| {
            acc.fwd_packets += v.fwd_packets;
            acc.fwd_bytes += v.fwd_bytes;
            acc.rev_packets += v.rev_packets;
            acc.rev_bytes += v.rev_bytes;
            acc.new_flows += v.new_flows;
            acc
        }))),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(source) => {
            Err(Error::MapOp { name: which.name(), op: "lookup", source: Box::new(source) })
        }
    }
}

/// One write the reconciler made, for ordering checks in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32),
    DeleteBackend(u32),
    PutService { slot: u16, count: u16, backend_id: u32 },
    DeleteService { slot: u16 },
    PutRevNat(u32),
    DeleteRevNat(u32),
    PutVip(u32),
    DeleteVip,
    PutStats(StatsMap, u32),
    DeleteStats(StatsMap, u32),
    FlushCt(Vec<u32>),
    PutSourceRange(u32, Ipv4Network),
    DeleteSourceRange(SourceRangeEntry),
}

/// In-memory maps with a log of writes and optional capacities, for tests.
#[derive(Default, Debug)]
pub struct FakeMaps {
    pub services: BTreeMap<FakeServiceKey, (ServiceKey, ServiceValue)>,
    pub backends: BTreeMap<u32, Backend>,
    pub rev_nats: BTreeMap<u32, RevNat>,
    pub vips: BTreeMap<u32, u32>,
    pub stats: BTreeMap<(StatsMap, u32), ()>,
    pub src_ranges: BTreeSet<SourceRangeEntry>,
    pub log: Vec<Op>,
    /// Moments the kernel would have seen a master entry with
    /// `SVC_FLAG_SOURCE_RANGES` but no range of its frontend (every client
    /// denied): checked after each write.
    pub range_violations: Vec<String>,
    /// When set, inserting a new key beyond this many entries fails as a
    /// full kernel map does.
    pub service_capacity: Option<usize>,
    pub backend_capacity: Option<usize>,
}

/// `FakeMaps::services`' key: address, port, protocol, scope, slot.
pub type FakeServiceKey = (u32, u16, u8, u8, u16);

fn skey(k: &ServiceKey) -> FakeServiceKey {
    (k.addr, k.dport, k.proto, k.scope, k.backend_slot)
}

impl FakeMaps {
    fn check_ranges(&mut self) {
        for (key, value) in self.services.values() {
            let flagged = value.flags & proxy_common::SVC_FLAG_SOURCE_RANGES != 0;
            let has_ranges = self.src_ranges.iter().any(
                |e| matches!(e, SourceRangeEntry::Range(rev, _) if *rev == value.rev_nat_index),
            );
            if key.backend_slot == 0 && flagged && !has_ranges {
                let what = format!("master of {key:?} flagged without ranges");
                self.range_violations.push(what);
            }
        }
    }
}

impl LbMaps for FakeMaps {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        Ok(self.services.values().copied().collect())
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn rev_nats(&self) -> Result<Vec<(u32, RevNat)>> {
        Ok(self.rev_nats.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        if let Some(cap) = self.backend_capacity
            && !self.backends.contains_key(&id)
            && self.backends.len() >= cap
        {
            return Err(Error::MapFull { name: MAP_BACKENDS, capacity: cap as u32 });
        }
        self.backends.insert(id, *backend);
        self.log.push(Op::PutBackend(id));
        Ok(())
    }

    fn delete_backend(&mut self, id: u32) -> Result<()> {
        self.backends.remove(&id);
        self.log.push(Op::DeleteBackend(id));
        Ok(())
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        if let Some(cap) = self.service_capacity
            && !self.services.contains_key(&skey(key))
            && self.services.len() >= cap
        {
            return Err(Error::MapFull { name: MAP_SERVICES, capacity: cap as u32 });
        }
        self.services.insert(skey(key), (*key, *value));
        self.check_ranges();
        self.log.push(Op::PutService {
            slot: key.backend_slot,
            count: value.count,
            backend_id: value.backend_id,
        });
        Ok(())
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<()> {
        self.services.remove(&skey(key));
        self.log.push(Op::DeleteService { slot: key.backend_slot });
        Ok(())
    }

    fn put_rev_nat(&mut self, index: u32, rev_nat: &RevNat) -> Result<()> {
        self.rev_nats.insert(index, *rev_nat);
        self.log.push(Op::PutRevNat(index));
        Ok(())
    }

    fn delete_rev_nat(&mut self, index: u32) -> Result<()> {
        self.rev_nats.remove(&index);
        self.log.push(Op::DeleteRevNat(index));
        Ok(())
    }

    fn vips(&self) -> Result<Vec<(u32, u32)>> {
        Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_vip(&mut self, addr: u32, count: u32) -> Result<()> {
        self.vips.insert(addr, count);
        self.log.push(Op::PutVip(count));
        Ok(())
    }

    fn delete_vip(&mut self, addr: u32) -> Result<()> {
        self.vips.remove(&addr);
        self.log.push(Op::DeleteVip);
        Ok(())
    }

    fn stats_keys(&self, which: StatsMap) -> Result<Vec<u32>> {
        Ok(self.stats.keys().filter(|(w, _)| *w == which).map(|(_, k)| *k).collect())
    }

    fn put_stats(&mut self, which: StatsMap, key: u32) -> Result<()> {
        self.stats.insert((which, key), ());
        self.log.push(Op::PutStats(which, key));
        Ok(())
    }

    fn delete_stats(&mut self, which: StatsMap, key: u32) -> Result<()> {
        self.stats.remove(&(which, key));
        self.log.push(Op::DeleteStats(which, key));
        Ok(())
    }

    fn flush_ct_backends(&mut self, backend_ids: &BTreeSet<u32>) -> Result<usize> {
        self.log.push(Op::FlushCt(backend_ids.iter().copied().collect()));
        Ok(0)
    }

    fn source_ranges(&self) -> Result<Vec<SourceRangeEntry>> {
        Ok(self.src_ranges.iter().copied().collect())
    }

    fn put_source_range(&mut self, rev_nat_index: u32, range: Ipv4Network) -> Result<()> {
        self.src_ranges.insert(SourceRangeEntry::Range(rev_nat_index, range));
        self.log.push(Op::PutSourceRange(rev_nat_index, range));
        Ok(())
    }

    fn delete_source_range(&mut self, entry: &SourceRangeEntry) -> Result<()> {
        self.src_ranges.remove(entry);
        self.check_ranges();
        self.log.push(Op::DeleteSourceRange(*entry));
        Ok(())
    }
}
