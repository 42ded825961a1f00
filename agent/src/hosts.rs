//! The managed block of `/etc/hosts`: one line per cluster node between two marker lines. Every
//! line outside the block is the host's and is kept byte for byte.

use crate::discovery::Node;

pub const BEGIN: &str =
    "# BEGIN berth: cluster nodes, managed by berth-agent; edits inside are replaced";
pub const END: &str = "# END berth";

/// The block for these nodes (already sorted by name), markers included.
pub fn block(nodes: &[Node]) -> String {
    let mut b = String::with_capacity(64 + nodes.len() * 32);
    b.push_str(BEGIN);
    b.push('\n');
    for n in nodes {
        b.push_str(&format!("{} {}\n", n.private_ip, n.name));
    }
    b.push_str(END);
    b.push('\n');
    b
}

/// `current` with its managed block replaced by `block` (or removed, for `None`). A file without
/// a block gets it appended; a BEGIN marker with no END after it is a damaged block, replaced
/// from the marker to the end of the file would lose the host's lines, so only the marker line is
/// dropped and a fresh block appended.
pub fn merge(current: &str, block: Option<&str>) -> String {
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
                out.push_str(l);
            }
            if let Some(block) = block {
                out.push_str(block);
            }
            for l in &lines[e + 1..] {
                out.push_str(l);
            }
        }
        _ => {
            for (i, l) in lines.iter().enumerate() {
                if Some(i) != begin {
                    out.push_str(l);
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
        let b = block(&nodes());
        let once = merge(base, Some(&b));
        assert_eq!(
            once,
            format!("{base}{BEGIN}\n172.30.0.246 fed-master\n172.30.0.43 fed-minion\n{END}\n")
        );
        assert_eq!(merge(&once, Some(&b)), once, "idempotent");
        let with_tail = format!("{once}10.0.0.1 printer\n");
        let fewer = block(&nodes()[..1]);
        let replaced = merge(&with_tail, Some(&fewer));
        assert_eq!(
            replaced,
            format!("{base}{BEGIN}\n172.30.0.246 fed-master\n{END}\n10.0.0.1 printer\n")
        );
        assert_eq!(merge(&replaced, None), format!("{base}10.0.0.1 printer\n"));
    }

    #[test]
    fn no_trailing_newline_and_damaged_block() {
        let b = block(&nodes());
        assert_eq!(
            merge("127.0.0.1 localhost", Some(&b)),
            format!("127.0.0.1 localhost\n{b}")
        );
        let damaged = format!("{BEGIN}\n1.2.3.4 keep-me\n");
        assert_eq!(merge(&damaged, Some(&b)), format!("1.2.3.4 keep-me\n{b}"));
        assert_eq!(merge("", Some(&b)), b);
    }
}
