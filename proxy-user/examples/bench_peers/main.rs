//! Data-plane benchmark of sluice against the direct path and kube-proxy's
//! data planes, emulated at the kernel level with kube-proxy's own rule
//! layouts: `cargo xtask bench peers [--quick]` (as root).
//!
//! One node network namespace, a client pod and a backend pod (veth pairs,
//! /32 routes, built by `sluice::testbed`), a single-threaded echo server in
//! the backend pod pinned to one core and a single-threaded load generator
//! in the client pod pinned to the other. The same topology serves every
//! peer; only the service implementation in the node changes:
//!
//! - `direct`: the client connects to the backend pod's IP (no Service);
//! - `iptables`: kube-proxy's iptables-mode rules, `iptables-restore --noflush`;
//! - `nftables`: kube-proxy's nftables-mode table `ip kube-proxy`, `nft -f`;
//! - `sluice`: the agent with `--socket-lb=false` (the per-packet path only);
//! - `sluice-socklb`: the agent's defaults, the client inside its `--cgroup-root`.
//!
//! For N services (one endpoint each; the measured one last in every
//! generated list) peers are run interleaved, A B C D E A B C D E ..., each
//! repetition starting at the next peer. Measured: connection rate
//! (connect, 1-byte request/response, close), request/response latency on a
//! persistent connection (p50/p99) and the time to program the N services
//! cold. Writes `report.md` and `results.json` to `--out`.
//!
//! The same binary is the load generator (`client`) and the echo server
//! (`serve`), so that each runs as its own process in its own namespace
//! (and, for socket LB, cgroup).

mod kube_rules;
mod loadgen;
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

/// The backend's port; services listen on `SERVICE_PORT`.
const TARGET_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
/// How long programming N services may take before the run fails.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser)]
#[command(about = "sluice vs the direct path and kube-proxy's iptables and nftables data planes")]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    /// One repetition at N in {1, 1000}, 1 s per measurement (CI smoke).
    #[arg(long)]
    quick: bool,
    /// Repetitions per (N, peer) (default 5; 1 with --quick).
    #[arg(long)]
    reps: Option<u32>,
    /// Numbers of services (default 1,1000,10000; 1,1000 with --quick).
    #[arg(long, value_delimiter = ',')]
    services: Vec<u32>,
    /// Seconds per measurement (connection rate, then latency) (default 3; 1 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// Peers to run (default all): direct, iptables, nftables, sluice, sluice-socklb.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Where report.md and results.json go.
    #[arg(long, default_value = "target/bench-results/peers")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum Role {
    /// (internal) The echo server, run in the backend pod.
    Serve {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 7200)]
        max_seconds: u64,
    },
    /// (internal) The load generator, run in the client pod; prints JSON.
    Client {
        #[arg(long)]
        target: SocketAddrV4,
        #[arg(long)]
        seconds: f64,
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
}

/// One measurement of one peer.
#[derive(Debug, Clone, Serialize)]
struct Trial {
    services: u32,
    rep: u32,
    peer: Peer,
    /// iptables-restore / nft -f: the command's wall time.
    program_cmd_ms: Option<f64>,
    /// From the command's (or the agent's) start to the measured service
    /// answering the client.
    program_reachable_ms: Option<f64>,
    client: ClientResult,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::Serve { port, max_seconds }) => {
            loadgen::serve(port, max_seconds).map_err(Into::into)
        }
        Some(Role::Client { target, seconds }) => client_main(target, seconds),
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

fn client_main(target: SocketAddrV4, seconds: f64) -> anyhow::Result<()> {
    let result = loadgen::run_client(target, seconds)?;
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
    fn start(pod: &Pod, cpu: Option<usize>) -> anyhow::Result<Server> {
        let exe = std::env::current_exe()?;
        let mut cmd = pinned(pod.netns(), cpu, &exe)?;
        cmd.args(["serve", "--port", &TARGET_PORT.to_string()]);
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
    pod: &Pod,
    cpu: Option<usize>,
    target: SocketAddrV4,
    seconds: f64,
    cgroup: Option<&Path>,
) -> anyhow::Result<ClientResult> {
    let exe = std::env::current_exe()?;
    let mut cmd = pinned(pod.netns(), cpu, &exe)?;
    cmd.args(["client", "--target", &target.to_string(), "--seconds", &seconds.to_string()]);
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
    let timeout = Duration::from_secs_f64(seconds * 2.0 + 30.0);
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

/// The address of service `i`: 10.96.0.10 + i.
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i)
}

/// The (unreached) endpoint of every service but the measured one.
fn dummy_endpoint(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i)
}

/// N services with one endpoint each, the measured one (whose endpoint is
/// the backend pod) last.
fn service_set(n: u32, backend: Ipv4Addr) -> Vec<kube_rules::ServicePort> {
    (0..n)
        .map(|i| {
            let ep = if i + 1 == n { backend } else { dummy_endpoint(i) };
            kube_rules::ServicePort {
                namespace: "bench".to_owned(),
                name: format!("svc-{i:05}"),
                port_name: "http".to_owned(),
                cluster_ip: vip(i),
                port: SERVICE_PORT,
                endpoints: vec![SocketAddrV4::new(ep, TARGET_PORT)],
            }
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

/// The world every peer shares.
struct Bed {
    dir: TestDir,
    node: Node,
    client: Pod,
    backend: Pod,
    client_cpu: Option<usize>,
    sluice: PathBuf,
}

/// Per-N inputs, generated once.
struct Inputs {
    n: u32,
    iptables: PathBuf,
    nft: PathBuf,
    manifests: ManifestDir,
    vip: SocketAddrV4,
}

fn prepare(bed: &Bed, n: u32) -> anyhow::Result<Inputs> {
    let services = service_set(n, bed.backend.ip());
    let cfg = ClusterConfig {
        cluster_cidr: "10.244.0.0/16".to_owned(),
        service_cidr: "10.96.0.0/16".to_owned(),
        node_ip: bed.node.address(),
    };
    let iptables = bed.dir.join(format!("kube-proxy-iptables-{n}.rules"));
    fs::write(&iptables, kube_rules::iptables_restore(&services, &cfg))?;
    let nft = bed.dir.join(format!("kube-proxy-nftables-{n}.nft"));
    fs::write(&nft, kube_rules::nft_ruleset(&services, &cfg))?;
    let manifests = ManifestDir::at(bed.dir.join(format!("manifests-{n}")))?;
    manifests.write_node(&bed.node)?;
    manifests.write_file("services.yaml", &manifests_yaml(&services, &bed.node))?;
    let last = services.last().context("no services")?;
    Ok(Inputs { n, iptables, nft, manifests, vip: SocketAddrV4::new(last.cluster_ip, last.port) })
}

/// Runs one peer once: program, check, measure, tear down.
fn trial(bed: &Bed, inputs: &Inputs, peer: Peer, rep: u32, seconds: f64) -> anyhow::Result<Trial> {
    let node_ns = bed.node.netns();
    let mut program_cmd_ms = None;
    let mut program_reachable_ms = None;
    let client = match peer {
        Peer::Direct => {
            let target = SocketAddrV4::new(bed.backend.ip(), TARGET_PORT);
            run_client(&bed.client, bed.client_cpu, target, seconds, None)?
        }
        Peer::Iptables | Peer::Nftables => {
            let mut cmd = if peer == Peer::Iptables {
                let mut c = node_ns.command("iptables-restore")?;
                c.arg("--noflush").arg(&inputs.iptables);
                c
            } else {
                let mut c = node_ns.command("nft")?;
                c.arg("-f").arg(&inputs.nft);
                c
            };
            let t0 = Instant::now();
            let poller = start_poller(&bed.client, inputs.vip, t0)?;
            run_checked(&mut cmd, PROGRAM_TIMEOUT)?;
            program_cmd_ms = Some(ms(t0.elapsed()));
            program_reachable_ms = Some(ms(join_poller(poller)?));
            let r = run_client(&bed.client, bed.client_cpu, inputs.vip, seconds, None);
            nft_flush(node_ns)?;
            r?
        }
        Peer::Sluice | Peer::SluiceSocklb => {
            let bpffs = BpffsMount::new()?;
            let cgroup = TestCgroup::new("peers")?;
            let mut cfg = AgentConfig::new(
                &bed.sluice,
                &bed.node,
                &inputs.manifests,
                &bpffs,
                Some(&cgroup),
                &bed.dir,
            );
            cfg.rust_log = "warn".to_owned();
            // One node and no egress: no masquerade table (its netfilter
            // hook would be on sluice's path and stay after the agent).
            cfg.extra_args.extend(["--masquerade=false", "--routing", "none"].map(String::from));
            if peer == Peer::Sluice {
                cfg.extra_args.push("--socket-lb=false".to_owned());
            }
            let t0 = Instant::now();
            let poller = start_poller(&bed.client, inputs.vip, t0)?;
            let mut agent = Agent::start(&bed.node, cfg)?;
            let reachable = join_poller(poller);
            if let Some(status) = agent.try_wait()? {
                bail!("agent exited ({status}); log:\n{}", agent.log());
            }
            program_reachable_ms = Some(ms(reachable?));
            if peer == Peer::SluiceSocklb {
                // The client's connect() must meet the agent's hooks: the
                // agent pins the connect4 link once it is attached to its
                // --cgroup-root. (Debian's bpftool 7.1 lists no hooks of a
                // cgroup v2 directory on this kernel, so it cannot tell.)
                let pin = sluice::datapath::PinPaths::new(bpffs.path().join("sluice"))
                    .sock_link(proxy_common::PROG_SOCK_CONNECT4);
                ensure!(
                    pin.exists(),
                    "no connect4 hook on {}: {} missing (links: {:?}); agent log:\n{}",
                    cgroup.path().display(),
                    pin.display(),
                    pin.parent().and_then(|d| fs::read_dir(d).ok()).map(|d| d
                        .filter_map(Result::ok)
                        .map(|e| e.file_name())
                        .collect::<Vec<_>>()),
                    agent.log()
                );
            }
            let socklb = (peer == Peer::SluiceSocklb).then(|| cgroup.path());
            let r = run_client(&bed.client, bed.client_cpu, inputs.vip, seconds, socklb);
            let status = agent.stop()?;
            ensure!(status.success(), "agent exited with {status}; log:\n{}", agent.log());
            // Unpin everything (links detach with their last reference);
            // the pod program's tc filter goes with its qdisc.
            let _ = fs::remove_dir_all(bpffs.path().join("sluice"));
            clear_tc_filters(bed.node.netns())?;
            drop(bpffs);
            drop(cgroup);
            r?
        }
    };
    // Nothing of this peer may stay for the next one.
    if on_path("bpftool") {
        ensure!(tcx_attached(node_ns)? == 0, "tcx programs still attached after {}", peer.name());
    }
    ensure!(nft_ruleset_empty(node_ns)?, "netfilter rules left after {}", peer.name());
    Ok(Trial { services: inputs.n, rep, peer, program_cmd_ms, program_reachable_ms, client })
}

fn orchestrate(cli: &Cli) -> anyhow::Result<()> {
    ensure!(nix::unistd::geteuid().is_root(), "needs root (network namespaces, BPF, netfilter)");
    let reps = cli.reps.unwrap_or(if cli.quick { 1 } else { 5 });
    let seconds = cli.seconds.unwrap_or(if cli.quick { 1.0 } else { 3.0 });
    let sizes = if cli.services.is_empty() {
        if cli.quick { vec![1, 1000] } else { vec![1, 1000, 10_000] }
    } else {
        cli.services.clone()
    };
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
    let dir = TestDir::new("bench-peers")?;
    let node = Node::new("bench-node")?;
    let backend = node.add_pod("backend")?;
    let client = node.add_pod("client")?;
    let _server = Server::start(&backend, server_cpu)?;
    let bed = Bed { dir, node, client, backend, client_cpu, sluice: sluice_bin()? };
    nft_flush(bed.node.netns())?;
    loadgen_check(&bed)?;

    println!(
        "bench peers: N = {sizes:?}, {reps} repetition(s), {seconds} s per measurement, peers: {}",
        peers.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
    );
    let mut trials = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for &n in &sizes {
        let inputs = prepare(&bed, n)?;
        for rep in 0..reps {
            // Interleaved, each repetition starting at the next peer.
            for k in 0..peers.len() {
                let peer = peers[(k + rep as usize) % peers.len()];
                let t = match trial(&bed, &inputs, peer, rep, seconds) {
                    Ok(t) => t,
                    Err(e) => {
                        // Recorded, cleaned up, and the run goes on.
                        let e = format!("{} at N = {n}, repetition {rep}: {e:#}", peer.name());
                        println!("  FAILED: {e}");
                        failures.push(e);
                        clean_after_failure(&bed)?;
                        continue;
                    }
                };
                println!(
                    "  N={n:>6} rep {rep} {:<14} {:>8.0} conn/s  rr p50 {:>6.1} µs p99 {:>6.1} µs{}",
                    peer.name(),
                    t.client.conn_per_s,
                    t.client.rr_p50_us,
                    t.client.rr_p99_us,
                    t.program_reachable_ms
                        .map(|m| format!("  programmed in {m:.1} ms"))
                        .unwrap_or_default()
                );
                trials.push(t);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let machine = machine.finish(started.elapsed());
    fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let settings = report::Settings {
        services: sizes,
        reps,
        seconds,
        peers: peers.iter().map(|p| p.name().to_owned()).collect(),
        quick: cli.quick,
    };
    let json = serde_json::json!({
        "machine": machine, "settings": settings, "trials": trials, "failures": failures,
    });
    let json_path = cli.out.join("results.json");
    fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    let md = report::markdown(&machine, &settings, &trials, &failures);
    let md_path = cli.out.join("report.md");
    fs::write(&md_path, &md)?;
    println!("\n{md}");
    println!("report: {}\nraw data: {}", md_path.display(), json_path.display());
    Ok(())
}

/// After a failed trial: no netfilter rule and no tcx program may stay, or
/// the next peers' figures would be wrong; the run stops if they do.
fn clean_after_failure(bed: &Bed) -> anyhow::Result<()> {
    let ns = bed.node.netns();
    nft_flush(ns)?;
    clear_tc_filters(ns)?;
    ensure!(nft_ruleset_empty(ns)?, "netfilter rules left after a failed trial");
    if on_path("bpftool") {
        ensure!(tcx_attached(ns)? == 0, "tcx programs left after a failed trial");
    }
    Ok(())
}

/// The direct path works before anything is measured.
fn loadgen_check(bed: &Bed) -> anyhow::Result<()> {
    let target = SocketAddrV4::new(bed.backend.ip(), TARGET_PORT);
    let h = start_poller(&bed.client, target, Instant::now())?;
    join_poller(h).context("the backend is not reachable directly")?;
    Ok(())
}
