//! SigV4 signing of one HTTP request with role credentials, through `aws-sigv4`.
//!
//! Shared by the EC2 Query client and the EBS direct APIs and RegisterImage in
//! `berth-image`. Callers sign each attempt afresh, so a retried request carries a new
//! `X-Amz-Date` and never expires in flight.

use std::time::SystemTime;

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use http::header::{HeaderName, AUTHORIZATION};

use crate::model::Credentials;

const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
const X_AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");

/// Why a request could not be signed. Never carries credential material.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot sign a request to {uri}: the URI has no host")]
    NoHost { uri: String },
    #[error("cannot sign a request to {uri}: header {name} is not valid UTF-8")]
    HeaderNotUtf8 { uri: String, name: String },
    #[error("cannot sign a request: {field} is empty")]
    Empty { field: &'static str },
    #[error("cannot sign a request to {uri}: {source}")]
    Signing {
        uri: String,
        #[source]
        source: aws_sigv4::http_request::SigningError,
    },
}

/// Signs `req` in place for `service` in `region` at time `at`: sets `Authorization`,
/// `X-Amz-Date` and, when the credentials carry a session token, `X-Amz-Security-Token`
/// (included in the signature, as EC2 and the EBS direct APIs accept).
///
/// Any previous signature headers are removed first, so a request may be re-signed.
pub(crate) fn sign_request(
    req: &mut http::Request<Vec<u8>>,
    creds: &Credentials,
    region: &str,
    service: &str,
    at: SystemTime,
) -> Result<(), SignError> {
    sign_request_with(req, creds, region, service, at, Payload::Signed)
}

/// How the body enters the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The body's SHA-256 is part of the canonical request (no extra header): what the EC2
    /// Query API and the JSON calls of the EBS direct APIs expect.
    Signed,
    /// `X-Amz-Content-SHA256: UNSIGNED-PAYLOAD`, signed: what EBS `PutSnapshotBlock` expects
    /// (its body is covered by the signed `x-amz-Checksum` header instead), as the AWS SDKs send it.
    Unsigned,
}

/// As [`sign_request`], choosing how the body is signed.
pub fn sign_request_with(
    req: &mut http::Request<Vec<u8>>,
    creds: &Credentials,
    region: &str,
    service: &str,
    at: SystemTime,
    payload: Payload,
) -> Result<(), SignError> {
    let uri = req.uri().to_string();
    if req.uri().host().map_or(true, str::is_empty) {
        return Err(SignError::NoHost { uri });
    }
    for (field, value) in [
        ("access key id", creds.access_key_id.as_str()),
        ("secret access key", creds.secret_access_key.as_str()),
        ("region", region),
        ("service", service),
    ] {
        if value.is_empty() {
            return Err(SignError::Empty { field });
        }
    }
    for name in [
        AUTHORIZATION,
        X_AMZ_DATE,
        X_AMZ_SECURITY_TOKEN,
        X_AMZ_CONTENT_SHA256,
    ] {
        req.headers_mut().remove(name);
    }

    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone().filter(|t| !t.is_empty()),
        creds.expiration,
        "berth",
    )
    .into();
    let mut settings = SigningSettings::default();
    if payload == Payload::Unsigned {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(at)
        .settings(settings)
        .build()
        .expect("identity, region, name, time and settings are all set")
        .into();

    let mut headers = Vec::with_capacity(req.headers().len());
    for (name, value) in req.headers() {
        let value = value.to_str().map_err(|_| SignError::HeaderNotUtf8 {
            uri: uri.clone(),
            name: name.to_string(),
        })?;
        headers.push((name.as_str(), value));
    }
    let body = match payload {
        Payload::Signed => SignableBody::Bytes(req.body()),
        Payload::Unsigned => SignableBody::UnsignedPayload,
    };
    let signable = SignableRequest::new(
        req.method().as_str(),
        uri.as_str(),
        headers.into_iter(),
        body,
    )
    .map_err(|source| SignError::Signing {
        uri: uri.clone(),
        source,
    })?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|source| SignError::Signing {
            uri: uri.clone(),
            source,
        })?
        .into_parts();
    instructions.apply_to_request_http1x(req);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn example_creds(token: Option<&str>) -> Credentials {
        // The documented AWS SigV4 test-suite credentials.
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_string),
            expiration: None,
        }
    }

    /// 2015-08-30T12:36:00Z, the time of the AWS SigV4 test suite.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    #[test]
    fn matches_the_aws_test_suite_get_vanilla() {
        let mut req = http::Request::builder()
            .method("GET")
            .uri("https://example.amazonaws.com/")
            .body(Vec::new())
            .unwrap();
        sign_request(
            &mut req,
            &example_creds(None),
            "us-east-1",
            "service",
            suite_time(),
        )
        .unwrap();
        assert_eq!(req.headers()["x-amz-date"], "20150830T123600Z");
        assert_eq!(
            req.headers()["authorization"],
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
        assert!(req.headers().get("x-amz-security-token").is_none());
    }

    #[test]
    fn session_token_is_sent_and_signed() {
        let mut req = http::Request::builder()
            .method("POST")
            .uri("https://ec2.us-east-1.amazonaws.com/")
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(b"Action=DescribeInstances&Version=2016-11-15".to_vec())
            .unwrap();
        let creds = example_creds(Some("session-token-value"));
        sign_request(&mut req, &creds, "us-east-1", "ec2", suite_time()).unwrap();
        assert_eq!(req.headers()["x-amz-security-token"], "session-token-value");
        let auth = req.headers()["authorization"].to_str().unwrap().to_string();
        assert!(
            auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"),
            "{auth}"
        );
        // Re-signing replaces, never duplicates, the signature headers.
        sign_request(&mut req, &creds, "us-east-1", "ec2", suite_time()).unwrap();
        assert_eq!(req.headers().get_all("authorization").iter().count(), 1);
        assert_eq!(req.headers()["authorization"], auth.as_str());
    }

    #[test]
    fn unsigned_payload_is_declared_and_signed() {
        let mut req = http::Request::builder()
            .method("PUT")
            .uri("https://ebs.us-east-1.amazonaws.com/snapshots/snap-1/blocks/0")
            .header("x-amz-checksum", "abc=")
            .body(vec![7u8; 16])
            .unwrap();
        let creds = example_creds(None);
        sign_request_with(
            &mut req,
            &creds,
            "us-east-1",
            "ebs",
            suite_time(),
            Payload::Unsigned,
        )
        .unwrap();
        assert_eq!(req.headers()["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
        let auth = req.headers()["authorization"].to_str().unwrap().to_string();
        assert!(
            auth.contains("SignedHeaders=host;x-amz-checksum;x-amz-content-sha256;x-amz-date"),
            "{auth}"
        );
        // The signature does not depend on the body.
        let mut other = req.clone();
        *other.body_mut() = vec![9u8; 16];
        sign_request_with(
            &mut other,
            &creds,
            "us-east-1",
            "ebs",
            suite_time(),
            Payload::Unsigned,
        )
        .unwrap();
        assert_eq!(other.headers()["authorization"], auth.as_str());
        // Signing it again the ordinary way drops the declaration.
        sign_request(&mut other, &creds, "us-east-1", "ebs", suite_time()).unwrap();
        assert!(other.headers().get("x-amz-content-sha256").is_none());
    }

    #[test]
    fn refuses_a_uri_without_host() {
        let mut req = http::Request::builder()
            .uri("/relative")
            .body(Vec::new())
            .unwrap();
        let err = sign_request(
            &mut req,
            &example_creds(None),
            "us-east-1",
            "ec2",
            suite_time(),
        )
        .unwrap_err();
        assert!(matches!(err, SignError::NoHost { .. }), "{err}");
    }
}
