//! The kernel side as seen from userspace: loading and pinning the programs
//! and maps ([`loader`]), typed access to the pinned maps ([`maps`]), and the
//! reconciler that writes the model's desired state into them
//! ([`reconcile`]).
pub mod loader;
pub mod maps;
pub mod node;
pub mod reconcile;
pub mod sockterm;

use std::path::{Path, PathBuf};

/// Sizes (max entries) of the maps that grow with the cluster; the agent's
/// `--map-size-*` flags. The others have fixed sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `SL_SERVICES`: frontends plus backend slots.
    pub services: u32,
    /// `SL_BACKENDS`, `SL_BE_STATS`: backends (per frontend).
    pub backends: u32,
    /// `SL_REVNAT`, `SL_SVC_STATS`, `SL_VIPS`: frontends.
    pub frontends: u32,
    /// `SL_CT`: conntrack entries (two per flow).
    pub conntrack: u32,
    /// `SL_AFFINITY`: (client, frontend) pairs with session affinity.
    pub affinity: u32,
    /// `SL_SRC_RANGES`: loadBalancerSourceRanges entries of all frontends.
    pub source_ranges: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: proxy_common::SERVICES_MAX,
            backends: proxy_common::BACKENDS_MAX,
            frontends: proxy_common::REVNAT_MAX,
            conntrack: proxy_common::CT_MAX,
            affinity: proxy_common::AFFINITY_MAX,
            source_ranges: proxy_common::SRC_RANGES_MAX,
        }
    }
}

impl MapSizes {
    /// The max entries map `name` is created with.
    #[must_use]
    pub fn of(&self, name: &str) -> u32 {
        use proxy_common as pc;
        match name {
            pc::MAP_SERVICES => self.services,
            pc::MAP_BACKENDS | pc::MAP_BE_STATS => self.backends,
            pc::MAP_REVNAT | pc::MAP_SVC_STATS | pc::MAP_VIPS => self.frontends,
            pc::MAP_CT => self.conntrack,
            pc::MAP_AFFINITY => self.affinity,
            pc::MAP_SRC_RANGES => self.source_ranges,
            pc::MAP_SOCK_REVNAT => pc::SOCK_REVNAT_MAX,
            pc::MAP_FRAGS => pc::FRAGS_MAX,
            pc::MAP_ENDPOINTS => pc::ENDPOINTS_MAX,
            pc::MAP_DROPS => pc::DropReason::COUNT,
            pc::MAP_NODE_ADDRS => pc::NODE_ADDRS_MAX,
            pc::MAP_CONFIG => 1,
            pc::MAP_POD_CIDRS => pc::POD_CIDRS_MAX,
            pc::MAP_FWD_STATS => pc::FWD_STATS_COUNT,
            _ => 0,
        }
    }

    /// Small maps, for tests that load many copies.
    #[must_use]
    pub fn small() -> Self {
        Self {
            services: 16_384,
            backends: 8_192,
            frontends: 4_096,
            conntrack: 16_384,
            affinity: 4_096,
            source_ranges: 1_024,
        }
    }
}

/// Where things are pinned under the bpffs root.
#[derive(Clone, Debug)]
pub struct PinPaths {
    pub root: PathBuf,
}

impl PinPaths {
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Directory of the pinned maps, one file per map name.
    #[must_use]
    pub fn maps(&self) -> PathBuf {
        self.root.join(proxy_common::pins::MAPS_DIR)
    }

    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Directory of the pinned programs.
    #[must_use]
    pub fn progs(&self) -> PathBuf {
        self.root.join(proxy_common::pins::PROGS_DIR)
    }

    #[must_use]
    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs().join(name)
    }

    /// Directory of the pinned tc links, one per attached interface.
    #[must_use]
    pub fn links(&self) -> PathBuf {
        self.root.join(proxy_common::pins::LINKS_DIR)
    }

    /// The pin of the pod program's link on interface `ifindex`.
    #[must_use]
    pub fn pod_link(&self, ifindex: u32) -> PathBuf {
        self.links().join(format!("{}{ifindex}", proxy_common::pins::POD_LINK_PREFIX))
    }

    /// The pin of the external program's link on interface `ifindex`.
    #[must_use]
    pub fn ext_link(&self, ifindex: u32) -> PathBuf {
        self.links().join(format!("{}{ifindex}", proxy_common::pins::EXT_LINK_PREFIX))
    }

    /// The external link pins present, as (interface index, pin path).
    pub fn ext_links(&self) -> std::io::Result<Vec<(u32, PathBuf)>> {
        self.links_with(proxy_common::pins::EXT_LINK_PREFIX)
    }

    /// The pin of a socket-level LB program's cgroup link.
    #[must_use]
    pub fn sock_link(&self, prog: &str) -> PathBuf {
        self.links().join(format!("cgroup-{prog}"))
    }

    /// The pod link pins present, as (interface index, pin path); an
    /// absent links directory is none.
    pub fn pod_links(&self) -> std::io::Result<Vec<(u32, PathBuf)>> {
        self.links_with(proxy_common::pins::POD_LINK_PREFIX)
    }

    fn links_with(&self, prefix: &str) -> std::io::Result<Vec<(u32, PathBuf)>> {
        let entries = match std::fs::read_dir(self.links()) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut links = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let ifindex =
                path.file_name().and_then(|n| n.to_str()?.strip_prefix(prefix)?.parse().ok());
            if let Some(ifindex) = ifindex {
                links.push((ifindex, path));
            }
        }
        links.sort_unstable();
        Ok(links)
    }

    /// Parses an interface index back out of a pod link pin's file name.
    #[must_use]
    pub fn pod_link_ifindex(path: &Path) -> Option<u32> {
        path.file_name()?.to_str()?.strip_prefix(proxy_common::pins::POD_LINK_PREFIX)?.parse().ok()
    }
}

/// Errors of the data path layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not on a bpffs and mounting one there failed: {source}")]
    NotBpffs { path: PathBuf, source: nix::Error },
    #[error(
        "loading the eBPF programs failed (does this kernel have BPF with JIT, and are we root with CAP_BPF/CAP_SYS_ADMIN?): {0}"
    )]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no program {0}")]
    ProgramMissing(&'static str),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: Box<aya::programs::ProgramError> },
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: aya::pin::PinError },
    #[error("attaching to interface {ifname} (tcx or clsact needed): {source}")]
    Attach { ifname: String, source: Box<aya::programs::ProgramError> },
    #[error("link pin {path}: {source}")]
    Link { path: PathBuf, source: aya::programs::links::LinkError },
    #[error(
        "pinned map {path} has {what} {found}, this build expects {expected}: it was made by an incompatible version; remove it (traffic through sluice is interrupted) or use another --bpffs-root"
    )]
    IncompatibleMap { path: PathBuf, what: &'static str, found: u32, expected: u32 },
    #[error("map {name} at {path}: {source} (is the agent's state pinned there? see --bpffs-root)")]
    OpenMap { name: &'static str, path: PathBuf, source: Box<aya::maps::MapError> },
    #[error("map {name}: {op} failed: {source}")]
    MapOp { name: &'static str, op: &'static str, source: Box<aya::maps::MapError> },
    #[error("map {name} is full ({capacity} entries); raise its size")]
    MapFull { name: &'static str, capacity: u32 },
    #[error("out of {0} ids")]
    IdsExhausted(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
