//! A Fedora 21 node for the real `berth-agent`: a booted systemd container carrying the Fedora 21
//! units and stand-in daemons ([`crate::nspawn`]), plus rpm-ostree's daemon double on a private
//! bus ([`crate::rpmostree_double`]), driven against a berth-sim region ([`crate::agent`]).
//!
//! The agent runs on the test host with `--root` at the container's root, `--system-bus` at the
//! container's system bus and `--rpmostree-bus` at the double's bus: files land where the
//! container's systemd reads them, and every unit action goes through that systemd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::agent::Region;
use crate::dbus::PrivateBus;
use crate::nspawn::Container;
use crate::rpmostree_double::{Double, Scenario, State};

pub const MASTER_UNITS: &[&str] = &[
    "etcd.service",
    "kube-apiserver.service",
    "kube-controller-manager.service",
    "kube-scheduler.service",
];
pub const MINION_UNITS: &[&str] = &["kube-proxy.service", "kubelet.service", "docker.service"];

pub struct Node {
    pub ct: Container,
    pub bus: PrivateBus,
    pub rpmostree: Option<Double>,
    double_exe: PathBuf,
}

impl Node {
    /// Boot a Fedora 21 container and start rpm-ostree's double with `scenario` and `state`.
    pub fn boot(standin: &Path, double_exe: &Path, scenario: Scenario, state: &State) -> Node {
        let ct = Container::new();
        ct.install_fedora21(standin);
        // The agent reads the boot id under --root first: give each boot of the container its
        // own (the container's real /proc is mounted over this file inside it).
        let mut node = Node {
            ct,
            bus: PrivateBus::start(),
            rpmostree: None,
            double_exe: double_exe.to_path_buf(),
        };
        node.set_boot_id("berth-test-boot-1");
        node.ct.boot();
        node.restart_rpmostree(scenario, Some(state));
        node
    }

    /// What the agent takes as this boot's id.
    pub fn set_boot_id(&self, id: &str) {
        let path = self.ct.path("/proc/sys/kernel/random/boot_id");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{id}\n")).unwrap();
    }

    /// Stop rpm-ostree's double and start it again, with a new scenario and, if given, a new
    /// state (else the state it left, as a daemon restarted on the same host would find).
    pub fn restart_rpmostree(&mut self, scenario: Scenario, state: Option<&State>) {
        self.rpmostree = None;
        self.rpmostree = Some(Double::start(
            &self.double_exe,
            self.bus.address(),
            &self.bus.dir(),
            scenario,
            state,
        ));
    }

    pub fn double(&self) -> &Double {
        self.rpmostree.as_ref().expect("rpm-ostree's double runs")
    }

    /// `berth-agent run --once` against the container's systemd and the double, with `env`.
    pub fn run(&self, region: &Region, node: &str, env: &[(&str, &str)]) -> Output {
        self.command(region, node, env)
            .output()
            .expect("berth-agent runs")
    }

    /// The command of [`Node::run`], to spawn it instead.
    pub fn command(&self, region: &Region, node: &str, env: &[(&str, &str)]) -> Command {
        let imds = region.sim.imds_url(node).expect("the node has an IMDS");
        let mut cmd = Command::new(crate::agent::bin("berth-agent"));
        cmd.args(["run", "--once", "--system-bus"])
            .arg(self.ct.bus_address())
            .arg("--rpmostree-bus")
            .arg(self.bus.address())
            .arg("--root")
            .arg(self.ct.root())
            .args([
                "--imds-endpoint",
                &imds,
                "--ec2-endpoint",
                &region.sim.ec2_url(),
            ])
            .envs(env.iter().copied());
        cmd
    }

    /// [`Node::run`] with debug logs, asserting success; returns the log.
    pub fn converge(&self, region: &Region, node: &str) -> String {
        crate::agent::bin("berth-agent"); // built before the clock starts
        let started = std::time::Instant::now();
        let out = self.run(region, node, &[("BERTH_LOG", "debug")]);
        eprintln!(
            "{node}: berth-agent run --once took {:?}",
            started.elapsed()
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "{node}: berth-agent failed ({}):\n{stderr}",
            out.status
        );
        stderr
    }

    /// How many times each stand-in daemon has been started so far.
    pub fn starts(&self) -> BTreeMap<String, usize> {
        crate::nspawn::STANDINS
            .iter()
            .map(|n| (n.to_string(), self.ct.standin_starts(n).len()))
            .collect()
    }

    pub fn last_args(&self, daemon: &str) -> Vec<String> {
        self.ct
            .wait_standin_starts(daemon, 1)
            .last()
            .cloned()
            .unwrap_or_else(|| panic!("{daemon} was never started"))
    }

    pub fn assert_units(&self, units: &[&str], enabled: &str, active: &str) {
        for unit in units {
            assert_eq!(self.ct.systemctl(&["is-enabled", unit]), enabled, "{unit}");
            assert_eq!(self.ct.systemctl(&["is-active", unit]), active, "{unit}");
        }
    }
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The seed master's daemons and the exact arguments each runs with (one minion).
pub fn master_args() -> BTreeMap<&'static str, Vec<String>> {
    BTreeMap::from([
        ("etcd", strings(&["-config", "/etc/etcd/etcd.conf"])),
        (
            "kube-apiserver",
            strings(&[
                "--logtostderr=true",
                "--v=0",
                "--etcd_servers=http://fed-master:4001",
                "--address=0.0.0.0",
                "--port=8080",
                "--kubelet_port=10250",
                "--allow_privileged=false",
                "--portal_net=10.254.0.0/16",
            ]),
        ),
        (
            "kube-controller-manager",
            strings(&[
                "--logtostderr=true",
                "--v=0",
                "--machines=fed-minion",
                "--master=http://fed-master:8080",
            ]),
        ),
        (
            "kube-scheduler",
            strings(&[
                "--logtostderr=true",
                "--v=0",
                "--master=http://fed-master:8080",
            ]),
        ),
    ])
}
