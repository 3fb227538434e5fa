//! Control-plane benchmark: the real agent binary fed by the test API server
//! (through a kubeconfig, in a network namespace of its own).
//!
//! - cold start: N Services x E endpoints exist; time from the agent's start
//!   to the last frontend programmed (goals: 10k x 2 <= 1 s, 100k x 1 <= 5 s);
//! - one change at N existing: an EndpointSlice is updated; time from the
//!   update to the new backend in the maps, p50 and p99 over 50 changes
//!   (goal: p99 <= 10 ms);
//! - the agent's peak RSS (VmHWM) (goal at 10k Services / 50k endpoints
//!   <= 64 MiB).
//!
//! `cargo xtask bench control` (as root); `--quick` runs 1k x 2 only; `--case NxE`
//! (repeatable) runs the given sizes, e.g. `-- --case 10000x2`.
//! The `sluice` binary is `$SLUICE_BIN` or the one next to this example's
//! directory. Writes a table and `results/bench-control.json`.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use proxy_common::{Backend, ServiceKey, ServiceValue};
use serde_json::json;
use sluice::{
    datapath::{PinPaths, maps::open_pinned},
    testbed::{Agent, AgentConfig, BpffsMount, Node, TestDir, apiserver::ApiServer},
};

type Services = aya::maps::HashMap<aya::maps::MapData, ServiceKey, ServiceValue>;
type Backends = aya::maps::HashMap<aya::maps::MapData, u32, Backend>;

fn sluice_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SLUICE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let bin =
        exe.parent().and_then(|e| e.parent()).map(|p| p.join("sluice")).context("no target dir")?;
    anyhow::ensure!(bin.exists(), "{} not found: build it first", bin.display());
    Ok(bin)
}

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i)
}

fn endpoint(i: u32, e: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 8 + e)
}

fn service(i: u32) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("s{i}"), "namespace": "bench"},
        "spec": {"clusterIP": vip(i).to_string(), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

fn slice(i: u32, endpoints: &[Ipv4Addr]) -> serde_json::Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("s{i}-a"), "namespace": "bench",
            "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}})).collect::<Vec<_>>()})
}

/// The backend addresses in the slots of frontend `i`, if it is programmed.
fn programmed(services: &Services, backends: &Backends, i: u32) -> Option<Vec<Ipv4Addr>> {
    let master = services.get(&ServiceKey::new(vip(i), 80, 6, 0), 0).ok()?;
    (1..=master.count)
        .map(|slot| {
            let s = services.get(&ServiceKey::new(vip(i), 80, 6, slot), 0).ok()?;
            backends.get(&s.backend_id, 0).ok().map(|b| b.addr())
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn peak_rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

/// A `/proc/PID/status` size field (`VmHWM:`, `VmRSS:`) in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn run(n: u32, per: u32) -> anyhow::Result<serde_json::Value> {
    let dir = TestDir::new("bench-control")?;
    let bpffs = BpffsMount::new_in(&dir)?;
    let node = Node::new("bench-node")?;
    let server = ApiServer::start_in(&node)?;
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    for i in 0..n {
        server.create(&service(i))?;
        let eps: Vec<Ipv4Addr> = (0..per).map(|e| endpoint(i, e)).collect();
        server.create(&slice(i, &eps))?;
    }
    let mut cfg =
        AgentConfig::with_kubeconfig(sluice_bin()?, &node, &kubeconfig, &bpffs, None, &dir);
    cfg.extra_args.extend(["--socket-lb=false", "--pod-devices", "nomatch"].map(String::from));
    // SLUICE_BENCH_LOG=info shows the agent's sync lines (timings) after the run.
    let log_level = std::env::var("SLUICE_BENCH_LOG").ok();
    cfg.rust_log = log_level.clone().unwrap_or_else(|| "warn".into());
    let started = Instant::now();
    let mut agent = Agent::start(&node, cfg.clone())?;
    let paths = PinPaths::new(&cfg.bpffs_root);
    // Wait for the pins, then for the last frontend (written last).
    let (services, backends) = loop {
        if let (Ok(s), Ok(b)) = (
            open_pinned::<Services>(&paths, proxy_common::MAP_SERVICES),
            open_pinned::<Backends>(&paths, proxy_common::MAP_BACKENDS),
        ) {
            break (s, b);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no pins; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    while programmed(&services, &backends, n - 1).is_none_or(|b| b.len() != per as usize)
        || programmed(&services, &backends, 0).is_none()
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "not programmed; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let cold = started.elapsed().as_secs_f64();

    // One change at a time, at N existing, each an isolated change (spaced
    // beyond the agent's 100 ms burst coalescing, which a back-to-back
    // series would measure instead).
    let mut latencies = Vec::new();
    for k in 0..50u32 {
        std::thread::sleep(Duration::from_millis(120));
        let i = (k * 7919) % n;
        let mut eps: Vec<Ipv4Addr> = (0..per).map(|e| endpoint(i, e)).collect();
        let fresh = Ipv4Addr::new(10, 200, (k / 256) as u8, (k % 256) as u8);
        eps[0] = fresh;
        let t = Instant::now();
        server.apply(&slice(i, &eps))?;
        while !programmed(&services, &backends, i).is_some_and(|b| b.contains(&fresh)) {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(10),
                "change not applied; log:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let rss = agent.pid().map_or(f64::NAN, peak_rss_mib);
    let rss_now = agent.pid().map_or(f64::NAN, |p| status_mib(p, "VmRSS:"));
    if log_level.is_some() {
        eprintln!("{}", agent.log());
    }
    agent.stop()?;
    Ok(json!({
        "services": n, "endpoints_per_service": per, "cold_start_s": cold,
        "change_p50_ms": percentile(&latencies, 0.5), "change_p99_ms": percentile(&latencies, 0.99),
        "peak_rss_mib": rss, "rss_after_mib": rss_now,
    }))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--case NxE` (repeatable): only these sizes, e.g. `--case 10000x2`.
    let chosen: Vec<(u32, u32)> = args
        .windows(2)
        .filter(|w| w[0] == "--case")
        .map(|w| {
            let (n, e) = w[1].split_once('x').context("--case NxE")?;
            Ok((n.parse()?, e.parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    let cases: &[(u32, u32)] = if !chosen.is_empty() {
        &chosen
    } else if quick {
        &[(1_000, 2)]
    } else {
        &[(1_000, 2), (10_000, 2), (10_000, 5), (100_000, 1)]
    };
    println!(
        "control plane: agent fed by the test API server (goals: 10k x 2 cold <= 1 s, 100k x 1 <= 5 s, change p99 <= 10 ms, RSS at 10k/50k <= 64 MiB)"
    );
    println!(
        "{:>9} {:>6} {:>12} {:>14} {:>14} {:>13} {:>12}",
        "services",
        "eps",
        "cold start s",
        "change p50 ms",
        "change p99 ms",
        "peak RSS MiB",
        "RSS after"
    );
    let mut rows = Vec::new();
    for &(n, per) in cases {
        let r = run(n, per)?;
        println!(
            "{:>9} {:>6} {:>12.3} {:>14.2} {:>14.2} {:>13.1} {:>12.1}",
            n,
            per,
            r["cold_start_s"].as_f64().unwrap_or(f64::NAN),
            r["change_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["change_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            r["rss_after_mib"].as_f64().unwrap_or(f64::NAN)
        );
        rows.push(r);
    }
    let out = PathBuf::from(std::env::var("SLUICE_RESULTS").unwrap_or_else(|_| "results".into()));
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("bench-control.json"),
        serde_json::to_string_pretty(&json!({"rows": rows}))?,
    )?;
    println!("raw data: {}", out.join("bench-control.json").display());
    Ok(())
}
