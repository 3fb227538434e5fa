//! Running external commands: one printed line per step, failures that name
//! the step, and foreground children that receive Ctrl-C themselves.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};

use anyhow::{Context as _, Result, bail};

/// Prints one line saying what xtask is about to do.
pub fn say(msg: impl AsRef<str>) {
    println!("xtask: {}", msg.as_ref());
}

/// The workspace root (this crate lives in `<root>/xtask`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask's manifest directory has a parent")
        .to_path_buf()
}

/// The cargo that runs xtask (`$CARGO`, set by `cargo run`), else `cargo` on PATH.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `program` can be found on PATH (or is an existing path).
pub fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Renders a command as the user would type it, for messages.
pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with inherited stdio; fails with "<step> failed: <status>; see output above",
/// where `step` names the step, e.g. "setup step `apt-get update`".
pub fn run(step: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{step} failed: could not start `{}`", display(cmd)))?;
    check(step, status)
}

/// Runs `cmd` capturing its output (for quick probes such as `--version`).
/// `None` when the program cannot be started at all.
pub fn probe(cmd: &mut Command) -> Option<Output> {
    cmd.output().ok()
}

/// Runs a long-lived child in the foreground. The child shares our process
/// group, so the terminal delivers Ctrl-C to it directly; xtask ignores
/// SIGINT while it waits so that it can report how the child ended.
pub fn run_foreground(step: &str, cmd: &mut Command) -> Result<()> {
    let status = wait_foreground(step, cmd)?;
    check(step, status)
}

/// Like [`run_foreground`], but hands back the exit status.
pub fn wait_foreground(step: &str, cmd: &mut Command) -> Result<ExitStatus> {
    let mut child = cmd
        .spawn()
        .with_context(|| format!("{step} failed: could not start `{}`", display(cmd)))?;
    // Ignore only after spawn: an ignored disposition would be inherited
    // across exec and the child could not be interrupted.
    let _guard = IgnoreSigint::new();
    child.wait().with_context(|| format!("{step}: waiting for the child"))
}

/// Whether the child ended because of Ctrl-C (killed by SIGINT, or exited 130).
pub fn interrupted(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    status.signal() == Some(libc::SIGINT) || status.code() == Some(130)
}

pub fn check(step: &str, status: ExitStatus) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    bail!("{step} failed: {}; see output above", describe(status))
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status.signal() {
        Some(libc::SIGINT) => "interrupted (SIGINT)".to_owned(),
        Some(sig) => format!("killed by signal {sig}"),
        None => status.to_string(),
    }
}

/// Ignores SIGINT in this process until dropped.
struct IgnoreSigint {
    previous: libc::sighandler_t,
}

impl IgnoreSigint {
    fn new() -> Self {
        // SAFETY: installing SIG_IGN runs no code of ours in signal context.
        let previous = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
        Self { previous }
    }
}

impl Drop for IgnoreSigint {
    fn drop(&mut self) {
        if self.previous != libc::SIG_ERR {
            // SAFETY: restores the disposition that was in place before.
            unsafe { libc::signal(libc::SIGINT, self.previous) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_step_and_the_status() {
        let err = run("setup step `false`", &mut Command::new("false")).unwrap_err();
        assert_eq!(err.to_string(), "setup step `false` failed: exit status: 1; see output above");
    }

    #[test]
    fn failure_to_start_names_the_program() {
        let err = run("step `x`", &mut Command::new("/nonexistent/xtask-test")).unwrap_err();
        assert!(
            format!("{err:#}")
                .starts_with("step `x` failed: could not start `/nonexistent/xtask-test`"),
            "{err:#}"
        );
    }

    #[test]
    fn success_is_ok() {
        run("step `true`", &mut Command::new("true")).unwrap();
    }

    #[test]
    fn display_joins_program_and_args() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--release"]);
        assert_eq!(display(&cmd), "cargo test --release");
    }
}
