//! The plugin against real namespaces (needs root; skips otherwise): every
//! verb in every cniVersion, traffic between pods and to the node, CHECK
//! finding differences, GC, STATUS, and a matrix of bad input that must
//! fail with the right code and leave nothing behind.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::{Fixture, result_ip};
use serde_json::{Value, json};
use sluice::testbed::{EchoServer, Netns, require_root, sweep_stale, tcp_request, udp_request};

const IO: Duration = Duration::from_secs(2);
const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// ADD -> traffic (pod to node through the gateway, pod to pod) -> CHECK ->
/// DEL -> DEL again -> DEL with no netns, for each cniVersion.
#[test]
fn add_check_del_in_every_version() {
    if !require_root() {
        return;
    }
    sweep_stale();
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let fx = Fixture::new("verbs", true);
        let conf = fx.conf(version, &json!({}));
        let a = Netns::new("pod-a").unwrap();
        let b = Netns::new("pod-b").unwrap();
        let ra = fx.add(&conf, "ctr-a", &a, "eth0").expect_ok("ADD a");
        let rb = fx.add(&conf, "ctr-b", &b, "eth0").expect_ok("ADD b");

        // Result shape in the requested version.
        assert_eq!(ra["cniVersion"], version);
        assert_eq!(ra["interfaces"][1]["name"], "eth0");
        assert_eq!(ra["interfaces"][1]["sandbox"], a.path().to_str().unwrap());
        assert_eq!(ra["ips"][0]["interface"], 1);
        assert_eq!(ra["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(ra["ips"][0].get("version").is_some(), version == "0.4.0", "{ra}");
        let host_if = ra["interfaces"][0]["name"].as_str().unwrap().to_owned();
        assert_eq!(host_if, sluice_cni::names::host_veth_name("ctr-a", "eth0"));
        let (ip_a, ip_b) = (result_ip(&ra), result_ip(&rb));
        assert_ne!(ip_a, ip_b);
        assert!(ip_a.octets()[..3] == [10, 244, 0], "{ip_a}");

        // Node sysctls, pins, map entries.
        assert_eq!(fx.node.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
        assert_eq!(fx.pod_filters().len(), 2, "{:?}", fx.pod_filters());
        assert_eq!(fx.link_pins(), Vec::<String>::new());
        let mut eps = fx.endpoint_entries();
        eps.sort();
        let mut want = vec![ip_a, ip_b];
        want.sort();
        assert_eq!(eps, want);

        // Traffic: pod -> node (through the gateway), pod <-> pod, TCP and UDP.
        let _node_srv = EchoServer::start(&fx.node, "node", 7000, 0).unwrap();
        let _srv_b = EchoServer::start(&b, "pod-b", 8080, 5353).unwrap();
        let _srv_a = EchoServer::start(&a, "pod-a", 8080, 0).unwrap();
        assert_eq!(tcp_request(&a, SocketAddrV4::new(NODE_ADDR, 7000), IO).unwrap(), "node");
        assert_eq!(tcp_request(&a, SocketAddrV4::new(ip_b, 8080), IO).unwrap(), "pod-b");
        assert_eq!(udp_request(&a, SocketAddrV4::new(ip_b, 5353), IO).unwrap(), "pod-b");
        assert_eq!(tcp_request(&b, SocketAddrV4::new(ip_a, 8080), IO).unwrap(), "pod-a");

        // CHECK passes against the ADD result, and reports tampering.
        let a_path = a.path().to_str().unwrap().to_owned();
        let check_conf = fx.conf(version, &json!({"prevResult": ra}));
        let r = fx.verb("CHECK", &check_conf, "ctr-a", &a_path, "eth0");
        assert!(r.ok, "CHECK: {}", r.raw);
        assert_eq!(r.raw.trim(), "", "CHECK prints nothing on success");
        a.ip(&["route", "del", "default"]).unwrap();
        fx.node.ip(&["link", "set", &host_if, "down"]).unwrap();
        let mut del_filter = std::process::Command::new("tc");
        del_filter.args(["-n", fx.node.name(), "filter", "del", "dev", &host_if, "ingress"]);
        sluice::testbed::run_checked(&mut del_filter, IO).unwrap();
        assert_eq!(fx.pod_filters().len(), 1, "{:?}", fx.pod_filters());
        let r = fx.verb("CHECK", &check_conf, "ctr-a", &a_path, "eth0");
        r.expect_code(105, "CHECK after tampering");
        let details = r.stdout["details"].as_str().unwrap();
        assert!(details.contains("default route"), "{details}");
        assert!(details.contains("is down"), "{details}");
        assert!(details.contains("tc filter"), "{details}");

        // DEL, DEL again, DEL as containerd's second call (no netns, no prevResult).
        let del_conf = fx.conf(version, &json!({"prevResult": ra}));
        let r = fx.verb("DEL", &del_conf, "ctr-a", &a_path, "eth0");
        assert!(r.ok && r.raw.trim().is_empty(), "DEL: {}", r.raw);
        assert!(!fx.host_links().contains(&host_if));
        assert!(!fx.endpoint_entries().contains(&ip_a));
        assert!(fx.verb("DEL", &del_conf, "ctr-a", &a_path, "eth0").ok, "second DEL");
        let plain = fx.conf(version, &json!({}));
        let r = fx.run(
            &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "ctr-a"), ("CNI_IFNAME", "eth0")],
            plain.to_string().as_bytes(),
        );
        assert!(r.ok, "DEL without CNI_NETNS: {}", r.raw);
        assert!(a.ip(&["link", "show", "eth0"]).is_err(), "pod side is gone with the pair");
        // The pod is gone for good, its netns too: DEL still succeeds.
        drop(a);
        assert!(fx.verb("DEL", &plain, "ctr-a", &a_path, "eth0").ok);
        fx.verb("DEL", &plain, "ctr-b", b.path().to_str().unwrap(), "eth0").expect_ok("DEL b");
        fx.assert_clean(version);
    }
}

/// A repeated ADD of the same attachment gets the same address; chained
/// after a prevResult the result is amended.
#[test]
fn repeated_add_keeps_the_address_and_chaining_amends() {
    if !require_root() {
        return;
    }
    let fx = Fixture::new("readd", true);
    let conf = fx.conf("1.1.0", &json!({}));
    let a = Netns::new("pod-a").unwrap();
    let first = result_ip(&fx.add(&conf, "ctr-a", &a, "eth0").expect_ok("ADD"));
    let second = result_ip(&fx.add(&conf, "ctr-a", &a, "eth0").expect_ok("re-ADD"));
    assert_eq!(first, second);
    assert_eq!(fx.host_links().len(), 1);

    // The configured MTU on both ends, and in the 1.1.0 result.
    let m = Netns::new("pod-mtu").unwrap();
    let r =
        fx.add(&fx.conf("1.1.0", &json!({"mtu": 1400})), "ctr-m", &m, "eth0").expect_ok("ADD mtu");
    assert_eq!(r["interfaces"][1]["mtu"], 1400);
    assert!(m.ip(&["link", "show", "eth0"]).unwrap().contains("mtu 1400"));
    let host_m = r["interfaces"][0]["name"].as_str().unwrap().to_owned();
    assert!(fx.node.ip(&["link", "show", &host_m]).unwrap().contains("mtu 1400"));
    fx.verb("DEL", &conf, "ctr-m", m.path().to_str().unwrap(), "eth0").expect_ok("DEL mtu");

    let prev = json!({"cniVersion":"1.1.0","interfaces":[{"name":"lo0"}],
        "ips":[{"address":"192.0.2.1/24","interface":0}],"dns":{"nameservers":["192.0.2.53"]}});
    let chained = fx.conf("1.1.0", &json!({"prevResult": prev}));
    let b = Netns::new("pod-b").unwrap();
    let r = fx.add(&chained, "ctr-b", &b, "net1").expect_ok("chained ADD");
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(r["ips"][1]["interface"], 2);
    assert_eq!(r["dns"]["nameservers"][0], "192.0.2.53");

    // Two attachments in one pod netns (different ifnames) coexist.
    let r = fx.add(&conf, "ctr-a", &a, "net1").expect_ok("second interface");
    assert_ne!(result_ip(&r), first);
    for (id, ns, ifn) in [("ctr-a", &a, "eth0"), ("ctr-b", &b, "net1"), ("ctr-a", &a, "net1")] {
        fx.verb("DEL", &conf, id, ns.path().to_str().unwrap(), ifn).expect_ok("DEL");
    }
    fx.assert_clean("after DEL");
}

/// STATUS with and without the agent's pins; ADD fails with 11 without
/// them; GC releases everything that is not listed.
#[test]
fn status_gc_and_agent_readiness() {
    if !require_root() {
        return;
    }
    let bare = Fixture::new("notready", false);
    let conf = bare.conf("1.1.0", &json!({}));
    let r = bare.run(&[("CNI_COMMAND", "STATUS")], conf.to_string().as_bytes());
    r.expect_code(50, "STATUS without agent");
    let a = Netns::new("pod-a").unwrap();
    let r = bare.add(&conf, "ctr-a", &a, "eth0");
    r.expect_code(11, "ADD without agent");
    let details = r.stdout["details"].as_str().unwrap();
    assert!(details.contains("agent is not ready") && details.contains("missing"), "{details}");
    assert_eq!(bare.host_links(), Vec::<String>::new());
    assert_eq!(bare.store_entries(), 0);

    let fx = Fixture::new("gc", true);
    let conf = fx.conf("1.1.0", &json!({}));
    let r = fx.run(&[("CNI_COMMAND", "STATUS")], conf.to_string().as_bytes());
    assert!(r.ok, "STATUS: {}", r.raw);
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("gc-{i}")).unwrap()).collect();
    let ips: Vec<Ipv4Addr> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| result_ip(&fx.add(&conf, &format!("ctr-{i}"), p, "eth0").expect_ok("ADD")))
        .collect();
    // GC before 1.1.0 is refused; GC without the list is refused.
    let old = fx.conf("1.0.0", &json!({"cni.dev/valid-attachments": []}));
    fx.run(&[("CNI_COMMAND", "GC")], old.to_string().as_bytes()).expect_code(1, "GC 1.0.0");
    fx.run(&[("CNI_COMMAND", "GC")], conf.to_string().as_bytes()).expect_code(7, "GC no list");
    let gc = fx.conf(
        "1.1.0",
        &json!({"cni.dev/valid-attachments": [{"containerID": "ctr-1", "ifname": "eth0"}]}),
    );
    let r = fx.run(&[("CNI_COMMAND", "GC")], gc.to_string().as_bytes());
    assert!(r.ok, "GC: {}", r.raw);
    assert_eq!(fx.host_links(), vec![sluice_cni::names::host_veth_name("ctr-1", "eth0")]);
    assert_eq!(fx.endpoint_entries(), vec![ips[1]]);
    assert_eq!(fx.store_entries(), 1);
    assert_eq!(fx.pod_filters().len(), 1);
    // A veth that no record owns (a killed ADD) goes too.
    fx.node.ip(&["link", "add", "sl00000000beef", "type", "veth", "peer", "name", "x0"]).unwrap();
    let r = fx.run(&[("CNI_COMMAND", "GC")], gc.to_string().as_bytes());
    assert!(r.ok, "GC: {}", r.raw);
    assert_eq!(fx.host_links().len(), 1, "{:?}", fx.host_links());
    let gc_all = fx.conf("1.1.0", &json!({"cni.dev/valid-attachments": []}));
    assert!(fx.run(&[("CNI_COMMAND", "GC")], gc_all.to_string().as_bytes()).ok);
    fx.assert_clean("after GC of everything");
}

/// The pool running out: a clear error, STATUS says so, nothing half-made.
#[test]
fn exhausted_pool() {
    if !require_root() {
        return;
    }
    let fx = Fixture::new("full", true);
    let conf = fx.conf("1.1.0", &json!({"podCIDR": "10.244.0.0/30"}));
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("full-{i}")).unwrap()).collect();
    fx.add(&conf, "ctr-0", &pods[0], "eth0").expect_ok("ADD 0");
    fx.add(&conf, "ctr-1", &pods[1], "eth0").expect_ok("ADD 1");
    let r = fx.add(&conf, "ctr-2", &pods[2], "eth0");
    r.expect_code(102, "ADD into a full pool");
    assert!(r.stdout["details"].as_str().unwrap().contains("10.244.0.0/30"), "{}", r.raw);
    assert_eq!(fx.host_links().len(), 2);
    assert!(pods[2].ip(&["link", "show", "eth0"]).is_err());
    let st = fx.run(&[("CNI_COMMAND", "STATUS")], conf.to_string().as_bytes());
    st.expect_code(50, "STATUS with a full pool");
    assert!(st.stdout["details"].as_str().unwrap().contains("exhausted"), "{}", st.raw);
    for (i, p) in pods.iter().enumerate().take(2) {
        fx.verb("DEL", &conf, &format!("ctr-{i}"), p.path().to_str().unwrap(), "eth0")
            .expect_ok("DEL");
    }
    fx.assert_clean("after DEL");
}

/// Bad input: each fails with its code and leaves nothing behind.
#[test]
fn bad_input_matrix() {
    if !require_root() {
        return;
    }
    let fx = Fixture::new("bad", true);
    let pod = Netns::new("bad-pod").unwrap();
    let netns = pod.path().to_str().unwrap().to_owned();
    let good = fx.conf("1.1.0", &json!({}));
    let add_env = |id: &'static str, ns: &str, ifn: &str| -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), "ADD".into()),
            ("CNI_CONTAINERID".into(), id.into()),
            ("CNI_NETNS".into(), ns.into()),
            ("CNI_IFNAME".into(), ifn.into()),
        ]
    };
    let ro = fx.dir.join("readonly");
    std::fs::create_dir_all(&ro).unwrap();
    // Root ignores permissions; a read-only bind mount does not.
    sluice::testbed::run_checked(
        std::process::Command::new("mount").args(["--bind", "-o", "ro"]).arg(&ro).arg(&ro),
        Duration::from_secs(5),
    )
    .unwrap();
    let _unmount = Unmount(ro.clone());
    type Case = (&'static str, Vec<(String, String)>, Vec<u8>, u64);
    let cases: Vec<Case> = vec![
        ("malformed JSON", add_env("c1", &netns, "eth0"), b"{\"cniVersion\":".to_vec(), 6),
        ("empty stdin", add_env("c1", &netns, "eth0"), Vec::new(), 6),
        (
            "missing CNI_CONTAINERID",
            vec![
                ("CNI_COMMAND".into(), "ADD".into()),
                ("CNI_NETNS".into(), netns.clone()),
                ("CNI_IFNAME".into(), "eth0".into()),
            ],
            good.to_string().into_bytes(),
            4,
        ),
        (
            "missing CNI_NETNS",
            vec![
                ("CNI_COMMAND".into(), "ADD".into()),
                ("CNI_CONTAINERID".into(), "c1".into()),
                ("CNI_IFNAME".into(), "eth0".into()),
            ],
            good.to_string().into_bytes(),
            4,
        ),
        (
            "missing CNI_IFNAME",
            vec![
                ("CNI_COMMAND".into(), "ADD".into()),
                ("CNI_CONTAINERID".into(), "c1".into()),
                ("CNI_NETNS".into(), netns.clone()),
            ],
            good.to_string().into_bytes(),
            4,
        ),
        ("missing CNI_COMMAND", vec![], good.to_string().into_bytes(), 4),
        ("bad container id", add_env("-bad id", &netns, "eth0"), good.to_string().into_bytes(), 4),
        (
            "unknown cniVersion",
            add_env("c1", &netns, "eth0"),
            fx.conf("0.3.1", &json!({})).to_string().into_bytes(),
            1,
        ),
        (
            "CIDR with host bits",
            add_env("c1", &netns, "eth0"),
            fx.conf("1.1.0", &json!({"podCIDR": "10.244.0.7/24"})).to_string().into_bytes(),
            7,
        ),
        (
            "not a CIDR",
            add_env("c1", &netns, "eth0"),
            fx.conf("1.1.0", &json!({"podCIDR": "10.244.0/24"})).to_string().into_bytes(),
            7,
        ),
        (
            "overlapping CIDRs",
            add_env("c1", &netns, "eth0"),
            fx.conf(
                "1.1.0",
                &json!({"podCIDR": Value::Null, "podCIDRs": ["10.244.0.0/16", "10.244.3.0/24"]}),
            )
            .to_string()
            .into_bytes(),
            7,
        ),
        (
            "no range at all",
            add_env("c1", &netns, "eth0"),
            fx.conf("1.1.0", &json!({"podCIDR": Value::Null})).to_string().into_bytes(),
            7,
        ),
        (
            "netns that does not exist",
            add_env("c1", "/var/run/netns/sluice-no-such-ns", "eth0"),
            good.to_string().into_bytes(),
            3,
        ),
        (
            "netns path that is not a netns",
            add_env("c1", "/proc/self/status", "eth0"),
            good.to_string().into_bytes(),
            4,
        ),
        (
            "ifname too long",
            add_env("c1", &netns, "eth0123456789abc"),
            good.to_string().into_bytes(),
            4,
        ),
        ("ifname already taken", add_env("c1", &netns, "lo"), good.to_string().into_bytes(), 104),
        (
            "dataDir not writable",
            add_env("c1", &netns, "eth0"),
            fx.conf("1.1.0", &json!({"dataDir": ro.join("data")})).to_string().into_bytes(),
            5,
        ),
        (
            "delegated IPAM plugin missing",
            add_env("c1", &netns, "eth0"),
            fx.conf("1.1.0", &json!({"ipam": {"type": "no-such-ipam"}})).to_string().into_bytes(),
            4,
        ),
    ];
    for (what, env, stdin, code) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = fx.run(&env, &stdin);
        r.expect_code(code, what);
        assert!(!r.stdout["details"].as_str().unwrap_or("").is_empty(), "{what}: no details");
        fx.assert_clean(what);
        assert!(pod.ip(&["link", "show", "eth0"]).is_err(), "{what}: pod interface left");
    }
}

/// Delegated IPAM (host-local from /usr/lib/cni): ADD, CHECK, DEL; a
/// failure after the delegate's ADD releases its address again.
#[test]
fn delegated_host_local() {
    if !require_root() {
        return;
    }
    if !std::path::Path::new("/usr/lib/cni/host-local").exists() {
        eprintln!(
            "skipping delegated_host_local: /usr/lib/cni/host-local missing (apt-get install containernetworking-plugins)"
        );
        return;
    }
    let fx = Fixture::new("delegate", true);
    let ipam = json!({"type": "host-local", "dataDir": fx.dir.join("host-local"),
        "ranges": [[{"subnet": "10.244.7.0/24"}]]});
    let conf = fx.conf("1.0.0", &json!({"podCIDR": Value::Null, "ipam": ipam}));
    let a = Netns::new("dl-a").unwrap();
    let b = Netns::new("dl-b").unwrap();
    let ra = fx.add(&conf, "ctr-a", &a, "eth0").expect_ok("ADD with host-local");
    let rb = fx.add(&conf, "ctr-b", &b, "eth0").expect_ok("ADD with host-local");
    let (ip_a, ip_b) = (result_ip(&ra), result_ip(&rb));
    assert!(ip_a.octets()[..3] == [10, 244, 7], "{ip_a}");
    let _srv = EchoServer::start(&b, "pod-b", 8080, 0).unwrap();
    assert_eq!(tcp_request(&a, SocketAddrV4::new(ip_b, 8080), IO).unwrap(), "pod-b");
    let check = fx.conf("1.0.0", &json!({"podCIDR": Value::Null, "ipam": ipam, "prevResult": ra}));
    let r = fx.verb("CHECK", &check, "ctr-a", a.path().to_str().unwrap(), "eth0");
    assert!(r.ok, "CHECK: {}", r.raw);
    let leases = || {
        std::fs::read_dir(fx.dir.join("host-local").join("sluice-test"))
            .map(|rd| {
                rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("10.")).count()
            })
            .unwrap_or(0)
    };
    assert_eq!(leases(), 2);

    // A later step fails: the delegate's lease is released again.
    let c = Netns::new("dl-c").unwrap();
    let c_path = c.path().to_str().unwrap().to_owned();
    for step in ["ipam", "veth", "attach"] {
        let r = fx.run(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "ctr-c"),
                ("CNI_NETNS", &c_path),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/usr/lib/cni"),
                ("SLUICE_CNI_TEST_FAIL_AFTER", step),
            ],
            conf.to_string().as_bytes(),
        );
        r.expect_code(106, step);
        assert_eq!(leases(), 2, "after a failure after {step}: host-local lease kept");
        assert_eq!(fx.host_links().len(), 2, "after {step}");
    }
    for (id, ns) in [("ctr-a", &a), ("ctr-b", &b)] {
        fx.verb("DEL", &conf, id, ns.path().to_str().unwrap(), "eth0").expect_ok("DEL");
    }
    assert_eq!(leases(), 0, "host-local leases released");
    fx.assert_clean("after DEL");
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// ADD failing after each of its steps undoes everything it did.
#[test]
fn failed_add_leaves_nothing() {
    if !require_root() {
        return;
    }
    let fx = Fixture::new("rollback", true);
    let conf = fx.conf("1.1.0", &json!({}));
    let pod = Netns::new("rb-pod").unwrap();
    let path = pod.path().to_str().unwrap().to_owned();
    for step in ["ipam", "veth", "node", "pod", "endpoint", "attach"] {
        let r = fx.run(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "ctr-rb"),
                ("CNI_NETNS", &path),
                ("CNI_IFNAME", "eth0"),
                ("SLUICE_CNI_TEST_FAIL_AFTER", step),
            ],
            conf.to_string().as_bytes(),
        );
        r.expect_code(106, step);
        assert!(r.stdout["details"].as_str().unwrap().contains(step), "{}", r.raw);
        fx.assert_clean(&format!("failure after {step}"));
        assert!(pod.ip(&["link", "show", "eth0"]).is_err(), "pod side after {step}");
    }
    // And then a normal ADD works.
    fx.add(&conf, "ctr-rb", &pod, "eth0").expect_ok("ADD");
    fx.verb("DEL", &conf, "ctr-rb", &path, "eth0").expect_ok("DEL");
    fx.assert_clean("end");
}

/// DEL releases the address only once the veth is gone: when the kernel
/// refuses to delete the link (the node's loopback renamed to the host
/// veth's name: loopback cannot be deleted, `EOPNOTSUPP`), DEL fails with
/// code 100 and the IPAM record stays; with the name free, DEL releases it.
#[test]
fn failed_link_deletion_keeps_the_address() {
    if !require_root() {
        return;
    }
    let fx = Fixture::new("delfail", true);
    let conf = fx.conf("1.1.0", &json!({}));
    let pod = Netns::new("df-pod").unwrap();
    let path = pod.path().to_str().unwrap().to_owned();
    fx.add(&conf, "ctr-df", &pod, "eth0").expect_ok("ADD");
    let host_if = sluice_cni::names::host_veth_name("ctr-df", "eth0");
    fx.node.ip(&["link", "del", &host_if]).unwrap();
    fx.node.ip(&["link", "set", "lo", "down"]).unwrap();
    fx.node.ip(&["link", "set", "lo", "name", &host_if]).unwrap();
    let r = fx.verb("DEL", &conf, "ctr-df", &path, "eth0");
    fx.node.ip(&["link", "set", &host_if, "name", "lo"]).unwrap();
    fx.node.ip(&["link", "set", "lo", "up"]).unwrap();
    r.expect_code(100, "DEL of an undeletable link");
    assert!(r.stdout["details"].as_str().unwrap().contains(&host_if), "{}", r.raw);
    assert_eq!(fx.store_entries(), 1, "the address stays allocated");
    fx.verb("DEL", &conf, "ctr-df", &path, "eth0").expect_ok("DEL");
    fx.assert_clean("after DEL");
}

/// An attachment made by a version that attached the pod program with a
/// pinned tcx link (`<root>/links/pod-ingress-<ifindex>`): DEL removes the
/// pin with the veth, and an ADD over such a leftover replaces both.
#[test]
fn del_removes_an_older_versions_tcx_link_pin() {
    use aya::programs::links::FdLink;
    use aya::programs::tc::TcAttachOptions;
    use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
    if !require_root() {
        return;
    }
    sweep_stale();
    let fx = Fixture::new("legacy-pin", true);
    let conf = fx.conf("1.0.0", &json!({}));
    let pod = Netns::new("pod-l").unwrap();
    let pod_path = pod.path().to_str().unwrap().to_owned();
    // As the older version left it: the tcx link pinned next to the filter.
    let pin_tcx = |fx: &Fixture| {
        let host_if = fx.host_links().pop().expect("a host veth");
        let pins = sluice_cni::datapath::Pins::new(&fx.root);
        fx.node
            .exec(IO, move || {
                let index = nix::net::if_::if_nametoindex(host_if.as_str()).unwrap();
                let mut prog = SchedClassifier::from_pin(pins.program()).unwrap();
                let id = prog
                    .attach_with_options(
                        &host_if,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .unwrap();
                let link = FdLink::try_from(prog.take_link(id).unwrap()).unwrap();
                link.pin(pins.link(index)).unwrap();
            })
            .unwrap();
        assert_eq!(fx.link_pins().len(), 1, "{:?}", fx.link_pins());
    };
    let old_pod = Netns::new("pod-old").unwrap();
    fx.add(&conf, "ctr-l", &old_pod, "eth0").expect_ok("ADD");
    pin_tcx(&fx);
    // ADD again (a new sandbox namespace) over the leftover veth and pin:
    // both replaced, no pin left.
    fx.add(&conf, "ctr-l", &pod, "eth0").expect_ok("ADD over a leftover");
    assert!(old_pod.ip(&["link", "show", "eth0"]).is_err(), "old pair left");
    assert_eq!(fx.link_pins(), Vec::<String>::new());
    assert_eq!(fx.pod_filters().len(), 1, "{:?}", fx.pod_filters());
    pin_tcx(&fx);
    let r = fx.verb("DEL", &conf, "ctr-l", &pod_path, "eth0");
    assert!(r.ok, "DEL: {}", r.raw);
    fx.assert_clean("after DEL of an older version's attachment");
}

/// The agent and the CNI attach the same filter: the agent's scan finds
/// the CNI's filter and replaces the program in it (no second filter), a
/// restarted agent (a new load, as on upgrade) does so again, and the filter
/// keeps its place until the veth goes.
#[test]
fn agent_replaces_the_program_in_the_cnis_filter() {
    use sluice::datapath::PinPaths;
    use sluice::datapath::loader::Datapath;
    if !require_root() {
        return;
    }
    sweep_stale();
    let fx = Fixture::new("agent-filter", true);
    let conf = fx.conf("1.0.0", &json!({}));
    let pod = Netns::new("pod-f").unwrap();
    let pod_path = pod.path().to_str().unwrap().to_owned();
    fx.add(&conf, "ctr-f", &pod, "eth0").expect_ok("ADD");
    let host_if = fx.host_links().pop().expect("a host veth");
    // The program id in our filter (`... handle 0x51 ... id N ...`).
    let filter_prog_id = || {
        let mut show = std::process::Command::new("tc");
        show.args(["-n", fx.node.name(), "filter", "show", "dev", &host_if, "ingress"]);
        let filters = sluice::testbed::run_checked(&mut show, IO).unwrap();
        let ours: Vec<&str> = filters.lines().filter(|l| l.contains("handle 0x51")).collect();
        assert_eq!(ours.len(), 1, "{filters}");
        let words: Vec<&str> = ours[0].split_whitespace().collect();
        let at = words.iter().position(|w| *w == "id").expect("a program id");
        words[at + 1].parse::<u32>().unwrap()
    };
    let mut ids = vec![filter_prog_id()];
    for agent in ["first agent", "restarted agent"] {
        let (root, name) = (fx.root.clone(), host_if.clone());
        let attached = fx
            .node
            .exec(Duration::from_secs(20), move || {
                let sizes = sluice::datapath::MapSizes::small();
                let mut dp = Datapath::load(&PinPaths::new(&root), &sizes).unwrap();
                let index = nix::net::if_::if_nametoindex(name.as_str()).unwrap();
                dp.attach_pod_device(&name, index).map(|()| dp.attached().contains(&index))
            })
            .unwrap();
        assert!(attached.unwrap_or_else(|e| panic!("{agent}: {e}")), "{agent}");
        assert_eq!(fx.pod_filters(), vec![host_if.clone()], "{agent}");
        // Each agent loaded a program of its own, now in the filter.
        let id = filter_prog_id();
        assert!(!ids.contains(&id), "{agent}: the filter still has program {id} ({ids:?})");
        ids.push(id);
    }
    let r = fx.verb("DEL", &conf, "ctr-f", &pod_path, "eth0");
    assert!(r.ok, "DEL: {}", r.raw);
    fx.assert_clean("after DEL");
}
