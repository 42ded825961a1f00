//! The `kubeadm` profile's HA etcd tier, end to end: every master a systemd-nspawn container with
//! real systemd in its own network namespace on one bridge, Debian's etcd 3.4 under a
//! Fedora-shaped etcd.service, the real berth-agent on each, berth-sim as EC2, IMDS and Parameter
//! Store (SigV4 checked, docs/iam.md's rules enforced). Every test judges the cluster with
//! `etcdctl member list`, `endpoint health` and a written key, from the bridge namespace with a
//! client certificate of its own; never only from the agent's report. Needs root.

use std::time::{Duration, Instant};

use berth_e2e::ha::{describe, Ha};
use berth_e2e::nspawn::have_root;

/// A healthy cluster answers `endpoint health` within a second of its last member's start; the
/// margin is for a loaded CI machine.
const HEALTHY: Duration = Duration::from_secs(30);

fn formed(tag: &str, n: usize) -> Ha {
    let mut ha = Ha::new(tag);
    let all = ha.launch(n);
    let t = Instant::now();
    let outs = ha.converge_all(&all);
    for (i, out) in outs.iter().enumerate() {
        assert!(out.status.success(), "master m{}: {}", i + 1, describe(out));
    }
    eprintln!("{n} masters launched at once: converged in {:?}", t.elapsed());
    assert!(ha.wait_healthy(&all, HEALTHY), "the cluster is not healthy");
    ha
}

#[test]
fn three_masters_launched_at_once_form_one_cluster() {
    if !have_root("three_masters_launched_at_once_form_one_cluster") {
        return;
    }
    let mut ha = formed("form3", 3);
    let all = [0, 1, 2];
    // One cluster: every member reports the same cluster id and lists the same three voters.
    let mut ids = std::collections::BTreeSet::new();
    for i in all {
        let (cluster, _) = ha.member_list(&[i]);
        ids.insert(cluster);
    }
    assert_eq!(ids.len(), 1, "more than one cluster id: {ids:?}");
    assert_eq!(ha.voters(&all), ha.ids(&all));
    ha.put(0, "/berth-test/formed", "yes");
    for i in all {
        assert_eq!(ha.get(i, "/berth-test/formed").as_deref(), Some("yes"));
    }
    // A second run changes nothing and stays healthy.
    for out in ha.converge_all(&all) {
        assert!(out.status.success(), "{}", describe(&out));
    }
    assert_eq!(ha.voters(&all), ha.ids(&all));
    // Status shows the tier; no key material anywhere in it.
    let status = ha.status(0);
    assert!(status.contains("etcd: healthy"), "{status}");
    assert!(!status.contains("PRIVATE KEY"), "{status}");
    // Key files are 0600, the etcd keys owned by etcd.
    for f in ["server.key", "peer.key", "client.key"] {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(ha.masters[0].ct.path(&format!("/etc/etcd/pki/{f}"))).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600, "{f}");
    }
}
