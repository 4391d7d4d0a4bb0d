//! What a device's flash says: partition table, otadata, both slots, the
//! engine's state, the boot log and the client's notes. `airlift flash
//! inspect` prints it; the device page shows it. What it says is
//! `airlift_client::status` (the firmware's page says the same); this
//! module reads all of it and renders it for a terminal.

use std::fmt::Write as _;

use airlift_client::notes::NoteStore;
use airlift_client::status::All;
use airlift_engine::{Config, Device};
use embedded_storage::nor_flash::NorFlash;

use crate::AgentError;

pub use airlift_client::status::{
    BootLogRow, EngineReport, HistoryReport, InstallReport, NotesReport, OtadataCopy,
    OtadataReport, OutcomeReport, PartitionRow, PendingReport, SlotReport,
};

/// Everything `airlift flash inspect` shows: every row of every list.
pub type Report = airlift_client::status::Report<All>;

/// Reads everything from a device's flash (changes nothing).
pub fn report<F: NorFlash>(flash: &mut F, max_attempts: u8) -> Result<Report, AgentError> {
    let config = Config {
        max_attempts,
        ..Config::default()
    };
    let mut dev = Device::open(&mut *flash, config)?;
    let notes = dev.layout().records.map(NoteStore::new).transpose()?;
    Ok(Report::read(&mut dev, notes.as_ref())?)
}

/// The report as text for a terminal.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "partition table (0x8000):");
    for p in &r.partitions {
        let _ = writeln!(
            s,
            "  {:<10} {:<5} {:<9} {:#09x} {:>8} bytes",
            p.label, p.kind, p.subtype, p.offset, p.size
        );
    }
    let _ = writeln!(s, "otadata: selects {}", r.otadata.selected);
    for (i, c) in r.otadata.copies.iter().enumerate() {
        let active = if r.otadata.active_copy == Some(i) {
            " (active)"
        } else {
            ""
        };
        if c.seq == u32::MAX {
            let _ = writeln!(s, "  copy {i}: erased");
        } else {
            let _ = writeln!(
                s,
                "  copy {i}: seq {} state {}{}{active}",
                c.seq,
                c.state,
                if c.valid { "" } else { " (not valid)" }
            );
        }
    }
    let _ = writeln!(s, "slots:");
    for slot in &r.slots {
        match slot.content {
            "image" => {
                let _ = writeln!(
                    s,
                    "  {:<8} {} {} (security version {}, {}, {} bytes) sha256 {} {}",
                    slot.slot,
                    slot.project.as_deref().unwrap_or("-"),
                    slot.version.as_deref().unwrap_or("-"),
                    slot.security_version.unwrap_or(0),
                    slot.chip.unwrap_or("-"),
                    slot.image_len.unwrap_or(0),
                    slot.sha256.as_deref().unwrap_or("-"),
                    if slot.valid {
                        "valid".to_string()
                    } else {
                        format!("INVALID: {}", slot.error.as_deref().unwrap_or("-"))
                    }
                );
            }
            "empty" => {
                let _ = writeln!(s, "  {:<8} empty", slot.slot);
            }
            _ => {
                let _ = writeln!(
                    s,
                    "  {:<8} not an image: {}",
                    slot.slot,
                    slot.error.as_deref().unwrap_or("-")
                );
            }
        }
    }
    let e = &r.engine;
    let _ = writeln!(
        s,
        "engine: {}, boot counter {}/{}, minimum security version {}, trusted keys [{}]",
        e.trial_slot.as_ref().map_or_else(
            || "running image confirmed".to_string(),
            |t| format!("{t} on trial")
        ),
        e.boot_counter,
        e.max_attempts,
        e.min_security_version,
        e.trusted_keys
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(i) = &e.install {
        let _ = writeln!(
            s,
            "  interrupted install into {}: {} of {} bytes of image {}",
            i.slot, i.offset, i.size, i.image_sha256
        );
    }
    let _ = writeln!(s, "boot log ({} records):", r.boot_log.len());
    for b in &r.boot_log {
        let _ = writeln!(
            s,
            "  {} {:<6} {:<20} attempt {} {} {}",
            b.timestamp, b.slot, b.outcome, b.attempt, b.version, b.sha_prefix
        );
    }
    if !r.notes.history.is_empty() {
        let _ = writeln!(s, "update history:");
        for h in &r.notes.history {
            let _ = writeln!(
                s,
                "  {} {} from {} -> {}{} {}",
                h.at,
                h.version,
                h.source,
                h.result,
                h.reason.map_or(String::new(), |r| format!(" ({r})")),
                h.detail
            );
        }
    }
    s
}
