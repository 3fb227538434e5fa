//! `cargo xtask ...`: sluice's developer tasks.
//!
//! Every task that compiles the workspace runs `setup` first, because
//! proxy-user's build.rs builds the eBPF crate with the toolchain that setup
//! installs. xtask itself depends on nothing of the project, so it builds with
//! plain rustup stable on a fresh machine.

mod cmd;
mod setup;

use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::cmd::say;

#[derive(Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", about = "sluice's developer tasks", version)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (Debian rustc-web with the BPF core, LLVM 22,
    /// bpf-linker, rustup toolchain `system`) and test tools. Idempotent.
    Setup,
    /// Setup, then `cargo build --release` of the default workspace members.
    Build,
    /// Setup, build, then the whole test suite in a private mount namespace (root).
    Test {
        /// Arguments passed on to `cargo test`, e.g. `cargo xtask test -- e2e`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Setup, then run the demo: a simulated node, three backends, a client and the agent.
    Demo {
        /// Arguments passed on to the demo.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        demo_args: Vec<String>,
    },
    /// Setup, then run benchmarks: datapath, control, cni, peers, routing (default: all).
    Bench {
        /// A short run, for CI.
        #[arg(long)]
        quick: bool,
        /// Which benchmark to run (default: all).
        target: Option<String>,
        /// Arguments after `--` passed on to the benchmark, e.g.
        /// `cargo xtask bench peers -- --services 1,100000 --placement last`.
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
    /// `cargo fmt --all --check`.
    FmtCheck,
    /// Setup, then `cargo clippy --all-targets -- -D warnings`.
    Lint,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::setup(),
        Task::Build => {
            setup::setup()?;
            build()
        }
        Task::Test { cargo_args } => {
            setup::setup()?;
            build()?;
            test(&cargo_args)
        }
        Task::Demo { demo_args } => {
            setup::setup()?;
            // The demo runs the `sluice` binary, which `cargo run --example`
            // does not build.
            build()?;
            demo(&demo_args)
        }
        Task::Bench { quick, target, bench_args } => {
            setup::setup()?;
            bench(quick, target.as_deref(), &bench_args)
        }
        Task::FmtCheck => {
            say("cargo fmt --all --check");
            cmd::run("`cargo fmt --check`", cmd::cargo().args(["fmt", "--all", "--check"]))
        }
        Task::Lint => {
            setup::setup()?;
            say("cargo clippy --all-targets -- -D warnings");
            cmd::run(
                "`cargo clippy`",
                cmd::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]),
            )
        }
    }
}

/// Builds the default members. Not `--workspace`: that would also build the
/// eBPF crate for the host, which only builds for bpfel-unknown-none (through
/// proxy-user's build.rs).
fn build() -> Result<()> {
    say("build: cargo build --release (default members; the eBPF crate via proxy-user's build.rs)");
    cmd::run("`cargo build --release`", cmd::cargo().args(["build", "--release"]))
}

fn test(cargo_args: &[String]) -> Result<()> {
    let mut cargo_test = cmd::cargo();
    cargo_test.args(["test", "--release"]).args(cargo_args);
    let mut command = in_private_mount_ns(cargo_test);
    say(format!("test: {}", cmd::display(&command)));
    let started = Instant::now();
    let result = cmd::run_foreground("`cargo test`", &mut command);
    let secs = started.elapsed().as_secs();
    match &result {
        Ok(()) => say(format!("test: PASSED ({secs} s)")),
        Err(_) => say(format!(
            "test: FAILED after {secs} s; the failing tests are listed above under `failures:`"
        )),
    }
    result
}

fn demo(demo_args: &[String]) -> Result<()> {
    let mut cargo_run = cmd::cargo();
    cargo_run.args(["run", "--release", "-p", "sluice", "--example", "demo"]);
    if !demo_args.is_empty() {
        cargo_run.arg("--").args(demo_args);
    }
    let mut command = in_private_mount_ns(cargo_run);
    say(format!("demo: {} (Ctrl-C stops it)", cmd::display(&command)));
    let status = cmd::wait_foreground("the demo", &mut command)?;
    if cmd::interrupted(status) {
        say("demo: stopped (Ctrl-C)");
        return Ok(());
    }
    cmd::check("the demo", status)
}

/// Benchmarks: `datapath` (per-packet cost against the number of services),
/// `control` (the agent fed by the test API server: cold start, one change,
/// peak RSS), `cni` (ADD/DEL latency against the reference plugins), `peers`
/// (sluice against the direct path and kube-proxy's iptables and nftables
/// data planes, emulated in network namespaces), `routing` (pod to pod on
/// one node and across nodes: eBPF fast paths vs plain routing vs a Linux
/// bridge). `args` go to the benchmark (only with one target named).
fn bench(quick: bool, target: Option<&str>, args: &[String]) -> Result<()> {
    const TARGETS: [&str; 5] = ["datapath", "control", "cni", "peers", "routing"];
    let targets: Vec<&str> = match target {
        None => TARGETS.to_vec(),
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => anyhow::bail!("no benchmark `{t}`; there are: {}", TARGETS.join(", ")),
    };
    anyhow::ensure!(
        args.is_empty() || targets.len() == 1,
        "arguments after `--` need one benchmark named (e.g. `cargo xtask bench peers -- ...`)"
    );
    for t in targets {
        let mut run = cmd::cargo();
        if t == "cni" {
            // sluice-cni vs bridge+host-local and ptp+host-local, interleaved.
            run.args(["run", "--release", "-p", "sluice-cni", "--example", "bench", "--"]);
            run.args(["--pods", if quick { "50" } else { "500" }]);
            run.args(args);
        } else if t == "peers" || t == "routing" {
            // Runs the `sluice` binary (the agent), which `cargo run --example` does not build.
            build()?;
            let out = cmd::workspace_root().join(if t == "peers" {
                PEERS_RESULTS
            } else {
                ROUTING_RESULTS
            });
            run.args([
                "run",
                "--release",
                "-p",
                "sluice",
                "--example",
                &format!("bench_{t}"),
                "--",
            ]);
            run.arg("--out").arg(&out);
            if quick {
                run.arg("--quick");
            }
            run.args(args);
        } else {
            run.args(["run", "--release", "-p", "sluice", "--example", &format!("bench_{t}")]);
            run.arg("--");
            if quick {
                run.arg("--quick");
            }
            run.args(args);
        }
        let mut command = in_private_mount_ns(run);
        say(format!("bench {t}: {}", cmd::display(&command)));
        let status = cmd::wait_foreground("the benchmark", &mut command)?;
        cmd::check("the benchmark", status)?;
    }
    Ok(())
}

/// Where `bench peers` writes report.md, results.json and per-connection.svg,
/// under the workspace root.
const PEERS_RESULTS: &str = "target/bench-results/peers";
/// Where `bench routing` writes report.md and results.json, under the workspace root.
const ROUTING_RESULTS: &str = "target/bench-results/routing";

/// Wraps `inner` in `unshare --mount --propagation private` so that mounts the
/// child makes (test bpffs, cgroup2 views) disappear with it. Needs root; runs
/// `inner` as it is, saying so, when that is not possible.
fn in_private_mount_ns(inner: Command) -> Command {
    if !cmd::is_root() {
        say("note: not root, so no private mount namespace (and privileged tests will fail)");
        return inner;
    }
    if !cmd::on_path("unshare") {
        say("note: `unshare` not found (util-linux), so no private mount namespace");
        return inner;
    }
    let mut wrapped = Command::new("unshare");
    wrapped.args(["--mount", "--propagation", "private", "--"]);
    wrapped.arg(inner.get_program()).args(inner.get_args());
    if let Some(dir) = inner.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn test_args(argv: &[&str]) -> Vec<String> {
        match Cli::try_parse_from(argv).unwrap().task {
            Task::Test { cargo_args } => cargo_args,
            _ => panic!("not the test task: {argv:?}"),
        }
    }

    #[test]
    fn test_passes_everything_after_the_separator_to_cargo() {
        assert_eq!(test_args(&["xtask", "test"]), Vec::<String>::new());
        assert_eq!(test_args(&["xtask", "test", "--", "e2e"]), ["e2e"]);
        assert_eq!(
            test_args(&["xtask", "test", "--", "e2e", "--", "--nocapture"]),
            ["e2e", "--", "--nocapture"]
        );
        assert_eq!(test_args(&["xtask", "test", "e2e", "--nocapture"]), ["e2e", "--nocapture"]);
    }

    #[test]
    fn bench_takes_quick_and_a_target() {
        let Task::Bench { quick, target, bench_args } =
            Cli::try_parse_from(["xtask", "bench", "--quick", "lb"]).unwrap().task
        else {
            panic!("not the bench task");
        };
        assert!(quick);
        assert_eq!(target.as_deref(), Some("lb"));
        assert!(bench_args.is_empty());
    }

    // Expect: everything after `--` goes to the benchmark, options included.
    #[test]
    fn bench_passes_arguments_after_the_separator() {
        let Task::Bench { quick, target, bench_args } = Cli::try_parse_from([
            "xtask",
            "bench",
            "peers",
            "--",
            "--services",
            "1,100000",
            "--quick",
        ])
        .unwrap()
        .task
        else {
            panic!("not the bench task");
        };
        assert!(!quick);
        assert_eq!(target.as_deref(), Some("peers"));
        assert_eq!(bench_args, ["--services", "1,100000", "--quick"]);
        let err = bench(false, None, &["--x".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("one benchmark named"), "{err}");
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
