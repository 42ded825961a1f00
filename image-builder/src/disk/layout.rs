//! How big the disk and its partitions are: measured from the trees that go into them, and laid
//! out 1 MiB-aligned as ESP, `/boot`, root.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use super::gpt::{self, Guid, Partition, SECTOR};
use super::{io, DiskError};

pub const MIB: u64 = 1 << 20;
/// systemd-boot and an ext4 driver take under 1 MiB; FAT32 needs at least 65525 clusters, which
/// 128 MiB gives, and firmware is most reliable with FAT32.
const ESP_SIZE: u64 = 128 * MIB;
/// `/boot` holds the booted deployment's kernel and initramfs plus a staged one during an
/// upgrade; 512 MiB unless the commit's own are larger than a third of it.
const BOOT_MIN: u64 = 512 * MIB;
/// Free room in the root file system on top of the tree, the journal and ext4's metadata when
/// `--size` is not given: /var grows (journal, container images come later).
pub(crate) const ROOT_HEADROOM: u64 = 1024 * MIB;
/// The first partition starts at 1 MiB.
const ALIGN_START: u64 = gpt::ALIGN;
/// The backup GPT (entries and header) plus alignment slack at the end of the disk.
const GPT_TAIL: u64 = MIB;

/// Bytes and inodes a tree takes in ext4 with 4 KiB blocks (hardlinks counted once).
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Measures the tree at `dir` without following symlinks.
pub fn usage(dir: &Path) -> Result<Usage, DiskError> {
    let mut seen = std::collections::HashSet::new();
    let mut u = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(io(&d))?;
        for e in rd {
            let e = e.map_err(io(&d))?;
            let m = e.metadata().map_err(io(&e.path()))?;
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            u.inodes += 1;
            // Symlinks up to 59 bytes live in the inode; everything else takes whole blocks.
            let len = if m.file_type().is_symlink() && m.len() < 60 {
                0
            } else {
                m.len()
            };
            u.bytes += len.div_ceil(4096) * 4096;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(u)
}

/// ext4 size for a tree: the data plus 10% for metadata and the inode tables, a 64 MiB journal,
/// rounded up to MiB.
fn ext4_needed(u: Usage) -> u64 {
    let raw = u.bytes + u.bytes / 10 + u.inodes * 256 + 64 * MIB + 16 * MIB;
    raw.div_ceil(MIB) * MIB
}

/// The partition GUIDs and the disk's own.
#[derive(Debug, Clone, Copy)]
pub struct PartitionGuids {
    pub esp: Guid,
    pub boot: Guid,
    pub root: Guid,
}

/// The disk's size and its partitions, in the order ESP, `/boot`, root.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Bytes, a multiple of 1 MiB.
    pub total: u64,
    pub parts: Vec<Partition>,
}

/// Lays the disk out for trees of `root` and `boot` usage. `size`: the user's `--size` in
/// bytes (rounded down to MiB), refused when smaller than the trees need; `None`: what they need
/// plus [`ROOT_HEADROOM`].
pub fn plan(
    size: Option<u64>,
    root: Usage,
    boot: Usage,
    guids: PartitionGuids,
) -> Result<Layout, DiskError> {
    let boot_size = BOOT_MIN.max(ext4_needed(boot) * 3);
    let fixed = ALIGN_START + ESP_SIZE + boot_size + GPT_TAIL;
    let needed = fixed + ext4_needed(root);
    let total = match size {
        Some(s) if s < needed => {
            return Err(DiskError::TooSmall {
                size: s,
                needed,
                needed_mib: needed.div_ceil(MIB),
            })
        }
        Some(s) => s / MIB * MIB,
        None => (needed + ROOT_HEADROOM).div_ceil(MIB) * MIB,
    };
    let esp_first = ALIGN_START / SECTOR;
    let boot_first = esp_first + ESP_SIZE / SECTOR;
    let root_first = boot_first + boot_size / SECTOR;
    // The root ends on a MiB boundary before the backup GPT.
    let root_last = ((gpt::last_usable(total) + 1) * SECTOR / MIB * MIB) / SECTOR - 1;
    let parts = vec![
        Partition {
            type_guid: gpt::types::ESP,
            guid: guids.esp,
            first_lba: esp_first,
            last_lba: boot_first - 1,
            name: "ESP".into(),
        },
        Partition {
            type_guid: gpt::types::XBOOTLDR,
            guid: guids.boot,
            first_lba: boot_first,
            last_lba: root_first - 1,
            name: "boot".into(),
        },
        Partition {
            type_guid: gpt::types::ROOT_X86_64,
            guid: guids.root,
            first_lba: root_first,
            last_lba: root_last,
            name: "root".into(),
        },
    ];
    Ok(Layout { total, parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guids() -> PartitionGuids {
        PartitionGuids {
            esp: Guid::from_hash(&[1; 32]),
            boot: Guid::from_hash(&[2; 32]),
            root: Guid::from_hash(&[3; 32]),
        }
    }

    #[test]
    fn partitions_are_aligned_and_fit() {
        let root = Usage {
            bytes: 700 * MIB,
            inodes: 30_000,
        };
        let l = plan(None, root, Usage::default(), guids()).unwrap();
        assert_eq!(l.total % MIB, 0);
        for p in &l.parts {
            assert_eq!(p.offset() % MIB, 0, "{}", p.name);
            assert_eq!(p.size() % MIB, 0, "{}", p.name);
        }
        assert_eq!(l.parts[0].offset(), MIB);
        assert!(l.parts[2].offset() + l.parts[2].size() <= l.total - MIB);
        assert!(l.parts[2].size() >= ext4_needed(root) + ROOT_HEADROOM - MIB);
    }

    #[test]
    fn too_small_names_the_minimum() {
        let e = plan(Some(64 * MIB), Usage::default(), Usage::default(), guids()).unwrap_err();
        let DiskError::TooSmall { needed, .. } = e else {
            panic!("{e}");
        };
        assert!(plan(Some(needed), Usage::default(), Usage::default(), guids()).is_ok());
        assert!(plan(
            Some(needed - 1),
            Usage::default(),
            Usage::default(),
            guids()
        )
        .is_err());
    }
}
