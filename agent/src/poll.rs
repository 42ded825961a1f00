//! How often the reconcile daemon asks EC2 who is in the cluster.
//!
//! The rule: every node spaces its polls so that the whole cluster stays within a budget of
//! DescribeInstances requests per second (`poll.cluster_requests_per_second`, 2 by default).
//! EC2 throttles Describe calls per account and region with a token bucket shared by every tool in
//! the account; a cluster whose nodes each polled every 30 s would spend 33 requests a second at
//! 1000 nodes and starve everything else. So a node that saw `members` instances in its last poll,
//! each poll costing `pages` requests, waits
//!
//! ```text
//! interval = max(poll.interval_seconds, members × pages ÷ cluster_requests_per_second)
//! ```
//!
//! scaled by a uniform jitter in [0.75, 1.25) whose mean is 1, so that nodes booted together drift
//! apart and the expected cluster-wide rate is at most the budget. A 3-node cluster polls every
//! 30 s; a 5000-node cluster every 2500 s (≈ 42 min), at 2 requests/s for the whole cluster.

use std::time::Duration;

use crate::config::Poll;

/// The mean interval for a cluster of `members` nodes whose poll takes `pages` requests.
pub fn mean_interval(poll: &Poll, members: usize, pages: u32) -> Duration {
    let requests = (members.max(1) as f64) * f64::from(pages.max(1));
    let budgeted = requests / poll.cluster_requests_per_second;
    Duration::from_secs_f64(poll.interval_seconds.max(budgeted))
}

/// The next wait: the mean interval with jitter drawn from `unit` (uniform in [0, 1)).
pub fn next_interval(poll: &Poll, members: usize, pages: u32, unit: f64) -> Duration {
    mean_interval(poll, members, pages).mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll() -> Poll {
        Poll {
            interval_seconds: 30.0,
            cluster_requests_per_second: 2.0,
        }
    }

    #[test]
    fn small_clusters_use_the_base_interval() {
        assert_eq!(mean_interval(&poll(), 3, 1), Duration::from_secs(30));
    }

    #[test]
    fn cluster_rate_stays_in_budget_as_it_grows() {
        for members in [10usize, 100, 1000, 5000, 20_000] {
            for pages in [1u32, 5] {
                let i = mean_interval(&poll(), members, pages).as_secs_f64();
                let rate = members as f64 * f64::from(pages) / i;
                assert!(
                    rate <= 2.0 + 1e-9,
                    "{members} nodes, {pages} pages: {rate}/s"
                );
            }
        }
        assert_eq!(mean_interval(&poll(), 5000, 1), Duration::from_secs(2500));
    }

    #[test]
    fn jitter_is_bounded_and_centred() {
        let m = mean_interval(&poll(), 3, 1);
        assert_eq!(next_interval(&poll(), 3, 1, 0.0), m.mul_f64(0.75));
        assert_eq!(next_interval(&poll(), 3, 1, 0.5), m);
        assert!(next_interval(&poll(), 3, 1, 0.999_999) < m.mul_f64(1.25));
    }
}
