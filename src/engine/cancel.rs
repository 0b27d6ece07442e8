//! A caller's cancel token: a switch the caller owns, given to one or more generate calls.
//!
//! [`crate::Session::cancel`] reaches only the call in flight, so a cancel that races with the
//! call's start (a Go context cancelled just as the call is made) can miss it. A token has no
//! such window: once cancelled it stays cancelled, a call started with it afterwards ends as
//! cancelled before it does any work, and a call in flight is stopped wherever it is.

use std::fmt;
use std::sync::{Arc, Mutex};

/// What a call does when its token is cancelled: stop the call's own stop switch.
type Listener = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct State {
    cancelled: bool,
    next_id: u64,
    listeners: Vec<(u64, Listener)>,
}

/// Thread-safe and cheap to clone: clones are the same token.
#[derive(Clone, Default)]
pub struct CancelToken {
    state: Arc<Mutex<State>>,
}

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every call holding the token, now and from now on. Idempotent.
    pub fn cancel(&self) {
        let listeners = {
            let mut state = self.lock();
            state.cancelled = true;
            state.listeners.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>()
        };
        for stop in listeners {
            stop();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// Runs `stop` when the token is cancelled, at once if it already is, until the returned
    /// link drops (when the call ends).
    pub(crate) fn link(&self, stop: impl Fn() + Send + Sync + 'static) -> CancelLink {
        let stop: Listener = Arc::new(stop);
        let mut state = self.lock();
        if state.cancelled {
            drop(state);
            stop();
            return CancelLink { token: None, id: 0 };
        }
        let id = state.next_id;
        state.next_id += 1;
        state.listeners.push((id, stop));
        CancelLink { token: Some(self.clone()), id }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl PartialEq for CancelToken {
    /// The same token, not the same state.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken").field("cancelled", &self.is_cancelled()).finish()
    }
}

/// A call's registration with a token; dropping it unregisters the call.
pub(crate) struct CancelLink {
    token: Option<CancelToken>,
    id: u64,
}

impl Drop for CancelLink {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            token.lock().listeners.retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counter() -> (Arc<AtomicUsize>, impl Fn() + Send + Sync + 'static) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (n, move || {
            m.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn a_cancel_before_the_call_stops_it_as_it_links() {
        let token = CancelToken::new();
        token.cancel();
        let (stops, stop) = counter();
        let _link = token.link(stop);
        assert_eq!(stops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_cancel_during_the_call_stops_it_once_and_an_ended_call_not_at_all() {
        let token = CancelToken::new();
        let (running, stop_running) = counter();
        let (ended, stop_ended) = counter();
        let _running = token.link(stop_running);
        drop(token.link(stop_ended));
        token.cancel();
        token.cancel();
        assert_eq!(running.load(Ordering::SeqCst), 2, "each cancel reaches the running call");
        assert_eq!(ended.load(Ordering::SeqCst), 0);
        assert!(token.is_cancelled() && token.state.lock().unwrap().listeners.len() == 1);
    }

    #[test]
    fn clones_are_the_same_token() {
        let token = CancelToken::new();
        let clone = token.clone();
        clone.cancel();
        assert!(token.is_cancelled());
        assert_eq!(token, clone);
        assert_ne!(token, CancelToken::new());
    }
}
