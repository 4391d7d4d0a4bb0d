//! Valid ESP application images built in memory, for tests, benchmarks and tools.

use std::vec;
use std::vec::Vec;

use sha2::{Digest, Sha256};

use super::{
    APP_DESC_LEN, APP_DESC_MAGIC, CHECKSUM_SEED, Chip, FlashMode, ImageHeader, WP_PIN_DISABLED,
};

/// Builds an ESP application image the way esptool's `elf2image` lays it
/// out: header, segments (data zero-padded to a multiple of 4), checksum in
/// the last byte of a 16-byte block, appended SHA-256.
///
/// It writes what it is told, even images the verifier rejects (17
/// segments, an unaligned segment with [`unpadded_segment`](Self::unpadded_segment)),
/// so that tests can make broken images too.
///
/// ```
/// use airlift_format::image::{Chip, ImageBuilder, verify};
///
/// let bytes = ImageBuilder::new(Chip::Esp32c3)
///     .app("blinky", "1.2.0")
///     .secure_version(3)
///     .filler(0x4200_0020, 4096)
///     .build();
/// let info = verify(&bytes).unwrap();
/// assert!(info.is_valid());
/// assert_eq!(info.app_desc.unwrap().version(), "1.2.0");
/// ```
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    header: ImageHeader,
    app: Option<AppFields>,
    app_desc_addr: u32,
    segments: Vec<(u32, Vec<u8>)>,
}

#[derive(Clone, Debug)]
struct AppFields {
    project_name: Vec<u8>,
    version: Vec<u8>,
    secure_version: u32,
    time: Vec<u8>,
    date: Vec<u8>,
    idf_ver: Vec<u8>,
    elf_sha256: [u8; 32],
}

impl Default for AppFields {
    fn default() -> Self {
        AppFields {
            project_name: b"app".to_vec(),
            version: b"0.0.0".to_vec(),
            secure_version: 0,
            time: b"00:00:00".to_vec(),
            date: b"Jan  1 2026".to_vec(),
            idf_ver: b"airlift".to_vec(),
            elf_sha256: [0; 32],
        }
    }
}

/// Typical (DROM, IROM) load addresses of an ESP-IDF app for `chip`.
fn default_addresses(chip: Chip) -> (u32, u32) {
    match chip {
        Chip::Esp32 => (0x3F40_0020, 0x400D_0020),
        Chip::Esp32s2 => (0x3F00_0020, 0x4008_0020),
        Chip::Esp32c6
        | Chip::Esp32h2
        | Chip::Esp32c5
        | Chip::Esp32c61
        | Chip::Esp32h21
        | Chip::Esp32h4 => (0x4280_0020, 0x4200_0020),
        Chip::Esp32p4 => (0x4000_0020, 0x4000_0020),
        _ => (0x3C00_0020, 0x4200_0020),
    }
}

impl ImageBuilder {
    /// An image for `chip` with no segments, no app descriptor, DIO flash
    /// mode, 4 MB flash at the chip's default frequency, the entry point at
    /// the chip's usual IROM address, and a SHA-256 digest appended.
    pub fn new(chip: Chip) -> ImageBuilder {
        let (drom, irom) = default_addresses(chip);
        ImageBuilder {
            header: ImageHeader {
                segment_count: 0,
                flash_mode: FlashMode::Dio.to_byte(),
                flash_size_freq: 0x20,
                entry_addr: irom,
                wp_pin: WP_PIN_DISABLED,
                spi_pin_drv: [0; 3],
                chip_id: chip.id(),
                min_chip_rev: 0,
                min_chip_rev_full: 0,
                max_chip_rev_full: 0,
                reserved: [0; 4],
                hash_appended: true,
            },
            app: None,
            app_desc_addr: drom,
            segments: Vec::new(),
        }
    }

    /// Adds an `esp_app_desc_t` as the data of segment 0 (before every
    /// segment added with [`segment`](Self::segment)), as ESP-IDF does.
    /// Strings longer than their field are cut.
    pub fn app(mut self, project_name: &str, version: &str) -> ImageBuilder {
        let app = self.app.get_or_insert_with(AppFields::default);
        app.project_name = project_name.as_bytes().to_vec();
        app.version = version.as_bytes().to_vec();
        self
    }

    /// Sets the descriptor's security version (adds a descriptor if none).
    pub fn secure_version(mut self, secure_version: u32) -> ImageBuilder {
        self.app
            .get_or_insert_with(AppFields::default)
            .secure_version = secure_version;
        self
    }

    /// Sets the descriptor's ESP-IDF version (adds a descriptor if none).
    pub fn idf_ver(mut self, idf_ver: &str) -> ImageBuilder {
        self.app.get_or_insert_with(AppFields::default).idf_ver = idf_ver.as_bytes().to_vec();
        self
    }

    /// Sets the descriptor's compile time and date (adds a descriptor if none).
    pub fn compile_time(mut self, time: &str, date: &str) -> ImageBuilder {
        let app = self.app.get_or_insert_with(AppFields::default);
        app.time = time.as_bytes().to_vec();
        app.date = date.as_bytes().to_vec();
        self
    }

    /// Sets the descriptor's ELF SHA-256 (adds a descriptor if none).
    pub fn elf_sha256(mut self, sha256: [u8; 32]) -> ImageBuilder {
        self.app.get_or_insert_with(AppFields::default).elf_sha256 = sha256;
        self
    }

    /// Load address of the descriptor's segment (default: the chip's DROM).
    pub fn app_desc_addr(mut self, addr: u32) -> ImageBuilder {
        self.app_desc_addr = addr;
        self
    }

    /// Sets the entry point address.
    pub fn entry(mut self, entry_addr: u32) -> ImageBuilder {
        self.header.entry_addr = entry_addr;
        self
    }

    /// Sets the flash mode and the flash size/frequency byte (size in the
    /// high nibble: 0 = 1 MB ... 7 = 128 MB; frequency in the low nibble).
    pub fn flash(mut self, mode: FlashMode, size_freq: u8) -> ImageBuilder {
        self.header.flash_mode = mode.to_byte();
        self.header.flash_size_freq = size_freq;
        self
    }

    /// Sets the minimum and maximum chip revision (`major * 100 + minor`).
    pub fn chip_revisions(mut self, min_full: u16, max_full: u16) -> ImageBuilder {
        self.header.min_chip_rev_full = min_full;
        self.header.min_chip_rev = u8::try_from(min_full / 100).unwrap_or(u8::MAX);
        self.header.max_chip_rev_full = max_full;
        self
    }

    /// Whether to append the SHA-256 digest (default: yes).
    pub fn hash_appended(mut self, appended: bool) -> ImageBuilder {
        self.header.hash_appended = appended;
        self
    }

    /// Adds a segment; its data is zero-padded to a multiple of 4 bytes.
    pub fn segment(mut self, load_addr: u32, data: impl Into<Vec<u8>>) -> ImageBuilder {
        let mut data = data.into();
        data.resize(data.len().next_multiple_of(4), 0);
        self.segments.push((load_addr, data));
        self
    }

    /// Adds a segment exactly as given, even with a length that is not a
    /// multiple of 4 (which makes the image invalid).
    pub fn unpadded_segment(mut self, load_addr: u32, data: impl Into<Vec<u8>>) -> ImageBuilder {
        self.segments.push((load_addr, data.into()));
        self
    }

    /// Adds a segment of `len` (rounded up to a multiple of 4) deterministic
    /// pseudo-random bytes, seeded by the address and length.
    pub fn filler(self, load_addr: u32, len: usize) -> ImageBuilder {
        let mut state = (u64::from(load_addr) << 32) ^ (len as u64) ^ 0x9E37_79B9_7F4A_7C15;
        let mut data = Vec::with_capacity(len.next_multiple_of(8));
        while data.len() < len {
            // xorshift64*: fast, deterministic, good enough to make checksums non-trivial.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            data.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        data.truncate(len);
        self.segment(load_addr, data)
    }

    /// The image's bytes. At most 255 segments are counted in the header.
    pub fn build(&self) -> Vec<u8> {
        let desc = self
            .app
            .as_ref()
            .map(|app| (self.app_desc_addr, encode_app_desc(app)));
        let segments: Vec<(u32, &[u8])> = desc
            .iter()
            .map(|(addr, data)| (*addr, data.as_slice()))
            .chain(
                self.segments
                    .iter()
                    .map(|(addr, data)| (*addr, data.as_slice())),
            )
            .collect();

        let mut header = self.header;
        header.segment_count = u8::try_from(segments.len()).unwrap_or(u8::MAX);
        let data_len: usize = segments.iter().map(|(_, d)| 8 + d.len()).sum();
        let mut out = Vec::with_capacity(24 + data_len + 16 + 32);
        out.extend_from_slice(&header.encode());
        let mut checksum = CHECKSUM_SEED;
        for (addr, data) in &segments {
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
            checksum = data.iter().fold(checksum, |c, b| c ^ b);
        }
        out.resize(out.len() + 15 - out.len() % 16, 0);
        out.push(checksum);
        if header.hash_appended {
            let digest: [u8; 32] = Sha256::digest(&out).into();
            out.extend_from_slice(&digest);
        }
        out
    }
}

fn encode_app_desc(app: &AppFields) -> Vec<u8> {
    fn put(out: &mut [u8], value: &[u8]) {
        let n = value.len().min(out.len());
        out[..n].copy_from_slice(&value[..n]);
    }
    let mut d = vec![0u8; APP_DESC_LEN];
    d[0..4].copy_from_slice(&APP_DESC_MAGIC.to_le_bytes());
    d[4..8].copy_from_slice(&app.secure_version.to_le_bytes());
    put(&mut d[16..48], &app.version);
    put(&mut d[48..80], &app.project_name);
    put(&mut d[80..96], &app.time);
    put(&mut d[96..112], &app.date);
    put(&mut d[112..144], &app.idf_ver);
    d[144..176].copy_from_slice(&app.elf_sha256);
    d
}
