//! End-to-end: the VXLAN overlay (`sluice agent --tunnel vxlan`). Three node
//! namespaces on an underlay bridge (198.18.0.0/24, in a namespace of its
//! own), a pod on each node (10.244.<i>.0/24), an external client on the
//! underlay, one agent per node fed the Node objects from a manifest
//! directory. The device, routes, neighbour and FDB entries are the agents',
//! never the test's. Needs root; without it every test here prints
//! `skipping <test>: needs root` and passes.
//!
//! Run: `unshare --mount --propagation private cargo test --release -p sluice --test e2e_vxlan`

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::testbed::{
    Agent, AgentConfig, Backend, BpffsMount, BulkServer, ClusterIpService, CniPod, EchoServer,
    ManifestDir, Netns, Node, Overlay, Pod, Protocol, Reply, ServicePort, TestDir, Underlay,
    bulk_send, cni_bin, conf_from_conflist, run_checked, tcp_request, udp_len, udp_request,
    wait_for,
};
use sluice::tunnel::{DEFAULT_PORT, DEVICE, fmt_mac, vtep_mac};

const TCP: u16 = 8080;
const UDP: u16 = 5353;
const BULK: u16 = 9000;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const NODE_PORT: u16 = 30080;
const IO_TIMEOUT: Duration = Duration::from_secs(1);
const SHORT: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(20);
const CMD: Duration = Duration::from_secs(10);

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

fn ready() -> bool {
    sluice::testbed::ready_for_agent(sluice_bin())
}

/// `node`'s routes of protocol `RTPROT_SLUICE`: (destination, gateway, device).
fn sluice_routes(node: &Node) -> anyhow::Result<Vec<(String, String, String)>> {
    let routes = node.netns().sluice_routes()?;
    Ok(routes
        .into_iter()
        .map(|r| (r.dst, r.gateway.unwrap_or_default(), r.dev.unwrap_or_default()))
        .collect())
}

/// `ip -d -j link show dev vxlan_sluice` on `node`, `None` when absent.
fn vxlan_link(node: &Node) -> anyhow::Result<Option<Value>> {
    let out = sluice::testbed::run_with_timeout(
        node.netns().command("ip")?.args(["-d", "-j", "link", "show", "dev", DEVICE]),
        CMD,
    )?;
    if !out.status.success() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(&out.stdout)?;
    Ok(v.get(0).cloned())
}

/// Node `i`'s (0-based) vtep address, `10.244.<i+1>.0`.
fn vtep(i: usize) -> String {
    format!("10.244.{}.0", i + 1)
}

/// Three nodes on an underlay, a pod with echo servers on each, an external
/// client, and (once started) an agent per node. Fields drop in declaration
/// order: agents first, the test directory last.
struct Cluster {
    agents: Vec<Option<Agent>>,
    /// Each node's InternalIP as its Node object says.
    ips: Vec<Ipv4Addr>,
    _servers: Vec<EchoServer>,
    pods: Vec<Pod>,
    client: Netns,
    nodes: Vec<Node>,
    underlay: Underlay,
    manifests: ManifestDir,
    bpffs: BpffsMount,
    dir: TestDir,
}

impl Cluster {
    /// Nodes `node-1..=3` (index i: 198.18.0.<i+1>, pods 10.244.<i>.0/24),
    /// their Node objects in the manifests, a pod per node answering with
    /// its name.
    fn new(label: &str) -> Cluster {
        let dir = TestDir::new(label).unwrap();
        let bpffs = BpffsMount::new_in(&dir).unwrap();
        let manifests = ManifestDir::new_in(&dir).unwrap();
        let underlay = Underlay::new().unwrap();
        let client = underlay.add_external("vx-client").unwrap();
        let nodes = underlay.add_nodes(3, &manifests).unwrap();
        let mut pods = Vec::new();
        let mut servers = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let name = format!("pod-{}", i + 1);
            let pod = n.add_pod(&name).unwrap();
            servers.push(EchoServer::start_replying(&pod, &name, TCP, UDP, Reply::Name).unwrap());
            pods.push(pod);
        }
        Cluster {
            agents: Vec::new(),
            ips: nodes.iter().map(Node::address).collect(),
            _servers: servers,
            pods,
            client,
            nodes,
            underlay,
            manifests,
            bpffs,
            dir,
        }
    }

    fn cni_conf_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("cni-{}", self.nodes[i].name()))
    }

    /// An agent on node `i` (own pin directory, own CNI config directory),
    /// serving `eth0`, without socket-level LB (so that service traffic takes
    /// the per-packet path), with `extra` flags.
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

    fn start_agents(&mut self, extra: &[&str]) {
        for i in 0..self.nodes.len() {
            let a = self.start_agent(i, extra);
            self.agents.push(Some(a));
        }
    }

    fn tcp(&self, from: usize, to: usize) -> std::io::Result<String> {
        tcp_request(&self.pods[from], SocketAddrV4::new(self.pods[to].ip(), TCP), IO_TIMEOUT)
    }

    fn udp(&self, from: usize, to: usize) -> std::io::Result<String> {
        udp_request(&self.pods[from], SocketAddrV4::new(self.pods[to].ip(), UDP), IO_TIMEOUT)
    }

    /// Every cross-node pair among `nodes` talks TCP and UDP.
    fn check_pairs(&self, nodes: &[usize]) {
        for &from in nodes {
            for &to in nodes.iter().filter(|t| **t != from) {
                let name = format!("pod-{}", to + 1);
                assert_eq!(self.tcp(from, to).unwrap(), name, "TCP pod-{} -> {name}", from + 1);
                assert_eq!(self.udp(from, to).unwrap(), name, "UDP pod-{} -> {name}", from + 1);
            }
        }
    }

    /// Waits until node `i` holds exactly the overlay entries for `peers`.
    fn wait_overlay(&mut self, i: usize, peers: &[usize]) {
        let peers: Vec<(String, Ipv4Addr)> =
            peers.iter().map(|&p| (self.nodes[p].pod_cidr(), self.ips[p])).collect();
        Overlay::expected(&peers).unwrap().wait(&self.nodes[i], WAIT);
        self.check_agents();
    }

    fn check_agents(&mut self) {
        for a in self.agents.iter_mut().flatten() {
            assert!(a.try_wait().unwrap().is_none(), "agent exited; log:\n{}", a.log());
        }
    }

    /// Drops pod traffic that crosses the underlay unencapsulated, and counts
    /// VXLAN packets: a `bridge` family table on the underlay switch.
    fn guard_underlay(&self) {
        let script = format!(
            "table bridge vxtest {{\n\tchain forward {{\n\t\ttype filter hook forward priority 0; policy accept;\n\
             \t\tip saddr 10.244.0.0/16 counter drop\n\t\tip daddr 10.244.0.0/16 counter drop\n\
             \t\tudp dport {DEFAULT_PORT} counter accept\n\t}}\n}}\n"
        );
        let file = self.dir.join("underlay.nft");
        std::fs::write(&file, script).unwrap();
        run_checked(self.underlay.netns().command("nft").unwrap().arg("-f").arg(&file), CMD)
            .unwrap();
    }

    /// The underlay's counters: (plain pod packets dropped, VXLAN packets).
    fn underlay_counters(&self) -> (u64, u64) {
        let out = run_checked(
            self.underlay
                .netns()
                .command("nft")
                .unwrap()
                .args(["-j", "list", "table", "bridge", "vxtest"]),
            CMD,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        let mut dropped = 0;
        let mut vxlan = 0;
        for item in v["nftables"].as_array().unwrap() {
            let Some(rule) = item.get("rule") else { continue };
            let exprs = rule["expr"].as_array().unwrap();
            let packets: u64 = exprs
                .iter()
                .find_map(|e| e.get("counter").and_then(|c| c["packets"].as_u64()))
                .unwrap_or(0);
            if exprs.iter().any(|e| e.get("drop").is_some()) {
                dropped += packets;
            } else {
                vxlan += packets;
            }
        }
        (dropped, vxlan)
    }
}

/// A pod on node `i` wired by `sluice-cni` from the conflist that node's
/// agent wrote (with the test's data directory).
fn cni_pod(c: &Cluster, bin: &Path, i: usize, name: &str) -> CniPod {
    let data = c.dir.join(format!("cni-data-{i}"));
    let conf = conf_from_conflist(&c.cni_conf_dir(i), &data, WAIT).unwrap();
    CniPod::add(bin, c.nodes[i].netns(), &conf, name).unwrap()
}

/// The MTU of `dev` in `ns`.
fn mtu(ns: &Netns, dev: &str) -> u64 {
    let v: Value =
        serde_json::from_str(&ns.ip(&["-j", "link", "show", "dev", dev]).unwrap()).unwrap();
    v[0]["mtu"].as_u64().unwrap()
}

/// The overlay carries everything between nodes: pod to pod (TCP and UDP,
/// every pair), pod to a ClusterIP whose backend is on another node, a
/// NodePort on node 1 whose backend is on node 3, and a few MB in 64 KiB
/// writes between pods the CNI plugin wired with the overlay's MTU; the
/// underlay, which drops any packet from or to a pod address, sees only
/// VXLAN.
#[test]
fn vxlan_overlay_carries_pods_services_and_nodeports() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("vxlan");
    c.guard_underlay();
    // Control: without agents there is no way between nodes.
    assert!(tcp_request(&c.pods[0], SocketAddrV4::new(c.pods[1].ip(), TCP), SHORT).is_err());
    // Control: the guarded underlay drops natively routed pod traffic.
    let (n1, n2) = (c.nodes[0].netns(), c.nodes[1].netns());
    let (gw1, gw2) = (c.nodes[0].address().to_string(), c.nodes[1].address().to_string());
    n1.ip(&["route", "add", &c.nodes[1].pod_cidr(), "via", &gw2]).unwrap();
    n2.ip(&["route", "add", &c.nodes[0].pod_cidr(), "via", &gw1]).unwrap();
    assert!(tcp_request(&c.pods[0], SocketAddrV4::new(c.pods[1].ip(), TCP), SHORT).is_err());
    let (dropped_native, _) = c.underlay_counters();
    assert!(dropped_native > 0, "the underlay guard dropped the native attempt");
    n1.ip(&["route", "del", &c.nodes[1].pod_cidr()]).unwrap();
    n2.ip(&["route", "del", &c.nodes[0].pod_cidr()]).unwrap();

    c.start_agents(&["--tunnel", "vxlan"]);
    let started = Instant::now();
    for i in 0..3 {
        let peers: Vec<usize> = (0..3).filter(|p| *p != i).collect();
        c.wait_overlay(i, &peers);
    }
    eprintln!("overlay on all three nodes after {:?}", started.elapsed());
    // The device as documented.
    for (i, n) in c.nodes.iter().enumerate() {
        let link = vxlan_link(n).unwrap().expect("vxlan_sluice exists");
        let data = &link["linkinfo"]["info_data"];
        assert_eq!(link["linkinfo"]["info_kind"], "vxlan", "{link}");
        assert_eq!(data["id"], 1, "{link}");
        assert_eq!(data["port"], u64::from(DEFAULT_PORT), "{link}");
        assert_eq!(data["local"], n.address().to_string(), "{link}");
        assert_eq!(data["learning"], false, "{link}");
        assert_eq!(link["mtu"], 1450, "{link}");
        assert_eq!(link["address"], fmt_mac(&vtep_mac(n.address())), "{link}");
        let addrs = n.netns().ip(&["-4", "-o", "addr", "show", "dev", DEVICE]).unwrap();
        assert!(addrs.contains(&format!("inet {}/32", vtep(i))), "{addrs}");
        // No route via an InternalIP: the underlay knows nothing of pods.
        let routes = n.netns().routes().unwrap();
        for r in routes.iter().filter(|r| r.dst.starts_with("10.244.")) {
            assert!(r.dev.as_deref() != Some("eth0"), "{}: {r:?}", n.name());
        }
    }

    c.check_pairs(&[0, 1, 2]);
    let (dropped, vxlan) = c.underlay_counters();
    eprintln!("underlay after pod-to-pod: {vxlan} VXLAN packets, {dropped} plain pod packets");
    assert_eq!(dropped, dropped_native, "no pod packet crossed the underlay unencapsulated");
    assert!(vxlan >= 24, "every exchange crossed the underlay as VXLAN ({vxlan} packets)");

    // Pods reach other nodes' own addresses through the tunnel as well (a
    // rule for this node's pod CIDR, table 115), keeping their address.
    for (i, n) in c.nodes.iter().enumerate() {
        let rules = n.netns().ip(&["-4", "rule", "show"]).unwrap();
        let want = format!("from {} lookup 115", n.pod_cidr());
        assert!(rules.contains(&want), "{}: {rules}", n.name());
        let table = n.netns().ip(&["-4", "route", "show", "table", "115"]).unwrap();
        for p in (0..3).filter(|p| *p != i) {
            let want =
                format!("{} via {} dev {DEVICE} proto 115 onlink", c.nodes[p].address(), vtep(p));
            assert!(table.contains(&want), "{}: {want:?} in {table}", n.name());
        }
    }
    let host3 =
        EchoServer::start_replying(&c.nodes[2], "node-3", 7071, 7071, Reply::PeerAddress).unwrap();
    let pod1 = c.pods[0].ip().to_string();
    let node3 = c.nodes[2].address();
    assert_eq!(tcp_request(&c.pods[0], SocketAddrV4::new(node3, 7071), IO_TIMEOUT).unwrap(), pod1);
    assert_eq!(udp_request(&c.pods[0], SocketAddrV4::new(node3, 7071), IO_TIMEOUT).unwrap(), pod1);
    drop(host3);
    let (dropped, _) = c.underlay_counters();
    assert_eq!(dropped, dropped_native, "pod to node crossed the underlay encapsulated");

    // A node's own traffic to remote pods leaves from its InternalIP, through
    // the tunnel both ways (TCP and UDP).
    let seen =
        EchoServer::start_replying(&c.pods[2], "peer", 7070, 7070, Reply::PeerAddress).unwrap();
    let pod3 = SocketAddrV4::new(c.pods[2].ip(), 7070);
    let node1 = c.nodes[0].address().to_string();
    assert_eq!(tcp_request(&c.nodes[0], pod3, IO_TIMEOUT).unwrap(), node1);
    assert_eq!(udp_request(&c.nodes[0], pod3, IO_TIMEOUT).unwrap(), node1);
    drop(seen);
    let (dropped, _) = c.underlay_counters();
    assert_eq!(dropped, dropped_native, "node to pod crossed the underlay encapsulated");

    // ClusterIP whose only backend is on node 3, from a pod on node 1 (the
    // answer comes back through the tunnel and is translated there).
    let svc = ClusterIpService::new(
        "echo",
        VIP,
        vec![
            ServicePort::new("tcp", Protocol::Tcp, 80, TCP),
            ServicePort::new("udp", Protocol::Udp, 53, UDP),
        ],
        vec![Backend::of_pod(&c.pods[2], &c.nodes[2])],
    );
    c.manifests.write_service(&svc).unwrap();
    c.agents[0].as_mut().unwrap().wait_backends(WAIT, VIP, 80, Protocol::Tcp, 1).unwrap();
    c.agents[0].as_mut().unwrap().wait_backends(WAIT, VIP, 53, Protocol::Udp, 1).unwrap();
    for _ in 0..5 {
        assert_eq!(
            tcp_request(&c.pods[0], SocketAddrV4::new(VIP, 80), IO_TIMEOUT).unwrap(),
            "pod-3"
        );
        assert_eq!(
            udp_request(&c.pods[0], SocketAddrV4::new(VIP, 53), IO_TIMEOUT).unwrap(),
            "pod-3"
        );
    }

    // NodePort on node 1, backend on node 3, client outside the cluster.
    let np = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: np\n  namespace: default\nspec:\n  \
         type: NodePort\n  clusterIP: 10.96.0.51\n  clusterIPs: [10.96.0.51]\n  ports:\n  \
         - name: http\n    protocol: TCP\n    port: 80\n    targetPort: {TCP}\n    nodePort: {NODE_PORT}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: np-1\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: np\naddressType: IPv4\n\
         ports:\n- name: http\n  protocol: TCP\n  port: {TCP}\nendpoints:\n- addresses: [{}]\n  \
         conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: node-3\n",
        c.pods[2].ip()
    );
    c.manifests.write_file("np.yaml", &np).unwrap();
    let node1 = SocketAddrV4::new(c.nodes[0].address(), NODE_PORT);
    wait_for(WAIT, "NodePort on node 1 answers", || {
        Ok(tcp_request(&c.client, node1, IO_TIMEOUT).is_ok_and(|a| a == "pod-3"))
    });
    for _ in 0..10 {
        assert_eq!(tcp_request(&c.client, node1, IO_TIMEOUT).unwrap(), "pod-3");
    }

    // Egress to a host outside the cluster leaves with the node's address
    // (the masquerade works as without a tunnel).
    let ext = EchoServer::start_replying(&c.client, "ext", TCP, UDP, Reply::PeerAddress).unwrap();
    let ext_addr = sluice::testbed::EXTERNAL_ADDR;
    for (i, pod) in c.pods.iter().enumerate() {
        let node_ip = c.nodes[i].address().to_string();
        let tcp = SocketAddrV4::new(ext_addr, TCP);
        let udp = SocketAddrV4::new(ext_addr, UDP);
        wait_for(WAIT, "masquerade installed", || {
            Ok(tcp_request(pod, tcp, IO_TIMEOUT).is_ok_and(|a| a == node_ip))
        });
        assert_eq!(udp_request(pod, udp, IO_TIMEOUT).unwrap(), node_ip, "UDP pod-{}", i + 1);
    }
    drop(ext);

    // Large transfers between pods that sluice-cni wired from the agents'
    // conflists: their MTU leaves room for the encapsulation.
    if let Some(bin) = cni_bin(sluice_bin()) {
        let mtu_conf: Value = serde_json::from_str(
            &std::fs::read_to_string(c.cni_conf_dir(0).join("10-sluice.conflist")).unwrap(),
        )
        .unwrap();
        assert_eq!(mtu_conf["plugins"][0]["mtu"], 1450, "{mtu_conf}");
        let a = cni_pod(&c, &bin, 0, "bulk-a");
        let b = cni_pod(&c, &bin, 2, "bulk-b");
        assert_eq!(mtu(a.netns(), "eth0"), 1450);
        assert_eq!(mtu(b.netns(), "eth0"), 1450);
        let server = BulkServer::start(&b, BULK).unwrap();
        let to = SocketAddrV4::new(b.ip(), BULK);
        let total = 4 << 20;
        let started = Instant::now();
        let (got, want) = bulk_send(&a, to, total, Duration::from_secs(60)).unwrap();
        eprintln!("{total} bytes in 64 KiB writes across VXLAN in {:?}", started.elapsed());
        assert_eq!(got, want, "the server read exactly what was sent");
        // Datagrams up to the MTU go in one packet, larger ones fragmented
        // before encapsulation, up to the UDP maximum.
        for len in [1422, 1423, 8000, 65507] {
            let answer = udp_len(&a, to, len, IO_TIMEOUT).unwrap();
            assert_eq!(answer, len.to_string(), "UDP datagram of {len}");
        }
        drop(server);
    } else {
        panic!("no sluice-cni binary next to {} (cargo build)", sluice_bin().display());
    }

    let (dropped, vxlan) = c.underlay_counters();
    eprintln!("underlay at the end: {vxlan} VXLAN packets, {dropped} plain pod packets");
    assert_eq!(dropped, dropped_native, "no pod packet crossed the underlay unencapsulated");
    c.check_agents();
    for a in c.agents.iter().flatten() {
        let log = a.log();
        assert_eq!(log.matches("created vxlan_sluice").count(), 1, "{log}");
        assert!(!log.contains("deleted vxlan_sluice"), "{log}");
        assert!(!log.contains("WARN"), "{log}");
    }
}

/// The overlay follows the Nodes and the flags: a deleted Node's route,
/// neighbour and FDB entries go on every other node while the rest keeps
/// working; the device stays on SIGTERM; `--tunnel disabled` removes it
/// (and its routes) and routes natively; `--tunnel vxlan` again replaces the
/// native routes; another `--vxlan-vni` recreates the device.
#[test]
fn vxlan_follows_nodes_and_flags() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new("vxlan-life");
    c.start_agents(&["--tunnel", "vxlan"]);
    for i in 0..3 {
        let peers: Vec<usize> = (0..3).filter(|p| *p != i).collect();
        c.wait_overlay(i, &peers);
    }
    c.check_pairs(&[0, 1, 2]);

    // node-3 leaves: nodes 1 and 2 drop its entries, 1 <-> 2 keeps working.
    c.manifests.remove_file("node-node-3.yaml").unwrap();
    let removed = Instant::now();
    c.wait_overlay(0, &[1]);
    c.wait_overlay(1, &[0]);
    eprintln!("node-3's overlay entries gone after {:?}", removed.elapsed());
    c.check_pairs(&[0, 1]);
    assert!(c.tcp(0, 2).is_err(), "node 1 has no way to node 3's pods any more");
    // It comes back.
    c.manifests.write_node(&c.nodes[2]).unwrap();
    c.wait_overlay(0, &[1, 2]);
    c.wait_overlay(1, &[0, 2]);
    c.check_pairs(&[0, 1, 2]);

    // node-2's InternalIP changes, and with it its MAC: its device is
    // created anew with the new local address and MAC; the others rewrite
    // their neighbour and FDB entries for it.
    let new_ip = Ipv4Addr::new(198, 18, 0, 103);
    c.nodes[1].netns().ip(&["addr", "add", &format!("{new_ip}/24"), "dev", "eth0"]).unwrap();
    c.manifests.write_node_object("node-2", &c.nodes[1].pod_cidr(), new_ip).unwrap();
    c.ips[1] = new_ip;
    c.wait_overlay(0, &[1, 2]);
    c.wait_overlay(2, &[0, 1]);
    let n2 = &c.nodes[1];
    wait_for(WAIT, "node 2's device sends from its new address", || {
        Ok(vxlan_link(n2)?.is_some_and(|l| {
            l["linkinfo"]["info_data"]["local"] == new_ip.to_string()
                && l["address"] == fmt_mac(&vtep_mac(new_ip))
        }))
    });
    c.check_pairs(&[0, 1, 2]);

    // SIGTERM leaves the overlay in place: traffic goes on, and the next
    // agent adopts the device as it is.
    let mut a1 = c.agents[0].take().unwrap();
    assert!(a1.stop().unwrap().success(), "agent 1: {}", a1.log());
    drop(a1);
    let before = vxlan_link(&c.nodes[0]).unwrap().expect("the device stays");
    c.check_pairs(&[0, 1]);
    c.agents[0] = Some(c.start_agent(0, &["--tunnel", "vxlan"]));
    wait_for(WAIT, "agent 1 has synced once", || {
        Ok(c.agents[0].as_ref().unwrap().log().contains("agent running"))
    });
    c.wait_overlay(0, &[1, 2]);
    let after = vxlan_link(&c.nodes[0]).unwrap().expect("the device stays");
    assert_eq!(before["ifindex"], after["ifindex"], "adopted, not created anew");
    let log = c.agents[0].as_ref().unwrap().log();
    assert!(!log.contains("VXLAN overlay updated"), "nothing to change: {log}");
    let mut a1 = c.agents[0].take().unwrap();
    assert!(a1.stop().unwrap().success(), "agent 1: {}", a1.log());
    drop(a1);

    // `--tunnel disabled`: the device goes (with its routes), native routes
    // come; a rule sluice did not make, into the same table, stays.
    c.nodes[0].netns().ip(&["rule", "add", "from", "10.99.0.0/24", "lookup", "115"]).unwrap();
    c.agents[0] = Some(c.start_agent(0, &[]));
    wait_for(WAIT, "agent 1 has synced once", || {
        Ok(c.agents[0].as_ref().unwrap().log().contains("agent running"))
    });
    let n1 = &c.nodes[0];
    wait_for(WAIT, "node 1's vxlan_sluice removed", || Ok(vxlan_link(n1)?.is_none()));
    let gw = |i: usize| c.ips[i].to_string();
    let want: Vec<(String, String, String)> = vec![
        (c.nodes[1].pod_cidr(), gw(1), "eth0".into()),
        (c.nodes[2].pod_cidr(), gw(2), "eth0".into()),
    ];
    wait_for(WAIT, "node 1 routes natively", || Ok(sluice_routes(n1)? == want));
    let log = c.agents[0].as_ref().unwrap().log();
    assert!(log.contains("VXLAN device (and its routes) removed"), "{log}");
    let rules = n1.netns().ip(&["-4", "rule", "show"]).unwrap();
    assert!(
        !rules.contains("from 10.244.1.0/24 lookup 115"),
        "the overlay's rule is gone: {rules}"
    );
    assert!(rules.contains("from 10.99.0.0/24 lookup 115"), "a foreign rule stays: {rules}");
    let table = n1.netns().ip(&["-4", "route", "show", "table", "115"]).unwrap();
    assert!(table.trim().is_empty(), "table 115 is empty: {table}");

    // `--tunnel vxlan` again: the native routes are replaced by overlay ones.
    let mut a1 = c.agents[0].take().unwrap();
    assert!(a1.stop().unwrap().success(), "agent 1: {}", a1.log());
    drop(a1);
    c.agents[0] = Some(c.start_agent(0, &["--tunnel", "vxlan"]));
    wait_for(WAIT, "agent 1 has synced once", || {
        Ok(c.agents[0].as_ref().unwrap().log().contains("agent running"))
    });
    c.wait_overlay(0, &[1, 2]);
    c.check_pairs(&[0, 1, 2]);

    // Another VNI: the kernel cannot change it in place; the device is
    // created anew (the other nodes still use VNI 1, so only the device
    // is checked).
    let mut a1 = c.agents[0].take().unwrap();
    assert!(a1.stop().unwrap().success(), "agent 1: {}", a1.log());
    drop(a1);
    c.agents[0] = Some(c.start_agent(0, &["--tunnel", "vxlan", "--vxlan-vni", "7"]));
    let n1 = &c.nodes[0];
    wait_for(WAIT, "node 1's device has VNI 7", || {
        Ok(vxlan_link(n1)?.is_some_and(|l| l["linkinfo"]["info_data"]["id"] == 7))
    });
    c.wait_overlay(0, &[1, 2]);
    c.check_agents();
}
