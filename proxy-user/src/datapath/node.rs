//! This node's addresses in the data path: which of them serve NodePorts
//! (`SL_NODE_ADDRS`) and which one external flows to other nodes' backends
//! are SNATed to (`SL_CONFIG`). The agent recomputes both from the live
//! addresses of `--devices` on every device scan, so an address added to or
//! removed from a device is served or dropped without a restart.
//!
//! Also the fast-path switches (`SL_CONFIG` flags, from `--fast-path`) and
//! the cluster's pod address space (`SL_POD_CIDRS`), the destinations the
//! FIB fast path may forward to.

use std::{collections::BTreeSet, net::Ipv4Addr};

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};
use ipnetwork::Ipv4Network;
use proxy_common::{
    CFG_FAST_PATH_FIB, CFG_FAST_PATH_PEER, DatapathConfig, FWD_FIB, FWD_NEIGH, FWD_PEER, FWD_STACK,
    MAP_CONFIG, MAP_FWD_STATS, MAP_NODE_ADDRS, MAP_POD_CIDRS, NODE_ADDR_NODEPORT,
};

use super::{Error, PinPaths, Result, maps::open_pinned};

/// The IPv4 addresses of interfaces, as (interface name, address).
pub type DeviceAddrs = Vec<(String, Ipv4Addr)>;

/// What the data path must know about this node's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddrs {
    /// Addresses NodePorts are served on.
    pub nodeport: BTreeSet<Ipv4Addr>,
    /// The SNAT address: the node's InternalIP when a device has it, else
    /// the first address of the first device (by name).
    pub snat: Option<Ipv4Addr>,
}

/// Computes [`NodeAddrs`] from the addresses of the selected devices
/// (`addrs`, already filtered to `--devices`), `--nodeport-addresses`
/// (`ranges`; empty: every address) and the node's InternalIP if known.
/// Loopback and link-local addresses never serve NodePorts.
#[must_use]
pub fn node_addrs(
    addrs: &DeviceAddrs,
    ranges: &[Ipv4Network],
    internal_ip: Option<Ipv4Addr>,
) -> NodeAddrs {
    let usable = |a: &Ipv4Addr| !a.is_loopback() && !a.is_link_local() && !a.is_unspecified();
    let nodeport = addrs
        .iter()
        .map(|(_, a)| *a)
        .filter(usable)
        .filter(|a| ranges.is_empty() || ranges.iter().any(|r| r.contains(*a)))
        .collect();
    let mut sorted: Vec<&(String, Ipv4Addr)> = addrs.iter().filter(|(_, a)| usable(a)).collect();
    sorted.sort();
    let snat = internal_ip
        .filter(|ip| sorted.iter().any(|(_, a)| a == ip))
        .or_else(|| sorted.first().map(|(_, a)| *a));
    NodeAddrs { nodeport, snat }
}

/// Parses `--nodeport-addresses` (IPv4 CIDRs; IPv6 ones are accepted and
/// ignored, since the data path is IPv4 only for now).
pub fn parse_ranges(values: &[String]) -> std::result::Result<Vec<Ipv4Network>, String> {
    let mut out = Vec::new();
    for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        match v.parse::<ipnetwork::IpNetwork>() {
            Ok(ipnetwork::IpNetwork::V4(n)) => out.push(n),
            Ok(ipnetwork::IpNetwork::V6(_)) => {}
            Err(e) => return Err(format!("--nodeport-addresses {v:?}: not a CIDR ({e})")),
        }
    }
    Ok(out)
}

/// The `SL_CONFIG` flags of `--fast-path`: both fast paths, or none.
#[must_use]
pub fn fast_path_flags(on: bool) -> u32 {
    if on { CFG_FAST_PATH_PEER | CFG_FAST_PATH_FIB } else { 0 }
}

/// The fast-path counters (`SL_FWD_STATS`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FastPathStats {
    /// Packets delivered to a local pod with `bpf_redirect_peer`.
    pub peer: u64,
    /// Packets forwarded with `bpf_redirect` after a FIB lookup.
    pub fib: u64,
    /// Packets forwarded with `bpf_redirect_neigh`.
    pub neigh: u64,
    /// Packets a fast path left to the stack.
    pub stack: u64,
}

impl FastPathStats {
    /// Reads the pinned counters.
    pub fn read(paths: &PinPaths) -> Result<Self> {
        let map: PerCpuArray<MapData, u64> = open_pinned(paths, MAP_FWD_STATS)?;
        let sum = |slot: u32| -> Result<u64> {
            let v = map.get(&slot, 0).map_err(op_err(MAP_FWD_STATS, "lookup"))?;
            Ok(v.iter().sum())
        };
        Ok(Self {
            peer: sum(FWD_PEER)?,
            fib: sum(FWD_FIB)?,
            neigh: sum(FWD_NEIGH)?,
            stack: sum(FWD_STACK)?,
        })
    }

    /// What the counters grew by since `before` (read earlier from the same
    /// pins).
    #[must_use]
    pub fn since(&self, before: &Self) -> Self {
        Self {
            peer: self.peer.saturating_sub(before.peer),
            fib: self.fib.saturating_sub(before.fib),
            neigh: self.neigh.saturating_sub(before.neigh),
            stack: self.stack.saturating_sub(before.stack),
        }
    }
}

/// The pinned node maps.
pub struct NodeMaps {
    addrs: HashMap<MapData, u32, u32>,
    config: Array<MapData, DatapathConfig>,
    pod_cidrs: LpmTrie<MapData, u32, u32>,
    /// `CFG_FAST_PATH_*` bits written with the node addresses.
    flags: u32,
    applied: Option<NodeAddrs>,
    applied_cidrs: Option<Vec<Ipv4Network>>,
}

fn op_err(name: &'static str, op: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::MapOp { name, op, source: Box::new(source) }
}

impl NodeMaps {
    pub fn open(paths: &PinPaths) -> Result<Self> {
        Ok(Self {
            addrs: open_pinned(paths, MAP_NODE_ADDRS)?,
            config: open_pinned(paths, MAP_CONFIG)?,
            pod_cidrs: open_pinned(paths, MAP_POD_CIDRS)?,
            flags: 0,
            applied: None,
            applied_cidrs: None,
        })
    }

    /// The `SL_CONFIG` flags (`CFG_FAST_PATH_*`) the next sync writes;
    /// none unless given (the agent passes its `--fast-path`).
    #[must_use]
    pub fn with_flags(mut self, flags: u32) -> Self {
        self.flags = flags;
        self
    }

    /// Makes `SL_POD_CIDRS` hold exactly `cidrs`; returns whether anything
    /// changed. New ranges are added before stale ones are removed.
    pub fn sync_pod_cidrs(&mut self, cidrs: &[Ipv4Network]) -> Result<bool> {
        if self.applied_cidrs.as_deref() == Some(cidrs) {
            return Ok(false);
        }
        let key = |n: &Ipv4Network| {
            Key::new(u32::from(n.prefix()), proxy_common::addr_to_map(n.network()))
        };
        let present: Vec<Key<u32>> = self.pod_cidrs.keys().filter_map(Result::ok).collect();
        let wanted: Vec<Key<u32>> = cidrs.iter().map(key).collect();
        let same =
            |a: &Key<u32>, b: &Key<u32>| a.prefix_len() == b.prefix_len() && a.data() == b.data();
        for k in &wanted {
            self.pod_cidrs.insert(k, 1, 0).map_err(op_err(MAP_POD_CIDRS, "insert"))?;
        }
        for k in present.iter().filter(|p| !wanted.iter().any(|w| same(p, w))) {
            self.pod_cidrs.remove(k).map_err(op_err(MAP_POD_CIDRS, "delete"))?;
        }
        self.applied_cidrs = Some(cidrs.to_vec());
        Ok(true)
    }

    /// Makes the maps say `want`; returns whether anything changed. Addresses
    /// are added before stale ones are removed, and the map is compared
    /// with what it holds (also after a restart).
    pub fn sync(&mut self, want: &NodeAddrs) -> Result<bool> {
        if self.applied.as_ref() == Some(want) {
            return Ok(false);
        }
        let present: BTreeSet<u32> = self.addrs.keys().filter_map(Result::ok).collect();
        let wanted: BTreeSet<u32> =
            want.nodeport.iter().map(|a| proxy_common::addr_to_map(*a)).collect();
        for raw in wanted.difference(&present) {
            self.addrs
                .insert(raw, NODE_ADDR_NODEPORT, 0)
                .map_err(op_err(MAP_NODE_ADDRS, "insert"))?;
        }
        for raw in present.difference(&wanted) {
            self.addrs.remove(raw).map_err(op_err(MAP_NODE_ADDRS, "delete"))?;
        }
        let config = DatapathConfig {
            snat_addr: want.snat.map_or(0, proxy_common::addr_to_map),
            flags: self.flags,
        };
        self.config.set(0, config, 0).map_err(op_err(MAP_CONFIG, "update"))?;
        self.applied = Some(want.clone());
        Ok(true)
    }
}

/// The IPv4 addresses of every interface of this network namespace.
pub fn interface_addrs() -> std::io::Result<DeviceAddrs> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            out.push((ifa.interface_name.clone(), sin.ip()));
        }
    }
    Ok(out)
}

/// The interface of the IPv4 default route (`/proc/net/route`), the
/// `--devices` default.
pub fn default_route_device() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000").then(|| f[0].to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn addrs() -> DeviceAddrs {
        vec![
            ("eth1".into(), a("198.18.0.2")),
            ("eth0".into(), a("192.168.1.5")),
            ("eth0".into(), a("169.254.1.1")),
            ("lo".into(), a("127.0.0.1")),
        ]
    }

    #[test]
    fn every_usable_address_serves_nodeports_by_default() {
        let n = node_addrs(&addrs(), &[], None);
        assert_eq!(n.nodeport, [a("192.168.1.5"), a("198.18.0.2")].into());
        // First device by name.
        assert_eq!(n.snat, Some(a("192.168.1.5")));
    }

    #[test]
    fn nodeport_addresses_limit_and_internal_ip_wins_for_snat() {
        let ranges = parse_ranges(&["198.18.0.0/24".into(), "fd00::/64".into()]).unwrap();
        let n = node_addrs(&addrs(), &ranges, Some(a("198.18.0.2")));
        assert_eq!(n.nodeport, [a("198.18.0.2")].into());
        assert_eq!(n.snat, Some(a("198.18.0.2")));
        // An InternalIP no device has is not used.
        let n = node_addrs(&addrs(), &ranges, Some(a("10.0.0.1")));
        assert_eq!(n.snat, Some(a("192.168.1.5")));
    }

    #[test]
    fn bad_ranges_are_rejected_with_the_value() {
        let e = parse_ranges(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(e.contains("10.0.0.0/33"), "{e}");
    }

    #[test]
    fn no_devices_no_addresses() {
        assert_eq!(node_addrs(&Vec::new(), &[], None), NodeAddrs::default());
    }
}
