//! Prometheus metrics on `/metrics` (`--metrics-bind`), OpenMetrics text.
//!
//! kube-proxy's names and meanings where one exists (pkg/proxy/metrics,
//! Kubernetes 1.33: with an `ip_family` label, always `IPv4` for now):
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `kubeproxy_sync_proxy_rules_duration_seconds` | histogram | one sync (read sources, model, write maps), failed or not |
//! | `kubeproxy_sync_full_proxy_rules_duration_seconds` | histogram | the same: every sluice sync is a full one |
//! | `kubeproxy_sync_proxy_rules_last_timestamp_seconds` | gauge | end of the last successful sync |
//! | `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds` | gauge | the last time a sync was queued |
//! | `kubeproxy_network_programming_duration_seconds` | histogram | EndpointSlice `endpoints.kubernetes.io/last-change-trigger-time` to programmed, per changed slice (changes older than the agent are not counted, as in kube-proxy) |
//! | `kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy}` | gauge | service ports with a Local policy (`internal`/`external`), endpoints in the cluster and none on this node |
//! | `kubeproxy_proxy_healthz_total{code}`, `kubeproxy_proxy_livez_total{code}` | counter | answers of `/healthz` and `/livez` (no `ip_family`) |
//!
//! Not implemented: the `endpoint_changes`/`service_changes` pending and
//! total counters, and the iptables/nftables/conntrack-reconciler ones
//! (no such thing in sluice).
//!
//! sluice's own: `sluice_services`, `sluice_frontends`, `sluice_backends`
//! (programmed by the last sync), `sluice_sync_errors_total` (syncs that
//! failed, entirely or for some frontends), `sluice_frontends_failed`,
//! `sluice_manifest_errors` and `sluice_model_warnings` (documents and
//! object parts skipped in the last sync), `sluice_udp_sockets_destroyed_total`
//! (connected UDP sockets of removed backends destroyed by socket
//! termination), `sluice_build_info{version}`, and
//! at scrape time from the pinned maps: `sluice_map_entries{map}`,
//! `sluice_map_capacity{map}`, `sluice_drops_total{reason}`,
//! `sluice_fast_path_packets_total{path}` (`SL_FWD_STATS`), and the
//! per-frontend kernel counters `sluice_service_packets_total` and
//! `sluice_service_bytes_total` (label `direction`: `forward` client to
//! backend, `reply` backend to client) and `sluice_service_new_flows_total`,
//! labelled `namespace`, `name` (the Service, from the last sync) and
//! `frontend` (`address:port/PROTOCOL`). Another source of those counters can
//! be plugged in through [`ServiceCounters`].

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets, linear_buckets},
    },
    registry::Registry,
};

use super::{
    Result,
    hcnode::LocalPolicy,
    health::HealthState,
    http::{self, ServerHandle},
};
use crate::{
    datapath::PinPaths,
    manifest::ObjectKey,
    model::{Desired, FrontendKey, Inputs},
};

/// The EndpointSlice controller's annotation: when the change that produced
/// this version of the slice happened.
pub use crate::model::input::ANNOTATION_TRIGGER_TIME;

/// OpenMetrics text, as Prometheus negotiates it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The traffic counters of one frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounter {
    /// The Service; empty when the frontend is not (or no longer) desired.
    pub service: ObjectKey,
    /// `address:port/PROTOCOL` of the frontend.
    pub frontend: String,
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    pub rev_packets: u64,
    pub rev_bytes: u64,
    pub new_flows: u64,
}

/// Where per-frontend counters come from, read at scrape time, instead of
/// the pinned `SL_SVC_STATS` map.
pub trait ServiceCounters: Send + Sync + 'static {
    fn read(&self) -> Vec<ServiceCounter>;
}

/// Frontend (`address:port/PROTOCOL`) -> Service, from the last sync.
type Names = Arc<std::sync::RwLock<BTreeMap<String, ObjectKey>>>;

/// The per-frontend counters of the pinned maps, named after `names`.
fn pinned_service_counters(pins: &PinPaths, names: &Names) -> Vec<ServiceCounter> {
    let Ok(views) = crate::inspect::services(pins) else { return Vec::new() };
    let names = names.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    views
        .into_iter()
        .filter_map(|v| {
            let stats = v.stats?;
            let scope = if v.internal { " (internal)" } else { "" };
            let frontend = format!("{}:{}/{}{scope}", v.address, v.port, v.protocol);
            Some(ServiceCounter {
                service: names.get(&frontend).cloned().unwrap_or_default(),
                frontend,
                fwd_packets: stats.fwd_packets,
                fwd_bytes: stats.fwd_bytes,
                rev_packets: stats.rev_packets,
                rev_bytes: stats.rev_bytes,
                new_flows: stats.new_flows,
            })
        })
        .collect()
}

/// What [`Metrics::new`] needs.
#[derive(Clone, Default)]
pub struct MetricsConfig {
    /// Read map occupancy and drops from the maps pinned here at scrape time.
    pub pins: Option<PinPaths>,
    /// Export the health endpoints' answer counters.
    pub health: Option<HealthState>,
    /// Per-frontend counters from elsewhere than `pins`.
    pub service_counters: Option<Arc<dyn ServiceCounters>>,
}

/// What one sync did, for [`Metrics::record_sync`].
#[derive(Clone, Copy, Debug)]
pub struct SyncReport<'a> {
    /// Wall time of the whole sync.
    pub duration: Duration,
    /// What the model asked for (programmed unless `failed_frontends > 0`).
    pub desired: &'a Desired,
    /// The frontends that may differ from the last report; `None`: any.
    pub changed: Option<&'a BTreeSet<FrontendKey>>,
    /// Services and backends in `desired` (the caller keeps count).
    pub services: usize,
    pub backends: usize,
    /// Frontends not (fully) programmed (`SyncOutcome::errors.len()`).
    pub failed_frontends: usize,
    /// Manifest documents that could not be used.
    pub manifest_errors: usize,
    /// Object parts the model skipped.
    pub model_warnings: usize,
    /// Trigger times of the EndpointSlices the sync used
    /// ([`trigger_times`] of the store).
    pub triggers: &'a TriggerTimes,
    /// From [`super::hcnode::local_policy`].
    pub local: &'a LocalPolicy,
}

type Label = [(&'static str, &'static str); 1];

/// EndpointSlices' `endpoints.kubernetes.io/last-change-trigger-time`.
#[derive(Clone, Debug, Default)]
pub struct TriggerTimes {
    /// The slices that have one.
    times: BTreeMap<ObjectKey, SystemTime>,
    /// `None`: `times` covers every slice. Otherwise only these slices
    /// (changed since the last sync) are covered; one of them missing from
    /// `times` has no trigger time any more (or is gone).
    scope: Option<BTreeSet<ObjectKey>>,
}

/// The trigger times of the slices of `inputs` (taken while the inputs are
/// at hand, so that recording the sync later does not need them).
#[must_use]
pub fn trigger_times(inputs: &Inputs) -> TriggerTimes {
    let times = inputs
        .slices()
        .filter_map(|(key, slice)| Some((key.clone(), slice.trigger_time?)))
        .collect();
    TriggerTimes { times, scope: None }
}

/// [`trigger_times`] of the slices `keys` only (those that changed).
#[must_use]
pub fn trigger_times_of(inputs: &Inputs, keys: &BTreeSet<ObjectKey>) -> TriggerTimes {
    let times = keys
        .iter()
        .filter_map(|key| Some((key.clone(), inputs.slice(key)?.trigger_time?)))
        .collect();
    TriggerTimes { times, scope: Some(keys.clone()) }
}

/// Remembers each slice's trigger time, to time the changes once each.
#[derive(Debug)]
struct Triggers {
    /// Changes older than this are not ours to time (kube-proxy's
    /// `trackerStartTime`).
    start: SystemTime,
    seen: BTreeMap<ObjectKey, SystemTime>,
    pending: BTreeSet<(SystemTime, ObjectKey)>,
}

impl Triggers {
    fn note(&mut self, triggers: &TriggerTimes) {
        for (key, t) in &triggers.times {
            if self.seen.get(key) != Some(t) && *t >= self.start {
                self.pending.insert((*t, key.clone()));
            }
        }
        match &triggers.scope {
            None => self.seen.clone_from(&triggers.times),
            Some(keys) => {
                for key in keys {
                    match triggers.times.get(key) {
                        Some(t) => self.seen.insert(key.clone(), *t),
                        None => self.seen.remove(key),
                    };
                }
            }
        }
    }
}

struct Inner {
    registry: Registry,
    sync_duration: Histogram,
    sync_full_duration: Histogram,
    last_timestamp: Gauge<f64, AtomicU64>,
    last_queued_timestamp: Gauge<f64, AtomicU64>,
    network_programming: Histogram,
    no_local: Family<Label, Gauge>,
    services: Gauge,
    frontends: Gauge,
    backends: Gauge,
    sync_errors: Counter,
    udp_sockets_destroyed: Counter,
    frontends_failed: Gauge,
    manifest_errors: Gauge,
    model_warnings: Gauge,
    triggers: Mutex<Triggers>,
    names: Names,
}

/// The agent's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// kube-proxy's network programming buckets: 0, 0.25, 0.5, 1..59 s,
/// 60..115 s by 5, 120..300 s by 30.
fn network_programming_buckets() -> Vec<f64> {
    std::iter::once(0.0)
        .chain(linear_buckets(0.25, 0.25, 2))
        .chain(linear_buckets(1.0, 1.0, 59))
        .chain(linear_buckets(60.0, 5.0, 12))
        .chain(linear_buckets(120.0, 30.0, 7))
        .collect()
}

impl Metrics {
    #[must_use]
    pub fn new(config: MetricsConfig) -> Self {
        let mut registry = Registry::default();
        let sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let sync_full_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let last_timestamp = Gauge::<f64, AtomicU64>::default();
        let last_queued_timestamp = Gauge::<f64, AtomicU64>::default();
        let network_programming = Histogram::new(network_programming_buckets());
        let no_local = Family::<Label, Gauge>::default();
        for policy in ["internal", "external"] {
            no_local.get_or_create(&[("traffic_policy", policy)]).set(0);
        }
        {
            let kp = registry.sub_registry_with_label(("ip_family".into(), "IPv4".into()));
            kp.register(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
                sync_duration.clone(),
            );
            kp.register(
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
                sync_full_duration.clone(),
            );
            kp.register(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                last_timestamp.clone(),
            );
            kp.register(
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                last_queued_timestamp.clone(),
            );
            kp.register(
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                network_programming.clone(),
            );
            kp.register(
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                "Number of services with a Local traffic policy and no endpoints",
                no_local.clone(),
            );
        }
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let services =
            gauge(&mut registry, "sluice_services", "Services with a frontend programmed");
        let frontends = gauge(&mut registry, "sluice_frontends", "Frontends programmed");
        let backends = gauge(&mut registry, "sluice_backends", "Backend entries programmed");
        let frontends_failed = gauge(
            &mut registry,
            "sluice_frontends_failed",
            "Frontends the last sync could not program (retried)",
        );
        let manifest_errors = gauge(
            &mut registry,
            "sluice_manifest_errors",
            "Manifest documents skipped in the last sync",
        );
        let model_warnings = gauge(
            &mut registry,
            "sluice_model_warnings",
            "Object parts the model skipped in the last sync",
        );
        let sync_errors = Counter::default();
        registry.register(
            "sluice_sync_errors",
            "Syncs that failed, entirely or for some frontends",
            sync_errors.clone(),
        );
        let udp_sockets_destroyed = Counter::default();
        registry.register(
            "sluice_udp_sockets_destroyed",
            "Connected UDP sockets of removed backends destroyed (socket LB)",
            udp_sockets_destroyed.clone(),
        );
        let names = Names::default();
        registry.register_collector(Box::new(Scraped {
            names: Arc::clone(&names),
            pins: config.pins,
            health: config.health,
            service_counters: config.service_counters,
        }));
        Self(Arc::new(Inner {
            registry,
            sync_duration,
            sync_full_duration,
            last_timestamp,
            last_queued_timestamp,
            network_programming,
            no_local,
            services,
            frontends,
            backends,
            sync_errors,
            udp_sockets_destroyed,
            frontends_failed,
            manifest_errors,
            model_warnings,
            triggers: Mutex::new(Triggers {
                start: SystemTime::now(),
                seen: BTreeMap::new(),
                pending: BTreeSet::new(),
            }),
            names,
        }))
    }

    /// A sync was queued (same call sites as [`HealthState::queued`]).
    pub fn queued(&self) {
        self.0.last_queued_timestamp.set(unix_seconds(SystemTime::now()));
    }

    /// Socket termination destroyed `n` UDP sockets.
    pub fn udp_sockets_destroyed(&self, n: u64) {
        self.0.udp_sockets_destroyed.inc_by(n);
    }

    /// A sync could not even read its sources: counts an error and its time.
    pub fn sync_failed(&self, duration: Duration) {
        self.0.sync_duration.observe(duration.as_secs_f64());
        self.0.sync_full_duration.observe(duration.as_secs_f64());
        self.0.sync_errors.inc();
    }

    /// Records a sync that ran (see [`SyncReport`]). A sync with failed
    /// frontends counts as an error; programming latencies of the changes it
    /// carried are observed by the next successful one.
    pub fn record_sync(&self, r: &SyncReport<'_>) {
        self.record_sync_at(r, SystemTime::now());
    }

    /// [`Self::record_sync`] with the wall-clock time the sync finished.
    pub fn record_sync_at(&self, r: &SyncReport<'_>, now: SystemTime) {
        let m = &self.0;
        m.sync_duration.observe(r.duration.as_secs_f64());
        m.sync_full_duration.observe(r.duration.as_secs_f64());
        m.services.set(gauge_value(r.services));
        {
            let mut names = m.names.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            match r.changed {
                None => {
                    *names =
                        r.desired.iter().map(|(k, f)| (k.to_string(), f.service.clone())).collect();
                }
                Some(keys) => {
                    for key in keys {
                        match r.desired.get(key) {
                            Some(f) => names.insert(key.to_string(), f.service.clone()),
                            None => names.remove(&key.to_string()),
                        };
                    }
                }
            }
        }
        m.frontends.set(gauge_value(r.desired.len()));
        m.backends.set(gauge_value(r.backends));
        m.frontends_failed.set(gauge_value(r.failed_frontends));
        m.manifest_errors.set(gauge_value(r.manifest_errors));
        m.model_warnings.set(gauge_value(r.model_warnings));
        m.no_local
            .get_or_create(&[("traffic_policy", "internal")])
            .set(gauge_value(r.local.no_local_internal));
        m.no_local
            .get_or_create(&[("traffic_policy", "external")])
            .set(gauge_value(r.local.no_local_external));
        let mut triggers = m.triggers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        triggers.note(r.triggers);
        if r.failed_frontends > 0 {
            m.sync_errors.inc();
            return;
        }
        m.last_timestamp.set(unix_seconds(now));
        for (t, _) in std::mem::take(&mut triggers.pending) {
            let latency = now.duration_since(t).unwrap_or_default();
            m.network_programming.observe(latency.as_secs_f64());
        }
    }

    /// The metrics in OpenMetrics text format.
    ///
    /// # Errors
    /// Only when formatting fails (never with a `String`).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.0.registry)?;
        Ok(out)
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Metrics read at scrape time.
struct Scraped {
    names: Names,
    pins: Option<PinPaths>,
    health: Option<HealthState>,
    service_counters: Option<Arc<dyn ServiceCounters>>,
}

impl fmt::Debug for Scraped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scraped").field("pins", &self.pins).finish_non_exhaustive()
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        {
            let mut e = encoder.encode_descriptor(
                "sluice_build_info",
                "sluice's version",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1)
                .encode(e.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        }
        if let Some(health) = &self.health {
            let [h200, h503, l200, l503] = health.response_counts();
            for (name, help, ok, bad) in [
                ("kubeproxy_proxy_healthz", "Cumulative proxy healthz HTTP status", h200, h503),
                ("kubeproxy_proxy_livez", "Cumulative proxy livez HTTP status", l200, l503),
            ] {
                let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(ok).encode(e.encode_family(&[("code", "200")])?)?;
                ConstCounter::new(bad).encode(e.encode_family(&[("code", "503")])?)?;
            }
        }
        if let Some(pins) = &self.pins {
            let st = crate::inspect::status(pins);
            let mut e = encoder.encode_descriptor(
                "sluice_map_entries",
                "Entries in each pinned map (not counted for per-CPU arrays)",
                None,
                MetricType::Gauge,
            )?;
            for m in st.maps.iter().filter(|m| m.entries.is_some()) {
                let n = gauge_value(usize::try_from(m.entries.unwrap_or(0)).unwrap_or(usize::MAX));
                ConstGauge::new(n).encode(e.encode_family(&[("map", m.name)])?)?;
            }
            let mut e = encoder.encode_descriptor(
                "sluice_map_capacity",
                "max_entries of each pinned map",
                None,
                MetricType::Gauge,
            )?;
            for m in &st.maps {
                if let Some(c) = m.capacity {
                    ConstGauge::new(i64::from(c)).encode(e.encode_family(&[("map", m.name)])?)?;
                }
            }
            let mut e = encoder.encode_descriptor(
                "sluice_drops",
                "Packets dropped by the data path, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in &st.drops {
                ConstCounter::new(*n).encode(e.encode_family(&[("reason", *reason)])?)?;
            }
            if let Ok(f) = crate::datapath::node::FastPathStats::read(pins) {
                let mut e = encoder.encode_descriptor(
                    "sluice_fast_path_packets",
                    "Pod packets by fast-path decision: peer (bpf_redirect_peer to a local pod), \
                     fib (bpf_redirect after a FIB lookup), neigh (bpf_redirect_neigh), stack \
                     (a fast path applied but left the packet to the node's stack)",
                    None,
                    MetricType::Counter,
                )?;
                for (path, n) in
                    [("peer", f.peer), ("fib", f.fib), ("neigh", f.neigh), ("stack", f.stack)]
                {
                    ConstCounter::new(n).encode(e.encode_family(&[("path", path)])?)?;
                }
            }
        }
        let samples = match (&self.service_counters, &self.pins) {
            (Some(source), _) => source.read(),
            (None, Some(pins)) => pinned_service_counters(pins, &self.names),
            (None, None) => return Ok(()),
        };
        encode_service_counters(&mut encoder, &samples)?;
        Ok(())
    }
}

fn encode_service_counters(
    encoder: &mut DescriptorEncoder,
    samples: &[ServiceCounter],
) -> Result<(), fmt::Error> {
    let labels = |c: &ServiceCounter| {
        [
            ("namespace", c.service.namespace.clone()),
            ("name", c.service.name.clone()),
            ("frontend", c.frontend.clone()),
        ]
    };
    type Pick = fn(&ServiceCounter) -> u64;
    let packets: [Pick; 2] = [|c| c.fwd_packets, |c| c.rev_packets];
    let bytes: [Pick; 2] = [|c| c.fwd_bytes, |c| c.rev_bytes];
    for (name, help, picks) in [
        ("sluice_service_packets", "Packets through a frontend, by direction", packets),
        ("sluice_service_bytes", "Bytes through a frontend, by direction", bytes),
    ] {
        let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for c in samples {
            for (direction, pick) in [("forward", picks[0]), ("reply", picks[1])] {
                let [a, b, d] = labels(c);
                let set = [a, b, d, ("direction", direction.to_string())];
                ConstCounter::new(pick(c)).encode(e.encode_family(&set)?)?;
            }
        }
    }
    let mut e = encoder.encode_descriptor(
        "sluice_service_new_flows",
        "Flows started through a frontend",
        None,
        MetricType::Counter,
    )?;
    for c in samples {
        ConstCounter::new(c.new_flows).encode(e.encode_family(&labels(c))?)?;
    }
    Ok(())
}

async fn metrics_handler(State(metrics): State<Metrics>) -> Response {
    // Reading the pinned maps does syscalls: keep them off the reactor.
    match tokio::task::spawn_blocking(move || metrics.encode()).await {
        Ok(Ok(body)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

/// The router of the metrics server (`/metrics`).
pub fn router(metrics: Metrics) -> Router {
    Router::new().route("/metrics", get(metrics_handler)).with_state(metrics)
}

/// Binds `addr` (`--metrics-bind`) and serves `/metrics` on the current tokio
/// runtime. Must be called from within the runtime.
///
/// # Errors
/// [`super::Error::Bind`] when the address cannot be bound.
pub fn serve_metrics(addr: SocketAddr, metrics: Metrics) -> Result<ServerHandle> {
    let listener = http::bind("metrics", addr)?;
    http::spawn("metrics", &tokio::runtime::Handle::current(), listener, router(metrics))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        manifest::Store,
        model::{BackendSpec, BackendState, Frontend, FrontendKey, Protocol},
    };
    use std::net::Ipv4Addr;

    fn desired() -> Desired {
        let fe = |ip: [u8; 4], svc: &str, n: u8| {
            (
                FrontendKey::new(Ipv4Addr::from(ip), 80, Protocol::Tcp),
                Frontend {
                    service: ObjectKey::new("ns", svc),
                    port_name: String::new(),
                    backends: (0..n)
                        .map(|i| BackendSpec {
                            addr: Ipv4Addr::new(10, 244, 0, i),
                            port: 8080,
                            state: BackendState::Active,
                            local: false,
                        })
                        .collect(),
                    affinity_timeout: None,
                    policy: Default::default(),
                    source_ranges: Vec::new(),
                },
            )
        };
        Desired::from([
            fe([10, 96, 0, 1], "a", 2),
            fe([10, 96, 0, 2], "a", 1),
            fe([10, 96, 0, 3], "b", 0),
        ])
    }

    fn store_with_trigger(slice: &str, t: &str) -> Store {
        let mut store = Store::default();
        let s: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "ns", "name": slice,
                             "annotations": {ANNOTATION_TRIGGER_TIME: t}},
                "addressType": "IPv4", "endpoints": []
            }))
            .unwrap();
        store.endpoint_slices.insert(ObjectKey::of(&s.metadata), s);
        store
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    #[test]
    fn a_sync_sets_kube_proxy_and_sluice_metrics() {
        let health = HealthState::new(Duration::from_secs(60));
        let m = Metrics::new(MetricsConfig { health: Some(health), ..MetricsConfig::default() });
        m.queued();
        let d = desired();
        let local =
            LocalPolicy { no_local_internal: 2, no_local_external: 1, ..LocalPolicy::default() };
        let store = Store::default();
        let report = SyncReport {
            duration: Duration::from_millis(3),
            desired: &d,
            changed: None,
            services: 2,
            backends: 3,
            failed_frontends: 0,
            manifest_errors: 4,
            model_warnings: 5,
            triggers: &trigger_times(&Inputs::from_store(&store, "")),
            local: &local,
        };
        m.record_sync(&report);
        let text = m.encode().unwrap();
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
        for want in [
            "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
            r#"kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1"#,
            r#"kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.004"} 1"#,
            r#"kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.002"} 0"#,
            r#"kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1"#,
            r#"kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"} 2"#,
            r#"kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="external"} 1"#,
            r#"kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0.25"} 0"#,
            r#"kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="300.0"} 0"#,
            "sluice_services 2",
            "sluice_frontends 3",
            "sluice_backends 3",
            "sluice_manifest_errors 4",
            "sluice_model_warnings 5",
            "sluice_sync_errors_total 0",
            r#"kubeproxy_proxy_healthz_total{code="200"} 0"#,
            r#"sluice_build_info{version=""#,
        ] {
            assert!(text.lines().any(|l| l.starts_with(want)), "missing {want:?} in\n{text}");
        }
        let last: f64 = line(&text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds{")
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let queued: f64 = line(&text, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{")
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let now = unix_seconds(SystemTime::now());
        assert!(queued > now - 60.0 && queued <= last && last <= now, "{queued} {last} {now}");

        // A failed sync: counted, the last-success time does not move.
        m.record_sync(&SyncReport { failed_frontends: 1, ..report });
        m.sync_failed(Duration::from_millis(1));
        let text = m.encode().unwrap();
        assert!(text.contains("sluice_sync_errors_total 2\n"), "{text}");
        assert!(text.contains("sluice_frontends_failed 1\n"), "{text}");
        let last_again: f64 = line(&text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds{")
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((last_again - last).abs() < 1e-6, "moved: {last} -> {last_again}");
    }

    #[test]
    fn network_programming_times_each_new_change_once() {
        let m = Metrics::new(MetricsConfig::default());
        let start = unix_seconds(m.0.triggers.lock().unwrap().start);
        let d = Desired::new();
        let local = LocalPolicy::default();
        let sync = |store: &Store, now: SystemTime, failed: usize| {
            m.record_sync_at(
                &SyncReport {
                    duration: Duration::ZERO,
                    desired: &d,
                    changed: None,
                    services: 0,
                    backends: 0,
                    failed_frontends: failed,
                    manifest_errors: 0,
                    model_warnings: 0,
                    triggers: &trigger_times(&Inputs::from_store(store, "")),
                    local: &local,
                },
                now,
            );
        };
        let count = || -> u64 {
            let text = m.encode().unwrap();
            line(&text, "kubeproxy_network_programming_duration_seconds_count{")
                .rsplit(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let rfc =
            |secs: f64| super::super::health::rfc3339(UNIX_EPOCH + Duration::from_secs_f64(secs));
        // Older than the agent: not ours to time.
        sync(&store_with_trigger("s", &rfc(start - 10.0)), SystemTime::now(), 0);
        assert_eq!(count(), 0);
        // A new change, 1.5 s before it was programmed: 1 sample, le=2 bucket.
        let t1 = start + 5.0;
        let store1 = store_with_trigger("s", &rfc(t1));
        sync(&store1, UNIX_EPOCH + Duration::from_secs_f64(t1 + 1.5), 0);
        assert_eq!(count(), 1);
        let text = m.encode().unwrap();
        assert!(text.contains(r#"kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="1.0"} 0"#), "{text}");
        assert!(text.contains(r#"kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="2.0"} 1"#), "{text}");
        // The same version again (a resync): not counted twice.
        sync(&store1, UNIX_EPOCH + Duration::from_secs_f64(t1 + 30.0), 0);
        assert_eq!(count(), 1);
        // A change whose first sync fails is timed by the next good one.
        let store2 = store_with_trigger("s", &rfc(t1 + 40.0));
        sync(&store2, UNIX_EPOCH + Duration::from_secs_f64(t1 + 41.0), 1);
        assert_eq!(count(), 1);
        sync(&store2, UNIX_EPOCH + Duration::from_secs_f64(t1 + 43.0), 0);
        assert_eq!(count(), 2);
    }

    struct Fixed;
    impl ServiceCounters for Fixed {
        fn read(&self) -> Vec<ServiceCounter> {
            vec![ServiceCounter {
                service: ObjectKey::new("ns", "web"),
                frontend: "10.96.0.1:80/TCP".into(),
                fwd_packets: 7,
                fwd_bytes: 700,
                rev_packets: 5,
                rev_bytes: 500,
                new_flows: 2,
            }]
        }
    }

    #[test]
    fn scrape_time_sources_are_read_and_missing_pins_are_not_an_error() {
        let m = Metrics::new(MetricsConfig {
            pins: Some(PinPaths::new("/nonexistent/sluice-test-pins")),
            service_counters: Some(Arc::new(Fixed)),
            ..MetricsConfig::default()
        });
        let text = m.encode().unwrap();
        assert!(text.contains("# TYPE sluice_map_capacity gauge"), "{text}");
        assert!(!text.contains("sluice_map_capacity{"), "no map, no sample:\n{text}");
        assert!(text.contains(
            r#"sluice_service_packets_total{namespace="ns",name="web",frontend="10.96.0.1:80/TCP",direction="forward"} 7"#
        ), "{text}");
        assert!(text.contains(
            r#"sluice_service_bytes_total{namespace="ns",name="web",frontend="10.96.0.1:80/TCP",direction="reply"} 500"#
        ), "{text}");
        assert!(text.contains(
            r#"sluice_service_new_flows_total{namespace="ns",name="web",frontend="10.96.0.1:80/TCP"} 2"#
        ), "{text}");
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics() {
        let m = Metrics::new(MetricsConfig::default());
        let srv = serve_metrics("127.0.0.1:0".parse().unwrap(), m).unwrap();
        let (code, ctype, body) = http::get(srv.local_addr(), "/metrics").await;
        assert_eq!(code, 200);
        assert_eq!(ctype, CONTENT_TYPE);
        assert!(body.contains("# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge"));
        assert!(body.ends_with("# EOF\n"));
        assert_eq!(http::get(srv.local_addr(), "/").await.0, 404);
        let err = serve_metrics(srv.local_addr(), Metrics::new(MetricsConfig::default()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot serve metrics on 127.0.0.1:"), "{err}");
        srv.shutdown().await;
    }
}
