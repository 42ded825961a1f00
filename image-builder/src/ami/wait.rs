//! Waiting for a completed upload to become a `completed` snapshot.

use std::time::{Duration, Instant};

use berth_ec2::Ec2Client;

use crate::aws_creds::Provider;
use crate::images;

use super::AmiError;

/// How long EBS may take to turn a completed upload into a `completed` snapshot. It is
/// usually seconds to minutes; an hour covers a large, busy region.
const COMPLETION_DEADLINE: Duration = Duration::from_secs(3600);
/// Polling DescribeSnapshots: start fast (small snapshots settle in seconds), back off to 15 s
/// so a long wait costs few calls against the account's EC2 rate limit.
const POLL_FIRST: Duration = Duration::from_millis(200);
const POLL_MAX: Duration = Duration::from_secs(15);

/// Polls DescribeSnapshots until the snapshot is `completed`.
pub async fn completed(
    ec2: &Ec2Client,
    creds: &Provider,
    snapshot_id: &str,
) -> Result<(), AmiError> {
    let started = Instant::now();
    let mut delay = POLL_FIRST;
    loop {
        let (c, _) = creds.get().await?;
        let (status, progress) = images::snapshot_status(ec2, &c, snapshot_id).await?;
        match status.as_str() {
            "completed" => return Ok(()),
            "pending" => log::info!("snapshot {snapshot_id}: pending {progress}"),
            other => {
                return Err(AmiError::SnapshotFailed {
                    snapshot_id: snapshot_id.into(),
                    status: other.into(),
                })
            }
        }
        if started.elapsed() + delay > COMPLETION_DEADLINE {
            return Err(AmiError::Deadline {
                what: format!("snapshot {snapshot_id} becoming `completed`"),
                after: COMPLETION_DEADLINE,
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(POLL_MAX);
    }
}
