//! Health, metrics and healthCheckNodePort servers of the agent.
//!
//! - [`health`]: `/healthz`, `/livez`, `/readyz` at `--health-bind`, with
//!   kube-proxy's semantics.
//! - [`metrics`]: Prometheus `/metrics` at `--metrics-bind`, kube-proxy's
//!   names plus sluice's own (map occupancy and drops read from the pins).
//! - [`hcnode`]: one server per `externalTrafficPolicy: Local` LoadBalancer
//!   Service on its `healthCheckNodePort`.
//!
//! How the agent drives them (all from within its tokio runtime):
//! ```ignore
//! // At start, before loading the data path (so probes answer early):
//! let health = HealthState::new(2 * RESYNC);
//! let metrics = Metrics::new(MetricsConfig {
//!     pins: Some(cfg.paths.clone()),
//!     health: Some(health.clone()),
//!     ..MetricsConfig::default()
//! });
//! let _health_srv = observe::serve_health(cfg.health_bind, health.clone())?; // bind error: exit 1
//! let _metrics_srv = observe::serve_metrics(cfg.metrics_bind, metrics.clone())?;
//! let mut hc = HcServers::new(vec![Ipv4Addr::UNSPECIFIED.into()], health.clone());
//!
//! // On every event, resync tick and retry, before the sync it triggers:
//! health.queued();
//! metrics.queued();
//!
//! // In the sync: when the sources cannot be read at all
//! metrics.sync_failed(start.elapsed());
//! // else, after the reconciler ran:
//! let local = observe::local_policy(&loaded.store, &cfg.node_name);
//! let hc_failures = hc.sync_services(&local.hc_services); // logged; retry next sync
//! metrics.record_sync(&SyncReport {
//!     duration: start.elapsed(),
//!     desired: model.desired(),
//!     changed: None, // or the frontends the model says changed
//!     services: model.services(),
//!     backends: model.backends(),
//!     failed_frontends: outcome.errors.len(),
//!     manifest_errors: loaded.errors.len(),
//!     model_warnings: warnings.len(),
//!     triggers: &observe::trigger_times(&loaded.store),
//!     local: &local,
//! });
//! if let Some(node) = loaded.store.nodes.get(&cfg.node_name) {
//!     health.set_node_eligible(observe::health::node_eligible(node));
//! }
//! if outcome.errors.is_empty() {
//!     health.synced();
//!     health.set_ready(); // first full sync of every source applied
//! }
//! ```

pub mod hcnode;
pub mod health;
mod http;
pub mod metrics;

use std::net::SocketAddr;

pub use hcnode::{HcServers, HcService, LocalPolicy, local_policy};
pub use health::{HealthState, serve_health};
pub use http::ServerHandle;
pub use metrics::{
    Metrics, MetricsConfig, SyncReport, TriggerTimes, serve_metrics, trigger_times,
    trigger_times_of,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A server's address cannot be bound (in use, not local, no permission).
    #[error("cannot serve {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
