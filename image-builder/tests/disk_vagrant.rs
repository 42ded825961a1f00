//! Vagrant: the top-level Vagrantfile passes Debian's `vagrant validate` (with the libvirt
//! plugin installed, so its provider settings are checked too), and `berth-image vagrant-box`
//! turns a small disk into a libvirt box that `vagrant box add` accepts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn have_vagrant(test: &str) -> bool {
    if Command::new("vagrant").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: tests/setup/vagrant.sh installs vagrant in CI; this test must not skip there"
    );
    eprintln!("SKIPPED {test}: no vagrant (run tests/setup/vagrant.sh)");
    false
}

fn vagrant(home: &Path, cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new("vagrant")
        .args(args)
        .current_dir(cwd)
        // A private Vagrant home: no user boxes or plugins involved, nothing left behind.
        .env("VAGRANT_HOME", home)
        // Machine state under the private home, not a .vagrant/ in the checkout.
        .env("VAGRANT_DOTFILE_PATH", home.join("dotfile"))
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .env("VAGRANT_DEFAULT_PROVIDER", "libvirt")
        .output()
        .expect("vagrant runs")
}

#[test]
fn top_level_vagrantfile_validates() {
    if !have_vagrant("top_level_vagrantfile_validates") {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let out = vagrant(home.path(), &workspace(), &["validate"]);
    assert!(
        out.status.success(),
        "vagrant validate: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("validated successfully"),
        "{}",
        stdout(&out)
    );
    // The three machines of the seed cluster.
    let out = vagrant(home.path(), &workspace(), &["status", "--machine-readable"]);
    let s = stdout(&out);
    for m in ["fed-master", "fed-minion", "fed-minion-2"] {
        assert!(s.contains(&format!(",{m},")), "no machine {m}: {s}");
    }
}

#[test]
fn vagrant_box_from_a_small_disk() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIPPED vagrant_box_from_a_small_disk: berth-image disk needs root");
        return;
    }
    if !have_vagrant("vagrant_box_from_a_small_disk") {
        return;
    }
    let fx = fixture(100);
    let efi = fx.path("systemd-bootx64.efi");
    std::fs::write(&efi, b"MZ stand-in\n").unwrap();
    let add = format!(
        "{}:/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        efi.display()
    );
    let driver = fx.path("ext4x64.efi");
    std::fs::write(&driver, b"MZ stand-in\n").unwrap();
    let add_driver = format!("{}:/usr/share/edk2/drivers/ext4x64.efi", driver.display());
    let o = fx.commit(
        "berth/x86_64/box",
        &["--add-file", &add, "--add-file", &add_driver],
        Some("1700000000"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let disk = fx.path("disk.raw");
    let o = berth_image(
        &[
            "disk",
            "--repo",
            fx.repo_str(),
            "--ref",
            "berth/x86_64/box",
            "--out",
            disk.to_str().unwrap(),
            "--size",
            "1G",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let boxfile = fx.path("berth.box");
    let o = berth_image(
        &[
            "vagrant-box",
            "--disk",
            disk.to_str().unwrap(),
            "--out",
            boxfile.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(summary["provider"], "libvirt");
    assert_eq!(summary["virtual_size"], 1);

    // The archive: metadata, the box's Vagrantfile, a qcow2 of the same disk.
    let x = fx.path("x");
    std::fs::create_dir(&x).unwrap();
    let t = Command::new("tar")
        .arg("-xf")
        .arg(&boxfile)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(t.success());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(
        meta,
        serde_json::json!({"provider": "libvirt", "format": "qcow2", "virtual_size": 1})
    );
    assert!(std::fs::read_to_string(x.join("Vagrantfile"))
        .unwrap()
        .contains("libvirt.loader"));
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&disk)
        .arg(x.join("box.img"))
        .output()
        .unwrap();
    assert!(cmp.status.success(), "box.img differs: {}", stdout(&cmp));

    // Vagrant itself accepts it as a libvirt box.
    let home = tempfile::tempdir().unwrap();
    let o = vagrant(
        home.path(),
        fx.dir.path(),
        &[
            "box",
            "add",
            "--name",
            "berth/test",
            boxfile.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "vagrant box add: {}\n{}",
        stdout(&o),
        stderr(&o)
    );
    let o = vagrant(home.path(), fx.dir.path(), &["box", "list"]);
    assert!(stdout(&o).contains("berth/test"), "{}", stdout(&o));
    assert!(stdout(&o).contains("libvirt"), "{}", stdout(&o));

    // A missing disk is refused.
    let o = berth_image(
        &[
            "vagrant-box",
            "--disk",
            fx.path("nope.raw").to_str().unwrap(),
            "--out",
            fx.path("nope.box").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(!fx.path("nope.box").exists());
}
