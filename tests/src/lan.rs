//! A LAN of masters for the `kubeadm` profile's etcd tier: each master a booted systemd
//! container in a network namespace of its own, all on one bridge, with an emulated EC2 region
//! reachable from every one of them.
//!
//! Layout of one [`Lan`] (every name carries the test process's id and a counter):
//!
//! ```text
//!   netns berth-PID-SEQ-TAG            netns berth-PID-SEQ-NODE (one per node)
//!   ┌───────────────────────────┐      ┌──────────────────────────────┐
//!   │ br0  10.N.0.1/24          │──vK──│ eth0  10.N.0.x/24            │
//!   │  berth-sim: EC2 + IMDS    │      │ systemd-nspawn container:    │
//!   │  etcdctl "from outside"   │      │ systemd, etcd.service        │
//!   └───────────────────────────┘      └──────────────────────────────┘
//! ```
//!
//! Nothing touches the host's own interfaces: the bridge lives in a namespace of its own, and
//! no namespace has a route beyond its /24. The region ([`LanRegion`]) is `berth_sim::Sim`
//! running on a thread that joined the bridge namespace (`setns(CLONE_NEWNET)` affects the
//! calling thread only, and a socket belongs to the namespace of the thread that created it),
//! so its EC2 endpoint and every instance's IMDS listen on the gateway address `10.N.0.1`.
//!
//! A [`Master`] is one instance of that region and one node of the LAN at the instance's
//! private address, booted as a [`Container`] with Debian's etcd 3.4 under a Fedora-shaped
//! `etcd.service` ([`Container::install_etcd`]). The real `berth-agent` runs on the host, in the
//! node's network namespace, against the container's root and system bus ([`Master::agent`]).
//!
//! Every process is stopped by its PID and every namespace and link deleted on drop. Needs root.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use berth_sim::{ClusterSpec, InstanceSpec, Sim};

use crate::nspawn::Container;

/// The bridge's interface name, inside the bridge namespace.
const BRIDGE: &str = "br0";

/// Where `ip netns add NAME` puts the namespace.
const NETNS_DIR: &str = "/run/netns";

/// A bound for [`Master::wait_etcd_active`]: three etcd 3.4 members started through their
/// units are all `active` within a second here; the margin is for a loaded CI machine.
pub const ETCD_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Lans made by this process so far: with the PID, it makes every name unique.
static LANS: AtomicU32 = AtomicU32::new(0);

/// Run `cmd`, panicking with its stderr unless it succeeds.
fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// `ip ARGS`, whose failure is only reported: used while tearing down, where a link may already
/// be gone with its namespace.
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A program run in the network namespace at `netns` only (the host's files, mounts and PIDs).
/// `nsenter` execs the program, so the child's PID is the program's own.
pub fn in_netns(netns: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program);
    cmd
}

/// One node of a [`Lan`]: its namespace, its address, and its port on the bridge.
#[derive(Debug, Clone)]
struct LanNode {
    netns: String,
    ip: Ipv4Addr,
    /// The bridge side of the node's veth pair, inside the bridge namespace.
    port: String,
}

/// A bridge in a network namespace of its own, with the gateway address `10.N.0.1/24`, and
/// nodes attached to it. Dropping it deletes every namespace and link it made.
pub struct Lan {
    /// The bridge namespace's name.
    bridge_ns: String,
    /// `berth-PID-SEQ`: the prefix of every namespace of this LAN.
    prefix: String,
    /// The second octet of every address of this LAN.
    net: u8,
    nodes: Mutex<BTreeMap<String, LanNode>>,
    ports: AtomicU32,
}

impl Lan {
    /// A new bridge namespace `berth-PID-SEQ-TAG` with `br0` up at `10.N.0.1/24`.
    ///
    /// The namespaces' names carry this process's id and a counter, so parallel tests (threads
    /// or processes) never share one; should a namespace of that name survive from a crashed
    /// run whose PID this process reuses, the next counter is taken. The addresses need no such
    /// care, since each LAN's namespaces see only each other; N (2..=251) is still derived from
    /// the PID and the counter, so that the LANs of one machine tell themselves apart in logs.
    ///
    /// `tag`: a few characters naming the test (letters, digits, `-`).
    pub fn new(tag: &str) -> Lan {
        assert!(
            !tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "a LAN tag is letters, digits and `-`: {tag:?}"
        );
        let pid = std::process::id();
        let (seq, prefix, bridge_ns) = loop {
            let seq = LANS.fetch_add(1, Ordering::Relaxed);
            let prefix = format!("berth-{pid}-{seq}");
            let bridge_ns = format!("{prefix}-{tag}");
            let made = Command::new("ip")
                .args(["netns", "add", &bridge_ns])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run ip (apt-get install iproute2)");
            if made.success() {
                break (seq, prefix, bridge_ns);
            }
            assert!(
                seq < 1000,
                "cannot create a network namespace (ip netns add {bridge_ns})"
            );
        };
        let net = ((pid as u64 * 31 + seq as u64) % 250 + 2) as u8;
        let lan = Lan {
            bridge_ns,
            prefix,
            net,
            nodes: Mutex::new(BTreeMap::new()),
            ports: AtomicU32::new(0),
        };
        let ns = lan.bridge_ns.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        // A fixed MAC: a bridge otherwise takes the lowest MAC of its ports, and removing a
        // terminated node's port can change it while the other nodes' ARP entries still name
        // the old one (their IMDS and EC2 traffic to the gateway then stalls for tens of
        // seconds).
        let mac = format!("02:be:47:00:{:02x}:01", lan.net);
        ip(&[
            "-n", ns, "link", "add", BRIDGE, "address", &mac, "type", "bridge",
        ]);
        let gateway = format!("{}/24", lan.gateway());
        ip(&["-n", ns, "addr", "add", &gateway, "dev", BRIDGE]);
        ip(&["-n", ns, "link", "set", BRIDGE, "up"]);
        lan
    }

    /// `10.N.0.host`, an address of this LAN.
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, host)
    }

    /// The bridge's address, `10.N.0.1`: where the region listens.
    pub fn gateway(&self) -> Ipv4Addr {
        self.addr(1)
    }

    /// The bridge namespace's name (`ip netns list` shows it).
    pub fn bridge_netns(&self) -> &str {
        &self.bridge_ns
    }

    /// The bridge namespace, as a path for `nsenter --net=` or `setns`.
    pub fn bridge_netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.bridge_ns)
    }

    /// Every namespace of this LAN that exists now, bridge first: what `ip netns list` shows of
    /// it.
    pub fn netns_names(&self) -> Vec<String> {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        std::iter::once(self.bridge_ns.clone())
            .chain(nodes.values().map(|n| n.netns.clone()))
            .collect()
    }

    fn node(&self, name: &str) -> LanNode {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("the LAN has no node `{name}`"))
    }

    /// Add the node `name`: a namespace `berth-PID-SEQ-NAME` with loopback up and `ip/24` on
    /// `eth0`, a veth whose peer is a port of the bridge. Returns the namespace's path.
    ///
    /// Panics when `name` is taken, is not letters, digits and `-`, or `ip` is not in
    /// `10.N.0.2`–`10.N.0.254`.
    pub fn add_node(&self, name: &str, ip_addr: Ipv4Addr) -> PathBuf {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "a node name is letters, digits and `-`: {name:?}"
        );
        let o = ip_addr.octets();
        assert!(
            o[0] == 10 && o[1] == self.net && o[2] == 0 && (2..=254).contains(&o[3]),
            "{ip_addr} is not a node address of this LAN (10.{}.0.2 to 10.{}.0.254)",
            self.net,
            self.net
        );
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(!nodes.contains_key(name), "the LAN has a node `{name}`");
        assert!(
            nodes.values().all(|n| n.ip != ip_addr),
            "{ip_addr} is another node's address"
        );
        let netns = format!("{}-{name}", self.prefix);
        let port = format!("v{}", self.ports.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &netns]);
        // Recorded at once, so that drop deletes it even if a step below fails.
        nodes.insert(
            name.to_string(),
            LanNode {
                netns: netns.clone(),
                ip: ip_addr,
                port: port.clone(),
            },
        );
        let br = self.bridge_ns.as_str();
        ip(&[
            "-n", br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["-n", br, "link", "set", &port, "master", BRIDGE, "up"]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let addr = format!("{ip_addr}/24");
        ip(&["-n", &netns, "addr", "add", &addr, "dev", "eth0"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        Path::new(NETNS_DIR).join(netns)
    }

    /// The namespace of node `name`, as a path for `nsenter --net=` or
    /// `systemd-nspawn --network-namespace-path=`.
    pub fn netns_path(&self, name: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(self.node(name).netns)
    }

    /// The address of node `name`.
    pub fn node_ip(&self, name: &str) -> Ipv4Addr {
        self.node(name).ip
    }

    /// Remove node `name`: its bridge port (and so its veth pair) and its namespace. A process
    /// still inside keeps the namespace alive, but off the LAN.
    pub fn remove_node(&self, name: &str) {
        let node = self
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .unwrap_or_else(|| panic!("the LAN has no node `{name}`"));
        ip(&["-n", &self.bridge_ns, "link", "delete", &node.port]);
        ip(&["netns", "delete", &node.netns]);
    }

    /// Partition node `name`: its bridge port goes down, as a pulled cable. The node keeps its
    /// address and its processes; no packet crosses until [`Lan::link_up`].
    pub fn link_down(&self, name: &str) {
        let node = self.node(name);
        ip(&["-n", &self.bridge_ns, "link", "set", &node.port, "down"]);
    }

    /// Undo [`Lan::link_down`].
    pub fn link_up(&self, name: &str) {
        let node = self.node(name);
        ip(&["-n", &self.bridge_ns, "link", "set", &node.port, "up"]);
    }

    /// `argv` run in the bridge namespace, its output collected: how a test looks at the LAN
    /// from outside every node (`etcdctl --endpoints http://10.N.0.x:2379 member list`). It
    /// runs on the host's files: TLS material written inside a container is named by its host
    /// path (`master.ct.path("/etc/etcd/pki/ca.crt")`).
    pub fn exec(&self, argv: &[&str]) -> Output {
        let (program, args) = argv.split_first().expect("a command");
        in_netns(&self.bridge_netns_path(), program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{argv:?} cannot run: {e}"))
    }

    /// `argv` run in node `name`'s namespace, from the host's files (not the container's).
    pub fn exec_on(&self, name: &str, argv: &[&str]) -> Output {
        let (program, args) = argv.split_first().expect("a command");
        in_netns(&self.netns_path(name), program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{argv:?} cannot run: {e}"))
    }

    /// A region whose EC2 endpoint and instances' IMDS listen on [`Lan::gateway`]. The
    /// instances of `spec` must have their `private_ip`s on this LAN; their nodes are not made
    /// here (see [`Master::launch`]).
    pub fn region(&self, spec: ClusterSpec) -> LanRegion {
        LanRegion::start(self, spec)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let nodes = std::mem::take(self.nodes.get_mut().unwrap_or_else(PoisonError::into_inner));
        for node in nodes.values() {
            ip_quiet(&["-n", &self.bridge_ns, "link", "delete", &node.port]);
            ip_quiet(&["netns", "delete", &node.netns]);
        }
        ip_quiet(&["netns", "delete", &self.bridge_ns]);
    }
}

/// What the test thread asks of the region's thread: whatever binds a socket must run there.
enum Request {
    Launch(
        InstanceSpec,
        std::sync::mpsc::Sender<std::io::Result<String>>,
    ),
}

/// `berth_sim::Sim` serving inside a [`Lan`]'s bridge namespace, on a thread of its own with a
/// single-threaded tokio runtime: every listener it binds (EC2, and each instance's IMDS, also
/// of instances launched later) is on the gateway address, reachable from every node.
///
/// Stopped on drop: the thread ends, its runtime closes every listener and connection.
pub struct LanRegion {
    sim: Option<Arc<Sim>>,
    requests: Option<tokio::sync::mpsc::UnboundedSender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    gateway: Ipv4Addr,
}

impl LanRegion {
    /// Start `spec`'s region in `lan`'s bridge namespace. `spec.ec2_listen` and each
    /// instance's `imds_listen` default to the gateway address on a free port.
    ///
    /// Panics when an instance's private address is missing or not on the LAN, or the region
    /// does not start.
    pub fn start(lan: &Lan, mut spec: ClusterSpec) -> LanRegion {
        let gateway = lan.gateway();
        let any_port = SocketAddr::new(gateway.into(), 0);
        spec.ec2_listen.get_or_insert(any_port);
        for i in spec.instances.iter_mut() {
            check_on_lan(lan, i);
            i.imds_listen.get_or_insert(any_port);
        }
        let netns = std::fs::File::open(lan.bridge_netns_path()).expect("open the bridge netns");
        let (requests, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
        let (started_tx, started) = std::sync::mpsc::channel::<std::io::Result<Arc<Sim>>>();
        let thread = std::thread::Builder::new()
            .name("berth-lan-region".into())
            .spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a namespace file this thread holds open; it changes this
                // thread's network namespace only.
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    let _ = started_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                drop(netns);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                rt.block_on(async move {
                    let sim = match Sim::start(spec).await {
                        Ok(sim) => Arc::new(sim),
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(sim.clone()));
                    // Serves until every sender is gone (the LanRegion dropped).
                    while let Some(req) = rx.recv().await {
                        match req {
                            Request::Launch(spec, reply) => {
                                let _ = reply.send(sim.launch(spec).await);
                            }
                        }
                    }
                    // The last handle: dropping it stops every listener.
                    drop(sim);
                });
                // The runtime drops here with every task it ran: no socket outlives it.
            })
            .expect("spawn the region's thread");
        let sim = started
            .recv()
            .expect("the region's thread answers")
            .unwrap_or_else(|e| panic!("berth-sim does not start in the bridge namespace: {e}"));
        LanRegion {
            sim: Some(sim),
            requests: Some(requests),
            thread: Some(thread),
            gateway,
        }
    }

    /// The region, for what does not bind a socket: queries (`instances`, `requests`,
    /// `private_ip`), `set_state`, `set_tag`, `faults`. Launch through [`LanRegion::launch`]:
    /// `Sim::launch` called from another thread would bind the new IMDS in that thread's
    /// namespace and runtime.
    pub fn sim(&self) -> &Sim {
        self.sim.as_ref().expect("the region runs")
    }

    /// Launch an instance (`pending`, then `running` after the cluster's `launch_pending_ms`)
    /// with its IMDS on the gateway address. Returns its instance id.
    ///
    /// Panics when its private address is missing or not on the LAN, or the region refuses it
    /// (a name, id or running instance's address taken).
    pub fn launch(&self, lan: &Lan, mut spec: InstanceSpec) -> String {
        check_on_lan(lan, &spec);
        spec.imds_listen
            .get_or_insert(SocketAddr::new(self.gateway.into(), 0));
        let name = spec.name.clone();
        let (reply, answer) = std::sync::mpsc::channel();
        self.requests
            .as_ref()
            .expect("the region runs")
            .send(Request::Launch(spec, reply))
            .expect("the region's thread runs");
        answer
            .recv()
            .expect("the region's thread answers")
            .unwrap_or_else(|e| panic!("berth-sim does not launch {name}: {e}"))
    }

    /// Set an instance's EC2 state (by id or `Name`): `terminated` for an instance gone.
    pub fn set_state(&self, id_or_name: &str, state: &str) {
        self.sim().set_state(id_or_name, state);
    }

    /// Set (`Some`) or delete (`None`) a tag of an instance (by id or `Name`).
    pub fn set_tag(&self, id_or_name: &str, key: &str, value: Option<&str>) {
        self.sim().set_tag(id_or_name, key, value);
    }

    /// The instance's IMDS base URL, `http://10.N.0.1:PORT/`.
    pub fn imds_url(&self, id_or_name: &str) -> String {
        self.sim()
            .imds_url(id_or_name)
            .unwrap_or_else(|| panic!("berth-sim has no instance `{id_or_name}`"))
    }

    /// The EC2 endpoint, `http://10.N.0.1:PORT/`.
    pub fn ec2_url(&self) -> String {
        self.sim().ec2_url()
    }

    /// The instance id of the instance called `name` (its `Name` tag).
    pub fn instance_id(&self, name: &str) -> String {
        self.sim()
            .instance_id(name)
            .unwrap_or_else(|| panic!("berth-sim has no instance `{name}`"))
    }
}

impl Drop for LanRegion {
    fn drop(&mut self) {
        // The test thread's handle first, then the channel: the thread then stops its
        // listeners and ends with its runtime.
        self.sim = None;
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn check_on_lan(lan: &Lan, spec: &InstanceSpec) {
    let ip = spec
        .private_ip
        .unwrap_or_else(|| panic!("instance `{}` needs a private_ip on the LAN", spec.name));
    let o = ip.octets();
    assert!(
        o[0] == 10 && o[1] == lan.net && o[2] == 0,
        "instance `{}`: {ip} is not on the LAN 10.{}.0.0/24",
        spec.name,
        lan.net
    );
}

/// Boot ids of this process's container boots: the agent reads the boot id under `--root`, so
/// each boot writes a new one there (the container's own `/proc` hides it inside).
static BOOTS: AtomicU32 = AtomicU32::new(0);

/// A master: an instance of the region (its `Name` tag is the node's name on the LAN), a node of
/// the LAN at the instance's private address, and a booted container in that node's namespace
/// with etcd installed ([`Container::install_etcd`]) but not configured or started.
pub struct Master {
    /// The instance's `Name` tag, also its node's name on the LAN.
    pub name: String,
    pub instance_id: String,
    /// The instance's private address, the node's address.
    pub ip: Ipv4Addr,
    /// The node's network namespace (`/run/netns/...`).
    pub netns: PathBuf,
    pub ct: Container,
    /// The instance's IMDS and the region's EC2 endpoint, as the agent is given them.
    imds_url: String,
    ec2_url: String,
}

impl Master {
    /// Launch `spec` in `region` (its `private_ip` on the LAN is required), add its node to
    /// `lan`, and boot its container there with etcd installed. `prepare` runs on the container
    /// before it boots (files to write, units to enable).
    pub fn launch(
        lan: &Lan,
        region: &LanRegion,
        spec: InstanceSpec,
        prepare: impl FnOnce(&mut Container),
    ) -> Master {
        let mut m = Master::prepare(lan, region, spec);
        prepare(&mut m.ct);
        m.boot();
        m
    }

    /// [`Master::launch`] for each of `specs`, booting the containers in parallel.
    pub fn launch_all(lan: &Lan, region: &LanRegion, specs: Vec<InstanceSpec>) -> Vec<Master> {
        Master::launch_all_with(lan, region, specs, |_, _| {})
    }

    /// [`Master::launch_all`], with `prepare` run on each container (and its index in `specs`)
    /// before it boots.
    pub fn launch_all_with(
        lan: &Lan,
        region: &LanRegion,
        specs: Vec<InstanceSpec>,
        prepare: impl Fn(usize, &mut Container),
    ) -> Vec<Master> {
        let mut masters: Vec<Master> = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let mut m = Master::prepare(lan, region, spec);
                prepare(i, &mut m.ct);
                m
            })
            .collect();
        std::thread::scope(|s| {
            for m in masters.iter_mut() {
                s.spawn(move || m.boot());
            }
        });
        masters
    }

    /// Everything [`Master::launch`] does but booting.
    fn prepare(lan: &Lan, region: &LanRegion, spec: InstanceSpec) -> Master {
        let name = spec.name.clone();
        let instance_id = region.launch(lan, spec);
        let ip = region
            .sim()
            .private_ip(&instance_id)
            .expect("a launched instance has an address");
        let netns = lan.add_node(&name, ip);
        let mut ct = Container::new();
        ct.install_etcd();
        // The root is an overlay that the host mounted and nspawn keeps read-write, and the
        // image's fstab is empty: there is nothing to remount. Booted three at a time, one
        // container in a few had this unit fail and came up `degraded`, which a test checking
        // `is-system-running` would take for a broken node.
        std::os::unix::fs::symlink(
            "/dev/null",
            ct.path("/etc/systemd/system/systemd-remount-fs.service"),
        )
        .expect("mask systemd-remount-fs.service");
        ct.set_network_namespace(&netns);
        Master {
            name,
            imds_url: region.imds_url(&instance_id),
            ec2_url: region.ec2_url(),
            instance_id,
            ip,
            netns,
            ct,
        }
    }

    /// Boot the container (again, after [`Master::kill`]) from the same disk, in the same
    /// namespace, with a new boot id under its root.
    pub fn boot(&mut self) {
        let n = BOOTS.fetch_add(1, Ordering::Relaxed);
        let id = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            n as u64
        );
        let path = self.ct.path("/proc/sys/kernel/random/boot_id");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{id}\n")).unwrap();
        self.ct.boot();
    }

    /// The instance dies at once, as a terminated or crashed instance does: SIGKILL to the
    /// container's PID 1 ends every process in it, etcd included, without a clean stop. Its disk
    /// stays; the region is not told (see [`Master::terminate`]).
    pub fn kill(&mut self) {
        self.ct.shutdown();
    }

    /// [`Master::kill`], and the region reports the instance `terminated`.
    pub fn terminate(&mut self, region: &LanRegion) {
        self.kill();
        region.set_state(&self.instance_id, "terminated");
    }

    /// A replacement for this master, which is terminated (killed, `terminated` in the region)
    /// and taken off the LAN: a new instance from `spec` (a new name; the same `private_ip` or
    /// another one) on a fresh disk, booted on the LAN. The old disk is kept until `self` is
    /// dropped.
    pub fn replace(
        &mut self,
        lan: &Lan,
        region: &LanRegion,
        spec: InstanceSpec,
        prepare: impl FnOnce(&mut Container),
    ) -> Master {
        self.terminate(region);
        lan.remove_node(&self.name);
        Master::launch(lan, region, spec, prepare)
    }

    /// The data directory is lost: everything under `/var/lib/etcd` is deleted (the directory
    /// stays, owned by `etcd`). Meant for a killed container; on a running one etcd fails.
    pub fn wipe_etcd_data(&self) {
        let dir = self.ct.path("/var/lib/etcd");
        for entry in std::fs::read_dir(&dir).expect("read /var/lib/etcd") {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }

    /// Write `/etc/etcd/etcd.conf` in the container.
    pub fn write_etcd_conf(&self, text: &str) {
        self.ct.write("/etc/etcd/etcd.conf", text);
    }

    /// `systemctl ARGS etcd.service` inside the container, not waiting for the job (a member
    /// of a new cluster is ready, and its start job done, only once a quorum runs).
    pub fn systemctl_etcd(&self, verb: &str) -> Output {
        self.ct
            .exec(&["systemctl", "--no-block", verb, "etcd.service"])
    }

    /// `systemctl is-active etcd.service`: `active`, `activating`, `failed`, `inactive`...
    pub fn etcd_state(&self) -> String {
        self.ct.systemctl(&["is-active", "etcd.service"])
    }

    /// Wait until etcd.service is `active` (etcd notified systemd it serves); panics with the
    /// unit's journal after `timeout`.
    pub fn wait_etcd_active(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.etcd_state();
            if state == "active" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: etcd.service is {state} after {timeout:?}\n{}",
                self.name,
                self.etcd_journal()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `journalctl -u etcd.service` inside the container: the unit's log of this boot.
    pub fn etcd_journal(&self) -> String {
        let out = self.ct.exec(&[
            "journalctl",
            "--no-pager",
            "-o",
            "short-precise",
            "-u",
            "etcd.service",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `http://IP:2379`, this member's client URL on the LAN (TLS-less configurations).
    pub fn client_url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    /// `http://IP:2380`, this member's peer URL on the LAN (TLS-less configurations).
    pub fn peer_url(&self) -> String {
        format!("http://{}:2380", self.ip)
    }

    /// The host-built `berth-agent` (`crate::agent::bin`) with `args` (a subcommand first), run
    /// in this node's network namespace, against this instance's IMDS and the region's EC2
    /// endpoint, with `--root` the container's root; `run` also gets `--system-bus` the
    /// container's bus, so every unit action goes through the container's systemd.
    ///
    /// rpm-ostree's bus is not given: the agent then looks for rpm-ostree on the container's
    /// system bus, where there is none, so a configuration that upgrades the OS is not for this
    /// harness (add `--rpmostree-bus` to the command for one).
    ///
    /// The child's PID is the agent's own (`nsenter` execs it): stop it by that PID.
    pub fn agent(&self, args: &[&str]) -> Command {
        let mut cmd = in_netns(&self.netns, crate::agent::bin("berth-agent"));
        cmd.args(args);
        if args.first() == Some(&"run") {
            cmd.arg("--system-bus").arg(self.ct.bus_address());
        }
        cmd.arg("--root").arg(self.ct.root()).args([
            "--imds-endpoint",
            &self.imds_url,
            "--ec2-endpoint",
            &self.ec2_url,
        ]);
        cmd
    }

    /// This instance's IMDS base URL, `http://10.N.0.1:PORT/`.
    pub fn imds_url(&self) -> &str {
        &self.imds_url
    }
}
