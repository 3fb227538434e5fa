//! The node agent: source (a manifest directory or the Kubernetes API) ->
//! model -> reconciler -> pinned maps, and the pod program attached to every
//! pod interface of the node.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{MissedTickBehavior, interval, sleep},
};
use tracing::{debug, error, info, warn};

use crate::{
    cli::{AgentArgs, device_matches},
    cniconf,
    datapath::{
        MapSizes, PinPaths,
        loader::{self, Datapath},
        maps::PinnedMaps,
        node::{self, NodeMaps},
        reconcile::Reconciler,
        sockterm::SocketTerminator,
    },
    k8s, manifest,
    model::{
        Inputs,
        cache::{Changes, Dirty, ModelCache},
    },
    observe::{self, HcServers, HealthState, Metrics, MetricsConfig, SyncReport},
    routing, tunnel,
};

/// How often pod interfaces are rescanned (and failed syncs retried).
const DEVICE_SCAN: Duration = Duration::from_secs(1);
/// A check of every manifest file's content, as a backstop for missed file
/// events and for timestamps that did not show a change.
const RESYNC: Duration = Duration::from_secs(30);
/// Bursts of changes (file events, watch events) are coalesced for this long.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Where Services, EndpointSlices and Nodes come from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// `--manifests DIR`.
    Manifests(PathBuf),
    /// `--kubeconfig PATH` or the in-cluster service account.
    Api(k8s::ApiConfig),
}

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: SourceConfig,
    pub node_name: String,
    pub paths: PinPaths,
    pub pod_devices: Vec<String>,
    /// `--devices`; empty: the interface of the default route.
    pub devices: Vec<String>,
    /// `--nodeport-addresses`; empty: every address of the devices.
    pub nodeport_ranges: Vec<ipnetwork::Ipv4Network>,
    pub map_sizes: MapSizes,
    /// Where socket-level LB attaches; `None` when it is off.
    pub socket_lb_cgroup: Option<PathBuf>,
    pub health_bind: SocketAddr,
    pub metrics_bind: SocketAddr,
    pub cni_conf_dir: PathBuf,
    /// Pod routing between nodes and egress masquerade.
    pub network: routing::NetConfig,
    /// `--fast-path`: the eBPF fast paths for pod traffic.
    pub fast_path: bool,
}

impl Config {
    /// Checks the flags; a one-line reason when they cannot work.
    ///
    /// The source is `--manifests DIR` when given (it wins over a
    /// `KUBECONFIG` in the environment), else `--kubeconfig PATH`
    /// (`KUBECONFIG`), else the in-cluster configuration.
    pub fn from_args(args: &AgentArgs) -> anyhow::Result<Self> {
        let source = if let Some(manifests) = &args.manifests {
            if !manifests.is_dir() {
                bail!("--manifests {}: not a directory", manifests.display());
            }
            SourceConfig::Manifests(manifests.clone())
        } else if let Some(path) = args.kubeconfig.as_ref().filter(|p| !p.as_os_str().is_empty()) {
            SourceConfig::Api(k8s::ApiConfig::from_kubeconfig(path)?)
        } else {
            SourceConfig::Api(k8s::ApiConfig::in_cluster().map_err(|e| {
                anyhow::anyhow!(
                    "no source of Services: give --manifests DIR or --kubeconfig PATH, or run in a cluster ({e})"
                )
            })?)
        };
        let node_name = match &args.node_name {
            Some(n) if !n.is_empty() => n.clone(),
            _ => nix::unistd::gethostname()
                .context("--node-name not given and the hostname cannot be read")?
                .to_string_lossy()
                .into_owned(),
        };
        if args.pod_devices.iter().any(|p| p.is_empty() || p == "+") {
            bail!("--pod-devices: empty pattern or bare `+` would match every interface");
        }
        if args.devices.iter().any(String::is_empty) {
            bail!("--devices: empty interface name");
        }
        let nodeport_ranges =
            node::parse_ranges(&args.nodeport_addresses).map_err(anyhow::Error::msg)?;
        let socket_lb_cgroup = if args.socket_lb {
            let root = match &args.cgroup_root {
                Some(r) => r.clone(),
                None => loader::cgroup2_root().context(
                    "no cgroup v2 mount found for socket-level LB: give --cgroup-root or --socket-lb=false",
                )?,
            };
            if !root.join("cgroup.procs").exists() {
                bail!("--cgroup-root {}: not a cgroup v2 directory", root.display());
            }
            Some(root)
        } else {
            None
        };
        let health_bind: SocketAddr = args.health_bind.parse().with_context(|| {
            format!("--health-bind {:?}: not an address:port", args.health_bind)
        })?;
        let metrics_bind: SocketAddr = args.metrics_bind.parse().with_context(|| {
            format!("--metrics-bind {:?}: not an address:port", args.metrics_bind)
        })?;
        Ok(Self {
            network: routing::NetConfig::from_args(args)?,
            fast_path: args.fast_path,
            cni_conf_dir: args.cni_conf_dir.clone(),
            health_bind,
            metrics_bind,
            socket_lb_cgroup,
            source,
            node_name,
            paths: PinPaths::new(&args.bpffs_root),
            pod_devices: args.pod_devices.clone(),
            devices: args.devices.clone(),
            nodeport_ranges,
            map_sizes: MapSizes {
                services: args.map_size_services,
                backends: args.map_size_backends,
                frontends: args.map_size_frontends,
                conntrack: args.map_size_conntrack,
                affinity: args.map_size_affinity,
                source_ranges: args.map_size_source_ranges,
            },
        })
    }
}

/// A running source: the manifest directory (its changed files re-read on
/// every sync) or the API watchers (whose store is always current).
enum Source {
    Manifests {
        dir: Box<manifest::DirInputs>,
        /// The next sync checks every file's content, not only the files
        /// whose metadata changed (the periodic backstop).
        verify: bool,
        _watcher: notify::RecommendedWatcher,
    },
    Api(k8s::KubeSource),
}

impl Source {
    /// Starts following the source; `changed` gets `()` on every change.
    async fn start(
        cfg: &SourceConfig,
        node_name: &str,
        changed: &mpsc::Sender<()>,
    ) -> anyhow::Result<Self> {
        Ok(match cfg {
            SourceConfig::Manifests(dir) => {
                let watcher = manifest::watch_dir(dir, changed.clone())
                    .with_context(|| format!("watching {}", dir.display()))?;
                let dir = Box::new(manifest::DirInputs::new(dir, node_name));
                Self::Manifests { dir, verify: false, _watcher: watcher }
            }
            SourceConfig::Api(api) => {
                let client = api.client().await?;
                Self::Api(k8s::KubeSource::start(&client, node_name, changed))
            }
        })
    }

    /// The next snapshot checks the whole source (the periodic backstop for
    /// missed events; the API's watchers need none).
    fn verify(&mut self) {
        if let Self::Manifests { verify, .. } = self {
            *verify = true;
        }
    }

    /// Brings `model` up to date for `node` and says what changed, or why
    /// there is nothing to program now.
    fn snapshot(&mut self, node: &str, model: &mut ModelCache) -> Result<Snapshot, NotNow> {
        match self {
            Self::Manifests { dir, verify, .. } => {
                let refresh = dir.refresh(*verify).map_err(|e| NotNow::Failed(e.to_string()))?;
                *verify = false;
                debug!(
                    read = refresh.read,
                    parsed = refresh.parsed.len(),
                    removed = refresh.removed.len(),
                    "manifest directory refreshed"
                );
                let errors = dir.errors();
                let dirty = dir.take_dirty();
                let bad = errors.iter().map(ToString::to_string);
                Ok(snapshot(dir.inputs(), node, dirty, model, bad, errors.len()))
            }
            Self::Api(source) => source.with_store(|ks| {
                if !ks.is_ready() {
                    return Err(NotNow::Waiting(ks.pending().join(", ")));
                }
                let complaints = ks.complaints();
                let n = complaints.len();
                let dirty = ks.take_dirty();
                Ok(snapshot(ks.inputs(), node, dirty, model, complaints.into_iter(), n))
            }),
        }
    }
}

fn objects(inputs: &Inputs) -> usize {
    inputs.service_count() + inputs.slice_count() + inputs.nodes.len()
}

/// What a source says this node must program (besides the model's
/// desired state, kept in the agent's [`ModelCache`]).
struct Snapshot {
    /// Which frontends may have changed since the last snapshot.
    changes: Changes,
    /// One line per object (or piece of one) left out.
    complaints: BTreeSet<String>,
    /// Services, EndpointSlices and Nodes read.
    objects: usize,
    /// Manifest documents (or API objects) that could not be used.
    bad_objects: usize,
    /// Pieces the model skipped.
    model_warnings: usize,
    /// healthCheckNodePort services and local-endpoint counts.
    local: observe::LocalPolicy,
    /// EndpointSlice trigger times (network programming latency).
    triggers: observe::TriggerTimes,
    /// Whether this node may receive traffic, when its Node object is known.
    node_eligible: Option<bool>,
    /// This node's IPv4 pod CIDRs, when its Node object is known.
    pod_cidrs: Option<Vec<String>>,
    /// This node's InternalIP (IPv4), when its Node object has one.
    internal_ip: Option<Ipv4Addr>,
    /// Routes to other nodes' pods and the cluster's address space.
    network: routing::NodeNetwork,
}

/// Everything a snapshot takes from a store, while the store is at hand.
fn snapshot(
    inputs: &Inputs,
    node: &str,
    dirty: Dirty,
    model: &mut ModelCache,
    bad: impl Iterator<Item = String>,
    bad_objects: usize,
) -> Snapshot {
    let changed_slices = match &dirty {
        Dirty::Keys { slices, .. } => Some(slices.clone()),
        Dirty::All => None,
    };
    let changes = model.update(inputs, dirty);
    let triggers = match (&changes, changed_slices) {
        (Changes::Keys(_), Some(slices)) => observe::trigger_times_of(inputs, &slices),
        _ => observe::trigger_times(inputs),
    };
    let warnings = model.warnings(inputs);
    Snapshot {
        complaints: bad
            .chain(warnings.iter().map(|w| format!("{}: {}", w.object, w.message)))
            .collect(),
        model_warnings: warnings.len(),
        changes,
        objects: objects(inputs),
        bad_objects,
        local: observe::hcnode::local_policy_of(inputs, model.local_services()),
        triggers,
        node_eligible: inputs.nodes.get(node).map(observe::health::node_eligible),
        pod_cidrs: inputs.nodes.get(node).map(cniconf::pod_cidrs),
        internal_ip: inputs.nodes.get(node).and_then(routing::internal_ip),
        network: routing::node_network(node, &inputs.nodes),
    }
}

/// Why a source has no desired state now; the programmed state is kept.
enum NotNow {
    /// The API watchers have not listed these kinds yet.
    Waiting(String),
    /// The source cannot be read.
    Failed(String),
}

struct Agent {
    cfg: Config,
    source: Source,
    health: HealthState,
    metrics: Metrics,
    hc_servers: HcServers,
    datapath: Datapath,
    reconciler: Reconciler<PinnedMaps>,
    /// The model's output, updated by change.
    model: ModelCache,
    /// Destroys UDP sockets connected to removed backends (socket LB on).
    sockterm: Option<SocketTerminator>,
    node_maps: NodeMaps,
    /// This node's InternalIP from its Node object (the preferred SNAT address).
    internal_ip: Option<Ipv4Addr>,
    network: routing::Network,
    /// The last messages about bad input, so each is logged once, not every sync.
    last_complaints: BTreeSet<String>,
    needs_retry: bool,
    /// When the last sync started.
    last_sync: Instant,
}

/// Runs the agent until SIGTERM or SIGINT. Pinned state is left in place.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    loader::check_kernel().map_err(anyhow::Error::msg)?;
    // Probes and metrics answer from the start (not ready until synced).
    let health = HealthState::new(2 * RESYNC);
    let metrics = Metrics::new(MetricsConfig {
        pins: Some(cfg.paths.clone()),
        health: Some(health.clone()),
        ..MetricsConfig::default()
    });
    let _health_server = observe::serve_health(cfg.health_bind, health.clone())?;
    let _metrics_server = observe::serve_metrics(cfg.metrics_bind, metrics.clone())?;
    let hc_servers = HcServers::new(vec![Ipv4Addr::UNSPECIFIED.into()], health.clone());
    loader::ensure_bpffs(&cfg.paths.root)?;
    let mut datapath = Datapath::load(&cfg.paths, &cfg.map_sizes)?;
    match &cfg.socket_lb_cgroup {
        Some(cgroup) => datapath.attach_socket_lb(cgroup)?,
        None => datapath.detach_socket_lb()?,
    }
    let maps = PinnedMaps::open(&cfg.paths)?;
    let node_maps = NodeMaps::open(&cfg.paths)?.with_flags(node::fast_path_flags(cfg.fast_path));
    // Socket LB pins connected UDP sockets to a backend; when one is
    // removed they are destroyed so the application reconnects.
    let sockterm = match &cfg.socket_lb_cgroup {
        Some(cgroup) => Some(SocketTerminator::spawn(&cfg.paths, cgroup.clone(), metrics.clone())?),
        None => None,
    };
    let (reconciler, restored) = Reconciler::restore(maps)?;
    info!(
        frontends = restored.frontends,
        backends = restored.backends,
        pruned = restored.pruned,
        "adopted pinned state"
    );
    let (tx, mut rx) = mpsc::channel(64);
    let source = Source::start(&cfg.source, &cfg.node_name, &tx).await?;
    let mut agent = Agent {
        network: routing::Network::new(cfg.network.clone()),
        cfg,
        source,
        health,
        metrics,
        hc_servers,
        datapath,
        reconciler,
        model: ModelCache::new(),
        sockterm,
        node_maps,
        internal_ip: None,
        last_complaints: BTreeSet::new(),
        needs_retry: false,
        last_sync: Instant::now(),
    };
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut devices = interval(DEVICE_SCAN);
    devices.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut resync = interval(RESYNC);
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);

    agent.scan_devices();
    agent.sync();
    let source = match &agent.cfg.source {
        SourceConfig::Manifests(dir) => format!("manifests {}", dir.display()),
        SourceConfig::Api(api) => format!("API server ({})", api.describe()),
    };
    info!(node = %agent.cfg.node_name, %source, "agent running");
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping, pinned state left in place"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping, pinned state left in place"); break; }
            Some(()) = rx.recv() => {
                agent.queued();
                // Leading edge: an isolated change is applied at once; a
                // burst is coalesced into at most one sync per DEBOUNCE.
                let since = agent.last_sync.elapsed();
                if since < DEBOUNCE {
                    sleep(DEBOUNCE - since).await;
                }
                while rx.try_recv().is_ok() {}
                agent.sync();
            }
            _ = resync.tick() => {
                agent.queued();
                agent.source.verify();
                agent.sync();
            }
            _ = devices.tick() => {
                agent.scan_devices();
                if agent.needs_retry {
                    agent.sync();
                }
            }
        }
    }
    Ok(())
}

impl Agent {
    /// An update is waiting to be applied (health and metrics notice a
    /// stalled loop from here).
    fn queued(&self) {
        self.health.queued();
        self.metrics.queued();
    }

    /// Takes the source's current state and makes the maps match.
    fn sync(&mut self) {
        let start = Instant::now();
        self.last_sync = start;
        let Snapshot {
            changes,
            complaints,
            objects,
            bad_objects,
            model_warnings,
            local,
            triggers,
            node_eligible,
            pod_cidrs,
            internal_ip,
            network,
        } = match self.source.snapshot(&self.cfg.node_name, &mut self.model) {
            Ok(s) => s,
            Err(NotNow::Waiting(kinds)) => {
                // Nothing is programmed (or withdrawn) from a partial view.
                debug!(%kinds, "waiting for the initial lists");
                return;
            }
            Err(NotNow::Failed(e)) => {
                // Keep what is programmed: a missing directory must not
                // withdraw every service.
                error!(error = %e, "cannot read the source; keeping the programmed state");
                self.metrics.sync_failed(start.elapsed());
                self.needs_retry = true;
                return;
            }
        };
        for c in complaints.difference(&self.last_complaints) {
            warn!("skipped: {c}");
        }
        self.last_complaints = complaints;

        let desired = self.model.desired();
        let mut outcome = self.reconciler.sync_changes(desired, &changes);
        for (fk, e) in &outcome.errors {
            error!(frontend = %format!("{}:{}/{}", fk.addr, fk.port, fk.proto), error = %e, "frontend not fully programmed; will retry");
        }
        self.needs_retry = !outcome.errors.is_empty();
        if let Some(e) = &outcome.ct_flush_error {
            warn!(error = %e, "cannot flush conntrack of removed UDP backends; they age out instead");
        }
        if outcome.ct_flushed > 0 {
            info!(entries = outcome.ct_flushed, "flushed conntrack of removed UDP backends");
        }
        if let Some(sockterm) = &self.sockterm {
            sockterm.submit(std::mem::take(&mut outcome.removed_udp));
        }
        for failure in self.hc_servers.sync_services(&local.hc_services) {
            warn!(service = %failure.service, error = %failure.error, "healthCheckNodePort server; will retry");
            self.needs_retry = true;
        }
        self.metrics.record_sync(&SyncReport {
            duration: start.elapsed(),
            desired,
            changed: match &changes {
                Changes::All => None,
                Changes::Keys(keys) => Some(keys),
            },
            services: self.model.services(),
            backends: self.model.backends(),
            failed_frontends: outcome.errors.len(),
            manifest_errors: bad_objects,
            model_warnings,
            triggers: &triggers,
            local: &local,
        });
        if let Some(eligible) = node_eligible {
            self.health.set_node_eligible(eligible);
        }
        let tunnel_before = (self.network.tunnel_ifindex(), self.network.tunnel_vtep());
        if !self.network.sync(&network) {
            self.needs_retry = true;
        }
        self.write_cni_conf(pod_cidrs.as_deref());
        let tunnel_after = (self.network.tunnel_ifindex(), self.network.tunnel_vtep());
        if internal_ip != self.internal_ip || tunnel_after != tunnel_before {
            self.internal_ip = internal_ip;
            self.scan_devices();
        }
        let cluster = self.cfg.network.cluster_cidr.as_deref().unwrap_or(&network.pod_cidrs);
        match self.node_maps.sync_pod_cidrs(cluster) {
            Ok(true) => info!(?cluster, fast_path = self.cfg.fast_path, "pod address space"),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "cannot write the pod address space; will retry");
                self.needs_retry = true;
            }
        }
        if outcome.errors.is_empty() {
            self.health.synced();
            // Every source has been listed and applied once.
            self.health.set_ready();
        }
        let log =
            if outcome.changed + outcome.removed > 0 { true } else { !outcome.errors.is_empty() };
        if log {
            info!(
                objects,
                frontends = self.model.desired().len(),
                changed = outcome.changed,
                removed = outcome.removed,
                failed = outcome.errors.len(),
                took_ms = start.elapsed().as_secs_f64() * 1000.0,
                "synced"
            );
        } else {
            debug!(frontends = self.model.desired().len(), "in sync");
        }
    }

    /// Writes this node's CNI conflist when its pod CIDRs are known (and
    /// changed); a node without pod CIDRs keeps whatever is there. With a
    /// tunnel the conflist waits for the overlay device (it carries the
    /// pods' MTU).
    fn write_cni_conf(&mut self, pod_cidrs: Option<&[String]>) {
        let Some(cidrs) = pod_cidrs.filter(|c| !c.is_empty()) else {
            return;
        };
        let mtu = self.network.pod_mtu();
        if mtu.is_none() && self.network.tunnel_configured() {
            return;
        }
        let text = cniconf::conflist(cidrs, &self.cfg.paths.root, mtu).to_string();
        match cniconf::write(&self.cfg.cni_conf_dir, &text) {
            Ok(true) => {
                info!(dir = %self.cfg.cni_conf_dir.display(), ?cidrs, ?mtu, "CNI conflist written");
            }
            Ok(false) => {}
            Err(e) => {
                warn!(dir = %self.cfg.cni_conf_dir.display(), error = %e, "cannot write the CNI conflist; will retry");
                self.needs_retry = true;
            }
        }
    }

    /// Attaches the pod program to new pod interfaces and forgets gone ones.
    fn scan_devices(&mut self) {
        let ifaces = match nix::net::if_::if_nameindex() {
            Ok(i) => i,
            Err(e) => {
                error!(error = %e, "cannot list interfaces");
                return;
            }
        };
        let mut present = BTreeSet::new();
        for iface in &ifaces {
            let name = iface.name().to_string_lossy();
            if !device_matches(&self.cfg.pod_devices, &name) || name == tunnel::DEVICE {
                continue;
            }
            let index = iface.index();
            present.insert(index);
            if self.datapath.attached().contains(&index) {
                continue;
            }
            if let Err(e) = self.datapath.attach_pod_device(&name, index) {
                warn!(ifname = %name, error = %e, "cannot attach the pod program; will retry");
                present.remove(&index);
            }
        }
        if let Err(e) = self.datapath.prune_links(&present) {
            warn!(error = %e, "cannot prune link pins");
        }
        self.scan_external(&ifaces);
    }

    /// Attaches the external program to the devices (`--devices`, else the
    /// default route's interface) and makes the data path's node addresses
    /// match theirs.
    fn scan_external(&mut self, ifaces: &nix::net::if_::Interfaces) {
        let default_device;
        let patterns = if self.cfg.devices.is_empty() {
            default_device = node::default_route_device().into_iter().collect::<Vec<_>>();
            &default_device
        } else {
            &self.cfg.devices
        };
        let mut present = BTreeSet::new();
        let mut names = BTreeSet::new();
        let tunnel = self.network.tunnel_configured();
        for iface in ifaces {
            let name = iface.name().to_string_lossy();
            let index = iface.index();
            // The overlay device gets the external program too: replies of
            // flows translated here whose backend is on another node come
            // back through it. Its address serves no NodePort. (A device an
            // earlier run left keeps its program while this agent starts.)
            let is_tunnel = tunnel && name == tunnel::DEVICE;
            if is_tunnel {
                present.insert(index);
                if !self.datapath.ext_attached().contains(&index)
                    && let Err(e) = self.datapath.attach_ext_device(&name, index)
                {
                    warn!(ifname = %name, error = %e, "cannot attach the external program; will retry");
                    present.remove(&index);
                }
                continue;
            }
            if !device_matches(patterns, &name) || device_matches(&self.cfg.pod_devices, &name) {
                continue;
            }
            names.insert(name.to_string());
            present.insert(index);
            if self.datapath.ext_attached().contains(&index) {
                continue;
            }
            if let Err(e) = self.datapath.attach_ext_device(&name, index) {
                warn!(ifname = %name, error = %e, "cannot attach the external program; will retry");
                present.remove(&index);
            }
        }
        if let Err(e) = self.datapath.prune_ext_links(&present) {
            warn!(error = %e, "cannot prune external link pins");
        }
        let addrs = match node::interface_addrs() {
            Ok(a) => a.into_iter().filter(|(n, _)| names.contains(n)).collect(),
            Err(e) => {
                warn!(error = %e, "cannot list interface addresses");
                return;
            }
        };
        let mut want = node::node_addrs(&addrs, &self.cfg.nodeport_ranges, self.internal_ip);
        // Through the overlay, flows to other nodes' backends leave from
        // the vtep address, so that their answers come back through it.
        if let Some(vtep) = self.network.tunnel_vtep() {
            want.snat = Some(vtep);
        }
        match self.node_maps.sync(&want) {
            Ok(true) => info!(nodeport = ?want.nodeport, snat = ?want.snat, "node addresses"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "cannot write the node addresses; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrontendKey, Protocol};
    use crate::testbed::{self, Backend, ClusterIpService, ManifestDir, ServicePort, TestDir};

    fn take(source: &mut Source, model: &mut ModelCache) -> Snapshot {
        match source.snapshot("node-1", model) {
            Ok(snapshot) => snapshot,
            Err(NotNow::Waiting(e) | NotNow::Failed(e)) => panic!("no snapshot: {e}"),
        }
    }

    /// The manifest source applies a change of one file of many as that
    /// change: the model reports only the changed service's frontend, and
    /// a bad file is still reported on every sync.
    #[test]
    fn manifest_source_reports_only_what_changed() {
        let test = TestDir::new("agent-source").expect("test dir");
        let dir = ManifestDir::new_in(&test).expect("manifest dir");
        let service = |i: u8, backend: u8| {
            let port = ServicePort::new("http", testbed::Protocol::Tcp, 80, 8080);
            let backend = Backend::ready("pod", Ipv4Addr::new(10, 0, 0, backend));
            ClusterIpService::new(
                &format!("s{i}"),
                Ipv4Addr::new(10, 96, 0, i),
                vec![port],
                vec![backend],
            )
        };
        for i in 1..=10 {
            dir.write_service(&service(i, 1)).expect("write");
        }
        dir.write_file("bad.yaml", "kind: [\n").expect("write");
        let (tx, _rx) = mpsc::channel(1);
        let watcher = manifest::watch_dir(dir.path(), tx).expect("watch");
        let dir_inputs = Box::new(manifest::DirInputs::new(dir.path(), "node-1"));
        let mut source = Source::Manifests { dir: dir_inputs, verify: false, _watcher: watcher };
        let mut model = ModelCache::new();

        let first = take(&mut source, &mut model);
        assert_eq!(first.changes, Changes::All);
        assert_eq!((first.objects, first.bad_objects), (20, 1));
        assert_eq!(model.desired().len(), 10);

        dir.write_service(&service(4, 2)).expect("write");
        let second = take(&mut source, &mut model);
        let changed = FrontendKey::new(Ipv4Addr::new(10, 96, 0, 4), 80, Protocol::Tcp);
        assert_eq!(second.changes, Changes::Keys([changed].into()));
        assert_eq!(model.desired()[&changed].backends[0].addr, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(second.bad_objects, 1);
        assert!(
            second.complaints.iter().any(|c| c.contains("bad.yaml")),
            "{:?}",
            second.complaints
        );

        // The periodic check reads everything and finds nothing new.
        source.verify();
        let third = take(&mut source, &mut model);
        assert_eq!(third.changes, Changes::Keys(BTreeSet::new()));
        assert_eq!(model.desired().len(), 10);
    }
}
