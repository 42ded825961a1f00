//! A client for the EC2 Query API (`Version=2016-11-15`): form-encoded POST bodies signed with
//! SigV4, XML responses.
//!
//! Each attempt is signed afresh (a new `X-Amz-Date`), so a request retried after a long
//! backoff never arrives expired. Throttling (`RequestLimitExceeded` and friends), 5xx and
//! network failures are retried under the client's [`RetryPolicy`]; errors a retry cannot fix
//! (`AuthFailure`, `UnauthorizedOperation`, `InvalidParameterValue`, ...) are returned at once.
//! When EC2 says the credentials expired, [`Ec2Error::is_expired_credentials`] tells the caller
//! to refresh them and try once more: the client never fetches credentials itself.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use url::Url;

use crate::body::{read_capped, BodyError};
use crate::model::{Credentials, Filter, Instance, TagDescription};
use crate::retry::{self, Attempt, GaveUp, RetryPolicy, Stop, Verdict};
use crate::sign::{self, SignError};
use crate::xml::{self, XmlError};

/// The Query API version berth speaks; its response shapes are the ones in [`crate::xml`].
pub const EC2_API_VERSION: &str = "2016-11-15";
/// The largest page EC2 serves: fewest round trips, least chance of being throttled.
const MAX_RESULTS: &str = "1000";
/// With 1000 results a page, this many pages is a million instances, beyond any account's
/// quota: a server still paging by then is broken, and berth stops rather than loop.
const MAX_PAGES: u32 = 1000;
/// A full DescribeInstances page is a few MB; 64 MiB bounds memory against a broken server.
const MAX_RESPONSE: usize = 64 << 20;
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
/// code and message. Never carries a secret key or a session token.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("EC2 {action} failed: {code} (HTTP {status}): {message}{}", request_id_suffix(.request_id))]
    Api {
        action: String,
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    #[error("EC2 {action}: {url} answered HTTP {status} without an EC2 error document")]
    Http {
        action: String,
        url: String,
        status: u16,
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
    #[error("EC2 {action}: request to {url} timed out after {after:?}")]
    Timeout {
        action: String,
        url: String,
        after: Duration,
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

fn request_id_suffix(request_id: &Option<String>) -> String {
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
            Ec2Error::Api { status, .. } | Ec2Error::Http { status, .. } => Some(*status),
            Ec2Error::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The AWS error code (`AuthFailure`, `RequestLimitExceeded`, ...), when EC2 sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Ec2Error::Api { code, .. } => Some(code),
            Ec2Error::GaveUp { last, .. } => last.code(),
            _ => None,
        }
    }

    /// The AWS error message, when EC2 sent one.
    pub fn message(&self) -> Option<&str> {
        match self {
            Ec2Error::Api { message, .. } => Some(message),
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
    http: reqwest::Client,
    attempts: AtomicU64,
}

impl Ec2Client {
    /// A client sending to `endpoint` (production: [`Ec2Client::default_endpoint`]) and signing
    /// for `region`.
    pub fn new(endpoint: Url, region: String, policy: RetryPolicy) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with a static configuration builds");
        Ec2Client {
            endpoint,
            region,
            policy,
            http,
            attempts: AtomicU64::new(0),
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

    /// Every instance matching `filters`, all pages followed.
    pub async fn describe_instances(
        &self,
        creds: &Credentials,
        filters: &[Filter],
    ) -> Result<Vec<Instance>, Ec2Error> {
        Ok(self.describe_instances_pages(creds, filters).await?.items)
    }

    /// As [`describe_instances`](Self::describe_instances), also saying how many pages it took.
    pub async fn describe_instances_pages(
        &self,
        creds: &Credentials,
        filters: &[Filter],
    ) -> Result<Paged<Instance>, Ec2Error> {
        let action = "DescribeInstances";
        let mut params = filter_params(action, filters)?;
        params.push(("MaxResults".into(), MAX_RESULTS.into()));
        self.paginate(action, creds, params, |xml| {
            xml::parse_describe_instances(xml).map(|p| (p.instances, p.next_token))
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
        params.push(("MaxResults".into(), MAX_RESULTS.into()));
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
        let mut items = Vec::new();
        let mut seen = HashSet::new();
        let mut next: Option<String> = None;
        let mut pages = 0;
        loop {
            if pages >= MAX_PAGES {
                return Err(Ec2Error::Paging {
                    action: action.into(),
                    pages,
                    reason: "more pages than any account could fill",
                });
            }
            let mut page_params = params.clone();
            if let Some(token) = &next {
                page_params.push(("NextToken".into(), token.clone()));
            }
            let body = self.call(creds, action, &page_params).await?;
            pages += 1;
            let (page, token) = parse(&body).map_err(|source| Ec2Error::Xml {
                action: action.into(),
                source,
            })?;
            log::debug!("EC2 {action}: page {pages} has {} item(s)", page.len());
            items.extend(page);
            match token {
                None => return Ok(Paged { items, pages }),
                Some(token) => {
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
        if action.is_empty() || !action.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Ec2Error::InvalidParameter {
                action: action.chars().take(64).collect(),
                name: "Action".into(),
                reason: "must be a non-empty alphanumeric EC2 action name",
            });
        }
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", action);
        form.append_pair("Version", EC2_API_VERSION);
        for (name, value) in params {
            form.append_pair(name, value);
        }
        let body = form.finish().into_bytes();
        retry::run(&self.policy, &format!("EC2 {action}"), |attempt| {
            self.attempt(creds, action, &body, attempt)
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
    ) -> Result<String, Verdict<Ec2Error>> {
        let started = Instant::now();
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
        sign::sign_request(&mut request, creds, &self.region, "ec2", SystemTime::now()).map_err(
            |source| {
                Verdict::Fail(Ec2Error::Sign {
                    action: action.into(),
                    source,
                })
            },
        )?;
        let request = reqwest::Request::try_from(request).map_err(|source| {
            Verdict::Fail(Ec2Error::Transport {
                action: action.into(),
                url: url.clone(),
                source,
            })
        })?;
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let mut response =
            match tokio::time::timeout(attempt.timeout, self.http.execute(request)).await {
                Err(_) => {
                    return Err(Verdict::Retry(Ec2Error::Timeout {
                        action: action.into(),
                        url,
                        after: attempt.timeout,
                    }))
                }
                Ok(Err(source)) if source.is_connect() => {
                    return Err(Verdict::Retry(Ec2Error::Connect {
                        action: action.into(),
                        url,
                        source: source.without_url(),
                    }))
                }
                Ok(Err(source)) => {
                    return Err(Verdict::Retry(Ec2Error::Transport {
                        action: action.into(),
                        url,
                        source: source.without_url(),
                    }))
                }
                Ok(Ok(response)) => response,
            };
        let status = response.status().as_u16();
        let left = attempt.timeout.saturating_sub(started.elapsed());
        let body = match tokio::time::timeout(left, read_capped(&mut response, MAX_RESPONSE)).await
        {
            Err(_) => {
                return Err(Verdict::Retry(Ec2Error::Timeout {
                    action: action.into(),
                    url,
                    after: attempt.timeout,
                }))
            }
            Ok(Err(BodyError::TooLarge)) => {
                return Err(Verdict::Fail(Ec2Error::TooLarge {
                    action: action.into(),
                    url,
                    limit: MAX_RESPONSE,
                }))
            }
            Ok(Err(BodyError::Transport(source))) => {
                return Err(Verdict::Retry(Ec2Error::Transport {
                    action: action.into(),
                    url,
                    source: source.without_url(),
                }))
            }
            Ok(Ok(body)) => body,
        };
        let body = String::from_utf8(body).map_err(|_| {
            Verdict::Fail(Ec2Error::NotUtf8 {
                action: action.into(),
            })
        })?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let transient_status = status == 429 || status >= 500;
        match xml::parse_error(&body) {
            Ok(aws) => {
                let retry = transient_status || RETRYABLE_CODES.contains(&aws.code.as_str());
                let error = Ec2Error::Api {
                    action: action.into(),
                    status,
                    code: scrub(&aws.code, creds).chars().take(128).collect(),
                    message: scrub(&aws.message, creds).chars().take(1024).collect(),
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

/// Removes the secret key and session token should a server echo them into an error.
fn scrub(text: &str, creds: &Credentials) -> String {
    let mut text = text.to_string();
    for secret in [Some(&creds.secret_access_key), creds.session_token.as_ref()]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
    {
        text = text.replace(secret.as_str(), "** redacted **");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: &str, message: &str) -> Ec2Error {
        Ec2Error::Api {
            action: "DescribeInstances".into(),
            status: 400,
            code: code.into(),
            message: message.into(),
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
    fn scrub_removes_secrets() {
        let creds = Credentials {
            access_key_id: "AKIA".into(),
            secret_access_key: "SECRETKEY".into(),
            session_token: Some("SESSIONTOKEN".into()),
            expiration: None,
        };
        assert_eq!(
            scrub("bad SECRETKEY and SESSIONTOKEN", &creds),
            "bad ** redacted ** and ** redacted **"
        );
    }

    #[test]
    fn default_endpoint() {
        assert_eq!(
            Ec2Client::default_endpoint("eu-west-1").as_str(),
            "https://ec2.eu-west-1.amazonaws.com/"
        );
    }
}
