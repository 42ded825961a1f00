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

/// moto, set up; meanwhile the agent binary is brought up to date (both take seconds).
fn start() -> Option<Moto> {
    let t = Instant::now();
    let build = std::thread::spawn(move || {
        bin("berth-agent");
        t.elapsed()
    });
    let moto = Moto::start_or_skip();
    let moto_took = t.elapsed();
    let build_took = build.join().expect("building berth-agent");
    eprintln!("moto ready after {moto_took:?}, berth-agent up to date after {build_took:?}");
    moto
}

#[test]
fn signed_describe_instances_yields_exactly_the_groups_running_peers() {
    let Some(moto) = start() else {
        return;
    };
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
    let Some(moto) = start() else {
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
    let Some(moto) = start() else {
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

/// berth-ec2's client against moto directly: moto's own filtering of the filters discovery sends
/// (the agent filters again, which could hide a filter moto reads differently), and paging,
/// which moto counts in reservations.
#[test]
fn moto_honours_discoverys_filters_and_pages_by_reservation() {
    let Some(moto) = Moto::start_or_skip() else {
        return;
    };
    let w = &moto.world;
    let master = w.instance("fed-master");
    let c = &w.credentials["berth-node"];
    let creds = berth_ec2::Credentials {
        access_key_id: c.access_key_id.clone(),
        secret_access_key: c.secret_access_key.clone(),
        session_token: Some(c.session_token.clone()),
        expiration: None,
    };
    let me = berth_ec2::Identity {
        instance_id: master.instance_id.clone(),
        region: w.region.clone(),
        availability_zone: format!("{}a", w.region),
        private_ipv4: master.private_ip.to_string(),
        private_dns_name: master.private_dns_name.clone(),
        mac: "0e:00:00:00:00:01".into(),
        vpc_id: w.vpc_id.clone(),
        subnet_id: w.subnet_id.clone(),
        security_group_ids: vec![master.security_group.clone()],
    };
    let config = berth_agent::config::Config {
        cluster: Some("seed".into()),
        ..Default::default()
    };
    let filters = berth_agent::discovery::filters(&me, &config);
    let client = berth_ec2::Ec2Client::new(
        moto.url.parse().unwrap(),
        w.region.clone(),
        berth_ec2::RetryPolicy::ec2_discovery(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let found = rt
        .block_on(client.describe_instances_pages(&creds, &filters))
        .unwrap_or_else(|e| panic!("{e}\n--- moto's log\n{}", moto.log()));
    let mut ids: Vec<_> = found.items.iter().map(|i| i.instance_id.clone()).collect();
    ids.sort();
    let mut want: Vec<_> = expected(&moto).into_iter().map(|e| e.1).collect();
    want.sort();
    assert_eq!(ids, want, "moto's answer to discovery's filters");
    assert_eq!(found.pages, 1);

    // Five reservations a page (EC2's smallest MaxResults); six instances, one per reservation.
    let mut pages = 0;
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut params = vec![("MaxResults".to_string(), "5".to_string())];
        if let Some(t) = &next {
            params.push(("NextToken".into(), t.clone()));
        }
        let xml = rt
            .block_on(client.call(&creds, "DescribeInstances", &params))
            .unwrap_or_else(|e| panic!("page {}: {e}", pages + 1));
        let page = berth_ec2::xml::parse_describe_instances(&xml)
            .unwrap_or_else(|e| panic!("page {}: {e}\n{xml}", pages + 1));
        pages += 1;
        all.extend(page.instances.into_iter().map(|i| i.instance_id));
        next = page.next_token;
        if next.is_none() || pages > 10 {
            break;
        }
    }
    all.sort();
    let mut every: Vec<_> = w
        .instances
        .values()
        .map(|i| i.instance_id.clone())
        .collect();
    every.sort();
    assert_eq!(pages, 2, "six reservations at five a page");
    assert_eq!(all, every);
}
