//! One convergence of the node, and the reconcile loop around it.
//!
//! Order of a run: sources (IMDS) → config (all layers validated before anything is written) →
//! profile → state → the OS upgrade, once per instance → discovery (EC2) → plan → files →
//! daemon-reload → unit actions → state. Bad input stops the run before the first write.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use berth_ec2::ImdsError;
use url::Url;

use crate::apply::{self, host_path, FileError};
use crate::config::{Config, ConfigError, Layer, Role};
use crate::discovery::{self, Condition, Me, Membership, Node};
use crate::etcd::cloud::AwsCloud;
use crate::etcd::{EtcdTier, TierError, TierOutcome};
use crate::host::{Host, HostError, UnitOp, UpgradeOutcome};
use crate::kube::master::EtcdLink;
use crate::kube::{KubeError, KubeOutcome, KubeRecord, KubeTier};
use crate::lifecycle::{self, Action, HostUpgrade, UpgradeInputs, Why};
use crate::plan::{self, Plan, PlanError};
use crate::profile::{Profile, ProfileError};
use crate::sources::{Remote, SourceError, Sources, TagSource};
use crate::state::{now_secs, LastRun, Phase, RunOutcome, State, StateError, UpgradeRecord};
use crate::userdata::{self, UserDataError};

/// Image defaults, then the host's own file, both below the tags and user-data.
const IMAGE_CONFIG: &str = "/usr/share/berth/config.yaml";
const HOST_CONFIG: &str = "/etc/berth/config.yaml";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
const MACHINE_ID: &str = "/etc/machine-id";
/// How long to wait for systemd to confirm it read READY=1 before the reboot request. PID 1
/// answers in microseconds; a bound is only for a manager that holds the descriptor.
const NOTIFY_BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    pub imds_endpoints: Vec<Url>,
    pub ec2_endpoint: Option<Url>,
    /// Parameter Store endpoint; `None`: `https://ssm.REGION.amazonaws.com/`.
    pub ssm_endpoint: Option<Url>,
    /// False with `--no-host-actions`: unit and upgrade actions are recorded, not carried out.
    pub host_actions: bool,
}

/// Exit codes, part of the CLI's interface (README, "Exit codes").
pub mod exit {
    pub(crate) const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub(crate) const BAD_INPUT: i32 = 3;
    pub(crate) const REMOTE: i32 = 4;
    pub const HOST: i32 = 5;
    pub(crate) const NOT_READY: i32 = 6;
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
    #[error(transparent)]
    UserData(#[from] UserDataError),
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
    UpgradeBlocked(HostError),
    #[error("{0}")]
    NotReady(Condition),
    #[error(transparent)]
    Template(PlanError),
    #[error(transparent)]
    Etcd(#[from] TierError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error(
        "the {profile} profile keeps its cluster secrets in Parameter Store under \
         /berth/CLUSTER/: tag the instances `berth:cluster=NAME` (letters, digits, `.`, `_`, `-`; \
         at most 64), or set `cluster:` in user-data{got}"
    )]
    ClusterName { profile: String, got: String },
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Config(_)
            | RunError::Profile(_)
            | RunError::ReadConfig { .. }
            | RunError::NoRole(_)
            | RunError::UserData(_)
            | RunError::NoName { .. }
            | RunError::Template(_) => exit::BAD_INPUT,
            RunError::Source(e) if e.is_bad_input() => exit::BAD_INPUT,
            RunError::Source(_) => exit::REMOTE,
            RunError::State(_) | RunError::File(_) | RunError::Host(_) => exit::HOST,
            RunError::UpgradeBlocked(_) => exit::HOST,
            RunError::NotReady(_) => exit::NOT_READY,
            RunError::ClusterName { .. } => exit::BAD_INPUT,
            RunError::Etcd(e) => match e {
                TierError::Cloud(s) if s.is_bad_input() => exit::BAD_INPUT,
                TierError::Cloud(_) | TierError::Etcd { .. } => exit::REMOTE,
                TierError::BadParameter { .. } | TierError::Pki(_) => exit::BAD_INPUT,
                TierError::File(_) | TierError::Host(_) | TierError::Setup(_) => exit::HOST,
            },
            RunError::Kube(e) => match e {
                KubeError::Cloud(s) if s.is_bad_input() => exit::BAD_INPUT,
                KubeError::Cloud(_) | KubeError::Etcd(_) | KubeError::Join(_) => exit::REMOTE,
                KubeError::JoinNotReset { .. } => exit::HOST,
                KubeError::BadParameter { .. } => exit::BAD_INPUT,
                KubeError::Command(_)
                | KubeError::File(_)
                | KubeError::Host(_)
                | KubeError::Setup(_) => exit::HOST,
            },
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
pub(crate) struct Context {
    pub sources: Sources,
    pub config: Config,
    pub profile: Profile,
    pub node: Node,
    pub membership: Membership,
    /// Instances DescribeInstances returned (the pollers sharing the EC2 budget), and pages.
    pub instances_seen: usize,
    pub pages: u32,
    /// Extra names of the managed hosts block: the kubeadm profile's API name and where it
    /// points on this node.
    pub aliases: Vec<(std::net::Ipv4Addr, String)>,
}

impl Context {
    /// The cluster's condition under this profile (an etcd tier makes several masters ready).
    pub fn condition(&self) -> Condition {
        self.membership.condition_with(self.profile.etcd.is_some())
    }
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
    /// The etcd tier on a master of a profile that has one: the next step and the cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<crate::etcd::EtcdPreview>,
    /// The Kubernetes tier of a profile that has one, as it stands (no token, no key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeRecord>,
}

/// Called after each host-changing step of a run with the step's number (from 1) and what it
/// was: each file put in place or removed, the daemon-reload, each unit operation.
pub(crate) type StepHook = Box<dyn FnMut(u32, &str) + Send>;

/// The host-changing steps of one run, and the hook told of each.
struct Steps {
    done: u32,
    hook: Option<StepHook>,
}

impl Steps {
    fn after(&mut self, what: &str) {
        self.done += 1;
        log::debug!("step {}: {what}", self.done);
        if let Some(hook) = self.hook.as_mut() {
            hook(self.done, what);
        }
    }
}

/// A step hook that kills the process with SIGKILL right after step `n`, as a power cut would:
/// how the crash-safety tests (`BERTH_CRASH_AT=N`) interrupt a run between two writes.
pub fn abort_after(n: u32) -> StepHook {
    Box::new(move |done, what| {
        if done == n {
            log::error!("BERTH_CRASH_AT={n}: aborting after {what}");
            // SAFETY: kill(2) on this process; nothing runs after it.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            std::process::abort();
        }
    })
}

pub struct Agent {
    pub opts: Options,
    pub remote: Remote,
    steps: Steps,
    last_config: Option<Config>,
    /// This instance's id, once IMDS said it.
    instance_id: Option<String>,
    /// The last run's notes on user-data and host files (see [`State::notes`]).
    notes: Vec<String>,
    /// The notes already logged by this process: the daemon logs a note once, not every poll.
    logged_notes: BTreeSet<String>,
}

impl Agent {
    pub fn new(opts: Options) -> Agent {
        let remote = Remote::new(opts.imds_endpoints.clone(), opts.ec2_endpoint.clone())
            .with_ssm_endpoint(opts.ssm_endpoint.clone());
        Agent {
            opts,
            remote,
            steps: Steps {
                done: 0,
                hook: None,
            },
            last_config: None,
            instance_id: None,
            notes: Vec::new(),
            logged_notes: BTreeSet::new(),
        }
    }

    /// Calls `hook` after each host-changing step of every run (see [`StepHook`]).
    pub fn with_step_hook(mut self, hook: StepHook) -> Agent {
        self.steps.hook = Some(hook);
        self
    }

    /// This instance's id, once a run got it from IMDS.
    pub fn instance_id(&self) -> Option<&str> {
        self.instance_id.as_deref()
    }

    /// The record of how a run ended, for `/var/lib/berth/last-run.json`.
    pub fn last_run(&self, result: &Result<Outcome, RunError>) -> LastRun {
        let (outcome, exit_code, error) = match result {
            Ok(Outcome::Converged { .. }) => (RunOutcome::Converged, exit::OK, None),
            Ok(Outcome::Rebooting) => (RunOutcome::Rebooting, exit::OK, None),
            Err(e @ RunError::NotReady(_)) => {
                (RunOutcome::Waiting, e.exit_code(), Some(e.to_string()))
            }
            Err(e) => (RunOutcome::Failed, e.exit_code(), Some(e.to_string())),
        };
        LastRun {
            outcome,
            exit_code,
            // An IPv6-only subnet stops the run before the identity is known, but IMDS named
            // the instance: the record says which one it was.
            instance_id: self.instance_id.clone().or_else(|| match result {
                Err(RunError::Source(SourceError::Imds(ImdsError::Ipv6Only { instance_id }))) => {
                    Some(instance_id.clone())
                }
                _ => None,
            }),
            error,
            notes: self.notes.clone(),
            boot_id: Some(self.boot_id()),
            machine_id: self.machine_id(),
            ..LastRun::default()
        }
    }

    fn note(&mut self, note: String) {
        if self.logged_notes.insert(note.clone()) {
            log::warn!("{note}");
        }
        self.notes.push(note);
    }

    /// The configuration of the last run that got that far (the daemon's poll settings).
    pub fn last_config(&self) -> Option<&Config> {
        self.last_config.as_ref()
    }

    fn root(&self) -> &Path {
        &self.opts.root
    }

    /// Sources, config and profile: everything that can be wrong with the input, checked before
    /// anything is written.
    async fn inputs(&mut self) -> Result<(Sources, Config, Profile, Role), RunError> {
        self.notes.clear();
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
        self.instance_id = Some(sources.identity.instance_id.clone());
        let tag_source = match sources.tag_source {
            TagSource::Imds => "instance tags (IMDS)",
            TagSource::DescribeTags => "instance tags (DescribeTags)",
        };
        layers.push((tag_source.to_string(), Layer::from_tags(&sources.tags)));
        if let Some(ud) = &sources.user_data {
            let read = userdata::read(ud)?;
            for n in read.notes {
                self.note(n);
            }
            layers.extend(read.layers);
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
                dns: crate::config::truncate_value(&sources.identity.private_dns_name),
            })?;
        let mut aliases = Vec::new();
        if let Some(k) = &profile.kubernetes {
            let masters = masters_of(&membership);
            let me = (node.role == Role::Master).then_some(node.private_ip);
            let ca =
                std::fs::read_to_string(host_path(self.root(), "/etc/kubernetes/pki/ca.crt")).ok();
            if let Some(ip) = crate::kube::api_target(me, &masters, k.api_port, ca.as_deref()).await
            {
                aliases.push((ip, k.api_name.clone()));
            }
        }
        Ok(Context {
            instances_seen: instances.len(),
            pages,
            sources,
            config,
            profile,
            node,
            membership,
            aliases,
        })
    }

    fn boot_id(&self) -> String {
        let under_root = host_path(self.root(), BOOT_ID);
        std::fs::read_to_string(&under_root)
            .or_else(|_| std::fs::read_to_string(BOOT_ID))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string())
    }

    fn machine_id(&self) -> Option<String> {
        std::fs::read_to_string(host_path(self.root(), MACHINE_ID))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    fn read_plan(&mut self, ctx: &Context, state: &State) -> Result<Plan, RunError> {
        let paths = plan::paths_of_interest(&ctx.profile, ctx.node.role);
        let current = apply::read_host_files(self.root(), &paths)?;
        if ctx.config.manage_hosts {
            if let Some(h) = current.get(plan::HOSTS_PATH) {
                let text = String::from_utf8_lossy(&h.content);
                for n in crate::hosts::conflicts(&text, &ctx.membership.nodes) {
                    self.note(n);
                }
            }
        }
        let inputs = plan::Inputs {
            node: &ctx.node,
            config: &ctx.config,
            membership: &ctx.membership,
            profile: &ctx.profile,
            pending_restarts: &state.pending_restarts,
            aliases: &ctx.aliases,
        };
        Ok(plan::plan(&inputs, &current)?)
    }

    /// What a run would do, without changing anything (not even the state).
    pub async fn plan(&mut self) -> Result<PlanReport, RunError> {
        let (sources, config, profile, role) = self.inputs().await?;
        let state = State::load(self.root(), &sources.identity.instance_id)?;
        let boot_id = self.boot_id();
        let upgrade = lifecycle::preview(
            &upgrade_inputs(&state, &config, &boot_id),
            state.upgrade.as_ref().and_then(|r| r.detail.as_deref()),
        );
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
            condition: ctx.condition().to_string(),
            upgrade,
            membership: ctx.membership.nodes.clone(),
            notes: Vec::new(),
            files: Vec::new(),
            reload: false,
            units: Vec::new(),
            etcd: None,
            kubernetes: None,
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
        report.notes = ctx.membership.notes.clone();
        report.notes.extend(self.notes.iter().cloned());
        let root = self.opts.root.clone();
        if let Some(tier) = Self::etcd_inputs(&root, &ctx)? {
            let region = ctx.sources.identity.region.clone();
            let mut cloud = AwsCloud {
                remote: &mut self.remote,
                region: &region,
            };
            match tier.preview(&mut cloud).await {
                Ok(p) => report.etcd = Some(p),
                Err(e) => report
                    .notes
                    .push(format!("etcd: could not look at the cluster: {e}")),
            }
        }
        if let Some(tier) = Self::kube_inputs(&root, &ctx)? {
            let region = ctx.sources.identity.region.clone();
            let mut cloud = AwsCloud {
                remote: &mut self.remote,
                region: &region,
            };
            let mut rec = state.kubernetes.clone().unwrap_or_default();
            match tier.preview(&mut cloud, &mut rec).await {
                Ok(()) => report.kubernetes = Some(rec),
                Err(e) => report
                    .notes
                    .push(format!("kubernetes: could not look at the cluster: {e}")),
            }
        }
        Ok(report)
    }

    /// One convergence of the node.
    pub async fn converge<H: Host>(&mut self, host: &mut H) -> Result<Outcome, RunError> {
        self.steps.done = 0;
        let _lock = crate::lock::RunLock::acquire(&self.opts.root)
            .await
            .map_err(|e| {
                RunError::File(FileError {
                    action: "locking",
                    path: host_path(&self.opts.root, crate::lock::LOCK_FILE),
                    source: e,
                })
            })?;
        let (sources, config, profile, role) = self.inputs().await?;
        let root = self.opts.root.clone();
        let mut state = State::load(&root, &sources.identity.instance_id)?;
        state.role = Some(role);
        state.cluster = config.cluster.clone();

        let boot_id = self.boot_id();
        // The boot and machine the state is written in: how `status` tells this node's state
        // from a baked or cloned disk's.
        let identity_changed = state.boot_id.as_deref() != Some(boot_id.as_str())
            || state.machine_id != self.machine_id();
        state.boot_id = Some(boot_id.clone());
        state.machine_id = self.machine_id();
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
        let plan = self.read_plan(&ctx, &state);
        let notes_changed = state.notes != self.notes;
        state.notes = self.notes.clone();
        let plan = match plan {
            Ok(p) => p,
            Err(RunError::NotReady(c)) => return Err(waiting(&root, &mut state, &ctx, c)),
            Err(e) => return Err(failed(&root, &mut state, e)),
        };
        let outcome = match self
            .apply(
                host,
                &mut state,
                &ctx,
                &plan,
                identity_changed || notes_changed,
            )
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => return Err(failed(&root, &mut state, e)),
        };
        let link = match self.etcd_tier(host, &mut state, &ctx).await {
            Ok(Ok(link)) => link,
            Ok(Err(c)) => return Err(waiting(&root, &mut state, &ctx, c)),
            Err(e) => return Err(failed(&root, &mut state, e)),
        };
        match self.kube_tier(host, &mut state, &ctx, link.as_ref()).await {
            Ok(None) => Ok(outcome),
            Ok(Some(c)) => Err(waiting(&root, &mut state, &ctx, c)),
            Err(e) => Err(failed(&root, &mut state, e)),
        }
    }

    /// The Kubernetes tier's inputs, or `None` when the profile has none.
    fn kube_inputs<'c>(root: &'c Path, ctx: &'c Context) -> Result<Option<KubeTier<'c>>, RunError> {
        let Some(spec) = &ctx.profile.kubernetes else {
            return Ok(None);
        };
        let cluster = secrets_cluster(ctx)?;
        Ok(Some(KubeTier {
            root,
            spec,
            config: &ctx.config.kubernetes,
            cluster,
            instance_id: &ctx.node.instance_id,
            ip: ctx.node.private_ip,
            masters: masters_of(&ctx.membership),
            minions: ctx
                .membership
                .minions()
                .map(|n| n.instance_id.clone())
                .collect(),
            api_target: ctx.aliases.first().map(|(ip, _)| *ip),
        }))
    }

    /// The Kubernetes tier: `Some(condition)` when it waits.
    async fn kube_tier<H: Host>(
        &mut self,
        host: &mut H,
        state: &mut State,
        ctx: &Context,
        link: Option<&EtcdHandle>,
    ) -> Result<Option<Condition>, RunError> {
        let root = self.opts.root.clone();
        let Some(tier) = Self::kube_inputs(&root, ctx)? else {
            return Ok(None);
        };
        if !self.opts.host_actions {
            self.note("kubernetes tier not run: --no-host-actions runs no kubeadm".to_string());
            return Ok(None);
        }
        if root != Path::new("/") {
            self.note(
                "kubernetes tier not run: kubeadm writes /etc/kubernetes itself, so it runs only \
                 with --root /"
                    .to_string(),
            );
            return Ok(None);
        }
        for parent in ["/etc/kubernetes", "/run"] {
            let n = crate::kube::kubeadm::remove_stale_scratch(&host_path(&root, parent));
            if n > 0 {
                log::info!("removed {n} scratch directory(ies) a killed run left in {parent}");
            }
        }
        let mut rec = state.kubernetes.clone().unwrap_or_default();
        rec.deleted_nodes.clear();
        let region = ctx.sources.identity.region.clone();
        let mut cloud = AwsCloud {
            remote: &mut self.remote,
            region: &region,
        };
        let steps = &mut self.steps;
        let mut on_step = |what: &str| steps.after(what);
        let result = match (ctx.node.role, link) {
            (Role::Master, Some(link)) => {
                let etcd = link.link();
                tier.master(host, &mut cloud, &etcd, &mut rec, &mut on_step)
                    .await
            }
            (Role::Master, None) => Err(KubeError::Setup(
                "the profile has a Kubernetes tier but no etcd tier".into(),
            )),
            (Role::Minion, _) => tier.minion(host, &mut cloud, &mut rec, &mut on_step).await,
        };
        match &result {
            Ok(KubeOutcome::Ready) => {
                rec.health = "ready".into();
                rec.detail.clear();
            }
            Ok(KubeOutcome::Waiting(why)) => {
                rec.health = "waiting".into();
                rec.detail = why.clone();
            }
            Err(e) => {
                rec.health = "failed".into();
                rec.detail = e.to_string();
            }
        }
        state.kubernetes = Some(rec);
        match result? {
            KubeOutcome::Ready => {
                state.save(&root)?;
                Ok(None)
            }
            KubeOutcome::Waiting(why) => Ok(Some(Condition::KubeWaiting(why))),
        }
    }

    /// The tier's inputs for this master, or `None` when the profile has no etcd tier or this
    /// node is no master.
    fn etcd_inputs<'c>(root: &'c Path, ctx: &'c Context) -> Result<Option<EtcdTier<'c>>, RunError> {
        let Some(spec) = &ctx.profile.etcd else {
            return Ok(None);
        };
        if ctx.node.role != Role::Master {
            return Ok(None);
        }
        let cluster = secrets_cluster(ctx)?;
        Ok(Some(EtcdTier {
            root,
            spec,
            template: ctx
                .profile
                .templates
                .get(&spec.template)
                .map(String::as_str)
                .unwrap_or_default(),
            cluster,
            instance_id: &ctx.node.instance_id,
            ip: ctx.node.private_ip,
            masters: ctx
                .membership
                .masters()
                .map(|n| (n.instance_id.clone(), n.private_ip))
                .collect(),
            config: &ctx.config.etcd,
        }))
    }

    /// The etcd tier of a master: the healthy member's handle (`None` on other nodes), or the
    /// condition when it waits or needs a restore.
    async fn etcd_tier<H: Host>(
        &mut self,
        host: &mut H,
        state: &mut State,
        ctx: &Context,
    ) -> Result<Result<Option<EtcdHandle>, Condition>, RunError> {
        let root = self.opts.root.clone();
        let Some(tier) = Self::etcd_inputs(&root, ctx)? else {
            return Ok(Ok(None));
        };
        if !self.opts.host_actions {
            self.note(
                "etcd tier not run: --no-host-actions changes no cluster membership".to_string(),
            );
            return Ok(Ok(None));
        }
        let mut rec = state.etcd.clone().unwrap_or_default();
        let region = ctx.sources.identity.region.clone();
        let mut cloud = AwsCloud {
            remote: &mut self.remote,
            region: &region,
        };
        let steps = &mut self.steps;
        let mut on_step = |what: &str| steps.after(what);
        let result = async {
            let ca = tier.ca(&mut cloud, true).await?.expect("made when missing");
            let (cert, key) = tier.write_pki(&ca, &mut on_step)?;
            let client = tier.client(&ca, &cert, &key)?;
            let outcome = tier
                .converge(host, &mut cloud, &client, &mut rec, &mut on_step)
                .await?;
            Ok::<_, TierError>((outcome, client))
        }
        .await;
        if let Err(e) = &result {
            rec.health = "failed".into();
            rec.detail = e.to_string();
        }
        state.etcd = Some(rec);
        let (outcome, client) = result?;
        match outcome {
            TierOutcome::Healthy => {
                state.save(&root)?;
                let endpoint = tier.own_client_url();
                let pki = |f: &str| format!("{}/{f}", tier.spec.pki_dir);
                Ok(Ok(Some(EtcdHandle {
                    client,
                    endpoint,
                    ca_file: pki("ca.crt"),
                    cert_file: pki("client.crt"),
                    key_file: pki("client.key"),
                })))
            }
            TierOutcome::Waiting(why) => Ok(Err(Condition::EtcdWaiting(why))),
            TierOutcome::NeedsRestore(why) => Ok(Err(Condition::EtcdNeedsRestore(why))),
        }
    }

    async fn apply<H: Host>(
        &mut self,
        host: &mut H,
        state: &mut State,
        ctx: &Context,
        plan: &Plan,
        // The boot, machine or notes differ from the saved state's.
        record_changed: bool,
    ) -> Result<Outcome, RunError> {
        let root = self.opts.root.clone();
        let restarts = plan.restarts();
        let changed_before = record_changed
            || state.membership.as_ref() != Some(&ctx.membership)
            || state.phase != Phase::Converged
            || plan.changed_files().next().is_some()
            || !restarts.is_empty();

        // Remember the restarts before touching a file: a crash after the write would otherwise
        // leave a unit running with its old configuration, and the next run would see no change.
        state.pending_restarts.extend(restarts.iter().cloned());
        state.start_apply(ctx.membership.clone(), ctx.condition().to_string());
        if changed_before {
            state.save(&root)?;
        }

        // Temporary files of a run killed between write and rename, in every directory berth
        // writes to: the plan's and the state's.
        let mut dirs: Vec<PathBuf> = plan
            .files
            .iter()
            .filter_map(|f| host_path(&root, &f.path).parent().map(Path::to_path_buf))
            .collect();
        let state_dir = host_path(&root, crate::state::STATE_DIR);
        dirs.push(state_dir.join(&state.instance_id));
        dirs.push(state_dir);
        apply::remove_stale_temps(dirs.iter().map(PathBuf::as_path));

        // Each file is a step of its own, counted right after its rename: a crash between two
        // renames leaves some files new and the rest old, which the next run finishes.
        let steps = &mut self.steps;
        let files_changed = apply::apply_files(&root, plan, |p| {
            log::info!("wrote {p}");
            steps.after(&format!("file {p}"));
        })?;
        if plan.reload {
            host.reload().await?;
            self.steps.after("daemon-reload");
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
                self.steps.after(&format!("{op} {}", u.unit));
            }
        }
        state.converge(plan.clone());
        if changed_before {
            state.save(&root)?;
        }
        Ok(Outcome::Converged {
            files_changed,
            restarts,
            members: ctx.membership.nodes.len(),
            instances_seen: ctx.instances_seen,
            pages: ctx.pages,
        })
    }

    /// The OS upgrade, once per instance ([`lifecycle::decide`], then [`lifecycle::upgraded`]
    /// with the host's answer). Returns true when a reboot was requested.
    async fn upgrade_step<H: Host>(
        &mut self,
        host: &mut H,
        state: &mut State,
        config: &Config,
        boot_id: &str,
    ) -> Result<bool, RunError> {
        let root = self.opts.root.clone();
        let record = |outcome, detail: Option<String>| UpgradeRecord {
            boot_id: boot_id.to_string(),
            outcome,
            detail,
            at: now_secs(),
            reboot_requested: false,
        };
        let decision = lifecycle::decide(&upgrade_inputs(state, config, boot_id));
        if let Some(outcome) = decision.record {
            // The one record of a decision made before the host is asked: `upgrade: false`.
            state.upgrade = Some(record(outcome, Some("upgrade: false".into())));
        }
        match decision.action {
            Action::Upgrade { .. } => {}
            Action::Reboot => {
                // Staged, then stopped before asking for the reboot: ask now, once.
                return self.request_reboot(host, state).await.map(|()| true);
            }
            Action::Configure(Why::RebootMissed) => {
                log::warn!(
                    "the reboot into the upgraded deployment was requested in this boot and has \
                     not happened; configuring the node on the booted deployment (berth never \
                     requests it twice)"
                );
                return Ok(false);
            }
            Action::Configure(_) | Action::Block => return Ok(false),
        }

        log::info!(
            "first boot of {}: upgrading the OS (rpm-ostree upgrade)",
            state.instance_id
        );
        let (result, detail, error) = match host.upgrade_os().await {
            Ok(UpgradeOutcome::Staged { from, to }) => {
                log::info!("rpm-ostree staged deployment {to} (booted: {from}); rebooting");
                (HostUpgrade::Staged, Some(format!("{from} -> {to}")), None)
            }
            Ok(UpgradeOutcome::NoUpgrade) => (HostUpgrade::NoUpgrade, None, None),
            Err(e) => {
                log::error!("OS upgrade failed: {e}");
                (HostUpgrade::Failed, Some(e.to_string()), Some(e))
            }
        };
        let decision = lifecycle::upgraded(result, config.upgrade_failure, self.opts.host_actions);
        if let Some(outcome) = decision.record {
            if result == HostUpgrade::NoUpgrade {
                log::info!("OS upgrade: {outcome}");
            }
            state.upgrade = Some(record(outcome, detail));
        }
        match (decision.action, error) {
            (Action::Reboot, _) => {
                self.request_reboot(host, state).await?;
                Ok(true)
            }
            (Action::Block, Some(e)) => {
                state.block_on_upgrade(e.to_string());
                state.save(&root)?;
                Err(RunError::UpgradeBlocked(e))
            }
            _ => Ok(false),
        }
    }

    async fn request_reboot<H: Host>(
        &mut self,
        host: &mut H,
        state: &mut State,
    ) -> Result<(), RunError> {
        // Recorded before asking: whatever happens next, this instance asks at most once.
        state.request_reboot();
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

/// A cluster name that fits a Parameter Store path segment.
/// The cluster name under which a profile with cluster secrets keeps them
/// (`/berth/CLUSTER/...`); an error naming the fix when there is none usable.
fn secrets_cluster(ctx: &Context) -> Result<&str, RunError> {
    match ctx.config.cluster.as_deref() {
        Some(c) if valid_cluster_name(c) => Ok(c),
        other => Err(RunError::ClusterName {
            profile: ctx.profile.name.clone(),
            got: other
                .map(|c| format!(" (`{}` is not usable)", crate::config::truncate_value(c)))
                .unwrap_or_default(),
        }),
    }
}

/// instance id → private IPv4 of the discovered masters.
fn masters_of(m: &Membership) -> std::collections::BTreeMap<String, std::net::Ipv4Addr> {
    m.masters()
        .map(|n| (n.instance_id.clone(), n.private_ip))
        .collect()
}

/// What the Kubernetes tier keeps of a healthy etcd member on this master.
struct EtcdHandle {
    client: crate::etcd::client::EtcdClient,
    endpoint: String,
    ca_file: String,
    cert_file: String,
    key_file: String,
}

impl EtcdHandle {
    fn link(&self) -> EtcdLink<'_> {
        EtcdLink {
            client: &self.client,
            endpoint: self.endpoint.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

fn valid_cluster_name(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The run waits on `c`: logged, and kept in the state (whose save failing is the error then).
fn waiting(root: &Path, state: &mut State, ctx: &Context, c: Condition) -> RunError {
    log::warn!("{c}");
    state.wait(c.to_string(), ctx.membership.clone());
    match state.save(root) {
        Ok(()) => RunError::NotReady(c),
        Err(e) => e.into(),
    }
}

/// The run failed with `e`: kept in the state.
fn failed(root: &Path, state: &mut State, e: RunError) -> RunError {
    record_failure(root, state, &e);
    e
}

fn record_failure(root: &Path, state: &mut State, e: &RunError) {
    state.fail(e.to_string());
    if let Err(se) = state.save(root) {
        log::error!("saving the state after a failure: {se}");
    }
}

/// The inputs of the upgrade decision: the configuration, this boot, the state's record.
fn upgrade_inputs<'a>(state: &'a State, config: &Config, boot_id: &'a str) -> UpgradeInputs<'a> {
    UpgradeInputs {
        enabled: config.upgrade,
        on_failure: config.upgrade_failure,
        boot_id,
        previous: state.previous_upgrade(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpgradeFailure;
    use crate::host::rpmostree::RpmOstreeError;
    use crate::lifecycle::UpgradeOutcome as Recorded;

    /// A host whose upgrade answers as scripted, counting the upgrade and reboot requests.
    struct Scripted {
        answer: fn() -> Result<UpgradeOutcome, HostError>,
        upgrades: u32,
        reboots: u32,
    }

    impl Host for Scripted {
        async fn reload(&mut self) -> Result<(), HostError> {
            Ok(())
        }
        async fn unit_op(&mut self, _: &str, _: UnitOp) -> Result<(), HostError> {
            Ok(())
        }
        async fn upgrade_os(&mut self) -> Result<UpgradeOutcome, HostError> {
            self.upgrades += 1;
            (self.answer)()
        }
        async fn reboot(&mut self) -> Result<(), HostError> {
            self.reboots += 1;
            Ok(())
        }
    }

    fn not_booted() -> Result<UpgradeOutcome, HostError> {
        Err(HostError::RpmOstree(RpmOstreeError::NotBooted {
            path: "/".into(),
        }))
    }

    fn staged() -> Result<UpgradeOutcome, HostError> {
        Ok(UpgradeOutcome::Staged {
            from: "a".into(),
            to: "b".into(),
        })
    }

    /// `upgrade_step` of one run in `boot`, and the state as saved.
    fn step(
        dir: &Path,
        host: &mut Scripted,
        on_failure: UpgradeFailure,
        boot: &str,
    ) -> (Result<bool, RunError>, State) {
        let mut agent = Agent::new(Options {
            root: dir.to_path_buf(),
            imds_endpoints: vec![],
            ec2_endpoint: None,
            ssm_endpoint: None,
            host_actions: true,
        });
        let config = Config {
            upgrade: true,
            upgrade_failure: on_failure,
            ..Config::default()
        };
        let mut state = State::load(dir, "i-0abc").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(agent.upgrade_step(host, &mut state, &config, boot));
        (r, State::load(dir, "i-0abc").unwrap())
    }

    #[test]
    fn a_blocked_upgrade_keeps_the_hosts_error_and_is_retried() {
        let d = tempfile::tempdir().unwrap();
        let mut host = Scripted {
            answer: not_booted,
            upgrades: 0,
            reboots: 0,
        };
        let (r, saved) = step(d.path(), &mut host, UpgradeFailure::Block, "b1");
        let e = r.unwrap_err();
        assert!(
            matches!(
                &e,
                RunError::UpgradeBlocked(HostError::RpmOstree(RpmOstreeError::NotBooted { .. }))
            ),
            "{e:?}"
        );
        assert_eq!(e.exit_code(), exit::HOST);
        assert!(e.to_string().contains("upgrade_failure: continue"), "{e}");
        assert_eq!(saved.phase, Phase::UpgradeFailed);
        assert_eq!(saved.upgrade.as_ref().unwrap().outcome, Recorded::Failed);
        assert!(saved.last_error.is_some());
        // The next run tries again.
        let (r, _) = step(d.path(), &mut host, UpgradeFailure::Block, "b1");
        assert!(r.is_err());
        assert_eq!(host.upgrades, 2);
        assert_eq!(host.reboots, 0);
    }

    #[test]
    fn a_failed_upgrade_under_continue_configures() {
        let d = tempfile::tempdir().unwrap();
        let mut host = Scripted {
            answer: not_booted,
            upgrades: 0,
            reboots: 0,
        };
        let (r, _) = step(d.path(), &mut host, UpgradeFailure::Continue, "b1");
        assert!(!r.unwrap());
    }

    #[test]
    fn a_staged_deployment_is_rebooted_into_once() {
        let d = tempfile::tempdir().unwrap();
        let mut host = Scripted {
            answer: staged,
            upgrades: 0,
            reboots: 0,
        };
        let (r, saved) = step(d.path(), &mut host, UpgradeFailure::Block, "b1");
        assert!(r.unwrap(), "a reboot was requested");
        assert_eq!(saved.phase, Phase::UpgradeRequested);
        let u = saved.upgrade.unwrap();
        assert_eq!((u.outcome, u.reboot_requested), (Recorded::Staged, true));
        // The reboot did not come: this boot configures, without a second request.
        let (r, _) = step(d.path(), &mut host, UpgradeFailure::Block, "b1");
        assert!(!r.unwrap());
        // The next boot configures, without upgrading again.
        let (r, _) = step(d.path(), &mut host, UpgradeFailure::Block, "b2");
        assert!(!r.unwrap());
        assert_eq!((host.upgrades, host.reboots), (1, 1));
    }
}
