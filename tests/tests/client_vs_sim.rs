//! berth-ec2's clients against berth-sim: the retry paths STYLE.md asks for, exercised on
//! purpose over real sockets (a 401 that forces a new token, 503 twice then 200, a reset
//! connection, throttling, the deadline), the IMDS-tags fallback to DescribeTags, paging across
//! many small pages, and SigV4 signatures the emulator verifies.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_ec2::imds::BERTH_TAG_KEYS;
use berth_ec2::retry::Stop;
use berth_ec2::{Credentials, Ec2Client, Ec2Error, Filter, ImdsClient, ImdsError, RetryPolicy};
use berth_sim::{ClusterSpec, InstanceSpec, Listener, RequestRecord, Sim, Target};

/// Fast retries so the suite takes seconds: the production policies back off for real.
fn quick() -> RetryPolicy {
    RetryPolicy {
        per_try_timeout: Duration::from_secs(2),
        max_attempts: 6,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        deadline: Duration::from_secs(10),
    }
}

fn imds_client(sim: &Sim, name: &str, policy: RetryPolicy) -> ImdsClient {
    let url = sim.imds_url(name).expect("instance has an IMDS");
    ImdsClient::new(vec![url.parse().unwrap()], policy)
}

fn ec2_client(sim: &Sim, policy: RetryPolicy) -> Ec2Client {
    Ec2Client::new(
        sim.ec2_url().parse().unwrap(),
        sim.region().to_string(),
        policy,
    )
}

/// The requests one listener read, in order.
fn on(sim: &Sim, listener: &Listener) -> Vec<RequestRecord> {
    sim.requests()
        .into_iter()
        .filter(|r| &r.listener == listener)
        .collect()
}

fn imds_listener(sim: &Sim, name: &str) -> Listener {
    Listener::Imds(sim.instance_id(name).unwrap())
}

fn statuses(records: &[RequestRecord]) -> Vec<(String, u16)> {
    records
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect()
}

fn s(method: &str, status: u16) -> (String, u16) {
    (method.to_string(), status)
}

async fn role_credentials(sim: &Sim, name: &str) -> Credentials {
    imds_client(sim, name, quick())
        .credentials()
        .await
        .expect("IMDS answers")
        .expect("the instance has a role")
}

#[tokio::test]
async fn imds_401_forces_a_new_token() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let client = imds_client(&sim, "fed-master", quick());
    let id = client.get("meta-data/instance-id").await.unwrap();
    assert_eq!(id.as_deref(), Some("i-0a1b2c3d4e5f60001"));
    sim.faults(Target::Imds("fed-master".into()))
        .expire_tokens();
    let ip = client.get("meta-data/local-ipv4").await;
    let ip = ip.unwrap_or_else(|e| panic!("{e}: {:#?}", sim.requests()));
    assert_eq!(ip.as_deref(), Some("172.30.0.246"));
    let log = on(&sim, &imds_listener(&sim, "fed-master"));
    assert_eq!(
        statuses(&log),
        [
            s("PUT", 200),
            s("GET", 200),
            s("GET", 401),
            s("PUT", 200),
            s("GET", 200)
        ],
        "the rejected token was replaced by a new one"
    );
    assert!(log
        .iter()
        .filter(|r| r.method == "GET")
        .all(|r| r.token_present));
    sim.shutdown().await;
}

#[tokio::test]
async fn imds_503_twice_then_200_succeeds() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let client = imds_client(&sim, "fed-minion", quick());
    client.get("meta-data/instance-id").await.unwrap();
    sim.faults(Target::Imds("fed-minion".into()))
        .fail_next(2, 503);
    let az = client
        .get("meta-data/placement/availability-zone")
        .await
        .unwrap();
    assert_eq!(az.as_deref(), Some("us-east-1a"));
    let log = on(&sim, &imds_listener(&sim, "fed-minion"));
    assert_eq!(
        statuses(&log[2..]),
        [s("GET", 503), s("GET", 503), s("GET", 200)]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn imds_reset_connection_is_retried() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let client = imds_client(&sim, "fed-master", quick());
    client.get("meta-data/instance-id").await.unwrap();
    sim.faults(Target::Imds("fed-master".into())).reset_next(1);
    let mac = client.get("meta-data/mac").await.unwrap();
    assert!(mac.is_some_and(|m| m.starts_with("0e:")));
    let log = on(&sim, &imds_listener(&sim, "fed-master"));
    // Status 0: the connection was reset without an answer.
    assert_eq!(statuses(&log[2..]), [s("GET", 0), s("GET", 200)]);
    sim.shutdown().await;
}

#[tokio::test]
async fn ec2_reset_connection_is_retried() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let creds = role_credentials(&sim, "fed-master").await;
    let ec2 = ec2_client(&sim, quick());
    // A first call leaves a kept-alive connection in the client's pool; the reset hits it.
    ec2.describe_instances(&creds, &[]).await.unwrap();
    sim.faults(Target::Ec2).reset_next(1);
    let all = ec2.describe_instances(&creds, &[]).await.unwrap();
    assert_eq!(all.len(), 2);
    let log = on(&sim, &Listener::Ec2);
    assert_eq!(
        statuses(&log),
        [s("POST", 200), s("POST", 0), s("POST", 200)]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn imds_tags_off_falls_back_to_describe_tags() {
    let mut spec = ClusterSpec::seed();
    spec.instances[1].imds_tags = false;
    let sim = Sim::start(spec).await.unwrap();
    let imds = imds_client(&sim, "fed-minion", quick());
    assert_eq!(
        imds.tags(&BERTH_TAG_KEYS).await.unwrap(),
        None,
        "tags off: IMDS has no tags/"
    );
    let identity = imds.identity().await.unwrap();
    assert_eq!(identity.instance_id, "i-0a1b2c3d4e5f60002");
    assert_eq!(identity.security_group_ids, ["sg-0f1e2d3c4b5a69788"]);
    let creds = imds.credentials().await.unwrap().unwrap();
    let ec2 = ec2_client(&sim, quick());
    let tags = ec2
        .describe_tags(
            &creds,
            &[Filter::new("resource-id", [identity.instance_id.clone()])],
        )
        .await
        .unwrap();
    assert!(tags
        .iter()
        .all(|t| t.resource_id == identity.instance_id && t.resource_type == "instance"));
    let tags: BTreeMap<String, String> = tags.into_iter().map(|t| (t.key, t.value)).collect();
    let want: BTreeMap<String, String> = [
        ("Name", "fed-minion"),
        ("berth:cluster", "seed"),
        ("role", "minion"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(tags, want);
    // The master still has its tags in IMDS.
    let master_tags = imds_client(&sim, "fed-master", quick())
        .tags(&BERTH_TAG_KEYS)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(master_tags["role"], "master");
    sim.shutdown().await;
}

#[tokio::test]
async fn deadline_ends_retries() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let deadline = Duration::from_millis(800);
    let policy = RetryPolicy {
        per_try_timeout: Duration::from_millis(500),
        max_attempts: 1000,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        deadline,
    };
    let client = imds_client(&sim, "fed-master", policy);
    sim.faults(Target::Imds("fed-master".into()))
        .fail_next(10_000, 503);
    let started = Instant::now();
    let err = client.get("meta-data/instance-id").await.unwrap_err();
    let took = started.elapsed();
    match &err {
        ImdsError::GaveUp { stop, attempts, .. } => {
            assert!(matches!(stop, Stop::Deadline { .. }), "{err}");
            assert!(*attempts > 1, "{err}");
        }
        other => panic!("expected GaveUp at the deadline, got {other}"),
    }
    assert!(took >= deadline / 2, "gave up too early: {took:?}");

    // The same on EC2: the deadline, not the attempt budget, ends a throttled call.
    let creds = role_credentials(&sim, "fed-minion").await;
    sim.faults(Target::Ec2).throttle_next(10_000);
    let err = ec2_client(&sim, policy)
        .describe_instances(&creds, &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Ec2Error::GaveUp {
                stop: Stop::Deadline { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_throttling(), "{err}");
    sim.shutdown().await;
}

#[tokio::test]
async fn describe_instances_follows_many_small_pages() {
    let mut spec = ClusterSpec::seed();
    spec.page_size = 2;
    for n in 0..9 {
        let mut i = InstanceSpec::new(
            &format!("minion-{n}"),
            format!("172.30.0.{}", 100 + n).parse().unwrap(),
        );
        i.tags.insert("role".into(), "minion".into());
        i.tags.insert("berth:cluster".into(), "seed".into());
        spec.instances.push(i);
    }
    // One instance outside the cluster's security group must not be discovered.
    let mut stranger = InstanceSpec::new("stranger", "172.30.0.200".parse().unwrap());
    stranger.security_groups = Some(vec![]);
    spec.instances.push(stranger);
    let sim = Sim::start(spec).await.unwrap();
    sim.set_state("minion-3", "stopped");
    let creds = role_credentials(&sim, "fed-master").await;
    let filters = [
        Filter::new("instance.group-id", ["sg-0f1e2d3c4b5a69788"]),
        Filter::new("tag:berth:cluster", ["seed"]),
        Filter::new("instance-state-name", ["pending", "running"]),
    ];
    let paged = ec2_client(&sim, quick())
        .describe_instances_pages(&creds, &filters)
        .await
        .unwrap();
    let mut ids: Vec<&str> = paged.items.iter().map(|i| i.instance_id.as_str()).collect();
    assert_eq!(ids.len(), 10, "2 seed nodes + 9 minions - 1 stopped");
    assert_eq!(paged.pages, 5);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "no instance twice");
    let master = paged
        .items
        .iter()
        .find(|i| i.tags.get("Name").map(String::as_str) == Some("fed-master"))
        .unwrap();
    assert_eq!(master.private_ip_address.as_deref(), Some("172.30.0.246"));
    assert_eq!(
        master.private_dns_name.as_deref(),
        Some("ip-172-30-0-246.ec2.internal")
    );
    assert_eq!(master.security_group_ids, ["sg-0f1e2d3c4b5a69788"]);
    assert_eq!(master.state, "running");
    let ec2_log = on(&sim, &Listener::Ec2);
    assert_eq!(ec2_log.len(), 5);
    assert!(ec2_log
        .iter()
        .all(|r| r.status == 200 && r.signed && r.token_present));
    sim.shutdown().await;
}

#[tokio::test]
async fn throttling_is_retried() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let creds = role_credentials(&sim, "fed-minion").await;
    sim.faults(Target::Ec2).throttle_next(2);
    let all = ec2_client(&sim, quick())
        .describe_instances(&creds, &[Filter::new("tag:role", ["master"])])
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].instance_id, "i-0a1b2c3d4e5f60001");
    assert_eq!(
        statuses(&on(&sim, &Listener::Ec2)),
        [s("POST", 503), s("POST", 503), s("POST", 200)]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn sigv4_accepts_the_client_and_rejects_a_wrong_secret() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let creds = role_credentials(&sim, "fed-master").await;
    let ec2 = ec2_client(&sim, quick());
    let all = ec2.describe_instances(&creds, &[]).await.unwrap();
    assert_eq!(all.len(), 2);

    let mut wrong = creds.clone();
    wrong.secret_access_key = format!("{}x", &creds.secret_access_key[1..]);
    let err = ec2.describe_instances(&wrong, &[]).await.unwrap_err();
    assert_eq!(err.code(), Some("SignatureDoesNotMatch"), "{err}");
    assert_eq!(err.status(), Some(403));
    assert!(!err.to_string().contains(&wrong.secret_access_key));

    let mut tokenless = creds.clone();
    tokenless.session_token = None;
    let err = ec2.describe_instances(&tokenless, &[]).await.unwrap_err();
    assert_eq!(err.code(), Some("AuthFailure"), "{err}");

    let log = on(&sim, &Listener::Ec2);
    assert_eq!(
        statuses(&log),
        [s("POST", 200), s("POST", 403), s("POST", 401)],
        "authentication failures are not retried"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_credentials_are_recognised() {
    let mut spec = ClusterSpec::seed();
    spec.credential_lifetime_secs = 1;
    let sim = Sim::start(spec).await.unwrap();
    let imds = imds_client(&sim, "fed-master", quick());
    let creds = imds.credentials().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ec2 = ec2_client(&sim, quick());
    let err = ec2.describe_instances(&creds, &[]).await.unwrap_err();
    assert!(err.is_expired_credentials(), "{err}");
    let fresh = imds.refresh_credentials().await.unwrap().unwrap();
    assert_ne!(fresh.access_key_id, creds.access_key_id);
    assert_eq!(ec2.describe_instances(&fresh, &[]).await.unwrap().len(), 2);
    sim.shutdown().await;
}
