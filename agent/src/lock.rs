//! One run at a time per host: `/var/lib/berth/run.lock`, held with `flock(2)` for the whole
//! converge. A second agent (a manual `run --once` beside the daemon) waits for the first; two
//! at once would interleave their writes (a key of one run beside the certificate of another).
//! The kernel drops the lock when its holder dies, so a killed run never blocks the next.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::apply::host_path;

pub const LOCK_FILE: &str = "/var/lib/berth/run.lock";
/// The longest wait for another run: a run's own bounds (IMDS and EC2 deadlines, the etcd tier's
/// 150 s) end well before.
const WAIT: Duration = Duration::from_secs(600);

/// The held lock; released on drop.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock, waiting while another run holds it.
    pub async fn acquire(root: &Path) -> std::io::Result<RunLock> {
        let path = host_path(root, LOCK_FILE);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let deadline = Instant::now() + WAIT;
        let mut told = false;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(RunLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) || Instant::now() > deadline {
                return Err(err);
            }
            if !told {
                log::info!("another berth-agent run holds {LOCK_FILE}; waiting for it");
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_second_run_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).await.unwrap();
        let root = dir.path().to_path_buf();
        let second = tokio::spawn(async move { RunLock::acquire(&root).await.map(drop) });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!second.is_finished(), "the second run did not wait");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second run got the lock")
            .unwrap()
            .unwrap();
    }
}
