//! The EC2 side of an AMI: DescribeImages (by name, owned by this account), DescribeSnapshots,
//! RegisterImage, CreateTags, CopyImage and DeleteSnapshot, as signed Query API calls through
//! berth-ec2's [`Ec2Client::call`], with their XML answers parsed here.
//!
//! Not for: uploading the snapshot's blocks (that is [`crate::ebs`]) or deciding what to do
//! (that is [`crate::ami`]).

use crate::kind::{Classified, Kind};
use berth_ec2::{Credentials, Ec2Client, Ec2Error};

/// Why an answer could not be read, naming the action and what was missing.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error("EC2 {action}: cannot parse the response: {what}")]
    Parse { action: &'static str, what: String },
}

impl Classified for ImagesError {
    fn kind(&self) -> Kind {
        match self {
            ImagesError::Ec2(_) | ImagesError::Parse { .. } => Kind::Failed,
        }
    }
}

/// The AMI settings berth registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    pub description: String,
    pub snapshot_id: String,
    pub volume_size_gib: u64,
    /// `uefi`, `legacy-bios` or `uefi-preferred`.
    pub boot_mode: String,
}

/// The device the root volume is attached as (the name Amazon Linux and Fedora AMIs use).
pub(crate) const ROOT_DEVICE: &str = "/dev/xvda";

impl Registration {
    /// The RegisterImage parameters: HVM, x86_64, one gp3 root volume from the snapshot
    /// (deleted with the instance), ENA, SR-IOV `simple`, IMDSv2 only, the boot mode.
    pub fn params(&self) -> Vec<(String, String)> {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        let mut out = vec![
            p("Name", &self.name),
            p("Architecture", "x86_64"),
            p("VirtualizationType", "hvm"),
            p("RootDeviceName", ROOT_DEVICE),
            p("BlockDeviceMapping.1.DeviceName", ROOT_DEVICE),
            p("BlockDeviceMapping.1.Ebs.SnapshotId", &self.snapshot_id),
            p(
                "BlockDeviceMapping.1.Ebs.VolumeSize",
                &self.volume_size_gib.to_string(),
            ),
            p("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
            p("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
            p("EnaSupport", "true"),
            p("SriovNetSupport", "simple"),
            p("ImdsSupport", "v2.0"),
            p("BootMode", &self.boot_mode),
        ];
        if !self.description.is_empty() {
            out.insert(1, p("Description", &self.description));
        }
        out
    }
}

/// An image as DescribeImages shows it (the fields berth reads back).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Image {
    pub image_id: String,
    pub name: String,
    pub state: String,
    /// The snapshot of the root device mapping, when listed.
    pub root_snapshot_id: Option<String>,
}

/// A minimal XML tree: enough for EC2's responses, which have no mixed content.
#[derive(Debug, Default, Clone)]
struct Node {
    name: String,
    text: String,
    children: Vec<Node>,
}

impl Node {
    fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// The `<item>`s of the child `set`.
    fn items(&self, set: &str) -> impl Iterator<Item = &Node> {
        self.child(set)
            .into_iter()
            .flat_map(|s| s.children.iter().filter(|c| c.name == "item"))
    }
}

fn parse_xml(action: &'static str, xml: &str) -> Result<Node, ImagesError> {
    use quick_xml::events::Event;
    let bad = |what: String| ImagesError::Parse { action, what };
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<Node> = vec![Node::default()];
    loop {
        match reader.read_event().map_err(|e| bad(e.to_string()))? {
            Event::Start(e) => stack.push(Node {
                name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                ..Node::default()
            }),
            Event::Empty(e) => {
                let node = Node {
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ..Node::default()
                };
                stack
                    .last_mut()
                    .ok_or_else(|| bad("unbalanced".into()))?
                    .children
                    .push(node);
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| bad(e.to_string()))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(text.trim());
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::End(_) => {
                let node = stack.pop().ok_or_else(|| bad("unbalanced".into()))?;
                stack
                    .last_mut()
                    .ok_or_else(|| bad("unbalanced".into()))?
                    .children
                    .push(node);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut root = stack.pop().ok_or_else(|| bad("empty".into()))?;
    if !stack.is_empty() {
        return Err(bad("unclosed elements".into()));
    }
    root.children
        .pop()
        .ok_or_else(|| bad("no document element".into()))
}

fn parse_images(xml: &str) -> Result<Vec<Image>, ImagesError> {
    let action = "DescribeImages";
    let doc = parse_xml(action, xml)?;
    let mut out = Vec::new();
    for item in doc.items("imagesSet") {
        let id = item.text_of("imageId").unwrap_or_default();
        if id.is_empty() {
            return Err(ImagesError::Parse {
                action,
                what: "an image without imageId".into(),
            });
        }
        let root = item.text_of("rootDeviceName").unwrap_or(ROOT_DEVICE);
        let root_snapshot_id = item
            .items("blockDeviceMapping")
            .find(|m| m.text_of("deviceName") == Some(root))
            .and_then(|m| m.child("ebs"))
            .and_then(|e| e.text_of("snapshotId"))
            .map(str::to_string);
        out.push(Image {
            image_id: id.to_string(),
            name: item.text_of("name").unwrap_or_default().to_string(),
            state: item.text_of("imageState").unwrap_or_default().to_string(),
            root_snapshot_id,
        });
    }
    Ok(out)
}

fn image_id_of(action: &'static str, xml: &str) -> Result<String, ImagesError> {
    let doc = parse_xml(action, xml)?;
    match doc.text_of("imageId") {
        Some(id) if id.starts_with("ami-") => Ok(id.to_string()),
        other => Err(ImagesError::Parse {
            action,
            what: format!("imageId is {other:?}"),
        }),
    }
}

/// The images of this account named `name` (EC2 allows one per region and account).
pub(crate) async fn images_named(
    ec2: &Ec2Client,
    creds: &Credentials,
    name: &str,
) -> Result<Vec<Image>, ImagesError> {
    let params = vec![
        ("Owner.1".to_string(), "self".to_string()),
        ("Filter.1.Name".to_string(), "name".to_string()),
        ("Filter.1.Value.1".to_string(), name.to_string()),
    ];
    let xml = ec2.call(creds, "DescribeImages", &params).await?;
    // The filter takes wildcards: keep exact matches only.
    Ok(parse_images(&xml)?
        .into_iter()
        .filter(|i| i.name == name)
        .collect())
}

/// A snapshot's `status` (`pending`, `completed`, `error`) and `progress`.
pub(crate) async fn snapshot_status(
    ec2: &Ec2Client,
    creds: &Credentials,
    snapshot_id: &str,
) -> Result<(String, String), ImagesError> {
    let action = "DescribeSnapshots";
    let params = vec![("SnapshotId.1".to_string(), snapshot_id.to_string())];
    let xml = ec2.call(creds, action, &params).await?;
    let doc = parse_xml(action, &xml)?;
    let item = doc
        .items("snapshotSet")
        .find(|i| i.text_of("snapshotId") == Some(snapshot_id))
        .ok_or_else(|| ImagesError::Parse {
            action,
            what: format!("{snapshot_id} is not in the answer"),
        })?;
    Ok((
        item.text_of("status").unwrap_or_default().to_string(),
        item.text_of("progress").unwrap_or_default().to_string(),
    ))
}

pub(crate) async fn register_image(
    ec2: &Ec2Client,
    creds: &Credentials,
    reg: &Registration,
) -> Result<String, ImagesError> {
    let xml = ec2.call(creds, "RegisterImage", &reg.params()).await?;
    image_id_of("RegisterImage", &xml)
}

pub(crate) async fn create_tags(
    ec2: &Ec2Client,
    creds: &Credentials,
    resources: &[&str],
    tags: &[(String, String)],
) -> Result<(), ImagesError> {
    if tags.is_empty() {
        return Ok(());
    }
    let mut params = Vec::new();
    for (n, r) in resources.iter().enumerate() {
        params.push((format!("ResourceId.{}", n + 1), r.to_string()));
    }
    for (n, (k, v)) in tags.iter().enumerate() {
        params.push((format!("Tag.{}.Key", n + 1), k.clone()));
        params.push((format!("Tag.{}.Value", n + 1), v.clone()));
    }
    ec2.call(creds, "CreateTags", &params).await?;
    Ok(())
}

/// CopyImage, called in the destination region's client.
pub(crate) async fn copy_image(
    dest: &Ec2Client,
    creds: &Credentials,
    source_region: &str,
    source_image_id: &str,
    name: &str,
    description: &str,
) -> Result<String, ImagesError> {
    let mut params = vec![
        ("SourceRegion".to_string(), source_region.to_string()),
        ("SourceImageId".to_string(), source_image_id.to_string()),
        ("Name".to_string(), name.to_string()),
    ];
    if !description.is_empty() {
        params.push(("Description".to_string(), description.to_string()));
    }
    let xml = dest.call(creds, "CopyImage", &params).await?;
    image_id_of("CopyImage", &xml)
}

pub(crate) async fn delete_snapshot(
    ec2: &Ec2Client,
    creds: &Credentials,
    snapshot_id: &str,
) -> Result<(), ImagesError> {
    let params = vec![("SnapshotId".to_string(), snapshot_id.to_string())];
    ec2.call(creds, "DeleteSnapshot", &params).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_describe_images() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>r</requestId>
  <imagesSet>
    <item><imageId>ami-0abc</imageId><imageState>available</imageState><name>berth &amp; co</name>
      <rootDeviceName>/dev/xvda</rootDeviceName>
      <blockDeviceMapping><item><deviceName>/dev/xvdb</deviceName><ebs><snapshotId>snap-other</snapshotId></ebs></item>
        <item><deviceName>/dev/xvda</deviceName><ebs><snapshotId>snap-root</snapshotId><volumeSize>8</volumeSize></ebs></item></blockDeviceMapping>
      <tagSet/>
    </item>
    <item><imageId>ami-0def</imageId><imageState>pending</imageState><name>x</name><blockDeviceMapping/></item>
  </imagesSet>
</DescribeImagesResponse>"#;
        let images = parse_images(xml).unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].name, "berth & co");
        assert_eq!(images[0].root_snapshot_id.as_deref(), Some("snap-root"));
        assert_eq!(images[1].state, "pending");
        assert_eq!(images[1].root_snapshot_id, None);
    }

    #[test]
    fn registration_has_every_attribute() {
        let reg = Registration {
            name: "berth-1".into(),
            description: "d".into(),
            snapshot_id: "snap-1".into(),
            volume_size_gib: 8,
            boot_mode: "uefi".into(),
        };
        let p = reg.params();
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("BlockDeviceMapping.1.Ebs.VolumeType"), Some("gp3"));
        assert_eq!(get("ImdsSupport"), Some("v2.0"));
        assert_eq!(get("SriovNetSupport"), Some("simple"));
        assert_eq!(get("EnaSupport"), Some("true"));
        assert_eq!(get("BootMode"), Some("uefi"));
        assert_eq!(get("RootDeviceName"), Some("/dev/xvda"));
        assert_eq!(get("Description"), Some("d"));
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_images("<a><b></a>").is_err());
        assert!(image_id_of("RegisterImage", "<R><imageId>x</imageId></R>").is_err());
    }
}
