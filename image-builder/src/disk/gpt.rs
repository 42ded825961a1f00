//! GUID partition tables, written into a disk image file without any tool.
//!
//! Layout (UEFI 2.10, chapter 5): a protective MBR in LBA 0, the primary header in LBA 1, 128
//! partition entries of 128 bytes in LBAs 2–33, the backup entries in the 32 LBAs before the
//! last, and the backup header in the last LBA. Both headers carry a CRC32 of themselves and of
//! the entry array. Reading is provided too, so tests and callers can find the partitions of a
//! disk berth made (or any GPT disk with 512-byte sectors).

use crate::kind::{Classified, Kind};
use std::io::{Read, Seek, SeekFrom, Write};

pub(crate) const SECTOR: u64 = 512;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors taken by the entry array: 128 × 128 bytes.
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;
/// Partitions start on 1 MiB boundaries, as every partitioning tool does, for the sake of
/// storage with large erase blocks and of 4K-sector disks.
pub(crate) const ALIGN: u64 = 1 << 20;

/// A GUID as written on the command line (`C12A7328-F81F-11D2-BA4B-00A0C93EC93B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const fn parse_const(s: &str) -> Guid {
        let b = s.as_bytes();
        let mut out = [0u8; 16];
        let mut i = 0;
        let mut n = 0;
        while i < b.len() {
            if b[i] != b'-' {
                let hi = hex_digit(b[i]);
                let lo = hex_digit(b[i + 1]);
                out[n] = hi << 4 | lo;
                n += 1;
                i += 2;
            } else {
                i += 1;
            }
        }
        Guid(out)
    }

    /// A version-4-shaped GUID from 16 bytes of a hash: disks built from the same inputs get the
    /// same identifiers, so the image is reproducible.
    pub(crate) fn from_hash(h: &[u8]) -> Guid {
        let mut b = [0u8; 16];
        b.copy_from_slice(&h[..16]);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    /// The on-disk form: the first three fields little-endian, the rest as is.
    fn to_disk(self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }

    fn from_disk(d: &[u8]) -> Guid {
        Guid([
            d[3], d[2], d[1], d[0], d[5], d[4], d[7], d[6], d[8], d[9], d[10], d[11], d[12], d[13],
            d[14], d[15],
        ])
    }
}

const fn hex_digit(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("not a hex digit"),
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15]
        )
    }
}

/// Partition type GUIDs (Discoverable Partitions Specification).
pub mod types {
    use super::Guid;
    pub const ESP: Guid = Guid::parse_const("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    /// Extended Boot Loader Partition: the Boot Loader Specification's `/boot`.
    pub const XBOOTLDR: Guid = Guid::parse_const("BC13C2FF-59E6-4262-A352-B275FD6F7172");
    pub const ROOT_X86_64: Guid = Guid::parse_const("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709");
    /// BIOS boot partition: where GRUB keeps its core image on a GPT disk booted by BIOS.
    pub const BIOS_BOOT: Guid = Guid::parse_const("21686148-6449-6E6F-744E-656564454649");
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: Guid,
    pub guid: Guid,
    /// First and last LBA, inclusive.
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

/// The last LBA a partition may use on a disk of `disk_size` bytes (before the backup entries
/// and header).
pub(crate) fn last_usable(disk_size: u64) -> u64 {
    disk_size / SECTOR - 1 - ENTRY_SECTORS - 1
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no GPT: {0}")]
    NotGpt(&'static str),
    #[error(
        "partition {name}: LBAs {first}..={last} do not fit the disk's usable LBAs {lo}..={hi}"
    )]
    DoesNotFit {
        name: String,
        first: u64,
        last: u64,
        lo: u64,
        hi: u64,
    },
}

impl Classified for GptError {
    fn kind(&self) -> Kind {
        match self {
            GptError::Io(_) | GptError::NotGpt(_) | GptError::DoesNotFit { .. } => Kind::Failed,
        }
    }
}

/// Writes a protective MBR and both GPT headers and entry arrays into `disk`, which must already
/// have its final size `disk_size`.
pub fn write<F: Write + Seek>(
    disk: &mut F,
    disk_size: u64,
    disk_guid: Guid,
    parts: &[Partition],
) -> Result<(), GptError> {
    let last_lba = disk_size / SECTOR - 1;
    let (lo, hi) = (2 + ENTRY_SECTORS, last_usable(disk_size));
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in parts.iter().enumerate() {
        if p.first_lba < lo || p.last_lba > hi || p.first_lba > p.last_lba {
            return Err(GptError::DoesNotFit {
                name: p.name.clone(),
                first: p.first_lba,
                last: p.last_lba,
                lo,
                hi,
            });
        }
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid.to_disk());
        e[16..32].copy_from_slice(&p.guid.to_disk());
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        // Attributes (48..56) stay 0. The name is UTF-16LE, at most 36 code units.
        for (j, u) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    let entries_crc = crc32(&entries);

    let mut mbr = [0u8; 512];
    // One partition of type 0xEE covering the disk (or as much as 32 bits of LBAs can say), so
    // that MBR-only tools see the disk as in use.
    let pe = &mut mbr[446..462];
    pe[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    pe[4] = 0xee;
    pe[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    pe[8..12].copy_from_slice(&1u32.to_le_bytes());
    pe[12..16].copy_from_slice(&(last_lba.min(u32::MAX as u64) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&mbr)?;

    let header = |my: u64, alternate: u64, entries_lba: u64| {
        let mut h = [0u8; 512];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&lo.to_le_bytes());
        h[48..56].copy_from_slice(&hi.to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid.to_disk());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let backup_entries_lba = last_lba - ENTRY_SECTORS;
    disk.seek(SeekFrom::Start(SECTOR))?;
    disk.write_all(&header(1, last_lba, 2))?;
    disk.write_all(&entries)?;
    disk.seek(SeekFrom::Start(backup_entries_lba * SECTOR))?;
    disk.write_all(&entries)?;
    disk.write_all(&header(last_lba, 1, backup_entries_lba))?;
    disk.flush()?;
    Ok(())
}

/// Reads the primary GPT of `disk`, checking both CRCs.
pub fn read<F: Read + Seek>(disk: &mut F) -> Result<(Guid, Vec<Partition>), GptError> {
    let mut h = [0u8; 512];
    disk.seek(SeekFrom::Start(SECTOR))?;
    disk.read_exact(&mut h)?;
    if &h[0..8] != b"EFI PART" {
        return Err(GptError::NotGpt("no `EFI PART` signature in LBA 1"));
    }
    let size = u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize;
    if !(92..=512).contains(&size) {
        return Err(GptError::NotGpt("header size out of range"));
    }
    let stored = u32::from_le_bytes(h[16..20].try_into().unwrap());
    let mut check = h;
    check[16..20].fill(0);
    if crc32(&check[..size]) != stored {
        return Err(GptError::NotGpt("header CRC mismatch"));
    }
    let guid = Guid::from_disk(&h[56..72]);
    let entries_lba = u64::from_le_bytes(h[72..80].try_into().unwrap());
    let count = u32::from_le_bytes(h[80..84].try_into().unwrap()) as u64;
    let esize = u32::from_le_bytes(h[84..88].try_into().unwrap()) as u64;
    if count > 1024 || !(128..=4096).contains(&esize) {
        return Err(GptError::NotGpt("entry array size out of range"));
    }
    let mut entries = vec![0u8; (count * esize) as usize];
    disk.seek(SeekFrom::Start(entries_lba * SECTOR))?;
    disk.read_exact(&mut entries)?;
    if crc32(&entries) != u32::from_le_bytes(h[88..92].try_into().unwrap()) {
        return Err(GptError::NotGpt("entry array CRC mismatch"));
    }
    let parts = entries
        .chunks(esize as usize)
        .filter(|e| e[0..16].iter().any(|b| *b != 0))
        .map(|e| {
            let name: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|u| *u != 0)
                .collect();
            Partition {
                type_guid: Guid::from_disk(&e[0..16]),
                guid: Guid::from_disk(&e[16..32]),
                first_lba: u64::from_le_bytes(e[32..40].try_into().unwrap()),
                last_lba: u64::from_le_bytes(e[40..48].try_into().unwrap()),
                name: String::from_utf16_lossy(&name),
            }
        })
        .collect();
    Ok((guid, parts))
}

/// CRC-32 (IEEE 802.3, reflected, as GPT uses).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, v) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *v = c;
        }
        t
    });
    let mut c = !0u32;
    for b in data {
        c = table[((c ^ *b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn guid_round_trips_through_disk_order() {
        let g = types::ESP;
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        // The ESP type as it appears on disk (little-endian first three fields).
        assert_eq!(
            g.to_disk(),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        assert_eq!(Guid::from_disk(&g.to_disk()), g);
    }

    #[test]
    fn write_then_read() {
        let size = 64 << 20;
        let mut disk = std::io::Cursor::new(vec![0u8; size as usize]);
        let parts = vec![
            Partition {
                type_guid: types::ESP,
                guid: Guid::from_hash(&[1; 32]),
                first_lba: 2048,
                last_lba: 4095,
                name: "ESP".into(),
            },
            Partition {
                type_guid: types::ROOT_X86_64,
                guid: Guid::from_hash(&[2; 32]),
                first_lba: 4096,
                last_lba: last_usable(size),
                name: "root".into(),
            },
        ];
        write(&mut disk, size, Guid::from_hash(&[3; 32]), &parts).unwrap();
        let (g, back) = read(&mut disk).unwrap();
        assert_eq!(g, Guid::from_hash(&[3; 32]));
        assert_eq!(back, parts);
        let bytes = disk.into_inner();
        assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
        assert_eq!(bytes[446 + 4], 0xee);
        // The backup header sits in the last LBA and points back at LBA 1.
        let last = &bytes[bytes.len() - 512..];
        assert_eq!(&last[0..8], b"EFI PART");
        assert_eq!(u64::from_le_bytes(last[32..40].try_into().unwrap()), 1);
    }

    #[test]
    fn refuses_a_partition_past_the_end() {
        let size = 8 << 20;
        let mut disk = std::io::Cursor::new(vec![0u8; size as usize]);
        let p = Partition {
            type_guid: types::ESP,
            guid: Guid::from_hash(&[1; 32]),
            first_lba: 2048,
            last_lba: size / SECTOR,
            name: "ESP".into(),
        };
        assert!(matches!(
            write(&mut disk, size, Guid::from_hash(&[0; 32]), &[p]),
            Err(GptError::DoesNotFit { .. })
        ));
    }
}
