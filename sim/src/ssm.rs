//! The Systems Manager Parameter Store endpoint, on the EC2 listener: `GetParameter`,
//! `PutParameter` and `DeleteParameter` in the AWS JSON 1.1 protocol (`POST /`,
//! `X-Amz-Target: AmazonSSM.<Action>`), SigV4 for the service `ssm`, with SSM's error shape
//! (`{"__type": "...", "message": "..."}`, HTTP 400).
//!
//! IAM: with the cluster's `parameter_access`, a call signed with an instance's role
//! credentials is allowed only when one of the role's rules matches the action and the name;
//! otherwise it gets `AccessDeniedException` naming the role, the action and the parameter's
//! ARN, as AWS words it. A `SecureString` read without decryption returns an opaque base64
//! blob, as SSM returns the KMS ciphertext. No answer and no log line carries a value it was
//! not asked for.
//!
//! Faults injected on the EC2 listener (`Target::Ec2`) apply to these calls too, and its clock
//! offset is this endpoint's clock; an injected failure is answered in EC2's XML error shape
//! (`503 RequestLimitExceeded`, ...), since the fault is drawn before the request is dispatched.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::cluster::{ParameterRule, PARAMETER_ACTIONS};
use crate::faults::FaultState;
use crate::http::{Request, Response};
use crate::region::Region;

const TARGET_PREFIX: &str = "AmazonSSM.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// Standard-tier and advanced-tier value limits, in bytes ("Parameter Store quotas").
const STANDARD_MAX_VALUE: usize = 4096;
const ADVANCED_MAX_VALUE: usize = 8192;
const NAME_MAX: usize = 1011;
const MAX_LEVELS: usize = 15;

/// One stored parameter.
#[derive(Clone)]
pub(crate) struct Stored {
    pub value: String,
    pub version: i64,
    pub secure: bool,
    pub modified: SystemTime,
}

/// The region's parameters, by name.
#[derive(Default)]
pub(crate) struct ParameterStore {
    params: Mutex<BTreeMap<String, Stored>>,
}

impl ParameterStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stored>> {
        self.params.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Stored> {
        self.lock().get(name).cloned()
    }

    /// Creates or overwrites `name`; returns its version now.
    pub fn put(&self, name: &str, value: &str, secure: bool) -> i64 {
        let mut params = self.lock();
        let version = params.get(name).map_or(1, |p| p.version + 1);
        params.insert(
            name.to_string(),
            Stored {
                value: value.to_string(),
                version,
                secure,
                modified: SystemTime::now(),
            },
        );
        version
    }

    pub fn delete(&self, name: &str) -> bool {
        self.lock().remove(name).is_some()
    }
}

/// An SSM error: status, `__type`, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SsmFault {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

fn fault(kind: &'static str, message: impl Into<String>) -> SsmFault {
    SsmFault {
        status: 400,
        kind,
        message: message.into(),
    }
}

fn validation(message: impl Into<String>) -> SsmFault {
    fault("ValidationException", message)
}

fn error_response(e: &SsmFault) -> Response {
    let body = serde_json::json!({ "__type": e.kind, "message": e.message }).to_string();
    Response::new(e.status, CONTENT_TYPE, body)
        .with_header("x-amzn-RequestId", crate::ec2::request_id())
}

/// Whether the request is for this endpoint (its `X-Amz-Target` names SSM).
pub(crate) fn is_ssm(req: &Request) -> bool {
    req.header("x-amz-target")
        .is_some_and(|t| t.starts_with(TARGET_PREFIX))
}

/// The action named by `X-Amz-Target`, for the request log.
pub(crate) fn action_of(req: &Request) -> Option<String> {
    req.header("x-amz-target")?
        .strip_prefix(TARGET_PREFIX)
        .map(str::to_string)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetInput {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "WithDecryption", default)]
    with_decryption: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutInput {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Value")]
    value: String,
    #[serde(rename = "Type", default)]
    kind: Option<String>,
    #[serde(rename = "Overwrite", default)]
    overwrite: bool,
    #[serde(rename = "Tier", default)]
    tier: Option<String>,
    #[serde(rename = "Description", default)]
    _description: Option<String>,
    #[serde(rename = "DataType", default)]
    data_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteInput {
    #[serde(rename = "Name")]
    name: String,
}

/// SSM's name rules (the `PutParameter` reference).
fn check_name(name: &str) -> Result<(), SsmFault> {
    let bad = |why: &str| {
        validation(format!(
            "Parameter name: can't be prefixed with \"aws\" or \"ssm\" (case-insensitive), must be fully qualified (start with /) when it uses hierarchies, and may contain only a-zA-Z0-9_.-/ ({why})"
        ))
    };
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(bad("length"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
    {
        return Err(bad("characters"));
    }
    if name.contains('/') {
        let Some(rest) = name.strip_prefix('/') else {
            return Err(bad("not fully qualified"));
        };
        let levels: Vec<&str> = rest.split('/').collect();
        if levels.iter().any(|l| l.is_empty()) {
            return Err(bad("empty level"));
        }
        if levels.len() > MAX_LEVELS {
            return Err(fault(
                "HierarchyLevelLimitExceededException",
                format!("A hierarchy can have a maximum of {MAX_LEVELS} levels."),
            ));
        }
    }
    let bare = name.trim_start_matches('/').to_ascii_lowercase();
    if bare.starts_with("aws") || bare.starts_with("ssm") {
        return Err(bad("reserved prefix"));
    }
    Ok(())
}

/// The opaque blob SSM returns for a `SecureString` read without decryption: base64 of bytes
/// derived from the name and version, never from the value.
fn ciphertext(name: &str, version: i64) -> String {
    let mut blob = vec![0x01, 0x02, 0x02, 0x00, 0x78];
    blob.extend_from_slice(&Sha256::digest(format!("{name}#{version}").as_bytes()));
    blob.extend_from_slice(&Sha256::digest(format!("kms/{name}").as_bytes()));
    base64::engine::general_purpose::STANDARD.encode(blob)
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}

pub(crate) struct Ssm {
    region: Arc<Region>,
    store: Arc<ParameterStore>,
    access: Option<BTreeMap<String, Vec<ParameterRule>>>,
    /// The EC2 listener's faults: its clock offset is this endpoint's clock too.
    faults: Arc<FaultState>,
}

impl Ssm {
    pub fn new(
        region: Arc<Region>,
        store: Arc<ParameterStore>,
        access: Option<BTreeMap<String, Vec<ParameterRule>>>,
        faults: Arc<FaultState>,
    ) -> Self {
        Ssm {
            region,
            store,
            access,
            faults,
        }
    }

    pub fn handle(&self, req: &Request) -> Response {
        let result = self.dispatch(req);
        match result {
            Ok(body) => Response::new(200, CONTENT_TYPE, body.to_string())
                .with_header("x-amzn-RequestId", crate::ec2::request_id()),
            Err(e) => error_response(&e),
        }
    }

    fn dispatch(&self, req: &Request) -> Result<serde_json::Value, SsmFault> {
        if req.method != "POST" || req.path != "/" {
            return Err(SsmFault {
                status: 404,
                kind: "UnknownOperationException",
                message: format!(
                    "SSM is served by POST / only, not {} {}",
                    req.method, req.path
                ),
            });
        }
        let caller = self.authenticate(req)?;
        let action = action_of(req).unwrap_or_default();
        if !PARAMETER_ACTIONS.contains(&action.as_str()) {
            return Err(fault(
                "UnknownOperationException",
                format!("berth-sim does not serve AmazonSSM.{action}"),
            ));
        }
        let parse_err = |e: serde_json::Error| {
            fault(
                "SerializationException",
                format!("cannot read the {action} request: {e}"),
            )
        };
        match action.as_str() {
            "GetParameter" => {
                let input: GetInput = serde_json::from_slice(&req.body).map_err(parse_err)?;
                check_name(&input.name)?;
                self.authorize(&caller, "GetParameter", &input.name)?;
                self.get(&input)
            }
            "PutParameter" => {
                let input: PutInput = serde_json::from_slice(&req.body).map_err(parse_err)?;
                check_name(&input.name)?;
                self.authorize(&caller, "PutParameter", &input.name)?;
                self.put(&input)
            }
            _ => {
                let input: DeleteInput = serde_json::from_slice(&req.body).map_err(parse_err)?;
                check_name(&input.name)?;
                self.authorize(&caller, "DeleteParameter", &input.name)?;
                if self.store.delete(&input.name) {
                    Ok(serde_json::json!({}))
                } else {
                    Err(not_found(&input.name))
                }
            }
        }
    }

    /// Checks the signature (when the region verifies them) and says whose credentials signed
    /// the request: `Some((role, instance id))` for an instance's role, `None` for the
    /// cluster's own keys (or an unsigned region).
    fn authenticate(&self, req: &Request) -> Result<Option<(String, String)>, SsmFault> {
        if !self.region.verify_sigv4 {
            return Ok(None);
        }
        let now = self.faults.now();
        let key_id = req
            .header("authorization")
            .and_then(|a| a.split("Credential=").nth(1))
            .and_then(|c| c.split('/').next())
            .unwrap_or_default();
        let key = self.region.key(key_id);
        if key
            .as_ref()
            .and_then(|k| k.expiration)
            .is_some_and(|exp| exp <= now)
        {
            return Err(fault(
                "ExpiredTokenException",
                "The security token included in the request is expired",
            ));
        }
        crate::sigv4::verify_for(&self.region, req, now, "ssm").map_err(|e| match e.code {
            "AuthFailure" if e.message.starts_with("Credential should be scoped") => {
                fault("InvalidSignatureException", e.message)
            }
            "AuthFailure" => fault(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ),
            "SignatureDoesNotMatch" => fault("InvalidSignatureException", e.message),
            "RequestExpired" => fault(
                "InvalidSignatureException",
                "Signature expired: the request's X-Amz-Date is more than 15 minutes from the server's time",
            ),
            "MissingAuthenticationToken" => fault("MissingAuthenticationTokenException", e.message),
            _ => fault("IncompleteSignatureException", e.message),
        })?;
        Ok(key.and_then(|k| k.role_session))
    }

    fn authorize(
        &self,
        caller: &Option<(String, String)>,
        action: &str,
        name: &str,
    ) -> Result<(), SsmFault> {
        let (Some(access), Some((role, session))) = (&self.access, caller) else {
            return Ok(());
        };
        let allowed = access
            .get(role)
            .is_some_and(|rules| rules.iter().any(|r| r.allows(action, name)));
        if allowed {
            return Ok(());
        }
        let account = &self.region.account_id;
        Err(fault(
            "AccessDeniedException",
            format!(
                "User: arn:aws:sts::{account}:assumed-role/{role}/{session} is not authorized to perform: ssm:{action} on resource: {} because no identity-based policy allows the ssm:{action} action",
                self.arn(name)
            ),
        ))
    }

    fn arn(&self, name: &str) -> String {
        let sep = if name.starts_with('/') { "" } else { "/" };
        format!(
            "arn:aws:ssm:{}:{}:parameter{sep}{name}",
            self.region.region, self.region.account_id
        )
    }

    fn get(&self, input: &GetInput) -> Result<serde_json::Value, SsmFault> {
        let p = self
            .store
            .get(&input.name)
            .ok_or_else(|| not_found(&input.name))?;
        let value = if p.secure && !input.with_decryption {
            ciphertext(&input.name, p.version)
        } else {
            p.value
        };
        Ok(serde_json::json!({
            "Parameter": {
                "Name": input.name,
                "Type": if p.secure { "SecureString" } else { "String" },
                "Value": value,
                "Version": p.version,
                "LastModifiedDate": epoch_secs(p.modified),
                "ARN": self.arn(&input.name),
                "DataType": "text",
            }
        }))
    }

    fn put(&self, input: &PutInput) -> Result<serde_json::Value, SsmFault> {
        let existing = self.store.get(&input.name);
        let secure = match (input.kind.as_deref(), &existing) {
            (Some("SecureString"), _) => true,
            (Some("String"), _) => false,
            (Some("StringList"), _) => {
                return Err(validation("berth-sim stores String and SecureString only"))
            }
            (Some(other), _) => {
                return Err(validation(format!(
                    "1 validation error detected: Value '{other}' at 'type' failed to satisfy constraint: Member must satisfy enum value set: [SecureString, StringList, String]"
                )))
            }
            (None, Some(p)) => p.secure,
            (None, None) => {
                return Err(validation(
                    "A parameter type is required when you create a parameter.",
                ))
            }
        };
        if input.data_type.as_deref().is_some_and(|d| d != "text") {
            return Err(validation("berth-sim stores DataType text only"));
        }
        let (limit, tier) = match input.tier.as_deref() {
            None | Some("Standard") => (STANDARD_MAX_VALUE, "Standard"),
            Some("Advanced") => (ADVANCED_MAX_VALUE, "Advanced"),
            Some("Intelligent-Tiering") if input.value.len() > STANDARD_MAX_VALUE => {
                (ADVANCED_MAX_VALUE, "Advanced")
            }
            Some("Intelligent-Tiering") => (STANDARD_MAX_VALUE, "Standard"),
            Some(other) => {
                return Err(validation(format!(
                    "Tier {other} is not one of Standard, Advanced, Intelligent-Tiering"
                )))
            }
        };
        // Never quote the value: it may be a key.
        if input.value.is_empty() {
            return Err(validation(
                "1 validation error detected: Value at 'value' failed to satisfy constraint: Member must have length greater than or equal to 1",
            ));
        }
        if input.value.len() > limit {
            return Err(validation(format!(
                "{tier} tier parameters support a maximum parameter value of {limit} characters."
            )));
        }
        if existing.is_some() && !input.overwrite {
            return Err(fault(
                "ParameterAlreadyExists",
                "The parameter already exists. To overwrite this value, set the overwrite option in the request to true.",
            ));
        }
        let version = self.store.put(&input.name, &input.value, secure);
        Ok(serde_json::json!({ "Version": version, "Tier": tier }))
    }
}

fn not_found(name: &str) -> SsmFault {
    fault("ParameterNotFound", format!("Parameter {name} not found."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("/berth/demo/master/etcd-ca").is_ok());
        assert!(check_name("plain").is_ok());
        for bad in ["", "berth/x", "/a//b", "/a/", "/a b", "/aws/x", "ssm-x"] {
            assert_eq!(
                check_name(bad).unwrap_err().kind,
                "ValidationException",
                "{bad}"
            );
        }
        let deep = format!("/{}", vec!["l"; 16].join("/"));
        assert_eq!(
            check_name(&deep).unwrap_err().kind,
            "HierarchyLevelLimitExceededException"
        );
    }

    #[test]
    fn ciphertext_is_opaque_base64() {
        let c = ciphertext("/berth/demo/master/etcd-ca", 1);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&c)
            .unwrap();
        assert_eq!(raw.len(), 69);
        assert_ne!(c, ciphertext("/berth/demo/master/etcd-ca", 2));
    }

    #[test]
    fn store_versions() {
        let s = ParameterStore::default();
        assert_eq!(s.put("/a", "1", false), 1);
        assert_eq!(s.put("/a", "2", true), 2);
        let p = s.get("/a").unwrap();
        assert_eq!((p.value.as_str(), p.version, p.secure), ("2", 2, true));
        assert!(s.delete("/a"));
        assert!(!s.delete("/a"));
        assert_eq!(
            s.put("/a", "3", false),
            1,
            "a deleted name starts again at 1"
        );
    }
}
