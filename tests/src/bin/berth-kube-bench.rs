//! `berth-kube-bench`: how long the `kubeadm` profile takes from instances launched to every
//! node `Ready`, and from one more minion launched to its node `Ready`, and what the control
//! plane costs in memory per master; printed, never asserted in tests.
//!
//! Each repetition runs on a fresh LAN of the end-to-end suite (`berth_e2e::kube`): 3 masters
//! and 2 minions as booted systemd-nspawn containers, berth-sim as EC2, IMDS and Parameter
//! Store, real etcd 3.4 and Kubernetes 1.20 (the real kubelet over containerd on minions), and
//! `kubectl get nodes` from outside, every 500 ms, as the judge.
//!
//! - boot: the 5 containers launched at once, until systemd in each is running;
//! - converge: every node's agent (`run --once`) at once, round after round for the nodes that
//!   did not exit 0 yet (a minion waits for the join ticket; its daemon would retry at its next
//!   poll, here at once), until every agent exited 0;
//! - all Ready: from the first round's start until both minions are `Ready`;
//! - late minion: one more minion launched (boot timed apart), then its agent, until its node is
//!   `Ready`;
//! - memory: VmRSS of kube-apiserver, kube-controller-manager, kube-scheduler and etcd on each
//!   master, and of the kubelet and containerd on each minion.
//!
//! Run as root: `cargo build -p berth-e2e --bin berth-kube-bench --bin berth-agent && \
//! target/debug/berth-kube-bench --reps 3`. Needs the caches of `tests/setup/kubernetes.sh`
//! and `tests/setup/runtime.sh`.

use std::time::{Duration, Instant};

use berth_e2e::kube::{Kube, N};

const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// VmRSS in MiB of `unit`'s main process inside node `n`'s container.
fn rss_mib(k: &Kube, n: N, unit: &str) -> Option<f64> {
    let script =
        format!("p=$(systemctl show -p MainPID --value {unit}); grep VmRSS /proc/$p/status");
    let o = k.node(n).ct.exec(&["sh", "-c", &script]);
    let text = String::from_utf8_lossy(&o.stdout);
    let kb: f64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut reps = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => reps = args.next().and_then(|v| v.parse().ok()).expect("--reps N"),
            other => panic!("unknown argument {other}; usage: berth-kube-bench [--reps N]"),
        }
    }
    let (mut all_ready, mut late_ready, mut converge) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 1..=reps {
        let mut k = Kube::new("kbench", 3600);
        let t = Instant::now();
        let all = k.launch(3, 2);
        let boot = t.elapsed();
        let start = Instant::now();
        let mut pending = all.clone();
        let mut rounds = 0;
        while !pending.is_empty() {
            rounds += 1;
            assert!(rounds <= 40, "not converged after 40 rounds: {pending:?}");
            let outs = k.converge_all(&pending);
            pending = pending
                .iter()
                .zip(&outs)
                .filter(|(_, o)| !o.status.success())
                .map(|(n, _)| *n)
                .collect();
        }
        let converged = start.elapsed();
        let minions: Vec<String> = k.minions.iter().map(|m| m.instance_id.clone()).collect();
        k.wait_ready(0, &minions, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let ready = start.elapsed();

        let t = Instant::now();
        let late = k.launch(0, 1)[0];
        let late_boot = t.elapsed();
        let t = Instant::now();
        let out = k.converge(late);
        assert!(out.status.success(), "{}", berth_e2e::ha::describe(&out));
        let joined = t.elapsed();
        let mut want = minions.clone();
        want.push(k.node(late).instance_id.clone());
        k.wait_ready(0, &want, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let late_total = t.elapsed();

        println!(
            "rep {rep}: boot {:.1} s; agents converged {:.1} s ({rounds} rounds); all Ready \
             {:.1} s after the first agent start; late minion: boot {:.1} s, agent {:.1} s, \
             Ready {:.1} s after its agent started",
            boot.as_secs_f64(),
            converged.as_secs_f64(),
            ready.as_secs_f64(),
            late_boot.as_secs_f64(),
            joined.as_secs_f64(),
            late_total.as_secs_f64()
        );
        for i in 0..3 {
            let parts: Vec<(String, f64)> = [
                "kube-apiserver.service",
                "kube-controller-manager.service",
                "kube-scheduler.service",
                "etcd.service",
            ]
            .iter()
            .map(|u| {
                (
                    u.trim_end_matches(".service").to_string(),
                    rss_mib(&k, N::M(i), u).unwrap_or(f64::NAN),
                )
            })
            .collect();
            let total: f64 = parts.iter().map(|(_, v)| v).sum();
            let shown: Vec<String> = parts.iter().map(|(n, v)| format!("{n} {v:.0}")).collect();
            println!("  master {i}: {total:.0} MiB ({})", shown.join(", "));
        }
        for i in 0..k.minions.len() {
            let kubelet = rss_mib(&k, N::W(i), "kubelet.service").unwrap_or(f64::NAN);
            let containerd = rss_mib(&k, N::W(i), "containerd.service").unwrap_or(f64::NAN);
            println!("  minion {i}: kubelet {kubelet:.0} MiB, containerd {containerd:.0} MiB");
        }
        all_ready.push(ready.as_secs_f64());
        late_ready.push(late_total.as_secs_f64());
        converge.push(converged.as_secs_f64());
    }
    println!(
        "median of {reps}: agents converged {:.1} s; all Ready {:.1} s; late minion Ready {:.1} s",
        median(&mut converge),
        median(&mut all_ready),
        median(&mut late_ready)
    );
}
