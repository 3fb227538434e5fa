//! Pod routing between nodes (native routing or a VXLAN overlay) and egress
//! masquerade.
//!
//! **Native routing** (`--routing native`, the default): for every *other*
//! Node, each IPv4 `spec.podCIDRs` entry (else `spec.podCIDR`) is routed via
//! that Node's IPv4 `InternalIP`, in the main table of the agent's network
//! namespace. Every route the agent creates carries the route protocol
//! [`RTPROT_SLUICE`]; that number is how the agent recognises its own routes
//! after a restart: on each reconcile it removes routes of that protocol that
//! no Node asks for any more and replaces those whose gateway changed. A route
//! of any other protocol is never touched; when one already exists for a
//! destination the agent wants, the agent leaves it (and says so) instead of
//! replacing it. `--routing none` leaves routing to someone else and
//! withdraws only routes of [`RTPROT_SLUICE`] (left by an earlier `native`
//! run).
//!
//! **VXLAN overlay** (`--tunnel vxlan`; `--routing` is then not used): the
//! same routes, reconciled the same way, but each via the other node's vtep
//! address through the VXLAN device, `onlink`; the device, its neighbour
//! and FDB entries come first (see [`crate::tunnel`]). `--tunnel disabled`
//! (the default) deletes that device if an earlier run left it, which
//! takes its routes with it, and then routes per `--routing`.
//!
//! **Egress masquerade** (`--masquerade true`, the default; nftables as a
//! stepping stone before an eBPF SNAT): the table `ip sluice` holds a
//! postrouting NAT chain that masquerades packets from the cluster CIDR
//! (`--cluster-cidr`, else the union of every Node's podCIDRs) to anything
//! outside it, except the Nodes' InternalIPs: pod-to-pod and pod-to-node
//! traffic keeps the pod's address. The table is replaced as a whole in one
//! `nft -f -` transaction whenever its content changes, and refreshed every
//! [`REFRESH`]. `--masquerade false` deletes the table.
//!
//! On SIGTERM the agent leaves both routes and the nftables table in place
//! (as kube-proxy leaves its rules, and as the pinned BPF state stays): an
//! agent restart or upgrade interrupts no pod traffic, and the next agent
//! adopts the routes by their protocol number and replaces the table.
//! Failures are logged (once each) and retried, never fatal: at the agent's
//! 1 s retry tick for the first [`FAST_RETRIES`], then with every sync.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures::TryStreamExt as _;
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol},
};
use tracing::{debug, info, warn};

use crate::{
    cli::{AgentArgs, RoutingMode, TunnelMode},
    cniconf,
    tunnel::{self, TunnelConfig},
};

/// The route protocol (`rtm_protocol`, `ip route ... proto 115`) that marks
/// routes this agent created. 115 is ASCII `s`; it is not in iproute2's
/// /etc/iproute2/rt_protos (which names 0-16, 18, 42, 99, 186-189 and 192),
/// nor one of the numbers other CNIs are known to use (Calico's 80, Bird's
/// 12). Add `115 sluice` to /etc/iproute2/rt_protos.d/ to see it by name.
pub const RTPROT_SLUICE: u8 = 115;

/// The nftables table (family `ip`) that holds the masquerade rule.
pub const NFT_TABLE: &str = "sluice";

/// Routes and the nftables table are re-checked at least this often, even
/// when nothing changed (someone may have removed them).
pub const REFRESH: Duration = Duration::from_secs(30);

/// After this many failed syncs in a row the agent is no longer asked to
/// retry at once (its 1 s retry tick runs a whole sync); the failure is then
/// retried with every sync, at least every 30 s. A permanent cause (no `nft`
/// binary) costs a few syncs, not one per second forever.
pub const FAST_RETRIES: u32 = 10;

/// How long `nft -f -` may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--cluster-cidr {value:?}: not an IPv4 CIDR: {reason}")]
    BadClusterCidr { value: String, reason: String },
    #[error("{what}: {source}")]
    Netlink { what: String, source: rtnetlink::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the netlink thread panicked")]
    ThreadPanicked,
    #[error("`nft -f -` failed ({status}): {stderr}")]
    Nft { status: String, stderr: String },
    #[error("`nft -f -` did not finish within {0:?}")]
    NftTimeout(Duration),
    #[error(
        "no interface other than loopback has this node's InternalIP {0}; the VXLAN device sends from it"
    )]
    NoUnderlay(Ipv4Addr),
    #[error("{} was created but cannot be found", tunnel::DEVICE)]
    DeviceVanished,
    #[error("removing what an earlier VXLAN run left: {0}")]
    Leftover(String),
    #[error(
        "an interface named {device} exists and is not a VXLAN device ({kind}); sluice leaves it alone",
        device = tunnel::DEVICE
    )]
    ForeignDevice { kind: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn netlink_error(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// The flags of this module, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Used when `tunnel` is `None`.
    pub routing: RoutingMode,
    /// `--tunnel vxlan`: the overlay's VNI and port.
    pub tunnel: Option<TunnelConfig>,
    pub masquerade: bool,
    /// `--cluster-cidr`, when given (IPv6 entries are ignored: masquerade is
    /// IPv4 only for now).
    pub cluster_cidr: Option<Vec<Ipv4Network>>,
}

impl NetConfig {
    pub fn from_args(args: &AgentArgs) -> Result<Self> {
        let mut cidrs = Vec::new();
        for value in args.cluster_cidr.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
            if value.contains(':') {
                continue;
            }
            let net: Ipv4Network = value.parse().map_err(|e: ipnetwork::IpNetworkError| {
                Error::BadClusterCidr { value: value.to_owned(), reason: e.to_string() }
            })?;
            cidrs.push(net);
        }
        Ok(Self {
            routing: args.routing,
            tunnel: (args.tunnel == TunnelMode::Vxlan)
                .then_some(TunnelConfig { vni: args.vxlan_vni, port: args.vxlan_port }),
            masquerade: args.masquerade,
            cluster_cidr: (!args.cluster_cidr.is_empty()).then(|| minimal_cidrs(&cidrs)),
        })
    }
}

// ---------------------------------------------------------------------------
// The pure part: what the Nodes say
// ---------------------------------------------------------------------------

/// A route to another node's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRoute {
    /// The other node's pod CIDR (network address, no host bits).
    pub dst: Ipv4Network,
    /// The gateway: the other node's InternalIP (native routing) or its
    /// vtep address (VXLAN).
    pub via: Ipv4Addr,
    /// The output interface's index when the gateway is not on a local
    /// subnet (the VXLAN device; the route is then `onlink`); `None` lets the
    /// kernel find the interface from the gateway.
    pub dev: Option<u32>,
    /// The source address the node's own packets get (`src`); `None`: the
    /// kernel's choice.
    pub src: Option<Ipv4Addr>,
}

impl std::fmt::Display for PodRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via {}", self.dst, self.via)?;
        if let Some(dev) = self.dev {
            write!(f, " dev #{dev} onlink")?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        Ok(())
    }
}

/// Another node that pod routes lead to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its Node name.
    pub name: String,
    /// Its IPv4 InternalIP.
    pub ip: Ipv4Addr,
    /// Its first IPv4 pod CIDR (routed or not): its vtep address is in it.
    pub first_cidr: Ipv4Network,
    /// Its pod CIDRs that are routed to it, in its order.
    pub cidrs: Vec<Ipv4Network>,
}

/// `a, b, c` (for logs).
fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// What every Node object says, seen from this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeNetwork {
    /// Routes to the other nodes' pods, sorted by destination.
    pub routes: Vec<PodRoute>,
    /// The union of every Node's IPv4 pod CIDRs (this node's too), minimal
    /// (no entry inside another) and sorted.
    pub pod_cidrs: Vec<Ipv4Network>,
    /// Every Node's IPv4 InternalIP, sorted, without duplicates.
    pub node_ips: Vec<Ipv4Addr>,
    /// This node's IPv4 InternalIP, when its Node object has one.
    pub this_ip: Option<Ipv4Addr>,
    /// This node's IPv4 pod CIDRs, in its order.
    pub this_cidrs: Vec<Ipv4Network>,
    /// The other nodes that got routes, by name.
    pub peers: Vec<Peer>,
    /// Nodes (or pod CIDRs) left out, one line each.
    pub warnings: Vec<String>,
}

/// A Node's first IPv4 `InternalIP` in `status.addresses`.
#[must_use]
pub fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.trim().parse().ok())
}

/// A Node's IPv4 pod CIDRs, with host bits cleared.
fn node_pod_cidrs(node: &Node) -> Vec<Ipv4Network> {
    cniconf::pod_cidrs(node)
        .iter()
        .filter_map(|c| c.parse::<Ipv4Network>().ok())
        .map(network_of)
        .collect()
}

/// `10.244.1.7/24` -> `10.244.1.0/24`.
fn network_of(net: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(net.network(), net.prefix()).expect("the prefix came from a valid network")
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The desired routes of node `this` and what masquerade needs, from all
/// Node objects (`nodes` keyed by name).
///
/// For every other node: each IPv4 pod CIDR via its IPv4 InternalIP. A node
/// without an InternalIP or without pod CIDRs is skipped with a warning, and
/// so is a pod CIDR that overlaps this node's own or one already routed to an
/// earlier node (in name order): two routes to one range would send half the
/// traffic to the wrong node.
#[must_use]
pub fn node_network(this: &str, nodes: &BTreeMap<String, Node>) -> NodeNetwork {
    let mut out = NodeNetwork::default();
    let own: Vec<Ipv4Network> = nodes.get(this).map(node_pod_cidrs).unwrap_or_default();
    let mut claimed: Vec<(Ipv4Network, &str)> = own.iter().map(|c| (*c, this)).collect();
    let mut all_cidrs = own.clone();
    let mut ips = BTreeSet::new();
    for (name, node) in nodes {
        let ip = internal_ip(node);
        ips.extend(ip);
        if name == this {
            continue;
        }
        let cidrs = node_pod_cidrs(node);
        all_cidrs.extend(&cidrs);
        if cidrs.is_empty() {
            out.warnings.push(format!("Node {name}: no IPv4 spec.podCIDRs; no route to its pods"));
            continue;
        }
        let Some(via) = ip else {
            out.warnings.push(format!(
                "Node {name}: no IPv4 InternalIP in status.addresses; no route to its pods"
            ));
            continue;
        };
        let mut routed = Vec::new();
        for &dst in &cidrs {
            if let Some((_, owner)) = claimed.iter().find(|(c, _)| overlaps(*c, dst)) {
                out.warnings.push(format!(
                    "Node {name}: pod CIDR {dst} overlaps one of Node {owner}; not routed"
                ));
                continue;
            }
            claimed.push((dst, name));
            out.routes.push(PodRoute { dst, via, dev: None, src: None });
            routed.push(dst);
        }
        if !routed.is_empty() {
            out.peers.push(Peer {
                name: name.clone(),
                ip: via,
                first_cidr: cidrs[0],
                cidrs: routed,
            });
        }
    }
    out.this_ip = nodes.get(this).and_then(internal_ip);
    out.this_cidrs = own;
    out.routes.sort();
    out.pod_cidrs = minimal_cidrs(&all_cidrs);
    out.node_ips = ips.into_iter().collect();
    out
}

/// `cidrs` without entries that lie inside another, sorted by address.
#[must_use]
pub fn minimal_cidrs(cidrs: &[Ipv4Network]) -> Vec<Ipv4Network> {
    let mut by_size: Vec<Ipv4Network> = cidrs.iter().copied().map(network_of).collect();
    by_size.sort_by_key(|c| (c.prefix(), c.network()));
    let mut kept: Vec<Ipv4Network> = Vec::new();
    for c in by_size {
        if !kept.iter().any(|k| k.contains(c.network())) {
            kept.push(c);
        }
    }
    kept.sort_by_key(|c| (c.network(), c.prefix()));
    kept
}

/// The nftables script that (re)creates table `ip sluice` atomically: pods
/// (`cluster`) talking to anything outside `cluster` and not to a node
/// (`node_ips`) leave with the address of the outgoing interface.
#[must_use]
pub fn nft_masquerade_script(cluster: &[Ipv4Network], node_ips: &[Ipv4Addr]) -> String {
    let mut s = nft_delete_script();
    let _ = writeln!(s, "table ip {NFT_TABLE} {{");
    s.push_str("\tset cluster_cidrs {\n\t\ttype ipv4_addr\n\t\tflags interval\n");
    if !cluster.is_empty() {
        let list: Vec<String> = cluster.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(", "));
    }
    s.push_str("\t}\n\tset node_ips {\n\t\ttype ipv4_addr\n");
    if !node_ips.is_empty() {
        let list: Vec<String> = node_ips.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "\t\telements = {{ {} }}", list.join(", "));
    }
    s.push_str(
        "\t}\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr @cluster_cidrs ip daddr != @cluster_cidrs ip daddr != @node_ips counter masquerade\n\
         \t}\n}\n",
    );
    s
}

/// The nftables script that deletes table `ip sluice` whether or not it
/// exists (declaring a table that exists is a no-op).
#[must_use]
pub fn nft_delete_script() -> String {
    format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n")
}

// ---------------------------------------------------------------------------
// Applying: routes through rtnetlink
// ---------------------------------------------------------------------------

/// What one route reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteChanges {
    pub added: Vec<PodRoute>,
    /// Routes whose gateway changed (replaced in place).
    pub replaced: Vec<PodRoute>,
    pub removed: Vec<Ipv4Network>,
    /// Destinations that already have a route the agent did not create.
    pub foreign: Vec<Ipv4Network>,
    /// Routes that could not be written; retried on the next reconcile.
    pub errors: Vec<String>,
}

impl RouteChanges {
    fn changed(&self) -> bool {
        !(self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty())
    }
}

/// One IPv4 route of the main table, as far as reconciling needs it.
#[derive(Debug, Clone)]
struct Existing {
    dst: Ipv4Network,
    gateway: Option<Ipv4Addr>,
    oif: Option<u32>,
    src: Option<Ipv4Addr>,
    metric: u32,
    ours: bool,
    message: RouteMessage,
}

/// Runs `f` with a netlink handle on a thread of its own with a
/// current-thread runtime (callable from sync code inside or outside a tokio
/// runtime), in the calling thread's network namespace.
fn on_netlink_thread<T, F, Fut>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    std::thread::Builder::new()
        .name("sluice-routes".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(io_error("starting a tokio runtime for netlink"))?;
            rt.block_on(async {
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(io_error("opening a netlink socket"))?;
                let conn = tokio::spawn(conn);
                let result = f(handle).await;
                conn.abort();
                result
            })
        })
        .map_err(io_error("spawning the netlink thread"))?
        .join()
        .map_err(|_| Error::ThreadPanicked)?
}

/// Makes the main table's [`RTPROT_SLUICE`] routes equal to `desired`, in
/// the calling thread's network namespace.
pub fn apply_routes(desired: &[PodRoute]) -> Result<RouteChanges> {
    let desired = desired.to_vec();
    on_netlink_thread(move |h| async move { reconcile_routes(&h, MAIN, &desired).await })
}

/// What [`apply_network`] did to the overlay device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelOutcome {
    /// `--tunnel vxlan`: the device as reconciled.
    Up(tunnel::Applied),
    /// No tunnel: whether a device an earlier run left was deleted.
    Removed(bool),
}

/// The overlay device (set up per `tunnel`, or deleted when `None`) and
/// then the main table's [`RTPROT_SLUICE`] routes: `desired`, with the
/// device as their output interface when there is a tunnel.
pub fn apply_network(
    tunnel: Option<(tunnel::Plan, TunnelConfig)>,
    desired: &[PodRoute],
) -> Result<(TunnelOutcome, RouteChanges)> {
    let desired = desired.to_vec();
    on_netlink_thread(move |h| async move {
        let (outcome, routes) = match tunnel {
            Some((plan, cfg)) => {
                let mut applied = tunnel::reconcile(&h, &plan, cfg).await?;
                let dev = Some(applied.ifindex);
                let on_dev = |r: &[PodRoute]| -> Vec<PodRoute> {
                    r.iter().map(|r| PodRoute { dev, ..*r }).collect()
                };
                // Pods to other nodes' InternalIPs: through the tunnel too.
                let c = reconcile_routes(&h, tunnel::TABLE, &on_dev(&plan.node_routes)).await?;
                if c.changed() {
                    applied.changes.push(format!(
                        "table {}: added {}, replaced {}, removed {}",
                        tunnel::TABLE,
                        list(&c.added),
                        list(&c.replaced),
                        list(&c.removed)
                    ));
                }
                applied.errors.extend(c.errors);
                tunnel::reconcile_rules(&h, &plan.pod_cidrs, &mut applied).await?;
                (TunnelOutcome::Up(applied), on_dev(&desired))
            }
            None => {
                let removed = tunnel::remove(&h).await?;
                let mut leftovers = tunnel::Applied::empty();
                tunnel::reconcile_rules(&h, &[], &mut leftovers).await?;
                let c = reconcile_routes(&h, tunnel::TABLE, &[]).await?;
                if let Some(e) = leftovers.errors.into_iter().chain(c.errors).next() {
                    return Err(Error::Leftover(e));
                }
                (TunnelOutcome::Removed(removed || !leftovers.changes.is_empty()), desired)
            }
        };
        Ok((outcome, reconcile_routes(&h, MAIN, &routes).await?))
    })
}

/// The main routing table.
const MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// The IPv4 routes of routing table `table`.
async fn table_routes(h: &Handle, table_id: u32) -> Result<Vec<Existing>> {
    let mut dump = h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    let mut out = Vec::new();
    while let Some(m) = dump.try_next().await.map_err(netlink_error("listing routes"))? {
        let table = m
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or_else(|| u32::from(m.header.table));
        if table != table_id {
            continue;
        }
        let mut dst_addr = Ipv4Addr::UNSPECIFIED;
        let mut gateway = None;
        let mut oif = None;
        let mut src = None;
        let mut metric = 0;
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dst_addr = *d,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::PrefSource(RouteAddress::Inet(a)) => src = Some(*a),
                RouteAttribute::Priority(p) => metric = *p,
                _ => {}
            }
        }
        let Ok(dst) = Ipv4Network::new(dst_addr, m.header.destination_prefix_length) else {
            continue;
        };
        out.push(Existing {
            dst,
            gateway,
            oif,
            src,
            metric,
            ours: u8::from(m.header.protocol) == RTPROT_SLUICE,
            message: m,
        });
    }
    Ok(out)
}

/// Makes the [`RTPROT_SLUICE`] routes of table `table` equal to `desired`.
async fn reconcile_routes(h: &Handle, table: u32, desired: &[PodRoute]) -> Result<RouteChanges> {
    let existing = table_routes(h, table).await?;
    let mut changes = RouteChanges::default();
    let foreign: BTreeSet<Ipv4Network> =
        existing.iter().filter(|e| !e.ours).map(|e| e.dst).collect();
    let mut ours: BTreeMap<Ipv4Network, Vec<&Existing>> = BTreeMap::new();
    for e in existing.iter().filter(|e| e.ours) {
        ours.entry(e.dst).or_default().push(e);
    }

    let mut written = BTreeSet::new();
    for route in desired {
        if foreign.contains(&route.dst) {
            changes.foreign.push(route.dst);
            continue;
        }
        written.insert(route.dst);
        // Ours are written with metric 0; that is the one a replace hits.
        let current = ours.get(&route.dst).and_then(|v| v.iter().find(|e| e.metric == 0));
        if current.is_some_and(|c| {
            c.gateway == Some(route.via)
                && route.dev.is_none_or(|d| c.oif == Some(d))
                && c.src == route.src
        }) {
            continue;
        }
        let mut msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst.network(), route.dst.prefix())
            .gateway(route.via)
            .protocol(RouteProtocol::Other(RTPROT_SLUICE))
            .table_id(table);
        if let Some(dev) = route.dev {
            msg = msg.output_interface(dev).onlink();
        }
        if let Some(src) = route.src {
            msg = msg.pref_source(src);
        }
        let msg = msg.build();
        // Replace: a route of ours to this destination with another gateway
        // (the node's InternalIP changed) is swapped in one step. No foreign
        // route has this destination (checked above), so only ours can match.
        match h.route().add(msg).replace().execute().await {
            Ok(()) if current.is_none() => changes.added.push(*route),
            Ok(()) => changes.replaced.push(*route),
            Err(e) => {
                changes.errors.push(format!("adding route {route}: {e}"));
            }
        }
    }
    // Ours that no Node asks for (or that a foreign route now covers) go; of
    // a destination still wanted, only the metric-0 route just written stays.
    for (dst, routes) in &ours {
        let wanted = written.contains(dst);
        for r in routes.iter().filter(|r| !wanted || r.metric != 0) {
            match h.route().del(r.message.clone()).execute().await {
                Ok(()) if !wanted => changes.removed.push(*dst),
                Ok(()) => {}
                Err(e) => changes.errors.push(format!("removing route {dst}: {e}")),
            }
        }
    }
    changes.removed.dedup();
    Ok(changes)
}

// ---------------------------------------------------------------------------
// Applying: the nftables table
// ---------------------------------------------------------------------------

/// Runs `nft -f -` with `script` on stdin (one transaction: all or nothing).
pub fn run_nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error("running `nft -f -` (is the nftables package installed?)"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let written = stdin.write_all(script.as_bytes());
    drop(stdin);
    let deadline = Instant::now() + NFT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_error("waiting for nft"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::NftTimeout(NFT_TIMEOUT));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    if !status.success() {
        return Err(Error::Nft {
            status: status.to_string(),
            stderr: stderr.trim().replace('\n', " | "),
        });
    }
    written.map_err(io_error("writing to nft"))
}

// ---------------------------------------------------------------------------
// The agent's part
// ---------------------------------------------------------------------------

/// Keeps routes and the masquerade table equal to the Nodes; owned by the
/// agent, called on every sync.
#[derive(Debug)]
pub struct Network {
    cfg: NetConfig,
    /// The overlay plan (`None` without a tunnel) and routes last written
    /// without error, and when.
    routes_applied: Option<(Option<tunnel::Plan>, Vec<PodRoute>, Instant)>,
    /// The overlay device as last reconciled (`--tunnel vxlan`).
    tunnel: Option<tunnel::Applied>,
    /// The nftables script last applied without error, and when.
    nft_applied: Option<(String, Instant)>,
    /// Messages already logged, so each is logged once, not every sync.
    last_warnings: BTreeSet<String>,
    last_errors: BTreeSet<String>,
    /// Destinations last found covered by a route sluice did not create.
    last_foreign: BTreeSet<Ipv4Network>,
    /// Failed syncs in a row.
    failures: u32,
}

impl Network {
    #[must_use]
    pub fn new(cfg: NetConfig) -> Self {
        Self {
            cfg,
            routes_applied: None,
            tunnel: None,
            nft_applied: None,
            last_warnings: BTreeSet::new(),
            last_errors: BTreeSet::new(),
            last_foreign: BTreeSet::new(),
            failures: 0,
        }
    }

    /// The pods' MTU when the overlay sets it (`--tunnel vxlan`, once the
    /// device is up): the device's MTU.
    #[must_use]
    pub fn pod_mtu(&self) -> Option<u32> {
        self.tunnel.as_ref().map(|t| t.mtu)
    }

    /// Whether pods must wait for [`Network::pod_mtu`] (there is a tunnel).
    #[must_use]
    pub fn tunnel_configured(&self) -> bool {
        self.cfg.tunnel.is_some()
    }

    /// The overlay device's address, once it is up.
    #[must_use]
    pub fn tunnel_vtep(&self) -> Option<Ipv4Addr> {
        self.tunnel.as_ref().map(|t| t.vtep)
    }

    /// The overlay device's index, once it is up.
    #[must_use]
    pub fn tunnel_ifindex(&self) -> Option<u32> {
        self.tunnel.as_ref().map(|t| t.ifindex)
    }

    /// Applies the overlay (or removes it) and the routes; records what
    /// succeeded and collects what failed into `errors`.
    fn apply_routes(
        &mut self,
        plan: Option<tunnel::Plan>,
        routes: Vec<PodRoute>,
        now: Instant,
        errors: &mut BTreeSet<String>,
    ) {
        let tunnel = plan.clone().zip(self.cfg.tunnel);
        match apply_network(tunnel, &routes) {
            Ok((outcome, c)) => {
                let mut ok = c.errors.is_empty();
                match outcome {
                    TunnelOutcome::Up(applied) => {
                        if !applied.changes.is_empty() {
                            info!(
                                device = tunnel::DEVICE,
                                changes = %applied.changes.join("; "),
                                "VXLAN overlay updated"
                            );
                        }
                        ok &= applied.errors.is_empty();
                        errors.extend(applied.errors.iter().map(|e| format!("VXLAN overlay: {e}")));
                        self.tunnel = Some(applied);
                    }
                    TunnelOutcome::Removed(removed) => {
                        if removed {
                            info!(
                                device = tunnel::DEVICE,
                                "no tunnel configured: VXLAN device (and its routes) removed"
                            );
                        }
                        self.tunnel = None;
                    }
                }
                if c.changed() {
                    info!(
                        added = %list(&c.added),
                        replaced = %list(&c.replaced),
                        removed = %list(&c.removed),
                        routes = routes.len(),
                        "pod routes to other nodes updated"
                    );
                }
                let foreign: BTreeSet<Ipv4Network> = c.foreign.iter().copied().collect();
                for dst in foreign.difference(&self.last_foreign) {
                    warn!(
                        "pod routing: a route to {dst} exists that sluice did not create; leaving it in place"
                    );
                }
                self.last_foreign = foreign;
                errors.extend(c.errors.into_iter().map(|e| format!("pod routes: {e}")));
                self.routes_applied = ok.then_some((plan, routes, now));
            }
            Err(e) => {
                self.routes_applied = None;
                errors.insert(format!("pod routes: {e}"));
            }
        }
    }

    /// Brings routes and the masquerade table in line with `nodes`; `false`
    /// when something failed and the caller should retry soon (only for the
    /// first [`FAST_RETRIES`] failures in a row; later ones wait for the next
    /// sync).
    pub fn sync(&mut self, nodes: &NodeNetwork) -> bool {
        let now = Instant::now();
        let mut errors = BTreeSet::new();
        let native = self.cfg.routing == RoutingMode::Native;

        // What to apply: the overlay and routes via its device, native
        // routes, or none (withdrawing ours). Without this node's InternalIP
        // or pod CIDR the overlay cannot be built yet: nothing is touched.
        let mut warnings: BTreeSet<String> = BTreeSet::new();
        let wanted: Option<(Option<tunnel::Plan>, Vec<PodRoute>)> = match self.cfg.tunnel {
            Some(_) => {
                warnings.extend(nodes.warnings.iter().cloned());
                match tunnel::plan(nodes) {
                    Ok(plan) => {
                        warnings.extend(plan.warnings.iter().cloned());
                        let routes = plan.routes.clone();
                        Some((Some(plan), routes))
                    }
                    Err(why) => {
                        warnings.insert(format!(
                            "the VXLAN overlay waits: {why}; no route or device changed"
                        ));
                        None
                    }
                }
            }
            None if native => {
                warnings.extend(nodes.warnings.iter().cloned());
                Some((None, nodes.routes.clone()))
            }
            None => Some((None, Vec::new())),
        };
        for w in warnings.difference(&self.last_warnings) {
            warn!("pod routing: {w}");
        }
        self.last_warnings = warnings;

        if let Some((plan, routes)) = wanted {
            let due = self.routes_applied.as_ref().is_none_or(|(p, r, at)| {
                *p != plan || *r != routes || now.duration_since(*at) >= REFRESH
            });
            if due {
                self.apply_routes(plan, routes, now, &mut errors);
            }
        }

        let script = if self.cfg.masquerade {
            let cluster = self.cfg.cluster_cidr.as_deref().unwrap_or(nodes.pod_cidrs.as_slice());
            nft_masquerade_script(cluster, &nodes.node_ips)
        } else {
            nft_delete_script()
        };
        let due = self
            .nft_applied
            .as_ref()
            .is_none_or(|(s, at)| *s != script || now.duration_since(*at) >= REFRESH);
        if due {
            let changed = self.nft_applied.as_ref().is_none_or(|(s, _)| *s != script);
            match run_nft(&script) {
                Ok(()) => {
                    if changed {
                        if self.cfg.masquerade {
                            let cluster = self
                                .cfg
                                .cluster_cidr
                                .as_deref()
                                .unwrap_or(nodes.pod_cidrs.as_slice());
                            info!(
                                table = %format!("ip {NFT_TABLE}"),
                                cluster = %list(cluster),
                                node_ips = nodes.node_ips.len(),
                                "egress masquerade installed"
                            );
                        } else {
                            debug!(table = %format!("ip {NFT_TABLE}"), "egress masquerade off; table removed");
                        }
                    }
                    self.nft_applied = Some((script, now));
                }
                Err(e) => {
                    self.nft_applied = None;
                    errors.insert(format!("egress masquerade: {e}"));
                }
            }
        }

        for e in errors.difference(&self.last_errors) {
            warn!("{e}; will retry");
        }
        self.failures = if errors.is_empty() { 0 } else { self.failures.saturating_add(1) };
        if self.failures == FAST_RETRIES + 1 {
            warn!(
                "pod routing or masquerade failed {FAST_RETRIES} times in a row; retrying with every sync from now on"
            );
        }
        self.last_errors = errors;
        self.failures == 0 || self.failures > FAST_RETRIES
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// A Node: `cidrs` as spec.podCIDRs (or `single` as spec.podCIDR),
    /// `addresses` as (type, address).
    fn node(name: &str, cidrs: &[&str], single: Option<&str>, addresses: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
            spec: Some(NodeSpec {
                pod_cidrs: (!cidrs.is_empty())
                    .then(|| cidrs.iter().map(|c| (*c).to_owned()).collect()),
                pod_cidr: single.map(str::to_owned),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(t, a)| NodeAddress { type_: (*t).into(), address: (*a).into() })
                        .collect(),
                ),
                ..NodeStatus::default()
            }),
        }
    }

    fn nodes(list: Vec<Node>) -> BTreeMap<String, Node> {
        list.into_iter().map(|n| (n.metadata.name.clone().unwrap(), n)).collect()
    }

    fn route(dst: &str, via: &str) -> PodRoute {
        PodRoute { dst: net(dst), via: ip(via), dev: None, src: None }
    }

    #[test]
    fn routes_table() {
        let internal = |a| vec![("InternalIP", a)];
        struct Case {
            name: &'static str,
            nodes: Vec<Node>,
            routes: Vec<PodRoute>,
            warnings: usize,
        }
        let cases = vec![
            Case {
                name: "three nodes: the other two",
                nodes: vec![
                    node("n1", &["10.244.1.0/24"], None, &internal("198.18.0.2")),
                    node("n2", &["10.244.2.0/24"], None, &internal("198.18.0.3")),
                    node("n3", &["10.244.3.0/24"], None, &internal("198.18.0.4")),
                ],
                routes: vec![
                    route("10.244.2.0/24", "198.18.0.3"),
                    route("10.244.3.0/24", "198.18.0.4"),
                ],
                warnings: 0,
            },
            Case {
                name: "alone: nothing",
                nodes: vec![node("n1", &["10.244.1.0/24"], None, &internal("198.18.0.2"))],
                routes: vec![],
                warnings: 0,
            },
            Case {
                name: "this node unknown: all others",
                nodes: vec![node("n2", &["10.244.2.0/24"], None, &internal("198.18.0.3"))],
                routes: vec![route("10.244.2.0/24", "198.18.0.3")],
                warnings: 0,
            },
            Case {
                name: "podCIDR fallback, host bits cleared",
                nodes: vec![node("n2", &[], Some("10.244.2.7/24"), &internal("198.18.0.3"))],
                routes: vec![route("10.244.2.0/24", "198.18.0.3")],
                warnings: 0,
            },
            Case {
                name: "dual stack: IPv4 CIDR via the IPv4 InternalIP",
                nodes: vec![node(
                    "n2",
                    &["10.244.2.0/24", "fd00:2::/64"],
                    None,
                    &[
                        ("Hostname", "n2"),
                        ("ExternalIP", "203.0.113.9"),
                        ("InternalIP", "fd00::2"),
                        ("InternalIP", "198.18.0.3"),
                    ],
                )],
                routes: vec![route("10.244.2.0/24", "198.18.0.3")],
                warnings: 0,
            },
            Case {
                name: "several pod CIDRs",
                nodes: vec![node(
                    "n2",
                    &["10.244.2.0/24", "10.245.2.0/24"],
                    None,
                    &internal("198.18.0.3"),
                )],
                routes: vec![
                    route("10.244.2.0/24", "198.18.0.3"),
                    route("10.245.2.0/24", "198.18.0.3"),
                ],
                warnings: 0,
            },
            Case {
                name: "no InternalIP (only ExternalIP): skipped with a warning",
                nodes: vec![
                    node("n2", &["10.244.2.0/24"], None, &[("ExternalIP", "203.0.113.9")]),
                    node("n3", &["10.244.3.0/24"], None, &internal("198.18.0.4")),
                ],
                routes: vec![route("10.244.3.0/24", "198.18.0.4")],
                warnings: 1,
            },
            Case {
                name: "no pod CIDRs: skipped with a warning",
                nodes: vec![node("n2", &[], None, &internal("198.18.0.3"))],
                routes: vec![],
                warnings: 1,
            },
            Case {
                name: "only an IPv6 pod CIDR: skipped with a warning",
                nodes: vec![node("n2", &["fd00:2::/64"], None, &internal("198.18.0.3"))],
                routes: vec![],
                warnings: 1,
            },
            Case {
                name: "overlap with this node's CIDR: not routed",
                nodes: vec![
                    node("n1", &["10.244.1.0/24"], None, &internal("198.18.0.2")),
                    node("n2", &["10.244.0.0/16"], None, &internal("198.18.0.3")),
                ],
                routes: vec![],
                warnings: 1,
            },
            Case {
                name: "two nodes claim one CIDR: the first by name wins",
                nodes: vec![
                    node("n2", &["10.244.2.0/24"], None, &internal("198.18.0.3")),
                    node("n3", &["10.244.2.0/24"], None, &internal("198.18.0.4")),
                ],
                routes: vec![route("10.244.2.0/24", "198.18.0.3")],
                warnings: 1,
            },
        ];
        for c in cases {
            let got = node_network("n1", &nodes(c.nodes));
            assert_eq!(got.routes, c.routes, "{}", c.name);
            assert_eq!(got.warnings.len(), c.warnings, "{}: {:?}", c.name, got.warnings);
        }
    }

    #[test]
    fn cluster_cidrs_and_node_ips_cover_every_node() {
        let got = node_network(
            "n1",
            &nodes(vec![
                node("n1", &["10.244.1.0/24"], None, &[("InternalIP", "198.18.0.2")]),
                node("n2", &["10.244.2.0/24"], None, &[("InternalIP", "198.18.0.3")]),
                node("n3", &[], None, &[("InternalIP", "198.18.0.4")]),
            ]),
        );
        assert_eq!(got.pod_cidrs, vec![net("10.244.1.0/24"), net("10.244.2.0/24")]);
        assert_eq!(got.node_ips, vec![ip("198.18.0.2"), ip("198.18.0.3"), ip("198.18.0.4")]);
    }

    #[test]
    fn minimal_cidrs_drop_nested_and_duplicates() {
        let got = minimal_cidrs(&[
            net("10.244.2.0/24"),
            net("10.244.0.0/16"),
            net("10.96.0.0/12"),
            net("10.244.0.0/16"),
            net("192.168.1.5/24"),
        ]);
        assert_eq!(got, vec![net("10.96.0.0/12"), net("10.244.0.0/16"), net("192.168.1.0/24")]);
        assert!(minimal_cidrs(&[]).is_empty());
    }

    #[test]
    fn nft_script_shape() {
        let s = nft_masquerade_script(
            &[net("10.244.1.0/24"), net("10.244.2.0/24")],
            &[ip("198.18.0.2"), ip("198.18.0.3")],
        );
        assert!(
            s.starts_with("table ip sluice\ndelete table ip sluice\ntable ip sluice {\n"),
            "{s}"
        );
        assert!(s.contains("elements = { 10.244.1.0/24, 10.244.2.0/24 }"), "{s}");
        assert!(s.contains("elements = { 198.18.0.2, 198.18.0.3 }"), "{s}");
        assert!(s.contains("type nat hook postrouting priority srcnat; policy accept;"), "{s}");
        assert!(
            s.contains(
                "ip saddr @cluster_cidrs ip daddr != @cluster_cidrs ip daddr != @node_ips counter masquerade"
            ),
            "{s}"
        );
        // Empty sets have no `elements` line (nft rejects `elements = { }`).
        let empty = nft_masquerade_script(&[], &[]);
        assert!(!empty.contains("elements"), "{empty}");
        assert_eq!(nft_delete_script(), "table ip sluice\ndelete table ip sluice\n");
    }

    #[test]
    fn cluster_cidr_flag() {
        use clap::Parser as _;
        let parse = |extra: &[&str]| {
            let mut argv = vec!["sluice", "agent", "--manifests", "/m"];
            argv.extend_from_slice(extra);
            let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
            let crate::cli::Command::Agent(a) = cli.command else { panic!("not agent") };
            NetConfig::from_args(&a)
        };
        let d = parse(&[]).unwrap();
        assert_eq!(d.routing, RoutingMode::Native);
        assert_eq!(d.tunnel, None);
        let t = parse(&["--tunnel", "vxlan"]).unwrap();
        assert_eq!(t.tunnel, Some(TunnelConfig { vni: 1, port: 8472 }));
        let t = parse(&["--tunnel", "vxlan", "--vxlan-vni", "42", "--vxlan-port", "4789"]).unwrap();
        assert_eq!(t.tunnel, Some(TunnelConfig { vni: 42, port: 4789 }));
        assert_eq!(parse(&["--tunnel", "disabled"]).unwrap().tunnel, None);
        assert!(d.masquerade);
        assert_eq!(d.cluster_cidr, None);
        let c = parse(&[
            "--cluster-cidr",
            "10.244.0.0/16,fd00::/48",
            "--routing",
            "none",
            "--masquerade",
            "false",
        ])
        .unwrap();
        assert_eq!(c.cluster_cidr, Some(vec![net("10.244.0.0/16")]));
        assert_eq!(c.routing, RoutingMode::None);
        assert!(!c.masquerade);
        assert!(parse(&["--cluster-cidr", "10.244.0.0/33"]).is_err());
        assert!(parse(&["--cluster-cidr", "nonsense"]).is_err());
    }
}
