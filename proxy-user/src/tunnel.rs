//! VXLAN overlay between nodes (`--tunnel vxlan`).
//!
//! The design is flannel's `vxlan` backend with a static forwarding table,
//! minus its Node annotations: everything a node needs about a peer follows
//! from the peer's Node object.
//!
//! - One VXLAN device per node, [`DEVICE`] (`vxlan_sluice`; not `sl...`,
//!   which `--pod-devices sl+` would match), VNI `--vxlan-vni` (default
//!   [`DEFAULT_VNI`]), UDP destination port `--vxlan-port` (default
//!   [`DEFAULT_PORT`]), `local` = this node's InternalIP, `nolearning`, no
//!   multicast group and no default remote: the device sends only to MACs
//!   its FDB names. MTU = the MTU of the interface that holds the InternalIP
//!   minus [`OVERHEAD`] (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8).
//! - The device's MAC is derived from the node's InternalIP
//!   ([`vtep_mac`]: `0e:73:` + the four address bytes, locally administered
//!   unicast), so a peer can compute it; its address is the network address
//!   of the node's first IPv4 pod CIDR as a /32 ([`vtep_addr`], e.g.
//!   `10.244.2.0/32`; the IPAM never hands out the network address).
//! - Per other node: a route `<podCIDR> via <its vtep address> dev
//!   vxlan_sluice onlink src <this node's InternalIP> proto 115` for each of
//!   its pod CIDRs, a permanent neighbour entry `<its vtep address> lladdr
//!   <its MAC>`, and a permanent FDB entry `<its MAC> dst <its InternalIP>`
//!   (`bridge fdb` with `self`). A packet to a remote pod thus gets the
//!   peer's MAC from the neighbour entry and the peer's underlay address from
//!   the FDB, with no ARP and no flooding.
//! - Pods reach the other nodes' own addresses through the tunnel too: a
//!   rule `from <this node's pod CIDR> lookup 115 pref 115` ([`TABLE`],
//!   [`RULE_PRIORITY`]) and in table 115 `<its InternalIP>/32 via <its vtep
//!   address> dev vxlan_sluice onlink proto 115` per other node (the table
//!   has nothing else, so other destinations fall through to `main`). With
//!   the `src` above, a node's own packets to remote pods carry its
//!   InternalIP, and the pods' answers to it take the same way back: the
//!   underlay never carries a pod address.
//!
//! Everything on the device belongs to sluice: neighbour and FDB entries
//! that no Node asks for are removed, and so are addresses other than the
//! vtep address. A device whose VNI, port, local address or learning flag
//! differ from the flags is deleted and created again (the kernel cannot
//! change the VNI or the port of an existing device); MTU and MAC are
//! changed in place. With `--tunnel disabled` the agent deletes the device
//! when it exists, and with it every route, neighbour and FDB entry through
//! it, and removes the rules and routes of table 115. All of it goes through
//! rtnetlink.
//!
//! External flows (NodePort, externalIPs, LoadBalancer) that the external
//! program sends to a backend on another node are SNATed to the vtep
//! address rather than the InternalIP (as flannel's masquerade picks the
//! device's address): the backend's answer is then routed back through the
//! tunnel too, where the external program also runs and reverses the
//! translation, and the underlay never carries a pod address.
//!
//! The device gets `rp_filter` 0: a node's own packets reach the other
//! nodes through the tunnel with its InternalIP as their source, whose route
//! there is the underlay, not the tunnel. (The kernel uses the higher of
//! `conf.all` and the device's value: `net.ipv4.conf.all.rp_filter` must be
//! 0 or 2.)

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use futures::TryStreamExt as _;
use ipnetwork::Ipv4Network;
use rtnetlink::{
    Handle, LinkUnspec, LinkVxlan,
    packet_route::{
        AddressFamily,
        address::AddressAttribute,
        link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
        route::RouteProtocol,
        rule::{RuleAction, RuleAttribute},
    },
};

use crate::routing::{Error, NodeNetwork, PodRoute, Result};

/// The overlay device's name (at most 15 bytes, `IFNAMSIZ` - 1).
pub const DEVICE: &str = "vxlan_sluice";
const _: () = assert!(DEVICE.len() <= 15);

/// The default VXLAN network identifier.
pub const DEFAULT_VNI: u32 = 1;
/// The default UDP destination port: the Linux kernel's default and
/// flannel's (the IANA port is 4789).
pub const DEFAULT_PORT: u16 = 8472;
/// Bytes VXLAN adds to each packet on an IPv4 underlay: outer Ethernet (14),
/// IPv4 (20), UDP (8) and VXLAN (8) headers.
pub const OVERHEAD: u32 = 50;
/// The routing table of the routes from pods to other nodes' InternalIPs
/// through the tunnel (115, as the route protocol).
pub const TABLE: u32 = 115;
/// The priority of the rules `from <this node's pod CIDR> lookup 115`:
/// before the main table's (32766); the table holds only /32 routes, so
/// anything else falls through to the next rule.
pub const RULE_PRIORITY: u32 = 115;

/// First two bytes of every VTEP MAC: `0e` is a locally administered
/// unicast prefix, `73` is ASCII `s` (as in the route protocol 115).
pub const MAC_PREFIX: [u8; 2] = [0x0e, 0x73];

/// The overlay's fixed parameters (flags), the same on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelConfig {
    pub vni: u32,
    pub port: u16,
}

/// The MAC of the VXLAN device of the node whose InternalIP is `ip`.
#[must_use]
pub fn vtep_mac(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [MAC_PREFIX[0], MAC_PREFIX[1], a, b, c, d]
}

/// The address of a node's VXLAN device: the network address of its first
/// pod CIDR.
#[must_use]
pub fn vtep_addr(pod_cidr: Ipv4Network) -> Ipv4Addr {
    pod_cidr.network()
}

/// `0e:73:c6:12:00:03`.
#[must_use]
pub fn fmt_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

// ---------------------------------------------------------------------------
// The pure part: what the overlay must hold
// ---------------------------------------------------------------------------

/// The overlay as the Nodes describe it, seen from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// This node's InternalIP: the outer source address.
    pub local: Ipv4Addr,
    /// This node's vtep address (on the device, /32).
    pub vtep: Ipv4Addr,
    /// This node's device MAC.
    pub mac: [u8; 6],
    /// Neighbour entries on the device: peer vtep address -> peer MAC.
    pub neighbours: BTreeMap<Ipv4Addr, [u8; 6]>,
    /// FDB entries on the device: peer MAC -> peer InternalIP.
    pub fdb: BTreeMap<[u8; 6], Ipv4Addr>,
    /// Routes to the peers' pod CIDRs via their vtep addresses (`dev` is
    /// filled in with the device's index when they are applied).
    pub routes: Vec<PodRoute>,
    /// Routes of table [`TABLE`]: each peer's InternalIP/32 via its vtep
    /// address (pods reach other nodes through the tunnel).
    pub node_routes: Vec<PodRoute>,
    /// This node's pod CIDRs: `from <cidr> lookup TABLE` rules.
    pub pod_cidrs: Vec<Ipv4Network>,
    /// Peers left out, one line each.
    pub warnings: Vec<String>,
}

/// The overlay of this node from `net` ([`crate::routing::node_network`]),
/// or why there cannot be one yet (this node's Node object has no IPv4
/// InternalIP or no IPv4 pod CIDR).
///
/// Peers are the nodes `net` routes to. A peer whose first pod CIDR is not
/// routed (it overlaps another node's) is left out with a warning: its
/// vtep address would not be its own. So is a peer with this node's
/// InternalIP (its MAC would be this node's).
pub fn plan(net: &NodeNetwork) -> std::result::Result<Plan, String> {
    let local = net.this_ip.ok_or("this node's Node object has no IPv4 InternalIP")?;
    let own = net.this_cidrs.first().ok_or("this node's Node object has no IPv4 pod CIDR")?;
    let mut p = Plan {
        local,
        vtep: vtep_addr(*own),
        mac: vtep_mac(local),
        neighbours: BTreeMap::new(),
        fdb: BTreeMap::new(),
        routes: Vec::new(),
        node_routes: Vec::new(),
        pod_cidrs: net.this_cidrs.clone(),
        warnings: Vec::new(),
    };
    for peer in &net.peers {
        if peer.ip == local {
            p.warnings.push(format!(
                "Node {}: has this node's InternalIP {local}; not reached through the overlay",
                peer.name
            ));
            continue;
        }
        let vtep = vtep_addr(peer.first_cidr);
        if !peer.cidrs.contains(&peer.first_cidr) {
            p.warnings.push(format!(
                "Node {}: its first pod CIDR {} is not routed to it; not reached through the overlay",
                peer.name, peer.first_cidr
            ));
            continue;
        }
        let mac = vtep_mac(peer.ip);
        p.neighbours.insert(vtep, mac);
        p.fdb.insert(mac, peer.ip);
        p.routes.extend(peer.cidrs.iter().map(|dst| PodRoute {
            dst: *dst,
            via: vtep,
            dev: None,
            src: Some(local),
        }));
        let host = Ipv4Network::new(peer.ip, 32).expect("/32 is a valid prefix");
        p.node_routes.push(PodRoute { dst: host, via: vtep, dev: None, src: None });
    }
    p.routes.sort();
    p.node_routes.sort();
    p.node_routes.dedup_by_key(|r| r.dst);
    Ok(p)
}

/// The MTU of the overlay device (and of pods) over an underlay of `mtu`.
#[must_use]
pub fn overlay_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(OVERHEAD).max(68)
}

// ---------------------------------------------------------------------------
// Applying through rtnetlink
// ---------------------------------------------------------------------------

/// What a reconcile of the device found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub ifindex: u32,
    /// The device's address.
    pub vtep: Ipv4Addr,
    /// The device's (and the pods') MTU.
    pub mtu: u32,
    /// What changed, one line each (for the log).
    pub changes: Vec<String>,
    /// Entries that could not be written; retried on the next reconcile.
    pub errors: Vec<String>,
}

impl Applied {
    /// Nothing done yet (for collecting what a clean-up does).
    #[must_use]
    pub fn empty() -> Self {
        Applied {
            ifindex: 0,
            vtep: Ipv4Addr::UNSPECIFIED,
            mtu: 0,
            changes: Vec::new(),
            errors: Vec::new(),
        }
    }
}

/// One link, as far as the overlay needs it.
#[derive(Debug, Clone, Default)]
struct Link {
    index: u32,
    mtu: u32,
    mac: Vec<u8>,
    up: bool,
    loopback: bool,
    kind: Option<InfoKind>,
    vxlan: Vec<InfoVxlan>,
}

fn link_of(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        ..Link::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::Address(v) => l.mac.clone_from(v),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.clone()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => l.vxlan.clone_from(v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

/// The errno of a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<Link>> {
    let mut s = h.link().get().match_name(name.to_owned()).execute();
    match s.try_next().await {
        Ok(m) => Ok(m.as_ref().map(link_of)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("looking up link {name}"))(e)),
    }
}

async fn link_by_index(h: &Handle, index: u32) -> Result<Option<Link>> {
    let mut s = h.link().get().match_index(index).execute();
    match s.try_next().await {
        Ok(m) => Ok(m.as_ref().map(link_of)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(format!("looking up link {index}"))(e)),
    }
}

/// The non-loopback interface that holds `ip` (the underlay).
async fn underlay_link(h: &Handle, ip: Ipv4Addr) -> Result<Link> {
    let mut dump = h.address().get().execute();
    let mut indexes = BTreeSet::new();
    while let Some(m) = dump.try_next().await.map_err(nl("listing addresses"))? {
        let has = m.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Local(IpAddr::V4(v)) | AddressAttribute::Address(IpAddr::V4(v)) if *v == ip)
        });
        if has {
            indexes.insert(m.header.index);
        }
    }
    for index in indexes {
        if let Some(l) = link_by_index(h, index).await?
            && !l.loopback
        {
            return Ok(l);
        }
    }
    Err(Error::NoUnderlay(ip))
}

/// Why an existing device must be created anew, if it must.
fn incompatible(l: &Link, plan: &Plan, cfg: TunnelConfig) -> Option<String> {
    if l.kind != Some(InfoKind::Vxlan) {
        return Some(format!("it is not a VXLAN device ({:?})", l.kind));
    }
    let mut id = None;
    let mut port = None;
    let mut local = None;
    let mut learning = None;
    let mut metadata = false;
    for i in &l.vxlan {
        match i {
            InfoVxlan::Id(v) => id = Some(*v),
            InfoVxlan::Port(v) => port = Some(*v),
            InfoVxlan::Local(v) => local = Some(*v),
            InfoVxlan::Learning(v) => learning = Some(*v),
            InfoVxlan::CollectMetadata(v) => metadata = *v,
            _ => {}
        }
    }
    if id != Some(cfg.vni) {
        return Some(format!("VNI {id:?}, want {}", cfg.vni));
    }
    if port != Some(cfg.port) {
        return Some(format!("port {port:?}, want {}", cfg.port));
    }
    if local != Some(plan.local) {
        return Some(format!("local {local:?}, want {}", plan.local));
    }
    if learning != Some(false) {
        return Some("learning is on".into());
    }
    if metadata {
        return Some("it is in collect-metadata mode".into());
    }
    None
}

/// Makes the overlay device and its address, neighbour and FDB entries
/// match `plan` (routes are the caller's: they need the index this
/// returns). Must run in the node's network namespace.
pub async fn reconcile(h: &Handle, plan: &Plan, cfg: TunnelConfig) -> Result<Applied> {
    let underlay = underlay_link(h, plan.local).await?;
    let mtu = overlay_mtu(underlay.mtu);
    let mut out = Applied { vtep: plan.vtep, mtu, ..Applied::empty() };

    let mut dev = link_by_name(h, DEVICE).await?;
    if let Some(l) = &dev
        && let Some(why) = incompatible(l, plan, cfg)
    {
        h.link().del(l.index).execute().await.map_err(nl(format!("deleting {DEVICE}")))?;
        out.changes.push(format!("deleted {DEVICE} ({why})"));
        dev = None;
    }
    let dev = match dev {
        Some(l) => {
            if l.mtu != mtu || l.mac != plan.mac || !l.up {
                let msg = LinkUnspec::new_with_index(l.index)
                    .mtu(mtu)
                    .address(plan.mac.to_vec())
                    .up()
                    .build();
                h.link().set(msg).execute().await.map_err(nl(format!("updating {DEVICE}")))?;
                out.changes
                    .push(format!("{DEVICE}: mtu {mtu}, address {}, up", fmt_mac(&plan.mac)));
            }
            l
        }
        None => {
            let msg = LinkVxlan::new(DEVICE, cfg.vni)
                .port(cfg.port)
                .local(plan.local)
                .learning(false)
                .mtu(mtu)
                .address(plan.mac.to_vec())
                .up()
                .build();
            h.link().add(msg).execute().await.map_err(nl(format!("creating {DEVICE}")))?;
            out.changes.push(format!(
                "created {DEVICE}: vni {} port {} local {} mtu {mtu} address {}",
                cfg.vni,
                cfg.port,
                plan.local,
                fmt_mac(&plan.mac)
            ));
            link_by_name(h, DEVICE).await?.ok_or(Error::DeviceVanished)?
        }
    };
    out.ifindex = dev.index;

    if let Err(e) = set_rp_filter_off() {
        out.errors.push(e);
    }
    reconcile_addresses(h, dev.index, plan.vtep, &mut out).await?;
    reconcile_neighbours(h, dev.index, &plan.neighbours, &mut out).await?;
    reconcile_fdb(h, dev.index, &plan.fdb, &mut out).await?;
    Ok(out)
}

/// `net.ipv4.conf.vxlan_sluice.rp_filter = 0` in this network namespace.
fn set_rp_filter_off() -> std::result::Result<(), String> {
    let path = format!("/proc/sys/net/ipv4/conf/{DEVICE}/rp_filter");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
        return Ok(());
    }
    std::fs::write(&path, "0").map_err(|e| format!("writing 0 to {path}: {e}"))
}

/// Only `vtep/32` on the device.
async fn reconcile_addresses(
    h: &Handle,
    index: u32,
    vtep: Ipv4Addr,
    out: &mut Applied,
) -> Result<()> {
    let mut dump = h.address().get().set_link_index_filter(index).execute();
    let mut present = false;
    let mut stale = Vec::new();
    while let Some(m) = dump.try_next().await.map_err(nl("listing addresses"))? {
        if m.header.index != index {
            continue;
        }
        let addr = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(a) | AddressAttribute::Address(a) => Some(*a),
            _ => None,
        });
        if addr == Some(IpAddr::V4(vtep)) && m.header.prefix_len == 32 {
            present = true;
        } else if m.header.family == AddressFamily::Inet {
            stale.push((addr, m));
        }
    }
    for (addr, m) in stale {
        match h.address().del(m).execute().await {
            Ok(()) => out.changes.push(format!("removed address {addr:?} from {DEVICE}")),
            Err(e) => out.errors.push(format!("removing address {addr:?} from {DEVICE}: {e}")),
        }
    }
    if !present {
        match h.address().add(index, IpAddr::V4(vtep), 32).replace().execute().await {
            Ok(()) => out.changes.push(format!("address {vtep}/32 on {DEVICE}")),
            Err(e) => out.errors.push(format!("adding address {vtep}/32 to {DEVICE}: {e}")),
        }
    }
    Ok(())
}

/// The link-layer address and destination of a neighbour message.
fn neighbour_parts(m: &NeighbourMessage) -> (Option<Vec<u8>>, Option<Ipv4Addr>) {
    let mut lladdr = None;
    let mut dst = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(l) => lladdr = Some(l.clone()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(*d),
            // Bridge-family (FDB) messages carry the destination unparsed.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from);
            }
            _ => {}
        }
    }
    (lladdr, dst)
}

/// What to do so that the entries `have` (key, value; several values per
/// key possible) become exactly `want`: the indexes of `have` to delete
/// (every entry whose pair is not wanted) and the pairs to write.
#[must_use]
pub fn entry_changes<K: Ord + Copy, V: PartialEq + Copy>(
    have: &[(K, V)],
    want: &BTreeMap<K, V>,
) -> (Vec<usize>, Vec<(K, V)>) {
    let delete = (0..have.len()).filter(|i| want.get(&have[*i].0) != Some(&have[*i].1)).collect();
    let add = want
        .iter()
        .filter(|(k, v)| !have.iter().any(|(hk, hv)| hk == *k && hv == *v))
        .map(|(k, v)| (*k, *v))
        .collect();
    (delete, add)
}

/// Permanent neighbour entries peer vtep -> peer MAC on the device, and no
/// other permanent ones (entries the kernel made, e.g. a failed resolution,
/// are replaced when their address is wanted and left alone otherwise).
async fn reconcile_neighbours(
    h: &Handle,
    index: u32,
    want: &BTreeMap<Ipv4Addr, [u8; 6]>,
    out: &mut Applied,
) -> Result<()> {
    let mut dump = h.neighbours().get().set_address_family(AddressFamily::Inet).execute();
    let mut have = Vec::new();
    let mut messages = Vec::new();
    while let Some(m) = dump.try_next().await.map_err(nl("listing neighbours"))? {
        if m.header.ifindex != index || m.header.state != NeighbourState::Permanent {
            continue;
        }
        let (lladdr, dst) = neighbour_parts(&m);
        let Some(dst) = dst else { continue };
        // A link-layer address that is not a MAC is never wanted.
        let mac = lladdr.and_then(|l| <[u8; 6]>::try_from(l.as_slice()).ok()).unwrap_or_default();
        have.push((dst, mac));
        messages.push(m);
    }
    let (delete, add) = entry_changes(&have, want);
    for i in delete {
        let dst = have[i].0;
        match h.neighbours().del(messages[i].clone()).execute().await {
            Ok(()) => out.changes.push(format!("removed neighbour {dst}")),
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => out.errors.push(format!("removing neighbour {dst}: {e}")),
        }
    }
    for (vtep, mac) in add {
        let req = h
            .neighbours()
            .add(index, IpAddr::V4(vtep))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace();
        match req.execute().await {
            Ok(()) => out.changes.push(format!("neighbour {vtep} lladdr {}", fmt_mac(&mac))),
            Err(e) => out.errors.push(format!("adding neighbour {vtep}: {e}")),
        }
    }
    Ok(())
}

/// Permanent FDB entries peer MAC -> peer InternalIP on the device, and no
/// others.
async fn reconcile_fdb(
    h: &Handle,
    index: u32,
    want: &BTreeMap<[u8; 6], Ipv4Addr>,
    out: &mut Applied,
) -> Result<()> {
    let mut req = h.neighbours().get().set_address_family(AddressFamily::Bridge);
    // A filter for kernels that check dump requests strictly; others dump
    // every device's entries (filtered below).
    req.message_mut().header.ifindex = index;
    let mut dump = req.execute();
    let mut have = Vec::new();
    let mut messages = Vec::new();
    while let Some(m) = dump.try_next().await.map_err(nl("listing FDB entries"))? {
        if m.header.ifindex != index {
            continue;
        }
        let (lladdr, dst) = neighbour_parts(&m);
        // Entries without a MAC or a destination are never wanted.
        let mac = lladdr.and_then(|l| <[u8; 6]>::try_from(l.as_slice()).ok()).unwrap_or_default();
        have.push((mac, dst.unwrap_or(Ipv4Addr::UNSPECIFIED)));
        messages.push(m);
    }
    let (delete, add) = entry_changes(&have, want);
    for i in delete {
        let (mac, dst) = have[i];
        match h.neighbours().del(messages[i].clone()).execute().await {
            Ok(()) => out.changes.push(format!("removed FDB {} dst {dst}", fmt_mac(&mac))),
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => out.errors.push(format!("removing FDB {}: {e}", fmt_mac(&mac))),
        }
    }
    for (mac, ip) in add {
        let req = h
            .neighbours()
            .add_bridge(index, &mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(IpAddr::V4(ip))
            .replace();
        match req.execute().await {
            Ok(()) => out.changes.push(format!("FDB {} dst {ip}", fmt_mac(&mac))),
            Err(e) => out.errors.push(format!("adding FDB {} dst {ip}: {e}", fmt_mac(&mac))),
        }
    }
    Ok(())
}

/// Rules `from <cidr> lookup TABLE pref RULE_PRIORITY proto 115` for each
/// of `cidrs`, and no other rule of protocol 115 that looks up [`TABLE`]
/// (that pair is how sluice's rules are recognised; others are left alone).
pub async fn reconcile_rules(h: &Handle, cidrs: &[Ipv4Network], out: &mut Applied) -> Result<()> {
    let mut dump = h.rule().get(rtnetlink::IpVersion::V4).execute();
    let mut have = Vec::new();
    let mut messages = Vec::new();
    loop {
        let m = match dump.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            // A kernel without policy routing has no rules to clean up
            // (adding one below then fails, and says so).
            Err(e) if matches!(errno(&e), Some(libc::EOPNOTSUPP | libc::EAFNOSUPPORT)) => break,
            Err(e) => return Err(nl("listing rules")(e)),
        };
        let table = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RuleAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or_else(|| u32::from(m.header.table));
        let ours = m.attributes.iter().any(|a| {
            matches!(a, RuleAttribute::Protocol(p) if u8::from(*p) == crate::routing::RTPROT_SLUICE)
        });
        if table != TABLE || !ours {
            continue;
        }
        let src = m.attributes.iter().find_map(|a| match a {
            RuleAttribute::Source(IpAddr::V4(s)) => Some(*s),
            _ => None,
        });
        let priority = m.attributes.iter().find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        });
        let key = src
            .and_then(|s| Ipv4Network::new(s, m.header.src_len).ok())
            .filter(|_| priority == Some(RULE_PRIORITY));
        have.push((key.unwrap_or(Ipv4Network::from(Ipv4Addr::UNSPECIFIED)), ()));
        messages.push(m);
    }
    let want: BTreeMap<Ipv4Network, ()> = cidrs.iter().map(|c| (*c, ())).collect();
    let (delete, add) = entry_changes(&have, &want);
    for i in delete {
        match h.rule().del(messages[i].clone()).execute().await {
            Ok(()) => out.changes.push(format!("removed rule from {} lookup {TABLE}", have[i].0)),
            Err(e) if errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => out.errors.push(format!("removing a rule of table {TABLE}: {e}")),
        }
    }
    for (cidr, ()) in add {
        let mut req = h
            .rule()
            .add()
            .v4()
            .source_prefix(cidr.network(), cidr.prefix())
            .table_id(TABLE)
            .action(RuleAction::ToTable)
            .priority(RULE_PRIORITY);
        req.message_mut()
            .attributes
            .push(RuleAttribute::Protocol(RouteProtocol::Other(crate::routing::RTPROT_SLUICE)));
        match req.execute().await {
            Ok(()) => out.changes.push(format!("rule from {cidr} lookup {TABLE}")),
            Err(e) => out.errors.push(format!("adding rule from {cidr} lookup {TABLE}: {e}")),
        }
    }
    Ok(())
}

/// Deletes the overlay device if there is one (and with it every route,
/// neighbour and FDB entry through it); `true` when it was there. Must run
/// in the node's network namespace.
pub async fn remove(h: &Handle) -> Result<bool> {
    let Some(l) = link_by_name(h, DEVICE).await? else {
        return Ok(false);
    };
    if l.kind != Some(InfoKind::Vxlan) {
        return Err(Error::ForeignDevice { kind: format!("{:?}", l.kind) });
    }
    match h.link().del(l.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(nl(format!("deleting {DEVICE}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Peer;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn peer(name: &str, addr: &str, cidrs: &[&str]) -> Peer {
        Peer {
            name: name.into(),
            ip: ip(addr),
            first_cidr: net(cidrs[0]),
            cidrs: cidrs.iter().map(|c| net(c)).collect(),
        }
    }

    #[test]
    fn mac_is_derived_from_the_internal_ip() {
        let mac = vtep_mac(ip("198.18.0.3"));
        assert_eq!(mac, [0x0e, 0x73, 198, 18, 0, 3]);
        assert_eq!(fmt_mac(&mac), "0e:73:c6:12:00:03");
        // Locally administered, unicast.
        assert_eq!(mac[0] & 0b10, 0b10);
        assert_eq!(mac[0] & 0b01, 0);
        assert_ne!(vtep_mac(ip("198.18.0.3")), vtep_mac(ip("198.18.0.4")));
        assert_eq!(vtep_addr(net("10.244.2.0/24")), ip("10.244.2.0"));
        assert_eq!(vtep_addr(net("10.244.2.7/24")), ip("10.244.2.0"));
    }

    #[test]
    fn entry_changes_delete_unwanted_and_add_missing() {
        let (m2, m3, m4) =
            (vtep_mac(ip("198.18.0.3")), vtep_mac(ip("198.18.0.4")), vtep_mac(ip("198.18.0.5")));
        let want = BTreeMap::from([(m2, ip("198.18.0.3")), (m3, ip("198.18.0.4"))]);
        let have = vec![
            (m2, ip("198.18.0.3")),     // kept
            (m3, ip("198.18.0.99")),    // the node's InternalIP changed: replaced
            (m4, ip("198.18.0.5")),     // the node is gone
            ([0; 6], ip("198.18.0.3")), // nobody's
        ];
        let (delete, add) = entry_changes(&have, &want);
        assert_eq!(delete, vec![1, 2, 3]);
        assert_eq!(add, vec![(m3, ip("198.18.0.4"))]);
        // Nothing there yet: everything added; all there: nothing to do.
        assert_eq!(entry_changes(&[], &want), (vec![], want.clone().into_iter().collect()));
        let all: Vec<_> = want.clone().into_iter().collect();
        assert_eq!(entry_changes(&all, &want), (vec![], vec![]));
        // Nothing wanted (no peers): everything goes.
        assert_eq!(entry_changes(&all, &BTreeMap::new()), (vec![0, 1], vec![]));
    }

    #[test]
    fn mtu_leaves_room_for_the_headers() {
        assert_eq!(overlay_mtu(1500), 1450);
        assert_eq!(overlay_mtu(9000), 8950);
        assert_eq!(overlay_mtu(100), 68, "never below the IPv4 minimum");
    }

    #[test]
    fn plan_per_peer_route_neighbour_and_fdb() {
        let n = NodeNetwork {
            this_ip: Some(ip("198.18.0.2")),
            this_cidrs: vec![net("10.244.1.0/24")],
            peers: vec![
                peer("node-2", "198.18.0.3", &["10.244.2.0/24", "10.245.2.0/24"]),
                peer("node-3", "198.18.0.4", &["10.244.3.0/24"]),
            ],
            ..NodeNetwork::default()
        };
        let p = plan(&n).unwrap();
        assert_eq!(
            (p.local, p.vtep, p.mac),
            (ip("198.18.0.2"), ip("10.244.1.0"), vtep_mac(ip("198.18.0.2")))
        );
        assert_eq!(
            p.neighbours,
            BTreeMap::from([
                (ip("10.244.2.0"), vtep_mac(ip("198.18.0.3"))),
                (ip("10.244.3.0"), vtep_mac(ip("198.18.0.4"))),
            ])
        );
        assert_eq!(
            p.fdb,
            BTreeMap::from([
                (vtep_mac(ip("198.18.0.3")), ip("198.18.0.3")),
                (vtep_mac(ip("198.18.0.4")), ip("198.18.0.4")),
            ])
        );
        let route = |d: &str, v: &str| PodRoute {
            dst: net(d),
            via: ip(v),
            dev: None,
            src: Some(ip("198.18.0.2")),
        };
        assert_eq!(
            p.routes,
            vec![
                route("10.244.2.0/24", "10.244.2.0"),
                route("10.244.3.0/24", "10.244.3.0"),
                route("10.245.2.0/24", "10.244.2.0"),
            ]
        );
        assert_eq!(
            p.node_routes,
            vec![
                PodRoute { dst: net("198.18.0.3/32"), via: ip("10.244.2.0"), dev: None, src: None },
                PodRoute { dst: net("198.18.0.4/32"), via: ip("10.244.3.0"), dev: None, src: None },
            ]
        );
        assert_eq!(p.pod_cidrs, vec![net("10.244.1.0/24")]);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn plan_skips_peers_it_cannot_address() {
        let mut n = NodeNetwork {
            this_ip: Some(ip("198.18.0.2")),
            this_cidrs: vec![net("10.244.1.0/24")],
            peers: vec![
                // Its first CIDR lost to an overlap: only the second routed.
                Peer {
                    cidrs: vec![net("10.245.2.0/24")],
                    ..peer("node-2", "198.18.0.3", &["10.244.2.0/24"])
                },
                // This node's own InternalIP.
                peer("node-9", "198.18.0.2", &["10.244.9.0/24"]),
                peer("node-3", "198.18.0.4", &["10.244.3.0/24"]),
            ],
            ..NodeNetwork::default()
        };
        let p = plan(&n).unwrap();
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert_eq!(p.neighbours.keys().copied().collect::<Vec<_>>(), vec![ip("10.244.3.0")]);
        assert_eq!(p.fdb.values().copied().collect::<Vec<_>>(), vec![ip("198.18.0.4")]);
        assert_eq!(p.routes.len(), 1);

        // Without this node's InternalIP or pod CIDR there is no overlay yet.
        n.this_cidrs.clear();
        assert!(plan(&n).unwrap_err().contains("pod CIDR"));
        n.this_ip = None;
        assert!(plan(&n).unwrap_err().contains("InternalIP"));
    }

    #[test]
    fn plan_from_node_objects() {
        use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let node = |name: &str, cidr: &str, addr: &str| Node {
            metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
            spec: Some(NodeSpec { pod_cidrs: Some(vec![cidr.into()]), ..NodeSpec::default() }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: addr.into(),
                }]),
                ..NodeStatus::default()
            }),
        };
        let nodes: BTreeMap<String, Node> = [
            node("node-1", "10.244.1.0/24", "198.18.0.2"),
            node("node-2", "10.244.2.0/24", "198.18.0.3"),
            node("node-3", "10.244.3.0/24", "198.18.0.4"),
        ]
        .into_iter()
        .map(|n| (n.metadata.name.clone().unwrap(), n))
        .collect();
        let mut seen = BTreeSet::new();
        for this in nodes.keys() {
            let p = plan(&crate::routing::node_network(this, &nodes)).unwrap();
            assert_eq!(p.neighbours.len(), 2, "{this}");
            assert_eq!(p.fdb.len(), 2, "{this}");
            // Every node's view of a peer's MAC is the MAC that peer gives itself.
            for (other, n) in &nodes {
                if other != this {
                    let own = plan(&crate::routing::node_network(other, &nodes)).unwrap();
                    assert_eq!(p.neighbours.get(&own.vtep), Some(&own.mac), "{this} -> {other}");
                    assert_eq!(p.fdb.get(&own.mac), Some(&own.local), "{this} -> {other}");
                    assert!(n.spec.is_some());
                }
            }
            seen.insert(p.mac);
        }
        assert_eq!(seen.len(), 3, "distinct MACs");
    }
}
