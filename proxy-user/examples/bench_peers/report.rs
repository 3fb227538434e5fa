//! The Markdown report: the machine, medians with their spread, every
//! data-plane figure as a ratio to the direct path, and what the emulation
//! leaves out.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::{Peer, Trial};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub pinned: bool,
    pub iptables: String,
    pub nft: String,
    /// Whether the kernel has IPVS (`/proc/net/ip_vs`).
    pub ipvs: bool,
    pub sluice_commit: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub date_utc: String,
    pub run_seconds: f64,
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&s).lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

impl Machine {
    pub fn probe(pinned: bool) -> Machine {
        let cpuinfo = read_trim("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        Machine {
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            pinned,
            iptables: first_line("iptables", &["-V"]),
            nft: first_line("nft", &["--version"]),
            ipvs: std::path::Path::new("/proc/net/ip_vs").exists(),
            sluice_commit: first_line("git", &["rev-parse", "--short", "HEAD"]),
            loadavg_start: read_trim("/proc/loadavg"),
            loadavg_end: String::new(),
            date_utc: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            run_seconds: 0.0,
        }
    }

    pub fn finish(mut self, elapsed: Duration) -> Machine {
        self.loadavg_end = read_trim("/proc/loadavg");
        self.run_seconds = elapsed.as_secs_f64();
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub services: Vec<u32>,
    pub reps: u32,
    pub seconds: f64,
    pub peers: Vec<String>,
    pub quick: bool,
}

/// Median, minimum and maximum.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[v.len() - 1] })
    }

    /// `median` alone for one value, else `median (min–max)`.
    fn show(self, decimals: usize) -> String {
        if self.min == self.max {
            format!("{:.decimals$}", self.median)
        } else {
            format!("{:.decimals$} ({:.decimals$}–{:.decimals$})", self.median, self.min, self.max)
        }
    }
}

fn spread(trials: &[&Trial], f: impl Fn(&Trial) -> Option<f64>) -> Option<Spread> {
    Spread::of(trials.iter().filter_map(|t| f(t)))
}

fn ratio(value: Option<Spread>, base: Option<Spread>) -> String {
    match (value, base) {
        (Some(v), Some(b)) if b.median > 0.0 => format!("{:.2}", v.median / b.median),
        _ => "–".to_owned(),
    }
}

fn cell(s: Option<Spread>, decimals: usize) -> String {
    s.map_or_else(|| "–".to_owned(), |s| s.show(decimals))
}

const NOT_EMULATED: &str = "\
- **kube-proxy's own work is not run.** Only the kernel side is emulated: the rule sets \
that kube-proxy v1.33's iptables and nftables modes write for the same services, loaded \
with the same tools (`iptables-restore --noflush`, `nft -f`). kube-proxy's Go side (informers, \
change tracking, building the ruleset text, `iptables-save` before partial syncs, its periodic \
resyncs, conntrack cleanup for UDP, the metrics server) is not measured, so the programming \
times for iptables and nftables are a lower bound of what kube-proxy takes; sluice's include \
everything from the agent's start (loading and attaching its programs, reading the manifests).
- **One node, pod to ClusterIP on the same node.** No NodePort, LoadBalancer, external IPs, \
session affinity, traffic policies or endpoints on other nodes; no masquerade happens (the \
client is inside the cluster CIDR), so KUBE-MARK-MASQ / mark-for-masquerade are evaluated but \
never match. The filter-table chains (KUBE-FORWARD, KUBE-PROXY-FIREWALL, nftables' \
endpoints/firewall checks) are installed as kube-proxy installs them and so are paid per \
packet or per new connection as in a real node.
- **Conntrack details.** netfilter's conntrack runs with its defaults inside the node \
namespace (no zones, no tuned `nf_conntrack_max`/timeouts, no `conntrack` flushes by the \
proxy). The client closes each connection with an RST (SO_LINGER 0) so that neither its \
ports nor conntrack fill with TIME_WAIT entries; every peer sees the same close.
- **Extra chains kube-proxy also writes** and that play no part here are left out: \
KUBE-PROXY-CANARY / KUBE-KUBELET-CANARY in mangle, NodePort and external chains \
(KUBE-EXT-*, KUBE-FW-*, KUBE-SVL-*), per-service REJECT rules for services without endpoints.
- **Shared machine.** The load average before and after the run is recorded above; figures \
taken while other work ran on the machine are noisier (see the spread).";

pub fn markdown(
    machine: &Machine,
    settings: &Settings,
    trials: &[Trial],
    failures: &[String],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# sluice vs kube-proxy's data planes (bench peers)\n");
    let _ = writeln!(
        md,
        "Run {} on kernel {} ({} × {}), sluice {}; {}; {}.",
        machine.date_utc,
        machine.kernel,
        machine.cpus,
        machine.cpu_model,
        machine.sluice_commit,
        machine.iptables,
        machine.nft
    );
    let _ = writeln!(
        md,
        "Client and echo server single-threaded, {}. Load average {} at the start, {} at the end; \
         the run took {:.0} s.\n",
        if machine.pinned {
            "pinned to CPU 0 and CPU 1 (`taskset`)"
        } else {
            "not pinned (one CPU or no taskset)"
        },
        machine.loadavg_start.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        machine.loadavg_end.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        machine.run_seconds
    );
    let _ = writeln!(
        md,
        "Services N = {:?}, one endpoint each, the measured service last; peers interleaved, \
         {} repetition(s), {} s per measurement. Figures are medians (min–max over repetitions); \
         `× direct` is the ratio of medians to the direct path (above 1 for connection rate is \
         faster, below 1 for latency is faster).\n",
        settings.services, settings.reps, settings.seconds
    );
    let _ = writeln!(
        md,
        "Peers: **direct** (client to the backend pod's IP), **iptables** (kube-proxy iptables \
         mode's rules, `iptables-restore`, {} backend), **nftables** (kube-proxy nftables mode's \
         table, `nft -f`), **sluice** (agent with `--socket-lb=false`: per-packet path), \
         **sluice-socklb** (agent defaults; the client runs inside the agent's `--cgroup-root`).\n",
        if machine.iptables.contains("nf_tables") { "nf_tables" } else { "legacy" }
    );

    let peers: Vec<Peer> =
        Peer::ALL.into_iter().filter(|p| trials.iter().any(|t| t.peer == *p)).collect();
    let _ = writeln!(md, "## Data plane\n");
    let _ = writeln!(
        md,
        "| N | peer | connections/s | × direct | RR p50 µs | × direct | RR p99 µs | × direct | connection p50 µs | errors |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &settings.services {
        let of = |p: Peer| -> Vec<&Trial> {
            trials.iter().filter(|t| t.services == n && t.peer == p).collect()
        };
        let direct = of(Peer::Direct);
        let d_rate = spread(&direct, |t| Some(t.client.conn_per_s));
        let d_p50 = spread(&direct, |t| Some(t.client.rr_p50_us));
        let d_p99 = spread(&direct, |t| Some(t.client.rr_p99_us));
        for &p in &peers {
            let ts = of(p);
            if ts.is_empty() {
                continue;
            }
            let rate = spread(&ts, |t| Some(t.client.conn_per_s));
            let p50 = spread(&ts, |t| Some(t.client.rr_p50_us));
            let p99 = spread(&ts, |t| Some(t.client.rr_p99_us));
            let conn = spread(&ts, |t| Some(t.client.conn_p50_us));
            let errors: u64 = ts.iter().map(|t| t.client.connect_errors).sum();
            let _ = writeln!(
                md,
                "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {errors} |",
                p.name(),
                cell(rate, 0),
                ratio(rate, d_rate),
                cell(p50, 1),
                ratio(p50, d_p50),
                cell(p99, 1),
                ratio(p99, d_p99),
                cell(conn, 1),
            );
        }
    }

    if !failures.is_empty() {
        let _ = writeln!(
            md,
            "\n{} trial(s) failed and are not in the figures above:\n",
            failures.len()
        );
        for f in failures {
            let _ = writeln!(md, "- {}", f.replace('\n', " "));
        }
    }
    let _ = writeln!(md, "\n## Time to program N services, cold (ms)\n");
    let _ = writeln!(
        md,
        "iptables and nftables: the wall time of `iptables-restore --noflush` / `nft -f` on an \
         empty namespace, and (after the slash) from its start until the measured service \
         answered a client. sluice: from the agent's start (manifests already on disk) until \
         the measured service answered. Polling resolution about 5 ms.\n"
    );
    let _ = writeln!(md, "| N | iptables-restore | nft -f | sluice | sluice-socklb |");
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|");
    for &n in &settings.services {
        let of = |p: Peer| -> Vec<&Trial> {
            trials.iter().filter(|t| t.services == n && t.peer == p).collect()
        };
        let both = |p: Peer| {
            let ts = of(p);
            let cmd = spread(&ts, |t| t.program_cmd_ms);
            let reach = spread(&ts, |t| t.program_reachable_ms);
            match (cmd, reach) {
                (Some(c), Some(r)) => format!("{} / {}", c.show(1), r.show(1)),
                (None, Some(r)) => r.show(1),
                _ => "–".to_owned(),
            }
        };
        let _ = writeln!(
            md,
            "| {n} | {} | {} | {} | {} |",
            both(Peer::Iptables),
            both(Peer::Nftables),
            both(Peer::Sluice),
            both(Peer::SluiceSocklb)
        );
    }
    let _ = writeln!(md, "\n## What the emulation leaves out\n\n{NOT_EMULATED}");
    let _ = writeln!(
        md,
        "- **IPVS**: {}",
        if machine.ipvs {
            "this kernel has IPVS, but kube-proxy's ipvs mode is not emulated yet."
        } else {
            "kube-proxy's ipvs mode cannot run on this kernel (no /proc/net/ip_vs: IPVS is not \
             built in and modules cannot be loaded), so it is not a peer."
        }
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_median_min_max() {
        let s = Spread::of([3.0, 1.0, 2.0, f64::NAN]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Spread::of([]).is_none());
        assert_eq!(Spread::of([5.0]).unwrap().show(1), "5.0");
        assert_eq!(Spread::of([1.0, 2.0, 3.0]).unwrap().show(0), "2 (1–3)");
    }
}
