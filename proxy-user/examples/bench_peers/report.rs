//! The Markdown report: the machine, medians with their spread, every
//! data-plane figure as a ratio to the direct path, programming times and
//! the agent's peak RSS, the plot's data, and what the emulation leaves out.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::plan::Placement;
use crate::plot::Series;
use crate::{ChangeSeries, Peer, Programming, Skip, Trial};

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
    /// Endpoint counts of the measured services.
    pub endpoints: Vec<u32>,
    /// Placements of the measured services (`first`, `middle`, `last`).
    pub placements: Vec<String>,
    pub all_pairs: bool,
    pub max_n_rules: u32,
    pub reps: u32,
    pub seconds: f64,
    pub peers: Vec<String>,
    pub quick: bool,
    /// Whose busy time CPU per Gbit counts.
    pub cpu_counted: String,
}

impl Settings {
    /// The placement the plot and the other endpoint counts use: the
    /// latest given (`last` if given).
    pub fn worst_placement(&self) -> Option<Placement> {
        self.placements.iter().filter_map(|p| Placement::parse(p).ok()).max()
    }
}

/// Everything [`markdown`] reports.
pub struct Input<'a> {
    pub machine: &'a Machine,
    pub settings: &'a Settings,
    pub trials: &'a [Trial],
    pub programming: &'a [Programming],
    pub changes: &'a [ChangeSeries],
    pub skips: &'a [Skip],
    pub failures: &'a [String],
    /// The plot's file name, next to the report.
    pub plot_file: &'a str,
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
change tracking, building the ruleset text, its periodic resyncs, conntrack cleanup for UDP, \
the metrics server) is not measured, so the programming times for iptables and nftables are a \
lower bound of what kube-proxy takes; sluice's include everything from the agent's start \
(loading and attaching its programs, reading the manifests). For one change the listings \
kube-proxy runs before writing (`iptables-save -t nat` below 1000 endpoints, `nft --json list \
chains ip` and `list sets ip`) are run and counted in *sync*; the endpoint informer's delay \
is not, nor kube-proxy's rate limit between syncs (`minSyncPeriod`, 1 s by default: the \
changes here are 150 ms apart, so a real kube-proxy would have held back most of them), and \
the partial syncs follow kube-proxy's change of an existing service (a new or deleted service would also touch the \
maps and, for nftables, the `cluster-ips` set).
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
- **Only the measured services have several endpoints.** Every other service has one \
endpoint that is never reached, so with 10 endpoints the rule sets are not those of N \
services × 10 endpoints. Per packet, iptables walks KUBE-SERVICES (one rule per service) and \
the chosen service's chain, nftables looks up one element of its verdict map and sluice one \
map entry: none of these depends on the other services' endpoints. Programming time and memory \
would be larger with every service at 10 endpoints.
- **The peers' nodes exist side by side.** Each peer has a node namespace of its own and \
keeps its programming (rules loaded, agent running) while the peers are measured in turn; the \
others are idle meanwhile (a sluice agent scans its node's devices once a second).
- **Shared machine.** The load average before and after the run is recorded above; figures \
taken while other work ran on the machine are noisier (see the spread).";

/// One row group of the data-plane tables: the measured service.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    placement: String,
    endpoints: u32,
    index: u32,
}

/// The measured services at `n`, by endpoints then index.
fn rows_at(trials: &[Trial], n: u32) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for t in trials.iter().filter(|t| t.services == n) {
        if let (Some(placement), Some(endpoints), Some(index)) =
            (&t.placement, t.endpoints, t.index)
        {
            let r = Row { placement: placement.clone(), endpoints, index };
            if !rows.contains(&r) {
                rows.push(r);
            }
        }
    }
    rows.sort_by_key(|r| (r.endpoints, r.index));
    rows
}

fn of_row<'a>(trials: &'a [Trial], n: u32, peer: Peer, row: Option<&Row>) -> Vec<&'a Trial> {
    trials
        .iter()
        .filter(|t| t.services == n && t.peer == peer)
        .filter(|t| match row {
            None => true,
            Some(r) => {
                t.placement.as_deref() == Some(r.placement.as_str())
                    && t.endpoints == Some(r.endpoints)
                    && t.index == Some(r.index)
            }
        })
        .collect()
}

/// The plot's lines: per peer, the median connection time (p50 of connect,
/// 1-byte request/response, close) of the measured service at the worst
/// placement with the first endpoint count, against N; the direct path
/// over all its trials at N. Returns the title too.
pub fn per_connection_series(settings: &Settings, trials: &[Trial]) -> (String, Vec<Series>) {
    let worst = settings.worst_placement();
    let endpoints = settings.endpoints.first().copied();
    let reference = |t: &Trial| -> bool {
        t.peer == Peer::Direct
            || (t.endpoints == endpoints
                && worst.is_some_and(|w| {
                    t.placement.as_deref().is_some_and(|p| p.split('=').any(|x| x == w.name()))
                }))
    };
    let mut series = Vec::new();
    for peer in Peer::ALL {
        let mut points = Vec::new();
        for &n in &settings.services {
            let ts: Vec<&Trial> = trials
                .iter()
                .filter(|t| t.peer == peer && t.services == n && reference(t))
                .collect();
            if let Some(s) = spread(&ts, |t| Some(t.client.conn_p50_us)) {
                points.push((f64::from(n), s.median));
            }
        }
        if !points.is_empty() {
            series.push(Series { name: peer.name().to_owned(), points });
        }
    }
    let title = format!(
        "Per-connection cost vs services (measured service {}, {} endpoint(s))",
        worst.map_or("?", Placement::name),
        endpoints.map_or_else(|| "?".to_owned(), |e| e.to_string())
    );
    (title, series)
}

pub fn markdown(input: &Input<'_>) -> String {
    let Input { machine, settings, trials, programming, changes, skips, failures, plot_file } =
        *input;
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
        "Client and echo servers single-threaded, {}. Load average {} at the start, {} at the end; \
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
        "Services N = {:?}. Measured services: placements {} among the N{}, endpoints {:?} (that \
         many backend pods, each with its own echo server); {}. Every other service has one \
         endpoint that is never reached. Each peer has a node namespace of its own and is \
         programmed once per N with all the measured services in one set (at small N, where \
         they do not fit apart, one set per endpoint count; placements that fall on the same \
         service are one row, e.g. `first=middle=last` at N = 1). Peers interleaved, {} \
         repetition(s), {} s per measurement. Figures are medians (min–max over repetitions); \
         `× direct` is the ratio of medians to the direct path at the same N (above 1 for \
         connection rate and Gbit/s is faster, below 1 for latency and CPU is better).\n",
        settings.services,
        settings.placements.join(", "),
        if settings.placements.len() > 1 {
            " (first = index 0, middle = about N/2, last = index N-1)"
        } else {
            ""
        },
        settings.endpoints,
        if settings.all_pairs || settings.endpoints.len() < 2 || settings.placements.len() < 2 {
            "every pair of placement and endpoint count".to_owned()
        } else {
            format!(
                "every placement with {} endpoint(s), the other endpoint counts at the {} placement",
                settings.endpoints[0],
                settings.worst_placement().map_or("last", Placement::name)
            )
        },
        settings.reps,
        settings.seconds
    );
    let _ = writeln!(
        md,
        "Peers: **direct** (client to a backend pod's IP), **iptables** (kube-proxy iptables \
         mode's rules, `iptables-restore`, {} backend), **nftables** (kube-proxy nftables mode's \
         table, `nft -f`), **sluice** (agent with `--socket-lb=false`: per-packet path), \
         **sluice-socklb** (agent defaults; the client runs inside the agent's `--cgroup-root`).\n",
        if machine.iptables.contains("nf_tables") { "nf_tables" } else { "legacy" }
    );

    let peers: Vec<Peer> = Peer::ALL
        .into_iter()
        .filter(|&p| p != Peer::Direct && trials.iter().any(|t| t.peer == p))
        .collect();
    let _ = writeln!(md, "## Data plane: connections and latency\n");
    let _ = writeln!(
        md,
        "| N | placement | endpoints | peer | connections/s | × direct | RR p50 µs | × direct | RR p99 µs | × direct | connection p50 µs | errors |"
    );
    let _ = writeln!(md, "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &settings.services {
        let direct = of_row(trials, n, Peer::Direct, None);
        let d_rate = spread(&direct, |t| Some(t.client.conn_per_s));
        let d_p50 = spread(&direct, |t| Some(t.client.rr_p50_us));
        let d_p99 = spread(&direct, |t| Some(t.client.rr_p99_us));
        let mut line = |place: &str, eps: &str, p: Peer, ts: &[&Trial]| {
            let rate = spread(ts, |t| Some(t.client.conn_per_s));
            let p50 = spread(ts, |t| Some(t.client.rr_p50_us));
            let p99 = spread(ts, |t| Some(t.client.rr_p99_us));
            let conn = spread(ts, |t| Some(t.client.conn_p50_us));
            let errors: u64 = ts.iter().map(|t| t.client.connect_errors).sum();
            let _ = writeln!(
                md,
                "| {n} | {place} | {eps} | {} | {} | {} | {} | {} | {} | {} | {} | {errors} |",
                p.name(),
                cell(rate, 0),
                ratio(rate, d_rate),
                cell(p50, 1),
                ratio(p50, d_p50),
                cell(p99, 1),
                ratio(p99, d_p99),
                cell(conn, 1),
            );
        };
        if !direct.is_empty() {
            line("–", "–", Peer::Direct, &direct);
        }
        for row in rows_at(trials, n) {
            for &p in &peers {
                let ts = of_row(trials, n, p, Some(&row));
                if !ts.is_empty() {
                    line(&row.placement, &row.endpoints.to_string(), p, &ts);
                }
            }
        }
    }

    let _ = writeln!(md, "\n## Data plane: first packet, throughput and CPU per Gbit\n");
    let _ = writeln!(
        md,
        "*First packet*: the `connect()` time of each fresh connection of the connection-rate \
         loop (SYN out to SYN-ACK back as the client sees it; for socket LB it includes the \
         connect hook's translation), p50 and p99. *Gbit/s*: one TCP stream of bulk data from \
         the client to the service for the measurement time, counted by the server. *CPU \
         ms/Gbit*: busy time (user, nice, system, irq, softirq from `/proc/stat`) of {} during \
         the transfer, per Gbit moved: the client, the server and the packet processing of both \
         directions, and anything else that ran there (see the load average).\n",
        settings.cpu_counted
    );
    let _ = writeln!(
        md,
        "| N | placement | endpoints | peer | first packet p50 µs | × direct | first packet p99 µs | Gbit/s | × direct | CPU ms/Gbit | × direct |"
    );
    let _ = writeln!(md, "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &settings.services {
        let direct = of_row(trials, n, Peer::Direct, None);
        let d_fp = spread(&direct, |t| Some(t.client.connect_p50_us));
        let d_gbit = spread(&direct, |t| Some(t.client.gbit_per_s));
        let d_cpu = spread(&direct, |t| t.client.cpu_ms_per_gbit);
        let mut line = |place: &str, eps: &str, p: Peer, ts: &[&Trial]| {
            let fp = spread(ts, |t| Some(t.client.connect_p50_us));
            let fp99 = spread(ts, |t| Some(t.client.connect_p99_us));
            let gbit = spread(ts, |t| Some(t.client.gbit_per_s));
            let cpu = spread(ts, |t| t.client.cpu_ms_per_gbit);
            let _ = writeln!(
                md,
                "| {n} | {place} | {eps} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.name(),
                cell(fp, 1),
                ratio(fp, d_fp),
                cell(fp99, 1),
                cell(gbit, 2),
                ratio(gbit, d_gbit),
                cell(cpu, 0),
                ratio(cpu, d_cpu),
            );
        };
        if !direct.is_empty() {
            line("–", "–", Peer::Direct, &direct);
        }
        for row in rows_at(trials, n) {
            for &p in &peers {
                let ts = of_row(trials, n, p, Some(&row));
                if !ts.is_empty() {
                    line(&row.placement, &row.endpoints.to_string(), p, &ts);
                }
            }
        }
    }

    let _ = writeln!(md, "\n## Per-connection cost against N\n");
    let _ = writeln!(
        md,
        "[{plot_file}]({plot_file}): the connection p50 (µs) of the measured service at the {} \
         placement with {} endpoint(s) against the number of services (log scale), one line per \
         data plane (the direct path over all its trials at each N).\n",
        settings.worst_placement().map_or("last", Placement::name),
        settings.endpoints.first().copied().unwrap_or(1)
    );

    if !skips.is_empty() || !failures.is_empty() {
        let _ = writeln!(md, "## Left out\n");
    }
    if !skips.is_empty() {
        let mut by_reason: Vec<(String, Vec<String>)> = Vec::new();
        for s in skips {
            let what = format!("{} at N = {}", s.peer.name(), s.services);
            match by_reason.iter_mut().find(|(r, _)| *r == s.reason) {
                Some((_, v)) => v.push(what),
                None => by_reason.push((s.reason.clone(), vec![what])),
            }
        }
        for (reason, what) in by_reason {
            let _ = writeln!(
                md,
                "- Not run: {} ({reason}: `iptables-restore` and `nft -f` of that many services \
                 take very long; see the programming times below, and raise `--max-n-rules` to \
                 run them).",
                what.join(", ")
            );
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(
            md,
            "\n{} problem(s); failed trials and programming steps are not in the figures:\n",
            failures.len()
        );
        for f in failures {
            let _ = writeln!(md, "- {}", f.replace('\n', " "));
        }
    }
    let _ = writeln!(md, "\n## Time to program N services, cold (ms), and agent peak RSS (MiB)\n");
    let _ = writeln!(
        md,
        "Each peer is programmed once per service set. iptables and nftables: the wall time of \
         `iptables-restore --noflush` / `nft -f` on an empty namespace, and (after the slash) \
         from its start until the set's last measured service answered a client. sluice: from \
         the agent's start (manifests already on disk) until that service answered. Polling \
         resolution about 5 ms. *Peak RSS*: the agent's VmHWM (`/proc/PID/status`) after the \
         set's trials, before it was stopped.\n"
    );
    let _ = writeln!(
        md,
        "| N | endpoints measured | iptables-restore | nft -f | sluice | sluice-socklb | sluice peak RSS MiB | sluice-socklb peak RSS MiB |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut sets: Vec<(u32, Vec<u32>)> = Vec::new();
    for p in programming {
        let key = (p.services, p.endpoints.clone());
        if !sets.contains(&key) {
            sets.push(key);
        }
    }
    for (n, eps) in sets {
        let of = |peer: Peer| -> Vec<&Programming> {
            programming
                .iter()
                .filter(|p| p.services == n && p.endpoints == eps && p.peer == peer)
                .collect()
        };
        let time = |peer: Peer| {
            let ps = of(peer);
            let cmd = Spread::of(ps.iter().filter_map(|p| p.program_cmd_ms));
            let reach = Spread::of(ps.iter().filter_map(|p| p.program_reachable_ms));
            match (cmd, reach) {
                (Some(c), Some(r)) => format!("{} / {}", c.show(1), r.show(1)),
                (None, Some(r)) => r.show(1),
                _ => "–".to_owned(),
            }
        };
        let rss =
            |peer: Peer| cell(Spread::of(of(peer).iter().filter_map(|p| p.agent_peak_rss_mib)), 1);
        let eps_s = eps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            md,
            "| {n} | {eps_s} | {} | {} | {} | {} | {} | {} |",
            time(Peer::Iptables),
            time(Peer::Nftables),
            time(Peer::Sluice),
            time(Peer::SluiceSocklb),
            rss(Peer::Sluice),
            rss(Peer::SluiceSocklb)
        );
    }
    changes_table(&mut md, changes);
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

/// The "one change at N existing" table: per N and changed service, the
/// median over repetitions of each repetition's p50.
fn changes_table(md: &mut String, changes: &[ChangeSeries]) {
    let _ = writeln!(md, "\n## One change at N existing (ms)\n");
    let _ = writeln!(
        md,
        "After its trials in each repetition, each programmed peer gets {} changes of one \
         service (the measured service with the fewest endpoints, the latest placed): its first \
         endpoint is replaced by a spare backend pod, then put back, alternately, 150 ms apart. \
         Figures are the median over repetitions of each repetition's p50 (min–max of those \
         p50s). **iptables**: kube-proxy's partial sync emulated: `iptables-save -t nat` (its \
         stale-chain scan, skipped in large cluster mode above 1000 endpoints), then \
         `iptables-restore --noflush` of the filter table and the nat table's top-level chains \
         (KUBE-SERVICES with every service's rule) plus only the changed service's KUBE-SVC / \
         KUBE-SEP chains and the deletion of the replaced endpoint's chain. **nftables**: \
         `nft --json list chains ip` and `list sets ip` (kube-proxy lists both each sync), then one \
         `nft -f` transaction with only the changed service's chains (added, flushed, \
         rewritten) and the replaced endpoint's chain flushed; no map element changes. *command*: \
         the restore / `nft -f` alone; *sync*: listing and command; *reachable*: from the \
         sync's start until the new endpoint answered a client (identity probes through the \
         ClusterIP, resolution about 0.2 ms; with several endpoints the probes reach the new \
         one by chance; *reachable* can be below *command*: the kernel applies the change \
         before the tool has exited). **sluice**: from writing the changed EndpointSlice \
         manifest (a file of its own) until the new endpoint answered: the agent notices the write, re-reads \
         that file only (the others' metadata did not change), recomputes the services whose \
         objects changed and writes the maps, as it does for a changed object from the API \
         server (`cargo xtask bench control` measures that path, event to map write). The sluice-socklb probes run outside the agent's cgroup (the \
         per-packet path; both paths read the same maps).\n",
        crate::CHANGES
    );
    let _ = writeln!(
        md,
        "| N | changed service | iptables-restore | iptables sync | iptables reachable | nft -f | nft sync | nft reachable | sluice reachable | sluice-socklb reachable |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut keys: Vec<(u32, u32, u32)> = Vec::new();
    for c in changes {
        let key = (c.services, c.index, c.endpoints);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    for (n, index, endpoints) in keys {
        let of = |peer: Peer, f: fn(&ChangeSeries) -> Option<f64>| {
            cell(
                Spread::of(
                    changes
                        .iter()
                        .filter(|c| {
                            c.services == n
                                && c.index == index
                                && c.endpoints == endpoints
                                && c.peer == peer
                        })
                        .filter_map(f),
                ),
                1,
            )
        };
        let _ = writeln!(
            md,
            "| {n} | #{index}, {endpoints} endpoint(s) | {} | {} | {} | {} | {} | {} | {} | {} |",
            of(Peer::Iptables, |c| c.cmd_p50_ms),
            of(Peer::Iptables, |c| c.sync_p50_ms),
            of(Peer::Iptables, |c| c.reachable_p50_ms),
            of(Peer::Nftables, |c| c.cmd_p50_ms),
            of(Peer::Nftables, |c| c.sync_p50_ms),
            of(Peer::Nftables, |c| c.reachable_p50_ms),
            of(Peer::Sluice, |c| c.reachable_p50_ms),
            of(Peer::SluiceSocklb, |c| c.reachable_p50_ms),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::ClientResult;

    fn client(conn_p50_us: f64, gbit: f64) -> ClientResult {
        ClientResult {
            connections: 100,
            connect_errors: 0,
            crr_seconds: 1.0,
            conn_per_s: 1e6 / conn_p50_us,
            conn_p50_us,
            conn_p99_us: conn_p50_us * 2.0,
            round_trips: 1000,
            rr_p50_us: 50.0,
            rr_p99_us: 90.0,
            connect_p50_us: conn_p50_us / 2.0,
            connect_p99_us: conn_p50_us,
            bulk_bytes: 1_250_000_000,
            bulk_seconds: 10.0 / gbit,
            gbit_per_s: gbit,
            bulk_cpu_seconds: 2.0,
            cpu_ms_per_gbit: Some(200.0),
        }
    }

    fn trial(n: u32, peer: Peer, at: Option<(&str, u32, u32)>, conn: f64) -> Trial {
        Trial {
            services: n,
            placement: at.map(|a| a.0.to_owned()),
            endpoints: at.map(|a| a.1),
            index: at.map(|a| a.2),
            rep: 0,
            peer,
            client: client(conn, 5.0),
        }
    }

    fn settings() -> Settings {
        Settings {
            services: vec![1, 1000],
            endpoints: vec![1, 10],
            placements: vec!["first".into(), "last".into()],
            all_pairs: false,
            max_n_rules: 10_000,
            reps: 1,
            seconds: 1.0,
            peers: vec![],
            quick: true,
            cpu_counted: "all CPUs".into(),
        }
    }

    // Expect: the plot's iptables line takes the last-placed 1-endpoint
    // service at each N (first=last at N = 1), not the first-placed or the
    // 10-endpoint one; the direct line takes every direct trial.
    #[test]
    fn plot_series_use_the_reference_service() {
        let trials = vec![
            trial(1, Peer::Direct, None, 100.0),
            trial(1, Peer::Iptables, Some(("first=last", 1, 0)), 150.0),
            trial(1, Peer::Iptables, Some(("first=last", 10, 0)), 999.0),
            trial(1000, Peer::Direct, None, 110.0),
            trial(1000, Peer::Iptables, Some(("first", 1, 0)), 160.0),
            trial(1000, Peer::Iptables, Some(("last", 1, 999)), 210.0),
            trial(1000, Peer::Iptables, Some(("last", 10, 998)), 999.0),
        ];
        let (title, series) = per_connection_series(&settings(), &trials);
        assert!(title.contains("last") && title.contains("1 endpoint"), "{title}");
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].name, "direct");
        assert_eq!(series[0].points, [(1.0, 100.0), (1000.0, 110.0)]);
        assert_eq!(series[1].name, "iptables");
        assert_eq!(series[1].points, [(1.0, 150.0), (1000.0, 210.0)]);
    }

    // Expect: both data-plane tables have a row per measured service and
    // peer with the new columns, ratios to the direct path at the same N,
    // programming rows with peak RSS, and the skip note.
    #[test]
    fn markdown_has_every_column() {
        let trials = vec![
            trial(1000, Peer::Direct, None, 100.0),
            trial(1000, Peer::Sluice, Some(("first", 1, 0)), 150.0),
            trial(1000, Peer::Sluice, Some(("last", 10, 998)), 200.0),
        ];
        let programming = vec![Programming {
            services: 1000,
            endpoints: vec![1, 10],
            peer: Peer::Sluice,
            program_cmd_ms: None,
            program_reachable_ms: Some(480.0),
            agent_peak_rss_mib: Some(42.5),
        }];
        let change = |peer: Peer, rep: u32, cmd: Option<f64>, reach: f64| ChangeSeries {
            services: 1000,
            index: 999,
            endpoints: 1,
            rep,
            peer,
            cmd_ms: cmd.into_iter().collect(),
            sync_ms: cmd.into_iter().collect(),
            reachable_ms: vec![reach],
            cmd_p50_ms: cmd,
            sync_p50_ms: cmd.map(|c| c + 1.0),
            reachable_p50_ms: Some(reach),
        };
        let changes = vec![
            change(Peer::Iptables, 0, Some(10.0), 12.0),
            change(Peer::Iptables, 1, Some(20.0), 22.0),
            change(Peer::Sluice, 0, None, 3.0),
        ];
        let skips = vec![Skip {
            services: 100_000,
            peer: Peer::Iptables,
            reason: "N above --max-n-rules 10000".into(),
        }];
        let machine = Machine::probe(false).finish(Duration::from_secs(1));
        let md = markdown(&Input {
            machine: &machine,
            settings: &settings(),
            trials: &trials,
            programming: &programming,
            changes: &changes,
            skips: &skips,
            failures: &[],
            plot_file: "per-connection.svg",
        });
        for col in [
            "| placement | endpoints |",
            "first packet p50 µs",
            "first packet p99 µs",
            "Gbit/s",
            "CPU ms/Gbit",
            "sluice peak RSS MiB",
            "per-connection.svg",
        ] {
            assert!(md.contains(col), "missing {col:?} in\n{md}");
        }
        assert!(md.contains("| 1000 | first | 1 | sluice | 6667 | 0.67 |"), "{md}");
        assert!(
            md.contains(
                "| 1000 | last | 10 | sluice | 100.0 | 2.00 | 200.0 | 5.00 | 1.00 | 200 | 1.00 |"
            ),
            "{md}"
        );
        assert!(md.contains("| 1000 | 1, 10 | – | – | 480.0 | – | 42.5 | – |"), "{md}");
        assert!(md.contains("## One change at N existing (ms)"), "{md}");
        assert!(
            md.contains(
                "| 1000 | #999, 1 endpoint(s) | 15.0 (10.0–20.0) | 16.0 (11.0–21.0) | 17.0 (12.0–22.0) | – | – | – | 3.0 | – |"
            ),
            "{md}"
        );
        assert!(
            md.contains("Not run: iptables at N = 100000 (N above --max-n-rules 10000"),
            "{md}"
        );
    }

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
