//! Large transfers: a receiver that proves what arrived (byte count and an
//! FNV-1a hash for TCP, the length of each UDP datagram), and the senders.

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{CMD_TIMEOUT, Netns, POLL, ServerThreads};

/// How long a bulk connection may stay silent before the server gives up on it.
const IDLE: Duration = Duration::from_secs(10);

/// FNV-1a, 64 bit, continued from `h`.
fn fnv1a(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// A receiver on `port` in a namespace: each TCP connection is read to EOF
/// and answered with `<bytes> <FNV-1a hash, hex>\n`; each UDP datagram (up to
/// 64 KiB) with its length in decimal. Stopped (threads joined) on drop.
pub struct BulkServer {
    _threads: ServerThreads,
}

impl BulkServer {
    pub fn start(ns: &impl AsRef<Netns>, port: u16) -> anyhow::Result<BulkServer> {
        let ns = ns.as_ref();
        let mut threads = ServerThreads::default();
        threads.spawn(
            ns,
            "bulk-tcp",
            &format!("bulk server: TCP port {port}"),
            move || {
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
                l.set_nonblocking(true)?;
                Ok(l)
            },
            |listener, stop| {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let _ = count_and_answer(s, stop);
                        }
                        Err(_) => thread::sleep(POLL),
                    }
                }
            },
        )?;
        threads.spawn(
            ns,
            "bulk-udp",
            &format!("bulk server: UDP port {port}"),
            move || {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
                s.set_read_timeout(Some(POLL))?;
                Ok(s)
            },
            |sock, stop| {
                let mut buf = vec![0u8; 1 << 16];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((k, peer)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(k.to_string().as_bytes(), peer);
                    }
                }
            },
        )?;
        Ok(BulkServer { _threads: threads })
    }
}

/// Reads `s` to EOF (giving up after [`IDLE`] of silence or on `stop`) and
/// answers with the count and hash.
fn count_and_answer(mut s: TcpStream, stop: &AtomicBool) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(POLL * 10))?;
    s.set_write_timeout(Some(CMD_TIMEOUT))?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut n, mut h) = (0u64, FNV_OFFSET);
    let mut last = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                n += k as u64;
                h = fnv1a(h, &buf[..k]);
                last = Instant::now();
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) || last.elapsed() > IDLE {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
    s.write_all(format!("{n} {h:x}\n").as_bytes())
}

/// Sends `total` bytes in 64 KiB writes over one TCP connection from inside
/// `ns` to a [`BulkServer`] at `to`: (what the server reports, what was
/// sent), both as `<bytes> <hash>`. Bounded by `timeout` as a whole and by
/// 10 s per write or read.
pub fn bulk_send(
    ns: &impl AsRef<Netns>,
    to: SocketAddrV4,
    total: usize,
    timeout: Duration,
) -> io::Result<(String, String)> {
    ns.as_ref().exec(timeout, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(to), IDLE)?;
        s.set_write_timeout(Some(IDLE))?;
        s.set_read_timeout(Some(IDLE))?;
        let chunk: Vec<u8> = (0..1usize << 16).map(|i| (i * 7 % 251) as u8).collect();
        let (mut sent, mut h) = (0, FNV_OFFSET);
        while sent < total {
            let k = chunk.len().min(total - sent);
            s.write_all(&chunk[..k])?;
            h = fnv1a(h, &chunk[..k]);
            sent += k;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok((answer.trim().to_owned(), format!("{sent} {h:x}")))
    })?
}

/// Sends one datagram of `len` bytes from inside `ns` to a [`BulkServer`]
/// at `to`; the length the server reports. Waits `timeout` for the answer.
pub fn udp_len(
    ns: &impl AsRef<Netns>,
    to: SocketAddrV4,
    len: usize,
    timeout: Duration,
) -> io::Result<String> {
    ns.as_ref().exec(timeout * 2 + Duration::from_secs(1), move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_read_timeout(Some(timeout))?;
        s.connect(to)?;
        s.send(&vec![0x5a; len])?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })?
}
