//! Per-packet cost of the pod program, through BPF_PROG_TEST_RUN, against
//! the number of programmed services (1, 1k, 10k, 100k; one backend each).
//! `cargo xtask bench datapath` runs it (as root); `--quick` stops at 1k.
//!
//! For each size: the median kernel-measured time of a *first* packet (a
//! new flow: service lookup, backend pick, two conntrack inserts, DNAT) over
//! distinct flows, and the average time of an *established* packet (the
//! same flow repeated: conntrack hit, DNAT), plus a non-service packet (the
//! cost every other packet pays). The measured service is the last one
//! programmed. Writes a table to stdout and JSON to `results/`.

use std::{net::Ipv4Addr, path::PathBuf, time::Instant};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use proxy_common::PROG_POD_INGRESS;
use sluice::{
    datapath::{MapSizes, PinPaths, loader::Datapath, maps::PinnedMaps, reconcile::Reconciler},
    manifest::ObjectKey,
    model::{BackendSpec, BackendState, Desired, Frontend, FrontendKey, Protocol},
    pktgen::{self, Ipv4Spec, TCP},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i)
}

fn frame(dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    pktgen::frame(
        &Ipv4Spec::new(CLIENT, dst, TCP),
        &pktgen::tcp(CLIENT, sport, dst, 80, 0x10, b"x"),
    )
}

fn run(prog: &SchedClassifier, data: &[u8], repeat: u32) -> u64 {
    let mut out = vec![0u8; data.len() + 64];
    let opts = TestRunOptions {
        data_in: Some(data),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    };
    let res = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    res.duration.as_nanos() as u64
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

struct Row {
    services: u32,
    program_ms: f64,
    first_ns: u64,
    established_ns: u64,
    other_ns: u64,
}

fn measure(services: u32) -> Row {
    let dir = std::env::temp_dir().join(format!("sluice-bench-{}-{services}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    nix::mount::mount(Some("bpf"), &dir, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .expect("mount bpffs (needs root)");
    let paths = PinPaths::new(&dir);
    let sizes = MapSizes {
        services: 2 * services + 1024,
        backends: services + 1024,
        frontends: services + 1024,
        conntrack: 65_536,
        affinity: 1024,
        source_ranges: 1024,
    };
    let row = {
        let _dp = Datapath::load(&paths, &sizes).expect("load");
        let (mut rec, _) = Reconciler::restore(PinnedMaps::open(&paths).unwrap()).unwrap();
        let desired: Desired = (0..services)
            .map(|i| {
                (
                    FrontendKey::new(vip(i), 80, Protocol::Tcp),
                    Frontend {
                        service: ObjectKey::new("bench", format!("s{i}")),
                        port_name: String::new(),
                        backends: vec![BackendSpec {
                            addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 128, 0)) + i),
                            port: 8080,
                            state: BackendState::Active,
                            local: false,
                        }],
                        affinity_timeout: None,
                        policy: Default::default(),
                        source_ranges: Vec::new(),
                    },
                )
            })
            .collect();
        let start = Instant::now();
        let out = rec.sync(&desired);
        assert!(out.errors.is_empty(), "{:?}", out.errors.first());
        let program_ms = start.elapsed().as_secs_f64() * 1000.0;
        let prog = SchedClassifier::from_pin(paths.prog(PROG_POD_INGRESS)).unwrap();
        let target = vip(services - 1);
        let first_ns =
            median((0..2000u16).map(|i| run(&prog, &frame(target, 10_000 + i), 1)).collect());
        let est = frame(target, 10_000);
        let established_ns = median((0..20).map(|_| run(&prog, &est, 10_000)).collect());
        let other = frame(Ipv4Addr::new(10, 244, 1, 1), 10_000);
        let other_ns = median((0..20).map(|_| run(&prog, &other, 10_000)).collect());
        Row { services, program_ms, first_ns, established_ns, other_ns }
    };
    let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&dir);
    row
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[u32] = if quick { &[1, 1_000] } else { &[1, 1_000, 10_000, 100_000] };
    println!("per-packet cost of sl_pod_ingress (BPF_PROG_TEST_RUN, kernel-measured)");
    println!(
        "{:>9} {:>12} {:>14} {:>16} {:>14}",
        "services", "program ms", "first pkt ns", "established ns", "other pkt ns"
    );
    let mut rows = Vec::new();
    for &n in sizes {
        let r = measure(n);
        println!(
            "{:>9} {:>12.1} {:>14} {:>16} {:>14}",
            r.services, r.program_ms, r.first_ns, r.established_ns, r.other_ns
        );
        rows.push(serde_json::json!({
            "services": r.services, "program_ms": r.program_ms, "first_packet_ns": r.first_ns,
            "established_packet_ns": r.established_ns, "non_service_packet_ns": r.other_ns,
        }));
    }
    let dir = PathBuf::from(std::env::var("SLUICE_RESULTS").unwrap_or_else(|_| "results".into()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bench-datapath.json");
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&serde_json::json!({ "rows": rows })).unwrap(),
    )
    .unwrap();
    println!("raw data: {}", file.display());
}
