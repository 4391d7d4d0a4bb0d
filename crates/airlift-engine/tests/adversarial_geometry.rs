//! Adversarial: flash drivers with other program granularities than the
//! simulator's 4 bytes (1, 8, 16 and 32 bytes; all divide ESP-IDF's 32-byte
//! otadata entry), reads in whole 4-byte words, and odd chunk sizes:
//! install, trial, confirm, rollback.
#![allow(clippy::unwrap_used)]

mod adversarial_common;

use adversarial_common::*;
use airlift_engine::sim::flash::SimFlashError;
use airlift_engine::sim::{self, SimFlash};
use airlift_engine::{AppSlot, BootDecision, Device};
use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};

/// A flash that programs in units of `W` bytes, over the simulator. Writes
/// are widened to whole 4-byte words with 0xFF (which NOR programming
/// leaves unchanged).
struct Granular<'a, const W: usize>(&'a mut SimFlash);

impl<const W: usize> ErrorType for Granular<'_, W> {
    type Error = SimFlashError;
}

impl<const W: usize> ReadNorFlash for Granular<'_, W> {
    // Drivers like esp-storage read whole words: the engine must too.
    const READ_SIZE: usize = 4;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimFlashError> {
        assert!(
            offset.is_multiple_of(4) && bytes.len().is_multiple_of(4),
            "engine read {} bytes at {offset:#x}, not whole words",
            bytes.len()
        );
        self.0.read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl<const W: usize> NorFlash for Granular<'_, W> {
    const WRITE_SIZE: usize = W;
    const ERASE_SIZE: usize = 4096;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimFlashError> {
        self.0.erase(from, to)
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimFlashError> {
        assert!(
            (offset as usize).is_multiple_of(W) && bytes.len().is_multiple_of(W),
            "engine wrote {} bytes at {offset:#x}, not in units of {W}",
            bytes.len()
        );
        let start = offset as usize / 4 * 4;
        let end = (offset as usize + bytes.len()).div_ceil(4) * 4;
        let mut buf = vec![0xFF; end - start];
        let at = offset as usize - start;
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        self.0.write(start as u32, &buf)
    }
}

fn boot<const W: usize>(rig: &mut Rig) -> BootDecision {
    rig.flash.power_cycle();
    let booted = sim::run_bootloader(&mut rig.flash, &rig.layout, rig.kind)
        .booted
        .unwrap();
    let cfg = rig.config();
    let mut dev = Device::open(Granular::<W>(&mut rig.flash), cfg).unwrap();
    dev.boot(Some(booted), T0).unwrap()
}

fn install<const W: usize>(rig: &mut Rig, img: &[u8], chunk: usize) {
    let blob = sign(img, 0);
    let cfg = rig.config();
    let mut dev = Device::open(Granular::<W>(&mut rig.flash), cfg).unwrap();
    let mut s = dev.begin(&blob).unwrap();
    for c in img.chunks(chunk) {
        s.write(c).unwrap();
    }
    s.finish().unwrap();
}

fn full_cycle<const W: usize>() {
    for chunk in [1usize, 7, 33, 255, 4097] {
        let old = image(0, 0);
        let good = image(1, 0);
        let bad = image(2, 0);
        let mut rig = Rig::new(ota_table(2, 0x10_0000, 0x2000), &old);
        install::<W>(&mut rig, &good, chunk);
        assert_eq!(
            boot::<W>(&mut rig),
            BootDecision::Run {
                slot: AppSlot::Ota(1),
                confirmed: false,
                attempt: 1,
                max_attempts: 3
            },
            "W={W} chunk {chunk}"
        );
        {
            let cfg = rig.config();
            let mut dev = Device::open(Granular::<W>(&mut rig.flash), cfg).unwrap();
            dev.boot(Some(AppSlot::Ota(1)), T0).unwrap();
            assert!(dev.confirm().unwrap(), "W={W}");
        }
        assert_eq!(rig.slot_image(AppSlot::Ota(1)), Some(good.clone()));
        install::<W>(&mut rig, &bad, chunk);
        let mut decisions = Vec::new();
        for _ in 0..5 {
            decisions.push(boot::<W>(&mut rig));
        }
        assert_eq!(
            decisions[3],
            BootDecision::ResetRequired {
                from: AppSlot::Ota(0),
                to: AppSlot::Ota(1),
                attempts: 3
            },
            "W={W} chunk {chunk}: {decisions:?}"
        );
        assert!(
            matches!(
                decisions[4],
                BootDecision::Run {
                    slot: AppSlot::Ota(1),
                    confirmed: true,
                    ..
                }
            ),
            "W={W}: {decisions:?}"
        );
    }
}

#[test]
fn a_byte_programmable_flash_installs_confirms_and_rolls_back() {
    full_cycle::<1>();
}

#[test]
fn an_eight_byte_programmable_flash_installs_confirms_and_rolls_back() {
    full_cycle::<8>();
}

#[test]
fn a_sixteen_byte_programmable_flash_installs_confirms_and_rolls_back() {
    full_cycle::<16>();
}

#[test]
fn a_thirty_two_byte_programmable_flash_installs_confirms_and_rolls_back() {
    full_cycle::<32>();
}

#[test]
fn a_word_reading_flash_resumes_an_interrupted_install() {
    let old = image(0, 0);
    let new = sim::test_image("2.0.0", 0, 30_000);
    let mut rig = Rig::new(ota_table(2, 0x10_0000, 0x2000), &old);
    let blob = sign(&new, 0);
    let cfg = rig.config();
    {
        let mut dev = Device::open(Granular::<1>(&mut rig.flash), cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        s.write(&new[..21_111]).unwrap();
    }
    boot::<1>(&mut rig);
    {
        let mut dev = Device::open(Granular::<1>(&mut rig.flash), cfg).unwrap();
        let mut s = dev.begin(&blob).unwrap();
        let from = s.resume_offset() as usize;
        assert!(from >= 16_384, "{from}");
        for c in new[from..].chunks(3) {
            s.write(c).unwrap();
        }
        s.finish().unwrap();
    }
    assert!(matches!(
        boot::<1>(&mut rig),
        BootDecision::Run {
            slot: AppSlot::Ota(1),
            confirmed: false,
            ..
        }
    ));
    assert_eq!(rig.slot_image(AppSlot::Ota(1)), Some(new));
}

/// A flash driver that only declares a geometry (reads, writes and erases
/// pass through to the simulator).
struct Declared<'a, const R: usize, const W: usize, const E: usize>(&'a mut SimFlash);

impl<const R: usize, const W: usize, const E: usize> ErrorType for Declared<'_, R, W, E> {
    type Error = SimFlashError;
}

impl<const R: usize, const W: usize, const E: usize> ReadNorFlash for Declared<'_, R, W, E> {
    const READ_SIZE: usize = R;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimFlashError> {
        self.0.read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl<const R: usize, const W: usize, const E: usize> NorFlash for Declared<'_, R, W, E> {
    const WRITE_SIZE: usize = W;
    const ERASE_SIZE: usize = E;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimFlashError> {
        self.0.erase(from, to)
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimFlashError> {
        self.0.write(offset, bytes)
    }
}

/// `geometry_fits` (what firmware checks at compile time) and
/// `Device::open` (what refuses at run time) agree.
fn geometry<const R: usize, const W: usize, const E: usize>(fits: bool) {
    let rig = &mut Rig::new(ota_table(2, 0x10_0000, 0x2000), &image(0, 0));
    let cfg = rig.config();
    assert_eq!(
        airlift_engine::geometry_fits::<Declared<'_, R, W, E>>(),
        fits,
        "read {R}, write {W}, erase {E}"
    );
    let opened = Device::open(Declared::<R, W, E>(&mut rig.flash), cfg);
    assert_eq!(
        matches!(
            opened,
            Err(airlift_engine::Error::UnsupportedFlashGeometry { .. })
        ),
        !fits,
        "read {R}, write {W}, erase {E}"
    );
}

#[test]
fn esp_storage_geometry_fits_and_coarser_drivers_are_refused() {
    // esp-storage 0.10's FlashStorage: 4-byte reads and programs, 4 KiB sectors.
    geometry::<4, 4, 4096>(true);
    geometry::<1, 1, 4096>(true);
    geometry::<4, 32, 4096>(true);
    geometry::<4, 4, 1024>(true);
    geometry::<8, 4, 4096>(false);
    geometry::<4, 64, 4096>(false);
    geometry::<4, 256, 4096>(false);
    geometry::<4, 4, 65536>(false);
    geometry::<4, 0, 4096>(false);
}
