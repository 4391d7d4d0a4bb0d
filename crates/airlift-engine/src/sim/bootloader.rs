//! The simulated ESP-IDF second-stage bootloader, the one every simulation
//! boots with: the power-cut campaign, the PC agent and the fleet simulator.
//!
//! Generic over the flash trait. It picks the slot from otadata with
//! ESP-IDF's rule and starts the first slot that holds a valid image
//! (checksum and appended SHA-256), trying the selected slot, then lower
//! slots down to factory, then higher ones, like
//! `bootloader_utility_load_boot_image`. Built with app rollback
//! ([`BootloaderKind::Rollback`]) it first rewrites otadata as that
//! bootloader does (PENDING_VERIFY becomes ABORTED, NEW becomes
//! PENDING_VERIFY). What "a valid image" means is the caller's to say
//! ([`boot_with`]): [`read_slot`] verifies the slot's bytes; the campaign
//! recognises its two known images by comparison, and the fleet simulator
//! remembers verdicts per distinct slot content.

use std::boxed::Box;
use std::string::{String, ToString};

use airlift_format::image::{self, ImageInfo};
use airlift_format::otadata::{OtaSelectEntry, boot_slot, rollback_bootloader_boot};
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};

use crate::error::Error;
use crate::layout::{AppSlot, Layout, Region};
use crate::otadata_io::{read_entries, write_entry};
use crate::sim::flash::SimFlash;
use crate::slot::SlotImage;

/// Which ESP-IDF bootloader build to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BootloaderKind {
    /// Built without `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE` (the esp-rs
    /// default): reads otadata, never writes it.
    #[default]
    Plain,
    /// Built with app rollback: turns PENDING_VERIFY into ABORTED and NEW
    /// into PENDING_VERIFY at every boot, rewriting otadata.
    Rollback,
}

impl BootloaderKind {
    /// Its name on command lines and in reports (`plain`, `rollback`).
    pub fn name(self) -> &'static str {
        match self {
            BootloaderKind::Plain => "plain",
            BootloaderKind::Rollback => "rollback",
        }
    }
}

/// What one simulated boot found: the selected slot, and the slot started
/// with what the caller's check said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot<V> {
    /// The slot otadata selects.
    pub selected: AppSlot,
    /// The slot started, `None` when no slot holds a valid image (a brick).
    pub booted: Option<(AppSlot, V)>,
}

impl<V> Boot<V> {
    /// The slot started.
    pub fn slot(&self) -> Option<AppSlot> {
        self.booted.as_ref().map(|(s, _)| *s)
    }

    /// Whether it had to start another slot than otadata selects.
    pub fn fell_back(&self) -> bool {
        self.slot() != Some(self.selected)
    }
}

/// What a slot holds, as the bootloader reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotContent {
    /// The slot is erased (first byte 0xFF).
    Empty,
    /// A structurally valid image; see [`ImageInfo::is_valid`].
    Image(Box<ImageInfo>),
    /// Not a readable ESP image (message from the verifier).
    Invalid(String),
}

impl SlotContent {
    /// The image, when the bootloader would start it (checksum and digest valid).
    pub fn bootable(self) -> Option<ImageInfo> {
        match self {
            SlotContent::Image(info) if info.is_valid() => Some(*info),
            _ => None,
        }
    }
}

/// Reads the image at the start of `region` ([`crate::slot::read_slot`]),
/// boxed and with the verifier's message, as the simulations keep it.
pub fn read_slot<F: ReadNorFlash>(flash: &mut F, region: Region) -> Result<SlotContent, Error> {
    Ok(match crate::slot::read_slot(flash, region)? {
        SlotImage::Empty => SlotContent::Empty,
        SlotImage::Image(info) => SlotContent::Image(Box::new(info)),
        SlotImage::Invalid(e) => SlotContent::Invalid(e.to_string()),
    })
}

/// The image `read_slot` finds, when the bootloader would start it.
pub fn bootable<F: ReadNorFlash>(
    flash: &mut F,
    region: Region,
) -> Result<Option<ImageInfo>, Error> {
    Ok(read_slot(flash, region)?.bootable())
}

/// One boot, every slot checked by [`bootable`].
pub fn boot<F: NorFlash>(
    flash: &mut F,
    layout: &Layout,
    kind: BootloaderKind,
) -> Result<Boot<ImageInfo>, Error> {
    boot_with(flash, layout, kind, |flash, _, region| {
        bootable(flash, region)
    })
}

/// One boot: otadata rewritten as the `kind` of bootloader does, the slot
/// chosen as ESP-IDF does, then the first slot in boot order for which
/// `start` answers `Some`.
pub fn boot_with<F: NorFlash, V>(
    flash: &mut F,
    layout: &Layout,
    kind: BootloaderKind,
    mut start: impl FnMut(&mut F, AppSlot, Region) -> Result<Option<V>, Error>,
) -> Result<Boot<V>, Error> {
    let mut entries = read_entries(flash, layout.otadata)?;
    if kind == BootloaderKind::Rollback {
        let result = rollback_bootloader_boot(&mut entries, layout.app_count);
        for (copy, rewritten) in result.rewritten.iter().enumerate() {
            if *rewritten {
                write_entry(flash, layout.otadata, copy, &entries[copy])?;
            }
        }
    }
    let selected = layout.resolve(boot_slot(&entries, layout.app_count));
    for slot in layout.boot_order(selected) {
        let Some(region) = layout.slot(slot) else {
            continue;
        };
        if let Some(v) = start(flash, slot, region)? {
            return Ok(Boot {
                selected,
                booted: Some((slot, v)),
            });
        }
    }
    Ok(Boot {
        selected,
        booted: None,
    })
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

/// What one boot of the simulated flash found (the campaign's and the
/// engine tests' view: slots only).
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

/// Reads both otadata copies of the simulated flash (a copy that cannot be
/// read counts as erased).
pub fn read_otadata(flash: &mut SimFlash, layout: &Layout) -> [OtaSelectEntry; 2] {
    read_entries(flash, layout.otadata).unwrap_or([OtaSelectEntry::BLANK; 2])
}

/// One boot of the simulated flash, with images known to be valid (see
/// [`slot_image_trusting`]). A flash that fails under the bootloader (power
/// already cut) boots nothing.
pub fn run_bootloader_trusting(
    flash: &mut SimFlash,
    layout: &Layout,
    kind: BootloaderKind,
    known: &[&[u8]],
) -> SimBoot {
    let boot = boot_with(flash, layout, kind, |flash, slot, _| {
        Ok(slot_image_trusting(flash, layout, slot, known).map(|_| ()))
    });
    match boot {
        Ok(b) => SimBoot {
            selected: b.selected,
            booted: b.slot(),
        },
        Err(_) => SimBoot {
            selected: layout.resolve(boot_slot(&[OtaSelectEntry::BLANK; 2], layout.app_count)),
            booted: None,
        },
    }
}

/// One boot of the simulated flash, every slot verified.
pub fn run_bootloader(flash: &mut SimFlash, layout: &Layout, kind: BootloaderKind) -> SimBoot {
    run_bootloader_trusting(flash, layout, kind, &[])
}
