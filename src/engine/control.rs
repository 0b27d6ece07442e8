//! A request's stop switch, shared by the caller (cancel), the timeout timer and the worker.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::result::FinishReason;

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const TIMED_OUT: u8 = 2;

#[derive(Debug, Default)]
pub struct Control {
    state: AtomicU8,
}

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        let _ = self.state.compare_exchange(RUNNING, CANCELLED, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn time_out(&self) {
        let _ = self.state.compare_exchange(RUNNING, TIMED_OUT, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Why the request must stop, if it must.
    pub fn stop_reason(&self) -> Option<FinishReason> {
        match self.state.load(Ordering::Acquire) {
            CANCELLED => Some(FinishReason::Cancelled),
            TIMED_OUT => Some(FinishReason::Timeout),
            _ => None,
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.state.load(Ordering::Acquire) != RUNNING
    }
}
