//! Deploying a commit into a fresh OSTree sysroot through libostree: what `ostree admin
//! init-fs`, `os-init`, `pull-local` and `deploy` do, in-process.

use std::path::{Path, PathBuf};

use crate::kind::{Classified, Kind};
use ostree::gio;
use ostree::glib::{self, variant::ToVariant};
use ostree::{Sysroot, SysrootSimpleWriteDeploymentFlags};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("sysroot {path}: {step}: {source}")]
    Sysroot {
        path: PathBuf,
        step: &'static str,
        source: glib::Error,
    },
    #[error("pulling {rev} from {repo} into the sysroot: {source}")]
    Pull {
        repo: PathBuf,
        rev: String,
        source: glib::Error,
    },
    #[error("{rev}: no such ref or commit in {repo}; list them with `ostree refs --repo={repo}`")]
    NoSuchRev { repo: PathBuf, rev: String },
    #[error("deploying {rev}: {source}")]
    Deploy { rev: String, source: glib::Error },
    #[error("deploying {rev}: libostree wrote no boot entry (does the commit have a kernel in /usr/lib/modules/KVER/vmlinuz?)")]
    NoBootEntry { rev: String },
    #[error("sysroot {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Classified for DeployError {
    fn kind(&self) -> Kind {
        match self {
            DeployError::NoSuchRev { .. } => Kind::Refused,
            DeployError::Sysroot { .. }
            | DeployError::Pull { .. }
            | DeployError::Deploy { .. }
            | DeployError::NoBootEntry { .. }
            | DeployError::Io { .. } => Kind::Failed,
        }
    }
}

/// A deployed sysroot.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub commit: String,
    /// The deployment's root, relative to the sysroot (`ostree/deploy/OS/deploy/CSUM.0`).
    pub deploy_dir: String,
    /// The Boot Loader Specification entry libostree wrote: paths relative to `/boot`.
    pub linux: String,
    pub initrd: String,
    pub options: String,
    /// The entry's file name under `/boot/loader/entries`.
    pub entry_file: String,
}

/// Directories `ostree admin init-fs` creates at the top of a physical root: the mount points
/// the initramfs and systemd expect before switching into the deployment.
const TOP_DIRS: &[(&str, u32)] = &[
    ("boot", 0o755),
    ("dev", 0o755),
    ("home", 0o755),
    ("proc", 0o755),
    ("run", 0o755),
    ("sys", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
];

/// Resolves `rev` (a ref or a checksum) in `repo` to a commit checksum.
pub fn resolve(repo: &Path, rev: &str) -> Result<String, DeployError> {
    let pull_err = |source| DeployError::Pull {
        repo: repo.to_path_buf(),
        rev: rev.to_string(),
        source,
    };
    let src = ostree::Repo::new_for_path(repo);
    src.open(gio::Cancellable::NONE).map_err(pull_err)?;
    match src.resolve_rev(rev, true) {
        Ok(Some(c)) => Ok(c.to_string()),
        Ok(None) => Err(DeployError::NoSuchRev {
            repo: repo.to_path_buf(),
            rev: rev.to_string(),
        }),
        Err(source) => Err(pull_err(source)),
    }
}

/// Deploys `commit` (what `rev` resolved to in `repo`) as the only deployment of stateroot
/// `osname` under `sysroot_dir` (an empty directory), with `kargs` as its kernel command line.
/// When `rev` is a ref, the sysroot's repo gets that ref and the deployment's origin follows it.
pub fn deploy(
    sysroot_dir: &Path,
    repo: &Path,
    rev: &str,
    commit: &str,
    osname: &str,
    kargs: &[String],
) -> Result<Deployed, DeployError> {
    let sysroot = init(sysroot_dir, osname)?;
    let commit = commit.to_string();
    let is_ref = commit != rev;

    pull_local(
        &sysroot,
        repo,
        rev,
        if is_ref { rev } else { commit.as_str() },
    )?;

    let origin = sysroot.origin_new_from_refspec(if is_ref { rev } else { &commit });
    let kargs: Vec<&str> = kargs.iter().map(String::as_str).collect();
    let deploy_err = |source| DeployError::Deploy {
        rev: rev.to_string(),
        source,
    };
    let dep = sysroot
        .deploy_tree(
            Some(osname),
            &commit,
            Some(&origin),
            None,
            &kargs,
            gio::Cancellable::NONE,
        )
        .map_err(deploy_err)?;
    sysroot
        .simple_write_deployment(
            Some(osname),
            &dep,
            None,
            SysrootSimpleWriteDeploymentFlags::NONE,
            gio::Cancellable::NONE,
        )
        .map_err(deploy_err)?;

    let deploy_dir = sysroot.deployment_dirpath(&dep).to_string();
    let no_entry = || DeployError::NoBootEntry {
        rev: rev.to_string(),
    };
    let bc = dep.bootconfig().ok_or_else(no_entry)?;
    let get = |k: &str| bc.get(k).map(|v| v.to_string());
    let linux = get("linux").ok_or_else(no_entry)?;
    let initrd = get("initrd").unwrap_or_default();
    let options = get("options").unwrap_or_default();
    let entry_file = find_entry(&sysroot_dir.join("boot/loader/entries"))?.ok_or_else(no_entry)?;
    Ok(Deployed {
        commit,
        deploy_dir,
        linux,
        initrd,
        options,
        entry_file,
    })
}

/// `ostree admin init-fs` and `os-init`: the top directories, the sysroot's repository and the
/// stateroot `osname`.
fn init(sysroot_dir: &Path, osname: &str) -> Result<Sysroot, DeployError> {
    use std::os::unix::fs::PermissionsExt;
    let sys_err = |step: &'static str| {
        let path = sysroot_dir.to_path_buf();
        move |source| DeployError::Sysroot {
            path: path.clone(),
            step,
            source,
        }
    };
    for (d, mode) in TOP_DIRS {
        let p = sysroot_dir.join(d);
        std::fs::create_dir_all(&p)
            .and_then(|()| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)))
            .map_err(|source| DeployError::Io { path: p, source })?;
    }
    let sysroot = Sysroot::new(Some(&gio::File::for_path(sysroot_dir)));
    sysroot
        .ensure_initialized(gio::Cancellable::NONE)
        .map_err(sys_err("init-fs"))?;
    sysroot
        .load(gio::Cancellable::NONE)
        .map_err(sys_err("load"))?;
    sysroot
        .init_osname(osname, gio::Cancellable::NONE)
        .map_err(sys_err("os-init"))?;
    Ok(sysroot)
}

/// `ostree pull-local`: `refspec` (the ref, or the commit) from `repo` into the sysroot's
/// repository.
fn pull_local(sysroot: &Sysroot, repo: &Path, rev: &str, refspec: &str) -> Result<(), DeployError> {
    // A file:// URL makes libostree import objects directly from the repo.
    let dest = sysroot.repo();
    // The sysroot is a scratch tree that becomes a file system image; syncing each of its
    // tens of thousands of objects would only wait on the build machine's disk (the image file
    // itself is synced once, at the end).
    dest.set_disable_fsync(true);
    let url = format!("file://{}", absolute(repo).display());
    let refs: Vec<&str> = vec![refspec];
    let opts = glib::VariantDict::new(None);
    opts.insert_value("refs", &refs.to_variant());
    opts.insert_value(
        "flags",
        &(ostree::RepoPullFlags::NONE.bits() as i32).to_variant(),
    );
    opts.insert_value("gpg-verify", &false.to_variant());
    opts.insert_value("gpg-verify-summary", &false.to_variant());
    dest.pull_with_options(&url, &opts.end(), None, gio::Cancellable::NONE)
        .map_err(|source| DeployError::Pull {
            repo: repo.to_path_buf(),
            rev: rev.to_string(),
            source,
        })
}

fn find_entry(dir: &Path) -> Result<Option<String>, DeployError> {
    let rd = std::fs::read_dir(dir).map_err(|source| DeployError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    names.sort();
    Ok(names.pop())
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
