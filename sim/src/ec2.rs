//! The EC2 Query API endpoint: `DescribeInstances` and `DescribeTags`, by POST (form body) or
//! GET (query string), answered in the XML shapes of API version 2016-11-15, with EC2's error
//! shape, filters, paging and (optionally) SigV4 verification.
//!
//! Clients notice strictness, so the sim is strict where EC2 is: an unknown parameter, an unknown
//! filter, a `MaxResults` out of range or a foreign `NextToken` is a 400 with EC2's error code.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::faults::{FaultState, Injected};
use crate::filter::{self, Filter};
use crate::http::{Meta, Request, Response, Service};
use crate::images::{Caller, Store};
use crate::region::{Instance, Region};
use crate::time_fmt::rfc3339_millis;

pub(crate) const XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// `MaxResults` bounds EC2 enforces for both actions.
const MIN_MAX_RESULTS: usize = 5;
const MAX_MAX_RESULTS: usize = 1000;

pub(crate) struct Ec2 {
    region: Arc<Region>,
    /// Snapshots and images (shared with the other regions of the account).
    images: Arc<Store>,
    /// The listener's faults: its clock offset is this endpoint's clock.
    faults: Arc<FaultState>,
    /// Parameter Store, served on this listener for requests whose `X-Amz-Target` names SSM.
    ssm: Arc<crate::ssm::Ssm>,
}

/// An EC2 error: HTTP status, code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

fn api_err(status: u16, code: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code: code.into(),
        message: message.into(),
    }
}

fn bad_value(message: impl Into<String>) -> ApiError {
    api_err(400, "InvalidParameterValue", message)
}

pub(crate) fn request_id() -> String {
    let r: [u32; 4] = [
        fastrand::u32(..),
        fastrand::u32(..),
        fastrand::u32(..),
        fastrand::u32(..),
    ];
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:04x}{:08x}",
        r[0],
        r[1] >> 16,
        r[1] & 0xfff,
        (r[2] >> 16 & 0x3fff) | 0x8000,
        r[2] & 0xffff,
        r[3]
    )
}

pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn error_response(e: &ApiError) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        escape(&e.code),
        escape(&e.message),
        request_id()
    );
    Response::new(e.status, "text/xml;charset=UTF-8", body)
}

/// The request's parameters: the query string, plus the form body of a POST.
fn params(req: &Request) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = url::form_urlencoded::parse(req.query.as_bytes())
        .into_owned()
        .collect();
    if req.method == "POST" {
        out.extend(url::form_urlencoded::parse(&req.body).into_owned());
    }
    out
}

/// The parsed parameters of a Describe call.
#[derive(Debug, Default)]
struct Describe {
    filters: Vec<Filter>,
    instance_ids: Vec<String>,
    max_results: Option<usize>,
    next_token: Option<String>,
    dry_run: bool,
}

fn index_of(key: &str, part: &str) -> Result<u32, ApiError> {
    part.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
        api_err(
            400,
            "UnknownParameter",
            format!("The parameter {key} is not recognized"),
        )
    })
}

fn parse_describe(params: &[(String, String)], instances: bool) -> Result<Describe, ApiError> {
    let mut d = Describe::default();
    let mut filters: BTreeMap<u32, (Option<String>, BTreeMap<u32, String>)> = BTreeMap::new();
    let mut ids: BTreeMap<u32, String> = BTreeMap::new();
    for (k, v) in params {
        let parts: Vec<&str> = k.split('.').collect();
        match parts.as_slice() {
            ["Action"] | ["Version"] => {}
            ["MaxResults"] => {
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (MIN_MAX_RESULTS..=MAX_MAX_RESULTS).contains(n));
                d.max_results = Some(n.ok_or_else(|| {
                    bad_value(format!(
                        "Value ( {v} ) for parameter maxResults is invalid. Expecting a value between {MIN_MAX_RESULTS} and {MAX_MAX_RESULTS}."
                    ))
                })?);
            }
            ["NextToken"] => d.next_token = Some(v.clone()),
            ["DryRun"] => d.dry_run = v == "true",
            ["Filter", n, "Name"] => {
                filters.entry(index_of(k, n)?).or_default().0 = Some(v.clone());
            }
            ["Filter", n, "Value", m] => {
                let m = index_of(k, m)?;
                filters
                    .entry(index_of(k, n)?)
                    .or_default()
                    .1
                    .insert(m, v.clone());
            }
            ["InstanceId", n] if instances => {
                ids.insert(index_of(k, n)?, v.clone());
            }
            _ => {
                return Err(api_err(
                    400,
                    "UnknownParameter",
                    format!("The parameter {k} is not recognized"),
                ))
            }
        }
    }
    for (n, (name, values)) in filters {
        let name = name.ok_or_else(|| {
            api_err(
                400,
                "MissingParameter",
                format!("The request must contain the parameter Filter.{n}.Name"),
            )
        })?;
        let known = if instances {
            filter::known_instance_filter(&name)
        } else {
            filter::known_tag_filter(&name)
        };
        if !known {
            return Err(bad_value(format!("The filter '{name}' is invalid")));
        }
        if values.is_empty() {
            return Err(bad_value(format!("The filter '{name}' has no values")));
        }
        d.filters.push(Filter {
            name,
            values: values.into_values().collect(),
        });
    }
    d.instance_ids = ids.into_values().collect();
    if d.max_results.is_some() && !d.instance_ids.is_empty() {
        return Err(api_err(
            400,
            "InvalidParameterCombination",
            "The parameter instancesSet cannot be used with the parameter maxResults",
        ));
    }
    Ok(d)
}

/// An opaque paging token: where the next page starts, bound to the request it belongs to so a
/// token from one query is refused by another (as EC2 does).
fn token_for(position: usize, binding: &str) -> String {
    let digest = Sha256::digest(binding.as_bytes());
    hex::encode(format!("{position}:{}", hex::encode(&digest[..8])))
}

fn position_from(token: &str, binding: &str) -> Result<usize, ApiError> {
    let invalid = || {
        api_err(
            400,
            "InvalidPaginationToken",
            format!("Invalid pagination token: {token}"),
        )
    };
    let raw = hex::decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(raw).map_err(|_| invalid())?;
    let (pos, digest) = text.split_once(':').ok_or_else(invalid)?;
    if digest != hex::encode(&Sha256::digest(binding.as_bytes())[..8]) {
        return Err(invalid());
    }
    pos.parse().map_err(|_| invalid())
}

fn binding(action: &str, d: &Describe) -> String {
    let mut s = action.to_string();
    for f in &d.filters {
        let _ = write!(s, "|{}={}", f.name, f.values.join(","));
    }
    s
}

impl Ec2 {
    pub fn new(
        region: Arc<Region>,
        images: Arc<Store>,
        faults: Arc<FaultState>,
        ssm: Arc<crate::ssm::Ssm>,
    ) -> Self {
        Ec2 {
            region,
            images,
            faults,
            ssm,
        }
    }

    fn caller(&self) -> Caller<'_> {
        Caller {
            region: &self.region.region,
            account_id: &self.region.account_id,
        }
    }

    /// The EBS direct APIs under `/snapshots`, signed for service `ebs`.
    fn dispatch_ebs(&self, req: &Request) -> Response {
        let Some(action) = crate::ebs::action_of(&req.method, &req.path) else {
            return crate::ebs::error_response(&api_err(
                404,
                "ResourceNotFoundException",
                format!("No EBS API at {} {}", req.method, req.path),
            ));
        };
        if self.region.verify_sigv4 {
            if let Err(e) = crate::sigv4::verify_for(&self.region, req, self.faults.now(), "ebs") {
                let kind = if e.status == 403 || e.status == 401 {
                    "AccessDeniedException:UNAUTHORIZED_ACCOUNT"
                } else {
                    "ValidationException:OTHER"
                };
                return crate::ebs::error_response(&api_err(
                    e.status.max(400),
                    kind,
                    format!("{}: {}", e.code, e.message),
                ));
            }
        }
        if let Some(e) = self.images.injected_failure(action) {
            return crate::ebs::error_response(&e);
        }
        match crate::ebs::handle(&self.images, &self.caller(), action, req) {
            Ok(resp) => resp,
            Err(e) => crate::ebs::error_response(&e),
        }
    }

    fn dispatch(&self, req: &Request) -> Result<String, ApiError> {
        if req.method != "GET" && req.method != "POST" {
            return Err(api_err(
                405,
                "InvalidAction",
                format!("The method {} is not supported", req.method),
            ));
        }
        if self.region.verify_sigv4 {
            crate::sigv4::verify(&self.region, req, self.faults.now())
                .map_err(|e| api_err(e.status, e.code, e.message))?;
        }
        let params = params(req);
        let action = params
            .iter()
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| {
                api_err(
                    400,
                    "MissingAction",
                    "The request must contain the parameter Action",
                )
            })?;
        if let Some(e) = self.images.injected_failure(action) {
            return Err(e);
        }
        if let Some(result) = self.images.handle(&self.caller(), action, &params) {
            return result;
        }
        match action {
            "DescribeInstances" => self.describe_instances(&parse_describe(&params, true)?),
            "DescribeTags" => self.describe_tags(&parse_describe(&params, false)?),
            other => Err(api_err(
                400,
                "InvalidAction",
                format!("The action {other} is not valid for this web service."),
            )),
        }
    }

    fn page_size(&self, d: &Describe) -> usize {
        d.max_results
            .unwrap_or(usize::MAX)
            .min(self.region.page_size)
    }

    fn describe_instances(&self, d: &Describe) -> Result<String, ApiError> {
        let bind = binding("DescribeInstances", d);
        let start = match &d.next_token {
            Some(t) => position_from(t, &bind)?,
            None => 0,
        };
        let w = self.region.world();
        for id in &d.instance_ids {
            let hex = id.strip_prefix("i-").unwrap_or("");
            if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(api_err(
                    400,
                    "InvalidInstanceID.Malformed",
                    format!("Invalid id: \"{id}\""),
                ));
            }
            if !w.instances.iter().any(|i| &i.id == id) {
                return Err(api_err(
                    400,
                    "InvalidInstanceID.NotFound",
                    format!("The instance ID '{id}' does not exist"),
                ));
            }
        }
        if d.dry_run {
            return Err(dry_run());
        }
        let limit = self.page_size(d);
        let mut page: Vec<&Instance> = Vec::new();
        let mut next = None;
        for (pos, inst) in w.instances.iter().enumerate().skip(start) {
            if !d.instance_ids.is_empty() && !d.instance_ids.contains(&inst.id) {
                continue;
            }
            if !filter::all_match(&d.filters, |name| {
                filter::instance_values(&self.region, inst, name)
            }) {
                continue;
            }
            if page.len() == limit {
                next = Some(token_for(pos, &bind));
                break;
            }
            page.push(inst);
        }
        let mut x = String::new();
        let _ = write!(
            x,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstancesResponse xmlns=\"{XMLNS}\">\n    <requestId>{}</requestId>\n    <reservationSet>",
            request_id()
        );
        // Instances of one reservation share one reservationSet item, in page order.
        let mut reservations: Vec<(&str, Vec<&Instance>)> = Vec::new();
        for inst in page {
            match reservations
                .iter_mut()
                .find(|(r, _)| *r == inst.reservation_id)
            {
                Some((_, members)) => members.push(inst),
                None => reservations.push((&inst.reservation_id, vec![inst])),
            }
        }
        for (reservation_id, members) in reservations {
            let _ = write!(
                x,
                "\n        <item>\n            <reservationId>{reservation_id}</reservationId>\n            <ownerId>{}</ownerId>\n            <groupSet/>\n            <instancesSet>",
                self.region.account_id
            );
            for inst in members {
                self.write_instance(&mut x, inst, inst.launch_index(&w.instances));
            }
            x.push_str("\n            </instancesSet>\n        </item>");
        }
        x.push_str("\n    </reservationSet>");
        if let Some(t) = next {
            let _ = write!(x, "\n    <nextToken>{t}</nextToken>");
        }
        x.push_str("\n</DescribeInstancesResponse>");
        Ok(x)
    }

    fn write_instance(&self, x: &mut String, i: &Instance, launch_index: usize) {
        let r = &self.region;
        let e = escape;
        let mut groups = String::new();
        for g in &i.groups {
            let _ = write!(
                groups,
                "<item><groupId>{}</groupId><groupName>{}</groupName></item>",
                e(&g.id),
                e(&g.name)
            );
        }
        x.push_str("\n                <item>");
        let mut f = |name: &str, value: &str| {
            if value.is_empty() {
                let _ = write!(x, "\n                    <{name}/>");
            } else {
                let _ = write!(x, "\n                    <{name}>{value}</{name}>");
            }
        };
        let net = i.has_network();
        f("instanceId", &e(&i.id));
        f("imageId", &e(&i.image_id));
        f(
            "instanceState",
            &format!(
                "<code>{}</code><name>{}</name>",
                i.state_code(),
                e(i.state())
            ),
        );
        f(
            "privateDnsName",
            &if net {
                e(&i.private_dns_name)
            } else {
                String::new()
            },
        );
        f("dnsName", "");
        f("reason", "");
        f("amiLaunchIndex", &launch_index.to_string());
        f("productCodes", "");
        f("instanceType", &e(&i.instance_type));
        f("launchTime", &rfc3339_millis(i.launch_time));
        f(
            "placement",
            &format!(
                "<availabilityZone>{}</availabilityZone><groupName/><tenancy>default</tenancy>",
                e(&r.availability_zone)
            ),
        );
        f("monitoring", "<state>disabled</state>");
        if net {
            f("subnetId", &e(&i.subnet_id));
            f("vpcId", &e(&i.vpc_id));
            f("privateIpAddress", &i.private_ip.to_string());
        }
        f("sourceDestCheck", "true");
        f("groupSet", &groups);
        f("architecture", "x86_64");
        f("rootDeviceType", "ebs");
        f("rootDeviceName", "/dev/xvda");
        f("blockDeviceMapping", "");
        f("virtualizationType", "hvm");
        f("clientToken", "");
        if !i.tags.is_empty() {
            let mut tags = String::new();
            for (k, v) in &i.tags {
                let _ = write!(
                    tags,
                    "<item><key>{}</key><value>{}</value></item>",
                    e(k),
                    e(v)
                );
            }
            f("tagSet", &tags);
        }
        f("hypervisor", "xen");
        if net {
            f(
                "networkInterfaceSet",
                &format!(
                    "<item><networkInterfaceId>{}</networkInterfaceId><subnetId>{}</subnetId><vpcId>{}</vpcId><description/><ownerId>{}</ownerId><status>in-use</status><macAddress>{}</macAddress><privateIpAddress>{}</privateIpAddress><privateDnsName>{}</privateDnsName><sourceDestCheck>true</sourceDestCheck><groupSet>{}</groupSet><attachment><deviceIndex>0</deviceIndex><status>attached</status></attachment><privateIpAddressesSet><item><privateIpAddress>{}</privateIpAddress><privateDnsName>{}</privateDnsName><primary>true</primary></item></privateIpAddressesSet></item>",
                    e(&i.eni_id), e(&i.subnet_id), e(&i.vpc_id), r.account_id, e(&i.mac),
                    i.private_ip, e(&i.private_dns_name), groups, i.private_ip, e(&i.private_dns_name)
                ),
            );
        }
        f("ebsOptimized", "false");
        f(
            "metadataOptions",
            &format!(
                "<state>applied</state><httpTokens>required</httpTokens><httpPutResponseHopLimit>2</httpPutResponseHopLimit><httpEndpoint>enabled</httpEndpoint><httpProtocolIpv6>enabled</httpProtocolIpv6><instanceMetadataTags>{}</instanceMetadataTags>",
                if i.imds_tags { "enabled" } else { "disabled" }
            ),
        );
        x.push_str("\n                </item>");
    }

    fn describe_tags(&self, d: &Describe) -> Result<String, ApiError> {
        if d.dry_run {
            return Err(dry_run());
        }
        let bind = binding("DescribeTags", d);
        let start = match &d.next_token {
            Some(t) => position_from(t, &bind)?,
            None => 0,
        };
        let w = self.region.world();
        let mut all: Vec<(&Instance, &str, &str)> = Vec::new();
        for inst in &w.instances {
            // Tags of terminated instances disappear with them.
            if inst.state() == "terminated" {
                continue;
            }
            for (k, v) in &inst.tags {
                let ok = filter::all_match(&d.filters, |name| match name {
                    "resource-id" => vec![inst.id.clone()],
                    "resource-type" => vec!["instance".into()],
                    "key" => vec![k.clone()],
                    "value" => vec![v.clone()],
                    other => match other.strip_prefix("tag:") {
                        Some(tk) => inst.tags.get(tk).cloned().into_iter().collect(),
                        None => vec![],
                    },
                });
                if ok {
                    all.push((inst, k, v));
                }
            }
        }
        let limit = self.page_size(d);
        let end = start.saturating_add(limit).min(all.len());
        let mut x = String::new();
        let _ = write!(
            x,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeTagsResponse xmlns=\"{XMLNS}\">\n    <requestId>{}</requestId>\n    <tagSet>",
            request_id()
        );
        for (inst, k, v) in all.get(start..end).unwrap_or_default() {
            let value = if v.is_empty() {
                "<value/>".to_string()
            } else {
                format!("<value>{}</value>", escape(v))
            };
            let _ = write!(
                x,
                "\n        <item>\n            <resourceId>{}</resourceId>\n            <resourceType>instance</resourceType>\n            <key>{}</key>\n            {value}\n        </item>",
                escape(&inst.id),
                escape(k)
            );
        }
        x.push_str("\n    </tagSet>");
        if end < all.len() {
            let _ = write!(x, "\n    <nextToken>{}</nextToken>", token_for(end, &bind));
        }
        x.push_str("\n</DescribeTagsResponse>");
        Ok(x)
    }
}

fn dry_run() -> ApiError {
    api_err(
        412,
        "DryRunOperation",
        "Request would have succeeded, but DryRun flag is set.",
    )
}

impl Service for Ec2 {
    fn inspect(&self, req: &Request) -> Meta {
        if crate::ssm::is_ssm(req) {
            return Meta {
                action: crate::ssm::action_of(req),
                token_present: req.header("x-amz-security-token").is_some(),
                signed: req
                    .header("authorization")
                    .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 ")),
            };
        }
        if crate::ebs::is_ebs_path(&req.path) {
            return Meta {
                action: crate::ebs::action_of(&req.method, &req.path).map(str::to_string),
                token_present: req.header("x-amz-security-token").is_some(),
                signed: req
                    .header("authorization")
                    .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 ")),
            };
        }
        Meta {
            action: params(req)
                .into_iter()
                .find(|(k, _)| k == "Action")
                .map(|(_, v)| v),
            token_present: req.header("x-amz-security-token").is_some(),
            signed: req
                .header("authorization")
                .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 ")),
        }
    }

    fn handle(&self, req: &Request) -> Response {
        if crate::ssm::is_ssm(req) {
            return self.ssm.handle(req);
        }
        if crate::ebs::is_ebs_path(&req.path) {
            return self.dispatch_ebs(req);
        }
        match self.dispatch(req) {
            Ok(body) => Response::new(200, "text/xml;charset=UTF-8", body),
            Err(e) => error_response(&e),
        }
    }

    fn injected(&self, fault: Injected) -> Response {
        let e = match fault {
            Injected::Throttle => api_err(503, "RequestLimitExceeded", "Request limit exceeded."),
            Injected::Fail(503) | Injected::Reset => api_err(
                503,
                "Unavailable",
                "The server is overloaded and can't handle the request.",
            ),
            Injected::Fail(status) => {
                api_err(status, "InternalError", "An internal error has occurred.")
            }
        };
        error_response(&e)
    }
}
