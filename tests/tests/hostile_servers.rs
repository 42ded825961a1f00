//! The real `berth-agent` against IMDS and EC2 endpoints that lie: scripted servers on loopback
//! (tests/src/hostile.rs), one script per case.
//!
//! - Redirects: IMDS and EC2 answer 302/307 pointing at a capture server, which must receive
//!   nothing at all (no connection), since the request would carry the IMDS token or the
//!   session token and a replayable signature.
//! - Secrets planted in every field of an error document (Code, Message, RequestID, the root
//!   element's name, a mismatched end tag, a malformed success page, a hostile IMDS value) are
//!   searched for in every byte the agent wrote: stdout, stderr, every file under its root
//!   (state.json included).
//! - Each bound just under and just over its limit, with the agent's peak RSS read with
//!   `wait4` (through `berth-rss`), and the worst inputs of the past (pages of 2001 instances with fresh nextTokens,
//!   a 60 MB RequestID, 20,000 tag keys, 400 tags of 1 MiB).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_e2e::agent::fedora_root;
use berth_e2e::hostile::{
    describe_page, files_under, imds_handler, imds_items, run_agent, Answer, Measured, Req,
    Scripted,
};

const ACCESS_KEY: &str = "ASIAHOSTILETEST00001";
const SECRET: &str = "SecKey0wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLE";
const SESSION: &str = "SessTok0FQoGZXIvYXdzEXAMPLEsessiontoken9x7Q";
const IMDS_TOKEN: &str = "ImdsTok0AQAEAGZXIvYXdzEXAMPLEimdssessiontok";
/// The release agent's peak RSS on any input stays under 20 MiB: 6 to 10 MiB past a bound or
/// hostile, 15 MiB for an 8 MiB page, about 17 MiB for 6,000 instances (measured with
/// `BERTH_AGENT_UNDER_TEST=target/release/berth-agent`). A debug build maps about 10 MiB more
/// of itself, so its limits are looser by that much.
fn rss_limits() -> (i64, i64) {
    let release = match std::env::var("BERTH_AGENT_UNDER_TEST") {
        Ok(path) => path.contains("/release/"),
        Err(_) => !cfg!(debug_assertions),
    };
    if release {
        (20 * 1024, 20 * 1024)
    } else {
        (24 * 1024, 32 * 1024)
    }
}

/// Past a bound, or hostile (KiB).
fn rss_limit() -> i64 {
    rss_limits().0
}

/// The largest input within the bounds (6,000 instances, an 8 MiB page), KiB: the page is
/// buffered whole before it is parsed, and the membership and files of every node are built in
/// memory.
fn rss_at_bound() -> i64 {
    rss_limits().1
}
const RUN_LIMIT: Duration = Duration::from_secs(150);

fn imds() -> Scripted {
    Scripted::start(imds_handler(
        imds_items(ACCESS_KEY, SECRET, SESSION),
        IMDS_TOKEN,
    ))
}

fn imds_with(change: impl FnOnce(&mut BTreeMap<String, Vec<u8>>)) -> Scripted {
    let mut items = imds_items(ACCESS_KEY, SECRET, SESSION);
    change(&mut items);
    Scripted::start(imds_handler(items, IMDS_TOKEN))
}

fn once(imds: &Scripted, ec2: &Scripted) -> (Measured, tempfile::TempDir) {
    let root = fedora_root();
    let m = run_agent(
        &["run", "--once", "--no-host-actions"],
        root.path(),
        &imds.url(),
        &ec2.url(),
        RUN_LIMIT,
    );
    (m, root)
}

fn report(case: &str, m: &Measured) {
    eprintln!(
        "{case}: exit {}, peak RSS {} KiB, {:?}",
        m.code, m.max_rss_kib, m.wall
    );
    if std::env::var_os("BERTH_SHOW_STDERR").is_some() {
        eprintln!("{}", m.stderr_text());
    }
}

/// No byte the agent wrote holds any secret, nor the first 12 characters of one. A failure
/// after the identity was read is recorded in state.json, which is searched too.
fn assert_no_secret(case: &str, m: &Measured, root: &std::path::Path, recorded: bool) {
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("stdout".into(), m.stdout.clone()),
        ("stderr".into(), m.stderr.clone()),
    ];
    places.extend(files_under(root));
    assert!(
        !recorded || places.iter().any(|(p, _)| p.ends_with("state.json")),
        "{case}: a failed discovery is recorded in state.json"
    );
    for secret in [SECRET, SESSION, IMDS_TOKEN] {
        for needle in [secret, &secret[..12]] {
            for (place, bytes) in &places {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{case}: {place} holds a secret:\n{}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }
}

type Script = dyn Fn(&Req) -> Answer + Send + Sync;

fn error_answer(body: String) -> impl Fn(&Req) -> Answer + Send + Sync + 'static {
    move |_| Answer::status(400, body.clone()).with_header("content-type", "text/xml")
}

#[test]
fn secrets_in_every_field_of_an_error_never_leave() {
    let all = format!("{SESSION} {SECRET} {IMDS_TOKEN}");
    let cases: Vec<(&str, Box<Script>)> = vec![
        (
            "Code",
            Box::new(error_answer(format!(
                "<Response><Errors><Error><Code>{SESSION}</Code><Message>m</Message></Error>\
                 </Errors><RequestID>r</RequestID></Response>"
            ))),
        ),
        (
            "Message",
            Box::new(error_answer(format!(
                "<Response><Errors><Error><Code>AuthFailure</Code><Message>{all}</Message>\
                 </Error></Errors><RequestID>r</RequestID></Response>"
            ))),
        ),
        (
            "RequestID",
            Box::new(error_answer(format!(
                "<Response><Errors><Error><Code>AuthFailure</Code><Message>m</Message></Error>\
                 </Errors><RequestID>{all}</RequestID></Response>"
            ))),
        ),
        (
            "root element",
            Box::new(error_answer(format!(
                "<{SESSION}><Errors><Error><Code>X</Code></Error></Errors></{SESSION}>"
            ))),
        ),
        (
            "mismatched end tag",
            Box::new(error_answer(format!(
                "<Response><Errors><Error><Code>X</Code></{SECRET}></Errors></Response>"
            ))),
        ),
        (
            "malformed success page",
            Box::new(|_: &Req| {
                Answer::ok(format!(
                    "<DescribeInstancesResponse><{IMDS_TOKEN}></{SESSION}></DescribeInstancesResponse>"
                ))
            }),
        ),
        (
            "invalid instance id",
            Box::new(|_: &Req| {
                Answer::ok(format!(
                    "<DescribeInstancesResponse><reservationSet><item><instancesSet><item>\
                     <instanceId>i-{SESSION}</instanceId><instanceState><name>running</name>\
                     </instanceState></item></instancesSet></item></reservationSet>\
                     </DescribeInstancesResponse>"
                ))
            }),
        ),
    ];
    let imds = imds();
    for (case, handler) in cases {
        let ec2 = Scripted::start(handler);
        let (m, root) = once(&imds, &ec2);
        report(case, &m);
        assert_eq!(m.code, 4, "{case}: {}", m.stderr_text());
        assert!(
            ec2.requests()
                .iter()
                .any(|r| r.header("x-amz-security-token") == Some(SESSION)),
            "{case}: the agent reached EC2 with the session token, so it held it"
        );
        assert_no_secret(case, &m, root.path(), true);
        let status = std::process::Command::new(berth_e2e::agent::bin("berth-agent"))
            .args(["status", "--root"])
            .arg(root.path())
            .output()
            .unwrap();
        let mut shown = status.stdout.clone();
        shown.extend(&status.stderr);
        assert!(
            !String::from_utf8_lossy(&shown).contains(&SESSION[..12]),
            "{case}: status shows a secret"
        );
    }
}

/// A hostile IMDS that echoes the IMDS token into a value berth quotes in its error.
#[test]
fn an_imds_value_echoing_the_token_is_scrubbed() {
    let imds = imds_with(|items| {
        items.insert(
            "meta-data/local-hostname".into(),
            format!("bad_{IMDS_TOKEN}.internal").into_bytes(),
        );
    });
    let ec2 = Scripted::start(|_| Answer::status(500, ""));
    let (m, root) = once(&imds, &ec2);
    report("IMDS value", &m);
    assert_ne!(m.code, 0);
    assert!(
        m.stderr_text().contains("local-hostname"),
        "{}",
        m.stderr_text()
    );
    assert_no_secret("IMDS value", &m, root.path(), false);
    assert!(ec2.requests().is_empty(), "nothing reached EC2");
}

fn redirect_to(capture: &Scripted, status: u16) -> impl Fn(&Req) -> Answer + Send + Sync {
    let location = format!("{}stolen", capture.url());
    move |_| Answer::status(status, "").with_header("location", &location)
}

#[test]
fn ec2_redirects_are_not_followed() {
    let imds = imds();
    for status in [301, 302, 303, 307, 308] {
        let capture = Scripted::start(|_| Answer::ok(""));
        let ec2 = Scripted::start(redirect_to(&capture, status));
        let (m, root) = once(&imds, &ec2);
        report(&format!("EC2 {status}"), &m);
        assert_eq!(m.code, 4, "{status}: {}", m.stderr_text());
        assert!(m.stderr_text().contains("redirect"), "{}", m.stderr_text());
        assert_eq!(
            capture.connections(),
            0,
            "{status}: the redirect target received a connection"
        );
        assert_eq!(ec2.requests().len(), 1, "a redirect is not retried");
        assert_no_secret(&format!("EC2 {status}"), &m, root.path(), true);
    }
}

#[test]
fn imds_redirects_are_not_followed() {
    for (status, on_token) in [(302, false), (307, false), (307, true), (301, true)] {
        let capture = Scripted::start(|_| Answer::ok(""));
        let redirect = redirect_to(&capture, status);
        let inner = imds_handler(imds_items(ACCESS_KEY, SECRET, SESSION), IMDS_TOKEN);
        let imds = Scripted::start(move |req: &Req| {
            let is_token = req.path == "/latest/api/token";
            if is_token == on_token {
                redirect(req)
            } else {
                inner(req)
            }
        });
        let ec2 = Scripted::start(|_| Answer::status(500, ""));
        let (m, root) = once(&imds, &ec2);
        let case = format!("IMDS {status} on {}", if on_token { "PUT" } else { "GET" });
        report(&case, &m);
        assert_eq!(m.code, 4, "{case}: {}", m.stderr_text());
        assert!(m.stderr_text().contains("redirect"), "{}", m.stderr_text());
        assert_eq!(
            capture.connections(),
            0,
            "{case}: the target got a connection"
        );
        assert_no_secret(&case, &m, root.path(), false);
    }
}

/// An EC2 endpoint serving `total` minions in pages of `per_page` (the last one shorter),
/// each optionally padded, every page but the last with a fresh nextToken.
fn paging_ec2(total: usize, per_page: usize, padding: usize) -> (Scripted, Arc<AtomicUsize>) {
    let pages = total.div_ceil(per_page).max(1);
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let ec2 = Scripted::start(move |req: &Req| {
        let page: usize = req
            .param("NextToken")
            .and_then(|t| t.strip_prefix('p').and_then(|n| n.parse().ok()))
            .unwrap_or(0);
        counter.fetch_add(1, Ordering::SeqCst);
        let next = (page + 1 < pages).then(|| format!("p{}", page + 1));
        let start = page * per_page + 1;
        let end = start + per_page.min(total - page * per_page);
        Answer::ok(describe_page(start..end, next.as_deref(), padding))
    });
    (ec2, served)
}

/// `rss_limit`: the peak RSS allowed, KiB.
fn bound_case(
    case: &str,
    (total, per_page, padding): (usize, usize, usize),
    converges: bool,
    rss_limit: i64,
) {
    let imds = imds();
    let (ec2, served) = paging_ec2(total, per_page, padding);
    let (m, root) = once(&imds, &ec2);
    report(case, &m);
    if converges {
        assert_eq!(m.code, 0, "{case}: {}", m.stderr_text());
        let hosts = std::fs::read_to_string(root.path().join("etc/hosts")).unwrap();
        assert!(hosts.contains("fed-master"), "{case}: hosts written");
    } else {
        assert_eq!(m.code, 4, "{case}: {}", m.stderr_text());
        assert!(
            m.stderr_text().contains("bound"),
            "{case}: {}",
            m.stderr_text()
        );
        assert!(
            !root.path().join("etc/kubernetes").exists(),
            "{case}: nothing was configured"
        );
    }
    eprintln!(
        "{case}: {} request(s) served",
        served.load(Ordering::SeqCst)
    );
    assert!(
        m.max_rss_kib < rss_limit,
        "{case}: peak RSS {} KiB",
        m.max_rss_kib
    );
}

#[test]
fn instances_per_page_bound() {
    bound_case(
        "1000 instances in a page",
        (1000, 1000, 0),
        true,
        rss_at_bound(),
    );
    bound_case(
        "1001 instances in a page",
        (1001, 1001, 0),
        false,
        rss_limit(),
    );
}

#[test]
fn instances_per_call_bound() {
    bound_case(
        "6000 instances in 6 pages",
        (6000, 1000, 0),
        true,
        rss_at_bound(),
    );
    // The 6,000 instances within the bound are held when the 6,001st arrives.
    bound_case(
        "6001 instances in 7 pages",
        (6001, 1000, 0),
        false,
        rss_at_bound(),
    );
}

#[test]
fn pages_per_call_bound() {
    bound_case("200 pages", (200, 1, 0), true, rss_limit());
    bound_case("201 pages", (201, 1, 0), false, rss_limit());
}

#[test]
fn response_bytes_bound() {
    let limit = berth_ec2::api::DESCRIBE_RESPONSE_MAX_BYTES;
    let page = describe_page(1..2, None, 0).len();
    bound_case(
        "a page of 8 MiB",
        (1, 1, limit - page - 64),
        true,
        rss_at_bound(),
    );
    let imds = imds();
    let (ec2, _) = paging_ec2(1, 1, limit);
    let (m, _root) = once(&imds, &ec2);
    report("a page over 8 MiB", &m);
    assert_eq!(m.code, 4, "{}", m.stderr_text());
    assert!(
        m.stderr_text().contains("larger than"),
        "{}",
        m.stderr_text()
    );
    assert!(
        m.max_rss_kib < rss_limit(),
        "peak RSS {} KiB",
        m.max_rss_kib
    );
}

/// The worst inputs seen before the bounds: pages of 2001 instances with fresh nextTokens,
/// until the 1000-page cap (2.54 GB then), and a 60 MB RequestID (a 60 MB log line then).
#[test]
fn former_worst_cases_stay_small() {
    let imds = imds();
    let (ec2, served) = paging_ec2(usize::MAX, 2001, 0);
    let (m, _root) = once(&imds, &ec2);
    report("pages of 2001 instances", &m);
    assert_eq!(m.code, 4, "{}", m.stderr_text());
    assert_eq!(
        served.load(Ordering::SeqCst),
        1,
        "refused at the first page"
    );
    assert!(
        m.max_rss_kib < rss_limit(),
        "peak RSS {} KiB",
        m.max_rss_kib
    );

    let huge = "r".repeat(60 << 20);
    let body = format!(
        "<Response><Errors><Error><Code>AuthFailure</Code><Message>m</Message></Error></Errors>\
         <RequestID>{huge}</RequestID></Response>"
    );
    drop(huge);
    let ec2 = Scripted::start(error_answer(body));
    let (m, _root) = once(&imds, &ec2);
    report("60 MB RequestID", &m);
    assert_eq!(m.code, 4, "{}", m.stderr_text());
    assert!(
        m.stderr.len() < 16 * 1024,
        "stderr is {} bytes",
        m.stderr.len()
    );
    assert!(
        m.max_rss_kib < rss_limit(),
        "peak RSS {} KiB",
        m.max_rss_kib
    );
}

/// 20,000 tag keys cost a few requests, not one each; 400 tags of 1 MiB are never read.
#[test]
fn tag_listings_and_values_are_bounded() {
    let (ec2, _) = paging_ec2(1, 1, 0);
    let imds = imds_with(|items| {
        let mut listing: String = (0..20_000).map(|i| format!("k{i:05}\n")).collect();
        listing.push_str("role\nName\n");
        items.insert("meta-data/tags/instance".into(), listing.into_bytes());
    });
    let (m, _root) = once(&imds, &ec2);
    report("20 000 tag keys", &m);
    assert_eq!(m.code, 0, "{}", m.stderr_text());
    let tag_reads = imds
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/latest/meta-data/tags/instance/"))
        .count();
    // The listing, then berth's three tags by name (the listing is over its bound).
    assert!(tag_reads <= 4, "{tag_reads} tag reads");
    assert!(m.wall < Duration::from_secs(20), "{:?}", m.wall);

    let big = vec![b'v'; 1 << 20];
    let imds = imds_with(|items| {
        let mut listing: String = (0..400).map(|i| format!("big{i}\n")).collect();
        listing.push_str("role\nName\n");
        items.insert("meta-data/tags/instance".into(), listing.into_bytes());
        for i in 0..400 {
            items.insert(format!("meta-data/tags/instance/big{i}"), big.clone());
        }
    });
    let (m, _root) = once(&imds, &ec2);
    report("400 tags of 1 MiB", &m);
    assert_eq!(m.code, 0, "{}", m.stderr_text());
    assert!(
        m.max_rss_kib < rss_limit(),
        "peak RSS {} KiB",
        m.max_rss_kib
    );
    assert!(imds.requests().iter().all(|r| !r.path.contains("/big")));
}
