#![allow(clippy::unwrap_used)]
//! The binary partition table: ESP-IDF's bytes, round trips, and one distinct
//! error per kind of bad table.

use airlift_format::partition::{
    AIRLIFT_DEFAULT, DEFAULT_TWO_OTA, ENTRY_LEN, MAX_BUILD_ENTRIES, MAX_ENTRIES, Md5Status,
    OtaLayout, PartitionEntry, PartitionError, PartitionType, Row, TABLE_MAX_LEN, Table,
    TableReader, app_subtype, build, data_subtype, decode_row, label_from_str, parse_csv,
};
use md5::{Digest, Md5};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn label(text: &str) -> [u8; 16] {
    label_from_str(text).unwrap()
}

fn entry(name: &str, kind: PartitionType, subtype: u8, offset: u32, size: u32) -> PartitionEntry {
    PartitionEntry::new(name, kind, subtype, offset, size, 0).unwrap()
}

fn data(name: &str, subtype: u8, offset: u32, size: u32) -> PartitionEntry {
    entry(name, PartitionType::DATA, subtype, offset, size)
}

fn app(name: &str, subtype: u8, offset: u32, size: u32) -> PartitionEntry {
    entry(name, PartitionType::APP, subtype, offset, size)
}

fn ota(n: u8, offset: u32) -> PartitionEntry {
    app(
        &format!("ota_{n}"),
        app_subtype::OTA_0 + n,
        offset,
        0x10_0000,
    )
}

/// Encodes rows without any validation (to make bad tables), then the MD5
/// row when asked, then 0xFF up to 0xC00.
fn raw_table(rows: &[[u8; 32]], with_md5: bool) -> Vec<u8> {
    let mut out: Vec<u8> = rows.iter().flatten().copied().collect();
    if with_md5 {
        let digest = Md5::digest(&out);
        out.extend_from_slice(&[0xEB, 0xEB]);
        out.extend_from_slice(&[0xFF; 14]);
        out.extend_from_slice(&digest);
    }
    out.resize(out.len().max(TABLE_MAX_LEN), 0xFF);
    out
}

fn raw(entries: &[PartitionEntry]) -> Vec<u8> {
    let rows: Vec<[u8; 32]> = entries.iter().map(PartitionEntry::encode).collect();
    raw_table(&rows, true)
}

fn built(entries: &[PartitionEntry]) -> [u8; TABLE_MAX_LEN] {
    let mut out = [0u8; TABLE_MAX_LEN];
    build(entries, &mut out).unwrap();
    out
}

#[test]
fn esp_idf_two_ota_csv_builds_to_the_md5_gen_esp32part_writes() {
    let csv = include_str!("../../../testdata/partitions/partitions_two_ota.csv");
    let entries = parse_csv(csv).unwrap();
    let table = built(&entries);
    let md5_row = &table[6 * ENTRY_LEN..7 * ENTRY_LEN];
    assert_eq!(hex(&md5_row[..16]), format!("ebeb{}", "ff".repeat(14)));
    assert_eq!(hex(&md5_row[16..]), "bf25822c0fa6d8641bd930251e06b4c4");
    assert!(table[7 * ENTRY_LEN..].iter().all(|&b| b == 0xFF));
    assert_eq!(entries, DEFAULT_TWO_OTA);
}

#[test]
fn entry_row_layout_matches_esp_partition_info_t() {
    let row = DEFAULT_TWO_OTA[0].encode();
    let expected = format!(
        "aa500102{}{}{}{}{}",
        "00900000",
        "00400000",
        "6e7673",
        "00".repeat(13),
        "00000000"
    );
    assert_eq!(hex(&row), expected);
    let flagged = PartitionEntry {
        flags: 3,
        ..DEFAULT_TWO_OTA[4]
    };
    assert_eq!(hex(&flagged.encode()[28..]), "03000000");
}

#[test]
fn airlift_default_is_two_ota_plus_the_airlift_data_partition() {
    let csv = include_str!("../../../testdata/partitions/airlift_default.csv");
    assert_eq!(parse_csv(csv).unwrap(), AIRLIFT_DEFAULT);
    let layout = OtaLayout::from_entries(AIRLIFT_DEFAULT).unwrap();
    assert_eq!(
        layout,
        OtaLayout {
            otadata: Some((0xD000, 0x2000)),
            slots: {
                let mut slots = [None; 16];
                slots[0] = Some((0x11_0000, 0x10_0000));
                slots[1] = Some((0x21_0000, 0x10_0000));
                slots
            },
            app_count: 2,
            factory: Some((0x1_0000, 0x10_0000)),
            airlift_data: Some((0x31_0000, 0x1_0000)),
        }
    );
    // Fits 4 MiB flash.
    assert!(AIRLIFT_DEFAULT.iter().all(|e| e.end() <= 0x40_0000));
    assert_eq!(layout.slot_containing(0x11_0000), Some(0));
    assert_eq!(layout.slot_containing(0x30_FFFF), Some(1));
    assert_eq!(layout.slot_containing(0x31_0000), None);
    assert_eq!(layout.slot_containing(0x1_0000), None);
}

#[test]
fn parse_of_build_gives_back_the_entries() {
    let many: Vec<PartitionEntry> = (0..MAX_BUILD_ENTRIES as u32)
        .map(|i| data(&format!("d{i}"), 0x50, 0x9000 + i * 0x1000, 0x1000))
        .collect();
    let flagged = [
        PartitionEntry {
            flags: 0x8000_0003,
            ..DEFAULT_TWO_OTA[0]
        },
        ota(0, 0x2_0000),
        entry("custom", PartitionType(0x40), 0x07, 0x12_0000, 0x1000),
    ];
    for entries in [
        &DEFAULT_TWO_OTA[..],
        &AIRLIFT_DEFAULT[..],
        &many[..],
        &flagged[..],
        &[],
    ] {
        let bytes = built(entries);
        let table = Table::parse(&bytes).unwrap();
        assert_eq!(table.iter().collect::<Vec<_>>(), entries);
        assert_eq!(table.len(), entries.len());
        assert_eq!(table.md5_status(), Md5Status::Verified);
    }
}

#[test]
fn build_reports_the_length_before_padding() {
    let mut out = [0u8; TABLE_MAX_LEN];
    assert_eq!(build(&DEFAULT_TWO_OTA, &mut out).unwrap(), 7 * ENTRY_LEN);
}

#[test]
fn a_whole_flash_sector_parses_and_bytes_after_the_end_row_are_ignored() {
    let mut sector = built(&AIRLIFT_DEFAULT).to_vec();
    sector.resize(0x1000, 0x00); // signature area, not 0xFF
    let table = Table::parse(&sector).unwrap();
    assert_eq!(table.len(), 7);
    assert_eq!(table.find("ota_1").unwrap().offset, 0x21_0000);
    assert_eq!(table.find("missing"), None);
}

#[test]
fn table_without_md5_row_parses_as_unverified() {
    let rows: Vec<[u8; 32]> = DEFAULT_TWO_OTA.iter().map(PartitionEntry::encode).collect();
    let table_bytes = raw_table(&rows, false);
    let table = Table::parse(&table_bytes).unwrap();
    assert_eq!(table.md5_status(), Md5Status::Absent);
    assert_eq!(table.iter().collect::<Vec<_>>(), DEFAULT_TWO_OTA);
}

#[test]
fn a_table_filling_all_96_rows_parses_but_build_keeps_an_end_row() {
    let full: Vec<PartitionEntry> = (0..MAX_ENTRIES as u32)
        .map(|i| data(&format!("d{i}"), 0x50, 0x9000 + i * 0x1000, 0x1000))
        .collect();
    let bytes = raw(&full);
    assert_eq!(bytes.len(), TABLE_MAX_LEN);
    assert_eq!(Table::parse(&bytes).unwrap().len(), MAX_ENTRIES);
    let mut out = [0u8; TABLE_MAX_LEN];
    assert_eq!(
        build(&full, &mut out),
        Err(PartitionError::TooManyEntries { count: 95, max: 94 })
    );
}

#[test]
fn rows_decode_one_at_a_time() {
    let bytes = built(&DEFAULT_TWO_OTA);
    let row = |i: usize| -> [u8; 32] { bytes[i * 32..(i + 1) * 32].try_into().unwrap() };
    assert_eq!(decode_row(&row(1)), Ok(Row::Entry(DEFAULT_TWO_OTA[1])));
    let Ok(Row::Md5(digest)) = decode_row(&row(6)) else {
        panic!("row 6 is the md5 row");
    };
    assert_eq!(hex(&digest), "bf25822c0fa6d8641bd930251e06b4c4");
    assert_eq!(decode_row(&row(7)), Ok(Row::End));
    assert_eq!(
        decode_row(&[0x12; 32]),
        Err(PartitionError::BadMagic {
            at: 0,
            found: [0x12, 0x12]
        })
    );
}

#[test]
fn streaming_reader_yields_the_entries_and_verifies_md5() {
    let bytes = built(&AIRLIFT_DEFAULT);
    let mut reader = TableReader::new();
    let mut entries = Vec::new();
    for chunk in bytes.chunks_exact(32) {
        if reader.is_done() {
            break;
        }
        if let Some(entry) = reader.push(chunk.try_into().unwrap()).unwrap() {
            entries.push(entry);
        }
    }
    assert!(reader.is_done());
    assert_eq!(entries, AIRLIFT_DEFAULT);
    assert_eq!(reader.md5_status(), Md5Status::Verified);
    assert_eq!(reader.entry_count(), 7);
    assert_eq!(
        OtaLayout::from_entries(entries).unwrap(),
        OtaLayout::from_entries(AIRLIFT_DEFAULT).unwrap()
    );
}

#[track_caller]
fn check_rejected(bytes: &[u8], expected: PartitionError) {
    assert_eq!(Table::parse(bytes), Err(expected));
}

#[test]
fn corrupted_tables_are_rejected_with_what_is_wrong() {
    let good = built(&DEFAULT_TWO_OTA);

    let mut bad_magic = good;
    bad_magic[64] = 0x7F;
    check_rejected(
        &bad_magic,
        PartitionError::BadMagic {
            at: 64,
            found: [0x7F, 0x50],
        },
    );

    let mut flipped = good;
    flipped[5 * 32 + 12] ^= 0x01; // a bit of ota_1's label
    let Err(PartitionError::Md5Mismatch { stored, computed }) = Table::parse(&flipped) else {
        panic!("expected an md5 mismatch");
    };
    assert_eq!(hex(&stored), "bf25822c0fa6d8641bd930251e06b4c4");
    assert_ne!(stored, computed);

    let mut filler = good;
    filler[6 * 32 + 5] = 0x00;
    check_rejected(&filler, PartitionError::BadMd5Row { at: 192 });

    let mut after_md5 = good.to_vec();
    after_md5[7 * 32..8 * 32].copy_from_slice(&DEFAULT_TWO_OTA[0].encode());
    check_rejected(&after_md5, PartitionError::EntryAfterMd5 { at: 224 });

    check_rejected(&good[..6 * 32], PartitionError::Truncated { len: 192 });
    check_rejected(&good[..7 * 32 + 5], PartitionError::Truncated { len: 229 });
    check_rejected(&[], PartitionError::Truncated { len: 0 });
}

#[test]
fn invalid_entry_sets_are_rejected_by_parse_and_by_build() {
    #[track_caller]
    fn check(entries: &[PartitionEntry], expected: PartitionError) {
        assert_eq!(Table::parse(&raw(entries)), Err(expected), "parse");
        let mut out = [0u8; TABLE_MAX_LEN];
        assert_eq!(build(entries, &mut out), Err(expected), "build");
    }
    let nvs = data("nvs", data_subtype::NVS, 0x9000, 0x4000);
    let otadata = data("otadata", data_subtype::OTA, 0xD000, 0x2000);

    check(
        &[nvs, data("nvs2", data_subtype::NVS, 0xC000, 0x1000)],
        PartitionError::Overlap {
            first: label("nvs"),
            first_end: 0xD000,
            second: label("nvs2"),
            second_offset: 0xC000,
        },
    );
    check(
        &[app("factory", app_subtype::FACTORY, 0x1_8000, 0x10_0000)],
        PartitionError::Misaligned {
            label: label("factory"),
            offset: 0x1_8000,
            align: 0x1_0000,
        },
    );
    check(
        &[data("nvs", data_subtype::NVS, 0x9800, 0x4000)],
        PartitionError::Misaligned {
            label: label("nvs"),
            offset: 0x9800,
            align: 0x1000,
        },
    );
    check(
        &[nvs, data("nvs", data_subtype::NVS, 0x10000, 0x1000)],
        PartitionError::DuplicateLabel {
            label: label("nvs"),
        },
    );
    check(
        &[otadata, data("otadata2", data_subtype::OTA, 0xF000, 0x2000)],
        PartitionError::DuplicateOtadata {
            label: label("otadata2"),
        },
    );
    check(
        &[data("otadata", data_subtype::OTA, 0xD000, 0x1000)],
        PartitionError::OtadataSize {
            label: label("otadata"),
            size: 0x1000,
        },
    );
    check(
        &[
            ota(0, 0x1_0000),
            app("again", app_subtype::OTA_0, 0x11_0000, 0x10_0000),
        ],
        PartitionError::DuplicateAppSubtype {
            subtype: 0x10,
            label: label("again"),
        },
    );
    check(
        &[ota(0, 0x1_0000), ota(2, 0x11_0000)],
        PartitionError::OtaSlotGap {
            missing: 1,
            present: 2,
        },
    );
    check(
        &[data("nvs", data_subtype::NVS, 0x9000, 0)],
        PartitionError::ZeroSize {
            label: label("nvs"),
        },
    );
    check(
        &[data("nvs", data_subtype::NVS, 0x8000, 0x1000)],
        PartitionError::BelowTableEnd {
            label: label("nvs"),
            offset: 0x8000,
        },
    );
    check(
        &[app("factory", app_subtype::FACTORY, 0x1_0000, 0x10_0800)],
        PartitionError::SizeNotSectors {
            label: label("factory"),
            size: 0x10_0800,
        },
    );
    check(
        &[data("big", 0x50, 0xFFFF_0000, 0x2_0000)],
        PartitionError::PastFlashEnd {
            label: label("big"),
            offset: 0xFFFF_0000,
            size: 0x2_0000,
        },
    );
    check(
        &[data("airlift", data_subtype::NVS, 0x9000, 0x1000)],
        PartitionError::AirliftPartitionType {
            kind: PartitionType::DATA,
            subtype: data_subtype::NVS,
        },
    );
    let non_utf8 = PartitionEntry {
        label: *b"bad\xff\0\0\0\0\0\0\0\0\0\0\0\0",
        ..nvs
    };
    check(
        &[non_utf8],
        PartitionError::BadLabel {
            label: non_utf8.label,
        },
    );
}

#[test]
fn too_many_entries_are_rejected() {
    let too_many: Vec<PartitionEntry> = (0..96u32)
        .map(|i| data(&format!("d{i}"), 0x50, 0x9000 + i * 0x1000, 0x1000))
        .collect();
    let rows: Vec<[u8; 32]> = too_many.iter().map(PartitionEntry::encode).collect();
    assert_eq!(
        Table::parse(&raw_table(&rows, false)),
        Err(PartitionError::TooManyEntries { count: 96, max: 95 })
    );
}

#[test]
fn bootloader_and_partition_table_descriptions_may_sit_below_the_table_end() {
    let entries = [
        entry("bootloader", PartitionType::BOOTLOADER, 0, 0x0, 0x8000),
        entry("pt", PartitionType::PARTITION_TABLE, 0, 0x8000, 0x1000),
        DEFAULT_TWO_OTA[0],
    ];
    assert_eq!(Table::parse(&built(&entries)).unwrap().len(), 3);
}

#[test]
fn errors_read_as_sentences_naming_the_partition() {
    let err = PartitionError::Overlap {
        first: label("ota_0"),
        first_end: 0x21_0000,
        second: label("ota_1"),
        second_offset: 0x20_0000,
    };
    assert_eq!(
        err.to_string(),
        "partition ota_1 starts at 0x200000, inside ota_0 which ends at 0x210000"
    );
    let err = PartitionError::BadMagic {
        at: 64,
        found: [0x7F, 0x45],
    };
    assert_eq!(
        err.to_string(),
        "not a partition table row at byte 64: magic is 7f 45, expected aa 50 (entry), eb eb (md5) or ff ff (end)"
    );
}

#[test]
fn streamed_layout_rejects_overlapping_engine_partitions() {
    // Each entry is valid on its own, so a device reading row by row
    // (TableReader) would accept them; the layout must not.
    let mut entries = AIRLIFT_DEFAULT;
    entries[6].offset = 0x30_0000; // airlift inside ota_1
    assert!(entries.iter().all(|e| e.validate().is_ok()));
    assert_eq!(
        OtaLayout::from_entries(entries),
        Err(PartitionError::RolesOverlap {
            first: "airlift",
            second: "ota_1"
        })
    );
    let mut entries = AIRLIFT_DEFAULT;
    entries[1].offset = 0x1_0000; // otadata inside factory
    assert_eq!(
        OtaLayout::from_entries(entries),
        Err(PartitionError::RolesOverlap {
            first: "otadata",
            second: "factory"
        })
    );
}
