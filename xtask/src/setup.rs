//! `cargo xtask setup`: installs, idempotently, the toolchain that
//! /work/shared/TOOLCHAIN.md describes. Every check is local and quick, so a
//! run on a machine that already has everything takes well under a second and
//! touches no network.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};

use crate::cmd::{self, say};

/// Debian packages: Debian's rustc with a prebuilt `core` for the BPF targets,
/// the LLVM that bpf-linker links against, and the tools the tests use.
const APT_PACKAGES: &[&str] = &[
    // The eBPF toolchain (../shared/TOOLCHAIN.md).
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    // Test hosts and inspection.
    "iproute2",
    "bpftool",
    "python3",
    // The CNI tests and benchmark: reference plugins (host-local, loopback,
    // bridge, ptp), a real runtime (containerd + runc, a busybox image), and
    // protoc for the CRI client crate.
    "containernetworking-plugins",
    "containerd",
    "runc",
    "busybox-static",
    "protobuf-compiler",
    // `bench peers`: kube-proxy's iptables and nftables data planes,
    // emulated with iptables-restore and nft.
    "iptables",
    // `nft`: also the agent's egress masquerade (table `ip sluice`) and its tests.
    "nftables",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const SYSTEM_TOOLCHAIN: &str = "system";
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none";

pub fn setup() -> Result<()> {
    apt_packages()?;
    bpf_linker()?;
    rustup_system_toolchain()?;
    bpf_core()?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> =
        APT_PACKAGES.iter().copied().filter(|pkg| !dpkg_installed(pkg)).collect();
    if missing.is_empty() {
        say(format!("setup: apt packages present ({})", APT_PACKAGES.join(", ")));
        return Ok(());
    }
    let list = missing.join(" ");
    if !cmd::is_root() {
        bail!(
            "setup step `apt-get install {list}` needs root: these packages are missing; \
             run `cargo xtask setup` as root"
        );
    }
    say("setup: apt-get update");
    cmd::run(
        "setup step `apt-get update`",
        Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    say(format!("setup: apt-get install {list}"));
    cmd::run(
        &format!("setup step `apt-get install {list}`"),
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    if let Some(pkg) = missing.iter().find(|pkg| !dpkg_installed(pkg)) {
        bail!("setup step `apt-get install {list}` failed: `{pkg}` is still not installed");
    }
    Ok(())
}

/// `dpkg-query -W -f='${Status}' PKG` says "install ok installed" for an installed package.
fn dpkg_installed(pkg: &str) -> bool {
    cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg])).is_some_and(|out| {
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed"
    })
}

fn bpf_linker() -> Result<()> {
    if let Some(version) = bpf_linker_version()
        && version.contains(BPF_LINKER_VERSION)
    {
        say(format!("setup: {version} present"));
        return warn_if_not_on_path();
    }
    let step = format!("cargo install bpf-linker --version {BPF_LINKER_VERSION}");
    say(format!("setup: {step} (against LLVM 22, about a minute)"));
    let mut install = cmd::cargo();
    install
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        // Outside the workspace, so its .cargo/config.toml does not apply.
        .current_dir(std::env::temp_dir());
    cmd::run(&format!("setup step `{step}`"), &mut install)?;
    match bpf_linker_version() {
        Some(version) if version.contains(BPF_LINKER_VERSION) => warn_if_not_on_path(),
        other => bail!(
            "setup step `{step}` failed: afterwards `bpf-linker --version` says {:?}",
            other.unwrap_or_else(|| "nothing (not found)".to_owned())
        ),
    }
}

/// Where bpf-linker is: on PATH, else in cargo's bin directory.
fn bpf_linker_path() -> PathBuf {
    if cmd::on_path("bpf-linker") {
        return PathBuf::from("bpf-linker");
    }
    cargo_home().join("bin/bpf-linker")
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME").map_or_else(
        || Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}

fn bpf_linker_version() -> Option<String> {
    let out = cmd::probe(Command::new(bpf_linker_path()).arg("--version"))?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn warn_if_not_on_path() -> Result<()> {
    if !cmd::on_path("bpf-linker") {
        say(format!(
            "setup: warning: bpf-linker is in {} but not on PATH; add it (`. \"$HOME/.cargo/env\"`)",
            cargo_home().join("bin").display()
        ));
    }
    Ok(())
}

fn rustup_system_toolchain() -> Result<()> {
    let out = cmd::probe(Command::new("rustup").args(["toolchain", "list"])).context(
        "setup step `rustup toolchain list` failed: rustup not found (install rustup first)",
    )?;
    ensure!(
        out.status.success(),
        "setup step `rustup toolchain list` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.split_whitespace().next() == Some(SYSTEM_TOOLCHAIN));
    if listed {
        say(format!("setup: rustup toolchain `{SYSTEM_TOOLCHAIN}` present"));
        return Ok(());
    }
    let step = format!("rustup toolchain link {SYSTEM_TOOLCHAIN} /usr");
    say(format!("setup: {step} (Debian's rustc with the BPF core)"));
    cmd::run(
        &format!("setup step `{step}`"),
        Command::new("rustup").args(["toolchain", "link", SYSTEM_TOOLCHAIN, "/usr"]),
    )
}

fn bpf_core() -> Result<()> {
    ensure!(
        Path::new(BPF_CORE_DIR).is_dir(),
        "setup step `check BPF core` failed: {BPF_CORE_DIR} does not exist although \
         libstd-rust-web-dev-bpf is installed; is the package complete?"
    );
    say(format!("setup: BPF core present at {BPF_CORE_DIR}"));
    Ok(())
}
