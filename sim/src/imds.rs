//! The instance metadata service of one instance, as IMDSv2-only instances see it: a token from
//! `PUT /latest/api/token`, then GETs carrying it.
//!
//! What a client notices is kept: 401 without a valid token, 403 for a token request carrying
//! `X-Forwarded-For` (AWS refuses tokens to anything that came through a proxy), 400 for a TTL
//! outside 1..=21600, directory listings one entry per line with subdirectories ending in `/`,
//! dated versions (`/2021-03-23/…`) served like `/latest/`, and 404 for anything absent,
//! including `tags/` when IMDS tags are off and `user-data` when there is none.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::faults::{FaultState, Injected};
use crate::http::{Meta, Request, Response, Service};
use crate::region::{Instance, Region};
use crate::time_fmt::rfc3339;

/// The TTL bounds AWS enforces on `X-aws-ec2-metadata-token-ttl-seconds`.
const MIN_TTL: u64 = 1;
const MAX_TTL: u64 = 21600;

/// The API versions listed at `/`. Any date-shaped version is served like `latest`.
const VERSIONS: &[&str] = &["1.0", "2009-04-04", "2016-09-02", "2021-03-23", "latest"];

pub(crate) struct Imds {
    region: Arc<Region>,
    instance_id: String,
    faults: Arc<FaultState>,
    /// token -> (expires, fault epoch it was minted in)
    tokens: Mutex<HashMap<String, (Instant, u64)>>,
}

enum Node {
    Dir(Vec<String>),
    Leaf(String),
    /// User-data, which may be binary (gzip).
    Bytes(Vec<u8>),
}

impl Imds {
    pub fn new(region: Arc<Region>, instance_id: String, faults: Arc<FaultState>) -> Self {
        Imds {
            region,
            instance_id,
            faults,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn put_token(&self, req: &Request) -> Response {
        if req.header("x-forwarded-for").is_some() {
            return error_page(403);
        }
        let ttl = match req
            .header("x-aws-ec2-metadata-token-ttl-seconds")
            .map(|v| v.parse::<u64>())
        {
            Some(Ok(ttl)) if (MIN_TTL..=MAX_TTL).contains(&ttl) => ttl,
            _ => return error_page(400),
        };
        let token: String = (0..56)
            .map(|_| {
                const A: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                A[fastrand::usize(..A.len())] as char
            })
            .collect();
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|_, (exp, _)| *exp > now);
        tokens.insert(
            token.clone(),
            (now + Duration::from_secs(ttl), self.faults.token_epoch()),
        );
        Response::text(200, token)
            .with_header("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", ttl.to_string())
    }

    fn token_valid(&self, req: &Request) -> bool {
        let Some(token) = req.header("x-aws-ec2-metadata-token") else {
            return false;
        };
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.get(token).is_some_and(|(exp, epoch)| {
            *exp > Instant::now() && *epoch == self.faults.token_epoch()
        })
    }

    fn get(&self, req: &Request) -> Response {
        if !self.token_valid(req) {
            return error_page(401);
        }
        let segments: Vec<String> = req
            .path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let Some((version, rest)) = segments.split_first() else {
            return Response::text(200, VERSIONS.join("\n"));
        };
        if version != "latest" && version != "1.0" && !is_date(version) {
            return error_page(404);
        }
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        // Credentials are minted outside the world lock that `lookup` holds.
        let node = match rest.as_slice() {
            ["meta-data", "iam", "security-credentials", role] => {
                self.credentials_json(role).map(Node::Leaf)
            }
            _ => {
                let w = self.region.world();
                w.instances
                    .iter()
                    .find(|i| i.id == self.instance_id)
                    .and_then(|inst| self.lookup(inst, inst.launch_index(&w.instances), &rest))
            }
        };
        match node {
            Some(Node::Dir(entries)) => Response::text(200, entries.join("\n")),
            Some(Node::Leaf(body)) => Response::text(200, body),
            Some(Node::Bytes(body)) => Response::new(200, "application/octet-stream", body),
            None => error_page(404),
        }
    }

    fn credentials_json(&self, role: &str) -> Option<String> {
        let same_role = {
            let w = self.region.world();
            let inst = w.instances.iter().find(|i| i.id == self.instance_id)?;
            inst.iam_role.as_deref() == Some(role)
        };
        if !same_role {
            return None;
        }
        let c = self.region.role_credentials(&self.instance_id)?;
        // A struct, not a map, so the keys come in the order IMDS writes them.
        #[derive(serde::Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Doc {
            code: &'static str,
            last_updated: String,
            #[serde(rename = "Type")]
            kind: &'static str,
            access_key_id: String,
            secret_access_key: String,
            token: String,
            expiration: String,
        }
        let doc = Doc {
            code: "Success",
            last_updated: rfc3339(c.last_updated),
            kind: "AWS-HMAC",
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            token: c.token,
            expiration: rfc3339(c.expiration),
        };
        Some(serde_json::to_string_pretty(&doc).unwrap_or_default())
    }

    fn lookup(&self, inst: &Instance, launch_index: usize, path: &[&str]) -> Option<Node> {
        let r = &self.region;
        let dir = |v: &[&str]| Some(Node::Dir(v.iter().map(|s| s.to_string()).collect()));
        match path {
            [] => {
                let mut v = vec!["dynamic", "meta-data"];
                if inst.user_data.is_some() {
                    v.push("user-data");
                }
                dir(&v)
            }
            ["user-data"] => inst.user_data.clone().map(Node::Bytes),
            ["dynamic"] => dir(&["instance-identity/"]),
            ["dynamic", "instance-identity"] => dir(&["document"]),
            ["dynamic", "instance-identity", "document"] => {
                let doc = serde_json::json!({
                    "accountId": r.account_id,
                    "architecture": "x86_64",
                    "availabilityZone": r.availability_zone,
                    "billingProducts": null,
                    "devpayProductCodes": null,
                    "marketplaceProductCodes": null,
                    "imageId": inst.image_id,
                    "instanceId": inst.id,
                    "instanceType": inst.instance_type,
                    "kernelId": null,
                    "pendingTime": rfc3339(inst.launch_time),
                    "privateIp": inst.private_ip.to_string(),
                    "ramdiskId": null,
                    "region": r.region,
                    "version": "2017-09-30",
                });
                Some(Node::Leaf(
                    serde_json::to_string_pretty(&doc).unwrap_or_default(),
                ))
            }
            ["meta-data", rest @ ..] => self.meta_data(inst, launch_index, rest),
            _ => None,
        }
    }

    fn meta_data(&self, inst: &Instance, launch_index: usize, path: &[&str]) -> Option<Node> {
        let r = &self.region;
        let leaf = |s: String| Some(Node::Leaf(s));
        let dir = |v: &[&str]| Some(Node::Dir(v.iter().map(|s| s.to_string()).collect()));
        let group_ids = || {
            inst.groups
                .iter()
                .map(|g| g.id.clone())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let group_names = || {
            inst.groups
                .iter()
                .map(|g| g.name.clone())
                .collect::<Vec<_>>()
                .join("\n")
        };
        match path {
            [] => {
                let mut v = vec!["ami-id", "ami-launch-index", "hostname"];
                if inst.iam_role.is_some() {
                    v.push("iam/");
                }
                v.extend([
                    "instance-id",
                    "instance-type",
                    "local-hostname",
                    "local-ipv4",
                    "mac",
                    "network/",
                    "placement/",
                    "reservation-id",
                    "security-groups",
                ]);
                if inst.imds_tags {
                    v.push("tags/");
                }
                dir(&v)
            }
            ["ami-id"] => leaf(inst.image_id.clone()),
            ["ami-launch-index"] => leaf(launch_index.to_string()),
            ["hostname"] | ["local-hostname"] => leaf(
                inst.local_hostname
                    .clone()
                    .unwrap_or_else(|| inst.private_dns_name.clone()),
            ),
            ["instance-id"] => leaf(inst.id.clone()),
            ["instance-type"] => leaf(inst.instance_type.clone()),
            ["local-ipv4"] if !inst.ipv6_only => leaf(inst.private_ip.to_string()),
            ["mac"] => leaf(inst.mac.clone()),
            ["reservation-id"] => leaf(inst.reservation_id.clone()),
            ["security-groups"] => leaf(group_names()),
            ["placement"] => dir(&["availability-zone", "region"]),
            ["placement", "availability-zone"] => leaf(r.availability_zone.clone()),
            ["placement", "region"] => leaf(r.region.clone()),
            ["network"] => dir(&["interfaces/"]),
            ["network", "interfaces"] => dir(&["macs/"]),
            ["network", "interfaces", "macs"] => Some(Node::Dir(vec![format!("{}/", inst.mac)])),
            ["network", "interfaces", "macs", mac, rest @ ..] if *mac == inst.mac => match rest {
                [] => dir(&[
                    "device-number",
                    "interface-id",
                    "local-hostname",
                    "local-ipv4s",
                    "mac",
                    "owner-id",
                    "security-group-ids",
                    "security-groups",
                    "subnet-id",
                    "vpc-id",
                ]),
                ["device-number"] => leaf("0".into()),
                ["interface-id"] => leaf(inst.eni_id.clone()),
                ["local-hostname"] => leaf(inst.private_dns_name.clone()),
                ["local-ipv4s"] if !inst.ipv6_only => leaf(inst.private_ip.to_string()),
                ["ipv6s"] if inst.ipv6_only => leaf(ipv6_of(inst)),
                ["mac"] => leaf(inst.mac.clone()),
                ["owner-id"] => leaf(r.account_id.clone()),
                ["security-group-ids"] => leaf(group_ids()),
                ["security-groups"] => leaf(group_names()),
                ["subnet-id"] => leaf(inst.subnet_id.clone()),
                ["vpc-id"] => leaf(inst.vpc_id.clone()),
                _ => None,
            },
            ["tags", rest @ ..] if inst.imds_tags => match rest {
                [] => dir(&["instance/"]),
                ["instance"] => dir(&inst.imds_tag_keys()),
                ["instance", key] if crate::cluster::imds_tag_key_ok(key) => {
                    inst.tags.get(*key).cloned().map(Node::Leaf)
                }
                _ => None,
            },
            ["iam", rest @ ..] => {
                let role = inst.iam_role.as_deref()?;
                match rest {
                    [] => dir(&["info", "security-credentials/"]),
                    ["info"] => {
                        let doc = serde_json::json!({
                            "Code": "Success",
                            "LastUpdated": rfc3339(inst.launch_time),
                            "InstanceProfileArn": format!("arn:aws:iam::{}:instance-profile/{role}", r.account_id),
                            "InstanceProfileId": crate::region::derived_id("AIPA", role).replace('-', "").to_uppercase(),
                        });
                        leaf(serde_json::to_string_pretty(&doc).unwrap_or_default())
                    }
                    ["security-credentials"] => dir(&[role]),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

impl Service for Imds {
    fn inspect(&self, req: &Request) -> Meta {
        Meta {
            action: None,
            token_present: req.header("x-aws-ec2-metadata-token").is_some(),
            signed: false,
        }
    }

    fn handle(&self, req: &Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("PUT", "/latest/api/token") => self.put_token(req),
            ("GET", _) => self.get(req),
            _ => error_page(405),
        }
    }

    fn injected(&self, fault: Injected) -> Response {
        match fault {
            Injected::Fail(status) => error_page(status),
            Injected::Throttle | Injected::Reset => error_page(503),
        }
    }
}

/// IMDS answers errors with a small XHTML page.
fn error_page(status: u16) -> Response {
    let title = match status {
        400 => "400 - Bad Request",
        401 => "401 - Unauthorized",
        403 => "403 - Forbidden",
        404 => "404 - Not Found",
        405 => "405 - Method Not Allowed",
        503 => "503 - Service Unavailable",
        _ => "Error",
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n </body>\n</html>\n"
    );
    Response::new(status, "text/html", body)
}

/// An instance's IPv6 address on an IPv6-only subnet: the IPv4 one's octets in a documentation
/// prefix, so it is stable and unique within the region.
fn ipv6_of(inst: &Instance) -> String {
    let [a, b, c, d] = inst.private_ip.octets();
    format!("2001:db8::{a:x}:{b:x}:{c:x}:{d:x}")
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
