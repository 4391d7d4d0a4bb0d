//! Flash backends for the agent: a 4 MiB file laid out like a real ESP32's
//! flash ([`FileFlash`]), and an in-memory copy-on-write flash that shares
//! one base image between thousands of simulated devices ([`CowFlash`]).
//!
//! Both behave like NOR flash as esp-storage presents it: erase sets whole
//! 4 KiB sectors to 0xFF, a program can only clear bits, writes are 4-byte
//! aligned.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

/// Program granularity (esp-storage's `WRITE_SIZE`).
pub const WRITE_SIZE: usize = 4;
/// Erase granularity: one flash sector.
pub const SECTOR: usize = 4096;
/// Size of the simulated ESP32's flash.
pub const FLASH_SIZE: usize = 4 * 1024 * 1024;

/// A flash operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlashError {
    /// The file could not be read or written.
    #[error("flash file i/o failed: {0}")]
    Io(std::io::ErrorKind),
    /// Offset or length outside the flash.
    #[error("flash access out of bounds")]
    OutOfBounds,
    /// Offset or length not aligned to the write or erase size.
    #[error("flash access not aligned")]
    NotAligned,
    /// Simulated power loss (fleet simulator): nothing works until a reset.
    #[error("power lost")]
    PowerLost,
}

impl NorFlashError for FlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            FlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            FlashError::NotAligned => NorFlashErrorKind::NotAligned,
            FlashError::Io(_) | FlashError::PowerLost => NorFlashErrorKind::Other,
        }
    }
}

fn check(capacity: usize, offset: u32, len: usize, align: usize) -> Result<usize, FlashError> {
    let start = offset as usize;
    if !start.is_multiple_of(align) || !len.is_multiple_of(align) {
        return Err(FlashError::NotAligned);
    }
    match start.checked_add(len) {
        Some(end) if end <= capacity => Ok(start),
        _ => Err(FlashError::OutOfBounds),
    }
}

/// What the device loop needs from a flash besides the NOR traits: a way to
/// model a reset.
pub trait AgentFlash: NorFlash + Send + 'static {
    /// Restores power after a simulated cut (a reset). Files need nothing.
    fn power_cycle(&mut self) {}
    /// Schedules a power cut at the `ops`-th mutating operation from now
    /// (simulated flashes only).
    fn cut_power_in(&mut self, ops: u64) {
        let _ = ops;
    }
    /// Whether power was cut (every operation fails until a reset).
    fn is_dead(&self) -> bool {
        false
    }
}

/// A NOR flash backed by a file (`airlift flash create` writes it).
///
/// Every erase and every program is exactly one `pwrite` of the final bytes
/// (a program reads the old bytes and writes `old & new`), so a process
/// killed at any moment (SIGKILL, the agent's power cut) leaves each
/// operation either done or not done: the page cache holds the whole write
/// or none of it. Torn operations (half a program, half an erase) cannot
/// happen here; the engine's power-cut campaign (`airlift sim power-cut`)
/// covers them on the simulated flash, at every operation.
#[derive(Debug)]
pub struct FileFlash {
    file: File,
    capacity: usize,
}

impl FileFlash {
    /// Opens an existing flash file for reading and writing.
    pub fn open(path: &Path) -> std::io::Result<FileFlash> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        let capacity = usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidData)?;
        if capacity == 0 || !capacity.is_multiple_of(SECTOR) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "flash file is {len} bytes, expected a multiple of 4096 (4 MiB by default)"
                ),
            ));
        }
        Ok(FileFlash { file, capacity })
    }

    /// Writes `bytes` as a new flash file (refuses to overwrite unless `force`).
    pub fn create(path: &Path, bytes: &[u8], force: bool) -> std::io::Result<FileFlash> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let file = options.open(path)?;
        file.write_all_at(bytes, 0)?;
        file.sync_all()?;
        Ok(FileFlash {
            file,
            capacity: bytes.len(),
        })
    }

    /// Reads the whole flash.
    pub fn read_all(&self) -> std::io::Result<Vec<u8>> {
        let mut out = vec![0u8; self.capacity];
        self.file.read_exact_at(&mut out, 0)?;
        Ok(out)
    }
}

impl ErrorType for FileFlash {
    type Error = FlashError;
}

impl ReadNorFlash for FileFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashError> {
        let start = check(self.capacity, offset, bytes.len(), 1)?;
        self.file
            .read_exact_at(bytes, start as u64)
            .map_err(|e| FlashError::Io(e.kind()))
    }

    fn capacity(&self) -> usize {
        self.capacity
    }
}

impl NorFlash for FileFlash {
    const WRITE_SIZE: usize = WRITE_SIZE;
    const ERASE_SIZE: usize = SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        let len = to.checked_sub(from).ok_or(FlashError::OutOfBounds)? as usize;
        let start = check(self.capacity, from, len, SECTOR)?;
        self.file
            .write_all_at(&vec![0xFF; len], start as u64)
            .map_err(|e| FlashError::Io(e.kind()))
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
        let start = check(self.capacity, offset, bytes.len(), WRITE_SIZE)?;
        let mut merged = vec![0u8; bytes.len()];
        self.file
            .read_exact_at(&mut merged, start as u64)
            .map_err(|e| FlashError::Io(e.kind()))?;
        for (m, b) in merged.iter_mut().zip(bytes) {
            *m &= *b;
        }
        self.file
            .write_all_at(&merged, start as u64)
            .map_err(|e| FlashError::Io(e.kind()))
    }
}

impl AgentFlash for FileFlash {}

/// An in-memory flash that keeps only the sectors written since it was made
/// from a shared base image: 10,000 devices share one 4 MiB base and each
/// holds only its otadata, data-partition and downloaded sectors.
///
/// Can cut power after a number of mutating operations (the fleet
/// simulator's `--power-cut-rate`): the cut operation does nothing, and
/// every later one fails until [`AgentFlash::power_cycle`].
#[derive(Debug, Clone)]
pub struct CowFlash {
    base: Arc<[u8]>,
    sectors: HashMap<u32, Box<[u8]>>,
    cut_in: Option<u64>,
    dead: bool,
}

impl CowFlash {
    /// A flash that reads as `base` until written.
    pub fn new(base: Arc<[u8]>) -> CowFlash {
        CowFlash {
            base,
            sectors: HashMap::new(),
            cut_in: None,
            dead: false,
        }
    }

    /// Bytes held privately by this device (written sectors).
    pub fn private_bytes(&self) -> usize {
        self.sectors.len() * SECTOR
    }

    fn begin_op(&mut self) -> Result<(), FlashError> {
        if self.dead {
            return Err(FlashError::PowerLost);
        }
        match self.cut_in {
            Some(0) => {
                self.cut_in = None;
                self.dead = true;
                Err(FlashError::PowerLost)
            }
            Some(n) => {
                self.cut_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn sector_mut(&mut self, index: u32) -> &mut [u8] {
        let base = &self.base;
        self.sectors.entry(index).or_insert_with(|| {
            let at = index as usize * SECTOR;
            base[at..at + SECTOR].into()
        })
    }
}

impl ErrorType for CowFlash {
    type Error = FlashError;
}

impl ReadNorFlash for CowFlash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), FlashError> {
        if self.dead {
            return Err(FlashError::PowerLost);
        }
        let mut at = check(self.base.len(), offset, bytes.len(), 1)?;
        let mut done = 0;
        while done < bytes.len() {
            let index = (at / SECTOR) as u32;
            let within = at % SECTOR;
            let n = (SECTOR - within).min(bytes.len() - done);
            let src = match self.sectors.get(&index) {
                Some(s) => &s[within..within + n],
                None => &self.base[at..at + n],
            };
            bytes[done..done + n].copy_from_slice(src);
            done += n;
            at += n;
        }
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.base.len()
    }
}

impl NorFlash for CowFlash {
    const WRITE_SIZE: usize = WRITE_SIZE;
    const ERASE_SIZE: usize = SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), FlashError> {
        let len = to.checked_sub(from).ok_or(FlashError::OutOfBounds)? as usize;
        let start = check(self.base.len(), from, len, SECTOR)?;
        self.begin_op()?;
        for index in start / SECTOR..(start + len) / SECTOR {
            self.sectors
                .insert(index as u32, vec![0xFF; SECTOR].into_boxed_slice());
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), FlashError> {
        let mut at = check(self.base.len(), offset, bytes.len(), WRITE_SIZE)?;
        self.begin_op()?;
        let mut done = 0;
        while done < bytes.len() {
            let index = (at / SECTOR) as u32;
            let within = at % SECTOR;
            let n = (SECTOR - within).min(bytes.len() - done);
            let sector = self.sector_mut(index);
            for (d, s) in sector[within..within + n]
                .iter_mut()
                .zip(&bytes[done..done + n])
            {
                *d &= *s;
            }
            done += n;
            at += n;
        }
        Ok(())
    }
}

impl AgentFlash for CowFlash {
    fn power_cycle(&mut self) {
        self.dead = false;
        self.cut_in = None;
    }

    fn cut_power_in(&mut self, ops: u64) {
        self.cut_in = Some(ops);
    }

    fn is_dead(&self) -> bool {
        self.dead
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn exercise<F: NorFlash>(flash: &mut F) {
        flash.erase(4096, 8192).unwrap();
        flash.write(4096, &[0x0F, 0xF0, 0xFF, 0x00]).unwrap();
        flash.write(4096, &[0xFF, 0x3C, 0xFF, 0xFF]).unwrap();
        let mut out = [0u8; 6];
        flash.read(4094, &mut out).unwrap();
        assert_eq!(out, [0xAB, 0xAB, 0x0F, 0x30, 0xFF, 0x00]);
        let refused = flash.write(4097, &[0; 4]).map_err(|e| e.kind());
        assert_eq!(refused, Err(NorFlashErrorKind::NotAligned));
    }

    #[test]
    fn file_and_cow_flash_program_only_clear_bits() {
        let base = vec![0xABu8; 16 * SECTOR];
        let dir = tempfile::tempdir().unwrap();
        let mut file = FileFlash::create(&dir.path().join("f.bin"), &base, false).unwrap();
        exercise(&mut file);
        let mut cow = CowFlash::new(base.clone().into());
        exercise(&mut cow);
        assert_eq!(cow.private_bytes(), SECTOR);
        assert_eq!(
            file.read_all().unwrap()[..8192],
            {
                let mut all = vec![0u8; 8192];
                cow.read(0, &mut all).unwrap();
                all
            }[..]
        );
    }

    #[test]
    fn unaligned_and_out_of_bounds_accesses_are_refused() {
        let mut cow = CowFlash::new(vec![0xFFu8; 2 * SECTOR].into());
        assert_eq!(cow.write(2, &[0; 4]), Err(FlashError::NotAligned));
        assert_eq!(cow.erase(0, 100), Err(FlashError::NotAligned));
        assert_eq!(cow.erase(0, 3 * 4096), Err(FlashError::OutOfBounds));
        let mut b = [0u8; 8];
        assert_eq!(cow.read(2 * 4096 - 4, &mut b), Err(FlashError::OutOfBounds));
    }

    #[test]
    fn power_cut_stops_the_cut_operation_and_all_later_ones_until_a_reset() {
        let mut cow = CowFlash::new(vec![0xFFu8; 2 * SECTOR].into());
        cow.cut_power_in(1);
        cow.write(0, &[1, 2, 3, 4]).unwrap();
        assert_eq!(cow.write(4, &[1, 2, 3, 4]), Err(FlashError::PowerLost));
        let mut b = [0u8; 8];
        assert_eq!(cow.read(0, &mut b), Err(FlashError::PowerLost));
        cow.power_cycle();
        cow.read(0, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
}
