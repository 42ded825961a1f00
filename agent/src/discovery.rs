//! Discovery: from the instances EC2 returned to the cluster's membership.
//!
//! Pure: the caller asks EC2 (with [`filters`]) and hands the answer here. EC2's answer is
//! untrusted like every other input, so the filters are applied again, and every value that may
//! reach a file (names, addresses) is validated; an instance that fails is left out with a note,
//! never written half-checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use berth_ec2::{Filter, Identity, Instance};

use crate::config::{Config, Role, CLUSTER_TAG, ROLE_TAG};

/// A member of the cluster, every field validated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub name: String,
    pub instance_id: String,
    pub role: Role,
    pub private_ip: Ipv4Addr,
}

/// Who is in the cluster, as this node sees it. Sorted, so that the same cluster always renders
/// the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    /// Every member, sorted by name.
    pub nodes: Vec<Node>,
    /// Instances that were left out, and why (for `status` and the log).
    pub notes: Vec<String>,
}

/// The cluster's shape, as far as rendering is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Ready,
    /// No instance is tagged `role=master`: minions have nothing to join.
    NoMaster,
    /// More than one master: berth will not pick one behind the operator's back.
    SeveralMasters(Vec<String>),
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Ready => f.write_str("ready"),
            Condition::NoMaster => f.write_str(
                "no master: no instance of this cluster is tagged role=master; launch one, or tag \
                 an existing instance role=master",
            ),
            Condition::SeveralMasters(names) => write!(
                f,
                "several masters ({}): exactly one instance of the cluster may be tagged \
                 role=master; retag the others role=minion",
                names.join(", ")
            ),
        }
    }
}

impl Membership {
    pub fn masters(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Master)
    }

    pub fn minions(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Minion)
    }

    pub fn condition(&self) -> Condition {
        let masters: Vec<String> = self.masters().map(|n| n.name.clone()).collect();
        match masters.len() {
            0 => Condition::NoMaster,
            1 => Condition::Ready,
            _ => Condition::SeveralMasters(masters),
        }
    }

    /// The single master, when the condition is ready.
    pub fn master(&self) -> Option<&Node> {
        match self.condition() {
            Condition::Ready => self.masters().next(),
            _ => None,
        }
    }

    pub fn node(&self, instance_id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.instance_id == instance_id)
    }

    /// The same members (notes aside): what decides whether a re-render is needed.
    pub fn same_members(&self, other: &Membership) -> bool {
        self.nodes == other.nodes
    }
}

/// The DescribeInstances filters that find this node's peers: its security groups (any of them),
/// its VPC, live states, and its cluster tag when it has one.
pub fn filters(me: &Identity, config: &Config) -> Vec<Filter> {
    let mut f = vec![
        Filter::new("instance.group-id", me.security_group_ids.iter().cloned()),
        Filter::new("vpc-id", [me.vpc_id.clone()]),
        Filter::new("instance-state-name", ["pending", "running"]),
    ];
    if let Some(c) = &config.cluster {
        f.push(Filter::new(&format!("tag:{CLUSTER_TAG}"), [c.clone()]));
    }
    f
}

/// This node as the sources describe it, before EC2 has answered (EC2 is eventually
/// consistent: a just-launched instance may not list itself yet).
pub struct Me<'a> {
    pub identity: &'a Identity,
    pub role: Role,
    pub tags: &'a BTreeMap<String, String>,
}

/// Builds the membership from DescribeInstances' answer.
pub fn membership(me: &Me<'_>, config: &Config, instances: &[Instance]) -> Membership {
    let my_groups: BTreeSet<&str> = me
        .identity
        .security_group_ids
        .iter()
        .map(String::as_str)
        .collect();
    let mut notes = Vec::new();
    let mut candidates: Vec<Node> = Vec::with_capacity(instances.len());
    let mut seen_ids: BTreeSet<&str> = BTreeSet::new();
    let mut seen_me = false;

    for inst in instances {
        let id = &inst.instance_id;
        if !valid_instance_id(id) {
            notes.push(format!(
                "left out an instance with an invalid id {:?}",
                truncate(id)
            ));
            continue;
        }
        if !seen_ids.insert(id.as_str()) {
            continue; // listed twice (pages overlapped): once is enough
        }
        let live = matches!(inst.state.as_str(), "pending" | "running");
        let same_vpc = inst.vpc_id.as_deref() == Some(me.identity.vpc_id.as_str());
        let shares_group = inst
            .security_group_ids
            .iter()
            .any(|g| my_groups.contains(g.as_str()));
        let same_cluster = match &config.cluster {
            Some(c) => inst.tags.get(CLUSTER_TAG) == Some(c),
            None => true,
        };
        if !(live && same_vpc && shares_group && same_cluster) {
            continue; // EC2 should have filtered it; not a peer either way
        }
        let is_me = id == &me.identity.instance_id;
        let role = if is_me {
            seen_me = true;
            Some(me.role)
        } else {
            match inst.tags.get(ROLE_TAG).map(String::as_str) {
                Some(r) => match Role::parse(r) {
                    Some(role) => Some(role),
                    None => {
                        notes.push(format!(
                            "left out {id}: its `role` tag {:?} is neither master nor minion",
                            truncate(r)
                        ));
                        None
                    }
                },
                None => {
                    notes.push(format!("left out {id}: it has no `role` tag"));
                    None
                }
            }
        };
        let Some(role) = role else { continue };
        let ip = if is_me {
            me.identity.private_ipv4.parse::<Ipv4Addr>().ok()
        } else {
            inst.private_ip_address
                .as_deref()
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
        };
        let Some(private_ip) = ip else {
            notes.push(format!("left out {id}: no valid private IPv4 address"));
            continue;
        };
        let dns = if is_me {
            Some(me.identity.private_dns_name.as_str())
        } else {
            inst.private_dns_name.as_deref()
        };
        let tags = if is_me { me.tags } else { &inst.tags };
        let Some(name) = node_name(tags.get("Name").map(String::as_str), dns) else {
            notes.push(format!(
                "left out {id}: neither its Name tag nor its private DNS name is a valid host name"
            ));
            continue;
        };
        candidates.push(Node {
            name,
            instance_id: id.clone(),
            role,
            private_ip,
        });
    }

    if !seen_me {
        if let Ok(private_ip) = me.identity.private_ipv4.parse::<Ipv4Addr>() {
            if let Some(name) = node_name(
                me.tags.get("Name").map(String::as_str),
                Some(&me.identity.private_dns_name),
            ) {
                candidates.push(Node {
                    name,
                    instance_id: me.identity.instance_id.clone(),
                    role: me.role,
                    private_ip,
                });
            }
        }
    }

    // Two instances may carry the same Name tag; a name must map to one address. The instance
    // with the lower id keeps the name; the other falls back to its DNS label.
    candidates.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut nodes = Vec::with_capacity(candidates.len());
    for mut n in candidates {
        if taken.contains(&n.name) {
            let fallback = instances
                .iter()
                .find(|i| i.instance_id == n.instance_id)
                .and_then(|i| i.private_dns_name.as_deref())
                .and_then(first_label);
            match fallback {
                Some(f) if !taken.contains(&f) => {
                    notes.push(format!(
                        "{} shares the name {} with another instance: named {} after its DNS name",
                        n.instance_id, n.name, f
                    ));
                    n.name = f;
                }
                _ => {
                    notes.push(format!(
                        "left out {}: its name {} is taken by another instance",
                        n.instance_id, n.name
                    ));
                    continue;
                }
            }
        }
        taken.insert(n.name.clone());
        nodes.push(n);
    }
    nodes.sort();
    Membership { nodes, notes }
}

/// A node's name: its `Name` tag when that is a valid RFC 1123 host name, else the first label of
/// its private DNS name.
pub fn node_name(name_tag: Option<&str>, private_dns_name: Option<&str>) -> Option<String> {
    if let Some(n) = name_tag {
        if valid_hostname(n) {
            return Some(n.to_string());
        }
    }
    private_dns_name.and_then(first_label)
}

fn first_label(dns: &str) -> Option<String> {
    let label = dns.split('.').next()?;
    valid_hostname(label).then(|| label.to_string())
}

/// An RFC 1123 host name, lowercase (Kubernetes compares minion names as written): labels of 1 to
/// 63 letters, digits and inner hyphens, 253 characters at most.
pub fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn valid_instance_id(s: &str) -> bool {
    s.len() <= 32
        && s.strip_prefix("i-")
            .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn identity(id: &str, ip: &str, dns: &str) -> Identity {
        Identity {
            instance_id: id.into(),
            region: "us-east-1".into(),
            availability_zone: "us-east-1a".into(),
            private_ipv4: ip.into(),
            private_dns_name: dns.into(),
            mac: "0e:00:00:00:00:01".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            security_group_ids: vec!["sg-1".into()],
        }
    }

    fn inst(id: &str, name: &str, role: &str, ip: &str) -> Instance {
        Instance {
            instance_id: id.into(),
            state: "running".into(),
            private_ip_address: Some(ip.into()),
            private_dns_name: Some(format!("ip-{}.ec2.internal", ip.replace('.', "-"))),
            vpc_id: Some("vpc-1".into()),
            subnet_id: Some("subnet-1".into()),
            security_group_ids: vec!["sg-1".into()],
            tags: [
                ("Name".to_string(), name.to_string()),
                ("role".to_string(), role.to_string()),
                ("berth:cluster".to_string(), "seed".to_string()),
            ]
            .into(),
        }
    }

    fn seed() -> Vec<Instance> {
        vec![
            inst("i-0a", "fed-master", "master", "172.30.0.246"),
            inst("i-0b", "fed-minion", "minion", "172.30.0.43"),
            inst("i-0c", "fed-minion-2", "minion", "172.30.0.11"),
        ]
    }

    fn config() -> Config {
        Config {
            cluster: Some("seed".into()),
            ..Config::default()
        }
    }

    #[test]
    fn seed_cluster() {
        let id = identity("i-0b", "172.30.0.43", "ip-172-30-0-43.ec2.internal");
        let tags = seed()[1].tags.clone();
        let me = Me {
            identity: &id,
            role: Role::Minion,
            tags: &tags,
        };
        let m = membership(&me, &config(), &seed());
        let names: Vec<_> = m.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["fed-master", "fed-minion", "fed-minion-2"]);
        assert_eq!(m.condition(), Condition::Ready);
        assert_eq!(m.master().unwrap().private_ip.to_string(), "172.30.0.246");
        assert!(m.notes.is_empty(), "{:?}", m.notes);
    }

    #[test]
    fn others_are_not_peers() {
        let mut all = seed();
        let mut stopped = inst("i-0d", "stopped-one", "minion", "172.30.0.12");
        stopped.state = "stopped".into();
        let mut other_sg = inst("i-0e", "other-sg", "minion", "172.30.0.13");
        other_sg.security_group_ids = vec!["sg-2".into()];
        let mut other_vpc = inst("i-0f", "other-vpc", "minion", "172.30.0.14");
        other_vpc.vpc_id = Some("vpc-2".into());
        let mut other_cluster = inst("i-10", "other-cluster", "minion", "172.30.0.15");
        other_cluster
            .tags
            .insert("berth:cluster".into(), "prod".into());
        all.extend([stopped, other_sg, other_vpc, other_cluster]);
        let id = identity("i-0a", "172.30.0.246", "ip-172-30-0-246.ec2.internal");
        let tags = all[0].tags.clone();
        let me = Me {
            identity: &id,
            role: Role::Master,
            tags: &tags,
        };
        let m = membership(&me, &config(), &all);
        assert_eq!(m.nodes.len(), 3);
    }

    #[test]
    fn hostile_name_falls_back_to_dns_label() {
        let mut all = seed();
        for (i, bad) in [
            "x\nKUBE_API_ARGS=--evil",
            "a\"b",
            "$(reboot)",
            "two words",
            "UPPER",
        ]
        .iter()
        .enumerate()
        {
            let mut h = inst(
                &format!("i-1{i}"),
                bad,
                "minion",
                &format!("172.30.1.{}", i + 1),
            );
            h.private_dns_name = Some(format!("ip-172-30-1-{}.ec2.internal", i + 1));
            all.push(h);
        }
        let id = identity("i-0a", "172.30.0.246", "ip-172-30-0-246.ec2.internal");
        let tags = all[0].tags.clone();
        let me = Me {
            identity: &id,
            role: Role::Master,
            tags: &tags,
        };
        let m = membership(&me, &config(), &all);
        for n in &m.nodes {
            assert!(valid_hostname(&n.name), "{:?}", n.name);
        }
        assert!(m.nodes.iter().any(|n| n.name == "ip-172-30-1-1"));
    }

    #[test]
    fn bad_peer_role_and_ip_are_left_out_with_notes() {
        let mut all = seed();
        all.push(inst("i-20", "cap", "captain", "172.30.0.50"));
        all.push(inst("i-21", "noip", "minion", "not-an-ip"));
        let id = identity("i-0a", "172.30.0.246", "ip-172-30-0-246.ec2.internal");
        let tags = all[0].tags.clone();
        let me = Me {
            identity: &id,
            role: Role::Master,
            tags: &tags,
        };
        let m = membership(&me, &config(), &all);
        assert_eq!(m.nodes.len(), 3);
        assert_eq!(m.notes.len(), 2, "{:?}", m.notes);
        assert!(m.notes[0].contains("captain"));
    }

    #[test]
    fn master_conditions() {
        let mut all = seed();
        all[2].tags.insert("role".into(), "master".into());
        let id = identity("i-0b", "172.30.0.43", "ip-172-30-0-43.ec2.internal");
        let tags = all[1].tags.clone();
        let me = Me {
            identity: &id,
            role: Role::Minion,
            tags: &tags,
        };
        let m = membership(&me, &config(), &all);
        assert_eq!(
            m.condition(),
            Condition::SeveralMasters(vec!["fed-master".into(), "fed-minion-2".into()])
        );
        assert!(m.master().is_none());
        let none = membership(&me, &config(), &all[1..2]);
        assert_eq!(none.condition(), Condition::NoMaster);
    }

    #[test]
    fn self_is_included_before_ec2_lists_it() {
        let id = identity("i-0b", "172.30.0.43", "ip-172-30-0-43.ec2.internal");
        let tags = seed()[1].tags.clone();
        let me = Me {
            identity: &id,
            role: Role::Minion,
            tags: &tags,
        };
        let m = membership(&me, &config(), &seed()[..1]);
        assert!(m.node("i-0b").is_some());
    }

    #[test]
    fn duplicate_names_resolve_deterministically() {
        let mut all = seed();
        all.push(inst("i-0d", "fed-minion", "minion", "172.30.0.99"));
        let id = identity("i-0a", "172.30.0.246", "ip-172-30-0-246.ec2.internal");
        let tags = all[0].tags.clone();
        let me = Me {
            identity: &id,
            role: Role::Master,
            tags: &tags,
        };
        let a = membership(&me, &config(), &all);
        all.reverse();
        let b = membership(&me, &config(), &all);
        assert_eq!(a.nodes, b.nodes);
        assert!(a.nodes.iter().any(|n| n.name == "ip-172-30-0-99"));
    }
}
