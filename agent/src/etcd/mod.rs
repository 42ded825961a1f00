//! The etcd tier of profiles whose masters form an etcd cluster (`kubeadm`): every `role=master`
//! instance is a member, named by its instance id, with TLS on its peer and client URLs.
//!
//! One run looks at the cluster, takes the one step [`decide::next`] gives, and looks again,
//! until this master is a healthy voting member (and, on the leader, no dead member is left), a
//! step must wait longer than [`CONVERGE_DEADLINE`], or quorum is lost for good. Every step is
//! read back from etcd's member list, so a crash anywhere continues at the next run.
//!
//! Secrets: the cluster CA (certificate and key) and the seed marker live in Parameter Store
//! under `/berth/CLUSTER/master/`, which only masters may read (docs/iam.md).
//!
//! Not for: the Kubernetes tier, or anything on minions.

pub mod client;
pub mod cloud;
pub mod conf;
pub mod decide;
pub mod pki;
pub mod snapshot;
pub mod tier;

use std::collections::BTreeMap;
use std::time::Duration;

pub use decide::{Fate, Member, Removal, SeedMarker, Step, View};
pub use tier::{EtcdPreview, EtcdTier, TierError, TierOutcome};

/// How long one run keeps stepping (joins wait for etcd's 5 s pacing between membership changes
/// and for a learner to catch up; a start waits for READY=1).
pub const CONVERGE_DEADLINE: Duration = Duration::from_secs(150);

/// etcd's client and peer ports (IANA).
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// One member as `status` and `plan` show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberRecord {
    /// etcd's member id, in hex as etcdctl prints it.
    pub id: String,
    /// The instance id; empty while added and not started.
    pub name: String,
    pub peer_url: String,
    pub learner: bool,
    pub healthy: bool,
    pub leader: bool,
}

/// The last snapshot of the local member.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotRecord {
    pub path: String,
    /// Unix seconds.
    pub at: u64,
    pub bytes: u64,
}

/// The etcd tier as the last run left it, kept in the node's state.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct EtcdRecord {
    /// `healthy`, `waiting`, `needs restore`, or `failed`.
    pub health: String,
    /// What the last step was or what is awaited.
    pub detail: String,
    /// etcd's cluster id, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub members: Vec<MemberRecord>,
    /// Members that the leader's agent removes, and why.
    #[serde(default)]
    pub removable: Vec<String>,
    /// The membership changes this run made, in order.
    #[serde(default)]
    pub changes: Vec<String>,
    /// Instances seen stopped, and since when (Unix seconds): the grace period's clock.
    #[serde(default)]
    pub stopped_since: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot: Option<SnapshotRecord>,
}

impl EtcdRecord {
    /// Members of `view` as records.
    pub fn members_of(view: &View) -> Vec<MemberRecord> {
        view.members
            .iter()
            .map(|m| MemberRecord {
                id: format!("{:x}", m.id),
                name: m.name.clone(),
                peer_url: m.peer_urls.first().cloned().unwrap_or_default(),
                learner: m.is_learner,
                healthy: view.healthy.contains(&m.id),
                leader: view.leader == Some(m.id),
            })
            .collect()
    }

    /// The lines `status` prints for the etcd tier.
    pub fn render(&self) -> String {
        let mut out = format!("etcd: {}", self.health);
        if !self.detail.is_empty() {
            out.push_str(&format!(" ({})", self.detail));
        }
        out.push('\n');
        if let Some(c) = &self.cluster_id {
            out.push_str(&format!("  cluster {c}\n"));
        }
        for m in &self.members {
            let name = if m.name.is_empty() {
                "(not started)"
            } else {
                &m.name
            };
            out.push_str(&format!(
                "  member {} {name} {}{}{}{}\n",
                m.id,
                m.peer_url,
                if m.learner { " learner" } else { " voter" },
                if m.healthy { " healthy" } else { " unhealthy" },
                if m.leader { " leader" } else { "" },
            ));
        }
        for r in &self.removable {
            out.push_str(&format!("  to remove: {r}\n"));
        }
        for c in &self.changes {
            out.push_str(&format!("  changed: {c}\n"));
        }
        match &self.last_snapshot {
            Some(s) => out.push_str(&format!(
                "  last snapshot: {} ({} bytes, at {})\n",
                s.path, s.bytes, s.at
            )),
            None => out.push_str("  last snapshot: none yet\n"),
        }
        if self.health == "needs restore" {
            out.push_str(
                "  restore: see README, \"Restoring etcd\" (etcdctl snapshot restore from the \
                 latest snapshot on a surviving master, then start it as a one-member cluster \
                 and let the other masters join)\n",
            );
        }
        out
    }
}
