//! What the agents install for pod routing, as a test reads it back: their
//! routes (protocol [`RTPROT_SLUICE`]) and, with `--tunnel vxlan`, the
//! overlay device's neighbour and FDB entries.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use super::{Netns, Node, RouteEntry, run_checked, wait_for};
use crate::routing::RTPROT_SLUICE;
use crate::tunnel::{DEVICE, fmt_mac, vtep_addr, vtep_mac};

impl Netns {
    /// The main table's IPv4 routes of protocol [`RTPROT_SLUICE`], sorted
    /// by destination, gateway and device.
    pub fn sluice_routes(&self) -> anyhow::Result<Vec<RouteEntry>> {
        let proto = RTPROT_SLUICE.to_string();
        let mut r: Vec<RouteEntry> = self
            .routes()?
            .into_iter()
            .filter(|r| r.protocol.as_deref() == Some(proto.as_str()))
            .collect();
        r.sort_by(|a, b| (&a.dst, &a.gateway, &a.dev).cmp(&(&b.dst, &b.gateway, &b.dev)));
        Ok(r)
    }
}

impl Node {
    /// Waits until this node's [`Netns::sluice_routes`] are exactly `want`
    /// as (destination, gateway), in any order; panics after `timeout`
    /// naming the node and what it has.
    pub fn wait_sluice_routes(&self, want: &[(String, String)], timeout: Duration) {
        let mut want = want.to_vec();
        want.sort();
        wait_for(timeout, &format!("sluice routes on {} = {want:?}", self.name()), || {
            let got: Vec<(String, String)> = self
                .netns()
                .sluice_routes()?
                .into_iter()
                .map(|r| (r.dst, r.gateway.unwrap_or_default()))
                .collect();
            if got != want {
                anyhow::bail!("have {got:?}");
            }
            Ok(true)
        });
    }
}

/// What a node holds for its VXLAN peers, each list sorted: the agent's
/// routes (destination, gateway, device), the permanent neighbour entries
/// of the overlay device (address, MAC) and its FDB (MAC, underlay address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overlay {
    pub routes: Vec<(String, String, String)>,
    pub neighbours: Vec<(String, String)>,
    pub fdb: Vec<(String, String)>,
}

impl Overlay {
    /// The entries in `ns` now.
    pub fn read(ns: &Netns) -> anyhow::Result<Overlay> {
        let routes = ns
            .sluice_routes()?
            .into_iter()
            .map(|r| (r.dst, r.gateway.unwrap_or_default(), r.dev.unwrap_or_default()))
            .collect();
        let neigh = ns.ip(&["-j", "neigh", "show", "dev", DEVICE, "nud", "permanent"])?;
        let fdb = run_checked(
            ns.command("bridge")?.args(["-j", "fdb", "show", "dev", DEVICE]),
            Duration::from_secs(10),
        )?;
        let mut o = Overlay {
            routes,
            neighbours: pairs(&neigh, "dst", "lladdr")?,
            fdb: pairs(&fdb, "mac", "dst")?,
        };
        o.routes.sort();
        Ok(o)
    }

    /// What a node must hold for `peers`: (pod CIDR, InternalIP) of each.
    pub fn expected(peers: &[(String, Ipv4Addr)]) -> anyhow::Result<Overlay> {
        let mut o = Overlay::default();
        for (cidr, ip) in peers {
            let vtep = vtep_addr(cidr.parse().with_context(|| format!("pod CIDR {cidr}"))?);
            let mac = fmt_mac(&vtep_mac(*ip));
            o.routes.push((cidr.clone(), vtep.to_string(), DEVICE.to_owned()));
            o.neighbours.push((vtep.to_string(), mac.clone()));
            o.fdb.push((mac, ip.to_string()));
        }
        o.routes.sort();
        o.neighbours.sort();
        o.fdb.sort();
        Ok(o)
    }

    /// Waits until `node` holds exactly `self`; panics after `timeout`
    /// naming the node and what it has.
    pub fn wait(&self, node: &Node, timeout: Duration) {
        wait_for(timeout, &format!("{}'s overlay = {self:?}", node.name()), || {
            let got = Overlay::read(node.netns())?;
            if got != *self {
                anyhow::bail!("have {got:?}");
            }
            Ok(true)
        });
    }
}

/// The (`a`, `b`) string fields of each object of the JSON array `json`
/// (iproute2's `-j` output), sorted.
fn pairs(json: &str, a: &str, b: &str) -> anyhow::Result<Vec<(String, String)>> {
    let v: Value = serde_json::from_str(json).with_context(|| format!("parsing {json:?}"))?;
    let mut r: Vec<(String, String)> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s(a), s(b))
        })
        .collect();
    r.sort();
    Ok(r)
}
