//! A run aborted right after any host-changing step (`BERTH_CRASH_AT=N`: each file's rename,
//! the daemon-reload, each unit operation) leaves a host that the next run converges: the same
//! files as an uninterrupted run, no temporary file, every restart the new files need, and
//! `status` saying converged. Needs no root: `--root` and `--no-host-actions` against berth-sim.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_e2e::agent::{bin, fedora_root, tree, Region};

const NODE: &str = "fed-minion";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `run --once --no-host-actions` of [`NODE`] with the debug log (which numbers the steps).
fn run(region: &Region, root: &Path, crash_at: Option<usize>) -> Output {
    let mut c = Command::new(bin("berth-agent"));
    c.args(["run", "--once", "--no-host-actions", "--root"])
        .arg(root)
        .args(["--imds-endpoint", &region.sim.imds_url(NODE).unwrap()])
        .args(["--ec2-endpoint", &region.sim.ec2_url()])
        .env("BERTH_LOG", "debug");
    if let Some(n) = crash_at {
        c.env("BERTH_CRASH_AT", n.to_string());
    }
    c.output().unwrap()
}

/// The steps a run logged (`step N: WHAT`), in order.
fn steps(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once("debug: step ").map(|(_, s)| s))
        .filter_map(|s| s.split_once(": ").map(|(_, what)| what.to_string()))
        .collect()
}

/// The units a `--no-host-actions` run restarted (its recorded actions on stdout).
fn restarts(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("recorded host action: "))
        .filter_map(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .filter(|v| v["action"] == "unit" && v["op"] == "restart")
        .filter_map(|v| v["unit"].as_str().map(str::to_string))
        .collect()
}

fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().contains(".berth-") {
                found.push(e.path());
            }
        }
    }
    found
}

fn status_json(root: &Path) -> serde_json::Value {
    let out = Command::new(bin("berth-agent"))
        .args(["status", "--format", "json", "--root"])
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_run_aborted_after_any_step_converges_on_the_next() {
    let region = Region::seed();
    let reference = fedora_root();
    let before = tree(reference.path());
    let out = run(&region, reference.path(), None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = tree(reference.path());
    let all_steps = steps(&text(&out.stderr));
    let want_restarts = restarts(&text(&out.stdout));
    let files: Vec<String> = all_steps
        .iter()
        .filter_map(|s| s.strip_prefix("file /").map(str::to_string))
        .collect();
    assert!(
        files.len() >= 3,
        "a first run writes several files: {all_steps:?}"
    );
    assert!(!want_restarts.is_empty(), "{}", text(&out.stdout));

    for n in 1..=all_steps.len() {
        let root = fedora_root();
        let crashed = run(&region, root.path(), Some(n));
        let log = text(&crashed.stderr);
        assert!(!crashed.status.success(), "step {n} did not abort:\n{log}");
        assert!(
            log.contains(&format!(
                "BERTH_CRASH_AT={n}: aborting after {}",
                all_steps[n - 1]
            )),
            "step {n}:\n{log}"
        );
        // Between two renames: the files of the steps done are new, the others still old.
        let now = tree(root.path());
        for (i, f) in files.iter().enumerate() {
            if i < n {
                assert_eq!(now.get(f), want.get(f), "{f} after a crash at step {n}");
            } else {
                assert_eq!(now.get(f), before.get(f), "{f} after a crash at step {n}");
            }
        }
        let st = status_json(root.path());
        assert_ne!(st["phase"], "converged", "step {n}: {st}");

        let next = run(&region, root.path(), None);
        assert!(
            next.status.success(),
            "the run after a crash at step {n}: {}",
            text(&next.stderr)
        );
        assert_eq!(tree(root.path()), want, "files after a crash at step {n}");
        assert_eq!(temp_files(root.path()), Vec::<PathBuf>::new(), "step {n}");
        // A unit whose file was written before the crash is still restarted: the restarts
        // were in the state before the first rename.
        let done = restarts(&text(&next.stdout));
        assert!(
            done.is_superset(&want_restarts),
            "after a crash at step {n}: restarted {done:?}, want {want_restarts:?}"
        );
        let st = status_json(root.path());
        assert_eq!(st["phase"], "converged", "step {n}: {st}");
        assert_eq!(
            st["pending_restarts"],
            serde_json::json!([]),
            "step {n}: {st}"
        );
    }
    eprintln!(
        "aborted after each of {} steps ({} renames) of a first converge",
        all_steps.len(),
        files.len()
    );
}
