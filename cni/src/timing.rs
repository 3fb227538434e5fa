//! `SLUICE_CNI_TIMING`: step timings on stderr, for measurements only
//! (`cargo run --example bench -- --steps`). Unset: nothing is printed and
//! nothing is measured.
//!
//! Each mark prints `sluice-cni: STEP at X ms`, cumulative from an origin:
//! the value of the variable when it is a `CLOCK_MONOTONIC` time in
//! nanoseconds (the caller's clock just before it spawned the plugin, so the
//! first mark includes exec and start-up), else the first mark's call.

use std::sync::OnceLock;

/// The origin in `CLOCK_MONOTONIC` nanoseconds, or `None` when disabled.
fn origin() -> Option<u64> {
    static ORIGIN: OnceLock<Option<u64>> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let v = std::env::var("SLUICE_CNI_TIMING").ok()?;
        Some(v.parse().unwrap_or_else(|_| monotonic_ns()))
    })
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Prints `step` with the time since the origin, when enabled.
pub fn mark(step: &str) {
    if let Some(o) = origin() {
        let ms = monotonic_ns().saturating_sub(o) as f64 / 1e6;
        eprintln!("sluice-cni: {step} at {ms:.3} ms");
    }
}
