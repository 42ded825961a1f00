//! A client for the EC2 Query API (`Version=2016-11-15`): form-encoded POST bodies signed with
//! SigV4, XML responses.
//!
//! Each attempt is signed afresh (a new `X-Amz-Date`), so a request retried after a long
//! backoff never arrives expired. Throttling (`RequestLimitExceeded` and friends), 5xx and
//! network failures are retried under the client's [`RetryPolicy`]; errors a retry cannot fix
//! (`AuthFailure`, `UnauthorizedOperation`, `InvalidParameterValue`, ...) are returned at once.
//! When EC2 says the credentials expired, [`Ec2Error::is_expired_credentials`] tells the caller
//! to refresh them and try once more: the client never fetches credentials itself.
//!
//! Clock skew: EC2 refuses a signature dated more than 15 minutes from its own clock
//! (`RequestExpired`). When it does, and its `Date` header shows that the node's clock is off
//! by more than [`SKEW_THRESHOLD`], the client signs from then on with EC2's time (the offset
//! it measured) and tries again at once, as the AWS SDKs do, and logs the offset.
//!
//! Requests go through the one [`Transport`]: no redirect is followed, so neither the session
//! token nor a signed request ever reaches the host a `Location` names. Text from an error
//! document is a [`RemoteText`]: scrubbed of every secret the process holds, and bounded.
//!
//! Bounds, each checked before the work it would cost (the constants below say why):
//! [`DESCRIBE_RESPONSE_MAX_BYTES`] per response, [`MAX_RESULTS`] instances per page,
//! [`MAX_INSTANCES_PER_CALL`] instances per paged call, [`MAX_PAGES`] pages per paged call;
//! an error document is read up to [`crate::transport::ERROR_BODY_MAX_BYTES`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use url::Url;

use crate::imds::BERTH_TAG_KEYS;
use crate::model::{Credentials, Filter, Instance, TagDescription};
use crate::redact::{self, RemoteText};
use crate::retry::{self, Attempt, GaveUp, Operation, RetryPolicy, Stop, Verdict};
use crate::sign::{self, SignError};
use crate::skew::ClockSkew;
use crate::transport::{classify, Class, Failure, Transport, TransportConfig};
use crate::xml::{self, InstanceBounds, XmlError};

/// The Query API version berth speaks; its response shapes are the ones in [`crate::xml`].
pub const EC2_API_VERSION: &str = "2016-11-15";
/// The largest page EC2 serves: fewest round trips, least chance of being throttled. EC2 never
/// returns more than asked, so a page with more instances is refused while it is parsed.
pub const MAX_RESULTS: usize = 1000;
/// Instances one paged DescribeInstances may return in all. berth's polling rule is sized for
/// clusters up to 5000 nodes (README, "Polling rule"); 6000 leaves a fifth more, and keeps the
/// agent within 20 MiB RSS with every node's membership and files in memory (about 1.6 MiB
/// per 1000 instances, measured with the release binary).
pub const MAX_INSTANCES_PER_CALL: usize = 6_000;
/// Pages one paged call may take. EC2 may answer short or empty pages while filtering, so this
/// is looser than `MAX_INSTANCES_PER_CALL / MAX_RESULTS`; together with the operation's
/// deadline it stops a server that pages forever.
pub const MAX_PAGES: u32 = 200;
/// One response. A real page of 1000 instances is 3 to 6 MB of XML (about 2.5 KB to 6 KB an
/// instance, with its network interface and tags); 8 MiB keeps headroom while bounding what a
/// broken server makes the agent buffer.
pub const DESCRIBE_RESPONSE_MAX_BYTES: usize = 8 << 20;
pub use crate::skew::SKEW_THRESHOLD;
/// Codes EC2 answers to a request whose signature time is too far from its clock.
const SKEW_CODES: &[&str] = &[
    "RequestExpired",
    "RequestTimeTooSkewed",
    "RequestInTheFuture",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
];
const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// Error codes EC2 uses for "slow down" or "try again"; all are retried.
const RETRYABLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "Unavailable",
];
/// The subset of [`RETRYABLE_CODES`] that means "slow down".
const THROTTLING_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
];
/// Codes that mean the credentials (or the request's timestamp) expired.
const EXPIRED_CODES: &[&str] = &[
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "TokenRefreshRequired",
];
/// Codes that mean expired credentials when their message says so.
const MAYBE_EXPIRED_CODES: &[&str] = &[
    "InvalidClientTokenId",
    "AuthFailure",
    "UnrecognizedClientException",
    "InvalidToken",
];

/// Why an EC2 call failed: the action, and, when EC2 answered, the HTTP status, the AWS error
/// code and message. Never carries a secret key or a session token: what EC2 wrote is a
/// [`RemoteText`].
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("EC2 {action} failed: {code} (HTTP {status}): {message}{}", request_id_suffix(.request_id))]
    Api {
        action: String,
        status: u16,
        code: RemoteText,
        message: RemoteText,
        request_id: Option<RemoteText>,
    },
    #[error("EC2 {action}: {url} answered HTTP {status} without an EC2 error document")]
    Http {
        action: String,
        url: String,
        status: u16,
    },
    #[error(
        "EC2 {action}: {url} answered HTTP {status}, a redirect: EC2 never redirects, so berth \
         follows none and sent neither its session token nor a signed request to another host; \
         check the EC2 endpoint (`ec2_endpoint`, `--ec2-endpoint`) and any proxy"
    )]
    Redirect {
        action: String,
        url: String,
        status: u16,
    },
    #[error(
        "EC2 {action}: {what} exceeds berth's bound of {limit} ({why}); the answer was not used"
    )]
    Bound {
        action: String,
        what: &'static str,
        limit: usize,
        why: &'static str,
    },
    #[error("EC2 {action}: cannot connect to {url}: {source}")]
    Connect {
        action: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("EC2 {action}: request to {url} failed: {source}")]
    Transport {
        action: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("EC2 {action}: request to {url}: {failure}")]
    Timeout {
        action: String,
        url: String,
        failure: Failure,
    },
    #[error("EC2 {action}: response from {url} larger than {limit} bytes")]
    TooLarge {
        action: String,
        url: String,
        limit: usize,
    },
    #[error("EC2 {action}: response is not valid UTF-8")]
    NotUtf8 { action: String },
    #[error("EC2 {action}: {source}")]
    Sign {
        action: String,
        #[source]
        source: SignError,
    },
    #[error("EC2 {action}: cannot parse the response: {source}")]
    Xml {
        action: String,
        #[source]
        source: XmlError,
    },
    #[error("EC2 {action}: invalid request parameter {name}: {reason}")]
    InvalidParameter {
        action: String,
        name: String,
        reason: &'static str,
    },
    #[error("EC2 {action}: stopped paging after {pages} page(s): {reason}")]
    Paging {
        action: String,
        pages: u32,
        reason: &'static str,
    },
    #[error("EC2 {action}: gave up after {attempts} attempt(s) in {elapsed:?} ({stop}); last error: {last}")]
    GaveUp {
        action: String,
        attempts: u32,
        elapsed: Duration,
        stop: Stop,
        #[source]
        last: Box<Ec2Error>,
    },
}

fn request_id_suffix(request_id: &Option<RemoteText>) -> String {
    request_id
        .as_ref()
        .map(|id| format!(" (request id {id})"))
        .unwrap_or_default()
}

impl Ec2Error {
    /// The EC2 action that failed.
    pub fn action(&self) -> &str {
        match self {
            Ec2Error::Api { action, .. }
            | Ec2Error::Http { action, .. }
            | Ec2Error::Redirect { action, .. }
            | Ec2Error::Bound { action, .. }
            | Ec2Error::Connect { action, .. }
            | Ec2Error::Transport { action, .. }
            | Ec2Error::Timeout { action, .. }
            | Ec2Error::TooLarge { action, .. }
            | Ec2Error::NotUtf8 { action }
            | Ec2Error::Sign { action, .. }
            | Ec2Error::Xml { action, .. }
            | Ec2Error::InvalidParameter { action, .. }
            | Ec2Error::Paging { action, .. }
            | Ec2Error::GaveUp { action, .. } => action,
        }
    }

    /// The HTTP status of the (last) response, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Ec2Error::Api { status, .. }
            | Ec2Error::Http { status, .. }
            | Ec2Error::Redirect { status, .. } => Some(*status),
            Ec2Error::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The AWS error code (`AuthFailure`, `RequestLimitExceeded`, ...), when EC2 sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Ec2Error::Api { code, .. } => Some(code.as_str()),
            Ec2Error::GaveUp { last, .. } => last.code(),
            _ => None,
        }
    }

    /// The AWS error message, when EC2 sent one.
    pub fn message(&self) -> Option<&str> {
        match self {
            Ec2Error::Api { message, .. } => Some(message.as_str()),
            Ec2Error::GaveUp { last, .. } => last.message(),
            _ => None,
        }
    }

    /// True when EC2 rejected the credentials as expired: refresh them and retry once.
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

    /// True when EC2 throttled the call (after retries, if this is what they ended on).
    pub fn is_throttling(&self) -> bool {
        self.code().is_some_and(|c| THROTTLING_CODES.contains(&c))
    }

    fn from_gave_up(action: &str, gave_up: GaveUp<Ec2Error>) -> Self {
        match gave_up.stop {
            Stop::NotRetryable if gave_up.attempts == 1 => gave_up.last,
            stop => Ec2Error::GaveUp {
                action: action.to_string(),
                attempts: gave_up.attempts,
                elapsed: gave_up.elapsed,
                stop,
                last: Box::new(gave_up.last),
            },
        }
    }
}

/// All items of a paged call, and how many pages (requests that succeeded) it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub pages: u32,
}

/// The EC2 Query API client for one region.
#[derive(Debug)]
pub struct Ec2Client {
    endpoint: Url,
    region: String,
    policy: RetryPolicy,
    transport: Transport,
    attempts: AtomicU64,
    /// EC2's clock minus ours, as measured when EC2 refused a request's time.
    skew: ClockSkew,
}

impl Ec2Client {
    /// A client sending to `endpoint` (production: [`Ec2Client::default_endpoint`]) and signing
    /// for `region`.
    pub fn new(endpoint: Url, region: String, policy: RetryPolicy) -> Self {
        Ec2Client {
            endpoint,
            region,
            policy,
            transport: Transport::new(TransportConfig::ec2()),
            attempts: AtomicU64::new(0),
            skew: ClockSkew::default(),
        }
    }

    /// `https://ec2.{region}.amazonaws.com/`.
    pub fn default_endpoint(region: &str) -> Url {
        Url::parse(&format!("https://ec2.{region}.amazonaws.com/"))
            .expect("a region name makes a valid host name")
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

    /// EC2's clock minus this host's, in signed milliseconds, as measured when EC2 refused a
    /// request's time; zero until then. Positive: the host's clock is behind.
    pub fn clock_skew_ms(&self) -> i64 {
        self.skew.millis()
    }

    /// Every instance matching `filters`, all pages followed.
    pub async fn describe_instances(
        &self,
        creds: &Credentials,
        filters: &[Filter],
    ) -> Result<Vec<Instance>, Ec2Error> {
        Ok(self.describe_instances_pages(creds, filters).await?.items)
    }

    /// As [`describe_instances`](Self::describe_instances), also saying how many pages it took.
    ///
    /// One operation: the policy's deadline bounds all pages together. Only the tags berth
    /// reads ([`BERTH_TAG_KEYS`]) are kept of each instance. At most [`MAX_RESULTS`] instances a
    /// page, [`MAX_INSTANCES_PER_CALL`] in all and [`MAX_PAGES`] pages, each response at most
    /// [`DESCRIBE_RESPONSE_MAX_BYTES`]: past any of them the call fails with
    /// [`Ec2Error::Bound`] or [`Ec2Error::Paging`] naming it.
    pub async fn describe_instances_pages(
        &self,
        creds: &Credentials,
        filters: &[Filter],
    ) -> Result<Paged<Instance>, Ec2Error> {
        let action = "DescribeInstances";
        let mut params = filter_params(action, filters)?;
        params.push(("MaxResults".into(), MAX_RESULTS.to_string()));
        let bounds = InstanceBounds {
            max_instances: MAX_RESULTS,
            tag_keys: Some(&BERTH_TAG_KEYS),
        };
        self.paginate(action, creds, params, |xml| {
            xml::parse_describe_instances_bounded(xml, &bounds).map(|p| (p.instances, p.next_token))
        })
        .await
    }

    /// Every tag matching `filters` (e.g. `resource-id`), all pages followed.
    pub async fn describe_tags(
        &self,
        creds: &Credentials,
        filters: &[Filter],
    ) -> Result<Vec<TagDescription>, Ec2Error> {
        Ok(self.describe_tags_pages(creds, filters).await?.items)
    }

    /// As [`describe_tags`](Self::describe_tags), also saying how many pages it took.
    pub async fn describe_tags_pages(
        &self,
        creds: &Credentials,
        filters: &[Filter],
    ) -> Result<Paged<TagDescription>, Ec2Error> {
        let action = "DescribeTags";
        let mut params = filter_params(action, filters)?;
        params.push(("MaxResults".into(), MAX_RESULTS.to_string()));
        self.paginate(action, creds, params, |xml| {
            xml::parse_describe_tags(xml).map(|p| (p.tags, p.next_token))
        })
        .await
    }

    async fn paginate<T>(
        &self,
        action: &str,
        creds: &Credentials,
        params: Vec<(String, String)>,
        parse: impl Fn(&str) -> Result<(Vec<T>, Option<String>), XmlError>,
    ) -> Result<Paged<T>, Ec2Error> {
        let op = Operation::new(&self.policy);
        let mut items = Vec::new();
        let mut seen = HashSet::new();
        let mut next: Option<String> = None;
        let mut pages = 0;
        loop {
            if pages >= MAX_PAGES {
                return Err(Ec2Error::Paging {
                    action: action.into(),
                    pages,
                    reason: "past berth's bound of 200 pages per call (MAX_PAGES)",
                });
            }
            let mut page_params = params.clone();
            if let Some(token) = &next {
                page_params.push(("NextToken".into(), token.clone()));
            }
            let body = self
                .call_within(
                    creds,
                    action,
                    &page_params,
                    &op,
                    DESCRIBE_RESPONSE_MAX_BYTES,
                )
                .await?;
            pages += 1;
            let (page, token) = parse(&body).map_err(|source| match source {
                XmlError::TooMany { limit, .. } => Ec2Error::Bound {
                    action: action.into(),
                    what: "items in one page",
                    limit,
                    why: "EC2 never returns more than the MaxResults asked",
                },
                source => Ec2Error::Xml {
                    action: action.into(),
                    source,
                },
            })?;
            drop(body);
            log::debug!("EC2 {action}: page {pages} has {} item(s)", page.len());
            if items.len() + page.len() > MAX_INSTANCES_PER_CALL {
                return Err(Ec2Error::Bound {
                    action: action.into(),
                    what: "items in all pages",
                    limit: MAX_INSTANCES_PER_CALL,
                    why: "the largest cluster berth's polling rule is sized for, and a fifth more",
                });
            }
            items.extend(page);
            match token {
                None => return Ok(Paged { items, pages }),
                Some(token) => {
                    // A token is opaque but short (EC2's are a few hundred bytes); a huge one
                    // would be sent back in every following request.
                    if token.len() > 4096 {
                        return Err(Ec2Error::Bound {
                            action: action.into(),
                            what: "nextToken bytes",
                            limit: 4096,
                            why: "EC2's tokens are a few hundred bytes",
                        });
                    }
                    if !seen.insert(token.clone()) {
                        return Err(Ec2Error::Paging {
                            action: action.into(),
                            pages,
                            reason: "EC2 returned a nextToken it had returned before",
                        });
                    }
                    next = Some(token);
                }
            }
        }
    }

    /// One signed Query API call; returns the XML body of the successful response.
    /// `params` come after `Action` and `Version`, in the order given.
    pub async fn call(
        &self,
        creds: &Credentials,
        action: &str,
        params: &[(String, String)],
    ) -> Result<String, Ec2Error> {
        let op = Operation::new(&self.policy);
        self.call_within(creds, action, params, &op, DESCRIBE_RESPONSE_MAX_BYTES)
            .await
    }

    async fn call_within(
        &self,
        creds: &Credentials,
        action: &str,
        params: &[(String, String)],
        op: &Operation,
        limit: usize,
    ) -> Result<String, Ec2Error> {
        if action.is_empty() || !action.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Ec2Error::InvalidParameter {
                action: action.chars().take(64).collect(),
                name: "Action".into(),
                reason: "must be a non-empty alphanumeric EC2 action name",
            });
        }
        // Whatever these credentials came from, no remote text may echo them from now on.
        redact::hold(&creds.secret_access_key);
        if let Some(token) = &creds.session_token {
            redact::hold(token);
        }
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", action);
        form.append_pair("Version", EC2_API_VERSION);
        for (name, value) in params {
            form.append_pair(name, value);
        }
        let body = form.finish().into_bytes();
        retry::run_within(&self.policy, op, &format!("EC2 {action}"), |attempt| {
            self.attempt(creds, action, &body, attempt, limit)
        })
        .await
        .map_err(|gave_up| Ec2Error::from_gave_up(action, gave_up))
    }

    async fn attempt(
        &self,
        creds: &Credentials,
        action: &str,
        body: &[u8],
        attempt: Attempt,
        limit: usize,
    ) -> Result<String, Verdict<Ec2Error>> {
        let url = self.endpoint.to_string();
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.endpoint.as_str())
            .header(http::header::CONTENT_TYPE, FORM_CONTENT_TYPE)
            .body(body.to_vec())
            .map_err(|_| {
                Verdict::Fail(Ec2Error::InvalidParameter {
                    action: action.into(),
                    name: "endpoint".into(),
                    reason: "not a valid HTTP URI",
                })
            })?;
        sign::sign_request(
            &mut request,
            creds,
            &self.region,
            "ec2",
            self.skew.signing_time(),
        )
        .map_err(|source| {
            Verdict::Fail(Ec2Error::Sign {
                action: action.into(),
                source,
            })
        })?;
        let request = reqwest::Request::try_from(request).map_err(|source| {
            Verdict::Fail(Ec2Error::Transport {
                action: action.into(),
                url: url.clone(),
                source: source.without_url(),
            })
        })?;
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let sent_at = SystemTime::now();
        let started = Instant::now();
        let reply = match self.transport.send(request, attempt.timeout, limit).await {
            Ok(reply) => reply,
            Err(failure) => {
                let action = action.to_string();
                return Err(match failure {
                    Failure::Connect(source) => Verdict::Retry(Ec2Error::Connect {
                        action,
                        url,
                        source,
                    }),
                    Failure::Transport(source) => Verdict::Retry(Ec2Error::Transport {
                        action,
                        url,
                        source,
                    }),
                    Failure::Redirect { status } => Verdict::Fail(Ec2Error::Redirect {
                        action,
                        url,
                        status,
                    }),
                    Failure::TooLarge { limit, .. } => {
                        Verdict::Fail(Ec2Error::TooLarge { action, url, limit })
                    }
                    failure @ Failure::Timeout { .. } => Verdict::Retry(Ec2Error::Timeout {
                        action,
                        url,
                        failure,
                    }),
                });
            }
        };
        let status = reply.status;
        let class = classify(status);
        if class == Class::Success {
            return String::from_utf8(reply.body).map_err(|_| {
                Verdict::Fail(Ec2Error::NotUtf8 {
                    action: action.into(),
                })
            });
        }
        let transient_status = class == Class::Transient;
        let text = String::from_utf8_lossy(&reply.body);
        match xml::parse_error(&text) {
            Ok(aws) => {
                let skew_corrected = SKEW_CODES.contains(&aws.code.as_str())
                    && self
                        .skew
                        .correct("EC2", reply.date, sent_at, started.elapsed());
                let retry = skew_corrected
                    || transient_status
                    || RETRYABLE_CODES.contains(&aws.code.as_str());
                let error = Ec2Error::Api {
                    action: action.into(),
                    status,
                    code: aws.code,
                    message: aws.message,
                    request_id: aws.request_id,
                };
                if retry {
                    Err(Verdict::Retry(error))
                } else {
                    Err(Verdict::Fail(error))
                }
            }
            Err(_) => {
                let error = Ec2Error::Http {
                    action: action.into(),
                    url,
                    status,
                };
                if transient_status {
                    Err(Verdict::Retry(error))
                } else {
                    Err(Verdict::Fail(error))
                }
            }
        }
    }
}

/// `Filter.N.Name` and `Filter.N.Value.M`, numbered from 1.
fn filter_params(action: &str, filters: &[Filter]) -> Result<Vec<(String, String)>, Ec2Error> {
    let mut params = Vec::new();
    for (n, filter) in filters.iter().enumerate() {
        let n = n + 1;
        if filter.name.is_empty() {
            return Err(Ec2Error::InvalidParameter {
                action: action.into(),
                name: format!("Filter.{n}.Name"),
                reason: "empty filter name",
            });
        }
        if filter.values.is_empty() {
            return Err(Ec2Error::InvalidParameter {
                action: action.into(),
                name: format!("Filter.{n}.Value"),
                reason: "a filter needs at least one value",
            });
        }
        params.push((format!("Filter.{n}.Name"), filter.name.clone()));
        for (m, value) in filter.values.iter().enumerate() {
            params.push((format!("Filter.{n}.Value.{}", m + 1), value.clone()));
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: &str, message: &str) -> Ec2Error {
        Ec2Error::Api {
            action: "DescribeInstances".into(),
            status: 400,
            code: RemoteText::new(code),
            message: RemoteText::new(message),
            request_id: None,
        }
    }

    #[test]
    fn filters_are_numbered_from_one() {
        let params = filter_params(
            "DescribeInstances",
            &[
                Filter::new("instance.group-id", ["sg-1"]),
                Filter::new("instance-state-name", ["pending", "running"]),
            ],
        )
        .unwrap();
        let expected: Vec<(String, String)> = [
            ("Filter.1.Name", "instance.group-id"),
            ("Filter.1.Value.1", "sg-1"),
            ("Filter.2.Name", "instance-state-name"),
            ("Filter.2.Value.1", "pending"),
            ("Filter.2.Value.2", "running"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(params, expected);
        assert!(filter_params("X", &[Filter::new("a", Vec::<String>::new())]).is_err());
        assert!(filter_params("X", &[Filter::new("", ["v"])]).is_err());
    }

    #[test]
    fn expired_credentials_are_recognised() {
        assert!(api_error("ExpiredToken", "x").is_expired_credentials());
        assert!(api_error("RequestExpired", "x").is_expired_credentials());
        assert!(api_error(
            "InvalidClientTokenId",
            "The security token included in the request is expired"
        )
        .is_expired_credentials());
        assert!(!api_error("InvalidClientTokenId", "The token is invalid").is_expired_credentials());
        assert!(!api_error("AuthFailure", "AWS was not able to validate").is_expired_credentials());
        let wrapped = Ec2Error::GaveUp {
            action: "DescribeInstances".into(),
            attempts: 3,
            elapsed: Duration::from_secs(1),
            stop: Stop::AttemptsExhausted { max_attempts: 3 },
            last: Box::new(api_error("ExpiredToken", "x")),
        };
        assert!(wrapped.is_expired_credentials());
        assert_eq!(wrapped.code(), Some("ExpiredToken"));
        assert_eq!(wrapped.status(), Some(400));
        assert!(api_error("RequestLimitExceeded", "x").is_throttling());
        assert!(!api_error("InternalError", "x").is_throttling());
    }

    #[test]
    fn default_endpoint() {
        assert_eq!(
            Ec2Client::default_endpoint("eu-west-1").as_str(),
            "https://ec2.eu-west-1.amazonaws.com/"
        );
    }
}
