//! The EBS snapshot: StartSnapshot, every non-zero block with PutSnapshotBlock in parallel,
//! CompleteSnapshot, and deleting it when the run fails before an image holds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_ec2::{Ec2Client, RetryPolicy};
use bytes::Bytes;

use crate::aws_creds::Provider;
use crate::ebs::{self, EbsClient, StartSnapshot, BLOCK_SIZE};
use crate::images;

use super::progress::Progress;
use super::{control_policy, AmiError, AmiRequest, Disk, ProgressMode, UploadStats};

/// Longest a whole upload may take: a 64 GiB disk that is all data, at 10 MiB/s, takes under
/// two hours; beyond three something is wrong (a link that crawls, an endpoint that stalls) and
/// failing says so rather than hang a build pipeline.
const UPLOAD_DEADLINE: Duration = Duration::from_secs(3 * 3600);
/// Minutes EBS keeps a snapshot that is never completed: past the upload deadline and the wait
/// for `completed`, so EBS never expires a snapshot berth is still working on.
const SNAPSHOT_TIMEOUT_MINUTES: u32 = 300;

/// One block upload: a 512 KiB body takes well under 30 s on any working link. Transient
/// failures (throttling, 5xx, resets) are retried with backoff up to 20 s, for at most 5 minutes
/// per block: EBS throttles per snapshot and account and recovers within seconds.
fn block_policy() -> RetryPolicy {
    RetryPolicy {
        per_try_timeout: Duration::from_secs(30),
        max_attempts: 10,
        base_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(20),
        deadline: Duration::from_secs(300),
    }
}

/// The EBS clients of one run: one for blocks, one for the control calls, which retry
/// differently.
pub struct Clients {
    blocks: Arc<EbsClient>,
    control: EbsClient,
}

impl Clients {
    pub fn new(req: &AmiRequest) -> Clients {
        let endpoint = req
            .ebs_endpoint
            .clone()
            .unwrap_or_else(|| EbsClient::default_endpoint(&req.region));
        Clients {
            blocks: Arc::new(EbsClient::new(
                endpoint.clone(),
                req.region.clone(),
                block_policy(),
            )),
            control: EbsClient::new(endpoint, req.region.clone(), control_policy()),
        }
    }
}

/// StartSnapshot for a volume of the disk's size; returns the snapshot id.
pub async fn start(
    clients: &Clients,
    creds: &Provider,
    req: &AmiRequest,
    disk: &Disk,
) -> Result<String, AmiError> {
    let (c, _) = creds.get().await?;
    let volume_size_gib = disk.volume_size_gib();
    let description = if req.description.is_empty() {
        format!("berth-image ami {}", req.name)
    } else {
        req.description.clone()
    };
    let started = clients
        .control
        .start_snapshot(
            &c,
            &StartSnapshot {
                volume_size_gib,
                description: &description,
                tags: &req.tags,
                client_token: &client_token(),
                timeout_minutes: SNAPSHOT_TIMEOUT_MINUTES,
            },
        )
        .await?;
    if started.block_size != BLOCK_SIZE as u64 {
        // The API defines 512 KiB blocks and PutSnapshotBlock refuses any other length, so a
        // different BlockSize is a reporting quirk (moto says 512), not a different geometry.
        log::warn!(
            "StartSnapshot answered BlockSize {}; writing the {BLOCK_SIZE}-byte blocks the EBS direct APIs define",
            started.block_size
        );
    }
    log::info!(
        "{}: snapshot {} started ({volume_size_gib} GiB)",
        req.region,
        started.snapshot_id
    );
    Ok(started.snapshot_id)
}

/// Uploads the disk into the started snapshot within [`UPLOAD_DEADLINE`] and seals it with
/// CompleteSnapshot.
pub async fn upload(
    clients: &Clients,
    creds: &Provider,
    req: &AmiRequest,
    disk: &Disk,
    snapshot_id: &str,
) -> Result<UploadStats, AmiError> {
    let began = Instant::now();
    let uploaded = tokio::time::timeout(
        UPLOAD_DEADLINE,
        upload_blocks(
            clients.blocks.clone(),
            creds,
            disk,
            snapshot_id,
            req.parallel,
            req.progress,
        ),
    )
    .await
    .map_err(|_| AmiError::Deadline {
        what: format!("uploading {}", req.disk.display()),
        after: UPLOAD_DEADLINE,
    })??;
    let (blocks_uploaded, blocks_skipped_zero, bytes_uploaded) = uploaded;
    let (c, _) = creds.get().await?;
    clients
        .control
        .complete_snapshot(&c, snapshot_id, blocks_uploaded)
        .await?;
    let seconds = began.elapsed().as_secs_f64().max(1e-6);
    let mib = (1 << 20) as f64;
    let stats = UploadStats {
        disk_bytes: disk.len,
        volume_size_gib: disk.volume_size_gib(),
        blocks_total: disk.blocks(),
        blocks_uploaded,
        blocks_skipped_zero,
        bytes_uploaded,
        parallel: req.parallel,
        seconds,
        disk_mib_per_s: disk.len as f64 / mib / seconds,
        upload_mib_per_s: bytes_uploaded as f64 / mib / seconds,
    };
    log::info!(
        "{snapshot_id}: {blocks_uploaded} blocks sent, {blocks_skipped_zero} all-zero skipped, {:.1} MiB/s",
        stats.upload_mib_per_s
    );
    Ok(stats)
}

/// Writes every non-zero block of `disk` into the pending snapshot `snapshot_id`, at most
/// `parallel` at a time. Returns (blocks uploaded, blocks skipped, bytes uploaded).
pub async fn upload_blocks(
    ebs: Arc<EbsClient>,
    creds: &Provider,
    disk: &Disk,
    snapshot_id: &str,
    parallel: usize,
    progress: ProgressMode,
) -> Result<(u64, u64, u64), AmiError> {
    let total = disk.blocks();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut progress = Progress::new(progress, total);
    let (mut uploaded, mut skipped, mut bytes) = (0u64, 0u64, 0u64);
    let snapshot_id: Arc<str> = Arc::from(snapshot_id);
    for index in 0..total {
        // Wait for a free slot first, so at most `parallel` blocks are held in memory.
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        while let Some(done) = tasks.try_join_next() {
            finish(done, &mut uploaded, &mut bytes)?;
        }
        let Some(block) = disk.read_block(index)? else {
            skipped += 1;
            progress.update(uploaded + skipped, uploaded, skipped, bytes);
            continue;
        };
        let (creds_now, _) = creds.get().await?;
        let ebs = ebs.clone();
        let id = snapshot_id.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let sum = ebs::checksum(&block);
            let len = block.len();
            ebs.put_block(&creds_now, &id, index, Bytes::from(block), &sum)
                .await
                .map_err(AmiError::from)?;
            Ok(len)
        });
        progress.update(uploaded + skipped, uploaded, skipped, bytes);
    }
    while let Some(done) = tasks.join_next().await {
        finish(done, &mut uploaded, &mut bytes)?;
        progress.update(uploaded + skipped, uploaded, skipped, bytes);
    }
    Ok((uploaded, skipped, bytes))
}

fn finish(
    result: Result<Result<usize, AmiError>, tokio::task::JoinError>,
    uploaded: &mut u64,
    bytes: &mut u64,
) -> Result<(), AmiError> {
    let n = result.map_err(|e| AmiError::Task(e.to_string()))??;
    *uploaded += 1;
    *bytes += n as u64;
    Ok(())
}

fn client_token() -> String {
    format!("berth-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Deletes the snapshot this run made after `e`, and says in the error whether that worked.
pub(crate) async fn delete_after(
    ec2: &Ec2Client,
    creds: &Provider,
    snapshot_id: &str,
    e: AmiError,
) -> AmiError {
    let result = match creds.get().await {
        Ok((c, _)) => images::delete_snapshot(ec2, &c, snapshot_id)
            .await
            .map_err(|d| d.to_string()),
        Err(d) => Err(d.to_string()),
    };
    let cleanup = match result {
        Ok(()) => format!("the snapshot {snapshot_id} this run made was deleted"),
        Err(d) => format!(
            "deleting the snapshot {snapshot_id} failed too ({d}): delete it with `aws ec2 delete-snapshot --snapshot-id {snapshot_id}`"
        ),
    };
    AmiError::CleanedUp {
        source: Box::new(e),
        cleanup,
    }
}
