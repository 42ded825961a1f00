//! The agent's systemd and logind clients against a real systemd: PID 1 of a booted Debian
//! container carrying Fedora 21's units (see `tests/src/nspawn.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_agent::host::dbus::{DbusAddresses, DbusHost};
use berth_agent::host::login::Login;
use berth_agent::host::systemd::{JobKind, Systemd, SystemdError};
use berth_agent::host::{Host, UnitOp};
use berth_e2e::agent::Region;
use berth_e2e::nspawn::{Container, SimInContainer};
use futures_util::StreamExt;
use std::path::Path;

const STANDIN: &str = env!("CARGO_BIN_EXE_berth-standin");

fn fedora21() -> Container {
    let t0 = Instant::now();
    let mut ct = Container::new();
    let t_copy = t0.elapsed();
    ct.install_fedora21(std::path::Path::new(STANDIN));
    let t_install = t0.elapsed();
    ct.boot();
    eprintln!(
        "container: copied {t_copy:?}, installed {t_install:?}, booted {:?}",
        t0.elapsed()
    );
    ct
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Reloads {
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn reloading(&self, active: bool) -> zbus::Result<()>;
}

/// Counts systemd's daemon-reloads, from its `Reloading(true)` signal, on a connection of its own.
struct ReloadCounter {
    stream: ReloadingStream,
    _proxy: ReloadsProxy<'static>,
}

impl ReloadCounter {
    async fn new(address: &str) -> Self {
        let conn = zbus::connection::Builder::address(address)
            .build()
            .await
            .unwrap();
        let proxy = ReloadsProxy::new(&conn).await.unwrap();
        proxy.subscribe().await.unwrap();
        let stream = proxy.receive_reloading().await.unwrap();
        ReloadCounter {
            stream,
            _proxy: proxy,
        }
    }

    /// Reloads started since the last call (signals arrive within a few milliseconds).
    async fn take(&mut self) -> usize {
        let mut n = 0;
        while let Ok(Some(sig)) =
            tokio::time::timeout(Duration::from_millis(500), self.stream.next()).await
        {
            if sig.args().unwrap().active {
                n += 1;
            }
        }
        n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_client_enables_starts_restarts_and_reports_failed_jobs() {
    if !berth_e2e::nspawn::have_root(
        "systemd_client_enables_starts_restarts_and_reports_failed_jobs",
    ) {
        return;
    }
    let ct = fedora21();
    let systemd = Systemd::connect(&ct.bus_address()).await.unwrap();
    systemd.subscribe().await.unwrap();

    // Enable: symlinks appear once, systemd agrees.
    assert_eq!(
        systemd.unit_file_state("etcd.service").await.unwrap(),
        "disabled"
    );
    assert!(
        systemd.enable(&["etcd.service"]).await.unwrap(),
        "first enable changes links"
    );
    assert!(
        !systemd.enable(&["etcd.service"]).await.unwrap(),
        "second enable changes nothing"
    );
    systemd.reload().await.unwrap();
    assert_eq!(
        systemd.unit_file_state("etcd.service").await.unwrap(),
        "enabled"
    );
    assert_eq!(ct.systemctl(&["is-enabled", "etcd.service"]), "enabled");
    assert!(ct
        .path("/etc/systemd/system/multi-user.target.wants/etcd.service")
        .is_symlink());

    // Start, then restart: the stand-in records each start with the unit's exact arguments.
    assert_eq!(
        systemd.active_state("etcd.service").await.unwrap(),
        "inactive"
    );
    systemd.start("etcd.service").await.unwrap();
    assert_eq!(
        systemd.active_state("etcd.service").await.unwrap(),
        "active"
    );
    assert_eq!(ct.systemctl(&["is-active", "etcd.service"]), "active");
    let etcd_args = vec!["-config".to_string(), "/etc/etcd/etcd.conf".to_string()];
    assert_eq!(ct.wait_standin_starts("etcd", 1), vec![etcd_args.clone()]);
    // Starting an active unit is a no-op job that finishes `done`: no second process.
    systemd.start("etcd.service").await.unwrap();
    assert_eq!(ct.standin_starts("etcd").len(), 1);
    systemd.restart("etcd.service").await.unwrap();
    assert_eq!(
        ct.wait_standin_starts("etcd", 2),
        vec![etcd_args.clone(), etcd_args]
    );

    // EnvironmentFile= expansion, done by systemd: the controller manager gets the seed's flags.
    ct.write("/etc/kubernetes/config", "KUBE_ETCD_SERVERS=\"--etcd_servers=http://fed-master:4001\"\nKUBE_LOGTOSTDERR=\"--logtostderr=true\"\nKUBE_LOG_LEVEL=\"--v=0\"\nKUBE_ALLOW_PRIV=\"--allow_privileged=false\"\n");
    ct.write(
        "/etc/kubernetes/apiserver",
        "KUBE_MASTER=\"--master=http://fed-master:8080\"\n",
    );
    ct.write(
        "/etc/kubernetes/controller-manager",
        "KUBELET_ADDRESSES=\"--machines=fed-minion,fed-minion-2\"\n",
    );
    systemd
        .start("kube-controller-manager.service")
        .await
        .unwrap();
    assert_eq!(
        ct.wait_standin_starts("kube-controller-manager", 1),
        vec![vec![
            "--logtostderr=true",
            "--v=0",
            "--machines=fed-minion,fed-minion-2",
            "--master=http://fed-master:8080"
        ]]
    );

    // A drop-in takes effect only after Reload; then a failing Type=notify start is an error
    // naming the unit, the job result and where to look.
    ct.write(
        "/etc/systemd/system/docker.service.d/fail.conf",
        "[Service]\nEnvironment=BERTH_STANDIN_FAIL=1\n",
    );
    systemd.reload().await.unwrap();
    let err = systemd.start("docker.service").await.unwrap_err();
    match &err {
        SystemdError::JobFailed { unit, kind, result } => {
            assert_eq!(unit, "docker.service");
            assert_eq!(*kind, JobKind::Start);
            assert_eq!(result, "failed");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("docker.service") && text.contains("`failed`"),
        "{text}"
    );
    assert!(text.contains("journalctl -u docker.service"), "{text}");
    assert_eq!(ct.systemctl(&["is-active", "docker.service"]), "failed");

    // A job that systemd does not finish within the client's deadline is reported as such.
    ct.write(
        "/etc/systemd/system/docker.service.d/fail.conf",
        "[Service]\nEnvironment=BERTH_STANDIN_NO_NOTIFY=1\n",
    );
    systemd.reload().await.unwrap();
    let quick = Systemd::connect(&ct.bus_address())
        .await
        .unwrap()
        .with_job_timeout(Duration::from_secs(2));
    quick.subscribe().await.unwrap();
    let started = Instant::now();
    let err = quick.start("docker.service").await.unwrap_err();
    assert!(matches!(err, SystemdError::JobTimeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        err.to_string().contains("journalctl -u docker.service"),
        "{err}"
    );

    // Stop and disable undo it all.
    systemd.stop("etcd.service").await.unwrap();
    assert_eq!(ct.systemctl(&["is-active", "etcd.service"]), "inactive");
    assert!(systemd.disable(&["etcd.service"]).await.unwrap());
    assert!(!systemd.disable(&["etcd.service"]).await.unwrap());
    assert_eq!(ct.systemctl(&["is-enabled", "etcd.service"]), "disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbus_host_unit_ops_are_idempotent_and_reload_only_when_links_change() {
    if !berth_e2e::nspawn::have_root(
        "dbus_host_unit_ops_are_idempotent_and_reload_only_when_links_change",
    ) {
        return;
    }
    let ct = fedora21();
    let addresses = DbusAddresses {
        system: Some(ct.bus_address()),
        rpmostree: None,
    };
    let mut host = DbusHost::connect(&addresses).await.unwrap();
    let mut reloads = ReloadCounter::new(&ct.bus_address()).await;

    // The kubelet fix, as the seed did it by hand: a copy in /etc with docker.service.
    let fixed = std::fs::read_to_string(ct.path("/usr/lib/systemd/system/kubelet.service"))
        .unwrap()
        .replace("docker.socket", "docker.service");
    ct.write("/etc/systemd/system/kubelet.service", &fixed);
    host.reload().await.unwrap();
    assert_eq!(reloads.take().await, 1);
    let show = ct.systemctl(&["show", "-p", "Requires", "-p", "After", "kubelet.service"]);
    let requires = show.lines().find(|l| l.starts_with("Requires=")).unwrap();
    assert!(
        requires.split([' ', '=']).any(|u| u == "docker.service"),
        "{show}"
    );
    assert!(!show.contains("docker.socket"), "{show}");

    for unit in ["docker.service", "kube-proxy.service", "kubelet.service"] {
        host.unit_op(unit, UnitOp::Enable).await.unwrap();
    }
    assert_eq!(
        reloads.take().await,
        3,
        "one reload per newly enabled unit, as systemctl does"
    );
    for unit in ["docker.service", "kube-proxy.service", "kubelet.service"] {
        host.unit_op(unit, UnitOp::Enable).await.unwrap();
        host.unit_op(unit, UnitOp::Start).await.unwrap();
        assert_eq!(ct.systemctl(&["is-enabled", unit]), "enabled");
        assert_eq!(ct.systemctl(&["is-active", unit]), "active");
    }
    assert_eq!(
        reloads.take().await,
        0,
        "enabling enabled units reloads nothing"
    );
    // Starting what runs starts nothing new.
    host.unit_op("kubelet.service", UnitOp::Start)
        .await
        .unwrap();
    assert_eq!(ct.wait_standin_starts("kubelet", 1).len(), 1);
    assert_eq!(ct.wait_standin_starts("docker", 1).len(), 1);

    // Master side of the seed: stop and disable, twice; the second pass changes nothing.
    for _ in 0..2 {
        for unit in ["kube-proxy.service", "kubelet.service", "docker.service"] {
            host.unit_op(unit, UnitOp::Stop).await.unwrap();
            host.unit_op(unit, UnitOp::Disable).await.unwrap();
        }
    }
    assert_eq!(
        reloads.take().await,
        3,
        "one reload per unit actually disabled"
    );
    for unit in ["kube-proxy.service", "kubelet.service", "docker.service"] {
        assert_eq!(ct.systemctl(&["is-enabled", unit]), "disabled");
        assert_eq!(ct.systemctl(&["is-active", unit]), "inactive");
    }

    // Errors from the Host name the unit and where to look.
    ct.write(
        "/etc/systemd/system/docker.service.d/fail.conf",
        "[Service]\nEnvironment=BERTH_STANDIN_FAIL=1\n",
    );
    host.reload().await.unwrap();
    let err = host
        .unit_op("docker.service", UnitOp::Restart)
        .await
        .unwrap_err();
    // The error keeps its kind: a systemd job that failed, not a flattened string.
    assert!(
        matches!(err, berth_agent::host::HostError::Systemd(_)),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("docker.service"), "{err}");
    assert!(message.contains("journalctl -u docker.service"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_through_logind_restarts_the_container() {
    if !berth_e2e::nspawn::have_root("reboot_through_logind_restarts_the_container") {
        return;
    }
    let mut ct = fedora21();
    let login = Login::connect(&ct.bus_address()).await.unwrap();
    let via = login.reboot().await.unwrap();
    assert_eq!(via, berth_agent::host::login::RebootVia::Logind);
    // nspawn exits when its container reboots.
    let status = ct.wait_stopped(Duration::from_secs(30));
    assert!(
        status.is_some(),
        "container did not reboot\n{}",
        ct.console()
    );
    // And it boots again from the same disk.
    ct.boot();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_falls_back_to_reboot_target_without_logind() {
    if !berth_e2e::nspawn::have_root("reboot_falls_back_to_reboot_target_without_logind") {
        return;
    }
    let mut ct = Container::new();
    // A host without logind: mask it before boot.
    std::os::unix::fs::symlink(
        "/dev/null",
        ct.path("/etc/systemd/system/systemd-logind.service"),
    )
    .unwrap();
    ct.boot();
    let login = Login::connect(&ct.bus_address()).await.unwrap();
    let via = login.reboot().await.unwrap();
    assert_eq!(via, berth_agent::host::login::RebootVia::RebootTarget);
    assert!(
        ct.wait_stopped(Duration::from_secs(30)).is_some(),
        "container did not reboot\n{}",
        ct.console()
    );
}

// ---------------------------------------------------------------------------------------------
// The real `berth-agent run --once` inside the container's systemd, against a berth-sim region.

use berth_e2e::agent_host::{master_args, strings, Node, MASTER_UNITS, MINION_UNITS};
use berth_e2e::rpmostree_double::{Scenario, State};

const DOUBLE: &str = env!("CARGO_BIN_EXE_rpm-ostree-double");

fn seed_node() -> Node {
    Node::boot(
        Path::new(STANDIN),
        Path::new(DOUBLE),
        Scenario::Normal,
        &State::fedora_atomic_21(false),
    )
}

fn seed_region() -> Region {
    Region::start(ClusterSpec::seed())
}

use berth_sim::ClusterSpec;

#[test]
fn agent_converges_a_master_and_a_minion_with_the_seeds_flags() {
    if !berth_e2e::nspawn::have_root("agent_converges_a_master_and_a_minion_with_the_seeds_flags") {
        return;
    }
    let region = seed_region();
    let master = seed_node();
    let minion = seed_node();

    master.converge(&region, "fed-master");
    master.assert_units(MASTER_UNITS, "enabled", "active");
    master.assert_units(MINION_UNITS, "disabled", "inactive");
    for (daemon, args) in master_args() {
        assert_eq!(
            master.ct.wait_standin_starts(daemon, 1),
            vec![args],
            "{daemon}"
        );
    }
    // The kubelet fix is in place on the master too (it is a host fix, not a role's).
    let show = master
        .ct
        .systemctl(&["show", "-p", "Requires", "-p", "After", "kubelet.service"]);
    assert!(
        show.contains("docker.service") && !show.contains("docker.socket"),
        "{show}"
    );

    minion.converge(&region, "fed-minion");
    minion.assert_units(MINION_UNITS, "enabled", "active");
    let show = minion
        .ct
        .systemctl(&["show", "-p", "Requires", "-p", "After", "kubelet.service"]);
    let requires = show.lines().find(|l| l.starts_with("Requires=")).unwrap();
    assert!(
        requires.split([' ', '=']).any(|u| u == "docker.service"),
        "{show}"
    );
    assert!(!show.contains("docker.socket"), "{show}");
    assert_eq!(
        minion.last_args("kubelet"),
        strings(&[
            "--logtostderr=true",
            "--v=0",
            "--etcd_servers=http://fed-master:4001",
            "--address=0.0.0.0",
            "--port=10250",
            "--hostname_override=fed-minion",
            "--allow_privileged=false",
        ])
    );
    assert_eq!(
        minion.last_args("kube-proxy"),
        strings(&[
            "--logtostderr=true",
            "--v=0",
            "--etcd_servers=http://fed-master:4001"
        ])
    );
    assert_eq!(minion.last_args("docker"), strings(&["-d", "-H", "fd://"]));
    for daemon in ["kube-proxy", "kubelet", "docker"] {
        assert_eq!(minion.ct.standin_starts(daemon).len(), 1, "{daemon}");
    }

    // A second run restarts nothing, on either node.
    let master_starts = master.starts();
    let minion_starts = minion.starts();
    let stderr = master.converge(&region, "fed-master");
    assert!(stderr.contains("0 files changed, 0 restarts"), "{stderr}");
    minion.converge(&region, "fed-minion");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(master.starts(), master_starts);
    assert_eq!(minion.starts(), minion_starts);

    // fed-minion-2 joins: on the master only the controller manager restarts, with both
    // minions; the minion restarts nothing (only its /etc/hosts learns the newcomer).
    region.launch(ClusterSpec::seed().not_launched("fed-minion-2").unwrap());
    master.converge(&region, "fed-master");
    minion.converge(&region, "fed-minion");
    let starts = master.ct.wait_standin_starts("kube-controller-manager", 2);
    assert_eq!(
        starts.last().unwrap(),
        &strings(&[
            "--logtostderr=true",
            "--v=0",
            "--machines=fed-minion,fed-minion-2",
            "--master=http://fed-master:8080",
        ])
    );
    let mut expected = master_starts.clone();
    *expected.get_mut("kube-controller-manager").unwrap() += 1;
    assert_eq!(master.starts(), expected);
    assert_eq!(minion.starts(), minion_starts);
    master.assert_units(MASTER_UNITS, "enabled", "active");
    let hosts = std::fs::read_to_string(minion.ct.path("/etc/hosts")).unwrap();
    assert!(hosts.contains("fed-minion-2"), "{hosts}");
}

/// The files a master's run writes, as the host sees them.
fn master_files(node: &Node) -> BTreeMap<&'static str, String> {
    [
        "/etc/etcd/etcd.conf",
        "/etc/kubernetes/config",
        "/etc/kubernetes/apiserver",
        "/etc/kubernetes/controller-manager",
        "/etc/hosts",
        "/etc/systemd/system/kubelet.service",
    ]
    .into_iter()
    .map(|p| {
        (
            p,
            std::fs::read_to_string(node.ct.path(p)).unwrap_or_default(),
        )
    })
    .collect()
}

#[test]
fn a_master_killed_after_any_step_of_its_first_run_converges_on_the_next() {
    if !berth_e2e::nspawn::have_root(
        "a_master_killed_after_any_step_of_its_first_run_converges_on_the_next",
    ) {
        return;
    }
    let region = seed_region();
    let reference = seed_node();
    let log = reference.converge(&region, "fed-master");
    // Every host-changing step (each file, the reload, each unit operation) logs "step N: ...".
    let steps = log.lines().filter(|l| l.contains("debug: step ")).count();
    assert!(
        steps >= 15,
        "expected the master's files, reload and unit operations:\n{log}"
    );
    let files = master_files(&reference);
    drop(reference);

    // BERTH_CRASH_STEPS=N tries only the first N steps (a quick local run); CI tries them all.
    let limit = std::env::var("BERTH_CRASH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    for n in 1..=steps.min(limit) {
        let t0 = Instant::now();
        let node = seed_node();
        let t_boot = t0.elapsed();
        let crashed = node.run(
            &region,
            "fed-master",
            &[("BERTH_CRASH_AT", &n.to_string()), ("BERTH_LOG", "debug")],
        );
        let crash_log = String::from_utf8_lossy(&crashed.stderr);
        assert!(
            !crashed.status.success(),
            "step {n}: the run did not abort:\n{crash_log}"
        );
        assert!(
            crash_log.contains(&format!("BERTH_CRASH_AT={n}")),
            "step {n}:\n{crash_log}"
        );
        let t_crash = t0.elapsed();

        node.converge(&region, "fed-master");
        assert_eq!(
            master_files(&node),
            files,
            "files after a crash at step {n}"
        );
        node.assert_units(MASTER_UNITS, "enabled", "active");
        node.assert_units(MINION_UNITS, "disabled", "inactive");
        for (daemon, args) in master_args() {
            assert_eq!(
                node.last_args(daemon),
                args,
                "{daemon} after a crash at step {n}"
            );
        }
        let show = node
            .ct
            .systemctl(&["show", "-p", "Requires", "kubelet.service"]);
        assert!(!show.contains("docker.socket"), "step {n}: {show}");

        // Converged means converged: one more run restarts nothing.
        let starts = node.starts();
        node.converge(&region, "fed-master");
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(
            node.starts(),
            starts,
            "step {n}: a run after convergence restarted something"
        );
        let t_checked = t0.elapsed();
        drop(node);
        eprintln!(
            "crash at step {n}: booted {t_boot:?}, crashed run done {t_crash:?}, \
             converged and checked {t_checked:?}, torn down {:?}",
            t0.elapsed()
        );
    }
}

#[test]
fn the_shipped_unit_runs_the_agent_as_a_notify_daemon() {
    if !berth_e2e::nspawn::have_root("the_shipped_unit_runs_the_agent_as_a_notify_daemon") {
        return;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut ct = Container::new();
    ct.install_fedora21(Path::new(STANDIN));
    // What berth-image puts in the image: the agent, its unit and its preset.
    std::fs::copy(
        berth_e2e::agent::bin("berth-agent"),
        ct.path("/usr/bin/berth-agent"),
    )
    .unwrap();
    std::fs::copy(
        workspace.join("configs/systemd/berth-agent.service"),
        ct.path("/usr/lib/systemd/system/berth-agent.service"),
    )
    .unwrap();
    ct.write(
        "/usr/lib/systemd/system-preset/50-berth.preset",
        &std::fs::read_to_string(workspace.join("configs/systemd/50-berth.preset")).unwrap(),
    );
    // This container has no rpm-ostree, and its IMDS and EC2 API are the sim on its loopback.
    ct.write("/etc/berth/config.yaml", "upgrade: false\n");
    ct.write("/etc/systemd/system/berth-agent.service.d/endpoints.conf",
        &format!(
            "[Service]\nExecStart=\nExecStart=/usr/bin/berth-agent run --imds-endpoint http://{}/ --ec2-endpoint http://{}/\n",
            SimInContainer::IMDS,
            SimInContainer::EC2
        ),
    );
    ct.boot();
    let _sim = SimInContainer::start(&ct);

    let verify = ct.exec(&["systemd-analyze", "verify", "berth-agent.service"]);
    assert!(
        verify.status.success(),
        "systemd-analyze verify:\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    ct.systemctl(&["preset", "berth-agent.service"]);
    assert_eq!(
        ct.systemctl(&["is-enabled", "berth-agent.service"]),
        "enabled"
    );
    let wants = ct.systemctl(&["show", "-p", "Wants", "-p", "After", "berth-agent.service"]);
    assert!(wants.contains("network-online.target"), "{wants}");
    assert!(wants.contains("dbus.service"), "{wants}");

    // `systemctl start` returns when the agent sends READY=1: after its first convergence.
    let started = Instant::now();
    let out = ct.exec(&["systemctl", "start", "berth-agent.service"]);
    assert!(
        out.status.success(),
        "start failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        ct.systemctl(&["status", "--no-pager", "-n", "40", "berth-agent.service"])
    );
    eprintln!(
        "berth-agent.service started (READY=1) in {:?}",
        started.elapsed()
    );
    assert_eq!(
        ct.systemctl(&["is-active", "berth-agent.service"]),
        "active"
    );
    let status = ct.systemctl(&["show", "-p", "StatusText", "berth-agent.service"]);
    assert!(
        status.starts_with("StatusText=converged: 2 nodes"),
        "{status}"
    );
    let shown = ct.systemctl(&["status", "--no-pager", "berth-agent.service"]);
    assert!(shown.contains("Status: \"converged: 2 nodes"), "{shown}");
    for unit in [
        "etcd.service",
        "kube-apiserver.service",
        "kube-controller-manager.service",
        "kube-scheduler.service",
    ] {
        assert_eq!(ct.systemctl(&["is-active", unit]), "active", "{unit}");
    }
    assert_eq!(
        ct.wait_standin_starts("kube-controller-manager", 1)[0],
        [
            "--logtostderr=true",
            "--v=0",
            "--machines=fed-minion",
            "--master=http://fed-master:8080"
        ]
    );

    // SIGTERM from `systemctl stop`: STOPPING=1 and a clean exit, not a failure.
    let out = ct.exec(&["systemctl", "stop", "berth-agent.service"]);
    assert!(out.status.success());
    assert_eq!(
        ct.systemctl(&["is-active", "berth-agent.service"]),
        "inactive"
    );
    assert_eq!(
        ct.systemctl(&["show", "-p", "Result", "berth-agent.service"]),
        "Result=success"
    );
}

/// The harness itself: a command in the container that gets stopped (as systemd-shutdown stops
/// every process before signalling them) does not leave `Container::exec` waiting forever on a
/// stopped nsenter.
#[test]
fn exec_survives_a_command_that_is_stopped() {
    if !berth_e2e::nspawn::have_root("exec_survives_a_command_that_is_stopped") {
        return;
    }
    let mut ct = Container::new();
    ct.boot();
    let out = ct.exec(&["sh", "-c", "kill -STOP $$; echo resumed"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "resumed\n", "{out:?}");
}
