//! Parsers for the EC2 Query API responses berth reads: DescribeInstances, DescribeTags, and the
//! error shape `<Response><Errors><Error><Code>/<Message>`.
//!
//! Responses are untrusted: the parsers build a small element tree (bounded depth), then take
//! exactly the fields berth uses by path, so an instance's own `groupSet` is never confused with
//! its reservation's. A missing required field is an error naming its path and item.

use std::collections::BTreeMap;
use std::net::IpAddr;

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::model::{Instance, TagDescription};
use crate::redact::RemoteText;

/// Deeper than any EC2 response (DescribeInstances nests about 8 levels); a guard against a
/// hostile body exhausting the stack or memory.
const MAX_DEPTH: usize = 64;

/// Why a response could not be read. Every piece of the document quoted here (an element name
/// the parser saw, a value) is a [`RemoteText`]: scrubbed of secrets and bounded.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("malformed XML at byte {position}: {message}")]
    Syntax { position: u64, message: RemoteText },
    #[error("XML nests deeper than {MAX_DEPTH} elements")]
    TooDeep,
    #[error("XML document has no root element")]
    Empty,
    #[error("expected a <{expected}> document, found <{found}>")]
    UnexpectedRoot {
        expected: &'static str,
        found: RemoteText,
    },
    #[error("{path}: required element missing")]
    Missing { path: String },
    #[error("{path}: invalid value {value:?}: {reason}")]
    Invalid {
        path: String,
        value: RemoteText,
        reason: &'static str,
    },
    #[error("more than {limit} {what} in one response")]
    TooMany { what: &'static str, limit: usize },
}

/// One element: local name (namespace prefix dropped), text of a leaf, and children.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All children named `name`.
    pub(crate) fn children_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The element reached by following `path` from here (first match at each step).
    pub fn at(&self, path: &[&str]) -> Option<&Element> {
        path.iter().try_fold(self, |e, name| e.child(name))
    }

    /// The text at `path`, when the element exists.
    pub(crate) fn text_at(&self, path: &[&str]) -> Option<&str> {
        self.at(path).map(|e| e.text.as_str())
    }

    /// The `item` children of the set at `path` (EC2's list encoding); none when absent.
    pub fn items<'a>(&'a self, path: &[&str]) -> impl Iterator<Item = &'a Element> + 'a {
        self.at(path)
            .into_iter()
            .flat_map(|set| set.children_named("item"))
    }
}

/// Parses a whole document into its root element.
pub fn parse_document(xml: &str) -> Result<Element, XmlError> {
    let mut reader = Reader::from_str(xml);
    // Whitespace between elements carries nothing in EC2's documents; dropping it early saves
    // an event and an unescape per element (a 5000-instance answer has about 150 000).
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Element> = Vec::with_capacity(16);
    let syntax = |reader: &Reader<&[u8]>, e: &dyn std::fmt::Display| XmlError::Syntax {
        position: reader.error_position(),
        message: RemoteText::new(&e.to_string()),
    };
    loop {
        let event = reader.read_event().map_err(|e| syntax(&reader, &e))?;
        match event {
            Event::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                stack.push(Element {
                    name: String::from_utf8_lossy(start.local_name().as_ref()).into_owned(),
                    ..Element::default()
                });
            }
            Event::Empty(start) => {
                let element = Element {
                    name: String::from_utf8_lossy(start.local_name().as_ref()).into_owned(),
                    ..Element::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return Ok(element),
                }
            }
            Event::End(_) => {
                // quick-xml has already checked that the end tag matches.
                let element = stack.pop().ok_or(XmlError::Empty)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => return Ok(element),
                }
            }
            Event::Text(text) => {
                let text = text.unescape().map_err(|e| syntax(&reader, &e))?;
                if let Some(current) = stack.last_mut() {
                    current.text.push_str(&text);
                }
            }
            Event::CData(data) => {
                if let Some(current) = stack.last_mut() {
                    current
                        .text
                        .push_str(&String::from_utf8_lossy(&data.into_inner()));
                }
            }
            Event::Eof => {
                return Err(match stack.last() {
                    Some(open) => XmlError::Syntax {
                        position: reader.buffer_position(),
                        message: RemoteText::new(&format!("document ends inside <{}>", open.name)),
                    },
                    None => XmlError::Empty,
                })
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
}

fn expect_root(xml: &str, expected: &'static str) -> Result<Element, XmlError> {
    let root = parse_document(xml)?;
    if root.name != expected {
        return Err(XmlError::UnexpectedRoot {
            expected,
            found: RemoteText::new(&root.name),
        });
    }
    Ok(root)
}

fn required<'a>(e: &'a Element, path: &[&str], at: &str) -> Result<&'a str, XmlError> {
    match e.text_at(path).map(str::trim) {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(XmlError::Missing {
            path: format!("{at}/{}", path.join("/")),
        }),
    }
}

fn optional(e: &Element, path: &[&str]) -> Option<String> {
    e.text_at(path)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

fn next_token(root: &Element) -> Option<String> {
    optional(root, &["nextToken"])
}

/// Checks an EC2 resource ID: `prefix-` then lowercase hex.
fn check_id(value: &str, prefix: &str, path: &str) -> Result<(), XmlError> {
    let ok = value
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            !hex.is_empty() && hex.len() <= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
    if ok {
        Ok(())
    } else {
        Err(XmlError::Invalid {
            path: path.to_string(),
            value: RemoteText::new(value),
            reason: "not an EC2 resource ID of the expected kind",
        })
    }
}

/// One page of DescribeInstances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeInstancesPage {
    pub instances: Vec<Instance>,
    pub next_token: Option<String>,
}

/// The elements of a DescribeInstances answer that berth reads; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum El {
    Response,
    ReservationSet,
    Item,
    InstancesSet,
    InstanceId,
    InstanceState,
    StateName,
    PrivateIpAddress,
    PrivateDnsName,
    VpcId,
    SubnetId,
    GroupSet,
    GroupId,
    TagSet,
    Key,
    Value,
    NextToken,
    Other,
}

fn name_of(local: &[u8]) -> El {
    match local {
        b"DescribeInstancesResponse" => El::Response,
        b"reservationSet" => El::ReservationSet,
        b"item" => El::Item,
        b"instancesSet" => El::InstancesSet,
        b"instanceId" => El::InstanceId,
        b"instanceState" => El::InstanceState,
        b"name" => El::StateName,
        b"privateIpAddress" => El::PrivateIpAddress,
        b"privateDnsName" => El::PrivateDnsName,
        b"vpcId" => El::VpcId,
        b"subnetId" => El::SubnetId,
        b"groupSet" => El::GroupSet,
        b"groupId" => El::GroupId,
        b"tagSet" => El::TagSet,
        b"key" => El::Key,
        b"value" => El::Value,
        b"nextToken" => El::NextToken,
        _ => El::Other,
    }
}

/// `DescribeInstancesResponse/reservationSet/item/instancesSet/item`: one instance.
const INSTANCE: [El; 5] = [
    El::Response,
    El::ReservationSet,
    El::Item,
    El::InstancesSet,
    El::Item,
];

/// An instance as its elements arrive.
#[derive(Default)]
struct Draft {
    instance_id: Option<String>,
    state: Option<String>,
    private_ip_address: Option<String>,
    private_dns_name: Option<String>,
    vpc_id: Option<String>,
    subnet_id: Option<String>,
    security_group_ids: Vec<String>,
    group_id: Option<String>,
    tags: BTreeMap<String, String>,
    tag_key: Option<String>,
    tag_value: String,
}

fn trimmed(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Parses a `DescribeInstancesResponse`.
///
/// A streaming parser rather than the element tree the other shapes use: a page holds up to 1000
/// instances of some 60 elements each, and discovery re-reads every page at every poll. Only the
/// fields berth uses are kept, by their full path from the instance element, so an instance's own
/// `groupSet` is never confused with its reservation's or a network interface's.
pub fn parse_describe_instances(xml: &str) -> Result<DescribeInstancesPage, XmlError> {
    parse_describe_instances_bounded(xml, &InstanceBounds::default())
}

/// What [`parse_describe_instances_bounded`] keeps.
#[derive(Debug, Clone)]
pub struct InstanceBounds<'a> {
    /// More instances than this in the page is an error ([`XmlError::TooMany`]), found before
    /// the extra instance is built: EC2 never sends more than the `MaxResults` asked.
    pub max_instances: usize,
    /// Only these tag keys are kept (`None`: every tag). The rest of `tagSet` is skipped, so
    /// the tags berth does not read cost no memory.
    pub tag_keys: Option<&'a [&'a str]>,
}

impl Default for InstanceBounds<'_> {
    fn default() -> Self {
        InstanceBounds {
            max_instances: usize::MAX,
            tag_keys: None,
        }
    }
}

/// As [`parse_describe_instances`], within `bounds`.
pub(crate) fn parse_describe_instances_bounded(
    xml: &str,
    bounds: &InstanceBounds<'_>,
) -> Result<DescribeInstancesPage, XmlError> {
    let mut reader = Reader::from_str(xml);
    let mut path: Vec<El> = Vec::with_capacity(16);
    let mut text = String::new();
    let mut instances = Vec::new();
    let mut next_token = None;
    let mut draft = Draft::default();
    let (mut reservation, mut in_reservation) = (0usize, 0usize);
    let syntax = |reader: &Reader<&[u8]>, e: &dyn std::fmt::Display| XmlError::Syntax {
        position: reader.error_position(),
        message: RemoteText::new(&e.to_string()),
    };
    let at = |r: usize, i: usize| format!("reservationSet/item[{r}]/instancesSet/item[{i}]");
    loop {
        let event = reader.read_event().map_err(|e| syntax(&reader, &e))?;
        let (start, end) = match &event {
            Event::Start(e) => (Some(name_of(e.local_name().as_ref())), false),
            Event::Empty(e) => (Some(name_of(e.local_name().as_ref())), true),
            Event::End(_) => (None, true),
            Event::Text(t) => {
                // Only the leaves berth reads are unescaped; the rest of a page is skipped.
                let wanted = matches!(
                    path.last(),
                    Some(
                        El::InstanceId
                            | El::StateName
                            | El::PrivateIpAddress
                            | El::PrivateDnsName
                            | El::VpcId
                            | El::SubnetId
                            | El::GroupId
                            | El::Key
                            | El::Value
                            | El::NextToken
                    )
                );
                if wanted {
                    text.push_str(&t.unescape().map_err(|e| syntax(&reader, &e))?);
                }
                continue;
            }
            Event::CData(d) => {
                text.push_str(&String::from_utf8_lossy(d));
                continue;
            }
            Event::Eof if path.is_empty() => return Err(XmlError::Empty),
            Event::Eof => {
                return Err(XmlError::Syntax {
                    position: reader.buffer_position(),
                    message: RemoteText::new("document ends inside an element"),
                })
            }
            _ => continue,
        };
        if let Some(name) = start {
            if path.is_empty() && name != El::Response {
                let found = match &event {
                    Event::Start(e) | Event::Empty(e) => {
                        String::from_utf8_lossy(e.local_name().as_ref()).into_owned()
                    }
                    _ => String::new(),
                };
                return Err(XmlError::UnexpectedRoot {
                    expected: "DescribeInstancesResponse",
                    found: RemoteText::new(&found),
                });
            }
            if path.len() >= MAX_DEPTH {
                return Err(XmlError::TooDeep);
            }
            path.push(name);
            text.clear();
            if path[..] == INSTANCE {
                if instances.len() >= bounds.max_instances {
                    return Err(XmlError::TooMany {
                        what: "instances",
                        limit: bounds.max_instances,
                    });
                }
                draft = Draft::default();
            } else if path.len() == INSTANCE.len() + 2 && path[..INSTANCE.len()] == INSTANCE {
                match (path[5], path[6]) {
                    (El::GroupSet, El::Item) => draft.group_id = None,
                    (El::TagSet, El::Item) => {
                        draft.tag_key = None;
                        draft.tag_value.clear();
                    }
                    _ => {}
                }
            }
        }
        if !end {
            continue;
        }
        // The element at the top of `path` ends here.
        let field = std::mem::take(&mut text);
        if path.len() > INSTANCE.len() && path[..INSTANCE.len()] == INSTANCE {
            let i = in_reservation;
            match &path[INSTANCE.len()..] {
                [El::InstanceId] => draft.instance_id = trimmed(&field),
                [El::InstanceState, El::StateName] => draft.state = trimmed(&field),
                [El::PrivateIpAddress] => draft.private_ip_address = trimmed(&field),
                [El::PrivateDnsName] => draft.private_dns_name = trimmed(&field),
                [El::VpcId] => draft.vpc_id = trimmed(&field),
                [El::SubnetId] => draft.subnet_id = trimmed(&field),
                [El::GroupSet, El::Item, El::GroupId] => draft.group_id = trimmed(&field),
                [El::GroupSet, El::Item] => {
                    let g = draft.security_group_ids.len();
                    let item_at = format!("{}/groupSet/item[{g}]", at(reservation, i));
                    let id = draft.group_id.take().ok_or_else(|| XmlError::Missing {
                        path: format!("{item_at}/groupId"),
                    })?;
                    check_id(&id, "sg", &format!("{item_at}/groupId"))?;
                    draft.security_group_ids.push(id);
                }
                [El::TagSet, El::Item, El::Key] => draft.tag_key = trimmed(&field),
                // Tag values keep their exact bytes (an empty value is a valid tag).
                [El::TagSet, El::Item, El::Value] => draft.tag_value = field,
                [El::TagSet, El::Item] => {
                    let key = draft.tag_key.take().ok_or_else(|| XmlError::Missing {
                        path: format!(
                            "{}/tagSet/item[{}]/key",
                            at(reservation, i),
                            draft.tags.len()
                        ),
                    })?;
                    let value = std::mem::take(&mut draft.tag_value);
                    if bounds
                        .tag_keys
                        .map_or(true, |keep| keep.contains(&key.as_str()))
                    {
                        draft.tags.insert(key, value);
                    }
                }
                _ => {}
            }
        } else if path[..] == INSTANCE {
            instances.push(finish(
                std::mem::take(&mut draft),
                &at(reservation, in_reservation),
            )?);
            in_reservation += 1;
        } else if path[..] == [El::Response, El::ReservationSet, El::Item] {
            reservation += 1;
            in_reservation = 0;
        } else if path[..] == [El::Response, El::NextToken] {
            next_token = trimmed(&field);
        }
        path.pop();
        if path.is_empty() {
            return Ok(DescribeInstancesPage {
                instances,
                next_token,
            });
        }
    }
}

fn finish(d: Draft, at: &str) -> Result<Instance, XmlError> {
    let missing = |p: &str| XmlError::Missing {
        path: format!("{at}/{p}"),
    };
    let instance_id = d.instance_id.ok_or_else(|| missing("instanceId"))?;
    check_id(&instance_id, "i", &format!("{at}/instanceId"))?;
    let state = d.state.ok_or_else(|| missing("instanceState/name"))?;
    if let Some(ip) = &d.private_ip_address {
        if ip.parse::<IpAddr>().is_err() {
            return Err(XmlError::Invalid {
                path: format!("{at}/privateIpAddress"),
                value: RemoteText::new(ip),
                reason: "not an IP address",
            });
        }
    }
    if let Some(id) = &d.vpc_id {
        check_id(id, "vpc", &format!("{at}/vpcId"))?;
    }
    if let Some(id) = &d.subnet_id {
        check_id(id, "subnet", &format!("{at}/subnetId"))?;
    }
    Ok(Instance {
        instance_id,
        state,
        private_ip_address: d.private_ip_address,
        private_dns_name: d.private_dns_name,
        vpc_id: d.vpc_id,
        subnet_id: d.subnet_id,
        security_group_ids: d.security_group_ids,
        tags: d.tags,
    })
}

/// One page of DescribeTags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeTagsPage {
    pub tags: Vec<TagDescription>,
    pub next_token: Option<String>,
}

/// Parses a `DescribeTagsResponse`.
pub(crate) fn parse_describe_tags(xml: &str) -> Result<DescribeTagsPage, XmlError> {
    let root = expect_root(xml, "DescribeTagsResponse")?;
    let mut tags = Vec::new();
    for (t, item) in root.items(&["tagSet"]).enumerate() {
        let at = format!("tagSet/item[{t}]");
        tags.push(TagDescription {
            resource_id: required(item, &["resourceId"], &at)?.to_string(),
            resource_type: required(item, &["resourceType"], &at)?.to_string(),
            key: required(item, &["key"], &at)?.to_string(),
            value: item.text_at(&["value"]).unwrap_or_default().to_string(),
        });
    }
    Ok(DescribeTagsPage {
        tags,
        next_token: next_token(&root),
    })
}

/// The error EC2 returned, every field scrubbed and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub code: RemoteText,
    pub message: RemoteText,
    pub request_id: Option<RemoteText>,
}

/// Parses `<Response><Errors><Error><Code>..</Code><Message>..</Message></Error></Errors>
/// <RequestID>..</RequestID></Response>` (and the `<ErrorResponse><Error>` shape some AWS query
/// services use, and `<ErrorResponse><Errors><Error>`, which moto answers for EC2 requests its
/// signature or IAM policy check refuses). The first error is returned.
pub(crate) fn parse_error(xml: &str) -> Result<AwsError, XmlError> {
    let root = parse_document(xml)?;
    let (error, at) = match root.name.as_str() {
        "Response" => (root.at(&["Errors", "Error"]), "Response/Errors/Error"),
        "ErrorResponse" => match (root.child("Error"), root.at(&["Errors", "Error"])) {
            (Some(e), _) => (Some(e), "ErrorResponse/Error"),
            (None, Some(e)) => (Some(e), "ErrorResponse/Errors/Error"),
            (None, None) => (None, "ErrorResponse/Error or ErrorResponse/Errors/Error"),
        },
        _ => {
            return Err(XmlError::UnexpectedRoot {
                expected: "Response",
                found: RemoteText::new(&root.name),
            })
        }
    };
    let error = error.ok_or_else(|| XmlError::Missing { path: at.into() })?;
    Ok(AwsError {
        code: RemoteText::new(required(error, &["Code"], at)?),
        message: RemoteText::new(error.text_at(&["Message"]).unwrap_or_default().trim()),
        request_id: optional(&root, &["RequestID"])
            .or_else(|| optional(&root, &["RequestId"]))
            .or_else(|| optional(&root, &["ResponseMetadata", "RequestId"]))
            .map(|id| RemoteText::new(&id)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_instance_groups_apart_from_reservation_groups() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>8f7724cf-496f-496e-8fe3-example</requestId>
  <reservationSet>
    <item>
      <reservationId>r-1234567890abcdef0</reservationId>
      <ownerId>123456789012</ownerId>
      <groupSet>
        <item><groupId>sg-00000000000000000</groupId><groupName>classic</groupName></item>
      </groupSet>
      <instancesSet>
        <item>
          <instanceId>i-1234567890abcdef0</instanceId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <privateDnsName>ip-10-0-0-12.ec2.internal</privateDnsName>
          <privateIpAddress>10.0.0.12</privateIpAddress>
          <subnetId>subnet-0abc</subnetId>
          <vpcId>vpc-0def</vpcId>
          <groupSet>
            <item><groupId>sg-0aaa</groupId><groupName>k8s</groupName></item>
            <item><groupId>sg-0bbb</groupId><groupName>ssh</groupName></item>
          </groupSet>
          <tagSet>
            <item><key>role</key><value>master</value></item>
            <item><key>empty</key><value/></item>
            <item><key>amp</key><value>a &amp; b</value></item>
          </tagSet>
          <networkInterfaceSet>
            <item><groupSet><item><groupId>sg-0ccc</groupId></item></groupSet></item>
          </networkInterfaceSet>
        </item>
      </instancesSet>
    </item>
  </reservationSet>
</DescribeInstancesResponse>"#;
        let page = parse_describe_instances(xml).unwrap();
        assert_eq!(page.next_token, None);
        assert_eq!(page.instances.len(), 1);
        let i = &page.instances[0];
        assert_eq!(i.instance_id, "i-1234567890abcdef0");
        assert_eq!(i.state, "running");
        assert_eq!(i.security_group_ids, ["sg-0aaa", "sg-0bbb"]);
        assert_eq!(i.tags["role"], "master");
        assert_eq!(i.tags["empty"], "");
        assert_eq!(i.tags["amp"], "a & b");
        assert_eq!(i.private_ip_address.as_deref(), Some("10.0.0.12"));
    }

    #[test]
    fn missing_and_garbage_fields_are_named() {
        let xml = "<DescribeInstancesResponse><reservationSet><item><instancesSet><item>\
                   <instanceId>i-0abc</instanceId></item></instancesSet></item></reservationSet>\
                   </DescribeInstancesResponse>";
        let err = parse_describe_instances(xml).unwrap_err().to_string();
        assert!(
            err.contains("instancesSet/item[0]/instanceState/name"),
            "{err}"
        );

        let xml = "<DescribeInstancesResponse><reservationSet><item><instancesSet><item>\
                   <instanceId>i-0abc</instanceId><instanceState><name>running</name>\
                   </instanceState><privateIpAddress>10.0.0.300</privateIpAddress></item>\
                   </instancesSet></item></reservationSet></DescribeInstancesResponse>";
        let err = parse_describe_instances(xml).unwrap_err().to_string();
        assert!(err.contains("privateIpAddress"), "{err}");

        let err = parse_describe_instances("<Response/>").unwrap_err();
        assert!(matches!(err, XmlError::UnexpectedRoot { .. }), "{err}");
        assert!(parse_describe_instances("<DescribeInstancesResponse>").is_err());
        assert!(parse_describe_instances("not xml at all").is_err());
        assert!(parse_describe_instances("").is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let xml = "<a>".repeat(1000) + &"</a>".repeat(1000);
        assert!(matches!(parse_document(&xml), Err(XmlError::TooDeep)));
    }

    #[test]
    fn parses_the_ec2_error_shape() {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
                   <Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>\
                   </Error></Errors><RequestID>abc-123</RequestID></Response>";
        let e = parse_error(xml).unwrap();
        assert_eq!(e.code, "RequestLimitExceeded");
        assert_eq!(e.message, "Request limit exceeded.");
        assert_eq!(
            e.request_id.as_ref().map(RemoteText::as_str),
            Some("abc-123")
        );
    }

    #[test]
    fn parses_motos_auth_failure_shape() {
        // Byte for byte what moto 5.2 answers (HTTP 401) to an EC2 request with a bad signature.
        let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<ErrorResponse><Errors><Error>\
                   <Code>AuthFailure</Code><Message>AWS was not able to validate the provided \
                   access credentials</Message><Type>Sender</Type></Error></Errors></ErrorResponse>";
        let e = parse_error(xml).unwrap();
        assert_eq!(e.code, "AuthFailure");
        assert!(
            e.message.as_str().starts_with("AWS was not able"),
            "{}",
            e.message
        );
        assert_eq!(e.request_id, None);
        let e =
            parse_error("<ErrorResponse><Error><Code>Throttling</Code></Error></ErrorResponse>")
                .unwrap();
        assert_eq!(e.code, "Throttling");
        let err = parse_error("<ErrorResponse><Errors/></ErrorResponse>").unwrap_err();
        assert!(
            err.to_string().contains("ErrorResponse/Errors/Error"),
            "{err}"
        );
    }

    #[test]
    fn parses_describe_tags() {
        let xml = r#"<DescribeTagsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
   <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>
   <tagSet>
      <item>
         <resourceId>i-1234567890abcdef0</resourceId>
         <resourceType>instance</resourceType>
         <key>berth:cluster</key>
         <value>demo</value>
      </item>
   </tagSet>
   <nextToken>abc</nextToken>
</DescribeTagsResponse>"#;
        let page = parse_describe_tags(xml).unwrap();
        assert_eq!(page.next_token.as_deref(), Some("abc"));
        assert_eq!(page.tags[0].key, "berth:cluster");
        assert_eq!(page.tags[0].value, "demo");
        assert_eq!(page.tags[0].resource_type, "instance");
    }
}
