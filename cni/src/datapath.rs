//! The hookup into the agent's pinned data path: the pod's entry in
//! `SL_ENDPOINTS` and the pod program attached to the host veth as a tc
//! filter (clsact ingress, direct-action) at the priority and handle the
//! agent uses too ([`proxy_common::pins::POD_FILTER_PRIORITY`]), so the agent
//! finds it in place and replaces the program in it atomically on upgrade.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError};
use aya::programs::tc::{NlOptions, TcAttachOptions, TcError, TcHandle, qdisc_add_clsact};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use proxy_common::pins::{
    LINKS_DIR, MAPS_DIR, POD_FILTER_HANDLE, POD_FILTER_PRIORITY, POD_LINK_PREFIX, PROGS_DIR,
};
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

    /// Where versions before the tc filter pinned a pod's tcx link.
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

    /// Removes the entry of `ip` if it belongs to the pod on `ifindex` (any
    /// entry of `ip` when the interface is unknown): the address may belong
    /// to another pod by now.
    pub fn remove_own_endpoint(&self, ip: Ipv4Addr, ifindex: Option<u32>) -> Result<()> {
        let ours = match self.endpoint_if_present(ip)? {
            Some(e) => ifindex.is_none_or(|i| e.ifindex == i),
            None => false,
        };
        if ours { self.remove_endpoint(ip) } else { Ok(()) }
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

    /// Attaches the pinned pod program to `ifname` (in the calling thread's
    /// network namespace) as the agent does: a clsact qdisc and, on its
    /// ingress, a cls_bpf filter in direct-action mode at
    /// [`POD_FILTER_PRIORITY`]/[`POD_FILTER_HANDLE`]. The filter stays with
    /// the interface (no pin). Call it before the interface is up: adding a
    /// qdisc to an up interface deactivates it for an RCU grace period.
    ///
    /// Legacy tc rather than a tcx link: attaching a tcx link waits for a
    /// full RCU grace period under the RTNL lock (~10 ms here, most of an
    /// ADD) and makes deleting the interface ~12 ms slower; the filter costs
    /// ~0.3 ms (`cargo run --example attach_cost`).
    pub fn attach(&self, ifname: &str) -> Result<()> {
        let prog_path = self.program();
        let mut prog = SchedClassifier::from_pin(&prog_path).map_err(|e| {
            Error::Datapath(format!("opening program {}: {e}", prog_path.display()))
        })?;
        match qdisc_add_clsact(ifname) {
            Ok(()) => {}
            // The agent's device scan was first.
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(Error::Datapath(format!("adding a clsact qdisc to {ifname}: {e}")));
            }
        }
        let options = NlOptions {
            priority: POD_FILTER_PRIORITY,
            handle: TcHandle::from(POD_FILTER_HANDLE),
            classid: None,
        };
        match prog.attach_with_options(
            ifname,
            TcAttachType::Ingress,
            TcAttachOptions::Netlink(options),
        ) {
            // Dropping the link would delete the filter: it stays with the
            // interface (the link is only an ifindex, priority and handle).
            Ok(id) => match prog.take_link(id) {
                Ok(link) => std::mem::forget(link),
                Err(e) => {
                    return Err(Error::Datapath(format!("taking the filter of {ifname}: {e}")));
                }
            },
            // The agent's device scan attached the same pinned program at
            // the same place first (a filter there is exclusive).
            Err(ProgramError::TcError(TcError::NetlinkError(e)))
                if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(Error::Datapath(format!(
                    "attaching {PROG_POD_INGRESS} to {ifname}: {e}"
                )));
            }
        }
        Ok(())
    }

    /// Removes a tcx link pin of `ifindex` that a version before the tc
    /// filter left (missing is fine). With the pin gone the link is
    /// released; it goes anyway with the interface.
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
