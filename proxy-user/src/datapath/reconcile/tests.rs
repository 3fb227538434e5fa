//! Reconciler tests against the in-memory maps: ordering, idempotence,
//! restore, failure and retry.

use std::net::Ipv4Addr;

use super::*;
use crate::{
    datapath::maps::{FakeMaps, Op, StatsMap},
    manifest::ObjectKey,
    model::BackendSpec,
};

fn fk(port: u16) -> FrontendKey {
    FrontendKey::new(Ipv4Addr::new(10, 96, 0, 10), port, Protocol::Tcp)
}

fn backend(last: u8, state: BackendState) -> BackendSpec {
    BackendSpec { addr: Ipv4Addr::new(10, 244, 0, last), port: 8080, state, local: false }
}

fn frontend(backends: &[BackendSpec]) -> Frontend {
    Frontend {
        service: ObjectKey { namespace: "default".into(), name: "echo".into() },
        port_name: "http".into(),
        backends: backends.to_vec(),
        affinity_timeout: None,
        policy: Default::default(),
        source_ranges: Vec::new(),
    }
}

/// The writes that change what the kernel does (counter entries left out).
fn lb_ops(log: &[Op]) -> Vec<Op> {
    log.iter().filter(|op| !matches!(op, Op::PutStats(..) | Op::DeleteStats(..))).cloned().collect()
}

fn desired(entries: &[(FrontendKey, Frontend)]) -> Desired {
    entries.iter().cloned().collect()
}

fn active(lasts: &[u8]) -> Vec<BackendSpec> {
    lasts.iter().map(|l| backend(*l, BackendState::Active)).collect()
}

/// Checks the kernel-visible invariant: every slot 1..=count of every master
/// entry points at an existing backend of that frontend.
fn assert_consistent(maps: &FakeMaps) {
    for (key, value) in maps.services.values() {
        if key.backend_slot != 0 {
            continue;
        }
        assert!(maps.rev_nats.contains_key(&value.rev_nat_index), "rev nat of master missing");
        for slot in 1..=value.count {
            let (_, sv) = maps
                .services
                .get(&(key.addr, key.dport, key.proto, key.scope, slot))
                .unwrap_or_else(|| panic!("slot {slot} of {} missing", value.count));
            let b = maps.backends.get(&sv.backend_id).expect("slot points at a backend");
            assert_eq!(b.rev_nat_index, value.rev_nat_index);
        }
    }
}

#[test]
fn new_service_is_written_backends_slots_revnat_then_master() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    let out = r.sync(&desired(&[(fk(80), frontend(&active(&[1, 2])))]));
    assert!(out.errors.is_empty());
    assert_eq!(out.changed, 1);
    let log = lb_ops(&r.maps().log);
    assert_eq!(
        log,
        vec![
            Op::PutBackend(1),
            Op::PutBackend(2),
            Op::PutService { slot: 1, count: 0, backend_id: 1 },
            Op::PutService { slot: 2, count: 0, backend_id: 2 },
            Op::PutRevNat(1),
            Op::PutVip(1),
            Op::PutService { slot: 0, count: 2, backend_id: 0 },
        ]
    );
    assert_consistent(r.maps());
}

#[test]
fn second_sync_with_same_state_writes_nothing() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    let d = desired(&[(fk(80), frontend(&active(&[1, 2, 3])))]);
    r.sync(&d);
    let before = r.maps().log.len();
    let out = r.sync(&d);
    assert_eq!(out.changed, 0);
    assert_eq!(r.maps().log.len(), before, "idempotent sync wrote: {:?}", &r.maps().log[before..]);
}

#[test]
fn removing_a_backend_shrinks_count_before_deleting_slot_and_backend() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    r.sync(&desired(&[(fk(80), frontend(&active(&[1, 2, 3])))]));
    let start = r.maps().log.len();
    r.sync(&desired(&[(fk(80), frontend(&active(&[1, 3])))]));
    let log = lb_ops(&r.maps().log[start..]);
    // Slot 2 now points at backend 3 (id 3), the master shrinks to 2, then
    // slot 3 and backend 2 (id 2) go.
    assert_eq!(
        log,
        vec![
            Op::PutService { slot: 2, count: 0, backend_id: 3 },
            Op::PutService { slot: 0, count: 2, backend_id: 0 },
            Op::DeleteService { slot: 3 },
            Op::DeleteBackend(2),
        ]
    );
    assert_consistent(r.maps());
}

#[test]
fn deleted_service_loses_master_first_then_everything() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    r.sync(&desired(&[(fk(80), frontend(&active(&[1, 2])))]));
    let start = r.maps().log.len();
    let out = r.sync(&Desired::new());
    assert_eq!(out.removed, 1);
    let log = lb_ops(&r.maps().log[start..]);
    assert_eq!(log[0], Op::DeleteService { slot: 0 });
    assert_eq!(log.last(), Some(&Op::DeleteRevNat(1)));
    assert!(r.maps().services.is_empty());
    assert!(r.maps().backends.is_empty());
    assert!(r.maps().rev_nats.is_empty());
}

#[test]
fn service_without_endpoints_has_master_with_zero_count() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    r.sync(&desired(&[(fk(80), frontend(&[]))]));
    let masters: Vec<_> = r.maps().services.values().filter(|(k, _)| k.backend_slot == 0).collect();
    assert_eq!(masters.len(), 1);
    assert_eq!(masters[0].1.count, 0);
}

#[test]
fn terminating_backend_is_kept_but_not_in_a_slot() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    r.sync(&desired(&[(fk(80), frontend(&active(&[1, 2])))]));
    let b = vec![backend(1, BackendState::Active), backend(2, BackendState::Terminating)];
    r.sync(&desired(&[(fk(80), frontend(&b))]));
    let maps = r.maps();
    assert_eq!(maps.backends.len(), 2);
    assert_eq!(maps.backends[&2].state, BACKEND_STATE_TERMINATING);
    let master = maps.services.values().find(|(k, _)| k.backend_slot == 0).unwrap();
    assert_eq!(master.1.count, 1);
    assert_consistent(maps);
}

#[test]
fn restore_keeps_ids_and_next_sync_is_a_no_op() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    let d = desired(&[(fk(80), frontend(&active(&[1, 2, 3]))), (fk(81), frontend(&active(&[4])))]);
    r.sync(&d);
    let mut maps = std::mem::take(&mut r.maps);
    maps.log.clear();
    let (mut r2, restored) = Reconciler::restore(maps).unwrap();
    assert_eq!(restored, RestoreOutcome { frontends: 2, backends: 4, pruned: 0 });
    let out = r2.sync(&d);
    assert_eq!(out.changed, 0);
    assert!(r2.maps().log.is_empty(), "restored state rewrote: {:?}", r2.maps().log);
    // New ids do not collide with restored ones.
    r2.sync(&desired(&[(fk(80), frontend(&active(&[1, 2, 3, 9])))]));
    assert!(r2.maps().log.contains(&Op::PutBackend(5)));
}

#[test]
fn restore_prunes_half_built_service() {
    // A crash after backends and slots were written but before the master
    // entry: nobody owns them.
    let mut maps = FakeMaps::default();
    maps.put_backend(7, &Backend::new(Ipv4Addr::new(10, 244, 0, 7), 80, 6, 0, 3)).unwrap();
    maps.put_service(&service_key(&fk(80), 1), &ServiceValue::slot(7, 3)).unwrap();
    maps.put_rev_nat(3, &RevNat::new(Ipv4Addr::new(10, 96, 0, 10), 80)).unwrap();
    let (r, restored) = Reconciler::restore(maps).unwrap();
    assert_eq!(restored.frontends, 0);
    assert_eq!(restored.pruned, 3);
    assert!(r.maps().services.is_empty() && r.maps().backends.is_empty());
    assert!(r.maps().rev_nats.is_empty());
}

#[test]
fn full_map_fails_the_frontend_without_a_visible_half_service_and_retries() {
    let maps = FakeMaps { service_capacity: Some(3), ..FakeMaps::default() };
    let (mut r, _) = Reconciler::restore(maps).unwrap();
    let d = desired(&[(fk(80), frontend(&active(&[1, 2, 3])))]);
    let out = r.sync(&d);
    assert_eq!(out.errors.len(), 1);
    assert!(matches!(out.errors[0].1, Error::MapFull { .. }), "{:?}", out.errors[0].1);
    // Slots were written but no master: the kernel sees no service at all.
    assert!(r.maps().services.values().all(|(k, _)| k.backend_slot != 0));
    // Room appears: the retry completes without leaking or duplicating.
    r.maps.service_capacity = None;
    let out = r.sync(&d);
    assert!(out.errors.is_empty());
    assert_eq!(r.maps().backends.len(), 3);
    assert_eq!(r.maps().services.len(), 4);
    assert_consistent(r.maps());
    // The address counts this frontend once, although its first attempt
    // stopped after counting it (a double count would keep rejecting the
    // address's other ports after the frontend is gone).
    let addr = proxy_common::addr_to_map(fk(80).addr);
    assert_eq!(r.maps().vips.get(&addr), Some(&1));
    r.sync(&Desired::new());
    assert_eq!(r.maps().vips.get(&addr), None);
}

#[test]
fn per_frontend_backend_ids_are_independent() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    r.sync(&desired(&[(fk(80), frontend(&active(&[1, 2]))), (fk(81), frontend(&active(&[1, 2])))]));
    assert_eq!(r.maps().backends.len(), 4);
    // Removing backend 1 from port 80 keeps it for port 81.
    r.sync(&desired(&[(fk(80), frontend(&active(&[2]))), (fk(81), frontend(&active(&[1, 2])))]));
    assert_eq!(r.maps().backends.len(), 3);
    assert_consistent(r.maps());
}

#[test]
fn frontend_addresses_are_counted_and_released() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    let vip = proxy_common::addr_to_map(fk(80).addr);
    r.sync(&desired(&[(fk(80), frontend(&active(&[1]))), (fk(81), frontend(&[]))]));
    assert_eq!(r.maps().vips.get(&vip), Some(&2));
    r.sync(&desired(&[(fk(81), frontend(&[]))]));
    assert_eq!(r.maps().vips.get(&vip), Some(&1), "one frontend left on the address");
    r.sync(&Desired::new());
    assert!(r.maps().vips.is_empty(), "address released with its last frontend");
}

#[test]
fn restore_recounts_frontend_addresses() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    r.sync(&desired(&[(fk(80), frontend(&active(&[1]))), (fk(81), frontend(&active(&[2])))]));
    let mut maps = std::mem::take(&mut r.maps);
    let vip = proxy_common::addr_to_map(fk(80).addr);
    maps.vips.insert(vip, 7); // wrong count
    maps.vips.insert(proxy_common::addr_to_map(Ipv4Addr::new(10, 96, 9, 9)), 1); // orphan
    let (r2, restored) = Reconciler::restore(maps).unwrap();
    assert_eq!(restored.pruned, 1);
    assert_eq!(r2.maps().vips.len(), 1);
    assert_eq!(r2.maps().vips.get(&vip), Some(&2));
}

#[test]
fn counters_are_the_kernels_to_create_and_die_with_their_frontend_and_backends() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    r.sync(&desired(&[(fk(80), frontend(&active(&[1, 2])))]));
    // Programming a service writes no counters (the kernel creates them on
    // the first packet).
    assert!(!r.maps().log.iter().any(|o| matches!(o, Op::PutStats(..))), "{:?}", r.maps().log);
    assert!(r.maps().stats.is_empty());
    // The kernel counted traffic for the frontend and both backends.
    for key in [(StatsMap::Service, 1), (StatsMap::Backend, 1), (StatsMap::Backend, 2)] {
        r.maps.stats.insert(key, ());
    }
    r.sync(&desired(&[(fk(80), frontend(&active(&[1])))]));
    assert!(!r.maps().stats.contains_key(&(StatsMap::Backend, 2)), "removed backend's counters");
    assert!(r.maps().stats.contains_key(&(StatsMap::Backend, 1)), "live backend's counters kept");
    r.sync(&Desired::new());
    assert!(r.maps().stats.is_empty(), "{:?}", r.maps().stats);
}

#[test]
fn ids_handed_out_again_after_wrapping_start_with_clean_counters() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    // Counters a late packet of an earlier holder of backend id 1 and
    // reverse-NAT index 1 left behind, and one of an id not handed out.
    for key in [(StatsMap::Backend, 1), (StatsMap::Service, 1), (StatsMap::Backend, 7)] {
        r.maps.stats.insert(key, ());
    }
    r.next_backend_id = u32::MAX;
    r.next_rev_nat = u32::MAX;
    r.sync(&desired(&[(fk(80), frontend(&active(&[1, 2]))), (fk(81), frontend(&active(&[3])))]));
    let ids: BTreeSet<u32> =
        r.applied.values().flat_map(|a| a.backends.values().map(|b| b.id)).collect();
    assert_eq!(ids, BTreeSet::from([u32::MAX, 1, 2]), "the ids wrapped");
    assert!(!r.maps().stats.contains_key(&(StatsMap::Backend, 1)), "{:?}", r.maps().stats);
    assert!(!r.maps().stats.contains_key(&(StatsMap::Service, 1)), "{:?}", r.maps().stats);
    assert!(r.maps().stats.contains_key(&(StatsMap::Backend, 7)), "not handed out: untouched");
}

#[test]
fn restore_keeps_live_counters_and_prunes_orphans() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    r.sync(&desired(&[(fk(80), frontend(&active(&[1])))]));
    let mut maps = std::mem::take(&mut r.maps);
    // The kernel created the backend's counters; not the frontend's yet.
    maps.stats.insert((StatsMap::Backend, 1), ());
    maps.stats.insert((StatsMap::Backend, 99), ());
    maps.log.clear();
    let (r2, restored) = Reconciler::restore(maps).unwrap();
    assert_eq!(restored.pruned, 1);
    assert!(
        !r2.maps().stats.contains_key(&(StatsMap::Service, 1)),
        "missing one left to the kernel"
    );
    assert!(r2.maps().stats.contains_key(&(StatsMap::Backend, 1)), "live one kept");
    assert!(!r2.maps().log.contains(&Op::PutStats(StatsMap::Backend, 1)), "not reset");
}

#[test]
fn affinity_is_carried_by_the_master_entry_and_follows_changes() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    let mut f = frontend(&active(&[1, 2]));
    f.affinity_timeout = Some(30);
    r.sync(&desired(&[(fk(80), f.clone())]));
    let master = |r: &Reconciler<FakeMaps>| {
        r.maps().services.values().find(|(k, _)| k.backend_slot == 0).unwrap().1
    };
    assert_eq!(master(&r).affinity_timeout(), Some(30));
    assert_eq!(master(&r).count, 2);
    // Restored with it, so an unchanged state writes nothing.
    let maps = std::mem::take(&mut r.maps);
    let (mut r, _) = Reconciler::restore(maps).unwrap();
    let before = r.maps().log.len();
    r.sync(&desired(&[(fk(80), f.clone())]));
    assert_eq!(r.maps().log.len(), before);
    // Turning it off rewrites the master entry only.
    f.affinity_timeout = None;
    r.sync(&desired(&[(fk(80), f)]));
    assert_eq!(master(&r).affinity_timeout(), None);
    assert_eq!(
        lb_ops(&r.maps().log[before..]),
        vec![Op::PutService { slot: 0, count: 2, backend_id: 0 }]
    );
}

#[test]
fn removed_udp_backends_get_their_conntrack_flushed_once_per_sync() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    let udp = FrontendKey { proto: Protocol::Udp, ..fk(53) };
    r.sync(&desired(&[(udp, frontend(&active(&[1, 2, 3]))), (fk(80), frontend(&active(&[1, 2])))]));
    let start = r.maps().log.len();
    let outcome =
        r.sync(&desired(&[(udp, frontend(&active(&[1]))), (fk(80), frontend(&active(&[1])))]));
    let flushes: Vec<_> =
        r.maps().log[start..].iter().filter(|op| matches!(op, Op::FlushCt(_))).cloned().collect();
    // Backends 2 and 3 of the UDP frontend (ids 2, 3); not the TCP one's.
    assert_eq!(flushes, vec![Op::FlushCt(vec![2, 3])]);
    let rev = r.applied[&udp].rev_nat_index;
    // The same backends by frontend and address, for socket termination.
    let want: Vec<RemovedBackend> = [2, 3]
        .iter()
        .map(|l| RemovedBackend {
            rev_nat_index: rev,
            addr: Ipv4Addr::new(10, 244, 0, *l),
            port: 8080,
        })
        .collect();
    let mut got = outcome.removed_udp.clone();
    got.sort_unstable();
    assert_eq!(got, want);
    let start = r.maps().log.len();
    r.sync(&desired(&[(udp, frontend(&active(&[1]))), (fk(80), frontend(&active(&[1])))]));
    assert!(!r.maps().log[start..].iter().any(|op| matches!(op, Op::FlushCt(_))));
}

#[test]
fn a_removed_udp_frontend_reports_its_backends_for_socket_termination() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    let udp = FrontendKey { proto: Protocol::Udp, ..fk(53) };
    r.sync(&desired(&[(udp, frontend(&active(&[1, 2])))]));
    let rev = r.applied[&udp].rev_nat_index;
    let outcome = r.sync(&desired(&[]));
    let mut got = outcome.removed_udp;
    got.sort_unstable();
    assert_eq!(
        got,
        vec![
            RemovedBackend { rev_nat_index: rev, addr: Ipv4Addr::new(10, 244, 0, 1), port: 8080 },
            RemovedBackend { rev_nat_index: rev, addr: Ipv4Addr::new(10, 244, 0, 2), port: 8080 },
        ]
    );
    // Nothing is reported twice.
    assert!(r.sync(&desired(&[])).removed_udp.is_empty());
}

#[test]
fn frontends_of_one_service_port_with_the_same_backends_share_an_affinity_group() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    let mut f = frontend(&active(&[1, 2]));
    f.affinity_timeout = Some(30);
    let cluster_ip = fk(80);
    let node_port = FrontendKey::new(Ipv4Addr::UNSPECIFIED, 30080, Protocol::Tcp);
    let external_ip = FrontendKey { addr: Ipv4Addr::new(198, 18, 1, 9), ..fk(80) };
    // An external frontend with a Local policy serves only local endpoints.
    let mut local = frontend(&active(&[2]));
    local.affinity_timeout = Some(30);
    let mut other_port = f.clone();
    other_port.port_name = "metrics".into();
    let other = FrontendKey::new(Ipv4Addr::new(10, 96, 0, 10), 9090, Protocol::Tcp);
    let state = desired(&[
        (cluster_ip, f.clone()),
        (node_port, f.clone()),
        (external_ip, local.clone()),
        (other, other_port.clone()),
    ]);
    r.sync(&state);
    let master_of = |r: &Reconciler<FakeMaps>, k: &FrontendKey| {
        r.maps().services[&(
            service_key(k, 0).addr,
            service_key(k, 0).dport,
            k.proto.number(),
            k.scope.number(),
            0,
        )]
            .1
    };
    let group = master_of(&r, &cluster_ip).affinity_id;
    let revs = [cluster_ip, node_port].map(|k| r.applied[&k].rev_nat_index);
    assert_eq!(group, revs[0].min(revs[1]), "named by the lowest reverse-NAT index");
    assert_eq!(master_of(&r, &node_port).affinity_id, group);
    assert_eq!(master_of(&r, &node_port).affinity_group(), group);
    assert_eq!(master_of(&r, &external_ip).affinity_id, 0, "other backends: its own group");
    assert_eq!(master_of(&r, &other).affinity_id, 0, "another service port");
    // Restored as written: nothing to rewrite.
    let maps = std::mem::take(&mut r.maps);
    let (mut r, _) = Reconciler::restore(maps).unwrap();
    let before = r.maps().log.len();
    r.sync(&state);
    assert_eq!(r.maps().log.len(), before);
    // Without affinity there is no group.
    let mut plain = f.clone();
    plain.affinity_timeout = None;
    r.sync(&desired(&[(cluster_ip, plain.clone()), (node_port, plain)]));
    assert_eq!(master_of(&r, &cluster_ip).affinity_id, 0);
    assert_eq!(master_of(&r, &node_port).affinity_id, 0);
    // A frontend left alone returns to its own group.
    r.sync(&desired(&[(cluster_ip, f.clone()), (node_port, f.clone())]));
    assert_ne!(master_of(&r, &node_port).affinity_id, 0);
    r.sync(&desired(&[(node_port, f)]));
    assert_eq!(master_of(&r, &node_port).affinity_id, 0);
}

#[test]
fn affinity_groups_follow_changes_that_name_only_one_frontend() {
    use crate::model::cache::Changes;
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    let mut f = frontend(&active(&[1, 2]));
    f.affinity_timeout = Some(30);
    let cluster_ip = fk(80);
    let node_port = FrontendKey::new(Ipv4Addr::UNSPECIFIED, 30080, Protocol::Tcp);
    let group_of = |r: &Reconciler<FakeMaps>, k: &FrontendKey| {
        r.maps().services[&(
            service_key(k, 0).addr,
            service_key(k, 0).dport,
            k.proto.number(),
            k.scope.number(),
            0,
        )]
            .1
            .affinity_group()
    };
    r.sync(&desired(&[(cluster_ip, f.clone())]));
    // The NodePort is added; the change names it alone.
    let both = desired(&[(cluster_ip, f.clone()), (node_port, f.clone())]);
    r.sync_changes(&both, &Changes::Keys([node_port].into()));
    assert_eq!(group_of(&r, &node_port), group_of(&r, &cluster_ip));
    // The ClusterIP goes; the change names it alone: the NodePort, alone
    // now, is rewritten to its own group (the old id may be reused).
    let only = desired(&[(node_port, f)]);
    r.sync_changes(&only, &Changes::Keys([cluster_ip].into()));
    assert_eq!(group_of(&r, &node_port), r.applied[&node_port].rev_nat_index);
}

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn with_ranges(backends: &[BackendSpec], ranges: &[&str]) -> Frontend {
    Frontend { source_ranges: ranges.iter().map(|r| net(r)).collect(), ..frontend(backends) }
}

fn master(r: &Reconciler<FakeMaps>, fk: &FrontendKey) -> ServiceValue {
    r.maps().services.values().find(|(k, _)| *k == service_key(fk, 0)).unwrap().1
}

/// The source-range writes and master writes, in order.
fn range_ops(log: &[Op]) -> Vec<Op> {
    log.iter()
        .filter(|op| {
            matches!(
                op,
                Op::PutSourceRange(..)
                    | Op::DeleteSourceRange(..)
                    | Op::PutService { slot: 0, .. }
                    | Op::DeleteService { slot: 0 }
            )
        })
        .cloned()
        .collect()
}

#[test]
fn source_ranges_are_written_before_the_flag_and_removed_after_it() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    let lb = FrontendKey { addr: Ipv4Addr::new(203, 0, 113, 10), ..fk(80) };
    let master_op = Op::PutService { slot: 0, count: 1, backend_id: 0 };

    // New frontend with ranges: both ranges, then the master with the flag.
    r.sync(&desired(&[(lb, with_ranges(&active(&[1]), &["198.18.1.0/28", "10.0.0.0/8"]))]));
    assert_eq!(
        range_ops(&r.maps().log),
        vec![
            Op::PutSourceRange(1, net("10.0.0.0/8")),
            Op::PutSourceRange(1, net("198.18.1.0/28")),
            master_op.clone(),
        ]
    );
    assert_ne!(master(&r, &lb).flags & SVC_FLAG_SOURCE_RANGES, 0);

    // A changed list: the new range first, the old one after (the master is
    // unchanged, the flag stays).
    let start = r.maps().log.len();
    r.sync(&desired(&[(lb, with_ranges(&active(&[1]), &["198.18.1.0/28", "192.0.2.0/24"]))]));
    assert_eq!(
        range_ops(&r.maps().log[start..]),
        vec![
            Op::PutSourceRange(1, net("192.0.2.0/24")),
            Op::DeleteSourceRange(SourceRangeEntry::Range(1, net("10.0.0.0/8"))),
        ]
    );

    // No ranges any more: the flag goes first, then the ranges.
    let start = r.maps().log.len();
    r.sync(&desired(&[(lb, with_ranges(&active(&[1]), &[]))]));
    assert_eq!(
        range_ops(&r.maps().log[start..]),
        vec![
            master_op,
            Op::DeleteSourceRange(SourceRangeEntry::Range(1, net("192.0.2.0/24"))),
            Op::DeleteSourceRange(SourceRangeEntry::Range(1, net("198.18.1.0/28"))),
        ]
    );
    assert_eq!(master(&r, &lb).flags & SVC_FLAG_SOURCE_RANGES, 0);
    assert!(r.maps().src_ranges.is_empty());

    // Back on, then the service goes: master first, then its ranges.
    r.sync(&desired(&[(lb, with_ranges(&active(&[1]), &["198.18.1.0/28"]))]));
    let start = r.maps().log.len();
    r.sync(&Desired::new());
    assert_eq!(
        range_ops(&r.maps().log[start..]),
        vec![
            Op::DeleteService { slot: 0 },
            Op::DeleteSourceRange(SourceRangeEntry::Range(1, net("198.18.1.0/28"))),
        ]
    );
    assert!(r.maps().src_ranges.is_empty() && r.maps().services.is_empty());
    assert!(r.maps().range_violations.is_empty(), "{:?}", r.maps().range_violations);
}

#[test]
fn restore_adopts_source_ranges_of_live_frontends_and_prunes_the_rest() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    let d = desired(&[(fk(80), with_ranges(&active(&[1]), &["198.18.1.0/28"]))]);
    r.sync(&d);
    let mut maps = std::mem::take(&mut r.maps);
    // A range of a frontend that no longer exists, and a key no writer makes.
    maps.src_ranges.insert(SourceRangeEntry::Range(42, net("192.0.2.0/24")));
    maps.src_ranges.insert(SourceRangeEntry::Invalid(8, 1, 0));
    maps.log.clear();
    let (mut r2, restored) = Reconciler::restore(maps).unwrap();
    assert_eq!(restored.pruned, 2);
    assert_eq!(
        r2.maps().src_ranges.iter().copied().collect::<Vec<_>>(),
        vec![SourceRangeEntry::Range(1, net("198.18.1.0/28"))]
    );
    // Adopted: the same desired state writes nothing.
    let before = r2.maps().log.len();
    r2.sync(&d);
    assert_eq!(r2.maps().log.len(), before, "rewrote: {:?}", &r2.maps().log[before..]);
}

#[test]
fn a_two_scope_frontend_writes_its_internal_entries_before_the_flag_that_sends_traffic_there() {
    let (mut r, _) = Reconciler::restore(FakeMaps::default()).unwrap();
    let outside_key = FrontendKey::new(Ipv4Addr::UNSPECIFIED, 30080, Protocol::Tcp);
    let inside_key = outside_key.in_scope(Scope::Internal);
    let external = FrontendPolicy { external: true, drop_when_empty: true, ..Default::default() };
    let mut outside = frontend(&active(&[1]));
    outside.policy = FrontendPolicy { local: true, two_scopes: true, ..external };
    let mut inside = frontend(&active(&[1, 2]));
    inside.policy = external;
    let state = desired(&[(outside_key, outside.clone()), (inside_key, inside)]);
    r.sync(&state);
    let master = |r: &Reconciler<FakeMaps>, k: &FrontendKey| {
        let key = service_key(k, 0);
        r.maps().services.get(&(key.addr, key.dport, key.proto, key.scope, 0)).map(|(_, v)| *v)
    };
    let (o, i) = (master(&r, &outside_key).unwrap(), master(&r, &inside_key).unwrap());
    assert_eq!((o.count, i.count), (1, 2));
    assert_ne!(o.flags & SVC_FLAG_TWO_SCOPES, 0);
    assert_eq!(o.flags & SVC_FLAG_SCOPE_INTERNAL, 0);
    assert_ne!(i.flags & SVC_FLAG_SCOPE_INTERNAL, 0);
    assert_eq!(i.flags & (SVC_FLAG_TWO_SCOPES | SVC_FLAG_LOCAL), 0);
    assert_ne!(o.rev_nat_index, i.rev_nat_index, "each scope has its own reverse NAT");
    assert_consistent(r.maps());
    // The internal master (count 2) is written before the flagged one.
    let masters: Vec<u16> = lb_ops(&r.maps().log)
        .iter()
        .filter_map(|op| match op {
            Op::PutService { slot: 0, count, .. } => Some(*count),
            _ => None,
        })
        .collect();
    assert_eq!(masters, [2, 1]);
    // Restored as written: nothing to rewrite.
    let maps = std::mem::take(&mut r.maps);
    let (mut r, outcome) = Reconciler::restore(maps).unwrap();
    assert_eq!((outcome.frontends, outcome.pruned), (2, 0));
    let before = r.maps().log.len();
    r.sync(&state);
    assert_eq!(r.maps().log.len(), before);
    // Back to one scope: the internal entries go, the flag with them.
    outside.policy.two_scopes = false;
    r.sync(&desired(&[(outside_key, outside)]));
    assert!(master(&r, &inside_key).is_none());
    assert!(r.maps().services.values().all(|(k, _)| k.scope == 0));
    assert_eq!(master(&r, &outside_key).unwrap().flags & SVC_FLAG_TWO_SCOPES, 0);
    assert_consistent(r.maps());
}
