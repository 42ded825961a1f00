//! Scripted IMDS and EC2 servers on loopback, for the real `berth-agent` against answers no
//! honest endpoint gives: redirects, secrets echoed into error documents, answers at and past
//! each of berth's bounds. Plain threads and `std::net`, so a test drives them without a
//! runtime. And a child-process runner that measures the agent's peak RSS with `wait4`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request as the server read it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A form parameter of a POST body (`Action`, `NextToken`).
    pub fn param(&self, name: &str) -> Option<String> {
        String::from_utf8_lossy(&self.body)
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the server does with a request.
pub enum Answer {
    Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Read the request and never answer, holding the connection.
    Silent,
}

impl Answer {
    pub fn ok(body: impl Into<Vec<u8>>) -> Answer {
        Answer::status(200, body)
    }

    pub fn status(status: u16, body: impl Into<Vec<u8>>) -> Answer {
        Answer::Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Answer {
        if let Answer::Reply { headers, .. } = &mut self {
            headers.push((name.to_string(), value.to_string()));
        }
        self
    }
}

type Handler = dyn Fn(&Req) -> Answer + Send + Sync;

/// A scripted HTTP/1.1 server on 127.0.0.1; stopped (its accept loop) when dropped.
pub struct Scripted {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Req>>>,
    connections: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Scripted {
    pub fn start(handler: impl Fn(&Req) -> Answer + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let (requests, connections, stop) =
                (requests.clone(), connections.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            *connections.lock().unwrap() += 1;
                            let (handler, requests, stop) =
                                (handler.clone(), requests.clone(), stop.clone());
                            std::thread::spawn(move || serve(stream, &*handler, &requests, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Scripted {
            addr,
            requests,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }

    /// Connections accepted so far, whether or not a request followed.
    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, handler: &Handler, requests: &Mutex<Vec<Req>>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let mut reader = BufReader::new(stream);
    loop {
        let Some(req) = read_request(&mut reader) else {
            return;
        };
        requests.lock().unwrap().push(req.clone());
        match handler(&req) {
            Answer::Silent => {
                // Hold the connection until the client closes it or the server stops.
                let mut buf = [0u8; 1024];
                let _ = reader
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_millis(200)));
                while !stop.load(Ordering::SeqCst) {
                    match reader.get_mut().read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => return,
                    }
                }
                return;
            }
            Answer::Reply {
                status,
                headers,
                body,
            } => {
                let mut head = format!(
                    "HTTP/1.1 {status} Scripted\r\ncontent-length: {}\r\nconnection: keep-alive\r\n",
                    body.len()
                );
                for (n, v) in headers {
                    head.push_str(&format!("{n}: {v}\r\n"));
                }
                head.push_str("\r\n");
                // One write: a head and body in two would wait for the client's delayed ACK.
                let mut out = head.into_bytes();
                out.extend_from_slice(&body);
                if reader.get_mut().write_all(&out).is_err() {
                    return;
                }
            }
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Req> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Req {
        method,
        path,
        headers,
        body,
    })
}

/// The facts a scripted IMDS serves for one instance.
pub const INSTANCE_ID: &str = "i-0a1b2c3d4e5f60718";
pub const MAC: &str = "0e:49:61:0f:c3:11";
pub const GROUP: &str = "sg-0123456789abcdef0";
pub const VPC: &str = "vpc-0b7e4f2a91c3d5e60";
pub const SUBNET: &str = "subnet-0c1d2e3f4a5b6c7d8";

/// An IMDSv2 server for one master instance: identity, tags (`role=master`, `Name`), a role
/// with the given credentials. `items` are paths under `/latest/`; `extra` overrides or adds.
pub fn imds_items(
    access_key: &str,
    secret: &str,
    session_token: &str,
) -> BTreeMap<String, Vec<u8>> {
    let iface = format!("meta-data/network/interfaces/macs/{MAC}");
    let expiration = time_in(6 * 3600);
    let creds = format!(
        "{{\"Code\":\"Success\",\"LastUpdated\":\"2026-01-01T00:00:00Z\",\"Type\":\"AWS-HMAC\",\
         \"AccessKeyId\":\"{access_key}\",\"SecretAccessKey\":\"{secret}\",\"Token\":\"{session_token}\",\
         \"Expiration\":\"{expiration}\"}}"
    );
    [
        ("meta-data/instance-id", INSTANCE_ID.to_string()),
        ("meta-data/placement/region", "us-east-1".into()),
        ("meta-data/placement/availability-zone", "us-east-1a".into()),
        ("meta-data/mac", MAC.into()),
        ("meta-data/local-ipv4", "172.30.0.10".into()),
        (
            "meta-data/local-hostname",
            "ip-172-30-0-10.ec2.internal".into(),
        ),
        (&format!("{iface}/vpc-id"), VPC.into()),
        (&format!("{iface}/subnet-id"), SUBNET.into()),
        (&format!("{iface}/security-group-ids"), GROUP.into()),
        ("meta-data/tags/instance", "role\nName".into()),
        ("meta-data/tags/instance/role", "master".into()),
        ("meta-data/tags/instance/Name", "fed-master".into()),
        ("meta-data/iam/security-credentials/", "berth-node".into()),
        ("meta-data/iam/security-credentials/berth-node", creds),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_bytes()))
    .collect()
}

/// RFC 3339 for now + `secs`.
fn time_in(secs: u64) -> String {
    let t = std::time::SystemTime::now() + Duration::from_secs(secs);
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let days = d / 86400;
    let (h, m, s) = ((d % 86400) / 3600, (d % 3600) / 60, d % 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// A handler serving `items` as IMDSv2 does: a token from PUT, GETs only with it, 404 for
/// anything absent. `token` is the session token it hands out.
pub fn imds_handler(
    items: BTreeMap<String, Vec<u8>>,
    token: &str,
) -> impl Fn(&Req) -> Answer + Send + Sync + 'static {
    let token = token.to_string();
    move |req: &Req| {
        if req.path == "/latest/api/token" {
            return if req.method == "PUT" {
                Answer::ok(token.clone())
                    .with_header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
            } else {
                Answer::status(405, "")
            };
        }
        if req.header("x-aws-ec2-metadata-token") != Some(token.as_str()) {
            return Answer::status(401, "");
        }
        let path = req.path.trim_start_matches("/latest/");
        match items
            .get(path)
            .or_else(|| items.get(path.trim_end_matches('/')))
        {
            Some(v) => Answer::ok(v.clone()),
            None => Answer::status(404, ""),
        }
    }
}

/// One instance of a DescribeInstances page, as EC2 writes it (about 1.5 KB).
pub fn instance_xml(n: usize, role: &str) -> String {
    let id = format!("i-{:017x}", 0x0a00_0000_0000_0000u64 + n as u64);
    let ip = format!("172.30.{}.{}", (n / 250) % 250, n % 250 + 2);
    format!(
        "<item><instanceId>{id}</instanceId><imageId>ami-0123456789abcdef0</imageId>\
         <instanceState><code>16</code><name>running</name></instanceState>\
         <privateDnsName>ip-{dns}.ec2.internal</privateDnsName><dnsName/><reason/>\
         <amiLaunchIndex>0</amiLaunchIndex><productCodes/><instanceType>t3.small</instanceType>\
         <launchTime>2026-01-01T00:00:00.000Z</launchTime><placement><availabilityZone>us-east-1a\
         </availabilityZone><groupName/><tenancy>default</tenancy></placement><monitoring><state>\
         disabled</state></monitoring><subnetId>{SUBNET}</subnetId><vpcId>{VPC}</vpcId>\
         <privateIpAddress>{ip}</privateIpAddress><sourceDestCheck>true</sourceDestCheck>\
         <groupSet><item><groupId>{GROUP}</groupId><groupName>seed</groupName></item></groupSet>\
         <architecture>x86_64</architecture><rootDeviceType>ebs</rootDeviceType>\
         <tagSet><item><key>role</key><value>{role}</value></item><item><key>Name</key><value>\
         node-{n}</value></item><item><key>team</key><value>platform</value></item></tagSet>\
         <hypervisor>xen</hypervisor></item>",
        dns = ip.replace('.', "-"),
    )
}

/// A DescribeInstancesResponse with instances `range`, and `next` as its nextToken.
pub fn describe_page(range: std::ops::Range<usize>, next: Option<&str>, padding: usize) -> String {
    let mut x = String::with_capacity(range.len() * 1600 + padding + 512);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId>");
    if padding > 0 {
        x.push_str("<padding>");
        x.push_str(&"p".repeat(padding));
        x.push_str("</padding>");
    }
    x.push_str("<reservationSet><item><reservationId>r-0123</reservationId><instancesSet>");
    for n in range {
        x.push_str(&instance_xml(n, if n == 0 { "master" } else { "minion" }));
    }
    x.push_str("</instancesSet></item></reservationSet>");
    if let Some(t) = next {
        x.push_str(&format!("<nextToken>{t}</nextToken>"));
    }
    x.push_str("</DescribeInstancesResponse>");
    x
}

/// What a run of the agent left.
#[derive(Debug)]
pub struct Measured {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Peak resident set size of the agent process, KiB (`ru_maxrss` from `wait4`).
    pub max_rss_kib: i64,
    pub wall: Duration,
}

impl Measured {
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs `berth-agent ARGS --root ROOT --imds-endpoint IMDS --ec2-endpoint EC2` under
/// `berth-rss` (tests/src/bin/berth-rss.rs), a small process that spawns it and reads its
/// peak RSS with `wait4`: measured from the test process itself, the figure would include
/// the test's own memory, which a spawned child shares until it executes. The agent is killed
/// (by PID, by `berth-rss`) if it outlives `limit`.
pub fn run_agent(args: &[&str], root: &Path, imds: &str, ec2: &str, limit: Duration) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let rss_path = dir.path().join("rss");
    // Another build of the agent (e.g. an older one, to compare) can be measured the same way.
    let agent = std::env::var_os("BERTH_AGENT_UNDER_TEST")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::agent::bin("berth-agent"));
    let started = Instant::now();
    let status = Command::new(rss_helper())
        .arg(&rss_path)
        .arg(limit.as_secs().to_string())
        .arg(agent)
        .args(args)
        .arg("--root")
        .arg(root)
        .args(["--imds-endpoint", imds, "--ec2-endpoint", ec2])
        .env("BERTH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .expect("berth-rss runs");
    let wall = started.elapsed();
    let report = std::fs::read_to_string(&rss_path).unwrap_or_default();
    let mut fields = report
        .split_whitespace()
        .map(|f| f.parse::<i64>().unwrap_or(-1));
    let (code, max_rss_kib) = (fields.next().unwrap_or(-1), fields.next().unwrap_or(-1));
    assert!(
        status.success() && max_rss_kib > 0,
        "berth-rss failed: {status}, {report:?}"
    );
    Measured {
        code: code as i32,
        stdout: std::fs::read(out_path).unwrap(),
        stderr: std::fs::read(err_path).unwrap(),
        max_rss_kib,
        wall,
    }
}

/// `berth-rss`, a binary of this package: cargo builds it before the integration tests.
fn rss_helper() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/berth-rss
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("berth-rss");
    assert!(p.exists(), "{} missing", p.display());
    p
}

/// Every byte the agent wrote under `root` (relative path → content).
pub fn files_under(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, bytes);
            }
        }
    }
    out
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
