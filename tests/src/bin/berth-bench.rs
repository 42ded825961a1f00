//! `berth-bench`: the agent's speed figures, printed (never asserted in tests).
//!
//! - `run --once` of one node of a 3-node emulated cluster: wall time and peak RSS of the release
//!   binary, for the first run of an instance (every file written) and for a converged node.
//! - Kept-alive round trips through berth-ec2 to berth-sim (IMDS GET, signed DescribeInstances).
//! - The size of the stripped release binary.
//!
//! Run: `cargo run --release -p berth-e2e --bin berth-bench` (it builds the release agent first).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::agent::{fedora_root, workspace, Region};
use berth_sim::ClusterSpec;

fn release_agent() -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "berth-agent"])
        .current_dir(workspace())
        .status()
        .expect("cargo runs");
    assert!(status.success());
    workspace().join("target/release/berth-agent")
}

/// Runs `cmd`, returning its wall time and peak RSS (KiB) from wait4(2).
// The child is reaped by wait4(2) below, which also gives its rusage; `Child::wait` cannot.
#[allow(clippy::zombie_processes)]
fn measure(cmd: &mut Command) -> (Duration, i64) {
    let start = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid pointers to locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(pid, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "run failed: {status}"
    );
    (wall, usage.ru_maxrss)
}

fn stats(name: &str, mut v: Vec<(Duration, i64)>) {
    v.sort_by_key(|x| x.0);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let rss = v.iter().map(|x| x.1).max().unwrap_or(0);
    println!(
        "{name:<44} n={:<3} median {:>6.2} ms  p90 {:>6.2} ms  max {:>6.2} ms  peak RSS {:.1} MiB",
        v.len(),
        ms(v[v.len() / 2].0),
        ms(v[v.len() * 9 / 10].0),
        ms(v[v.len() - 1].0),
        rss as f64 / 1024.0
    );
}

fn agent_cmd(agent: &Path, region: &Region, node: &str, root: &Path) -> Command {
    let mut c = Command::new(agent);
    c.args(["run", "--once", "--no-host-actions", "--root"])
        .arg(root)
        .args([
            "--imds-endpoint",
            &region.sim.imds_url(node).unwrap(),
            "--ec2-endpoint",
            &region.sim.ec2_url(),
        ]);
    c
}

fn main() {
    let agent = release_agent();
    let mut spec = ClusterSpec::seed();
    let m2 = spec.not_launched("fed-minion-2").unwrap();
    spec.instances.push(m2);
    spec.not_launched.clear();
    let region = Region::start(spec);
    let n = 30;

    for node in ["fed-master", "fed-minion"] {
        let mut first = Vec::new();
        for _ in 0..n {
            let root = fedora_root();
            first.push(measure(&mut agent_cmd(&agent, &region, node, root.path())));
        }
        stats(&format!("run --once, first run ({node})"), first);
        let root = fedora_root();
        measure(&mut agent_cmd(&agent, &region, node, root.path()));
        let converged = (0..n)
            .map(|_| measure(&mut agent_cmd(&agent, &region, node, root.path())))
            .collect();
        stats(&format!("run --once, converged ({node})"), converged);
    }

    // Kept-alive round trips through the shared client.
    region.rt.block_on(async {
        let policy = berth_ec2::RetryPolicy::imds_boot();
        let imds = berth_ec2::ImdsClient::new(
            vec![region.sim.imds_url("fed-master").unwrap().parse().unwrap()],
            policy,
        );
        imds.get("meta-data/instance-id").await.unwrap();
        let start = Instant::now();
        for _ in 0..200 {
            imds.get("meta-data/local-ipv4").await.unwrap();
        }
        println!(
            "{:<44} {:>8.1} µs per call",
            "IMDS GET, kept alive (berth-ec2 → berth-sim)",
            start.elapsed().as_secs_f64() * 1e6 / 200.0
        );
        let creds = imds.credentials().await.unwrap().unwrap();
        let ec2 = berth_ec2::Ec2Client::new(
            region.sim.ec2_url().parse().unwrap(),
            "us-east-1".into(),
            berth_ec2::RetryPolicy::ec2_discovery(),
        );
        ec2.describe_instances(&creds, &[]).await.unwrap();
        let start = Instant::now();
        for _ in 0..200 {
            ec2.describe_instances(&creds, &[]).await.unwrap();
        }
        println!(
            "{:<44} {:>8.1} µs per call",
            "signed DescribeInstances, kept alive",
            start.elapsed().as_secs_f64() * 1e6 / 200.0
        );
    });

    let size = std::fs::metadata(&agent).unwrap().len();
    println!(
        "{:<44} {:.2} MiB ({size} bytes; release profile strips symbols)",
        "berth-agent binary",
        size as f64 / (1024.0 * 1024.0)
    );
}
