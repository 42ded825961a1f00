//! `berth-image disk`: deploys a commit into a bootable GPT disk image (raw or qcow2).
//!
//! The disk has three partitions:
//!
//! | # | type | file system | holds |
//! | - | ---- | ----------- | ----- |
//! | 1 | EFI system | FAT32 `ESP` | systemd-boot (`EFI/BOOT/BOOTX64.EFI`), a copy of the Boot Loader Specification entries, kernels and initramfs images |
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
//! Not for: BIOS boot (there is no GRUB here), resizing a disk, or anything per instance: the
//! stateroot's `/var` is empty, so every instance runs its own first boot.

pub mod deploy;
pub mod fs;
pub mod gpt;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use gpt::{Guid, Partition, SECTOR};

pub use deploy::{DeployError, Deployed};

const MIB: u64 = 1 << 20;
/// systemd-boot and an ext4 driver take under 1 MiB; FAT32 needs at least 65525 clusters, which
/// 128 MiB gives, and firmware is most reliable with FAT32.
const ESP_SIZE: u64 = 128 * MIB;
/// `/boot` holds the booted deployment's kernel and initramfs plus a staged one during an
/// upgrade; 512 MiB unless the commit's own are larger than a third of it.
const BOOT_MIN: u64 = 512 * MIB;
/// Free room in the root file system on top of the tree, the journal and ext4's metadata when
/// `--size` is not given: /var grows (journal, container images come later).
const ROOT_HEADROOM: u64 = 1024 * MIB;
/// The default stateroot name when the ref does not suggest one.
pub const DEFAULT_OSNAME: &str = "berth";
const SYSTEMD_BOOT_EFI: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// UEFI ext4 drivers a commit may carry, by the package that ships them. systemd-boot loads
/// every `EFI/systemd/drivers/*x64.efi` on its ESP; with one that reads ext4 it finds the
/// entries and kernels on `/boot` (the XBOOTLDR partition) itself. That is what keeps upgrades
/// bootable: libostree writes a new deployment's entry and kernel to `/boot` and then deletes
/// the previous boot version's `/ostree/boot.N` links, so a copy of the old entry on the ESP
/// would name a path that no longer exists.
const EXT4_EFI_DRIVERS: &[&str] = &[
    // Fedora, CentOS Stream: edk2-ext4.
    "usr/share/edk2/drivers/ext4x64.efi",
    // Debian, Ubuntu: refind.
    "usr/share/refind/refind/drivers_x64/ext4_x64.efi",
    // Arch and others: efifs (its ext2 driver reads ext4).
    "usr/lib/efifs-x64/ext2.efi",
];
/// Where the driver goes on the ESP (systemd-boot wants the architecture suffix).
const ESP_EXT4_DRIVER: &str = "EFI/systemd/drivers/ext4_x64.efi";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Raw,
    Qcow2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    /// Total size in bytes; `None`: what the tree needs plus [`ROOT_HEADROOM`].
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

impl DiskError {
    /// True when the input was refused before anything was written.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            DiskError::BadSize { .. }
                | DiskError::TooSmall { .. }
                | DiskError::BadKarg { .. }
                | DiskError::BadOsname { .. }
                | DiskError::BadOut { .. }
                | DiskError::NoSystemdBoot { .. }
                | DiskError::NoExt4Driver { .. }
                | DiskError::Deploy(DeployError::NoSuchRev { .. })
        )
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
pub fn base_kargs(root_uuid: &str) -> Vec<String> {
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
    let parent = req
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
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

/// Bytes and inodes a tree takes in ext4 with 4 KiB blocks (hardlinks counted once).
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    bytes: u64,
    inodes: u64,
}

fn usage(dir: &Path) -> Result<Usage, DiskError> {
    let mut seen = std::collections::HashSet::new();
    let mut u = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(io(&d))?;
        for e in rd {
            let e = e.map_err(io(&d))?;
            let m = e.metadata().map_err(io(&e.path()))?;
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            u.inodes += 1;
            // Symlinks up to 59 bytes live in the inode; everything else takes whole blocks.
            let len = if m.file_type().is_symlink() && m.len() < 60 {
                0
            } else {
                m.len()
            };
            u.bytes += len.div_ceil(4096) * 4096;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(u)
}

/// ext4 size for a tree: the data plus 10% for metadata and the inode tables, a 64 MiB journal,
/// rounded up to MiB.
fn ext4_needed(u: Usage) -> u64 {
    let raw = u.bytes + u.bytes / 10 + u.inodes * 256 + 64 * MIB + 16 * MIB;
    raw.div_ceil(MIB) * MIB
}

/// Builds the disk. Needs root: a sysroot repository is in bare mode (real owners).
pub fn build(req: &DiskRequest) -> Result<DiskOutcome, DiskError> {
    validate(req)?;
    let commit = deploy::resolve(&req.repo, &req.rev)?;
    let parent = req
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The work tree sits beside the output: same file system, so nothing crosses devices, and
    // it is removed whatever happens.
    let work = tempfile::Builder::new()
        .prefix(".berth-disk-")
        .tempdir_in(parent)
        .map_err(io(parent))?;
    let sysroot = work.path().join("sysroot");
    std::fs::create_dir(&sysroot).map_err(io(&sysroot))?;

    // The root's UUID goes on the kernel command line, so the identifiers come first; they hash
    // the user's kernel arguments, not berth's own (which contain the UUID).
    let ids = ids(&commit, &req.kargs, &req.osname);
    let root_uuid = ids.root_fs.to_string();
    let boot_uuid = ids.boot_fs.to_string();
    let mut kargs = base_kargs(&root_uuid);
    kargs.extend(req.kargs.iter().cloned());

    log::info!("deploying {commit} into a fresh sysroot");
    let dep = deploy::deploy(&sysroot, &req.repo, &req.rev, &commit, &req.osname, &kargs)?;
    let dep_root = sysroot.join(&dep.deploy_dir);
    // What goes on the ESP: systemd-boot and the ext4 driver it reads /boot with.
    let esp_files = match req.bootloader {
        Bootloader::None => None,
        Bootloader::SystemdBoot => {
            let sd_boot = dep_root.join(SYSTEMD_BOOT_EFI);
            if !sd_boot.is_file() {
                return Err(DiskError::NoSystemdBoot {
                    rev: req.rev.clone(),
                    path: format!("/{SYSTEMD_BOOT_EFI}"),
                });
            }
            let Some(driver) = EXT4_EFI_DRIVERS
                .iter()
                .map(|p| dep_root.join(p))
                .find(|p| p.is_file())
            else {
                return Err(DiskError::NoExt4Driver {
                    rev: req.rev.clone(),
                    looked: EXT4_EFI_DRIVERS
                        .iter()
                        .map(|p| format!("/{p}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            Some((sd_boot, driver))
        }
    };

    // The deployment mounts its /boot partition (the initramfs needs only the root).
    let fstab = dep_root.join("etc/fstab");
    let mut tab = std::fs::read_to_string(&fstab).unwrap_or_default();
    if !tab.is_empty() && !tab.ends_with('\n') {
        tab.push('\n');
    }
    tab.push_str(&format!(
        "# berth-image disk: the Boot Loader Specification's /boot, where libostree writes kernels and entries\nUUID={boot_uuid} /boot ext4 defaults 1 2\n"
    ));
    std::fs::write(&fstab, tab).map_err(io(&fstab))?;

    // /boot becomes its own file system; the root keeps an empty mount point.
    let bootfs = work.path().join("bootfs");
    std::fs::rename(sysroot.join("boot"), &bootfs).map_err(io(&bootfs))?;
    let mp = sysroot.join("boot");
    std::fs::create_dir(&mp).map_err(io(&mp))?;

    // The ESP: the bootloader and the driver it reads /boot with.
    let esp = work.path().join("esp");
    if let Some((sd_boot, driver)) = &esp_files {
        fill_esp(&esp, sd_boot, driver)?;
    } else {
        std::fs::create_dir(&esp).map_err(io(&esp))?;
    }

    let root_use = usage(&sysroot)?;
    let boot_use = usage(&bootfs)?;
    let boot_size = BOOT_MIN.max(ext4_needed(boot_use) * 3);
    let root_needed = ext4_needed(root_use);
    let fixed = ALIGN_START + ESP_SIZE + boot_size + GPT_TAIL;
    let needed = fixed + root_needed;
    let total = match req.size {
        Some(s) if s < needed => {
            return Err(DiskError::TooSmall {
                size: s,
                needed,
                needed_mib: needed.div_ceil(MIB),
            })
        }
        Some(s) => s / MIB * MIB,
        None => (needed + ROOT_HEADROOM).div_ceil(MIB) * MIB,
    };
    let esp_first = ALIGN_START / SECTOR;
    let boot_first = esp_first + ESP_SIZE / SECTOR;
    let root_first = boot_first + boot_size / SECTOR;
    // The root ends on a MiB boundary before the backup GPT.
    let root_last = ((gpt::last_usable(total) + 1) * SECTOR / MIB * MIB) / SECTOR - 1;
    let parts = vec![
        Partition {
            type_guid: gpt::types::ESP,
            guid: ids.esp,
            first_lba: esp_first,
            last_lba: boot_first - 1,
            name: "ESP".into(),
        },
        Partition {
            type_guid: gpt::types::XBOOTLDR,
            guid: ids.boot,
            first_lba: boot_first,
            last_lba: root_first - 1,
            name: "boot".into(),
        },
        Partition {
            type_guid: gpt::types::ROOT_X86_64,
            guid: ids.root,
            first_lba: root_first,
            last_lba: root_last,
            name: "root".into(),
        },
    ];

    let raw = match req.format {
        Format::Raw => work.path().join("disk.raw"),
        Format::Qcow2 => work.path().join("disk.raw"),
    };
    {
        let mut f = File::create(&raw).map_err(io(&raw))?;
        f.set_len(total).map_err(io(&raw))?;
        gpt::write(&mut f, total, ids.disk, &parts).map_err(|source| DiskError::Gpt {
            path: raw.clone(),
            source,
        })?;
    }
    log::info!("writing the file systems ({} MiB disk)", total / MIB);
    fs::Fat {
        disk: &raw,
        offset: parts[0].offset(),
        size: parts[0].size(),
        label: "ESP",
        volume_id: &ids.esp_volume,
        dir: &esp,
    }
    .make()?;
    fs::Ext4 {
        disk: &raw,
        offset: parts[1].offset(),
        size: parts[1].size(),
        label: "boot",
        uuid: &boot_uuid,
        dir: &bootfs,
        inodes: (boot_use.inodes * 4).max(4096),
    }
    .make()?;
    fs::Ext4 {
        disk: &raw,
        offset: parts[2].offset(),
        size: parts[2].size(),
        label: "root",
        uuid: &root_uuid,
        dir: &sysroot,
        // Room for the deployments to come (each upgrade adds hardlinks, not inodes, but /var
        // and /etc grow), and never fewer than ext4's usual one inode per 16 KiB.
        inodes: (root_use.inodes * 3).max(parts[2].size() / 16384),
    }
    .make()?;

    File::open(&raw)
        .and_then(|f| f.sync_all())
        .map_err(io(&raw))?;
    let tmp_out = work.path().join("out");
    match req.format {
        Format::Raw => std::fs::rename(&raw, &tmp_out).map_err(io(&tmp_out))?,
        Format::Qcow2 => qcow2_from_raw(&raw, &tmp_out)?,
    }
    // Only a finished disk ever appears at --out.
    std::fs::rename(&tmp_out, &req.out).map_err(io(&req.out))?;
    // libostree sets the immutable flag on deployment roots; the work tree must be removable.
    clear_immutable(&sysroot.join(&dep.deploy_dir));

    let fs_ids = [
        ("vfat", ids.esp_volume.clone()),
        ("ext4", boot_uuid.clone()),
        ("ext4", root_uuid.clone()),
    ];
    Ok(DiskOutcome {
        path: req.out.clone(),
        format: match req.format {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        },
        size: total,
        commit,
        osname: req.osname.clone(),
        deployment: dep.deploy_dir.clone(),
        bootloader: match req.bootloader {
            Bootloader::SystemdBoot => "systemd-boot",
            Bootloader::None => "none",
        },
        partitions: parts
            .iter()
            .zip(fs_ids)
            .enumerate()
            .map(|(i, (p, (fs, id)))| PartitionInfo {
                number: i + 1,
                name: p.name.clone(),
                type_guid: p.type_guid.to_string(),
                guid: p.guid.to_string(),
                offset: p.offset(),
                size: p.size(),
                filesystem: fs,
                fs_id: id,
            })
            .collect(),
        entry: BootEntry {
            file: dep.entry_file,
            linux: dep.linux,
            initrd: dep.initrd,
            options: dep.options,
        },
    })
}

/// The first partition starts at 1 MiB.
const ALIGN_START: u64 = gpt::ALIGN;
/// The backup GPT (entries and header) plus alignment slack at the end of the disk.
const GPT_TAIL: u64 = MIB;

/// systemd-boot as the removable-media default (`EFI/BOOT/BOOTX64.EFI`, found without NVRAM
/// entries, as on a fresh VM or EC2 instance), the ext4 driver it loads, and `loader.conf`.
/// Nothing it boots lives here: the entries and kernels stay on `/boot`, where libostree keeps
/// them current.
fn fill_esp(esp: &Path, sd_boot: &Path, ext4_driver: &Path) -> Result<(), DiskError> {
    let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(io(p));
    let copy = |from: &Path, to: &Path| std::fs::copy(from, to).map(|_| ()).map_err(io(from));
    mkdir(&esp.join("EFI/BOOT"))?;
    mkdir(&esp.join("EFI/systemd/drivers"))?;
    copy(sd_boot, &esp.join("EFI/BOOT/BOOTX64.EFI"))?;
    copy(sd_boot, &esp.join("EFI/systemd/systemd-bootx64.efi"))?;
    copy(ext4_driver, &esp.join(ESP_EXT4_DRIVER))?;
    mkdir(&esp.join("loader"))?;
    let conf = esp.join("loader/loader.conf");
    // No menu: the newest entry (libostree's default deployment) boots at once; no editor: the
    // kernel command line is not editable from the console.
    std::fs::write(&conf, "timeout 0\neditor no\n").map_err(io(&conf))
}

fn clear_immutable(path: &Path) {
    let _ = std::process::Command::new("chattr")
        .arg("-i")
        .arg(path)
        .status();
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
