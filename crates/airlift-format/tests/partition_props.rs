#![allow(clippy::unwrap_used)]
//! Property tests: the partition and otadata parsers never panic on random or
//! mutated input and give typed errors; valid tables round-trip.

use airlift_format::otadata::{self, OtaSelectEntry, OtaState};
use airlift_format::partition::{
    AIRLIFT_DEFAULT, CsvError, OtaLayout, PartitionEntry, PartitionType, TABLE_MAX_LEN, Table,
    TableReader, app_subtype, build, parse_csv, render_csv,
};
use proptest::prelude::*;

/// One generated partition: app or data, size and gap in sectors, flags, label suffix.
type Spec = (bool, u32, u32, u32, u8, String);

fn spec() -> impl Strategy<Value = Spec> {
    (
        any::<bool>(),
        1u32..64,
        0u32..8,
        0u32..4,
        prop::sample::select(vec![
            0x01u8, 0x02, 0x03, 0x04, 0x06, 0x40, 0x41, 0x80, 0x81, 0x82, 0x83, 0xFE,
        ]),
        "[a-z0-9_]{0,10}",
    )
}

/// Lays specs out as a valid table: increasing offsets, aligned, apps as
/// contiguous OTA slots, unique labels.
fn layout(specs: &[Spec]) -> Vec<PartitionEntry> {
    let mut cursor: u64 = 0x9000;
    let mut slots = 0u8;
    let mut entries = Vec::new();
    for (i, (is_app, sectors, gap, flags, data_subtype, suffix)) in specs.iter().enumerate() {
        let is_app = *is_app && slots < 16;
        let (kind, subtype, align) = if is_app {
            slots += 1;
            (
                PartitionType::APP,
                app_subtype::OTA_0 + slots - 1,
                0x1_0000u64,
            )
        } else {
            (PartitionType::DATA, *data_subtype, 0x1000u64)
        };
        let offset = (cursor + u64::from(*gap) * 0x1000).div_ceil(align) * align;
        let size = u64::from(*sectors) * 0x1000;
        cursor = offset + size;
        let label = format!("p{i}_{suffix}");
        entries.push(
            PartitionEntry::new(&label, kind, subtype, offset as u32, size as u32, *flags).unwrap(),
        );
    }
    entries
}

fn table_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(spec(), 0..20).prop_map(|specs| {
        let mut out = [0u8; TABLE_MAX_LEN];
        build(&layout(&specs), &mut out).unwrap();
        out.to_vec()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_the_table_parser(bytes in prop::collection::vec(any::<u8>(), 0..3200)) {
        if let Err(err) = Table::parse(&bytes) {
            prop_assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn random_rows_with_valid_magic_never_panic(rows in prop::collection::vec(any::<[u8; 32]>(), 0..100), kinds in prop::collection::vec(0u8..4, 100)) {
        let mut bytes = Vec::new();
        for (row, kind) in rows.iter().zip(kinds) {
            let mut row = *row;
            match kind {
                0 => row[..2].copy_from_slice(&[0xAA, 0x50]),
                1 => row[..2].copy_from_slice(&[0xEB, 0xEB]),
                2 => row = [0xFF; 32],
                _ => {}
            }
            bytes.extend_from_slice(&row);
        }
        let _ = Table::parse(&bytes);
        let mut reader = TableReader::new();
        for row in &rows {
            if reader.push(row).is_err() || reader.is_done() {
                break;
            }
        }
    }

    #[test]
    fn mutated_tables_never_panic_and_corruption_of_entries_is_detected(
        bytes in table_bytes(),
        flips in prop::collection::vec((0usize..TABLE_MAX_LEN, 1u8..=255), 1..4),
    ) {
        let original = Table::parse(&bytes).unwrap().iter().collect::<Vec<_>>();
        let mut mutated = bytes.clone();
        for (at, mask) in &flips {
            mutated[*at] ^= mask;
        }
        if let Ok(table) = Table::parse(&mutated) {
            // The MD5 row guards every entry byte: a table that still parses
            // with an MD5 row has the original entries (the flips landed in
            // padding or turned the MD5 row into the end row).
            let entries: Vec<_> = table.iter().collect();
            if table.md5_status() == airlift_format::partition::Md5Status::Verified {
                prop_assert_eq!(entries, original);
            }
        }
    }

    #[test]
    fn valid_tables_round_trip_through_binary_and_csv(specs in prop::collection::vec(spec(), 0..40)) {
        let entries = layout(&specs);
        let mut out = [0u8; TABLE_MAX_LEN];
        build(&entries, &mut out).unwrap();
        let table = Table::parse(&out).unwrap();
        prop_assert_eq!(table.iter().collect::<Vec<_>>(), entries.clone());
        prop_assert_eq!(parse_csv(&render_csv(&entries)).unwrap(), entries.clone());
        let layout = OtaLayout::from_entries(entries.iter().copied()).unwrap();
        let apps = entries.iter().filter(|e| e.kind == PartitionType::APP).count();
        prop_assert_eq!(usize::from(layout.app_count), apps);
    }

    #[test]
    fn random_text_never_panics_the_csv_parser(text in "\\PC{0,300}") {
        let _ = parse_csv(&text);
    }

    #[test]
    fn mutated_csv_never_panics_and_errors_name_an_existing_line(
        specs in prop::collection::vec(spec(), 1..12),
        edits in prop::collection::vec((any::<prop::sample::Index>(), prop::sample::select(vec![",", "", "x", "0x", "M", "#", "\n", "ota_3", "app", " ", "-1", "99999999999"])), 1..6),
    ) {
        let mut text = render_csv(&layout(&specs));
        for (index, insert) in &edits {
            let at = index.index(text.len() + 1);
            if text.is_char_boundary(at) {
                let end = (at + 2).min(text.len());
                let end = if text.is_char_boundary(end) { end } else { at };
                text.replace_range(at..end, insert);
            }
        }
        match parse_csv(&text) {
            Ok(entries) => {
                let mut out = [0u8; TABLE_MAX_LEN];
                prop_assert!(build(&entries, &mut out).is_ok());
            }
            Err(CsvError::Line { line, .. }) => {
                prop_assert!(line >= 1 && line <= text.lines().count());
            }
            Err(CsvError::Table(_)) => {}
        }
    }

    #[test]
    fn otadata_entries_round_trip_and_slot_choice_never_panics(
        a in any::<[u8; 32]>(),
        b in any::<[u8; 32]>(),
        count in 0u8..=16,
        slot in 0u8..=16,
        state in any::<u32>(),
    ) {
        let entries = [OtaSelectEntry::decode(&a), OtaSelectEntry::decode(&b)];
        prop_assert_eq!(entries[0].encode(), a);
        let target = otadata::boot_slot(&entries, count);
        if let otadata::BootTarget::Ota(n) = target {
            prop_assert!(n < count);
        }
        if let Ok(plan) = otadata::plan_activation(&entries, slot, count, OtaState::from_raw(state)) {
            prop_assert_ne!(Some(plan.copy), otadata::active_entry(&entries));
            let mut after = entries;
            after[plan.copy] = plan.entry;
            prop_assert_eq!(otadata::boot_slot(&after, count), otadata::BootTarget::Ota(slot));
        }
    }
}

#[test]
fn every_single_bit_flip_in_a_built_table_is_detected() {
    let mut out = [0u8; TABLE_MAX_LEN];
    let used = build(&AIRLIFT_DEFAULT, &mut out).unwrap();
    for at in 0..used {
        for bit in 0..8 {
            let mut mutated = out;
            mutated[at] ^= 1 << bit;
            let result = Table::parse(&mutated);
            assert!(
                result.is_err(),
                "flip of bit {bit} at byte {at} was not detected"
            );
        }
    }
}
