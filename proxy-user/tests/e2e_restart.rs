//! Restart and upgrade safety with real traffic: a TCP stream and a UDP flow
//! through a ClusterIP keep working while the agent is killed with SIGKILL
//! and restarted, and while it is stopped with SIGTERM, the services change,
//! and a new agent adopts and corrects the pinned state. Needs root.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sluice::testbed::{
    Agent, AgentConfig, Backend, BpffsMount, ClusterIpService, EchoServer, ManifestDir, Node, Pod,
    Protocol, ServicePort, TestCgroup, TestDir, require_root, sweep_stale,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const WAIT: Duration = Duration::from_secs(20);

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

/// A line-echo TCP server and a datagram-echo UDP server in `pod`, until
/// `stop` is set.
fn start_stream_servers(pod: &Pod, stop: &Arc<AtomicBool>) {
    let stop_tcp = Arc::clone(stop);
    pod.netns()
        .spawn("stream-tcp", move || {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)).unwrap();
            listener.set_nonblocking(true).unwrap();
            while !stop_tcp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let stop = Arc::clone(&stop_tcp);
                        std::thread::spawn(move || {
                            conn.set_nonblocking(false).unwrap();
                            conn.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                            let mut writer = conn.try_clone().unwrap();
                            let mut reader = BufReader::new(conn);
                            let mut line = String::new();
                            while !stop.load(Ordering::Relaxed) {
                                match reader.read_line(&mut line) {
                                    Ok(0) => break,
                                    Ok(_) => {
                                        let _ = writer.write_all(line.as_bytes());
                                        line.clear();
                                    }
                                    Err(_) => {}
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
        .unwrap();
    let stop_udp = Arc::clone(stop);
    pod.netns()
        .spawn("stream-udp", move || {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut buf = [0u8; 512];
            while !stop_udp.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        })
        .unwrap();
}

fn service(backends: Vec<Backend>) -> ClusterIpService {
    ClusterIpService::new(
        "stream",
        VIP,
        vec![
            ServicePort::new("tcp", Protocol::Tcp, 80, 8080),
            ServicePort::new("udp", Protocol::Udp, 53, 5353),
        ],
        backends,
    )
}

// Expect: every exchange on one TCP connection and one connected UDP
// socket, every 50 ms for the whole run, succeeds across SIGKILL + restart
// and across SIGTERM + service change + restart; the last agent shows the
// changed service.
#[test]
fn flows_survive_agent_kill_and_upgrade() {
    if !require_root() {
        return;
    }
    sweep_stale();
    let dir = TestDir::new("restart").unwrap();
    let bpffs = BpffsMount::new_in(&dir).unwrap();
    let cgroup = TestCgroup::new("restart").unwrap();
    let node = Node::new("node-u").unwrap();
    let backend = node.add_pod("backend").unwrap();
    let spare = node.add_pod("spare").unwrap();
    let client = node.add_pod("client").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    start_stream_servers(&backend, &stop);
    let _spare_srv = EchoServer::start(&spare, "spare", 8080, 5353).unwrap();
    let manifests = ManifestDir::new_in(&dir).unwrap();
    manifests.write_node(&node).unwrap();
    manifests.write_service(&service(vec![Backend::of_pod(&backend, &node)])).unwrap();
    let cfg = AgentConfig::new(sluice_bin(), &node, &manifests, &bpffs, Some(&cgroup), &dir);
    let mut agent = Agent::start(&node, cfg.clone()).unwrap();
    agent.wait_backends(WAIT, VIP, 80, Protocol::Tcp, 1).unwrap();

    // The client: one TCP connection and one connected UDP socket, an
    // exchange on each every 50 ms until told to stop.
    let done = Arc::new(AtomicBool::new(false));
    let done_client = Arc::clone(&done);
    let client_thread = client
        .netns()
        .spawn("stream-client", move || -> Result<usize, String> {
            let tcp = SocketAddr::V4(SocketAddrV4::new(VIP, 80));
            let mut conn = TcpStream::connect_timeout(&tcp, Duration::from_secs(1))
                .map_err(|e| format!("connect: {e}"))?;
            conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            udp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            udp.connect((VIP, 53)).unwrap();
            let mut rounds = 0;
            while !done_client.load(Ordering::Relaxed) {
                let msg = format!("round {rounds}\n");
                conn.write_all(msg.as_bytes()).map_err(|e| format!("round {rounds} send: {e}"))?;
                let mut line = String::new();
                reader.read_line(&mut line).map_err(|e| format!("round {rounds} TCP: {e}"))?;
                if line != msg {
                    return Err(format!("round {rounds}: TCP echoed {line:?}"));
                }
                udp.send(msg.as_bytes()).map_err(|e| format!("round {rounds} UDP send: {e}"))?;
                let mut buf = [0u8; 512];
                let n = udp.recv(&mut buf).map_err(|e| format!("round {rounds} UDP: {e}"))?;
                if buf[..n] != *msg.as_bytes() {
                    return Err(format!("round {rounds}: UDP echoed {:?}", &buf[..n]));
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(rounds)
        })
        .unwrap();

    std::thread::sleep(Duration::from_millis(500));
    // SIGKILL: nothing is cleaned up, the pins keep everything running.
    let pid = nix::unistd::Pid::from_raw(agent.pid().expect("agent pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "agent did not die");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(700));
    let mut agent = Agent::start(&node, cfg.clone()).unwrap();
    agent.wait_backends(WAIT, VIP, 80, Protocol::Tcp, 1).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // SIGTERM, a service change while no agent runs, a new agent.
    assert!(agent.stop().unwrap().success(), "log:\n{}", agent.log());
    let both = vec![Backend::of_pod(&backend, &node), Backend::of_pod(&spare, &node)];
    manifests.write_service(&service(both)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut agent = Agent::start(&node, cfg).unwrap();
    agent.wait_backends(WAIT, VIP, 80, Protocol::Tcp, 2).unwrap();
    agent.wait_backends(WAIT, VIP, 53, Protocol::Udp, 2).unwrap();
    std::thread::sleep(Duration::from_millis(700));

    done.store(true, Ordering::Relaxed);
    let rounds = client_thread.join().expect("client thread").expect("every exchange succeeded");
    assert!(rounds >= 40, "only {rounds} rounds");
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit status {status}; log:\n{}", agent.log());
    stop.store(true, Ordering::Relaxed);
}
