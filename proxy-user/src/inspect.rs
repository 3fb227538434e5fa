//! The operator's view of the pinned state: `sluice services` and
//! `sluice status`. Reads the pins directly, so it works while no agent runs.

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr};

use proxy_common::{ALL_MAPS, BACKEND_STATE_ACTIVE, PROG_POD_INGRESS};
use serde::Serialize;

use crate::{
    datapath::{
        PinPaths, Result,
        maps::{LbMaps, PinnedMaps, StatsMap, capacity, read_drops, read_stats},
    },
    model::Protocol,
};

/// Traffic counters of a frontend or backend (summed over CPUs).
#[derive(Debug, Serialize, PartialEq, Eq, Default, Clone, Copy)]
pub struct StatsView {
    /// Client -> backend.
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    /// Backend -> client.
    pub rev_packets: u64,
    pub rev_bytes: u64,
    pub new_flows: u64,
}

impl From<proxy_common::TrafficStats> for StatsView {
    fn from(s: proxy_common::TrafficStats) -> Self {
        Self {
            fwd_packets: s.fwd_packets,
            fwd_bytes: s.fwd_bytes,
            rev_packets: s.rev_packets,
            rev_bytes: s.rev_bytes,
            new_flows: s.new_flows,
        }
    }
}

fn stats_of(paths: &PinPaths, which: StatsMap, key: u32) -> Option<StatsView> {
    read_stats(paths, which, key).ok().flatten().map(StatsView::from)
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct BackendView {
    pub id: u32,
    pub address: Ipv4Addr,
    pub port: u16,
    /// "active" or "terminating".
    pub state: &'static str,
    /// Its slot (1..=count) when active and in the service's slot table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsView>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ServiceView {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    /// The entries for traffic from this node's pods and processes of a
    /// two-scope frontend (`externalTrafficPolicy: Local`; the table marks
    /// them `(internal)`); absent for the frontend every client uses.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    pub rev_nat_index: u32,
    /// Number of backend slots (active backends) in the master entry.
    pub count: u16,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_timeout: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsView>,
    pub backends: Vec<BackendView>,
}

/// Reads every programmed frontend with its backends.
pub fn services(paths: &PinPaths) -> Result<Vec<ServiceView>> {
    let maps = PinnedMaps::open(paths)?;
    let entries = maps.services()?;
    let backends: BTreeMap<u32, proxy_common::Backend> = maps.backends()?.into_iter().collect();
    let mut slots: BTreeMap<(u32, u16, u8, u8), BTreeMap<u16, u32>> = BTreeMap::new();
    for (k, v) in &entries {
        if k.backend_slot != 0 {
            slots
                .entry((k.addr, k.dport, k.proto, k.scope))
                .or_default()
                .insert(k.backend_slot, v.backend_id);
        }
    }
    let mut out = Vec::new();
    for (k, v) in entries.iter().filter(|(k, _)| k.backend_slot == 0) {
        let my_slots = slots.get(&(k.addr, k.dport, k.proto, k.scope));
        let slot_of = |id: u32| {
            my_slots
                .and_then(|s| s.iter().find(|(slot, b)| **b == id && **slot <= v.count))
                .map(|(s, _)| *s)
        };
        let mut bs: Vec<BackendView> = backends
            .iter()
            .filter(|(_, b)| b.rev_nat_index == v.rev_nat_index)
            .map(|(id, b)| BackendView {
                id: *id,
                address: b.addr(),
                port: b.port(),
                state: if b.state & proxy_common::BACKEND_STATE_MASK == BACKEND_STATE_ACTIVE {
                    "active"
                } else {
                    "terminating"
                },
                slot: slot_of(*id),
                stats: stats_of(paths, StatsMap::Backend, *id),
            })
            .collect();
        bs.sort_by_key(|b| (b.address, b.port));
        out.push(ServiceView {
            address: k.addr(),
            port: k.port(),
            protocol: Protocol::from_number(k.proto)
                .map_or_else(|| k.proto.to_string(), |p| p.to_string()),
            internal: k.scope == proxy_common::SCOPE_INTERNAL,
            rev_nat_index: v.rev_nat_index,
            count: v.count,
            affinity_timeout: v.affinity_timeout(),
            stats: stats_of(paths, StatsMap::Service, v.rev_nat_index),
            backends: bs,
        });
    }
    out.sort_by(|a, b| {
        (a.address, a.port, &a.protocol, a.internal).cmp(&(
            b.address,
            b.port,
            &b.protocol,
            b.internal,
        ))
    });
    Ok(out)
}

/// `sluice services -o table`: one line per backend, with its counters
/// (flows, packets and bytes both ways); the frontend's totals on its first line.
#[must_use]
pub fn services_table(services: &[ServiceView]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<21} {:<5} {:>9} {:>4}  {:<21} {:<11} {:>7} {:>9} {:>11}",
        "FRONTEND", "PROTO", "FLOWS", "ID", "BACKEND", "STATE", "FLOWS", "PACKETS", "BYTES"
    );
    let counters = |st: Option<StatsView>| {
        st.map_or_else(
            || ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            |st| {
                (
                    st.new_flows.to_string(),
                    (st.fwd_packets + st.rev_packets).to_string(),
                    (st.fwd_bytes + st.rev_bytes).to_string(),
                )
            },
        )
    };
    for svc in services {
        let scope = if svc.internal { " (internal)" } else { "" };
        let frontend = format!("{}:{}{scope}", svc.address, svc.port);
        let flows = counters(svc.stats).0;
        if svc.backends.is_empty() {
            let _ = writeln!(
                s,
                "{frontend:<21} {:<5} {flows:>9} {:>4}  {:<21} {:<11}",
                svc.protocol, "-", "(no endpoints)", "rejected"
            );
        }
        for (i, b) in svc.backends.iter().enumerate() {
            let (f, p, fl) = if i == 0 {
                (frontend.as_str(), svc.protocol.as_str(), flows.as_str())
            } else {
                ("", "", "")
            };
            let backend = format!("{}:{}", b.address, b.port);
            let (bf, bp, bb) = counters(b.stats);
            let _ = writeln!(
                s,
                "{f:<21} {p:<5} {fl:>9} {:>4}  {backend:<21} {:<11} {bf:>7} {bp:>9} {bb:>11}",
                b.id, b.state
            );
        }
    }
    s
}

#[derive(Debug, Serialize)]
pub struct MapStatus {
    pub name: &'static str,
    pub pinned: bool,
    /// Entries in the map (not counted for per-CPU arrays and LRU maps above 1M).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub bpffs_root: String,
    pub program_pinned: bool,
    /// Socket-level LB links pinned (attached to the agent's cgroup root).
    pub socket_lb_attached: bool,
    /// Interfaces of this network namespace with the pod program's tc
    /// filter, and those with a tcx link pin an older version left.
    pub attached_ifindexes: Vec<u32>,
    pub maps: Vec<MapStatus>,
    pub drops: BTreeMap<&'static str, u64>,
}

fn count_entries(paths: &PinPaths, name: &'static str) -> Option<u64> {
    use aya::maps::{HashMap, MapData};
    let n = match name {
        proxy_common::MAP_SERVICES => {
            let m: HashMap<MapData, proxy_common::ServiceKey, proxy_common::ServiceValue> =
                crate::datapath::maps::open_pinned(paths, name).ok()?;
            m.keys().count()
        }
        proxy_common::MAP_BACKENDS => {
            let m: HashMap<MapData, u32, proxy_common::Backend> =
                crate::datapath::maps::open_pinned(paths, name).ok()?;
            m.keys().count()
        }
        proxy_common::MAP_REVNAT => {
            let m: HashMap<MapData, u32, proxy_common::RevNat> =
                crate::datapath::maps::open_pinned(paths, name).ok()?;
            m.keys().count()
        }
        proxy_common::MAP_CT => {
            let m: HashMap<MapData, proxy_common::CtKey, proxy_common::CtEntry> =
                crate::datapath::maps::open_pinned(paths, name).ok()?;
            m.keys().count()
        }
        proxy_common::MAP_FRAGS => {
            let m: HashMap<MapData, proxy_common::FragKey, proxy_common::FragPorts> =
                crate::datapath::maps::open_pinned(paths, name).ok()?;
            m.keys().count()
        }
        proxy_common::MAP_SVC_STATS | proxy_common::MAP_BE_STATS => {
            let m: aya::maps::PerCpuHashMap<MapData, u32, proxy_common::TrafficStats> =
                crate::datapath::maps::open_pinned(paths, name).ok()?;
            m.keys().count()
        }
        proxy_common::MAP_AFFINITY => {
            let m: HashMap<MapData, proxy_common::AffinityKey, proxy_common::AffinityValue> =
                crate::datapath::maps::open_pinned(paths, name).ok()?;
            m.keys().count()
        }
        proxy_common::MAP_SOCK_REVNAT => {
            let m: HashMap<MapData, proxy_common::SockRevNatKey, proxy_common::SockRevNat> =
                crate::datapath::maps::open_pinned(paths, name).ok()?;
            m.keys().count()
        }
        proxy_common::MAP_VIPS => {
            let m: HashMap<MapData, u32, u32> =
                crate::datapath::maps::open_pinned(paths, name).ok()?;
            m.keys().count()
        }
        proxy_common::MAP_SRC_RANGES => {
            let m: aya::maps::LpmTrie<MapData, proxy_common::SourceRangeKey, u32> =
                crate::datapath::maps::open_pinned(paths, name).ok()?;
            m.keys().count()
        }
        proxy_common::MAP_ENDPOINTS => {
            let m: HashMap<MapData, u32, proxy_common::EndpointInfo> =
                crate::datapath::maps::open_pinned(paths, name).ok()?;
            m.keys().count()
        }
        _ => return None,
    };
    Some(n as u64)
}

/// Interfaces of the current network namespace that carry the pod
/// program's tc filter (a `bpf` filter on the clsact ingress at
/// `POD_FILTER_PRIORITY`/`POD_FILTER_HANDLE`); none when netlink fails.
/// Runs on a thread of its own (callers may be inside a tokio runtime).
#[must_use]
pub fn pod_filter_ifindexes() -> Vec<u32> {
    use futures::TryStreamExt as _;
    use proxy_common::pins::{POD_FILTER_HANDLE, POD_FILTER_PRIORITY};
    use rtnetlink::packet_route::tc::TcAttribute;
    let query = || -> Option<Vec<u32>> {
        let ifaces = nix::net::if_::if_nameindex().ok()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().ok()?;
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().ok()?;
            tokio::spawn(conn);
            let mut out = Vec::new();
            for iface in &ifaces {
                let index = iface.index();
                let Ok(ifindex) = i32::try_from(index) else { continue };
                let mut s = handle.traffic_filter(ifindex).get().ingress().execute();
                while let Ok(Some(m)) = s.try_next().await {
                    let bpf = m
                        .attributes
                        .iter()
                        .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"));
                    if bpf
                        && m.header.info >> 16 == u32::from(POD_FILTER_PRIORITY)
                        && u32::from(m.header.handle) == POD_FILTER_HANDLE
                    {
                        out.push(index);
                    }
                }
            }
            Some(out)
        })
    };
    std::thread::scope(|s| s.spawn(query).join().ok().flatten()).unwrap_or_default()
}

/// `sluice status`.
pub fn status(paths: &PinPaths) -> Status {
    let maps = ALL_MAPS
        .iter()
        .map(|&name| MapStatus {
            name,
            pinned: paths.map(name).exists(),
            entries: count_entries(paths, name),
            capacity: capacity(paths, name).ok(),
        })
        .collect();
    let mut attached: Vec<u32> =
        paths.pod_links().unwrap_or_default().into_iter().map(|(ifindex, _)| ifindex).collect();
    attached.extend(pod_filter_ifindexes());
    attached.sort_unstable();
    attached.dedup();
    let drops = read_drops(paths)
        .map(|d| d.into_iter().map(|(r, n)| (r.name(), n)).collect())
        .unwrap_or_default();
    Status {
        bpffs_root: paths.root.display().to_string(),
        program_pinned: paths.prog(PROG_POD_INGRESS).exists(),
        socket_lb_attached: proxy_common::SOCK_PROGS.iter().all(|p| paths.sock_link(p).exists()),
        attached_ifindexes: attached,
        maps,
        drops,
    }
}

/// `sluice status -o table`.
#[must_use]
pub fn status_table(st: &Status) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "bpffs root:      {}", st.bpffs_root);
    let _ =
        writeln!(s, "pod program:     {}", if st.program_pinned { "pinned" } else { "not pinned" });
    let _ = writeln!(
        s,
        "attached to:     {} interface(s) {:?}",
        st.attached_ifindexes.len(),
        st.attached_ifindexes
    );
    let _ = writeln!(s, "{:<14} {:>10} {:>10} {:>6}", "MAP", "ENTRIES", "CAPACITY", "FULL");
    for m in &st.maps {
        let entries = m.entries.map_or_else(|| "-".into(), |n| n.to_string());
        let cap = m.capacity.map_or_else(|| "-".into(), |n| n.to_string());
        let full = match (m.entries, m.capacity) {
            (Some(e), Some(c)) if c > 0 => format!("{:.1}%", e as f64 * 100.0 / f64::from(c)),
            _ => "-".into(),
        };
        let name = if m.pinned { m.name.to_string() } else { format!("{} (missing)", m.name) };
        let _ = writeln!(s, "{name:<14} {entries:>10} {cap:>10} {full:>6}");
    }
    let _ = writeln!(s, "drops:");
    for (reason, n) in &st.drops {
        let _ = writeln!(s, "  {reason:<28} {n}");
    }
    s
}
