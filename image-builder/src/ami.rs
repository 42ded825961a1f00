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

use std::collections::BTreeMap;
use std::fs::File;
use std::io::IsTerminal as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_ec2::{Credentials, Ec2Client, ImdsClient, RetryPolicy};
use bytes::Bytes;
use url::Url;

use crate::aws_creds::{CredsError, Env, Provider};
use crate::ebs::{self, EbsClient, EbsError, StartSnapshot, BLOCK_SIZE};
use crate::images::{self, ImagesError, Registration};

const GIB: u64 = 1 << 30;

/// Longest a whole upload may take: a 64 GiB disk that is all data, at 10 MiB/s, takes under
/// two hours; beyond three something is wrong (a link that crawls, an endpoint that stalls) and
/// failing says so rather than hang a build pipeline.
const UPLOAD_DEADLINE: Duration = Duration::from_secs(3 * 3600);
/// Minutes EBS keeps a snapshot that is never completed: past the upload deadline and the wait
/// for `completed`, so EBS never expires a snapshot berth is still working on.
const SNAPSHOT_TIMEOUT_MINUTES: u32 = 300;
/// How long EBS may take to turn a completed upload into a `completed` snapshot. It is
/// usually seconds to minutes; an hour covers a large, busy region.
const COMPLETION_DEADLINE: Duration = Duration::from_secs(3600);
/// Polling DescribeSnapshots: start fast (small snapshots settle in seconds), back off to 15 s
/// so a long wait costs few calls against the account's EC2 rate limit.
const POLL_FIRST: Duration = Duration::from_millis(200);
const POLL_MAX: Duration = Duration::from_secs(15);
/// Default parallel block uploads: EBS direct APIs serve about a thousand PutSnapshotBlock
/// requests a second per account; 16 in flight saturate a gigabit link with 512 KiB blocks
/// without coming near that limit.
pub const DEFAULT_PARALLEL: usize = 16;
/// Most parallel uploads accepted: each holds a 512 KiB block in memory.
const MAX_PARALLEL: usize = 256;

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

/// EC2 and EBS control calls (RegisterImage, CopyImage, StartSnapshot, ...): RegisterImage can
/// take several seconds to answer, hence 30 s per try; 8 attempts within 3 minutes ride out
/// the throttling a busy account sees.
fn control_policy() -> RetryPolicy {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum BootMode {
    Uefi,
    LegacyBios,
    UefiPreferred,
}

impl BootMode {
    pub fn as_ec2(self) -> &'static str {
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
    #[error("{source}; {cleanup}")]
    CleanedUp {
        source: Box<AmiError>,
        cleanup: String,
    },
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

impl AmiError {
    /// True when the input was refused before anything was created (exit code 3).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            AmiError::DiskFormat { .. } | AmiError::Invalid { .. } | AmiError::Disk { .. }
        )
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

/// `KEY=VALUE`, with EC2's tag rules.
pub fn parse_tag(arg: &str) -> Result<(String, String), AmiError> {
    let invalid = |what: &str| AmiError::Invalid {
        field: format!("--tag {arg}"),
        what: what.into(),
    };
    let (k, v) = arg
        .split_once('=')
        .ok_or_else(|| invalid("expected KEY=VALUE"))?;
    if k.is_empty() || k.chars().count() > 128 {
        return Err(invalid("tag keys are 1 to 128 characters"));
    }
    if k.to_ascii_lowercase().starts_with("aws:") {
        return Err(invalid("tag keys starting with `aws:` are reserved by AWS"));
    }
    if v.chars().count() > 256 {
        return Err(invalid("tag values are at most 256 characters"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// EC2's AMI name rule: 3 to 128 characters from letters, digits, `( ) [ ] . / - ' @ _` and space.
pub fn check_name(name: &str) -> Result<(), AmiError> {
    let ok = (3..=128).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AmiError::Invalid {
            field: "--name".into(),
            what: format!(
                "`{name}`: AMI names are 3 to 128 characters: letters, digits, spaces and ( ) [ ] . / - ' @ _"
            ),
        })
    }
}

fn check_region(field: &str, region: &str) -> Result<(), AmiError> {
    if !region.is_empty()
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Ok(())
    } else {
        Err(AmiError::Invalid {
            field: field.into(),
            what: format!("`{region}` is not a region name like us-east-1"),
        })
    }
}

impl AmiRequest {
    fn validate(&self) -> Result<(), AmiError> {
        check_name(&self.name)?;
        check_region("--region", &self.region)?;
        for r in &self.copy_regions {
            check_region("--regions", r)?;
            if r == &self.region {
                return Err(AmiError::Invalid {
                    field: "--regions".into(),
                    what: format!("{r} is the source region"),
                });
            }
        }
        if self.tags.len() > 50 {
            return Err(AmiError::Invalid {
                field: "--tag".into(),
                what: "EC2 allows at most 50 tags".into(),
            });
        }
        if self.parallel == 0 || self.parallel > MAX_PARALLEL {
            return Err(AmiError::Invalid {
                field: "--parallel".into(),
                what: format!("must be 1 to {MAX_PARALLEL}"),
            });
        }
        Ok(())
    }

    fn ec2_endpoint(&self, region: &str) -> Url {
        self.ec2_endpoints
            .get(region)
            .or(self.ec2_default.as_ref())
            .cloned()
            .unwrap_or_else(|| Ec2Client::default_endpoint(region))
    }
}

/// The disk, opened and checked: a raw image, not empty.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    pub len: u64,
}

impl Disk {
    pub fn open(path: &Path) -> Result<Disk, AmiError> {
        let disk_err = |source| AmiError::Disk {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(disk_err)?;
        let meta = file.metadata().map_err(disk_err)?;
        if !meta.is_file() {
            return Err(AmiError::DiskFormat {
                path: path.to_path_buf(),
                what: "not a regular file".into(),
            });
        }
        let len = meta.len();
        if len == 0 {
            return Err(AmiError::DiskFormat {
                path: path.to_path_buf(),
                what: "the disk image is empty".into(),
            });
        }
        let mut magic = [0u8; 4];
        if file.read_exact_at(&mut magic, 0).is_ok() && &magic == b"QFI\xfb" {
            return Err(AmiError::DiskFormat {
                path: path.to_path_buf(),
                what: "this is a qcow2 image; an AMI needs the raw disk (`berth-image disk --format raw`, or `qemu-img convert -O raw`)".into(),
            });
        }
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    pub fn blocks(&self) -> u64 {
        self.len.div_ceil(BLOCK_SIZE as u64)
    }

    pub fn volume_size_gib(&self) -> u64 {
        self.len.div_ceil(GIB).max(1)
    }

    /// Block `index`, zero-padded past the end of the file; `None` when it is all zeros.
    fn read_block(&self, index: u64) -> Result<Option<Vec<u8>>, AmiError> {
        let offset = index * BLOCK_SIZE as u64;
        let want = (self.len - offset).min(BLOCK_SIZE as u64) as usize;
        let mut buf = vec![0u8; BLOCK_SIZE];
        self.file
            .read_exact_at(&mut buf[..want], offset)
            .map_err(|source| AmiError::Disk {
                path: self.path.clone(),
                source,
            })?;
        Ok((!is_zero(&buf)).then_some(buf))
    }
}

fn is_zero(buf: &[u8]) -> bool {
    let (head, words, tail) = unsafe { buf.align_to::<u64>() };
    head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

/// Progress on stderr: a bar on a terminal, a line per tenth otherwise.
struct Progress {
    mode: ProgressMode,
    tty: bool,
    total: u64,
    started: Instant,
    last_draw: Option<Instant>,
    last_tenth: u64,
}

impl Progress {
    fn new(mode: ProgressMode, total: u64) -> Progress {
        Progress {
            mode,
            tty: mode == ProgressMode::Auto && std::io::stderr().is_terminal(),
            total,
            started: Instant::now(),
            last_draw: None,
            last_tenth: 0,
        }
    }

    fn update(&mut self, covered: u64, uploaded: u64, skipped: u64, bytes: u64) {
        if self.mode == ProgressMode::Quiet || self.total == 0 {
            return;
        }
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let mib_s = bytes as f64 / (1 << 20) as f64 / secs;
        if self.tty {
            let now = Instant::now();
            let due = self
                .last_draw
                .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(100));
            if !due && covered < self.total {
                return;
            }
            self.last_draw = Some(now);
            let width = 30;
            let filled = (covered * width / self.total) as usize;
            eprint!(
                "\r[{}{}] {:3}% {covered}/{} blocks, {uploaded} sent, {skipped} zero, {mib_s:.1} MiB/s ",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                covered * 100 / self.total,
                self.total
            );
            if covered == self.total {
                eprintln!();
            }
        } else {
            let tenth = covered * 10 / self.total;
            if tenth > self.last_tenth || covered == self.total {
                self.last_tenth = tenth;
                eprintln!(
                    "berth-image: upload {}%: {covered}/{} blocks ({uploaded} sent, {skipped} all-zero skipped), {mib_s:.1} MiB/s",
                    covered * 100 / self.total,
                    self.total
                );
            }
        }
    }
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

/// Polls DescribeSnapshots until the snapshot is `completed`.
async fn wait_completed(
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

fn client_token() -> String {
    format!("berth-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Uploads the disk and registers the AMI (see the module doc). `creds` resolves the
/// credentials; `imds` is only for the instance-role source.
/// Refuses a boot mode the disk cannot boot in: an AMI registered with it launches instances
/// that never come up, which EC2 reports only as an instance that fails its status checks.
/// Judged from the GPT; a disk without one (an MBR disk of the user's own) is not judged.
pub fn check_boot_mode(disk: &Disk, mode: BootMode) -> Result<(), AmiError> {
    use crate::disk::gpt;
    let mut file = &disk.file;
    let parts = match gpt::read(&mut file) {
        Ok((_, parts)) => parts,
        Err(e) => {
            log::warn!(
                "{}: no GPT ({e}); not checking that it boots in {} mode",
                disk.path.display(),
                mode.as_ec2()
            );
            return Ok(());
        }
    };
    let has = |t: gpt::Guid| parts.iter().any(|p| p.type_guid == t);
    let refuse = |what: String| AmiError::Invalid {
        field: format!("--boot-mode {}", mode.as_ec2()),
        what: format!("{}: {what}", disk.path.display()),
    };
    match mode {
        BootMode::LegacyBios if !has(gpt::types::BIOS_BOOT) => Err(refuse(
            "the disk has no BIOS boot partition, so BIOS firmware finds nothing to start \
             (berth-image disk makes UEFI disks: systemd-boot on the EFI system partition); \
             use --boot-mode uefi or uefi-preferred"
                .into(),
        )),
        BootMode::Uefi | BootMode::UefiPreferred if !has(gpt::types::ESP) => Err(refuse(
            "the disk has no EFI system partition, so UEFI firmware finds nothing to start; \
             build it with berth-image disk, or use --boot-mode legacy-bios for a BIOS disk"
                .into(),
        )),
        BootMode::UefiPreferred if !has(gpt::types::BIOS_BOOT) => {
            log::warn!(
                "--boot-mode uefi-preferred: instance types without UEFI boot the image in legacy \
                 BIOS mode, which this disk cannot do (no BIOS boot partition); launch it on \
                 UEFI-capable types (Nitro), or register with --boot-mode uefi"
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

pub async fn build_ami(req: &AmiRequest, creds: &Provider) -> Result<AmiOutcome, AmiError> {
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
    for region in &req.copy_regions {
        let dest = Ec2Client::new(req.ec2_endpoint(region), region.clone(), control_policy());
        let (c, _) = creds.get().await?;
        let id = match images::images_named(&dest, &c, &req.name).await?.first() {
            Some(existing) => {
                log::warn!(
                    "{region}: image `{}` exists already as {}; not copied",
                    req.name,
                    existing.image_id
                );
                existing.image_id.clone()
            }
            None => {
                let id = images::copy_image(
                    &dest,
                    &c,
                    &req.region,
                    &outcome.image_id,
                    &req.name,
                    &req.description,
                )
                .await?;
                images::create_tags(&dest, &c, &[&id], &req.tags).await?;
                log::info!("{region}: copying {} as {id}", outcome.image_id);
                id
            }
        };
        outcome.copies.insert(region.clone(), id);
    }
    Ok(outcome)
}

/// Steps 2 and 3: snapshot, register, tag; deletes the snapshot when registering fails.
async fn create(
    req: &AmiRequest,
    disk: &Disk,
    ec2: &Ec2Client,
    creds: &Provider,
) -> Result<AmiOutcome, AmiError> {
    let ebs = Arc::new(EbsClient::new(
        req.ebs_endpoint
            .clone()
            .unwrap_or_else(|| EbsClient::default_endpoint(&req.region)),
        req.region.clone(),
        block_policy(),
    ));
    let control = EbsClient::new(
        req.ebs_endpoint
            .clone()
            .unwrap_or_else(|| EbsClient::default_endpoint(&req.region)),
        req.region.clone(),
        control_policy(),
    );
    let (c, _) = creds.get().await?;
    let volume_size_gib = disk.volume_size_gib();
    let description = if req.description.is_empty() {
        format!("berth-image ami {}", req.name)
    } else {
        req.description.clone()
    };
    let started = control
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
    let snapshot_id = started.snapshot_id;
    log::info!(
        "{}: snapshot {snapshot_id} started ({volume_size_gib} GiB)",
        req.region
    );
    let outcome =
        match upload_and_register(req, disk, ec2, &ebs, &control, creds, &snapshot_id).await {
            Ok(outcome) => outcome,
            Err(e) => return Err(cleanup(ec2, creds, &snapshot_id, e).await),
        };
    if !outcome.existed {
        // The image holds the snapshot from here on: a tagging failure must not delete it.
        let (c, _) = creds.get().await?;
        images::create_tags(ec2, &c, &[&outcome.image_id, &snapshot_id], &req.tags)
            .await
            .map_err(|e| AmiError::Tagging {
                image_id: outcome.image_id.clone(),
                source: Box::new(e),
            })?;
    }
    Ok(outcome)
}

async fn upload_and_register(
    req: &AmiRequest,
    disk: &Disk,
    ec2: &Ec2Client,
    ebs: &Arc<EbsClient>,
    control: &EbsClient,
    creds: &Provider,
    snapshot_id: &str,
) -> Result<AmiOutcome, AmiError> {
    let began = Instant::now();
    let uploaded = tokio::time::timeout(
        UPLOAD_DEADLINE,
        upload_blocks(
            ebs.clone(),
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
    control
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
    wait_completed(ec2, creds, snapshot_id).await?;
    let (c, _) = creds.get().await?;
    let reg = Registration {
        name: req.name.clone(),
        description: req.description.clone(),
        snapshot_id: snapshot_id.to_string(),
        volume_size_gib: disk.volume_size_gib(),
        boot_mode: req.boot_mode.as_ec2().to_string(),
    };
    let image_id = match images::register_image(ec2, &c, &reg).await {
        Ok(id) => id,
        Err(ImagesError::Ec2(e)) if e.code() == Some("InvalidAMIName.Duplicate") => {
            // Another run registered the name since we looked: report that image; ours goes.
            let existing = images::images_named(ec2, &c, &req.name).await?;
            let Some(image) = existing.into_iter().next() else {
                return Err(ImagesError::Ec2(e).into());
            };
            let cleanup_result = images::delete_snapshot(ec2, &c, snapshot_id).await;
            if let Err(d) = cleanup_result {
                log::warn!("cannot delete the unneeded snapshot {snapshot_id}: {d}");
            }
            return Ok(AmiOutcome {
                region: req.region.clone(),
                image_id: image.image_id,
                snapshot_id: image.root_snapshot_id,
                existed: true,
                copies: BTreeMap::new(),
                upload: Some(stats),
            });
        }
        Err(e) => return Err(e.into()),
    };
    log::info!("{}: registered {image_id}", req.region);
    Ok(AmiOutcome {
        region: req.region.clone(),
        image_id,
        snapshot_id: Some(snapshot_id.to_string()),
        existed: false,
        copies: BTreeMap::new(),
        upload: Some(stats),
    })
}

/// Deletes the snapshot this run made, and says so in the error.
async fn cleanup(ec2: &Ec2Client, creds: &Provider, snapshot_id: &str, e: AmiError) -> AmiError {
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

/// `berth-image ami`.
#[derive(Debug, clap::Args)]
pub struct AmiArgs {
    /// The raw disk image (from `berth-image disk --format raw`).
    #[arg(long)]
    pub disk: PathBuf,
    /// The AMI name (unique per account and region; an existing one is reported, not replaced).
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub description: Option<String>,
    /// The region to upload to and register in.
    #[arg(long)]
    pub region: String,
    /// Further regions to copy the AMI to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub regions: Vec<String>,
    #[arg(long, value_enum, default_value = "uefi")]
    pub boot_mode: BootMode,
    /// A tag for the AMI and its snapshot (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// EC2 endpoint: a URL for every region, or REGION=URL (repeatable).
    #[arg(long = "ec2-endpoint", value_name = "[REGION=]URL")]
    pub ec2_endpoints: Vec<String>,
    /// EBS direct APIs endpoint of --region.
    #[arg(long)]
    pub ebs_endpoint: Option<Url>,
    /// IMDS endpoint for instance-role credentials (default: the link-local ones).
    #[arg(long, hide = true)]
    pub imds_endpoint: Option<Url>,
    /// Blocks uploaded in parallel.
    #[arg(long, default_value_t = DEFAULT_PARALLEL)]
    pub parallel: usize,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

impl AmiArgs {
    pub fn into_request(self) -> Result<(AmiRequest, Option<Url>), AmiError> {
        let tags = self
            .tags
            .iter()
            .map(|t| parse_tag(t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ec2_endpoints = BTreeMap::new();
        let mut ec2_default = None;
        for e in &self.ec2_endpoints {
            let invalid = |what: String| AmiError::Invalid {
                field: format!("--ec2-endpoint {e}"),
                what,
            };
            let (region, url) = match e.split_once('=') {
                Some((r, u)) if !r.contains(':') => (Some(r), u),
                _ => (None, e.as_str()),
            };
            let url = Url::parse(url).map_err(|err| invalid(err.to_string()))?;
            match region {
                Some(r) => {
                    check_region("--ec2-endpoint", r)?;
                    ec2_endpoints.insert(r.to_string(), url);
                }
                None => ec2_default = Some(url),
            }
        }
        let mut copy_regions: Vec<String> = Vec::new();
        for r in self
            .regions
            .iter()
            .map(|r| r.trim())
            .filter(|r| !r.is_empty())
        {
            if !copy_regions.iter().any(|c| c == r) {
                copy_regions.push(r.to_string());
            }
        }
        Ok((
            AmiRequest {
                disk: self.disk,
                name: self.name,
                description: self.description.unwrap_or_default(),
                region: self.region,
                copy_regions,
                boot_mode: self.boot_mode,
                tags,
                ec2_endpoints,
                ec2_default,
                ebs_endpoint: self.ebs_endpoint,
                parallel: self.parallel,
                progress: if self.quiet {
                    ProgressMode::Quiet
                } else {
                    ProgressMode::Auto
                },
            },
            self.imds_endpoint,
        ))
    }
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

/// Runs `berth-image ami` and prints the outcome as JSON. Exit codes: 1 failed, 3 refused.
pub fn run_cli(args: AmiArgs) -> Result<(), (u8, String)> {
    let (req, imds) = args.into_request().map_err(|e| (3, e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| (1, format!("cannot start the async runtime: {e}")))?;
    let creds = provider(imds);
    let outcome = runtime
        .block_on(build_ami(&req, &creds))
        .map_err(|e| (if e.is_refusal() { 3 } else { 1 }, e.to_string()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&outcome).expect("the outcome serializes")
    );
    Ok(())
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
    fn zero_detection() {
        let mut b = vec![0u8; BLOCK_SIZE];
        assert!(is_zero(&b));
        b[BLOCK_SIZE - 1] = 1;
        assert!(!is_zero(&b));
        b[BLOCK_SIZE - 1] = 0;
        b[3] = 1;
        assert!(!is_zero(&b[1..]));
    }

    #[test]
    fn tags_and_names() {
        assert_eq!(
            parse_tag("team=os=x").unwrap(),
            ("team".into(), "os=x".into())
        );
        assert!(parse_tag("novalue").is_err());
        assert!(parse_tag("aws:x=1").is_err());
        assert!(parse_tag("=v").is_err());
        assert!(check_name("berth-fedora-41 (2024.1)").is_ok());
        assert!(check_name("x").is_err());
        assert!(check_name("a\"b\"c").is_err());
    }

    #[test]
    fn disk_geometry_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        std::fs::write(&p, vec![1u8; BLOCK_SIZE + 1]).unwrap();
        let d = Disk::open(&p).unwrap();
        assert_eq!(d.blocks(), 2);
        assert_eq!(d.volume_size_gib(), 1);
        let last = d.read_block(1).unwrap().unwrap();
        assert_eq!(last.len(), BLOCK_SIZE);
        assert_eq!(last[0], 1);
        assert!(last[1..].iter().all(|b| *b == 0));
        std::fs::write(&p, b"QFI\xfb\0\0\0\x03").unwrap();
        assert!(Disk::open(&p).unwrap_err().to_string().contains("qcow2"));
        std::fs::write(&p, b"").unwrap();
        assert!(Disk::open(&p).unwrap_err().is_refusal());
    }

    #[test]
    fn endpoints_per_region() {
        let args = AmiArgs {
            disk: "d".into(),
            name: "berth-x".into(),
            description: None,
            region: "us-east-1".into(),
            regions: vec!["us-west-2".into(), "us-west-2".into(), " ".into()],
            boot_mode: BootMode::Uefi,
            tags: vec!["a=b".into()],
            ec2_endpoints: vec![
                "http://127.0.0.1:1/".into(),
                "us-west-2=http://127.0.0.1:2/".into(),
            ],
            ebs_endpoint: None,
            imds_endpoint: None,
            parallel: 4,
            quiet: true,
        };
        let (req, _) = args.into_request().unwrap();
        assert_eq!(req.copy_regions, ["us-west-2"]);
        assert_eq!(req.ec2_endpoint("us-east-1").port(), Some(1));
        assert_eq!(req.ec2_endpoint("us-west-2").port(), Some(2));
    }
}
