//! A client for the three AWS Systems Manager Parameter Store calls berth makes:
//! `GetParameter`, `PutParameter` and `DeleteParameter`, in the AWS JSON 1.1 protocol
//! (`POST /`, `Content-Type: application/x-amz-json-1.1`, `X-Amz-Target: AmazonSSM.<Action>`),
//! signed with SigV4 for the service `ssm`.
//!
//! berth keeps a cluster's secrets there, one path per cluster: `/berth/<cluster>/master/...`
//! (masters read and write it) and `/berth/<cluster>/node/...` (every node reads it). The IAM
//! policies that enforce this split are in `docs/iam.md`.
//!
//! Like [`crate::api::Ec2Client`]: each attempt is signed afresh; 5xx, throttling
//! (`ThrottlingException`), timeouts and network failures are retried under the client's
//! [`RetryPolicy`], other 4xx are not; when SSM refuses a request's time and its `Date` header
//! shows the host's clock is off by more than [`SKEW_THRESHOLD`](crate::skew::SKEW_THRESHOLD), the client signs with SSM's
//! time and tries again; no redirect is followed; responses are read up to
//! [`RESPONSE_MAX_BYTES`]. Expired credentials ([`SsmError::is_expired_credentials`]) are the
//! caller's to refresh.
//!
//! Secrets: a `SecureString` value, read or written, is registered with [`redact::hold`], so no
//! error text a server sends can echo it; no error value carries a parameter's value, and
//! [`Parameter`]'s `Debug` shows a `SecureString` value as `** redacted **`.
//!
//! Not for: listing or searching parameters (`GetParametersByPath`), `StringList`, customer
//! managed KMS keys, or parameter policies; berth needs none of them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::time::Instant;
use url::Url;

use crate::model::Credentials;
use crate::redact::{self, RemoteText};
use crate::retry::{self, Attempt, GaveUp, Operation, RetryPolicy, Stop, Verdict};
use crate::sign::{self, SignError};
use crate::skew::ClockSkew;
use crate::transport::{classify, Class, Failure, Transport, TransportConfig};

/// The longest parameter name SSM accepts: 1011 characters ("Parameter Store quotas" and the
/// `PutParameter` reference: 2048 less what SSM reserves for the ARN prefix).
pub const NAME_MAX_CHARS: usize = 1011;
/// Most levels of a hierarchical name (`/a/b/c` has three): 15, per the `PutParameter`
/// reference.
pub const NAME_MAX_LEVELS: usize = 15;
/// Largest value of a standard-tier parameter, in bytes (AWS: 4 KB). berth's values (a CA
/// certificate and key, a marker, a bootstrap token) fit it; a larger value is written with
/// `Tier: Intelligent-Tiering`, which makes it an advanced parameter.
pub const STANDARD_VALUE_MAX_BYTES: usize = 4096;
/// Largest value of an advanced-tier parameter, in bytes (AWS: 8 KB): the most berth sends.
pub const VALUE_MAX_BYTES: usize = 8192;
/// One response. A `GetParameter` answer is the value (8 KiB at most) plus about 300 bytes of
/// name, ARN and metadata; 64 KiB bounds what a broken server makes the agent buffer.
pub const RESPONSE_MAX_BYTES: usize = 64 * 1024;
/// How long one parameter call may take, retries included ([`SsmClient::default_policy`]).
/// SSM answers a parameter call in tens of milliseconds, but `GetParameter` has a default
/// throughput of 40 transactions per second per account and region ("Parameter Store
/// quotas"), and every node of a cluster reads its secrets at the same first boot: 4000 nodes
/// need 100 s of that budget. 120 s leaves a margin; past it the agent reports the failure and
/// its next converge run tries again, so a throttled account delays a node, never wedges it.
pub const SSM_DEADLINE: Duration = Duration::from_secs(120);

const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const TARGET_PREFIX: &str = "AmazonSSM.";

/// Codes SSM answers to a request whose signature time is too far from its clock.
const SKEW_CODES: &[&str] = &[
    "RequestExpired",
    "RequestTimeTooSkewed",
    "RequestInTheFuture",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
];
/// Codes that mean "slow down" or "try again"; all are retried.
const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyUpdates",
    "RequestLimitExceeded",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
];
/// The subset of [`RETRYABLE_CODES`] that means "slow down".
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyUpdates",
    "RequestLimitExceeded",
];
const EXPIRED_CODES: &[&str] = &[
    "ExpiredTokenException",
    "ExpiredToken",
    "RequestExpired",
    "TokenRefreshRequired",
];
const MAYBE_EXPIRED_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidToken",
];
/// `AccessDeniedException` is what SSM sends; `AccessDenied` is the Query-protocol spelling
/// some implementations (moto) answer with.
const ACCESS_DENIED_CODES: &[&str] = &["AccessDeniedException", "AccessDenied"];

/// A parameter's type. berth writes `String` and `SecureString` (encrypted with the AWS
/// managed KMS key `alias/aws/ssm`); it never uses `StringList`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParameterType {
    String,
    SecureString,
}

impl ParameterType {
    /// The name SSM uses in `Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            ParameterType::String => "String",
            ParameterType::SecureString => "SecureString",
        }
    }
}

impl fmt::Display for ParameterType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`SsmClient::put_parameter`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The value was written; `version` is the parameter's version now (1 for a new one).
    Created { version: i64 },
    /// `overwrite` was false and the name already existed (`ParameterAlreadyExists`): nothing
    /// was written.
    AlreadyExists,
}

/// One parameter as `GetParameter` returns it.
#[derive(Clone, PartialEq)]
pub struct Parameter {
    pub name: String,
    /// Decrypted when read `with_decryption` (or not a `SecureString`); otherwise the ciphertext
    /// SSM returns.
    pub value: String,
    /// 1 for the first value, incremented by every overwrite.
    pub version: i64,
    pub kind: ParameterType,
    /// `LastModifiedDate`: seconds since the Unix epoch, with a fraction.
    pub last_modified: Option<f64>,
}

impl fmt::Debug for Parameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value: &dyn fmt::Debug = match self.kind {
            ParameterType::SecureString => &"** redacted **",
            ParameterType::String => &self.value,
        };
        f.debug_struct("Parameter")
            .field("name", &self.name)
            .field("value", value)
            .field("version", &self.version)
            .field("kind", &self.kind)
            .field("last_modified", &self.last_modified)
            .finish()
    }
}

/// Why a Parameter Store call failed: the action, the parameter's name and, when SSM answered,
/// the HTTP status, the AWS error code and message. Never carries a parameter's value, a secret
/// key or a session token: what the server wrote is a [`RemoteText`].
#[derive(Debug, thiserror::Error)]
pub enum SsmError {
    #[error("SSM {action} {name}: {code} (HTTP {status}): {message}{}", request_id_suffix(.request_id))]
    Api {
        action: &'static str,
        name: String,
        status: u16,
        code: RemoteText,
        message: RemoteText,
        request_id: Option<RemoteText>,
    },
    #[error("SSM {action} {name}: {url} answered HTTP {status} without an AWS error document")]
    Http {
        action: &'static str,
        name: String,
        url: String,
        status: u16,
    },
    #[error(
        "SSM {action} {name}: {url} answered HTTP {status}, a redirect: SSM never redirects, so \
         berth follows none and sent neither its session token nor a signed request to another \
         host; check the SSM endpoint and any proxy"
    )]
    Redirect {
        action: &'static str,
        name: String,
        url: String,
        status: u16,
    },
    #[error("SSM {action} {name}: cannot connect to {url}: {source}")]
    Connect {
        action: &'static str,
        name: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("SSM {action} {name}: request to {url} failed: {source}")]
    Transport {
        action: &'static str,
        name: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("SSM {action} {name}: request to {url}: {failure}")]
    Timeout {
        action: &'static str,
        name: String,
        url: String,
        failure: Failure,
    },
    #[error("SSM {action} {name}: response from {url} larger than {limit} bytes (not used)")]
    TooLarge {
        action: &'static str,
        name: String,
        url: String,
        limit: usize,
    },
    #[error("SSM {action} {name}: {source}")]
    Sign {
        action: &'static str,
        name: String,
        #[source]
        source: SignError,
    },
    #[error("SSM {action} {name}: cannot use the response: {reason}")]
    Response {
        action: &'static str,
        name: String,
        reason: String,
    },
    #[error("SSM {action}: invalid parameter name {name}: {reason}")]
    InvalidName {
        action: &'static str,
        name: String,
        reason: String,
    },
    #[error("SSM {action} {name}: invalid value: {reason} (the value is not shown)")]
    InvalidValue {
        action: &'static str,
        name: String,
        reason: String,
    },
    #[error("SSM {action} {name}: gave up after {attempts} attempt(s) in {elapsed:?} ({stop}); last error: {last}")]
    GaveUp {
        action: &'static str,
        name: String,
        attempts: u32,
        elapsed: Duration,
        stop: Stop,
        #[source]
        last: Box<SsmError>,
    },
}

fn request_id_suffix(request_id: &Option<RemoteText>) -> String {
    request_id
        .as_ref()
        .map(|id| format!(" (request id {id})"))
        .unwrap_or_default()
}

impl SsmError {
    /// The SSM action that failed (`GetParameter`, `PutParameter`, `DeleteParameter`).
    pub fn action(&self) -> &'static str {
        match self {
            SsmError::Api { action, .. }
            | SsmError::Http { action, .. }
            | SsmError::Redirect { action, .. }
            | SsmError::Connect { action, .. }
            | SsmError::Transport { action, .. }
            | SsmError::Timeout { action, .. }
            | SsmError::TooLarge { action, .. }
            | SsmError::Sign { action, .. }
            | SsmError::Response { action, .. }
            | SsmError::InvalidName { action, .. }
            | SsmError::InvalidValue { action, .. }
            | SsmError::GaveUp { action, .. } => action,
        }
    }

    /// The parameter's name, as shown in messages (bounded, control characters escaped).
    pub fn parameter(&self) -> &str {
        match self {
            SsmError::Api { name, .. }
            | SsmError::Http { name, .. }
            | SsmError::Redirect { name, .. }
            | SsmError::Connect { name, .. }
            | SsmError::Transport { name, .. }
            | SsmError::Timeout { name, .. }
            | SsmError::TooLarge { name, .. }
            | SsmError::Sign { name, .. }
            | SsmError::Response { name, .. }
            | SsmError::InvalidName { name, .. }
            | SsmError::InvalidValue { name, .. }
            | SsmError::GaveUp { name, .. } => name,
        }
    }

    /// The HTTP status of the (last) response, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            SsmError::Api { status, .. }
            | SsmError::Http { status, .. }
            | SsmError::Redirect { status, .. } => Some(*status),
            SsmError::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The AWS error code (`ParameterNotFound`, `AccessDeniedException`, ...), without the
    /// `prefix#` of a JSON `__type`, when SSM sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            SsmError::Api { code, .. } => Some(code.as_str()),
            SsmError::GaveUp { last, .. } => last.code(),
            _ => None,
        }
    }

    /// The AWS error message, when SSM sent one (scrubbed of held secrets and bounded).
    pub fn message(&self) -> Option<&str> {
        match self {
            SsmError::Api { message, .. } => Some(message.as_str()),
            SsmError::GaveUp { last, .. } => last.message(),
            _ => None,
        }
    }

    /// True when IAM refused the call (`AccessDeniedException`): the instance profile's role
    /// lacks the permission for this action on this parameter (see `docs/iam.md`), or the KMS
    /// key's for a `SecureString`. Retrying does not help.
    pub fn is_access_denied(&self) -> bool {
        self.code()
            .is_some_and(|c| ACCESS_DENIED_CODES.contains(&c))
    }

    /// True when SSM rejected the credentials as expired: refresh them and retry once.
    pub fn is_expired_credentials(&self) -> bool {
        match (self.code(), self.message()) {
            (Some(code), message) => {
                EXPIRED_CODES.contains(&code)
                    || (MAYBE_EXPIRED_CODES.contains(&code)
                        && message.is_some_and(|m| m.to_ascii_lowercase().contains("expired")))
            }
            _ => false,
        }
    }

    /// True when SSM throttled the call (after retries, if this is what they ended on).
    pub fn is_throttling(&self) -> bool {
        self.code().is_some_and(|c| THROTTLING_CODES.contains(&c))
    }

    fn from_gave_up(action: &'static str, name: &str, gave_up: GaveUp<SsmError>) -> Self {
        match gave_up.stop {
            Stop::NotRetryable if gave_up.attempts == 1 => gave_up.last,
            stop => SsmError::GaveUp {
                action,
                name: shown(name),
                attempts: gave_up.attempts,
                elapsed: gave_up.elapsed,
                stop,
                last: Box::new(gave_up.last),
            },
        }
    }
}

/// A name as errors show it: at most 128 characters, control characters escaped. A valid name
/// is shown as it is.
fn shown(name: &str) -> String {
    const MAX: usize = 128;
    let mut out: String = name
        .chars()
        .take(MAX)
        .flat_map(char::escape_default)
        .collect();
    if name.chars().count() > MAX {
        out.push_str("...");
    }
    out
}

/// Checks `name` against SSM's rules (the `PutParameter` reference, "Requirements and
/// constraints for parameter names"): 1 to [`NAME_MAX_CHARS`] characters of `a-zA-Z0-9_.-/`;
/// a hierarchy starts with `/`, has no empty level and at most [`NAME_MAX_LEVELS`] levels; no
/// name starts with `aws` or `ssm` (any case), which AWS reserves.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > NAME_MAX_CHARS {
        return Err(format!(
            "{} characters, more than SSM's {NAME_MAX_CHARS}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')))
    {
        return Err(format!(
            "character {:?} is not allowed (only a-z, A-Z, 0-9, `_`, `.`, `-` and `/`)",
            bad
        ));
    }
    if name.contains('/') {
        let Some(rest) = name.strip_prefix('/') else {
            return Err("a hierarchical name must start with `/`".into());
        };
        let levels: Vec<&str> = rest.split('/').collect();
        if levels.iter().any(|l| l.is_empty()) {
            return Err("a level is empty (`//`, or a trailing `/`)".into());
        }
        if levels.len() > NAME_MAX_LEVELS {
            return Err(format!(
                "{} levels, more than SSM's {NAME_MAX_LEVELS}",
                levels.len()
            ));
        }
    }
    let first = name.trim_start_matches('/').to_ascii_lowercase();
    if first.starts_with("aws") || first.starts_with("ssm") {
        return Err("names starting with `aws` or `ssm` are reserved by AWS".into());
    }
    Ok(())
}

/// Checks a value berth writes: not empty, at most [`VALUE_MAX_BYTES`] bytes (AWS's advanced
/// tier limit; values over [`STANDARD_VALUE_MAX_BYTES`] are written as advanced parameters).
pub fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("empty (SSM refuses an empty value)".into());
    }
    if value.len() > VALUE_MAX_BYTES {
        return Err(format!(
            "{} bytes, more than SSM's advanced-tier limit of {VALUE_MAX_BYTES}",
            value.len()
        ));
    }
    Ok(())
}

/// The code of a JSON `__type` (`com.amazonaws.ssm#ParameterNotFound`) or of an
/// `X-Amzn-ErrorType` header (`ParameterNotFound:http://internal.amazon.com/...`).
fn code_of(raw: &str) -> &str {
    let after_hash = raw.rsplit('#').next().unwrap_or(raw);
    after_hash.split(':').next().unwrap_or(after_hash).trim()
}

#[derive(Deserialize)]
struct JsonError {
    #[serde(rename = "__type", default)]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(rename = "Message", default)]
    message_upper: Option<String>,
}

/// The code and message of an error answer: the JSON 1.1 shape, else the `X-Amzn-ErrorType`
/// header, else a Query-protocol XML document (what some SSM implementations send for an IAM
/// refusal). `sent` is the `SecureString` value the request carried: it is removed before the
/// text is bounded, whatever its length (held secrets are only looked for in the first 4 KiB).
fn parse_error(
    body: &[u8],
    header_type: Option<&str>,
    sent: Option<&str>,
) -> Option<(RemoteText, RemoteText, Option<RemoteText>)> {
    let scrub = |text: &str| match sent {
        Some(value) if !value.is_empty() && text.contains(value) => {
            text.replace(value, "** redacted **")
        }
        _ => text.to_string(),
    };
    if let Ok(e) = serde_json::from_slice::<JsonError>(body) {
        let kind = e.kind.as_deref().or(header_type);
        if let Some(kind) = kind {
            let message = e.message.or(e.message_upper).unwrap_or_default();
            return Some((
                RemoteText::new(&scrub(code_of(kind))),
                RemoteText::new(&scrub(&message)),
                None,
            ));
        }
    }
    let text = scrub(&String::from_utf8_lossy(body));
    if let Ok(aws) = crate::xml::parse_error(&text) {
        return Some((aws.code, aws.message, aws.request_id));
    }
    header_type.map(|t| (RemoteText::new(code_of(t)), RemoteText::default(), None))
}

#[derive(Deserialize)]
struct GetParameterOutput {
    #[serde(rename = "Parameter")]
    parameter: Option<RawParameter>,
}

#[derive(Deserialize)]
struct RawParameter {
    #[serde(rename = "Name")]
    name: Option<String>,
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "Value")]
    value: Option<String>,
    #[serde(rename = "Version")]
    version: Option<i64>,
    #[serde(rename = "LastModifiedDate")]
    last_modified: Option<f64>,
}

#[derive(Deserialize)]
struct PutParameterOutput {
    #[serde(rename = "Version")]
    version: Option<i64>,
}

/// The Parameter Store client for one region.
#[derive(Debug)]
pub struct SsmClient {
    endpoint: Url,
    region: String,
    policy: RetryPolicy,
    transport: Transport,
    attempts: AtomicU64,
    /// SSM's clock minus ours, in milliseconds, as last measured from a `Date` header when SSM
    /// SSM's clock minus ours, as measured when SSM refused a request's time.
    skew: ClockSkew,
}

impl SsmClient {
    /// A client sending to `endpoint` (production: [`SsmClient::default_endpoint`]) and signing
    /// for `region`, retrying under `policy` (production: [`SsmClient::default_policy`]).
    pub fn new(endpoint: Url, region: String, policy: RetryPolicy) -> Self {
        SsmClient {
            endpoint,
            region,
            policy,
            transport: Transport::new(TransportConfig {
                service: "SSM",
                ..TransportConfig::ec2()
            }),
            attempts: AtomicU64::new(0),
            skew: ClockSkew::default(),
        }
    }

    /// `https://ssm.{region}.amazonaws.com/`.
    pub fn default_endpoint(region: &str) -> Url {
        Url::parse(&format!("https://ssm.{region}.amazonaws.com/"))
            .expect("a region name makes a valid host name")
    }

    /// For the parameter calls of a booting node: 5 s per try (an answer takes tens of
    /// milliseconds; 5 s covers a cold TLS handshake through a proxy, and doubles when used up),
    /// backoff from 250 ms to 20 s (the AWS SDKs' cap), as many attempts as [`SSM_DEADLINE`]
    /// allows.
    pub fn default_policy() -> RetryPolicy {
        RetryPolicy {
            per_try_timeout: Duration::from_secs(5),
            max_attempts: u32::MAX,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(20),
            deadline: SSM_DEADLINE,
        }
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// HTTP requests sent so far, retries included.
    pub fn requests_sent(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// SSM's clock minus this host's, in signed milliseconds, as measured when SSM refused a
    /// request's time; zero until then.
    pub fn clock_skew_ms(&self) -> i64 {
        self.skew.millis()
    }

    /// The parameter `name`; `None` when it does not exist (`ParameterNotFound`).
    ///
    /// `with_decryption`: a `SecureString` comes back decrypted (the role needs `kms:Decrypt`
    /// on the key); otherwise its value is the ciphertext. A decrypted value is held by
    /// [`redact`] from then on.
    pub async fn get_parameter(
        &self,
        creds: &Credentials,
        name: &str,
        with_decryption: bool,
    ) -> Result<Option<Parameter>, SsmError> {
        const ACTION: &str = "GetParameter";
        check_name(ACTION, name)?;
        let body = serde_json::json!({ "Name": name, "WithDecryption": with_decryption });
        let answer = match self.call(creds, ACTION, name, &body, None).await {
            Ok(answer) => answer,
            Err(e) if e.code() == Some("ParameterNotFound") => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |reason: String| SsmError::Response {
            action: ACTION,
            name: shown(name),
            reason,
        };
        let out: GetParameterOutput = serde_json::from_slice(&answer)
            .map_err(|e| bad(format!("not a GetParameter answer ({e})")))?;
        let raw = out
            .parameter
            .ok_or_else(|| bad("no `Parameter` object".into()))?;
        let kind = match raw.kind.as_deref() {
            Some("String") => ParameterType::String,
            Some("SecureString") => ParameterType::SecureString,
            Some(other) => {
                return Err(bad(format!(
                    "`Type` is {:?}, not String or SecureString",
                    shown(other)
                )))
            }
            None => return Err(bad("no `Type`".into())),
        };
        let value = raw.value.ok_or_else(|| bad("no `Value`".into()))?;
        if kind == ParameterType::SecureString {
            redact::hold(&value);
        }
        if raw.name.as_deref() != Some(name) {
            return Err(bad(
                "its `Name` is not the name asked for (a parameter's value is only used under \
                 the name it was read by)"
                    .into(),
            ));
        }
        let version = raw
            .version
            .filter(|v| *v >= 1)
            .ok_or_else(|| bad("no `Version` of at least 1".into()))?;
        Ok(Some(Parameter {
            name: name.to_string(),
            value,
            version,
            kind,
            last_modified: raw.last_modified,
        }))
    }

    /// Writes `value` under `name` as `kind` (a `SecureString` with the AWS managed key
    /// `alias/aws/ssm`).
    ///
    /// `overwrite = false` creates the parameter only if it does not exist: when it does
    /// (`ParameterAlreadyExists`) the answer is [`PutOutcome::AlreadyExists`], not an error, and
    /// the caller reads the existing value; this is how the first master seeds a secret and the
    /// others adopt it. A retried create whose first attempt succeeded unseen also ends as
    /// `AlreadyExists`. `overwrite = true` writes a new version and returns it.
    ///
    /// Values over [`STANDARD_VALUE_MAX_BYTES`] are sent with `Tier: Intelligent-Tiering`
    /// (an advanced parameter); over [`VALUE_MAX_BYTES`] they are refused before sending.
    pub async fn put_parameter(
        &self,
        creds: &Credentials,
        name: &str,
        value: &str,
        kind: ParameterType,
        overwrite: bool,
    ) -> Result<PutOutcome, SsmError> {
        const ACTION: &str = "PutParameter";
        check_name(ACTION, name)?;
        if kind == ParameterType::SecureString {
            redact::hold(value);
        }
        validate_value(value).map_err(|reason| SsmError::InvalidValue {
            action: ACTION,
            name: shown(name),
            reason,
        })?;
        let mut body = serde_json::json!({
            "Name": name,
            "Value": value,
            "Type": kind.as_str(),
            "Overwrite": overwrite,
        });
        if value.len() > STANDARD_VALUE_MAX_BYTES {
            body["Tier"] = "Intelligent-Tiering".into();
        }
        let sent = (kind == ParameterType::SecureString).then_some(value);
        let answer = match self.call(creds, ACTION, name, &body, sent).await {
            Ok(answer) => answer,
            Err(e) if !overwrite && e.code() == Some("ParameterAlreadyExists") => {
                return Ok(PutOutcome::AlreadyExists)
            }
            Err(e) => return Err(e),
        };
        let out: PutParameterOutput =
            serde_json::from_slice(&answer).map_err(|e| SsmError::Response {
                action: ACTION,
                name: shown(name),
                reason: format!("not a PutParameter answer ({e})"),
            })?;
        let version = out
            .version
            .filter(|v| *v >= 1)
            .ok_or_else(|| SsmError::Response {
                action: ACTION,
                name: shown(name),
                reason: "no `Version` of at least 1".into(),
            })?;
        Ok(PutOutcome::Created { version })
    }

    /// Deletes `name`: true when it existed, false when it did not (`ParameterNotFound`).
    pub async fn delete_parameter(
        &self,
        creds: &Credentials,
        name: &str,
    ) -> Result<bool, SsmError> {
        const ACTION: &str = "DeleteParameter";
        check_name(ACTION, name)?;
        let body = serde_json::json!({ "Name": name });
        match self.call(creds, ACTION, name, &body, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ParameterNotFound") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One signed call, retried under the policy; the body of the successful answer.
    async fn call(
        &self,
        creds: &Credentials,
        action: &'static str,
        name: &str,
        body: &serde_json::Value,
        sent: Option<&str>,
    ) -> Result<Vec<u8>, SsmError> {
        // Whatever these credentials came from, no remote text may echo them from now on.
        redact::hold(&creds.secret_access_key);
        if let Some(token) = &creds.session_token {
            redact::hold(token);
        }
        let body = serde_json::to_vec(body).expect("a JSON value serializes");
        let op = Operation::new(&self.policy);
        retry::run_within(
            &self.policy,
            &op,
            &format!("SSM {action} {}", shown(name)),
            |attempt| self.attempt(creds, action, name, &body, sent, attempt),
        )
        .await
        .map_err(|gave_up| SsmError::from_gave_up(action, name, gave_up))
    }

    async fn attempt(
        &self,
        creds: &Credentials,
        action: &'static str,
        name: &str,
        body: &[u8],
        sent: Option<&str>,
        attempt: Attempt,
    ) -> Result<Vec<u8>, Verdict<SsmError>> {
        let url = self.endpoint.to_string();
        let shown_name = || shown(name);
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.endpoint.as_str())
            .header(http::header::CONTENT_TYPE, JSON_CONTENT_TYPE)
            .header("x-amz-target", format!("{TARGET_PREFIX}{action}"))
            .body(body.to_vec())
            .map_err(|_| {
                Verdict::Fail(SsmError::Response {
                    action,
                    name: shown_name(),
                    reason: format!("the endpoint {url} is not a valid HTTP URI"),
                })
            })?;
        sign::sign_request(
            &mut request,
            creds,
            &self.region,
            "ssm",
            self.skew.signing_time(),
        )
        .map_err(|source| {
            Verdict::Fail(SsmError::Sign {
                action,
                name: shown_name(),
                source,
            })
        })?;
        let request = reqwest::Request::try_from(request).map_err(|source| {
            Verdict::Fail(SsmError::Transport {
                action,
                name: shown_name(),
                url: url.clone(),
                source: source.without_url(),
            })
        })?;
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let sent_at = SystemTime::now();
        let started = Instant::now();
        let reply = match self
            .transport
            .send(request, attempt.timeout, RESPONSE_MAX_BYTES)
            .await
        {
            Ok(reply) => reply,
            Err(failure) => {
                let name = shown_name();
                return Err(match failure {
                    Failure::Connect(source) => Verdict::Retry(SsmError::Connect {
                        action,
                        name,
                        url,
                        source,
                    }),
                    Failure::Transport(source) => Verdict::Retry(SsmError::Transport {
                        action,
                        name,
                        url,
                        source,
                    }),
                    Failure::Redirect { status } => Verdict::Fail(SsmError::Redirect {
                        action,
                        name,
                        url,
                        status,
                    }),
                    Failure::TooLarge { limit, .. } => Verdict::Fail(SsmError::TooLarge {
                        action,
                        name,
                        url,
                        limit,
                    }),
                    failure @ Failure::Timeout { .. } => Verdict::Retry(SsmError::Timeout {
                        action,
                        name,
                        url,
                        failure,
                    }),
                });
            }
        };
        let status = reply.status;
        let class = classify(status);
        if class == Class::Success {
            return Ok(reply.body);
        }
        let transient_status = class == Class::Transient;
        let parsed = parse_error(&reply.body, reply.header("x-amzn-errortype"), sent);
        let Some((code, message, request_id)) = parsed else {
            let error = SsmError::Http {
                action,
                name: shown_name(),
                url,
                status,
            };
            return Err(if transient_status {
                Verdict::Retry(error)
            } else {
                Verdict::Fail(error)
            });
        };
        let request_id =
            request_id.or_else(|| reply.header("x-amzn-requestid").map(RemoteText::new));
        let skew_corrected = SKEW_CODES.contains(&code.as_str())
            && self
                .skew
                .correct("SSM", reply.date, sent_at, started.elapsed());
        let retry = skew_corrected || transient_status || RETRYABLE_CODES.contains(&code.as_str());
        let error = SsmError::Api {
            action,
            name: shown_name(),
            status,
            code,
            message,
            request_id,
        };
        Err(if retry {
            Verdict::Retry(error)
        } else {
            Verdict::Fail(error)
        })
    }
}

fn check_name(action: &'static str, name: &str) -> Result<(), SsmError> {
    validate_name(name).map_err(|reason| SsmError::InvalidName {
        action,
        name: shown(name),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: &str, message: &str) -> SsmError {
        SsmError::Api {
            action: "GetParameter",
            name: "/berth/c1/master/etcd-ca".into(),
            status: 400,
            code: RemoteText::new(code),
            message: RemoteText::new(message),
            request_id: None,
        }
    }

    #[test]
    fn names_follow_ssms_rules() {
        for good in [
            "/berth/c1/master/etcd-ca",
            "/berth/demo-1/node/seed.marker_2",
            "plain-name",
            &format!("/{}", vec!["a"; 15].join("/")),
        ] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        let long = format!("/{}", "a".repeat(NAME_MAX_CHARS));
        for (bad, why) in [
            ("", "empty"),
            ("berth/c1", "start with `/`"),
            ("/berth//c1", "empty"),
            ("/berth/c1/", "empty"),
            ("/berth/c 1", "not allowed"),
            ("/berth/c1/ca\n", "not allowed"),
            ("/berth/cé", "not allowed"),
            ("/aws/x", "reserved"),
            ("SSM-thing", "reserved"),
            (long.as_str(), "more than SSM's 1011"),
            (&format!("/{}", vec!["a"; 16].join("/")), "16 levels"),
        ] {
            let err = validate_name(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn values_are_bounded() {
        assert!(validate_value("x").is_ok());
        assert!(validate_value(&"x".repeat(VALUE_MAX_BYTES)).is_ok());
        assert!(validate_value("").unwrap_err().contains("empty"));
        assert!(validate_value(&"x".repeat(VALUE_MAX_BYTES + 1))
            .unwrap_err()
            .contains("8192"));
    }

    #[test]
    fn error_codes_lose_their_prefix() {
        assert_eq!(
            code_of("com.amazonaws.ssm#ParameterNotFound"),
            "ParameterNotFound"
        );
        assert_eq!(code_of("ParameterNotFound"), "ParameterNotFound");
        assert_eq!(
            code_of(
                "AccessDeniedException:http://internal.amazon.com/coral/com.amazon.coral.service/"
            ),
            "AccessDeniedException"
        );
        let (code, message, _) = parse_error(
            br#"{"__type":"com.amazonaws.ssm#ParameterAlreadyExists","message":"The parameter already exists."}"#,
            None,
            None,
        )
        .unwrap();
        assert_eq!(code, "ParameterAlreadyExists");
        assert_eq!(message, "The parameter already exists.");
        let (code, _, _) = parse_error(b"{}", Some("ThrottlingException:http://x"), None).unwrap();
        assert_eq!(code, "ThrottlingException");
        let (code, _, id) = parse_error(
            b"<ErrorResponse><Error><Code>AccessDenied</Code><Message>no</Message></Error><RequestId>r-1</RequestId></ErrorResponse>",
            None,
            None,
        )
        .unwrap();
        assert_eq!(code, "AccessDenied");
        assert!(id.is_some());
        assert!(parse_error(b"<html>bad gateway</html>", None, None).is_none());
        // A long value sent is removed whole, even past the window held secrets are looked
        // for in.
        let value = "v".repeat(6000);
        let body = serde_json::json!({ "__type": "ValidationException", "message": format!("bad {value}") });
        let (_, message, _) = parse_error(body.to_string().as_bytes(), None, Some(&value)).unwrap();
        assert_eq!(message, "bad ** redacted **");
    }

    #[test]
    fn error_predicates() {
        assert!(api_error("AccessDeniedException", "x").is_access_denied());
        assert!(api_error("AccessDenied", "x").is_access_denied());
        assert!(!api_error("ParameterNotFound", "x").is_access_denied());
        assert!(api_error("ExpiredTokenException", "x").is_expired_credentials());
        assert!(api_error(
            "UnrecognizedClientException",
            "The security token included in the request is expired"
        )
        .is_expired_credentials());
        assert!(!api_error("UnrecognizedClientException", "invalid").is_expired_credentials());
        assert!(api_error("ThrottlingException", "Rate exceeded").is_throttling());
        let wrapped = SsmError::GaveUp {
            action: "GetParameter",
            name: "/berth/c1/node/seed".into(),
            attempts: 3,
            elapsed: Duration::from_secs(1),
            stop: Stop::AttemptsExhausted { max_attempts: 3 },
            last: Box::new(api_error("AccessDeniedException", "x")),
        };
        assert!(wrapped.is_access_denied());
        assert_eq!(wrapped.status(), Some(400));
        assert_eq!(wrapped.action(), "GetParameter");
        assert_eq!(wrapped.parameter(), "/berth/c1/node/seed");
    }

    #[test]
    fn secure_values_never_reach_debug() {
        let mut p = Parameter {
            name: "/berth/c1/master/etcd-ca".into(),
            value: "-----BEGIN PRIVATE KEY-----secret".into(),
            version: 2,
            kind: ParameterType::SecureString,
            last_modified: Some(1.7e9),
        };
        let shown = format!("{p:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(shown.contains("** redacted **") && shown.contains("etcd-ca"));
        p.kind = ParameterType::String;
        assert!(format!("{p:?}").contains("PRIVATE"));
    }

    #[test]
    fn shown_names_are_bounded_and_escaped() {
        assert_eq!(shown("/berth/c1"), "/berth/c1");
        assert_eq!(shown("a\nb"), "a\\nb");
        let long = shown(&"x".repeat(5000));
        assert!(long.len() <= 131 && long.ends_with("..."));
    }

    #[test]
    fn endpoint_and_policy() {
        assert_eq!(
            SsmClient::default_endpoint("eu-west-1").as_str(),
            "https://ssm.eu-west-1.amazonaws.com/"
        );
        assert_eq!(SsmClient::default_policy().deadline, SSM_DEADLINE);
    }
}
