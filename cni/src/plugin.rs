//! One function per CNI verb, as in the reference plugins. Each takes the
//! request and returns the JSON value to print on stdout (`Null`: nothing).
//!
//! # Wiring (what ADD sets up)
//! ```text
//!  pod netns                               node netns (the caller's)
//!  CNI_IFNAME  <------- veth pair ------->  sl<12 hex>
//!   10.244.0.5/32                            route 10.244.0.5/32 scope link
//!   169.254.1.1 dev IF scope link            neigh 10.244.0.5 -> pod MAC (permanent)
//!   default via 169.254.1.1                  tc ingress: sl_pod_ingress (clsact, bpf da)
//!   neigh 169.254.1.1 -> host MAC (perm.)    SL_ENDPOINTS[10.244.0.5] = {ifindex, MACs}
//! ```
//! The gateway 169.254.1.1 exists nowhere: the pod resolves it with a static
//! neighbour to the host veth's MAC (as Calico and Cilium do), so every pod's
//! packet arrives on its host veth, where the pod program sees it, and the
//! node routes by /32 host routes. No bridge, no ARP proxying, no address on
//! the host side. Node sysctls: `net.ipv4.ip_forward=1` and `rp_filter=0` on
//! the host veth.
//!
//! ADD is transactional: [`AddGuard`] undoes the address allocation, the veth
//! (and with it everything on it, the tc filter too) and the endpoint entry
//! unless it is disarmed at the end. DEL needs only the container ID and ifname: the
//! host veth's name is derived from them, and deleting it deletes the pair.

use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;

use proxy_common::EndpointInfo;
use rtnetlink::Handle;
use serde_json::Value;

use crate::config::{Env, FALLBACK_MTU, NetConf};
use crate::datapath::Pins;
use crate::names::{host_veth_name, is_host_veth_name};
use crate::netlink::{self, GATEWAY, mac_string, parse_mac};
use crate::result::{self, Wired};
use crate::rtnl::{LinkEvents, Rtnl};
use crate::skel::Request;
use crate::store::{Record, Store};
use crate::version::{self, VersionReply};
use crate::{Error, Result, delegate, timing};

/// VERSION: the versions this plugin supports, answered in the config's version.
pub fn cmd_version(request: &Request) -> Result<Value> {
    let reply = VersionReply {
        cni_version: version::reply_version(&request.stdin).to_owned(),
        supported_versions: version::SUPPORTED.iter().map(|&v| v.to_owned()).collect(),
    };
    Ok(serde_json::to_value(reply).expect("VersionReply serialises"))
}

/// ADD: veth, address, routes and endpoint entry for a pod.
pub fn cmd_add(request: &Request) -> Result<Value> {
    let conf = NetConf::parse(&request.stdin)?;
    let env = request.env.clone();
    env.container_id()?;
    env.ifname()?;
    env.netns()?;
    netlink::run(move || async move { add(&env, &conf).await })
}

/// DEL: undo ADD; idempotent. Runs on the calling thread without an
/// async runtime (see [`del`]).
pub fn cmd_del(request: &Request) -> Result<Value> {
    let conf = NetConf::parse(&request.stdin)?;
    let env = &request.env;
    env.container_id()?;
    env.ifname()?;
    del(env, &conf)
}

/// CHECK: compare the live state with `prevResult`.
pub fn cmd_check(request: &Request) -> Result<Value> {
    let conf = NetConf::parse(&request.stdin)?;
    let env = request.env.clone();
    env.container_id()?;
    env.ifname()?;
    env.netns()?;
    if conf.prev_result.is_none() {
        return Err(Error::InvalidConfig("CHECK needs prevResult".into()));
    }
    netlink::run(move || async move { check(&env, &conf).await })
}

fn require_1_1(conf: &NetConf, verb: &str) -> Result<()> {
    if conf.version_at_least(1, 1) {
        Ok(())
    } else {
        Err(Error::IncompatibleVersion(format!(
            "{verb} needs cniVersion 1.1.0 or newer, the config has {}",
            conf.cni_version
        )))
    }
}

/// STATUS: readiness to accept ADD.
pub fn cmd_status(request: &Request) -> Result<Value> {
    let conf = NetConf::parse(&request.stdin)?;
    require_1_1(&conf, "STATUS")?;
    if let Err(e) = Pins::new(&conf.bpffs_root).check_ready() {
        return Err(Error::NotAvailable(e.to_string()));
    }
    if conf.ipam.is_none() {
        let store = Store::open(&conf.data_dir, &conf.name)
            .map_err(|e| Error::NotAvailable(format!("IPAM store: {e}")))?;
        if store.state.free(&conf.ranges) == 0 {
            let ranges: Vec<_> = conf.ranges.iter().map(ToString::to_string).collect();
            return Err(Error::NotAvailable(format!(
                "address pool exhausted: no free address in {}",
                ranges.join(", ")
            )));
        }
    }
    Ok(Value::Null)
}

/// GC: release what no attachment in `cni.dev/valid-attachments` owns.
pub fn cmd_gc(request: &Request) -> Result<Value> {
    let conf = NetConf::parse(&request.stdin)?;
    require_1_1(&conf, "GC")?;
    if conf.valid_attachments.is_none() {
        return Err(Error::InvalidConfig("GC needs cni.dev/valid-attachments".into()));
    }
    let env = request.env.clone();
    netlink::run(move || async move { gc(&env, &conf).await })
}

// ---------------------------------------------------------------------------

/// Undoes a half-done ADD on drop unless disarmed.
struct AddGuard<'a> {
    env: &'a Env,
    conf: &'a NetConf,
    pins: Pins,
    container_id: String,
    ifname: String,
    /// The IPAM record was created by this ADD (release it).
    record_created: bool,
    /// The delegate's ADD succeeded (DEL it).
    delegate_added: bool,
    host_if: Option<String>,
    endpoint: Option<Ipv4Addr>,
    armed: bool,
}

impl AddGuard<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for AddGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Best effort, in reverse order. Errors are dropped: the ADD's own
        // error is what the runtime sees (and it will call DEL as well).
        if let Some(ip) = self.endpoint {
            let _ = self.pins.remove_endpoint(ip);
        }
        if let Some(host_if) = &self.host_if {
            // Drop cannot await: a blocking socket (in this thread's
            // namespace, the node's).
            let _ = Rtnl::open().and_then(|mut r| r.delete_link_named(host_if));
        }
        if self.delegate_added {
            let _ = delegate::exec(self.env, self.conf, "DEL", &self.conf.raw);
        }
        if (self.record_created || self.delegate_added)
            && let Ok(mut st) = Store::open(&self.conf.data_dir, &self.conf.name)
            && st.state.remove(&self.container_id, &self.ifname).is_some()
        {
            st.mark_dirty();
            let _ = st.save();
        }
    }
}

async fn add(env: &Env, conf: &NetConf) -> Result<Value> {
    let container_id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns = env.netns()?;
    let pins = Pins::new(&conf.bpffs_root);
    pins.check_ready()?;
    let ns = netlink::open_netns(netns)?;
    let node = netlink::connect()?;
    let pod = netlink::connect_in(&ns, netns)?;
    let host_if = host_veth_name(container_id, ifname);
    timing::mark("connected");

    // A host veth of this attachment is a leftover of an earlier ADD (the
    // name is derived from it): replace it, with its link pin.
    teardown(&node, &pins, &host_if, None, None).await?;
    if netlink::link_by_name(&pod, ifname).await?.is_some() {
        return Err(Error::IfnameTaken { ifname: ifname.to_owned(), netns: netns.to_owned() });
    }
    timing::mark("stale checked");

    let mut guard = AddGuard {
        env,
        conf,
        pins: pins.clone(),
        container_id: container_id.to_owned(),
        ifname: ifname.to_owned(),
        record_created: false,
        delegate_added: false,
        host_if: None,
        endpoint: None,
        armed: true,
    };

    // Address.
    let ip = {
        let mut st = Store::open(&conf.data_dir, &conf.name)?;
        let existing = st.state.find(container_id, ifname).map(|r| r.ip);
        let ip = if conf.ipam.is_some() {
            drop(st);
            let r = delegate::exec(env, conf, "ADD", &conf.raw)?;
            guard.delegate_added = true;
            let ip = delegate::first_ipv4(&r, conf.ipam_type.as_deref().unwrap_or(""))?;
            st = Store::open(&conf.data_dir, &conf.name)?;
            st.state.remove(container_id, ifname);
            st.state.attachments.push(new_record(container_id, ifname, ip, &host_if, netns, true));
            ip
        } else if let Some(ip) = existing {
            ip
        } else {
            let ip = st.state.allocate(&conf.ranges)?;
            st.state.attachments.push(new_record(container_id, ifname, ip, &host_if, netns, false));
            guard.record_created = true;
            ip
        };
        st.mark_dirty();
        st.save()?;
        ip
    };
    env.fail_point("ipam")?;
    timing::mark("ipam");

    // Links.
    let mtu = match conf.mtu {
        Some(m) => m,
        None => netlink::default_mtu(&node).await?.unwrap_or(FALLBACK_MTU),
    };
    netlink::create_veth(&node, &host_if, ifname, &ns, mtu).await?;
    guard.host_if = Some(host_if.clone());
    env.fail_point("veth")?;
    timing::mark("veth");
    let host = netlink::link_by_name(&node, &host_if).await?.ok_or_else(|| Error::Netlink {
        what: format!("looking up {host_if}"),
        reason: "created, but gone".into(),
        errno: None,
    })?;
    let pod_link = netlink::link_by_name(&pod, ifname).await?.ok_or_else(|| Error::Netlink {
        what: format!("looking up {ifname} in {netns}"),
        reason: "created, but gone".into(),
        errno: None,
    })?;

    // The pod program, while the host veth is still down (the filter goes
    // with the veth if ADD fails later).
    pins.attach(&host_if)?;
    env.fail_point("attach")?;
    timing::mark("attach");

    // Node side.
    netlink::ensure_sysctl("net.ipv4.ip_forward", "1")?;
    netlink::ensure_sysctl(&format!("net.ipv4.conf.{host_if}.rp_filter"), "0")?;
    netlink::set_up(&node, host.index, &host_if).await?;
    netlink::add_route(&node, host.index, ip, 32, None).await?;
    netlink::add_neighbour(&node, host.index, ip, pod_link.mac).await?;
    env.fail_point("node")?;
    timing::mark("node side");

    // Pod side.
    let i = pod_link.index;
    netlink::set_up(&pod, i, ifname).await?;
    netlink::add_address(&pod, i, ip, 32).await?;
    // A second sluice interface in the same pod keeps the first one's
    // gateway and default route (EEXIST): one default route per pod.
    let routes_added = match netlink::add_route(&pod, i, GATEWAY, 32, None).await {
        Ok(()) => true,
        Err(e) if netlink::is_exists(&e) => false,
        Err(e) => return Err(e),
    };
    if routes_added {
        netlink::add_route(&pod, i, Ipv4Addr::UNSPECIFIED, 0, Some(GATEWAY)).await?;
    }
    netlink::add_neighbour(&pod, i, GATEWAY, host.mac).await?;
    env.fail_point("pod")?;
    timing::mark("pod side");

    // Data path.
    let info = EndpointInfo {
        ifindex: host.index,
        flags: 0,
        mac: pod_link.mac,
        node_mac: host.mac,
        _pad: [0; 4],
    };
    pins.insert_endpoint(ip, info)?;
    guard.endpoint = Some(ip);
    env.fail_point("endpoint")?;
    timing::mark("endpoint");

    {
        let mut st = Store::open(&conf.data_dir, &conf.name)?;
        if let Some(r) = st.state.find_mut(container_id, ifname) {
            r.host_ifindex = host.index;
            st.mark_dirty();
        }
        st.save()?;
    }
    guard.disarm();
    timing::mark("store saved");

    let wired = Wired {
        host_if,
        host_mac: mac_string(host.mac),
        pod_if: ifname.to_owned(),
        pod_mac: mac_string(pod_link.mac),
        netns: netns.to_owned(),
        mtu,
        ip,
        gateway: GATEWAY,
    };
    Ok(result::render(conf.cni_version, &wired, conf.prev_result.as_ref(), conf.dns.as_ref()))
}

fn new_record(
    container_id: &str,
    ifname: &str,
    ip: Ipv4Addr,
    host_if: &str,
    netns: &str,
    delegated: bool,
) -> Record {
    Record {
        container_id: container_id.to_owned(),
        ifname: ifname.to_owned(),
        ip,
        host_if: host_if.to_owned(),
        host_ifindex: 0,
        delegated,
        netns: netns.to_owned(),
    }
}

/// Removes the host veth, the endpoint entry and the link pin of one
/// attachment. Everything already gone is fine.
async fn teardown(
    node: &Handle,
    pins: &Pins,
    host_if: &str,
    ip: Option<Ipv4Addr>,
    ifindex: Option<u32>,
) -> Result<()> {
    let link = netlink::link_by_name(node, host_if).await?;
    let ifindex = link.as_ref().map(|l| l.index).or(ifindex.filter(|i| *i != 0));
    if let Some(ip) = ip {
        pins.remove_own_endpoint(ip, ifindex)?;
    }
    // The link (and with it the pod program's filter), then a tcx link pin
    // that an older version left: releasing the tcx link of a live
    // interface waits for an RCU grace period under the RTNL lock; once the
    // interface is gone the link is defunct and its release is cheap.
    if let Some(l) = &link {
        netlink::delete_link_index(node, l.index, host_if).await?;
        timing::mark("link deleted");
    }
    if let Some(i) = ifindex {
        pins.detach(i)?;
    }
    Ok(())
}

/// DEL. The veth's deletion is most of it: the kernel unlists the link at
/// once but acknowledges the deletion only after its RCU grace periods
/// (~20 ms), all inside the `sendmsg(2)` of the request. So this thread
/// deletes the link first thing (one request, by name), and meanwhile a
/// second thread ([`release`]) reads the IPAM record and, as soon as the
/// kernel announces the link unregistered, removes the endpoint entry, a
/// tcx link pin of an older version and the address (delegate, IPAM
/// record). DEL returns once both are done: the veth is gone, the address
/// released.
fn del(env: &Env, conf: &NetConf) -> Result<Value> {
    let host_if = host_veth_name(env.container_id()?, env.ifname()?);
    let mut rtnl = Rtnl::open()?;
    // Subscribed before the deletion, so its announcement is not missed.
    let events = LinkEvents::open()?;
    let (done_rx, mut done_tx) =
        std::io::pipe().map_err(|e| Error::Internal(format!("creating a pipe: {e}")))?;
    std::thread::scope(|s| {
        let helper = std::thread::Builder::new()
            .name("sluice-cni-del".into())
            .spawn_scoped(s, || release(env, conf, &host_if, Deletion { events, done: done_rx }))
            .map_err(|e| Error::Internal(format!("spawning the DEL thread: {e}")))?;
        timing::mark("deleting");
        let deleted = rtnl.delete_link_named(&host_if);
        timing::mark("link deleted");
        // The outcome for the helper if it missed the announcement (`0`:
        // the deletion failed). One byte: the pipe cannot be full.
        let _ = done_tx.write_all(if deleted.is_ok() { b"1" } else { b"0" });
        drop(done_tx);
        let released =
            helper.join().map_err(|_| Error::Internal("the DEL thread panicked".into()))?;
        timing::mark("released");
        // The store's errors first (it was read before the deletion).
        released?;
        deleted?;
        Ok(Value::Null)
    })
}

/// The veth's deletion, run by another thread, as [`release`] follows it:
/// the announcement of its unregistration, and `done`, to which the
/// deleting thread writes `1` (deleted, or there was no veth) or `0`
/// (failed) when the kernel has answered.
struct Deletion {
    events: LinkEvents,
    done: std::io::PipeReader,
}

impl Deletion {
    /// Waits until the veth named `name` is unregistered (`Some(Some(its
    /// index))`), gone without an announcement seen (`Some(None)`), or its
    /// deletion failed (`None`).
    fn wait(mut self, name: &str) -> Result<Option<Option<u32>>> {
        if let Some(index) = self.events.wait_unregistered(name, self.done.as_fd())? {
            return Ok(Some(Some(index)));
        }
        let mut outcome = [0u8; 1];
        let deleted = self.done.read(&mut outcome).is_ok_and(|n| n == 1) && outcome == *b"1";
        Ok(deleted.then_some(None))
    }
}

/// DEL's bookkeeping for the attachment whose host veth is `host_if`, while
/// another thread deletes the veth: reads the IPAM record and, once the
/// veth is gone, removes the endpoint entry (only if it still points at
/// this pod's veth), a tcx link pin of an older version and the address
/// (delegate DEL, IPAM record). If the deletion failed, the endpoint entry
/// goes (as it did before the deletion) and the address stays allocated.
fn release(env: &Env, conf: &NetConf, host_if: &str, deletion: Deletion) -> Result<()> {
    let container_id = env.container_id()?;
    let ifname = env.ifname()?;
    let pins = Pins::new(&conf.bpffs_root);
    let mut store = Store::open_existing(&conf.data_dir, &conf.name)?;
    let record = store.as_ref().and_then(|s| s.state.find(container_id, ifname).cloned());
    let ip = record.as_ref().map(|r| r.ip).or_else(|| {
        conf.prev_result.as_ref().and_then(|p| {
            result::expected(p, ifname, env.netns.as_deref().unwrap_or(""), host_if).ip
        })
    });
    timing::mark("store read");
    let gone = deletion.wait(host_if)?;
    timing::mark("link unregistered");
    let recorded = record.as_ref().map(|r| r.host_ifindex).filter(|i| *i != 0);
    let ifindex = gone.flatten().or(recorded);
    if let Some(ip) = ip {
        pins.remove_own_endpoint(ip, ifindex)?;
    }
    if gone.is_none() {
        return Ok(());
    }
    if let Some(i) = ifindex {
        pins.detach(i)?;
    }
    if conf.ipam.is_some() {
        delegate::exec(env, conf, "DEL", &conf.raw)?;
    }
    if let Some(st) = store.as_mut()
        && st.state.remove(container_id, ifname).is_some()
    {
        st.mark_dirty();
        st.save()?;
    }
    timing::mark("store saved");
    Ok(())
}

async fn check(env: &Env, conf: &NetConf) -> Result<Value> {
    let container_id = env.container_id()?;
    let ifname = env.ifname()?;
    let netns = env.netns()?;
    let host_if = host_veth_name(container_id, ifname);
    let prev = conf.prev_result.as_ref().expect("checked by cmd_check");
    let want = result::expected(prev, ifname, netns, &host_if);
    let mut diffs = Vec::new();
    let Some(ip) = want.ip else {
        return Err(Error::CheckFailed(vec![format!(
            "prevResult has no IPv4 address for {ifname} in {netns}"
        )]));
    };
    let pins = Pins::new(&conf.bpffs_root);
    let ns = netlink::open_netns(netns)?;
    let node = netlink::connect()?;
    let pod = netlink::connect_in(&ns, netns)?;

    let host = netlink::link_by_name(&node, &host_if).await?;
    match &host {
        None => diffs.push(format!("host veth {host_if} is missing")),
        Some(h) => {
            if !h.up {
                diffs.push(format!("host veth {host_if} is down"));
            }
            if let Some(m) = want.host_mac.as_deref().and_then(parse_mac)
                && m != h.mac
            {
                diffs.push(format!(
                    "host veth {host_if} has MAC {}, prevResult says {}",
                    mac_string(h.mac),
                    mac_string(m)
                ));
            }
        }
    }
    let pod_link = netlink::link_by_name(&pod, ifname).await?;
    match &pod_link {
        None => diffs.push(format!("{ifname} is missing in {netns}")),
        Some(p) => {
            if !p.up {
                diffs.push(format!("{ifname} is down"));
            }
            if let Some(m) = want.pod_mac.as_deref().and_then(parse_mac)
                && m != p.mac
            {
                diffs.push(format!(
                    "{ifname} has MAC {}, prevResult says {}",
                    mac_string(p.mac),
                    mac_string(m)
                ));
            }
            let addrs = netlink::addresses(&pod, p.index).await?;
            if !addrs.contains(&(ip, 32)) {
                diffs.push(format!("{ifname} lacks address {ip}/32 (has {addrs:?})"));
            }
            let routes = netlink::routes(&pod).await?;
            // Through this interface or another sluice interface of the pod
            // (the first one owns the default route).
            let has = |dst: Ipv4Addr, prefix: u8, gw: Option<Ipv4Addr>| {
                routes.iter().any(|r| r.dst == dst && r.prefix == prefix && r.gateway == gw)
            };
            if !has(GATEWAY, 32, None) {
                diffs.push(format!("route {GATEWAY} dev {ifname} is missing in the pod"));
            }
            if !has(Ipv4Addr::UNSPECIFIED, 0, Some(GATEWAY)) {
                diffs.push(format!("default route via {GATEWAY} is missing in the pod"));
            }
            if let Some(h) = &host {
                let neigh = netlink::permanent_neighbours(&pod, p.index).await?;
                if !neigh.contains(&(GATEWAY, h.mac)) {
                    diffs.push(format!(
                        "permanent neighbour {GATEWAY} -> {} is missing in the pod",
                        mac_string(h.mac)
                    ));
                }
            }
        }
    }
    if let Some(h) = &host {
        let routes = netlink::routes(&node).await?;
        if !routes.iter().any(|r| r.dst == ip && r.prefix == 32 && r.oif == Some(h.index)) {
            diffs.push(format!("node route {ip}/32 dev {host_if} is missing"));
        }
        if let Some(p) = &pod_link {
            let neigh = netlink::permanent_neighbours(&node, h.index).await?;
            if !neigh.contains(&(ip, p.mac)) {
                diffs.push(format!("node neighbour {ip} -> {} is missing", mac_string(p.mac)));
            }
        }
        match pins.endpoint_if_present(ip)? {
            None => diffs.push(format!("{ip} has no entry in SL_ENDPOINTS")),
            Some(e) => {
                if e.ifindex != h.index {
                    diffs.push(format!(
                        "SL_ENDPOINTS[{ip}] has ifindex {}, {host_if} is {}",
                        e.ifindex, h.index
                    ));
                }
                if let Some(p) = &pod_link
                    && (e.mac != p.mac || e.node_mac != h.mac)
                {
                    diffs.push(format!("SL_ENDPOINTS[{ip}] has other MACs than the veth pair"));
                }
            }
        }
        if !netlink::has_pod_filter(&node, h.index).await? {
            diffs.push(format!("the pod program's tc filter on {host_if} is missing"));
        }
    }
    match Store::open_existing(&conf.data_dir, &conf.name)? {
        Some(st) => match st.state.find(container_id, ifname) {
            Some(r) if r.ip == ip => {}
            Some(r) => {
                diffs.push(format!("IPAM has {} for this attachment, prevResult {ip}", r.ip));
            }
            None => diffs.push("IPAM has no allocation for this attachment".into()),
        },
        None => diffs.push("IPAM has no allocation for this attachment".into()),
    }
    if conf.ipam.is_some()
        && let Err(e) = delegate::exec(env, conf, "CHECK", &conf.raw)
    {
        diffs.push(e.to_string());
    }
    if diffs.is_empty() { Ok(Value::Null) } else { Err(Error::CheckFailed(diffs)) }
}

async fn gc(env: &Env, conf: &NetConf) -> Result<Value> {
    let valid = conf.valid_attachments.as_deref().unwrap_or_default();
    let pins = Pins::new(&conf.bpffs_root);
    let node = netlink::connect()?;
    let Some(mut store) = Store::open_existing(&conf.data_dir, &conf.name)? else {
        return Ok(Value::Null);
    };
    let (keep, stale): (Vec<Record>, Vec<Record>) =
        std::mem::take(&mut store.state.attachments).into_iter().partition(|r| {
            valid.iter().any(|a| a.container_id == r.container_id && a.ifname == r.ifname)
        });
    store.state.attachments = keep;
    let mut first_err = None;
    for r in &stale {
        let mut step = teardown(&node, &pins, &r.host_if, Some(r.ip), Some(r.host_ifindex)).await;
        if step.is_ok() && r.delegated {
            let mut denv = env.clone();
            denv.container_id = Some(r.container_id.clone());
            denv.ifname = Some(r.ifname.clone());
            denv.netns = None;
            step = delegate::exec(&denv, conf, "DEL", &conf.raw).map(drop);
        }
        if let Err(e) = step {
            // Keep it for the next GC.
            store.state.attachments.push(r.clone());
            first_err.get_or_insert(e);
        }
    }
    // Host veths and endpoint entries that no attachment owns (an ADD that
    // was killed before it could record or undo).
    let owned: Vec<&str> = store.state.attachments.iter().map(|r| r.host_if.as_str()).collect();
    for link in netlink::all_links(&node).await? {
        if is_host_veth_name(&link.name) && !owned.contains(&link.name.as_str()) {
            pins.detach(link.index)?;
            netlink::delete_link_index(&node, link.index, &link.name).await?;
        }
    }
    for ip in pins.endpoint_addrs()? {
        let in_range = conf.ranges.iter().any(|c| c.contains(ip)) || conf.ipam.is_some();
        if in_range && !store.state.in_use(ip) {
            pins.remove_endpoint(ip)?;
        }
    }
    store.mark_dirty();
    store.save()?;
    match first_err {
        Some(e) => Err(e),
        None => Ok(Value::Null),
    }
}
