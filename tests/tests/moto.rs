//! The real `berth-agent` against moto, an EC2 implementation berth did not write: its identity
//! and role credentials come from berth-sim's emulated IMDS (mirroring one of moto's instances,
//! with credentials moto's STS issued), its peers from moto's DescribeInstances, which moto only
//! answers when the SigV4 signature (session token included) is right and the role's IAM policy
//! allows the action.
//!
//! Needs the venv of `tests/setup/moto.sh`; skips loudly without it, except in CI where it fails.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use berth_e2e::agent::{bin, fedora_root, Region};
use berth_e2e::moto::Moto;
use berth_sim::{ClusterSpec, CredentialsSpec};

/// `berth-agent ARGS --root ROOT --imds-endpoint (berth-sim's, for `node`) --ec2-endpoint (moto)`.
fn agent(region: &Region, moto: &Moto, node: &str, root: &Path, args: &[&str]) -> Output {
    let imds = region
        .sim
        .imds_url(node)
        .expect("the mirrored node has an IMDS");
    Command::new(bin("berth-agent"))
        .args(args)
        .arg("--root")
        .arg(root)
        .args(["--imds-endpoint", &imds, "--ec2-endpoint", &moto.url])
        .output()
        .expect("berth-agent runs")
}

fn plan(region: &Region, moto: &Moto, node: &str) -> Output {
    let root = fedora_root();
    agent(
        region,
        moto,
        node,
        root.path(),
        &["plan", "--format", "json"],
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The plan's membership as (name, instance id, role, private IP), sorted as the agent sorts it.
fn membership(out: &Output, moto: &Moto) -> Vec<(String, String, String, String)> {
    assert!(
        out.status.success(),
        "plan against moto failed ({}):\n{}\n--- moto's log\n{}",
        out.status,
        stderr(out),
        moto.log()
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    plan["membership"]
        .as_array()
        .unwrap_or_else(|| panic!("no membership in {plan}"))
        .iter()
        .map(|n| {
            let s = |k: &str| {
                n[k].as_str()
                    .unwrap_or_else(|| panic!("{k} in {n}"))
                    .to_string()
            };
            (s("name"), s("instance_id"), s("role"), s("private_ip"))
        })
        .collect()
}

/// What moto holds for the cluster: the master and the two running minions of security group A.
fn expected(moto: &Moto) -> Vec<(String, String, String, String)> {
    ["fed-master", "fed-minion", "fed-minion-2"]
        .iter()
        .map(|name| {
            let i = moto.world.instance(name);
            (
                name.to_string(),
                i.instance_id.clone(),
                i.tags["role"].clone(),
                i.private_ip.to_string(),
            )
        })
        .collect()
}

fn keep(_: &mut CredentialsSpec) {}

#[test]
fn signed_describe_instances_yields_exactly_the_groups_running_peers() {
    let Some(moto) = Moto::start_or_skip() else {
        return;
    };
    eprintln!("moto up and set up in {:?}", moto.startup);
    // The world really holds the instances that must be left out, so leaving them out is the
    // agent's (and moto's filters') doing.
    let w = &moto.world;
    assert_ne!(
        w.instance("other-sg-minion").security_group,
        w.instance("fed-master").security_group
    );
    assert_eq!(w.instance("stopped-minion").state, "stopped");
    assert_eq!(
        w.instance("other-cluster-minion").tags["berth:cluster"],
        "other"
    );

    let before = moto.request_lines().len();
    let region = Region::start(moto.world.mirror("fed-master", "berth-node", keep));
    let t = Instant::now();
    let got = membership(&plan(&region, &moto, "fed-master"), &moto);
    eprintln!("plan against moto took {:?}", t.elapsed());
    assert_eq!(got, expected(&moto));
    let served = moto.requests_since(before);
    assert!(
        !served.is_empty() && served.iter().all(|l| l.contains(" 200 ")),
        "moto must have answered the agent's signed requests with 200: {served:#?}"
    );

    // A minion sees the same cluster, and converging writes it where Kubernetes reads it.
    let region = Region::start(moto.world.mirror("fed-minion", "berth-node", keep));
    let root = fedora_root();
    let out = agent(
        &region,
        &moto,
        "fed-minion",
        root.path(),
        &["run", "--once", "--no-host-actions"],
    );
    assert!(
        out.status.success(),
        "converging fed-minion against moto failed:\n{}",
        stderr(&out)
    );
    let hosts = std::fs::read_to_string(root.path().join("etc/hosts")).unwrap();
    assert!(
        hosts.contains(
            "172.30.0.246 fed-master\n172.30.0.43 fed-minion\n172.30.0.11 fed-minion-2\n"
        ),
        "{hosts}"
    );
    for ip in ["172.30.0.50", "172.30.0.51", "172.30.0.52"] {
        assert!(
            !hosts.contains(ip),
            "a non-peer reached /etc/hosts:\n{hosts}"
        );
    }
    let config = std::fs::read_to_string(root.path().join("etc/kubernetes/config")).unwrap();
    assert!(config.contains("KUBE_ETCD_SERVERS=\"--etcd_servers=http://fed-master:4001\""));
}

#[test]
fn moto_rejects_a_wrong_secret_key_or_session_token() {
    let Some(moto) = Moto::start_or_skip() else {
        return;
    };
    // The right key, against the same moto: accepted. So a refusal below is the key's doing.
    let good = Region::start(moto.world.mirror("fed-master", "berth-node", keep));
    assert_eq!(
        membership(&plan(&good, &moto, "fed-master"), &moto),
        expected(&moto)
    );

    let secret = moto.world.credentials["berth-node"]
        .secret_access_key
        .clone();
    let token = moto.world.credentials["berth-node"].session_token.clone();
    let wrong_secret: Box<dyn Fn(&mut CredentialsSpec)> = Box::new(|c: &mut CredentialsSpec| {
        // Same length and alphabet, one character different: only the signature can tell.
        let mut s = c.secret_access_key.clone().into_bytes();
        s[0] = if s[0] == b'A' { b'B' } else { b'A' };
        c.secret_access_key = String::from_utf8(s).unwrap();
    });
    let wrong_token: Box<dyn Fn(&mut CredentialsSpec)> = Box::new(|c: &mut CredentialsSpec| {
        c.session_token = Some(format!("{}x", c.session_token.as_deref().unwrap()));
    });
    for (what, edit) in [("secret key", wrong_secret), ("session token", wrong_token)] {
        let before = moto.request_lines().len();
        let spec: ClusterSpec = moto.world.mirror("fed-master", "berth-node", |c| edit(c));
        let region = Region::start(spec);
        let t = Instant::now();
        let out = plan(&region, &moto, "fed-master");
        let took = t.elapsed();
        let err = stderr(&out);
        eprintln!("wrong {what}: refused in {took:?}");
        assert_eq!(
            out.status.code(),
            Some(4),
            "a wrong {what} must fail as a remote error (exit 4):\n{err}"
        );
        assert!(
            err.contains("AuthFailure"),
            "stderr must carry moto's AuthFailure for a wrong {what}:\n{err}"
        );
        assert!(
            !err.contains(&secret) && !err.contains(&token),
            "the agent logged a credential:\n{err}"
        );
        let served = moto.requests_since(before);
        assert!(
            !served.is_empty() && served.iter().all(|l| l.contains(" 401 ")),
            "moto must have refused every request signed with a wrong {what}: {served:#?}"
        );
    }
}

#[test]
fn imds_tags_off_uses_signed_describe_tags_that_the_policy_must_allow() {
    let Some(moto) = Moto::start_or_skip() else {
        return;
    };
    let tags_off = |role: &str| {
        let mut spec = moto.world.mirror("fed-master", role, keep);
        spec.instances[0].imds_tags = false;
        Region::start(spec)
    };

    // Allowed DescribeTags: the role tag (master) comes from moto, signed and accepted.
    let region = tags_off("berth-node");
    let out = plan(&region, &moto, "fed-master");
    assert_eq!(membership(&out, &moto), expected(&moto));
    let plan_json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan_json["role"], "master", "{plan_json}");
    assert!(
        !region
            .sim
            .requests()
            .iter()
            .any(|r| r.path.contains("tags/instance") && r.status == 200),
        "IMDS tags are off, yet IMDS served them"
    );

    // A role without ec2:DescribeTags: fine while IMDS serves the tags ...
    let region = Region::start(moto.world.mirror("fed-master", "berth-node-no-tags", keep));
    assert_eq!(
        membership(&plan(&region, &moto, "fed-master"), &moto),
        expected(&moto)
    );
    // ... and refused by moto's policy check when the agent must ask EC2 for them.
    let region = tags_off("berth-node-no-tags");
    let out = plan(&region, &moto, "fed-master");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("AccessDenied") || err.contains("UnauthorizedOperation"),
        "stderr must carry moto's refusal of ec2:DescribeTags:\n{err}"
    );
    assert!(err.contains("DescribeTags"), "{err}");
}
