//! End-to-end: pod routing between nodes (native routing) and egress
//! masquerade. Three node namespaces on an underlay bridge (198.18.0.0/24,
//! in a namespace of its own), a pod on each node (10.244.<i>.0/24), one
//! `sluice agent` per node fed the Node objects from a manifest directory.
//! The routes between nodes are installed by the agents, never by the test.
//! Needs root; without it every test here prints `skipping <test>: needs
//! root` and passes.
//!
//! Run: `unshare --mount --propagation private cargo test --release -p sluice --test e2e_routing`

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use sluice::testbed::{
    Agent, AgentConfig, BpffsMount, EXTERNAL_ADDR, EchoServer, ManifestDir, Netns, Node, Pod,
    Reply, RouteEntry, TestDir, Underlay, run_checked, tcp_request, udp_request, wait_for,
};

const TCP: u16 = 8080;
const UDP: u16 = 5353;
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Failures expected to be fast (no route, no return route).
const SHORT: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(20);

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

fn ready() -> bool {
    sluice::testbed::ready_for_agent(sluice_bin())
}

/// The routes of protocol `RTPROT_SLUICE` on `node`: (destination, gateway).
fn sluice_routes(node: &Node) -> anyhow::Result<Vec<(String, String)>> {
    let routes = node.netns().sluice_routes()?;
    Ok(routes.into_iter().map(|r| (r.dst, r.gateway.unwrap_or_default())).collect())
}

fn route_to<'a>(routes: &'a [RouteEntry], dst: &str) -> Option<&'a RouteEntry> {
    routes.iter().find(|r| r.dst == dst)
}

/// Three nodes on an underlay, a pod with echo servers on each, and (once
/// started) an agent per node. Fields drop in declaration order: agents
/// first, the test directory last.
struct Cluster {
    agents: Vec<Agent>,
    _servers: Vec<EchoServer>,
    pods: Vec<Pod>,
    external: Option<Netns>,
    nodes: Vec<Node>,
    _underlay: Underlay,
    manifests: ManifestDir,
    bpffs: BpffsMount,
    dir: TestDir,
}

impl Cluster {
    /// Nodes `node-1..=3` (index i: 198.18.0.<i+1>, pods 10.244.<i>.0/24),
    /// their Node objects in the manifests, a pod per node answering with
    /// `reply`. With `external`, an external host on the underlay that the
    /// nodes route to (and that has no route to any pod).
    fn new(label: &str, reply: Reply, external: bool) -> Cluster {
        let dir = TestDir::new(label).unwrap();
        let bpffs = BpffsMount::new_in(&dir).unwrap();
        let manifests = ManifestDir::new_in(&dir).unwrap();
        let underlay = Underlay::new().unwrap();
        let nodes = underlay.add_nodes(3, &manifests).unwrap();
        let external = external.then(|| underlay.add_external("external").unwrap());
        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let pod = n.add_pod(&format!("pod-{}", i + 1)).unwrap();
            servers.push(
                EchoServer::start_replying(&pod, &format!("pod-{}", i + 1), TCP, UDP, reply)
                    .unwrap(),
            );
            pods.push(pod);
        }
        Cluster {
            agents: Vec::new(),
            _servers: servers,
            pods,
            external,
            nodes,
            _underlay: underlay,
            manifests,
            bpffs,
            dir,
        }
    }

    /// One agent per node; see [`Cluster::start_agent`].
    fn start_agents(&mut self) {
        for i in 0..self.nodes.len() {
            let agent = self.start_agent(i, &[]);
            self.agents.push(agent);
        }
    }

    /// An agent on node `i` (own pin directory, own CNI config directory),
    /// without socket-level LB (this test's traffic is not service traffic),
    /// with `extra` flags.
    fn start_agent(&self, i: usize, extra: &[&str]) -> Agent {
        let n = &self.nodes[i];
        let mut cfg =
            AgentConfig::for_cluster_node(sluice_bin(), n, &self.manifests, &self.bpffs, &self.dir);
        cfg.extra_args = vec!["--socket-lb=false".into()];
        cfg.extra_args.extend(extra.iter().map(|a| (*a).to_owned()));
        Agent::start(n, cfg).unwrap()
    }

    fn tcp(&self, from: usize, to: usize) -> std::io::Result<String> {
        tcp_request(&self.pods[from], SocketAddrV4::new(self.pods[to].ip(), TCP), IO_TIMEOUT)
    }

    fn udp(&self, from: usize, to: usize) -> std::io::Result<String> {
        udp_request(&self.pods[from], SocketAddrV4::new(self.pods[to].ip(), UDP), IO_TIMEOUT)
    }

    /// Waits until every node has exactly the sluice routes `want[i]`.
    fn wait_routes(&mut self, want: &[Vec<(&str, String)>]) {
        for (i, want) in want.iter().enumerate() {
            let want: Vec<(String, String)> =
                want.iter().map(|(d, g)| ((*d).to_owned(), g.clone())).collect();
            self.nodes[i].wait_sluice_routes(&want, WAIT);
        }
        for a in &mut self.agents {
            assert!(a.try_wait().unwrap().is_none(), "agent exited; log:\n{}", a.log());
        }
    }
}

fn gw(node: &Node) -> String {
    node.address().to_string()
}

/// Routes between nodes come from the agents and follow the Node objects:
/// every cross-node pod pair talks over TCP and UDP; an InternalIP change
/// replaces the route; a removed Node's routes go while the others keep
/// working; routes the agent did not create survive, also one to a pod CIDR
/// the agent wanted; a route that cannot be added yet is retried; the agent
/// leaves its routes in place on SIGTERM, and
/// `--routing none --masquerade false` withdraws only its own.
#[test]
fn native_routes_follow_nodes() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("routing", Reply::Name, false);
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    // Control: without agents there is no route between nodes.
    assert!(tcp_request(&c.pods[0], SocketAddrV4::new(c.pods[1].ip(), TCP), SHORT).is_err());

    // Routes the agent did not create: an unrelated one on node 1, and on
    // node 2 one to node 3's pods (which the agent would otherwise install).
    n1.netns().ip(&["route", "add", "10.99.0.0/24", "via", &gw(n3)]).unwrap();
    n2.netns().ip(&["route", "add", "10.244.3.0/24", "via", &gw(n3), "proto", "static"]).unwrap();

    c.start_agents();
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let want = vec![
        vec![("10.244.2.0/24", gw(n2)), ("10.244.3.0/24", gw(n3))],
        vec![("10.244.1.0/24", gw(n1))],
        vec![("10.244.1.0/24", gw(n1)), ("10.244.2.0/24", gw(n2))],
    ];
    let started = Instant::now();
    c.wait_routes(&want);
    eprintln!("routes on all three nodes after {:?}", started.elapsed());

    for from in 0..3 {
        for to in (0..3).filter(|t| *t != from) {
            let name = format!("pod-{}", to + 1);
            assert_eq!(c.tcp(from, to).unwrap(), name, "TCP pod-{} -> {name}", from + 1);
            assert_eq!(c.udp(from, to).unwrap(), name, "UDP pod-{} -> {name}", from + 1);
        }
    }
    // The agents' default `--fast-path`: pod traffic to other nodes left by
    // FIB lookup and redirect, the first packets by `bpf_redirect_neigh`
    // (no neighbour entry yet); e2e_fastpath compares with the stack's path.
    let mut neigh = 0;
    for n in &c.nodes {
        let paths = sluice::datapath::PinPaths::new(c.bpffs.path().join(n.name()));
        let s = sluice::datapath::node::FastPathStats::read(&paths).unwrap();
        assert!(s.fib + s.neigh >= 8 && s.peer == 0, "{}: {s:?}", n.name());
        neigh += s.neigh;
    }
    assert!(neigh > 0, "no bpf_redirect_neigh on any node");
    let r2 = c.nodes[1].netns().routes().unwrap();
    let foreign = route_to(&r2, "10.244.3.0/24").expect("node 2's own route to node 3's pods");
    assert_eq!(foreign.protocol.as_deref(), Some("static"), "{foreign:?}");
    wait_for(WAIT, "node 2's agent says it leaves the foreign route", || {
        Ok(c.agents[1].log().contains("did not create"))
    });

    // node-2's InternalIP changes: node 1 and 3 replace their route in place.
    let new_ip = Ipv4Addr::new(198, 18, 0, 103);
    c.nodes[1].netns().ip(&["addr", "add", &format!("{new_ip}/24"), "dev", "eth0"]).unwrap();
    c.manifests.write_node_object("node-2", &c.nodes[1].pod_cidr(), new_ip).unwrap();
    let (n1, n3) = (&c.nodes[0], &c.nodes[2]);
    let want = vec![
        vec![("10.244.2.0/24", new_ip.to_string()), ("10.244.3.0/24", gw(n3))],
        vec![("10.244.1.0/24", gw(n1))],
        vec![("10.244.1.0/24", gw(n1)), ("10.244.2.0/24", new_ip.to_string())],
    ];
    c.wait_routes(&want);
    assert_eq!(c.tcp(0, 1).unwrap(), "pod-2");
    assert_eq!(c.udp(2, 1).unwrap(), "pod-2");

    // node-3 leaves: its routes go on nodes 1 and 2; 1 <-> 2 keeps working.
    c.manifests.remove_file("node-node-3.yaml").unwrap();
    let n1 = &c.nodes[0];
    let want = vec![
        vec![("10.244.2.0/24", new_ip.to_string())],
        vec![("10.244.1.0/24", gw(n1))],
        vec![("10.244.1.0/24", gw(n1)), ("10.244.2.0/24", new_ip.to_string())],
    ];
    let removed = Instant::now();
    c.wait_routes(&want);
    eprintln!("node-3's routes gone after {:?}", removed.elapsed());
    for (from, to) in [(0, 1), (1, 0)] {
        let name = format!("pod-{}", to + 1);
        assert_eq!(c.tcp(from, to).unwrap(), name);
        assert_eq!(c.udp(from, to).unwrap(), name);
    }
    assert!(
        tcp_request(&c.pods[0], SocketAddrV4::new(c.pods[2].ip(), TCP), SHORT).is_err(),
        "node 1 has no route to node 3's pods any more"
    );
    // The routes the agents did not create are still there, unchanged.
    let r1 = c.nodes[0].netns().routes().unwrap();
    let r = route_to(&r1, "10.99.0.0/24").expect("node 1's own route survives");
    assert_eq!(r.gateway.as_deref(), Some("198.18.0.4"));
    let r2 = c.nodes[1].netns().routes().unwrap();
    let r = route_to(&r2, "10.244.3.0/24").expect("node 2's own route survives");
    assert_eq!((r.protocol.as_deref(), r.gateway.as_deref()), (Some("static"), Some("198.18.0.4")));

    // A Node whose InternalIP nobody can reach yet: adding its route fails,
    // the agent says so, keeps running, and retries until the address is
    // reachable (here: once the test routes it).
    let unreachable = Ipv4Addr::new(198, 18, 9, 9);
    c.manifests.write_node_object("node-4", "10.244.4.0/24", unreachable).unwrap();
    wait_for(WAIT, "agent 1 reports the failed route", || {
        Ok(c.agents[0].log().contains("adding route 10.244.4.0/24 via 198.18.9.9"))
    });
    assert!(c.agents[0].try_wait().unwrap().is_none(), "agent 1 runs: {}", c.agents[0].log());
    assert_eq!(c.tcp(0, 1).unwrap(), "pod-2", "the other routes are unaffected");
    let node1 = &c.nodes[0];
    node1.netns().ip(&["route", "add", &format!("{unreachable}/32"), "dev", "eth0"]).unwrap();
    let retried = Instant::now();
    wait_for(WAIT, "node 1 routes node-4's pods once its address is reachable", || {
        Ok(sluice_routes(node1)?.contains(&("10.244.4.0/24".into(), unreachable.to_string())))
    });
    eprintln!("failed route installed on retry after {:?}", retried.elapsed());

    // SIGTERM leaves the routes in place (a restart interrupts no traffic).
    let status = c.agents[0].stop().unwrap();
    assert!(status.success(), "agent 1 exited with {status}");
    assert_eq!(sluice_routes(&c.nodes[0]).unwrap().len(), 2);
    assert_eq!(c.tcp(0, 1).unwrap(), "pod-2");

    // Restarted with `--routing none --masquerade false`: it withdraws its own
    // routes and nftables table, nothing else.
    c.agents[0] = c.start_agent(0, &["--routing", "none", "--masquerade", "false"]);
    let node1 = &c.nodes[0];
    wait_for(WAIT, "node 1's sluice routes withdrawn", || Ok(sluice_routes(node1)?.is_empty()));
    wait_for(WAIT, "node 1's table ip sluice removed", || {
        let listed = sluice::testbed::run_with_timeout(
            node1.netns().command("nft")?.args(["list", "table", "ip", "sluice"]),
            Duration::from_secs(5),
        )?;
        Ok(!listed.status.success())
    });
    let r1 = node1.netns().routes().unwrap();
    assert!(route_to(&r1, "10.99.0.0/24").is_some(), "node 1's own route survives: {r1:?}");
    assert!(route_to(&r1, "198.18.9.9").is_some(), "node 1's own route survives: {r1:?}");
    assert!(c.tcp(0, 1).is_err(), "no route from node 1 to node 2's pods any more");
    assert!(c.agents[0].try_wait().unwrap().is_none(), "agent 1 runs: {}", c.agents[0].log());
}

/// Pods reach a host outside the cluster with their node's address as the
/// source (TCP and UDP), while pod-to-pod and pod-to-node traffic across
/// nodes keeps the pod's address.
#[test]
fn egress_masquerade_uses_node_address() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("masq", Reply::PeerAddress, true);
    let ext = c.external.as_ref().expect("external host");
    let _ext_srv =
        EchoServer::start_replying(ext, "external", TCP, UDP, Reply::PeerAddress).unwrap();
    // A server on node 2 itself (host network).
    let _node_srv =
        EchoServer::start_replying(&c.nodes[1], "node-2", TCP, UDP, Reply::PeerAddress).unwrap();
    let external_tcp = SocketAddrV4::new(EXTERNAL_ADDR, TCP);
    let external_udp = SocketAddrV4::new(EXTERNAL_ADDR, UDP);
    // The external host has no route back to pods: without masquerade a
    // pod's connection to it fails.
    let ext_routes = ext.routes().unwrap();
    assert!(
        ext_routes.iter().all(|r| !r.dst.starts_with("10.") && r.dst != "default"),
        "{ext_routes:?}"
    );
    assert!(tcp_request(&c.pods[0], external_tcp, SHORT).is_err(), "no masquerade yet");

    c.start_agents();
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let want = vec![
        vec![("10.244.2.0/24", gw(n2)), ("10.244.3.0/24", gw(n3))],
        vec![("10.244.1.0/24", gw(n1)), ("10.244.3.0/24", gw(n3))],
        vec![("10.244.1.0/24", gw(n1)), ("10.244.2.0/24", gw(n2))],
    ];
    c.wait_routes(&want);
    let node1 = &c.nodes[0];
    wait_for(WAIT, "table ip sluice on node 1", || {
        let out = run_checked(
            node1.netns().command("nft")?.args(["list", "table", "ip", "sluice"]),
            Duration::from_secs(5),
        )?;
        Ok(out.contains("masquerade") && out.contains("10.244.3.0/24"))
    });

    for (i, pod) in c.pods.iter().enumerate() {
        let node_ip = c.nodes[i].address().to_string();
        assert_eq!(tcp_request(pod, external_tcp, IO_TIMEOUT).unwrap(), node_ip, "TCP pod-{i}");
        assert_eq!(udp_request(pod, external_udp, IO_TIMEOUT).unwrap(), node_ip, "UDP pod-{i}");
    }
    // Pod to pod across nodes: not masqueraded.
    let pod1 = c.pods[0].ip().to_string();
    assert_eq!(c.tcp(0, 1).unwrap(), pod1);
    assert_eq!(c.udp(0, 2).unwrap(), pod1);
    // Pod to another node: not masqueraded.
    let node2 = SocketAddrV4::new(c.nodes[1].address(), TCP);
    assert_eq!(tcp_request(&c.pods[0], node2, IO_TIMEOUT).unwrap(), pod1);
    let node2 = SocketAddrV4::new(c.nodes[1].address(), UDP);
    assert_eq!(udp_request(&c.pods[0], node2, IO_TIMEOUT).unwrap(), pod1);

    let counters = run_checked(
        c.nodes[0].netns().command("nft").unwrap().args([
            "list",
            "chain",
            "ip",
            "sluice",
            "postrouting",
        ]),
        Duration::from_secs(5),
    )
    .unwrap();
    eprintln!("node 1's masquerade chain after the run:\n{counters}");
    assert!(
        counters.contains("counter packets") && !counters.contains("counter packets 0 "),
        "the masquerade rule counted the flows to the external host: {counters}"
    );
}
