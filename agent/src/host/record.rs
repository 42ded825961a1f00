//! A [`Host`] that records what it was asked to do and does nothing: `--no-host-actions`.

use super::{Host, HostError, UnitOp, UpgradeOutcome};

/// One recorded host action.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Recorded {
    Reload,
    Unit { unit: String, op: UnitOp },
    UpgradeOs,
    Reboot,
}

#[derive(Debug, Default)]
pub struct RecordingHost {
    pub actions: Vec<Recorded>,
}

impl Host for RecordingHost {
    async fn reload(&mut self) -> Result<(), HostError> {
        self.actions.push(Recorded::Reload);
        Ok(())
    }

    async fn unit_op(&mut self, unit: &str, op: UnitOp) -> Result<(), HostError> {
        self.actions.push(Recorded::Unit {
            unit: unit.to_string(),
            op,
        });
        Ok(())
    }

    async fn upgrade_os(&mut self) -> Result<UpgradeOutcome, HostError> {
        self.actions.push(Recorded::UpgradeOs);
        Ok(UpgradeOutcome::NoUpgrade)
    }

    async fn reboot(&mut self) -> Result<(), HostError> {
        self.actions.push(Recorded::Reboot);
        Ok(())
    }
}
