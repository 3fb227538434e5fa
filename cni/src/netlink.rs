//! Links, addresses, routes and neighbours through rtnetlink.
//!
//! Namespace switching: ADD, CHECK and GC run their work on one dedicated
//! thread ([`run`]) with a current-thread tokio runtime (DEL needs no pod
//! namespace and uses blocking requests, [`crate::rtnl`]). A netlink socket belongs to
//! the network namespace its creator was in, so the thread opens one socket in
//! the caller's (node) namespace, then `setns`es into the pod's namespace just
//! long enough to open a second socket there, and switches back at once.
//! Everything after that talks to each namespace through its own socket; the
//! thread itself stays in the node's namespace (where sysctls are written and
//! the tc program is attached by interface name). If switching back failed,
//! the thread would be in the wrong namespace: that is reported as an error
//! before anything else happens.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::Path;

use futures_util::TryStreamExt as _;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::netlink_errno;
use crate::{Error, Result};

/// The pods' gateway: a link-local address that no interface has; the pod
/// resolves it through a permanent neighbour entry to the host veth's MAC.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Runs `f` on a dedicated thread with a current-thread tokio runtime.
pub fn run<T, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
    T: Send + 'static,
{
    let thread = std::thread::Builder::new()
        .name("sluice-cni".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
            rt.block_on(f())
        })
        .map_err(|e| Error::Internal(format!("spawning the netlink thread: {e}")))?;
    thread.join().map_err(|_| Error::Internal("the netlink thread panicked".into()))?
}

/// A netlink connection in the current thread's namespace.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::Netlink {
        what: "opening a netlink socket".into(),
        reason: e.to_string(),
        errno: e.raw_os_error(),
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Opens `CNI_NETNS`; a missing path is code 3, anything that is not a
/// network namespace code 4.
pub fn open_netns(path: &str) -> Result<File> {
    let file = File::open(path)
        .map_err(|e| Error::NoSuchNetns { path: path.into(), reason: e.to_string() })?;
    Ok(file)
}

/// A netlink connection inside the network namespace `ns` (see the module
/// docs). Must run on the dedicated thread, inside its runtime.
pub fn connect_in(ns: &File, ns_path: &str) -> Result<Handle> {
    let own =
        File::open("/proc/thread-self/ns/net").map_err(Error::io("/proc/thread-self/ns/net"))?;
    nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::InvalidEnv {
        var: "CNI_NETNS",
        reason: format!("{ns_path} is not a network namespace we can enter: {e}"),
    })?;
    let handle = connect();
    if let Err(e) = nix::sched::setns(own.as_fd(), CloneFlags::CLONE_NEWNET) {
        // Do not go on in the wrong namespace.
        return Err(Error::Internal(format!("cannot switch back to the node's namespace: {e}")));
    }
    handle
}

/// What this plugin needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub up: bool,
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => info.name.clone_from(n),
            LinkAttribute::Address(m) if m.len() == 6 => info.mac.copy_from_slice(m),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            _ => {}
        }
    }
    info
}

/// The link named `name`, if there is one.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkInfo>> {
    let mut s = h.link().get().match_name(name.to_owned()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(link_info(&m))),
        Ok(None) => Ok(None),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(Error::netlink(format!("looking up link {name}"))(e)),
    }
}

/// The link with index `index`, if there is one.
pub async fn link_by_index(h: &Handle, index: u32) -> Result<Option<LinkInfo>> {
    let mut s = h.link().get().match_index(index).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(Some(link_info(&m))),
        Ok(None) => Ok(None),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(Error::netlink(format!("looking up link {index}"))(e)),
    }
}

/// A dump of every link without statistics (a node with many pods has
/// many links; the statistics are most of each message).
fn link_dump(
    h: &Handle,
) -> impl futures_util::Stream<Item = std::result::Result<LinkMessage, rtnetlink::Error>> {
    h.link().get().set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats]).execute()
}

/// Every link of the namespace.
pub async fn all_links(h: &Handle) -> Result<Vec<LinkInfo>> {
    let mut s = link_dump(h);
    let mut out = Vec::new();
    while let Some(m) = s.try_next().await.map_err(Error::netlink("listing links"))? {
        out.push(link_info(&m));
    }
    Ok(out)
}

/// The default pod MTU: the MTU of the device that the node's default
/// route leaves through (one route lookup and one link lookup), else the
/// lowest MTU of its devices (a dump of every link: on a node with hundreds
/// of pods that costs tens of milliseconds, so the conflist should set
/// `mtu`), else `None`.
pub async fn default_mtu(h: &Handle) -> Result<Option<u32>> {
    let probe = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::new(203, 0, 113, 1), 32)
        .build();
    let oif = match h.route().get(probe).execute().try_next().await {
        Ok(Some(m)) => m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        }),
        // No route there (ENETUNREACH) or another error: fall back.
        Ok(None) | Err(_) => None,
    };
    if let Some(oif) = oif
        && let Some(link) = link_by_index(h, oif).await?
        && link.name != "lo"
        && !link.name.starts_with("sl")
        && link.mtu > 0
    {
        return Ok(Some(link.mtu));
    }
    lowest_device_mtu(h).await
}

/// The lowest MTU of the node's devices that are not loopback and not pod
/// veths (`sl...`), or `None` when there is none.
pub async fn lowest_device_mtu(h: &Handle) -> Result<Option<u32>> {
    let mut s = link_dump(h);
    let mut lowest: Option<u32> = None;
    while let Some(m) = s.try_next().await.map_err(Error::netlink("listing links"))? {
        if m.header.flags.contains(LinkFlags::Loopback) {
            continue;
        }
        let info = link_info(&m);
        if info.name.starts_with("sl") || info.mtu == 0 {
            continue;
        }
        lowest = Some(lowest.map_or(info.mtu, |l| l.min(info.mtu)));
    }
    Ok(lowest)
}

/// Creates the veth pair: `host` in the node's namespace, `peer` directly in
/// the pod's namespace (`pod_ns`) under its final name.
pub async fn create_veth(
    node: &Handle,
    host: &str,
    peer: &str,
    pod_ns: &File,
    mtu: u32,
) -> Result<()> {
    let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_owned())
        .mtu(mtu)
        .setns_by_fd(pod_ns.as_raw_fd())
        .build();
    let msg = LinkVeth::new(host, peer)
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    node.link()
        .add(msg)
        .execute()
        .await
        .map_err(Error::netlink(format!("creating veth {host} <-> {peer}")))
}

/// Sets a link up.
pub async fn set_up(h: &Handle, index: u32, what: &str) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(Error::netlink(format!("setting {what} up")))
}

/// Deletes the link with index `index` (`name` for messages); `Ok(false)`
/// when it does not exist.
pub async fn delete_link_index(h: &Handle, index: u32, name: &str) -> Result<bool> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(Error::netlink(format!("deleting link {name}"))(e)),
    }
}

/// Adds `ip/prefix` to the link.
pub async fn add_address(h: &Handle, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
    h.address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
        .map_err(Error::netlink(format!("adding address {ip}/{prefix}")))
}

/// Adds a route to `dst/prefix` through link `index`, via `gw` if given
/// (scope link without a gateway).
pub async fn add_route(
    h: &Handle,
    index: u32,
    dst: Ipv4Addr,
    prefix: u8,
    gw: Option<Ipv4Addr>,
) -> Result<()> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, prefix)
        .output_interface(index);
    b = match gw {
        Some(gw) => b.gateway(gw),
        None => b.scope(RouteScope::Link),
    };
    h.route()
        .add(b.build())
        .execute()
        .await
        .map_err(Error::netlink(format!("adding route {dst}/{prefix}")))
}

/// Adds a permanent neighbour `ip -> mac` on link `index` (replacing one).
pub async fn add_neighbour(h: &Handle, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
    h.neighbours()
        .add(index, IpAddr::V4(ip))
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(Error::netlink(format!("adding neighbour {ip}")))
}

/// The IPv4 addresses (with prefix) on link `index`.
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
    let mut s = h.address().get().set_link_index_filter(index).execute();
    let mut out = Vec::new();
    while let Some(m) = s.try_next().await.map_err(Error::netlink("listing addresses"))? {
        let m: AddressMessage = m;
        for a in &m.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                out.push((*ip, m.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// A route as CHECK compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// The IPv4 routes of the main table.
pub async fn routes(h: &Handle) -> Result<Vec<RouteInfo>> {
    let mut s = h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    let mut out = Vec::new();
    while let Some(m) = s.try_next().await.map_err(Error::netlink("listing routes"))? {
        let m: RouteMessage = m;
        if m.header.table != 254 {
            continue;
        }
        let mut r = RouteInfo {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: m.header.destination_prefix_length,
            gateway: None,
            oif: None,
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => r.dst = *d,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gateway = Some(*g),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                _ => {}
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// Permanent IPv4 neighbours on link `index`: (address, MAC).
pub async fn permanent_neighbours(h: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, [u8; 6])>> {
    let mut s = h.neighbours().get().execute();
    let mut out = Vec::new();
    while let Some(m) = s.try_next().await.map_err(Error::netlink("listing neighbours"))? {
        if m.header.ifindex != index || m.header.state != NeighbourState::Permanent {
            continue;
        }
        let mut ip = None;
        let mut mac = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(*d),
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    let mut b = [0u8; 6];
                    b.copy_from_slice(l);
                    mac = Some(b);
                }
                _ => {}
            }
        }
        if let (Some(ip), Some(mac)) = (ip, mac) {
            out.push((ip, mac));
        }
    }
    Ok(out)
}

/// Writes a sysctl of the current thread's namespace (the node's) when it
/// has another value.
pub fn ensure_sysctl(key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(Error::io(&path))
}

/// `true` when a netlink request failed because the object exists already.
pub fn is_exists(e: &Error) -> bool {
    matches!(e, Error::Netlink { errno: Some(libc::EEXIST), .. })
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Whether link `index` has the pod program's tc filter: a `bpf` filter on
/// the clsact ingress at [`proxy_common::pins::POD_FILTER_PRIORITY`] and
/// [`proxy_common::pins::POD_FILTER_HANDLE`].
pub async fn has_pod_filter(h: &Handle, index: u32) -> Result<bool> {
    use proxy_common::pins::{POD_FILTER_HANDLE, POD_FILTER_PRIORITY};
    use rtnetlink::packet_route::tc::TcAttribute;
    let Ok(ifindex) = i32::try_from(index) else {
        return Ok(false);
    };
    let mut s = h.traffic_filter(ifindex).get().ingress().execute();
    let mut found = false;
    loop {
        let m = match s.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            // No such interface, or no clsact qdisc on it.
            Err(e) if matches!(netlink_errno(&e), Some(libc::ENODEV | libc::EINVAL)) => {
                return Ok(false);
            }
            Err(e) => return Err(Error::netlink(format!("listing tc filters of link {index}"))(e)),
        };
        let priority = m.header.info >> 16;
        let handle = u32::from(m.header.handle);
        let bpf = m.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"));
        if bpf && priority == u32::from(POD_FILTER_PRIORITY) && handle == POD_FILTER_HANDLE {
            found = true;
        }
    }
    Ok(found)
}
