//! Every refusal of `berth-image commit`: a clear message naming the input,
//! exit code 3, and no ref created or moved.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

const NEW_REF: &str = "berth/x86_64/test";

/// Runs a commit that must be refused and checks the message and that the
/// refs are exactly what they were (including an existing `NEW_REF`).
fn assert_refused(
    fx: &Fixture,
    extra: &[&str],
    agent: Option<&str>,
    profiles: Option<&str>,
    base: Option<&str>,
    expect: &[&str],
) {
    let refs_before = fx.refs();
    let target_before = ostree(&["rev-parse", "--repo", fx.repo_str(), NEW_REF]);
    let agent = agent
        .map(str::to_owned)
        .unwrap_or_else(|| fx.agent.to_str().unwrap().to_owned());
    let profiles = profiles
        .map(str::to_owned)
        .unwrap_or_else(|| fx.profiles.to_str().unwrap().to_owned());
    let mut args = vec![
        "commit",
        "--repo",
        fx.repo_str(),
        "--base",
        base.unwrap_or(BASE_REF),
        "--ref",
        NEW_REF,
        "--agent",
        &agent,
        "--profiles",
        &profiles,
    ];
    args.extend_from_slice(extra);
    let out = berth_image(&args, Some("1700000099"));
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "expected a refusal, got {:?}: {err}",
        out.status
    );
    for e in expect {
        assert!(err.contains(e), "message lacks {e:?}: {err}");
    }
    assert!(
        stdout(&out).is_empty(),
        "a refused commit prints no checksum"
    );
    assert_eq!(fx.refs(), refs_before, "refs changed");
    assert_eq!(
        ostree(&["rev-parse", "--repo", fx.repo_str(), NEW_REF]),
        target_before,
        "{NEW_REF} moved"
    );
}

/// A fixture whose NEW_REF already points at a good layered commit, so a
/// moved ref would show.
fn fixture_with_ref() -> Fixture {
    let fx = fixture(200);
    let out = fx.commit(NEW_REF, &[], Some("1700000000"));
    assert!(out.status.success(), "{}", stderr(&out));
    fx
}

#[test]
fn missing_base_ref_is_refused() {
    let fx = fixture_with_ref();
    assert_refused(
        &fx,
        &[],
        None,
        None,
        Some("fedora/x86_64/nope"),
        &[
            "base fedora/x86_64/nope: no such ref or commit",
            "ostree refs",
        ],
    );
    let fake = "0".repeat(64);
    assert_refused(
        &fx,
        &[],
        None,
        None,
        Some(&fake),
        &[&format!("base {fake}: no such ref or commit")],
    );
}

#[test]
fn agent_that_is_not_an_executable_elf_is_refused() {
    let fx = fixture_with_ref();
    let script = fx.path("agent.sh");
    std::fs::write(&script, b"#!/bin/sh\necho berth-agent 1.0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_refused(
        &fx,
        &[],
        Some(script.to_str().unwrap()),
        None,
        None,
        &["agent.sh: not an ELF executable", "not a script"],
    );

    let noexec = fx.path("agent-noexec");
    std::fs::copy(&fx.agent, &noexec).unwrap();
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_refused(
        &fx,
        &[],
        Some(noexec.to_str().unwrap()),
        None,
        None,
        &["agent-noexec: not executable (mode 0644)"],
    );

    let dir = fx.path("profiles");
    assert_refused(
        &fx,
        &[],
        Some(dir.to_str().unwrap()),
        None,
        None,
        &["not a regular file"],
    );
    assert_refused(
        &fx,
        &[],
        Some("/nonexistent/berth-agent"),
        None,
        None,
        &["agent /nonexistent/berth-agent: cannot read it"],
    );
}

#[test]
fn overlay_under_var_lib_berth_is_refused() {
    let fx = fixture_with_ref();
    let state = fx.path("phase");
    std::fs::write(&state, b"converged\n").unwrap();
    for dest in [
        "/var/lib/berth/phase",
        "/var/lib/berth",
        "/var/lib/berth/i-0123/state.json",
    ] {
        let arg = format!("{}:{dest}", state.display());
        assert_refused(
            &fx,
            &["--add-file", &arg],
            None,
            None,
            None,
            &[
                &format!("{dest}: refusing to bake anything under /var/lib/berth"),
                "skip its first boot",
            ],
        );
    }
    // A path that would reach it through `..` is refused too.
    let arg = format!("{}:/var/lib/x/../berth/phase", state.display());
    assert_refused(
        &fx,
        &["--add-file", &arg],
        None,
        None,
        None,
        &["are not allowed in image paths"],
    );
    // Through a base symlink (/opt -> var/opt) nothing is written either.
    let arg = format!("{}:/opt/berth/phase", state.display());
    assert_refused(
        &fx,
        &["--add-file", &arg],
        None,
        None,
        None,
        &["/opt/berth/phase: the base has /opt as a file or symlink"],
    );
}

#[test]
fn base_with_baked_state_is_refused() {
    let fx = fixture(50);
    let tree = fx.path("dirty");
    make_base_tree(&tree, 50);
    std::fs::create_dir_all(tree.join("var/lib/berth")).unwrap();
    std::fs::write(tree.join("var/lib/berth/phase"), b"converged\n").unwrap();
    commit_base(&fx.repo, &tree, "fedora/x86_64/dirty");
    let refs_before = fx.refs();
    let out = berth_image(
        &[
            "commit",
            "--repo",
            fx.repo_str(),
            "--base",
            "fedora/x86_64/dirty",
            "--ref",
            NEW_REF,
            "--agent",
            fx.agent.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already contains /var/lib/berth"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fx.refs(), refs_before);
}

#[test]
fn unknown_profile_dir_is_refused() {
    let fx = fixture_with_ref();
    let missing = fx.path("no-such-profiles");
    assert_refused(
        &fx,
        &[],
        None,
        Some(missing.to_str().unwrap()),
        None,
        &["no-such-profiles: no such profile directory"],
    );
    let file = fx.path("config.yaml");
    assert_refused(
        &fx,
        &[],
        None,
        Some(file.to_str().unwrap()),
        None,
        &["no such profile directory"],
    );
    let empty = fx.path("empty-profiles");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("README"), b"profiles go here\n").unwrap();
    assert_refused(
        &fx,
        &[],
        None,
        Some(empty.to_str().unwrap()),
        None,
        &["empty-profiles: holds no profile"],
    );
    // A single profile passed instead of the directory of profiles.
    let single = fx.profiles.join("legacy-2015");
    assert_refused(
        &fx,
        &[],
        None,
        Some(single.to_str().unwrap()),
        None,
        &["legacy-2015/templates: no profile.yaml, so it is not a profile"],
    );
    let bad = fx.path("bad-profiles");
    std::fs::create_dir_all(bad.join("legacy-2016")).unwrap();
    std::fs::write(bad.join("legacy-2016/profile.yaml"), b"name: legacy-2015\n").unwrap();
    assert_refused(
        &fx,
        &[],
        None,
        Some(bad.to_str().unwrap()),
        None,
        &[
            "legacy-2016/profile.yaml: name is",
            "the directory is \"legacy-2016\"",
        ],
    );
}

#[test]
fn other_bad_inputs_are_refused_before_writing() {
    let fx = fixture_with_ref();
    let bad_yaml = fx.path("bad.yaml");
    std::fs::write(&bad_yaml, b"cluster: [unclosed\n").unwrap();
    assert_refused(
        &fx,
        &["--config", bad_yaml.to_str().unwrap()],
        None,
        None,
        None,
        &["bad.yaml: not valid YAML"],
    );
    // Replacing a base directory with a file.
    let f = fx.path("f");
    std::fs::write(&f, b"x").unwrap();
    let arg = format!("{}:/usr/share/doc", f.display());
    assert_refused(
        &fx,
        &["--add-file", &arg],
        None,
        None,
        None,
        &["/usr/share/doc: the base has a directory there"],
    );
    assert_refused(
        &fx,
        &["--add-file", "nocolon"],
        None,
        None,
        None,
        &["expected SRC:DEST"],
    );
    // An invalid ref name.
    let out = berth_image(
        &[
            "commit",
            "--repo",
            fx.repo_str(),
            "--base",
            BASE_REF,
            "--ref",
            "bad ref",
            "--agent",
            fx.agent.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("--ref bad ref: not a valid OSTree ref name"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn add_file_to_etc_lands_in_usr_etc() {
    let fx = fixture(50);
    let f = fx.path("motd");
    std::fs::write(&f, b"berth node\n").unwrap();
    let arg = format!("{}:/etc/motd.d/berth", f.display());
    let out = fx.commit(NEW_REF, &["--add-file", &arg], Some("1700000000"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        ostree(&[
            "cat",
            "--repo",
            fx.repo_str(),
            NEW_REF,
            "/usr/etc/motd.d/berth"
        ]),
        "berth node\n"
    );
    let text = stdout(&berth_image(
        &["inspect", "--repo", fx.repo_str(), NEW_REF],
        None,
    ));
    assert!(
        text.contains("other changes against the base (2)"),
        "{text}"
    );
    assert!(text.contains("/usr/etc/motd.d/berth"), "{text}");
}

#[test]
fn failure_inside_the_transaction_moves_no_ref() {
    let fx = fixture_with_ref();
    let before = ostree(&["rev-parse", "--repo", fx.repo_str(), NEW_REF]);
    let home = fx.path("empty-gnupg");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Everything validates; signing fails after the commit object is written.
    let out = fx.commit(
        NEW_REF,
        &[
            "--gpg-sign",
            "0123456789ABCDEF",
            "--gpg-homedir",
            home.to_str().unwrap(),
        ],
        Some("1700000555"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("gpg: cannot sign commit"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        ostree(&["rev-parse", "--repo", fx.repo_str(), NEW_REF]),
        before
    );
    let fsck = ostree(&["fsck", "--repo", fx.repo_str()]);
    assert!(fsck.contains("no errors found"), "{fsck}");
}
