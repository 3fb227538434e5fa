//! Builds the kernel programs (crate `proxy-ebpf`) for the BPF target with
//! aya-build and leaves the object in `OUT_DIR`, where `src/ebpf.rs` embeds it.
//!
//! Needs the toolchain that `cargo xtask setup` installs (Debian's rustc with
//! a prebuilt `core` for the BPF targets, linked as rustup toolchain `system`,
//! and bpf-linker).

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../proxy-ebpf");
    let ebpf_dir = ebpf_dir.canonicalize()?;
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "proxy-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::Custom("system"),
    )
    .map_err(|e| {
        anyhow::anyhow!("building the eBPF programs failed (run `cargo xtask setup` first): {e:#}")
    })
}
