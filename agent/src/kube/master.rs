//! A master's Kubernetes tier: the shared keys, kubeadm's phases, the control plane's units,
//! and (on the master holding [`DUTIES_KEY`] only) the cluster-wide duties: kubeadm's ConfigMaps and
//! RBAC, the join ticket, and deleting the Nodes of terminated minions.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::kubeadm::{self, BootstrapToken, MasterConfig, Scratch, COMPONENTS};
use super::ticket::{self, JoinTicket};
use super::{KubeError, KubeOutcome, KubeRecord, KubeTier};
use crate::apply::write_if_changed;
use crate::etcd::client::EtcdClient;
use crate::etcd::tier::{is_instance_id, Cloud};
use crate::host::{Host, UnitOp};

/// kubeadm's files on a master (fixed by kubeadm).
pub const PKI_DIR: &str = "/etc/kubernetes/pki";
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
pub const MANIFESTS: &str = "/etc/kubernetes/manifests";
/// The configuration berth gives kubeadm's phases (no secret in it).
pub const KUBEADM_CONF: &str = "/etc/kubernetes/berth-kubeadm.yaml";
const UNIT_DIR: &str = "/etc/systemd/system";

/// The etcd key whose creator makes the shared keys: created once by a transaction, so one
/// master is chosen while the others wait; taken over only from a master that is gone.
pub const KEYS_OWNER_KEY: &str = "/berth/kubernetes/shared-keys-owner";

/// The etcd key whose holder carries the cluster-wide duties, attached to a lease of
/// [`DUTIES_TTL`]: a master claims it only once its own API server is ready, and renews it at
/// each run; when the holder stops running (or its API server stops answering), the lease
/// expires and the next master to run takes it. One holder at a time, whichever master leads
/// etcd.
pub const DUTIES_KEY: &str = "/berth/kubernetes/cluster-duties";
/// Seconds: three of the reconcile daemon's default polls.
pub const DUTIES_TTL: u64 = 90;

/// A fresh API server answers `/readyz` 5–7 s after its start here; a loaded machine and a
/// restart of all three components take longer.
const API_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Each kubeadm phase runs in about a second.
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// `upload-config kubelet` creates its ConfigMap within a second, then waits up to 2 minutes
/// for a Node of the master's name, which a master without a kubelet never has.
const UPLOAD_KUBELET_WAIT: Duration = Duration::from_secs(30);

/// A pair of PEM files kept in Parameter Store as one JSON object.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    /// A certificate, or for the service-account key, the public key.
    pub public: String,
    pub key: String,
}

/// The shared keys: what every master's control plane must have the same of.
pub struct SharedKey {
    /// The parameter's last path element.
    pub parameter: &'static str,
    /// The public and private file under /etc/kubernetes/pki.
    pub public_file: &'static str,
    pub key_file: &'static str,
    /// The kubeadm phase that makes it.
    pub phase: &'static str,
}

pub const SHARED_KEYS: [SharedKey; 3] = [
    SharedKey {
        parameter: "kubernetes-ca",
        public_file: "ca.crt",
        key_file: "ca.key",
        phase: "ca",
    },
    SharedKey {
        parameter: "kubernetes-sa",
        public_file: "sa.pub",
        key_file: "sa.key",
        // Made by berth (see `service_account_key`), not a kubeadm phase.
        phase: "sa",
    },
    SharedKey {
        parameter: "kubernetes-front-proxy-ca",
        public_file: "front-proxy-ca.crt",
        key_file: "front-proxy-ca.key",
        phase: "front-proxy-ca",
    },
];

/// `/berth/CLUSTER/master/NAME`: readable by masters only (docs/iam.md).
pub fn key_parameter(cluster: &str, key: &SharedKey) -> String {
    format!("/berth/{cluster}/master/{}", key.parameter)
}

/// What the master's tier needs of its etcd tier.
pub struct EtcdLink<'a> {
    pub client: &'a EtcdClient,
    /// This master's client URL.
    pub endpoint: String,
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
}

impl KubeTier<'_> {
    fn bin(&self, name: &str) -> PathBuf {
        Path::new(&self.spec.bin_dir).join(name)
    }

    fn master_config<'c>(&'c self, etcd: &'c EtcdLink<'_>, certs: &'c str) -> MasterConfig<'c> {
        MasterConfig {
            cluster: self.cluster,
            version: self.version(),
            instance_id: self.instance_id,
            ip: self.ip,
            api_name: &self.spec.api_name,
            api_port: self.spec.api_port,
            service_subnet: &self.config.service_cidr,
            pod_subnet: &self.spec.pod_subnet,
            etcd_endpoint: etcd.endpoint.clone(),
            etcd_ca: &etcd.ca_file,
            etcd_cert: &etcd.cert_file,
            etcd_key: &etcd.key_file,
            certificates_dir: certs,
        }
    }

    async fn kubeadm(&self, args: &[&str], secrets: &[&str]) -> Result<String, KubeError> {
        kubeadm::run(&self.bin("kubeadm"), args, PHASE_DEADLINE, secrets)
            .await
            .map_err(KubeError::Command)
    }

    async fn kubectl(&self, args: &[&str]) -> Result<String, KubeError> {
        let mut all = vec!["--kubeconfig", ADMIN_CONF, "--request-timeout=20s"];
        all.extend_from_slice(args);
        kubeadm::run(&self.bin("kubectl"), &all, PHASE_DEADLINE, &[])
            .await
            .map_err(KubeError::Command)
    }

    /// One run of a master's tier.
    pub async fn master<H: Host, C: Cloud>(
        &self,
        host: &mut H,
        cloud: &mut C,
        etcd: &EtcdLink<'_>,
        rec: &mut KubeRecord,
        on_step: &mut dyn FnMut(&str),
    ) -> Result<KubeOutcome, KubeError> {
        // What this run finds out; nothing of a previous run's is kept.
        *rec = KubeRecord {
            api_endpoint: format!("{}:{}", self.spec.api_name, self.spec.api_port),
            api_server: Some(self.ip.to_string()),
            ..KubeRecord::default()
        };
        if let Some(wait) = self.shared_keys(cloud, etcd, on_step).await? {
            return Ok(KubeOutcome::Waiting(wait));
        }
        let config = kubeadm::init_config(&self.master_config(etcd, PKI_DIR), None);
        let conf_changed = write_if_changed(&self.path(KUBEADM_CONF), config.as_bytes(), 0o644)?;
        let outputs_missing = [
            "apiserver.crt",
            "apiserver-kubelet-client.crt",
            "front-proxy-client.crt",
        ]
        .iter()
        .any(|f| !self.path(&format!("{PKI_DIR}/{f}")).exists())
            || ["admin.conf", "controller-manager.conf", "scheduler.conf"]
                .iter()
                .any(|f| !self.path(&format!("/etc/kubernetes/{f}")).exists())
            || COMPONENTS
                .iter()
                .any(|c| !self.path(&format!("{MANIFESTS}/{c}.yaml")).exists());
        if conf_changed || outputs_missing {
            for phase in [
                &["init", "phase", "certs", "all"][..],
                &["init", "phase", "kubeconfig", "admin"],
                &["init", "phase", "kubeconfig", "controller-manager"],
                &["init", "phase", "kubeconfig", "scheduler"],
                &["init", "phase", "control-plane", "all"],
            ] {
                let mut args = phase.to_vec();
                args.extend(["--config", KUBEADM_CONF]);
                self.kubeadm(&args, &[]).await?;
                on_step(&format!("kubeadm {}", phase[2..].join(" ")));
            }
            log::info!("kubeadm wrote the control plane's certificates, kubeconfigs and manifests");
        }
        self.units(host, on_step).await?;
        let ca_pem = std::fs::read_to_string(self.path(&format!("{PKI_DIR}/ca.crt")))
            .map_err(|e| KubeError::Setup(format!("reading {PKI_DIR}/ca.crt: {e}")))?;
        if let Err(why) = self.wait_api_ready(&ca_pem).await {
            rec.health = "waiting".into();
            return Ok(KubeOutcome::Waiting(why));
        }
        rec.api_ready = true;
        let hash = ticket::ca_cert_hash(&ca_pem).map_err(KubeError::Setup)?;
        rec.ca_cert_hash = Some(hash.clone());
        if self.claim_duties(etcd).await? {
            self.cluster_duties(cloud, etcd, &hash, rec, on_step)
                .await?;
        } else if let Some(t) = self.read_ticket(cloud).await? {
            rec.token_expires = Some(t.expires);
        }
        Ok(KubeOutcome::Ready)
    }

    /// Claims or renews [`DUTIES_KEY`] for this master; whether it holds it.
    async fn claim_duties(&self, etcd: &EtcdLink<'_>) -> Result<bool, KubeError> {
        let me = self.instance_id.as_bytes();
        let ep = &etcd.endpoint;
        let fail = |e| KubeError::Etcd(format!("claiming {DUTIES_KEY}: {e}"));
        let lease = etcd.client.grant(ep, DUTIES_TTL).await.map_err(fail)?;
        match etcd
            .client
            .create_leased(ep, DUTIES_KEY, me, lease)
            .await
            .map_err(fail)?
        {
            None => Ok(true),
            Some(v) if v == me => Ok(etcd
                .client
                .swap_leased(ep, DUTIES_KEY, me, me, lease)
                .await
                .map_err(fail)?
                .is_none()),
            Some(_) => Ok(false),
        }
    }

    /// Whether this master still holds [`DUTIES_KEY`]: checked right before a change that two
    /// holders must not both make (publishing a ticket, deleting a Node).
    async fn still_holds_duties(&self, etcd: &EtcdLink<'_>) -> Result<bool, KubeError> {
        let v = etcd
            .client
            .get(&etcd.endpoint, DUTIES_KEY)
            .await
            .map_err(|e| KubeError::Etcd(format!("reading {DUTIES_KEY}: {e}")))?;
        Ok(v.as_deref() == Some(self.instance_id.as_bytes()))
    }

    /// The shared keys in /etc/kubernetes/pki, from Parameter Store; made once, by the master
    /// that creates [`KEYS_OWNER_KEY`] in etcd. `Some(why)` while another master makes them.
    async fn shared_keys<C: Cloud>(
        &self,
        cloud: &mut C,
        etcd: &EtcdLink<'_>,
        on_step: &mut dyn FnMut(&str),
    ) -> Result<Option<String>, KubeError> {
        let mut stored = self.stored_keys(cloud).await?;
        if stored.iter().any(Option::is_none) {
            let me = self.instance_id.as_bytes();
            let owner = etcd
                .client
                .create(&etcd.endpoint, KEYS_OWNER_KEY, me)
                .await
                .map_err(|e| KubeError::Etcd(format!("creating {KEYS_OWNER_KEY}: {e}")))?;
            let mine = match owner {
                None => true,
                Some(o) if o == me => true,
                Some(o) => {
                    let o = String::from_utf8_lossy(&o).into_owned();
                    if self.masters.contains_key(&o) {
                        return Ok(Some(format!(
                            "kubernetes: master {} makes the shared keys (the etcd key \
                             {KEYS_OWNER_KEY} names it); if it cannot (see its `berth-agent \
                             status`), `etcdctl del {KEYS_OWNER_KEY}` lets another master",
                            crate::config::truncate_value(&o)
                        )));
                    }
                    // The chosen master is gone before it stored them: take over, once.
                    etcd.client
                        .swap(&etcd.endpoint, KEYS_OWNER_KEY, o.as_bytes(), me)
                        .await
                        .map_err(|e| KubeError::Etcd(format!("taking over {KEYS_OWNER_KEY}: {e}")))?
                        .is_none()
                }
            };
            if !mine {
                return Ok(Some(format!(
                    "kubernetes: another master took over making the shared keys ({KEYS_OWNER_KEY})"
                )));
            }
            on_step("kubernetes shared keys owner");
            self.make_keys(cloud, etcd, &stored, on_step).await?;
            on_step("kubernetes shared keys stored");
            stored = self.stored_keys(cloud).await?;
        }
        for (k, pair) in SHARED_KEYS.iter().zip(&stored) {
            let Some(pair) = pair else {
                return Err(KubeError::Setup(format!(
                    "{} is missing right after it was stored",
                    key_parameter(self.cluster, k)
                )));
            };
            let dir = self.path(PKI_DIR);
            std::fs::create_dir_all(&dir)
                .map_err(|e| KubeError::Setup(format!("creating {PKI_DIR}: {e}")))?;
            // A running control plane's keys are never replaced: its certificates,
            // kubeconfigs and the published pin all hang on them.
            if let Ok(local) = std::fs::read_to_string(dir.join(k.public_file)) {
                if local != pair.public {
                    return Err(KubeError::Setup(format!(
                        "{} holds another key than this master's {PKI_DIR}/{} (was the \
                         parameter deleted and made again?); berth never replaces a running \
                         cluster's keys: put this master's files back into the parameter \
                         (JSON {{\"public\", \"key\"}})",
                        key_parameter(self.cluster, k),
                        k.public_file
                    )));
                }
            }
            write_if_changed(&dir.join(k.public_file), pair.public.as_bytes(), 0o644)?;
            write_if_changed(&dir.join(k.key_file), pair.key.as_bytes(), 0o600)?;
        }
        Ok(None)
    }

    async fn stored_keys<C: Cloud>(
        &self,
        cloud: &mut C,
    ) -> Result<Vec<Option<KeyPair>>, KubeError> {
        let mut out = Vec::new();
        for k in &SHARED_KEYS {
            let name = key_parameter(self.cluster, k);
            let pair = match cloud.parameter(&name).await? {
                None => None,
                Some(v) => Some(parse_pair(&v).map_err(|reason| KubeError::BadParameter {
                    name: name.clone(),
                    reason,
                })?),
            };
            out.push(pair);
        }
        Ok(out)
    }

    /// kubeadm makes the keys in a scratch directory; each missing one is stored create-only,
    /// so two makers can never replace each other's.
    async fn make_keys<C: Cloud>(
        &self,
        cloud: &mut C,
        etcd: &EtcdLink<'_>,
        stored: &[Option<KeyPair>],
        on_step: &mut dyn FnMut(&str),
    ) -> Result<(), KubeError> {
        let scratch = Scratch::new(&self.path("/etc/kubernetes"))
            .map_err(|e| KubeError::Setup(format!("a scratch directory: {e}")))?;
        let certs = scratch.path().to_string_lossy().into_owned();
        let conf = scratch
            .write(
                "kubeadm.yaml",
                &kubeadm::init_config(&self.master_config(etcd, &certs), None),
            )
            .map_err(|e| KubeError::Setup(format!("writing kubeadm's configuration: {e}")))?;
        let conf = conf.to_string_lossy().into_owned();
        for (k, have) in SHARED_KEYS.iter().zip(stored) {
            if have.is_some() {
                continue;
            }
            let local = |f: &str| std::fs::read_to_string(self.path(&format!("{PKI_DIR}/{f}")));
            let pair = if let (Ok(public), Ok(key)) = (local(k.public_file), local(k.key_file)) {
                // This master already runs with it (the parameter was lost): store its own.
                log::warn!(
                    "{} is missing; storing this master's {PKI_DIR}/{} again",
                    key_parameter(self.cluster, k),
                    k.public_file
                );
                KeyPair { public, key }
            } else if k.phase == "sa" {
                service_account_key()?
            } else {
                self.kubeadm(&["init", "phase", "certs", k.phase, "--config", &conf], &[])
                    .await?;
                let read = |f: &str| {
                    std::fs::read_to_string(scratch.path().join(f))
                        .map_err(|e| KubeError::Setup(format!("kubeadm did not write {f}: {e}")))
                };
                KeyPair {
                    public: read(k.public_file)?,
                    key: read(k.key_file)?,
                }
            };
            let name = key_parameter(self.cluster, k);
            let json = serde_json::to_string(&pair).expect("serializes");
            if cloud.create_parameter(&name, &json, true).await? {
                log::info!(
                    "made the Kubernetes {} and stored it as {name}",
                    k.parameter
                );
            }
            // A crash point while the scratch directory (with the key) exists.
            on_step(&format!("kubernetes stored {}", k.parameter));
        }
        Ok(())
    }

    /// The control plane's units from kubeadm's manifests; restarted when changed.
    async fn units<H: Host>(
        &self,
        host: &mut H,
        on_step: &mut dyn FnMut(&str),
    ) -> Result<(), KubeError> {
        let mut changed = Vec::new();
        for c in COMPONENTS {
            let manifest_path = format!("{MANIFESTS}/{c}.yaml");
            let manifest = std::fs::read_to_string(self.path(&manifest_path))
                .map_err(|e| KubeError::Setup(format!("reading {manifest_path}: {e}")))?;
            let unit = kubeadm::unit_from_manifest(c, &manifest, &self.spec.bin_dir)
                .map_err(|e| KubeError::Setup(format!("{manifest_path}: {e}")))?;
            let path = self.path(&format!("{UNIT_DIR}/{c}.service"));
            if write_if_changed(&path, unit.as_bytes(), 0o644)? {
                changed.push(c);
                on_step(&format!("unit {c}.service"));
            }
        }
        if !changed.is_empty() {
            host.reload().await?;
        }
        for c in COMPONENTS {
            let unit = format!("{c}.service");
            host.unit_op(&unit, UnitOp::Enable).await?;
            if changed.contains(&c) {
                host.unit_op(&unit, UnitOp::ResetFailed).await?;
                host.unit_op(&unit, UnitOp::Restart).await?;
                log::info!("restarted {unit}: its command line changed");
            } else {
                host.unit_op(&unit, UnitOp::Start).await?;
            }
        }
        Ok(())
    }

    /// Waits for this master's API server to answer `/readyz` (anonymous, over TLS pinned to
    /// the cluster CA).
    async fn wait_api_ready(&self, ca_pem: &str) -> Result<(), String> {
        let url = format!("https://{}:{}/readyz", self.ip, self.spec.api_port);
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())
            .map_err(|e| format!("the cluster CA is unusable: {e}"))?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < API_READY_TIMEOUT {
            match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = crate::etcd::client::error_chain(&e),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(format!(
            "kubernetes: the API server at {url} is not ready after {} s ({last}); see \
             `journalctl -u kube-apiserver`",
            API_READY_TIMEOUT.as_secs()
        ))
    }

    async fn read_ticket<C: Cloud>(&self, cloud: &mut C) -> Result<Option<JoinTicket>, KubeError> {
        let name = super::ticket_parameter(self.cluster);
        match cloud.parameter(&name).await? {
            None => Ok(None),
            Some(v) => match JoinTicket::parse(&v) {
                Ok(t) => Ok(Some(t)),
                Err(reason) => {
                    log::warn!(
                        "{name}: {reason}; the master holding the cluster duties replaces it"
                    );
                    Ok(None)
                }
            },
        }
    }

    /// The duty holder keeps the cluster's kubeadm objects, the join ticket, and the
    /// Node list.
    async fn cluster_duties<C: Cloud>(
        &self,
        cloud: &mut C,
        etcd: &EtcdLink<'_>,
        hash: &str,
        rec: &mut KubeRecord,
        on_step: &mut dyn FnMut(&str),
    ) -> Result<(), KubeError> {
        rec.cluster_duties = true;
        let minor = kubelet_config_map(self.version());
        let have = self
            .kubectl(&["get", "configmaps", "-n", "kube-system", "-o", "name"])
            .await?;
        let have: BTreeSet<&str> = have.lines().map(str::trim).collect();
        if !have.contains("configmap/kubeadm-config") {
            self.kubeadm(
                &[
                    "init",
                    "phase",
                    "upload-config",
                    "kubeadm",
                    "--config",
                    KUBEADM_CONF,
                ],
                &[],
            )
            .await?;
            on_step("kubeadm upload-config kubeadm");
        }
        if !have.contains(format!("configmap/{minor}").as_str()) {
            self.upload_kubelet_config(&minor).await?;
            on_step("kubeadm upload-config kubelet");
        }
        let public = self
            .kubectl(&["get", "configmaps", "-n", "kube-public", "-o", "name"])
            .await?;
        let cluster_info = public.lines().any(|l| l.trim() == "configmap/cluster-info");

        let now = crate::state::now_secs();
        let ttl = self.config.token_ttl_seconds;
        let api_server = format!("{}:{}", self.spec.api_name, self.spec.api_port);
        let current = self.read_ticket(cloud).await?;
        let mut replace = replacement_reason(current.as_ref(), now, ttl, hash, &api_server);
        if let (None, Some(t)) = (&replace, &current) {
            // A token deleted from the API (revoked) is replaced at once.
            let secret = format!("bootstrap-token-{}", t.token_id());
            let found = self
                .kubectl(&[
                    "get",
                    "secret",
                    "-n",
                    "kube-system",
                    &secret,
                    "--ignore-not-found",
                    "-o",
                    "name",
                ])
                .await?;
            if found.trim().is_empty() {
                replace = Some("its token is gone from the API (revoked)");
            }
        }
        if replace.is_none() && !cluster_info {
            replace = Some("kube-public/cluster-info is missing");
        }
        if let Some(why) = replace {
            log::info!("replacing the join ticket: {why}");
            let token = self.kubeadm(&["token", "generate"], &[]).await?;
            let token = token.trim().to_string();
            if !ticket::valid_token(&token) {
                return Err(KubeError::Setup(
                    "`kubeadm token generate` printed no bootstrap token".into(),
                ));
            }
            let scratch = Scratch::new(&self.path("/etc/kubernetes"))
                .map_err(|e| KubeError::Setup(format!("a scratch directory: {e}")))?;
            let conf = scratch
                .write(
                    "kubeadm.yaml",
                    &kubeadm::init_config(
                        &self.master_config(etcd, PKI_DIR),
                        Some(&BootstrapToken {
                            token: &token,
                            ttl_seconds: ttl,
                        }),
                    ),
                )
                .map_err(|e| KubeError::Setup(format!("writing the token's configuration: {e}")))?;
            let conf = conf.to_string_lossy().into_owned();
            // A crash point while the token's configuration file exists.
            on_step("kubernetes token configuration");
            let made_at = crate::state::now_secs();
            self.kubeadm(
                &[
                    "init",
                    "phase",
                    "bootstrap-token",
                    "--config",
                    &conf,
                    "--kubeconfig",
                    ADMIN_CONF,
                ],
                &[&token],
            )
            .await?;
            drop(scratch);
            on_step("kubernetes bootstrap token");
            if !self.still_holds_duties(etcd).await? {
                log::warn!(
                    "lost {DUTIES_KEY} while making a token; the holder publishes one (this one \
                     expires unused)"
                );
                return Ok(());
            }
            let t = JoinTicket {
                token,
                expires: made_at + ttl,
                ca_cert_hash: hash.to_string(),
                api_server,
            };
            cloud
                .overwrite_parameter(&super::ticket_parameter(self.cluster), &t.to_json(), true)
                .await?;
            on_step("kubernetes join ticket");
            log::info!(
                "published a join token (id {}, expires in {ttl} s) in {}",
                t.token_id(),
                super::ticket_parameter(self.cluster)
            );
            rec.token_expires = Some(t.expires);
        } else {
            rec.token_expires = current.map(|t| t.expires);
        }
        if self.still_holds_duties(etcd).await? {
            rec.deleted_nodes = self.delete_gone_nodes(cloud, on_step).await?;
        }
        Ok(())
    }

    /// `upload-config kubelet` creates the kubelet's ConfigMap and RBAC, then waits for this
    /// master's Node; a master runs no kubelet, so it is stopped once the ConfigMap exists.
    async fn upload_kubelet_config(&self, config_map: &str) -> Result<(), KubeError> {
        let mut child = tokio::process::Command::new(self.bin("kubeadm"))
            .args([
                "init",
                "phase",
                "upload-config",
                "kubelet",
                "--config",
                KUBEADM_CONF,
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| KubeError::Setup(format!("starting kubeadm: {e}")))?;
        let start = Instant::now();
        let result = loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let have = self
                .kubectl(&[
                    "get",
                    "configmap",
                    "-n",
                    "kube-system",
                    config_map,
                    "-o",
                    "name",
                ])
                .await;
            // The RoleBinding is made right after the ConfigMap.
            let bound = self
                .kubectl(&[
                    "get",
                    "rolebinding",
                    "-n",
                    "kube-system",
                    &format!("kubeadm:{config_map}"),
                    "-o",
                    "name",
                ])
                .await;
            if have.is_ok() && bound.is_ok() {
                break Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                if !status.success() && have.is_err() {
                    break Err(KubeError::Setup(format!(
                        "kubeadm init phase upload-config kubelet exited with {status} before \
                         {config_map} existed"
                    )));
                }
            }
            if start.elapsed() > UPLOAD_KUBELET_WAIT {
                break Err(KubeError::Setup(format!(
                    "kubeadm init phase upload-config kubelet made no {config_map} in {} s",
                    UPLOAD_KUBELET_WAIT.as_secs()
                )));
            }
        };
        let _ = child.start_kill();
        let _ = child.wait().await;
        result
    }

    /// Deletes the Node of every minion whose instance EC2 reports terminated (or no longer
    /// knows); a stopped one is left to Kubernetes' node lifecycle. Returns the deleted names.
    async fn delete_gone_nodes<C: Cloud>(
        &self,
        cloud: &mut C,
        on_step: &mut dyn FnMut(&str),
    ) -> Result<Vec<String>, KubeError> {
        let names = self
            .kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"])
            .await?;
        let candidates: Vec<String> = names
            .split_whitespace()
            .filter(|n| {
                is_instance_id(n) && !self.minions.contains(*n) && !self.masters.contains_key(*n)
            })
            .map(str::to_string)
            .collect();
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let states = cloud.instance_states(&candidates).await?;
        let mut deleted = Vec::new();
        for n in candidates {
            let gone = match states.get(&n).map(String::as_str) {
                None | Some("terminated") | Some("shutting-down") => true,
                Some(_) => false,
            };
            if !gone {
                continue;
            }
            self.kubectl(&["delete", "node", &n, "--ignore-not-found"])
                .await?;
            on_step(&format!("kubernetes delete node {n}"));
            log::info!("deleted Node {n}: its instance is terminated");
            deleted.push(n);
        }
        Ok(deleted)
    }
}

/// The service-account signing key: an ECDSA P-256 key (PKCS#8) and its public key (SPKI), both
/// PEM. kube-apiserver and kube-controller-manager read ECDSA service-account keys as well as
/// RSA ones (ES256 tokens), and kubeadm keeps an existing `sa.key` it can parse.
/// `kubeadm init phase certs sa` would make an RSA one, but only after asking the internet for a
/// version and the host for a default route, which it takes no configuration to skip.
fn service_account_key() -> Result<KeyPair, KubeError> {
    let key = rcgen::KeyPair::generate()
        .map_err(|e| KubeError::Setup(format!("making the service-account key: {e}")))?;
    Ok(KeyPair {
        public: key.public_key_pem(),
        key: key.serialize_pem(),
    })
}

/// Why the published join ticket must be replaced, from what it says alone; `None` when it may
/// stay: it exists, has more than half of `ttl` (seconds) left at `now`, pins the cluster CA
/// `hash`, and names `api_server`. Half the TTL: a minion reading it then has at least that long
/// to finish its join, and a master that misses one run still replaces it in time.
pub fn replacement_reason(
    current: Option<&JoinTicket>,
    now: u64,
    ttl: u64,
    hash: &str,
    api_server: &str,
) -> Option<&'static str> {
    match current {
        None => Some("there is none (or it is unreadable)"),
        Some(t) if t.left(now) <= ttl / 2 => Some("less than half its TTL is left"),
        Some(t) if t.ca_cert_hash != hash => Some("its pin is not the cluster CA's"),
        Some(t) if t.api_server != api_server => Some("it names another API endpoint"),
        Some(_) => None,
    }
}

/// The kubelet's ConfigMap of a version: `kubelet-config-MAJOR.MINOR` (kubeadm 1.20).
pub fn kubelet_config_map(version: &str) -> String {
    let v = version.trim_start_matches('v');
    let mm: Vec<&str> = v.split('.').take(2).collect();
    format!("kubelet-config-{}", mm.join("."))
}

fn parse_pair(v: &str) -> Result<KeyPair, String> {
    let p: KeyPair = serde_json::from_str(v).map_err(|e| {
        format!(
            "not JSON {{public, key}} (line {} column {})",
            e.line(),
            e.column()
        )
    })?;
    if !p.public.contains("-----BEGIN ") || !p.key.contains("-----BEGIN ") {
        return Err("`public` and `key` must be PEM".into());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_replaced_at_half_its_ttl_or_when_it_pins_another_ca() {
        let t = JoinTicket {
            token: "abcdef.0123456789abcdef".into(),
            expires: 10_000,
            ca_cert_hash: "sha256:aa".into(),
            api_server: "api.berth.internal:6443".into(),
        };
        let r = |t: Option<&JoinTicket>, now| {
            replacement_reason(t, now, 7200, "sha256:aa", "api.berth.internal:6443")
        };
        assert_eq!(r(Some(&t), 10_000 - 3601), None);
        assert!(r(Some(&t), 10_000 - 3600).unwrap().contains("half"));
        assert!(r(Some(&t), 20_000).unwrap().contains("half"), "expired");
        assert!(r(None, 0).is_some());
        let other_ca = JoinTicket {
            ca_cert_hash: "sha256:bb".into(),
            ..t.clone()
        };
        assert!(r(Some(&other_ca), 0).unwrap().contains("pin"));
        let other_api = JoinTicket {
            api_server: "x.y:6443".into(),
            ..t.clone()
        };
        assert!(r(Some(&other_api), 0).unwrap().contains("endpoint"));
    }

    #[test]
    fn the_kubelet_config_map_is_named_by_minor_version() {
        assert_eq!(kubelet_config_map("v1.20.2"), "kubelet-config-1.20");
        assert_eq!(kubelet_config_map("v1.31.0"), "kubelet-config-1.31");
    }

    #[test]
    fn a_stored_pair_must_be_pem() {
        let ok = r#"{"public":"-----BEGIN CERTIFICATE-----\n","key":"-----BEGIN RSA PRIVATE KEY-----\n"}"#;
        assert!(parse_pair(ok).is_ok_and(|p| p.key.starts_with("-----BEGIN RSA")));
        assert!(parse_pair(r#"{"public":"x","key":"y"}"#).is_err());
        let Err(e) = parse_pair(r#"{"public":"secret-ish"#) else {
            panic!("a cut JSON parsed");
        };
        assert!(!e.contains("secret-ish"), "{e}");
    }
}
