//! The EBS direct APIs (REST + JSON, SigV4 service `ebs`) on the EC2 listener, under
//! `/snapshots`: StartSnapshot, PutSnapshotBlock, CompleteSnapshot, ListSnapshotBlocks and
//! GetSnapshotBlock.
//!
//! Strict where AWS is and moto is not: every block is exactly 512 KiB, its `x-amz-Checksum`
//! must be the base64 SHA-256 of the body (a mismatch is a `ValidationException` with reason
//! `INVALID_CHECKSUM`), blocks go only to a pending snapshot inside its volume, and
//! `x-amz-ChangedBlocksCount` must equal the number of blocks written.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::ec2::ApiError;
use crate::http::{Request, Response};
use crate::images::{Block, Caller, SnapshotRecord, Store, BLOCK_SIZE};

/// EBS volumes are at most 64 TiB.
const MAX_VOLUME_GIB: u64 = 65536;
/// Blocks of 512 KiB in one GiB.
const BLOCKS_PER_GIB: u64 = 2048;

/// The EBS action a request path and method name, if any.
pub(crate) fn action_of(method: &str, path: &str) -> Option<&'static str> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", ["snapshots"]) => Some("StartSnapshot"),
        ("POST", ["snapshots", "completion", _]) => Some("CompleteSnapshot"),
        ("PUT", ["snapshots", _, "blocks", _]) => Some("PutSnapshotBlock"),
        ("GET", ["snapshots", _, "blocks"]) => Some("ListSnapshotBlocks"),
        ("GET", ["snapshots", _, "blocks", _]) => Some("GetSnapshotBlock"),
        ("GET", ["snapshots", _, "changedblocks"]) => Some("ListChangedBlocks"),
        _ => None,
    }
}

/// Whether a path belongs to the EBS direct APIs (the EC2 Query API only uses `/`).
pub(crate) fn is_ebs_path(path: &str) -> bool {
    path == "/snapshots" || path.starts_with("/snapshots/")
}

fn err(status: u16, code: &str, reason: Option<&str>, message: impl Into<String>) -> ApiError {
    let mut code = code.to_string();
    if let Some(r) = reason {
        code = format!("{code}:{r}");
    }
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

fn validation(reason: &str, message: impl Into<String>) -> ApiError {
    err(400, "ValidationException", Some(reason), message)
}

fn not_found(id: &str) -> ApiError {
    err(
        404,
        "ResourceNotFoundException",
        Some("SNAPSHOT_NOT_FOUND"),
        format!("The snapshot '{id}' does not exist."),
    )
}

/// The EBS error shape: the type in `x-amzn-ErrorType`, `Message` and `Reason` in a JSON body.
/// An [`ApiError`] code of the form `Type:REASON` carries the reason.
pub(crate) fn error_response(e: &ApiError) -> Response {
    let (kind, reason) = match e.code.split_once(':') {
        Some((k, r)) => (k, Some(r)),
        None => (e.code.as_str(), None),
    };
    let mut body = json!({ "Message": e.message });
    if let Some(r) = reason {
        body["Reason"] = json!(r);
    }
    Response::new(e.status, "application/json", body.to_string())
        .with_header("x-amzn-ErrorType", kind)
        .with_header("x-amzn-RequestId", crate::ec2::request_id())
}

fn json_response(status: u16, body: Value) -> Response {
    Response::new(status, "application/json", body.to_string())
        .with_header("x-amzn-RequestId", crate::ec2::request_id())
}

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn query(req: &Request) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(req.query.as_bytes())
        .into_owned()
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn block_index(raw: &str, s: &SnapshotRecord) -> Result<u64, ApiError> {
    let index: u64 = raw.parse().map_err(|_| {
        validation(
            "INVALID_BLOCK",
            format!("The block index `{raw}` is not a number."),
        )
    })?;
    if index >= s.volume_size_gib * BLOCKS_PER_GIB {
        return Err(validation(
            "INVALID_BLOCK",
            format!(
                "The block index {index} is outside the {} GiB volume.",
                s.volume_size_gib
            ),
        ));
    }
    Ok(index)
}

/// Answer one EBS request (its signature already checked).
pub(crate) fn handle(
    store: &Store,
    caller: &Caller<'_>,
    action: &str,
    req: &Request,
) -> Result<Response, ApiError> {
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match action {
        "StartSnapshot" => start_snapshot(store, caller, req),
        "PutSnapshotBlock" => put_block(store, caller, parts[1], parts[3], req),
        "CompleteSnapshot" => complete(store, caller, parts[2], req),
        "ListSnapshotBlocks" => list_blocks(store, caller, parts[1], req),
        "GetSnapshotBlock" => get_block(store, caller, parts[1], parts[3], req),
        other => Err(err(
            400,
            "ValidationException",
            Some("OTHER"),
            format!("berth-sim does not implement EBS {other}."),
        )),
    }
}

fn start_snapshot(store: &Store, caller: &Caller<'_>, req: &Request) -> Result<Response, ApiError> {
    let body: Value = serde_json::from_slice(&req.body).map_err(|e| {
        err(
            400,
            "ValidationException",
            Some("OTHER"),
            format!("The request body is not JSON: {e}"),
        )
    })?;
    let obj = body.as_object().ok_or_else(|| {
        err(
            400,
            "ValidationException",
            Some("OTHER"),
            "The request body is not a JSON object.",
        )
    })?;
    for key in obj.keys() {
        if ![
            "VolumeSize",
            "ParentSnapshotId",
            "Tags",
            "Description",
            "ClientToken",
            "Encrypted",
            "KmsKeyArn",
            "Timeout",
        ]
        .contains(&key.as_str())
        {
            return Err(err(
                400,
                "ValidationException",
                Some("OTHER"),
                format!("Unknown field `{key}`."),
            ));
        }
    }
    let size = obj
        .get("VolumeSize")
        .and_then(Value::as_u64)
        .filter(|n| (1..=MAX_VOLUME_GIB).contains(n))
        .ok_or_else(|| {
            validation(
                "INVALID_VOLUME_SIZE",
                "VolumeSize must be a number of GiB from 1 to 65536.",
            )
        })?;
    if obj.contains_key("ParentSnapshotId") || obj.contains_key("KmsKeyArn") {
        return Err(err(
            400,
            "ValidationException",
            Some("OTHER"),
            "berth-sim does not implement parent snapshots or encryption.",
        ));
    }
    if let Some(t) = obj.get("Timeout") {
        if !t.as_u64().is_some_and(|m| (10..=4320).contains(&m)) {
            return Err(validation("OTHER", "Timeout must be 10 to 4320 minutes."));
        }
    }
    let mut tags = BTreeMap::new();
    if let Some(list) = obj.get("Tags") {
        for t in list.as_array().into_iter().flatten() {
            let k = t.get("Key").and_then(Value::as_str);
            let v = t.get("Value").and_then(Value::as_str).unwrap_or("");
            match k {
                Some(k) if !k.is_empty() => {
                    tags.insert(k.to_string(), v.to_string());
                }
                _ => return Err(validation("OTHER", "Every tag needs a Key.")),
            }
        }
    }
    let s = store.start_snapshot(
        caller,
        size,
        obj.get("Description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        tags,
        obj.get("ClientToken")
            .and_then(Value::as_str)
            .map(str::to_string),
    );
    let tags: Vec<Value> = s
        .tags
        .iter()
        .map(|(k, v)| json!({"Key": k, "Value": v}))
        .collect();
    Ok(json_response(
        201,
        json!({
            "SnapshotId": s.id,
            "OwnerId": s.owner_id,
            "Status": s.status,
            "StartTime": epoch_seconds(s.start_time),
            "VolumeSize": s.volume_size_gib,
            "BlockSize": BLOCK_SIZE,
            "Tags": tags,
            "Description": s.description,
        }),
    ))
}

fn put_block(
    store: &Store,
    caller: &Caller<'_>,
    id: &str,
    index: &str,
    req: &Request,
) -> Result<Response, ApiError> {
    let length = req.header("x-amz-data-length").unwrap_or("");
    if length.parse::<usize>().ok() != Some(BLOCK_SIZE) || req.body.len() != BLOCK_SIZE {
        return Err(validation(
            "INVALID_BLOCK",
            format!(
                "x-amz-Data-Length ({length}) and the body ({} bytes) must both be 524288.",
                req.body.len()
            ),
        ));
    }
    if req.header("x-amz-checksum-algorithm") != Some("SHA256") {
        return Err(validation(
            "INVALID_CHECKSUM",
            "x-amz-Checksum-Algorithm must be SHA256.",
        ));
    }
    let checksum = req
        .header("x-amz-checksum")
        .ok_or_else(|| validation("INVALID_CHECKSUM", "x-amz-Checksum is missing."))?;
    if let Some(p) = req.header("x-amz-progress") {
        if !p.parse::<u8>().is_ok_and(|p| p <= 100) {
            return Err(validation("OTHER", "x-amz-Progress must be 0 to 100."));
        }
    }
    let actual = b64(&Sha256::digest(&req.body));
    if actual != checksum {
        return Err(validation(
            "INVALID_CHECKSUM",
            "The checksum of the block data does not match x-amz-Checksum.",
        ));
    }
    let data = std::sync::Arc::new(req.body.clone());
    store
        .with_snapshot(caller, id, |s| {
            let index = block_index(index, s)?;
            if s.status != "pending" || s.changed_blocks_count.is_some() {
                return Err(validation(
                    "INVALID_SNAPSHOT_STATE",
                    format!("The snapshot {} is not pending.", s.id),
                ));
            }
            s.blocks.insert(
                index,
                Block {
                    data,
                    checksum: actual.clone(),
                    token: format!("{:032x}", fastrand::u128(..)),
                },
            );
            Ok(())
        })
        .ok_or_else(|| not_found(id))??;
    Ok(json_response(201, json!({}))
        .with_header("x-amz-Checksum", actual)
        .with_header("x-amz-Checksum-Algorithm", "SHA256"))
}

fn complete(
    store: &Store,
    caller: &Caller<'_>,
    id: &str,
    req: &Request,
) -> Result<Response, ApiError> {
    let count: u64 = req
        .header("x-amz-changedblockscount")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            validation(
                "OTHER",
                "x-amz-ChangedBlocksCount is missing or not a number.",
            )
        })?;
    if req.header("x-amz-checksum").is_some() {
        return Err(validation(
            "OTHER",
            "berth-sim does not verify aggregated snapshot checksums; send none.",
        ));
    }
    store
        .with_snapshot(caller, id, |s| {
            if s.status != "pending" || s.changed_blocks_count.is_some() {
                return Err(validation(
                    "INVALID_SNAPSHOT_STATE",
                    format!("The snapshot {} was already completed.", s.id),
                ));
            }
            if count != s.blocks.len() as u64 {
                return Err(validation(
                    "OTHER",
                    format!(
                        "ChangedBlocksCount {count} does not match the {} blocks written.",
                        s.blocks.len()
                    ),
                ));
            }
            Store::begin_settling(s, count);
            Ok(())
        })
        .ok_or_else(|| not_found(id))??;
    Ok(json_response(202, json!({"Status": "pending"})))
}

fn list_blocks(
    store: &Store,
    caller: &Caller<'_>,
    id: &str,
    req: &Request,
) -> Result<Response, ApiError> {
    let q = query(req);
    let max = match q.get("maxResults") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (100..=10000).contains(n))
            .ok_or_else(|| validation("OTHER", "maxResults must be 100 to 10000."))?,
        None => 10000,
    };
    let start: u64 = match (q.get("pageToken"), q.get("startingBlockIndex")) {
        (Some(t), _) => t
            .parse()
            .map_err(|_| validation("INVALID_PAGE_TOKEN", "Invalid page token."))?,
        (None, Some(i)) => i
            .parse()
            .map_err(|_| validation("OTHER", "startingBlockIndex is not a number."))?,
        (None, None) => 0,
    };
    let s = store.snapshot(id).filter(|s| s.region == caller.region);
    let s = s.ok_or_else(|| not_found(id))?;
    if s.status != "completed" {
        return Err(validation(
            "INVALID_SNAPSHOT_STATE",
            format!("The snapshot {id} is not completed."),
        ));
    }
    let mut blocks = Vec::new();
    let mut next = None;
    for (index, b) in s.blocks.range(start..) {
        if blocks.len() == max {
            next = Some(index.to_string());
            break;
        }
        blocks.push(json!({"BlockIndex": index, "BlockToken": b.token}));
    }
    let mut body = json!({
        "Blocks": blocks,
        "VolumeSize": s.volume_size_gib,
        "BlockSize": BLOCK_SIZE,
        "ExpiryTime": epoch_seconds(SystemTime::now()) + 7.0 * 86400.0,
    });
    if let Some(t) = next {
        body["NextToken"] = json!(t);
    }
    Ok(json_response(200, body))
}

fn get_block(
    store: &Store,
    caller: &Caller<'_>,
    id: &str,
    index: &str,
    req: &Request,
) -> Result<Response, ApiError> {
    let q = query(req);
    let token = q
        .get("blockToken")
        .ok_or_else(|| validation("INVALID_BLOCK_TOKEN", "blockToken is missing."))?;
    let s = store.snapshot(id).filter(|s| s.region == caller.region);
    let s = s.ok_or_else(|| not_found(id))?;
    let index = block_index(index, &s)?;
    let block = s
        .blocks
        .get(&index)
        .filter(|b| &b.token == token)
        .ok_or_else(|| validation("INVALID_BLOCK_TOKEN", "The block token is not valid."))?;
    Ok(
        Response::new(200, "application/octet-stream", block.data.as_slice())
            .with_header("x-amz-Data-Length", BLOCK_SIZE.to_string())
            .with_header("x-amz-Checksum", block.checksum.clone())
            .with_header("x-amz-Checksum-Algorithm", "SHA256"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(action_of("POST", "/snapshots"), Some("StartSnapshot"));
        assert_eq!(
            action_of("PUT", "/snapshots/snap-1/blocks/7"),
            Some("PutSnapshotBlock")
        );
        assert_eq!(
            action_of("POST", "/snapshots/completion/snap-1"),
            Some("CompleteSnapshot")
        );
        assert_eq!(
            action_of("GET", "/snapshots/snap-1/blocks"),
            Some("ListSnapshotBlocks")
        );
        assert_eq!(
            action_of("GET", "/snapshots/snap-1/blocks/3"),
            Some("GetSnapshotBlock")
        );
        assert_eq!(action_of("DELETE", "/snapshots/snap-1"), None);
        assert!(is_ebs_path("/snapshots/x"));
        assert!(!is_ebs_path("/"));
    }

    #[test]
    fn error_shape_carries_type_and_reason() {
        let r = error_response(&validation("INVALID_CHECKSUM", "bad"));
        assert_eq!(r.status, 400);
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| n == "x-amzn-ErrorType" && v == "ValidationException"));
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["Reason"], "INVALID_CHECKSUM");
        assert_eq!(body["Message"], "bad");
    }
}
