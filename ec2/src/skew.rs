//! The offset between this host's clock and an AWS service's, learned from the service's `Date`
//! header when it refused a request's time (`RequestExpired`, `SignatureDoesNotMatch` with a
//! time message): the EC2 and Parameter Store clients sign with the service's time from then on.
//! SigV4 allows 15 minutes either way; a host whose clock is further off (no time sync at first
//! boot) would otherwise fail every call.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

/// When a service refuses a request's time and its `Date` is further than this from ours, the
/// host's clock is wrong rather than the request late; a smaller offset is not adopted. The AWS
/// SDKs use 4 minutes.
pub const SKEW_THRESHOLD: Duration = Duration::from_secs(4 * 60);

/// The service's clock minus ours, in milliseconds (0 until measured).
#[derive(Debug, Default)]
pub struct ClockSkew {
    ms: AtomicI64,
}

impl ClockSkew {
    /// The offset in use, in signed milliseconds; positive: this host's clock is behind.
    pub fn millis(&self) -> i64 {
        self.ms.load(Ordering::Relaxed)
    }

    /// Now, on the service's clock as last measured.
    pub fn signing_time(&self) -> SystemTime {
        let skew = self.millis();
        let now = SystemTime::now();
        let offset = Duration::from_millis(skew.unsigned_abs());
        if skew >= 0 {
            now + offset
        } else {
            now - offset
        }
    }

    /// After `service` refused a request's time: measures its clock from its `Date` header (an
    /// HTTP date has whole seconds) against the middle of the round trip, and adopts the offset
    /// when it is past [`SKEW_THRESHOLD`] and differs from the one in use by as much. True when
    /// the offset changed, so that signing again can succeed.
    pub fn correct(
        &self,
        service: &str,
        date: Option<SystemTime>,
        sent_at: SystemTime,
        rtt: Duration,
    ) -> bool {
        let Some(date) = date else {
            return false;
        };
        let ours = sent_at + rtt / 2;
        let measured: i64 = match date.duration_since(ours) {
            Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
            Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
        };
        let threshold = SKEW_THRESHOLD.as_millis() as u64;
        if measured.unsigned_abs() < threshold
            || (measured - self.millis()).unsigned_abs() < threshold
        {
            return false;
        }
        self.ms.store(measured, Ordering::Relaxed);
        let secs = measured.unsigned_abs() / 1000;
        let direction = if measured > 0 { "behind" } else { "ahead of" };
        log::warn!(
            "this host's clock is {secs} s {direction} {service}'s (from {service}'s Date header): \
             signing with {service}'s time from now on; fix the host's time synchronization \
             (chrony, systemd-timesyncd)"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_past_the_threshold_is_adopted_once() {
        let skew = ClockSkew::default();
        let sent = SystemTime::now();
        let rtt = Duration::from_millis(100);
        // 20 minutes ahead.
        let date = sent + Duration::from_secs(1200);
        assert!(skew.correct("EC2", Some(date), sent, rtt));
        assert!(
            (skew.millis() - 1_199_950).abs() < 2_000,
            "{}",
            skew.millis()
        );
        // The same offset measured again is no change.
        assert!(!skew.correct("EC2", Some(date), sent, rtt));
        // A small offset, or no Date, is never adopted.
        let fresh = ClockSkew::default();
        assert!(!fresh.correct("EC2", Some(sent + Duration::from_secs(60)), sent, rtt));
        assert!(!fresh.correct("EC2", None, sent, rtt));
        assert_eq!(fresh.millis(), 0);
    }
}
