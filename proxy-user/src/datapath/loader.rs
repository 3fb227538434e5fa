//! Loads the kernel programs, pins maps and programs under the bpffs root,
//! and attaches the pod program to pod interfaces as tc filters and the
//! external program to external devices with pinned tcx links, so that an
//! agent restart or upgrade replaces the programs in place (atomically, in
//! the filter or through the pinned link) and drops no packet.
//!
//! Pins under `<root>`:
//! - `maps/<MAP_NAME>`: every map (reused when present, so state survives);
//! - `progs/sl_pod_ingress`: the pod program (the CNI attaches it to new pods);
//! - `links/ext-ingress-<ifindex>`: one tcx link per external device (`--devices`).
//!
//! Pod interfaces carry the pod program as a cls_bpf filter (clsact
//! ingress, direct-action) at [`POD_FILTER_PRIORITY`]/[`POD_FILTER_HANDLE`],
//! not a tcx link: a tcx attach waits a full RCU grace period under the RTNL
//! lock (~10 ms, most of a CNI ADD) and slows the interface's deletion. The
//! CNI attaches the same filter; the filter lives and dies with the
//! interface. `links/pod-ingress-<ifindex>` tcx link pins that older versions
//! left are removed once the filter is in place (the tcx copy ran first
//! until then; it returns a verdict, so the program never runs twice).

use std::{
    collections::BTreeSet,
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
    programs::{
        ProgramError,
        tc::{NlOptions, TcError, TcHandle, qdisc_add_clsact},
    },
    util::KernelVersion,
};
use proxy_common::pins::{POD_FILTER_HANDLE, POD_FILTER_PRIORITY};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, CtEntry, CtKey, DatapathConfig, EndpointInfo, FragKey,
    FragPorts, MAP_AFFINITY, MAP_BACKENDS, MAP_BE_STATS, MAP_CONFIG, MAP_CT, MAP_DROPS,
    MAP_ENDPOINTS, MAP_FRAGS, MAP_FWD_STATS, MAP_NODE_ADDRS, MAP_POD_CIDRS, MAP_REVNAT,
    MAP_SERVICES, MAP_SOCK_REVNAT, MAP_SRC_RANGES, MAP_SVC_STATS, MAP_VIPS, PROG_EXT_INGRESS,
    PROG_POD_INGRESS, RevNat, SOCK_PROGS, ServiceKey, ServiceValue, SockRevNat, SockRevNatKey,
    SourceRangeKey, TrafficStats,
};
use tracing::{debug, info, warn};

use super::{Error, MapSizes, PinPaths, Result};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

// Every map has a layout entry.
const _: () = assert!(MAP_LAYOUTS.len() == proxy_common::ALL_MAPS.len());

/// What each pinned map must look like: (name, key size, value size); its
/// max entries come from [`MapSizes`].
pub const MAP_LAYOUTS: [(&str, usize, usize); 17] = [
    (MAP_SERVICES, size_of::<ServiceKey>(), size_of::<ServiceValue>()),
    (MAP_BACKENDS, size_of::<u32>(), size_of::<Backend>()),
    (MAP_REVNAT, size_of::<u32>(), size_of::<RevNat>()),
    (MAP_CT, size_of::<CtKey>(), size_of::<CtEntry>()),
    (MAP_FRAGS, size_of::<FragKey>(), size_of::<FragPorts>()),
    (MAP_DROPS, size_of::<u32>(), size_of::<u64>()),
    (MAP_ENDPOINTS, size_of::<u32>(), size_of::<EndpointInfo>()),
    (MAP_VIPS, size_of::<u32>(), size_of::<u32>()),
    (MAP_SVC_STATS, size_of::<u32>(), size_of::<TrafficStats>()),
    (MAP_BE_STATS, size_of::<u32>(), size_of::<TrafficStats>()),
    (MAP_AFFINITY, size_of::<AffinityKey>(), size_of::<AffinityValue>()),
    (MAP_SOCK_REVNAT, size_of::<SockRevNatKey>(), size_of::<SockRevNat>()),
    (MAP_NODE_ADDRS, size_of::<u32>(), size_of::<u32>()),
    (MAP_CONFIG, size_of::<u32>(), size_of::<DatapathConfig>()),
    (MAP_SRC_RANGES, size_of::<aya::maps::lpm_trie::Key<SourceRangeKey>>(), size_of::<u32>()),
    (MAP_POD_CIDRS, size_of::<aya::maps::lpm_trie::Key<u32>>(), size_of::<u32>()),
    (MAP_FWD_STATS, size_of::<u32>(), size_of::<u64>()),
];

/// The tc programs and where their links are pinned.
const TC_PROGS: [&str; 2] = [PROG_POD_INGRESS, PROG_EXT_INGRESS];

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| i64::from(s.filesystem_type().0 as u32) == BPF_FS_MAGIC)
}

/// Makes sure `root` exists on a bpffs; mounts one there if not (as Cilium
/// does), and says so.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    fs::create_dir_all(root).map_err(io_err(root))?;
    if is_bpffs(root) {
        return Ok(());
    }
    warn!(path = %root.display(), "bpffs root is not on a bpffs: mounting one there");
    nix::mount::mount(Some("bpf"), root, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(|source| Error::NotBpffs { path: root.to_path_buf(), source })
}

/// The cgroup v2 mount point (the root of the unified hierarchy), from
/// /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let fields: Vec<&str> = left.split_whitespace().collect();
        (fstype == "cgroup2" && fields.get(3) == Some(&"/")).then(|| PathBuf::from(fields[4]))
    })
}

/// Checks the kernel has what the agent needs; a one-line reason if not.
pub fn check_kernel() -> std::result::Result<(), String> {
    let version =
        KernelVersion::current().map_err(|e| format!("cannot read the kernel version: {e}"))?;
    if version < KernelVersion::new(6, 6, 0) {
        return Err(format!(
            "kernel {version:?} is too old: sluice attaches with tcx links, which need Linux 6.6 or newer"
        ));
    }
    // Whether BPF itself works is found out by loading, which fails with a
    // one-line reason. (net.core.bpf_jit_enable exists only in the initial
    // network namespace, so it cannot be checked from a node's.)
    Ok(())
}

/// Refuses to adopt pinned maps of another layout (another version's).
fn check_pinned_maps(paths: &PinPaths, sizes: &MapSizes) -> Result<()> {
    for (name, key, value) in MAP_LAYOUTS {
        let max = sizes.of(name);
        let path = paths.map(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| Error::OpenMap {
            name,
            path: path.clone(),
            source: Box::new(source),
        })?;
        let checks = [
            ("key size", info.key_size(), key as u32),
            ("value size", info.value_size(), value as u32),
            ("max entries", info.max_entries(), max),
        ];
        for (what, found, expected) in checks {
            if found != expected {
                return Err(Error::IncompatibleMap { path, what, found, expected });
            }
        }
    }
    Ok(())
}

/// The loaded programs and the interfaces they are attached to.
pub struct Datapath {
    ebpf: Ebpf,
    paths: PinPaths,
    attached: BTreeSet<u32>,
    /// External devices the external program is attached to.
    ext_attached: BTreeSet<u32>,
}

impl Datapath {
    /// Loads the object, reusing pinned maps, and pins maps and programs.
    pub fn load(paths: &PinPaths, sizes: &MapSizes) -> Result<Self> {
        for dir in [paths.maps(), paths.progs(), paths.links()] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        check_pinned_maps(paths, sizes)?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(paths.maps());
        for (name, _, _) in MAP_LAYOUTS {
            loader.map_max_entries(name, sizes.of(name));
        }
        let ebpf = loader.load(crate::ebpf::OBJECT).map_err(|e| Error::Load(Box::new(e)))?;
        let mut dp = Self {
            ebpf,
            paths: paths.clone(),
            attached: BTreeSet::new(),
            ext_attached: BTreeSet::new(),
        };
        for name in TC_PROGS {
            let prog = dp.tc_program(name)?;
            prog.load().map_err(|e| Error::Program { name, source: Box::new(e) })?;
            let pin = paths.prog(name);
            match fs::remove_file(&pin) {
                Ok(()) => debug!(path = %pin.display(), "replacing pinned program"),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Io { path: pin, source: e });
                }
            }
            prog.pin(&pin).map_err(|source| Error::Pin { path: pin.clone(), source })?;
        }
        for name in SOCK_PROGS {
            let prog: &mut CgroupSockAddr = dp
                .ebpf
                .program_mut(name)
                .ok_or(Error::ProgramMissing(name))?
                .try_into()
                .map_err(|e| Error::Program { name, source: Box::new(e) })?;
            prog.load().map_err(|e| Error::Program { name, source: Box::new(e) })?;
        }
        info!(root = %paths.root.display(), "programs loaded, maps and programs pinned");
        Ok(dp)
    }

    fn tc_program(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        self.ebpf
            .program_mut(name)
            .ok_or(Error::ProgramMissing(name))?
            .try_into()
            .map_err(|e| Error::Program { name, source: Box::new(e) })
    }

    /// External devices the external program is attached to by this agent.
    #[must_use]
    pub fn ext_attached(&self) -> &BTreeSet<u32> {
        &self.ext_attached
    }

    /// Attaches the external program to the device `ifname` (tc ingress,
    /// tcx), replacing an earlier agent's in its pinned link.
    pub fn attach_ext_device(&mut self, ifname: &str, ifindex: u32) -> Result<()> {
        let pin = self.paths.ext_link(ifindex);
        self.attach_tc(PROG_EXT_INGRESS, &pin, ifname, ifindex)?;
        self.ext_attached.insert(ifindex);
        Ok(())
    }

    /// Removes the external program's link pins of devices not in `keep`.
    pub fn prune_ext_links(&mut self, keep: &BTreeSet<u32>) -> Result<()> {
        let dir = self.paths.links();
        for (ifindex, path) in self.paths.ext_links().map_err(io_err(&dir))? {
            if !keep.contains(&ifindex) {
                fs::remove_file(&path).map_err(io_err(&path))?;
                self.ext_attached.remove(&ifindex);
                info!(ifindex, "external program detached (device gone or no longer selected)");
            }
        }
        Ok(())
    }

    /// Interfaces the pod program is attached to by this agent.
    #[must_use]
    pub fn attached(&self) -> &BTreeSet<u32> {
        &self.attached
    }

    /// Attaches the pod program to `ifname` as its tc filter (clsact
    /// ingress, direct-action, [`POD_FILTER_PRIORITY`]/[`POD_FILTER_HANDLE`]).
    /// A filter there (the CNI's, or an earlier agent's) gets this agent's
    /// program, atomically. Then a tcx link pin an older version left for
    /// the interface is removed.
    pub fn attach_pod_device(&mut self, ifname: &str, ifindex: u32) -> Result<()> {
        let attach_err =
            |source| Error::Attach { ifname: ifname.to_string(), source: Box::new(source) };
        let is_exists = |e: &ProgramError| {
            matches!(e, ProgramError::TcError(TcError::NetlinkError(n))
                if n.raw_os_error() == Some(libc::EEXIST))
        };
        match qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(attach_err(ProgramError::TcError(e))),
        }
        let options = || {
            TcAttachOptions::Netlink(NlOptions {
                priority: POD_FILTER_PRIORITY,
                handle: TcHandle::from(POD_FILTER_HANDLE),
                classid: None,
            })
        };
        let prog = self.tc_program(PROG_POD_INGRESS)?;
        let id = match prog.attach_with_options(ifname, TcAttachType::Ingress, options()) {
            Ok(id) => id,
            Err(e) if is_exists(&e) => {
                // Replace the program in the existing filter (no create).
                let link = SchedClassifierLink::attached(
                    ifname,
                    TcAttachType::Ingress,
                    POD_FILTER_PRIORITY,
                    TcHandle::from(POD_FILTER_HANDLE),
                    None,
                )
                .map_err(|e| attach_err(ProgramError::TcError(TcError::IoError(e))))?;
                prog.attach_to_link(link).map_err(attach_err)?
            }
            Err(e) => return Err(attach_err(e)),
        };
        // Dropping the link would delete the filter; it stays with the
        // interface (the link is only an ifindex, priority and handle).
        std::mem::forget(prog.take_link(id).map_err(attach_err)?);
        let pin = self.paths.pod_link(ifindex);
        match fs::remove_file(&pin) {
            Ok(()) => info!(ifname, ifindex, "older version's tcx link replaced by the tc filter"),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io { path: pin, source: e }),
        }
        self.attached.insert(ifindex);
        info!(ifname, ifindex, "pod program attached");
        Ok(())
    }

    /// Attaches tc program `name` to `ifname`'s ingress with a tcx link
    /// pinned at `pin`; a link an earlier agent pinned there is updated in
    /// place, atomically.
    fn attach_tc(
        &mut self,
        name: &'static str,
        pin: &Path,
        ifname: &str,
        ifindex: u32,
    ) -> Result<()> {
        let pin = pin.to_path_buf();
        let attach_err =
            |source| Error::Attach { ifname: ifname.to_string(), source: Box::new(source) };
        match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link = SchedClassifierLink::try_from(FdLink::from(old))
                    .map_err(|source| Error::Link { path: pin.clone(), source })?;
                let prog = self.tc_program(name)?;
                match prog.attach_to_link(link) {
                    Ok(id) => {
                        // The pin keeps the (same, updated) link alive.
                        drop(prog.take_link(id).map_err(attach_err)?);
                        debug!(ifname, ifindex, name, "program replaced in pinned link");
                        return Ok(());
                    }
                    Err(e) => {
                        warn!(ifname, ifindex, error = %e, "pinned link unusable, attaching anew");
                        fs::remove_file(&pin).map_err(io_err(&pin))?;
                    }
                }
            }
            Err(aya::programs::links::LinkError::SyscallError(e))
                if e.io_error.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                warn!(path = %pin.display(), error = %source, "removing unreadable link pin");
                fs::remove_file(&pin).map_err(io_err(&pin))?;
            }
        }
        let prog = self.tc_program(name)?;
        let id = prog
            .attach_with_options(
                ifname,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_err)?;
        let link = prog.take_link(id).map_err(attach_err)?;
        let fd_link =
            FdLink::try_from(link).map_err(|source| Error::Link { path: pin.clone(), source })?;
        fd_link.pin(&pin).map_err(|source| Error::Pin { path: pin.clone(), source })?;
        info!(ifname, ifindex, name, "program attached");
        Ok(())
    }

    /// Attaches the socket-level LB programs to the cgroup v2 directory
    /// `cgroup`, replacing those an earlier agent attached (the new ones are
    /// attached first, so no connect() goes unbalanced in between).
    pub fn attach_socket_lb(&mut self, cgroup: &Path) -> Result<()> {
        let dir = fs::File::open(cgroup).map_err(io_err(cgroup))?;
        for name in SOCK_PROGS {
            let attach_err = |source| Error::Attach {
                ifname: format!("cgroup {}", cgroup.display()),
                source: Box::new(source),
            };
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(Error::ProgramMissing(name))?
                .try_into()
                .map_err(|e| Error::Program { name, source: Box::new(e) })?;
            let id = prog.attach(&dir, CgroupAttachMode::Single).map_err(attach_err)?;
            let link = prog.take_link(id).map_err(attach_err)?;
            let fd_link = FdLink::try_from(link)
                .map_err(|source| Error::Link { path: self.paths.sock_link(name), source })?;
            let pin = self.paths.sock_link(name);
            // Dropping the old pin detaches the old program, now that the
            // new one is in place.
            match fs::remove_file(&pin) {
                Ok(()) => debug!(name, "replacing socket LB link"),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io { path: pin, source: e }),
            }
            fd_link.pin(&pin).map_err(|source| Error::Pin { path: pin.clone(), source })?;
        }
        info!(cgroup = %cgroup.display(), "socket-level load balancing attached");
        Ok(())
    }

    /// Detaches socket-level LB (`--socket-lb=false`): removes the pinned
    /// links an earlier agent left.
    pub fn detach_socket_lb(&mut self) -> Result<()> {
        for name in SOCK_PROGS {
            let pin = self.paths.sock_link(name);
            match fs::remove_file(&pin) {
                Ok(()) => info!(name, "socket-level load balancing detached"),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io { path: pin, source: e }),
            }
        }
        Ok(())
    }

    /// Forgets pod interfaces not in `keep` (gone: their filters went with
    /// them), and removes tcx link pins older versions left for them.
    pub fn prune_links(&mut self, keep: &BTreeSet<u32>) -> Result<()> {
        self.attached.retain(|i| keep.contains(i));
        let dir = self.paths.links();
        for (ifindex, path) in self.paths.pod_links().map_err(io_err(&dir))? {
            if !keep.contains(&ifindex) {
                fs::remove_file(&path).map_err(io_err(&path))?;
                info!(ifindex, "older version's pod link pin removed (interface gone)");
            }
        }
        Ok(())
    }
}
