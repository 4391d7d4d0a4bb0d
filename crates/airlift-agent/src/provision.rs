//! Building a device's flash image, as `airlift flash create` (or esptool
//! flashing a factory image) leaves it, and the whole flash of a real board
//! (`airlift flash provision`).

use airlift_client::settings::{Settings, SettingsStore};
use airlift_engine::sim;
use airlift_format::image;
use airlift_format::partition::{PartitionEntry, TABLE_OFFSET, Table};
use embedded_storage::nor_flash::ReadNorFlash;

use crate::AgentError;
use crate::flash::FLASH_SIZE;

/// A 4 MiB flash image: `entries` as the partition table at 0x8000,
/// `firmware` in `ota_0` selected by otadata (sequence 1, VALID), and in
/// Airlift's data partition the trusted `keys` and what `ota_0` holds.
/// The bootloader region (0x0..0x8000) is left erased: the agent simulates
/// the bootloader. Airlift's data partition must be at least 24 KiB: the
/// device's client keeps its notes and settings in its last 16 KiB
/// (`airlift_engine::Layout::records`).
pub fn flash_image(
    entries: &[PartitionEntry],
    firmware: &[u8],
    keys: &[[u8; 32]],
) -> Result<Vec<u8>, AgentError> {
    flash_image_with(entries, firmware, keys, None)
}

/// [`flash_image`] with `settings` written into the client's settings
/// records (`airlift flash create --tls-pin --require-https`).
pub fn flash_image_with(
    entries: &[PartitionEntry],
    firmware: &[u8],
    keys: &[[u8; 32]],
    settings: Option<&Settings>,
) -> Result<Vec<u8>, AgentError> {
    provisioned(entries, firmware, keys, FLASH_SIZE, settings)
}

/// The whole flash of a real board, to write at offset 0 (`espflash
/// write-bin 0x0 FILE`, `esptool write-flash 0x0 FILE`): [`flash_image`]'s
/// content, `flash_size` bytes long, with the ESP-IDF second-stage
/// `bootloader` at the chip's bootloader offset, its header set to
/// `flash_size` (the bootloader configures the flash from it, and the ROM's
/// flash functions refuse addresses beyond it). Every other byte is 0xFF,
/// so whatever the board held before is erased.
///
/// `settings` (Wi-Fi, server, token, boot-attempt limit, name, page
/// password, time server) go in as the client crate's settings records
/// (`airlift_engine::Layout::records`), which the firmware reads at boot.
pub fn whole_flash(
    entries: &[PartitionEntry],
    firmware: &[u8],
    keys: &[[u8; 32]],
    bootloader: &[u8],
    flash_size: u32,
    settings: Option<&Settings>,
) -> Result<Vec<u8>, AgentError> {
    let refuse = |why: String| Err(AgentError::Provision(why));
    let app_chip = match image::verify(firmware) {
        Ok(info) => info.chip(),
        Err(e) => return refuse(format!("firmware is not an ESP app image: {e}")),
    };
    let boot = match image::verify(bootloader) {
        Ok(info) => info,
        Err(e) => return refuse(format!("bootloader is not an ESP image: {e}")),
    };
    if boot.app_desc.is_some() {
        return refuse(
            "the bootloader file is an application image (it has an app descriptor)".into(),
        );
    }
    if !boot.is_valid() {
        return refuse("bootloader's checksum or appended sha-256 digest is wrong".into());
    }
    if boot.chip() != app_chip {
        return refuse(format!(
            "bootloader is for {} but the firmware is for {app_chip}",
            boot.chip()
        ));
    }
    let Some(offset) = app_chip.bootloader_offset() else {
        return refuse(format!("no known bootloader offset for {app_chip}"));
    };
    let mut patched = bootloader[..boot.image_len as usize].to_vec();
    image::set_flash_size(&mut patched, flash_size)
        .map_err(|e| AgentError::Provision(format!("bootloader: {e}")))?;
    let end = offset as usize + patched.len();
    if end > TABLE_OFFSET as usize {
        return refuse(format!(
            "bootloader is {} bytes at {offset:#x}: it runs into the partition table at {TABLE_OFFSET:#x}",
            patched.len()
        ));
    }
    let mut flash = provisioned(entries, firmware, keys, flash_size as usize, settings)?;
    flash[offset as usize..end].copy_from_slice(&patched);
    Ok(flash)
}

fn provisioned(
    entries: &[PartitionEntry],
    firmware: &[u8],
    keys: &[[u8; 32]],
    flash_size: usize,
    settings: Option<&Settings>,
) -> Result<Vec<u8>, AgentError> {
    let info = image::verify(firmware)
        .map_err(|e| AgentError::Provision(format!("firmware is not an ESP app image: {e}")))?;
    if !info.is_valid() {
        return Err(AgentError::Provision(
            "firmware's checksum or appended sha-256 digest is wrong: it would not boot".into(),
        ));
    }
    if info.app_desc.is_none() {
        return Err(AgentError::Provision(
            "firmware has no app descriptor (esp_app_desc_t): not an application image".into(),
        ));
    }
    if let Some(e) = entries
        .iter()
        .find(|e| e.offset as usize + e.size as usize > flash_size)
    {
        return Err(AgentError::Provision(format!(
            "partition {} ends at {:#x}, beyond the {} MiB flash",
            e.label_str(),
            e.offset as usize + e.size as usize,
            flash_size >> 20
        )));
    }
    let layout = sim::layout_of(entries).map_err(AgentError::Provision)?;
    let records = records_region(&layout)?;
    let mut flash =
        sim::provision(entries, flash_size, firmware, keys).map_err(AgentError::Provision)?;
    if let Some(settings) = settings {
        SettingsStore::new(records)?.save(&mut flash, settings)?;
    }
    Ok(flash.into_bytes())
}

/// Where the device's client keeps its records, or why it cannot.
pub fn records_region(
    layout: &airlift_engine::Layout,
) -> Result<airlift_engine::Region, AgentError> {
    layout.records.ok_or(AgentError::NoRecords {
        size: layout.data.size,
    })
}

/// The partition table entries stored at 0x8000.
pub fn read_table<F: ReadNorFlash>(flash: &mut F) -> Result<Vec<PartitionEntry>, AgentError> {
    let mut raw = vec![0u8; airlift_format::partition::TABLE_MAX_LEN];
    flash.read(TABLE_OFFSET, &mut raw).map_err(|e| {
        AgentError::Engine(airlift_engine::Error::Flash(
            embedded_storage::nor_flash::NorFlashError::kind(&e),
        ))
    })?;
    let table = Table::parse(&raw)
        .map_err(|e| AgentError::Engine(airlift_engine::Error::PartitionTable(e)))?;
    Ok(table.iter().collect())
}

/// The settings provisioned in a device's flash, `None` when it was
/// provisioned without any (or its layout has no room for them).
pub fn read_settings<F: embedded_storage::nor_flash::NorFlash>(
    flash: &mut F,
) -> Result<Option<Settings>, AgentError> {
    let layout = airlift_engine::Layout::read(flash, TABLE_OFFSET)?;
    let Some(records) = layout.records else {
        return Ok(None);
    };
    Ok(SettingsStore::new(records)?.load(flash)?)
}
