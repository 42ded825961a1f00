//! The etcd tier's pure core: from what one look at the cluster showed ([`Observation`]), the one
//! next [`Step`] this master takes. No I/O: every rule is tested on plain values.
//!
//! The rules are etcd's runtime-reconfiguration rules (etcd.io, "Runtime reconfiguration" and
//! "Design of runtime reconfiguration"), made safe for agents that run at once and crash anywhere:
//!
//! - **Formation.** Exactly one master seeds: the one with the smallest instance id among the
//!   masters discovery returned, and only after it claimed the cluster's seed marker in Parameter
//!   Store with a create-only put; and only when no master answers. A failed call never leads to
//!   seeding: an unanswered cluster whose marker says it was formed needs a restore.
//! - **Joins** go one at a time: add as a learner (etcd 3.4 allows one learner at a time and
//!   refuses a second), start with `existing` and the member list etcd returned, promote once the
//!   learner caught up. Each step is read back from the member list, so a crash between two steps
//!   continues where it stopped.
//! - **Removal** only of members whose instance EC2 reports terminated (or stopped past a grace
//!   period), never of a running instance (a partition is not a death), one at a time, by the
//!   leader's agent only, and never when the healthy voters left would be short of quorum.
//! - **Quorum loss** is never repaired automatically: the step is [`Step::NeedsRestore`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One etcd member, as `MemberList` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub id: u64,
    /// The member's `--name` (an instance id); empty while the member was added and never
    /// started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl Member {
    pub fn started(&self) -> bool {
        !self.name.is_empty()
    }

    /// The host of its first peer URL (`https://10.0.0.5:2380` → `10.0.0.5`).
    pub fn peer_host(&self) -> Option<&str> {
        let url = self.peer_urls.first()?;
        let rest = url.split_once("://")?.1;
        Some(rest.rsplit_once(':').map_or(rest, |(h, _)| h))
    }
}

/// The cluster as one member that answered showed it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct View {
    pub cluster_id: u64,
    pub members: Vec<Member>,
    /// The leader the answering member knows; `None` when it has none (no quorum).
    pub leader: Option<u64>,
    /// Members that answered a status request and know a leader.
    pub healthy: BTreeSet<u64>,
}

impl View {
    pub fn voters(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| !m.is_learner)
    }
}

/// What EC2 says of a member's instance, when discovery did not return it as a running master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fate {
    /// pending or running: alive, whatever etcd says (a partition is not a death).
    Running,
    /// stopping or stopped, first seen so at this Unix time (seconds).
    Stopped { since: u64 },
    /// shutting-down, terminated, or unknown to EC2 (terminated more than an hour ago).
    Gone,
}

/// The seed marker in Parameter Store (`/berth/CLUSTER/master/etcd-seed`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SeedMarker {
    /// The instance that claimed the seeding.
    pub seed: String,
    /// The cluster id, once the seed's member answered: from then on the cluster is formed and
    /// is never seeded again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

/// This master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub instance_id: String,
    pub peer_url: String,
}

/// Everything one look showed.
#[derive(Debug, Clone)]
pub struct Observation {
    pub me: Me,
    /// Instance ids of the masters discovery returned (pending or running), this one included.
    pub masters: BTreeSet<String>,
    /// Private IPv4 of each of them.
    pub master_ips: BTreeMap<String, String>,
    /// The local data directory holds a member (`member/` exists).
    pub local_data: bool,
    /// The local etcd unit is active.
    pub local_active: bool,
    /// The cluster, from the first member that answered; `None` when none did.
    pub view: Option<View>,
    /// Member names (instance ids) that discovery did not return, with what EC2 says of them.
    pub fates: BTreeMap<String, Fate>,
    pub seed: Option<SeedMarker>,
    /// Unix seconds.
    pub now: u64,
    /// How long a stopped master stays a member (seconds).
    pub stopped_grace: u64,
}

/// Why a member is removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Removal {
    /// EC2 reports its instance shutting-down, terminated, or no longer knows it.
    Terminated,
    /// Its instance has been stopped for longer than the grace period.
    StoppedPastGrace { seconds: u64 },
    /// Added, never started, and no running master has its peer address.
    UnstartedWithoutInstance,
    /// A dead member still holds this master's peer URL (EC2 gave its address to this instance).
    HoldsMyPeerUrl,
    /// This master's own member, whose data directory was lost: removed and added again.
    MyDataLost,
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Removal::Terminated => f.write_str("EC2 reports its instance terminated"),
            Removal::StoppedPastGrace { seconds } => {
                write!(
                    f,
                    "its instance has been stopped for {seconds} s, past the grace period"
                )
            }
            Removal::UnstartedWithoutInstance => {
                f.write_str("added but never started, and no running master has its address")
            }
            Removal::HoldsMyPeerUrl => {
                f.write_str("its instance is gone and this master now has its address (peer URL)")
            }
            Removal::MyDataLost => {
                f.write_str("this master's own member, whose data directory was lost")
            }
        }
    }
}

/// The one next step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Claim the seed marker, then start a one-member cluster (`new`).
    Seed,
    /// Start the local member from its data directory: no membership change.
    StartLocal,
    /// Add this master as a learner.
    AddLearner,
    /// Start this master's member, which the cluster lists and which never started, with
    /// `existing` and this initial cluster (`name=peer URL`, as `etcdctl member add` prints it).
    StartJoined {
        initial_cluster: Vec<(String, String)>,
    },
    /// Promote this master's learner to a voting member.
    Promote { id: u64 },
    /// Remove a member.
    Remove { id: u64, name: String, why: Removal },
    /// The local data directory belongs to a member the cluster no longer has: move it aside
    /// (never deleted) so that this master joins again.
    DiscardLocalData,
    /// Nothing to do now; the reason says what is awaited.
    Wait { reason: String },
    /// Quorum is lost for good: nothing is seeded automatically.
    NeedsRestore { reason: String },
    /// This master is a healthy voting member and nothing needs healing.
    Healthy,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Seed => f.write_str("seed the cluster (claim the seed marker, start `new`)"),
            Step::StartLocal => f.write_str("start the local member from its data directory"),
            Step::AddLearner => f.write_str("add this master as a learner"),
            Step::StartJoined { .. } => {
                f.write_str("start this master's added member (`existing`)")
            }
            Step::Promote { id } => write!(f, "promote learner {id:x}"),
            Step::Remove { id, name, why } => write!(
                f,
                "remove member {} ({why})",
                if name.is_empty() {
                    format!("{id:x}")
                } else {
                    name.clone()
                }
            ),
            Step::DiscardLocalData => {
                f.write_str("move the stale data directory aside and join again")
            }
            Step::Wait { reason } => write!(f, "wait: {reason}"),
            Step::NeedsRestore { reason } => write!(f, "needs restore: {reason}"),
            Step::Healthy => f.write_str("none (healthy voting member)"),
        }
    }
}

/// A majority of `n` voters.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// The master that seeds a new cluster: the smallest instance id discovery returned. Every
/// master computes it alike from the same DescribeInstances answer; the seed marker makes a
/// disagreement (a master not yet visible to another) harmless.
pub fn seed_candidate(masters: &BTreeSet<String>) -> Option<&str> {
    masters.iter().next().map(String::as_str)
}

/// The next step of this master.
pub fn next(o: &Observation) -> Step {
    match &o.view {
        None => unanswered(o),
        // A leader that does not answer is as good as none: a member may still name a dead
        // leader until its election timeout.
        Some(v) if v.leader.is_none_or(|l| !v.healthy.contains(&l)) => leaderless(o, v),
        Some(v) => with_leader(o, v),
    }
}

fn wait(reason: impl Into<String>) -> Step {
    Step::Wait {
        reason: reason.into(),
    }
}

/// No member answered at all.
fn unanswered(o: &Observation) -> Step {
    if o.local_data {
        if !o.local_active {
            return Step::StartLocal;
        }
        return wait("the local member is started and does not answer yet");
    }
    let me = &o.me.instance_id;
    let others_running = o.masters.iter().any(|m| m != me);
    match &o.seed {
        // Members may be restarting: only when no other master runs is the data gone.
        Some(m) if m.cluster_id.is_some() && others_running => wait(format!(
            "no member of cluster {} answers; waiting for the other masters",
            m.cluster_id.as_deref().unwrap_or_default()
        )),
        Some(m) if m.cluster_id.is_some() => Step::NeedsRestore {
            reason: format!(
                "cluster {} was formed (seeded by {}), no member answers and this master has no \
                 data: restore from a snapshot (README, \"Restoring etcd\")",
                m.cluster_id.as_deref().unwrap_or_default(),
                m.seed
            ),
        },
        Some(m) if &m.seed == me => Step::Seed,
        Some(m) if o.masters.contains(&m.seed) => {
            wait(format!("waiting for {} to seed the cluster", m.seed))
        }
        // The seed never reported the cluster formed and is not running: whether anything was
        // ever written is unknown, so nothing is seeded automatically.
        Some(m) => Step::NeedsRestore {
            reason: format!(
                "{} claimed the seeding and is no longer running, and no member answers: if the \
                 cluster never formed, delete the seed marker parameter and the masters seed \
                 again; otherwise restore from a snapshot (README, \"Restoring etcd\")",
                m.seed
            ),
        },
        None => match seed_candidate(&o.masters) {
            Some(s) if s == me => Step::Seed,
            Some(s) => wait(format!("waiting for {s} to seed the cluster")),
            None => wait("discovery returned no master"),
        },
    }
}

/// Dead: what EC2 says of the instance behind `m`, when it is gone for good.
fn removal_of(o: &Observation, m: &Member) -> Option<Removal> {
    if m.started() {
        if o.masters.contains(&m.name) {
            return None;
        }
        return match o.fates.get(&m.name)? {
            Fate::Running => None,
            Fate::Gone => Some(Removal::Terminated),
            Fate::Stopped { since } => {
                let seconds = o.now.saturating_sub(*since);
                (seconds >= o.stopped_grace).then_some(Removal::StoppedPastGrace { seconds })
            }
        };
    }
    // Unstarted: known by its address only.
    let host = m.peer_host()?;
    let held = o.master_ips.values().any(|ip| ip == host);
    (!held).then_some(Removal::UnstartedWithoutInstance)
}

/// A member answered but knows no leader.
fn leaderless(o: &Observation, v: &View) -> Step {
    let voters: Vec<&Member> = v.voters().collect();
    let dead = voters.iter().filter(|m| removal_of(o, m).is_some()).count();
    let alive = voters.len() - dead;
    if alive < quorum(voters.len()) {
        return Step::NeedsRestore {
            reason: format!(
                "quorum lost: {dead} of {} voting members are gone for good (EC2), {alive} left, \
                 {} needed; restore from the latest snapshot (README, \"Restoring etcd\")",
                voters.len(),
                quorum(voters.len())
            ),
        };
    }
    if o.local_data && !o.local_active {
        return Step::StartLocal;
    }
    wait(format!(
        "no leader: {alive} of {} voting members may still come back",
        voters.len()
    ))
}

fn with_leader(o: &Observation, v: &View) -> Step {
    let me = &o.me;
    // A started member of another instance on this master's peer URL: EC2 gave this instance a
    // dead master's address. It must go before this master can be added.
    if let Some(holder) = v
        .members
        .iter()
        .find(|m| m.started() && m.name != me.instance_id && m.peer_urls.contains(&me.peer_url))
    {
        return match removal_of(o, holder) {
            Some(_) => Step::Remove {
                id: holder.id,
                name: holder.name.clone(),
                why: Removal::HoldsMyPeerUrl,
            },
            None => wait(format!(
                "member {} still holds this master's peer URL {} and its instance is not gone",
                holder.name, me.peer_url
            )),
        };
    }
    let mine = v
        .members
        .iter()
        .find(|m| m.name == me.instance_id || (!m.started() && m.peer_urls.contains(&me.peer_url)));
    match (mine, o.local_data) {
        (Some(_), true) if !o.local_active => Step::StartLocal,
        (Some(m), true) if m.is_learner => Step::Promote { id: m.id },
        (Some(_), true) => heal(o, v),
        (Some(m), false) if !m.started() => Step::StartJoined {
            initial_cluster: initial_cluster(v, m.id, &me.instance_id),
        },
        (Some(m), false) => guarded_remove(v, m, Removal::MyDataLost),
        (None, true) => Step::DiscardLocalData,
        // etcd refuses every add while the leader is not connected to all voting members
        // (strict reconfiguration check): a dead voter must go first, and that is the leader's
        // agent's removal.
        (None, false) if v.voters().any(|m| removal_of(o, m).is_some()) => {
            let dead: Vec<&str> = v
                .voters()
                .filter(|m| removal_of(o, m).is_some())
                .map(|m| m.name.as_str())
                .collect();
            wait(format!(
                "member {} is gone; the leader's agent removes it before this master joins \
                 (etcd refuses an add while a voting member is unreachable)",
                dead.join(", ")
            ))
        }
        (None, false) => match v.members.iter().find(|m| m.is_learner) {
            Some(l) if removal_of(o, l).is_none() => wait(format!(
                "another master joins first (learner {})",
                if l.started() {
                    l.name.as_str()
                } else {
                    "not started yet"
                }
            )),
            // A dead learner blocks every add (etcd 3.4 allows one learner): the leader's
            // agent removes it; this master waits for that.
            Some(_) => wait("a dead learner blocks the add; the leader's agent removes it"),
            None => Step::AddLearner,
        },
    }
}

/// The initial cluster a joining member starts with: every member's name and peer URLs, its own
/// under its own name (as `etcdctl member add` prints `ETCD_INITIAL_CLUSTER`).
pub fn initial_cluster(v: &View, my_id: u64, my_name: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in &v.members {
        let name = if m.id == my_id { my_name } else { &m.name };
        for u in &m.peer_urls {
            out.push((name.to_string(), u.clone()));
        }
    }
    out
}

/// Remove `m` if the healthy voters left keep quorum.
fn guarded_remove(v: &View, m: &Member, why: Removal) -> Step {
    let voters = v.voters().count();
    let after = if m.is_learner { voters } else { voters - 1 };
    let healthy_after = v
        .voters()
        .filter(|x| x.id != m.id && v.healthy.contains(&x.id))
        .count();
    if after == 0 || healthy_after < quorum(after) {
        return wait(format!(
            "removing member {} ({why}) would leave {healthy_after} healthy of {after} voting \
             members, short of quorum",
            if m.name.is_empty() {
                "not started"
            } else {
                &m.name
            }
        ));
    }
    Step::Remove {
        id: m.id,
        name: m.name.clone(),
        why,
    }
}

/// This master is a voting member: the leader's agent removes one dead member, if any.
fn heal(o: &Observation, v: &View) -> Step {
    let mine = v.members.iter().find(|m| m.name == o.me.instance_id);
    let Some(mine) = mine else {
        return Step::Healthy;
    };
    if v.leader != Some(mine.id) {
        return Step::Healthy;
    }
    let mut dead: Vec<(&Member, Removal)> = v
        .members
        .iter()
        .filter(|m| m.id != mine.id)
        .filter_map(|m| removal_of(o, m).map(|r| (m, r)))
        .collect();
    // Learners first (they block joins), then by id: one removal per step, the same order on
    // every run.
    dead.sort_by_key(|(m, _)| (!m.is_learner, m.id));
    match dead.into_iter().next() {
        None => Step::Healthy,
        Some((m, why)) => guarded_remove(v, m, why),
    }
}

/// The removals [`heal`] would make one after another, for `plan` and `status`: every member
/// whose instance is gone, with the reason.
pub fn removable(o: &Observation) -> Vec<(String, Removal)> {
    let Some(v) = &o.view else {
        return Vec::new();
    };
    v.members
        .iter()
        .filter(|m| m.name != o.me.instance_id)
        .filter_map(|m| {
            removal_of(o, m).map(|r| {
                let who = if m.started() {
                    m.name.clone()
                } else {
                    format!("{:x} (not started)", m.id)
                };
                (who, r)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "i-0aaa";
    const B: &str = "i-0bbb";
    const C: &str = "i-0ccc";

    fn ip(id: &str) -> String {
        match id {
            A => "10.0.0.1".into(),
            B => "10.0.0.2".into(),
            C => "10.0.0.3".into(),
            _ => "10.0.0.9".into(),
        }
    }

    fn peer(id: &str) -> String {
        format!("https://{}:2380", ip(id))
    }

    fn member(n: u64, id: &str) -> Member {
        Member {
            id: n,
            name: id.into(),
            peer_urls: vec![peer(id)],
            client_urls: vec![format!("https://{}:2379", ip(id))],
            is_learner: false,
        }
    }

    fn obs(me: &str, masters: &[&str]) -> Observation {
        Observation {
            me: Me {
                instance_id: me.into(),
                peer_url: peer(me),
            },
            masters: masters.iter().map(|s| s.to_string()).collect(),
            master_ips: masters.iter().map(|s| (s.to_string(), ip(s))).collect(),
            local_data: false,
            local_active: false,
            view: None,
            fates: BTreeMap::new(),
            seed: None,
            now: 10_000,
            stopped_grace: 600,
        }
    }

    fn view(members: Vec<Member>, leader: Option<u64>) -> View {
        View {
            cluster_id: 7,
            healthy: members.iter().map(|m| m.id).collect(),
            members,
            leader,
        }
    }

    #[test]
    fn exactly_one_master_seeds_and_only_when_nobody_answers() {
        let all = [A, B, C];
        assert_eq!(next(&obs(A, &all)), Step::Seed);
        for other in [B, C] {
            assert!(matches!(next(&obs(other, &all)), Step::Wait { .. }));
        }
        // A master that sees a member answer never seeds, smallest id or not.
        let mut o = obs(A, &all);
        o.view = Some(view(vec![member(1, B)], Some(1)));
        assert_eq!(next(&o), Step::AddLearner);
    }

    #[test]
    fn the_seed_marker_decides_when_views_disagree() {
        // C does not see A yet and would be the candidate among {B, C}... B is; but A claimed.
        let mut o = obs(B, &[B, C]);
        o.seed = Some(SeedMarker {
            seed: A.into(),
            cluster_id: None,
        });
        assert!(matches!(
            next(&o),
            Step::NeedsRestore { .. } | Step::Wait { .. }
        ));
        assert_ne!(next(&o), Step::Seed);
        // The claimant resumes its own seeding after a crash.
        let mut o = obs(A, &[A, B]);
        o.seed = Some(SeedMarker {
            seed: A.into(),
            cluster_id: None,
        });
        assert_eq!(next(&o), Step::Seed);
    }

    #[test]
    fn a_formed_cluster_is_never_seeded_again() {
        let mut o = obs(A, &[A]);
        o.seed = Some(SeedMarker {
            seed: A.into(),
            cluster_id: Some("7".into()),
        });
        assert!(matches!(next(&o), Step::NeedsRestore { .. }));
        o.masters.insert(B.into());
        assert!(matches!(next(&o), Step::Wait { .. }));
    }

    #[test]
    fn a_join_goes_add_start_promote() {
        let mut o = obs(C, &[A, B, C]);
        o.view = Some(view(vec![member(1, A), member(2, B)], Some(1)));
        assert_eq!(next(&o), Step::AddLearner);
        // Added, not started: its peer URL is listed without a name.
        let mut added = member(3, C);
        added.name.clear();
        added.is_learner = true;
        o.view = Some(view(
            vec![member(1, A), member(2, B), added.clone()],
            Some(1),
        ));
        assert_eq!(
            next(&o),
            Step::StartJoined {
                initial_cluster: vec![
                    (A.into(), peer(A)),
                    (B.into(), peer(B)),
                    (C.into(), peer(C))
                ]
            }
        );
        // Started as a learner.
        let mut learner = member(3, C);
        learner.is_learner = true;
        o.view = Some(view(vec![member(1, A), member(2, B), learner], Some(1)));
        o.local_data = true;
        o.local_active = true;
        assert_eq!(next(&o), Step::Promote { id: 3 });
        o.view = Some(view(
            vec![member(1, A), member(2, B), member(3, C)],
            Some(1),
        ));
        assert_eq!(next(&o), Step::Healthy);
    }

    #[test]
    fn a_second_joiner_waits_for_a_live_learner() {
        let mut learner = member(3, C);
        learner.is_learner = true;
        let mut o = obs(B, &[A, B, C]);
        o.view = Some(view(vec![member(1, A), learner], Some(1)));
        assert!(matches!(next(&o), Step::Wait { .. }));
    }

    #[test]
    fn the_leader_removes_a_terminated_member_and_nobody_else_does() {
        let members = vec![member(1, A), member(2, B), member(3, C)];
        let mut o = obs(A, &[A, B]);
        o.local_data = true;
        o.local_active = true;
        o.fates.insert(C.into(), Fate::Gone);
        let mut v = view(members, Some(1));
        v.healthy.remove(&3);
        o.view = Some(v.clone());
        assert_eq!(
            next(&o),
            Step::Remove {
                id: 3,
                name: C.into(),
                why: Removal::Terminated
            }
        );
        // B is not the leader: it leaves the removal to A.
        let mut ob = o.clone();
        ob.me = Me {
            instance_id: B.into(),
            peer_url: peer(B),
        };
        assert_eq!(next(&ob), Step::Healthy);
    }

    #[test]
    fn a_running_instance_is_never_removed_however_unreachable() {
        let mut o = obs(A, &[A, B]);
        o.local_data = true;
        o.local_active = true;
        o.fates.insert(C.into(), Fate::Running);
        let mut v = view(vec![member(1, A), member(2, B), member(3, C)], Some(1));
        v.healthy.remove(&3);
        o.view = Some(v);
        assert_eq!(next(&o), Step::Healthy);
        // Without any word from EC2, nothing is removed either.
        o.fates.clear();
        assert_eq!(next(&o), Step::Healthy);
    }

    #[test]
    fn a_stopped_instance_is_removed_only_past_the_grace_period() {
        let mut o = obs(A, &[A, B]);
        o.local_data = true;
        o.local_active = true;
        o.view = Some(view(
            vec![member(1, A), member(2, B), member(3, C)],
            Some(1),
        ));
        o.fates.insert(C.into(), Fate::Stopped { since: 9_800 });
        assert_eq!(next(&o), Step::Healthy);
        o.fates.insert(C.into(), Fate::Stopped { since: 9_000 });
        assert!(matches!(next(&o), Step::Remove { id: 3, .. }));
    }

    #[test]
    fn removal_never_costs_quorum() {
        // 5 voters, C gone, two others unhealthy: removing C leaves 2 healthy of 4 (< 3).
        let d = "i-0ddd";
        let e = "i-0eee";
        let members = vec![
            member(1, A),
            member(2, B),
            member(3, C),
            member(4, d),
            member(5, e),
        ];
        let mut o = obs(A, &[A, B, d, e]);
        o.local_data = true;
        o.local_active = true;
        o.fates.insert(C.into(), Fate::Gone);
        let mut v = view(members, Some(1));
        v.healthy = [1, 2].into_iter().collect();
        o.view = Some(v);
        assert!(matches!(next(&o), Step::Wait { .. }), "{:?}", next(&o));
    }

    #[test]
    fn lost_data_removes_my_member_then_adds_it_again() {
        let mut o = obs(C, &[A, B, C]);
        o.view = Some(view(
            vec![member(1, A), member(2, B), member(3, C)],
            Some(1),
        ));
        assert_eq!(
            next(&o),
            Step::Remove {
                id: 3,
                name: C.into(),
                why: Removal::MyDataLost
            }
        );
        // Data present but the cluster does not list this member: moved aside, then a join.
        o.local_data = true;
        o.local_active = true;
        o.view = Some(view(vec![member(1, A), member(2, B)], Some(1)));
        assert_eq!(next(&o), Step::DiscardLocalData);
    }

    #[test]
    fn a_replacement_on_a_dead_members_address_removes_it_first() {
        let d = "i-0ddd";
        let mut old = member(3, C);
        old.peer_urls = vec![peer(d)];
        let mut o = obs(d, &[A, B, d]);
        o.fates.insert(C.into(), Fate::Gone);
        o.view = Some(view(vec![member(1, A), member(2, B), old], Some(1)));
        assert_eq!(
            next(&o),
            Step::Remove {
                id: 3,
                name: C.into(),
                why: Removal::HoldsMyPeerUrl
            }
        );
    }

    #[test]
    fn quorum_lost_for_good_needs_a_restore_and_never_a_seed() {
        let mut o = obs(A, &[A]);
        o.local_data = true;
        o.local_active = true;
        o.fates.insert(B.into(), Fate::Gone);
        o.fates.insert(C.into(), Fate::Gone);
        let mut v = view(vec![member(1, A), member(2, B), member(3, C)], None);
        v.healthy.clear();
        o.view = Some(v.clone());
        assert!(matches!(next(&o), Step::NeedsRestore { .. }));
        // One of the two only partitioned: wait for it.
        o.fates.insert(B.into(), Fate::Running);
        assert!(matches!(next(&o), Step::Wait { .. }));
    }

    #[test]
    fn an_unstarted_member_without_instance_is_removed_by_the_leader() {
        let mut ghost = member(9, "i-0999");
        ghost.name.clear();
        ghost.is_learner = true;
        let mut o = obs(A, &[A, B]);
        o.local_data = true;
        o.local_active = true;
        o.view = Some(view(vec![member(1, A), member(2, B), ghost], Some(1)));
        assert_eq!(
            next(&o),
            Step::Remove {
                id: 9,
                name: String::new(),
                why: Removal::UnstartedWithoutInstance
            }
        );
    }

    #[test]
    fn a_joiner_waits_for_the_leader_to_remove_a_dead_voter() {
        let mut o = obs(C, &[A, C]);
        o.fates.insert(B.into(), Fate::Gone);
        o.view = Some(view(vec![member(1, A), member(2, B)], Some(1)));
        match next(&o) {
            Step::Wait { reason } => assert!(reason.contains(B), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
