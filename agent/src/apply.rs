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

/// Writes every changed file of the plan, calling `after_each` for each file put in place.
///
/// The batch is atomic per file and durable as a whole, with two filesystem syncs instead of two
/// per file: every new content goes to a temporary file beside its target, one `syncfs` makes
/// them all durable, the renames put them in place, and a second `syncfs` makes the renames
/// durable. A crash leaves each file either old or new, never partial; the restarts the plan
/// needs are in the state already, so the next run finishes the batch.
pub fn apply_files(
    root: &Path,
    plan: &Plan,
    mut after_each: impl FnMut(&str),
) -> Result<usize, FileError> {
    let mut staged: Vec<(PathBuf, PathBuf, &str)> = Vec::new();
    let mut removals: Vec<(PathBuf, &str)> = Vec::new();
    let result = (|| {
        for f in plan.changed_files() {
            let full = host_path(root, &f.path);
            match (f.action, &f.content) {
                (FileAction::Remove, _) => removals.push((full, &f.path)),
                (_, Some(content)) => {
                    let mode = f.mode.bits();
                    let tmp = write_temp(&full, content, mode, false)?;
                    staged.push((tmp, full, &f.path));
                }
                (_, None) => {}
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (tmp, _, _) in &staged {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    if staged.is_empty() && removals.is_empty() {
        return Ok(0);
    }
    sync_fs(root)?;
    let mut n = 0;
    for (tmp, full, path) in &staged {
        fs::rename(tmp, full).map_err(err("renaming into place", full))?;
        n += 1;
        after_each(path);
    }
    for (full, path) in &removals {
        match fs::remove_file(full) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("removing", full)(e)),
        }
        n += 1;
        after_each(path);
    }
    sync_fs(root)?;
    Ok(n)
}

/// syncfs(2) of the filesystem holding `root`.
fn sync_fs(root: &Path) -> Result<(), FileError> {
    use std::os::fd::AsRawFd;
    let f = File::open(root).map_err(err("opening", root))?;
    // SAFETY: syncfs takes a valid open descriptor, which `f` keeps open for the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(err("syncing the filesystem of", root)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Writes `content` to a temporary file beside `path` and returns its name; with `sync`, the
/// file is fsynced before returning.
fn write_temp(path: &Path, content: &[u8], mode: u32, sync: bool) -> Result<PathBuf, FileError> {
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
        if sync {
            f.sync_all().map_err(err("syncing", &tmp))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Replaces `path` with `content` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), FileError> {
    let tmp = write_temp(path, content, mode, true)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(err("renaming into place", path)(e));
    }
    sync_dir(dir)
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
    fn apply_files_creates_updates_removes_and_leaves_no_temp() {
        use crate::config::Role;
        use crate::plan::FilePlan;
        let d = tempfile::tempdir().unwrap();
        write_atomic(&host_path(d.path(), "/etc/a"), b"old", 0o644).unwrap();
        write_atomic(&host_path(d.path(), "/etc/gone"), b"x", 0o644).unwrap();
        let file = |path: &str, action, content: Option<&[u8]>| FilePlan {
            path: path.into(),
            action,
            mode: crate::plan::Mode::new(0o600).unwrap(),
            sha256: None,
            restarts: vec![],
            content: content.map(<[u8]>::to_vec),
        };
        let plan = Plan {
            instance_id: "i-1".into(),
            node: "n".into(),
            role: Role::Minion,
            profile: "p".into(),
            files: vec![
                file("/etc/a", FileAction::Update, Some(b"new")),
                file("/etc/sub/b", FileAction::Create, Some(b"b")),
                file("/etc/gone", FileAction::Remove, None),
                file("/etc/same", FileAction::Unchanged, Some(b"s")),
            ],
            reload: false,
            units: vec![],
        };
        let mut seen = Vec::new();
        let n = apply_files(d.path(), &plan, |p| seen.push(p.to_string())).unwrap();
        assert_eq!(n, 3);
        assert_eq!(seen, ["/etc/a", "/etc/sub/b", "/etc/gone"]);
        assert_eq!(fs::read(d.path().join("etc/a")).unwrap(), b"new");
        assert_eq!(
            fs::metadata(d.path().join("etc/a"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o600
        );
        assert_eq!(fs::read(d.path().join("etc/sub/b")).unwrap(), b"b");
        assert!(!d.path().join("etc/gone").exists());
        assert!(
            !d.path().join("etc/same").exists(),
            "unchanged files are not written"
        );
        let names: Vec<_> = fs::read_dir(d.path().join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".berth-")), "{names:?}");
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
