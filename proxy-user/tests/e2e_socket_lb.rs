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

/// The client of the socket-termination test: a UDP socket connected to
/// the ClusterIP and, once it knows its backend, one connected straight to
/// that backend's pod address. After a line on stdin (the backend is
/// removed) it uses the first socket until an error shows (at most 15 s),
/// reconnects it, and reports.
const UDP_CLIENT: &str = r#"
import errno, json, socket, sys, time
vip = sys.argv[1]
pods = dict(a.split("=") for a in sys.argv[2:])
def ask(s):
    s.settimeout(1)
    s.send(b"hi")
    return s.recv(512).decode()
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect((vip, 53))
first = ask(c)
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
d.connect((pods[first], 5353))
print(json.dumps({"first": first, "direct": ask(d)}), flush=True)
sys.stdin.readline()
start = time.monotonic()
out = {"error": None, "answers_after_removal": 0}
while time.monotonic() - start < 15:
    try:
        c.settimeout(0.2)
        c.send(b"hi")
        c.recv(512)
        out["answers_after_removal"] += 1
    except socket.timeout:
        pass
    except OSError as e:
        out["error"] = errno.errorcode.get(e.errno, str(e.errno))
        break
    time.sleep(0.05)
out["after_s"] = time.monotonic() - start
# An error the failed call did not report (reading SO_ERROR clears it).
out["pending"] = errno.errorcode.get(c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), 0)
c.connect((vip, 53))
out["second"] = ask(c)
out["second_peer"] = list(c.getpeername())
out["direct_pending_error"] = d.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
out["direct_after"] = ask(d)
print(json.dumps(out), flush=True)
"#;

/// The text of a log without its colour escapes (`ESC [ ... m`).
fn strip_ansi(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A client process that is killed when dropped (also on a failed assert).
struct Interactive {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Interactive {
    fn spawn(mut cmd: std::process::Command) -> Interactive {
        use std::{io::BufRead as _, process::Stdio};
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("client starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Interactive { child, lines }
    }

    fn read_json(&self, timeout: Duration) -> Value {
        let line = self.lines.recv_timeout(timeout).expect("client answered in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    fn write_line(&mut self, line: &str) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).expect("client reads stdin");
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Expect: a UDP socket connected (through socket LB) to a ClusterIP with two
// backends is destroyed by the agent when its backend is removed: the
// client's next operation fails (ECONNABORTED, or EDESTADDRREQ once the
// kernel has disconnected it) within seconds, although the removed pod
// still answers; reconnected, it reaches the remaining backend. A socket
// connected straight to the removed pod's address is left alone.
#[test]
fn connected_udp_socket_of_a_removed_backend_is_destroyed() {
    if !require_root() {
        return;
    }
    if !have_python() {
        eprintln!("skipping connected_udp_socket_of_a_removed_backend_is_destroyed: no python3");
        return;
    }
    sweep_stale();
    let dir = TestDir::new("sockterm").unwrap();
    let bpffs = BpffsMount::new_in(&dir).unwrap();
    let cgroup = TestCgroup::new("sockterm").unwrap();
    let node = Node::new("node-t").unwrap();
    let pods: Vec<Pod> =
        ["backend-a", "backend-b"].iter().map(|n| node.add_pod(n).unwrap()).collect();
    let client = node.add_pod("client").unwrap();
    let _servers: Vec<EchoServer> =
        pods.iter().map(|p| EchoServer::start(p, p.name(), 0, 5353).unwrap()).collect();
    let manifests = ManifestDir::new_in(&dir).unwrap();
    manifests.write_node(&node).unwrap();
    let service = |backends: &[&Pod]| {
        ClusterIpService::new(
            "sockterm",
            VIP,
            vec![ServicePort::new("udp", Protocol::Udp, 53, 5353)],
            backends.iter().map(|p| Backend::of_pod(p, &node)).collect(),
        )
    };
    manifests.write_service(&service(&[&pods[0], &pods[1]])).unwrap();
    // Socket LB only: the pod program stays off the pod interfaces.
    let mut cfg = AgentConfig::new(sluice_bin(), &node, &manifests, &bpffs, Some(&cgroup), &dir);
    cfg.extra_args = vec!["--pod-devices".into(), "nomatch".into()];
    let mut agent = Agent::start(&node, cfg).unwrap();
    agent.wait_backends(WAIT, VIP, 53, Protocol::Udp, 2).unwrap();

    let mut cmd = client.netns().command("python3").unwrap();
    cmd.arg("-c").arg(UDP_CLIENT).arg(VIP.to_string());
    cmd.args(pods.iter().map(|p| format!("{}={}", p.name(), p.ip())));
    cgroup.join_on_exec(&mut cmd).unwrap();
    let mut py = Interactive::spawn(cmd);
    let before = py.read_json(Duration::from_secs(10));
    let first = before["first"].as_str().unwrap().to_owned();
    assert_eq!(before["direct"], first.as_str(), "{before}");
    let (gone, kept): (Vec<&Pod>, Vec<&Pod>) = pods.iter().partition(|p| p.name() == first);
    assert_eq!(gone.len(), 1, "first answer from a backend: {before}");

    // Remove the backend that answered; its pod keeps running and answering.
    manifests.write_service(&service(&kept)).unwrap();
    agent.wait_backends(WAIT, VIP, 53, Protocol::Udp, 1).unwrap();
    py.write_line("go");
    let after = py.read_json(Duration::from_secs(30));
    let error = after["error"].as_str().unwrap_or_else(|| panic!("never failed: {after}"));
    // The kernel's reason is ECONNABORTED; a send may come first and fail
    // with EDESTADDRREQ (the socket is disconnected), leaving it pending.
    match error {
        "ECONNABORTED" => assert_eq!(after["pending"], 0, "{after}"),
        "EDESTADDRREQ" => assert_eq!(after["pending"], "ECONNABORTED", "{after}"),
        _ => panic!("unexpected error: {after}"),
    }
    assert!(after["after_s"].as_f64().unwrap() < 10.0, "{after}");
    assert_eq!(after["second"], kept[0].name(), "reconnected to the remaining backend: {after}");
    assert_eq!(after["second_peer"], serde_json::json!([VIP.to_string(), 53]), "{after}");
    // The socket connected to the pod directly still works, no error pending.
    assert_eq!(after["direct_pending_error"], 0, "{after}");
    assert_eq!(after["direct_after"], first.as_str(), "{after}");
    drop(py);
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit status {status}; log:\n{}", agent.log());
    let log = strip_ansi(&agent.log());
    assert!(
        log.lines().any(|l| l.contains("destroyed UDP sockets") && l.contains("destroyed=1")),
        "exactly one socket destroyed; log:\n{log}"
    );
}
