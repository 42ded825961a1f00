//! The configuration the agent wrote for each node of the seed cluster, put on a real network
//! with a real etcd: what the seed walkthrough checks by hand when a minion's kubelet reaches the
//! master's etcd.
//!
//! Each node gets a network namespace of its own holding the private address EC2 gave it, all of
//! them on one bridge (in a namespace of its own too: nothing touches the host's interfaces).
//! `ip netns exec` bind-mounts `/etc/netns/NS/hosts` over `/etc/hosts`, so each node resolves
//! names through the `/etc/hosts` the agent wrote for it. The master runs Debian's etcd 3.4 with
//! the settings of the etcd 0.4 `etcd.conf` the agent wrote (etcd 3.4 no longer reads TOML: each
//! 0.4 key maps onto the 3.4 flag of the same meaning, see [`etcd_args`]), with the v2 API the
//! 2015 Kubernetes components spoke. Every node then takes the URL its kube clients use
//! (`KUBE_ETCD_SERVERS` in its `/etc/kubernetes/config`) and writes and reads keys through it.
//!
//! A wrong address in a hosts block, a wrong port, or an etcd bound to loopback only fails the
//! test; so does a node whose `/etc/hosts` lacks the block (checked as a control). Needs root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::agent::{fedora_root, Region};
use berth_sim::ClusterSpec;

/// etcd 3.4 answers /version within a second of starting; the margin is for a loaded machine.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(60);

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// The nodes' namespaces and their bridge, deleted (with their links) on drop, together with
/// the `/etc/netns/NS` directories that hold each node's hosts file.
struct Lan {
    lan: String,
    nodes: Vec<String>,
}

impl Lan {
    /// A bridge in namespace `lan`, and per node a namespace with `addr/24` on a veth whose peer
    /// is on the bridge.
    fn new(tag: &str, nodes: &[(&str, String)]) -> Lan {
        let lan = format!("berth-lan-{tag}");
        ip(&["netns", "add", &lan]);
        let mut made = Lan {
            lan: lan.clone(),
            nodes: Vec::new(),
        };
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan, "link", "set", "br0", "up"]);
        for (i, (ns, addr)) in nodes.iter().enumerate() {
            ip(&["netns", "add", ns]);
            made.nodes.push(ns.to_string());
            let port = format!("p{i}");
            ip(&[
                "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", &port, "netns",
                &lan,
            ]);
            ip(&["-n", &lan, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        made
    }

    /// `ip netns exec` bind-mounts this file over `/etc/hosts` for programs run in `ns`.
    fn set_hosts(ns: &str, hosts: &[u8]) {
        let dir = netns_etc(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), hosts).unwrap();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.lan)) {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
            let _ = std::fs::remove_dir_all(netns_etc(ns));
        }
    }
}

fn netns_etc(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

/// Stopped by its PID on drop (`ip netns exec` execs the program, so the PID is etcd's).
struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The keys of an etcd 0.4 `etcd.conf` (TOML: `key = "value"` lines, a `[peer]` section),
/// as `key` and `peer.key`.
fn etcd04_settings(conf: &str) -> BTreeMap<String, String> {
    let mut section = String::new();
    let mut out = BTreeMap::new();
    for line in conf.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{s}.");
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a TOML key: {line:?}"));
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or_else(|| panic!("not a TOML string: {line:?}"));
        out.insert(format!("{section}{}", k.trim()), v.to_string());
    }
    out
}

/// etcd 3.4's flags for what an etcd 0.4 `etcd.conf` says: `name`, client `addr` (advertised) and
/// `bind_addr` (listened on), the same two for `[peer]`, and the v2 API. The data directory is
/// the test's own instead of `/var/lib/etcd/`.
fn etcd_args(conf: &BTreeMap<String, String>, data_dir: &Path) -> Vec<String> {
    let get = |k: &str| {
        conf.get(k)
            .unwrap_or_else(|| panic!("etcd.conf has no {k}: {conf:?}"))
            .clone()
    };
    let name = get("name");
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls=http://{}", get("bind_addr")),
        format!("--advertise-client-urls=http://{}", get("addr")),
        format!("--listen-peer-urls=http://{}", get("peer.bind_addr")),
        format!("--initial-advertise-peer-urls=http://{}", get("peer.addr")),
        format!("--initial-cluster={name}=http://{}", get("peer.addr")),
        "--enable-v2=true".into(),
    ]
}

/// The etcd URL of a node's kube clients: `KUBE_ETCD_SERVERS="--etcd_servers=URL"`.
fn etcd_url(kube_config: &str) -> String {
    kube_config
        .lines()
        .find_map(|l| l.strip_prefix("KUBE_ETCD_SERVERS=\"--etcd_servers="))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no KUBE_ETCD_SERVERS in:\n{kube_config}"))
        .to_string()
}

/// `curl` in `ns`: the body, or the error curl printed.
fn curl(ns: &str, args: &[&str]) -> Result<String, String> {
    let out = in_ns(ns, "curl")
        .args(["-sS", "--fail", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[test]
fn every_node_reaches_the_masters_etcd_through_the_files_the_agent_wrote() {
    let test = "every_node_reaches_the_masters_etcd_through_the_files_the_agent_wrote";
    if !berth_e2e::can_run(test, "etcd", "etcd.sh") {
        return;
    }
    let mut spec = ClusterSpec::seed();
    let m2 = spec.not_launched("fed-minion-2").unwrap();
    spec.instances.push(m2);
    spec.not_launched.clear();
    // The addresses come from the region, not from what the agent wrote: the hosts files are
    // what is under test.
    let addrs: Vec<(String, String)> = spec
        .instances
        .iter()
        .map(|i| (i.name.clone(), i.private_ip.unwrap().to_string()))
        .collect();
    let region = Region::start(spec);
    let roots: BTreeMap<&str, tempfile::TempDir> = addrs
        .iter()
        .map(|(name, _)| {
            let root = fedora_root();
            region.converge(name, root.path());
            (name.as_str(), root)
        })
        .collect();
    let read = |node: &str, path: &str| {
        std::fs::read_to_string(roots[node].path().join(path))
            .unwrap_or_else(|e| panic!("{node}: {path}: {e}"))
    };

    let tag = std::process::id().to_string();
    let ns = |node: &str| format!("berth-{tag}-{node}");
    let nodes: Vec<(String, String)> = addrs.iter().map(|(n, a)| (ns(n), a.clone())).collect();
    let node_refs: Vec<(&str, String)> =
        nodes.iter().map(|(n, a)| (n.as_str(), a.clone())).collect();
    let _lan = Lan::new(&tag, &node_refs);
    for (name, _) in &addrs {
        Lan::set_hosts(&ns(name), read(name, "etc/hosts").as_bytes());
    }

    // The master's etcd, as its etcd.conf says.
    let conf = etcd04_settings(&read("fed-master", "etc/etcd/etcd.conf"));
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("etcd.log");
    let _etcd = Etcd(
        in_ns(&ns("fed-master"), "etcd")
            .args(etcd_args(&conf, &data.path().join("data")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("etcd starts"),
    );

    // Every node, through its own kube config and its own /etc/hosts.
    let started = Instant::now();
    for (name, _) in &addrs {
        let url = etcd_url(&read(name, "etc/kubernetes/config"));
        let version = loop {
            match curl(&ns(name), &[&format!("{url}/version")]) {
                Ok(body) => break body,
                Err(e) if started.elapsed() > ETCD_READY_TIMEOUT => panic!(
                    "{name} cannot reach etcd at {url}: {e}\netcd's log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        assert!(version.contains("etcdserver"), "{name}: {version}");
        // A key each node writes over the v2 API, as the 2015 kubelet and apiserver did.
        let put = curl(
            &ns(name),
            &[
                "-X",
                "PUT",
                &format!("{url}/v2/keys/berth/nodes/{name}"),
                "-d",
                &format!("value=reached from {name}"),
            ],
        )
        .unwrap_or_else(|e| panic!("{name}: PUT through {url}: {e}"));
        assert!(put.contains("\"action\":\"set\""), "{name}: {put}");
    }
    // Every node sees every node's key: one etcd, the master's, behind every URL.
    for (name, _) in &addrs {
        let url = etcd_url(&read(name, "etc/kubernetes/config"));
        let listing = curl(&ns(name), &[&format!("{url}/v2/keys/berth/nodes")]).unwrap();
        for (other, _) in &addrs {
            assert!(
                listing.contains(&format!("reached from {other}")),
                "{name} does not see {other}'s key: {listing}"
            );
        }
    }
    // The master's etcd answers on its private address, not on loopback only: the client URL it
    // advertises names the master, and that name is its private address in every hosts file.
    let members = curl(&ns("fed-minion"), &["http://fed-master:4001/v2/members"]).unwrap();
    let master_addr = &addrs.iter().find(|(n, _)| n == "fed-master").unwrap().1;
    assert!(members.contains("http://fed-master:4001"), "{members}");
    let resolved = run(in_ns(&ns("fed-minion-2"), "getent").args(["hosts", "fed-master"]));
    assert!(
        String::from_utf8_lossy(&resolved.stdout).starts_with(&format!("{master_addr} ")),
        "{}",
        String::from_utf8_lossy(&resolved.stdout)
    );

    // Control: the same minion with the image's pristine /etc/hosts (no berth block) cannot
    // resolve the master, so it is the agent's block that made the difference.
    Lan::set_hosts(
        &ns("fed-minion"),
        &std::fs::read(fedora_root().path().join("etc/hosts")).unwrap(),
    );
    let err = curl(&ns("fed-minion"), &["http://fed-master:4001/version"]).unwrap_err();
    assert!(
        err.contains("resolve") || err.contains("Could not"),
        "without the agent's hosts block the master still resolved: {err}"
    );
}
