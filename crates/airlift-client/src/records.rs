//! Power-safe records of the client's own, in two flash sectors.
//!
//! A record is a whole snapshot (its items one after the other), written
//! into the sector that does not hold the newest copy: erase, the items,
//! then, last, a 32-byte header with a sequence number, the length and
//! CRC-32 of the items and a CRC of the header itself. The header is the
//! commit point: a power cut before it, or in the middle of any write,
//! leaves a sector whose header or items do not check, which is ignored,
//! and the other sector (the previous copy) in charge. Reading takes the
//! valid copy with the higher sequence number.
//!
//! ```text
//! sector:  0..32   header: magic "ALR1", kind, 0, 0, 0, seq u32, len u32,
//!                  items CRC-32, header CRC-32 (of bytes 0..20), 0xFF...
//!          32..    items: tag u8, length u8, that many bytes; 0xFF after
//! ```
//!
//! Nothing is buffered but one 32-byte program block: the items are
//! streamed to flash as they are made, and read back one at a time.

use airlift_engine::Region;
use airlift_engine::store::Crc32;
use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};

/// Bytes of one flash sector.
pub const SECTOR: u32 = 4096;
/// Bytes of the header; items start after it.
pub const HEADER_LEN: u32 = 32;
/// Most bytes of items a record holds.
pub const MAX_BODY: u32 = SECTOR - HEADER_LEN;
/// Longest item payload.
pub const MAX_ITEM: usize = 255;
const MAGIC: [u8; 4] = *b"ALR1";
const BLOCK: usize = 32;

/// Why a record could not be written or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// A flash operation failed (a power cut shows as one).
    Flash(NorFlashErrorKind),
    /// The items do not fit one sector.
    Full,
    /// The region holds fewer than two sectors.
    TooSmall {
        /// Its size.
        size: u32,
    },
}

impl core::fmt::Display for RecordError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RecordError::Flash(kind) => write!(f, "flash operation failed: {kind:?}"),
            RecordError::Full => write!(f, "record is larger than {MAX_BODY} bytes"),
            RecordError::TooSmall { size } => write!(
                f,
                "record region is {size} bytes, expected at least two 4096-byte sectors"
            ),
        }
    }
}

impl core::error::Error for RecordError {}

fn flash_err<E: NorFlashError>(e: E) -> RecordError {
    RecordError::Flash(e.kind())
}

/// Two sectors that hold one kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPair {
    region: Region,
    kind: u8,
}

/// Where the newest valid copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    sector: u32,
    seq: u32,
    len: u32,
}

impl RecordPair {
    /// The two sectors at the start of `region`, for records of `kind`.
    pub fn new(region: Region, kind: u8) -> Result<RecordPair, RecordError> {
        if region.size < 2 * SECTOR {
            return Err(RecordError::TooSmall { size: region.size });
        }
        Ok(RecordPair { region, kind })
    }

    fn base(&self, sector: u32) -> u32 {
        self.region.offset + sector * SECTOR
    }

    /// The newest copy whose header and items check, if any.
    pub fn newest<F: NorFlash>(&self, flash: &mut F) -> Result<Option<Stored>, RecordError> {
        let mut best: Option<Stored> = None;
        for sector in 0..2 {
            let mut h = [0u8; BLOCK];
            flash.read(self.base(sector), &mut h).map_err(flash_err)?;
            let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            let header_ok = h[..4] == MAGIC
                && h[4] == self.kind
                && airlift_engine::store::crc32(&h[..20]) == word(20);
            if !header_ok || word(12) > MAX_BODY {
                continue;
            }
            let copy = Stored {
                sector,
                seq: word(8),
                len: word(12),
            };
            let mut crc = Crc32::new();
            let mut at = 0;
            let mut buf = [0u8; BLOCK];
            while at < copy.len {
                let n = (copy.len - at).min(BLOCK as u32) as usize;
                flash
                    .read(self.base(sector) + HEADER_LEN + at, &mut buf)
                    .map_err(flash_err)?;
                crc.update(&buf[..n]);
                at += n as u32;
            }
            if crc.value() == word(16) && best.is_none_or(|b| copy.seq > b.seq) {
                best = Some(copy);
            }
        }
        Ok(best)
    }

    /// The item of `copy` at `*at` (start at 0): its tag and payload,
    /// copied into `buf`; moves `*at` past it. `None` after the last.
    pub fn next_item<'b, F: NorFlash>(
        &self,
        flash: &mut F,
        copy: Stored,
        at: &mut u32,
        buf: &'b mut [u8; 2 + MAX_ITEM],
    ) -> Result<Option<(u8, &'b [u8])>, RecordError> {
        if *at + 2 > copy.len {
            return Ok(None);
        }
        self.read_body(flash, copy, *at, &mut buf[..2])?;
        let (tag, len) = (buf[0], usize::from(buf[1]));
        let end = *at + 2 + len as u32;
        if end > copy.len {
            return Ok(None);
        }
        self.read_body(flash, copy, *at + 2, &mut buf[2..2 + len])?;
        *at = end;
        Ok(Some((tag, &buf[2..2 + len])))
    }

    /// Reads body bytes `[at, at + out.len())` of `copy` in aligned words.
    fn read_body<F: NorFlash>(
        &self,
        flash: &mut F,
        copy: Stored,
        at: u32,
        out: &mut [u8],
    ) -> Result<(), RecordError> {
        let mut word = [0u8; 4];
        let mut done = 0usize;
        while done < out.len() {
            let pos = at + done as u32;
            let aligned = pos & !3;
            flash
                .read(self.base(copy.sector) + HEADER_LEN + aligned, &mut word)
                .map_err(flash_err)?;
            let skip = (pos - aligned) as usize;
            let n = (4 - skip).min(out.len() - done);
            out[done..done + n].copy_from_slice(&word[skip..skip + n]);
            done += n;
        }
        Ok(())
    }

    /// Starts the next copy after `newest`: erases the other sector.
    pub fn begin<F: NorFlash>(
        &self,
        flash: &mut F,
        newest: Option<Stored>,
    ) -> Result<RecordWriter, RecordError> {
        let (sector, seq) = match newest {
            Some(c) => (1 - c.sector, c.seq.wrapping_add(1)),
            None => (0, 1),
        };
        let base = self.base(sector);
        flash.erase(base, base + SECTOR).map_err(flash_err)?;
        Ok(RecordWriter {
            base,
            kind: self.kind,
            seq,
            len: 0,
            crc: Crc32::new(),
            block: [0xFF; BLOCK],
            fill: 0,
        })
    }
}

/// A copy being written; [`RecordWriter::commit`] makes it the newest.
#[derive(Debug)]
pub struct RecordWriter {
    base: u32,
    kind: u8,
    seq: u32,
    len: u32,
    crc: Crc32,
    block: [u8; BLOCK],
    fill: usize,
}

impl RecordWriter {
    /// Appends an item (payloads longer than [`MAX_ITEM`] are cut).
    pub fn item<F: NorFlash>(
        &mut self,
        flash: &mut F,
        tag: u8,
        payload: &[u8],
    ) -> Result<(), RecordError> {
        let payload = &payload[..payload.len().min(MAX_ITEM)];
        if self.len + 2 + payload.len() as u32 > MAX_BODY {
            return Err(RecordError::Full);
        }
        self.put(flash, &[tag, payload.len() as u8])?;
        self.put(flash, payload)
    }

    fn put<F: NorFlash>(&mut self, flash: &mut F, mut bytes: &[u8]) -> Result<(), RecordError> {
        self.crc.update(bytes);
        while !bytes.is_empty() {
            let n = (BLOCK - self.fill).min(bytes.len());
            self.block[self.fill..self.fill + n].copy_from_slice(&bytes[..n]);
            self.fill += n;
            self.len += n as u32;
            bytes = &bytes[n..];
            if self.fill == BLOCK {
                self.flush(flash)?;
            }
        }
        Ok(())
    }

    fn flush<F: NorFlash>(&mut self, flash: &mut F) -> Result<(), RecordError> {
        if self.fill == 0 {
            return Ok(());
        }
        let start = self.len - self.fill as u32;
        flash
            .write(self.base + HEADER_LEN + start, &self.block)
            .map_err(flash_err)?;
        self.block = [0xFF; BLOCK];
        self.fill = 0;
        Ok(())
    }

    /// Writes what is left of the items, then the header: the commit point.
    pub fn commit<F: NorFlash>(mut self, flash: &mut F) -> Result<(), RecordError> {
        self.flush(flash)?;
        let mut h = [0xFFu8; BLOCK];
        h[..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&[self.kind, 0, 0, 0]);
        h[8..12].copy_from_slice(&self.seq.to_le_bytes());
        h[12..16].copy_from_slice(&self.len.to_le_bytes());
        h[16..20].copy_from_slice(&self.crc.value().to_le_bytes());
        let header_crc = airlift_engine::store::crc32(&h[..20]);
        h[20..24].copy_from_slice(&header_crc.to_le_bytes());
        flash.write(self.base, &h).map_err(flash_err)
    }
}
