//! NodePort, externalIPs and LoadBalancer IPs with real traffic: two node
//! namespaces and an external client on an underlay bridge (in its own
//! namespace), one backend pod per node, one agent per node serving the
//! external device `eth0`. Needs root; skips otherwise.
//!
//! Addresses: node i has 198.18.0.(i+1)/24 on `eth0` and pods in
//! 10.244.i.0/24; the client is 198.18.1.1 (the testbed's underlay); the
//! agents route the pod CIDRs between the nodes.

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use proxy_common::DropReason;
use sluice::{
    datapath::{PinPaths, maps::open_pinned},
    testbed::{
        Agent, AgentConfig, BpffsMount, EXTERNAL_ADDR, EchoServer, ManifestDir, Netns, Node, Pod,
        Reply, TestCgroup, TestDir, Underlay, drop_count, require_root, run_with_timeout,
        sweep_stale,
    },
};

const WAIT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_millis(1500);
const CLIENT: Ipv4Addr = EXTERNAL_ADDR;
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const LB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const LB_PROXY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 21);
/// A second external client, outside the source range of the test that
/// uses it.
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The externalIP of the Local-policy service whose endpoint is on node 2.
const ONLY2_EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 32);

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

fn device_addr(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, index + 1)
}

/// One request from `ns` to `addr`: `(backend name, source it saw)`.
fn ask(ns: &Netns, addr: SocketAddrV4) -> std::io::Result<(String, String)> {
    ns.exec(IO_TIMEOUT * 2, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let mut words = out.split_whitespace();
        match (words.next(), words.next()) {
            (Some(name), Some(peer)) => Ok((name.to_owned(), peer.to_owned())),
            _ => Err(std::io::Error::other(format!("bad answer {out:?}"))),
        }
    })
    .map_err(std::io::Error::other)?
}

/// Asks `n` times; the set of (backend, seen source) answers.
fn ask_many(ns: &Netns, addr: SocketAddrV4, n: usize) -> BTreeSet<(String, String)> {
    let mut seen = BTreeSet::new();
    for i in 0..n {
        match ask(ns, addr) {
            Ok(a) => {
                seen.insert(a);
            }
            Err(e) => panic!("request {i} to {addr}: {e} (answers so far: {seen:?})"),
        }
    }
    seen
}

/// Retries until `addr` answers (the agent has programmed it), up to WAIT.
fn wait_answer(ns: &Netns, addr: SocketAddrV4) -> (String, String) {
    let start = Instant::now();
    loop {
        match ask(ns, addr) {
            Ok(a) => return a,
            Err(e) if start.elapsed() > WAIT => panic!("{addr} never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

struct Cluster {
    _underlay: Underlay,
    client: Netns,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    _servers: Vec<EchoServer>,
}

/// The underlay, the external client, `n` nodes with one backend pod each
/// (port 8080). Pod routes between the nodes are the agents' (`--routing
/// native`, from the Nodes' InternalIPs).
fn cluster(n: u8) -> Cluster {
    let underlay = Underlay::new().unwrap();
    let client = underlay.add_external("np-client").unwrap();
    // The external and load-balancer IPs are routed to node 1.
    client.ip(&["route", "add", "203.0.113.0/24", "via", &device_addr(1).to_string()]).unwrap();

    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    let mut servers = Vec::new();
    for i in 1..=n {
        let node = Node::with_index(&format!("np-node{i}"), i).unwrap();
        underlay.attach_node(&node).unwrap();
        Underlay::route_to_external(&node).unwrap();
        let pod = node.add_pod(&format!("be{i}")).unwrap();
        servers.push(
            EchoServer::start_replying(&pod, pod.name(), 8080, 0, Reply::NameAndPeer).unwrap(),
        );
        pods.push(pod);
        nodes.push(node);
    }
    Cluster { _underlay: underlay, client, nodes, pods, _servers: servers }
}

/// A Service `name` (port 80 -> 8080/TCP) with `extra` spec lines, and its
/// EndpointSlice with `backends` as (pod, node name).
fn service_yaml(
    name: &str,
    cluster_ip: &str,
    spec_extra: &str,
    status: &str,
    backends: &[(&Pod, &Node)],
) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  \
         clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n{spec_extra}{status}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\n\
         ports:\n- name: http\n  protocol: TCP\n  port: 8080\nendpoints:\n"
    );
    if backends.is_empty() {
        y.push_str("[]\n");
    }
    for (pod, node) in backends {
        y.push_str(&format!(
            "- addresses: [{}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: {}\n",
            pod.ip(),
            node.name()
        ));
    }
    y
}

fn ports(node_port: u16) -> String {
    format!(
        "  ports:\n  - name: http\n    protocol: TCP\n    port: 80\n    targetPort: 8080\n    nodePort: {node_port}\n"
    )
}

struct Agents {
    agents: Vec<Agent>,
    bpffs: Vec<BpffsMount>,
}

impl Agents {
    /// One agent per node, per-packet only (`--socket-lb=false`).
    fn start(c: &Cluster, dir: &TestDir, manifests: &ManifestDir, extra: &[&str]) -> Agents {
        Self::start_with(c, dir, manifests, extra, None)
    }

    /// One agent per node; node 1's with socket LB on `cgroup` when given.
    fn start_with(
        c: &Cluster,
        dir: &TestDir,
        manifests: &ManifestDir,
        extra: &[&str],
        cgroup: Option<&TestCgroup>,
    ) -> Agents {
        let mut agents = Vec::new();
        let mut bpffs = Vec::new();
        for (i, node) in c.nodes.iter().enumerate() {
            let mount = BpffsMount::new().unwrap();
            let cg = cgroup.filter(|_| i == 0);
            let mut cfg = AgentConfig::new(sluice_bin(), node, manifests, &mount, cg, dir);
            let socket_lb = if cg.is_some() { "--socket-lb=true" } else { "--socket-lb=false" };
            cfg.extra_args = [socket_lb, "--devices", "eth0"]
                .iter()
                .chain(extra)
                .map(|s| (*s).to_owned())
                .collect();
            agents.push(Agent::start(node, cfg).unwrap());
            bpffs.push(mount);
        }
        Agents { agents, bpffs }
    }

    /// The NodePort addresses node `i` (0-based) has in its pinned map.
    fn nodeport_addrs(&self, i: usize) -> BTreeSet<Ipv4Addr> {
        let paths = PinPaths::new(self.bpffs[i].path().join("sluice"));
        let map: aya::maps::HashMap<aya::maps::MapData, u32, u32> =
            open_pinned(&paths, proxy_common::MAP_NODE_ADDRS).unwrap();
        map.keys().map(|k| proxy_common::addr_from_map(k.unwrap())).collect()
    }

    fn stop(mut self) {
        for a in &mut self.agents {
            let status = a.stop().unwrap();
            assert!(status.success(), "agent exit status {status}; log:\n{}", a.log());
        }
    }
}

// Expect: a NodePort with externalTrafficPolicy Cluster, reached from an
// external client on node 1's address, balances over the backend on node 1
// (which sees the client's address) and the backend on node 2 (which sees
// node 1's address: SNAT), and replies come back from the NodePort; an
// externalIP and a LoadBalancer IP (ipMode VIP) of the service work the same,
// a LoadBalancer IP with ipMode Proxy is left alone; a pod on node 1 reaches
// the NodePort on its node's address too.
#[test]
fn nodeport_cluster_policy_snats_only_remote_backends() {
    if !require_root() {
        return;
    }
    sweep_stale();
    let dir = TestDir::new("nodeport").unwrap();
    let c = cluster(2);
    let manifests = ManifestDir::new_in(&dir).unwrap();
    for node in &c.nodes {
        manifests.write_node(node).unwrap();
    }
    let status = format!(
        "status:\n  loadBalancer:\n    ingress:\n    - ip: {LB_IP}\n      ipMode: VIP\n    - ip: {LB_PROXY_IP}\n      ipMode: Proxy\n"
    );
    let spec = format!("  type: LoadBalancer\n  externalIPs: [{EXTERNAL_IP}]\n{}", ports(30080));
    let backends = [(&c.pods[0], &c.nodes[0]), (&c.pods[1], &c.nodes[1])];
    manifests
        .write_file("web.yaml", &service_yaml("web", "10.96.0.30", &spec, &status, &backends))
        .unwrap();
    let agents = Agents::start(&c, &dir, &manifests, &[]);

    let node1 = SocketAddrV4::new(device_addr(1), 30080);
    wait_answer(&c.client, node1);
    let seen = ask_many(&c.client, node1, 40);
    let expected: BTreeSet<(String, String)> =
        [("be1".to_owned(), CLIENT.to_string()), ("be2".to_owned(), device_addr(1).to_string())]
            .into();
    assert_eq!(seen, expected, "NodePort on node 1: (backend, source seen)");

    for addr in [EXTERNAL_IP, LB_IP] {
        let seen = ask_many(&c.client, SocketAddrV4::new(addr, 80), 40);
        assert_eq!(seen, expected, "{addr}:80: (backend, source seen)");
    }
    // ipMode Proxy: not programmed (no frontend, so nothing answers).
    let services = agents.agents[0].services().unwrap();
    assert!(services.iter().all(|s| s.address != LB_PROXY_IP.to_string()), "{services:?}");
    assert!(services.iter().any(|s| s.address == LB_IP.to_string()), "{services:?}");

    // A pod on node 1 reaches the NodePort on its node's address.
    let client_pod = c.nodes[0].add_pod("np-podclient").unwrap();
    // (The agent attaches to the new pod's interface within its 1 s scan.)
    wait_answer(client_pod.netns(), node1);
    let seen = ask_many(client_pod.netns(), node1, 30);
    let names: BTreeSet<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["be1", "be2"].into(), "pod -> NodePort: {seen:?}");
    // Pods are not SNATed (their addresses are routable in the cluster).
    assert!(seen.iter().all(|(_, src)| *src == client_pod.ip().to_string()), "{seen:?}");
    agents.stop();
}

// Expect: with externalTrafficPolicy Local a NodePort only uses the node's
// own endpoints and the backend sees the client's address; a node without a
// local endpoint drops the traffic (a timeout, not a refusal) while the
// service has endpoints elsewhere. A pod on that node reaches the NodePort
// on its node's address and the service's externalIP through the cluster's
// endpoints, with its own address (kube-proxy's short cut for the node's
// own traffic to external frontends of a Local service).
#[test]
fn nodeport_local_policy_keeps_the_client_address() {
    if !require_root() {
        return;
    }
    sweep_stale();
    let dir = TestDir::new("np-local").unwrap();
    let c = cluster(2);
    let manifests = ManifestDir::new_in(&dir).unwrap();
    for node in &c.nodes {
        manifests.write_node(node).unwrap();
    }
    let spec = format!("  type: NodePort\n  externalTrafficPolicy: Local\n{}", ports(30081));
    let both = [(&c.pods[0], &c.nodes[0]), (&c.pods[1], &c.nodes[1])];
    manifests
        .write_file("local.yaml", &service_yaml("local", "10.96.0.31", &spec, "", &both))
        .unwrap();
    let spec = format!(
        "  type: NodePort\n  externalTrafficPolicy: Local\n  externalIPs: [{ONLY2_EXTERNAL_IP}]\n{}",
        ports(30082)
    );
    let only2 = [(&c.pods[1], &c.nodes[1])];
    manifests
        .write_file("only2.yaml", &service_yaml("only2", "10.96.0.32", &spec, "", &only2))
        .unwrap();
    let agents = Agents::start(&c, &dir, &manifests, &[]);

    for (i, node) in [(1u8, "be1"), (2, "be2")] {
        let addr = SocketAddrV4::new(device_addr(i), 30081);
        wait_answer(&c.client, addr);
        let seen = ask_many(&c.client, addr, 20);
        assert_eq!(seen, [(node.to_owned(), CLIENT.to_string())].into(), "node {i}");
    }
    let on2 = SocketAddrV4::new(device_addr(2), 30082);
    assert_eq!(wait_answer(&c.client, on2), ("be2".to_owned(), CLIENT.to_string()));
    let on1 = SocketAddrV4::new(device_addr(1), 30082);
    let start = Instant::now();
    let err = ask(&c.client, on1).expect_err("node 1 has no local endpoint");
    assert_ne!(err.kind(), ErrorKind::ConnectionRefused, "dropped, not rejected: {err}");
    assert!(start.elapsed() >= IO_TIMEOUT / 2, "gave up after {:?}: {err}", start.elapsed());

    let pod = c.nodes[0].add_pod("cl1").unwrap();
    for addr in [on1, SocketAddrV4::new(ONLY2_EXTERNAL_IP, 80)] {
        let (name, seen) = wait_answer(pod.netns(), addr);
        assert_eq!((name.as_str(), seen), ("be2", pod.ip().to_string()), "pod to {addr}");
        let seen = ask_many(pod.netns(), addr, 5);
        assert_eq!(seen, [("be2".to_owned(), pod.ip().to_string())].into(), "pod to {addr}");
    }
    agents.stop();
}

// Expect: NodePorts follow the device's addresses while the agent runs: an
// address added to eth0 serves NodePorts within seconds, and is no longer a
// NodePort address once removed; --nodeport-addresses limits which serve.
#[test]
fn nodeport_addresses_are_tracked_live() {
    if !require_root() {
        return;
    }
    sweep_stale();
    let dir = TestDir::new("np-live").unwrap();
    let c = cluster(1);
    let manifests = ManifestDir::new_in(&dir).unwrap();
    manifests.write_node(&c.nodes[0]).unwrap();
    let spec = format!("  type: NodePort\n{}", ports(30083));
    let backends = [(&c.pods[0], &c.nodes[0])];
    manifests
        .write_file("live.yaml", &service_yaml("live", "10.96.0.33", &spec, "", &backends))
        .unwrap();
    let agents = Agents::start(&c, &dir, &manifests, &["--nodeport-addresses", "198.18.0.0/24"]);
    let node = c.nodes[0].netns();
    wait_answer(&c.client, SocketAddrV4::new(device_addr(1), 30083));
    assert_eq!(agents.nodeport_addrs(0), [device_addr(1)].into());

    let extra = Ipv4Addr::new(198, 18, 0, 50);
    node.ip(&["addr", "add", &format!("{extra}/24"), "dev", "eth0"]).unwrap();
    // Outside --nodeport-addresses: never a NodePort address.
    node.ip(&["addr", "add", "192.0.2.1/24", "dev", "eth0"]).unwrap();
    let got = wait_answer(&c.client, SocketAddrV4::new(extra, 30083));
    assert_eq!(got, ("be1".to_owned(), CLIENT.to_string()));
    assert_eq!(agents.nodeport_addrs(0), [device_addr(1), extra].into());

    node.ip(&["addr", "del", &format!("{extra}/24"), "dev", "eth0"]).unwrap();
    let start = Instant::now();
    while agents.nodeport_addrs(0).contains(&extra) {
        assert!(start.elapsed() < WAIT, "{extra} still a NodePort address");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(agents.nodeport_addrs(0), [device_addr(1)].into());
    agents.stop();
}

/// A process in `ns` and in `cgroup` (python3) asks `addr` `n` times; the
/// first word of each answer.
fn host_process_asks(ns: &Netns, cgroup: &TestCgroup, addr: SocketAddrV4, n: usize) -> Vec<String> {
    const SCRIPT: &str = r#"
import socket, sys
for _ in range(int(sys.argv[3])):
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    print(s.makefile().readline().split()[0])
    s.close()
"#;
    let mut cmd = ns.command("python3").unwrap();
    cmd.args(["-c", SCRIPT, &addr.ip().to_string(), &addr.port().to_string(), &n.to_string()]);
    cgroup.join_on_exec(&mut cmd).unwrap();
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30)).expect("client ran");
    assert!(out.status.success(), "host client failed: {}\n{}", out.stdout, out.stderr);
    out.stdout.lines().map(str::to_owned).collect()
}

// Expect: a process on node 1 itself (in the agent's cgroup, socket LB on)
// reaches the NodePort on its own node's address, balanced over the local
// and the remote backend; and the NodePort of a service with
// externalTrafficPolicy Local whose only endpoint is on node 2 (the node's
// own traffic uses the cluster's endpoints, as with kube-proxy).
#[test]
fn nodeport_from_the_node_itself_through_socket_lb() {
    if !require_root() {
        return;
    }
    if !std::process::Command::new("python3").arg("-V").status().is_ok_and(|s| s.success()) {
        eprintln!("skipping: python3 is needed for the host client");
        return;
    }
    sweep_stale();
    let dir = TestDir::new("np-host").unwrap();
    let cgroup = TestCgroup::new("np-host").unwrap();
    let c = cluster(2);
    let manifests = ManifestDir::new_in(&dir).unwrap();
    for node in &c.nodes {
        manifests.write_node(node).unwrap();
    }
    let spec = format!("  type: NodePort\n{}", ports(30084));
    let backends = [(&c.pods[0], &c.nodes[0]), (&c.pods[1], &c.nodes[1])];
    manifests
        .write_file("host.yaml", &service_yaml("host", "10.96.0.34", &spec, "", &backends))
        .unwrap();
    let spec = format!("  type: NodePort\n  externalTrafficPolicy: Local\n{}", ports(30085));
    let only2 = [(&c.pods[1], &c.nodes[1])];
    let yaml = service_yaml("hostlocal", "10.96.0.35", &spec, "", &only2);
    manifests.write_file("hostlocal.yaml", &yaml).unwrap();
    let agents = Agents::start_with(&c, &dir, &manifests, &[], Some(&cgroup));
    let addr = SocketAddrV4::new(device_addr(1), 30084);
    wait_answer(&c.client, addr);
    let names: BTreeSet<String> =
        host_process_asks(c.nodes[0].netns(), &cgroup, addr, 30).into_iter().collect();
    assert_eq!(names, ["be1".to_owned(), "be2".to_owned()].into());
    wait_answer(&c.client, SocketAddrV4::new(device_addr(2), 30085));
    let local = SocketAddrV4::new(device_addr(1), 30085);
    let names = host_process_asks(c.nodes[0].netns(), &cgroup, local, 10);
    assert_eq!(names, vec!["be2".to_owned(); 10]);
    agents.stop();
}

// Expect: with sessionAffinity ClientIP the affinity is per service port,
// shared by its ClusterIP and its NodePort (kube-proxy): each of several
// client pods on node 1 first reaches the ClusterIP, then the NodePort on
// node 1's address, and gets the same backend both ways, every time. Clients
// are added until both backends were some client's first pick and at least six asked (at most 12):
// were the frontends' affinities separate, each client would match with
// probability 1/2.
#[test]
fn session_affinity_is_shared_by_clusterip_and_nodeport() {
    if !require_root() {
        return;
    }
    sweep_stale();
    let dir = TestDir::new("np-affinity").unwrap();
    let c = cluster(2);
    let manifests = ManifestDir::new_in(&dir).unwrap();
    for node in &c.nodes {
        manifests.write_node(node).unwrap();
    }
    let spec = format!("  type: NodePort\n  sessionAffinity: ClientIP\n{}", ports(30081));
    let backends = [(&c.pods[0], &c.nodes[0]), (&c.pods[1], &c.nodes[1])];
    manifests
        .write_file("aff.yaml", &service_yaml("aff", "10.96.0.31", &spec, "", &backends))
        .unwrap();
    let agents = Agents::start(&c, &dir, &manifests, &[]);
    let cluster_ip = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 31), 80);
    let node_port = SocketAddrV4::new(device_addr(1), 30081);

    let mut firsts = BTreeSet::new();
    let mut clients = 0;
    while (firsts.len() < 2 || clients < 6) && clients < 12 {
        let i = clients;
        clients += 1;
        let client = c.nodes[0].add_pod(&format!("aff-c{i}")).unwrap();
        // (The agent attaches to the new pod's interface within its 1 s scan.)
        let (first, _) = wait_answer(client.netns(), cluster_ip);
        let via_cluster_ip = ask_many(client.netns(), cluster_ip, 5);
        let via_node_port = ask_many(client.netns(), node_port, 10);
        let names = |s: &BTreeSet<(String, String)>| -> BTreeSet<String> {
            s.iter().map(|(n, _)| n.clone()).collect()
        };
        assert_eq!(names(&via_cluster_ip), [first.clone()].into(), "client {i}: ClusterIP");
        assert_eq!(
            names(&via_node_port),
            [first.clone()].into(),
            "client {i}: NodePort must keep the ClusterIP's backend"
        );
        firsts.insert(first);
    }
    assert_eq!(firsts.len(), 2, "{clients} clients all went to {firsts:?}");
    assert!(clients >= 6);
    agents.stop();
}

// Expect: a LoadBalancer service with loadBalancerSourceRanges [198.18.1.1/32]
// serves the external client inside the range on its LoadBalancer IP and its
// NodePort, while a second external client outside it gets no answer on
// either (its SYNs are dropped and counted as source_range_denied); once the
// ranges are removed from the Service, the outsider is served too.
#[test]
fn load_balancer_source_ranges_admit_only_listed_clients() {
    if !require_root() {
        return;
    }
    sweep_stale();
    let dir = TestDir::new("lbsr").unwrap();
    let c = cluster(1);
    let underlay = &c._underlay;
    let outsider = underlay.add_external_at("np-outsider", OUTSIDER).unwrap();
    outsider.ip(&["route", "add", "203.0.113.0/24", "via", &device_addr(1).to_string()]).unwrap();
    let manifests = ManifestDir::new_in(&dir).unwrap();
    manifests.write_node(&c.nodes[0]).unwrap();
    let status = format!("status:\n  loadBalancer:\n    ingress:\n    - ip: {LB_IP}\n");
    let backends = [(&c.pods[0], &c.nodes[0])];
    let write = |ranges: &str| {
        let spec = format!("  type: LoadBalancer\n{ranges}{}", ports(30081));
        let yaml = service_yaml("guarded", "10.96.0.31", &spec, &status, &backends);
        manifests.write_file("guarded.yaml", &yaml).unwrap();
    };
    write(&format!("  loadBalancerSourceRanges: [\"{CLIENT}/32\"]\n"));
    let agents = Agents::start(&c, &dir, &manifests, &[]);
    let paths = PinPaths::new(agents.bpffs[0].path().join("sluice"));
    let denied = || drop_count(&paths, DropReason::SourceRangeDenied).unwrap();

    let lb = SocketAddrV4::new(LB_IP, 80);
    let node_port = SocketAddrV4::new(device_addr(1), 30081);
    for addr in [lb, node_port] {
        wait_answer(&c.client, addr);
        let seen = ask_many(&c.client, addr, 10);
        assert_eq!(seen, [("be1".to_owned(), CLIENT.to_string())].into(), "inside -> {addr}");
    }
    let before = denied();
    for addr in [lb, node_port] {
        let res = ask(&outsider, addr);
        assert!(res.is_err(), "outsider reached {addr}: {res:?}");
    }
    assert!(denied() >= before + 2, "source_range_denied {} -> {}", before, denied());

    // Without ranges the service is open to everyone.
    write("");
    for addr in [lb, node_port] {
        let (name, _) = wait_answer(&outsider, addr);
        assert_eq!(name, "be1");
    }
    agents.stop();
}
