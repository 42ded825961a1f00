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
}

impl Login {
    pub async fn connect(address: &str) -> Result<Self, RebootError> {
        let conn = connect_bus(address)
            .await
            .map_err(|source| RebootError::Connect {
                address: address.into(),
                source,
            })?;
        Ok(Login { conn })
    }

    pub fn on(conn: Connection) -> Self {
        Login { conn }
    }

    /// Request a reboot: logind's `Reboot(false)` (not interactive: no polkit prompt, the agent
    /// runs as root), falling back to `StartUnit("reboot.target", "replace-irreversibly")`.
    pub async fn reboot(&self) -> Result<RebootVia, RebootError> {
        let logind = match self.logind_reboot().await {
            Ok(()) => {
                log::info!("reboot requested through logind");
                return Ok(RebootVia::Logind);
            }
            Err(e) => e,
        };
        log::warn!("logind could not reboot ({logind}); starting reboot.target through systemd");
        match self.systemd_reboot().await {
            Ok(()) => {
                log::info!("reboot requested through systemd's reboot.target");
                Ok(RebootVia::RebootTarget)
            }
            Err(systemd) => Err(RebootError::Failed { logind, systemd }),
        }
    }

    async fn logind_reboot(&self) -> Result<(), String> {
        let proxy = LoginManagerProxy::new(&self.conn)
            .await
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(REBOOT_CALL_TIMEOUT, proxy.reboot(false)).await {
            Err(_) => Err(format!("no answer within {REBOOT_CALL_TIMEOUT:?}")),
            Ok(r) => r.map_err(|e| e.to_string()),
        }
    }

    async fn systemd_reboot(&self) -> Result<(), String> {
        let proxy = RebootTargetProxy::new(&self.conn)
            .await
            .map_err(|e| e.to_string())?;
        let call = proxy.start_unit("reboot.target", "replace-irreversibly");
        match tokio::time::timeout(REBOOT_CALL_TIMEOUT, call).await {
            Err(_) => Err(format!("no answer within {REBOOT_CALL_TIMEOUT:?}")),
            Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
        }
    }
}
