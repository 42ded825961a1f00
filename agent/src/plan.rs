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
use crate::profile::Profile;

pub const HOSTS_PATH: &str = "/etc/hosts";
const SHIPPED_UNITS: &str = "/usr/lib/systemd/system";
const LOCAL_UNITS: &str = "/etc/systemd/system";

/// A file's permission bits (`st_mode & 0o7777`: the rwx bits of owner, group and others, and
/// setuid, setgid and sticky). Written as `ls -l` users and `chmod` read it: four octal digits,
/// "0644", which is also its shape in plan JSON, profiles and the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mode(u32);

impl Mode {
    /// rw-r--r--: what berth gives a file whose profile says nothing else, and `/etc/hosts`.
    pub const DEFAULT: Mode = Mode(0o644);

    /// `None` when `bits` has bits outside 0o7777.
    pub const fn new(bits: u32) -> Option<Mode> {
        if bits <= 0o7777 {
            Some(Mode(bits))
        } else {
            None
        }
    }

    /// The mode of a file on the host: its `st_mode` with the file type bits masked off.
    pub const fn from_st_mode(st_mode: u32) -> Mode {
        Mode(st_mode & 0o7777)
    }

    /// The permission bits, for `chmod(2)` and `open(2)`.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// An octal mode of three or four digits ("644", "0644", "4755"); `None` for anything else.
    pub fn parse(s: &str) -> Option<Mode> {
        if !(3..=4).contains(&s.len()) || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return None;
        }
        u32::from_str_radix(s, 8).ok().and_then(Mode::new)
    }
}

impl Default for Mode {
    fn default() -> Self {
        Mode::DEFAULT
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl serde::Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Mode::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "mode `{s}` is not an octal mode like \"0644\" (3 or 4 digits 0 to 7)"
            ))
        })
    }
}

/// A file as it is on the host now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    pub content: Vec<u8>,
    /// Permission bits (`st_mode & 0o7777`).
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
    /// Extra names for the managed block of `/etc/hosts` (address, name): the kubeadm
    /// profile's API name.
    pub aliases: &'a [(std::net::Ipv4Addr, String)],
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
    /// The mode the file gets; "0644" in JSON.
    pub mode: Mode,
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
    mode: Mode,
}

/// Plans the convergence of this node.
pub fn plan(inputs: &Inputs<'_>, current: &HostFiles) -> Result<Plan, PlanError> {
    let desired = desired_files(inputs, current)?;
    let role = inputs.node.role;
    let profile = inputs.profile;

    let mut files = Vec::with_capacity(desired.len());
    // Paths whose content changes: what restarts a unit, or reloads systemd. A file whose only
    // drift is its mode is updated, but what its readers read is the same.
    let mut changed: BTreeSet<&str> = BTreeSet::new();
    for d in &desired {
        let now = current.get(&d.path);
        let (action, content_changes) = match (&d.content, now) {
            (Some(_), None) => (FileAction::Create, true),
            (Some(c), Some(f)) if *c != f.content => (FileAction::Update, true),
            (Some(_), Some(f)) if d.mode != Mode::from_st_mode(f.mode) => {
                (FileAction::Update, false)
            }
            (Some(_), Some(_)) => (FileAction::Unchanged, false),
            (None, Some(_)) => (FileAction::Remove, true),
            (None, None) => continue,
        };
        if content_changes {
            changed.insert(&d.path);
        }
        files.push(FilePlan {
            path: d.path.clone(),
            action,
            mode: d.mode,
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
    // A profile with an etcd tier has any number of masters; templates see the first by name.
    let ha = inputs.profile.etcd.is_some();
    let master = match inputs.membership.condition_with(ha) {
        Condition::Ready => inputs.membership.masters().next(),
        _ => None,
    };
    let Some(master) = master else {
        return Err(PlanError::NotReady(inputs.membership.condition_with(ha)));
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
            mode: f.mode,
        });
    }

    let hosts_now = current.get(HOSTS_PATH);
    let hosts_text = hosts_now
        .map(|f| String::from_utf8_lossy(&f.content).into_owned())
        .unwrap_or_default();
    let block = config
        .manage_hosts
        .then(|| hosts::block_with(&inputs.membership.nodes, inputs.aliases));
    let merged = hosts::merge(&hosts_text, block.as_deref());
    if hosts_now.is_some() || block.is_some() {
        out.push(Desired {
            path: HOSTS_PATH.to_string(),
            content: Some(merged.into_bytes()),
            mode: hosts_now.map_or(Mode::DEFAULT, |f| Mode::from_st_mode(f.mode)),
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
                    mode: Mode::DEFAULT,
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
                        mode: Mode::DEFAULT,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    const SEED: [(&str, &str, Role, &str); 3] = [
        (
            "fed-master",
            "i-0a1b2c3d4e5f60001",
            Role::Master,
            "172.30.0.246",
        ),
        (
            "fed-minion",
            "i-0a1b2c3d4e5f60002",
            Role::Minion,
            "172.30.0.43",
        ),
        (
            "fed-minion-2",
            "i-0a1b2c3d4e5f60003",
            Role::Minion,
            "172.30.0.11",
        ),
    ];
    /// The `/etc/hosts` of a fresh Fedora Atomic 21 instance, as the end-to-end harness lays it
    /// out (tests/src/agent.rs, `fedora_root`).
    const FEDORA_HOSTS: &str = "127.0.0.1   localhost localhost.localdomain\n::1         localhost6 localhost6.localdomain6\n";
    const KUBELET: &str = "/etc/systemd/system/kubelet.service";
    const SHIPPED_KUBELET: &str = "/usr/lib/systemd/system/kubelet.service";

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn membership() -> Membership {
        let mut nodes: Vec<Node> = SEED
            .iter()
            .map(|(name, id, role, ip)| Node {
                name: name.to_string(),
                instance_id: id.to_string(),
                role: *role,
                private_ip: ip.parse().unwrap(),
            })
            .collect();
        nodes.sort();
        Membership {
            nodes,
            notes: Vec::new(),
        }
    }

    fn config(role: Role) -> Config {
        Config {
            role: Some(role),
            cluster: Some("seed".into()),
            ..Config::default()
        }
    }

    fn file(content: &str, mode: u32) -> HostFile {
        HostFile {
            content: content.as_bytes().to_vec(),
            mode,
        }
    }

    fn shipped_kubelet() -> String {
        std::fs::read_to_string(workspace().join("tests/fixtures/fedora-21/units/kubelet.service"))
            .unwrap()
    }

    /// A fresh Fedora Atomic 21 host: its hosts file and the shipped kubelet unit.
    fn fedora() -> HostFiles {
        let mut h = HostFiles::new();
        h.insert(HOSTS_PATH.into(), file(FEDORA_HOSTS, 0o644));
        h.insert(SHIPPED_KUBELET.into(), file(&shipped_kubelet(), 0o644));
        h
    }

    fn plan_for(node: &str, current: &HostFiles, pending: &[&str]) -> Plan {
        let m = membership();
        let node = m.nodes.iter().find(|n| n.name == node).unwrap().clone();
        let profile = Profile::builtin().unwrap();
        let config = config(node.role);
        let pending: BTreeSet<String> = pending.iter().map(|s| s.to_string()).collect();
        let inputs = Inputs {
            node: &node,
            config: &config,
            membership: &m,
            profile: &profile,
            pending_restarts: &pending,
            aliases: &[],
        };
        plan(&inputs, current).unwrap()
    }

    /// The host after the plan is applied.
    fn applied(current: &HostFiles, plan: &Plan) -> HostFiles {
        let mut after = current.clone();
        for f in &plan.files {
            match &f.content {
                Some(c) => {
                    after.insert(
                        f.path.clone(),
                        HostFile {
                            content: c.clone(),
                            mode: f.mode.bits(),
                        },
                    );
                }
                None => {
                    after.remove(&f.path);
                }
            }
        }
        after
    }

    fn converged(node: &str) -> HostFiles {
        let host = fedora();
        let p = plan_for(node, &host, &[]);
        applied(&host, &p)
    }

    fn action<'p>(plan: &'p Plan, path: &str) -> Option<&'p FilePlan> {
        plan.files.iter().find(|f| f.path == path)
    }

    fn ops(plan: &Plan, unit: &str) -> Vec<UnitOp> {
        plan.units
            .iter()
            .find(|u| u.unit == unit)
            .map(|u| u.actions.clone())
            .unwrap_or_default()
    }

    fn golden(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().to_string_lossy();
                    out.insert(format!("/{rel}"), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    /// Every role of the seed's cluster, rendered by the planner alone, gives the golden files
    /// (tests/golden/legacy-2015/) byte for byte, mode 0644, and nothing else.
    #[test]
    fn golden_files_of_every_role() {
        for (name, _, role, _) in SEED {
            let host = fedora();
            let p = plan_for(name, &host, &[]);
            assert_eq!(p.node, name);
            assert_eq!(p.role, role);
            let after = applied(&host, &p);
            let want = golden(&workspace().join("tests/golden/legacy-2015").join(name));
            assert_eq!(
                after.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{name}: the set of files differs"
            );
            for (path, bytes) in &want {
                assert!(
                    after[path].content == *bytes,
                    "{name}: {path} differs from the golden copy:\n{}",
                    String::from_utf8_lossy(&after[path].content)
                );
                assert_eq!(after[path].mode, 0o644, "{name}: {path}");
            }
            for f in &p.files {
                let want_action = if f.path == HOSTS_PATH {
                    FileAction::Update
                } else {
                    FileAction::Create
                };
                assert_eq!(f.action, want_action, "{name}: {}", f.path);
                assert_eq!(
                    f.sha256.as_deref(),
                    Some(hex::encode(Sha256::digest(&want[&f.path])).as_str())
                );
            }
            // A fresh host: the new unit file needs a reload; every unit that runs restarts,
            // but docker, which reads none of berth's files.
            assert!(p.reload, "{name}");
            let profile = Profile::builtin().unwrap();
            for u in &profile.units_for(role).run {
                let reads = profile.inputs.get(u).is_some_and(|i| !i.is_empty());
                let first = if reads {
                    UnitOp::Restart
                } else {
                    UnitOp::Start
                };
                assert_eq!(ops(&p, u), [first, UnitOp::Enable], "{name}: {u}");
            }
        }
    }

    #[test]
    fn a_converged_host_plans_nothing() {
        for (name, ..) in SEED {
            let host = converged(name);
            let p = plan_for(name, &host, &[]);
            assert!(p.changed_files().next().is_none(), "{name}: {:?}", p.files);
            assert!(!p.reload, "{name}");
            assert!(p.restarts().is_empty(), "{name}");
            assert!(p.units.iter().all(|u| u.because.is_empty()), "{name}");
        }
        let p = plan_for("fed-master", &converged("fed-master"), &[]);
        assert_eq!(
            ops(&p, "etcd.service"),
            [UnitOp::Start, UnitOp::Enable],
            "a converged unit is started (a no-op when running) and enabled"
        );
        assert_eq!(ops(&p, "kubelet.service"), [UnitOp::Stop, UnitOp::Disable]);
    }

    #[test]
    fn a_file_whose_only_drift_is_its_mode() {
        let mut host = converged("fed-minion");
        host.get_mut("/etc/kubernetes/config").unwrap().mode = 0o600;
        let p = plan_for("fed-minion", &host, &[]);
        let f = action(&p, "/etc/kubernetes/config").unwrap();
        assert_eq!(f.action, FileAction::Update);
        assert_eq!(f.mode, Mode::DEFAULT);
        // Its readers read the same bytes: nothing restarts, nothing reloads.
        assert!(f.restarts.is_empty());
        assert!(p.restarts().is_empty(), "{:?}", p.units);
        assert!(!p.reload);
        assert_eq!(p.changed_files().count(), 1);
        let after = applied(&host, &p);
        assert_eq!(after["/etc/kubernetes/config"].mode, 0o644);

        // The hosts file keeps the host's own mode: it is the host's file.
        let mut host = converged("fed-minion");
        host.get_mut(HOSTS_PATH).unwrap().mode = 0o664;
        let p = plan_for("fed-minion", &host, &[]);
        assert_eq!(
            action(&p, HOSTS_PATH).unwrap().action,
            FileAction::Unchanged
        );
        assert_eq!(
            action(&p, HOSTS_PATH).unwrap().mode,
            Mode::new(0o664).unwrap()
        );

        // A unit file whose only drift is its mode needs no daemon-reload.
        let mut host = converged("fed-minion");
        host.get_mut(KUBELET).unwrap().mode = 0o755;
        let p = plan_for("fed-minion", &host, &[]);
        assert_eq!(action(&p, KUBELET).unwrap().action, FileAction::Update);
        assert!(!p.reload);
    }

    #[test]
    fn a_changed_input_restarts_exactly_its_readers() {
        let mut host = converged("fed-master");
        host.get_mut("/etc/kubernetes/controller-manager")
            .unwrap()
            .content = b"edited by hand\n".to_vec();
        let p = plan_for("fed-master", &host, &[]);
        let f = action(&p, "/etc/kubernetes/controller-manager").unwrap();
        assert_eq!(f.action, FileAction::Update);
        assert_eq!(f.restarts, ["kube-controller-manager.service"]);
        assert_eq!(
            p.restarts(),
            BTreeSet::from(["kube-controller-manager.service".to_string()])
        );
        let u = p
            .units
            .iter()
            .find(|u| u.unit == "kube-controller-manager.service")
            .unwrap();
        assert_eq!(u.because, ["/etc/kubernetes/controller-manager"]);
        assert!(!p.reload, "no unit file changed");

        // /etc/kubernetes/config is read by every master unit but etcd.
        let mut host = converged("fed-master");
        host.remove("/etc/kubernetes/config");
        let p = plan_for("fed-master", &host, &[]);
        assert_eq!(
            action(&p, "/etc/kubernetes/config").unwrap().action,
            FileAction::Create
        );
        assert_eq!(
            p.restarts(),
            BTreeSet::from([
                "kube-apiserver.service".to_string(),
                "kube-controller-manager.service".to_string(),
                "kube-scheduler.service".to_string(),
            ])
        );
    }

    #[test]
    fn restarts_left_pending_by_a_crash() {
        // The files were written, then the run died before restarting etcd: the state still
        // lists the restart, and the next plan carries it out although no file changes.
        let host = converged("fed-master");
        let p = plan_for("fed-master", &host, &["etcd.service"]);
        assert!(p.changed_files().next().is_none());
        assert_eq!(ops(&p, "etcd.service"), [UnitOp::Restart, UnitOp::Enable]);
        let u = p.units.iter().find(|u| u.unit == "etcd.service").unwrap();
        assert_eq!(u.because, ["pending from an earlier run"]);
        assert_eq!(
            p.restarts(),
            BTreeSet::from(["etcd.service".to_string()]),
            "only the pending unit restarts"
        );
        // A pending restart of a unit whose input also changed names the change, not both.
        let mut host = converged("fed-master");
        host.get_mut("/etc/etcd/etcd.conf").unwrap().content = b"x".to_vec();
        let p = plan_for("fed-master", &host, &["etcd.service"]);
        let u = p.units.iter().find(|u| u.unit == "etcd.service").unwrap();
        assert_eq!(u.because, ["/etc/etcd/etcd.conf"]);
        // A pending restart of a unit this role halts is not turned into a restart.
        let p = plan_for("fed-master", &converged("fed-master"), &["kubelet.service"]);
        assert_eq!(ops(&p, "kubelet.service"), [UnitOp::Stop, UnitOp::Disable]);
        assert!(p.restarts().is_empty());
    }

    #[test]
    fn the_unit_fix_is_removed_once_the_shipped_unit_no_longer_needs_it() {
        let mut host = converged("fed-minion");
        assert!(host.contains_key(KUBELET));
        let fixed_upstream = shipped_kubelet().replace("docker.socket", "docker.service");
        host.get_mut(SHIPPED_KUBELET).unwrap().content = fixed_upstream.into_bytes();
        let p = plan_for("fed-minion", &host, &[]);
        let f = action(&p, KUBELET).unwrap();
        assert_eq!(f.action, FileAction::Remove);
        assert_eq!(f.sha256, None);
        assert_eq!(f.restarts, ["kubelet.service"]);
        assert!(p.reload, "systemd must forget the removed unit file");
        assert_eq!(ops(&p, "kubelet.service")[0], UnitOp::Restart);
        let after = applied(&host, &p);
        assert!(!after.contains_key(KUBELET));
        // Then the host is converged: nothing more to remove.
        let again = plan_for("fed-minion", &after, &[]);
        assert!(again.changed_files().next().is_none());
        assert!(action(&again, KUBELET).is_none());

        // An operator's own /etc copy (not written by berth) is theirs: never removed.
        let mut host = after.clone();
        host.insert(KUBELET.into(), file("[Unit]\nDescription=mine\n", 0o644));
        let p = plan_for("fed-minion", &host, &[]);
        assert!(action(&p, KUBELET).is_none());
        assert!(!p.reload);
    }

    #[test]
    fn the_unit_fix_follows_the_shipped_unit() {
        // An OS upgrade changes the shipped unit, which still needs the fix: the /etc copy is
        // derived again, systemd reloads, kubelet restarts.
        let mut host = converged("fed-minion");
        let upgraded = format!("{}# upgraded\n", shipped_kubelet());
        host.get_mut(SHIPPED_KUBELET).unwrap().content = upgraded.clone().into_bytes();
        let p = plan_for("fed-minion", &host, &[]);
        let f = action(&p, KUBELET).unwrap();
        assert_eq!(f.action, FileAction::Update);
        let text = String::from_utf8(f.content.clone().unwrap()).unwrap();
        assert!(text.starts_with(FIX_MARK));
        assert!(text.ends_with(&upgraded.replace("docker.socket", "docker.service")));
        assert!(p.reload);
        assert_eq!(f.restarts, ["kubelet.service"]);
        // No shipped unit at all: nothing to fix, and berth's copy goes.
        let mut host = converged("fed-minion");
        host.remove(SHIPPED_KUBELET);
        let p = plan_for("fed-minion", &host, &[]);
        assert_eq!(action(&p, KUBELET).unwrap().action, FileAction::Remove);
    }

    #[test]
    fn reload_only_when_a_unit_file_changed() {
        let host = converged("fed-minion");
        assert!(!plan_for("fed-minion", &host, &[]).reload);
        // Every other file changes: no unit file, no reload.
        let mut other = host.clone();
        for path in [
            "/etc/kubernetes/config",
            "/etc/kubernetes/kubelet",
            HOSTS_PATH,
        ] {
            other.get_mut(path).unwrap().content = b"old\n".to_vec();
        }
        let p = plan_for("fed-minion", &other, &[]);
        assert_eq!(p.changed_files().count(), 3);
        assert!(!p.reload);
        // The /etc unit drifted: reload.
        let mut unit = host.clone();
        unit.get_mut(KUBELET).unwrap().content = b"[Unit]\n".to_vec();
        assert!(plan_for("fed-minion", &unit, &[]).reload);
        // A shipped unit under /usr/lib is read, never written: changing it reloads only through
        // the /etc copy it implies.
        let mut shipped = host.clone();
        shipped.get_mut(SHIPPED_KUBELET).unwrap().mode = 0o600;
        let p = plan_for("fed-minion", &shipped, &[]);
        assert!(!p.reload);
        assert!(action(&p, SHIPPED_KUBELET).is_none());
    }

    #[test]
    fn the_hosts_block_follows_manage_hosts() {
        let host = converged("fed-minion");
        let m = membership();
        let node = m.node("i-0a1b2c3d4e5f60002").unwrap().clone();
        let profile = Profile::builtin().unwrap();
        let config = Config {
            manage_hosts: false,
            ..config(Role::Minion)
        };
        let pending = BTreeSet::new();
        let inputs = Inputs {
            node: &node,
            config: &config,
            membership: &m,
            profile: &profile,
            pending_restarts: &pending,
            aliases: &[],
        };
        let p = plan(&inputs, &host).unwrap();
        let f = action(&p, HOSTS_PATH).unwrap();
        assert_eq!(f.action, FileAction::Update);
        assert_eq!(f.content.as_deref(), Some(FEDORA_HOSTS.as_bytes()));
        // No hosts file and nothing to manage: none is created.
        let mut bare = host.clone();
        bare.remove(HOSTS_PATH);
        let p = plan(&inputs, &bare).unwrap();
        assert!(action(&p, HOSTS_PATH).is_none());
    }

    #[test]
    fn not_ready_without_exactly_one_master() {
        let mut m = membership();
        m.nodes.retain(|n| n.role == Role::Minion);
        let node = m.nodes[0].clone();
        let profile = Profile::builtin().unwrap();
        let config = config(Role::Minion);
        let pending = BTreeSet::new();
        let inputs = Inputs {
            node: &node,
            config: &config,
            membership: &m,
            profile: &profile,
            pending_restarts: &pending,
            aliases: &[],
        };
        assert!(matches!(
            plan(&inputs, &fedora()),
            Err(PlanError::NotReady(Condition::NoMaster))
        ));
    }

    #[test]
    fn mode_reads_and_writes_octal() {
        assert_eq!(Mode::parse("0644"), Mode::new(0o644));
        assert_eq!(Mode::parse("644"), Mode::new(0o644));
        assert_eq!(Mode::parse("4755"), Mode::new(0o4755));
        assert_eq!(Mode::parse("7777").map(Mode::bits), Some(0o7777));
        for bad in [
            "", "64", "99", "999", "0648", "12345", "+644", "0o644", " 644", "rw-",
        ] {
            assert_eq!(Mode::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Mode::new(0o10000), None);
        assert_eq!(Mode::from_st_mode(0o100644), Mode::DEFAULT);
        assert_eq!(Mode::default().to_string(), "0644");
        assert_eq!(Mode::new(0o600).unwrap().to_string(), "0600");
        assert_eq!(Mode::new(0o4755).unwrap().to_string(), "4755");
        assert_eq!(serde_json::to_string(&Mode::DEFAULT).unwrap(), "\"0644\"");
        assert_eq!(
            serde_json::from_str::<Mode>("\"0600\"").unwrap(),
            Mode::new(0o600).unwrap()
        );
        let e = serde_json::from_str::<Mode>("\"0999\"").unwrap_err();
        assert!(e.to_string().contains("not an octal mode"), "{e}");
        assert!(
            serde_json::from_str::<Mode>("420").is_err(),
            "a number is not a mode"
        );
    }

    #[test]
    fn plan_json_keeps_its_shape() {
        let p = plan_for("fed-minion", &fedora(), &[]);
        let v = serde_json::to_value(&p).unwrap();
        let f = &v["files"][0];
        assert_eq!(f["path"], "/etc/etcd/etcd.conf");
        assert_eq!(f["action"], "create");
        assert_eq!(f["mode"], "0644");
        assert!(f.get("content").is_none(), "content never reaches JSON");
        let back: Plan = serde_json::from_value(v).unwrap();
        assert_eq!(back.files[0].mode, Mode::DEFAULT);
        let text = render_text(&p);
        assert!(
            text.lines()
                .any(|l| l.contains("+ /etc/etcd/etcd.conf") && l.ends_with("0644")),
            "{text}"
        );
    }

    #[test]
    fn the_paths_of_interest_are_all_the_plan_reads() {
        let profile = Profile::builtin().unwrap();
        let minion = paths_of_interest(&profile, Role::Minion);
        assert_eq!(
            minion,
            [
                "/etc/etcd/etcd.conf",
                "/etc/kubernetes/config",
                "/etc/kubernetes/kubelet",
                HOSTS_PATH,
                SHIPPED_KUBELET,
                KUBELET,
            ]
        );
        let master = paths_of_interest(&profile, Role::Master);
        assert!(master.contains(&"/etc/kubernetes/controller-manager".to_string()));
        assert!(!master.contains(&"/etc/kubernetes/kubelet".to_string()));
        // A host read through those paths alone plans exactly as the whole host does.
        for (name, _, role, _) in SEED {
            let mut host = converged(name);
            host.insert("/etc/unrelated".into(), file("x", 0o600));
            host.get_mut("/etc/kubernetes/config").unwrap().content = b"drift".to_vec();
            let wanted = paths_of_interest(&profile, role);
            let read: HostFiles = host
                .iter()
                .filter(|(p, _)| wanted.contains(p))
                .map(|(p, f)| (p.clone(), f.clone()))
                .collect();
            assert_eq!(read.len(), host.len() - 1, "{name}");
            assert_eq!(plan_for(name, &read, &[]), plan_for(name, &host, &[]));
        }
    }

    #[test]
    fn the_text_plan_says_why_a_unit_restarts() {
        let mut host = converged("fed-master");
        host.get_mut("/etc/etcd/etcd.conf").unwrap().content = b"x".to_vec();
        let text = render_text(&plan_for("fed-master", &host, &[]));
        assert!(
            text.starts_with(
                "node fed-master (i-0a1b2c3d4e5f60001, master), profile legacy-2015\n"
            ),
            "{text}"
        );
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(needle))
                .unwrap_or_else(|| panic!("no line starting {needle} in:\n{text}"))
                .to_string()
        };
        assert!(line("~ /etc/etcd/etcd.conf").ends_with("0644  restarts etcd.service"));
        assert!(line("= /etc/kubernetes/config").ends_with("unchanged 0644"));
        assert!(line("etcd.service ").ends_with("restart, enable  (/etc/etcd/etcd.conf changed)"));
        assert!(line("kube-apiserver.service").ends_with("start, enable"));
        assert!(line("kubelet.service").ends_with("stop, disable"));
        assert!(!text.contains("daemon-reload"));
        let fresh = render_text(&plan_for("fed-master", &fedora(), &[]));
        assert!(fresh.contains("\nsystemd: daemon-reload\n"), "{fresh}");
        assert!(
            fresh.contains("+ /etc/systemd/system/kubelet.service"),
            "{fresh}"
        );
    }
}
