//! The host edge: what the agent asks of systemd, rpm-ostree and logind.
//!
//! The pure core decides *what* to do with units and the OS; this module is the thin, swappable
//! edge that does it. [`Host`] has two implementations: [`record::RecordingHost`], which only
//! records the actions (`--no-host-actions`, and the planner's tests), and the D-Bus host, which
//! talks to the real daemons.

pub mod dbus;
pub mod login;
pub mod record;
pub mod rpmostree;
pub mod systemd;

use std::fmt;

/// One operation on a systemd unit, in the vocabulary of `systemctl`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum UnitOp {
    Enable,
    Disable,
    Start,
    Stop,
    Restart,
    /// `systemctl reset-failed`: clears a failed state and the start rate limit.
    #[serde(rename = "reset-failed")]
    ResetFailed,
}

impl fmt::Display for UnitOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnitOp::Enable => "enable",
            UnitOp::Disable => "disable",
            UnitOp::Start => "start",
            UnitOp::Stop => "stop",
            UnitOp::Restart => "restart",
            UnitOp::ResetFailed => "reset-failed",
        })
    }
}

/// What an OS upgrade did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum UpgradeOutcome {
    /// The booted deployment is already the newest: nothing staged, no reboot needed.
    NoUpgrade,
    /// A new deployment was staged; it takes effect at the next boot.
    Staged { from: String, to: String },
}

/// A failure of a host action. Each variant keeps the daemon's own typed error (which unit, which
/// method, which job result), so a caller can tell a failed unit job from a bus that is gone; the
/// Display of each says what the user should look at (`journalctl -u ...`).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// systemd: connecting, a unit-file call, or a job that ended other than `done`.
    #[error(transparent)]
    Systemd(#[from] systemd::SystemdError),
    /// rpm-ostree: connecting, the upgrade call, or its transaction.
    #[error(transparent)]
    RpmOstree(#[from] rpmostree::RpmOstreeError),
    /// The reboot request, through logind and then systemd's reboot.target.
    #[error(transparent)]
    Reboot(#[from] login::RebootError),
}

/// The actions the agent takes on its host, in the order the planner gives them.
#[allow(async_fn_in_trait)]
pub trait Host {
    /// Make systemd re-read unit files (`systemctl daemon-reload`), after unit files changed and
    /// before any unit is enabled, started or restarted.
    async fn reload(&mut self) -> Result<(), HostError>;

    /// Carry out one unit operation and wait for its job to finish.
    async fn unit_op(&mut self, unit: &str, op: UnitOp) -> Result<(), HostError>;

    /// `rpm-ostree upgrade`: stage the newest deployment of the booted OS, if there is one.
    async fn upgrade_os(&mut self) -> Result<UpgradeOutcome, HostError>;

    /// Reboot into the staged deployment (logind, falling back to systemd's reboot.target).
    async fn reboot(&mut self) -> Result<(), HostError>;
}
