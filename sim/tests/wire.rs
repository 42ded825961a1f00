//! berth-sim over real sockets: what a client of IMDS and of the EC2 Query API sees.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use berth_sim::{ClusterSpec, InstanceSpec, Listener, Sim, Target};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read one response from a kept-alive connection; `None` when the server closed or reset it.
async fn read_reply(r: &mut BufReader<TcpStream>) -> Option<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await.ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))?
        .1
        .parse()
        .ok()?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.ok()?;
    Some(Reply {
        status,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

async fn raw(addr: SocketAddr, request: &[u8]) -> Option<Reply> {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(request).await.unwrap();
    read_reply(&mut BufReader::new(sock)).await
}

async fn imds(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(addr, req.as_bytes()).await.expect("a response")
}

async fn token(addr: SocketAddr) -> String {
    let r = imds(
        addr,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

async fn get(addr: SocketAddr, token: &str, path: &str) -> Reply {
    imds(addr, "GET", path, &[("X-aws-ec2-metadata-token", token)]).await
}

/// An unsigned EC2 POST (for regions with `verify_sigv4: false`).
async fn ec2_post(addr: SocketAddr, form: &str) -> Reply {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded; charset=utf-8\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    raw(addr, req.as_bytes()).await.expect("a response")
}

/// A SigV4-signed EC2 POST, serialized; `tamper` edits the bytes after signing.
fn signed_post(
    addr: SocketAddr,
    form: &str,
    creds: &Credentials,
    region: &str,
    time: SystemTime,
) -> Vec<u8> {
    let identity: Identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("ec2")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let host = addr.to_string();
    let ctype = "application/x-www-form-urlencoded; charset=utf-8";
    let headers = [("host", host.as_str()), ("content-type", ctype)];
    let signable = SignableRequest::new(
        "POST",
        format!("http://{addr}/"),
        headers.iter().copied(),
        SignableBody::Bytes(form.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n",
        form.len()
    );
    for (n, v) in instructions.headers() {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(form);
    req.into_bytes()
}

fn error_code(body: &str) -> String {
    let start = body.find("<Code>").expect("an EC2 error") + 6;
    let end = body[start..].find("</Code>").unwrap() + start;
    body[start..end].to_string()
}

/// Every element path with its text, e.g. `DescribeInstancesResponse/reservationSet/item/...`.
fn xml_paths(body: &str) -> Vec<(String, String)> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(body);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<String> = Vec::new();
    let mut out = Vec::new();
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => {
                stack.push(String::from_utf8(e.local_name().as_ref().to_vec()).unwrap());
                out.push((stack.join("/"), String::new()));
            }
            Event::Empty(e) => {
                let name = String::from_utf8(e.local_name().as_ref().to_vec()).unwrap();
                out.push((format!("{}/{name}", stack.join("/")), String::new()));
            }
            Event::Text(t) => {
                if let Some(last) = out.last_mut() {
                    last.1 = t.unescape().unwrap().into_owned();
                }
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out
}

fn values<'a>(paths: &'a [(String, String)], path: &str) -> Vec<&'a str> {
    paths
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, v)| v.as_str())
        .collect()
}

const INSTANCE: &str = "DescribeInstancesResponse/reservationSet/item/instancesSet/item";

fn unsigned_seed() -> ClusterSpec {
    let mut spec = ClusterSpec::seed();
    spec.verify_sigv4 = false;
    spec
}

#[tokio::test]
async fn imds_token_rules() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let addr = sim.imds_addr("fed-master").unwrap();
    let path = "/latest/meta-data/instance-id";
    assert_eq!(imds(addr, "GET", path, &[]).await.status, 401, "no token");
    assert_eq!(get(addr, "forged", path).await.status, 401, "unknown token");
    for ttl in ["0", "21601", "x"] {
        let r = imds(
            addr,
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", ttl)],
        )
        .await;
        assert_eq!(r.status, 400, "ttl {ttl}");
    }
    assert_eq!(
        imds(addr, "PUT", "/latest/api/token", &[]).await.status,
        400
    );
    let proxied = imds(
        addr,
        "PUT",
        "/latest/api/token",
        &[
            ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
            ("X-Forwarded-For", "10.0.0.1"),
        ],
    )
    .await;
    assert_eq!(proxied.status, 403);
    let t = token(addr).await;
    let r = get(addr, &t, path).await;
    assert_eq!((r.status, r.body.as_str()), (200, "i-0a1b2c3d4e5f60001"));
    // A token is only good on the instance that issued it.
    let other = sim.imds_addr("fed-minion").unwrap();
    assert_eq!(get(other, &t, path).await.status, 401);

    sim.faults(Target::Imds("fed-master".into()))
        .expire_tokens();
    assert_eq!(get(addr, &t, path).await.status, 401, "expired by fault");
    let t2 = token(addr).await;
    assert_eq!(get(addr, &t2, path).await.status, 200);

    // A 1-second token dies after a second.
    let short = imds(
        addr,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "1")],
    )
    .await;
    assert_eq!(
        short.header("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"),
        Some("1")
    );
    assert_eq!(get(addr, &short.body, path).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(addr, &short.body, path).await.status, 401);
    sim.shutdown().await;
}

#[tokio::test]
async fn imds_paths_listings_and_dated_versions() {
    let mut spec = ClusterSpec::seed();
    spec.instances[1].imds_tags = false;
    spec.instances[1].user_data = Some("role: minion\n".into());
    let sim = Sim::start(spec).await.unwrap();
    let master = sim.imds_addr("fed-master").unwrap();
    let t = token(master).await;
    let body = |r: Reply| {
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    };
    let listing = body(get(master, &t, "/latest/meta-data/").await);
    let entries: Vec<&str> = listing.lines().collect();
    for want in [
        "ami-id",
        "hostname",
        "iam/",
        "instance-id",
        "local-hostname",
        "local-ipv4",
        "mac",
        "network/",
        "placement/",
        "tags/",
    ] {
        assert!(entries.contains(&want), "{want} in {entries:?}");
    }
    // Every entry of the listing resolves.
    for e in &entries {
        let r = get(master, &t, &format!("/latest/meta-data/{e}")).await;
        assert_eq!(r.status, 200, "meta-data/{e}");
    }
    for (p, want) in [
        ("meta-data/local-ipv4", "172.30.0.246"),
        ("meta-data/local-hostname", "ip-172-30-0-246.ec2.internal"),
        ("meta-data/hostname", "ip-172-30-0-246.ec2.internal"),
        ("meta-data/placement/region", "us-east-1"),
        ("meta-data/placement/availability-zone", "us-east-1a"),
        ("meta-data/tags/instance/role", "master"),
        ("meta-data/tags/instance/Name", "fed-master"),
        ("meta-data/tags/instance/berth%3Acluster", "seed"),
        ("meta-data/iam/security-credentials/", "berth-node"),
    ] {
        let latest = body(get(master, &t, &format!("/latest/{p}")).await);
        let dated = body(get(master, &t, &format!("/2021-03-23/{p}")).await);
        assert_eq!(latest, want, "{p}");
        assert_eq!(dated, want, "dated {p}");
    }
    let keys = body(get(master, &t, "/latest/meta-data/tags/instance/").await);
    assert_eq!(keys, "Name\nberth:cluster\nrole");
    let mac = body(get(master, &t, "/latest/meta-data/mac").await);
    let macs = body(get(master, &t, "/latest/meta-data/network/interfaces/macs/").await);
    assert_eq!(macs, format!("{mac}/"));
    let base = format!("/latest/meta-data/network/interfaces/macs/{mac}");
    assert_eq!(
        body(get(master, &t, &format!("{base}/vpc-id")).await),
        "vpc-0a5e7d3c2b1f40968"
    );
    assert_eq!(
        body(get(master, &t, &format!("{base}/subnet-id")).await),
        "subnet-03c4d5e6f7a8b9c0d"
    );
    assert_eq!(
        body(get(master, &t, &format!("{base}/security-group-ids")).await),
        "sg-0f1e2d3c4b5a69788"
    );
    assert_eq!(
        body(get(master, &t, &format!("{base}/local-ipv4s")).await),
        "172.30.0.246"
    );
    let creds = body(
        get(
            master,
            &t,
            "/latest/meta-data/iam/security-credentials/berth-node",
        )
        .await,
    );
    let creds: serde_json::Value = serde_json::from_str(&creds).unwrap();
    assert_eq!(creds["Code"], "Success");
    assert_eq!(creds["Type"], "AWS-HMAC");
    assert!(creds["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
    for k in ["SecretAccessKey", "Token", "Expiration", "LastUpdated"] {
        assert!(creds[k].as_str().is_some_and(|v| !v.is_empty()), "{k}");
    }
    let dynamic = body(get(master, &t, "/latest/dynamic/instance-identity/").await);
    assert!(dynamic.lines().any(|l| l == "document"));
    let doc = body(get(master, &t, "/latest/dynamic/instance-identity/document").await);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["instanceId"], "i-0a1b2c3d4e5f60001");
    assert_eq!(doc["region"], "us-east-1");
    assert_eq!(doc["privateIp"], "172.30.0.246");
    for absent in [
        "/latest/user-data",
        "/latest/meta-data/nope",
        "/latest/meta-data/iam/security-credentials/other-role",
        "/latest/meta-data/tags/instance/missing",
        "/notaversion/meta-data/instance-id",
    ] {
        assert_eq!(get(master, &t, absent).await.status, 404, "{absent}");
    }

    // fed-minion: tags off, user-data given.
    let minion = sim.imds_addr("fed-minion").unwrap();
    let t = token(minion).await;
    let listing = body(get(minion, &t, "/latest/meta-data/").await);
    assert!(!listing.lines().any(|l| l == "tags/"), "{listing}");
    assert_eq!(
        get(minion, &t, "/latest/meta-data/tags/instance/")
            .await
            .status,
        404
    );
    assert_eq!(
        get(minion, &t, "/latest/meta-data/tags/instance/role")
            .await
            .status,
        404
    );
    assert_eq!(
        body(get(minion, &t, "/latest/user-data").await),
        "role: minion\n"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn describe_instances_xml_shape() {
    let sim = Sim::start(unsigned_seed()).await.unwrap();
    let r = ec2_post(
        sim.ec2_addr(),
        "Action=DescribeInstances&Version=2016-11-15",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(
        "<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">"
    ));
    let p = xml_paths(&r.body);
    assert_eq!(values(&p, "DescribeInstancesResponse/requestId").len(), 1);
    assert_eq!(
        values(&p, "DescribeInstancesResponse/reservationSet/item/ownerId"),
        ["123456789012", "123456789012"]
    );
    assert_eq!(
        values(&p, &format!("{INSTANCE}/instanceId")),
        ["i-0a1b2c3d4e5f60001", "i-0a1b2c3d4e5f60002"]
    );
    assert_eq!(
        values(&p, &format!("{INSTANCE}/instanceState/code")),
        ["16", "16"]
    );
    assert_eq!(
        values(&p, &format!("{INSTANCE}/instanceState/name")),
        ["running", "running"]
    );
    assert_eq!(
        values(&p, &format!("{INSTANCE}/privateIpAddress")),
        ["172.30.0.246", "172.30.0.43"]
    );
    assert_eq!(
        values(&p, &format!("{INSTANCE}/privateDnsName")),
        [
            "ip-172-30-0-246.ec2.internal",
            "ip-172-30-0-43.ec2.internal"
        ]
    );
    assert_eq!(values(&p, &format!("{INSTANCE}/dnsName")), ["", ""]);
    assert_eq!(
        values(&p, &format!("{INSTANCE}/placement/availabilityZone")),
        ["us-east-1a"; 2]
    );
    assert_eq!(
        values(&p, &format!("{INSTANCE}/vpcId")),
        ["vpc-0a5e7d3c2b1f40968"; 2]
    );
    assert_eq!(
        values(&p, &format!("{INSTANCE}/subnetId")),
        ["subnet-03c4d5e6f7a8b9c0d"; 2]
    );
    assert_eq!(
        values(&p, &format!("{INSTANCE}/instanceType")),
        ["t3.medium"; 2]
    );
    assert_eq!(
        values(&p, &format!("{INSTANCE}/groupSet/item/groupId")),
        ["sg-0f1e2d3c4b5a69788"; 2]
    );
    assert_eq!(
        values(&p, &format!("{INSTANCE}/groupSet/item/groupName")),
        ["seed-cluster"; 2]
    );
    let keys = values(&p, &format!("{INSTANCE}/tagSet/item/key"));
    let vals = values(&p, &format!("{INSTANCE}/tagSet/item/value"));
    let tags: Vec<(&str, &str)> = keys.into_iter().zip(vals).collect();
    assert!(tags.contains(&("Name", "fed-master")));
    assert!(tags.contains(&("role", "minion")));
    assert!(tags.contains(&("berth:cluster", "seed")));
    assert!(values(&p, "DescribeInstancesResponse/nextToken").is_empty());

    // Errors in EC2's shape.
    let r = ec2_post(sim.ec2_addr(), "Action=RunInstances&Version=2016-11-15").await;
    assert_eq!(r.status, 400);
    let p = xml_paths(&r.body);
    assert_eq!(values(&p, "Response/Errors/Error/Code"), ["InvalidAction"]);
    assert_eq!(values(&p, "Response/Errors/Error/Message").len(), 1);
    assert_eq!(values(&p, "Response/RequestID").len(), 1);
    // GET with a query string works like POST.
    let get = format!(
        "GET /?Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-0a1b2c3d4e5f60002 HTTP/1.1\r\nHost: {}\r\n\r\n",
        sim.ec2_addr()
    );
    let r = raw(sim.ec2_addr(), get.as_bytes()).await.unwrap();
    assert_eq!(
        values(&xml_paths(&r.body), &format!("{INSTANCE}/instanceId")),
        ["i-0a1b2c3d4e5f60002"]
    );
    sim.shutdown().await;
}

fn form(filters: &[(&str, &[&str])], extra: &str) -> String {
    let mut s = "Action=DescribeInstances&Version=2016-11-15".to_string();
    for (i, (name, vals)) in filters.iter().enumerate() {
        s.push_str(&format!("&Filter.{}.Name={}", i + 1, url_escape(name)));
        for (j, v) in vals.iter().enumerate() {
            s.push_str(&format!(
                "&Filter.{}.Value.{}={}",
                i + 1,
                j + 1,
                url_escape(v)
            ));
        }
    }
    s + extra
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn owned(v: &[&String]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn ids(sim: &Sim, body: String) -> Vec<String> {
    let r = ec2_post(sim.ec2_addr(), &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    values(&xml_paths(&r.body), &format!("{INSTANCE}/instanceId"))
        .into_iter()
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn describe_instances_filters() {
    let mut spec = unsigned_seed();
    spec.launch_pending_ms = 60_000;
    let sim = Sim::start(spec.clone()).await.unwrap();
    let m2 = sim
        .launch(spec.not_launched("fed-minion-2").unwrap())
        .await
        .unwrap();
    let mut other = InstanceSpec::new("bastion", "172.30.0.5".parse().unwrap());
    other.security_groups = Some(vec![]);
    let bastion = sim.launch(other).await.unwrap();
    let master = sim.instance_id("fed-master").unwrap();
    let minion = sim.instance_id("fed-minion").unwrap();
    sim.set_state("bastion", "running");

    let sg: &[&str] = &["sg-0f1e2d3c4b5a69788"];
    assert_eq!(
        ids(&sim, form(&[("instance.group-id", sg)], "")).await,
        owned(&[&master, &minion, &m2])
    );
    assert_eq!(
        ids(&sim, form(&[("group-id", sg)], "")).await,
        owned(&[&master, &minion, &m2])
    );
    // Values OR'd, filters AND'd.
    assert_eq!(
        ids(
            &sim,
            form(
                &[
                    ("group-id", sg),
                    ("instance-state-name", &["pending", "running"])
                ],
                ""
            )
        )
        .await,
        owned(&[&master, &minion, &m2])
    );
    assert_eq!(
        ids(
            &sim,
            form(
                &[("group-id", sg), ("instance-state-name", &["running"])],
                ""
            )
        )
        .await,
        owned(&[&master, &minion])
    );
    assert_eq!(
        ids(&sim, form(&[("tag:role", &["minion"])], "")).await,
        owned(&[&minion, &m2])
    );
    assert_eq!(
        ids(
            &sim,
            form(
                &[("tag:berth:cluster", &["seed"]), ("tag:role", &["master"])],
                ""
            )
        )
        .await,
        owned(&[&master])
    );
    assert_eq!(
        ids(&sim, form(&[("tag:Name", &["fed-minion*"])], "")).await,
        owned(&[&minion, &m2])
    );
    assert_eq!(
        ids(&sim, form(&[("tag:Name", &["fed-minion-?"])], "")).await,
        owned(&[&m2])
    );
    assert_eq!(
        ids(&sim, form(&[("tag-key", &["berth:*"])], "")).await,
        owned(&[&master, &minion, &m2])
    );
    assert_eq!(
        ids(
            &sim,
            form(
                &[("private-ip-address", &["172.30.0.5", "172.30.0.43"])],
                ""
            )
        )
        .await,
        owned(&[&minion, &bastion])
    );
    assert_eq!(
        ids(
            &sim,
            form(&[("instance-id", &[master.as_str(), bastion.as_str()])], "")
        )
        .await,
        owned(&[&master, &bastion])
    );
    assert_eq!(
        ids(
            &sim,
            form(
                &[
                    ("vpc-id", &["vpc-0a5e7d3c2b1f40968"]),
                    ("subnet-id", &["subnet-0*"])
                ],
                ""
            )
        )
        .await,
        owned(&[&master, &minion, &m2, &bastion])
    );
    assert!(ids(&sim, form(&[("vpc-id", &["vpc-other"])], ""))
        .await
        .is_empty());

    // A stopped minion leaves a running-only query; a terminated one loses its network.
    sim.set_state("fed-minion", "terminated");
    assert_eq!(
        ids(
            &sim,
            form(
                &[
                    ("group-id", sg),
                    ("instance-state-name", &["pending", "running"])
                ],
                ""
            )
        )
        .await,
        owned(&[&master, &m2])
    );
    assert_eq!(
        ids(&sim, form(&[("private-ip-address", &["172.30.0.43"])], "")).await,
        Vec::<String>::new()
    );
    sim.set_tag("fed-master", "role", Some("minion"));
    assert_eq!(
        ids(&sim, form(&[("tag:role", &["master"])], "")).await,
        Vec::<String>::new()
    );

    for (body, code) in [
        (
            form(&[("no-such-filter", &["x"])], ""),
            "InvalidParameterValue",
        ),
        (form(&[], "&Filter.1.Value.1=x"), "MissingParameter"),
        (form(&[], "&Bogus=1"), "UnknownParameter"),
        (
            form(&[], "&InstanceId.1=i-0123456789abcdef9"),
            "InvalidInstanceID.NotFound",
        ),
        (form(&[], "&MaxResults=4"), "InvalidParameterValue"),
        (form(&[], "&MaxResults=1001"), "InvalidParameterValue"),
        (form(&[], "&NextToken=abc"), "InvalidPaginationToken"),
    ] {
        let r = ec2_post(sim.ec2_addr(), &body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(error_code(&r.body), code, "{body}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn describe_instances_paging_follows_every_page() {
    let mut spec = unsigned_seed();
    spec.page_size = 2;
    for n in 0..9 {
        let mut i = InstanceSpec::new(
            &format!("node-{n}"),
            format!("172.30.0.{}", 100 + n).parse().unwrap(),
        );
        i.tags.insert("berth:cluster".into(), "seed".into());
        spec.instances.push(i);
    }
    let sim = Sim::start(spec).await.unwrap();
    let query = form(&[("tag:berth:cluster", &["seed"])], "&MaxResults=5");
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let body = match &next {
            Some(t) => format!("{query}&NextToken={}", url_escape(t)),
            None => query.clone(),
        };
        let r = ec2_post(sim.ec2_addr(), &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let p = xml_paths(&r.body);
        let page = values(&p, &format!("{INSTANCE}/instanceId"));
        assert!(page.len() <= 2, "the page size caps MaxResults");
        seen.extend(page.into_iter().map(String::from));
        pages += 1;
        next = values(&p, "DescribeInstancesResponse/nextToken")
            .first()
            .map(|s| s.to_string());
        if next.is_none() {
            break;
        }
        // A token is bound to its query.
        let foreign = format!(
            "{}&NextToken={}",
            form(&[("tag:role", &["x"])], ""),
            url_escape(next.as_ref().unwrap())
        );
        assert_eq!(
            error_code(&ec2_post(sim.ec2_addr(), &foreign).await.body),
            "InvalidPaginationToken"
        );
    }
    assert_eq!(pages, 6, "11 instances, 2 per page");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (11, 11));
    sim.shutdown().await;
}

#[tokio::test]
async fn describe_tags_filters_and_paging() {
    let mut spec = unsigned_seed();
    spec.page_size = 2;
    let sim = Sim::start(spec).await.unwrap();
    let minion = sim.instance_id("fed-minion").unwrap();
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut body = format!(
            "Action=DescribeTags&Version=2016-11-15&Filter.1.Name=resource-id&Filter.1.Value.1={minion}&Filter.2.Name=resource-type&Filter.2.Value.1=instance"
        );
        if let Some(t) = &next {
            body.push_str(&format!("&NextToken={t}"));
        }
        let r = ec2_post(sim.ec2_addr(), &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r
            .body
            .contains("<DescribeTagsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">"));
        let p = xml_paths(&r.body);
        let item = "DescribeTagsResponse/tagSet/item";
        assert!(values(&p, &format!("{item}/resourceId"))
            .iter()
            .all(|id| *id == minion));
        assert!(values(&p, &format!("{item}/resourceType"))
            .iter()
            .all(|t| *t == "instance"));
        let keys = values(&p, &format!("{item}/key"));
        let vals = values(&p, &format!("{item}/value"));
        seen.extend(
            keys.iter()
                .zip(&vals)
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        next = values(&p, "DescribeTagsResponse/nextToken")
            .first()
            .map(|s| s.to_string());
        if next.is_none() {
            break;
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("Name".to_string(), "fed-minion".to_string()),
            ("berth:cluster".into(), "seed".into()),
            ("role".into(), "minion".into())
        ]
    );
    let r = ec2_post(
        sim.ec2_addr(),
        "Action=DescribeTags&Version=2016-11-15&Filter.1.Name=key&Filter.1.Value.1=role&Filter.2.Name=value&Filter.2.Value.1=mast*",
    )
    .await;
    let p = xml_paths(&r.body);
    assert_eq!(
        values(&p, "DescribeTagsResponse/tagSet/item/resourceId"),
        [sim.instance_id("fed-master").unwrap()]
    );
    sim.shutdown().await;
}

async fn role_credentials(sim: &Sim, name: &str) -> Credentials {
    let addr = sim.imds_addr(name).unwrap();
    let t = token(addr).await;
    let r = get(
        addr,
        &t,
        "/latest/meta-data/iam/security-credentials/berth-node",
    )
    .await;
    let c: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    Credentials::new(
        c["AccessKeyId"].as_str().unwrap(),
        c["SecretAccessKey"].as_str().unwrap(),
        Some(c["Token"].as_str().unwrap().to_string()),
        None,
        "test",
    )
}

#[tokio::test]
async fn sigv4_verification() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let addr = sim.ec2_addr();
    let creds = role_credentials(&sim, "fed-master").await;
    let body = "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=instance.group-id&Filter.1.Value.1=sg-0f1e2d3c4b5a69788";
    let now = SystemTime::now();

    let good = signed_post(addr, body, &creds, "us-east-1", now);
    let r = raw(addr, &good).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    // Flip one byte of the signed body: the signature no longer matches.
    let mut tampered = good.clone();
    let at = tampered.len() - 2;
    tampered[at] ^= 0x01;
    let r = raw(addr, &tampered).await.unwrap();
    assert_eq!(
        (r.status, error_code(&r.body).as_str()),
        (403, "SignatureDoesNotMatch")
    );

    // Flip one byte of the signature itself.
    let text = String::from_utf8(good.clone()).unwrap();
    let sig_at = text.find("Signature=").unwrap() + "Signature=".len();
    let mut bad_sig = good.clone();
    bad_sig[sig_at] = if bad_sig[sig_at] == b'0' { b'1' } else { b'0' };
    let r = raw(addr, &bad_sig).await.unwrap();
    assert_eq!(
        (r.status, error_code(&r.body).as_str()),
        (403, "SignatureDoesNotMatch")
    );

    // The right key id with a wrong secret.
    let wrong = Credentials::new(
        creds.access_key_id(),
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        creds.session_token().map(String::from),
        None,
        "test",
    );
    let r = raw(addr, &signed_post(addr, body, &wrong, "us-east-1", now))
        .await
        .unwrap();
    assert_eq!(
        (r.status, error_code(&r.body).as_str()),
        (403, "SignatureDoesNotMatch")
    );

    // A key the region never issued.
    let unknown = Credentials::new(
        "ASIAUNKNOWNKEY000000",
        "secret",
        Some("tok".into()),
        None,
        "test",
    );
    let r = raw(addr, &signed_post(addr, body, &unknown, "us-east-1", now))
        .await
        .unwrap();
    assert_eq!(
        (r.status, error_code(&r.body).as_str()),
        (401, "AuthFailure")
    );

    // Role credentials without their session token.
    let tokenless = Credentials::new(
        creds.access_key_id(),
        creds.secret_access_key(),
        None,
        None,
        "test",
    );
    let r = raw(addr, &signed_post(addr, body, &tokenless, "us-east-1", now))
        .await
        .unwrap();
    assert_eq!(
        (r.status, error_code(&r.body).as_str()),
        (401, "AuthFailure")
    );

    // Scoped to another region.
    let r = raw(addr, &signed_post(addr, body, &creds, "eu-west-1", now))
        .await
        .unwrap();
    assert_eq!(
        (r.status, error_code(&r.body).as_str()),
        (401, "AuthFailure")
    );

    // Signed 20 minutes ago: outside the 15-minute window.
    let old = now - Duration::from_secs(20 * 60);
    let r = raw(addr, &signed_post(addr, body, &creds, "us-east-1", old))
        .await
        .unwrap();
    assert_eq!(
        (r.status, error_code(&r.body).as_str()),
        (400, "RequestExpired")
    );

    // Unsigned.
    let r = ec2_post(addr, body).await;
    assert_eq!(
        (r.status, error_code(&r.body).as_str()),
        (401, "MissingAuthenticationToken")
    );

    let log = sim.requests();
    let ec2: Vec<_> = log.iter().filter(|r| r.listener == Listener::Ec2).collect();
    assert_eq!(ec2.len(), 9);
    assert!(ec2[0].signed && ec2[0].token_present && ec2[0].status == 200);
    assert_eq!(ec2[0].action.as_deref(), Some("DescribeInstances"));
    assert!(!ec2[8].signed && !ec2[8].token_present && ec2[8].status == 401);
    let dump = format!("{log:?}");
    assert!(!dump.contains(creds.secret_access_key()));
    assert!(!dump.contains(creds.session_token().unwrap()));
    sim.shutdown().await;
}

#[tokio::test]
async fn explicit_and_expired_credentials() {
    let spec = ClusterSpec::from_yaml(
        r#"
credentials:
  - access_key_id: AKIDBERTHIMAGE000001
    secret_access_key: static-secret
  - access_key_id: ASIAEXPIRED000000001
    secret_access_key: old-secret
    session_token: old-token
    expiration: 2020-01-01T00:00:00Z
instances:
  - name: a
    iam_role: r
    credentials:
      access_key_id: ASIAEXPLICIT00000001
      secret_access_key: explicit-secret
      session_token: explicit-token
      expiration: 2099-01-01T00:00:00Z
"#,
    )
    .unwrap();
    let sim = Sim::start(spec).await.unwrap();
    let addr = sim.ec2_addr();
    let body = "Action=DescribeInstances&Version=2016-11-15";
    let now = SystemTime::now();
    let imds_addr = sim.imds_addr("a").unwrap();
    let t = token(imds_addr).await;
    let r = get(
        imds_addr,
        &t,
        "/latest/meta-data/iam/security-credentials/r",
    )
    .await;
    let served: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(served["AccessKeyId"], "ASIAEXPLICIT00000001");
    assert_eq!(served["Token"], "explicit-token");
    assert_eq!(served["Expiration"], "2099-01-01T00:00:00Z");
    let explicit = Credentials::new(
        "ASIAEXPLICIT00000001",
        "explicit-secret",
        Some("explicit-token".into()),
        None,
        "t",
    );
    assert_eq!(
        raw(addr, &signed_post(addr, body, &explicit, "us-east-1", now))
            .await
            .unwrap()
            .status,
        200
    );
    let stat = Credentials::new("AKIDBERTHIMAGE000001", "static-secret", None, None, "t");
    assert_eq!(
        raw(addr, &signed_post(addr, body, &stat, "us-east-1", now))
            .await
            .unwrap()
            .status,
        200
    );
    let expired = Credentials::new(
        "ASIAEXPIRED000000001",
        "old-secret",
        Some("old-token".into()),
        None,
        "t",
    );
    let r = raw(addr, &signed_post(addr, body, &expired, "us-east-1", now))
        .await
        .unwrap();
    assert_eq!(
        (r.status, error_code(&r.body).as_str()),
        (400, "RequestExpired")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn role_credentials_rotate_before_expiry() {
    let mut spec = ClusterSpec::seed();
    spec.credential_lifetime_secs = 2;
    let sim = Sim::start(spec).await.unwrap();
    let first = role_credentials(&sim, "fed-master").await;
    assert_eq!(
        role_credentials(&sim, "fed-master").await.access_key_id(),
        first.access_key_id()
    );
    // Past half the lifetime, IMDS serves new credentials; the old ones still sign until
    // they expire.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = role_credentials(&sim, "fed-master").await;
    assert_ne!(second.access_key_id(), first.access_key_id());
    let addr = sim.ec2_addr();
    let body = "Action=DescribeInstances&Version=2016-11-15";
    assert_eq!(
        raw(
            addr,
            &signed_post(addr, body, &first, "us-east-1", SystemTime::now())
        )
        .await
        .unwrap()
        .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = raw(
        addr,
        &signed_post(addr, body, &first, "us-east-1", SystemTime::now()),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, error_code(&r.body).as_str()),
        (400, "RequestExpired")
    );
    assert_eq!(
        raw(
            addr,
            &signed_post(addr, body, &second, "us-east-1", SystemTime::now())
        )
        .await
        .unwrap()
        .status,
        200
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_fail_throttle_reset_latency() {
    let sim = Sim::start(unsigned_seed()).await.unwrap();
    let addr = sim.ec2_addr();
    let body = "Action=DescribeInstances&Version=2016-11-15";
    let ec2 = sim.faults(Target::Ec2);

    ec2.fail_next(2, 503);
    for _ in 0..2 {
        let r = ec2_post(addr, body).await;
        assert_eq!(
            (r.status, error_code(&r.body).as_str()),
            (503, "Unavailable")
        );
    }
    assert_eq!(ec2_post(addr, body).await.status, 200);

    ec2.throttle_next(1);
    let r = ec2_post(addr, body).await;
    assert_eq!(
        (r.status, error_code(&r.body).as_str()),
        (503, "RequestLimitExceeded")
    );
    assert_eq!(ec2_post(addr, body).await.status, 200);

    ec2.reset_next(1);
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert!(
        raw(addr, req.as_bytes()).await.is_none(),
        "reset without a response"
    );
    assert_eq!(ec2_post(addr, body).await.status, 200);

    ec2.set_latency(Duration::from_millis(200));
    let t0 = Instant::now();
    assert_eq!(ec2_post(addr, body).await.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(200));
    ec2.set_latency(Duration::ZERO);

    // IMDS faults are per instance.
    let imds_faults = sim.faults(Target::Imds("fed-minion".into()));
    imds_faults.fail_next(1, 500);
    let master = sim.imds_addr("fed-master").unwrap();
    let minion = sim.imds_addr("fed-minion").unwrap();
    let t = token(master).await;
    assert_eq!(
        get(master, &t, "/latest/meta-data/instance-id")
            .await
            .status,
        200
    );
    let put = imds(
        minion,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
    )
    .await;
    assert_eq!(put.status, 500);
    let t = token(minion).await;
    assert_eq!(
        get(minion, &t, "/latest/meta-data/instance-id")
            .await
            .status,
        200
    );

    let statuses: Vec<u16> = sim
        .requests()
        .iter()
        .filter(|r| r.listener == Listener::Ec2)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [503, 503, 200, 503, 200, 0, 200, 200]);
    sim.shutdown().await;
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    // Each response leaves in one write with TCP_NODELAY (see http.rs); how fast a kept-alive
    // round trip is, is measured by the bench (`berth-bench`), not asserted here.
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let addr = sim.imds_addr("fed-master").unwrap();
    let t = token(addr).await;
    let sock = TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let mut r = BufReader::new(sock);
    let req = format!("GET /latest/meta-data/local-ipv4 HTTP/1.1\r\nHost: {addr}\r\nX-aws-ec2-metadata-token: {t}\r\n\r\n");
    for _ in 0..20 {
        r.get_mut().write_all(req.as_bytes()).await.unwrap();
        let reply = read_reply(&mut r).await.expect("kept alive");
        assert_eq!(reply.body, "172.30.0.246");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn launch_goes_pending_then_running_with_its_own_imds() {
    let mut spec = unsigned_seed();
    spec.launch_pending_ms = 300;
    let sim = Sim::start(spec.clone()).await.unwrap();
    let id = sim
        .launch(spec.not_launched("fed-minion-2").unwrap())
        .await
        .unwrap();
    assert_eq!(id, "i-0a1b2c3d4e5f60003");
    let q = format!("Action=DescribeInstances&Version=2016-11-15&InstanceId.1={id}");
    let r = ec2_post(sim.ec2_addr(), &q).await;
    assert_eq!(
        values(
            &xml_paths(&r.body),
            &format!("{INSTANCE}/instanceState/name")
        ),
        ["pending"]
    );
    let addr = sim.imds_addr("fed-minion-2").unwrap();
    let t = token(addr).await;
    assert_eq!(
        get(addr, &t, "/latest/meta-data/local-ipv4").await.body,
        "172.30.0.11"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = ec2_post(sim.ec2_addr(), &q).await;
    assert_eq!(
        values(
            &xml_paths(&r.body),
            &format!("{INSTANCE}/instanceState/name")
        ),
        ["running"]
    );
    // The same spec cannot launch twice.
    assert!(sim
        .launch(spec.not_launched("fed-minion-2").unwrap())
        .await
        .is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn imds_listens_on_ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIP imds_listens_on_ipv6_loopback: this host has no IPv6 loopback");
        assert!(std::env::var_os("CI").is_none(), "CI hosts must have ::1");
        return;
    }
    let mut spec = ClusterSpec::seed();
    spec.instances[0].imds_listen = Some("[::1]:0".parse().unwrap());
    let sim = Sim::start(spec).await.unwrap();
    let url = sim.imds_url("fed-master").unwrap();
    assert!(url.starts_with("http://[::1]:"), "{url}");
    let addr = sim.imds_addr("fed-master").unwrap();
    let t = token(addr).await;
    assert_eq!(
        get(addr, &t, "/latest/meta-data/instance-id").await.body,
        "i-0a1b2c3d4e5f60001"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn sigv4_signed_get_with_query_string() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let addr = sim.ec2_addr();
    let creds = role_credentials(&sim, "fed-minion").await;
    let query = "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3AName&Filter.1.Value.1=fed-mi%2A";
    let identity: Identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("ec2")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let host = addr.to_string();
    let uri = format!("http://{addr}/?{query}");
    let signable = SignableRequest::new(
        "GET",
        &uri,
        [("host", host.as_str())].into_iter(),
        SignableBody::Bytes(&[]),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = format!("GET /?{query} HTTP/1.1\r\nHost: {host}\r\n");
    for (n, v) in instructions.headers() {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let r = raw(addr, req.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // The filter value was decoded: `fed-mi*` is the minion only.
    assert_eq!(
        values(&xml_paths(&r.body), &format!("{INSTANCE}/instanceId")),
        ["i-0a1b2c3d4e5f60002"]
    );
    // Changing one query value after signing breaks the signature.
    let tampered = req.replacen("fed-mi%2A", "fed%2A", 1);
    let r = raw(addr, tampered.as_bytes()).await.unwrap();
    assert_eq!(
        (r.status, error_code(&r.body).as_str()),
        (403, "SignatureDoesNotMatch")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn http_pipelining_and_malformed_requests() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let addr = sim.imds_addr("fed-master").unwrap();
    // Two requests in one write: two answers, in order, on the same connection.
    let two = "PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\nGET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut r = BufReader::new(TcpStream::connect(addr).await.unwrap());
    r.get_mut().write_all(two.as_bytes()).await.unwrap();
    assert_eq!(read_reply(&mut r).await.unwrap().status, 200);
    assert_eq!(read_reply(&mut r).await.unwrap().status, 401);

    for (request, status) in [
        ("NONSENSE\r\n\r\n", 400),
        ("GET / HTTP/2.0\r\n\r\n", 505),
        ("GET / HTTP/1.1\r\nbroken header\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        ("PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        ("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    ] {
        let reply = raw(addr, request.as_bytes()).await.expect("an answer");
        assert_eq!(reply.status, status, "{request:?}");
        assert_eq!(reply.header("Connection"), Some("close"));
    }
    // HTTP/1.0 without keep-alive is answered and closed.
    let mut r = BufReader::new(TcpStream::connect(addr).await.unwrap());
    r.get_mut()
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut r).await.unwrap().status, 401);
    assert!(read_reply(&mut r).await.is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn one_reservation_holds_several_instances() {
    let mut spec = unsigned_seed();
    let mut a = InstanceSpec::new("minion-a", "172.30.0.50".parse().unwrap());
    a.reservation = Some("batch".into());
    let mut b = InstanceSpec::new("minion-b", "172.30.0.51".parse().unwrap());
    b.reservation = Some("batch".into());
    spec.instances.extend([a, b]);
    let sim = Sim::start(spec).await.unwrap();
    let r = ec2_post(
        sim.ec2_addr(),
        "Action=DescribeInstances&Version=2016-11-15",
    )
    .await;
    let p = xml_paths(&r.body);
    let reservations = values(
        &p,
        "DescribeInstancesResponse/reservationSet/item/reservationId",
    );
    assert_eq!(reservations.len(), 3, "two single ones and the batch");
    assert_eq!(values(&p, &format!("{INSTANCE}/instanceId")).len(), 4);
    assert_eq!(
        values(&p, &format!("{INSTANCE}/amiLaunchIndex")),
        ["0", "0", "0", "1"]
    );
    // The batch's two instances sit in the last reservation item.
    let last = r.body.rfind("<reservationId>").unwrap();
    assert_eq!(r.body[last..].matches("<instanceId>").count(), 2);
    let addr = sim.imds_addr("minion-b").unwrap();
    let t = token(addr).await;
    assert_eq!(
        get(addr, &t, "/latest/meta-data/ami-launch-index")
            .await
            .body,
        "1"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn oversized_request_head_is_refused() {
    let sim = Sim::start(ClusterSpec::seed()).await.unwrap();
    let addr = sim.imds_addr("fed-master").unwrap();
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(70 * 1024));
    let reply = raw(addr, long.as_bytes()).await.expect("an answer");
    assert_eq!(reply.status, 431);
    sim.shutdown().await;
}
