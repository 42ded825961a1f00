//! The planner: a pure function from (this node, its config, the membership, a profile, what the
//! host's files hold now) to the actions that converge the host.
//!
//! Pure means no I/O: the caller reads the files named by [`paths_of_interest`] into a
//! [`HostFiles`] and gets back a [`Plan`]. Golden tests render the seed's files byte for byte, and
//! `berth-agent plan` shows the plan without touching the host.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::{context, Environment, UndefinedBehavior};
use sha2::{Digest, Sha256};

use crate::config::{Config, Role};
use crate::discovery::{Condition, Membership, Node};
use crate::host::UnitOp;
use crate::hosts;
use crate::profile::{parse_mode, Profile};

pub const HOSTS_PATH: &str = "/etc/hosts";
const SHIPPED_UNITS: &str = "/usr/lib/systemd/system";
const LOCAL_UNITS: &str = "/etc/systemd/system";

/// A file as it is on the host now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    pub content: Vec<u8>,
    pub mode: u32,
}

/// The host's current files, by absolute path (relative to the host root). A path missing from
/// the map does not exist.
pub type HostFiles = BTreeMap<String, HostFile>;

/// What the planner needs besides the host's files.
pub struct Inputs<'a> {
    pub node: &'a Node,
    pub config: &'a Config,
    pub membership: &'a Membership,
    pub profile: &'a Profile,
    /// Units whose restart a previous run decided on but did not finish (it crashed or failed).
    pub pending_restarts: &'a BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    Create,
    Update,
    Unchanged,
    Remove,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FilePlan {
    pub path: String,
    pub action: FileAction,
    /// Octal, as `ls -l` users read it: "0644".
    pub mode: String,
    /// SHA-256 of the desired content (absent for a removal).
    pub sha256: Option<String>,
    /// Units restarted because this file changes.
    pub restarts: Vec<String>,
    #[serde(skip)]
    pub content: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UnitPlan {
    pub unit: String,
    pub actions: Vec<UnitOp>,
    /// Why a restart is planned: the changed inputs, or "pending" from a previous run.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub because: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub instance_id: String,
    pub node: String,
    pub role: Role,
    pub profile: String,
    pub files: Vec<FilePlan>,
    /// systemd must re-read unit files before any unit action.
    pub reload: bool,
    pub units: Vec<UnitPlan>,
}

impl Plan {
    pub fn changed_files(&self) -> impl Iterator<Item = &FilePlan> {
        self.files
            .iter()
            .filter(|f| f.action != FileAction::Unchanged)
    }

    pub fn restarts(&self) -> BTreeSet<String> {
        self.units
            .iter()
            .filter(|u| u.actions.contains(&UnitOp::Restart))
            .map(|u| u.unit.clone())
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the cluster is not ready: {0}")]
    NotReady(Condition),
    #[error("profile {profile}: template `{template}` failed: {message}")]
    Template {
        profile: String,
        template: String,
        message: String,
    },
}

/// The host paths the plan reads: the profile's files for this role, `/etc/hosts`, and both
/// copies of each fixed unit.
pub fn paths_of_interest(profile: &Profile, role: Role) -> Vec<String> {
    let mut p: Vec<String> = profile.files_for(role).map(|f| f.path.clone()).collect();
    p.push(HOSTS_PATH.to_string());
    for fix in &profile.unit_fixes {
        p.push(format!("{SHIPPED_UNITS}/{}", fix.unit));
        p.push(format!("{LOCAL_UNITS}/{}", fix.unit));
    }
    p
}

/// A desired file: content, or `None` to have it removed.
struct Desired {
    path: String,
    content: Option<Vec<u8>>,
    mode: u32,
}

/// Plans the convergence of this node.
pub fn plan(inputs: &Inputs<'_>, current: &HostFiles) -> Result<Plan, PlanError> {
    let desired = desired_files(inputs, current)?;
    let role = inputs.node.role;
    let profile = inputs.profile;

    let mut files = Vec::with_capacity(desired.len());
    let mut changed: BTreeSet<&str> = BTreeSet::new();
    for d in &desired {
        let now = current.get(&d.path);
        let action = match (&d.content, now) {
            (Some(_), None) => FileAction::Create,
            (Some(c), Some(f)) if *c != f.content || d.mode != f.mode => FileAction::Update,
            (Some(_), Some(_)) => FileAction::Unchanged,
            (None, Some(_)) => FileAction::Remove,
            (None, None) => continue,
        };
        if action != FileAction::Unchanged {
            changed.insert(&d.path);
        }
        files.push(FilePlan {
            path: d.path.clone(),
            action,
            mode: format!("{:04o}", d.mode),
            sha256: d.content.as_ref().map(|c| hex::encode(Sha256::digest(c))),
            restarts: Vec::new(),
            content: d.content.clone(),
        });
    }

    let units_of_role = profile.units_for(role);
    let mut units = Vec::new();
    for unit in &units_of_role.run {
        let mut because: Vec<String> = profile
            .inputs
            .get(unit)
            .into_iter()
            .flatten()
            .filter(|f| changed.contains(f.as_str()))
            .cloned()
            .collect();
        if inputs.pending_restarts.contains(unit) && because.is_empty() {
            because.push("pending from an earlier run".to_string());
        }
        let first = if because.is_empty() {
            UnitOp::Start
        } else {
            UnitOp::Restart
        };
        units.push(UnitPlan {
            unit: unit.clone(),
            actions: vec![first, UnitOp::Enable],
            because,
        });
    }
    for unit in &units_of_role.halt {
        units.push(UnitPlan {
            unit: unit.clone(),
            actions: vec![UnitOp::Stop, UnitOp::Disable],
            because: Vec::new(),
        });
    }
    for f in &mut files {
        f.restarts = units
            .iter()
            .filter(|u| u.because.contains(&f.path))
            .map(|u| u.unit.clone())
            .collect();
    }
    let reload = changed
        .iter()
        .any(|p| p.starts_with(&format!("{LOCAL_UNITS}/")));

    Ok(Plan {
        instance_id: inputs.node.instance_id.clone(),
        node: inputs.node.name.clone(),
        role,
        profile: profile.name.clone(),
        files,
        reload,
        units,
    })
}

fn desired_files(inputs: &Inputs<'_>, current: &HostFiles) -> Result<Vec<Desired>, PlanError> {
    let Some(master) = inputs.membership.master() else {
        return Err(PlanError::NotReady(inputs.membership.condition()));
    };
    let profile = inputs.profile;
    let node = inputs.node;
    let config = inputs.config;

    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    let minions: Vec<&str> = inputs
        .membership
        .minions()
        .map(|n| n.name.as_str())
        .collect();
    let nodes: Vec<_> = inputs
        .membership
        .nodes
        .iter()
        .map(|n| context! { name => n.name, ip => n.private_ip.to_string(), role => n.role.as_str() })
        .collect();
    let ctx = context! {
        node => context! {
            name => node.name,
            ip => node.private_ip.to_string(),
            role => node.role.as_str(),
            instance_id => node.instance_id,
        },
        master => context! { name => master.name, ip => master.private_ip.to_string() },
        minions => minions,
        nodes => nodes,
        cluster => config.cluster,
        kubernetes => context! {
            log_level => config.kubernetes.log_level,
            allow_privileged => if config.kubernetes.allow_privileged { "true" } else { "false" },
            service_cidr => config.kubernetes.service_cidr,
        },
    };

    let mut out = Vec::new();
    for f in profile.files_for(node.role) {
        let template_error = |e: minijinja::Error| PlanError::Template {
            profile: profile.name.clone(),
            template: f.template.clone(),
            message: format!("{e:#}"),
        };
        let src = &profile.templates[&f.template];
        let text = env.render_str(src, &ctx).map_err(template_error)?;
        out.push(Desired {
            path: f.path.clone(),
            content: Some(text.into_bytes()),
            mode: parse_mode(&f.mode).unwrap_or(0o644),
        });
    }

    let hosts_now = current.get(HOSTS_PATH);
    let hosts_text = hosts_now
        .map(|f| String::from_utf8_lossy(&f.content).into_owned())
        .unwrap_or_default();
    let block = config
        .manage_hosts
        .then(|| hosts::block(&inputs.membership.nodes));
    let merged = hosts::merge(&hosts_text, block.as_deref());
    if hosts_now.is_some() || block.is_some() {
        out.push(Desired {
            path: HOSTS_PATH.to_string(),
            content: Some(merged.into_bytes()),
            mode: hosts_now.map_or(0o644, |f| f.mode),
        });
    }

    for fix in &profile.unit_fixes {
        let shipped_path = format!("{SHIPPED_UNITS}/{}", fix.unit);
        let local_path = format!("{LOCAL_UNITS}/{}", fix.unit);
        let header = fix_header(&shipped_path, fix);
        let shipped = current
            .get(&shipped_path)
            .map(|f| String::from_utf8_lossy(&f.content).into_owned());
        let needed = shipped
            .as_deref()
            .filter(|s| fix.replace.iter().any(|r| s.contains(&r.from)));
        match needed {
            Some(s) => {
                let mut fixed = s.to_string();
                for r in &fix.replace {
                    fixed = fixed.replace(&r.from, &r.to);
                }
                out.push(Desired {
                    path: local_path,
                    content: Some(format!("{header}{fixed}").into_bytes()),
                    mode: 0o644,
                });
            }
            None => {
                // Remove the /etc copy only when berth wrote it: an operator's own override
                // of the unit is theirs.
                let ours = current
                    .get(&local_path)
                    .is_some_and(|f| f.content.starts_with(FIX_MARK.as_bytes()));
                if ours {
                    out.push(Desired {
                        path: local_path,
                        content: None,
                        mode: 0o644,
                    });
                }
            }
        }
    }
    Ok(out)
}

const FIX_MARK: &str = "# Written by berth-agent from ";

fn fix_header(shipped: &str, fix: &crate::profile::UnitFix) -> String {
    let mut h = format!("{FIX_MARK}{shipped}");
    for r in &fix.replace {
        h.push_str(&format!(", {} replaced by {}", r.from, r.to));
    }
    h.push_str(".\n");
    if !fix.why.is_empty() {
        h.push_str(&format!("# Why: {}.\n", fix.why));
    }
    h.push_str(
        "# Re-derived at every run; removed when the shipped unit no longer needs the fix.\n",
    );
    h
}

/// A human reading of the plan, as `berth-agent plan` prints it.
pub fn render_text(plan: &Plan) -> String {
    let mut s = format!(
        "node {} ({}, {}), profile {}\n",
        plan.node, plan.instance_id, plan.role, plan.profile
    );
    s.push_str("files:\n");
    for f in &plan.files {
        let mark = match f.action {
            FileAction::Create => "+",
            FileAction::Update => "~",
            FileAction::Unchanged => "=",
            FileAction::Remove => "-",
        };
        s.push_str(&format!(
            "  {mark} {:<42} {:<9} {}",
            f.path,
            format!("{:?}", f.action).to_lowercase(),
            f.mode
        ));
        if !f.restarts.is_empty() {
            s.push_str(&format!("  restarts {}", f.restarts.join(", ")));
        }
        s.push('\n');
    }
    if plan.reload {
        s.push_str("systemd: daemon-reload\n");
    }
    s.push_str("units:\n");
    for u in &plan.units {
        let ops: Vec<String> = u.actions.iter().map(|o| o.to_string()).collect();
        s.push_str(&format!("  {:<34} {}", u.unit, ops.join(", ")));
        if !u.because.is_empty() {
            s.push_str(&format!("  ({} changed)", u.because.join(", ")));
        }
        s.push('\n');
    }
    s
}
