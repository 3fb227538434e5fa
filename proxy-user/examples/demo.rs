//! A ClusterIP service on a simulated node, end to end.
//!
//! `cargo run --release -p sluice --example demo` (as root; `cargo xtask demo`
//! wraps it). Builds a node network namespace with three backend pods (TCP and
//! UDP echo servers that answer with their name) and a client pod, writes a
//! Service and EndpointSlice to a manifest directory, runs `sluice agent` in
//! the node, and shows which backend answers each request to the ClusterIP,
//! before and after a backend is removed. Finally prints `sluice services`.
//!
//! The `sluice` binary is `$SLUICE_BIN`, or the one next to this example's
//! directory (`target/<profile>/sluice`). Everything the demo creates lives in
//! its own namespaces, directory and bpffs, and is removed on exit, also on
//! Ctrl-C / SIGTERM.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use sluice::testbed::{
    Agent, AgentConfig, Backend, BpffsMount, ClusterIpService, EchoServer, ManifestDir, Node,
    Protocol, ServicePort, TestCgroup, TestDir, sluice_has_agent, sweep_stale, tally, tcp_request,
    udp_request,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TCP_PORT: u16 = 80;
const TCP_TARGET: u16 = 8080;
const UDP_PORT: u16 = 53;
const UDP_TARGET: u16 = 5353;
const IO_TIMEOUT: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(30);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> anyhow::Result<()> {
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("installing {sig} handler"))?;
    }
    Ok(())
}

#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

fn check_interrupt() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("demo: needs root (network namespaces, a bpffs mount, BPF programs)");
        return ExitCode::FAILURE;
    }
    if let Err(e) = install_signal_handlers() {
        eprintln!("demo: {e:#}");
        return ExitCode::FAILURE;
    }
    // `run` owns every guard: whatever way it returns, they are dropped (and
    // everything they created removed) before we exit.
    let result = run();
    match result {
        Ok(()) => {
            println!("\ncleaned up: namespaces, bpffs and directories removed");
            ExitCode::SUCCESS
        }
        // On Ctrl-C the terminal signals the agent too, so a failure seen
        // after the signal (the agent exiting) is part of the interruption.
        Err(e) if e.is::<Interrupted>() || INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("\ndemo: interrupted; cleaned up");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn sluice_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("finding the demo's own path")?;
    // target/<profile>/examples/demo -> target/<profile>/sluice
    let bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|profile| profile.join("sluice"))
        .context("no target directory above the demo executable")?;
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p sluice --bin sluice) or set SLUICE_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

fn echo_service(backends: Vec<Backend>) -> ClusterIpService {
    ClusterIpService::new(
        "echo",
        VIP,
        vec![
            ServicePort::new("tcp", Protocol::Tcp, TCP_PORT, TCP_TARGET),
            ServicePort::new("udp", Protocol::Udp, UDP_PORT, UDP_TARGET),
        ],
        backends,
    )
}

/// Waits for `backends` backends behind VIP:80/TCP, checking for Ctrl-C.
fn wait_backends(agent: &mut Agent, backends: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        check_interrupt()?;
        let step =
            agent.wait_backends(Duration::from_millis(300), VIP, TCP_PORT, Protocol::Tcp, backends);
        match step {
            Ok(_) => return Ok(()),
            Err(e) if agent.try_wait()?.is_some() => return Err(e),
            Err(e) if Instant::now() >= deadline => {
                check_interrupt()?;
                return Err(e.context(format!("agent log:\n{}", agent.log())));
            }
            Err(_) => {}
        }
    }
}

fn tcp_round(client: &sluice::testbed::Pod, n: usize) -> anyhow::Result<()> {
    let vip = SocketAddrV4::new(VIP, TCP_PORT);
    println!("{n} TCP requests to {vip}:");
    let mut answers = Vec::new();
    for i in 1..=n {
        check_interrupt()?;
        match tcp_request(client, vip, IO_TIMEOUT) {
            Ok(name) => {
                println!("  #{i:<2} -> {name}");
                answers.push(name);
            }
            Err(e) => println!("  #{i:<2} -> failed: {e}"),
        }
    }
    let counts = tally(answers);
    let summary: Vec<_> = counts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("  distribution: {}", summary.join(", "));
    Ok(())
}

fn run() -> anyhow::Result<()> {
    let bin = sluice_bin()?;
    if !sluice_has_agent(&bin) {
        bail!("{} has no `agent` command", bin.display());
    }
    sweep_stale();

    // Guards: dropped in reverse order (agent first, directory last).
    let dir = TestDir::new("demo")?;
    let bpffs = BpffsMount::new_in(&dir)?;
    let cgroup = TestCgroup::new("demo")?;
    let node = Node::new("demo-node")?;
    println!("node {:?}: network namespace {}", node.name(), node.netns().name());
    let names = ["backend-a", "backend-b", "backend-c"];
    let mut pods = Vec::new();
    for n in names {
        check_interrupt()?;
        pods.push(node.add_pod(n)?);
    }
    let client = node.add_pod("client")?;
    for p in pods.iter().chain(std::iter::once(&client)) {
        println!("  pod {:<10} {:<12} host veth {}", p.name(), p.ip().to_string(), p.host_if());
    }
    let mut servers = Vec::new();
    for p in &pods {
        servers.push(EchoServer::start(p, p.name(), TCP_TARGET, UDP_TARGET)?);
    }

    let manifests = ManifestDir::new_in(&dir)?;
    manifests.write_node(&node)?;
    let all: Vec<_> = pods.iter().map(|p| Backend::of_pod(p, &node)).collect();
    manifests.write_service(&echo_service(all.clone()))?;
    println!(
        "service default/echo: ClusterIP {VIP}, tcp {TCP_PORT} -> {TCP_TARGET}, udp {UDP_PORT} -> {UDP_TARGET}, 3 endpoints"
    );

    check_interrupt()?;
    let cfg = AgentConfig::new(&bin, &node, &manifests, &bpffs, Some(&cgroup), &dir);
    println!(
        "starting {} {} (log: {})",
        bin.display(),
        cfg.args().iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
        cfg.log.display()
    );
    let mut agent = Agent::start(&node, cfg)?;
    wait_backends(&mut agent, 3)?;
    println!("agent programmed {VIP}:{TCP_PORT} with 3 backends\n");
    // The pod program is attached within about a second of the pods'
    // interfaces being seen.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tcp_request(&client, SocketAddrV4::new(VIP, TCP_PORT), IO_TIMEOUT).is_err()
        && Instant::now() < deadline
    {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(200));
    }

    tcp_round(&client, 12)?;
    let udp_vip = SocketAddrV4::new(VIP, UDP_PORT);
    println!("3 UDP requests to {udp_vip}:");
    for i in 1..=3 {
        check_interrupt()?;
        match udp_request(&client, udp_vip, IO_TIMEOUT) {
            Ok(name) => println!("  #{i} -> {name}"),
            Err(e) => println!("  #{i} -> failed: {e}"),
        }
    }

    println!("\nremoving backend-c from the EndpointSlice");
    manifests.write_service(&echo_service(all[..2].to_vec()))?;
    wait_backends(&mut agent, 2)?;
    println!("agent programmed {VIP}:{TCP_PORT} with 2 backends");
    tcp_round(&client, 12)?;

    println!("\nsluice services --bpffs-root {}:", agent.config().bpffs_root.display());
    print!("{}", agent.services_table()?);

    let hits: Vec<_> = servers
        .iter()
        .map(|s| format!("{}: {} tcp / {} udp", s.name(), s.tcp_hits(), s.udp_hits()))
        .collect();
    println!("\nanswered by the servers: {}", hits.join(", "));
    let status = agent.stop()?;
    println!("agent stopped ({status})");
    Ok(())
}
