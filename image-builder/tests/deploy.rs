//! The layered commit deploys as a host would run it: `ostree admin deploy`
//! into a fresh sysroot merges `/usr/etc/berth` into `/etc/berth`, keeps the
//! units enabled through their `.wants` links, and leaves no berth state in
//! `/var`. Needs root (a sysroot repository is in bare mode).

mod common;

use common::*;

/// OSTree makes each deployment root immutable (chattr +i); clear it so the
/// temporary sysroot can be removed when the test ends, pass or fail.
struct Immutable(std::path::PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let deploys = self.0.join("ostree/deploy/fedora/deploy");
        for entry in std::fs::read_dir(deploys).into_iter().flatten().flatten() {
            let ok = std::process::Command::new("chattr")
                .arg("-i")
                .arg(entry.path())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                eprintln!(
                    "cannot chattr -i {}; it stays behind",
                    entry.path().display()
                );
            }
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn layered_commit_deploys_with_etc_merged_and_units_enabled() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root; this test must not skip there"
        );
        eprintln!("SKIPPED layered_commit_deploys_with_etc_merged_and_units_enabled: needs root for a bare sysroot repo");
        return;
    }
    let fx = fixture(200);
    let out = fx.commit("berth/x86_64/stable", &[], Some("1700000000"));
    assert!(out.status.success(), "{}", stderr(&out));
    let checksum = stdout(&out).trim().to_owned();

    let sysroot = fx.path("sysroot");
    std::fs::create_dir(&sysroot).unwrap();
    let _immutable = Immutable(sysroot.clone());
    let s = sysroot.to_str().unwrap();
    ostree(&["admin", "init-fs", s]);
    ostree(&["admin", "os-init", "--sysroot", s, "fedora"]);
    ostree(&[
        "pull-local",
        "--repo",
        &format!("{s}/ostree/repo"),
        fx.repo_str(),
        "berth/x86_64/stable",
    ]);
    ostree(&[
        "admin",
        "deploy",
        "--sysroot",
        s,
        "--os",
        "fedora",
        "berth/x86_64/stable",
    ]);

    let deploy = sysroot.join(format!("ostree/deploy/fedora/deploy/{checksum}.0"));
    assert!(deploy.is_dir(), "no deployment at {}", deploy.display());
    assert_eq!(
        std::fs::read_to_string(deploy.join("etc/berth/config.yaml")).unwrap(),
        "cluster: demo\nprofile: legacy-2015\n"
    );
    let wants = deploy.join("usr/lib/systemd/system/multi-user.target.wants");
    let unit = "berth-agent.service";
    let link = std::fs::read_link(wants.join(unit)).unwrap();
    assert_eq!(link.to_str().unwrap(), format!("../{unit}"));
    assert!(wants.join(unit).exists(), "{unit} link dangles");
    let meta = std::fs::metadata(deploy.join("usr/bin/berth-agent")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
        0o755
    );
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    let kernel = sysroot.join("boot/ostree");
    assert!(kernel.is_dir(), "the base's kernel was not installed");
    // No first-boot state anywhere the instance will look.
    assert!(!sysroot.join("ostree/deploy/fedora/var/lib/berth").exists());
    assert!(!deploy.join("var/lib/berth").exists());
}
