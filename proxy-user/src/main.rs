//! `sluice`: thin shell over the library.

use std::process::ExitCode;

use clap::Parser as _;
use sluice::{
    agent,
    cli::{Cli, Command, Output},
    datapath::PinPaths,
    inspect,
};

/// jemalloc instead of glibc's malloc: the agent parses and drops objects
/// by the hundred thousand at a start, and glibc's free-list upkeep was a
/// fifth of its CPU at 100k Services (perf). Measured with the control-plane
/// benchmark: cold start 100k x 1 7.3-8.0 -> 3.3 s, 10k x 2 1.3 -> 1.0 s, peak
/// RSS about the same (mimalloc was as fast but took 35% more memory).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            let cfg = agent::Config::from_args(&args)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(agent::run(cfg))
        }
        Command::Services(args) => {
            let services = inspect::services(&PinPaths::new(&args.bpffs_root))?;
            match args.output {
                Output::Table => print!("{}", inspect::services_table(&services)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&services)?),
            }
            Ok(())
        }
        Command::Status(args) => {
            let status = inspect::status(&PinPaths::new(&args.bpffs_root));
            match args.output {
                Output::Table => print!("{}", inspect::status_table(&status)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
            }
            Ok(())
        }
    }
}
