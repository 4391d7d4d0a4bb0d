//! What a device's flash says, as the device page shows it (`GET
//! /api/status`) and `airlift flash inspect` prints it: the partition
//! table, otadata, every app slot, the engine's state, the boot log and
//! the client's notes. One definition for the PC agent and the firmware:
//! the agent serialises it with serde_json, the firmware with
//! serde-json-core, and the two give the same JSON (a test checks).
//!
//! Reading changes nothing. Lists are kept by [`Rows`]: everything in a
//! `Vec` on a PC (`All`, feature `std`), the newest few in RAM on a chip
//! ([`Newest`], as [`Small`] sizes them for the page).

use airlift_engine::{AppSlot, BootRecord, Device, PartitionRows};
use airlift_format::image::ImageInfo;
use airlift_format::manifest::key_id;
use airlift_format::partition::{PartitionEntry, subtype_name};
use airlift_protocol::{DETAIL_MAX, EventKind, Label, Reason, Sha256Hex};
use embedded_storage::nor_flash::NorFlash;
use heapless::String;
use serde::Serialize;

use crate::Running;
use crate::notes::{HistoryEntry, NoteStore, Notes};
use crate::text::{Hex, Text, sha_hex};

/// A slot's or a partition's name (`ota_0`, `factory`, `nvs`).
pub type Name = String<16>;

fn name(args: core::fmt::Arguments<'_>) -> Name {
    Text::<16>::format(args).0
}

/// A list of rows: how many are kept is the list's business.
pub trait Rows<T>: Default + Serialize + Clone + core::fmt::Debug {
    /// Adds `row` after the others.
    fn add(&mut self, row: T);
}

/// The newest `N` rows (the oldest are dropped), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newest<T, const N: usize>(pub heapless::Vec<T, N>);

impl<T, const N: usize> Default for Newest<T, N> {
    fn default() -> Self {
        Newest(heapless::Vec::new())
    }
}

impl<T: Serialize, const N: usize> Serialize for Newest<T, N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<T: Serialize + Clone + core::fmt::Debug, const N: usize> Rows<T> for Newest<T, N> {
    fn add(&mut self, row: T) {
        if N == 0 {
            return;
        }
        if self.0.is_full() {
            self.0.remove(0);
        }
        // Cannot fail: there is room now.
        let _ = self.0.push(row);
    }
}

#[cfg(feature = "std")]
impl<T: Serialize + Clone + core::fmt::Debug> Rows<T> for std::vec::Vec<T> {
    fn add(&mut self, row: T) {
        self.push(row);
    }
}

/// The kinds of list a [`Report`] keeps.
pub trait Lists: Clone + core::fmt::Debug {
    /// Partition table rows.
    type Partitions: Rows<PartitionRow>;
    /// App slots, factory first.
    type Slots: Rows<SlotReport>;
    /// Boot-log records, oldest first.
    type BootLog: Rows<BootLogRow>;
    /// Update history, oldest first.
    type History: Rows<HistoryReport>;
}

/// Everything, for a PC (`airlift flash inspect`, the agent's page).
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy)]
pub struct All;

#[cfg(feature = "std")]
impl Lists for All {
    type Partitions = std::vec::Vec<PartitionRow>;
    type Slots = std::vec::Vec<SlotReport>;
    type BootLog = std::vec::Vec<BootLogRow>;
    type History = std::vec::Vec<HistoryReport>;
}

/// What the firmware's page keeps: the 16 newest boots, and every history
/// entry the notes hold; any partition table and slots of a 16 MiB flash
/// with two OTA slots.
#[derive(Debug, Clone, Copy)]
pub struct Small;

/// Boot-log records the firmware's page shows (the newest).
pub const SMALL_BOOT_LOG: usize = 16;

/// Room for the firmware's status as JSON: a [`PageStatus`] of a
/// [`Report<Small>`] with every list full and every text at its longest,
/// a device name of 64 bytes and an error of [`crate::page::MESSAGE_MAX`]
/// (a test checks; text that needs escaping could still exceed it, and
/// the firmware answers 500 then).
pub const SMALL_STATUS_JSON_MAX: usize = 12 * 1024;

impl Lists for Small {
    type Partitions = Newest<PartitionRow, 12>;
    type Slots = Newest<SlotReport, 3>;
    type BootLog = Newest<BootLogRow, SMALL_BOOT_LOG>;
    type History = Newest<HistoryReport, { crate::notes::HISTORY_MAX }>;
}

/// One partition table row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionRow {
    /// Label.
    pub label: Name,
    /// Type name (`app`, `data`) or number.
    pub kind: Name,
    /// Subtype name or number.
    pub subtype: Name,
    /// Offset in bytes.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

impl From<&PartitionEntry> for PartitionRow {
    fn from(e: &PartitionEntry) -> PartitionRow {
        PartitionRow {
            label: name(format_args!("{}", e.label_str())),
            kind: match e.kind.name() {
                Some(n) => name(format_args!("{n}")),
                None => name(format_args!("{:#04x}", e.kind.0)),
            },
            subtype: match subtype_name(e.kind, e.subtype) {
                Some(n) => name(format_args!("{n}")),
                None => name(format_args!("{:#04x}", e.subtype)),
            },
            offset: e.offset,
            size: e.size,
        }
    }
}

/// One otadata copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OtadataCopy {
    /// Sequence number (`4294967295` when erased).
    pub seq: u32,
    /// State name.
    pub state: &'static str,
    /// Whether ESP-IDF accepts the entry (CRC matches, not erased or invalid).
    pub valid: bool,
}

/// Both otadata copies and what they select.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OtadataReport {
    /// The two copies.
    pub copies: heapless::Vec<OtadataCopy, 2>,
    /// The copy ESP-IDF treats as active.
    pub active_copy: Option<usize>,
    /// The slot the bootloader selects.
    pub selected: Name,
}

/// Longest reason a slot is shown as not bootable.
pub const SLOT_ERROR_MAX: usize = 96;

/// One app slot and its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotReport {
    /// `ota_0`, `ota_1`, `factory`.
    pub slot: Name,
    /// Offset in bytes.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// `empty`, `image` or `invalid`.
    pub content: &'static str,
    /// Checksum and appended digest valid (the bootloader would start it).
    pub valid: bool,
    /// Project name from the app descriptor.
    pub project: Option<Label>,
    /// Version from the app descriptor.
    pub version: Option<Label>,
    /// Security version from the app descriptor.
    pub security_version: Option<u32>,
    /// Chip name.
    pub chip: Option<&'static str>,
    /// SHA-256 of the image, lowercase hex.
    pub sha256: Option<Sha256Hex>,
    /// Image length in bytes.
    pub image_len: Option<u32>,
    /// Why it is not an image, for `invalid`, or why it would not boot.
    pub error: Option<String<SLOT_ERROR_MAX>>,
}

impl SlotReport {
    /// What `slot` holds, from [`airlift_engine::slot::read_slot`].
    pub fn new(slot: AppSlot, offset: u32, size: u32, content: &SlotImage) -> SlotReport {
        let mut r = SlotReport {
            slot: name(format_args!("{slot}")),
            offset,
            size,
            content: "empty",
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
            SlotImage::Empty => {}
            SlotImage::Invalid(e) => {
                r.content = "invalid";
                r.error = Some(Text::format(format_args!("{e}")).0);
            }
            SlotImage::Image(info) => r.image(info),
        }
        r
    }

    fn image(&mut self, info: &ImageInfo) {
        self.content = "image";
        self.valid = info.is_valid();
        self.chip = Some(info.chip().name());
        self.sha256 = Some(sha_hex(&info.file_sha256));
        self.image_len = Some(info.image_len);
        if let Some(d) = &info.app_desc {
            self.project = Some(Text::from_str_cut(d.project_name()).0);
            self.version = Some(Text::from_str_cut(d.version()).0);
            self.security_version = Some(d.secure_version());
        }
        if !info.checksum_valid() {
            self.error = Some(Text::from_str_cut("checksum does not match").0);
        } else if !info.digest_valid() {
            self.error = Some(Text::from_str_cut("appended sha-256 digest does not match").0);
        }
    }
}

pub use airlift_engine::slot::SlotImage;

/// The engine's state from the data partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineReport {
    /// The slot on trial (activated, not confirmed).
    pub trial_slot: Option<Name>,
    /// Boot attempts of the image on trial (the boot counter).
    pub boot_counter: u8,
    /// Attempts allowed before rollback.
    pub max_attempts: u8,
    /// Minimum security version for installs.
    pub min_security_version: u32,
    /// Key ids of the trusted keys stored on the device.
    pub trusted_keys: heapless::Vec<String<16>, { airlift_engine::store::MAX_STORED_KEYS }>,
    /// An interrupted install the next install of the same image resumes.
    pub install: Option<InstallReport>,
}

/// An interrupted install, as its progress record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallReport {
    /// The target slot.
    pub slot: Name,
    /// Bytes written and vouched for (where a resume continues).
    pub offset: u32,
    /// The image's size.
    pub size: u32,
    /// The image's SHA-256 (from its signed manifest), hex.
    pub image_sha256: Sha256Hex,
}

/// One boot-log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootLogRow {
    /// Unix seconds; 0 for a boot logged before the device knew the time
    /// and never dated ([`crate::time`]).
    pub timestamp: u64,
    /// Slot that ran.
    pub slot: Name,
    /// `confirmed`, `trial`, `rolled_back`, ...
    pub outcome: &'static str,
    /// Attempt number for trial boots.
    pub attempt: u8,
    /// Version of the image.
    pub version: Label,
    /// First 8 bytes of its SHA-256, hex.
    pub sha_prefix: String<16>,
}

impl From<&BootRecord> for BootLogRow {
    fn from(r: &BootRecord) -> BootLogRow {
        BootLogRow {
            timestamp: r.timestamp,
            slot: name(format_args!("{}", r.slot)),
            outcome: r.outcome.name(),
            attempt: r.attempt,
            version: Text::from_str_cut(r.version.as_str()).0,
            sha_prefix: Text::format(format_args!("{}", Hex(&r.sha_prefix))).0,
        }
    }
}

/// The update in progress or on trial, as the notes keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingReport {
    /// The deployment it belongs to (`None` for a local upload).
    pub deployment: Option<u64>,
    /// SHA-256 of the new image, lowercase hex.
    pub sha256: Sha256Hex,
    /// Version string of the new image.
    pub version: Label,
    /// `server`, `upload` or `pull`.
    pub source: &'static str,
    /// Trial boots of the image in the boot log before this attempt.
    pub trials_before: u32,
}

/// The last result, as the notes keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutcomeReport {
    /// The deployment, when the server assigned the update.
    pub deployment: Option<u64>,
    /// `confirmed`, `rolled_back` or `failed`.
    pub kind: EventKind,
    /// Why, for failures and rollbacks.
    pub reason: Option<Reason>,
}

/// One line of the update history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryReport {
    /// Unix seconds; 0 for an attempt that ended before the device knew
    /// the time and was never dated ([`crate::time`]).
    pub at: u64,
    /// Version of the image the attempt installed.
    pub version: Label,
    /// Its SHA-256, lowercase hex.
    pub sha256: Sha256Hex,
    /// `server`, `upload` or `pull`.
    pub source: &'static str,
    /// The deployment, when there was one.
    pub deployment: Option<u64>,
    /// `confirmed`, `rolled_back` or `failed`.
    pub result: EventKind,
    /// Why, for failures and rollbacks.
    pub reason: Option<Reason>,
    /// Human-readable detail.
    pub detail: String<DETAIL_MAX>,
}

impl From<&HistoryEntry> for HistoryReport {
    fn from(h: &HistoryEntry) -> HistoryReport {
        HistoryReport {
            at: h.unix_secs().unwrap_or(0),
            version: h.version.clone(),
            sha256: sha_hex(&h.sha256),
            source: h.source.as_str(),
            deployment: h.deployment,
            result: h.result,
            reason: h.reason,
            detail: h.detail.clone(),
        }
    }
}

/// The device's notes: what the client keeps in flash about updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(bound(serialize = "H: Serialize"))]
pub struct NotesReport<H> {
    /// The update being installed or on trial.
    pub pending: Option<PendingReport>,
    /// The last result, repeated at check-ins.
    pub last_result: Option<OutcomeReport>,
    /// Recent attempts, oldest first.
    pub history: H,
}

impl<H: Default> NotesReport<H> {
    fn new(notes: &Notes) -> NotesReport<H> {
        NotesReport {
            pending: notes.pending.as_ref().map(|p| PendingReport {
                deployment: p.deployment,
                sha256: sha_hex(&p.sha256),
                version: p.version.clone(),
                source: p.source.as_str(),
                trials_before: p.trials_before,
            }),
            last_result: notes.last_result.map(|o| OutcomeReport {
                deployment: o.deployment,
                kind: o.kind,
                reason: o.reason,
            }),
            history: H::default(),
        }
    }
}

/// Everything the flash says.
#[derive(Debug, Clone, Serialize)]
#[serde(bound(serialize = ""))]
pub struct Report<L: Lists> {
    /// Partition table rows.
    pub partitions: L::Partitions,
    /// otadata.
    pub otadata: OtadataReport,
    /// App slots, factory first.
    pub slots: L::Slots,
    /// Engine state.
    pub engine: EngineReport,
    /// Boot log, oldest first.
    pub boot_log: L::BootLog,
    /// The device's notes (pending update, last result, history).
    pub notes: NotesReport<L::History>,
    /// Boot-log records the engine keeps (`boot_log` may show fewer).
    #[serde(skip)]
    pub boots_logged: u64,
}

impl<L: Lists> Report<L> {
    /// Reads everything from `dev`'s flash; the notes from `notes`, when
    /// the layout has room for them.
    pub fn read<F: NorFlash>(
        dev: &mut Device<'_, F>,
        notes: Option<&NoteStore>,
    ) -> Result<Report<L>, crate::Error> {
        let mut partitions = L::Partitions::default();
        let table_offset = dev.table_offset();
        let mut rows = PartitionRows::new(dev.flash_mut(), table_offset);
        for entry in &mut rows {
            partitions.add(PartitionRow::from(&entry));
        }
        if let Some(e) = rows.failure {
            return Err(e.into());
        }
        let status = dev.status()?;
        let (mut boot_log, mut boots_logged) = (L::BootLog::default(), 0);
        dev.boot_log(|r| {
            boots_logged += 1;
            boot_log.add(BootLogRow::from(r));
        })?;
        let mut trusted_keys = heapless::Vec::new();
        for k in dev.stored_keys() {
            let _ = trusted_keys.push(Text::format(format_args!("{}", Hex(&key_id(k)))).0);
        }
        let engine = EngineReport {
            trial_slot: status
                .trial
                .map(|t| name(format_args!("{}", AppSlot::Ota(t.slot)))),
            boot_counter: status.trial.map_or(0, |t| t.attempts),
            max_attempts: status.max_attempts,
            min_security_version: status.min_security_version,
            trusted_keys,
            install: status.install.map(|p| InstallReport {
                slot: name(format_args!("{}", AppSlot::Ota(p.slot))),
                offset: p.offset,
                size: p.size,
                image_sha256: sha_hex(&p.image_sha256),
            }),
        };
        let mut copies = heapless::Vec::new();
        for e in &status.otadata {
            let _ = copies.push(OtadataCopy {
                seq: e.seq,
                state: e.state.name(),
                valid: e.is_valid(),
            });
        }
        let otadata = OtadataReport {
            copies,
            active_copy: status.active_copy,
            selected: name(format_args!("{}", status.selected)),
        };
        let layout = *dev.layout();
        let mut slots = L::Slots::default();
        for slot in
            core::iter::once(AppSlot::Factory).chain((0..layout.app_count).map(AppSlot::Ota))
        {
            if let Some(region) = layout.slot(slot) {
                let content = airlift_engine::slot::read_slot(dev.flash_mut(), region)?;
                slots.add(SlotReport::new(slot, region.offset, region.size, &content));
            }
        }
        let notes = match notes {
            Some(store) => {
                let mut report: NotesReport<L::History> =
                    NotesReport::new(&store.load(dev.flash_mut())?);
                store.history(dev.flash_mut(), |h| {
                    report.history.add(HistoryReport::from(h))
                })?;
                report
            }
            None => NotesReport::new(&Notes::default()),
        };
        Ok(Report {
            partitions,
            otadata,
            slots,
            engine,
            boot_log,
            notes,
            boots_logged,
        })
    }
}

/// The image running now, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunningInfo {
    /// Slot it runs from.
    pub slot: Name,
    /// Project name.
    pub project: Label,
    /// Version.
    pub version: Label,
    /// SHA-256, lowercase hex.
    pub sha256: Sha256Hex,
    /// Security version.
    pub security_version: u32,
    /// Chip id.
    pub chip_id: u16,
    /// Whether it is confirmed.
    pub confirmed: bool,
    /// This boot's attempt number for an unconfirmed image.
    pub attempt: u8,
}

impl From<&Running> for RunningInfo {
    fn from(r: &Running) -> RunningInfo {
        RunningInfo {
            slot: name(format_args!("{}", r.slot)),
            project: r.project.clone(),
            version: r.version.clone(),
            sha256: sha_hex(&r.sha256),
            security_version: r.security_version,
            chip_id: r.chip_id,
            confirmed: r.confirmed,
            attempt: r.attempt,
        }
    }
}

/// What the device is doing, as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// The boot guard has not finished.
    #[default]
    Booting,
    /// Running an image on trial.
    Trial,
    /// Running a confirmed image, waiting for the next check-in.
    Idle,
    /// Downloading or installing an update.
    Downloading,
    /// The server revoked the device's token: it needs a new one.
    Revoked,
}

/// `GET /api/status`: what the device page shows.
#[derive(Serialize)]
#[serde(bound(serialize = "R: Serialize"))]
pub struct PageStatus<'a, R> {
    /// Device name.
    pub name: &'a str,
    /// The running image.
    pub running: Option<&'a RunningInfo>,
    /// What the device is doing.
    pub state: DeviceState,
    /// The server, when one is configured.
    pub server: Option<&'a str>,
    /// Unix seconds of the last answered check-in.
    pub last_checkin: Option<u64>,
    /// The last problem talking to the server.
    pub last_error: Option<&'a str>,
    /// Power-ons: since the agent started; on a chip, the boots its log keeps.
    pub boots: u64,
    /// What the flash says.
    pub flash: Option<&'a R>,
}
