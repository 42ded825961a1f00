//! `berth-image vagrant-box`: packages a disk made by `berth-image disk` as a Vagrant box for
//! the libvirt provider (vagrant-libvirt's box format, version 2).
//!
//! A box is a tar archive of:
//! - `box.img`, the disk as qcow2 (a raw disk is converted with `qemu-img`);
//! - `metadata.json`: `{"provider": "libvirt", "format": "qcow2", "virtual_size": GIB}`;
//! - `Vagrantfile`, the box's defaults: UEFI firmware (the disk boots through systemd-boot on its
//!   ESP; there is no BIOS bootloader) and a virtio disk.
//!
//! Not for: VirtualBox boxes (their disk is a VMDK inside an OVF description; the top-level
//! Vagrantfile's VirtualBox block takes a box made from the same disk with `qemu-img convert -O
//! vmdk` and `VBoxManage`), or uploading to Vagrant Cloud.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::disk::fs::{run, ToolError};
use crate::disk::qcow2_from_raw;
use crate::kind::{Classified, Kind};

const GIB: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum BoxError {
    #[error("--disk {path}: {problem}")]
    BadDisk { path: PathBuf, problem: String },
    #[error("--out {path}: {problem}")]
    BadOut { path: PathBuf, problem: String },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Classified for BoxError {
    fn kind(&self) -> Kind {
        match self {
            BoxError::BadDisk { .. } | BoxError::BadOut { .. } => Kind::Refused,
            BoxError::Tool(_) | BoxError::Io { .. } => Kind::Failed,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BoxError + '_ {
    move |source| BoxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BoxOutcome {
    pub path: PathBuf,
    pub provider: &'static str,
    /// The disk's size in GiB, rounded up, as vagrant-libvirt reads it.
    pub virtual_size: u64,
}

/// The box's own Vagrantfile: what every VM made from it needs, whatever the user's
/// Vagrantfile says.
pub(crate) const BOX_VAGRANTFILE: &str = r#"# Defaults of a box made by `berth-image vagrant-box`.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "kvm"
    libvirt.disk_bus = "virtio"
    # The disk boots through systemd-boot on its EFI system partition; it has no BIOS
    # bootloader, so the VM needs UEFI firmware (Debian: package ovmf).
    libvirt.loader = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    # The serial console is where the kernel, systemd and berth-agent log (console=ttyS0).
    libvirt.serial :type => "file", :source => { :path => "/tmp/vagrant-berth-#{config.vm.hostname || 'vm'}.serial" }
  end
end
"#;

/// Reads the virtual size and format of an image with `qemu-img info`.
fn image_info(disk: &Path) -> Result<(String, u64), BoxError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(disk)
        .output()
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                BoxError::Tool(ToolError::Missing {
                    tool: "qemu-img",
                    package: "qemu-utils",
                })
            } else {
                BoxError::Io {
                    path: disk.to_path_buf(),
                    source,
                }
            }
        })?;
    if !out.status.success() {
        return Err(BoxError::BadDisk {
            path: disk.to_path_buf(),
            problem: format!(
                "qemu-img cannot read it: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| BoxError::BadDisk {
            path: disk.to_path_buf(),
            problem: format!("qemu-img info gave no JSON: {e}"),
        })?;
    let format = v["format"].as_str().unwrap_or("").to_string();
    let size = v["virtual-size"].as_u64().unwrap_or(0);
    if size == 0 || !(format == "raw" || format == "qcow2") {
        return Err(BoxError::BadDisk {
            path: disk.to_path_buf(),
            problem: format!("a raw or qcow2 disk image was expected, not {format:?}"),
        });
    }
    Ok((format, size))
}

/// Packages `disk` (raw or qcow2) into the libvirt box `out`.
pub fn package(disk: &Path, out: &Path) -> Result<BoxOutcome, BoxError> {
    if !disk.is_file() {
        return Err(BoxError::BadDisk {
            path: disk.to_path_buf(),
            problem: "no such file".into(),
        });
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(BoxError::BadOut {
            path: out.to_path_buf(),
            problem: format!("its directory {} does not exist", parent.display()),
        });
    }
    let (format, size) = image_info(disk)?;
    let work = tempfile::Builder::new()
        .prefix(".berth-box-")
        .tempdir_in(parent)
        .map_err(io(parent))?;
    let img = work.path().join("box.img");
    if format == "qcow2" {
        std::fs::copy(disk, &img).map_err(io(disk))?;
    } else {
        qcow2_from_raw(disk, &img)?;
    }
    let virtual_size = size.div_ceil(GIB);
    let metadata = serde_json::json!({
        "provider": "libvirt",
        "format": "qcow2",
        "virtual_size": virtual_size,
    });
    let meta = work.path().join("metadata.json");
    std::fs::write(&meta, format!("{metadata}\n")).map_err(io(&meta))?;
    let vf = work.path().join("Vagrantfile");
    std::fs::write(&vf, BOX_VAGRANTFILE).map_err(io(&vf))?;
    let tmp = work.path().join("out.box");
    // Uncompressed: qcow2 is already compact, and gzip would cost more time than it saves.
    run(
        "tar",
        &[
            "-C".as_ref(),
            work.path().as_os_str(),
            "--owner=0".as_ref(),
            "--group=0".as_ref(),
            "-cf".as_ref(),
            tmp.as_os_str(),
            "metadata.json".as_ref(),
            "Vagrantfile".as_ref(),
            "box.img".as_ref(),
        ],
    )?;
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(BoxOutcome {
        path: out.to_path_buf(),
        provider: "libvirt",
        virtual_size,
    })
}
