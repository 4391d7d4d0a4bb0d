//! Shared helpers: a provisioned simulated ESP32 and a few shortcuts.
#![allow(dead_code, clippy::unwrap_used)]

use airlift_engine::sim::{self, BootloaderKind, SimFlash, bootloader};
use airlift_engine::{AppSlot, BootDecision, Config, Device, Layout};
use airlift_format::manifest::{SigningKey, public_key_from_seed};
use airlift_format::partition::AIRLIFT_DEFAULT;

pub const SEED: [u8; 32] = [7; 32];

pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&SEED)
}

pub fn public_key() -> [u8; 32] {
    public_key_from_seed(&SEED)
}

pub fn old_image() -> Vec<u8> {
    sim::test_image("1.0.0", 0, 6000)
}

pub fn new_image() -> Vec<u8> {
    sim::test_image("2.0.0", 1, 9000)
}

pub fn layout() -> Layout {
    sim::layout_of(&AIRLIFT_DEFAULT).unwrap()
}

/// A device as `airlift flash create` leaves it: old image in ota_0, the test
/// key trusted, booted once.
pub fn fresh() -> SimFlash {
    let mut flash = sim::provision(
        &AIRLIFT_DEFAULT,
        sim::FLASH_SIZE,
        &old_image(),
        &[public_key()],
    )
    .unwrap();
    boot(&mut flash, 3);
    flash
}

pub fn config(max_attempts: u8) -> Config<'static> {
    Config {
        max_attempts,
        ..Config::default()
    }
}

pub fn sign(image: &[u8]) -> Vec<u8> {
    sim::sign_image(image, &signing_key(), None, None).unwrap()
}

/// Installs `image` (signed with the test key) and activates it.
pub fn install(flash: &mut SimFlash, image: &[u8]) -> Result<(), airlift_engine::Error> {
    let blob = sign(image);
    let mut dev = Device::open(&mut *flash, config(3))?;
    let mut s = dev.begin(&blob)?;
    for chunk in image.chunks(1024) {
        s.write(chunk)?;
    }
    s.finish().map(|_| ())
}

/// A reset: the simulated ESP-IDF bootloader, then the boot guard.
pub fn boot(flash: &mut SimFlash, max_attempts: u8) -> BootDecision {
    boot_with(flash, max_attempts, BootloaderKind::Plain)
}

pub fn boot_with(flash: &mut SimFlash, max_attempts: u8, kind: BootloaderKind) -> BootDecision {
    flash.power_cycle();
    let booted = sim::run_bootloader(flash, &layout(), kind).booted.unwrap();
    let mut dev = Device::open(&mut *flash, config(max_attempts)).unwrap();
    dev.boot(Some(booted), 1_700_000_000).unwrap()
}

/// Resets until the boot guard lets an image run; returns the decision.
pub fn boot_until_running(flash: &mut SimFlash, max_attempts: u8) -> BootDecision {
    for _ in 0..10 {
        let d = boot(flash, max_attempts);
        if matches!(d, BootDecision::Run { .. }) {
            return d;
        }
    }
    panic!("boot guard keeps resetting");
}

/// The image bytes the bootloader would start from `slot`.
pub fn slot_bytes(flash: &SimFlash, slot: AppSlot) -> Option<Vec<u8>> {
    bootloader::slot_image(flash, &layout(), slot).map(<[u8]>::to_vec)
}

/// What the bootloader selects now.
pub fn selected(flash: &mut SimFlash) -> AppSlot {
    sim::run_bootloader(flash, &layout(), BootloaderKind::Plain).selected
}

pub fn confirm(flash: &mut SimFlash) -> bool {
    let mut dev = Device::open(&mut *flash, config(3)).unwrap();
    dev.confirm().unwrap()
}

pub fn run(slot: AppSlot, confirmed: bool, attempt: u8, max_attempts: u8) -> BootDecision {
    BootDecision::Run {
        slot,
        confirmed,
        attempt,
        max_attempts,
    }
}
