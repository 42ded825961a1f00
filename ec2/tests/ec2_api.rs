//! The EC2 Query client against scripted EC2 endpoints on 127.0.0.1: paging, parsing of
//! realistic responses, retries of throttled calls, non-retried auth failures, and SigV4
//! signatures checked by an independent implementation.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_ec2::api::{Ec2Client, Ec2Error};
use berth_ec2::retry::{RetryPolicy, Stop};
use berth_ec2::{Credentials, Filter};
use common::{fast_policy, sigv4, Recorded, Reply, Server};

const ACCESS_KEY: &str = "ASIAIOSFODNN7EXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzSECRETKEY";
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEBYaDSESSIONTOKENxyz+/=";
const REGION: &str = "us-west-2";

fn creds() -> Credentials {
    Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET.into(),
        session_token: Some(SESSION_TOKEN.into()),
        expiration: None,
    }
}

fn client(server: &Server) -> Ec2Client {
    Ec2Client::new(server.url(), REGION.into(), fast_policy())
}

/// One `instancesSet/item` in the documented DescribeInstances shape, with the reservation's
/// own (different) `groupSet` around it and a network interface carrying yet another group.
fn reservation(n: u32, instance_groups: &[&str], tags: &[(&str, &str)]) -> String {
    let groups: String = instance_groups
        .iter()
        .map(|g| {
            format!(
                "\n            <item>\n              <groupId>{g}</groupId>\n              <groupName>name-{g}</groupName>\n            </item>"
            )
        })
        .collect();
    let tags: String = tags
        .iter()
        .map(|(k, v)| {
            format!(
                "\n            <item>\n              <key>{k}</key>\n              <value>{v}</value>\n            </item>"
            )
        })
        .collect();
    format!(
        r#"
    <item>
      <reservationId>r-{n:017x}</reservationId>
      <ownerId>123456789012</ownerId>
      <groupSet>
        <item>
          <groupId>sg-0ffffffffffffffff</groupId>
          <groupName>reservation-level</groupName>
        </item>
      </groupSet>
      <instancesSet>
        <item>
          <instanceId>i-{n:017x}</instanceId>
          <imageId>ami-0abcdef1234567890</imageId>
          <instanceState>
            <code>16</code>
            <name>running</name>
          </instanceState>
          <privateDnsName>ip-10-0-0-{n}.us-west-2.compute.internal</privateDnsName>
          <dnsName/>
          <reason/>
          <amiLaunchIndex>0</amiLaunchIndex>
          <productCodes/>
          <instanceType>t3.medium</instanceType>
          <launchTime>2024-05-01T12:00:00.000Z</launchTime>
          <placement>
            <availabilityZone>us-west-2b</availabilityZone>
            <groupName/>
            <tenancy>default</tenancy>
          </placement>
          <monitoring>
            <state>disabled</state>
          </monitoring>
          <subnetId>subnet-0123456789abcdef0</subnetId>
          <vpcId>vpc-0123456789abcdef0</vpcId>
          <privateIpAddress>10.0.0.{n}</privateIpAddress>
          <sourceDestCheck>true</sourceDestCheck>
          <groupSet>{groups}
          </groupSet>
          <architecture>x86_64</architecture>
          <rootDeviceType>ebs</rootDeviceType>
          <rootDeviceName>/dev/xvda</rootDeviceName>
          <blockDeviceMapping>
            <item>
              <deviceName>/dev/xvda</deviceName>
              <ebs>
                <volumeId>vol-0{n:016x}</volumeId>
                <status>attached</status>
              </ebs>
            </item>
          </blockDeviceMapping>
          <virtualizationType>hvm</virtualizationType>
          <tagSet>{tags}
          </tagSet>
          <hypervisor>xen</hypervisor>
          <networkInterfaceSet>
            <item>
              <networkInterfaceId>eni-0{n:016x}</networkInterfaceId>
              <subnetId>subnet-0123456789abcdef0</subnetId>
              <vpcId>vpc-0123456789abcdef0</vpcId>
              <groupSet>
                <item>
                  <groupId>sg-0eeeeeeeeeeeeeeee</groupId>
                  <groupName>eni-level</groupName>
                </item>
              </groupSet>
              <privateIpAddress>10.0.0.{n}</privateIpAddress>
            </item>
          </networkInterfaceSet>
          <ebsOptimized>false</ebsOptimized>
        </item>
      </instancesSet>
    </item>"#
    )
}

fn describe_instances_page(reservations: &[String], next_token: Option<&str>) -> String {
    let next = next_token
        .map(|t| format!("\n  <nextToken>{t}</nextToken>"))
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>8f7724cf-496f-496e-8fe3-ef0e4fc4c3d6</requestId>
  <reservationSet>{}
  </reservationSet>{next}
</DescribeInstancesResponse>"#,
        reservations.concat()
    )
}

fn error_document(code: &str, message: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>ea966190-f9aa-478e-9ede-example</RequestID></Response>"#
    )
}

/// A scripted EC2 endpoint: plays `script` first, then answers DescribeInstances in three
/// pages keyed by NextToken. Every request's signature is checked independently.
struct FakeEc2 {
    script: Mutex<VecDeque<Reply>>,
    bad_signatures: Mutex<Vec<String>>,
}

impl FakeEc2 {
    fn new(script: impl IntoIterator<Item = Reply>) -> Arc<Self> {
        Arc::new(FakeEc2 {
            script: Mutex::new(script.into_iter().collect()),
            bad_signatures: Mutex::new(Vec::new()),
        })
    }

    fn handle(&self, req: &Recorded) -> Reply {
        if !sigv4::verifies(req, SECRET) {
            self.bad_signatures
                .lock()
                .unwrap()
                .push(req.header("authorization").unwrap_or("").to_string());
            return Reply::status(
                403,
                error_document(
                    "SignatureDoesNotMatch",
                    "The request signature we calculated does not match",
                ),
            );
        }
        if let Some(reply) = self.script.lock().unwrap().pop_front() {
            return reply;
        }
        match req.param("Action").as_deref() {
            Some("DescribeInstances") => match req.param("NextToken").as_deref() {
                None => Reply::ok(describe_instances_page(
                    &[
                        reservation(
                            1,
                            &["sg-0aaa"],
                            &[("role", "master"), ("berth:cluster", "demo")],
                        ),
                        reservation(2, &["sg-0aaa", "sg-0bbb"], &[("role", "minion")]),
                    ],
                    Some("eyJ2IjoiMiIsImMiOiJwYWdlMiJ9"),
                )),
                Some("eyJ2IjoiMiIsImMiOiJwYWdlMiJ9") => Reply::ok(describe_instances_page(
                    &[reservation(
                        3,
                        &["sg-0aaa"],
                        &[("role", "minion"), ("Name", "a &amp; b")],
                    )],
                    Some("page3+/="),
                )),
                Some("page3+/=") => Reply::ok(describe_instances_page(
                    &[reservation(4, &["sg-0aaa"], &[])],
                    None,
                )),
                Some(other) => Reply::status(
                    400,
                    error_document("InvalidParameterValue", &format!("bad token {other}")),
                ),
            },
            _ => Reply::status(400, error_document("InvalidAction", "unknown action")),
        }
    }
}

async fn serve(fake: &Arc<FakeEc2>) -> Server {
    let fake = fake.clone();
    Server::start(move |req| fake.handle(req)).await
}

#[tokio::test]
async fn describe_instances_follows_next_token_across_three_pages() {
    let fake = FakeEc2::new([]);
    let server = serve(&fake).await;
    let ec2 = client(&server);
    let filters = [
        Filter::new("instance.group-id", ["sg-0aaa"]),
        Filter::new("instance-state-name", ["pending", "running"]),
        Filter::new("tag:berth:cluster", ["demo"]),
    ];
    let paged = ec2
        .describe_instances_pages(&creds(), &filters)
        .await
        .unwrap();
    assert!(fake.bad_signatures.lock().unwrap().is_empty());
    assert_eq!(paged.pages, 3);
    assert_eq!(ec2.requests_sent(), 3);
    let ids: Vec<&str> = paged.items.iter().map(|i| i.instance_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "i-00000000000000001",
            "i-00000000000000002",
            "i-00000000000000003",
            "i-00000000000000004"
        ]
    );

    let first = &paged.items[0];
    assert_eq!(first.state, "running");
    assert_eq!(first.private_ip_address.as_deref(), Some("10.0.0.1"));
    assert_eq!(
        first.private_dns_name.as_deref(),
        Some("ip-10-0-0-1.us-west-2.compute.internal")
    );
    assert_eq!(first.vpc_id.as_deref(), Some("vpc-0123456789abcdef0"));
    assert_eq!(first.subnet_id.as_deref(), Some("subnet-0123456789abcdef0"));
    // The instance's groupSet, not the reservation's nor the network interface's.
    assert_eq!(first.security_group_ids, ["sg-0aaa"]);
    assert_eq!(paged.items[1].security_group_ids, ["sg-0aaa", "sg-0bbb"]);
    let tags: BTreeMap<String, String> = [("role", "master"), ("berth:cluster", "demo")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(first.tags, tags);
    assert_eq!(paged.items[2].tags["Name"], "a & b");
    assert!(paged.items[3].tags.is_empty());

    // What went over the wire.
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    for (i, req) in requests.iter().enumerate() {
        assert_eq!(req.method, "POST");
        assert_eq!(
            req.header("content-type"),
            Some("application/x-www-form-urlencoded; charset=utf-8")
        );
        assert_eq!(req.param("Action").as_deref(), Some("DescribeInstances"));
        assert_eq!(req.param("Version").as_deref(), Some("2016-11-15"));
        assert_eq!(req.param("MaxResults").as_deref(), Some("1000"));
        assert_eq!(
            req.param("Filter.1.Name").as_deref(),
            Some("instance.group-id")
        );
        assert_eq!(req.param("Filter.1.Value.1").as_deref(), Some("sg-0aaa"));
        assert_eq!(req.param("Filter.2.Value.2").as_deref(), Some("running"));
        assert_eq!(
            req.param("Filter.3.Name").as_deref(),
            Some("tag:berth:cluster")
        );
        let expected_token = [None, Some("eyJ2IjoiMiIsImMiOiJwYWdlMiJ9"), Some("page3+/=")][i];
        assert_eq!(req.param("NextToken").as_deref(), expected_token);
    }
}

#[tokio::test]
async fn a_next_token_loop_is_refused() {
    let server = Server::start(|_| {
        Reply::ok(describe_instances_page(
            &[reservation(1, &["sg-0aaa"], &[])],
            Some("same"),
        ))
    })
    .await;
    let err = client(&server)
        .describe_instances(&creds(), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Ec2Error::Paging { pages: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("nextToken"), "{err}");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn throttled_calls_are_retried() {
    let fake = FakeEc2::new([
        Reply::status(
            503,
            error_document("RequestLimitExceeded", "Request limit exceeded."),
        ),
        Reply::status(400, error_document("Throttling", "Rate exceeded")),
        Reply::status(503, "<html>Service Unavailable</html>"),
        Reply::status(
            500,
            error_document("InternalError", "An internal error has occurred"),
        ),
    ]);
    let server = serve(&fake).await;
    let policy = RetryPolicy {
        max_attempts: 8,
        ..fast_policy()
    };
    let ec2 = Ec2Client::new(server.url(), REGION.into(), policy);
    let instances = ec2.describe_instances(&creds(), &[]).await.unwrap();
    assert_eq!(instances.len(), 4);
    assert_eq!(ec2.requests_sent(), 4 + 3);
    assert!(
        fake.bad_signatures.lock().unwrap().is_empty(),
        "every attempt is signed"
    );
}

#[tokio::test]
async fn reset_connection_is_retried() {
    let fake = FakeEc2::new([Reply::Reset]);
    let server = serve(&fake).await;
    let ec2 = client(&server);
    assert_eq!(
        ec2.describe_instances(&creds(), &[]).await.unwrap().len(),
        4
    );
    assert_eq!(ec2.requests_sent(), 4);
}

#[tokio::test]
async fn throttled_until_the_deadline_says_so() {
    let server = Server::start(|_| {
        Reply::status(
            503,
            error_document("RequestLimitExceeded", "Request limit exceeded."),
        )
    })
    .await;
    let policy = RetryPolicy {
        per_try_timeout: Duration::from_millis(200),
        max_attempts: 1000,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        deadline: Duration::from_millis(300),
    };
    let ec2 = Ec2Client::new(server.url(), REGION.into(), policy);
    let err = ec2.describe_instances(&creds(), &[]).await.unwrap_err();
    // The deadline, not the 1000-attempt budget, ended the retries (`Stop::Deadline` below);
    // the timing itself is proven on a paused clock in berth-ec2's retry unit tests.
    let Ec2Error::GaveUp { attempts, stop, .. } = &err else {
        panic!("expected GaveUp, got {err:?}");
    };
    assert_eq!(
        *stop,
        Stop::Deadline {
            deadline: Duration::from_millis(300)
        }
    );
    // The deadline may cut the last attempt before the server has logged it.
    let logged = server.requests().len();
    assert!(
        logged == *attempts as usize || logged + 1 == *attempts as usize,
        "{attempts} attempts, {logged} logged"
    );
    assert!(err.is_throttling());
    assert_eq!(err.code(), Some("RequestLimitExceeded"));
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.action(), "DescribeInstances");
    let message = err.to_string();
    assert!(
        message.contains(&format!("after {attempts} attempt(s)")),
        "{message}"
    );
    assert!(message.contains("deadline"), "{message}");
    assert!(message.contains("RequestLimitExceeded"), "{message}");
}

#[tokio::test]
async fn auth_failure_is_not_retried() {
    for (status, code) in [
        (401u16, "AuthFailure"),
        (403, "UnauthorizedOperation"),
        (400, "InvalidParameterValue"),
        (403, "SignatureDoesNotMatch"),
    ] {
        let fake = FakeEc2::new([Reply::status(
            status,
            error_document(
                code,
                "AWS was not able to validate the provided access credentials",
            ),
        )]);
        let server = serve(&fake).await;
        let ec2 = client(&server);
        let err = ec2.describe_instances(&creds(), &[]).await.unwrap_err();
        assert_eq!(ec2.requests_sent(), 1, "{code} must not be retried");
        let Ec2Error::Api {
            action,
            status: s,
            code: c,
            message,
            request_id,
        } = &err
        else {
            panic!("expected Api, got {err:?}");
        };
        assert_eq!(action, "DescribeInstances");
        assert_eq!(*s, status);
        assert_eq!(c, code);
        assert!(message.contains("not able to validate"));
        assert_eq!(
            request_id.as_deref(),
            Some("ea966190-f9aa-478e-9ede-example")
        );
        assert!(!err.is_expired_credentials());
        let shown = err.to_string();
        assert!(
            shown.contains(code) && shown.contains(&status.to_string()),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn expired_credentials_are_reported_for_a_refresh() {
    let fake = FakeEc2::new([Reply::status(
        400,
        error_document("RequestExpired", "Request has expired."),
    )]);
    let server = serve(&fake).await;
    let ec2 = client(&server);
    let err = ec2.describe_instances(&creds(), &[]).await.unwrap_err();
    assert!(err.is_expired_credentials(), "{err}");
    assert_eq!(
        ec2.requests_sent(),
        1,
        "the caller refreshes and retries, not the client"
    );
    // The caller's single retry, with fresh credentials, succeeds.
    assert_eq!(
        ec2.describe_instances(&creds(), &[]).await.unwrap().len(),
        4
    );
}

#[tokio::test]
async fn signed_requests_carry_a_correct_sigv4() {
    let fake = FakeEc2::new([]);
    let server = serve(&fake).await;
    let ec2 = client(&server);
    ec2.describe_instances(&creds(), &[Filter::new("tag:role", ["a b+c&d=é"])])
        .await
        .unwrap();
    let req = &server.requests()[0];
    assert_eq!(req.param("Filter.1.Value.1").as_deref(), Some("a b+c&d=é"));
    let date = req.header("x-amz-date").expect("X-Amz-Date");
    assert_eq!(date.len(), 16, "{date}");
    assert!(date.ends_with('Z'));
    assert_eq!(req.header("x-amz-security-token"), Some(SESSION_TOKEN));
    let auth = sigv4::parse_authorization(req.header("authorization").unwrap());
    assert_eq!(auth.access_key_id, ACCESS_KEY);
    assert_eq!(auth.region, REGION);
    assert_eq!(auth.service, "ec2");
    assert_eq!(&date[..8], auth.date);
    for header in ["host", "x-amz-date", "x-amz-security-token", "content-type"] {
        assert!(
            auth.signed_headers.iter().any(|h| h == header),
            "{header} is signed"
        );
    }
    assert_eq!(auth.signature, sigv4::expected_signature(req, SECRET));
    // The verifier is not a rubber stamp.
    assert_ne!(
        auth.signature,
        sigv4::expected_signature(req, "another-secret")
    );
    let mut tampered = req.clone();
    tampered.body.push(b'x');
    assert!(!sigv4::verifies(&tampered, SECRET));
}

#[tokio::test]
async fn a_wrong_secret_is_rejected_by_the_verifier_and_not_retried() {
    let fake = FakeEc2::new([]);
    let server = serve(&fake).await;
    let ec2 = client(&server);
    let wrong = Credentials {
        secret_access_key: "not-the-secret".into(),
        ..creds()
    };
    let err = ec2.describe_instances(&wrong, &[]).await.unwrap_err();
    assert_eq!(err.code(), Some("SignatureDoesNotMatch"));
    assert_eq!(fake.bad_signatures.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn describe_tags_is_paged() {
    let server = Server::start(|req| {
        let (tags, next) = match req.param("NextToken").as_deref() {
            None => (vec![("role", "master")], Some("t2")),
            Some(_) => (vec![("berth:cluster", "demo"), ("empty", "")], None),
        };
        let items: String = tags
            .iter()
            .map(|(k, v)| {
                format!(
                    "<item><resourceId>i-0abc</resourceId><resourceType>instance</resourceType>\
                     <key>{k}</key><value>{v}</value></item>"
                )
            })
            .collect();
        let next = next
            .map(|t| format!("<nextToken>{t}</nextToken>"))
            .unwrap_or_default();
        Reply::ok(format!(
            "<DescribeTagsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>7a62c49f</requestId><tagSet>{items}</tagSet>{next}</DescribeTagsResponse>"
        ))
    })
    .await;
    let ec2 = client(&server);
    let paged = ec2
        .describe_tags_pages(&creds(), &[Filter::new("resource-id", ["i-0abc"])])
        .await
        .unwrap();
    assert_eq!(paged.pages, 2);
    let keys: Vec<(&str, &str)> = paged
        .items
        .iter()
        .map(|t| (t.key.as_str(), t.value.as_str()))
        .collect();
    assert_eq!(
        keys,
        [("role", "master"), ("berth:cluster", "demo"), ("empty", "")]
    );
    assert!(paged
        .items
        .iter()
        .all(|t| t.resource_id == "i-0abc" && t.resource_type == "instance"));
    assert_eq!(
        server.requests()[0].param("Action").as_deref(),
        Some("DescribeTags")
    );
    assert_eq!(
        server.requests()[1].param("NextToken").as_deref(),
        Some("t2")
    );
}

#[tokio::test]
async fn call_returns_the_raw_body() {
    let server = Server::start(|req| {
        assert_eq!(req.param("Action").as_deref(), Some("RegisterImage"));
        Reply::ok(format!(
            "<RegisterImageResponse><imageId>ami-0{}</imageId></RegisterImageResponse>",
            req.param("Name").unwrap().len()
        ))
    })
    .await;
    let body = client(&server)
        .call(
            &creds(),
            "RegisterImage",
            &[
                ("Name".into(), "berth-1".into()),
                ("EnaSupport".into(), "true".into()),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        body,
        "<RegisterImageResponse><imageId>ami-07</imageId></RegisterImageResponse>"
    );
    let err = client(&server)
        .call(&creds(), "Bad Action", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Ec2Error::InvalidParameter { .. }), "{err:?}");
}

#[tokio::test]
async fn garbage_responses_are_errors_naming_the_field() {
    let server = Server::start(|_| {
        Reply::ok(
            "<DescribeInstancesResponse><reservationSet><item><instancesSet><item>\
             <instanceId>i-0abc</instanceId><instanceState><name>running</name></instanceState>\
             <groupSet><item><groupName>no id</groupName></item></groupSet>\
             </item></instancesSet></item></reservationSet></DescribeInstancesResponse>",
        )
    })
    .await;
    let err = client(&server)
        .describe_instances(&creds(), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Ec2Error::Xml { .. }), "{err:?}");
    assert!(
        err.to_string().contains("groupSet/item[0]/groupId"),
        "{err}"
    );
}

#[tokio::test]
async fn secrets_never_appear_in_errors() {
    // A server that echoes the session token and the secret into its error message.
    let server = Server::start(|req| {
        let token = req.header("x-amz-security-token").unwrap_or("").to_string();
        Reply::status(
            400,
            error_document(
                "InvalidParameterValue",
                &format!("bad token {token} and {SECRET}"),
            ),
        )
    })
    .await;
    let err = client(&server)
        .describe_instances(&creds(), &[])
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?} {:?}", creds());
    assert!(shown.contains("bad token"), "{shown}");
    assert!(!shown.contains(SESSION_TOKEN), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
}

#[test]
fn default_endpoint_is_regional() {
    assert_eq!(
        Ec2Client::default_endpoint("us-west-2").as_str(),
        "https://ec2.us-west-2.amazonaws.com/"
    );
}

/// A 307 or 302 from "EC2" is not followed: the host the `Location` names receives nothing,
/// neither the session token nor a replayable signed request.
#[tokio::test]
async fn redirects_are_not_followed() {
    for status in [302, 307] {
        let capture = Server::start(|_| Reply::ok("")).await;
        let location = format!("{}stolen", capture.url());
        let server =
            Server::start(move |_| Reply::status(status, "").with_header("location", &location))
                .await;
        let err = client(&server)
            .describe_instances(&creds(), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(err, Ec2Error::Redirect { status: s, .. } if s == status),
            "{err:?}"
        );
        assert!(err.to_string().contains("redirect"), "{err}");
        assert!(
            capture.requests().is_empty(),
            "the capture server got a request"
        );
        assert_eq!(server.requests().len(), 1, "a redirect is not retried");
    }
}

/// The secret key and session token placed in every field of an error document never reach
/// the error's text, and a huge field is cut to 256 bytes.
#[tokio::test]
async fn error_fields_are_scrubbed_and_bounded() {
    let planted = format!("{SESSION_TOKEN} {SECRET}");
    let huge = "x".repeat(100_000);
    let bodies = [
        format!(
            "<Response><Errors><Error><Code>{planted}</Code><Message>{planted}</Message></Error>\
             </Errors><RequestID>{planted}</RequestID></Response>"
        ),
        format!(
            "<Response><Errors><Error><Code>AuthFailure</Code><Message>{huge}</Message></Error>\
             </Errors><RequestID>{huge}</RequestID></Response>"
        ),
        "<SessTokRootElement0123><Errors/></SessTokRootElement0123>".to_string(),
    ];
    for body in bodies {
        let server = Server::start(move |_| Reply::status(400, body.clone())).await;
        let err = client(&server)
            .describe_instances(&creds(), &[])
            .await
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains(SECRET) && !text.contains(SESSION_TOKEN),
            "{text}"
        );
        assert!(text.len() < 2048, "{} bytes", text.len());
    }
}

/// EC2 refuses a signature dated more than 15 minutes from its clock. With this host 20
/// minutes behind, the client reads EC2's `Date`, signs again with EC2's time, and succeeds.
#[tokio::test]
async fn clock_skew_is_corrected_from_the_date_header() {
    let ahead = Duration::from_secs(20 * 60);
    let server = Server::start(move |req: &Recorded| {
        let ec2_now = std::time::SystemTime::now() + ahead;
        let date = httpdate_fmt(ec2_now);
        let signed = req.header("x-amz-date").unwrap_or_default().to_string();
        let signed_at = parse_amz_date(&signed);
        let skew = ec2_now
            .duration_since(signed_at)
            .unwrap_or_else(|e| e.duration());
        if skew > Duration::from_secs(15 * 60) {
            Reply::status(
                400,
                error_document("RequestExpired", "Request has expired."),
            )
            .with_header("date", &date)
        } else {
            Reply::ok(describe_instances_page(&[], None)).with_header("date", &date)
        }
    })
    .await;
    let ec2 = client(&server);
    let instances = ec2.describe_instances(&creds(), &[]).await.unwrap();
    assert!(instances.is_empty());
    assert_eq!(server.requests().len(), 2, "one refused, one corrected");
    let skew = ec2.clock_skew_ms();
    assert!((19 * 60_000..21 * 60_000).contains(&skew), "{skew} ms");
}

fn httpdate_fmt(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let odt = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    odt.format(&format).unwrap()
}

fn parse_amz_date(s: &str) -> std::time::SystemTime {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(s, &format)
        .map(|p| p.assume_utc().into())
        .unwrap_or(std::time::UNIX_EPOCH)
}
