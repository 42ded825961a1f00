//! The cluster file: a YAML description of one emulated region and its instances.
//!
//! ```yaml
//! region: us-east-1
//! account_id: "123456789012"
//! page_size: 2                 # the sim never answers more per page: forces paging
//! verify_sigv4: true
//! security_groups: [{id: sg-0123456789abcdef0, name: seed}]
//! instances:
//!   - name: fed-master         # becomes the Name tag
//!     private_ip: 172.30.0.246
//!     tags: {role: master, "berth:cluster": seed}
//!     iam_role: berth-node
//! not_launched:                # described, launched later with Sim::launch
//!   - name: fed-minion-2
//! ```
//! Unknown keys are errors, so a typo never silently becomes a default.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Instance states as EC2 names them, with their `instanceState/code`.
pub(crate) const STATES: &[(&str, u16)] = &[
    ("pending", 0),
    ("running", 16),
    ("shutting-down", 32),
    ("terminated", 48),
    ("stopping", 64),
    ("stopped", 80),
];

/// A cluster file that cannot describe a region.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cluster file: {0}")]
    Yaml(#[from] serde_norway::Error),
    #[error("cluster file: {field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// One region: where it is, how its EC2 endpoint behaves, and its instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default = "default_account")]
    pub account_id: String,
    /// Defaults to the region followed by `a`.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Default VPC for instances that name none.
    #[serde(default = "default_vpc")]
    pub vpc_id: String,
    /// Default subnet for instances that name none.
    #[serde(default = "default_subnet")]
    pub subnet_id: String,
    /// The security groups of the region; instances refer to them by id.
    #[serde(default)]
    pub security_groups: Vec<SecurityGroupSpec>,
    /// Most items the EC2 endpoint puts in one page, whatever `MaxResults` asks.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Verify the SigV4 signature of every EC2 request.
    #[serde(default = "default_true")]
    pub verify_sigv4: bool,
    /// Lifetime of the role credentials the sim issues through IMDS. AWS uses about 6 hours;
    /// tests shorten it to watch a client refresh.
    #[serde(default = "default_credential_lifetime")]
    pub credential_lifetime_secs: u64,
    /// How long a launched instance stays `pending` before it is `running`.
    #[serde(default = "default_pending_ms")]
    pub launch_pending_ms: u64,
    /// Access keys the EC2 endpoint accepts besides the instances' role credentials (for a
    /// client that is not an instance, such as berth-image).
    #[serde(default)]
    pub credentials: Vec<CredentialsSpec>,
    /// Where the EC2 endpoint listens; 127.0.0.1 on any free port by default.
    #[serde(default)]
    pub ec2_listen: Option<SocketAddr>,
    #[serde(default)]
    pub instances: Vec<InstanceSpec>,
    /// Instances described but not running when the region starts: the demo launches them.
    #[serde(default)]
    pub not_launched: Vec<InstanceSpec>,
    /// Which Parameter Store calls each IAM role (an instance's `iam_role`) may make, on which
    /// names: the sim's stand-in for the roles' IAM policies (`docs/iam.md`). Absent: every
    /// signed call is allowed. Present: a role's call is allowed when one of its rules matches
    /// the action and the name, and refused with `AccessDeniedException` otherwise; the access
    /// keys under `credentials` are allowed everything, and so is every request when
    /// `verify_sigv4` is off (nothing then says who signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_access: Option<BTreeMap<String, Vec<ParameterRule>>>,
}

/// One allow rule of a role: `actions` on every parameter whose name matches `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterRule {
    /// A name glob as IAM matches the resource part of a parameter ARN: `*` matches any run of
    /// characters (`/` included), `?` any one character; e.g. `/berth/demo/master/*`.
    pub path: String,
    /// `GetParameter`, `PutParameter`, `DeleteParameter` (an `ssm:` prefix is allowed), or `*`.
    pub actions: Vec<String>,
}

/// The Parameter Store actions the sim serves.
pub(crate) const PARAMETER_ACTIONS: &[&str] = &["GetParameter", "PutParameter", "DeleteParameter"];

impl ParameterRule {
    /// Whether this rule allows `action` (`GetParameter`) on the parameter `name`.
    pub fn allows(&self, action: &str, name: &str) -> bool {
        self.actions.iter().any(|a| {
            let a = a.strip_prefix("ssm:").unwrap_or(a);
            a == "*" || a == action
        }) && glob_match(self.path.as_bytes(), name.as_bytes())
    }
}

/// IAM-style glob: `*` any run of bytes, `?` one byte, everything else literal.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A security group: its id and its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupSpec {
    pub id: String,
    pub name: String,
}

/// Credentials given explicitly instead of generated (for example real STS credentials that a
/// moto server also knows).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsSpec {
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub session_token: Option<String>,
    /// RFC 3339, e.g. `2030-01-01T00:00:00Z`; none means it never expires.
    #[serde(default)]
    pub expiration: Option<String>,
}

impl std::fmt::Debug for CredentialsSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsSpec")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// One instance. Everything but the name has a default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Becomes the `Name` tag.
    pub name: String,
    /// Defaults to a deterministic `i-0…` derived from the region and the name.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Defaults to the next free address in 172.30.0.0/24.
    #[serde(default)]
    pub private_ip: Option<Ipv4Addr>,
    /// Defaults to `ip-172-30-0-43.ec2.internal` style (`.REGION.compute.internal` outside
    /// us-east-1).
    #[serde(default)]
    pub private_dns_name: Option<String>,
    #[serde(default)]
    pub vpc_id: Option<String>,
    #[serde(default)]
    pub subnet_id: Option<String>,
    /// Security group ids; defaults to every group of the cluster.
    #[serde(default)]
    pub security_groups: Option<Vec<String>>,
    /// Tags besides `Name`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Defaults to `running` (`pending` first when launched with `Sim::launch`).
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub user_data: Option<String>,
    /// Whether IMDS serves `meta-data/tags/instance` (the instance metadata option
    /// `InstanceMetadataTags`). When off, clients must use DescribeTags.
    #[serde(default = "default_true")]
    pub imds_tags: bool,
    /// The instance profile's role; without one IMDS has no `iam/`.
    #[serde(default)]
    pub iam_role: Option<String>,
    /// Serve these role credentials instead of generating them.
    #[serde(default)]
    pub credentials: Option<CredentialsSpec>,
    #[serde(default)]
    pub instance_type: Option<String>,
    #[serde(default)]
    pub image_id: Option<String>,
    /// Where this instance's IMDS listens; 127.0.0.1 on any free port by default.
    #[serde(default)]
    pub imds_listen: Option<SocketAddr>,
    /// Instances with the same label share one reservation, as instances launched by one
    /// RunInstances call do; by default each instance has its own.
    #[serde(default)]
    pub reservation: Option<String>,
    /// User-data as raw bytes, base64-encoded (as RunInstances takes it): gzip'd or binary
    /// user-data that `user_data` (text) cannot hold. At most one of the two.
    #[serde(default)]
    pub user_data_base64: Option<String>,
    /// What IMDS answers at `local-hostname` instead of the private DNS name, e.g. the
    /// space-separated list a VPC with several DHCP domain names gives
    /// (`ip-172-30-0-43.ec2.internal corp.example.com`).
    #[serde(default)]
    pub local_hostname: Option<String>,
    /// On an IPv6-only subnet: IMDS has no `local-ipv4` (404) and lists an IPv6 address at
    /// `network/interfaces/macs/<mac>/ipv6s`.
    #[serde(default)]
    pub ipv6_only: bool,
}

impl InstanceSpec {
    /// An instance with a name and an address, everything else defaulted.
    pub fn new(name: &str, private_ip: Ipv4Addr) -> Self {
        InstanceSpec {
            name: name.to_string(),
            private_ip: Some(private_ip),
            imds_tags: true,
            ..InstanceSpec::default()
        }
    }
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_account() -> String {
    "123456789012".into()
}
fn default_vpc() -> String {
    "vpc-0b7e4f2a91c3d5e60".into()
}
fn default_subnet() -> String {
    "subnet-0c1d2e3f4a5b6c7d8".into()
}
fn default_page_size() -> usize {
    // The largest MaxResults EC2 accepts for DescribeInstances.
    1000
}
fn default_true() -> bool {
    true
}
fn default_credential_lifetime() -> u64 {
    6 * 3600
}
fn default_pending_ms() -> u64 {
    500
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            region: default_region(),
            account_id: default_account(),
            availability_zone: None,
            vpc_id: default_vpc(),
            subnet_id: default_subnet(),
            security_groups: Vec::new(),
            page_size: default_page_size(),
            verify_sigv4: true,
            credential_lifetime_secs: default_credential_lifetime(),
            launch_pending_ms: default_pending_ms(),
            credentials: Vec::new(),
            ec2_listen: None,
            instances: Vec::new(),
            not_launched: Vec::new(),
            parameter_access: None,
        }
    }
}

impl ClusterSpec {
    /// Parse and validate a cluster file.
    pub fn from_yaml(text: &str) -> Result<ClusterSpec, SpecError> {
        let spec: ClusterSpec = serde_norway::from_str(text)?;
        spec.validate()?;
        Ok(spec)
    }

    /// The seed's cluster (`sim/clusters/seed.yaml`): fed-master and fed-minion running,
    /// fed-minion-2 described under `not_launched`.
    pub fn seed() -> ClusterSpec {
        ClusterSpec::from_yaml(include_str!("../clusters/seed.yaml"))
            .expect("sim/clusters/seed.yaml is valid (checked by a unit test)")
    }

    /// The `not_launched` instance called `name`, ready for `Sim::launch`.
    pub fn not_launched(&self, name: &str) -> Option<InstanceSpec> {
        self.not_launched.iter().find(|i| i.name == name).cloned()
    }

    pub fn availability_zone(&self) -> String {
        self.availability_zone
            .clone()
            .unwrap_or_else(|| format!("{}a", self.region))
    }

    /// Check what serde cannot: values that must be well-formed, references that must resolve,
    /// names and addresses that must be unique.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.region.is_empty()
            || !self
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(invalid(
                "region",
                format!("`{}` is not a region name", self.region),
            ));
        }
        if self.account_id.len() != 12 || !self.account_id.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid("account_id", "must be 12 digits"));
        }
        if self.page_size == 0 {
            return Err(invalid("page_size", "must be at least 1"));
        }
        if self.credential_lifetime_secs == 0 {
            return Err(invalid("credential_lifetime_secs", "must be at least 1"));
        }
        check_prefixed("vpc_id", &self.vpc_id, "vpc-")?;
        check_prefixed("subnet_id", &self.subnet_id, "subnet-")?;
        let mut group_ids = BTreeSet::new();
        for (i, g) in self.security_groups.iter().enumerate() {
            check_prefixed(&format!("security_groups[{i}].id"), &g.id, "sg-")?;
            if !group_ids.insert(g.id.as_str()) {
                return Err(invalid(
                    format!("security_groups[{i}].id"),
                    format!("`{}` appears twice", g.id),
                ));
            }
        }
        for (i, c) in self.credentials.iter().enumerate() {
            c.validate(&format!("credentials[{i}]"))?;
        }
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        let mut ips = BTreeSet::new();
        let all = self
            .instances
            .iter()
            .map(|i| ("instances", i))
            .chain(self.not_launched.iter().map(|i| ("not_launched", i)));
        for (n, (list, inst)) in all.enumerate() {
            let index = if list == "instances" {
                n
            } else {
                n - self.instances.len()
            };
            let at = format!("{list}[{index}]");
            inst.validate(&at, &group_ids)?;
            if !names.insert(inst.name.clone()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("`{}` appears twice", inst.name),
                ));
            }
            if let Some(id) = &inst.instance_id {
                if !ids.insert(id.clone()) {
                    return Err(invalid(
                        format!("{at}.instance_id"),
                        format!("`{id}` appears twice"),
                    ));
                }
            }
            if let Some(ip) = inst.private_ip {
                if !ips.insert(ip) {
                    return Err(invalid(
                        format!("{at}.private_ip"),
                        format!("{ip} appears twice"),
                    ));
                }
            }
        }
        for (role, rules) in self.parameter_access.iter().flatten() {
            for (i, rule) in rules.iter().enumerate() {
                let at = format!("parameter_access.{role}[{i}]");
                if !rule.path.starts_with('/') && rule.path != "*" {
                    return Err(invalid(
                        format!("{at}.path"),
                        format!("`{}` must start with `/` (or be `*`)", rule.path),
                    ));
                }
                for a in &rule.actions {
                    let bare = a.strip_prefix("ssm:").unwrap_or(a);
                    if bare != "*" && !PARAMETER_ACTIONS.contains(&bare) {
                        return Err(invalid(
                            format!("{at}.actions"),
                            format!(
                                "`{a}` is not one of {} or `*`",
                                PARAMETER_ACTIONS.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl CredentialsSpec {
    pub(crate) fn validate(&self, at: &str) -> Result<(), SpecError> {
        if self.access_key_id.is_empty()
            || !self
                .access_key_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        {
            return Err(invalid(
                format!("{at}.access_key_id"),
                "must be non-empty letters and digits",
            ));
        }
        if self.secret_access_key.is_empty() {
            return Err(invalid(
                format!("{at}.secret_access_key"),
                "must not be empty",
            ));
        }
        if let Some(exp) = &self.expiration {
            parse_rfc3339(exp).ok_or_else(|| {
                invalid(
                    format!("{at}.expiration"),
                    format!("`{exp}` is not an RFC 3339 time like 2030-01-01T00:00:00Z"),
                )
            })?;
        }
        Ok(())
    }
}

pub(crate) fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(Into::into)
}

impl InstanceSpec {
    /// The user-data IMDS serves: `user_data_base64` decoded, else `user_data`'s bytes.
    pub fn user_data_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        match &self.user_data_base64 {
            Some(b) => base64::engine::general_purpose::STANDARD.decode(b).ok(),
            None => self.user_data.as_ref().map(|s| s.clone().into_bytes()),
        }
    }

    pub(crate) fn validate(&self, at: &str, groups: &BTreeSet<&str>) -> Result<(), SpecError> {
        if let Some(b) = &self.user_data_base64 {
            use base64::Engine;
            if self.user_data.is_some() {
                return Err(invalid(
                    format!("{at}.user_data_base64"),
                    "give user_data or user_data_base64, not both",
                ));
            }
            if base64::engine::general_purpose::STANDARD.decode(b).is_err() {
                return Err(invalid(
                    format!("{at}.user_data_base64"),
                    "is not standard base64",
                ));
            }
        }
        if self.name.is_empty() || self.name.len() > 256 {
            return Err(invalid(format!("{at}.name"), "must be 1 to 256 characters"));
        }
        if let Some(id) = &self.instance_id {
            let hex = id.strip_prefix("i-").unwrap_or("");
            if !(hex.len() == 8 || hex.len() == 17) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(
                    format!("{at}.instance_id"),
                    format!("`{id}` is not an instance id like i-0123456789abcdef0"),
                ));
            }
        }
        if let Some(v) = &self.vpc_id {
            check_prefixed(&format!("{at}.vpc_id"), v, "vpc-")?;
        }
        if let Some(s) = &self.subnet_id {
            check_prefixed(&format!("{at}.subnet_id"), s, "subnet-")?;
        }
        if let Some(sgs) = &self.security_groups {
            for sg in sgs {
                if !groups.contains(sg.as_str()) {
                    return Err(invalid(
                        format!("{at}.security_groups"),
                        format!("`{sg}` is not one of the cluster's security_groups"),
                    ));
                }
            }
        }
        if let Some(state) = &self.state {
            if !STATES.iter().any(|(s, _)| s == state) {
                return Err(invalid(
                    format!("{at}.state"),
                    format!("`{state}` is not an EC2 instance state (pending, running, shutting-down, terminated, stopping, stopped)"),
                ));
            }
        }
        if self.tags.contains_key("Name") {
            return Err(invalid(
                format!("{at}.tags"),
                "`Name` comes from the instance's `name`; do not repeat it in tags",
            ));
        }
        // EC2's tag limits: 50 tags, keys up to 128 characters, values up to 256.
        if self.tags.len() + 1 > 50 {
            return Err(invalid(format!("{at}.tags"), "EC2 allows at most 50 tags"));
        }
        for (k, v) in &self.tags {
            if k.is_empty() || k.chars().count() > 128 || k.starts_with("aws:") {
                return Err(invalid(
                    format!("{at}.tags.{k}"),
                    "keys are 1 to 128 characters and must not start with `aws:`",
                ));
            }
            if v.chars().count() > 256 {
                return Err(invalid(
                    format!("{at}.tags.{k}"),
                    "values are at most 256 characters",
                ));
            }
            if self.imds_tags && !imds_tag_key_ok(k) {
                return Err(invalid(
                    format!("{at}.tags.{k}"),
                    "with imds_tags on, EC2 allows only letters, digits and + - = . , _ : @ in tag keys",
                ));
            }
        }
        if let Some(c) = &self.credentials {
            c.validate(&format!("{at}.credentials"))?;
            if self.iam_role.is_none() {
                return Err(invalid(
                    format!("{at}.credentials"),
                    "role credentials need an `iam_role` to be served under",
                ));
            }
        }
        if let Some(role) = &self.iam_role {
            if role.is_empty()
                || !role
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
            {
                return Err(invalid(
                    format!("{at}.iam_role"),
                    format!("`{role}` is not an IAM role name"),
                ));
            }
        }
        Ok(())
    }
}

/// Tag keys that EC2 lets IMDS serve (no `/`, no spaces).
pub(crate) fn imds_tag_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-=.,_:@".contains(c))
}

fn check_prefixed(field: &str, value: &str, prefix: &str) -> Result<(), SpecError> {
    let rest = value.strip_prefix(prefix).unwrap_or("");
    if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(
            field,
            format!("`{value}` is not an id like {prefix}0123456789abcdef0"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_parses_with_three_nodes() {
        let seed = ClusterSpec::seed();
        let names: Vec<_> = seed.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["fed-master", "fed-minion"]);
        let later = seed.not_launched("fed-minion-2").expect("fed-minion-2");
        assert_eq!(later.private_ip, Some(Ipv4Addr::new(172, 30, 0, 11)));
        assert_eq!(seed.instances[0].tags["role"], "master");
        assert_eq!(seed.instances[1].tags["berth:cluster"], "seed");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = ClusterSpec::from_yaml("instances:\n  - name: a\n    rol: master\n").unwrap_err();
        assert!(err.to_string().contains("rol"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                "instances: [{name: a, state: sleeping}]",
                "instances[0].state",
            ),
            (
                "instances: [{name: a, security_groups: [sg-0abc]}]",
                "instances[0].security_groups",
            ),
            ("instances: [{name: a}, {name: a}]", "instances[1].name"),
            (
                "instances: [{name: a, tags: {a/b: x}}]",
                "instances[0].tags.a/b",
            ),
            (
                "instances: [{name: a, instance_id: x-1}]",
                "instances[0].instance_id",
            ),
            (
                "not_launched: [{name: a, credentials: {access_key_id: A, secret_access_key: s}}]",
                "not_launched[0].credentials",
            ),
            ("account_id: '12'", "account_id"),
        ];
        for (yaml, field) in cases {
            let err = ClusterSpec::from_yaml(yaml).unwrap_err();
            assert!(err.to_string().contains(field), "{yaml}: {err}");
        }
    }

    #[test]
    fn imds_tags_off_allows_slashes_in_keys() {
        ClusterSpec::from_yaml("instances: [{name: a, imds_tags: false, tags: {a/b: x}}]").unwrap();
    }

    #[test]
    fn parameter_globs_match_as_iam_does() {
        assert!(glob_match(
            b"/berth/demo/master/*",
            b"/berth/demo/master/etcd-ca"
        ));
        assert!(glob_match(
            b"/berth/demo/master/*",
            b"/berth/demo/master/a/b"
        ));
        assert!(glob_match(b"/berth/*/node/*", b"/berth/demo/node/seed"));
        assert!(glob_match(
            b"/berth/demo/node/se?d",
            b"/berth/demo/node/seed"
        ));
        assert!(glob_match(b"*", b"/anything"));
        assert!(!glob_match(
            b"/berth/demo/master/*",
            b"/berth/demo/node/seed"
        ));
        assert!(!glob_match(b"/berth/demo/master/*", b"/berth/demo/master"));
        assert!(!glob_match(
            b"/berth/demo/master/*",
            b"/berth/demo-2/master/x"
        ));
        assert!(!glob_match(b"/berth/demo", b"/berth/demo/x"));
    }
}
