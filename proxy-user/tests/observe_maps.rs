//! The metrics collector reads the real pinned maps at scrape time: entries,
//! capacities and drop counters. The object is loaded with its maps pinned
//! on a bpffs of the test's own (testbed's guard, unmounted on drop); nothing is attached to
//! any interface. Needs root; skipped otherwise.

use std::net::Ipv4Addr;

use proxy_common::{DropReason, MAP_BACKENDS, MAP_SERVICES};
use sluice::{
    datapath::{PinPaths, loader::Datapath, maps::PinnedMaps, reconcile::Reconciler},
    manifest::ObjectKey,
    model::{BackendSpec, BackendState, Desired, Frontend, FrontendKey, Protocol},
    observe::{LocalPolicy, Metrics, MetricsConfig, SyncReport},
    pktgen,
};

fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn map_occupancy_and_drops_are_read_at_scrape_time() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: loading BPF maps needs root");
        return;
    }
    let fs = sluice::testbed::BpffsMount::new().expect("mount a bpffs");
    let paths = PinPaths::new(fs.path());
    let _datapath =
        Datapath::load(&paths, &sluice::datapath::MapSizes::small()).expect("load programs");
    let metrics =
        Metrics::new(MetricsConfig { pins: Some(paths.clone()), ..MetricsConfig::default() });

    let services = format!(r#"sluice_map_entries{{map="{MAP_SERVICES}"}}"#);
    let backends = format!(r#"sluice_map_entries{{map="{MAP_BACKENDS}"}}"#);
    let text = metrics.encode().unwrap();
    assert_eq!(value(&text, &services), 0);
    assert!(value(&text, &format!(r#"sluice_map_capacity{{map="{MAP_SERVICES}"}}"#)) > 0);
    let drop_series = format!(r#"sluice_drops_total{{reason="{}"}}"#, DropReason::ALL[0].name());
    assert_eq!(value(&text, &drop_series), 0);

    // One frontend with two backends: master entry + 2 slots, 2 backends.
    let (mut reconciler, _) = Reconciler::restore(PinnedMaps::open(&paths).unwrap()).unwrap();
    let desired = Desired::from([(
        FrontendKey::new(Ipv4Addr::new(10, 96, 0, 10), 80, Protocol::Tcp),
        Frontend {
            service: ObjectKey::new("default", "web"),
            port_name: String::new(),
            backends: [1, 2]
                .map(|i| BackendSpec {
                    addr: Ipv4Addr::new(10, 244, 0, i),
                    port: 8080,
                    state: BackendState::Active,
                    local: false,
                })
                .to_vec(),
            affinity_timeout: None,
            policy: Default::default(),
            source_ranges: Vec::new(),
        },
    )]);
    assert!(reconciler.sync(&desired).errors.is_empty());
    metrics.record_sync(&SyncReport {
        duration: std::time::Duration::from_millis(1),
        desired: &desired,
        changed: None,
        services: 1,
        backends: desired.values().map(|f| f.backends.len()).sum(),
        failed_frontends: 0,
        manifest_errors: 0,
        model_warnings: 0,
        triggers: &Default::default(),
        local: &LocalPolicy::default(),
    });
    // One SYN from a pod to the frontend through the pod program.
    let prog = aya::programs::SchedClassifier::from_pin(paths.prog(proxy_common::PROG_POD_INGRESS))
        .expect("pinned program");
    let (client, vip) = (Ipv4Addr::new(10, 244, 0, 9), Ipv4Addr::new(10, 96, 0, 10));
    let frame = pktgen::frame(
        &pktgen::Ipv4Spec::new(client, vip, pktgen::TCP),
        &pktgen::tcp(client, 40000, vip, 80, 0x02, b"hello"),
    );
    let mut out = vec![0u8; frame.len() + 256];
    let opts = aya::programs::TestRunOptions {
        data_in: Some(&frame),
        data_out: Some(&mut out),
        ..aya::programs::TestRunOptions::default()
    };
    aya::programs::TestRun::test_run(&prog, opts).expect("BPF_PROG_TEST_RUN");
    let text = metrics.encode().unwrap();
    // Per-frontend kernel counters, named after the Service of the last sync.
    let labels = r#"namespace="default",name="web",frontend="10.96.0.10:80/TCP""#;
    assert_eq!(value(&text, &format!("sluice_service_new_flows_total{{{labels}}}")), 1);
    assert_eq!(
        value(&text, &format!(r#"sluice_service_packets_total{{{labels},direction="forward"}}"#)),
        1
    );
    assert_eq!(
        value(&text, &format!(r#"sluice_service_packets_total{{{labels},direction="reply"}}"#)),
        0
    );
    assert_eq!(value(&text, &services), 3, "scraped again, not cached");
    assert_eq!(value(&text, &backends), 2);
}
