//! Applying a plan's files to the host: atomic replacement, only when content or mode differ.
//!
//! A file is never half-written: the new content goes to a temporary file in the same directory,
//! is fsynced, renamed over the old one, and the directory is fsynced, so that a crash or power
//! loss leaves either the old file or the new one. Every host path is prefixed with `--root`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::plan::{FileAction, HostFile, HostFiles, Plan};

#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// `root` joined with an absolute host path.
pub fn host_path(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Reads the files a plan depends on. A missing file is simply absent from the map.
pub fn read_host_files(root: &Path, paths: &[String]) -> Result<HostFiles, FileError> {
    let mut files = HostFiles::new();
    for p in paths {
        let full = host_path(root, p);
        match fs::read(&full) {
            Ok(content) => {
                let mode = fs::metadata(&full)
                    .map_err(err("reading", &full))?
                    .permissions()
                    .mode()
                    & 0o7777;
                files.insert(p.clone(), HostFile { content, mode });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("reading", &full)(e)),
        }
    }
    Ok(files)
}

/// Writes every changed file of the plan, in order, calling `after_each` after each one (the
/// run loop uses it for crash-point tests and progress).
pub fn apply_files(
    root: &Path,
    plan: &Plan,
    mut after_each: impl FnMut(&str),
) -> Result<usize, FileError> {
    let mut n = 0;
    for f in plan.changed_files() {
        let full = host_path(root, &f.path);
        match (f.action, &f.content) {
            (FileAction::Remove, _) => remove_atomic(&full)?,
            (_, Some(content)) => {
                let mode = u32::from_str_radix(&f.mode, 8).unwrap_or(0o644);
                write_atomic(&full, content, mode)?;
            }
            (_, None) => continue,
        }
        n += 1;
        after_each(&f.path);
    }
    Ok(n)
}

/// Replaces `path` with `content` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), FileError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(err("creating directory", dir))?;
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.berth-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err("creating", &tmp))?;
        // The umask may have narrowed the mode given to open(2).
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err("setting the mode of", &tmp))?;
        f.write_all(content).map_err(err("writing", &tmp))?;
        f.sync_all().map_err(err("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(err("renaming into place", path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn remove_atomic(path: &Path) -> Result<(), FileError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err("removing", path)(e)),
    }
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("syncing directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_sets_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("etc/kubernetes/config");
        write_atomic(&p, b"one\n", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        write_atomic(&p, b"two\n", 0o644).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config"]);
    }

    #[test]
    fn read_host_files_skips_missing() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(&host_path(d.path(), "/etc/hosts"), b"x", 0o644).unwrap();
        let f = read_host_files(d.path(), &["/etc/hosts".into(), "/etc/nope".into()]).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f["/etc/hosts"].mode, 0o644);
    }
}
