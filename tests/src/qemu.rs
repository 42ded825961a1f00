//! Booting berth's disk images in QEMU: the test OS (tests/setup/testos.sh) layered by
//! `berth-image commit`, turned into a disk by `berth-image disk`, booted with user networking
//! that relays the guest's IMDS and EC2 addresses to a `berth-sim` region on the host.
//!
//! The guest sees the metadata service where EC2 puts it: QEMU's user network is
//! `169.254.169.0/24`, and `guestfwd` hands each guest connection to 169.254.169.254:80 (IMDS)
//! or 169.254.169.253:80 (EC2, the test OS's `ec2_endpoint`) to a fresh `nc 127.0.0.1 PORT`
//! (the `cmd:` form: one relay per connection; the `tcp:` form serves only the first). Nothing
//! leaves the host's loopback.
//!
//! Acceleration: TCG unless `BERTH_QEMU_ACCEL=kvm` (this project's CI machines have a /dev/kvm
//! that cannot run a stock kernel; where KVM works, set it).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::agent::workspace;

/// The base commit tests/setup/testos.sh builds.
pub const BASE_REF: &str = "berth-testos/x86_64/base";
/// The stateroot the tests deploy into.
pub const OSNAME: &str = "berth-testos";
/// Where the guest finds the emulated EC2 endpoint (tests/testos/layer/berth-config.yaml).
pub const EC2_GUEST_ADDR: &str = "169.254.169.253:80";
pub const IMDS_GUEST_ADDR: &str = "169.254.169.254:80";

/// A powered-down guest flushes and exits within seconds; after this it is killed.
const POWERDOWN_TIMEOUT: Duration = Duration::from_secs(90);

pub fn cache_dir() -> PathBuf {
    PathBuf::from(std::env::var("BERTH_CACHE").unwrap_or_else(|_| "/var/cache/berth".into()))
}

/// The cached test OS repository, or `None` when tests/setup/testos.sh has not run.
pub fn testos_repo() -> Option<PathBuf> {
    let dir = cache_dir().join("testos");
    dir.join(".berth-testos-complete")
        .is_file()
        .then(|| dir.join("repo"))
}

/// Binaries of the workspace the QEMU suite needs (berth-image, berth-agent, berth-sim and the
/// stand-in daemon), built once per test process.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let build = |args: &[&str]| {
            Command::new(&cargo)
                .args(["build", "--quiet"])
                .args(args)
                .current_dir(workspace())
                .status()
                .expect("cargo runs")
                .success()
        };
        let status = build(&[
            "-p",
            "berth-image",
            "-p",
            "berth-agent",
            "-p",
            "berth-sim",
            "--bins",
        ]) && build(&["-p", "berth-e2e", "--bin", "berth-standin"]);
        assert!(status, "building the workspace's binaries failed");
    });
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} missing", p.display());
    p
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// The test OS with berth layered on: the agent and its shipped unit, the profiles, the image
/// defaults of tests/testos/layer/berth-config.yaml (`upgrade: false`, the EC2 endpoint), the
/// stand-in daemon behind every Fedora 21 unit, and the test OS's stand-in for a staged upgrade
/// (tests/testos/layer/units/berth-test-redeploy.service).
pub struct Layered {
    pub repo: PathBuf,
    pub rev: String,
    pub commit: String,
}

/// Layers berth onto the cached base under a ref of its own (`berth-testos/x86_64/test-NAME`),
/// with the test OS's own units (tests/testos/layer/layer.sh).
pub fn layer(repo: &Path, name: &str) -> Layered {
    let bin_dir = bin("berth-agent").parent().unwrap().to_path_buf();
    let rev = format!("berth-testos/x86_64/test-{name}");
    let out = run(Command::new("bash")
        .arg(workspace().join("tests/testos/layer/layer.sh"))
        .arg(repo)
        .arg(&rev)
        .arg("--with-test-units")
        .env("BERTH_BIN_DIR", bin_dir));
    Layered {
        repo: repo.to_path_buf(),
        rev,
        commit: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    }
}

/// What `berth-image disk` printed.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct DiskSummary {
    pub path: PathBuf,
    pub size: u64,
    pub commit: String,
    pub deployment: String,
    pub partitions: Vec<PartitionSummary>,
    pub entry: EntrySummary,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct PartitionSummary {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    pub filesystem: String,
    pub fs_id: String,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct EntrySummary {
    pub linux: String,
    pub initrd: String,
    pub options: String,
}

impl DiskSummary {
    pub fn partition(&self, name: &str) -> &PartitionSummary {
        self.partitions
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no partition {name} in {:?}", self.partitions))
    }
}

/// `berth-image disk ARGS...`, returning the summary and the wall time it took.
pub fn build_disk(layered: &Layered, out: &Path, extra: &[&str]) -> (DiskSummary, Duration) {
    let started = Instant::now();
    let o = run(Command::new(bin("berth-image"))
        .arg("disk")
        .arg("--repo")
        .arg(&layered.repo)
        .args(["--ref", &layered.rev, "--osname", OSNAME])
        .arg("--out")
        .arg(out)
        .args(extra));
    let took = started.elapsed();
    let s = serde_json::from_slice(&o.stdout).expect("berth-image disk prints its JSON summary");
    (s, took)
}

/// Writes `src` as `dest` into an ext4 partition of a raw disk image (debugfs, no mount). The
/// guest must be off.
pub fn debugfs_write(disk: &Path, offset: u64, src: &Path, dest: &str) {
    let out = run(Command::new("debugfs")
        .arg("-w")
        .args(["-R", &format!("write {} {dest}", src.display())])
        .arg(format!("{}?offset={offset}", disk.display())));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("rror") && debugfs_cat(disk, offset, dest).is_some(),
        "debugfs could not write {dest}: {err}"
    );
}

/// A file of an ext4 partition inside a raw disk image, read with debugfs (no mount).
pub fn debugfs_cat(disk: &Path, offset: u64, path: &str) -> Option<Vec<u8>> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(format!("{}?offset={offset}", disk.display()))
        .output()
        .expect("debugfs (e2fsprogs) runs");
    // debugfs answers a missing file on stderr with status 0 and nothing on stdout.
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || err.contains("File not found") {
        return None;
    }
    Some(out.stdout)
}

/// A running guest, killed (by PID) when dropped.
pub struct Qemu {
    child: Option<Child>,
    pub serial: PathBuf,
    monitor: PathBuf,
    started: Instant,
}

/// The relays of the guest's link-local service addresses to host ports.
pub struct Forwards {
    pub imds_port: u16,
    pub ec2_port: u16,
}

fn accel() -> String {
    std::env::var("BERTH_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into())
}

impl Qemu {
    /// Boots `disk` (raw) through its own bootloader with 2 vCPUs and 1 GiB. `name` names the
    /// serial log, monitor socket and UEFI variable store in `dir`.
    pub fn boot(dir: &Path, name: &str, disk: &Path, fwd: &Forwards, smp: u32) -> Qemu {
        let serial = dir.join(format!("{name}.serial"));
        let monitor = dir.join(format!("{name}.monitor"));
        let nc = which_nc();
        let netdev = format!(
            "user,id=n0,restrict=on,net=169.254.169.0/24,host=169.254.169.2,\
             dhcpstart=169.254.169.15,\
             guestfwd=tcp:{IMDS_GUEST_ADDR}-cmd:{nc} 127.0.0.1 {},\
             guestfwd=tcp:{EC2_GUEST_ADDR}-cmd:{nc} 127.0.0.1 {}",
            fwd.imds_port, fwd.ec2_port
        );
        let accel = accel();
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", &accel])
            .args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
            .args(["-smp", &smp.to_string(), "-m", "1024"])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", monitor.display()))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()))
            .args(["-netdev", &netdev])
            .args(["-device", "virtio-net-pci,netdev=n0"]);
        // UEFI firmware (OVMF), which finds the disk's systemd-boot as the removable-media
        // default, as a fresh EC2 instance in UEFI boot mode does; each guest gets its own copy
        // of the variable store.
        let vars = dir.join(format!("{name}.vars.fd"));
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
            .expect("OVMF (tests/setup/qemu.sh installs it)");
        cmd.arg("-drive")
            .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd
            .spawn()
            .expect("qemu-system-x86_64 (tests/setup/qemu.sh)");
        Qemu {
            child: Some(child),
            serial,
            monitor,
            started: Instant::now(),
        }
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the console has a line containing `needle`; panics with the console's tail
    /// on timeout or when QEMU exits first. Returns the time since boot.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().contains(needle) {
                return self.started.elapsed();
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "QEMU exited ({status}) before the console showed {needle:?}:\n{}",
                    tail(&self.console(), 60)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "no {needle:?} on the console after {timeout:?}:\n{}",
                    tail(&self.console(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// True once QEMU has exited (and is reaped).
    fn exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("running");
        if child.try_wait().ok().flatten().is_some() {
            self.child = None;
            return true;
        }
        false
    }

    /// Waits for the guest to reboot or power off by itself (QEMU runs with `-no-reboot`, so a
    /// reboot ends it); panics with the console's tail on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the guest did not reboot within {timeout:?}:\n{}",
                    tail(&self.console(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// ACPI power button, then waits for QEMU to exit, so that the guest's file systems are
    /// clean when the test reads the disk.
    pub fn powerdown(&mut self) {
        let deadline = Instant::now() + POWERDOWN_TIMEOUT;
        let mut next_press = Instant::now();
        loop {
            if self.exited() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the guest did not power off within {POWERDOWN_TIMEOUT:?}:\n{}",
                    tail(&self.console(), 40)
                );
            }
            // A button press the guest missed (still starting logind, or busy under TCG) is
            // pressed again.
            if Instant::now() >= next_press {
                self.monitor_command("system_powerdown");
                next_press = Instant::now() + Duration::from_secs(20);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Sends one command to the human monitor and waits for its prompt to come back, so the
    /// command is read before the connection closes.
    fn monitor_command(&self, command: &str) {
        use std::io::Read;
        let Ok(mut s) = UnixStream::connect(&self.monitor) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        let mut read_prompt = |s: &mut UnixStream, seen: &mut Vec<u8>| {
            let start = seen.len();
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                if seen[start..].windows(6).any(|w| w == b"(qemu)") {
                    break;
                }
            }
        };
        read_prompt(&mut s, &mut seen);
        let _ = s.write_all(format!("{command}\n").as_bytes());
        read_prompt(&mut s, &mut seen);
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn which_nc() -> &'static str {
    // OpenBSD netcat exits when the guest closes its side; the Debian `nc` alternative may
    // point at another netcat whose flags differ.
    if Path::new("/usr/bin/nc.openbsd").exists() || Path::new("/bin/nc.openbsd").exists() {
        "nc.openbsd"
    } else {
        "nc"
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A sparse copy of a disk image.
pub fn copy_disk(from: &Path, to: &Path) {
    run(Command::new("cp").arg("--sparse=always").arg(from).arg(to));
}
