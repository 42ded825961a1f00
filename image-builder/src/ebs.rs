//! A client for the EBS direct APIs (REST + JSON on `ebs.{region}.amazonaws.com`, SigV4 service
//! `ebs`): StartSnapshot, PutSnapshotBlock, CompleteSnapshot, ListSnapshotBlocks and
//! GetSnapshotBlock. Enough to write a snapshot from a disk image block by block, and to read
//! one back.
//!
//! Each attempt is signed afresh through berth-ec2's [`sign`](berth_ec2::sign) module. The JSON
//! calls sign their body; PutSnapshotBlock signs `UNSIGNED-PAYLOAD` as the AWS SDKs do, its body
//! being covered by the signed `x-amz-Checksum` header (the base64 SHA-256 of the block, which
//! EBS verifies). Throttling (`RequestThrottledException`, `ConcurrentLimitExceededException`),
//! 429, 5xx, timeouts and broken connections are retried under the client's [`RetryPolicy`];
//! anything else (a bad checksum, a missing snapshot, refused credentials) fails at once.
//!
//! Requests go through berth-ec2's one [`Transport`]: no redirect is followed (EBS never
//! redirects; a redirected request would carry the session token and a replayable signature),
//! bodies are bounded, and text from an error answer is a [`RemoteText`], scrubbed of every
//! secret the process holds.
//!
//! Not for: the EC2 side of snapshots (DescribeSnapshots, DeleteSnapshot: see
//! [`crate::images`]), or deciding which blocks to write (see [`crate::ami`]).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use berth_ec2::redact::{self, RemoteText};
use berth_ec2::retry::{self, Attempt, RetryPolicy, Verdict};
use berth_ec2::sign::{self, Payload};
use berth_ec2::transport::{classify, Class, Failure, Transport, TransportConfig};
use berth_ec2::Credentials;
use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use url::Url;

/// The block size of the EBS direct APIs: every block written is exactly this long.
pub const BLOCK_SIZE: usize = 512 * 1024;
/// The largest response read: a block (512 KiB) or a page of 10 000 block tokens (about 700 KB).
const MAX_RESPONSE: usize = 4 << 20;
/// Error types EBS uses for "slow down"; retried like a 5xx.
const THROTTLING: &[&str] = &[
    "RequestThrottledException",
    "ConcurrentLimitExceededException",
    "ThrottlingException",
    "InternalServerException",
    "ServiceUnavailableException",
];

/// Why an EBS call failed. Never carries a secret key or a session token.
#[derive(Debug, thiserror::Error)]
pub enum EbsError {
    #[error("EBS {action} failed: {kind}{} (HTTP {status}): {message}", reason_suffix(.reason))]
    Api {
        action: &'static str,
        status: u16,
        kind: RemoteText,
        reason: Option<RemoteText>,
        message: RemoteText,
    },
    #[error("EBS {action}: {url} answered HTTP {status}")]
    Http {
        action: &'static str,
        url: String,
        status: u16,
    },
    #[error("EBS {action}: request to {url} failed: {source}")]
    Transport {
        action: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("EBS {action}: request to {url}: {failure}")]
    Timeout {
        action: &'static str,
        url: String,
        failure: Failure,
    },
    #[error(
        "EBS {action}: {url} answered HTTP {status}, a redirect: EBS never redirects, so berth \
         follows none and sent neither its session token nor a signed request to another host"
    )]
    Redirect {
        action: &'static str,
        url: String,
        status: u16,
    },
    #[error("EBS {action}: response from {url} larger than {limit} bytes")]
    TooLarge {
        action: &'static str,
        url: String,
        limit: usize,
    },
    #[error("EBS {action}: {source}")]
    Sign {
        action: &'static str,
        #[source]
        source: sign::SignError,
    },
    #[error("EBS {action}: unexpected response: {what}")]
    Response { action: &'static str, what: String },
    #[error("EBS {action}: gave up after {attempts} attempt(s) in {elapsed:?} ({stop}); last error: {last}")]
    GaveUp {
        action: &'static str,
        attempts: u32,
        elapsed: Duration,
        stop: retry::Stop,
        #[source]
        last: Box<EbsError>,
    },
}

fn reason_suffix(reason: &Option<RemoteText>) -> String {
    reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default()
}

impl EbsError {
    fn from_gave_up(action: &'static str, g: retry::GaveUp<EbsError>) -> Self {
        match g.stop {
            retry::Stop::NotRetryable if g.attempts == 1 => g.last,
            stop => EbsError::GaveUp {
                action,
                attempts: g.attempts,
                elapsed: g.elapsed,
                stop,
                last: Box::new(g.last),
            },
        }
    }

    /// The EBS error type (`ValidationException`, ...), when EBS sent one.
    pub fn kind(&self) -> Option<&str> {
        match self {
            EbsError::Api { kind, .. } => Some(kind.as_str()),
            EbsError::GaveUp { last, .. } => last.kind(),
            _ => None,
        }
    }

    /// The reason EBS gave (`INVALID_CHECKSUM`, ...), when it gave one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            EbsError::Api { reason, .. } => reason.as_deref(),
            EbsError::GaveUp { last, .. } => last.reason(),
            _ => None,
        }
    }
}

/// The base64 SHA-256 EBS expects in `x-amz-Checksum`.
pub fn checksum(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data))
}

/// What StartSnapshot answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub snapshot_id: String,
    pub status: String,
    pub block_size: u64,
}

/// A snapshot to start.
#[derive(Debug, Clone)]
pub struct StartSnapshot<'a> {
    pub volume_size_gib: u64,
    pub description: &'a str,
    pub tags: &'a [(String, String)],
    /// Makes a retried StartSnapshot return the same snapshot instead of a second one.
    pub client_token: &'a str,
    /// Minutes until EBS gives up on a snapshot that is never completed.
    pub timeout_minutes: u32,
}

/// One block of a completed snapshot, from ListSnapshotBlocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedBlock {
    pub index: u64,
    pub token: String,
}

/// A block read back with GetSnapshotBlock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    pub data: Vec<u8>,
    /// `x-amz-Checksum` as EBS sent it.
    pub checksum: Option<String>,
}

/// The EBS direct APIs client for one region.
#[derive(Debug)]
pub struct EbsClient {
    endpoint: Url,
    region: String,
    policy: RetryPolicy,
    transport: Transport,
}

struct Call<'a> {
    action: &'static str,
    method: http::Method,
    /// Path and query, starting with `/`.
    target: String,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    payload: Payload,
    creds: &'a Credentials,
}

struct Answer {
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl EbsClient {
    /// A client sending to `endpoint` (production: [`EbsClient::default_endpoint`]), signing for
    /// `region`, each call retried under `policy`.
    pub fn new(endpoint: Url, region: String, policy: RetryPolicy) -> Self {
        EbsClient {
            endpoint,
            region,
            policy,
            transport: Transport::new(TransportConfig::ebs()),
        }
    }

    /// `https://ebs.{region}.amazonaws.com/`.
    pub(crate) fn default_endpoint(region: &str) -> Url {
        Url::parse(&format!("https://ebs.{region}.amazonaws.com/"))
            .expect("a region name makes a valid host name")
    }

    pub async fn start_snapshot(
        &self,
        creds: &Credentials,
        req: &StartSnapshot<'_>,
    ) -> Result<Started, EbsError> {
        let action = "StartSnapshot";
        let tags: Vec<Value> = req
            .tags
            .iter()
            .map(|(k, v)| json!({"Key": k, "Value": v}))
            .collect();
        let mut body = json!({
            "VolumeSize": req.volume_size_gib,
            "ClientToken": req.client_token,
            "Timeout": req.timeout_minutes,
        });
        if !req.description.is_empty() {
            body["Description"] = json!(req.description);
        }
        if !tags.is_empty() {
            body["Tags"] = json!(tags);
        }
        let answer = self
            .send(Call {
                action,
                method: http::Method::POST,
                target: "/snapshots".into(),
                headers: vec![("content-type", "application/json".into())],
                body: Bytes::from(body.to_string()),
                payload: Payload::Signed,
                creds,
            })
            .await?;
        let v = parse_json(action, &answer.body)?;
        let field = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| EbsError::Response {
                    action,
                    what: format!("no {name}"),
                })
        };
        Ok(Started {
            snapshot_id: field("SnapshotId")?,
            status: field("Status")?,
            block_size: v
                .get("BlockSize")
                .and_then(Value::as_u64)
                .unwrap_or(BLOCK_SIZE as u64),
        })
    }

    /// Write one block (exactly [`BLOCK_SIZE`] bytes) with its checksum.
    pub async fn put_block(
        &self,
        creds: &Credentials,
        snapshot_id: &str,
        index: u64,
        data: Bytes,
        checksum: &str,
    ) -> Result<(), EbsError> {
        let action = "PutSnapshotBlock";
        check_id(action, snapshot_id)?;
        let answer = self
            .send(Call {
                action,
                method: http::Method::PUT,
                target: format!("/snapshots/{snapshot_id}/blocks/{index}"),
                headers: vec![
                    ("content-type", "application/octet-stream".into()),
                    ("x-amz-data-length", data.len().to_string()),
                    ("x-amz-checksum", checksum.to_string()),
                    ("x-amz-checksum-algorithm", "SHA256".into()),
                ],
                body: data,
                payload: Payload::Unsigned,
                creds,
            })
            .await?;
        // EBS echoes the checksum it computed; a different one means the block was damaged.
        match answer
            .headers
            .get("x-amz-checksum")
            .and_then(|v| v.to_str().ok())
        {
            Some(echo) if echo != checksum => Err(EbsError::Response {
                action,
                what: format!("block {index}: EBS stored checksum {echo}, berth sent {checksum}"),
            }),
            _ => Ok(()),
        }
    }

    /// Seal the snapshot: EBS then makes it `completed` (asynchronously).
    pub async fn complete_snapshot(
        &self,
        creds: &Credentials,
        snapshot_id: &str,
        changed_blocks: u64,
    ) -> Result<String, EbsError> {
        let action = "CompleteSnapshot";
        check_id(action, snapshot_id)?;
        let answer = self
            .send(Call {
                action,
                method: http::Method::POST,
                target: format!("/snapshots/completion/{snapshot_id}"),
                headers: vec![("x-amz-changedblockscount", changed_blocks.to_string())],
                body: Bytes::new(),
                payload: Payload::Signed,
                creds,
            })
            .await?;
        let v = parse_json(action, &answer.body)?;
        Ok(v.get("Status")
            .and_then(Value::as_str)
            .unwrap_or("pending")
            .to_string())
    }

    /// Every block of a completed snapshot, all pages followed.
    pub async fn list_blocks(
        &self,
        creds: &Credentials,
        snapshot_id: &str,
    ) -> Result<Vec<ListedBlock>, EbsError> {
        let action = "ListSnapshotBlocks";
        check_id(action, snapshot_id)?;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        // A 64 TiB volume has 134 217 728 blocks: at 10 000 a page, 13 422 pages at most.
        for _ in 0..14_000 {
            let mut target = format!("/snapshots/{snapshot_id}/blocks?maxResults=10000");
            if let Some(t) = &token {
                let mut q = url::form_urlencoded::Serializer::new(String::new());
                q.append_pair("pageToken", t);
                target = format!("{target}&{}", q.finish());
            }
            let answer = self
                .send(Call {
                    action,
                    method: http::Method::GET,
                    target,
                    headers: vec![],
                    body: Bytes::new(),
                    payload: Payload::Signed,
                    creds,
                })
                .await?;
            let v = parse_json(action, &answer.body)?;
            for b in v
                .get("Blocks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let index = b.get("BlockIndex").and_then(Value::as_u64);
                let tok = b.get("BlockToken").and_then(Value::as_str);
                match (index, tok) {
                    (Some(index), Some(tok)) => out.push(ListedBlock {
                        index,
                        token: tok.to_string(),
                    }),
                    _ => {
                        return Err(EbsError::Response {
                            action,
                            what: format!("a block without BlockIndex or BlockToken: {b}"),
                        })
                    }
                }
            }
            match v.get("NextToken").and_then(Value::as_str) {
                Some(t) if Some(t) != token.as_deref() => token = Some(t.to_string()),
                Some(_) => {
                    return Err(EbsError::Response {
                        action,
                        what: "the same NextToken twice".into(),
                    })
                }
                None => return Ok(out),
            }
        }
        Err(EbsError::Response {
            action,
            what: "more pages than a 64 TiB volume has".into(),
        })
    }

    /// Read one block back.
    pub async fn get_block(
        &self,
        creds: &Credentials,
        snapshot_id: &str,
        index: u64,
        token: &str,
    ) -> Result<ReadBlock, EbsError> {
        let action = "GetSnapshotBlock";
        check_id(action, snapshot_id)?;
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("blockToken", token);
        let answer = self
            .send(Call {
                action,
                method: http::Method::GET,
                target: format!("/snapshots/{snapshot_id}/blocks/{index}?{}", q.finish()),
                headers: vec![],
                body: Bytes::new(),
                payload: Payload::Signed,
                creds,
            })
            .await?;
        Ok(ReadBlock {
            checksum: answer
                .headers
                .get("x-amz-checksum")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            data: answer.body,
        })
    }

    async fn send(&self, call: Call<'_>) -> Result<Answer, EbsError> {
        let action = call.action;
        retry::run(&self.policy, &format!("EBS {action}"), |attempt| {
            self.attempt(&call, attempt)
        })
        .await
        .map_err(|g| EbsError::from_gave_up(action, g))
    }

    async fn attempt(
        &self,
        call: &Call<'_>,
        attempt: Attempt,
    ) -> Result<Answer, Verdict<EbsError>> {
        let action = call.action;
        let url = self
            .endpoint
            .join(call.target.trim_start_matches('/'))
            .map_err(|e| {
                Verdict::Fail(EbsError::Response {
                    action,
                    what: format!("bad request target {}: {e}", call.target),
                })
            })?;
        let url_text = format!("{}{}", url.origin().ascii_serialization(), url.path());
        // The unsigned payload is not part of the signature: sign without copying the block.
        let signed_body = match call.payload {
            Payload::Signed => call.body.to_vec(),
            Payload::Unsigned => Vec::new(),
        };
        let mut builder = http::Request::builder()
            .method(call.method.clone())
            .uri(url.as_str());
        for (name, value) in &call.headers {
            builder = builder.header(*name, value);
        }
        let mut request = builder.body(signed_body).map_err(|e| {
            Verdict::Fail(EbsError::Response {
                action,
                what: format!("cannot build the request: {e}"),
            })
        })?;
        sign::sign_request_with(
            &mut request,
            call.creds,
            &self.region,
            "ebs",
            SystemTime::now(),
            call.payload,
        )
        .map_err(|source| Verdict::Fail(EbsError::Sign { action, source }))?;
        let (parts, _) = request.into_parts();
        let mut req = self
            .transport
            .request(parts.method, url.clone())
            .headers(parts.headers)
            .body(call.body.clone());
        if call.body.is_empty() && call.method != http::Method::GET {
            req = req.header("content-length", "0");
        }
        redact::hold(&call.creds.secret_access_key);
        if let Some(token) = &call.creds.session_token {
            redact::hold(token);
        }
        let req = req.build().map_err(|source| {
            Verdict::Fail(EbsError::Transport {
                action,
                url: url_text.clone(),
                source: source.without_url(),
            })
        })?;
        let reply = match self
            .transport
            .send(req, attempt.timeout, MAX_RESPONSE)
            .await
        {
            Ok(reply) => reply,
            Err(failure) => {
                let url = url_text;
                return Err(match failure {
                    Failure::Connect(source) | Failure::Transport(source) => {
                        Verdict::Retry(EbsError::Transport {
                            action,
                            url,
                            source,
                        })
                    }
                    Failure::Redirect { status } => Verdict::Fail(EbsError::Redirect {
                        action,
                        url,
                        status,
                    }),
                    Failure::TooLarge { limit, .. } => {
                        Verdict::Fail(EbsError::TooLarge { action, url, limit })
                    }
                    failure @ Failure::Timeout { .. } => Verdict::Retry(EbsError::Timeout {
                        action,
                        url,
                        failure,
                    }),
                });
            }
        };
        let status = reply.status;
        let headers = reply.headers;
        let body = reply.body;
        if classify(status) == Class::Success {
            return Ok(Answer { headers, body });
        }
        let kind = headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(':').next().unwrap_or(v).to_string());
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let text = |name: &str| {
            json.as_ref().and_then(|j| {
                j.get(name)
                    .or_else(|| j.get(name.to_ascii_lowercase()))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
        };
        let kind = kind
            .or_else(|| text("__type").map(|t| t.rsplit('#').next().unwrap_or(&t).to_string()))
            .map(|k| RemoteText::new(&k));
        let transient = classify(status) == Class::Transient;
        let error = match kind {
            Some(kind) => {
                let retry = transient || THROTTLING.contains(&kind.as_str());
                let e = EbsError::Api {
                    action,
                    status,
                    reason: text("Reason").map(|r| RemoteText::new(&r)),
                    message: RemoteText::new(&text("Message").unwrap_or_default()),
                    kind,
                };
                return Err(if retry {
                    Verdict::Retry(e)
                } else {
                    Verdict::Fail(e)
                });
            }
            None => EbsError::Http {
                action,
                url: url_text,
                status,
            },
        };
        Err(if transient {
            Verdict::Retry(error)
        } else {
            Verdict::Fail(error)
        })
    }
}

fn check_id(action: &'static str, id: &str) -> Result<(), EbsError> {
    // The id goes into the URL path: only what a snapshot id is made of.
    if id.starts_with("snap-") && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(())
    } else {
        Err(EbsError::Response {
            action,
            what: format!("`{id}` is not a snapshot id"),
        })
    }
}

fn parse_json(action: &'static str, body: &[u8]) -> Result<Value, EbsError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| EbsError::Response {
        action,
        what: format!("the body is not JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_base64_sha256() {
        // sha256("") = e3b0c442...; base64 of those 32 bytes:
        assert_eq!(
            checksum(b""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn snapshot_ids_are_checked_before_they_reach_a_path() {
        assert!(check_id("X", "snap-0123abc").is_ok());
        assert!(check_id("X", "snap-../../x").is_err());
        assert!(check_id("X", "vol-1").is_err());
    }

    #[test]
    fn default_endpoint() {
        assert_eq!(
            EbsClient::default_endpoint("eu-west-1").as_str(),
            "https://ebs.eu-west-1.amazonaws.com/"
        );
    }
}
