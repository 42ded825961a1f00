//! The one HTTP transport of berth's AWS clients (IMDS, EC2, EBS): how a request is sent, how
//! much of an answer is read, and what a status means. One piece, so the rules hold everywhere:
//!
//! - **No redirects.** IMDS and the EC2 and EBS APIs never redirect. A 3xx is an error
//!   ([`Failure::Redirect`]) and nothing is sent to the host its `Location` names: a redirected
//!   request would carry the IMDS session token, or `X-Amz-Security-Token` and (for a 307) a
//!   signed request that host could replay.
//! - **Bounded bodies.** A successful answer is read up to the caller's limit; an error answer
//!   (a status outside 2xx) up to [`ERROR_BODY_MAX_BYTES`], since no AWS error document comes
//!   near it. Both are checked against `Content-Length` before the first byte is read, and
//!   again as the bytes arrive.
//! - **Timeouts that say where they struck.** Connecting has its own timeout, shorter than the
//!   per-try one, so a per-try timeout that fires before the answer's head means the server
//!   accepted the connection and did not answer ([`Failure::Timeout`] with `connected`): for
//!   IMDS that is a hop limit dropping the token's answer, not an unreachable endpoint.
//! - **Status classes** in [`Class`]: 2xx, 404, 3xx, transient (408, 429, 5xx), the rest.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// The largest error document read (any answer outside 2xx). AWS error documents are under
/// 1 KiB; a bigger one is not read, and the error says only its status.
pub const ERROR_BODY_MAX_BYTES: usize = 64 * 1024;

/// How a transport is built.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Names the remote in errors: `IMDS`, `EC2`, `EBS`.
    pub service: &'static str,
    /// Time to establish a connection (TCP, and TLS for https).
    pub connect_timeout: Duration,
    /// Whether a proxy from the environment (`HTTPS_PROXY`...) may be used. Never for IMDS:
    /// a proxy cannot reach a link-local address and must never see the IMDS token.
    pub use_proxy: bool,
    /// Idle connections kept per host (EBS uploads in parallel; IMDS and EC2 need one or two).
    pub pool_max_idle_per_host: usize,
}

impl TransportConfig {
    /// IMDS: link-local, so connecting takes microseconds when the endpoint exists; 1 s
    /// leaves room for a loaded boot while still telling "no such endpoint" from "no answer".
    pub fn imds() -> Self {
        TransportConfig {
            service: "IMDS",
            connect_timeout: Duration::from_secs(1),
            use_proxy: false,
            pool_max_idle_per_host: 2,
        }
    }

    /// EC2 Query API: TLS over the internet or a VPC endpoint.
    pub fn ec2() -> Self {
        TransportConfig {
            service: "EC2",
            connect_timeout: Duration::from_secs(5),
            use_proxy: true,
            pool_max_idle_per_host: 4,
        }
    }

    /// EBS direct APIs: many parallel block uploads.
    pub fn ebs() -> Self {
        TransportConfig {
            service: "EBS",
            connect_timeout: Duration::from_secs(5),
            use_proxy: true,
            pool_max_idle_per_host: 64,
        }
    }
}

/// What a status means to every client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Success,
    NotFound,
    Redirect,
    /// 408, 429 and 5xx: worth another attempt.
    Transient,
    /// Any other status: another attempt would get the same answer.
    Permanent,
}

/// The class of `status`.
pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Success,
        404 => Class::NotFound,
        300..=399 => Class::Redirect,
        408 | 429 | 500..=599 => Class::Transient,
        _ => Class::Permanent,
    }
}

/// A complete answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// The server's `Date` header, when it sent a valid one.
    pub date: Option<SystemTime>,
}

impl Reply {
    /// The value of header `name` when it is visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why no complete answer arrived. Never carries a URL with credentials, a header value or a
/// body.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("cannot connect: {0}")]
    Connect(#[source] reqwest::Error),
    #[error("{}", timeout_text(*.after, *.connected, *.head_received))]
    Timeout {
        after: Duration,
        /// The connection was established (the connect timeout did not strike first).
        connected: bool,
        /// The answer's status line had arrived; the body was still coming.
        head_received: bool,
    },
    #[error("connection failed: {0}")]
    Transport(#[source] reqwest::Error),
    #[error(
        "answered HTTP {status}, a redirect; AWS endpoints never redirect, so berth follows \
         none and sent nothing to the host it names"
    )]
    Redirect { status: u16 },
    #[error("answered HTTP {status} with a body larger than {limit} bytes (not read)")]
    TooLarge { status: u16, limit: usize },
}

fn timeout_text(after: Duration, connected: bool, head: bool) -> String {
    match (connected, head) {
        (_, true) => format!("the answer's body did not arrive within {after:?}"),
        (true, false) => format!("connected, but no answer within {after:?}"),
        (false, false) => format!("no connection within {after:?}"),
    }
}

impl Failure {
    /// Whether the endpoint itself looks unreachable (no connection made): a client with more
    /// than one endpoint moves to the next.
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Failure::Connect(_)
                | Failure::Timeout {
                    connected: false,
                    ..
                }
        )
    }
}

/// A `reqwest` client configured by [`TransportConfig`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Transport {
    http: reqwest::Client,
    config: TransportConfig,
}

impl Transport {
    pub fn new(config: TransportConfig) -> Transport {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host);
        if !config.use_proxy {
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .expect("a reqwest client with a static configuration builds");
        Transport { http, config }
    }

    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// A request builder for `method` and `url` on this transport's client.
    pub fn request(&self, method: reqwest::Method, url: url::Url) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    /// Sends `request` and reads the whole answer within `timeout`: a 2xx body up to
    /// `success_limit` bytes, any other up to [`ERROR_BODY_MAX_BYTES`]. A 3xx is
    /// [`Failure::Redirect`] and its body is not read.
    pub async fn send(
        &self,
        request: reqwest::Request,
        timeout: Duration,
        success_limit: usize,
    ) -> Result<Reply, Failure> {
        let started = Instant::now();
        let connected_by = self.config.connect_timeout;
        let sent = tokio::time::timeout(timeout, self.http.execute(request)).await;
        let mut response = match sent {
            Err(_) => {
                return Err(Failure::Timeout {
                    after: timeout,
                    connected: timeout > connected_by,
                    head_received: false,
                })
            }
            Ok(Err(e)) if e.is_connect() => return Err(Failure::Connect(e.without_url())),
            Ok(Err(e)) if e.is_timeout() => {
                return Err(Failure::Timeout {
                    after: started.elapsed(),
                    connected: false,
                    head_received: false,
                })
            }
            Ok(Err(e)) => return Err(Failure::Transport(e.without_url())),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        let class = classify(status);
        if class == Class::Redirect {
            return Err(Failure::Redirect { status });
        }
        let limit = if class == Class::Success {
            success_limit
        } else {
            ERROR_BODY_MAX_BYTES
        };
        let left = timeout.saturating_sub(started.elapsed());
        let body = match tokio::time::timeout(left, read_capped(&mut response, limit)).await {
            Err(_) => {
                return Err(Failure::Timeout {
                    after: timeout,
                    connected: true,
                    head_received: true,
                })
            }
            Ok(Err(None)) => return Err(Failure::TooLarge { status, limit }),
            Ok(Err(Some(e))) => return Err(Failure::Transport(e.without_url())),
            Ok(Ok(body)) => body,
        };
        let headers = std::mem::take(response.headers_mut());
        let date = headers
            .get(http::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        Ok(Reply {
            status,
            headers,
            body,
            date,
        })
    }
}

/// The body, or `Err(None)` past `limit` bytes (checked against `Content-Length` first).
async fn read_capped(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Option<reqwest::Error>> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(Some)? {
        if body.len() + chunk.len() > limit {
            return Err(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(classify(200), Class::Success);
        assert_eq!(classify(204), Class::Success);
        assert_eq!(classify(404), Class::NotFound);
        assert_eq!(classify(302), Class::Redirect);
        assert_eq!(classify(307), Class::Redirect);
        assert_eq!(classify(429), Class::Transient);
        assert_eq!(classify(503), Class::Transient);
        assert_eq!(classify(400), Class::Permanent);
        assert_eq!(classify(401), Class::Permanent);
    }
}
