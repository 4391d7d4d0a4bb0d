//! Adversarial: long, seeded random histories of installs, boots, confirms
//! and rollbacks with power cuts (cut-before and torn) sprinkled at random
//! flash operations, on several layouts and both bootloaders. After every
//! cut the device must boot the slot otadata selects, holding either the
//! last confirmed image or the candidate, and the minimum security version
//! must equal the highest confirmed one.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim::{self, BootloaderKind, Fault, FaultKind};
use airlift_engine::{AppSlot, BootDecision, Device, Error};
use airlift_format::partition::PartitionEntry;

struct Soak {
    rig: Rig,
    rng: Rng,
    good: Vec<u8>,
    good_sv: u32,
    candidate: Option<(Vec<u8>, u32)>,
    minimum: u32,
    cuts: u32,
    confirmed_updates: u32,
    rollbacks: u32,
    dropped: u32,
}

impl Soak {
    fn new(table: Vec<PartitionEntry>, kind: BootloaderKind, max_attempts: u8, seed: u64) -> Soak {
        let good = image(0, 0);
        let mut rig = Rig::new(table, &good)
            .with_bootloader(kind)
            .with_max_attempts(max_attempts);
        rig.checkpoint_interval = 4096;
        Soak {
            rig,
            rng: Rng(seed),
            good,
            good_sv: 0,
            candidate: None,
            minimum: 0,
            cuts: 0,
            confirmed_updates: 0,
            rollbacks: 0,
            dropped: 0,
        }
    }

    /// Maybe schedules a power cut a few operations ahead.
    fn arm_random_cut(&mut self) {
        self.rig.flash.power_cycle();
        if self.rng.chance(45) {
            let kind = if self.rng.chance(50) {
                FaultKind::Tear
            } else {
                FaultKind::CutBefore
            };
            let op = self.rng.below(40);
            self.rig.flash.set_fault(Some(Fault { op, kind }));
        }
    }

    fn known(&self) -> Vec<Vec<u8>> {
        let mut v = vec![self.good.clone()];
        if let Some((c, _)) = &self.candidate {
            v.push(c.clone());
        }
        v
    }

    /// Power on (after a cut or not) and check the invariants.
    fn settle(&mut self, step: u32) -> Recovered {
        let known = self.known();
        let refs: Vec<&[u8]> = known.iter().map(Vec::as_slice).collect();
        let r = recover(&mut self.rig, &refs).unwrap_or_else(|e| panic!("step {step}: {e}"));
        if r.image == self.good {
            assert!(
                r.confirmed,
                "step {step}: the good image runs unconfirmed: {r:?}"
            );
            if self.candidate.is_some() {
                // The candidate was never activated, or was rolled back.
                let status = self.rig.status();
                if status.trial.is_none() {
                    self.candidate = None;
                    self.dropped += 1;
                }
            }
        } else if r.confirmed {
            let (c, sv) = self.candidate.take().unwrap();
            self.good = c;
            self.good_sv = sv;
            self.minimum = self.minimum.max(sv);
            self.confirmed_updates += 1;
        }
        let min = self.rig.status().min_security_version;
        assert_eq!(min, self.minimum, "step {step}: minimum security version");
        r
    }

    fn step(&mut self, step: u32) {
        let r = self.settle(step);
        let result: Result<(), Error> = if r.confirmed {
            // Install a new candidate, sometimes only partly (a reset).
            let sv = self.minimum + self.rng.below(2) as u32;
            let img = image(step + 1, sv);
            self.candidate = Some((img.clone(), sv));
            let partial = self.rng.chance(15);
            let cut_len = if partial {
                self.rng.below(img.len() as u64) as usize
            } else {
                img.len()
            };
            let blob = sign(&img, sv);
            self.arm_random_cut();
            let cfg = self.rig.config();
            (|| {
                // A fresh handle: recover() checked that the selected
                // slot is the one that runs.
                let mut dev = Device::open(&mut self.rig.flash, cfg)?;
                let mut s = dev.begin(&blob)?;
                let from = (s.resume_offset() as usize).min(cut_len);
                for c in img[from..cut_len].chunks(333) {
                    s.write(c)?;
                }
                if partial {
                    return Ok(());
                }
                s.finish().map(|_| ())
            })()
        } else if self.rng.chance(40) {
            // The candidate is healthy: confirm from the booted handle.
            self.arm_random_cut();
            let cfg = self.rig.config();
            (|| {
                let mut dev = Device::open(&mut self.rig.flash, cfg)?;
                dev.confirm().map(|_| ())
            })()
        } else {
            // The candidate crashes: just reset (with a cut in the guard).
            self.arm_random_cut();
            let booted =
                sim::run_bootloader(&mut self.rig.flash, &self.rig.layout, self.rig.kind).booted;
            let cfg = self.rig.config();
            (|| {
                let mut dev = Device::open(&mut self.rig.flash, cfg)?;
                if let BootDecision::ResetRequired { .. } =
                    dev.boot(booted.or(Some(AppSlot::Ota(0))), T0)?
                {
                    self.rollbacks += 1;
                }
                Ok(())
            })()
        };
        if self.rig.flash.is_dead() {
            self.cuts += 1;
        } else if let Err(e) = result {
            panic!("step {step}: {e} without a power cut");
        }
    }
}

fn soak(table: Vec<PartitionEntry>, kind: BootloaderKind, max_attempts: u8, seed: u64) {
    let mut s = Soak::new(table, kind, max_attempts, seed);
    for step in 0..300 {
        s.step(step);
    }
    s.settle(300);
    println!(
        "{kind:?} x{max_attempts}: {} cuts, {} confirmed updates, {} guard rollbacks, {} candidates abandoned",
        s.cuts, s.confirmed_updates, s.rollbacks, s.dropped
    );
    assert!(
        s.dropped > 10,
        "candidates were abandoned or rolled back: {}",
        s.dropped
    );
    assert!(s.cuts > 30, "the soak cut power often: {}", s.cuts);
    assert!(s.confirmed_updates > 10, "{}", s.confirmed_updates);
    let pos = s.rig.device().log_position();
    assert!(
        pos.current.unwrap().1 > pos.sectors,
        "the log wrapped: {pos:?}"
    );
}

#[test]
fn random_history_with_power_cuts_on_two_slots_keeps_every_invariant() {
    soak(
        ota_table(2, 0x10_0000, 0x2000),
        BootloaderKind::Plain,
        3,
        0xA11F_0001,
    );
}

#[test]
fn random_history_with_power_cuts_and_the_rollback_bootloader_keeps_every_invariant() {
    soak(
        ota_table(2, 0x10_0000, 0x2000),
        BootloaderKind::Rollback,
        2,
        0xA11F_0002,
    );
}

#[test]
fn random_history_with_power_cuts_on_three_slots_and_one_attempt_keeps_every_invariant() {
    soak(
        ota_table(3, 0x8_0000, 0x3000),
        BootloaderKind::Plain,
        1,
        0xA11F_0003,
    );
}

#[test]
fn random_history_with_power_cuts_on_a_factory_layout_keeps_every_invariant() {
    let mut table = factory_table();
    table.last_mut().unwrap().size = 0x2000;
    soak(table, BootloaderKind::Plain, 5, 0xA11F_0004);
}

#[test]
fn random_history_with_power_cuts_on_eight_slots_and_a_two_sector_log_keeps_every_invariant() {
    // Image information for eight slots makes every rotation's snapshot
    // large, so the two-sector log rotates every few records.
    soak(
        ota_table(8, 0x4_0000, 0x2000),
        BootloaderKind::Rollback,
        3,
        0xA11F_0005,
    );
}
