//! Packet-level tests of the external program (NodePort, externalIPs and
//! LoadBalancer IPs on `--devices`) through BPF_PROG_TEST_RUN: the real
//! object, maps programmed by the real reconciler and node-address writer,
//! frames with valid checksums in, rewrites checked and checksums
//! recomputed on what comes out. Nothing is attached anywhere. Needs root.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use aya::{
    maps::{HashMap, MapData},
    programs::SchedClassifier,
};
use proxy_common::{
    DropReason, EndpointInfo, MAP_ENDPOINTS, PROG_EXT_INGRESS, PROG_POD_INGRESS, SNAT_PORT_MIN,
};
use sluice::{
    datapath::{
        MapSizes, PinPaths,
        loader::Datapath,
        maps::{PinnedMaps, open_pinned},
        node::{NodeAddrs, NodeMaps},
        reconcile::Reconciler,
    },
    manifest::ObjectKey,
    model::{
        BackendSpec, BackendState, Desired, Frontend, FrontendKey, FrontendPolicy, NODEPORT_ADDR,
        Protocol, Scope,
    },
    pktgen::{self, ICMP, Ipv4Spec, SCTP, TCP, UDP},
    testbed::{BpffsMount, drop_count, prog_test_run},
};

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
const LOCAL_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
/// A client outside the source range `198.18.1.0/28` that `CLIENT` is in.
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
/// A pod of this node acting as a client.
const CLIENT_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 12);

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipping: BPF_PROG_TEST_RUN tests need root");
        false
    }
}

struct Harness {
    ext: SchedClassifier,
    pod: SchedClassifier,
    reconciler: Reconciler<PinnedMaps>,
    paths: PinPaths,
    _datapath: Datapath,
    _fs: BpffsMount,
}

impl Harness {
    /// Node address `NODE` serves NodePorts and is the SNAT address;
    /// `LOCAL_POD` is a pod of this node, `REMOTE_POD` is not.
    fn new() -> Self {
        let fs = BpffsMount::new().expect("mount a bpffs");
        let paths = PinPaths::new(fs.path());
        let datapath = Datapath::load(&paths, &MapSizes::small()).expect("load programs");
        let ext = SchedClassifier::from_pin(paths.prog(PROG_EXT_INGRESS)).expect("ext program");
        let pod = SchedClassifier::from_pin(paths.prog(PROG_POD_INGRESS)).expect("pod program");
        let (reconciler, _) = Reconciler::restore(PinnedMaps::open(&paths).unwrap()).unwrap();
        let mut node = NodeMaps::open(&paths).unwrap();
        node.sync(&NodeAddrs { nodeport: [NODE].into(), snat: Some(NODE) }).unwrap();
        let mut endpoints: HashMap<MapData, u32, EndpointInfo> =
            open_pinned(&paths, MAP_ENDPOINTS).unwrap();
        let info =
            EndpointInfo { ifindex: 1, flags: 0, mac: [0; 6], node_mac: [0; 6], _pad: [0; 4] };
        endpoints.insert(proxy_common::addr_to_map(LOCAL_POD), info, 0).unwrap();
        Self { ext, pod, reconciler, paths, _datapath: datapath, _fs: fs }
    }

    /// A NodePort 30080 and an externalIP port 80, both to `backends` (8080).
    fn program(&mut self, backends: &[Ipv4Addr], local: bool) {
        self.program_ranges(backends, local, &[]);
    }

    /// As `program`, with `ranges` as the loadBalancerSourceRanges of the
    /// TCP NodePort 30080 and of `EXTERNAL_IP` port 80 (standing for the
    /// service's LoadBalancer IP); the UDP NodePort 30053 has none.
    fn program_ranges(&mut self, backends: &[Ipv4Addr], local: bool, ranges: &[&str]) {
        let ranges: Vec<Ipv4Network> = ranges.iter().map(|r| r.parse().unwrap()).collect();
        let frontend = |policy, source_ranges: &Vec<Ipv4Network>| Frontend {
            source_ranges: source_ranges.clone(),
            ..web_frontend(backends, policy)
        };
        let policy =
            FrontendPolicy { external: true, local, drop_when_empty: local, two_scopes: false };
        let none = Vec::new();
        let desired: Desired = [
            (FrontendKey::new(NODEPORT_ADDR, 30080, Protocol::Tcp), &ranges),
            (FrontendKey::new(NODEPORT_ADDR, 30053, Protocol::Udp), &none),
            (FrontendKey::new(EXTERNAL_IP, 80, Protocol::Tcp), &ranges),
            // SCTP: a NodePort and a ClusterIP (translation not supported).
            (FrontendKey::new(NODEPORT_ADDR, 30132, Protocol::Sctp), &none),
        ]
        .into_iter()
        .map(|(k, r)| (k, frontend(policy, r)))
        .chain([(
            FrontendKey::new(CLUSTER_IP, 9000, Protocol::Sctp),
            frontend(FrontendPolicy::default(), &none),
        )])
        .collect();
        let out = self.reconciler.sync(&desired);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
    }

    fn run(prog: &SchedClassifier, frame: &[u8]) -> (u32, Vec<u8>) {
        prog_test_run(prog, frame).unwrap()
    }

    fn ext(&self, frame: &[u8]) -> (u32, pktgen::Parsed) {
        let (verdict, out) = Self::run(&self.ext, frame);
        (verdict, pktgen::parse(&out))
    }

    fn pod(&self, frame: &[u8]) -> (u32, pktgen::Parsed) {
        let (verdict, out) = Self::run(&self.pod, frame);
        (verdict, pktgen::parse(&out))
    }

    fn drops(&self, reason: DropReason) -> u64 {
        drop_count(&self.paths, reason).unwrap()
    }
}

/// Service default/web port http to `backends` on port 8080 (`LOCAL_POD`
/// marked local), without source ranges.
fn web_frontend(backends: &[Ipv4Addr], policy: FrontendPolicy) -> Frontend {
    Frontend {
        service: ObjectKey { namespace: "default".into(), name: "web".into() },
        port_name: "http".into(),
        backends: backends
            .iter()
            .map(|a| BackendSpec {
                addr: *a,
                port: 8080,
                state: BackendState::Active,
                local: *a == LOCAL_POD,
            })
            .collect(),
        affinity_timeout: None,
        policy,
        source_ranges: Vec::new(),
    }
}

fn tcp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    pktgen::frame(
        &Ipv4Spec::new(src, dst, TCP),
        &pktgen::tcp(src, sport, dst, dport, flags, b"hello"),
    )
}

fn udp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    pktgen::frame(&Ipv4Spec::new(src, dst, UDP), &pktgen::udp(src, sport, dst, dport, b"q", true))
}

fn assert_checksums(p: &pktgen::Parsed) {
    assert!(p.ip_checksum_ok, "IP checksum");
    assert_eq!(p.l4_checksum_ok, Some(true), "L4 checksum");
}

// Expect: a SYN to the NodePort on the node address with a remote backend is
// DNATed to it and SNATed to the node address with a port of the SNAT range;
// later packets keep the same translation; the backend's reply to that port
// is translated back to NodePort -> client; checksums valid throughout.
#[test]
fn nodeport_to_remote_backend_is_snated_and_back() {
    if !is_root() {
        return;
    }
    let mut h = Harness::new();
    h.program(&[REMOTE_POD], false);
    let (verdict, p) = h.ext(&tcp_frame(CLIENT, 40000, NODE, 30080, 0x02));
    assert_ne!(verdict, TC_ACT_SHOT);
    assert_eq!((p.src, p.dst), (NODE, REMOTE_POD));
    let (sport, dport) = p.ports.unwrap();
    assert_eq!(dport, 8080);
    assert!(sport >= SNAT_PORT_MIN, "SNAT port {sport}");
    assert_checksums(&p);

    let (_, again) = h.ext(&tcp_frame(CLIENT, 40000, NODE, 30080, 0x10));
    assert_eq!((again.src, again.dst, again.ports), (NODE, REMOTE_POD, Some((sport, 8080))));

    let (verdict, r) = h.ext(&tcp_frame(REMOTE_POD, 8080, NODE, sport, 0x12));
    assert_ne!(verdict, TC_ACT_SHOT);
    assert_eq!((r.src, r.dst, r.ports), (NODE, CLIENT, Some((30080, 40000))));
    assert_checksums(&r);
}

// Expect: two clients with the same source port get different SNAT ports.
#[test]
fn snat_ports_differ_between_flows() {
    if !is_root() {
        return;
    }
    let mut h = Harness::new();
    h.program(&[REMOTE_POD], false);
    let other = Ipv4Addr::new(198, 18, 1, 11);
    let (_, a) = h.ext(&tcp_frame(CLIENT, 40000, NODE, 30080, 0x02));
    let (_, b) = h.ext(&tcp_frame(other, 40000, NODE, 30080, 0x02));
    assert_ne!(a.ports.unwrap().0, b.ports.unwrap().0);
    // And each reply finds its own client.
    let (_, ra) = h.ext(&tcp_frame(REMOTE_POD, 8080, NODE, a.ports.unwrap().0, 0x12));
    let (_, rb) = h.ext(&tcp_frame(REMOTE_POD, 8080, NODE, b.ports.unwrap().0, 0x12));
    assert_eq!((ra.dst, rb.dst), (CLIENT, other));
}

// Expect: a NodePort flow to a backend on this node is only DNATed (the
// backend sees the client); the backend's reply, leaving its pod, comes from
// the node address and NodePort.
#[test]
fn nodeport_to_local_backend_keeps_the_client_address() {
    if !is_root() {
        return;
    }
    let mut h = Harness::new();
    h.program(&[LOCAL_POD], false);
    let (_, p) = h.ext(&tcp_frame(CLIENT, 40001, NODE, 30080, 0x02));
    assert_eq!((p.src, p.dst, p.ports), (CLIENT, LOCAL_POD, Some((40001, 8080))));
    assert_checksums(&p);
    let (verdict, r) = h.pod(&tcp_frame(LOCAL_POD, 8080, CLIENT, 40001, 0x12));
    assert_ne!(verdict, TC_ACT_SHOT);
    assert_eq!((r.src, r.dst, r.ports), (NODE, CLIENT, Some((30080, 40001))));
    assert_checksums(&r);
}

// Expect: an externalIP frontend and a UDP NodePort translate the same way.
#[test]
fn external_ip_and_udp_nodeport_are_translated() {
    if !is_root() {
        return;
    }
    let mut h = Harness::new();
    h.program(&[REMOTE_POD], false);
    let (_, p) = h.ext(&tcp_frame(CLIENT, 40002, EXTERNAL_IP, 80, 0x02));
    assert_eq!((p.src, p.dst), (NODE, REMOTE_POD));
    let sport = p.ports.unwrap().0;
    let (_, r) = h.ext(&tcp_frame(REMOTE_POD, 8080, NODE, sport, 0x12));
    assert_eq!((r.src, r.dst, r.ports), (EXTERNAL_IP, CLIENT, Some((80, 40002))));
    assert_checksums(&r);

    let (_, u) = h.ext(&udp_frame(CLIENT, 5000, NODE, 30053));
    assert_eq!((u.src, u.dst), (NODE, REMOTE_POD));
    assert_checksums(&u);
}

// Expect: externalTrafficPolicy Local never SNATs, and with no local
// endpoint drops (counted as no_local_backend) instead of rejecting.
#[test]
fn local_policy_never_snats_and_drops_without_endpoints() {
    if !is_root() {
        return;
    }
    let mut h = Harness::new();
    h.program(&[LOCAL_POD], true);
    let (_, p) = h.ext(&tcp_frame(CLIENT, 40003, NODE, 30080, 0x02));
    assert_eq!((p.src, p.dst), (CLIENT, LOCAL_POD));
    h.program(&[], true);
    let before = h.drops(DropReason::NoLocalBackend);
    let (verdict, _) = h.ext(&tcp_frame(CLIENT, 40004, NODE, 30080, 0x02));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(h.drops(DropReason::NoLocalBackend), before + 1);
}

// Expect: a NodePort port on an address that is not a NodePort address, and
// traffic to the node that is no service, pass untouched.
#[test]
fn other_traffic_passes_untouched() {
    if !is_root() {
        return;
    }
    let mut h = Harness::new();
    h.program(&[REMOTE_POD], false);
    for frame in [
        tcp_frame(CLIENT, 40005, Ipv4Addr::new(198, 18, 0, 99), 30080, 0x02),
        tcp_frame(CLIENT, 40005, NODE, 22, 0x02),
        tcp_frame(CLIENT, 40005, LOCAL_POD, 8080, 0x02),
    ] {
        let (verdict, out) = Harness::run(&h.ext, &frame);
        assert_ne!(verdict, TC_ACT_SHOT);
        assert_ne!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, frame);
    }
}

// Expect: with loadBalancerSourceRanges 198.18.1.0/28 on the LoadBalancer IP
// and the NodePort, a client inside is translated, one outside is dropped
// (counted as source_range_denied, on the LoadBalancer IP and the NodePort,
// from outside and from a pod); a port of the node without ranges (the UDP
// NodePort) serves the outsider; its established flow survives a range
// change; and once the ranges are gone the outsider is served.
#[test]
fn source_ranges_admit_inside_and_drop_outside() {
    if !is_root() {
        return;
    }
    let mut h = Harness::new();
    h.program_ranges(&[REMOTE_POD], false, &["198.18.1.0/28", "192.0.2.0/24"]);

    // Inside: translated, on both frontends.
    let (verdict, p) = h.ext(&tcp_frame(CLIENT, 41000, EXTERNAL_IP, 80, 0x02));
    assert_ne!(verdict, TC_ACT_SHOT);
    assert_eq!((p.src, p.dst), (NODE, REMOTE_POD));
    assert_checksums(&p);
    let (_, p) = h.ext(&tcp_frame(CLIENT, 41001, NODE, 30080, 0x02));
    assert_eq!((p.src, p.dst), (NODE, REMOTE_POD));

    // Outside: dropped and counted, on both frontends and from a pod.
    let before = h.drops(DropReason::SourceRangeDenied);
    for frame in [
        tcp_frame(OUTSIDER, 41002, EXTERNAL_IP, 80, 0x02),
        tcp_frame(OUTSIDER, 41003, NODE, 30080, 0x02),
    ] {
        let (verdict, _) = Harness::run(&h.ext, &frame);
        assert_eq!(verdict, TC_ACT_SHOT);
    }
    let (verdict, _) = h.pod(&tcp_frame(CLIENT_POD, 41004, EXTERNAL_IP, 80, 0x02));
    assert_eq!(verdict, TC_ACT_SHOT);
    assert_eq!(h.drops(DropReason::SourceRangeDenied), before + 3);

    // A frontend without ranges is not filtered.
    let (verdict, u) = h.ext(&udp_frame(OUTSIDER, 5001, NODE, 30053));
    assert_ne!(verdict, TC_ACT_SHOT);
    assert_eq!((u.src, u.dst), (NODE, REMOTE_POD));

    // The ranges change: the flow already admitted keeps going (only new
    // flows are checked, as kube-proxy's NAT-table firewall does).
    h.program_ranges(&[REMOTE_POD], false, &["192.0.2.0/24"]);
    let (verdict, p) = h.ext(&tcp_frame(CLIENT, 41000, EXTERNAL_IP, 80, 0x10));
    assert_ne!(verdict, TC_ACT_SHOT);
    assert_eq!((p.src, p.dst), (NODE, REMOTE_POD));
    let (verdict, _) = Harness::run(&h.ext, &tcp_frame(CLIENT, 41005, EXTERNAL_IP, 80, 0x02));
    assert_eq!(verdict, TC_ACT_SHOT, "a new flow from outside the new ranges");

    // No ranges: everyone is served.
    h.program_ranges(&[REMOTE_POD], false, &[]);
    let before = h.drops(DropReason::SourceRangeDenied);
    let (verdict, p) = h.ext(&tcp_frame(OUTSIDER, 41006, EXTERNAL_IP, 80, 0x02));
    assert_ne!(verdict, TC_ACT_SHOT);
    assert_eq!((p.src, p.dst), (NODE, REMOTE_POD));
    assert_eq!(h.drops(DropReason::SourceRangeDenied), before);
}

// Expect: SCTP to a service port (a NodePort from outside, a ClusterIP from a
// pod) is answered with ICMP port unreachable from the address the client
// tried and counted as unsupported_protocol; SCTP to another port of the
// cluster IP is rejected as no_service_port; SCTP elsewhere passes untouched.
#[test]
fn sctp_to_a_service_port_is_rejected_and_counted() {
    if !is_root() {
        return;
    }
    let mut h = Harness::new();
    h.program(&[REMOTE_POD], false);
    let sctp = |src, dst, dport| {
        pktgen::frame(&Ipv4Spec::new(src, dst, SCTP), &pktgen::sctp_init(5000, dport, 0x1234_5678))
    };
    let unsupported = || h.drops(DropReason::UnsupportedProtocol);
    let before = unsupported();

    let (verdict, icmp) = h.ext(&sctp(CLIENT, NODE, 30132));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((icmp.proto, icmp.src, icmp.dst), (ICMP, NODE, CLIENT));
    assert!(icmp.ip_checksum_ok);
    assert_eq!(icmp.l4_checksum_ok, Some(true));

    let (verdict, icmp) = h.pod(&sctp(CLIENT_POD, CLUSTER_IP, 9000));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!((icmp.proto, icmp.src, icmp.dst), (ICMP, CLUSTER_IP, CLIENT_POD));
    assert_eq!(unsupported(), before + 2);

    let no_port = h.drops(DropReason::NoServicePort);
    let (verdict, _) = h.pod(&sctp(CLIENT_POD, CLUSTER_IP, 9001));
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(h.drops(DropReason::NoServicePort), no_port + 1);

    for frame in [sctp(CLIENT, NODE, 9000), sctp(CLIENT, LOCAL_POD, 30132)] {
        let (verdict, out) = Harness::run(&h.ext, &frame);
        assert_ne!(verdict, TC_ACT_SHOT);
        assert_ne!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out, frame);
    }
    assert_eq!(unsupported(), before + 2);
}

// Expect: a two-scope frontend (externalTrafficPolicy Local, its internal
// scope serving the cluster's endpoints): from outside, the NodePort and the
// externalIP without a local endpoint drop; from a pod of this node the same
// frontends are DNATed to the remote endpoint (no SNAT) and the reply is
// translated back; with the internal entries gone (the moment of an update)
// the pod gets the outside choice; without the two-scope flag too.
#[test]
fn two_scope_frontends_serve_this_nodes_pods_from_the_cluster_endpoints() {
    if !is_root() {
        return;
    }
    let mut h = Harness::new();
    let frontend = web_frontend;
    let outside =
        FrontendPolicy { external: true, local: true, drop_when_empty: true, two_scopes: true };
    let inside = FrontendPolicy { external: true, drop_when_empty: true, ..Default::default() };
    let keys = [
        FrontendKey::new(NODEPORT_ADDR, 30080, Protocol::Tcp),
        FrontendKey::new(EXTERNAL_IP, 80, Protocol::Tcp),
    ];
    let both: Desired = keys
        .iter()
        .flat_map(|k| {
            [
                (*k, frontend(&[], outside)),
                (k.in_scope(Scope::Internal), frontend(&[REMOTE_POD], inside)),
            ]
        })
        .collect();
    let out = h.reconciler.sync(&both);
    assert!(out.errors.is_empty(), "{:?}", out.errors);

    for (i, (dst, port)) in [(NODE, 30080), (EXTERNAL_IP, 80)].into_iter().enumerate() {
        let before = h.drops(DropReason::NoLocalBackend);
        let (verdict, _) = h.ext(&tcp_frame(CLIENT, 41000, dst, port, 0x02));
        assert_eq!(verdict, TC_ACT_SHOT, "outside to {dst}:{port}");
        assert_eq!(h.drops(DropReason::NoLocalBackend), before + 1);

        let sport = 41010 + i as u16;
        let (verdict, p) = h.pod(&tcp_frame(CLIENT_POD, sport, dst, port, 0x02));
        assert_ne!(verdict, TC_ACT_SHOT, "pod to {dst}:{port}");
        assert_eq!((p.src, p.dst, p.ports), (CLIENT_POD, REMOTE_POD, Some((sport, 8080))));
        assert_checksums(&p);
        // The reply comes back through the external program (the backend
        // is on another node).
        let (verdict, r) = h.ext(&tcp_frame(REMOTE_POD, 8080, CLIENT_POD, sport, 0x12));
        assert_ne!(verdict, TC_ACT_SHOT);
        assert_eq!((r.src, r.dst, r.ports), (dst, CLIENT_POD, Some((port, sport))));
        assert_checksums(&r);
    }

    // The internal entries missing: the scope-0 entries serve (drop).
    let only_outside: Desired = keys.iter().map(|k| (*k, frontend(&[], outside))).collect();
    let out = h.reconciler.sync(&only_outside);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let (verdict, _) = h.pod(&tcp_frame(CLIENT_POD, 41020, NODE, 30080, 0x02));
    assert_eq!(verdict, TC_ACT_SHOT);
    // One scope with a local endpoint: the pod gets it.
    let one: Desired = keys
        .iter()
        .map(|k| (*k, frontend(&[LOCAL_POD], FrontendPolicy { two_scopes: false, ..outside })))
        .collect();
    let out = h.reconciler.sync(&one);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let (_, p) = h.pod(&tcp_frame(CLIENT_POD, 41021, EXTERNAL_IP, 80, 0x02));
    assert_eq!((p.src, p.dst), (CLIENT_POD, LOCAL_POD));
}
