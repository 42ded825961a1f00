//! File systems written straight into a partition of a disk image file, without mounting and
//! without loop devices: `mke2fs -d` for ext4 (it keeps hardlinks, ownership, modes and
//! xattrs), `mkfs.fat --offset` and mtools for the EFI system partition.

use crate::kind::{Classified, Kind};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "`{tool}` is not installed; install the `{package}` package (tests/setup/qemu.sh does)"
    )]
    Missing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("`{tool}`: {source}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
}

impl Classified for ToolError {
    fn kind(&self) -> Kind {
        match self {
            ToolError::Missing { .. } | ToolError::Failed { .. } | ToolError::Spawn { .. } => {
                Kind::Failed
            }
        }
    }
}

/// Which package provides each tool, for the error that says what to install.
fn package(tool: &str) -> &'static str {
    match tool {
        "mke2fs" => "e2fsprogs",
        "mkfs.fat" => "dosfstools",
        "mcopy" | "mmd" => "mtools",
        "qemu-img" => "qemu-utils",
        "tar" => "tar",
        _ => "?",
    }
}

pub fn run(tool: &'static str, args: &[&std::ffi::OsStr]) -> Result<(), ToolError> {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        // mtools refuses a FAT whose geometry it finds odd unless told not to check.
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C");
    log::debug!("running {cmd:?}");
    let out = cmd.output().map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ToolError::Missing {
                tool,
                package: package(tool),
            }
        } else {
            ToolError::Spawn { tool, source }
        }
    })?;
    if !out.status.success() {
        let command = std::iter::once(tool.to_string())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        return Err(ToolError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// An ext4 file system of `size` bytes at `offset` in `disk`, filled from `dir`.
pub struct Ext4<'a> {
    pub disk: &'a Path,
    pub offset: u64,
    pub size: u64,
    pub label: &'a str,
    pub uuid: &'a str,
    pub dir: &'a Path,
    /// At least this many inodes (the tree's inodes plus room to grow).
    pub inodes: u64,
}

const EXT4_BLOCK: u64 = 4096;

impl Ext4<'_> {
    pub fn make(&self) -> Result<(), ToolError> {
        let ext = format!(
            // The root of the file system belongs to root whoever builds the image; the hash
            // seed follows the UUID so the same inputs give the same directory hashes.
            "offset={},root_owner=0:0,hash_seed={}",
            self.offset, self.uuid
        );
        let blocks = (self.size / EXT4_BLOCK).to_string();
        let inodes = self.inodes.to_string();
        let args: Vec<&std::ffi::OsStr> = vec![
            "-q".as_ref(),
            "-F".as_ref(),
            "-t".as_ref(),
            "ext4".as_ref(),
            "-b".as_ref(),
            "4096".as_ref(),
            "-N".as_ref(),
            inodes.as_ref(),
            "-L".as_ref(),
            self.label.as_ref(),
            "-U".as_ref(),
            self.uuid.as_ref(),
            "-E".as_ref(),
            ext.as_ref(),
            "-d".as_ref(),
            self.dir.as_os_str(),
            self.disk.as_os_str(),
            blocks.as_ref(),
        ];
        run("mke2fs", &args)
    }
}

/// A FAT32 file system of `size` bytes at `offset` in `disk`, filled from `dir`.
pub struct Fat<'a> {
    pub disk: &'a Path,
    pub offset: u64,
    pub size: u64,
    pub label: &'a str,
    /// The volume serial number, 8 hex digits.
    pub volume_id: &'a str,
    pub dir: &'a Path,
}

impl Fat<'_> {
    pub fn make(&self) -> Result<(), ToolError> {
        let offset = (self.offset / 512).to_string();
        let kib = (self.size / 1024).to_string();
        // -I: the image file holds a partition table (ours); the FAT goes at --offset anyway.
        // -s 2: 1 KiB clusters, so that 128 MiB holds the 65525 clusters FAT32 needs (with
        // mkfs.fat's default 4 KiB clusters it is too few, and mtools cannot write it).
        run(
            "mkfs.fat",
            &[
                "-F".as_ref(),
                "32".as_ref(),
                "-s".as_ref(),
                "2".as_ref(),
                "-I".as_ref(),
                "-n".as_ref(),
                self.label.as_ref(),
                "-i".as_ref(),
                self.volume_id.as_ref(),
                "--offset".as_ref(),
                offset.as_ref(),
                self.disk.as_os_str(),
                kib.as_ref(),
            ],
        )?;
        let image = PathBuf::from(format!("{}@@{}", self.disk.display(), self.offset));
        let mut entries: Vec<PathBuf> = std::fs::read_dir(self.dir)
            .map_err(|source| ToolError::Spawn {
                tool: "mcopy",
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        if entries.is_empty() {
            return Ok(());
        }
        let mut args: Vec<&std::ffi::OsStr> = vec!["-s".as_ref(), "-i".as_ref(), image.as_os_str()];
        args.extend(entries.iter().map(|p| p.as_os_str()));
        args.push("::/".as_ref());
        run("mcopy", &args)
    }
}
