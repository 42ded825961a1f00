//! The managed block of `/etc/hosts`: one line per cluster node between two marker lines. Every
//! line outside the block is the host's and is kept byte for byte, except a line that gives a
//! cluster node's name another address: it is commented out (see [`DISABLED`]) so that glibc
//! resolves the name to the node berth found, and restored when it no longer conflicts.

use std::net::IpAddr;

use crate::discovery::Node;

pub const BEGIN: &str =
    "# BEGIN berth: cluster nodes, managed by berth-agent; edits inside are replaced";
pub const END: &str = "# END berth";

/// The block for these nodes (already sorted by name) and then these aliases (address, name), markers included.
pub fn block_with(nodes: &[Node], aliases: &[(std::net::Ipv4Addr, String)]) -> String {
    let mut b = String::with_capacity(64 + (nodes.len() + aliases.len()) * 32);
    b.push_str(BEGIN);
    b.push('\n');
    for n in nodes {
        b.push_str(&format!("{} {}\n", n.private_ip, n.name));
    }
    for (ip, name) in aliases {
        b.push_str(&format!("{ip} {name}\n"));
    }
    b.push_str(END);
    b.push('\n');
    b
}

/// The prefix of a host's line that named a cluster node with another address. glibc's files
/// backend answers a name with the first line that has it (and with every line under `multi on`),
/// so a line left from a hand-made setup (`172.30.0.200 fed-master`) would beat the managed block
/// wherever the block is put. Commenting the line out, behind a marker, makes berth's address the
/// answer; the line comes back as it was once it no longer conflicts (the node left the cluster,
/// or `manage_hosts: false`). Moving the block above the host's lines instead would not help with
/// `multi on`, nor with an IPv6 line that `getent hosts` prefers.
pub const DISABLED: &str = "#berth-disabled (names a cluster node with another address): ";

/// `current` with its managed block replaced by `block` (or removed, for `None`), and the host's
/// lines that name a node of the block with another address commented out behind [`DISABLED`]
/// (lines so commented that no longer conflict are restored). A file without a block gets it
/// appended; a BEGIN marker with no END after it is a damaged block, replaced from the marker to
/// the end of the file would lose the host's lines, so only the marker line is dropped and a
/// fresh block appended. Every other line is kept byte for byte.
pub fn merge(current: &str, block: Option<&str>) -> String {
    let managed = block.map(entries).unwrap_or_default();
    let host_line = |l: &str| -> String {
        if let Some(original) = l.strip_prefix(DISABLED) {
            if conflict(original, &managed).is_some() {
                l.to_string()
            } else {
                original.to_string()
            }
        } else if conflict(l, &managed).is_some() {
            format!("{DISABLED}{l}")
        } else {
            l.to_string()
        }
    };
    let lines: Vec<&str> = current.split_inclusive('\n').collect();
    let begin = lines.iter().position(|l| l.trim_end() == BEGIN);
    let end = begin.and_then(|b| {
        lines[b + 1..]
            .iter()
            .position(|l| l.trim_end() == END)
            .map(|e| b + 1 + e)
    });
    let mut out = String::with_capacity(current.len() + block.map_or(0, str::len));
    match (begin, end) {
        (Some(b), Some(e)) => {
            for l in &lines[..b] {
                out.push_str(&host_line(l));
            }
            if let Some(block) = block {
                out.push_str(block);
            }
            for l in &lines[e + 1..] {
                out.push_str(&host_line(l));
            }
        }
        _ => {
            for (i, l) in lines.iter().enumerate() {
                if Some(i) != begin {
                    out.push_str(&host_line(l));
                }
            }
            if let Some(block) = block {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str(block);
            }
        }
    }
    out
}

/// The (name, address) pairs of a block, names lowercased as glibc compares them.
fn entries(block: &str) -> Vec<(String, IpAddr)> {
    block
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let ip = f.next()?.parse().ok()?;
            Some((f.next()?.to_ascii_lowercase(), ip))
        })
        .collect()
}

/// The first managed name that `line` gives another address, if any.
fn conflict<'a>(line: &str, managed: &'a [(String, IpAddr)]) -> Option<&'a (String, IpAddr)> {
    let data = line.split('#').next().unwrap_or("");
    let mut fields = data.split_whitespace();
    let addr: IpAddr = fields.next()?.parse().ok()?;
    fields.find_map(|name| {
        managed
            .iter()
            .find(|(n, ip)| n.eq_ignore_ascii_case(name) && *ip != addr)
    })
}

/// The host's lines of `current` (outside the block) that name one of `nodes` with another
/// address, active or already commented out by [`merge`], one note each: line number, name and
/// both addresses (the file is the host's, not secret; nothing else of the line is quoted).
pub fn conflicts(current: &str, nodes: &[Node]) -> Vec<String> {
    let managed: Vec<(String, IpAddr)> = nodes
        .iter()
        .map(|n| (n.name.to_ascii_lowercase(), IpAddr::V4(n.private_ip)))
        .collect();
    let mut inside = false;
    let mut notes = Vec::new();
    for (i, l) in current.lines().enumerate() {
        match l.trim_end() {
            BEGIN => inside = true,
            END => inside = false,
            _ if inside => {}
            _ => {
                let (line, disabled) = match l.strip_prefix(DISABLED) {
                    Some(original) => (original, true),
                    None => (l, false),
                };
                if let Some((name, ip)) = conflict(line, &managed) {
                    let other = line.split_whitespace().next().unwrap_or("");
                    let other = crate::config::truncate_value(other);
                    let what = if disabled {
                        "commented out by berth"
                    } else {
                        "berth comments it out"
                    };
                    notes.push(format!(
                        "/etc/hosts line {}: {name} is {other} there but {ip} in the cluster; \
                         {what}, and restores it when {name} leaves the cluster",
                        i + 1
                    ));
                }
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    fn nodes() -> Vec<Node> {
        vec![
            Node {
                name: "fed-master".into(),
                instance_id: "i-1".into(),
                role: Role::Master,
                private_ip: "172.30.0.246".parse().unwrap(),
            },
            Node {
                name: "fed-minion".into(),
                instance_id: "i-2".into(),
                role: Role::Minion,
                private_ip: "172.30.0.43".parse().unwrap(),
            },
        ]
    }

    #[test]
    fn appends_then_replaces_in_place() {
        let base = "127.0.0.1 localhost\n::1 localhost\n";
        let b = block_with(&nodes(), &[]);
        let once = merge(base, Some(&b));
        assert_eq!(
            once,
            format!("{base}{BEGIN}\n172.30.0.246 fed-master\n172.30.0.43 fed-minion\n{END}\n")
        );
        assert_eq!(merge(&once, Some(&b)), once, "idempotent");
        let with_tail = format!("{once}10.0.0.1 printer\n");
        let fewer = block_with(&nodes()[..1], &[]);
        let replaced = merge(&with_tail, Some(&fewer));
        assert_eq!(
            replaced,
            format!("{base}{BEGIN}\n172.30.0.246 fed-master\n{END}\n10.0.0.1 printer\n")
        );
        assert_eq!(merge(&replaced, None), format!("{base}10.0.0.1 printer\n"));
    }

    #[test]
    fn no_trailing_newline_and_damaged_block() {
        let b = block_with(&nodes(), &[]);
        assert_eq!(
            merge("127.0.0.1 localhost", Some(&b)),
            format!("127.0.0.1 localhost\n{b}")
        );
        let damaged = format!("{BEGIN}\n1.2.3.4 keep-me\n");
        assert_eq!(merge(&damaged, Some(&b)), format!("1.2.3.4 keep-me\n{b}"));
        assert_eq!(merge("", Some(&b)), b);
    }

    #[test]
    fn conflicting_host_lines_are_disabled_and_restored() {
        let hand = "127.0.0.1 localhost\n172.30.0.200 fed-master # the old one\n\
                    172.30.0.43 fed-minion\n10.0.0.9 printer FED-MASTER\n";
        let b = block_with(&nodes(), &[]);
        let once = merge(hand, Some(&b));
        assert_eq!(
            once,
            format!(
                "127.0.0.1 localhost\n{DISABLED}172.30.0.200 fed-master # the old one\n\
                 172.30.0.43 fed-minion\n{DISABLED}10.0.0.9 printer FED-MASTER\n{b}"
            )
        );
        assert_eq!(merge(&once, Some(&b)), once, "idempotent");
        let notes = conflicts(&once, &nodes());
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("/etc/hosts line 2: fed-master is 172.30.0.200 there"));
        assert_eq!(conflicts(hand, &nodes()).len(), 2);
        // Without the block (manage_hosts: false), the host's lines come back as they were.
        assert_eq!(merge(&once, None), hand);
        // With fed-master gone from the cluster, its line comes back.
        let minion_only = block_with(&nodes()[1..], &[]);
        assert_eq!(
            merge(&once, Some(&minion_only)),
            format!("{}{minion_only}", hand)
        );
    }
}
