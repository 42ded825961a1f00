//! A systemd client over D-Bus: what `systemctl daemon-reload`, `enable`, `disable`, `start`,
//! `stop`, `restart`, `is-active` and `is-enabled` do, without forking `systemctl`.
//!
//! Every unit action waits for its job: the call to `StartUnit` (and friends) only *queues* a
//! job, and the job's result arrives later in the manager's `JobRemoved` signal. A result other
//! than `done` is an error that names the unit, the result, and where to look.
//!
//! Not here: deciding which units to touch (the planner), or idempotency across runs (the
//! [`DbusHost`](super::dbus::DbusHost), which asks [`Systemd::unit_file_state`] first).

use std::time::Duration;

use futures_util::StreamExt;
use zbus::{proxy, Connection, OwnedObjectPath};

/// How long one job (start, stop, restart) may take before the agent gives up waiting.
///
/// systemd bounds a job by itself: `DefaultTimeoutStopSec` and `DefaultTimeoutStartSec` are 90 s
/// each, so a restart that hits both ends after about 180 s with result `timeout`, which is the
/// error a user should see. This deadline sits above that so systemd's own verdict wins; it only
/// fires when systemd stops answering altogether.
pub(crate) const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(240);

/// How long a manager call that queues nothing (Reload, EnableUnitFiles, GetUnitFileState) may
/// take. A daemon-reload of a few hundred units takes well under a second; 90 s is the timeout
/// `systemctl` itself uses for its bus calls (`DEFAULT_TIMEOUT_USEC` in systemd).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(90);

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
}

/// A job-queueing unit action, as `systemctl` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Start,
    Stop,
    Restart,
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobKind::Start => "start",
            JobKind::Stop => "stop",
            JobKind::Restart => "restart",
        })
    }
}

/// What went wrong talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot connect to the systemd bus at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: zbus::Error,
    },
    #[error("systemd {method}{}: {source}", unit_suffix(.unit))]
    Call {
        method: &'static str,
        unit: Option<String>,
        #[source]
        source: zbus::Error,
    },
    #[error("systemd {method}{} did not answer within {after:?}", unit_suffix(.unit))]
    CallTimeout {
        method: &'static str,
        unit: Option<String>,
        after: Duration,
    },
    #[error(
        "{kind} {unit} failed: its job finished with result `{result}`; \
         see `journalctl -u {unit}` and `systemctl status {unit}`"
    )]
    JobFailed {
        unit: String,
        kind: JobKind,
        result: String,
    },
    #[error(
        "{kind} {unit}: its job {job} did not finish within {after:?}; \
         see `systemctl list-jobs` and `journalctl -u {unit}`"
    )]
    JobTimeout {
        unit: String,
        kind: JobKind,
        job: String,
        after: Duration,
    },
    #[error("{kind} {unit}: the connection to systemd closed before its job {job} finished")]
    Disconnected {
        unit: String,
        kind: JobKind,
        job: String,
    },
}

fn unit_suffix(unit: &Option<String>) -> String {
    match unit {
        Some(u) => format!(" ({u})"),
        None => String::new(),
    }
}

/// A connection to one systemd manager.
pub struct Systemd {
    conn: Connection,
    manager: ManagerProxy<'static>,
    job_timeout: Duration,
}

impl Systemd {
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS`, or `/run/dbus/system_bus_socket`).
    pub async fn system() -> Result<Self, SystemdError> {
        let conn = Connection::system()
            .await
            .map_err(|source| SystemdError::Connect {
                address: "system bus".to_string(),
                source,
            })?;
        Self::on(conn).await
    }

    /// A bus at `address` (`unix:path=...`), e.g. a test container's system bus reached from the
    /// host through a bind-mounted `/run/dbus`.
    pub async fn connect(address: &str) -> Result<Self, SystemdError> {
        let conn = connect_bus(address)
            .await
            .map_err(|source| SystemdError::Connect {
                address: address.to_string(),
                source,
            })?;
        Self::on(conn).await
    }

    /// A client on an existing bus connection.
    pub async fn on(conn: Connection) -> Result<Self, SystemdError> {
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(|source| SystemdError::Call {
                method: "connect to the manager",
                unit: None,
                source,
            })?;
        Ok(Systemd {
            conn,
            manager,
            job_timeout: DEFAULT_JOB_TIMEOUT,
        })
    }

    /// Replace [`DEFAULT_JOB_TIMEOUT`] (tests use a short one).
    pub fn with_job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Ask systemd to send job signals to this connection. systemd only emits `JobRemoved` to
    /// subscribed clients, so this comes before any unit action.
    pub async fn subscribe(&self) -> Result<(), SystemdError> {
        match bounded("Subscribe", None, self.manager.subscribe()).await {
            // Subscribing twice is harmless: the subscription is what we wanted.
            Err(SystemdError::Call {
                source: zbus::Error::MethodError(name, _, _),
                ..
            }) if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => Ok(()),
            other => other,
        }
    }

    /// `systemctl daemon-reload`: systemd re-reads every unit file. Returns once the reload is
    /// complete (systemd replies only then).
    pub async fn reload(&self) -> Result<(), SystemdError> {
        bounded("Reload", None, self.manager.reload()).await?;
        // Subscriptions survive a reload in systemd's serialized state; subscribing again is
        // cheap and keeps the JobRemoved signals coming should a manager version not keep them.
        self.subscribe().await
    }

    /// `systemctl enable --no-reload UNITS`. Returns whether any symlink was created; the caller
    /// reloads when it was.
    pub async fn enable(&self, units: &[&str]) -> Result<bool, SystemdError> {
        let (_, changes) = bounded(
            "EnableUnitFiles",
            Some(units.join(" ")),
            self.manager.enable_unit_files(units, false, false),
        )
        .await?;
        for (kind, file, dest) in &changes {
            log::info!("enable: {kind} {file} -> {dest}");
        }
        Ok(!changes.is_empty())
    }

    /// `systemctl disable --no-reload UNITS`. Returns whether any symlink was removed.
    pub async fn disable(&self, units: &[&str]) -> Result<bool, SystemdError> {
        let changes = bounded(
            "DisableUnitFiles",
            Some(units.join(" ")),
            self.manager.disable_unit_files(units, false),
        )
        .await?;
        for (kind, file, dest) in &changes {
            log::info!("disable: {kind} {file} {dest}");
        }
        Ok(!changes.is_empty())
    }

    pub async fn start(&self, unit: &str) -> Result<(), SystemdError> {
        self.job(unit, JobKind::Start).await
    }

    pub async fn stop(&self, unit: &str) -> Result<(), SystemdError> {
        self.job(unit, JobKind::Stop).await
    }

    pub async fn restart(&self, unit: &str) -> Result<(), SystemdError> {
        self.job(unit, JobKind::Restart).await
    }

    /// Queue a job in mode `replace` and wait for its `JobRemoved`.
    pub async fn job(&self, unit: &str, kind: JobKind) -> Result<(), SystemdError> {
        // The stream is set up (its match rule added on the bus) before the job is queued: a job
        // that finishes at once would otherwise signal before anyone listened for it.
        let mut removed =
            self.manager
                .receive_job_removed()
                .await
                .map_err(|source| SystemdError::Call {
                    method: "AddMatch JobRemoved",
                    unit: Some(unit.to_string()),
                    source,
                })?;
        let who = Some(unit.to_string());
        let job = match kind {
            JobKind::Start => {
                bounded("StartUnit", who, self.manager.start_unit(unit, "replace")).await
            }
            JobKind::Stop => {
                bounded("StopUnit", who, self.manager.stop_unit(unit, "replace")).await
            }
            JobKind::Restart => {
                bounded(
                    "RestartUnit",
                    who,
                    self.manager.restart_unit(unit, "replace"),
                )
                .await
            }
        }?;
        log::debug!("{kind} {unit}: queued job {}", job.as_str());

        let wait = async {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                if args.job.as_str() == job.as_str() {
                    return Some(args.result.clone());
                }
            }
            None
        };
        match tokio::time::timeout(self.job_timeout, wait).await {
            Err(_) => Err(SystemdError::JobTimeout {
                unit: unit.to_string(),
                kind,
                job: job.to_string(),
                after: self.job_timeout,
            }),
            Ok(None) => Err(SystemdError::Disconnected {
                unit: unit.to_string(),
                kind,
                job: job.to_string(),
            }),
            Ok(Some(result)) if result == "done" => {
                log::info!("{kind} {unit}: done");
                Ok(())
            }
            Ok(Some(result)) => Err(SystemdError::JobFailed {
                unit: unit.to_string(),
                kind,
                result,
            }),
        }
    }

    /// `systemctl is-active UNIT`: `active`, `inactive`, `failed`, `activating`, ...
    pub async fn active_state(&self, unit: &str) -> Result<String, SystemdError> {
        let path = bounded(
            "LoadUnit",
            Some(unit.to_string()),
            self.manager.load_unit(unit),
        )
        .await?;
        let proxy = UnitProxy::builder(&self.conn)
            .path(path)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|source| SystemdError::Call {
                method: "Unit proxy",
                unit: Some(unit.to_string()),
                source,
            })?;
        bounded(
            "Get ActiveState",
            Some(unit.to_string()),
            proxy.active_state(),
        )
        .await
    }

    /// `systemctl reset-failed UNIT`: forgets a failed result and the start rate limit's count,
    /// so that a start the agent decided on is not refused with `start-limit-hit`.
    pub async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        bounded(
            "ResetFailedUnit",
            Some(unit.to_string()),
            self.manager.reset_failed_unit(unit),
        )
        .await
    }

    /// `systemctl is-enabled UNIT`: `enabled`, `disabled`, `static`, `masked`, ...
    pub async fn unit_file_state(&self, unit: &str) -> Result<String, SystemdError> {
        bounded(
            "GetUnitFileState",
            Some(unit.to_string()),
            self.manager.get_unit_file_state(unit),
        )
        .await
    }
}

/// Connect to a message bus at `address` (not a peer-to-peer socket).
pub(crate) async fn connect_bus(address: &str) -> zbus::Result<Connection> {
    zbus::connection::Builder::address(address).build().await
}

async fn bounded<T>(
    method: &'static str,
    unit: Option<String>,
    call: impl std::future::Future<Output = zbus::Result<T>>,
) -> Result<T, SystemdError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Err(_) => Err(SystemdError::CallTimeout {
            method,
            unit,
            after: CALL_TIMEOUT,
        }),
        Ok(Err(source)) => Err(SystemdError::Call {
            method,
            unit,
            source,
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_job_names_the_unit_the_result_and_where_to_look() {
        let e = SystemdError::JobFailed {
            unit: "kubelet.service".into(),
            kind: JobKind::Restart,
            result: "dependency".into(),
        };
        assert_eq!(
            e.to_string(),
            "restart kubelet.service failed: its job finished with result `dependency`; \
             see `journalctl -u kubelet.service` and `systemctl status kubelet.service`"
        );
    }

    #[test]
    fn a_call_error_names_the_method_and_the_unit() {
        let e = SystemdError::CallTimeout {
            method: "EnableUnitFiles",
            unit: Some("etcd.service".into()),
            after: CALL_TIMEOUT,
        };
        assert_eq!(
            e.to_string(),
            "systemd EnableUnitFiles (etcd.service) did not answer within 90s"
        );
    }
}
