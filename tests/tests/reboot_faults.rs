//! The agent's reboot request when the answer never comes, on a real `dbus-daemon` with logind's
//! and systemd's `Manager` interfaces served as scripted here (their names, paths and signatures
//! are logind's and systemd's). A real shutdown stops the bus, and it may stop it before logind's
//! answer is forwarded: the agent must then see that the host is going down instead of failing
//! the run. The real logind and systemd are in `systemd_nspawn.rs` and `rpmostree.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_agent::host::login::{Login, RebootVia};
use berth_e2e::dbus::PrivateBus;
use tokio::sync::mpsc;
use zbus::fdo;
use zbus::interface;
use zbus::OwnedObjectPath;

/// What logind does with `Reboot`.
#[derive(Clone, Copy)]
enum LogindScript {
    /// Tell the test, then never answer (the test stops the bus).
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
}

struct Manager {
    state: Arc<Mutex<String>>,
    started: Arc<Mutex<Vec<(String, String)>>>,
}

#[interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    async fn start_unit(&self, name: String, mode: String) -> fdo::Result<OwnedObjectPath> {
        self.started.lock().unwrap().push((name, mode));
        *self.state.lock().unwrap() = "stopping".into();
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
        Vec::new()
    }

    #[zbus(property)]
    async fn system_state(&self) -> String {
        self.state.lock().unwrap().clone()
    }
}

struct Services {
    _conn: zbus::Connection,
    logind_called: mpsc::UnboundedReceiver<()>,
    started: Arc<Mutex<Vec<(String, String)>>>,
}

async fn serve(bus: &PrivateBus, script: LogindScript) -> Services {
    let (tx, rx) = mpsc::unbounded_channel();
    let started = Arc::new(Mutex::new(Vec::new()));
    let conn = zbus::connection::Builder::address(bus.address())
        .name("org.freedesktop.login1")
        .name("org.freedesktop.systemd1")
        .serve_at("/org/freedesktop/login1", Logind { script, called: tx })
        .serve_at(
            "/org/freedesktop/systemd1",
            Manager {
                state: Arc::new(Mutex::new("running".into())),
                started: started.clone(),
            },
        )
        .build()
        .await
        .unwrap();
    Services {
        _conn: conn,
        logind_called: rx,
        started,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_stopped_before_logind_answers_is_a_reboot_under_way() {
    let mut bus = PrivateBus::start();
    let mut services = serve(&bus, LogindScript::Vanish).await;
    let login = Login::connect(bus.address()).await.unwrap();
    let request = tokio::spawn(async move { login.reboot().await });
    tokio::time::timeout(Duration::from_secs(10), services.logind_called.recv())
        .await
        .expect("logind's Reboot is called")
        .unwrap();
    // The shutdown logind started stops the bus before its answer is forwarded.
    bus.kill();
    let via = tokio::time::timeout(Duration::from_secs(15), request)
        .await
        .expect("the request returns without waiting out its 25 s call timeout")
        .unwrap()
        .expect("an unanswered Reboot on a bus that is gone is a reboot under way");
    assert_eq!(via, RebootVia::Logind);
    assert!(
        services.started.lock().unwrap().is_empty(),
        "no fallback is tried on a bus that is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reboot_falls_back_to_reboot_target() {
    let bus = PrivateBus::start();
    let mut services = serve(&bus, LogindScript::Refuse).await;
    let login = Login::connect(bus.address()).await.unwrap();
    let via = tokio::time::timeout(Duration::from_secs(15), login.reboot())
        .await
        .expect("the request returns")
        .expect("the fallback queues the reboot");
    assert_eq!(via, RebootVia::RebootTarget);
    assert!(
        services.logind_called.try_recv().is_ok(),
        "logind was asked first"
    );
    assert_eq!(
        *services.started.lock().unwrap(),
        vec![(
            "reboot.target".to_string(),
            "replace-irreversibly".to_string()
        )]
    );
}
