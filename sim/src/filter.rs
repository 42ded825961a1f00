//! EC2 filters: `Filter.N.Name` with `Filter.N.Value.M`. Values within one filter are OR'd,
//! filters are AND'd, and values may use EC2's wildcards (`*` any run, `?` one character,
//! `\` escaping either).

use crate::region::{Instance, Region};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

/// The instance filters the sim implements. EC2 has more; an unknown one is an error (as EC2
/// says of filters it does not know), never silently ignored.
const INSTANCE_FILTERS: &[&str] = &[
    "availability-zone",
    "group-id",
    "group-name",
    "image-id",
    "instance-id",
    "instance-state-code",
    "instance-state-name",
    "instance-type",
    "instance.group-id",
    "instance.group-name",
    "network-interface.mac-address",
    "private-dns-name",
    "private-ip-address",
    "reservation-id",
    "subnet-id",
    "tag-key",
    "tag-value",
    "vpc-id",
];

const TAG_FILTERS: &[&str] = &["key", "resource-id", "resource-type", "value"];

pub(crate) fn known_instance_filter(name: &str) -> bool {
    INSTANCE_FILTERS.contains(&name) || name.strip_prefix("tag:").is_some_and(|k| !k.is_empty())
}

pub(crate) fn known_tag_filter(name: &str) -> bool {
    TAG_FILTERS.contains(&name) || name.strip_prefix("tag:").is_some_and(|k| !k.is_empty())
}

/// The values an instance has for a filter name (a filter matches when any of them matches
/// any of its values).
pub(crate) fn instance_values(region: &Region, inst: &Instance, name: &str) -> Vec<String> {
    let net = inst.has_network();
    let opt = |cond: bool, v: String| if cond { vec![v] } else { vec![] };
    match name {
        "availability-zone" => vec![region.availability_zone.clone()],
        "group-id" | "instance.group-id" => inst.groups.iter().map(|g| g.id.clone()).collect(),
        "group-name" | "instance.group-name" => {
            inst.groups.iter().map(|g| g.name.clone()).collect()
        }
        "image-id" => vec![inst.image_id.clone()],
        "instance-id" => vec![inst.id.clone()],
        "instance-state-code" => vec![inst.state_code().to_string()],
        "instance-state-name" => vec![inst.state().to_string()],
        "instance-type" => vec![inst.instance_type.clone()],
        "network-interface.mac-address" => opt(net, inst.mac.clone()),
        "private-dns-name" => opt(net, inst.private_dns_name.clone()),
        "private-ip-address" => opt(net, inst.private_ip.to_string()),
        "reservation-id" => vec![inst.reservation_id.clone()],
        "subnet-id" => opt(net, inst.subnet_id.clone()),
        "vpc-id" => opt(net, inst.vpc_id.clone()),
        "tag-key" => inst.tags.keys().cloned().collect(),
        "tag-value" => inst.tags.values().cloned().collect(),
        _ => match name.strip_prefix("tag:") {
            Some(key) => inst.tags.get(key).cloned().into_iter().collect(),
            None => vec![],
        },
    }
}

/// Whether every filter matches, given the values an item has for each filter name.
pub(crate) fn all_match<F>(filters: &[Filter], mut values_of: F) -> bool
where
    F: FnMut(&str) -> Vec<String>,
{
    filters.iter().all(|f| {
        let have = values_of(&f.name);
        f.values
            .iter()
            .any(|pattern| have.iter().any(|v| wildcard_match(pattern, v)))
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Lit(char),
    Any,
    One,
}

fn tokenize(pattern: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        out.push(match c {
            '*' => Tok::Any,
            '?' => Tok::One,
            '\\' => match chars.next() {
                Some(n) => Tok::Lit(n),
                None => Tok::Lit('\\'),
            },
            c => Tok::Lit(c),
        });
    }
    out
}

/// EC2's wildcard match: case-sensitive, `*` any run (also empty), `?` exactly one character.
pub(crate) fn wildcard_match(pattern: &str, value: &str) -> bool {
    let p = tokenize(pattern);
    let v: Vec<char> = value.chars().collect();
    // Classic greedy matcher with one backtrack point for the last `*`.
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        match p.get(pi) {
            Some(Tok::Lit(c)) if *c == v[vi] => {
                pi += 1;
                vi += 1;
            }
            Some(Tok::One) => {
                pi += 1;
                vi += 1;
            }
            Some(Tok::Any) => {
                star = Some((pi, vi));
                pi += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    pi = sp + 1;
                    vi = sv + 1;
                    star = Some((sp, sv + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|t| *t == Tok::Any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_like_ec2() {
        assert!(wildcard_match("seed", "seed"));
        assert!(!wildcard_match("seed", "seeds"));
        assert!(!wildcard_match("Seed", "seed"), "case-sensitive");
        assert!(wildcard_match("fed-*", "fed-minion-2"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("*minion*", "fed-minion-2"));
        assert!(wildcard_match("fed-minion-?", "fed-minion-2"));
        assert!(!wildcard_match("fed-minion-?", "fed-minion"));
        assert!(wildcard_match("a*b*c", "aXXbYYbc"));
        assert!(!wildcard_match("a*b*c", "aXXbYYbd"));
        assert!(wildcard_match("a\\*", "a*"));
        assert!(!wildcard_match("a\\*", "ab"));
        assert!(wildcard_match("10.0.?.*", "10.0.1.25"));
    }

    #[test]
    fn values_or_filters_and() {
        let f = |name: &str, vals: &[&str]| Filter {
            name: name.into(),
            values: vals.iter().map(|s| s.to_string()).collect(),
        };
        let item = |name: &str| -> Vec<String> {
            match name {
                "a" => vec!["1".into(), "2".into()],
                "b" => vec!["x".into()],
                _ => vec![],
            }
        };
        assert!(all_match(&[f("a", &["9", "2"])], item));
        assert!(all_match(&[f("a", &["1"]), f("b", &["x", "y"])], item));
        assert!(!all_match(&[f("a", &["1"]), f("b", &["y"])], item));
        assert!(
            !all_match(&[f("c", &["*"])], item),
            "absent values never match"
        );
        assert!(all_match(&[], item));
    }
}
