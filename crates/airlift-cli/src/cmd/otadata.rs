//! `airlift otadata ...`

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlift_format::otadata::{self, BootTarget, OtaSelectEntry};
use airlift_format::partition::{TABLE_OFFSET, TABLE_SECTOR_LEN, Table};
use anyhow::{Context, bail};
use clap::Subcommand;
use serde::Serialize;

use super::partitions::locate_binary;

/// `airlift otadata` subcommands.
#[derive(Subcommand)]
pub enum OtadataCommand {
    /// Print both otadata entries, which is valid, and which slot the
    /// ESP-IDF bootloader boots.
    ///
    /// FILE is the otadata partition (8 KiB) or a whole flash image; for an
    /// image, otadata and the number of OTA slots come from the partition
    /// table at 0x8000. Exits 0 when the entries could be read (whatever
    /// they say), 2 when they cannot.
    Inspect {
        /// The otadata partition or a flash image.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Number of OTA app slots (default: from the flash image's
        /// partition table, or 2 for a bare otadata partition).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=16))]
        slots: Option<u8>,
    },
}

/// Runs an `airlift otadata` subcommand.
pub fn run(command: OtadataCommand) -> anyhow::Result<ExitCode> {
    match command {
        OtadataCommand::Inspect { file, json, slots } => inspect(&file, json, slots),
    }
}

/// What the file held.
struct Loaded {
    source: &'static str,
    otadata_offset: Option<u32>,
    slots: u8,
    slots_from: &'static str,
    /// `Some(true/false)` when a table says whether a factory app exists.
    has_factory: Option<bool>,
    entries: [OtaSelectEntry; 2],
}

fn load(bytes: &[u8], slots: Option<u8>) -> anyhow::Result<Loaded> {
    // Anything that cannot hold a partition table is taken as otadata itself.
    if bytes.len() <= (TABLE_OFFSET + TABLE_SECTOR_LEN) as usize {
        let entries = otadata::decode_partition(bytes)?;
        return Ok(Loaded {
            source: "otadata",
            otadata_offset: None,
            slots: slots.unwrap_or(2),
            slots_from: if slots.is_some() {
                "--slots"
            } else {
                "default"
            },
            has_factory: None,
            entries,
        });
    }
    let Some((_, table)) = locate_binary(bytes) else {
        bail!(
            "{} bytes is larger than an otadata partition, and there is no partition table at 0x8000",
            bytes.len()
        );
    };
    let table = Table::parse(table).context("invalid partition table at 0x8000")?;
    let layout = table.ota_layout()?;
    let Some((offset, size)) = layout.otadata else {
        bail!("the partition table at 0x8000 has no otadata partition (type data, subtype ota)");
    };
    let start = offset as usize;
    let part = bytes
        .get(start..start.saturating_add(size as usize))
        .with_context(|| {
            format!(
                "the image is {} bytes and ends before otadata at 0x{offset:x}..0x{:x}",
                bytes.len(),
                u64::from(offset) + u64::from(size)
            )
        })?;
    let entries = otadata::decode_partition(part)?;
    let (slots, slots_from) = match slots {
        Some(n) => (n, "--slots"),
        None => (layout.app_count, "partition table"),
    };
    Ok(Loaded {
        source: "flash_image",
        otadata_offset: Some(offset),
        slots,
        slots_from,
        has_factory: Some(layout.factory.is_some()),
        entries,
    })
}

fn inspect(path: &Path, json: bool, slots: Option<u8>) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let loaded =
        load(&bytes, slots).with_context(|| format!("cannot inspect {}", path.display()))?;
    let report = Report::new(&loaded);
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{}", render_text(path, &report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The JSON report; field names are a stable interface for scripts.
#[derive(Serialize)]
struct Report {
    /// `otadata` (a bare partition) or `flash_image`.
    source: &'static str,
    otadata_offset: Option<u32>,
    slots: u8,
    /// `partition table`, `--slots` or `default`.
    slots_from: &'static str,
    entries: Vec<EntryReport>,
    /// The copy the bootloader uses (`null`: none is valid).
    active: Option<usize>,
    /// The OTA slot that boots (`null`: the fallback boots).
    boot_slot: Option<u8>,
    /// What boots, in words: `ota_1`, `factory`, `ota_0 (no factory app)`
    /// or `factory app, or ota_0 if there is none`.
    boot: String,
}

#[derive(Serialize)]
struct EntryReport {
    copy: usize,
    blank: bool,
    seq: u32,
    state: String,
    state_raw: u32,
    crc: u32,
    crc_expected: u32,
    crc_valid: bool,
    valid: bool,
    /// The slot this entry selects (`null` for a blank entry).
    slot: Option<u8>,
}

impl Report {
    fn new(loaded: &Loaded) -> Report {
        let entries = &loaded.entries;
        let boot_target = otadata::boot_slot(entries, loaded.slots);
        let boot = match (boot_target, loaded.has_factory) {
            (BootTarget::Ota(n), _) => format!("ota_{n}"),
            (BootTarget::Fallback, Some(true)) => "factory".to_string(),
            (BootTarget::Fallback, Some(false)) => "ota_0 (no factory app)".to_string(),
            (BootTarget::Fallback, None) => "factory app, or ota_0 if there is none".to_string(),
        };
        Report {
            source: loaded.source,
            otadata_offset: loaded.otadata_offset,
            slots: loaded.slots,
            slots_from: loaded.slots_from,
            entries: entries
                .iter()
                .enumerate()
                .map(|(copy, e)| EntryReport {
                    copy,
                    blank: e.encode() == [0xFF; otadata::ENTRY_LEN],
                    seq: e.seq,
                    state: e.state.to_string(),
                    state_raw: e.state.raw(),
                    crc: e.crc,
                    crc_expected: otadata::crc32_seq(e.seq),
                    crc_valid: e.crc_ok(),
                    valid: e.is_valid(),
                    slot: e.slot(loaded.slots),
                })
                .collect(),
            active: otadata::active_entry(entries),
            boot_slot: match boot_target {
                BootTarget::Ota(n) => Some(n),
                BootTarget::Fallback => None,
            },
            boot,
        }
    }
}

fn render_text(path: &Path, report: &Report) -> String {
    let mut out = String::new();
    let place = match report.otadata_offset {
        Some(offset) => format!("flash image, otadata at 0x{offset:x}"),
        None => "otadata partition".to_string(),
    };
    let _ = writeln!(
        out,
        "{}: {place}, {} OTA slots ({})",
        path.display(),
        report.slots,
        report.slots_from
    );
    for e in &report.entries {
        let sector = e.copy * otadata::SECTOR_SIZE as usize;
        if e.blank {
            let _ = writeln!(out, "  copy {} @0x{sector:04x}: blank (erased)", e.copy);
            continue;
        }
        let crc = if e.crc_valid {
            format!("crc 0x{:08x} ok", e.crc)
        } else {
            format!(
                "crc 0x{:08x} WRONG, expected 0x{:08x}",
                e.crc, e.crc_expected
            )
        };
        let slot = e.slot.map_or_else(String::new, |n| format!(" -> ota_{n}"));
        let verdict = if e.valid { "valid" } else { "not valid" };
        let _ = writeln!(
            out,
            "  copy {} @0x{sector:04x}: seq {}{slot}, state {}, {crc}: {verdict}",
            e.copy, e.seq, e.state
        );
    }
    let active = report
        .active
        .map_or_else(|| "none".to_string(), |copy| format!("copy {copy}"));
    let _ = writeln!(out, "active: {active}");
    let _ = writeln!(out, "boots: {}", report.boot);
    out
}
