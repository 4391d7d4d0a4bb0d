//! Airlift's data partition: an append-only log of fixed-size records.
//!
//! # On flash
//!
//! The partition (label `airlift`, type data, subtype 0x40, at least two 4 KiB
//! sectors) is a ring of sectors. Each sector holds 64 records of 64 bytes:
//!
//! ```text
//! record:  0 kind | 1..60 payload | 60..64 CRC-32 (IEEE) of bytes 0..60, little endian
//! sector:  records 0 and 1 = header {magic "ALDS", sequence number}, twice
//!          records 2..64 = data
//! ```
//!
//! The sector whose header has the highest sequence number is the *current*
//! one, and it alone holds the complete live state: when a sector fills up,
//! the next sector of the ring (the oldest) is erased, a snapshot of the live
//! state is written into it, and only then its header. A power cut at any
//! point of that rotation leaves a sector without a valid header, which is
//! ignored, and the previous current sector, still complete, in charge. So the
//! only copy of anything is never erased; what rotation drops is the oldest
//! boot-log history, which keeps the log bounded.
//!
//! Within a sector records are only appended (program, never erase), at the
//! first record slot that is entirely 0xFF. A torn record fails its CRC and is
//! skipped; the next record goes after it.
//!
//! Against damage (a flipped bit in a record at rest) the header is written
//! twice and so is every record the device's safety rests on: trusted keys,
//! minimum security version, image information, activation (the trial and
//! where it rolls back to) and confirmation. Boot-log records are written
//! once; losing one costs at most one extra boot attempt.
//!
//! Record kinds: `H` header, `K` key, `S` minimum security version, `I`
//! image information of a slot, `A` activation, `T` trial (snapshot), `B`
//! boot, `C` confirmation, `Q` install progress, `X` progress cleared, `R`
//! running slot (snapshot). `P`, the install progress of earlier versions
//! (it named the image by half its SHA-256 and did not vouch for the bytes
//! in the slot), is no longer resumed from.

use embedded_storage::nor_flash::NorFlash;

use crate::error::{Error, flash_err};
use crate::layout::{AppSlot, Region};

/// Bytes per record.
pub const RECORD_LEN: usize = 64;
/// Bytes per sector (ESP-IDF's flash sector).
pub const SECTOR_SIZE: u32 = 4096;
/// Record slots per sector, the two header copies included.
pub const RECORDS_PER_SECTOR: u16 = (SECTOR_SIZE as usize / RECORD_LEN) as u16;
/// The first record slot after the two header copies.
pub const FIRST_DATA_RECORD: u16 = 2;
/// Trusted keys the data partition can hold.
pub const MAX_STORED_KEYS: usize = 4;
/// OTA slots whose image information the engine keeps: all of them.
pub const MAX_TRACKED_SLOTS: usize = crate::layout::MAX_OTA_SLOTS;
/// Longest version string kept.
pub const MAX_VERSION_LEN: usize = 32;

const MAGIC: [u8; 4] = *b"ALDS";
const CRC_AT: usize = RECORD_LEN - 4;

const KIND_HEADER: u8 = 0x48;
const KIND_KEY: u8 = 0x4B;
const KIND_MIN_SECURITY: u8 = 0x53;
const KIND_SLOT_IMAGE: u8 = 0x49;
const KIND_ACTIVATION: u8 = 0x41;
const KIND_TRIAL: u8 = 0x54;
const KIND_BOOT: u8 = 0x42;
const KIND_CONFIRM: u8 = 0x43;
/// Install progress as earlier versions wrote it: read as "no progress".
const KIND_INSTALL_LEGACY: u8 = 0x50;
const KIND_INSTALL: u8 = 0x51;
const KIND_INSTALL_CLEAR: u8 = 0x58;
const KIND_RUNNING: u8 = 0x52;
/// The wall-clock time of the boot record before it, written once the
/// device learnt the time (a boot is logged before the network is up).
const KIND_BOOT_TIME: u8 = 0x44;

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it), fed in pieces:
/// the data partition's records use it, and so do other power-safe records
/// kept beside it (the client's notes), so a copy torn by a power cut is
/// recognised the same way everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crc32(u32);

impl Crc32 {
    /// An empty checksum.
    pub const fn new() -> Crc32 {
        Crc32(!0)
    }

    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut crc = self.0;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        self.0 = crc;
    }

    /// The CRC of everything added.
    pub const fn value(&self) -> u32 {
        !self.0
    }
}

impl Default for Crc32 {
    fn default() -> Crc32 {
        Crc32::new()
    }
}

/// CRC-32 of `bytes` (see [`Crc32`]).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(bytes);
    crc.value()
}

/// A version string of at most 32 bytes, stored inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Version {
    len: u8,
    bytes: [u8; MAX_VERSION_LEN],
}

impl Version {
    /// Keeps the first 32 bytes of `s` (cut at a character boundary).
    pub fn new(s: &str) -> Version {
        let mut end = s.len().min(MAX_VERSION_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; MAX_VERSION_LEN];
        bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        Version {
            len: end as u8,
            bytes,
        }
    }

    /// Decodes a length-prefixed, possibly NUL-padded field; invalid UTF-8 gives "".
    fn from_raw(len: u8, raw: &[u8]) -> Version {
        let len = usize::from(len).min(MAX_VERSION_LEN).min(raw.len());
        let raw = &raw[..len];
        let raw = match raw.iter().position(|&b| b == 0) {
            Some(nul) => &raw[..nul],
            None => raw,
        };
        Version::new(core::str::from_utf8(raw).unwrap_or(""))
    }

    /// Decodes a NUL-padded C string field (as in `esp_app_desc_t`).
    pub(crate) fn from_c_str(raw: &[u8]) -> Version {
        Version::from_raw(raw.len().min(MAX_VERSION_LEN) as u8, raw)
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

/// What the engine knows about the image in a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageTag {
    /// First 8 bytes of the image's SHA-256 (zeros when unknown).
    pub sha_prefix: [u8; 8],
    /// The image's security version (from its signed manifest).
    pub security_version: u32,
    /// The image's version string.
    pub version: Version,
}

/// An unconfirmed image on trial: activated, not yet confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trial {
    /// The otadata sequence number its activation wrote.
    pub seq: u32,
    /// Its OTA slot.
    pub slot: u8,
    /// The slot that ran when it was activated: where a rollback goes.
    pub previous: AppSlot,
    /// Boots attempted so far.
    pub attempts: u8,
}

/// A recorded confirmation (its otadata write may not have happened yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingConfirm {
    pub(crate) trial_seq: u32,
    pub(crate) new_seq: u32,
    pub(crate) security_version: u32,
}

/// Progress of an interrupted install, for resuming it.
///
/// It names the image (its whole SHA-256 and size, from the signed manifest)
/// and vouches for the bytes already in the slot with their own SHA-256, so a
/// resume re-reads them and goes on only if the slot still holds exactly what
/// this install wrote there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstallProgress {
    /// The target OTA slot.
    pub slot: u8,
    /// The image's SHA-256 (from its signed manifest).
    pub image_sha256: [u8; 32],
    /// Image size from the manifest.
    pub size: u32,
    /// Bytes programmed and durable (a multiple of the sector size).
    pub offset: u32,
    /// First 16 bytes of the SHA-256 of the slot's bytes `[0, offset)`, as
    /// read back when they were written.
    pub written_sha_prefix: [u8; 16],
}

/// How a boot went, as recorded in the boot log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootOutcome {
    /// A confirmed image started.
    Confirmed,
    /// An unconfirmed image started; the record's `attempt` counts it.
    Trial,
    /// The boot limit was reached: the image was marked invalid and the
    /// previous slot selected.
    RolledBack,
    /// The bootloader did not start the selected trial image (it failed to
    /// load): the image was marked invalid.
    TrialNotBooted,
    /// The bootloader started another slot than otadata selects.
    BootloaderFallback,
    /// A value this version does not know.
    Unknown(u8),
}

impl BootOutcome {
    fn code(self) -> u8 {
        match self {
            BootOutcome::Confirmed => 1,
            BootOutcome::Trial => 2,
            BootOutcome::RolledBack => 3,
            BootOutcome::TrialNotBooted => 4,
            BootOutcome::BootloaderFallback => 5,
            BootOutcome::Unknown(c) => c,
        }
    }

    fn from_code(c: u8) -> BootOutcome {
        match c {
            1 => BootOutcome::Confirmed,
            2 => BootOutcome::Trial,
            3 => BootOutcome::RolledBack,
            4 => BootOutcome::TrialNotBooted,
            5 => BootOutcome::BootloaderFallback,
            c => BootOutcome::Unknown(c),
        }
    }

    /// A short lowercase name (`confirmed`, `trial`, `rolled_back`, ...).
    pub fn name(self) -> &'static str {
        match self {
            BootOutcome::Confirmed => "confirmed",
            BootOutcome::Trial => "trial",
            BootOutcome::RolledBack => "rolled_back",
            BootOutcome::TrialNotBooted => "trial_not_booted",
            BootOutcome::BootloaderFallback => "bootloader_fallback",
            BootOutcome::Unknown(_) => "unknown",
        }
    }
}

/// One boot-log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootRecord {
    /// The otadata sequence number that was active.
    pub otadata_seq: u32,
    /// The slot that ran.
    pub slot: AppSlot,
    /// What happened.
    pub outcome: BootOutcome,
    /// For trial boots, the attempt number (1-based); otherwise the attempts
    /// used up (rollback) or 0.
    pub attempt: u8,
    /// The caller's timestamp (for example seconds since the epoch, or 0).
    pub timestamp: u64,
    /// First 8 bytes of the running image's SHA-256 (zeros when unknown).
    pub sha_prefix: [u8; 8],
    /// The running image's version string.
    pub version: Version,
}

/// The live state replayed from the current sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct State {
    pub(crate) min_security_version: u32,
    pub(crate) keys: [[u8; 32]; MAX_STORED_KEYS],
    pub(crate) key_count: u8,
    pub(crate) slots: [Option<ImageTag>; MAX_TRACKED_SLOTS],
    pub(crate) trial: Option<Trial>,
    pub(crate) pending_confirm: Option<PendingConfirm>,
    pub(crate) install: Option<InstallProgress>,
    /// The slot the last boot-guard run recorded as running.
    pub(crate) last_boot: Option<AppSlot>,
}

impl State {
    pub(crate) fn keys(&self) -> &[[u8; 32]] {
        &self.keys[..usize::from(self.key_count)]
    }

    pub(crate) fn slot_tag(&self, slot: AppSlot) -> Option<ImageTag> {
        match slot {
            AppSlot::Ota(n) => self.slots.get(usize::from(n)).copied().flatten(),
            AppSlot::Factory => None,
        }
    }

    fn apply(&mut self, r: &Record) {
        let b = &r.0;
        match b[0] {
            KIND_KEY => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&b[1..33]);
                let n = usize::from(self.key_count);
                if !self.keys[..n].contains(&key) && n < MAX_STORED_KEYS {
                    self.keys[n] = key;
                    self.key_count += 1;
                }
            }
            KIND_MIN_SECURITY => {
                self.min_security_version = self.min_security_version.max(le32(&b[1..5]));
            }
            KIND_SLOT_IMAGE => {
                if let Some(s) = self.slots.get_mut(usize::from(b[1])) {
                    *s = Some(get_tag(&b[2..47]));
                }
            }
            KIND_ACTIVATION => {
                let slot = b[5];
                if let Some(s) = self.slots.get_mut(usize::from(slot)) {
                    *s = Some(get_tag(&b[7..52]));
                }
                self.trial = Some(Trial {
                    seq: le32(&b[1..5]),
                    slot,
                    previous: AppSlot::from_code(b[6]),
                    attempts: 0,
                });
                self.pending_confirm = None;
                self.install = None;
            }
            KIND_TRIAL => {
                self.trial = Some(Trial {
                    seq: le32(&b[1..5]),
                    slot: b[5],
                    previous: AppSlot::from_code(b[6]),
                    attempts: b[7],
                });
            }
            KIND_BOOT | KIND_RUNNING => {
                if b[0] == KIND_RUNNING {
                    self.last_boot = Some(AppSlot::from_code(b[1]));
                    return;
                }
                if BootOutcome::from_code(b[6]) != BootOutcome::TrialNotBooted {
                    self.last_boot = Some(AppSlot::from_code(b[5]));
                }
                let seq = le32(&b[1..5]);
                if BootOutcome::from_code(b[6]) == BootOutcome::Trial
                    && let Some(t) = self.trial.as_mut()
                    && t.seq == seq
                    && t.slot == b[5]
                {
                    t.attempts = t.attempts.max(b[7]);
                }
            }
            KIND_CONFIRM => {
                let c = PendingConfirm {
                    trial_seq: le32(&b[1..5]),
                    new_seq: le32(&b[5..9]),
                    security_version: le32(&b[9..13]),
                };
                // The record is the commit point of a confirmation.
                if self.trial.is_some_and(|t| t.seq == c.trial_seq) {
                    self.trial = None;
                }
                self.pending_confirm = Some(c);
            }
            KIND_INSTALL => {
                let mut image_sha256 = [0u8; 32];
                image_sha256.copy_from_slice(&b[2..34]);
                let mut written_sha_prefix = [0u8; 16];
                written_sha_prefix.copy_from_slice(&b[42..58]);
                self.install = Some(InstallProgress {
                    slot: b[1],
                    image_sha256,
                    size: le32(&b[34..38]),
                    offset: le32(&b[38..42]),
                    written_sha_prefix,
                });
            }
            KIND_INSTALL_CLEAR | KIND_INSTALL_LEGACY => self.install = None,
            _ => {}
        }
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn put_tag(out: &mut [u8], tag: &ImageTag) {
    out[0..8].copy_from_slice(&tag.sha_prefix);
    out[8..12].copy_from_slice(&tag.security_version.to_le_bytes());
    out[12] = tag.version.len;
    out[13..45].copy_from_slice(&tag.version.bytes);
}

fn get_tag(b: &[u8]) -> ImageTag {
    let mut sha_prefix = [0u8; 8];
    sha_prefix.copy_from_slice(&b[0..8]);
    ImageTag {
        sha_prefix,
        security_version: le32(&b[8..12]),
        version: Version::from_raw(b[12], &b[13..45]),
    }
}

/// One 64-byte record.
#[derive(Clone, Copy)]
pub(crate) struct Record([u8; RECORD_LEN]);

impl Record {
    fn new(kind: u8) -> Record {
        let mut b = [0u8; RECORD_LEN];
        b[0] = kind;
        Record(b)
    }

    fn seal(mut self) -> Record {
        let crc = crc32(&self.0[..CRC_AT]);
        self.0[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        self
    }

    fn is_critical(&self) -> bool {
        matches!(
            self.0[0],
            KIND_KEY
                | KIND_MIN_SECURITY
                | KIND_SLOT_IMAGE
                | KIND_ACTIVATION
                | KIND_TRIAL
                | KIND_CONFIRM
        )
    }

    fn crc_ok(&self) -> bool {
        crc32(&self.0[..CRC_AT]) == le32(&self.0[CRC_AT..])
    }

    fn is_blank(&self) -> bool {
        self.0.iter().all(|&b| b == 0xFF)
    }

    fn header(seq: u32) -> Record {
        let mut r = Record::new(KIND_HEADER);
        r.0[1..5].copy_from_slice(&MAGIC);
        r.0[5..9].copy_from_slice(&seq.to_le_bytes());
        r.0[9] = 1;
        r.seal()
    }

    fn header_seq(&self) -> Option<u32> {
        (self.0[0] == KIND_HEADER && self.0[1..5] == MAGIC && self.crc_ok())
            .then(|| le32(&self.0[5..9]))
    }

    pub(crate) fn key(key: &[u8; 32]) -> Record {
        let mut r = Record::new(KIND_KEY);
        r.0[1..33].copy_from_slice(key);
        r.seal()
    }

    pub(crate) fn min_security(v: u32) -> Record {
        let mut r = Record::new(KIND_MIN_SECURITY);
        r.0[1..5].copy_from_slice(&v.to_le_bytes());
        r.seal()
    }

    pub(crate) fn slot_image(slot: u8, tag: &ImageTag) -> Record {
        let mut r = Record::new(KIND_SLOT_IMAGE);
        r.0[1] = slot;
        put_tag(&mut r.0[2..47], tag);
        r.seal()
    }

    pub(crate) fn activation(seq: u32, slot: u8, previous: AppSlot, tag: &ImageTag) -> Record {
        let mut r = Record::new(KIND_ACTIVATION);
        r.0[1..5].copy_from_slice(&seq.to_le_bytes());
        r.0[5] = slot;
        r.0[6] = previous.code();
        put_tag(&mut r.0[7..52], tag);
        r.seal()
    }

    pub(crate) fn trial(t: &Trial) -> Record {
        let mut r = Record::new(KIND_TRIAL);
        r.0[1..5].copy_from_slice(&t.seq.to_le_bytes());
        r.0[5] = t.slot;
        r.0[6] = t.previous.code();
        r.0[7] = t.attempts;
        r.seal()
    }

    pub(crate) fn boot(b: &BootRecord) -> Record {
        let mut r = Record::new(KIND_BOOT);
        r.0[1..5].copy_from_slice(&b.otadata_seq.to_le_bytes());
        r.0[5] = b.slot.code();
        r.0[6] = b.outcome.code();
        r.0[7] = b.attempt;
        r.0[8..16].copy_from_slice(&b.timestamp.to_le_bytes());
        r.0[16..24].copy_from_slice(&b.sha_prefix);
        r.0[24] = b.version.len;
        r.0[25..57].copy_from_slice(&b.version.bytes);
        r.seal()
    }

    pub(crate) fn boot_time(unix_secs: u64) -> Record {
        let mut r = Record::new(KIND_BOOT_TIME);
        r.0[1..9].copy_from_slice(&unix_secs.to_le_bytes());
        r.seal()
    }

    fn as_boot_time(&self) -> Option<u64> {
        let b = &self.0;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[1..9]);
        (b[0] == KIND_BOOT_TIME).then(|| u64::from_le_bytes(ts))
    }

    fn as_boot(&self) -> Option<BootRecord> {
        let b = &self.0;
        if b[0] != KIND_BOOT {
            return None;
        }
        let mut sha_prefix = [0u8; 8];
        sha_prefix.copy_from_slice(&b[16..24]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[8..16]);
        Some(BootRecord {
            otadata_seq: le32(&b[1..5]),
            slot: AppSlot::from_code(b[5]),
            outcome: BootOutcome::from_code(b[6]),
            attempt: b[7],
            timestamp: u64::from_le_bytes(ts),
            sha_prefix,
            version: Version::from_raw(b[24], &b[25..57]),
        })
    }

    pub(crate) fn confirm(c: &PendingConfirm) -> Record {
        let mut r = Record::new(KIND_CONFIRM);
        r.0[1..5].copy_from_slice(&c.trial_seq.to_le_bytes());
        r.0[5..9].copy_from_slice(&c.new_seq.to_le_bytes());
        r.0[9..13].copy_from_slice(&c.security_version.to_le_bytes());
        r.seal()
    }

    pub(crate) fn install(p: &InstallProgress) -> Record {
        let mut r = Record::new(KIND_INSTALL);
        r.0[1] = p.slot;
        r.0[2..34].copy_from_slice(&p.image_sha256);
        r.0[34..38].copy_from_slice(&p.size.to_le_bytes());
        r.0[38..42].copy_from_slice(&p.offset.to_le_bytes());
        r.0[42..58].copy_from_slice(&p.written_sha_prefix);
        r.seal()
    }

    fn running(slot: AppSlot) -> Record {
        let mut r = Record::new(KIND_RUNNING);
        r.0[1] = slot.code();
        r.seal()
    }

    pub(crate) fn install_clear() -> Record {
        Record::new(KIND_INSTALL_CLEAR).seal()
    }
}

/// Where the log stands (for inspection tools and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// Sectors in the ring.
    pub sectors: u32,
    /// The current sector and its sequence number (`None` while blank).
    pub current: Option<(u32, u32)>,
    /// The next free record slot in the current sector (64 when full).
    pub next_record: u16,
}

/// The data partition's log and the live state replayed from it.
pub(crate) struct Store {
    region: Region,
    sectors: u32,
    current: Option<(u32, u32)>,
    next: u16,
    pub(crate) state: State,
}

impl Store {
    /// Reads the data partition: finds the current sector and replays it.
    pub(crate) fn open<F: NorFlash>(flash: &mut F, region: Region) -> Result<Store, Error> {
        let sectors = region.size / SECTOR_SIZE;
        if sectors < 2 {
            return Err(Error::DataPartitionTooSmall { size: region.size });
        }
        let mut store = Store {
            region,
            sectors,
            current: None,
            next: RECORDS_PER_SECTOR,
            state: State::default(),
        };
        for i in 0..sectors {
            if let Some(seq) = store.sector_seq(flash, i)?
                && store.current.is_none_or(|(_, best)| seq > best)
            {
                store.current = Some((i, seq));
            }
        }
        if let Some((sector, _)) = store.current {
            store.next = RECORDS_PER_SECTOR;
            for slot in FIRST_DATA_RECORD..RECORDS_PER_SECTOR {
                let r = store.read(flash, sector, slot)?;
                if r.is_blank() {
                    store.next = slot;
                    break;
                }
                if r.crc_ok() {
                    store.state.apply(&r);
                }
            }
        }
        Ok(store)
    }

    pub(crate) fn position(&self) -> LogPosition {
        LogPosition {
            sectors: self.sectors,
            current: self.current,
            next_record: self.next,
        }
    }

    /// The sector's sequence number, from either header copy.
    fn sector_seq<F: NorFlash>(&self, flash: &mut F, sector: u32) -> Result<Option<u32>, Error> {
        let first = self.read(flash, sector, 0)?.header_seq();
        if first.is_some() {
            return Ok(first);
        }
        Ok(self.read(flash, sector, 1)?.header_seq())
    }

    fn addr(&self, sector: u32, slot: u16) -> u32 {
        self.region.offset + sector * SECTOR_SIZE + u32::from(slot) * RECORD_LEN as u32
    }

    fn read<F: NorFlash>(&self, flash: &mut F, sector: u32, slot: u16) -> Result<Record, Error> {
        let mut r = Record([0u8; RECORD_LEN]);
        flash
            .read(self.addr(sector, slot), &mut r.0)
            .map_err(flash_err)?;
        Ok(r)
    }

    fn write<F: NorFlash>(
        &self,
        flash: &mut F,
        sector: u32,
        slot: u16,
        r: &Record,
    ) -> Result<(), Error> {
        flash
            .write(self.addr(sector, slot), &r.0)
            .map_err(flash_err)
    }

    /// Appends a record (rotating to a fresh sector first when needed) and
    /// applies it to the live state once it is on flash. Records the safety
    /// of the device rests on (keys, minimum security version, image
    /// information, trial, confirmation) are written twice, so that damage
    /// to one record loses nothing; applying a record twice changes nothing.
    pub(crate) fn append<F: NorFlash>(&mut self, flash: &mut F, r: Record) -> Result<(), Error> {
        self.append_one(flash, &r)?;
        if r.is_critical() {
            self.append_one(flash, &r)?;
        }
        Ok(())
    }

    fn append_one<F: NorFlash>(&mut self, flash: &mut F, r: &Record) -> Result<(), Error> {
        if self.current.is_none() || self.next >= RECORDS_PER_SECTOR {
            self.rotate(flash)?;
        }
        let Some((sector, _)) = self.current else {
            return Err(Error::DataPartitionTooSmall {
                size: self.region.size,
            });
        };
        let slot = self.next;
        self.next += 1;
        self.write(flash, sector, slot, r)?;
        self.state.apply(r);
        Ok(())
    }

    fn rotate<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), Error> {
        let (target, seq) = match self.current {
            Some((i, seq)) => ((i + 1) % self.sectors, seq.wrapping_add(1)),
            None => (0, 1),
        };
        let mut blank = true;
        for slot in 0..RECORDS_PER_SECTOR {
            if !self.read(flash, target, slot)?.is_blank() {
                blank = false;
                break;
            }
        }
        if !blank {
            let from = self.region.offset + target * SECTOR_SIZE;
            flash.erase(from, from + SECTOR_SIZE).map_err(flash_err)?;
        }
        // The snapshot: everything the live state needs, then the header
        // that makes this sector current.
        let s = self.state;
        let mut slot = FIRST_DATA_RECORD;
        let mut put = |this: &Self, flash: &mut F, r: Record| -> Result<(), Error> {
            for _ in 0..if r.is_critical() { 2 } else { 1 } {
                // At most 4 keys, 16 slots and a few single records, twice:
                // 48 records, always below the 62 a sector holds.
                if slot >= RECORDS_PER_SECTOR {
                    return Err(Error::DataPartitionTooSmall {
                        size: this.region.size,
                    });
                }
                this.write(flash, target, slot, &r)?;
                slot += 1;
            }
            Ok(())
        };
        for key in s.keys() {
            put(self, flash, Record::key(key))?;
        }
        if s.min_security_version != 0 {
            put(self, flash, Record::min_security(s.min_security_version))?;
        }
        for (i, tag) in s.slots.iter().enumerate() {
            if let Some(tag) = tag {
                put(self, flash, Record::slot_image(i as u8, tag))?;
            }
        }
        if let Some(t) = &s.trial {
            put(self, flash, Record::trial(t))?;
        }
        if let Some(c) = &s.pending_confirm {
            put(self, flash, Record::confirm(c))?;
        }
        if let Some(p) = &s.install {
            put(self, flash, Record::install(p))?;
        }
        if let Some(slot) = s.last_boot {
            put(self, flash, Record::running(slot))?;
        }
        // Two copies of the header, so that damage to one record cannot
        // demote the current sector (and with it the live state).
        self.write(flash, target, 0, &Record::header(seq))?;
        self.write(flash, target, 1, &Record::header(seq))?;
        self.current = Some((target, seq));
        self.next = slot;
        Ok(())
    }

    /// Calls `f` with every boot record still in the log, oldest first,
    /// each dated by the boot-time record that follows it, if any (the
    /// boot-time record of a power-on dates the boot record that power-on
    /// wrote last: no other boot record can come between them).
    pub(crate) fn for_each_boot<F: NorFlash>(
        &self,
        flash: &mut F,
        mut f: impl FnMut(&BootRecord),
    ) -> Result<(), Error> {
        let Some((current, _)) = self.current else {
            return Ok(());
        };
        let mut last: Option<BootRecord> = None;
        // Sectors are filled in ring order, so the one after the current
        // sector is the oldest.
        for step in 1..=self.sectors {
            let sector = (current + step) % self.sectors;
            if self.sector_seq(flash, sector)?.is_none() {
                continue;
            }
            for slot in FIRST_DATA_RECORD..RECORDS_PER_SECTOR {
                let r = self.read(flash, sector, slot)?;
                if r.is_blank() {
                    break;
                }
                if !r.crc_ok() {
                    continue;
                }
                if let Some(b) = r.as_boot() {
                    if let Some(previous) = last.replace(b) {
                        f(&previous);
                    }
                } else if let Some(at) = r.as_boot_time()
                    && let Some(b) = last.as_mut()
                    && b.timestamp == 0
                {
                    b.timestamp = at;
                }
            }
        }
        if let Some(b) = last {
            f(&b);
        }
        Ok(())
    }

    /// Dates the last boot record (see [`Store::for_each_boot`]).
    pub(crate) fn date_last_boot<F: NorFlash>(
        &mut self,
        flash: &mut F,
        unix_secs: u64,
    ) -> Result<(), Error> {
        self.append(flash, Record::boot_time(unix_secs))
    }
}
