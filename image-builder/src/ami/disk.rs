//! The disk an AMI is made from, read block by block.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use crate::ebs::BLOCK_SIZE;

use super::AmiError;

const GIB: u64 = 1 << 30;

/// The disk, opened and checked: a raw image, not empty.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    pub len: u64,
}

impl Disk {
    /// Opens `path` and refuses what cannot be an AMI's disk: not a regular file, empty, or
    /// qcow2.
    pub fn open(path: &Path) -> Result<Disk, AmiError> {
        let disk_err = |source| AmiError::Disk {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(disk_err)?;
        let meta = file.metadata().map_err(disk_err)?;
        if !meta.is_file() {
            return Err(AmiError::DiskFormat {
                path: path.to_path_buf(),
                what: "not a regular file".into(),
            });
        }
        let len = meta.len();
        if len == 0 {
            return Err(AmiError::DiskFormat {
                path: path.to_path_buf(),
                what: "the disk image is empty".into(),
            });
        }
        let mut magic = [0u8; 4];
        if file.read_exact_at(&mut magic, 0).is_ok() && &magic == b"QFI\xfb" {
            return Err(AmiError::DiskFormat {
                path: path.to_path_buf(),
                what: "this is a qcow2 image; an AMI needs the raw disk (`berth-image disk --format raw`, or `qemu-img convert -O raw`)".into(),
            });
        }
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// 512 KiB blocks, the last one zero-padded.
    pub fn blocks(&self) -> u64 {
        self.len.div_ceil(BLOCK_SIZE as u64)
    }

    /// The EBS volume size: whole GiB, at least 1.
    pub fn volume_size_gib(&self) -> u64 {
        self.len.div_ceil(GIB).max(1)
    }

    /// Block `index`, zero-padded past the end of the file; `None` when it is all zeros.
    pub(crate) fn read_block(&self, index: u64) -> Result<Option<Vec<u8>>, AmiError> {
        let offset = index * BLOCK_SIZE as u64;
        let want = (self.len - offset).min(BLOCK_SIZE as u64) as usize;
        let mut buf = vec![0u8; BLOCK_SIZE];
        self.file
            .read_exact_at(&mut buf[..want], offset)
            .map_err(|source| AmiError::Disk {
                path: self.path.clone(),
                source,
            })?;
        Ok((!is_zero(&buf)).then_some(buf))
    }
}

fn is_zero(buf: &[u8]) -> bool {
    let (head, words, tail) = unsafe { buf.align_to::<u64>() };
    head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::{Classified as _, Kind};

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; BLOCK_SIZE];
        assert!(is_zero(&b));
        b[BLOCK_SIZE - 1] = 1;
        assert!(!is_zero(&b));
        b[BLOCK_SIZE - 1] = 0;
        b[3] = 1;
        assert!(!is_zero(&b[1..]));
    }

    #[test]
    fn disk_geometry_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        std::fs::write(&p, vec![1u8; BLOCK_SIZE + 1]).unwrap();
        let d = Disk::open(&p).unwrap();
        assert_eq!(d.blocks(), 2);
        assert_eq!(d.volume_size_gib(), 1);
        let last = d.read_block(1).unwrap().unwrap();
        assert_eq!(last.len(), BLOCK_SIZE);
        assert_eq!(last[0], 1);
        assert!(last[1..].iter().all(|b| *b == 0));
        std::fs::write(&p, b"QFI\xfb\0\0\0\x03").unwrap();
        assert!(Disk::open(&p).unwrap_err().to_string().contains("qcow2"));
        std::fs::write(&p, b"").unwrap();
        assert_eq!(Disk::open(&p).unwrap_err().kind(), Kind::Refused);
    }
}
