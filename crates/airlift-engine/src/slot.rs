//! What an app slot holds, read as the bootloader would: the image at the
//! slot's start through the streaming verifier, up to the image's end (so
//! its SHA-256 is the image file's). No buffer beyond 1 KiB on the
//! stack; the firmware reads its running slot with it at boot, the device
//! page its slots, the simulated bootloader every slot it considers.

use airlift_format::image::{ImageError, ImageInfo, ImageVerifier};
use embedded_storage::nor_flash::ReadNorFlash;

use crate::error::{Error, flash_err};
use crate::layout::Region;

/// What a slot holds.
// No heap to box the image information in; a `SlotImage` is read and
// taken apart at once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotImage {
    /// Erased (the first byte is 0xFF).
    Empty,
    /// A structurally valid image; see [`ImageInfo::is_valid`] for its
    /// checksum and digest.
    Image(ImageInfo),
    /// Not a readable ESP image.
    Invalid(ImageError),
}

impl SlotImage {
    /// The image, when the bootloader would start it (checksum and digest valid).
    pub fn bootable(self) -> Option<ImageInfo> {
        match self {
            SlotImage::Image(info) if info.is_valid() => Some(info),
            _ => None,
        }
    }
}

/// Reads the image at the start of `region`.
pub fn read_slot<F: ReadNorFlash>(flash: &mut F, region: Region) -> Result<SlotImage, Error> {
    let mut first = [0u8; 4];
    flash.read(region.offset, &mut first).map_err(flash_err)?;
    if first[0] == 0xFF {
        return Ok(SlotImage::Empty);
    }
    let mut verifier = ImageVerifier::new();
    let mut buf = [0u8; 1024];
    let mut at = 0u32;
    while !verifier.is_complete() {
        let wanted = verifier.bytes_wanted().min(buf.len());
        let left = (region.size - at) as usize;
        if wanted == 0 || left == 0 {
            break;
        }
        let n = wanted.min(left);
        let aligned = n
            .next_multiple_of(F::READ_SIZE)
            .min(left)
            .min(buf.len())
            .max(n);
        flash
            .read(region.offset + at, &mut buf[..aligned])
            .map_err(flash_err)?;
        if let Err(e) = verifier.update(&buf[..n]) {
            return Ok(SlotImage::Invalid(e));
        }
        at += n as u32;
    }
    Ok(match verifier.finish() {
        Ok(info) => SlotImage::Image(info),
        Err(e) => SlotImage::Invalid(e),
    })
}
