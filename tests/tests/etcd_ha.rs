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
        assert!(
            out.status.success(),
            "master m{}: {}\n--- etcd journal\n{}",
            i + 1,
            describe(out),
            journal_tail(&ha.masters[i].etcd_journal())
        );
    }
    eprintln!(
        "{n} masters launched at once: converged in {:?}",
        t.elapsed()
    );
    assert!(ha.wait_healthy(&all, HEALTHY), "the cluster is not healthy");
    ha
}

#[test]
fn three_masters_launched_at_once_form_one_cluster() {
    if !have_root("three_masters_launched_at_once_form_one_cluster") {
        return;
    }
    let mut ha = Ha::new("form3");
    ha.launch(3);
    let all = [0, 1, 2];
    // A second agent on m3 at the same time as the first: both converge on one member.
    let outs = ha.converge_all(&[0, 1, 2, 2]);
    let mut said = String::new();
    for (i, out) in [0, 1, 2, 2].iter().zip(&outs) {
        assert!(out.status.success(), "master m{}: {}", i + 1, describe(out));
        said.push_str(&String::from_utf8_lossy(&out.stderr));
        said.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    assert!(ha.wait_healthy(&all, HEALTHY), "the cluster is not healthy");
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
    // Status and plan show the tier.
    let status = ha.status(0);
    assert!(status.contains("etcd: healthy"), "{status}");
    let plan = ha.masters[0]
        .agent(&["plan", "--format", "json"])
        .args(["--ssm-endpoint", &ha.region.ec2_url()])
        .output()
        .unwrap();
    assert!(plan.status.success(), "{}", describe(&plan));
    let report: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(report["etcd"]["next_step"]["step"], "healthy", "{report}");
    assert_eq!(
        report["etcd"]["record"]["members"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // No key material in any output, the state or status: not the CA's key, not a member's.
    let (ca_json, _) = ha
        .region
        .sim()
        .parameter(berth_e2e::ha::CA_PARAMETER)
        .unwrap();
    let ca = berth_agent::etcd::pki::ClusterCa::parse(&ca_json).unwrap();
    let key_body: Vec<&str> = ca.key.lines().filter(|l| !l.starts_with("-----")).collect();
    said.push_str(&status);
    said.push_str(&String::from_utf8_lossy(&plan.stdout));
    said.push_str(&String::from_utf8_lossy(&plan.stderr));
    for m in &ha.masters {
        let state_dir = m.ct.path("/var/lib/berth");
        for e in std::fs::read_dir(&state_dir).unwrap().flatten() {
            for f in [e.path().join("state.json"), e.path()] {
                if f.is_file() {
                    said.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
                }
            }
        }
    }
    assert!(
        !said.contains("PRIVATE KEY"),
        "a key reached an output or the state"
    );
    for line in key_body {
        assert!(
            !said.contains(line),
            "the CA key reached an output or the state"
        );
    }
    // Key files are 0600, the etcd keys owned by etcd.
    for f in ["server.key", "peer.key", "client.key"] {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(ha.masters[0].ct.path(&format!("/etc/etcd/pki/{f}"))).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600, "{f}");
    }
}

/// The last lines of an etcd journal, without the settings etcd echoes at each start.
fn journal_tail(j: &str) -> String {
    let lines: Vec<&str> = j
        .lines()
        .filter(|l| !l.contains("recognized and used environment variable"))
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Every master's agent, each once; all must converge.
fn converge_ok(ha: &Ha, which: &[usize]) {
    for (i, out) in which.iter().zip(ha.converge_all(which)) {
        assert!(
            out.status.success(),
            "master m{}: {}\n--- etcd journal\n{}",
            i + 1,
            describe(&out),
            journal_tail(&ha.masters[*i].etcd_journal())
        );
    }
}

#[test]
fn a_terminated_master_is_replaced_on_its_address_and_on_a_new_one() {
    if !have_root("a_terminated_master_is_replaced_on_its_address_and_on_a_new_one") {
        return;
    }
    let mut ha = formed("replace", 3);
    ha.put(0, "/berth-test/before", "kept");

    // m3 terminated; its replacement m4 gets m3's address before any agent healed the cluster:
    // the dead member holding m4's peer URL is removed first, then m4 joins.
    let host = ha.masters[2].ip.octets()[3];
    assert_eq!(ha.replace(2, "m4", host), 3);
    let t = Instant::now();
    converge_ok(&ha, &[3]);
    eprintln!(
        "replacement on the same address joined in {:?}",
        t.elapsed()
    );
    converge_ok(&ha, &[0, 1, 3]);
    assert_eq!(ha.voters(&[0, 1, 3]), ha.ids(&[0, 1, 3]));
    assert!(ha.wait_healthy(&[0, 1, 3], HEALTHY));

    // m2 terminated; its replacement m5 gets a new address: m5 joins, the leader's agent removes
    // m2 (EC2 says terminated).
    let host = ha.next_host();
    assert_eq!(ha.replace(1, "m5", host), 4);
    // m5 waits while m2 is still a member (etcd refuses adds while a voter is unreachable);
    // the leader's agent, running at the same time, removes m2, and m5 joins.
    let t = Instant::now();
    converge_ok(&ha, &[0, 3, 4]);
    eprintln!(
        "replacement on a new address joined and the dead member left in {:?}",
        t.elapsed()
    );
    assert_eq!(ha.voters(&[0, 3, 4]), ha.ids(&[0, 3, 4]));
    assert!(ha.wait_healthy(&[0, 3, 4], HEALTHY));
    for i in [0, 3, 4] {
        assert_eq!(ha.get(i, "/berth-test/before").as_deref(), Some("kept"));
    }
}

#[test]
fn three_to_five_to_three_keeps_the_data() {
    if !have_root("three_to_five_to_three_keeps_the_data") {
        return;
    }
    let mut ha = formed("grow", 3);
    ha.put(1, "/berth-test/written-at-3", "still here");
    let added = ha.launch(2);
    let t = Instant::now();
    converge_ok(&ha, &added);
    eprintln!(
        "3 -> 5: two masters launched at once joined in {:?}",
        t.elapsed()
    );
    let all: Vec<usize> = (0..5).collect();
    assert_eq!(ha.voters(&all), ha.ids(&all));
    assert!(ha.wait_healthy(&all, HEALTHY));

    // Two of the original three terminated at once: quorum (3 of 5) holds, and the leader's
    // agent removes them one at a time.
    for i in [0, 1] {
        ha.terminate(i);
    }
    let left = [2, 3, 4];
    let t = Instant::now();
    converge_ok(&ha, &left);
    eprintln!("5 -> 3: two dead members removed in {:?}", t.elapsed());
    assert_eq!(ha.voters(&left), ha.ids(&left));
    assert!(ha.wait_healthy(&left, HEALTHY));
    for i in left {
        assert_eq!(
            ha.get(i, "/berth-test/written-at-3").as_deref(),
            Some("still here")
        );
    }
}

#[test]
fn a_master_whose_data_is_lost_is_removed_and_added_again() {
    if !have_root("a_master_whose_data_is_lost_is_removed_and_added_again") {
        return;
    }
    let mut ha = formed("dataloss", 3);
    ha.put(0, "/berth-test/k", "v");
    let all = [0, 1, 2];
    let id_of = |ha: &mut Ha, name: &str| {
        ha.member_list(&[0])
            .1
            .into_iter()
            .find(|m| m.name == name)
            .map(|m| m.id)
    };
    let m3 = ha.masters[2].instance_id.clone();
    let before = id_of(&mut ha, &m3).unwrap();

    // A reboot with its data: the same member, no membership change.
    let ls = |ha: &Ha| {
        let out = std::process::Command::new("find")
            .arg(ha.masters[2].ct.path("/var/lib/etcd"))
            .args(["-printf", "%u:%g %m %s %p\\n"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eprintln!("before kill:\n{}", ls(&ha));
    ha.masters[2].kill();
    eprintln!("after kill:\n{}", ls(&ha));
    ha.masters[2].boot();
    converge_ok(&ha, &[2]);
    assert_eq!(
        id_of(&mut ha, &m3),
        Some(before),
        "a member with its data was re-added"
    );
    assert!(ha.wait_healthy(&all, HEALTHY));

    // The data directory lost: its old member is removed and it joins as a new one.
    ha.masters[2].kill();
    ha.masters[2].wipe_etcd_data();
    ha.masters[2].boot();
    converge_ok(&ha, &[2]);
    let after = id_of(&mut ha, &m3).unwrap();
    assert_ne!(after, before, "the member of the lost data stayed");
    assert_eq!(ha.voters(&all), ha.ids(&all));
    assert!(ha.wait_healthy(&all, HEALTHY));
    assert_eq!(ha.get(2, "/berth-test/k").as_deref(), Some("v"));
}

#[test]
fn a_partitioned_master_is_never_removed_and_a_stopped_one_only_after_the_grace_period() {
    if !have_root(
        "a_partitioned_master_is_never_removed_and_a_stopped_one_only_after_the_grace_period",
    ) {
        return;
    }
    let mut ha = formed("partition", 3);
    let all = [0, 1, 2];
    let name3 = ha.masters[2].name.clone();
    ha.lan.link_down(&name3);
    // Past the grace period (10 s), the instance still running: nobody removes it.
    std::thread::sleep(Duration::from_secs(12));
    converge_ok(&ha, &[0, 1]);
    converge_ok(&ha, &[0, 1]);
    let (_, members) = ha.member_list(&[0, 1]);
    assert_eq!(
        members.len(),
        3,
        "a running instance's member was removed: {members:?}"
    );
    assert!(!ha.healthy(&all), "the partitioned member answers");
    ha.lan.link_up(&name3);
    assert!(ha.wait_healthy(&all, HEALTHY), "the partition did not heal");
    converge_ok(&ha, &all);

    // Stopped (EC2 says so; its etcd is gone): kept within the grace period, removed after.
    let id3 = ha.masters[2].instance_id.clone();
    ha.masters[2].kill();
    ha.region.set_state(&id3, "stopped");
    converge_ok(&ha, &[0, 1]);
    assert_eq!(
        ha.member_list(&[0, 1]).1.len(),
        3,
        "removed within the grace period"
    );
    std::thread::sleep(Duration::from_secs(11));
    converge_ok(&ha, &[0, 1]);
    assert_eq!(ha.voters(&[0, 1]), ha.ids(&[0, 1]));
    let status = ha.status(0);
    assert!(status.contains("etcd: healthy"), "{status}");
}

#[test]
fn with_two_of_three_masters_terminated_the_survivor_needs_a_restore_and_never_seeds() {
    if !have_root(
        "with_two_of_three_masters_terminated_the_survivor_needs_a_restore_and_never_seeds",
    ) {
        return;
    }
    let mut ha = formed("quorum", 3);
    ha.put(0, "/berth-test/k", "v");
    let (cluster_before, _) = ha.member_list(&[0]);
    for i in [1, 2] {
        ha.terminate(i);
    }
    let out = ha.converge(0);
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    let status = ha.status(0);
    assert!(status.contains("needs restore"), "{status}");
    assert!(status.contains("Restoring etcd"), "{status}");
    // Nothing was removed, no cluster was seeded: the survivor still lists three members of
    // the same cluster, and keeps its data.
    let (cluster_after, members) = ha.member_list(&[0]);
    assert_eq!(cluster_after, cluster_before);
    assert_eq!(members.len(), 3);
    assert!(!ha.healthy(&[0]));
    // A master launched now does not seed a second cluster either.
    let new = ha.launch(1)[0];
    let out = ha.converge(new);
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    let answered = ha.etcdctl(&ha.endpoints(&[new]), &["endpoint", "status"]);
    assert!(
        !answered.status.success(),
        "the new master runs a cluster of its own"
    );
    let data = ha.masters[new].ct.path("/var/lib/etcd/default.etcd/member");
    assert!(
        !data.exists(),
        "the new master created an etcd data directory"
    );
}

/// Puts master `i` back as it was before its first run: its member (if any) removed through
/// the others, etcd stopped, its data, certificates, etcd.conf and berth state gone, its
/// `/etc/hosts` as launched.
fn reset_joiner(ha: &mut Ha, i: usize, hosts: Option<&[u8]>, others: &[usize]) {
    let _ = ha.masters[i]
        .ct
        .exec(&["systemctl", "stop", "etcd.service"]);
    let peer = format!("https://{}:2380", ha.masters[i].ip);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, members) = ha.member_list(others);
        let Some(m) = members.iter().find(|m| m.peer_urls.contains(&peer)) else {
            break;
        };
        let id = format!("{:x}", m.id);
        let out = ha.etcdctl(&ha.endpoints(others), &["member", "remove", &id]);
        if out.status.success() {
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "cannot remove the joiner's member: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let ct = &ha.masters[i].ct;
    for dir in ["/var/lib/etcd", "/etc/etcd/pki", "/var/lib/berth"] {
        let p = ct.path(dir);
        if p.exists() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap().path();
                if e.is_dir() {
                    std::fs::remove_dir_all(&e).unwrap();
                } else {
                    std::fs::remove_file(&e).unwrap();
                }
            }
        }
    }
    let _ = std::fs::remove_file(ct.path("/etc/etcd/etcd.conf"));
    match hosts {
        Some(h) => std::fs::write(ct.path("/etc/hosts"), h).unwrap(),
        None => {
            let _ = std::fs::remove_file(ct.path("/etc/hosts"));
        }
    }
}

#[test]
fn a_join_killed_after_any_step_converges_on_the_next_run_with_no_orphan_member() {
    if !have_root("a_join_killed_after_any_step_converges_on_the_next_run_with_no_orphan_member") {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let mut ha = formed("crash", 2);
    let joiner = ha.launch(1)[0];
    let hosts = std::fs::read(ha.masters[joiner].ct.path("/etc/hosts")).ok();
    let all = [0, 1, joiner];
    let mut steps = Vec::new();
    for n in 1.. {
        if n > 1 {
            reset_joiner(&mut ha, joiner, hosts.as_deref(), &[0, 1]);
        }
        let crashed = ha.converge_with(joiner, &[("BERTH_CRASH_AT", &n.to_string())]);
        if crashed.status.success() {
            break;
        }
        assert_eq!(
            crashed.status.signal(),
            Some(libc::SIGKILL),
            "step {n}: {}",
            describe(&crashed)
        );
        let stderr = String::from_utf8_lossy(&crashed.stderr);
        let marker = format!("BERTH_CRASH_AT={n}: aborting after ");
        let what = stderr
            .lines()
            .find_map(|l| l.split_once(&marker).map(|(_, w)| w.to_string()))
            .unwrap_or_else(|| panic!("step {n} not reached: {}", describe(&crashed)));
        // The next run converges: three started voters, no learner, no unstarted member.
        let out = ha.converge(joiner);
        assert!(
            out.status.success(),
            "after a kill at step {n} ({what}): {}\n--- etcd journal\n{}",
            describe(&out),
            journal_tail(&ha.masters[joiner].etcd_journal())
        );
        assert!(ha.wait_healthy(&all, HEALTHY), "after step {n} ({what})");
        assert_eq!(ha.voters(&all), ha.ids(&all), "after step {n} ({what})");
        steps.push(what);
        assert!(n < 40, "a join of more than 40 steps: {steps:?}");
    }
    eprintln!(
        "killed after each of {} steps of a join: {steps:?}",
        steps.len()
    );
    for needed in ["add learner", "restart etcd.service", "promote"] {
        assert!(
            steps.iter().any(|s| s == needed),
            "the join never reached `{needed}`: {steps:?}"
        );
    }
}

#[test]
fn the_readme_restore_brings_a_cluster_back_from_the_agents_snapshot() {
    if !have_root("the_readme_restore_brings_a_cluster_back_from_the_agents_snapshot") {
        return;
    }
    let mut ha = formed("restore", 3);
    ha.put(0, "/berth-test/k", "restored");
    // The next snapshot is due (the interval is an hour): the agent takes it at its next run.
    let snaps = ha.masters[0].ct.path("/var/lib/berth/etcd-snapshots");
    std::fs::remove_dir_all(&snaps).unwrap();
    converge_ok(&ha, &[0]);
    assert!(ha
        .status(0)
        .contains("last snapshot: /var/lib/berth/etcd-snapshots/snapshot-"));
    for i in [1, 2] {
        ha.terminate(i);
    }
    let out = ha.converge(0);
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));

    // README, "Restoring etcd", on the survivor.
    let m = &ha.masters[0];
    let script = format!(
        "set -e
systemctl stop etcd
snap=$(ls /var/lib/berth/etcd-snapshots/snapshot-*.db | tail -n 1)
mv /var/lib/etcd/default.etcd /var/lib/etcd/default.etcd.lost-$(date +%s)
ETCDCTL_API=3 etcdctl snapshot restore \"$snap\" --name {id} \
    --data-dir /var/lib/etcd/default.etcd \
    --initial-cluster {id}=https://{ip}:2380 \
    --initial-advertise-peer-urls https://{ip}:2380 \
    --initial-cluster-token berth-ha-restored
chown -R etcd:etcd /var/lib/etcd/default.etcd
",
        id = m.instance_id,
        ip = m.ip
    );
    let out = m.ct.exec(&["sh", "-c", &script]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    converge_ok(&ha, &[0]);
    assert_eq!(ha.voters(&[0]), ha.ids(&[0]));
    // Two new masters join the restored cluster; the key written before the loss is there.
    let new = ha.launch(2);
    converge_ok(&ha, &[0, new[0], new[1]]);
    let all = [0, new[0], new[1]];
    assert_eq!(ha.voters(&all), ha.ids(&all));
    assert!(ha.wait_healthy(&all, HEALTHY));
    for i in all {
        assert_eq!(ha.get(i, "/berth-test/k").as_deref(), Some("restored"));
    }
}
