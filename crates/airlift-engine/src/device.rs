//! The device: boot guard, confirm, and the entry point of installs.

use airlift_format::image::APP_DESC_MAGIC;
use airlift_format::otadata::{OtaSelectEntry, OtaState, active_entry, boot_slot, plan_activation};
use airlift_format::partition::TABLE_OFFSET;
use embedded_storage::nor_flash::NorFlash;

use crate::error::{Error, flash_err};
use crate::layout::{AppSlot, Layout};
use crate::store::{
    BootOutcome, BootRecord, ImageTag, InstallProgress, LogPosition, MAX_TRACKED_SLOTS,
    PendingConfirm, Record, SECTOR_SIZE, Store, Trial, Version,
};

/// Marks Airlift writes into an otadata entry's `seq_label`: 20 bytes that
/// ESP-IDF leaves erased, never reads, and keeps out of the CRC. They make
/// otadata itself say what Airlift needs to stay safe if its data partition
/// is lost: `ALFT` (a trial; byte 4: the slot to roll back to) and `ALFV`
/// (confirmed); bytes 5..9: a security version (the trial image's, or the
/// device's minimum).
pub(crate) const MARK_TRIAL: [u8; 4] = *b"ALFT";
const MARK_VALID: [u8; 4] = *b"ALFV";

pub(crate) fn marked(
    mut entry: OtaSelectEntry,
    mark: [u8; 4],
    previous: Option<AppSlot>,
    security_version: u32,
) -> OtaSelectEntry {
    entry.label = [0xFF; 20];
    entry.label[..4].copy_from_slice(&mark);
    entry.label[4] = previous.map_or(0xFF, AppSlot::code);
    entry.label[5..9].copy_from_slice(&security_version.to_le_bytes());
    entry
}

fn read_mark(entry: &OtaSelectEntry) -> Option<([u8; 4], u8, u32)> {
    let l = &entry.label;
    let mark = [l[0], l[1], l[2], l[3]];
    (mark == MARK_TRIAL || mark == MARK_VALID)
        .then(|| (mark, l[4], u32::from_le_bytes([l[5], l[6], l[7], l[8]])))
}

/// Whether a flash driver's geometry fits the engine: every read is of
/// whole 4-byte words at 4-byte aligned offsets, every program a multiple of
/// 32 bytes (otadata) or 256 (image), and ESP-IDF's structures are laid out
/// in 4 KiB sectors. So `READ_SIZE` must divide 4, `WRITE_SIZE` 32 and
/// `ERASE_SIZE` 4096. [`Device::with_layout`] refuses other drivers; firmware
/// can check its driver at compile time:
///
/// ```
/// # use airlift_engine::geometry_fits;
/// # struct MyFlash;
/// # impl embedded_storage::nor_flash::ErrorType for MyFlash { type Error = core::convert::Infallible; }
/// # impl embedded_storage::nor_flash::ReadNorFlash for MyFlash {
/// #     const READ_SIZE: usize = 4;
/// #     fn read(&mut self, _: u32, _: &mut [u8]) -> Result<(), Self::Error> { Ok(()) }
/// #     fn capacity(&self) -> usize { 0 }
/// # }
/// # impl embedded_storage::nor_flash::NorFlash for MyFlash {
/// #     const WRITE_SIZE: usize = 4;
/// #     const ERASE_SIZE: usize = 4096;
/// #     fn erase(&mut self, _: u32, _: u32) -> Result<(), Self::Error> { Ok(()) }
/// #     fn write(&mut self, _: u32, _: &[u8]) -> Result<(), Self::Error> { Ok(()) }
/// # }
/// const _: () = assert!(geometry_fits::<MyFlash>());
/// ```
pub const fn geometry_fits<F: NorFlash>() -> bool {
    4usize.is_multiple_of(F::READ_SIZE)
        && 32usize.is_multiple_of(F::WRITE_SIZE)
        && (SECTOR_SIZE as usize).is_multiple_of(F::ERASE_SIZE)
}

/// Boot attempts an unconfirmed image gets by default.
pub const DEFAULT_MAX_ATTEMPTS: u8 = 3;
/// Default distance between install progress records (for resuming).
pub const DEFAULT_CHECKPOINT_INTERVAL: u32 = 64 * 1024;

/// How the engine behaves on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config<'k> {
    /// Boots an unconfirmed image gets before it is rolled back (at least 1).
    pub max_attempts: u8,
    /// Trusted Ed25519 public keys compiled into the firmware, in addition to
    /// the keys stored in the data partition.
    pub trusted_keys: &'k [[u8; 32]],
    /// This device's chip id (ESP image header); `None` takes it from the
    /// running image's header.
    pub chip_id: Option<u16>,
    /// Bytes between install progress records (rounded to whole sectors).
    pub checkpoint_interval: u32,
    /// Where the partition table is (0x8000 on ESP32).
    pub table_offset: u32,
}

impl Default for Config<'_> {
    fn default() -> Self {
        Config {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            trusted_keys: &[],
            chip_id: None,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            table_offset: TABLE_OFFSET,
        }
    }
}

/// What the firmware does after the boot guard ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDecision {
    /// Go on running the image in `slot`.
    Run {
        /// The running slot.
        slot: AppSlot,
        /// Whether the image is confirmed; if not, call
        /// [`Device::confirm`] once it is healthy.
        confirmed: bool,
        /// For an unconfirmed image, this boot's attempt number (1-based).
        attempt: u8,
        /// The configured limit of attempts.
        max_attempts: u8,
    },
    /// The running image used up its attempts (or did not start): it was
    /// marked invalid and `to` selected. Reset the chip now.
    ResetRequired {
        /// The image that was rolled back.
        from: AppSlot,
        /// The slot the next boot starts.
        to: AppSlot,
        /// Attempts it had used.
        attempts: u8,
    },
}

/// A snapshot of the engine's view of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Both otadata copies as stored.
    pub otadata: [OtaSelectEntry; 2],
    /// The copy ESP-IDF treats as active.
    pub active_copy: Option<usize>,
    /// The slot an ESP-IDF bootloader starts.
    pub selected: AppSlot,
    /// The slot running now (as told to [`Device::boot`], else `selected`).
    pub running: AppSlot,
    /// The image on trial, if the selected image is unconfirmed.
    pub trial: Option<Trial>,
    /// The minimum security version accepted for installs.
    pub min_security_version: u32,
    /// Keys stored in the data partition.
    pub stored_keys: u8,
    /// Configured boot attempts.
    pub max_attempts: u8,
    /// An interrupted install that can be resumed.
    pub install: Option<InstallProgress>,
    /// What the engine knows about the image in each OTA slot.
    pub slots: [Option<ImageTag>; MAX_TRACKED_SLOTS],
}

/// The result of a successful install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activated {
    /// The slot the new image is in.
    pub slot: u8,
    /// The otadata sequence number written.
    pub seq: u32,
}

/// The update engine on one device: the flash, its layout and Airlift's state.
///
/// Holds no buffer bigger than one 64-byte record; see the crate docs for the
/// memory budget.
pub struct Device<'k, F: NorFlash> {
    pub(crate) flash: F,
    pub(crate) layout: Layout,
    pub(crate) config: Config<'k>,
    pub(crate) store: Store,
    pub(crate) running: Option<AppSlot>,
}

impl<'k, F: NorFlash> Device<'k, F> {
    /// Opens the device: reads the partition table (at
    /// `config.table_offset`) and Airlift's data partition.
    pub fn open(mut flash: F, config: Config<'k>) -> Result<Self, Error> {
        let layout = Layout::read(&mut flash, config.table_offset)?;
        Self::with_layout(flash, layout, config)
    }

    /// Opens the device with a layout the caller already knows.
    pub fn with_layout(mut flash: F, layout: Layout, config: Config<'k>) -> Result<Self, Error> {
        if !geometry_fits::<F>() {
            return Err(Error::UnsupportedFlashGeometry {
                read_size: F::READ_SIZE,
                write_size: F::WRITE_SIZE,
                erase_size: F::ERASE_SIZE,
            });
        }
        let store = Store::open(&mut flash, layout.data)?;
        Ok(Device {
            flash,
            layout,
            config,
            store,
            running: None,
        })
    }

    /// Where the partition table is.
    pub fn table_offset(&self) -> u32 {
        self.config.table_offset
    }

    /// The layout in use.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The flash, for inspection tools and simulators. Writing to it behind
    /// the engine's back voids every guarantee.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.flash
    }

    /// Gives the flash back.
    pub fn into_flash(self) -> F {
        self.flash
    }

    /// Where the data partition's log stands.
    pub fn log_position(&self) -> LogPosition {
        self.store.position()
    }

    fn max_attempts(&self) -> u8 {
        self.config.max_attempts.max(1)
    }

    pub(crate) fn entries(&mut self) -> Result<[OtaSelectEntry; 2], Error> {
        crate::otadata_io::read_entries(&mut self.flash, self.layout.otadata)
    }

    /// Erases one otadata copy's sector and writes `entry` (sequence number
    /// and state together) in one program operation.
    pub(crate) fn write_entry(&mut self, copy: usize, entry: &OtaSelectEntry) -> Result<(), Error> {
        crate::otadata_io::write_entry(&mut self.flash, self.layout.otadata, copy, entry)
    }

    pub(crate) fn selected(&self, entries: &[OtaSelectEntry; 2]) -> AppSlot {
        self.layout
            .resolve(boot_slot(entries, self.layout.app_count))
    }

    /// The slot running now: as told to this handle's [`Device::boot`], else
    /// as the boot guard recorded it at this boot (another handle may have
    /// run it, and the bootloader may have fallen back from the selected
    /// slot), else the slot otadata selects.
    pub(crate) fn running_slot(&self, entries: &[OtaSelectEntry; 2]) -> AppSlot {
        self.running
            .or(self.store.state.last_boot)
            .unwrap_or_else(|| self.selected(entries))
    }

    /// The trial in progress: the stored trial whose otadata entry is the
    /// active one and not yet VALID.
    ///
    /// If the data partition lost the trial (erased, damaged beyond both
    /// copies), the trial mark Airlift wrote into the entry's label restores
    /// it, with the slot to roll back to; only its attempt count restarts.
    pub(crate) fn current_trial(&self, entries: &[OtaSelectEntry; 2]) -> Option<Trial> {
        let active = &entries[active_entry(entries)?];
        if active.state == OtaState::Valid {
            return None;
        }
        let slot = active.slot(self.layout.app_count)?;
        let stored = self
            .store
            .state
            .trial
            .filter(|t| t.seq == active.seq && t.slot == slot);
        if stored.is_some() {
            return stored;
        }
        let confirmed = self
            .store
            .state
            .pending_confirm
            .is_some_and(|c| c.trial_seq == active.seq);
        match read_mark(active) {
            Some((MARK_TRIAL, previous, _)) if !confirmed => Some(Trial {
                seq: active.seq,
                slot,
                previous: AppSlot::from_code(previous),
                attempts: 0,
            }),
            _ => None,
        }
    }

    /// The minimum security version: the stored one, or the one the
    /// confirmed otadata entries carry if that is higher (a lost data
    /// partition must not reopen the door to downgrades).
    pub(crate) fn min_security_version(&self, entries: &[OtaSelectEntry; 2]) -> u32 {
        entries
            .iter()
            .filter(|e| e.is_valid())
            .filter_map(read_mark)
            .filter(|(mark, _, _)| *mark == MARK_VALID)
            .map(|(_, _, v)| v)
            .fold(self.store.state.min_security_version, u32::max)
    }

    /// What the engine knows about the image in `slot`: the tag stored at
    /// activation, else the version from the image's app descriptor.
    fn tag_for(&mut self, slot: AppSlot) -> Result<ImageTag, Error> {
        if let Some(tag) = self.store.state.slot_tag(slot) {
            return Ok(tag);
        }
        let mut tag = ImageTag::default();
        if let Some(region) = self.layout.slot(slot) {
            let mut desc = [0u8; 48];
            self.flash
                .read(region.offset + 32, &mut desc)
                .map_err(flash_err)?;
            let word =
                |i: usize| u32::from_le_bytes([desc[i], desc[i + 1], desc[i + 2], desc[i + 3]]);
            if word(0) == APP_DESC_MAGIC {
                tag.security_version = word(4);
                tag.version = Version::from_c_str(&desc[16..48]);
            }
        }
        Ok(tag)
    }

    /// The chip id of this device: configured, or from the running image's header.
    fn device_chip(&mut self, running: AppSlot) -> Result<Option<u16>, Error> {
        if let Some(id) = self.config.chip_id {
            return Ok(Some(id));
        }
        let Some(region) = self.layout.slot(running) else {
            return Ok(None);
        };
        let mut header = [0u8; 24];
        self.flash
            .read(region.offset, &mut header)
            .map_err(flash_err)?;
        Ok((header[0] == airlift_format::image::IMAGE_MAGIC)
            .then(|| u16::from_le_bytes([header[12], header[13]])))
    }

    fn log_boot(
        &mut self,
        seq: u32,
        slot: AppSlot,
        outcome: BootOutcome,
        attempt: u8,
        timestamp: u64,
    ) -> Result<(), Error> {
        let tag = self.tag_for(slot)?;
        let record = BootRecord {
            otadata_seq: seq,
            slot,
            outcome,
            attempt,
            timestamp,
            sha_prefix: tag.sha_prefix,
            version: tag.version,
        };
        self.store.append(&mut self.flash, Record::boot(&record))
    }

    /// Finishes a recorded confirmation: writes the VALID otadata entry if
    /// the active entry is still the trial's (a cut after the record, or the
    /// VALID copy lost), and raises the minimum security version.
    fn complete_confirm(&mut self, entries: &[OtaSelectEntry; 2]) -> Result<(), Error> {
        let Some(pc) = self.store.state.pending_confirm else {
            return Ok(());
        };
        if let Some(active) = active_entry(entries) {
            let e = &entries[active];
            if e.seq == pc.trial_seq
                && e.state != OtaState::Valid
                && let Some(slot) = e.slot(self.layout.app_count)
            {
                let plan = plan_activation(entries, slot, self.layout.app_count, OtaState::Valid)?;
                let min = self.min_security_version(entries).max(pc.security_version);
                let entry = marked(plan.entry, MARK_VALID, None, min);
                self.write_entry(plan.copy, &entry)?;
            }
        }
        if pc.security_version > self.store.state.min_security_version {
            self.store
                .append(&mut self.flash, Record::min_security(pc.security_version))?;
        }
        Ok(())
    }

    /// The boot guard: the first thing the firmware runs at every boot.
    ///
    /// `running` is the slot the bootloader actually started (firmware knows
    /// it from the address it runs from; `None` assumes the slot otadata
    /// selects). Counts attempts of an unconfirmed image, rolls it back when
    /// they are used up, and appends a boot-log record with `timestamp`.
    pub fn boot(
        &mut self,
        running: Option<AppSlot>,
        timestamp: u64,
    ) -> Result<BootDecision, Error> {
        let entries = self.entries()?;
        let seq = active_entry(&entries).map_or(0, |i| entries[i].seq);
        let selected = self.selected(&entries);
        let running = running.unwrap_or(selected);
        self.running = Some(running);
        self.complete_confirm(&entries)?;
        let max_attempts = self.max_attempts();
        if let Some(trial) = self.current_trial(&entries) {
            if self.store.state.trial != Some(trial) {
                // Restored from otadata's mark: record it so attempts count.
                self.store.append(&mut self.flash, Record::trial(&trial))?;
            }
            let trial_slot = AppSlot::Ota(trial.slot);
            if running != trial_slot {
                // The bootloader could not start the new image and fell back.
                self.log_boot(
                    seq,
                    trial_slot,
                    BootOutcome::TrialNotBooted,
                    trial.attempts,
                    timestamp,
                )?;
                let to = self.roll_back(&entries, &trial)?;
                if to == running {
                    return Ok(BootDecision::Run {
                        slot: running,
                        confirmed: true,
                        attempt: 0,
                        max_attempts,
                    });
                }
                return Ok(BootDecision::ResetRequired {
                    from: trial_slot,
                    to,
                    attempts: trial.attempts,
                });
            }
            if trial.attempts >= max_attempts {
                self.log_boot(
                    seq,
                    running,
                    BootOutcome::RolledBack,
                    trial.attempts,
                    timestamp,
                )?;
                let to = self.roll_back(&entries, &trial)?;
                return Ok(BootDecision::ResetRequired {
                    from: running,
                    to,
                    attempts: trial.attempts,
                });
            }
            let attempt = trial.attempts + 1;
            self.log_boot(seq, running, BootOutcome::Trial, attempt, timestamp)?;
            return Ok(BootDecision::Run {
                slot: running,
                confirmed: false,
                attempt,
                max_attempts,
            });
        }
        if running == selected && self.esp_idf_trial(&entries).is_some() {
            // Activated by ESP-IDF's own OTA code with app rollback (state
            // NEW or PENDING_VERIFY): the rollback bootloader gives it this
            // one boot; `confirm` marks it VALID as
            // `esp_ota_mark_app_valid_cancel_rollback` would.
            self.log_boot(seq, running, BootOutcome::Trial, 1, timestamp)?;
            return Ok(BootDecision::Run {
                slot: running,
                confirmed: false,
                attempt: 1,
                max_attempts: 1,
            });
        }
        let outcome = if running == selected {
            BootOutcome::Confirmed
        } else {
            BootOutcome::BootloaderFallback
        };
        self.log_boot(seq, running, outcome, 0, timestamp)?;
        Ok(BootDecision::Run {
            slot: running,
            confirmed: true,
            attempt: 0,
            max_attempts,
        })
    }

    /// The OTA slot of an active entry that ESP-IDF's own OTA code left on
    /// trial (state NEW or PENDING_VERIFY), when Airlift has no trial of
    /// its own for it.
    pub(crate) fn esp_idf_trial(&self, entries: &[OtaSelectEntry; 2]) -> Option<u8> {
        if self.current_trial(entries).is_some() {
            return None;
        }
        let active = &entries[active_entry(entries)?];
        matches!(active.state, OtaState::New | OtaState::PendingVerify)
            .then(|| active.slot(self.layout.app_count))
            .flatten()
    }

    /// Selects the slot that ran before `trial` was activated, in both
    /// otadata copies. Returns the slot selected now.
    ///
    /// Order matters for power cuts: first the previous slot is selected by a
    /// new VALID entry in the copy that does not hold the trial (a cut leaves
    /// the trial selected, and the boot guard rolls back again), then the
    /// trial's copy is replaced by a second VALID entry for the previous slot
    /// (a cut leaves the first one in charge). So after a rollback both
    /// copies select the good image, and losing either copy can never bring
    /// the rejected one back (with one copy left, a damaged copy would make
    /// the bootloader fall back to factory or `ota_0`, which may be the
    /// rejected image). The rejection itself is in the boot log
    /// ([`BootOutcome::RolledBack`]). For a factory previous slot every valid
    /// copy is invalidated, the trial's last, which makes the bootloader
    /// fall back to factory.
    fn roll_back(
        &mut self,
        entries: &[OtaSelectEntry; 2],
        trial: &Trial,
    ) -> Result<AppSlot, Error> {
        let Some(active) = active_entry(entries) else {
            return Ok(self.selected(entries));
        };
        let count = self.layout.app_count;
        let min = self.min_security_version(entries);
        match trial.previous {
            AppSlot::Ota(p) if p < count && p != trial.slot => {
                let first = plan_activation(entries, p, count, OtaState::Valid)?;
                let first_entry = marked(first.entry, MARK_VALID, None, min);
                self.write_entry(first.copy, &first_entry)?;
                let mut now = *entries;
                now[first.copy] = first_entry;
                let second = plan_activation(&now, p, count, OtaState::Valid)?;
                let second_entry = marked(second.entry, MARK_VALID, None, min);
                self.write_entry(second.copy, &second_entry)?;
            }
            _ => {
                let other = 1 - active;
                if entries[other].is_valid() {
                    let mut e = entries[other];
                    e.state = OtaState::Invalid;
                    self.write_entry(other, &e)?;
                }
                let mut bad = entries[active];
                bad.state = OtaState::Invalid;
                self.write_entry(active, &bad)?;
            }
        }
        let now = self.entries()?;
        Ok(self.selected(&now))
    }

    /// Marks the running image good: records the confirmation (the commit
    /// point), writes a VALID otadata entry for its slot (to the copy that
    /// is not active, so a cut leaves the trial entry selected and the boot
    /// guard finishes the job), and raises the stored minimum security
    /// version to the image's. Returns `false` when there was nothing to
    /// confirm (already confirmed, or the trial image is not the one
    /// running).
    pub fn confirm(&mut self) -> Result<bool, Error> {
        let entries = self.entries()?;
        if let Some(slot) = self.esp_idf_trial(&entries)
            && self.running_slot(&entries) == AppSlot::Ota(slot)
        {
            let plan = plan_activation(&entries, slot, self.layout.app_count, OtaState::Valid)?;
            let min = self.min_security_version(&entries);
            self.write_entry(plan.copy, &marked(plan.entry, MARK_VALID, None, min))?;
            return Ok(true);
        }
        let Some(trial) = self.current_trial(&entries) else {
            self.complete_confirm(&entries)?;
            return Ok(false);
        };
        // Only an image that booted (an attempt is recorded) and runs now
        // can be confirmed: a handle opened right after `finish` must not
        // make an image that never ran permanent.
        if trial.attempts == 0 || self.running_slot(&entries) != AppSlot::Ota(trial.slot) {
            return Ok(false);
        }
        let active = active_entry(&entries).map(|i| entries[i]);
        let marked_version = active
            .as_ref()
            .and_then(read_mark)
            .filter(|(mark, _, _)| *mark == MARK_TRIAL)
            .map_or(0, |(_, _, v)| v);
        let security_version = self
            .store
            .state
            .slot_tag(AppSlot::Ota(trial.slot))
            .map_or(0, |t| t.security_version)
            .max(marked_version);
        let plan = plan_activation(&entries, trial.slot, self.layout.app_count, OtaState::Valid)?;
        let min = self.min_security_version(&entries).max(security_version);
        let plan_entry = marked(plan.entry, MARK_VALID, None, min);
        let pending = PendingConfirm {
            trial_seq: trial.seq,
            new_seq: plan.entry.seq,
            security_version,
        };
        // The record is the commit point; the otadata entry and the
        // minimum security version follow (and are redone at boot if cut).
        self.store
            .append(&mut self.flash, Record::confirm(&pending))?;
        self.write_entry(plan.copy, &plan_entry)?;
        if security_version > self.store.state.min_security_version {
            self.store
                .append(&mut self.flash, Record::min_security(security_version))?;
        }
        Ok(true)
    }

    /// The engine's view of the device.
    pub fn status(&mut self) -> Result<Status, Error> {
        let entries = self.entries()?;
        let s = &self.store.state;
        Ok(Status {
            otadata: entries,
            active_copy: active_entry(&entries),
            selected: self.selected(&entries),
            running: self.running_slot(&entries),
            trial: self.current_trial(&entries),
            min_security_version: self.min_security_version(&entries),
            stored_keys: s.key_count,
            max_attempts: self.max_attempts(),
            install: s.install,
            slots: s.slots,
        })
    }

    /// Keys stored in the data partition.
    pub fn stored_keys(&self) -> &[[u8; 32]] {
        self.store.state.keys()
    }

    /// Stores a trusted public key in the data partition (provisioning, for
    /// example `airlift flash create --trust`). Does nothing if it is there.
    /// At most [`crate::store::MAX_STORED_KEYS`] keys are kept.
    pub fn add_trusted_key(&mut self, key: &[u8; 32]) -> Result<(), Error> {
        let keys = self.store.state.keys();
        if keys.contains(key) {
            return Ok(());
        }
        if keys.len() >= crate::store::MAX_STORED_KEYS {
            return Err(Error::TooManyKeys {
                max: crate::store::MAX_STORED_KEYS,
            });
        }
        self.store.append(&mut self.flash, Record::key(key))
    }

    /// Records what is in a slot (provisioning: the factory-flashed image).
    pub fn set_slot_image(&mut self, slot: u8, tag: &ImageTag) -> Result<(), Error> {
        self.store
            .append(&mut self.flash, Record::slot_image(slot, tag))
    }

    /// Raises the stored minimum security version (provisioning).
    pub fn raise_min_security_version(&mut self, version: u32) -> Result<(), Error> {
        if version <= self.store.state.min_security_version {
            return Ok(());
        }
        self.store
            .append(&mut self.flash, Record::min_security(version))
    }

    /// Dates this power-on's boot record, which [`Device::boot`] wrote
    /// without a time (0) because the device did not know it yet (before
    /// the network is up): appends a boot-time record, which the boot log
    /// applies to the boot record before it when that one has no time.
    /// Call it at most once per power-on, after `boot` (the client does).
    /// A power cut before the record is complete leaves the boot undated.
    pub fn date_boot(&mut self, unix_secs: u64) -> Result<(), Error> {
        self.store.date_last_boot(&mut self.flash, unix_secs)
    }

    /// Calls `f` with every boot-log record still kept, oldest first;
    /// [`BootRecord::timestamp`] is 0 for a boot never dated.
    pub fn boot_log(&mut self, f: impl FnMut(&BootRecord)) -> Result<(), Error> {
        self.store.for_each_boot(&mut self.flash, f)
    }

    pub(crate) fn device_chip_id(&mut self, running: AppSlot) -> Result<Option<u16>, Error> {
        self.device_chip(running)
    }
}
