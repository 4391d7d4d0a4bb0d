//! The simulated ESP-IDF second-stage bootloader, generic over any
//! [`ReadNorFlash`]: it picks the slot from otadata with ESP-IDF's rule and
//! starts the first slot that holds a valid image (checksum and appended
//! SHA-256), trying the selected slot, then lower slots down to factory,
//! then higher ones, like `bootloader_utility_load_boot_image`.
//!
//! It is the bootloader ESP-IDF builds without
//! `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE` (the esp-rs default): it reads
//! otadata and never writes it; rollback is the engine's boot guard's job.

use airlift_engine::{AppSlot, Error, Layout, Region};
use airlift_format::image::{ImageInfo, ImageVerifier};
use airlift_format::otadata::{self, ENTRY_LEN, OtaSelectEntry, boot_slot};
use embedded_storage::nor_flash::{NorFlashError, ReadNorFlash};

use crate::flash::AgentFlash;

/// What one simulated boot found.
#[derive(Debug, Clone, Copy)]
pub struct Boot {
    /// The slot otadata selects.
    pub selected: AppSlot,
    /// The slot started and its image, `None` when no slot holds a valid
    /// image (a bricked device).
    pub booted: Option<(AppSlot, ImageInfo)>,
}

fn flash_err<E: NorFlashError>(e: E) -> Error {
    Error::Flash(e.kind())
}

/// Reads both otadata copies.
pub fn read_otadata<F: ReadNorFlash>(
    flash: &mut F,
    layout: &Layout,
) -> Result<[OtaSelectEntry; 2], Error> {
    let mut out = [OtaSelectEntry::BLANK; 2];
    for (copy, e) in out.iter_mut().enumerate() {
        let mut raw = [0u8; ENTRY_LEN];
        let at = layout.otadata.offset + copy as u32 * otadata::SECTOR_SIZE;
        flash.read(at, &mut raw).map_err(flash_err)?;
        *e = OtaSelectEntry::decode(&raw);
    }
    Ok(out)
}

/// Why a slot's content is not a bootable image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotContent {
    /// The slot is erased (first byte 0xFF).
    Empty,
    /// A structurally valid image; see [`ImageInfo::is_valid`].
    Image(Box<ImageInfo>),
    /// Not a readable ESP image (message from the verifier).
    Invalid(String),
}

/// Reads the image at the start of `region` with the streaming verifier,
/// exactly up to the image's end (so its SHA-256 is the image file's).
pub fn read_slot<F: ReadNorFlash>(flash: &mut F, region: Region) -> Result<SlotContent, Error> {
    let mut first = [0u8; 1];
    flash.read(region.offset, &mut first).map_err(flash_err)?;
    if first[0] == 0xFF {
        return Ok(SlotContent::Empty);
    }
    let mut verifier = ImageVerifier::new();
    let mut buf = vec![0u8; 4096];
    let mut at = 0u32;
    while !verifier.is_complete() {
        let wanted = verifier.bytes_wanted().min(buf.len());
        let left = (region.size - at) as usize;
        if wanted == 0 || left == 0 {
            break;
        }
        let n = wanted.min(left);
        flash
            .read(region.offset + at, &mut buf[..n])
            .map_err(flash_err)?;
        if let Err(e) = verifier.update(&buf[..n]) {
            return Ok(SlotContent::Invalid(e.to_string()));
        }
        at += n as u32;
    }
    Ok(match verifier.finish() {
        Ok(info) => SlotContent::Image(Box::new(info)),
        Err(e) => SlotContent::Invalid(e.to_string()),
    })
}

/// [`read_slot`], computed once per distinct slot content when the flash
/// shares sectors between simulated devices: the verdict is a function of
/// the slot's bytes, and 10,000 devices booting the same release would
/// otherwise hash the same megabyte 10,000 times. The engine's own checks
/// (an install's SHA-256 and signature) are never shared this way.
pub fn read_slot_shared<F: AgentFlash>(
    flash: &mut F,
    region: Region,
) -> Result<SlotContent, Error> {
    let Some((key, pool)) = flash.shared_content(region.offset, region.size) else {
        return read_slot(flash, region);
    };
    if let Some(known) = pool.verdicts().get(&key) {
        return Ok(known);
    }
    let content = read_slot(flash, region)?;
    pool.verdicts().put(key, content.clone());
    Ok(content)
}

/// One boot of a device: [`run_bootloader`] with [`read_slot_shared`].
pub fn boot_device<F: AgentFlash>(flash: &mut F, layout: &Layout) -> Result<Boot, Error> {
    run_bootloader_with(flash, layout, read_slot_shared)
}

/// One boot: which slot the bootloader starts.
pub fn run_bootloader<F: ReadNorFlash>(flash: &mut F, layout: &Layout) -> Result<Boot, Error> {
    run_bootloader_with(flash, layout, read_slot)
}

fn run_bootloader_with<F: ReadNorFlash>(
    flash: &mut F,
    layout: &Layout,
    mut read: impl FnMut(&mut F, Region) -> Result<SlotContent, Error>,
) -> Result<Boot, Error> {
    let entries = read_otadata(flash, layout)?;
    let selected = layout.resolve(boot_slot(&entries, layout.app_count));
    for slot in layout.boot_order(selected) {
        let Some(region) = layout.slot(slot) else {
            continue;
        };
        if let SlotContent::Image(info) = read(flash, region)?
            && info.is_valid()
        {
            return Ok(Boot {
                selected,
                booted: Some((slot, *info)),
            });
        }
    }
    Ok(Boot {
        selected,
        booted: None,
    })
}
