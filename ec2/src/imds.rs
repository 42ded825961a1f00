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
//! timeouts are retried with backoff under the operation's deadline; 404 means "absent" (`Ok(None)`); 401
//! drops the token and retries with a new one; other statuses are errors naming the URL and
//! status. Values are validated enough that garbage is an error naming the IMDS path. Requests
//! go through the one [`Transport`]: no redirect is followed (IMDS never redirects, and a
//! redirect would carry the session token elsewhere).
//!
//! A deadline bounds an operation, not a request: [`ImdsClient::identity`] makes about ten
//! requests, and all of them together get the policy's 60 s (see [`Operation`]). The per-try
//! timeout (2 s at boot) doubles for the rest of the operation each time a try uses all of it.
//!
//! Bounds (each a constant below, with its reason): a body [`MAX_BODY`], a token
//! [`MAX_TOKEN_LEN`], the tag listing [`TAG_LISTING_MAX_BYTES`], a tag value
//! [`TAG_VALUE_MAX_BYTES`]; only the tags berth reads are fetched, whatever the listing holds.
//!
//! Tokens, secret keys and session tokens never appear in an error, a log line or a `Debug`,
//! and are held by [`crate::redact`] so that no remote text can echo them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use crate::model::{Credentials, Identity};
use crate::redact::{self, RemoteText};
use crate::retry::{self, Attempt, GaveUp, Operation, RetryPolicy, Stop, Verdict};
use crate::transport::{classify, Class, Failure, Transport, TransportConfig};

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
pub const MAX_BODY: usize = 1 << 20;
/// IMDS tokens are about 56 characters; anything far longer is not a token.
pub const MAX_TOKEN_LEN: usize = 1024;
/// The tag listing: EC2 allows 50 tags per instance with keys of at most 128 characters, about
/// 6.5 KB listed; ten times that. A longer listing is not read: berth then asks for the tags
/// it needs by name.
pub const TAG_LISTING_MAX_BYTES: usize = 64 * 1024;
/// A tag value: at most 256 characters (EC2's rule), so at most 1 KiB of UTF-8.
pub const TAG_VALUE_MAX_BYTES: usize = 1024;
/// What to run when the token PUT goes unanswered (the hop limit).
const HOP_LIMIT_FIX: &str = "aws ec2 modify-instance-metadata-options --instance-id <instance-id> --http-put-response-hop-limit 2";

/// Why an IMDS read failed. Carries the URL or IMDS path and the status, never a token or a
/// credential value; text that came from IMDS is a [`RemoteText`].
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
    #[error("IMDS request to {url}: {failure}")]
    Timeout { url: String, failure: Failure },
    #[error(
        "IMDS {url} answered HTTP {status}, a redirect: IMDS never redirects, so berth follows \
         none and its session token went nowhere else; check what answers at the IMDS address"
    )]
    Redirect { url: String, status: u16 },
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
    #[error(
        "IMDSv2 session token request (PUT {url}) was never answered ({attempts} attempt(s) in \
         {waited:?}), while IMDS accepted the connection: the instance's PUT response hop limit \
         is too low for where berth runs (a container adds a hop, and the default limit is 1); \
         raise it with `{HOP_LIMIT_FIX}`"
    )]
    TokenUnanswered {
        url: String,
        attempts: u32,
        waited: Duration,
    },
    #[error("IMDSv2 session token from {url} is unusable: {reason}")]
    InvalidToken { url: String, reason: &'static str },
    #[error("IMDS {url} sent a body larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("IMDS {path}: not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("IMDS {path}: required item missing (HTTP 404)")]
    Missing { path: String },
    #[error("IMDS {path}: invalid value {value:?}: {reason}; {fix}")]
    Invalid {
        path: String,
        value: RemoteText,
        reason: &'static str,
        fix: &'static str,
    },
    #[error(
        "instance {instance_id} is on an IPv6-only subnet (IMDS has no meta-data/local-ipv4 but \
         lists IPv6 addresses): berth's profiles address nodes by private IPv4; launch the \
         instance in a dual-stack or IPv4 subnet"
    )]
    Ipv6Only { instance_id: String },
    #[error(
        "IMDS tag {key:?}: value longer than {limit} bytes (EC2 allows 256 characters); \
         shorten the tag"
    )]
    TagValueTooLarge { key: String, limit: usize },
    #[error("IMDS {path}: credentials document field {field}: {reason}")]
    CredentialsField {
        path: String,
        field: &'static str,
        reason: String,
    },
    #[error("IMDS {path}: credentials not available: Code is {code:?}, not \"Success\"")]
    CredentialsCode { path: String, code: RemoteText },
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
        match (gave_up.stop, gave_up.last) {
            // A permanent error on the first try is best reported as itself.
            (Stop::NotRetryable, last) if gave_up.attempts == 1 => last,
            // The diagnosis is the hop limit, whatever the path was.
            (_, ImdsError::TokenUnanswered { url, .. }) => ImdsError::TokenUnanswered {
                url,
                attempts: gave_up.attempts,
                waited: gave_up.elapsed,
            },
            (stop, last) => ImdsError::GaveUp {
                what,
                attempts: gave_up.attempts,
                elapsed: gave_up.elapsed,
                stop,
                last: Box::new(last),
            },
        }
    }

    /// True when IMDS answered, but with a value berth needs and cannot use: bad input of the
    /// instance's configuration (the agent's exit 3), not a failure of IMDS. The message names
    /// the item and the fix.
    pub fn is_invalid_metadata(&self) -> bool {
        match self {
            ImdsError::Invalid { .. }
            | ImdsError::Ipv6Only { .. }
            | ImdsError::TagValueTooLarge { .. }
            | ImdsError::NotUtf8 { .. } => true,
            ImdsError::GaveUp { last, .. } => last.is_invalid_metadata(),
            _ => false,
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
    transport: Transport,
    /// Index into `endpoints` of the endpoint to use next: the one that last answered.
    current: AtomicUsize,
    token: Mutex<Option<Token>>,
    credentials: Mutex<Option<Credentials>>,
    /// Set once a whole deadline passed with no role credentials in IMDS: later calls look
    /// once instead of waiting again (an instance without a role stays without one).
    role_wait_done: AtomicBool,
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

/// The tags berth reads: its role, its cluster and its name.
pub const BERTH_TAG_KEYS: [&str; 3] = ["role", "berth:cluster", "Name"];

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
        ImdsClient {
            endpoints,
            policy,
            transport: Transport::new(TransportConfig::imds()),
            current: AtomicUsize::new(0),
            token: Mutex::new(None),
            credentials: Mutex::new(None),
            role_wait_done: AtomicBool::new(false),
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

    /// A new operation under this client's policy, for [`get_within`](Self::get_within).
    pub fn operation(&self) -> Operation {
        Operation::new(&self.policy)
    }

    /// Reads `path` (relative to `/latest/`, e.g. `meta-data/instance-id`) as text.
    /// `Ok(None)` when IMDS answers 404.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        self.get_within(path, &self.operation()).await
    }

    /// As [`get`](Self::get), as one request of the operation `op` (sharing its deadline).
    pub(crate) async fn get_within(
        &self,
        path: &str,
        op: &Operation,
    ) -> Result<Option<String>, ImdsError> {
        match self.read(path, MAX_BODY, op).await? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| ImdsError::NotUtf8 { path: path.into() }),
        }
    }

    /// Reads `path` as bytes. `Ok(None)` when IMDS answers 404.
    pub(crate) async fn get_bytes(&self, path: &str) -> Result<Option<Vec<u8>>, ImdsError> {
        self.read(path, MAX_BODY, &self.operation()).await
    }

    async fn read(
        &self,
        path: &str,
        limit: usize,
        op: &Operation,
    ) -> Result<Option<Vec<u8>>, ImdsError> {
        check_path(path)?;
        if self.endpoints.is_empty() {
            return Err(ImdsError::NoEndpoints);
        }
        retry::run_within(&self.policy, op, &format!("IMDS GET {path}"), |attempt| {
            self.attempt_get(path, limit, attempt)
        })
        .await
        .map_err(|gave_up| ImdsError::from_gave_up(path.to_string(), gave_up))
    }

    /// This instance's identity: one operation, so the policy's deadline bounds all of its
    /// requests together. Every item is required; a missing one is an error naming its IMDS
    /// path, an unusable one an error naming the path and the fix.
    pub async fn identity(&self) -> Result<Identity, ImdsError> {
        let op = self.operation();
        let instance_id = self
            .required("meta-data/instance-id", |v| check_id(v, "i"), &op)
            .await?;
        let region = self
            .required("meta-data/placement/region", check_region, &op)
            .await?;
        let az_path = "meta-data/placement/availability-zone";
        let availability_zone = self.required(az_path, check_region, &op).await?;
        if !availability_zone.starts_with(&region) {
            return Err(ImdsError::Invalid {
                path: az_path.into(),
                value: RemoteText::new(&availability_zone),
                reason: "not a zone of the instance's region",
                fix: "IMDS and the region disagree; report it to AWS support",
            });
        }
        let mac = self.required("meta-data/mac", check_mac, &op).await?;
        let mac = mac.to_ascii_lowercase();
        let interface = format!("meta-data/network/interfaces/macs/{mac}");
        let ipv4_path = "meta-data/local-ipv4";
        let private_ipv4 = match self.get_within(ipv4_path, &op).await? {
            Some(v) if !v.trim().is_empty() => {
                let v = v.trim();
                v.parse::<Ipv4Addr>().map_err(|_| ImdsError::Invalid {
                    path: ipv4_path.into(),
                    value: RemoteText::new(v),
                    reason: "not an IPv4 address",
                    fix: "berth needs the instance's private IPv4 address",
                })?;
                v.to_string()
            }
            _ => {
                // No IPv4 address: an IPv6-only subnet if the interface has IPv6 addresses.
                let ipv6s = self.get_within(&format!("{interface}/ipv6s"), &op).await?;
                if ipv6s.is_some_and(|v| v.lines().any(|l| !l.trim().is_empty())) {
                    return Err(ImdsError::Ipv6Only { instance_id });
                }
                return Err(ImdsError::Missing {
                    path: ipv4_path.into(),
                });
            }
        };
        let private_dns_name = self
            .required("meta-data/local-hostname", check_hostname, &op)
            .await?;
        // With several domain names in the VPC's DHCP options, IMDS lists the host name
        // followed by each further domain, space-separated: the first is the host's.
        let private_dns_name = first_name(&private_dns_name).to_string();
        let vpc_id = self
            .required(&format!("{interface}/vpc-id"), |v| check_id(v, "vpc"), &op)
            .await?;
        let subnet_id = self
            .required(
                &format!("{interface}/subnet-id"),
                |v| check_id(v, "subnet"),
                &op,
            )
            .await?;
        let groups = self
            .required(
                &format!("{interface}/security-group-ids"),
                |v| {
                    v.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .try_for_each(|g| check_id(g, "sg"))
                },
                &op,
            )
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

    /// The instance's tags named in `wanted` (berth reads [`BERTH_TAG_KEYS`]), from
    /// `meta-data/tags/instance/`. `Ok(None)` when the listing is 404: access to tags in
    /// instance metadata is disabled, and the caller should use DescribeTags.
    ///
    /// Only the wanted tags are fetched, one request each, whatever else the listing holds:
    /// any other key or value EC2 allows never fails the call. A listing longer than
    /// [`TAG_LISTING_MAX_BYTES`] is not read; the wanted tags are then asked for by name.
    pub async fn tags(
        &self,
        wanted: &[&str],
    ) -> Result<Option<BTreeMap<String, String>>, ImdsError> {
        let op = self.operation();
        let listing_path = "meta-data/tags/instance/";
        let listed: Option<Vec<u8>> =
            match self.read(listing_path, TAG_LISTING_MAX_BYTES, &op).await {
                Ok(None) => return Ok(None),
                Ok(Some(listing)) => Some(listing),
                Err(ImdsError::TooLarge { .. }) => {
                    log::warn!(
                        "IMDS {listing_path}: listing longer than {TAG_LISTING_MAX_BYTES} bytes; \
                     reading berth's tags by name"
                    );
                    None
                }
                Err(e) => return Err(e),
            };
        let mut tags = BTreeMap::new();
        for key in wanted {
            let is_listed = listed.as_ref().map_or(true, |listing| {
                listing
                    .split(|b| *b == b'\n')
                    .any(|line| line.trim_ascii() == key.as_bytes())
            });
            if !is_listed || check_tag_key(key).is_err() {
                continue;
            }
            let path = format!("{listing_path}{key}");
            // A tag deleted between the listing and this read is simply gone.
            match self.read(&path, TAG_VALUE_MAX_BYTES, &op).await {
                Ok(Some(value)) => {
                    let value = String::from_utf8(value)
                        .map_err(|_| ImdsError::NotUtf8 { path: path.clone() })?;
                    tags.insert(key.to_string(), value);
                }
                Ok(None) => {}
                Err(ImdsError::TooLarge { .. }) => {
                    return Err(ImdsError::TagValueTooLarge {
                        key: key.to_string(),
                        limit: TAG_VALUE_MAX_BYTES,
                    })
                }
                Err(e) => return Err(e),
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
    ///
    /// IMDS publishes an instance profile's credentials some seconds after boot; until then
    /// `iam/security-credentials/` answers 404. So the first call waits for them up to the
    /// policy's deadline before it says there is no role; later calls look once.
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
        let op = self.operation();
        let listing_path = "meta-data/iam/security-credentials/";
        let mut waits = 0u32;
        let role = loop {
            let listing = self.get_within(listing_path, &op).await?;
            if let Some(role) = listing
                .as_deref()
                .and_then(|l| l.lines().map(str::trim).find(|l| !l.is_empty()))
            {
                break role.to_string();
            }
            waits += 1;
            let delay = self
                .policy
                .backoff_cap(waits)
                .max(Duration::from_millis(100));
            if self.role_wait_done.load(Ordering::Acquire) || delay >= op.remaining() {
                self.role_wait_done.store(true, Ordering::Release);
                return Ok(None);
            }
            if waits == 1 {
                log::info!(
                    "IMDS has no role credentials yet ({listing_path} is empty or 404); \
                     waiting up to {:?} for the instance profile's",
                    op.remaining()
                );
            }
            tokio::time::sleep(delay).await;
        };
        if waits > 0 {
            log::info!("role credentials appeared in IMDS after {:?}", op.elapsed());
        }
        check_role_name(&role).map_err(|reason| ImdsError::Invalid {
            path: listing_path.into(),
            value: RemoteText::new(&role),
            reason,
            fix: "IMDS lists the instance profile's role name here",
        })?;
        let path = format!("{listing_path}{role}");
        let document = self
            .get_within(&path, &op)
            .await?
            .ok_or_else(|| ImdsError::Missing { path: path.clone() })?;
        let credentials = parse_credentials(&path, &document)?;
        redact::hold(&credentials.secret_access_key);
        if let Some(token) = &credentials.session_token {
            redact::hold(token);
        }
        // No part of the credentials is logged, the access key id included.
        log::debug!(
            "role credentials for {role} fetched (expiring {:?})",
            credentials.expiration
        );
        Ok(Some(credentials))
    }

    async fn required(
        &self,
        path: &str,
        check: impl Fn(&str) -> Result<(), &'static str>,
        op: &Operation,
    ) -> Result<String, ImdsError> {
        let value = self
            .get_within(path, op)
            .await?
            .ok_or_else(|| ImdsError::Missing { path: path.into() })?;
        let value = value.trim();
        if value.is_empty() {
            return Err(ImdsError::Missing { path: path.into() });
        }
        check(value).map_err(|reason| ImdsError::Invalid {
            path: path.into(),
            value: RemoteText::new(value),
            reason,
            fix: fix_for(path),
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
        limit: usize,
        attempt: Attempt,
    ) -> Result<Option<Vec<u8>>, Verdict<ImdsError>> {
        let started = Instant::now();
        let endpoint = self.current.load(Ordering::Acquire);
        let token = self.token(endpoint, attempt.timeout).await?;
        let left = attempt.timeout.saturating_sub(started.elapsed());
        let url = self.url(endpoint, &format!("latest/{path}"));
        let request = self
            .transport
            .request(reqwest::Method::GET, url.clone())
            .header(TOKEN_HEADER, sensitive(&token.0)?);
        let reply = self.send(endpoint, request, &url, left, limit).await?;
        let status = reply.status;
        match classify(status) {
            Class::Success => Ok(Some(reply.body)),
            Class::NotFound => Ok(None),
            _ if status == 401 => {
                self.drop_token(&token).await;
                Err(Verdict::Retry(ImdsError::Unauthorized { url: url.into() }))
            }
            Class::Transient => Err(Verdict::Retry(ImdsError::Status {
                url: url.into(),
                status,
            })),
            _ => Err(Verdict::Fail(ImdsError::Status {
                url: url.into(),
                status,
            })),
        }
    }

    /// Sends one request within `left`; a failure to connect moves the client to the next
    /// endpoint. An endpoint that accepted the connection is kept, answer or not.
    async fn send(
        &self,
        endpoint: usize,
        request: reqwest::RequestBuilder,
        url: &Url,
        left: Duration,
        limit: usize,
    ) -> Result<crate::transport::Reply, Verdict<ImdsError>> {
        let request = request.build().map_err(|source| {
            Verdict::Fail(ImdsError::Transport {
                url: url.to_string(),
                source: source.without_url(),
            })
        })?;
        let failure = match self.transport.send(request, left, limit).await {
            Ok(reply) => return Ok(reply),
            Err(failure) => failure,
        };
        if failure.is_unreachable() {
            self.next_endpoint(endpoint);
        }
        let url = url.to_string();
        Err(match failure {
            Failure::Connect(source) => Verdict::Retry(ImdsError::Connect { url, source }),
            Failure::Transport(source) => Verdict::Retry(ImdsError::Transport { url, source }),
            Failure::Redirect { status } => Verdict::Fail(ImdsError::Redirect { url, status }),
            Failure::TooLarge { limit, .. } => Verdict::Fail(ImdsError::TooLarge { url, limit }),
            failure @ Failure::Timeout { .. } => {
                Verdict::Retry(ImdsError::Timeout { url, failure })
            }
        })
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
            .transport
            .request(reqwest::Method::PUT, url.clone())
            .header(TOKEN_TTL_HEADER, TOKEN_TTL.as_secs().to_string());
        let reply = match self
            .send(endpoint, request, &url, timeout, MAX_TOKEN_LEN)
            .await
        {
            Ok(reply) => reply,
            Err(Verdict::Retry(ImdsError::Timeout {
                failure:
                    Failure::Timeout {
                        connected: true,
                        head_received: false,
                        ..
                    },
                ..
            })) => {
                // Connected, and no answer: what a PUT response dropped by the hop limit looks
                // like from here.
                return Err(Verdict::Retry(ImdsError::TokenUnanswered {
                    url: url.into(),
                    attempts: 1,
                    waited: started.elapsed(),
                }));
            }
            Err(Verdict::Fail(ImdsError::TooLarge { url, .. })) => {
                return Err(Verdict::Fail(ImdsError::InvalidToken {
                    url,
                    reason: "longer than any IMDS token",
                }))
            }
            Err(other) => return Err(other),
        };
        let status = reply.status;
        match classify(status) {
            Class::Success => {}
            Class::Transient => {
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
        let granted = reply
            .header(TOKEN_TTL_HEADER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(TOKEN_TTL)
            .min(TOKEN_TTL);
        let value = String::from_utf8(reply.body)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                Verdict::Fail(ImdsError::InvalidToken {
                    url: url.to_string(),
                    reason: "empty or not printable ASCII",
                })
            })?;
        redact::hold(&value);
        let early = TOKEN_EARLY_REFRESH.min(granted / 2);
        Ok(Token {
            endpoint,
            value: Secret(value),
            refresh_at: started + granted - early,
        })
    }
}

/// What to do about an unusable identity item.
fn fix_for(path: &str) -> &'static str {
    if path.ends_with("local-hostname") {
        "the VPC's DHCP options must give instances a DNS host name (set `domain-name` to a \
         valid domain, e.g. ec2.internal, and enable DNS hostnames on the VPC)"
    } else {
        "berth needs this item as AWS documents it; check what answers at the IMDS address"
    }
}

/// The host name of a `local-hostname` value: its first space-separated name.
fn first_name(value: &str) -> &str {
    value.split_ascii_whitespace().next().unwrap_or_default()
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
            code: RemoteText::new(code),
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

fn check_path(path: &str) -> Result<(), ImdsError> {
    let invalid = |reason| {
        Err(ImdsError::InvalidPath {
            path: path.chars().take(64).collect(),
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

/// The first name of the value (see [`first_name`]) must be a DNS host name.
fn check_hostname(value: &str) -> Result<(), &'static str> {
    let value = first_name(value);
    let ok = !value.is_empty()
        && value.len() <= 253
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
        assert!(check_hostname("bad_host").is_err());
        assert!(check_hostname("ip-172-30-0-43.ec2.internal corp.example.com example.net").is_ok());
        assert_eq!(
            first_name("ip-1.ec2.internal corp.example.com"),
            "ip-1.ec2.internal"
        );
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
