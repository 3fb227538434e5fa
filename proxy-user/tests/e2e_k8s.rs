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

fn service_json(name: &str, ip: &str, labels: &Value) -> Value {
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
            serde_json::from_value(service_json("plain", "10.96.0.1", &json!({}))).unwrap();
        let created = services.create(&PostParams::default(), &plain).await.unwrap();
        assert!(created.metadata.resource_version.is_some());
        let other: Service = serde_json::from_value(service_json(
            "other",
            "10.96.0.2",
            &json!({"service.kubernetes.io/service-proxy-name": "someone-else"}),
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
                    seen.push(format!("MODIFIED {}", s.metadata.name.unwrap()));
                }
                kube::api::WatchEvent::Deleted(s) => {
                    seen.push(format!("DELETED {}", s.metadata.name.unwrap()));
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
    server.apply(&service_json("web", "10.96.0.10", &json!({}))).unwrap();
    server.apply(&slice_json("web-1", "web", &["10.244.0.11"])).unwrap();
    // Another proxy's service is not even listed.
    server
        .apply(&service_json(
            "theirs",
            "10.96.0.20",
            &json!({"service.kubernetes.io/service-proxy-name": "other"}),
        ))
        .unwrap();
    let rt = runtime();
    let client = client(&rt, &server, &dir);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let source = rt.block_on(async { KubeSource::start(&client, "node-a", &tx) });

    let snapshot = |source: &KubeSource| {
        source.with_store(|ks| {
            let inputs = ks.inputs();
            let mut names: Vec<String> = inputs.services().map(|(k, _)| k.name.clone()).collect();
            names.extend(inputs.slices().flat_map(|(_, s)| {
                s.usable.iter().flat_map(|(_, e)| e.endpoints.iter().map(|e| e.addr.to_string()))
            }));
            names.extend(inputs.nodes.keys().cloned());
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

/// `--kubeconfig` naming a missing file: exit non-zero with one line naming
/// it. Needs no root (the agent stops while checking its flags).
#[test]
fn agent_rejects_missing_kubeconfig() {
    let out = sluice::testbed::run_with_timeout(
        std::process::Command::new(sluice_bin())
            .env_remove("KUBECONFIG")
            .args(["agent", "--kubeconfig", "/nonexistent/sluice-kubeconfig", "--node-name", "n"])
            .args(["--bpffs-root", "/nonexistent/sluice-bpffs"]),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(!out.status.success(), "exit {}", out.status);
    let stderr = out.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--kubeconfig /nonexistent/sluice-kubeconfig"), "{stderr}");
    assert!(stderr.contains("No such file"), "{stderr}");
}

/// A node with three backend pods (TCP echo servers), a client pod, the test
/// API server on the node's loopback and a kubeconfig for it.
struct Cluster {
    // Dropped in declaration order: the agent before the server, pods and
    // namespaces before the bpffs and the directory.
    agent: Option<Agent>,
    server: ApiServer,
    _servers: Vec<EchoServer>,
    client: Pod,
    pods: Vec<Pod>,
    node: Node,
    cgroup: TestCgroup,
    bpffs: BpffsMount,
    dir: TestDir,
}

const NAMES: [&str; 3] = ["backend-a", "backend-b", "backend-c"];

impl Cluster {
    fn new(label: &str) -> Cluster {
        sweep_stale();
        let dir = TestDir::new(label).unwrap();
        let bpffs = BpffsMount::new_in(&dir).unwrap();
        let cgroup = TestCgroup::new(label).unwrap();
        let node = Node::new("node-a").unwrap();
        let pods: Vec<_> = NAMES.iter().map(|n| node.add_pod(n).unwrap()).collect();
        let client = node.add_pod("client").unwrap();
        let servers =
            pods.iter().map(|p| EchoServer::start(p, p.name(), TARGET, 0).unwrap()).collect();
        let server = ApiServer::start_in(&node).unwrap();
        server.write_kubeconfig(&dir.join("kubeconfig")).unwrap();
        server
            .apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name()},
                           "spec": {"podCIDR": node.pod_cidr(), "podCIDRs": [node.pod_cidr()]},
                           "status": {"addresses": [{"type": "InternalIP",
                                                     "address": node.address().to_string()}]}}))
            .unwrap();
        Cluster { agent: None, server, _servers: servers, client, pods, node, cgroup, bpffs, dir }
    }

    fn start_agent(&mut self) -> &mut Agent {
        let cfg = AgentConfig::with_kubeconfig(
            sluice_bin(),
            &self.node,
            &self.dir.join("kubeconfig"),
            &self.bpffs,
            Some(&self.cgroup),
            &self.dir,
        );
        self.agent = Some(Agent::start(&self.node, cfg).unwrap());
        self.agent()
    }

    fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("agent started")
    }

    fn backends(&self, which: &[usize]) -> Vec<Backend> {
        which.iter().map(|&i| Backend::of_pod(&self.pods[i], &self.node)).collect()
    }

    /// Creates or replaces the Service `echo` and its EndpointSlice.
    fn apply_service(&self, backends: Vec<Backend>) -> Vec<Value> {
        let svc = ClusterIpService::new(
            "echo",
            VIP,
            vec![ServicePort::new("tcp", Protocol::Tcp, PORT, TARGET)],
            backends,
        );
        self.server.apply_yaml(&svc.to_yaml()).unwrap()
    }

    /// Waits until the frontend's backends are exactly these pods in these
    /// states (`active`: takes new flows; `terminating`: keeps its flows).
    fn wait_states(&mut self, want: &[(usize, &str)]) {
        let mut want: Vec<(String, String)> = want
            .iter()
            .map(|&(i, state)| (self.pods[i].ip().to_string(), state.to_owned()))
            .collect();
        want.sort();
        self.agent()
            .wait_services(WAIT, |s| {
                sluice::testbed::find_service(s, VIP, PORT, Protocol::Tcp).is_some_and(|f| {
                    let mut got: Vec<(String, String)> =
                        f.backends.iter().map(|b| (b.address.clone(), b.state.clone())).collect();
                    got.sort();
                    got == want
                })
            })
            .unwrap();
    }

    /// Waits until the frontend has exactly these backend addresses (any state).
    fn wait_addresses(&mut self, which: &[usize]) {
        let mut want: Vec<String> = which.iter().map(|&i| self.pods[i].ip().to_string()).collect();
        want.sort();
        self.agent()
            .wait_services(WAIT, |s| {
                sluice::testbed::find_service(s, VIP, PORT, Protocol::Tcp).is_some_and(|f| {
                    let mut got: Vec<String> =
                        f.backends.iter().map(|b| b.address.clone()).collect();
                    got.sort();
                    got == want
                })
            })
            .unwrap();
    }

    /// `n` connections to the VIP (the first retried for up to 5 s while the
    /// pod program gets attached); answers by backend name.
    fn requests(&self, n: usize) -> std::collections::BTreeMap<String, usize> {
        let vip = SocketAddrV4::new(VIP, PORT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = tcp_request(&self.client, vip, IO_TIMEOUT) {
            assert!(Instant::now() < deadline, "no connection to {vip}: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
        tally((0..n).map(|i| {
            tcp_request(&self.client, vip, IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"))
        }))
    }
}

fn skip_without_agent(test: &str) -> bool {
    if !require_root() {
        return true;
    }
    if !sluice_has_agent(sluice_bin()) {
        eprintln!("skipping {test}: {} has no `agent` command", sluice_bin().display());
        return true;
    }
    false
}

/// Every answer from one of `names`, each at least `min` times.
fn assert_spread(counts: &std::collections::BTreeMap<String, usize>, names: &[&str], min: usize) {
    let total: usize = counts.values().sum();
    for (name, count) in counts {
        assert!(names.contains(&name.as_str()), "answer from {name}: {counts:?}");
        let _ = count;
    }
    for name in names {
        let c = counts.get(*name).copied().unwrap_or(0);
        assert!(c >= min, "{name} got {c} of {total}: {counts:?}");
    }
}

/// Sets the conditions of endpoints `which` of an EndpointSlice to
/// terminating but still serving.
fn mark_terminating(slice: &mut Value, which: &[usize]) {
    for (i, ep) in slice["endpoints"].as_array_mut().unwrap().iter_mut().enumerate() {
        if which.contains(&i) {
            ep["conditions"] = json!({"ready": false, "serving": true, "terminating": true});
        }
    }
}

/// The agent binary with `--kubeconfig`: a Service and EndpointSlice created
/// through the API become reachable; scaling balances over the new set;
/// terminating endpoints are not used while another endpoint is ready;
/// deleting the Service rejects connections at once.
#[test]
fn agent_follows_the_api_server() {
    if skip_without_agent("agent_follows_the_api_server") {
        return;
    }
    let mut c = Cluster::new("k8s-follow");
    c.apply_service(c.backends(&[0, 1]));
    c.start_agent();
    c.agent().wait_backends(WAIT, VIP, PORT, Protocol::Tcp, 2).unwrap();
    let counts = c.requests(100);
    eprintln!("two backends: {counts:?}");
    assert_spread(&counts, &NAMES[..2], 20);

    // An object the model cannot use (the test server does not validate, as
    // a real one would) is skipped with a warning naming it; the rest works.
    c.server
        .apply(&json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "bad", "namespace": "default"},
                       "spec": {"clusterIP": "10.96.0.99",
                                "ports": [{"port": 70000, "protocol": "TCP"}]}}))
        .unwrap();
    wait_for(WAIT, "the warning about default/bad", || {
        c.agent
            .as_ref()
            .unwrap()
            .log()
            .contains("skipped: Service default/bad: field spec.ports[0].port")
    });

    // Scale to three.
    c.apply_service(c.backends(&[0, 1, 2]));
    c.agent().wait_backends(WAIT, VIP, PORT, Protocol::Tcp, 3).unwrap();
    let counts = c.requests(300);
    eprintln!("three backends: {counts:?}");
    assert_spread(&counts, &NAMES, 45);

    // One endpoint ready, the others terminating: only the ready one takes
    // new connections (the others keep the flows they have).
    let objects = c.apply_service(c.backends(&[0, 1, 2]));
    let mut slice = objects.into_iter().find(|o| o["kind"] == "EndpointSlice").unwrap();
    mark_terminating(&mut slice, &[1, 2]);
    c.server.apply(&slice).unwrap();
    c.wait_states(&[(0, "active"), (1, "terminating"), (2, "terminating")]);
    let counts = c.requests(30);
    assert_spread(&counts, &NAMES[..1], 30);

    // Delete: connections are rejected, quickly.
    c.server.delete::<Service>("default", "echo").unwrap();
    c.agent().wait_gone(WAIT, VIP, PORT, Protocol::Tcp).unwrap();
    let started = Instant::now();
    let r = tcp_request(&c.client, SocketAddrV4::new(VIP, PORT), IO_TIMEOUT);
    assert!(r.is_err(), "connection to a deleted service answered: {r:?}");
    assert!(started.elapsed() < IO_TIMEOUT * 4);

    assert!(c.server.unknown_requests().is_empty(), "{:?}", c.server.unknown_requests());
    let status = c.agent().stop().unwrap();
    assert!(status.success(), "agent exit {status}; log:\n{}", c.agent().log());
}

/// Watch connections cut by the server while a change is made: the agent
/// converges once it can watch again. Then the history is compacted during
/// an outage: the agent's watch gets 410, it re-lists, and an EndpointSlice
/// deleted meanwhile stops being used.
#[test]
fn agent_reconverges_after_watch_outages() {
    if skip_without_agent("agent_reconverges_after_watch_outages") {
        return;
    }
    let mut c = Cluster::new("k8s-outage");
    c.apply_service(c.backends(&[0, 1]));
    c.start_agent();
    c.agent().wait_backends(WAIT, VIP, PORT, Protocol::Tcp, 2).unwrap();
    assert_spread(&c.requests(60), &NAMES[..2], 10);

    // Outage 1: cut and refuse the watches; move the service to backend-c.
    wait_for(WAIT, "the agent's three watches", || c.server.active_watches() == 3);
    c.server.block_watches(true);
    c.server.drop_watches();
    wait_for(WAIT, "the watches to be gone", || c.server.active_watches() == 0);
    c.apply_service(c.backends(&[2]));
    std::thread::sleep(Duration::from_millis(500));
    c.wait_addresses(&[0, 1]); // nothing seen yet
    c.server.block_watches(false);
    c.wait_addresses(&[2]);
    assert_spread(&c.requests(30), &NAMES[2..], 30);

    // Outage 2 with compaction: the slice is replaced by another one.
    let lists = c.server.lists(Resource::EndpointSlices);
    wait_for(WAIT, "the agent's three watches", || c.server.active_watches() == 3);
    c.server.block_watches(true);
    c.server.drop_watches();
    wait_for(WAIT, "the watches to be gone", || c.server.active_watches() == 0);
    c.server.delete::<EndpointSlice>("default", "echo-sluice").unwrap();
    let objects = c.apply_service(c.backends(&[0]));
    let mut slice = objects.into_iter().find(|o| o["kind"] == "EndpointSlice").unwrap();
    c.server.delete::<EndpointSlice>("default", "echo-sluice").unwrap();
    slice["metadata"]["name"] = "echo-replacement".into();
    c.server.create(&slice).unwrap();
    c.server.compact();
    c.server.block_watches(false);
    c.wait_addresses(&[0]);
    assert!(c.server.lists(Resource::EndpointSlices) > lists, "no re-list after 410");
    assert_spread(&c.requests(30), &NAMES[..1], 30);

    let log = c.agent().log();
    assert!(log.contains("watch expired (410): re-listing"), "the re-list is not logged:\n{log}");
    let status = c.agent().stop().unwrap();
    assert!(status.success(), "agent exit {status}; log:\n{}", c.agent().log());
}

/// A restarted agent that cannot complete its initial lists keeps what the
/// previous one programmed (pinned) instead of withdrawing it, and takes
/// over once the lists complete.
#[test]
fn agent_programs_nothing_before_the_initial_lists() {
    if skip_without_agent("agent_programs_nothing_before_the_initial_lists") {
        return;
    }
    let mut c = Cluster::new("k8s-initial");
    c.apply_service(c.backends(&[0, 1]));
    c.start_agent();
    c.agent().wait_backends(WAIT, VIP, PORT, Protocol::Tcp, 2).unwrap();
    let status = c.agent().stop().unwrap();
    assert!(status.success(), "{status}");

    // The Service is deleted while no agent runs, and lists fail.
    c.server.delete::<Service>("default", "echo").unwrap();
    c.server.block_lists(true);
    c.start_agent();
    wait_for(WAIT, "the agent's list attempts", || {
        c.server.requests().iter().filter(|r| r.list && r.status == 503).count() >= 3
    });
    std::thread::sleep(Duration::from_secs(1));
    // Still programmed and reachable.
    let services = c.agent().services().unwrap();
    assert!(
        sluice::testbed::find_service(&services, VIP, PORT, Protocol::Tcp).is_some(),
        "withdrawn before the initial list: {services:?}"
    );
    assert_spread(&c.requests(20), &NAMES[..2], 1);

    // Lists work again: the deletion is seen.
    c.server.block_lists(false);
    c.agent().wait_gone(WAIT, VIP, PORT, Protocol::Tcp).unwrap();
    let status = c.agent().stop().unwrap();
    assert!(status.success(), "agent exit {status}; log:\n{}", c.agent().log());
}

/// kube-proxy's fallback: when no endpoint is ready, endpoints that are
/// terminating but still serving get the new connections.
#[test]
fn agent_terminating_endpoints_fallback() {
    if skip_without_agent("agent_terminating_endpoints_fallback") {
        return;
    }
    let mut c = Cluster::new("k8s-terminating");
    let objects = c.apply_service(c.backends(&[0, 1, 2]));
    c.start_agent();
    c.agent().wait_backends(WAIT, VIP, PORT, Protocol::Tcp, 3).unwrap();
    let mut slice = objects.into_iter().find(|o| o["kind"] == "EndpointSlice").unwrap();
    // While one is ready, the terminating ones take no new flows...
    mark_terminating(&mut slice, &[1, 2]);
    c.server.apply(&slice).unwrap();
    c.wait_states(&[(0, "active"), (1, "terminating"), (2, "terminating")]);
    // ... once none is ready, the serving-and-terminating ones take them all.
    mark_terminating(&mut slice, &[0, 1, 2]);
    c.server.apply(&slice).unwrap();
    c.wait_states(&[(0, "active"), (1, "active"), (2, "active")]);
    let counts = c.requests(90);
    eprintln!("all terminating: {counts:?}");
    assert_spread(&counts, &NAMES, 10);
    let status = c.agent().stop().unwrap();
    assert!(status.success(), "agent exit {status}; log:\n{}", c.agent().log());
}
