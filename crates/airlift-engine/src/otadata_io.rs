//! otadata on flash: the one place that reads and writes its two copies.
//!
//! The engine's boot guard, confirm, rollback and activation, the simulated
//! ESP-IDF bootloader (which rewrites states when built with app rollback)
//! and the inspection tools all go through these two functions, so the
//! rule "an entry is one program of its 32 bytes after an erase of its
//! copy's sector" is written once.

use airlift_format::otadata::{ENTRY_LEN, OtaSelectEntry, SECTOR_SIZE};
use embedded_storage::nor_flash::{NorFlash, ReadNorFlash};

use crate::error::{Error, flash_err};
use crate::layout::Region;

/// Reads both copies of the otadata partition at `otadata`.
pub fn read_entries<F: ReadNorFlash>(
    flash: &mut F,
    otadata: Region,
) -> Result<[OtaSelectEntry; 2], Error> {
    let mut out = [OtaSelectEntry::BLANK; 2];
    for (copy, entry) in out.iter_mut().enumerate() {
        let mut raw = [0u8; ENTRY_LEN];
        flash
            .read(otadata.offset + copy as u32 * SECTOR_SIZE, &mut raw)
            .map_err(flash_err)?;
        *entry = OtaSelectEntry::decode(&raw);
    }
    Ok(out)
}

/// Erases copy `copy`'s sector and writes `entry` (sequence number and
/// state together) in one program operation.
pub fn write_entry<F: NorFlash>(
    flash: &mut F,
    otadata: Region,
    copy: usize,
    entry: &OtaSelectEntry,
) -> Result<(), Error> {
    let at = otadata.offset + copy as u32 * SECTOR_SIZE;
    flash.erase(at, at + SECTOR_SIZE).map_err(flash_err)?;
    flash.write(at, &entry.encode()).map_err(flash_err)
}
