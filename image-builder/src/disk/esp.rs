//! The EFI system partition's contents: systemd-boot from the commit and the UEFI ext4 driver it
//! reads `/boot` with.

use std::path::{Path, PathBuf};

use super::{io, Bootloader, DiskError};

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

/// The files the ESP gets from the deployment.
#[derive(Debug)]
pub struct BootFiles {
    pub systemd_boot: PathBuf,
    pub ext4_driver: PathBuf,
}

/// Finds systemd-boot and an ext4 driver in the deployment at `dep_root`; `None` for
/// `--bootloader none`. Refuses a commit without them (the user's fix is in the message).
pub fn find(
    bootloader: Bootloader,
    dep_root: &Path,
    rev: &str,
) -> Result<Option<BootFiles>, DiskError> {
    match bootloader {
        Bootloader::None => Ok(None),
        Bootloader::SystemdBoot => {
            let systemd_boot = dep_root.join(SYSTEMD_BOOT_EFI);
            if !systemd_boot.is_file() {
                return Err(DiskError::NoSystemdBoot {
                    rev: rev.into(),
                    path: format!("/{SYSTEMD_BOOT_EFI}"),
                });
            }
            let Some(ext4_driver) = EXT4_EFI_DRIVERS
                .iter()
                .map(|p| dep_root.join(p))
                .find(|p| p.is_file())
            else {
                return Err(DiskError::NoExt4Driver {
                    rev: rev.into(),
                    looked: EXT4_EFI_DRIVERS
                        .iter()
                        .map(|p| format!("/{p}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            Ok(Some(BootFiles {
                systemd_boot,
                ext4_driver,
            }))
        }
    }
}

/// Makes the ESP tree at `esp`: empty without a bootloader; otherwise systemd-boot as the
/// removable-media default (`EFI/BOOT/BOOTX64.EFI`, found without NVRAM entries, as on a fresh
/// VM or EC2 instance), the ext4 driver it loads, and `loader.conf`. Nothing it boots lives
/// here: the entries and kernels stay on `/boot`, where libostree keeps them current.
pub(crate) fn fill(esp: &Path, files: Option<&BootFiles>) -> Result<(), DiskError> {
    let Some(files) = files else {
        return std::fs::create_dir(esp).map_err(io(esp));
    };
    let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(io(p));
    let copy = |from: &Path, to: &Path| std::fs::copy(from, to).map(|_| ()).map_err(io(from));
    mkdir(&esp.join("EFI/BOOT"))?;
    mkdir(&esp.join("EFI/systemd/drivers"))?;
    copy(&files.systemd_boot, &esp.join("EFI/BOOT/BOOTX64.EFI"))?;
    copy(
        &files.systemd_boot,
        &esp.join("EFI/systemd/systemd-bootx64.efi"),
    )?;
    copy(&files.ext4_driver, &esp.join(ESP_EXT4_DRIVER))?;
    mkdir(&esp.join("loader"))?;
    let conf = esp.join("loader/loader.conf");
    // No menu: the newest entry (libostree's default deployment) boots at once; no editor: the
    // kernel command line is not editable from the console.
    std::fs::write(&conf, "timeout 0\neditor no\n").map_err(io(&conf))
}
