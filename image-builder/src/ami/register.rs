//! RegisterImage from the completed snapshot, and the user's tags on the image and its
//! snapshot.

use std::collections::BTreeMap;

use berth_ec2::Ec2Client;

use crate::aws_creds::Provider;
use crate::images::{self, ImagesError, Registration};

use super::{AmiError, AmiOutcome, AmiRequest, Disk, UploadStats};

/// Registers the image (see the module doc of `ami` for its settings). When another run
/// registered the name since berth looked, that image is reported (`existed`) and this run's
/// snapshot is deleted.
pub async fn register(
    ec2: &Ec2Client,
    creds: &Provider,
    req: &AmiRequest,
    disk: &Disk,
    snapshot_id: &str,
    stats: UploadStats,
) -> Result<AmiOutcome, AmiError> {
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

/// Tags the registered image and its snapshot with the user's tags. The image holds the
/// snapshot from here on, so a failure is reported ([`AmiError::Tagging`]) and deletes nothing.
pub async fn tag(
    ec2: &Ec2Client,
    creds: &Provider,
    req: &AmiRequest,
    image_id: &str,
    snapshot_id: &str,
) -> Result<(), AmiError> {
    let (c, _) = creds.get().await?;
    images::create_tags(ec2, &c, &[image_id, snapshot_id], &req.tags)
        .await
        .map_err(|e| AmiError::Tagging {
            image_id: image_id.to_string(),
            source: Box::new(e),
        })
}
