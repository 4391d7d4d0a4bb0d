//! The device's brain between one power-on and the next: what it reports
//! after a boot, what a check-in carries, what it does with the answer,
//! how an update attempt begins and ends, and which events go out when.

use core::fmt;

use airlift_engine::{Activated, AppSlot, BootDecision, BootOutcome, Device};
use airlift_format::image::ImageInfo;
use airlift_format::manifest::{MAX_SIGNED_LEN, SignedManifest, base64_decode};
use airlift_protocol::{
    CheckIn, CheckInAnswer, DETAIL_MAX, EngineState, Event, EventBatch, EventKind, Label,
    LastResult, Reason, RunningImage, TOKEN_REVOKED, Update,
};
use embedded_storage::nor_flash::NorFlash;

use crate::notes::{HistoryEntry, NoteStore, Notes, Outcome, Pending, Source};
use crate::outbox::Outbox;
use crate::session::{Failure, Finished, Session};
use crate::text::{Text, parse_sha_hex, sha_hex};
use crate::time;
use crate::{Error, Journal};

/// Text long enough for any detail the client writes (the wire keeps the
/// first [`DETAIL_MAX`] bytes; the journal gets all of it).
pub type Detail = Text<256>;

/// How long to wait for the next check-in when the device has no server
/// (only the device page can wake it).
pub const OFFLINE_WAIT_MS: u64 = 3_600_000;

/// What the device is told to do, by its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Boots an unconfirmed image gets (as configured in the engine).
    pub max_attempts: u8,
    /// Whether a server is configured (else the device runs offline).
    pub has_server: bool,
    /// Check-in interval that overrides the server's answer, in ms.
    pub poll_ms: Option<u64>,
    /// Wait before retrying a failed check-in or download, in ms.
    pub retry_delay_ms: u64,
    /// Delay the first check-in by a random part of the poll interval (a
    /// fleet does not start in lockstep).
    pub jitter: bool,
    /// Longest the transport can wait for a check-in's answer, in seconds
    /// (a long poll: the server answers as soon as it has an update); 0
    /// for a transport that cannot wait, whose check-ins are answered at
    /// once.
    pub long_poll_seconds: u32,
}

/// The time, as the caller knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// A monotonic clock in milliseconds (event ages).
    pub now_ms: u64,
    /// Wall-clock Unix seconds, or 0 without one (boot log, history).
    pub unix_secs: u64,
}

/// The image running now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// Slot it runs from.
    pub slot: AppSlot,
    /// Project name.
    pub project: Label,
    /// Version.
    pub version: Label,
    /// SHA-256 of the image file.
    pub sha256: [u8; 32],
    /// Security version.
    pub security_version: u32,
    /// Chip id.
    pub chip_id: u16,
    /// Whether it is confirmed.
    pub confirmed: bool,
    /// This boot's attempt number for an unconfirmed image.
    pub attempt: u8,
}

impl Running {
    /// The image `info` found in `slot`, taken as confirmed until the boot
    /// guard says otherwise.
    pub fn new(slot: AppSlot, info: &ImageInfo) -> Running {
        let desc = info.app_desc.as_ref();
        Running {
            slot,
            project: Text::from_str_cut(desc.map_or("", |d| d.project_name())).0,
            version: Text::from_str_cut(desc.map_or("", |d| d.version())).0,
            sha256: info.file_sha256,
            security_version: desc.map_or(0, |d| d.secure_version()),
            chip_id: info.header.chip_id,
            confirmed: true,
            attempt: 0,
        }
    }

    fn slot_index(&self) -> u8 {
        match self.slot {
            AppSlot::Ota(n) => n,
            AppSlot::Factory => 0,
        }
    }
}

/// What to do after the boot guard ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootStep {
    /// Reset the chip now (the boot guard rolled back).
    Reset,
    /// Run the image: confirmed, or on trial (call [`Client::confirm`] once
    /// it is healthy).
    Run {
        /// Whether it is confirmed.
        confirmed: bool,
    },
}

/// What to do after a check-in was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// Wait this long before the next check-in (unless an install follows).
    pub wait_ms: u64,
    /// A result this check-in reported for the first time.
    pub reported: Option<(EventKind, Option<Reason>)>,
    /// An update to install ([`Client::begin_assigned`]).
    pub update: Option<Update>,
}

/// Why a local install was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The protocol reason code.
    pub reason: Reason,
    /// What was wrong.
    pub message: Text<DETAIL_MAX>,
}

impl Refusal {
    /// A local install whose image or manifest could not be fetched (the
    /// device page's pull): nothing was written.
    pub fn download(message: &str) -> Refusal {
        Refusal {
            reason: Reason::Download,
            message: Text::from_str_cut(message),
        }
    }
}

/// An update attempt that may start: the signed manifest and where it came from.
#[derive(Debug, Clone)]
pub struct Attempt {
    blob: [u8; MAX_SIGNED_LEN],
    len: usize,
    /// The deployment it belongs to.
    pub deployment: Option<u64>,
    /// Where it came from.
    pub source: Source,
    /// The new image's version.
    pub version: Label,
}

impl Attempt {
    /// The signed manifest.
    pub fn manifest(&self) -> &[u8] {
        &self.blob[..self.len]
    }
}

/// The device's update logic around the engine. One per power-on: what it
/// holds in RAM is lost at a reset, like the device's RAM.
#[derive(Debug, Clone)]
pub struct Client {
    config: Config,
    store: NoteStore,
    notes: Notes,
    running: Option<Running>,
    outbox: Outbox,
    /// A final result the next check-in (made at once) reports for the
    /// first time, with its detail (the result itself is in the notes and
    /// repeated at every check-in).
    unreported: Option<(EventKind, Option<Reason>, Text<DETAIL_MAX>)>,
    /// A check-in of this power-on was answered: later ones may wait (the
    /// first is answered at once, so the device soon knows its name and
    /// the server its state; the next follows at once and waits).
    answered: bool,
    /// The monotonic clock when this power-on's boot guard ran, while its
    /// boot record waits to be dated.
    undated_boot: Option<u64>,
    /// History entries this power-on wrote undated (the newest ones).
    undated: u8,
}

fn log_event(j: &mut impl Journal, kind: EventKind, reason: Option<Reason>, detail: &str) {
    struct Why(Option<Reason>);
    impl fmt::Display for Why {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                Some(r) => write!(f, " ({r})"),
                None => Ok(()),
            }
        }
    }
    if detail.is_empty() {
        j.log(format_args!("event {kind}{}", Why(reason)));
    } else {
        j.log(format_args!("event {kind}{}: {detail}", Why(reason)));
    }
}

impl Client {
    /// A client whose notes are kept in `store`.
    pub fn new(config: Config, store: NoteStore) -> Client {
        Client {
            config,
            store,
            notes: Notes::default(),
            running: None,
            outbox: Outbox::default(),
            unreported: None,
            answered: false,
            undated_boot: None,
            undated: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The image running now (after [`Client::boot`]).
    pub fn running(&self) -> Option<&Running> {
        self.running.as_ref()
    }

    /// The notes as they are now.
    pub fn notes(&self) -> &Notes {
        &self.notes
    }

    /// Whether events wait to be sent.
    pub fn has_events(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The events to send now, each with its age (one request).
    pub fn take_events(&mut self, now_ms: u64) -> EventBatch {
        self.outbox.take(now_ms)
    }

    /// Queues an event (sent with the next request of events).
    pub fn event(
        &mut self,
        deployment: Option<u64>,
        kind: EventKind,
        reason: Option<Reason>,
        detail: &str,
        now_ms: u64,
        j: &mut impl Journal,
    ) {
        log_event(j, kind, reason, detail);
        let event = Event {
            deployment,
            kind,
            reason,
            detail: (!detail.is_empty()).then(|| Text::<DETAIL_MAX>::from_str_cut(detail).0),
            age_ms: None,
        };
        self.outbox.push(event, now_ms);
    }

    /// The boot guard, then what to report about this boot. `selected` is
    /// the slot otadata selects, `slot` and `info` what the bootloader
    /// started.
    pub fn boot<F: NorFlash>(
        &mut self,
        dev: &mut Device<'_, F>,
        selected: AppSlot,
        slot: AppSlot,
        info: &ImageInfo,
        clock: Clock,
        j: &mut impl Journal,
    ) -> Result<BootStep, Error> {
        let mut running = Running::new(slot, info);
        self.undated_boot = (clock.unix_secs == 0).then_some(clock.now_ms);
        let (confirmed, attempt) = match dev.boot(Some(slot), clock.unix_secs)? {
            BootDecision::ResetRequired { from, to, attempts } => {
                j.log(format_args!(
                    "boot guard: {from} did not confirm in {attempts} boots; rolled back to {to}, resetting"
                ));
                return Ok(BootStep::Reset);
            }
            BootDecision::Run {
                confirmed, attempt, ..
            } => (confirmed, attempt),
        };
        running.confirmed = confirmed;
        running.attempt = attempt;
        if confirmed {
            j.log(format_args!(
                "booted {} {} from {}",
                running.project, running.version, running.slot
            ));
        } else {
            j.log(format_args!(
                "booted {} {} from {} on trial (attempt {attempt} of {})",
                running.project, running.version, running.slot, self.config.max_attempts
            ));
        }
        self.notes = self.store.load(dev.flash_mut())?;
        self.running = Some(running.clone());
        self.resolve_pending(dev, &running, clock, j)?;
        if let Some(detail) = fallback(dev, selected, &running)? {
            self.event(
                None,
                EventKind::Booted,
                Some(Reason::Verification),
                detail.as_str(),
                clock.now_ms,
                j,
            );
        }
        if !confirmed {
            let deployment = self
                .notes
                .pending
                .as_ref()
                .filter(|p| p.sha256 == running.sha256)
                .and_then(|p| p.deployment);
            let detail: Detail = Text::format(format_args!(
                "attempt {attempt} of {}",
                self.config.max_attempts
            ));
            self.event(
                deployment,
                EventKind::Booted,
                None,
                detail.as_str(),
                clock.now_ms,
                j,
            );
        }
        Ok(BootStep::Run { confirmed })
    }

    /// After a boot: did the pending update confirm earlier (and the report
    /// got lost to a reset), or was it rolled back?
    fn resolve_pending<F: NorFlash>(
        &mut self,
        dev: &mut Device<'_, F>,
        running: &Running,
        clock: Clock,
        j: &mut impl Journal,
    ) -> Result<(), Error> {
        let Some(p) = self.notes.pending.clone() else {
            return Ok(());
        };
        if p.sha256 == running.sha256 {
            if running.confirmed {
                let detail: Detail = Text::format(format_args!("{} is confirmed", p.version));
                self.finish(dev, EventKind::Confirmed, None, &detail, clock, j)?;
            }
            return Ok(());
        }
        if trial_boots(dev, &p.sha256)? > p.trials_before {
            let detail: Detail = Text::format(format_args!(
                "{} did not confirm within {} boots; back on {}",
                p.version, self.config.max_attempts, running.version
            ));
            self.finish(
                dev,
                EventKind::RolledBack,
                Some(Reason::BootFailed),
                &detail,
                clock,
                j,
            )?;
        }
        Ok(())
    }

    /// The image on trial passed its health check: confirms it and reports.
    pub fn confirm<F: NorFlash>(
        &mut self,
        dev: &mut Device<'_, F>,
        clock: Clock,
        j: &mut impl Journal,
    ) -> Result<(), Error> {
        dev.confirm()?;
        let Some(running) = self.running.as_mut() else {
            return Ok(());
        };
        running.confirmed = true;
        let detail: Detail =
            Text::format(format_args!("{} passed its health check", running.version));
        self.finish(dev, EventKind::Confirmed, None, &detail, clock, j)
    }

    /// Ends an update attempt: records the result in the notes (the commit
    /// point), then reports it. The result of a server deployment rides on
    /// the check-in the device makes at once when no event waits (one
    /// request instead of two; the server counts a check-in's result only
    /// for its deployments, so a local upload's goes out as an event).
    pub fn finish<F: NorFlash>(
        &mut self,
        dev: &mut Device<'_, F>,
        kind: EventKind,
        reason: Option<Reason>,
        detail: &Detail,
        clock: Clock,
        j: &mut impl Journal,
    ) -> Result<(), Error> {
        let pending = self.notes.pending.take();
        let deployment = pending.as_ref().and_then(|p| p.deployment);
        self.notes.last_result = Some(Outcome {
            deployment,
            kind,
            reason,
        });
        let entry = pending.as_ref().map(|p| HistoryEntry {
            at: time::stamp(clock),
            version: p.version.clone(),
            sha256: p.sha256,
            source: p.source,
            deployment,
            result: kind,
            reason,
            detail: detail.cut(),
        });
        self.store
            .save(dev.flash_mut(), &self.notes, entry.as_ref())?;
        if entry.is_some() && clock.unix_secs == 0 {
            self.undated = self.undated.saturating_add(1);
        }
        if self.config.has_server && deployment.is_some() && self.outbox.is_empty() {
            match reason {
                Some(r) => j.log(format_args!(
                    "result {kind} ({r}): {detail} (reported at the next check-in)"
                )),
                None => j.log(format_args!(
                    "result {kind}: {detail} (reported at the next check-in)"
                )),
            }
            self.unreported = Some((kind, reason, detail.cut::<DETAIL_MAX>().into()));
        } else {
            self.event(deployment, kind, reason, detail.as_str(), clock.now_ms, j);
        }
        Ok(())
    }

    /// The device learnt the time (`clock.unix_secs`, from a time server):
    /// dates what this power-on wrote before it knew it, the boot record
    /// and history entries ([`crate::time`]). Call it once the time is
    /// known; later calls find nothing to date.
    pub fn time_known<F: NorFlash>(
        &mut self,
        dev: &mut Device<'_, F>,
        clock: Clock,
        j: &mut impl Journal,
    ) -> Result<(), Error> {
        if clock.unix_secs == 0 {
            return Ok(());
        }
        if let Some(boot_ms) = self.undated_boot {
            let since_boot = clock.now_ms.saturating_sub(boot_ms) / 1000;
            dev.date_boot(clock.unix_secs.saturating_sub(since_boot))?;
            self.undated_boot = None;
            j.log(format_args!("time known: boot dated"));
        }
        if self.undated > 0 {
            self.store.redate(
                dev.flash_mut(),
                &self.notes,
                usize::from(self.undated),
                clock,
            )?;
            j.log(format_args!(
                "time known: {} history entries dated",
                self.undated
            ));
            self.undated = 0;
        }
        Ok(())
    }

    /// How long to wait before the first check-in of this power-on:
    /// at once, or with jitter a random part (`random`, any number) of the
    /// poll interval, unless a result waits to be reported.
    pub fn first_wait_ms(&self, random: u64) -> u64 {
        if !self.config.jitter || self.unreported.is_some() {
            return 0;
        }
        let poll = self.config.poll_ms.unwrap_or(1000);
        poll * (random % 1000) / 1000
    }

    /// What the next check-in reports. With a transport that can wait
    /// ([`Config::long_poll_seconds`]), every check-in but the first of a
    /// power-on says how long it may be held.
    pub fn check_in(&self) -> Option<CheckIn> {
        let running = self.running.as_ref()?;
        Some(CheckIn {
            chip_id: running.chip_id,
            running: RunningImage {
                project: running.project.clone(),
                version: running.version.clone(),
                sha256: sha_hex(&running.sha256),
                security_version: running.security_version,
                slot: running.slot_index(),
            },
            state: if self.notes.pending.is_some() {
                EngineState::Downloading
            } else {
                EngineState::Idle
            },
            boot_count: 0,
            last_result: self.notes.last_result.map(|r| LastResult {
                deployment: r.deployment,
                kind: r.kind,
                reason: r.reason,
                detail: self
                    .unreported
                    .as_ref()
                    .filter(|u| u.0 == r.kind)
                    .map(|u| u.2.0.clone()),
            }),
            long_poll_seconds: (self.answered && self.config.long_poll_seconds > 0)
                .then_some(self.config.long_poll_seconds),
        })
    }

    /// The check-in failed: how long to wait before the next.
    pub fn check_in_failed_wait_ms(&self) -> u64 {
        self.config
            .poll_ms
            .unwrap_or(self.config.retry_delay_ms)
            .max(self.config.retry_delay_ms)
    }

    /// The server refused the check-in with the error `code` of its answer
    /// ([`airlift_protocol::ErrorAnswer`]): how long to wait before the
    /// next. A token the server says was revoked ([`TOKEN_REVOKED`]) will be
    /// refused as often as it is sent: the device needs a new token, not
    /// another try, so it asks again only after [`OFFLINE_WAIT_MS`].
    pub fn check_in_refused_wait_ms(&self, code: &str) -> u64 {
        if code == TOKEN_REVOKED {
            OFFLINE_WAIT_MS
        } else {
            self.check_in_failed_wait_ms()
        }
    }

    /// After an update attempt that did not reset the device: try again
    /// soon (a download resumes where it stopped).
    pub fn retry_wait_ms(&self, wait_ms: u64) -> u64 {
        wait_ms.min(self.config.retry_delay_ms)
    }

    /// The server answered a check-in: the next wait, the result it heard
    /// for the first time, an update withdrawn (forgotten), one to install.
    pub fn on_answer<F: NorFlash>(
        &mut self,
        dev: &mut Device<'_, F>,
        answer: CheckInAnswer,
        j: &mut impl Journal,
    ) -> Result<Answered, Error> {
        let reported = self.unreported.take().map(|(k, r, _)| (k, r));
        let first = !self.answered;
        self.answered = true;
        // After the first answer of a power-on, a device that can wait
        // checks in again at once, to wait there.
        let wait_ms = match self.config.poll_ms {
            Some(ms) => ms,
            None if first && self.config.long_poll_seconds > 0 => 0,
            None => u64::from(answer.poll_seconds) * 1000,
        };
        let running_sha = self.running.as_ref().map(|r| r.sha256);
        let offered = answer
            .update
            .as_ref()
            .and_then(|u| parse_sha_hex(&u.sha256));
        let withdrawn = self.notes.pending.as_ref().is_some_and(|p| {
            p.source == Source::Server && Some(p.sha256) != running_sha && offered != Some(p.sha256)
        });
        if withdrawn {
            // Cancelled or superseded: forget it (the engine's progress
            // record only resumes the same image).
            self.notes.pending = None;
            self.store.save(dev.flash_mut(), &self.notes, None)?;
            j.log(format_args!("the server withdrew the update in progress"));
        }
        let update = answer
            .update
            .filter(|u| running_sha.is_none() || parse_sha_hex(&u.sha256) != running_sha);
        Ok(Answered {
            wait_ms,
            reported,
            update,
        })
    }

    fn begin_pending<F: NorFlash>(
        &mut self,
        dev: &mut Device<'_, F>,
        deployment: Option<u64>,
        sha256: [u8; 32],
        version: &str,
        source: Source,
    ) -> Result<(), Error> {
        if self
            .notes
            .pending
            .as_ref()
            .is_some_and(|p| p.sha256 == sha256 && p.deployment == deployment)
        {
            return Ok(());
        }
        let trials_before = trial_boots(dev, &sha256)?;
        self.notes.pending = Some(Pending {
            deployment,
            sha256,
            version: Text::from_str_cut(version).0,
            source,
            trials_before,
        });
        self.store.save(dev.flash_mut(), &self.notes, None)?;
        Ok(())
    }

    /// An update the server assigned begins: remembered in the notes (so a
    /// reset knows which deployment a boot belongs to). `None` when its
    /// manifest cannot even be decoded (reported as failed).
    pub fn begin_assigned<F: NorFlash>(
        &mut self,
        dev: &mut Device<'_, F>,
        update: &Update,
        clock: Clock,
        j: &mut impl Journal,
    ) -> Result<Option<Attempt>, Error> {
        let sha = parse_sha_hex(&update.sha256).unwrap_or([0; 32]);
        self.begin_pending(
            dev,
            Some(update.deployment),
            sha,
            &update.version,
            Source::Server,
        )?;
        let mut blob = [0u8; MAX_SIGNED_LEN + 8];
        match base64_decode(update.manifest.as_bytes(), &mut blob) {
            Ok(n) if n <= MAX_SIGNED_LEN => {
                let mut attempt = Attempt {
                    blob: [0; MAX_SIGNED_LEN],
                    len: n,
                    deployment: Some(update.deployment),
                    source: Source::Server,
                    version: update.version.clone(),
                };
                attempt.blob[..n].copy_from_slice(&blob[..n]);
                Ok(Some(attempt))
            }
            other => {
                let detail: Detail = match other {
                    Err(e) => Text::format(format_args!("manifest is not base64: {e}")),
                    Ok(n) => Text::format(format_args!(
                        "manifest is {n} bytes, more than a signed manifest's {MAX_SIGNED_LEN}"
                    )),
                };
                self.finish(
                    dev,
                    EventKind::Failed,
                    Some(Reason::Signature),
                    &detail,
                    clock,
                    j,
                )?;
                Ok(None)
            }
        }
    }

    /// A local install (an upload or a pull on the device page) begins, or
    /// is refused because `manifest` is not a signed manifest at all.
    pub fn begin_local<F: NorFlash>(
        &mut self,
        dev: &mut Device<'_, F>,
        source: Source,
        manifest: &[u8],
    ) -> Result<Result<Attempt, Refusal>, Error> {
        let parsed = match SignedManifest::parse(manifest) {
            Ok(m) if manifest.len() <= MAX_SIGNED_LEN => m,
            Ok(_) => {
                return Ok(Err(Refusal {
                    reason: Reason::Signature,
                    message: Text::from_str_cut("not a signed manifest: too long"),
                }));
            }
            Err(e) => {
                return Ok(Err(Refusal {
                    reason: Reason::Signature,
                    message: Text::format(format_args!("not a signed manifest: {e}")),
                }));
            }
        };
        let m = parsed.manifest;
        let mut attempt = Attempt {
            blob: [0; MAX_SIGNED_LEN],
            len: manifest.len(),
            deployment: None,
            source,
            version: Text::from_str_cut(m.version).0,
        };
        attempt.blob[..manifest.len()].copy_from_slice(manifest);
        self.begin_pending(dev, None, m.image_sha256, m.version, source)?;
        Ok(Ok(attempt))
    }

    /// Starts the engine's session for `attempt` and reports the download.
    pub fn start<'d, 'k, F: NorFlash>(
        &mut self,
        dev: &'d mut Device<'k, F>,
        attempt: &Attempt,
        now_ms: u64,
        j: &mut impl Journal,
    ) -> Result<Session<'d, 'k, F>, Failure> {
        let session = Session::begin(dev, attempt.manifest())?;
        self.downloading(attempt, session.resume_offset(), now_ms, j);
        Ok(session)
    }

    /// Reported with the install's result (the server marks the assignment
    /// downloading when the device starts fetching).
    fn downloading(&mut self, attempt: &Attempt, from: u32, now_ms: u64, j: &mut impl Journal) {
        let detail: Detail = if from > 0 {
            Text::format(format_args!("resuming at byte {from}"))
        } else {
            Text::default()
        };
        self.event(
            attempt.deployment,
            EventKind::Downloading,
            None,
            detail.as_str(),
            now_ms,
            j,
        );
    }

    /// The session began again from byte 0 after a stale resume.
    pub fn restarted(
        &mut self,
        attempt: &Attempt,
        resumed_at: u32,
        now_ms: u64,
        j: &mut impl Journal,
    ) {
        j.log(format_args!(
            "{}",
            airlift_engine::Error::StaleResume { resumed_at }
        ));
        self.downloading(attempt, 0, now_ms, j);
    }

    /// Every byte is in: verifies and activates. `Ok(Some)`: send the
    /// events and reset. `Ok(None)`: the session restarted from byte 0:
    /// feed it again.
    pub fn finish_install<F: NorFlash>(
        &mut self,
        session: &mut Session<'_, '_, F>,
        attempt: &Attempt,
        now_ms: u64,
        j: &mut impl Journal,
    ) -> Result<Option<Activated>, Failure> {
        // Verification takes microseconds once the bytes are in: its event
        // goes out with the result (installed and rebooting, or failed).
        self.event(
            attempt.deployment,
            EventKind::Verifying,
            None,
            "",
            now_ms,
            j,
        );
        match session.finish()? {
            Finished::Activated(a) => {
                let detail: Detail = Text::format(format_args!(
                    "activated ota_{} (otadata seq {})",
                    a.slot, a.seq
                ));
                self.event(
                    attempt.deployment,
                    EventKind::Installed,
                    None,
                    detail.as_str(),
                    now_ms,
                    j,
                );
                self.event(
                    attempt.deployment,
                    EventKind::Rebooting,
                    None,
                    "",
                    now_ms,
                    j,
                );
                Ok(Some(a))
            }
            Finished::Restarted { resumed_at } => {
                self.restarted(attempt, resumed_at, now_ms, j);
                Ok(None)
            }
        }
    }

    /// An attempt ended without activating: a refusal is the attempt's
    /// result; a broken download of a server's update resumes at the next
    /// check-in (the assignment still offers it), a local one fails; a flash
    /// error is the caller's (a power cut). Returns the refusal for a local
    /// caller.
    pub fn install_failed<F: NorFlash>(
        &mut self,
        dev: &mut Device<'_, F>,
        attempt: &Attempt,
        failure: Failure,
        clock: Clock,
        j: &mut impl Journal,
    ) -> Result<Option<Refusal>, Error> {
        let reason = failure.reason();
        let detail: Detail = Text::format(format_args!("{failure}"));
        match failure {
            Failure::Flash(e) => Err(Error::Engine(e)),
            Failure::Download(m) if attempt.source == Source::Server => {
                j.log(format_args!("download interrupted, will resume: {m}"));
                Ok(None)
            }
            Failure::Refused(_) | Failure::Download(_) => {
                self.finish(dev, EventKind::Failed, Some(reason), &detail, clock, j)?;
                Ok(Some(Refusal {
                    reason,
                    message: detail.cut().into(),
                }))
            }
        }
    }

    /// Calls `f` with every history entry in the notes, oldest first.
    pub fn history<F: NorFlash>(
        &self,
        dev: &mut Device<'_, F>,
        f: impl FnMut(&HistoryEntry),
    ) -> Result<(), Error> {
        Ok(self.store.history(dev.flash_mut(), f)?)
    }
}

/// When this boot is one the bootloader had to fall back for (the image
/// otadata selects is not valid, and no update was on trial: the engine
/// logged [`BootOutcome::BootloaderFallback`]), what to tell the server: a
/// device silently running another image than the one it was given is what
/// a fleet operator must hear about, the more so when that image is below
/// the device's minimum security version.
fn fallback<F: NorFlash>(
    dev: &mut Device<'_, F>,
    selected: AppSlot,
    running: &Running,
) -> Result<Option<Detail>, Error> {
    let mut last = None;
    dev.boot_log(|r| last = Some(r.outcome))?;
    if last != Some(BootOutcome::BootloaderFallback) {
        return Ok(None);
    }
    let min = dev.status()?.min_security_version;
    struct Below(u32, u32);
    impl fmt::Display for Below {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.0 < self.1 {
                write!(
                    f,
                    ", whose security version {} is below the device's minimum {}",
                    self.0, self.1
                )?;
            }
            Ok(())
        }
    }
    Ok(Some(Text::format(format_args!(
        "the bootloader could not start {selected} (not a valid image) and started {} {} from {}{}",
        running.project,
        running.version,
        running.slot,
        Below(running.security_version, min)
    ))))
}

/// Counts boot-log records of trial boots of the image `sha256`.
fn trial_boots<F: NorFlash>(dev: &mut Device<'_, F>, sha256: &[u8; 32]) -> Result<u32, Error> {
    let mut n = 0;
    dev.boot_log(|r| {
        let trial = matches!(
            r.outcome,
            BootOutcome::Trial | BootOutcome::RolledBack | BootOutcome::TrialNotBooted
        );
        if trial && sha256[..8] == r.sha_prefix {
            n += 1;
        }
    })?;
    Ok(n)
}
