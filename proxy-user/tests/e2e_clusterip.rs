//! End-to-end: a node namespace, backend pods with echo servers, a client
//! pod and `sluice agent` serving a ClusterIP Service from a manifest
//! directory. Needs root; without it every test here prints
//! `skipping <test>: needs root` and passes.
//!
//! `testbed_*` tests check the test hosts alone, with plain routing (no agent).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use sluice::testbed::{
    Agent, AgentConfig, Backend, BpffsMount, ClusterIpService, EchoServer, ManifestDir, Netns,
    Node, Protocol, ServicePort, TestCgroup, TestDir, require_root, sluice_has_agent, sweep_stale,
    tally, tcp_request, udp_request,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TCP_PORT: u16 = 80;
const TCP_TARGET: u16 = 8080;
const UDP_PORT: u16 = 53;
const UDP_TARGET: u16 = 5353;
const IO_TIMEOUT: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(20);

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

/// Pods reach each other by pod IP through the node (TCP, UDP, ICMP); the
/// bpffs is visible inside the node namespace; everything is gone afterwards.
#[test]
fn testbed_routes_pod_to_pod() {
    if !require_root() {
        return;
    }
    sweep_stale();
    let (names, bpffs_path, dir_path);
    {
        let dir = TestDir::new("routes").unwrap();
        let bpffs = BpffsMount::new_in(&dir).unwrap();
        let node = Node::new("node-a").unwrap();
        let a = node.add_pod("pod-a").unwrap();
        let b = node.add_pod("pod-b").unwrap();
        let client = node.add_pod("client").unwrap();
        let _sa = EchoServer::start(&a, "pod-a", 8080, 5353).unwrap();
        let sb = EchoServer::start(&b, "pod-b", 8080, 5353).unwrap();

        assert_eq!(node.netns().read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
        assert_eq!(node.netns().read_sysctl("net.ipv4.conf.all.rp_filter").unwrap(), "0");
        assert!(a.host_if().starts_with("sl") && a.host_if().len() == 14, "{}", a.host_if());
        assert_ne!(a.host_if(), b.host_if());
        assert_eq!(a.ip(), Ipv4Addr::new(10, 244, 0, 11));

        for (pod, name) in [(&a, "pod-a"), (&b, "pod-b")] {
            let tcp = SocketAddrV4::new(pod.ip(), 8080);
            let udp = SocketAddrV4::new(pod.ip(), 5353);
            assert_eq!(tcp_request(&client, tcp, IO_TIMEOUT).unwrap(), name);
            assert_eq!(udp_request(&client, udp, IO_TIMEOUT).unwrap(), name);
        }
        // Pod to pod in the other direction, and many connections in a row.
        for _ in 0..50 {
            let got = tcp_request(&a, SocketAddrV4::new(b.ip(), 8080), IO_TIMEOUT).unwrap();
            assert_eq!(got, "pod-b");
        }
        assert!(sb.tcp_hits() >= 51, "pod-b saw {} connections", sb.tcp_hits());

        // ICMP, when `ping` is installed, from a command that only switched
        // the network namespace.
        match client
            .netns()
            .command("ping")
            .unwrap()
            .args(["-c", "1", "-W", "1"])
            .arg(a.ip().to_string())
            .output()
        {
            Ok(ping) => {
                assert!(ping.status.success(), "ping: {}", String::from_utf8_lossy(&ping.stdout));
            }
            Err(e) => eprintln!("not checking ICMP: running ping: {e}"),
        }

        // The test's bpffs is visible from a process in the node namespace.
        let stat = sluice::testbed::run_checked(
            node.netns().command("stat").unwrap().args(["-f", "-c", "%T"]).arg(bpffs.path()),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(stat.trim(), "bpf_fs");

        // Nothing routes to the service range without an agent: fails fast.
        let vip = SocketAddrV4::new(VIP, TCP_PORT);
        let started = std::time::Instant::now();
        assert!(tcp_request(&client, vip, IO_TIMEOUT).is_err());
        assert!(started.elapsed() < IO_TIMEOUT * 4);

        names = [node.netns(), a.netns(), b.netns(), client.netns()].map(|n| n.name().to_owned());
        for n in &names {
            assert!(netns_exists(n), "{n} should exist");
        }
        bpffs_path = bpffs.path().to_owned();
        dir_path = dir.path().to_owned();
    }
    for n in &names {
        assert!(!netns_exists(n), "{n} should be deleted");
    }
    assert!(!bpffs_path.exists() && !dir_path.exists());
}

/// Guards clean up while unwinding from a panic.
#[test]
fn testbed_cleans_up_on_panic() {
    if !require_root() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::panic::catch_unwind(move || {
        let dir = TestDir::new("panic").unwrap();
        let bpffs = BpffsMount::new_in(&dir).unwrap();
        let ns = Netns::new("panic").unwrap();
        tx.send((ns.name().to_owned(), bpffs.path().to_owned(), dir.path().to_owned())).unwrap();
        panic!("deliberate");
    });
    assert!(r.is_err());
    let (ns, bpffs, dir) = rx.recv().unwrap();
    assert!(!netns_exists(&ns));
    assert!(!bpffs.exists() && !dir.exists());
}

fn echo_service(backends: Vec<Backend>) -> ClusterIpService {
    ClusterIpService::new(
        "echo",
        VIP,
        vec![
            ServicePort::new("tcp", Protocol::Tcp, TCP_PORT, TCP_TARGET),
            ServicePort::new("udp", Protocol::Udp, UDP_PORT, UDP_TARGET),
        ],
        backends,
    )
}

/// The ClusterIP path through the agent: balancing over three backends, UDP,
/// a backend removed, the service deleted.
#[test]
fn clusterip_balances_follows_updates_and_deletion() {
    if !require_root() {
        return;
    }
    if !sluice_has_agent(sluice_bin()) {
        eprintln!(
            "skipping clusterip_balances_follows_updates_and_deletion: {} has no `agent` command yet",
            sluice_bin().display()
        );
        return;
    }
    sweep_stale();
    let dir = TestDir::new("e2e").unwrap();
    let bpffs = BpffsMount::new_in(&dir).unwrap();
    let cgroup = TestCgroup::new("e2e").unwrap();
    let node = Node::new("node-a").unwrap();
    let names = ["backend-a", "backend-b", "backend-c"];
    let pods: Vec<_> = names.iter().map(|n| node.add_pod(n).unwrap()).collect();
    let client = node.add_pod("client").unwrap();
    let _servers: Vec<_> = pods
        .iter()
        .map(|p| EchoServer::start(p, p.name(), TCP_TARGET, UDP_TARGET).unwrap())
        .collect();

    let manifests = ManifestDir::new_in(&dir).unwrap();
    manifests.write_node(&node).unwrap();
    let all: Vec<_> = pods.iter().map(|p| Backend::of_pod(p, &node)).collect();
    manifests.write_service(&echo_service(all.clone())).unwrap();

    let cfg = AgentConfig::new(sluice_bin(), &node, &manifests, &bpffs, Some(&cgroup), &dir);
    let mut agent = Agent::start(&node, cfg).unwrap();
    agent.wait_backends(WAIT, VIP, TCP_PORT, Protocol::Tcp, 3).unwrap();
    agent.wait_backends(WAIT, VIP, UDP_PORT, Protocol::Udp, 3).unwrap();

    // The pod program is attached within about a second of the interface
    // being seen; retry the first connection for a while.
    let tcp_vip = SocketAddrV4::new(VIP, TCP_PORT);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tcp_request(&client, tcp_vip, IO_TIMEOUT) {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("first connection to {tcp_vip}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("no connection to {tcp_vip}: {e}"),
        }
    }

    // 300 connections reach all three backends, each at least 15%.
    let answers = (0..300).map(|i| {
        tcp_request(&client, tcp_vip, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connection {i} to {tcp_vip}: {e}"))
    });
    let counts = tally(answers);
    eprintln!("TCP distribution over 300 connections: {counts:?}");
    for n in names {
        let c = counts.get(n).copied().unwrap_or(0);
        assert!(c >= 45, "{n} got {c} of 300 connections: {counts:?}");
    }
    assert_eq!(counts.values().sum::<usize>(), 300, "unexpected answers: {counts:?}");

    // UDP request/response through the VIP (the answer must come from the VIP:
    // the client's socket is connected to it).
    let udp_vip = SocketAddrV4::new(VIP, UDP_PORT);
    for _ in 0..5 {
        let got = udp_request(&client, udp_vip, IO_TIMEOUT).unwrap();
        assert!(names.contains(&got.as_str()), "UDP answer {got:?}");
    }

    // Remove backend-c; once the maps show two backends, it gets nothing new.
    manifests.write_service(&echo_service(all[..2].to_vec())).unwrap();
    let svc = agent.wait_backends(WAIT, VIP, TCP_PORT, Protocol::Tcp, 2).unwrap();
    assert!(svc.backends.iter().all(|b| b.address != pods[2].ip().to_string()), "{svc:?}");
    let counts = tally((0..100).map(|i| {
        tcp_request(&client, tcp_vip, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connection {i} after removal: {e}"))
    }));
    eprintln!("TCP distribution after removing backend-c: {counts:?}");
    assert!(!counts.contains_key("backend-c"), "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 100);

    // Delete the service: the VIP stops answering, within a bounded time.
    manifests.remove_service("default", "echo").unwrap();
    agent.wait_gone(WAIT, VIP, TCP_PORT, Protocol::Tcp).unwrap();
    let started = std::time::Instant::now();
    let r = tcp_request(&client, tcp_vip, IO_TIMEOUT);
    assert!(r.is_err(), "connection to deleted service answered: {r:?}");
    assert!(started.elapsed() < IO_TIMEOUT * 4);

    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit status {status}; log:\n{}", agent.log());
}

/// The agent guard against a stand-in binary (a shell script speaking the
/// same command line): the agent runs in the node's network namespace with
/// the test's flags, `wait_backends` polls `services -o json`, and `stop`
/// delivers SIGTERM.
#[test]
fn testbed_agent_guard_with_fake_binary() {
    if !require_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TestDir::new("fake").unwrap();
    let bpffs = BpffsMount::new_in(&dir).unwrap();
    let node = Node::new("node-a").unwrap();
    let manifests = ManifestDir::new_in(&dir).unwrap();
    let state = dir.join("fake-services.json");
    let script = format!(
        r#"#!/bin/sh
cmd="$1"; shift
root=""
while [ $# -gt 0 ]; do case "$1" in --bpffs-root) root="$2"; shift;; esac; shift; done
case "$cmd" in
agent)
    echo "netns $(readlink /proc/self/ns/net)"
    mkdir -p "$root"
    trap 'echo "got SIGTERM"; exit 0' TERM
    echo '[{{"address":"10.96.0.10","port":80,"protocol":"TCP","rev_nat_index":1,"backends":[{{"id":1,"address":"10.244.0.11","port":8080,"state":"active"}}]}}]' > '{state}'
    while :; do sleep 0.05; done ;;
services) cat '{state}' 2>/dev/null || echo '[]' ;;
*) echo "commands: agent services"; exit 0 ;;
esac
"#,
        state = state.display()
    );
    let bin = dir.join("fake-sluice");
    std::fs::write(&bin, script).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(sluice_has_agent(&bin));

    let cfg = AgentConfig::new(&bin, &node, &manifests, &bpffs, None, &dir);
    assert!(cfg.bpffs_root.starts_with(bpffs.path()));
    let mut agent = Agent::start(&node, cfg).unwrap();
    let svc = agent.wait_backends(WAIT, VIP, TCP_PORT, Protocol::Tcp, 1).unwrap();
    assert_eq!(svc.backends[0].address, "10.244.0.11");
    assert!(agent.config().bpffs_root.is_dir(), "the agent sees the test's bpffs");

    let inode = sluice::testbed::run_checked(
        std::process::Command::new("stat").args(["-L", "-c", "%i"]).arg(node.netns().path()),
        Duration::from_secs(5),
    )
    .unwrap();
    let log = agent.log();
    assert!(log.contains(&format!("netns net:[{}]", inode.trim())), "log: {log}");

    let status = agent.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(agent.log().contains("got SIGTERM"), "log: {}", agent.log());
}

/// What [`ManifestDir`] writes is what the agent's manifest reader and model
/// accept: two frontends with three active backends, no errors or warnings;
/// rewriting and removing follow. Needs no root.
#[test]
fn testbed_manifests_load_into_the_model() {
    use sluice::model::{self, BackendState, FrontendKey};
    let dir = TestDir::new("manifests").unwrap();
    let manifests = ManifestDir::new_in(&dir).unwrap();
    let ips = [11, 12, 13].map(|h| Ipv4Addr::new(10, 244, 0, h));
    let backends: Vec<_> = ["backend-a", "backend-b", "backend-c"]
        .iter()
        .zip(ips)
        .map(|(n, ip)| Backend { node_name: Some("node-a".to_owned()), ..Backend::ready(n, ip) })
        .collect();
    manifests.write_service(&echo_service(backends.clone())).unwrap();
    manifests.write_node_object("node-a", "10.244.0.0/24", Ipv4Addr::new(198, 18, 0, 1)).unwrap();

    let load = || {
        let out = sluice::manifest::load_dir(manifests.path()).unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert!(out.store.nodes.contains_key("node-a"), "{:?}", out.store.nodes);
        let (desired, warnings) = model::desired_state(&out.store, "node-a");
        assert!(warnings.is_empty(), "{warnings:?}");
        desired
    };
    let key = |port, proto| FrontendKey::new(VIP, port, proto);
    let desired = load();
    assert_eq!(desired.len(), 2, "{desired:?}");
    for (port, proto, target) in
        [(TCP_PORT, model::Protocol::Tcp, TCP_TARGET), (UDP_PORT, model::Protocol::Udp, UDP_TARGET)]
    {
        let f = &desired[&key(port, proto)];
        let got: Vec<_> = f.backends.iter().map(|b| (b.addr, b.port, b.state)).collect();
        let want: Vec<_> = ips.iter().map(|ip| (*ip, target, BackendState::Active)).collect();
        assert_eq!(got, want);
    }

    manifests.write_service(&echo_service(backends[..2].to_vec())).unwrap();
    assert_eq!(load()[&key(TCP_PORT, model::Protocol::Tcp)].backends.len(), 2);
    manifests.remove_service("default", "echo").unwrap();
    assert!(load().is_empty());
}
