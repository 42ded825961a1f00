//! The host's files as the real `berth-agent` leaves them: `/etc/hosts` bind-mounted over (as in
//! a container or `ip netns exec`), temporary files of runs killed at every rename, lines of a
//! hand-made setup that would beat the managed block in glibc, and what `status` says about a
//! failed first run, a cloned disk and a state file moved aside.
//!
//! The mount-namespace tests need root (`unshare -m`, `mount --bind`); the crash test needs
//! `strace` (Debian package `strace`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_e2e::agent::{bin, fedora_root, tree, Region};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The agent's command line for `node` of `region`, as `Region::agent` builds it.
fn agent_args(region: &Region, node: &str, root: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--once".into(),
        "--no-host-actions".into(),
        "--root".into(),
        root.display().to_string(),
        "--imds-endpoint".into(),
        region.sim.imds_url(node).unwrap(),
        "--ec2-endpoint".into(),
        region.sim.ec2_url(),
    ]
}

/// Every file under `root` whose name is a berth temporary file (`.NAME.berth-PID`).
fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().contains(".berth-") {
                found.push(p);
            }
        }
    }
    found
}

fn status(root: &Path, json: bool) -> Output {
    let mut c = Command::new(bin("berth-agent"));
    c.arg("status");
    if json {
        c.args(["--format", "json"]);
    }
    c.arg("--root").arg(root).output().unwrap()
}

/// The seed's `/etc/hosts` on fed-minion after the walkthrough's hand edits: the master at its
/// old address, above anything berth writes.
const HAND_MADE_HOSTS: &str = "127.0.0.1   localhost localhost.localdomain\n\
                               ::1         localhost6 localhost6.localdomain6\n\
                               172.30.0.200 fed-master\n\
                               172.30.0.43 fed-minion\n";

#[test]
fn bind_mounted_etc_hosts_is_rewritten_in_place_without_temp_files() {
    if !berth_e2e::can_run("bind_mounted_etc_hosts", "unshare", "nspawn.sh") {
        return;
    }
    let region = Region::seed();
    let root = fedora_root();
    let underlying = std::fs::read(root.path().join("etc/hosts")).unwrap();
    // The file mounted over ROOT/etc/hosts, as a container runtime mounts the host's.
    let outside = tempfile::tempdir().unwrap();
    let mounted = outside.path().join("hosts");
    std::fs::write(&mounted, HAND_MADE_HOSTS).unwrap();

    let args = agent_args(&region, "fed-minion", root.path());
    let script = r#"set -e
        mount --bind "$1" "$2/etc/hosts"
        shift 2
        exec "$@""#;
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&mounted)
        .arg(root.path())
        .arg(bin("berth-agent"))
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(&mounted).unwrap();
    assert!(written.contains("172.30.0.246 fed-master\n"), "{written}");
    assert!(written.contains("#berth-disabled"), "{written}");
    // Written through the mount: the file under it is untouched, and nothing is left beside it.
    assert_eq!(
        std::fs::read(root.path().join("etc/hosts")).unwrap(),
        underlying
    );
    assert_eq!(temp_files(root.path()), Vec::<PathBuf>::new());
    assert!(root.path().join("etc/kubernetes/kubelet").exists());
}

#[test]
fn stale_temp_files_are_removed_by_the_next_run() {
    let region = Region::seed();
    let root = fedora_root();
    // As a run killed between write and rename leaves them (PIDs above Linux's pid_max: dead).
    let stale = [
        "etc/.hosts.berth-4194305",
        "etc/kubernetes/.config.berth-4194305",
        "etc/systemd/system/.kubelet.service.berth-4194306",
        "var/lib/berth/.current.berth-4194307",
        "var/lib/berth/i-0a1b2c3d4e5f60002/.state.json.berth-4194307",
    ];
    // Names berth did not make are not touched.
    let foreign = ["etc/.hosts.berth-backup", "etc/hosts.berth-4194305"];
    for p in stale.iter().chain(&foreign) {
        let full = root.path().join(p);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, b"half").unwrap();
    }
    region.converge("fed-minion", root.path());
    for p in stale {
        assert!(!root.path().join(p).exists(), "{p} left");
    }
    for p in foreign {
        assert!(root.path().join(p).exists(), "{p} removed");
    }
}

#[test]
fn sigkill_at_every_rename_then_a_clean_run_converges() {
    if !berth_e2e::can_run("sigkill_at_every_rename", "strace", "agent.sh") {
        return;
    }
    let region = Region::seed();
    let reference = fedora_root();
    region.converge("fed-minion", reference.path());
    let want = tree(reference.path());

    let mut completed_at = None;
    for n in 1..=64 {
        let root = fedora_root();
        let inject = format!("inject=rename,renameat,renameat2:signal=KILL:when={n}");
        let out = Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=rename,renameat,renameat2",
            ])
            .args(["-e", &inject])
            .arg(bin("berth-agent"))
            .args(agent_args(&region, "fed-minion", root.path()))
            .output()
            .unwrap();
        if out.status.success() {
            // Fewer than n renames: the run completed untouched.
            completed_at = Some(n);
            assert_eq!(temp_files(root.path()), Vec::<PathBuf>::new());
            break;
        }
        let out = region.agent(
            "fed-minion",
            root.path(),
            &["run", "--once", "--no-host-actions"],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "after a kill at rename {n}: {}",
            text(&out.stderr)
        );
        assert_eq!(
            temp_files(root.path()),
            Vec::<PathBuf>::new(),
            "after a kill at rename {n}"
        );
        assert_eq!(tree(root.path()), want, "after a kill at rename {n}");
        let st = text(&status(root.path(), false).stdout);
        assert!(
            st.contains("phase:    converged"),
            "after a kill at rename {n}: {st}"
        );
    }
    let n = completed_at.expect("a run completes within 64 renames");
    assert!(n > 5, "only {} renames were interrupted", n - 1);
    eprintln!("interrupted each of {} renames of a first converge", n - 1);
}

#[test]
fn glibc_resolves_managed_names_to_berths_addresses() {
    if !berth_e2e::can_run("glibc_resolves_managed_names", "unshare", "nspawn.sh") {
        return;
    }
    let region = Region::seed();
    let root = fedora_root();
    let hosts = root.path().join("etc/hosts");
    std::fs::write(&hosts, HAND_MADE_HOSTS).unwrap();

    // getent through glibc, with the file bind-mounted over this mount namespace's /etc/hosts.
    let getent = |name: &str| -> String {
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/hosts && exec getent hosts "$2""#)
            .arg("sh")
            .arg(&hosts)
            .arg(name)
            .output()
            .unwrap();
        assert!(out.status.success(), "getent {name}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    // The hand-made line wins as long as it is there: the test can fail.
    assert!(getent("fed-master").starts_with("172.30.0.200 "));

    let plan = region.plan("fed-minion", root.path());
    let notes: Vec<String> = plan["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert!(
        notes.iter().any(|n| n.starts_with(
            "/etc/hosts line 3: fed-master is 172.30.0.200 there but 172.30.0.246 in the cluster"
        )),
        "{notes:?}"
    );
    let out = region.converge("fed-minion", root.path());
    assert!(text(&out.stderr).contains("/etc/hosts line 3: fed-master"));
    let got = getent("fed-master");
    assert!(got.starts_with("172.30.0.246 "), "{got}");
    assert_eq!(got.lines().count(), 1, "{got}");
    assert!(getent("fed-minion").starts_with("172.30.0.43 "));
    let st = text(&status(root.path(), false).stdout);
    assert!(st.contains("/etc/hosts line 3: fed-master"), "{st}");
    // The host's other lines are kept byte for byte, the old one commented out, not deleted.
    let written = std::fs::read_to_string(&hosts).unwrap();
    assert!(written.starts_with(
        "127.0.0.1   localhost localhost.localdomain\n::1         localhost6 localhost6.localdomain6\n\
         #berth-disabled (names a cluster node with another address): 172.30.0.200 fed-master\n\
         172.30.0.43 fed-minion\n"
    ), "{written}");
}

#[test]
fn status_after_a_failed_first_run_shows_the_failure() {
    let region = Region::seed_with(|m| {
        m.tags.remove("role");
    });
    let root = fedora_root();
    let out = region.agent(
        "fed-minion",
        root.path(),
        &["run", "--once", "--no-host-actions"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    drop(region);
    let st = status(root.path(), false);
    let s = text(&st.stdout);
    assert_eq!(st.status.code(), Some(0), "{}", text(&st.stderr));
    assert!(s.contains("state:    none"), "{s}");
    assert!(
        s.contains("last run: failed for i-0a1b2c3d4e5f60002 (exit 3"),
        "{s}"
    );
    assert!(s.contains("reason: this instance has no role"), "{s}");
    let v: serde_json::Value = serde_json::from_slice(&status(root.path(), true).stdout).unwrap();
    assert_eq!(v["last_run"]["outcome"], "failed");
    assert_eq!(v["last_run"]["exit_code"], 3);
    assert_eq!(v["this_node"], false);
}

/// A root whose boot and machine are `boot` and `machine` (the agent and `status` read
/// `/proc/sys/kernel/random/boot_id` and `/etc/machine-id` under `--root` first).
fn identify(root: &Path, boot: &str, machine: &str) {
    let b = root.join("proc/sys/kernel/random");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("boot_id"), format!("{boot}\n")).unwrap();
    std::fs::write(root.join("etc/machine-id"), format!("{machine}\n")).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn status_on_a_cloned_disk_does_not_claim_the_old_instance() {
    let region = Region::seed();
    let original = fedora_root();
    identify(original.path(), "0b0b0b0b-1111", "aaaaaaaa");
    region.converge("fed-minion", original.path());
    let s = text(&status(original.path(), false).stdout);
    assert!(
        s.starts_with("node:     fed-minion (i-0a1b2c3d4e5f60002"),
        "{s}"
    );
    assert!(s.contains("(this node)"), "{s}");

    // The disk, cloned into a new instance: a new boot on another machine.
    let clone = fedora_root();
    copy_dir(
        &original.path().join("var/lib/berth"),
        &clone.path().join("var/lib/berth"),
    );
    identify(clone.path(), "0c0c0c0c-2222", "bbbbbbbb");
    let st = status(clone.path(), false);
    let s = text(&st.stdout);
    assert_eq!(st.status.code(), Some(0));
    assert!(
        s.starts_with("note:     the state of instance i-0a1b2c3d4e5f60002 from another machine"),
        "{s}"
    );
    assert!(!s.contains("(this node)"), "{s}");
    assert!(!s.contains("node:     fed-minion"), "{s}");
    let v: serde_json::Value = serde_json::from_slice(&status(clone.path(), true).stdout).unwrap();
    assert_eq!(v["this_node"], false);

    // Same machine, next boot, before the agent ran: not presented as this node either.
    identify(clone.path(), "0d0d0d0d-3333", "aaaaaaaa");
    let s = text(&status(clone.path(), false).stdout);
    assert!(s.contains("from another boot"), "{s}");
    assert!(!s.contains("(this node)"), "{s}");
    // Once the agent has converged in this boot, it is this node again.
    region.converge("fed-minion", clone.path());
    let s = text(&status(clone.path(), false).stdout);
    assert!(s.starts_with("node:     fed-minion"), "{s}");
    assert!(s.contains("(this node)"), "{s}");
}

#[test]
fn status_without_the_state_file_says_there_is_none() {
    let region = Region::seed();
    let root = fedora_root();
    region.converge("fed-minion", root.path());
    let file = root
        .path()
        .join("var/lib/berth/i-0a1b2c3d4e5f60002/state.json");
    std::fs::rename(&file, file.with_extension("json.moved")).unwrap();
    let st = status(root.path(), false);
    assert_eq!(st.status.code(), Some(1));
    assert_eq!(text(&st.stdout), "");
    let err = text(&st.stderr);
    assert!(err.contains("no state:"), "{err}");
    assert!(err.contains("i-0a1b2c3d4e5f60002"), "{err}");
    assert!(err.contains("state.json is missing"), "{err}");
}
