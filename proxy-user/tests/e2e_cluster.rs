//! End-to-end: a small cluster as issue 6 describes it, once with native
//! routing and once with the VXLAN overlay. Three node namespaces on an
//! underlay bridge (198.18.0.0/24, in a namespace of its own), an external
//! host on the underlay outside the cluster CIDR (198.18.1.1), one `sluice
//! agent` per node fed the Node objects (podCIDRs, InternalIP) from a
//! manifest directory, and two pods per node wired by `sluice-cni` from the
//! conflist its node's agent wrote. Routes, overlay entries, pod wiring and
//! masquerade are the agents' and the plugin's, never the test's. Needs root;
//! without it every test here prints `skipping <test>: needs root` and passes.
//!
//! Run: `unshare --mount --propagation private cargo test --release -p sluice --test e2e_cluster`

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice::datapath::{PinPaths, node::FastPathStats};
use sluice::testbed::{
    Agent, AgentConfig, Backend, BpffsMount, BulkServer, ClusterIpService, CniPod, EXTERNAL_ADDR,
    EchoServer, ManifestDir, Netns, Node, Overlay, Protocol, Reply, ServicePort, TestDir, Underlay,
    bulk_send, cni_bin, cni_wait_ready, conf_from_conflist, tcp_request, udp_len, udp_request,
    wait_for,
};
use sluice::tunnel::vtep_addr;

const TCP: u16 = 8080;
const UDP: u16 = 5353;
const BULK: u16 = 9000;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
const NP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 61);
const NODE_PORT: u16 = 30081;
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Failures expected to be fast (no route).
const SHORT: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(20);
/// Requests to a Service with two backends: both must answer.
const ROUNDS: usize = 20;
const BULK_BYTES: usize = 4 << 20;

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

fn ready() -> bool {
    sluice::testbed::ready_for_agent(sluice_bin())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The default: routes to each node's pod CIDR via its InternalIP.
    Native,
    /// `--tunnel vxlan`.
    Vxlan,
}

/// Three nodes, their agents, two CNI pods each answering with
/// `<pod> <peer address>`, and an external host. Fields drop in declaration
/// order: agents first, the test directory last.
struct Cluster {
    agents: Vec<Agent>,
    servers: Vec<EchoServer>,
    /// `pods[2 * i]` and `pods[2 * i + 1]` are on node `i`.
    pods: Vec<CniPod>,
    external: Netns,
    nodes: Vec<Node>,
    _underlay: Underlay,
    manifests: ManifestDir,
    bpffs: BpffsMount,
    dir: TestDir,
}

impl Cluster {
    /// Nodes `node-1..=3` (index i: 198.18.0.<i+1>, pods 10.244.<i>.0/24) with
    /// their Node objects, the external host, and an agent per node started
    /// as e2e_vxlan starts them (with `--tunnel vxlan` in that mode). No pods
    /// yet: their conflist comes from the agents.
    fn new(mode: Mode) -> Cluster {
        let label = match mode {
            Mode::Native => "cl-native",
            Mode::Vxlan => "cl-vxlan",
        };
        let dir = TestDir::new(label).unwrap();
        let bpffs = BpffsMount::new_in(&dir).unwrap();
        let manifests = ManifestDir::new_in(&dir).unwrap();
        let underlay = Underlay::new().unwrap();
        let external = underlay.add_external("cl-ext").unwrap();
        let nodes = underlay.add_nodes(3, &manifests).unwrap();
        let mut c = Cluster {
            agents: Vec::new(),
            servers: Vec::new(),
            pods: Vec::new(),
            external,
            nodes,
            _underlay: underlay,
            manifests,
            bpffs,
            dir,
        };
        let extra: &[&str] = match mode {
            Mode::Native => &[],
            Mode::Vxlan => &["--tunnel", "vxlan"],
        };
        for i in 0..c.nodes.len() {
            let agent = c.start_agent(i, extra);
            c.agents.push(agent);
        }
        c
    }

    fn cni_conf_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("cni-{}", self.nodes[i].name()))
    }

    fn pin_paths(&self, i: usize) -> PinPaths {
        PinPaths::new(self.bpffs.path().join(self.nodes[i].name()))
    }

    /// An agent on node `i` (own pin directory, own CNI config directory),
    /// serving `eth0`, without socket-level LB (service traffic takes the
    /// per-packet path), with `extra` flags.
    fn start_agent(&self, i: usize, extra: &[&str]) -> Agent {
        let n = &self.nodes[i];
        let mut cfg =
            AgentConfig::for_cluster_node(sluice_bin(), n, &self.manifests, &self.bpffs, &self.dir);
        cfg.extra_args = ["--socket-lb=false", "--devices", "eth0"]
            .iter()
            .chain(extra)
            .map(|a| (*a).to_owned())
            .collect();
        Agent::start(n, cfg).unwrap()
    }

    fn check_agents(&mut self) {
        for a in &mut self.agents {
            assert!(a.try_wait().unwrap().is_none(), "agent exited; log:\n{}", a.log());
        }
    }

    /// Waits until node `i` holds exactly the routing state for the nodes
    /// `peers`: native, a route to each one's pod CIDR via its InternalIP;
    /// VXLAN, the route, neighbour and FDB entries of each.
    fn wait_peers(&mut self, mode: Mode, i: usize, peers: &[usize]) {
        let node = &self.nodes[i];
        match mode {
            Mode::Native => {
                let want: Vec<(String, String)> = peers
                    .iter()
                    .map(|&p| (self.nodes[p].pod_cidr(), self.nodes[p].address().to_string()))
                    .collect();
                node.wait_sluice_routes(&want, WAIT);
            }
            Mode::Vxlan => {
                let peers: Vec<(String, Ipv4Addr)> = peers
                    .iter()
                    .map(|&p| (self.nodes[p].pod_cidr(), self.nodes[p].address()))
                    .collect();
                Overlay::expected(&peers).unwrap().wait(node, WAIT);
            }
        }
        self.check_agents();
    }

    /// Two pods on each node, wired by `sluice-cni` with the conflist that
    /// node's agent wrote, each serving TCP and UDP echo.
    fn add_pods(&mut self, mode: Mode, bin: &Path) {
        for i in 0..self.nodes.len() {
            let data = self.dir.join(format!("cni-data-{i}"));
            let conf = conf_from_conflist(&self.cni_conf_dir(i), &data, WAIT).unwrap();
            // The overlay's MTU leaves room for the encapsulation.
            let want_mtu =
                if mode == Mode::Vxlan { serde_json::json!(1450) } else { Default::default() };
            assert_eq!(conf["mtu"], want_mtu, "{conf}");
            cni_wait_ready(bin, self.nodes[i].netns(), &conf, &mut self.agents[i], WAIT).unwrap();
            for k in ['a', 'b'] {
                let name = format!("pod-{}{k}", i + 1);
                let pod = CniPod::add(bin, self.nodes[i].netns(), &conf, &name).unwrap();
                let cidr: ipnetwork::Ipv4Network = self.nodes[i].pod_cidr().parse().unwrap();
                assert!(cidr.contains(pod.ip()), "{name}: {} in {cidr}", pod.ip());
                self.servers.push(
                    EchoServer::start_replying(&pod, &name, TCP, UDP, Reply::NameAndPeer).unwrap(),
                );
                self.pods.push(pod);
            }
        }
    }

    fn node_of(p: usize) -> usize {
        p / 2
    }

    /// TCP and UDP from pod `from` to pod `to`: each answers with its name
    /// and sees `from`'s own address.
    fn check_pair(&self, from: usize, to: usize) {
        let (a, b) = (&self.pods[from], &self.pods[to]);
        let want = format!("{} {}", b.name(), a.ip());
        let tcp = tcp_request(a, SocketAddrV4::new(b.ip(), TCP), IO_TIMEOUT);
        assert_eq!(tcp.unwrap(), want, "TCP {} -> {}", a.name(), b.name());
        let udp = udp_request(a, SocketAddrV4::new(b.ip(), UDP), IO_TIMEOUT);
        assert_eq!(udp.unwrap(), want, "UDP {} -> {}", a.name(), b.name());
    }

    /// Every ordered pair among `pods` with `filter(from, to)`.
    fn check_pairs(&self, pods: &[usize], filter: impl Fn(usize, usize) -> bool) -> usize {
        let mut n = 0;
        for &from in pods {
            for &to in pods.iter().filter(|&&t| t != from && filter(from, t)) {
                self.check_pair(from, to);
                n += 1;
            }
        }
        n
    }

    fn fast_path_stats(&self) -> Vec<FastPathStats> {
        (0..self.nodes.len()).map(|i| FastPathStats::read(&self.pin_paths(i)).unwrap()).collect()
    }
}

/// The scenario of issue 6, in `mode`.
fn cluster_scenario(mode: Mode) {
    if !ready() {
        return;
    }
    let Some(bin) = cni_bin(sluice_bin()) else {
        panic!("no sluice-cni binary next to {} (cargo build)", sluice_bin().display());
    };
    let started = Instant::now();
    let mut c = Cluster::new(mode);
    for i in 0..3 {
        let peers: Vec<usize> = (0..3).filter(|p| *p != i).collect();
        c.wait_peers(mode, i, &peers);
    }
    c.add_pods(mode, &bin);
    eprintln!("{mode:?}: 3 nodes, 6 CNI pods after {:?}", started.elapsed());
    let all: Vec<usize> = (0..c.pods.len()).collect();

    // Same node, every ordered pair: the pods are in SL_ENDPOINTS, so with the
    // default `--fast-path` each packet is delivered by `bpf_redirect_peer`
    // (in both modes: the tunnel is not on this path).
    let before = c.fast_path_stats();
    let same = c.check_pairs(&all, |a, b| Cluster::node_of(a) == Cluster::node_of(b));
    assert_eq!(same, 6);
    let grew: Vec<FastPathStats> =
        c.fast_path_stats().iter().zip(&before).map(|(a, b)| a.since(b)).collect();
    eprintln!("{mode:?}: fast-path counters over the same-node pairs: {grew:?}");
    for (i, s) in grew.iter().enumerate() {
        // Two ordered pairs per node, a TCP and a UDP exchange each: at
        // least request and answer of each went by peer redirect.
        assert!(s.peer >= 8 && s.stack == 0, "node-{}: {s:?}", i + 1);
    }

    // Across nodes, every ordered pair, TCP and UDP, no masquerade.
    let before = c.fast_path_stats();
    let cross = c.check_pairs(&all, |a, b| Cluster::node_of(a) != Cluster::node_of(b));
    assert_eq!(cross, 24);
    let grew: Vec<FastPathStats> =
        c.fast_path_stats().iter().zip(&before).map(|(a, b)| a.since(b)).collect();
    eprintln!("{mode:?}: fast-path counters over the cross-node pairs: {grew:?}");
    for (i, s) in grew.iter().enumerate() {
        // Each node's pods are in 16 TCP and 16 UDP exchanges with pods of
        // other nodes: at least one packet of each left by FIB redirect (into
        // the tunnel device with VXLAN) and one arrived by peer redirect from
        // the external program (on `eth0`, or on `vxlan_sluice` after decap).
        assert!(s.fib + s.neigh >= 32 && s.peer >= 32 && s.stack == 0, "node-{}: {s:?}", i + 1);
    }
    eprintln!("{mode:?}: 30 ordered pod pairs answered after {:?}", started.elapsed());

    // A ClusterIP from a pod on node 1 whose backends are on nodes 2 and 3
    // only: both answer, and see the client pod's address.
    let backend = |p: usize| Backend {
        node_name: Some(c.nodes[Cluster::node_of(p)].name().to_owned()),
        ..Backend::ready(c.pods[p].name(), c.pods[p].ip())
    };
    let svc = ClusterIpService::new(
        "cl-echo",
        VIP,
        vec![
            ServicePort::new("tcp", Protocol::Tcp, 80, TCP),
            ServicePort::new("udp", Protocol::Udp, 53, UDP),
        ],
        vec![backend(2), backend(5)],
    );
    c.manifests.write_service(&svc).unwrap();
    c.agents[0].wait_backends(WAIT, VIP, 80, Protocol::Tcp, 2).unwrap();
    c.agents[0].wait_backends(WAIT, VIP, 53, Protocol::Udp, 2).unwrap();
    let client = &c.pods[0];
    let mut seen = BTreeSet::new();
    for _ in 0..ROUNDS {
        seen.insert(tcp_request(client, SocketAddrV4::new(VIP, 80), IO_TIMEOUT).unwrap());
        seen.insert(udp_request(client, SocketAddrV4::new(VIP, 53), IO_TIMEOUT).unwrap());
    }
    let want: BTreeSet<String> =
        [2, 5].iter().map(|&p| format!("{} {}", c.pods[p].name(), client.ip())).collect();
    assert_eq!(seen, want, "ClusterIP {VIP} from {}", client.name());

    // NodePort on node 1 from the external host, the only backend on node 3:
    // it answers, and sees node 1's address (externalTrafficPolicy Cluster
    // SNATs flows to remote backends): natively its InternalIP, through the
    // overlay its vtep address, so that the answer comes back through the
    // tunnel too.
    let np = ClusterIpService::new(
        "cl-np",
        NP_VIP,
        vec![ServicePort::new("http", Protocol::Tcp, 80, TCP).with_node_port(NODE_PORT)],
        vec![backend(4)],
    );
    c.manifests.write_service(&np).unwrap();
    let node1 = SocketAddrV4::new(c.nodes[0].address(), NODE_PORT);
    let snat = match mode {
        Mode::Native => c.nodes[0].address(),
        Mode::Vxlan => vtep_addr(c.nodes[0].pod_cidr().parse().unwrap()),
    };
    let want = format!("{} {snat}", c.pods[4].name());
    let ext = &c.external;
    wait_for(WAIT, "NodePort on node 1 answers", || {
        Ok(tcp_request(ext, node1, IO_TIMEOUT).is_ok_and(|a| a == want))
    });
    for _ in 0..10 {
        assert_eq!(tcp_request(ext, node1, IO_TIMEOUT).unwrap(), want, "NodePort {node1}");
    }

    // Egress to the external host (outside the cluster CIDR, no route back to
    // any pod): seen with the pod's node's InternalIP, TCP and UDP.
    let ext_srv =
        EchoServer::start_replying(&c.external, "ext", TCP, UDP, Reply::PeerAddress).unwrap();
    for (p, pod) in c.pods.iter().enumerate() {
        let node_ip = c.nodes[Cluster::node_of(p)].address().to_string();
        let tcp = SocketAddrV4::new(EXTERNAL_ADDR, TCP);
        wait_for(WAIT, &format!("{} masqueraded to the external host", pod.name()), || {
            Ok(tcp_request(pod, tcp, IO_TIMEOUT).is_ok_and(|a| a == node_ip))
        });
        let udp = udp_request(pod, SocketAddrV4::new(EXTERNAL_ADDR, UDP), IO_TIMEOUT);
        assert_eq!(udp.unwrap(), node_ip, "UDP {} -> external", pod.name());
    }
    drop(ext_srv);

    // A large transfer between pods on nodes 1 and 3: 4 MiB in 64 KiB writes
    // over TCP, and UDP datagrams up to the maximum (fragmented before any
    // encapsulation), arrive intact.
    let bulk = BulkServer::start(&c.pods[5], BULK).unwrap();
    let to = SocketAddrV4::new(c.pods[5].ip(), BULK);
    let t = Instant::now();
    let (got, sent) = bulk_send(&c.pods[0], to, BULK_BYTES, Duration::from_secs(60)).unwrap();
    eprintln!("{mode:?}: {BULK_BYTES} bytes in 64 KiB writes node 1 -> 3 in {:?}", t.elapsed());
    assert_eq!(got, sent, "the receiver read exactly what was sent");
    for len in [1400, 1423, 1473, 8000, 65507] {
        assert_eq!(udp_len(&c.pods[0], to, len, IO_TIMEOUT).unwrap(), len.to_string(), "UDP {len}");
    }
    drop(bulk);

    // node-3 leaves the manifests: its routes (and overlay entries) go from
    // nodes 1 and 2, whose pods still talk both ways; node 3's pods are out of
    // reach from node 1.
    c.manifests.remove_file("node-node-3.yaml").unwrap();
    let removed = Instant::now();
    c.wait_peers(mode, 0, &[1]);
    c.wait_peers(mode, 1, &[0]);
    eprintln!("{mode:?}: node-3's routing state gone after {:?}", removed.elapsed());
    let left: Vec<usize> = (0..4).collect();
    assert_eq!(c.check_pairs(&left, |_, _| true), 12);
    for p in [4, 5] {
        let to = SocketAddrV4::new(c.pods[p].ip(), TCP);
        assert!(tcp_request(&c.pods[0], to, SHORT).is_err(), "node 1 still reaches {to}");
    }
    c.check_agents();
    eprintln!("{mode:?}: done in {:?}", started.elapsed());
}

/// Native routing (the default): pods of three nodes, Services, NodePort,
/// egress, a large transfer and a node leaving.
#[test]
fn native_cluster_routes_pods_services_and_egress() {
    cluster_scenario(Mode::Native);
}

/// The same over the VXLAN overlay (`--tunnel vxlan`).
#[test]
fn vxlan_cluster_routes_pods_services_and_egress() {
    cluster_scenario(Mode::Vxlan);
}
