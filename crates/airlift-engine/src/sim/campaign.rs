//! The power-cut campaign, in the manner of MCUboot's simulator.
//!
//! For each path of the update flow (install, activate, first boot of the
//! new image, confirm, boot-counter increment, rollback after the limit,
//! boot-log append, and variants where the data partition's log rotates to
//! a fresh sector in the middle of the path), the campaign counts the flash
//! operations `N` of the path, then for every `k < N` replays the path from
//! the same starting flash: cutting power just before operation
//! `k`, and tearing it (half a program, half an erase: first half done,
//! and also second half done). After each cut it
//! reboots the simulated device (ESP-IDF bootloader, then the boot guard,
//! resetting as often as the guard asks) and checks:
//!
//! * the bootloader starts exactly the slot otadata selects (no fallback
//!   needed), and that slot holds a complete image that verifies and is
//!   byte-identical to the old or the new one;
//! * the state is one the path allows (for example: a cut anywhere in the
//!   install leaves the old image running, confirmed);
//! * a retried update then completes: install (resuming when possible),
//!   reboot into the new image on trial, confirm, reboot into it confirmed.

use core::cell::Cell;
use core::fmt;
use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use airlift_format::manifest::{SigningKey, public_key_from_seed};
use airlift_format::partition::{AIRLIFT_DEFAULT, PartitionEntry, TABLE_OFFSET};

use crate::device::{BootDecision, Config, Device};
use crate::layout::{AppSlot, Layout};
use crate::sim::bootloader::{
    BootloaderKind, SimBoot, run_bootloader_trusting, slot_image_trusting,
};
use crate::sim::flash::{Fault, FaultKind, SimFlash};
use crate::sim::{FLASH_SIZE, layout_of, provision, sign_image, tag_of, test_image};
use crate::store::RECORDS_PER_SECTOR;

/// A path of the update flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    /// `begin` and every `write` of an install (no `finish`).
    Install,
    /// `finish`: verification and activation.
    Activate,
    /// The boot guard's first run on the new image.
    FirstBoot,
    /// `confirm` of the new image.
    Confirm,
    /// The boot guard counting the second attempt.
    BootCounter,
    /// The boot guard rolling back after the last attempt.
    Rollback,
    /// Boot-log appends across a sector rotation of a full (wrapped) log.
    BootLog,
}

impl PathKind {
    /// Every path.
    pub const ALL: [PathKind; 7] = [
        PathKind::Install,
        PathKind::Activate,
        PathKind::FirstBoot,
        PathKind::Confirm,
        PathKind::BootCounter,
        PathKind::Rollback,
        PathKind::BootLog,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Install => "install",
            PathKind::Activate => "activate",
            PathKind::FirstBoot => "first-boot",
            PathKind::Confirm => "confirm",
            PathKind::BootCounter => "boot-counter",
            PathKind::Rollback => "rollback",
            PathKind::BootLog => "boot-log",
        }
    }
}

/// A path, optionally started with the data partition's current sector full
/// so that the path's first record rotates the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Path {
    /// Which path.
    pub kind: PathKind,
    /// Start with a full log sector.
    pub rotating: bool,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        if self.rotating {
            f.write_str("+rotation")?;
        }
        Ok(())
    }
}

impl Path {
    /// The paths of a full campaign: every kind, plus the rotating variants
    /// of those that write records.
    pub fn all() -> Vec<Path> {
        let mut v: Vec<Path> = PathKind::ALL
            .iter()
            .map(|&kind| Path {
                kind,
                rotating: false,
            })
            .collect();
        for kind in [
            PathKind::Activate,
            PathKind::FirstBoot,
            PathKind::Confirm,
            PathKind::Rollback,
        ] {
            v.push(Path {
                kind,
                rotating: true,
            });
        }
        v
    }
}

/// What the campaign runs on.
#[derive(Debug, Clone)]
pub struct CampaignConfig {
    /// The partition table.
    pub partitions: Vec<PartitionEntry>,
    /// Flash size in bytes.
    pub flash_size: usize,
    /// The image the device starts with (in `ota_0`).
    pub old_image: Vec<u8>,
    /// The update.
    pub new_image: Vec<u8>,
    /// Boot attempts of an unconfirmed image.
    pub max_attempts: u8,
    /// Size of the chunks the install is fed with.
    pub chunk_size: usize,
    /// Distance between install progress records.
    pub checkpoint_interval: u32,
    /// The bootloader to simulate.
    pub bootloader: BootloaderKind,
    /// The paths to run.
    pub paths: Vec<Path>,
    /// Also tear each operation the other way round (second half done,
    /// first half not), doubling the torn points.
    pub late_tears: bool,
}

impl CampaignConfig {
    /// The default campaign: Airlift's default layout (ESP-IDF's two-OTA
    /// table plus the `airlift` data partition), two small images, 3
    /// attempts, odd-sized chunks, a progress record every sector.
    pub fn small() -> CampaignConfig {
        CampaignConfig {
            partitions: AIRLIFT_DEFAULT.to_vec(),
            flash_size: FLASH_SIZE,
            old_image: test_image("1.0.0", 0, 6 * 1024),
            new_image: test_image("2.0.0", 1, 11 * 1024),
            max_attempts: 3,
            chunk_size: 1000,
            checkpoint_interval: 4096,
            bootloader: BootloaderKind::Plain,
            paths: Path::all(),
            late_tears: true,
        }
    }
}

/// The result of one path (of this campaign, or of another one that cuts
/// power the same way, such as the client's notes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathReport<P = Path> {
    /// The path.
    pub path: P,
    /// Flash operations (erase or program) on the path.
    pub ops: u64,
    /// Cut-before points tried (one per operation).
    pub cut_points: u64,
    /// Torn points tried (one or two per operation, see
    /// [`CampaignConfig::late_tears`]).
    pub torn_points: u64,
    /// Points after which an invariant failed.
    pub failures: u64,
    /// The first few failures, explained.
    pub examples: Vec<String>,
}

/// Runs every configured path.
pub fn run(cfg: &CampaignConfig) -> Result<Vec<PathReport>, String> {
    let ctx = Ctx::new(cfg)?;
    cfg.paths.iter().map(|&p| ctx.run_path(p)).collect()
}

/// Runs one path.
pub fn run_path(cfg: &CampaignConfig, path: Path) -> Result<PathReport, String> {
    Ctx::new(cfg)?.run_path(path)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Old,
    New,
}

/// A device that booted and runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Running {
    slot: AppSlot,
    which: Which,
    confirmed: bool,
    attempt: u8,
}

impl fmt::Display for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let which = match self.which {
            Which::Old => "old",
            Which::New => "new",
        };
        if self.confirmed {
            write!(f, "{which} image in {} (confirmed)", self.slot)
        } else {
            write!(
                f,
                "{which} image in {} (on trial, attempt {})",
                self.slot, self.attempt
            )
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arm {
    Start,
    Finish,
    Never,
}

struct Ctx<'c> {
    cfg: &'c CampaignConfig,
    layout: Layout,
    blob: Vec<u8>,
    key: [u8; 32],
    clock: Cell<u64>,
}

fn err(e: crate::Error) -> String {
    e.to_string()
}

impl<'c> Ctx<'c> {
    fn new(cfg: &'c CampaignConfig) -> Result<Ctx<'c>, String> {
        let layout = layout_of(&cfg.partitions)?;
        for (name, bytes) in [("old", &cfg.old_image), ("new", &cfg.new_image)] {
            let info = airlift_format::image::verify(bytes)
                .map_err(|e| format!("the {name} image is not an ESP image: {e}"))?;
            if !info.is_valid() {
                return Err(format!("the {name} image fails its checksum or digest"));
            }
        }
        if cfg.old_image == cfg.new_image {
            return Err("the old and new images are identical".into());
        }
        if layout.app_count < 2 {
            return Err("the partition table needs at least two OTA slots".into());
        }
        let seed = [0x5A; 32];
        let blob = sign_image(&cfg.new_image, &SigningKey::from_bytes(&seed), None, None)?;
        Ok(Ctx {
            cfg,
            layout,
            blob,
            key: public_key_from_seed(&seed),
            clock: Cell::new(1_700_000_000),
        })
    }

    fn config(&self) -> Config<'static> {
        Config {
            max_attempts: self.cfg.max_attempts,
            trusted_keys: &[],
            chip_id: None,
            checkpoint_interval: self.cfg.checkpoint_interval,
            table_offset: TABLE_OFFSET,
        }
    }

    fn tick(&self) -> u64 {
        let t = self.clock.get() + 1;
        self.clock.set(t);
        t
    }

    /// The simulated bootloader; the two images (verified once in
    /// [`Ctx::new`]) are recognised by comparison instead of being hashed at
    /// every boot.
    fn bootloader(&self, flash: &mut SimFlash) -> SimBoot {
        let known = [self.cfg.old_image.as_slice(), self.cfg.new_image.as_slice()];
        run_bootloader_trusting(flash, &self.layout, self.cfg.bootloader, &known)
    }

    fn which(&self, flash: &SimFlash, slot: AppSlot) -> Option<Which> {
        let known = [self.cfg.old_image.as_slice(), self.cfg.new_image.as_slice()];
        let bytes = slot_image_trusting(flash, &self.layout, slot, &known)?;
        if bytes == self.cfg.old_image.as_slice() {
            Some(Which::Old)
        } else if bytes == self.cfg.new_image.as_slice() {
            Some(Which::New)
        } else {
            None
        }
    }

    /// Bootloader then boot guard, once; `arm` starts the fault counter
    /// after the bootloader.
    fn boot_once(&self, flash: &mut SimFlash, arm: bool) -> Result<BootDecision, String> {
        let boot = self.bootloader(flash);
        let booted = boot
            .booted
            .ok_or("bricked: the bootloader finds no valid image")?;
        if arm {
            flash.arm();
        }
        let mut dev = Device::open(&mut *flash, self.config()).map_err(err)?;
        dev.boot(Some(booted), self.tick()).map_err(err)
    }

    /// Power on after a cut: reboots until the boot guard lets an image run,
    /// checking what the bootloader starts at every reset.
    fn recover(&self, flash: &mut SimFlash) -> Result<Running, String> {
        for _ in 0..usize::from(self.cfg.max_attempts) + 4 {
            flash.power_cycle();
            let boot = self.bootloader(flash);
            let booted = boot
                .booted
                .ok_or("bricked: the bootloader finds no valid image")?;
            if boot.fell_back() {
                return Err(format!(
                    "otadata selects {} which holds no valid image; the bootloader fell back to {booted}",
                    boot.selected
                ));
            }
            let which = self.which(flash, booted).ok_or_else(|| {
                format!("{booted} holds an image that is neither the old nor the new one")
            })?;
            let mut dev = Device::open(&mut *flash, self.config()).map_err(err)?;
            match dev.boot(Some(booted), self.tick()).map_err(err)? {
                BootDecision::Run {
                    slot,
                    confirmed,
                    attempt,
                    max_attempts,
                } => {
                    if attempt > max_attempts {
                        return Err(format!(
                            "attempt {attempt} exceeds the limit {max_attempts}"
                        ));
                    }
                    return Ok(Running {
                        slot,
                        which,
                        confirmed,
                        attempt,
                    });
                }
                BootDecision::ResetRequired { .. } => continue,
            }
        }
        Err("the boot guard keeps asking for resets".into())
    }

    fn install(&self, flash: &mut SimFlash, arm: Arm, finish: bool) -> Result<(), String> {
        let mut dev = Device::open(&mut *flash, self.config()).map_err(err)?;
        if arm == Arm::Start {
            dev.flash_mut().arm();
        }
        let mut session = dev.begin(&self.blob).map_err(err)?;
        let from = session.resume_offset() as usize;
        for chunk in self.cfg.new_image[from..].chunks(self.cfg.chunk_size.max(1)) {
            session.write(chunk).map_err(err)?;
        }
        if arm == Arm::Finish {
            session.flash_mut().arm();
        }
        if finish {
            session.finish().map_err(err)?;
        }
        Ok(())
    }

    fn confirm(&self, flash: &mut SimFlash, arm_after_boot: bool) -> Result<bool, String> {
        let boot = self.bootloader(flash);
        let booted = boot.booted.ok_or("bricked")?;
        let mut dev = Device::open(&mut *flash, self.config()).map_err(err)?;
        dev.boot(Some(booted), self.tick()).map_err(err)?;
        if arm_after_boot {
            dev.flash_mut().arm();
        }
        dev.confirm().map_err(err)
    }

    /// Appends harmless records (ota_0's tag again) until the ring has
    /// wrapped (if `wrap`) and the current sector has `free` slots left.
    fn pad_log(&self, flash: &mut SimFlash, wrap: bool, free: u16) -> Result<(), String> {
        let tag = tag_of(&self.cfg.old_image);
        let mut dev = Device::open(&mut *flash, self.config()).map_err(err)?;
        for _ in 0..1_000_000 {
            let p = dev.log_position();
            let wrapped = p.current.is_some_and(|(_, seq)| seq > p.sectors);
            if (!wrap || wrapped) && RECORDS_PER_SECTOR - p.next_record == free {
                return Ok(());
            }
            dev.set_slot_image(0, &tag).map_err(err)?;
        }
        Err("could not position the log".into())
    }

    fn pre_state(&self, path: Path) -> Result<SimFlash, String> {
        let mut flash = provision(
            &self.cfg.partitions,
            self.cfg.flash_size,
            &self.cfg.old_image,
            &[self.key],
        )?;
        let first = self.recover(&mut flash)?;
        if first.which != Which::Old || !first.confirmed {
            return Err(format!(
                "fresh device runs {first}, expected the old image confirmed"
            ));
        }
        let trial_boots = match path.kind {
            PathKind::Install | PathKind::Activate | PathKind::BootLog => None,
            PathKind::FirstBoot | PathKind::Confirm => Some(0),
            PathKind::BootCounter => Some(1),
            PathKind::Rollback => Some(self.cfg.max_attempts),
        };
        if let Some(boots) = trial_boots {
            self.install(&mut flash, Arm::Never, true)?;
            for n in 1..=boots {
                match self.boot_once(&mut flash, false)? {
                    BootDecision::Run {
                        confirmed: false,
                        attempt,
                        ..
                    } if attempt == n => {}
                    other => return Err(format!("setup boot {n} of the new image gave {other:?}")),
                }
            }
        }
        if path.kind == PathKind::BootLog {
            self.pad_log(&mut flash, true, 1)?;
        } else if path.rotating {
            return self.rotating_pre_state(path, flash);
        }
        Ok(flash)
    }

    /// Pads the log so that the sector rotation falls inside the measured
    /// part of `path`: the fewest free slots for which the path has more
    /// flash operations than without padding.
    fn rotating_pre_state(&self, path: Path, base: SimFlash) -> Result<SimFlash, String> {
        let mut plain = base.clone();
        self.action(path, &mut plain)?;
        let plain_ops = plain.ops();
        for free in 0..RECORDS_PER_SECTOR - 16 {
            let mut padded = base.clone();
            self.pad_log(&mut padded, true, free)?;
            let mut probe = padded.clone();
            self.action(path, &mut probe)?;
            if probe.ops() > plain_ops {
                return Ok(padded);
            }
        }
        Err(format!(
            "{path}: no log position makes the path rotate the log"
        ))
    }

    fn action(&self, path: Path, flash: &mut SimFlash) -> Result<(), String> {
        match path.kind {
            PathKind::Install => self.install(flash, Arm::Start, false),
            PathKind::Activate => self.install(flash, Arm::Finish, true),
            PathKind::FirstBoot | PathKind::BootCounter | PathKind::Rollback => {
                self.boot_once(flash, true).map(|_| ())
            }
            PathKind::Confirm => self.confirm(flash, true).map(|_| ()),
            PathKind::BootLog => {
                self.boot_once(flash, true)?;
                self.boot_once(flash, false).map(|_| ())
            }
        }
    }

    /// The states a cut on `path` may leave, after recovery.
    fn expect(&self, path: Path, r: &Running) -> Result<(), String> {
        let max = self.cfg.max_attempts.max(1);
        // The new image on trial with an attempt number in `lo..=hi`; when
        // `hi` passes the limit, the boot that would have been attempt
        // `max + 1` rolls back instead, so the old image is allowed too.
        let trial = |lo: u8, hi: u8| {
            (r.which == Which::New && !r.confirmed && (lo..=hi.min(max)).contains(&r.attempt))
                || (hi > max && r.which == Which::Old && r.confirmed)
        };
        let ok = match path.kind {
            PathKind::Install | PathKind::Rollback | PathKind::BootLog => {
                r.which == Which::Old && r.confirmed
            }
            PathKind::Activate => (r.which == Which::Old && r.confirmed) || trial(1, 1),
            PathKind::FirstBoot => trial(1, 2),
            PathKind::Confirm => (r.which == Which::New && r.confirmed) || trial(2, 2),
            PathKind::BootCounter => trial(2, 3),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "after the cut the device runs {r}, not a state {path} allows"
            ))
        }
    }

    /// Finishes the update from wherever the device is: reinstall (resuming)
    /// if the old image runs, confirm the new one, and check it stays.
    fn complete_update(&self, flash: &mut SimFlash, mut r: Running) -> Result<(), String> {
        if r.which == Which::Old {
            self.install(flash, Arm::Never, true)
                .map_err(|e| format!("retried install failed: {e}"))?;
            r = self.recover(flash)?;
            if r.which != Which::New || r.confirmed || r.attempt != 1 {
                return Err(format!(
                    "after the retried install the device runs {r}, expected the new image on trial, attempt 1"
                ));
            }
        }
        if !r.confirmed {
            let mut dev = Device::open(&mut *flash, self.config()).map_err(err)?;
            if !dev.confirm().map_err(err)? {
                return Err("confirm of the new image did nothing".into());
            }
        }
        let end = self.recover(flash)?;
        if end.which != Which::New || !end.confirmed {
            return Err(format!(
                "after confirming, the device runs {end}, expected the new image confirmed"
            ));
        }
        let mut dev = Device::open(&mut *flash, self.config()).map_err(err)?;
        let status = dev.status().map_err(err)?;
        let want = tag_of(&self.cfg.new_image).security_version;
        if status.min_security_version != want {
            return Err(format!(
                "minimum security version is {} after confirming, expected {want}",
                status.min_security_version
            ));
        }
        Ok(())
    }

    fn run_path(&self, path: Path) -> Result<PathReport, String> {
        let pre = self.pre_state(path)?;
        let mut report = PathReport {
            path,
            ops: 0,
            cut_points: 0,
            torn_points: 0,
            failures: 0,
            examples: Vec::new(),
        };
        let fail = |report: &mut PathReport, what: String| {
            report.failures += 1;
            if report.examples.len() < 5 {
                report.examples.push(what);
            }
        };
        // The path without a cut: count its operations, and it must end well too.
        let mut flash = pre.clone();
        self.action(path, &mut flash)
            .map_err(|e| format!("{path} without a power cut failed: {e}"))?;
        report.ops = flash.ops();
        if let Err(e) = self
            .recover(&mut flash)
            .and_then(|r| self.expect(path, &r).map(|()| r))
            .and_then(|r| self.complete_update(&mut flash, r))
        {
            fail(&mut report, format!("no cut: {e}"));
        }
        for k in 0..report.ops {
            let kinds: &[FaultKind] = if self.cfg.late_tears {
                &[FaultKind::CutBefore, FaultKind::Tear, FaultKind::TearLate]
            } else {
                &[FaultKind::CutBefore, FaultKind::Tear]
            };
            for &kind in kinds {
                match kind {
                    FaultKind::CutBefore => report.cut_points += 1,
                    FaultKind::Tear | FaultKind::TearLate => report.torn_points += 1,
                }
                let mut flash = pre.clone();
                flash.set_fault_at_arm(Some(Fault { op: k, kind }));
                let result = self.action(path, &mut flash);
                let label = match kind {
                    FaultKind::CutBefore => "cut before",
                    FaultKind::Tear => "torn (first half done)",
                    FaultKind::TearLate => "torn (second half done)",
                };
                if !flash.is_dead() {
                    fail(
                        &mut report,
                        format!("{label} op {k}: the cut was never reached ({result:?})"),
                    );
                    continue;
                }
                let outcome = self
                    .recover(&mut flash)
                    .and_then(|r| self.expect(path, &r).map(|()| r))
                    .and_then(|r| self.complete_update(&mut flash, r));
                if let Err(e) = outcome {
                    fail(&mut report, format!("{label} op {k}: {e}"));
                }
            }
        }
        Ok(report)
    }
}
