//! Service behaviours with real traffic between network namespaces: a node,
//! backend pods, a client pod and the real agent binary on a manifest
//! directory. Needs root; skips otherwise.

use std::{
    io::{self, ErrorKind, Read as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use sluice::testbed::{
    Agent, AgentConfig, Backend, BpffsMount, ClusterIpService, EchoServer, ManifestDir, Node, Pod,
    Protocol, ServicePort, TestCgroup, TestDir, require_root, sweep_stale, tcp_request,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const WAIT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(1);

fn sluice_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sluice"))
}

fn service(backends: Vec<Backend>) -> ClusterIpService {
    ClusterIpService::new(
        "reject",
        VIP,
        vec![
            ServicePort::new("tcp", Protocol::Tcp, 80, 8080),
            ServicePort::new("udp", Protocol::Udp, 53, 5353),
        ],
        backends,
    )
}

/// connect() from the client pod: the error kind and how long it took.
fn tcp_connect(client: &Pod, addr: SocketAddrV4) -> (io::Result<()>, Duration) {
    client
        .netns()
        .exec(IO_TIMEOUT * 3, move || {
            let start = Instant::now();
            let r =
                TcpStream::connect_timeout(&SocketAddr::V4(addr), IO_TIMEOUT).and_then(|mut s| {
                    let mut buf = Vec::new();
                    s.set_read_timeout(Some(IO_TIMEOUT))?;
                    s.read_to_end(&mut buf).map(|_| ())
                });
            (r, start.elapsed())
        })
        .expect("client thread")
}

/// A request on a connected UDP socket: the error of the receive.
fn udp_exchange(client: &Pod, addr: SocketAddrV4) -> (io::Result<usize>, Duration) {
    client
        .netns()
        .exec(IO_TIMEOUT * 3, move || {
            let start = Instant::now();
            let r = (|| {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.connect(addr)?;
                s.send(b"hello")?;
                let mut buf = [0u8; 512];
                s.recv(&mut buf)
            })();
            (r, start.elapsed())
        })
        .expect("client thread")
}

// Expect: a service without endpoints refuses TCP and UDP at once
// (ECONNREFUSED in well under 100 ms, never a timeout), so does a port of
// the service address that no service serves; once an endpoint appears the
// same ports answer.
#[test]
fn no_endpoint_and_unserved_port_are_refused_at_once() {
    if !require_root() {
        return;
    }
    sweep_stale();
    let dir = TestDir::new("reject").unwrap();
    let bpffs = BpffsMount::new_in(&dir).unwrap();
    let cgroup = TestCgroup::new("reject").unwrap();
    let node = Node::new("node-r").unwrap();
    let backend = node.add_pod("backend").unwrap();
    let client = node.add_pod("client").unwrap();
    let _srv = EchoServer::start(&backend, "backend", 8080, 5353).unwrap();
    let manifests = ManifestDir::new_in(&dir).unwrap();
    manifests.write_node(&node).unwrap();
    manifests.write_service(&service(Vec::new())).unwrap();
    let cfg = AgentConfig::new(sluice_bin(), &node, &manifests, &bpffs, Some(&cgroup), &dir);
    let mut agent = Agent::start(&node, cfg).unwrap();
    agent.wait_backends(WAIT, VIP, 80, Protocol::Tcp, 0).unwrap();
    agent.wait_backends(WAIT, VIP, 53, Protocol::Udp, 0).unwrap();

    for port in [80, 81] {
        let (r, took) = tcp_connect(&client, SocketAddrV4::new(VIP, port));
        let kind = r.as_ref().map_err(io::Error::kind).err();
        assert_eq!(kind, Some(ErrorKind::ConnectionRefused), "TCP {port}: {r:?} after {took:?}");
        assert!(took < Duration::from_millis(100), "TCP {port} refused after {took:?}");
    }
    for port in [53, 54] {
        let (r, took) = udp_exchange(&client, SocketAddrV4::new(VIP, port));
        let kind = r.as_ref().map_err(io::Error::kind).err();
        assert_eq!(kind, Some(ErrorKind::ConnectionRefused), "UDP {port}: {r:?} after {took:?}");
        assert!(took < Duration::from_millis(100), "UDP {port} refused after {took:?}");
    }

    manifests.write_service(&service(vec![Backend::of_pod(&backend, &node)])).unwrap();
    agent.wait_backends(WAIT, VIP, 80, Protocol::Tcp, 1).unwrap();
    assert_eq!(tcp_request(&client, SocketAddrV4::new(VIP, 80), IO_TIMEOUT).unwrap(), "backend");
    let (r, _) = udp_exchange(&client, SocketAddrV4::new(VIP, 53));
    assert!(r.is_ok(), "UDP after an endpoint appeared: {r:?}");
    // A port the service does not have is still refused.
    let (r, _) = tcp_connect(&client, SocketAddrV4::new(VIP, 81));
    assert_eq!(r.map_err(|e| e.kind()).err(), Some(ErrorKind::ConnectionRefused));

    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit status {status}; log:\n{}", agent.log());
}

// Expect: a pod whose Service has only itself as endpoint reaches itself
// through the ClusterIP (hairpin), over TCP and UDP.
#[test]
fn pod_reaches_itself_through_its_service() {
    if !require_root() {
        return;
    }
    sweep_stale();
    let dir = TestDir::new("hairpin").unwrap();
    let bpffs = BpffsMount::new_in(&dir).unwrap();
    let cgroup = TestCgroup::new("hairpin").unwrap();
    let node = Node::new("node-h").unwrap();
    let pod = node.add_pod("selfish").unwrap();
    let _srv = EchoServer::start(&pod, "selfish", 8080, 5353).unwrap();
    let manifests = ManifestDir::new_in(&dir).unwrap();
    manifests.write_node(&node).unwrap();
    manifests.write_service(&service(vec![Backend::of_pod(&pod, &node)])).unwrap();
    let cfg = AgentConfig::new(sluice_bin(), &node, &manifests, &bpffs, Some(&cgroup), &dir);
    let mut agent = Agent::start(&node, cfg).unwrap();
    agent.wait_backends(WAIT, VIP, 80, Protocol::Tcp, 1).unwrap();
    for _ in 0..5 {
        let got = tcp_request(&pod, SocketAddrV4::new(VIP, 80), IO_TIMEOUT).unwrap();
        assert_eq!(got, "selfish");
    }
    let got = sluice::testbed::udp_request(&pod, SocketAddrV4::new(VIP, 53), IO_TIMEOUT).unwrap();
    assert_eq!(got, "selfish");
    // The agent wrote this node's CNI conflist from its Node object.
    let conf = std::fs::read_to_string(dir.join("cni-net.d").join(sluice::cniconf::FILE_NAME))
        .expect("conflist written");
    let conf: serde_json::Value = serde_json::from_str(&conf).unwrap();
    assert_eq!(conf["plugins"][0]["type"], "sluice-cni");
    assert_eq!(conf["plugins"][0]["podCIDRs"][0], node.pod_cidr());
    assert_eq!(conf["plugins"][0]["bpffsRoot"], agent.config().bpffs_root.display().to_string());
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit status {status}; log:\n{}", agent.log());
}
