//! The IMDSv2 client against scripted IMDS servers on 127.0.0.1: tokens, retries, 404s,
//! endpoint fallback, validation, credentials caching, and secrets kept out of errors.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_ec2::imds::{ImdsClient, ImdsError, BERTH_TAG_KEYS};
use berth_ec2::retry::{RetryPolicy, Stop};
use common::{fast_policy, refused_url, Recorded, Reply, Server};

const TOKEN_PATH: &str = "/latest/api/token";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzSECRETKEY";
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjSESSIONTOKENVALUE";

/// An IMDSv2 server: issues numbered tokens, answers GETs from `items` only with the current
/// token, and plays `script` replies (one per GET) before answering normally.
#[derive(Default)]
struct FakeImds {
    items: Mutex<BTreeMap<String, String>>,
    valid_token: Mutex<Option<String>>,
    tokens_issued: AtomicUsize,
    script: Mutex<VecDeque<Reply>>,
    /// Replies to the next token PUTs, before issuing tokens normally.
    token_script: Mutex<VecDeque<Reply>>,
}

impl FakeImds {
    fn with_items(items: &[(&str, &str)]) -> Arc<Self> {
        let fake = FakeImds::default();
        for (k, v) in items {
            fake.set(k, v);
        }
        Arc::new(fake)
    }

    fn set(&self, path: &str, value: &str) {
        self.items
            .lock()
            .unwrap()
            .insert(path.to_string(), value.to_string());
    }

    fn remove(&self, path: &str) {
        self.items.lock().unwrap().remove(path);
    }

    fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().extend(replies);
    }

    fn revoke_token(&self) {
        *self.valid_token.lock().unwrap() = Some("revoked".into());
    }

    fn handle(&self, req: &Recorded) -> Reply {
        if req.path() == TOKEN_PATH {
            if req.method != "PUT" {
                return Reply::status(405, "");
            }
            if let Some(reply) = self.token_script.lock().unwrap().pop_front() {
                return reply;
            }
            let Some(ttl) = req.header("x-aws-ec2-metadata-token-ttl-seconds") else {
                return Reply::status(400, "missing TTL");
            };
            let n = self.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
            let token = format!("AQAEA-token-{n}");
            *self.valid_token.lock().unwrap() = Some(token.clone());
            return Reply::ok(token).with_header("x-aws-ec2-metadata-token-ttl-seconds", ttl);
        }
        if let Some(reply) = self.script.lock().unwrap().pop_front() {
            return reply;
        }
        let valid = self.valid_token.lock().unwrap().clone();
        if valid.is_none() || req.header("x-aws-ec2-metadata-token") != valid.as_deref() {
            return Reply::status(401, "");
        }
        let Some(path) = req.path().strip_prefix("/latest/") else {
            return Reply::status(404, "");
        };
        match self.items.lock().unwrap().get(path.trim_end_matches('/')) {
            Some(value) => Reply::ok(value.clone()),
            None => Reply::status(404, ""),
        }
    }
}

async fn serve(fake: &Arc<FakeImds>) -> Server {
    let fake = fake.clone();
    Server::start(move |req| fake.handle(req)).await
}

fn client(server: &Server) -> ImdsClient {
    ImdsClient::new(vec![server.url()], fast_policy())
}

const MAC: &str = "0e:49:61:0f:c3:11";

fn identity_items() -> Vec<(&'static str, &'static str)> {
    vec![
        ("meta-data/instance-id", "i-0123456789abcdef0"),
        ("meta-data/placement/region", "us-west-2"),
        ("meta-data/placement/availability-zone", "us-west-2b"),
        ("meta-data/local-ipv4", "10.0.1.23"),
        (
            "meta-data/local-hostname",
            "ip-10-0-1-23.us-west-2.compute.internal",
        ),
        ("meta-data/mac", MAC),
        (
            "meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/vpc-id",
            "vpc-0a1b2c3d",
        ),
        (
            "meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/subnet-id",
            "subnet-0f00",
        ),
        (
            "meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/security-group-ids",
            "sg-0aaa\nsg-0bbb\n",
        ),
    ]
}

#[tokio::test]
async fn reads_with_a_token_and_caches_it() {
    let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
    let server = serve(&fake).await;
    let imds = client(&server);
    for _ in 0..3 {
        assert_eq!(
            imds.get("meta-data/instance-id").await.unwrap().as_deref(),
            Some("i-0abc")
        );
    }
    assert_eq!(
        server.count("PUT", TOKEN_PATH),
        1,
        "one token serves many reads"
    );
    let put = &server.requests()[0];
    assert_eq!(
        put.header("x-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    for get in server.requests().iter().filter(|r| r.method == "GET") {
        assert_eq!(
            get.header("x-aws-ec2-metadata-token"),
            Some("AQAEA-token-1")
        );
    }
}

#[tokio::test]
async fn unauthorized_forces_a_new_token() {
    let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
    let server = serve(&fake).await;
    let imds = client(&server);
    imds.get("meta-data/instance-id").await.unwrap();
    fake.revoke_token();
    assert_eq!(
        imds.get("meta-data/instance-id").await.unwrap().as_deref(),
        Some("i-0abc")
    );
    assert_eq!(server.count("PUT", TOKEN_PATH), 2);
    let gets: Vec<Recorded> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 3, "read, rejected read, re-read");
    assert_eq!(
        gets[1].header("x-aws-ec2-metadata-token"),
        Some("AQAEA-token-1")
    );
    assert_eq!(
        gets[2].header("x-aws-ec2-metadata-token"),
        Some("AQAEA-token-2")
    );
}

#[tokio::test]
async fn service_unavailable_twice_then_ok() {
    let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
    fake.script([Reply::status(503, ""), Reply::status(503, "")]);
    let server = serve(&fake).await;
    let value = client(&server).get("meta-data/instance-id").await.unwrap();
    assert_eq!(value.as_deref(), Some("i-0abc"));
    assert_eq!(server.count("GET", "/latest/meta-data/instance-id"), 3);
}

#[tokio::test]
async fn throttled_then_ok() {
    let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
    fake.script([Reply::status(429, "")]);
    let server = serve(&fake).await;
    let value = client(&server).get("meta-data/instance-id").await.unwrap();
    assert_eq!(value.as_deref(), Some("i-0abc"));
}

#[tokio::test]
async fn reset_connection_is_retried() {
    let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
    fake.script([Reply::Reset, Reply::Reset]);
    let server = serve(&fake).await;
    let imds = client(&server);
    let value = imds.get("meta-data/instance-id").await.unwrap();
    assert_eq!(value.as_deref(), Some("i-0abc"));
    assert_eq!(server.count("GET", "/latest/meta-data/instance-id"), 3);
    // A reset after connecting is not a connect failure: the endpoint stays.
    assert_eq!(imds.current_endpoint(), Some(&server.url()));
}

#[tokio::test]
async fn stalled_response_times_out_and_is_retried() {
    let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
    fake.script([Reply::Stall(Duration::from_secs(5))]);
    let server = serve(&fake).await;
    let policy = RetryPolicy {
        per_try_timeout: Duration::from_millis(200),
        ..fast_policy()
    };
    let imds = ImdsClient::new(vec![server.url()], policy);
    // The stall (5 s) uses up the whole policy's deadline (5 s) unless the 200 ms per-try timeout
    // cut it and the retry got the answer.
    let value = imds.get("meta-data/instance-id").await.unwrap();
    assert_eq!(value.as_deref(), Some("i-0abc"));
}

#[tokio::test]
async fn deadline_ends_retries_and_says_so() {
    let server = Server::start(|req| {
        if req.method == "PUT" {
            Reply::ok("tok")
        } else {
            Reply::status(503, "")
        }
    })
    .await;
    let policy = RetryPolicy {
        per_try_timeout: Duration::from_millis(100),
        max_attempts: 1000,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(40),
        deadline: Duration::from_millis(400),
    };
    let imds = ImdsClient::new(vec![server.url()], policy);
    let err = imds.get("meta-data/instance-id").await.unwrap_err();
    // The deadline, not the 1000-attempt budget, ended the retries (`Stop::Deadline` below);
    // the timing itself is proven on a paused clock in berth-ec2's retry unit tests.
    let ImdsError::GaveUp {
        attempts,
        stop,
        ref last,
        ..
    } = err
    else {
        panic!("expected GaveUp, got {err:?}");
    };
    assert_eq!(
        stop,
        Stop::Deadline {
            deadline: Duration::from_millis(400)
        }
    );
    assert!(attempts >= 3, "{attempts}");
    assert!(
        matches!(**last, ImdsError::Status { status: 503, .. }),
        "{last}"
    );
    // The deadline may cut the last attempt before the server has logged it.
    let logged = server.count("GET", "/latest/meta-data/instance-id") as u32;
    assert!(
        logged == attempts || logged + 1 == attempts,
        "{attempts} attempts, {logged} logged"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("after {attempts} attempt(s)")),
        "{message}"
    );
    assert!(message.contains("deadline"), "{message}");
    assert!(message.contains("HTTP 503"), "{message}");
    assert!(message.contains("meta-data/instance-id"), "{message}");
}

#[tokio::test]
async fn attempts_run_out_and_error_says_so() {
    let server = Server::start(|req| {
        if req.method == "PUT" {
            Reply::ok("tok")
        } else {
            Reply::status(500, "")
        }
    })
    .await;
    let err = client(&server)
        .get("meta-data/instance-id")
        .await
        .unwrap_err();
    assert_eq!(server.count("GET", "/latest/meta-data/instance-id"), 5);
    let message = err.to_string();
    assert!(message.contains("after 5 attempt(s)"), "{message}");
    assert!(
        message.contains("all 5 attempts allowed failed"),
        "{message}"
    );
}

#[tokio::test]
async fn not_found_is_none_and_other_4xx_is_an_error() {
    let fake = FakeImds::with_items(&[]);
    let server = serve(&fake).await;
    let imds = client(&server);
    assert_eq!(imds.get("meta-data/nothing-here").await.unwrap(), None);
    assert_eq!(imds.user_data().await.unwrap(), None);
    assert_eq!(
        server.count("GET", "/latest/meta-data/nothing-here"),
        1,
        "404 is not retried"
    );

    fake.script([Reply::status(403, "")]);
    let err = imds.get("meta-data/forbidden").await.unwrap_err();
    assert!(
        matches!(err, ImdsError::Status { status: 403, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("/latest/meta-data/forbidden"), "{message}");
    assert!(message.contains("403"), "{message}");
    assert_eq!(server.count("GET", "/latest/meta-data/forbidden"), 1);
}

#[tokio::test]
async fn user_data_is_bytes() {
    let fake = FakeImds::with_items(&[("user-data", "role: master\n")]);
    let server = serve(&fake).await;
    assert_eq!(
        client(&server).user_data().await.unwrap().as_deref(),
        Some(&b"role: master\n"[..])
    );
}

#[tokio::test]
async fn token_refused_is_an_error_and_never_falls_back_to_v1() {
    for status in [403u16, 405, 400] {
        let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
        fake.token_script
            .lock()
            .unwrap()
            .push_back(Reply::status(status, ""));
        let server = serve(&fake).await;
        let err = client(&server)
            .get("meta-data/instance-id")
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImdsError::TokenRefused { status: s, .. } if s == status),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("IMDSv1"), "{message}");
        assert!(message.contains(&status.to_string()), "{message}");
        assert_eq!(
            server.count("PUT", TOKEN_PATH),
            1,
            "a refusal is not retried"
        );
        assert_eq!(
            server.count("GET", "/latest/meta-data/instance-id"),
            0,
            "no token, no read: IMDSv1 is never tried"
        );
    }
}

#[tokio::test]
async fn token_put_503_is_retried() {
    let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
    fake.token_script
        .lock()
        .unwrap()
        .extend([Reply::status(503, ""), Reply::Reset]);
    let server = serve(&fake).await;
    let value = client(&server).get("meta-data/instance-id").await.unwrap();
    assert_eq!(value.as_deref(), Some("i-0abc"));
    assert_eq!(server.count("PUT", TOKEN_PATH), 3);
    assert_eq!(server.count("GET", "/latest/meta-data/instance-id"), 1);
}

#[tokio::test]
async fn moves_to_the_next_endpoint_only_on_connect_failure() {
    let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
    let server = serve(&fake).await;
    let dead = refused_url().await;
    let imds = ImdsClient::new(vec![dead.clone(), server.url()], fast_policy());
    assert_eq!(imds.current_endpoint(), Some(&dead));
    assert_eq!(
        imds.get("meta-data/instance-id").await.unwrap().as_deref(),
        Some("i-0abc")
    );
    assert_eq!(
        imds.current_endpoint(),
        Some(&server.url()),
        "remembers who answered"
    );
    imds.get("meta-data/instance-id").await.unwrap();
    assert_eq!(server.count("PUT", TOKEN_PATH), 1);

    // An endpoint that answers with an error is not abandoned.
    let failing = Server::start(|req| {
        if req.method == "PUT" {
            Reply::ok("tok")
        } else {
            Reply::status(503, "")
        }
    })
    .await;
    let standby = serve(&FakeImds::with_items(&[])).await;
    let imds = ImdsClient::new(vec![failing.url(), standby.url()], fast_policy());
    assert!(imds.get("meta-data/instance-id").await.is_err());
    assert!(
        standby.requests().is_empty(),
        "HTTP errors never move to the next endpoint"
    );
    assert_eq!(imds.current_endpoint(), Some(&failing.url()));
}

#[tokio::test]
async fn falls_back_from_ipv4_to_an_ipv6_endpoint() {
    // The production order (IPv4, then IPv6) on an IPv6-only network: the IPv4 endpoint
    // refuses, the IPv6 one (here ::1) answers and is kept.
    let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
    let f = fake.clone();
    let v6 = Server::start_on("[::1]:0", move |req| f.handle(req)).await;
    assert!(
        v6.url().as_str().starts_with("http://[::1]:"),
        "{}",
        v6.url()
    );
    let imds = ImdsClient::new(vec![refused_url().await, v6.url()], fast_policy());
    assert_eq!(
        imds.get("meta-data/instance-id").await.unwrap().as_deref(),
        Some("i-0abc")
    );
    assert_eq!(imds.current_endpoint(), Some(&v6.url()));
    assert_eq!(v6.count("PUT", TOKEN_PATH), 1);
}

#[tokio::test]
async fn token_is_renewed_before_the_ttl_imds_granted() {
    let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
    let f = fake.clone();
    // An IMDS granting only 1 s, whatever was asked.
    let server = Server::start(move |req| match f.handle(req) {
        reply @ Reply::Respond { .. } if req.method == "PUT" => {
            let Reply::Respond { status, body, .. } = reply else {
                unreachable!()
            };
            Reply::Respond {
                status,
                headers: vec![("x-aws-ec2-metadata-token-ttl-seconds".into(), "1".into())],
                body,
            }
        }
        reply => reply,
    })
    .await;
    let imds = client(&server);
    imds.get("meta-data/instance-id").await.unwrap();
    imds.get("meta-data/instance-id").await.unwrap();
    assert_eq!(server.count("PUT", TOKEN_PATH), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    imds.get("meta-data/instance-id").await.unwrap();
    assert_eq!(
        server.count("PUT", TOKEN_PATH),
        2,
        "renewed before IMDS would expire it, without a 401"
    );
    assert_eq!(server.count("GET", "/latest/meta-data/instance-id"), 3);
}

#[tokio::test]
async fn stalled_endpoint_moves_to_the_next() {
    let stalled = Server::start(|_| Reply::Stall(Duration::from_secs(5))).await;
    let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
    let server = serve(&fake).await;
    let policy = RetryPolicy {
        per_try_timeout: Duration::from_millis(150),
        ..fast_policy()
    };
    let imds = ImdsClient::new(vec![stalled.url(), server.url()], policy);
    assert_eq!(
        imds.get("meta-data/instance-id").await.unwrap().as_deref(),
        Some("i-0abc")
    );
    assert_eq!(imds.current_endpoint(), Some(&server.url()));
}

#[tokio::test]
async fn identity_is_read_and_validated() {
    let fake = FakeImds::with_items(&identity_items());
    let server = serve(&fake).await;
    let imds = client(&server);
    let identity = imds.identity().await.unwrap();
    assert_eq!(identity.instance_id, "i-0123456789abcdef0");
    assert_eq!(identity.region, "us-west-2");
    assert_eq!(identity.availability_zone, "us-west-2b");
    assert_eq!(identity.private_ipv4, "10.0.1.23");
    assert_eq!(
        identity.private_dns_name,
        "ip-10-0-1-23.us-west-2.compute.internal"
    );
    assert_eq!(identity.mac, MAC);
    assert_eq!(identity.vpc_id, "vpc-0a1b2c3d");
    assert_eq!(identity.subnet_id, "subnet-0f00");
    assert_eq!(identity.security_group_ids, ["sg-0aaa", "sg-0bbb"]);

    // Garbage is an error naming the path.
    fake.set("meta-data/instance-id", "<html>oops</html>");
    let err = imds.identity().await.unwrap_err();
    assert!(matches!(err, ImdsError::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("meta-data/instance-id"), "{err}");
    fake.set("meta-data/instance-id", "i-0123456789abcdef0");

    fake.set("meta-data/local-ipv4", "10.0.1.999");
    let err = imds.identity().await.unwrap_err().to_string();
    assert!(
        err.contains("meta-data/local-ipv4") && err.contains("IPv4"),
        "{err}"
    );
    fake.set("meta-data/local-ipv4", "10.0.1.23");

    fake.set("meta-data/mac", "not-a-mac");
    let err = imds.identity().await.unwrap_err().to_string();
    assert!(err.contains("meta-data/mac"), "{err}");
    fake.set("meta-data/mac", MAC);

    fake.set("meta-data/placement/availability-zone", "eu-west-1a");
    let err = imds.identity().await.unwrap_err().to_string();
    assert!(err.contains("availability-zone"), "{err}");
    fake.set("meta-data/placement/availability-zone", "us-west-2b");

    // A missing required item names its path.
    let subnet = "meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/subnet-id";
    fake.remove(subnet);
    let err = imds.identity().await.unwrap_err();
    assert!(
        matches!(err, ImdsError::Missing { ref path } if path == subnet),
        "{err:?}"
    );

    fake.set(subnet, "subnet-0f00");
    fake.set(
        "meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/security-group-ids",
        "sg-0aaa\nDROP TABLE\n",
    );
    let err = imds.identity().await.unwrap_err().to_string();
    assert!(err.contains("security-group-ids"), "{err}");
}

#[tokio::test]
async fn tags_are_listed_then_read() {
    let fake = FakeImds::with_items(&[
        ("meta-data/tags/instance", "role\nberth:cluster\nName"),
        ("meta-data/tags/instance/role", "minion"),
        ("meta-data/tags/instance/berth:cluster", "demo"),
        ("meta-data/tags/instance/Name", "node 1"),
    ]);
    let server = serve(&fake).await;
    let tags = client(&server)
        .tags(&BERTH_TAG_KEYS)
        .await
        .unwrap()
        .unwrap();
    let expected: BTreeMap<String, String> = [
        ("role", "minion"),
        ("berth:cluster", "demo"),
        ("Name", "node 1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(tags, expected);

    // Any other key, even one that is no IMDS tag key, is neither read nor refused.
    fake.set(
        "meta-data/tags/instance",
        "role\n../../iam/security-credentials\nhas space\na/b\n.\nteam",
    );
    fake.set("meta-data/tags/instance/team", "x");
    let tags = client(&server)
        .tags(&BERTH_TAG_KEYS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tags.keys().collect::<Vec<_>>(), ["role"]);
    let read: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.path().to_string())
        .filter(|p| p.starts_with("/latest/meta-data/tags/instance/"))
        .collect();
    assert!(
        read.iter()
            .all(|p| !p.contains("iam") && !p.ends_with("/team")),
        "{read:?}"
    );
}

/// 20,000 keys, and a listing far over its bound: berth reads its three tags by name, in a
/// handful of requests, instead of one per key.
#[tokio::test]
async fn a_huge_tag_listing_costs_three_requests() {
    let listing: String = (0..20_000).map(|i| format!("key-{i:05}\n")).collect();
    let fake = FakeImds::with_items(&[
        ("meta-data/tags/instance", &listing),
        ("meta-data/tags/instance/role", "master"),
    ]);
    let server = serve(&fake).await;
    let tags = client(&server)
        .tags(&BERTH_TAG_KEYS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tags.get("role").map(String::as_str), Some("master"));
    assert_eq!(tags.len(), 1);
    let gets = server
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .count();
    assert!(gets <= 4, "{gets} GETs");
}

/// A value berth needs over its bound is refused by name; one it does not need is never read.
#[tokio::test]
async fn tag_values_are_bounded() {
    let huge = "m".repeat(1 << 20);
    let fake = FakeImds::with_items(&[
        ("meta-data/tags/instance", "other\nrole"),
        ("meta-data/tags/instance/other", &huge),
        ("meta-data/tags/instance/role", "minion"),
    ]);
    let server = serve(&fake).await;
    let tags = client(&server)
        .tags(&BERTH_TAG_KEYS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tags.len(), 1);
    fake.set("meta-data/tags/instance/role", &huge);
    let err = client(&server).tags(&BERTH_TAG_KEYS).await.unwrap_err();
    assert!(err.is_invalid_metadata(), "{err:?}");
    assert!(
        matches!(err, ImdsError::TagValueTooLarge { ref key, .. } if key == "role"),
        "{err:?}"
    );
}

#[tokio::test]
async fn tags_disabled_is_none() {
    let fake = FakeImds::with_items(&[("meta-data/instance-id", "i-0abc")]);
    let server = serve(&fake).await;
    assert_eq!(client(&server).tags(&BERTH_TAG_KEYS).await.unwrap(), None);
}

fn credentials_document(access_key: &str, expires_in: Duration) -> String {
    let expiration = time::OffsetDateTime::from(SystemTime::now() + expires_in)
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    format!(
        r#"{{
  "Code" : "Success",
  "LastUpdated" : "2024-01-01T00:00:00Z",
  "Type" : "AWS-HMAC",
  "AccessKeyId" : "{access_key}",
  "SecretAccessKey" : "{SECRET}",
  "Token" : "{SESSION_TOKEN}",
  "Expiration" : "{expiration}"
}}"#
    )
}

const ROLE_PATH: &str = "meta-data/iam/security-credentials/berth-node";

#[tokio::test]
async fn credentials_are_parsed_cached_and_refreshed_before_expiration() {
    let hour = Duration::from_secs(3600);
    let fake = FakeImds::with_items(&[("meta-data/iam/security-credentials", "berth-node\n")]);
    fake.set(ROLE_PATH, &credentials_document("ASIAFIRST", hour));
    let server = serve(&fake).await;
    let imds = client(&server);
    let document_reads = || server.count("GET", &format!("/latest/{ROLE_PATH}"));

    let creds = imds.credentials().await.unwrap().unwrap();
    assert_eq!(creds.access_key_id, "ASIAFIRST");
    assert_eq!(creds.secret_access_key, SECRET);
    assert_eq!(creds.session_token.as_deref(), Some(SESSION_TOKEN));
    let left = creds
        .expiration
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > hour - Duration::from_secs(10) && left <= hour,
        "{left:?}"
    );
    assert_eq!(document_reads(), 1);

    // Far from expiry: served from the cache even though IMDS rotated them.
    fake.set(ROLE_PATH, &credentials_document("ASIASECOND", hour));
    assert_eq!(
        imds.credentials().await.unwrap().unwrap().access_key_id,
        "ASIAFIRST"
    );
    assert_eq!(document_reads(), 1);

    // A forced refresh (EC2 said ExpiredToken) refetches.
    assert_eq!(
        imds.refresh_credentials()
            .await
            .unwrap()
            .unwrap()
            .access_key_id,
        "ASIASECOND"
    );
    assert_eq!(document_reads(), 2);

    // Credentials within 5 minutes of Expiration are refreshed on the next call.
    fake.set(
        ROLE_PATH,
        &credentials_document("ASIATHIRD", Duration::from_secs(240)),
    );
    imds.refresh_credentials().await.unwrap();
    fake.set(ROLE_PATH, &credentials_document("ASIAFOURTH", hour));
    assert_eq!(
        imds.credentials().await.unwrap().unwrap().access_key_id,
        "ASIAFOURTH"
    );
    assert_eq!(document_reads(), 4);
    assert_eq!(
        imds.credentials().await.unwrap().unwrap().access_key_id,
        "ASIAFOURTH"
    );
    assert_eq!(document_reads(), 4);
}

#[tokio::test]
async fn cached_credentials_survive_a_failed_refresh_until_they_expire() {
    let fake = FakeImds::with_items(&[("meta-data/iam/security-credentials", "berth-node")]);
    fake.set(
        ROLE_PATH,
        &credentials_document("ASIANEAR", Duration::from_secs(200)),
    );
    let server = serve(&fake).await;
    let imds = client(&server);
    imds.credentials().await.unwrap().unwrap();
    fake.set(ROLE_PATH, "{ not json");
    // Still valid for ~200 s: the cached ones are returned rather than an error.
    assert_eq!(
        imds.credentials().await.unwrap().unwrap().access_key_id,
        "ASIANEAR"
    );
    // A forced refresh reports the failure.
    assert!(imds.refresh_credentials().await.is_err());
}

#[tokio::test]
async fn no_role_is_none_and_bad_documents_are_errors() {
    let fake = FakeImds::with_items(&[]);
    let server = serve(&fake).await;
    let imds = client(&server);
    assert_eq!(imds.credentials().await.unwrap(), None);

    fake.set("meta-data/iam/security-credentials", "berth-node");
    let failed = credentials_document("ASIAX", Duration::from_secs(3600))
        .replace("\"Success\"", "\"AssumeRoleUnauthorizedAccess\"");
    fake.set(ROLE_PATH, &failed);
    let err = imds.credentials().await.unwrap_err();
    assert!(matches!(err, ImdsError::CredentialsCode { .. }), "{err:?}");
    assert!(
        err.to_string().contains("AssumeRoleUnauthorizedAccess"),
        "{err}"
    );
    assert!(!format!("{err} {err:?}").contains(SECRET));

    let bad = credentials_document("ASIAX", Duration::from_secs(3600))
        .replace(SESSION_TOKEN, "has space");
    fake.set(ROLE_PATH, &bad);
    let err = imds.credentials().await.unwrap_err().to_string();
    assert!(err.contains("Token"), "{err}");
    assert!(!err.contains(SECRET), "{err}");

    fake.remove(ROLE_PATH);
    let err = imds.credentials().await.unwrap_err();
    assert!(matches!(err, ImdsError::Missing { .. }), "{err:?}");
}

#[tokio::test]
async fn secrets_and_tokens_never_appear_in_errors_or_debug() {
    let fake = FakeImds::with_items(&[("meta-data/iam/security-credentials", "berth-node")]);
    fake.set(
        ROLE_PATH,
        &credentials_document("ASIAX", Duration::from_secs(3600)),
    );
    let server = serve(&fake).await;
    let imds = client(&server);
    let creds = imds.credentials().await.unwrap().unwrap();
    let shown = format!("{creds:?} {imds:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(!shown.contains(SESSION_TOKEN), "{shown}");
    assert!(!shown.contains("AQAEA-token"), "{shown}");
    assert!(
        shown.contains("ASIAX"),
        "the access key id is not secret: {shown}"
    );

    // Errors after a token was used: 401 every time, then a 403.
    fake.script((0..10).map(|_| Reply::status(401, "")));
    let err = imds.get("meta-data/instance-id").await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("401"), "{shown}");
    assert!(!shown.contains("AQAEA-token"), "{shown}");
    fake.script.lock().unwrap().clear();

    // A document whose fields are the wrong type must not echo the secret.
    fake.set(
        ROLE_PATH,
        &format!(
            r#"{{"Code":"Success","AccessKeyId":"ASIAX","SecretAccessKey":"{SECRET}","Token":"{SESSION_TOKEN}","Expiration":"{SECRET}"}}"#
        ),
    );
    let err = imds.refresh_credentials().await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("Expiration"), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(!shown.contains(SESSION_TOKEN), "{shown}");
}

#[tokio::test]
async fn invalid_paths_are_refused_before_any_request() {
    let fake = FakeImds::with_items(&[]);
    let server = serve(&fake).await;
    let imds = client(&server);
    for path in [
        "",
        "/latest/meta-data",
        "meta-data/../../etc",
        "meta-data?x",
        "a b",
    ] {
        let err = imds.get(path).await.unwrap_err();
        assert!(
            matches!(err, ImdsError::InvalidPath { .. }),
            "{path}: {err:?}"
        );
    }
    assert!(server.requests().is_empty());
    let err = ImdsClient::new(vec![], fast_policy())
        .get("meta-data/instance-id")
        .await
        .unwrap_err();
    assert!(matches!(err, ImdsError::NoEndpoints));
}

#[test]
fn default_endpoints_are_ipv4_then_ipv6() {
    let endpoints: Vec<String> = ImdsClient::default_endpoints()
        .iter()
        .map(|u| u.to_string())
        .collect();
    assert_eq!(
        endpoints,
        ["http://169.254.169.254/", "http://[fd00:ec2::254]/"]
    );
}

/// A token PUT that IMDS reads and never answers (the PUT response hop limit dropped it) is
/// reported as that, naming the hop limit and the command that raises it.
#[tokio::test]
async fn an_unanswered_token_put_names_the_hop_limit() {
    let server = Server::start(|req: &Recorded| {
        if req.method == "PUT" {
            Reply::Stall(Duration::from_secs(30))
        } else {
            Reply::status(401, "")
        }
    })
    .await;
    let policy = RetryPolicy {
        per_try_timeout: Duration::from_millis(1500),
        max_attempts: u32::MAX,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        deadline: Duration::from_secs(4),
    };
    let client = ImdsClient::new(vec![server.url()], policy);
    let err = client.get("meta-data/instance-id").await.unwrap_err();
    assert!(matches!(err, ImdsError::TokenUnanswered { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("hop limit"), "{text}");
    assert!(
        text.contains("modify-instance-metadata-options")
            && text.contains("--http-put-response-hop-limit 2"),
        "{text}"
    );
}

/// IMDS never redirects: a 302 is an error, and the host it names receives nothing (the
/// request would carry the session token).
#[tokio::test]
async fn imds_redirects_are_not_followed() {
    let capture = Server::start(|_| Reply::ok("")).await;
    let location = format!("{}latest/meta-data/instance-id", capture.url());
    let fake = FakeImds::with_items(&[]);
    let inner = fake.clone();
    let server = Server::start(move |req: &Recorded| {
        if req.method == "GET" {
            Reply::status(302, "").with_header("location", &location)
        } else {
            inner.handle(req)
        }
    })
    .await;
    let err = client(&server)
        .get("meta-data/instance-id")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImdsError::Redirect { status: 302, .. }),
        "{err:?}"
    );
    assert!(capture.requests().is_empty());
}
