//! Packet-level tests of the pod program's fast paths through
//! BPF_PROG_TEST_RUN (see `datapath.rs` for the harness's idea): with the
//! fast paths on, a packet to a pod of this node (an `SL_ENDPOINTS` entry),
//! also after a service DNAT, a reverse NAT or a hairpin, leaves with the
//! pod's MACs, its TTL one lower, valid checksums and the verdict
//! TC_ACT_REDIRECT (`bpf_redirect_peer`; the test run does not deliver it),
//! counted in `SL_FWD_STATS`. With them off, or when the TTL would expire,
//! it continues to the stack unchanged apart from the NAT. The counters are
//! also `sluice_fast_path_packets_total{path}`. Needs root.

use std::net::Ipv4Addr;

use aya::maps::{HashMap, MapData};
use aya::programs::SchedClassifier;
use proxy_common::{EndpointInfo, MAP_ENDPOINTS, PROG_EXT_INGRESS, PROG_POD_INGRESS};
use sluice::{
    datapath::{
        MapSizes, PinPaths,
        loader::Datapath,
        maps::{PinnedMaps, open_pinned},
        node::{FastPathStats, NodeAddrs, NodeMaps, fast_path_flags},
        reconcile::Reconciler,
    },
    manifest::ObjectKey,
    model::{BackendSpec, BackendState, Desired, Frontend, FrontendKey, Protocol},
    pktgen::{self, Ipv4Spec, TCP, UDP},
    testbed::{BpffsMount, prog_test_run},
};

const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_REDIRECT: u32 = 7;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 12);
/// In the pod address space, not on this node.
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
/// Outside the pod address space.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

fn endpoint(last: u8) -> EndpointInfo {
    EndpointInfo {
        ifindex: 100 + u32::from(last),
        flags: 0,
        mac: [0x02, 0xaa, 0, 0, 0, last],
        node_mac: [0x02, 0xbb, 0, 0, 0, last],
        _pad: [0; 4],
    }
}

struct Harness {
    prog: SchedClassifier,
    reconciler: Reconciler<PinnedMaps>,
    paths: PinPaths,
    node: NodeMaps,
    _datapath: Datapath,
    _fs: BpffsMount,
}

impl Harness {
    /// Loaded programs, pods A and B registered, pod space 10.244.0.0/16,
    /// fast paths `on` or off.
    fn new(on: bool) -> Self {
        let fs = BpffsMount::new().expect("mount a bpffs");
        let paths = PinPaths::new(fs.path());
        let datapath = Datapath::load(&paths, &MapSizes::small()).expect("load programs");
        let prog = SchedClassifier::from_pin(paths.prog(PROG_POD_INGRESS)).expect("program");
        let (reconciler, _) = Reconciler::restore(PinnedMaps::open(&paths).unwrap()).unwrap();
        let mut node = NodeMaps::open(&paths).unwrap().with_flags(fast_path_flags(on));
        node.sync(&NodeAddrs::default()).unwrap();
        node.sync_pod_cidrs(&["10.244.0.0/16".parse().unwrap()]).unwrap();
        let mut eps: HashMap<MapData, u32, EndpointInfo> =
            open_pinned(&paths, MAP_ENDPOINTS).unwrap();
        for ip in [POD_A, POD_B] {
            let info = endpoint(ip.octets()[3]);
            eps.insert(proxy_common::addr_to_map(ip), info, 0).unwrap();
        }
        Self { prog, reconciler, paths, node, _datapath: datapath, _fs: fs }
    }

    /// A ClusterIP VIP:80/TCP and VIP:53/UDP with one backend (`backend`).
    fn service(&mut self, backend: Ipv4Addr) {
        let desired: Desired = [(80, Protocol::Tcp, 8080), (53, Protocol::Udp, 5353)]
            .into_iter()
            .map(|(port, proto, target)| {
                (
                    FrontendKey::new(VIP, port, proto),
                    Frontend {
                        service: ObjectKey { namespace: "default".into(), name: "svc".into() },
                        port_name: String::new(),
                        backends: vec![BackendSpec {
                            addr: backend,
                            port: target,
                            state: BackendState::Active,
                            local: true,
                        }],
                        affinity_timeout: None,
                        policy: Default::default(),
                        source_ranges: Vec::new(),
                    },
                )
            })
            .collect();
        let out = self.reconciler.sync(&desired);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
    }

    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        prog_test_run(&self.prog, frame).unwrap()
    }

    fn stats(&self) -> FastPathStats {
        FastPathStats::read(&self.paths).unwrap()
    }
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    pktgen::frame(&Ipv4Spec::new(src, dst, TCP), &pktgen::tcp(src, sport, dst, dport, flags, b"hi"))
}

fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    pktgen::frame(
        &Ipv4Spec::new(src, dst, UDP),
        &pktgen::udp(src, sport, dst, dport, b"ping", true),
    )
}

fn ttl(frame: &[u8]) -> u8 {
    frame[14 + 8]
}

/// Asserts `out` was sent to the pod whose endpoint entry is `to`: its MACs,
/// TTL 63 (pktgen sends 64), valid checksums; returns the parsed packet.
fn assert_peer(verdict: u32, out: &[u8], to: Ipv4Addr) -> pktgen::Parsed {
    assert_eq!(verdict, TC_ACT_REDIRECT, "redirected");
    let ep = endpoint(to.octets()[3]);
    assert_eq!(&out[0..6], &ep.mac, "destination MAC: the pod's");
    assert_eq!(&out[6..12], &ep.node_mac, "source MAC: its host veth's");
    assert_eq!(ttl(out), 63, "TTL decremented once");
    let p = pktgen::parse(out);
    assert_eq!(p.dst, to);
    assert!(p.ip_checksum_ok, "IP checksum");
    assert_eq!(p.l4_checksum_ok, Some(true), "L4 checksum");
    p
}

// Expect: pod A -> pod B (TCP and UDP) is peer-redirected to B with B's
// MACs and TTL 63, checksums valid, two peer redirects counted.
#[test]
fn local_pod_traffic_is_peer_redirected() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let h = Harness::new(true);
    let (v, out) = h.run(&tcp(POD_A, 40000, POD_B, 8080, 0x02));
    let p = assert_peer(v, &out, POD_B);
    assert_eq!((p.src, p.ports), (POD_A, Some((40000, 8080))));
    let (v, out) = h.run(&udp(POD_B, 5353, POD_A, 40000));
    assert_peer(v, &out, POD_A);
    let s = h.stats();
    assert_eq!((s.peer, s.fib, s.neigh, s.stack), (2, 0, 0, 0));
    // The same counters as metrics, read from the pins at scrape time.
    let metrics = sluice::observe::Metrics::new(sluice::observe::MetricsConfig {
        pins: Some(h.paths.clone()),
        ..Default::default()
    });
    let text = metrics.encode().unwrap();
    for (path, n) in [("peer", 2), ("fib", 0), ("neigh", 0), ("stack", 0)] {
        let series = format!(r#"sluice_fast_path_packets_total{{path="{path}"}} {n}"#);
        assert!(text.lines().any(|l| l == series), "no {series} in\n{text}");
    }
}

// Expect: with the fast paths off the same packets continue to the stack
// byte for byte, and nothing is counted.
#[test]
fn fast_path_off_leaves_packets_to_the_stack() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let h = Harness::new(false);
    for f in [tcp(POD_A, 40000, POD_B, 8080, 0x02), udp(POD_A, 40000, REMOTE, 53)] {
        assert_eq!(h.run(&f), (TC_ACT_UNSPEC, f.clone()));
    }
    assert_eq!(h.stats(), FastPathStats::default());
}

// Expect: a request to the ClusterIP is DNATed to local backend B and
// peer-redirected to B; B's reply is reverse-NATed (source VIP:80) and
// peer-redirected to A; checksums stay valid through NAT plus TTL.
#[test]
fn service_to_local_backend_and_its_reply_take_the_peer_path() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let mut h = Harness::new(true);
    h.service(POD_B);
    let (v, out) = h.run(&tcp(POD_A, 41000, VIP, 80, 0x02));
    let p = assert_peer(v, &out, POD_B);
    assert_eq!((p.src, p.ports), (POD_A, Some((41000, 8080))));
    let (v, out) = h.run(&tcp(POD_B, 8080, POD_A, 41000, 0x12));
    let p = assert_peer(v, &out, POD_A);
    assert_eq!((p.src, p.ports), (VIP, Some((80, 41000))));
    let (v, out) = h.run(&udp(POD_A, 41001, VIP, 53));
    let p = assert_peer(v, &out, POD_B);
    assert_eq!((p.src, p.ports), (POD_A, Some((41001, 5353))));
    assert_eq!(h.stats().peer, 3);
}

// Expect: B reaching itself through the ClusterIP: the request (source now
// the hairpin address) and the reply (source VIP, back to B) both go to B's
// own eth0 by peer redirect.
#[test]
fn hairpin_goes_back_to_the_pod_by_peer_redirect() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let hairpin = Ipv4Addr::from(proxy_common::HAIRPIN_ADDR);
    let mut h = Harness::new(true);
    h.service(POD_B);
    let (v, out) = h.run(&tcp(POD_B, 42000, VIP, 80, 0x02));
    let p = assert_peer(v, &out, POD_B);
    assert_eq!((p.src, p.ports), (hairpin, Some((42000, 8080))));
    let (v, out) = h.run(&tcp(POD_B, 8080, hairpin, 42000, 0x12));
    let p = assert_peer(v, &out, POD_B);
    assert_eq!((p.src, p.ports), (VIP, Some((80, 42000))));
}

// Expect: a packet whose TTL would expire goes to the stack untouched (it
// sends "time exceeded"), counted as left to the stack; so does a packet to
// a pod elsewhere when the FIB has no answer (here: no ingress interface in
// a test run); a destination outside the pod space is not looked at.
#[test]
fn expiring_ttl_and_unusable_fib_answers_go_to_the_stack() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let h = Harness::new(true);
    let mut f = tcp(POD_A, 40000, POD_B, 8080, 0x02);
    f[14 + 8] = 1;
    // Keep the header checksum valid for the new TTL.
    f[14 + 10..14 + 12].fill(0);
    let c = pktgen::checksum(&f[14..34]);
    f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(h.run(&f), (TC_ACT_UNSPEC, f.clone()));
    let remote = udp(POD_A, 40000, REMOTE, 53);
    assert_eq!(h.run(&remote), (TC_ACT_UNSPEC, remote.clone()));
    assert_eq!(h.stats().stack, 2);
    let outside = udp(POD_A, 40000, OUTSIDE, 53);
    assert_eq!(h.run(&outside), (TC_ACT_UNSPEC, outside.clone()));
    assert_eq!(h.stats(), FastPathStats { stack: 2, ..FastPathStats::default() });
}

// Expect: on an external device (the external program), a packet from a pod
// on another node to local pod B is peer-redirected to B with B's MACs and
// TTL 63 when the fast paths are on, and continues unchanged when off.
#[test]
fn from_another_node_to_a_local_pod_is_peer_redirected() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    for on in [true, false] {
        let h = Harness::new(on);
        let ext = SchedClassifier::from_pin(h.paths.prog(PROG_EXT_INGRESS)).expect("program");
        let f = tcp(REMOTE, 40000, POD_B, 8080, 0x02);
        let (v, out) = prog_test_run(&ext, &f).unwrap();
        if on {
            let p = assert_peer(v, &out, POD_B);
            assert_eq!((p.src, p.ports), (REMOTE, Some((40000, 8080))));
            assert_eq!(h.stats().peer, 1);
        } else {
            assert_eq!((v, out), (TC_ACT_UNSPEC, f));
            assert_eq!(h.stats(), FastPathStats::default());
        }
    }
}

// Expect: the pod address space follows the agent's list: after it changes
// to 10.245.0.0/16 alone, the old range is gone (a packet to it is no longer
// looked up in the FIB, so not counted) and the new one is there.
#[test]
fn pod_cidrs_follow_the_list() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let mut h = Harness::new(true);
    let remote = udp(POD_A, 40000, REMOTE, 53);
    assert_eq!(h.run(&remote).0, TC_ACT_UNSPEC);
    assert_eq!(h.stats().stack, 1, "looked up: in the pod space");
    assert!(h.node.sync_pod_cidrs(&["10.245.0.0/16".parse().unwrap()]).unwrap());
    assert!(!h.node.sync_pod_cidrs(&["10.245.0.0/16".parse().unwrap()]).unwrap(), "no change");
    assert_eq!(h.run(&remote), (TC_ACT_UNSPEC, remote.clone()));
    assert_eq!(h.stats().stack, 1, "not looked up any more");
    let other = udp(POD_A, 40000, Ipv4Addr::new(10, 245, 3, 3), 53);
    assert_eq!(h.run(&other).0, TC_ACT_UNSPEC);
    assert_eq!(h.stats().stack, 2, "the new range is");
    let cidrs: aya::maps::LpmTrie<MapData, u32, u32> =
        open_pinned(&h.paths, proxy_common::MAP_POD_CIDRS).unwrap();
    assert_eq!(cidrs.keys().count(), 1);
}
