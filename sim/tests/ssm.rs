//! berth-sim's Parameter Store over real sockets, signed as an instance signs with its role
//! credentials from IMDS: dispatch on `X-Amz-Target` next to EC2 on one listener, versions,
//! SSM's errors, SecureString reads without decryption, and the per-role `parameter_access`
//! rules that stand in for IAM policies.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use berth_sim::{ClusterSpec, CredentialsSpec, InstanceSpec, ParameterRule, Sim, Target};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CA: &str = "/berth/demo/master/etcd-ca";
const CA_KEY: &str = "-----BEGIN EC PRIVATE KEY-----MHcCAQEEIDemoKeyMaterial";
const SEED: &str = "/berth/demo/node/seed";
const OPERATOR_KEY: &str = "AKIAOPERATOREXAMPLE1";
const OPERATOR_SECRET: &str = "operator-secret-key-for-the-ssm-tests-0001";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Reply {
    fn kind(&self) -> &str {
        self.body["__type"].as_str().unwrap_or_default()
    }

    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
}

/// One signed SSM call: `AmazonSSM.{action}` with `body`, signed for `service` at `time`.
async fn call_at(
    addr: SocketAddr,
    creds: &Credentials,
    action: &str,
    body: &Value,
    service: &str,
    time: SystemTime,
) -> Reply {
    let body = body.to_string();
    let identity: Identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let host = addr.to_string();
    let target = format!("AmazonSSM.{action}");
    let headers = [
        ("host", host.as_str()),
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", target.as_str()),
    ];
    let signable = SignableRequest::new(
        "POST",
        format!("http://{addr}/"),
        headers.iter().copied(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n", body.len());
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    for (n, v) in instructions.headers() {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    req.push_str(&body);

    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut r = BufReader::new(sock);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await.unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':').unwrap();
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut raw = Vec::new();
    r.read_to_end(&mut raw).await.unwrap();
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
    }
}

async fn call(addr: SocketAddr, creds: &Credentials, action: &str, body: Value) -> Reply {
    call_at(addr, creds, action, &body, "ssm", SystemTime::now()).await
}

async fn role_credentials(sim: &Sim, name: &str, role: &str) -> Credentials {
    let addr = sim.imds_addr(name).unwrap();
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(
        format!("PUT /latest/api/token HTTP/1.1\r\nHost: {addr}\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    sock.read_to_string(&mut text).await.unwrap();
    let token = text.split("\r\n\r\n").nth(1).unwrap().to_string();
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(
        format!("GET /latest/meta-data/iam/security-credentials/{role} HTTP/1.1\r\nHost: {addr}\r\nX-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    sock.read_to_string(&mut text).await.unwrap();
    let c: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    Credentials::new(
        c["AccessKeyId"].as_str().unwrap(),
        c["SecretAccessKey"].as_str().unwrap(),
        Some(c["Token"].as_str().unwrap().to_string()),
        None,
        "test",
    )
}

fn rule(path: &str, actions: &[&str]) -> ParameterRule {
    ParameterRule {
        path: path.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
    }
}

/// The rules `docs/iam.md` gives masters and minions of cluster `demo`, and an operator key.
fn demo_with_access() -> ClusterSpec {
    let mut spec = ClusterSpec::default();
    let mut master = InstanceSpec::new("demo-master", "172.30.0.10".parse().unwrap());
    master.iam_role = Some("berth-master".into());
    let mut minion = InstanceSpec::new("demo-minion", "172.30.0.11".parse().unwrap());
    minion.iam_role = Some("berth-minion".into());
    spec.instances = vec![master, minion];
    spec.credentials = vec![CredentialsSpec {
        access_key_id: OPERATOR_KEY.into(),
        secret_access_key: OPERATOR_SECRET.into(),
        session_token: None,
        expiration: None,
    }];
    spec.parameter_access = Some(BTreeMap::from([
        (
            "berth-master".to_string(),
            vec![
                rule(
                    "/berth/demo/master/*",
                    &[
                        "ssm:GetParameter",
                        "ssm:PutParameter",
                        "ssm:DeleteParameter",
                    ],
                ),
                rule("/berth/demo/node/*", &["GetParameter", "PutParameter"]),
            ],
        ),
        (
            "berth-minion".to_string(),
            vec![rule("/berth/demo/node/*", &["GetParameter"])],
        ),
    ]));
    spec
}

#[tokio::test]
async fn parameters_are_served_next_to_ec2_with_versions() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let addr = sim.ec2_addr();
    let creds = role_credentials(&sim, "fed-master", "berth-node").await;

    let r = call(addr, &creds, "GetParameter", json!({ "Name": SEED })).await;
    assert_eq!((r.status, r.kind()), (400, "ParameterNotFound"));
    assert!(r.headers.iter().any(|(n, _)| n == "x-amzn-requestid"));

    let put = json!({ "Name": SEED, "Value": "seeded-by-a", "Type": "String" });
    let r = call(addr, &creds, "PutParameter", put.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["Version"], 1);
    let r = call(addr, &creds, "PutParameter", put).await;
    assert_eq!((r.status, r.kind()), (400, "ParameterAlreadyExists"));
    let r = call(
        addr,
        &creds,
        "PutParameter",
        json!({ "Name": SEED, "Value": "seeded-by-b", "Overwrite": true }),
    )
    .await;
    assert_eq!(r.body["Version"], 2, "{}", r.body);
    assert_eq!(sim.parameter(SEED), Some(("seeded-by-b".into(), 2)));

    let r = call(addr, &creds, "GetParameter", json!({ "Name": SEED })).await;
    let p = &r.body["Parameter"];
    assert_eq!(p["Name"], SEED);
    assert_eq!(p["Type"], "String");
    assert_eq!(p["Value"], "seeded-by-b");
    assert_eq!(p["Version"], 2);
    assert!(p["LastModifiedDate"].as_f64().unwrap() > 1.7e9);
    assert_eq!(
        p["ARN"],
        "arn:aws:ssm:us-east-1:123456789012:parameter/berth/demo/node/seed"
    );

    // A SecureString: ciphertext without decryption, the value with it.
    let r = call(
        addr,
        &creds,
        "PutParameter",
        json!({ "Name": CA, "Value": CA_KEY, "Type": "SecureString" }),
    )
    .await;
    assert_eq!(r.body["Version"], 1);
    let r = call(addr, &creds, "GetParameter", json!({ "Name": CA })).await;
    let blob = r.body["Parameter"]["Value"].as_str().unwrap();
    assert!(!blob.contains("PRIVATE") && blob.len() > 40, "{blob}");
    assert!(blob
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
    assert_eq!(r.body["Parameter"]["Type"], "SecureString");
    let r = call(
        addr,
        &creds,
        "GetParameter",
        json!({ "Name": CA, "WithDecryption": true }),
    )
    .await;
    assert_eq!(r.body["Parameter"]["Value"], CA_KEY);
    assert_eq!(sim.parameter_is_secure(CA), Some(true));

    // Errors SSM gives, never quoting a value.
    for (action, body, kind) in [
        (
            "PutParameter",
            json!({ "Name": "/berth/x", "Value": "" , "Type": "String"}),
            "ValidationException",
        ),
        (
            "PutParameter",
            json!({ "Name": "/berth/new", "Value": "v" }),
            "ValidationException",
        ),
        (
            "PutParameter",
            json!({ "Name": "/berth/big", "Value": "v".repeat(4097), "Type": "String" }),
            "ValidationException",
        ),
        (
            "GetParameter",
            json!({ "Name": "berth/no-slash" }),
            "ValidationException",
        ),
        (
            "GetParameter",
            json!({ "Name": CA, "Bogus": 1 }),
            "SerializationException",
        ),
        (
            "GetParameters",
            json!({ "Names": [CA] }),
            "UnknownOperationException",
        ),
    ] {
        let r = call(addr, &creds, action, body).await;
        assert_eq!((r.status, r.kind()), (400, kind), "{action}: {}", r.body);
        assert!(!r.message().contains("vvvv"), "{}", r.message());
    }
    let r = call(
        addr,
        &creds,
        "PutParameter",
        json!({ "Name": "/berth/big", "Value": "v".repeat(5000), "Type": "String", "Tier": "Intelligent-Tiering" }),
    )
    .await;
    assert_eq!(r.body["Tier"], "Advanced", "{}", r.body);

    let r = call(addr, &creds, "DeleteParameter", json!({ "Name": SEED })).await;
    assert_eq!((r.status, &r.body), (200, &json!({})));
    let r = call(addr, &creds, "DeleteParameter", json!({ "Name": SEED })).await;
    assert_eq!(r.kind(), "ParameterNotFound");
    assert_eq!(sim.parameter(SEED), None);

    // The test's own accessors, and the request log naming the SSM actions.
    sim.put_parameter(SEED, "planted", false);
    sim.put_parameter(SEED, "planted-2", false);
    assert_eq!(sim.parameter(SEED), Some(("planted-2".into(), 2)));
    assert!(sim.delete_parameter(SEED));
    let actions: Vec<String> = sim
        .requests()
        .into_iter()
        .filter_map(|r| r.action)
        .collect();
    assert!(
        actions.iter().any(|a| a == "DeleteParameter"),
        "{actions:?}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn signatures_are_checked_for_ssm() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let addr = sim.ec2_addr();
    let creds = role_credentials(&sim, "fed-master", "berth-node").await;
    let body = json!({ "Name": SEED });

    let r = call_at(
        addr,
        &creds,
        "GetParameter",
        &body,
        "ec2",
        SystemTime::now(),
    )
    .await;
    assert_eq!(r.kind(), "InvalidSignatureException", "{}", r.body);

    let wrong = Credentials::new(
        creds.access_key_id(),
        "not-the-secret-at-all-0000000000000000000",
        creds.session_token().map(str::to_string),
        None,
        "test",
    );
    let r = call(addr, &wrong, "GetParameter", body.clone()).await;
    assert_eq!(r.kind(), "InvalidSignatureException", "{}", r.body);

    let unknown = Credentials::new("ASIAUNKNOWN000000000", "x".repeat(40), None, None, "t");
    let r = call(addr, &unknown, "GetParameter", body.clone()).await;
    assert_eq!(r.kind(), "UnrecognizedClientException", "{}", r.body);

    // The listener's clock an hour ahead: a request signed now is refused, and the `Date` it
    // answers with shows the server's time, as SSM does.
    sim.faults(Target::Ec2).set_clock_offset(3600);
    let r = call(addr, &creds, "GetParameter", body.clone()).await;
    assert_eq!(r.kind(), "InvalidSignatureException", "{}", r.body);
    let date = r
        .headers
        .iter()
        .find(|(n, _)| n == "date")
        .map(|(_, v)| httpdate::parse_http_date(v).unwrap())
        .unwrap();
    assert!(date > SystemTime::now() + std::time::Duration::from_secs(3000));
    let ahead = SystemTime::now() + std::time::Duration::from_secs(3600);
    let r = call_at(addr, &creds, "GetParameter", &body, "ssm", ahead).await;
    assert_eq!(r.kind(), "ParameterNotFound", "{}", r.body);
    sim.shutdown().await;
}

#[tokio::test]
async fn parameter_access_enforces_paths_per_role() {
    let sim = Sim::start(demo_with_access()).await.unwrap();
    let addr = sim.ec2_addr();
    let master = role_credentials(&sim, "demo-master", "berth-master").await;
    let minion = role_credentials(&sim, "demo-minion", "berth-minion").await;
    let operator = Credentials::new(OPERATOR_KEY, OPERATOR_SECRET, None, None, "operator");

    let put_ca = json!({ "Name": CA, "Value": CA_KEY, "Type": "SecureString" });
    let r = call(addr, &master, "PutParameter", put_ca.clone()).await;
    assert_eq!(r.body["Version"], 1, "{}", r.body);
    let r = call(
        addr,
        &master,
        "PutParameter",
        json!({ "Name": SEED, "Value": "seeded", "Type": "String" }),
    )
    .await;
    assert_eq!(r.body["Version"], 1, "{}", r.body);
    let read_ca = json!({ "Name": CA, "WithDecryption": true });
    let r = call(addr, &master, "GetParameter", read_ca.clone()).await;
    assert_eq!(r.body["Parameter"]["Value"], CA_KEY);

    // The minion reads the node path and nothing else, and writes nothing.
    let r = call(addr, &minion, "GetParameter", json!({ "Name": SEED })).await;
    assert_eq!(r.body["Parameter"]["Value"], "seeded", "{}", r.body);
    let minion_id = sim.instance_id("demo-minion").unwrap();
    let r = call(addr, &minion, "GetParameter", read_ca.clone()).await;
    assert_eq!((r.status, r.kind()), (400, "AccessDeniedException"));
    assert_eq!(
        r.message(),
        format!(
            "User: arn:aws:sts::123456789012:assumed-role/berth-minion/{minion_id} is not authorized to perform: ssm:GetParameter on resource: arn:aws:ssm:us-east-1:123456789012:parameter/berth/demo/master/etcd-ca because no identity-based policy allows the ssm:GetParameter action"
        )
    );
    assert!(!r.message().contains("PRIVATE"));
    for (action, body) in [
        (
            "PutParameter",
            json!({ "Name": CA, "Value": "replaced-key", "Type": "SecureString", "Overwrite": true }),
        ),
        ("DeleteParameter", json!({ "Name": CA })),
        (
            "PutParameter",
            json!({ "Name": SEED, "Value": "x", "Overwrite": true }),
        ),
        ("GetParameter", json!({ "Name": "/berth/other/node/seed" })),
    ] {
        let r = call(addr, &minion, action, body).await;
        assert_eq!(r.kind(), "AccessDeniedException", "{action}: {}", r.body);
        assert!(
            r.message().contains(&format!("ssm:{action}")),
            "{}",
            r.message()
        );
    }
    assert_eq!(
        sim.parameter(CA),
        Some((CA_KEY.into(), 1)),
        "the CA is untouched"
    );

    // The master may not delete the node path (its rule there lacks DeleteParameter), nor
    // touch another cluster's.
    let r = call(addr, &master, "DeleteParameter", json!({ "Name": SEED })).await;
    assert_eq!(r.kind(), "AccessDeniedException");
    let r = call(
        addr,
        &master,
        "GetParameter",
        json!({ "Name": "/berth/other/master/etcd-ca" }),
    )
    .await;
    assert_eq!(r.kind(), "AccessDeniedException");
    // An authorized read of a missing name is ParameterNotFound, not a refusal.
    let r = call(
        addr,
        &master,
        "GetParameter",
        json!({ "Name": "/berth/demo/master/none" }),
    )
    .await;
    assert_eq!(r.kind(), "ParameterNotFound");

    // The cluster's own keys are allowed everything.
    let r = call(addr, &operator, "DeleteParameter", json!({ "Name": SEED })).await;
    assert_eq!(r.status, 200, "{}", r.body);
    sim.shutdown().await;
}

#[test]
fn parameter_access_in_a_cluster_file() {
    let spec = ClusterSpec::from_yaml(
        "instances: [{name: m, iam_role: berth-master}]\nparameter_access:\n  berth-master:\n    - path: /berth/demo/master/*\n      actions: [ssm:GetParameter, PutParameter]\n",
    )
    .unwrap();
    let rules = &spec.parameter_access.as_ref().unwrap()["berth-master"];
    assert!(rules[0].allows("GetParameter", CA));
    assert!(rules[0].allows("PutParameter", CA));
    assert!(!rules[0].allows("DeleteParameter", CA));
    assert!(!rules[0].allows("GetParameter", SEED));

    for (yaml, field) in [
        (
            "parameter_access: {r: [{path: berth/x, actions: [GetParameter]}]}",
            "parameter_access.r[0].path",
        ),
        (
            "parameter_access: {r: [{path: /x, actions: [ssm:GetParameters]}]}",
            "parameter_access.r[0].actions",
        ),
    ] {
        let err = ClusterSpec::from_yaml(yaml).unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
    }
    // Absent, it is not written back.
    let yaml = serde_norway::to_string(&ClusterSpec::default()).unwrap();
    assert!(!yaml.contains("parameter_access"), "{yaml}");
}
