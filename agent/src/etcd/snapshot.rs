//! Periodic snapshots of the local member, as `etcdctl snapshot save` writes them, kept a bounded
//! number of times in `/var/lib/berth/etcd-snapshots/` (mode 0600: a snapshot holds every key).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::{EtcdClient, EtcdError};
use super::SnapshotRecord;

pub const SNAPSHOT_DIR: &str = "/var/lib/berth/etcd-snapshots";
/// A snapshot of a small control-plane database streams in well under a second; the bound is for
/// a database near etcd's 2 GiB default quota on a slow disk.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// `snapshot-UNIXSECONDS.db` files in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let at = name
                .strip_prefix("snapshot-")?
                .strip_suffix(".db")?
                .parse()
                .ok()?;
            Some((at, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Saves a snapshot of the member at `endpoint` into `dir` (through a temporary file renamed
/// into place), then deletes all but the newest `keep`.
pub async fn save(
    client: &EtcdClient,
    endpoint: &str,
    dir: &Path,
    now: u64,
    keep: usize,
) -> Result<SnapshotRecord, EtcdError> {
    let io_err = |e: std::io::Error| EtcdError::Answer {
        url: endpoint.to_string(),
        reason: format!("writing the snapshot under {}: {e}", dir.display()),
    };
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let path = dir.join(format!("snapshot-{now}.db"));
    let tmp = dir.join(format!(".snapshot-{now}.db.berth-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err)?;
    let result = async {
        let mut w = std::io::BufWriter::new(&mut f);
        let bytes = client.snapshot(endpoint, &mut w, SNAPSHOT_TIMEOUT).await?;
        w.flush().map_err(io_err)?;
        drop(w);
        f.sync_all().map_err(io_err)?;
        std::fs::rename(&tmp, &path).map_err(io_err)?;
        Ok(bytes)
    }
    .await;
    let bytes = match result {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let all = list(dir);
    if all.len() > keep {
        for (_, old) in &all[..all.len() - keep] {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(SnapshotRecord {
        path: path.display().to_string(),
        at: now,
        bytes,
    })
}
