//! Snapshots and images of the emulated account: what the EBS direct APIs write and what
//! RegisterImage, DescribeImages, DescribeSnapshots, CreateTags, CopyImage and DeleteSnapshot
//! read and change on the EC2 endpoint.
//!
//! Unlike moto, berth-sim records every attribute RegisterImage was given (block-device
//! mappings, ENA, SR-IOV, IMDS support, boot mode), so a test can check what berth-image asked
//! for. The store is shared by the regions of one account (see [`crate::Sim::start_peer`]):
//! every record carries its region, and CopyImage reads the source image from the source region.
//!
//! Failures of one action (RegisterImage, PutSnapshotBlock, ...) can be injected by name with
//! [`crate::Sim::fail_action`]; they are answered after the signature was checked, in the
//! endpoint's own error shape.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::ec2::{escape, request_id, ApiError, XMLNS};
use crate::time_fmt::rfc3339_millis;

/// How long a completed upload stays `pending` in DescribeSnapshots: long enough that a client
/// must poll for `completed` (as it must on AWS, where this takes minutes), short enough for tests.
const SNAPSHOT_SETTLE: Duration = Duration::from_millis(300);

/// The size of a snapshot block of the EBS direct APIs.
pub const BLOCK_SIZE: usize = 512 * 1024;

/// One snapshot block as the sim stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub data: Arc<Vec<u8>>,
    /// The base64 SHA-256 the client sent (and the sim verified).
    pub checksum: String,
    /// Opaque token for GetSnapshotBlock.
    pub token: String,
}

/// A snapshot: started through the EBS direct APIs (or made by CopyImage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub id: String,
    pub region: String,
    pub owner_id: String,
    /// `pending` while blocks are written and while it settles, then `completed`.
    pub status: String,
    pub volume_size_gib: u64,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub start_time: SystemTime,
    pub client_token: Option<String>,
    /// Blocks written, by block index.
    pub blocks: BTreeMap<u64, Block>,
    /// CompleteSnapshot was called (with this `ChangedBlocksCount`).
    pub changed_blocks_count: Option<u64>,
    settles_at: Option<Instant>,
}

impl SnapshotRecord {
    fn settle(&mut self, now: Instant) {
        if self.status == "pending" && self.settles_at.is_some_and(|t| now >= t) {
            self.status = "completed".into();
            self.settles_at = None;
        }
    }
}

/// One block-device mapping of an image, as RegisterImage gave it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockDeviceRecord {
    pub device_name: String,
    pub snapshot_id: Option<String>,
    pub volume_type: Option<String>,
    pub volume_size_gib: Option<u64>,
    pub delete_on_termination: Option<bool>,
}

/// An image, with every attribute RegisterImage (or CopyImage) set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageRecord {
    pub id: String,
    pub region: String,
    pub owner_id: String,
    pub name: String,
    pub description: Option<String>,
    pub state: String,
    pub architecture: Option<String>,
    pub virtualization_type: Option<String>,
    pub root_device_name: Option<String>,
    pub block_devices: Vec<BlockDeviceRecord>,
    /// `EnaSupport` as given (`None`: not given).
    pub ena_support: Option<bool>,
    pub sriov_net_support: Option<String>,
    pub imds_support: Option<String>,
    pub boot_mode: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// For a copy: where it came from.
    pub source_image_id: Option<String>,
    pub source_region: Option<String>,
    pub creation_date: String,
}

#[derive(Debug)]
struct Failure {
    action: String,
    remaining: u32,
    status: u16,
    code: String,
}

#[derive(Debug, Default)]
struct Inner {
    snapshots: BTreeMap<String, SnapshotRecord>,
    images: BTreeMap<String, ImageRecord>,
    failures: Vec<Failure>,
}

impl Inner {
    fn snapshot_in(&self, id: &str, region: &str) -> Option<&SnapshotRecord> {
        self.snapshots.get(id).filter(|s| s.region == region)
    }

    fn image_in(&self, id: &str, region: &str) -> Option<&ImageRecord> {
        self.images.get(id).filter(|i| i.region == region)
    }
}

/// RegisterImage's `TagSpecification.N`: resource type and tags by index.
type TagSpecs = BTreeMap<u32, (Option<String>, BTreeMap<u32, (String, String)>)>;

/// The snapshots and images of one account, across the regions that share it.
#[derive(Debug, Default)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

fn api_err(status: u16, code: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code: code.into(),
        message: message.into(),
    }
}

fn unknown(key: &str) -> ApiError {
    api_err(
        400,
        "UnknownParameter",
        format!("The parameter {key} is not recognized"),
    )
}

fn missing(name: &str) -> ApiError {
    api_err(
        400,
        "MissingParameter",
        format!("The request must contain the parameter {name}"),
    )
}

fn bad_value(message: impl Into<String>) -> ApiError {
    api_err(400, "InvalidParameterValue", message)
}

/// 17 random hex digits after `prefix-0`, like EC2's long ids.
pub(crate) fn random_id(prefix: &str) -> String {
    format!("{prefix}-0{:016x}", fastrand::u64(..))
}

fn index(key: &str, part: &str) -> Result<u32, ApiError> {
    part.parse::<u32>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| unknown(key))
}

fn parse_bool(name: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad_value(format!(
            "Value ({v}) for parameter {name} is invalid. Expected: 'true' or 'false'."
        ))),
    }
}

/// `Filter.N.Name` / `Filter.N.Value.M` pairs, grouped.
#[derive(Default)]
struct Filters(BTreeMap<u32, (Option<String>, Vec<String>)>);

impl Filters {
    fn take(&mut self, key: &str, parts: &[&str], v: &str) -> Result<bool, ApiError> {
        match parts {
            ["Filter", n, "Name"] => {
                self.0.entry(index(key, n)?).or_default().0 = Some(v.into());
                Ok(true)
            }
            ["Filter", n, "Value", m] => {
                index(key, m)?;
                self.0.entry(index(key, n)?).or_default().1.push(v.into());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn resolve(self, known: &[&str]) -> Result<Vec<(String, Vec<String>)>, ApiError> {
        let mut out = Vec::new();
        for (n, (name, values)) in self.0 {
            let name = name.ok_or_else(|| missing(&format!("Filter.{n}.Name")))?;
            if !(known.contains(&name.as_str()) || name.starts_with("tag:")) {
                return Err(bad_value(format!("The filter '{name}' is invalid")));
            }
            out.push((name, values));
        }
        Ok(out)
    }
}

/// What DescribeSnapshots and DescribeImages are asked for: ids (`<id_key>.N`), `Owner.N` and filters.
struct DescribeQuery {
    ids: Vec<String>,
    owners: Vec<String>,
    filters: Vec<(String, Vec<String>)>,
}

impl DescribeQuery {
    /// `known_filters` are the filter names the action answers besides `tag:*`.
    fn parse(
        params: &[(String, String)],
        id_key: &str,
        known_filters: &[&str],
    ) -> Result<Self, ApiError> {
        let mut ids = Vec::new();
        let mut owners = Vec::new();
        let mut filters = Filters::default();
        for (k, v) in params {
            let parts: Vec<&str> = k.split('.').collect();
            match parts.as_slice() {
                ["Action"] | ["Version"] | ["MaxResults"] | ["NextToken"] => {}
                [key, n] if *key == id_key => {
                    index(k, n)?;
                    ids.push(v.clone());
                }
                ["Owner", n] => {
                    index(k, n)?;
                    owners.push(v.clone());
                }
                p if filters.take(k, p, v)? => {}
                _ => return Err(unknown(k)),
            }
        }
        let filters = filters.resolve(known_filters)?;
        Ok(Self {
            ids,
            owners,
            filters,
        })
    }

    /// Whether a record passes the id and owner lists (an empty list passes all; owner `self` is the caller's).
    fn admits(&self, id: &str, owner_id: &str) -> bool {
        (self.ids.is_empty() || self.ids.iter().any(|i| i == id))
            && (self.owners.is_empty() || self.owners.iter().any(|o| o == "self" || o == owner_id))
    }
}

/// EC2 filter values may use `*` and `?` wildcards.
fn wildcard_match(pattern: &str, value: &str) -> bool {
    fn go(p: &[char], v: &[char]) -> bool {
        match (p.first(), v.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], v) || (!v.is_empty() && go(p, &v[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &v[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &v[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    go(&p, &v)
}

fn filters_match(
    filters: &[(String, Vec<String>)],
    value_of: impl Fn(&str) -> Option<String>,
) -> bool {
    filters.iter().all(|(name, values)| {
        value_of(name).is_some_and(|v| values.iter().any(|p| wildcard_match(p, &v)))
    })
}

fn tag_set(tags: &BTreeMap<String, String>) -> String {
    let mut x = String::new();
    for (k, v) in tags {
        let _ = write!(
            x,
            "<item><key>{}</key><value>{}</value></item>",
            escape(k),
            escape(v)
        );
    }
    x
}

/// What a caller needs to answer an EC2 action: the region it was signed for and its account.
pub(crate) struct Caller<'a> {
    pub region: &'a str,
    pub account_id: &'a str,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for s in inner.snapshots.values_mut() {
            s.settle(now);
        }
        inner
    }

    /// Arrange for the next `n` calls of `action` to fail with `status` and `code`.
    pub(crate) fn fail_action(&self, action: &str, n: u32, status: u16, code: &str) {
        let mut inner = self.lock();
        inner.failures.retain(|f| f.action != action);
        if n > 0 {
            inner.failures.push(Failure {
                action: action.into(),
                remaining: n,
                status,
                code: code.into(),
            });
        }
    }

    /// Consume one injected failure of `action`, if any is pending.
    pub(crate) fn injected_failure(&self, action: &str) -> Option<ApiError> {
        let mut inner = self.lock();
        let f = inner
            .failures
            .iter_mut()
            .find(|f| f.action == action && f.remaining > 0)?;
        f.remaining -= 1;
        Some(api_err(
            f.status,
            &f.code,
            format!("{action} failed (injected by the test)"),
        ))
    }

    pub(crate) fn images(&self) -> Vec<ImageRecord> {
        self.lock().images.values().cloned().collect()
    }

    pub(crate) fn snapshots(&self) -> Vec<SnapshotRecord> {
        self.lock().snapshots.values().cloned().collect()
    }

    pub(crate) fn snapshot(&self, id: &str) -> Option<SnapshotRecord> {
        self.lock().snapshots.get(id).cloned()
    }

    /// The EC2 actions of this module; `None` when `action` is not one of them.
    pub(crate) fn handle(
        &self,
        caller: &Caller<'_>,
        action: &str,
        params: &[(String, String)],
    ) -> Option<Result<String, ApiError>> {
        let result = match action {
            "DescribeSnapshots" => self.describe_snapshots(caller, params),
            "DeleteSnapshot" => self.delete_snapshot(caller, params),
            "RegisterImage" => self.register_image(caller, params),
            "DescribeImages" => self.describe_images(caller, params),
            "CreateTags" => self.create_tags(caller, params),
            "CopyImage" => self.copy_image(caller, params),
            "DeregisterImage" => self.deregister_image(caller, params),
            _ => return None,
        };
        Some(result)
    }

    fn describe_snapshots(
        &self,
        caller: &Caller<'_>,
        params: &[(String, String)],
    ) -> Result<String, ApiError> {
        let query = DescribeQuery::parse(
            params,
            "SnapshotId",
            &["snapshot-id", "status", "owner-id", "description"],
        )?;
        let inner = self.lock();
        for id in &query.ids {
            if inner.snapshot_in(id, caller.region).is_none() {
                return Err(api_err(
                    400,
                    "InvalidSnapshot.NotFound",
                    format!("The snapshot '{id}' does not exist."),
                ));
            }
        }
        let mut x = String::new();
        let _ = write!(
            x,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeSnapshotsResponse xmlns=\"{XMLNS}\">\n    <requestId>{}</requestId>\n    <snapshotSet>",
            request_id()
        );
        for s in inner.snapshots.values() {
            if s.region != caller.region || !query.admits(&s.id, &s.owner_id) {
                continue;
            }
            let ok = filters_match(&query.filters, |name| match name {
                "snapshot-id" => Some(s.id.clone()),
                "status" => Some(s.status.clone()),
                "owner-id" => Some(s.owner_id.clone()),
                "description" => Some(s.description.clone()),
                other => other
                    .strip_prefix("tag:")
                    .and_then(|k| s.tags.get(k).cloned()),
            });
            if !ok {
                continue;
            }
            let progress = if s.status == "completed" { "100%" } else { "" };
            let _ = write!(
                x,
                "\n        <item><snapshotId>{}</snapshotId><volumeId>vol-ffffffff</volumeId><status>{}</status><startTime>{}</startTime><progress>{progress}</progress><ownerId>{}</ownerId><volumeSize>{}</volumeSize><description>{}</description><encrypted>false</encrypted><storageTier>standard</storageTier>",
                escape(&s.id),
                escape(&s.status),
                rfc3339_millis(s.start_time),
                escape(&s.owner_id),
                s.volume_size_gib,
                escape(&s.description),
            );
            if !s.tags.is_empty() {
                let _ = write!(x, "<tagSet>{}</tagSet>", tag_set(&s.tags));
            }
            x.push_str("</item>");
        }
        x.push_str("\n    </snapshotSet>\n</DescribeSnapshotsResponse>");
        Ok(x)
    }

    fn delete_snapshot(
        &self,
        caller: &Caller<'_>,
        params: &[(String, String)],
    ) -> Result<String, ApiError> {
        let mut id = None;
        for (k, v) in params {
            match k.as_str() {
                "Action" | "Version" => {}
                "SnapshotId" => id = Some(v.clone()),
                _ => return Err(unknown(k)),
            }
        }
        let id = id.ok_or_else(|| missing("SnapshotId"))?;
        let mut inner = self.lock();
        if inner.snapshot_in(&id, caller.region).is_none() {
            return Err(api_err(
                400,
                "InvalidSnapshot.NotFound",
                format!("The snapshot '{id}' does not exist."),
            ));
        }
        if let Some(image) = inner.images.values().find(|i| {
            i.block_devices
                .iter()
                .any(|b| b.snapshot_id.as_deref() == Some(id.as_str()))
        }) {
            return Err(api_err(
                400,
                "InvalidSnapshot.InUse",
                format!("The snapshot {id} is currently in use by {}", image.id),
            ));
        }
        inner.snapshots.remove(&id);
        Ok(return_true("DeleteSnapshotResponse"))
    }

    fn register_image(
        &self,
        caller: &Caller<'_>,
        params: &[(String, String)],
    ) -> Result<String, ApiError> {
        let mut image = ImageRecord {
            region: caller.region.into(),
            owner_id: caller.account_id.into(),
            state: "available".into(),
            creation_date: rfc3339_millis(SystemTime::now()),
            ..ImageRecord::default()
        };
        let mut name = None;
        let mut devices: BTreeMap<u32, BlockDeviceRecord> = BTreeMap::new();
        let mut tag_specs: TagSpecs = BTreeMap::new();
        for (k, v) in params {
            let parts: Vec<&str> = k.split('.').collect();
            match parts.as_slice() {
                ["Action"] | ["Version"] => {}
                ["Name"] => name = Some(v.clone()),
                ["Description"] => image.description = Some(v.clone()),
                ["Architecture"] => {
                    if !["i386", "x86_64", "arm64", "x86_64_mac", "arm64_mac"].contains(&v.as_str())
                    {
                        return Err(bad_value(format!("Invalid architecture: {v}")));
                    }
                    image.architecture = Some(v.clone());
                }
                ["VirtualizationType"] => {
                    if v != "hvm" && v != "paravirtual" {
                        return Err(bad_value(format!("Invalid virtualization type: {v}")));
                    }
                    image.virtualization_type = Some(v.clone());
                }
                ["RootDeviceName"] => image.root_device_name = Some(v.clone()),
                ["EnaSupport"] => image.ena_support = Some(parse_bool(k, v)?),
                ["SriovNetSupport"] => {
                    if v != "simple" {
                        return Err(bad_value(format!(
                            "Value ({v}) for parameter sriovNetSupport is invalid. Only 'simple' is supported."
                        )));
                    }
                    image.sriov_net_support = Some(v.clone());
                }
                ["ImdsSupport"] => {
                    if v != "v2.0" {
                        return Err(bad_value(format!(
                            "Value ({v}) for parameter imdsSupport is invalid. Only 'v2.0' is supported."
                        )));
                    }
                    image.imds_support = Some(v.clone());
                }
                ["BootMode"] => {
                    if !["legacy-bios", "uefi", "uefi-preferred"].contains(&v.as_str()) {
                        return Err(bad_value(format!(
                            "Value ({v}) for parameter bootMode is invalid."
                        )));
                    }
                    image.boot_mode = Some(v.clone());
                }
                ["BlockDeviceMapping", n, rest @ ..] => {
                    let d = devices.entry(index(k, n)?).or_default();
                    match rest {
                        ["DeviceName"] => d.device_name = v.clone(),
                        ["Ebs", "SnapshotId"] => d.snapshot_id = Some(v.clone()),
                        ["Ebs", "VolumeType"] => {
                            if !["standard", "io1", "io2", "gp2", "gp3", "sc1", "st1"]
                                .contains(&v.as_str())
                            {
                                return Err(bad_value(format!("Invalid volume type: {v}")));
                            }
                            d.volume_type = Some(v.clone());
                        }
                        ["Ebs", "VolumeSize"] => {
                            d.volume_size_gib =
                                Some(v.parse().map_err(|_| {
                                    bad_value(format!("Invalid value '{v}' for {k}"))
                                })?)
                        }
                        ["Ebs", "DeleteOnTermination"] => {
                            d.delete_on_termination = Some(parse_bool(k, v)?)
                        }
                        _ => return Err(unknown(k)),
                    }
                }
                ["TagSpecification", n, "ResourceType"] => {
                    tag_specs.entry(index(k, n)?).or_default().0 = Some(v.clone());
                }
                ["TagSpecification", n, "Tag", m, kv @ ("Key" | "Value")] => {
                    let t = tag_specs
                        .entry(index(k, n)?)
                        .or_default()
                        .1
                        .entry(index(k, m)?)
                        .or_default();
                    if *kv == "Key" {
                        t.0 = v.clone();
                    } else {
                        t.1 = v.clone();
                    }
                }
                _ => return Err(unknown(k)),
            }
        }
        let name = name.ok_or_else(|| missing("Name"))?;
        check_image_name(&name)?;
        image.name = name;
        let mut inner = self.lock();
        for (_, d) in devices {
            if d.device_name.is_empty() {
                return Err(missing("BlockDeviceMapping.N.DeviceName"));
            }
            if let Some(snap) = &d.snapshot_id {
                match inner.snapshots.get(snap) {
                    Some(s) if s.region == caller.region => {
                        if s.status != "completed" {
                            return Err(api_err(
                                400,
                                "IncorrectState",
                                format!("Snapshot {snap} is not in state completed"),
                            ));
                        }
                        if d.volume_size_gib.is_some_and(|g| g < s.volume_size_gib) {
                            return Err(bad_value(format!(
                                "Volume of size {}GB is smaller than snapshot '{snap}', expect size >= {}GB",
                                d.volume_size_gib.unwrap_or(0),
                                s.volume_size_gib
                            )));
                        }
                    }
                    _ => {
                        return Err(api_err(
                            400,
                            "InvalidSnapshot.NotFound",
                            format!("The snapshot '{snap}' does not exist."),
                        ))
                    }
                }
            }
            image.block_devices.push(d);
        }
        if let Some(root) = &image.root_device_name {
            if !image.block_devices.iter().any(|d| &d.device_name == root) {
                return Err(bad_value(format!(
                    "The root device name {root} has no block device mapping"
                )));
            }
        }
        if inner.images.values().any(|i| {
            i.region == caller.region && i.owner_id == caller.account_id && i.name == image.name
        }) {
            return Err(api_err(
                400,
                "InvalidAMIName.Duplicate",
                format!("AMI name {} is already in use by an AMI", image.name),
            ));
        }
        for (_, (kind, tags)) in tag_specs {
            if kind.as_deref() == Some("image") {
                for (_, (k, v)) in tags {
                    image.tags.insert(k, v);
                }
            }
        }
        image.id = random_id("ami");
        let id = image.id.clone();
        inner.images.insert(id.clone(), image);
        Ok(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<RegisterImageResponse xmlns=\"{XMLNS}\">\n    <requestId>{}</requestId>\n    <imageId>{id}</imageId>\n</RegisterImageResponse>",
            request_id()
        ))
    }

    fn describe_images(
        &self,
        caller: &Caller<'_>,
        params: &[(String, String)],
    ) -> Result<String, ApiError> {
        let query = DescribeQuery::parse(
            params,
            "ImageId",
            &["name", "image-id", "state", "owner-id"],
        )?;
        let inner = self.lock();
        for id in &query.ids {
            if inner.image_in(id, caller.region).is_none() {
                return Err(api_err(
                    400,
                    "InvalidAMIID.NotFound",
                    format!("The image id '[{id}]' does not exist"),
                ));
            }
        }
        let mut x = String::new();
        let _ = write!(
            x,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeImagesResponse xmlns=\"{XMLNS}\">\n    <requestId>{}</requestId>\n    <imagesSet>",
            request_id()
        );
        for i in inner.images.values() {
            if i.region != caller.region || !query.admits(&i.id, &i.owner_id) {
                continue;
            }
            let ok = filters_match(&query.filters, |name| match name {
                "name" => Some(i.name.clone()),
                "image-id" => Some(i.id.clone()),
                "state" => Some(i.state.clone()),
                "owner-id" => Some(i.owner_id.clone()),
                other => other
                    .strip_prefix("tag:")
                    .and_then(|k| i.tags.get(k).cloned()),
            });
            if ok {
                write_image(&mut x, i);
            }
        }
        x.push_str("\n    </imagesSet>\n</DescribeImagesResponse>");
        Ok(x)
    }

    fn create_tags(
        &self,
        caller: &Caller<'_>,
        params: &[(String, String)],
    ) -> Result<String, ApiError> {
        let mut resources = Vec::new();
        let mut tags: BTreeMap<u32, (Option<String>, Option<String>)> = BTreeMap::new();
        for (k, v) in params {
            let parts: Vec<&str> = k.split('.').collect();
            match parts.as_slice() {
                ["Action"] | ["Version"] => {}
                ["ResourceId", n] => {
                    index(k, n)?;
                    resources.push(v.clone());
                }
                ["Tag", n, "Key"] => tags.entry(index(k, n)?).or_default().0 = Some(v.clone()),
                ["Tag", n, "Value"] => tags.entry(index(k, n)?).or_default().1 = Some(v.clone()),
                _ => return Err(unknown(k)),
            }
        }
        if resources.is_empty() {
            return Err(missing("ResourceId.1"));
        }
        let mut pairs = Vec::new();
        for (n, (k, v)) in tags {
            let k = k.ok_or_else(|| missing(&format!("Tag.{n}.Key")))?;
            if k.is_empty() || k.chars().count() > 128 || k.starts_with("aws:") {
                return Err(bad_value(format!(
                    "Tag key '{k}' must be 1 to 128 characters and not start with aws:"
                )));
            }
            let v = v.unwrap_or_default();
            if v.chars().count() > 256 {
                return Err(bad_value(format!(
                    "Tag value of '{k}' exceeds 256 characters"
                )));
            }
            pairs.push((k, v));
        }
        let mut inner = self.lock();
        for r in &resources {
            let known = if r.starts_with("ami-") {
                inner
                    .images
                    .get(r)
                    .is_some_and(|i| i.region == caller.region)
            } else if r.starts_with("snap-") {
                inner
                    .snapshots
                    .get(r)
                    .is_some_and(|s| s.region == caller.region)
            } else {
                false
            };
            if !known {
                let code = if r.starts_with("ami-") {
                    "InvalidAMIID.NotFound"
                } else if r.starts_with("snap-") {
                    "InvalidSnapshot.NotFound"
                } else {
                    "InvalidID"
                };
                return Err(api_err(
                    400,
                    code,
                    format!("The ID '{r}' is not valid for tagging here"),
                ));
            }
        }
        for r in &resources {
            let target = if let Some(i) = inner.images.get_mut(r) {
                &mut i.tags
            } else if let Some(s) = inner.snapshots.get_mut(r) {
                &mut s.tags
            } else {
                continue;
            };
            for (k, v) in &pairs {
                target.insert(k.clone(), v.clone());
            }
            if target.len() > 50 {
                return Err(api_err(
                    400,
                    "TagLimitExceeded",
                    format!("The maximum number of tags (50) for resource {r} was exceeded"),
                ));
            }
        }
        Ok(return_true("CreateTagsResponse"))
    }

    fn copy_image(
        &self,
        caller: &Caller<'_>,
        params: &[(String, String)],
    ) -> Result<String, ApiError> {
        let (mut source_id, mut source_region, mut name, mut description) =
            (None, None, None, None);
        for (k, v) in params {
            match k.as_str() {
                "Action" | "Version" | "ClientToken" => {}
                "SourceImageId" => source_id = Some(v.clone()),
                "SourceRegion" => source_region = Some(v.clone()),
                "Name" => name = Some(v.clone()),
                "Description" => description = Some(v.clone()),
                _ => return Err(unknown(k)),
            }
        }
        let source_id = source_id.ok_or_else(|| missing("SourceImageId"))?;
        let source_region = source_region.ok_or_else(|| missing("SourceRegion"))?;
        let name = name.ok_or_else(|| missing("Name"))?;
        check_image_name(&name)?;
        let mut inner = self.lock();
        let source = inner
            .images
            .get(&source_id)
            .filter(|i| i.region == source_region)
            .cloned()
            .ok_or_else(|| {
                api_err(
                    400,
                    "InvalidAMIID.NotFound",
                    format!("The image id '[{source_id}]' does not exist in {source_region}"),
                )
            })?;
        if inner
            .images
            .values()
            .any(|i| i.region == caller.region && i.name == name)
        {
            return Err(api_err(
                400,
                "InvalidAMIName.Duplicate",
                format!("AMI name {name} is already in use by an AMI"),
            ));
        }
        let mut copy = source.clone();
        copy.id = random_id("ami");
        copy.region = caller.region.into();
        copy.owner_id = caller.account_id.into();
        copy.name = name;
        copy.description = description.or(source.description.clone());
        copy.tags.clear();
        copy.source_image_id = Some(source.id.clone());
        copy.source_region = Some(source_region);
        copy.creation_date = rfc3339_millis(SystemTime::now());
        for d in &mut copy.block_devices {
            let Some(snap) = d.snapshot_id.clone() else {
                continue;
            };
            let Some(s) = inner.snapshots.get(&snap).cloned() else {
                continue;
            };
            let mut s2 = s;
            s2.id = random_id("snap");
            s2.region = caller.region.into();
            s2.tags.clear();
            s2.description = format!(
                "Copied for DestinationAmi {} from SourceAmi {}",
                copy.id, source.id
            );
            d.snapshot_id = Some(s2.id.clone());
            inner.snapshots.insert(s2.id.clone(), s2);
        }
        let id = copy.id.clone();
        inner.images.insert(id.clone(), copy);
        Ok(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CopyImageResponse xmlns=\"{XMLNS}\">\n    <requestId>{}</requestId>\n    <imageId>{id}</imageId>\n</CopyImageResponse>",
            request_id()
        ))
    }

    fn deregister_image(
        &self,
        caller: &Caller<'_>,
        params: &[(String, String)],
    ) -> Result<String, ApiError> {
        let mut id = None;
        for (k, v) in params {
            match k.as_str() {
                "Action" | "Version" => {}
                "ImageId" => id = Some(v.clone()),
                _ => return Err(unknown(k)),
            }
        }
        let id = id.ok_or_else(|| missing("ImageId"))?;
        let mut inner = self.lock();
        if inner.image_in(&id, caller.region).is_none() {
            return Err(api_err(
                400,
                "InvalidAMIID.NotFound",
                format!("The image id '[{id}]' does not exist"),
            ));
        }
        inner.images.remove(&id);
        Ok(return_true("DeregisterImageResponse"))
    }

    // --- for the EBS direct APIs (crate::ebs) ---

    pub(crate) fn start_snapshot(
        &self,
        caller: &Caller<'_>,
        volume_size_gib: u64,
        description: String,
        tags: BTreeMap<String, String>,
        client_token: Option<String>,
    ) -> SnapshotRecord {
        let mut inner = self.lock();
        if let Some(token) = &client_token {
            if let Some(existing) = inner.snapshots.values().find(|s| {
                s.region == caller.region && s.client_token.as_deref() == Some(token.as_str())
            }) {
                return existing.clone();
            }
        }
        let s = SnapshotRecord {
            id: random_id("snap"),
            region: caller.region.into(),
            owner_id: caller.account_id.into(),
            status: "pending".into(),
            volume_size_gib,
            description,
            tags,
            start_time: SystemTime::now(),
            client_token,
            blocks: BTreeMap::new(),
            changed_blocks_count: None,
            settles_at: None,
        };
        inner.snapshots.insert(s.id.clone(), s.clone());
        s
    }

    /// Run `f` on the snapshot `id` of the caller's region.
    pub(crate) fn with_snapshot<R>(
        &self,
        caller: &Caller<'_>,
        id: &str,
        f: impl FnOnce(&mut SnapshotRecord) -> R,
    ) -> Option<R> {
        let mut inner = self.lock();
        inner
            .snapshots
            .get_mut(id)
            .filter(|s| s.region == caller.region)
            .map(f)
    }

    pub(crate) fn begin_settling(s: &mut SnapshotRecord, changed: u64) {
        s.changed_blocks_count = Some(changed);
        s.settles_at = Some(Instant::now() + SNAPSHOT_SETTLE);
    }
}

fn check_image_name(name: &str) -> Result<(), ApiError> {
    // EC2's rule: 3 to 128 characters from letters, digits, ( ) [ ] space . / - ' @ _
    let ok = (3..=128).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(bad_value(format!(
            "AMI names must be between 3 and 128 characters long, and may contain letters, numbers, '(', ')', '.', '-', '/' and '_': `{name}`"
        )))
    }
}

fn return_true(response: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{response} xmlns=\"{XMLNS}\">\n    <requestId>{}</requestId>\n    <return>true</return>\n</{response}>",
        request_id()
    )
}

fn write_image(x: &mut String, i: &ImageRecord) {
    let e = escape;
    let _ = write!(
        x,
        "\n        <item><imageId>{}</imageId><imageLocation>{}/{}</imageLocation><imageState>{}</imageState><imageOwnerId>{}</imageOwnerId><creationDate>{}</creationDate><isPublic>false</isPublic>",
        e(&i.id),
        e(&i.owner_id),
        e(&i.name),
        e(&i.state),
        e(&i.owner_id),
        e(&i.creation_date)
    );
    if let Some(a) = &i.architecture {
        let _ = write!(x, "<architecture>{}</architecture>", e(a));
    }
    let _ = write!(
        x,
        "<imageType>machine</imageType><name>{}</name>",
        e(&i.name)
    );
    if let Some(d) = &i.description {
        let _ = write!(x, "<description>{}</description>", e(d));
    }
    x.push_str("<rootDeviceType>ebs</rootDeviceType>");
    if let Some(r) = &i.root_device_name {
        let _ = write!(x, "<rootDeviceName>{}</rootDeviceName>", e(r));
    }
    x.push_str("<blockDeviceMapping>");
    for d in &i.block_devices {
        let _ = write!(
            x,
            "<item><deviceName>{}</deviceName><ebs>",
            e(&d.device_name)
        );
        if let Some(s) = &d.snapshot_id {
            let _ = write!(x, "<snapshotId>{}</snapshotId>", e(s));
        }
        if let Some(v) = d.volume_size_gib {
            let _ = write!(x, "<volumeSize>{v}</volumeSize>");
        }
        if let Some(v) = d.delete_on_termination {
            let _ = write!(x, "<deleteOnTermination>{v}</deleteOnTermination>");
        }
        if let Some(v) = &d.volume_type {
            let _ = write!(x, "<volumeType>{}</volumeType>", e(v));
        }
        x.push_str("<encrypted>false</encrypted></ebs></item>");
    }
    x.push_str("</blockDeviceMapping>");
    if let Some(v) = &i.virtualization_type {
        let _ = write!(x, "<virtualizationType>{}</virtualizationType>", e(v));
    }
    if !i.tags.is_empty() {
        let _ = write!(x, "<tagSet>{}</tagSet>", tag_set(&i.tags));
    }
    x.push_str("<hypervisor>xen</hypervisor>");
    if let Some(v) = i.ena_support {
        let _ = write!(x, "<enaSupport>{v}</enaSupport>");
    }
    if let Some(v) = &i.sriov_net_support {
        let _ = write!(x, "<sriovNetSupport>{}</sriovNetSupport>", e(v));
    }
    if let Some(v) = &i.boot_mode {
        let _ = write!(x, "<bootMode>{}</bootMode>", e(v));
    }
    if let Some(v) = &i.imds_support {
        let _ = write!(x, "<imdsSupport>{}</imdsSupport>", e(v));
    }
    x.push_str("</item>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("berth-*", "berth-2024"));
        assert!(wildcard_match("b?rth", "berth"));
        assert!(!wildcard_match("berth", "berth-1"));
        assert!(wildcard_match("*", ""));
    }

    #[test]
    fn image_names() {
        assert!(check_image_name("berth (test) 1.0/x_y-z").is_ok());
        assert!(check_image_name("ab").is_err());
        assert!(check_image_name("bad\"name").is_err());
    }
}
