//! The hookup into the agent's pinned data path: the pod's entry in
//! `SL_ENDPOINTS` and the pod program attached (tcx ingress) to the host veth
//! with its link pinned at `<root>/links/pod-ingress-<ifindex>` — the same
//! pin the agent uses, so the agent sees the interface as attached and
//! replaces the program in place on upgrade.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError};
use aya::programs::links::FdLink;
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use proxy_common::pins::{LINKS_DIR, MAPS_DIR, POD_LINK_PREFIX, PROGS_DIR};
use proxy_common::{EndpointInfo, MAP_ENDPOINTS, PROG_POD_INGRESS, addr_to_map};

use crate::{Error, Result};

/// Paths of the agent's pins under `bpffsRoot`.
#[derive(Debug, Clone)]
pub struct Pins {
    pub root: PathBuf,
}

impl Pins {
    pub fn new(root: &Path) -> Self {
        Pins { root: root.to_owned() }
    }

    pub fn endpoints_map(&self) -> PathBuf {
        self.root.join(MAPS_DIR).join(MAP_ENDPOINTS)
    }

    pub fn program(&self) -> PathBuf {
        self.root.join(PROGS_DIR).join(PROG_POD_INGRESS)
    }

    pub fn link(&self, ifindex: u32) -> PathBuf {
        self.root.join(LINKS_DIR).join(format!("{POD_LINK_PREFIX}{ifindex}"))
    }

    /// `Err(AgentNotReady)` naming the first missing pin.
    pub fn check_ready(&self) -> Result<()> {
        for p in [self.program(), self.endpoints_map()] {
            if !p.exists() {
                return Err(Error::AgentNotReady { root: self.root.clone(), missing: p });
            }
        }
        Ok(())
    }

    fn endpoints(&self) -> Result<HashMap<MapData, u32, EndpointInfo>> {
        let path = self.endpoints_map();
        let wrap = |e: MapError| Error::Datapath(format!("opening {}: {e}", path.display()));
        let data = MapData::from_pin(&path).map_err(wrap)?;
        let map = Map::from_map_data(data).map_err(wrap)?;
        HashMap::try_from(map).map_err(wrap)
    }

    /// Inserts (or replaces) the pod's endpoint entry.
    pub fn insert_endpoint(&self, ip: Ipv4Addr, info: EndpointInfo) -> Result<()> {
        self.endpoints()?
            .insert(addr_to_map(ip), info, 0)
            .map_err(|e| Error::Datapath(format!("inserting {ip} into {MAP_ENDPOINTS}: {e}")))
    }

    /// Removes the pod's endpoint entry (missing map or entry is fine).
    pub fn remove_endpoint(&self, ip: Ipv4Addr) -> Result<()> {
        if !self.endpoints_map().exists() {
            return Ok(());
        }
        match self.endpoints()?.remove(&addr_to_map(ip)) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => Ok(()),
            Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::Datapath(format!("removing {ip} from {MAP_ENDPOINTS}: {e}"))),
        }
    }

    /// The pod's endpoint entry, if the map and the entry exist.
    pub fn endpoint_if_present(&self, ip: Ipv4Addr) -> Result<Option<EndpointInfo>> {
        if !self.endpoints_map().exists() {
            return Ok(None);
        }
        match self.endpoints()?.get(&addr_to_map(ip), 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(MapError::SyscallError(e)) if e.io_error.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Datapath(format!("reading {ip} from {MAP_ENDPOINTS}: {e}"))),
        }
    }

    /// Every endpoint entry's address.
    pub fn endpoint_addrs(&self) -> Result<Vec<Ipv4Addr>> {
        if !self.endpoints_map().exists() {
            return Ok(Vec::new());
        }
        let map = self.endpoints()?;
        Ok(map
            .keys()
            .filter_map(std::result::Result::ok)
            .map(proxy_common::addr_from_map)
            .collect())
    }

    /// Attaches the pinned pod program to `ifname` (tcx ingress, in the
    /// calling thread's network namespace) and pins the link. A pin left for
    /// the same ifindex (a former interface, or the agent that was faster) is
    /// replaced.
    pub fn attach(&self, ifname: &str, ifindex: u32) -> Result<()> {
        let pin = self.link(ifindex);
        let prog_path = self.program();
        let mut prog = SchedClassifier::from_pin(&prog_path).map_err(|e| {
            Error::Datapath(format!("opening program {}: {e}", prog_path.display()))
        })?;
        let attached = prog.attach_with_options(
            ifname,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        );
        let id = match attached {
            Ok(id) => id,
            // The agent's device scan attached the same program to the new
            // interface first (tcx refuses a second copy): its link pin
            // appears right after its attach.
            Err(_) if self.pinned_soon(&pin) => return Ok(()),
            Err(e) => {
                return Err(Error::Datapath(format!(
                    "attaching {PROG_POD_INGRESS} to {ifname}: {e}"
                )));
            }
        };
        let link = prog
            .take_link(id)
            .map_err(|e| Error::Datapath(format!("taking the link of {ifname}: {e}")))?;
        let fd_link = FdLink::try_from(link)
            .map_err(|e| Error::Datapath(format!("link of {ifname} is not an fd link: {e}")))?;
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&pin)(e)),
        }
        if let Some(dir) = pin.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        fd_link
            .pin(&pin)
            .map_err(|e| Error::Datapath(format!("pinning {}: {e}", pin.display())))?;
        Ok(())
    }

    /// Whether the link pin `pin` exists now or within 200 ms.
    fn pinned_soon(&self, pin: &std::path::Path) -> bool {
        for _ in 0..20 {
            if pin.exists() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    /// Removes the link pin of `ifindex` (missing is fine). With the pin
    /// gone the link is released; it goes anyway with the interface.
    pub fn detach(&self, ifindex: u32) -> Result<()> {
        if ifindex == 0 {
            return Ok(());
        }
        let pin = self.link(ifindex);
        match std::fs::remove_file(&pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&pin)(e)),
        }
    }
}
