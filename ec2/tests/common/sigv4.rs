//! An independent SigV4 verifier (hmac + sha2, written from the AWS specification) that checks
//! the signature a request carried on the wire, as EC2 would.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::Recorded;

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug)]
pub struct Authorization {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

pub fn parse_authorization(value: &str) -> Authorization {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .expect("SigV4 algorithm");
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',').map(str::trim) {
        let (k, v) = part.split_once('=').unwrap();
        match k {
            "Credential" => credential = Some(v.to_string()),
            "SignedHeaders" => signed = Some(v.to_string()),
            "Signature" => signature = Some(v.to_string()),
            other => panic!("unexpected Authorization part {other}"),
        }
    }
    let credential = credential.unwrap();
    let scope: Vec<&str> = credential.split('/').collect();
    assert_eq!(scope.len(), 5, "{credential}");
    assert_eq!(scope[4], "aws4_request");
    Authorization {
        access_key_id: scope[0].into(),
        date: scope[1].into(),
        region: scope[2].into(),
        service: scope[3].into(),
        signed_headers: signed.unwrap().split(';').map(str::to_string).collect(),
        signature: signature.unwrap(),
    }
}

/// The signature `secret` gives `request` (path "/" and no query, as berth's Query calls).
pub fn expected_signature(request: &Recorded, secret: &str) -> String {
    let auth = parse_authorization(request.header("authorization").expect("Authorization"));
    let amz_date = request.header("x-amz-date").expect("X-Amz-Date");
    assert!(amz_date.starts_with(&auth.date));
    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let value = request
            .header(name)
            .unwrap_or_else(|| panic!("signed header {name} missing on the wire"));
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let (path, query) = request
        .target
        .split_once('?')
        .unwrap_or((&request.target, ""));
    assert!(
        query.is_empty(),
        "berth's Query calls carry no query string"
    );
    let canonical_request = format!(
        "{}\n{}\n\n{}\n{}\n{}",
        request.method,
        path,
        canonical_headers,
        auth.signed_headers.join(";"),
        hex::encode(Sha256::digest(&request.body)),
    );
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), &auth.date);
    let k_region = hmac(&k_date, &auth.region);
    let k_service = hmac(&k_region, &auth.service);
    let k_signing = hmac(&k_service, "aws4_request");
    hex::encode(hmac(&k_signing, &string_to_sign))
}

/// Whether the request's signature is the one `secret` produces.
pub fn verifies(request: &Recorded, secret: &str) -> bool {
    let auth = parse_authorization(request.header("authorization").expect("Authorization"));
    auth.signature == expected_signature(request, secret)
}
