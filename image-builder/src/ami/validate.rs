//! Checking an AMI request before any call: EC2's rules for names, regions and tags, the
//! endpoints, and whether the disk boots in the requested mode. Every error here is a refusal.

use std::collections::BTreeMap;

use berth_ec2::Ec2Client;
use url::Url;

use super::{AmiError, AmiRequest, BootMode, Disk};

/// Most parallel uploads accepted: each holds a 512 KiB block in memory.
const MAX_PARALLEL: usize = 256;

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
pub(crate) fn check_name(name: &str) -> Result<(), AmiError> {
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

pub(crate) fn check_region(field: &str, region: &str) -> Result<(), AmiError> {
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
    /// Refuses a request EC2 would refuse, before any call.
    pub fn validate(&self) -> Result<(), AmiError> {
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

    /// The EC2 endpoint of `region`.
    pub fn ec2_endpoint(&self, region: &str) -> Url {
        self.ec2_endpoints
            .get(region)
            .or(self.ec2_default.as_ref())
            .cloned()
            .unwrap_or_else(|| Ec2Client::default_endpoint(region))
    }
}

/// `--ec2-endpoint`: `URL` for every region, or `REGION=URL` for one (a `:` before the `=`
/// means the `=` is in the URL). Adds it to `per_region` or returns it as the default.
pub fn parse_ec2_endpoint(
    arg: &str,
    per_region: &mut BTreeMap<String, Url>,
) -> Result<Option<Url>, AmiError> {
    let invalid = |what: String| AmiError::Invalid {
        field: format!("--ec2-endpoint {arg}"),
        what,
    };
    let (region, url) = match arg.split_once('=') {
        Some((r, u)) if !r.contains(':') => (Some(r), u),
        _ => (None, arg),
    };
    let url = Url::parse(url).map_err(|err| invalid(err.to_string()))?;
    match region {
        Some(r) => {
            check_region("--ec2-endpoint", r)?;
            per_region.insert(r.to_string(), url);
            Ok(None)
        }
        None => Ok(Some(url)),
    }
}

/// `--regions`: trimmed, empty entries dropped, each region once, in the order given.
pub fn copy_regions<'a>(regions: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in regions.into_iter().map(str::trim).filter(|r| !r.is_empty()) {
        if !out.iter().any(|c| c == r) {
            out.push(r.to_string());
        }
    }
    out
}

/// Refuses a boot mode the disk cannot boot in: an AMI registered with it launches instances
/// that never come up, which EC2 reports only as an instance that fails its status checks.
/// Judged from the GPT; a disk without one (an MBR disk of the user's own) is not judged.
pub(crate) fn check_boot_mode(disk: &Disk, mode: BootMode) -> Result<(), AmiError> {
    use crate::disk::gpt;
    let mut file = disk.file();
    let parts = match gpt::read(&mut file) {
        Ok((_, parts)) => parts,
        Err(e) => {
            log::warn!(
                "{}: no GPT ({e}); not checking that it boots in {} mode",
                disk.path().display(),
                mode.as_ec2()
            );
            return Ok(());
        }
    };
    let has = |t: gpt::Guid| parts.iter().any(|p| p.type_guid == t);
    let refuse = |what: String| AmiError::Invalid {
        field: format!("--boot-mode {}", mode.as_ec2()),
        what: format!("{}: {what}", disk.path().display()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn endpoints_per_region() {
        let mut per_region = BTreeMap::new();
        let default = parse_ec2_endpoint("http://127.0.0.1:1/", &mut per_region).unwrap();
        assert!(
            parse_ec2_endpoint("us-west-2=http://127.0.0.1:2/", &mut per_region)
                .unwrap()
                .is_none()
        );
        assert!(parse_ec2_endpoint("US=http://x/", &mut per_region).is_err());
        assert!(parse_ec2_endpoint("not a url", &mut per_region).is_err());
        assert_eq!(
            copy_regions(["us-west-2", "us-west-2", " ", "eu-west-1 "]),
            ["us-west-2", "eu-west-1"]
        );
        let req = AmiRequest {
            disk: "d".into(),
            name: "berth-x".into(),
            description: String::new(),
            region: "us-east-1".into(),
            copy_regions: vec!["us-west-2".into()],
            boot_mode: BootMode::Uefi,
            tags: vec![],
            ec2_endpoints: per_region,
            ec2_default: default,
            ebs_endpoint: None,
            parallel: 4,
            progress: super::super::ProgressMode::Quiet,
        };
        req.validate().unwrap();
        assert_eq!(req.ec2_endpoint("us-east-1").port(), Some(1));
        assert_eq!(req.ec2_endpoint("us-west-2").port(), Some(2));
    }
}
