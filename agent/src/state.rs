//! Per-instance state: `/var/lib/berth/<instance-id>/state.json`.
//!
//! Keyed by instance-id, so that a disk baked into an AMI or cloned into another instance never
//! looks "already done" to the new instance: a new id starts from an empty state and does its
//! first boot (upgrade included). `/var/lib/berth/current` names the instance that wrote last, for
//! `berth-agent status`, which must work without IMDS.
//!
//! Each state records the boot (`/proc/sys/kernel/random/boot_id`) and the machine
//! (`/etc/machine-id`) it was written in: `status` reads no IMDS, so this is how it tells the
//! state of this node from the state of the instance a disk was baked or cloned from (a new
//! instance is always a new boot). `/var/lib/berth/last-run.json` records how the last run ended,
//! written on every run's end, success or failure, so that a run that fails before this
//! instance's first state (no role, IMDS unreachable, an IPv6-only subnet) still shows in `status`.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::apply::{host_path, write_atomic, FileError};
use crate::config::Role;
use crate::discovery::Membership;
use crate::host::record::Recorded;
use crate::lifecycle::{Event, Previous};
use crate::plan::Plan;

pub(crate) const STATE_DIR: &str = "/var/lib/berth";
const FORMAT: u32 = 1;

pub use crate::lifecycle::{Phase, UpgradeOutcome};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpgradeRecord {
    /// The boot in which the upgrade ran: a reboot into the staged deployment changes it.
    pub boot_id: String,
    /// staged, no-upgrade, failed, skipped (user-data `upgrade: false`), recorded (no host
    /// actions); a string in the file, so that every state berth wrote loads.
    pub outcome: UpgradeOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub at: u64,
    /// Whether the reboot into the staged deployment was asked for (at most once per instance).
    #[serde(default)]
    pub reboot_requested: bool,
}

#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub format: u32,
    pub instance_id: String,
    pub phase: Phase,
    pub role: Option<Role>,
    pub node: Option<String>,
    pub cluster: Option<String>,
    pub upgrade: Option<UpgradeRecord>,
    /// Restarts decided on and not yet done; survives a crash so the next run finishes them.
    pub pending_restarts: BTreeSet<String>,
    pub last_plan: Option<Plan>,
    pub membership: Option<Membership>,
    pub condition: Option<String>,
    pub last_error: Option<String>,
    /// With `--no-host-actions`: what the last run would have asked of systemd and rpm-ostree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recorded_actions: Vec<Recorded>,
    pub runs: u64,
    pub updated_at: u64,
    /// What the last run left to other tools or found in the host's files: user-data that is
    /// not berth's, `/etc/hosts` lines that named cluster nodes. Never input content.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The boot in which this state was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The machine-id of the host that last wrote this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// The etcd tier, on the masters of a profile that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<crate::etcd::EtcdRecord>,
    /// The Kubernetes tier, on the nodes of a profile that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::kube::KubeRecord>,
}

/// How a run ended, as `last-run.json` and `status` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// The node converged to its role.
    Converged,
    /// The OS upgrade was staged and a reboot requested.
    Rebooting,
    /// The cluster is not ready (no master, or several): nothing was rendered.
    Waiting,
    /// The run failed; `error` says why.
    #[default]
    Failed,
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunOutcome::Converged => "converged",
            RunOutcome::Rebooting => "rebooting",
            RunOutcome::Waiting => "waiting",
            RunOutcome::Failed => "failed",
        })
    }
}

/// How the last `run` ended: `/var/lib/berth/last-run.json`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct LastRun {
    pub format: u32,
    pub outcome: RunOutcome,
    /// The exit code `run --once` gave (README, "Exit codes").
    pub exit_code: i32,
    /// The instance the run was for, when IMDS said (an IPv6-only subnet's error carries it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Why the run failed: the error as the log printed it (never input content or credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// Seconds since the epoch at which the run ended with this outcome first: a daemon that
    /// converges every poll rewrites the file only when the outcome changes.
    pub since: u64,
}

impl LastRun {
    fn path(root: &Path) -> PathBuf {
        host_path(root, STATE_DIR).join("last-run.json")
    }

    pub fn load(root: &Path) -> Result<Option<LastRun>, StateError> {
        let path = LastRun::path(root);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        path,
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    /// Writes the record atomically, unless the one on disk says the same (then its `since`
    /// stays).
    pub fn save(&mut self, root: &Path) -> Result<(), StateError> {
        self.format = FORMAT;
        if let Ok(Some(old)) = LastRun::load(root) {
            let same = LastRun {
                since: 0,
                ..old.clone()
            } == LastRun {
                since: 0,
                ..self.clone()
            };
            if same {
                self.since = old.since;
                return Ok(());
            }
        }
        if self.since == 0 {
            self.since = now_secs();
        }
        let json = serde_json::to_vec_pretty(self).expect("last run serializes");
        write_atomic(&LastRun::path(root), &json, 0o644)?;
        Ok(())
    }
}

/// Why `status` has no state to show.
#[derive(Debug, Clone, PartialEq)]
pub enum Current {
    /// No `current` pointer: no run got as far as writing a state.
    None,
    /// `current` names an instance whose `state.json` is gone (moved aside, deleted).
    Missing {
        instance_id: String,
        path: PathBuf,
    },
    Found(Box<State>),
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a berth state file ({message}); move it aside and run again to start \
         this instance's first boot over"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error("instance id {0:?} is not a valid EC2 instance id")]
    BadInstanceId(String),
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn dir_for(root: &Path, instance_id: &str) -> Result<PathBuf, StateError> {
    let ok = instance_id.len() <= 32
        && instance_id
            .strip_prefix("i-")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(StateError::BadInstanceId(instance_id.to_string()));
    }
    Ok(host_path(root, STATE_DIR).join(instance_id))
}

impl State {
    /// This instance's state, or a new one when the instance has none (first boot).
    pub fn load(root: &Path, instance_id: &str) -> Result<State, StateError> {
        let path = dir_for(root, instance_id)?.join("state.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let s: State = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                if s.instance_id != instance_id {
                    return Err(StateError::Corrupt {
                        path,
                        message: format!("it belongs to {}", s.instance_id),
                    });
                }
                Ok(s)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State {
                format: FORMAT,
                instance_id: instance_id.to_string(),
                ..State::default()
            }),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    /// The state of the instance that last ran on this disk, for `status`: unlike
    /// [`State::load`], a missing `state.json` is reported, not replaced by a new state.
    pub fn current(root: &Path) -> Result<Current, StateError> {
        let pointer = host_path(root, STATE_DIR).join("current");
        let id = match std::fs::read_to_string(&pointer) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Current::None),
            Err(source) => {
                return Err(StateError::Read {
                    path: pointer,
                    source,
                })
            }
        };
        let path = dir_for(root, &id)?.join("state.json");
        if !path.exists() {
            return Ok(Current::Missing {
                instance_id: id,
                path,
            });
        }
        State::load(root, &id).map(|s| Current::Found(Box::new(s)))
    }

    /// The state of the instance that last ran on this disk, for `status`.
    pub fn load_current(root: &Path) -> Result<Option<State>, StateError> {
        let pointer = host_path(root, STATE_DIR).join("current");
        let id = match std::fs::read_to_string(&pointer) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Read {
                    path: pointer,
                    source,
                })
            }
        };
        State::load(root, &id).map(Some)
    }

    /// The upgrade record, as the upgrade decision reads it ([`crate::lifecycle::decide`]).
    pub(crate) fn previous_upgrade(&self) -> Option<Previous<'_>> {
        self.upgrade.as_ref().map(|r| Previous {
            outcome: &r.outcome,
            boot_id: &r.boot_id,
            reboot_requested: r.reboot_requested,
        })
    }

    /// Moves the node to the phase `event` leads to ([`Phase::on`]).
    pub(crate) fn transition(&mut self, event: Event) {
        self.phase = self.phase.on(event);
    }

    /// The cluster is not ready: nothing rendered, `condition` says why.
    pub fn wait(&mut self, condition: String, membership: Membership) {
        self.transition(Event::NotReady);
        self.condition = Some(condition);
        self.membership = Some(membership);
    }

    /// The run stopped on `error` (as the log prints it).
    pub fn fail(&mut self, error: String) {
        self.transition(Event::RunFailed);
        self.last_error = Some(error);
    }

    /// The upgrade failed under `upgrade_failure: block`: nothing is configured.
    pub(crate) fn block_on_upgrade(&mut self, error: String) {
        self.transition(Event::UpgradeBlocked);
        self.last_error = Some(error);
    }

    /// The reboot into the staged deployment is about to be requested: recorded first, so
    /// that this instance asks at most once whatever happens next.
    pub fn request_reboot(&mut self) {
        if let Some(r) = self.upgrade.as_mut() {
            r.reboot_requested = true;
        }
        self.transition(Event::RebootRequested);
    }

    /// The plan's files and unit actions are about to be applied for `membership`.
    pub(crate) fn start_apply(&mut self, membership: Membership, condition: String) {
        self.transition(Event::ApplyStarted);
        self.membership = Some(membership);
        self.condition = Some(condition);
    }

    /// Every file and unit action of `plan` is done.
    pub fn converge(&mut self, plan: Plan) {
        self.transition(Event::Applied);
        self.last_error = None;
        self.last_plan = Some(plan);
        self.runs += 1;
    }

    /// Saves atomically and points `current` at this instance.
    pub fn save(&mut self, root: &Path) -> Result<(), StateError> {
        self.format = FORMAT;
        self.updated_at = now_secs();
        let dir = dir_for(root, &self.instance_id)?;
        let json = serde_json::to_vec_pretty(self).expect("state serializes");
        write_atomic(&dir.join("state.json"), &json, 0o644)?;
        let pointer = host_path(root, STATE_DIR).join("current");
        let line = format!("{}\n", self.instance_id);
        if std::fs::read(&pointer).ok().as_deref() != Some(line.as_bytes()) {
            write_atomic(&pointer, line.as_bytes(), 0o644)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_per_instance() {
        let d = tempfile::tempdir().unwrap();
        let mut s = State::load(d.path(), "i-0abc").unwrap();
        assert_eq!(s.phase, Phase::New);
        s.phase = Phase::Converged;
        s.pending_restarts.insert("etcd.service".into());
        s.save(d.path()).unwrap();
        let back = State::load(d.path(), "i-0abc").unwrap();
        assert_eq!(back, s);
        assert_eq!(State::load_current(d.path()).unwrap().unwrap(), s);
        // A clone of this disk in another instance starts over.
        assert_eq!(State::load(d.path(), "i-0def").unwrap().phase, Phase::New);
    }

    #[test]
    fn a_missing_state_file_is_not_a_new_state() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(State::current(d.path()).unwrap(), Current::None);
        let mut s = State::load(d.path(), "i-0abc").unwrap();
        s.save(d.path()).unwrap();
        assert!(matches!(
            State::current(d.path()).unwrap(),
            Current::Found(_)
        ));
        let file = d.path().join("var/lib/berth/i-0abc/state.json");
        std::fs::rename(&file, file.with_extension("old")).unwrap();
        assert!(matches!(
            State::current(d.path()).unwrap(),
            Current::Missing { instance_id, .. } if instance_id == "i-0abc"
        ));
    }

    #[test]
    fn last_run_keeps_its_since_while_the_outcome_stays() {
        let d = tempfile::tempdir().unwrap();
        let mut r = LastRun {
            outcome: RunOutcome::Failed,
            exit_code: 4,
            error: Some("IMDS unreachable".into()),
            since: 5,
            ..LastRun::default()
        };
        r.save(d.path()).unwrap();
        let mut again = LastRun {
            since: 0,
            ..r.clone()
        };
        again.save(d.path()).unwrap();
        assert_eq!(again.since, 5);
        let mut other = LastRun {
            outcome: RunOutcome::Converged,
            exit_code: 0,
            error: None,
            since: 0,
            ..r
        };
        other.save(d.path()).unwrap();
        assert_eq!(LastRun::load(d.path()).unwrap().unwrap(), other);
        assert!(other.since > 5);
    }

    #[test]
    fn nothing_yet_is_not_an_error_and_an_unreadable_file_is() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(LastRun::load(d.path()).unwrap(), None);
        assert_eq!(State::load_current(d.path()).unwrap(), None);
        let new = State::load(d.path(), "i-0abc").unwrap();
        assert_eq!((new.format, new.instance_id.as_str()), (FORMAT, "i-0abc"));

        // Directories where the files should be: reading them fails with EISDIR.
        let dir = d.path().join("var/lib/berth");
        std::fs::create_dir_all(dir.join("last-run.json")).unwrap();
        std::fs::create_dir_all(dir.join("current")).unwrap();
        std::fs::create_dir_all(dir.join("i-0abc/state.json")).unwrap();
        assert!(matches!(
            LastRun::load(d.path()),
            Err(StateError::Read { .. })
        ));
        assert!(matches!(
            State::current(d.path()),
            Err(StateError::Read { .. })
        ));
        assert!(matches!(
            State::load_current(d.path()),
            Err(StateError::Read { .. })
        ));
        assert!(matches!(
            State::load(d.path(), "i-0abc"),
            Err(StateError::Read { .. })
        ));
    }

    #[test]
    fn a_state_of_another_instance_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut s = State::load(d.path(), "i-0abc").unwrap();
        s.save(d.path()).unwrap();
        let from = d.path().join("var/lib/berth/i-0abc");
        let to = d.path().join("var/lib/berth/i-0def");
        std::fs::rename(from, to).unwrap();
        assert!(matches!(
            State::load(d.path(), "i-0def"),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn last_run_keeps_the_first_since_whatever_the_new_record_says() {
        let d = tempfile::tempdir().unwrap();
        let mut r = LastRun {
            outcome: RunOutcome::Converged,
            since: 5,
            ..LastRun::default()
        };
        r.save(d.path()).unwrap();
        let mut again = LastRun { since: 7, ..r };
        again.save(d.path()).unwrap();
        assert_eq!(again.since, 5);
        assert_eq!(LastRun::load(d.path()).unwrap().unwrap().since, 5);
    }

    fn fixture(name: &str, instance_id: &str) -> State {
        let d = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/state")
            .join(name);
        let dir = d.path().join("var/lib/berth").join(instance_id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(src, dir.join("state.json")).unwrap();
        State::load(d.path(), instance_id).unwrap()
    }

    #[test]
    fn todays_state_files_load() {
        let s = fixture("main-converged.json", "i-0a1b2c3d4e5f60002");
        assert_eq!(s.phase, Phase::Converged);
        assert_eq!(s.role, Some(Role::Minion));
        let u = s.upgrade.as_ref().unwrap();
        assert_eq!(u.outcome, UpgradeOutcome::Recorded);
        assert!(!u.reboot_requested);
        assert_eq!(s.last_plan.as_ref().unwrap().files.len(), 4);
        assert_eq!(s.membership.as_ref().unwrap().nodes.len(), 2);
        assert!(s.boot_id.is_some());

        let s = fixture("cae0ded-upgrade-requested.json", "i-0a1b2c3d4e5f60001");
        assert_eq!(s.phase, Phase::UpgradeRequested);
        let u = s.upgrade.as_ref().unwrap();
        assert_eq!(u.outcome, UpgradeOutcome::Staged);
        assert!(!u.reboot_requested, "absent in the first format");
        assert_eq!(s.boot_id, None);
        assert!(s.notes.is_empty());
        let p = s.previous_upgrade().unwrap();
        assert_eq!(p.outcome, &UpgradeOutcome::Staged);
        assert_eq!(p.boot_id, "5d2c1f0e-7a6b-4c3d-9e8f-0a1b2c3d4e5f");
        assert!(!p.reboot_requested);
    }

    #[test]
    fn an_outcome_written_by_another_version_loads_and_saves_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let mut s = State::load(d.path(), "i-0abc").unwrap();
        s.upgrade = Some(UpgradeRecord {
            boot_id: "b".into(),
            outcome: UpgradeOutcome::Other("deferred".into()),
            detail: None,
            at: 1,
            reboot_requested: false,
        });
        s.save(d.path()).unwrap();
        let text =
            std::fs::read_to_string(d.path().join("var/lib/berth/i-0abc/state.json")).unwrap();
        assert!(text.contains(r#""outcome": "deferred""#), "{text}");
        assert_eq!(State::load(d.path(), "i-0abc").unwrap(), s);
    }

    fn membership() -> Membership {
        Membership {
            nodes: vec![],
            notes: vec!["i-0bad: stopped".into()],
        }
    }

    #[test]
    fn transitions_set_the_phase_and_what_goes_with_it() {
        let mut s = State::default();
        assert_eq!(s.previous_upgrade(), None);

        s.wait("no master".into(), membership());
        assert_eq!(s.phase, Phase::Waiting);
        assert_eq!(s.condition.as_deref(), Some("no master"));
        assert_eq!(s.membership, Some(membership()));

        s.fail("IMDS unreachable".into());
        assert_eq!(s.phase, Phase::Failed);
        assert_eq!(s.last_error.as_deref(), Some("IMDS unreachable"));

        s.start_apply(membership(), "ready".into());
        assert_eq!(s.phase, Phase::Applying);
        assert_eq!(s.condition.as_deref(), Some("ready"));
        assert_eq!(
            s.last_error.as_deref(),
            Some("IMDS unreachable"),
            "kept until the run converges"
        );

        let plan = Plan {
            instance_id: "i-1".into(),
            node: "n".into(),
            role: Role::Minion,
            profile: "p".into(),
            files: vec![],
            reload: false,
            units: vec![],
        };
        s.converge(plan.clone());
        assert_eq!(s.phase, Phase::Converged);
        assert_eq!(s.last_error, None);
        assert_eq!(s.last_plan, Some(plan.clone()));
        assert_eq!(s.runs, 1);
        s.converge(plan);
        assert_eq!(s.runs, 2);

        s.block_on_upgrade("rpm-ostree: no space".into());
        assert_eq!(s.phase, Phase::UpgradeFailed);
        assert_eq!(s.last_error.as_deref(), Some("rpm-ostree: no space"));

        // Without a record there is nothing to mark; the phase still moves.
        s.request_reboot();
        assert_eq!(s.phase, Phase::UpgradeRequested);
        assert_eq!(s.upgrade, None);
        s.upgrade = Some(UpgradeRecord {
            boot_id: "b".into(),
            outcome: UpgradeOutcome::Staged,
            detail: None,
            at: 1,
            reboot_requested: false,
        });
        s.phase = Phase::New;
        s.request_reboot();
        assert_eq!(s.phase, Phase::UpgradeRequested);
        assert!(s.upgrade.as_ref().unwrap().reboot_requested);
        assert!(s.previous_upgrade().unwrap().reboot_requested);
    }

    #[test]
    fn hostile_instance_id_never_becomes_a_path() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["../../etc", "i-", "i-xyz", "i-0a/../../x"] {
            assert!(matches!(
                State::load(d.path(), bad),
                Err(StateError::BadInstanceId(_))
            ));
        }
    }
}
