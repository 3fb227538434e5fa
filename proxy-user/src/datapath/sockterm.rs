//! Socket termination (Cilium's name): UDP sockets that socket-level LB
//! connected to a backend which is then removed are destroyed, so the
//! application sees an error (`ECONNABORTED` from its next receive; the
//! kernel also disconnects the socket, so a send without address fails
//! with `EDESTADDRREQ`) and connects again, to a live backend. Without this
//! a connected UDP socket keeps sending to the old backend forever: socket
//! LB rewrote its destination once, at `connect()`, and UDP has no
//! teardown. (The per-packet path needs nothing: the reconciler flushes the
//! conntrack entries of removed UDP backends.)
//!
//! Which sockets: `SL_SOCK_REVNAT` records, per socket cookie, the backend
//! socket LB sent the socket to and the frontend (reverse-NAT index) it asked
//! for. The sockets to destroy are those with an entry naming the removed
//! backend *of that frontend*; a socket connected directly to the backend's
//! address (no entry) is left alone, and so is one that reached the same
//! address through another frontend that keeps it.
//!
//! How: netlink `sock_diag` (kernel `CONFIG_INET_DIAG_DESTROY`), which works
//! per network namespace: in every namespace that may hold such sockets,
//! dump the connected UDP sockets with the backend's port (the kernel
//! filters on it), keep those with the backend's address and a doomed
//! cookie, and send `SOCK_DESTROY` with each one's exact id (cookie
//! included, so a socket that was closed and whose 4-tuple was reused is
//! not hit). The namespaces visited are the agent's own and those of the
//! processes in `--cgroup-root`'s subtree (the only processes socket LB
//! serves), each visited once. Limits: a socket created in one namespace by
//! a process that then moved to another, or handed to a process outside
//! the cgroup, is not found; nor is one whose `SL_SOCK_REVNAT` entry the
//! LRU evicted.
//!
//! All of it runs on one dedicated thread (the only thread that ever
//! changes its network namespace), off the sync's path, bounded in time;
//! failures are logged, never fatal.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    message::SockDiagDestroy,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use nix::sched::{CloneFlags, setns};
use proxy_common::{MAP_SOCK_REVNAT, SockRevNat, SockRevNatKey};
use tracing::{debug, info, warn};

use super::{PinPaths, Result, maps::open_pinned, reconcile::RemovedBackend};
use crate::observe::Metrics;

/// A whole termination pass gives up visiting further namespaces after this.
const PASS_DEADLINE: Duration = Duration::from_secs(10);
/// One netlink exchange (a dump, or one destroy) waits at most this long.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(2);

/// The sockets one pass is after.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Doomed {
    /// Cookie -> the backend (address, port) socket LB connected it to.
    pub sockets: BTreeMap<u64, (Ipv4Addr, u16)>,
    /// Their `SL_SOCK_REVNAT` keys, removed once the sockets are destroyed.
    pub keys: BTreeMap<u64, Vec<SockRevNatKey>>,
}

impl Doomed {
    /// Picks, from `SL_SOCK_REVNAT`'s entries, the sockets socket LB sent to
    /// one of `removed` through the frontend it was removed from.
    #[must_use]
    pub fn select(
        entries: impl IntoIterator<Item = (SockRevNatKey, SockRevNat)>,
        removed: &[RemovedBackend],
    ) -> Self {
        let wanted: BTreeSet<(u32, u32, u16)> = removed
            .iter()
            .map(|r| {
                (
                    r.rev_nat_index,
                    proxy_common::addr_to_map(r.addr),
                    proxy_common::port_to_map(r.port),
                )
            })
            .collect();
        let mut doomed = Doomed::default();
        for (key, value) in entries {
            if wanted.contains(&(value.rev_nat_index, key.addr, key.port)) {
                let backend =
                    (proxy_common::addr_from_map(key.addr), proxy_common::port_from_map(key.port));
                doomed.sockets.insert(key.cookie, backend);
                doomed.keys.entry(key.cookie).or_default().push(key);
            }
        }
        doomed
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The backend ports, one dump each.
    fn ports(&self) -> BTreeSet<u16> {
        self.sockets.values().map(|(_, port)| *port).collect()
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassOutcome {
    pub candidates: usize,
    pub namespaces: usize,
    pub destroyed: usize,
    /// Namespaces not visited because the pass ran out of time.
    pub skipped_namespaces: usize,
    pub errors: Vec<String>,
}

/// The termination thread: [`SocketTerminator::submit`] hands it removed
/// backends and returns at once.
pub struct SocketTerminator {
    tx: mpsc::Sender<Vec<RemovedBackend>>,
}

impl SocketTerminator {
    /// Starts the thread. `cgroup_root` is socket LB's `--cgroup-root`.
    pub fn spawn(paths: &PinPaths, cgroup_root: PathBuf, metrics: Metrics) -> Result<Self> {
        let revnat: HashMap<MapData, SockRevNatKey, SockRevNat> =
            open_pinned(paths, MAP_SOCK_REVNAT)?;
        let (tx, rx) = mpsc::channel::<Vec<RemovedBackend>>();
        thread::Builder::new()
            .name("sock-terminator".into())
            .spawn(move || {
                let mut revnat = revnat;
                while let Ok(mut removed) = rx.recv() {
                    // Coalesce what queued up meanwhile into one pass.
                    while let Ok(more) = rx.try_recv() {
                        removed.extend(more);
                    }
                    let start = Instant::now();
                    let outcome = terminate(&mut revnat, &cgroup_root, &removed);
                    metrics.udp_sockets_destroyed(outcome.destroyed as u64);
                    for e in &outcome.errors {
                        warn!(error = %e, "socket termination");
                    }
                    if outcome.skipped_namespaces > 0 {
                        warn!(
                            skipped = outcome.skipped_namespaces,
                            "socket termination ran out of time; namespaces not visited"
                        );
                    }
                    let took_ms = start.elapsed().as_secs_f64() * 1000.0;
                    if outcome.candidates > 0 {
                        info!(
                            backends = removed.len(),
                            candidates = outcome.candidates,
                            namespaces = outcome.namespaces,
                            destroyed = outcome.destroyed,
                            took_ms,
                            "destroyed UDP sockets connected to removed backends"
                        );
                    } else {
                        debug!(
                            backends = removed.len(),
                            took_ms, "no socket-LB socket on removed UDP backends"
                        );
                    }
                }
            })
            .map_err(|source| super::Error::Io { path: "sock-terminator thread".into(), source })?;
        Ok(Self { tx })
    }

    /// Queues a pass for these backends (nothing for an empty list).
    pub fn submit(&self, removed: Vec<RemovedBackend>) {
        if !removed.is_empty() && self.tx.send(removed).is_err() {
            warn!("socket termination thread is gone; sockets of removed backends are kept");
        }
    }
}

/// One pass, on the calling thread (which changes its network namespace:
/// call it only from the dedicated thread or a test's own thread).
pub fn terminate(
    revnat: &mut HashMap<MapData, SockRevNatKey, SockRevNat>,
    cgroup_root: &Path,
    removed: &[RemovedBackend],
) -> PassOutcome {
    let mut outcome = PassOutcome::default();
    // Entries evicted or replaced during the walk are simply skipped.
    let doomed = Doomed::select(revnat.iter().filter_map(std::result::Result::ok), removed);
    outcome.candidates = doomed.sockets.len();
    if doomed.is_empty() {
        return outcome;
    }
    let own = match File::open("/proc/self/ns/net") {
        Ok(f) => f,
        Err(e) => {
            outcome.errors.push(format!("/proc/self/ns/net: {e}"));
            return outcome;
        }
    };
    let namespaces = namespaces(&own, cgroup_root, &mut outcome.errors);
    let deadline = Instant::now() + PASS_DEADLINE;
    let mut destroyed = BTreeSet::new();
    for (i, ns) in namespaces.iter().enumerate() {
        if Instant::now() >= deadline {
            outcome.skipped_namespaces = namespaces.len() - i;
            break;
        }
        if let Err(e) = setns(ns, CloneFlags::CLONE_NEWNET) {
            outcome.errors.push(format!("entering a network namespace: {e}"));
            continue;
        }
        outcome.namespaces += 1;
        match destroy_here(&doomed) {
            Ok(cookies) => destroyed.extend(cookies),
            Err(e) => outcome.errors.push(e),
        }
    }
    if let Err(e) = setns(&own, CloneFlags::CLONE_NEWNET) {
        outcome.errors.push(format!("returning to the agent's network namespace: {e}"));
    }
    outcome.destroyed = destroyed.len();
    for cookie in &destroyed {
        for key in doomed.keys.get(cookie).into_iter().flatten() {
            // Gone already (LRU) is fine too.
            let _ = revnat.remove(key);
        }
    }
    outcome
}

/// The network namespaces to visit: `own` first, then those of the
/// processes in the cgroup subtree at `root`, each once.
fn namespaces(own: &File, root: &Path, errors: &mut Vec<String>) -> Vec<File> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    match own.try_clone() {
        Ok(f) => {
            if let Ok(m) = f.metadata() {
                seen.insert((m.dev(), m.ino()));
            }
            out.push(f);
        }
        Err(e) => errors.push(format!("/proc/self/ns/net: {e}")),
    }
    for pid in cgroup_pids(root, errors) {
        // Processes come and go; one that exited is simply not visited.
        let Ok(f) = File::open(format!("/proc/{pid}/ns/net")) else { continue };
        let Ok(m) = f.metadata() else { continue };
        if seen.insert((m.dev(), m.ino())) {
            out.push(f);
        }
    }
    out
}

/// Process ids in the cgroup at `root` and all cgroups below it.
fn cgroup_pids(root: &Path, errors: &mut Vec<String>) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        match std::fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(text) => pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok())),
            // A cgroup removed during the walk.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                errors.push(format!("{}: {e}", dir.join("cgroup.procs").display()));
                continue;
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(entry.path());
                }
            }
        }
    }
    pids
}

/// In the calling thread's network namespace: finds the doomed sockets and
/// destroys them; returns the cookies of those destroyed.
fn destroy_here(doomed: &Doomed) -> Result<Vec<u64>, String> {
    let diag = Diag::open().map_err(|e| format!("sock_diag socket: {e}"))?;
    let mut found = Vec::new();
    for port in doomed.ports() {
        for id in diag.dump_connected_udp(port).map_err(|e| format!("dumping UDP sockets: {e}"))? {
            let cookie = cookie_of(&id);
            let IpAddr::V4(dst) = id.destination_address else { continue };
            if doomed.sockets.get(&cookie) == Some(&(dst, id.destination_port)) {
                found.push((cookie, id));
            }
        }
    }
    let mut destroyed = Vec::new();
    for (cookie, id) in found {
        match diag.destroy_udp(id) {
            Ok(()) => destroyed.push(cookie),
            // Closed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(format!("destroying a UDP socket (cookie {cookie}): {e}")),
        }
    }
    Ok(destroyed)
}

/// The socket cookie in a `sock_diag` id: two `u32` halves in host order,
/// low half first (the kernel's `sock_diag_save_cookie`).
fn cookie_of(id: &SocketId) -> u64 {
    let c = id.cookie;
    let low = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    let high = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]);
    u64::from(high) << 32 | u64::from(low)
}

/// A `NETLINK_SOCK_DIAG` socket in the namespace it was opened in.
struct Diag {
    socket: Socket,
    seq: std::cell::Cell<u32>,
}

impl Diag {
    fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(NETLINK_TIMEOUT.as_secs()).unwrap_or(2),
            tv_usec: 0,
        };
        // SAFETY: setsockopt(2) on our own open socket with a valid timeval
        // and its exact size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>())
                    .expect("timeval size fits"),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { socket, seq: std::cell::Cell::new(0) })
    }

    fn next_seq(&self) -> u32 {
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        seq
    }

    fn send<I: netlink_packet_core::NetlinkSerializable>(
        &self,
        flags: u16,
        payload: I,
    ) -> io::Result<u32> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let seq = self.next_seq();
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(seq)
    }

    /// Receives until the answer to `seq` is complete; `on_message` gets
    /// each inner message. Ends at `NLMSG_DONE` (dumps) or at the ACK.
    fn receive(&self, seq: u32, mut on_message: impl FnMut(SockDiagMessage)) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.socket.recv(&mut &mut buf[..], 0)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                if len < 16 || off + len > n {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "bad netlink length"));
                }
                let bytes = &buf[off..off + len];
                off += (len + 3) & !3;
                let msg = match NetlinkMessage::<SockDiagMessage>::deserialize(bytes) {
                    Ok(m) => m,
                    // One socket whose attributes this crate cannot parse
                    // is skipped, not the dump.
                    Err(e) => {
                        debug!(error = %e, "undecodable sock_diag message");
                        continue;
                    }
                };
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => on_message(m),
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                    _ => {}
                }
            }
        }
    }

    /// Ids of the connected (`ESTABLISHED`) IPv4 UDP sockets whose peer
    /// port is `port`.
    fn dump_connected_udp(&self, port: u16) -> io::Result<Vec<SocketId>> {
        let mut socket_id = SocketId::new_v4();
        socket_id.destination_port = port;
        let request = SockDiagMessage::InetRequest(InetRequest {
            family: AF_INET,
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::ESTABLISHED,
            socket_id,
        });
        let seq = self.send(NLM_F_REQUEST | NLM_F_DUMP, request)?;
        let mut ids = Vec::new();
        self.receive(seq, |m| {
            if let SockDiagMessage::InetResponse(r) = m {
                ids.push(r.header.socket_id);
            }
        })?;
        Ok(ids)
    }

    /// `SOCK_DESTROY` of exactly this socket (its dumped id, cookie
    /// included).
    fn destroy_udp(&self, socket_id: SocketId) -> io::Result<()> {
        let request = SockDiagDestroy::new(SockDiagMessage::InetRequest(InetRequest {
            family: AF_INET,
            protocol: IPPROTO_UDP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        }));
        let seq = self.send(NLM_F_REQUEST | NLM_F_ACK, request)?;
        self.receive(seq, |_| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cookie: u64, addr: [u8; 4], port: u16, rev: u32) -> (SockRevNatKey, SockRevNat) {
        (
            SockRevNatKey {
                cookie,
                addr: proxy_common::addr_to_map(Ipv4Addr::from(addr)),
                port: proxy_common::port_to_map(port),
                _pad: 0,
            },
            SockRevNat {
                addr: proxy_common::addr_to_map(Ipv4Addr::new(10, 96, 0, 1)),
                port: proxy_common::port_to_map(53),
                _pad: 0,
                rev_nat_index: rev,
            },
        )
    }

    #[test]
    fn only_sockets_sent_to_the_removed_backend_of_that_frontend_are_doomed() {
        let removed =
            [RemovedBackend { rev_nat_index: 7, addr: Ipv4Addr::new(10, 244, 0, 2), port: 5353 }];
        let entries = [
            entry(1, [10, 244, 0, 2], 5353, 7), // doomed
            entry(2, [10, 244, 0, 3], 5353, 7), // another backend
            entry(3, [10, 244, 0, 2], 5353, 8), // same backend, another frontend
            entry(4, [10, 244, 0, 2], 5354, 7), // another port
            entry(1, [10, 244, 0, 2], 5353, 7), // a duplicate walk result
        ];
        let doomed = Doomed::select(entries, &removed);
        assert_eq!(doomed.sockets, BTreeMap::from([(1, (Ipv4Addr::new(10, 244, 0, 2), 5353))]));
        assert_eq!(doomed.ports(), BTreeSet::from([5353]));
        assert_eq!(doomed.keys[&1].len(), 2);
        assert!(Doomed::select([entry(2, [10, 244, 0, 3], 5353, 7)], &removed).is_empty());
    }

    #[test]
    fn cookies_are_read_as_the_kernel_writes_them() {
        let mut id = SocketId::new_v4();
        let cookie: u64 = 0x1122_3344_5566_7788;
        let low = (cookie as u32).to_ne_bytes();
        let high = ((cookie >> 32) as u32).to_ne_bytes();
        id.cookie = [low[0], low[1], low[2], low[3], high[0], high[1], high[2], high[3]];
        assert_eq!(cookie_of(&id), cookie);
    }
}
