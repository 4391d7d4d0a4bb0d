//! The streaming ESP image verifier against real and built images, chunked
//! feeding, and every kind of malformed input.
#![allow(clippy::unwrap_used)]

mod image_common;

use airlift_format::image::{
    APP_DESC_OFFSET, Chip, FlashMode, FlashSizeError, ImageBuilder, ImageError, ImagePart,
    ImageVerifier, SEGMENT_LEN_LIMIT, flash_size_code, set_flash_size, verify,
};
use image_common::{real_bootloaders, real_images, verify_chunked};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A small app image: descriptor segment plus two data segments.
fn small_image() -> Vec<u8> {
    ImageBuilder::new(Chip::Esp32c3)
        .app("blinky", "1.2.3")
        .secure_version(7)
        .idf_ver("v5.4.1")
        .compile_time("12:34:56", "Nov 24 2026")
        .elf_sha256([0xAB; 32])
        .segment(0x3FC8_0000, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
        .filler(0x4200_0100, 100)
        .build()
}

#[test]
fn real_esp_idf_images_are_valid_esp32_apps_with_descriptor() {
    for (name, bytes) in real_images() {
        let info = verify(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.chip(), Chip::Esp32, "{name}");
        assert!(info.checksum_valid(), "{name}");
        assert!(info.digest.is_some(), "{name}: digest appended");
        assert!(info.digest_valid(), "{name}");
        assert_eq!(
            info.image_len as usize,
            bytes.len(),
            "{name}: no trailing bytes"
        );
        assert_eq!(info.file_sha256, sha256(&bytes), "{name}");
        let desc = info
            .app_desc
            .unwrap_or_else(|| panic!("{name}: app descriptor"));
        assert!(!desc.project_name().is_empty(), "{name}");
        assert!(
            desc.idf_ver().starts_with('v'),
            "{name}: {}",
            desc.idf_ver()
        );
    }
}

#[test]
fn real_esp_idf_bootloaders_are_valid_and_name_their_chip() {
    for (name, bytes) in real_bootloaders() {
        let info = verify(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(format!("{}.bin", info.chip().name()), name);
        assert!(info.chip().is_known(), "{name}");
        assert!(info.is_valid(), "{name}");
        assert!(info.digest.is_some(), "{name}: digest appended");
        assert_eq!(
            info.app_desc, None,
            "{name}: bootloaders have no app descriptor"
        );
        // Built from ESP-IDF release/v6.1 (or a v6.1 preview), without compile time.
        let desc = info
            .bootloader_desc
            .unwrap_or_else(|| panic!("{name}: descriptor"));
        assert!(
            desc.idf_ver().starts_with("v6.1"),
            "{name}: {}",
            desc.idf_ver()
        );
        assert_eq!(desc.version(), 1, "{name}");
        assert_eq!(desc.date_time(), "", "{name}");
        assert_eq!(info.image_len as usize, bytes.len(), "{name}");
    }
}

#[test]
fn built_image_reports_every_field_it_was_built_with() {
    let bytes = small_image();
    let info = verify(&bytes).unwrap();
    assert!(info.is_valid());
    assert_eq!(info.chip(), Chip::Esp32c3);
    assert_eq!(info.header.chip_id, 5);
    assert_eq!(info.header.entry_addr, 0x4200_0020);
    assert_eq!(info.header.flash_mode(), FlashMode::Dio);
    assert_eq!(info.header.flash_size(), Some(4 * 1024 * 1024));
    assert_eq!(info.header.flash_freq_mhz(), Some(40));
    let segments: Vec<(u32, u32, u32)> = info
        .segments()
        .iter()
        .map(|s| (s.load_addr, s.length, s.file_offset))
        .collect();
    assert_eq!(
        segments,
        [
            (0x3C00_0020, 256, 24),
            (0x3FC8_0000, 12, 24 + 8 + 256),
            (0x4200_0100, 100, 24 + 8 + 256 + 8 + 12),
        ]
    );
    assert_eq!(info.segments()[0].data_offset() as usize, APP_DESC_OFFSET);
    assert_eq!(info.bootloader_desc, None);
    let desc = info.app_desc.unwrap();
    assert_eq!(desc.project_name(), "blinky");
    assert_eq!(desc.version(), "1.2.3");
    assert_eq!(desc.secure_version(), 7);
    assert_eq!(desc.idf_ver(), "v5.4.1");
    assert_eq!(desc.time(), "12:34:56");
    assert_eq!(desc.date(), "Nov 24 2026");
    assert_eq!(desc.app_elf_sha256(), [0xAB; 32]);
    assert_eq!(info.image_len as usize, bytes.len());
    assert_eq!(info.image_len % 16, 0);
}

#[test]
fn digest_covers_everything_before_it_and_file_sha256_covers_everything() {
    let mut bytes = small_image();
    let image_len = bytes.len();
    bytes.extend_from_slice(&[0xFF; 100]);
    let info = verify(&bytes).unwrap();
    let digest = info.digest.unwrap();
    assert_eq!(digest.computed, sha256(&bytes[..image_len - 32]));
    assert_eq!(digest.stored, digest.computed);
    assert_eq!(info.image_len as usize, image_len);
    assert_eq!(info.total_len as usize, image_len + 100);
    assert_eq!(info.file_sha256, sha256(&bytes));
}

#[test]
fn image_without_digest_ends_at_the_checksum_block() {
    let bytes = ImageBuilder::new(Chip::Esp32)
        .hash_appended(false)
        .filler(0x3FFB_0000, 40)
        .build();
    let info = verify(&bytes).unwrap();
    assert!(!info.header.hash_appended);
    assert_eq!(info.digest, None);
    assert!(info.digest_valid());
    assert!(info.is_valid());
    assert_eq!(info.image_len as usize, bytes.len());
    assert_eq!(bytes.len(), 80);
    assert_eq!(info.app_desc, None);
}

#[test]
fn image_with_no_segments_has_the_seed_checksum() {
    let bytes = ImageBuilder::new(Chip::Esp32s3).build();
    let info = verify(&bytes).unwrap();
    assert!(info.segments().is_empty());
    assert_eq!(info.computed_checksum, 0xEF);
    assert!(info.is_valid());
    assert_eq!(bytes.len(), 32 + 32);
}

#[test]
fn chunk_size_does_not_change_the_result() {
    let mut images = vec![small_image()];
    images.extend(real_images().into_iter().map(|(_, bytes)| bytes));
    images.extend(real_bootloaders().into_iter().map(|(_, bytes)| bytes));
    let mut corrupt = small_image();
    corrupt[100] ^= 0x01;
    images.push(corrupt);
    for bytes in &images {
        let whole = verify(bytes).unwrap();
        for chunk in [1, 2, 3, 7, 16, 4096, bytes.len()] {
            assert_eq!(
                verify_chunked(bytes, chunk).unwrap(),
                whole,
                "chunk {chunk}"
            );
        }
    }
}

#[test]
fn header_is_available_once_24_bytes_are_fed() {
    let bytes = small_image();
    let mut verifier = ImageVerifier::new();
    verifier.update(&bytes[..23]).unwrap();
    assert!(verifier.header().is_none());
    verifier.update(&bytes[23..24]).unwrap();
    assert_eq!(verifier.header().unwrap().chip(), Chip::Esp32c3);
    assert_eq!(verifier.bytes_fed(), 24);
}

/// Verification failures are reported, not errors: (byte to flip, checksum ok, digest ok).
#[test]
fn flipped_bytes_fail_checksum_or_digest_but_still_parse() {
    let bytes = small_image();
    let len = bytes.len();
    let check = |offset: usize, checksum_ok: bool, digest_ok: bool| {
        let mut corrupt = bytes.clone();
        corrupt[offset] ^= 0x10;
        let info = verify(&corrupt).unwrap();
        assert_eq!(info.checksum_valid(), checksum_ok, "offset {offset}");
        assert_eq!(info.digest_valid(), digest_ok, "offset {offset}");
        assert!(!info.is_valid());
    };
    check(4, true, false); // entry address
    check(APP_DESC_OFFSET + 20, false, false); // descriptor version string
    check(24 + 8 + 256 + 8 + 3, false, false); // segment 1 data
    check(len - 33, false, false); // the checksum byte
    check(len - 40, true, false); // checksum padding
    check(len - 1, true, false); // the stored digest
}

#[test]
fn every_prefix_is_a_truncation_error_naming_the_part() {
    let bytes = small_image();
    let seg1 = 24 + 8 + 256;
    let seg2 = seg1 + 8 + 12;
    let end = seg2 + 8 + 100;
    let checksum_end = bytes.len() - 32;
    for len in 0..bytes.len() {
        let err = verify(&bytes[..len]).unwrap_err();
        let (part, needed) = match len {
            0 => {
                assert_eq!(err, ImageError::Empty);
                continue;
            }
            1..24 => (ImagePart::Header, 24),
            24..32 => (ImagePart::SegmentHeader(0), 32),
            32..288 => (ImagePart::SegmentData(0), 288),
            l if l < seg1 + 8 => (ImagePart::SegmentHeader(1), seg1 + 8),
            l if l < seg2 => (ImagePart::SegmentData(1), seg2),
            l if l < seg2 + 8 => (ImagePart::SegmentHeader(2), seg2 + 8),
            l if l < end => (ImagePart::SegmentData(2), end),
            l if l < checksum_end => (ImagePart::ChecksumPadding, checksum_end),
            _ => (ImagePart::Digest, bytes.len()),
        };
        let expected = ImageError::Truncated {
            part,
            len: len as u64,
            needed: needed as u64,
        };
        assert_eq!(err, expected, "prefix of {len} bytes");
    }
}

#[test]
fn reading_bytes_wanted_stops_exactly_at_the_end_of_an_image_in_a_slot() {
    for (name, image) in real_images().into_iter().chain(real_bootloaders()) {
        // The image as it sits in a flash slot: followed by erased flash.
        let mut slot = image.clone();
        slot.resize(image.len().next_multiple_of(0x10000) + 0x10000, 0xFF);
        let mut verifier = ImageVerifier::new();
        let mut at = 0;
        while verifier.bytes_wanted() > 0 {
            let n = verifier.bytes_wanted().min(4096);
            verifier.update(&slot[at..at + n]).unwrap();
            at += n;
        }
        assert!(verifier.is_complete(), "{name}");
        assert_eq!(at, image.len(), "{name}");
        let info = verifier.finish().unwrap();
        assert!(info.is_valid(), "{name}");
        assert_eq!(info.file_sha256, sha256(&image), "{name}");
    }
}

#[test]
fn nothing_is_wanted_after_an_error() {
    let mut verifier = ImageVerifier::new();
    assert_eq!(verifier.bytes_wanted(), 24);
    assert!(verifier.update(b"\x7fELF").is_err());
    assert_eq!(verifier.bytes_wanted(), 0);
    assert!(!verifier.is_complete());
}

#[test]
fn errors_are_sticky() {
    let mut verifier = ImageVerifier::new();
    assert_eq!(verifier.update(&[0x7F]), Err(ImageError::BadMagic(0x7F)));
    assert_eq!(verifier.update(&[0xE9]), Err(ImageError::BadMagic(0x7F)));
    assert_eq!(verifier.finish(), Err(ImageError::BadMagic(0x7F)));
}

/// Patches `bytes` at `offset` with `patch` and expects `expected`.
fn check_malformed(name: &str, offset: usize, patch: &[u8], expected: ImageError) {
    let mut bytes = small_image();
    bytes[offset..offset + patch.len()].copy_from_slice(patch);
    for chunk in [1, 7, bytes.len()] {
        assert_eq!(
            verify_chunked(&bytes, chunk),
            Err(expected),
            "{name}, chunk {chunk}"
        );
    }
}

#[test]
fn malformed_images_give_specific_errors() {
    let seg1_len_at = 24 + 8 + 256 + 4;
    check_malformed("elf file", 0, b"\x7fELF", ImageError::BadMagic(0x7F));
    check_malformed("zero magic", 0, &[0], ImageError::BadMagic(0));
    check_malformed("17 segments", 1, &[17], ImageError::TooManySegments(17));
    check_malformed("255 segments", 1, &[255], ImageError::TooManySegments(255));
    check_malformed("hash flag 2", 23, &[2], ImageError::BadHashAppendedFlag(2));
    check_malformed(
        "16 MiB segment",
        seg1_len_at,
        &SEGMENT_LEN_LIMIT.to_le_bytes(),
        ImageError::SegmentTooLong {
            index: 1,
            length: SEGMENT_LEN_LIMIT,
        },
    );
    check_malformed(
        "absurd segment",
        seg1_len_at,
        &u32::MAX.to_le_bytes(),
        ImageError::SegmentTooLong {
            index: 1,
            length: u32::MAX,
        },
    );
    check_malformed(
        "odd segment length",
        seg1_len_at,
        &13u32.to_le_bytes(),
        ImageError::UnalignedSegmentLength {
            index: 1,
            length: 13,
        },
    );
}

#[test]
fn segment_length_past_the_end_is_a_truncation_in_that_segment() {
    let mut bytes = small_image();
    let seg1_len_at = 24 + 8 + 256 + 4;
    bytes[seg1_len_at..seg1_len_at + 4].copy_from_slice(&0x10_0000u32.to_le_bytes());
    let data_start = (seg1_len_at + 4) as u64;
    assert_eq!(
        verify(&bytes),
        Err(ImageError::Truncated {
            part: ImagePart::SegmentData(1),
            len: bytes.len() as u64,
            needed: data_start + 0x10_0000,
        })
    );
}

#[test]
fn seventeen_built_segments_are_too_many() {
    let mut builder = ImageBuilder::new(Chip::Esp32);
    for i in 0..17 {
        builder = builder.filler(0x3FFB_0000 + i * 16, 16);
    }
    assert_eq!(
        verify(&builder.build()),
        Err(ImageError::TooManySegments(17))
    );
    let sixteen = (0..16).fold(ImageBuilder::new(Chip::Esp32), |b, i| {
        b.filler(0x3FFB_0000 + i * 16, 16)
    });
    assert_eq!(verify(&sixteen.build()).unwrap().segments().len(), 16);
}

#[test]
fn unpadded_segment_is_rejected_as_unaligned() {
    let bytes = ImageBuilder::new(Chip::Esp32)
        .unpadded_segment(0x3FFB_0000, vec![1, 2, 3])
        .build();
    assert_eq!(
        verify(&bytes),
        Err(ImageError::UnalignedSegmentLength {
            index: 0,
            length: 3
        })
    );
}

#[test]
fn first_segment_without_magic_or_too_short_has_no_descriptor() {
    let no_magic = ImageBuilder::new(Chip::Esp32)
        .filler(0x3F40_0020, 512)
        .build();
    assert_eq!(verify(&no_magic).unwrap().app_desc, None);
    let mut short = small_image();
    // Shrink segment 0 to 252 bytes: a descriptor needs all 256.
    let data = short[24 + 8..24 + 8 + 252].to_vec();
    short = ImageBuilder::new(Chip::Esp32c3)
        .segment(0x3C00_0020, data)
        .build();
    assert_eq!(verify(&short).unwrap().app_desc, None);
}

#[test]
fn unknown_chip_id_is_kept_raw() {
    let bytes = ImageBuilder::new(Chip::Unknown(0x1234)).build();
    let info = verify(&bytes).unwrap();
    assert_eq!(info.chip(), Chip::Unknown(0x1234));
    assert_eq!(info.header.chip_id, 0x1234);
    assert_eq!(info.chip().name(), "unknown");
}

#[test]
fn error_messages_say_what_is_wrong_and_what_was_expected() {
    let check = |err: ImageError, expected: &str| assert_eq!(err.to_string(), expected);
    check(
        ImageError::BadMagic(0x7F),
        "not an ESP image: first byte is 0x7f, expected 0xe9",
    );
    check(
        ImageError::Empty,
        "not an ESP image: the input is empty, expected a first byte of 0xe9",
    );
    check(
        ImageError::TooManySegments(17),
        "image header declares 17 segments, at most 16 are allowed",
    );
    check(
        ImageError::UnalignedSegmentLength {
            index: 2,
            length: 13,
        },
        "segment 2 is 13 bytes long, expected a multiple of 4",
    );
    check(
        ImageError::Truncated {
            part: ImagePart::SegmentData(1),
            len: 300,
            needed: 1024,
        },
        "truncated image: input ends at byte 300 in the data of segment 1, which needs 1024 bytes",
    );
}

#[test]
fn flash_size_codes_are_esptools() {
    let mib = 1024 * 1024;
    for (size, code) in [
        (mib, 0),
        (2 * mib, 1),
        (4 * mib, 2),
        (16 * mib, 4),
        (128 * mib, 7),
    ] {
        assert_eq!(flash_size_code(size), Some(code), "{size}");
    }
    for size in [0, 512 * 1024, 3 * mib, 256 * mib, 4 * mib + 4096] {
        assert_eq!(flash_size_code(size), None, "{size}");
    }
}

#[test]
fn setting_the_flash_size_keeps_the_image_valid_and_changes_only_the_size_and_digest() {
    let image = small_image();
    let mut patched = image.clone();
    let info = set_flash_size(&mut patched, 8 << 20).unwrap();
    assert!(info.is_valid());
    assert_eq!(info.header.flash_size(), Some(8 << 20));
    let digest_at = info.image_len as usize - 32;
    let changed: Vec<usize> = (0..image.len())
        .filter(|&i| image[i] != patched[i])
        .collect();
    assert!(
        changed
            .iter()
            .all(|&i| i == 3 || (digest_at..digest_at + 32).contains(&i)),
        "changed bytes {changed:?}"
    );
    assert_eq!(patched[3] & 0x0F, image[3] & 0x0F, "frequency kept");
}

#[test]
fn setting_the_flash_size_of_an_image_without_digest_changes_one_byte() {
    let image = ImageBuilder::new(Chip::Esp32c3)
        .hash_appended(false)
        .segment(0x3FC8_0000, vec![9; 16])
        .build();
    let mut patched = image.clone();
    let info = set_flash_size(&mut patched, 2 << 20).unwrap();
    assert!(info.is_valid() && info.digest.is_none());
    let changed = (0..image.len()).filter(|&i| image[i] != patched[i]).count();
    assert!(changed <= 1, "{changed} bytes changed");
}

#[test]
fn setting_the_flash_size_refuses_odd_sizes_and_non_images() {
    let mut image = small_image();
    assert_eq!(
        set_flash_size(&mut image, 3 << 20),
        Err(FlashSizeError::Size(3 << 20))
    );
    assert_eq!(image, small_image(), "untouched on error");
    let mut junk = vec![0u8; 64];
    assert_eq!(
        set_flash_size(&mut junk, 4 << 20),
        Err(FlashSizeError::Image(ImageError::BadMagic(0)))
    );
}

#[test]
fn bootloader_offsets_are_esptools() {
    assert_eq!(Chip::Esp32.bootloader_offset(), Some(0x1000));
    assert_eq!(Chip::Esp32s2.bootloader_offset(), Some(0x1000));
    for chip in [Chip::Esp32c3, Chip::Esp32c6, Chip::Esp32s3, Chip::Esp32h2] {
        assert_eq!(chip.bootloader_offset(), Some(0), "{chip}");
    }
    assert_eq!(Chip::Esp32p4.bootloader_offset(), Some(0x2000));
    assert_eq!(Chip::Unknown(77).bootloader_offset(), None);
}
