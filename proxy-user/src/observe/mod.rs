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
//! let health = HealthState::new(2 * RESYNC);
//! let metrics = Metrics::new(MetricsConfig {
//!     pins: Some(cfg.paths.clone()),
//!     health: Some(health.clone()),
//!     ..MetricsConfig::default()
//! });
//! let _health_srv = serve_health(cfg.health_bind, health.clone())?;   // bind error -> exit 1
//! let _metrics_srv = serve_metrics(cfg.metrics_bind, metrics.clone())?;
//! let mut hc = HcServers::new(vec![Ipv4Addr::UNSPECIFIED.into()], health.clone());
//! // before every sync (event, resync tick, retry):
//! health.queued(); metrics.queued();
//! // after it:
//! let local = hcnode::local_policy(&loaded.store, &cfg.node_name);
//! hc.sync_services(&local.hc_services);
//! metrics.record_sync(&SyncReport { duration, desired: &desired, failed_frontends, .. });
//! if failed_frontends == 0 { health.synced(); }
//! // once the first sync of every source is applied:
//! health.set_ready();
//! ```

pub mod hcnode;
pub mod health;
mod http;
pub mod metrics;

use std::net::SocketAddr;

pub use hcnode::{HcServers, HcService, LocalPolicy, local_policy};
pub use health::{HealthState, serve_health};
pub use http::ServerHandle;
pub use metrics::{Metrics, MetricsConfig, SyncReport, serve_metrics};

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
