//! The load generator and the echo server (both single-threaded, each run
//! as its own process, pinned to its own core by the orchestrator).
//!
//! - connection rate: connect, send 1 byte, read the 1-byte echo, close
//!   with an RST (SO_LINGER 0, so neither the client's socket table nor a
//!   conntrack table fills with TIME_WAIT entries), back to back for a
//!   fixed time;
//! - request/response latency: one persistent connection, 1 byte each way,
//!   every round trip timed;
//! - first-packet latency: the `connect()` time of each fresh connection of
//!   the connection-rate loop (the SYN out to the SYN-ACK back, as the
//!   client sees it), apart from the whole connection's time;
//! - throughput: one TCP stream, bulk data from the client for the
//!   measurement time, counted by the server, with the busy CPU time of the
//!   counted CPUs (`/proc/stat`) over the transfer (CPU per Gbit).

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const IO_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The first byte of a bulk-transfer connection: the server counts what
/// follows instead of echoing it.
const BULK_MARK: u8 = b'B';
/// The first byte of an identity probe: the server answers with its id
/// byte (`serve --id`) instead of echoing, so a client can tell which
/// backend a service sent it to.
const WHO_MARK: u8 = b'W';
/// Write size of the bulk transfer.
const BULK_CHUNK: usize = 128 * 1024;

/// What one client run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientResult {
    /// Connections completed (connect, 1 byte each way, close).
    pub connections: u64,
    /// Failed connection attempts, warm-up included (each counted, none retried).
    pub connect_errors: u64,
    pub crr_seconds: f64,
    /// Connections per second.
    pub conn_per_s: f64,
    /// Time of one whole connection (connect to close), µs.
    pub conn_p50_us: f64,
    pub conn_p99_us: f64,
    /// Round trips timed on the persistent connection.
    pub round_trips: u64,
    /// Request/response latency on the persistent connection, µs.
    pub rr_p50_us: f64,
    pub rr_p99_us: f64,
    /// First-packet latency: `connect()` of a fresh connection (SYN to
    /// SYN-ACK as the client sees it), µs.
    pub connect_p50_us: f64,
    pub connect_p99_us: f64,
    /// Bulk transfer (one stream): bytes the server received and the time
    /// from the first write to the server's count arriving.
    pub bulk_bytes: u64,
    pub bulk_seconds: f64,
    pub gbit_per_s: f64,
    /// Busy time of the counted CPUs over the transfer (`/proc/stat`: user,
    /// nice, system, irq, softirq), CPU seconds.
    pub bulk_cpu_seconds: f64,
    /// `bulk_cpu_seconds` per Gbit transferred, CPU ms.
    pub cpu_ms_per_gbit: Option<f64>,
}

/// Busy and total clock ticks of some CPUs, from `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// user + nice + system + irq + softirq.
    pub busy: u64,
    /// busy + idle + iowait + steal.
    pub total: u64,
}

impl CpuTicks {
    /// Sums the `cpuN` lines of `/proc/stat` text for `cpus`, or takes the
    /// aggregate `cpu` line when `cpus` is empty. `None` when a line is
    /// missing or malformed.
    pub fn parse(proc_stat: &str, cpus: &[usize]) -> Option<CpuTicks> {
        let line_ticks = |label: &str| -> Option<CpuTicks> {
            let line = proc_stat.lines().find(|l| l.split_whitespace().next() == Some(label))?;
            let f: Vec<u64> =
                line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
            // user nice system idle iowait irq softirq steal [guest guest_nice];
            // guest time is already in user and nice.
            let at = |i: usize| f.get(i).copied().unwrap_or(0);
            if f.len() < 4 {
                return None;
            }
            let busy = at(0) + at(1) + at(2) + at(5) + at(6);
            Some(CpuTicks { busy, total: busy + at(3) + at(4) + at(7) })
        };
        if cpus.is_empty() {
            return line_ticks("cpu");
        }
        cpus.iter().try_fold(CpuTicks::default(), |acc, cpu| {
            let t = line_ticks(&format!("cpu{cpu}"))?;
            Some(CpuTicks { busy: acc.busy + t.busy, total: acc.total + t.total })
        })
    }

    /// Reads `/proc/stat` now.
    pub fn read(cpus: &[usize]) -> io::Result<CpuTicks> {
        let text = std::fs::read_to_string("/proc/stat")?;
        CpuTicks::parse(&text, cpus).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("no CPU lines for {cpus:?}"))
        })
    }
}

/// Clock ticks per second of `/proc/stat` (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// CPU milliseconds per Gbit: `cpu_seconds` spent moving `bytes`; `None`
/// when nothing moved.
pub fn cpu_ms_per_gbit(cpu_seconds: f64, bytes: u64) -> Option<f64> {
    if bytes == 0 || !cpu_seconds.is_finite() {
        return None;
    }
    let gbit = bytes as f64 * 8.0 / 1e9;
    Some(cpu_seconds * 1000.0 / gbit)
}

/// Gbit/s of `bytes` in `seconds`.
pub fn gbit_per_s(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 { bytes as f64 * 8.0 / 1e9 / seconds } else { 0.0 }
}

/// The `p`-quantile (0..=1) of sorted `v` (nearest rank), in µs from ns.
fn quantile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted_ns.len() - 1) as f64 * p).round() as usize;
    sorted_ns[idx] as f64 / 1000.0
}

fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt with a valid fd and a pointer to a live `linger`
    // of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// One whole connection; returns the time `connect()` took.
fn one_connection(target: SocketAddr) -> io::Result<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    let connect = t.elapsed();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    set_linger_zero(&s)?;
    s.write_all(b"c")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(connect)
}

/// What [`bulk`] measured.
struct Bulk {
    bytes: u64,
    seconds: f64,
    cpu_seconds: f64,
}

/// One stream of bulk data to the server for `span`; the server answers
/// with the byte count once the client has shut down its side.
fn bulk(target: SocketAddr, span: Duration, cpus: &[usize]) -> io::Result<Bulk> {
    let mut s = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&[BULK_MARK])?;
    let chunk = vec![0x5a_u8; BULK_CHUNK];
    let before = CpuTicks::read(cpus)?;
    let started = Instant::now();
    while started.elapsed() < span {
        s.write_all(&chunk)?;
    }
    s.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)?;
    let seconds = started.elapsed().as_secs_f64();
    let after = CpuTicks::read(cpus)?;
    let ticks = after.busy.saturating_sub(before.busy);
    Ok(Bulk {
        bytes: u64::from_le_bytes(count),
        seconds,
        cpu_seconds: ticks as f64 / clock_ticks_per_second(),
    })
}

/// Runs the measurements against `target`, `seconds` each, after a
/// warm-up; CPU time of the transfer is counted on `cpus` (all when empty).
pub fn run_client(target: SocketAddrV4, seconds: f64, cpus: &[usize]) -> io::Result<ClientResult> {
    let target = SocketAddr::V4(target);
    let span = Duration::from_secs_f64(seconds);

    // Warm-up (caches, conntrack and BPF maps). A failed connection is
    // counted, not fatal: the report shows the count.
    let mut errors = 0u64;
    let mut warm = 0;
    while warm < 200 {
        match one_connection(target) {
            Ok(_) => warm += 1,
            Err(e) if errors >= 10 => return Err(e),
            Err(_) => errors += 1,
        }
    }
    let mut conn_ns = Vec::with_capacity(65_536);
    let mut connect_ns = Vec::with_capacity(65_536);
    let started = Instant::now();
    while started.elapsed() < span {
        let t = Instant::now();
        match one_connection(target) {
            Ok(connect) => {
                conn_ns.push(t.elapsed().as_nanos() as u64);
                connect_ns.push(connect.as_nanos() as u64);
            }
            Err(_) => errors += 1,
        }
        if errors > 1000 {
            break;
        }
    }
    let crr_seconds = started.elapsed().as_secs_f64();
    let connections = conn_ns.len() as u64;
    conn_ns.sort_unstable();
    connect_ns.sort_unstable();

    let mut s = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(_) => {
            errors += 1;
            TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?
        }
    };
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut b = [0u8; 1];
    for _ in 0..2000 {
        s.write_all(b"p")?;
        s.read_exact(&mut b)?;
    }
    let mut rr_ns = Vec::with_capacity(262_144);
    let started = Instant::now();
    while started.elapsed() < span {
        let t = Instant::now();
        s.write_all(b"p")?;
        s.read_exact(&mut b)?;
        rr_ns.push(t.elapsed().as_nanos() as u64);
    }
    drop(s);
    rr_ns.sort_unstable();

    let bulk = bulk(target, span, cpus)?;

    Ok(ClientResult {
        connections,
        connect_errors: errors,
        crr_seconds,
        conn_per_s: connections as f64 / crr_seconds,
        conn_p50_us: quantile_us(&conn_ns, 0.5),
        conn_p99_us: quantile_us(&conn_ns, 0.99),
        round_trips: rr_ns.len() as u64,
        rr_p50_us: quantile_us(&rr_ns, 0.5),
        rr_p99_us: quantile_us(&rr_ns, 0.99),
        connect_p50_us: quantile_us(&connect_ns, 0.5),
        connect_p99_us: quantile_us(&connect_ns, 0.99),
        bulk_bytes: bulk.bytes,
        bulk_seconds: bulk.seconds,
        gbit_per_s: gbit_per_s(bulk.bytes, bulk.seconds),
        bulk_cpu_seconds: bulk.cpu_seconds,
        cpu_ms_per_gbit: cpu_ms_per_gbit(bulk.cpu_seconds, bulk.bytes),
    })
}

/// Serves connections one after the other (the client is single-threaded):
/// echoes every byte until the peer closes or resets, or, for a connection
/// whose first byte is [`BULK_MARK`], counts the bytes after it until the
/// client shuts down its side and answers with the count (8 bytes, little
/// endian); to a first byte [`WHO_MARK`] it answers `id`. Exits after
/// `max_seconds` whatever happens, so it never outlives a run.
pub fn serve(port: u16, id: u8, max_seconds: u64) -> io::Result<()> {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(max_seconds));
        eprintln!("bench_peers serve: {max_seconds} s limit reached, exiting");
        std::process::exit(0);
    });
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    println!("listening");
    io::stdout().flush()?;
    serve_on(&listener, id)
}

/// The server loop of [`serve`] on a bound listener; never returns.
fn serve_on(listener: &TcpListener, id: u8) -> ! {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let Ok((mut s, _)) = listener.accept() else { continue };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut first = true;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) if first && buf[0] == BULK_MARK => {
                    sink(&mut s, &mut buf, (n - 1) as u64);
                    break;
                }
                Ok(_) if first && buf[0] == WHO_MARK => {
                    first = false;
                    if s.write_all(&[id]).is_err() {
                        break;
                    }
                }
                Ok(n) => {
                    first = false;
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// The server side of a bulk transfer: counts until EOF, then answers.
fn sink(s: &mut TcpStream, buf: &mut [u8], mut count: u64) {
    loop {
        match s.read(buf) {
            Ok(0) => break,
            Ok(n) => count += n as u64,
            Err(_) => return,
        }
    }
    let _ = s.write_all(&count.to_le_bytes());
}

/// Polls `target` from the calling thread (already in the client's
/// namespace) until one connection gets its byte echoed; returns the time
/// since `since`. Each attempt is bounded by 5 ms (a SYN that nothing
/// answers, or whose ICMP error TCP treats as soft, would otherwise wait
/// for the 1 s retransmission), which is the resolution of the result.
pub fn wait_reachable(
    target: SocketAddrV4,
    since: Instant,
    timeout: Duration,
) -> io::Result<Duration> {
    let target = SocketAddr::V4(target);
    loop {
        let attempt = (|| -> io::Result<()> {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(5))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            set_linger_zero(&s)?;
            s.write_all(b"r")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
        })();
        if attempt.is_ok() {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{target} not reachable within {timeout:?}: {}", attempt.unwrap_err()),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls `target` from the calling thread (in the client's namespace) with
/// identity probes until a connection is answered by the backend with id
/// `want`; returns the time since `since`. Other backends answering (the
/// old endpoint, or the service's other endpoints) are retried after
/// 200 µs; attempts are bounded as in [`wait_reachable`].
pub fn wait_backend(
    target: SocketAddrV4,
    want: u8,
    since: Instant,
    timeout: Duration,
) -> io::Result<Duration> {
    let target = SocketAddr::V4(target);
    loop {
        let attempt = (|| -> io::Result<u8> {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(5))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            set_linger_zero(&s)?;
            s.write_all(&[WHO_MARK])?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            Ok(b[0])
        })();
        if matches!(attempt, Ok(id) if id == want) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            let last = match attempt {
                Ok(id) => format!("backend {id} answered"),
                Err(e) => e.to_string(),
            };
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("backend {want} not reached through {target} within {timeout:?}: {last}"),
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_STAT: &str = "\
cpu  1000 10 500 8000 40 5 25 7 3 0
cpu0 600 10 300 3000 20 5 15 3 3 0
cpu1 400 0 200 5000 20 0 10 4 0 0
intr 12345 0 0
ctxt 999
";

    // Expect: busy = user + nice + system + irq + softirq (guest is already
    // in user), total adds idle, iowait and steal; per-CPU lines sum, the
    // aggregate line is used for no CPU list, and a missing CPU is None.
    #[test]
    fn proc_stat_busy_and_total() {
        let all = CpuTicks::parse(PROC_STAT, &[]).unwrap();
        assert_eq!(all, CpuTicks { busy: 1000 + 10 + 500 + 5 + 25, total: 1540 + 8000 + 40 + 7 });
        let cpu0 = CpuTicks::parse(PROC_STAT, &[0]).unwrap();
        assert_eq!(cpu0, CpuTicks { busy: 930, total: 930 + 3000 + 20 + 3 });
        let both = CpuTicks::parse(PROC_STAT, &[0, 1]).unwrap();
        assert_eq!(both.busy, 930 + 610);
        assert_eq!(both.total, all.total);
        assert_eq!(CpuTicks::parse(PROC_STAT, &[2]), None);
        assert_eq!(CpuTicks::parse("cpu 1 2\n", &[]), None);
        // The real file parses and counts something.
        let now = CpuTicks::read(&[]).unwrap();
        assert!(now.total >= now.busy && now.total > 0, "{now:?}");
    }

    // Expect: 1.25 GB (10 Gbit) moved with 2 CPU seconds is 200 CPU ms per
    // Gbit and, in 4 s, 2.5 Gbit/s; nothing moved gives no figure.
    #[test]
    fn cpu_per_gbit_arithmetic() {
        let bytes = 1_250_000_000;
        let per = cpu_ms_per_gbit(2.0, bytes).unwrap();
        assert!((per - 200.0).abs() < 1e-9, "{per}");
        assert!((gbit_per_s(bytes, 4.0) - 2.5).abs() < 1e-12);
        assert_eq!(cpu_ms_per_gbit(2.0, 0), None);
        assert_eq!(cpu_ms_per_gbit(f64::NAN, 10), None);
        assert_eq!(gbit_per_s(bytes, 0.0), 0.0);
        assert!(clock_ticks_per_second() >= 1.0);
    }

    // Expect: over loopback, the echo server echoes, and a bulk connection
    // gets back exactly the number of bytes sent after the mark.
    #[test]
    fn server_echoes_and_counts_bulk() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let target = listener.local_addr().unwrap();
        std::thread::spawn(move || serve_on(&listener, 7));
        let deadline = Instant::now() + Duration::from_secs(5);
        let connect = loop {
            match one_connection(target) {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => panic!("server not up: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        assert!(connect < CONNECT_TIMEOUT);
        let b = bulk(target, Duration::from_millis(200), &[]).unwrap();
        assert!(b.bytes >= BULK_CHUNK as u64, "{}", b.bytes);
        assert_eq!(b.bytes % BULK_CHUNK as u64, 0, "whole chunks were written");
        assert!(b.seconds >= 0.2 && b.cpu_seconds >= 0.0);
    }

    // Expect: an identity probe gets the server's id back; waiting for
    // another id times out naming the one that answered.
    #[test]
    fn server_answers_identity_probes() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let SocketAddr::V4(target) = listener.local_addr().unwrap() else { unreachable!() };
        std::thread::spawn(move || serve_on(&listener, 7));
        let t = Duration::from_secs(5);
        assert!(wait_backend(target, 7, Instant::now(), t).unwrap() < t);
        let e = wait_backend(target, 8, Instant::now(), Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("backend 7 answered"), "{e}");
    }
}
