//! An instance's first boot through the shipped `berth-agent.service`, in a real systemd: the
//! daemon-mode agent (no `--once`) upgrades the OS through rpm-ostree's double, tells systemd it
//! is ready before logind reboots the container (so `Type=notify` does not end in
//! `Result=protocol`), and after the reboot the same unit converges without upgrading again.
//!
//! The agent runs inside the container, under its systemd. Everything it talks to lives in the
//! container's network namespace: berth-sim (IMDS and EC2 on the container's loopback), and
//! rpm-ostree's double on a `dbus-daemon` listening on an abstract socket (abstract sockets
//! belong to a network namespace, as do the double's transaction sockets). A reboot gives the
//! container a new network namespace, so each boot starts them afresh, as a host's next boot
//! starts its daemons afresh.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_e2e::dbus::PrivateBus;
use berth_e2e::nspawn::{Container, SimInContainer};
use berth_e2e::rpmostree_double::{simulate_reboot, Double, Scenario, State};

const STANDIN: &str = env!("CARGO_BIN_EXE_berth-standin");
const DOUBLE: &str = env!("CARGO_BIN_EXE_rpm-ostree-double");
const UNIT: &str = "berth-agent.service";
/// The abstract name of rpm-ostree's bus in the container's network namespace.
const RPMOSTREE_BUS: &str = "unix:abstract=berth-test-rpmostree";

/// `dbus-daemon` for rpm-ostree on an abstract socket in the container's network namespace.
fn start_bus(ct: &Container) -> PrivateBus {
    PrivateBus::start_with(ct.in_netns(Path::new("dbus-daemon")), RPMOSTREE_BUS)
}

/// Boots the container and starts what its "host" offers the agent in the container's network
/// namespace: the region, rpm-ostree's bus and rpm-ostree's double (with `initial` as its state,
/// or the state it saved).
fn boot(
    ct: &mut Container,
    dir: &Path,
    initial: Option<&State>,
) -> (SimInContainer, PrivateBus, Double) {
    ct.boot();
    let sim = SimInContainer::start(ct);
    let bus = start_bus(ct);
    let double = Double::start(
        &double_in_netns(ct, dir),
        RPMOSTREE_BUS,
        dir,
        Scenario::Normal,
        initial,
    );
    (sim, bus, double)
}

/// The double's program, run in the container's network namespace: a script in place of the
/// binary, since [`Double::start`] spawns the program it is given.
fn double_in_netns(ct: &Container, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("rpm-ostree-double-in-netns");
    let netns = netns_of(ct);
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec nsenter --net={netns} -- {DOUBLE} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The container's network namespace, as a path the host can hand to `nsenter --net=`.
fn netns_of(ct: &Container) -> String {
    // `in_netns` enters the namespace of the container's PID 1; ask a process started there
    // for its own namespace file, which names the same namespace.
    let out = ct
        .in_netns(Path::new("readlink"))
        .arg("/proc/self/ns/net")
        .output()
        .unwrap();
    let inode = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // A host PID in that namespace: the container's systemd.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|s| s.parse::<u32>().is_ok()) else {
            continue;
        };
        let ns = format!("/proc/{pid}/ns/net");
        if std::fs::read_link(&ns)
            .map(|l| l.to_string_lossy() == inode)
            .unwrap_or(false)
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == "systemd")
                .unwrap_or(false)
        {
            return ns;
        }
    }
    panic!("no process in the container's network namespace {inode}");
}

/// The unit's journal of boot `boot` (`0` this one, `-1` the one before).
fn journal(ct: &Container, boot: &str) -> String {
    let out = ct.exec(&[
        "journalctl",
        "-b",
        boot,
        "-o",
        "cat",
        "--no-pager",
        "-u",
        UNIT,
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn show(ct: &Container) -> String {
    ct.systemctl(&[
        "show",
        "-p",
        "ActiveState",
        "-p",
        "SubState",
        "-p",
        "Result",
        "-p",
        "StatusText",
        UNIT,
    ])
    .replace('\n', " ")
}

#[test]
fn the_shipped_unit_upgrades_reboots_once_and_then_converges() {
    if !berth_e2e::nspawn::have_root("the_shipped_unit_upgrades_reboots_once_and_then_converges") {
        return;
    }
    let t0 = Instant::now();
    let mut ct = Container::new();
    ct.install_fedora21(Path::new(STANDIN));
    ct.install_agent();
    ct.write(
        "/etc/systemd/system/berth-agent.service.d/endpoints.conf",
        &format!(
            "[Service]\nExecStart=\nExecStart=/usr/bin/berth-agent run --rpmostree-bus {RPMOSTREE_BUS} \
             --imds-endpoint http://{}/ --ec2-endpoint http://{}/\n",
            SimInContainer::IMDS,
            SimInContainer::EC2
        ),
    );
    // A persistent journal, to read the first boot's from the second.
    std::fs::create_dir_all(ct.path("/var/log/journal")).unwrap();
    let files = tempfile::Builder::new()
        .prefix("berth-upgrade-unit-")
        .tempdir()
        .unwrap();
    let initial = State::fedora_atomic_21(true);

    // First boot.
    let (sim, bus, double) = boot(&mut ct, files.path(), Some(&initial));
    let t_booted = t0.elapsed();
    let out = ct.exec(&["systemctl", "start", "--no-block", UNIT]);
    assert!(out.status.success(), "{out:?}");

    // Watch the unit from the staged upgrade until the container goes down.
    assert!(
        double.wait_for_call("Upgrade", Duration::from_secs(30)),
        "no upgrade: {:?}\n{}\n{}",
        double.calls(),
        show(&ct),
        journal(&ct, "0")
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let stopped = loop {
        if let Some(status) = ct.wait_stopped(Duration::from_millis(20)) {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        let now = show(&ct);
        if !now.is_empty() && seen.last() != Some(&now) {
            seen.push(now);
        }
    };
    eprintln!("unit states before the reboot: {seen:#?}");
    assert!(
        stopped.is_some(),
        "the container did not reboot: {seen:?}\n{}",
        ct.console()
    );
    let t_rebooted = t0.elapsed();
    assert!(
        seen.iter()
            .all(|s| !s.contains("Result=protocol") && !s.contains("ActiveState=failed")),
        "{seen:?}"
    );
    assert_eq!(double.state().staged, Some(initial.remote.clone()));
    assert_eq!(double.calls().iter().filter(|c| *c == "Upgrade").count(), 1);
    assert!(
        berth_e2e::nspawn::STANDINS
            .iter()
            .all(|n| ct.standin_starts(n).is_empty()),
        "something was configured before the reboot"
    );
    drop(double);
    drop(bus);
    drop(sim);

    // The host comes back on the new deployment, with a new boot id (nspawn gives each boot of
    // a container its own).
    simulate_reboot(&files.path().join("rpmostree-state.json"));
    let (_sim, _bus, double) = boot(&mut ct, files.path(), None);
    assert_eq!(double.state().booted, initial.remote);

    // The first boot's journal: READY=1 came before the stop, and the stop was clean.
    let first = journal(&ct, "-1");
    eprintln!("first boot's journal of {UNIT}:\n{first}");
    assert!(first.contains("rpm-ostree staged deployment"), "{first}");
    assert!(first.contains("Started berth-agent"), "{first}");
    assert!(!first.contains("protocol"), "{first}");
    assert!(!first.contains("Failed with result"), "{first}");

    // Second boot: the same unit, started by hand (as multi-user.target would), converges.
    let started = Instant::now();
    let out = ct.exec(&["systemctl", "start", UNIT]);
    assert!(
        out.status.success(),
        "start failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ct.systemctl(&["status", "--no-pager", "-n", "40", UNIT])
    );
    let t_converged = started.elapsed();
    let status = ct.systemctl(&["status", "--no-pager", "-n", "40", UNIT]);
    assert!(status.contains("Status: \"converged: 2 nodes"), "{status}");
    assert_eq!(ct.systemctl(&["is-active", UNIT]), "active");
    for unit in [
        "etcd.service",
        "kube-apiserver.service",
        "kube-controller-manager.service",
        "kube-scheduler.service",
    ] {
        assert_eq!(ct.systemctl(&["is-active", unit]), "active", "{unit}");
    }
    let calls = double.calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "Upgrade").count(),
        1,
        "{calls:?}"
    );
    let second = journal(&ct, "0");
    assert!(!second.contains("upgrading the OS"), "{second}");
    assert!(!second.contains("has not happened"), "{second}");
    assert!(
        ct.wait_stopped(Duration::from_secs(1)).is_none(),
        "rebooted again"
    );
    eprintln!(
        "booted {t_booted:?}, rebooted {t_rebooted:?}, second start converged in \
         {t_converged:?}, total {:?}",
        t0.elapsed()
    );
}
