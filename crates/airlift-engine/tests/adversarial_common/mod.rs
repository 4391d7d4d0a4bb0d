//! Helpers for the adversarial tests: a simulated ESP32 on any partition
//! layout, a reset that runs the simulated ESP-IDF bootloader and the boot
//! guard, installs, and a generic "cut power at every flash operation"
//! harness for paths the built-in campaign does not walk.
#![allow(dead_code, clippy::unwrap_used)]

use airlift_engine::sim::{self, BootloaderKind, Fault, FaultKind, SimFlash, bootloader};
use airlift_engine::{AppSlot, BootDecision, BootRecord, Config, Device, Error, Layout, Status};
use airlift_format::manifest::{self, Manifest, SigningKey, public_key_from_seed};
use airlift_format::otadata::{self, OtaSelectEntry, OtaState};
use airlift_format::partition::{
    self, AIRLIFT_DATA_LABEL, AIRLIFT_DATA_SUBTYPE, AIRLIFT_DEFAULT, PartitionEntry, PartitionType,
    TABLE_MAX_LEN, TABLE_OFFSET, app_subtype, data_subtype,
};

pub const SEED: [u8; 32] = [0x42; 32];
pub const T0: u64 = 1_800_000_000;

pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&SEED)
}

pub fn public_key() -> [u8; 32] {
    public_key_from_seed(&SEED)
}

/// A small valid image; `n` makes it unique (version string and filler).
pub fn image(n: u32, security_version: u32) -> Vec<u8> {
    sim::test_image(
        &format!("{n}.0.0"),
        security_version,
        3000 + (n as usize % 7) * 512,
    )
}

fn entry(label: &str, kind: PartitionType, subtype: u8, offset: u32, size: u32) -> PartitionEntry {
    PartitionEntry::new(label, kind, subtype, offset, size, 0).unwrap()
}

fn head() -> Vec<PartitionEntry> {
    vec![
        entry(
            "nvs",
            PartitionType::DATA,
            data_subtype::NVS,
            0x9000,
            0x4000,
        ),
        entry(
            "otadata",
            PartitionType::DATA,
            data_subtype::OTA,
            0xd000,
            0x2000,
        ),
        entry(
            "phy_init",
            PartitionType::DATA,
            data_subtype::PHY,
            0xf000,
            0x1000,
        ),
    ]
}

fn airlift_data(offset: u32, size: u32) -> PartitionEntry {
    entry(
        AIRLIFT_DATA_LABEL,
        PartitionType::DATA,
        AIRLIFT_DATA_SUBTYPE,
        offset,
        size,
    )
}

/// `n` OTA slots of `slot_size` from 0x10000, then Airlift's partition.
pub fn ota_table(n: u8, slot_size: u32, data_size: u32) -> Vec<PartitionEntry> {
    let mut t = head();
    let mut at = 0x1_0000;
    for i in 0..n {
        t.push(entry(
            &format!("ota_{i}"),
            PartitionType::APP,
            app_subtype::OTA_0 + i,
            at,
            slot_size,
        ));
        at += slot_size;
    }
    t.push(airlift_data(at, data_size));
    t
}

/// A factory app, two OTA slots, Airlift's partition.
pub fn factory_table() -> Vec<PartitionEntry> {
    let mut t = head();
    t.push(entry(
        "factory",
        PartitionType::APP,
        app_subtype::FACTORY,
        0x1_0000,
        0x10_0000,
    ));
    t.push(entry(
        "ota_0",
        PartitionType::APP,
        app_subtype::OTA_0,
        0x11_0000,
        0x10_0000,
    ));
    t.push(entry(
        "ota_1",
        PartitionType::APP,
        app_subtype::OTA_0 + 1,
        0x21_0000,
        0x10_0000,
    ));
    t.push(airlift_data(0x31_0000, 0x1_0000));
    t
}

pub fn default_table() -> Vec<PartitionEntry> {
    AIRLIFT_DEFAULT.to_vec()
}

/// The partition table bytes as `gen_esp32part.py` writes them.
pub fn table_bytes(entries: &[PartitionEntry]) -> [u8; TABLE_MAX_LEN] {
    let mut table = [0xFFu8; TABLE_MAX_LEN];
    partition::build(entries, &mut table).unwrap();
    table
}

/// What a reset did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    /// The slot otadata selected.
    pub selected: AppSlot,
    /// The slot the bootloader started.
    pub booted: AppSlot,
    /// The boot guard's answer.
    pub decision: BootDecision,
}

/// A simulated device on a chosen layout and bootloader.
#[derive(Clone)]
pub struct Rig {
    pub table: Vec<PartitionEntry>,
    pub layout: Layout,
    pub flash: SimFlash,
    pub kind: BootloaderKind,
    pub max_attempts: u8,
    pub checkpoint_interval: u32,
    pub clock: u64,
}

impl Rig {
    /// `image` in `ota_0`, selected (seq 1, VALID), the test key trusted,
    /// booted once: a device as `airlift flash create` leaves it.
    pub fn new(table: Vec<PartitionEntry>, first: &[u8]) -> Rig {
        let flash = sim::provision(&table, sim::FLASH_SIZE, first, &[public_key()]).unwrap();
        Rig::from_flash(table, flash)
    }

    /// `image` in the factory partition, otadata blank: a device straight
    /// from the factory.
    pub fn factory(first: &[u8]) -> Rig {
        let table = factory_table();
        let layout = sim::layout_of(&table).unwrap();
        let mut flash = SimFlash::new(sim::FLASH_SIZE);
        flash.load(TABLE_OFFSET as usize, &table_bytes(&table));
        flash.load(layout.factory.unwrap().offset as usize, first);
        {
            let mut dev = Device::open(&mut flash, Config::default()).unwrap();
            dev.add_trusted_key(&public_key()).unwrap();
        }
        Rig::from_flash(table, flash)
    }

    pub fn from_flash(table: Vec<PartitionEntry>, flash: SimFlash) -> Rig {
        let layout = sim::layout_of(&table).unwrap();
        let mut rig = Rig {
            table,
            layout,
            flash,
            kind: BootloaderKind::Plain,
            max_attempts: 3,
            checkpoint_interval: 4096,
            clock: T0,
        };
        let first = rig.reset();
        assert!(
            matches!(
                first.decision,
                BootDecision::Run {
                    confirmed: true,
                    ..
                }
            ),
            "fresh device: {first:?}"
        );
        rig
    }

    pub fn with_bootloader(mut self, kind: BootloaderKind) -> Rig {
        self.kind = kind;
        self
    }

    pub fn with_max_attempts(mut self, n: u8) -> Rig {
        self.max_attempts = n;
        self
    }

    pub fn config(&self) -> Config<'static> {
        Config {
            max_attempts: self.max_attempts,
            checkpoint_interval: self.checkpoint_interval,
            ..Config::default()
        }
    }

    pub fn device(&mut self) -> Device<'static, &mut SimFlash> {
        let cfg = self.config();
        Device::open(&mut self.flash, cfg).unwrap()
    }

    pub fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Power on: the simulated bootloader, then the boot guard.
    pub fn reset(&mut self) -> Reset {
        self.flash.power_cycle();
        let boot = sim::run_bootloader(&mut self.flash, &self.layout, self.kind);
        let booted = boot.booted.expect("bricked: no slot holds a valid image");
        let t = self.tick();
        let cfg = self.config();
        let mut dev = Device::open(&mut self.flash, cfg).unwrap();
        let decision = dev.boot(Some(booted), t).unwrap();
        Reset {
            selected: boot.selected,
            booted,
            decision,
        }
    }

    /// Resets until the boot guard lets an image run.
    pub fn reset_until_running(&mut self) -> Reset {
        for _ in 0..(usize::from(self.max_attempts) + 6) {
            let r = self.reset();
            if matches!(r.decision, BootDecision::Run { .. }) {
                return r;
            }
        }
        panic!("the boot guard keeps asking for resets");
    }

    /// The valid image the bootloader would start from `slot`.
    pub fn slot_image(&self, slot: AppSlot) -> Option<Vec<u8>> {
        bootloader::slot_image(&self.flash, &self.layout, slot).map(<[u8]>::to_vec)
    }

    pub fn otadata(&mut self) -> [OtaSelectEntry; 2] {
        bootloader::read_otadata(&mut self.flash, &self.layout)
    }

    pub fn status(&mut self) -> Status {
        self.device().status().unwrap()
    }

    pub fn boot_log(&mut self) -> Vec<BootRecord> {
        let mut v = Vec::new();
        self.device().boot_log(|r| v.push(*r)).unwrap();
        v
    }

    /// Installs and activates a signed `image` on a fresh handle.
    pub fn install(&mut self, image: &[u8], security_version: u32) -> Result<u8, Error> {
        let blob = sign(image, security_version);
        let cfg = self.config();
        let mut dev = Device::open(&mut self.flash, cfg)?;
        let mut s = dev.begin(&blob)?;
        let from = s.resume_offset() as usize;
        for c in image[from..].chunks(700) {
            s.write(c)?;
        }
        s.finish().map(|a| a.slot)
    }

    /// Boots (one reset) and confirms from the same handle, as firmware does.
    pub fn boot_and_confirm(&mut self) -> (Reset, bool) {
        self.flash.power_cycle();
        let boot = sim::run_bootloader(&mut self.flash, &self.layout, self.kind);
        let booted = boot.booted.expect("bricked");
        let t = self.tick();
        let cfg = self.config();
        let mut dev = Device::open(&mut self.flash, cfg).unwrap();
        let decision = dev.boot(Some(booted), t).unwrap();
        let confirmed = match decision {
            BootDecision::Run {
                confirmed: false, ..
            } => dev.confirm().unwrap(),
            _ => false,
        };
        (
            Reset {
                selected: boot.selected,
                booted,
                decision,
            },
            confirmed,
        )
    }

    /// A full update: install, reset into it, confirm it. Returns its slot.
    pub fn update(&mut self, image: &[u8], security_version: u32) -> AppSlot {
        let slot = AppSlot::Ota(self.install(image, security_version).unwrap());
        let (r, confirmed) = self.boot_and_confirm();
        assert_eq!(r.booted, slot, "{r:?}");
        assert!(confirmed, "{r:?}");
        assert_eq!(self.slot_image(slot).as_deref(), Some(image));
        slot
    }

    /// Installs `image` and lets it fail every trial boot until rolled back.
    /// Returns the number of trial boots it got.
    pub fn update_and_fail(&mut self, image: &[u8], security_version: u32) -> u8 {
        let slot = AppSlot::Ota(self.install(image, security_version).unwrap());
        let mut trials = 0;
        for _ in 0..(usize::from(self.max_attempts) + 6) {
            let r = self.reset();
            match r.decision {
                BootDecision::Run {
                    confirmed: false,
                    slot: s,
                    attempt,
                    ..
                } if s == slot => {
                    trials += 1;
                    assert_eq!(attempt, trials);
                }
                BootDecision::ResetRequired { from, .. } => {
                    assert_eq!(from, slot);
                    let after = self.reset();
                    assert!(
                        matches!(
                            after.decision,
                            BootDecision::Run {
                                confirmed: true,
                                ..
                            }
                        ),
                        "{after:?}"
                    );
                    return trials;
                }
                other => panic!("unexpected boot {other:?} while failing {slot}"),
            }
        }
        panic!("never rolled back");
    }

    /// Flips a byte of one otadata copy's CRC.
    pub fn corrupt_otadata(&mut self, copy: usize) {
        let at = self.layout.otadata.offset as usize + copy * otadata::SECTOR_SIZE as usize + 28;
        let b = self.flash.bytes()[at];
        self.flash.load(at, &[b ^ 0x5A]);
    }

    /// Erases one otadata copy (all 0xFF).
    pub fn erase_otadata(&mut self, copy: usize) {
        let at = self.layout.otadata.offset as usize + copy * otadata::SECTOR_SIZE as usize;
        self.flash.load(at, &[0xFF; otadata::SECTOR_SIZE as usize]);
    }
}

/// Signs `image` with the test key, security version as given.
pub fn sign(image: &[u8], security_version: u32) -> Vec<u8> {
    sim::sign_image(image, &signing_key(), None, Some(security_version)).unwrap()
}

/// Signs a hand-made manifest.
pub fn sign_manifest(m: &Manifest<'_>) -> Vec<u8> {
    manifest::sign(m, &signing_key()).unwrap()
}

/// The state the ESP-IDF rule selects, for assertions.
pub fn entry_state(e: &OtaSelectEntry) -> (u32, OtaState) {
    (e.seq, e.state)
}

/// A device that runs after a power cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub slot: AppSlot,
    pub image: Vec<u8>,
    pub confirmed: bool,
    pub attempt: u8,
}

/// Power on after a cut, resetting as often as the guard asks; checks at
/// every reset that the bootloader starts the slot otadata selects and
/// that it holds one of `known` images.
pub fn recover(rig: &mut Rig, known: &[&[u8]]) -> Result<Recovered, String> {
    for _ in 0..(usize::from(rig.max_attempts) + 6) {
        rig.flash.power_cycle();
        let boot = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind);
        let booted = boot.booted.ok_or("bricked: no valid image")?;
        // ESP-IDF's default table has an (often empty) factory partition:
        // with no valid otadata copy the bootloader selects it and, finding
        // nothing there, walks on to ota_0. That walk is expected.
        let empty_factory =
            boot.selected == AppSlot::Factory && rig.slot_image(AppSlot::Factory).is_none();
        if booted != boot.selected && !empty_factory {
            return Err(format!(
                "otadata selects {} but the bootloader had to fall back to {booted}",
                boot.selected
            ));
        }
        let image = rig
            .slot_image(booted)
            .ok_or_else(|| format!("{booted} holds no valid image"))?;
        if !known.contains(&image.as_slice()) {
            return Err(format!(
                "{booted} holds an image that is none of the known ones"
            ));
        }
        let t = rig.tick();
        let cfg = rig.config();
        let mut dev = Device::open(&mut rig.flash, cfg).map_err(|e| e.to_string())?;
        match dev.boot(Some(booted), t).map_err(|e| e.to_string())? {
            BootDecision::Run {
                slot,
                confirmed,
                attempt,
                max_attempts,
            } => {
                if attempt > max_attempts {
                    return Err(format!("attempt {attempt} above the limit {max_attempts}"));
                }
                return Ok(Recovered {
                    slot,
                    image,
                    confirmed,
                    attempt,
                });
            }
            BootDecision::ResetRequired { .. } => continue,
        }
    }
    Err("the boot guard keeps asking for resets".into())
}

/// Cut power before, and tear, every flash operation `action` performs
/// after it calls `SimFlash::arm`, and run `check` on the result. Returns
/// the number of operations and the failures (`"cut before op k: ..."`).
pub fn cut_everywhere(
    pre: &Rig,
    action: impl Fn(&mut Rig) -> Result<(), Error>,
    check: impl Fn(&mut Rig) -> Result<(), String>,
) -> (u64, Vec<String>) {
    let mut plain = pre.clone();
    action(&mut plain).unwrap();
    let ops = plain.flash.ops();
    let mut failures = Vec::new();
    if let Err(e) = check(&mut plain) {
        failures.push(format!("no cut: {e}"));
    }
    for k in 0..ops {
        for kind in [FaultKind::CutBefore, FaultKind::Tear] {
            let mut rig = pre.clone();
            rig.flash.set_fault_at_arm(Some(Fault { op: k, kind }));
            let _ = action(&mut rig);
            if !rig.flash.is_dead() {
                failures.push(format!("{kind:?} op {k}: the cut was never reached"));
                continue;
            }
            if let Err(e) = check(&mut rig) {
                failures.push(format!("{kind:?} op {k}: {e}"));
            }
        }
    }
    (ops, failures)
}

/// A tiny deterministic PRNG (xorshift64*), so soak tests replay exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
