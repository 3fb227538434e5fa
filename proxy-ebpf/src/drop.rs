//! Verdicts and drop counting: the wrapper both decides and counts.

use aya_ebpf::bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC};
use proxy_common::DropReason;

use crate::maps::SL_DROPS;

/// What a handler decided for a packet it does not drop.
pub enum Action {
    /// Continue to the next program on the device (or the stack).
    Pass,
    /// The packet was replaced by an answer (a reject) and redirected: the
    /// original is counted as dropped for `reason`, the verdict returned.
    Answered(DropReason, i32),
    /// The packet was redirected (to another interface): the verdict.
    Redirect(i32),
}

/// Turns a handler's result into a tc verdict, counting drops by reason.
#[inline(always)]
pub fn verdict(res: Result<Action, DropReason>) -> i32 {
    match res {
        Ok(Action::Pass) => TC_ACT_UNSPEC,
        Ok(Action::Answered(reason, verdict)) => {
            count(reason);
            verdict
        }
        Ok(Action::Redirect(verdict)) => verdict,
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
