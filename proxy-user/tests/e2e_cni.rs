//! End-to-end with the CNI plugin: `sluice agent` runs in a node namespace;
//! `sluice-cni` (run as a runtime would, in the node's namespace) wires two
//! pods; they reach each other and a ClusterIP Service served by the agent
//! with the second pod as backend; DEL leaves nothing behind. Needs root.
//!
//! The plugin binary is `target/<profile>/sluice-cni`, next to the `sluice`
//! binary of this test; when it is missing the test builds it with
//! `cargo build -p sluice-cni` (a plain `cargo build` of the workspace
//! builds it as well).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::testbed::{
    Agent, AgentConfig, Backend, BpffsMount, ClusterIpService, EchoServer, ManifestDir, Netns,
    Node, Protocol, ServicePort, TestCgroup, TestDir, cni_add, cni_wait_ready, require_root,
    sluice_has_agent, sweep_stale, tcp_request, udp_request,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const IO_TIMEOUT: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(20);

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

/// `target/<profile>/sluice-cni`, built if missing.
fn cni_bin() -> Option<PathBuf> {
    sluice::testbed::cni_bin(sluice_bin())
}

/// Runs the plugin inside `node` as a runtime would: (success, stdout JSON).
fn cni(bin: &Path, node: &Netns, env: &[(&str, &str)], conf: &Value) -> (bool, Value) {
    sluice::testbed::run_cni(bin, node, env, conf)
}

#[test]
fn cni_pods_reach_each_other_and_a_cluster_ip() {
    if !require_root() {
        return;
    }
    if !sluice_has_agent(sluice_bin()) {
        eprintln!("skipping: {} has no `agent` command", sluice_bin().display());
        return;
    }
    let Some(cni_bin) = cni_bin() else {
        eprintln!(
            "skipping: no sluice-cni binary next to {} (cargo build)",
            sluice_bin().display()
        );
        return;
    };
    sweep_stale();
    let dir = TestDir::new("e2e-cni").unwrap();
    let bpffs = BpffsMount::new_in(&dir).unwrap();
    let cgroup = TestCgroup::new("e2e-cni").unwrap();
    let node = Node::new("node-a").unwrap();
    let manifests = ManifestDir::new_in(&dir).unwrap();
    manifests.write_node(&node).unwrap();
    let cfg = AgentConfig::new(sluice_bin(), &node, &manifests, &bpffs, Some(&cgroup), &dir);
    let root = cfg.bpffs_root.clone();
    let conf = json!({
        "cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "sluice-cni",
        "podCIDR": node.pod_cidr(), "bpffsRoot": root, "dataDir": dir.join("cni-data"),
    });

    // Before the agent: STATUS 50, ADD 11.
    let (ok, v) = cni(&cni_bin, node.netns(), &[("CNI_COMMAND", "STATUS")], &conf);
    assert!(!ok && v["code"] == 50, "{v}");
    let mut agent = Agent::start(&node, cfg).unwrap();
    cni_wait_ready(&cni_bin, node.netns(), &conf, &mut agent, WAIT).unwrap();

    let pods: Vec<Netns> = ["pod-a", "pod-b"].iter().map(|n| Netns::new(n).unwrap()).collect();
    let mut ips = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        ips.push(cni_add(&cni_bin, node.netns(), &conf, &format!("sandbox{i}"), p).unwrap());
    }
    let _srv = EchoServer::start(&pods[1], "pod-b", 8080, 5353).unwrap();
    let got = tcp_request(&pods[0], SocketAddrV4::new(ips[1], 8080), IO_TIMEOUT).unwrap();
    assert_eq!(got, "pod-b");

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
    let vip = SocketAddrV4::new(VIP, 80);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tcp_request(&pods[0], vip, IO_TIMEOUT) {
            Ok(a) => {
                assert_eq!(a, "pod-b");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("connection to {vip}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("no connection to {vip}: {e}"),
        }
    }
    for _ in 0..20 {
        assert_eq!(tcp_request(&pods[0], vip, IO_TIMEOUT).unwrap(), "pod-b");
    }
    agent.wait_backends(WAIT, VIP, 53, Protocol::Udp, 1).unwrap();
    assert_eq!(udp_request(&pods[0], SocketAddrV4::new(VIP, 53), IO_TIMEOUT).unwrap(), "pod-b");

    // DEL both (twice, the second time as containerd does it).
    for (i, pod) in pods.iter().enumerate() {
        let id = format!("sandbox{i}");
        let path = pod.path();
        let p = path.to_str().unwrap();
        for env in [
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", &id),
                ("CNI_NETNS", p),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", &id), ("CNI_IFNAME", "eth0")],
        ] {
            let (ok, v) = cni(&cni_bin, node.netns(), &env, &conf);
            assert!(ok, "DEL: {v}");
        }
    }
    let links = node.netns().ip(&["-o", "link", "show"]).unwrap();
    assert!(!links.contains(": sl"), "host veths left: {links}");
    let routes = node.netns().ip(&["route", "show"]).unwrap();
    assert!(!routes.contains("10.244."), "routes left: {routes}");
    // Pod interface links (the agent's own cgroup links stay).
    let pins = sluice::datapath::PinPaths::new(&root).pod_links().unwrap();
    assert!(pins.is_empty(), "pod link pins left: {pins:?}");
    let eps = sluice_cni_endpoints(&root);
    assert_eq!(eps, 0, "SL_ENDPOINTS entries left");
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent: {status}; log:\n{}", agent.log());
}

/// Number of entries in the pinned `SL_ENDPOINTS`.
fn sluice_cni_endpoints(root: &Path) -> usize {
    use aya::maps::{HashMap, Map, MapData};
    let data = MapData::from_pin(root.join("maps/SL_ENDPOINTS")).unwrap();
    let map: HashMap<MapData, u32, proxy_common::EndpointInfo> =
        HashMap::try_from(Map::from_map_data(data).unwrap()).unwrap();
    map.keys().count()
}
