//! SigV4 verification of EC2 requests: the request is signed again with aws-sigv4, using the
//! secret the region knows for the access key and the request's own `X-Amz-Date` and signed
//! headers, and the two signatures must be equal. The failures carry the EC2 error code a client
//! gets from AWS for the same mistake.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SessionTokenMode, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use crate::http::Request;
use crate::region::Region;
use crate::time_fmt::parse_amz_date;

/// How far `X-Amz-Date` may be from the server's clock: AWS allows 15 minutes either way.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a request is refused, with the status and EC2 error code AWS uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn err(status: u16, code: &'static str, message: impl Into<String>) -> AuthError {
    AuthError {
        status,
        code,
        message: message.into(),
    }
}

fn auth_failure() -> AuthError {
    err(
        401,
        "AuthFailure",
        "AWS was not able to validate the provided access credentials",
    )
}

fn mismatch() -> AuthError {
    err(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
    )
}

struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<String>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => return None,
        }
    }
    let mut scope = credential?.split('/');
    let auth = Authorization {
        access_key_id: scope.next()?,
        date: scope.next()?,
        region: scope.next()?,
        service: scope.next()?,
        signed_headers: signed?.split(';').map(str::to_string).collect(),
        signature: signature?,
    };
    (scope.next()? == "aws4_request" && scope.next().is_none()).then_some(auth)
}

/// Verify the request's SigV4 signature for the EC2 Query API against what the region knows.
pub(crate) fn verify(region: &Region, req: &Request, now: SystemTime) -> Result<(), AuthError> {
    verify_for(region, req, now, "ec2")
}

/// Verify the request's SigV4 signature, scoped to `service` (`ec2`, `ebs`). A request that
/// signs `X-Amz-Content-SHA256: UNSIGNED-PAYLOAD` (EBS PutSnapshotBlock) is verified without
/// its body, which its own checksum header then covers.
pub(crate) fn verify_for(
    region: &Region,
    req: &Request,
    now: SystemTime,
    service: &str,
) -> Result<(), AuthError> {
    let Some(header) = req.header("authorization") else {
        return Err(err(
            401,
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
        ));
    };
    let auth = parse_authorization(header).ok_or_else(|| {
        err(
            400,
            "IncompleteSignature",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters for AWS4-HMAC-SHA256",
        )
    })?;
    if auth.service != service || auth.region != region.region {
        return Err(err(
            401,
            "AuthFailure",
            format!(
                "Credential should be scoped to a valid region and service {service}, not '{}/{}'",
                auth.region, auth.service
            ),
        ));
    }
    let key = region.key(auth.access_key_id).ok_or_else(auth_failure)?;
    if key.expiration.is_some_and(|exp| exp <= now) {
        return Err(err(400, "RequestExpired", "Request has expired."));
    }
    let sent_token = req.header("x-amz-security-token");
    if sent_token != key.session_token.as_deref() {
        return Err(err(
            401,
            "AuthFailure",
            "The security token included in the request is invalid",
        ));
    }
    let amz_date = req
        .header("x-amz-date")
        .ok_or_else(|| err(400, "IncompleteSignature", "Missing X-Amz-Date header"))?;
    let time = parse_amz_date(amz_date).ok_or_else(|| {
        err(
            400,
            "IncompleteSignature",
            format!("X-Amz-Date `{amz_date}` is not like 20150830T123600Z"),
        )
    })?;
    if auth.date.len() != 8 || !amz_date.starts_with(auth.date) {
        return Err(mismatch());
    }
    let skew = now
        .duration_since(time)
        .or_else(|_| time.duration_since(now))
        .unwrap_or_default();
    if skew > MAX_SKEW {
        return Err(err(400, "RequestExpired", "Request has expired."));
    }

    let mut signed_names: Vec<String> = auth
        .signed_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    signed_names.sort();
    if !signed_names.iter().any(|h| h == "host")
        || signed_names.iter().any(|h| h == "authorization")
    {
        return Err(mismatch());
    }
    let mut headers: Vec<(&str, &str)> = Vec::new();
    for name in &signed_names {
        let mut found = false;
        for (n, v) in &req.headers {
            if n == name {
                headers.push((n.as_str(), v.as_str()));
                found = true;
            }
        }
        if !found {
            return Err(mismatch());
        }
    }
    let host = req.header("host").ok_or_else(mismatch)?;
    let uri = if req.query.is_empty() {
        format!("http://{host}{}", req.path)
    } else {
        format!("http://{host}{}?{}", req.path, req.query)
    };

    let identity: Identity = Credentials::new(
        auth.access_key_id,
        key.secret.clone(),
        key.session_token.clone(),
        None,
        "berth-sim",
    )
    .into();
    let mut settings = SigningSettings::default();
    // Sign exactly what the client says it signed, nothing excluded by default rules.
    settings.excluded_headers = None;
    settings.payload_checksum_kind = if signed_names.iter().any(|h| h == "x-amz-content-sha256") {
        PayloadChecksumKind::XAmzSha256
    } else {
        PayloadChecksumKind::NoHeader
    };
    settings.session_token_mode = if signed_names.iter().any(|h| h == "x-amz-security-token") {
        SessionTokenMode::Include
    } else {
        SessionTokenMode::Exclude
    };
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&region.region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|_| mismatch())?
        .into();
    let unsigned = signed_names.iter().any(|h| h == "x-amz-content-sha256")
        && req.header("x-amz-content-sha256") == Some("UNSIGNED-PAYLOAD");
    let body = if unsigned {
        SignableBody::UnsignedPayload
    } else {
        SignableBody::Bytes(&req.body)
    };
    let signable = SignableRequest::new(&req.method, &uri, headers.into_iter(), body)
        .map_err(|_| mismatch())?;
    let out = sign(signable, &params).map_err(|_| mismatch())?;
    let expected_headers = out
        .output()
        .headers()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, v)| parse_authorization(v).map(|a| a.signed_headers.join(";")));
    if expected_headers.as_deref() != Some(signed_names.join(";").as_str()) {
        return Err(mismatch());
    }
    if !constant_time_eq(out.signature().as_bytes(), auth.signature.as_bytes()) {
        return Err(mismatch());
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
