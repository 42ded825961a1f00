//! A real systemd to test against: a Debian container booted with `systemd-nspawn -b`.
//!
//! The root file system is built once by `tests/setup/nspawn.sh` (debootstrap, about a minute)
//! under `${BERTH_CACHE:-/var/cache/berth}/rootfs-bookworm`; each [`Container`] copies it
//! (`cp -a --reflink=auto`, under a second) into its own temporary directory, so tests run in
//! parallel and never see each other's units.
//!
//! The test process is not under systemd, so the container is booted with `--register=no
//! --keep-unit` (no machined), and its system bus is reached from the host through a host
//! directory bind-mounted on the container's `/run/dbus`: the container's `dbus-daemon` creates
//! `system_bus_socket` there, and [`Container::bus_address`] names it. Commands that must run
//! *inside* (`systemctl is-enabled`, `show`) go through `nsenter` into the container's PID 1.
//!
//! Every process is stopped by its PID when the [`Container`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The daemons of the Fedora 21 units, each a link to the stand-in program.
pub const STANDINS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
    "docker",
];

/// Where the stand-ins write the arguments they were started with, inside the container.
pub const STANDIN_LOG_DIR: &str = "var/log/berth-standins";

/// A container reaches `multi-user.target` in 2–4 s here; a minute covers a loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// nspawn exits within milliseconds of its container's init being killed; after this it is
/// killed too.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

pub fn cache_dir() -> PathBuf {
    std::env::var_os("BERTH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth"))
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The uid and gid of the `etcd` user and group that [`Container::install_etcd`] (and
/// [`Container::install_fedora21`]) create.
pub const ETCD_UID: u32 = 995;
pub const ETCD_GID: u32 = 993;

/// The etcd 3 fixtures (`tests/fixtures/etcd`): the Fedora-shaped `etcd.service`.
pub fn etcd_fixtures_dir() -> PathBuf {
    workspace_dir().join("tests/fixtures/etcd")
}

/// The Fedora 21 fixtures (`tests/fixtures/fedora-21`).
pub fn fixtures_dir() -> PathBuf {
    workspace_dir().join("tests/fixtures/fedora-21")
}

/// Whether this process may boot containers. Without root, a test skips with a loud message
/// when `CI` is unset, and fails under CI (CI runs as root, so a skip there would hide a bug).
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root to boot a systemd-nspawn container, and CI runs as root");
    }
    eprintln!("\n*** SKIPPED {test}: needs root (systemd-nspawn); run the suite as root ***\n");
    false
}

/// The cached root file system, built by `tests/setup/nspawn.sh` if it is not there yet.
pub fn rootfs() -> PathBuf {
    let rootfs = cache_dir().join("rootfs-bookworm");
    if !rootfs.join(".berth-rootfs-complete").exists() {
        let script = workspace_dir().join("tests/setup/nspawn.sh");
        // Tests run in parallel: one builds, the others wait on the lock.
        let lock = cache_dir().join(".nspawn-setup.lock");
        std::fs::create_dir_all(cache_dir()).expect("create the cache directory");
        let status = Command::new("flock")
            .arg(&lock)
            .arg("bash")
            .arg(&script)
            .status()
            .expect("run tests/setup/nspawn.sh");
        assert!(status.success(), "{} failed: {status}", script.display());
    }
    rootfs
}

pub struct Container {
    dir: tempfile::TempDir,
    nspawn: Option<Child>,
    pid1: Option<u32>,
    boots: u32,
    /// Whether `root` is an overlay mount, to be unmounted on drop.
    overlay: bool,
    /// The named network namespace (`/run/netns/NAME`) to boot into; `None` for a private one.
    netns: Option<PathBuf>,
    /// Host directories bound read-only into the container at boot (host path, inside path).
    binds_ro: Vec<(PathBuf, String)>,
    /// Further `systemd-nspawn` options, from the next boot on.
    nspawn_args: Vec<String>,
    /// Cgroup directories of this container's own, one per hierarchy, that nspawn is started in
    /// (see [`Container::own_cgroups`]); removed when the container is dropped.
    cgroups: Option<Vec<PathBuf>>,
}

impl Container {
    /// A fresh root file system, not booted yet: an overlay whose lower layer is the cached
    /// root file system (never written) and whose upper layer lives in this container's
    /// temporary directory. Setting one up takes a millisecond where a copy of the 160 MB tree
    /// takes seconds on a busy disk; where overlayfs is not available, it is a copy.
    pub fn new() -> Container {
        let rootfs = rootfs();
        let dir = tempfile::Builder::new()
            .prefix("berth-nspawn-")
            .tempdir()
            .expect("temporary directory");
        let root = dir.path().join("root");
        for d in ["root", "upper", "work", "bus"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("container directories");
        }
        let mounted = mount_overlay(dir.path(), &[&rootfs]);
        if !mounted {
            std::fs::remove_dir(&root).unwrap();
            let status = Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(&rootfs)
                .arg(&root)
                .status()
                .expect("run cp");
            assert!(status.success(), "copying {} failed", rootfs.display());
        }
        // utmp records logins, which a test container has none of; booted several at once, one
        // container in a few had systemd-update-utmp.service fail and came up `degraded`, which a
        // test checking `is-system-running` takes for a broken node.
        let units = root.join("etc/systemd/system");
        for unit in [
            "systemd-update-utmp.service",
            "systemd-update-utmp-runlevel.service",
        ] {
            let _ = std::fs::remove_file(units.join(unit));
            std::os::unix::fs::symlink("/dev/null", units.join(unit))
                .unwrap_or_else(|e| panic!("mask {unit}: {e}"));
        }
        Container {
            dir,
            nspawn: None,
            pid1: None,
            boots: 0,
            overlay: mounted,
            netns: None,
            binds_ro: Vec::new(),
            nspawn_args: Vec::new(),
            cgroups: None,
        }
    }

    /// Put `layer` (an overlay upper directory built over the cached rootfs, such as
    /// `tests/setup/runtime.sh`'s) between the rootfs and this container's own changes. Only
    /// before the first boot, on an overlay root.
    pub fn add_layer(&mut self, layer: &Path) {
        assert!(self.nspawn.is_none(), "a layer is added before the boot");
        assert!(
            self.overlay,
            "adding a layer needs an overlay root (overlayfs is not available here)"
        );
        let status = Command::new("umount").arg(self.root()).status().unwrap();
        assert!(status.success(), "unmount {}", self.root().display());
        assert!(
            mount_overlay(self.dir.path(), &[layer, &rootfs()]),
            "mount the overlay with {}",
            layer.display()
        );
    }

    /// Pass `arg` to `systemd-nspawn` from the next boot on (`--capability=...`, `--bind=...`).
    pub fn nspawn_arg(&mut self, arg: &str) {
        self.nspawn_args.push(arg.to_string());
    }

    /// A directory on the host's file system that lives as long as the container, for binds
    /// that must not be on the overlay root (containerd's snapshots cannot be).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Boot the container in cgroups of its own: a child of the test's cgroup in every cgroup
    /// hierarchy the test is in (each v1 controller, `name=systemd`, and the v2 hierarchy of a
    /// hybrid or unified host), which the container's cgroup namespace shows as its root. Without
    /// it every container runs in the test's cgroups (with `--keep-unit`, nspawn only adds a
    /// `payload` child shared by all of them), and a kubelet in one would create (and reap) the
    /// pod cgroups of all in the same `/kubepods`. Tested on this machine's hybrid layout (v1
    /// controllers, v2 at `/sys/fs/cgroup/unified`); panics naming a hierarchy it cannot find
    /// mounted.
    pub fn own_cgroups(&mut self) {
        let name = self
            .dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mounts = cgroup_mounts();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let mut dirs = Vec::new();
        for line in own.lines() {
            let mut f = line.splitn(3, ':');
            let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            let wanted: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
            let mount = mounts.iter().find(|m| {
                if wanted.is_empty() {
                    m.v2
                } else {
                    !m.v2 && wanted.iter().all(|c| m.options.iter().any(|o| o == c))
                }
            });
            let Some(mount) = mount else {
                if wanted.is_empty() {
                    continue; // a v1-only host lists an empty v2 line with no hierarchy mounted
                }
                panic!("cgroup hierarchy `{controllers}` is not mounted; the Kubernetes suite needs every hierarchy the test is in mounted (cgroup v1/hybrid)");
            };
            let inside = path
                .strip_prefix(mount.root.as_str())
                .unwrap_or(path)
                .trim_start_matches('/');
            let dir = mount.target.join(inside).join(&name);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            if wanted.contains(&"cpuset") {
                // A new cpuset has no CPUs and no memory nodes: nothing could run in it.
                for knob in ["cpuset.cpus", "cpuset.mems"] {
                    let parent = std::fs::read_to_string(dir.parent().unwrap().join(knob)).unwrap();
                    std::fs::write(dir.join(knob), parent.trim()).unwrap();
                }
            }
            dirs.push(dir);
        }
        self.cgroups = Some(dirs);
    }

    /// The container's `/`, as the host sees it (the agent's `--root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A path inside the container, as the host sees it.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root().join(inside.trim_start_matches('/'))
    }

    /// The container's system bus, from the host.
    pub fn bus_address(&self) -> String {
        format!(
            "unix:path={}",
            self.dir.path().join("bus/system_bus_socket").display()
        )
    }

    /// Install the Fedora 21 units in `/usr/lib/systemd/system`, their stand-in daemons, and the
    /// users and directories they expect (`kube`, `etcd`, group `docker`, `/var/lib/etcd`).
    pub fn install_fedora21(&self, standin: &Path) {
        let units = fixtures_dir().join("units");
        let unit_dir = self.path("/usr/lib/systemd/system");
        for entry in std::fs::read_dir(&units).expect("fixture units") {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), unit_dir.join(entry.file_name())).expect("copy a unit");
        }
        let bin = self.path("/usr/local/libexec/berth-standin");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::copy(standin, &bin).expect("copy the stand-in");
        for name in STANDINS {
            let link = self.path("/usr/bin").join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("/usr/local/libexec/berth-standin", &link).unwrap();
        }
        append(
            &self.path("/etc/passwd"),
            "kube:x:996:994:Kubernetes user:/:/sbin/nologin\n\
             etcd:x:995:993:etcd user:/var/lib/etcd:/sbin/nologin\n",
        );
        append(
            &self.path("/etc/group"),
            "kube:x:994:\netcd:x:993:\ndocker:x:992:\n",
        );
        let etcd_dir = self.path("/var/lib/etcd");
        std::fs::create_dir_all(&etcd_dir).unwrap();
        chown(&etcd_dir, 995, 993);
        let log_dir = self.root().join(STANDIN_LOG_DIR);
        std::fs::create_dir_all(&log_dir).unwrap();
        // The kube-* daemons run as `kube`, etcd as `etcd`: all of them record here.
        set_mode(&log_dir, 0o1777);
    }

    /// Boot into the existing network namespace `netns` (`/run/netns/NAME`, as `ip netns add`
    /// makes it) from now on, instead of a private one: the container then has that namespace's
    /// interfaces and addresses, and its processes reach whatever that namespace reaches. Takes
    /// effect at the next [`Container::boot`].
    pub fn set_network_namespace(&mut self, netns: &Path) {
        self.netns = Some(netns.to_path_buf());
    }

    /// Install the host's etcd 3 (`/usr/bin/etcd` and `/usr/bin/etcdctl`, Debian's `etcd-server`
    /// and `etcd-client`, see `tests/setup/etcd.sh`) with a Fedora-shaped `etcd.service`
    /// (`tests/fixtures/etcd/etcd.service`: `Type=notify`, `User=etcd`, every setting from the
    /// `ETCD_*` variables of `/etc/etcd/etcd.conf`), the `etcd` user and group, an empty
    /// `/etc/etcd/` and `/var/lib/etcd` (mode 0700, owned by `etcd`), as Fedora's package lays
    /// them out. Not enabled and not started: what starts etcd is under test.
    pub fn install_etcd(&self) {
        for program in ["etcd", "etcdctl"] {
            let host = Path::new("/usr/bin").join(program);
            let inside = self.path("/usr/bin").join(program);
            let _ = std::fs::remove_file(&inside);
            std::fs::copy(&host, &inside).unwrap_or_else(|e| {
                panic!(
                    "copy {} into the container: {e} (run tests/setup/etcd.sh)",
                    host.display()
                )
            });
        }
        std::fs::copy(
            etcd_fixtures_dir().join("etcd.service"),
            self.path("/usr/lib/systemd/system/etcd.service"),
        )
        .expect("copy the etcd unit");
        let passwd = std::fs::read_to_string(self.path("/etc/passwd")).unwrap();
        if !passwd.lines().any(|l| l.starts_with("etcd:")) {
            append(
                &self.path("/etc/passwd"),
                "etcd:x:995:993:etcd user:/var/lib/etcd:/sbin/nologin\n",
            );
        }
        let group = std::fs::read_to_string(self.path("/etc/group")).unwrap();
        if !group.lines().any(|l| l.starts_with("etcd:")) {
            append(&self.path("/etc/group"), "etcd:x:993:\n");
        }
        std::fs::create_dir_all(self.path("/etc/etcd")).unwrap();
        let data = self.path("/var/lib/etcd");
        std::fs::create_dir_all(&data).unwrap();
        chown(&data, ETCD_UID, ETCD_GID);
        set_mode(&data, 0o700);
    }

    /// Boot (or boot again, after the container rebooted or was stopped) and wait until systemd
    /// reports the system running.
    pub fn boot(&mut self) {
        assert!(self.nspawn.is_none(), "container already running");
        let bus = self.dir.path().join("bus");
        let _ = std::fs::remove_file(bus.join("system_bus_socket"));
        self.boots += 1;
        let console =
            std::fs::File::create(self.dir.path().join(format!("console-{}.log", self.boots)))
                .unwrap();
        let mut nspawn = Command::new("systemd-nspawn");
        if let Some(dirs) = &self.cgroups {
            let procs: Vec<std::ffi::CString> = dirs
                .iter()
                .map(|d| {
                    std::ffi::CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes())
                        .unwrap()
                })
                .collect();
            // SAFETY: between fork and exec only open(2), write(2) and close(2) run, on paths
            // built before the fork: all async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut nspawn, move || {
                    for p in &procs {
                        let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                        if fd < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                        let err = std::io::Error::last_os_error();
                        libc::close(fd);
                        if !ok {
                            return Err(err);
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = nspawn
            .args(["--quiet", "--boot", "--register=no", "--keep-unit"])
            .arg(match &self.netns {
                Some(path) => format!("--network-namespace-path={}", path.display()),
                None => "--private-network".to_string(),
            })
            .arg("--directory")
            .arg(self.root())
            .arg(format!("--bind={}:/run/dbus", bus.display()))
            .args(
                self.binds_ro
                    .iter()
                    .map(|(host, inside)| format!("--bind-ro={}:{inside}", host.display())),
            )
            .args(&self.nspawn_args)
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .unwrap_or_else(|e| match &self.cgroups {
                Some(dirs) => panic!(
                    "start systemd-nspawn in the container's own cgroups ({}): {e}",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => panic!("start systemd-nspawn (apt-get install systemd-container): {e}"),
            });
        let nspawn_pid = child.id();
        self.nspawn = Some(child);

        let start = Instant::now();
        let deadline = start + BOOT_TIMEOUT;
        while self.pid1.is_none() {
            self.pid1 = container_init(nspawn_pid);
            self.check_alive();
            assert!(
                Instant::now() < deadline,
                "container PID 1 did not appear\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        while !bus.join("system_bus_socket").exists() {
            self.check_alive();
            assert!(
                Instant::now() < deadline,
                "container's system bus did not appear\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = self.exec(&["systemctl", "is-system-running", "--wait"]);
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            state == "running" || state == "degraded",
            "container did not come up: is-system-running = {state}\n{}",
            self.console()
        );
        if state == "degraded" {
            let failed = self.exec(&["systemctl", "--failed", "--no-legend", "--plain"]);
            eprintln!(
                "container booted in {:?} (degraded; failed units: {})",
                start.elapsed(),
                String::from_utf8_lossy(&failed.stdout).trim()
            );
        } else {
            eprintln!("container booted in {:?} ({state})", start.elapsed());
        }
    }

    fn check_alive(&mut self) {
        if let Some(child) = self.nspawn.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "systemd-nspawn exited during boot: {status}\n{}",
                    self.console()
                );
            }
        }
    }

    /// What the container printed on its console during the current boot.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("console-{}.log", self.boots)))
            .unwrap_or_default()
    }

    /// Run a command inside the container (its mount, PID, UTS, IPC and network namespaces).
    ///
    /// Safe while the container shuts down: systemd-shutdown stops every process in the
    /// container with SIGSTOP before it signals them, and nsenter, which waits outside, stops
    /// itself when its child stops and would stay stopped after the child died. A watcher sends
    /// nsenter SIGCONT whenever it is found stopped.
    pub fn exec(&self, argv: &[&str]) -> Output {
        let pid1 = self.pid1.expect("container is booted");
        let child = Command::new("nsenter")
            .arg("--target")
            .arg(pid1.to_string())
            .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nsenter");
        let pid = child.id();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let done = done.clone();
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if process_is_stopped(pid) {
                        // SAFETY: kill has no memory-safety preconditions; `pid` is our child,
                        // not yet reaped (wait_with_output below reaps it after `done` is set).
                        unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let out = child.wait_with_output();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = watcher.join();
        out.expect("wait for nsenter")
    }

    /// Whether the container is booted (not shut down or killed).
    pub fn is_booted(&self) -> bool {
        self.pid1.is_some()
    }

    /// Binds the host directory `host` read-only at `inside` from the next boot on.
    pub fn bind_ro(&mut self, host: &Path, inside: &str) {
        std::fs::create_dir_all(self.path(inside)).unwrap();
        self.binds_ro.push((host.to_path_buf(), inside.to_string()));
    }

    /// Writes `text` to the file `inside` the container, creating its parent directories.
    pub fn write(&self, inside: &str, text: &str) {
        let path = self.path(inside);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// What berth-image puts in an image: the agent as `/usr/bin/berth-agent`, and its unit and
    /// preset from `configs/systemd`.
    pub fn install_agent(&self) {
        let configs = crate::agent::workspace().join("configs/systemd");
        std::fs::copy(
            crate::agent::bin("berth-agent"),
            self.path("/usr/bin/berth-agent"),
        )
        .unwrap();
        std::fs::copy(
            configs.join("berth-agent.service"),
            self.path("/usr/lib/systemd/system/berth-agent.service"),
        )
        .unwrap();
        self.write(
            "/usr/lib/systemd/system-preset/50-berth.preset",
            &std::fs::read_to_string(configs.join("50-berth.preset")).unwrap(),
        );
    }

    /// A host program run in the container's network namespace only (it sees the container's
    /// loopback, and the host's files): how a test serves the container an IMDS and EC2 API.
    pub fn in_netns(&self, program: &Path) -> Command {
        let pid1 = self.pid1.expect("container is booted");
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(pid1.to_string())
            .args(["--net", "--"])
            .arg(program);
        cmd
    }

    /// `systemctl ARGS` inside the container; stdout, trimmed.
    pub fn systemctl(&self, args: &[&str]) -> String {
        let mut argv = vec!["systemctl"];
        argv.extend_from_slice(args);
        let out = self.exec(&argv);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Each start of the stand-in `name` so far: the arguments it was given.
    pub fn standin_starts(&self, name: &str) -> Vec<Vec<String>> {
        let path = self
            .root()
            .join(STANDIN_LOG_DIR)
            .join(format!("{name}.args"));
        match std::fs::read_to_string(&path) {
            Err(_) => Vec::new(),
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).expect("stand-in log line is a JSON array"))
                .collect(),
        }
    }

    /// The starts of `name` once there are at least `n` of them. systemd reports a `Type=simple`
    /// start `done` as soon as it forked, a moment before the stand-in has written its line.
    pub fn wait_standin_starts(&self, name: &str, n: usize) -> Vec<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let starts = self.standin_starts(name);
            if starts.len() >= n || Instant::now() > deadline {
                return starts;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the container to stop by itself (it rebooted or powered off); nspawn exits then.
    pub fn wait_stopped(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.nspawn.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.nspawn = None;
                self.pid1 = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the container: SIGKILL to its PID 1, which ends every process of its PID namespace
    /// at once (a throwaway container needs no clean shutdown, and this takes milliseconds where
    /// a clean one takes 1.5 s); nspawn then exits by itself, or is killed after a timeout.
    pub fn shutdown(&mut self) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        if let Some(pid1) = self.pid1.take() {
            // SAFETY: the container's init, found through our own child's /proc entry.
            unsafe { libc::kill(pid1 as libc::pid_t, libc::SIGKILL) };
        } else {
            // SAFETY: signalling our own child by its PID.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Default for Container {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.shutdown();
        let deadline = Instant::now() + Duration::from_secs(10);
        for dir in self.cgroups.take().unwrap_or_default() {
            remove_cgroup(&dir, deadline);
        }
        if self.overlay {
            // Lazy: detached at once even if something still holds it, so removing the
            // temporary directory never walks into the mount.
            let _ = Command::new("umount").arg("-l").arg(self.root()).status();
        }
    }
}

/// Mounts `dir/root` as an overlay of `lowers` (topmost first) under `dir/upper`, with
/// `dir/work`; whether it was mounted.
fn mount_overlay(dir: &Path, lowers: &[&Path]) -> bool {
    let lowers: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(dir.join("root"))
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A mounted cgroup hierarchy, from `/proc/self/mountinfo`.
struct CgroupMount {
    /// The hierarchy's directory that is mounted (`/` unless a subtree is).
    root: String,
    target: PathBuf,
    /// The super options: the controllers, or `name=systemd`.
    options: Vec<String>,
    v2: bool,
}

fn cgroup_mounts() -> Vec<CgroupMount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let before: Vec<&str> = before.split(' ').collect();
            let after: Vec<&str> = after.split(' ').collect();
            let fstype = *after.first()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(CgroupMount {
                root: before.get(3)?.to_string(),
                target: PathBuf::from(before.get(4)?),
                options: after.get(2)?.split(',').map(str::to_string).collect(),
                v2: fstype == "cgroup2",
            })
        })
        .collect()
}

/// Remove a cgroup directory and every child below it, deepest first (a cgroup is removed with
/// rmdir once it holds no process; its files are not removed, they go with it). Retries until
/// `deadline`, while the killed processes are reaped.
fn remove_cgroup(dir: &Path, deadline: Instant) {
    fn children_first(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    children_first(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    loop {
        let mut all = Vec::new();
        children_first(dir, &mut all);
        let left = all
            .iter()
            .filter(|d| std::fs::remove_dir(d).is_err() && d.exists())
            .count();
        if left == 0 || Instant::now() > deadline {
            if left > 0 {
                eprintln!("cgroup {} could not be removed", dir.display());
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The container's PID 1: nspawn is a child subreaper, so it is nspawn's (only) child.
fn container_init(nspawn_pid: u32) -> Option<u32> {
    let text =
        std::fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children")).ok()?;
    for pid in text.split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "systemd" {
            return pid.parse().ok();
        }
    }
    None
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `berth-sim serve` in a container's network namespace: the seed cluster's EC2 API and
/// fed-master's IMDS on the container's loopback. Stopped by its PID on drop.
pub struct SimInContainer {
    child: std::process::Child,
    // Kept open: the sim prints a line per instance, and a closed pipe would kill it.
    _stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl SimInContainer {
    pub const EC2: &'static str = "127.0.0.1:18773";
    pub const IMDS: &'static str = "127.0.0.1:18774";

    pub fn start(ct: &Container) -> SimInContainer {
        use std::io::BufRead;
        let mut child = ct
            .in_netns(&crate::agent::bin("berth-sim"))
            .arg("serve")
            .arg("--cluster")
            .arg(crate::agent::workspace().join("sim/clusters/seed.yaml"))
            .args(["--ec2-listen", Self::EC2])
            .arg(format!("--imds-listen=fed-master={}", Self::IMDS))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("berth-sim starts");
        // One JSON line per instance once every listener is up.
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with('{'), "berth-sim did not start: {line:?}");
        SimInContainer {
            child,
            _stdout: stdout,
        }
    }
}

impl Drop for SimInContainer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` is stopped (state `T` in /proc/PID/stat).
fn process_is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the parenthesised command name, which may itself hold spaces.
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|s| s == "T")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_process_is_seen_stopped() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(!process_is_stopped(pid));
        // SAFETY: signals to our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process_is_stopped(pid) {
            assert!(Instant::now() < deadline, "never seen stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        let _ = child.kill();
        let _ = child.wait();
    }
}
