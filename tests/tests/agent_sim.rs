//! The real `berth-agent` against the emulated region: golden files for the seed's cluster,
//! idempotence, membership changes, bad input and hostile peers.
//!
//! Golden files live in `tests/golden/legacy-2015/<node>/`. To regenerate them after a
//! deliberate change of the profile: `BERTH_BLESS=1 cargo test -p berth-e2e --test agent_sim golden`
//! and review the diff.

use std::collections::BTreeMap;
use std::path::Path;

use berth_e2e::agent::{fedora_root, stamps, tree, workspace, Region};
use berth_sim::{ClusterSpec, InstanceSpec, Listener};

fn seed_with_minion_2() -> ClusterSpec {
    let mut spec = ClusterSpec::seed();
    let m2 = spec.not_launched("fed-minion-2").unwrap();
    spec.instances.push(m2);
    spec.not_launched.clear();
    spec
}

fn golden_dir(node: &str) -> std::path::PathBuf {
    workspace().join("tests/golden/legacy-2015").join(node)
}

fn check_golden(node: &str, root: &Path) {
    let got = tree(root);
    let dir = golden_dir(node);
    if std::env::var_os("BERTH_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        for (rel, bytes) in &got {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        return;
    }
    let want = tree(&dir);
    assert!(!want.is_empty(), "no golden files in {}", dir.display());
    let got_names: Vec<_> = got.keys().collect();
    let want_names: Vec<_> = want.keys().collect();
    assert_eq!(got_names, want_names, "{node}: the set of files differs");
    for (rel, bytes) in &want {
        assert!(
            got[rel] == *bytes,
            "{node}: {rel} differs from the golden copy:\n--- golden\n{}\n--- got\n{}",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&got[rel])
        );
    }
}

#[test]
fn golden_seed_cluster_every_role() {
    let region = Region::start(seed_with_minion_2());
    for node in ["fed-master", "fed-minion", "fed-minion-2"] {
        let root = fedora_root();
        region.converge(node, root.path());
        check_golden(node, root.path());
    }
    // The seed's own values, spelled out, so the golden copies cannot drift from the walkthrough.
    let master =
        std::fs::read_to_string(golden_dir("fed-master").join("etc/kubernetes/controller-manager"))
            .unwrap();
    assert!(master.contains("KUBELET_ADDRESSES=\"--machines=fed-minion,fed-minion-2\"\n"));
    let config =
        std::fs::read_to_string(golden_dir("fed-minion").join("etc/kubernetes/config")).unwrap();
    for line in [
        "KUBE_ETCD_SERVERS=\"--etcd_servers=http://fed-master:4001\"",
        "KUBE_LOGTOSTDERR=\"--logtostderr=true\"",
        "KUBE_LOG_LEVEL=\"--v=0\"",
        "KUBE_ALLOW_PRIV=\"--allow_privileged=false\"",
    ] {
        assert!(config.lines().any(|l| l == line), "missing {line}");
    }
    let api =
        std::fs::read_to_string(golden_dir("fed-master").join("etc/kubernetes/apiserver")).unwrap();
    let vars: Vec<&str> = api
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert_eq!(
        vars,
        [
            "KUBE_API_ADDRESS=\"--address=0.0.0.0\"",
            "KUBE_API_PORT=\"--port=8080\"",
            "KUBE_MASTER=\"--master=http://fed-master:8080\"",
            "KUBELET_PORT=\"--kubelet_port=10250\"",
            "KUBE_SERVICE_ADDRESSES=\"--portal_net=10.254.0.0/16\"",
            "KUBE_API_ARGS=\"\"",
        ]
    );
    let kubelet =
        std::fs::read_to_string(golden_dir("fed-minion-2").join("etc/kubernetes/kubelet")).unwrap();
    assert!(kubelet.contains("KUBELET_HOSTNAME=\"--hostname_override=fed-minion-2\"\n"));
    let unit = std::fs::read_to_string(
        golden_dir("fed-minion").join("etc/systemd/system/kubelet.service"),
    )
    .unwrap();
    assert!(unit.contains("Requires=docker.service\n") && !unit.contains("docker.socket\n"));
    let hosts = std::fs::read_to_string(golden_dir("fed-minion").join("etc/hosts")).unwrap();
    assert!(
        hosts.starts_with("127.0.0.1   localhost"),
        "the host's own lines stay first"
    );
    assert!(hosts
        .contains("172.30.0.246 fed-master\n172.30.0.43 fed-minion\n172.30.0.11 fed-minion-2\n"));
    let etcd =
        std::fs::read_to_string(golden_dir("fed-master").join("etc/etcd/etcd.conf")).unwrap();
    assert!(
        etcd.contains("name = \"fed-master\"\n") && etcd.contains("bind_addr = \"0.0.0.0:4001\"\n")
    );
}

fn unit_actions(plan: &serde_json::Value) -> BTreeMap<String, Vec<String>> {
    plan["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["unit"].as_str().unwrap().to_string(),
                u["actions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn file_actions(plan: &serde_json::Value) -> BTreeMap<String, String> {
    plan["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn restarts(plan: &serde_json::Value) -> Vec<String> {
    unit_actions(plan)
        .into_iter()
        .filter(|(_, a)| a.iter().any(|x| x == "restart"))
        .map(|(u, _)| u)
        .collect()
}

#[test]
fn first_plan_then_second_run_is_idempotent() {
    let region = Region::seed();
    let root = fedora_root();
    let before = tree(root.path());

    let plan = region.plan("fed-master", root.path());
    assert_eq!(tree(root.path()), before, "plan changed the host");
    assert!(
        !root.path().join("var/lib/berth").exists(),
        "plan wrote state"
    );
    let files = file_actions(&plan);
    assert_eq!(files["/etc/kubernetes/controller-manager"], "create");
    assert_eq!(files["/etc/hosts"], "update");
    let units = unit_actions(&plan);
    assert_eq!(units["etcd.service"], ["restart", "enable"]);
    assert_eq!(units["kubelet.service"], ["stop", "disable"]);
    assert_eq!(units["docker.service"], ["stop", "disable"]);
    assert!(plan["upgrade"]
        .as_str()
        .unwrap()
        .starts_with("rpm-ostree upgrade"));

    region.converge("fed-master", root.path());
    let stamped = stamps(root.path());
    let out = region.converge("fed-master", root.path());
    assert_eq!(
        stamps(root.path()),
        stamped,
        "the second run rewrote a file"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 files changed, 0 restarts"));
    let again = region.plan("fed-master", root.path());
    assert!(
        file_actions(&again).values().all(|a| a == "unchanged"),
        "{again}"
    );
    assert!(restarts(&again).is_empty(), "{again}");
    assert!(again["upgrade"].as_str().unwrap().starts_with("done"));
}

#[test]
fn membership_changes_reach_every_node_and_restart_only_what_changed() {
    let region = Region::seed();
    let master = fedora_root();
    let minion = fedora_root();
    region.converge("fed-master", master.path());
    region.converge("fed-minion", minion.path());

    let spec = ClusterSpec::seed().not_launched("fed-minion-2").unwrap();
    region.launch(spec);
    let m2 = fedora_root();
    region.converge("fed-minion-2", m2.path());

    let plan = region.plan("fed-master", master.path());
    let files = file_actions(&plan);
    assert_eq!(files["/etc/kubernetes/controller-manager"], "update");
    assert_eq!(files["/etc/hosts"], "update");
    assert_eq!(files["/etc/kubernetes/config"], "unchanged");
    assert_eq!(restarts(&plan), ["kube-controller-manager.service"]);
    region.converge("fed-master", master.path());
    let cm =
        std::fs::read_to_string(master.path().join("etc/kubernetes/controller-manager")).unwrap();
    assert!(cm.contains("--machines=fed-minion,fed-minion-2\""), "{cm}");

    // A minion's hosts file learns the newcomer, and nothing of the minion restarts.
    let plan = region.plan("fed-minion", minion.path());
    assert_eq!(file_actions(&plan)["/etc/hosts"], "update");
    assert!(restarts(&plan).is_empty(), "{plan}");
    region.converge("fed-minion", minion.path());
    let hosts = std::fs::read_to_string(minion.path().join("etc/hosts")).unwrap();
    assert!(hosts.contains("172.30.0.11 fed-minion-2\n"));

    // fed-minion stops: it leaves the master's machine list and every hosts file.
    region.sim.set_state("fed-minion", "stopped");
    region.converge("fed-master", master.path());
    region.converge("fed-minion-2", m2.path());
    let cm =
        std::fs::read_to_string(master.path().join("etc/kubernetes/controller-manager")).unwrap();
    assert!(cm.contains("--machines=fed-minion-2\""), "{cm}");
    for root in [master.path(), m2.path()] {
        let hosts = std::fs::read_to_string(root.join("etc/hosts")).unwrap();
        assert!(!hosts.contains(" fed-minion\n"), "{hosts}");
    }
}

/// A seed cluster whose fed-minion has `user_data` and/or other tags.
fn seed_with(minion: impl FnOnce(&mut InstanceSpec)) -> Region {
    Region::seed_with(minion)
}

fn assert_refused(region: &Region, needle: &str) {
    let root = fedora_root();
    let before = tree(root.path());
    for args in [&["run", "--once", "--no-host-actions"][..], &["plan"][..]] {
        let out = region.agent("fed-minion", root.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in:\n{err}");
    }
    assert_eq!(tree(root.path()), before, "bad input changed the host");
    // Only the record of the failed run (last-run.json), no instance state.
    assert!(
        !root.path().join("var/lib/berth/current").exists(),
        "bad input wrote state"
    );
}

#[test]
fn malformed_user_data_is_refused_and_changes_nothing() {
    let region = seed_with(|m| m.user_data = Some("cluster: seed\nrole: [minion\n".into()));
    assert_refused(&region, "user-data line ");
}

#[test]
fn unknown_user_data_key_is_refused_with_a_hint() {
    let region = seed_with(|m| m.user_data = Some("upgrade: false\nrol: minion\n".into()));
    assert_refused(
        &region,
        "user-data line 2, column 1: unknown key `rol`; did you mean `role`?",
    );
}

#[test]
fn role_captain_is_refused() {
    let region = seed_with(|m| {
        m.tags.insert("role".into(), "captain".into());
    });
    assert_refused(
        &region,
        "`role` = \"captain\": not a role; use `master` or `minion`",
    );
}

#[test]
fn hostile_peer_names_never_reach_a_file() {
    let mut spec = ClusterSpec::seed();
    let hostile = [
        "x\nKUBE_API_ARGS=--evil",
        "fed\"minion",
        "$(reboot)",
        "two words",
        "a'b",
    ];
    for (i, name) in hostile.iter().enumerate() {
        let mut m = InstanceSpec::new(name, format!("172.30.0.{}", 100 + i).parse().unwrap());
        m.tags.insert("role".into(), "minion".into());
        m.tags.insert("berth:cluster".into(), "seed".into());
        m.iam_role = Some("berth-node".into());
        spec.instances.push(m);
    }
    let region = Region::start(spec);
    let root = fedora_root();
    region.converge("fed-master", root.path());
    let all: Vec<u8> = tree(root.path()).into_values().flatten().collect();
    let text = String::from_utf8_lossy(&all);
    for bad in ["--evil", "\"minion", "$(", "two words", "a'b"] {
        assert!(!text.contains(bad), "{bad:?} reached a file");
    }
    // They are still members, named after their private DNS names.
    let cm =
        std::fs::read_to_string(root.path().join("etc/kubernetes/controller-manager")).unwrap();
    assert!(cm.contains("ip-172-30-0-100,"), "{cm}");
}

#[test]
fn imds_tags_off_falls_back_to_describe_tags() {
    let region = seed_with(|m| m.imds_tags = false);
    let root = fedora_root();
    let plan = region.plan("fed-minion", root.path());
    assert_eq!(plan["tags_from"], "describe-tags");
    assert_eq!(plan["role"], "minion");
    assert!(region
        .sim
        .requests()
        .iter()
        .any(|r| r.listener == Listener::Ec2
            && r.action.as_deref() == Some("DescribeTags")
            && r.signed));
}

#[test]
fn no_master_and_several_masters_are_reported_not_crashes() {
    let region = Region::seed();
    region.sim.set_state("fed-master", "stopped");
    let root = fedora_root();
    let out = region.agent(
        "fed-minion",
        root.path(),
        &["run", "--once", "--no-host-actions"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("no master"), "{err}");
    let state = std::fs::read_to_string(
        root.path()
            .join("var/lib/berth/i-0a1b2c3d4e5f60002/state.json"),
    )
    .unwrap();
    assert!(state.contains("\"phase\": \"waiting\""), "{state}");

    region.sim.set_state("fed-master", "running");
    region.sim.set_tag("fed-minion", "role", Some("minion"));
    let mut spec = ClusterSpec::seed().not_launched("fed-minion-2").unwrap();
    spec.tags.insert("role".into(), "master".into());
    region.launch(spec);
    let out = region.agent(
        "fed-minion",
        root.path(),
        &["run", "--once", "--no-host-actions"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("several masters (fed-master, fed-minion-2)"),
        "{err}"
    );
    assert!(!root.path().join("etc/kubernetes/config").exists());
}

#[test]
fn status_shows_the_cluster_without_the_network() {
    let region = Region::seed();
    let root = fedora_root();
    region.converge("fed-master", root.path());
    drop(region); // no IMDS, no EC2 from here on
    let out = std::process::Command::new(berth_e2e::agent::bin("berth-agent"))
        .args(["status", "--root"])
        .arg(root.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("phase:    converged"), "{text}");
    assert!(
        text.contains("fed-minion               172.30.0.43"),
        "{text}"
    );
    let out = std::process::Command::new(berth_e2e::agent::bin("berth-agent"))
        .args(["status", "--format", "json", "--root"])
        .arg(root.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["phase"], "converged");
    assert_eq!(v["membership"]["nodes"].as_array().unwrap().len(), 2);
}

#[test]
fn ec2_endpoint_from_the_host_config_file() {
    let region = Region::seed();
    let root = fedora_root();
    std::fs::create_dir_all(root.path().join("etc/berth")).unwrap();
    std::fs::write(
        root.path().join("etc/berth/config.yaml"),
        format!("ec2_endpoint: {}\n", region.sim.ec2_url()),
    )
    .unwrap();
    let out = std::process::Command::new(berth_e2e::agent::bin("berth-agent"))
        .args(["run", "--once", "--no-host-actions", "--root"])
        .arg(root.path())
        .args([
            "--imds-endpoint",
            &region.sim.imds_url("fed-minion").unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(root.path().join("etc/kubernetes/kubelet").exists());

    // A bad value in the file is refused before anything is written.
    let bad = fedora_root();
    std::fs::create_dir_all(bad.path().join("etc/berth")).unwrap();
    std::fs::write(
        bad.path().join("etc/berth/config.yaml"),
        "ec2_endpoint: ftp://x/\n",
    )
    .unwrap();
    let out = region.agent(
        "fed-minion",
        bad.path(),
        &["run", "--once", "--no-host-actions"],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/etc/berth/config.yaml: `ec2_endpoint`"));
}

/// The polling rule (agent/src/poll.rs) keeps the whole cluster's DescribeInstances rate within
/// `poll.cluster_requests_per_second`, however many nodes poll: twelve reconcile daemons asked
/// to poll every 50 ms would send 240 requests a second without it.
#[test]
fn cluster_wide_describe_rate_stays_within_the_budget() {
    use std::time::{Duration, Instant};
    let mut spec = ClusterSpec::seed();
    spec.not_launched.clear();
    for i in 0..10 {
        let mut m = InstanceSpec::new(
            &format!("minion-{i}"),
            format!("172.30.0.{}", 100 + i).parse().unwrap(),
        );
        m.tags.insert("role".into(), "minion".into());
        m.tags.insert("berth:cluster".into(), "seed".into());
        m.iam_role = Some("berth-node".into());
        spec.instances.push(m);
    }
    let region = Region::start(spec);
    let budget = 6.0;
    let names: Vec<String> = region
        .sim
        .instances()
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(names.len(), 12);
    let mut roots = Vec::new();
    let mut agents = Vec::new();
    for name in &names {
        let root = fedora_root();
        std::fs::create_dir_all(root.path().join("etc/berth")).unwrap();
        std::fs::write(
            root.path().join("etc/berth/config.yaml"),
            format!("poll:\n  interval_seconds: 0.05\n  cluster_requests_per_second: {budget}\n"),
        )
        .unwrap();
        let child = std::process::Command::new(berth_e2e::agent::bin("berth-agent"))
            .args(["run", "--no-host-actions", "--root"])
            .arg(root.path())
            .args(["--imds-endpoint", &region.sim.imds_url(name).unwrap()])
            .args(["--ec2-endpoint", &region.sim.ec2_url()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        agents.push(child);
        roots.push(root);
    }
    // Past the first convergence of every node (which is immediate, by design), count the
    // requests of a 6 s window.
    std::thread::sleep(Duration::from_secs(2));
    let window = Duration::from_secs(6);
    let from = std::time::SystemTime::now();
    let start = Instant::now();
    std::thread::sleep(window);
    let elapsed = start.elapsed().as_secs_f64();
    let calls = region
        .sim
        .requests()
        .iter()
        .filter(|r| r.action.as_deref() == Some("DescribeInstances") && r.time >= from)
        .count();
    for mut a in agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    let rate = calls as f64 / elapsed;
    eprintln!(
        "{calls} DescribeInstances in {elapsed:.1} s: {rate:.1}/s for a budget of {budget}/s"
    );
    // The expected rate is the budget; jitter and the window's edges allow some excess, far
    // from the 240/s of unbudgeted polling.
    assert!(
        rate <= budget * 1.5,
        "{rate:.1}/s exceeds the budget of {budget}/s"
    );
    assert!(
        rate >= budget * 0.3,
        "{rate:.1}/s: the daemons are not polling"
    );
}
