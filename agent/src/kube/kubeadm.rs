//! kubeadm's configuration files, the control plane's units made from its static-pod manifests,
//! and running `kubeadm`/`kubectl` with a deadline and without leaking a secret.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

/// The control plane's components, in start order; each is a static-pod manifest
/// `/etc/kubernetes/manifests/NAME.yaml` and a unit `NAME.service`.
pub const COMPONENTS: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// What a master's kubeadm configuration says.
pub struct MasterConfig<'a> {
    pub cluster: &'a str,
    pub version: &'a str,
    pub instance_id: &'a str,
    pub ip: Ipv4Addr,
    pub api_name: &'a str,
    pub api_port: u16,
    pub service_subnet: &'a str,
    pub pod_subnet: &'a str,
    /// The local etcd member's client URL: every API server talks to the member on its own
    /// master, as kubeadm's stacked topology does, so a change of members restarts no API
    /// server.
    pub etcd_endpoint: String,
    pub etcd_ca: &'a str,
    pub etcd_cert: &'a str,
    pub etcd_key: &'a str,
    /// Where the PKI goes (`/etc/kubernetes/pki`, or a scratch directory while the shared keys
    /// are made).
    pub certificates_dir: &'a str,
}

/// A bootstrap token for `kubeadm init phase bootstrap-token` (a secret: the file holding it is
/// written 0600 and removed after the run).
pub struct BootstrapToken<'a> {
    pub token: &'a str,
    pub ttl_seconds: u64,
}

/// The group kubeadm's RBAC lets create CSRs that are approved automatically.
pub const NODE_TOKEN_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// `InitConfiguration` and `ClusterConfiguration` (kubeadm.k8s.io/v1beta2, Kubernetes 1.15 to
/// 1.22), as a YAML stream. kubeadm reads JSON documents too; each document is one JSON object,
/// so nothing from the cluster can break the syntax.
pub fn init_config(c: &MasterConfig<'_>, token: Option<&BootstrapToken<'_>>) -> String {
    let endpoint = format!("{}:{}", c.api_name, c.api_port);
    let tokens = match token {
        Some(t) => json!([{
            "token": t.token,
            "ttl": format!("{}s", t.ttl_seconds),
            "usages": ["signing", "authentication"],
            "groups": [NODE_TOKEN_GROUP],
            "description": "berth: the join token minions read from Parameter Store",
        }]),
        // Without one, kubeadm would make a 24-hour token nobody knows; a one-second token that
        // the token cleaner removes is the closest to none.
        None => json!([{
            "ttl": "1s",
            "usages": ["signing", "authentication"],
            "groups": [NODE_TOKEN_GROUP],
        }]),
    };
    let init = json!({
        "apiVersion": "kubeadm.k8s.io/v1beta2",
        "kind": "InitConfiguration",
        "bootstrapTokens": tokens,
        "localAPIEndpoint": {"advertiseAddress": c.ip.to_string(), "bindPort": c.api_port},
        "nodeRegistration": {"name": c.instance_id, "taints": []},
    });
    let cluster = json!({
        "apiVersion": "kubeadm.k8s.io/v1beta2",
        "kind": "ClusterConfiguration",
        "clusterName": c.cluster,
        "kubernetesVersion": c.version,
        "controlPlaneEndpoint": endpoint,
        "certificatesDir": c.certificates_dir,
        "etcd": {"external": {
            "endpoints": [c.etcd_endpoint],
            "caFile": c.etcd_ca,
            "certFile": c.etcd_cert,
            "keyFile": c.etcd_key,
        }},
        "networking": {"serviceSubnet": c.service_subnet, "podSubnet": c.pod_subnet},
        "apiServer": {"certSANs": [c.api_name, c.ip.to_string()]},
    });
    // kubeadm splits on `---` lines and refuses an empty document, so the comment is part of
    // the first one.
    format!("# Written by berth-agent; rewritten at every run.\n{init}\n---\n{cluster}\n")
}

/// What a minion's join says.
pub struct JoinConfig<'a> {
    pub api_server: &'a str,
    pub token: &'a str,
    pub ca_cert_hash: &'a str,
    pub node_name: &'a str,
    pub ignore_preflight_errors: &'a [String],
    /// How long discovery may take (kubeadm's default is 5 minutes).
    pub discovery_timeout: Duration,
}

/// `JoinConfiguration` (kubeadm.k8s.io/v1beta2). A secret: written 0600, removed after the run.
pub fn join_config(c: &JoinConfig<'_>) -> String {
    let join = json!({
        "apiVersion": "kubeadm.k8s.io/v1beta2",
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": c.api_server,
                "token": c.token,
                "caCertHashes": [c.ca_cert_hash],
                "unsafeSkipCAVerification": false,
            },
            "tlsBootstrapToken": c.token,
            "timeout": format!("{}s", c.discovery_timeout.as_secs()),
        },
        "nodeRegistration": {
            "name": c.node_name,
            "ignorePreflightErrors": c.ignore_preflight_errors,
        },
    });
    format!("# Written by berth-agent for one `kubeadm join`, then removed.\n{join}\n")
}

/// The unit for a component, from its static-pod manifest: the container's `command` becomes
/// `ExecStart` (the binary taken from `bin_dir`), as the seed ran its control plane.
pub fn unit_from_manifest(
    component: &str,
    manifest: &str,
    bin_dir: &str,
) -> Result<String, String> {
    let pod: serde_json::Value =
        serde_norway::from_str(manifest).map_err(|e| format!("not YAML: {e}"))?;
    let command: Vec<String> = pod
        .pointer("/spec/containers/0/command")
        .and_then(|c| c.as_array())
        .ok_or("no spec.containers[0].command")?
        .iter()
        .map(|a| {
            a.as_str()
                .map(str::to_string)
                .ok_or("a command word that is not a string")
        })
        .collect::<Result<_, _>>()?;
    let Some((program, args)) = command.split_first() else {
        return Err("an empty command".into());
    };
    if program != component {
        return Err(format!("the command runs `{program}`, not {component}"));
    }
    let mut exec = format!("{}/{component}", bin_dir.trim_end_matches('/'));
    for a in args {
        exec.push_str(" \\\n    ");
        exec.push_str(&systemd_quote(a)?);
    }
    let after = if component == "kube-apiserver" {
        "network-online.target etcd.service"
    } else {
        "network-online.target kube-apiserver.service"
    };
    Ok(format!(
        "# Written by berth-agent from /etc/kubernetes/manifests/{component}.yaml (kubeadm init \
         phase control-plane); rewritten at every run.\n\
         [Unit]\n\
         Description=Kubernetes {component} (kubeadm profile, berth)\n\
         Wants=network-online.target\n\
         After={after}\n\
         \n\
         [Service]\n\
         ExecStart={exec}\n\
         Restart=always\n\
         RestartSec=5\n\
         LimitNOFILE=65536\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    ))
}

/// One word of a systemd command line: double-quoted, with `\` and `"` escaped and `%` and `$`
/// doubled (specifiers and variables, systemd.service(5) "Command lines"). Control characters
/// are refused.
fn systemd_quote(word: &str) -> Result<String, String> {
    if word.chars().any(char::is_control) {
        return Err("a command word with a control character".into());
    }
    let mut out = String::with_capacity(word.len() + 2);
    out.push('"');
    for ch in word.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// `kubeadm`/`kubectl` failed.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` {how}: {output}")]
pub struct CommandError {
    pub command: String,
    /// `exited with 1`, `timed out after 60 s`, `could not start (...)`.
    pub how: String,
    /// The end of its output, secrets replaced by `<redacted>`.
    pub output: String,
}

/// How much of a failed command's output an error keeps.
const OUTPUT_TAIL: usize = 1500;

/// Runs `program args` with `deadline`; its output with every `secret` replaced, or the error.
/// The child is killed when the deadline passes (and if this future is dropped).
pub async fn run(
    program: &Path,
    args: &[&str],
    deadline: Duration,
    secrets: &[&str],
) -> Result<String, CommandError> {
    let shown = format!(
        "{} {}",
        program.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
        args.join(" ")
    );
    let fail = |how: String, output: &str| CommandError {
        command: redact(&shown, secrets),
        how,
        output: tail(&redact(output, secrets)),
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("could not start ({e})"), ""))?;
    let out = match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(fail(format!("failed ({e})"), "")),
        Err(_) => {
            return Err(fail(
                format!("timed out after {} s", deadline.as_secs()),
                "",
            ))
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(redact(&text, secrets))
    } else {
        let how = match out.status.code() {
            Some(c) => format!("exited with {c}"),
            None => "was killed".to_string(),
        };
        Err(fail(how, &text))
    }
}

fn redact(text: &str, secrets: &[&str]) -> String {
    let mut t = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        t = t.replace(s, "<redacted>");
        // A bootstrap token's secret half alone is a secret too.
        if let Some((_, secret)) = s.split_once('.') {
            if secret.len() >= 16 {
                t = t.replace(secret, "<redacted>");
            }
        }
    }
    t
}

fn tail(text: &str) -> String {
    let t = text.trim();
    if t.len() <= OUTPUT_TAIL {
        return t.to_string();
    }
    let mut start = t.len() - OUTPUT_TAIL;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &t[start..])
}

/// A private scratch directory (0700) under `parent`, removed with everything in it when
/// dropped: the home of files that hold a secret for one command.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(parent: &Path) -> std::io::Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::create_dir_all(parent)?;
        let path = parent.join(format!(
            "{SCRATCH_PREFIX}{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Scratch(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` in the directory, mode 0600.
    pub fn write(&self, name: &str, content: &str) -> std::io::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.0.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)?;
        f.write_all(content.as_bytes())?;
        Ok(p)
    }
}

/// The prefix of every scratch directory's name.
const SCRATCH_PREFIX: &str = ".berth-kubeadm-";

/// Removes the scratch directories a killed run left under `parent` (they may hold a key or a
/// token); returns how many. Called under the run lock, so no other run owns one.
pub fn remove_stale_scratch(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let is_scratch = name.to_str().is_some_and(|n| n.starts_with(SCRATCH_PREFIX));
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_scratch && is_dir && std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> MasterConfig<'static> {
        MasterConfig {
            cluster: "ha",
            version: "v1.20.2",
            instance_id: "i-0123456789abcdef0",
            ip: Ipv4Addr::new(10, 0, 0, 5),
            api_name: "api.berth.internal",
            api_port: 6443,
            service_subnet: "10.96.0.0/12",
            pod_subnet: "10.244.0.0/16",
            etcd_endpoint: "https://10.0.0.5:2379".into(),
            etcd_ca: "/etc/etcd/pki/ca.crt",
            etcd_cert: "/etc/etcd/pki/client.crt",
            etcd_key: "/etc/etcd/pki/client.key",
            certificates_dir: "/etc/kubernetes/pki",
        }
    }

    /// The documents, as kubeadm splits them (on `---` lines); none may be empty.
    fn docs(text: &str) -> Vec<serde_json::Value> {
        text.split("\n---\n")
            .map(|d| {
                let body: Vec<&str> = d.lines().filter(|l| !l.starts_with('#')).collect();
                serde_json::from_str(body.join("\n").trim()).unwrap()
            })
            .collect()
    }

    #[test]
    fn the_master_config_names_the_external_etcd_and_the_endpoint() {
        let d = docs(&init_config(&master(), None));
        assert_eq!(d[0]["kind"], "InitConfiguration");
        assert_eq!(d[0]["localAPIEndpoint"]["advertiseAddress"], "10.0.0.5");
        assert_eq!(d[0]["bootstrapTokens"][0]["ttl"], "1s");
        assert!(d[0]["bootstrapTokens"][0].get("token").is_none());
        assert_eq!(d[1]["controlPlaneEndpoint"], "api.berth.internal:6443");
        assert_eq!(
            d[1]["etcd"]["external"]["endpoints"][0],
            "https://10.0.0.5:2379"
        );
        assert_eq!(d[1]["kubernetesVersion"], "v1.20.2");
        let t = BootstrapToken {
            token: "abcdef.0123456789abcdef",
            ttl_seconds: 7200,
        };
        let d = docs(&init_config(&master(), Some(&t)));
        assert_eq!(
            d[0]["bootstrapTokens"][0]["token"],
            "abcdef.0123456789abcdef"
        );
        assert_eq!(d[0]["bootstrapTokens"][0]["ttl"], "7200s");
        assert_eq!(d[0]["bootstrapTokens"][0]["groups"][0], NODE_TOKEN_GROUP);
    }

    #[test]
    fn the_join_config_pins_the_ca_and_never_skips_verification() {
        let ignore = vec!["Swap".to_string()];
        let d = docs(&join_config(&JoinConfig {
            api_server: "api.berth.internal:6443",
            token: "abcdef.0123456789abcdef",
            ca_cert_hash: "sha256:00",
            node_name: "i-0123456789abcdef0",
            ignore_preflight_errors: &ignore,
            discovery_timeout: Duration::from_secs(60),
        }));
        let bt = &d[0]["discovery"]["bootstrapToken"];
        assert_eq!(bt["caCertHashes"][0], "sha256:00");
        assert_eq!(bt["unsafeSkipCAVerification"], false);
        assert_eq!(d[0]["discovery"]["timeout"], "60s");
        assert_eq!(d[0]["nodeRegistration"]["name"], "i-0123456789abcdef0");
        assert_eq!(d[0]["nodeRegistration"]["ignorePreflightErrors"][0], "Swap");
    }

    const MANIFEST: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: kube-controller-manager
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-controller-manager
    - --controllers=*,bootstrapsigner,tokencleaner
    - --leader-elect=true
    - --kubeconfig=/etc/kubernetes/controller-manager.conf
    - --weird=a "b" 100% $HOME\x
    image: k8s.gcr.io/kube-controller-manager:v1.20.2
"#;

    #[test]
    fn a_manifest_becomes_a_unit_with_every_word_quoted() {
        let u = unit_from_manifest("kube-controller-manager", MANIFEST, "/usr/bin/").unwrap();
        assert!(
            u.contains("ExecStart=/usr/bin/kube-controller-manager \\\n"),
            "{u}"
        );
        assert!(
            u.contains("\"--controllers=*,bootstrapsigner,tokencleaner\""),
            "{u}"
        );
        assert!(u.contains(r#""--weird=a \"b\" 100%% $$HOME\\x""#), "{u}");
        assert!(u.contains("Restart=always"));
        assert!(u.contains("After=network-online.target kube-apiserver.service"));
        let e = unit_from_manifest("kube-scheduler", MANIFEST, "/usr/bin").unwrap_err();
        assert!(e.contains("not kube-scheduler"), "{e}");
        assert!(unit_from_manifest("kube-scheduler", "spec: {}", "/usr/bin").is_err());
        assert!(unit_from_manifest("x", "{", "/usr/bin").is_err());
    }

    #[test]
    fn secrets_are_redacted_from_output_and_errors() {
        let r = redact(
            "[bootstrap-token] Using token: abcdef.0123456789abcdef and 0123456789abcdef",
            &["abcdef.0123456789abcdef"],
        );
        assert!(!r.contains("0123456789abcdef"), "{r}");
        assert!(tail(&"x".repeat(5000)).len() < 1600);
    }

    #[test]
    fn scratch_is_private_removed_on_drop_and_stale_ones_at_the_next_run() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let s = Scratch::new(d.path()).unwrap();
        let f = s.write("k", "secret").unwrap();
        assert_eq!(
            std::fs::metadata(s.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let p = s.path().to_path_buf();
        drop(s);
        assert!(!p.exists());
        // A killed run's directory (never dropped) goes at the next run; nothing else does.
        let killed = Scratch::new(d.path()).unwrap();
        let kept = d.path().join("pki");
        std::fs::create_dir(&kept).unwrap();
        let p = killed.path().to_path_buf();
        std::mem::forget(killed);
        assert_eq!(remove_stale_scratch(d.path()), 1);
        assert!(!p.exists() && kept.exists());
    }

    #[tokio::test]
    async fn a_command_past_its_deadline_is_killed() {
        let t = std::time::Instant::now();
        let e = run(
            Path::new("/bin/sleep"),
            &["30"],
            Duration::from_millis(300),
            &[],
        )
        .await
        .unwrap_err();
        assert!(e.how.contains("timed out"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let e = run(
            Path::new("/bin/sh"),
            &["-c", "echo s3cret.0123456789abcdef; exit 3"],
            Duration::from_secs(5),
            &["s3cret.0123456789abcdef"],
        )
        .await
        .unwrap_err();
        assert_eq!(e.how, "exited with 3");
        assert!(!e.to_string().contains("0123456789abcdef"), "{e}");
    }
}
