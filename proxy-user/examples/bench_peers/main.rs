//! Data-plane benchmark of sluice against the direct path and kube-proxy's
//! data planes, emulated at the kernel level with kube-proxy's own rule
//! layouts: `cargo xtask bench peers [--quick]` (as root).
//!
//! Every peer has a node network namespace of its own with a client pod
//! and backend pods (veth pairs, /32 routes, built by `sluice::testbed`): a
//! single-threaded echo server in each backend pod pinned to one core and a
//! single-threaded load generator in the client pod pinned to the other.
//! The topology is the same for every peer; only the service implementation
//! in its node differs:
//!
//! - `direct`: the client connects to a backend pod's IP (no Service);
//! - `iptables`: kube-proxy's iptables-mode rules, `iptables-restore --noflush`;
//! - `nftables`: kube-proxy's nftables-mode table `ip kube-proxy`, `nft -f`;
//! - `sluice`: the agent with `--socket-lb=false` (the per-packet path only);
//! - `sluice-socklb`: the agent's defaults, the client inside its `--cgroup-root`.
//!
//! For each N the measured services (placed first, middle or last among the
//! N, with 1 or 10 endpoints: see `plan`) go into one generated service set
//! where they fit; every peer is programmed with it once (the time to
//! program N services, cold) and keeps it while the peers are measured
//! interleaved, A B C D E A B C D E ..., each repetition starting at the
//! next peer. Measured per service: connection rate (connect, 1-byte
//! request/response, close), first-packet latency (`connect()`),
//! request/response latency on a persistent connection (p50/p99) and the
//! throughput of one TCP stream with the CPU time per Gbit; per sluice peer
//! the agent's peak RSS. Writes `report.md`, `results.json` and
//! `per-connection.svg` to `--out`.
//!
//! The same binary is the load generator (`client`) and the echo server
//! (`serve`), so that each runs as its own process in its own namespace
//! (and, for socket LB, cgroup).

mod kube_rules;
mod loadgen;
mod plan;
mod plot;
mod report;

use std::ffi::CString;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};
use serde::Serialize;
use sluice::testbed::{
    self, Agent, AgentConfig, BpffsMount, ClusterIpService, ManifestDir, Netns, Node, Pod,
    TestCgroup, TestDir, run_checked, run_with_timeout, sweep_stale,
};

use crate::kube_rules::ClusterConfig;
use crate::loadgen::ClientResult;
use crate::plan::{Placement, SetPlan, Target};

/// The backends' port; services listen on `SERVICE_PORT`.
const TARGET_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
/// How long programming N services may take before the peer is left out
/// at that N (`nft -f` of 10,000 services took up to 118 s here).
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(600);
/// At most this many endpoints per measured service (backend pods per node,
/// besides the spare one that changes bring in).
const MAX_ENDPOINTS: u32 = 64;
/// Changes per peer and repetition ("one change at N existing"); even, so
/// that the changed service is back at its first endpoints after them.
const CHANGES: u32 = 6;
/// Pause before each change: beyond the agent's 100 ms coalescing of bursts
/// (as in `bench_control`), so each change is measured alone.
const CHANGE_GAP: Duration = Duration::from_millis(150);
/// How long one change may take to reach the new endpoint.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser)]
#[command(about = "sluice vs the direct path and kube-proxy's iptables and nftables data planes")]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    /// One repetition at N in {1, 1000}, every placement, 0.5 s per measurement (CI smoke).
    #[arg(long)]
    quick: bool,
    /// Repetitions per (N, peer) (default 5; 1 with --quick).
    #[arg(long)]
    reps: Option<u32>,
    /// Numbers of services (default 1,1000,10000; 1,1000 with --quick); 100000 is possible.
    #[arg(long, value_delimiter = ',')]
    services: Vec<u32>,
    /// Endpoints of the measured services (default 1,10): that many backend pods.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<u32>,
    /// Where the measured service sits among the N: first, middle, last
    /// (default first,last; all three with --quick).
    #[arg(long, value_delimiter = ',')]
    placement: Vec<String>,
    /// Measure every (placement, endpoints) pair; by default every placement
    /// is measured with the first endpoint count and the other endpoint
    /// counts only at the last placement given.
    #[arg(long)]
    all_pairs: bool,
    /// iptables and nftables are left out above this many services
    /// (`iptables-restore` and `nft -f` of 100,000 services take very long).
    #[arg(long, default_value_t = 10_000)]
    max_n_rules: u32,
    /// Seconds per measurement (connection rate, latency, throughput) (default 2; 0.5 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Peers to run (default all): direct, iptables, nftables, sluice, sluice-socklb.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Where report.md, results.json and per-connection.svg go.
    #[arg(long, default_value = "target/bench-results/peers")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Role {
    /// (internal) The echo server, run in a backend pod.
    Serve {
        #[arg(long)]
        port: u16,
        /// The byte the server answers identity probes with.
        #[arg(long, default_value_t = 0)]
        id: u8,
        #[arg(long, default_value_t = 7200)]
        max_seconds: u64,
    },
    /// (internal) The load generator, run in the client pod; prints JSON.
    Client {
        #[arg(long)]
        target: SocketAddrV4,
        #[arg(long)]
        seconds: f64,
        /// CPUs whose busy time counts for CPU per Gbit (default: all).
        #[arg(long, value_delimiter = ',')]
        cpus: Vec<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Peer {
    Direct,
    Iptables,
    Nftables,
    Sluice,
    SluiceSocklb,
}

impl Peer {
    const ALL: [Peer; 5] =
        [Peer::Direct, Peer::Iptables, Peer::Nftables, Peer::Sluice, Peer::SluiceSocklb];

    fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Iptables => "iptables",
            Peer::Nftables => "nftables",
            Peer::Sluice => "sluice",
            Peer::SluiceSocklb => "sluice-socklb",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == s).with_context(|| format!("unknown peer `{s}`"))
    }

    /// Programmed with `iptables-restore` / `nft -f` (bounded by `--max-n-rules`).
    fn is_rules(self) -> bool {
        matches!(self, Peer::Iptables | Peer::Nftables)
    }
}

/// One measurement of one peer and one measured service.
#[derive(Debug, Clone, Serialize)]
struct Trial {
    services: u32,
    /// The measured service's placement (`last`, or `first=middle=last`
    /// where they coincide at small N); `None` for the direct path.
    placement: Option<String>,
    /// The measured service's endpoints; `None` for the direct path.
    endpoints: Option<u32>,
    /// The measured service's index among the N.
    index: Option<u32>,
    rep: u32,
    peer: Peer,
    client: ClientResult,
}

/// Programming one peer with one service set (once per set).
#[derive(Debug, Clone, Serialize)]
struct Programming {
    services: u32,
    /// The endpoint counts of the set's measured services.
    endpoints: Vec<u32>,
    peer: Peer,
    /// iptables-restore / nft -f: the command's wall time.
    program_cmd_ms: Option<f64>,
    /// From the command's (or the agent's) start to the measured service
    /// (the set's last) answering the client.
    program_reachable_ms: Option<f64>,
    /// sluice: the agent's peak RSS (VmHWM) before it was stopped, MiB.
    agent_peak_rss_mib: Option<f64>,
}

/// One change at N existing: one peer's series of [`CHANGES`] changes in one
/// repetition. The changed service's first endpoint is replaced by a spare
/// backend pod, then put back, and so on.
#[derive(Debug, Clone, Serialize)]
struct ChangeSeries {
    services: u32,
    /// The changed service's index among the N and its endpoints.
    index: u32,
    endpoints: u32,
    rep: u32,
    peer: Peer,
    /// iptables-restore / nft -f: the command's wall time, per change.
    cmd_ms: Vec<f64>,
    /// iptables / nftables: the emulated sync (the listing kube-proxy runs
    /// before writing, then the command), per change.
    sync_ms: Vec<f64>,
    /// From the sync's start (sluice: from writing the changed manifest)
    /// until the new endpoint answered a client, per change.
    reachable_ms: Vec<f64>,
    cmd_p50_ms: Option<f64>,
    sync_p50_ms: Option<f64>,
    reachable_p50_ms: Option<f64>,
}

/// A peer left out at some N, and why.
#[derive(Debug, Clone, Serialize)]
struct Skip {
    services: u32,
    peer: Peer,
    reason: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::Serve { port, id, max_seconds }) => {
            loadgen::serve(port, id, max_seconds).map_err(Into::into)
        }
        Some(Role::Client { target, seconds, ref cpus }) => client_main(target, seconds, cpus),
        None => orchestrate(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_peers: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn client_main(target: SocketAddrV4, seconds: f64, cpus: &[usize]) -> anyhow::Result<()> {
    let result = loadgen::run_client(target, seconds, cpus)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

fn sluice_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin =
        exe.parent().and_then(|e| e.parent()).map(|p| p.join("sluice")).context("no target dir")?;
    ensure!(bin.exists(), "{} not found: build it first (cargo build --release)", bin.display());
    Ok(bin)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A command that runs `program` pinned to `cpu` (with `taskset`, when
/// there is one and more than one CPU) inside `ns`.
fn pinned(ns: &Netns, cpu: Option<usize>, program: &Path) -> anyhow::Result<Command> {
    Ok(match cpu {
        Some(cpu) => {
            let mut c = ns.command("taskset")?;
            c.args(["-c", &cpu.to_string()]).arg(program);
            c
        }
        None => ns.command(program)?,
    })
}

/// The echo server process; killed on drop.
struct Server(Child);

impl Server {
    fn start(pod: &Pod, id: u8, cpu: Option<usize>) -> anyhow::Result<Server> {
        let exe = std::env::current_exe()?;
        let mut cmd = pinned(pod.netns(), cpu, &exe)?;
        cmd.args(["serve", "--port", &TARGET_PORT.to_string(), "--id", &id.to_string()]);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        // SAFETY: prctl(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("spawning the echo server")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let server = Server(child);
        ensure!(line.trim() == "listening", "echo server did not start: {line:?}");
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the load generator in `pod` (and in `cgroup`, if given).
fn run_client(
    bed: &Bed,
    pod: &Pod,
    target: SocketAddrV4,
    cgroup: Option<&Path>,
) -> anyhow::Result<ClientResult> {
    let exe = std::env::current_exe()?;
    let mut cmd = pinned(pod.netns(), bed.client_cpu, &exe)?;
    cmd.args(["client", "--target", &target.to_string(), "--seconds", &bed.seconds.to_string()]);
    if !bed.stat_cpus.is_empty() {
        let cpus: Vec<String> = bed.stat_cpus.iter().map(ToString::to_string).collect();
        cmd.arg("--cpus").arg(cpus.join(","));
    }
    if let Some(cgroup) = cgroup {
        let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())?;
        // SAFETY: open/write/close are async-signal-safe; nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
            });
        }
    }
    // Three measurements, warm-up and the bulk transfer's drain.
    let timeout = Duration::from_secs_f64(bed.seconds * 6.0 + 30.0);
    let out = run_with_timeout(&mut cmd, timeout)?;
    ensure!(out.status.success(), "client failed ({}): {}", out.status, out.stderr.trim());
    serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("parsing the client's output {:?}", out.stdout))
}

/// Starts polling `target` from `pod` now; the handle yields the time from
/// `since` to the first answer.
fn start_poller(
    pod: &Pod,
    target: SocketAddrV4,
    since: Instant,
) -> anyhow::Result<testbed::NsJoinHandle<std::io::Result<Duration>>> {
    Ok(pod
        .netns()
        .spawn("reachable", move || loadgen::wait_reachable(target, since, PROGRAM_TIMEOUT))?)
}

fn join_poller(h: testbed::NsJoinHandle<std::io::Result<Duration>>) -> anyhow::Result<Duration> {
    h.join().map_err(|_| anyhow::anyhow!("poller panicked"))?.context("measured service")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The address of service `i`: 10.96.0.10 + i (inside the 10.96.0.0/12
/// service CIDR up to a million services).
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i)
}

/// The (unreached) endpoint of every service but the measured ones.
fn dummy_endpoint(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i)
}

/// The set's N services: each measured one with its first `endpoints`
/// backend pods, every other with one unreached endpoint.
fn service_set(
    set: &SetPlan,
    backends: &[Ipv4Addr],
) -> anyhow::Result<Vec<kube_rules::ServicePort>> {
    (0..set.n)
        .map(|i| {
            let endpoints = match set.target_at(i) {
                Some(t) => {
                    let want = t.endpoints as usize;
                    ensure!(
                        want <= backends.len(),
                        "{want} endpoints but {} backend pods",
                        backends.len()
                    );
                    backends[..want].iter().map(|&ip| SocketAddrV4::new(ip, TARGET_PORT)).collect()
                }
                None => vec![SocketAddrV4::new(dummy_endpoint(i), TARGET_PORT)],
            };
            Ok(kube_rules::ServicePort {
                namespace: "bench".to_owned(),
                name: format!("svc-{i:06}"),
                port_name: "http".to_owned(),
                cluster_ip: vip(i),
                port: SERVICE_PORT,
                endpoints,
            })
        })
        .collect()
}

/// The same services as Service + EndpointSlice manifests for the agent.
fn manifests_yaml(services: &[kube_rules::ServicePort], node: &Node) -> String {
    let mut docs = Vec::with_capacity(services.len());
    for s in services {
        let backends = s
            .endpoints
            .iter()
            .enumerate()
            .map(|(k, ep)| {
                let mut b = testbed::Backend::ready(&format!("{}-{k}", s.name), *ep.ip());
                b.node_name = Some(node.name().to_owned());
                b
            })
            .collect();
        let mut svc = ClusterIpService::new(
            &s.name,
            s.cluster_ip,
            vec![testbed::ServicePort::new(
                &s.port_name,
                testbed::Protocol::Tcp,
                s.port,
                s.endpoints[0].port(),
            )],
            backends,
        );
        svc.namespace.clone_from(&s.namespace);
        docs.push(svc.to_yaml());
    }
    docs.join("---\n")
}

/// Counts tcx programs attached in `ns` (`bpftool net show`), to check that
/// nothing of a sluice run stays behind for the next peer.
/// BPF programs on the namespace's interfaces: tcx links and tc (clsact) filters.
fn tcx_attached(ns: &Netns) -> anyhow::Result<usize> {
    let out = run_checked(ns.command("bpftool")?.args(["net", "show"]), Duration::from_secs(10))?;
    Ok(out.lines().filter(|l| l.contains("tcx/") || l.contains("clsact/")).count())
}

/// Removes the clsact qdisc (and with it the pod program's tc filter, which
/// outlives the agent by design) from every interface of `ns`, so the next
/// peer does not run through a stopped agent's program and maps.
fn clear_tc_filters(ns: &Netns) -> anyhow::Result<()> {
    let links =
        run_checked(ns.command("ip")?.args(["-o", "link", "show"]), Duration::from_secs(10))?;
    for line in links.lines() {
        let Some(name) = line.split(": ").nth(1) else { continue };
        let name = name.split('@').next().unwrap_or(name);
        // Most interfaces have no clsact qdisc: that error is expected.
        let _ = ns.command("tc")?.args(["qdisc", "del", "dev", name, "clsact"]).output();
    }
    Ok(())
}

fn nft_ruleset_empty(ns: &Netns) -> anyhow::Result<bool> {
    let out = run_checked(ns.command("nft")?.args(["list", "ruleset"]), Duration::from_secs(30))?;
    Ok(out.trim().is_empty())
}

fn nft_flush(ns: &Netns) -> anyhow::Result<()> {
    run_checked(ns.command("nft")?.args(["flush", "ruleset"]), Duration::from_secs(60))?;
    Ok(())
}

/// A peer's node: its namespace, client pod, backend pods and their echo
/// servers (declared first: killed before their namespaces go).
struct PeerNode {
    peer: Peer,
    _servers: Vec<Server>,
    client: Pod,
    backends: Vec<Pod>,
    node: Node,
}

impl PeerNode {
    fn new(peer: Peer, backends: u32, server_cpu: Option<usize>) -> anyhow::Result<PeerNode> {
        let node = Node::new(&format!("bench-{}", peer.name()))?;
        let backends = (0..backends)
            .map(|k| node.add_pod(&format!("backend{k}")))
            .collect::<anyhow::Result<Vec<Pod>>>()?;
        let client = node.add_pod("client")?;
        let servers = backends
            .iter()
            .enumerate()
            .map(|(k, b)| Server::start(b, k as u8, server_cpu))
            .collect::<anyhow::Result<Vec<Server>>>()?;
        nft_flush(node.netns())?;
        Ok(PeerNode { peer, _servers: servers, client, backends, node })
    }

    fn backend_ips(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(Pod::ip).collect()
    }

    /// Every backend answers the client directly.
    fn check_direct(&self) -> anyhow::Result<()> {
        for b in &self.backends {
            let target = SocketAddrV4::new(b.ip(), TARGET_PORT);
            let h = start_poller(&self.client, target, Instant::now())?;
            join_poller(h).with_context(|| {
                format!("{}: backend {} not reachable directly", self.peer.name(), b.ip())
            })?;
        }
        Ok(())
    }
}

/// The world every peer shares.
struct Bed {
    dir: TestDir,
    nodes: Vec<PeerNode>,
    client_cpu: Option<usize>,
    /// The CPUs whose busy time counts for CPU per Gbit (empty: all).
    stat_cpus: Vec<usize>,
    seconds: f64,
    sluice: PathBuf,
}

/// A peer's programming while its trials run.
enum Live {
    Rules,
    Agent(Box<Running>),
}

/// A running agent with its bpffs and cgroup (dropped in this order).
struct Running {
    agent: Agent,
    /// The manifest directory the agent follows (changes are written here).
    manifests: ManifestDir,
    bpffs: BpffsMount,
    cgroup: TestCgroup,
}

/// The rule files of one service set.
struct Inputs {
    services: Vec<kube_rules::ServicePort>,
    iptables: PathBuf,
    nft: PathBuf,
    /// The set's last measured service, polled for "programmed".
    probe: SocketAddrV4,
    label: String,
    change: ChangePlan,
}

/// One change at N existing: which service changes and the inputs of its
/// two directions (change `k` uses `steps[k % 2]`).
struct ChangePlan {
    /// The changed service's index among the N.
    index: u32,
    endpoints: u32,
    /// Its ClusterIP:port.
    target: SocketAddrV4,
    /// kube-proxy's iptables large cluster mode (over 1000 endpoints): no
    /// `iptables-save` before partial syncs.
    large: bool,
    steps: [ChangeStep; 2],
}

/// One direction of the change.
struct ChangeStep {
    /// The changed service after the step.
    service: kube_rules::ServicePort,
    /// kube-proxy's partial-sync inputs for the step.
    iptables: PathBuf,
    nft: PathBuf,
    /// The id of the backend pod the step's new endpoint is.
    want: u8,
}

fn prepare(bed: &Bed, set: &SetPlan, set_no: usize, rules: bool) -> anyhow::Result<Inputs> {
    // One service set for every node: their backend pods have the same
    // addresses (each node is node 0 of its own world, pods added in the
    // same order), which is checked here.
    let backends =
        bed.nodes.iter().map(PeerNode::backend_ips).max_by_key(Vec::len).unwrap_or_default();
    for pn in &bed.nodes {
        let ips = pn.backend_ips();
        ensure!(
            backends.starts_with(&ips),
            "{}'s backends {ips:?} differ from {backends:?}",
            pn.peer.name()
        );
    }
    let services = service_set(set, &backends)?;
    let label = format!("{}-{set_no}", set.n);
    let cfg = ClusterConfig {
        cluster_cidr: "10.244.0.0/16".to_owned(),
        service_cidr: "10.96.0.0/12".to_owned(),
        node_ip: bed.nodes[0].node.address(),
    };
    let iptables = bed.dir.join(format!("kube-proxy-iptables-{label}.rules"));
    let nft = bed.dir.join(format!("kube-proxy-nftables-{label}.nft"));
    if rules {
        fs::write(&iptables, kube_rules::iptables_restore(&services, &cfg))?;
        fs::write(&nft, kube_rules::nft_ruleset(&services, &cfg))?;
    }
    let last = set.targets.last().context("a set without a measured service")?;
    // The changed service: the measured one with the fewest endpoints, the
    // latest placed among those; its first endpoint is replaced by the
    // spare backend pod (the last, never an endpoint of a measured service).
    let changed = set
        .targets
        .iter()
        .min_by_key(|t| (t.endpoints, std::cmp::Reverse(t.index)))
        .context("a set without a measured service")?;
    let spare = backends.len() - 1;
    ensure!(spare >= changed.endpoints as usize, "no spare backend pod for the changes");
    let at = changed.index as usize;
    let original = services[at].clone();
    let mut replaced = original.clone();
    replaced.endpoints[0] = SocketAddrV4::new(backends[spare], TARGET_PORT);
    let mut after = services.clone();
    let mut steps = Vec::new();
    for (k, (from, to, want)) in
        [(&original, &replaced, spare), (&replaced, &original, 0)].into_iter().enumerate()
    {
        after[at] = to.clone();
        let ipt = bed.dir.join(format!("kube-proxy-iptables-{label}-change{k}.rules"));
        let nft = bed.dir.join(format!("kube-proxy-nftables-{label}-change{k}.nft"));
        if rules {
            fs::write(
                &ipt,
                kube_rules::iptables_partial_restore(&after, at, &from.endpoints, &cfg),
            )?;
            fs::write(&nft, kube_rules::nft_partial(&after, at, &from.endpoints, &cfg))?;
        }
        steps.push(ChangeStep {
            service: to.clone(),
            iptables: ipt,
            nft,
            want: u8::try_from(want).context("too many backend pods")?,
        });
    }
    let [forward, back]: [ChangeStep; 2] =
        steps.try_into().map_err(|_| anyhow::anyhow!("two change steps"))?;
    let change = ChangePlan {
        index: changed.index,
        endpoints: changed.endpoints,
        target: SocketAddrV4::new(vip(changed.index), SERVICE_PORT),
        large: kube_rules::large_cluster(&services),
        steps: [forward, back],
    };
    Ok(Inputs {
        probe: SocketAddrV4::new(vip(last.index), SERVICE_PORT),
        services,
        iptables,
        nft,
        label,
        change,
    })
}

/// The manifest file of the changed service.
const CHANGED_FILE: &str = "changed.yaml";

/// Programs `pn`'s node with the set: the rules, or a started agent.
fn program(bed: &Bed, pn: &PeerNode, inputs: &Inputs) -> anyhow::Result<(Programming, Live)> {
    let node_ns = pn.node.netns();
    let mut record = Programming {
        services: inputs.services.len() as u32,
        endpoints: Vec::new(),
        peer: pn.peer,
        program_cmd_ms: None,
        program_reachable_ms: None,
        agent_peak_rss_mib: None,
    };
    let live = match pn.peer {
        Peer::Direct => bail!("the direct path is not programmed"),
        Peer::Iptables | Peer::Nftables => {
            let mut cmd = if pn.peer == Peer::Iptables {
                let mut c = node_ns.command("iptables-restore")?;
                c.arg("--noflush").arg(&inputs.iptables);
                c
            } else {
                let mut c = node_ns.command("nft")?;
                c.arg("-f").arg(&inputs.nft);
                c
            };
            let t0 = Instant::now();
            let poller = start_poller(&pn.client, inputs.probe, t0)?;
            run_checked(&mut cmd, PROGRAM_TIMEOUT)?;
            record.program_cmd_ms = Some(ms(t0.elapsed()));
            record.program_reachable_ms = Some(ms(join_poller(poller)?));
            Live::Rules
        }
        Peer::Sluice | Peer::SluiceSocklb => {
            let manifests = ManifestDir::at(bed.dir.join(format!(
                "manifests-{}-{}",
                inputs.label,
                pn.peer.name()
            )))?;
            manifests.write_node(&pn.node)?;
            // The changed service in a file of its own, which the changes rewrite.
            let at = inputs.change.index as usize;
            let (before, rest) = inputs.services.split_at(at);
            let others: Vec<kube_rules::ServicePort> =
                before.iter().chain(&rest[1..]).cloned().collect();
            manifests.write_file("services.yaml", &manifests_yaml(&others, &pn.node))?;
            manifests.write_file(CHANGED_FILE, &manifests_yaml(&rest[..1], &pn.node))?;
            let bpffs = BpffsMount::new()?;
            let cgroup = TestCgroup::new(pn.peer.name())?;
            let mut cfg = AgentConfig::new(
                &bed.sluice,
                &pn.node,
                &manifests,
                &bpffs,
                Some(&cgroup),
                &bed.dir,
            );
            cfg.log = bed.dir.join(format!("agent-{}-{}.log", pn.peer.name(), inputs.label));
            cfg.rust_log = "warn".to_owned();
            // One node and no egress: no masquerade table (its netfilter
            // hook would be on sluice's path).
            cfg.extra_args.extend(["--masquerade=false", "--routing", "none"].map(String::from));
            if pn.peer == Peer::Sluice {
                cfg.extra_args.push("--socket-lb=false".to_owned());
            }
            let t0 = Instant::now();
            let poller = start_poller(&pn.client, inputs.probe, t0)?;
            let mut agent = Agent::start(&pn.node, cfg)?;
            let reachable = join_poller(poller);
            if let Some(status) = agent.try_wait()? {
                bail!("agent exited ({status}); log:\n{}", log_tail(&agent.log()));
            }
            record.program_reachable_ms = Some(ms(reachable?));
            if pn.peer == Peer::SluiceSocklb {
                // The client's connect() must meet the agent's hooks: the
                // agent pins the connect4 link once it is attached to its
                // --cgroup-root. (Debian's bpftool 7.1 lists no hooks of a
                // cgroup v2 directory on this kernel, so it cannot tell.)
                let pin = sluice::datapath::PinPaths::new(bpffs.path().join("sluice"))
                    .sock_link(proxy_common::PROG_SOCK_CONNECT4);
                ensure!(
                    pin.exists(),
                    "no connect4 hook on {}: {} missing; agent log:\n{}",
                    cgroup.path().display(),
                    pin.display(),
                    log_tail(&agent.log())
                );
            }
            Live::Agent(Box::new(Running { agent, manifests, bpffs, cgroup }))
        }
    };
    Ok((record, live))
}

/// The last lines of an agent log, without colour codes (the log of an
/// agent that kept failing can be very long).
fn log_tail(log: &str) -> String {
    const LINES: usize = 20;
    let lines: Vec<&str> = log.lines().collect();
    let skipped = lines.len().saturating_sub(LINES);
    let tail = strip_ansi(&lines[skipped..].join("\n"));
    if skipped > 0 { format!("({skipped} earlier lines left out)\n{tail}") } else { tail }
}

/// `s` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Peak RSS (`VmHWM`) of process `pid`, MiB.
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_hwm_mib(&status).with_context(|| format!("no VmHWM in /proc/{pid}/status"))
}

/// The `VmHWM:` line of a `/proc/PID/status` text (kB), in MiB.
fn parse_vm_hwm_mib(status: &str) -> Option<f64> {
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Undoes a peer's programming and checks that nothing stays.
fn teardown(pn: &PeerNode, live: Live) -> anyhow::Result<()> {
    let node_ns = pn.node.netns();
    match live {
        Live::Rules => nft_flush(node_ns)?,
        Live::Agent(running) => {
            let Running { mut agent, manifests: _, bpffs, cgroup } = *running;
            let status = agent.stop()?;
            ensure!(
                status.success(),
                "agent exited with {status}; log:\n{}",
                log_tail(&agent.log())
            );
            // Unpin everything (links detach with their last reference);
            // the pod program's tc filter goes with its qdisc.
            let _ = fs::remove_dir_all(bpffs.path().join("sluice"));
            clear_tc_filters(node_ns)?;
            drop(bpffs);
            drop(cgroup);
        }
    }
    check_clean(pn)
}

/// No netfilter rule and no BPF program is left in the peer's node.
fn check_clean(pn: &PeerNode) -> anyhow::Result<()> {
    let ns = pn.node.netns();
    if on_path("bpftool") {
        ensure!(tcx_attached(ns)? == 0, "BPF programs still attached after {}", pn.peer.name());
    }
    ensure!(nft_ruleset_empty(ns)?, "netfilter rules left after {}", pn.peer.name());
    Ok(())
}

/// Measures `target` (or the direct path) once from `pn`'s client.
fn measure(
    bed: &Bed,
    pn: &PeerNode,
    live: &mut Option<Live>,
    target: Option<&Target>,
) -> anyhow::Result<ClientResult> {
    let addr = match target {
        Some(t) => SocketAddrV4::new(vip(t.index), SERVICE_PORT),
        None => SocketAddrV4::new(pn.backends[0].ip(), TARGET_PORT),
    };
    let cgroup = match live.as_ref() {
        Some(Live::Agent(r)) if pn.peer == Peer::SluiceSocklb => Some(r.cgroup.path().to_owned()),
        _ => None,
    };
    let result = run_client(bed, &pn.client, addr, cgroup.as_deref());
    if let Some(Live::Agent(r)) = live.as_mut()
        && let Some(status) = r.agent.try_wait()?
    {
        bail!("agent exited ({status}) during the trial; log:\n{}", log_tail(&r.agent.log()));
    }
    result
}

/// Runs [`CHANGES`] changes of the set's changed service on `pn` (one
/// repetition's series); each is timed from the start of the emulated sync
/// (iptables, nftables) or from writing the changed manifest (sluice) until
/// the new endpoint answers the client.
fn measure_changes(
    pn: &PeerNode,
    live: &Live,
    inputs: &Inputs,
    rep: u32,
) -> anyhow::Result<ChangeSeries> {
    let plan = &inputs.change;
    let ns = pn.node.netns();
    let mut series = ChangeSeries {
        services: inputs.services.len() as u32,
        index: plan.index,
        endpoints: plan.endpoints,
        rep,
        peer: pn.peer,
        cmd_ms: Vec::new(),
        sync_ms: Vec::new(),
        reachable_ms: Vec::new(),
        cmd_p50_ms: None,
        sync_p50_ms: None,
        reachable_p50_ms: None,
    };
    let t = Duration::from_secs(120);
    for k in 0..CHANGES {
        std::thread::sleep(CHANGE_GAP);
        let step = &plan.steps[k as usize % 2];
        // Outside the timer: the changed manifest (per node: it names the node).
        let manifest = match live {
            Live::Agent(_) => manifests_yaml(std::slice::from_ref(&step.service), &pn.node),
            Live::Rules => String::new(),
        };
        let t0 = Instant::now();
        let target = plan.target;
        let want = step.want;
        let poller = pn
            .client
            .netns()
            .spawn("changed", move || loadgen::wait_backend(target, want, t0, CHANGE_TIMEOUT))?;
        match (pn.peer, live) {
            (Peer::Iptables, Live::Rules) => {
                // Below 1000 endpoints kube-proxy lists the nat table on
                // every sync to find stale chains.
                if !plan.large {
                    run_checked(ns.command("iptables-save")?.args(["-t", "nat"]), t)?;
                }
                let t1 = Instant::now();
                run_checked(
                    ns.command("iptables-restore")?.arg("--noflush").arg(&step.iptables),
                    t,
                )?;
                series.cmd_ms.push(ms(t1.elapsed()));
                series.sync_ms.push(ms(t0.elapsed()));
            }
            (Peer::Nftables, Live::Rules) => {
                // kube-proxy lists its chains and sets on every sync
                // (knftables lists the family's and keeps its table's).
                for what in ["chains", "sets"] {
                    run_checked(ns.command("nft")?.args(["--json", "list", what, "ip"]), t)?;
                }
                let t1 = Instant::now();
                run_checked(ns.command("nft")?.arg("-f").arg(&step.nft), t)?;
                series.cmd_ms.push(ms(t1.elapsed()));
                series.sync_ms.push(ms(t0.elapsed()));
            }
            (Peer::Sluice | Peer::SluiceSocklb, Live::Agent(r)) => {
                r.manifests.write_file(CHANGED_FILE, &manifest)?;
            }
            _ => bail!("{} has nothing to change", pn.peer.name()),
        }
        let reached = poller
            .join()
            .map_err(|_| anyhow::anyhow!("poller panicked"))?
            .with_context(|| format!("change {k}"))?;
        series.reachable_ms.push(ms(reached));
    }
    let p50 = |v: &[f64]| report::Spread::of(v.iter().copied()).map(|s| s.median);
    series.cmd_p50_ms = p50(&series.cmd_ms);
    series.sync_p50_ms = p50(&series.sync_ms);
    series.reachable_p50_ms = p50(&series.reachable_ms);
    Ok(series)
}

/// What the run collected.
#[derive(Default)]
struct Collected {
    trials: Vec<Trial>,
    programming: Vec<Programming>,
    changes: Vec<ChangeSeries>,
    skips: Vec<Skip>,
    failures: Vec<String>,
}

fn orchestrate(cli: &Cli) -> anyhow::Result<()> {
    ensure!(nix::unistd::geteuid().is_root(), "needs root (network namespaces, BPF, netfilter)");
    let reps = cli.reps.unwrap_or(if cli.quick { 1 } else { 5 });
    let seconds = cli.seconds.unwrap_or(if cli.quick { 0.5 } else { 2.0 });
    ensure!(seconds > 0.0 && seconds.is_finite(), "--seconds must be positive");
    ensure!(reps >= 1, "--reps must be at least 1");
    let sizes = if cli.services.is_empty() {
        if cli.quick { vec![1, 1000] } else { vec![1, 1000, 10_000] }
    } else {
        cli.services.clone()
    };
    ensure!(
        sizes.iter().all(|&n| (1..=1_000_000).contains(&n)),
        "--services: each N must be 1..=1000000"
    );
    let endpoints = if cli.endpoints.is_empty() { vec![1, 10] } else { cli.endpoints.clone() };
    ensure!(
        endpoints.iter().all(|&e| (1..=MAX_ENDPOINTS).contains(&e)),
        "--endpoints: each count must be 1..={MAX_ENDPOINTS}"
    );
    let placements: Vec<Placement> = if cli.placement.is_empty() {
        if cli.quick { Placement::ALL.to_vec() } else { vec![Placement::First, Placement::Last] }
    } else {
        cli.placement.iter().map(|p| Placement::parse(p)).collect::<anyhow::Result<_>>()?
    };
    let pairs = plan::pairs(&endpoints, &placements, cli.all_pairs);
    let peers: Vec<Peer> = if cli.peers.is_empty() {
        Peer::ALL.to_vec()
    } else {
        cli.peers.iter().map(|p| Peer::parse(p)).collect::<anyhow::Result<_>>()?
    };
    for tool in ["iptables-restore", "nft", "ip"] {
        ensure!(on_path(tool), "`{tool}` not found: run `cargo xtask setup`");
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pin = cpus >= 2 && on_path("taskset");
    let (client_cpu, server_cpu) = if pin { (Some(0), Some(1)) } else { (None, None) };

    sweep_stale();
    let started = Instant::now();
    let machine = report::Machine::probe(pin);
    let most = endpoints.iter().copied().max().unwrap_or(1);
    let nodes = peers
        .iter()
        // One spare backend pod per programmed peer: the changes' new endpoint.
        .map(|&p| PeerNode::new(p, if p == Peer::Direct { 1 } else { most + 1 }, server_cpu))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bed = Bed {
        dir: TestDir::new("bench-peers")?,
        nodes,
        client_cpu,
        stat_cpus: if pin { vec![0, 1] } else { Vec::new() },
        seconds,
        sluice: sluice_bin()?,
    };
    for pn in &bed.nodes {
        pn.check_direct()?;
    }

    println!(
        "bench peers: N = {sizes:?}, measured (placement, endpoints) {:?}, {reps} repetition(s), \
         {seconds} s per measurement, peers: {}",
        pairs.iter().map(|(p, e)| format!("{} {e}", p.name())).collect::<Vec<_>>(),
        peers.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
    );
    let mut c = Collected::default();
    for &n in &sizes {
        let rules_ok = n <= cli.max_n_rules;
        for pn in &bed.nodes {
            if pn.peer.is_rules() && !rules_ok {
                c.skips.push(Skip {
                    services: n,
                    peer: pn.peer,
                    reason: format!("N above --max-n-rules {}", cli.max_n_rules),
                });
            }
        }
        for (set_no, set) in plan::plan(n, &pairs).iter().enumerate() {
            run_set(&bed, set, set_no, reps, rules_ok, &mut c)?;
        }
    }

    let machine = machine.finish(started.elapsed());
    fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let settings = report::Settings {
        services: sizes,
        endpoints,
        placements: placements.iter().map(|p| p.name().to_owned()).collect(),
        all_pairs: cli.all_pairs,
        max_n_rules: cli.max_n_rules,
        reps,
        seconds,
        peers: peers.iter().map(|p| p.name().to_owned()).collect(),
        quick: cli.quick,
        cpu_counted: if pin {
            "CPUs 0 and 1 (the client's and the servers')".to_owned()
        } else {
            "all CPUs".to_owned()
        },
    };
    let svg_name = "per-connection.svg";
    let svg_path = cli.out.join(svg_name);
    let (title, series) = report::per_connection_series(&settings, &c.trials);
    fs::write(
        &svg_path,
        plot::svg(&title, "services (log scale)", "connection p50 (µs)", &series),
    )?;
    let json = serde_json::json!({
        "machine": machine, "settings": settings, "trials": c.trials,
        "programming": c.programming, "changes": c.changes, "skipped": c.skips,
        "failures": c.failures,
    });
    let json_path = cli.out.join("results.json");
    fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    let md = report::markdown(&report::Input {
        machine: &machine,
        settings: &settings,
        trials: &c.trials,
        programming: &c.programming,
        changes: &c.changes,
        skips: &c.skips,
        failures: &c.failures,
        plot_file: svg_name,
    });
    let md_path = cli.out.join("report.md");
    fs::write(&md_path, &md)?;
    println!("\n{md}");
    println!(
        "report: {}\nraw data: {}\nplot: {}",
        md_path.display(),
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}

/// Programs every peer with one service set, measures its targets
/// interleaved `reps` times, and tears the programming down again.
fn run_set(
    bed: &Bed,
    set: &SetPlan,
    set_no: usize,
    reps: u32,
    rules_ok: bool,
    c: &mut Collected,
) -> anyhow::Result<()> {
    let n = set.n;
    let runs = |p: Peer| !p.is_rules() || rules_ok;
    let inputs =
        prepare(bed, set, set_no, bed.nodes.iter().any(|pn| pn.peer.is_rules() && runs(pn.peer)))?;
    let what = set
        .targets
        .iter()
        .map(|t| format!("{} ({} endpoint(s), #{})", t.label(), t.endpoints, t.index))
        .collect::<Vec<_>>()
        .join(", ");
    println!("N = {n}: measured {what}");
    // Program every peer once; a peer that fails is left out of this set.
    let mut live: Vec<Option<Live>> = Vec::new();
    let mut records: Vec<Option<usize>> = Vec::new();
    let mut ready: Vec<bool> = Vec::new();
    for pn in &bed.nodes {
        if pn.peer == Peer::Direct {
            live.push(None);
            records.push(None);
            ready.push(true);
            continue;
        }
        if !runs(pn.peer) {
            live.push(None);
            records.push(None);
            ready.push(false);
            continue;
        }
        match program(bed, pn, &inputs) {
            Ok((mut record, l)) => {
                record.endpoints = set.endpoint_counts();
                println!(
                    "  {:<14} programmed in {}",
                    pn.peer.name(),
                    record
                        .program_reachable_ms
                        .map_or_else(|| "?".to_owned(), |m| format!("{m:.1} ms"))
                );
                records.push(Some(c.programming.len()));
                c.programming.push(record);
                live.push(Some(l));
                ready.push(true);
            }
            Err(e) => {
                let e = format!("{} programming N = {n}: {e:#}", pn.peer.name());
                println!("  FAILED: {e}");
                c.failures.push(e);
                clean_after_failure(pn)?;
                live.push(None);
                records.push(None);
                ready.push(false);
            }
        }
    }
    let count = bed.nodes.len();
    for rep in 0..reps {
        // Interleaved, each repetition starting at the next peer.
        for k in 0..count {
            let i = (k + rep as usize) % count;
            if !ready[i] {
                continue;
            }
            let pn = &bed.nodes[i];
            let targets: Vec<Option<&Target>> = if pn.peer == Peer::Direct {
                vec![None]
            } else {
                set.targets.iter().map(Some).collect()
            };
            for target in targets {
                match measure(bed, pn, &mut live[i], target) {
                    Ok(client) => {
                        print_trial(n, rep, pn.peer, target, &client);
                        c.trials.push(Trial {
                            services: n,
                            placement: target.map(Target::label),
                            endpoints: target.map(|t| t.endpoints),
                            index: target.map(|t| t.index),
                            rep,
                            peer: pn.peer,
                            client,
                        });
                    }
                    Err(e) => {
                        let at = target.map_or_else(String::new, |t| {
                            format!(", {} with {} endpoint(s)", t.label(), t.endpoints)
                        });
                        let e =
                            format!("{} at N = {n}{at}, repetition {rep}: {e:#}", pn.peer.name());
                        println!("  FAILED: {e}");
                        c.failures.push(e);
                        // The agent may be gone: no further trials of this peer here.
                        if let Some(Live::Agent(r)) = live[i].as_mut()
                            && r.agent.try_wait()?.is_some()
                        {
                            ready[i] = false;
                            break;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // One change at N existing, after the peer's trials.
            if let (true, Some(l)) = (ready[i], live[i].as_ref()) {
                match measure_changes(pn, l, &inputs, rep) {
                    Ok(series) => {
                        print_changes(&series);
                        c.changes.push(series);
                    }
                    Err(e) => {
                        let e = format!(
                            "{} changes at N = {n}, repetition {rep}: {e:#}",
                            pn.peer.name()
                        );
                        println!("  FAILED: {e}");
                        c.failures.push(e);
                    }
                }
            }
        }
    }
    for (i, pn) in bed.nodes.iter().enumerate() {
        let Some(l) = live[i].take() else { continue };
        if let Live::Agent(r) = &l {
            let agent = &r.agent;
            if let (Some(pid), Some(k)) = (agent.pid(), records[i]) {
                c.programming[k].agent_peak_rss_mib = peak_rss_mib(pid).ok();
            }
            // Measured services answering does not mean all N were programmed.
            let log = agent.log();
            let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
            if let Some(first) = errors.first() {
                let e = format!(
                    "{} at N = {n}: the agent logged {} error line(s), the first: {}",
                    pn.peer.name(),
                    errors.len(),
                    strip_ansi(first)
                );
                println!("  ERRORS: {e}");
                c.failures.push(e);
            }
        }
        match teardown(pn, l) {
            Ok(()) => {}
            Err(e) => {
                let e = format!("{} tearing down N = {n}: {e:#}", pn.peer.name());
                println!("  FAILED: {e}");
                c.failures.push(e);
                clean_after_failure(pn)?;
            }
        }
    }
    Ok(())
}

fn print_changes(s: &ChangeSeries) {
    let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
    println!(
        "  N={:>6} rep {} {:<14} change of #{} ×{}: command p50 {}  sync p50 {}  reachable p50 {}",
        s.services,
        s.rep,
        s.peer.name(),
        s.index,
        s.endpoints,
        show(s.cmd_p50_ms),
        show(s.sync_p50_ms),
        show(s.reachable_p50_ms),
    );
}

fn print_trial(n: u32, rep: u32, peer: Peer, target: Option<&Target>, r: &ClientResult) {
    let at = target.map_or_else(|| "-".to_owned(), |t| format!("{} ×{}", t.label(), t.endpoints));
    println!(
        "  N={n:>6} rep {rep} {:<14} {at:<22} {:>7.0} conn/s  connect p50 {:>6.1} µs  rr p50 {:>6.1} µs  \
         {:>6.2} Gbit/s  {} CPU ms/Gbit",
        peer.name(),
        r.conn_per_s,
        r.connect_p50_us,
        r.rr_p50_us,
        r.gbit_per_s,
        r.cpu_ms_per_gbit.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
    );
}

/// After a failure: no netfilter rule and no BPF program may stay in the
/// peer's node, or its later figures would be wrong; the run stops if they do.
fn clean_after_failure(pn: &PeerNode) -> anyhow::Result<()> {
    let ns = pn.node.netns();
    nft_flush(ns)?;
    clear_tc_filters(ns)?;
    check_clean(pn).context("cleaning up after a failure")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expect: colour codes go, text stays; a long log keeps its last 20
    // lines and says how many it left out.
    #[test]
    fn agent_log_tail() {
        assert_eq!(strip_ansi("\u{1b}[2mtime\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m x"), "time ERROR x");
        let log: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let tail = log_tail(&log);
        assert!(tail.starts_with("(10 earlier lines left out)\nline 10\n"), "{tail}");
        assert!(tail.ends_with("line 29"), "{tail}");
        assert_eq!(log_tail("a\nb"), "a\nb");
    }

    // Expect: VmHWM in kB becomes MiB; a missing or malformed line is None.
    #[test]
    fn vm_hwm_parses() {
        let status =
            "Name:\tsluice\nVmPeak:\t  900000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_vm_hwm_mib(status), Some(50.0));
        assert_eq!(parse_vm_hwm_mib("VmRSS:\t1 kB\n"), None);
        assert_eq!(parse_vm_hwm_mib("VmHWM:\tlots\n"), None);
        let own = peak_rss_mib(std::process::id()).unwrap();
        assert!(own > 0.0, "{own}");
    }

    // Expect: the measured services get the first E backend pods, every
    // other service one unreached endpoint; VIPs follow the index.
    #[test]
    fn service_set_uses_backends_for_targets() {
        let set =
            &plan::plan(1000, &plan::pairs(&[1, 10], &[Placement::First, Placement::Last], false))
                [0];
        let backends: Vec<Ipv4Addr> = (11..21).map(|h| Ipv4Addr::new(10, 244, 0, h)).collect();
        let services = service_set(set, &backends).unwrap();
        assert_eq!(services.len(), 1000);
        assert_eq!(services[0].endpoints, [SocketAddrV4::new(backends[0], TARGET_PORT)]);
        assert_eq!(services[998].endpoints.len(), 10);
        assert_eq!(services[998].endpoints[9], SocketAddrV4::new(backends[9], TARGET_PORT));
        assert_eq!(services[999].endpoints, [SocketAddrV4::new(backends[0], TARGET_PORT)]);
        assert_eq!(services[500].endpoints, [SocketAddrV4::new(dummy_endpoint(500), TARGET_PORT)]);
        assert_eq!(services[999].cluster_ip, vip(999));
        assert!(service_set(set, &backends[..5]).unwrap_err().to_string().contains("10 endpoints"));
    }
}
