//! End-to-end: the eBPF fast paths for pods on one node. `sluice agent` runs
//! in a node namespace, `sluice-cni` wires three pods (so each has its
//! `SL_ENDPOINTS` entry), and the same traffic runs once with
//! `--fast-path=true` and once with `--fast-path=false`: direct pod-to-pod
//! TCP and UDP, a ClusterIP (TCP and UDP) whose backend is a local pod, a
//! pod reaching itself through the ClusterIP (hairpin), and a 4 MiB TCP
//! transfer (GSO, partial checksums). Both runs must give the same answers
//! (including the source address each server sees); the fast run must show
//! its peer redirects in `SL_FWD_STATS` and no IPv4 forwarding by the
//! node's stack (`Ip: ForwDatagrams` unchanged), the plain run the reverse.
//! Needs root.
//!
//! Run: `unshare --mount --propagation private cargo test --release -p sluice --test e2e_fastpath`

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::datapath::{PinPaths, node::FastPathStats};
use sluice::testbed::{
    Agent, AgentConfig, Backend, BpffsMount, BulkServer, ClusterIpService, EchoServer, ManifestDir,
    Netns, Node, Protocol, Reply, ServicePort, TestDir, bulk_send, cni_add, cni_bin,
    cni_wait_ready, require_root, run_cni, sluice_has_agent, sweep_stale, tcp_request, udp_request,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(20);
const BULK_PORT: u16 = 9000;
const BULK_BYTES: usize = 4 << 20;
/// Requests per kind.
const ROUNDS: usize = 5;

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

/// `Ip: ForwDatagrams` of the namespace: packets the IPv4 stack forwarded.
fn forwarded(ns: &Netns) -> u64 {
    let snmp = ns
        .exec(Duration::from_secs(5), || std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .unwrap()
        .unwrap();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let names: Vec<&str> = ip.next().unwrap().split_whitespace().collect();
    let values: Vec<&str> = ip.next().unwrap().split_whitespace().collect();
    let i = names.iter().position(|n| *n == "ForwDatagrams").unwrap();
    values[i].parse().unwrap()
}

/// What one run saw.
#[derive(Debug)]
struct Outcome {
    /// Every answer, in order (server name and the peer it saw).
    answers: Vec<String>,
    /// Bytes the bulk receiver counted.
    bulk: usize,
    fwd: FastPathStats,
    stack_forwarded: u64,
}

/// One node, three CNI pods, an agent with `--fast-path=<fast>`; the traffic.
fn run(fast: bool, cni_bin: &Path) -> Outcome {
    let label = if fast { "fp-on" } else { "fp-off" };
    let dir = TestDir::new(label).unwrap();
    let bpffs = BpffsMount::new_in(&dir).unwrap();
    let node = Node::new("node-a").unwrap();
    let manifests = ManifestDir::new_in(&dir).unwrap();
    manifests.write_node(&node).unwrap();
    let mut cfg = AgentConfig::new(sluice_bin(), &node, &manifests, &bpffs, None, &dir);
    cfg.extra_args = vec!["--socket-lb=false".into(), format!("--fast-path={fast}")];
    let root = cfg.bpffs_root.clone();
    let conf = json!({
        "cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "sluice-cni",
        "podCIDR": node.pod_cidr(), "bpffsRoot": root, "dataDir": dir.join("cni-data"),
    });
    let mut agent = Agent::start(&node, cfg).unwrap();
    cni_wait_ready(cni_bin, node.netns(), &conf, &mut agent, WAIT).unwrap();
    let pods: Vec<Netns> =
        ["pod-a", "pod-b", "pod-c"].iter().map(|n| Netns::new(n).unwrap()).collect();
    let mut ips = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        ips.push(cni_add(cni_bin, node.netns(), &conf, &format!("sandbox{i}"), p).unwrap());
    }
    let _srv =
        EchoServer::start_replying(&pods[1], "pod-b", 8080, 5353, Reply::NameAndPeer).unwrap();
    let svc = ClusterIpService::new(
        "echo",
        VIP,
        vec![
            ServicePort::new("tcp", Protocol::Tcp, 80, 8080),
            ServicePort::new("udp", Protocol::Udp, 53, 5353),
        ],
        vec![Backend {
            node_name: Some(node.name().to_owned()),
            ..Backend::ready("pod-b", ips[1])
        }],
    );
    manifests.write_service(&svc).unwrap();
    agent.wait_backends(WAIT, VIP, 80, Protocol::Tcp, 1).unwrap();
    agent.wait_backends(WAIT, VIP, 53, Protocol::Udp, 1).unwrap();
    // The agent writes the pod address space with its first sync.
    let paths = PinPaths::new(&root);
    let before = FastPathStats::read(&paths).unwrap();
    let fwd_before = forwarded(node.netns());

    let mut answers = Vec::new();
    let b_tcp = SocketAddrV4::new(ips[1], 8080);
    let b_udp = SocketAddrV4::new(ips[1], 5353);
    let (vip_tcp, vip_udp) = (SocketAddrV4::new(VIP, 80), SocketAddrV4::new(VIP, 53));
    for _ in 0..ROUNDS {
        answers.push(tcp_request(&pods[0], b_tcp, IO_TIMEOUT).unwrap());
        answers.push(udp_request(&pods[0], b_udp, IO_TIMEOUT).unwrap());
        answers.push(tcp_request(&pods[0], vip_tcp, IO_TIMEOUT).unwrap());
        answers.push(udp_request(&pods[0], vip_udp, IO_TIMEOUT).unwrap());
        // Hairpin: pod-b through the ClusterIP to itself.
        answers.push(tcp_request(&pods[1], vip_tcp, IO_TIMEOUT).unwrap());
        answers.push(udp_request(&pods[1], vip_udp, IO_TIMEOUT).unwrap());
    }
    let bulk = bulk_transfer(&pods[2], &pods[0], ips[2]);

    let fwd = FastPathStats::read(&paths).unwrap().since(&before);
    let stack_forwarded = forwarded(node.netns()) - fwd_before;
    assert!(agent.try_wait().unwrap().is_none(), "agent exited: {}", agent.log());
    drop(_srv);
    for (i, p) in pods.iter().enumerate() {
        let id = format!("sandbox{i}");
        let path = p.path();
        let env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", path.to_str().unwrap()),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(run_cni(cni_bin, node.netns(), &env, &conf).0, "DEL");
    }
    Outcome { answers, bulk, fwd, stack_forwarded }
}

/// Sends `BULK_BYTES` from `client` to a receiver in `server` (`addr`) and
/// returns how many bytes the receiver counted.
fn bulk_transfer(server: &Netns, client: &Netns, addr: Ipv4Addr) -> usize {
    let _receiver = BulkServer::start(server, BULK_PORT).unwrap();
    let to = SocketAddrV4::new(addr, BULK_PORT);
    let (counted, sent) = bulk_send(client, to, BULK_BYTES, Duration::from_secs(20)).unwrap();
    assert_eq!(sent, counted, "the sender's view of the count");
    counted.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn same_node_fast_path_gives_the_plain_path_results_without_the_stack() {
    if !require_root() {
        return;
    }
    if !sluice_has_agent(sluice_bin()) {
        eprintln!("skipping: {} has no `agent` command", sluice_bin().display());
        return;
    }
    let Some(cni_bin) = cni_bin(sluice_bin()) else {
        eprintln!("skipping: no sluice-cni binary next to {}", sluice_bin().display());
        return;
    };
    sweep_stale();
    let fast = run(true, &cni_bin);
    let plain = run(false, &cni_bin);
    eprintln!("fast: {:?} forwarded by the stack: {}", fast.fwd, fast.stack_forwarded);
    eprintln!("plain: {:?} forwarded by the stack: {}", plain.fwd, plain.stack_forwarded);

    // Same answers: the same server, seeing the same source (the client pod
    // directly and through the ClusterIP, the hairpin address for itself).
    assert_eq!(fast.answers, plain.answers);
    assert_eq!((fast.bulk, plain.bulk), (BULK_BYTES, BULK_BYTES));
    let hairpin = Ipv4Addr::from(proxy_common::HAIRPIN_ADDR).to_string();
    assert!(
        fast.answers[4].starts_with("pod-b ") && fast.answers[4].ends_with(&hairpin),
        "{:?}",
        fast.answers
    );
    assert!(fast.answers[2].starts_with("pod-b 10.244.0."), "{:?}", fast.answers);

    // Every packet of the fast run was delivered by peer redirect: at least
    // request and answer of each exchange (TCP: several each), plus the
    // bulk transfer; the node's stack forwarded nothing.
    let exchanges = (ROUNDS * 6) as u64;
    assert!(fast.fwd.peer >= 2 * exchanges + 100, "{:?}", fast.fwd);
    assert_eq!(fast.fwd.stack, 0, "{:?}", fast.fwd);
    assert_eq!(fast.stack_forwarded, 0, "the node's stack forwarded pod traffic");
    // The plain run: no fast path, the stack forwarded all of it.
    assert_eq!(plain.fwd, FastPathStats::default());
    assert!(plain.stack_forwarded >= 2 * exchanges + 100, "{}", plain.stack_forwarded);
}

/// Two nodes on an underlay (agents with native routing and `--devices
/// eth0`), a pod on each; TCP and UDP both ways; returns the answers and the
/// fast-path counters of both nodes.
fn cross_node(fast: bool) -> (Vec<String>, Vec<FastPathStats>) {
    let label = if fast { "fpx-on" } else { "fpx-off" };
    let dir = TestDir::new(label).unwrap();
    let bpffs = BpffsMount::new_in(&dir).unwrap();
    let manifests = ManifestDir::new_in(&dir).unwrap();
    let underlay = sluice::testbed::Underlay::new().unwrap();
    let mut nodes = Vec::new();
    for i in 1..=2u8 {
        let node = Node::with_index(&format!("node-{i}"), i).unwrap();
        underlay.attach_node(&node).unwrap();
        manifests.write_node(&node).unwrap();
        nodes.push(node);
    }
    let pods: Vec<_> =
        nodes.iter().map(|n| n.add_pod(&format!("pod-{}", n.name())).unwrap()).collect();
    let _servers: Vec<_> = pods
        .iter()
        .map(|p| EchoServer::start_replying(p, p.name(), 8080, 5353, Reply::NameAndPeer).unwrap())
        .collect();
    let mut agents = Vec::new();
    for n in &nodes {
        let mut cfg = AgentConfig::for_cluster_node(sluice_bin(), n, &manifests, &bpffs, &dir);
        cfg.extra_args = vec![
            "--socket-lb=false".into(),
            "--devices=eth0".into(),
            format!("--fast-path={fast}"),
        ];
        agents.push(Agent::start(n, cfg).unwrap());
    }
    // Routes come from the agents.
    let deadline = Instant::now() + WAIT;
    let target = SocketAddrV4::new(pods[1].ip(), 8080);
    while tcp_request(&pods[0], target, Duration::from_millis(300)).is_err() {
        assert!(Instant::now() < deadline, "no route between the nodes");
        for a in &mut agents {
            assert!(a.try_wait().unwrap().is_none(), "agent exited: {}", a.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let roots: Vec<PinPaths> =
        nodes.iter().map(|n| PinPaths::new(bpffs.path().join(n.name()))).collect();
    let before: Vec<FastPathStats> =
        roots.iter().map(|r| FastPathStats::read(r).unwrap()).collect();
    let mut answers = Vec::new();
    for _ in 0..ROUNDS {
        for (from, to) in [(0, 1), (1, 0)] {
            let ip = pods[to].ip();
            answers
                .push(tcp_request(&pods[from], SocketAddrV4::new(ip, 8080), IO_TIMEOUT).unwrap());
            answers
                .push(udp_request(&pods[from], SocketAddrV4::new(ip, 5353), IO_TIMEOUT).unwrap());
        }
    }
    let stats =
        roots.iter().zip(&before).map(|(r, b)| FastPathStats::read(r).unwrap().since(b)).collect();
    (answers, stats)
}

#[test]
fn cross_node_fast_path_gives_the_plain_path_results() {
    if !require_root() || !sluice_has_agent(sluice_bin()) {
        return;
    }
    sweep_stale();
    let (fast, fast_stats) = cross_node(true);
    let (plain, plain_stats) = cross_node(false);
    eprintln!("fast: {fast_stats:?}\nplain: {plain_stats:?}");
    // Same servers, seeing the other pod's own address.
    assert_eq!(fast, plain);
    assert!(fast[0].starts_with("pod-node-2 10.244.1."), "{fast:?}");
    // Out by FIB redirect on each node; in by peer redirect from eth0 (the
    // testbed's pods are not in SL_ENDPOINTS, so the stack delivers them).
    for s in &fast_stats {
        assert!(s.fib + s.neigh >= (ROUNDS * 2) as u64, "{fast_stats:?}");
        assert_eq!(s.stack, 0, "{fast_stats:?}");
    }
    assert!(plain_stats.iter().all(|s| *s == FastPathStats::default()), "{plain_stats:?}");
}
