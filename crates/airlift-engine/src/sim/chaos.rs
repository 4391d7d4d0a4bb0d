//! The chaos campaign: random sequences of everything that happens to a
//! device in the field, checked after every step against the engine's
//! promises.
//!
//! The power-cut campaign ([`super::campaign`]) cuts power at every flash
//! operation of one good update. This one asks what no single path can: can
//! any *sequence* of failures block a good update? Each sequence starts from
//! a freshly provisioned device and draws operations at random, from a seed:
//!
//! * installs of good releases, newer, the same or older, and of different
//!   releases one after another, fed in chunks of random sizes, that finish,
//!   abort or break off part way (a dropped connection: the next install of
//!   the same release may resume);
//! * hostile or broken installs under a good manifest: truncated, one bit
//!   flipped, another valid image, an image for another chip, too many
//!   bytes;
//! * manifests the device must refuse outright: signed by an untrusted key,
//!   a forged signature, another chip, larger than the slot, and releases
//!   below the device's minimum security version;
//! * resets (a healthy reboot, or the image on trial crashing), confirms;
//! * on any of them, with some probability, a power cut before, or in the
//!   middle of, a random flash operation (torn programs and erases).
//!
//! The device is driven the way a client drives the engine: a session is
//! fed from [`Install::resume_offset`](crate::Install::resume_offset), and
//! after [`Error::StaleResume`] it begins once more, from byte 0.
//!
//! After every step it checks:
//!
//! * the slot the device was running was not written;
//! * a refused install left no progress to resume and did not touch
//!   otadata; a refused manifest wrote nothing at all;
//! * an install that reported success activated exactly the release's
//!   bytes, and a good install always succeeds (unless the running image is
//!   on trial, or the release is below the minimum security version, which
//!   are refused by name);
//! * every boot starts the slot otadata selects, holding a complete,
//!   verified image that is the confirmed release, or the release on trial;
//!   trial boots count up to the limit and then roll back to the confirmed
//!   release;
//! * the minimum security version never goes down, and never passes the
//!   highest confirmed release's;
//! * and, on a copy of the flash, that a fresh good release offered now
//!   installs, boots on trial, confirms and stays.
//!
//! A failure names the sequence's seed: [`run_sequence`] with that seed
//! replays it exactly (`airlift sim chaos --replay SEED`).

use std::format;
use std::string::String;
use std::vec::Vec;

use airlift_format::image::{Chip, ImageBuilder};
use airlift_format::manifest::{self, Manifest, SigningKey, public_key_from_seed};
use airlift_format::partition::{
    AIRLIFT_DATA_LABEL, AIRLIFT_DATA_SUBTYPE, PartitionEntry, PartitionType, TABLE_OFFSET,
    app_subtype, data_subtype,
};

use crate::device::{BootDecision, Config, Device};
use crate::error::Error;
use crate::layout::{AppSlot, Layout};
use crate::sim::bootloader::{BootloaderKind, read_otadata, run_bootloader_trusting};
use crate::sim::flash::{Fault, FaultKind, SimFlash};
use crate::sim::{layout_of, provision, test_image};

/// What a chaos run does.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Sequences to run, each from a freshly provisioned device.
    pub sequences: u64,
    /// Operations per sequence.
    pub steps: u32,
    /// The run's seed; each sequence's seed is derived from it.
    pub seed: u64,
    /// Boot attempts of an unconfirmed image.
    pub max_attempts: u8,
    /// Percentage of operations that get a power cut (0..=100).
    pub power_cut_percent: u8,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            sequences: 1000,
            steps: 24,
            seed: 0x000A_1F71_0000_0010,
            max_attempts: 3,
            power_cut_percent: 25,
        }
    }
}

/// What a run tried, and what failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChaosReport {
    /// Sequences run.
    pub sequences: u64,
    /// What the sequences did, summed.
    pub totals: Stats,
    /// Sequences in which a promise was broken.
    pub failures: u64,
    /// The first few failures, each with the seed that replays it.
    pub examples: Vec<String>,
}

/// What one sequence, or a whole run, did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Operations run (every step; liveness checks not counted).
    pub operations: u64,
    /// Power cuts that happened (an operation ended by losing power).
    pub power_cuts: u64,
    /// Of those, cuts in the middle of a program or erase.
    pub torn_writes: u64,
    /// Installs and manifests the engine refused.
    pub refusals: u64,
    /// Installs that activated a release.
    pub activations: u64,
    /// Resumed installs (a session that went on from an earlier attempt).
    pub resumes: u64,
    /// Resumed installs that did not verify and were begun again from 0.
    pub stale_resumes: u64,
    /// Trial images confirmed.
    pub confirms: u64,
    /// Trial images rolled back by the boot guard.
    pub rollbacks: u64,
    /// Good updates offered on a copy of the device after a step.
    pub liveness_checks: u64,
}

impl Stats {
    fn add(&mut self, s: &Stats) {
        self.operations += s.operations;
        self.power_cuts += s.power_cuts;
        self.torn_writes += s.torn_writes;
        self.refusals += s.refusals;
        self.activations += s.activations;
        self.resumes += s.resumes;
        self.stale_resumes += s.stale_resumes;
        self.confirms += s.confirms;
        self.rollbacks += s.rollbacks;
        self.liveness_checks += s.liveness_checks;
    }
}

/// The seed of sequence `index` of a run seeded with `seed`.
pub fn sequence_seed(seed: u64, index: u64) -> u64 {
    Rng(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next()
}

/// Runs `cfg.sequences` sequences; `progress` is called after each one
/// with the report so far (for a progress line).
pub fn run(cfg: &ChaosConfig, mut progress: impl FnMut(&ChaosReport)) -> ChaosReport {
    let mut report = ChaosReport::default();
    let world = match World::new(cfg) {
        Ok(w) => w,
        Err(e) => {
            report.failures = 1;
            report.examples.push(e);
            return report;
        }
    };
    for i in 0..cfg.sequences {
        let seed = sequence_seed(cfg.seed, i);
        let mut stats = Stats::default();
        let result = world.sequence(seed, &mut stats);
        report.sequences += 1;
        report.totals.add(&stats);
        if let Err(e) = result {
            report.failures += 1;
            if report.examples.len() < 5 {
                report
                    .examples
                    .push(format!("sequence seed {seed:#018x}: {e}"));
            }
        }
        progress(&report);
    }
    report
}

/// Replays one sequence from its seed (as a failure names it).
pub fn run_sequence(cfg: &ChaosConfig, seed: u64) -> Result<Stats, String> {
    let world = World::new(cfg)?;
    let mut stats = Stats::default();
    world.sequence(seed, &mut stats).map(|()| stats)
}

/// SplitMix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn percent(&mut self, p: u8) -> bool {
        self.below(100) < u64::from(p)
    }
}

/// Flash size of the chaos device: a compact layout keeps copies cheap.
const FLASH_SIZE: usize = 0x4_0000;
const SLOT_SIZE: u32 = 0x1_0000;

fn table() -> Vec<PartitionEntry> {
    let entry = |label, kind, subtype, offset, size| {
        PartitionEntry::new(label, kind, subtype, offset, size, 0).ok()
    };
    [
        entry(
            "otadata",
            PartitionType::DATA,
            data_subtype::OTA,
            0xd000,
            0x2000,
        ),
        entry(
            "ota_0",
            PartitionType::APP,
            app_subtype::OTA_0,
            0x1_0000,
            SLOT_SIZE,
        ),
        entry(
            "ota_1",
            PartitionType::APP,
            app_subtype::OTA_0 + 1,
            0x2_0000,
            SLOT_SIZE,
        ),
        // Four sectors: the log rotates every few dozen records.
        entry(
            AIRLIFT_DATA_LABEL,
            PartitionType::DATA,
            AIRLIFT_DATA_SUBTYPE,
            0x3_0000,
            0x4000,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// A release the server could offer: the image and its signed manifest.
struct Release {
    image: Vec<u8>,
    blob: Vec<u8>,
    security_version: u32,
}

/// Everything the sequences share, made once per run.
struct World {
    cfg: ChaosConfig,
    layout: Layout,
    fresh: SimFlash,
    releases: Vec<Release>,
    /// Valid ESP32 images that are no release.
    foreign: Vec<Vec<u8>>,
    /// A valid image for the ESP32-C3.
    other_chip: Vec<u8>,
    untrusted: SigningKey,
    key: SigningKey,
}

fn manifest_of(
    image: &[u8],
    security_version: u32,
    edit: impl FnOnce(&mut Manifest<'_>),
) -> Manifest<'static> {
    let info = airlift_format::image::verify(image).ok();
    let mut m = Manifest {
        chip_id: info.as_ref().map_or(0, |i| i.header.chip_id),
        security_version,
        image_size: image.len() as u32,
        image_sha256: info.map_or([0; 32], |i| i.file_sha256),
        delta_base_sha256: None,
        key_id: [0; 8],
        product: "airlift-sim",
        version: "chaos",
    };
    edit(&mut m);
    m
}

fn signed(m: &Manifest<'_>, key: &SigningKey) -> Vec<u8> {
    manifest::sign(m, key).unwrap_or_default()
}

impl World {
    fn new(cfg: &ChaosConfig) -> Result<World, String> {
        let key = SigningKey::from_bytes(&[0x6B; 32]);
        let untrusted = SigningKey::from_bytes(&[0x75; 32]);
        let table = table();
        // More releases than a sequence can move through (a step offers at
        // most the release after the next fresh one).
        let count = 2 * cfg.steps as usize + 8;
        let releases: Vec<Release> = (0..count)
            .map(|k| {
                // Security versions step up every fourth release, so older
                // releases below the device's minimum turn up.
                let security_version = (k / 4) as u32;
                let size = 5_000 + (k * 2_311) % 20_000;
                let image = test_image(&format!("1.0.{k}"), security_version, size);
                let blob = signed(&manifest_of(&image, security_version, |_| {}), &key);
                Release {
                    image,
                    blob,
                    security_version,
                }
            })
            .collect();
        let foreign = [7_000usize, 13_000, 21_000]
            .iter()
            .map(|&n| test_image(&format!("foreign-{n}"), 0, n))
            .collect();
        let other_chip = ImageBuilder::new(Chip::Esp32c3)
            .app("airlift-sim", "c3")
            .filler(0x3C00_0020, 256)
            .filler(0x4200_0020, 9_000)
            .build();
        let keys = [public_key_from_seed(&[0x6B; 32])];
        let layout = layout_of(&table)?;
        let fresh = provision(&table, FLASH_SIZE, &releases[0].image, &keys)?;
        Ok(World {
            cfg: cfg.clone(),
            layout,
            fresh,
            releases,
            foreign,
            other_chip,
            untrusted,
            key,
        })
    }

    fn last_release(&self) -> usize {
        self.releases.len() - 1
    }

    fn config(&self) -> Config<'static> {
        Config {
            max_attempts: self.cfg.max_attempts,
            // A progress record every sector: resumes at every boundary.
            checkpoint_interval: 4096,
            table_offset: TABLE_OFFSET,
            ..Config::default()
        }
    }

    fn sequence(&self, seed: u64, stats: &mut Stats) -> Result<(), String> {
        let mut rng = Rng(seed);
        let kind = if rng.percent(50) {
            BootloaderKind::Plain
        } else {
            BootloaderKind::Rollback
        };
        let mut dev = Sim {
            world: self,
            flash: self.fresh.clone(),
            kind,
            clock: 1_800_000_000,
            model: Model {
                confirmed: 0,
                trial: None,
                activated: None,
                running: AppSlot::Ota(0),
                next: 1,
                min_security_version: 0,
                confirmed_max_security_version: 0,
            },
        };
        dev.reboot(stats).map_err(|e| format!("first boot: {e}"))?;
        for step in 0..self.cfg.steps {
            let op = Op::draw(&mut rng, &dev.model, self);
            let fault = rng.percent(self.cfg.power_cut_percent).then(|| Fault {
                op: rng.below(op.flash_ops_hint(self)),
                kind: match rng.below(3) {
                    0 => FaultKind::CutBefore,
                    1 => FaultKind::Tear,
                    _ => FaultKind::TearLate,
                },
            });
            stats.operations += 1;
            dev.step(&op, fault, stats)
                .and_then(|()| dev.check_liveness(stats))
                .map_err(|e| {
                    let cut = fault.map_or(String::new(), |f| {
                        format!(" with a power cut at flash op {} ({:?})", f.op, f.kind)
                    });
                    format!("step {step} ({op:?}{cut}) on a {kind:?} bootloader: {e}")
                })?;
        }
        Ok(())
    }
}

/// What the test expects of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Model {
    /// The release confirmed last: what runs when nothing is on trial.
    confirmed: usize,
    /// The release running on trial, and its last attempt.
    trial: Option<(usize, u8)>,
    /// The release installed and activated, not booted yet.
    activated: Option<usize>,
    /// The slot running now.
    running: AppSlot,
    /// The next release never offered as fresh.
    next: usize,
    /// The device's minimum security version, as last read.
    min_security_version: u32,
    /// The highest security version of any release ever confirmed.
    confirmed_max_security_version: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// The next fresh release.
    Fresh,
    /// The one after it (another manifest than a fresh attempt's).
    Skip,
    /// The confirmed release again, into the other slot.
    Same,
    /// An older release (below the minimum security version, sometimes).
    Older,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bytes {
    Good,
    /// The first `n` bytes.
    Truncated(usize),
    /// One bit flipped at this offset.
    Corrupted(usize),
    /// Another valid ESP32 image.
    Foreign(usize),
    /// A valid image for the ESP32-C3.
    OtherChip,
    /// The image and 64 more bytes.
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Finish,
    Abort,
    /// The connection drops after this many bytes of the session.
    BreakOff(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BadManifest {
    Untrusted,
    ForgedSignature,
    OtherChip,
    LargerThanSlot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Install {
        release: usize,
        pick: Pick,
        bytes: Bytes,
        chunk: usize,
        end: End,
    },
    Refused(BadManifest),
    /// A reset: the board reboots (the image on trial crashed, or power
    /// came back).
    Reset,
    Confirm,
}

impl Op {
    fn draw(rng: &mut Rng, m: &Model, w: &World) -> Op {
        // On trial, most installs are refused by name: spend most steps on
        // what moves the device on (resets, crashes, confirms).
        let (reset, confirm) = if m.trial.is_some() || m.activated.is_some() {
            (45, 75)
        } else {
            (12, 20)
        };
        let roll = rng.below(100);
        if roll < reset {
            return Op::Reset;
        }
        if roll < confirm {
            return Op::Confirm;
        }
        if roll < confirm + 6 {
            return Op::Refused(match rng.below(4) {
                0 => BadManifest::Untrusted,
                1 => BadManifest::ForgedSignature,
                2 => BadManifest::OtherChip,
                _ => BadManifest::LargerThanSlot,
            });
        }
        let pick = match rng.below(10) {
            0..=4 => Pick::Fresh,
            5 | 6 => Pick::Skip,
            7 => Pick::Same,
            _ => Pick::Older,
        };
        let release = match pick {
            Pick::Fresh => m.next,
            Pick::Skip => m.next + 1,
            Pick::Same => m.confirmed,
            Pick::Older => rng.below(m.confirmed.max(1) as u64) as usize,
        }
        .min(w.last_release() - 1);
        let len = w.releases[release].image.len();
        let bytes = match rng.below(12) {
            0..=4 => Bytes::Good,
            5 | 6 => Bytes::Truncated(rng.below(len as u64) as usize),
            7 | 8 => Bytes::Corrupted(rng.below(len as u64) as usize),
            9 => Bytes::Foreign(rng.below(w.foreign.len() as u64) as usize),
            10 => Bytes::OtherChip,
            _ => Bytes::TooLong,
        };
        let end = match rng.below(10) {
            0..=6 => End::Finish,
            7 => End::Abort,
            _ => End::BreakOff(rng.below(len as u64) as usize),
        };
        let chunk = match rng.below(4) {
            0 => 1 + rng.below(64) as usize,
            1 => 4096,
            _ => 1 + rng.below(8192) as usize,
        };
        Op::Install {
            release,
            pick,
            bytes,
            chunk,
            end,
        }
    }

    /// Roughly how many flash operations the operation takes, so that the
    /// power cut's position spreads over all of them (a cut drawn past the
    /// end never happens).
    fn flash_ops_hint(&self, w: &World) -> u64 {
        match self {
            Op::Install { release, .. } => {
                let len = w.releases[*release].image.len() as u64;
                len / 256 + len / 4096 + 12
            }
            Op::Refused(_) => 1,
            Op::Reset | Op::Confirm => 10,
        }
    }
}

/// One device in a sequence.
struct Sim<'w> {
    world: &'w World,
    flash: SimFlash,
    kind: BootloaderKind,
    clock: u64,
    model: Model,
}

/// How an install session ended.
#[derive(Debug)]
enum Outcome {
    Activated,
    /// Aborted, or broke off.
    Stopped,
    Refused(Error),
    /// The power went.
    PowerLost,
}

impl Sim<'_> {
    fn device(&mut self) -> Result<Device<'static, &mut SimFlash>, String> {
        let cfg = self.world.config();
        Device::open(&mut self.flash, cfg).map_err(|e| format!("open: {e}"))
    }

    fn slot_bytes(&self, slot: AppSlot) -> Vec<u8> {
        self.world
            .layout
            .slot(slot)
            .and_then(|r| self.flash.bytes().get(r.offset as usize..r.end() as usize))
            .map_or_else(Vec::new, <[u8]>::to_vec)
    }

    fn otadata_bytes(&self) -> Vec<u8> {
        let r = self.world.layout.otadata;
        self.flash.bytes()[r.offset as usize..r.end() as usize].to_vec()
    }

    fn release_in(&self, slot: AppSlot, release: usize) -> bool {
        let image = &self.world.releases[release].image;
        self.slot_bytes(slot).get(..image.len()) == Some(image.as_slice())
    }

    fn other_slot(&self) -> AppSlot {
        AppSlot::Ota(self.world.layout.next_update_slot(self.model.running))
    }

    /// One step, with an optional power cut, then recovery if the power went.
    fn step(&mut self, op: &Op, fault: Option<Fault>, stats: &mut Stats) -> Result<(), String> {
        let running_before = self.slot_bytes(self.model.running);
        let running_slot = self.model.running;
        self.flash.arm();
        self.flash.set_fault(fault);
        let result = match *op {
            Op::Install {
                release,
                pick,
                bytes,
                chunk,
                end,
            } => self.install(release, pick, bytes, chunk, end, stats),
            Op::Refused(bad) => self.refused(bad, stats),
            Op::Reset => self.reboot(stats),
            Op::Confirm => self.confirm(stats),
        };
        let cut = self.flash.is_dead();
        self.flash.set_fault(None);
        if self.slot_bytes(running_slot) != running_before {
            return Err(format!("the running slot {running_slot} was written"));
        }
        if cut {
            stats.power_cuts += 1;
            if fault.is_some_and(|f| f.kind != FaultKind::CutBefore) {
                stats.torn_writes += 1;
            }
            return self.recover(op, stats);
        }
        result
    }

    /// Feeds one session the way a client does; `None` when `begin` refused.
    fn session(
        &mut self,
        blob: &[u8],
        data: &[u8],
        chunk: usize,
        end: End,
        stats: &mut Stats,
    ) -> Result<Outcome, String> {
        let mut dev = self.device()?;
        let mut s = match dev.begin(blob) {
            Ok(s) => s,
            Err(Error::Flash(_)) => return Ok(Outcome::PowerLost),
            Err(e) => return Ok(Outcome::Refused(e)),
        };
        let from = s.resume_offset() as usize;
        if from > 0 {
            stats.resumes += 1;
        }
        let rest = data.get(from..).unwrap_or(&[]);
        let rest = match end {
            End::BreakOff(n) => &rest[..n.min(rest.len())],
            _ => rest,
        };
        for c in rest.chunks(chunk.max(1)) {
            match s.write(c) {
                Ok(()) => {}
                Err(Error::Flash(_)) => return Ok(Outcome::PowerLost),
                Err(e) => return Ok(Outcome::Refused(e)),
            }
        }
        Ok(match end {
            End::BreakOff(_) => Outcome::Stopped,
            End::Abort => match s.abort() {
                Ok(()) => Outcome::Stopped,
                Err(Error::Flash(_)) => Outcome::PowerLost,
                Err(e) => return Err(format!("abort failed: {e}")),
            },
            End::Finish => match s.finish() {
                Ok(_) => Outcome::Activated,
                Err(Error::Flash(_)) => Outcome::PowerLost,
                Err(e) => Outcome::Refused(e),
            },
        })
    }

    fn install(
        &mut self,
        release: usize,
        pick: Pick,
        bytes: Bytes,
        chunk: usize,
        end: End,
        stats: &mut Stats,
    ) -> Result<(), String> {
        let w = self.world;
        let r = &w.releases[release];
        let mut data = match bytes {
            Bytes::Good | Bytes::Corrupted(_) => r.image.clone(),
            Bytes::Truncated(n) => r.image[..n].to_vec(),
            Bytes::Foreign(i) => w.foreign[i].clone(),
            Bytes::OtherChip => w.other_chip.clone(),
            Bytes::TooLong => {
                let mut v = r.image.clone();
                v.extend_from_slice(&[0x5A; 64]);
                v
            }
        };
        if let Bytes::Corrupted(at) = bytes {
            data[at] ^= 0x20;
        }
        let otadata_before = self.otadata_bytes();
        let target = self.other_slot();
        let mut outcome = self.session(&r.blob, &data, chunk, end, stats)?;
        if let Outcome::Refused(Error::StaleResume { .. }) = outcome {
            // The client's rule: once more, from byte 0.
            stats.stale_resumes += 1;
            if self.status()?.install.is_some() {
                return Err("a stale resume left its progress".into());
            }
            outcome = self.session(&r.blob, &data, chunk, end, stats)?;
        }
        let on_trial = self.model.trial.is_some() || self.model.activated.is_some();
        let must_activate = bytes == Bytes::Good
            && end == End::Finish
            && !on_trial
            && r.security_version >= self.model.min_security_version;
        match outcome {
            Outcome::PowerLost => Ok(()),
            Outcome::Refused(e) if must_activate => Err(format!("a good install was refused: {e}")),
            Outcome::Stopped if must_activate => Err("a good install stopped".into()),
            Outcome::Refused(e) => {
                stats.refusals += 1;
                let expected = if on_trial {
                    matches!(e, Error::RunningImageUnconfirmed)
                } else if r.security_version < self.model.min_security_version {
                    matches!(e, Error::OlderSecurityVersion { .. })
                } else {
                    bytes != Bytes::Good
                        && !matches!(
                            e,
                            Error::RunningImageUnconfirmed | Error::OlderSecurityVersion { .. }
                        )
                };
                if !expected {
                    return Err(format!("install refused: {e}"));
                }
                if matches!(e, Error::StaleResume { .. }) {
                    return Err("a session begun from byte 0 reported a stale resume".into());
                }
                if self.otadata_bytes() != otadata_before {
                    return Err(format!("refused install ({e}) changed otadata"));
                }
                let status = self.status()?;
                let begin_refusal = matches!(
                    e,
                    Error::RunningImageUnconfirmed | Error::OlderSecurityVersion { .. }
                );
                if !begin_refusal && status.install.is_some() {
                    return Err(format!("refused install ({e}) left progress to resume"));
                }
                Ok(())
            }
            Outcome::Stopped => {
                if on_trial {
                    return Err("an install began while the running image is on trial".into());
                }
                if self.otadata_bytes() != otadata_before {
                    return Err("an install that did not finish changed otadata".into());
                }
                if end == End::Abort && self.status()?.install.is_some() {
                    return Err("an aborted install left progress to resume".into());
                }
                Ok(())
            }
            Outcome::Activated => {
                if on_trial || r.security_version < self.model.min_security_version {
                    return Err("an install that must be refused activated".into());
                }
                if !self.release_in(target, release) {
                    return Err(format!(
                        "activated {target}, which does not hold release {release}'s bytes ({bytes:?})"
                    ));
                }
                stats.activations += 1;
                self.model.activated = Some(release);
                if matches!(pick, Pick::Fresh | Pick::Skip) {
                    self.model.next = self.model.next.max(release + 1);
                }
                Ok(())
            }
        }
    }

    fn refused(&mut self, bad: BadManifest, stats: &mut Stats) -> Result<(), String> {
        let w = self.world;
        let r = &w.releases[self.model.next.min(w.last_release())];
        let blob = match bad {
            BadManifest::Untrusted => signed(
                &manifest_of(&r.image, r.security_version, |_| {}),
                &w.untrusted,
            ),
            BadManifest::ForgedSignature => {
                let mut b = r.blob.clone();
                if let Some(last) = b.last_mut() {
                    *last ^= 1;
                }
                b
            }
            BadManifest::OtherChip => signed(
                &manifest_of(&r.image, r.security_version, |m| {
                    m.chip_id = Chip::Esp32c3.id()
                }),
                &w.key,
            ),
            BadManifest::LargerThanSlot => signed(
                &manifest_of(&r.image, r.security_version, |m| {
                    m.image_size = SLOT_SIZE + 4096
                }),
                &w.key,
            ),
        };
        let before = self.flash.bytes().to_vec();
        let mut dev = self.device()?;
        let result = dev.begin(&blob).map(|_| ());
        let ok = match (bad, &result) {
            (BadManifest::Untrusted, Err(Error::UnknownKey { .. })) => true,
            (BadManifest::ForgedSignature, Err(Error::BadSignature)) => true,
            (_, Err(Error::RunningImageUnconfirmed)) => {
                self.model.trial.is_some() || self.model.activated.is_some()
            }
            (BadManifest::OtherChip, Err(Error::WrongChip { .. })) => true,
            (BadManifest::LargerThanSlot, Err(Error::TooBig { .. })) => true,
            _ => false,
        };
        if !ok {
            return Err(format!("{bad:?} manifest: {result:?}"));
        }
        stats.refusals += 1;
        if self.flash.bytes() != before.as_slice() {
            return Err(format!("a refused manifest ({bad:?}) wrote to flash"));
        }
        Ok(())
    }

    fn status(&mut self) -> Result<crate::Status, String> {
        self.device()?.status().map_err(|e| format!("status: {e}"))
    }

    /// One power-on: the bootloader, the boot guard, again while the guard
    /// asks for a reset. Checks each boot against the model.
    fn reboot(&mut self, stats: &mut Stats) -> Result<(), String> {
        for _ in 0..usize::from(self.world.cfg.max_attempts) + 2 {
            // Power comes back after a cut; a reset of a powered board keeps
            // the step's power cut armed, so it can land in any boot.
            if self.flash.is_dead() {
                self.flash.power_cycle();
            }
            let boot = self.bootloader();
            let booted = boot.booted.ok_or("bricked: no slot holds a valid image")?;
            if boot.fell_back() {
                return Err(format!(
                    "otadata selects {} but the bootloader had to fall back to {booted}",
                    boot.selected
                ));
            }
            self.clock += 1;
            let t = self.clock;
            let mut dev = self.device()?;
            let decision = dev
                .boot(Some(booted), t)
                .map_err(|e| format!("boot guard: {e}"))?;
            let m = self.model;
            match decision {
                BootDecision::Run {
                    confirmed: true, ..
                } => {
                    if m.activated.is_some() {
                        return Err(format!(
                            "an activated release did not start on trial: {booted} runs confirmed"
                        ));
                    }
                    if !self.release_in(booted, m.confirmed) {
                        return Err(format!(
                            "{booted} runs confirmed but holds not the confirmed release {}",
                            m.confirmed
                        ));
                    }
                    if let Some((k, _)) = m.trial {
                        return Err(format!("release {k} on trial ended without a rollback"));
                    }
                    self.model.running = booted;
                    return Ok(());
                }
                BootDecision::Run {
                    confirmed: false,
                    attempt,
                    max_attempts,
                    ..
                } => {
                    let (k, expected) = match (m.activated, m.trial) {
                        (Some(k), _) => (k, 1),
                        (None, Some((k, a))) => (k, a + 1),
                        (None, None) => {
                            return Err(format!(
                                "{booted} runs on trial, but nothing was activated"
                            ));
                        }
                    };
                    if attempt != expected || attempt > max_attempts {
                        return Err(format!(
                            "release {k} on trial boots as attempt {attempt}, expected {expected} of {max_attempts}"
                        ));
                    }
                    if !self.release_in(booted, k) {
                        return Err(format!("{booted} runs on trial but holds not release {k}"));
                    }
                    self.model.activated = None;
                    self.model.trial = Some((k, attempt));
                    self.model.running = booted;
                    return Ok(());
                }
                BootDecision::ResetRequired { attempts, .. } => {
                    let Some((_, counted)) = m.trial else {
                        return Err("the boot guard rolled back, but nothing was on trial".into());
                    };
                    let max = self.world.cfg.max_attempts;
                    if attempts != max || counted != max {
                        return Err(format!(
                            "rolled back after {attempts} attempts ({counted} seen), the limit is {max}"
                        ));
                    }
                    stats.rollbacks += 1;
                    self.model.trial = None;
                }
            }
        }
        Err("the boot guard keeps asking for resets".into())
    }

    fn bootloader(&mut self) -> crate::sim::SimBoot {
        let w = self.world;
        let mut known: Vec<&[u8]> = Vec::with_capacity(4);
        let m = self.model;
        for k in [Some(m.confirmed), m.activated, m.trial.map(|t| t.0)]
            .into_iter()
            .flatten()
        {
            known.push(&w.releases[k].image);
        }
        run_bootloader_trusting(&mut self.flash, &w.layout, self.kind, &known)
    }

    fn confirm(&mut self, stats: &mut Stats) -> Result<(), String> {
        let mut dev = self.device()?;
        let result = dev.confirm();
        let m = self.model;
        match (result, m.trial) {
            (Err(Error::Flash(_)), _) => Ok(()),
            (Err(e), _) => Err(format!("confirm: {e}")),
            (Ok(true), Some((k, _))) => {
                stats.confirms += 1;
                self.model.trial = None;
                self.model.confirmed = k;
                let sv = self.world.releases[k].security_version;
                self.model.confirmed_max_security_version =
                    self.model.confirmed_max_security_version.max(sv);
                self.check_security_version(true)
            }
            (Ok(false), None) => Ok(()),
            (Ok(done), trial) => Err(format!("confirm answered {done} with {trial:?} on trial")),
        }
    }

    /// The minimum security version never goes down and never passes the
    /// highest confirmed release's; `exact` when it must equal it.
    fn check_security_version(&mut self, exact: bool) -> Result<(), String> {
        let min = self.status()?.min_security_version;
        let m = self.model;
        if min < m.min_security_version {
            return Err(format!(
                "the minimum security version went down from {} to {min}",
                m.min_security_version
            ));
        }
        if min > m.confirmed_max_security_version {
            return Err(format!(
                "the minimum security version is {min}, above every confirmed release's ({})",
                m.confirmed_max_security_version
            ));
        }
        if exact && min != m.confirmed_max_security_version {
            return Err(format!(
                "the minimum security version is {min}, expected {}",
                m.confirmed_max_security_version
            ));
        }
        self.model.min_security_version = min;
        Ok(())
    }

    /// After a power cut: power on until an image runs, and learn from what
    /// runs which of the states the interrupted operation allows it is in.
    fn recover(&mut self, op: &Op, stats: &mut Stats) -> Result<(), String> {
        let m = self.model;
        // What the cut may have left: the operation done or not.
        let mut candidates: Vec<Model> = std::vec![m];
        match *op {
            Op::Install { release, pick, .. } => {
                let mut done = m;
                done.activated = Some(release);
                if matches!(pick, Pick::Fresh | Pick::Skip) {
                    done.next = m.next.max(release + 1);
                }
                candidates.push(done);
            }
            Op::Confirm => {
                if let Some((k, _)) = m.trial {
                    let mut done = m;
                    done.trial = None;
                    done.confirmed = k;
                    done.confirmed_max_security_version = m
                        .confirmed_max_security_version
                        .max(self.world.releases[k].security_version);
                    candidates.push(done);
                }
            }
            Op::Reset => {
                // The cut may fall in any boot of the reset: the trial may
                // have counted one attempt more, or already rolled back.
                if let Some((k, a)) = m.trial.or(m.activated.map(|k| (k, 0))) {
                    for attempts in a..=self.world.cfg.max_attempts {
                        let mut c = m;
                        c.activated = None;
                        c.trial = Some((k, attempts));
                        candidates.push(c);
                    }
                    let mut back = m;
                    back.activated = None;
                    back.trial = None;
                    candidates.push(back);
                }
            }
            Op::Refused(_) => {}
        }
        let snapshot = self.flash.clone();
        let mut errors = Vec::new();
        for c in candidates {
            self.flash = snapshot.clone();
            self.model = c;
            let mut s = Stats::default();
            match self.reboot(&mut s) {
                Ok(()) => {
                    stats.rollbacks += s.rollbacks;
                    if c.confirmed != m.confirmed {
                        stats.confirms += 1;
                    }
                    return self.check_security_version(false);
                }
                Err(e) => errors.push(e),
            }
        }
        Err(format!(
            "after the power cut the device is in no state the operation allows: {}",
            errors.join("; ")
        ))
    }

    /// On a copy of the device: a fresh good release offered now installs,
    /// boots on trial, confirms and stays.
    fn check_liveness(&mut self, stats: &mut Stats) -> Result<(), String> {
        stats.liveness_checks += 1;
        let saved = (self.flash.clone(), self.model, self.clock);
        let result = self.liveness(stats);
        (self.flash, self.model, self.clock) = saved;
        result.map_err(|e| format!("a good update offered afterwards failed: {e}"))
    }

    fn liveness(&mut self, stats: &mut Stats) -> Result<(), String> {
        let mut scratch = Stats::default();
        if self.model.activated.is_some() {
            self.reboot(&mut scratch)?;
        }
        if self.model.trial.is_some() {
            self.confirm(&mut scratch)?;
        }
        let release = self.model.next.min(self.world.last_release());
        let target = self.other_slot();
        let r = &self.world.releases[release];
        let (blob, image) = (r.blob.clone(), r.image.clone());
        let mut outcome = self.session(&blob, &image, 4096, End::Finish, &mut scratch)?;
        if let Outcome::Refused(Error::StaleResume { .. }) = outcome {
            stats.stale_resumes += 1;
            outcome = self.session(&blob, &image, 4096, End::Finish, &mut scratch)?;
        }
        if !matches!(outcome, Outcome::Activated) {
            return Err(format!("installing release {release}: {outcome:?}"));
        }
        if !self.release_in(target, release) {
            return Err(format!("{target} does not hold release {release}"));
        }
        self.model.activated = Some(release);
        self.reboot(&mut scratch)?;
        if self.model.trial != Some((release, 1)) || self.model.running != target {
            return Err(format!(
                "release {release} did not start on trial in {target}"
            ));
        }
        self.confirm(&mut scratch)?;
        self.reboot(&mut scratch)?;
        if self.model.confirmed != release || self.model.running != target {
            return Err(format!("release {release} did not stay confirmed"));
        }
        self.check_security_version(true)?;
        let otadata = read_otadata(&mut self.flash, &self.world.layout);
        if otadata.iter().all(|e| !e.is_valid()) {
            return Err("no valid otadata entry after confirming".into());
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_seed_is_a_pure_function_of_the_run_seed_and_index() {
        assert_eq!(sequence_seed(1, 2), sequence_seed(1, 2));
        assert_ne!(sequence_seed(1, 2), sequence_seed(1, 3));
        assert_ne!(sequence_seed(1, 2), sequence_seed(2, 2));
    }

    #[test]
    fn the_chaos_world_has_releases_foreign_images_and_a_compact_layout() {
        let w = World::new(&ChaosConfig::default()).unwrap();
        assert_eq!(w.releases.len(), 2 * 24 + 8);
        assert!(
            w.releases
                .iter()
                .all(|r| r.image.len() < SLOT_SIZE as usize)
        );
        assert_eq!(w.layout.app_count, 2);
        assert_eq!(w.fresh.bytes().len(), FLASH_SIZE);
        let info = airlift_format::image::verify(&w.other_chip).map(|i| i.header.chip_id);
        assert_eq!(info, Ok(Chip::Esp32c3.id()));
    }
}
