//! Building a device's flash image, as `airlift flash create` (or esptool
//! flashing a factory image) leaves it.

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
/// the bootloader. The table needs an `nvs` partition: the device's client
/// keeps its notes and settings there (`airlift_client::records`).
pub fn flash_image(
    entries: &[PartitionEntry],
    firmware: &[u8],
    keys: &[[u8; 32]],
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
    let flash =
        sim::provision(entries, FLASH_SIZE, firmware, keys).map_err(AgentError::Provision)?;
    if !entries.iter().any(|e| e.label_str() == "nvs") {
        return Err(AgentError::NoNvs);
    }
    Ok(flash.into_bytes())
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
