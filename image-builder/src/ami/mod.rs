//! `berth-image ami`: a raw disk image becomes an AMI.
//!
//! 1. If this account already has an image of that name in the region, it is reported and
//!    nothing is uploaded (idempotent by name; a rerun after a partial failure resumes the copies).
//! 2. The disk is written to a new EBS snapshot with the EBS direct APIs: every 512 KiB block
//!    that is not all zeros goes up in parallel (at most `--parallel` in flight), each with its
//!    SHA-256 checksum; all-zero blocks are skipped (an EBS snapshot reads unwritten blocks as
//!    zeros). CompleteSnapshot seals it and berth waits for DescribeSnapshots to say `completed`.
//! 3. RegisterImage: HVM, x86_64, root `/dev/xvda` from the snapshot on gp3, ENA, SR-IOV
//!    `simple`, IMDSv2 only, the boot mode. The image and the snapshot get the user's tags.
//! 4. CopyImage to each further region (skipped where an image of that name exists).
//!
//! If anything fails before the image is registered, the snapshot this run made is deleted: a
//! failed run leaves nothing that costs money. Once the image exists, its snapshot is its own.
//!
//! Not for: building the disk (`berth-image disk`), launching instances, or sharing images.
//!
//! One file per job: [`validate`] (the request, before any call), [`disk`] (reading blocks),
//! [`snapshot`] (StartSnapshot, the block upload, CompleteSnapshot, deleting it on failure),
//! [`progress`], [`wait`] (until `completed`), [`register`] (RegisterImage and tags) and
//! [`copy`] (CopyImage to further regions).

pub mod copy;
pub mod disk;
pub mod progress;
pub mod register;
pub mod snapshot;
pub mod validate;
pub mod wait;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use berth_ec2::{Credentials, Ec2Client, ImdsClient, RetryPolicy};
use url::Url;

use crate::aws_creds::{CredsError, Env, Provider};
use crate::ebs::EbsError;
use crate::images::{self, ImagesError};
use crate::kind::{Classified, Kind};

pub use disk::Disk;
pub use snapshot::upload_blocks;
use validate::check_boot_mode;
pub use validate::{parse_ec2_endpoint, parse_tag};

/// Default parallel block uploads: EBS direct APIs serve about a thousand PutSnapshotBlock
/// requests a second per account; 16 in flight saturate a gigabit link with 512 KiB blocks
/// without coming near that limit.
pub const DEFAULT_PARALLEL: usize = 16;

/// EC2 and EBS control calls (RegisterImage, CopyImage, StartSnapshot, ...): RegisterImage can
/// take several seconds to answer, hence 30 s per try; 8 attempts within 3 minutes ride out
/// the throttling a busy account sees.
pub(crate) fn control_policy() -> RetryPolicy {
    RetryPolicy {
        per_try_timeout: Duration::from_secs(30),
        max_attempts: 8,
        base_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(20),
        deadline: Duration::from_secs(180),
    }
}

/// Looking for an instance role: off EC2 nothing answers at 169.254.169.254, and a laptop user
/// without credentials should hear so in seconds, not after the agent's 60 s boot deadline.
fn imds_policy() -> RetryPolicy {
    RetryPolicy {
        per_try_timeout: Duration::from_secs(1),
        max_attempts: 3,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(500),
        deadline: Duration::from_secs(5),
    }
}

/// The firmware EC2 boots the image's instances with (RegisterImage `BootMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum BootMode {
    Uefi,
    LegacyBios,
    UefiPreferred,
}

impl BootMode {
    /// The value RegisterImage takes.
    pub(crate) fn as_ec2(self) -> &'static str {
        match self {
            BootMode::Uefi => "uefi",
            BootMode::LegacyBios => "legacy-bios",
            BootMode::UefiPreferred => "uefi-preferred",
        }
    }
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar redrawn in place when stderr is a terminal, log lines otherwise.
    Auto,
    Lines,
    Quiet,
}

#[derive(Debug, thiserror::Error)]
pub enum AmiError {
    #[error("cannot read the disk {path}: {source}")]
    Disk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    DiskFormat { path: PathBuf, what: String },
    #[error("{field}: {what}")]
    Invalid { field: String, what: String },
    #[error(transparent)]
    Credentials(#[from] CredsError),
    #[error(transparent)]
    Ebs(Box<EbsError>),
    #[error(transparent)]
    Images(Box<ImagesError>),
    #[error("snapshot {snapshot_id} ended in state `{status}` instead of `completed`")]
    SnapshotFailed { snapshot_id: String, status: String },
    #[error("a block upload task failed: {0}")]
    Task(String),
    #[error("{what} did not finish within {after:?}")]
    Deadline { what: String, after: Duration },
    #[error("image {image_id} is registered, but tagging it or its snapshot failed: {source}")]
    Tagging {
        image_id: String,
        source: Box<ImagesError>,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{source}; {cleanup}")]
    CleanedUp {
        source: Box<AmiError>,
        cleanup: String,
    },
}

impl Classified for AmiError {
    fn kind(&self) -> Kind {
        match self {
            AmiError::Disk { .. } | AmiError::DiskFormat { .. } | AmiError::Invalid { .. } => {
                Kind::Refused
            }
            AmiError::Credentials(e) => e.kind(),
            AmiError::Images(e) => e.kind(),
            // Every EBS call comes after the input was accepted.
            AmiError::Ebs(_) => Kind::Failed,
            // The snapshot existed, so the run is a failure whatever caused it.
            AmiError::CleanedUp { .. } => Kind::Failed,
            AmiError::Runtime(_)
            | AmiError::SnapshotFailed { .. }
            | AmiError::Task(_)
            | AmiError::Deadline { .. }
            | AmiError::Tagging { .. } => Kind::Failed,
        }
    }
}

impl From<EbsError> for AmiError {
    fn from(e: EbsError) -> Self {
        AmiError::Ebs(Box::new(e))
    }
}

impl From<ImagesError> for AmiError {
    fn from(e: ImagesError) -> Self {
        AmiError::Images(Box::new(e))
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct AmiRequest {
    pub disk: PathBuf,
    pub name: String,
    pub description: String,
    pub region: String,
    /// Further regions to copy the image to.
    pub copy_regions: Vec<String>,
    pub boot_mode: BootMode,
    pub tags: Vec<(String, String)>,
    /// EC2 endpoint per region; regions not listed use `ec2_default`, then production.
    pub ec2_endpoints: BTreeMap<String, Url>,
    pub ec2_default: Option<Url>,
    pub ebs_endpoint: Option<Url>,
    /// Blocks in flight, 1 to 256.
    pub parallel: usize,
    pub progress: ProgressMode,
}

/// What happened, printed as JSON on stdout.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AmiOutcome {
    pub region: String,
    pub image_id: String,
    pub snapshot_id: Option<String>,
    /// The image existed already: nothing was uploaded or registered.
    pub existed: bool,
    /// Region → image id, for `--regions` (copied now or found by name).
    pub copies: BTreeMap<String, String>,
    pub upload: Option<UploadStats>,
}

/// How the snapshot was written.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UploadStats {
    pub disk_bytes: u64,
    pub volume_size_gib: u64,
    pub blocks_total: u64,
    pub blocks_uploaded: u64,
    pub blocks_skipped_zero: u64,
    pub bytes_uploaded: u64,
    pub parallel: usize,
    pub seconds: f64,
    /// Disk bytes covered per second (skipped zero blocks count: they are covered too).
    pub disk_mib_per_s: f64,
    /// Bytes sent per second.
    pub upload_mib_per_s: f64,
}

/// Uploads the disk and registers the AMI (see the module doc); `creds` resolves the
/// credentials. Refusals ([`Kind::Refused`]) come before any request.
pub(crate) async fn build_ami(req: &AmiRequest, creds: &Provider) -> Result<AmiOutcome, AmiError> {
    req.validate()?;
    let disk = Disk::open(&req.disk)?;
    check_boot_mode(&disk, req.boot_mode)?;
    let ec2 = Ec2Client::new(
        req.ec2_endpoint(&req.region),
        req.region.clone(),
        control_policy(),
    );
    let (c, source) = creds.get().await?;
    log::info!("signing as {} from {source}", c.access_key_id);

    let mut outcome = match images::images_named(&ec2, &c, &req.name).await?.first() {
        Some(existing) => {
            log::warn!(
                "{}: image `{}` exists already as {} ({}); nothing uploaded",
                req.region,
                req.name,
                existing.image_id,
                existing.state
            );
            AmiOutcome {
                region: req.region.clone(),
                image_id: existing.image_id.clone(),
                snapshot_id: existing.root_snapshot_id.clone(),
                existed: true,
                copies: BTreeMap::new(),
                upload: None,
            }
        }
        None => create(req, &disk, &ec2, creds).await?,
    };
    outcome.copies = copy::to_regions(req, creds, &outcome.image_id).await?;
    Ok(outcome)
}

/// Steps 2 and 3: snapshot, register, tag. The snapshot is deleted when anything before the
/// registration fails; once the image holds it, a tagging failure leaves it.
async fn create(
    req: &AmiRequest,
    disk: &Disk,
    ec2: &Ec2Client,
    creds: &Provider,
) -> Result<AmiOutcome, AmiError> {
    let clients = snapshot::Clients::new(req);
    let snapshot_id = snapshot::start(&clients, creds, req, disk).await?;
    let registered = async {
        let stats = snapshot::upload(&clients, creds, req, disk, &snapshot_id).await?;
        wait::completed(ec2, creds, &snapshot_id).await?;
        register::register(ec2, creds, req, disk, &snapshot_id, stats).await
    }
    .await;
    let outcome = match registered {
        Ok(outcome) => outcome,
        Err(e) => return Err(snapshot::delete_after(ec2, creds, &snapshot_id, e).await),
    };
    if !outcome.existed {
        register::tag(ec2, creds, req, &outcome.image_id, &snapshot_id).await?;
    }
    Ok(outcome)
}

/// The credentials chain of the CLI: the process environment, then IMDS.
pub fn provider(imds_endpoint: Option<Url>) -> Provider {
    let endpoints = match imds_endpoint {
        Some(u) => vec![u],
        None => ImdsClient::default_endpoints(),
    };
    Provider::new(
        Env::process(),
        Some(ImdsClient::new(endpoints, imds_policy())),
    )
}

/// Runs [`build_ami`] on a runtime of its own (two worker threads: the upload is I/O bound).
pub fn build_ami_blocking(req: &AmiRequest, creds: &Provider) -> Result<AmiOutcome, AmiError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AmiError::Runtime)?;
    runtime.block_on(build_ami(req, creds))
}

/// Credentials for tests and benches that already hold them.
pub fn static_provider(c: Credentials) -> Provider {
    let mut vars = BTreeMap::new();
    vars.insert("AWS_ACCESS_KEY_ID".to_string(), c.access_key_id);
    vars.insert("AWS_SECRET_ACCESS_KEY".to_string(), c.secret_access_key);
    if let Some(t) = c.session_token {
        vars.insert("AWS_SESSION_TOKEN".to_string(), t);
    }
    Provider::new(Env { vars, home: None }, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_failures() {
        let refused = AmiError::Invalid {
            field: "--name".into(),
            what: "x".into(),
        };
        assert_eq!(refused.kind(), Kind::Refused);
        let failed = AmiError::SnapshotFailed {
            snapshot_id: "snap-1".into(),
            status: "error".into(),
        };
        assert_eq!(failed.kind(), Kind::Failed);
        // A refusal wrapped after the snapshot existed is a failure: something was created.
        let cleaned = AmiError::CleanedUp {
            source: Box::new(refused),
            cleanup: "deleted".into(),
        };
        assert_eq!(cleaned.kind(), Kind::Failed);
    }
}
