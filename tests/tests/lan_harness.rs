//! The LAN harness of the etcd tier (`tests/src/lan.rs`), proven with real components and no
//! agent logic under test: three masters, each a systemd container in its own network namespace
//! on one bridge, form an etcd 3.4 cluster through the Fedora-shaped `etcd.service` from an
//! `/etc/etcd/etcd.conf` written here by hand; `etcdctl`, run from the bridge namespace, is the
//! judge. The region on the LAN answers each node's IMDS and the EC2 API, as the real agent's
//! `plan` shows.
//!
//! Needs root (namespaces, systemd-nspawn), etcd and etcdctl (tests/setup/etcd.sh) and the
//! container root file system (tests/setup/nspawn.sh).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use berth_e2e::lan::{Lan, LanRegion, Master, ETCD_START_TIMEOUT};
use berth_sim::{ClusterSpec, InstanceSpec, SecurityGroupSpec};

const TEST: &str = "three_masters_form_an_etcd_cluster_on_the_lan_and_outlive_a_lost_member";
const GROUP: &str = "sg-0e1a2b3c4d5e6f708";

fn master_spec(lan: &Lan, name: &str, host: u8) -> InstanceSpec {
    let mut spec = InstanceSpec::new(name, lan.addr(host));
    spec.tags.insert("role".into(), "master".into());
    spec.tags.insert("berth:cluster".into(), "lan".into());
    spec.iam_role = Some("berth-node".into());
    spec.security_groups = Some(vec![GROUP.into()]);
    spec
}

fn text(out: &Output) -> String {
    format!(
        "{} stdout: {} stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// `etcdctl --endpoints ENDPOINTS ARGS` from the bridge namespace: outside every member.
fn etcdctl(lan: &Lan, endpoints: &[String], args: &[&str]) -> Output {
    let endpoints = endpoints.join(",");
    let mut argv = vec![
        "etcdctl",
        "--endpoints",
        &endpoints,
        "--dial-timeout=2s",
        "--command-timeout=4s",
    ];
    argv.extend_from_slice(args);
    lan.exec(&argv)
}

/// `etcdctl ... endpoint health` for one member: whether it answered healthy.
fn healthy(lan: &Lan, m: &Master) -> bool {
    etcdctl(lan, &[m.client_url()], &["endpoint", "health"])
        .status
        .success()
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of `key` read through `m`'s client URL (a linearizable read: through the leader).
fn get(lan: &Lan, m: &Master, key: &str) -> Result<String, String> {
    let out = etcdctl(lan, &[m.client_url()], &["get", "--print-value-only", key]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(text(&out))
    }
}

fn put(lan: &Lan, m: &Master, key: &str, value: &str) {
    let out = etcdctl(lan, &[m.client_url()], &["put", key, value]);
    assert!(
        out.status.success(),
        "put {key} through {}: {}",
        m.name,
        text(&out)
    );
}

/// A TLS-less etcd.conf for `me` in a new cluster of `all`, each member named by instance id.
fn etcd_conf(me: &Master, all: &[Master]) -> String {
    let initial: Vec<String> = all
        .iter()
        .map(|m| format!("{}={}", m.instance_id, m.peer_url()))
        .collect();
    format!(
        "ETCD_NAME={name}\n\
         ETCD_DATA_DIR=/var/lib/etcd/default.etcd\n\
         ETCD_LISTEN_PEER_URLS={peer}\n\
         ETCD_LISTEN_CLIENT_URLS={client},http://127.0.0.1:2379\n\
         ETCD_INITIAL_ADVERTISE_PEER_URLS={peer}\n\
         ETCD_ADVERTISE_CLIENT_URLS={client}\n\
         ETCD_INITIAL_CLUSTER={initial}\n\
         ETCD_INITIAL_CLUSTER_STATE=new\n\
         ETCD_INITIAL_CLUSTER_TOKEN=berth-lan-harness\n",
        name = me.instance_id,
        peer = me.peer_url(),
        client = me.client_url(),
        initial = initial.join(","),
    )
}

/// `curl` in node `name`'s namespace: IMDSv2's token, then `path` with it.
fn imds_get(lan: &Lan, name: &str, imds: &str, path: &str) -> String {
    let token = lan.exec_on(
        name,
        &[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "5",
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
            &format!("{imds}latest/api/token"),
        ],
    );
    assert!(
        token.status.success(),
        "{name}: IMDS token: {}",
        text(&token)
    );
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let out = lan.exec_on(
        name,
        &[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "5",
            "-H",
            &format!("X-aws-ec2-metadata-token: {token}"),
            &format!("{imds}{path}"),
        ],
    );
    assert!(out.status.success(), "{name}: IMDS {path}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn three_masters_form_an_etcd_cluster_on_the_lan_and_outlive_a_lost_member() {
    if !berth_e2e::nspawn::have_root(TEST) {
        return;
    }
    // The root file system and the agent are ready before any clock starts.
    berth_e2e::nspawn::rootfs();
    berth_e2e::agent::bin("berth-agent");
    let started = Instant::now();

    let lan = Lan::new("harness");
    let names = lan.netns_names();
    let region: LanRegion = lan.region(ClusterSpec {
        security_groups: vec![SecurityGroupSpec {
            id: GROUP.into(),
            name: "lan-masters".into(),
        }],
        ..ClusterSpec::default()
    });
    let specs = vec![
        master_spec(&lan, "m1", 11),
        master_spec(&lan, "m2", 12),
        master_spec(&lan, "m3", 13),
    ];
    let t_boot = Instant::now();
    let mut masters = Master::launch_all(&lan, &region, specs);
    let boot = t_boot.elapsed();
    eprintln!("three containers booted in parallel in {boot:?}");
    for m in &masters {
        assert_eq!(
            m.ct.systemctl(&["is-system-running"]),
            "running",
            "{}",
            m.name
        );
    }
    let mut all_names = names.clone();
    all_names.extend(lan.netns_names());

    let listed = netns_list();
    for ns in &all_names {
        assert!(listed.contains(ns.as_str()), "{ns} missing from: {listed}");
    }

    // Each node reaches its own IMDS on the gateway, which knows it by its address.
    for m in &masters {
        assert_eq!(m.ip, lan.node_ip(&m.name));
        assert_eq!(
            imds_get(&lan, &m.name, m.imds_url(), "latest/meta-data/instance-id"),
            m.instance_id
        );
        assert_eq!(
            imds_get(&lan, &m.name, m.imds_url(), "latest/meta-data/local-ipv4"),
            m.ip.to_string()
        );
    }

    // The real agent, in m1's namespace: IMDS, role credentials and DescribeInstances (SigV4)
    // all answer, and EC2 lists the three masters at their LAN addresses.
    let out = masters[0]
        .agent(&["plan", "--format", "json"])
        .output()
        .expect("berth-agent runs");
    assert!(out.status.success(), "berth-agent plan: {}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(
        plan["instance_id"],
        masters[0].instance_id.as_str(),
        "{plan}"
    );
    let plan_text = plan.to_string();
    for m in &masters {
        assert!(
            plan_text.contains(&m.instance_id) && plan_text.contains(&m.ip.to_string()),
            "the plan's membership lacks {} at {}: {plan}",
            m.instance_id,
            m.ip
        );
    }

    // etcd through systemd in every container, configured by hand.
    for m in &masters {
        m.write_etcd_conf(&etcd_conf(m, &masters));
    }
    let t_form = Instant::now();
    for m in &masters {
        let out = m.systemctl_etcd("start");
        assert!(out.status.success(), "{}: {}", m.name, text(&out));
    }
    for m in &masters {
        m.wait_etcd_active(ETCD_START_TIMEOUT);
    }
    let formed = t_form.elapsed();
    eprintln!("three etcd.service units active (a quorum formed) in {formed:?}");

    // From outside: one cluster of three started members named by instance id.
    let endpoints: Vec<String> = masters.iter().map(Master::client_url).collect();
    let mut cluster_ids = BTreeSet::new();
    for m in &masters {
        let out = etcdctl(&lan, &[m.client_url()], &["member", "list", "-w", "json"]);
        assert!(
            out.status.success(),
            "member list via {}: {}",
            m.name,
            text(&out)
        );
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        cluster_ids.insert(list["header"]["cluster_id"].as_u64().expect("cluster_id"));
        let members = list["members"].as_array().expect("members");
        let started: BTreeSet<&str> = members
            .iter()
            .filter(|x| x["clientURLs"].as_array().is_some_and(|u| !u.is_empty()))
            .filter_map(|x| x["name"].as_str())
            .collect();
        let expected: BTreeSet<&str> = masters.iter().map(|m| m.instance_id.as_str()).collect();
        assert_eq!(started, expected, "via {}: {list}", m.name);
    }
    assert_eq!(cluster_ids.len(), 1, "one cluster: {cluster_ids:?}");
    let out = etcdctl(&lan, &endpoints, &["endpoint", "health"]);
    assert!(out.status.success(), "endpoint health: {}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .matches("is healthy")
            .count()
            + String::from_utf8_lossy(&out.stdout)
                .matches("is healthy")
                .count(),
        3,
        "{}",
        text(&out)
    );

    // A key written through one member is read through another, and inside a container
    // through its own etcdctl on loopback.
    put(&lan, &masters[0], "berth/lan", "written through m1");
    assert_eq!(
        get(&lan, &masters[1], "berth/lan").unwrap(),
        "written through m1"
    );
    let local = masters[2].ct.exec(&[
        "etcdctl",
        "--endpoints",
        "http://127.0.0.1:2379",
        "get",
        "--print-value-only",
        "berth/lan",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&local.stdout).trim(),
        "written through m1",
        "{}",
        text(&local)
    );

    // m3's instance dies (SIGKILL to its PID 1): the other two keep a quorum and serve.
    masters[2].kill();
    assert!(!healthy(&lan, &masters[2]), "a killed member answers");
    for m in &masters[..2] {
        assert_eq!(m.etcd_state(), "active", "{}", m.name);
        assert_eq!(get(&lan, m, "berth/lan").unwrap(), "written through m1");
    }
    put(&lan, &masters[1], "berth/while-m3-down", "two of three");

    // Booted again from its disk, m3 rejoins with its data and catches up.
    let t_reboot = Instant::now();
    masters[2].boot();
    let out = masters[2].systemctl_etcd("start");
    assert!(out.status.success(), "{}", text(&out));
    masters[2].wait_etcd_active(ETCD_START_TIMEOUT);
    assert_eq!(
        get(&lan, &masters[2], "berth/while-m3-down").unwrap(),
        "two of three"
    );
    eprintln!("m3 booted again and rejoined in {:?}", t_reboot.elapsed());

    // m2 partitioned: unreachable from the LAN though its etcd still runs; the other two serve.
    lan.link_down("m2");
    assert!(!healthy(&lan, &masters[1]), "a partitioned member answers");
    assert_eq!(
        masters[1].etcd_state(),
        "active",
        "the instance keeps running"
    );
    put(&lan, &masters[0], "berth/while-m2-cut-off", "m1 and m3");
    lan.link_up("m2");
    wait_until("m2 healthy again after link_up", ETCD_START_TIMEOUT, || {
        healthy(&lan, &masters[1])
    });
    assert_eq!(
        get(&lan, &masters[1], "berth/while-m2-cut-off").unwrap(),
        "m1 and m3"
    );

    // A replacement instance at m3's address: the region reports m3 terminated, and the new
    // node's IMDS answers with the new instance's id from the same address.
    let mut old = masters.pop().unwrap();
    let replacement = old.replace(&lan, &region, master_spec(&lan, "m4", 13), |_| {});
    assert_eq!(replacement.ip, old.ip);
    assert_ne!(replacement.instance_id, old.instance_id);
    let states = region.sim().instances();
    let state = |id: &str| states.iter().find(|(_, i, _)| i == id).unwrap().2.clone();
    assert_eq!(state(&old.instance_id), "terminated");
    assert!(["pending", "running"].contains(&state(&replacement.instance_id).as_str()));
    assert_eq!(
        imds_get(
            &lan,
            "m4",
            replacement.imds_url(),
            "latest/meta-data/instance-id"
        ),
        replacement.instance_id
    );
    assert!(!old.netns.exists(), "m3's namespace went with its node");
    all_names.extend(lan.netns_names());

    // etcd kept its data where etcd.conf said, as the unit's user; a wipe leaves the directory
    // empty and still etcd's.
    let member = old.ct.path("/var/lib/etcd/default.etcd/member");
    assert!(
        member.join("wal").is_dir(),
        "no WAL in {}",
        member.display()
    );
    assert_eq!(
        std::fs::metadata(&member).unwrap().uid(),
        berth_e2e::nspawn::ETCD_UID,
        "etcd ran as the etcd user"
    );
    old.wipe_etcd_data();
    let data = old.ct.path("/var/lib/etcd");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0);
    assert_eq!(
        std::fs::metadata(&data).unwrap().uid(),
        berth_e2e::nspawn::ETCD_UID
    );

    // Every container, the region and every namespace go with their owners.
    drop(replacement);
    drop(old);
    drop(masters);
    drop(region);
    drop(lan);
    let listed = netns_list();
    for ns in &all_names {
        assert!(
            !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "{ns} left behind: {listed}"
        );
    }
    eprintln!(
        "figures: boot of 3 containers {boot:?}, etcd formation through the units {formed:?}, \
         the test after the agent's build {:?}",
        started.elapsed()
    );
}
