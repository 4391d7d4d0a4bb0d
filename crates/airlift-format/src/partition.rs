//! ESP-IDF partition table: binary and CSV forms.
//!
//! The binary table sits at flash offset [`TABLE_OFFSET`] and occupies at
//! most [`TABLE_MAX_LEN`] bytes: 32-byte entry rows (magic `aa 50`), then an
//! MD5 row (`eb eb`, 14 x `ff`, MD5 of all entry bytes before it), then 0xFF
//! up to the end. This is what ESP-IDF's `gen_esp32part.py` writes and what
//! its bootloader (`esp_partition_table_verify`) reads.
//!
//! Three ways in, all without allocation:
//! - [`decode_row`] / [`TableReader`]: one 32-byte row at a time, for a
//!   device reading the table from flash with a small RAM budget. The reader
//!   checks each entry and the MD5 row; checks across entries (overlaps,
//!   duplicate labels) need the whole table and are left to
//!   [`Table::parse`] and [`build`].
//! - [`Table::parse`]: a validated view over the table's bytes.
//! - [`build`]: validates entries and encodes a table.
//!
//! [`OtaLayout`] extracts what the update engine needs: otadata, the OTA app
//! slots, the factory app and Airlift's own data partition.
//!
//! Airlift is deliberately stricter than `gen_esp32part.py` where a loose
//! table would be dangerous on a device: data partitions must be 4 KiB
//! aligned (ESP-IDF only warns), OTA slots must be contiguous from `ota_0`
//! (the bootloader counts slots, the OTA API numbers them), and each app
//! subtype may appear once.

use core::fmt;

use md5::{Digest, Md5};

#[cfg(feature = "std")]
mod csv;
#[cfg(feature = "std")]
pub use csv::{CsvError, LineProblem, parse_csv, render_csv};

/// Flash offset of the partition table (ESP-IDF's default
/// `CONFIG_PARTITION_TABLE_OFFSET`; Airlift always uses it).
pub const TABLE_OFFSET: u32 = 0x8000;

/// Bytes of the table region that hold rows (the rest of the 4 KiB sector is
/// reserved for a signature).
pub const TABLE_MAX_LEN: usize = 0xC00;

/// Flash sector the table occupies; partitions start after it.
pub const TABLE_SECTOR_LEN: u32 = 0x1000;

/// Size of one row.
pub const ENTRY_LEN: usize = 32;

/// Most entries a table can hold: 96 rows minus the MD5 row.
pub const MAX_ENTRIES: usize = TABLE_MAX_LEN / ENTRY_LEN - 1;

/// Most entries [`build`] writes: one fewer than [`MAX_ENTRIES`] so that an
/// end-of-table row always follows the MD5 row, as `gen_esp32part.py`
/// requires (it refuses to build or read a table without one).
pub const MAX_BUILD_ENTRIES: usize = MAX_ENTRIES - 1;

/// Magic of an entry row (`ESP_PARTITION_MAGIC`, 0x50AA little endian).
pub const ENTRY_MAGIC: [u8; 2] = [0xAA, 0x50];

/// Magic of the MD5 row (`ESP_PARTITION_MAGIC_MD5`).
pub const MD5_MAGIC: [u8; 2] = [0xEB, 0xEB];

/// Entry flag: the partition is encrypted.
pub const FLAG_ENCRYPTED: u32 = 1 << 0;

/// Entry flag: the partition is read-only.
pub const FLAG_READONLY: u32 = 1 << 1;

/// Subtype of Airlift's own data partition (boot counter, boot log,
/// settings): a custom data subtype.
pub const AIRLIFT_DATA_SUBTYPE: u8 = 0x40;

/// Label of Airlift's own data partition.
pub const AIRLIFT_DATA_LABEL: &str = "airlift";

/// Required size of the otadata partition (two 4 KiB sectors).
pub const OTADATA_LEN: u32 = 0x2000;

/// Offset alignment of app partitions.
pub const APP_ALIGN: u32 = 0x1_0000;

/// Offset alignment of all other partitions (one flash sector).
pub const DATA_ALIGN: u32 = 0x1000;

/// Number of OTA app subtypes (`ota_0` ..= `ota_15`).
pub const MAX_OTA_SLOTS: u8 = 16;

/// A partition type byte. Any value round-trips; the constants name ESP-IDF's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionType(pub u8);

impl PartitionType {
    /// `app`: a bootable application.
    pub const APP: Self = Self(0x00);
    /// `data`.
    pub const DATA: Self = Self(0x01);
    /// `bootloader` (ESP-IDF 5.3+ tables may describe the bootloader).
    pub const BOOTLOADER: Self = Self(0x02);
    /// `partition_table` (ESP-IDF 5.3+).
    pub const PARTITION_TABLE: Self = Self(0x03);

    /// ESP-IDF's name for the type, if it has one.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            0x00 => Some("app"),
            0x01 => Some("data"),
            0x02 => Some("bootloader"),
            0x03 => Some("partition_table"),
            _ => None,
        }
    }

    /// Whether the type is in the range ESP-IDF reserves for custom types
    /// (0x40..=0xFE).
    pub const fn is_custom(self) -> bool {
        matches!(self.0, 0x40..=0xFE)
    }

    /// The offset alignment ESP-IDF (and Airlift) require for this type.
    pub const fn alignment(self) -> u32 {
        if self.0 == Self::APP.0 {
            APP_ALIGN
        } else {
            DATA_ALIGN
        }
    }
}

/// Subtypes of [`PartitionType::APP`].
pub mod app_subtype {
    /// `factory`.
    pub const FACTORY: u8 = 0x00;
    /// `ota_0`; `ota_N` is `OTA_0 + N` for N in 0..16.
    pub const OTA_0: u8 = 0x10;
    /// `ota_15`.
    pub const OTA_15: u8 = 0x1F;
    /// `test`.
    pub const TEST: u8 = 0x20;
}

/// Subtypes of [`PartitionType::DATA`].
pub mod data_subtype {
    /// `ota`: otadata.
    pub const OTA: u8 = 0x00;
    /// `phy`.
    pub const PHY: u8 = 0x01;
    /// `nvs`.
    pub const NVS: u8 = 0x02;
    /// `coredump`.
    pub const COREDUMP: u8 = 0x03;
    /// `nvs_keys`.
    pub const NVS_KEYS: u8 = 0x04;
    /// `efuse`.
    pub const EFUSE: u8 = 0x05;
    /// `undefined`.
    pub const UNDEFINED: u8 = 0x06;
    /// `esphttpd`.
    pub const ESPHTTPD: u8 = 0x80;
    /// `fat`.
    pub const FAT: u8 = 0x81;
    /// `spiffs`.
    pub const SPIFFS: u8 = 0x82;
    /// `littlefs`.
    pub const LITTLEFS: u8 = 0x83;
}

const OTA_NAMES: [&str; 16] = [
    "ota_0", "ota_1", "ota_2", "ota_3", "ota_4", "ota_5", "ota_6", "ota_7", "ota_8", "ota_9",
    "ota_10", "ota_11", "ota_12", "ota_13", "ota_14", "ota_15",
];

const DATA_SUBTYPE_NAMES: [(u8, &str); 11] = [
    (data_subtype::OTA, "ota"),
    (data_subtype::PHY, "phy"),
    (data_subtype::NVS, "nvs"),
    (data_subtype::COREDUMP, "coredump"),
    (data_subtype::NVS_KEYS, "nvs_keys"),
    (data_subtype::EFUSE, "efuse"),
    (data_subtype::UNDEFINED, "undefined"),
    (data_subtype::ESPHTTPD, "esphttpd"),
    (data_subtype::FAT, "fat"),
    (data_subtype::SPIFFS, "spiffs"),
    (data_subtype::LITTLEFS, "littlefs"),
];

/// ESP-IDF's name for a subtype of `kind`, if it has one (`"ota_3"`,
/// `"nvs"`, ...). Custom subtypes, Airlift's 0x40 included, have none.
pub fn subtype_name(kind: PartitionType, subtype: u8) -> Option<&'static str> {
    match kind {
        PartitionType::APP => match subtype {
            app_subtype::FACTORY => Some("factory"),
            app_subtype::TEST => Some("test"),
            app_subtype::OTA_0..=app_subtype::OTA_15 => OTA_NAMES
                .get(usize::from(subtype - app_subtype::OTA_0))
                .copied(),
            _ => None,
        },
        PartitionType::DATA => DATA_SUBTYPE_NAMES
            .iter()
            .find(|(value, _)| *value == subtype)
            .map(|(_, name)| *name),
        PartitionType::BOOTLOADER => match subtype {
            0x00 => Some("primary"),
            0x01 => Some("ota"),
            0x02 => Some("recovery"),
            _ => None,
        },
        PartitionType::PARTITION_TABLE => match subtype {
            0x00 => Some("primary"),
            0x01 => Some("ota"),
            _ => None,
        },
        _ => None,
    }
}

/// The subtype value ESP-IDF gives `name` for partitions of `kind`.
pub fn subtype_from_name(kind: PartitionType, name: &str) -> Option<u8> {
    (0..=u8::MAX).find(|&subtype| subtype_name(kind, subtype) == Some(name))
}

/// A partition label: up to 16 bytes, NUL-padded.
pub type Label = [u8; 16];

/// The text of a label: the bytes before the first NUL, or before the first
/// byte that is not UTF-8.
pub fn label_text(label: &Label) -> &str {
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    let bytes = &label[..end];
    match core::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => core::str::from_utf8(&bytes[..err.valid_up_to()]).unwrap_or_default(),
    }
}

/// Encodes `text` as a NUL-padded label, or `None` if it is longer than 16
/// bytes or contains a NUL.
pub fn label_from_str(text: &str) -> Option<Label> {
    let bytes = text.as_bytes();
    if bytes.len() > 16 || bytes.contains(&0) {
        return None;
    }
    let mut label = [0u8; 16];
    label[..bytes.len()].copy_from_slice(bytes);
    Some(label)
}

const fn const_label(text: &str) -> Label {
    let bytes = text.as_bytes();
    let mut label = [0u8; 16];
    let mut i = 0;
    while i < bytes.len() {
        label[i] = bytes[i];
        i += 1;
    }
    label
}

/// One `esp_partition_info_t` row: `{ magic: u16, type: u8, subtype: u8,
/// offset: u32, size: u32, label: [u8; 16], flags: u32 }`, little endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionEntry {
    /// Partition type.
    pub kind: PartitionType,
    /// Subtype (meaning depends on `kind`; see [`app_subtype`], [`data_subtype`]).
    pub subtype: u8,
    /// Flash offset in bytes.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// NUL-padded label.
    pub label: Label,
    /// Flags ([`FLAG_ENCRYPTED`], [`FLAG_READONLY`]; other bits kept as read).
    pub flags: u32,
}

impl PartitionEntry {
    /// An entry with a text label, or [`PartitionError::BadLabel`] if the
    /// label is longer than 16 bytes or contains a NUL.
    pub fn new(
        label: &str,
        kind: PartitionType,
        subtype: u8,
        offset: u32,
        size: u32,
        flags: u32,
    ) -> Result<Self, PartitionError> {
        let label = label_from_str(label).ok_or(PartitionError::BadLabel {
            label: truncated_label(label),
        })?;
        Ok(Self {
            kind,
            subtype,
            offset,
            size,
            label,
            flags,
        })
    }

    const fn preset(label: &str, kind: PartitionType, subtype: u8, offset: u32, size: u32) -> Self {
        Self {
            kind,
            subtype,
            offset,
            size,
            label: const_label(label),
            flags: 0,
        }
    }

    /// The label as text (see [`label_text`]).
    pub fn label_str(&self) -> &str {
        label_text(&self.label)
    }

    /// The OTA slot index if this is an `ota_N` app partition.
    pub const fn is_ota_app(&self) -> Option<u8> {
        if self.kind.0 == PartitionType::APP.0
            && self.subtype >= app_subtype::OTA_0
            && self.subtype <= app_subtype::OTA_15
        {
            Some(self.subtype - app_subtype::OTA_0)
        } else {
            None
        }
    }

    /// Whether this is the otadata partition (type data, subtype ota).
    pub const fn is_otadata(&self) -> bool {
        self.kind.0 == PartitionType::DATA.0 && self.subtype == data_subtype::OTA
    }

    /// One past the last byte (as u64: a partition may end at 4 GiB).
    pub const fn end(&self) -> u64 {
        self.offset as u64 + self.size as u64
    }

    /// The 32-byte row.
    pub const fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut row = [0u8; ENTRY_LEN];
        row[0] = ENTRY_MAGIC[0];
        row[1] = ENTRY_MAGIC[1];
        row[2] = self.kind.0;
        row[3] = self.subtype;
        let offset = self.offset.to_le_bytes();
        let size = self.size.to_le_bytes();
        let flags = self.flags.to_le_bytes();
        let mut i = 0;
        while i < 4 {
            row[4 + i] = offset[i];
            row[8 + i] = size[i];
            row[28 + i] = flags[i];
            i += 1;
        }
        let mut j = 0;
        while j < 16 {
            row[12 + j] = self.label[j];
            j += 1;
        }
        row
    }

    /// Checks the rules that concern this entry alone: label is UTF-8,
    /// size not zero, end within 4 GiB, offset aligned for its type
    /// ([`PartitionType::alignment`]), app and otadata sizes whole sectors,
    /// otadata exactly [`OTADATA_LEN`], and nothing but bootloader and
    /// partition-table descriptions below the end of the table sector.
    pub fn validate(&self) -> Result<(), PartitionError> {
        let label = self.label;
        let end = self.label.iter().position(|&b| b == 0).unwrap_or(16);
        if core::str::from_utf8(&self.label[..end]).is_err() {
            return Err(PartitionError::BadLabel { label });
        }
        if self.size == 0 {
            return Err(PartitionError::ZeroSize { label });
        }
        if self.end() > 1 << 32 {
            return Err(PartitionError::PastFlashEnd {
                label,
                offset: self.offset,
                size: self.size,
            });
        }
        let align = self.kind.alignment();
        if !self.offset.is_multiple_of(align) {
            return Err(PartitionError::Misaligned {
                label,
                offset: self.offset,
                align,
            });
        }
        let whole_sectors = self.kind == PartitionType::APP || self.is_otadata();
        if whole_sectors && !self.size.is_multiple_of(DATA_ALIGN) {
            return Err(PartitionError::SizeNotSectors {
                label,
                size: self.size,
            });
        }
        if self.is_otadata() && self.size != OTADATA_LEN {
            return Err(PartitionError::OtadataSize {
                label,
                size: self.size,
            });
        }
        let describes_boot_region = matches!(
            self.kind,
            PartitionType::BOOTLOADER | PartitionType::PARTITION_TABLE
        );
        if !describes_boot_region && self.offset < TABLE_OFFSET + TABLE_SECTOR_LEN {
            return Err(PartitionError::BelowTableEnd {
                label,
                offset: self.offset,
            });
        }
        Ok(())
    }
}

fn truncated_label(text: &str) -> Label {
    let mut label = [0u8; 16];
    for (dst, src) in label.iter_mut().zip(text.bytes()) {
        *dst = src;
    }
    label
}

/// One decoded 32-byte row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Row {
    /// A partition entry (magic `aa 50`).
    Entry(PartitionEntry),
    /// The MD5 row (magic `eb eb`), carrying the stored digest.
    Md5([u8; 16]),
    /// The end of the table (magic `ff ff`, erased flash).
    End,
}

/// Decodes one row. Only the magic (and the MD5 row's 0xFF filler) is
/// checked here; [`PartitionEntry::validate`] checks an entry's contents.
/// Error offsets are relative to the row: [`TableReader`] and
/// [`Table::parse`] report the row's offset in the table.
pub fn decode_row(row: &[u8; ENTRY_LEN]) -> Result<Row, PartitionError> {
    decode_row_at(0, row)
}

fn decode_row_at(at: usize, row: &[u8; ENTRY_LEN]) -> Result<Row, PartitionError> {
    let word = |i: usize| u32::from_le_bytes([row[i], row[i + 1], row[i + 2], row[i + 3]]);
    match [row[0], row[1]] {
        ENTRY_MAGIC => {
            let mut label = [0u8; 16];
            label.copy_from_slice(&row[12..28]);
            Ok(Row::Entry(PartitionEntry {
                kind: PartitionType(row[2]),
                subtype: row[3],
                offset: word(4),
                size: word(8),
                label,
                flags: word(28),
            }))
        }
        MD5_MAGIC => {
            if row[2..16].iter().any(|&b| b != 0xFF) {
                return Err(PartitionError::BadMd5Row { at });
            }
            let mut digest = [0u8; 16];
            digest.copy_from_slice(&row[16..]);
            Ok(Row::Md5(digest))
        }
        [0xFF, 0xFF] => Ok(Row::End),
        found => Err(PartitionError::BadMagic { at, found }),
    }
}

/// Whether a table had an MD5 row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Md5Status {
    /// An MD5 row was present and matched the entries before it.
    Verified,
    /// No MD5 row (a table built with `--disable-md5sum`).
    Absent,
}

/// Reads a table one row at a time, checking each entry and the MD5 row.
///
/// Holds only an MD5 state and a few counters, so a device can stream the
/// table from flash. Cross-entry rules (overlaps, duplicate labels and
/// subtypes) are not checked: use [`Table::parse`] where the whole table is
/// in memory, and [`OtaLayout::from_entries`] for the entries a device needs.
#[derive(Clone)]
pub struct TableReader {
    md5: Md5,
    rows: usize,
    entries: usize,
    md5_status: Option<Md5Status>,
    ended: bool,
}

impl fmt::Debug for TableReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableReader")
            .field("rows", &self.rows)
            .field("entries", &self.entries)
            .field("md5_status", &self.md5_status)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Default for TableReader {
    fn default() -> Self {
        Self::new()
    }
}

impl TableReader {
    /// A reader positioned at the first row.
    pub fn new() -> Self {
        Self {
            md5: Md5::new(),
            rows: 0,
            entries: 0,
            md5_status: None,
            ended: false,
        }
    }

    /// Feeds the next row. Returns the entry it holds (checked with
    /// [`PartitionEntry::validate`]), or `None` for the MD5 row, the end row,
    /// and anything after the end row (which [`is_done`](Self::is_done) tells
    /// the caller to stop reading).
    pub fn push(
        &mut self,
        row: &[u8; ENTRY_LEN],
    ) -> Result<Option<PartitionEntry>, PartitionError> {
        if self.ended {
            return Ok(None);
        }
        let at = self.rows * ENTRY_LEN;
        if self.rows >= TABLE_MAX_LEN / ENTRY_LEN {
            self.ended = true;
            return Ok(None);
        }
        self.rows += 1;
        match decode_row_at(at, row)? {
            Row::Entry(entry) => {
                if self.md5_status.is_some() {
                    return Err(PartitionError::EntryAfterMd5 { at });
                }
                if self.entries == MAX_ENTRIES {
                    return Err(PartitionError::TooManyEntries {
                        count: self.entries + 1,
                        max: MAX_ENTRIES,
                    });
                }
                entry.validate()?;
                self.md5.update(row);
                self.entries += 1;
                Ok(Some(entry))
            }
            Row::Md5(stored) => {
                if self.md5_status.is_some() {
                    return Err(PartitionError::EntryAfterMd5 { at });
                }
                let computed: [u8; 16] = self.md5.clone().finalize().into();
                if computed != stored {
                    return Err(PartitionError::Md5Mismatch { stored, computed });
                }
                self.md5_status = Some(Md5Status::Verified);
                Ok(None)
            }
            Row::End => {
                self.ended = true;
                Ok(None)
            }
        }
    }

    /// Whether the table has ended (end row read, or all
    /// [`TABLE_MAX_LEN`] bytes read); further rows are ignored.
    pub fn is_done(&self) -> bool {
        self.ended || self.rows >= TABLE_MAX_LEN / ENTRY_LEN
    }

    /// Entries read so far.
    pub fn entry_count(&self) -> usize {
        self.entries
    }

    /// Whether an MD5 row was read (and matched) so far.
    pub fn md5_status(&self) -> Md5Status {
        self.md5_status.unwrap_or(Md5Status::Absent)
    }
}

/// Checks only the rows' magic and the MD5 row of a table (the bytes from
/// [`TABLE_OFFSET`] on), not the entries' contents: for tools that report
/// integrity separately from validity.
pub fn check_md5(bytes: &[u8]) -> Result<Md5Status, PartitionError> {
    let mut md5 = Md5::new();
    for (index, chunk) in bytes
        .chunks(ENTRY_LEN)
        .take(TABLE_MAX_LEN / ENTRY_LEN)
        .enumerate()
    {
        let at = index * ENTRY_LEN;
        let row: [u8; ENTRY_LEN] = chunk
            .try_into()
            .map_err(|_| PartitionError::Truncated { len: bytes.len() })?;
        match decode_row_at(at, &row)? {
            Row::Entry(_) => md5.update(row),
            Row::Md5(stored) => {
                let computed: [u8; 16] = md5.finalize().into();
                return if computed == stored {
                    Ok(Md5Status::Verified)
                } else {
                    Err(PartitionError::Md5Mismatch { stored, computed })
                };
            }
            Row::End => return Ok(Md5Status::Absent),
        }
    }
    if bytes.len() < TABLE_MAX_LEN {
        return Err(PartitionError::Truncated { len: bytes.len() });
    }
    Ok(Md5Status::Absent)
}

/// A validated partition table over borrowed bytes. Iterating decodes the
/// rows again; nothing is copied or allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table<'a> {
    rows: &'a [u8],
    count: usize,
    md5: Md5Status,
}

impl<'a> Table<'a> {
    /// Parses and validates a table: the bytes from [`TABLE_OFFSET`] on
    /// (at least up to the end row; longer input, e.g. the whole sector, is
    /// fine). Checks the MD5 row ([`check_md5`]), every row
    /// ([`TableReader`]) and then the rules across entries
    /// ([`validate_entries`]).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PartitionError> {
        // Integrity first: a corrupted table is reported as such, not as
        // whatever nonsense the flipped bits happen to spell.
        check_md5(bytes)?;
        let mut reader = TableReader::new();
        let mut consumed = 0;
        let mut count = 0;
        while !reader.is_done() {
            let Some(chunk) = bytes.get(consumed..consumed + ENTRY_LEN) else {
                return Err(PartitionError::Truncated { len: bytes.len() });
            };
            let mut row = [0u8; ENTRY_LEN];
            row.copy_from_slice(chunk);
            if reader.push(&row)?.is_some() {
                count += 1;
            }
            consumed += ENTRY_LEN;
        }
        let table = Self {
            rows: &bytes[..count * ENTRY_LEN],
            count,
            md5: reader.md5_status(),
        };
        validate_entries(|| table.iter())?;
        Ok(table)
    }

    /// The entries, in table order.
    pub fn iter(&self) -> impl Iterator<Item = PartitionEntry> + Clone + 'a {
        self.rows.chunks_exact(ENTRY_LEN).filter_map(|chunk| {
            let mut row = [0u8; ENTRY_LEN];
            row.copy_from_slice(chunk);
            match decode_row(&row) {
                Ok(Row::Entry(entry)) => Some(entry),
                _ => None,
            }
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the table carried an MD5 row.
    pub fn md5_status(&self) -> Md5Status {
        self.md5
    }

    /// The first entry with this label.
    pub fn find(&self, label: &str) -> Option<PartitionEntry> {
        self.iter().find(|entry| entry.label_str() == label)
    }

    /// The OTA layout of this table.
    pub fn ota_layout(&self) -> Result<OtaLayout, PartitionError> {
        OtaLayout::from_entries(self.iter())
    }
}

/// Checks a whole set of entries: each one ([`PartitionEntry::validate`]),
/// at most [`MAX_ENTRIES`], unique labels, no overlaps, at most one
/// otadata, each app subtype at most once, OTA slots contiguous from `ota_0`,
/// and Airlift's partition (if any) of the right type. `entries` is called
/// once per pass, so no copy is needed.
pub fn validate_entries<I, F>(entries: F) -> Result<(), PartitionError>
where
    F: Fn() -> I,
    I: Iterator<Item = PartitionEntry>,
{
    let count = entries().count();
    if count > MAX_ENTRIES {
        return Err(PartitionError::TooManyEntries {
            count,
            max: MAX_ENTRIES,
        });
    }
    for (i, a) in entries().enumerate() {
        a.validate()?;
        for b in entries().skip(i + 1) {
            if a.label == b.label {
                return Err(PartitionError::DuplicateLabel { label: a.label });
            }
            if u64::from(a.offset) < b.end() && u64::from(b.offset) < a.end() {
                let (first, second) = if a.offset <= b.offset { (a, b) } else { (b, a) };
                return Err(PartitionError::Overlap {
                    first: first.label,
                    first_end: first.end(),
                    second: second.label,
                    second_offset: second.offset,
                });
            }
            if a.kind == PartitionType::APP
                && b.kind == PartitionType::APP
                && a.subtype == b.subtype
            {
                return Err(PartitionError::DuplicateAppSubtype {
                    subtype: a.subtype,
                    label: b.label,
                });
            }
            if a.is_otadata() && b.is_otadata() {
                return Err(PartitionError::DuplicateOtadata { label: b.label });
            }
        }
    }
    OtaLayout::from_entries(entries()).map(|_| ())
}

/// Validates `entries` ([`validate_entries`], at most [`MAX_BUILD_ENTRIES`])
/// and encodes the table into `out`: entry rows, the MD5 row, then 0xFF.
/// Returns the bytes used before the 0xFF padding. The same entries always
/// give the same bytes as `gen_esp32part.py`.
pub fn build(
    entries: &[PartitionEntry],
    out: &mut [u8; TABLE_MAX_LEN],
) -> Result<usize, PartitionError> {
    if entries.len() > MAX_BUILD_ENTRIES {
        return Err(PartitionError::TooManyEntries {
            count: entries.len(),
            max: MAX_BUILD_ENTRIES,
        });
    }
    validate_entries(|| entries.iter().copied())?;
    out.fill(0xFF);
    let mut md5 = Md5::new();
    for (entry, slot) in entries.iter().zip(out.chunks_exact_mut(ENTRY_LEN)) {
        let row = entry.encode();
        md5.update(row);
        slot.copy_from_slice(&row);
    }
    let at = entries.len() * ENTRY_LEN;
    let digest: [u8; 16] = md5.finalize().into();
    out[at..at + 2].copy_from_slice(&MD5_MAGIC);
    out[at + 16..at + ENTRY_LEN].copy_from_slice(&digest);
    Ok(at + ENTRY_LEN)
}

/// The partitions the update engine uses, as `(offset, size)` pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OtaLayout {
    /// The otadata partition.
    pub otadata: Option<(u32, u32)>,
    /// `slots[n]`: partition `ota_n`.
    pub slots: [Option<(u32, u32)>; 16],
    /// Number of OTA app slots (`ota_0 .. ota_{app_count - 1}`, contiguous).
    pub app_count: u8,
    /// The factory app.
    pub factory: Option<(u32, u32)>,
    /// Airlift's data partition (label [`AIRLIFT_DATA_LABEL`], type data,
    /// subtype [`AIRLIFT_DATA_SUBTYPE`]).
    pub airlift_data: Option<(u32, u32)>,
}

impl OtaLayout {
    /// Collects the layout from a table's entries. Fails if otadata, an app
    /// subtype or the Airlift partition appears twice, if OTA slots are not
    /// contiguous from `ota_0` (ESP-IDF's bootloader counts the slots while
    /// its OTA API numbers them, so a gap makes them disagree), if the
    /// partition labelled `airlift` is not type data, subtype 0x40, or if
    /// any two of the partitions collected here overlap (checked here too
    /// because a device streaming the table with [`TableReader`] gets no
    /// other overlap check).
    pub fn from_entries<I>(entries: I) -> Result<Self, PartitionError>
    where
        I: IntoIterator<Item = PartitionEntry>,
    {
        let mut layout = Self {
            otadata: None,
            slots: [None; 16],
            app_count: 0,
            factory: None,
            airlift_data: None,
        };
        for entry in entries {
            if entry.label_str() == AIRLIFT_DATA_LABEL {
                if entry.kind != PartitionType::DATA || entry.subtype != AIRLIFT_DATA_SUBTYPE {
                    return Err(PartitionError::AirliftPartitionType {
                        kind: entry.kind,
                        subtype: entry.subtype,
                    });
                }
                if layout
                    .airlift_data
                    .replace((entry.offset, entry.size))
                    .is_some()
                {
                    return Err(PartitionError::DuplicateLabel { label: entry.label });
                }
            } else if entry.is_otadata() {
                if layout.otadata.replace((entry.offset, entry.size)).is_some() {
                    return Err(PartitionError::DuplicateOtadata { label: entry.label });
                }
            } else if let Some(slot) = entry.is_ota_app() {
                let place = &mut layout.slots[usize::from(slot)];
                if place.replace((entry.offset, entry.size)).is_some() {
                    return Err(PartitionError::DuplicateAppSubtype {
                        subtype: entry.subtype,
                        label: entry.label,
                    });
                }
            } else if entry.kind == PartitionType::APP
                && entry.subtype == app_subtype::FACTORY
                && layout.factory.replace((entry.offset, entry.size)).is_some()
            {
                return Err(PartitionError::DuplicateAppSubtype {
                    subtype: entry.subtype,
                    label: entry.label,
                });
            }
        }
        let count = layout
            .slots
            .iter()
            .take_while(|slot| slot.is_some())
            .count();
        if let Some(gap) = layout.slots[count..].iter().position(Option::is_some) {
            return Err(PartitionError::OtaSlotGap {
                missing: count as u8,
                present: (count + gap) as u8,
            });
        }
        layout.app_count = count as u8;
        layout.check_disjoint()?;
        Ok(layout)
    }

    /// The regions the engine writes must not share flash, even when the
    /// table was read row by row without [`validate_entries`].
    fn check_disjoint(&self) -> Result<(), PartitionError> {
        let named = [
            ("otadata", self.otadata),
            ("factory", self.factory),
            (AIRLIFT_DATA_LABEL, self.airlift_data),
        ];
        let slots = OTA_NAMES.iter().copied().zip(self.slots);
        let regions = || {
            named
                .into_iter()
                .chain(slots.clone())
                .filter_map(|(name, region)| region.map(|r| (name, r)))
        };
        for (i, (first, (a_offset, a_size))) in regions().enumerate() {
            for (second, (b_offset, b_size)) in regions().skip(i + 1) {
                let a_end = u64::from(a_offset) + u64::from(a_size);
                let b_end = u64::from(b_offset) + u64::from(b_size);
                if u64::from(a_offset) < b_end && u64::from(b_offset) < a_end {
                    return Err(PartitionError::RolesOverlap { first, second });
                }
            }
        }
        Ok(())
    }

    /// `(offset, size)` of OTA slot `n`, if the table has it.
    pub fn slot(&self, n: u8) -> Option<(u32, u32)> {
        self.slots.get(usize::from(n)).copied().flatten()
    }

    /// The OTA slot that contains flash address `addr`, e.g. to find the
    /// running slot from the address the app was mapped from.
    pub fn slot_containing(&self, addr: u32) -> Option<u8> {
        (0..self.app_count).find(|&n| {
            self.slot(n).is_some_and(|(offset, size)| {
                addr >= offset && u64::from(addr) < u64::from(offset) + u64::from(size)
            })
        })
    }
}

const MIB: u32 = 0x10_0000;

/// ESP-IDF's `partitions_two_ota.csv`, offsets as `gen_esp32part.py`
/// assigns them (its binary's MD5 row is `bf25822c0fa6d8641bd930251e06b4c4`).
pub const DEFAULT_TWO_OTA: [PartitionEntry; 6] = [
    PartitionEntry::preset(
        "nvs",
        PartitionType::DATA,
        data_subtype::NVS,
        0x9000,
        0x4000,
    ),
    PartitionEntry::preset(
        "otadata",
        PartitionType::DATA,
        data_subtype::OTA,
        0xD000,
        0x2000,
    ),
    PartitionEntry::preset(
        "phy_init",
        PartitionType::DATA,
        data_subtype::PHY,
        0xF000,
        0x1000,
    ),
    PartitionEntry::preset(
        "factory",
        PartitionType::APP,
        app_subtype::FACTORY,
        0x1_0000,
        MIB,
    ),
    PartitionEntry::preset(
        "ota_0",
        PartitionType::APP,
        app_subtype::OTA_0,
        0x11_0000,
        MIB,
    ),
    PartitionEntry::preset(
        "ota_1",
        PartitionType::APP,
        app_subtype::OTA_0 + 1,
        0x21_0000,
        MIB,
    ),
];

/// Airlift's default layout for 4 MiB flash: [`DEFAULT_TWO_OTA`] plus
/// Airlift's data partition right after `ota_1` (64 KiB at 0x310000).
pub const AIRLIFT_DEFAULT: [PartitionEntry; 7] = [
    DEFAULT_TWO_OTA[0],
    DEFAULT_TWO_OTA[1],
    DEFAULT_TWO_OTA[2],
    DEFAULT_TWO_OTA[3],
    DEFAULT_TWO_OTA[4],
    DEFAULT_TWO_OTA[5],
    PartitionEntry::preset(
        AIRLIFT_DATA_LABEL,
        PartitionType::DATA,
        AIRLIFT_DATA_SUBTYPE,
        0x31_0000,
        0x1_0000,
    ),
];

/// The layout of Airlift's ESP32 firmware for 4 MiB boards
/// (`firmware/partitions.csv`): ESP-IDF's `nvs`, `otadata` and `phy_init`,
/// no factory app, two 1.5 MiB OTA slots, and Airlift's data partition. The
/// last 896 KiB are left to the application.
pub const FIRMWARE_4MB: [PartitionEntry; 6] = [
    DEFAULT_TWO_OTA[0],
    DEFAULT_TWO_OTA[1],
    DEFAULT_TWO_OTA[2],
    PartitionEntry::preset(
        "ota_0",
        PartitionType::APP,
        app_subtype::OTA_0,
        0x1_0000,
        0x18_0000,
    ),
    PartitionEntry::preset(
        "ota_1",
        PartitionType::APP,
        app_subtype::OTA_0 + 1,
        0x19_0000,
        0x18_0000,
    ),
    AIRLIFT_DEFAULT[6],
];

/// Writes a label for messages (`"ota_0"`, or the raw bytes escaped).
struct ShowLabel<'a>(&'a Label);

impl fmt::Display for ShowLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(16);
        for chunk in self.0[..end].utf8_chunks() {
            f.write_str(chunk.valid())?;
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

/// Why a partition table or entry was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionError {
    /// A row starts with neither `aa 50`, `eb eb` nor `ff ff`.
    BadMagic {
        /// Byte offset of the row in the table.
        at: usize,
        /// The two bytes found.
        found: [u8; 2],
    },
    /// An MD5 row whose bytes 2..16 are not 0xFF.
    BadMd5Row {
        /// Byte offset of the row in the table.
        at: usize,
    },
    /// The stored MD5 does not match the entries.
    Md5Mismatch {
        /// Digest in the MD5 row.
        stored: [u8; 16],
        /// Digest of the entry rows.
        computed: [u8; 16],
    },
    /// An entry or a second MD5 row after the MD5 row.
    EntryAfterMd5 {
        /// Byte offset of the row in the table.
        at: usize,
    },
    /// The input ended before the end-of-table row.
    Truncated {
        /// Bytes given.
        len: usize,
    },
    /// More entries than fit.
    TooManyEntries {
        /// Entries given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A label that is not UTF-8, longer than 16 bytes or contains NUL.
    BadLabel {
        /// The label (first 16 bytes).
        label: Label,
    },
    /// A partition of size zero.
    ZeroSize {
        /// Its label.
        label: Label,
    },
    /// A partition that ends past 4 GiB.
    PastFlashEnd {
        /// Its label.
        label: Label,
        /// Its offset.
        offset: u32,
        /// Its size.
        size: u32,
    },
    /// An offset not aligned for the partition type.
    Misaligned {
        /// Its label.
        label: Label,
        /// Its offset.
        offset: u32,
        /// The required alignment.
        align: u32,
    },
    /// An app or otadata size that is not a whole number of 4 KiB sectors.
    SizeNotSectors {
        /// Its label.
        label: Label,
        /// Its size.
        size: u32,
    },
    /// An otadata partition that is not exactly two sectors.
    OtadataSize {
        /// Its label.
        label: Label,
        /// Its size.
        size: u32,
    },
    /// A partition inside the bootloader/partition-table region.
    BelowTableEnd {
        /// Its label.
        label: Label,
        /// Its offset.
        offset: u32,
    },
    /// Two partitions with the same label.
    DuplicateLabel {
        /// The label.
        label: Label,
    },
    /// Two partitions share flash.
    Overlap {
        /// The lower partition.
        first: Label,
        /// Where it ends.
        first_end: u64,
        /// The partition starting inside it.
        second: Label,
        /// Where that one starts.
        second_offset: u32,
    },
    /// Two otadata partitions.
    DuplicateOtadata {
        /// The second one's label.
        label: Label,
    },
    /// Two app partitions with the same subtype.
    DuplicateAppSubtype {
        /// The subtype.
        subtype: u8,
        /// The second one's label.
        label: Label,
    },
    /// `ota_{missing}` is absent while `ota_{present}` exists.
    OtaSlotGap {
        /// The first missing slot.
        missing: u8,
        /// A slot present after the gap.
        present: u8,
    },
    /// Two partitions the update engine uses share flash (found while
    /// collecting an [`OtaLayout`]).
    RolesOverlap {
        /// Role of the first (`otadata`, `factory`, `airlift`, `ota_N`).
        first: &'static str,
        /// Role of the second.
        second: &'static str,
    },
    /// The partition labelled `airlift` is not type data, subtype 0x40.
    AirliftPartitionType {
        /// Its type.
        kind: PartitionType,
        /// Its subtype.
        subtype: u8,
    },
}

/// Bytes as lowercase hex, for messages.
pub(crate) struct Hex<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Display for PartitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic { at, found } => write!(
                f,
                "not a partition table row at byte {at}: magic is {:02x} {:02x}, expected aa 50 (entry), eb eb (md5) or ff ff (end)",
                found[0], found[1]
            ),
            Self::BadMd5Row { at } => write!(
                f,
                "malformed md5 row at byte {at}: bytes 2..16 must be 0xff"
            ),
            Self::Md5Mismatch { stored, computed } => write!(
                f,
                "partition table md5 mismatch: stored {}, computed {}",
                Hex(stored),
                Hex(computed)
            ),
            Self::EntryAfterMd5 { at } => write!(
                f,
                "row at byte {at} follows the md5 row, expected the end of the table"
            ),
            Self::Truncated { len } => write!(
                f,
                "partition table truncated: {len} bytes end before the end-of-table row"
            ),
            Self::TooManyEntries { count, max } => {
                write!(f, "{count} partitions, at most {max} fit in the table")
            }
            Self::BadLabel { label } => write!(
                f,
                "bad partition label \"{}\": expected at most 16 bytes of UTF-8 without NUL",
                ShowLabel(label)
            ),
            Self::ZeroSize { label } => write!(f, "partition {} has size 0", ShowLabel(label)),
            Self::PastFlashEnd {
                label,
                offset,
                size,
            } => write!(
                f,
                "partition {} (offset 0x{offset:x}, size 0x{size:x}) ends past 4 GiB",
                ShowLabel(label)
            ),
            Self::Misaligned {
                label,
                offset,
                align,
            } => write!(
                f,
                "partition {} offset 0x{offset:x} is not aligned to 0x{align:x}",
                ShowLabel(label)
            ),
            Self::SizeNotSectors { label, size } => write!(
                f,
                "partition {} size 0x{size:x} is not a multiple of 0x1000",
                ShowLabel(label)
            ),
            Self::OtadataSize { label, size } => write!(
                f,
                "otadata partition {} has size 0x{size:x}, expected 0x2000",
                ShowLabel(label)
            ),
            Self::BelowTableEnd { label, offset } => write!(
                f,
                "partition {} offset 0x{offset:x} is below 0x{:x}, the end of the partition table",
                ShowLabel(label),
                TABLE_OFFSET + TABLE_SECTOR_LEN
            ),
            Self::DuplicateLabel { label } => {
                write!(f, "two partitions are labelled {}", ShowLabel(label))
            }
            Self::Overlap {
                first,
                first_end,
                second,
                second_offset,
            } => write!(
                f,
                "partition {} starts at 0x{second_offset:x}, inside {} which ends at 0x{first_end:x}",
                ShowLabel(second),
                ShowLabel(first)
            ),
            Self::DuplicateOtadata { label } => write!(
                f,
                "second otadata partition {}: a table has at most one",
                ShowLabel(label)
            ),
            Self::DuplicateAppSubtype { subtype, label } => write!(
                f,
                "app partition {} repeats subtype 0x{subtype:02x}",
                ShowLabel(label)
            ),
            Self::OtaSlotGap { missing, present } => write!(
                f,
                "ota_{present} exists but ota_{missing} does not: OTA slots must be contiguous from ota_0"
            ),
            Self::RolesOverlap { first, second } => {
                write!(f, "partitions {first} and {second} overlap")
            }
            Self::AirliftPartitionType { kind, subtype } => write!(
                f,
                "partition {AIRLIFT_DATA_LABEL} has type 0x{:02x} subtype 0x{subtype:02x}, expected data (0x01) subtype 0x{AIRLIFT_DATA_SUBTYPE:02x}",
                kind.0
            ),
        }
    }
}

impl core::error::Error for PartitionError {}
