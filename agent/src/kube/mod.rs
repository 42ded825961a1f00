//! The Kubernetes tier of the `kubeadm` profile, on top of its etcd tier.
//!
//! - **Masters** run the control plane as systemd units over host binaries: kubeadm's
//!   `init phase` commands write the PKI, kubeconfigs and static-pod manifests, and each
//!   manifest's command line becomes a unit (kube-apiserver against the local etcd member with
//!   the etcd tier's client certificate; controller-manager and scheduler with leader election).
//!   The keys every master must share (cluster CA, service-account key, front-proxy CA) are made
//!   once, by the master that creates an etcd key first, and kept in Parameter Store under
//!   `/berth/CLUSTER/master/` (masters only, docs/iam.md).
//! - **One master at a time** carries the cluster-wide duties (the holder of an etcd key with a
//!   lease, claimed once its API server is ready): kubeadm's ConfigMaps and RBAC
//!   for joins, a bootstrap token published at `/berth/CLUSTER/node/join` (replaced when half of
//!   its TTL is gone), and deleting the Nodes of terminated minions.
//! - **Minions** run `kubeadm join` once, with that token and the CA's public-key pin.
//!
//! Every node resolves the profile's `api_name` through the managed block of `/etc/hosts`: a
//! master to itself, a minion to a master that answers (see [`api_target`]).
//!
//! Threat model and revocation: docs/kubernetes.md.

pub mod kubeadm;
pub mod master;
pub mod minion;
pub mod ticket;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::apply::{host_path, FileError};
use crate::config;
use crate::host::HostError;
use crate::profile::KubernetesCluster;
use crate::sources::SourceError;

/// `/berth/CLUSTER/node/join`: the join ticket ([`ticket::JoinTicket`]), readable by minions.
pub fn ticket_parameter(cluster: &str) -> String {
    format!("/berth/{cluster}/node/join")
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(transparent)]
    Cloud(#[from] SourceError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("kubernetes: {0}")]
    Command(kubeadm::CommandError),
    #[error("kubernetes: the join failed, and `kubeadm reset` undid it for the next run: {0}")]
    Join(kubeadm::CommandError),
    #[error(
        "kubernetes: the join failed ({join}), and so did `kubeadm reset` ({reset}); run \
         `kubeadm reset --force` on this node before the next run"
    )]
    JoinNotReset {
        join: Box<kubeadm::CommandError>,
        reset: Box<kubeadm::CommandError>,
    },
    #[error("kubernetes: etcd: {0}")]
    Etcd(String),
    #[error("kubernetes: {0}")]
    Setup(String),
    #[error(
        "Parameter Store: `{name}` does not hold what berth writes there ({reason}); a master \
         rewrites the join ticket at its next run; the shared keys are never remade for a \
         running cluster: restore the parameter from a master's /etc/kubernetes/pki"
    )]
    BadParameter { name: String, reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum KubeOutcome {
    Ready,
    Waiting(String),
}

/// The tier as the last run left it, kept in the node's state and shown by `status` (never a
/// token or a key).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct KubeRecord {
    /// `ready`, `waiting` or `failed`.
    pub health: String,
    pub detail: String,
    /// `api_name:port`, kubeadm's `controlPlaneEndpoint`.
    pub api_endpoint: String,
    /// The address `api_name` resolves to on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server: Option<String>,
    /// Master: its API server answered `/readyz`.
    #[serde(default)]
    pub api_ready: bool,
    /// Master: this master's agent carried the cluster-wide duties (its etcd member leads).
    #[serde(default)]
    pub cluster_duties: bool,
    /// Minion: `kubeadm join` succeeded (the kubelet has its kubeconfig).
    #[serde(default)]
    pub joined: bool,
    /// Minion: whether the API server has this node's Node object (`None`: not asked, or
    /// the API did not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered: Option<bool>,
    /// Minion: the Node's Ready condition (`True`, `False`, `Unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ready: Option<String>,
    /// When the published join token expires (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires: Option<u64>,
    /// The cluster CA's pin (`sha256:...`), which is public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_hash: Option<String>,
    /// Nodes this run deleted because their instances are terminated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted_nodes: Vec<String>,
}

impl KubeRecord {
    /// Lines for `status`.
    pub fn render(&self, now: u64) -> Vec<String> {
        let mut out = vec![format!("kubernetes: {}", self.health)];
        if !self.detail.is_empty() {
            out.push(format!("  {}", self.detail));
        }
        out.push(format!(
            "  API endpoint: {}{}",
            self.api_endpoint,
            self.api_server
                .as_ref()
                .map(|a| format!(" (resolves to {a} here)"))
                .unwrap_or_default()
        ));
        if self.api_ready {
            out.push("  this master's API server: ready".into());
        }
        if self.cluster_duties {
            out.push(format!(
                "  cluster duties: this master (it holds {})",
                master::DUTIES_KEY
            ));
        }
        if self.joined {
            out.push(match (self.registered, &self.node_ready) {
                (Some(true), Some(r)) => format!("  node: joined, registered, Ready={r}"),
                (Some(false), _) => "  node: joined, but not registered (no Node object)".into(),
                _ => "  node: joined (registration unknown: the API did not answer)".into(),
            });
        }
        if let Some(e) = self.token_expires {
            let when = if e > now {
                format!("in {} s", e - now)
            } else {
                format!("{} s ago", now - e)
            };
            out.push(format!("  join token expires: {e} (Unix s, {when})"));
        }
        if let Some(h) = &self.ca_cert_hash {
            out.push(format!("  CA pin: {h}"));
        }
        for n in &self.deleted_nodes {
            out.push(format!("  deleted Node {n}: instance terminated"));
        }
        out
    }
}

/// One node's Kubernetes tier for one run.
pub struct KubeTier<'a> {
    pub root: &'a Path,
    pub spec: &'a KubernetesCluster,
    pub config: &'a config::Kubernetes,
    pub cluster: &'a str,
    pub instance_id: &'a str,
    pub ip: Ipv4Addr,
    /// instance id → private IPv4 of every master discovery returned.
    pub masters: BTreeMap<String, Ipv4Addr>,
    /// Instance ids of the minions discovery returned.
    pub minions: BTreeSet<String>,
    /// Where `api_name` points on this node.
    pub api_target: Option<Ipv4Addr>,
}

impl KubeTier<'_> {
    fn path(&self, p: &str) -> PathBuf {
        host_path(self.root, p)
    }

    /// The tier as it stands, for `plan`: reads the join ticket's expiry, changes nothing.
    pub async fn preview<C: crate::etcd::tier::Cloud>(
        &self,
        cloud: &mut C,
        rec: &mut KubeRecord,
    ) -> Result<(), KubeError> {
        rec.api_endpoint = format!("{}:{}", self.spec.api_name, self.spec.api_port);
        rec.api_server = self.api_target.map(|ip| ip.to_string());
        if !self.masters.contains_key(self.instance_id) {
            rec.joined = self.path(minion::KUBELET_CONF).exists();
            if rec.joined && self.root == Path::new("/") {
                self.look_at_node(rec).await;
            }
        }
        if let Some(v) = cloud.parameter(&ticket_parameter(self.cluster)).await? {
            rec.token_expires = ticket::JoinTicket::parse(&v).ok().map(|t| t.expires);
        }
        Ok(())
    }

    /// The Kubernetes version: user-data's, else the profile's.
    pub fn version(&self) -> &str {
        self.config.version.as_deref().unwrap_or(&self.spec.version)
    }
}

/// How long a minion gives a master to accept a TCP connection on the API port.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// Where `api_name` points on this node: a master's own address; on a minion, the first master
/// (by instance id) whose API server answers, else the first master. With the cluster CA
/// (`ca_pem`, a joined minion has it), "answers" is `/readyz` returning 200 over TLS pinned to
/// it, so a master whose API server lost its etcd member is passed over; before the join, a
/// TCP connection on the API port. A master that dies is replaced at the minion's next run;
/// the kubelet reconnects by name.
pub async fn api_target(
    me_master: Option<Ipv4Addr>,
    masters: &BTreeMap<String, Ipv4Addr>,
    port: u16,
    ca_pem: Option<&str>,
) -> Option<Ipv4Addr> {
    if me_master.is_some() {
        return me_master;
    }
    let https = ca_pem.and_then(|pem| {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes()).ok()?;
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .no_proxy()
            .timeout(PROBE_TIMEOUT)
            .build()
            .ok()
    });
    for ip in masters.values() {
        let answers = match &https {
            Some(http) => http
                .get(format!("https://{ip}:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            None => {
                let addr = SocketAddr::from((*ip, port));
                matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
                    Ok(Ok(_))
                )
            }
        };
        if answers {
            return Some(*ip);
        }
    }
    masters.values().next().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_the_expiry_and_never_a_token() {
        let r = KubeRecord {
            health: "ready".into(),
            api_endpoint: "api.berth.internal:6443".into(),
            api_server: Some("10.0.0.5".into()),
            token_expires: Some(1000),
            joined: true,
            registered: Some(true),
            node_ready: Some("True".into()),
            ..Default::default()
        };
        let text = r.render(400).join("\n");
        assert!(text.contains("expires: 1000 (Unix s, in 600 s)"), "{text}");
        assert!(text.contains("resolves to 10.0.0.5"), "{text}");
        assert!(
            text.contains("node: joined, registered, Ready=True"),
            "{text}"
        );
        assert!(r.render(1500).join("\n").contains("500 s ago"));
    }

    #[tokio::test]
    async fn a_minion_points_the_api_name_at_a_master_that_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut masters = BTreeMap::new();
        // 127.0.0.3 refuses the port; 127.0.0.2 accepts.
        masters.insert("i-00000001".to_string(), Ipv4Addr::new(127, 0, 0, 3));
        masters.insert("i-00000002".to_string(), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(
            api_target(None, &masters, port, None).await,
            Some(Ipv4Addr::new(127, 0, 0, 2))
        );
        drop(listener);
        assert_eq!(
            api_target(None, &masters, port, None).await,
            Some(Ipv4Addr::new(127, 0, 0, 3)),
            "none answers: the first"
        );
        let me = Ipv4Addr::new(10, 0, 0, 9);
        assert_eq!(api_target(Some(me), &masters, port, None).await, Some(me));
        assert_eq!(api_target(None, &BTreeMap::new(), port, None).await, None);
    }
}
