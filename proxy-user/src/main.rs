//! `sluice`: thin shell over the library.

use std::process::ExitCode;

use clap::Parser as _;
use sluice::{
    agent,
    cli::{Cli, Command, Output},
    datapath::PinPaths,
    inspect,
};

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
