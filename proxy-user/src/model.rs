//! The pure model: what this node must program, computed from a [`Store`]
//! with kube-proxy's semantics. No I/O; the same input gives the same output.
//!
//! The pipeline per service port mirrors kube-proxy (pkg/proxy):
//! 1. [`service_ports`]: which services and ports are proxied at all
//!    (servicechangetracker: `ShouldSkipService`, the informers' label
//!    selector on `service.kubernetes.io/service-proxy-name` and
//!    `service.kubernetes.io/headless`, the cluster IP of our family).
//! 2. [`usable_slice`] + [`endpoints_for_port`]: the endpoints of a service
//!    port, merged over its EndpointSlices and deduplicated (endpointslicecache).
//! 3. [`categorize_endpoints`]: which of them each traffic policy uses
//!    (topology.go `CategorizeEndpoints`: ready first, else
//!    serving-and-terminating; topology hints; Local policies).
//! 4. One [`Frontend`] per reachable address: the ClusterIP with the
//!    internal policy's endpoints, and the NodePort (address
//!    [`NODEPORT_ADDR`]: every NodePort address of the node), each
//!    externalIP and each LoadBalancer ingress IP (ipMode VIP) with
//!    [`Categorized::for_external`].
//!
//! `spec.loadBalancerSourceRanges` (kube-proxy reads only the field, not the
//! old `service.beta.kubernetes.io/load-balancer-source-ranges` annotation)
//! restrict the LoadBalancer IP frontends of a `type: LoadBalancer` service,
//! and, beyond kube-proxy (issue 3), its NodePort frontends too.
//!
//! Only IPv4 is handled for now. Objects the model cannot use (a port 0, an
//! address that does not parse) give a [`ModelWarning`] and only the bad piece
//! is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::manifest::{ObjectKey, Store};

pub mod cache;
pub mod input;

pub use input::{Inputs, ServiceIn, SliceIn};

/// Services (and their EndpointSlices) with this label belong to another proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Set by the EndpointSlice controller on headless services' slices.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Ties an EndpointSlice to its service (same namespace).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The node label naming its zone, for topology hints.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// L4 protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// The protocol of an IP protocol number, if it is one we balance.
    #[must_use]
    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }

    /// A Kubernetes `protocol` field; absent means TCP (the API default).
    ///
    /// # Errors
    /// The value when it is not `TCP`, `UDP` or `SCTP`.
    pub fn from_k8s(value: Option<&str>) -> Result<Self, String> {
        match value {
            None | Some("TCP") => Ok(Self::Tcp),
            Some("UDP") => Ok(Self::Udp),
            Some("SCTP") => Ok(Self::Sctp),
            Some(other) => Err(other.to_owned()),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// Which clients a frontend serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every client: the only scope of most frontends.
    #[default]
    All,
    /// This node's pods and processes, for an external frontend (NodePort,
    /// externalIP, LoadBalancer IP) with `externalTrafficPolicy: Local` and
    /// `internalTrafficPolicy: Cluster`: kube-proxy sends their traffic to
    /// the cluster-wide endpoints (its "short-circuit" of pod and node
    /// traffic to external destinations), while traffic from outside keeps
    /// the Local choice of the `All` frontend of the same key.
    Internal,
}

impl Scope {
    /// `ServiceKey::scope` in the maps.
    pub fn number(self) -> u8 {
        match self {
            Scope::All => proxy_common::SCOPE_ALL,
            Scope::Internal => proxy_common::SCOPE_INTERNAL,
        }
    }

    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            proxy_common::SCOPE_ALL => Some(Scope::All),
            proxy_common::SCOPE_INTERNAL => Some(Scope::Internal),
            _ => None,
        }
    }
}

/// Where clients send traffic: address, port and protocol (and which of
/// those clients, see [`Scope`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
    pub scope: Scope,
}

impl FrontendKey {
    /// The frontend of `addr:port/proto` for every client.
    pub fn new(addr: Ipv4Addr, port: u16, proto: Protocol) -> Self {
        Self { addr, port, proto, scope: Scope::All }
    }

    /// The same address, port and protocol in another scope.
    #[must_use]
    pub fn in_scope(self, scope: Scope) -> Self {
        Self { scope, ..self }
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)?;
        if self.scope == Scope::Internal {
            f.write_str(" (internal)")?;
        }
        Ok(())
    }
}

/// What the data path may do with a backend: send new flows to it (the
/// endpoints kube-proxy's `CategorizeEndpoints` chose: ready ones, or the
/// serving-and-terminating ones when none is ready), or only keep the flows
/// it already has (serving-and-terminating endpoints not chosen, as
/// kube-proxy's conntrack keeps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendState {
    Active,
    Terminating,
}

/// One backend of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendSpec {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub state: BackendState,
    /// On this node (the EndpointSlice's `nodeName`): external flows to it
    /// are not SNATed.
    pub local: bool,
}

/// The address NodePort frontends are keyed by: "any NodePort address of
/// this node" (the data path matches the node's addresses).
pub const NODEPORT_ADDR: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

/// How a frontend treats traffic beyond picking a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendPolicy {
    /// A NodePort, externalIP or LoadBalancer IP (not a ClusterIP): traffic
    /// to other ports of its address is not rejected, and flows from
    /// outside the node to a backend on another node are SNATed.
    pub external: bool,
    /// `externalTrafficPolicy: Local` on an external frontend: the client's
    /// address is kept (only local endpoints are used).
    pub local: bool,
    /// Without a backend, drop instead of rejecting: kube-proxy's behaviour
    /// for a Local policy whose node has no endpoint while the service has
    /// endpoints elsewhere.
    pub drop_when_empty: bool,
    /// The frontend (of [`Scope::All`]) has a [`Scope::Internal`] twin that
    /// serves this node's pods and processes.
    pub two_scopes: bool,
}

/// What one frontend serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub service: ObjectKey,
    pub port_name: String,
    /// Sorted by (addr, port), one entry per (addr, port). Empty: the data
    /// path must reject the traffic (no usable endpoint).
    pub backends: Vec<BackendSpec>,
    /// `sessionAffinity: ClientIP`: the timeout in seconds
    /// (`sessionAffinityConfig.clientIP.timeoutSeconds`, default 10800).
    pub affinity_timeout: Option<u32>,
    pub policy: FrontendPolicy,
    /// `loadBalancerSourceRanges` (IPv4, host bits cleared, sorted, no
    /// duplicates): when not empty, new flows from other sources are
    /// dropped. Only on LoadBalancer IP and NodePort frontends.
    pub source_ranges: Vec<Ipv4Network>,
}

/// Everything this node must program, by frontend.
pub type Desired = BTreeMap<FrontendKey, Frontend>;

/// A piece of an object the model could not use (and skipped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelWarning {
    /// Kind and key, e.g. `Service default/web`.
    pub object: String,
    pub message: String,
}

impl fmt::Display for ModelWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

fn warn(warnings: &mut Vec<ModelWarning>, object: String, message: String) {
    tracing::debug!(%object, %message, "model warning");
    warnings.push(ModelWarning { object, message });
}

/// What this node must program for the objects in `store`.
///
/// `node_name` selects this node's Node object (for its zone) and decides
/// which endpoints are local.
pub fn desired_state(store: &Store, node_name: &str) -> (Desired, Vec<ModelWarning>) {
    desired_state_of(&Inputs::from_store(store, node_name))
}

/// [`desired_state`] of parsed inputs (for the node they were parsed for).
pub fn desired_state_of(inputs: &Inputs) -> (Desired, Vec<ModelWarning>) {
    let node_name = inputs.node_name();
    let zone = inputs.zone();
    let mut warnings: Vec<ModelWarning> =
        inputs.slices().flat_map(|(_, s)| s.warnings.iter().cloned()).collect();
    let mut desired = Desired::new();

    for (key, service) in inputs.services() {
        let service_slices = inputs.slices_of(key);
        let frontends = service_frontends(service, &service_slices, node_name, zone, &mut warnings);
        for (fk, frontend) in frontends {
            if let Some(existing) = desired.get(&fk) {
                // A two-scope frontend's internal twin loses with it.
                if fk.scope == Scope::All {
                    warnings.push(conflict_warning(&fk, &frontend, &existing.service));
                }
                continue;
            }
            desired.insert(fk, frontend);
        }
    }
    (desired, warnings)
}

/// The warning for `frontend` of another service losing `key` to `winner`.
pub(crate) fn conflict_warning(
    key: &FrontendKey,
    frontend: &Frontend,
    winner: &ObjectKey,
) -> ModelWarning {
    let w = ModelWarning {
        object: format!("Service {}", frontend.service),
        message: format!(
            "frontend {key} (port {:?}) is already served by Service {winner}; ignored",
            frontend.port_name
        ),
    };
    tracing::debug!(object = %w.object, message = %w.message, "model warning");
    w
}

/// The frontends of one service, given its usable EndpointSlices, in the
/// order [`desired_state`] claims them (a key repeated within the service
/// is kept once, with a warning). Conflicts with other services are not
/// resolved here.
pub fn service_frontends(
    service: &ServiceIn,
    service_slices: &[&SliceEndpoints],
    node_name: &str,
    zone: &str,
    warnings: &mut Vec<ModelWarning>,
) -> Vec<(FrontendKey, Frontend)> {
    let mut out: Vec<(FrontendKey, Frontend)> = Vec::new();
    let mut push = |fk: FrontendKey, frontend: Frontend, warnings: &mut Vec<ModelWarning>| {
        if let Some((_, existing)) = out.iter().find(|(k, _)| *k == fk) {
            warnings.push(conflict_warning(&fk, &frontend, &existing.service));
        } else {
            out.push((fk, frontend));
        }
    };
    warnings.extend(service.warnings.iter().cloned());
    for port in &service.ports {
        let endpoints = endpoints_for_port(port, service_slices);
        let categorized = categorize_endpoints(&endpoints, port, node_name, zone);

        // kube-proxy: a service with no endpoint at all rejects; one
        // whose policy leaves this node none drops.
        let has_endpoints = !categorized.all_reachable.is_empty();
        let frontend = FrontendKey::new(port.cluster_ip, port.port, port.protocol);
        let chosen = categorized.for_cluster_ip(port);
        let policy = FrontendPolicy { drop_when_empty: has_endpoints, ..FrontendPolicy::default() };
        let internal = backends(chosen, &endpoints);
        push(frontend, make_frontend(port, internal, policy, Vec::new()), warnings);
        if !port.externally_accessible {
            continue;
        }
        let chosen = categorized.for_external(port);
        // kube-proxy: with eTP Local (and iTP Cluster) this node's pods and
        // processes reach the external addresses through the Cluster
        // policy's endpoints (when there are any), as if they had gone out
        // to a load balancer and come back; only traffic from outside gets
        // the Local choice.
        let two_scopes = port.external_policy_local && !port.internal_policy_local;
        let policy = FrontendPolicy {
            external: true,
            local: port.external_policy_local,
            drop_when_empty: has_endpoints,
            two_scopes,
        };
        let external = backends(chosen, &endpoints);
        let internal = two_scopes.then(|| {
            let cluster = categorized.cluster.as_deref().unwrap_or_default();
            let chosen = if cluster.is_empty() { chosen } else { cluster };
            let policy = FrontendPolicy { local: false, two_scopes: false, ..policy };
            (backends(chosen, &endpoints), policy)
        });
        // Source ranges: on LoadBalancer IPs (kube-proxy) and NodePorts
        // (issue 3), never on externalIPs.
        let ranges = &port.source_ranges;
        let none = Vec::new();
        let addrs = (port.node_port != 0)
            .then_some((NODEPORT_ADDR, port.node_port, ranges))
            .into_iter()
            .chain(port.external_ips.iter().map(|ip| (*ip, port.port, &none)))
            .chain(port.load_balancer_ips.iter().map(|ip| (*ip, port.port, ranges)));
        for (addr, number, source_ranges) in addrs {
            let key = FrontendKey::new(addr, number, port.protocol);
            let fe = make_frontend(port, external.clone(), policy, source_ranges.clone());
            push(key, fe, warnings);
            if let Some((backends, policy)) = &internal {
                let fe = make_frontend(port, backends.clone(), *policy, source_ranges.clone());
                push(key.in_scope(Scope::Internal), fe, warnings);
            }
        }
    }
    out
}

fn make_frontend(
    port: &ServicePortInfo,
    backends: Vec<BackendSpec>,
    policy: FrontendPolicy,
    source_ranges: Vec<Ipv4Network>,
) -> Frontend {
    Frontend {
        service: port.service.clone(),
        port_name: port.port_name.clone(),
        backends,
        affinity_timeout: port.affinity_timeout,
        policy,
        source_ranges,
    }
}

/// The backends of a frontend: the chosen endpoints take new flows; the
/// other serving-and-terminating endpoints of the port keep their existing
/// flows. Sorted, one per (addr, port), chosen first on duplicates.
fn backends(chosen: &[&EndpointInfo], all: &[EndpointInfo]) -> Vec<BackendSpec> {
    let mut backends: Vec<BackendSpec> = chosen
        .iter()
        .map(|ep| BackendSpec {
            addr: ep.addr,
            port: ep.port,
            state: BackendState::Active,
            local: ep.is_local,
        })
        .chain(all.iter().filter(|ep| ep.serving && ep.terminating).map(|ep| BackendSpec {
            addr: ep.addr,
            port: ep.port,
            state: BackendState::Terminating,
            local: ep.is_local,
        }))
        .collect();
    // Active sorts before Terminating, so dedup keeps the chosen one.
    backends.sort_unstable();
    backends.dedup_by_key(|b| (b.addr, b.port));
    backends
}

/// The zone label of a node ("" when unknown).
pub fn zone_of(node: Option<&k8s_openapi::api::core::v1::Node>) -> &str {
    node.and_then(|node| node.metadata.labels.as_ref())
        .and_then(|labels| labels.get(LABEL_TOPOLOGY_ZONE))
        .map_or("", String::as_str)
}

fn has_label(labels: Option<&BTreeMap<String, String>>, label: &str) -> bool {
    labels.is_some_and(|labels| labels.contains_key(label))
}

/// Objects kube-proxy never sees: its informers select on the absence of
/// these labels, for Services and EndpointSlices alike.
fn skipped_by_labels(labels: Option<&BTreeMap<String, String>>) -> bool {
    has_label(labels, LABEL_SERVICE_PROXY_NAME) || has_label(labels, LABEL_HEADLESS)
}

// ---------------------------------------------------------------------------
// Services

/// One port of one proxied service, as kube-proxy's `ServicePort` sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortInfo {
    pub service: ObjectKey,
    pub port_name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub cluster_ip: Ipv4Addr,
    /// `spec.nodePort`, 0 when none.
    pub node_port: u16,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `externalTrafficPolicy: Local` on an externally accessible service.
    pub external_policy_local: bool,
    /// Reachable from outside: a node port, external IPs or load-balancer IPs.
    pub externally_accessible: bool,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` without affinity.
    pub affinity_timeout: Option<u32>,
    /// `spec.externalIPs` (IPv4).
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` whose `ipMode` is not `Proxy` (IPv4).
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.loadBalancerSourceRanges` (IPv4) of a `type: LoadBalancer`
    /// service; empty: no filtering.
    pub source_ranges: Vec<Ipv4Network>,
}

impl ServicePortInfo {
    /// Whether some traffic to this port uses the Cluster policy's endpoints.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || (self.externally_accessible && !self.external_policy_local)
    }

    /// Whether some traffic to this port uses the Local policy's endpoints.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.externally_accessible && self.external_policy_local)
    }
}

/// The proxied ports of a service; empty when the service is not proxied
/// (another proxy's, headless, ExternalName, no IPv4 cluster IP).
pub fn service_ports(
    key: &ObjectKey,
    service: &Service,
    warnings: &mut Vec<ModelWarning>,
) -> Vec<ServicePortInfo> {
    let object = || format!("Service {key}");
    if skipped_by_labels(service.metadata.labels.as_ref()) {
        tracing::debug!(service = %key, "skipped: service-proxy-name or headless label");
        return Vec::new();
    }
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let Some(cluster_ip) = cluster_ipv4(key, spec, warnings) else {
        return Vec::new();
    };

    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    // ipMode Proxy: the load balancer delivers to the node itself, as to a
    // NodePort; kube-proxy leaves such IPs alone.
    let load_balancer_ips = ipv4_list(
        ingress
            .iter()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref()),
        "status.loadBalancer.ingress[].ip",
        &object(),
        warnings,
    );
    let external_ips = ipv4_list(
        spec.external_ips.iter().flatten().map(String::as_str),
        "spec.externalIPs",
        &object(),
        warnings,
    );
    let lb_ips = !load_balancer_ips.is_empty();
    let has_external_ips = !external_ips.is_empty();
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity_timeout = session_affinity(key, spec, warnings);
    let external_local_requested = spec.external_traffic_policy.as_deref() == Some("Local");
    let source_ranges = source_ranges(spec, &object(), warnings);

    let mut ports: Vec<ServicePortInfo> = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let Some(number) = valid_port(port.port) else {
            warn(
                warnings,
                object(),
                format!("spec.ports[{i}].port {} is not a valid port; skipped", port.port),
            );
            continue;
        };
        let protocol = match Protocol::from_k8s(port.protocol.as_deref()) {
            Ok(p) => p,
            Err(p) => {
                warn(
                    warnings,
                    object(),
                    format!("spec.ports[{i}].protocol {p:?} is not TCP, UDP or SCTP; skipped"),
                );
                continue;
            }
        };
        if protocol == Protocol::Sctp {
            // Kept, so that the data path can reject and count its traffic
            // (a visible signal) instead of letting it time out.
            warn(
                warnings,
                object(),
                format!(
                    "spec.ports[{i}] is SCTP, which sluice cannot translate (no CRC32c update in eBPF); its traffic is rejected and counted as unsupported_protocol"
                ),
            );
        }
        let node_port = match port.node_port {
            None | Some(0) => 0,
            Some(n) => valid_port(n).unwrap_or_else(|| {
                warn(
                    warnings,
                    object(),
                    format!("spec.ports[{i}].nodePort {n} is not a valid port; ignored"),
                );
                0
            }),
        };
        let port_name = port.name.clone().unwrap_or_default();
        if ports
            .iter()
            .any(|p| (p.port == number && p.protocol == protocol) || (p.port_name == port_name))
        {
            warn(
                warnings,
                object(),
                format!(
                    "spec.ports[{i}] repeats the name {port_name:?} or {number}/{protocol}; skipped"
                ),
            );
            continue;
        }
        let externally_accessible = node_port != 0 || lb_ips || has_external_ips;
        ports.push(ServicePortInfo {
            service: key.clone(),
            port_name,
            protocol,
            port: number,
            cluster_ip,
            node_port,
            internal_policy_local,
            external_policy_local: externally_accessible && external_local_requested,
            externally_accessible,
            affinity_timeout,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            source_ranges: source_ranges.clone(),
        });
    }
    ports
}

/// `spec.loadBalancerSourceRanges` as kube-proxy reads them: whitespace
/// trimmed, host bits cleared, the other family's ranges left out; a range
/// that does not parse is skipped with a warning (the rest still applies).
/// Only a `type: LoadBalancer` service has them (the API refuses them on
/// other types); elsewhere they are ignored with a warning.
fn source_ranges(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    object: &str,
    warnings: &mut Vec<ModelWarning>,
) -> Vec<Ipv4Network> {
    let field = "spec.loadBalancerSourceRanges";
    let listed = spec.load_balancer_source_ranges.as_deref().unwrap_or_default();
    if listed.is_empty() {
        return Vec::new();
    }
    if spec.type_.as_deref() != Some("LoadBalancer") {
        warn(
            warnings,
            object.to_owned(),
            format!("{field} is only used with type LoadBalancer; ignored"),
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, range) in listed.iter().enumerate() {
        let range = range.trim();
        // A CIDR, as kube-proxy's ParseCIDR wants (a bare address is not one).
        let parsed = if range.contains('/') {
            range.parse::<ipnetwork::IpNetwork>().map_err(|e| e.to_string())
        } else {
            Err("no prefix length".to_owned())
        };
        match parsed {
            Ok(ipnetwork::IpNetwork::V4(net)) => {
                let net = Ipv4Network::new(net.network(), net.prefix()).expect("valid prefix");
                out.push(net);
            }
            Ok(ipnetwork::IpNetwork::V6(_)) => {}
            Err(e) => warn(
                warnings,
                object.to_owned(),
                format!("{field}[{i}] {range:?} is not a CIDR ({e}); skipped"),
            ),
        }
    }
    out.sort_unstable_by_key(|n| (n.network(), n.prefix()));
    out.dedup();
    out
}

/// The IPv4 addresses of a list field; IPv6 ones are skipped (IPv4 only for
/// now), unparsable ones too, with a warning.
fn ipv4_list<'a>(
    ips: impl Iterator<Item = &'a str>,
    field: &str,
    object: &str,
    warnings: &mut Vec<ModelWarning>,
) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for ip in ips {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if !out.contains(&v4) => out.push(v4),
            Ok(_) => {}
            Err(_) => warn(
                warnings,
                object.to_owned(),
                format!("{field} {ip:?} is not an IP address; ignored"),
            ),
        }
    }
    out
}

/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// The API's maximum timeout (one day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// `sessionAffinity: ClientIP` -> its timeout; anything else -> `None`.
fn session_affinity(
    key: &ObjectKey,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    warnings: &mut Vec<ModelWarning>,
) -> Option<u32> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return None;
    }
    let configured = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    Some(match configured {
        None => DEFAULT_AFFINITY_TIMEOUT,
        Some(t) if t > 0 && t as u32 <= MAX_AFFINITY_TIMEOUT => t as u32,
        Some(t) => {
            warn(
                warnings,
                format!("Service {key}"),
                format!(
                    "sessionAffinityConfig.clientIP.timeoutSeconds {t} is outside 1..={MAX_AFFINITY_TIMEOUT}; using {DEFAULT_AFFINITY_TIMEOUT}"
                ),
            );
            DEFAULT_AFFINITY_TIMEOUT
        }
    })
}

/// `field[i]` for a list field, `field` for the singular `spec.clusterIP`.
fn indexed(field: &str, i: usize, len: usize) -> String {
    if field.ends_with('s') || len > 1 { format!("{field}[{i}]") } else { field.to_owned() }
}

fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|&p| p != 0)
}

/// The service's IPv4 cluster IP: the first IPv4 of `spec.clusterIPs`, else
/// `spec.clusterIP`. None for headless (`None`) and unset cluster IPs and for
/// IPv6-only services.
fn cluster_ipv4(
    key: &ObjectKey,
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    warnings: &mut Vec<ModelWarning>,
) -> Option<Ipv4Addr> {
    let (field, ips): (&str, Vec<&str>) = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => {
            ("spec.clusterIPs", ips.iter().map(String::as_str).collect())
        }
        _ => ("spec.clusterIP", spec.cluster_ip.as_deref().into_iter().collect()),
    };
    // kube-proxy's ShouldSkipService: the primary cluster IP decides.
    match ips.first() {
        None | Some(&("" | "None")) => {
            tracing::debug!(service = %key, "skipped: headless or no cluster IP");
            return None;
        }
        Some(_) => {}
    }
    for (i, ip) in ips.iter().enumerate() {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => return Some(v4),
            Ok(IpAddr::V6(_)) => {}
            Err(_) => warn(
                warnings,
                format!("Service {key}"),
                format!("{} {ip:?} is not an IP address; ignored", indexed(field, i, ips.len())),
            ),
        }
    }
    tracing::debug!(service = %key, "skipped: no IPv4 cluster IP");
    None
}

// ---------------------------------------------------------------------------
// Endpoints

/// One endpoint of one service port, as kube-proxy's endpointslicecache keeps
/// it: conditions with the API's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// `conditions.ready`; absent means true.
    pub ready: bool,
    /// `conditions.serving`; absent means true (the API's and kube-proxy's
    /// reading).
    pub serving: bool,
    /// `conditions.terminating`; absent means false.
    pub terminating: bool,
    /// `nodeName` is this node.
    pub is_local: bool,
    /// `hints.forZones`; empty when there are none.
    pub zone_hints: BTreeSet<String>,
    /// `hints.forNodes`; empty when there are none.
    pub node_hints: BTreeSet<String>,
}

/// A usable IPv4 EndpointSlice, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoints {
    pub slice: ObjectKey,
    /// (name, protocol, port) of each usable slice port.
    pub ports: Vec<(String, Protocol, u16)>,
    /// The endpoints, with port 0 (set per service port).
    pub endpoints: Vec<EndpointInfo>,
}

/// One EndpointSlice as the model uses it, with the key of its service;
/// `None` when the model ignores the slice (another proxy's, no service
/// label, not IPv4).
pub fn usable_slice(
    key: &ObjectKey,
    slice: &EndpointSlice,
    node_name: &str,
    warnings: &mut Vec<ModelWarning>,
) -> Option<(ObjectKey, SliceEndpoints)> {
    let labels = slice.metadata.labels.as_ref();
    if skipped_by_labels(labels) {
        return None;
    }
    let Some(service) = labels.and_then(|l| l.get(LABEL_SERVICE_NAME)).filter(|s| !s.is_empty())
    else {
        tracing::debug!(slice = %key, "ignored: no {LABEL_SERVICE_NAME} label");
        return None;
    };
    if slice.address_type != "IPv4" {
        return None; // IPv6 and FQDN: not handled (yet).
    }
    let parsed = parse_slice(key, slice, node_name, warnings);
    Some((ObjectKey::new(key.namespace.clone(), service.clone()), parsed))
}

fn parse_slice(
    key: &ObjectKey,
    slice: &EndpointSlice,
    node_name: &str,
    warnings: &mut Vec<ModelWarning>,
) -> SliceEndpoints {
    let object = || format!("EndpointSlice {key}");
    let mut ports = Vec::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        let number = port.port.unwrap_or(0);
        let Some(number) = valid_port(number) else {
            warn(
                warnings,
                object(),
                format!("ports[{i}].port {number} is not a valid port; skipped"),
            );
            continue;
        };
        let protocol = match Protocol::from_k8s(port.protocol.as_deref()) {
            Ok(p) => p,
            Err(p) => {
                warn(
                    warnings,
                    object(),
                    format!("ports[{i}].protocol {p:?} is not TCP, UDP or SCTP; skipped"),
                );
                continue;
            }
        };
        // The API defaults a missing name to "".
        ports.push((port.name.clone().unwrap_or_default(), protocol, number));
    }

    let mut endpoints = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        // kube-proxy uses the first address only.
        let Some(address) = endpoint.addresses.first() else {
            warn(warnings, object(), format!("endpoints[{i}] has no address; skipped"));
            continue;
        };
        let Ok(addr) = address.parse::<Ipv4Addr>() else {
            warn(
                warnings,
                object(),
                format!("endpoints[{i}].addresses[0] {address:?} is not an IPv4 address; skipped"),
            );
            continue;
        };
        let conditions = endpoint.conditions.as_ref();
        let hints = endpoint.hints.as_ref();
        endpoints.push(EndpointInfo {
            addr,
            port: 0,
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            is_local: !node_name.is_empty() && endpoint.node_name.as_deref() == Some(node_name),
            zone_hints: hints
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| z.name.clone())
                .collect(),
            node_hints: hints
                .and_then(|h| h.for_nodes.as_ref())
                .into_iter()
                .flatten()
                .map(|n| n.name.clone())
                .collect(),
        });
    }
    SliceEndpoints { slice: key.clone(), ports, endpoints }
}

/// The endpoints of one service port over all its slices: a slice port
/// matches by name and protocol and gives the backend port. One endpoint per
/// (addr, port): when slices disagree, a non-terminating one wins (the pod
/// that reuses the IP of a terminating one), else the first in slice order.
/// Sorted by (addr, port).
pub fn endpoints_for_port(port: &ServicePortInfo, slices: &[&SliceEndpoints]) -> Vec<EndpointInfo> {
    let mut merged: BTreeMap<(Ipv4Addr, u16), EndpointInfo> = BTreeMap::new();
    for slice in slices {
        for (name, protocol, number) in &slice.ports {
            if *name != port.port_name || *protocol != port.protocol {
                continue;
            }
            for endpoint in &slice.endpoints {
                let key = (endpoint.addr, *number);
                if !merged.contains_key(&key) || !endpoint.terminating {
                    merged.insert(key, EndpointInfo { port: *number, ..endpoint.clone() });
                }
            }
        }
    }
    merged.into_values().collect()
}

// ---------------------------------------------------------------------------
// CategorizeEndpoints

/// Which endpoints each traffic policy of a service port uses
/// (kube-proxy's `CategorizeEndpoints`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// Cluster policy's endpoints (topology applied); None when the port
    /// never uses the Cluster policy.
    pub cluster: Option<Vec<&'a EndpointInfo>>,
    /// Local policy's endpoints; None when the port never uses the Local
    /// policy.
    pub local: Option<Vec<&'a EndpointInfo>>,
    /// Union of both: everything reachable from this node.
    pub all_reachable: Vec<&'a EndpointInfo>,
    /// Some usable endpoint exists somewhere in the cluster (even when none
    /// is reachable from here).
    pub has_any: bool,
}

impl<'a> Categorized<'a> {
    /// The endpoints of traffic to the cluster IP (internal traffic policy).
    pub fn for_cluster_ip(&self, port: &ServicePortInfo) -> &[&'a EndpointInfo] {
        let chosen = if port.internal_policy_local { &self.local } else { &self.cluster };
        chosen.as_deref().unwrap_or_default()
    }

    /// The endpoints of traffic from outside (node ports, external IPs,
    /// load-balancer IPs: external traffic policy).
    pub fn for_external(&self, port: &ServicePortInfo) -> &[&'a EndpointInfo] {
        let chosen = if port.external_policy_local { &self.local } else { &self.cluster };
        chosen.as_deref().unwrap_or_default()
    }
}

/// Topology in force for a service port's Cluster-policy endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologyMode {
    /// Every ready endpoint.
    None,
    /// Ready endpoints hinted for this node's zone.
    PreferSameZone,
    /// Ready endpoints hinted for this node.
    PreferSameNode,
}

/// kube-proxy's `CategorizeEndpoints`: usable means ready, falling back to
/// serving-and-terminating (independently for Cluster and Local) when none is
/// ready; topology hints only when every ready endpoint has them and one of
/// them is for this node (or its zone).
pub fn categorize_endpoints<'a>(
    endpoints: &'a [EndpointInfo],
    port: &ServicePortInfo,
    node_name: &str,
    zone: &str,
) -> Categorized<'a> {
    let mut out = Categorized::default();
    if endpoints.is_empty() {
        // kube-proxy returns nil everywhere; the policies in use still get
        // an (empty) list so the caller can tell "none" from "not used".
        if port.uses_cluster_endpoints() {
            out.cluster = Some(Vec::new());
        }
        if port.uses_local_endpoints() {
            out.local = Some(Vec::new());
        }
        return out;
    }
    let filter = |pred: &dyn Fn(&EndpointInfo) -> bool| -> Vec<&'a EndpointInfo> {
        endpoints.iter().filter(|ep| pred(ep)).collect()
    };

    let mut mode = TopologyMode::None;
    if port.uses_cluster_endpoints() {
        mode = topology_mode_from_hints(endpoints, node_name, zone);
        let mut cluster =
            filter(&|ep| ep.ready && available_for_topology(ep, mode, node_name, zone));
        if cluster.is_empty() {
            cluster = filter(&|ep| ep.serving && ep.terminating);
        }
        out.has_any = !cluster.is_empty();
        out.cluster = Some(cluster);
    }

    if !port.uses_local_endpoints() {
        out.all_reachable = out.cluster.clone().unwrap_or_default();
        return out;
    }

    let mut has_local_ready = false;
    let mut has_local_serving_terminating = false;
    for ep in endpoints {
        if ep.ready {
            out.has_any = true;
            has_local_ready |= ep.is_local;
        } else if ep.serving && ep.terminating {
            out.has_any = true;
            has_local_serving_terminating |= ep.is_local;
        }
    }
    let mut use_serving_terminating = false;
    let local = if has_local_ready {
        filter(&|ep| ep.is_local && ep.ready)
    } else if has_local_serving_terminating {
        use_serving_terminating = true;
        filter(&|ep| ep.is_local && ep.serving && ep.terminating)
    } else {
        Vec::new()
    };
    out.local = Some(local);

    let Some(cluster) = &out.cluster else {
        out.all_reachable = out.local.clone().unwrap_or_default();
        return out;
    };
    if mode == TopologyMode::None && !use_serving_terminating {
        // Cluster holds every ready endpoint, a superset of local's.
        out.all_reachable = cluster.clone();
        return out;
    }
    let mut all: Vec<&EndpointInfo> =
        cluster.iter().chain(out.local.iter().flatten()).copied().collect();
    all.sort_by_key(|ep| (ep.addr, ep.port));
    all.dedup_by_key(|ep| (ep.addr, ep.port));
    out.all_reachable = all;
    out
}

/// kube-proxy's `topologyModeFromHints` (with PreferSameTrafficDistribution
/// on: node hints only appear when the control plane sets them).
pub fn topology_mode_from_hints(
    endpoints: &[EndpointInfo],
    node_name: &str,
    zone: &str,
) -> TopologyMode {
    let mut has_ready = false;
    let mut all_have_node_hints = true;
    let mut has_for_node = false;
    let mut all_have_zone_hints = true;
    let mut has_for_zone = false;
    for ep in endpoints.iter().filter(|ep| ep.ready) {
        has_ready = true;
        if ep.node_hints.is_empty() {
            all_have_node_hints = false;
        } else if ep.node_hints.contains(node_name) {
            has_for_node = true;
        }
        if ep.zone_hints.is_empty() {
            all_have_zone_hints = false;
        } else if ep.zone_hints.contains(zone) {
            has_for_zone = true;
        }
    }
    if !has_ready {
        TopologyMode::None
    } else if all_have_node_hints && has_for_node {
        TopologyMode::PreferSameNode
    } else if all_have_zone_hints && has_for_zone {
        TopologyMode::PreferSameZone
    } else {
        TopologyMode::None
    }
}

/// Whether an endpoint serves this node under `mode` (no fallback here; it
/// happened when choosing the mode).
pub fn available_for_topology(
    ep: &EndpointInfo,
    mode: TopologyMode,
    node_name: &str,
    zone: &str,
) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => ep.node_hints.contains(node_name),
        TopologyMode::PreferSameZone => ep.zone_hints.contains(zone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const NODE: &str = "node-1";

    fn store(objects: &[Value]) -> Store {
        let mut store = Store::default();
        for object in objects {
            let meta = &object["metadata"];
            let key = ObjectKey::new(
                meta["namespace"].as_str().unwrap_or("default"),
                meta["name"].as_str().expect("name"),
            );
            match object["kind"].as_str() {
                Some("Service") => {
                    let s = serde_json::from_value(object.clone()).expect("service");
                    store.services.insert(key, s);
                }
                Some("EndpointSlice") => {
                    let s = serde_json::from_value(object.clone()).expect("slice");
                    store.endpoint_slices.insert(key, s);
                }
                Some("Node") => {
                    let n = serde_json::from_value(object.clone()).expect("node");
                    store.nodes.insert(key.name, n);
                }
                other => panic!("kind {other:?}"),
            }
        }
        store
    }

    fn svc(name: &str, cluster_ip: &str, ports: Value) -> Value {
        let service = json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "ns"},
               "spec": {"clusterIP": cluster_ip}});
        with(service, &["spec", "ports"], ports)
    }

    fn with(mut object: Value, path: &[&str], value: Value) -> Value {
        let mut at = &mut object;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        object
    }

    fn slice(name: &str, service: &str, ports: Value, endpoints: Value) -> Value {
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "namespace": "ns",
                            "labels": {LABEL_SERVICE_NAME: service}},
               "addressType": "IPv4"});
        with(with(slice, &["ports"], ports), &["endpoints"], endpoints)
    }

    fn ep(ip: &str) -> Value {
        json!({"addresses": [ip], "nodeName": "node-2"})
    }

    fn ep_cond(ip: &str, conditions: Value) -> Value {
        with(json!({"addresses": [ip]}), &["conditions"], conditions)
    }

    /// One line per frontend: `addr:port/PROTO svc/name port_name -> backends`
    /// with `~` marking terminating backends, then ` from [ranges]` when the
    /// frontend has source ranges.
    fn render(desired: &Desired) -> Vec<String> {
        desired
            .iter()
            .map(|(key, fe)| {
                let backends: Vec<String> = fe
                    .backends
                    .iter()
                    .map(|b| {
                        let mark = if b.state == BackendState::Terminating { "~" } else { "" };
                        format!("{}:{}{mark}", b.addr, b.port)
                    })
                    .collect();
                let mut line =
                    format!("{key} {} {} -> [{}]", fe.service, fe.port_name, backends.join(" "));
                if !fe.source_ranges.is_empty() {
                    let ranges: Vec<String> =
                        fe.source_ranges.iter().map(ToString::to_string).collect();
                    line.push_str(&format!(" from [{}]", ranges.join(" ")));
                }
                line
            })
            .collect()
    }

    struct Case {
        name: &'static str,
        objects: Vec<Value>,
        want: &'static [&'static str],
        /// Substrings, one per expected warning.
        warnings: &'static [&'static str],
    }

    fn cases() -> Vec<Case> {
        let web = || {
            svc(
                "web",
                "10.96.0.10",
                json!([{"name": "http", "port": 80}, {"name": "https", "port": 443}]),
            )
        };
        let web_ports = || json!([{"name": "http", "port": 8080}, {"name": "https", "port": 8443}]);
        let one = || svc("one", "10.96.0.20", json!([{"port": 80}]));
        let one_ports = || json!([{"port": 8080}]);
        // A LoadBalancer service with a NodePort, an externalIP, an ingress
        // IP and the given loadBalancerSourceRanges.
        let lb = |type_: &str, ranges: Value| {
            let s = svc("lb", "10.96.0.30", json!([{"port": 80, "nodePort": 30080}]));
            let s = with(s, &["spec", "type"], json!(type_));
            let s = with(s, &["spec", "externalIPs"], json!(["192.0.2.7"]));
            let s = with(s, &["spec", "loadBalancerSourceRanges"], ranges);
            with(s, &["status"], json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}))
        };
        let lb_slice = || slice("lb-a", "lb", one_ports(), json!([ep("10.244.1.5")]));
        // The same with externalTrafficPolicy Local (and the given
        // internalTrafficPolicy), endpoints on this node and node-2.
        let local_lb = |itp: &str| {
            let s = lb("LoadBalancer", json!([]));
            let s = with(s, &["spec", "externalTrafficPolicy"], json!("Local"));
            with(s, &["spec", "internalTrafficPolicy"], json!(itp))
        };
        let here = |ip: &str| json!({"addresses": [ip], "nodeName": NODE});
        let local_lb_slice = |eps: Value| slice("lb-a", "lb", one_ports(), eps);
        vec![
            Case {
                name: "eTP Local: outside clients get local endpoints, this node's own \
                       traffic (internal scope) the cluster's",
                objects: vec![
                    local_lb("Cluster"),
                    local_lb_slice(json!([here("10.244.0.5"), ep("10.244.1.5")])),
                ],
                want: &[
                    "0.0.0.0:30080/TCP ns/lb  -> [10.244.0.5:8080]",
                    "0.0.0.0:30080/TCP (internal) ns/lb  -> [10.244.0.5:8080 10.244.1.5:8080]",
                    "10.96.0.30:80/TCP ns/lb  -> [10.244.0.5:8080 10.244.1.5:8080]",
                    "192.0.2.7:80/TCP ns/lb  -> [10.244.0.5:8080]",
                    "192.0.2.7:80/TCP (internal) ns/lb  -> [10.244.0.5:8080 10.244.1.5:8080]",
                    "203.0.113.10:80/TCP ns/lb  -> [10.244.0.5:8080]",
                    "203.0.113.10:80/TCP (internal) ns/lb  -> [10.244.0.5:8080 10.244.1.5:8080]",
                ],
                warnings: &[],
            },
            Case {
                name: "eTP Local without a local endpoint: outside clients dropped, \
                       this node's traffic still served",
                objects: vec![local_lb("Cluster"), local_lb_slice(json!([ep("10.244.1.5")]))],
                want: &[
                    "0.0.0.0:30080/TCP ns/lb  -> []",
                    "0.0.0.0:30080/TCP (internal) ns/lb  -> [10.244.1.5:8080]",
                    "10.96.0.30:80/TCP ns/lb  -> [10.244.1.5:8080]",
                    "192.0.2.7:80/TCP ns/lb  -> []",
                    "192.0.2.7:80/TCP (internal) ns/lb  -> [10.244.1.5:8080]",
                    "203.0.113.10:80/TCP ns/lb  -> []",
                    "203.0.113.10:80/TCP (internal) ns/lb  -> [10.244.1.5:8080]",
                ],
                warnings: &[],
            },
            Case {
                name: "eTP Local and iTP Local: one scope, local endpoints for everyone",
                objects: vec![
                    local_lb("Local"),
                    local_lb_slice(json!([here("10.244.0.5"), ep("10.244.1.5")])),
                ],
                want: &[
                    "0.0.0.0:30080/TCP ns/lb  -> [10.244.0.5:8080]",
                    "10.96.0.30:80/TCP ns/lb  -> [10.244.0.5:8080]",
                    "192.0.2.7:80/TCP ns/lb  -> [10.244.0.5:8080]",
                    "203.0.113.10:80/TCP ns/lb  -> [10.244.0.5:8080]",
                ],
                warnings: &[],
            },
            Case {
                name: "source ranges on the NodePort and LoadBalancer IP, not the externalIP",
                objects: vec![
                    lb(
                        "LoadBalancer",
                        json!([" 198.18.1.5/28 ", "10.0.0.0/8", "2001:db8::/64", "10.0.0.0/8"]),
                    ),
                    lb_slice(),
                ],
                want: &[
                    "0.0.0.0:30080/TCP ns/lb  -> [10.244.1.5:8080] from [10.0.0.0/8 198.18.1.0/28]",
                    "10.96.0.30:80/TCP ns/lb  -> [10.244.1.5:8080]",
                    "192.0.2.7:80/TCP ns/lb  -> [10.244.1.5:8080]",
                    "203.0.113.10:80/TCP ns/lb  -> [10.244.1.5:8080] from [10.0.0.0/8 198.18.1.0/28]",
                ],
                warnings: &[],
            },
            Case {
                name: "a bad source range is skipped, the others apply",
                objects: vec![
                    lb("LoadBalancer", json!(["198.18.1.0/28", "300.1.1.0/24", "10.1.2.3"])),
                    lb_slice(),
                ],
                want: &[
                    "0.0.0.0:30080/TCP ns/lb  -> [10.244.1.5:8080] from [198.18.1.0/28]",
                    "10.96.0.30:80/TCP ns/lb  -> [10.244.1.5:8080]",
                    "192.0.2.7:80/TCP ns/lb  -> [10.244.1.5:8080]",
                    "203.0.113.10:80/TCP ns/lb  -> [10.244.1.5:8080] from [198.18.1.0/28]",
                ],
                warnings: &[
                    "loadBalancerSourceRanges[1] \"300.1.1.0/24\" is not a CIDR",
                    "loadBalancerSourceRanges[2] \"10.1.2.3\" is not a CIDR",
                ],
            },
            Case {
                name: "source ranges on a NodePort service are ignored",
                objects: vec![lb("NodePort", json!(["198.18.1.0/28"])), lb_slice()],
                want: &[
                    "0.0.0.0:30080/TCP ns/lb  -> [10.244.1.5:8080]",
                    "10.96.0.30:80/TCP ns/lb  -> [10.244.1.5:8080]",
                    "192.0.2.7:80/TCP ns/lb  -> [10.244.1.5:8080]",
                    "203.0.113.10:80/TCP ns/lb  -> [10.244.1.5:8080]",
                ],
                warnings: &["loadBalancerSourceRanges is only used with type LoadBalancer"],
            },
            Case {
                name: "no source ranges: no filtering",
                objects: vec![lb("LoadBalancer", json!([])), lb_slice()],
                want: &[
                    "0.0.0.0:30080/TCP ns/lb  -> [10.244.1.5:8080]",
                    "10.96.0.30:80/TCP ns/lb  -> [10.244.1.5:8080]",
                    "192.0.2.7:80/TCP ns/lb  -> [10.244.1.5:8080]",
                    "203.0.113.10:80/TCP ns/lb  -> [10.244.1.5:8080]",
                ],
                warnings: &[],
            },
            Case {
                name: "SCTP port kept (the data path rejects and counts it), with a warning",
                objects: vec![
                    svc("sig", "10.96.0.40", json!([{"port": 9000, "protocol": "SCTP"}])),
                    slice(
                        "sig-a",
                        "sig",
                        json!([{"port": 9000, "protocol": "SCTP"}]),
                        json!([ep("10.244.1.5")]),
                    ),
                ],
                want: &["10.96.0.40:9000/SCTP ns/sig  -> [10.244.1.5:9000]"],
                warnings: &["spec.ports[0] is SCTP, which sluice cannot translate"],
            },
            Case {
                name: "multi-port service, named ports matched through slices",
                objects: vec![
                    web(),
                    slice("web-a", "web", web_ports(), json!([ep("10.244.1.6"), ep("10.244.1.5")])),
                ],
                want: &[
                    "10.96.0.10:80/TCP ns/web http -> [10.244.1.5:8080 10.244.1.6:8080]",
                    "10.96.0.10:443/TCP ns/web https -> [10.244.1.5:8443 10.244.1.6:8443]",
                ],
                warnings: &[],
            },
            Case {
                name: "slice port of another name does not match",
                objects: vec![
                    web(),
                    slice(
                        "web-a",
                        "web",
                        json!([{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]),
                        json!([ep("10.244.1.5")]),
                    ),
                ],
                want: &[
                    "10.96.0.10:80/TCP ns/web http -> [10.244.1.5:8080]",
                    "10.96.0.10:443/TCP ns/web https -> []",
                ],
                warnings: &[],
            },
            Case {
                name: "unnamed port",
                objects: vec![one(), slice("one-a", "one", one_ports(), json!([ep("10.244.1.5")]))],
                want: &["10.96.0.20:80/TCP ns/one  -> [10.244.1.5:8080]"],
                warnings: &[],
            },
            Case {
                name: "several slices merged",
                objects: vec![
                    one(),
                    slice("one-a", "one", one_ports(), json!([ep("10.244.1.5")])),
                    slice("one-b", "one", one_ports(), json!([ep("10.244.2.5"), ep("10.244.2.6")])),
                ],
                want: &[
                    "10.96.0.20:80/TCP ns/one  -> [10.244.1.5:8080 10.244.2.5:8080 10.244.2.6:8080]",
                ],
                warnings: &[],
            },
            Case {
                name: "address in several slices deduplicated, the non-terminating one wins",
                objects: vec![
                    one(),
                    slice(
                        "one-a",
                        "one",
                        one_ports(),
                        json!([
                            ep("10.244.1.5"),
                            ep_cond(
                                "10.244.1.7",
                                json!({"ready": false, "serving": true, "terminating": true})
                            ),
                        ]),
                    ),
                    slice("one-b", "one", one_ports(), json!([ep("10.244.1.5"), ep("10.244.1.7")])),
                ],
                want: &["10.96.0.20:80/TCP ns/one  -> [10.244.1.5:8080 10.244.1.7:8080]"],
                warnings: &[],
            },
            Case {
                name: "same address with two backend ports is two backends",
                objects: vec![
                    one(),
                    slice("one-a", "one", json!([{"port": 8080}]), json!([ep("10.244.1.5")])),
                    slice("one-b", "one", json!([{"port": 9090}]), json!([ep("10.244.1.5")])),
                ],
                want: &["10.96.0.20:80/TCP ns/one  -> [10.244.1.5:8080 10.244.1.5:9090]"],
                warnings: &[],
            },
            Case {
                name: "not-ready endpoints excluded (a terminating one keeps its flows only); nil conditions mean ready",
                objects: vec![
                    one(),
                    slice(
                        "one-a",
                        "one",
                        one_ports(),
                        json!([
                            ep_cond("10.244.1.5", json!({})),
                            ep_cond("10.244.1.6", json!({"ready": false})),
                            ep_cond("10.244.1.7", json!({"ready": true, "serving": true})),
                            ep_cond(
                                "10.244.1.8",
                                json!({"ready": false, "serving": true, "terminating": true})
                            ),
                        ]),
                    ),
                ],
                want: &[
                    "10.96.0.20:80/TCP ns/one  -> [10.244.1.5:8080 10.244.1.7:8080 10.244.1.8:8080~]",
                ],
                warnings: &[],
            },
            Case {
                name: "no ready endpoint: fall back to serving and terminating (taking new flows)",
                objects: vec![
                    one(),
                    slice(
                        "one-a",
                        "one",
                        one_ports(),
                        json!([
                            ep_cond(
                                "10.244.1.5",
                                json!({"ready": false, "serving": true, "terminating": true})
                            ),
                            ep_cond(
                                "10.244.1.6",
                                json!({"ready": false, "serving": false, "terminating": true})
                            ),
                            ep_cond("10.244.1.7", json!({"ready": false})),
                            // serving absent means serving (API default, as kube-proxy reads it)
                            ep_cond("10.244.1.8", json!({"ready": false, "terminating": true})),
                        ]),
                    ),
                ],
                want: &["10.96.0.20:80/TCP ns/one  -> [10.244.1.5:8080 10.244.1.8:8080]"],
                warnings: &[],
            },
            Case {
                name: "service-proxy-name and headless labels skip the service",
                objects: vec![
                    with(
                        one(),
                        &["metadata", "labels"],
                        json!({LABEL_SERVICE_PROXY_NAME: "other"}),
                    ),
                    with(web(), &["metadata", "labels"], json!({LABEL_HEADLESS: ""})),
                    slice("one-a", "one", one_ports(), json!([ep("10.244.1.5")])),
                ],
                want: &[],
                warnings: &[],
            },
            Case {
                name: "slices with service-proxy-name or headless labels are ignored",
                objects: vec![
                    one(),
                    with(
                        slice("one-a", "one", one_ports(), json!([ep("10.244.1.5")])),
                        &["metadata", "labels", LABEL_SERVICE_PROXY_NAME],
                        json!("other"),
                    ),
                ],
                want: &["10.96.0.20:80/TCP ns/one  -> []"],
                warnings: &[],
            },
            Case {
                name: "headless (None), unset, ExternalName and IPv6-only services skipped",
                objects: vec![
                    svc("headless", "None", json!([{"port": 80}])),
                    svc("unset", "", json!([{"port": 80}])),
                    with(
                        svc("ext", "", json!([{"port": 80}])),
                        &["spec", "type"],
                        json!("ExternalName"),
                    ),
                    svc("v6", "fd00::10", json!([{"port": 80}])),
                ],
                want: &[],
                warnings: &[],
            },
            Case {
                name: "dual-stack: the IPv4 cluster IP of clusterIPs",
                objects: vec![with(
                    svc("dual", "fd00::10", json!([{"port": 80}])),
                    &["spec", "clusterIPs"],
                    json!(["fd00::10", "10.96.0.30"]),
                )],
                want: &["10.96.0.30:80/TCP ns/dual  -> []"],
                warnings: &[],
            },
            Case {
                name: "UDP and TCP ports of one service; protocol must match",
                objects: vec![
                    svc(
                        "dns",
                        "10.96.0.53",
                        json!([
                            {"name": "dns", "port": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                        ]),
                    ),
                    slice(
                        "dns-a",
                        "dns",
                        json!([
                            {"name": "dns", "port": 5353, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
                            {"name": "dns", "port": 9999, "protocol": "TCP"},
                        ]),
                        json!([ep("10.244.1.5")]),
                    ),
                ],
                want: &[
                    "10.96.0.53:53/TCP ns/dns dns-tcp -> [10.244.1.5:5353]",
                    "10.96.0.53:53/UDP ns/dns dns -> [10.244.1.5:5353]",
                ],
                warnings: &[],
            },
            Case {
                name: "service without slices has empty backends",
                objects: vec![web()],
                want: &[
                    "10.96.0.10:80/TCP ns/web http -> []",
                    "10.96.0.10:443/TCP ns/web https -> []",
                ],
                warnings: &[],
            },
            Case {
                name: "slice of another namespace ignored",
                objects: vec![
                    one(),
                    with(
                        slice("one-a", "one", one_ports(), json!([ep("10.244.1.5")])),
                        &["metadata", "namespace"],
                        json!("other"),
                    ),
                ],
                want: &["10.96.0.20:80/TCP ns/one  -> []"],
                warnings: &[],
            },
            Case {
                name: "IPv6 and FQDN slices ignored",
                objects: vec![
                    one(),
                    with(
                        slice("one-a", "one", one_ports(), json!([ep("fd00::5")])),
                        &["addressType"],
                        json!("IPv6"),
                    ),
                ],
                want: &["10.96.0.20:80/TCP ns/one  -> []"],
                warnings: &[],
            },
            Case {
                name: "bad pieces warn and are skipped, the rest works",
                objects: vec![
                    svc(
                        "web",
                        "10.96.0.10",
                        json!([{"name": "zero", "port": 0}, {"name": "http", "port": 80}]),
                    ),
                    slice(
                        "web-a",
                        "web",
                        json!([{"name": "http", "port": 8080}, {"name": "zero", "port": 0}]),
                        json!([ep("10.244.1.5"), ep("10.244.1.300"), {"addresses": []}]),
                    ),
                    svc("bad-ip", "10.96.0.999", json!([{"port": 80}])),
                ],
                want: &["10.96.0.10:80/TCP ns/web http -> [10.244.1.5:8080]"],
                warnings: &[
                    "Service ns/bad-ip: spec.clusterIP \"10.96.0.999\"",
                    "Service ns/web: spec.ports[0].port 0",
                    "EndpointSlice ns/web-a: ports[1].port 0",
                    "EndpointSlice ns/web-a: endpoints[1].addresses[0] \"10.244.1.300\"",
                    "EndpointSlice ns/web-a: endpoints[2] has no address",
                ],
            },
            Case {
                name: "two services on one frontend: the first keeps it",
                objects: vec![
                    svc("a", "10.96.0.10", json!([{"port": 80}])),
                    svc("b", "10.96.0.10", json!([{"port": 80}])),
                ],
                want: &["10.96.0.10:80/TCP ns/a  -> []"],
                warnings: &["Service ns/b: frontend 10.96.0.10:80/TCP"],
            },
            Case {
                name: "internalTrafficPolicy Local: only this node's endpoints",
                objects: vec![
                    with(one(), &["spec", "internalTrafficPolicy"], json!("Local")),
                    slice(
                        "one-a",
                        "one",
                        one_ports(),
                        json!([
                            ep("10.244.2.5"),
                            {"addresses": ["10.244.1.5"], "nodeName": NODE},
                        ]),
                    ),
                ],
                want: &["10.96.0.20:80/TCP ns/one  -> [10.244.1.5:8080]"],
                warnings: &[],
            },
            Case {
                name: "zone hints: this node's zone only",
                objects: vec![
                    json!({"apiVersion": "v1", "kind": "Node",
                           "metadata": {"name": NODE, "labels": {LABEL_TOPOLOGY_ZONE: "zone-a"}}}),
                    one(),
                    slice(
                        "one-a",
                        "one",
                        one_ports(),
                        json!([
                            {"addresses": ["10.244.1.5"], "hints": {"forZones": [{"name": "zone-a"}]}},
                            {"addresses": ["10.244.2.5"], "hints": {"forZones": [{"name": "zone-b"}]}},
                        ]),
                    ),
                ],
                want: &["10.96.0.20:80/TCP ns/one  -> [10.244.1.5:8080]"],
                warnings: &[],
            },
        ]
    }

    #[test]
    fn desired_state_table() {
        for case in cases() {
            let store = store(&case.objects);
            let (desired, warnings) = desired_state(&store, NODE);
            assert_eq!(render(&desired), case.want, "case: {}", case.name);
            let shown: Vec<String> = warnings.iter().map(ToString::to_string).collect();
            assert_eq!(shown.len(), case.warnings.len(), "case: {}: {shown:#?}", case.name);
            for want in case.warnings {
                assert!(
                    shown.iter().any(|w| w.contains(want)),
                    "case: {}: no warning like {want:?} in {shown:#?}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn protocol_numbers_and_names() {
        assert_eq!(Protocol::Tcp.number(), 6);
        assert_eq!(Protocol::Udp.number(), 17);
        assert_eq!(Protocol::Sctp.number(), 132);
        assert_eq!(Protocol::Sctp.to_string(), "SCTP");
        assert_eq!(Protocol::from_k8s(None), Ok(Protocol::Tcp));
        assert_eq!(Protocol::from_k8s(Some("UDP")), Ok(Protocol::Udp));
        assert!(Protocol::from_k8s(Some("udp")).is_err());
    }

    // -----------------------------------------------------------------------
    // CategorizeEndpoints, ported from kube-proxy's pkg/proxy/topology_test.go.
    // Differences from the Go table: hints are always honoured (the
    // `service.kubernetes.io/topology-mode` annotation and the feature gates
    // are gone from current kube-proxy), terminating endpoints are always
    // proxied (ProxyTerminatingEndpoints is GA), and an empty endpoint list
    // gives empty (not absent) lists for the policies in use.

    #[derive(Default)]
    struct Svc {
        internal_local: bool,
        external_local: bool,
        node_port: u16,
    }

    fn port_info(s: &Svc) -> ServicePortInfo {
        ServicePortInfo {
            service: ObjectKey::new("ns", "svc"),
            port_name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            cluster_ip: Ipv4Addr::new(10, 96, 0, 1),
            node_port: s.node_port,
            internal_policy_local: s.internal_local,
            external_policy_local: s.external_local && s.node_port != 0,
            externally_accessible: s.node_port != 0,
            affinity_timeout: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: Vec::new(),
        }
    }

    /// `"10.1.2.3:80 R S T L zones=a,b nodes=n"`: R ready, S serving,
    /// T terminating, L local.
    fn endpoint(spec: &str) -> EndpointInfo {
        let mut words = spec.split_whitespace();
        let addr: std::net::SocketAddrV4 = words.next().expect("addr").parse().expect("addr");
        let mut ep = EndpointInfo {
            addr: *addr.ip(),
            port: addr.port(),
            ready: false,
            serving: false,
            terminating: false,
            is_local: false,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        };
        for word in words {
            match word {
                "R" => ep.ready = true,
                "S" => ep.serving = true,
                "T" => ep.terminating = true,
                "L" => ep.is_local = true,
                _ => {
                    let (what, list) = word.split_once('=').expect("flag");
                    let set = list.split(',').map(str::to_owned).collect();
                    match what {
                        "zones" => ep.zone_hints = set,
                        "nodes" => ep.node_hints = set,
                        _ => panic!("{word}"),
                    }
                }
            }
        }
        ep
    }

    struct TopoCase {
        name: &'static str,
        zone: &'static str,
        svc: Svc,
        endpoints: &'static [&'static str],
        /// None: policy not used.
        cluster: Option<&'static [&'static str]>,
        local: Option<&'static [&'static str]>,
        /// None: same as whichever of cluster/local is used alone.
        all: Option<&'static [&'static str]>,
        only_remote: bool,
    }

    const ZONED: &[&str] = &[
        "10.1.2.3:80 R zones=zone-a",
        "10.1.2.4:80 R zones=zone-b",
        "10.1.2.5:80 R zones=zone-c",
        "10.1.2.6:80 R zones=zone-a",
    ];

    #[expect(clippy::too_many_lines, reason = "one table")]
    fn topology_cases() -> Vec<TopoCase> {
        let case = |name, zone, svc, endpoints, cluster, local| TopoCase {
            name,
            zone,
            svc,
            endpoints,
            cluster,
            local,
            all: None,
            only_remote: false,
        };
        let local_ext = || Svc { external_local: true, node_port: 8080, ..Svc::default() };
        let itp_local = || Svc { internal_local: true, ..Svc::default() };
        vec![
            case(
                "hints: this zone's endpoints",
                "zone-a",
                Svc::default(),
                ZONED,
                Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                None,
            ),
            TopoCase {
                all: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
                ..case(
                    "externalTrafficPolicy: Local, topology ignored for Local endpoints",
                    "zone-a",
                    local_ext(),
                    &[
                        "10.1.2.3:80 R L zones=zone-a",
                        "10.1.2.4:80 R L zones=zone-b",
                        "10.1.2.5:80 R zones=zone-c",
                        "10.1.2.6:80 R zones=zone-a",
                    ],
                    Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                    Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                )
            },
            TopoCase {
                all: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
                ..case(
                    "internalTrafficPolicy: Local, topology ignored for Local endpoints",
                    "zone-a",
                    Svc { internal_local: true, node_port: 8080, ..Svc::default() },
                    &[
                        "10.1.2.3:80 R L zones=zone-a",
                        "10.1.2.4:80 R L zones=zone-b",
                        "10.1.2.5:80 R zones=zone-c",
                        "10.1.2.6:80 R zones=zone-a",
                    ],
                    Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                    Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                )
            },
            case(
                "empty node labels",
                "",
                Svc::default(),
                &["10.1.2.3:80 R zones=zone-a"],
                Some(&["10.1.2.3:80"]),
                None,
            ),
            case(
                "node in different zone, no endpoint filtering",
                "zone-b",
                Svc::default(),
                &["10.1.2.3:80 R zones=zone-a"],
                Some(&["10.1.2.3:80"]),
                None,
            ),
            case(
                "unready endpoint",
                "zone-a",
                Svc::default(),
                &[
                    "10.1.2.3:80 R zones=zone-a",
                    "10.1.2.4:80 R zones=zone-b",
                    "10.1.2.5:80 R zones=zone-c",
                    "10.1.2.6:80 zones=zone-a",
                ],
                Some(&["10.1.2.3:80"]),
                None,
            ),
            case(
                "only unready endpoints in same zone (should not filter)",
                "zone-a",
                Svc::default(),
                &[
                    "10.1.2.3:80 zones=zone-a",
                    "10.1.2.4:80 R zones=zone-b",
                    "10.1.2.5:80 R zones=zone-c",
                    "10.1.2.6:80 zones=zone-a",
                ],
                Some(&["10.1.2.4:80", "10.1.2.5:80"]),
                None,
            ),
            case(
                "missing hints, no filtering applied",
                "zone-a",
                Svc::default(),
                &[
                    "10.1.2.3:80 R zones=zone-a",
                    "10.1.2.4:80 R zones=zone-b",
                    "10.1.2.5:80 R",
                    "10.1.2.6:80 R zones=zone-a",
                ],
                Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
                None,
            ),
            case(
                "multiple hints per endpoint, filtering includes any endpoint with zone included",
                "zone-c",
                Svc::default(),
                &[
                    "10.1.2.3:80 R zones=zone-a,zone-b,zone-c",
                    "10.1.2.4:80 R zones=zone-b,zone-c",
                    "10.1.2.5:80 R zones=zone-b,zone-d",
                    "10.1.2.6:80 R zones=zone-c",
                ],
                Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
                None,
            ),
            case(
                "node hints: this node's endpoints",
                "zone-a",
                Svc::default(),
                &[
                    "10.1.2.3:80 R zones=zone-a nodes=node-1",
                    "10.1.2.4:80 R zones=zone-a nodes=node-2",
                    "10.1.2.5:80 R zones=zone-b nodes=node-3",
                ],
                Some(&["10.1.2.3:80"]),
                None,
            ),
            case(
                "node hints for other nodes only: zone hints apply",
                "zone-a",
                Svc::default(),
                &[
                    "10.1.2.3:80 R zones=zone-a nodes=node-2",
                    "10.1.2.4:80 R zones=zone-a nodes=node-2",
                    "10.1.2.5:80 R zones=zone-b nodes=node-3",
                ],
                Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                None,
            ),
            case(
                "node hints missing on one endpoint: zone hints apply",
                "zone-a",
                Svc::default(),
                &[
                    "10.1.2.3:80 R zones=zone-a nodes=node-1",
                    "10.1.2.4:80 R zones=zone-a",
                    "10.1.2.5:80 R zones=zone-b nodes=node-3",
                ],
                Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                None,
            ),
            TopoCase {
                all: Some(&["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"]),
                ..case(
                    "conflicting topology and localness require merging allEndpoints",
                    "zone-a",
                    local_ext(),
                    &[
                        "10.0.0.0:80 R L zones=zone-a",
                        "10.0.0.1:80 R L zones=zone-b",
                        "10.0.0.2:80 R zones=zone-a",
                        "10.0.0.3:80 R zones=zone-b",
                    ],
                    Some(&["10.0.0.0:80", "10.0.0.2:80"]),
                    Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                )
            },
            case(
                "internalTrafficPolicy: Local, with empty endpoints",
                "",
                itp_local(),
                &[],
                None,
                Some(&[]),
            ),
            TopoCase {
                only_remote: true,
                ..case(
                    "internalTrafficPolicy: Local, but all endpoints are remote",
                    "",
                    itp_local(),
                    &["10.0.0.0:80 R", "10.0.0.1:80 R"],
                    None,
                    Some(&[]),
                )
            },
            case(
                "internalTrafficPolicy: Local, all endpoints are local",
                "",
                itp_local(),
                &["10.0.0.0:80 R L", "10.0.0.1:80 R L"],
                None,
                Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            ),
            case(
                "internalTrafficPolicy: Local, some endpoints are local",
                "",
                itp_local(),
                &["10.0.0.0:80 R L", "10.0.0.1:80 R"],
                None,
                Some(&["10.0.0.0:80"]),
            ),
            case(
                "Cluster traffic policy, endpoints not Ready",
                "",
                Svc::default(),
                &["10.0.0.0:80", "10.0.0.1:80"],
                Some(&[]),
                None,
            ),
            case(
                "Cluster traffic policy, some endpoints are Ready",
                "",
                Svc::default(),
                &["10.0.0.0:80", "10.0.0.1:80 R"],
                Some(&["10.0.0.1:80"]),
                None,
            ),
            case(
                "Cluster traffic policy, all endpoints are terminating",
                "",
                Svc::default(),
                &["10.0.0.0:80 S T L", "10.0.0.1:80 S T"],
                Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                None,
            ),
            TopoCase {
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                ..case(
                    "iTP: Local, eTP: Cluster, some endpoints local",
                    "",
                    Svc { internal_local: true, node_port: 8080, ..Svc::default() },
                    &["10.0.0.0:80 R L", "10.0.0.1:80 R"],
                    Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                    Some(&["10.0.0.0:80"]),
                )
            },
            TopoCase {
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                ..case(
                    "iTP: Cluster, eTP: Local, some endpoints local",
                    "",
                    local_ext(),
                    &["10.0.0.0:80 R L", "10.0.0.1:80 R"],
                    Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                    Some(&["10.0.0.0:80"]),
                )
            },
            // kube-proxy's table lists cluster endpoints here too, from a
            // version whose UsesClusterEndpoints differed; with both policies
            // Local the Cluster endpoints are unused.
            TopoCase {
                only_remote: true,
                ..case(
                    "iTP: Local, eTP: Local, some endpoints local",
                    "",
                    Svc { internal_local: true, external_local: true, node_port: 8080 },
                    &["10.0.0.0:80 R L", "10.0.0.1:80 R"],
                    None,
                    Some(&["10.0.0.0:80"]),
                )
            },
            TopoCase {
                only_remote: true,
                ..case(
                    "iTP: Local, eTP: Local, all endpoints remote",
                    "",
                    Svc { internal_local: true, external_local: true, node_port: 8080 },
                    &["10.0.0.0:80 R", "10.0.0.1:80 R"],
                    None,
                    Some(&[]),
                )
            },
            TopoCase {
                only_remote: true,
                ..case(
                    "iTP: Local, eTP: Local, all endpoints remote and terminating",
                    "",
                    Svc { internal_local: true, external_local: true, node_port: 8080 },
                    &["10.0.0.0:80 S T", "10.0.0.1:80 S T"],
                    None,
                    Some(&[]),
                )
            },
            TopoCase {
                all: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
                ..case(
                    "iTP: Cluster, eTP: Local, with terminating endpoints",
                    "",
                    local_ext(),
                    &["10.0.0.0:80 R", "10.0.0.1:80 L", "10.0.0.2:80 S T L", "10.0.0.3:80 S T"],
                    Some(&["10.0.0.0:80"]),
                    Some(&["10.0.0.2:80"]),
                )
            },
            TopoCase {
                all: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                ..case(
                    "externalTrafficPolicy ignored if not externally accessible",
                    "",
                    Svc { external_local: true, ..Svc::default() },
                    &["10.0.0.0:80 R", "10.0.0.1:80 R L"],
                    Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                    None,
                )
            },
            case(
                "no cluster endpoints for iTP:Local internal-only service",
                "",
                itp_local(),
                &["10.0.0.0:80 R", "10.0.0.1:80 R L"],
                None,
                Some(&["10.0.0.1:80"]),
            ),
        ]
    }

    fn names(endpoints: &[&EndpointInfo]) -> Vec<String> {
        let mut names: Vec<String> =
            endpoints.iter().map(|ep| format!("{}:{}", ep.addr, ep.port)).collect();
        names.sort();
        names
    }

    fn sorted(list: &[&str]) -> Vec<String> {
        let mut list: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        list.sort();
        list
    }

    #[test]
    fn categorize_endpoints_table() {
        for case in topology_cases() {
            let endpoints: Vec<EndpointInfo> = case.endpoints.iter().map(|s| endpoint(s)).collect();
            let port = port_info(&case.svc);
            let got = categorize_endpoints(&endpoints, &port, NODE, case.zone);
            let name = case.name;
            assert_eq!(
                got.cluster.as_deref().map(names),
                case.cluster.map(sorted),
                "{name}: cluster"
            );
            assert_eq!(got.local.as_deref().map(names), case.local.map(sorted), "{name}: local");
            let want_all = match (case.all, case.cluster, case.local) {
                (Some(all), _, _) => sorted(all),
                (None, Some(only), None) | (None, None, Some(only)) => sorted(only),
                (None, _, _) => panic!("{name}: say what all is"),
            };
            assert_eq!(names(&got.all_reachable), want_all, "{name}: all");
            let want_any = !want_all.is_empty() || case.only_remote;
            assert_eq!(got.has_any, want_any, "{name}: has_any");
        }
    }
}

#[cfg(test)]
mod affinity_tests {
    use k8s_openapi::api::core::v1::{
        ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig,
    };

    use super::*;

    fn svc(affinity: Option<&str>, timeout: Option<i32>) -> Service {
        Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.5".into()),
                ports: Some(vec![ServicePort { port: 80, ..Default::default() }]),
                session_affinity: affinity.map(str::to_owned),
                session_affinity_config: timeout.map(|t| SessionAffinityConfig {
                    client_ip: Some(ClientIPConfig { timeout_seconds: Some(t) }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn client_ip_affinity_and_its_timeout() {
        let key = ObjectKey::new("ns", "s");
        let cases = [
            (None, None, None, 0),
            (Some("None"), Some(60), None, 0),
            (Some("ClientIP"), None, Some(DEFAULT_AFFINITY_TIMEOUT), 0),
            (Some("ClientIP"), Some(60), Some(60), 0),
            (Some("ClientIP"), Some(0), Some(DEFAULT_AFFINITY_TIMEOUT), 1),
            (Some("ClientIP"), Some(86_401), Some(DEFAULT_AFFINITY_TIMEOUT), 1),
        ];
        for (affinity, timeout, want, warnings_expected) in cases {
            let mut warnings = Vec::new();
            let ports = service_ports(&key, &svc(affinity, timeout), &mut warnings);
            assert_eq!(ports.len(), 1);
            assert_eq!(ports[0].affinity_timeout, want, "{affinity:?} {timeout:?}");
            assert_eq!(warnings.len(), warnings_expected, "{warnings:?}");
        }
    }
}
