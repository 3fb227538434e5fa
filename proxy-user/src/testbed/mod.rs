//! Simulated cluster hosts for privileged tests and the demo.
//!
//! Everything here lives inside network namespaces that this module creates:
//! a *node* is a network namespace, a *pod* is another one wired to its node
//! by a veth pair the way a CNI plugin would (host side `sl` + 12 hex digits,
//! pod side `eth0`, /32 pod address, `169.254.1.1` as the pod's gateway with
//! a permanent neighbour entry). The machine's root network namespace, its
//! interfaces, routes and root cgroup are never touched.
//!
//! Every resource is a guard that removes what it created on drop (also while
//! unwinding from a panic). Names contain the process id and a counter, so
//! parallel tests and concurrent runs never collide, and [`sweep_stale`]
//! removes what a killed run (whose pid is gone) left behind. Every wait is
//! bounded: sockets have timeouts, child processes are polled with deadlines.
//!
//! Typical use (see `tests/e2e_clusterip.rs`):
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use sluice::testbed::*;
//! use std::time::Duration;
//! if !require_root() { return Ok(()); }
//! let dir = TestDir::new("example")?;
//! let bpffs = BpffsMount::new_in(&dir)?;
//! let node = Node::new("node-a")?;
//! let a = node.add_pod("backend-a")?;
//! let client = node.add_pod("client")?;
//! let _srv = EchoServer::start(&a, "backend-a", 8080, 5353)?;
//! let answer = tcp_request(&client, std::net::SocketAddrV4::new(a.ip(), 8080), Duration::from_secs(1))?;
//! assert_eq!(answer, "backend-a");
//! # Ok(()) }
//! ```

pub mod apiserver;
mod bulk;
mod cni;
mod routes;

pub use bulk::{BulkServer, bulk_send, udp_len};
pub use cni::{CniPod, cni_add, cni_wait_ready, conf_from_conflist};
pub use routes::Overlay;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::Deserialize;

/// Prefix of every network namespace, directory and cgroup this module creates.
pub const PREFIX: &str = "sluice-t";

/// How long a plumbing command (`ip ...`, `sluice services`) may run.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call: `sluice-t<pid>-<n>-<label>`.
pub fn unique_name(label: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{n}-{label}", std::process::id())
}

/// A small deterministic generator for randomized tests (no dependency
/// needed for this): the same seed gives the same sequence.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 =
            self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }

    /// One element of `list` (not empty).
    pub fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len() as u64) as usize]
    }
}

/// Each item's text, sorted: lists compared regardless of order.
pub fn sorted_lines<T: ToString>(items: &[T]) -> Vec<String> {
    let mut out: Vec<String> = items.iter().map(ToString::to_string).collect();
    out.sort();
    out
}

/// `sluice-cni` next to the `sluice` binary `sluice_bin`
/// (`target/<profile>/`), built if missing.
pub fn cni_bin(sluice_bin: &Path) -> Option<PathBuf> {
    let bin = sluice_bin.with_file_name("sluice-cni");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "sluice-cni"]);
        if sluice_bin.parent().and_then(Path::file_name).is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let _ = run_with_timeout(&mut cmd, Duration::from_secs(600));
    }
    bin.exists().then_some(bin)
}

/// Runs the CNI plugin `bin` inside `node` as a runtime would (only `env`
/// in its environment, `conf` on stdin): (success, stdout as JSON, `Null`
/// when empty). Panics when it runs longer than 30 s.
pub fn run_cni(
    bin: &Path,
    node: &Netns,
    env: &[(&str, &str)],
    conf: &serde_json::Value,
) -> (bool, serde_json::Value) {
    let mut cmd = node.command(bin).unwrap();
    cmd.env_clear().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sluice-cni {env:?} hangs");
        thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (out.status.success(), v)
}

/// Polls `f` every 100 ms until it returns `Ok(true)`; panics naming `what`
/// and the last error after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> anyhow::Result<bool>) {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match f() {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => last = format!("{e:#}"),
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?} (last error: {last})");
        thread::sleep(Duration::from_millis(100));
    }
}

/// `true` when running as root (euid 0). Otherwise prints
/// `skipping <test>: needs root` and returns `false`, so that a plain
/// `cargo test` without privileges skips privileged tests instead of failing.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let current = thread::current();
    let name = current.name().unwrap_or("test");
    eprintln!("skipping {name}: needs root");
    false
}

// ---------------------------------------------------------------------------
// Commands with deadlines
// ---------------------------------------------------------------------------

/// Output of a finished command.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion with stdout/stderr captured, killing it after
/// `timeout`. A non-zero exit is *not* an error here; see [`run_checked`].
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<CmdOutput> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {desc}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_t = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = match wait_child(&mut child, timeout)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{desc} did not finish within {timeout:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Ok(CmdOutput { status, stdout, stderr })
}

/// Like [`run_with_timeout`], but a non-zero exit is an error carrying stderr.
pub fn run_checked(cmd: &mut Command, timeout: Duration) -> anyhow::Result<String> {
    let desc = format!("{cmd:?}");
    let out = run_with_timeout(cmd, timeout)?;
    if !out.status.success() {
        bail!("{desc} failed ({}): {}{}", out.status, out.stderr.trim(), out.stdout.trim());
    }
    Ok(out.stdout)
}

/// Polls `child` until it exits or `timeout` passes (`Ok(None)`).
fn wait_child(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl AsRef<Netns> for Netns {
    fn as_ref(&self) -> &Netns {
        self
    }
}

impl Netns {
    /// Creates `sluice-t<pid>-<n>-<label>` with loopback up.
    pub fn new(label: &str) -> anyhow::Result<Netns> {
        let name = unique_name(label);
        run_checked(Command::new("ip").args(["netns", "add", &name]), CMD_TIMEOUT)?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (`ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Opens the namespace file (for `setns`).
    pub fn open(&self) -> io::Result<OwnedFd> {
        Ok(File::open(self.path())?.into())
    }

    /// Runs `ip -n <name> ARGS...`, returning stdout; fails on non-zero exit.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args), CMD_TIMEOUT)
    }

    /// Same as [`Netns::ip`]: runs `ip -n <name> ARGS...`.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        self.ip(args)
    }

    /// A [`Command`] whose child switches into this network namespace (only
    /// the network namespace: unlike `ip netns exec`, mounts such as a test's
    /// bpffs stay visible) before `exec`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> io::Result<Command> {
        let fd = self.open()?;
        let mut cmd = Command::new(program);
        // SAFETY: the closure only calls setns(2), which is async-signal-safe,
        // and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
        Ok(cmd)
    }

    /// Spawns a thread that enters this namespace and then runs `f`; sockets
    /// created by `f` belong to the namespace. Fails if `setns` fails.
    pub fn spawn<F, T>(&self, thread_name: &str, f: F) -> io::Result<NsJoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let fd = self.open()?;
        let (tx, rx) = mpsc::sync_channel::<io::Result<()>>(1);
        let handle = thread::Builder::new().name(thread_name.to_owned()).spawn(move || {
            let entered = nix::sched::setns(fd.as_fd(), CloneFlags::CLONE_NEWNET);
            drop(fd);
            match entered {
                Ok(()) => {
                    let _ = tx.send(Ok(()));
                    Some(f())
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    None
                }
            }
        })?;
        match rx.recv_timeout(CMD_TIMEOUT) {
            Ok(Ok(())) => Ok(NsJoinHandle(handle)),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "netns thread did not start")),
        }
    }

    /// Runs `f` on a fresh thread inside this namespace and waits for it, at
    /// most `timeout` (then the thread is left to finish on its own and an
    /// error of kind `TimedOut` is returned; `f` should bound its own work).
    pub fn exec<F, T>(&self, timeout: Duration, f: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel::<T>(1);
        let handle = self.spawn("netns-exec", move || {
            let _ = tx.send(f());
        })?;
        match rx.recv_timeout(timeout) {
            Ok(v) => {
                let _ = handle.join();
                Ok(v)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("work in netns did not finish within {timeout:?}"),
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(io::Error::other("work in netns panicked"))
            }
        }
    }

    /// Writes `value` to `/proc/sys/<key with dots as slashes>` from a thread
    /// inside this namespace (`/proc/sys/net` shows the writer's namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_owned();
        let p = path.clone();
        self.exec(CMD_TIMEOUT, move || fs::write(&p, value.as_bytes()))?
            .with_context(|| format!("writing {} in netns {}", path.display(), self.name))
    }

    /// Reads a sysctl as seen inside this namespace.
    pub fn read_sysctl(&self, key: &str) -> anyhow::Result<String> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let p = path.clone();
        let v = self
            .exec(CMD_TIMEOUT, move || fs::read_to_string(&p))?
            .with_context(|| format!("reading {} in netns {}", path.display(), self.name))?;
        Ok(v.trim().to_owned())
    }

    /// The MAC address of `dev` in this namespace.
    pub fn mac(&self, dev: &str) -> anyhow::Result<String> {
        let out = self.ip(&["-j", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j link")?;
        v.get(0)
            .and_then(|l| l.get("address"))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no address for {dev} in {}", self.name))
    }
}

/// A thread started by [`Netns::spawn`].
#[derive(Debug)]
pub struct NsJoinHandle<T>(JoinHandle<Option<T>>);

impl<T> NsJoinHandle<T> {
    /// Waits for the thread (unbounded: the closure must bound its work).
    pub fn join(self) -> thread::Result<T> {
        // `None` only when setns failed, which `spawn` reported instead of
        // handing out a handle.
        self.0.join().map(|v| v.expect("setns failure is reported by spawn"))
    }

    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let r = run_checked(Command::new("ip").args(["netns", "del", &self.name]), CMD_TIMEOUT);
        if let Err(e) = r {
            eprintln!("testbed: deleting netns {}: {e:#}", self.name);
        }
    }
}

// ---------------------------------------------------------------------------
// Directories, bpffs, cgroups
// ---------------------------------------------------------------------------

/// A fresh directory `/tmp/sluice-t<pid>-<n>-<label>`, removed on drop.
/// Drop guards that live inside it (a [`BpffsMount`]) first: declare them
/// after the `TestDir`.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(label: &str) -> anyhow::Result<TestDir> {
        let path = std::env::temp_dir().join(unique_name(label));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TestDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("testbed: removing {}: {e}", self.path.display());
        }
    }
}

/// A bpffs mounted at a fresh directory outside /sys (so it stays visible in
/// every network namespace; see TOOLCHAIN.md); lazily unmounted and removed
/// on drop.
#[derive(Debug)]
pub struct BpffsMount {
    path: PathBuf,
    /// Directory created for a standalone mount, removed after unmounting.
    owned_parent: Option<PathBuf>,
}

impl BpffsMount {
    /// Mounts at `/tmp/sluice-t<pid>-<n>-bpffs/bpffs`.
    pub fn new() -> anyhow::Result<BpffsMount> {
        let parent = std::env::temp_dir().join(unique_name("bpffs"));
        fs::create_dir_all(&parent)?;
        match Self::mount_at(parent.join("bpffs")) {
            Ok(mut m) => {
                m.owned_parent = Some(parent);
                Ok(m)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&parent);
                Err(e)
            }
        }
    }

    /// Mounts at `<dir>/bpffs`.
    pub fn new_in(dir: &TestDir) -> anyhow::Result<BpffsMount> {
        Self::mount_at(dir.join("bpffs"))
    }

    fn mount_at(path: PathBuf) -> anyhow::Result<BpffsMount> {
        fs::create_dir_all(&path)?;
        nix::mount::mount(Some("bpf"), &path, Some("bpf"), MsFlags::empty(), None::<&str>)
            .with_context(|| format!("mount -t bpf bpf {}", path.display()))?;
        // Do not propagate into (or back from) other mount namespaces.
        let _ =
            nix::mount::mount(None::<&str>, &path, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>);
        Ok(BpffsMount { path, owned_parent: None })
    }

    /// The mount point; pass it (or a directory below it) as `--bpffs-root`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.path, MntFlags::MNT_DETACH) {
            eprintln!("testbed: unmounting {}: {e}", self.path.display());
        }
        let _ = fs::remove_dir(&self.path);
        if let Some(parent) = &self.owned_parent {
            let _ = fs::remove_dir_all(parent);
        }
    }
}

/// The mount point of the cgroup v2 hierarchy (from /proc/self/mountinfo).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2")
            && let Some(mp) = pre.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(mp.replace("\\040", " ")));
        }
    }
    bail!("no cgroup2 mount found")
}

/// An empty child cgroup `sluice-t<pid>-<n>-<label>` of the cgroup2 root, to
/// pass as the agent's `--cgroup-root` so socket hooks never attach to the
/// machine's root cgroup. Removed on drop.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn new(label: &str) -> anyhow::Result<TestCgroup> {
        let path = cgroup2_mount()?.join(unique_name(label));
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(TestCgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd`'s process join this cgroup before it execs, so socket
    /// hooks attached here see it from its first syscall.
    pub fn join_on_exec(&self, cmd: &mut Command) -> anyhow::Result<()> {
        use std::os::unix::{ffi::OsStrExt as _, process::CommandExt as _};
        let procs = std::ffi::CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes())?;
        // SAFETY: open/write/close are async-signal-safe; nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if ok { Ok(()) } else { Err(io::Error::last_os_error()) }
            });
        }
        Ok(())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir(&self.path) {
            eprintln!("testbed: removing cgroup {}: {e}", self.path.display());
        }
    }
}

/// Removes namespaces, directories (unmounting bpffs first) and cgroups
/// named `sluice-t<pid>-...` whose process no longer exists: what a run that
/// was killed (SIGKILL, no unwinding) left behind. Best effort.
pub fn sweep_stale() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return false;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            return false;
        };
        pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
    };
    let names = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    };
    for n in names(Path::new("/var/run/netns")) {
        if dead(&n) {
            let _ = run_with_timeout(Command::new("ip").args(["netns", "del", &n]), CMD_TIMEOUT);
        }
    }
    let tmp = std::env::temp_dir();
    for n in names(&tmp) {
        if dead(&n) {
            let d = tmp.join(&n);
            for sub in names(&d) {
                let _ = nix::mount::umount2(&d.join(sub), MntFlags::MNT_DETACH);
            }
            let _ = fs::remove_dir_all(&d);
        }
    }
    if let Ok(cg) = cgroup2_mount() {
        for n in names(&cg) {
            if dead(&n) {
                let _ = fs::remove_dir(cg.join(&n));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Nodes and pods
// ---------------------------------------------------------------------------

/// Host-side veth name for a pod: `sl` + 12 hex digits of an FNV-1a hash.
pub fn host_veth_name(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("sl{:012x}", h & 0xffff_ffff_ffff)
}

/// The pods' gateway address (a link-local address answered by a permanent
/// neighbour entry, as Calico and Cilium do).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// A node: a network namespace with forwarding on and reverse-path filtering
/// off. Its pods get 10.244.<index>.<10+k>/32; the node itself has
/// 198.18.0.<index+1>/32 on `lo` (a source for ICMP errors it sends).
#[derive(Debug)]
pub struct Node {
    name: String,
    index: u8,
    netns: Netns,
    next_host: AtomicUsize,
}

impl AsRef<Netns> for Node {
    fn as_ref(&self) -> &Netns {
        &self.netns
    }
}

impl Node {
    /// Node 0 named `name` (the Kubernetes node name to pass as `--node-name`).
    pub fn new(name: &str) -> anyhow::Result<Node> {
        Self::with_index(name, 0)
    }

    pub fn with_index(name: &str, index: u8) -> anyhow::Result<Node> {
        let netns = Netns::new(name)?;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.conf.lo.rp_filter", "0"),
        ] {
            netns.sysctl(k, v)?;
        }
        let node = Node { name: name.to_owned(), index, netns, next_host: AtomicUsize::new(11) };
        let addr = format!("{}/32", node.address());
        node.netns.ip(&["addr", "add", &addr, "dev", "lo"])?;
        Ok(node)
    }

    /// The Kubernetes node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The node's own address, `198.18.0.<index+1>` (on its `lo`).
    pub fn address(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, self.index.saturating_add(1))
    }

    /// This node's pod CIDR, `10.244.<index>.0/24`.
    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }

    /// Adds a pod with the next free address (`10.244.<index>.11`, `.12`, ...).
    pub fn add_pod(&self, name: &str) -> anyhow::Result<Pod> {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        let host = u8::try_from(host)
            .map_err(|_| anyhow!("node {} is out of pod addresses", self.name))?;
        self.add_pod_with_ip(name, Ipv4Addr::new(10, 244, self.index, host))
    }

    /// Adds a pod with address `ip`, wired like a CNI plugin would.
    pub fn add_pod_with_ip(&self, name: &str, ip: Ipv4Addr) -> anyhow::Result<Pod> {
        let netns = Netns::new(name)?;
        let host_if = host_veth_name(netns.name());
        let node = &self.netns;
        for (k, v) in
            [("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0")]
        {
            netns.sysctl(k, v)?;
        }
        node.ip(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ])?;
        node.sysctl(&format!("net.ipv4.conf.{host_if}.rp_filter"), "0")?;
        let host_mac = node.mac(&host_if)?;
        let pod_mac = netns.mac("eth0")?;
        let ip_s = ip.to_string();
        let gw = POD_GATEWAY.to_string();
        netns.ip(&["addr", "add", &format!("{ip_s}/32"), "dev", "eth0"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        netns.ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"])?;
        netns.ip(&["route", "add", "default", "via", &gw, "dev", "eth0"])?;
        netns.ip(&["neigh", "add", &gw, "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"])?;
        node.ip(&["link", "set", &host_if, "up"])?;
        node.ip(&["route", "add", &format!("{ip_s}/32"), "dev", &host_if, "scope", "link"])?;
        node.ip(&["neigh", "add", &ip_s, "lladdr", &pod_mac, "dev", &host_if, "nud", "permanent"])?;
        Ok(Pod { name: name.to_owned(), ip, host_if, netns })
    }
}

/// A pod: a network namespace with `eth0` (a /32 address) whose peer
/// `host_if` lives in the node. Dropping the pod deletes its namespace and
/// with it the veth pair.
#[derive(Debug)]
pub struct Pod {
    name: String,
    ip: Ipv4Addr,
    host_if: String,
    netns: Netns,
}

impl AsRef<Netns> for Pod {
    fn as_ref(&self) -> &Netns {
        &self.netns
    }
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The host-side veth in the node namespace (`sl` + 12 hex digits).
    pub fn host_if(&self) -> &str {
        &self.host_if
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

// ---------------------------------------------------------------------------
// Several nodes: an underlay switch, an external host, routes
// ---------------------------------------------------------------------------

/// Prefix length of the node underlay (`198.18.0.0/24`).
pub const UNDERLAY_PREFIX: u8 = 24;
/// The external host's address, outside the cluster (`198.18.1.0/24`), on
/// the same wire as the nodes ([`Underlay::add_external`]).
pub const EXTERNAL_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

/// The switch between nodes: a bridge `br0` in a network namespace of its
/// own. Each plugged host gets a veth whose bridge side is `p<n>` and whose
/// other side (`eth0`) is in the host's namespace. Dropping the underlay
/// deletes its namespace and with it every veth pair.
#[derive(Debug)]
pub struct Underlay {
    netns: Netns,
    next_port: AtomicUsize,
}

impl Underlay {
    pub fn new() -> anyhow::Result<Underlay> {
        let netns = Netns::new("underlay")?;
        netns.ip(&["link", "add", "br0", "type", "bridge"])?;
        netns.ip(&["link", "set", "br0", "up"])?;
        Ok(Underlay { netns, next_port: AtomicUsize::new(0) })
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Plugs `ns` into the bridge as interface `eth0` with `addrs`
    /// (`a.b.c.d/len`), up.
    pub fn plug(&self, ns: &Netns, addrs: &[String]) -> anyhow::Result<()> {
        let port = format!("p{}", self.next_port.fetch_add(1, Ordering::Relaxed));
        self.netns.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        self.netns.ip(&["link", "set", &port, "master", "br0", "up"])?;
        for a in addrs {
            ns.ip(&["addr", "add", a, "dev", "eth0"])?;
        }
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Plugs a node: `eth0` with the node's address (also on its `lo`) as
    /// `198.18.0.<index+1>/24`, so every node reaches every other directly.
    pub fn attach_node(&self, node: &Node) -> anyhow::Result<()> {
        self.plug(node.netns(), &[format!("{}/{UNDERLAY_PREFIX}", node.address())])
    }

    /// A host outside the cluster: a namespace on the underlay with only
    /// [`EXTERNAL_ADDR`] (so every answer, UDP too, comes from that address),
    /// a direct route to the node subnet, and no route to any pod.
    pub fn add_external(&self, label: &str) -> anyhow::Result<Netns> {
        self.add_external_at(label, EXTERNAL_ADDR)
    }

    /// Another external host, as [`Underlay::add_external`] but with `addr`
    /// (in `198.18.1.0/24`, which [`Underlay::route_to_external`] routes).
    pub fn add_external_at(&self, label: &str, addr: Ipv4Addr) -> anyhow::Result<Netns> {
        let ns = Netns::new(label)?;
        self.plug(&ns, &[format!("{addr}/24")])?;
        ns.ip(&["route", "add", &format!("198.18.0.0/{UNDERLAY_PREFIX}"), "dev", "eth0"])?;
        Ok(ns)
    }

    /// Nodes `node-1..=n` (index i: 198.18.0.<i+1>, pods 10.244.<i>.0/24)
    /// plugged in, each routing the external hosts
    /// ([`Underlay::route_to_external`]), their Node objects in `manifests`.
    pub fn add_nodes(&self, n: u8, manifests: &ManifestDir) -> anyhow::Result<Vec<Node>> {
        let mut nodes = Vec::new();
        for i in 1..=n {
            let node = Node::with_index(&format!("node-{i}"), i)?;
            self.attach_node(&node)?;
            Self::route_to_external(&node)?;
            manifests.write_node(&node)?;
            nodes.push(node);
        }
        Ok(nodes)
    }

    /// Routes `198.18.1.0/24` (the external host) from `node` directly out
    /// of its underlay interface.
    pub fn route_to_external(node: &Node) -> anyhow::Result<()> {
        let [a, b, c, _] = EXTERNAL_ADDR.octets();
        node.netns().ip(&["route", "add", &format!("{a}.{b}.{c}.0/24"), "dev", "eth0"])?;
        Ok(())
    }
}

/// One IPv4 route as `ip -j route show` prints it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct RouteEntry {
    /// `10.244.2.0/24`, `default`, or a host address without `/32`.
    pub dst: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dev: Option<String>,
    /// `kernel`, `boot`, `static`, ... or the number when iproute2 has no
    /// name for it (`"115"`).
    #[serde(default)]
    pub protocol: Option<String>,
}

impl Netns {
    /// The IPv4 routes of the main table.
    pub fn routes(&self) -> anyhow::Result<Vec<RouteEntry>> {
        let out = self.ip(&["-j", "-4", "route", "show", "table", "main"])?;
        serde_json::from_str(&out).with_context(|| format!("parsing `ip -j route`: {out:?}"))
    }
}

// ---------------------------------------------------------------------------
// Echo servers and clients
// ---------------------------------------------------------------------------

/// Socket timeouts of the echo servers.
const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the servers look at their stop flag.
const POLL: Duration = Duration::from_millis(20);

/// TCP and UDP servers inside a pod that answer with their name: TCP writes
/// `name\n` to each connection and closes it; UDP answers each datagram with
/// `name`. Port 0 disables that protocol. Stopped (threads joined) on drop.
pub struct EchoServer {
    name: String,
    threads: ServerThreads,
    tcp_hits: Arc<AtomicU64>,
    udp_hits: Arc<AtomicU64>,
}

/// The threads of a server in a namespace and their stop flag: on drop the
/// flag is set and the threads joined (each looks at it every [`POLL`]).
#[derive(Default)]
struct ServerThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<NsJoinHandle<()>>,
}

impl ServerThreads {
    /// Spawns a thread in `ns` that runs `bind` (opening the server's socket)
    /// and then `serve` with the socket and the stop flag; returns once
    /// `bind` has succeeded, or its error (with `what`).
    fn spawn<S, B, F>(
        &mut self,
        ns: &Netns,
        thread_name: &str,
        what: &str,
        bind: B,
        serve: F,
    ) -> anyhow::Result<()>
    where
        B: FnOnce() -> io::Result<S> + Send + 'static,
        F: FnOnce(S, &AtomicBool) + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel::<io::Result<()>>(1);
        let stop = self.stop.clone();
        let t = ns.spawn(thread_name, move || match bind() {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                serve(s, &stop);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })?;
        self.threads.push(t);
        recv_started(&rx).with_context(|| what.to_owned())
    }
}

impl Drop for ServerThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What an [`EchoServer`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Its name.
    Name,
    /// The address the request came from, as the server sees it (to check
    /// source NAT).
    PeerAddress,
    /// `<name> <peer address>`: which backend answered and whom it saw.
    NameAndPeer,
}

impl Reply {
    fn text(self, name: &str, peer: SocketAddr) -> String {
        match self {
            Reply::Name => name.to_owned(),
            Reply::PeerAddress => peer.ip().to_string(),
            Reply::NameAndPeer => format!("{name} {}", peer.ip()),
        }
    }
}

impl EchoServer {
    pub fn start(
        ns: &impl AsRef<Netns>,
        name: &str,
        tcp_port: u16,
        udp_port: u16,
    ) -> anyhow::Result<EchoServer> {
        Self::start_replying(ns, name, tcp_port, udp_port, Reply::Name)
    }

    /// Like [`EchoServer::start`], answering as `reply` says.
    pub fn start_replying(
        ns: &impl AsRef<Netns>,
        name: &str,
        tcp_port: u16,
        udp_port: u16,
        reply: Reply,
    ) -> anyhow::Result<EchoServer> {
        let ns = ns.as_ref();
        let mut srv = EchoServer {
            name: name.to_owned(),
            threads: ServerThreads::default(),
            tcp_hits: Arc::new(AtomicU64::new(0)),
            udp_hits: Arc::new(AtomicU64::new(0)),
        };
        if tcp_port != 0 {
            let (hits, own) = (srv.tcp_hits.clone(), name.to_owned());
            srv.threads.spawn(
                ns,
                &format!("echo-tcp-{name}"),
                &format!("echo server {name}: TCP port {tcp_port}"),
                move || {
                    let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, tcp_port))?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                },
                move |listener, stop| {
                    tcp_serve(&listener, stop, &hits, |peer| {
                        format!("{}\n", reply.text(&own, peer))
                    });
                },
            )?;
        }
        if udp_port != 0 {
            let (hits, own) = (srv.udp_hits.clone(), name.to_owned());
            srv.threads.spawn(
                ns,
                &format!("echo-udp-{name}"),
                &format!("echo server {name}: UDP port {udp_port}"),
                move || {
                    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, udp_port))?;
                    s.set_read_timeout(Some(POLL))?;
                    Ok(s)
                },
                move |sock, stop| {
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                            hits.fetch_add(1, Ordering::Relaxed);
                            let _ = sock.send_to(reply.text(&own, peer).as_bytes(), peer);
                        }
                    }
                },
            )?;
        }
        Ok(srv)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// TCP connections answered so far.
    pub fn tcp_hits(&self) -> u64 {
        self.tcp_hits.load(Ordering::Relaxed)
    }

    /// UDP datagrams answered so far.
    pub fn udp_hits(&self) -> u64 {
        self.udp_hits.load(Ordering::Relaxed)
    }
}

fn recv_started(rx: &mpsc::Receiver<io::Result<()>>) -> anyhow::Result<()> {
    match rx.recv_timeout(CMD_TIMEOUT) {
        Ok(r) => Ok(r?),
        Err(_) => bail!("server thread did not start"),
    }
}

fn tcp_serve(
    listener: &TcpListener,
    stop: &AtomicBool,
    hits: &AtomicU64,
    answer: impl Fn(SocketAddr) -> String,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, peer)) => {
                hits.fetch_add(1, Ordering::Relaxed);
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(Some(SERVER_IO_TIMEOUT));
                let _ = s.write_all(answer(peer).as_bytes());
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Connects from inside `ns` to `addr` and returns the first line of the
/// answer (trimmed). Every step is bounded by `timeout`.
pub fn tcp_request(
    ns: &impl AsRef<Netns>,
    addr: SocketAddrV4,
    timeout: Duration,
) -> io::Result<String> {
    ns.as_ref().exec(timeout * 3 + Duration::from_secs(1), move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        Ok(text.lines().next().unwrap_or("").trim().to_owned())
    })?
}

/// Sends one datagram from inside `ns` to `addr` (from a connected socket, so
/// only an answer from `addr` itself counts) and returns the answer.
pub fn udp_request(
    ns: &impl AsRef<Netns>,
    addr: SocketAddrV4,
    timeout: Duration,
) -> io::Result<String> {
    ns.as_ref().exec(timeout * 2 + Duration::from_secs(1), move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.connect(addr)?;
        s.send(b"hello\n")?;
        let mut buf = [0u8; 2048];
        let n = s.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
    })?
}

// ---------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------

/// L4 protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// One port of a ClusterIP service.
#[derive(Debug, Clone)]
pub struct ServicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: u16,
    /// `nodePort`; a Service with one is `type: NodePort`.
    pub node_port: Option<u16>,
}

impl ServicePort {
    pub fn new(name: &str, protocol: Protocol, port: u16, target_port: u16) -> ServicePort {
        ServicePort { name: name.to_owned(), protocol, port, target_port, node_port: None }
    }

    /// The same port, also served on `node_port` of every node.
    #[must_use]
    pub fn with_node_port(self, node_port: u16) -> ServicePort {
        ServicePort { node_port: Some(node_port), ..self }
    }
}

/// One endpoint (a pod) of the service's EndpointSlice.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The pod's name (`targetRef`).
    pub name: String,
    pub ip: Ipv4Addr,
    pub ready: bool,
    pub node_name: Option<String>,
}

impl Backend {
    pub fn ready(name: &str, ip: Ipv4Addr) -> Backend {
        Backend { name: name.to_owned(), ip, ready: true, node_name: None }
    }

    pub fn of_pod(pod: &Pod, node: &Node) -> Backend {
        Backend {
            name: pod.name().to_owned(),
            ip: pod.ip(),
            ready: true,
            node_name: Some(node.name().to_owned()),
        }
    }
}

/// A ClusterIP Service (`type: NodePort` when a port has a `nodePort`) and
/// its (single) EndpointSlice.
#[derive(Debug, Clone)]
pub struct ClusterIpService {
    pub name: String,
    pub namespace: String,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    pub backends: Vec<Backend>,
}

impl ClusterIpService {
    /// A service in namespace `default`.
    pub fn new(
        name: &str,
        cluster_ip: Ipv4Addr,
        ports: Vec<ServicePort>,
        backends: Vec<Backend>,
    ) -> Self {
        ClusterIpService {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            cluster_ip,
            ports,
            backends,
        }
    }

    /// The Service and EndpointSlice as a two-document YAML stream.
    pub fn to_yaml(&self) -> String {
        let (name, ns, ip) = (&self.name, &self.namespace, self.cluster_ip);
        let kind =
            if self.ports.iter().any(|p| p.node_port.is_some()) { "NodePort" } else { "ClusterIP" };
        let mut y = String::new();
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
             spec:\n  type: {kind}\n  clusterIP: {ip}\n  clusterIPs:\n  - {ip}\n  \
             ipFamilies:\n  - IPv4\n  ipFamilyPolicy: SingleStack\n  ports:\n"
        );
        for p in &self.ports {
            let _ = write!(
                y,
                "  - name: {}\n    protocol: {}\n    port: {}\n    targetPort: {}\n",
                p.name,
                p.protocol.as_str(),
                p.port,
                p.target_port
            );
            if let Some(np) = p.node_port {
                let _ = writeln!(y, "    nodePort: {np}");
            }
        }
        let _ = write!(
            y,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
             name: {name}-sluice\n  namespace: {ns}\n  labels:\n    \
             kubernetes.io/service-name: {name}\n    \
             endpointslice.kubernetes.io/managed-by: sluice-testbed\n\
             addressType: IPv4\nports:\n"
        );
        for p in &self.ports {
            let _ = write!(
                y,
                "- name: {}\n  protocol: {}\n  port: {}\n",
                p.name,
                p.protocol.as_str(),
                p.target_port
            );
        }
        if self.backends.is_empty() {
            y.push_str("endpoints: []\n");
        } else {
            y.push_str("endpoints:\n");
        }
        for b in &self.backends {
            let _ = write!(
                y,
                "- addresses:\n  - {}\n  conditions:\n    ready: {}\n    serving: {}\n    terminating: false\n",
                b.ip, b.ready, b.ready
            );
            if let Some(n) = &b.node_name {
                let _ = writeln!(y, "  nodeName: {n}");
            }
            let _ = write!(
                y,
                "  targetRef:\n    kind: Pod\n    name: {}\n    namespace: {ns}\n",
                b.name
            );
        }
        y
    }
}

/// A directory of manifests for `sluice agent --manifests DIR`. Files are
/// replaced atomically (written to a hidden temporary file, then renamed).
#[derive(Debug)]
pub struct ManifestDir {
    path: PathBuf,
}

impl ManifestDir {
    /// Creates `<dir>/manifests`.
    pub fn new_in(dir: &TestDir) -> anyhow::Result<ManifestDir> {
        Self::at(dir.join("manifests"))
    }

    /// Uses (and creates) `path`.
    pub fn at(path: PathBuf) -> anyhow::Result<ManifestDir> {
        fs::create_dir_all(&path)?;
        Ok(ManifestDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Atomically writes `contents` to `<dir>/<file>`.
    pub fn write_file(&self, file: &str, contents: &str) -> anyhow::Result<()> {
        let tmp = self.path.join(format!(".{file}.tmp"));
        let dst = self.path.join(file);
        {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            f.write_all(contents.as_bytes())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &dst).with_context(|| format!("renaming to {}", dst.display()))?;
        Ok(())
    }

    /// Removes `<dir>/<file>` (missing is fine).
    pub fn remove_file(&self, file: &str) -> anyhow::Result<()> {
        match fs::remove_file(self.path.join(file)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Writes (or atomically replaces) `svc-<namespace>-<name>.yaml`.
    pub fn write_service(&self, svc: &ClusterIpService) -> anyhow::Result<()> {
        self.write_file(&Self::service_file(&svc.namespace, &svc.name), &svc.to_yaml())
    }

    /// Deletes the Service and its EndpointSlice.
    pub fn remove_service(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        self.remove_file(&Self::service_file(namespace, name))
    }

    fn service_file(namespace: &str, name: &str) -> String {
        format!("svc-{namespace}-{name}.yaml")
    }

    /// Writes `node-<name>.yaml`: a Node with this node's pod CIDR.
    pub fn write_node(&self, node: &Node) -> anyhow::Result<()> {
        self.write_node_object(node.name(), &node.pod_cidr(), node.address())
    }

    /// Writes `node-<name>.yaml`: a Node with `spec.podCIDR(s)` and an
    /// `InternalIP` address.
    pub fn write_node_object(
        &self,
        name: &str,
        pod_cidr: &str,
        internal_ip: Ipv4Addr,
    ) -> anyhow::Result<()> {
        let y = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: {pod_cidr}\n  \
             podCIDRs:\n  - {pod_cidr}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: {internal_ip}\n"
        );
        self.write_file(&format!("node-{name}.yaml"), &y)
    }
}

// ---------------------------------------------------------------------------
// The agent and `sluice services`
// ---------------------------------------------------------------------------

/// One frontend as printed by `sluice services -o json`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ServiceInfo {
    pub address: String,
    pub port: u16,
    pub protocol: String,
    #[serde(default)]
    pub rev_nat_index: u32,
    #[serde(default)]
    pub backends: Vec<BackendInfo>,
}

/// One backend of a [`ServiceInfo`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BackendInfo {
    #[serde(default)]
    pub id: u32,
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub state: String,
}

impl ServiceInfo {
    /// Frontend `address:port/protocol` (protocol compared case-insensitively).
    pub fn is(&self, address: Ipv4Addr, port: u16, protocol: Protocol) -> bool {
        self.address == address.to_string()
            && self.port == port
            && self.protocol.eq_ignore_ascii_case(protocol.as_str())
    }
}

/// Finds the frontend `address:port/protocol` in `services`.
pub fn find_service(
    services: &[ServiceInfo],
    address: Ipv4Addr,
    port: u16,
    protocol: Protocol,
) -> Option<&ServiceInfo> {
    services.iter().find(|s| s.is(address, port, protocol))
}

/// Runs `BIN services --bpffs-root ROOT -o json` and parses its output.
pub fn sluice_services(bin: &Path, bpffs_root: &Path) -> anyhow::Result<Vec<ServiceInfo>> {
    let out = run_checked(
        Command::new(bin).arg("services").arg("--bpffs-root").arg(bpffs_root).args(["-o", "json"]),
        CMD_TIMEOUT,
    )?;
    serde_json::from_str(&out)
        .with_context(|| format!("parsing `sluice services -o json` output: {out:?}"))
}

/// Runs `BIN services --bpffs-root ROOT -o table` and returns its output.
pub fn sluice_services_table(bin: &Path, bpffs_root: &Path) -> anyhow::Result<String> {
    run_checked(
        Command::new(bin).arg("services").arg("--bpffs-root").arg(bpffs_root).args(["-o", "table"]),
        CMD_TIMEOUT,
    )
}

/// `true` when `bin --help` mentions an `agent` subcommand (lets tests skip
/// while only a stub binary exists).
pub fn sluice_has_agent(bin: &Path) -> bool {
    run_with_timeout(Command::new(bin).arg("--help"), CMD_TIMEOUT)
        .map(|o| o.stdout.contains("agent") || o.stderr.contains("agent"))
        .unwrap_or(false)
}

/// For a test that starts agents: `true` when it runs as root and `bin`
/// has an `agent` subcommand (otherwise it prints why it skips and returns
/// `false`), after [`sweep_stale`].
pub fn ready_for_agent(bin: &Path) -> bool {
    if !require_root() {
        return false;
    }
    if !sluice_has_agent(bin) {
        eprintln!("skipping: {} has no agent subcommand", bin.display());
        return false;
    }
    sweep_stale();
    true
}

/// How to start an agent; see [`Agent::start`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The `sluice` binary.
    pub bin: PathBuf,
    /// `--manifests`; an empty path leaves the flag out (the source is then
    /// in `extra_args`, e.g. `--kubeconfig`; see [`AgentConfig::with_kubeconfig`]).
    pub manifests: PathBuf,
    pub node_name: String,
    pub bpffs_root: PathBuf,
    /// `--cgroup-root`; `None` leaves the flag out (the agent then uses the
    /// cgroup2 root of the machine: avoid in tests).
    pub cgroup_root: Option<PathBuf>,
    /// `--cni-conf-dir`; `None` leaves the flag out.
    pub cni_conf_dir: Option<PathBuf>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// Further arguments after the ones above.
    pub extra_args: Vec<String>,
    /// `RUST_LOG` for the agent unless the environment already sets one.
    pub rust_log: String,
}

impl AgentConfig {
    /// The usual test set-up: manifests, bpffs and cgroup of the test, log
    /// and CNI config directory in `dir`.
    pub fn new(
        bin: impl Into<PathBuf>,
        node: &Node,
        manifests: &ManifestDir,
        bpffs: &BpffsMount,
        cgroup: Option<&TestCgroup>,
        dir: &TestDir,
    ) -> AgentConfig {
        AgentConfig {
            bin: bin.into(),
            manifests: manifests.path().to_owned(),
            node_name: node.name().to_owned(),
            bpffs_root: bpffs.path().join("sluice"),
            cgroup_root: cgroup.map(|c| c.path().to_owned()),
            cni_conf_dir: Some(dir.join("cni-net.d")),
            log: dir.join(format!("agent-{}.log", node.name())),
            extra_args: Vec::new(),
            rust_log: "info".to_owned(),
        }
    }

    /// [`AgentConfig::new`] for one of several nodes sharing `bpffs` and
    /// `dir`: pins under `<bpffs>/<node name>`, CNI config in
    /// `<dir>/cni-<node name>`.
    pub fn for_cluster_node(
        bin: impl Into<PathBuf>,
        node: &Node,
        manifests: &ManifestDir,
        bpffs: &BpffsMount,
        dir: &TestDir,
    ) -> AgentConfig {
        AgentConfig {
            bpffs_root: bpffs.path().join(node.name()),
            cni_conf_dir: Some(dir.join(format!("cni-{}", node.name()))),
            ..Self::new(bin, node, manifests, bpffs, None, dir)
        }
    }

    /// Like [`AgentConfig::new`], with an API server as the source:
    /// `--kubeconfig KUBECONFIG` instead of `--manifests`.
    pub fn with_kubeconfig(
        bin: impl Into<PathBuf>,
        node: &Node,
        kubeconfig: &Path,
        bpffs: &BpffsMount,
        cgroup: Option<&TestCgroup>,
        dir: &TestDir,
    ) -> AgentConfig {
        AgentConfig {
            bin: bin.into(),
            manifests: PathBuf::new(),
            node_name: node.name().to_owned(),
            bpffs_root: bpffs.path().join("sluice"),
            cgroup_root: cgroup.map(|c| c.path().to_owned()),
            cni_conf_dir: Some(dir.join("cni-net.d")),
            log: dir.join(format!("agent-{}.log", node.name())),
            extra_args: vec!["--kubeconfig".to_owned(), kubeconfig.display().to_string()],
            rust_log: "info".to_owned(),
        }
    }

    /// The agent's argument list (without the binary).
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["agent".into()];
        if !self.manifests.as_os_str().is_empty() {
            a.extend(["--manifests".into(), self.manifests.clone().into()]);
        }
        a.extend(["--node-name".into(), self.node_name.clone().into()]);
        a.extend(["--bpffs-root".into(), self.bpffs_root.clone().into()]);
        if let Some(c) = &self.cgroup_root {
            a.extend(["--cgroup-root".into(), c.clone().into()]);
        }
        if let Some(c) = &self.cni_conf_dir {
            a.extend(["--cni-conf-dir".into(), c.clone().into()]);
        }
        a.extend(self.extra_args.iter().map(Into::into));
        a
    }
}

/// A running `sluice agent` inside a node's network namespace. On drop it
/// gets SIGTERM, then SIGKILL after 3 s; when dropped while panicking, its
/// log is printed.
pub struct Agent {
    cfg: AgentConfig,
    child: Option<Child>,
}

impl Agent {
    /// Spawns the agent in `ns` (setns into the network namespace only, so
    /// the test's bpffs stays visible; not `ip netns exec`).
    pub fn start(ns: &impl AsRef<Netns>, cfg: AgentConfig) -> anyhow::Result<Agent> {
        if let Some(d) = &cfg.cni_conf_dir {
            fs::create_dir_all(d)?;
        }
        let log =
            File::create(&cfg.log).with_context(|| format!("creating {}", cfg.log.display()))?;
        let mut cmd = ns.as_ref().command(&cfg.bin)?;
        cmd.args(cfg.args()).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", &cfg.rust_log);
        }
        // SAFETY: prctl(2) is async-signal-safe. The agent gets SIGTERM when
        // the thread that spawned it dies (e.g. the test process is killed).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("spawning {}", cfg.bin.display()))?;
        Ok(Agent { cfg, child: Some(child) })
    }

    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.cfg.log).unwrap_or_default()
    }

    /// `Some(status)` once the agent has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("agent already stopped"),
        }
    }

    /// `sluice services -o json` against this agent's bpffs root.
    pub fn services(&self) -> anyhow::Result<Vec<ServiceInfo>> {
        sluice_services(&self.cfg.bin, &self.cfg.bpffs_root)
    }

    /// `sluice services -o table` against this agent's bpffs root.
    pub fn services_table(&self) -> anyhow::Result<String> {
        sluice_services_table(&self.cfg.bin, &self.cfg.bpffs_root)
    }

    /// Polls `sluice services -o json` (every 100 ms, at most `timeout`)
    /// until `pred` holds; fails early if the agent exits.
    pub fn wait_services(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&[ServiceInfo]) -> bool,
    ) -> anyhow::Result<Vec<ServiceInfo>> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(status) = self.try_wait()? {
                bail!("agent exited ({status}) while waiting; log:\n{}", self.log());
            }
            match self.services() {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(s) => last = format!("{s:?}"),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!("condition on `sluice services` not met within {timeout:?}; last: {last}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the frontend `address:port/protocol` has exactly
    /// `backends` backends in state `active` (or with no state given).
    pub fn wait_backends(
        &mut self,
        timeout: Duration,
        address: Ipv4Addr,
        port: u16,
        protocol: Protocol,
        backends: usize,
    ) -> anyhow::Result<ServiceInfo> {
        let s = self.wait_services(timeout, |s| {
            find_service(s, address, port, protocol).is_some_and(|f| {
                f.backends
                    .iter()
                    .filter(|b| b.state.is_empty() || b.state.eq_ignore_ascii_case("active"))
                    .count()
                    == backends
            })
        })?;
        Ok(find_service(&s, address, port, protocol).cloned().expect("checked by predicate"))
    }

    /// Waits until the frontend `address:port/protocol` is gone.
    pub fn wait_gone(
        &mut self,
        timeout: Duration,
        address: Ipv4Addr,
        port: u16,
        protocol: Protocol,
    ) -> anyhow::Result<()> {
        self.wait_services(timeout, |s| find_service(s, address, port, protocol).is_none())
            .map(drop)
    }

    /// SIGTERM, then SIGKILL after 3 s; returns the exit status.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else { bail!("agent already stopped") };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid")?);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        if let Some(status) = wait_child(&mut child, Duration::from_secs(3))? {
            return Ok(status);
        }
        eprintln!("testbed: agent {pid} ignored SIGTERM for 3 s, killing it");
        child.kill()?;
        Ok(child.wait()?)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            match self.stop() {
                Ok(status) if !status.success() && !thread::panicking() => {
                    eprintln!("testbed: agent exited with {status}");
                }
                Err(e) => eprintln!("testbed: stopping agent: {e:#}"),
                _ => {}
            }
        }
        if thread::panicking() {
            eprintln!(
                "----- agent log {} -----\n{}\n----- end of agent log -----",
                self.cfg.log.display(),
                self.log()
            );
        }
    }
}

/// Counts answers by name, e.g. for distribution checks.
pub fn tally<I: IntoIterator<Item = String>>(answers: I) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------
// BPF_PROG_TEST_RUN
// ---------------------------------------------------------------------------

/// Runs one frame through a loaded tc program with BPF_PROG_TEST_RUN:
/// (the program's verdict, the frame as it left).
pub fn prog_test_run(
    prog: &aya::programs::SchedClassifier,
    frame: &[u8],
) -> anyhow::Result<(u32, Vec<u8>)> {
    use aya::programs::{TestRun as _, TestRunOptions};
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::default()
    };
    let res = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    out.truncate(res.data_size_out as usize);
    Ok((res.return_value, out))
}

/// The kernel's drop counter for `reason` under the pins at `paths`.
pub fn drop_count(
    paths: &crate::datapath::PinPaths,
    reason: proxy_common::DropReason,
) -> anyhow::Result<u64> {
    let drops = crate::datapath::maps::read_drops(paths)?;
    Ok(drops.into_iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| n))
}
