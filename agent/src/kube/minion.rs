//! A minion's Kubernetes tier: `kubeadm join` with the ticket masters publish, once.

use std::path::Path;
use std::time::Duration;

use super::kubeadm::{self, JoinConfig, Scratch};
use super::ticket::JoinTicket;
use super::{ticket_parameter, KubeError, KubeOutcome, KubeRecord, KubeTier};
use crate::etcd::tier::Cloud;
use crate::host::{Host, UnitOp};

/// What a joined node has: the kubelet's kubeconfig, written at the end of its TLS bootstrap.
pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
/// The unit `kubeadm join` restarts.
pub const KUBELET_UNIT: &str = "kubelet.service";

/// A join needs a token that is still valid when the kubelet's TLS bootstrap uses it, about two
/// minutes after discovery; a token with less left is not used.
pub const TOKEN_MARGIN_SECONDS: u64 = 180;
/// `kubeadm join`: discovery in under a second, the kubelet's TLS bootstrap in 15–20 s here;
/// kubeadm itself gives the bootstrap up to about 2 minutes.
const JOIN_DEADLINE: Duration = Duration::from_secs(240);
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the registration check waits for the API server.
const NODE_LOOK_TIMEOUT: Duration = Duration::from_secs(5);

impl KubeTier<'_> {
    /// Whether this node's Node object exists and its Ready condition, asked of the API server
    /// with the kubelet's own credentials (NodeRestriction lets a node read its Node); recorded
    /// for `status`, never a reason to fail the run.
    pub(crate) async fn look_at_node(&self, rec: &mut KubeRecord) {
        match node_status(self.root, self.instance_id).await {
            Ok(ready) => {
                rec.registered = Some(ready.is_some());
                rec.node_ready = ready;
            }
            Err(e) => {
                log::warn!("kubernetes: could not ask the API server for this node: {e}");
                rec.registered = None;
                rec.node_ready = None;
            }
        }
    }

    /// One run of a minion's tier.
    pub async fn minion<H: Host, C: Cloud>(
        &self,
        host: &mut H,
        cloud: &mut C,
        rec: &mut KubeRecord,
        on_step: &mut dyn FnMut(&str),
    ) -> Result<KubeOutcome, KubeError> {
        *rec = KubeRecord {
            api_endpoint: format!("{}:{}", self.spec.api_name, self.spec.api_port),
            api_server: self.api_target.map(|ip| ip.to_string()),
            ..KubeRecord::default()
        };
        if self.path(KUBELET_CONF).exists() {
            rec.joined = true;
            host.unit_op(KUBELET_UNIT, UnitOp::Enable).await?;
            host.unit_op(KUBELET_UNIT, UnitOp::Start).await?;
            self.look_at_node(rec).await;
            return Ok(KubeOutcome::Ready);
        }
        let name = ticket_parameter(self.cluster);
        let Some(text) = cloud.parameter(&name).await? else {
            return Ok(KubeOutcome::Waiting(format!(
                "kubernetes: no join ticket in {name} yet; the masters publish one once their \
                 API server is up"
            )));
        };
        let t = JoinTicket::parse(&text).map_err(|reason| KubeError::BadParameter {
            name: name.clone(),
            reason,
        })?;
        rec.token_expires = Some(t.expires);
        let now = crate::state::now_secs();
        if t.left(now) < TOKEN_MARGIN_SECONDS {
            return Ok(KubeOutcome::Waiting(format!(
                "kubernetes: the join token in {name} (id {}) expires in {} s, too soon to join \
                 with; it is not used, and the master holding the cluster duties replaces it at its next run",
                t.token_id(),
                t.left(now)
            )));
        }
        if self.masters.is_empty() {
            return Ok(KubeOutcome::Waiting(
                "kubernetes: no master to join: none of this cluster's instances is tagged \
                 role=master"
                    .into(),
            ));
        }
        let scratch = Scratch::new(&self.path("/run"))
            .map_err(|e| KubeError::Setup(format!("a scratch directory under /run: {e}")))?;
        let conf = scratch
            .write(
                "join.yaml",
                &kubeadm::join_config(&JoinConfig {
                    api_server: &t.api_server,
                    token: &t.token,
                    ca_cert_hash: &t.ca_cert_hash,
                    node_name: self.instance_id,
                    ignore_preflight_errors: &self.config.ignore_preflight_errors,
                    discovery_timeout: DISCOVERY_TIMEOUT,
                }),
            )
            .map_err(|e| KubeError::Setup(format!("writing the join configuration: {e}")))?;
        let conf = conf.to_string_lossy().into_owned();
        log::info!(
            "joining the cluster at {} with token id {} (expires in {} s), CA pin {}",
            t.api_server,
            t.token_id(),
            t.left(now),
            t.ca_cert_hash
        );
        let kubeadm = Path::new(&self.spec.bin_dir).join("kubeadm");
        let joined = kubeadm::run(
            &kubeadm,
            &["join", "--config", &conf],
            JOIN_DEADLINE,
            &[&t.token],
        )
        .await;
        drop(scratch);
        match joined {
            Ok(_) => {
                on_step("kubeadm join");
                host.unit_op(KUBELET_UNIT, UnitOp::Enable).await?;
                rec.joined = true;
                log::info!("joined the cluster as node {}", self.instance_id);
                self.look_at_node(rec).await;
                Ok(KubeOutcome::Ready)
            }
            Err(e) => {
                // kubeadm gave up after the kubelet's TLS bootstrap (it waits for the Node to
                // annotate it): if the Node is there, the join worked.
                if self.path(KUBELET_CONF).exists() {
                    if let Ok(Some(_)) = node_status(self.root, self.instance_id).await {
                        log::warn!(
                            "kubeadm join reported a failure after the node registered: {e}"
                        );
                        host.unit_op(KUBELET_UNIT, UnitOp::Enable).await?;
                        rec.joined = true;
                        self.look_at_node(rec).await;
                        return Ok(KubeOutcome::Ready);
                    }
                }
                // kubeadm's documented way back from a failed join: the next run starts clean.
                let reset = kubeadm::run(
                    &kubeadm,
                    &["reset", "--force"],
                    Duration::from_secs(60),
                    &[],
                )
                .await;
                // kubeadm removes the bootstrap kubeconfig (it holds the token) in a deferred
                // call that a killed kubeadm never runs.
                let _ = std::fs::remove_file(self.path("/etc/kubernetes/bootstrap-kubelet.conf"));
                match reset {
                    Ok(_) => Err(KubeError::Join(e)),
                    Err(r) => Err(KubeError::JoinNotReset {
                        join: Box::new(e),
                        reset: Box::new(r),
                    }),
                }
            }
        }
    }
}

/// `Some(Ready condition status)` when the Node `name` exists, `None` when the API says it does
/// not (404); an error when the API cannot be asked. Credentials and CA from the kubelet's
/// kubeconfig (files or inline data, as the kubelet and kubeadm write it).
pub async fn node_status(root: &Path, name: &str) -> Result<Option<String>, String> {
    let conf_path = crate::apply::host_path(root, KUBELET_CONF);
    let text = std::fs::read_to_string(&conf_path).map_err(|e| format!("{KUBELET_CONF}: {e}"))?;
    let conf: serde_json::Value =
        serde_norway::from_str(&text).map_err(|e| format!("{KUBELET_CONF}: not YAML: {e}"))?;
    let cluster = conf.pointer("/clusters/0/cluster").ok_or("no cluster")?;
    let user = conf.pointer("/users/0/user").ok_or("no user")?;
    let server = cluster
        .get("server")
        .and_then(|v| v.as_str())
        .ok_or("no server")?;
    let read = |data: &str, file: &str, what: &str| -> Result<Vec<u8>, String> {
        use base64::Engine;
        if let Some(d) = cluster
            .get(data)
            .or_else(|| user.get(data))
            .and_then(|v| v.as_str())
        {
            return base64::engine::general_purpose::STANDARD
                .decode(d)
                .map_err(|e| format!("{what}: {e}"));
        }
        let f = cluster
            .get(file)
            .or_else(|| user.get(file))
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("no {what}"))?;
        std::fs::read(crate::apply::host_path(root, f)).map_err(|e| format!("{what} {f}: {e}"))
    };
    let ca = read("certificate-authority-data", "certificate-authority", "CA")?;
    let mut identity = read(
        "client-certificate-data",
        "client-certificate",
        "client certificate",
    )?;
    let key = read("client-key-data", "client-key", "client key")?;
    if key != identity {
        identity.extend_from_slice(&key);
    }
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).map_err(|e| e.to_string())?)
        .identity(reqwest::Identity::from_pem(&identity).map_err(|e| e.to_string())?)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(NODE_LOOK_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}/api/v1/nodes/{name}", server.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| crate::etcd::client::error_chain(&e))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > 1 << 20 {
        return Err(format!("{url}: a Node of more than 1 MiB"));
    }
    let node: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    let ready = node
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
        .to_string();
    Ok(Some(ready))
}
