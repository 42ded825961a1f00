//! The agent's systemd and logind clients against a real systemd: PID 1 of a booted Debian
//! container carrying Fedora 21's units (see `tests/src/nspawn.rs`).

use std::time::{Duration, Instant};

use berth_agent::host::dbus::{DbusAddresses, DbusHost};
use berth_agent::host::login::Login;
use berth_agent::host::systemd::{JobKind, Systemd, SystemdError};
use berth_agent::host::{Host, UnitOp};
use berth_e2e::nspawn::Container;
use futures_util::StreamExt;

const STANDIN: &str = env!("CARGO_BIN_EXE_berth-standin");

fn fedora21() -> Container {
    let mut ct = Container::new();
    ct.install_fedora21(std::path::Path::new(STANDIN));
    ct.boot();
    ct
}

fn write(ct: &Container, inside: &str, text: &str) {
    let path = ct.path(inside);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
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
    write(&ct, "/etc/kubernetes/config", "KUBE_ETCD_SERVERS=\"--etcd_servers=http://fed-master:4001\"\nKUBE_LOGTOSTDERR=\"--logtostderr=true\"\nKUBE_LOG_LEVEL=\"--v=0\"\nKUBE_ALLOW_PRIV=\"--allow_privileged=false\"\n");
    write(
        &ct,
        "/etc/kubernetes/apiserver",
        "KUBE_MASTER=\"--master=http://fed-master:8080\"\n",
    );
    write(
        &ct,
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
    write(
        &ct,
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
    write(
        &ct,
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
    write(&ct, "/etc/systemd/system/kubelet.service", &fixed);
    host.reload().await.unwrap();
    assert_eq!(reloads.take().await, 1);
    let show = ct.systemctl(&["show", "-p", "Requires", "-p", "After", "kubelet.service"]);
    assert!(show.contains("Requires=docker.service"), "{show}");
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
    write(
        &ct,
        "/etc/systemd/system/docker.service.d/fail.conf",
        "[Service]\nEnvironment=BERTH_STANDIN_FAIL=1\n",
    );
    host.reload().await.unwrap();
    let err = host
        .unit_op("docker.service", UnitOp::Restart)
        .await
        .unwrap_err();
    assert!(err.message.contains("docker.service"), "{err}");
    assert!(
        err.message.contains("journalctl -u docker.service"),
        "{err}"
    );
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
