//! The `kubeadm` profile's etcd tier on a LAN of masters ([`crate::lan`]): masters launched with
//! the profile, the real agent run on each, and the cluster judged from outside with `etcdctl`
//! (its own client certificate, issued from the cluster CA the masters keep in Parameter Store),
//! never from the agent's own report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use berth_agent::etcd::pki::{leaves, ClusterCa};
use berth_sim::{ClusterSpec, InstanceSpec, ParameterRule, SecurityGroupSpec};

use crate::lan::{Lan, LanRegion, Master};

pub const CLUSTER: &str = "ha";
pub const GROUP: &str = "sg-0e1a2b3c4d5e6f709";
/// The parameter holding the cluster CA.
pub const CA_PARAMETER: &str = "/berth/ha/master/etcd-ca";
/// The user-data every master gets: the kubeadm profile; no OS upgrade (no rpm-ostree in the
/// containers); a grace period of 10 s for stopped masters.
pub const USER_DATA: &str =
    "profile: kubeadm\nupgrade: false\netcd:\n  stopped_grace_seconds: 10\n";

/// The least-privilege rules of docs/iam.md, as the region enforces them.
pub fn parameter_access() -> BTreeMap<String, Vec<ParameterRule>> {
    let rule = |path: &str, actions: &[&str]| ParameterRule {
        path: path.into(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
    };
    BTreeMap::from([
        (
            "berth-master".to_string(),
            vec![
                rule(
                    &format!("/berth/{CLUSTER}/master/*"),
                    &["GetParameter", "PutParameter", "DeleteParameter"],
                ),
                rule(
                    &format!("/berth/{CLUSTER}/node/*"),
                    &["GetParameter", "PutParameter"],
                ),
            ],
        ),
        (
            "berth-minion".to_string(),
            vec![rule(&format!("/berth/{CLUSTER}/node/*"), &["GetParameter"])],
        ),
    ])
}

pub fn master_spec(lan: &Lan, name: &str, host: u8) -> InstanceSpec {
    let mut spec = InstanceSpec::new(name, lan.addr(host));
    spec.tags.insert("role".into(), "master".into());
    spec.tags.insert("berth:cluster".into(), CLUSTER.into());
    spec.iam_role = Some("berth-master".into());
    spec.security_groups = Some(vec![GROUP.into()]);
    spec.user_data = Some(USER_DATA.into());
    spec
}

/// A member as `etcdctl member list -w json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct EtcdctlMember {
    #[serde(rename = "ID")]
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

/// A LAN, its region, and the masters launched so far.
pub struct Ha {
    pub masters: Vec<Master>,
    pub region: LanRegion,
    pub lan: Lan,
    /// etcdctl's own client certificate, key and the CA, once the CA exists.
    tls: Option<(tempfile::TempDir, PathBuf, PathBuf, PathBuf)>,
    next_host: u8,
}

impl Ha {
    pub fn new(tag: &str) -> Ha {
        let lan = Lan::new(tag);
        let region = lan.region(ClusterSpec {
            security_groups: vec![SecurityGroupSpec {
                id: GROUP.into(),
                name: "ha-masters".into(),
            }],
            parameter_access: Some(parameter_access()),
            ..ClusterSpec::default()
        });
        Ha {
            masters: Vec::new(),
            region,
            lan,
            tls: None,
            next_host: 11,
        }
    }

    /// The next free address on the LAN.
    pub fn next_host(&mut self) -> u8 {
        let h = self.next_host;
        self.next_host += 1;
        h
    }

    /// Launch `n` masters at once (containers booted in parallel); their indexes.
    pub fn launch(&mut self, n: usize) -> Vec<usize> {
        let first = self.masters.len();
        let specs: Vec<InstanceSpec> = (0..n)
            .map(|i| {
                let host = self.next_host();
                master_spec(&self.lan, &format!("m{}", first + i + 1), host)
            })
            .collect();
        let launched = Master::launch_all(&self.lan, &self.region, specs);
        self.masters.extend(launched);
        (first..self.masters.len()).collect()
    }

    /// Master `i`'s instance terminated: its container killed, EC2 says `terminated`.
    pub fn terminate(&mut self, i: usize) {
        let Ha {
            masters, region, ..
        } = self;
        masters[i].terminate(region);
    }

    /// Master `i` terminated and replaced by a new instance `name` at LAN address `host` (its
    /// own or a new one), booted; the replacement's index.
    pub fn replace(&mut self, i: usize, name: &str, host: u8) -> usize {
        let spec = master_spec(&self.lan, name, host);
        let Ha {
            masters,
            lan,
            region,
            ..
        } = self;
        let new = masters[i].replace(lan, region, spec, |_| {});
        self.masters.push(new);
        self.masters.len() - 1
    }

    /// `berth-agent run --once` on master `i`, with the region as its Parameter Store.
    pub fn converge(&self, i: usize) -> Output {
        self.converge_with(i, &[])
    }

    pub fn converge_with(&self, i: usize, env: &[(&str, &str)]) -> Output {
        let m = &self.masters[i];
        let ec2 = self.region.ec2_url();
        let mut cmd = m.agent(&["run", "--once"]);
        cmd.args(["--ssm-endpoint", &ec2]);
        cmd.env("BERTH_LOG", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run berth-agent")
    }

    /// [`Ha::converge`] on each of `which` at once; their outputs in that order.
    pub fn converge_all(&self, which: &[usize]) -> Vec<Output> {
        std::thread::scope(|s| {
            let handles: Vec<_> = which
                .iter()
                .map(|i| s.spawn(move || self.converge(*i)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// `berth-agent status` of master `i`.
    pub fn status(&self, i: usize) -> String {
        let m = &self.masters[i];
        let out = std::process::Command::new(crate::agent::bin("berth-agent"))
            .arg("status")
            .arg("--root")
            .arg(m.ct.root())
            .output()
            .expect("berth-agent status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// etcdctl's TLS files, from the CA in the region's Parameter Store.
    fn tls(&mut self) -> (PathBuf, PathBuf, PathBuf) {
        if self.tls.is_none() {
            let (json, _) = self
                .region
                .sim()
                .parameter(CA_PARAMETER)
                .expect("the masters stored the cluster CA");
            let ca = ClusterCa::parse(&json).expect("the stored CA parses");
            let leaf = &leaves("i-00000000", std::net::Ipv4Addr::LOCALHOST)[2];
            let (cert, key) = ca.issue(leaf).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (c, k, a) = (
                dir.path().join("etcdctl.crt"),
                dir.path().join("etcdctl.key"),
                dir.path().join("ca.crt"),
            );
            std::fs::write(&c, cert).unwrap();
            std::fs::write(&k, key).unwrap();
            std::fs::write(&a, &ca.cert).unwrap();
            self.tls = Some((dir, c, k, a));
        }
        let (_, c, k, a) = self.tls.as_ref().unwrap();
        (c.clone(), k.clone(), a.clone())
    }

    /// `etcdctl ARGS` from the bridge namespace against `endpoints` (client URLs).
    pub fn etcdctl(&mut self, endpoints: &[String], args: &[&str]) -> Output {
        let (c, k, a) = self.tls();
        let mut argv: Vec<String> = vec![
            "env".into(),
            "ETCDCTL_API=3".into(),
            "etcdctl".into(),
            format!("--endpoints={}", endpoints.join(",")),
            format!("--cacert={}", a.display()),
            format!("--cert={}", c.display()),
            format!("--key={}", k.display()),
            "--command-timeout=5s".into(),
            "--dial-timeout=2s".into(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.lan.exec(&refs)
    }

    /// Client URLs of the masters at these indexes.
    pub fn endpoints(&self, which: &[usize]) -> Vec<String> {
        which
            .iter()
            .map(|i| format!("https://{}:2379", self.masters[*i].ip))
            .collect()
    }

    /// `etcdctl member list` through `which`'s endpoints: the cluster id and the members.
    pub fn member_list(&mut self, which: &[usize]) -> (u64, Vec<EtcdctlMember>) {
        let eps = self.endpoints(which);
        let out = self.etcdctl(&eps, &["member", "list", "-w", "json"]);
        assert!(
            out.status.success(),
            "etcdctl member list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let cluster = v["header"]["cluster_id"].as_u64().unwrap();
        let members = serde_json::from_value(v["members"].clone()).unwrap();
        (cluster, members)
    }

    /// Whether every endpoint of `which` is healthy, per `etcdctl endpoint health`.
    pub fn healthy(&mut self, which: &[usize]) -> bool {
        let eps = self.endpoints(which);
        let out = self.etcdctl(&eps, &["endpoint", "health", "-w", "json"]);
        let Ok(v) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) else {
            return false;
        };
        v.len() == which.len() && v.iter().all(|e| e["health"] == serde_json::json!(true))
    }

    /// Waits up to `timeout` for [`Ha::healthy`].
    pub fn wait_healthy(&mut self, which: &[usize], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.healthy(which) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    pub fn put(&mut self, via: usize, key: &str, value: &str) {
        let eps = self.endpoints(&[via]);
        let out = self.etcdctl(&eps, &["put", key, value]);
        assert!(
            out.status.success(),
            "etcdctl put: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn get(&mut self, via: usize, key: &str) -> Option<String> {
        let eps = self.endpoints(&[via]);
        let out = self.etcdctl(&eps, &["get", "--print-value-only", key]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// The names (instance ids) of the started voting members, sorted; panics on a learner or
    /// an unstarted member (an orphan of a join).
    pub fn voters(&mut self, via: &[usize]) -> Vec<String> {
        let (_, members) = self.member_list(via);
        for m in &members {
            assert!(
                !m.is_learner && !m.name.is_empty(),
                "a learner or unstarted member is left: {members:?}"
            );
        }
        let mut names: Vec<String> = members.into_iter().map(|m| m.name).collect();
        names.sort();
        names
    }

    pub fn ids(&self, which: &[usize]) -> Vec<String> {
        let mut v: Vec<String> = which
            .iter()
            .map(|i| self.masters[*i].instance_id.clone())
            .collect();
        v.sort();
        v
    }
}

/// An agent's exit code and its output, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr), 60)
    )
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
