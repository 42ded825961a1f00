//! How every remote call berth makes is retried. Retrying is per *operation* ([`Operation`]: the
//! whole IMDS identity, a whole paged DescribeInstances), not per request: every request of an
//! operation shares one deadline, which no attempt and no sleep ever crosses. Each attempt has a
//! per-try timeout that starts at the policy's and doubles, for the rest of the operation, each
//! time an attempt uses all of it. Failed attempts are retried after an exponential backoff with
//! full jitter capped at `max_delay`, up to `max_attempts` (unbounded in the production policies,
//! where the deadline alone ends the wait).
//!
//! Full jitter (a delay drawn uniformly from `[0, min(max_delay, base_delay * 2^(n-1))]`) is what
//! the AWS architecture blog recommends for a fleet hammering one API: when every node of a
//! cluster boots at the same time, their retries spread out instead of arriving in waves.
//!
//! The driver [`run`] does not enforce the per-try timeout itself: each attempt gets its budget in
//! [`Attempt::timeout`] (already shortened so it never runs past the deadline) and must honour it,
//! because only the caller can tell a timeout on connect (try another endpoint) from one on a
//! slow body.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Limits for one logical remote call (all its attempts together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Longest the first attempt of an operation may take, from connect to the last byte of the
    /// body; doubled for the rest of the operation each time an attempt uses all of it (see
    /// [`Operation`]), and always cut to what is left of the deadline.
    pub per_try_timeout: Duration,
    /// Attempts in total, the first included (0 is treated as 1); `u32::MAX` lets the deadline
    /// alone end the wait.
    pub max_attempts: u32,
    /// Cap of the first backoff; doubled for each further attempt.
    pub base_delay: Duration,
    /// Cap of any single backoff.
    pub max_delay: Duration,
    /// Total time of one operation (see [`Operation`]) from its first attempt's start; no
    /// attempt starts and no sleep ends after it.
    pub deadline: Duration,
}

impl RetryPolicy {
    /// For IMDS reads while the node boots.
    ///
    /// IMDS is a link-local service answering in milliseconds, so a 2 s per-try timeout only
    /// trips when the endpoint is unreachable (an IPv4 address on an IPv6-only subnet, a network
    /// that is not up yet) or overloaded; it doubles for the rest of an operation each time it
    /// trips (see [`Operation`]), so a slow IMDS is still read. Backoff starts at 100 ms and is
    /// capped at 2 s because at boot the usual failure is "the interface is still coming up",
    /// which resolves in seconds. The 60 s deadline bounds one operation (the whole identity,
    /// not each of its requests), and only time ends the wait: beyond it IMDS is disabled or
    /// the hop limit blocks us, and failing lets systemd show the error and restart the agent.
    pub fn imds_boot() -> Self {
        RetryPolicy {
            per_try_timeout: Duration::from_secs(2),
            max_attempts: u32::MAX,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            deadline: Duration::from_secs(60),
        }
    }

    /// For EC2 DescribeInstances/DescribeTags during peer discovery.
    ///
    /// A page of 1000 instances can take several seconds to produce, hence the 10 s per-try
    /// timeout; like every per-try timeout it doubles for the rest of an operation each time it
    /// trips (see [`Operation`]). EC2 throttles per account and region, and every node of a
    /// cluster discovers at once, so backoff starts at 500 ms and grows to 20 s (the AWS SDKs'
    /// own cap), for as many attempts as the deadline allows. The 120 s deadline bounds one
    /// operation (a whole paged DescribeInstances or DescribeTags, all pages together), not each
    /// page. Discovery re-runs periodically, so 2 minutes is enough: a later run picks up what
    /// this one missed, and a converge loop never hangs on a throttled account.
    pub fn ec2_discovery() -> Self {
        RetryPolicy {
            per_try_timeout: Duration::from_secs(10),
            max_attempts: u32::MAX,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            deadline: Duration::from_secs(120),
        }
    }

    /// The backoff before attempt `failed + 1`, after `failed` attempts failed: full jitter over
    /// `[0, min(max_delay, base_delay * 2^(failed-1))]`.
    pub fn backoff(&self, failed: u32) -> Duration {
        let cap = self.backoff_cap(failed);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }

    /// The upper bound [`backoff`](Self::backoff) draws from.
    pub(crate) fn backoff_cap(&self, failed: u32) -> Duration {
        let shift = failed.saturating_sub(1).min(31);
        self.base_delay
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// What one attempt is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// The operation's current per-try timeout (the policy's, doubled each time an earlier
    /// attempt used all of it), shortened to what is left of the deadline.
    pub timeout: Duration,
}

/// How an attempt failed.
#[derive(Debug)]
pub enum Verdict<E> {
    /// Transient (5xx, throttled, reset, timeout): worth another attempt.
    Retry(E),
    /// Permanent (4xx, bad signature, garbage): another attempt would fail the same way.
    Fail(E),
}

/// Why the driver stopped trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The last error is not one a retry can fix.
    NotRetryable,
    /// `max_attempts` attempts all failed.
    AttemptsExhausted { max_attempts: u32 },
    /// The next backoff would have ended past the deadline.
    Deadline { deadline: Duration },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::NotRetryable => write!(f, "the error is not retryable"),
            Stop::AttemptsExhausted { max_attempts } => {
                write!(f, "all {max_attempts} attempts allowed failed")
            }
            Stop::Deadline { deadline } => {
                write!(
                    f,
                    "the {deadline:?} deadline would pass before the next attempt"
                )
            }
        }
    }
}

/// The outcome of a call that never succeeded.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub attempts: u32,
    pub elapsed: Duration,
    pub stop: Stop,
    /// The error of the last attempt.
    pub last: E,
}

/// One logical operation (the identity, a discovery, a whole paged DescribeInstances): the
/// deadline every request of it shares, and the per-try timeout it has learned.
///
/// The per-try timeout starts at the policy's and doubles each time an attempt uses all of it,
/// for the rest of the operation: a slow but working endpoint is read on a later try instead
/// of timing out at every request, and the deadline still bounds the whole.
#[derive(Debug)]
pub struct Operation {
    started: Instant,
    deadline: Instant,
    per_try: std::sync::Mutex<Duration>,
}

impl Operation {
    /// An operation starting now, bounded by `policy.deadline`.
    pub fn new(policy: &RetryPolicy) -> Operation {
        let started = Instant::now();
        Operation {
            started,
            deadline: started + policy.deadline,
            per_try: std::sync::Mutex::new(policy.per_try_timeout),
        }
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Time since the operation started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    fn per_try(&self) -> Duration {
        *self.per_try.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn grow_per_try(&self, used: Duration) {
        let mut per_try = self.per_try.lock().unwrap_or_else(|p| p.into_inner());
        if used >= *per_try {
            *per_try = per_try.saturating_mul(2);
        }
    }
}

/// Runs `op` as one operation of its own (see [`run_within`]).
pub async fn run<T, E, F, Fut>(policy: &RetryPolicy, what: &str, op: F) -> Result<T, GaveUp<E>>
where
    F: FnMut(Attempt) -> Fut,
    Fut: Future<Output = Result<T, Verdict<E>>>,
    E: fmt::Display,
{
    run_within(policy, &Operation::new(policy), what, op).await
}

/// Runs `op` until it succeeds, fails permanently, runs out of attempts or would cross the
/// operation's deadline. `what` names the call in debug logs; it must not contain secrets.
///
/// Time, not a count, is what ends the wait under the production policies (their
/// `max_attempts` is `u32::MAX`): a service that refuses connections for 35 s of a 60 s
/// deadline is read at second 35.
///
/// The error reported is what the remote end last said. An attempt whose per-try timeout the
/// deadline shortened, and which then used up that shortened time, says nothing about the remote
/// end (it would have timed out on a healthy server too), so when an earlier attempt failed, that
/// earlier error is the one reported: a throttled account reads as throttled, not as "timed out
/// after 3 ms".
pub(crate) async fn run_within<T, E, F, Fut>(
    policy: &RetryPolicy,
    operation: &Operation,
    what: &str,
    mut op: F,
) -> Result<T, GaveUp<E>>
where
    F: FnMut(Attempt) -> Fut,
    Fut: Future<Output = Result<T, Verdict<E>>>,
    E: fmt::Display,
{
    let max_attempts = policy.max_attempts.max(1);
    let deadline_stop = Stop::Deadline {
        deadline: policy.deadline,
    };
    let mut previous: Option<E> = None;
    let mut number = 0;
    loop {
        let remaining = operation.remaining();
        if remaining.is_zero() {
            if let Some(e) = previous.take() {
                // The backoff sleep overran the deadline (a loaded machine): starting an
                // attempt with no time would only time out.
                return Err(GaveUp {
                    attempts: number,
                    elapsed: operation.elapsed(),
                    stop: deadline_stop,
                    last: e,
                });
            }
        }
        number += 1;
        let nominal = operation.per_try();
        let attempt = Attempt {
            number,
            timeout: nominal.min(remaining),
        };
        let attempt_started = Instant::now();
        let outcome = op(attempt).await;
        let give_up = |last, stop| GaveUp {
            attempts: number,
            elapsed: operation.elapsed(),
            stop,
            last,
        };
        match outcome {
            Ok(value) => return Ok(value),
            Err(Verdict::Fail(e)) => return Err(give_up(e, Stop::NotRetryable)),
            Err(Verdict::Retry(e)) => {
                let used = attempt_started.elapsed();
                let cut_by_deadline = attempt.timeout < nominal && used >= attempt.timeout;
                if cut_by_deadline {
                    let last = previous.take().unwrap_or(e);
                    return Err(give_up(last, deadline_stop));
                }
                if used >= attempt.timeout {
                    operation.grow_per_try(used);
                }
                if number >= max_attempts {
                    return Err(give_up(e, Stop::AttemptsExhausted { max_attempts }));
                }
                let delay = policy.backoff(number);
                // An attempt needs some time to be worth starting; one that would begin at the
                // deadline would only time out.
                if delay >= operation.remaining() {
                    return Err(give_up(e, deadline_stop));
                }
                log::debug!("{what}: attempt {number} failed ({e}); retrying in {delay:?}");
                previous = Some(e);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            per_try_timeout: Duration::from_millis(100),
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            deadline: Duration::from_secs(2),
        }
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = policy();
        assert_eq!(p.backoff_cap(1), Duration::from_millis(10));
        assert_eq!(p.backoff_cap(2), Duration::from_millis(20));
        assert_eq!(p.backoff_cap(3), Duration::from_millis(40));
        assert_eq!(p.backoff_cap(30), Duration::from_millis(40));
        assert_eq!(p.backoff_cap(u32::MAX), Duration::from_millis(40));
        let draws: Vec<Duration> = (0..200).map(|_| p.backoff(3)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(40)));
        // Full jitter: the draws are spread, not all at the cap.
        assert!(draws.iter().any(|d| *d < Duration::from_millis(20)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(20)));
    }

    #[test]
    fn production_policies_are_sane() {
        for p in [RetryPolicy::imds_boot(), RetryPolicy::ec2_discovery()] {
            assert!(p.per_try_timeout < p.deadline);
            assert!(p.base_delay <= p.max_delay);
            assert!(p.max_attempts > 1);
        }
    }

    #[tokio::test]
    async fn stops_after_max_attempts() {
        let mut calls = 0;
        let err = run(&policy(), "test", |_| {
            calls += 1;
            async { Err::<(), _>(Verdict::Retry("boom")) }
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 5);
        assert_eq!(err.attempts, 5);
        assert_eq!(err.stop, Stop::AttemptsExhausted { max_attempts: 5 });
    }

    #[tokio::test]
    async fn permanent_errors_stop_at_once() {
        let err = run(&policy(), "test", |_| async {
            Err::<(), _>(Verdict::Fail("no"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.attempts, 1);
        assert_eq!(err.stop, Stop::NotRetryable);
    }

    #[tokio::test]
    async fn an_attempt_the_deadline_cut_short_does_not_hide_the_real_error() {
        let p = RetryPolicy {
            per_try_timeout: Duration::from_millis(100),
            max_attempts: 10,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            deadline: Duration::from_millis(150),
        };
        let err = run(&p, "test", |a| async move {
            if a.timeout < p.per_try_timeout {
                // Whatever the server would have said, the shortened budget runs out first.
                tokio::time::sleep(a.timeout).await;
                Err::<(), _>(Verdict::Retry("timed out"))
            } else {
                tokio::time::sleep(Duration::from_millis(60)).await;
                Err(Verdict::Retry("throttled"))
            }
        })
        .await
        .unwrap_err();
        assert_eq!(
            err.stop,
            Stop::Deadline {
                deadline: p.deadline
            }
        );
        assert_eq!(err.last, "throttled", "{err:?}");
    }

    #[tokio::test]
    async fn a_lone_attempt_cut_short_reports_its_own_error() {
        let p = RetryPolicy {
            per_try_timeout: Duration::from_millis(100),
            max_attempts: 10,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            deadline: Duration::from_millis(20),
        };
        let err = run(&p, "test", |a| async move {
            tokio::time::sleep(a.timeout).await;
            Err::<(), _>(Verdict::Retry("timed out"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.attempts, 1);
        assert_eq!(err.last, "timed out");
    }

    #[tokio::test]
    async fn deadline_bounds_attempt_timeouts_and_sleeps() {
        let p = RetryPolicy {
            per_try_timeout: Duration::from_millis(80),
            max_attempts: 1000,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(20),
            deadline: Duration::from_millis(300),
        };
        let start = Instant::now();
        let err = run(&p, "test", |a| async move {
            assert!(a.timeout <= Duration::from_millis(300));
            tokio::time::sleep(a.timeout).await;
            Err::<(), _>(Verdict::Retry("slow"))
        })
        .await
        .unwrap_err();
        assert_eq!(
            err.stop,
            Stop::Deadline {
                deadline: p.deadline
            }
        );
        assert!(err.attempts >= 2, "{err:?}");
        assert!(
            start.elapsed() < Duration::from_millis(450),
            "{:?}",
            start.elapsed()
        );
    }

    /// IMDS refusing connections at once for 35 s (it is not up yet) is read when it comes up:
    /// time, not an attempt count, ends the wait.
    #[tokio::test(start_paused = true)]
    async fn quick_refusals_wait_for_the_whole_deadline() {
        let policy = RetryPolicy::imds_boot();
        let start = Instant::now();
        let up_at = start + Duration::from_secs(35);
        let mut attempts = 0;
        let value = run(&policy, "test", |_| {
            attempts += 1;
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if Instant::now() < up_at {
                    Err(Verdict::Retry("connection refused"))
                } else {
                    Ok("i-0123")
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(value, "i-0123");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(35) && waited < Duration::from_secs(38),
            "{waited:?}"
        );
        assert!(
            attempts > 30,
            "{attempts} attempts: more than the old cap of 30"
        );
    }

    /// An endpoint that answers in 3 s is read although the per-try timeout is 2 s: the
    /// timeout doubles after it trips, and later requests of the operation start there.
    #[tokio::test(start_paused = true)]
    async fn a_slow_endpoint_is_read_and_the_operation_remembers() {
        let policy = RetryPolicy::imds_boot();
        let op = Operation::new(&policy);
        let slow = |a: Attempt| async move {
            if a.timeout < Duration::from_secs(3) {
                tokio::time::sleep(a.timeout).await;
                Err(Verdict::Retry("timed out"))
            } else {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(a.number)
            }
        };
        assert_eq!(run_within(&policy, &op, "first", slow).await.unwrap(), 2);
        // The second request of the operation starts with the grown timeout.
        assert_eq!(run_within(&policy, &op, "second", slow).await.unwrap(), 1);
    }

    /// Nine requests of one operation share one deadline: the ninth does not get 60 s of its own.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_the_operation_not_each_request() {
        let policy = RetryPolicy::imds_boot();
        let op = Operation::new(&policy);
        let start = Instant::now();
        let mut outcome = Ok(());
        for _ in 0..9 {
            outcome = run_within(&policy, &op, "item", |_| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Err::<(), _>(Verdict::Retry("503"))
            })
            .await
            .map_err(|e| e.stop);
        }
        assert_eq!(
            outcome,
            Err(Stop::Deadline {
                deadline: policy.deadline
            })
        );
        assert!(
            start.elapsed() <= Duration::from_secs(61),
            "{:?}",
            start.elapsed()
        );
    }
}
