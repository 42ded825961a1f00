//! One convergence of the node, and the reconcile loop around it.
//!
//! Order of a run: sources (IMDS) → config (all layers validated before anything is written) →
//! profile → state → the OS upgrade, once per instance → discovery (EC2) → plan → files →
//! daemon-reload → unit actions → state. Bad input stops the run before the first write.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use url::Url;

use crate::apply::{self, host_path, FileError};
use crate::config::{Config, ConfigError, Layer, Role, UpgradeFailure};
use crate::discovery::{self, Condition, Me, Membership, Node};
use crate::host::{Host, HostError, UnitOp, UpgradeOutcome};
use crate::plan::{self, Plan, PlanError};
use crate::profile::{Profile, ProfileError};
use crate::sources::{Remote, SourceError, Sources, TagSource};
use crate::state::{now_secs, Phase, State, StateError, UpgradeRecord};

/// Image defaults, then the host's own file, both below the tags and user-data.
const IMAGE_CONFIG: &str = "/usr/share/berth/config.yaml";
const HOST_CONFIG: &str = "/etc/berth/config.yaml";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// How long to wait for systemd to confirm it read READY=1 before the reboot request. PID 1
/// answers in microseconds; a bound is only for a manager that holds the descriptor.
const NOTIFY_BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    pub imds_endpoints: Vec<Url>,
    pub ec2_endpoint: Option<Url>,
    /// False with `--no-host-actions`: unit and upgrade actions are recorded, not carried out.
    pub host_actions: bool,
}

/// Exit codes, part of the CLI's interface (README, "Exit codes").
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const BAD_INPUT: i32 = 3;
    pub const REMOTE: i32 = 4;
    pub const HOST: i32 = 5;
    pub const NOT_READY: i32 = 6;
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("reading {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "this instance has no role: tag it `role=master` or `role=minion`, or set `role:` in \
         user-data (tags came from {0})"
    )]
    NoRole(&'static str),
    #[error("user-data is not UTF-8 text; berth reads user-data as YAML: {0}")]
    UserDataNotText(std::str::Utf8Error),
    #[error(
        "this instance ({instance_id}) has no usable name: its Name tag is not an RFC 1123 host \
         name and neither is the first label of its private DNS name {dns:?}; set a Name tag \
         such as `fed-minion-3`"
    )]
    NoName { instance_id: String, dns: String },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(
        "the OS upgrade failed and `upgrade_failure: block` keeps the node unconfigured: {0}; \
         the next run tries again (set `upgrade_failure: continue` to configure the booted \
         deployment instead)"
    )]
    UpgradeBlocked(String),
    #[error("{0}")]
    NotReady(Condition),
    #[error(transparent)]
    Template(PlanError),
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_)
            | RunError::Profile(_)
            | RunError::ReadConfig { .. }
            | RunError::NoRole(_)
            | RunError::UserDataNotText(_)
            | RunError::NoName { .. }
            | RunError::Template(_) => exit::BAD_INPUT,
            RunError::Source(_) => exit::REMOTE,
            RunError::State(_) | RunError::File(_) | RunError::Host(_) => exit::HOST,
            RunError::UpgradeBlocked(_) => exit::HOST,
            RunError::NotReady(_) => exit::NOT_READY,
        }
    }
}

impl From<PlanError> for RunError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::NotReady(c) => RunError::NotReady(c),
            other => RunError::Template(other),
        }
    }
}

/// Everything known before planning: validated config, this node, the cluster.
#[derive(Debug, Clone)]
pub struct Context {
    pub sources: Sources,
    pub config: Config,
    pub profile: Profile,
    pub node: Node,
    pub membership: Membership,
    /// Instances DescribeInstances returned (the pollers sharing the EC2 budget), and pages.
    pub instances_seen: usize,
    pub pages: u32,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Converged {
        files_changed: usize,
        restarts: BTreeSet<String>,
        /// Members of the cluster now.
        members: usize,
        /// Instances DescribeInstances returned and the pages it took: the poll interval's inputs.
        instances_seen: usize,
        pages: u32,
    },
    /// The OS upgrade staged a deployment and the reboot was requested.
    Rebooting,
}

/// The report `berth-agent plan` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanReport {
    pub instance_id: String,
    pub node: String,
    pub role: Role,
    pub profile: String,
    pub cluster: Option<String>,
    pub tags_from: TagSource,
    pub condition: String,
    pub upgrade: String,
    pub membership: Vec<Node>,
    pub notes: Vec<String>,
    pub files: Vec<plan::FilePlan>,
    pub reload: bool,
    pub units: Vec<plan::UnitPlan>,
}

pub struct Agent {
    pub opts: Options,
    pub remote: Remote,
    crash_at: Option<u32>,
    steps: u32,
    last_config: Option<Config>,
}

impl Agent {
    pub fn new(opts: Options) -> Agent {
        let remote = Remote::new(opts.imds_endpoints.clone(), opts.ec2_endpoint.clone());
        // A test hook for crash safety: abort right after the Nth host-changing step of the run
        // (each file, the reload, each unit operation), as a power cut would.
        let crash_at = std::env::var("BERTH_CRASH_AT")
            .ok()
            .and_then(|s| s.parse().ok());
        Agent {
            opts,
            remote,
            crash_at,
            steps: 0,
            last_config: None,
        }
    }

    /// The configuration of the last run that got that far (the daemon's poll settings).
    pub fn last_config(&self) -> Option<&Config> {
        self.last_config.as_ref()
    }

    fn root(&self) -> &Path {
        &self.opts.root
    }

    fn step(&mut self, what: &str) {
        self.steps += 1;
        log::debug!("step {}: {what}", self.steps);
        if self.crash_at == Some(self.steps) {
            log::error!("BERTH_CRASH_AT={}: aborting after {what}", self.steps);
            std::process::abort();
        }
    }

    /// Sources, config and profile: everything that can be wrong with the input, checked before
    /// anything is written.
    async fn inputs(&mut self) -> Result<(Sources, Config, Profile, Role), RunError> {
        let root = self.opts.root.clone();
        let mut layers: Vec<(String, Layer)> = Vec::new();
        for p in [IMAGE_CONFIG, HOST_CONFIG] {
            let full = host_path(&root, p);
            match std::fs::read_to_string(&full) {
                Ok(t) => layers.push((p.to_string(), Layer::parse(p, &t)?)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(RunError::ReadConfig { path: full, source }),
            }
        }
        // The files may name the EC2 endpoint, which DescribeTags needs before the tags and
        // user-data layers exist.
        let files = Config::merge(layers.iter().map(|(n, l)| (n.as_str(), l)))?;
        self.remote
            .configure_ec2_endpoint(files.ec2_endpoint.as_deref());
        let sources = self.remote.sources().await?;
        let tag_source = match sources.tag_source {
            TagSource::Imds => "instance tags (IMDS)",
            TagSource::DescribeTags => "instance tags (DescribeTags)",
        };
        layers.push((tag_source.to_string(), Layer::from_tags(&sources.tags)));
        if let Some(ud) = &sources.user_data {
            let text = std::str::from_utf8(ud).map_err(RunError::UserDataNotText)?;
            layers.push(("user-data".to_string(), Layer::parse("user-data", text)?));
        }
        let config = Config::merge(layers.iter().map(|(n, l)| (n.as_str(), l)))?;
        self.remote
            .configure_ec2_endpoint(config.ec2_endpoint.as_deref());
        let role = config.role.ok_or(RunError::NoRole(tag_source))?;
        let profile = Profile::find(&root, &config.profile)?;
        self.last_config = Some(config.clone());
        Ok((sources, config, profile, role))
    }

    /// Discovery: who is in the cluster now.
    async fn context(
        &mut self,
        sources: Sources,
        config: Config,
        profile: Profile,
        role: Role,
        previous: Option<&Membership>,
    ) -> Result<Context, RunError> {
        let filters = discovery::filters(&sources.identity, &config);
        let (instances, pages) = self
            .remote
            .describe_instances(&sources.identity.region, &filters)
            .await?;
        let me = Me {
            identity: &sources.identity,
            role,
            tags: &sources.tags,
        };
        let membership = discovery::membership_after(&me, &config, &instances, previous);
        for n in &membership.notes {
            log::warn!("discovery: {n}");
        }
        let node = membership
            .node(&sources.identity.instance_id)
            .cloned()
            .ok_or_else(|| RunError::NoName {
                instance_id: sources.identity.instance_id.clone(),
                dns: sources.identity.private_dns_name.clone(),
            })?;
        Ok(Context {
            instances_seen: instances.len(),
            pages,
            sources,
            config,
            profile,
            node,
            membership,
        })
    }

    fn boot_id(&self) -> String {
        let under_root = host_path(self.root(), BOOT_ID);
        std::fs::read_to_string(&under_root)
            .or_else(|_| std::fs::read_to_string(BOOT_ID))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string())
    }

    fn read_plan(&self, ctx: &Context, state: &State) -> Result<Plan, RunError> {
        let paths = plan::paths_of_interest(&ctx.profile, ctx.node.role);
        let current = apply::read_host_files(self.root(), &paths)?;
        let inputs = plan::Inputs {
            node: &ctx.node,
            config: &ctx.config,
            membership: &ctx.membership,
            profile: &ctx.profile,
            pending_restarts: &state.pending_restarts,
        };
        Ok(plan::plan(&inputs, &current)?)
    }

    /// What a run would do, without changing anything (not even the state).
    pub async fn plan(&mut self) -> Result<PlanReport, RunError> {
        let (sources, config, profile, role) = self.inputs().await?;
        let state = State::load(self.root(), &sources.identity.instance_id)?;
        let upgrade = upgrade_preview(&state, &config, &self.boot_id());
        let ctx = self
            .context(sources, config, profile, role, state.membership.as_ref())
            .await?;
        let mut report = PlanReport {
            instance_id: ctx.node.instance_id.clone(),
            node: ctx.node.name.clone(),
            role,
            profile: ctx.profile.name.clone(),
            cluster: ctx.config.cluster.clone(),
            tags_from: ctx.sources.tag_source,
            condition: ctx.membership.condition().to_string(),
            upgrade,
            membership: ctx.membership.nodes.clone(),
            notes: ctx.membership.notes.clone(),
            files: Vec::new(),
            reload: false,
            units: Vec::new(),
        };
        match self.read_plan(&ctx, &state) {
            Ok(p) => {
                report.files = p.files;
                report.reload = p.reload;
                report.units = p.units;
            }
            Err(RunError::NotReady(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(report)
    }

    /// One convergence of the node.
    pub async fn converge<H: Host>(&mut self, host: &mut H) -> Result<Outcome, RunError> {
        self.steps = 0;
        let (sources, config, profile, role) = self.inputs().await?;
        let root = self.opts.root.clone();
        let mut state = State::load(&root, &sources.identity.instance_id)?;
        state.role = Some(role);
        state.cluster = config.cluster.clone();

        let boot_id = self.boot_id();
        if self
            .upgrade_step(host, &mut state, &config, &boot_id)
            .await?
        {
            // The reboot is on its way; the next boot continues from the state.
            return Ok(Outcome::Rebooting);
        }

        let ctx = match self
            .context(sources, config, profile, role, state.membership.as_ref())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                record_failure(&root, &mut state, &e);
                return Err(e);
            }
        };
        state.node = Some(ctx.node.name.clone());
        let plan = match self.read_plan(&ctx, &state) {
            Ok(p) => p,
            Err(RunError::NotReady(c)) => {
                log::warn!("{c}");
                state.phase = Phase::Waiting;
                state.condition = Some(c.to_string());
                state.membership = Some(ctx.membership.clone());
                state.save(&root)?;
                return Err(RunError::NotReady(c));
            }
            Err(e) => {
                record_failure(&root, &mut state, &e);
                return Err(e);
            }
        };
        match self.apply(host, &mut state, &ctx, &plan).await {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                record_failure(&root, &mut state, &e);
                Err(e)
            }
        }
    }

    async fn apply<H: Host>(
        &mut self,
        host: &mut H,
        state: &mut State,
        ctx: &Context,
        plan: &Plan,
    ) -> Result<Outcome, RunError> {
        let root = self.opts.root.clone();
        let restarts = plan.restarts();
        let changed_before = state.membership.as_ref() != Some(&ctx.membership)
            || state.phase != Phase::Converged
            || plan.changed_files().next().is_some()
            || !restarts.is_empty();

        // Remember the restarts before touching a file: a crash after the write would otherwise
        // leave a unit running with its old configuration, and the next run would see no change.
        state.pending_restarts.extend(restarts.iter().cloned());
        state.phase = Phase::Applying;
        state.membership = Some(ctx.membership.clone());
        state.condition = Some(ctx.membership.condition().to_string());
        if changed_before {
            state.save(&root)?;
        }

        let mut written = Vec::new();
        apply::apply_files(&root, plan, |p| written.push(p.to_string()))?;
        for p in &written {
            log::info!("wrote {p}");
        }
        for p in &written {
            self.step(&format!("file {p}"));
        }
        if plan.reload {
            host.reload().await?;
            self.step("daemon-reload");
        }
        for u in &plan.units {
            for op in &u.actions {
                host.unit_op(&u.unit, *op).await?;
                if *op == UnitOp::Restart {
                    log::info!("restarted {} ({} changed)", u.unit, u.because.join(", "));
                    state.pending_restarts.remove(&u.unit);
                    // A restart done is recorded at once, so that a crash later in the run
                    // does not restart the unit again; a recorded-only restart needs no such care.
                    if self.opts.host_actions {
                        state.save(&root)?;
                    }
                }
                self.step(&format!("{op} {}", u.unit));
            }
        }
        state.phase = Phase::Converged;
        state.last_error = None;
        state.last_plan = Some(plan.clone());
        state.runs += 1;
        if changed_before {
            state.save(&root)?;
        }
        Ok(Outcome::Converged {
            files_changed: written.len(),
            restarts,
            members: ctx.membership.nodes.len(),
            instances_seen: ctx.instances_seen,
            pages: ctx.pages,
        })
    }

    /// The OS upgrade, once per instance. Returns true when a reboot was requested.
    async fn upgrade_step<H: Host>(
        &mut self,
        host: &mut H,
        state: &mut State,
        config: &Config,
        boot_id: &str,
    ) -> Result<bool, RunError> {
        let root = self.opts.root.clone();
        let record = |outcome: &str, detail: Option<String>| UpgradeRecord {
            boot_id: boot_id.to_string(),
            outcome: outcome.to_string(),
            detail,
            at: now_secs(),
            reboot_requested: false,
        };
        if !config.upgrade {
            if state.upgrade.is_none() {
                state.upgrade = Some(record("skipped", Some("upgrade: false".into())));
            }
            return Ok(false);
        }
        match &state.upgrade {
            None => {}
            Some(r) if r.outcome == "failed" && config.upgrade_failure == UpgradeFailure::Block => {
            }
            Some(r) if r.outcome == "staged" && r.boot_id == boot_id => {
                if !r.reboot_requested {
                    // Staged, then stopped before asking for the reboot: ask now, once.
                    return self.request_reboot(host, state).await.map(|()| true);
                }
                log::warn!(
                    "the reboot into the upgraded deployment was requested in this boot and has \
                     not happened; configuring the node on the booted deployment (berth never \
                     requests it twice)"
                );
                return Ok(false);
            }
            Some(_) => return Ok(false),
        }

        log::info!(
            "first boot of {}: upgrading the OS (rpm-ostree upgrade)",
            state.instance_id
        );
        match host.upgrade_os().await {
            Ok(UpgradeOutcome::Staged { from, to }) => {
                log::info!("rpm-ostree staged deployment {to} (booted: {from}); rebooting");
                state.upgrade = Some(record("staged", Some(format!("{from} -> {to}"))));
                state.phase = Phase::UpgradeRequested;
                self.request_reboot(host, state).await?;
                Ok(true)
            }
            Ok(UpgradeOutcome::NoUpgrade) => {
                let outcome = if self.opts.host_actions {
                    "no-upgrade"
                } else {
                    "recorded"
                };
                log::info!("OS upgrade: {outcome}");
                state.upgrade = Some(record(outcome, None));
                Ok(false)
            }
            Err(e) => {
                log::error!("OS upgrade failed: {e}");
                state.upgrade = Some(record("failed", Some(e.to_string())));
                match config.upgrade_failure {
                    UpgradeFailure::Block => {
                        state.phase = Phase::UpgradeFailed;
                        state.last_error = Some(e.to_string());
                        state.save(&root)?;
                        Err(RunError::UpgradeBlocked(e.to_string()))
                    }
                    UpgradeFailure::Continue => Ok(false),
                }
            }
        }
    }

    async fn request_reboot<H: Host>(
        &mut self,
        host: &mut H,
        state: &mut State,
    ) -> Result<(), RunError> {
        // Recorded before asking: whatever happens next, this instance asks at most once.
        if let Some(r) = state.upgrade.as_mut() {
            r.reboot_requested = true;
        }
        state.phase = Phase::UpgradeRequested;
        state.save(&self.opts.root)?;
        // Ready before the reboot is asked for: the shutdown it starts would otherwise cancel
        // a start job still waiting for READY=1 (a blocking `systemctl start` would fail with
        // "job canceled"). The barrier makes sure systemd read it before logind's request.
        crate::notify::notify("READY=1\nSTATUS=rebooting into the upgraded deployment");
        crate::notify::barrier(NOTIFY_BARRIER_TIMEOUT);
        host.reboot().await?;
        Ok(())
    }
}

fn record_failure(root: &Path, state: &mut State, e: &RunError) {
    state.phase = Phase::Failed;
    state.last_error = Some(e.to_string());
    if let Err(se) = state.save(root) {
        log::error!("saving the state after a failure: {se}");
    }
}

/// What `plan` says about the upgrade step.
fn upgrade_preview(state: &State, config: &Config, boot_id: &str) -> String {
    if !config.upgrade {
        return "skipped (upgrade: false)".to_string();
    }
    match &state.upgrade {
        None => "rpm-ostree upgrade, then a reboot if a new deployment is staged (first boot of \
                 this instance)"
            .to_string(),
        Some(r) if r.outcome == "failed" && config.upgrade_failure == UpgradeFailure::Block => {
            format!(
                "retry rpm-ostree upgrade (it failed: {})",
                r.detail.as_deref().unwrap_or("?")
            )
        }
        Some(r) if r.outcome == "staged" && r.boot_id == boot_id => {
            "none: a reboot into the staged deployment is pending".to_string()
        }
        Some(r) => format!("done ({})", r.outcome),
    }
}
