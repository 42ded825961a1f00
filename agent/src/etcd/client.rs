//! A client of etcd's v3 JSON gateway (`POST /v3/...`, served on the client URL next to gRPC
//! since etcd 3.3), over TLS with this master's client certificate.
//!
//! Only what the etcd tier needs: member list/add/promote/remove, status, a key put and range,
//! and the snapshot stream. Every call has its own timeout and a bounded answer size; retries and
//! pacing belong to the caller, who knows which errors mean "not yet" (a learner not caught up,
//! a member started less than 5 s ago) and which mean "done" (a member already removed).

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use super::decide::{Member, View};

/// A status or member call to a live member answers in milliseconds; one that is partitioned
/// away never does. Short, so that one dead member costs a look at the cluster little.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Membership changes go through raft and wait for the apply: etcd's own request timeout is 5 s
/// plus the election timeout.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect to a member on the same network.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest JSON answer read (a member list of hundreds of members is a few tens of KiB).
const MAX_ANSWER: usize = 1 << 20;
/// A snapshot chunk line (etcd sends 32 KiB blobs, base64 in JSON).
const MAX_SNAPSHOT_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// etcd answered with an error (`{"error": ..., "code": N}`); `message` is etcd's text, cut
    /// to 256 bytes.
    #[error("etcd at {url}: {message}")]
    Refused { url: String, message: String },
    #[error("etcd at {url}: unexpected answer: {reason}")]
    Answer { url: String, reason: String },
    #[error("the TLS material in {what} is unusable: {reason}")]
    Tls { what: &'static str, reason: String },
}

impl EtcdError {
    /// etcd's own words, for the callers that match on them.
    pub fn message(&self) -> &str {
        match self {
            EtcdError::Refused { message, .. } => message,
            _ => "",
        }
    }
}

/// The PEM material the client presents and trusts.
pub struct ClientTls<'a> {
    pub ca_pem: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

/// What `Status` says of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub member_id: u64,
    pub cluster_id: u64,
    /// 0 when the member knows no leader.
    pub leader: u64,
    pub is_learner: bool,
    pub db_size: u64,
    pub raft_index: u64,
}

pub struct EtcdClient {
    http: reqwest::Client,
}

/// The first key's value of a range answer (`{"kvs": [{"value": BASE64}]}`): `None` when no key
/// matched, empty for a key whose value is empty (the gateway then leaves `value` out).
fn first_value(range: &Value, endpoint: &str) -> Result<Option<Vec<u8>>, EtcdError> {
    let Some(kv) = range
        .get("kvs")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    else {
        return Ok(None);
    };
    match kv.get("value").and_then(Value::as_str) {
        None => Ok(Some(Vec::new())),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Some)
            .map_err(|e| EtcdError::Answer {
                url: endpoint.to_string(),
                reason: format!("a value that is not base64: {e}"),
            }),
    }
}

fn u64_field(v: &Value, key: &str) -> u64 {
    match v.get(key) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| s.chars().take(256).collect())
                .collect()
        })
        .unwrap_or_default()
}

fn member_of(v: &Value) -> Member {
    Member {
        id: u64_field(v, "ID"),
        name: v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .chars()
            .take(64)
            .collect(),
        peer_urls: strings(v, "peerURLs"),
        client_urls: strings(v, "clientURLs"),
        is_learner: v.get("isLearner").and_then(Value::as_bool).unwrap_or(false),
    }
}

fn cut(s: &str) -> String {
    let s: String = s.chars().filter(|c| !c.is_control()).collect();
    if s.len() > 256 {
        let mut end = 256;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    } else {
        s
    }
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl EtcdClient {
    /// A client presenting `tls`'s certificate and trusting only its CA.
    pub fn new(tls: &ClientTls<'_>) -> Result<EtcdClient, EtcdError> {
        let ca =
            reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).map_err(|e| EtcdError::Tls {
                what: "the cluster CA",
                reason: e.to_string(),
            })?;
        let mut pem = tls.cert_pem.as_bytes().to_vec();
        pem.extend_from_slice(tls.key_pem.as_bytes());
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| EtcdError::Tls {
            what: "the agent's client certificate",
            reason: e.to_string(),
        })?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| EtcdError::Tls {
                what: "the client",
                reason: e.to_string(),
            })?;
        Ok(EtcdClient { http })
    }

    async fn call(
        &self,
        endpoint: &str,
        path: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, EtcdError> {
        let url = format!("{}{path}", endpoint.trim_end_matches('/'));
        let unreachable = |e: reqwest::Error| EtcdError::Unreachable {
            url: url.clone(),
            reason: cut(&error_chain(&e)),
        };
        let mut resp = self
            .http
            .post(&url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_ANSWER {
                return Err(EtcdError::Answer {
                    url,
                    reason: format!("more than {MAX_ANSWER} bytes"),
                });
            }
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| EtcdError::Answer {
            url: url.clone(),
            reason: format!("HTTP {status}, not JSON: {e}"),
        })?;
        if let Some(msg) = v
            .get("error")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .filter(|_| !status.is_success() || v.get("error").is_some())
        {
            return Err(EtcdError::Refused {
                url,
                message: cut(msg),
            });
        }
        if !status.is_success() {
            return Err(EtcdError::Answer {
                url,
                reason: format!("HTTP {status}"),
            });
        }
        Ok(v)
    }

    pub async fn status(&self, endpoint: &str) -> Result<Status, EtcdError> {
        let v = self
            .call(endpoint, "/v3/maintenance/status", json!({}), CALL_TIMEOUT)
            .await?;
        let header = v.get("header").cloned().unwrap_or(Value::Null);
        Ok(Status {
            member_id: u64_field(&header, "member_id"),
            cluster_id: u64_field(&header, "cluster_id"),
            leader: u64_field(&v, "leader"),
            is_learner: v.get("isLearner").and_then(Value::as_bool).unwrap_or(false),
            db_size: u64_field(&v, "dbSize"),
            raft_index: u64_field(&v, "raftIndex"),
        })
    }

    /// The member list and cluster id as `endpoint` knows them.
    pub async fn members(&self, endpoint: &str) -> Result<(u64, Vec<Member>), EtcdError> {
        let v = self
            .call(endpoint, "/v3/cluster/member/list", json!({}), CALL_TIMEOUT)
            .await?;
        let header = v.get("header").cloned().unwrap_or(Value::Null);
        let members = v
            .get("members")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(member_of).collect())
            .unwrap_or_default();
        Ok((u64_field(&header, "cluster_id"), members))
    }

    /// `MemberAdd` as a learner; returns the new member's id and the member list after it.
    pub async fn add_learner(
        &self,
        endpoint: &str,
        peer_url: &str,
    ) -> Result<(u64, Vec<Member>), EtcdError> {
        let v = self
            .call(
                endpoint,
                "/v3/cluster/member/add",
                json!({"peerURLs": [peer_url], "isLearner": true}),
                CHANGE_TIMEOUT,
            )
            .await?;
        let id = v.get("member").map(|m| u64_field(m, "ID")).unwrap_or(0);
        let members = v
            .get("members")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(member_of).collect())
            .unwrap_or_default();
        Ok((id, members))
    }

    pub async fn promote(&self, endpoint: &str, id: u64) -> Result<(), EtcdError> {
        self.call(
            endpoint,
            "/v3/cluster/member/promote",
            json!({"ID": id.to_string()}),
            CHANGE_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn remove(&self, endpoint: &str, id: u64) -> Result<(), EtcdError> {
        self.call(
            endpoint,
            "/v3/cluster/member/remove",
            json!({"ID": id.to_string()}),
            CHANGE_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn put(&self, endpoint: &str, key: &str, value: &[u8]) -> Result<(), EtcdError> {
        self.call(
            endpoint,
            "/v3/kv/put",
            json!({"key": b64(key.as_bytes()), "value": b64(value)}),
            CHANGE_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// The value of `key`, `None` when absent.
    pub async fn get(&self, endpoint: &str, key: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        let v = self
            .call(
                endpoint,
                "/v3/kv/range",
                json!({"key": b64(key.as_bytes())}),
                CALL_TIMEOUT,
            )
            .await?;
        first_value(&v, endpoint)
    }

    /// Puts `key` only if it does not exist (a transaction comparing its create revision with
    /// 0). Returns `None` when this call created it, else the value that is there.
    pub async fn create(
        &self,
        endpoint: &str,
        key: &str,
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, EtcdError> {
        self.create_leased(endpoint, key, value, 0).await
    }

    /// [`EtcdClient::create`], the key attached to `lease` (0: none).
    pub async fn create_leased(
        &self,
        endpoint: &str,
        key: &str,
        value: &[u8],
        lease: u64,
    ) -> Result<Option<Vec<u8>>, EtcdError> {
        let compare = json!({"target": "CREATE", "result": "EQUAL", "create_revision": "0"});
        self.put_if(endpoint, key, compare, value, lease).await
    }

    /// Replaces `key`'s value only if it is `old` (a transaction comparing the value). Returns
    /// `None` when this call replaced it, else the value that is there (empty when absent).
    pub async fn swap(
        &self,
        endpoint: &str,
        key: &str,
        old: &[u8],
        new: &[u8],
    ) -> Result<Option<Vec<u8>>, EtcdError> {
        self.swap_leased(endpoint, key, old, new, 0).await
    }

    /// [`EtcdClient::swap`], the new value attached to `lease` (0: none).
    pub async fn swap_leased(
        &self,
        endpoint: &str,
        key: &str,
        old: &[u8],
        new: &[u8],
        lease: u64,
    ) -> Result<Option<Vec<u8>>, EtcdError> {
        let compare = json!({"target": "VALUE", "result": "EQUAL", "value": b64(old)});
        self.put_if(endpoint, key, compare, new, lease).await
    }

    /// `LeaseGrant`: a new lease of `ttl` seconds; its id. Keys attached to it are deleted when
    /// it expires.
    pub async fn grant(&self, endpoint: &str, ttl: u64) -> Result<u64, EtcdError> {
        let v = self
            .call(
                endpoint,
                "/v3/lease/grant",
                json!({"TTL": ttl.to_string()}),
                CHANGE_TIMEOUT,
            )
            .await?;
        match u64_field(&v, "ID") {
            0 => Err(EtcdError::Answer {
                url: endpoint.to_string(),
                reason: "a lease grant without an ID".into(),
            }),
            id => Ok(id),
        }
    }

    /// A transaction: puts `value` at `key` (attached to `lease`, 0 for none) if `compare` (a
    /// `Compare` without its key) holds, else reads the key back. `None` when it put.
    async fn put_if(
        &self,
        endpoint: &str,
        key: &str,
        mut compare: Value,
        value: &[u8],
        lease: u64,
    ) -> Result<Option<Vec<u8>>, EtcdError> {
        let k = b64(key.as_bytes());
        compare["key"] = Value::String(k.clone());
        let body = json!({
            "compare": [compare],
            "success": [{"request_put": {"key": k, "value": b64(value), "lease": lease.to_string()}}],
            "failure": [{"request_range": {"key": k}}],
        });
        let v = self
            .call(endpoint, "/v3/kv/txn", body, CHANGE_TIMEOUT)
            .await?;
        if v.get("succeeded").and_then(Value::as_bool).unwrap_or(false) {
            return Ok(None);
        }
        let range = v
            .get("responses")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|r| r.get("response_range"))
            .cloned()
            .unwrap_or(Value::Null);
        Ok(Some(first_value(&range, endpoint)?.unwrap_or_default()))
    }

    /// `Snapshot`: the member's whole backend, streamed, into `out`; returns its size in bytes.
    /// The stream's last chunk carries etcd's SHA-256 of the data, as `etcdctl snapshot save`
    /// writes it, so `etcdctl snapshot restore` verifies the file.
    pub async fn snapshot(
        &self,
        endpoint: &str,
        out: &mut impl std::io::Write,
        timeout: Duration,
    ) -> Result<u64, EtcdError> {
        let url = format!("{}/v3/maintenance/snapshot", endpoint.trim_end_matches('/'));
        let unreachable = |e: &dyn std::fmt::Display| EtcdError::Unreachable {
            url: url.clone(),
            reason: cut(&e.to_string()),
        };
        let mut resp = self
            .http
            .post(&url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body("{}")
            .send()
            .await
            .map_err(|e| unreachable(&error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(EtcdError::Answer {
                url,
                reason: format!("HTTP {}", resp.status()),
            });
        }
        let mut pending: Vec<u8> = Vec::new();
        let mut written = 0u64;
        let mut ended = false;
        while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(&e))? {
            pending.extend_from_slice(&chunk);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                ended |= self.snapshot_line(&url, &line, out, &mut written)?;
            }
            if pending.len() > MAX_SNAPSHOT_LINE {
                return Err(EtcdError::Answer {
                    url,
                    reason: "a snapshot chunk longer than 1 MiB".into(),
                });
            }
        }
        if !pending.is_empty() {
            ended |= self.snapshot_line(&url, &pending, out, &mut written)?;
        }
        if !ended {
            return Err(EtcdError::Answer {
                url,
                reason: "the snapshot stream ended before its last chunk".into(),
            });
        }
        Ok(written)
    }

    /// One line of the snapshot stream; true when it was the last chunk.
    fn snapshot_line(
        &self,
        url: &str,
        line: &[u8],
        out: &mut impl std::io::Write,
        written: &mut u64,
    ) -> Result<bool, EtcdError> {
        let bad = |reason: String| EtcdError::Answer {
            url: url.to_string(),
            reason,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(false);
        }
        let v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("chunk: {e}")))?;
        if let Some(e) = v.get("error") {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| e.as_str())
                .unwrap_or("error");
            return Err(EtcdError::Refused {
                url: url.to_string(),
                message: cut(msg),
            });
        }
        let result = v
            .get("result")
            .ok_or_else(|| bad("chunk without result".into()))?;
        if let Some(blob) = result.get("blob").and_then(Value::as_str) {
            let data = base64::engine::general_purpose::STANDARD
                .decode(blob)
                .map_err(|e| bad(format!("chunk not base64: {e}")))?;
            out.write_all(&data)
                .map_err(|e| bad(format!("writing the snapshot: {e}")))?;
            *written += data.len() as u64;
        }
        Ok(u64_field(result, "remaining_bytes") == 0)
    }
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The cluster as seen through the first of `endpoints` that answers with a leader (or, when
/// none knows a leader, the first that answers at all), and every member's health.
pub async fn look(client: &EtcdClient, endpoints: &[String]) -> Option<View> {
    let mut fallback: Option<(u64, Vec<Member>)> = None;
    let mut chosen: Option<(u64, Vec<Member>, u64)> = None;
    for ep in endpoints {
        let Ok(st) = client.status(ep).await else {
            continue;
        };
        let Ok((cluster_id, members)) = client.members(ep).await else {
            continue;
        };
        if st.leader != 0 {
            chosen = Some((cluster_id, members, st.leader));
            break;
        }
        if fallback.is_none() {
            fallback = Some((cluster_id, members));
        }
    }
    let (cluster_id, members, leader) = match (chosen, fallback) {
        (Some((c, m, l)), _) => (c, m, Some(l)),
        (None, Some((c, m))) => (c, m, None),
        (None, None) => return None,
    };
    let mut healthy = std::collections::BTreeSet::new();
    for m in &members {
        let Some(url) = m.client_urls.first() else {
            continue;
        };
        if let Ok(st) = client.status(url).await {
            if st.leader != 0 && st.member_id == m.id {
                healthy.insert(m.id);
            }
        }
    }
    Some(View {
        cluster_id,
        members,
        leader,
        healthy,
    })
}
