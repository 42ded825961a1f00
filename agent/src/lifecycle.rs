//! A node's life cycle as one typed state machine: the phase it is in, the OS upgrade decision
//! of each run, and the transitions between phases. Pure: no I/O, no clock, no D-Bus; `run`
//! carries out the decisions and `plan` describes them. The diagram is in `docs/lifecycle.md`.
//!
//! The upgrade happens once per instance (DESIGN.md, "State"): the first run of an instance asks
//! rpm-ostree to upgrade, a staged deployment is followed by exactly one reboot request, and the
//! next boot (a new `/proc/sys/kernel/random/boot_id`) configures the node. With
//! `upgrade_failure: block` a failed upgrade is retried by every run and nothing is configured
//! until it succeeds; with `continue` the booted deployment is configured.

use std::fmt;

use crate::config::UpgradeFailure;

/// Where the node is in its life, as `state.json` and `status` show it (kebab-case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Nothing done yet for this instance.
    #[default]
    New,
    /// rpm-ostree staged a deployment and a reboot was requested; the next boot continues.
    UpgradeRequested,
    /// The OS upgrade failed and the configuration says to block.
    UpgradeFailed,
    /// The cluster is not ready (no master, several masters): nothing rendered.
    Waiting,
    /// Files written, unit actions in progress (a crash here is finished by the next run).
    Applying,
    /// Every file and unit as the plan wants it.
    Converged,
    /// The last run failed; the state's `last_error` says why.
    Failed,
}

/// What happened in a run that moves the node to another phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A deployment is staged and the reboot into it is being requested.
    RebootRequested,
    /// The upgrade failed under `upgrade_failure: block`.
    UpgradeBlocked,
    /// The cluster has no single master: nothing is rendered.
    NotReady,
    /// The plan's files and unit actions are about to be applied.
    ApplyStarted,
    /// Every file and unit action of the plan is done.
    Applied,
    /// The run stopped on an error after the state was loaded.
    RunFailed,
}

impl Phase {
    /// The phase after `event`. Every event is allowed in every phase: a run starts from
    /// whatever phase the last run (or a crash) left, and what this run does decides where the
    /// node is now. A crash leaves the phase of the last event saved, which the next run
    /// overrides the same way.
    pub fn on(self, event: Event) -> Phase {
        match event {
            Event::RebootRequested => Phase::UpgradeRequested,
            Event::UpgradeBlocked => Phase::UpgradeFailed,
            Event::NotReady => Phase::Waiting,
            Event::ApplyStarted => Phase::Applying,
            Event::Applied => Phase::Converged,
            Event::RunFailed => Phase::Failed,
        }
    }

    /// The name `state.json` and `status` use (`upgrade-requested`, `converged`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::New => "new",
            Phase::UpgradeRequested => "upgrade-requested",
            Phase::UpgradeFailed => "upgrade-failed",
            Phase::Waiting => "waiting",
            Phase::Applying => "applying",
            Phase::Converged => "converged",
            Phase::Failed => "failed",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the OS upgrade step of an instance ended, as recorded in `state.json` (`outcome`).
///
/// Stored as a string so that every state file berth ever wrote loads: an outcome this version
/// does not know is kept as [`UpgradeOutcome::Other`] and counts as done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeOutcome {
    /// `staged`: rpm-ostree staged a new deployment; a reboot takes the node into it.
    Staged,
    /// `no-upgrade`: the booted deployment was already the newest.
    NoUpgrade,
    /// `failed`: the upgrade call or its transaction failed; `detail` says how.
    Failed,
    /// `skipped`: the configuration says `upgrade: false`.
    Skipped,
    /// `recorded`: with `--no-host-actions`, the upgrade was recorded, not carried out.
    Recorded,
    /// An outcome written by another version of berth.
    Other(String),
}

impl UpgradeOutcome {
    pub fn as_str(&self) -> &str {
        match self {
            UpgradeOutcome::Staged => "staged",
            UpgradeOutcome::NoUpgrade => "no-upgrade",
            UpgradeOutcome::Failed => "failed",
            UpgradeOutcome::Skipped => "skipped",
            UpgradeOutcome::Recorded => "recorded",
            UpgradeOutcome::Other(s) => s,
        }
    }
}

impl From<&str> for UpgradeOutcome {
    fn from(s: &str) -> Self {
        match s {
            "staged" => UpgradeOutcome::Staged,
            "no-upgrade" => UpgradeOutcome::NoUpgrade,
            "failed" => UpgradeOutcome::Failed,
            "skipped" => UpgradeOutcome::Skipped,
            "recorded" => UpgradeOutcome::Recorded,
            other => UpgradeOutcome::Other(other.to_string()),
        }
    }
}

impl fmt::Display for UpgradeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for UpgradeOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for UpgradeOutcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(UpgradeOutcome::from(s.as_str()))
    }
}

/// What the last run recorded about the upgrade, as far as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Previous<'a> {
    pub outcome: &'a UpgradeOutcome,
    /// The boot in which that upgrade ran.
    pub boot_id: &'a str,
    /// Whether the reboot into its staged deployment was asked for.
    pub reboot_requested: bool,
}

/// The inputs of a run's upgrade decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeInputs<'a> {
    /// The configuration's `upgrade`.
    pub enabled: bool,
    /// The configuration's `upgrade_failure`.
    pub on_failure: UpgradeFailure,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: &'a str,
    /// The upgrade record of the state; `None` on an instance's first run.
    pub previous: Option<Previous<'a>>,
}

/// Why a run goes on to configure the node without upgrading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// `upgrade: false`.
    Disabled,
    /// The upgrade step of this instance is behind it (no upgrade, rebooted into the staged
    /// deployment, failed under `continue`, skipped or recorded).
    Done,
    /// The reboot into the staged deployment was requested in this boot and has not happened:
    /// berth never requests it twice, so the booted deployment is configured.
    RebootMissed,
}

/// What the run does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask rpm-ostree to upgrade; `retry` when the last attempt failed under `block`.
    Upgrade { retry: bool },
    /// Ask for the reboot into the staged deployment (logind, then systemd).
    Reboot,
    /// Go on: discovery, plan, files, units.
    Configure(Why),
    /// Stop the run and configure nothing (the upgrade failed under `block`).
    Block,
}

/// A decision of the upgrade step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The outcome to record for this boot, when the step records one.
    pub record: Option<UpgradeOutcome>,
    /// The event that moves the node to its next phase, when the step moves it.
    pub event: Option<Event>,
}

impl Decision {
    fn act(action: Action) -> Decision {
        Decision {
            action,
            record: None,
            event: None,
        }
    }

    /// The phase the node is in after this decision, from `phase` (the run applies `event`
    /// itself; the tests walk the phases with this).
    #[cfg(test)]
    fn next_phase(&self, phase: Phase) -> Phase {
        self.event.map_or(phase, |e| phase.on(e))
    }
}

/// The upgrade decision at the start of a run, before the host is asked anything.
pub fn decide(i: &UpgradeInputs) -> Decision {
    if !i.enabled {
        return Decision {
            record: i.previous.is_none().then_some(UpgradeOutcome::Skipped),
            ..Decision::act(Action::Configure(Why::Disabled))
        };
    }
    let Some(p) = i.previous else {
        return Decision::act(Action::Upgrade { retry: false });
    };
    match p.outcome {
        UpgradeOutcome::Failed if i.on_failure == UpgradeFailure::Block => {
            Decision::act(Action::Upgrade { retry: true })
        }
        UpgradeOutcome::Staged if p.boot_id == i.boot_id => {
            if p.reboot_requested {
                Decision::act(Action::Configure(Why::RebootMissed))
            } else {
                // Staged, then stopped before asking for the reboot: ask now, once.
                Decision {
                    event: Some(Event::RebootRequested),
                    ..Decision::act(Action::Reboot)
                }
            }
        }
        _ => Decision::act(Action::Configure(Why::Done)),
    }
}

/// What the host said about the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostUpgrade {
    /// A new deployment is staged.
    Staged,
    /// The booted deployment is the newest, or the upgrade was only recorded.
    NoUpgrade,
    /// The upgrade failed.
    Failed,
}

/// The decision after the host's answer to [`Action::Upgrade`]. `host_actions` is false with
/// `--no-host-actions`, where an upgrade that stages nothing is recorded as `recorded`.
pub fn upgraded(result: HostUpgrade, on_failure: UpgradeFailure, host_actions: bool) -> Decision {
    match result {
        HostUpgrade::Staged => Decision {
            action: Action::Reboot,
            record: Some(UpgradeOutcome::Staged),
            event: Some(Event::RebootRequested),
        },
        HostUpgrade::NoUpgrade => Decision {
            record: Some(if host_actions {
                UpgradeOutcome::NoUpgrade
            } else {
                UpgradeOutcome::Recorded
            }),
            ..Decision::act(Action::Configure(Why::Done))
        },
        HostUpgrade::Failed => match on_failure {
            UpgradeFailure::Block => Decision {
                action: Action::Block,
                record: Some(UpgradeOutcome::Failed),
                event: Some(Event::UpgradeBlocked),
            },
            UpgradeFailure::Continue => Decision {
                record: Some(UpgradeOutcome::Failed),
                ..Decision::act(Action::Configure(Why::Done))
            },
        },
    }
}

/// What `berth-agent plan` says the upgrade step of the next run does. `detail` is the last
/// record's detail (the failure, for a retry).
pub fn preview(i: &UpgradeInputs, detail: Option<&str>) -> String {
    match decide(i).action {
        Action::Configure(Why::Disabled) => "skipped (upgrade: false)".to_string(),
        Action::Upgrade { retry: false } => "rpm-ostree upgrade, then a reboot if a new \
                                             deployment is staged (first boot of this instance)"
            .to_string(),
        Action::Upgrade { retry: true } => format!(
            "retry rpm-ostree upgrade (it failed: {})",
            detail.unwrap_or("?")
        ),
        Action::Reboot | Action::Configure(Why::RebootMissed) => {
            "none: a reboot into the staged deployment is pending".to_string()
        }
        Action::Configure(Why::Done) | Action::Block => {
            format!("done ({})", i.previous.map_or("", |p| p.outcome.as_str()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = "boot-2";
    const EARLIER: &str = "boot-1";

    fn inputs<'a>(
        enabled: bool,
        on_failure: UpgradeFailure,
        previous: Option<Previous<'a>>,
    ) -> UpgradeInputs<'a> {
        UpgradeInputs {
            enabled,
            on_failure,
            boot_id: BOOT,
            previous,
        }
    }

    fn prev<'a>(
        outcome: &'a UpgradeOutcome,
        boot_id: &'static str,
        requested: bool,
    ) -> Previous<'a> {
        Previous {
            outcome,
            boot_id,
            reboot_requested: requested,
        }
    }

    fn all_outcomes() -> Vec<UpgradeOutcome> {
        vec![
            UpgradeOutcome::Staged,
            UpgradeOutcome::NoUpgrade,
            UpgradeOutcome::Failed,
            UpgradeOutcome::Skipped,
            UpgradeOutcome::Recorded,
            UpgradeOutcome::Other("from-a-later-berth".into()),
        ]
    }

    const POLICIES: [UpgradeFailure; 2] = [UpgradeFailure::Block, UpgradeFailure::Continue];

    /// The whole decision table: every previous outcome, in this boot and an earlier one, with
    /// the reboot asked for or not, under both failure policies.
    #[test]
    fn decide_covers_every_input() {
        use Action::*;
        for on_failure in POLICIES {
            let d = decide(&inputs(true, on_failure, None));
            assert_eq!(d, Decision::act(Upgrade { retry: false }), "first run");
            for outcome in all_outcomes() {
                for boot in [BOOT, EARLIER] {
                    for requested in [false, true] {
                        let p = prev(&outcome, boot, requested);
                        let d = decide(&inputs(true, on_failure, Some(p)));
                        let want = match (&outcome, boot == BOOT, requested, on_failure) {
                            (UpgradeOutcome::Failed, _, _, UpgradeFailure::Block) => Decision {
                                action: Upgrade { retry: true },
                                record: None,
                                event: None,
                            },
                            (UpgradeOutcome::Staged, true, false, _) => Decision {
                                action: Reboot,
                                record: None,
                                event: Some(Event::RebootRequested),
                            },
                            (UpgradeOutcome::Staged, true, true, _) => {
                                Decision::act(Configure(Why::RebootMissed))
                            }
                            _ => Decision::act(Configure(Why::Done)),
                        };
                        assert_eq!(d, want, "{outcome} boot={boot} requested={requested}");
                    }
                }
            }
        }
    }

    #[test]
    fn disabled_records_skipped_once_and_never_upgrades() {
        for on_failure in POLICIES {
            let d = decide(&inputs(false, on_failure, None));
            assert_eq!(d.action, Action::Configure(Why::Disabled));
            assert_eq!(d.record, Some(UpgradeOutcome::Skipped));
            assert_eq!(d.event, None);
            for outcome in all_outcomes() {
                let d = decide(&inputs(
                    false,
                    on_failure,
                    Some(prev(&outcome, BOOT, false)),
                ));
                assert_eq!(d, Decision::act(Action::Configure(Why::Disabled)));
            }
        }
    }

    #[test]
    fn the_hosts_answer_decides_reboot_configure_or_block() {
        for on_failure in POLICIES {
            for host_actions in [true, false] {
                let d = upgraded(HostUpgrade::Staged, on_failure, host_actions);
                assert_eq!(d.action, Action::Reboot);
                assert_eq!(d.record, Some(UpgradeOutcome::Staged));
                assert_eq!(d.next_phase(Phase::New), Phase::UpgradeRequested);

                let d = upgraded(HostUpgrade::NoUpgrade, on_failure, host_actions);
                assert_eq!(d.action, Action::Configure(Why::Done));
                let want = if host_actions {
                    UpgradeOutcome::NoUpgrade
                } else {
                    UpgradeOutcome::Recorded
                };
                assert_eq!(d.record, Some(want));
                assert_eq!(d.next_phase(Phase::Converged), Phase::Converged);
            }
        }
        let d = upgraded(HostUpgrade::Failed, UpgradeFailure::Block, true);
        assert_eq!(d.action, Action::Block);
        assert_eq!(d.record, Some(UpgradeOutcome::Failed));
        assert_eq!(d.next_phase(Phase::New), Phase::UpgradeFailed);
        let d = upgraded(HostUpgrade::Failed, UpgradeFailure::Continue, true);
        assert_eq!(d.action, Action::Configure(Why::Done));
        assert_eq!(d.record, Some(UpgradeOutcome::Failed));
        assert_eq!(d.next_phase(Phase::New), Phase::New);
    }

    /// A first boot that stages, reboots and converges; the same instance's later boots never
    /// upgrade again.
    #[test]
    fn a_first_boot_upgrades_once_and_reboots_once() {
        let mut phase = Phase::New;
        let d = decide(&inputs(true, UpgradeFailure::Block, None));
        assert_eq!(d.action, Action::Upgrade { retry: false });
        let d = upgraded(HostUpgrade::Staged, UpgradeFailure::Block, true);
        phase = d.next_phase(phase);
        assert_eq!(phase, Phase::UpgradeRequested);
        let staged = d.record.unwrap();
        // The same boot again (the reboot did not come): no second request.
        let p = prev(&staged, BOOT, true);
        let d = decide(&inputs(true, UpgradeFailure::Block, Some(p)));
        assert_eq!(d.action, Action::Configure(Why::RebootMissed));
        // The next boot configures.
        let p = prev(&staged, EARLIER, true);
        let d = decide(&inputs(true, UpgradeFailure::Block, Some(p)));
        assert_eq!(d.action, Action::Configure(Why::Done));
        assert_eq!(d.next_phase(phase), phase);
    }

    #[test]
    fn every_event_from_every_phase() {
        let phases = [
            Phase::New,
            Phase::UpgradeRequested,
            Phase::UpgradeFailed,
            Phase::Waiting,
            Phase::Applying,
            Phase::Converged,
            Phase::Failed,
        ];
        let events = [
            (Event::RebootRequested, Phase::UpgradeRequested),
            (Event::UpgradeBlocked, Phase::UpgradeFailed),
            (Event::NotReady, Phase::Waiting),
            (Event::ApplyStarted, Phase::Applying),
            (Event::Applied, Phase::Converged),
            (Event::RunFailed, Phase::Failed),
        ];
        for from in phases {
            for (event, to) in events {
                assert_eq!(from.on(event), to, "{from} on {event:?}");
            }
            let json = serde_json::to_value(from).unwrap();
            assert_eq!(json.as_str(), Some(from.as_str()));
            assert_eq!(from.to_string(), from.as_str());
        }
        assert_eq!(Phase::default(), Phase::New);
    }

    #[test]
    fn outcomes_keep_todays_strings_and_unknown_ones_load() {
        for o in all_outcomes() {
            let json = serde_json::to_string(&o).unwrap();
            let back: UpgradeOutcome = serde_json::from_str(&json).unwrap();
            assert_eq!(back, o);
            assert_eq!(o.to_string(), o.as_str());
        }
        let names: Vec<String> = all_outcomes().iter().map(|o| o.to_string()).collect();
        assert_eq!(
            names,
            [
                "staged",
                "no-upgrade",
                "failed",
                "skipped",
                "recorded",
                "from-a-later-berth"
            ]
        );
        assert!(serde_json::from_str::<UpgradeOutcome>("3").is_err());
    }

    #[test]
    fn preview_describes_each_decision() {
        let block = UpgradeFailure::Block;
        assert_eq!(
            preview(&inputs(false, block, None), None),
            "skipped (upgrade: false)"
        );
        assert!(preview(&inputs(true, block, None), None).starts_with("rpm-ostree upgrade, then"));
        let failed = UpgradeOutcome::Failed;
        let p = Some(prev(&failed, EARLIER, false));
        assert_eq!(
            preview(&inputs(true, block, p), Some("bus gone")),
            "retry rpm-ostree upgrade (it failed: bus gone)"
        );
        assert_eq!(
            preview(&inputs(true, block, p), None),
            "retry rpm-ostree upgrade (it failed: ?)"
        );
        assert_eq!(
            preview(&inputs(true, UpgradeFailure::Continue, p), None),
            "done (failed)"
        );
        let staged = UpgradeOutcome::Staged;
        for requested in [false, true] {
            let p = Some(prev(&staged, BOOT, requested));
            assert_eq!(
                preview(&inputs(true, block, p), None),
                "none: a reboot into the staged deployment is pending"
            );
        }
        let p = Some(prev(&staged, EARLIER, true));
        assert_eq!(preview(&inputs(true, block, p), None), "done (staged)");
    }
}
