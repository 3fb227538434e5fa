//! Benchmark: ADD and DEL latency (p50/p99) of `sluice-cni` against the
//! reference `ptp`+`host-local` and `bridge`+`host-local` (from
//! /usr/lib/cni), interleaved in one run, plus the kernel's own deletion
//! time of a bare veth pair and of a pod-like one (peer in a pod namespace,
//! pod program attached as sluice-cni attaches it) as DEL's floors, and
//! the time to start and wait for `/bin/cat` the same way (the floor of
//! any plugin process in this harness). Needs
//! root; everything happens in namespaces it creates.
//!
//! ```text
//! cargo build --release -p sluice-cni --examples
//! sudo target/release/examples/bench [--pods N] [--plugin-bin PATH]
//!     [--baseline-bin PATH] [--steps]
//! ```
//! Default 500 pods per plugin; `--plugin-bin` defaults to `sluice-cni`
//! next to this example's directory (`target/<profile>/sluice-cni`).
//! `--baseline-bin`: another sluice-cni build (e.g. main's) as one more
//! plugin in the same interleaved run. `--steps`: ADD's and DEL's steps
//! (the plugin's `SLUICE_CNI_TIMING` output), p50 of each step's share.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::datapath::PinPaths;
use sluice::datapath::loader::Datapath;
use sluice::testbed::{BpffsMount, Netns, TestDir, require_root, sweep_stale};

const REF_DIR: &str = "/usr/lib/cni";

fn main() -> anyhow::Result<()> {
    if !require_root() {
        std::process::exit(1);
    }
    let mut pods = 500usize;
    let mut plugin_bin: Option<PathBuf> = None;
    let mut baseline_bin: Option<PathBuf> = None;
    let mut steps = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pods" => pods = args.next().unwrap_or_default().parse()?,
            "--plugin-bin" => plugin_bin = args.next().map(PathBuf::from),
            "--baseline-bin" => baseline_bin = args.next().map(PathBuf::from),
            "--steps" => steps = true,
            other => anyhow::bail!(
                "unknown argument {other:?} (--pods N, --plugin-bin PATH, --baseline-bin PATH, --steps)"
            ),
        }
    }
    let exe = std::env::current_exe()?;
    let plugin_bin = plugin_bin.unwrap_or_else(|| {
        exe.parent().and_then(Path::parent).map(|d| d.join("sluice-cni")).unwrap_or_default()
    });
    anyhow::ensure!(
        plugin_bin.exists(),
        "{} missing: cargo build -p sluice-cni",
        plugin_bin.display()
    );
    for p in ["ptp", "bridge", "host-local"] {
        anyhow::ensure!(
            Path::new(REF_DIR).join(p).exists(),
            "{REF_DIR}/{p} missing: apt-get install containernetworking-plugins"
        );
    }
    sweep_stale();

    let dir = TestDir::new("cni-bench")?;
    let bpffs = BpffsMount::new_in(&dir)?;
    let root = bpffs.path().join("sluice");
    drop(Datapath::load(&PinPaths::new(&root), &sluice::datapath::MapSizes::small())?);
    let node = Netns::new("bench-node")?;
    // sluice's tmpfs-free dataDir and host-local's live in the test directory.
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    std::fs::copy(&plugin_bin, bin_dir.join("sluice-cni"))?;
    if let Some(b) = &baseline_bin {
        std::fs::copy(b, bin_dir.join("sluice-cni-baseline"))?;
    }
    for p in ["ptp", "bridge", "host-local"] {
        std::os::unix::fs::symlink(Path::new(REF_DIR).join(p), bin_dir.join(p))?;
    }
    let host_local = |subnet: &str| json!({"type": "host-local", "subnet": subnet, "dataDir": dir.join("host-local")});
    let mut plugins: Vec<(&str, Value)> = vec![
        (
            "sluice-cni",
            json!({"cniVersion": "1.0.0", "name": "bench-sluice", "type": "sluice-cni",
                "podCIDR": "10.244.0.0/16", "bpffsRoot": root, "dataDir": dir.join("sluice-data"),
                "mtu": 1500}),
        ),
        (
            "ptp+host-local",
            json!({"cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp",
                "ipam": host_local("10.245.0.0/16")}),
        ),
        (
            "bridge+host-local",
            json!({"cniVersion": "1.0.0", "name": "bench-bridge", "type": "bridge",
                "bridge": "benchbr0", "isGateway": true, "ipam": host_local("10.246.0.0/16")}),
        ),
    ];
    if baseline_bin.is_some() {
        // Its own network name and dataDir; the same agent pins.
        plugins.push((
            "sluice-cni baseline",
            json!({"cniVersion": "1.0.0", "name": "bench-base", "type": "sluice-cni-baseline",
                "podCIDR": "10.247.0.0/16", "bpffsRoot": root, "dataDir": dir.join("base-data"),
                "mtu": 1500}),
        ));
    }
    // (step, samples) in the order the steps first appear.
    let mut step_times: Vec<(String, Vec<f64>)> = Vec::new();
    let push_step = |steps: &mut Vec<(String, Vec<f64>)>, step: String, v: f64| match steps
        .iter_mut()
        .find(|(s, _)| *s == step)
    {
        Some((_, samples)) => samples.push(v),
        None => steps.push((step, vec![v])),
    };

    eprintln!("creating {} pod namespaces ...", pods * plugins.len());
    let netns: Vec<Vec<Netns>> = (0..plugins.len())
        .map(|p| (0..pods).map(|i| Netns::new(&format!("b{p}-{i}"))).collect())
        .collect::<anyhow::Result<_>>()?;

    let mut add: Vec<Vec<Duration>> = vec![Vec::new(); plugins.len()];
    let mut del: Vec<Vec<Duration>> = vec![Vec::new(); plugins.len()];
    let mut veth_del: Vec<Duration> = Vec::new();
    let mut veth_tcx_del: Vec<Duration> = Vec::new();
    // A process that only copies stdin to stdout, started and waited for as the plugins
    // are: the floor of any plugin's ADD or DEL in this harness.
    let mut noop: Vec<Duration> = Vec::new();
    let mut run = |p: usize, verb: &str, i: usize| -> anyhow::Result<Duration> {
        let (name, conf) = &plugins[p];
        let bin = bin_dir.join(conf["type"].as_str().unwrap_or_default());
        let path = netns[p][i].path();
        let mut cmd = node.command(&bin)?;
        cmd.env_clear()
            .env("CNI_COMMAND", verb)
            // Per plugin: the host veth's name derives from it.
            .env("CNI_CONTAINERID", format!("{}-{i}", conf["name"].as_str().unwrap_or_default()))
            .env("CNI_NETNS", &path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let input = conf.to_string();
        if steps && p == 0 {
            cmd.env("SLUICE_CNI_TIMING", sluice_cni::timing::monotonic_ns().to_string());
        }
        let (took, out) = time_spawn(&mut cmd, &input)?;
        anyhow::ensure!(
            out.status.success(),
            "{name} {verb} pod {i}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if steps && p == 0 {
            // "sluice-cni: STEP at X ms", cumulative from the spawn: each
            // step's share; "exit" is from the last mark to the wait's end.
            let mut last = 0.0;
            for line in String::from_utf8_lossy(&out.stderr).lines() {
                let Some((step, at)) = line
                    .strip_prefix("sluice-cni: ")
                    .and_then(|l| l.split_once(" at "))
                    .and_then(|(s, t)| Some((s, t.strip_suffix(" ms")?.parse::<f64>().ok()?)))
                else {
                    continue;
                };
                let share = at - last;
                last = at;
                push_step(&mut step_times, format!("{verb} {step}"), share);
            }
            let total = took.as_secs_f64() * 1000.0;
            push_step(&mut step_times, format!("{verb} exit"), total - last);
            push_step(&mut step_times, format!("{verb} total (spawn to exit)"), total);
        }
        Ok(took)
    };

    eprintln!("ADD x {pods} per plugin, interleaved ...");
    for i in 0..pods {
        for k in 0..plugins.len() {
            let p = (i + k) % plugins.len();
            add[p].push(run(p, "ADD", i)?);
        }
    }
    eprintln!("DEL x {pods} per plugin, interleaved with bare veth deletions ...");
    let pins = sluice_cni::datapath::Pins::new(&root);
    for (i, pod_ns) in netns[0].iter().enumerate() {
        let veth = format!("bv{i}");
        node.ip(&["link", "add", &veth, "type", "veth", "peer", "name", &format!("bp{i}")])?;
        // A second one with the pod program attached, as every pod's has
        // (before it is up, as sluice-cni does). Its peer in a pod
        // namespace, both ends up, like a pod's pair.
        let tcx = format!("bt{i}");
        let peer_ns = pod_ns.name();
        node.ip(&["link", "add", &tcx, "type", "veth", "peer", "name", "bq0", "netns", peer_ns])?;
        let (p2, t2) = (pins.clone(), tcx.clone());
        node.exec(Duration::from_secs(10), move || p2.attach(&t2))??;
        node.ip(&["link", "set", &tcx, "up"])?;
        pod_ns.ip(&["link", "set", "bq0", "up"])?;
        for k in 0..plugins.len() + 3 {
            let p = (i + k) % (plugins.len() + 3);
            if p == plugins.len() + 2 {
                let mut cmd = node.command("/bin/cat")?;
                cmd.env_clear()
                    .env("CNI_COMMAND", "DEL")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                noop.push(time_spawn(&mut cmd, &plugins[0].1.to_string())?.0);
            } else if p == plugins.len() {
                // The kernel's own veth deletion: one netlink request from
                // inside this process (no process spawn).
                veth_del.push(kernel_veth_del(&node, &veth)?);
            } else if p == plugins.len() + 1 {
                veth_tcx_del.push(kernel_veth_del(&node, &tcx)?);
            } else {
                del[p].push(run(p, "DEL", i)?);
            }
        }
    }

    let pct = |v: &mut Vec<Duration>, q: f64| -> f64 {
        v.sort();
        let idx = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[idx].as_secs_f64() * 1000.0
    };
    println!("{pods} pods per plugin; milliseconds, spawn to exit");
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9}",
        "plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99"
    );
    let mut rows = Vec::new();
    for (p, (name, _)) in plugins.iter().enumerate() {
        let row = (
            pct(&mut add[p], 0.5),
            pct(&mut add[p], 0.99),
            pct(&mut del[p], 0.5),
            pct(&mut del[p], 0.99),
        );
        println!("{name:<20} {:>9.2} {:>9.2} {:>9.2} {:>9.2}", row.0, row.1, row.2, row.3);
        rows.push(row);
    }
    let (v50, v99) = (pct(&mut veth_del, 0.5), pct(&mut veth_del, 0.99));
    println!("{:<20} {:>9} {:>9} {v50:>9.2} {v99:>9.2}", "veth del (kernel)", "-", "-");
    let (t50, t99) = (pct(&mut veth_tcx_del, 0.5), pct(&mut veth_tcx_del, 0.99));
    println!("{:<20} {:>9} {:>9} {t50:>9.2} {t99:>9.2}", "pod veth+tc (kernel)", "-", "-");
    let (n50, n99) = (pct(&mut noop, 0.5), pct(&mut noop, 0.99));
    println!("{:<20} {:>9} {:>9} {n50:>9.2} {n99:>9.2}", "/bin/cat (process)", "-", "-");
    let ok_add = rows[0].0 <= rows[1].0 / 2.0;
    println!(
        "goal ADD p50 <= ptp/2: {} ({:.2} vs {:.2})",
        if ok_add { "met" } else { "MISSED" },
        rows[0].0,
        rows[1].0 / 2.0
    );
    for (what, floor) in [("veth del", v50), ("pod veth+tc del", t50)] {
        println!(
            "goal DEL p50 <= {what} + 2 ms: {} ({:.2} vs {:.2})",
            if rows[0].2 <= floor + 2.0 { "met" } else { "MISSED" },
            rows[0].2,
            floor + 2.0
        );
    }
    println!(
        "floor of a plugin process: pod veth+tc del + /bin/cat = {:.2} (sluice-cni DEL p50 {:.2})",
        t50 + n50,
        rows[0].2
    );
    if steps {
        println!("sluice-cni steps (SLUICE_CNI_TIMING), ms p50 / p99 of each step's share:");
        for (step, v) in &mut step_times {
            v.sort_by(f64::total_cmp);
            let q = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
            println!("  {step:<32} {:>7.2} / {:>7.2}", q(0.5), q(0.99));
        }
    }
    // What each plugin left behind after its DELs (nothing, if none leaks):
    // interfaces in the pod namespaces, /32 routes to its subnet in the
    // node, IPAM allocations, and (sluice) endpoint-map entries.
    println!("leaks after {pods} ADD + DEL per plugin (expected 0 everywhere):");
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10}",
        "plugin", "pod links", "routes", "ipam", "endpoints"
    );
    let node_routes = node.ip(&["-4", "route", "show", "table", "all"])?;
    let endpoints = sluice_cni::datapath::Pins::new(&root).endpoint_addrs()?;
    let mut leaked = 0usize;
    for (p, (name, conf)) in plugins.iter().enumerate() {
        let mut pod_links = 0;
        for pod_ns in &netns[p] {
            let links = pod_ns.ip(&["-o", "link", "show"])?;
            pod_links += links.lines().filter(|l| !l.contains(" lo:")).count();
        }
        let cidr = conf["podCIDR"].as_str().or(conf["ipam"]["subnet"].as_str()).unwrap_or_default();
        let subnet = sluice_cni::config::Cidr::parse(cidr).map_err(anyhow::Error::msg)?;
        let routes = node_routes
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse::<std::net::Ipv4Addr>().ok())
            .filter(|a| subnet.contains(*a))
            .count();
        let network = conf["name"].as_str().unwrap_or_default();
        let (ipam, eps) = if conf["ipam"].is_null() {
            let data_dir = PathBuf::from(conf["dataDir"].as_str().unwrap_or_default());
            let store = sluice_cni::store::Store::open_existing(&data_dir, network)?;
            let held = store.map_or(0, |s| s.state.attachments.len());
            (held, endpoints.iter().filter(|a| subnet.contains(**a)).count())
        } else {
            // host-local: one file per address, besides its lock and cursor.
            let files = std::fs::read_dir(dir.join("host-local").join(network))?;
            let held = files
                .filter_map(Result::ok)
                .filter(|f| {
                    f.file_name().to_str().is_some_and(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                })
                .count();
            (held, 0)
        };
        leaked += pod_links + routes + ipam + eps;
        println!("{name:<20} {pod_links:>10} {routes:>10} {ipam:>10} {eps:>10}");
    }
    println!("leaks: {}", if leaked == 0 { "none".to_owned() } else { format!("{leaked} LEAKED") });
    // Dropping the namespaces and the node removes everything.
    drop(netns);
    Ok(())
}

/// Spawns `cmd` (stdin, stdout and stderr piped), writes `input` to its
/// stdin and waits for it: the time from spawn to exit, and its output.
fn time_spawn(
    cmd: &mut std::process::Command,
    input: &str,
) -> anyhow::Result<(Duration, std::process::Output)> {
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((start.elapsed(), out))
}

/// Deletes `name` in `node` with one netlink request; the time it took.
fn kernel_veth_del(node: &Netns, name: &str) -> anyhow::Result<Duration> {
    let ns = std::fs::File::open(node.path())?;
    let (name, path) = (name.to_owned(), node.path().display().to_string());
    let took = sluice_cni::netlink::run(move || async move {
        let h = sluice_cni::netlink::connect_in(&ns, &path)?;
        let link = sluice_cni::netlink::link_by_name(&h, &name)
            .await?
            .ok_or_else(|| sluice_cni::Error::Internal(format!("{name} not found")))?;
        let start = Instant::now();
        h.link()
            .del(link.index)
            .execute()
            .await
            .map_err(|e| sluice_cni::Error::Internal(e.to_string()))?;
        Ok(start.elapsed())
    })?;
    Ok(took)
}
