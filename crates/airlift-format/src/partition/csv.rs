//! The CSV form of a partition table, as ESP-IDF's `gen_esp32part.py` reads
//! and writes it (`std` feature).
//!
//! ```text
//! # Name,   Type, SubType, Offset,  Size, Flags
//! nvs,      data, nvs,     0x9000,  0x4000,
//! otadata,  data, ota,     ,        0x2000,
//! ota_0,    app,  ota_0,   ,        1M,    encrypted
//! ```
//!
//! Types and subtypes by name or number; numbers in decimal or `0x` hex with
//! an optional `K` or `M` suffix; an empty offset follows the previous
//! partition (the first one the table sector, 0x9000), aligned to 64 KiB for
//! apps and 4 KiB otherwise; an empty data subtype means `undefined`; flags
//! `encrypted` and `readonly` separated by `:`. As an Airlift extension the
//! flags column also takes a number, so [`render_csv`] can write flag bits
//! ESP-IDF does not name and [`parse_csv`] reads them back.

use std::fmt;
use std::string::{String, ToString};
use std::vec::Vec;

use super::{
    APP_ALIGN, DATA_ALIGN, FLAG_ENCRYPTED, FLAG_READONLY, PartitionEntry, PartitionError,
    PartitionType, TABLE_OFFSET, TABLE_SECTOR_LEN, data_subtype, label_from_str, subtype_from_name,
    subtype_name, validate_entries,
};

const FLAG_NAMES: [(u32, &str); 2] = [(FLAG_ENCRYPTED, "encrypted"), (FLAG_READONLY, "readonly")];

/// Why a CSV partition table was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvError {
    /// A problem on one line (1-based line number).
    Line {
        /// Line number, counting from 1.
        line: usize,
        /// What is wrong with it.
        problem: LineProblem,
    },
    /// The entries parse but do not form a valid table (overlaps, duplicates).
    Table(PartitionError),
}

/// What is wrong with one CSV line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// A required column is empty.
    Missing(&'static str),
    /// More than six columns.
    TooManyColumns(usize),
    /// A column that should be a number is not one.
    BadNumber {
        /// Column name.
        column: &'static str,
        /// The text found.
        value: String,
    },
    /// A type that is neither a known name nor a number 0..=254.
    UnknownType(String),
    /// A subtype that is neither a known name for the type nor a number 0..=255.
    UnknownSubtype(String),
    /// A flag other than `encrypted`, `readonly` or a number.
    UnknownFlag(String),
    /// A name longer than 16 bytes.
    NameTooLong(String),
    /// The offset is below the end of the previous partition (or of the
    /// partition table for the first one).
    OffsetBelowPrevious {
        /// The offset given.
        offset: u32,
        /// Where the previous partition (or the table) ends.
        previous_end: u64,
    },
    /// The entry itself is invalid (alignment, size, ...).
    Entry(PartitionError),
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Line { line, problem } => write!(f, "line {line}: {problem}"),
            Self::Table(err) => err.fmt(f),
        }
    }
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(column) => write!(f, "the {column} column is empty"),
            Self::TooManyColumns(n) => write!(
                f,
                "{n} columns, expected at most 6 (name, type, subtype, offset, size, flags)"
            ),
            Self::BadNumber { column, value } => write!(
                f,
                "{column} {value:?} is not a number (expected e.g. 0x9000, 4096, 64K or 1M)"
            ),
            Self::UnknownType(value) => write!(
                f,
                "unknown type {value:?}: expected app, data, bootloader, partition_table or a number below 0xff"
            ),
            Self::UnknownSubtype(value) => {
                write!(
                    f,
                    "unknown subtype {value:?}: expected a name for the type or a number"
                )
            }
            Self::UnknownFlag(value) => {
                write!(f, "unknown flag {value:?}: expected encrypted or readonly")
            }
            Self::NameTooLong(value) => {
                write!(f, "name {value:?} is longer than 16 bytes")
            }
            Self::OffsetBelowPrevious {
                offset,
                previous_end,
            } => write!(
                f,
                "offset 0x{offset:x} is below 0x{previous_end:x}, where the previous partition ends"
            ),
            Self::Entry(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for CsvError {}

/// Parses a number the way `gen_esp32part.py` does: decimal or `0x` hex,
/// optionally followed by `K` (x1024) or `M` (x1024 x 1024).
fn parse_number(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let (digits, multiplier) = if let Some(rest) = lower.strip_suffix('k') {
        (rest.to_string(), 1024)
    } else if let Some(rest) = lower.strip_suffix('m') {
        (rest.to_string(), 1024 * 1024)
    } else {
        (lower, 1)
    };
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()?
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u64>().ok()?
    };
    value.checked_mul(multiplier)
}

fn parse_u32(column: &'static str, text: &str) -> Result<u32, LineProblem> {
    parse_number(text)
        .and_then(|value| u32::try_from(value).ok())
        .ok_or_else(|| LineProblem::BadNumber {
            column,
            value: text.to_string(),
        })
}

fn parse_type(text: &str) -> Result<PartitionType, LineProblem> {
    let lower = text.to_ascii_lowercase();
    if let Some(kind) = (0..=0xFEu8)
        .map(PartitionType)
        .find(|kind| kind.name() == Some(lower.as_str()))
    {
        return Ok(kind);
    }
    parse_number(text)
        .and_then(|value| u8::try_from(value).ok())
        .filter(|&value| value != 0xFF)
        .map(PartitionType)
        .ok_or_else(|| LineProblem::UnknownType(text.to_string()))
}

fn parse_subtype(kind: PartitionType, text: &str) -> Result<u8, LineProblem> {
    if text.is_empty() {
        return if kind == PartitionType::APP {
            Err(LineProblem::Missing("subtype"))
        } else {
            Ok(data_subtype::UNDEFINED)
        };
    }
    if let Some(value) = parse_number(text) {
        return u8::try_from(value).map_err(|_| LineProblem::UnknownSubtype(text.to_string()));
    }
    subtype_from_name(kind, &text.to_ascii_lowercase())
        .ok_or_else(|| LineProblem::UnknownSubtype(text.to_string()))
}

fn parse_flags(text: &str) -> Result<u32, LineProblem> {
    let mut flags = 0;
    for flag in text.split(':').map(str::trim).filter(|f| !f.is_empty()) {
        if let Some((bit, _)) = FLAG_NAMES.iter().find(|(_, name)| *name == flag) {
            flags |= bit;
        } else if let Some(value) = parse_number(flag).and_then(|v| u32::try_from(v).ok()) {
            flags |= value;
        } else {
            return Err(LineProblem::UnknownFlag(flag.to_string()));
        }
    }
    Ok(flags)
}

/// Parses one line into an entry whose offset may still be unassigned.
fn parse_line(line: &str) -> Result<(PartitionEntry, Option<u32>), LineProblem> {
    let columns: Vec<&str> = line.split(',').map(str::trim).collect();
    if columns.len() > 6 {
        return Err(LineProblem::TooManyColumns(columns.len()));
    }
    let column = |i: usize| columns.get(i).copied().unwrap_or("");
    let name = column(0);
    let label = label_from_str(name).ok_or_else(|| LineProblem::NameTooLong(name.to_string()))?;
    if column(1).is_empty() {
        return Err(LineProblem::Missing("type"));
    }
    let kind = parse_type(column(1))?;
    let subtype = parse_subtype(kind, column(2))?;
    let offset = match column(3) {
        "" => None,
        text => Some(parse_u32("offset", text)?),
    };
    let size = match column(4) {
        "" => return Err(LineProblem::Missing("size")),
        text => parse_u32("size", text)?,
    };
    let flags = parse_flags(column(5))?;
    let entry = PartitionEntry {
        kind,
        subtype,
        offset: offset.unwrap_or(0),
        size,
        label,
        flags,
    };
    Ok((entry, offset))
}

/// Parses a CSV partition table and assigns missing offsets exactly as
/// `gen_esp32part.py` does, then validates the result like
/// [`build`](super::build) would, so every `Ok` can be built.
pub fn parse_csv(text: &str) -> Result<Vec<PartitionEntry>, CsvError> {
    let mut entries = Vec::new();
    let mut last_end = u64::from(TABLE_OFFSET + TABLE_SECTOR_LEN);
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let at_line = |problem| CsvError::Line { line, problem };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (mut entry, offset) = parse_line(trimmed).map_err(at_line)?;
        entry.offset = match offset {
            Some(offset) if u64::from(offset) < last_end => {
                return Err(at_line(LineProblem::OffsetBelowPrevious {
                    offset,
                    previous_end: last_end,
                }));
            }
            Some(offset) => offset,
            None => {
                let align = u64::from(if entry.kind == PartitionType::APP {
                    APP_ALIGN
                } else {
                    DATA_ALIGN
                });
                let aligned = last_end.div_ceil(align) * align;
                u32::try_from(aligned).map_err(|_| {
                    at_line(LineProblem::Entry(PartitionError::PastFlashEnd {
                        label: entry.label,
                        offset: u32::MAX,
                        size: entry.size,
                    }))
                })?
            }
        };
        entry
            .validate()
            .map_err(|err| at_line(LineProblem::Entry(err)))?;
        last_end = entry.end();
        entries.push(entry);
    }
    validate_entries(|| entries.iter().copied()).map_err(CsvError::Table)?;
    Ok(entries)
}

fn size_text(size: u32) -> String {
    if size.is_multiple_of(0x10_0000) {
        std::format!("{}M", size / 0x10_0000)
    } else if size.is_multiple_of(0x400) {
        std::format!("{}K", size / 0x400)
    } else {
        std::format!("0x{size:x}")
    }
}

/// Renders entries as CSV in `gen_esp32part.py`'s layout (offsets in hex,
/// sizes with K/M suffixes where exact, names for known types and
/// subtypes). [`parse_csv`] reads the result back to the same entries when
/// the labels are valid CSV names (no `,`, no surrounding spaces, not
/// starting with `#`).
pub fn render_csv(entries: &[PartitionEntry]) -> String {
    let mut out =
        String::from("# ESP-IDF Partition Table\n# Name, Type, SubType, Offset, Size, Flags\n");
    for entry in entries {
        let kind = entry
            .kind
            .name()
            .map_or_else(|| std::format!("0x{:02x}", entry.kind.0), str::to_string);
        let subtype = subtype_name(entry.kind, entry.subtype)
            .map_or_else(|| std::format!("0x{:02x}", entry.subtype), str::to_string);
        let mut flags: Vec<String> = FLAG_NAMES
            .iter()
            .filter(|(bit, _)| entry.flags & bit != 0)
            .map(|(_, name)| (*name).to_string())
            .collect();
        let other = entry.flags & !(FLAG_ENCRYPTED | FLAG_READONLY);
        if other != 0 {
            flags.push(std::format!("0x{other:x}"));
        }
        out.push_str(&std::format!(
            "{},{},{},0x{:x},{},{}\n",
            entry.label_str(),
            kind,
            subtype,
            entry.offset,
            size_text(entry.size),
            flags.join(":")
        ));
    }
    out
}
