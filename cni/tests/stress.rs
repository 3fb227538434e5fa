//! 500 ADD/DEL cycles from 4 concurrent workers (each its own plugin
//! processes), against one IPAM store and one endpoint map; afterwards no
//! link, address, route, IPAM record, endpoint entry or link pin is left.
//! Needs root; skips otherwise. Takes about 25 s here (a veth deletion alone
//! is ~24 ms of kernel time).

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Fixture, result_ip};
use serde_json::json;
use sluice::testbed::{Netns, require_root};

const WORKERS: usize = 4;
const CYCLES_PER_WORKER: usize = 125;

#[test]
fn parallel_add_del_cycles_leak_nothing() {
    if !require_root() {
        return;
    }
    let fx = Arc::new(Fixture::new("stress", true));
    // A small pool: concurrent workers must never get the same address.
    let conf = fx.conf("1.1.0", &json!({"podCIDR": "10.244.0.0/28"}));
    let pods: Vec<Netns> = (0..WORKERS).map(|i| Netns::new(&format!("st-{i}")).unwrap()).collect();
    let paths: Vec<String> = pods.iter().map(|p| p.path().to_str().unwrap().to_owned()).collect();
    let live = Arc::new(Mutex::new(BTreeSet::new()));
    let started = Instant::now();
    std::thread::scope(|s| {
        for (w, path) in paths.iter().enumerate() {
            let (fx, conf, live) = (fx.clone(), conf.clone(), live.clone());
            s.spawn(move || {
                for n in 0..CYCLES_PER_WORKER {
                    let id = format!("w{w}-c{n}");
                    let env = |verb| {
                        [
                            ("CNI_COMMAND", verb),
                            ("CNI_CONTAINERID", id.as_str()),
                            ("CNI_NETNS", path.as_str()),
                            ("CNI_IFNAME", "eth0"),
                        ]
                    };
                    let r = fx.run(&env("ADD"), conf.to_string().as_bytes());
                    let r = r.expect_ok(&format!("ADD {id}"));
                    let ip = result_ip(&r);
                    assert!(live.lock().unwrap().insert(ip), "{ip} handed out twice at once");
                    live.lock().unwrap().remove(&ip);
                    let r = fx.run(&env("DEL"), conf.to_string().as_bytes());
                    assert!(r.ok, "DEL {id}: {}", r.raw);
                }
            });
        }
    });
    let took = started.elapsed();
    eprintln!(
        "{} ADD/DEL cycles with {WORKERS} workers took {took:?}",
        WORKERS * CYCLES_PER_WORKER
    );
    assert!(took < Duration::from_secs(120), "took {took:?}");
    fx.assert_clean("after the stress run");
    for (p, path) in pods.iter().zip(&paths) {
        let links = p.ip(&["-o", "link", "show"]).unwrap();
        assert_eq!(links.lines().count(), 1, "{path}: only lo is left: {links}");
        let addrs = p.ip(&["-o", "-4", "addr", "show"]).unwrap();
        assert!(!addrs.contains("10.244."), "{path}: leaked address: {addrs}");
        let routes = p.ip(&["route", "show"]).unwrap();
        assert!(routes.trim().is_empty(), "{path}: leaked routes: {routes}");
    }
    let neigh = fx.node.ip(&["neigh", "show"]).unwrap();
    assert!(!neigh.contains("10.244."), "leaked neighbours: {neigh}");
}
