//! A simulated ESP-IDF second-stage bootloader.

use airlift_format::image;
use airlift_format::otadata::{
    ENTRY_LEN, OtaSelectEntry, SECTOR_SIZE, boot_slot, rollback_bootloader_boot,
};
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};

use crate::layout::{AppSlot, Layout};
use crate::sim::flash::SimFlash;

/// Which ESP-IDF bootloader build to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootloaderKind {
    /// Built without `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE` (the esp-rs
    /// default): reads otadata, never writes it.
    Plain,
    /// Built with app rollback: turns PENDING_VERIFY into ABORTED and NEW
    /// into PENDING_VERIFY at every boot, rewriting otadata.
    Rollback,
}

/// What the simulated bootloader did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimBoot {
    /// The slot otadata selected.
    pub selected: AppSlot,
    /// The slot it started, `None` when no slot holds a valid image (a brick).
    pub booted: Option<AppSlot>,
}

impl SimBoot {
    /// Whether it had to start another slot than otadata selects.
    pub fn fell_back(&self) -> bool {
        self.booted != Some(self.selected)
    }
}

/// Reads both otadata copies.
pub fn read_otadata(flash: &mut SimFlash, layout: &Layout) -> [OtaSelectEntry; 2] {
    let mut out = [OtaSelectEntry::BLANK; 2];
    for (copy, e) in out.iter_mut().enumerate() {
        let mut raw = [0u8; ENTRY_LEN];
        let at = layout.otadata.offset + copy as u32 * SECTOR_SIZE;
        if flash.read(at, &mut raw).is_ok() {
            *e = OtaSelectEntry::decode(&raw);
        }
    }
    out
}

/// Length of the ESP image at the start of `bytes` (header, segments,
/// checksum padding, appended digest), or `None` if it does not fit.
pub fn image_extent(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < image::HEADER_LEN || bytes[0] != image::IMAGE_MAGIC {
        return None;
    }
    let segments = usize::from(bytes[1]);
    let mut pos = image::HEADER_LEN;
    for _ in 0..segments.min(image::MAX_SEGMENTS) {
        let h = bytes.get(pos..pos + image::SEGMENT_HEADER_LEN)?;
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        pos = pos.checked_add(image::SEGMENT_HEADER_LEN + len)?;
    }
    pos = (pos / 16 + 1) * 16;
    if bytes[23] == 1 {
        pos += image::DIGEST_LEN;
    }
    (pos <= bytes.len()).then_some(pos)
}

/// Whether `slot` holds an image the real bootloader would start: well
/// formed, checksum and appended SHA-256 digest valid.
pub fn slot_image_valid(flash: &SimFlash, layout: &Layout, slot: AppSlot) -> bool {
    slot_image(flash, layout, slot).is_some()
}

/// The bytes of the valid image in `slot`, if it holds one.
pub fn slot_image<'a>(flash: &'a SimFlash, layout: &Layout, slot: AppSlot) -> Option<&'a [u8]> {
    slot_image_trusting(flash, layout, slot, &[])
}

/// Like [`slot_image`], but a slot that starts with one of the `known`
/// images (already verified by the caller) is accepted after a byte
/// comparison instead of hashing it again: the campaign boots the same two
/// images thousands of times.
pub fn slot_image_trusting<'a>(
    flash: &'a SimFlash,
    layout: &Layout,
    slot: AppSlot,
    known: &[&[u8]],
) -> Option<&'a [u8]> {
    let region = layout.slot(slot)?;
    let bytes = flash
        .bytes()
        .get(region.offset as usize..region.end() as usize)?;
    let len = image_extent(bytes)?;
    let image = &bytes[..len];
    if known.contains(&image) {
        return Some(image);
    }
    let info = image::verify(image).ok()?;
    info.is_valid().then_some(image)
}

/// One boot: choose the slot from otadata as ESP-IDF does, and start the
/// first valid image trying, like `bootloader_utility_load_boot_image`, the
/// selected slot, then lower slots down to factory, then higher slots.
pub fn run_bootloader(flash: &mut SimFlash, layout: &Layout, kind: BootloaderKind) -> SimBoot {
    run_bootloader_trusting(flash, layout, kind, &[])
}

/// [`run_bootloader`] with images known to be valid (see [`slot_image_trusting`]).
pub fn run_bootloader_trusting(
    flash: &mut SimFlash,
    layout: &Layout,
    kind: BootloaderKind,
    known: &[&[u8]],
) -> SimBoot {
    let mut entries = read_otadata(flash, layout);
    if kind == BootloaderKind::Rollback {
        let result = rollback_bootloader_boot(&mut entries, layout.app_count);
        for (copy, rewritten) in result.rewritten.iter().enumerate() {
            if *rewritten {
                let at = layout.otadata.offset + copy as u32 * SECTOR_SIZE;
                // The simulated bootloader's own writes are not fault targets.
                let _ = flash.erase(at, at + SECTOR_SIZE);
                let _ = flash.write(at, &entries[copy].encode());
            }
        }
    }
    let selected = layout.resolve(boot_slot(&entries, layout.app_count));
    let booted = layout
        .boot_order(selected)
        .find(|&s| slot_image_trusting(flash, layout, s, known).is_some());
    SimBoot { selected, booted }
}
