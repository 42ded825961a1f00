//! The work tree of `berth-image disk`: a directory beside `--out` that holds the sysroot, the
//! `/boot` and ESP trees and the raw image while they are built.
//!
//! libostree sets the immutable attribute (`chattr +i`, `FS_IMMUTABLE_FL`) on every deployment
//! root it writes, and not even root can delete an immutable directory's entries. So the tree is
//! removed by [`WorkTree`]'s `Drop`, which first clears that attribute on every deployment root:
//! a run that succeeds, fails or is refused after the deployment was written leaves nothing
//! behind.

use std::os::fd::AsRawFd as _;
use std::path::Path;

use tempfile::TempDir;

/// `FS_IMMUTABLE_FL` from `linux/fs.h` (the `i` of `lsattr`); the libc crate has the ioctls
/// but not the flag.
const FS_IMMUTABLE_FL: libc::c_int = 0x0000_0010;

/// A temporary directory that is removed, immutable deployment roots and all, when dropped.
#[derive(Debug)]
pub struct WorkTree {
    dir: Option<TempDir>,
}

impl WorkTree {
    /// Creates `PARENT/.berth-disk-XXXXXX`: on the output's file system, so the finished image
    /// is renamed into place rather than copied.
    pub fn new(parent: &Path) -> std::io::Result<WorkTree> {
        let dir = tempfile::Builder::new()
            .prefix(".berth-disk-")
            .tempdir_in(parent)?;
        Ok(WorkTree { dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory is only taken on drop")
            .path()
    }
}

impl Drop for WorkTree {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        clear_deployments(&dir.path().join("sysroot"));
        let path = dir.path().to_path_buf();
        if let Err(e) = dir.close() {
            log::warn!(
                "cannot remove the work tree {}: {e}; remove it with `chattr -R -i {0} && rm -rf {0}`",
                path.display()
            );
        }
    }
}

/// Clears the immutable attribute on `SYSROOT/ostree/deploy/*/deploy/*`, where libostree sets
/// it. Best effort: whatever stays immutable makes the removal fail, and that is reported.
fn clear_deployments(sysroot: &Path) {
    let Ok(oses) = std::fs::read_dir(sysroot.join("ostree/deploy")) else {
        return;
    };
    for os in oses.filter_map(Result::ok) {
        let Ok(deployments) = std::fs::read_dir(os.path().join("deploy")) else {
            continue;
        };
        for d in deployments.filter_map(Result::ok) {
            if let Err(e) = clear_immutable(&d.path()) {
                log::debug!(
                    "{}: clearing the immutable attribute: {e}",
                    d.path().display()
                );
            }
        }
    }
}

/// Clears `FS_IMMUTABLE_FL` on one directory (what `chattr -i` does), without following a
/// symlink.
pub(crate) fn clear_immutable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    let fd = dir.as_raw_fd();
    let mut flags: libc::c_int = 0;
    // SAFETY: `fd` is open for the whole call and the kernel writes one int to `flags`.
    if unsafe { libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(());
    }
    flags &= !FS_IMMUTABLE_FL;
    // SAFETY: as above; the kernel reads one int from `flags`.
    if unsafe { libc::ioctl(fd, libc::FS_IOC_SETFLAGS, &flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_removes_the_tree() {
        let parent = tempfile::tempdir().unwrap();
        let work = WorkTree::new(parent.path()).unwrap();
        let dep = work.path().join("sysroot/ostree/deploy/os/deploy/abc.0");
        std::fs::create_dir_all(dep.join("usr")).unwrap();
        std::fs::write(dep.join("usr/f"), b"x").unwrap();
        let path = work.path().to_path_buf();
        drop(work);
        assert!(!path.exists());
    }

    /// Needs root (CAP_LINUX_IMMUTABLE) and a file system with attributes (ext4, xfs, btrfs).
    #[test]
    fn dropping_removes_an_immutable_deployment() {
        let parent = tempfile::tempdir().unwrap();
        let work = WorkTree::new(parent.path()).unwrap();
        let dep = work.path().join("sysroot/ostree/deploy/os/deploy/abc.0");
        std::fs::create_dir_all(dep.join("usr")).unwrap();
        let set = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&dep)
            .status();
        if !matches!(set, Ok(s) if s.success()) {
            eprintln!("skipped: cannot set the immutable attribute here");
            return;
        }
        assert!(std::fs::remove_dir_all(&dep).is_err(), "not immutable");
        let path = work.path().to_path_buf();
        drop(work);
        assert!(!path.exists(), "the work tree was left behind");
    }
}
