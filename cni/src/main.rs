//! `sluice-cni`: reads `CNI_COMMAND` and the config on stdin, dispatches, and
//! prints the result (or the spec's error object) on stdout.

use std::io::{IsTerminal as _, Read as _};
use std::process::ExitCode;

fn main() -> ExitCode {
    sluice_cni::timing::mark("main");
    let env = sluice_cni::config::Env::from_process();
    let outcome = sluice_cni::skel::run_env(&env, read_stdin());
    if !outcome.stdout.is_null() {
        println!("{}", outcome.stdout);
    }
    sluice_cni::timing::mark("printed");
    ExitCode::from(outcome.exit_code)
}

/// The whole of stdin, or nothing when it is a terminal (someone typing
/// `CNI_COMMAND=VERSION sluice-cni`) or unreadable.
fn read_stdin() -> Vec<u8> {
    let mut stdin = std::io::stdin().lock();
    let mut buf = Vec::new();
    if !stdin.is_terminal() && stdin.read_to_end(&mut buf).is_err() {
        buf.clear();
    }
    buf
}
