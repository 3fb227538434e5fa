//! Verdicts and drop counting: the wrapper both decides and counts.

use aya_ebpf::bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC};
use proxy_common::DropReason;

use crate::maps::SL_DROPS;

/// Turns a handler's result into a tc verdict, counting drops by reason.
/// `Ok` continues to the next program on the device (or passes the packet
/// to the stack if there is none).
#[inline(always)]
pub fn verdict(res: Result<(), DropReason>) -> i32 {
    match res {
        Ok(()) => TC_ACT_UNSPEC,
        Err(reason) => {
            count(reason);
            TC_ACT_SHOT as i32
        }
    }
}

#[inline(always)]
fn count(reason: DropReason) {
    if let Some(slot) = SL_DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot, only this CPU writes it while we run.
        unsafe { *slot += 1 };
    }
}
