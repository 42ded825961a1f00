//! Discovery: from the instances EC2 returned to the cluster's membership.
//!
//! Pure: the caller asks EC2 (with [`filters`]) and hands the answer here. EC2's answer is
//! untrusted like every other input, so the filters are applied again, and every value that may
//! reach a file (names, addresses) is validated; an instance that fails is left out with a note,
//! never written half-checked.
//!
//! The security group is the trust boundary, and it is a wide one: any instance in it picks its
//! own `Name` tag, and EC2's answer is the only word on its address. So a peer never gets a name
//! that every node resolves for something else (`localhost`, `instance-data`, an AWS endpoint),
//! never an address outside the VPC's private ranges or this node's own, and never a name another
//! member holds; see [`membership_after`] for the rules, and the README's "Discovery and names".

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    /// The etcd tier waits: on the seed, a learner catching up, etcd's pacing, quorum.
    EtcdWaiting(String),
    /// The etcd cluster lost quorum for good; nothing is seeded automatically.
    EtcdNeedsRestore(String),
    /// The Kubernetes tier waits: the shared keys, the API server, a join ticket.
    KubeWaiting(String),
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Ready => f.write_str("ready"),
            Condition::NoMaster => f.write_str(
                "no master: no instance of this cluster is tagged role=master; launch one, or tag \
                 an existing instance role=master",
            ),
            Condition::EtcdWaiting(why) => write!(f, "etcd: waiting: {why}"),
            Condition::EtcdNeedsRestore(why) => write!(f, "etcd: needs restore: {why}"),
            Condition::KubeWaiting(why) => write!(f, "{why}"),
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
        self.condition_with(false)
    }

    /// The condition for a profile whose masters form an HA control plane
    /// (`several_masters_ok`), where any number of masters is ready.
    pub fn condition_with(&self, several_masters_ok: bool) -> Condition {
        let masters: Vec<String> = self.masters().map(|n| n.name.clone()).collect();
        match masters.len() {
            0 => Condition::NoMaster,
            1 => Condition::Ready,
            _ if several_masters_ok => Condition::Ready,
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

/// Most notes a membership keeps. Past it, one last note counts the notes left out, so that a
/// cluster of 50,000 misconfigured instances costs the log, `plan` and `status` a few lines,
/// not 50,000. Each contested name already gets one aggregated note, whatever the number of
/// instances that share it.
pub const MAX_NOTES: usize = 20;

/// How many instance ids one aggregated note lists before it only counts the rest.
const IDS_PER_NOTE: usize = 3;

/// Builds the membership from DescribeInstances' answer, without history: every name goes by the
/// stateless rules. Same as [`membership_after`] with no previous membership.
pub fn membership(me: &Me<'_>, config: &Config, instances: &[Instance]) -> Membership {
    membership_after(me, config, instances, None)
}

/// Builds the membership from DescribeInstances' answer.
///
/// `previous` is the membership this node saw last (its state's); a name stays with the instance
/// that held it there for as long as that instance is a member and still claims the name. The
/// rules, which the README's "Discovery and names" section documents:
///
/// 1. A peer is an instance in state pending or running, in this node's VPC, sharing one of its
///    security groups and carrying its `berth:cluster` tag (when it has one), with a valid
///    instance id and `role` tag (`master` or `minion`).
/// 2. Its address must be an ordinary private unicast address (RFC 1918, or RFC 6598's
///    100.64.0.0/10, which AWS allows as a VPC range; see [`address_problem`]) and not this
///    node's own; when EC2 lists two instances at one address, the master, then the lower
///    instance id, keeps it.
/// 3. Its name is its `Name` tag when that is one lowercase RFC 1123 label, not reserved
///    ([`reserved_name`]) and not the private DNS label of another member; else the first label
///    of its private DNS name.
/// 4. Several instances claiming one name: the one that held it in `previous` keeps it, else the
///    master, else the lowest instance id. The others are named after their private DNS label, or
///    left out when that is unusable.
///
/// Cost: O(n log n) in the number of instances, and at most [`MAX_NOTES`] notes.
pub fn membership_after(
    me: &Me<'_>,
    config: &Config,
    instances: &[Instance],
    previous: Option<&Membership>,
) -> Membership {
    let mut notes = Notes::default();
    let candidates = vet_candidates(me, config, instances, &mut notes);
    let mut candidates = one_per_address(candidates, &mut notes);
    refuse_shadowing_claims(&mut candidates, &mut notes);
    mark_held(&mut candidates, previous);
    let given = resolve_names(&candidates, &mut notes);
    Membership {
        nodes: into_nodes(candidates, given),
        notes: notes.finish(),
    }
}

/// Rules 1 and 2 of [`membership_after`] for each instance of EC2's answer, in its order: an
/// instance with an invalid id is left out with a note; one listed twice counts once; one that is
/// not a peer (state, VPC, security group, cluster tag) is skipped silently, as is this node's
/// own entry; a peer without a valid `role` tag or usable private address is left out with a
/// note. This node is added last, from IMDS, when its own address parses.
fn vet_candidates(
    me: &Me<'_>,
    config: &Config,
    instances: &[Instance],
    notes: &mut Notes,
) -> Vec<Candidate> {
    let my_groups: BTreeSet<&str> = me
        .identity
        .security_group_ids
        .iter()
        .map(String::as_str)
        .collect();
    let my_ip = me.identity.private_ipv4.parse::<Ipv4Addr>().ok();
    let mut candidates: Vec<Candidate> = Vec::with_capacity(instances.len() + 1);
    let mut seen_ids: HashSet<&str> = HashSet::with_capacity(instances.len());

    for inst in instances {
        let id = &inst.instance_id;
        if !valid_instance_id(id) {
            notes.push(|| format!("left out an instance with an invalid id {:?}", truncate(id)));
            continue;
        }
        if !seen_ids.insert(id.as_str()) {
            continue; // listed twice (pages overlapped): once is enough
        }
        if !is_peer(inst, me, config, &my_groups) {
            continue; // EC2 should have filtered it; not a peer either way
        }
        if id == &me.identity.instance_id {
            continue; // this node is added below from IMDS, listed by EC2 yet or not
        }
        if let Some(c) = vet_peer(inst, me, my_ip, notes) {
            candidates.push(c);
        }
    }
    if let Some(private_ip) = my_ip {
        candidates.push(Candidate::new(
            me.identity.instance_id.clone(),
            me.role,
            private_ip,
            me.tags.get("Name").map(String::as_str),
            Some(&me.identity.private_dns_name),
        ));
    }
    candidates
}

/// Whether `inst` matches the DescribeInstances [`filters`]: state pending or running, this
/// node's VPC, one of its security groups, and its `berth:cluster` tag when it has one. EC2
/// applies them already; its answer is checked again because it is untrusted.
fn is_peer(inst: &Instance, me: &Me<'_>, config: &Config, my_groups: &BTreeSet<&str>) -> bool {
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
    live && same_vpc && shares_group && same_cluster
}

/// A peer's role and address (rules 1 and 2 of [`membership_after`]): its `role` tag must be
/// `master` or `minion`; its private IPv4 address must parse, pass [`address_problem`] and not
/// be `my_ip`, this node's own. `None`, with one note saying why, when any of them fails.
fn vet_peer(
    inst: &Instance,
    me: &Me<'_>,
    my_ip: Option<Ipv4Addr>,
    notes: &mut Notes,
) -> Option<Candidate> {
    let id = &inst.instance_id;
    let role = match inst.tags.get(ROLE_TAG).map(String::as_str) {
        Some(r) => match Role::parse(r) {
            Some(role) => role,
            None => {
                notes.push(|| {
                    format!(
                        "left out {id}: its `role` tag {:?} is neither master nor minion",
                        truncate(r)
                    )
                });
                return None;
            }
        },
        None => {
            notes.push(|| format!("left out {id}: it has no `role` tag"));
            return None;
        }
    };
    let Some(private_ip) = inst
        .private_ip_address
        .as_deref()
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
    else {
        notes.push(|| format!("left out {id}: no valid private IPv4 address"));
        return None;
    };
    if let Some(problem) = address_problem(private_ip) {
        notes.push(|| format!("left out {id}: its private address {private_ip} {problem}"));
        return None;
    }
    if Some(private_ip) == my_ip {
        notes.push(|| {
            format!(
                "left out {id}: it claims this node's own address {private_ip} (this node is {})",
                me.identity.instance_id
            )
        });
        return None;
    }
    Some(Candidate::new(
        id.clone(),
        role,
        private_ip,
        inst.tags.get("Name").map(String::as_str),
        inst.private_dns_name.as_deref(),
    ))
}

/// One address, one instance (rule 2 of [`membership_after`]). EC2 never gives two live
/// instances one private address; an answer that does is wrong somewhere, and which one is meant
/// cannot be known. The master, then the lower id, keeps it, so that every node that sees the
/// same answer agrees; each other instance at that address is left out with a note. Peers at
/// this node's own address are already out. Returns the kept candidates sorted by address.
fn one_per_address(mut candidates: Vec<Candidate>, notes: &mut Notes) -> Vec<Candidate> {
    candidates.sort_unstable_by(|a, b| {
        a.ip.cmp(&b.ip)
            .then(a.role.cmp(&b.role))
            .then(a.instance_id.cmp(&b.instance_id))
    });
    let mut kept: Vec<Candidate> = Vec::with_capacity(candidates.len());
    for c in candidates {
        match kept.last() {
            Some(k) if k.ip == c.ip => {
                let (kid, ip, cid) = (&k.instance_id, c.ip, &c.instance_id);
                notes.push(|| format!("left out {cid}: {kid} has the same private address {ip}"));
            }
            _ => kept.push(c),
        }
    }
    kept
}

/// A private DNS label belongs to the instance whose DNS name it is (the lowest id when several
/// share it), so no other may claim it with its Name tag (rule 3 of [`membership_after`]): it
/// would take that instance's fallback name, or this node's own host name. Such a claim is
/// dropped with a note, and the candidate falls back to its own label. Then one note for each
/// candidate whose Name tag was unusable from the start, in candidate order.
fn refuse_shadowing_claims(candidates: &mut [Candidate], notes: &mut Notes) {
    let mut label_owner: HashMap<&str, &str> = HashMap::with_capacity(candidates.len());
    for c in candidates.iter() {
        if let Some(l) = &c.label {
            label_owner
                .entry(l.as_str())
                .and_modify(|o| {
                    if c.instance_id.as_str() < *o {
                        *o = c.instance_id.as_str();
                    }
                })
                .or_insert(c.instance_id.as_str());
        }
    }
    let mut refused_claims: Vec<(usize, String)> = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        if let Some(claim) = &c.claim {
            if let Some(owner) = label_owner.get(claim.as_str()) {
                if *owner != c.instance_id {
                    refused_claims.push((i, owner.to_string()));
                }
            }
        }
    }
    for (i, owner) in refused_claims {
        let c = &mut candidates[i];
        let claim = c.claim.take().expect("checked above");
        let id = &c.instance_id;
        notes.push(|| {
            format!(
                "{id}: its Name tag {claim} is the private DNS name of {owner}; named after its \
                 own DNS name instead"
            )
        });
    }
    for c in candidates.iter() {
        if let Some(reason) = &c.tag_problem {
            let id = &c.instance_id;
            notes.push(|| format!("{id}: its Name tag {reason}; named after its DNS name instead"));
        }
    }
}

/// Marks the candidates that held the name they ask for first in `previous`, this node's last
/// membership: they keep it against every other claimant (rule 4 of [`membership_after`]).
fn mark_held(candidates: &mut [Candidate], previous: Option<&Membership>) {
    let held: HashMap<&str, &str> = previous
        .map(|p| {
            p.nodes
                .iter()
                .map(|n| (n.instance_id.as_str(), n.name.as_str()))
                .collect()
        })
        .unwrap_or_default();
    for c in candidates {
        c.held = match (c.primary(), held.get(c.instance_id.as_str())) {
            (Some(p), Some(h)) => p == *h,
            _ => false,
        };
    }
}

/// Which name each candidate gets (rule 4 of [`membership_after`]), indexed like `candidates`.
/// A candidate with no usable name at all is left out with a note. The claimants of one name are
/// ranked by [`Candidate::rank`] (the holder, then a master, then the lowest id) and the first
/// keeps it; the others fall back to their DNS label, lower id first, when it differs from the
/// contested name and nobody has it yet, and are left out otherwise. Then one note per contested
/// name, in name order.
fn resolve_names(candidates: &[Candidate], notes: &mut Notes) -> Vec<Given> {
    let mut order: Vec<usize> = Vec::with_capacity(candidates.len());
    for (i, c) in candidates.iter().enumerate() {
        if c.primary().is_some() {
            order.push(i);
        } else {
            let id = &c.instance_id;
            notes.push(|| {
                format!(
                    "left out {id}: neither its Name tag nor its private DNS name is a usable \
                     host name"
                )
            });
        }
    }
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (&candidates[a], &candidates[b]);
        a.primary().cmp(&b.primary()).then(a.rank().cmp(&b.rank()))
    });
    // Which of its names each candidate gets; the strings stay where they are until the end.
    let mut given: Vec<Given> = vec![Given::Nothing; candidates.len()];
    let mut taken: HashSet<&str> = HashSet::with_capacity(order.len());
    let contests = award_primaries(candidates, &order, &mut given, &mut taken);
    // The others fall back to their DNS label, lower id first.
    let mut losers: Vec<usize> = contests
        .iter()
        .flat_map(|c| c.losers.iter().copied())
        .collect();
    losers.sort_unstable_by(|&a, &b| candidates[a].instance_id.cmp(&candidates[b].instance_id));
    for i in losers {
        let c = &candidates[i];
        if let Some(l) = c.label.as_deref() {
            if Some(l) != c.primary() && taken.insert(l) {
                given[i] = Given::Label;
            }
        }
    }
    drop(taken);
    for contest in &contests {
        notes.push(|| contest.note(candidates, &given));
    }
    given
}

/// Gives each name its first claimant in `order` (candidate indices sorted by name, then rank):
/// marks it [`Given::Primary`] and the name taken. Returns the names that several candidates
/// claimed, in name order, with the winner, why it won, and the losers in rank order.
fn award_primaries<'c>(
    candidates: &'c [Candidate],
    order: &[usize],
    given: &mut [Given],
    taken: &mut HashSet<&'c str>,
) -> Vec<Contest> {
    let mut contests: Vec<Contest> = Vec::new();
    let mut g = 0;
    while g < order.len() {
        let name = candidates[order[g]].primary().expect("filtered above");
        let mut end = g + 1;
        while end < order.len() && candidates[order[end]].primary() == Some(name) {
            end += 1;
        }
        given[order[g]] = Given::Primary;
        taken.insert(name);
        if end - g > 1 {
            contests.push(Contest {
                name: name.to_string(),
                winner: order[g],
                why: why_kept(&candidates[order[g]], &candidates[order[g + 1]]),
                losers: order[g + 1..end].to_vec(),
            });
        }
        g = end;
    }
    contests
}

/// The members: each candidate that was given a name, under that name, sorted (by name first).
fn into_nodes(candidates: Vec<Candidate>, given: Vec<Given>) -> Vec<Node> {
    let mut nodes: Vec<Node> = candidates
        .into_iter()
        .zip(given)
        .filter_map(|(c, given)| {
            let name = match given {
                Given::Nothing => return None,
                Given::Primary => c.claim.or(c.label)?,
                Given::Label => c.label?,
            };
            Some(Node {
                name,
                instance_id: c.instance_id,
                role: c.role,
                private_ip: c.ip,
            })
        })
        .collect();
    nodes.sort_unstable();
    nodes
}

/// An instance that passed the filters, before names are settled.
struct Candidate {
    instance_id: String,
    role: Role,
    ip: Ipv4Addr,
    /// Its `Name` tag, when that is a usable name.
    claim: Option<String>,
    /// Why its `Name` tag is not used (absent when it has none, or it is usable).
    tag_problem: Option<String>,
    /// The first label of its private DNS name, when that is a usable name.
    label: Option<String>,
    /// Whether it held its claimed name in the previous membership.
    held: bool,
}

impl Candidate {
    fn new(
        instance_id: String,
        role: Role,
        ip: Ipv4Addr,
        name_tag: Option<&str>,
        dns: Option<&str>,
    ) -> Candidate {
        let (claim, tag_problem) = match name_tag {
            None => (None, None),
            Some(t) => match name_problem(t) {
                None => (Some(t.to_string()), None),
                Some(p) => (None, Some(format!("{:?} {p}", truncate(t)))),
            },
        };
        let label = dns
            .and_then(|d| d.split('.').next())
            .filter(|l| name_problem(l).is_none())
            .map(str::to_string);
        Candidate {
            instance_id,
            role,
            ip,
            claim,
            tag_problem,
            label,
            held: false,
        }
    }

    /// The name it asks for first.
    fn primary(&self) -> Option<&str> {
        self.claim.as_deref().or(self.label.as_deref())
    }

    /// Lower ranks first: the holder of the name, then a master, then the lower instance id.
    fn rank(&self) -> (bool, Role, &str) {
        (!self.held, self.role, &self.instance_id)
    }
}

/// Which of its names a candidate is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Given {
    Nothing,
    /// Its Name tag, or its DNS label when it has no usable Name tag.
    Primary,
    /// Its DNS label, after losing its Name tag's name to another instance.
    Label,
}

/// A name that several instances claimed.
struct Contest {
    name: String,
    winner: usize,
    why: &'static str,
    losers: Vec<usize>,
}

impl Contest {
    fn note(&self, candidates: &[Candidate], given: &[Given]) -> String {
        let (renamed, left_out): (Vec<usize>, Vec<usize>) = self
            .losers
            .iter()
            .partition(|&&i| given[i] != Given::Nothing);
        let mut s = format!(
            "{} instances share the name {}: {} keeps it ({})",
            thousands(self.losers.len() + 1),
            self.name,
            candidates[self.winner].instance_id,
            self.why
        );
        if !renamed.is_empty() {
            s.push_str(&format!(
                "; {} {} named after {} private DNS name",
                id_list(candidates, &renamed),
                if renamed.len() == 1 { "is" } else { "are" },
                if renamed.len() == 1 { "its" } else { "their" },
            ));
        }
        if !left_out.is_empty() {
            s.push_str(&format!(
                "; {} left out: no usable private DNS name",
                id_list(candidates, &left_out)
            ));
        }
        s
    }
}

fn why_kept(winner: &Candidate, second: &Candidate) -> &'static str {
    if winner.held && !second.held {
        "it held the name in this node's last membership"
    } else if winner.role < second.role {
        "the master"
    } else {
        "the lowest instance id"
    }
}

/// "i-1, i-2, i-3 and 49,996 more", in instance id order.
fn id_list(candidates: &[Candidate], which: &[usize]) -> String {
    let mut ids: Vec<&str> = which
        .iter()
        .map(|&i| candidates[i].instance_id.as_str())
        .collect();
    let shown = ids.len().min(IDS_PER_NOTE);
    if ids.len() > shown {
        // The `shown` lowest ids first, without sorting 50,000 of them.
        ids.select_nth_unstable(shown);
    }
    let mut head: Vec<&str> = ids[..shown].to_vec();
    head.sort_unstable();
    let mut s = head.join(", ");
    if ids.len() > shown {
        s.push_str(&format!(" and {} more", thousands(ids.len() - shown)));
    }
    s
}

/// 49999 → "49,999".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut s = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            s.push(',');
        }
        s.push(ch);
    }
    s
}

/// The notes of one membership, at most [`MAX_NOTES`] of them (a note past the cap is not even
/// formatted), and then one that counts the others.
#[derive(Default)]
struct Notes {
    kept: Vec<String>,
    dropped: usize,
}

impl Notes {
    fn push(&mut self, note: impl FnOnce() -> String) {
        if self.kept.len() < MAX_NOTES {
            self.kept.push(note());
        } else {
            self.dropped += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.kept.push(format!(
                "{} more notes like these are not shown (berth keeps the first {MAX_NOTES})",
                thousands(self.dropped)
            ));
        }
        self.kept
    }
}

/// Why `addr` cannot be a peer's private address, or `None` when it can: an ordinary unicast
/// address of the private ranges a VPC is numbered from (RFC 1918's 10/8, 172.16/12,
/// 192.168/16, and RFC 6598's 100.64/10, which AWS accepts as a VPC CIDR block). Every other
/// address in a hosts file or `--machines` would send the cluster's traffic somewhere else:
/// 0.0.0.0/8 (RFC 1122 "this network"), loopback, link-local (169.254.169.254 is the instance
/// metadata service), multicast, broadcast, or the public Internet.
pub fn address_problem(addr: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = addr.octets();
    if a == 0 {
        Some("is in 0.0.0.0/8, \"this network\" (RFC 1122), not an instance's address")
    } else if addr.is_loopback() {
        Some("is a loopback address (127.0.0.0/8)")
    } else if addr.is_link_local() {
        Some(
            "is link-local (169.254.0.0/16, where the instance metadata service and the Amazon \
             DNS server answer)",
        )
    } else if addr.is_broadcast() {
        Some("is the limited broadcast address")
    } else if addr.is_multicast() {
        Some("is a multicast address (224.0.0.0/4)")
    } else if addr.is_private() || (a == 100 && (64..128).contains(&b)) {
        None
    } else {
        Some(
            "is not a private address (RFC 1918 or RFC 6598), so it is not an address inside \
             the VPC",
        )
    }
}

/// Why `name` cannot be a node's name, or `None` when it can: one lowercase RFC 1123 label (1 to
/// 63 letters, digits and inner hyphens; lowercase because Kubernetes compares minion names as
/// written) that is not reserved. A dotted name could be any name the node resolves, AWS's
/// endpoints (`ec2.us-east-1.amazonaws.com`) first among them, so none is accepted.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.contains('.') {
        Some("has a dot: only a single-label host name can be a node's name")
    } else if !valid_label(name) {
        Some("is not a host name (RFC 1123: 1 to 63 lowercase letters, digits and inner hyphens)")
    } else if reserved_name(name) {
        Some("is reserved: it names this host itself or a service every node resolves")
    } else {
        None
    }
}

/// Names a hosts file line must never redefine: `localhost` and its variants (`localhost4`,
/// `localhost6`), the IPv6 names of Debian's, Fedora's and SUSE's hosts files (`ip6-*`,
/// `ipv6-*`), `localdomain`, `broadcasthost`, and `instance-data`, the name EC2's resolver gives
/// the instance metadata service.
pub fn reserved_name(label: &str) -> bool {
    label.starts_with("localhost")
        || label.starts_with("ip6-")
        || label.starts_with("ipv6-")
        || matches!(label, "localdomain" | "broadcasthost" | "instance-data")
}

/// One RFC 1123 label in lowercase: 1 to 63 letters, digits and inner hyphens.
pub fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
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
            assert_eq!(name_problem(&n.name), None, "{:?}", n.name);
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

    fn master_view(all: &[Instance]) -> Membership {
        master_view_after(all, None)
    }

    fn master_view_after(all: &[Instance], previous: Option<&Membership>) -> Membership {
        let id = identity("i-0a", "172.30.0.246", "ip-172-30-0-246.ec2.internal");
        let tags = seed()[0].tags.clone();
        let me = Me {
            identity: &id,
            role: Role::Master,
            tags: &tags,
        };
        membership_after(&me, &config(), all, previous)
    }

    fn names(m: &Membership) -> Vec<&str> {
        m.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    fn name_of<'m>(m: &'m Membership, id: &str) -> Option<&'m str> {
        m.node(id).map(|n| n.name.as_str())
    }

    #[test]
    fn names_that_shadow_what_the_node_resolves_are_refused() {
        let mut all = seed();
        let shadowing = [
            "ec2.us-east-1.amazonaws.com",
            "localhost",
            "localhost6",
            "ip6-allnodes",
            "ipv6-localhost",
            "instance-data",
            "broadcasthost",
            "fed-minion.example.com",
        ];
        for (i, bad) in shadowing.iter().enumerate() {
            all.push(inst(
                &format!("i-1{i}"),
                bad,
                "minion",
                &format!("172.30.1.{}", i + 1),
            ));
        }
        let m = master_view(&all);
        assert_eq!(m.nodes.len(), 3 + shadowing.len(), "{:?}", m.notes);
        for bad in shadowing {
            assert!(!names(&m).contains(&bad), "{bad} became a name");
            assert!(
                m.notes.iter().any(|n| n.contains(&format!("{bad:?}"))),
                "no note for {bad}: {:?}",
                m.notes
            );
        }
        assert_eq!(name_of(&m, "i-10"), Some("ip-172-30-1-1"));
        assert_eq!(name_of(&m, "i-17"), Some("ip-172-30-1-8"));
        assert!(m.notes.iter().any(|n| n.contains("has a dot")));
        assert!(m.notes.iter().any(|n| n.contains("is reserved")));
    }

    #[test]
    fn reserved_and_valid_names() {
        for bad in [
            "localhost",
            "localhost4",
            "localhost6",
            "ip6-localhost",
            "ip6-loopback",
            "ip6-localnet",
            "ip6-mcastprefix",
            "ip6-allrouters",
            "ipv6-loopback",
            "instance-data",
            "localdomain",
            "a.b",
            "",
            "-a",
            "a-",
            "Fed",
            &"a".repeat(64),
        ] {
            assert!(name_problem(bad).is_some(), "{bad:?} accepted");
        }
        for good in [
            "fed-master",
            "a",
            "node-0",
            "ip-10-0-0-1",
            "ip6",
            &"a".repeat(63),
        ] {
            assert_eq!(name_problem(good), None, "{good:?} refused");
        }
    }

    #[test]
    fn a_peer_with_a_reserved_dns_label_too_is_left_out() {
        let mut all = seed();
        let mut h = inst("i-30", "localhost", "minion", "172.30.0.30");
        h.private_dns_name = Some("localhost.ec2.internal".into());
        all.push(h);
        let m = master_view(&all);
        assert!(m.node("i-30").is_none());
        assert!(m.notes.iter().any(|n| n.starts_with("left out i-30")));
    }

    #[test]
    fn addresses_outside_the_vpc_private_ranges_are_left_out() {
        let mut all = seed();
        let bad = [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "255.255.255.255",
            "169.254.169.254",
            "169.254.169.253",
            "224.0.0.1",
            "203.0.113.7",
            "172.32.0.1",
            "240.0.0.1",
            "172.30.0.246", // this node's (the master's) own
        ];
        for (i, ip) in bad.iter().enumerate() {
            all.push(inst(
                &format!("i-4{i:x}"),
                &format!("bad-{i}"),
                "minion",
                ip,
            ));
        }
        let good = ["10.1.2.3", "192.168.1.1", "100.64.0.5", "172.16.0.1"];
        for (i, ip) in good.iter().enumerate() {
            all.push(inst(&format!("i-5{i}"), &format!("good-{i}"), "minion", ip));
        }
        let m = master_view(&all);
        assert_eq!(m.nodes.len(), 3 + good.len(), "{:?}", m.nodes);
        for (i, ip) in bad.iter().enumerate() {
            let id = format!("i-4{i:x}");
            assert!(m.node(&id).is_none(), "{ip} kept");
            assert!(
                m.notes
                    .iter()
                    .any(|n| n.starts_with(&format!("left out {id}:")) && n.contains(ip)),
                "no note for {ip}: {:?}",
                m.notes
            );
        }
        assert!(m
            .notes
            .iter()
            .any(|n| n.contains("this node's own address")));
        assert_eq!(
            m.master().unwrap().private_ip,
            "172.30.0.246".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn address_rules() {
        let problem = |s: &str| address_problem(s.parse().unwrap());
        for ok in [
            "10.0.0.1",
            "10.255.255.254",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.0.1",
            "100.64.0.1",
            "100.127.255.254",
        ] {
            assert_eq!(problem(ok), None, "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "127.0.0.53",
            "169.254.0.1",
            "255.255.255.255",
            "239.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "11.0.0.1",
            "8.8.8.8",
        ] {
            assert!(problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn two_instances_at_one_address_keep_one() {
        let mut all = seed();
        all.push(inst("i-09", "twin", "minion", "172.30.0.43"));
        let m = master_view(&all);
        // i-09 < i-0b: the lower id keeps the address, whatever EC2's order.
        assert!(m.node("i-09").is_some());
        assert!(m.node("i-0b").is_none());
        assert!(m
            .notes
            .iter()
            .any(|n| n.contains("i-0b") && n.contains("same private address 172.30.0.43")));
        all.reverse();
        assert_eq!(master_view(&all).nodes, m.nodes);
    }

    #[test]
    fn a_name_tag_cannot_take_another_members_dns_name() {
        let mut all = seed();
        // This node's own host name, and the DNS label another minion falls back to.
        all.push(inst("i-01", "ip-172-30-0-246", "minion", "172.30.0.60"));
        let m = master_view(&all);
        assert_eq!(name_of(&m, "i-01"), Some("ip-172-30-0-60"));
        assert!(m
            .notes
            .iter()
            .any(|n| n.contains("i-01") && n.contains("private DNS name of i-0a")));
        // An instance naming itself after its own DNS name is fine.
        let mut all = seed();
        all.push(inst("i-02", "ip-172-30-0-61", "minion", "172.30.0.61"));
        let m = master_view(&all);
        assert_eq!(name_of(&m, "i-02"), Some("ip-172-30-0-61"));
        assert!(m.notes.is_empty(), "{:?}", m.notes);
    }

    #[test]
    fn the_master_keeps_its_name_against_a_lower_id() {
        let mut all = seed();
        all.push(inst("i-01", "fed-master", "minion", "172.30.0.70"));
        let m = master_view(&all);
        assert_eq!(name_of(&m, "i-0a"), Some("fed-master"));
        assert_eq!(name_of(&m, "i-01"), Some("ip-172-30-0-70"));
        assert_eq!(
            m.notes,
            [
                "2 instances share the name fed-master: i-0a keeps it (the master); i-01 is named \
              after its private DNS name"
            ]
        );
    }

    #[test]
    fn a_held_name_stays_with_its_running_holder_then_moves() {
        let all = seed();
        let before = master_view(&all);
        assert_eq!(name_of(&before, "i-0b"), Some("fed-minion"));

        // A minion with a lower id takes the same Name tag.
        let mut contested = seed();
        contested.push(inst("i-01", "fed-minion", "minion", "172.30.0.80"));
        let m = master_view_after(&contested, Some(&before));
        assert_eq!(name_of(&m, "i-0b"), Some("fed-minion"));
        assert_eq!(name_of(&m, "i-01"), Some("ip-172-30-0-80"));
        assert!(
            m.notes[0].contains("i-0b keeps it (it held the name in this node's last membership)"),
            "{:?}",
            m.notes
        );
        // And keeps holding it at every later run.
        let again = master_view_after(&contested, Some(&m));
        assert_eq!(again.nodes, m.nodes);
        let mut reversed = contested.clone();
        reversed.reverse();
        assert_eq!(master_view_after(&reversed, Some(&m)).nodes, m.nodes);

        // Without history (a node that first sees the cluster now) the lower id wins.
        let fresh = master_view(&contested);
        assert_eq!(name_of(&fresh, "i-01"), Some("fed-minion"));
        assert!(fresh.notes[0].contains("i-01 keeps it (the lowest instance id)"));

        // The holder stops: the name moves to the other claimant.
        let mut holder_gone = contested.clone();
        holder_gone.retain(|i| i.instance_id != "i-0b");
        let after = master_view_after(&holder_gone, Some(&again));
        assert_eq!(name_of(&after, "i-01"), Some("fed-minion"));
        assert!(after.notes.is_empty(), "{:?}", after.notes);

        // The holder renames itself: it no longer claims the name, which moves too.
        let mut renamed = contested.clone();
        renamed[1].tags.insert("Name".into(), "fed-minion-b".into());
        let after = master_view_after(&renamed, Some(&again));
        assert_eq!(name_of(&after, "i-0b"), Some("fed-minion-b"));
        assert_eq!(name_of(&after, "i-01"), Some("fed-minion"));
    }

    #[test]
    fn a_loser_without_a_usable_dns_name_is_left_out() {
        let mut all = seed();
        let mut h = inst("i-01", "fed-minion", "minion", "172.30.0.90");
        h.private_dns_name = None;
        all.push(h);
        let m = master_view(&all);
        // No history: the lower id wins; the real minion falls back to its DNS name.
        assert_eq!(name_of(&m, "i-01"), Some("fed-minion"));
        assert_eq!(name_of(&m, "i-0b"), Some("ip-172-30-0-43"));
        let held = master_view_after(&all, Some(&master_view(&seed())));
        assert_eq!(name_of(&held, "i-0b"), Some("fed-minion"));
        assert!(held.node("i-01").is_none());
        assert!(
            held.notes[0].ends_with("i-01 left out: no usable private DNS name"),
            "{:?}",
            held.notes
        );
    }

    /// Membership of `n` instances, all sharing one Name tag: `i-<n as 17 hex digits>`,
    /// addresses 10.x.y.z.
    fn crowd(n: usize) -> Vec<Instance> {
        (0..n)
            .map(|k| {
                let ip = format!("10.{}.{}.{}", k / 65536 + 1, (k / 256) % 256, k % 256);
                let role = if k == 0 { "master" } else { "minion" };
                inst(&format!("i-{k:017x}"), "node", role, &ip)
            })
            .collect()
    }

    #[test]
    fn fifty_thousand_peers_sharing_one_name() {
        let all = crowd(50_000);
        let id = identity(&all[0].instance_id, "10.1.0.0", "ip-10-1-0-0.ec2.internal");
        let tags = all[0].tags.clone();
        let me = Me {
            identity: &id,
            role: Role::Master,
            tags: &tags,
        };
        let m = membership(&me, &config(), &all);
        assert_eq!(m.nodes.len(), 50_000);
        let unique: HashSet<&str> = m.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(unique.len(), 50_000, "two members share a name");
        assert_eq!(name_of(&m, &all[0].instance_id), Some("node"));
        assert_eq!(name_of(&m, &all[1].instance_id), Some("ip-10-1-0-1"));
        assert_eq!(
            m.notes,
            [format!(
                "50,000 instances share the name node: {} keeps it (the master); {}, {}, {} and \
                 49,996 more are named after their private DNS name",
                all[0].instance_id, all[1].instance_id, all[2].instance_id, all[3].instance_id
            )]
        );
    }

    #[test]
    fn notes_are_capped() {
        let mut all = seed();
        for k in 0..100 {
            all.push(inst(
                &format!("i-{:x}", 0x100 + k),
                &format!("n-{k}"),
                "captain",
                "172.30.2.1",
            ));
        }
        let m = master_view(&all);
        assert_eq!(m.nodes.len(), 3);
        assert_eq!(m.notes.len(), MAX_NOTES + 1);
        assert_eq!(
            m.notes[MAX_NOTES],
            format!(
                "{} more notes like these are not shown (berth keeps the first {MAX_NOTES})",
                100 - MAX_NOTES
            )
        );
    }

    #[test]
    fn the_same_answer_in_any_order() {
        // Contested names, a shared address, bad addresses: every permutation of EC2's answer
        // gives the same membership and the same notes.
        let mut all = seed();
        all.push(inst("i-01", "fed-minion", "minion", "172.30.0.81"));
        all.push(inst("i-02", "fed-minion", "minion", "172.30.0.82"));
        all.push(inst("i-03", "fed-master", "minion", "172.30.0.83"));
        all.push(inst("i-04", "twin", "minion", "172.30.0.81"));
        all.push(inst("i-05", "far", "minion", "8.8.4.4"));
        all.push(inst("i-06", "ip-172-30-0-82", "minion", "172.30.0.86"));
        let previous = master_view(&seed());
        let want = master_view_after(&all, Some(&previous));
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..50 {
            rng.shuffle(&mut all);
            let got = master_view_after(&all, Some(&previous));
            assert_eq!(got.nodes, want.nodes);
            let (mut a, mut b) = (got.notes.clone(), want.notes.clone());
            a.sort();
            b.sort();
            assert_eq!(a, b);
        }
        assert_eq!(name_of(&want, "i-0b"), Some("fed-minion"));
        assert_eq!(name_of(&want, "i-0a"), Some("fed-master"));
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn conditions_tell_the_operator_what_to_do() {
        assert_eq!(Condition::Ready.to_string(), "ready");
        assert_eq!(
            Condition::NoMaster.to_string(),
            "no master: no instance of this cluster is tagged role=master; launch one, or tag an \
             existing instance role=master"
        );
        assert_eq!(
            Condition::SeveralMasters(vec!["a".into(), "b".into()]).to_string(),
            "several masters (a, b): exactly one instance of the cluster may be tagged \
             role=master; retag the others role=minion"
        );
    }

    #[test]
    fn filters_ask_ec2_for_the_peers_only() {
        let mut id = identity("i-0a", "172.30.0.246", "ip-172-30-0-246.ec2.internal");
        id.security_group_ids = vec!["sg-1".into(), "sg-2".into()];
        let f = filters(&id, &config());
        assert_eq!(
            f,
            [
                Filter::new("instance.group-id", ["sg-1", "sg-2"]),
                Filter::new("vpc-id", ["vpc-1"]),
                Filter::new("instance-state-name", ["pending", "running"]),
                Filter::new("tag:berth:cluster", ["seed"]),
            ]
        );
        let every = filters(&id, &Config::default());
        assert_eq!(every.len(), 3);
        assert!(every.iter().all(|f| !f.name.starts_with("tag:")));
    }

    #[test]
    fn a_dns_label_two_instances_share_belongs_to_the_lower_id() {
        // EC2 never gives two instances one private DNS name; an answer that does still gives
        // every member one name, the same in any order.
        let mut all = seed();
        // i-02 has the lower address, so it is seen first.
        let mut y = inst("i-01", "", "minion", "172.30.0.92");
        y.tags.remove("Name");
        y.private_dns_name = Some("ip-shared.ec2.internal".into());
        let mut x = inst("i-02", "ip-shared", "minion", "172.30.0.91");
        x.private_dns_name = Some("ip-shared.ec2.internal".into());
        all.extend([x, y]);
        let m = master_view(&all);
        assert_eq!(name_of(&m, "i-01"), Some("ip-shared"));
        assert!(m.node("i-02").is_none());
        assert!(
            m.notes
                .iter()
                .any(|n| n
                    .starts_with("i-02: its Name tag ip-shared is the private DNS name of i-01")),
            "{:?}",
            m.notes
        );
        all.reverse();
        assert_eq!(master_view(&all).nodes, m.nodes);
    }

    #[test]
    fn a_loser_never_takes_a_dns_label_another_member_holds() {
        let mut all = seed();
        // i-03 has no Name tag: its DNS label is its name. i-02 loses `x` to i-01 and would
        // fall back to the same DNS label.
        let mut a = inst("i-01", "x", "minion", "172.30.0.93");
        a.private_dns_name = Some("ip-a.ec2.internal".into());
        let mut b = inst("i-02", "x", "minion", "172.30.0.94");
        b.private_dns_name = Some("ip-dup.ec2.internal".into());
        let mut c = inst("i-03", "", "minion", "172.30.0.95");
        c.tags.remove("Name");
        c.private_dns_name = Some("ip-dup.ec2.internal".into());
        all.extend([a, b, c]);
        let m = master_view(&all);
        assert_eq!(name_of(&m, "i-01"), Some("x"));
        assert_eq!(name_of(&m, "i-03"), Some("ip-dup"));
        assert!(m.node("i-02").is_none(), "{:?}", m.nodes);
        let unique: HashSet<&str> = m.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(unique.len(), m.nodes.len());
    }

    #[test]
    fn an_aggregated_note_lists_the_lowest_ids() {
        // i-09 held `crowd`; a master and four minions claim it too. The note lists the three
        // lowest ids of the renamed, whatever their rank.
        let mut all = seed();
        all.push(inst("i-09", "crowd", "minion", "172.30.3.9"));
        let previous = master_view(&all);
        all.push(inst("i-08", "crowd", "master", "172.30.3.8"));
        for k in 1..=4 {
            all.push(inst(
                &format!("i-0{k}"),
                "crowd",
                "minion",
                &format!("172.30.3.{k}"),
            ));
        }
        let m = master_view_after(&all, Some(&previous));
        assert_eq!(name_of(&m, "i-09"), Some("crowd"));
        assert_eq!(
            m.notes,
            [
                "6 instances share the name crowd: i-09 keeps it (it held the name in this node's \
              last membership); i-01, i-02, i-03 and 2 more are named after their private DNS \
              name"
            ]
        );
    }

    #[test]
    fn invalid_instance_ids_are_left_out() {
        let mut all = seed();
        for (k, bad) in ["bogus", "i-", "i-xyz", &format!("i-{}", "0".repeat(31))]
            .iter()
            .enumerate()
        {
            let ip = format!("172.30.4.{}", k + 1);
            all.push(inst(bad, &format!("bad-{k}"), "minion", &ip));
        }
        all.push(inst(
            &format!("i-{}", "0".repeat(30)),
            "long-ok",
            "minion",
            "172.30.4.9",
        ));
        let m = master_view(&all);
        assert_eq!(m.nodes.len(), 4, "{:?}", m.nodes);
        assert_eq!(
            name_of(&m, &format!("i-{}", "0".repeat(30))),
            Some("long-ok")
        );
        assert_eq!(
            m.notes
                .iter()
                .filter(|n| n.starts_with("left out an instance with an invalid id"))
                .count(),
            4,
            "{:?}",
            m.notes
        );
    }

    #[test]
    fn notes_follow_the_order_of_the_rules() {
        let mut all = seed();
        all.push(inst("bogus", "x", "minion", "172.30.5.1"));
        all.push(inst("i-10", "boss-1", "boss", "172.30.5.2"));
        let mut no_role = inst("i-11", "no-role", "minion", "172.30.5.3");
        no_role.tags.remove(ROLE_TAG);
        all.push(no_role);
        all.push(inst("i-12", "public", "minion", "8.8.8.8"));
        all.push(inst("i-13", "twin-of-me", "minion", "172.30.0.246"));
        all.push(inst("i-14", "twin-of-b", "minion", "172.30.0.43"));
        all.push(inst("i-15", "ip-172-30-0-11", "minion", "172.30.5.5"));
        all.push(inst("i-16", "Bad_Name", "minion", "172.30.5.6"));
        let mut nameless = inst("i-17", "Bad_Name", "minion", "172.30.5.7");
        nameless.private_dns_name = None;
        all.push(nameless);
        all.push(inst("i-18", "fed-minion", "minion", "172.30.5.8"));
        let mut loser = inst("i-19", "fed-minion", "minion", "172.30.5.9");
        loser.private_dns_name = None;
        all.push(loser);

        let m = master_view(&all);
        let expected = [
            "left out an instance with an invalid id \"bogus\"",
            "left out i-10: its `role` tag \"boss\"",
            "left out i-11: it has no `role` tag",
            "left out i-12: its private address 8.8.8.8",
            "left out i-13: it claims this node's own address 172.30.0.246",
            "left out i-14: i-0b has the same private address 172.30.0.43",
            "i-15: its Name tag ip-172-30-0-11 is the private DNS name of i-0c",
            "i-16: its Name tag \"Bad_Name\"",
            "i-17: its Name tag \"Bad_Name\"",
            "left out i-17: neither its Name tag nor its private DNS name",
            "3 instances share the name fed-minion: i-0b keeps it (the lowest instance id); i-18 \
             is named after its private DNS name; i-19 left out",
        ];
        assert_eq!(m.notes.len(), expected.len(), "{:#?}", m.notes);
        for (note, start) in m.notes.iter().zip(expected) {
            assert!(
                note.starts_with(start),
                "{note:?} should start with {start:?}"
            );
        }
        assert_eq!(
            names(&m),
            [
                "fed-master",
                "fed-minion",
                "fed-minion-2",
                "ip-172-30-5-5",
                "ip-172-30-5-6",
                "ip-172-30-5-8"
            ]
        );
    }
}
