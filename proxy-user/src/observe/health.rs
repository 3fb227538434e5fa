//! `/healthz`, `/livez` and `/readyz` with kube-proxy's semantics
//! (pkg/proxy/healthcheck/proxier_health.go).
//!
//! - Healthy while no update is pending, or the oldest pending update was
//!   queued less than `timeout` ago. An update is pending from the first
//!   [`HealthState::queued`] after a successful sync until the next
//!   [`HealthState::synced`]. So a sync loop that stalls, or whose syncs keep
//!   failing, turns unhealthy `timeout` after the first change it did not
//!   apply, while an idle agent stays healthy.
//! - `/healthz`: healthy and the node is eligible (not being deleted, not
//!   tainted `ToBeDeletedByClusterAutoscaler`), so load balancers drain the
//!   node. Body `{"lastUpdated": "...","currentTime": "...", "nodeEligible": true}`;
//!   as in kube-proxy, `lastUpdated` equals `currentTime` while healthy (older
//!   clients read it as "the last sync was recent") and is the real time of
//!   the last successful sync when unhealthy.
//! - `/livez`: healthy, whatever the node (kubelet restarts a stuck agent).
//! - `/readyz` (sluice's own): 200 once [`HealthState::set_ready`] was called
//!   after the first full sync of every source; it stays ready after that.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use k8s_openapi::api::core::v1::Node;

use super::{
    Result,
    http::{self, ServerHandle},
};

/// The Cluster Autoscaler's taint on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

#[derive(Debug, Default)]
struct Times {
    /// Wall-clock time of the last successful sync.
    last_updated: Option<SystemTime>,
    /// When the oldest update not yet applied was queued.
    oldest_pending: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    timeout: Duration,
    times: Mutex<Times>,
    node_eligible: AtomicBool,
    ready: AtomicBool,
    /// Responses by endpoint and code, for `kubeproxy_proxy_healthz_total`
    /// and `kubeproxy_proxy_livez_total`: [healthz 200, healthz 503, livez 200, livez 503].
    responses: [AtomicU64; 4],
}

/// The agent's health, shared between the sync loop (writer) and the HTTP
/// servers (readers). Cheap to clone.
#[derive(Clone, Debug)]
pub struct HealthState(Arc<Inner>);

/// One evaluation of the health state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// The proxy's own health (no pending update older than the timeout).
    pub healthy: bool,
    pub node_eligible: bool,
    pub ready: bool,
    pub last_updated: Option<SystemTime>,
}

impl HealthState {
    /// `timeout`: how long an update may stay pending before the agent is
    /// unhealthy (kube-proxy: 2 x its sync period; sluice: 2 x the resync
    /// period is a good choice).
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        Self(Arc::new(Inner {
            timeout,
            times: Mutex::new(Times::default()),
            // Eligible while starting up, until a Node says otherwise.
            node_eligible: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            responses: Default::default(),
        }))
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        // A panic while holding this lock cannot leave it inconsistent.
        self.0.times.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An update was received that needs a sync (a watch event, a changed
    /// file, a periodic resync, a retry). Call before the sync it triggers.
    pub fn queued(&self) {
        self.queued_at(Instant::now());
    }

    /// [`Self::queued`] at a given instant.
    pub fn queued_at(&self, now: Instant) {
        let mut t = self.times();
        if t.oldest_pending.is_none() {
            t.oldest_pending = Some(now);
        }
    }

    /// A sync applied everything that was queued, without error.
    pub fn synced(&self) {
        self.synced_at(SystemTime::now());
    }

    /// [`Self::synced`] with the wall-clock time of the sync.
    pub fn synced_at(&self, wall: SystemTime) {
        let mut t = self.times();
        t.oldest_pending = None;
        t.last_updated = Some(wall);
    }

    /// The first full sync of every source has been applied.
    pub fn set_ready(&self) {
        self.0.ready.store(true, Ordering::Relaxed);
    }

    /// Whether this node may receive load-balancer traffic (see
    /// [`node_eligible`]).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.0.node_eligible.store(eligible, Ordering::Relaxed);
    }

    /// The health at `now`.
    #[must_use]
    pub fn check_at(&self, now: Instant) -> Health {
        let t = self.times();
        let healthy =
            t.oldest_pending.is_none_or(|q| now.saturating_duration_since(q) < self.0.timeout);
        Health {
            healthy,
            node_eligible: self.0.node_eligible.load(Ordering::Relaxed),
            ready: self.0.ready.load(Ordering::Relaxed),
            last_updated: t.last_updated,
        }
    }

    /// The health now.
    #[must_use]
    pub fn check(&self) -> Health {
        self.check_at(Instant::now())
    }

    /// The proxy's own health (what healthCheckNodePort answers report as
    /// `serviceProxyHealthy`).
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.check().healthy
    }

    /// (healthz 200, healthz 503, livez 200, livez 503) answered so far.
    #[must_use]
    pub fn response_counts(&self) -> [u64; 4] {
        let r = &self.0.responses;
        [0, 1, 2, 3].map(|i| r[i].load(Ordering::Relaxed))
    }

    fn count(&self, index: usize) {
        self.0.responses[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// kube-proxy's `SyncNode`: a node being deleted, or tainted by the Cluster
/// Autoscaler for deletion, is not eligible for load-balancer traffic.
#[must_use]
pub fn node_eligible(node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    !node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

/// RFC 3339 UTC with nanoseconds, e.g. `2026-11-23T18:44:33.123456789Z`.
#[must_use]
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

fn json(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
        body,
    )
        .into_response()
}

fn status_of(ok: bool) -> StatusCode {
    if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

fn times_json(h: &Health, now: SystemTime) -> (String, String) {
    let current = rfc3339(now);
    let last =
        if h.healthy { current.clone() } else { h.last_updated.map(rfc3339).unwrap_or_default() };
    (last, current)
}

async fn healthz(State(state): State<HealthState>) -> Response {
    let h = state.check();
    let ok = h.healthy && h.node_eligible;
    state.count(if ok { 0 } else { 1 });
    let (last, current) = times_json(&h, SystemTime::now());
    json(
        status_of(ok),
        format!(
            r#"{{"lastUpdated": "{last}","currentTime": "{current}", "nodeEligible": {}}}"#,
            h.node_eligible
        ),
    )
}

async fn livez(State(state): State<HealthState>) -> Response {
    let h = state.check();
    state.count(if h.healthy { 2 } else { 3 });
    let (last, current) = times_json(&h, SystemTime::now());
    json(status_of(h.healthy), format!(r#"{{"lastUpdated": "{last}","currentTime": "{current}"}}"#))
}

async fn readyz(State(state): State<HealthState>) -> Response {
    let ready = state.check().ready;
    json(status_of(ready), format!(r#"{{"ready": {ready}}}"#))
}

/// The router of the health server (`/healthz`, `/livez`, `/readyz`).
pub fn router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Binds `addr` (`--health-bind`) and serves the health endpoints on the
/// current tokio runtime. Must be called from within the runtime.
///
/// # Errors
/// [`super::Error::Bind`] when the address cannot be bound.
pub fn serve_health(addr: SocketAddr, state: HealthState) -> Result<ServerHandle> {
    let listener = http::bind("health", addr)?;
    http::spawn("health", &tokio::runtime::Handle::current(), listener, router(state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const T: Duration = Duration::from_secs(60);

    #[test]
    fn healthy_while_starting_and_idle() {
        let s = HealthState::new(T);
        let t0 = Instant::now();
        assert!(s.check_at(t0 + Duration::from_secs(3600)).healthy, "nothing pending");
        s.synced();
        assert!(s.check_at(t0 + Duration::from_secs(3600)).healthy, "idle after a sync");
    }

    #[test]
    fn pending_update_turns_unhealthy_after_the_timeout() {
        let s = HealthState::new(T);
        let t0 = Instant::now();
        s.queued_at(t0);
        // A later event does not move the oldest pending time.
        s.queued_at(t0 + Duration::from_secs(50));
        assert!(s.check_at(t0 + Duration::from_secs(59)).healthy);
        assert!(!s.check_at(t0 + Duration::from_secs(60)).healthy);
        s.synced();
        assert!(s.check_at(t0 + Duration::from_secs(600)).healthy, "a sync clears it");
    }

    #[test]
    fn node_eligibility_follows_deletion_and_autoscaler_taint() {
        let mut node = Node::default();
        assert!(node_eligible(&node));
        node.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: TO_BE_DELETED_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            }]),
            ..NodeSpec::default()
        });
        assert!(!node_eligible(&node));
        node.spec = None;
        node.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(!node_eligible(&node));
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(951_782_400 + 3661, 5); // 2000-02-29 01:01:01
        assert_eq!(rfc3339(t), "2000-02-29T01:01:01.000000005Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31 23:59:59
        assert_eq!(rfc3339(t), "2026-12-31T23:59:59.000000000Z");
    }

    #[tokio::test]
    async fn endpoints_answer_with_kube_proxy_bodies_and_codes() {
        let state = HealthState::new(Duration::from_millis(200));
        let srv = serve_health("127.0.0.1:0".parse().unwrap(), state.clone()).unwrap();
        let addr = srv.local_addr();

        let (code, ctype, body) = http::get(addr, "/healthz").await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(ctype, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["nodeEligible"], true);
        assert_eq!(v["lastUpdated"], v["currentTime"], "healthy: lastUpdated is now");
        assert_eq!(http::get(addr, "/livez").await.0, 200);
        assert_eq!(http::get(addr, "/readyz").await.0, 503, "not ready before set_ready");
        state.set_ready();
        assert_eq!(http::get(addr, "/readyz").await.0, 200);

        // A pending update older than the timeout: 503 on healthz and livez.
        state.synced();
        let synced_at = state.check().last_updated.unwrap();
        state.queued_at(Instant::now().checked_sub(Duration::from_secs(1)).unwrap());
        let (code, _, body) = http::get(addr, "/healthz").await;
        assert_eq!(code, 503, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["lastUpdated"], rfc3339(synced_at));
        assert_ne!(v["lastUpdated"], v["currentTime"]);
        assert_eq!(http::get(addr, "/livez").await.0, 503);
        state.synced();
        assert_eq!(http::get(addr, "/healthz").await.0, 200);

        // Node not eligible: healthz 503, livez still 200.
        state.set_node_eligible(false);
        let (code, _, body) = http::get(addr, "/healthz").await;
        assert_eq!(code, 503);
        assert!(body.contains(r#""nodeEligible": false"#), "{body}");
        assert_eq!(http::get(addr, "/livez").await.0, 200);
        assert_eq!(http::get(addr, "/nope").await.0, 404);

        let [h200, h503, l200, l503] = state.response_counts();
        assert_eq!((h200, h503, l200, l503), (2, 2, 2, 1));

        srv.shutdown().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn bind_errors_name_the_server_and_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve_health(addr, HealthState::new(T)).unwrap_err().to_string();
        assert!(err.contains("health") && err.contains(&addr.to_string()), "{err}");
    }
}
