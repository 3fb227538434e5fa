//! The Kubernetes API source against the test API server
//! (`sluice::testbed::apiserver`).
//!
//! `apiserver_*` and `source_*` tests need no root: a kube-rs client and the
//! agent's watchers ([`sluice::k8s::KubeSource`]) talk to the server on the
//! loopback of the test's own namespace. `agent_*` tests run the real agent
//! binary with `--kubeconfig` inside a node namespace, the server listening
//! on that namespace's loopback, with real traffic between pods; they need
//! root and otherwise print `skipping <test>: needs root` and pass.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node as NodeObject, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use sluice::k8s::{ApiConfig, KubeSource};
use sluice::testbed::apiserver::{ApiServer, Resource};
use sluice::testbed::{
    Agent, AgentConfig, Backend, BpffsMount, ClusterIpService, EchoServer, Node, Pod, Protocol,
    ServicePort, TestCgroup, TestDir, require_root, sluice_has_agent, sweep_stale, tally,
    tcp_request,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const PORT: u16 = 80;
const TARGET: u16 = 8080;
const IO_TIMEOUT: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(20);

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn service_json(name: &str, ip: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default", "labels": labels},
           "spec": {"clusterIP": ip, "ports": [{"name": "tcp", "port": 80, "targetPort": 8080}]}})
}

fn slice_json(name: &str, service: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<_> =
        ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "default",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
           "endpoints": endpoints})
}

fn node_json(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "spec": {"podCIDRs": ["10.244.0.0/24"]}})
}

/// Polls `cond` every 50 ms for at most `timeout`.
fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A kube-rs client through a kubeconfig file, as the agent makes it.
fn client(rt: &tokio::runtime::Runtime, server: &ApiServer, dir: &TestDir) -> kube::Client {
    let path = dir.join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    let config = ApiConfig::from_kubeconfig(&path).unwrap();
    rt.block_on(config.client()).unwrap()
}

/// The protocol as kube-rs speaks it: create, get, list with the proxy's
/// label selector, replace, delete, conflicts, and a watch that sees the
/// changes (bookmarks included, which kube-rs asks for).
#[test]
fn apiserver_serves_kube_client() {
    let dir = TestDir::new("apiserver").unwrap();
    let server = ApiServer::start().unwrap();
    let rt = runtime();
    let client = client(&rt, &server, &dir);
    rt.block_on(async {
        let version = client.apiserver_version().await.unwrap();
        assert_eq!(version.minor, "33");

        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let plain: Service =
            serde_json::from_value(service_json("plain", "10.96.0.1", json!({}))).unwrap();
        let created = services.create(&PostParams::default(), &plain).await.unwrap();
        assert!(created.metadata.resource_version.is_some());
        let other: Service = serde_json::from_value(service_json(
            "other",
            "10.96.0.2",
            json!({"service.kubernetes.io/service-proxy-name": "someone-else"}),
        ))
        .unwrap();
        services.create(&PostParams::default(), &other).await.unwrap();
        let again = services.create(&PostParams::default(), &plain).await;
        assert!(matches!(again, Err(kube::Error::Api(ref s)) if s.code == 409), "{again:?}");

        let all = Api::<Service>::all(client.clone());
        let listed = all.list(&ListParams::default()).await.unwrap();
        assert_eq!(listed.items.len(), 2);
        let rv: u64 = listed.metadata.resource_version.as_deref().unwrap().parse().unwrap();
        assert_eq!(rv, server.resource_version());
        for (selector, want) in [
            (sluice::k8s::PROXY_LABEL_SELECTOR, vec!["plain"]),
            ("service.kubernetes.io/service-proxy-name", vec!["other"]),
            ("service.kubernetes.io/service-proxy-name=someone-else", vec!["other"]),
            ("service.kubernetes.io/service-proxy-name!=someone-else", vec!["plain"]),
        ] {
            let listed = all.list(&ListParams::default().labels(selector)).await.unwrap();
            let names: Vec<_> =
                listed.items.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
            assert_eq!(names, want, "selector {selector}");
        }

        // Replace with a stale resourceVersion: 409; with the current one: ok.
        let mut stale = created.clone();
        stale.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.9".into());
        let current = services.get("plain").await.unwrap();
        let mut fresh = current.clone();
        fresh.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.9".into());
        services.replace("plain", &PostParams::default(), &fresh).await.unwrap();
        let conflict = services.replace("plain", &PostParams::default(), &stale).await;
        assert!(matches!(conflict, Err(kube::Error::Api(ref s)) if s.code == 409), "{conflict:?}");

        // A watch from the list's resourceVersion sees what happens next.
        use futures::StreamExt as _;
        let mut events = all
            .watch(
                &kube::api::WatchParams::default().labels(sluice::k8s::PROXY_LABEL_SELECTOR),
                &rv.to_string(),
            )
            .await
            .unwrap()
            .boxed();
        services.delete("plain", &DeleteParams::default()).await.unwrap();
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.len() < 2 {
            let event = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("watch events within 5 s")
                .expect("stream open")
                .unwrap();
            match event {
                kube::api::WatchEvent::Modified(s) => {
                    seen.push(format!("MODIFIED {}", s.metadata.name.unwrap()))
                }
                kube::api::WatchEvent::Deleted(s) => {
                    seen.push(format!("DELETED {}", s.metadata.name.unwrap()))
                }
                kube::api::WatchEvent::Bookmark(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["MODIFIED plain", "DELETED plain"]);
    });
    assert!(server.get(Resource::Services, "default", "plain").is_none());
    assert!(server.unknown_requests().is_empty(), "{:?}", server.unknown_requests());
}

/// A watch from a resourceVersion older than the compacted history gets a
/// 410 Expired Status, as kube-apiserver sends it.
#[test]
fn apiserver_expired_resource_version_is_gone() {
    let dir = TestDir::new("apiserver-410").unwrap();
    let server = ApiServer::start().unwrap();
    server.apply(&node_json("node-a")).unwrap();
    let old = server.resource_version();
    server.apply(&node_json("node-b")).unwrap();
    server.compact();
    let rt = runtime();
    let client = client(&rt, &server, &dir);
    rt.block_on(async {
        use futures::StreamExt as _;
        let nodes = Api::<NodeObject>::all(client);
        let mut events = nodes
            .watch(&kube::api::WatchParams::default(), &old.to_string())
            .await
            .unwrap()
            .boxed();
        let first = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an event within 5 s")
            .expect("stream open")
            .unwrap();
        match first {
            kube::api::WatchEvent::Error(e) => {
                assert_eq!(e.code, 410);
                assert_eq!(e.reason, "Expired");
            }
            other => panic!("want ERROR 410, got {other:?}"),
        }
        // From the current version the watch is fine.
        let current = server.resource_version().to_string();
        let mut ok =
            nodes.watch(&kube::api::WatchParams::default(), &current).await.unwrap().boxed();
        server.delete::<NodeObject>("", "node-a").unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), ok.next()).await.unwrap().unwrap();
        assert!(matches!(next, Ok(kube::api::WatchEvent::Deleted(_))), "{next:?}");
    });
}

/// The agent's watchers against the server: nothing is ready until every kind
/// has been listed; changes arrive; a change made while the watches are down
/// arrives once they are back; after compaction (410) the watchers re-list,
/// and an object deleted meanwhile disappears.
#[test]
fn source_follows_changes_outages_and_relists() {
    let dir = TestDir::new("source").unwrap();
    let server = ApiServer::start().unwrap();
    server.apply(&service_json("web", "10.96.0.10", json!({}))).unwrap();
    server.apply(&slice_json("web-1", "web", &["10.244.0.11"])).unwrap();
    // Another proxy's service is not even listed.
    server
        .apply(&service_json(
            "theirs",
            "10.96.0.20",
            json!({"service.kubernetes.io/service-proxy-name": "other"}),
        ))
        .unwrap();
    let rt = runtime();
    let client = client(&rt, &server, &dir);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let source = rt.block_on(async { KubeSource::start(&client, &tx) });

    let snapshot = |source: &KubeSource| {
        source.with_store(|ks| {
            let store = ks.store();
            let mut names: Vec<String> = store.services.keys().map(|k| k.name.clone()).collect();
            names.extend(store.endpoint_slices.values().flat_map(|s| {
                s.endpoints.iter().flat_map(|e| e.addresses.clone()).collect::<Vec<_>>()
            }));
            names.extend(store.nodes.keys().cloned());
            (ks.is_ready(), names)
        })
    };
    // No Node list can complete yet? It can: an empty list is complete.
    wait_for(WAIT, "every kind listed", || snapshot(&source).0);
    assert_eq!(snapshot(&source).1, ["web", "10.244.0.11"]);
    assert!(rt.block_on(async { rx.recv().await }).is_some(), "a change notification");

    server.apply(&node_json("node-a")).unwrap();
    server.apply(&slice_json("web-1", "web", &["10.244.0.11", "10.244.0.12"])).unwrap();
    wait_for(WAIT, "the new endpoint and node", || {
        snapshot(&source).1 == ["web", "10.244.0.11", "10.244.0.12", "node-a"]
    });

    // Watches cut and refused for a while; a change meanwhile.
    wait_for(WAIT, "three open watches", || server.active_watches() == 3);
    let lists_before = server.lists(Resource::EndpointSlices);
    server.block_watches(true);
    server.drop_watches();
    wait_for(WAIT, "watches gone", || server.active_watches() == 0);
    server.apply(&slice_json("web-1", "web", &["10.244.0.13"])).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(snapshot(&source).1, ["web", "10.244.0.11", "10.244.0.12", "node-a"]);
    server.block_watches(false);
    wait_for(WAIT, "the change made during the outage", || {
        snapshot(&source).1 == ["web", "10.244.0.13", "node-a"]
    });
    // History was still there: resumed from the last resourceVersion.
    assert_eq!(server.lists(Resource::EndpointSlices), lists_before);

    // Now the history is compacted while the watches are down: 410 on the
    // next watch, a re-list, and the deleted slice is gone.
    wait_for(WAIT, "three open watches", || server.active_watches() == 3);
    server.block_watches(true);
    server.drop_watches();
    wait_for(WAIT, "watches gone", || server.active_watches() == 0);
    server.delete::<EndpointSlice>("default", "web-1").unwrap();
    server.apply(&slice_json("web-2", "web", &["10.244.0.14"])).unwrap();
    server.compact();
    server.block_watches(false);
    wait_for(WAIT, "the re-listed state", || {
        snapshot(&source).1 == ["web", "10.244.0.14", "node-a"]
    });
    assert!(
        server.lists(Resource::EndpointSlices) > lists_before,
        "no re-list of EndpointSlices after 410"
    );
    drop(source);
}
