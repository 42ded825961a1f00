//! The `kubeadm` profile's Kubernetes tier on a LAN ([`crate::lan`]): masters and minions as
//! booted containers with real systemd, the agent run *inside* each (kubeadm writes
//! `/etc/kubernetes` and `/var/lib/kubelet` at fixed paths, so each node needs its own root), and
//! the cluster judged from outside with `kubectl` through each master's API server.
//!
//! Kubernetes binaries come from the cache that `tests/setup/kubernetes.sh` builds from Debian's
//! source package; they are bound read-only into every container at `/opt/kubernetes/bin` and
//! linked from `/usr/bin`, where the profile's `bin_dir` looks. A minion's node agent is the
//! real kubelet over Debian's containerd, runc and CNI plugins (`tests/setup/runtime.sh` layers
//! them over the rootfs, with two locally built images, since no registry can be reached). Its
//! container gets cgroups of its own, CAP_NET_ADMIN and containerd's state on the host's file
//! system; `tests/fixtures/kubernetes/` says what each setting is for, and what a real host has
//! instead.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use berth_sim::InstanceSpec;

use crate::ha::{Ha, CLUSTER, GROUP};
use crate::lan::{in_netns, Master};
use crate::nspawn::{cache_dir, Container};

/// The version `tests/setup/kubernetes.sh` builds.
pub const KUBERNETES_VERSION: &str = "1.20.2";

/// The parameter holding the join ticket.
pub const TICKET_PARAMETER: &str = "/berth/ha/node/join";

/// The binaries every node gets.
const BINARIES: &[&str] = &[
    "kubeadm",
    "kubectl",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
];

/// The layer and images `tests/setup/runtime.sh` builds; panics naming the script when absent.
pub fn node_runtime() -> PathBuf {
    let dir = cache_dir().join("node-runtime-bookworm");
    assert!(
        dir.join(".berth-runtime-complete").is_file(),
        "{} is missing: run tests/setup/runtime.sh (containerd, runc and the CNI plugins over the \
         cached rootfs, and the local images)",
        dir.display()
    );
    dir
}

/// The preflight checks a minion of the test image fails, each for a reason of the image, not
/// of berth: Debian 12 packages no `crictl` (cri-tools); no `conntrack` in the image; the
/// forwarding the bridge plugin enables only at the first pod
/// (`FileContent--proc-sys-net-ipv4-ip_forward`); and `Swap` for machines that run CI with swap
/// on (the kubelet gets `--fail-swap-on=false` for the same reason).
pub const TEST_IMAGE_PREFLIGHT: &[&str] = &[
    "FileExisting-crictl",
    "FileExisting-conntrack",
    "FileContent--proc-sys-net-ipv4-ip_forward",
    "Swap",
];

/// The directory of the cached Kubernetes binaries; panics naming the setup script when absent.
pub fn kubernetes_bin() -> PathBuf {
    let dir = cache_dir().join(format!("kubernetes-{KUBERNETES_VERSION}/bin"));
    for b in BINARIES {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: run tests/setup/kubernetes.sh (builds Kubernetes {KUBERNETES_VERSION} \
             from Debian's source package into the cache)",
            dir.join(b).display()
        );
    }
    dir
}

fn fixtures() -> PathBuf {
    crate::agent::workspace().join("tests/fixtures/kubernetes")
}

/// The user-data of every node: the kubeadm profile, no OS upgrade, a 10 s grace for stopped
/// masters, a token TTL of `ttl` seconds, and the preflight checks a test minion skips.
pub fn user_data(ttl: u64) -> String {
    let mut u = format!(
        "profile: kubeadm\nupgrade: false\netcd:\n  stopped_grace_seconds: 10\nkubernetes:\n  \
         token_ttl_seconds: {ttl}\n  ignore_preflight_errors:\n"
    );
    for c in TEST_IMAGE_PREFLIGHT {
        u.push_str(&format!("    - {c}\n"));
    }
    u
}

/// What every node's container gets before it boots: the agent, the Kubernetes binaries, and on
/// a minion its kubelet's unit (enabled, as a node image ships it).
fn prepare(ct: &mut Container, bin: &Path, minion: bool) {
    ct.bind_ro(bin, "/opt/kubernetes/bin");
    for b in BINARIES {
        let link = ct.path(&format!("/usr/bin/{b}"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/opt/kubernetes/bin/{b}"), &link).unwrap();
    }
    std::fs::copy(
        crate::agent::bin("berth-agent"),
        ct.path("/usr/bin/berth-agent"),
    )
    .expect("copy berth-agent into the container");
    if minion {
        prepare_kubelet(ct);
    }
}

/// A minion: containerd and the CNI plugins from the runtime layer, the local
/// images, and what a systemd-nspawn container must be given for pods to run in it.
fn prepare_kubelet(ct: &mut Container) {
    let runtime = node_runtime();
    let fixtures = fixtures();
    ct.add_layer(&runtime.join("layer"));
    ct.own_cgroups();
    ct.nspawn_arg("--capability=CAP_NET_ADMIN");
    // containerd's overlay snapshotter cannot use an overlay (the container's root) as its upper
    // layer: its state lives on the host's file system.
    let state = ct.scratch("containerd");
    ct.nspawn_arg(&format!("--bind={}:/var/lib/containerd", state.display()));
    ct.bind_ro(&runtime.join("images"), "/opt/berth-images");
    let copy = |from: &str, to: &str| {
        let dest = ct.path(to);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(fixtures.join(from), &dest).unwrap_or_else(|e| panic!("{from}: {e}"));
    };
    copy("kubelet.service", "/etc/systemd/system/kubelet.service");
    copy("default-kubelet", "/etc/default/kubelet");
    copy("containerd-config.toml", "/etc/containerd/config.toml");
    copy(
        "containerd-nspawn.conf",
        "/etc/systemd/system/containerd.service.d/nspawn.conf",
    );
    // Pods get 172.30.0.0/16, outside every LAN the harness hands out (10.N.0.0/24), so the
    // bridge never takes an address of the LAN or of berth-sim.
    copy(
        "10-berth-bridge.conflist",
        "/etc/cni/net.d/10-berth-bridge.conflist",
    );
    for (name, value) in [
        ("overcommit_memory", "1"),
        ("panic", "10"),
        ("panic_on_oops", "1"),
    ] {
        ct.write(
            &format!("/etc/kubelet-test/sysctl/{name}"),
            &format!("{value}\n"),
        );
    }
    enable(ct, "kubelet.service");
}

fn enable(ct: &Container, unit: &str) {
    let wants = ct.path("/etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    let _ = std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), wants.join(unit));
}

pub fn node_spec(ha: &Ha, name: &str, host: u8, role: &str, ttl: u64) -> InstanceSpec {
    let mut spec = InstanceSpec::new(name, ha.lan.addr(host));
    spec.tags.insert("role".into(), role.into());
    spec.tags.insert("berth:cluster".into(), CLUSTER.into());
    spec.iam_role = Some(format!("berth-{role}"));
    spec.security_groups = Some(vec![GROUP.into()]);
    spec.user_data = Some(user_data(ttl));
    spec
}

/// A LAN with masters (in `ha.masters`) and minions, each running the agent inside.
pub struct Kube {
    pub ha: Ha,
    pub minions: Vec<Master>,
    bin: PathBuf,
    pub ttl: u64,
    /// The admin kubeconfig, copied from a master once it exists.
    admin: Option<(tempfile::TempDir, PathBuf)>,
    /// Everything every agent run through this harness printed (stdout and stderr), for the
    /// secret checks.
    pub printed: std::sync::Mutex<Vec<String>>,
}

/// Which node: a master or a minion, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum N {
    M(usize),
    W(usize),
}

impl Kube {
    pub fn new(tag: &str, ttl: u64) -> Kube {
        Kube {
            ha: Ha::new(tag),
            minions: Vec::new(),
            bin: kubernetes_bin(),
            ttl,
            admin: None,
            printed: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn node(&self, n: N) -> &Master {
        match n {
            N::M(i) => &self.ha.masters[i],
            N::W(i) => &self.minions[i],
        }
    }

    /// Launch `masters` masters and `minions` minions at once (containers booted in parallel).
    pub fn launch(&mut self, masters: usize, minions: usize) -> Vec<N> {
        let mut specs = Vec::new();
        let mut kinds = Vec::new();
        for i in 0..masters {
            let host = self.ha.next_host();
            let name = format!("m{}", self.ha.masters.len() + i + 1);
            specs.push(node_spec(&self.ha, &name, host, "master", self.ttl));
            kinds.push(true);
        }
        for i in 0..minions {
            let host = self.ha.next_host();
            let name = format!("w{}", self.minions.len() + i + 1);
            specs.push(node_spec(&self.ha, &name, host, "minion", self.ttl));
            kinds.push(false);
        }
        let bin = self.bin.clone();
        let launched = Master::launch_all_with(&self.ha.lan, &self.ha.region, specs, |i, ct| {
            prepare(ct, &bin, i >= masters)
        });
        let mut out = Vec::new();
        for (m, is_master) in launched.into_iter().zip(kinds) {
            if is_master {
                self.ha.masters.push(m);
                out.push(N::M(self.ha.masters.len() - 1));
            } else {
                self.minions.push(m);
                out.push(N::W(self.minions.len() - 1));
            }
        }
        out
    }

    fn keep(&self, out: Output) -> Output {
        self.printed.lock().unwrap().push(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        out
    }

    /// `berth-agent run --once` inside node `n`.
    pub fn converge(&self, n: N) -> Output {
        self.keep(agent_inside(
            self.node(n),
            &self.ha.region.ec2_url(),
            &["run", "--once"],
        ))
    }

    /// [`Kube::converge`] with extra environment variables (`BERTH_CRASH_AT`).
    pub fn converge_with(&self, n: N, env: &[(&str, &str)]) -> Output {
        let m = self.node(n);
        let ec2 = self.ha.region.ec2_url();
        let vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut argv: Vec<&str> = vec!["env", "BERTH_LOG=debug"];
        argv.extend(vars.iter().map(String::as_str));
        argv.extend_from_slice(&[
            "berth-agent",
            "run",
            "--once",
            "--imds-endpoint",
            m.imds_url(),
            "--ec2-endpoint",
            &ec2,
            "--ssm-endpoint",
            &ec2,
        ]);
        self.keep(m.ct.exec(&argv))
    }

    /// [`Kube::converge`] on each of `which` at once; outputs in that order.
    pub fn converge_all(&self, which: &[N]) -> Vec<Output> {
        std::thread::scope(|s| {
            let handles: Vec<_> = which
                .iter()
                .map(|n| s.spawn(move || self.converge(*n)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Runs every node of `which` at once, again and again (as the reconcile daemon would), until
    /// each exited 0 once in a round; panics with the last outputs after `rounds`.
    pub fn converge_until_ready(&self, which: &[N], rounds: usize) {
        let mut pending: Vec<N> = which.to_vec();
        let mut failed_before: Vec<N> = Vec::new();
        for round in 0..rounds {
            let outs = self.converge_all(&pending);
            let mut still = Vec::new();
            for (n, o) in pending.iter().zip(&outs) {
                if !o.status.success() {
                    eprintln!(
                        "round {round}: {n:?} not ready: {}",
                        crate::ha::describe(o)
                            .lines()
                            .take(3)
                            .collect::<Vec<_>>()
                            .join(" | ")
                    );
                    still.push((*n, o.clone()));
                }
            }
            if still.is_empty() {
                return;
            }
            // Exit 6 is "waiting"; anything else twice in a row on one node is a failure.
            let failed: Vec<N> = still
                .iter()
                .filter(|(_, o)| o.status.code() != Some(6))
                .map(|(n, _)| *n)
                .collect();
            let repeated = failed.iter().any(|n| failed_before.contains(n));
            failed_before = failed;
            if round + 1 == rounds || repeated {
                let all: Vec<String> = still
                    .iter()
                    .map(|(n, o)| format!("{n:?}: {}", crate::ha::describe(o)))
                    .collect();
                panic!(
                    "not converged after {} rounds:\n{}",
                    round + 1,
                    all.join("\n\n")
                );
            }
            pending = still.into_iter().map(|(n, _)| n).collect();
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// `berth-agent status` inside node `n`.
    pub fn status(&self, n: N) -> String {
        let o = self.keep(agent_inside(
            self.node(n),
            &self.ha.region.ec2_url(),
            &["status"],
        ));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `berth-agent plan` inside node `n`.
    pub fn plan(&self, n: N) -> Output {
        self.keep(agent_inside(
            self.node(n),
            &self.ha.region.ec2_url(),
            &["plan"],
        ))
    }

    /// The admin kubeconfig of master `i` (kubeadm's admin.conf), copied out once.
    fn admin_conf(&mut self, i: usize) -> PathBuf {
        if self.admin.is_none() {
            let text = std::fs::read(self.ha.masters[i].ct.path("/etc/kubernetes/admin.conf"))
                .expect("the master has /etc/kubernetes/admin.conf");
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("admin.conf");
            std::fs::write(&p, text).unwrap();
            self.admin = Some((dir, p));
        }
        self.admin.as_ref().unwrap().1.clone()
    }

    /// `kubectl ARGS` from the LAN's bridge namespace (outside every node), through master
    /// `via`'s API server.
    pub fn kubectl(&mut self, via: usize, args: &[&str]) -> Output {
        let conf = self.admin_conf(via);
        let server = format!("https://{}:6443", self.ha.masters[via].ip);
        kubectl_in(
            &self.ha.lan.bridge_netns_path(),
            &self.bin,
            &conf,
            &server,
            args,
        )
    }

    /// Node name → Ready condition status (`True`, `False`, `Unknown`), through master `via`;
    /// `None` when the API does not answer.
    pub fn nodes(&mut self, via: usize) -> Option<Vec<(String, String)>> {
        let o = self.kubectl(
            via,
            &[
                "get",
                "nodes",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
            ],
        );
        if !o.status.success() {
            return None;
        }
        let mut v: Vec<(String, String)> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.to_string(), w.next().unwrap_or("").to_string()))
            })
            .collect();
        v.sort();
        Some(v)
    }

    /// Waits until, through master `via`, exactly the nodes `names` exist and all are Ready.
    pub fn wait_ready(
        &mut self,
        via: usize,
        names: &[String],
        timeout: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        let mut want: Vec<String> = names.to_vec();
        want.sort();
        let mut last = None;
        while start.elapsed() < timeout {
            let now = self.nodes(via);
            if let Some(n) = &now {
                let got: Vec<&String> = n.iter().map(|(name, _)| name).collect();
                if got == want.iter().collect::<Vec<_>>() && n.iter().all(|(_, r)| r == "True") {
                    return Ok(start.elapsed());
                }
            }
            last = now;
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(format!(
            "after {timeout:?}, nodes through master {via}: {last:?}; want {want:?} Ready"
        ))
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Node `n`'s instance terminated: its container killed, EC2 says `terminated`.
    pub fn terminate(&mut self, n: N) {
        match n {
            N::M(i) => self.ha.terminate(i),
            N::W(i) => self.minions[i].terminate(&self.ha.region),
        }
    }

    /// The holder of a control-plane component's leader lease (`kube-controller-manager`,
    /// `kube-scheduler`), through master `via`.
    pub fn lease_holder(&mut self, via: usize, component: &str) -> Option<String> {
        let o = self.kubectl(
            via,
            &[
                "get",
                "lease",
                "-n",
                "kube-system",
                component,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        );
        let h = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (o.status.success() && !h.is_empty()).then_some(h)
    }

    /// The masters whose `component` unit logged taking the leader lease in this boot.
    pub fn lease_takers(&self, component: &str) -> Vec<usize> {
        (0..self.ha.masters.len())
            .filter(|i| self.ha.masters[*i].ct.is_booted())
            .filter(|i| {
                let o = self.ha.masters[*i].ct.exec(&[
                    "journalctl",
                    "--no-pager",
                    "-u",
                    &format!("{component}.service"),
                ]);
                String::from_utf8_lossy(&o.stdout).contains("successfully acquired lease")
            })
            .collect()
    }
}

/// The agent inside node `m`'s container: `berth-agent ARGS` with the instance's IMDS and the
/// region's EC2 and Parameter Store endpoint.
pub fn agent_inside(m: &Master, ec2: &str, args: &[&str]) -> Output {
    let mut argv: Vec<&str> = vec!["env", "BERTH_LOG=debug", "berth-agent"];
    argv.extend_from_slice(args);
    let with_endpoints = args.first() == Some(&"run") || args.first() == Some(&"plan");
    if with_endpoints {
        argv.extend_from_slice(&[
            "--imds-endpoint",
            m.imds_url(),
            "--ec2-endpoint",
            ec2,
            "--ssm-endpoint",
            ec2,
        ]);
    }
    m.ct.exec(&argv)
}

/// Waits up to `timeout` for `f` to return `Some`; the last value it saw otherwise.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn kubectl_in(
    lan_netns: &Path,
    bin: &Path,
    kubeconfig: &Path,
    server: &str,
    args: &[&str],
) -> Output {
    let mut cmd = in_netns(lan_netns, bin.join("kubectl"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .arg(format!("--server={server}"))
        .arg("--request-timeout=10s")
        .args(args);
    cmd.output().expect("run kubectl")
}
