//! The agent's rpm-ostree client against a double of rpm-ostree's daemon that serves the real
//! D-Bus interface on a real, private `dbus-daemon` (see `berth_e2e::rpmostree_double`).

use std::path::Path;
use std::time::{Duration, Instant};

use berth_agent::host::dbus::{DbusAddresses, DbusHost};
use berth_agent::host::rpmostree::{RpmOstree, RpmOstreeError};
use berth_agent::host::{Host, HostError, UpgradeOutcome};
use berth_e2e::dbus::PrivateBus;
use berth_e2e::rpmostree_double::{read_record, simulate_reboot, Double, Scenario, State};

const DOUBLE: &str = env!("CARGO_BIN_EXE_rpm-ostree-double");

fn double(bus: &PrivateBus, scenario: Scenario, state: Option<&State>) -> Double {
    Double::start(
        Path::new(DOUBLE),
        bus.address(),
        &bus.dir(),
        scenario,
        state,
    )
}

async fn client(bus: &PrivateBus) -> RpmOstree {
    RpmOstree::connect(bus.address()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_available_stages_once_and_after_the_reboot_there_is_none() {
    let bus = PrivateBus::start();
    let initial = State::fedora_atomic_21(true);
    let d = double(&bus, Scenario::Normal, Some(&initial));

    let outcome = client(&bus)
        .await
        .upgrade(std::future::pending())
        .await
        .unwrap();
    assert_eq!(
        outcome,
        UpgradeOutcome::Staged {
            from: initial.booted.checksum.clone(),
            to: initial.remote.checksum.clone()
        }
    );
    assert_eq!(d.state().staged.as_ref(), Some(&initial.remote));
    let record = read_record(&d.record_file);
    let names: Vec<_> = record.iter().map(|c| c.call.as_str()).collect();
    assert_eq!(
        names,
        [
            "RegisterClient",
            "Upgrade",
            "Start",
            "Reload",
            "UnregisterClient"
        ]
    );
    assert_eq!(record[0].args["id"], "berth-agent");
    // The agent reboots through logind itself, after recording its phase.
    assert_eq!(record[1].args["reboot"], false);

    // Upgrading again before the reboot stages nothing new: the default deployment is already
    // the remote's newest.
    let again = client(&bus)
        .await
        .upgrade(std::future::pending())
        .await
        .unwrap();
    assert_eq!(again, UpgradeOutcome::NoUpgrade);

    // The host reboots into the staged deployment; the daemon starts afresh.
    drop(d);
    simulate_reboot(&bus.dir().join("rpmostree-state.json"));
    let d = double(&bus, Scenario::Normal, None);
    assert_eq!(d.state().booted, initial.remote);
    let after = client(&bus)
        .await
        .upgrade(std::future::pending())
        .await
        .unwrap();
    assert_eq!(after, UpgradeOutcome::NoUpgrade);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upgrade_available_through_the_dbus_host() {
    let bus = PrivateBus::start();
    let initial = State::fedora_atomic_21(false);
    let d = double(&bus, Scenario::Normal, Some(&initial));
    // systemd's bus and rpm-ostree's may differ; here the double's bus serves as both.
    let mut host = DbusHost::connect(&DbusAddresses {
        system: Some(bus.address().to_string()),
        rpmostree: Some(bus.address().to_string()),
    })
    .await
    .unwrap();
    assert_eq!(host.upgrade_os().await.unwrap(), UpgradeOutcome::NoUpgrade);
    assert_eq!(d.state(), initial, "nothing staged");
    assert!(d.calls().contains(&"Start".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_is_a_clear_error_and_stages_nothing() {
    let bus = PrivateBus::start();
    let initial = State::fedora_atomic_21(true);
    let d = double(&bus, Scenario::Fail, Some(&initial));
    let err = client(&bus)
        .await
        .upgrade(std::future::pending())
        .await
        .unwrap_err();
    match &err {
        RpmOstreeError::Failed { message } => assert!(message.contains("HTTP 404"), "{message}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with("rpm-ostree upgrade failed: While pulling"),
        "{text}"
    );
    assert!(text.contains("journalctl -u rpm-ostreed"), "{text}");
    assert_eq!(d.state(), initial);
    // Through the Host, the same error reaches the run loop, which must not reboot.
    let mut host = DbusHost::connect(&DbusAddresses {
        system: Some(bus.address().to_string()),
        rpmostree: None,
    })
    .await
    .unwrap();
    let err = host.upgrade_os().await.unwrap_err();
    assert!(matches!(err, HostError::RpmOstree(_)), "{err:?}");
    assert!(err.to_string().contains("HTTP 404"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_vanishing_mid_transaction_fails_promptly() {
    let bus = PrivateBus::start();
    let mut d = double(&bus, Scenario::Vanish, Some(&State::fedora_atomic_21(true)));
    let started = Instant::now();
    let err = client(&bus)
        .await
        .with_transaction_timeout(Duration::from_secs(60))
        .upgrade(std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RpmOstreeError::DaemonVanished | RpmOstreeError::TransactionLost
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.to_string().contains("journalctl -u rpm-ostreed"),
        "{err}"
    );
    assert!(d.exited());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_client_cancels_the_transaction() {
    let bus = PrivateBus::start();
    let d = double(&bus, Scenario::Hang, Some(&State::fedora_atomic_21(true)));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut host = DbusHost::connect(&DbusAddresses {
        system: Some(bus.address().to_string()),
        rpmostree: None,
    })
    .await
    .unwrap()
    .with_interrupt(rx);
    let upgrade = tokio::spawn(async move { host.upgrade_os().await });
    assert!(d.wait_for_call("Start", Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.send(true).unwrap(); // what the agent does on SIGTERM
    let err = upgrade.await.unwrap().unwrap_err();
    assert!(matches!(err, HostError::RpmOstree(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("interrupted"), "{err}");
    assert!(message.contains("the transaction was cancelled"), "{err}");
    assert!(d.calls().contains(&"Cancel".to_string()), "{:?}", d.calls());
    assert_eq!(d.state().staged, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_upgrade_still_cancels_the_transaction() {
    let bus = PrivateBus::start();
    let d = double(&bus, Scenario::Hang, Some(&State::fedora_atomic_21(true)));
    let rpm = client(&bus).await;
    let abandoned =
        tokio::time::timeout(Duration::from_secs(1), rpm.upgrade(std::future::pending())).await;
    assert!(
        abandoned.is_err(),
        "the hanging transaction cannot have finished"
    );
    assert!(
        d.wait_for_call("Cancel", Duration::from_secs(10)),
        "{:?}",
        d.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_past_its_deadline_is_cancelled() {
    let bus = PrivateBus::start();
    let d = double(&bus, Scenario::Hang, Some(&State::fedora_atomic_21(true)));
    let started = Instant::now();
    let err = client(&bus)
        .await
        .with_transaction_timeout(Duration::from_secs(1))
        .upgrade(std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RpmOstreeError::Timeout {
                cancelled: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(d.calls().contains(&"Cancel".to_string()));
}

// ---------------------------------------------------------------------------------------------
// The real `berth-agent run --once` on a Fedora 21 container (real systemd and logind) whose
// rpm-ostree is the double: the upgrade happens once per instance, across the reboot.

mod with_the_agent {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use berth_e2e::agent::Region;
    use berth_e2e::agent_host::{master_args, Node, MASTER_UNITS};
    use berth_e2e::rpmostree_double::{simulate_reboot, Scenario, State};
    use berth_sim::ClusterSpec;

    const STANDIN: &str = env!("CARGO_BIN_EXE_berth-standin");
    const DOUBLE: &str = env!("CARGO_BIN_EXE_rpm-ostree-double");

    fn node(scenario: Scenario, upgrade_available: bool) -> Node {
        Node::boot(
            Path::new(STANDIN),
            Path::new(DOUBLE),
            scenario,
            &State::fedora_atomic_21(upgrade_available),
        )
    }

    fn count(calls: &[String], name: &str) -> usize {
        calls.iter().filter(|c| *c == name).count()
    }

    #[test]
    fn first_boot_upgrades_reboots_once_and_then_converges() {
        if !berth_e2e::nspawn::have_root("first_boot_upgrades_reboots_once_and_then_converges") {
            return;
        }
        let region = Region::start(ClusterSpec::seed());
        let mut master = node(Scenario::Normal, true);
        let initial = master.double().state();

        // First boot: the upgrade stages a deployment, and the agent reboots the host through
        // logind before configuring anything.
        let log = master.converge(&region, "fed-master");
        assert!(log.contains("rpm-ostree staged deployment"), "{log}");
        assert_eq!(master.double().state().staged, Some(initial.remote.clone()));
        assert_eq!(count(&master.double().calls(), "Upgrade"), 1);
        let stopped = master.ct.wait_stopped(Duration::from_secs(30));
        assert!(
            stopped.is_some(),
            "the container did not reboot\n{}",
            master.ct.console()
        );
        assert!(
            master.starts().values().all(|n| *n == 0),
            "nothing is configured before the reboot: {:?}",
            master.starts()
        );

        // The host comes back on the new deployment, with a new boot id; rpm-ostree's daemon
        // starts afresh on it.
        simulate_reboot(&master.double().state_file);
        master.restart_rpmostree(Scenario::Normal, None);
        assert_eq!(master.double().state().booted, initial.remote);
        master.set_boot_id("berth-test-boot-2");
        master.ct.boot();

        let log = master.converge(&region, "fed-master");
        assert!(
            !log.contains("upgrading the OS"),
            "a second upgrade was attempted:\n{log}"
        );
        let calls = master.double().calls();
        assert_eq!(count(&calls, "Upgrade"), 1, "{calls:?}");
        master.assert_units(MASTER_UNITS, "enabled", "active");
        for (daemon, args) in master_args() {
            assert_eq!(master.last_args(daemon), args, "{daemon}");
        }
        // And it never upgrades again on this instance.
        master.converge(&region, "fed-master");
        assert_eq!(count(&master.double().calls(), "Upgrade"), 1);
        assert!(
            master.ct.wait_stopped(Duration::from_secs(1)).is_none(),
            "rebooted again"
        );
    }

    #[test]
    fn no_upgrade_available_means_no_reboot() {
        if !berth_e2e::nspawn::have_root("no_upgrade_available_means_no_reboot") {
            return;
        }
        let region = Region::start(ClusterSpec::seed());
        let mut minion = node(Scenario::Normal, false);
        let log = minion.converge(&region, "fed-minion");
        assert!(log.contains("no upgrade available"), "{log}");
        assert_eq!(count(&minion.double().calls(), "Upgrade"), 1);
        assert!(
            minion.ct.wait_stopped(Duration::from_secs(2)).is_none(),
            "the host rebooted"
        );
        assert_eq!(
            minion.ct.systemctl(&["is-active", "kubelet.service"]),
            "active"
        );
    }

    #[test]
    fn a_failed_upgrade_blocks_configuration_and_is_retried() {
        if !berth_e2e::nspawn::have_root("a_failed_upgrade_blocks_configuration_and_is_retried") {
            return;
        }
        let region = Region::start(ClusterSpec::seed());
        let mut master = node(Scenario::Fail, true);
        let out = master.run(&region, "fed-master", &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("HTTP 404"), "{stderr}");
        assert!(stderr.contains("journalctl -u rpm-ostreed"), "{stderr}");
        // The default policy (`upgrade_failure: block`): nothing configured, no reboot.
        assert!(
            master.starts().values().all(|n| *n == 0),
            "{:?}",
            master.starts()
        );
        assert!(!master
            .ct
            .path("/etc/kubernetes/controller-manager")
            .exists());
        assert!(master.ct.wait_stopped(Duration::from_secs(1)).is_none());

        // The next run tries again; this time there is simply nothing newer.
        master.restart_rpmostree(Scenario::Normal, Some(&State::fedora_atomic_21(false)));
        master.converge(&region, "fed-master");
        assert_eq!(count(&master.double().calls(), "Upgrade"), 2);
        master.assert_units(MASTER_UNITS, "enabled", "active");
    }

    #[test]
    fn the_daemon_vanishing_fails_the_run_cleanly() {
        if !berth_e2e::nspawn::have_root("the_daemon_vanishing_fails_the_run_cleanly") {
            return;
        }
        let region = Region::start(ClusterSpec::seed());
        let master = node(Scenario::Vanish, true);
        berth_e2e::agent::bin("berth-agent");
        let started = Instant::now();
        let out = master.run(&region, "fed-master", &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            stderr.contains("left the bus") || stderr.contains("connection closed"),
            "{stderr}"
        );
        assert!(master.starts().values().all(|n| *n == 0));
    }

    #[test]
    fn sigterm_mid_transaction_cancels_it() {
        if !berth_e2e::nspawn::have_root("sigterm_mid_transaction_cancels_it") {
            return;
        }
        let region = Region::start(ClusterSpec::seed());
        let master = node(Scenario::Hang, true);
        let mut agent = master
            .command(&region, "fed-master", &[])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("berth-agent starts");
        assert!(
            master
                .double()
                .wait_for_call("Start", Duration::from_secs(30)),
            "the transaction never started: {:?}",
            master.double().calls()
        );
        // SAFETY: signalling the agent we spawned, by its PID.
        unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = agent.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = agent.kill();
                panic!("berth-agent did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = agent.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!status.success(), "{stderr}");
        let calls = master.double().calls();
        assert!(calls.contains(&"Cancel".to_string()), "{calls:?}\n{stderr}");
        assert!(stderr.contains("cancelled"), "{stderr}");
        assert_eq!(master.double().state().staged, None);
        assert!(master.starts().values().all(|n| *n == 0));
    }
}
