//! An IMDSv2 client: what berth-agent knows about its own instance.
//!
//! IMDSv2 only. Every read carries a session token obtained with `PUT /latest/api/token`; when
//! that PUT is refused the client fails and says so: it never falls back to IMDSv1.
//!
//! Endpoints: the client is given a list (production: [`ImdsClient::default_endpoints`], IPv4
//! `169.254.169.254` first, then IPv6 `fd00:ec2::254`). It starts with the first and stays on
//! whichever endpoint last answered. It moves to the next endpoint (wrapping around) only when
//! connecting to the current one fails or times out before any response, which is what an
//! IPv4 address looks like on an IPv6-only subnet, or the IPv6 address where the instance's
//! IPv6 metadata endpoint is disabled. An HTTP error status never moves it: that endpoint
//! answered. A token belongs to the endpoint that issued it.
//!
//! Every read follows the client's [`RetryPolicy`]: 5xx, 429, refused or reset connections and
//! timeouts are retried with backoff under the deadline; 404 means "absent" (`Ok(None)`); 401
//! drops the token and retries with a new one; other statuses are errors naming the URL and
//! status. Values are validated enough that garbage is an error naming the IMDS path.
//!
//! Tokens, secret keys and session tokens never appear in an error, a log line or a `Debug`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Mutex;
use url::Url;

use crate::body::{read_capped, BodyError};
use crate::model::{Credentials, Identity};
use crate::retry::{self, Attempt, GaveUp, RetryPolicy, Stop, Verdict};

/// The IPv4 IMDS endpoint, on every Nitro and Xen instance.
pub const IMDS_IPV4_ENDPOINT: &str = "http://169.254.169.254/";
/// The IPv6 IMDS endpoint, on Nitro instances where it is enabled (needed on IPv6-only subnets).
pub const IMDS_IPV6_ENDPOINT: &str = "http://[fd00:ec2::254]/";

const TOKEN_PATH: &str = "latest/api/token";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// The longest TTL IMDS grants (6 h): one token serves a whole boot, and the agent's long run
/// re-tokens four times a day.
const TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// A token is replaced this long before IMDS would expire it, so one never expires between our
/// check and IMDS's (a 401 would still recover, at the cost of a round trip).
const TOKEN_EARLY_REFRESH: Duration = Duration::from_secs(120);
/// Role credentials are refreshed when they expire within this window. IMDS publishes new
/// credentials at least 5 minutes before the old ones expire, so this is the earliest a
/// refresh can return something new.
const CREDENTIALS_REFRESH_WINDOW: Duration = Duration::from_secs(300);
/// EC2 caps user-data at 16 KiB and other IMDS items are far smaller; 1 MiB leaves room for
/// growth while keeping a broken server from filling memory.
const MAX_BODY: usize = 1 << 20;
/// IMDS tokens are about 56 characters; anything far longer is not a token.
const MAX_TOKEN_LEN: usize = 1024;

/// Why an IMDS read failed. Carries the URL or IMDS path and the status, never a token or a
/// credential value.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("no IMDS endpoint configured")]
    NoEndpoints,
    #[error("invalid IMDS path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("cannot connect to IMDS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("IMDS request to {url} failed: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("IMDS request to {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("IMDS {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("IMDS {url} answered HTTP 401: the session token was rejected")]
    Unauthorized { url: String },
    #[error(
        "IMDSv2 session token request (PUT {url}) refused with HTTP {status}; berth uses IMDSv2 \
         only and never falls back to IMDSv1: check that the instance metadata endpoint is \
         enabled and that the PUT response hop limit is high enough"
    )]
    TokenRefused { url: String, status: u16 },
    #[error("IMDSv2 session token from {url} is unusable: {reason}")]
    InvalidToken { url: String, reason: &'static str },
    #[error("IMDS {url} sent a body larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("IMDS {path}: not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("IMDS {path}: required item missing (HTTP 404)")]
    Missing { path: String },
    #[error("IMDS {path}: invalid value {value:?}: {reason}")]
    Invalid {
        path: String,
        value: String,
        reason: &'static str,
    },
    #[error("IMDS {path}: credentials document field {field}: {reason}")]
    CredentialsField {
        path: String,
        field: &'static str,
        reason: String,
    },
    #[error("IMDS {path}: credentials not available: Code is {code:?}, not \"Success\"")]
    CredentialsCode { path: String, code: String },
    #[error("IMDS {what}: gave up after {attempts} attempt(s) in {elapsed:?} ({stop}); last error: {last}")]
    GaveUp {
        what: String,
        attempts: u32,
        elapsed: Duration,
        stop: Stop,
        #[source]
        last: Box<ImdsError>,
    },
}

impl ImdsError {
    fn from_gave_up(what: String, gave_up: GaveUp<ImdsError>) -> Self {
        match gave_up.stop {
            // A permanent error on the first try is best reported as itself.
            Stop::NotRetryable if gave_up.attempts == 1 => gave_up.last,
            stop => ImdsError::GaveUp {
                what,
                attempts: gave_up.attempts,
                elapsed: gave_up.elapsed,
                stop,
                last: Box::new(gave_up.last),
            },
        }
    }
}

/// A value that must never be shown.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("** redacted **")
    }
}

#[derive(Debug)]
struct Token {
    endpoint: usize,
    value: Secret,
    refresh_at: Instant,
}

/// The IMDSv2 client. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct ImdsClient {
    endpoints: Vec<Url>,
    policy: RetryPolicy,
    http: reqwest::Client,
    /// Index into `endpoints` of the endpoint to use next: the one that last answered.
    current: AtomicUsize,
    token: Mutex<Option<Token>>,
    credentials: Mutex<Option<Credentials>>,
}

impl fmt::Debug for ImdsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImdsClient")
            .field("endpoints", &self.endpoints)
            .field("current", &self.current.load(Ordering::Relaxed))
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl ImdsClient {
    /// A client trying `endpoints` in order (see the module doc). Each is a base URL; the
    /// client appends `latest/...` to its path.
    pub fn new(endpoints: Vec<Url>, policy: RetryPolicy) -> Self {
        let endpoints = endpoints
            .into_iter()
            .map(|mut url| {
                if !url.path().ends_with('/') {
                    let path = format!("{}/", url.path());
                    url.set_path(&path);
                }
                url
            })
            .collect();
        let http = reqwest::Client::builder()
            // IMDS is link-local: a proxy from the environment could never reach it, and must
            // never see the token.
            .no_proxy()
            .build()
            .expect("a reqwest client with a static configuration builds");
        ImdsClient {
            endpoints,
            policy,
            http,
            current: AtomicUsize::new(0),
            token: Mutex::new(None),
            credentials: Mutex::new(None),
        }
    }

    /// The production endpoints: IPv4 first, then IPv6.
    pub fn default_endpoints() -> Vec<Url> {
        [IMDS_IPV4_ENDPOINT, IMDS_IPV6_ENDPOINT]
            .iter()
            .map(|u| Url::parse(u).expect("IMDS endpoint constants are valid URLs"))
            .collect()
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The endpoint the next request goes to (the one that last answered).
    pub fn current_endpoint(&self) -> Option<&Url> {
        self.endpoints.get(self.current.load(Ordering::Acquire))
    }

    /// Reads `path` (relative to `/latest/`, e.g. `meta-data/instance-id`) as text.
    /// `Ok(None)` when IMDS answers 404.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        match self.get_bytes(path).await? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| ImdsError::NotUtf8 { path: path.into() }),
        }
    }

    /// Reads `path` as bytes. `Ok(None)` when IMDS answers 404.
    pub async fn get_bytes(&self, path: &str) -> Result<Option<Vec<u8>>, ImdsError> {
        check_path(path)?;
        if self.endpoints.is_empty() {
            return Err(ImdsError::NoEndpoints);
        }
        retry::run(&self.policy, &format!("IMDS GET {path}"), |attempt| {
            self.attempt_get(path, attempt)
        })
        .await
        .map_err(|gave_up| ImdsError::from_gave_up(path.to_string(), gave_up))
    }

    /// This instance's identity. Every item is required; a missing one is an error naming its
    /// IMDS path.
    pub async fn identity(&self) -> Result<Identity, ImdsError> {
        let instance_id = self
            .required("meta-data/instance-id", |v| check_id(v, "i"))
            .await?;
        let region = self
            .required("meta-data/placement/region", check_region)
            .await?;
        let az_path = "meta-data/placement/availability-zone";
        let availability_zone = self.required(az_path, check_region).await?;
        if !availability_zone.starts_with(&region) {
            return Err(ImdsError::Invalid {
                path: az_path.into(),
                value: excerpt(&availability_zone),
                reason: "not a zone of the instance's region",
            });
        }
        let private_ipv4 = self
            .required("meta-data/local-ipv4", |v| {
                v.parse::<Ipv4Addr>()
                    .map(|_| ())
                    .map_err(|_| "not an IPv4 address")
            })
            .await?;
        let private_dns_name = self
            .required("meta-data/local-hostname", check_hostname)
            .await?;
        let mac = self.required("meta-data/mac", check_mac).await?;
        let mac = mac.to_ascii_lowercase();
        let interface = format!("meta-data/network/interfaces/macs/{mac}");
        let vpc_id = self
            .required(&format!("{interface}/vpc-id"), |v| check_id(v, "vpc"))
            .await?;
        let subnet_id = self
            .required(&format!("{interface}/subnet-id"), |v| check_id(v, "subnet"))
            .await?;
        let groups = self
            .required(&format!("{interface}/security-group-ids"), |v| {
                v.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .try_for_each(|g| check_id(g, "sg"))
            })
            .await?;
        let security_group_ids = groups
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        Ok(Identity {
            instance_id,
            region,
            availability_zone,
            private_ipv4,
            private_dns_name,
            mac,
            vpc_id,
            subnet_id,
            security_group_ids,
        })
    }

    /// The instance's tags from `meta-data/tags/instance/`. `Ok(None)` when the listing is 404:
    /// access to tags in instance metadata is disabled, and the caller should use DescribeTags.
    pub async fn tags(&self) -> Result<Option<BTreeMap<String, String>>, ImdsError> {
        let listing_path = "meta-data/tags/instance/";
        let Some(listing) = self.get(listing_path).await? else {
            return Ok(None);
        };
        let mut tags = BTreeMap::new();
        for key in listing.lines().map(str::trim).filter(|k| !k.is_empty()) {
            check_tag_key(key).map_err(|reason| ImdsError::Invalid {
                path: listing_path.into(),
                value: excerpt(key),
                reason,
            })?;
            let path = format!("{listing_path}{key}");
            // A tag deleted between the listing and this read is simply gone.
            if let Some(value) = self.get(&path).await? {
                tags.insert(key.to_string(), value);
            }
        }
        Ok(Some(tags))
    }

    /// The raw user-data, `Ok(None)` when the instance has none.
    pub async fn user_data(&self) -> Result<Option<Vec<u8>>, ImdsError> {
        self.get_bytes("user-data").await
    }

    /// The instance profile's role credentials, `Ok(None)` when the instance has no role.
    ///
    /// Cached, and refetched when they expire within 5 minutes. If a refetch fails while the
    /// cached credentials have not expired yet, those are returned (and a warning logged): they
    /// still work, and IMDS may be briefly unavailable.
    pub async fn credentials(&self) -> Result<Option<Credentials>, ImdsError> {
        let mut cache = self.credentials.lock().await;
        let now = SystemTime::now();
        if let Some(cached) = cache.as_ref() {
            if !needs_refresh(cached, now) {
                return Ok(Some(cached.clone()));
            }
        }
        match self.fetch_credentials().await {
            Ok(fresh) => {
                cache.clone_from(&fresh);
                Ok(fresh)
            }
            Err(e) => match cache.as_ref() {
                Some(cached) if cached.expiration.is_some_and(|exp| exp > now) => {
                    log::warn!("refreshing role credentials failed, using the cached ones: {e}");
                    Ok(Some(cached.clone()))
                }
                _ => Err(e),
            },
        }
    }

    /// Refetches the role credentials now, whatever their expiration (for when EC2 said they
    /// have expired).
    pub async fn refresh_credentials(&self) -> Result<Option<Credentials>, ImdsError> {
        let mut cache = self.credentials.lock().await;
        let fresh = self.fetch_credentials().await?;
        cache.clone_from(&fresh);
        Ok(fresh)
    }

    async fn fetch_credentials(&self) -> Result<Option<Credentials>, ImdsError> {
        let listing_path = "meta-data/iam/security-credentials/";
        let Some(listing) = self.get(listing_path).await? else {
            return Ok(None);
        };
        let Some(role) = listing.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return Ok(None);
        };
        check_role_name(role).map_err(|reason| ImdsError::Invalid {
            path: listing_path.into(),
            value: excerpt(role),
            reason,
        })?;
        let path = format!("{listing_path}{role}");
        let document = self
            .get(&path)
            .await?
            .ok_or_else(|| ImdsError::Missing { path: path.clone() })?;
        let credentials = parse_credentials(&path, &document)?;
        log::debug!(
            "role credentials for {role} fetched (access key {}, expiring {:?})",
            credentials.access_key_id,
            credentials.expiration
        );
        Ok(Some(credentials))
    }

    async fn required(
        &self,
        path: &str,
        check: impl Fn(&str) -> Result<(), &'static str>,
    ) -> Result<String, ImdsError> {
        let value = self
            .get(path)
            .await?
            .ok_or_else(|| ImdsError::Missing { path: path.into() })?;
        let value = value.trim();
        if value.is_empty() {
            return Err(ImdsError::Missing { path: path.into() });
        }
        check(value).map_err(|reason| ImdsError::Invalid {
            path: path.into(),
            value: excerpt(value),
            reason,
        })?;
        Ok(value.to_string())
    }

    fn url(&self, endpoint: usize, path: &str) -> Url {
        let mut url = self.endpoints[endpoint].clone();
        let full = format!("{}{}", url.path(), path);
        url.set_path(&full);
        url
    }

    /// Moves off `from` after it failed to connect, unless another task already did.
    fn next_endpoint(&self, from: usize) {
        let to = (from + 1) % self.endpoints.len();
        if to != from
            && self
                .current
                .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            log::info!(
                "IMDS endpoint {} unreachable, trying {}",
                self.endpoints[from],
                self.endpoints[to]
            );
        }
    }

    async fn attempt_get(
        &self,
        path: &str,
        attempt: Attempt,
    ) -> Result<Option<Vec<u8>>, Verdict<ImdsError>> {
        let started = Instant::now();
        let endpoint = self.current.load(Ordering::Acquire);
        let token = self.token(endpoint, attempt.timeout).await?;
        let left = attempt.timeout.saturating_sub(started.elapsed());
        let url = self.url(endpoint, &format!("latest/{path}"));
        let mut response = self
            .send(
                endpoint,
                self.http
                    .get(url.clone())
                    .header(TOKEN_HEADER, sensitive(&token.0)?),
                &url,
                left,
            )
            .await?;
        let status = response.status().as_u16();
        match status {
            200..=299 => {
                let left = attempt.timeout.saturating_sub(started.elapsed());
                self.read_body(&mut response, &url, left, MAX_BODY)
                    .await
                    .map(Some)
            }
            404 => Ok(None),
            401 => {
                self.drop_token(&token).await;
                Err(Verdict::Retry(ImdsError::Unauthorized { url: url.into() }))
            }
            429 | 500..=599 => Err(Verdict::Retry(ImdsError::Status {
                url: url.into(),
                status,
            })),
            _ => Err(Verdict::Fail(ImdsError::Status {
                url: url.into(),
                status,
            })),
        }
    }

    /// Sends one request within `left`; a connect failure or a timeout before the response
    /// moves the client to the next endpoint.
    async fn send(
        &self,
        endpoint: usize,
        request: reqwest::RequestBuilder,
        url: &Url,
        left: Duration,
    ) -> Result<reqwest::Response, Verdict<ImdsError>> {
        match tokio::time::timeout(left, request.send()).await {
            Err(_) => {
                self.next_endpoint(endpoint);
                Err(Verdict::Retry(ImdsError::Timeout {
                    url: url.to_string(),
                    after: left,
                }))
            }
            Ok(Err(source)) if source.is_connect() || source.is_timeout() => {
                self.next_endpoint(endpoint);
                Err(Verdict::Retry(ImdsError::Connect {
                    url: url.to_string(),
                    source: source.without_url(),
                }))
            }
            Ok(Err(source)) => Err(Verdict::Retry(ImdsError::Transport {
                url: url.to_string(),
                source: source.without_url(),
            })),
            Ok(Ok(response)) => Ok(response),
        }
    }

    async fn read_body(
        &self,
        response: &mut reqwest::Response,
        url: &Url,
        left: Duration,
        limit: usize,
    ) -> Result<Vec<u8>, Verdict<ImdsError>> {
        match tokio::time::timeout(left, read_capped(response, limit)).await {
            Err(_) => Err(Verdict::Retry(ImdsError::Timeout {
                url: url.to_string(),
                after: left,
            })),
            Ok(Err(BodyError::TooLarge)) => Err(Verdict::Fail(ImdsError::TooLarge {
                url: url.to_string(),
                limit,
            })),
            Ok(Err(BodyError::Transport(source))) => Err(Verdict::Retry(ImdsError::Transport {
                url: url.to_string(),
                source: source.without_url(),
            })),
            Ok(Ok(body)) => Ok(body),
        }
    }

    /// The cached token for `endpoint`, or a new one.
    async fn token(
        &self,
        endpoint: usize,
        timeout: Duration,
    ) -> Result<Secret, Verdict<ImdsError>> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref() {
            if token.endpoint == endpoint && Instant::now() < token.refresh_at {
                return Ok(token.value.clone());
            }
        }
        *cached = None;
        let token = self.fetch_token(endpoint, timeout).await?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// Forgets `used` after IMDS rejected it (unless another task already replaced it).
    async fn drop_token(&self, used: &Secret) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| &t.value == used) {
            log::debug!("IMDS rejected the session token; fetching a new one");
            *cached = None;
        }
    }

    async fn fetch_token(
        &self,
        endpoint: usize,
        timeout: Duration,
    ) -> Result<Token, Verdict<ImdsError>> {
        let started = Instant::now();
        let url = self.url(endpoint, TOKEN_PATH);
        let request = self
            .http
            .put(url.clone())
            .header(TOKEN_TTL_HEADER, TOKEN_TTL.as_secs().to_string());
        let mut response = self.send(endpoint, request, &url, timeout).await?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            429 | 500..=599 => {
                return Err(Verdict::Retry(ImdsError::Status {
                    url: url.into(),
                    status,
                }))
            }
            _ => {
                return Err(Verdict::Fail(ImdsError::TokenRefused {
                    url: url.into(),
                    status,
                }))
            }
        }
        let granted = response
            .headers()
            .get(TOKEN_TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(TOKEN_TTL)
            .min(TOKEN_TTL);
        let left = timeout.saturating_sub(started.elapsed());
        let body = self
            .read_body(&mut response, &url, left, MAX_TOKEN_LEN)
            .await
            .map_err(|v| match v {
                Verdict::Fail(ImdsError::TooLarge { url, .. }) => {
                    Verdict::Fail(ImdsError::InvalidToken {
                        url,
                        reason: "longer than any IMDS token",
                    })
                }
                other => other,
            })?;
        let value = String::from_utf8(body)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                Verdict::Fail(ImdsError::InvalidToken {
                    url: url.to_string(),
                    reason: "empty or not printable ASCII",
                })
            })?;
        let early = TOKEN_EARLY_REFRESH.min(granted / 2);
        Ok(Token {
            endpoint,
            value: Secret(value),
            refresh_at: started + granted - early,
        })
    }
}

fn sensitive(value: &str) -> Result<http::HeaderValue, Verdict<ImdsError>> {
    let mut value = http::HeaderValue::from_str(value).map_err(|_| {
        Verdict::Fail(ImdsError::InvalidToken {
            url: String::new(),
            reason: "not a valid header value",
        })
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn needs_refresh(credentials: &Credentials, now: SystemTime) -> bool {
    match credentials.expiration {
        Some(expiration) => expiration
            .duration_since(now)
            .map_or(true, |left| left < CREDENTIALS_REFRESH_WINDOW),
        None => true,
    }
}

/// Parses the IMDS credentials document without ever echoing a value into an error.
fn parse_credentials(path: &str, document: &str) -> Result<Credentials, ImdsError> {
    let field_error = |field: &'static str, reason: &str| ImdsError::CredentialsField {
        path: path.into(),
        field,
        reason: reason.into(),
    };
    let json: serde_json::Value =
        serde_json::from_str(document).map_err(|e| ImdsError::CredentialsField {
            path: path.into(),
            field: "(document)",
            reason: format!("not JSON (line {}, column {})", e.line(), e.column()),
        })?;
    let text = |field: &'static str| -> Result<&str, ImdsError> {
        json.get(field)
            .ok_or_else(|| field_error(field, "missing"))?
            .as_str()
            .ok_or_else(|| field_error(field, "not a string"))
    };
    let code = text("Code")?;
    if code != "Success" {
        return Err(ImdsError::CredentialsCode {
            path: path.into(),
            code: excerpt(code),
        });
    }
    let printable = |field: &'static str| -> Result<String, ImdsError> {
        let value = text(field)?;
        if value.is_empty() {
            return Err(field_error(field, "empty"));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(field_error(field, "not printable ASCII"));
        }
        Ok(value.to_string())
    };
    let access_key_id = printable("AccessKeyId")?;
    if !access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(field_error("AccessKeyId", "not alphanumeric"));
    }
    let secret_access_key = printable("SecretAccessKey")?;
    let session_token = printable("Token")?;
    let expiration = text("Expiration")?;
    let expiration =
        time::OffsetDateTime::parse(expiration, &time::format_description::well_known::Rfc3339)
            .map_err(|_| field_error("Expiration", "not an RFC 3339 timestamp"))?;
    Ok(Credentials {
        access_key_id,
        secret_access_key,
        session_token: Some(session_token),
        expiration: Some(expiration.into()),
    })
}

/// Values quoted in errors are cut short: a hostile server should not fill the logs.
fn excerpt(value: &str) -> String {
    value.chars().take(64).collect()
}

fn check_path(path: &str) -> Result<(), ImdsError> {
    let invalid = |reason| {
        Err(ImdsError::InvalidPath {
            path: excerpt(path),
            reason,
        })
    };
    if path.is_empty() {
        return invalid("empty");
    }
    if path.starts_with('/') {
        return invalid("must be relative to /latest/");
    }
    if path.split('/').any(|s| s == ".." || s == ".") {
        return invalid("contains a . or .. segment");
    }
    if !path
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%' | b'\\'))
    {
        return invalid("contains whitespace, control characters, ?, #, % or \\");
    }
    Ok(())
}

/// `prefix-` then lowercase hex, as every EC2 resource ID.
fn check_id(value: &str, prefix: &str) -> Result<(), &'static str> {
    value
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .filter(|hex| {
            !hex.is_empty()
                && hex.len() <= 32
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .map(|_| ())
        .ok_or("not an EC2 resource ID of the expected kind")
}

/// Regions and zones: `us-east-1`, `us-east-1a`, `us-west-2-lax-1a`.
fn check_region(value: &str) -> Result<(), &'static str> {
    let ok = value.len() <= 64
        && value.contains('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("not an AWS region or zone name")
    }
}

fn check_hostname(value: &str) -> Result<(), &'static str> {
    let ok = value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err("not a DNS host name")
    }
}

fn check_mac(value: &str) -> Result<(), &'static str> {
    let parts: Vec<&str> = value.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err("not a MAC address")
    }
}

/// The characters EC2 allows in tag keys when tags are exposed in instance metadata.
fn check_tag_key(key: &str) -> Result<(), &'static str> {
    let ok = key.len() <= 128
        && !matches!(key, "." | ".." | "_")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-=.,_:@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("not a tag key allowed in instance metadata")
    }
}

/// IAM role names: 1 to 64 of `[A-Za-z0-9+=,.@_-]`.
fn check_role_name(name: &str) -> Result<(), &'static str> {
    let ok = name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("not an IAM role name")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators_accept_real_values_and_refuse_garbage() {
        assert!(check_id("i-0123456789abcdef0", "i").is_ok());
        assert!(check_id("i-XYZ", "i").is_err());
        assert!(check_id("sg-0abc", "i").is_err());
        assert!(check_id("i-", "i").is_err());
        assert!(check_region("us-east-1").is_ok());
        assert!(check_region("us-west-2-lax-1a").is_ok());
        assert!(check_region("<html>").is_err());
        assert!(check_hostname("ip-10-0-0-12.ec2.internal").is_ok());
        assert!(check_hostname("bad host").is_err());
        assert!(check_hostname("a..b").is_err());
        assert!(check_mac("0e:49:61:0f:c3:11").is_ok());
        assert!(check_mac("0e:49:61:0f:c3").is_err());
        assert!(check_tag_key("berth:cluster").is_ok());
        assert!(check_tag_key("has space").is_err());
        assert!(check_tag_key("a/b").is_err());
        assert!(check_role_name("berth-node").is_ok());
        assert!(check_role_name("../x").is_err());
        assert!(check_path("meta-data/instance-id").is_ok());
        assert!(check_path("/meta-data").is_err());
        assert!(check_path("meta-data/../../x").is_err());
        assert!(check_path("meta-data?x=1").is_err());
    }

    #[test]
    fn credentials_errors_never_echo_values() {
        let doc = r#"{"Code":"Success","AccessKeyId":"AKIA1","SecretAccessKey":"s3cr3t value",
                     "Token":"tok","Expiration":"2030-01-01T00:00:00Z"}"#;
        let err = parse_credentials("p", doc).unwrap_err().to_string();
        assert!(err.contains("SecretAccessKey"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");

        let doc = r#"{"Code":"Success","AccessKeyId":"AKIA1","SecretAccessKey":"s3cr3t",
                     "Token":"tok","Expiration":"s3cr3t-tomorrow"}"#;
        let err = parse_credentials("p", doc).unwrap_err().to_string();
        assert!(
            err.contains("Expiration") && !err.contains("s3cr3t"),
            "{err}"
        );

        let err = parse_credentials("p", "{\"Code\": \"s3cr3t")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn refresh_window() {
        let now = SystemTime::now();
        let creds = |left: u64| Credentials {
            access_key_id: "AKIA".into(),
            secret_access_key: "x".into(),
            session_token: None,
            expiration: Some(now + Duration::from_secs(left)),
        };
        assert!(!needs_refresh(&creds(3600), now));
        assert!(needs_refresh(&creds(299), now));
        let expired = Credentials {
            expiration: Some(now - Duration::from_secs(1)),
            ..creds(0)
        };
        assert!(needs_refresh(&expired, now));
    }
}
