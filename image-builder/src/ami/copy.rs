//! CopyImage to the further regions of `--regions`.

use std::collections::BTreeMap;

use berth_ec2::Ec2Client;

use crate::aws_creds::Provider;
use crate::images;

use super::{control_policy, AmiError, AmiRequest};

/// Copies `image_id` from the request's region to each of `req.copy_regions`, skipping a
/// region that has an image of that name already (a rerun resumes the copies). Returns
/// region → image id. CopyImage returns at once; the copy completes in the background.
pub(crate) async fn to_regions(
    req: &AmiRequest,
    creds: &Provider,
    image_id: &str,
) -> Result<BTreeMap<String, String>, AmiError> {
    let mut copies = BTreeMap::new();
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
                    image_id,
                    &req.name,
                    &req.description,
                )
                .await?;
                images::create_tags(&dest, &c, &[&id], &req.tags).await?;
                log::info!("{region}: copying {image_id} as {id}");
                id
            }
        };
        copies.insert(region.clone(), id);
    }
    Ok(copies)
}
