#![allow(clippy::unwrap_used)]

//! otadata against ESP-IDF: the byte vectors from issue 2 and the
//! bootloader's slot choice (`bootloader_utility_get_selected_boot_partition`
//! built without app rollback), one line per case.

use airlift_format::otadata::{
    self, Activation, BootTarget, OtaSelectEntry, OtaState, OtadataError, active_entry, boot_slot,
    crc32_seq, decode_partition, plan_activation, rollback_bootloader_boot,
};

const BLANK: OtaSelectEntry = OtaSelectEntry::BLANK;

fn e(seq: u32, state: OtaState) -> OtaSelectEntry {
    OtaSelectEntry::new(seq, state)
}

/// An entry whose CRC does not match its sequence number (torn write, bit rot).
fn corrupt(seq: u32, state: OtaState) -> OtaSelectEntry {
    OtaSelectEntry {
        crc: crc32_seq(seq) ^ 0x0000_0100,
        ..OtaSelectEntry::new(seq, state)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn crc_of_sequence_numbers_matches_esp_rom_crc32_le() {
    for (seq, crc) in [
        (1, 0x4743_989A),
        (2, 0x55F6_3774),
        (3, 0xED4A_5011),
        (4, 0x709D_68A8),
    ] {
        assert_eq!(crc32_seq(seq), crc, "seq {seq}");
    }
}

#[test]
fn entry_for_seq_1_new_encodes_like_esp_idf() {
    let expected = format!("01000000{}000000009a984347", "ff".repeat(20));
    assert_eq!(hex(&e(1, OtaState::New).encode()), expected);
}

#[test]
fn blank_sector_decodes_to_an_erased_entry_that_is_never_valid() {
    let entry = OtaSelectEntry::decode(&[0xFF; otadata::ENTRY_LEN]);
    assert_eq!(entry.seq, 0xFFFF_FFFF);
    assert_eq!(entry.state, OtaState::Undefined);
    assert!(!entry.is_valid());
    assert_eq!(entry, BLANK);
}

#[test]
fn state_raw_values_round_trip_including_unknown_ones() {
    for (raw, state) in [
        (0, OtaState::New),
        (1, OtaState::PendingVerify),
        (2, OtaState::Valid),
        (3, OtaState::Invalid),
        (4, OtaState::Aborted),
        (0xFFFF_FFFF, OtaState::Undefined),
        (5, OtaState::Unknown(5)),
        (0x1234_5678, OtaState::Unknown(0x1234_5678)),
    ] {
        assert_eq!(OtaState::from_raw(raw), state, "raw {raw:#x}");
        assert_eq!(state.raw(), raw, "{state:?}");
    }
}

#[test]
fn every_byte_pattern_round_trips_through_decode_and_encode() {
    let mut bytes = [0u8; 32];
    let mut x: u32 = 0x9E37_79B9;
    for _ in 0..2000 {
        for b in bytes.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        assert_eq!(OtaSelectEntry::decode(&bytes).encode(), bytes);
    }
}

#[test]
fn validity_follows_bootloader_common_ota_select_valid() {
    #[track_caller]
    fn check(entry: OtaSelectEntry, valid: bool) {
        assert_eq!(entry.is_valid(), valid, "{entry:?}");
    }
    check(e(1, OtaState::New), true);
    check(e(1, OtaState::PendingVerify), true);
    check(e(7, OtaState::Valid), true);
    check(e(7, OtaState::Undefined), true);
    check(e(7, OtaState::Unknown(9)), true);
    check(e(0, OtaState::Valid), true); // ESP-IDF accepts seq 0 (slot arithmetic wraps)
    check(e(7, OtaState::Invalid), false);
    check(e(7, OtaState::Aborted), false);
    check(corrupt(7, OtaState::Valid), false);
    check(e(0xFFFF_FFFF, OtaState::Valid), false);
    check(BLANK, false);
}

/// `(entry 0, entry 1, ota app count) -> what ESP-IDF's bootloader boots`.
#[track_caller]
fn check_boot(entries: [OtaSelectEntry; 2], count: u8, expected: BootTarget) {
    assert_eq!(
        boot_slot(&entries, count),
        expected,
        "{entries:?} with {count} slots"
    );
}

#[test]
fn blank_otadata_boots_the_fallback() {
    check_boot([BLANK, BLANK], 2, BootTarget::Fallback);
    check_boot([BLANK, BLANK], 8, BootTarget::Fallback);
}

#[test]
fn one_valid_copy_decides_alone() {
    use OtaState::*;
    check_boot([e(1, New), BLANK], 2, BootTarget::Ota(0));
    check_boot([BLANK, e(2, Undefined)], 2, BootTarget::Ota(1));
    check_boot([e(5, Valid), e(9, Invalid)], 2, BootTarget::Ota(0));
    check_boot([e(9, Aborted), e(4, Valid)], 3, BootTarget::Ota(0));
    check_boot([corrupt(9, Valid), e(4, Valid)], 2, BootTarget::Ota(1));
    check_boot([e(4, Valid), corrupt(9, Valid)], 2, BootTarget::Ota(1));
}

#[test]
fn both_valid_the_higher_sequence_wins_and_copy_0_wins_ties() {
    use OtaState::*;
    check_boot([e(1, Valid), e(2, Valid)], 2, BootTarget::Ota(1));
    check_boot([e(3, Valid), e(2, Valid)], 2, BootTarget::Ota(0));
    check_boot([e(10, Valid), e(11, New)], 2, BootTarget::Ota(0));
    assert_eq!(active_entry(&[e(3, Valid), e(3, New)]), Some(0));
    assert_eq!(active_entry(&[e(2, Valid), e(3, New)]), Some(1));
}

#[test]
fn corrupt_crc_copies_are_ignored() {
    use OtaState::*;
    check_boot([corrupt(2, Valid), e(1, Valid)], 2, BootTarget::Ota(0));
    check_boot(
        [corrupt(1, Valid), corrupt(2, Valid)],
        2,
        BootTarget::Fallback,
    );
    check_boot([corrupt(1, Valid), BLANK], 2, BootTarget::Fallback);
}

#[test]
fn invalid_and_aborted_copies_are_skipped_even_with_a_higher_sequence() {
    use OtaState::*;
    check_boot([e(1, Valid), e(2, Invalid)], 2, BootTarget::Ota(0));
    check_boot([e(3, Aborted), e(2, Valid)], 2, BootTarget::Ota(1));
    check_boot([e(3, Aborted), e(4, Invalid)], 2, BootTarget::Fallback);
}

#[test]
fn slot_is_sequence_minus_one_modulo_the_slot_count() {
    use OtaState::Valid;
    // 2 slots
    check_boot([e(1, Valid), BLANK], 2, BootTarget::Ota(0));
    check_boot([e(2, Valid), BLANK], 2, BootTarget::Ota(1));
    check_boot([e(3, Valid), BLANK], 2, BootTarget::Ota(0));
    check_boot([e(100, Valid), BLANK], 2, BootTarget::Ota(1));
    // 3 slots
    check_boot([e(3, Valid), BLANK], 3, BootTarget::Ota(2));
    check_boot([e(4, Valid), BLANK], 3, BootTarget::Ota(0));
    check_boot([e(5, Valid), e(6, Valid)], 3, BootTarget::Ota(2));
    check_boot([e(8, Valid), e(6, Valid)], 3, BootTarget::Ota(1));
    // 8 slots (the example in esp_ota_ops.c: seq 5 of 8 boots ota_4)
    check_boot([e(4, Valid), e(5, Valid)], 8, BootTarget::Ota(4));
    check_boot([e(8, Valid), BLANK], 8, BootTarget::Ota(7));
    check_boot([e(9, Valid), BLANK], 8, BootTarget::Ota(0));
    check_boot([BLANK, e(0xFFFF_FFFE, Valid)], 8, BootTarget::Ota(5));
    // seq 0 is valid to ESP-IDF; (0 - 1) wraps to 0xFFFFFFFF.
    check_boot([e(0, Valid), BLANK], 2, BootTarget::Ota(1));
    check_boot([e(0, Valid), BLANK], 3, BootTarget::Ota(0));
}

#[test]
fn no_ota_slots_boots_the_fallback() {
    check_boot([e(1, OtaState::Valid), BLANK], 0, BootTarget::Fallback);
}

/// `(entries, slot, count) -> (copy written, seq written)`.
#[track_caller]
fn check_plan(entries: [OtaSelectEntry; 2], slot: u8, count: u8, copy: usize, seq: u32) {
    let plan = plan_activation(&entries, slot, count, OtaState::Undefined).unwrap();
    assert_eq!(
        plan,
        Activation {
            copy,
            entry: e(seq, OtaState::Undefined)
        },
        "{entries:?} -> ota_{slot} of {count}"
    );
}

#[test]
fn activation_picks_the_next_sequence_for_the_slot_like_esp_ota_set_boot_partition() {
    use OtaState::*;
    // First activation on blank otadata: seq slot + 1 into copy 0.
    check_plan([BLANK, BLANK], 0, 2, 0, 1);
    check_plan([BLANK, BLANK], 1, 2, 0, 2);
    check_plan([BLANK, BLANK], 5, 8, 0, 6);
    check_plan([corrupt(4, Valid), BLANK], 1, 2, 0, 2);
    // Switching slots: the other copy, next matching sequence.
    check_plan([e(1, Valid), BLANK], 1, 2, 1, 2);
    check_plan([e(1, Valid), e(2, Valid)], 0, 2, 0, 3);
    check_plan([e(3, Valid), e(2, Valid)], 1, 2, 1, 4);
    check_plan([e(5, Valid), e(4, Valid)], 2, 3, 1, 6);
    check_plan([e(5, Valid), e(4, Valid)], 0, 3, 1, 7);
    check_plan([e(4, Valid), e(5, Valid)], 2, 8, 0, 11);
    check_plan([e(4, Valid), e(5, Valid)], 7, 8, 0, 8);
    // INVALID or ABORTED copies do not count as active.
    check_plan([e(1, Valid), e(2, Invalid)], 1, 2, 1, 2);
    check_plan([e(3, Aborted), e(2, Valid)], 0, 2, 0, 3);
}

#[test]
fn reselecting_the_running_slot_moves_forward_by_one_round() {
    // ESP-IDF would rewrite the same sequence number; Airlift advances so the
    // new entry (e.g. the same slot marked VALID) wins from the other copy.
    check_plan([e(2, OtaState::Undefined), BLANK], 1, 2, 1, 4);
    check_plan([e(1, OtaState::Valid), e(2, OtaState::Valid)], 1, 3, 0, 5);
}

#[test]
fn activation_never_writes_the_active_copy_and_the_result_boots_the_slot() {
    let states = [
        OtaState::New,
        OtaState::Valid,
        OtaState::Invalid,
        OtaState::Aborted,
        OtaState::Undefined,
    ];
    let mut candidates = vec![BLANK];
    for seq in [0, 1, 2, 3, 5, 8, 17, 0xFFFF_FFF0] {
        for state in states {
            candidates.push(e(seq, state));
            candidates.push(corrupt(seq, state));
        }
    }
    for count in [1u8, 2, 3, 8, 16] {
        for a in &candidates {
            for b in &candidates {
                let entries = [*a, *b];
                for slot in 0..count {
                    let plan = match plan_activation(&entries, slot, count, OtaState::New) {
                        Ok(plan) => plan,
                        Err(OtadataError::SequenceExhausted { current }) => {
                            assert!(current > u32::MAX - 2 * u32::from(count), "{entries:?}");
                            continue;
                        }
                        Err(other) => panic!("{other}"),
                    };
                    if let Some(active) = active_entry(&entries) {
                        assert_ne!(plan.copy, active, "{entries:?} slot {slot}");
                        assert!(plan.entry.seq > entries[active].seq);
                    }
                    let mut after = entries;
                    after[plan.copy] = plan.entry;
                    assert_eq!(active_entry(&after), Some(plan.copy));
                    assert_eq!(boot_slot(&after, count), BootTarget::Ota(slot));
                }
            }
        }
    }
}

#[test]
fn activation_rejects_a_slot_the_table_does_not_have() {
    assert_eq!(
        plan_activation(&[BLANK, BLANK], 2, 2, OtaState::New),
        Err(OtadataError::SlotOutOfRange {
            slot: 2,
            ota_app_count: 2
        })
    );
    assert!(plan_activation(&[BLANK, BLANK], 0, 0, OtaState::New).is_err());
}

#[test]
fn activation_refuses_to_reach_the_erased_sequence_number() {
    let entries = [e(0xFFFF_FFFE, OtaState::Valid), BLANK];
    assert_eq!(
        plan_activation(&entries, 0, 2, OtaState::New),
        Err(OtadataError::SequenceExhausted {
            current: 0xFFFF_FFFE
        })
    );
    // The last usable sequence number is still reachable.
    let entries = [e(0xFFFF_FFFC, OtaState::Valid), BLANK];
    assert_eq!(
        plan_activation(&entries, 1, 2, OtaState::New)
            .unwrap()
            .entry
            .seq,
        0xFFFF_FFFE
    );
}

#[test]
fn rollback_bootloader_aborts_an_unconfirmed_image_on_its_second_boot() {
    let mut entries = [e(1, OtaState::Valid), e(2, OtaState::New)];
    let first = rollback_bootloader_boot(&mut entries, 2);
    assert_eq!(first.target, BootTarget::Ota(1));
    assert_eq!(first.rewritten, [false, true]);
    assert_eq!(entries[1].state, OtaState::PendingVerify);

    let second = rollback_bootloader_boot(&mut entries, 2);
    assert_eq!(second.target, BootTarget::Ota(0));
    assert_eq!(second.rewritten, [false, true]);
    assert_eq!(entries[1].state, OtaState::Aborted);
}

#[test]
fn rollback_bootloader_leaves_undefined_and_valid_entries_alone() {
    for state in [OtaState::Undefined, OtaState::Valid] {
        let mut entries = [e(1, OtaState::Valid), e(2, state)];
        let before = entries;
        for _ in 0..3 {
            let boot = rollback_bootloader_boot(&mut entries, 2);
            assert_eq!(boot.target, BootTarget::Ota(1));
            assert_eq!(boot.rewritten, [false, false]);
        }
        assert_eq!(entries, before);
    }
}

#[test]
fn partition_decodes_one_entry_per_sector() {
    let mut part = vec![0xFFu8; 0x2000];
    part[..32].copy_from_slice(&e(3, OtaState::Valid).encode());
    part[0x1000..0x1020].copy_from_slice(&e(4, OtaState::New).encode());
    assert_eq!(
        decode_partition(&part).unwrap(),
        [e(3, OtaState::Valid), e(4, OtaState::New)]
    );
    assert_eq!(
        decode_partition(&part[..0x1000]),
        Err(OtadataError::TooShort { len: 0x1000 })
    );
}
