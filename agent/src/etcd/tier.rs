//! The etcd tier's edge: looks at the cluster, takes [`decide::next`]'s step, and looks again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::client::{self, ClientTls, EtcdClient, EtcdError};
use super::conf::{self, ConfInputs, InitialState};
use super::decide::{self, Fate, Me, Observation, SeedMarker, Step, View};
use super::pki::{self, ClusterCa, PkiError};
use super::{snapshot, EtcdRecord, CLIENT_PORT, CONVERGE_DEADLINE, PEER_PORT};
use crate::apply::{host_path, write_atomic_owned, FileError};
use crate::config;
use crate::host::{Host, HostError, UnitOp};
use crate::profile::EtcdCluster;
use crate::sources::SourceError;

/// A member that was just started answers within a second or two; a joining member after it
/// fetched the cluster's state.
const START_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two looks while a step waits on etcd (its 5 s pacing between membership changes, a
/// learner catching up).
const STEP_PAUSE: Duration = Duration::from_millis(1500);
/// Between two adds etcd refused for its pacing: about ten requests in its 5 s window.
const ADD_RETRY_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error(transparent)]
    Cloud(#[from] SourceError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("etcd refused {what}: {source}")]
    Etcd { what: String, source: EtcdError },
    #[error("etcd tier: {0}")]
    Setup(String),
    #[error(
        "Parameter Store: `{name}` does not hold what berth wrote there ({reason}); delete it \
         only if no master of the cluster uses it"
    )]
    BadParameter { name: String, reason: String },
}

/// How the tier ended this run.
#[derive(Debug, Clone, PartialEq)]
pub enum TierOutcome {
    Healthy,
    Waiting(String),
    NeedsRestore(String),
}

/// What the tier needs from AWS: Parameter Store and the state of instances.
#[allow(async_fn_in_trait)]
pub trait Cloud {
    /// A parameter's value (decrypted), `None` when it does not exist.
    async fn parameter(&mut self, name: &str) -> Result<Option<String>, SourceError>;
    /// Creates a parameter unless it exists; true when this call created it.
    async fn create_parameter(
        &mut self,
        name: &str,
        value: &str,
        secure: bool,
    ) -> Result<bool, SourceError>;
    async fn overwrite_parameter(
        &mut self,
        name: &str,
        value: &str,
        secure: bool,
    ) -> Result<(), SourceError>;
    /// instance id → EC2 state name, for the ids EC2 knows (in any state).
    async fn instance_states(
        &mut self,
        ids: &[String],
    ) -> Result<BTreeMap<String, String>, SourceError>;
}

/// One master's etcd tier for one run.
pub struct EtcdTier<'a> {
    pub root: &'a Path,
    pub spec: &'a EtcdCluster,
    pub template: &'a str,
    pub cluster: &'a str,
    pub instance_id: &'a str,
    pub ip: Ipv4Addr,
    /// instance id → private IPv4 of every master discovery returned (this one included).
    pub masters: BTreeMap<String, Ipv4Addr>,
    pub config: &'a config::Etcd,
}

/// Whether `s` looks like an EC2 instance id (`i-` and 8 or 17 hex digits): member names come
/// from etcd, untrusted, and only such names are sent to EC2.
pub fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("i-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17) && h.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

fn now_secs() -> u64 {
    crate::state::now_secs()
}

/// The parameter names of a cluster (docs/iam.md).
pub fn ca_parameter(cluster: &str) -> String {
    format!("/berth/{cluster}/master/etcd-ca")
}

pub fn seed_parameter(cluster: &str) -> String {
    format!("/berth/{cluster}/master/etcd-seed")
}

impl<'a> EtcdTier<'a> {
    fn peer_url(&self) -> String {
        format!("https://{}:{PEER_PORT}", self.ip)
    }

    /// This master's client URL.
    pub fn own_client_url(&self) -> String {
        Self::client_url(self.ip)
    }

    fn client_url(ip: Ipv4Addr) -> String {
        format!("https://{ip}:{CLIENT_PORT}")
    }

    fn path(&self, p: &str) -> PathBuf {
        host_path(self.root, p)
    }

    fn pki(&self, file: &str) -> PathBuf {
        self.path(&format!("{}/{file}", self.spec.pki_dir))
    }

    /// The cluster CA from Parameter Store; made and stored by this master when there is none
    /// (create-only: of masters racing, one CA wins and the others read it).
    pub async fn ca<C: Cloud>(
        &self,
        cloud: &mut C,
        create: bool,
    ) -> Result<Option<ClusterCa>, TierError> {
        let name = ca_parameter(self.cluster);
        if let Some(v) = cloud.parameter(&name).await? {
            return Ok(Some(ClusterCa::parse(&v)?));
        }
        if !create {
            return Ok(None);
        }
        let ca = ClusterCa::generate(self.cluster)?;
        if cloud.create_parameter(&name, &ca.to_json(), true).await? {
            log::info!("made the cluster CA and stored it in Parameter Store as {name}");
            return Ok(Some(ca));
        }
        // Another master's CA won the race.
        match cloud.parameter(&name).await? {
            Some(v) => Ok(Some(ClusterCa::parse(&v)?)),
            None => Err(TierError::Setup(format!(
                "Parameter Store said {name} exists, then that it does not"
            ))),
        }
    }

    /// uid and gid of the etcd user, from the host's /etc/passwd.
    fn etcd_owner(&self) -> Result<(u32, u32), TierError> {
        let passwd = std::fs::read_to_string(self.path("/etc/passwd"))
            .map_err(|e| TierError::Setup(format!("reading /etc/passwd: {e}")))?;
        passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[0] == self.spec.user)
                    .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                    .flatten()
            })
            .next()
            .ok_or_else(|| {
                TierError::Setup(format!(
                    "user `{}` is not in /etc/passwd: install etcd (its package adds the user)",
                    self.spec.user
                ))
            })
    }

    /// The CA certificate and this master's certificates and keys, made again only when they
    /// no longer fit. Returns the client TLS material for the agent.
    pub fn write_pki(
        &self,
        ca: &ClusterCa,
        on_step: &mut dyn FnMut(&str),
    ) -> Result<(String, String), TierError> {
        let (uid, gid) = self.etcd_owner()?;
        let ca_path = self.pki("ca.crt");
        if std::fs::read_to_string(&ca_path).ok().as_deref() != Some(ca.cert.as_str()) {
            write_atomic_owned(&ca_path, ca.cert.as_bytes(), 0o644, None)?;
            on_step(&format!("file {}/ca.crt", self.spec.pki_dir));
        }
        for leaf in pki::leaves(self.instance_id, self.ip) {
            let cert_path = self.pki(&format!("{}.crt", leaf.file));
            let key_path = self.pki(&format!("{}.key", leaf.file));
            if key_path.exists() && pki::still_fits(&cert_path, ca, &leaf) {
                continue;
            }
            let (cert, key) = ca.issue(&leaf)?;
            let owner = leaf.for_etcd.then_some((uid, gid));
            write_atomic_owned(&key_path, key.as_bytes(), 0o600, owner)?;
            on_step(&format!("file {}/{}.key", self.spec.pki_dir, leaf.file));
            write_atomic_owned(&cert_path, cert.as_bytes(), 0o644, None)?;
            on_step(&format!("file {}/{}.crt", self.spec.pki_dir, leaf.file));
            log::info!("made the etcd {} certificate", leaf.file);
        }
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p)
                .map_err(|e| TierError::Setup(format!("reading {}: {e}", p.display())))
        };
        Ok((read(self.pki("client.crt"))?, read(self.pki("client.key"))?))
    }

    pub fn client(&self, ca: &ClusterCa, cert: &str, key: &str) -> Result<EtcdClient, TierError> {
        EtcdClient::new(&ClientTls {
            ca_pem: &ca.cert,
            cert_pem: cert,
            key_pem: key,
        })
        .map_err(|source| TierError::Etcd {
            what: "the client's TLS material".into(),
            source,
        })
    }

    fn local_data(&self) -> bool {
        self.path(&format!("{}/member", self.spec.data_dir))
            .is_dir()
    }

    fn endpoints(&self) -> Vec<String> {
        let mut eps = vec![Self::client_url(self.ip)];
        for ip in self.masters.values() {
            let u = Self::client_url(*ip);
            if !eps.contains(&u) {
                eps.push(u);
            }
        }
        eps
    }

    /// One look: the cluster, this master's data and member, and EC2's word on members that
    /// discovery did not return.
    pub async fn observe<C: Cloud>(
        &self,
        client: &EtcdClient,
        cloud: &mut C,
        rec: &mut EtcdRecord,
    ) -> Result<Observation, TierError> {
        let view = client::look(client, &self.endpoints()).await;
        let local_active = client.status(&Self::client_url(self.ip)).await.is_ok();
        let now = now_secs();
        let masters: BTreeSet<String> = self.masters.keys().cloned().collect();
        let mut fates = BTreeMap::new();
        if let Some(v) = &view {
            let unknown: Vec<String> = v
                .members
                .iter()
                .filter(|m| m.started() && !masters.contains(&m.name) && is_instance_id(&m.name))
                .map(|m| m.name.clone())
                .collect();
            if !unknown.is_empty() {
                let states = cloud.instance_states(&unknown).await?;
                for id in unknown {
                    let fate = match states.get(&id).map(String::as_str) {
                        Some("pending" | "running") => Fate::Running,
                        Some("stopping" | "stopped") => Fate::Stopped {
                            since: *rec.stopped_since.entry(id.clone()).or_insert(now),
                        },
                        _ => Fate::Gone,
                    };
                    if !matches!(fate, Fate::Stopped { .. }) {
                        rec.stopped_since.remove(&id);
                    }
                    fates.insert(id, fate);
                }
            }
            rec.cluster_id = Some(format!("{:x}", v.cluster_id));
            rec.members = EtcdRecord::members_of(v);
        }
        rec.stopped_since.retain(|id, _| fates.contains_key(id));
        let seed = if view.is_none() {
            self.seed_marker(cloud).await?
        } else {
            None
        };
        let o = Observation {
            me: Me {
                instance_id: self.instance_id.to_string(),
                peer_url: self.peer_url(),
            },
            master_ips: self
                .masters
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            masters,
            local_data: self.local_data(),
            local_active,
            view,
            fates,
            seed,
            now,
            stopped_grace: self.config.stopped_grace_seconds,
        };
        rec.removable = decide::removable(&o)
            .into_iter()
            .map(|(who, why)| format!("{who}: {why}"))
            .collect();
        Ok(o)
    }

    async fn seed_marker<C: Cloud>(&self, cloud: &mut C) -> Result<Option<SeedMarker>, TierError> {
        let name = seed_parameter(self.cluster);
        match cloud.parameter(&name).await? {
            None => Ok(None),
            Some(v) => serde_json::from_str(&v)
                .map(Some)
                .map_err(|e| TierError::BadParameter {
                    name,
                    reason: format!("not a seed marker: {e}"),
                }),
        }
    }

    /// Writes etcd.conf for a start.
    fn write_conf(&self, ic: &[(String, String)], state: InitialState) -> Result<bool, TierError> {
        let text = conf::render(
            self.spec,
            self.template,
            &ConfInputs {
                name: self.instance_id,
                ip: self.ip,
                initial_cluster: ic,
                state,
                cluster: self.cluster,
            },
        )
        .map_err(|e| TierError::Setup(format!("rendering {}: {e}", self.spec.conf)))?;
        let path = self.path(&self.spec.conf);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        write_atomic_owned(&path, text.as_bytes(), 0o644, None)?;
        log::info!(
            "wrote {} (initial cluster state {})",
            self.spec.conf,
            state.as_str()
        );
        Ok(true)
    }

    /// Waits until the local member answers; its status.
    async fn local_answers(&self, client: &EtcdClient) -> Option<client::Status> {
        let deadline = Instant::now() + START_ANSWER_TIMEOUT;
        loop {
            if let Ok(s) = client.status(&Self::client_url(self.ip)).await {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Starts (or restarts) etcd, and makes sure the unit is not enabled: the agent alone starts
    /// it, after it checked the data directory. An enabled etcd would start at boot with the
    /// last etcd.conf even when its data directory was lost, and join under its old member id
    /// with an empty log (etcd then panics: "tocommit(N) is out of range"), or leave a `member/`
    /// directory that looks like data.
    async fn start<H: Host>(
        &self,
        host: &mut H,
        restart: bool,
        on_step: &mut dyn FnMut(&str),
    ) -> Result<(), TierError> {
        let op = if restart {
            UnitOp::Restart
        } else {
            UnitOp::Start
        };
        // A start decided on is not refused for earlier failures (`Restart=on-failure` of a
        // member that could not join counts against systemd's start rate limit).
        // A unit systemd has not loaded yet has nothing to reset (NoSuchUnit).
        if let Err(e) = host.unit_op(&self.spec.unit, UnitOp::ResetFailed).await {
            log::debug!("reset-failed {}: {e}", self.spec.unit);
        }
        host.unit_op(&self.spec.unit, op).await?;
        on_step(&format!("{op} {}", self.spec.unit));
        host.unit_op(&self.spec.unit, UnitOp::Disable).await?;
        on_step(&format!("disable {}", self.spec.unit));
        Ok(())
    }

    /// Before a member starts with `existing` and no data: whatever a failed start left in the
    /// data directory (no WAL) is moved aside, never deleted.
    fn clear_partial_data(&self, on_step: &mut dyn FnMut(&str)) -> Result<(), TierError> {
        let dir = self.path(&self.spec.data_dir);
        if self.local_data() || !dir.exists() {
            return Ok(());
        }
        let to = PathBuf::from(format!("{}.partial-{}", dir.display(), now_secs()));
        std::fs::rename(&dir, &to)
            .map_err(|e| TierError::Setup(format!("moving {} aside: {e}", dir.display())))?;
        on_step("move a partial data directory aside");
        Ok(())
    }

    /// Writes etcd.conf for a start, as a step.
    fn conf_step(
        &self,
        ic: &[(String, String)],
        state: InitialState,
        on_step: &mut dyn FnMut(&str),
    ) -> Result<bool, TierError> {
        let changed = self.write_conf(ic, state)?;
        if changed {
            on_step(&format!("file {}", self.spec.conf));
        }
        Ok(changed)
    }

    /// Where membership changes are sent: the leader, else any healthy member.
    fn change_endpoint(v: &View) -> Option<String> {
        let pick = |id: u64| {
            v.members
                .iter()
                .find(|m| m.id == id)
                .and_then(|m| m.client_urls.first().cloned())
        };
        v.leader
            .and_then(pick)
            .or_else(|| v.healthy.iter().find_map(|id| pick(*id)))
    }

    /// Steps until this master is a healthy voting member, a wait outlasts the deadline, or
    /// quorum is lost for good. `rec` is left describing the cluster as last seen.
    pub async fn converge<H: Host, C: Cloud>(
        &self,
        host: &mut H,
        cloud: &mut C,
        client: &EtcdClient,
        rec: &mut EtcdRecord,
        on_step: &mut dyn FnMut(&str),
    ) -> Result<TierOutcome, TierError> {
        let deadline = Instant::now() + CONVERGE_DEADLINE;
        rec.changes.clear();
        let mut started = false;
        loop {
            let o = self.observe(client, cloud, rec).await?;
            let step = decide::next(&o);
            log::debug!("etcd step: {step:?}");
            let pause = match self
                .take(host, cloud, client, rec, (&o, &step), &mut started, on_step)
                .await?
            {
                Some(outcome) => return Ok(outcome),
                None => matches!(step, Step::Wait { .. }),
            };
            if let Step::Wait { reason } = &step {
                rec.health = "waiting".into();
                rec.detail = reason.clone();
                if Instant::now() > deadline {
                    return Ok(TierOutcome::Waiting(reason.clone()));
                }
            }
            if pause {
                tokio::time::sleep(STEP_PAUSE + Duration::from_millis(fastrand::u64(0..500))).await;
            }
            if Instant::now() > deadline + START_ANSWER_TIMEOUT {
                return Ok(TierOutcome::Waiting(format!("still at {step:?}")));
            }
        }
    }

    /// Takes one step; `Some` when the run's tier work is over.
    #[allow(clippy::too_many_arguments)]
    async fn take<H: Host, C: Cloud>(
        &self,
        host: &mut H,
        cloud: &mut C,
        client: &EtcdClient,
        rec: &mut EtcdRecord,
        (o, step): (&Observation, &Step),
        started: &mut bool,
        on_step: &mut dyn FnMut(&str),
    ) -> Result<Option<TierOutcome>, TierError> {
        let refused = |what: &str| {
            let what = what.to_string();
            move |source| TierError::Etcd { what, source }
        };
        match step {
            Step::Healthy => {
                rec.health = "healthy".into();
                rec.detail = "voting member".into();
                self.confirm_formed(cloud, o).await?;
                self.snapshot_if_due(client, rec).await;
                return Ok(Some(TierOutcome::Healthy));
            }
            Step::NeedsRestore { reason } => {
                rec.health = "needs restore".into();
                rec.detail = reason.clone();
                log::error!("etcd: {reason}");
                return Ok(Some(TierOutcome::NeedsRestore(reason.clone())));
            }
            Step::Wait { reason } => log::info!("etcd: {reason}"),
            Step::Seed => {
                let me = self.instance_id.to_string();
                let name = seed_parameter(self.cluster);
                let claim = SeedMarker {
                    seed: me.clone(),
                    cluster_id: None,
                };
                let json = serde_json::to_string(&claim).expect("serializes");
                if o.seed.is_none() {
                    if !cloud.create_parameter(&name, &json, false).await? {
                        log::info!("etcd: another master claimed the seeding first");
                        return Ok(None);
                    }
                    on_step("claim the seed marker");
                }
                log::info!(
                    "etcd: seeding cluster `{}` as its first member",
                    self.cluster
                );
                self.clear_partial_data(on_step)?;
                self.conf_step(&[(me, self.peer_url())], InitialState::New, on_step)?;
                self.start(host, true, on_step).await?;
                *started = true;
                let Some(st) = self.local_answers(client).await else {
                    return Ok(None);
                };
                let formed = SeedMarker {
                    seed: self.instance_id.to_string(),
                    cluster_id: Some(format!("{:x}", st.cluster_id)),
                };
                cloud
                    .overwrite_parameter(
                        &name,
                        &serde_json::to_string(&formed).expect("json"),
                        false,
                    )
                    .await?;
                on_step("mark the cluster formed");
                rec.changes
                    .push(format!("seeded cluster {:x}", st.cluster_id));
            }
            Step::StartLocal => {
                if *started {
                    // Started this run and not answering yet: wait, do not start again.
                    tokio::time::sleep(STEP_PAUSE).await;
                    return Ok(None);
                }
                let current =
                    std::fs::read_to_string(self.path(&self.spec.conf)).unwrap_or_default();
                let (ic, state) = conf::initial_of(&current).unwrap_or_else(|| {
                    (
                        vec![(self.instance_id.to_string(), self.peer_url())],
                        InitialState::Existing,
                    )
                });
                let changed = self.conf_step(&ic, state, on_step)?;
                log::info!("etcd: starting the local member from its data directory");
                self.start(host, changed, on_step).await?;
                *started = true;
                self.local_answers(client).await;
            }
            Step::AddLearner => {
                let v = o.view.as_ref().expect("a join has a view");
                let Some(ep) = Self::change_endpoint(v) else {
                    return Ok(None);
                };
                match client.add_learner(&ep, &self.peer_url()).await {
                    Ok((id, members)) => {
                        log::info!("etcd: added this master as learner {id:x}");
                        on_step("add learner");
                        rec.changes.push(format!("added as learner {id:x}"));
                        let view = View {
                            members,
                            ..v.clone()
                        };
                        let ic = decide::initial_cluster(&view, id, self.instance_id);
                        self.clear_partial_data(on_step)?;
                        self.conf_step(&ic, InitialState::Existing, on_step)?;
                        self.start(host, true, on_step).await?;
                        *started = true;
                    }
                    Err(e) if retryable(&e) => {
                        // etcd's pacing: an add is refused until every voter has been connected
                        // for 5 s. Asked again at once, a joiner sends hundreds of requests in
                        // that time; after a whole step pause, it joins up to 2 s late.
                        log::info!("etcd: add not now: {e}");
                        tokio::time::sleep(ADD_RETRY_PAUSE).await;
                    }
                    Err(e) => return Err(refused("adding this master as a learner")(e)),
                }
            }
            Step::StartJoined { initial_cluster } => {
                log::info!("etcd: starting this master's member, listed and never started");
                self.clear_partial_data(on_step)?;
                self.conf_step(initial_cluster, InitialState::Existing, on_step)?;
                self.start(host, true, on_step).await?;
                *started = true;
            }
            Step::Promote { id } => {
                let v = o.view.as_ref().expect("a promote has a view");
                let Some(ep) = Self::change_endpoint(v) else {
                    return Ok(None);
                };
                match client.promote(&ep, *id).await {
                    Ok(()) => {
                        log::info!("etcd: promoted learner {id:x} to a voting member");
                        on_step("promote");
                        rec.changes.push(format!("promoted {id:x}"));
                    }
                    Err(e) if retryable(&e) => {
                        log::info!("etcd: promote not now: {e}");
                        tokio::time::sleep(STEP_PAUSE).await;
                    }
                    Err(e) => return Err(refused("promoting this master's learner")(e)),
                }
            }
            Step::Remove { id, name, why } => {
                let v = o.view.as_ref().expect("a removal has a view");
                let Some(ep) = Self::change_endpoint(v) else {
                    return Ok(None);
                };
                if *why == decide::Removal::MyDataLost {
                    host.unit_op(&self.spec.unit, UnitOp::Stop).await?;
                    on_step(&format!("stop {}", self.spec.unit));
                }
                match client.remove(&ep, *id).await {
                    Ok(()) => {
                        let who = if name.is_empty() {
                            format!("{id:x}")
                        } else {
                            name.clone()
                        };
                        log::warn!("etcd: removed member {who}: {why}");
                        on_step("remove member");
                        rec.changes.push(format!("removed {who} ({why})"));
                    }
                    Err(e) if e.message().contains("member not found") => {}
                    Err(e) if retryable(&e) => {
                        log::info!("etcd: removal not now: {e}");
                        tokio::time::sleep(STEP_PAUSE).await;
                    }
                    Err(e) => return Err(refused("removing a member")(e)),
                }
            }
            Step::DiscardLocalData => {
                host.unit_op(&self.spec.unit, UnitOp::Stop).await?;
                on_step(&format!("stop {}", self.spec.unit));
                let from = self.path(&self.spec.data_dir);
                let to = PathBuf::from(format!("{}.removed-{}", from.display(), now_secs()));
                std::fs::rename(&from, &to).map_err(|e| {
                    TierError::Setup(format!("moving {} aside: {e}", from.display()))
                })?;
                log::warn!(
                    "etcd: the cluster no longer lists this member; its data directory is kept as {}",
                    to.display()
                );
                on_step("move the data directory aside");
                rec.changes.push(format!(
                    "moved the stale data directory to {}",
                    to.display()
                ));
            }
        }
        Ok(None)
    }

    /// Records the cluster id in the seed marker once it is formed (the seed may have stopped
    /// between its start and that write).
    async fn confirm_formed<C: Cloud>(
        &self,
        cloud: &mut C,
        o: &Observation,
    ) -> Result<(), TierError> {
        let Some(v) = &o.view else { return Ok(()) };
        let name = seed_parameter(self.cluster);
        let marker = self.seed_marker(cloud).await?;
        if marker.as_ref().is_some_and(|m| m.cluster_id.is_some()) {
            return Ok(());
        }
        let formed = SeedMarker {
            seed: marker.map_or_else(|| self.instance_id.to_string(), |m| m.seed),
            cluster_id: Some(format!("{:x}", v.cluster_id)),
        };
        cloud
            .overwrite_parameter(&name, &serde_json::to_string(&formed).expect("json"), false)
            .await?;
        Ok(())
    }

    async fn snapshot_if_due(&self, client: &EtcdClient, rec: &mut EtcdRecord) {
        let now = now_secs();
        let dir = self.path(snapshot::SNAPSHOT_DIR);
        let last = snapshot::list(&dir).last().map(|(at, _)| *at);
        if last.is_some_and(|at| now.saturating_sub(at) < self.config.snapshot_interval_seconds) {
            return;
        }
        match snapshot::save(
            client,
            &Self::client_url(self.ip),
            &dir,
            now,
            self.config.snapshots_kept as usize,
        )
        .await
        {
            Ok(mut s) => {
                s.path = format!("{}/snapshot-{now}.db", snapshot::SNAPSHOT_DIR);
                log::info!("etcd: snapshot saved to {} ({} bytes)", s.path, s.bytes);
                rec.last_snapshot = Some(s);
            }
            Err(e) => log::warn!("etcd: snapshot failed, tried again next run: {e}"),
        }
    }
}

/// What `plan` shows of the tier: the step a run would take now, and the cluster as seen.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EtcdPreview {
    pub next_step: Step,
    pub record: EtcdRecord,
}

impl EtcdTier<'_> {
    /// Looks at the cluster as a run would, and changes nothing: no CA is made, no file written
    /// (without this master's client certificate on disk, a throwaway one is made in memory).
    pub async fn preview<C: Cloud>(&self, cloud: &mut C) -> Result<EtcdPreview, TierError> {
        let mut record = EtcdRecord::default();
        let Some(ca) = self.ca(cloud, false).await? else {
            record.health = "not formed".into();
            record.detail =
                "no cluster CA in Parameter Store yet: the first master makes it".into();
            let seed = self.seed_marker(cloud).await?;
            let masters: BTreeSet<String> = self.masters.keys().cloned().collect();
            let next_step = match decide::seed_candidate(&masters) {
                Some(s) if s == self.instance_id && seed.is_none() => Step::Seed,
                Some(s) => Step::Wait {
                    reason: format!("waiting for {s} to seed the cluster"),
                },
                None => Step::Wait {
                    reason: "discovery returned no master".into(),
                },
            };
            return Ok(EtcdPreview { next_step, record });
        };
        let on_disk = (
            std::fs::read_to_string(self.pki("client.crt")),
            std::fs::read_to_string(self.pki("client.key")),
        );
        let (cert, key) = match on_disk {
            (Ok(c), Ok(k))
                if pki::still_fits(
                    &self.pki("client.crt"),
                    &ca,
                    &pki::leaves(self.instance_id, self.ip)[2],
                ) =>
            {
                (c, k)
            }
            _ => ca.issue(&pki::leaves(self.instance_id, self.ip)[2])?,
        };
        let client = self.client(&ca, &cert, &key)?;
        let o = self.observe(&client, cloud, &mut record).await?;
        let next_step = decide::next(&o);
        record.health = match &next_step {
            Step::Healthy => "healthy",
            Step::NeedsRestore { .. } => "needs restore",
            Step::Wait { .. } => "waiting",
            _ => "converging",
        }
        .into();
        record.last_snapshot = snapshot::list(&self.path(snapshot::SNAPSHOT_DIR))
            .last()
            .map(|(at, p)| super::SnapshotRecord {
                path: format!(
                    "{}/{}",
                    snapshot::SNAPSHOT_DIR,
                    p.file_name().unwrap_or_default().to_string_lossy()
                ),
                at: *at,
                bytes: std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            });
        Ok(EtcdPreview { next_step, record })
    }
}

/// etcd's answers that mean "not now": its pacing and one-learner rule.
fn retryable(e: &EtcdError) -> bool {
    let m = e.message();
    matches!(e, EtcdError::Unreachable { .. })
        || [
            "unhealthy cluster",
            "too many learner",
            "not in sync",
            "not enough started members",
            "request timed out",
            "leader changed",
            "no leader",
            // A change sent through a member that has not applied the last one yet (a removed
            // leader, an add right after a removal).
            "member not found",
            // Another run of this master's agent added it first: the next look finds it.
            "Peer URLs already exists",
            "member ID already exist",
            "server stopped",
            "raft: stopped",
        ]
        .iter()
        .any(|s| m.contains(s))
}
