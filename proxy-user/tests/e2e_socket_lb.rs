//! Socket-level load balancing with real processes: a client process in the
//! client pod's network namespace *and* in the agent's cgroup (python3, the
//! machine's) connects to a ClusterIP. With socket LB on and the pod program
//! kept off the pod interfaces, only the cgroup hooks can balance, so every
//! success is theirs; with socket LB off the per-packet path must give the
//! same observable results. Needs root and python3; skips otherwise.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use serde_json::Value;
use sluice::testbed::{
    Agent, AgentConfig, Backend, BpffsMount, ClusterIpService, EchoServer, ManifestDir, Node, Pod,
    Protocol, ServicePort, TestCgroup, TestDir, require_root, run_with_timeout, sweep_stale,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const WAIT: Duration = Duration::from_secs(20);

const CLIENT: &str = r#"
import json, socket, sys
vip = sys.argv[1]
out = {"tcp": []}
for _ in range(30):
    s = socket.create_connection((vip, 80), timeout=1)
    out["peer"] = list(s.getpeername())
    out["tcp"].append(s.makefile().readline().strip())
    s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(1)
u.sendto(b"hi", (vip, 53))
data, src = u.recvfrom(512)
out["udp"], out["udp_src"] = data.decode(), list(src)
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(1)
c.connect((vip, 53))
c.send(b"hi")
out["cudp"], out["cudp_peer"] = c.recv(512).decode(), list(c.getpeername())
try:
    socket.create_connection((vip, 81), timeout=1).close()
    out["unserved"] = "connected"
except ConnectionRefusedError:
    out["unserved"] = "refused"
except OSError as e:
    out["unserved"] = type(e).__name__
print(json.dumps(out))
"#;

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

fn have_python() -> bool {
    std::process::Command::new("python3").arg("-c").arg("pass").status().is_ok_and(|s| s.success())
}

/// Runs the client script in `pod`'s netns and in `cgroup`; its JSON.
fn run_client(pod: &Pod, cgroup: &TestCgroup) -> Value {
    let mut cmd = pod.netns().command("python3").unwrap();
    cmd.arg("-c").arg(CLIENT).arg(VIP.to_string());
    cgroup.join_on_exec(&mut cmd).unwrap();
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30)).expect("client ran");
    assert!(out.status.success(), "client failed: {}\n{}", out.stdout, out.stderr);
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// Sets up a node, two backends and a client, runs the agent with `extra`
/// flags and the client; returns the client's observations.
fn scenario(label: &str, extra: &[&str]) -> Value {
    let dir = TestDir::new(label).unwrap();
    let bpffs = BpffsMount::new_in(&dir).unwrap();
    let cgroup = TestCgroup::new(label).unwrap();
    let node = Node::new("node-s").unwrap();
    let pods: Vec<Pod> =
        ["backend-a", "backend-b"].iter().map(|n| node.add_pod(n).unwrap()).collect();
    let client = node.add_pod("client").unwrap();
    let _servers: Vec<EchoServer> =
        pods.iter().map(|p| EchoServer::start(p, p.name(), 8080, 5353).unwrap()).collect();
    let manifests = ManifestDir::new_in(&dir).unwrap();
    manifests.write_node(&node).unwrap();
    let svc = ClusterIpService::new(
        "sock",
        VIP,
        vec![
            ServicePort::new("tcp", Protocol::Tcp, 80, 8080),
            ServicePort::new("udp", Protocol::Udp, 53, 5353),
        ],
        pods.iter().map(|p| Backend::of_pod(p, &node)).collect(),
    );
    manifests.write_service(&svc).unwrap();
    let mut cfg = AgentConfig::new(sluice_bin(), &node, &manifests, &bpffs, Some(&cgroup), &dir);
    cfg.extra_args = extra.iter().map(|s| (*s).to_owned()).collect();
    let mut agent = Agent::start(&node, cfg).unwrap();
    agent.wait_backends(WAIT, VIP, 80, Protocol::Tcp, 2).unwrap();
    agent.wait_backends(WAIT, VIP, 53, Protocol::Udp, 2).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let seen = run_client(&client, &cgroup);
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit status {status}; log:\n{}", agent.log());
    seen
}

/// What a client must observe, whichever path balanced it.
fn assert_observations(seen: &Value) {
    let tcp: Vec<&str> =
        seen["tcp"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(tcp.iter().all(|n| n.starts_with("backend-")), "{seen}");
    assert!(tcp.contains(&"backend-a") && tcp.contains(&"backend-b"), "balanced: {seen}");
    let vip = VIP.to_string();
    assert_eq!(seen["peer"], serde_json::json!([vip, 80]), "getpeername shows the frontend");
    assert!(seen["udp"].as_str().unwrap().starts_with("backend-"), "{seen}");
    assert_eq!(seen["udp_src"], serde_json::json!([vip, 53]), "recvfrom shows the frontend");
    assert!(seen["cudp"].as_str().unwrap().starts_with("backend-"), "{seen}");
    assert_eq!(seen["cudp_peer"], serde_json::json!([vip, 53]));
    assert_eq!(seen["unserved"], "refused", "{seen}");
}

// Expect: with socket LB on and no pod program on the pod interfaces, TCP,
// unconnected and connected UDP through the ClusterIP reach both backends,
// the application sees the ClusterIP as its peer, and an unserved port is
// refused at connect(); with socket LB off (pod program on) the client
// observes exactly the same.
#[test]
fn socket_lb_and_per_packet_path_look_the_same() {
    if !require_root() {
        return;
    }
    if !have_python() {
        eprintln!("skipping socket_lb_and_per_packet_path_look_the_same: python3 not found");
        return;
    }
    sweep_stale();
    let socket_only = scenario("socklb-on", &["--pod-devices", "nomatch"]);
    assert_observations(&socket_only);
    let per_packet = scenario("socklb-off", &["--socket-lb=false"]);
    assert_observations(&per_packet);
}
