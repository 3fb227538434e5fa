//! The node agent: manifests -> model -> reconciler -> pinned maps, and the
//! pod program attached to every pod interface of the node.

use std::{
    collections::BTreeSet,
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
    datapath::{
        MapSizes, PinPaths,
        loader::{self, Datapath},
        maps::PinnedMaps,
        reconcile::Reconciler,
    },
    manifest, model,
};

/// How often pod interfaces are rescanned (and failed syncs retried).
const DEVICE_SCAN: Duration = Duration::from_secs(1);
/// A full re-read of the sources, as a backstop for missed file events.
const RESYNC: Duration = Duration::from_secs(30);
/// Bursts of file events are coalesced for this long.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Validated agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub manifests: PathBuf,
    pub node_name: String,
    pub paths: PinPaths,
    pub pod_devices: Vec<String>,
    pub map_sizes: MapSizes,
    /// Where socket-level LB attaches; `None` when it is off.
    pub socket_lb_cgroup: Option<PathBuf>,
}

impl Config {
    /// Checks the flags; a one-line reason when they cannot work.
    pub fn from_args(args: &AgentArgs) -> anyhow::Result<Self> {
        let Some(manifests) = args.manifests.clone() else {
            if args.kubeconfig.is_some() {
                bail!(
                    "the Kubernetes API source (--kubeconfig) is not implemented yet; use --manifests DIR"
                );
            }
            bail!(
                "no source of Services: give --manifests DIR (the in-cluster API source is not implemented yet)"
            );
        };
        if !manifests.is_dir() {
            bail!("--manifests {}: not a directory", manifests.display());
        }
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
        Ok(Self {
            socket_lb_cgroup,
            manifests,
            node_name,
            paths: PinPaths::new(&args.bpffs_root),
            pod_devices: args.pod_devices.clone(),
            map_sizes: MapSizes {
                services: args.map_size_services,
                backends: args.map_size_backends,
                frontends: args.map_size_frontends,
                conntrack: args.map_size_conntrack,
                affinity: args.map_size_affinity,
            },
        })
    }
}

struct Agent {
    cfg: Config,
    datapath: Datapath,
    reconciler: Reconciler<PinnedMaps>,
    /// The last messages about bad input, so each is logged once, not every sync.
    last_complaints: BTreeSet<String>,
    needs_retry: bool,
}

/// Runs the agent until SIGTERM or SIGINT. Pinned state is left in place.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    loader::check_kernel().map_err(anyhow::Error::msg)?;
    loader::ensure_bpffs(&cfg.paths.root)?;
    let mut datapath = Datapath::load(&cfg.paths, &cfg.map_sizes)?;
    match &cfg.socket_lb_cgroup {
        Some(cgroup) => datapath.attach_socket_lb(cgroup)?,
        None => datapath.detach_socket_lb()?,
    }
    let maps = PinnedMaps::open(&cfg.paths)?;
    let (reconciler, restored) = Reconciler::restore(maps)?;
    info!(
        frontends = restored.frontends,
        backends = restored.backends,
        pruned = restored.pruned,
        "adopted pinned state"
    );
    let mut agent =
        Agent { cfg, datapath, reconciler, last_complaints: BTreeSet::new(), needs_retry: false };

    let (tx, mut rx) = mpsc::channel(64);
    let _watcher = manifest::watch_dir(&agent.cfg.manifests, tx)
        .with_context(|| format!("watching {}", agent.cfg.manifests.display()))?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut devices = interval(DEVICE_SCAN);
    devices.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut resync = interval(RESYNC);
    resync.set_missed_tick_behavior(MissedTickBehavior::Delay);

    agent.scan_devices();
    agent.sync();
    info!(node = %agent.cfg.node_name, manifests = %agent.cfg.manifests.display(), "agent running");
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: stopping, pinned state left in place"); break; }
            _ = sigint.recv() => { info!("SIGINT: stopping, pinned state left in place"); break; }
            Some(()) = rx.recv() => {
                sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                agent.sync();
            }
            _ = resync.tick() => agent.sync(),
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
    /// Re-reads the sources and makes the maps match.
    fn sync(&mut self) {
        let start = Instant::now();
        let loaded = match manifest::load_dir(&self.cfg.manifests) {
            Ok(l) => l,
            Err(e) => {
                // Keep what is programmed: a missing directory must not
                // withdraw every service.
                error!(error = %e, "cannot read the manifest directory; keeping the programmed state");
                self.needs_retry = true;
                return;
            }
        };
        let (desired, warnings) = model::desired_state(&loaded.store, &self.cfg.node_name);
        let complaints: BTreeSet<String> = loaded
            .errors
            .iter()
            .map(ToString::to_string)
            .chain(warnings.iter().map(|w| format!("{}: {}", w.object, w.message)))
            .collect();
        for c in complaints.difference(&self.last_complaints) {
            warn!("skipped: {c}");
        }
        self.last_complaints = complaints;

        let outcome = self.reconciler.sync(&desired);
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
        let log =
            if outcome.changed + outcome.removed > 0 { true } else { !outcome.errors.is_empty() };
        if log {
            info!(
                files = loaded.files,
                frontends = desired.len(),
                changed = outcome.changed,
                removed = outcome.removed,
                failed = outcome.errors.len(),
                took_ms = start.elapsed().as_secs_f64() * 1000.0,
                "synced"
            );
        } else {
            debug!(frontends = desired.len(), "in sync");
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
            if !device_matches(&self.cfg.pod_devices, &name) {
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
    }
}
