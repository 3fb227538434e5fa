//! The load generator and the echo server (both single-threaded, each run
//! as its own process, pinned to its own core by the orchestrator).
//!
//! - connection rate: connect, send 1 byte, read the 1-byte echo, close
//!   with an RST (SO_LINGER 0, so neither the client's socket table nor a
//!   conntrack table fills with TIME_WAIT entries), back to back for a
//!   fixed time;
//! - request/response latency: one persistent connection, 1 byte each way,
//!   every round trip timed.

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const IO_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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

fn one_connection(target: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    set_linger_zero(&s)?;
    s.write_all(b"c")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(())
}

/// Runs both measurements against `target`, `seconds` each, after a warm-up.
pub fn run_client(target: SocketAddrV4, seconds: f64) -> io::Result<ClientResult> {
    let target = SocketAddr::V4(target);
    let span = Duration::from_secs_f64(seconds);

    // Warm-up (caches, conntrack and BPF maps). A failed connection is
    // counted, not fatal: the report shows the count.
    let mut errors = 0u64;
    let mut warm = 0;
    while warm < 200 {
        match one_connection(target) {
            Ok(()) => warm += 1,
            Err(e) if errors >= 10 => return Err(e),
            Err(_) => errors += 1,
        }
    }
    let mut conn_ns = Vec::with_capacity(65_536);
    let started = Instant::now();
    while started.elapsed() < span {
        let t = Instant::now();
        match one_connection(target) {
            Ok(()) => conn_ns.push(t.elapsed().as_nanos() as u64),
            Err(_) => errors += 1,
        }
        if errors > 1000 {
            break;
        }
    }
    let crr_seconds = started.elapsed().as_secs_f64();
    let connections = conn_ns.len() as u64;
    conn_ns.sort_unstable();

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
    })
}

/// Serves connections one after the other (the client is single-threaded):
/// echoes every byte until the peer closes or resets. Exits after
/// `max_seconds` whatever happens, so it never outlives a run.
pub fn serve(port: u16, max_seconds: u64) -> io::Result<()> {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(max_seconds));
        eprintln!("bench_peers serve: {max_seconds} s limit reached, exiting");
        std::process::exit(0);
    });
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
    println!("listening");
    io::stdout().flush()?;
    let mut buf = [0u8; 64];
    loop {
        let Ok((mut s, _)) = listener.accept() else { continue };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    }
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
