//! healthCheckNodePort servers, like kube-proxy's service_health.go: for each
//! LoadBalancer Service with `externalTrafficPolicy: Local`, an HTTP server on
//! its `spec.healthCheckNodePort` that tells the cloud load balancer whether
//! this node has a local endpoint: `200` with the count of local ready
//! endpoints, `503` with none (or while the agent itself is unhealthy).
//!
//! The set of servers is reconciled on each sync by
//! [`HcServers::sync_services`]: new ports are opened, gone (or moved) ones
//! closed, and counts of the others updated in place, without a restart.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    Error,
    health::HealthState,
    http::{self, ServerHandle},
};
use crate::{
    manifest::{ObjectKey, Store},
    model,
};

/// One Service that needs a health check server on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HcService {
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// Local ready endpoints (distinct address:port over all its slices).
    pub local_endpoints: usize,
}

/// What the Local traffic policies of the Services mean on this node: the
/// health check servers to run and kube-proxy's
/// `sync_proxy_rules_no_local_endpoints_total` counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalPolicy {
    pub hc_services: BTreeMap<ObjectKey, HcService>,
    /// Service ports with `internalTrafficPolicy: Local`, endpoints in the
    /// cluster and none on this node.
    pub no_local_internal: usize,
    /// The same for `externalTrafficPolicy: Local`.
    pub no_local_external: usize,
}

/// Computes [`LocalPolicy`] for `node_name` from the objects in `store`, with
/// the model's semantics (same skipped services, same endpoint choice).
#[must_use]
pub fn local_policy(store: &Store, node_name: &str) -> LocalPolicy {
    let inputs = model::Inputs::from_store(store, node_name);
    local_policy_of(&inputs, inputs.services().map(|(k, _)| k))
}

/// [`local_policy`] of parsed inputs over the Services `keys` (those with a
/// Local policy; others are skipped), so a sync does not walk every
/// Service.
pub fn local_policy_of<'k>(
    inputs: &model::Inputs,
    keys: impl Iterator<Item = &'k ObjectKey>,
) -> LocalPolicy {
    let (node_name, zone) = (inputs.node_name(), inputs.zone());
    let mut out = LocalPolicy::default();
    for key in keys {
        let Some(service) = inputs.service(key) else { continue };
        if !service.local_policy {
            continue;
        }
        let service_slices = inputs.slices_of(key);
        for port in &service.ports {
            let endpoints = model::endpoints_for_port(port, &service_slices);
            let cat = model::categorize_endpoints(&endpoints, port, node_name, zone);
            let no_local = cat.has_any && cat.local.as_ref().is_some_and(Vec::is_empty);
            if no_local && port.internal_policy_local {
                out.no_local_internal += 1;
            }
            if no_local && port.external_policy_local {
                out.no_local_external += 1;
            }
        }
        // kube-proxy's NeedsHealthCheck: a LoadBalancer with eTP Local.
        let Some(port) = service.health_check_port else { continue };
        // kube-proxy's LocalReadyEndpoints: local and ready, distinct ip:port.
        let local: BTreeSet<(Ipv4Addr, u16)> = service_slices
            .iter()
            .flat_map(|s| {
                s.ports.iter().flat_map(move |(_, _, p)| {
                    s.endpoints.iter().filter(|e| e.is_local && e.ready).map(move |e| (e.addr, *p))
                })
            })
            .collect();
        out.hc_services.insert(key.clone(), HcService { port, local_endpoints: local.len() });
    }
    out
}

struct Instance {
    port: u16,
    servers: Vec<ServerHandle>,
}

type Counts = Arc<RwLock<BTreeMap<ObjectKey, usize>>>;

/// The healthCheckNodePort servers of this node.
pub struct HcServers {
    bind_ips: Vec<IpAddr>,
    health: HealthState,
    runtime: tokio::runtime::Handle,
    instances: BTreeMap<ObjectKey, Instance>,
    counts: Counts,
}

impl std::fmt::Debug for HcServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HcServers")
            .field("bind_ips", &self.bind_ips)
            .field("ports", &self.ports())
            .finish_non_exhaustive()
    }
}

/// A health check server that could not be opened (retried next sync).
#[derive(Debug)]
pub struct HcFailure {
    pub service: ObjectKey,
    pub error: Error,
}

#[derive(Clone)]
struct HandlerState {
    service: ObjectKey,
    counts: Counts,
    health: HealthState,
}

async fn answer(State(st): State<HandlerState>) -> Response {
    let count = st
        .counts
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&st.service)
        .copied()
        .unwrap_or(0);
    let healthy = st.health.is_healthy();
    let status =
        if count != 0 && healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "service": { "namespace": st.service.namespace, "name": st.service.name },
        "localEndpoints": count,
        "serviceProxyHealthy": healthy,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
        body.to_string(),
    )
        .into_response()
}

impl HcServers {
    /// Servers listen on each of `bind_ips` (kube-proxy: the node's
    /// NodePort addresses, or `0.0.0.0` for all). `health` gives
    /// `serviceProxyHealthy`. Must be called from within a tokio runtime.
    #[must_use]
    pub fn new(bind_ips: Vec<IpAddr>, health: HealthState) -> Self {
        Self {
            bind_ips,
            health,
            runtime: tokio::runtime::Handle::current(),
            instances: BTreeMap::new(),
            counts: Counts::default(),
        }
    }

    /// The open servers: Service -> port.
    #[must_use]
    pub fn ports(&self) -> BTreeMap<ObjectKey, u16> {
        self.instances.iter().map(|(k, i)| (k.clone(), i.port)).collect()
    }

    /// The addresses a Service's servers listen on (one per bind IP).
    #[must_use]
    pub fn local_addrs(&self, service: &ObjectKey) -> Vec<SocketAddr> {
        self.instances
            .get(service)
            .map(|i| i.servers.iter().map(ServerHandle::local_addr).collect())
            .unwrap_or_default()
    }

    /// Makes the servers match `services`: closes those gone or moved to
    /// another port, opens new ones, updates every local endpoint count.
    /// Servers that cannot be opened (port taken) are reported and retried
    /// on the next call.
    pub fn sync_services(&mut self, services: &BTreeMap<ObjectKey, HcService>) -> Vec<HcFailure> {
        {
            let mut counts = self.counts.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            *counts = services.iter().map(|(k, s)| (k.clone(), s.local_endpoints)).collect();
        }
        self.instances.retain(|key, inst| {
            let keep = services.get(key).is_some_and(|s| s.port == inst.port);
            if !keep {
                tracing::info!(service = %key, port = inst.port, "closing health check server");
            }
            keep // dropping the handles stops the servers
        });
        let mut failures = Vec::new();
        for (key, svc) in services {
            if self.instances.contains_key(key) {
                continue;
            }
            match self.open(key, svc.port) {
                Ok(servers) => {
                    tracing::info!(service = %key, port = svc.port, "opened health check server");
                    self.instances.insert(key.clone(), Instance { port: svc.port, servers });
                }
                Err(error) => {
                    tracing::warn!(service = %key, port = svc.port, %error, "cannot open health check server; will retry");
                    failures.push(HcFailure { service: key.clone(), error });
                }
            }
        }
        failures
    }

    fn open(&self, key: &ObjectKey, port: u16) -> super::Result<Vec<ServerHandle>> {
        let mut servers = Vec::with_capacity(self.bind_ips.len());
        for ip in &self.bind_ips {
            // On error the servers opened so far are dropped (closed).
            let listener = http::bind("healthCheckNodePort", SocketAddr::new(*ip, port))?;
            let state = HandlerState {
                service: key.clone(),
                counts: Arc::clone(&self.counts),
                health: self.health.clone(),
            };
            // kube-proxy answers on every path.
            let router = Router::new().fallback(answer).with_state(state);
            servers.push(http::spawn("healthCheckNodePort", &self.runtime, listener, router)?);
        }
        Ok(servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::time::Duration;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn svc(port: u16, n: usize) -> HcService {
        HcService { port, local_endpoints: n }
    }

    #[tokio::test]
    async fn servers_follow_the_services_and_their_counts() {
        let health = HealthState::new(Duration::from_secs(60));
        let mut hc = HcServers::new(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)], health.clone());
        let (a, b) = (ObjectKey::new("ns", "a"), ObjectKey::new("ns", "b"));
        let (pa, pb) = (free_port(), free_port());
        let mut want = BTreeMap::from([(a.clone(), svc(pa, 2)), (b.clone(), svc(pb, 0))]);
        assert!(hc.sync_services(&want).is_empty());
        let addr_a = SocketAddr::from((Ipv4Addr::LOCALHOST, pa));
        let addr_b = SocketAddr::from((Ipv4Addr::LOCALHOST, pb));
        assert_eq!(hc.local_addrs(&a), vec![addr_a]);

        let (code, ctype, body) = http::get(addr_a, "/").await;
        assert_eq!((code, ctype.as_str()), (200, "application/json"), "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!({"service": {"namespace": "ns", "name": "a"}, "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        let (code, _, body) = http::get(addr_b, "/any/path").await;
        assert_eq!(code, 503, "no local endpoint: {body}");
        assert!(body.contains(r#""localEndpoints":0"#), "{body}");

        // Counts change in place: same listener, new answer.
        want.insert(b.clone(), svc(pb, 1));
        want.insert(a.clone(), svc(pa, 0));
        assert!(hc.sync_services(&want).is_empty());
        assert_eq!(http::get(addr_b, "/").await.0, 200);
        assert_eq!(http::get(addr_a, "/").await.0, 503);

        // The agent unhealthy: 503 even with local endpoints.
        health.queued_at(std::time::Instant::now().checked_sub(Duration::from_secs(120)).unwrap());
        let (code, _, body) = http::get(addr_b, "/").await;
        assert_eq!(code, 503);
        assert!(body.contains(r#""serviceProxyHealthy":false"#), "{body}");
        health.synced();

        // a moves to another port, b goes away.
        let pa2 = free_port();
        let want = BTreeMap::from([(a.clone(), svc(pa2, 1))]);
        assert!(hc.sync_services(&want).is_empty());
        assert_eq!(hc.ports(), BTreeMap::from([(a.clone(), pa2)]));
        assert_eq!(http::get(SocketAddr::from((Ipv4Addr::LOCALHOST, pa2)), "/").await.0, 200);
        for gone in [addr_a, addr_b] {
            // Graceful shutdown closes the listener promptly.
            let mut closed = false;
            for _ in 0..50 {
                if tokio::net::TcpStream::connect(gone).await.is_err() {
                    closed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(closed, "{gone} still accepts connections");
        }
        hc.sync_services(&BTreeMap::new());
        assert!(hc.ports().is_empty());
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_and_retried() {
        let health = HealthState::new(Duration::from_secs(60));
        let mut hc = HcServers::new(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)], health);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let key = ObjectKey::new("ns", "lb");
        let want = BTreeMap::from([(key.clone(), svc(port, 1))]);
        let failures = hc.sync_services(&want);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].service, key);
        assert!(failures[0].error.to_string().contains(&port.to_string()));
        assert!(hc.ports().is_empty());
        drop(taken);
        assert!(hc.sync_services(&want).is_empty(), "retried once the port is free");
        assert_eq!(hc.ports().get(&key), Some(&port));
    }

    fn store(objects: &Value) -> Store {
        let mut store = Store::default();
        for o in objects.as_array().unwrap() {
            match o["kind"].as_str().unwrap() {
                "Service" => {
                    let s: k8s_openapi::api::core::v1::Service =
                        serde_json::from_value(o.clone()).unwrap();
                    store.services.insert(ObjectKey::of(&s.metadata), s);
                }
                "EndpointSlice" => {
                    let s: k8s_openapi::api::discovery::v1::EndpointSlice =
                        serde_json::from_value(o.clone()).unwrap();
                    store.endpoint_slices.insert(ObjectKey::of(&s.metadata), s);
                }
                k => panic!("{k}"),
            }
        }
        store
    }

    fn service(name: &str, spec: &Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"namespace": "ns", "name": name}, "spec": spec})
    }

    fn slice(service: &str, endpoints: &Value) -> Value {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"namespace": "ns", "name": format!("{service}-1"),
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": endpoints})
    }

    #[test]
    fn local_policy_counts_like_kube_proxy() {
        let lb_local = json!({"type": "LoadBalancer", "clusterIP": "10.96.0.10",
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]});
        let lb_cluster = json!({"type": "LoadBalancer", "clusterIP": "10.96.0.11",
            "externalTrafficPolicy": "Cluster",
            "ports": [{"name": "http", "port": 80, "nodePort": 30081}]});
        let itp_local = json!({"clusterIP": "10.96.0.12", "internalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80}]});
        let ep = |ip: &str, node: &str, ready: bool| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}});
        let objects = json!([
            service("web", &lb_local),
            slice(
                "web",
                &json!([
                    ep("10.244.1.2", "n1", true),
                    ep("10.244.1.3", "n1", false),
                    ep("10.244.2.2", "n2", true)
                ])
            ),
            service(
                "other",
                &lb_local
                    .clone()
                    .as_object()
                    .map(|o| {
                        let mut o = o.clone();
                        o.insert("clusterIP".into(), json!("10.96.0.13"));
                        o.insert("healthCheckNodePort".into(), json!(32001));
                        Value::Object(o)
                    })
                    .unwrap()
            ),
            slice("other", &json!([ep("10.244.2.3", "n2", true)])),
            service("cl", &lb_cluster),
            slice("cl", &json!([ep("10.244.1.4", "n1", true)])),
            service("itp", &itp_local),
            slice("itp", &json!([ep("10.244.2.4", "n2", true)])),
        ]);
        let lp = local_policy(&store(&objects), "n1");
        assert_eq!(
            lp.hc_services,
            BTreeMap::from([
                (ObjectKey::new("ns", "other"), svc(32001, 0)),
                (ObjectKey::new("ns", "web"), svc(32000, 1)),
            ])
        );
        assert_eq!(lp.no_local_external, 1, "other: endpoints only on n2");
        assert_eq!(lp.no_local_internal, 1, "itp: endpoints only on n2");
        let lp2 = local_policy(&store(&objects), "n2");
        assert_eq!(lp2.hc_services[&ObjectKey::new("ns", "web")].local_endpoints, 1);
        assert_eq!((lp2.no_local_external, lp2.no_local_internal), (0, 0));
    }
}
