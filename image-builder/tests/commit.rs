//! `berth-image commit` against a real OSTree repository, checked with the
//! `ostree` CLI: exactly berth's files differ from the base, with root
//! ownership and explicit modes; the base's tree, xattrs and unchanged
//! subtrees are kept; the commit is reproducible and can be GPG-signed.

mod common;

use common::*;

const NEW_REF: &str = "berth/x86_64/test";

/// Everything `ostree diff` must show between base and layered commit.
const EXPECTED_DIFF: &[&str] = &[
    "A    /usr/bin/berth-agent",
    "A    /usr/etc/berth",
    "A    /usr/etc/berth/config.yaml",
    "A    /usr/lib/systemd/system/berth-agent.service",
    "A    /usr/lib/systemd/system/multi-user.target.wants",
    "A    /usr/lib/systemd/system/multi-user.target.wants/berth-agent.service",
    "A    /usr/lib/systemd/system-preset",
    "A    /usr/lib/systemd/system-preset/50-berth.preset",
    "A    /usr/share/berth",
    "A    /usr/share/berth/profiles",
    "A    /usr/share/berth/profiles/legacy-2015",
    "A    /usr/share/berth/profiles/legacy-2015/profile.yaml",
    "A    /usr/share/berth/profiles/legacy-2015/templates",
    "A    /usr/share/berth/profiles/legacy-2015/templates/etcd.conf.j2",
];

/// `ostree ls` line for one path: (mode, uid, gid, size, rest).
fn ls(repo: &str, rev: &str, path: &str) -> Vec<String> {
    let out = ostree(&["ls", "--repo", repo, "-d", rev, path]);
    out.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn layered_commit_differs_from_base_by_exactly_berths_files() {
    let fx = fixture(3000);
    let repo = fx.repo_str();
    let out = fx.commit(NEW_REF, &[], Some("1700000000"));
    assert!(
        out.status.success(),
        "berth-image commit failed: {}",
        stderr(&out)
    );
    let checksum = stdout(&out).trim().to_owned();
    assert_eq!(
        ostree(&["rev-parse", "--repo", repo, NEW_REF]).trim(),
        checksum
    );

    // Exactly the layered files differ.
    let diff = ostree(&["diff", "--repo", repo, BASE_REF, NEW_REF]);
    let lines: Vec<&str> = diff.lines().collect();
    assert_eq!(lines, EXPECTED_DIFF, "ostree diff:\n{diff}");

    // Modes and ownership are explicit, not the builder's.
    let cases = [
        ("/usr/bin/berth-agent", "-00755"),
        ("/usr/etc/berth", "d00755"),
        ("/usr/etc/berth/config.yaml", "-00644"),
        ("/usr/lib/systemd/system/berth-agent.service", "-00644"),
        ("/usr/lib/systemd/system-preset/50-berth.preset", "-00644"),
        ("/usr/share/berth/profiles/legacy-2015", "d00755"),
        (
            "/usr/share/berth/profiles/legacy-2015/templates/etcd.conf.j2",
            "-00644",
        ),
        (
            "/usr/lib/systemd/system/multi-user.target.wants/berth-agent.service",
            "l00777",
        ),
    ];
    for (path, mode) in cases {
        let f = ls(repo, NEW_REF, path);
        assert_eq!(
            (f[0].as_str(), f[1].as_str(), f[2].as_str()),
            (mode, "0", "0"),
            "{path}: {f:?}"
        );
    }
    let link = ls(
        repo,
        NEW_REF,
        "/usr/lib/systemd/system/multi-user.target.wants/berth-agent.service",
    );
    assert_eq!(link.last().unwrap(), "../berth-agent.service");

    // Contents are the inputs, byte for byte.
    let agent_bytes = std::fs::read(&fx.agent).unwrap();
    let cat = std::process::Command::new("ostree")
        .args(["cat", "--repo", repo, NEW_REF, "/usr/bin/berth-agent"])
        .output()
        .unwrap();
    assert!(cat.status.success());
    assert_eq!(cat.stdout, agent_bytes);
    assert_eq!(
        ostree(&["cat", "--repo", repo, NEW_REF, "/usr/etc/berth/config.yaml"]),
        "cluster: demo\nprofile: legacy-2015\n"
    );
    let preset = ostree(&[
        "cat",
        "--repo",
        repo,
        NEW_REF,
        "/usr/lib/systemd/system-preset/50-berth.preset",
    ]);
    assert!(preset.contains("enable berth-agent.service"), "{preset}");
    // The README next to the profiles is not a profile and is not baked.
    assert!(!diff.contains("README"));

    // The whole base is still there, with its xattrs and ownership.
    let vmlinuz = format!("/usr/lib/modules/{KVER}/vmlinuz");
    assert_eq!(
        ostree(&["cat", "--repo", repo, NEW_REF, &vmlinuz]),
        "placeholder kernel\n"
    );
    let bash = ostree(&["ls", "--repo", repo, "-X", NEW_REF, "/usr/bin/bash"]);
    assert!(bash.contains("user.berth-test"), "base xattr lost: {bash}");
    assert_eq!(ls(repo, NEW_REF, "/opt").last().unwrap(), "var/opt");
    let all_base = ostree(&["ls", "--repo", repo, "-R", BASE_REF])
        .lines()
        .count();
    let all_new = ostree(&["ls", "--repo", repo, "-R", NEW_REF])
        .lines()
        .count();
    assert_eq!(all_new, all_base + EXPECTED_DIFF.len());
    assert!(
        all_base > 3000,
        "the base holds a few thousand entries: {all_base}"
    );

    // Untouched subtrees keep their dirtree checksums (reused, not rewritten).
    for dir in [
        "/usr/share/doc",
        "/usr/lib/modules",
        "/usr/share/doc/pkg00007",
    ] {
        let a = ostree(&["ls", "--repo", repo, "-d", "-C", BASE_REF, dir]);
        let b = ostree(&["ls", "--repo", repo, "-d", "-C", NEW_REF, dir]);
        assert_eq!(a, b, "{dir} was rewritten");
    }

    // Lineage and metadata record the base.
    let log = ostree(&["log", "--repo", repo, NEW_REF]);
    assert!(log.contains(&format!("Parent:  {}", fx.base)), "{log}");
    assert!(log.contains("Version: 39.1-berth.1"), "{log}");
    assert!(log.contains("Date:  2023-11-14 22:13:20 +0000"), "{log}");
    let meta = |key: &str| {
        ostree(&[
            "show",
            "--repo",
            repo,
            &format!("--print-metadata-key={key}"),
            NEW_REF,
        ])
        .trim()
        .to_owned()
    };
    assert_eq!(meta("berth.base-commit"), format!("'{}'", fx.base));
    assert_eq!(meta("berth.base-ref"), format!("'{BASE_REF}'"));
    assert_eq!(meta("berth.base-version"), "'39.20240101.0'");
    assert_eq!(meta("berth.agent-version"), format!("'{AGENT_VERSION}'"));
    assert_eq!(meta("ostree.ref-binding"), format!("['{NEW_REF}']"));
    assert_eq!(meta("berth.profiles"), "['legacy-2015']");

    let fsck = ostree(&["fsck", "--repo", repo]);
    assert!(fsck.contains("no errors found"), "{fsck}");

    // inspect shows what berth layered.
    let out = berth_image(&["inspect", "--repo", repo, NEW_REF], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("berth-agent {AGENT_VERSION} (sha256 ")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "base      {} (ref {BASE_REF}) version 39.20240101.0",
            fx.base
        )),
        "{text}"
    );
    assert!(text.contains("units     berth-agent.service"), "{text}");
    assert!(text.contains("profiles  legacy-2015"), "{text}");
    assert!(
        text.contains(&format!(
            "layered by berth ({} changes against the base)",
            EXPECTED_DIFF.len()
        )),
        "{text}"
    );
    assert!(text.contains("A -rwxr-xr-x   0:0"), "{text}");
    assert!(!text.contains("other changes"), "{text}");
    assert!(!text.contains("not the commit's parent"), "{text}");

    // inspect refuses a commit berth did not make.
    let out = berth_image(&["inspect", "--repo", repo, BASE_REF], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("not a berth commit"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn same_inputs_and_source_date_epoch_give_the_same_checksum() {
    let fx = fixture(500);
    let run = |r: &str, epoch: Option<&str>| {
        let out = fx.commit(r, &[], epoch);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    let a = run("berth/a", Some("1700000000"));
    let b = run("berth/b", Some("1700000000"));
    assert_ne!(
        a, b,
        "the ref binding names the ref, so different refs differ"
    );
    let a2 = run("berth/a", Some("1700000000"));
    assert_eq!(a, a2, "same inputs, same SOURCE_DATE_EPOCH: same commit");
    let a3 = run("berth/a", Some("1700000001"));
    assert_ne!(a, a3, "the timestamp is part of the commit");

    // Without SOURCE_DATE_EPOCH the base's timestamp is used: still reproducible.
    let n1 = run("berth/n", None);
    let n2 = run("berth/n", None);
    assert_eq!(n1, n2);
    let log = ostree(&["log", "--repo", fx.repo_str(), "berth/n"]);
    assert!(log.contains("Date:  2024-01-01 00:00:00 +0000"), "{log}");

    // A second repository built from scratch with the same inputs agrees.
    let other = tempfile::tempdir().unwrap();
    let repo2 = other.path().join("repo");
    ostree(&[
        "init",
        "--repo",
        repo2.to_str().unwrap(),
        "--mode=bare-user",
    ]);
    ostree(&[
        "pull-local",
        "--repo",
        repo2.to_str().unwrap(),
        fx.repo_str(),
        BASE_REF,
    ]);
    let out = berth_image(
        &[
            "commit",
            "--repo",
            repo2.to_str().unwrap(),
            "--base",
            BASE_REF,
            "--ref",
            "berth/a",
            "--agent",
            fx.agent.to_str().unwrap(),
            "--profiles",
            fx.profiles.to_str().unwrap(),
            "--config",
            fx.config.to_str().unwrap(),
            "--version",
            "39.1-berth.1",
        ],
        Some("1700000000"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        a,
        "a bare-user repo gives the same commit as an archive repo"
    );
}

#[test]
fn gpg_signed_commit_verifies_with_ostree() {
    let fx = fixture(100);
    let home = fx.path("gnupg");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg = |args: &[&str]| {
        let out = std::process::Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .output()
            .expect("gpg (package gnupg, installed by tests/setup/image.sh)");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    gpg(&[
        "--quick-gen-key",
        "berth test <test@berth.invalid>",
        "ed25519",
        "sign",
        "never",
    ]);
    let listing = gpg(&["--list-keys", "--with-colons"]);
    let fpr = listing
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .unwrap()
        .to_owned();

    let out = fx.commit(
        "berth/signed",
        &["--gpg-sign", &fpr, "--gpg-homedir", home.to_str().unwrap()],
        Some("1700000000"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let checksum = stdout(&out).trim().to_owned();

    // ostree verifies it with the exported public key.
    let keyring = fx.path("keyring");
    std::fs::create_dir(&keyring).unwrap();
    let export = std::process::Command::new("gpg")
        .arg("--homedir")
        .arg(&home)
        .args(["--export", &fpr])
        .output()
        .unwrap();
    std::fs::write(keyring.join("berth.gpg"), export.stdout).unwrap();
    let show = ostree(&[
        "show",
        "--repo",
        fx.repo_str(),
        &format!("--gpg-homedir={}", keyring.display()),
        &checksum,
    ]);
    assert!(
        show.contains("Good signature from \"berth test <test@berth.invalid>\""),
        "{show}"
    );

    // A consumer pulling with GPG verification accepts it, and refuses an
    // unsigned commit.
    let dst = fx.path("dst");
    ostree(&["init", "--repo", dst.to_str().unwrap(), "--mode=archive"]);
    ostree(&[
        "remote",
        "add",
        "--repo",
        dst.to_str().unwrap(),
        &format!("--gpg-import={}", keyring.join("berth.gpg").display()),
        "berth",
        &format!("file://{}", fx.repo.display()),
    ]);
    ostree(&[
        "pull",
        "--repo",
        dst.to_str().unwrap(),
        "berth",
        "berth/signed",
    ]);
    let unsigned = fx.commit("berth/unsigned", &[], Some("1700000000"));
    assert!(unsigned.status.success());
    let pull = std::process::Command::new("ostree")
        .args([
            "pull",
            "--repo",
            dst.to_str().unwrap(),
            "berth",
            "berth/unsigned",
        ])
        .output()
        .unwrap();
    assert!(
        !pull.status.success(),
        "an unsigned commit must fail GPG verification"
    );

    let text = stdout(&berth_image(
        &["inspect", "--repo", fx.repo_str(), "berth/signed"],
        None,
    ));
    assert!(text.contains("signed    1 GPG signature(s)"), "{text}");
}

#[test]
fn new_files_get_the_base_selinux_policy_labels() {
    let fx = fixture(50);
    let tree = fx.path("selinux-base");
    make_base_tree(&tree, 50);
    add_selinux_policy(&tree, true);
    commit_base(&fx.repo, &tree, "fedora/x86_64/selinux");
    let out = berth_image(
        &[
            "commit",
            "--repo",
            fx.repo_str(),
            "--base",
            "fedora/x86_64/selinux",
            "--ref",
            NEW_REF,
            "--agent",
            fx.agent.to_str().unwrap(),
            "--config",
            fx.config.to_str().unwrap(),
        ],
        Some("1700000000"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let label = |path: &str| ostree(&["ls", "--repo", fx.repo_str(), "-X", "-d", NEW_REF, path]);
    for (path, ty) in [
        ("/usr/bin/berth-agent", "bin_t"),
        (
            "/usr/lib/systemd/system/berth-agent.service",
            "systemd_unit_file_t",
        ),
        (
            "/usr/lib/systemd/system/multi-user.target.wants/berth-agent.service",
            "systemd_unit_file_t",
        ),
        ("/usr/lib/systemd/system-preset/50-berth.preset", "usr_t"),
        // /usr/etc is labelled as the /etc it becomes on deploy.
        ("/usr/etc/berth", "etc_t"),
        ("/usr/etc/berth/config.yaml", "etc_t"),
    ] {
        let l = label(path);
        assert!(
            l.contains(&format!("b'security.selinux', b'system_u:object_r:{ty}:s0")),
            "{path}: {l}"
        );
    }
    let fsck = ostree(&["fsck", "--repo", fx.repo_str()]);
    assert!(fsck.contains("no errors found"), "{fsck}");

    // A base whose policy libostree cannot load is refused, not built unlabelled.
    let broken = fx.path("broken-base");
    make_base_tree(&broken, 50);
    add_selinux_policy(&broken, false);
    commit_base(&fx.repo, &broken, "fedora/x86_64/broken");
    let before = fx.refs();
    let out = berth_image(
        &[
            "commit",
            "--repo",
            fx.repo_str(),
            "--base",
            "fedora/x86_64/broken",
            "--ref",
            "berth/broken",
            "--agent",
            fx.agent.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("SELinux policy"), "{}", stderr(&out));
    assert_eq!(fx.refs(), before);
}

#[test]
fn the_projects_own_profiles_are_baked_file_for_file() {
    let fx = fixture(50);
    let profiles = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/profiles");
    let out = berth_image(
        &[
            "commit",
            "--repo",
            fx.repo_str(),
            "--base",
            BASE_REF,
            "--ref",
            NEW_REF,
            "--agent",
            fx.agent.to_str().unwrap(),
            "--profiles",
            profiles.to_str().unwrap(),
        ],
        Some("1700000000"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut checked = 0;
    let mut stack = vec![profiles.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&profiles).unwrap();
            if rel.components().count() < 2 {
                continue; // files beside the profiles are not profiles
            }
            let image_path = format!("/usr/share/berth/profiles/{}", rel.display());
            let baked = ostree(&["cat", "--repo", fx.repo_str(), NEW_REF, &image_path]);
            assert_eq!(
                baked,
                std::fs::read_to_string(&path).unwrap(),
                "{image_path}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "configs/profiles holds no profile file");
}
