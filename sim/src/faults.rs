//! Faults a test injects into one listener (the EC2 endpoint or one instance's IMDS) while the
//! region runs: failed requests, throttling, reset connections, latency, expired IMDS tokens.
//!
//! Counted faults are consumed one request at a time in a fixed order of precedence: a reset
//! first, then a failure status, then throttling; latency applies to every request, faulted or not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which listener a [`Faults`] handle acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The region's EC2 Query API endpoint.
    Ec2,
    /// The IMDS of one instance, by instance id or `Name`.
    Imds(String),
}

/// A fault injected into one request instead of the real answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Injected {
    /// Close the connection without a response (a TCP RST).
    Reset,
    /// Answer with this HTTP status in the endpoint's error shape.
    Fail(u16),
    /// EC2 throttling: HTTP 503 with `RequestLimitExceeded`.
    Throttle,
}

#[derive(Debug, Default)]
struct Counters {
    reset: u32,
    fail: u32,
    fail_status: u16,
    throttle: u32,
    latency: Duration,
}

/// The fault state of one listener, shared by its connections and by [`Faults`] handles.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    counters: Mutex<Counters>,
    /// Bumped by `expire_tokens`; IMDS tokens minted under an older epoch are refused.
    token_epoch: AtomicU64,
}

/// What to do with the next request.
pub(crate) struct Plan {
    pub latency: Duration,
    pub injected: Option<Injected>,
}

impl FaultState {
    pub(crate) fn next_request(&self) -> Plan {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let injected = if c.reset > 0 {
            c.reset -= 1;
            Some(Injected::Reset)
        } else if c.fail > 0 {
            c.fail -= 1;
            Some(Injected::Fail(c.fail_status))
        } else if c.throttle > 0 {
            c.throttle -= 1;
            Some(Injected::Throttle)
        } else {
            None
        };
        Plan {
            latency: c.latency,
            injected,
        }
    }

    pub(crate) fn token_epoch(&self) -> u64 {
        self.token_epoch.load(Ordering::SeqCst)
    }
}

/// A handle on one listener's faults, from [`crate::Sim::faults`]. Cheap to clone; every
/// setter takes effect for the next request the listener reads.
#[derive(Debug, Clone)]
pub struct Faults {
    pub(crate) state: Arc<FaultState>,
}

impl Faults {
    fn with<R>(&self, f: impl FnOnce(&mut Counters) -> R) -> R {
        let mut c = self
            .state
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }

    /// Answer the next `n` requests with `status` (e.g. 500, 503) instead of the real answer.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.with(|c| {
            c.fail = n;
            c.fail_status = status;
        });
    }

    /// Throttle the next `n` requests: HTTP 503 with the EC2 error code `RequestLimitExceeded`.
    /// On an IMDS listener this is a plain 503, which is what IMDS sends when it sheds load.
    pub fn throttle_next(&self, n: u32) {
        self.with(|c| c.throttle = n);
    }

    /// Close the connection of the next `n` requests without an answer, with a TCP RST.
    /// The request has been read by then, so a client cannot tell it was never processed.
    pub fn reset_next(&self, n: u32) {
        self.with(|c| c.reset = n);
    }

    /// Delay every answer (faulted or not) by `latency`; zero turns it off.
    pub fn set_latency(&self, latency: Duration) {
        self.with(|c| c.latency = latency);
    }

    /// Invalidate every IMDS token issued so far: the next GET with one gets 401. No effect on
    /// the EC2 listener.
    pub fn expire_tokens(&self) {
        self.state.token_epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Drop every pending counted fault and the latency.
    pub fn clear(&self) {
        self.with(|c| *c = Counters::default());
    }
}
