//! `berth-image inspect`: what berth layered on a commit, compared to its base.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ostree::gio;
use ostree::glib;
use ostree::Repo;

use crate::commit::{keys, open_repo, resolve, CommitError};
use crate::kind::{Classified, Kind};
use crate::overlay::BERTH_ROOTS;
use crate::tree::{self, Change};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Repo(#[from] CommitError),
    #[error("{rev}: no such ref or commit in {repo}")]
    Missing { rev: String, repo: PathBuf },
    #[error("{rev} ({checksum}): not a berth commit (no {key} in its metadata); was it built by `berth-image commit`?")]
    NotBerth {
        rev: String,
        checksum: String,
        key: &'static str,
    },
    #[error("{rev}: reading the repository: {source}")]
    Read { rev: String, source: glib::Error },
}

impl Classified for InspectError {
    fn kind(&self) -> Kind {
        match self {
            InspectError::Repo(e) => e.kind(),
            InspectError::Missing { .. } | InspectError::NotBerth { .. } => Kind::Refused,
            InspectError::Read { .. } => Kind::Failed,
        }
    }
}

/// One layered file or directory as the commit holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayeredEntry {
    pub change: Change,
    /// `rwxr-xr-x`-style permission bits with the file type (`st_mode`), if
    /// the entry still exists in the commit.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub symlink_target: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub checksum: String,
    pub subject: String,
    pub timestamp: u64,
    pub version: Option<String>,
    pub base_commit: String,
    pub base_ref: Option<String>,
    pub base_version: Option<String>,
    pub agent_version: String,
    pub agent_sha256: Option<String>,
    pub profiles: Vec<String>,
    pub units: Vec<String>,
    /// Whether the commit's parent is the recorded base.
    pub parent_is_base: bool,
    /// Changes inside berth's own paths.
    pub layered: Vec<LayeredEntry>,
    /// Changes elsewhere (from `--add-file`, or a tree edited by hand).
    pub other: Vec<LayeredEntry>,
    pub signatures: usize,
}

pub fn inspect(repo_path: &Path, rev: &str) -> Result<Report, InspectError> {
    let repo = open_repo(repo_path)?;
    let read = |source| InspectError::Read {
        rev: rev.into(),
        source,
    };
    let checksum = resolve(&repo, rev)
        .map_err(read)?
        .ok_or_else(|| InspectError::Missing {
            rev: rev.into(),
            repo: repo_path.into(),
        })?;
    let info = tree::read_commit(&repo, &checksum).map_err(read)?;
    let base_commit = tree::meta_str(&info.metadata, keys::BASE_COMMIT).ok_or_else(|| {
        InspectError::NotBerth {
            rev: rev.into(),
            checksum: checksum.clone(),
            key: keys::BASE_COMMIT,
        }
    })?;
    let base = tree::read_commit(&repo, &base_commit).map_err(read)?;
    let mut layered = Vec::new();
    let mut other = Vec::new();
    for change in tree::diff(&repo, &base.root, &info.root).map_err(read)? {
        let entry = describe(&repo, &info.root, change).map_err(read)?;
        let ours = is_berth_path(&entry.change.path);
        if ours {
            layered.push(entry)
        } else {
            other.push(entry)
        }
    }
    let signatures = repo
        .read_commit_detached_metadata(&checksum, gio::Cancellable::NONE)
        .map_err(read)?
        .and_then(|m| tree::meta_value(&m, "ostree.gpgsigs"))
        .map(|v| v.n_children())
        .unwrap_or(0);
    Ok(Report {
        subject: info.subject.clone(),
        timestamp: info.timestamp,
        version: tree::meta_str(&info.metadata, keys::VERSION),
        base_ref: tree::meta_str(&info.metadata, keys::BASE_REF),
        base_version: tree::meta_str(&info.metadata, keys::BASE_VERSION),
        agent_version: tree::meta_str(&info.metadata, keys::AGENT_VERSION)
            .unwrap_or_else(|| "unknown".into()),
        agent_sha256: tree::meta_str(&info.metadata, keys::AGENT_SHA256),
        profiles: tree::meta_strv(&info.metadata, keys::PROFILES),
        units: tree::meta_strv(&info.metadata, keys::UNITS),
        parent_is_base: info.parent.as_deref() == Some(base_commit.as_str()),
        base_commit,
        checksum,
        layered,
        other,
        signatures,
    })
}

/// A path berth writes, or a directory berth had to create to hold one.
fn is_berth_path(path: &str) -> bool {
    BERTH_ROOTS.iter().any(|r| {
        path == *r || path.starts_with(&format!("{r}/")) || r.starts_with(&format!("{path}/"))
    })
}

fn describe(repo: &Repo, root: &tree::Root, change: Change) -> Result<LayeredEntry, glib::Error> {
    let mut e = LayeredEntry {
        change,
        mode: None,
        uid: None,
        gid: None,
        size: None,
        symlink_target: None,
    };
    if e.change.kind == tree::ChangeKind::Removed {
        return Ok(e);
    }
    match tree::lookup(repo, root, &e.change.path)? {
        tree::Entry::File(csum) => {
            let (_, info, _) = repo.load_file(&csum, gio::Cancellable::NONE)?;
            e.mode = Some(info.attribute_uint32("unix::mode"));
            e.uid = Some(info.attribute_uint32("unix::uid"));
            e.gid = Some(info.attribute_uint32("unix::gid"));
            e.size = Some(info.size() as u64);
            e.symlink_target = info
                .symlink_target()
                .map(|p| p.to_string_lossy().into_owned());
        }
        tree::Entry::Dir(r) => {
            let v = repo.load_variant(ostree::ObjectType::DirMeta, &r.meta)?;
            // dirmeta is (uuua(ayay)), big-endian on disk.
            let get = |i| u32::from_be(v.child_value(i).get::<u32>().unwrap_or_default());
            e.uid = Some(get(0));
            e.gid = Some(get(1));
            e.mode = Some(get(2));
        }
        _ => {}
    }
    Ok(e)
}

fn ls_mode(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        _ => '-',
    };
    let mut s = String::from(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn entry_line(out: &mut String, e: &LayeredEntry) {
    let mode = e.mode.map(ls_mode).unwrap_or_else(|| "-".repeat(10));
    let owner = match (e.uid, e.gid) {
        (Some(u), Some(g)) => format!("{u}:{g}"),
        _ => "-".into(),
    };
    let size = if e.change.is_dir || e.symlink_target.is_some() {
        String::new()
    } else {
        e.size.map(|s| s.to_string()).unwrap_or_default()
    };
    let _ = write!(
        out,
        "  {} {} {:>5} {:>9} {}",
        e.change.kind.letter(),
        mode,
        owner,
        size,
        e.change.path
    );
    if let Some(t) = &e.symlink_target {
        let _ = write!(out, " -> {t}");
    }
    out.push('\n');
}

impl Report {
    /// The text `berth-image inspect` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "commit    {}", self.checksum);
        if let Some(v) = &self.version {
            let _ = writeln!(out, "version   {v}");
        }
        let _ = writeln!(out, "subject   {}", self.subject);
        let _ = writeln!(out, "timestamp {}", self.timestamp);
        let mut base = self.base_commit.clone();
        if let Some(r) = &self.base_ref {
            base.push_str(&format!(" (ref {r})"));
        }
        if let Some(v) = &self.base_version {
            base.push_str(&format!(" version {v}"));
        }
        if !self.parent_is_base {
            base.push_str(" [WARNING: not the commit's parent]");
        }
        let _ = writeln!(out, "base      {base}");
        let agent = match &self.agent_sha256 {
            Some(s) => format!("berth-agent {} (sha256 {s})", self.agent_version),
            None => format!("berth-agent {}", self.agent_version),
        };
        let _ = writeln!(out, "agent     {agent}");
        let _ = writeln!(out, "units     {}", self.units.join(" "));
        let profiles = if self.profiles.is_empty() {
            "(none)".to_string()
        } else {
            self.profiles.join(" ")
        };
        let _ = writeln!(out, "profiles  {profiles}");
        let _ = writeln!(
            out,
            "signed    {}",
            if self.signatures == 0 {
                "no".to_string()
            } else {
                format!("{} GPG signature(s)", self.signatures)
            }
        );
        let _ = writeln!(
            out,
            "layered by berth ({} changes against the base):",
            self.layered.len()
        );
        for e in &self.layered {
            entry_line(&mut out, e);
        }
        if !self.other.is_empty() {
            let _ = writeln!(
                out,
                "other changes against the base ({}):",
                self.other.len()
            );
            for e in &self.other {
                entry_line(&mut out, e);
            }
        }
        out
    }
}
