#![allow(clippy::unwrap_used)]
//! CSV partition tables in `gen_esp32part.py`'s syntax.

use airlift_format::partition::{
    AIRLIFT_DEFAULT, CsvError, DEFAULT_TWO_OTA, FIRMWARE_4MB, FLAG_ENCRYPTED, FLAG_READONLY,
    LineProblem, OtaLayout, PartitionEntry, PartitionError, PartitionType, app_subtype,
    data_subtype, label_from_str, parse_csv, render_csv,
};

fn entry(
    name: &str,
    kind: PartitionType,
    subtype: u8,
    offset: u32,
    size: u32,
    flags: u32,
) -> PartitionEntry {
    PartitionEntry::new(name, kind, subtype, offset, size, flags).unwrap()
}

#[track_caller]
fn check(csv: &str, expected: &[PartitionEntry]) {
    assert_eq!(parse_csv(csv).unwrap(), expected, "{csv}");
}

#[track_caller]
fn check_error(csv: &str, line: usize, problem: LineProblem) {
    assert_eq!(
        parse_csv(csv),
        Err(CsvError::Line { line, problem }),
        "{csv}"
    );
}

const DATA: PartitionType = PartitionType::DATA;
const APP: PartitionType = PartitionType::APP;

#[test]
fn names_and_numbers_are_accepted_for_types_subtypes_offsets_and_sizes() {
    check(
        "nvs, data, nvs, 0x9000, 0x4000,",
        &[entry("nvs", DATA, data_subtype::NVS, 0x9000, 0x4000, 0)],
    );
    check(
        "nvs, 1, 2, 36864, 16384",
        &[entry("nvs", DATA, data_subtype::NVS, 0x9000, 0x4000, 0)],
    );
    check(
        "fs, data, spiffs, 0x10000, 64K",
        &[entry(
            "fs",
            DATA,
            data_subtype::SPIFFS,
            0x1_0000,
            0x1_0000,
            0,
        )],
    );
    check(
        "lfs, data, littlefs, , 0x2k",
        &[entry("lfs", DATA, data_subtype::LITTLEFS, 0x9000, 0x800, 0)],
    );
    check(
        "app, app, ota_0, , 2m",
        &[entry(
            "app",
            APP,
            app_subtype::OTA_0,
            0x1_0000,
            0x20_0000,
            0,
        )],
    );
    check(
        "mine, 0x40, 0x07, 0x20000, 4K",
        &[entry(
            "mine",
            PartitionType(0x40),
            0x07,
            0x2_0000,
            0x1000,
            0,
        )],
    );
    check("airlift, data, 0x40, 0x310000, 64K", &[AIRLIFT_DEFAULT[6]]);
}

#[test]
fn empty_offsets_follow_the_previous_partition_with_type_alignment() {
    check(
        "a, data, nvs, , 0x1800\nb, data, phy, , 0x1000\nc, app, factory, , 1M\nd, data, fat, , 4K",
        &[
            entry("a", DATA, data_subtype::NVS, 0x9000, 0x1800, 0),
            entry("b", DATA, data_subtype::PHY, 0xB000, 0x1000, 0),
            entry("c", APP, app_subtype::FACTORY, 0x1_0000, 0x10_0000, 0),
            entry("d", DATA, data_subtype::FAT, 0x11_0000, 0x1000, 0),
        ],
    );
}

#[test]
fn comments_blank_lines_and_spacing_are_ignored() {
    check(
        "# header\n\n   \n  nvs ,data,nvs,0x9000,0x4000  \n# trailing comment\n",
        &[entry("nvs", DATA, data_subtype::NVS, 0x9000, 0x4000, 0)],
    );
    check("# only comments\n", &[]);
}

#[test]
fn an_empty_data_subtype_means_undefined() {
    check(
        "blob, data, , 0x9000, 4K",
        &[entry(
            "blob",
            DATA,
            data_subtype::UNDEFINED,
            0x9000,
            0x1000,
            0,
        )],
    );
}

#[test]
fn flags_are_parsed() {
    check(
        "nvs, data, nvs, 0x9000, 4K, encrypted",
        &[entry("nvs", DATA, 2, 0x9000, 0x1000, FLAG_ENCRYPTED)],
    );
    check(
        "nvs, data, nvs, 0x9000, 4K, encrypted:readonly",
        &[entry(
            "nvs",
            DATA,
            2,
            0x9000,
            0x1000,
            FLAG_ENCRYPTED | FLAG_READONLY,
        )],
    );
    check(
        "nvs, data, nvs, 0x9000, 4K, readonly : 0x100",
        &[entry("nvs", DATA, 2, 0x9000, 0x1000, FLAG_READONLY | 0x100)],
    );
}

#[test]
fn bad_lines_are_reported_with_their_line_number() {
    let ok = "nvs, data, nvs, 0x9000, 0x4000\n";
    check_error(
        &format!("{ok}x, dtaa, nvs, , 4K"),
        2,
        LineProblem::UnknownType("dtaa".into()),
    );
    check_error(
        &format!("# c\n{ok}x, data, nvss, , 4K"),
        3,
        LineProblem::UnknownSubtype("nvss".into()),
    );
    check_error(
        "x, app, ota_16, , 1M",
        1,
        LineProblem::UnknownSubtype("ota_16".into()),
    );
    check_error(
        "x, data, nvs, 0x9000, 12Q",
        1,
        LineProblem::BadNumber {
            column: "size",
            value: "12Q".into(),
        },
    );
    check_error(
        "x, data, nvs, 0x1_0000_0000, 4K",
        1,
        LineProblem::BadNumber {
            column: "offset",
            value: "0x1_0000_0000".into(),
        },
    );
    check_error("x, data, nvs, 0x9000,", 1, LineProblem::Missing("size"));
    check_error("x, , nvs, 0x9000, 4K", 1, LineProblem::Missing("type"));
    check_error("x, app, , , 1M", 1, LineProblem::Missing("subtype"));
    check_error(
        "x, data, nvs, 0x9000, 4K, secret",
        1,
        LineProblem::UnknownFlag("secret".into()),
    );
    check_error(
        "seventeen_chars_x, data, nvs, 0x9000, 4K",
        1,
        LineProblem::NameTooLong("seventeen_chars_x".into()),
    );
    check_error(
        "x, data, nvs, 0x9000, 4K, , extra",
        1,
        LineProblem::TooManyColumns(7),
    );
    check_error(
        &format!("{ok}y, data, phy, 0xc000, 4K"),
        2,
        LineProblem::OffsetBelowPrevious {
            offset: 0xC000,
            previous_end: 0xD000,
        },
    );
    check_error(
        "x, data, nvs, 0x8000, 4K",
        1,
        LineProblem::OffsetBelowPrevious {
            offset: 0x8000,
            previous_end: 0x9000,
        },
    );
    check_error(
        "x, app, factory, 0x18000, 1M",
        1,
        LineProblem::Entry(PartitionError::Misaligned {
            label: label_from_str("x").unwrap(),
            offset: 0x1_8000,
            align: 0x1_0000,
        }),
    );
}

#[test]
fn problems_across_lines_are_reported_as_table_errors() {
    assert_eq!(
        parse_csv("a, data, nvs, , 4K\na, data, phy, , 4K"),
        Err(CsvError::Table(PartitionError::DuplicateLabel {
            label: label_from_str("a").unwrap()
        }))
    );
    assert_eq!(
        parse_csv("ota_1, app, ota_1, , 1M"),
        Err(CsvError::Table(PartitionError::OtaSlotGap {
            missing: 0,
            present: 1
        }))
    );
}

#[test]
fn error_messages_start_with_the_line() {
    let err = parse_csv("nvs, data, nvs, 0x9000, 0x4000\nx, dtaa, nvs, , 4K").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 2: unknown type \"dtaa\": expected app, data, bootloader, partition_table or a number below 0xff"
    );
}

#[test]
fn render_writes_gen_esp32part_style_csv() {
    assert_eq!(
        render_csv(&AIRLIFT_DEFAULT),
        "# ESP-IDF Partition Table\n\
         # Name, Type, SubType, Offset, Size, Flags\n\
         nvs,data,nvs,0x9000,16K,\n\
         otadata,data,ota,0xd000,8K,\n\
         phy_init,data,phy,0xf000,4K,\n\
         factory,app,factory,0x10000,1M,\n\
         ota_0,app,ota_0,0x110000,1M,\n\
         ota_1,app,ota_1,0x210000,1M,\n\
         airlift,data,0x40,0x310000,64K,\n"
    );
}

#[test]
fn parse_of_render_gives_back_the_entries() {
    let odd = [
        entry(
            "a",
            DATA,
            data_subtype::NVS,
            0x9000,
            0x1234,
            FLAG_ENCRYPTED | 0x40,
        ),
        entry(
            "b",
            PartitionType(0x99),
            0xEE,
            0xB000,
            0x1000,
            FLAG_READONLY,
        ),
    ];
    for entries in [&DEFAULT_TWO_OTA[..], &AIRLIFT_DEFAULT[..], &odd[..], &[]] {
        assert_eq!(parse_csv(&render_csv(entries)).unwrap(), entries);
    }
}

#[test]
fn the_firmware_csv_is_the_firmware_4mb_layout_with_two_one_and_a_half_mib_slots() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../firmware/partitions.csv");
    let csv = std::fs::read_to_string(path).unwrap();
    assert_eq!(parse_csv(&csv).unwrap(), FIRMWARE_4MB);
    let layout = OtaLayout::from_entries(FIRMWARE_4MB.iter().copied()).unwrap();
    assert_eq!(layout.app_count, 2);
    assert_eq!(layout.factory, None);
    assert_eq!(layout.slots[0], Some((0x1_0000, 1536 * 1024)));
    assert_eq!(layout.slots[1], Some((0x19_0000, 1536 * 1024)));
    assert_eq!(layout.otadata, Some((0xD000, 0x2000)));
    assert_eq!(layout.airlift_data, Some((0x31_0000, 0x1_0000)));
    let end = FIRMWARE_4MB
        .iter()
        .map(|e| e.offset + e.size)
        .max()
        .unwrap();
    assert!(end <= 4 * 1024 * 1024, "fits 4 MiB: ends at {end:#x}");
}
