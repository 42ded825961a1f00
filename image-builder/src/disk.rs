//! `berth-image disk`: deploys a commit into a bootable GPT disk image (raw or qcow2).
//!
//! The disk has three partitions:
//!
//! | # | type | file system | holds |
//! | - | ---- | ----------- | ----- |
//! | 1 | EFI system | FAT32 `ESP` | systemd-boot (`EFI/BOOT/BOOTX64.EFI`), the UEFI ext4 driver it reads `/boot` with, `loader/loader.conf` |
//! | 2 | XBOOTLDR (`/boot`) | ext4 `boot` | what libostree wrote to `/boot`: `loader/entries/*.conf`, `ostree/<os>-<bootcsum>/` |
//! | 3 | root (x86-64) | ext4 `root` | the OSTree sysroot: `ostree/repo`, `ostree/deploy/<os>/{deploy,var}` |
//!
//! The sysroot is made by libostree itself (init-fs, os-init, a local pull, deploy with the
//! kernel arguments), so the deployment, its `/etc` merge, its origin and its boot entry are
//! exactly what `ostree admin deploy` gives. File systems are built straight into the image
//! (`mke2fs -d`, `mkfs.fat --offset`, mtools): no mounts, no loop devices, so it runs in a
//! container. Identifiers (disk and partition GUIDs, file system UUIDs) are derived from the
//! commit and the kernel arguments, so the same inputs give the same identifiers.
//!
//! One step per module: [`deploy`] (the sysroot), [`esp`] (the bootloader files), [`layout`]
//! (sizes and partitions), [`gpt`] and [`fs`] (writing them), [`work`] (the work tree, removed on
//! every exit path).
//!
//! Not for: BIOS boot (there is no GRUB here), resizing a disk, or anything per instance: the
//! stateroot's `/var` is empty, so every instance runs its own first boot.

pub mod deploy;
pub mod esp;
pub mod fs;
pub mod gpt;
pub mod layout;
pub mod work;

use std::fs::File;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::kind::{Classified, Kind};
use gpt::{Guid, Partition};
use layout::{Layout, Usage, MIB};
use work::WorkTree;

pub use deploy::{DeployError, Deployed};

/// The default stateroot name when the ref does not suggest one.
pub const DEFAULT_OSNAME: &str = "berth";
/// The image file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

/// What boots the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootloader {
    /// systemd-boot from the commit (`/usr/lib/systemd/boot/efi/systemd-bootx64.efi`) on the
    /// ESP, booted by UEFI firmware.
    SystemdBoot,
    /// No bootloader: the disk boots with a kernel given from outside (QEMU `-kernel`, the
    /// entry's `linux`, `initrd` and `options`).
    None,
}

#[derive(Debug, Clone)]
pub struct DiskRequest {
    pub repo: PathBuf,
    /// Ref or commit checksum.
    pub rev: String,
    pub out: PathBuf,
    pub format: Format,
    /// Total size in bytes; `None`: what the tree needs plus [`layout::ROOT_HEADROOM`].
    pub size: Option<u64>,
    /// Extra kernel arguments, after berth's own.
    pub kargs: Vec<String>,
    pub osname: String,
    pub bootloader: Bootloader,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("--size {value}: not a size; write bytes or a number with K, M, G or T (powers of 1024), e.g. 4G")]
    BadSize { value: String },
    #[error("--size {size}: too small for this commit, which needs at least {needed} bytes ({needed_mib} MiB)")]
    TooSmall {
        size: u64,
        needed: u64,
        needed_mib: u64,
    },
    #[error("--karg {arg:?}: a kernel argument is one word without newlines or quotes")]
    BadKarg { arg: String },
    #[error("--osname {name:?}: use letters, digits, `-`, `_` and `.`")]
    BadOsname { name: String },
    #[error("--out {path}: {problem}")]
    BadOut { path: PathBuf, problem: String },
    #[error("{rev}: the commit has no {path}, so systemd-boot cannot be installed; use a commit with systemd-boot-efi, or --bootloader none to boot the disk with an external kernel")]
    NoSystemdBoot { rev: String, path: String },
    #[error("{rev}: the commit has no UEFI ext4 driver (looked for {looked}), so systemd-boot could not read /boot, where an upgrade writes its kernel and entry; add edk2-ext4, refind or efifs to the commit, or use --bootloader none to boot the disk with an external kernel")]
    NoExt4Driver { rev: String, looked: String },
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(transparent)]
    Tool(#[from] fs::ToolError),
    #[error("writing the partition table into {path}: {source}")]
    Gpt {
        path: PathBuf,
        source: gpt::GptError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Classified for DiskError {
    fn kind(&self) -> Kind {
        match self {
            DiskError::BadSize { .. }
            | DiskError::TooSmall { .. }
            | DiskError::BadKarg { .. }
            | DiskError::BadOsname { .. }
            | DiskError::BadOut { .. }
            | DiskError::NoSystemdBoot { .. }
            | DiskError::NoExt4Driver { .. } => Kind::Refused,
            DiskError::Deploy(e) => e.kind(),
            DiskError::Tool(e) => e.kind(),
            DiskError::Gpt { .. } | DiskError::Io { .. } => Kind::Failed,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the raw disk `raw` as a qcow2 image at `out`.
pub(crate) fn qcow2_from_raw(raw: &Path, out: &Path) -> Result<(), fs::ToolError> {
    fs::run(
        "qemu-img",
        &[
            "convert".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "raw".as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            raw.as_os_str(),
            out.as_os_str(),
        ],
    )
}

/// One partition of the finished disk, as reported on stdout.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionInfo {
    pub number: usize,
    pub name: String,
    pub type_guid: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
    pub filesystem: &'static str,
    /// ext4 UUID or FAT volume id.
    pub fs_id: String,
}

/// The boot entry libostree wrote, as a bootloader (or `qemu -kernel`) uses it: `linux` and
/// `initrd` are relative to the `/boot` partition's root.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootEntry {
    pub file: String,
    pub linux: String,
    pub initrd: String,
    pub options: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskOutcome {
    pub path: PathBuf,
    pub format: &'static str,
    pub size: u64,
    pub commit: String,
    pub osname: String,
    /// The deployment's root inside the root partition.
    pub deployment: String,
    pub bootloader: &'static str,
    pub partitions: Vec<PartitionInfo>,
    pub entry: BootEntry,
}

/// Parses `4G`, `512M`, `1073741824`, `8GiB` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, DiskError> {
    let bad = || DiskError::BadSize { value: s.into() };
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(bad()),
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(bad)
}

/// berth's kernel arguments: the root by UUID (the same on virtio, SCSI or NVMe disks), and the
/// serial console last so that it is `/dev/console`: EC2's "Get system log" and the QEMU tests
/// read it.
pub(crate) fn base_kargs(root_uuid: &str) -> Vec<String> {
    vec![
        format!("root=UUID={root_uuid}"),
        "rw".into(),
        "console=tty0".into(),
        "console=ttyS0,115200n8".into(),
    ]
}

fn validate(req: &DiskRequest) -> Result<(), DiskError> {
    for a in &req.kargs {
        if a.is_empty()
            || a.chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\'')
        {
            return Err(DiskError::BadKarg { arg: a.clone() });
        }
    }
    let n = &req.osname;
    if n.is_empty()
        || n.starts_with('.')
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(DiskError::BadOsname { name: n.clone() });
    }
    let parent = out_dir(&req.out);
    if !parent.is_dir() {
        return Err(DiskError::BadOut {
            path: req.out.clone(),
            problem: format!("its directory {} does not exist", parent.display()),
        });
    }
    if req.out.is_dir() {
        return Err(DiskError::BadOut {
            path: req.out.clone(),
            problem: "is a directory".into(),
        });
    }
    Ok(())
}

/// Identifiers derived from the commit and the kernel arguments.
struct Ids {
    disk: Guid,
    esp: Guid,
    boot: Guid,
    root: Guid,
    boot_fs: Guid,
    root_fs: Guid,
    esp_volume: String,
}

impl Ids {
    fn partitions(&self) -> layout::PartitionGuids {
        layout::PartitionGuids {
            esp: self.esp,
            boot: self.boot,
            root: self.root,
        }
    }
}

fn ids(commit: &str, kargs: &[String], osname: &str) -> Ids {
    let h = |what: &str| {
        let mut d = Sha256::new();
        d.update(b"berth-image disk\0");
        d.update(commit.as_bytes());
        d.update([0]);
        d.update(osname.as_bytes());
        for k in kargs {
            d.update([0]);
            d.update(k.as_bytes());
        }
        d.update([0]);
        d.update(what.as_bytes());
        d.finalize()
    };
    let v = h("esp-volume");
    Ids {
        disk: Guid::from_hash(&h("disk")),
        esp: Guid::from_hash(&h("esp")),
        boot: Guid::from_hash(&h("boot")),
        root: Guid::from_hash(&h("root")),
        boot_fs: Guid::from_hash(&h("boot-fs")),
        root_fs: Guid::from_hash(&h("root-fs")),
        esp_volume: hex::encode(&v[..4]),
    }
}

/// The trees that become the disk's file systems, inside the work tree.
struct Trees {
    /// The sysroot, with an empty `/boot` mount point: the root partition.
    sysroot: PathBuf,
    /// What libostree wrote to the sysroot's `/boot`: the `/boot` partition.
    boot: PathBuf,
    esp: PathBuf,
}

/// Builds the disk. Needs root: a sysroot repository is in bare mode (real owners).
///
/// Nothing appears at `--out` unless the whole disk was written; the work tree beside it is
/// removed on every exit path, refusals after the deployment included ([`WorkTree`]).
pub fn build(req: &DiskRequest) -> Result<DiskOutcome, DiskError> {
    validate(req)?;
    let commit = deploy::resolve(&req.repo, &req.rev)?;
    let parent = out_dir(&req.out);
    let work = WorkTree::new(parent).map_err(io(parent))?;
    let sysroot = work.path().join("sysroot");
    std::fs::create_dir(&sysroot).map_err(io(&sysroot))?;

    // The root's UUID goes on the kernel command line, so the identifiers come first; they hash
    // the user's kernel arguments, not berth's own (which contain the UUID).
    let ids = ids(&commit, &req.kargs, &req.osname);
    let mut kargs = base_kargs(&ids.root_fs.to_string());
    kargs.extend(req.kargs.iter().cloned());

    log::info!("deploying {commit} into a fresh sysroot");
    let dep = deploy::deploy(&sysroot, &req.repo, &req.rev, &commit, &req.osname, &kargs)?;
    let dep_root = sysroot.join(&dep.deploy_dir);
    let boot_files = esp::find(req.bootloader, &dep_root, &req.rev)?;
    mount_boot(&dep_root, &ids.boot_fs.to_string())?;
    let trees = split_trees(work.path(), sysroot, boot_files.as_ref())?;

    let root_use = layout::usage(&trees.sysroot)?;
    let boot_use = layout::usage(&trees.boot)?;
    let layout = layout::plan(req.size, root_use, boot_use, ids.partitions())?;
    let raw = work.path().join("disk.raw");
    write_image(&raw, &layout, &ids, &trees, root_use, boot_use)?;
    install(&raw, req.format, &work.path().join("out"), &req.out)?;
    Ok(summary(req, commit, dep, &layout, &ids))
}

/// The directory the output and the work tree go in.
fn out_dir(out: &Path) -> &Path {
    out.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Adds the `/boot` partition to the deployment's `/etc/fstab` (the initramfs needs only the
/// root).
fn mount_boot(dep_root: &Path, boot_uuid: &str) -> Result<(), DiskError> {
    let fstab = dep_root.join("etc/fstab");
    let mut tab = std::fs::read_to_string(&fstab).unwrap_or_default();
    if !tab.is_empty() && !tab.ends_with('\n') {
        tab.push('\n');
    }
    tab.push_str(&format!(
        "# berth-image disk: the Boot Loader Specification's /boot, where libostree writes kernels and entries\nUUID={boot_uuid} /boot ext4 defaults 1 2\n"
    ));
    std::fs::write(&fstab, tab).map_err(io(&fstab))
}

/// Moves the sysroot's `/boot` out to become its own file system (the root keeps an empty
/// mount point) and makes the ESP tree.
fn split_trees(
    work: &Path,
    sysroot: PathBuf,
    boot_files: Option<&esp::BootFiles>,
) -> Result<Trees, DiskError> {
    let boot = work.join("bootfs");
    std::fs::rename(sysroot.join("boot"), &boot).map_err(io(&boot))?;
    let mp = sysroot.join("boot");
    std::fs::create_dir(&mp).map_err(io(&mp))?;
    let esp_dir = work.join("esp");
    esp::fill(&esp_dir, boot_files)?;
    Ok(Trees {
        sysroot,
        boot,
        esp: esp_dir,
    })
}

/// Writes the partition table and the three file systems into the sparse file `raw`, then
/// syncs it.
fn write_image(
    raw: &Path,
    layout: &Layout,
    ids: &Ids,
    trees: &Trees,
    root_use: Usage,
    boot_use: Usage,
) -> Result<(), DiskError> {
    let parts = &layout.parts;
    {
        let mut f = File::create(raw).map_err(io(raw))?;
        f.set_len(layout.total).map_err(io(raw))?;
        gpt::write(&mut f, layout.total, ids.disk, parts).map_err(|source| DiskError::Gpt {
            path: raw.to_path_buf(),
            source,
        })?;
    }
    log::info!("writing the file systems ({} MiB disk)", layout.total / MIB);
    fs::Fat {
        disk: raw,
        offset: parts[0].offset(),
        size: parts[0].size(),
        label: "ESP",
        volume_id: &ids.esp_volume,
        dir: &trees.esp,
    }
    .make()?;
    fs::Ext4 {
        disk: raw,
        offset: parts[1].offset(),
        size: parts[1].size(),
        label: "boot",
        uuid: &ids.boot_fs.to_string(),
        dir: &trees.boot,
        inodes: (boot_use.inodes * 4).max(4096),
    }
    .make()?;
    fs::Ext4 {
        disk: raw,
        offset: parts[2].offset(),
        size: parts[2].size(),
        label: "root",
        uuid: &ids.root_fs.to_string(),
        dir: &trees.sysroot,
        // Room for the deployments to come (each upgrade adds hardlinks, not inodes, but /var
        // and /etc grow), and never fewer than ext4's usual one inode per 16 KiB.
        inodes: (root_use.inodes * 3).max(parts[2].size() / 16384),
    }
    .make()?;
    File::open(raw).and_then(|f| f.sync_all()).map_err(io(raw))
}

/// Converts `raw` to the requested format at `tmp` (in the work tree), then renames it to
/// `out`: only a finished disk ever appears there.
fn install(raw: &Path, format: Format, tmp: &Path, out: &Path) -> Result<(), DiskError> {
    match format {
        Format::Raw => std::fs::rename(raw, tmp).map_err(io(tmp))?,
        Format::Qcow2 => qcow2_from_raw(raw, tmp)?,
    }
    std::fs::rename(tmp, out).map_err(io(out))
}

/// The JSON summary of a finished disk.
fn summary(
    req: &DiskRequest,
    commit: String,
    dep: Deployed,
    layout: &Layout,
    ids: &Ids,
) -> DiskOutcome {
    let fs_ids = [
        ("vfat", ids.esp_volume.clone()),
        ("ext4", ids.boot_fs.to_string()),
        ("ext4", ids.root_fs.to_string()),
    ];
    DiskOutcome {
        path: req.out.clone(),
        format: match req.format {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        },
        size: layout.total,
        commit,
        osname: req.osname.clone(),
        deployment: dep.deploy_dir,
        bootloader: match req.bootloader {
            Bootloader::SystemdBoot => "systemd-boot",
            Bootloader::None => "none",
        },
        partitions: layout
            .parts
            .iter()
            .zip(fs_ids)
            .enumerate()
            .map(|(i, (p, (fs, id)))| partition_info(i + 1, p, fs, id))
            .collect(),
        entry: BootEntry {
            file: dep.entry_file,
            linux: dep.linux,
            initrd: dep.initrd,
            options: dep.options,
        },
    }
}

fn partition_info(
    number: usize,
    p: &Partition,
    filesystem: &'static str,
    fs_id: String,
) -> PartitionInfo {
    PartitionInfo {
        number,
        name: p.name.clone(),
        type_guid: p.type_guid.to_string(),
        guid: p.guid.to_string(),
        offset: p.offset(),
        size: p.size(),
        filesystem,
        fs_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("2t").unwrap(), 2 << 40);
        for bad in ["", "G", "4X", "-1", "0", "1.5G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn identifiers_follow_inputs() {
        let a = ids("abc", &[], "berth");
        let b = ids("abc", &[], "berth");
        let c = ids("abd", &[], "berth");
        let d = ids("abc", &["quiet".into()], "berth");
        assert_eq!(a.root_fs, b.root_fs);
        assert_ne!(a.root_fs, c.root_fs);
        assert_ne!(a.root_fs, d.root_fs);
        assert_ne!(a.root_fs, a.boot_fs);
        assert_eq!(a.esp_volume.len(), 8);
    }

    #[test]
    fn serial_console_is_last_console() {
        let k = base_kargs("u");
        let last_console = k.iter().rev().find(|a| a.starts_with("console=")).unwrap();
        assert!(last_console.starts_with("console=ttyS0"));
        assert!(k.contains(&"root=UUID=u".to_string()));
    }
}
