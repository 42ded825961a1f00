//! `berth-sim demo`: the seed walkthrough's cluster, zero-touch, on one machine.
//!
//! The region is the seed's (`sim/clusters/seed.yaml`). Each node is a real `berth-agent` process
//! running as the reconcile daemon (`run --no-host-actions`) in its own `--root` directory laid
//! out like a fresh Fedora Atomic 21 host. The demo changes the cluster only the way a user would,
//! through EC2 (launch fed-minion-2, stop fed-minion), and shows what every node's agent did on
//! its own. It never touches a node's files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ClusterSpec, Sim};

/// The image's kubelet unit as Fedora Atomic 21 shipped it: the `docker.socket` dependency the
/// seed fixed by hand.
const FEDORA_KUBELET_UNIT: &str =
    include_str!("../../tests/fixtures/fedora-21/units/kubelet.service");
const FEDORA_HOSTS: &str =
    "127.0.0.1   localhost localhost.localdomain\n::1         localhost6 localhost6.localdomain6\n";
/// Every node polls EC2 this often in the demo (the default is 30 s; see agent/src/poll.rs).
const DEMO_POLL: &str = "poll:\n  interval_seconds: 0.5\n";
/// How long the demo waits for the cluster to reach each expected state before it gives up.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "berth-agent not found next to berth-sim ({0}) nor on PATH; build it with \
         `cargo build --release -p berth-agent -p berth-sim`, or pass --agent PATH"
    )]
    NoAgent(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "{0} did not happen within {STEP_DEADLINE:?}; each node's agent log is in {1}/NODE.log"
    )]
    Timeout(String, String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Where the agent binary is: `--agent`, else beside this binary, else on PATH.
pub fn find_agent(explicit: Option<PathBuf>) -> Result<PathBuf, DemoError> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let me = std::env::current_exe().map_err(io("locating berth-sim"))?;
    let beside = me.with_file_name("berth-agent");
    if beside.is_file() {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("berth-agent"))
        .find(|p| p.is_file())
        .ok_or_else(|| DemoError::NoAgent(beside.display().to_string()))
}

/// One node: its root directory and its agent process.
struct Node {
    name: &'static str,
    root: PathBuf,
    agent: Option<Child>,
}

impl Node {
    fn new(dir: &Path, name: &'static str) -> Result<Node, DemoError> {
        let root = dir.join(name);
        let units = root.join("usr/lib/systemd/system");
        std::fs::create_dir_all(&units).map_err(io(format!("creating {}", units.display())))?;
        std::fs::write(units.join("kubelet.service"), FEDORA_KUBELET_UNIT)
            .map_err(io("writing the image's kubelet unit"))?;
        std::fs::create_dir_all(root.join("etc/berth")).map_err(io("creating /etc/berth"))?;
        std::fs::write(root.join("etc/hosts"), FEDORA_HOSTS).map_err(io("writing /etc/hosts"))?;
        std::fs::write(root.join("etc/berth/config.yaml"), DEMO_POLL)
            .map_err(io("writing /etc/berth/config.yaml"))?;
        Ok(Node {
            name,
            root,
            agent: None,
        })
    }

    fn start(&mut self, agent: &Path, sim: &Sim, dir: &Path) -> Result<(), DemoError> {
        let log = std::fs::File::create(dir.join(format!("{}.log", self.name)))
            .map_err(io("creating the agent log"))?;
        let child = Command::new(agent)
            .args(["run", "--no-host-actions", "--root"])
            .arg(&self.root)
            .args([
                "--imds-endpoint",
                &sim.imds_url(self.name).expect("the node's instance exists"),
                "--ec2-endpoint",
                &sim.ec2_url(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting berth-agent for {}", self.name)))?;
        println!(
            "  {:<13} berth-agent running (pid {})",
            self.name,
            child.id()
        );
        self.agent = Some(child);
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // SIGTERM first: the agent exits cleanly between two polls.
            terminate(c.id());
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root.join(path.trim_start_matches('/'))).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn terminate(pid: u32) {
    // kill(1) keeps this crate free of unsafe code and of a libc dependency.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

fn managed_hosts(n: &Node) -> String {
    let hosts = n.read("/etc/hosts");
    let mut out = String::new();
    let mut inside = false;
    for l in hosts.lines() {
        if l.starts_with("# BEGIN berth") {
            inside = true;
            continue;
        }
        if l.starts_with("# END berth") {
            inside = false;
        }
        if inside {
            out.push_str(&format!("      {l}\n"));
        }
    }
    out
}

fn settings(n: &Node, path: &str) -> String {
    n.read(path)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| format!("      {l}\n"))
        .collect()
}

fn show(nodes: &[&Node]) {
    for n in nodes {
        println!("\n  {} ({})", n.name, n.root.display());
        let files: &[&str] = if n.name == "fed-master" {
            &[
                "/etc/kubernetes/config",
                "/etc/kubernetes/apiserver",
                "/etc/kubernetes/controller-manager",
                "/etc/etcd/etcd.conf",
            ]
        } else {
            &[
                "/etc/kubernetes/config",
                "/etc/kubernetes/kubelet",
                "/etc/etcd/etcd.conf",
            ]
        };
        for f in files {
            println!("    {f}");
            print!("{}", settings(n, f));
        }
        println!("    /etc/hosts (berth's block)");
        print!("{}", managed_hosts(n));
        let unit = n.read("/etc/systemd/system/kubelet.service");
        if let Some(l) = unit.lines().find(|l| l.starts_with("Requires=")) {
            println!(
                "    /etc/systemd/system/kubelet.service (derived from the image's)\n      {l}"
            );
        }
    }
}

fn wait_until(
    what: &str,
    dir: &Path,
    mut done: impl FnMut() -> bool,
) -> Result<Duration, DemoError> {
    let start = Instant::now();
    while start.elapsed() < STEP_DEADLINE {
        if done() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(DemoError::Timeout(
        what.to_string(),
        dir.display().to_string(),
    ))
}

fn machines(master: &Node) -> String {
    settings(master, "/etc/kubernetes/controller-manager")
        .trim()
        .to_string()
}

/// Runs the demo in `dir` (created; left in place so the files can be read afterwards).
pub async fn run(agent: PathBuf, dir: PathBuf) -> Result<(), DemoError> {
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let spec = ClusterSpec::seed();
    let m2_spec = spec
        .not_launched("fed-minion-2")
        .expect("the seed cluster describes fed-minion-2");
    let sim = Sim::start(spec).await.map_err(io("starting the region"))?;
    println!("berth demo: the seed cluster of February 2015, zero-touch");
    println!("  region {} at {}", sim.region(), sim.ec2_url());
    for (name, id, state) in sim.instances() {
        println!(
            "  {name:<13} {id}  {state}  IMDS {}",
            sim.imds_url(&id).unwrap_or_default()
        );
    }

    let result = tokio::task::block_in_place(|| -> Result<(), DemoError> {
        let mut master = Node::new(&dir, "fed-master")?;
        let mut minion = Node::new(&dir, "fed-minion")?;
        let mut minion2 = Node::new(&dir, "fed-minion-2")?;

        println!("\n== 1. fed-master and fed-minion boot: each agent reads IMDS and EC2, nobody types anything");
        master.start(&agent, &sim, &dir)?;
        minion.start(&agent, &sim, &dir)?;
        let t = wait_until("fed-master and fed-minion converging", &dir, || {
            machines(&master).contains("--machines=fed-minion\"")
                && minion
                    .read("/etc/kubernetes/kubelet")
                    .contains("fed-minion")
        })?;
        println!("  converged in {:.1} s", t.as_secs_f64());
        show(&[&master, &minion]);

        println!(
            "\n== 2. launch fed-minion-2 (RunInstances with role=minion): every node re-converges"
        );
        let handle = tokio::runtime::Handle::current();
        handle
            .block_on(sim.launch(m2_spec))
            .map_err(io("launching fed-minion-2"))?;
        minion2.start(&agent, &sim, &dir)?;
        let t = wait_until("every node learning of fed-minion-2", &dir, || {
            machines(&master).contains("--machines=fed-minion,fed-minion-2\"")
                && [&master, &minion, &minion2]
                    .iter()
                    .all(|n| n.read("/etc/hosts").contains(" fed-minion-2\n"))
        })?;
        println!("  every node re-converged in {:.1} s", t.as_secs_f64());
        println!("    fed-master: {}", machines(&master));
        show(&[&minion2]);
        println!("\n    /etc/hosts on fed-minion now:");
        print!("{}", managed_hosts(&minion));

        println!("\n== 3. stop fed-minion (StopInstances): it leaves the cluster's configuration");
        sim.set_state("fed-minion", "stopped");
        minion.stop();
        let t = wait_until("fed-minion leaving every configuration", &dir, || {
            machines(&master).contains("--machines=fed-minion-2\"")
                && [&master, &minion2]
                    .iter()
                    .all(|n| !n.read("/etc/hosts").contains(" fed-minion\n"))
        })?;
        println!("  fed-minion left in {:.1} s", t.as_secs_f64());
        println!("    fed-master: {}", machines(&master));
        println!("    /etc/hosts on fed-master now:");
        print!("{}", managed_hosts(&master));

        println!("\n== berth-agent status on fed-master");
        let status = Command::new(&agent)
            .args(["status", "--root"])
            .arg(&master.root)
            .output()
            .map_err(io("berth-agent status"))?;
        for l in String::from_utf8_lossy(&status.stdout).lines() {
            println!("  {l}");
        }
        master.stop();
        minion2.stop();
        let ec2_calls = sim
            .requests()
            .iter()
            .filter(|r| r.action.as_deref() == Some("DescribeInstances"))
            .count();
        println!(
            "\nberth demo: done ({ec2_calls} signed DescribeInstances calls in all). Each node's \
             files and agent log are under {}",
            dir.display()
        );
        Ok(())
    });
    sim.shutdown().await;
    result
}
