//! The agent's configuration: one typed model merged from layers, each validated.
//!
//! Layers, lowest first: built-in defaults, the image's defaults (`/usr/share/berth/config.yaml`),
//! the host's `/etc/berth/config.yaml`, the instance's tags (`role`, `berth:cluster`), then
//! user-data. User-data sits above the tags so that a launch template can pin a node's role or
//! cluster without retagging (the `role` tag is the usual source; user-data overrides it).
//!
//! Every layer is untrusted. A file layer with an unknown key, a wrong type or a value that would
//! not be valid in the files it reaches is an error that names the source, the line and column,
//! and the fix. Nothing here touches the disk or the network: callers pass the layers' text.

use std::fmt;
use std::net::Ipv4Addr;

use serde::Deserialize;

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Minion,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Minion => "minion",
        }
    }

    /// Parses a role as written in a tag or user-data; `None` for anything else.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "master" => Some(Role::Master),
            "minion" => Some(Role::Minion),
            _ => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Role::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown role {s:?}")))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failed OS upgrade does to the rest of the first boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpgradeFailure {
    /// Stop: do not configure the node on an OS the operator asked to have upgraded. The upgrade
    /// is tried again at the next run.
    Block,
    /// Go on with the booted deployment; the failure stays in the state and in `status`.
    Continue,
}

/// The merged configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    /// Set by the `role` tag or user-data; `None` is an error at run time, reported with the fix.
    pub role: Option<Role>,
    /// The `berth:cluster` tag or user-data; `None` means "every instance in my security groups".
    pub cluster: Option<String>,
    pub profile: String,
    pub upgrade: bool,
    pub upgrade_failure: UpgradeFailure,
    pub manage_hosts: bool,
    pub poll: Poll,
    pub kubernetes: Kubernetes,
    /// The etcd tier of profiles that form an etcd cluster on the masters (`kubeadm`).
    pub etcd: Etcd,
    /// The EC2 API endpoint, for VPC interface endpoints and private regions (and the emulated
    /// region of the QEMU tests). `None`: `https://ec2.REGION.amazonaws.com/`. `--ec2-endpoint`
    /// wins over it.
    pub ec2_endpoint: Option<String>,
}

/// How the reconcile daemon polls EC2 for membership changes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Poll {
    /// The shortest time between two polls of one node.
    pub interval_seconds: f64,
    /// The DescribeInstances requests per second that the whole cluster may spend. Each node
    /// stretches its interval so that `nodes × pages ÷ interval` stays under it (see `poll.rs`).
    pub cluster_requests_per_second: f64,
}

/// Values of the Kubernetes files that users may change from the seed's.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Kubernetes {
    pub log_level: u8,
    pub allow_privileged: bool,
    /// The apiserver's `--portal_net` (legacy-2015); kubeadm's `networking.serviceSubnet`.
    pub service_cidr: String,
    /// The Kubernetes version kubeadm configures (`v1.20.2`); `None`: the profile's.
    pub version: Option<String>,
    /// The lifetime of the bootstrap token masters publish for joining nodes (seconds); it is
    /// replaced when half of it is left, so a node never reads a token with less than half.
    pub token_ttl_seconds: u64,
    /// kubeadm preflight checks a minion's join skips (kubeadm's `ignorePreflightErrors`), for
    /// hosts whose node agent is not the standard kubelet.
    pub ignore_preflight_errors: Vec<String>,
}

/// How the masters keep their etcd cluster.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Etcd {
    /// How long a master's instance may stay stopped before its member is removed (seconds).
    /// A stopped instance keeps its EBS data and may come back; a terminated one never does.
    pub stopped_grace_seconds: u64,
    /// The shortest time between two snapshots of the local member (seconds).
    pub snapshot_interval_seconds: u64,
    /// Snapshots kept in `/var/lib/berth/etcd-snapshots`; older ones are deleted.
    pub snapshots_kept: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: None,
            cluster: None,
            profile: "legacy-2015".to_string(),
            upgrade: true,
            upgrade_failure: UpgradeFailure::Block,
            manage_hosts: true,
            poll: Poll {
                interval_seconds: 30.0,
                cluster_requests_per_second: 2.0,
            },
            kubernetes: Kubernetes {
                log_level: 0,
                allow_privileged: false,
                service_cidr: "10.254.0.0/16".to_string(),
                version: None,
                token_ttl_seconds: 7200,
                ignore_preflight_errors: Vec::new(),
            },
            etcd: Etcd {
                stopped_grace_seconds: 3600,
                snapshot_interval_seconds: 3600,
                snapshots_kept: 5,
            },
            ec2_endpoint: None,
        }
    }
}

/// One layer as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Layer {
    role: Option<String>,
    cluster: Option<String>,
    profile: Option<String>,
    upgrade: Option<bool>,
    upgrade_failure: Option<UpgradeFailure>,
    manage_hosts: Option<bool>,
    poll: Option<PollLayer>,
    kubernetes: Option<KubernetesLayer>,
    etcd: Option<EtcdLayer>,
    ec2_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EtcdLayer {
    stopped_grace_seconds: Option<u64>,
    snapshot_interval_seconds: Option<u64>,
    snapshots_kept: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PollLayer {
    interval_seconds: Option<f64>,
    cluster_requests_per_second: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesLayer {
    log_level: Option<u8>,
    allow_privileged: Option<bool>,
    service_cidr: Option<String>,
    version: Option<String>,
    token_ttl_seconds: Option<u64>,
    ignore_preflight_errors: Option<Vec<String>>,
}

/// The keys a layer may hold, for "did you mean" hints.
const KEYS: &[&str] = &[
    "role",
    "cluster",
    "profile",
    "upgrade",
    "upgrade_failure",
    "manage_hosts",
    "poll",
    "kubernetes",
    "interval_seconds",
    "cluster_requests_per_second",
    "log_level",
    "allow_privileged",
    "service_cidr",
    "version",
    "token_ttl_seconds",
    "ignore_preflight_errors",
    "ec2_endpoint",
    "etcd",
    "stopped_grace_seconds",
    "snapshot_interval_seconds",
    "snapshots_kept",
];

/// The tag keys berth reads.
pub(crate) const ROLE_TAG: &str = "role";
pub(crate) const CLUSTER_TAG: &str = "berth:cluster";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{source_name}{location}: {message}")]
    Syntax {
        source_name: String,
        location: String,
        message: String,
    },
    #[error("{source_name}: `{field}` = {value:?}: {problem}; {fix}")]
    Invalid {
        source_name: String,
        field: String,
        value: String,
        problem: String,
        fix: String,
    },
}

impl Layer {
    /// Parses one YAML layer. An empty document is an empty layer.
    pub fn parse(source_name: &str, text: &str) -> Result<Layer, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Layer::default());
        }
        serde_norway::from_str::<Option<Layer>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| syntax_error(source_name, &e))
    }

    /// The `berth:` section of a `#cloud-config` document; `None` when it has none. Every other
    /// key is cloud-init's and is not looked at; errors in berth's section keep their line and
    /// column in the whole document.
    pub(crate) fn parse_cloud_config(
        source_name: &str,
        text: &str,
    ) -> Result<Option<Layer>, ConfigError> {
        #[derive(Deserialize)]
        struct CloudConfig {
            #[serde(default)]
            berth: Option<Layer>,
        }
        serde_norway::from_str::<Option<CloudConfig>>(text)
            .map(|c| c.and_then(|c| c.berth))
            .map_err(|e| syntax_error(source_name, &e))
    }

    /// What the root of a YAML document is, so that a scalar or a list (not berth's format) can
    /// be told from a mapping before the strict parse.
    pub(crate) fn root_kind(
        source_name: &str,
        text: &str,
    ) -> Result<crate::userdata::RootKind, ConfigError> {
        use crate::userdata::RootKind;
        use serde_norway::Value;
        if text.trim().is_empty() {
            return Ok(RootKind::Empty);
        }
        let v: Value = serde_norway::from_str(text).map_err(|e| syntax_error(source_name, &e))?;
        Ok(match v {
            Value::Null => RootKind::Empty,
            Value::Mapping(_) => RootKind::Mapping,
            Value::Sequence(_) => RootKind::Other("list"),
            Value::Tagged(_) => RootKind::Other("tagged value"),
            _ => RootKind::Other("scalar"),
        })
    }

    /// The layer made of this instance's own tags.
    pub(crate) fn from_tags(tags: &std::collections::BTreeMap<String, String>) -> Layer {
        Layer {
            role: tags.get(ROLE_TAG).cloned(),
            cluster: tags.get(CLUSTER_TAG).cloned(),
            ..Layer::default()
        }
    }
}

/// The most characters of an input value that an error or a log line quotes.
pub(crate) const QUOTE_CHARS: usize = 64;

/// `s` cut to [`QUOTE_CHARS`] characters for quoting in an error (a 1 MiB tag value is not
/// printed whole), with the full length said when cut.
pub(crate) fn truncate_value(s: &str) -> String {
    let mut chars = s.char_indices();
    match chars.nth(QUOTE_CHARS) {
        None => s.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes in all)", &s[..cut], s.len()),
    }
}

/// serde's message with input values taken out or cut: a string in the wrong place can be a
/// whole script or a password (`invalid type: string "…"` becomes `invalid type: a string`),
/// and other quoted values are cut to [`QUOTE_CHARS`].
fn scrub_message(m: &str) -> String {
    let mut out = String::with_capacity(m.len().min(512));
    let mut rest = m;
    while let Some(start) = rest.find(['"', '`']) {
        let q = rest.as_bytes()[start];
        out.push_str(&rest[..start]);
        let body_start = start + 1;
        let bytes = rest.as_bytes();
        let mut i = body_start;
        while i < bytes.len() && bytes[i] != q {
            i += if q == b'"' && bytes[i] == b'\\' { 2 } else { 1 };
        }
        let end = i.min(bytes.len());
        let body = &rest[body_start..end];
        if q == b'"' && out.ends_with("string ") {
            out.truncate(out.len() - "string ".len());
            out.push_str("a string");
        } else {
            out.push(q as char);
            out.push_str(&truncate_value(body));
            out.push(q as char);
        }
        rest = rest.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

fn syntax_error(source_name: &str, e: &serde_norway::Error) -> ConfigError {
    let location = match e.location() {
        Some(l) => format!(" line {}, column {}", l.line(), l.column()),
        None => String::new(),
    };
    let raw = scrub_message(&e.to_string());
    // serde_norway appends " at line L column C" to its message; the location is given once,
    // in front, where a user looks for it.
    let mut message = match raw.find(" at line ") {
        Some(i) => raw[..i].to_string(),
        None => raw,
    };
    if let Some(at) = message.find("unknown field `") {
        // Nested keys come as "kubernetes: unknown field ..."; name them by their dotted path.
        let parent: String = message[..at]
            .trim_end_matches([':', ' '])
            .split(": ")
            .filter(|p| !p.is_empty())
            .map(|p| format!("{p}."))
            .collect();
        let rest = &message[at + "unknown field `".len()..];
        if let Some(end) = rest.find('`') {
            let key = rest[..end].to_string();
            let mut m = format!("unknown key `{parent}{key}`");
            match did_you_mean(&key) {
                Some(hint) => m.push_str(&format!("; did you mean `{parent}{hint}`?")),
                None => m.push_str("; remove it (see the README's configuration reference)"),
            }
            message = m;
        }
    }
    ConfigError::Syntax {
        source_name: source_name.to_string(),
        location,
        message,
    }
}

fn did_you_mean(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(row[j + 1])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

impl Config {
    /// Merges `layers` (lowest first) onto the defaults, validating each value against the
    /// source it came from.
    pub(crate) fn merge<'a>(
        layers: impl IntoIterator<Item = (&'a str, &'a Layer)>,
    ) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        for (source, layer) in layers {
            c.apply(source, layer)?;
        }
        Ok(c)
    }

    fn merge_etcd(
        &mut self,
        e: &EtcdLayer,
        invalid: &dyn Fn(&str, &str, &str, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if let Some(g) = e.stopped_grace_seconds {
            if !(5..=30 * 86_400).contains(&g) {
                return Err(invalid(
                    "etcd.stopped_grace_seconds",
                    &g.to_string(),
                    "out of range",
                    "use a number of seconds from 5 to 2592000 (30 days)",
                ));
            }
            self.etcd.stopped_grace_seconds = g;
        }
        if let Some(i) = e.snapshot_interval_seconds {
            if !(60..=7 * 86_400).contains(&i) {
                return Err(invalid(
                    "etcd.snapshot_interval_seconds",
                    &i.to_string(),
                    "out of range",
                    "use a number of seconds from 60 to 604800 (7 days)",
                ));
            }
            self.etcd.snapshot_interval_seconds = i;
        }
        if let Some(k) = e.snapshots_kept {
            if !(1..=100).contains(&k) {
                return Err(invalid(
                    "etcd.snapshots_kept",
                    &k.to_string(),
                    "out of range",
                    "keep from 1 to 100 snapshots",
                ));
            }
            self.etcd.snapshots_kept = k;
        }
        Ok(())
    }

    fn apply(&mut self, source: &str, l: &Layer) -> Result<(), ConfigError> {
        let invalid = |field: &str, value: &str, problem: &str, fix: &str| ConfigError::Invalid {
            source_name: source.to_string(),
            field: field.to_string(),
            value: truncate_value(value),
            problem: problem.to_string(),
            fix: fix.to_string(),
        };
        if let Some(r) = &l.role {
            self.role = Some(Role::parse(r).ok_or_else(|| {
                invalid(
                    "role",
                    r,
                    "not a role",
                    "use `master` or `minion` (the instance's `role` tag, or `role:` in user-data)",
                )
            })?);
        }
        if let Some(cl) = &l.cluster {
            if !valid_cluster_name(cl) {
                return Err(invalid(
                    "cluster",
                    cl,
                    "not a cluster name",
                    "use 1 to 63 lowercase letters, digits and `-`, starting with a letter or digit \
                     (the `berth:cluster` tag, or `cluster:` in user-data)",
                ));
            }
            self.cluster = Some(cl.clone());
        }
        if let Some(p) = &l.profile {
            if !valid_cluster_name(p) {
                return Err(invalid(
                    "profile",
                    p,
                    "not a profile name",
                    "name a directory of /usr/share/berth/profiles, e.g. `legacy-2015`",
                ));
            }
            self.profile = p.clone();
        }
        if let Some(u) = l.upgrade {
            self.upgrade = u;
        }
        if let Some(e) = &l.ec2_endpoint {
            if !valid_endpoint(e) {
                return Err(invalid(
                    "ec2_endpoint",
                    e,
                    "not an endpoint URL",
                    "write an http(s) URL with a host and nothing after the path, like \
                     `https://ec2.us-east-1.amazonaws.com/`",
                ));
            }
            self.ec2_endpoint = Some(e.clone());
        }
        if let Some(f) = l.upgrade_failure {
            self.upgrade_failure = f;
        }
        if let Some(m) = l.manage_hosts {
            self.manage_hosts = m;
        }
        if let Some(e) = &l.etcd {
            self.merge_etcd(e, &invalid)?;
        }
        if let Some(p) = &l.poll {
            if let Some(i) = p.interval_seconds {
                if !(0.05..=86_400.0).contains(&i) {
                    return Err(invalid(
                        "poll.interval_seconds",
                        &i.to_string(),
                        "out of range",
                        "use a number of seconds from 0.05 to 86400",
                    ));
                }
                self.poll.interval_seconds = i;
            }
            if let Some(r) = p.cluster_requests_per_second {
                if !(0.001..=100.0).contains(&r) {
                    return Err(invalid(
                        "poll.cluster_requests_per_second",
                        &r.to_string(),
                        "out of range",
                        "use a rate from 0.001 to 100 requests per second",
                    ));
                }
                self.poll.cluster_requests_per_second = r;
            }
        }
        if let Some(k) = &l.kubernetes {
            if let Some(v) = k.log_level {
                if v > 10 {
                    return Err(invalid(
                        "kubernetes.log_level",
                        &v.to_string(),
                        "out of range",
                        "use a verbosity from 0 to 10",
                    ));
                }
                self.kubernetes.log_level = v;
            }
            if let Some(v) = k.allow_privileged {
                self.kubernetes.allow_privileged = v;
            }
            if let Some(v) = &k.service_cidr {
                if !valid_ipv4_cidr(v) {
                    return Err(invalid(
                        "kubernetes.service_cidr",
                        v,
                        "not an IPv4 CIDR block",
                        "write it like `10.254.0.0/16`",
                    ));
                }
                self.kubernetes.service_cidr = v.clone();
            }
            if let Some(v) = &k.version {
                if !valid_kubernetes_version(v) {
                    return Err(invalid(
                        "kubernetes.version",
                        v,
                        "not a Kubernetes release version",
                        "write it like `v1.20.2`",
                    ));
                }
                self.kubernetes.version = Some(v.clone());
            }
            if let Some(t) = k.token_ttl_seconds {
                if !(600..=7 * 86_400).contains(&t) {
                    return Err(invalid(
                        "kubernetes.token_ttl_seconds",
                        &t.to_string(),
                        "out of range",
                        "use a number of seconds from 600 (a minion needs 3 minutes of a token \
                         that is replaced at half its TTL) to 604800 (7 days)",
                    ));
                }
                self.kubernetes.token_ttl_seconds = t;
            }
            if let Some(list) = &k.ignore_preflight_errors {
                if let Some(bad) = list.iter().find(|c| !valid_preflight_check(c)) {
                    return Err(invalid(
                        "kubernetes.ignore_preflight_errors",
                        bad,
                        "not a kubeadm preflight check name",
                        "list check names as kubeadm prints them, like `Swap` or \
                         `FileContent--proc-sys-net-ipv4-ip_forward`",
                    ));
                }
                self.kubernetes.ignore_preflight_errors = list.clone();
            }
        }
        Ok(())
    }
}

/// `vMAJOR.MINOR.PATCH`, as kubeadm's `kubernetesVersion` takes it offline (a label such as
/// `stable` makes kubeadm ask the internet).
pub(crate) fn valid_kubernetes_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    s.len() <= 16
        && parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A kubeadm preflight check name (`Swap`, `FileContent--proc-sys-net-ipv4-ip_forward`, `all`):
/// it reaches kubeadm's configuration file.
pub(crate) fn valid_preflight_check(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Cluster and profile names: they reach tag filters, paths and file comments.
pub(crate) fn valid_cluster_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An http(s) URL with a host, no user info, query or fragment.
pub(crate) fn valid_endpoint(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host().is_some()
            && u.username().is_empty()
            && u.password().is_none()
            && u.query().is_none()
            && u.fragment().is_none()
    })
}

/// `a.b.c.d/n` with the host bits clear.
pub(crate) fn valid_ipv4_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(len)) = (addr.parse::<Ipv4Addr>(), len.parse::<u8>()) else {
        return false;
    };
    if len > 32 || len.to_string().len() != s.len() - s.find('/').unwrap() - 1 {
        return false;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(addr) & !mask == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Config, ConfigError> {
        let l = Layer::parse("user-data", text)?;
        Config::merge([("user-data", &l)])
    }

    #[test]
    fn defaults_are_the_seed() {
        let c = one("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.kubernetes.service_cidr, "10.254.0.0/16");
        assert!(c.upgrade);
    }

    #[test]
    fn unknown_key_names_line_column_and_hint() {
        let e = one("cluster: seed\nupgrade: true\n\nrol: master\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "user-data line 4, column 1: unknown key `rol`; did you mean `role`?"
        );
        let e = one("kubernetes:\n  log_levle: 2\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("user-data line 2, column 3: unknown key `kubernetes.log_levle`; did you mean `kubernetes.log_level`?"),
            "{e}"
        );
    }

    #[test]
    fn malformed_yaml_is_located() {
        let e = one("role: [master\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("user-data line "), "{s}");
    }

    #[test]
    fn bad_role_names_field_and_fix() {
        let e = one("role: captain\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "user-data: `role` = \"captain\": not a role; use `master` or `minion` (the instance's \
             `role` tag, or `role:` in user-data)"
        );
    }

    #[test]
    fn kubeadm_settings_are_checked_with_the_field_and_the_fix() {
        let c = one(
            "kubernetes:\n  version: v1.31.4\n  token_ttl_seconds: 600\n  \
             ignore_preflight_errors: [Swap, FileContent--proc-sys-net-ipv4-ip_forward]\n",
        )
        .unwrap();
        assert_eq!(c.kubernetes.version.as_deref(), Some("v1.31.4"));
        assert_eq!(c.kubernetes.token_ttl_seconds, 600);
        assert_eq!(c.kubernetes.ignore_preflight_errors.len(), 2);
        let d = one("role: master\n").unwrap();
        assert_eq!(
            (d.kubernetes.version, d.kubernetes.token_ttl_seconds),
            (None, 7200)
        );
        for (text, field, fix) in [
            (
                "kubernetes:\n  version: stable\n",
                "kubernetes.version",
                "v1.20.2",
            ),
            (
                "kubernetes:\n  version: v1.20\n",
                "kubernetes.version",
                "v1.20.2",
            ),
            (
                "kubernetes:\n  token_ttl_seconds: 300\n",
                "kubernetes.token_ttl_seconds",
                "600",
            ),
            (
                "kubernetes:\n  ignore_preflight_errors: [\"Swap; rm -rf /\"]\n",
                "kubernetes.ignore_preflight_errors",
                "check names",
            ),
        ] {
            let e = one(text).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(fix), "{text:?}: {e}");
        }
    }

    #[test]
    fn user_data_overrides_tags() {
        let tags = [("role".to_string(), "minion".to_string())].into();
        let t = Layer::from_tags(&tags);
        let u = Layer::parse("user-data", "role: master\n").unwrap();
        let c = Config::merge([("tags", &t), ("user-data", &u)]).unwrap();
        assert_eq!(c.role, Some(Role::Master));
        let c = Config::merge([("tags", &t)]).unwrap();
        assert_eq!(c.role, Some(Role::Minion));
    }

    #[test]
    fn hostile_tag_values_are_refused() {
        for bad in ["Seed", "a b", "x\ny", "", "-x", "é", &"a".repeat(64)] {
            let tags = [("berth:cluster".to_string(), bad.to_string())].into();
            let l = Layer::from_tags(&tags);
            assert!(Config::merge([("tags", &l)]).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn quoted_values_are_cut_and_strings_not_quoted() {
        let huge = "v".repeat(1 << 20);
        let tags = [("berth:cluster".to_string(), huge)].into();
        let e = Config::merge([("tags", &Layer::from_tags(&tags))])
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400, "{} bytes", e.len());
        assert!(e.contains("(1048576 bytes in all)"), "{e}");
        let e = one("kubernetes: \"password: hunter2\"\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("invalid type: a string"), "{e}");
        let e = one(&format!("upgrade_failure: {}\n", "w".repeat(5000)))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 600, "{e}");
    }

    #[test]
    fn ec2_endpoint_is_validated() {
        let c = one("ec2_endpoint: http://169.254.169.253/\n").unwrap();
        assert_eq!(c.ec2_endpoint.as_deref(), Some("http://169.254.169.253/"));
        for bad in [
            "ftp://x/",
            "http://user:pw@x/",
            "http://x/?a=b",
            "not a url",
            "/path",
        ] {
            let e = one(&format!("ec2_endpoint: \"{bad}\"\n")).unwrap_err();
            assert!(e.to_string().contains("`ec2_endpoint`"), "{bad}: {e}");
        }
    }

    #[test]
    fn cidr_validation() {
        assert!(valid_ipv4_cidr("10.254.0.0/16"));
        assert!(!valid_ipv4_cidr("10.254.0.1/16"));
        assert!(!valid_ipv4_cidr("10.254.0.0/33"));
        assert!(!valid_ipv4_cidr("10.254.0.0/016"));
        assert!(!valid_ipv4_cidr("10.254.0.0"));
        assert!(!valid_ipv4_cidr("10.254.0.0/16\"; rm"));
    }
}
