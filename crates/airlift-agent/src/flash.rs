//! Flash backends for the agent: a 4 MiB file laid out like a real ESP32's
//! flash ([`FileFlash`]), and an in-memory copy-on-write flash that shares
//! one base image between thousands of simulated devices ([`CowFlash`]).
//!
//! Both behave like NOR flash as esp-storage presents it: erase sets whole
//! 4 KiB sectors to 0xFF, a program can only clear bits, writes are 4-byte
//! aligned.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

use airlift_engine::sim::bootloader::{Boot, BootloaderKind, SlotContent, boot_with, read_slot};
use airlift_engine::{Error, Layout, Region};
use airlift_format::image::ImageInfo;

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
    /// The identity of the bytes in `offset..offset + len` and the pool
    /// that keeps verdicts on such bytes, for flashes that share sectors
    /// between simulated devices ([`CowFlash::content_key`]).
    fn shared_content(&mut self, offset: u32, len: u32) -> Option<(ContentKey, Arc<SectorPool>)> {
        let _ = (offset, len);
        None
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

/// Sectors that the simulated devices of one fleet share.
///
/// A fleet's devices mostly write the same bytes to the same places (the
/// same release into the same slot): when a device has finished writing a
/// sector that holds exactly the bytes another device already holds at that
/// offset, it keeps a reference to that sector instead of its own copy, so
/// 10,000 devices that installed a 1 MB release hold one copy of it, not
/// 10,000. Sharing is invisible to the device: a shared sector is copied
/// again the moment its holder writes to it (copy-on-write).
///
/// The pool also memoises [`SlotVerdicts`]: the simulated bootloader's
/// verdict on a slot is a function of the slot's bytes, so devices whose
/// slot is made of the same shared sectors get it computed once.
#[derive(Debug)]
pub struct SectorPool {
    erased: Arc<Block>,
    by_offset: Mutex<SectorMap<Vec<Weak<Block>>>>,
    /// Blocks of devices whose sector turned out to be a copy of a shared
    /// one, kept to be written again instead of freed and allocated anew.
    spare: Mutex<Vec<Arc<Block>>>,
    verdicts: SlotVerdicts,
}

/// A map keyed by sector index. Indexes are small and not chosen by an
/// adversary: a multiply spreads them, SipHash would cost more than the
/// lookup it serves (the engine reads back 256 bytes at a time).
type SectorMap<V> = HashMap<u32, V, BuildHasherDefault<IndexHasher>>;

/// Fibonacci hashing of a sector index (see [`SectorMap`]).
#[derive(Debug, Default, Clone, Copy)]
struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u32(u32::from(*b));
        }
    }

    fn write_u32(&mut self, i: u32) {
        self.0 = (self.0 ^ u64::from(i)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// One flash sector's bytes.
type Block = [u8; SECTOR];

/// How many different contents the pool remembers per sector offset (a
/// fleet in the middle of a rollout holds two or three releases).
const CANDIDATES: usize = 8;
/// How many spare blocks the pool keeps (1 MiB).
const SPARES: usize = 256;

impl SectorPool {
    /// An empty pool.
    pub fn new() -> SectorPool {
        SectorPool {
            erased: Arc::new([0xFF; SECTOR]),
            by_offset: Mutex::new(SectorMap::default()),
            spare: Mutex::new(Vec::new()),
            verdicts: SlotVerdicts::default(),
        }
    }

    /// The bootloader verdicts memoised for this pool's devices.
    pub fn verdicts(&self) -> &SlotVerdicts {
        &self.verdicts
    }

    /// A sector equal to `sector` (at sector `index`) that other devices
    /// hold already, or `sector` itself, which others may share from now.
    fn intern(&self, index: u32, sector: Arc<Block>) -> Arc<Block> {
        if *sector == *self.erased {
            self.give_back(sector);
            return self.erased.clone();
        }
        let Ok(mut map) = self.by_offset.lock() else {
            return sector;
        };
        let candidates = map.entry(index).or_default();
        candidates.retain(|w| w.strong_count() > 0);
        if let Some(found) = candidates
            .iter()
            .filter_map(Weak::upgrade)
            .find(|c| Arc::ptr_eq(c, &sector) || **c == *sector)
        {
            drop(map);
            self.give_back(sector);
            return found;
        }
        if candidates.len() >= CANDIDATES {
            candidates.remove(0);
        }
        candidates.push(Arc::downgrade(&sector));
        sector
    }

    /// A block of this device's own holding `from`'s bytes: a spare one
    /// when there is one (no allocation, no fresh pages to fault in).
    fn own_copy(&self, from: &Block) -> Arc<Block> {
        let spare = self.spare.lock().ok().and_then(|mut s| s.pop());
        match spare {
            Some(mut block) => match Arc::get_mut(&mut block) {
                Some(bytes) => {
                    bytes.copy_from_slice(from);
                    block
                }
                None => Arc::new(*from),
            },
            None => Arc::new(*from),
        }
    }

    /// Keeps `block` as a spare if nobody else holds it.
    fn give_back(&self, block: Arc<Block>) {
        if Arc::strong_count(&block) == 1
            && Arc::weak_count(&block) == 0
            && let Ok(mut spare) = self.spare.lock()
            && spare.len() < SPARES
        {
            spare.push(block);
        }
    }
}

impl Default for SectorPool {
    fn default() -> SectorPool {
        SectorPool::new()
    }
}

/// The simulated bootloader's verdicts on slots, keyed by the identity of
/// the sectors the slot is made of (see [`CowFlash::content_key`]).
#[derive(Debug, Default)]
pub struct SlotVerdicts {
    entries: Mutex<Vec<(ContentKey, SlotContent)>>,
}

/// How many slot contents [`SlotVerdicts`] remembers.
const VERDICTS: usize = 16;

impl SlotVerdicts {
    /// The verdict recorded for `key`, if any.
    pub fn get(&self, key: &ContentKey) -> Option<SlotContent> {
        let entries = self.entries.lock().ok()?;
        entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// Records `verdict` for `key` (forgetting the oldest beyond a few).
    pub fn put(&self, key: ContentKey, verdict: SlotContent) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= VERDICTS {
                entries.remove(0);
            }
            entries.push((key, verdict));
        }
    }
}

/// The identity of a region's bytes: for each sector, the base image's
/// sector or the sector a flash holds. The key holds those sectors, so
/// they cannot change (a flash that writes one copies it first) nor be
/// freed and their addresses reused while the key exists: equal keys mean
/// equal bytes.
#[derive(Debug, Clone)]
pub struct ContentKey {
    offset: u32,
    sectors: Vec<Option<Arc<Block>>>,
}

impl PartialEq for ContentKey {
    fn eq(&self, other: &ContentKey) -> bool {
        self.offset == other.offset
            && self.sectors.len() == other.sectors.len()
            && self
                .sectors
                .iter()
                .zip(&other.sectors)
                .all(|(a, b)| match (a, b) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                })
    }
}

impl Eq for ContentKey {}

/// An in-memory flash that keeps only the sectors written since it was made
/// from a shared base image: 10,000 devices share one 4 MiB base and each
/// holds only its otadata, data-partition and downloaded sectors; with a
/// [`SectorPool`], sectors that several devices wrote with the same bytes
/// (a release) are held once.
///
/// Can cut power after a number of mutating operations (the fleet
/// simulator's `--power-cut-rate`): the cut operation does nothing, and
/// every later one fails until [`AgentFlash::power_cycle`].
#[derive(Debug, Clone)]
pub struct CowFlash {
    base: Arc<[u8]>,
    /// Sectors written since `base`; one held by anybody else (another
    /// device, a [`ContentKey`]) is copied before it is written.
    sectors: SectorMap<Arc<Block>>,
    pool: Arc<SectorPool>,
    /// The sector being written (an install programs sequentially): offered
    /// to the pool once the device writes elsewhere.
    open: Option<u32>,
    cut_in: Option<u64>,
    dead: bool,
}

impl CowFlash {
    /// A flash that reads as `base` until written, sharing nothing with
    /// other devices.
    pub fn new(base: Arc<[u8]>) -> CowFlash {
        CowFlash::with_pool(base, Arc::new(SectorPool::new()))
    }

    /// A flash that reads as `base` until written and shares finished
    /// sectors through `pool` with every other flash made with it.
    pub fn with_pool(base: Arc<[u8]>, pool: Arc<SectorPool>) -> CowFlash {
        CowFlash {
            base,
            sectors: SectorMap::default(),
            pool,
            open: None,
            cut_in: None,
            dead: false,
        }
    }

    /// Bytes held by this device alone (sectors it wrote that nobody else
    /// holds).
    pub fn private_bytes(&self) -> usize {
        self.sectors
            .values()
            .filter(|s| Arc::strong_count(s) == 1)
            .count()
            * SECTOR
    }

    /// The identity of the bytes in `offset..offset + len`, or `None`
    /// unless both are whole sectors. Two flashes of the same pool and
    /// base with equal keys hold equal bytes there.
    pub fn content_key(&mut self, offset: u32, len: u32) -> Option<ContentKey> {
        if !(offset as usize).is_multiple_of(SECTOR)
            || !(len as usize).is_multiple_of(SECTOR)
            || offset as usize + len as usize > self.base.len()
        {
            return None;
        }
        self.share_open();
        let first = offset / SECTOR as u32;
        let sectors = (first..first + len / SECTOR as u32)
            .map(|index| self.sectors.get(&index).cloned())
            .collect();
        Some(ContentKey { offset, sectors })
    }

    /// Offers the sector being written to the pool (the device moved on).
    fn share_open(&mut self) {
        let Some(index) = self.open.take() else {
            return;
        };
        if let Some(sector) = self.sectors.remove(&index) {
            let shared = self.pool.intern(index, sector);
            self.sectors.insert(index, shared);
        }
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

    /// Makes `index` the sector being written (offering the previous one
    /// to the pool).
    fn open_sector(&mut self, index: u32) {
        if self.open != Some(index) {
            self.share_open();
            self.open = Some(index);
        }
    }

    fn sector_mut(&mut self, index: u32) -> &mut Block {
        self.open_sector(index);
        let (base, pool) = (&self.base, &self.pool);
        let sector = self.sectors.entry(index).or_insert_with(|| {
            let at = index as usize * SECTOR;
            match <&Block>::try_from(&base[at..at + SECTOR]) {
                Ok(bytes) => pool.own_copy(bytes),
                Err(_) => Arc::new([0xFF; SECTOR]),
            }
        });
        if Arc::get_mut(sector).is_none() {
            // Somebody else holds it (another device, a content key, the
            // pool's erased sector): write a copy of one's own.
            *sector = pool.own_copy(sector);
        }
        Arc::make_mut(sector)
    }

    /// Whether sector `index` is erased, as an erase left it.
    fn is_erased(&self, index: u32) -> bool {
        self.sectors
            .get(&index)
            .is_some_and(|s| Arc::ptr_eq(s, &self.pool.erased))
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
            let index = index as u32;
            if self.open == Some(index) {
                self.open = None;
            }
            if let Some(old) = self.sectors.insert(index, self.pool.erased.clone()) {
                self.pool.give_back(old);
            }
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
            let src = &bytes[done..done + n];
            if self.is_erased(index) {
                // Programming erased bytes stores them as they are.
                if let Ok(whole) = <&Block>::try_from(src) {
                    self.open_sector(index);
                    let block = self.pool.own_copy(whole);
                    self.sectors.insert(index, block);
                } else {
                    self.sector_mut(index)[within..within + n].copy_from_slice(src);
                }
            } else {
                let sector = self.sector_mut(index);
                for (d, s) in sector[within..within + n].iter_mut().zip(src) {
                    *d &= *s;
                }
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

    fn shared_content(&mut self, offset: u32, len: u32) -> Option<(ContentKey, Arc<SectorPool>)> {
        if self.dead {
            return None;
        }
        let key = self.content_key(offset, len)?;
        Some((key, self.pool.clone()))
    }
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

/// One boot of a device: the engine's simulated bootloader of `kind`, each
/// slot judged by [`read_slot_shared`].
pub fn boot_device<F: AgentFlash>(
    flash: &mut F,
    layout: &Layout,
    kind: BootloaderKind,
) -> Result<Boot<ImageInfo>, Error> {
    boot_with(flash, layout, kind, |flash, _, region| {
        Ok(read_slot_shared(flash, region)?.bootable())
    })
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

    fn install(flash: &mut CowFlash, image: &[u8], at: u32) {
        flash.erase(at, at + 4 * SECTOR as u32).unwrap();
        for (i, chunk) in image.chunks(1024).enumerate() {
            flash.write(at + (i * 1024) as u32, chunk).unwrap();
        }
        // Something else written afterwards (the engine's progress record).
        flash.write(0, &[0; 4]).unwrap();
    }

    fn read_all(flash: &mut CowFlash) -> Vec<u8> {
        let mut all = vec![0u8; flash.capacity()];
        flash.read(0, &mut all).unwrap();
        all
    }

    #[test]
    fn devices_that_write_the_same_image_hold_it_once_and_stay_independent() {
        let base: Arc<[u8]> = vec![0xABu8; 16 * SECTOR].into();
        let pool = Arc::new(SectorPool::new());
        let image: Vec<u8> = (0..3 * SECTOR + 512).map(|i| (i * 7 % 251) as u8).collect();
        let mut a = CowFlash::with_pool(base.clone(), pool.clone());
        let mut b = CowFlash::with_pool(base.clone(), pool.clone());
        install(&mut a, &image, 4 * SECTOR as u32);
        install(&mut b, &image, 4 * SECTOR as u32);
        // The image's four sectors are shared; sector 0 is each device's own.
        assert_eq!(a.private_bytes(), SECTOR);
        assert_eq!(b.private_bytes(), SECTOR);
        let (a_bytes, b_bytes) = (read_all(&mut a), read_all(&mut b));
        assert_eq!(a_bytes, b_bytes);
        assert_eq!(&a_bytes[4 * SECTOR..4 * SECTOR + image.len()], &image[..]);
        assert!(
            a_bytes[4 * SECTOR + image.len()..8 * SECTOR]
                .iter()
                .all(|b| *b == 0xFF)
        );
        // A write to a shared sector changes that device only.
        a.write(5 * SECTOR as u32, &[0, 0, 0, 0]).unwrap();
        assert_eq!(read_all(&mut b), b_bytes);
        let changed = read_all(&mut a);
        assert_eq!(&changed[5 * SECTOR..5 * SECTOR + 4], &[0, 0, 0, 0]);
        assert_ne!(b_bytes[5 * SECTOR..5 * SECTOR + 4], [0, 0, 0, 0]);
        // An erase of a shared sector does not touch the other device either.
        b.erase(4 * SECTOR as u32, 5 * SECTOR as u32).unwrap();
        assert_eq!(&read_all(&mut a)[4 * SECTOR..5 * SECTOR], &image[..SECTOR]);
    }

    #[test]
    fn blocks_of_duplicate_sectors_are_written_again_without_aliasing() {
        let base: Arc<[u8]> = vec![0xABu8; 16 * SECTOR].into();
        let pool = Arc::new(SectorPool::new());
        let old: Vec<u8> = (0..4 * SECTOR).map(|i| (i % 241) as u8).collect();
        let new: Vec<u8> = (0..4 * SECTOR).map(|i| (i % 239) as u8).collect();
        let at = 4 * SECTOR as u32;
        let mut a = CowFlash::with_pool(base.clone(), pool.clone());
        let mut b = CowFlash::with_pool(base.clone(), pool.clone());
        install(&mut a, &old, at);
        // b's copy of each of a's sectors becomes a spare, and b's next
        // sector is written into it.
        install(&mut b, &old, at);
        assert_eq!(b.private_bytes(), SECTOR);
        // A spare is the same allocation, written again; a block anybody
        // else holds (even weakly) is never taken.
        let spare = Arc::new([1u8; SECTOR]);
        let address = Arc::as_ptr(&spare);
        pool.give_back(spare);
        let reused = pool.own_copy(&[2u8; SECTOR]);
        assert_eq!((Arc::as_ptr(&reused), reused[0]), (address, 2));
        let held = Arc::new([3u8; SECTOR]);
        pool.give_back(held.clone());
        let weak = Arc::downgrade(&reused);
        pool.give_back(reused);
        assert!(pool.spare.lock().unwrap().is_empty());
        assert_eq!(held[0], 3);
        drop(weak);
        // A third device writes other bytes; the sectors a and b share keep theirs.
        let mut c = CowFlash::with_pool(base.clone(), pool.clone());
        install(&mut c, &new, at);
        for flash in [&mut a, &mut b] {
            assert_eq!(
                &read_all(flash)[at as usize..at as usize + old.len()],
                &old[..]
            );
        }
        assert_eq!(
            &read_all(&mut c)[at as usize..at as usize + new.len()],
            &new[..]
        );
        // A partial program of an erased sector keeps the rest erased, and
        // a second program only clears bits.
        c.erase(at, at + SECTOR as u32).unwrap();
        c.write(at + 8, &[0x0F, 0xF0, 0x00, 0xFF]).unwrap();
        c.write(at + 8, &[0xFF, 0x3C, 0xFF, 0x00]).unwrap();
        let bytes = read_all(&mut c);
        assert_eq!(
            &bytes[at as usize..at as usize + 16],
            &[
                0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x30, 0x00, 0x00, 0xFF, 0xFF,
                0xFF, 0xFF
            ]
        );
    }

    #[test]
    fn content_keys_are_equal_exactly_when_the_bytes_are_shared_and_equal() {
        let base: Arc<[u8]> = vec![0xABu8; 16 * SECTOR].into();
        let pool = Arc::new(SectorPool::new());
        let image: Vec<u8> = (0..2 * SECTOR).map(|i| (i % 253) as u8).collect();
        let slot = (4 * SECTOR as u32, 4 * SECTOR as u32);
        let mut a = CowFlash::with_pool(base.clone(), pool.clone());
        let mut b = CowFlash::with_pool(base.clone(), pool.clone());
        let mut fresh = CowFlash::with_pool(base.clone(), pool.clone());
        // Untouched slots read as the base: same key.
        let untouched = fresh.content_key(slot.0, slot.1).unwrap();
        assert_eq!(a.content_key(slot.0, slot.1).unwrap(), untouched);
        install(&mut a, &image, slot.0);
        install(&mut b, &image, slot.0);
        let key_a = a.content_key(slot.0, slot.1).unwrap();
        assert_eq!(key_a, b.content_key(slot.0, slot.1).unwrap());
        assert_ne!(key_a, untouched);
        // One flipped bit: a different key, and the old key still means the old bytes.
        b.write(slot.0 + 8, &[0x00, 0xFF, 0xFF, 0xFF]).unwrap();
        let key_b = b.content_key(slot.0, slot.1).unwrap();
        assert_ne!(key_a, key_b);
        assert_eq!(key_a, a.content_key(slot.0, slot.1).unwrap());
        // A device not in the pool never shares, so never matches.
        let mut alone = CowFlash::new(base.clone());
        install(&mut alone, &image, slot.0);
        assert_ne!(alone.content_key(slot.0, slot.1).unwrap(), key_a);
        assert_eq!(alone.content_key(3, SECTOR as u32), None);
    }

    #[test]
    fn verdicts_are_found_by_content_key() {
        let base: Arc<[u8]> = vec![0xABu8; 8 * SECTOR].into();
        let pool = Arc::new(SectorPool::new());
        let mut a = CowFlash::with_pool(base.clone(), pool.clone());
        let mut b = CowFlash::with_pool(base, pool.clone());
        let key = a.content_key(0, 2 * SECTOR as u32).unwrap();
        let verdict = SlotContent::Invalid("a verdict".into());
        pool.verdicts().put(key, verdict.clone());
        let same = b.content_key(0, 2 * SECTOR as u32).unwrap();
        assert_eq!(pool.verdicts().get(&same), Some(verdict));
        b.write(0, &[0; 4]).unwrap();
        let other = b.content_key(0, 2 * SECTOR as u32).unwrap();
        assert_eq!(pool.verdicts().get(&other), None);
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
