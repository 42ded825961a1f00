//! Rebooting the host into a staged deployment: logind first, systemd's `reboot.target` second.
//!
//! logind's `Reboot` is what `systemctl reboot` uses: it runs inhibitor checks and then starts
//! `reboot.target` itself. When logind is not there (a minimal image, or a bus without it), the
//! agent starts `reboot.target` in mode `replace-irreversibly` directly, as `systemctl reboot
//! --no-wall` falls back to doing, so that no later job can cancel the reboot. A logind that
//! *refuses* (access denied) is obeyed: nothing else is tried.
//!
//! A shutdown stops the bus, and may stop it (or logind) before the answer to the request reaches
//! the agent. A call that goes unanswered is therefore followed by a second look on a new
//! connection ([`Login::reboot`]); the reboot counts as requested when that look shows the host
//! going down, even though no answer confirmed it. Either way, the caller must not take further
//! host actions after `Ok` and should wait to be stopped (for a bounded time: see `main`).

use std::time::Duration;

use zbus::{fdo, proxy, Connection, OwnedObjectPath};

use super::systemd::connect_bus;

/// A logind or systemd that does not even queue the reboot within this long is not going to;
/// 25 s is the default D-Bus method call timeout that GDBus and libdbus use.
pub(crate) const REBOOT_CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// How long each part of the second look (a new connection, then one property or method call)
/// may take. A bus that answers at all answers a local call in milliseconds; 5 s allows for a
/// host busy shutting down, and keeps the whole look well under the 25 s call timeout.
pub(crate) const LOOK_AGAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait LoginManager {
    fn reboot(&self, interactive: bool) -> zbus::Result<()>;

    /// True while a shutdown logind accepted waits for its delay inhibitors (up to
    /// `InhibitDelayMaxSec`), before logind starts `reboot.target` itself.
    #[zbus(property)]
    fn preparing_for_shutdown(&self) -> zbus::Result<bool>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait RebootTarget {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// `a(usssoo)`: id, unit, type, state, job path, unit path.
    #[allow(clippy::type_complexity)]
    fn list_jobs(
        &self,
    ) -> zbus::Result<
        Vec<(
            u32,
            String,
            String,
            String,
            OwnedObjectPath,
            OwnedObjectPath,
        )>,
    >;

    #[zbus(property)]
    fn system_state(&self) -> zbus::Result<String>;
}

/// How the reboot was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootVia {
    Logind,
    RebootTarget,
}

#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    #[error("cannot connect to the bus at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: zbus::Error,
    },
    #[error(
        "logind refused the reboot: {0}; nothing else was tried (a refusal is policy, not an \
         absent service); see `journalctl -u systemd-logind` and the polkit rules for \
         org.freedesktop.login1.reboot"
    )]
    Denied(String),
    #[error(
        "reboot failed: logind's Reboot: {logind}; systemd's StartUnit(reboot.target): {systemd}; \
         see `journalctl -u systemd-logind` and `systemctl status reboot.target`"
    )]
    Failed { logind: String, systemd: String },
}

/// How a reboot call ended when it did not succeed.
#[derive(Debug)]
enum CallError {
    /// The caller may not reboot (access denied, authentication failed or needed).
    Denied(String),
    /// The service answered with another error (not there, not activatable, unknown method):
    /// nothing was queued.
    Unavailable(String),
    /// The call was sent and no answer came: the connection broke, the service left the bus
    /// without replying, or the time ran out. A host going down looks exactly like this.
    Unanswered(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Denied(e) | CallError::Unavailable(e) | CallError::Unanswered(e) => {
                f.write_str(e)
            }
        }
    }
}

/// Sorts a failed call. The bus daemon answers for a service that left without replying
/// (`NoReply`, "Message recipient disconnected from message bus without replying") and for a
/// timeout; those, and a broken connection, are unanswered calls, not refusals.
fn call_error(e: zbus::Error) -> CallError {
    let text = e.to_string();
    match e {
        zbus::Error::InputOutput(_) => CallError::Unanswered(text),
        zbus::Error::FDO(fdo) => match *fdo {
            fdo::Error::NoReply(_)
            | fdo::Error::Disconnected(_)
            | fdo::Error::Timeout(_)
            | fdo::Error::TimedOut(_) => CallError::Unanswered(text),
            fdo::Error::AccessDenied(_)
            | fdo::Error::AuthFailed(_)
            | fdo::Error::InteractiveAuthorizationRequired(_) => CallError::Denied(text),
            _ => CallError::Unavailable(text),
        },
        _ => CallError::Unavailable(text),
    }
}

/// What a second look at the host finds after a reboot call went unanswered.
enum Look {
    /// The bus refuses connections (its socket is closed or gone): it was stopped, as a shutdown
    /// stops it.
    BusGone,
    /// The host is going down: systemd's `SystemState` is "stopping", a job for `reboot.target`
    /// is queued, logind is preparing for shutdown, or systemd has left the bus (it owns
    /// `org.freedesktop.systemd1` from boot until the bus stops).
    ShuttingDown(&'static str),
    /// systemd answers (on this new connection) and no shutdown is under way: the reboot was
    /// not queued.
    Running(Connection),
    /// Nothing could be learned in time (the bus took no connection, or systemd did not
    /// answer): the reboot is not taken as under way.
    Unknown(String),
}

impl std::fmt::Display for Look {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Look::BusGone => f.write_str("the bus refuses connections"),
            Look::ShuttingDown(why) => f.write_str(why),
            Look::Running(_) => f.write_str("systemd is running, with no shutdown under way"),
            Look::Unknown(why) => f.write_str(why),
        }
    }
}

/// Reboots the host over one bus connection (the system bus, or a test container's).
pub struct Login {
    conn: Connection,
    /// Where `conn` leads (`None`: the system bus), to look again after the connection broke.
    address: Option<String>,
    call_timeout: Duration,
    look_timeout: Duration,
}

impl Login {
    pub async fn connect(address: &str) -> Result<Self, RebootError> {
        let conn = connect_bus(address)
            .await
            .map_err(|source| RebootError::Connect {
                address: address.into(),
                source,
            })?;
        Ok(Login::on(conn, Some(address.into())))
    }

    /// Over an open connection to the bus at `address` (`None`: the system bus).
    pub fn on(conn: Connection, address: Option<String>) -> Self {
        Login {
            conn,
            address,
            call_timeout: REBOOT_CALL_TIMEOUT,
            look_timeout: LOOK_AGAIN_TIMEOUT,
        }
    }

    /// The reboot call's timeout (default [`REBOOT_CALL_TIMEOUT`], 25 s) and each step of the
    /// second look's (default 5 s); tests shorten them.
    pub fn with_timeouts(mut self, call: Duration, look: Duration) -> Self {
        self.call_timeout = call;
        self.look_timeout = look;
        self
    }

    /// Request a reboot: logind's `Reboot(false)` (not interactive: no polkit prompt, the agent
    /// runs as root), falling back to `StartUnit("reboot.target", "replace-irreversibly")` when
    /// logind is not available. A refusal by logind is returned as [`RebootError::Denied`].
    ///
    /// A call that goes unanswered (the connection broke, the service left the bus without
    /// replying, or the call timed out) is not a failure by itself: the bus and logind are
    /// stopped by the very reboot being asked for. The agent then looks again on a new
    /// connection ([`Look`]): a bus that refuses connections, or a host shutting down, means the
    /// reboot is under way and `Ok` is returned; a systemd that runs with no shutdown under way
    /// gets the fallback call, on the new connection; a look that learns nothing is an error.
    pub async fn reboot(&self) -> Result<RebootVia, RebootError> {
        let logind = match self.logind_reboot(&self.conn).await {
            Ok(()) => {
                log::info!("reboot requested through logind");
                return Ok(RebootVia::Logind);
            }
            Err(CallError::Denied(e)) => return Err(RebootError::Denied(e)),
            Err(e) => e,
        };
        let conn = match logind {
            CallError::Unanswered(_) => match self.look_again().await {
                Look::Running(fresh) => fresh,
                Look::Unknown(why) => {
                    return Err(RebootError::Failed {
                        logind: logind.to_string(),
                        systemd: format!("not asked: {why}"),
                    })
                }
                gone => {
                    log::info!(
                        "logind's Reboot went unanswered ({logind}) and {gone}: the reboot is \
                         under way"
                    );
                    return Ok(RebootVia::Logind);
                }
            },
            _ => self.conn.clone(),
        };
        log::warn!("logind could not reboot ({logind}); starting reboot.target through systemd");
        let systemd = match self.systemd_reboot(&conn).await {
            Ok(()) => {
                log::info!("reboot requested through systemd's reboot.target");
                return Ok(RebootVia::RebootTarget);
            }
            Err(e) => e,
        };
        if let CallError::Unanswered(_) = systemd {
            match self.look_again().await {
                Look::Running(_) | Look::Unknown(_) => {}
                gone => {
                    log::info!(
                        "StartUnit(reboot.target) went unanswered ({systemd}) and {gone}: the \
                         reboot is under way"
                    );
                    return Ok(RebootVia::RebootTarget);
                }
            }
        }
        Err(RebootError::Failed {
            logind: logind.to_string(),
            systemd: systemd.to_string(),
        })
    }

    /// A new connection to the same bus, and what systemd and logind say on it.
    async fn look_again(&self) -> Look {
        let t = self.look_timeout;
        let connect = async {
            match &self.address {
                Some(a) => connect_bus(a).await,
                None => Connection::system().await,
            }
        };
        let conn = match tokio::time::timeout(t, connect).await {
            Ok(Ok(c)) => c,
            // Connecting fails at once when the socket is closed or gone: the daemon stopped.
            // (A bus address carrying `guid=` also fails here against a restarted daemon; only
            // tests name buses that way.)
            Ok(Err(e)) if refused(&e) => {
                log::debug!("the bus refuses connections: {e}");
                return Look::BusGone;
            }
            Ok(Err(e)) => return Look::Unknown(format!("the bus could not be reached: {e}")),
            Err(_) => return Look::Unknown(format!("the bus took no connection within {t:?}")),
        };
        let systemd = match RebootTargetProxy::new(&conn).await {
            Ok(p) => p,
            Err(e) => return Look::Unknown(format!("systemd's manager: {e}")),
        };
        match tokio::time::timeout(t, systemd.system_state()).await {
            Ok(Ok(state)) if state == "stopping" => {
                return Look::ShuttingDown("systemd is stopping");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) if left_the_bus(&e) => {
                return Look::ShuttingDown("systemd has left the bus");
            }
            Ok(Err(e)) => return Look::Unknown(format!("systemd's SystemState: {e}")),
            Err(_) => return Look::Unknown(format!("systemd did not answer within {t:?}")),
        }
        match tokio::time::timeout(t, systemd.list_jobs()).await {
            Ok(Ok(jobs)) if jobs.iter().any(|job| job.1 == "reboot.target") => {
                return Look::ShuttingDown("a reboot.target job is queued");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Look::Unknown(format!("systemd's ListJobs: {e}")),
            Err(_) => return Look::Unknown(format!("systemd did not answer within {t:?}")),
        }
        // logind accepts a reboot at once and starts reboot.target only when its delay
        // inhibitors are released (or after InhibitDelayMaxSec): that wait is not a job yet.
        if let Ok(logind) = LoginManagerProxy::new(&conn).await {
            if let Ok(Ok(true)) = tokio::time::timeout(t, logind.preparing_for_shutdown()).await {
                return Look::ShuttingDown("logind is preparing for shutdown");
            }
        }
        Look::Running(conn)
    }

    async fn logind_reboot(&self, conn: &Connection) -> Result<(), CallError> {
        let proxy = LoginManagerProxy::new(conn).await.map_err(call_error)?;
        self.answered(proxy.reboot(false)).await
    }

    async fn systemd_reboot(&self, conn: &Connection) -> Result<(), CallError> {
        let proxy = RebootTargetProxy::new(conn).await.map_err(call_error)?;
        self.answered(proxy.start_unit("reboot.target", "replace-irreversibly"))
            .await
            .map(|_job| ())
    }

    /// `call` under the reboot call's timeout; no answer in time is an unanswered call.
    async fn answered<T>(
        &self,
        call: impl std::future::Future<Output = zbus::Result<T>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Err(_) => Err(CallError::Unanswered(format!(
                "no answer within {:?}",
                self.call_timeout
            ))),
            Ok(r) => r.map_err(call_error),
        }
    }
}

/// Whether a failed connection attempt says the bus is gone: its socket refuses connections or
/// no longer exists, or it closed the connection during the handshake.
fn refused(e: &zbus::Error) -> bool {
    use std::io::ErrorKind::{
        BrokenPipe, ConnectionRefused, ConnectionReset, NotFound, UnexpectedEof,
    };
    let io = match e {
        zbus::Error::Connection(io, _) | zbus::Error::InputOutput(io) => io,
        _ => return false,
    };
    matches!(
        io.kind(),
        ConnectionRefused | NotFound | ConnectionReset | BrokenPipe | UnexpectedEof
    )
}

/// Whether `e` says the service has no owner on the bus (it left, or never came).
fn left_the_bus(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::FDO(f) if matches!(**f, fdo::Error::ServiceUnknown(_) | fdo::Error::NameHasNoOwner(_)))
}
