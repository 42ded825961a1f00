//! A fresh machine to run `tests/setup/*.sh` on: a copy of the cached Debian bookworm rootfs
//! (`tests/setup/nspawn.sh`) that commands run in with `systemd-nspawn`, without booting it.
//!
//! The copy is an overlay whose lower layer is the cached rootfs (never written) and whose upper
//! layer is on a tmpfs of its own: dpkg syncs every file it unpacks, which on a busy disk makes a
//! few hundred packages take minutes to install and minutes more to delete; on tmpfs both take
//! seconds, and dropping the machine is two unmounts.
//!
//! The machine shares the host's network, since what it checks is apt and pip installing from
//! the machine's own Debian mirror and Python package index. It reaches nothing else. Into it go,
//! read-only, the checkout's `tests/` (at [`TESTS_INSIDE`]) and the host's CA bundle (at
//! [`CERTS_INSIDE`], not over the container's `/etc/ssl/certs`, which ca-certificates writes
//! when a script pulls it in); the host's `PIP_*` and proxy variables, with paths rewritten or
//! bound so that they hold inside; and two caches under `$BERTH_CACHE/fresh-setup` (`.deb`
//! files, pip's) so that a second run downloads less. One machine at a time uses the caches:
//! a second waits for the first to be dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where the checkout's `tests/` directory is inside the machine.
pub const TESTS_INSIDE: &str = "/berth/tests";

/// Where the host's `/etc/ssl/certs` is inside the machine.
pub const CERTS_INSIDE: &str = "/run/berth-host/certs";

/// The size limit of the tmpfs holding the machine's writes. Every setup script's installing
/// part together writes about 1 GB (QEMU, vagrant and its Ruby, etcd, moto's venv).
const TMPFS_SIZE: &str = "6g";

/// After SIGTERM, nspawn kills its container at once; after this it is killed itself.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// The outcome of one command in the machine.
#[derive(Debug)]
pub struct Run {
    /// nspawn's exit status, which is the command's; `None` when it was killed at its deadline.
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    /// Standard output and error, interleaved as written.
    pub output: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The last `n` lines of the output, without dpkg's progress lines.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self
            .output
            .lines()
            .filter(|l| !l.starts_with("(Reading database"))
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A fresh machine; every mount and process it made is gone when it is dropped.
pub struct Machine {
    dir: tempfile::TempDir,
    /// Mount points to detach on drop, innermost first.
    mounts: Vec<PathBuf>,
    binds: Vec<String>,
    env: Vec<(String, String)>,
    /// An exclusive lock on the caches, held while the machine lives: apt in two machines
    /// would otherwise fight over the one `.deb` cache's lock and fail.
    _caches_lock: std::fs::File,
}

impl Machine {
    /// A copy of the cached rootfs (built by `tests/setup/nspawn.sh` if absent), with `tests`
    /// (the checkout's `tests/` directory) inside at [`TESTS_INSIDE`].
    pub fn new(tests: &Path) -> Machine {
        let lower = crate::nspawn::rootfs();
        let caches = crate::nspawn::cache_dir().join("fresh-setup");
        std::fs::create_dir_all(&caches).expect("cache directory");
        let lock = std::fs::File::create(caches.join(".lock")).expect("the caches' lock file");
        // SAFETY: flock on a descriptor this function owns; it blocks until the lock is free.
        let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
        assert_eq!(locked, 0, "lock {}", caches.join(".lock").display());
        let dir = tempfile::Builder::new()
            .prefix("berth-fresh-")
            .tempdir()
            .expect("temporary directory");
        let mut machine = Machine {
            dir,
            mounts: Vec::new(),
            binds: Vec::new(),
            env: Vec::new(),
            _caches_lock: lock,
        };
        let top = machine.dir.path().to_path_buf();
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={TMPFS_SIZE},mode=0755"),
            "tmpfs",
            path_str(&top),
        ]);
        machine.mounts.push(top.clone());
        for d in ["root", "upper", "work"] {
            std::fs::create_dir(top.join(d)).expect("machine directories");
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            top.join("upper").display(),
            top.join("work").display()
        );
        let root = machine.root();
        mount(&["-t", "overlay", "-o", &options, "overlay", path_str(&root)]);
        machine.mounts.insert(0, root);

        machine.bind_ro(tests, TESTS_INSIDE);
        machine.bind_ro(Path::new("/etc/ssl/certs"), CERTS_INSIDE);
        for (host, inside) in [
            ("apt-archives", "/var/cache/apt/archives"),
            ("pip", "/root/.cache/pip"),
        ] {
            let host = caches.join(host);
            std::fs::create_dir_all(&host).expect("cache directory");
            machine
                .binds
                .push(format!("--bind={}:{inside}", host.display()));
        }
        machine.env.push(("HOME".into(), "/root".into()));
        machine.pass_host_env();
        machine
    }

    /// The machine's `/`, as the host sees it.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Sets `key=value` for every later command.
    pub fn setenv(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    fn bind_ro(&mut self, host: &Path, inside: &str) {
        self.binds
            .push(format!("--bind-ro={}:{inside}", host.display()));
    }

    /// pip's settings (`PIP_CERT`, `PIP_FIND_LINKS`, ...) and the proxy variables, as the host
    /// has them. A path under the host's `/etc/ssl/certs` is rewritten to [`CERTS_INSIDE`]; any
    /// other existing absolute path is bound read-only at the same place.
    fn pass_host_env(&mut self) {
        const PROXY: &[&str] = &[
            "http_proxy",
            "https_proxy",
            "no_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "NO_PROXY",
        ];
        let mut vars: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("PIP_") || PROXY.contains(&k.as_str()))
            .collect();
        vars.sort();
        for (key, value) in vars {
            let certs = value
                .strip_prefix("/etc/ssl/certs")
                .filter(|rest| rest.is_empty() || rest.starts_with('/'));
            let value = if let Some(rest) = certs {
                format!("{CERTS_INSIDE}{rest}")
            } else {
                if value.starts_with('/') && Path::new(&value).exists() {
                    let path = PathBuf::from(&value);
                    self.bind_ro(&path, &value);
                }
                value
            };
            self.setenv(&key, &value);
        }
    }

    /// Runs `argv` in the machine (as root, on the host's network) and waits for it until
    /// `deadline`, when nspawn is stopped (it kills the whole container) and the run reported
    /// as timed out. Output goes to `log` and into the result.
    pub fn run(&self, argv: &[&str], log: &Path, deadline: Instant) -> Run {
        let file = std::fs::File::create(log).expect("create the log");
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args([
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--as-pid2",
            "--pipe",
        ])
        .arg("--directory")
        .arg(self.root())
        .args(&self.binds);
        for (k, v) in &self.env {
            cmd.arg(format!("--setenv={k}={v}"));
        }
        cmd.arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .expect("start systemd-nspawn (apt-get install systemd-container)");
        let status = wait_until(&mut child, deadline);
        let output = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default())
            .lines()
            // nspawn's note that it leaves its propagation directory on a disk file system
            // in place: not the command's output.
            .filter(|l| !l.starts_with("Attempted to remove disk file system"))
            .collect::<Vec<_>>()
            .join("\n");
        Run {
            status,
            elapsed: start.elapsed(),
            output,
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        for m in &self.mounts {
            // Lazy: detached at once even if something still holds it, so that removing the
            // temporary directory never walks into the mount.
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// Waits for `child` until `deadline`; then SIGTERM (nspawn kills its container's processes
/// with SIGKILL on it), and SIGKILL to nspawn itself after [`KILL_GRACE`].
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("wait for systemd-nspawn") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill has no memory-safety preconditions; `child` is ours and not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let grace = Instant::now() + KILL_GRACE;
    while Instant::now() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn mount(args: &[&str]) {
    let out = Command::new("mount")
        .args(args)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
