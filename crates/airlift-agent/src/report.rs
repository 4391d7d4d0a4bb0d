//! What a device's flash says: partition table, otadata, both slots, the
//! engine's state, the boot log and the agent's notes. `airlift flash
//! inspect` prints it; the device page shows it.

use std::fmt::Write as _;

use airlift_engine::{AppSlot, Config, Device, Layout};
use airlift_format::manifest::key_id;
use airlift_format::partition::subtype_name;
use embedded_storage::nor_flash::NorFlash;
use serde::Serialize;

use crate::provision::read_table;
use crate::{AgentError, hex};
use airlift_client::notes::{HistoryEntry, NoteStore, Notes, Outcome, Pending};
use airlift_engine::sim::bootloader::{SlotContent, read_slot};
use airlift_protocol::{EventKind, Reason};

/// One partition table row.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionRow {
    /// Label.
    pub label: String,
    /// Type name (`app`, `data`) or number.
    pub kind: String,
    /// Subtype name or number.
    pub subtype: String,
    /// Offset in bytes.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// One otadata copy.
#[derive(Debug, Clone, Serialize)]
pub struct OtadataCopy {
    /// Sequence number (`4294967295` when erased).
    pub seq: u32,
    /// State name.
    pub state: String,
    /// Whether ESP-IDF accepts the entry (CRC matches, not erased or invalid).
    pub valid: bool,
}

/// Both otadata copies and what they select.
#[derive(Debug, Clone, Serialize)]
pub struct OtadataReport {
    /// The two copies.
    pub copies: Vec<OtadataCopy>,
    /// The copy ESP-IDF treats as active.
    pub active_copy: Option<usize>,
    /// The slot the bootloader selects.
    pub selected: String,
}

/// One app slot and its image.
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    /// `ota_0`, `ota_1`, `factory`.
    pub slot: String,
    /// Offset in bytes.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// `empty`, `image` or `invalid`.
    pub content: String,
    /// Checksum and appended digest valid (the bootloader would start it).
    pub valid: bool,
    /// Project name from the app descriptor.
    pub project: Option<String>,
    /// Version from the app descriptor.
    pub version: Option<String>,
    /// Security version from the app descriptor.
    pub security_version: Option<u32>,
    /// Chip name.
    pub chip: Option<String>,
    /// SHA-256 of the image, lowercase hex.
    pub sha256: Option<String>,
    /// Image length in bytes.
    pub image_len: Option<u32>,
    /// Why it is not an image, for `invalid`.
    pub error: Option<String>,
}

/// The engine's state from the data partition.
#[derive(Debug, Clone, Serialize)]
pub struct EngineReport {
    /// The slot on trial (activated, not confirmed).
    pub trial_slot: Option<String>,
    /// Boot attempts of the image on trial (the boot counter).
    pub boot_counter: u8,
    /// Attempts allowed before rollback.
    pub max_attempts: u8,
    /// Minimum security version for installs.
    pub min_security_version: u32,
    /// Key ids of the trusted keys stored on the device.
    pub trusted_keys: Vec<String>,
    /// An interrupted install the next install of the same image resumes.
    pub install: Option<InstallReport>,
}

/// An interrupted install, as its progress record says.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// The target slot.
    pub slot: String,
    /// Bytes written and vouched for (where a resume continues).
    pub offset: u32,
    /// The image's size.
    pub size: u32,
    /// The image's SHA-256 (from its signed manifest), hex.
    pub image_sha256: String,
}

/// One boot-log record.
#[derive(Debug, Clone, Serialize)]
pub struct BootLogRow {
    /// Unix seconds.
    pub timestamp: u64,
    /// Slot that ran.
    pub slot: String,
    /// `confirmed`, `trial`, `rolled_back`, ...
    pub outcome: String,
    /// Attempt number for trial boots.
    pub attempt: u8,
    /// Version of the image.
    pub version: String,
    /// First 8 bytes of its SHA-256, hex.
    pub sha_prefix: String,
}

/// Everything `airlift flash inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Partition table rows.
    pub partitions: Vec<PartitionRow>,
    /// otadata.
    pub otadata: OtadataReport,
    /// App slots, factory first.
    pub slots: Vec<SlotReport>,
    /// Engine state.
    pub engine: EngineReport,
    /// Boot log, oldest first.
    pub boot_log: Vec<BootLogRow>,
    /// The device's notes (pending update, last result, history).
    pub notes: NotesReport,
}

/// The update in progress or on trial, as the notes keep it.
#[derive(Debug, Clone, Serialize)]
pub struct PendingReport {
    /// The deployment it belongs to (`None` for a local upload).
    pub deployment: Option<u64>,
    /// SHA-256 of the new image, lowercase hex.
    pub sha256: String,
    /// Version string of the new image.
    pub version: String,
    /// `server`, `upload` or `pull`.
    pub source: &'static str,
    /// Trial boots of the image in the boot log before this attempt.
    pub trials_before: u32,
}

/// The last result, as the notes keep it.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeReport {
    /// The deployment, when the server assigned the update.
    pub deployment: Option<u64>,
    /// `confirmed`, `rolled_back` or `failed`.
    pub kind: EventKind,
    /// Why, for failures and rollbacks.
    pub reason: Option<Reason>,
}

/// One line of the update history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    /// Unix seconds.
    pub at: u64,
    /// Version of the image the attempt installed.
    pub version: String,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// `server`, `upload` or `pull`.
    pub source: &'static str,
    /// The deployment, when there was one.
    pub deployment: Option<u64>,
    /// `confirmed`, `rolled_back` or `failed`.
    pub result: EventKind,
    /// Why, for failures and rollbacks.
    pub reason: Option<Reason>,
    /// Human-readable detail.
    pub detail: String,
}

/// The device's notes: what `airlift-client` keeps in flash about updates.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NotesReport {
    /// The update being installed or on trial.
    pub pending: Option<PendingReport>,
    /// The last result, repeated at check-ins.
    pub last_result: Option<OutcomeReport>,
    /// Recent attempts, oldest first.
    pub history: Vec<HistoryReport>,
}

impl NotesReport {
    fn new(notes: &Notes, history: Vec<HistoryReport>) -> NotesReport {
        NotesReport {
            pending: notes.pending.as_ref().map(|p: &Pending| PendingReport {
                deployment: p.deployment,
                sha256: hex(&p.sha256),
                version: p.version.to_string(),
                source: p.source.as_str(),
                trials_before: p.trials_before,
            }),
            last_result: notes.last_result.map(|o: Outcome| OutcomeReport {
                deployment: o.deployment,
                kind: o.kind,
                reason: o.reason,
            }),
            history,
        }
    }
}

impl From<&HistoryEntry> for HistoryReport {
    fn from(h: &HistoryEntry) -> HistoryReport {
        HistoryReport {
            at: h.at,
            version: h.version.to_string(),
            sha256: hex(&h.sha256),
            source: h.source.as_str(),
            deployment: h.deployment,
            result: h.result,
            reason: h.reason,
            detail: h.detail.to_string(),
        }
    }
}

fn slot_report<F: NorFlash>(
    flash: &mut F,
    layout: &Layout,
    slot: AppSlot,
) -> Result<Option<SlotReport>, AgentError> {
    let Some(region) = layout.slot(slot) else {
        return Ok(None);
    };
    let content = read_slot(flash, region)?;
    let mut r = SlotReport {
        slot: slot.to_string(),
        offset: region.offset,
        size: region.size,
        content: String::new(),
        valid: false,
        project: None,
        version: None,
        security_version: None,
        chip: None,
        sha256: None,
        image_len: None,
        error: None,
    };
    match content {
        SlotContent::Empty => r.content = "empty".into(),
        SlotContent::Invalid(e) => {
            r.content = "invalid".into();
            r.error = Some(e);
        }
        SlotContent::Image(info) => {
            r.content = "image".into();
            r.valid = info.is_valid();
            r.chip = Some(info.chip().name().into());
            r.sha256 = Some(hex(&info.file_sha256));
            r.image_len = Some(info.image_len);
            if let Some(d) = info.app_desc {
                r.project = Some(d.project_name().into());
                r.version = Some(d.version().into());
                r.security_version = Some(d.secure_version());
            }
            if !info.checksum_valid() {
                r.error = Some("checksum does not match".into());
            } else if !info.digest_valid() {
                r.error = Some("appended sha-256 digest does not match".into());
            }
        }
    }
    Ok(Some(r))
}

/// Reads everything from a device's flash (changes nothing).
pub fn report<F: NorFlash>(flash: &mut F, max_attempts: u8) -> Result<Report, AgentError> {
    let entries = read_table(flash)?;
    let partitions = entries
        .iter()
        .map(|e| PartitionRow {
            label: e.label_str().into(),
            kind: e
                .kind
                .name()
                .map_or_else(|| format!("{:#04x}", e.kind.0), Into::into),
            subtype: subtype_name(e.kind, e.subtype)
                .map_or_else(|| format!("{:#04x}", e.subtype), Into::into),
            offset: e.offset,
            size: e.size,
        })
        .collect();
    let config = Config {
        max_attempts,
        ..Config::default()
    };
    let (layout, status, boot_log, trusted_keys) = {
        let mut dev = Device::open(&mut *flash, config)?;
        let status = dev.status()?;
        let mut boot_log = Vec::new();
        dev.boot_log(|r| {
            boot_log.push(BootLogRow {
                timestamp: r.timestamp,
                slot: r.slot.to_string(),
                outcome: r.outcome.name().into(),
                attempt: r.attempt,
                version: r.version.as_str().into(),
                sha_prefix: hex(&r.sha_prefix),
            });
        })?;
        let keys: Vec<String> = dev.stored_keys().iter().map(|k| hex(&key_id(k))).collect();
        (*dev.layout(), status, boot_log, keys)
    };
    let engine = EngineReport {
        trial_slot: status.trial.map(|t| AppSlot::Ota(t.slot).to_string()),
        boot_counter: status.trial.map_or(0, |t| t.attempts),
        max_attempts: status.max_attempts,
        min_security_version: status.min_security_version,
        trusted_keys,
        install: status.install.map(|p| InstallReport {
            slot: AppSlot::Ota(p.slot).to_string(),
            offset: p.offset,
            size: p.size,
            image_sha256: hex(&p.image_sha256),
        }),
    };
    let otadata = OtadataReport {
        copies: status
            .otadata
            .iter()
            .map(|e| OtadataCopy {
                seq: e.seq,
                state: e.state.name().into(),
                valid: e.is_valid(),
            })
            .collect(),
        active_copy: status.active_copy,
        selected: status.selected.to_string(),
    };
    let mut slots = Vec::new();
    for slot in std::iter::once(AppSlot::Factory).chain((0..layout.app_count).map(AppSlot::Ota)) {
        slots.extend(slot_report(flash, &layout, slot)?);
    }
    let notes = match layout.records.map(NoteStore::new).transpose()? {
        Some(store) => {
            let mut history = Vec::new();
            store.history(flash, |h| history.push(HistoryReport::from(h)))?;
            NotesReport::new(&store.load(flash)?, history)
        }
        None => NotesReport::default(),
    };
    Ok(Report {
        partitions,
        otadata,
        slots,
        engine,
        boot_log,
        notes,
    })
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
        match slot.content.as_str() {
            "image" => {
                let _ = writeln!(
                    s,
                    "  {:<8} {} {} (security version {}, {}, {} bytes) sha256 {} {}",
                    slot.slot,
                    slot.project.as_deref().unwrap_or("-"),
                    slot.version.as_deref().unwrap_or("-"),
                    slot.security_version.unwrap_or(0),
                    slot.chip.as_deref().unwrap_or("-"),
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
        e.trusted_keys.join(", ")
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
