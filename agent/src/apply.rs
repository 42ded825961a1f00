//! Applying a plan's files to the host: atomic replacement, only when content or mode differ.
//!
//! A plan's files are written as one batch ([`apply_files`]): every new content goes to a
//! temporary file in its target's directory, one `syncfs(2)` makes all of them durable, each is
//! renamed over its target (and files the plan drops are removed), and a second `syncfs(2)` makes
//! the renames and removals durable. A crash or power loss leaves each file either old or new.
//! The one exception is a target that rename cannot replace (EBUSY for a mount point such as a
//! bind-mounted `/etc/hosts`, EXDEV): it is rewritten in place (open, truncate, write, fsync of
//! the file), which keeps the mount but may leave it partial until the next run rewrites it.
//!
//! The state files are written one at a time by [`write_atomic`]: temporary file, fsync of it,
//! rename (or the same in-place rewrite), fsync of the directory. Every host path is prefixed
//! with `--root`.

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

/// Writes every changed file of the plan, calling `after_each` with the file's host path right
/// after its rename (or removal) and before the next one: the run counts its crash points there
/// (`BERTH_CRASH_AT`, see `run::StepHook`). Returns how many files were put in place or removed.
///
/// The batch is atomic per file and durable as a whole, with two filesystem syncs instead of two
/// per file: every new content goes to a temporary file beside its target, one `syncfs` makes
/// them all durable, the renames put them in place, the files the plan drops are removed, and a
/// second `syncfs` makes the renames and removals durable. A crash leaves each renamed file either old or new, never partial (a
/// file rewritten in place, see `put_in_place`, is fsynced on its own and may be partial); the
/// restarts the plan needs are in the state already, so the next run finishes the batch.
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
    if let Err(e) = sync_fs(root) {
        remove_temps(staged.iter().map(|(tmp, _, _)| tmp));
        return Err(e);
    }
    let mut n = 0;
    for (i, (tmp, full, path)) in staged.iter().enumerate() {
        if let Err(e) = put_in_place(tmp, full) {
            // The batch stops here; none of its temporary files may outlive it.
            remove_temps(staged[i..].iter().map(|(tmp, _, _)| tmp));
            return Err(e);
        }
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

fn remove_temps<'a>(temps: impl Iterator<Item = &'a PathBuf>) {
    for tmp in temps {
        let _ = fs::remove_file(tmp);
    }
}

/// Renames `tmp` over `full`; when `full` cannot be replaced by a rename, rewrites it in place.
///
/// rename(2) fails with EBUSY when the target is a mount point (`/etc/hosts` bind-mounted into a
/// container, or by `ip netns exec`) and with EXDEV when it is on another filesystem than its
/// directory. The file can then only be rewritten in place: open, truncate, write, fsync. That
/// gives up atomicity for this one file (a reader may see it empty or partial for the length of
/// one write, and a crash in between leaves it partial until the next run, which finds it
/// differing and rewrites it), which is the price of a file someone else mounted there; it keeps
/// the mount and its inode. The temporary file is removed either way.
fn put_in_place(tmp: &Path, full: &Path) -> Result<(), FileError> {
    let e = match fs::rename(tmp, full) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let result = match e.raw_os_error() {
        Some(libc::EBUSY) | Some(libc::EXDEV) => {
            log::info!(
                "{} cannot be replaced by a rename ({e}); rewriting it in place",
                full.display()
            );
            rewrite_in_place(tmp, full)
        }
        _ => Err(err("renaming into place", full)(e)),
    };
    let _ = fs::remove_file(tmp);
    result
}

fn rewrite_in_place(tmp: &Path, full: &Path) -> Result<(), FileError> {
    let content = fs::read(tmp).map_err(err("reading", tmp))?;
    let mode = fs::metadata(tmp)
        .map_err(err("reading", tmp))?
        .permissions()
        .mode();
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(full)
        .map_err(err("opening for an in-place rewrite", full))?;
    f.write_all(&content)
        .map_err(err("rewriting in place", full))?;
    f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .map_err(err("setting the mode of", full))?;
    f.sync_all().map_err(err("syncing", full))
}

/// The marker of berth's temporary files: `.NAME.berth-PID` beside the file `NAME`.
const TEMP_MARK: &str = ".berth-";

/// Removes berth's temporary files left in `dirs` by a run that was killed (SIGKILL, power loss)
/// between writing and renaming them. Only names of the form `.NAME.berth-PID` are touched, and
/// only when PID is not a running berth-agent (another run may be staging its own); returns how
/// many were removed. Errors are logged, never fatal: a leftover temporary file harms nothing.
pub fn remove_stale_temps<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> usize {
    let mut removed = 0;
    let mut seen = std::collections::BTreeSet::new();
    for dir in dirs {
        if !seen.insert(dir.to_path_buf()) {
            continue;
        }
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(pid) = temp_pid(name) else { continue };
            if pid != std::process::id() && berth_running(pid) {
                continue;
            }
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            match fs::remove_file(e.path()) {
                Ok(()) => {
                    log::info!("removed {}, left by an interrupted run", e.path().display());
                    removed += 1;
                }
                Err(err) => log::warn!("removing {}: {err}", e.path().display()),
            }
        }
    }
    removed
}

/// The PID of a name `.NAME.berth-PID`.
fn temp_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let at = rest.rfind(TEMP_MARK)?;
    if at == 0 {
        return None;
    }
    let pid = &rest[at + TEMP_MARK.len()..];
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether `pid` is a running berth-agent (its `comm`, as `ps` shows it).
fn berth_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "berth-agent")
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
    let tmp = dir.join(format!(".{name}{TEMP_MARK}{}", std::process::id()));
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
/// [`write_atomic`] when `path`'s content or mode differs from `content` and `mode`; true when
/// it wrote.
pub fn write_if_changed(path: &Path, content: &[u8], mode: u32) -> Result<bool, FileError> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o7777 == mode
            && std::fs::read(path).is_ok_and(|now| now == content)
        {
            return Ok(false);
        }
    }
    write_atomic(path, content, mode)?;
    Ok(true)
}

pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<(), FileError> {
    write_atomic_owned(path, content, mode, None)
}

/// As [`write_atomic`], the file owned by `owner` (uid, gid) before it is renamed into place:
/// a key file is never readable by anyone but its reader, not even for a moment.
pub fn write_atomic_owned(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), FileError> {
    let tmp = write_temp(path, content, mode, true)?;
    if let Some((uid, gid)) = owner {
        if let Err(e) = std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)) {
            let _ = fs::remove_file(&tmp);
            return Err(err("changing the owner of", &tmp)(e));
        }
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    put_in_place(&tmp, path)?;
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

    /// The callback is the crash point of each file: when it runs for a file, that file and the
    /// ones before it are in place and the ones after it are not yet.
    #[test]
    fn after_each_runs_between_two_renames() {
        use crate::config::Role;
        use crate::plan::FilePlan;
        let d = tempfile::tempdir().unwrap();
        for name in ["a", "b", "c"] {
            write_atomic(&d.path().join("etc").join(name), b"old", 0o644).unwrap();
        }
        let file = |path: &str| FilePlan {
            path: path.into(),
            action: FileAction::Update,
            mode: crate::plan::Mode::new(0o644).unwrap(),
            sha256: None,
            restarts: vec![],
            content: Some(b"new".to_vec()),
        };
        let plan = Plan {
            instance_id: "i-1".into(),
            node: "n".into(),
            role: Role::Minion,
            profile: "p".into(),
            files: vec![file("/etc/a"), file("/etc/b"), file("/etc/c")],
            reload: false,
            units: vec![],
        };
        let mut seen = Vec::new();
        apply_files(d.path(), &plan, |p| {
            let now: Vec<Vec<u8>> = ["a", "b", "c"]
                .iter()
                .map(|n| fs::read(d.path().join("etc").join(n)).unwrap())
                .collect();
            seen.push((p.to_string(), now));
        })
        .unwrap();
        let (new, old) = (b"new".to_vec(), b"old".to_vec());
        assert_eq!(
            seen,
            [
                (
                    "/etc/a".to_string(),
                    vec![new.clone(), old.clone(), old.clone()]
                ),
                (
                    "/etc/b".to_string(),
                    vec![new.clone(), new.clone(), old.clone()]
                ),
                ("/etc/c".to_string(), vec![new.clone(), new.clone(), new]),
            ]
        );
    }

    #[test]
    fn a_failed_batch_leaves_no_temporary_file() {
        use crate::config::Role;
        use crate::plan::FilePlan;
        let d = tempfile::tempdir().unwrap();
        // The second target is a non-empty directory: its rename fails (EISDIR/ENOTEMPTY).
        fs::create_dir_all(d.path().join("etc/b/x")).unwrap();
        let file = |path: &str| FilePlan {
            path: path.into(),
            action: FileAction::Create,
            mode: crate::plan::Mode::new(0o644).unwrap(),
            sha256: None,
            restarts: vec![],
            content: Some(b"new".to_vec()),
        };
        let plan = Plan {
            instance_id: "i-1".into(),
            node: "n".into(),
            role: Role::Minion,
            profile: "p".into(),
            files: vec![file("/etc/a"), file("/etc/b"), file("/etc/c")],
            reload: false,
            units: vec![],
        };
        let e = apply_files(d.path(), &plan, |_| {}).unwrap_err();
        assert_eq!(e.path, d.path().join("etc/b"));
        let mut names: Vec<_> = fs::read_dir(d.path().join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["a", "b"],
            "the first file in place, no temporary file"
        );
    }

    #[test]
    fn stale_temps_of_dead_runs_are_removed_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let etc = d.path().join("etc");
        fs::create_dir_all(&etc).unwrap();
        // PID 2^22 + 1 is above Linux's pid_max: no such process.
        for name in [".hosts.berth-4194305", ".etcd.conf.berth-4194306", "hosts"] {
            fs::write(etc.join(name), b"x").unwrap();
        }
        for keep in [
            ".berth-12",
            ".hosts.berth-",
            ".hosts.berth-12x",
            "hosts.berth-12",
        ] {
            fs::write(etc.join(keep), b"x").unwrap();
        }
        assert_eq!(remove_stale_temps([etc.as_path(), etc.as_path()]), 2);
        let mut names: Vec<_> = fs::read_dir(&etc)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".berth-12",
                ".hosts.berth-",
                ".hosts.berth-12x",
                "hosts",
                "hosts.berth-12"
            ]
        );
    }

    #[test]
    fn read_host_files_skips_missing() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(&host_path(d.path(), "/etc/hosts"), b"x", 0o644).unwrap();
        let f = read_host_files(d.path(), &["/etc/hosts".into(), "/etc/nope".into()]).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f["/etc/hosts"].mode, 0o644);
    }

    #[test]
    fn write_if_changed_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        assert!(write_if_changed(&p, b"a", 0o600).unwrap());
        assert!(!write_if_changed(&p, b"a", 0o600).unwrap());
        assert!(write_if_changed(&p, b"a", 0o644).unwrap());
        assert!(write_if_changed(&p, b"b", 0o644).unwrap());
    }
}
