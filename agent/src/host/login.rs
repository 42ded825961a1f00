//! Rebooting the host into a staged deployment: logind first, systemd's `reboot.target` second.
//!
//! logind's `Reboot` is what `systemctl reboot` uses: it runs inhibitor checks and then starts
//! `reboot.target` itself. When logind is not there (a minimal image, or a bus without it), the
//! agent starts `reboot.target` in mode `replace-irreversibly` directly, as `systemctl reboot
//! --no-wall` falls back to doing, so that no later job can cancel the reboot.
//!
//! Either call returns as soon as the reboot is *queued*; the caller must not take further host
//! actions after it and should simply wait to be stopped.

use std::time::Duration;

use zbus::{proxy, Connection, OwnedObjectPath};

use super::systemd::connect_bus;

/// A logind or systemd that does not even queue the reboot within this long is not going to;
/// 25 s is the default D-Bus method call timeout that GDBus and libdbus use.
pub(crate) const REBOOT_CALL_TIMEOUT: Duration = Duration::from_secs(25);

#[proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait LoginManager {
    fn reboot(&self, interactive: bool) -> zbus::Result<()>;
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
        "reboot failed: logind's Reboot: {logind}; systemd's StartUnit(reboot.target): {systemd}; \
         see `journalctl -u systemd-logind` and `systemctl status reboot.target`"
    )]
    Failed { logind: String, systemd: String },
}

/// Reboots the host over one bus connection (the system bus, or a test container's).
pub struct Login {
    conn: Connection,
    /// Where `conn` leads (`None`: the system bus), to look again after the connection broke.
    address: Option<String>,
}

/// How a reboot call ended when it did not succeed.
#[derive(Debug)]
enum CallError {
    /// The service answered with an error (not there, refused, inhibited): nothing was queued.
    Refused(String),
    /// The call was sent and no answer came: the connection broke or the time ran out. A host
    /// going down looks exactly like this: the bus is among what a reboot stops, and it may be
    /// gone before the answer is forwarded.
    Unanswered(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused(e) | CallError::Unanswered(e) => f.write_str(e),
        }
    }
}

fn call_error(e: zbus::Error) -> CallError {
    match e {
        zbus::Error::InputOutput(_) => CallError::Unanswered(e.to_string()),
        other => CallError::Refused(other.to_string()),
    }
}

/// What a second look at the host finds after a reboot call went unanswered.
enum Look {
    /// The bus cannot be reached again: it was stopped, as a shutdown stops it.
    BusGone,
    /// systemd answers and is shutting down (`SystemState` "stopping", or a job for
    /// `reboot.target` is queued).
    ShuttingDown,
    /// systemd answers (on this new connection) and no shutdown is under way: the reboot was
    /// not queued.
    Running(Connection),
}

impl std::fmt::Display for Look {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Look::BusGone => "the bus is gone",
            Look::ShuttingDown => "systemd is shutting down",
            Look::Running(_) => "systemd is running",
        })
    }
}

impl Login {
    pub async fn connect(address: &str) -> Result<Self, RebootError> {
        let conn = connect_bus(address)
            .await
            .map_err(|source| RebootError::Connect {
                address: address.into(),
                source,
            })?;
        Ok(Login {
            conn,
            address: Some(address.into()),
        })
    }

    /// Over an open connection to the bus at `address` (`None`: the system bus).
    pub fn on(conn: Connection, address: Option<String>) -> Self {
        Login { conn, address }
    }

    /// Request a reboot: logind's `Reboot(false)` (not interactive: no polkit prompt, the agent
    /// runs as root), falling back to `StartUnit("reboot.target", "replace-irreversibly")`.
    ///
    /// A call that goes unanswered (the connection broke, or 25 s passed) is not taken as a
    /// failure by itself: the bus is stopped by the very reboot being asked for, and may go before
    /// the answer reaches the agent. The agent then looks again on a new connection: a bus that
    /// is gone, or a systemd that is shutting down, means the reboot is under way.
    pub async fn reboot(&self) -> Result<RebootVia, RebootError> {
        let logind = match self.logind_reboot(&self.conn).await {
            Ok(()) => {
                log::info!("reboot requested through logind");
                return Ok(RebootVia::Logind);
            }
            Err(e) => e,
        };
        let conn = match logind {
            CallError::Refused(_) => self.conn.clone(),
            CallError::Unanswered(_) => match self.look_again().await {
                Look::Running(fresh) => fresh,
                gone => {
                    log::info!(
                        "logind's Reboot went unanswered ({logind}) and {gone}: the reboot is \
                         under way"
                    );
                    return Ok(RebootVia::Logind);
                }
            },
        };
        log::warn!("logind could not reboot ({logind}); starting reboot.target through systemd");
        match self.systemd_reboot(&conn).await {
            Ok(()) => {
                log::info!("reboot requested through systemd's reboot.target");
                Ok(RebootVia::RebootTarget)
            }
            Err(CallError::Unanswered(systemd)) => match self.look_again().await {
                Look::Running(_) => Err(RebootError::Failed {
                    logind: logind.to_string(),
                    systemd,
                }),
                gone => {
                    log::info!(
                        "StartUnit(reboot.target) went unanswered ({systemd}) and {gone}: the \
                         reboot is under way"
                    );
                    Ok(RebootVia::RebootTarget)
                }
            },
            Err(CallError::Refused(systemd)) => Err(RebootError::Failed {
                logind: logind.to_string(),
                systemd,
            }),
        }
    }

    /// A new connection to the same bus, and what systemd says on it.
    async fn look_again(&self) -> Look {
        let connect = async {
            match &self.address {
                Some(a) => connect_bus(a).await,
                None => Connection::system().await,
            }
        };
        let conn = match tokio::time::timeout(LOOK_AGAIN_TIMEOUT, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                log::debug!("the bus cannot be reached again: {e}");
                return Look::BusGone;
            }
            Err(_) => {
                log::debug!("the bus took no new connection within {LOOK_AGAIN_TIMEOUT:?}");
                return Look::BusGone;
            }
        };
        match tokio::time::timeout(LOOK_AGAIN_TIMEOUT, shutting_down(&conn)).await {
            Ok(Ok(true)) => Look::ShuttingDown,
            Ok(Ok(false)) => Look::Running(conn),
            // systemd not answering on a bus that still takes connections shows no shutdown:
            // the fallback is tried, and reports its own error.
            Ok(Err(e)) => {
                log::debug!("systemd's state could not be read: {e}");
                Look::Running(conn)
            }
            Err(_) => {
                log::debug!("systemd's state was not read within {LOOK_AGAIN_TIMEOUT:?}");
                Look::Running(conn)
            }
        }
    }

    async fn logind_reboot(&self, conn: &Connection) -> Result<(), CallError> {
        let proxy = LoginManagerProxy::new(conn).await.map_err(call_error)?;
        match tokio::time::timeout(REBOOT_CALL_TIMEOUT, proxy.reboot(false)).await {
            Err(_) => Err(CallError::Unanswered(format!(
                "no answer within {REBOOT_CALL_TIMEOUT:?}"
            ))),
            Ok(r) => r.map_err(call_error),
        }
    }

    async fn systemd_reboot(&self, conn: &Connection) -> Result<(), CallError> {
        let proxy = RebootTargetProxy::new(conn).await.map_err(call_error)?;
        let call = proxy.start_unit("reboot.target", "replace-irreversibly");
        match tokio::time::timeout(REBOOT_CALL_TIMEOUT, call).await {
            Err(_) => Err(CallError::Unanswered(format!(
                "no answer within {REBOOT_CALL_TIMEOUT:?}"
            ))),
            Ok(r) => r.map(|_| ()).map_err(call_error),
        }
    }
}

/// How long the second look (a new connection, then systemd's state) may take, each.
const LOOK_AGAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether systemd is shutting down: `SystemState` is "stopping" (systemd's
/// `org.freedesktop.systemd1(5)`: "the manager is shutting down"), or a job for `reboot.target`
/// is queued (it is, from the moment logind or StartUnit accepted the request).
async fn shutting_down(conn: &Connection) -> zbus::Result<bool> {
    let manager = RebootTargetProxy::new(conn).await?;
    if manager.system_state().await? == "stopping" {
        return Ok(true);
    }
    let jobs = manager.list_jobs().await?;
    Ok(jobs.iter().any(|job| job.1 == "reboot.target"))
}
