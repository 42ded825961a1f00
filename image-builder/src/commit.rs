//! `berth-image commit`: layers an [`Overlay`] onto a base commit in an
//! OSTree repository and moves a ref to the result.
//!
//! The base root is loaded lazily into a `MutableTree`, so only the
//! directories on the overlay's paths are ever read or rewritten; every other
//! subtree keeps its dirtree checksum and costs nothing. All validation
//! happens before the transaction; any error inside it aborts the
//! transaction, so no ref ever moves on failure.

use std::path::{Path, PathBuf};

use ostree::gio::{self, prelude::*};
use ostree::glib::{self, variant::ToVariant, Variant, VariantTy};
use ostree::{MutableTree, ObjectType, Repo};

use crate::inputs::Layer;
use crate::kind::{Classified, Kind};
use crate::overlay::{components, Node, STATE_DIR};
use crate::tree::{self, Entry};

/// Metadata keys berth writes on its commits.
pub mod keys {
    pub(crate) const VERSION: &str = "version";
    pub(crate) const BASE_COMMIT: &str = "berth.base-commit";
    pub const BASE_REF: &str = "berth.base-ref";
    pub(crate) const BASE_VERSION: &str = "berth.base-version";
    pub const AGENT_VERSION: &str = "berth.agent-version";
    pub(crate) const AGENT_SHA256: &str = "berth.agent-sha256";
    pub(crate) const PROFILES: &str = "berth.profiles";
    pub(crate) const UNITS: &str = "berth.units";
    pub(crate) const REF_BINDING: &str = "ostree.ref-binding";
}

/// Base metadata that describes the base commit itself, not the tree: the
/// new commit gets its own values (or none) instead of inheriting them.
const NOT_INHERITED: &[&str] = &[
    keys::VERSION,
    keys::REF_BINDING,
    "ostree.collection-binding",
    "rpmostree.inputhash",
];

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("repo {path}: cannot open it as an OSTree repository: {source}")]
    OpenRepo { path: PathBuf, source: glib::Error },
    #[error(
        "base {base}: no such ref or commit in {repo}; list them with `ostree refs --repo={repo}`"
    )]
    BaseMissing { base: String, repo: PathBuf },
    #[error("base {base}: {source}")]
    BaseRead { base: String, source: glib::Error },
    #[error("base {base}: the commit is partial (not every object is in this repo); pull it completely first")]
    BasePartial { base: String },
    #[error("base {base}: it already contains {path}, baked first-boot state; rebuild the base without it, or every instance would skip its first boot")]
    BaseHasState { base: String, path: String },
    #[error("--ref {name}: not a valid OSTree ref name: {source}")]
    BadRef { name: String, source: glib::Error },
    #[error("{path}: the base has {prefix} as a file or symlink, so {path} cannot be written without following it; choose a path under a real directory")]
    UnderBaseFile { path: String, prefix: String },
    #[error(
        "{path}: the base has a directory there; berth will not replace a directory with a file"
    )]
    ReplacesBaseDir { path: String },
    #[error("base {base}: it has an SELinux policy in /usr/etc/selinux that libostree cannot load ({source}); new files would be unlabelled, so fix the base's policy")]
    SePolicy { base: String, source: glib::Error },
    #[error("gpg: cannot sign commit {checksum} with key {key}: {source}")]
    Sign {
        checksum: String,
        key: String,
        source: glib::Error,
    },
    #[error("SOURCE_DATE_EPOCH={value}: not a number of seconds since 1970")]
    SourceDateEpoch { value: String },
    #[error("writing the commit into {repo}: {source}")]
    Write { repo: PathBuf, source: glib::Error },
}

impl Classified for CommitError {
    fn kind(&self) -> Kind {
        match self {
            CommitError::OpenRepo { .. }
            | CommitError::BaseRead { .. }
            | CommitError::Sign { .. }
            | CommitError::Write { .. } => Kind::Failed,
            CommitError::BaseMissing { .. }
            | CommitError::BasePartial { .. }
            | CommitError::BaseHasState { .. }
            | CommitError::BadRef { .. }
            | CommitError::UnderBaseFile { .. }
            | CommitError::ReplacesBaseDir { .. }
            | CommitError::SePolicy { .. }
            | CommitError::SourceDateEpoch { .. } => Kind::Refused,
        }
    }
}

/// GPG signing: key id and an optional GnuPG home directory.
#[derive(Debug, Clone)]
pub struct GpgSign {
    pub key_id: String,
    pub homedir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub repo: PathBuf,
    pub base: String,
    pub new_ref: String,
    pub version: Option<String>,
    /// Commit timestamp; `None`: the base commit's timestamp, which keeps
    /// the commit reproducible when SOURCE_DATE_EPOCH is unset.
    pub time: Option<u64>,
    pub gpg: Option<GpgSign>,
}

#[derive(Debug, Clone)]
pub struct CommitOutcome {
    pub checksum: String,
    pub base_checksum: String,
    /// Number of overlay entries written.
    pub entries: usize,
}

/// Reads SOURCE_DATE_EPOCH from its value, if set.
pub fn source_date_epoch(value: Option<&str>) -> Result<Option<u64>, CommitError> {
    match value {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| CommitError::SourceDateEpoch { value: v.into() }),
    }
}

pub(crate) fn open_repo(path: &Path) -> Result<Repo, CommitError> {
    let repo = Repo::new_for_path(path);
    repo.open(gio::Cancellable::NONE)
        .map_err(|source| CommitError::OpenRepo {
            path: path.to_owned(),
            source,
        })?;
    Ok(repo)
}

/// Resolves a ref or checksum; `Ok(None)` when it does not exist.
pub fn resolve(repo: &Repo, rev: &str) -> Result<Option<String>, glib::Error> {
    if ostree::validate_checksum_string(rev).is_ok() {
        return Ok(repo
            .load_variant_if_exists(ObjectType::Commit, rev)?
            .map(|_| rev.to_owned()));
    }
    Ok(repo.resolve_rev(rev, true)?.map(|s| s.to_string()))
}

/// Layers `layer` onto the base and moves `req.new_ref` to the new commit, in one libostree
/// transaction that is aborted on any error. Every refusal comes before the first write.
pub fn commit(req: &CommitRequest, layer: &Layer) -> Result<CommitOutcome, CommitError> {
    let repo = open_repo(&req.repo)?;
    ostree::validate_rev(&req.new_ref).map_err(|source| CommitError::BadRef {
        name: req.new_ref.clone(),
        source,
    })?;
    let (base, info) = read_base(&repo, req)?;
    check_overlay(&repo, req, layer, &info)?;

    let time = req.time.unwrap_or(info.timestamp);
    let metadata = build_metadata(req, layer, &base, &info.metadata);
    let subject = format!(
        "berth: layer berth-agent {} onto {}",
        layer.agent_version,
        &base[..12.min(base.len())]
    );
    let labeler =
        Labeler::from_base(&repo, &base, &info.root).map_err(|source| CommitError::SePolicy {
            base: req.base.clone(),
            source,
        })?;

    let write_err = |source| CommitError::Write {
        repo: req.repo.clone(),
        source,
    };
    repo.prepare_transaction(gio::Cancellable::NONE)
        .map_err(write_err)?;
    let result = write_in_transaction(
        &repo,
        req,
        layer,
        &labeler,
        &CommitObject {
            base: &base,
            subject: &subject,
            metadata: &metadata,
            time,
        },
    );
    match result {
        Ok(checksum) => {
            repo.transaction_set_ref(None, &req.new_ref, Some(&checksum));
            repo.commit_transaction(gio::Cancellable::NONE)
                .map_err(write_err)?;
            Ok(CommitOutcome {
                checksum,
                base_checksum: base,
                entries: layer.overlay.len(),
            })
        }
        Err(e) => {
            if let Err(abort) = repo.abort_transaction(gio::Cancellable::NONE) {
                log::error!(
                    "aborting the transaction in {}: {abort}",
                    req.repo.display()
                );
            }
            Err(e)
        }
    }
}

/// Resolves `--base` and reads its commit; refuses a missing or partial one.
fn read_base(repo: &Repo, req: &CommitRequest) -> Result<(String, tree::CommitInfo), CommitError> {
    let base_err = |source| CommitError::BaseRead {
        base: req.base.clone(),
        source,
    };
    let base =
        resolve(repo, &req.base)
            .map_err(base_err)?
            .ok_or_else(|| CommitError::BaseMissing {
                base: req.base.clone(),
                repo: req.repo.clone(),
            })?;
    let (_, state) = repo.load_commit(&base).map_err(base_err)?;
    if state.contains(ostree::RepoCommitState::PARTIAL) {
        return Err(CommitError::BasePartial {
            base: req.base.clone(),
        });
    }
    let info = tree::read_commit(repo, &base).map_err(base_err)?;
    Ok((base, info))
}

/// Refuses a base that holds first-boot state, and an overlay path that would go through a
/// base file or symlink or replace a base directory.
fn check_overlay(
    repo: &Repo,
    req: &CommitRequest,
    layer: &Layer,
    info: &tree::CommitInfo,
) -> Result<(), CommitError> {
    let base_err = |source| CommitError::BaseRead {
        base: req.base.clone(),
        source,
    };
    if tree::lookup(repo, &info.root, STATE_DIR).map_err(base_err)? != Entry::Missing {
        return Err(CommitError::BaseHasState {
            base: req.base.clone(),
            path: STATE_DIR.into(),
        });
    }
    for (path, node) in layer.overlay.iter() {
        match tree::lookup(repo, &info.root, path).map_err(base_err)? {
            Entry::UnderFile { prefix } => {
                return Err(CommitError::UnderBaseFile {
                    path: path.into(),
                    prefix,
                })
            }
            Entry::Dir(_) if *node != Node::Dir => {
                return Err(CommitError::ReplacesBaseDir { path: path.into() })
            }
            Entry::File(_) if *node == Node::Dir => {
                return Err(CommitError::UnderBaseFile {
                    path: path.into(),
                    prefix: path.into(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// The commit object's fields other than its root tree.
struct CommitObject<'a> {
    base: &'a str,
    subject: &'a str,
    metadata: &'a Variant,
    time: u64,
}

fn write_in_transaction(
    repo: &Repo,
    req: &CommitRequest,
    layer: &Layer,
    labeler: &Labeler,
    obj: &CommitObject,
) -> Result<String, CommitError> {
    let CommitObject {
        base,
        subject,
        metadata,
        time,
    } = *obj;
    let write_err = |source| CommitError::Write {
        repo: req.repo.clone(),
        source,
    };
    let mtree = MutableTree::from_commit(repo, base).map_err(write_err)?;
    let mut dirmeta_cache = std::collections::HashMap::new();

    for (path, node) in layer.overlay.iter() {
        write_entry(repo, &mtree, path, node, labeler, &mut dirmeta_cache).map_err(write_err)?;
    }

    let root = repo
        .write_mtree(&mtree, gio::Cancellable::NONE)
        .map_err(write_err)?;
    let root = root
        .downcast::<ostree::RepoFile>()
        .expect("write_mtree returns a RepoFile");
    let body = body_text(layer);
    let checksum = repo
        .write_commit_with_time(
            Some(base),
            Some(subject),
            Some(&body),
            Some(metadata),
            &root,
            time,
            gio::Cancellable::NONE,
        )
        .map_err(write_err)?
        .to_string();
    if let Some(gpg) = &req.gpg {
        sign(repo, &checksum, gpg)?;
    }
    Ok(checksum)
}

/// Writes one overlay entry into `mtree`, creating its parent directories.
fn write_entry(
    repo: &Repo,
    mtree: &MutableTree,
    path: &str,
    node: &Node,
    labeler: &Labeler,
    dirmeta_cache: &mut std::collections::HashMap<Option<Vec<u8>>, String>,
) -> Result<(), glib::Error> {
    let comps = components(path);
    let (leaf, parents) = comps
        .split_last()
        .expect("overlay paths are never the root");
    let mut dir = mtree.clone();
    let mut sofar = String::new();
    for name in parents {
        sofar.push('/');
        sofar.push_str(name);
        dir = ensure_dir(repo, &dir, name, &sofar, labeler, dirmeta_cache)?;
    }
    match node {
        Node::Dir => {
            ensure_dir(repo, &dir, leaf, path, labeler, dirmeta_cache)?;
        }
        Node::File { data, mode } => {
            let full = libc::S_IFREG | mode;
            let xattrs = labeler.xattrs(path, full)?;
            let csum = repo.write_regfile_inline(
                None,
                0,
                0,
                full,
                xattrs.as_ref(),
                data,
                gio::Cancellable::NONE,
            )?;
            dir.replace_file(leaf, &csum)?;
        }
        Node::Symlink { target } => {
            let xattrs = labeler.xattrs(path, libc::S_IFLNK | 0o777)?;
            let csum =
                repo.write_symlink(None, 0, 0, xattrs.as_ref(), target, gio::Cancellable::NONE)?;
            dir.replace_file(leaf, &csum)?;
        }
    }
    Ok(())
}

/// Signs `checksum` with libostree's GPG support.
fn sign(repo: &Repo, checksum: &str, gpg: &GpgSign) -> Result<(), CommitError> {
    let homedir = gpg
        .homedir
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    repo.sign_commit(
        checksum,
        &gpg.key_id,
        homedir.as_deref(),
        gio::Cancellable::NONE,
    )
    .map_err(|source| CommitError::Sign {
        checksum: checksum.to_string(),
        key: gpg.key_id.clone(),
        source,
    })
}

/// Returns the subdirectory `name` of `dir`, creating it root:root 0755
/// (labelled per the base's SELinux policy, if it has one) when absent.
fn ensure_dir(
    repo: &Repo,
    dir: &MutableTree,
    name: &str,
    path: &str,
    labeler: &Labeler,
    cache: &mut std::collections::HashMap<Option<Vec<u8>>, String>,
) -> Result<MutableTree, glib::Error> {
    match dir.lookup(name) {
        Ok((_, Some(sub))) => return Ok(sub),
        Ok((Some(_), None)) => {
            // Validation refuses this before the transaction.
            return Err(glib::Error::new(
                gio::IOErrorEnum::NotDirectory,
                &format!("{path} is a file in the base"),
            ));
        }
        _ => {}
    }
    let mode = libc::S_IFDIR | 0o755;
    let xattrs = labeler.xattrs(path, mode)?;
    let key = xattrs.as_ref().map(|v| v.data().to_vec());
    let meta = match cache.get(&key) {
        Some(c) => c.clone(),
        None => {
            let info = gio::FileInfo::new();
            info.set_attribute_uint32("unix::uid", 0);
            info.set_attribute_uint32("unix::gid", 0);
            info.set_attribute_uint32("unix::mode", mode);
            let v = ostree::create_directory_metadata(&info, xattrs.as_ref());
            let c = repo.write_metadata(ObjectType::DirMeta, None, &v, gio::Cancellable::NONE)?;
            let c = c.to_hex();
            cache.insert(key, c.clone());
            c
        }
    };
    let sub = dir.ensure_dir(name)?;
    sub.set_metadata_checksum(&meta);
    Ok(sub)
}

/// Labels new objects the way the base's own SELinux policy would, so a
/// host in enforcing mode can run the agent; a base without a policy gets no
/// xattrs on new objects.
struct Labeler {
    policy: Option<ostree::SePolicy>,
}

/// Where an OSTree OS keeps its SELinux configuration in a commit.
const SELINUX_CONFIG: &str = "/usr/etc/selinux/config";

impl Labeler {
    fn none() -> Self {
        Labeler { policy: None }
    }

    /// Loads the base's policy when it has one. A base that has a policy we
    /// cannot load is an error: its new files would be unlabelled, and an
    /// enforcing host could not run the agent.
    fn from_base(repo: &Repo, base: &str, root: &tree::Root) -> Result<Self, glib::Error> {
        if tree::lookup(repo, root, SELINUX_CONFIG)? == Entry::Missing {
            log::info!("base has no {SELINUX_CONFIG}: new files get no SELinux labels");
            return Ok(Self::none());
        }
        let policy = ostree::SePolicy::from_commit(repo, base, gio::Cancellable::NONE)?;
        match policy.name() {
            Some(name) if !name.is_empty() => {
                log::info!("labelling new files with the base's SELinux policy {name}");
                Ok(Labeler {
                    policy: Some(policy),
                })
            }
            _ => {
                log::info!(
                    "base's {SELINUX_CONFIG} names no policy: new files get no SELinux labels"
                );
                Ok(Self::none())
            }
        }
    }

    fn xattrs(&self, path: &str, mode: u32) -> Result<Option<Variant>, glib::Error> {
        let Some(policy) = &self.policy else {
            return Ok(None);
        };
        // /usr/etc is deployed as /etc: label it as what the host will see.
        let as_deployed = match path.strip_prefix("/usr/etc") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/etc{rest}"),
            _ => path.to_owned(),
        };
        let Some(label) = policy.label(&as_deployed, mode, gio::Cancellable::NONE)? else {
            return Ok(None);
        };
        let mut value = label.as_bytes().to_vec();
        value.push(0);
        let name = b"security.selinux\0".to_vec();
        Ok(Some(vec![(name, value)].to_variant()))
    }
}

fn body_text(layer: &Layer) -> String {
    let mut body = format!(
        "berth-agent {} (sha256 {})\n",
        layer.agent_version, layer.agent_sha256
    );
    for u in &layer.units {
        body.push_str(&format!(
            "unit {}{}\n",
            u.name,
            if u.enabled { " (enabled)" } else { "" }
        ));
    }
    for p in &layer.profiles {
        body.push_str(&format!("profile {p}\n"));
    }
    body
}

/// The new commit's `a{sv}`: the base's tree-describing keys plus berth's,
/// sorted by key so the same inputs give the same bytes.
fn build_metadata(req: &CommitRequest, layer: &Layer, base: &str, base_meta: &Variant) -> Variant {
    let mut entries: std::collections::BTreeMap<String, Variant> =
        std::collections::BTreeMap::new();
    for item in base_meta.iter() {
        let key = item.child_value(0).str().unwrap_or_default().to_owned();
        if NOT_INHERITED.contains(&key.as_str()) || key.starts_with("berth.") {
            continue;
        }
        let value = item
            .child_value(1)
            .as_variant()
            .unwrap_or_else(|| item.child_value(1));
        entries.insert(key, value);
    }
    if let Some(v) = &req.version {
        entries.insert(keys::VERSION.into(), v.to_variant());
    }
    entries.insert(keys::BASE_COMMIT.into(), base.to_variant());
    if req.base != base {
        entries.insert(keys::BASE_REF.into(), req.base.to_variant());
    }
    if let Some(v) = tree::meta_str(base_meta, keys::VERSION) {
        entries.insert(keys::BASE_VERSION.into(), v.to_variant());
    }
    entries.insert(keys::AGENT_VERSION.into(), layer.agent_version.to_variant());
    entries.insert(keys::AGENT_SHA256.into(), layer.agent_sha256.to_variant());
    entries.insert(keys::PROFILES.into(), layer.profiles.to_variant());
    let units: Vec<String> = layer.units.iter().map(|u| u.name.clone()).collect();
    entries.insert(keys::UNITS.into(), units.to_variant());
    entries.insert(
        keys::REF_BINDING.into(),
        vec![req.new_ref.clone()].to_variant(),
    );
    Variant::array_from_iter_with_type(
        VariantTy::new("{sv}").expect("valid type"),
        entries
            .iter()
            .map(|(k, v)| Variant::from_dict_entry(&k.to_variant(), &Variant::from_variant(v))),
    )
}
