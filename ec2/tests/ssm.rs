//! The Parameter Store client against scripted SSM endpoints on 127.0.0.1: the exact request
//! (target header, JSON body, SigV4 for service `ssm` checked by an independent verifier),
//! retries of 5xx and throttling, the answers that are not errors (ParameterNotFound,
//! ParameterAlreadyExists), a typed AccessDenied, and values that never reach an error.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use berth_ec2::ssm::{validate_name, RESPONSE_MAX_BYTES};
use berth_ec2::{Credentials, ParameterType, PutOutcome, SsmClient, SsmError};
use common::{fast_policy, sigv4, Recorded, Reply, Server};

const ACCESS_KEY: &str = "ASIAIOSFODNN7SSMTEST";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzSSMSECRET";
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEBYaDSSMSESSIONTOKENxyz+/=";
const REGION: &str = "eu-west-1";
const CA_NAME: &str = "/berth/c1/master/etcd-ca";
const CA_VALUE: &str = "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC";

fn creds() -> Credentials {
    Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET.into(),
        session_token: Some(SESSION_TOKEN.into()),
        expiration: None,
    }
}

fn json_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::status(
        status,
        serde_json::json!({ "__type": kind, "message": message }).to_string(),
    )
    .with_header("content-type", "application/x-amz-json-1.1")
}

fn get_answer(name: &str, kind: &str, value: &str, version: i64) -> Reply {
    Reply::ok(
        serde_json::json!({
            "Parameter": {
                "Name": name,
                "Type": kind,
                "Value": value,
                "Version": version,
                "LastModifiedDate": 1.717e9,
                "ARN": format!("arn:aws:ssm:{REGION}:123456789012:parameter{name}"),
                "DataType": "text"
            }
        })
        .to_string(),
    )
    .with_header("content-type", "application/x-amz-json-1.1")
}

/// Plays `script` in order (the last reply repeats), after checking every signature.
struct Scripted {
    script: Mutex<VecDeque<Reply>>,
    bad_signatures: Mutex<u32>,
}

async fn serve(script: Vec<Reply>) -> (Server, Arc<Scripted>) {
    let fake = Arc::new(Scripted {
        script: Mutex::new(script.into()),
        bad_signatures: Mutex::new(0),
    });
    let f = fake.clone();
    let server = Server::start(move |req: &Recorded| {
        if !sigv4::verifies(req, SECRET) {
            *f.bad_signatures.lock().unwrap() += 1;
            return json_error(400, "InvalidSignatureException", "signature mismatch");
        }
        let mut script = f.script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script.front().cloned().expect("a scripted reply")
        }
    })
    .await;
    (server, fake)
}

fn client(server: &Server) -> SsmClient {
    SsmClient::new(server.url(), REGION.into(), fast_policy())
}

fn body_of(req: &Recorded) -> serde_json::Value {
    serde_json::from_slice(&req.body).expect("the request body is JSON")
}

#[tokio::test]
async fn get_parameter_sends_the_documented_request() {
    let (server, fake) = serve(vec![get_answer(CA_NAME, "SecureString", CA_VALUE, 3)]).await;
    let got = client(&server)
        .get_parameter(&creds(), CA_NAME, true)
        .await
        .unwrap()
        .expect("the parameter exists");
    assert_eq!(got.name, CA_NAME);
    assert_eq!(got.value, CA_VALUE);
    assert_eq!(got.version, 3);
    assert_eq!(got.kind, ParameterType::SecureString);
    assert_eq!(got.last_modified, Some(1.717e9));
    assert!(!format!("{got:?}").contains(CA_VALUE));

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.target, "/");
    assert_eq!(req.header("x-amz-target"), Some("AmazonSSM.GetParameter"));
    assert_eq!(
        req.header("content-type"),
        Some("application/x-amz-json-1.1")
    );
    assert_eq!(
        body_of(req),
        serde_json::json!({ "Name": CA_NAME, "WithDecryption": true })
    );
    assert_eq!(req.header("x-amz-security-token"), Some(SESSION_TOKEN));
    let auth = sigv4::parse_authorization(req.header("authorization").unwrap());
    assert_eq!(auth.service, "ssm");
    assert_eq!(auth.region, REGION);
    assert_eq!(auth.access_key_id, ACCESS_KEY);
    for signed in [
        "host",
        "content-type",
        "x-amz-target",
        "x-amz-date",
        "x-amz-security-token",
    ] {
        assert!(
            auth.signed_headers.iter().any(|h| h == signed),
            "{signed} is not signed: {:?}",
            auth.signed_headers
        );
    }
    assert_eq!(*fake.bad_signatures.lock().unwrap(), 0);
}

#[tokio::test]
async fn put_parameter_body_and_outcomes() {
    let (server, _) = serve(vec![
        Reply::ok(r#"{"Version":1,"Tier":"Standard"}"#),
        json_error(
            400,
            "com.amazonaws.ssm#ParameterAlreadyExists",
            "The parameter already exists. To overwrite this value, set the overwrite option in the request to true.",
        ),
        Reply::ok(r#"{"Version":2,"Tier":"Standard"}"#),
    ])
    .await;
    let ssm = client(&server);
    let c = creds();
    let first = ssm
        .put_parameter(&c, CA_NAME, CA_VALUE, ParameterType::SecureString, false)
        .await
        .unwrap();
    assert_eq!(first, PutOutcome::Created { version: 1 });
    let second = ssm
        .put_parameter(&c, CA_NAME, CA_VALUE, ParameterType::SecureString, false)
        .await
        .unwrap();
    assert_eq!(second, PutOutcome::AlreadyExists);
    let third = ssm
        .put_parameter(
            &c,
            "/berth/c1/node/seed",
            "seeded",
            ParameterType::String,
            true,
        )
        .await
        .unwrap();
    assert_eq!(third, PutOutcome::Created { version: 2 });

    let reqs = server.requests();
    assert_eq!(reqs.len(), 3, "AlreadyExists is an answer, not retried");
    assert_eq!(
        reqs[0].header("x-amz-target"),
        Some("AmazonSSM.PutParameter")
    );
    assert_eq!(
        body_of(&reqs[0]),
        serde_json::json!({
            "Name": CA_NAME, "Value": CA_VALUE, "Type": "SecureString", "Overwrite": false
        })
    );
    assert_eq!(
        body_of(&reqs[2]),
        serde_json::json!({
            "Name": "/berth/c1/node/seed", "Value": "seeded", "Type": "String", "Overwrite": true
        })
    );
}

#[tokio::test]
async fn a_large_value_is_written_as_an_advanced_parameter() {
    let (server, _) = serve(vec![Reply::ok(r#"{"Version":1,"Tier":"Advanced"}"#)]).await;
    let value = "c".repeat(5000);
    client(&server)
        .put_parameter(&creds(), CA_NAME, &value, ParameterType::String, false)
        .await
        .unwrap();
    assert_eq!(
        body_of(&server.requests()[0])["Tier"],
        "Intelligent-Tiering"
    );
}

#[tokio::test]
async fn not_found_is_none_and_delete_says_whether_it_existed() {
    let (server, _) = serve(vec![
        json_error(
            400,
            "com.amazonaws.ssm#ParameterNotFound",
            "Parameter /berth/c1/node/seed not found.",
        ),
        Reply::ok("{}"),
        json_error(400, "ParameterNotFound", ""),
    ])
    .await;
    let ssm = client(&server);
    let c = creds();
    assert_eq!(
        ssm.get_parameter(&c, "/berth/c1/node/seed", false)
            .await
            .unwrap(),
        None
    );
    assert!(ssm
        .delete_parameter(&c, "/berth/c1/node/seed")
        .await
        .unwrap());
    assert!(!ssm
        .delete_parameter(&c, "/berth/c1/node/seed")
        .await
        .unwrap());
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(
        reqs[1].header("x-amz-target"),
        Some("AmazonSSM.DeleteParameter")
    );
    assert_eq!(
        body_of(&reqs[1]),
        serde_json::json!({ "Name": "/berth/c1/node/seed" })
    );
}

#[tokio::test]
async fn unavailable_then_ok_is_retried() {
    let (server, _) = serve(vec![
        Reply::status(503, "<html>Service Unavailable</html>"),
        get_answer("/berth/c1/node/seed", "String", "seeded", 1),
    ])
    .await;
    let ssm = client(&server);
    let got = ssm
        .get_parameter(&creds(), "/berth/c1/node/seed", false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.value, "seeded");
    assert_eq!(server.requests().len(), 2);
    assert_eq!(ssm.requests_sent(), 2);
}

#[tokio::test]
async fn throttling_is_retried_and_reported_when_it_lasts() {
    let throttled = json_error(400, "ThrottlingException", "Rate exceeded");
    let (server, _) = serve(vec![
        throttled.clone(),
        throttled.clone(),
        Reply::ok(r#"{"Version":4}"#),
    ])
    .await;
    let out = client(&server)
        .put_parameter(
            &creds(),
            CA_NAME,
            CA_VALUE,
            ParameterType::SecureString,
            true,
        )
        .await
        .unwrap();
    assert_eq!(out, PutOutcome::Created { version: 4 });
    assert_eq!(server.requests().len(), 3);

    let (server, _) = serve(vec![throttled]).await;
    let err = client(&server)
        .get_parameter(&creds(), CA_NAME, true)
        .await
        .unwrap_err();
    assert!(err.is_throttling(), "{err}");
    assert!(matches!(err, SsmError::GaveUp { attempts: 5, .. }), "{err}");
    assert_eq!(server.requests().len(), 5, "fast_policy allows 5 attempts");
}

#[tokio::test]
async fn access_denied_is_typed_and_not_retried() {
    let (server, _) = serve(vec![json_error(
        400,
        "AccessDeniedException",
        "User: arn:aws:sts::123456789012:assumed-role/berth-minion/i-0abc is not authorized to perform: ssm:GetParameter on resource: arn:aws:ssm:eu-west-1:123456789012:parameter/berth/c1/master/etcd-ca because no identity-based policy allows the ssm:GetParameter action",
    )])
    .await;
    let err = client(&server)
        .get_parameter(&creds(), CA_NAME, true)
        .await
        .unwrap_err();
    assert!(err.is_access_denied(), "{err}");
    assert!(!err.is_expired_credentials());
    assert_eq!(err.action(), "GetParameter");
    assert_eq!(err.parameter(), CA_NAME);
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.code(), Some("AccessDeniedException"));
    let text = err.to_string();
    assert!(
        text.contains("GetParameter") && text.contains(CA_NAME) && text.contains("400"),
        "{text}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn expired_credentials_are_reported_for_a_refresh() {
    let (server, _) = serve(vec![json_error(
        400,
        "ExpiredTokenException",
        "The security token included in the request is expired",
    )])
    .await;
    let err = client(&server)
        .get_parameter(&creds(), CA_NAME, true)
        .await
        .unwrap_err();
    assert!(err.is_expired_credentials(), "{err}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_value_echoed_by_the_server_is_never_displayed() {
    // A server that quotes the request's value back in its error message.
    let secret_value = "etcd-ca-key-material-0123456789abcdef";
    let (server, _) = serve(vec![json_error(
        400,
        "ValidationException",
        &format!("Value {secret_value} failed to satisfy constraint; token {SESSION_TOKEN}"),
    )])
    .await;
    let err = client(&server)
        .put_parameter(
            &creds(),
            CA_NAME,
            secret_value,
            ParameterType::SecureString,
            false,
        )
        .await
        .unwrap_err();
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(secret_value), "{shown}");
        assert!(!shown.contains(SESSION_TOKEN), "{shown}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("ValidationException"), "{shown}");
    }

    // A value read decrypted is held too: a later error quoting it shows it redacted.
    let read_value = "read-back-ca-key-material-9876543210";
    let (server, _) = serve(vec![
        get_answer(CA_NAME, "SecureString", read_value, 1),
        json_error(
            500,
            "InternalServerError",
            &format!("failed near {read_value}"),
        ),
    ])
    .await;
    let ssm = SsmClient::new(
        server.url(),
        REGION.into(),
        berth_ec2::RetryPolicy {
            max_attempts: 1,
            ..fast_policy()
        },
    );
    ssm.get_parameter(&creds(), CA_NAME, true).await.unwrap();
    let err = ssm
        .get_parameter(&creds(), CA_NAME, true)
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(read_value), "{err}");
    assert!(err.to_string().contains("** redacted **"), "{err}");
}

#[tokio::test]
async fn bad_names_and_values_are_refused_before_sending() {
    let (server, _) = serve(vec![Reply::ok("{}")]).await;
    let ssm = client(&server);
    let c = creds();
    let err = ssm
        .get_parameter(&c, "berth/no-leading-slash", true)
        .await
        .unwrap_err();
    assert!(matches!(err, SsmError::InvalidName { .. }), "{err}");
    assert!(err.to_string().contains("berth/no-leading-slash"), "{err}");
    let err = ssm
        .put_parameter(&c, CA_NAME, "", ParameterType::String, false)
        .await
        .unwrap_err();
    assert!(matches!(err, SsmError::InvalidValue { .. }), "{err}");
    let big = "k".repeat(8193);
    let err = ssm
        .put_parameter(&c, CA_NAME, &big, ParameterType::SecureString, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("8192"), "{err}");
    assert!(!err.to_string().contains("kkkkkkkk"), "{err}");
    assert!(validate_name("/berth/c1/master/etcd-ca").is_ok());
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn answers_are_checked() {
    let (server, _) = serve(vec![
        // Another parameter's value is never taken for the one asked.
        get_answer("/berth/c2/master/etcd-ca", "SecureString", CA_VALUE, 1),
        get_answer(CA_NAME, "StringList", "a,b", 1),
        Reply::ok("not json"),
        Reply::ok("x".repeat(RESPONSE_MAX_BYTES + 1)),
    ])
    .await;
    let ssm = client(&server);
    let c = creds();
    for want in [
        "not the name asked",
        "StringList",
        "not a GetParameter answer",
        "larger than",
    ] {
        let err = ssm.get_parameter(&c, CA_NAME, true).await.unwrap_err();
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

#[tokio::test]
async fn clock_skew_is_corrected_from_the_date_header() {
    let ahead = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let (server, _) = serve(vec![
        json_error(400, "InvalidSignatureException", "Signature expired")
            .with_header("date", &httpdate::fmt_http_date(ahead)),
        get_answer("/berth/c1/node/seed", "String", "seeded", 1),
    ])
    .await;
    let ssm = client(&server);
    ssm.get_parameter(&creds(), "/berth/c1/node/seed", false)
        .await
        .unwrap()
        .unwrap();
    let skew = ssm.clock_skew_ms();
    assert!((3_590_000..=3_610_000).contains(&skew), "{skew}");
    let reqs = server.requests();
    let second = reqs[1].header("x-amz-date").unwrap();
    let first = reqs[0].header("x-amz-date").unwrap();
    assert!(second > first, "{first} then {second}");
}
