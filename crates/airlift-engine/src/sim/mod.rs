//! Simulation: a NOR flash with power-cut injection, an ESP-IDF bootloader,
//! provisioning helpers, and the power-cut campaign. Behind the `sim` feature
//! (uses `std`); for tests, the CLI and the PC agent.

pub mod bootloader;
pub mod campaign;
pub mod chaos;
pub mod flash;

use std::string::{String, ToString};
use std::vec::Vec;

use airlift_format::image::{self, Chip, ImageBuilder};
use airlift_format::manifest::{self, Manifest, SigningKey};
use airlift_format::otadata::{OtaSelectEntry, OtaState};
use airlift_format::partition::{self, PartitionEntry, TABLE_MAX_LEN, TABLE_OFFSET};

pub use bootloader::{BootloaderKind, SimBoot, run_bootloader};
pub use flash::{Fault, FaultKind, SimFlash};

use crate::device::{Config, Device};
use crate::layout::Layout;
use crate::store::{ImageTag, Version};

/// Flash size of the simulated ESP32 (4 MiB).
pub const FLASH_SIZE: usize = 4 * 1024 * 1024;

/// The layout of a partition table given as entries.
pub fn layout_of(entries: &[PartitionEntry]) -> Result<Layout, String> {
    let l = partition::OtaLayout::from_entries(entries.iter().copied())
        .map_err(|e| std::format!("partition table: {e}"))?;
    Layout::from_ota_layout(&l).map_err(|e| std::format!("partition table: {e}"))
}

/// A flash as `airlift flash create` (or esptool) would leave it: partition
/// table at 0x8000, `image` in `ota_0` selected by otadata (seq 1, VALID),
/// and in Airlift's data partition the trusted `keys` and what `ota_0` holds.
pub fn provision(
    entries: &[PartitionEntry],
    flash_size: usize,
    image_bytes: &[u8],
    keys: &[[u8; 32]],
) -> Result<SimFlash, String> {
    let layout = layout_of(entries)?;
    let mut flash = SimFlash::new(flash_size);
    let mut table = [0xFFu8; TABLE_MAX_LEN];
    partition::build(entries, &mut table).map_err(|e| std::format!("partition table: {e}"))?;
    flash.load(TABLE_OFFSET as usize, &table);
    let slot0 = layout.slots[0];
    if image_bytes.len() > slot0.size as usize {
        return Err(std::format!(
            "image is {} bytes but ota_0 holds {}",
            image_bytes.len(),
            slot0.size
        ));
    }
    flash.load(slot0.offset as usize, image_bytes);
    crate::otadata_io::write_entry(
        &mut flash,
        layout.otadata,
        0,
        &OtaSelectEntry::new(1, OtaState::Valid),
    )
    .map_err(|e| e.to_string())?;
    let tag = tag_of(image_bytes);
    let mut device = Device::open(&mut flash, Config::default()).map_err(|e| e.to_string())?;
    for key in keys {
        device.add_trusted_key(key).map_err(|e| e.to_string())?;
    }
    device.set_slot_image(0, &tag).map_err(|e| e.to_string())?;
    Ok(flash)
}

/// What the engine records about an image: SHA-256 prefix, version and
/// security version from its app descriptor.
pub fn tag_of(image_bytes: &[u8]) -> ImageTag {
    let info = image::verify(image_bytes).ok();
    let mut sha_prefix = [0u8; 8];
    if let Some(info) = &info {
        sha_prefix.copy_from_slice(&info.file_sha256[..8]);
    }
    let desc = info.and_then(|i| i.app_desc);
    ImageTag {
        sha_prefix,
        security_version: desc.as_ref().map_or(0, |d| d.secure_version()),
        version: Version::new(desc.as_ref().map_or("", |d| d.version())),
    }
}

/// Signs a manifest for `image_bytes` (chip, size and SHA-256 from the image;
/// version and security version from its app descriptor unless given).
pub fn sign_image(
    image_bytes: &[u8],
    key: &SigningKey,
    version: Option<&str>,
    security_version: Option<u32>,
) -> Result<Vec<u8>, String> {
    let info = image::verify(image_bytes).map_err(|e| e.to_string())?;
    let desc_version = info
        .app_desc
        .as_ref()
        .map_or(String::new(), |d| d.version().into());
    let version = version.unwrap_or(&desc_version);
    let sha = info.file_sha256;
    let product = info
        .app_desc
        .as_ref()
        .map_or(String::new(), |d| d.project_name().into());
    let m = Manifest {
        chip_id: info.header.chip_id,
        security_version: security_version
            .unwrap_or_else(|| info.app_desc.as_ref().map_or(0, |d| d.secure_version())),
        image_size: u32::try_from(image_bytes.len()).map_err(|_| "image too large")?,
        image_sha256: sha,
        delta_base_sha256: None,
        key_id: [0; 8],
        product: &product,
        version,
    };
    manifest::sign(&m, key).map_err(|e| e.to_string())
}

/// A small valid ESP32 app image (`size` bytes of code, give or take the
/// header), for tests and the campaign.
pub fn test_image(version: &str, secure_version: u32, size: usize) -> Vec<u8> {
    // The filler is seeded by address and length, so mix the version in.
    let seed = version
        .bytes()
        .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    ImageBuilder::new(Chip::Esp32)
        .app("airlift-sim", version)
        .secure_version(secure_version)
        .filler(0x3F40_0020 + (seed & 0xFFC), 256)
        .filler(0x400D_0020, size)
        .build()
}
