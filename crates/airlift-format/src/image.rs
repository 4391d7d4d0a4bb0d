//! ESP-IDF application image: header, segments, checksum, appended SHA-256, app descriptor.
//!
//! The layout, as esptool's `elf2image` writes it and ESP-IDF's bootloader
//! (`esp_image_format.c`) checks it; all integers little endian:
//!
//! ```text
//! offset  length  content
//! 0       8       common header: magic 0xE9, segment count, flash mode,
//!                 flash size (high nibble) | flash frequency (low nibble), entry address
//! 8       16      extended header: WP pin, SPI pin drive (3 bytes), chip id (u16),
//!                 min chip revision (u8, legacy), min chip revision full (u16),
//!                 max chip revision full (u16), 4 reserved bytes, hash appended (0 or 1)
//! 24      ...     per segment: load address (u32), data length (u32), data
//! ...     1..16   zero padding; the checksum (0xEF xor every segment data byte) is the
//!                 last byte, so that the image length is a multiple of 16
//! ...     32      SHA-256 over every byte before it, when "hash appended" is 1
//! ...     ...     trailing bytes (for example flash padding): allowed, not part of the image
//! ```
//!
//! The first segment of an application image starts with `esp_app_desc_t`
//! ([`AppDescriptor`], magic 0xABCD5432), which ESP-IDF reads at file offset
//! 0x20; a second-stage bootloader image (ESP-IDF 5.2 and later) starts with
//! `esp_bootloader_desc_t` ([`BootloaderDescriptor`], magic byte 0x50) there.
//!
//! [`ImageVerifier`] checks an image as a stream of chunks of any size, with a
//! fixed, small state (no buffer the size of the image, no allocation): it is
//! what the device engine feeds while it writes a download to flash. It hashes
//! every byte exactly once with one SHA-256: the appended digest is checked
//! by finalizing a copy of the hasher at the digest's position, and the
//! original goes on to give the SHA-256 of the whole stream
//! ([`ImageInfo::file_sha256`]) that a signed manifest names.
//!
//! Structural problems (bad magic, too many segments, truncation, ...) are
//! [`ImageError`]s. A wrong checksum or digest is not an error: it is reported
//! in [`ImageInfo`] so that a tool can still print the image.

use core::fmt;

use sha2::{Digest, Sha256};

use crate::partition::Hex;

#[cfg(feature = "std")]
mod builder;

#[cfg(feature = "std")]
pub use builder::ImageBuilder;

/// First byte of every ESP image.
pub const IMAGE_MAGIC: u8 = 0xE9;
/// Length of the common plus extended image header.
pub const HEADER_LEN: usize = 24;
/// Length of a segment header (load address, data length).
pub const SEGMENT_HEADER_LEN: usize = 8;
/// Most segments an image may have (ESP-IDF's `ESP_IMAGE_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 16;
/// Segment data lengths must be below this (16 MiB), as in ESP-IDF and esptool.
pub const SEGMENT_LEN_LIMIT: u32 = 16 * 1024 * 1024;
/// Initial value of the xor checksum over segment data.
pub const CHECKSUM_SEED: u8 = 0xEF;
/// Length of the appended SHA-256 digest.
pub const DIGEST_LEN: usize = 32;
/// `esp_app_desc_t` magic word.
pub const APP_DESC_MAGIC: u32 = 0xABCD_5432;
/// Length of `esp_app_desc_t`.
pub const APP_DESC_LEN: usize = 256;
/// File offset of `esp_app_desc_t` in an application image (start of segment 0's data).
pub const APP_DESC_OFFSET: usize = HEADER_LEN + SEGMENT_HEADER_LEN;
/// `esp_bootloader_desc_t` magic byte.
pub const BOOTLOADER_DESC_MAGIC: u8 = 0x50;
/// Length of `esp_bootloader_desc_t`.
pub const BOOTLOADER_DESC_LEN: usize = 80;
/// Value of the WP pin field that tells the ROM loader to ignore it.
pub const WP_PIN_DISABLED: u8 = 0xEE;

/// Bytes of `esp_app_desc_t` that [`AppDescriptor`] keeps: everything up to
/// the reserved tail.
const APP_DESC_KEPT: usize = 184;

/// An ESP chip, identified by the image header's chip id (esptool's `IMAGE_CHIP_ID`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Chip {
    /// ESP32 (id 0).
    Esp32,
    /// ESP32-S2 (id 2).
    Esp32s2,
    /// ESP32-C3 (id 5).
    Esp32c3,
    /// ESP32-S3 (id 9).
    Esp32s3,
    /// ESP32-C2 (id 12).
    Esp32c2,
    /// ESP32-C6 (id 13).
    Esp32c6,
    /// ESP32-H2 (id 16).
    Esp32h2,
    /// ESP32-P4 (id 18).
    Esp32p4,
    /// ESP32-C61 (id 20).
    Esp32c61,
    /// ESP32-C5 (id 23).
    Esp32c5,
    /// ESP32-H21 (id 25).
    Esp32h21,
    /// ESP32-H4 (id 28).
    Esp32h4,
    /// ESP32-E22 (id 31).
    Esp32e22,
    /// ESP32-S31 (id 32).
    Esp32s31,
    /// A chip id this version does not know; kept as is.
    Unknown(u16),
}

/// Every known chip with its id and name, in id order.
const CHIPS: [(Chip, u16, &str); 14] = [
    (Chip::Esp32, 0, "esp32"),
    (Chip::Esp32s2, 2, "esp32s2"),
    (Chip::Esp32c3, 5, "esp32c3"),
    (Chip::Esp32s3, 9, "esp32s3"),
    (Chip::Esp32c2, 12, "esp32c2"),
    (Chip::Esp32c6, 13, "esp32c6"),
    (Chip::Esp32h2, 16, "esp32h2"),
    (Chip::Esp32p4, 18, "esp32p4"),
    (Chip::Esp32c61, 20, "esp32c61"),
    (Chip::Esp32c5, 23, "esp32c5"),
    (Chip::Esp32h21, 25, "esp32h21"),
    (Chip::Esp32h4, 28, "esp32h4"),
    (Chip::Esp32e22, 31, "esp32e22"),
    (Chip::Esp32s31, 32, "esp32s31"),
];

impl Chip {
    /// Every chip this version knows.
    pub const KNOWN: [Chip; 14] = [
        Chip::Esp32,
        Chip::Esp32s2,
        Chip::Esp32c3,
        Chip::Esp32s3,
        Chip::Esp32c2,
        Chip::Esp32c6,
        Chip::Esp32h2,
        Chip::Esp32p4,
        Chip::Esp32c61,
        Chip::Esp32c5,
        Chip::Esp32h21,
        Chip::Esp32h4,
        Chip::Esp32e22,
        Chip::Esp32s31,
    ];

    /// The chip with this image chip id; unknown ids give [`Chip::Unknown`].
    pub fn from_id(id: u16) -> Chip {
        CHIPS
            .iter()
            .find(|(_, known, _)| *known == id)
            .map_or(Chip::Unknown(id), |(chip, _, _)| *chip)
    }

    /// The chip with this name ("esp32c3"; case, `-` and `_` are ignored).
    pub fn from_name(name: &str) -> Option<Chip> {
        CHIPS
            .iter()
            .find(|(_, _, known)| name_matches(known, name))
            .map(|(chip, _, _)| *chip)
    }

    /// The image chip id.
    pub fn id(self) -> u16 {
        match self {
            Chip::Unknown(id) => id,
            known => CHIPS
                .iter()
                .find(|(chip, _, _)| *chip == known)
                .map_or(u16::MAX, |(_, id, _)| *id),
        }
    }

    /// The chip's name as esptool's `--chip` takes it ("esp32c3"), or "unknown".
    pub fn name(self) -> &'static str {
        CHIPS
            .iter()
            .find(|(chip, _, _)| *chip == self)
            .map_or("unknown", |(_, _, name)| name)
    }

    /// Whether this is a chip this version knows.
    pub fn is_known(self) -> bool {
        !matches!(self, Chip::Unknown(_))
    }

    /// Where the ROM loads the second-stage bootloader from, as esptool
    /// writes it: 0x1000 on the ESP32 and ESP32-S2, 0x2000 on the ESP32-C5
    /// and ESP32-P4, 0x0 on the others listed; `None` for a chip whose
    /// offset this version does not state.
    pub fn bootloader_offset(self) -> Option<u32> {
        match self {
            Chip::Esp32 | Chip::Esp32s2 => Some(0x1000),
            Chip::Esp32c5 | Chip::Esp32p4 => Some(0x2000),
            Chip::Esp32s3
            | Chip::Esp32c2
            | Chip::Esp32c3
            | Chip::Esp32c6
            | Chip::Esp32c61
            | Chip::Esp32h2 => Some(0),
            _ => None,
        }
    }
}

impl fmt::Display for Chip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chip::Unknown(id) => write!(f, "unknown chip id {id}"),
            known => f.write_str(known.name()),
        }
    }
}

/// `known` is lowercase without separators; `given` may be "ESP32-C3".
fn name_matches(known: &str, given: &str) -> bool {
    let mut given = given
        .bytes()
        .filter(|b| *b != b'-' && *b != b'_')
        .map(|b| b.to_ascii_lowercase());
    known.bytes().all(|k| given.next() == Some(k)) && given.next().is_none()
}

/// SPI flash mode of the image header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashMode {
    /// Quad I/O (0).
    Qio,
    /// Quad output (1).
    Qout,
    /// Dual I/O (2).
    Dio,
    /// Dual output (3).
    Dout,
    /// Any other value.
    Unknown(u8),
}

impl FlashMode {
    /// The mode with this header value.
    pub fn from_byte(value: u8) -> FlashMode {
        match value {
            0 => FlashMode::Qio,
            1 => FlashMode::Qout,
            2 => FlashMode::Dio,
            3 => FlashMode::Dout,
            other => FlashMode::Unknown(other),
        }
    }

    /// The header value.
    pub fn to_byte(self) -> u8 {
        match self {
            FlashMode::Qio => 0,
            FlashMode::Qout => 1,
            FlashMode::Dio => 2,
            FlashMode::Dout => 3,
            FlashMode::Unknown(other) => other,
        }
    }

    /// esptool's name ("dio"), or "unknown".
    pub fn name(self) -> &'static str {
        match self {
            FlashMode::Qio => "qio",
            FlashMode::Qout => "qout",
            FlashMode::Dio => "dio",
            FlashMode::Dout => "dout",
            FlashMode::Unknown(_) => "unknown",
        }
    }
}

/// The 24-byte image header (common and extended parts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Number of segments (at most [`MAX_SEGMENTS`] in a valid image).
    pub segment_count: u8,
    /// SPI flash mode byte; see [`ImageHeader::flash_mode`].
    pub flash_mode: u8,
    /// Flash size (high nibble) and frequency (low nibble) byte.
    pub flash_size_freq: u8,
    /// Entry point address.
    pub entry_addr: u32,
    /// Flash WP pin ([`WP_PIN_DISABLED`] in images made by esptool).
    pub wp_pin: u8,
    /// SPI pin drive strengths, two nibbles per byte (clk/q, d/cs, hd/wp).
    pub spi_pin_drv: [u8; 3],
    /// Chip id; see [`ImageHeader::chip`].
    pub chip_id: u16,
    /// Minimum chip revision, legacy single-byte form.
    pub min_chip_rev: u8,
    /// Minimum chip revision, `major * 100 + minor`.
    pub min_chip_rev_full: u16,
    /// Maximum chip revision, `major * 100 + minor`.
    pub max_chip_rev_full: u16,
    /// Reserved bytes 20..24 of the header.
    pub reserved: [u8; 4],
    /// Whether a SHA-256 digest follows the checksum.
    pub hash_appended: bool,
}

impl ImageHeader {
    /// Parses the header. Checks the magic, the segment count and the hash
    /// appended flag (0 or 1, as esptool requires).
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<ImageHeader, ImageError> {
        if bytes[0] != IMAGE_MAGIC {
            return Err(ImageError::BadMagic(bytes[0]));
        }
        let segment_count = bytes[1];
        if usize::from(segment_count) > MAX_SEGMENTS {
            return Err(ImageError::TooManySegments(segment_count));
        }
        let hash_appended = match bytes[23] {
            0 => false,
            1 => true,
            other => return Err(ImageError::BadHashAppendedFlag(other)),
        };
        Ok(ImageHeader {
            segment_count,
            flash_mode: bytes[2],
            flash_size_freq: bytes[3],
            entry_addr: le_u32(&bytes[4..8]),
            wp_pin: bytes[8],
            spi_pin_drv: [bytes[9], bytes[10], bytes[11]],
            chip_id: le_u16(&bytes[12..14]),
            min_chip_rev: bytes[14],
            min_chip_rev_full: le_u16(&bytes[15..17]),
            max_chip_rev_full: le_u16(&bytes[17..19]),
            reserved: [bytes[19], bytes[20], bytes[21], bytes[22]],
            hash_appended,
        })
    }

    /// The header's 24 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = IMAGE_MAGIC;
        out[1] = self.segment_count;
        out[2] = self.flash_mode;
        out[3] = self.flash_size_freq;
        out[4..8].copy_from_slice(&self.entry_addr.to_le_bytes());
        out[8] = self.wp_pin;
        out[9..12].copy_from_slice(&self.spi_pin_drv);
        out[12..14].copy_from_slice(&self.chip_id.to_le_bytes());
        out[14] = self.min_chip_rev;
        out[15..17].copy_from_slice(&self.min_chip_rev_full.to_le_bytes());
        out[17..19].copy_from_slice(&self.max_chip_rev_full.to_le_bytes());
        out[19..23].copy_from_slice(&self.reserved);
        out[23] = u8::from(self.hash_appended);
        out
    }

    /// The chip the image is built for.
    pub fn chip(&self) -> Chip {
        Chip::from_id(self.chip_id)
    }

    /// The SPI flash mode.
    pub fn flash_mode(&self) -> FlashMode {
        FlashMode::from_byte(self.flash_mode)
    }

    /// The flash size in bytes (1 MiB to 128 MiB), or `None` for a value
    /// esptool does not know.
    pub fn flash_size(&self) -> Option<u32> {
        match self.flash_size_freq >> 4 {
            n @ 0..=7 => Some((1024 * 1024) << n),
            _ => None,
        }
    }

    /// The flash frequency in MHz as esptool names it for this chip, or
    /// `None` for a value esptool does not know.
    pub fn flash_freq_mhz(&self) -> Option<u32> {
        let bits = self.flash_size_freq & 0x0F;
        let table: &[(u8, u32)] = match self.chip() {
            Chip::Esp32c2 => &[(0xF, 60), (0x0, 30), (0x1, 20), (0x2, 15)],
            Chip::Esp32c6 => &[(0x0, 80), (0x2, 20)],
            Chip::Esp32h2 => &[(0xF, 48), (0x0, 24), (0x1, 16), (0x2, 12)],
            Chip::Esp32h21 | Chip::Esp32h4 => &[(0xF, 48), (0x0, 24)],
            _ => &[(0xF, 80), (0x0, 40), (0x1, 26), (0x2, 20)],
        };
        table.iter().find(|(b, _)| *b == bits).map(|(_, mhz)| *mhz)
    }
}

/// One segment of an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Address the bootloader loads or maps the data at.
    pub load_addr: u32,
    /// Data length in bytes (without the 8-byte segment header).
    pub length: u32,
    /// File offset of the segment header, as esptool's `image-info` prints it.
    pub file_offset: u32,
}

impl Segment {
    /// File offset of the segment's data.
    pub fn data_offset(&self) -> u32 {
        self.file_offset + SEGMENT_HEADER_LEN as u32
    }
}

/// The stored and the computed appended SHA-256 digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendedDigest {
    /// The 32 bytes after the checksum.
    pub stored: [u8; DIGEST_LEN],
    /// SHA-256 over every byte of the image before the digest.
    pub computed: [u8; DIGEST_LEN],
}

impl AppendedDigest {
    /// Whether the stored digest is the computed one.
    pub fn is_valid(&self) -> bool {
        self.stored == self.computed
    }
}

/// ESP-IDF's `esp_app_desc_t`, the application descriptor at the start of
/// segment 0's data.
///
/// Keeps the first 184 bytes (everything but the reserved tail); the string
/// accessors return the text up to the first NUL byte (or the first byte that
/// is not UTF-8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppDescriptor {
    raw: [u8; APP_DESC_KEPT],
}

impl AppDescriptor {
    /// Parses a descriptor from the first [`APP_DESC_LEN`] bytes of `bytes`;
    /// `None` when `bytes` is shorter or does not start with [`APP_DESC_MAGIC`].
    pub fn parse(bytes: &[u8]) -> Option<AppDescriptor> {
        if bytes.len() < APP_DESC_LEN || le_u32(&bytes[0..4]) != APP_DESC_MAGIC {
            return None;
        }
        let mut raw = [0u8; APP_DESC_KEPT];
        raw.copy_from_slice(&bytes[..APP_DESC_KEPT]);
        Some(AppDescriptor { raw })
    }

    /// Security version for anti-rollback (`secure_version`).
    pub fn secure_version(&self) -> u32 {
        le_u32(&self.raw[4..8])
    }

    /// Application version (`version`, 32 bytes).
    pub fn version(&self) -> &str {
        c_str(&self.raw[16..48])
    }

    /// Project name (`project_name`, 32 bytes).
    pub fn project_name(&self) -> &str {
        c_str(&self.raw[48..80])
    }

    /// Compile time (`time`, 16 bytes), e.g. "12:34:56".
    pub fn time(&self) -> &str {
        c_str(&self.raw[80..96])
    }

    /// Compile date (`date`, 16 bytes), e.g. "Nov 24 2026".
    pub fn date(&self) -> &str {
        c_str(&self.raw[96..112])
    }

    /// ESP-IDF version (`idf_ver`, 32 bytes).
    pub fn idf_ver(&self) -> &str {
        c_str(&self.raw[112..144])
    }

    /// SHA-256 of the ELF file the image was made from (`app_elf_sha256`).
    pub fn app_elf_sha256(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.raw[144..176]);
        out
    }

    /// Minimum eFuse block revision, `major * 100 + minor`.
    pub fn min_efuse_blk_rev_full(&self) -> u16 {
        le_u16(&self.raw[176..178])
    }

    /// Maximum eFuse block revision, `major * 100 + minor`.
    pub fn max_efuse_blk_rev_full(&self) -> u16 {
        le_u16(&self.raw[178..180])
    }

    /// MMU page size as a power of two (0 when not set).
    pub fn mmu_page_size_log2(&self) -> u8 {
        self.raw[180]
    }

    /// The raw bytes kept (the first 184 bytes of `esp_app_desc_t`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }
}

/// ESP-IDF's `esp_bootloader_desc_t`, at the start of segment 0's data in a
/// second-stage bootloader image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootloaderDescriptor {
    raw: [u8; 64],
}

impl BootloaderDescriptor {
    /// Parses a descriptor from the first [`BOOTLOADER_DESC_LEN`] bytes of
    /// `bytes`; `None` when `bytes` is shorter or does not start with
    /// [`BOOTLOADER_DESC_MAGIC`].
    pub fn parse(bytes: &[u8]) -> Option<BootloaderDescriptor> {
        if bytes.len() < BOOTLOADER_DESC_LEN || bytes[0] != BOOTLOADER_DESC_MAGIC {
            return None;
        }
        let mut raw = [0u8; 64];
        raw.copy_from_slice(&bytes[..64]);
        Some(BootloaderDescriptor { raw })
    }

    /// Bootloader version (`CONFIG_BOOTLOADER_PROJECT_VER`).
    pub fn version(&self) -> u32 {
        le_u32(&self.raw[4..8])
    }

    /// ESP-IDF version (`idf_ver`, 32 bytes).
    pub fn idf_ver(&self) -> &str {
        c_str(&self.raw[8..40])
    }

    /// Compile date and time (`date_time`, 24 bytes; empty when the build
    /// leaves it out for reproducibility).
    pub fn date_time(&self) -> &str {
        c_str(&self.raw[40..64])
    }
}

/// The text of a fixed-size C string field.
fn c_str(field: &[u8]) -> &str {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let text = &field[..end];
    match core::str::from_utf8(text) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&text[..e.valid_up_to()]).unwrap_or_default(),
    }
}

fn le_u16(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[0], bytes[1]])
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Everything learnt from a structurally valid image.
///
/// `Copy` and fixed-size: no allocation. Verification results are here, not
/// in [`ImageError`]: see [`ImageInfo::checksum_valid`],
/// [`ImageInfo::digest_valid`] and [`ImageInfo::is_valid`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The image header.
    pub header: ImageHeader,
    segments: [Segment; MAX_SEGMENTS],
    /// The checksum byte stored in the image.
    pub stored_checksum: u8,
    /// 0xEF xor every segment data byte.
    pub computed_checksum: u8,
    /// The appended digest, when the header says one is appended.
    pub digest: Option<AppendedDigest>,
    /// The application descriptor, when segment 0 starts with one.
    pub app_desc: Option<AppDescriptor>,
    /// The bootloader descriptor, when segment 0 of an image without an
    /// application descriptor starts with one.
    pub bootloader_desc: Option<BootloaderDescriptor>,
    /// Length of the image: up to and including the checksum block and the
    /// appended digest.
    pub image_len: u32,
    /// Every byte fed, trailing bytes included.
    pub total_len: u64,
    /// SHA-256 over every byte fed (`total_len` bytes).
    pub file_sha256: [u8; 32],
}

impl ImageInfo {
    /// The segments, in file order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..usize::from(self.header.segment_count)]
    }

    /// The chip the image is built for.
    pub fn chip(&self) -> Chip {
        self.header.chip()
    }

    /// Whether the stored checksum is the computed one.
    pub fn checksum_valid(&self) -> bool {
        self.stored_checksum == self.computed_checksum
    }

    /// Whether the appended digest matches; `true` when no digest is
    /// appended (nothing to check, as in ESP-IDF without secure boot).
    pub fn digest_valid(&self) -> bool {
        self.digest.is_none_or(|d| d.is_valid())
    }

    /// Whether checksum and digest are both valid.
    pub fn is_valid(&self) -> bool {
        self.checksum_valid() && self.digest_valid()
    }

    /// Why this image cannot be a release a device runs, if it cannot: the
    /// one verdict the server applies to an upload and the CLI to a file
    /// before uploading it.
    pub fn release_problem(&self) -> Option<ReleaseProblem> {
        if !self.checksum_valid() {
            return Some(ReleaseProblem::Checksum {
                stored: self.stored_checksum,
                computed: self.computed_checksum,
            });
        }
        if let Some(digest) = self.digest.filter(|d| !d.is_valid()) {
            return Some(ReleaseProblem::Digest(digest));
        }
        if self.app_desc.is_none() {
            return Some(ReleaseProblem::NoAppDescriptor);
        }
        None
    }
}

/// Why a well-formed ESP image cannot be a release ([`ImageInfo::release_problem`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseProblem {
    /// The stored checksum is not the segments' (a corrupt file).
    Checksum {
        /// The checksum byte stored in the image.
        stored: u8,
        /// What the segments sum to.
        computed: u8,
    },
    /// The appended SHA-256 is not the image's (a corrupt file).
    Digest(AppendedDigest),
    /// No `esp_app_desc_t`: a bootloader or another program, not an app.
    NoAppDescriptor,
}

impl fmt::Display for ReleaseProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseProblem::Checksum { stored, computed } => write!(
                f,
                "image checksum is {stored:#04x} but the segments sum to {computed:#04x}: the file is corrupt"
            ),
            ReleaseProblem::Digest(d) => write!(
                f,
                "appended SHA-256 is {} but the image hashes to {}: the file is corrupt",
                Hex(&d.stored),
                Hex(&d.computed)
            ),
            ReleaseProblem::NoAppDescriptor => f.write_str(
                "image has no application descriptor (esp_app_desc_t): expected an ESP-IDF app image",
            ),
        }
    }
}

/// The part of an image in which the input ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePart {
    /// The 24-byte header.
    Header,
    /// The header of segment N (counted from 0).
    SegmentHeader(u8),
    /// The data of segment N (counted from 0).
    SegmentData(u8),
    /// The padding block that ends with the checksum byte.
    ChecksumPadding,
    /// The appended SHA-256 digest.
    Digest,
}

impl fmt::Display for ImagePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImagePart::Header => f.write_str("the image header"),
            ImagePart::SegmentHeader(n) => write!(f, "the header of segment {n}"),
            ImagePart::SegmentData(n) => write!(f, "the data of segment {n}"),
            ImagePart::ChecksumPadding => f.write_str("the checksum padding"),
            ImagePart::Digest => f.write_str("the appended SHA-256 digest"),
        }
    }
}

/// Why bytes are not a structurally valid ESP image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// No bytes at all.
    Empty,
    /// The first byte is not [`IMAGE_MAGIC`].
    BadMagic(u8),
    /// The header declares more than [`MAX_SEGMENTS`] segments.
    TooManySegments(u8),
    /// The header's hash-appended byte is neither 0 nor 1.
    BadHashAppendedFlag(u8),
    /// A segment's length is [`SEGMENT_LEN_LIMIT`] or more (ESP-IDF's
    /// bootloader rejects it; esptool refuses to write it).
    SegmentTooLong {
        /// Segment number, from 0.
        index: u8,
        /// The declared length.
        length: u32,
    },
    /// A segment's length is not a multiple of 4. ESP-IDF's bootloader
    /// rejects such an image and esptool refuses to write one ("it has to be
    /// multiple of 4"); only esptool's lenient `image-info` reads it.
    UnalignedSegmentLength {
        /// Segment number, from 0.
        index: u8,
        /// The declared length.
        length: u32,
    },
    /// The input ends before the image does.
    Truncated {
        /// Where the input ended.
        part: ImagePart,
        /// Bytes in the input.
        len: u64,
        /// Bytes the image needs at least to complete `part`.
        needed: u64,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Empty => write!(
                f,
                "not an ESP image: the input is empty, expected a first byte of {IMAGE_MAGIC:#04x}"
            ),
            ImageError::BadMagic(byte) => write!(
                f,
                "not an ESP image: first byte is {byte:#04x}, expected {IMAGE_MAGIC:#04x}"
            ),
            ImageError::TooManySegments(count) => write!(
                f,
                "image header declares {count} segments, at most {MAX_SEGMENTS} are allowed"
            ),
            ImageError::BadHashAppendedFlag(byte) => write!(
                f,
                "image header's hash-appended flag is {byte:#04x}, expected 0 or 1"
            ),
            ImageError::SegmentTooLong { index, length } => write!(
                f,
                "segment {index} is {length} bytes long, segments must be shorter than {SEGMENT_LEN_LIMIT} bytes"
            ),
            ImageError::UnalignedSegmentLength { index, length } => write!(
                f,
                "segment {index} is {length} bytes long, expected a multiple of 4"
            ),
            ImageError::Truncated { part, len, needed } => write!(
                f,
                "truncated image: input ends at byte {len} in {part}, which needs {needed} bytes"
            ),
        }
    }
}

impl core::error::Error for ImageError {}

/// Where the verifier is in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Header,
    SegmentHeader,
    SegmentData,
    ChecksumPadding,
    Digest,
    Trailing,
}

/// Streaming ESP image verifier.
///
/// Feed the image in chunks of any size with [`update`](Self::update), then
/// call [`finish`](Self::finish). The state is fixed-size and small: 640
/// bytes on x86_64 and on riscv32 (ESP32-C3), the SHA-256 state (104 bytes)
/// included; a build-time assertion keeps it at most 768 bytes. Nothing is
/// buffered but the current header and the first 184 bytes of segment 0
/// (where the app or bootloader descriptor is).
///
/// After the first error every further `update` and `finish` return the
/// same error.
#[derive(Clone, Debug)]
pub struct ImageVerifier {
    hasher: Sha256,
    stage: Stage,
    error: Option<ImageError>,
    /// Bytes consumed so far.
    pos: u64,
    /// Image header or current segment header being collected.
    scratch: [u8; HEADER_LEN],
    scratch_len: u8,
    header: Option<ImageHeader>,
    segments: [Segment; MAX_SEGMENTS],
    /// Segment being read (or the number read, after the last).
    segment_index: u8,
    segment_remaining: u32,
    checksum: u8,
    stored_checksum: u8,
    /// Padding bytes left, the checksum byte included.
    padding_remaining: u8,
    stored_digest: [u8; DIGEST_LEN],
    digest_len: u8,
    computed_digest: [u8; DIGEST_LEN],
    /// Set when the bytes just consumed end the digested part of the image.
    digest_due: bool,
    image_len: u32,
    /// The first bytes of segment 0: the app or bootloader descriptor.
    desc: [u8; APP_DESC_KEPT],
}

// The device engine's whole RAM budget is 8 KiB: keep the verifier small on
// every target, the ESP32's riscv32/xtensa included (checked at build time).
const _: () = assert!(core::mem::size_of::<ImageVerifier>() <= 768);

impl Default for ImageVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageVerifier {
    /// A verifier at the start of an image.
    pub fn new() -> ImageVerifier {
        ImageVerifier {
            hasher: Sha256::new(),
            stage: Stage::Header,
            error: None,
            pos: 0,
            scratch: [0; HEADER_LEN],
            scratch_len: 0,
            header: None,
            segments: [Segment::default(); MAX_SEGMENTS],
            segment_index: 0,
            segment_remaining: 0,
            checksum: CHECKSUM_SEED,
            stored_checksum: 0,
            padding_remaining: 0,
            stored_digest: [0; DIGEST_LEN],
            digest_len: 0,
            computed_digest: [0; DIGEST_LEN],
            digest_due: false,
            image_len: 0,
            desc: [0; APP_DESC_KEPT],
        }
    }

    /// The header, once its 24 bytes have been fed: lets a caller check the
    /// chip before the rest of the image arrives.
    pub fn header(&self) -> Option<&ImageHeader> {
        self.header.as_ref()
    }

    /// Bytes fed so far.
    pub fn bytes_fed(&self) -> u64 {
        self.pos
    }

    /// The SHA-256 of every byte fed so far (the running hash is left as it
    /// is). A device stores it with an install checkpoint, so that a resumed
    /// install can tell whether the slot still holds the bytes it vouched for.
    pub fn sha256_so_far(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    /// Whether the whole image, appended digest included, has been fed:
    /// further bytes are trailing bytes.
    pub fn is_complete(&self) -> bool {
        self.error.is_none() && self.stage == Stage::Trailing
    }

    /// Bytes left in the part of the image being read (header, a segment
    /// header or data, checksum padding, digest); 0 once the image is
    /// complete or after an error.
    ///
    /// Reading an image out of a flash slot of unknown length, feed at most
    /// this many bytes at a time until it is 0: the reads stop exactly at
    /// the image's end, so [`ImageInfo::file_sha256`] is the SHA-256 of the
    /// image alone, without the erased flash after it.
    pub fn bytes_wanted(&self) -> usize {
        if self.error.is_some() {
            return 0;
        }
        match self.stage {
            Stage::Header => HEADER_LEN - usize::from(self.scratch_len),
            Stage::SegmentHeader => SEGMENT_HEADER_LEN - usize::from(self.scratch_len),
            Stage::SegmentData => self.segment_remaining as usize,
            Stage::ChecksumPadding => usize::from(self.padding_remaining),
            Stage::Digest => DIGEST_LEN - usize::from(self.digest_len),
            Stage::Trailing => 0,
        }
    }

    /// Feeds the next chunk (any length, including 0).
    pub fn update(&mut self, mut chunk: &[u8]) -> Result<(), ImageError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        while !chunk.is_empty() {
            let used = match self.step(chunk) {
                Ok(used) => used,
                Err(err) => {
                    self.error = Some(err);
                    return Err(err);
                }
            };
            let (done, rest) = chunk.split_at(used);
            self.hasher.update(done);
            self.pos += used as u64;
            if self.digest_due {
                // The image body ends here: the appended digest covers exactly
                // these bytes. Finalize a copy; the original goes on hashing.
                self.digest_due = false;
                self.computed_digest = self.hasher.clone().finalize().into();
            }
            chunk = rest;
        }
        Ok(())
    }

    /// Consumes a prefix of `chunk` (at least one byte) in the current stage.
    fn step(&mut self, chunk: &[u8]) -> Result<usize, ImageError> {
        match self.stage {
            Stage::Header => {
                let used = self.collect(chunk, HEADER_LEN);
                if self.scratch[0] != IMAGE_MAGIC {
                    return Err(ImageError::BadMagic(self.scratch[0]));
                }
                if usize::from(self.scratch_len) == HEADER_LEN {
                    let mut bytes = [0u8; HEADER_LEN];
                    bytes.copy_from_slice(&self.scratch);
                    let header = ImageHeader::parse(&bytes)?;
                    self.header = Some(header);
                    self.scratch_len = 0;
                    self.next_segment(HEADER_LEN as u32);
                }
                Ok(used)
            }
            Stage::SegmentHeader => {
                let used = self.collect(chunk, SEGMENT_HEADER_LEN);
                if usize::from(self.scratch_len) == SEGMENT_HEADER_LEN {
                    self.scratch_len = 0;
                    let index = self.segment_index;
                    let load_addr = le_u32(&self.scratch[0..4]);
                    let length = le_u32(&self.scratch[4..8]);
                    if length >= SEGMENT_LEN_LIMIT {
                        return Err(ImageError::SegmentTooLong { index, length });
                    }
                    if !length.is_multiple_of(4) {
                        return Err(ImageError::UnalignedSegmentLength { index, length });
                    }
                    let header_end = self.pos + used as u64;
                    // Bounded by 24 + 16 * (8 + 16 MiB): fits in u32.
                    let file_offset = (header_end - SEGMENT_HEADER_LEN as u64) as u32;
                    self.segments[usize::from(index)] = Segment {
                        load_addr,
                        length,
                        file_offset,
                    };
                    self.segment_remaining = length;
                    self.stage = Stage::SegmentData;
                    if length == 0 {
                        self.segment_index += 1;
                        self.next_segment(header_end as u32);
                    }
                }
                Ok(used)
            }
            Stage::SegmentData => {
                let take = chunk.len().min(self.segment_remaining as usize);
                let data = &chunk[..take];
                self.checksum ^= xor_all(data);
                if self.segment_index == 0 {
                    let seg_offset = (self.segments[0].length - self.segment_remaining) as usize;
                    if seg_offset < APP_DESC_KEPT {
                        let n = take.min(APP_DESC_KEPT - seg_offset);
                        self.desc[seg_offset..seg_offset + n].copy_from_slice(&data[..n]);
                    }
                }
                self.segment_remaining -= take as u32;
                if self.segment_remaining == 0 {
                    self.segment_index += 1;
                    self.next_segment((self.pos + take as u64) as u32);
                }
                Ok(take)
            }
            Stage::ChecksumPadding => {
                let take = chunk.len().min(usize::from(self.padding_remaining));
                self.padding_remaining -= take as u8;
                if self.padding_remaining == 0 {
                    self.stored_checksum = chunk[take - 1];
                    self.image_len = (self.pos + take as u64) as u32;
                    let hash_appended = self.header.is_some_and(|h| h.hash_appended);
                    self.digest_due = hash_appended;
                    self.stage = if hash_appended {
                        Stage::Digest
                    } else {
                        Stage::Trailing
                    };
                }
                Ok(take)
            }
            Stage::Digest => {
                let have = usize::from(self.digest_len);
                let take = chunk.len().min(DIGEST_LEN - have);
                self.stored_digest[have..have + take].copy_from_slice(&chunk[..take]);
                self.digest_len += take as u8;
                if usize::from(self.digest_len) == DIGEST_LEN {
                    self.image_len += DIGEST_LEN as u32;
                    self.stage = Stage::Trailing;
                }
                Ok(take)
            }
            Stage::Trailing => Ok(chunk.len()),
        }
    }

    /// Copies into `scratch` until it holds `want` bytes; returns bytes used.
    fn collect(&mut self, chunk: &[u8], want: usize) -> usize {
        let have = usize::from(self.scratch_len);
        let take = chunk.len().min(want - have);
        self.scratch[have..have + take].copy_from_slice(&chunk[..take]);
        self.scratch_len += take as u8;
        take
    }

    /// Moves to the header of segment `segment_index`, or to the checksum
    /// padding after the last; `offset` is the file offset reached.
    fn next_segment(&mut self, offset: u32) {
        let count = self.header.map_or(0, |h| h.segment_count);
        if self.segment_index < count {
            self.stage = Stage::SegmentHeader;
        } else {
            self.stage = Stage::ChecksumPadding;
            // esptool: skip to the last byte of the 16-byte block, read the checksum.
            self.padding_remaining = (16 - (offset % 16)) as u8;
        }
    }

    /// Ends the stream: the image's report, or why it is not an image.
    pub fn finish(self) -> Result<ImageInfo, ImageError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let len = self.pos;
        let truncated = |part, needed| Err(ImageError::Truncated { part, len, needed });
        let header = match (self.stage, self.header) {
            (Stage::Header, _) if len == 0 => return Err(ImageError::Empty),
            (Stage::Header, _) | (_, None) => {
                return truncated(ImagePart::Header, HEADER_LEN as u64);
            }
            (Stage::SegmentHeader, _) => {
                let needed = len - u64::from(self.scratch_len) + SEGMENT_HEADER_LEN as u64;
                return truncated(ImagePart::SegmentHeader(self.segment_index), needed);
            }
            (Stage::SegmentData, _) => {
                let needed = len + u64::from(self.segment_remaining);
                return truncated(ImagePart::SegmentData(self.segment_index), needed);
            }
            (Stage::ChecksumPadding, _) => {
                let needed = len + u64::from(self.padding_remaining);
                return truncated(ImagePart::ChecksumPadding, needed);
            }
            (Stage::Digest, _) => {
                let needed = len + (DIGEST_LEN as u64 - u64::from(self.digest_len));
                return truncated(ImagePart::Digest, needed);
            }
            (Stage::Trailing, Some(header)) => header,
        };
        let digest = header.hash_appended.then_some(AppendedDigest {
            stored: self.stored_digest,
            computed: self.computed_digest,
        });
        let first_len = match header.segment_count {
            0 => 0,
            _ => self.segments[0].length as usize,
        };
        let app_desc = (first_len >= APP_DESC_LEN && le_u32(&self.desc[0..4]) == APP_DESC_MAGIC)
            .then_some(AppDescriptor { raw: self.desc });
        let bootloader_desc = if app_desc.is_none() && first_len >= BOOTLOADER_DESC_LEN {
            BootloaderDescriptor::parse(&self.desc[..BOOTLOADER_DESC_LEN])
        } else {
            None
        };
        Ok(ImageInfo {
            header,
            segments: self.segments,
            stored_checksum: self.stored_checksum,
            computed_checksum: self.checksum,
            digest,
            app_desc,
            bootloader_desc,
            image_len: self.image_len,
            total_len: len,
            file_sha256: self.hasher.finalize().into(),
        })
    }
}

/// The header's flash size code (high nibble of byte 3) for `size` bytes:
/// 1 MiB is 0, 2 MiB 1, ... 128 MiB 7; `None` for any other size.
pub fn flash_size_code(size: u32) -> Option<u8> {
    (0..8u8).find(|&code| (1024 * 1024u32) << code == size)
}

/// Why [`set_flash_size`] could not patch an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashSizeError {
    /// The bytes are not a well-formed ESP image.
    Image(ImageError),
    /// The size is not a power of two from 1 MiB to 128 MiB.
    Size(u32),
}

impl fmt::Display for FlashSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlashSizeError::Image(e) => e.fmt(f),
            FlashSizeError::Size(size) => write!(
                f,
                "flash size {size} bytes is not one of 1, 2, 4, 8, 16, 32, 64 or 128 MiB"
            ),
        }
    }
}

impl core::error::Error for FlashSizeError {}

/// Writes `size` into the image header's flash size field and, when a
/// digest is appended, recomputes it (the digest covers the header), as
/// esptool and espflash do when they write a bootloader: the ESP-IDF
/// bootloader configures the flash from its own header, and the ROM's
/// flash functions refuse addresses beyond that size.
pub fn set_flash_size(image: &mut [u8], size: u32) -> Result<ImageInfo, FlashSizeError> {
    let code = flash_size_code(size).ok_or(FlashSizeError::Size(size))?;
    let before = verify(image).map_err(FlashSizeError::Image)?;
    image[3] = (code << 4) | (image[3] & 0x0F);
    if before.digest.is_some() {
        let at = before.image_len as usize - DIGEST_LEN;
        let digest = Sha256::digest(&image[..at]);
        image[at..at + DIGEST_LEN].copy_from_slice(&digest);
    }
    verify(image).map_err(FlashSizeError::Image)
}

/// Verifies a whole image held in memory; same as one [`ImageVerifier::update`].
pub fn verify(bytes: &[u8]) -> Result<ImageInfo, ImageError> {
    let mut verifier = ImageVerifier::new();
    verifier.update(bytes)?;
    verifier.finish()
}

/// Xor of every byte. Xor is order-free, so 8-byte words can be folded
/// first whatever their alignment in the file; the compiler vectorizes this.
fn xor_all(data: &[u8]) -> u8 {
    let mut words = data.chunks_exact(32);
    let mut acc = [0u64; 4];
    for block in &mut words {
        for (lane, word) in acc.iter_mut().zip(block.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            *lane ^= u64::from_le_bytes(bytes);
        }
    }
    let folded = (acc[0] ^ acc[1] ^ acc[2] ^ acc[3]).to_le_bytes();
    let mut x = folded.iter().fold(0u8, |a, b| a ^ b);
    for b in words.remainder() {
        x ^= b;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_state_fits_the_engine_budget() {
        // The engine's whole RAM budget is 8 KiB; the verifier must stay small.
        assert!(
            core::mem::size_of::<ImageVerifier>() <= 768,
            "ImageVerifier is {} bytes",
            core::mem::size_of::<ImageVerifier>()
        );
    }

    #[test]
    fn xor_all_equals_bytewise_xor_for_every_length_and_alignment() {
        let data: [u8; 100] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
        for start in 0..8 {
            for end in start..data.len() {
                let slice = &data[start..end];
                let expected = slice.iter().fold(0u8, |a, b| a ^ b);
                assert_eq!(xor_all(slice), expected, "{start}..{end}");
            }
        }
    }

    #[test]
    fn chip_ids_and_names_round_trip() {
        for chip in Chip::KNOWN {
            assert_eq!(Chip::from_id(chip.id()), chip);
            assert_eq!(Chip::from_name(chip.name()), Some(chip));
        }
        assert_eq!(Chip::from_id(999), Chip::Unknown(999));
        assert_eq!(Chip::Unknown(999).id(), 999);
        assert_eq!(Chip::from_name("ESP32-C3"), Some(Chip::Esp32c3));
        assert_eq!(Chip::from_name("esp32c"), None);
        assert_eq!(Chip::from_name("esp32c33"), None);
    }
}
