//! The `kubeadm` profile's Kubernetes tier against real Kubernetes 1.20 (built from Debian's
//! source) and real etcd 3.4: masters and minions are booted containers with real systemd on
//! one LAN, the agent runs inside each, and the cluster is judged from outside with `kubectl`
//! through each master's API server. Minions' node agent is kubemark's hollow kubelet (see
//! `tests/src/kube.rs`).
//!
//! Root only (network namespaces, systemd-nspawn); skipped loudly without root, never under CI.

use std::time::Duration;

use berth_e2e::ha::describe;
use berth_e2e::kube::{Kube, N, TICKET_PARAMETER};
use berth_e2e::nspawn::have_root;

/// Every run's output and every state file is free of the join token.
fn assert_no_token(k: &Kube, token: &str, outputs: &[&std::process::Output]) {
    let secret = token.split('.').nth(1).expect("a token has two halves");
    for o in outputs {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!text.contains(secret), "the token's secret in an output:\n{text}");
    }
    for m in k.ha.masters.iter().chain(&k.minions) {
        let dir = m.ct.path("/var/lib/berth");
        for entry in walk(&dir) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(secret),
                "the token's secret in {}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn ticket(k: &Kube) -> serde_json::Value {
    let (json, _) = k
        .ha
        .region
        .sim()
        .parameter(TICKET_PARAMETER)
        .expect("the masters published a join ticket");
    serde_json::from_str(&json).unwrap()
}

#[test]
fn three_masters_and_two_minions_form_a_cluster_that_survives_a_master() {
    if !have_root("three_masters_and_two_minions_form_a_cluster_that_survives_a_master") {
        return;
    }
    let mut k = Kube::new("kha", 3600);
    let all = k.launch(3, 2);
    k.converge_until_ready(&all, 12);

    let minions: Vec<String> = k.minions.iter().map(|m| m.instance_id.clone()).collect();
    for via in 0..3 {
        let took = k
            .wait_ready(via, &minions, Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("every minion Ready through master {via} after {took:?}");
    }
    let t = ticket(&k);
    let token = t["token"].as_str().unwrap().to_string();
    let status = k.status(N::M(0));
    assert!(status.contains("API endpoint: api.berth.internal:6443"), "{status}");
    assert!(status.contains("join token expires"), "{status}");
    let plan = k.plan(N::W(0));
    assert!(plan.status.success(), "{}", describe(&plan));
    let wstatus = k.status(N::W(0));
    assert!(wstatus.contains("node: joined"), "{wstatus}");
    assert_no_token(&k, &token, &[&plan]);
}
