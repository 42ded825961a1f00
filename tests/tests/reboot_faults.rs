//! The agent's reboot request when the answer never comes, on a real `dbus-daemon` with logind's
//! and systemd's `Manager` interfaces served as scripted here (their names, paths and signatures
//! are logind's and systemd's). A real shutdown stops the bus and logind, and may stop them
//! before logind's answer is forwarded: the agent must then see that the host is going down
//! instead of failing the run, and must still fall back, or fail, when it is not. The real logind
//! and systemd are in `systemd_nspawn.rs` and `rpmostree.rs`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_agent::host::login::{Login, RebootError, RebootVia};
use berth_e2e::dbus::PrivateBus;
use tokio::sync::mpsc;
use zbus::fdo;
use zbus::interface;
use zbus::OwnedObjectPath;

/// What logind does with `Reboot`.
#[derive(Clone, Copy)]
enum LogindScript {
    /// Tell the test, then never answer (the test stops the bus, or lets the call time out).
    Vanish,
    /// Refuse, as logind does when the caller may not reboot.
    Refuse,
}

struct Logind {
    script: LogindScript,
    called: mpsc::UnboundedSender<()>,
}

#[interface(name = "org.freedesktop.login1.Manager")]
impl Logind {
    async fn reboot(&self, _interactive: bool) -> fdo::Result<()> {
        let _ = self.called.send(());
        match self.script {
            LogindScript::Vanish => std::future::pending().await,
            LogindScript::Refuse => Err(fdo::Error::AccessDenied(
                "Access denied (scripted by the test)".into(),
            )),
        }
    }

    #[zbus(property)]
    async fn preparing_for_shutdown(&self) -> bool {
        false
    }
}

#[derive(Clone, Default)]
struct ManagerState {
    state: Arc<Mutex<String>>,
    jobs: Arc<Mutex<Vec<String>>>,
    started: Arc<Mutex<Vec<(String, String)>>>,
}

struct Manager(ManagerState);

#[interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    async fn start_unit(&self, name: String, mode: String) -> fdo::Result<OwnedObjectPath> {
        self.0.started.lock().unwrap().push((name.clone(), mode));
        self.0.jobs.lock().unwrap().push(name);
        *self.0.state.lock().unwrap() = "stopping".into();
        Ok(OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap())
    }

    #[allow(clippy::type_complexity)]
    async fn list_jobs(
        &self,
    ) -> Vec<(
        u32,
        String,
        String,
        String,
        OwnedObjectPath,
        OwnedObjectPath,
    )> {
        let path = OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap();
        let unit =
            OwnedObjectPath::try_from("/org/freedesktop/systemd1/unit/reboot_2etarget").unwrap();
        self.0
            .jobs
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let (p, up) = (path.clone(), unit.clone());
                (
                    i as u32 + 1,
                    u.clone(),
                    "start".into(),
                    "waiting".into(),
                    p,
                    up,
                )
            })
            .collect()
    }

    #[zbus(property)]
    async fn system_state(&self) -> String {
        self.0.state.lock().unwrap().clone()
    }
}

/// logind (unless `None`) and systemd, each on a connection of its own, as on a host.
struct Services {
    logind: Option<zbus::Connection>,
    _systemd: zbus::Connection,
    logind_called: mpsc::UnboundedReceiver<()>,
    systemd: ManagerState,
}

async fn serve(bus: &PrivateBus, logind: Option<LogindScript>, state: &str) -> Services {
    let (tx, rx) = mpsc::unbounded_channel();
    let systemd = ManagerState::default();
    *systemd.state.lock().unwrap() = state.into();
    let logind = match logind {
        None => None,
        Some(script) => Some(
            zbus::connection::Builder::address(bus.address())
                .name("org.freedesktop.login1")
                .serve_at("/org/freedesktop/login1", Logind { script, called: tx })
                .build()
                .await
                .unwrap(),
        ),
    };
    let systemd_conn = zbus::connection::Builder::address(bus.address())
        .name("org.freedesktop.systemd1")
        .serve_at("/org/freedesktop/systemd1", Manager(systemd.clone()))
        .build()
        .await
        .unwrap();
    Services {
        logind,
        _systemd: systemd_conn,
        logind_called: rx,
        systemd,
    }
}

impl Services {
    async fn wait_logind_called(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), self.logind_called.recv())
            .await
            .expect("logind's Reboot is called")
            .unwrap();
    }

    fn started(&self) -> Vec<(String, String)> {
        self.systemd.started.lock().unwrap().clone()
    }
}

fn reboot_target() -> Vec<(String, String)> {
    vec![(
        "reboot.target".to_string(),
        "replace-irreversibly".to_string(),
    )]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_stopped_before_logind_answers_is_a_reboot_under_way() {
    let mut bus = PrivateBus::start();
    let mut services = serve(&bus, Some(LogindScript::Vanish), "running").await;
    let login = Login::connect(bus.address()).await.unwrap();
    let request = tokio::spawn(async move { login.reboot().await });
    services.wait_logind_called().await;
    // The shutdown logind started stops the bus before its answer is forwarded.
    bus.kill();
    let via = tokio::time::timeout(Duration::from_secs(15), request)
        .await
        .expect("the request returns without waiting out its 25 s call timeout")
        .unwrap()
        .expect("an unanswered Reboot on a bus that is gone is a reboot under way");
    assert_eq!(via, RebootVia::Logind);
    assert!(
        services.started().is_empty(),
        "no fallback on a bus that is gone"
    );
}

/// logind asked to reboot on a host whose systemd reports `state`, then gone without an answer
/// (its connection closed: the bus answers `NoReply`, "recipient disconnected without replying",
/// in its place). Returns the request's result and the services, to ask what systemd was told.
async fn logind_leaves_unanswered(
    state: &str,
) -> (Result<RebootVia, RebootError>, Services, PrivateBus) {
    let bus = PrivateBus::start();
    let mut services = serve(&bus, Some(LogindScript::Vanish), state).await;
    let login = Login::connect(bus.address()).await.unwrap();
    let request = tokio::spawn(async move { login.reboot().await });
    services.wait_logind_called().await;
    services.logind.take().unwrap().close().await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(15), request)
        .await
        .expect("the request returns")
        .unwrap();
    (result, services, bus)
}

/// logind stopped by the shutdown it started, before it answered, while systemd is stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logind_leaving_unanswered_while_systemd_stops_is_a_reboot_under_way() {
    let (result, services, _bus) = logind_leaves_unanswered("stopping").await;
    let via = result.expect("systemd stopping means the reboot is under way");
    assert_eq!(via, RebootVia::Logind);
    assert!(
        services.started().is_empty(),
        "no fallback while systemd stops"
    );
}

/// logind gone without an answer on a host that is not going down: the fallback is asked, on a
/// new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logind_leaving_unanswered_on_a_running_host_falls_back_to_reboot_target() {
    let (result, services, _bus) = logind_leaves_unanswered("running").await;
    let via = result.expect("the fallback queues the reboot");
    assert_eq!(via, RebootVia::RebootTarget);
    assert_eq!(services.started(), reboot_target());
}

/// A Reboot that times out (1 s here, 25 s by default) while systemd already holds a
/// reboot.target job: under way, and the fallback is not sent on top of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_reboot_with_a_queued_reboot_job_is_under_way() {
    let bus = PrivateBus::start();
    let services = serve(&bus, Some(LogindScript::Vanish), "running").await;
    services
        .systemd
        .jobs
        .lock()
        .unwrap()
        .push("reboot.target".into());
    let login = Login::connect(bus.address())
        .await
        .unwrap()
        .with_timeouts(Duration::from_secs(1), Duration::from_secs(2));
    let started = Instant::now();
    let via = tokio::time::timeout(Duration::from_secs(15), login.reboot())
        .await
        .expect("the request returns")
        .expect("a queued reboot.target job means the reboot is under way");
    assert_eq!(via, RebootVia::Logind);
    assert!(services.started().is_empty(), "no second reboot job");
    eprintln!("returned after {:?}", started.elapsed());
}

/// A refusal by logind is policy: it is reported, and systemd is not asked behind its back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_logind_refuses_is_not_forced_through_systemd() {
    let bus = PrivateBus::start();
    let mut services = serve(&bus, Some(LogindScript::Refuse), "running").await;
    let login = Login::connect(bus.address()).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(15), login.reboot())
        .await
        .expect("the request returns")
        .unwrap_err();
    assert!(matches!(err, RebootError::Denied(_)), "{err:?}");
    assert!(err.to_string().contains("Access denied"), "{err}");
    assert!(
        services.logind_called.try_recv().is_ok(),
        "logind was asked"
    );
    assert!(services.started().is_empty(), "systemd was not asked");
}

/// No logind on the bus: systemd's reboot.target directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_logind_reboot_target_is_started() {
    let bus = PrivateBus::start();
    let services = serve(&bus, None, "running").await;
    let login = Login::connect(bus.address()).await.unwrap();
    let via = tokio::time::timeout(Duration::from_secs(15), login.reboot())
        .await
        .expect("the request returns")
        .expect("the fallback queues the reboot");
    assert_eq!(via, RebootVia::RebootTarget);
    assert_eq!(services.started(), reboot_target());
}
