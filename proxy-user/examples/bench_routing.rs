//! Pod-to-pod routing benchmark: `cargo xtask bench routing [--quick]` (as
//! root).
//!
//! Layouts, each on its own nodes (network namespaces on one underlay
//! bridge, built by `sluice::testbed`), two pods on node 1 and one on
//! node 2:
//!
//! - `fast`: `sluice agent` per node (native routing) with `--fast-path=true`:
//!   same node by `bpf_redirect_peer`, cross node by FIB lookup and
//!   `bpf_redirect`/`bpf_redirect_neigh` and, on the receiving node, from
//!   the underlay device (`--devices eth0`) by `bpf_redirect_peer`;
//! - `plain`: the same agents with `--fast-path=false` (the node's stack
//!   routes every packet);
//! - `bridge`: the reference `bridge` CNI plugin's layout without any agent:
//!   pods on a Linux bridge `cni0` (the gateway address on it) in the node,
//!   same node switched by the bridge, cross node routed by the node's stack
//!   via a route per other node (host-gw style);
//! - `vxlan-fast`, `vxlan-plain` (the hook for the overlay mode): the agents
//!   with `--tunnel vxlan` in addition; run only when the `sluice` binary
//!   has that flag (else reported as skipped).
//!
//! Pods of the sluice layouts are wired like the CNI wires them (veth, /32
//! route, permanent neighbours) and registered in `SL_ENDPOINTS` as the CNI
//! does, so the peer fast path applies. Per layout and path (same node,
//! cross node): TCP request/response on one persistent connection (64 bytes
//! each way, every round trip timed: p50, p99) and single-stream TCP
//! throughput. Repetitions are interleaved (rep 1: fast plain bridge, rep
//! 2: plain bridge fast, ...); the agents are restarted with the other flag
//! between `fast` and `plain`. Writes `report.md` and `results.json` to
//! `--out` (default `target/bench-results/routing`), with the ratios to
//! `plain` in the report.
//!
//! Load generator and servers are threads of this process inside the pod
//! namespaces (no extra tools needed).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use aya::maps::{Array, HashMap, MapData};
use clap::Parser;
use proxy_common::{DatapathConfig, EndpointInfo, MAP_CONFIG, MAP_ENDPOINTS};
use serde::Serialize;
use sluice::datapath::{
    PinPaths,
    maps::open_pinned,
    node::{self, FastPathStats},
};
use sluice::testbed::{
    Agent, AgentConfig, BpffsMount, ManifestDir, Netns, Node, Pod, TestDir, Underlay,
    run_with_timeout, sweep_stale,
};

const RR_PORT: u16 = 7000;
const STREAM_PORT: u16 = 7001;
const MSG: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Parser)]
#[command(about = "pod-to-pod routing: eBPF fast paths vs plain routing vs a Linux bridge")]
struct Cli {
    /// One repetition, 1 s per measurement (under a minute).
    #[arg(long)]
    quick: bool,
    /// Repetitions per (layout, path) (default 3; 1 with --quick).
    #[arg(long)]
    reps: Option<u32>,
    /// Seconds per measurement (default 4; 1 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Layouts (default fast,plain,bridge, plus vxlan-fast,vxlan-plain when
    /// the agent supports `--tunnel vxlan`).
    #[arg(long, value_delimiter = ',')]
    layouts: Vec<String>,
    /// Where report.md and results.json go.
    #[arg(long, default_value = "target/bench-results/routing")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Layout {
    Fast,
    Plain,
    Bridge,
    VxlanFast,
    VxlanPlain,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Fast => "fast",
            Layout::Plain => "plain",
            Layout::Bridge => "bridge",
            Layout::VxlanFast => "vxlan-fast",
            Layout::VxlanPlain => "vxlan-plain",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Layout> {
        [Layout::Fast, Layout::Plain, Layout::Bridge, Layout::VxlanFast, Layout::VxlanPlain]
            .into_iter()
            .find(|l| l.name() == s)
            .with_context(|| {
                format!("no layout {s:?}; there are fast, plain, bridge, vxlan-fast, vxlan-plain")
            })
    }

    /// Whether the layout runs with the fast paths.
    fn fast(self) -> bool {
        matches!(self, Layout::Fast | Layout::VxlanFast)
    }

    /// The agent flags of a sluice layout; `None` for the bridge.
    fn agent_args(self) -> Option<Vec<String>> {
        // The underlay interface is the external device: traffic from the
        // other node reaches local pods by the external program.
        let mut a = vec!["--socket-lb=false".to_owned(), "--devices=eth0".to_owned()];
        match self {
            Layout::Fast => a.push("--fast-path=true".into()),
            Layout::Plain => a.push("--fast-path=false".into()),
            Layout::VxlanFast => a.extend(["--fast-path=true".into(), "--tunnel=vxlan".into()]),
            Layout::VxlanPlain => a.extend(["--fast-path=false".into(), "--tunnel=vxlan".into()]),
            Layout::Bridge => return None,
        }
        Some(a)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum PathKind {
    SameNode,
    CrossNode,
}

impl PathKind {
    fn name(self) -> &'static str {
        match self {
            PathKind::SameNode => "same node",
            PathKind::CrossNode => "cross node",
        }
    }
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
struct Trial {
    layout: Layout,
    path: PathKind,
    rep: u32,
    round_trips: u64,
    rr_p50_us: f64,
    rr_p99_us: f64,
    throughput_gbit: f64,
    /// Fast-path counters of the client's node over the trial (sluice layouts).
    fast_path: Option<FastPathStats>,
}

fn sluice_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/bench_routing -> target/<profile>/sluice
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("sluice"))
        .context("no directory above the example")?;
    ensure!(bin.exists(), "{} is missing: cargo build --release -p sluice", bin.display());
    Ok(bin)
}

fn agent_supports(bin: &Path, flag: &str) -> bool {
    run_with_timeout(std::process::Command::new(bin).args(["agent", "--help"]), IO_TIMEOUT)
        .is_ok_and(|o| o.stdout.contains(flag))
}

/// The sluice cluster: two nodes with agents, pods registered as the CNI does.
struct SluiceBed {
    agents: Vec<Agent>,
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    manifests: ManifestDir,
    bpffs: BpffsMount,
    dir: TestDir,
    running: Option<Layout>,
}

impl SluiceBed {
    fn new(underlay: &Underlay) -> anyhow::Result<SluiceBed> {
        let dir = TestDir::new("bench-routing")?;
        let bpffs = BpffsMount::new_in(&dir)?;
        let manifests = ManifestDir::new_in(&dir)?;
        let mut nodes = Vec::new();
        for i in 1..=2u8 {
            let node = Node::with_index(&format!("node-{i}"), i)?;
            underlay.attach_node(&node)?;
            manifests.write_node(&node)?;
            nodes.push(node);
        }
        let pods = vec![
            nodes[0].add_pod("pod-1a")?,
            nodes[0].add_pod("pod-1b")?,
            nodes[1].add_pod("pod-2a")?,
        ];
        Ok(SluiceBed { agents: Vec::new(), pods, nodes, manifests, bpffs, dir, running: None })
    }

    fn root(&self, i: usize) -> PathBuf {
        self.bpffs.path().join(self.nodes[i].name())
    }

    /// (Re)starts the agents for `layout`; waits until pods on both nodes
    /// reach each other.
    fn start(&mut self, layout: Layout, bin: &Path) -> anyhow::Result<()> {
        if self.running == Some(layout) {
            return Ok(());
        }
        for mut a in self.agents.drain(..) {
            a.stop()?;
        }
        self.running = None;
        for (i, n) in self.nodes.iter().enumerate() {
            let mut cfg = AgentConfig::new(bin, n, &self.manifests, &self.bpffs, None, &self.dir);
            cfg.bpffs_root = self.root(i);
            cfg.cni_conf_dir = Some(self.dir.join(format!("cni-{}", n.name())));
            cfg.extra_args = layout.agent_args().unwrap_or_default();
            cfg.rust_log = "warn".into();
            self.agents.push(Agent::start(n, cfg)?);
        }
        // The endpoint map exists once the agent has loaded; register the
        // pods as the CNI does (entries survive agent restarts).
        for (pod, node) in [(0, 0), (1, 0), (2, 1)] {
            let root = self.root(node);
            let deadline = Instant::now() + Duration::from_secs(20);
            while !root.join("maps").join(MAP_ENDPOINTS).exists() {
                ensure!(Instant::now() < deadline, "agent of node {node} never pinned its maps");
                ensure!(
                    self.agents[node].try_wait()?.is_none(),
                    "agent exited:\n{}",
                    self.agents[node].log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            register(&self.nodes[node], &self.pods[pod], &root)?;
        }
        // The maps outlive the agents: wait until the new ones have written
        // their fast-path setting (the old one's would serve until then).
        let want = node::fast_path_flags(layout.fast());
        for i in 0..self.nodes.len() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                // Not pinned yet is "not yet".
                let config: Option<Array<MapData, DatapathConfig>> =
                    open_pinned(&PinPaths::new(self.root(i)), MAP_CONFIG).ok();
                if config.and_then(|c| c.get(&0, 0).ok()).is_some_and(|c| c.flags == want) {
                    break;
                }
                ensure!(Instant::now() < deadline, "agent of node {i} never wrote its flags");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let target = SocketAddrV4::new(self.pods[2].ip(), RR_PORT);
        wait_reachable(&self.pods[0], &self.pods[2], target, Duration::from_secs(30))?;
        let target = SocketAddrV4::new(self.pods[1].ip(), RR_PORT);
        wait_reachable(&self.pods[0], &self.pods[1], target, Duration::from_secs(30))?;
        self.running = Some(layout);
        Ok(())
    }
}

/// Writes `pod`'s `SL_ENDPOINTS` entry in the node's pinned map, as
/// `sluice-cni` ADD does.
fn register(node: &Node, pod: &Pod, root: &Path) -> anyhow::Result<()> {
    let parse_mac = |s: String| -> anyhow::Result<[u8; 6]> {
        let v: Vec<u8> = s
            .trim()
            .split(':')
            .map(|h| u8::from_str_radix(h, 16))
            .collect::<Result<_, _>>()
            .with_context(|| format!("MAC {s:?}"))?;
        v.try_into().map_err(|_| anyhow::anyhow!("MAC {s:?}"))
    };
    let name = pod.host_if().to_owned();
    let ifindex = node
        .netns()
        .exec(IO_TIMEOUT, move || nix::net::if_::if_nametoindex(name.as_str()))?
        .with_context(|| format!("ifindex of {} in {}", pod.host_if(), node.name()))?;
    let info = EndpointInfo {
        ifindex,
        flags: 0,
        mac: parse_mac(pod.netns().mac("eth0")?)?,
        node_mac: parse_mac(node.netns().mac(pod.host_if())?)?,
        _pad: [0; 4],
    };
    let mut map: HashMap<MapData, u32, EndpointInfo> =
        open_pinned(&PinPaths::new(root), MAP_ENDPOINTS)?;
    map.insert(proxy_common::addr_to_map(pod.ip()), info, 0)?;
    Ok(())
}

/// The bridge plugin's layout on two more nodes.
struct BridgeBed {
    pods: Vec<Netns>,
    ips: Vec<Ipv4Addr>,
    _nodes: Vec<Netns>,
}

impl BridgeBed {
    fn new(underlay: &Underlay) -> anyhow::Result<BridgeBed> {
        let mut nodes = Vec::new();
        for i in [11u8, 12] {
            let ns = Netns::new(&format!("bnode-{i}"))?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            underlay.plug(&ns, &[format!("198.18.0.{i}/24")])?;
            ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
            ns.ip(&["addr", "add", &format!("10.250.{i}.1/24"), "dev", "cni0"])?;
            ns.ip(&["link", "set", "cni0", "up"])?;
            let other = if i == 11 { 12 } else { 11 };
            ns.ip(&[
                "route",
                "add",
                &format!("10.250.{other}.0/24"),
                "via",
                &format!("198.18.0.{other}"),
            ])?;
            nodes.push(ns);
        }
        let mut pods = Vec::new();
        let mut ips = Vec::new();
        for (node, i, host) in [(0usize, 11u8, 11u8), (0, 11, 12), (1, 12, 11)] {
            let pod = Netns::new(&format!("bpod-{i}-{host}"))?;
            let veth = format!("bv{i}x{host}");
            nodes[node].ip(&[
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                pod.name(),
            ])?;
            nodes[node].ip(&["link", "set", &veth, "master", "cni0", "up"])?;
            let ip = Ipv4Addr::new(10, 250, i, host);
            pod.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            pod.ip(&["link", "set", "eth0", "up"])?;
            pod.ip(&["route", "add", "default", "via", &format!("10.250.{i}.1")])?;
            pods.push(pod);
            ips.push(ip);
        }
        Ok(BridgeBed { pods, ips, _nodes: nodes })
    }
}

/// Polls a TCP connection from `client` to `target` (served by `server`).
fn wait_reachable(
    client: &impl AsRef<Netns>,
    server: &impl AsRef<Netns>,
    target: SocketAddrV4,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match rr(client, server, target, 0.05) {
            Ok(r) if r.0 > 0 => return Ok(()),
            Ok(_) => {}
            Err(e) if Instant::now() >= deadline => {
                bail!("{target} not reachable within {timeout:?}: {e:#}")
            }
            Err(_) => {}
        }
        ensure!(Instant::now() < deadline, "{target} not reachable within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Accepts one connection within `IO_TIMEOUT` (a client that never comes
/// must not leave the server thread, and so the caller, waiting forever).
fn accept_one(l: &TcpListener) -> std::io::Result<TcpStream> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn quantile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    sorted_ns[((sorted_ns.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// Request/response on one connection for `seconds`: (round trips, p50 µs,
/// p99 µs). The server echoes `MSG` bytes until the client closes.
fn rr(
    client: &impl AsRef<Netns>,
    server: &impl AsRef<Netns>,
    target: SocketAddrV4,
    seconds: f64,
) -> anyhow::Result<(u64, f64, f64)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let port = target.port();
    let srv = server.as_ref().spawn("rr-server", move || -> std::io::Result<()> {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
        let _ = tx.send(());
        let mut s = accept_one(&l)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut buf = [0u8; MSG];
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s.write_all(&buf)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })?;
    rx.recv_timeout(IO_TIMEOUT).context("server did not start")?;
    let span = Duration::from_secs_f64(seconds);
    let res = client.as_ref().exec(span + 3 * IO_TIMEOUT, move || -> std::io::Result<Vec<u64>> {
        let mut s = TcpStream::connect_timeout(&target.into(), IO_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let msg = [0x42u8; MSG];
        let mut buf = [0u8; MSG];
        let mut times = Vec::new();
        let start = Instant::now();
        while start.elapsed() < span {
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut buf)?;
            times.push(t.elapsed().as_nanos() as u64);
        }
        Ok(times)
    });
    let srv_res = srv.join().map_err(|_| anyhow::anyhow!("server panicked"))?;
    let mut times = res?.context("client")?;
    srv_res.context("server")?;
    times.sort_unstable();
    Ok((times.len() as u64, quantile_us(&times, 0.5), quantile_us(&times, 0.99)))
}

/// One TCP stream for `seconds`: Gbit/s as the receiver counted.
fn stream(
    client: &impl AsRef<Netns>,
    server: &impl AsRef<Netns>,
    target: SocketAddrV4,
    seconds: f64,
) -> anyhow::Result<f64> {
    let (tx, rx) = std::sync::mpsc::channel();
    let port = target.port();
    let srv = server.as_ref().spawn("stream-server", move || -> std::io::Result<(u64, f64)> {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
        let _ = tx.send(());
        let mut s = accept_one(&l)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut buf = vec![0u8; 1 << 18];
        let mut n = 0u64;
        let start = Instant::now();
        loop {
            match s.read(&mut buf)? {
                0 => break,
                k => n += k as u64,
            }
        }
        Ok((n, start.elapsed().as_secs_f64()))
    })?;
    rx.recv_timeout(IO_TIMEOUT).context("server did not start")?;
    let span = Duration::from_secs_f64(seconds);
    client.as_ref().exec(span + 3 * IO_TIMEOUT, move || -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&target.into(), IO_TIMEOUT)?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        let chunk = vec![0x5au8; 1 << 17];
        let start = Instant::now();
        while start.elapsed() < span {
            s.write_all(&chunk)?;
        }
        Ok(())
    })??;
    let (bytes, secs) = srv.join().map_err(|_| anyhow::anyhow!("server panicked"))??;
    Ok(bytes as f64 * 8.0 / secs / 1e9)
}

fn trial(
    layout: Layout,
    rep: u32,
    seconds: f64,
    bin: &Path,
    sluice: &mut SluiceBed,
    bridge: &BridgeBed,
) -> anyhow::Result<Vec<Trial>> {
    let mut out = Vec::new();
    for path in [PathKind::SameNode, PathKind::CrossNode] {
        let peer = if path == PathKind::SameNode { 1 } else { 2 };
        let (rr_res, gbit, fast_path) = if layout == Layout::Bridge {
            let (c, s) = (&bridge.pods[0], &bridge.pods[peer]);
            let ip = bridge.ips[peer];
            let r = rr(c, s, SocketAddrV4::new(ip, RR_PORT), seconds)?;
            (r, stream(c, s, SocketAddrV4::new(ip, STREAM_PORT), seconds)?, None)
        } else {
            sluice.start(layout, bin)?;
            let paths = PinPaths::new(sluice.root(0));
            let server_paths = PinPaths::new(sluice.root(1));
            let before = FastPathStats::read(&paths)?;
            let server_before = FastPathStats::read(&server_paths)?;
            let (c, s) = (&sluice.pods[0], &sluice.pods[peer]);
            let ip = s.ip();
            let r = rr(c, s, SocketAddrV4::new(ip, RR_PORT), seconds)?;
            let g = stream(c, s, SocketAddrV4::new(ip, STREAM_PORT), seconds)?;
            let after = FastPathStats::read(&paths)?;
            let server_peer = FastPathStats::read(&server_paths)?.peer - server_before.peer;
            let d = after.since(&before);
            // The trial took the path it is named after.
            let redirected = if path == PathKind::SameNode {
                d.peer
            } else {
                (d.fib + d.neigh).min(server_peer)
            };
            if layout.fast() {
                ensure!(
                    redirected > 0,
                    "{} {}: no fast-path redirect: {d:?}",
                    layout.name(),
                    path.name()
                );
            } else {
                ensure!(d == FastPathStats::default(), "{}: fast path taken: {d:?}", layout.name());
            }
            (r, g, Some(d))
        };
        let t = Trial {
            layout,
            path,
            rep,
            round_trips: rr_res.0,
            rr_p50_us: rr_res.1,
            rr_p99_us: rr_res.2,
            throughput_gbit: gbit,
            fast_path,
        };
        eprintln!(
            "rep {rep} {:<11} {:<10}: rr p50 {:>7.1} µs p99 {:>7.1} µs ({} round trips), {:>6.2} Gbit/s {}",
            layout.name(),
            path.name(),
            t.rr_p50_us,
            t.rr_p99_us,
            t.round_trips,
            t.throughput_gbit,
            t.fast_path.map(|f| format!("{f:?}")).unwrap_or_default()
        );
        out.push(t);
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn report(trials: &[Trial], layouts: &[Layout], skipped: &[String], cli: &Cli) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Pod-to-pod routing benchmark\n");
    let _ = writeln!(
        md,
        "`cargo xtask bench routing{}`: medians over {} interleaved repetitions of {} s per \
         measurement; TCP request/response of {MSG} bytes on one connection (p50/p99 µs) and one \
         TCP stream (Gbit/s). Ratio: plain routing's figure divided by the layout's (latency) or \
         the layout's divided by plain's (throughput): > 1 is better than plain.\n",
        if cli.quick { " --quick" } else { "" },
        trials.iter().map(|t| t.rep).max().unwrap_or(0),
        cli.seconds.unwrap_or(if cli.quick { 1.0 } else { 4.0 }),
    );
    let _ = writeln!(
        md,
        "| path | layout | rr p50 µs | rr p99 µs | Gbit/s | p50 vs plain | p99 vs plain | Gbit/s vs plain |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
    for path in [PathKind::SameNode, PathKind::CrossNode] {
        let stat = |l: Layout, f: &dyn Fn(&Trial) -> f64| {
            median(trials.iter().filter(|t| t.layout == l && t.path == path).map(f).collect())
        };
        let base = (
            stat(Layout::Plain, &|t| t.rr_p50_us),
            stat(Layout::Plain, &|t| t.rr_p99_us),
            stat(Layout::Plain, &|t| t.throughput_gbit),
        );
        for &l in layouts {
            let (p50, p99, g) = (
                stat(l, &|t| t.rr_p50_us),
                stat(l, &|t| t.rr_p99_us),
                stat(l, &|t| t.throughput_gbit),
            );
            let _ = writeln!(
                md,
                "| {} | {} | {p50:.1} | {p99:.1} | {g:.2} | {:.2} | {:.2} | {:.2} |",
                path.name(),
                l.name(),
                base.0 / p50,
                base.1 / p99,
                g / base.2
            );
        }
    }
    for s in skipped {
        let _ = writeln!(md, "\nSkipped: {s}");
    }
    let _ = writeln!(
        md,
        "\nEach sluice trial's fast-path counters (client node) are in results.json: `fast` \
         trials count peer redirects (same node) and FIB redirects (cross node), `plain` ones none."
    );
    md
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ensure!(nix::unistd::geteuid().is_root(), "needs root (network namespaces, bpffs)");
    let bin = sluice_bin()?;
    let reps = cli.reps.unwrap_or(if cli.quick { 1 } else { 3 });
    let seconds = cli.seconds.unwrap_or(if cli.quick { 1.0 } else { 4.0 });
    let mut skipped = Vec::new();
    let tunnel = agent_supports(&bin, "--tunnel");
    let mut layouts: Vec<Layout> = if cli.layouts.is_empty() {
        let mut l = vec![Layout::Fast, Layout::Plain, Layout::Bridge];
        if tunnel {
            l.extend([Layout::VxlanFast, Layout::VxlanPlain]);
        } else {
            skipped.push("vxlan-fast, vxlan-plain: the agent has no --tunnel flag".to_owned());
        }
        l
    } else {
        cli.layouts.iter().map(|s| Layout::parse(s)).collect::<anyhow::Result<_>>()?
    };
    if !tunnel && layouts.iter().any(|l| matches!(l, Layout::VxlanFast | Layout::VxlanPlain)) {
        bail!("vxlan layouts asked for, but {} has no --tunnel flag", bin.display());
    }
    if !layouts.contains(&Layout::Plain) {
        layouts.push(Layout::Plain);
    }
    sweep_stale();
    let started = Instant::now();
    let underlay = Underlay::new()?;
    let mut sluice = SluiceBed::new(&underlay)?;
    let bridge = BridgeBed::new(&underlay)?;
    let target = SocketAddrV4::new(bridge.ips[2], RR_PORT);
    wait_reachable(&bridge.pods[0], &bridge.pods[2], target, Duration::from_secs(10))?;
    let mut trials = Vec::new();
    for rep in 1..=reps {
        // Interleaved: each repetition starts one layout later.
        let n = layouts.len();
        for k in 0..n {
            let layout = layouts[(k + rep as usize - 1) % n];
            trials.extend(trial(layout, rep, seconds, &bin, &mut sluice, &bridge)?);
        }
    }
    let md = report(&trials, &layouts, &skipped, &cli);
    std::fs::create_dir_all(&cli.out)?;
    std::fs::write(cli.out.join("report.md"), &md)?;
    let json = serde_json::json!({
        "reps": reps, "seconds": seconds, "message_bytes": MSG,
        "elapsed_s": started.elapsed().as_secs_f64(), "skipped": skipped, "trials": trials,
    });
    std::fs::write(cli.out.join("results.json"), serde_json::to_string_pretty(&json)?)?;
    println!("{md}");
    println!("written: {}", cli.out.display());
    Ok(())
}
