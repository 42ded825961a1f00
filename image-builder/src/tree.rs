//! Read-only views of committed trees: path lookup and a diff that skips
//! every subtree whose dirtree checksum is unchanged, so both cost what the
//! overlay costs, not what the base costs.

use ostree::glib::{self, Variant};
use ostree::{ObjectType, Repo};

/// A commit's root: (dirtree contents checksum, dirmeta checksum).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub contents: String,
    pub meta: String,
}

/// The parts of a commit object berth reads.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub metadata: Variant,
    pub parent: Option<String>,
    pub subject: String,
    pub timestamp: u64,
    pub root: Root,
}

pub(crate) fn read_commit(repo: &Repo, checksum: &str) -> Result<CommitInfo, glib::Error> {
    let v = repo.load_variant(ObjectType::Commit, checksum)?;
    Ok(CommitInfo {
        metadata: v.child_value(0),
        parent: ostree::commit_get_parent(&v).map(|s| s.to_string()),
        subject: v.child_value(3).str().unwrap_or_default().to_owned(),
        timestamp: ostree::commit_get_timestamp(&v),
        root: Root {
            contents: ostree::checksum_from_bytes_v(&v.child_value(6)).to_string(),
            meta: ostree::checksum_from_bytes_v(&v.child_value(7)).to_string(),
        },
    })
}

/// Looks up `key` in an `a{sv}` dictionary.
pub(crate) fn meta_value(metadata: &Variant, key: &str) -> Option<Variant> {
    metadata.iter().find_map(|entry| {
        (entry.child_value(0).str() == Some(key)).then(|| {
            let v = entry.child_value(1);
            v.as_variant().unwrap_or(v)
        })
    })
}

/// Looks up a string (`s`) or string-array (`as`) metadata key.
pub(crate) fn meta_str(metadata: &Variant, key: &str) -> Option<String> {
    meta_value(metadata, key).and_then(|v| v.str().map(str::to_owned))
}

pub(crate) fn meta_strv(metadata: &Variant, key: &str) -> Vec<String> {
    meta_value(metadata, key)
        .and_then(|v| v.get::<Vec<String>>())
        .unwrap_or_default()
}

#[derive(Debug, Default)]
struct DirTree {
    /// (name, content checksum), sorted by name as OSTree stores them.
    files: Vec<(String, String)>,
    /// (name, Root)
    dirs: Vec<(String, Root)>,
}

fn load_dirtree(repo: &Repo, contents: &str) -> Result<DirTree, glib::Error> {
    let v = repo.load_variant(ObjectType::DirTree, contents)?;
    let mut t = DirTree::default();
    for f in v.child_value(0).iter() {
        let name = f.child_value(0).str().unwrap_or_default().to_owned();
        t.files.push((
            name,
            ostree::checksum_from_bytes_v(&f.child_value(1)).to_string(),
        ));
    }
    for d in v.child_value(1).iter() {
        let name = d.child_value(0).str().unwrap_or_default().to_owned();
        t.dirs.push((
            name,
            Root {
                contents: ostree::checksum_from_bytes_v(&d.child_value(1)).to_string(),
                meta: ostree::checksum_from_bytes_v(&d.child_value(2)).to_string(),
            },
        ));
    }
    Ok(t)
}

/// Finds `name` in a dirtree list; OSTree keeps them sorted by byte order
/// (it refuses to load a dirtree that is not), so this is a binary search.
fn find<'a, T>(entries: &'a [(String, T)], name: &str) -> Option<&'a T> {
    entries
        .binary_search_by(|(n, _)| n.as_str().cmp(name))
        .ok()
        .map(|i| &entries[i].1)
}

/// What a path is in a committed tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Missing,
    /// A regular file or symlink, by content checksum.
    File(String),
    Dir(Root),
    /// A parent component (`prefix`) is a file or symlink, so the path cannot
    /// exist as a directory entry: writing it would need to follow a link.
    UnderFile {
        prefix: String,
    },
}

/// Finds `path` (absolute, normalised) under `root`.
pub(crate) fn lookup(repo: &Repo, root: &Root, path: &str) -> Result<Entry, glib::Error> {
    let comps: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|c| !c.is_empty())
        .collect();
    let mut dir = root.clone();
    for (i, name) in comps.iter().enumerate() {
        let t = load_dirtree(repo, &dir.contents)?;
        let last = i + 1 == comps.len();
        if let Some(c) = find(&t.files, name) {
            return Ok(if last {
                Entry::File(c.clone())
            } else {
                Entry::UnderFile {
                    prefix: format!("/{}", comps[..=i].join("/")),
                }
            });
        }
        match find(&t.dirs, name) {
            Some(r) => dir = r.clone(),
            None => return Ok(Entry::Missing),
        }
    }
    Ok(Entry::Dir(dir))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
}

impl ChangeKind {
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Removed => 'D',
            ChangeKind::Modified => 'M',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: String,
    pub is_dir: bool,
}

/// Every file and directory that differs between `a` and `b`, sorted by path.
/// A directory whose only change is its content is not listed; one whose
/// metadata (owner, mode, xattrs) changed is listed as modified.
pub fn diff(repo: &Repo, a: &Root, b: &Root) -> Result<Vec<Change>, glib::Error> {
    let mut out = Vec::new();
    diff_into(repo, "", a, b, &mut out)?;
    out.sort_by(|x, y| x.path.cmp(&y.path));
    Ok(out)
}

fn diff_into(
    repo: &Repo,
    prefix: &str,
    a: &Root,
    b: &Root,
    out: &mut Vec<Change>,
) -> Result<(), glib::Error> {
    if a.meta != b.meta {
        out.push(Change {
            kind: ChangeKind::Modified,
            path: dir_path(prefix),
            is_dir: true,
        });
    }
    if a.contents == b.contents {
        return Ok(());
    }
    let ta = load_dirtree(repo, &a.contents)?;
    let tb = load_dirtree(repo, &b.contents)?;
    for (name, ca) in &ta.files {
        let path = format!("{prefix}/{name}");
        match find(&tb.files, name) {
            Some(cb) if cb == ca => {}
            Some(_) => out.push(Change {
                kind: ChangeKind::Modified,
                path,
                is_dir: false,
            }),
            None => out.push(Change {
                kind: ChangeKind::Removed,
                path,
                is_dir: false,
            }),
        }
    }
    for (name, _) in &tb.files {
        if find(&ta.files, name).is_none() {
            out.push(Change {
                kind: ChangeKind::Added,
                path: format!("{prefix}/{name}"),
                is_dir: false,
            });
        }
    }
    for (name, ra) in &ta.dirs {
        let path = format!("{prefix}/{name}");
        match find(&tb.dirs, name) {
            Some(rb) => diff_into(repo, &path, ra, rb, out)?,
            None => walk_all(repo, &path, ra, ChangeKind::Removed, out)?,
        }
    }
    for (name, rb) in &tb.dirs {
        if find(&ta.dirs, name).is_none() {
            walk_all(
                repo,
                &format!("{prefix}/{name}"),
                rb,
                ChangeKind::Added,
                out,
            )?;
        }
    }
    Ok(())
}

fn dir_path(prefix: &str) -> String {
    if prefix.is_empty() {
        "/".into()
    } else {
        prefix.into()
    }
}

fn walk_all(
    repo: &Repo,
    path: &str,
    r: &Root,
    kind: ChangeKind,
    out: &mut Vec<Change>,
) -> Result<(), glib::Error> {
    out.push(Change {
        kind,
        path: path.into(),
        is_dir: true,
    });
    let t = load_dirtree(repo, &r.contents)?;
    for (name, _) in &t.files {
        out.push(Change {
            kind,
            path: format!("{path}/{name}"),
            is_dir: false,
        });
    }
    for (name, sub) in &t.dirs {
        walk_all(repo, &format!("{path}/{name}"), sub, kind, out)?;
    }
    Ok(())
}
