//! An install session: stream an image into the inactive slot, verify it, activate it.

use airlift_format::image::ImageVerifier;
use airlift_format::manifest::{ManifestError, SignedManifest, key_id};
use airlift_format::otadata::{BLANK_SEQ, OtaState, OtadataError, active_entry, plan_activation};
use embedded_storage::nor_flash::NorFlash;

use crate::device::{Activated, Device};
use crate::error::{Error, flash_err};
use crate::layout::{AppSlot, Region};
use crate::store::{ImageTag, InstallProgress, Record, SECTOR_SIZE, Version};

/// Bytes buffered before a program operation when the caller's chunks are
/// small or unaligned; larger aligned chunks are programmed directly.
pub const WRITE_BUFFER_LEN: usize = 256;
/// Bytes read back from flash at a time to feed the verifier (on the stack).
pub const READ_BACK_LEN: usize = 256;

impl<'k, F: NorFlash> Device<'k, F> {
    /// Starts installing the image a signed manifest describes into the next
    /// OTA slot after the running one.
    ///
    /// Checks, in order: the manifest's form and signature (against the
    /// configured and stored keys), that the running image is confirmed,
    /// the chip, the target slot (not the running one), the size, and the
    /// security version. If an earlier install of the same image into the
    /// same slot was interrupted, and the slot still holds exactly the bytes
    /// that install wrote (their SHA-256 is in its progress record), the
    /// session resumes it (see [`Install::resume_offset`]); otherwise the
    /// progress is cleared (one record), since this install overwrites those
    /// sectors. Writes nothing else to flash.
    ///
    /// A manifest refused here leaves the progress of an earlier install
    /// alone: it wrote nothing.
    pub fn begin<'d>(&'d mut self, blob: &[u8]) -> Result<Install<'d, 'k, F>, Error> {
        self.begin_inner(blob, None)
    }

    /// Like [`Device::begin`], into an explicit OTA slot.
    pub fn begin_slot<'d>(
        &'d mut self,
        blob: &[u8],
        slot: u8,
    ) -> Result<Install<'d, 'k, F>, Error> {
        self.begin_inner(blob, Some(slot))
    }

    fn verify_signature(&self, signed: &SignedManifest<'_>) -> Result<(), Error> {
        let id = signed.manifest.key_id;
        let key = self
            .config
            .trusted_keys
            .iter()
            .chain(self.store.state.keys())
            .find(|k| key_id(k) == id)
            .ok_or(Error::UnknownKey { key_id: id })?;
        signed
            .verify(core::slice::from_ref(key))
            .map_err(|e| match e {
                ManifestError::UnknownKey(key_id) => Error::UnknownKey { key_id },
                ManifestError::BadSignature | ManifestError::InvalidTrustedKey(_) => {
                    Error::BadSignature
                }
                other => Error::Manifest(other),
            })
    }

    fn begin_inner<'d>(
        &'d mut self,
        blob: &[u8],
        slot: Option<u8>,
    ) -> Result<Install<'d, 'k, F>, Error> {
        let signed = SignedManifest::parse(blob).map_err(Error::Manifest)?;
        self.verify_signature(&signed)?;
        let m = signed.manifest;
        let entries = self.entries()?;
        if self.current_trial(&entries).is_some() || self.esp_idf_trial(&entries).is_some() {
            return Err(Error::RunningImageUnconfirmed);
        }
        let running = self.running_slot(&entries);
        // Activation, confirmation and a two-entry rollback each need a
        // higher sequence number: refuse now rather than activate an image
        // that could then be neither confirmed nor rolled back.
        if let Some(active) = active_entry(&entries) {
            let current = entries[active].seq;
            let headroom = 4 * u32::from(self.layout.app_count.max(1));
            if current.checked_add(headroom).is_none_or(|s| s == BLANK_SEQ) {
                return Err(Error::Otadata(OtadataError::SequenceExhausted { current }));
            }
        }
        if let Some(chip) = self.device_chip_id(running)?
            && chip != m.chip_id
        {
            return Err(Error::WrongChip {
                expected: chip,
                got: m.chip_id,
            });
        }
        let slot = slot.unwrap_or_else(|| self.layout.next_update_slot(running));
        let region = self
            .layout
            .slot(AppSlot::Ota(slot))
            .ok_or(Error::NoSuchSlot { slot })?;
        let overlaps = |r: Region| region.offset < r.end() && r.offset < region.end();
        if AppSlot::Ota(slot) == running || self.layout.slot(running).is_some_and(overlaps) {
            return Err(Error::RunningSlotTarget { slot: running });
        }
        if m.image_size > region.size {
            return Err(Error::TooBig {
                size: m.image_size,
                slot_size: region.size,
            });
        }
        let minimum = self.min_security_version(&entries);
        if m.security_version < minimum {
            return Err(Error::OlderSecurityVersion {
                got: m.security_version,
                minimum,
            });
        }
        if m.delta_base_sha256.is_some() {
            return Err(Error::DeltaUnsupported);
        }
        let mut sha_prefix = [0u8; 8];
        sha_prefix.copy_from_slice(&m.image_sha256[..8]);
        let interval = self.config.checkpoint_interval.max(SECTOR_SIZE) / SECTOR_SIZE * SECTOR_SIZE;
        let mut install = Install {
            device: self,
            slot,
            region,
            size: m.image_size,
            sha256: m.image_sha256,
            chip_id: m.chip_id,
            tag: ImageTag {
                sha_prefix,
                security_version: m.security_version,
                version: Version::new(m.version),
            },
            verifier: ImageVerifier::new(),
            received: 0,
            resumed_from: 0,
            programmed: 0,
            erased_to: 0,
            checkpoint_interval: interval,
            next_checkpoint: interval,
            chip_checked: false,
            failed: false,
            pending: [0xFF; WRITE_BUFFER_LEN],
            pending_len: 0,
        };
        install.try_resume()?;
        Ok(install)
    }
}

/// An install in progress. Borrows the device; nothing else may touch the
/// flash until it is finished or aborted.
pub struct Install<'d, 'k, F: NorFlash> {
    device: &'d mut Device<'k, F>,
    slot: u8,
    region: Region,
    size: u32,
    sha256: [u8; 32],
    chip_id: u16,
    tag: ImageTag,
    verifier: ImageVerifier,
    /// Bytes accepted from the caller.
    received: u32,
    /// Where this session resumed an earlier attempt (0: it did not).
    resumed_from: u32,
    /// Bytes programmed (and fed to the verifier, read back from flash).
    programmed: u32,
    /// Bytes of the slot erased, from its start.
    erased_to: u32,
    checkpoint_interval: u32,
    next_checkpoint: u32,
    chip_checked: bool,
    failed: bool,
    pending: [u8; WRITE_BUFFER_LEN],
    pending_len: usize,
}

impl<'d, 'k, F: NorFlash> Install<'d, 'k, F> {
    /// The target OTA slot.
    pub fn slot(&self) -> u8 {
        self.slot
    }

    /// The image size the manifest announced.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Where the caller's stream must continue: 0 for a fresh install, or
    /// the offset an interrupted install of the same image reached (a whole
    /// number of sectors, already on flash and re-verified).
    pub fn resume_offset(&self) -> u32 {
        self.received
    }

    /// The flash, for simulators (fault injection). Writing to it behind the
    /// session's back voids every guarantee.
    pub fn flash_mut(&mut self) -> &mut F {
        &mut self.device.flash
    }

    fn try_resume(&mut self) -> Result<(), Error> {
        let Some(p) = self.device.store.state.install else {
            return Ok(());
        };
        let same = p.slot == self.slot
            && p.image_sha256 == self.sha256
            && p.size == self.size
            && p.offset <= self.size
            && p.offset.is_multiple_of(SECTOR_SIZE);
        if same && p.offset > 0 {
            // The bytes must still be the ones that attempt wrote and read
            // back: re-read them, and compare their hash with the record's.
            let intact = match self.feed_from_flash(0, p.offset) {
                Ok(()) => self.verifier.sha256_so_far()[..16] == p.written_sha_prefix,
                Err(Error::Flash(kind)) => return Err(Error::Flash(kind)),
                Err(_) => false,
            };
            if intact {
                self.received = p.offset;
                self.resumed_from = p.offset;
                self.programmed = p.offset;
                self.erased_to = p.offset;
                self.next_checkpoint = p.offset.saturating_add(self.checkpoint_interval);
                return Ok(());
            }
            self.verifier = ImageVerifier::new();
            self.chip_checked = false;
        }
        // Another image's progress, or bytes that are no longer what it
        // vouched for: this install overwrites those sectors, so forget it.
        self.device
            .store
            .append(&mut self.device.flash, Record::install_clear())
    }

    /// Ends the session with a refusal: the progress record goes (nothing of
    /// a refused attempt is ever resumed onto), and a verification failure of
    /// a resumed session becomes [`Error::StaleResume`], since the bytes an
    /// earlier attempt left may be what failed. Flash errors are not
    /// refusals: like a power cut, they leave the last checkpoint to resume.
    fn refuse(&mut self, e: Error) -> Error {
        self.failed = true;
        if matches!(e, Error::Flash(_) | Error::SessionFailed) {
            return e;
        }
        if self.device.store.state.install.is_some()
            && let Err(flash) = self
                .device
                .store
                .append(&mut self.device.flash, Record::install_clear())
        {
            return flash;
        }
        let verification = matches!(
            e,
            Error::Image(_)
                | Error::WrongChip { .. }
                | Error::ChecksumMismatch
                | Error::DigestMismatch
                | Error::ShaMismatch
        );
        if verification && self.resumed_from > 0 {
            return Error::StaleResume {
                resumed_at: self.resumed_from,
            };
        }
        e
    }

    /// Accepts the next bytes of the image, in chunks of any size. Erases
    /// ahead, programs, and verifies what was programmed (read back).
    ///
    /// An error ends the session. A refusal (too many bytes, not a valid
    /// image, another chip) also clears the progress record, so no later
    /// install resumes onto these bytes; after [`Error::StaleResume`] begin
    /// again, from byte 0.
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.failed {
            return Err(Error::SessionFailed);
        }
        self.write_inner(data).map_err(|e| self.refuse(e))
    }

    fn write_inner(&mut self, mut data: &[u8]) -> Result<(), Error> {
        if data.len() as u64 + u64::from(self.received) > u64::from(self.size) {
            return Err(Error::TooMuchData { size: self.size });
        }
        while !data.is_empty() {
            if self.pending_len > 0 || data.len() < WRITE_BUFFER_LEN {
                let n = (WRITE_BUFFER_LEN - self.pending_len).min(data.len());
                self.pending[self.pending_len..self.pending_len + n].copy_from_slice(&data[..n]);
                self.pending_len += n;
                self.received += n as u32;
                data = &data[n..];
                if self.pending_len == WRITE_BUFFER_LEN {
                    let block = self.pending;
                    self.pending_len = 0;
                    self.program(&block)?;
                }
            } else {
                let n = data.len() / WRITE_BUFFER_LEN * WRITE_BUFFER_LEN;
                self.received += n as u32;
                self.program(&data[..n])?;
                data = &data[n..];
            }
        }
        Ok(())
    }

    /// Programs `bytes` at the current position (a multiple of the write
    /// size long), one sector at a time, erasing each sector first.
    fn program(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let mut done = 0usize;
        while done < bytes.len() {
            let pos = self.programmed;
            if pos >= self.erased_to {
                let from = self.region.offset + self.erased_to;
                self.device
                    .flash
                    .erase(from, from + SECTOR_SIZE)
                    .map_err(flash_err)?;
                self.erased_to += SECTOR_SIZE;
            }
            let n = ((self.erased_to - pos) as usize).min(bytes.len() - done);
            self.device
                .flash
                .write(self.region.offset + pos, &bytes[done..done + n])
                .map_err(flash_err)?;
            self.feed_from_flash(pos, n as u32)?;
            self.programmed += n as u32;
            done += n;
            if self.programmed >= self.next_checkpoint
                && self.programmed.is_multiple_of(SECTOR_SIZE)
            {
                let mut written_sha_prefix = [0u8; 16];
                written_sha_prefix.copy_from_slice(&self.verifier.sha256_so_far()[..16]);
                let progress = InstallProgress {
                    slot: self.slot,
                    image_sha256: self.sha256,
                    size: self.size,
                    offset: self.programmed,
                    written_sha_prefix,
                };
                self.device
                    .store
                    .append(&mut self.device.flash, Record::install(&progress))?;
                self.next_checkpoint = self.programmed.saturating_add(self.checkpoint_interval);
            }
        }
        Ok(())
    }

    /// Feeds the verifier with what the slot holds at `[pos, pos + len)`
    /// (image bytes only, not the write-size padding), so what is verified
    /// is what is on flash.
    fn feed_from_flash(&mut self, pos: u32, len: u32) -> Result<(), Error> {
        let end = (pos + len).min(self.size);
        let mut at = pos;
        let mut buf = [0u8; READ_BACK_LEN];
        while at < end {
            let n = ((end - at) as usize).min(READ_BACK_LEN);
            // Drivers with READ_SIZE > 1 need whole words: the last read may
            // take a few padding bytes of the slot, which are not fed.
            let aligned = n.next_multiple_of(F::READ_SIZE).min(READ_BACK_LEN);
            self.device
                .flash
                .read(self.region.offset + at, &mut buf[..aligned])
                .map_err(flash_err)?;
            self.verifier.update(&buf[..n])?;
            at += n as u32;
        }
        if !self.chip_checked
            && let Some(h) = self.verifier.header()
        {
            self.chip_checked = true;
            if h.chip_id != self.chip_id {
                return Err(Error::WrongChip {
                    expected: self.chip_id,
                    got: h.chip_id,
                });
            }
        }
        Ok(())
    }

    /// Verifies the whole image (structure, checksum, appended digest, and
    /// SHA-256 against the signed manifest) and activates it: one otadata
    /// entry write (sequence number and state UNDEFINED together) into the
    /// copy that is not active. The next boot starts it on trial.
    ///
    /// A refusal (truncated, invalid, a digest or SHA-256 mismatch) clears
    /// the progress record; a resumed session whose image does not verify
    /// answers [`Error::StaleResume`]: begin again, from byte 0.
    pub fn finish(mut self) -> Result<Activated, Error> {
        self.finish_in_place()
    }

    /// [`Install::finish`] that keeps the session, so that after a refusal
    /// the caller can take the device back ([`Install::into_device`]) and
    /// begin again: what a client does after [`Error::StaleResume`]. The
    /// session is over either way: later calls answer
    /// [`Error::SessionFailed`].
    pub fn finish_in_place(&mut self) -> Result<Activated, Error> {
        if self.failed {
            return Err(Error::SessionFailed);
        }
        if self.received < self.size {
            let truncated = Error::Truncated {
                got: self.received,
                expected: self.size,
            };
            return Err(self.refuse(truncated));
        }
        if self.pending_len > 0 {
            let w = F::WRITE_SIZE;
            let len = self.pending_len.div_ceil(w) * w;
            let mut block = self.pending;
            block[self.pending_len..len].fill(0xFF);
            self.pending_len = 0;
            if let Err(e) = self.program(&block[..len]) {
                return Err(self.refuse(e));
            }
        }
        match self.verify() {
            Ok(()) => {
                // Whatever activation answers, this session is done.
                self.failed = true;
                self.activate()
            }
            Err(e) => Err(self.refuse(e)),
        }
    }

    /// Ends the session without touching the flash (as dropping it does:
    /// the last checkpoint stays to resume from) and gives the device back.
    pub fn into_device(self) -> &'d mut Device<'k, F> {
        self.device
    }

    fn verify(&mut self) -> Result<(), Error> {
        let verifier = core::mem::take(&mut self.verifier);
        let info = verifier.finish()?;
        if info.header.chip_id != self.chip_id {
            return Err(Error::WrongChip {
                expected: self.chip_id,
                got: info.header.chip_id,
            });
        }
        if !info.checksum_valid() {
            return Err(Error::ChecksumMismatch);
        }
        if !info.digest_valid() {
            return Err(Error::DigestMismatch);
        }
        if info.file_sha256 != self.sha256 {
            return Err(Error::ShaMismatch);
        }
        Ok(())
    }

    fn activate(&mut self) -> Result<Activated, Error> {
        let device = &mut *self.device;
        let entries = device.entries()?;
        let running = device.running_slot(&entries);
        let plan = plan_activation(
            &entries,
            self.slot,
            device.layout.app_count,
            OtaState::Undefined,
        )?;
        device.store.append(
            &mut device.flash,
            Record::activation(plan.entry.seq, self.slot, running, &self.tag),
        )?;
        let entry = crate::device::marked(
            plan.entry,
            crate::device::MARK_TRIAL,
            Some(running),
            self.tag.security_version,
        );
        device.write_entry(plan.copy, &entry)?;
        Ok(Activated {
            slot: self.slot,
            seq: plan.entry.seq,
        })
    }

    /// Abandons the install. The running image stays selected (otadata was
    /// never touched); the progress record is cleared so nothing resumes.
    ///
    /// Dropping a session without `finish` or `abort` (a download that broke
    /// off) keeps the last checkpoint, so the same image can resume there.
    pub fn abort(self) -> Result<(), Error> {
        if self.device.store.state.install.is_some() {
            self.device
                .store
                .append(&mut self.device.flash, Record::install_clear())?;
        }
        Ok(())
    }
}
