//! A real runtime: containerd 1.6 with its CRI plugin, driven by kubelet's
//! calls (RunPodSandbox / PodSandboxStatus / StopPodSandbox /
//! RemovePodSandbox over CRI v1), runs `sluice-cni` from a private conflist.
//! Two pod sandboxes get addresses, reach each other and a ClusterIP served
//! by `sluice agent`, and leave nothing behind. containerd runs inside a node
//! namespace with private root, state, sockets and conf dirs; pod cgroups go
//! below a test cgroup. Needs root; skips with a message when containerd,
//! runc, busybox-static or the reference `loopback` plugin are not installed
//! (`apt-get install containerd runc busybox-static containernetworking-plugins`).

mod common;

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use serde_json::Value;
use sluice::testbed::{
    Agent, AgentConfig, Backend, ClusterIpService, ManifestDir, Netns, Node, Protocol, ServicePort,
    TestCgroup, TestDir, cgroup2_mount, require_root, run_checked, sweep_stale,
};
use tonic::transport::{Channel, Endpoint, Uri};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const IMAGE: &str = "docker.io/sluice-test/pause:1";

fn missing_tools() -> Option<String> {
    for (p, pkg) in [
        ("/usr/bin/containerd", "containerd"),
        ("/usr/bin/ctr", "containerd"),
        ("/usr/sbin/runc", "runc"),
        ("/usr/bin/busybox", "busybox-static"),
        ("/usr/lib/cni/loopback", "containernetworking-plugins"),
    ] {
        if !Path::new(p).exists() {
            return Some(format!("{p} is missing (apt-get install {pkg})"));
        }
    }
    None
}

/// A one-layer docker-archive with a static busybox that sleeps.
fn make_image(dir: &Path) -> PathBuf {
    let root = dir.join("image");
    let rootfs = root.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy("/usr/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    run_checked(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-cf"])
            .arg(root.join("layer.tar"))
            .arg("."),
        Duration::from_secs(30),
    )
    .unwrap();
    let sum =
        run_checked(Command::new("sha256sum").arg(root.join("layer.tar")), Duration::from_secs(30))
            .unwrap();
    let digest = sum.split_whitespace().next().unwrap().to_owned();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "100000"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
    });
    fs::write(root.join("config.json"), config.to_string()).unwrap();
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": ["sluice-test/pause:1"],
        "Layers": ["layer.tar"]}]);
    fs::write(root.join("manifest.json"), manifest.to_string()).unwrap();
    let archive = dir.join("pause.tar");
    run_checked(
        Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&archive).args([
            "manifest.json",
            "config.json",
            "layer.tar",
        ]),
        Duration::from_secs(30),
    )
    .unwrap();
    archive
}

/// The shim's socket directory, fixed in containerd 1.6 (not configurable).
const SHIM_SOCKETS: &str = "/run/containerd/s";

/// containerd in the node's namespace; killed on drop. The shim's socket
/// directory is removed again when this test created it (and it is empty).
struct Containerd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    created_run_dir: bool,
}

impl Containerd {
    fn start(node: &Netns, dir: &Path, bin_dir: &Path, conf_dir: &Path) -> Result<Self, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let socket = dir.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            socket = socket.display(),
            opt = dir.join("opt").display(),
            runc_root = dir.join("runc").display(),
            bin = bin_dir.display(),
            conf = conf_dir.display(),
        );
        let cfg = dir.join("containerd.toml");
        fs::write(&cfg, config).unwrap();
        let log = dir.join("containerd.log");
        let logf = fs::File::create(&log).unwrap();
        let mut cmd = node.command("/usr/bin/containerd").unwrap();
        cmd.arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let created_run_dir = !Path::new("/run/containerd").exists();
        let child = cmd.spawn().map_err(|e| format!("starting containerd: {e}"))?;
        let mut c = Containerd { child, socket, log, created_run_dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.socket.exists() {
            if let Ok(Some(st)) = c.child.try_wait() {
                return Err(format!("containerd exited ({st}): {}", c.log_text()));
            }
            if Instant::now() > deadline {
                return Err(format!("containerd socket did not appear: {}", c.log_text()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(c)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        if self.created_run_dir {
            // remove_dir removes only empty directories.
            let _ = fs::remove_dir(SHIM_SOCKETS);
            let _ = fs::remove_dir("/run/containerd");
        }
    }
}

impl Containerd {
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn cri_client(socket: PathBuf) -> RuntimeServiceClient<Channel> {
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connecting to containerd's CRI socket");
    RuntimeServiceClient::new(channel)
}

/// Runs `f` on a thread inside the network namespace at `path`.
fn in_netns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn tcp_get(ns: &str, addr: SocketAddrV4) -> std::io::Result<String> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf.trim().to_owned())
    })
}

#[test]
fn containerd_cri_sandboxes_get_wired_by_sluice_cni() {
    if !require_root() {
        return;
    }
    if let Some(why) = missing_tools() {
        eprintln!("skipping containerd_cri_sandboxes_get_wired_by_sluice_cni: {why}");
        return;
    }
    let sluice_bin = common::cni_bin().with_file_name("sluice");
    if !sluice_bin.exists() {
        eprintln!("skipping: {} is missing (cargo build -p sluice)", sluice_bin.display());
        return;
    }
    sweep_stale();
    let dir = TestDir::new("containerd").unwrap();
    let bpffs = sluice::testbed::BpffsMount::new_in(&dir).unwrap();
    let agent_cg = TestCgroup::new("ctr-agent").unwrap();
    let pods_cg = TestCgroup::new("ctr-pods").unwrap();
    let node = Node::new("ctr-node").unwrap();
    let manifests = ManifestDir::new_in(&dir).unwrap();
    manifests.write_node(&node).unwrap();
    let cfg = AgentConfig::new(&sluice_bin, &node, &manifests, &bpffs, Some(&agent_cg), &dir);
    let root = cfg.bpffs_root.clone();
    let mut agent = Agent::start(&node, cfg).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !root.join("maps/SL_ENDPOINTS").exists() || !root.join("progs/sl_pod_ingress").exists() {
        assert!(Instant::now() < deadline, "agent did not pin its state: {}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // CNI bin and conf dirs of this test only.
    let bin_dir = dir.join("cni-bin");
    let conf_dir = dir.join("cni-conf");
    fs::create_dir_all(&bin_dir).unwrap();
    fs::create_dir_all(&conf_dir).unwrap();
    fs::copy(common::cni_bin(), bin_dir.join("sluice-cni")).unwrap();
    fs::copy("/usr/lib/cni/loopback", bin_dir.join("loopback")).unwrap();
    let data_dir = dir.join("cni-data");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0", "name": "sluice", "plugins": [{
            "type": "sluice-cni", "podCIDRs": [node.pod_cidr()],
            "bpffsRoot": root, "dataDir": data_dir,
        }]
    });
    fs::write(conf_dir.join("10-sluice.conflist"), conflist.to_string()).unwrap();
    let archive = make_image(dir.path());

    let containerd =
        match Containerd::start(node.netns(), &dir.join("containerd"), &bin_dir, &conf_dir) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipping containerd_cri_sandboxes_get_wired_by_sluice_cni: {e}");
                return;
            }
        };
    run_checked(
        Command::new("/usr/bin/ctr")
            .arg("--address")
            .arg(&containerd.socket)
            .args(["-n", "k8s.io", "images", "import", "--snapshotter", "native"])
            .arg(&archive),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("importing the image: {e:#}\n{}", containerd.log_text()));

    let cg_mount = cgroup2_mount().unwrap();
    let cg_parent = format!("/{}", pods_cg.path().strip_prefix(&cg_mount).unwrap().display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let socket = containerd.socket.clone();
    let mut client = rt.block_on(cri_client(socket));

    let mut sandboxes = Vec::new();
    for name in ["pod-a", "pod-b"] {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: dir.join("pod-logs").display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cg_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let started = Instant::now();
        let resp = rt
            .block_on(client.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", containerd.log_text()))
            .into_inner();
        eprintln!("RunPodSandbox {name}: {:?}", started.elapsed());
        let status = rt
            .block_on(client.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: resp.pod_sandbox_id.clone(),
                verbose: true,
            }))
            .unwrap()
            .into_inner();
        let ip: Ipv4Addr =
            status.status.as_ref().unwrap().network.as_ref().unwrap().ip.parse().unwrap();
        let info: Value = serde_json::from_str(&status.info["info"]).unwrap();
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .unwrap()
            .to_owned();
        sandboxes.push((resp.pod_sandbox_id, ip, netns));
    }
    let (ip_a, ip_b) = (sandboxes[0].1, sandboxes[1].1);
    assert!(ip_a.octets()[..3] == [10, 244, 0] && ip_b.octets()[..3] == [10, 244, 0]);
    assert_ne!(ip_a, ip_b);

    // A TCP server in pod b; pod a reaches it by pod IP and by ClusterIP.
    let ns_b = sandboxes[1].2.clone();
    let listener = in_netns(&ns_b, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)).unwrap());
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(b"pod-b\n");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    let ns_a = sandboxes[0].2.clone();
    assert_eq!(tcp_get(&ns_a, SocketAddrV4::new(ip_b, 8080)).unwrap(), "pod-b");
    let svc = ClusterIpService::new(
        "echo",
        VIP,
        vec![ServicePort::new("tcp", Protocol::Tcp, 80, 8080)],
        vec![Backend { node_name: Some(node.name().to_owned()), ..Backend::ready("pod-b", ip_b) }],
    );
    manifests.write_service(&svc).unwrap();
    agent.wait_backends(Duration::from_secs(20), VIP, 80, Protocol::Tcp, 1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tcp_get(&ns_a, SocketAddrV4::new(VIP, 80)) {
            Ok(a) => {
                assert_eq!(a, "pod-b");
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "ClusterIP unreachable from pod a: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().unwrap();

    // Kubelet's teardown: containerd calls DEL (twice).
    for (id, _, _) in &sandboxes {
        rt.block_on(client.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }))
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", containerd.log_text()));
        rt.block_on(
            client.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.clone() }),
        )
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", containerd.log_text()));
    }
    let links = node.netns().ip(&["-o", "link", "show"]).unwrap();
    assert!(!links.contains(": sl"), "host veths left: {links}");
    let routes = node.netns().ip(&["route", "show"]).unwrap();
    assert!(!routes.contains("10.244."), "routes left: {routes}");
    // Pod interface links (the agent's own cgroup links stay).
    let pins = sluice::datapath::PinPaths::new(&root).pod_links().unwrap();
    assert!(pins.is_empty(), "pod link pins left: {pins:?}");
    assert_eq!(
        sluice_cni::datapath::Pins::new(&root).endpoint_addrs().unwrap(),
        Vec::<Ipv4Addr>::new()
    );
    let store = sluice_cni::store::Store::open_existing(&data_dir, "sluice").unwrap();
    assert_eq!(store.map_or(0, |s| s.state.attachments.len()), 0, "IPAM records left");
    for (_, _, ns) in &sandboxes {
        assert!(!Path::new(ns).exists(), "{ns} left");
    }
    drop(client);
    drop(containerd);
    let _ = agent.stop();
}
