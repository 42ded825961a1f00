//! A small HTTP/1.1 server: enough of the protocol for the clients berth uses (keep-alive,
//! `Content-Length` bodies, `Expect: 100-continue`), with the fault injection of [`crate::faults`]
//! applied between reading a request and answering it.
//!
//! Two habits matter for honest timings: every accepted socket gets `TCP_NODELAY`, and a response
//! (status line, headers, body) leaves in one `write_all` of one buffer. Otherwise a kept-alive
//! response waits ~40 ms for the client's delayed ACK and every latency a test measures lies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::faults::{FaultState, Injected};
use crate::record::{Listener, RequestLog, RequestRecord};

/// Largest request head (request line + headers) accepted. EC2 and IMDS requests are a few
/// hundred bytes; the cap only stops a broken client from growing memory without bound.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request body accepted. A DescribeInstances form with a few hundred filter values is
/// well under this; the real EC2 Query API refuses bodies far smaller than this too.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One parsed request.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: String,
    /// The path part of the request target, still percent-encoded.
    pub path: String,
    /// The query string after `?`, still encoded; empty when absent.
    pub query: String,
    /// Header names lower-cased, values trimmed, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One response; the server adds `Content-Length`, `Date`, `Server` and `Connection`.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status, "text/plain", body)
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What the request log records about a request besides method, path and status.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    pub action: Option<String>,
    pub token_present: bool,
    pub signed: bool,
}

/// The endpoint behind a listener: EC2 or one instance's IMDS.
pub(crate) trait Service: Send + Sync + 'static {
    /// Facts for the request log, read before any fault applies.
    fn inspect(&self, req: &Request) -> Meta;
    /// The real answer.
    fn handle(&self, req: &Request) -> Response;
    /// The answer to an injected failure, in this endpoint's own error shape.
    fn injected(&self, fault: Injected) -> Response;
}

/// A running listener; dropping the handle does not stop it, [`Server::stop`] does.
pub(crate) struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn bind(
        addr: SocketAddr,
        listener: Listener,
        service: Arc<dyn Service>,
        faults: Arc<FaultState>,
        log: Arc<RequestLog>,
    ) -> std::io::Result<Server> {
        let tcp = TcpListener::bind(addr).await?;
        let addr = tcp.local_addr()?;
        let ctx = Arc::new(Ctx {
            listener,
            service,
            faults,
            log,
        });
        let task = tokio::spawn(async move {
            // Connections live in the set so that stopping the listener also ends every
            // kept-alive connection it accepted.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = tcp.accept() => match accepted {
                        Ok((sock, _peer)) => {
                            let ctx = ctx.clone();
                            conns.spawn(async move { ctx.connection(sock).await });
                        }
                        Err(e) => {
                            log::warn!("{}: accept failed: {e}", ctx.listener);
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Server { addr, task })
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

struct Ctx {
    listener: Listener,
    service: Arc<dyn Service>,
    faults: Arc<FaultState>,
    log: Arc<RequestLog>,
}

enum ReadOutcome {
    Request(Request, bool),
    Closed,
    Bad(u16, &'static str),
}

impl Ctx {
    async fn connection(&self, sock: TcpStream) {
        if let Err(e) = sock.set_nodelay(true) {
            log::warn!("{}: cannot set TCP_NODELAY: {e}", self.listener);
        }
        let mut reader = BufReader::new(sock);
        loop {
            let (req, keep_alive) = match read_request(&mut reader).await {
                Ok(ReadOutcome::Request(req, keep_alive)) => (req, keep_alive),
                Ok(ReadOutcome::Closed) => return,
                Ok(ReadOutcome::Bad(status, why)) => {
                    let resp = Response::text(status, why);
                    let _ = reader
                        .get_mut()
                        .write_all(&serialize(&resp, false, self.faults.now()))
                        .await;
                    lingering_close(reader).await;
                    return;
                }
                Err(_) => return,
            };
            let meta = self.service.inspect(&req);
            let path_plan = self.faults.path_plan(&req.method, &req.path);
            if path_plan.hang {
                // Read, never answered: wait for the client to give up and close.
                self.record(&req, &meta, 0);
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut reader, &mut sink).await;
                return;
            }
            let plan = self.faults.next_request();
            let delay = plan.latency + path_plan.delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let injected = if path_plan.not_found {
                Some(Injected::Fail(404))
            } else {
                plan.injected
            };
            let (resp, status) = match injected {
                Some(Injected::Reset) => {
                    self.record(&req, &meta, 0);
                    // SO_LINGER 0 turns the close into a TCP RST: the client sees a reset
                    // connection, not a clean end of stream.
                    let _ = reader.get_ref().set_zero_linger();
                    return;
                }
                Some(fault) => {
                    let resp = self.service.injected(fault);
                    let status = resp.status;
                    (resp, status)
                }
                None => {
                    let resp = self.service.handle(&req);
                    let status = resp.status;
                    (resp, status)
                }
            };
            self.record(&req, &meta, status);
            if reader
                .get_mut()
                .write_all(&serialize(&resp, keep_alive, self.faults.now()))
                .await
                .is_err()
                || !keep_alive
            {
                return;
            }
        }
    }

    fn record(&self, req: &Request, meta: &Meta, status: u16) {
        log::debug!(
            "{} {} {} {} -> {}",
            self.listener,
            req.method,
            req.path,
            meta.action.as_deref().unwrap_or("-"),
            status
        );
        self.log.push(RequestRecord {
            time: SystemTime::now(),
            listener: self.listener.clone(),
            method: req.method.clone(),
            path: req.path.clone(),
            action: meta.action.clone(),
            status,
            token_present: meta.token_present,
            signed: meta.signed,
        });
    }
}

/// Close after refusing a request whose rest is still arriving: closing with unread input
/// sends a RST that can destroy the answer before the client reads it, so the input is
/// drained (briefly, and only so much) after our side is shut down.
async fn lingering_close(mut reader: BufReader<TcpStream>) {
    /// Enough for a client to notice the answer; bounded so a refused client cannot hold the
    /// task.
    const LINGER: std::time::Duration = std::time::Duration::from_millis(500);
    const DRAIN_BYTES: u64 = 4 * 1024 * 1024;
    let _ = reader.get_mut().shutdown().await;
    let mut sink = tokio::io::sink();
    let _ = tokio::time::timeout(
        LINGER,
        tokio::io::copy(&mut (&mut reader).take(DRAIN_BYTES), &mut sink),
    )
    .await;
}

async fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<ReadOutcome> {
    let mut head = Vec::new();
    // Request line and headers, up to the empty line.
    let mut lines: Vec<String> = Vec::new();
    loop {
        let mut line = Vec::new();
        // Bounded, so a client that never sends a newline cannot grow the buffer forever.
        let room = (MAX_HEAD_BYTES + 1).saturating_sub(head.len()) as u64;
        let n = (&mut *reader)
            .take(room)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(if head.is_empty() {
                ReadOutcome::Closed
            } else {
                ReadOutcome::Bad(400, "truncated request head")
            });
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD_BYTES {
            return Ok(ReadOutcome::Bad(431, "request head too large"));
        }
        let text = match String::from_utf8(line) {
            Ok(t) => t,
            Err(_) => return Ok(ReadOutcome::Bad(400, "request head is not UTF-8")),
        };
        let text = text.trim_end_matches(['\r', '\n']).to_string();
        if text.is_empty() {
            if lines.is_empty() {
                // Tolerate stray empty lines between requests (RFC 9112 section 2.2).
                head.clear();
                continue;
            }
            break;
        }
        lines.push(text);
    }
    let mut parts = lines[0].split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if parts.next().is_none() => (m, t, v),
        _ => return Ok(ReadOutcome::Bad(400, "malformed request line")),
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Ok(ReadOutcome::Bad(505, "HTTP version not supported"));
    }
    let mut headers = Vec::new();
    for line in &lines[1..] {
        let Some((name, value)) = line.split_once(':') else {
            return Ok(ReadOutcome::Bad(400, "malformed header line"));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let mut req = Request {
        method: method.to_string(),
        path,
        query,
        headers,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
    {
        return Ok(ReadOutcome::Bad(
            411,
            "chunked request bodies are not supported",
        ));
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n <= MAX_BODY_BYTES => n,
            Ok(_) => return Ok(ReadOutcome::Bad(413, "request body too large")),
            Err(_) => return Ok(ReadOutcome::Bad(400, "malformed Content-Length")),
        },
    };
    if len > 0
        && req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        reader
            .get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }
    req.body = vec![0; len];
    reader.read_exact(&mut req.body).await?;
    let connection = req.header("connection").map(str::to_ascii_lowercase);
    let keep_alive = match version {
        "HTTP/1.1" => connection.as_deref() != Some("close"),
        _ => connection.as_deref() == Some("keep-alive"),
    };
    Ok(ReadOutcome::Request(req, keep_alive))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// The whole response in one buffer, so it leaves in one write (see the module comment).
fn serialize(resp: &Response, keep_alive: bool, date: SystemTime) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + resp.body.len());
    out.extend_from_slice(
        format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status)).as_bytes(),
    );
    for (name, value) in &resp.headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "Content-Length: {}\r\nDate: {}\r\nServer: berth-sim\r\nConnection: {}\r\n\r\n",
            resp.body.len(),
            httpdate::fmt_http_date(date),
            if keep_alive { "keep-alive" } else { "close" }
        )
        .as_bytes(),
    );
    out.extend_from_slice(&resp.body);
    out
}
