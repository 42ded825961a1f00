//! `berth-image disk` on a small layered commit: the partition table, the ESP (systemd-boot,
//! its ext4 driver, loader.conf), the /boot entry with berth's kernel arguments, the
//! deployment on the root partition, reproducible identifiers, qcow2 output, and refusals that
//! leave no file behind. Every partition is read back without mounting (our GPT reader,
//! mtools, debugfs). Needs root: a sysroot repository is in bare mode.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use berth_image::disk::gpt;
use common::*;

const EFI: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// Where Fedora's edk2-ext4 puts its UEFI ext4 driver.
const EXT4_DRIVER: &str = "/usr/share/edk2/drivers/ext4x64.efi";

fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI runs as root; this test must not skip there"
    );
    eprintln!("SKIPPED {test}: needs root for a bare sysroot repo");
    false
}

/// A fixture with a layered commit `berth/x86_64/disk` that carries (stand-ins for) systemd-boot
/// and an ext4 driver, `berth/x86_64/no-driver` with systemd-boot alone, and
/// `berth/x86_64/no-efi` with neither.
fn layered() -> Fixture {
    let fx = fixture(200);
    let efi = fx.path("systemd-bootx64.efi");
    std::fs::write(&efi, b"MZ stand-in for systemd-boot\n").unwrap();
    let driver = fx.path("ext4x64.efi");
    std::fs::write(&driver, b"MZ stand-in for an ext4 driver\n").unwrap();
    let add = format!("{}:{EFI}", efi.display());
    let add_driver = format!("{}:{EXT4_DRIVER}", driver.display());
    let out = fx.commit(
        "berth/x86_64/disk",
        &["--add-file", &add, "--add-file", &add_driver],
        Some("1700000000"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = fx.commit(
        "berth/x86_64/no-driver",
        &["--add-file", &add],
        Some("1700000000"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = fx.commit("berth/x86_64/no-efi", &[], Some("1700000000"));
    assert!(out.status.success(), "{}", stderr(&out));
    fx
}

fn disk(fx: &Fixture, rev: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "disk",
        "--repo",
        fx.repo_str(),
        "--ref",
        rev,
        "--osname",
        "fedora",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    berth_image(&args, None)
}

fn summary(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "berth-image disk failed: {}", stderr(o));
    serde_json::from_str(&stdout(o)).expect("JSON summary")
}

fn debugfs_cat(disk: &Path, offset: u64, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(format!("{}?offset={offset}", disk.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("not found"),
        "debugfs cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mtools(tool: &str, disk: &Path, offset: u64, args: &[&str]) -> String {
    let out = Command::new(tool)
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{offset}", disk.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn disk_has_esp_boot_and_root_with_the_deployment() {
    if !is_root("disk_has_esp_boot_and_root_with_the_deployment") {
        return;
    }
    let fx = layered();
    let out = fx.path("disk.raw");
    let s = summary(&disk(
        &fx,
        "berth/x86_64/disk",
        &out,
        &[
            "--karg",
            "quiet",
            "--karg",
            "systemd.journald.forward_to_console=1",
        ],
    ));

    // The partition table, read back with berth's own reader, matches the summary.
    let mut f = std::fs::File::open(&out).unwrap();
    let (_, parts) = gpt::read(&mut f).unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["ESP", "boot", "root"]);
    assert_eq!(parts[0].type_guid, gpt::types::ESP);
    assert_eq!(parts[1].type_guid, gpt::types::XBOOTLDR);
    assert_eq!(parts[2].type_guid, gpt::types::ROOT_X86_64);
    for (p, j) in parts.iter().zip(s["partitions"].as_array().unwrap()) {
        assert_eq!(p.offset() % (1 << 20), 0, "{} not MiB-aligned", p.name);
        assert_eq!(p.offset(), j["offset"].as_u64().unwrap());
        assert_eq!(p.size(), j["size"].as_u64().unwrap());
    }
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        s["size"].as_u64().unwrap()
    );
    let (esp, boot, root) = (parts[0].offset(), parts[1].offset(), parts[2].offset());
    let root_uuid = s["partitions"][2]["fs_id"].as_str().unwrap();
    let boot_uuid = s["partitions"][1]["fs_id"].as_str().unwrap();

    // /boot: libostree's entry, with berth's kernel arguments then the user's.
    let entry_file = s["entry"]["file"].as_str().unwrap();
    let entry = debugfs_cat(&out, boot, &format!("/loader/entries/{entry_file}"));
    let options = entry
        .lines()
        .find_map(|l| l.strip_prefix("options "))
        .expect("options line");
    assert!(
        options.starts_with(&format!(
            "root=UUID={root_uuid} rw console=tty0 console=ttyS0,115200n8 quiet systemd.journald.forward_to_console=1"
        )),
        "{options}"
    );
    assert!(
        options.contains("ostree=/ostree/boot.1/fedora/"),
        "{options}"
    );
    let linux = s["entry"]["linux"].as_str().unwrap();
    assert!(entry.contains(&format!("linux {linux}")), "{entry}");
    assert_eq!(
        debugfs_cat(&out, boot, linux),
        std::fs::read_to_string(
            fx.path("base")
                .join(format!("usr/lib/modules/{KVER}/vmlinuz"))
        )
        .unwrap()
    );

    // The ESP: systemd-boot where firmware looks without NVRAM entries, no menu, the ext4
    // driver it loads to read /boot; no copies of entries or kernels, which an upgrade would
    // leave stale.
    assert_eq!(
        mtools("mtype", &out, esp, &["::/EFI/BOOT/BOOTX64.EFI"]),
        "MZ stand-in for systemd-boot\n"
    );
    assert_eq!(
        mtools("mtype", &out, esp, &["::/EFI/systemd/drivers/ext4_x64.efi"]),
        "MZ stand-in for an ext4 driver\n"
    );
    assert!(mtools("mtype", &out, esp, &["::/loader/loader.conf"]).contains("timeout 0"));
    let listing = mtools("mdir", &out, esp, &["-/", "-b", "::/"]);
    assert!(
        !listing.contains("/entries/") && !listing.contains("vmlinuz"),
        "the ESP holds copies of what /boot holds:\n{listing}"
    );

    // The root: the deployment with /etc merged, /boot mounted by UUID, no berth state.
    let dep = s["deployment"].as_str().unwrap();
    assert!(dep.starts_with("ostree/deploy/fedora/deploy/"), "{dep}");
    assert_eq!(
        debugfs_cat(&out, root, &format!("/{dep}/etc/berth/config.yaml")),
        "cluster: demo\nprofile: legacy-2015\n"
    );
    let fstab = debugfs_cat(&out, root, &format!("/{dep}/etc/fstab"));
    assert!(
        fstab.contains(&format!("UUID={boot_uuid} /boot ext4 defaults 1 2")),
        "{fstab}"
    );
    let ls = Command::new("debugfs")
        .args(["-R", "ls -l /ostree/deploy/fedora/var/lib"])
        .arg(format!("{}?offset={root}", out.display()))
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("berth"),
        "baked /var/lib/berth"
    );
    // /boot on the root file system is an empty mount point.
    let ls = Command::new("debugfs")
        .args(["-R", "ls /boot"])
        .arg(format!("{}?offset={root}", out.display()))
        .output()
        .unwrap();
    let names: Vec<String> = String::from_utf8_lossy(&ls.stdout)
        .split_whitespace()
        .filter(|w| !w.starts_with('(') && !w.chars().all(|c| c.is_ascii_digit()))
        .map(String::from)
        .collect();
    assert_eq!(names, [".", ".."], "root's /boot is not empty: {names:?}");

    // No work tree left beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(fx.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".berth-disk-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Same inputs, same identifiers.
    let again = fx.path("again.raw");
    let s2 = summary(&disk(
        &fx,
        "berth/x86_64/disk",
        &again,
        &[
            "--karg",
            "quiet",
            "--karg",
            "systemd.journald.forward_to_console=1",
        ],
    ));
    assert_eq!(s["partitions"], s2["partitions"]);
    let mut g = std::fs::File::open(&again).unwrap();
    assert_eq!(gpt::read(&mut f).unwrap(), gpt::read(&mut g).unwrap());
}

#[test]
fn qcow2_and_no_bootloader() {
    if !is_root("qcow2_and_no_bootloader") {
        return;
    }
    let fx = layered();
    let out = fx.path("disk.qcow2");
    let s = summary(&disk(
        &fx,
        "berth/x86_64/no-efi",
        &out,
        &["--format", "qcow2", "--bootloader", "none", "--size", "2G"],
    ));
    assert_eq!(s["format"], "qcow2");
    assert_eq!(s["bootloader"], "none");
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&out)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"].as_u64().unwrap(), 2 << 30);
}

#[test]
fn refusals_leave_no_disk() {
    if !is_root("refusals_leave_no_disk") {
        return;
    }
    let fx = layered();
    let out = fx.path("refused.raw");
    let cases: &[(&str, &[&str], &str)] = &[
        ("berth/x86_64/disk", &["--size", "64M"], "too small"),
        ("berth/x86_64/disk", &["--size", "lots"], "not a size"),
        ("berth/x86_64/disk", &["--karg", "a b"], "one word"),
        ("no/such/ref", &[], "no such ref"),
        ("berth/x86_64/no-efi", &[], "--bootloader none"),
        ("berth/x86_64/no-driver", &[], "no UEFI ext4 driver"),
    ];
    for (rev, extra, want) in cases {
        let o = disk(&fx, rev, &out, extra);
        assert_eq!(o.status.code(), Some(3), "{rev} {extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{rev} {extra:?}: {}", stderr(&o));
        assert!(!out.exists(), "{rev} {extra:?} left a disk");
        // The deployment is written before the size and the bootloader are judged, and
        // libostree makes its root immutable: the work tree must still be gone.
        let leftovers: Vec<_> = std::fs::read_dir(fx.dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".berth-disk-"))
            .collect();
        assert!(leftovers.is_empty(), "{rev} {extra:?} left {leftovers:?}");
    }
}
