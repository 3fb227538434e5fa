//! Map names, keys and values.
//!
//! Service map layout (Cilium's): one entry per `(frontend address, port,
//! protocol, slot)`. Slot 0 is the service's master entry and carries the
//! number of backends; slots `1..=count` each point at a backend id in
//! `SL_BACKENDS`. The control plane writes backends, then slots, then the
//! reverse-NAT entry, then the master entry with the new count, then removes
//! surplus slots and orphaned backends, so the kernel never sees a slot
//! `<= count` without a backend behind it.

/// Kernel map names (at most 15 bytes: the kernel cuts longer names). They are
/// also the file names of the pins under `<bpffs-root>/maps/`.
pub const MAP_SERVICES: &str = "SL_SERVICES";
pub const MAP_BACKENDS: &str = "SL_BACKENDS";
pub const MAP_REVNAT: &str = "SL_REVNAT";
pub const MAP_CT: &str = "SL_CT";
pub const MAP_FRAGS: &str = "SL_FRAGS";
pub const MAP_DROPS: &str = "SL_DROPS";
/// Local pods, keyed by their IPv4 address (`u32`, network order). Owned by
/// the CNI plugin: ADD inserts, DEL removes.
pub const MAP_ENDPOINTS: &str = "SL_ENDPOINTS";
/// Every frontend address (`u32`, network order) -> number of frontends on
/// it. Traffic to such an address on a port no service serves is rejected.
pub const MAP_VIPS: &str = "SL_VIPS";
/// Per-service counters, keyed by reverse-NAT index (`u32`).
pub const MAP_SVC_STATS: &str = "SL_SVC_STATS";
/// Per-backend counters, keyed by backend id (`u32`).
pub const MAP_BE_STATS: &str = "SL_BE_STATS";
/// Session affinity (`sessionAffinity: ClientIP`): client -> backend.
pub const MAP_AFFINITY: &str = "SL_AFFINITY";
/// Socket-level LB: (socket cookie, backend) -> the frontend the socket
/// asked for, for recvmsg/getpeername.
pub const MAP_SOCK_REVNAT: &str = "SL_SOCK_REVNAT";
/// This node's addresses (`u32`, network order) -> `NODE_ADDR_*` flags:
/// which of them serve NodePorts. Written by the agent from `--devices` and
/// `--nodeport-addresses`, kept current while it runs.
pub const MAP_NODE_ADDRS: &str = "SL_NODE_ADDRS";
/// One `DatapathConfig` at index 0: settings of the node's agent.
pub const MAP_CONFIG: &str = "SL_CONFIG";
/// `loadBalancerSourceRanges`: an LPM trie keyed by
/// `lpm_trie::Key<SourceRangeKey>` (the frontend's reverse-NAT index, then
/// the client address) whose entries are the allowed source CIDRs of each
/// frontend with `SVC_FLAG_SOURCE_RANGES`. Value unused (`1`).
pub const MAP_SRC_RANGES: &str = "SL_SRC_RANGES";
/// The cluster's pod address space: an LPM trie keyed by
/// `lpm_trie::Key<u32>` (address in network order), value unused (`1`).
/// Written by the agent (`--cluster-cidr`, else every Node's podCIDRs).
/// The FIB fast path only forwards to destinations inside it: traffic to
/// anything else goes through the stack, which masquerades it.
pub const MAP_POD_CIDRS: &str = "SL_POD_CIDRS";
/// Fast-path counters: a per-CPU array of `u64` indexed by `FWD_*`.
pub const MAP_FWD_STATS: &str = "SL_FWD_STATS";

/// All pinned map names, for the CLI and for checks.
pub const ALL_MAPS: [&str; 17] = [
    MAP_SERVICES,
    MAP_BACKENDS,
    MAP_REVNAT,
    MAP_VIPS,
    MAP_SVC_STATS,
    MAP_BE_STATS,
    MAP_AFFINITY,
    MAP_SOCK_REVNAT,
    MAP_CT,
    MAP_FRAGS,
    MAP_DROPS,
    MAP_ENDPOINTS,
    MAP_NODE_ADDRS,
    MAP_CONFIG,
    MAP_SRC_RANGES,
    MAP_POD_CIDRS,
    MAP_FWD_STATS,
];

/// Name of the tc program for traffic leaving pods (host side veth ingress).
pub const PROG_POD_INGRESS: &str = "sl_pod_ingress";
/// Name of the tc program for traffic arriving from outside (ingress of
/// `--devices`): NodePort, externalIPs, LoadBalancer IPs, replies of SNATed
/// and cross-node flows.
pub const PROG_EXT_INGRESS: &str = "sl_ext_ingress";
/// The socket-level load-balancing programs (cgroup hooks), by attach type.
pub const PROG_SOCK_CONNECT4: &str = "sl_sock_connect4";
pub const PROG_SOCK_SENDMSG4: &str = "sl_sock_sendmsg4";
pub const PROG_SOCK_RECVMSG4: &str = "sl_sock_recvmsg4";
pub const PROG_SOCK_GETPEERNAME4: &str = "sl_sock_getpeername4";
pub const SOCK_PROGS: [&str; 4] =
    [PROG_SOCK_CONNECT4, PROG_SOCK_SENDMSG4, PROG_SOCK_RECVMSG4, PROG_SOCK_GETPEERNAME4];

/// Default map sizes.
///
/// Defaults for 100k service ports and 1M backends. The service-side hash
/// maps are not preallocated (memory follows use), so large defaults cost
/// nothing until used; the LRU maps (conntrack, affinity) are preallocated.
/// The agent's `--map-size-*` flags override these.
///
/// `SL_SERVICES`: one master entry per frontend plus one slot per active
/// backend: 100k frontends + 1M slots, with room.
pub const SERVICES_MAX: u32 = 2_097_152;
/// `SL_BACKENDS` and `SL_BE_STATS`: backend entries (per frontend).
pub const BACKENDS_MAX: u32 = 1_048_576;
/// `SL_REVNAT`, `SL_SVC_STATS`: one per frontend.
pub const REVNAT_MAX: u32 = 131_072;
/// `SL_CT`: two entries per translated flow.
pub const CT_MAX: u32 = 524_288;
pub const FRAGS_MAX: u32 = 8_192;
pub const ENDPOINTS_MAX: u32 = 65_536;
/// `SL_VIPS`: one per frontend address.
pub const VIPS_MAX: u32 = 131_072;
pub const AFFINITY_MAX: u32 = 262_144;
/// `SL_SOCK_REVNAT`: sockets connected (or sending) through a service.
pub const SOCK_REVNAT_MAX: u32 = 262_144;
/// `SL_NODE_ADDRS`: addresses of this node.
pub const NODE_ADDRS_MAX: u32 = 1_024;
/// `SL_POD_CIDRS`: ranges of the cluster's pod address space.
pub const POD_CIDRS_MAX: u32 = 256;

/// `SL_SRC_RANGES`: allowed source CIDRs, summed over all frontends with
/// `loadBalancerSourceRanges` (each LoadBalancer IP and NodePort frontend
/// of such a service has its own copy of the service's list).
pub const SRC_RANGES_MAX: u32 = 65_536;

/// Map flag: allocate entries on insert instead of up front.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Key of `SL_SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Frontend address, network byte order.
    pub addr: u32,
    /// Frontend port, network byte order.
    pub dport: u16,
    /// 0 = the service's master entry, 1..=count = backend slots.
    pub backend_slot: u16,
    /// IP protocol (`proto::TCP`, `proto::UDP`, ...).
    pub proto: u8,
    /// `SCOPE_ALL` (0): the frontend for every client. `SCOPE_INTERNAL`:
    /// a second entry set for the same address and port that serves traffic
    /// from this node's pods and processes, when the master entry of scope
    /// 0 has `SVC_FLAG_TWO_SCOPES` (kube-proxy's short cut for
    /// `externalTrafficPolicy: Local`).
    pub scope: u8,
    pub _pad: [u8; 2],
}

/// `ServiceValue::flags`: the service has `sessionAffinity: ClientIP`; its
/// master entry's `backend_id` holds the timeout in seconds.
pub const SVC_FLAG_AFFINITY: u16 = 1;
/// `ServiceValue::flags`: without a backend, drop instead of rejecting
/// (kube-proxy: a Local traffic policy without local endpoints while the
/// service has endpoints elsewhere).
pub const SVC_FLAG_DROP_EMPTY: u16 = 2;
/// `ServiceValue::flags`: an external frontend (NodePort, externalIP,
/// LoadBalancer IP), not a ClusterIP: its address is not in `SL_VIPS`, and
/// flows from outside the node to a backend on another node are SNATed.
pub const SVC_FLAG_EXTERNAL: u16 = 4;
/// `ServiceValue::flags`: `externalTrafficPolicy: Local`: the client's
/// address is preserved (never SNATed).
pub const SVC_FLAG_LOCAL: u16 = 8;
/// `ServiceValue::flags`: the frontend has `loadBalancerSourceRanges`: a new
/// flow is only accepted when its source address matches one of the
/// frontend's entries in `SL_SRC_RANGES`; other sources are dropped
/// (`DropReason::SourceRangeDenied`). The control plane writes the ranges
/// before it sets this flag and clears the flag before it removes them.
pub const SVC_FLAG_SOURCE_RANGES: u16 = 16;

/// `ServiceValue::flags` of a scope-0 master entry: the frontend also has
/// entries of `SCOPE_INTERNAL`, which traffic from this node's pods and
/// processes (pod program, socket LB) uses instead; traffic from outside the
/// node (the external program) keeps scope 0. kube-proxy: an external
/// frontend with `externalTrafficPolicy: Local` sends pod and node traffic
/// to the cluster-wide endpoints. When the scope-1 master is missing (for
/// the moment of an update), scope 0 serves.
pub const SVC_FLAG_TWO_SCOPES: u16 = 32;
/// `ServiceValue::flags` of a `SCOPE_INTERNAL` master entry: its backend
/// slots are keyed with `SCOPE_INTERNAL` too.
pub const SVC_FLAG_SCOPE_INTERNAL: u16 = 64;

/// `ServiceKey::scope`: the frontend for every client.
pub const SCOPE_ALL: u8 = 0;
/// `ServiceKey::scope`: the entries of a two-scope frontend for traffic from
/// this node (see `SVC_FLAG_TWO_SCOPES`).
pub const SCOPE_INTERNAL: u8 = 1;

/// Data of an `SL_SRC_RANGES` key (after the trie's `prefix_len`): the
/// reverse-NAT index occupies the first 32 bits of every prefix, so an entry
/// for a `/n` range has `prefix_len = SRC_RANGE_ID_BITS + n`, and a lookup
/// uses `SRC_RANGE_ID_BITS + 32`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceRangeKey {
    /// The frontend's reverse-NAT index (native order; always matched whole).
    pub rev_nat_index: u32,
    /// Client address (lookups) or range address (entries), network order.
    pub addr: u32,
}

/// Bits of `SourceRangeKey::rev_nat_index` in every `SL_SRC_RANGES` prefix.
pub const SRC_RANGE_ID_BITS: u32 = 32;

/// The address of NodePort frontends in `SL_SERVICES`: "any address in
/// `SL_NODE_ADDRS` with `NODE_ADDR_NODEPORT`".
pub const NODEPORT_ADDR: u32 = 0;

/// `SL_NODE_ADDRS` flag: NodePorts are served on this address.
pub const NODE_ADDR_NODEPORT: u32 = 1;

/// Value of `SL_CONFIG` (one entry, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// The node address external flows to backends on other nodes are
    /// SNATed to (network order); 0: none known, such flows are dropped.
    pub snat_addr: u32,
    /// `CFG_FAST_PATH_*` bits (agent's `--fast-path`).
    pub flags: u32,
}

/// `DatapathConfig::flags`: a pod's TCP/UDP packet to another pod of this
/// node (an `SL_ENDPOINTS` entry, after service translation) is delivered
/// with `bpf_redirect_peer` straight to that pod's `eth0`, past the node's
/// stack. Without it the node's stack routes it.
pub const CFG_FAST_PATH_PEER: u32 = 1;
/// `DatapathConfig::flags`: a pod's TCP/UDP packet to any other destination
/// in `SL_POD_CIDRS` is forwarded by FIB lookup and `bpf_redirect` /
/// `bpf_redirect_neigh`; when the FIB has no usable answer (local delivery,
/// blackhole, unreachable, forwarding off, MTU exceeded) the stack routes it.
/// A mode whose next hop the FIB cannot describe (a collect-metadata
/// tunnel) leaves this bit off.
pub const CFG_FAST_PATH_FIB: u32 = 2;

/// `SL_FWD_STATS` slots: packets delivered with `bpf_redirect_peer`.
pub const FWD_PEER: u32 = 0;
/// Packets forwarded with `bpf_redirect` after a FIB lookup that knew the
/// neighbour.
pub const FWD_FIB: u32 = 1;
/// Packets forwarded with `bpf_redirect_neigh` (the FIB had no neighbour
/// entry; the kernel resolves it).
pub const FWD_NEIGH: u32 = 2;
/// Packets a fast path would have taken but left to the stack (TTL about to
/// expire, no usable FIB answer).
pub const FWD_STACK: u32 = 3;
/// Number of `SL_FWD_STATS` slots.
pub const FWD_STATS_COUNT: u32 = 4;

/// Source ports of SNATed flows: `SNAT_PORT_MIN..=SNAT_PORT_MAX`, above the
/// kernel's default ephemeral range (32768-60999) and the NodePort range.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// Value of `SL_SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// In a backend slot: the backend id. In the master entry: the session
    /// affinity timeout in seconds with `SVC_FLAG_AFFINITY`, else 0.
    pub backend_id: u32,
    /// Index into `SL_REVNAT` (the frontend to restore on replies); never 0.
    pub rev_nat_index: u32,
    /// In the master entry: number of backend slots. In a backend slot: 0.
    pub count: u16,
    /// `SVC_FLAG_*` bits; 0 for a plain ClusterIP.
    pub flags: u16,
    /// In the master entry of a service with `SVC_FLAG_AFFINITY`: the
    /// session-affinity group, shared by every frontend of one service port
    /// that serves the same backends (ClusterIP, NodePort, externalIPs, LB
    /// IPs), so a client keeps its backend across them (kube-proxy's
    /// affinity is per service port). It is the reverse-NAT index of one of
    /// them; 0: the frontend's own `rev_nat_index`. Elsewhere 0.
    pub affinity_id: u32,
}

/// Value of `SL_BACKENDS`, keyed by a `u32` backend id (never 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Backend address, network byte order.
    pub addr: u32,
    /// Backend port, network byte order.
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_STATE_*`.
    pub state: u8,
    /// The frontend (reverse-NAT index) this backend entry belongs to.
    /// Backend ids are per frontend, so removing a backend from one service
    /// ends its flows there without touching other services.
    pub rev_nat_index: u32,
}

/// Chosen for new flows.
pub const BACKEND_STATE_ACTIVE: u8 = 0;
/// Keeps its established flows, never chosen for new ones.
pub const BACKEND_STATE_TERMINATING: u8 = 1;
/// The bits of `Backend::state` that hold the `BACKEND_STATE_*` value.
pub const BACKEND_STATE_MASK: u8 = 0x7f;
/// `Backend::state` flag: the backend is on this node (its EndpointSlice's
/// `nodeName`), so external flows to it are not SNATed.
pub const BACKEND_FLAG_LOCAL: u8 = 0x80;

/// Value of `SL_REVNAT`, keyed by a `u32` reverse-NAT index: the frontend
/// that replies of a translated flow must appear to come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNat {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Direction of a conntrack entry.
/// Keyed by the tuple the client sent (to the frontend).
pub const CT_DIR_SERVICE: u8 = 0;
/// Keyed by the tuple the backend replies with (backend -> client).
pub const CT_DIR_REPLY: u8 = 1;

/// `CtEntry::flags`: the client is its own backend (a pod reaching itself
/// through its Service). Requests are also SNATed to `HAIRPIN_ADDR`, and
/// replies, addressed to it, are sent back to the client.
pub const CT_FLAG_HAIRPIN: u16 = 1;
/// `CtEntry::flags`: the flow's source is SNATed to the node. In the
/// service entry `nat_addr:nat_port` is the source the backend sees; in the
/// reply entry it is the client's original address and port.
pub const CT_FLAG_SNAT: u16 = 2;
/// `CtEntry::flags`: the frontend is an external one whose address is in
/// `frontend_addr` (for a NodePort the node address the client used). Its
/// replies carry a local source address, so they are routed by FIB lookup
/// and redirect instead of through the stack, which would drop them as
/// martians.
pub const CT_FLAG_EXTERNAL: u16 = 4;
/// `CtEntry::flags` of a service-direction entry: the client sent a FIN or
/// RST on this TCP flow. A SYN on the tuple afterwards is a new connection
/// on a reused client port and is balanced anew (netfilter's conntrack
/// starts a new entry then), not a retransmission.
pub const CT_FLAG_CLOSING: u16 = 8;
/// A SYN on a tracked TCP tuple whose flow is older than this (and not
/// marked closing) is taken for a new connection too (the old one may have
/// ended without the client's FIN or RST passing here, e.g. reset by the
/// server); a younger one is a retransmission of the flow's first SYN and
/// keeps its backend. Cilium keeps closed TCP entries this long as well.
pub const CT_SYN_RETRY_NS: u64 = 10_000_000_000;

/// The source address of hairpinned requests (link-local, never a pod's),
/// as octets. Cilium uses the same "service loopback" address.
pub const HAIRPIN_ADDR: [u8; 4] = [169, 254, 42, 1];

/// Key of `SL_CT` (an LRU hash): the full 5-tuple plus direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// `CT_DIR_SERVICE` or `CT_DIR_REPLY`.
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// Value of `SL_CT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    /// The backend this flow was sent to.
    pub backend_id: u32,
    /// The frontend to restore on replies.
    pub rev_nat_index: u32,
    /// `CT_FLAG_*` bits.
    pub flags: u16,
    /// With `CT_FLAG_SNAT`: see there (network order).
    pub nat_port: u16,
    /// With `CT_FLAG_SNAT`: see there (network order).
    pub nat_addr: u32,
    /// The frontend address the client used, which replies come from (for
    /// a NodePort the node address; its reverse-NAT entry holds none).
    pub frontend_addr: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` when the flow was created (or re-balanced).
    pub created_ns: u64,
}

/// Key of `SL_FRAGS` (an LRU hash): identifies one fragmented datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    /// IPv4 identification, network byte order.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `SL_FRAGS`: the L4 ports of the datagram, as its first fragment
/// carried them (before translation), network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

/// Key of `SL_AFFINITY` (an LRU hash): a client of one service port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Client address, network byte order.
    pub client: u32,
    /// The master entry's `affinity_id`, or its `rev_nat_index` when that
    /// is 0.
    pub rev_nat_index: u32,
}

/// Value of `SL_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    /// A backend id of one frontend of the group (all of them serve the
    /// same backends, so it is valid for each).
    pub backend_id: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` of the client's last new flow to this frontend.
    pub last_used_ns: u64,
}

/// Key of `SL_SOCK_REVNAT` (an LRU hash).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatKey {
    /// The socket's cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// The backend the socket was sent to, network byte order.
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

/// Value of `SL_SOCK_REVNAT`: the frontend the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNat {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
    pub rev_nat_index: u32,
}

/// Value of `SL_SVC_STATS` and `SL_BE_STATS`: traffic through a frontend
/// or to a backend. The control plane creates the entry (zeroed) with the
/// frontend or backend and deletes it with it; the kernel adds atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficStats {
    /// Client -> backend packets and bytes (after translation).
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    /// Backend -> client packets and bytes (reverse-translated).
    pub rev_packets: u64,
    pub rev_bytes: u64,
    /// New flows (backend selections).
    pub new_flows: u64,
}

/// Value of `SL_ENDPOINTS`: how to reach a pod on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// Interface index of the pod's host-side veth (in the node's netns).
    pub ifindex: u32,
    /// `ENDPOINT_FLAG_*` bits.
    pub flags: u32,
    /// MAC address of the pod's interface.
    pub mac: [u8; 6],
    /// MAC address of the host-side veth (the pod's gateway).
    pub node_mac: [u8; 6],
    pub _pad: [u8; 4],
}

const _: () = {
    assert!(core::mem::size_of::<EndpointInfo>() == 24);
    assert!(core::mem::size_of::<TrafficStats>() == 40);
    assert!(core::mem::size_of::<AffinityKey>() == 8);
    assert!(core::mem::size_of::<SockRevNatKey>() == 16);
    assert!(core::mem::size_of::<SockRevNat>() == 12);
    assert!(core::mem::size_of::<AffinityValue>() == 16);
    assert!(core::mem::size_of::<ServiceKey>() == 12);
    assert!(core::mem::size_of::<ServiceValue>() == 16);
    assert!(core::mem::size_of::<Backend>() == 12);
    assert!(core::mem::size_of::<RevNat>() == 8);
    assert!(core::mem::size_of::<CtKey>() == 16);
    assert!(core::mem::size_of::<CtEntry>() == 32);
    assert!(core::mem::size_of::<DatapathConfig>() == 8);
    assert!(core::mem::size_of::<FragKey>() == 12);
    assert!(core::mem::size_of::<FragPorts>() == 4);
    assert!(core::mem::size_of::<SourceRangeKey>() == 8);
};

#[cfg(feature = "user")]
mod user {
    use super::{
        Backend, CtEntry, CtKey, EndpointInfo, FragKey, FragPorts, RevNat, ServiceKey, ServiceValue,
    };
    use core::net::Ipv4Addr;

    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made of integers only,
    // and have no implicit padding (sizes asserted above).
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for RevNat {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtEntry {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragPorts {}
    unsafe impl aya::Pod for EndpointInfo {}
    unsafe impl aya::Pod for super::TrafficStats {}
    unsafe impl aya::Pod for super::AffinityKey {}
    unsafe impl aya::Pod for super::SockRevNatKey {}
    unsafe impl aya::Pod for super::SockRevNat {}
    unsafe impl aya::Pod for super::AffinityValue {}
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::SourceRangeKey {}

    /// An address as stored in maps (network byte order).
    #[must_use]
    pub fn addr_to_map(addr: Ipv4Addr) -> u32 {
        u32::from_ne_bytes(addr.octets())
    }

    /// An address as stored in maps, back to `Ipv4Addr`.
    #[must_use]
    pub fn addr_from_map(raw: u32) -> Ipv4Addr {
        Ipv4Addr::from(raw.to_ne_bytes())
    }

    /// A port as stored in maps (network byte order).
    #[must_use]
    pub fn port_to_map(port: u16) -> u16 {
        port.to_be()
    }

    /// A port as stored in maps, back to host order.
    #[must_use]
    pub fn port_from_map(raw: u16) -> u16 {
        u16::from_be(raw)
    }

    impl ServiceKey {
        #[must_use]
        pub fn new(addr: Ipv4Addr, port: u16, proto: u8, backend_slot: u16) -> Self {
            Self::scoped(addr, port, proto, backend_slot, super::SCOPE_ALL)
        }

        /// A key of the given `SCOPE_*`.
        #[must_use]
        pub fn scoped(addr: Ipv4Addr, port: u16, proto: u8, backend_slot: u16, scope: u8) -> Self {
            Self {
                addr: addr_to_map(addr),
                dport: port_to_map(port),
                backend_slot,
                proto,
                scope,
                _pad: [0; 2],
            }
        }

        #[must_use]
        pub fn addr(&self) -> Ipv4Addr {
            addr_from_map(self.addr)
        }

        #[must_use]
        pub fn port(&self) -> u16 {
            port_from_map(self.dport)
        }
    }

    impl ServiceValue {
        /// The master entry (slot 0) of a service with `count` backends.
        #[must_use]
        pub fn master(count: u16, rev_nat_index: u32) -> Self {
            Self { backend_id: 0, rev_nat_index, count, flags: 0, affinity_id: 0 }
        }

        /// The master entry, with session affinity when `affinity_timeout`
        /// (seconds) is given, and the other `SVC_FLAG_*` bits in `flags`.
        #[must_use]
        pub fn master_with(
            count: u16,
            rev_nat_index: u32,
            affinity_timeout: Option<u32>,
            flags: u16,
        ) -> Self {
            let flags = flags & !super::SVC_FLAG_AFFINITY;
            match affinity_timeout {
                Some(t) => Self {
                    backend_id: t,
                    rev_nat_index,
                    count,
                    flags: flags | super::SVC_FLAG_AFFINITY,
                    affinity_id: 0,
                },
                None => Self { backend_id: 0, rev_nat_index, count, flags, affinity_id: 0 },
            }
        }

        /// The same master entry in session-affinity group `id` (0: its
        /// own); only meaningful with an affinity timeout.
        #[must_use]
        pub fn in_affinity_group(mut self, id: u32) -> Self {
            self.affinity_id = if self.flags & super::SVC_FLAG_AFFINITY != 0 { id } else { 0 };
            self
        }

        /// The session-affinity group of a master entry: its `affinity_id`,
        /// or its own reverse-NAT index.
        #[must_use]
        pub fn affinity_group(&self) -> u32 {
            if self.affinity_id != 0 { self.affinity_id } else { self.rev_nat_index }
        }

        /// The session affinity timeout of a master entry, if any.
        #[must_use]
        pub fn affinity_timeout(&self) -> Option<u32> {
            (self.flags & super::SVC_FLAG_AFFINITY != 0).then_some(self.backend_id)
        }

        /// A backend slot.
        #[must_use]
        pub fn slot(backend_id: u32, rev_nat_index: u32) -> Self {
            Self { backend_id, rev_nat_index, count: 0, flags: 0, affinity_id: 0 }
        }
    }

    impl Backend {
        #[must_use]
        pub fn new(addr: Ipv4Addr, port: u16, proto: u8, state: u8, rev_nat_index: u32) -> Self {
            Self { addr: addr_to_map(addr), port: port_to_map(port), proto, state, rev_nat_index }
        }

        #[must_use]
        pub fn addr(&self) -> Ipv4Addr {
            addr_from_map(self.addr)
        }

        #[must_use]
        pub fn port(&self) -> u16 {
            port_from_map(self.port)
        }
    }

    impl RevNat {
        #[must_use]
        pub fn new(addr: Ipv4Addr, port: u16) -> Self {
            Self { addr: addr_to_map(addr), port: port_to_map(port), _pad: 0 }
        }

        #[must_use]
        pub fn addr(&self) -> Ipv4Addr {
            addr_from_map(self.addr)
        }

        #[must_use]
        pub fn port(&self) -> u16 {
            port_from_map(self.port)
        }
    }

    impl CtKey {
        #[must_use]
        pub fn new(
            saddr: Ipv4Addr,
            sport: u16,
            daddr: Ipv4Addr,
            dport: u16,
            proto: u8,
            dir: u8,
        ) -> Self {
            Self {
                saddr: addr_to_map(saddr),
                daddr: addr_to_map(daddr),
                sport: port_to_map(sport),
                dport: port_to_map(dport),
                proto,
                dir,
                _pad: [0; 2],
            }
        }
    }
}

#[cfg(feature = "user")]
pub use user::{addr_from_map, addr_to_map, port_from_map, port_to_map};

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    #[test]
    fn addresses_are_network_order_bytes() {
        let k = ServiceKey::new(Ipv4Addr::new(10, 96, 0, 1), 80, crate::proto::TCP, 0);
        assert_eq!(k.addr.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(k.dport.to_ne_bytes(), [0, 80]);
        assert_eq!(k.addr(), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(k.port(), 80);
    }

    #[test]
    fn keys_have_no_implicit_padding() {
        // Every byte of a key is a named field, so two equal keys are equal
        // byte for byte (the kernel hashes raw bytes).
        let k = CtKey::new(Ipv4Addr::new(1, 2, 3, 4), 5, Ipv4Addr::new(6, 7, 8, 9), 10, 6, 1);
        // SAFETY: CtKey is Pod (16 bytes, no padding).
        let bytes: [u8; 16] = unsafe { core::mem::transmute(k) };
        assert_eq!(bytes, [1, 2, 3, 4, 6, 7, 8, 9, 0, 5, 0, 10, 6, 1, 0, 0]);
    }

    #[test]
    fn sizes_match_kernel_layout() {
        assert_eq!(core::mem::size_of::<ServiceKey>(), 12);
        assert_eq!(core::mem::size_of::<ServiceValue>(), 16);
        assert_eq!(core::mem::size_of::<Backend>(), 12);
        assert_eq!(core::mem::size_of::<CtKey>(), 16);
        assert_eq!(core::mem::size_of::<CtEntry>(), 32);
        assert_eq!(core::mem::align_of::<CtEntry>(), 8);
    }
}

/// Layout of the pins under the agent's bpffs root (`--bpffs-root`,
/// `bpffsRoot` in the CNI config). The CNI plugin relies on it.
pub mod pins {
    /// `<root>/maps/<MAP_NAME>`: every map.
    pub const MAPS_DIR: &str = "maps";
    /// `<root>/progs/<PROG_NAME>`: the programs.
    pub const PROGS_DIR: &str = "progs";
    /// `<root>/links/`: pinned bpf links (external devices, cgroups).
    pub const LINKS_DIR: &str = "links";
    /// `<root>/links/<POD_LINK_PREFIX><ifindex>`: a tcx link per pod
    /// interface, as versions before the tc filter (below) pinned them. No
    /// longer created; the agent and the CNI remove those they find.
    pub const POD_LINK_PREFIX: &str = "pod-ingress-";
    /// The pod program on pod interfaces is not a pinned link but a tc
    /// filter: clsact qdisc, ingress, cls_bpf in direct-action mode, at this
    /// priority and handle. (A tcx attach waits a full RCU grace period
    /// under the RTNL lock, ~10 ms per pod, and makes deleting the interface
    /// ~12 ms slower; the filter costs ~0.3 ms.) The CNI creates it on a new
    /// veth before setting it up; the agent creates it on pod devices it
    /// finds and replaces the program in it atomically on upgrade.
    pub const POD_FILTER_PRIORITY: u16 = 1;
    /// Handle of the pod program's filter (see [`POD_FILTER_PRIORITY`]).
    pub const POD_FILTER_HANDLE: u32 = 0x51;
    /// `<root>/links/<EXT_LINK_PREFIX><ifindex>`: one tcx link per external device.
    pub const EXT_LINK_PREFIX: &str = "ext-ingress-";
}
