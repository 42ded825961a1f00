//! The [`Host`] that acts: systemd and logind over the system bus, rpm-ostree over its bus.
//!
//! Unit operations are idempotent here, whatever the planner asks: enabling an enabled unit or
//! disabling a disabled one touches nothing and triggers no reload, so a second run of the agent
//! on a converged host changes nothing. Start and stop are idempotent in systemd itself (a start
//! job on an active unit finishes `done` at once); restart is not, which is why the planner only
//! asks for it when something the unit reads changed.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use super::login::Login;
use super::rpmostree::RpmOstree;
use super::systemd::Systemd;
use super::{Host, HostError, UnitOp, UpgradeOutcome};

/// Where the host's daemons are reached.
#[derive(Debug, Clone, Default)]
pub struct DbusAddresses {
    /// systemd and logind; `None` is the system bus.
    pub system: Option<String>,
    /// rpm-ostree's daemon; `None` is the same bus as systemd's.
    pub rpmostree: Option<String>,
}

pub struct DbusHost {
    systemd: Systemd,
    login: Login,
    rpmostree: RpmOstree,
    subscribed: bool,
    interrupt: Option<watch::Receiver<bool>>,
}

impl DbusHost {
    pub async fn connect(addresses: &DbusAddresses) -> Result<Self, HostError> {
        let systemd = match &addresses.system {
            None => Systemd::system().await,
            Some(a) => Systemd::connect(a).await,
        }?;
        // logind lives on the same bus as systemd; share the connection.
        let login = Login::on(systemd.connection().clone(), addresses.system.clone());
        let rpmostree = match &addresses.rpmostree {
            None => RpmOstree::on(systemd.connection().clone()),
            Some(a) => RpmOstree::connect(a).await?,
        };
        Ok(DbusHost {
            systemd,
            login,
            rpmostree,
            subscribed: false,
            interrupt: None,
        })
    }

    /// A flag the caller sets (to `true`) on SIGTERM/SIGINT: a running OS upgrade then cancels
    /// its transaction and returns an error, instead of being torn down mid-way.
    pub fn with_interrupt(mut self, interrupt: watch::Receiver<bool>) -> Self {
        self.interrupt = Some(interrupt);
        self
    }

    pub fn with_job_timeout(mut self, timeout: Duration) -> Self {
        self.systemd = self.systemd.with_job_timeout(timeout);
        self
    }

    pub fn with_transaction_timeout(mut self, timeout: Duration) -> Self {
        self.rpmostree = self.rpmostree.with_transaction_timeout(timeout);
        self
    }

    pub fn systemd(&self) -> &Systemd {
        &self.systemd
    }

    pub fn rpmostree(&self) -> &RpmOstree {
        &self.rpmostree
    }

    async fn ensure_subscribed(&mut self) -> Result<(), HostError> {
        if !self.subscribed {
            self.systemd.subscribe().await?;
            self.subscribed = true;
        }
        Ok(())
    }

    fn interrupted(&self) -> impl Future<Output = ()> + 'static {
        let rx = self.interrupt.clone();
        async move {
            match rx {
                Some(mut rx) => {
                    // A closed channel (the sender dropped) never interrupts.
                    if rx.wait_for(|set| *set).await.is_err() {
                        std::future::pending::<()>().await
                    }
                }
                None => std::future::pending().await,
            }
        }
    }
}

impl Host for DbusHost {
    async fn reload(&mut self) -> Result<(), HostError> {
        self.ensure_subscribed().await?;
        log::info!("systemd: daemon-reload");
        self.systemd.reload().await.map_err(HostError::from)
    }

    async fn unit_op(&mut self, unit: &str, op: UnitOp) -> Result<(), HostError> {
        self.ensure_subscribed().await?;
        match op {
            UnitOp::Enable => {
                let state = self.systemd.unit_file_state(unit).await?;
                if state == "enabled" {
                    log::debug!("enable {unit}: already enabled");
                    return Ok(());
                }
                if self.systemd.enable(&[unit]).await? {
                    // As `systemctl enable` does: the new wants/ links take effect on reload.
                    self.systemd.reload().await?;
                }
                log::info!("enable {unit}: done (was {state})");
                Ok(())
            }
            UnitOp::Disable => {
                let state = self.systemd.unit_file_state(unit).await?;
                if state != "enabled" && state != "enabled-runtime" {
                    log::debug!("disable {unit}: nothing to do ({state})");
                    return Ok(());
                }
                if self.systemd.disable(&[unit]).await? {
                    self.systemd.reload().await?;
                }
                log::info!("disable {unit}: done");
                Ok(())
            }
            UnitOp::Start => self.systemd.start(unit).await.map_err(HostError::from),
            UnitOp::Stop => self.systemd.stop(unit).await.map_err(HostError::from),
            UnitOp::Restart => self.systemd.restart(unit).await.map_err(HostError::from),
            UnitOp::ResetFailed => self
                .systemd
                .reset_failed(unit)
                .await
                .map_err(HostError::from),
        }
    }

    async fn upgrade_os(&mut self) -> Result<UpgradeOutcome, HostError> {
        let interrupt = self.interrupted();
        self.rpmostree
            .upgrade(interrupt)
            .await
            .map_err(HostError::from)
    }

    async fn reboot(&mut self) -> Result<(), HostError> {
        self.login
            .reboot()
            .await
            .map(|_| ())
            .map_err(HostError::from)
    }
}
