//! First boot of a real disk image under QEMU: the test OS (tests/setup/testos.sh) layered by
//! `berth-image commit`, made into a GPT disk by `berth-image disk`, booted the way an EC2
//! instance in UEFI boot mode boots it (UEFI firmware, the disk's own systemd-boot, its Boot
//! Loader Specification entry) with a user network that relays the guest's 169.254.169.254
//! (IMDS) and 169.254.169.253 (EC2) to a `berth-sim` region in this process.
//!
//! What a user would check from outside, and this test does:
//! - the firmware started the disk's bootloader, which started the kernel of the deployment's
//!   entry with the entry's arguments (the console shows both);
//! - the serial console shows berth-agent, started by systemd from the shipped unit, writing
//!   the role's files and reporting `converged`;
//! - the region's request log shows IMDSv2 only (a token PUT first, every GET with a token) and
//!   signed DescribeInstances calls with the role's session token;
//! - after a clean power-off, the disk (read with debugfs, no mount) holds the seed's files byte
//!   for byte and the per-instance state;
//! - a second boot of the same disk as the same instance does no first-boot work again (no file
//!   written, the first boot's record kept), while a copy of the disk booted as another instance
//!   (a new instance-id from IMDS) runs its own first boot.
//!
//! Slow: three boots under TCG (about a minute for a first boot on an idle 2-core machine; the second and third run
//! side by side). Needs root (libostree writes a bare sysroot) and the cached test OS.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::agent::{workspace, Region};
use berth_e2e::qemu::{self, DiskSummary, Forwards, Qemu};
use berth_sim::Listener;

/// A guest reboot after staging a deployment: libostree finalizes it at shutdown, copying the
/// kernel and initramfs to /boot.
const REBOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// A first boot under TCG reaches "converged" in about 140 s on an idle 2-core machine; the
/// margin covers a CI machine busy with other suites.
const FIRST_BOOT_TIMEOUT: Duration = Duration::from_secs(480);

fn skip_unless_ready(test: &str) -> Option<std::path::PathBuf> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ci = std::env::var_os("CI").is_some();
    if !root {
        assert!(
            !ci,
            "{test}: CI runs as root; this test must not skip there"
        );
        eprintln!("SKIPPED {test}: needs root (a bare OSTree sysroot, root-owned files)");
        return None;
    }
    match qemu::testos_repo() {
        Some(r) => Some(r),
        None => {
            assert!(
                !ci,
                "{test}: no cached test OS; tests/setup/testos.sh must run before the suite"
            );
            eprintln!("SKIPPED {test}: no cached test OS; run tests/setup/testos.sh");
            None
        }
    }
}

/// Deletes the test's ref from the cached repository (the objects stay: the same layer is
/// content-addressed and reused by the next run).
struct RefGuard<'a>(&'a Path, String);
impl Drop for RefGuard<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ostree")
            .arg(format!("--repo={}", self.0.display()))
            .args(["refs", "--delete", &self.1])
            .status();
    }
}

fn state(disk: &Path, summary: &DiskSummary, instance_id: &str) -> Option<serde_json::Value> {
    let root = summary.partition("root");
    let path = format!(
        "/ostree/deploy/{}/var/lib/berth/{instance_id}/state.json",
        qemu::OSNAME
    );
    qemu::debugfs_cat(disk, root.offset, &path)
        .map(|b| serde_json::from_slice(&b).expect("state.json is JSON"))
}

fn deployed_file(disk: &Path, summary: &DiskSummary, path: &str) -> Option<Vec<u8>> {
    let root = summary.partition("root");
    qemu::debugfs_cat(disk, root.offset, &format!("/{}{path}", summary.deployment))
}

/// The firmware started a boot option of the disk, and the kernel that came up is the one of the
/// deployment's Boot Loader Specification entry, started by systemd-boot with the entry's
/// arguments (systemd-boot passes the entry's `initrd` as an `initrd=` argument with EFI path
/// separators, ahead of the entry's `options`).
fn assert_booted_through_the_disks_bootloader(console: &str, summary: &DiskSummary) {
    assert!(
        console.contains("BdsDxe: starting Boot"),
        "the UEFI firmware did not start a boot option:\n{}",
        qemu::tail(console, 40)
    );
    let cmdline = kernel_cmdline(console);
    let initrd = format!("initrd={}", summary.entry.initrd.replace('/', "\\"));
    assert!(
        cmdline.starts_with(&initrd),
        "the kernel was not started from the entry's initramfs ({initrd}): {cmdline}"
    );
    assert!(
        cmdline.ends_with(&summary.entry.options),
        "the kernel's arguments are not the entry's ({}): {cmdline}",
        summary.entry.options
    );
}

/// The kernel command line the guest's kernel printed.
fn kernel_cmdline(console: &str) -> &str {
    console
        .lines()
        .find_map(|l| l.split_once("Command line: ").map(|(_, c)| c.trim_end()))
        .unwrap_or_else(|| panic!("no kernel command line:\n{}", qemu::tail(console, 40)))
}

/// The agent's "converged: N nodes, F files changed, R restarts" line of this boot.
fn converged_line(console: &str) -> String {
    console
        .lines()
        .rfind(|l| l.contains("berth-agent[") && l.contains("converged: "))
        .unwrap_or_else(|| panic!("no converged line:\n{}", qemu::tail(console, 40)))
        .to_string()
}

fn files_changed(line: &str) -> usize {
    let after = line
        .split("nodes, ")
        .nth(1)
        .expect("N nodes, F files changed");
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no file count in {line:?}"))
}

/// IMDSv2 only: the instance's first IMDS request is the token PUT, and every GET carried the
/// token. Returns the number of requests.
fn assert_imdsv2_only(region: &Region, instance_id: &str) -> usize {
    let reqs: Vec<_> = region
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.listener == Listener::Imds(instance_id.to_string()))
        .collect();
    assert!(!reqs.is_empty(), "{instance_id} never reached its IMDS");
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("PUT", "/latest/api/token"),
        "{instance_id}: the first IMDS request was not the IMDSv2 token PUT: {reqs:#?}"
    );
    for r in &reqs {
        if r.method == "GET" {
            assert!(
                r.token_present,
                "{instance_id}: IMDS GET without a token: {r:?}"
            );
        }
    }
    let gets: Vec<&str> = reqs
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.path.as_str())
        .collect();
    for needed in [
        "/latest/meta-data/instance-id",
        "/latest/meta-data/tags/instance/role",
        "/latest/meta-data/iam/security-credentials/berth-node",
    ] {
        assert!(
            gets.contains(&needed),
            "{instance_id}: no IMDS GET of {needed}: {gets:?}"
        );
    }
    reqs.len()
}

fn assert_signed_describe(region: &Region) {
    let ec2: Vec<_> = region
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.listener == Listener::Ec2)
        .collect();
    let describe: Vec<_> = ec2
        .iter()
        .filter(|r| r.action.as_deref() == Some("DescribeInstances"))
        .collect();
    assert!(
        !describe.is_empty(),
        "no DescribeInstances reached the region: {ec2:#?}"
    );
    for r in describe {
        assert!(r.signed && r.token_present, "unsigned or token-less: {r:?}");
        assert_eq!(r.status, 200, "refused: {r:?}");
    }
}

#[test]
fn disk_boots_under_qemu_and_berth_agent_runs_first_boot_once_per_instance() {
    let test = "disk_boots_under_qemu_and_berth_agent_runs_first_boot_once_per_instance";
    let Some(repo) = skip_unless_ready(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let layered = qemu::layer(&repo, &std::process::id().to_string());
    let _ref = RefGuard(&repo, layered.rev.clone());
    let disk = d.join("disk.raw");
    let (summary, disk_time) = qemu::build_disk(
        &layered,
        &disk,
        &[
            // The agent's journal on the serial console, which is what the test reads.
            "--karg",
            "systemd.journald.forward_to_console=1",
            // No login prompt interleaved with it.
            "--karg",
            "systemd.mask=serial-getty@ttyS0.service",
        ],
    );
    eprintln!(
        "{test}: berth-image disk took {:.1} s ({} MiB disk)",
        disk_time.as_secs_f64(),
        summary.size >> 20
    );
    assert_eq!(summary.commit, layered.commit);
    assert!(summary.entry.options.contains("console=ttyS0"));

    let region = Region::seed();
    let master = region.sim.instance_id("fed-master").unwrap();
    let minion = region.sim.instance_id("fed-minion").unwrap();
    let fwd = |name: &str| Forwards {
        imds_port: region.sim.imds_addr(name).unwrap().port(),
        ec2_port: region.sim.ec2_addr().port(),
    };

    // First boot, as fed-master.
    let mut vm = Qemu::boot(d, "boot1", &disk, &fwd("fed-master"), 2);
    let t = vm.wait_for("converged: ", FIRST_BOOT_TIMEOUT);
    eprintln!(
        "{test}: first boot reached \"converged\" {:.0} s after QEMU started ({})",
        t.as_secs_f64(),
        std::env::var("BERTH_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into())
    );
    let console1 = vm.console();
    vm.powerdown();
    assert_booted_through_the_disks_bootloader(&console1, &summary);
    let line = converged_line(&console1);
    assert!(line.contains("converged: 2 nodes"), "{line}");
    assert!(files_changed(&line) > 0, "first boot wrote nothing: {line}");
    for f in ["/etc/etcd/etcd.conf", "/etc/kubernetes/apiserver"] {
        assert!(
            console1.contains(&format!("wrote {f}")),
            "no `wrote {f}` on the console:\n{}",
            qemu::tail(&console1, 60)
        );
    }
    assert!(
        console1.contains("Started etcd.service")
            && console1.contains("Started kube-apiserver.service"),
        "the master's units were not started by systemd:\n{}",
        qemu::tail(&console1, 60)
    );
    assert_imdsv2_only(&region, &master);
    assert_signed_describe(&region);

    // The role's files, byte for byte the seed's, in the deployment's /etc on the disk.
    let golden = workspace().join("tests/golden/legacy-2015/fed-master");
    for f in [
        "/etc/etcd/etcd.conf",
        "/etc/kubernetes/config",
        "/etc/kubernetes/apiserver",
        "/etc/systemd/system/kubelet.service",
    ] {
        let want = std::fs::read(golden.join(&f[1..])).unwrap();
        let got =
            deployed_file(&disk, &summary, f).unwrap_or_else(|| panic!("{f} not on the disk"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{f} differs from tests/golden"
        );
    }
    // The golden controller-manager lists fed-minion-2 too (launched later in the seed's story);
    // this region runs the master and one minion.
    let cm = deployed_file(&disk, &summary, "/etc/kubernetes/controller-manager").unwrap();
    assert!(
        String::from_utf8_lossy(&cm).contains("KUBELET_ADDRESSES=\"--machines=fed-minion\"\n"),
        "{}",
        String::from_utf8_lossy(&cm)
    );
    let s1 = state(&disk, &summary, &master).expect("no state for the first instance");
    assert_eq!(s1["phase"], "converged", "{s1:#}");
    assert_eq!(s1["role"], "master");
    assert_eq!(
        s1["upgrade"]["outcome"], "skipped",
        "the image says upgrade: false"
    );
    let boot1_id = s1["upgrade"]["boot_id"].as_str().unwrap().to_string();

    // Second boot of the same disk as the same instance, and a copy of the disk booted as
    // another instance, side by side.
    let clone = d.join("clone.raw");
    qemu::copy_disk(&disk, &clone);
    let started = Instant::now();
    let mut again = Qemu::boot(d, "boot2", &disk, &fwd("fed-master"), 2);
    let mut other = Qemu::boot(d, "boot3", &clone, &fwd("fed-minion"), 2);
    again.wait_for("converged: ", FIRST_BOOT_TIMEOUT);
    other.wait_for("converged: ", FIRST_BOOT_TIMEOUT);
    eprintln!(
        "{test}: second boot and clone both converged {:.0} s after start",
        started.elapsed().as_secs_f64()
    );
    let console2 = again.console();
    let console3 = other.console();
    again.powerdown();
    other.powerdown();
    assert_booted_through_the_disks_bootloader(&console2, &summary);
    assert_booted_through_the_disks_bootloader(&console3, &summary);

    // Same instance: nothing redone.
    let line2 = converged_line(&console2);
    assert_eq!(
        files_changed(&line2),
        0,
        "the second boot rewrote files: {line2}"
    );
    assert!(line2.contains("0 restarts"), "{line2}");
    assert!(
        !console2.contains("wrote /etc/"),
        "{}",
        qemu::tail(&console2, 60)
    );
    let s2 = state(&disk, &summary, &master).unwrap();
    assert_eq!(s2["phase"], "converged");
    assert_eq!(
        s2["upgrade"]["boot_id"].as_str().unwrap(),
        boot1_id,
        "the second boot redid the once-per-instance step"
    );
    assert!(state(&disk, &summary, &minion).is_none());

    // The copy, served another instance-id: its own first boot.
    let line3 = converged_line(&console3);
    assert!(
        files_changed(&line3) > 0,
        "the copy did no first boot: {line3}"
    );
    assert!(
        console3.contains("wrote /etc/kubernetes/kubelet"),
        "{}",
        qemu::tail(&console3, 60)
    );
    let s3 = state(&clone, &summary, &minion).expect("no state for the new instance");
    assert_eq!(s3["phase"], "converged", "{s3:#}");
    assert_eq!(s3["role"], "minion");
    assert_ne!(
        s3["upgrade"]["boot_id"].as_str().unwrap(),
        boot1_id,
        "the new instance's first-boot record is the old instance's"
    );
    assert_imdsv2_only(&region, &minion);
    let golden = workspace().join("tests/golden/legacy-2015/fed-minion");
    for f in ["/etc/kubernetes/kubelet", "/etc/kubernetes/config"] {
        let want = std::fs::read(golden.join(&f[1..])).unwrap();
        let got =
            deployed_file(&clone, &summary, f).unwrap_or_else(|| panic!("{f} not on the copy"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{f}"
        );
    }

    // An upgrade of the first instance: the guest stages a new deployment through libostree and
    // reboots (berth-test-redeploy.service, the test OS's stand-in for the deployment
    // `rpm-ostree upgrade` stages), and the disk's bootloader must then boot that deployment.
    // libostree writes its entry to /boot and deletes the previous boot version's links, so this
    // is what a bootloader reading stale copies of the entries would fail.
    let root = summary.partition("root");
    let trigger = d.join("redeploy");
    std::fs::write(&trigger, "").unwrap();
    qemu::debugfs_write(
        &disk,
        root.offset,
        &trigger,
        &format!("/{}/etc/berth-test-redeploy", summary.deployment),
    );
    let mut staging = Qemu::boot(d, "boot4", &disk, &fwd("fed-master"), 2);
    staging.wait_for("berth-test: staging a new deployment", FIRST_BOOT_TIMEOUT);
    staging.wait_exit(REBOOT_TIMEOUT);
    let console4 = staging.console();
    assert_booted_through_the_disks_bootloader(&console4, &summary);
    let mut upgraded = Qemu::boot(d, "boot5", &disk, &fwd("fed-master"), 2);
    upgraded.wait_for("converged: ", FIRST_BOOT_TIMEOUT);
    let console5 = upgraded.console();
    upgraded.powerdown();

    let new_deployment = summary.deployment.replace(".0", ".1");
    assert!(
        summary.deployment.ends_with(".0") && new_deployment.ends_with(".1"),
        "{}",
        summary.deployment
    );
    assert!(
        qemu::debugfs_cat(
            &disk,
            root.offset,
            &format!("/{new_deployment}/etc/hostname")
        )
        .is_some(),
        "no new deployment {new_deployment} on the disk"
    );
    let cmdline = kernel_cmdline(&console5);
    let old_bootlink = summary
        .entry
        .options
        .split_whitespace()
        .find(|a| a.starts_with("ostree="))
        .unwrap()
        .to_string();
    assert!(
        old_bootlink.starts_with("ostree=/ostree/boot.1/"),
        "{old_bootlink}"
    );
    assert!(
        cmdline.contains(&old_bootlink.replace("/ostree/boot.1/", "/ostree/boot.0/")),
        "the upgraded boot did not start the new boot version's default deployment: {cmdline}"
    );
    assert!(
        console5.contains("BdsDxe: starting Boot"),
        "{}",
        qemu::tail(&console5, 40)
    );
    let line5 = converged_line(&console5);
    assert_eq!(files_changed(&line5), 0, "{line5}");
    assert!(!console5.contains("berth-test: staging"), "staged again");
    let s5 = state(&disk, &summary, &master).unwrap();
    assert_eq!(s5["phase"], "converged", "{s5:#}");
    assert_eq!(
        s5["upgrade"]["boot_id"].as_str().unwrap(),
        boot1_id,
        "the upgraded boot redid the once-per-instance step"
    );
}
