//! What berth layers onto a base tree: a sorted set of absolute paths with
//! their content, mode and kind, and the rules every path must pass.
//!
//! Pure: no disk, no repository. Everything here is owned by root:root in the
//! commit; modes are explicit, never the builder's umask or uid.

use crate::kind::{Classified, Kind};
use std::collections::BTreeMap;

/// The agent keeps its per-instance state here. A commit that carries any of
/// it makes every instance launched from the image look "already done" and
/// skip its first boot.
pub(crate) const STATE_DIR: &str = "/var/lib/berth";

pub(crate) const AGENT_PATH: &str = "/usr/bin/berth-agent";
pub(crate) const UNIT_DIR: &str = "/usr/lib/systemd/system";
pub(crate) const PRESET_DIR: &str = "/usr/lib/systemd/system-preset";
pub(crate) const PROFILE_DIR: &str = "/usr/share/berth/profiles";
/// OSTree's default layer for `/etc`: merged into `/etc` on deploy.
pub(crate) const CONFIG_DIR: &str = "/usr/etc/berth";
pub(crate) const CONFIG_PATH: &str = "/usr/etc/berth/config.yaml";

/// Every top-level path berth itself writes; `inspect` walks these.
pub(crate) const BERTH_ROOTS: &[&str] = &[
    AGENT_PATH,
    UNIT_DIR,
    PRESET_DIR,
    "/usr/share/berth",
    CONFIG_DIR,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file; `mode` is the permission bits only (e.g. 0o755).
    File {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: String,
    },
    Dir,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("{path}: must be an absolute path inside the image, like /usr/share/berth/x")]
    NotAbsolute { path: String },
    #[error("{path}: `.`, `..` and empty components are not allowed in image paths")]
    BadComponent { path: String },
    #[error("{path}: refusing to bake anything under {STATE_DIR}: it is per-instance first-boot state, and a baked copy makes every instance launched from this image skip its first boot")]
    StateDir { path: String },
    #[error("{path}: written twice with different content ({first} and {second})")]
    Conflict {
        path: String,
        first: String,
        second: String,
    },
    #[error("{path}: {parent} is a file in this overlay, it cannot also be a directory")]
    FileAsDir { path: String, parent: String },
    #[error("{path}: mode {mode:o} has bits beyond 0o7777")]
    BadMode { path: String, mode: u32 },
}

impl Classified for PathError {
    fn kind(&self) -> Kind {
        match self {
            PathError::NotAbsolute { .. }
            | PathError::BadComponent { .. }
            | PathError::StateDir { .. }
            | PathError::Conflict { .. }
            | PathError::FileAsDir { .. }
            | PathError::BadMode { .. } => Kind::Refused,
        }
    }
}

/// Normalises an image path: absolute, no `.`/`..`/empty components, and
/// `/etc/...` moved to `/usr/etc/...` because OSTree ships `/etc` defaults in
/// `/usr/etc` and merges them into `/etc` on deploy.
pub(crate) fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute { path: path.into() });
    }
    let comps: Vec<&str> = path[1..].split('/').collect();
    if comps
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err(PathError::BadComponent { path: path.into() });
    }
    let mut out = String::new();
    if comps[0] == "etc" {
        out.push_str("/usr");
    }
    for c in comps {
        out.push('/');
        out.push_str(c);
    }
    if out == STATE_DIR || out.starts_with(&format!("{STATE_DIR}/")) {
        return Err(PathError::StateDir { path: path.into() });
    }
    Ok(out)
}

/// Splits `/a/b/c` into `["a", "b", "c"]`.
pub fn components(path: &str) -> Vec<&str> {
    path.trim_start_matches('/').split('/').collect()
}

/// The overlay: sorted by path so that the same inputs always produce the
/// same objects in the same order.
#[derive(Debug, Default, Clone)]
pub struct Overlay {
    nodes: BTreeMap<String, (Node, String)>,
}

impl Overlay {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `path` (normalised) from `origin` (a human description of the
    /// input, for conflict messages). Parent directories are implied.
    pub fn insert(&mut self, path: &str, node: Node, origin: &str) -> Result<String, PathError> {
        let path = normalize(path)?;
        if let Node::File { mode, .. } = node {
            if mode & !0o7777 != 0 {
                return Err(PathError::BadMode { path, mode });
            }
        }
        // A parent that this overlay writes as a file or symlink cannot hold children.
        let comps = components(&path);
        for i in 1..comps.len() {
            let parent = format!("/{}", comps[..i].join("/"));
            if let Some((n, _)) = self.nodes.get(&parent) {
                if *n != Node::Dir {
                    return Err(PathError::FileAsDir { path, parent });
                }
            }
        }
        let prefix = format!("{path}/");
        if node != Node::Dir {
            if let Some((child, _)) = self.nodes.range(prefix.clone()..).next() {
                if child.starts_with(&prefix) {
                    return Err(PathError::FileAsDir {
                        path: child.clone(),
                        parent: path,
                    });
                }
            }
        }
        match self.nodes.get(&path) {
            Some((existing, first)) if *existing != node => Err(PathError::Conflict {
                path,
                first: first.clone(),
                second: origin.into(),
            }),
            Some(_) => Ok(path),
            None => {
                self.nodes.insert(path.clone(), (node, origin.into()));
                Ok(path)
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(p, (n, _))| (p.as_str(), n))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path).map(|(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &[u8]) -> Node {
        Node::File {
            data: data.to_vec(),
            mode: 0o644,
        }
    }

    #[test]
    fn paths_are_normalised_and_etc_moves_to_usr_etc() {
        assert_eq!(normalize("/usr/bin/x").unwrap(), "/usr/bin/x");
        assert_eq!(normalize("/etc/berth/a").unwrap(), "/usr/etc/berth/a");
        assert!(matches!(
            normalize("usr/x"),
            Err(PathError::NotAbsolute { .. })
        ));
        assert!(matches!(
            normalize("/usr/../x"),
            Err(PathError::BadComponent { .. })
        ));
        assert!(matches!(
            normalize("/usr//x"),
            Err(PathError::BadComponent { .. })
        ));
        assert!(matches!(
            normalize("/usr/x/"),
            Err(PathError::BadComponent { .. })
        ));
    }

    #[test]
    fn state_dir_is_refused_but_neighbours_are_not() {
        for p in ["/var/lib/berth", "/var/lib/berth/i-123/phase"] {
            let err = normalize(p).unwrap_err();
            assert!(matches!(err, PathError::StateDir { .. }));
            assert!(err.to_string().contains("skip its first boot"));
        }
        assert!(normalize("/var/lib/berthx").is_ok());
    }

    #[test]
    fn conflicts_and_file_dir_clashes_are_refused() {
        let mut o = Overlay::new();
        o.insert("/usr/a", file(b"1"), "first").unwrap();
        o.insert("/usr/a", file(b"1"), "same").unwrap();
        let err = o.insert("/usr/a", file(b"2"), "second").unwrap_err();
        assert!(err.to_string().contains("first and second"), "{err}");
        assert!(matches!(
            o.insert("/usr/a/b", file(b"x"), "child"),
            Err(PathError::FileAsDir { .. })
        ));
        o.insert("/usr/d/e", file(b"x"), "deep").unwrap();
        assert!(matches!(
            o.insert("/usr/d", file(b"x"), "clash"),
            Err(PathError::FileAsDir { .. })
        ));
        assert_eq!(o.len(), 2);
    }
}
