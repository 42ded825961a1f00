//! The box the top-level Vagrantfile boots, built the way the README says
//! (`tests/testos/vagrant/build-box.sh`), is a libvirt box of the layered test OS that Debian's
//! `vagrant box add` accepts under the name the Vagrantfile uses. (What that disk does when it
//! boots is tests/tests/qemu_firstboot.rs's subject; `vagrant validate` of the Vagrantfile is
//! image-builder/tests/disk_vagrant.rs's.) Needs root and vagrant (tests/setup/vagrant.sh).

use std::path::Path;
use std::process::Command;

use berth_e2e::agent::workspace;

fn vagrant(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new("vagrant")
        .args(args)
        // Away from the checkout: vagrant looks for a Vagrantfile upwards from its directory and
        // keeps machine data beside the one it finds.
        .current_dir(home)
        // A private Vagrant home: no user boxes or plugins involved, nothing left behind.
        .env("VAGRANT_HOME", home)
        .env("VAGRANT_DOTFILE_PATH", home.join("dotfile"))
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .output()
        .expect("vagrant runs")
}

#[test]
fn the_documented_box_build_gives_a_box_vagrant_accepts() {
    let test = "the_documented_box_build_gives_a_box_vagrant_accepts";
    if !berth_e2e::can_run(test, "vagrant", "vagrant.sh") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let boxfile = dir.path().join("berth.box");
    let out = Command::new(workspace().join("tests/testos/vagrant/build-box.sh"))
        .arg(&boxfile)
        .output()
        .expect("build-box.sh runs");
    assert!(
        out.status.success(),
        "build-box.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("berth-image vagrant-box's JSON summary");
    assert_eq!(summary["provider"], "libvirt", "{summary}");

    let list = Command::new("tar")
        .arg("-tf")
        .arg(&boxfile)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for f in ["box.img", "metadata.json", "Vagrantfile"] {
        assert!(
            list.lines().any(|l| l.trim_start_matches("./") == f),
            "{f} not in {list}"
        );
    }

    let home = dir.path().join("vagrant-home");
    std::fs::create_dir(&home).unwrap();
    let added = vagrant(
        &home,
        &[
            "box",
            "add",
            "--name",
            "berth/testos",
            boxfile.to_str().unwrap(),
        ],
    );
    assert!(
        added.status.success(),
        "vagrant box add: {}\n{}",
        String::from_utf8_lossy(&added.stdout),
        String::from_utf8_lossy(&added.stderr)
    );
    let boxes = vagrant(&home, &["box", "list"]);
    let boxes = String::from_utf8_lossy(&boxes.stdout);
    assert!(
        boxes.contains("berth/testos") && boxes.contains("libvirt"),
        "{boxes}"
    );
}
