//! The README's first command, `berth-sim demo`, runs to the end and shows what it promises.

use berth_e2e::agent::bin;

#[test]
fn demo_runs_the_seed_cluster_zero_touch() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("berth-sim"))
        .args(["demo", "--agent"])
        .arg(bin("berth-agent"))
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expect in [
        "KUBELET_ADDRESSES=\"--machines=fed-minion\"",
        "fed-master: KUBELET_ADDRESSES=\"--machines=fed-minion,fed-minion-2\"",
        "fed-master: KUBELET_ADDRESSES=\"--machines=fed-minion-2\"",
        "KUBELET_HOSTNAME=\"--hostname_override=fed-minion-2\"",
        "Requires=docker.service",
        "phase:    converged",
    ] {
        assert!(text.contains(expect), "{expect:?} missing from:\n{text}");
    }
    // fed-minion's line left fed-master's hosts block after it was stopped.
    let hosts = std::fs::read_to_string(dir.path().join("fed-master/etc/hosts")).unwrap();
    assert!(hosts.contains("172.30.0.11 fed-minion-2\n") && !hosts.contains(" fed-minion\n"));
}
