//! The kernel programs, embedded at build time.

/// The eBPF object built by `build.rs` from the `proxy-ebpf` crate.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy"));
