//! berth's Parameter Store client (`berth_ec2::SsmClient`) signed with IAM role session
//! credentials, against two judges of who may do what:
//!
//! 1. **moto**, started with `INITIAL_NO_AUTH_ACTION_COUNT` so that after the setup it verifies
//!    every SigV4 signature (session token included) and evaluates the roles' IAM policies.
//!    moto's evaluation is action-level only for SSM: `BaseResponse.call_action` passes the
//!    resource `"*"` to `IAMPolicy.is_action_permitted` unless a service defines
//!    `_determine_resource`, and moto's SSM does not (moto 5.2, `moto/core/responses.py`,
//!    `moto/iam/access_control.py`). A statement whose `Resource` is a parameter ARN therefore
//!    never matches, and a policy with only such statements permits nothing. So the roles here
//!    grant their documented *actions* on `"*"`: `berth-master` Get/Put/DeleteParameter,
//!    `berth-minion` GetParameter only. What moto proves: the signatures, the JSON protocol
//!    (SecureString, versions, ParameterAlreadyExists), and that a minion is refused every write
//!    (`AccessDenied`, typed) and cannot replace the CA. A third role carries `docs/iam.md`'s
//!    master policy verbatim and the test checks that moto refuses it, so the day moto starts
//!    matching parameter ARNs this test fails and asks for the roles to be tightened.
//! 2. **berth-sim**, whose `parameter_access` enforces the name paths: `docs/iam.md`'s two
//!    policies, read from the document, are turned into its rules, and a minion's
//!    GetParameter of the CA key is refused (`is_access_denied()`) while its read of the node
//!    path works.
//!
//! Needs the venv of `tests/setup/moto.sh`; skips loudly without it, except in CI where it fails.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_e2e::agent::workspace;
use berth_e2e::moto::Moto;
use berth_ec2::{
    Credentials, ImdsClient, ParameterType, PutOutcome, RetryPolicy, SsmClient, SsmError,
};
use berth_sim::{ClusterSpec, InstanceSpec, ParameterRule, Sim, Target};
use serde_json::{json, Value};
use url::Url;

const REGION: &str = "us-east-1";
const ACCOUNT_ID: &str = "123456789012";
const CLUSTER: &str = "c1";
const CA: &str = "/berth/c1/master/etcd-ca";
const SEED: &str = "/berth/c1/node/seed";
/// The Kubernetes tier's parameters (agent/src/kube/).
const TICKET: &str = "/berth/c1/node/join";
const TICKET_VALUE: &str = r#"{"token":"abcdef.0123456789abcdef","expires":1,"ca_cert_hash":"sha256:00","api_server":"a.b:6443"}"#;
const K8S_CA: &str = "/berth/c1/master/kubernetes-ca";
const K8S_KEYS: [&str; 3] = [
    K8S_CA,
    "/berth/c1/master/kubernetes-sa",
    "/berth/c1/master/kubernetes-front-proxy-ca",
];
const CA_VALUE: &str = "-----BEGIN CERTIFICATE-----MIIBdDCCARqgAwIBAgIUetcdca\n-----BEGIN EC PRIVATE KEY-----MHcCAQEEIBerthEtcdCaKey";

fn policy() -> RetryPolicy {
    RetryPolicy {
        per_try_timeout: Duration::from_secs(10),
        max_attempts: 3,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        deadline: Duration::from_secs(60),
    }
}

/// The JSON policy under `heading` in docs/iam.md, for cluster `c1` in moto's account.
fn documented_policy(heading: &str) -> Value {
    let doc = std::fs::read_to_string(workspace().join("docs/iam.md")).expect("docs/iam.md");
    let section = doc
        .split(&format!("\n{heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("docs/iam.md has no `{heading}` section"));
    let json = section
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .unwrap_or_else(|| panic!("docs/iam.md `{heading}` has no JSON block"));
    let json = json
        .replace("REGION", REGION)
        .replace("ACCOUNT_ID", ACCOUNT_ID)
        .replace("CLUSTER", CLUSTER);
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("docs/iam.md `{heading}`: {e}"))
}

/// Allows `actions` on every resource: all moto can evaluate for SSM (see the module doc).
fn action_policy(actions: &[&str]) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{ "Effect": "Allow", "Action": actions, "Resource": "*" }]
    })
}

fn as_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// berth-sim rules equal to the `ssm:` Allow statements of an IAM policy: each parameter ARN
/// `arn:aws:ssm:REGION:ACCOUNT:parameter/PATH` becomes the name glob `/PATH`.
fn parameter_rules(policy: &Value) -> Vec<ParameterRule> {
    let prefix = format!("arn:aws:ssm:{REGION}:{ACCOUNT_ID}:parameter");
    let mut rules = Vec::new();
    for statement in policy["Statement"].as_array().expect("Statement list") {
        assert_eq!(
            statement["Effect"], "Allow",
            "the documented policies only allow"
        );
        let actions: Vec<String> = as_list(&statement["Action"])
            .into_iter()
            .filter(|a| a.starts_with("ssm:"))
            .collect();
        if actions.is_empty() {
            continue;
        }
        for resource in as_list(&statement["Resource"]) {
            let path = resource
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{resource} is not a parameter ARN of {prefix}"));
            rules.push(ParameterRule {
                path: path.to_string(),
                actions: actions.clone(),
            });
        }
    }
    rules
}

fn session(world: &Value, role: &str) -> Credentials {
    let c = &world["credentials"][role];
    Credentials {
        access_key_id: c["access_key_id"].as_str().unwrap().into(),
        secret_access_key: c["secret_access_key"].as_str().unwrap().into(),
        session_token: Some(c["session_token"].as_str().unwrap().into()),
        expiration: None,
    }
}

fn assert_denied(result: Result<impl std::fmt::Debug, SsmError>, what: &str) -> SsmError {
    let err = match result {
        Err(e) => e,
        Ok(v) => panic!("{what}: allowed ({v:?}), expected AccessDenied"),
    };
    assert!(err.is_access_denied(), "{what}: {err}");
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains("PRIVATE"),
        "{what}: a value reached the error: {text}"
    );
    err
}

/// The join ticket: a master publishes it, a minion reads it and is refused replacing it (a
/// minion that could would hand other nodes its own token and pin).
async fn the_ticket_is_the_minions_to_read_only(
    ssm: &SsmClient,
    master: &Credentials,
    minion: &Credentials,
) {
    ssm.put_parameter(
        master,
        TICKET,
        TICKET_VALUE,
        ParameterType::SecureString,
        true,
    )
    .await
    .unwrap();
    let t = ssm
        .get_parameter(minion, TICKET, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.value, TICKET_VALUE, "a minion reads the join ticket");
    assert_denied(
        ssm.put_parameter(minion, TICKET, "{}", ParameterType::SecureString, true)
            .await,
        "minion PutParameter of the join ticket",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_enforces_each_roles_actions() {
    let master = action_policy(&[
        "ssm:GetParameter",
        "ssm:PutParameter",
        "ssm:DeleteParameter",
    ]);
    let minion = action_policy(&["ssm:GetParameter"]);
    let scoped = documented_policy("## Masters");
    let (master, minion, scoped) = (master.to_string(), minion.to_string(), scoped.to_string());
    let Some((moto, world)) = Moto::start_with_setup_or_skip(
        "the Parameter Store moto test",
        "tests/moto/ssm_setup.py",
        &[
            "--master-policy",
            &master,
            "--minion-policy",
            &minion,
            "--scoped-policy",
            &scoped,
        ],
    ) else {
        return;
    };
    let ssm = SsmClient::new(Url::parse(&moto.url).unwrap(), REGION.into(), policy());
    let master = session(&world, "berth-master");
    let minion = session(&world, "berth-minion");

    // moto checks signatures: the master's key with a wrong secret is refused, and not as
    // an IAM refusal.
    let forged = Credentials {
        secret_access_key: format!("{}x", master.secret_access_key),
        ..master.clone()
    };
    let err = ssm.get_parameter(&forged, SEED, false).await.unwrap_err();
    assert!(
        !err.is_access_denied() && err.status().is_some_and(|s| (400..500).contains(&s)),
        "a wrong secret: {err}\n--- moto's log\n{}",
        moto.log()
    );

    // The premise of the roles above: moto does not match parameter ARNs, so the documented
    // policy permits nothing there. If this fails, moto has learnt resource matching: give
    // berth-master and berth-minion docs/iam.md's policies and prove the paths here.
    let err = assert_denied(
        ssm.get_parameter(&session(&world, "berth-master-scoped"), CA, true)
            .await,
        "docs/iam.md's master policy in moto",
    );
    assert_eq!(err.action(), "GetParameter");

    // A master seeds the CA once; a second create finds it; it reads back decrypted.
    let put = |overwrite| {
        ssm.put_parameter(
            &master,
            CA,
            CA_VALUE,
            ParameterType::SecureString,
            overwrite,
        )
    };
    assert_eq!(
        put(false).await.unwrap(),
        PutOutcome::Created { version: 1 },
        "--- moto's log\n{}",
        moto.log()
    );
    assert_eq!(put(false).await.unwrap(), PutOutcome::AlreadyExists);
    let ca = ssm.get_parameter(&master, CA, true).await.unwrap().unwrap();
    assert_eq!(ca.value, CA_VALUE);
    assert_eq!(ca.version, 1);
    assert_eq!(ca.kind, ParameterType::SecureString);
    assert!(!format!("{ca:?}").contains("PRIVATE"));
    let sealed = ssm
        .get_parameter(&master, CA, false)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(sealed.value, CA_VALUE, "read without decryption");
    assert_eq!(
        ssm.put_parameter(&master, SEED, "seeded", ParameterType::String, false)
            .await
            .unwrap(),
        PutOutcome::Created { version: 1 }
    );

    // A minion reads, and is refused every write: it cannot replace or remove the CA.
    let seed = ssm
        .get_parameter(&minion, SEED, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seed.value.as_str(), seed.version), ("seeded", 1));
    let err = assert_denied(
        ssm.put_parameter(&minion, CA, "replaced", ParameterType::SecureString, true)
            .await,
        "minion PutParameter of the CA",
    );
    assert_eq!(
        (err.action(), err.parameter(), err.status()),
        ("PutParameter", CA, Some(403)),
        "moto answers IAM refusals with 403 AccessDenied"
    );
    assert!(err.to_string().contains("ssm:PutParameter"), "{err}");
    assert_denied(
        ssm.put_parameter(&minion, SEED, "x", ParameterType::String, true)
            .await,
        "minion PutParameter of a node parameter",
    );
    the_ticket_is_the_minions_to_read_only(&ssm, &master, &minion).await;
    assert_denied(
        ssm.put_parameter(&minion, K8S_CA, "x", ParameterType::SecureString, false)
            .await,
        "minion PutParameter of the Kubernetes CA",
    );
    assert_denied(
        ssm.delete_parameter(&minion, CA).await,
        "minion DeleteParameter of the CA",
    );
    let ca = ssm.get_parameter(&master, CA, true).await.unwrap().unwrap();
    assert_eq!(
        (ca.value.as_str(), ca.version),
        (CA_VALUE, 1),
        "the CA is intact"
    );

    // Overwrite makes version 2; delete says whether the name existed.
    assert_eq!(put(true).await.unwrap(), PutOutcome::Created { version: 2 });
    assert!(ssm.delete_parameter(&master, CA).await.unwrap());
    assert!(!ssm.delete_parameter(&master, CA).await.unwrap());
    assert_eq!(ssm.get_parameter(&master, CA, true).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_policies_keep_the_ca_from_minions() {
    let master_rules = parameter_rules(&documented_policy("## Masters"));
    let minion_rules = parameter_rules(&documented_policy("## Minions"));
    assert_eq!(master_rules.len(), 2, "{master_rules:?}");
    assert_eq!(minion_rules.len(), 1, "{minion_rules:?}");
    let mut spec = ClusterSpec::default();
    let mut m = InstanceSpec::new("c1-master", "172.30.0.10".parse().unwrap());
    m.iam_role = Some("berth-master".into());
    let mut n = InstanceSpec::new("c1-minion", "172.30.0.11".parse().unwrap());
    n.iam_role = Some("berth-minion".into());
    spec.instances = vec![m, n];
    spec.parameter_access = Some(BTreeMap::from([
        ("berth-master".to_string(), master_rules),
        ("berth-minion".to_string(), minion_rules),
    ]));
    let sim = Sim::start(spec).await.unwrap();
    let role_creds = |node: &str| {
        let url = Url::parse(&sim.imds_url(node).unwrap()).unwrap();
        async move {
            ImdsClient::new(vec![url], policy())
                .credentials()
                .await
                .unwrap()
                .expect("the node has an instance profile")
        }
    };
    let master = role_creds("c1-master").await;
    let minion = role_creds("c1-minion").await;
    let ssm = SsmClient::new(
        Url::parse(&sim.ec2_url()).unwrap(),
        sim.region().into(),
        policy(),
    );

    let put = || ssm.put_parameter(&master, CA, CA_VALUE, ParameterType::SecureString, false);
    assert_eq!(put().await.unwrap(), PutOutcome::Created { version: 1 });
    assert_eq!(put().await.unwrap(), PutOutcome::AlreadyExists);
    let ca = ssm.get_parameter(&master, CA, true).await.unwrap().unwrap();
    assert_eq!((ca.value.as_str(), ca.version), (CA_VALUE, 1));
    ssm.put_parameter(&master, SEED, "seeded", ParameterType::String, false)
        .await
        .unwrap();

    // The Kubernetes tier's shared keys, under the same path: refused to a minion, read by a
    // master. (The names are the agent's.)
    let agent_names: Vec<String> = berth_agent::kube::master::SHARED_KEYS
        .iter()
        .map(|k| berth_agent::kube::master::key_parameter(CLUSTER, k))
        .collect();
    assert_eq!(agent_names, K8S_KEYS);
    assert_eq!(berth_agent::kube::ticket_parameter(CLUSTER), TICKET);
    for name in K8S_KEYS {
        ssm.put_parameter(&master, name, CA_VALUE, ParameterType::SecureString, false)
            .await
            .unwrap();
        assert_denied(
            ssm.get_parameter(&minion, name, true).await,
            "minion GetParameter of a Kubernetes shared key",
        );
        let v = ssm
            .get_parameter(&master, name, true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v.value, CA_VALUE);
    }
    the_ticket_is_the_minions_to_read_only(&ssm, &master, &minion).await;

    let err = assert_denied(
        ssm.get_parameter(&minion, CA, true).await,
        "minion GetParameter of the CA",
    );
    assert_eq!(
        (err.status(), err.code()),
        (Some(400), Some("AccessDeniedException"))
    );
    assert!(err.to_string().contains("berth-minion"), "{err}");
    let seed = ssm
        .get_parameter(&minion, SEED, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seed.value, "seeded");
    assert_denied(
        ssm.put_parameter(&minion, SEED, "x", ParameterType::String, true)
            .await,
        "minion PutParameter of a node parameter",
    );
    assert_denied(
        ssm.get_parameter(&master, "/berth/other/master/etcd-ca", true)
            .await,
        "master GetParameter of another cluster's CA",
    );
    assert_eq!(sim.parameter(CA), Some((CA_VALUE.to_string(), 1)));

    // The listener's faults apply to Parameter Store too, and the client rides them out:
    // two throttled answers, then the read; a clock an hour ahead, then a signature dated by it.
    let gets = |sim: &Sim| {
        sim.requests()
            .iter()
            .filter(|r| r.action.as_deref() == Some("GetParameter"))
            .count()
    };
    let before = gets(&sim);
    sim.faults(Target::Ec2).throttle_next(2);
    let seed = ssm
        .get_parameter(&minion, SEED, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seed.value, "seeded");
    assert_eq!(
        gets(&sim) - before,
        3,
        "two throttled attempts, then the answer"
    );
    sim.faults(Target::Ec2).set_clock_offset(3600);
    let seed = ssm
        .get_parameter(&minion, SEED, false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seed.version, 1);
    assert!(
        (3_590_000..=3_610_000).contains(&ssm.clock_skew_ms()),
        "{}",
        ssm.clock_skew_ms()
    );
    sim.shutdown().await;
}
