//! The command line of the `berth-image` binary: clap's types, and their conversion into the
//! library's requests. The library knows nothing of clap.

use std::collections::BTreeMap;
use std::path::PathBuf;

use berth_image::ami::{self, AmiError, AmiRequest, BootMode, ProgressMode};
use berth_image::disk::{self, Bootloader, Format};
use clap::{Parser, Subcommand, ValueEnum};
use url::Url;

#[derive(Parser)]
#[command(
    name = "berth-image",
    version,
    about = "Bake berth into OSTree commits"
)]
pub struct Cli {
    /// Log more (repeat for debug output).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub cmd: Cmd,
}

// Parsed once per run: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Cmd {
    /// Layer berth-agent, its units, profiles and config onto a base commit.
    Commit(CommitArgs),
    /// Deploy a commit into a bootable GPT disk image (ESP with systemd-boot, /boot, root).
    /// Prints a JSON summary: partitions, the boot entry.
    Disk(DiskArgs),
    /// Upload a raw disk as an EBS snapshot and register it as an AMI. Prints a JSON summary.
    Ami(AmiArgs),
    /// Package a disk made by `berth-image disk` as a Vagrant box (libvirt provider).
    VagrantBox {
        /// The disk image (raw or qcow2).
        #[arg(long)]
        disk: PathBuf,
        /// The box file to write, e.g. berth.box.
        #[arg(long)]
        out: PathBuf,
    },
    /// Show what berth layered on a commit, compared to its base.
    Inspect {
        /// The OSTree repository holding the commit.
        #[arg(long)]
        repo: PathBuf,
        /// Ref or commit checksum.
        rev: String,
    },
}

/// `berth-image commit`.
#[derive(clap::Args)]
pub struct CommitArgs {
    /// The OSTree repository (archive, bare or bare-user).
    #[arg(long)]
    pub repo: PathBuf,
    /// Base ref or commit checksum.
    #[arg(long)]
    pub base: String,
    /// The ref to point at the new commit.
    #[arg(long = "ref")]
    pub new_ref: String,
    /// The berth-agent binary (an executable ELF).
    #[arg(long, default_value = "/usr/bin/berth-agent")]
    pub agent: PathBuf,
    /// The agent's version, when `AGENT --version` cannot run here.
    #[arg(long)]
    pub agent_version: Option<String>,
    /// Directory of systemd units and .preset files (default: the ones
    /// built into berth-image).
    #[arg(long)]
    pub units: Option<PathBuf>,
    /// Directory of profiles, one subdirectory each (e.g. configs/profiles).
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    /// Default config, installed as /usr/etc/berth/config.yaml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Extra file SRC:DEST (repeatable); /etc/... lands in /usr/etc/...
    #[arg(long = "add-file", value_name = "SRC:DEST")]
    pub add_files: Vec<String>,
    /// The commit's `version` metadata (shown by rpm-ostree status).
    #[arg(long)]
    pub version: Option<String>,
    /// GPG key id to sign the commit with.
    #[arg(long)]
    pub gpg_sign: Option<String>,
    /// GnuPG home directory holding that key.
    #[arg(long, requires = "gpg_sign")]
    pub gpg_homedir: Option<PathBuf>,
}

/// `berth-image disk`.
#[derive(clap::Args)]
pub struct DiskArgs {
    /// The OSTree repository holding the commit.
    #[arg(long)]
    pub repo: PathBuf,
    /// Ref or commit checksum to deploy.
    #[arg(long = "ref")]
    pub rev: String,
    /// The disk image to write (replaced only once complete).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "raw")]
    pub format: FormatArg,
    /// Disk size (4G, 8GiB, 512M, bytes); default: what the tree needs plus 1 GiB.
    #[arg(long)]
    pub size: Option<String>,
    /// Extra kernel argument (repeatable), after root=UUID=... rw console=tty0
    /// console=ttyS0,115200n8.
    #[arg(long = "karg", value_name = "ARG")]
    pub kargs: Vec<String>,
    /// The OSTree stateroot (`ostree admin os-init` name).
    #[arg(long, default_value = disk::DEFAULT_OSNAME)]
    pub osname: String,
    #[arg(long, value_enum, default_value = "systemd-boot")]
    pub bootloader: BootloaderArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Raw,
    Qcow2,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Raw => Format::Raw,
            FormatArg::Qcow2 => Format::Qcow2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootloaderArg {
    /// systemd-boot from the commit (`/usr/lib/systemd/boot/efi/systemd-bootx64.efi`) on the
    /// ESP, booted by UEFI firmware.
    SystemdBoot,
    /// No bootloader: the disk boots with a kernel given from outside (QEMU `-kernel`, the
    /// entry's `linux`, `initrd` and `options`).
    None,
}

impl From<BootloaderArg> for Bootloader {
    fn from(b: BootloaderArg) -> Bootloader {
        match b {
            BootloaderArg::SystemdBoot => Bootloader::SystemdBoot,
            BootloaderArg::None => Bootloader::None,
        }
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
    /// The AMI's description (default: empty).
    #[arg(long)]
    pub description: Option<String>,
    /// The region to upload to and register in.
    #[arg(long)]
    pub region: String,
    /// Further regions to copy the AMI to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub regions: Vec<String>,
    #[arg(long, value_enum, default_value = "uefi")]
    pub boot_mode: BootModeArg,
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
    #[arg(long, default_value_t = ami::DEFAULT_PARALLEL)]
    pub parallel: usize,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootModeArg {
    Uefi,
    LegacyBios,
    UefiPreferred,
}

impl From<BootModeArg> for BootMode {
    fn from(m: BootModeArg) -> BootMode {
        match m {
            BootModeArg::Uefi => BootMode::Uefi,
            BootModeArg::LegacyBios => BootMode::LegacyBios,
            BootModeArg::UefiPreferred => BootMode::UefiPreferred,
        }
    }
}

impl AmiArgs {
    /// The request, and the IMDS endpoint for instance-role credentials. Refuses a bad tag or
    /// endpoint; the rest is checked by [`AmiRequest::validate`].
    pub fn into_request(self) -> Result<(AmiRequest, Option<Url>), AmiError> {
        let tags = self
            .tags
            .iter()
            .map(|t| ami::parse_tag(t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ec2_endpoints = BTreeMap::new();
        let mut ec2_default = None;
        for e in &self.ec2_endpoints {
            if let Some(url) = ami::parse_ec2_endpoint(e, &mut ec2_endpoints)? {
                ec2_default = Some(url);
            }
        }
        let copy_regions = ami::validate::copy_regions(self.regions.iter().map(String::as_str));
        let req = AmiRequest {
            disk: self.disk,
            name: self.name,
            description: self.description.unwrap_or_default(),
            region: self.region,
            copy_regions,
            boot_mode: self.boot_mode.into(),
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
        };
        Ok((req, self.imds_endpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ami_arguments_become_a_request() {
        let cli = Cli::try_parse_from([
            "berth-image",
            "ami",
            "--disk",
            "d",
            "--name",
            "berth-x",
            "--region",
            "us-east-1",
            "--regions",
            "us-west-2,us-west-2, ",
            "--tag",
            "a=b",
            "--ec2-endpoint",
            "http://127.0.0.1:1/",
            "--ec2-endpoint",
            "us-west-2=http://127.0.0.1:2/",
            "--boot-mode",
            "uefi-preferred",
            "--parallel",
            "4",
            "-q",
        ])
        .unwrap();
        let Cmd::Ami(args) = cli.cmd else {
            panic!("not ami");
        };
        let (req, imds) = args.into_request().unwrap();
        assert!(imds.is_none());
        assert_eq!(req.copy_regions, ["us-west-2"]);
        assert_eq!(req.tags, [("a".to_string(), "b".to_string())]);
        assert_eq!(req.boot_mode, BootMode::UefiPreferred);
        assert_eq!(req.progress, ProgressMode::Quiet);
        assert_eq!(req.ec2_endpoint("us-east-1").port(), Some(1));
        assert_eq!(req.ec2_endpoint("us-west-2").port(), Some(2));
    }
}
