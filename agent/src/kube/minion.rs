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

impl KubeTier<'_> {
    /// One run of a minion's tier.
    pub async fn minion<H: Host, C: Cloud>(
        &self,
        host: &mut H,
        cloud: &mut C,
        rec: &mut KubeRecord,
        on_step: &mut dyn FnMut(&str),
    ) -> Result<KubeOutcome, KubeError> {
        rec.api_endpoint = format!("{}:{}", self.spec.api_name, self.spec.api_port);
        rec.api_server = self.api_target.map(|ip| ip.to_string());
        if self.path(KUBELET_CONF).exists() {
            rec.joined = true;
            host.unit_op(KUBELET_UNIT, UnitOp::Enable).await?;
            host.unit_op(KUBELET_UNIT, UnitOp::Start).await?;
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
                 with; it is not used, and the etcd leader's master replaces it at its next run",
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
                Ok(KubeOutcome::Ready)
            }
            Err(e) => {
                // kubeadm's documented way back from a failed join: the next run starts clean.
                if let Err(r) = kubeadm::run(
                    &kubeadm,
                    &["reset", "--force"],
                    Duration::from_secs(60),
                    &[],
                )
                .await
                {
                    log::warn!("after the failed join, {r}");
                }
                Err(KubeError::Join(e))
            }
        }
    }
}
