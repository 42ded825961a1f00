//! Shared fixtures for the berth-image suites: a real OSTree repository with
//! a base commit made by the `ostree` CLI, and a real ELF agent.

#![allow(dead_code)]

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BASE_REF: &str = "fedora/x86_64/base";
pub const KVER: &str = "6.1.0-berth.x86_64";
pub const AGENT_VERSION: &str = "0.9.1";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth-image")
}

/// Runs `ostree ARGS` and returns stdout; panics with stderr on failure.
pub fn ostree(args: &[&str]) -> String {
    let out = Command::new("ostree")
        .args(args)
        .output()
        .expect("ostree CLI (tests/setup/image.sh installs it)");
    assert!(
        out.status.success(),
        "ostree {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs berth-image with SOURCE_DATE_EPOCH set or removed.
pub fn berth_image(args: &[&str], epoch: Option<&str>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    match epoch {
        Some(e) => cmd.env("SOURCE_DATE_EPOCH", e),
        None => cmd.env_remove("SOURCE_DATE_EPOCH"),
    };
    cmd.output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub base: String,
    pub agent: PathBuf,
    pub profiles: PathBuf,
    pub config: PathBuf,
}

impl Fixture {
    pub fn repo_str(&self) -> &str {
        self.repo.to_str().unwrap()
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `berth-image commit` with the fixture's inputs plus `extra`.
    pub fn commit(&self, new_ref: &str, extra: &[&str], epoch: Option<&str>) -> Output {
        let mut args = vec![
            "commit",
            "--repo",
            self.repo_str(),
            "--base",
            BASE_REF,
            "--ref",
            new_ref,
            "--agent",
            self.agent.to_str().unwrap(),
            "--profiles",
            self.profiles.to_str().unwrap(),
            "--config",
            self.config.to_str().unwrap(),
            "--version",
            "39.1-berth.1",
        ];
        args.extend_from_slice(extra);
        berth_image(&args, epoch)
    }

    pub fn refs(&self) -> String {
        ostree(&["refs", "--repo", self.repo_str()])
    }
}

/// Builds a base tree of about `nfiles` files shaped like an OSTree OS
/// (`/usr`, `/usr/etc`, `/usr/lib/modules/KVER/vmlinuz`, top-level symlinks
/// into `/usr` and `/var`), commits it with the `ostree` CLI as root:root.
pub fn make_base_tree(root: &Path, nfiles: usize) {
    let mk = |p: &str| std::fs::create_dir_all(root.join(p)).unwrap();
    for d in [
        "usr/bin",
        "usr/lib/systemd/system",
        "usr/etc",
        "usr/share/doc",
        "var",
        "sysroot",
    ] {
        mk(d);
    }
    mk(&format!("usr/lib/modules/{KVER}"));
    std::fs::write(
        root.join(format!("usr/lib/modules/{KVER}/vmlinuz")),
        b"placeholder kernel\n",
    )
    .unwrap();
    std::fs::write(
        root.join("usr/etc/os-release"),
        b"ID=fedora\nVARIANT_ID=berth-test\n",
    )
    .unwrap();
    std::fs::write(
        root.join("usr/lib/systemd/system/sshd.service"),
        b"[Unit]\nDescription=sshd\n",
    )
    .unwrap();
    std::fs::write(root.join("usr/bin/bash"), b"\x7fELFfake").unwrap();
    std::fs::set_permissions(
        root.join("usr/bin/bash"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("opt", "var/opt"),
        ("home", "var/home"),
    ] {
        symlink(target, root.join(link)).unwrap();
    }
    symlink("bash", root.join("usr/bin/sh")).unwrap();
    // Spread the bulk over packages of 50 files, like /usr/share/doc.
    let per_pkg = 50;
    for i in 0..nfiles.div_ceil(per_pkg) {
        let pkg = root.join(format!("usr/share/doc/pkg{i:05}"));
        std::fs::create_dir_all(&pkg).unwrap();
        for j in 0..per_pkg.min(nfiles - i * per_pkg) {
            std::fs::write(pkg.join(format!("f{j:03}")), format!("pkg {i} file {j}\n")).unwrap();
        }
        if i % 10 == 0 {
            symlink("f000", pkg.join("README")).unwrap();
        }
    }
}

pub fn commit_base(repo: &Path, tree: &Path, reference: &str) -> String {
    ostree(&[
        "commit",
        "--repo",
        repo.to_str().unwrap(),
        "--branch",
        reference,
        "--tree",
        &format!("dir={}", tree.display()),
        "--owner-uid=0",
        "--owner-gid=0",
        "--subject",
        "base OS",
        "--add-metadata-string=version=39.20240101.0",
        "--timestamp=2024-01-01T00:00:00Z",
    ])
    .trim()
    .to_owned()
}

/// A real ELF that answers `--version` like berth-agent does; compiled with
/// the toolchain running these tests.
pub fn build_agent(dir: &Path) -> PathBuf {
    let src = dir.join("agent.rs");
    std::fs::write(
        &src,
        format!("fn main() {{ if std::env::args().nth(1).as_deref() == Some(\"--version\") {{ println!(\"berth-agent {AGENT_VERSION}\"); }} }}\n"),
    )
    .unwrap();
    let out = dir.join("berth-agent");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let st = Command::new(rustc)
        .args(["-O", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("rustc");
    assert!(st.success());
    out
}

/// A fresh archive repo with the base committed, an agent, profiles, config.
pub fn fixture(nfiles: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ostree(&["init", "--repo", repo.to_str().unwrap(), "--mode=archive"]);
    let tree = dir.path().join("base");
    make_base_tree(&tree, nfiles);
    // An xattr on a base file must survive layering untouched.
    let xattr_ok = Command::new("setfattr")
        .args(["-n", "user.berth-test", "-v", "kept"])
        .arg(tree.join("usr/bin/bash"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        xattr_ok,
        "setfattr (package attr, installed by tests/setup/image.sh) must set a user xattr"
    );
    let base = commit_base(&repo, &tree, BASE_REF);
    let agent = build_agent(dir.path());
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(profiles.join("legacy-2015/templates")).unwrap();
    std::fs::write(
        profiles.join("legacy-2015/profile.yaml"),
        b"name: legacy-2015\n",
    )
    .unwrap();
    std::fs::write(
        profiles.join("legacy-2015/templates/etcd.conf.j2"),
        b"[etcd]\nname = \"{{ node.name }}\"\n",
    )
    .unwrap();
    std::fs::write(profiles.join("README"), b"not a profile\n").unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, b"cluster: demo\nprofile: legacy-2015\n").unwrap();
    Fixture {
        dir,
        repo,
        base,
        agent,
        profiles,
        config,
    }
}

/// Gives the tree an SELinux policy the way an OSTree OS carries one, in
/// `/usr/etc/selinux`: libselinux's file_contexts backend labels from it.
/// `/etc` and `/usr` get different types so a test sees which path a file
/// was labelled as.
pub fn add_selinux_policy(root: &Path, file_contexts: bool) {
    let dir = root.join("usr/etc/selinux/berthtest");
    std::fs::create_dir_all(dir.join("contexts/files")).unwrap();
    std::fs::create_dir_all(dir.join("policy")).unwrap();
    std::fs::write(
        root.join("usr/etc/selinux/config"),
        b"SELINUX=enforcing\nSELINUXTYPE=berthtest\n",
    )
    .unwrap();
    std::fs::write(dir.join("policy/policy.33"), b"not a real binary policy\n").unwrap();
    if file_contexts {
        std::fs::write(
            dir.join("contexts/files/file_contexts"),
            concat!(
                "/\tsystem_u:object_r:root_t:s0\n",
                "/.*\tsystem_u:object_r:default_t:s0\n",
                "/usr(/.*)?\tsystem_u:object_r:usr_t:s0\n",
                "/usr/bin(/.*)?\tsystem_u:object_r:bin_t:s0\n",
                "/usr/lib/systemd/system(/.*)?\tsystem_u:object_r:systemd_unit_file_t:s0\n",
                "/etc(/.*)?\tsystem_u:object_r:etc_t:s0\n",
            ),
        )
        .unwrap();
    }
}
