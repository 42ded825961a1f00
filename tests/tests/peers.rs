//! Peers that try to shadow a name or an address, against the real `berth-agent` and `berth-sim`.
//!
//! Any instance in the cluster's security group picks its own `Name` tag, and EC2's answer is the
//! only word on its address. These suites check what a user would: the managed block of
//! `/etc/hosts`, the master's `--machines`, and the notes `plan` and `status` show.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use berth_e2e::agent::{bin, fedora_root, Region};
use berth_sim::{ClusterSpec, InstanceSpec};

const BEGIN: &str =
    "# BEGIN berth: cluster nodes, managed by berth-agent; edits inside are replaced";
const END: &str = "# END berth";
const MASTER_ID: &str = "i-0a1b2c3d4e5f60001";
const MINION_ID: &str = "i-0a1b2c3d4e5f60002";

/// A minion of the seed's cluster, as an instance in the security group would launch it.
fn peer(name: &str, ip: &str) -> InstanceSpec {
    let mut m = InstanceSpec::new(name, ip.parse().unwrap());
    m.tags.insert("role".into(), "minion".into());
    m.tags.insert("berth:cluster".into(), "seed".into());
    m.iam_role = Some("berth-node".into());
    m
}

/// The seed's master and minion (fed-minion-2 left out) and `extra`.
fn seed_and(extra: Vec<InstanceSpec>) -> ClusterSpec {
    let mut spec = ClusterSpec::seed();
    spec.not_launched.clear();
    spec.instances.extend(extra);
    spec
}

/// The lines of the managed block of `/etc/hosts`, markers excluded.
fn hosts_block(root: &Path) -> Vec<String> {
    let hosts = std::fs::read_to_string(root.join("etc/hosts")).unwrap();
    let mut lines = hosts.lines().skip_while(|l| *l != BEGIN);
    assert_eq!(lines.next(), Some(BEGIN), "no managed block in:\n{hosts}");
    let block: Vec<String> = lines
        .by_ref()
        .take_while(|l| *l != END)
        .map(str::to_string)
        .collect();
    assert!(
        hosts.lines().any(|l| l == END),
        "the block is not closed:\n{hosts}"
    );
    block
}

/// The master's `--machines=` list.
fn machines(root: &Path) -> Vec<String> {
    let cm = std::fs::read_to_string(root.join("etc/kubernetes/controller-manager")).unwrap();
    let line = cm
        .lines()
        .find(|l| l.starts_with("KUBELET_ADDRESSES="))
        .unwrap_or_else(|| panic!("no KUBELET_ADDRESSES in:\n{cm}"));
    let list = line
        .trim_start_matches("KUBELET_ADDRESSES=\"--machines=")
        .trim_end_matches('"');
    list.split(',').map(str::to_string).collect()
}

fn notes(plan: &serde_json::Value) -> Vec<String> {
    plan["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect()
}

/// `berth-agent status` (text): it reads the state alone.
fn status(root: &Path) -> String {
    let out = Command::new(bin("berth-agent"))
        .args(["status", "--root"])
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn has_note(notes: &[String], parts: &[&str]) -> bool {
    notes.iter().any(|n| parts.iter().all(|p| n.contains(p)))
}

#[test]
fn shadowing_names_and_bad_addresses_never_reach_a_file() {
    let shadowing = [
        ("ec2.us-east-1.amazonaws.com", "172.30.0.101"),
        ("localhost", "172.30.0.102"),
        ("instance-data", "172.30.0.103"),
        ("fed-minion.example.com", "172.30.0.104"),
    ];
    let bad_addresses = [
        ("zero", "0.0.0.0"),
        ("bcast", "255.255.255.255"),
        ("imds", "169.254.169.254"),
        ("public", "203.0.113.10"),
    ];
    let extra: Vec<InstanceSpec> = shadowing
        .iter()
        .chain(&bad_addresses)
        .map(|(n, ip)| peer(n, ip))
        .collect();
    let region = Region::start(seed_and(extra));
    // An instance that EC2 lists at fed-minion's own address, with a higher id. EC2 never gives
    // two live instances one address, and the emulator refuses it too, except over a
    // terminated instance: lend it fed-minion's address that way.
    region.sim.set_state("fed-minion", "terminated");
    let mut twin = peer("twin", "172.30.0.43");
    twin.instance_id = Some("i-0ffffffffffffff00".into());
    region.launch(twin);
    region.sim.set_state("fed-minion", "running");
    region.sim.set_state("twin", "running");

    // The master: every shadowing peer is a member under its DNS name, every bad address and the
    // instance at fed-minion's address are left out.
    let master = fedora_root();
    let plan = region.plan("fed-master", master.path());
    region.converge("fed-master", master.path());
    let want_block = [
        "172.30.0.246 fed-master",
        "172.30.0.43 fed-minion",
        "172.30.0.101 ip-172-30-0-101",
        "172.30.0.102 ip-172-30-0-102",
        "172.30.0.103 ip-172-30-0-103",
        "172.30.0.104 ip-172-30-0-104",
    ];
    assert_eq!(hosts_block(master.path()), want_block);
    assert_eq!(
        machines(master.path()),
        [
            "fed-minion",
            "ip-172-30-0-101",
            "ip-172-30-0-102",
            "ip-172-30-0-103",
            "ip-172-30-0-104"
        ]
    );
    let hosts = std::fs::read_to_string(master.path().join("etc/hosts")).unwrap();
    for (name, _) in &shadowing[..] {
        let block = hosts_block(master.path()).join("\n");
        assert!(!block.contains(name), "{name} is in the block:\n{block}");
    }
    for (_, ip) in &bad_addresses {
        assert!(!hosts.contains(ip), "{ip} reached /etc/hosts:\n{hosts}");
    }
    assert!(
        hosts.starts_with("127.0.0.1   localhost localhost.localdomain\n"),
        "the host's own lines are kept"
    );

    let plan_notes = notes(&plan);
    let status_text = status(master.path());
    for (name, _) in &shadowing {
        let quoted = format!("{name:?}");
        assert!(
            has_note(&plan_notes, &[&quoted, "named after its DNS name"]),
            "no plan note for {name}: {plan_notes:#?}"
        );
        assert!(
            status_text.contains(&quoted),
            "no status note for {name}:\n{status_text}"
        );
    }
    for (_, ip) in &bad_addresses {
        let address = format!("private address {ip} ");
        assert!(
            has_note(&plan_notes, &["left out", &address]),
            "no plan note for {ip}: {plan_notes:#?}"
        );
        assert!(
            status_text.contains(&address),
            "no status note for {ip}:\n{status_text}"
        );
    }
    assert!(has_note(
        &plan_notes,
        &[
            "left out i-0ffffffffffffff00",
            MINION_ID,
            "same private address 172.30.0.43"
        ]
    ));

    // fed-minion itself: the instance at its own address is left out, with a note.
    let minion = fedora_root();
    let plan = region.plan("fed-minion", minion.path());
    region.converge("fed-minion", minion.path());
    let block = hosts_block(minion.path());
    assert_eq!(block, want_block, "{block:#?}");
    assert!(has_note(
        &notes(&plan),
        &[
            "left out i-0ffffffffffffff00",
            "this node's own address 172.30.0.43"
        ]
    ));
    assert!(status(minion.path()).contains("this node's own address 172.30.0.43"));
    let config = std::fs::read_to_string(minion.path().join("etc/kubernetes/kubelet")).unwrap();
    assert!(
        config.contains("--hostname_override=fed-minion\""),
        "{config}"
    );
}

#[test]
fn a_name_never_moves_away_from_a_running_member() {
    // A minion with a lower instance id than every seed node.
    let mut lurker = peer("lurker", "172.30.0.50");
    lurker.instance_id = Some("i-00000000000000001".into());
    let region = Region::start(seed_and(vec![lurker]));
    let master = fedora_root();
    let minion = fedora_root();
    region.converge("fed-master", master.path());
    region.converge("fed-minion", minion.path());
    let calm = [
        "172.30.0.246 fed-master",
        "172.30.0.43 fed-minion",
        "172.30.0.50 lurker",
    ];
    assert_eq!(hosts_block(master.path()), calm);

    // It takes the master's name: the master keeps it on every node, which re-renders nothing
    // that depends on the master's name.
    region
        .sim
        .set_tag("i-00000000000000001", "Name", Some("fed-master"));
    let contested = [
        "172.30.0.246 fed-master",
        "172.30.0.43 fed-minion",
        "172.30.0.50 ip-172-30-0-50",
    ];
    for (node, root) in [("fed-master", &master), ("fed-minion", &minion)] {
        let plan = region.plan(node, root.path());
        let n = notes(&plan);
        assert!(
            has_note(
                &n,
                &[
                    "2 instances share the name fed-master",
                    &format!(
                        "{MASTER_ID} keeps it (it held the name in this node's last membership)"
                    ),
                    "i-00000000000000001 is named after its private DNS name",
                ]
            ),
            "{node}: {n:#?}"
        );
        region.converge(node, root.path());
        assert_eq!(hosts_block(root.path()), contested, "{node}");
        assert!(status(root.path()).contains("2 instances share the name fed-master"));
    }
    let etcd = std::fs::read_to_string(master.path().join("etc/etcd/etcd.conf")).unwrap();
    assert!(etcd.contains("name = \"fed-master\"\n"), "{etcd}");
    let config = std::fs::read_to_string(minion.path().join("etc/kubernetes/config")).unwrap();
    assert!(
        config.contains("--etcd_servers=http://fed-master:4001\""),
        "{config}"
    );
    assert_eq!(machines(master.path()), ["fed-minion", "ip-172-30-0-50"]);

    // A node with no history (a fresh root: no state) agrees: the master keeps its name.
    let fresh = fedora_root();
    let plan = region.plan("fed-minion", fresh.path());
    assert!(
        has_note(
            &notes(&plan),
            &[&format!("{MASTER_ID} keeps it (the master)")]
        ),
        "{plan}"
    );
    region.converge("fed-minion", fresh.path());
    assert_eq!(hosts_block(fresh.path()), contested);

    // Between two minions, the running holder keeps the name...
    region
        .sim
        .set_tag("i-00000000000000001", "Name", Some("fed-minion"));
    region.converge("fed-master", master.path());
    assert_eq!(
        hosts_block(master.path()),
        [
            "172.30.0.246 fed-master",
            "172.30.0.43 fed-minion",
            "172.30.0.50 ip-172-30-0-50",
        ]
    );
    assert_eq!(machines(master.path()), ["fed-minion", "ip-172-30-0-50"]);
    assert!(status(master.path()).contains(&format!(
        "2 instances share the name fed-minion: {MINION_ID} keeps it (it held the name"
    )));

    // ...until it stops: then the name moves to the other claimant.
    region.sim.set_state("fed-minion", "stopped");
    region.converge("fed-master", master.path());
    assert_eq!(
        hosts_block(master.path()),
        ["172.30.0.246 fed-master", "172.30.0.50 fed-minion"]
    );
    assert_eq!(machines(master.path()), ["fed-minion"]);
    let s = status(master.path());
    assert!(!s.contains("share the name"), "{s}");
}

#[test]
fn many_peers_sharing_one_name_give_one_note() {
    let n = 30;
    let extra: Vec<InstanceSpec> = (0..n)
        .map(|k| peer(&format!("crowd-{k}"), &format!("172.30.1.{}", k + 10)))
        .collect();
    let region = Region::start(seed_and(extra));
    let mut ids = BTreeSet::new();
    for k in 0..n {
        let id = region.sim.instance_id(&format!("crowd-{k}")).unwrap();
        region.sim.set_tag(&id, "Name", Some("crowd"));
        ids.insert(id);
    }
    let lowest = ids.iter().next().unwrap().clone();
    let master = fedora_root();
    let plan = region.plan("fed-master", master.path());
    region.converge("fed-master", master.path());

    let block = hosts_block(master.path());
    assert_eq!(block.len(), n + 2, "{block:#?}");
    let names: BTreeSet<&str> = block.iter().map(|l| l.split_once(' ').unwrap().1).collect();
    assert_eq!(names.len(), n + 2, "a name appears twice: {block:#?}");
    assert_eq!(
        block.iter().filter(|l| l.ends_with(" crowd")).count(),
        1,
        "{block:#?}"
    );
    assert_eq!(machines(master.path()).len(), n + 1);

    let n_notes = notes(&plan);
    assert_eq!(n_notes.len(), 1, "{n_notes:#?}");
    assert!(
        n_notes[0].starts_with(&format!(
            "{} instances share the name crowd: {lowest} keeps it (the lowest instance id); ",
            n
        )),
        "{n_notes:#?}"
    );
    assert!(
        n_notes[0].ends_with(&format!(
            " and {} more are named after their private DNS name",
            n - 4
        )),
        "{n_notes:#?}"
    );
    let s = status(master.path());
    assert_eq!(s.matches("  note: ").count(), 1, "{s}");
}
