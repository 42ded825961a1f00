//! Faults a test injects into one listener (the EC2 endpoint or one instance's IMDS) while the
//! region runs: failed requests, throttling, reset connections, latency, expired IMDS tokens.
//!
//! Counted faults are consumed one request at a time in a fixed order of precedence: a reset
//! first, then a failure status, then throttling; latency applies to every request, faulted or not.
//!
//! Path faults act on the requests whose path starts with a prefix, before the counted ones: a
//! delay, a window of 404s (IMDS publishing role credentials seconds after boot), and a token
//! PUT that is read but never answered (what an IMDS hop limit of 1 looks like from a container).
//! A clock offset moves the listener's clock: its `Date` header and, on the EC2 listener, the
//! time its SigV4 check compares `X-Amz-Date` with.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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

#[derive(Debug, Default)]
struct PathFaults {
    /// (path prefix, delay)
    delays: Vec<(String, Duration)>,
    /// (path prefix, 404 until)
    not_found: Vec<(String, Instant)>,
    /// Token PUTs are read and never answered.
    hang_token_put: bool,
}

/// The fault state of one listener, shared by its connections and by [`Faults`] handles.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    counters: Mutex<Counters>,
    paths: Mutex<PathFaults>,
    /// Bumped by `expire_tokens`; IMDS tokens minted under an older epoch are refused.
    token_epoch: AtomicU64,
    /// The listener's clock minus the real one, in milliseconds.
    clock_offset_ms: AtomicI64,
}

/// What the path faults do to one request.
#[derive(Debug, Default)]
pub(crate) struct PathPlan {
    pub delay: Duration,
    pub not_found: bool,
    pub hang: bool,
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

    pub(crate) fn path_plan(&self, method: &str, path: &str) -> PathPlan {
        let p = self.paths.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        PathPlan {
            delay: p
                .delays
                .iter()
                .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map(|(_, d)| *d)
                .max()
                .unwrap_or_default(),
            not_found: p
                .not_found
                .iter()
                .any(|(prefix, until)| path.starts_with(prefix.as_str()) && now < *until),
            hang: p.hang_token_put && method == "PUT" && path.ends_with("/api/token"),
        }
    }

    /// The listener's clock: the real one moved by the offset.
    pub(crate) fn now(&self) -> SystemTime {
        let offset = self.clock_offset_ms.load(Ordering::SeqCst);
        let by = Duration::from_millis(offset.unsigned_abs());
        if offset >= 0 {
            SystemTime::now() + by
        } else {
            SystemTime::now() - by
        }
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

    fn paths<R>(&self, f: impl FnOnce(&mut PathFaults) -> R) -> R {
        let mut p = self.state.paths.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut p)
    }

    /// Delay every answer to a path starting with `prefix` (e.g. `/latest/meta-data/`) by
    /// `delay`, on top of the listener's latency; zero removes it.
    pub fn delay_path(&self, prefix: &str, delay: Duration) {
        self.paths(|p| {
            p.delays.retain(|(x, _)| x != prefix);
            if !delay.is_zero() {
                p.delays.push((prefix.to_string(), delay));
            }
        });
    }

    /// Answer 404 to every request for a path starting with `prefix` for the next `window`
    /// (e.g. `/latest/meta-data/iam/` while an instance profile's credentials are not yet
    /// published).
    pub fn not_found_for(&self, prefix: &str, window: Duration) {
        let until = Instant::now() + window;
        self.paths(|p| {
            p.not_found.retain(|(x, _)| x != prefix);
            p.not_found.push((prefix.to_string(), until));
        });
    }

    /// Read IMDS token PUTs and never answer them, keeping the connection open (a PUT response
    /// hop limit too low for the client); `false` answers them again.
    pub fn hang_token_put(&self, hang: bool) {
        self.paths(|p| p.hang_token_put = hang);
    }

    /// Move this listener's clock by `offset_secs` (positive: ahead of the real one): its `Date`
    /// header and, on the EC2 listener, its SigV4 time check (which refuses a request dated
    /// more than 15 minutes from its clock with `RequestExpired`, as EC2 does).
    pub fn set_clock_offset(&self, offset_secs: i64) {
        self.state
            .clock_offset_ms
            .store(offset_secs.saturating_mul(1000), Ordering::SeqCst);
    }

    /// Drop every pending counted fault, the latency and the path faults (not the clock offset).
    pub fn clear(&self) {
        self.with(|c| *c = Counters::default());
        self.paths(|p| *p = PathFaults::default());
    }
}
