//! ESP-IDF otadata: `esp_ota_select_entry_t` and the bootloader's slot choice.
//!
//! The otadata partition (type data, subtype ota, normally 8 KiB at 0xd000)
//! holds two copies of a 32-byte [`OtaSelectEntry`], one at the start of each
//! 4 KiB sector. The copy with the highest valid sequence number wins and the
//! app slot it selects is `(seq - 1) % ota_app_count`. Everything here mirrors
//! a named ESP-IDF function (v5.x: `components/bootloader_support/src/
//! bootloader_common.c`, `bootloader_utility.c`, `components/app_update/
//! esp_ota_ops.c`) so that an ESP-IDF bootloader boots what Airlift selects
//! and Airlift reads what ESP-IDF wrote.
//!
//! # The two bootloaders
//!
//! Airlift targets the bootloader built **without**
//! `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE` (the esp-rs / espflash default):
//! it only reads otadata and never writes it, so the state field is ignored
//! except that INVALID and ABORTED entries are skipped ([`boot_slot`]).
//!
//! The bootloader built **with** app rollback also rewrites otadata on every
//! boot ([`rollback_bootloader_boot`]): each PENDING_VERIFY copy becomes
//! ABORTED, then a NEW active copy becomes PENDING_VERIFY. An image activated
//! in state NEW therefore gets exactly one unconfirmed boot before that
//! bootloader abandons it. Activating in state [`OtaState::Undefined`] (what
//! `esp_ota_set_boot_partition` itself writes when rollback is disabled)
//! makes both bootloaders behave identically: neither touches the entry,
//! and Airlift's own boot guard decides about rollback.
//!
//! The anti-rollback bootloader (`CONFIG_BOOTLOADER_APP_ANTI_ROLLBACK`)
//! additionally compares security versions when choosing; that is not
//! modelled here.

use core::fmt;

/// Size of one encoded `esp_ota_select_entry_t`.
pub const ENTRY_LEN: usize = 32;

/// Size of one otadata copy: each entry sits at the start of its own sector.
pub const SECTOR_SIZE: u32 = 0x1000;

/// Size of a complete otadata partition (two sectors).
pub const PARTITION_LEN: u32 = 2 * SECTOR_SIZE;

/// Sequence number of an erased (never written) entry.
pub const BLANK_SEQ: u32 = u32::MAX;

/// `esp_ota_img_states_t`: the state of the image an entry selects.
///
/// Raw values that ESP-IDF does not define stay representable as
/// [`OtaState::Unknown`] so decode/encode round-trips every byte pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtaState {
    /// `ESP_OTA_IMG_NEW` (0): selected, not yet booted.
    New,
    /// `ESP_OTA_IMG_PENDING_VERIFY` (1): booted once, not yet confirmed.
    PendingVerify,
    /// `ESP_OTA_IMG_VALID` (2): confirmed by the app.
    Valid,
    /// `ESP_OTA_IMG_INVALID` (3): rejected; the bootloader skips the entry.
    Invalid,
    /// `ESP_OTA_IMG_ABORTED` (4): abandoned by the rollback bootloader; skipped.
    Aborted,
    /// `ESP_OTA_IMG_UNDEFINED` (0xFFFFFFFF): no state tracking.
    Undefined,
    /// Any other raw value.
    Unknown(u32),
}

impl OtaState {
    /// Decodes a raw `ota_state` word.
    pub const fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Self::New,
            1 => Self::PendingVerify,
            2 => Self::Valid,
            3 => Self::Invalid,
            4 => Self::Aborted,
            u32::MAX => Self::Undefined,
            other => Self::Unknown(other),
        }
    }

    /// The raw `ota_state` word.
    pub const fn raw(self) -> u32 {
        match self {
            Self::New => 0,
            Self::PendingVerify => 1,
            Self::Valid => 2,
            Self::Invalid => 3,
            Self::Aborted => 4,
            Self::Undefined => u32::MAX,
            Self::Unknown(raw) => raw,
        }
    }

    /// ESP-IDF's name for the state (`"NEW"`, `"PENDING_VERIFY"`, ...;
    /// `"UNKNOWN"` for values it does not define).
    pub const fn name(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::PendingVerify => "PENDING_VERIFY",
            Self::Valid => "VALID",
            Self::Invalid => "INVALID",
            Self::Aborted => "ABORTED",
            Self::Undefined => "UNDEFINED",
            Self::Unknown(_) => "UNKNOWN",
        }
    }
}

impl fmt::Display for OtaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(raw) => write!(f, "UNKNOWN(0x{raw:08x})"),
            other => f.write_str(other.name()),
        }
    }
}

/// CRC-32 of a sequence number exactly as ESP-IDF computes it:
/// `bootloader_common_ota_select_crc`, i.e.
/// `esp_rom_crc32_le(UINT32_MAX, &ota_seq, 4)` over the little-endian bytes.
///
/// The ROM routine inverts its seed on entry and the result on exit, so this
/// is reflected CRC-32 (polynomial 0xEDB88320) with initial register 0 and
/// final XOR 0xFFFFFFFF.
pub const fn crc32_seq(seq: u32) -> u32 {
    let bytes = seq.to_le_bytes();
    let mut crc: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        crc ^= bytes[i] as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        i += 1;
    }
    !crc
}

/// One `esp_ota_select_entry_t`: `{ ota_seq: u32, seq_label: [u8; 20],
/// ota_state: u32, crc: u32 }`, little endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OtaSelectEntry {
    /// `ota_seq`: 1-based, ever-increasing; `0xFFFFFFFF` when erased.
    pub seq: u32,
    /// `seq_label`: unused by ESP-IDF (left erased, all 0xFF).
    pub label: [u8; 20],
    /// `ota_state`.
    pub state: OtaState,
    /// `crc`: [`crc32_seq`] of `seq` when the entry was written.
    pub crc: u32,
}

impl OtaSelectEntry {
    /// An erased entry: all bytes 0xFF, as a blank sector decodes.
    pub const BLANK: Self = Self::decode(&[0xFF; ENTRY_LEN]);

    /// A freshly written entry: label erased, CRC computed from `seq`.
    pub const fn new(seq: u32, state: OtaState) -> Self {
        Self {
            seq,
            label: [0xFF; 20],
            state,
            crc: crc32_seq(seq),
        }
    }

    /// The 32 bytes ESP-IDF stores.
    pub const fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        let seq = self.seq.to_le_bytes();
        let state = self.state.raw().to_le_bytes();
        let crc = self.crc.to_le_bytes();
        let mut i = 0;
        while i < 4 {
            out[i] = seq[i];
            out[24 + i] = state[i];
            out[28 + i] = crc[i];
            i += 1;
        }
        let mut j = 0;
        while j < 20 {
            out[4 + j] = self.label[j];
            j += 1;
        }
        out
    }

    /// Decodes 32 stored bytes. Never fails: every byte pattern is an entry
    /// (a blank sector decodes to seq 0xFFFFFFFF, which is never valid).
    pub const fn decode(bytes: &[u8; ENTRY_LEN]) -> Self {
        let mut label = [0u8; 20];
        let mut j = 0;
        while j < 20 {
            label[j] = bytes[4 + j];
            j += 1;
        }
        Self {
            seq: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            label,
            state: OtaState::from_raw(u32::from_le_bytes([
                bytes[24], bytes[25], bytes[26], bytes[27],
            ])),
            crc: u32::from_le_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]),
        }
    }

    /// Whether the stored CRC matches the sequence number.
    pub const fn crc_ok(&self) -> bool {
        self.crc == crc32_seq(self.seq)
    }

    /// Whether the entry is erased or explicitly rejected, ignoring the CRC:
    /// `bootloader_common_ota_select_invalid`.
    pub const fn is_invalid(&self) -> bool {
        self.seq == BLANK_SEQ || matches!(self.state, OtaState::Invalid | OtaState::Aborted)
    }

    /// Whether the bootloader may pick this entry:
    /// `bootloader_common_ota_select_valid` (not [`is_invalid`](Self::is_invalid)
    /// and the CRC matches).
    pub const fn is_valid(&self) -> bool {
        !self.is_invalid() && self.crc_ok()
    }

    /// The app slot this entry selects with `ota_app_count` OTA slots,
    /// `(seq - 1) % ota_app_count` computed in `u32` as the bootloader does
    /// (so seq 0 wraps to 0xFFFFFFFF), or `None` for an erased entry or no
    /// slots.
    pub const fn slot(&self, ota_app_count: u8) -> Option<u8> {
        if self.seq == BLANK_SEQ || ota_app_count == 0 {
            return None;
        }
        Some((self.seq.wrapping_sub(1) % ota_app_count as u32) as u8)
    }
}

/// Decodes both copies from a whole otadata partition (at least
/// [`PARTITION_LEN`] bytes: entry 0 at offset 0, entry 1 at [`SECTOR_SIZE`]).
pub fn decode_partition(bytes: &[u8]) -> Result<[OtaSelectEntry; 2], OtadataError> {
    let len = bytes.len();
    let first = bytes.get(..ENTRY_LEN);
    let second = bytes.get(SECTOR_SIZE as usize..SECTOR_SIZE as usize + ENTRY_LEN);
    match (first, second) {
        (Some(a), Some(b)) => {
            let mut ea = [0u8; ENTRY_LEN];
            let mut eb = [0u8; ENTRY_LEN];
            ea.copy_from_slice(a);
            eb.copy_from_slice(b);
            Ok([OtaSelectEntry::decode(&ea), OtaSelectEntry::decode(&eb)])
        }
        _ => Err(OtadataError::TooShort { len }),
    }
}

/// The copy the bootloader and the OTA API treat as current:
/// `bootloader_common_get_active_otadata` (via
/// `bootloader_common_select_otadata(.., max = true)`).
///
/// Both copies valid: the higher sequence number, copy 0 on a tie. One valid:
/// that one. None valid: `None`.
pub fn active_entry(entries: &[OtaSelectEntry; 2]) -> Option<usize> {
    match (entries[0].is_valid(), entries[1].is_valid()) {
        (true, true) => Some(if entries[0].seq >= entries[1].seq {
            0
        } else {
            1
        }),
        (true, false) => Some(0),
        (false, true) => Some(1),
        (false, false) => None,
    }
}

/// What the bootloader starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootTarget {
    /// OTA app slot `ota_N`.
    Ota(u8),
    /// No valid otadata entry (or no OTA slots): the factory app if the
    /// partition table has one, otherwise the first OTA app (`ota_0`).
    Fallback,
}

/// The slot an ESP-IDF bootloader without app rollback boots:
/// `bootloader_utility_get_selected_boot_partition`.
///
/// With an active entry ([`active_entry`]) it boots `(seq - 1) %
/// ota_app_count`. Otherwise ([`BootTarget::Fallback`]) it boots the factory
/// app when present; without one it starts from `ota_0` (`FACTORY_INDEX`
/// then walking forward in `bootloader_utility_load_boot_image`) and, when
/// otadata was blank, writes an entry `{seq: 1, state: VALID}` into copy 0
/// (`set_actual_ota_seq`). If the selected image then fails to load, the
/// bootloader tries lower slots, the factory app and higher slots in turn;
/// that depends on image contents and is not modelled here.
pub fn boot_slot(entries: &[OtaSelectEntry; 2], ota_app_count: u8) -> BootTarget {
    if ota_app_count == 0 {
        return BootTarget::Fallback;
    }
    match active_entry(entries).and_then(|i| entries[i].slot(ota_app_count)) {
        Some(slot) => BootTarget::Ota(slot),
        None => BootTarget::Fallback,
    }
}

/// Which copies the rollback bootloader rewrote during one boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RollbackBoot {
    /// What it boots (after its rewrites).
    pub target: BootTarget,
    /// `rewritten[i]`: copy `i` was erased and rewritten with a new state.
    pub rewritten: [bool; 2],
}

/// One boot of an ESP-IDF bootloader built WITH
/// `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE`, applied to `entries` in place:
/// `bootloader_utility_get_selected_boot_partition`'s rollback branches.
///
/// First every PENDING_VERIFY copy becomes ABORTED (the app booted before
/// and never confirmed), then slot selection runs as in [`boot_slot`], then a
/// NEW active copy becomes PENDING_VERIFY. Entries in any other state
/// (notably [`OtaState::Undefined`] and [`OtaState::Valid`]) are left alone,
/// which is why Airlift activates in state UNDEFINED.
pub fn rollback_bootloader_boot(
    entries: &mut [OtaSelectEntry; 2],
    ota_app_count: u8,
) -> RollbackBoot {
    let mut rewritten = [false; 2];
    for (entry, written) in entries.iter_mut().zip(rewritten.iter_mut()) {
        if entry.state == OtaState::PendingVerify {
            entry.state = OtaState::Aborted;
            *written = true;
        }
    }
    let target = boot_slot(entries, ota_app_count);
    if let (BootTarget::Ota(_), Some(active)) = (target, active_entry(entries))
        && entries[active].state == OtaState::New
    {
        entries[active].state = OtaState::PendingVerify;
        rewritten[active] = true;
    }
    RollbackBoot { target, rewritten }
}

/// One otadata write that selects a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Activation {
    /// The copy (0 or 1) to erase and write; its sector starts at
    /// `copy * SECTOR_SIZE` in the otadata partition.
    pub copy: usize,
    /// The entry to write there.
    pub entry: OtaSelectEntry,
}

/// Plans the otadata write that makes the bootloader boot `slot` next:
/// `esp_ota_set_boot_partition` -> `esp_rewrite_ota_data` -> `rewrite_ota_seq`.
///
/// The new sequence number is the smallest one greater than the active
/// copy's with `(seq - 1) % ota_app_count == slot` (`slot + 1` when no copy
/// is valid), and it goes to the copy that is not active (copy 0 when none
/// is), so a power cut while that sector is erased or written leaves the
/// active copy, and the running firmware, selected.
///
/// One deliberate difference from ESP-IDF: ESP-IDF takes the smallest
/// sequence number *greater or equal*, so re-selecting the running slot
/// writes the same sequence number again and the tie goes to copy 0.
/// Airlift always moves strictly forward, so the entry just written is the
/// one that wins, whatever its copy; this also lets a state change of the
/// running slot (e.g. marking it VALID) be written without erasing the
/// active copy, which ESP-IDF's `esp_ota_mark_app_valid_cancel_rollback`
/// does.
///
/// `state` is stored as given; see the module docs for why Airlift uses
/// [`OtaState::Undefined`] for a fresh activation.
pub fn plan_activation(
    entries: &[OtaSelectEntry; 2],
    slot: u8,
    ota_app_count: u8,
    state: OtaState,
) -> Result<Activation, OtadataError> {
    if slot >= ota_app_count {
        return Err(OtadataError::SlotOutOfRange {
            slot,
            ota_app_count,
        });
    }
    let count = u64::from(ota_app_count);
    let target = u64::from(slot) + 1;
    let (copy, seq) = match active_entry(entries) {
        None => (0, target),
        Some(active) => {
            let current = u64::from(entries[active].seq);
            // Smallest target + k * count strictly greater than current.
            let seq = if current < target {
                target
            } else {
                target + ((current - target) / count + 1) * count
            };
            (1 - active, seq)
        }
    };
    match u32::try_from(seq) {
        Ok(seq) if seq != BLANK_SEQ => Ok(Activation {
            copy,
            entry: OtaSelectEntry::new(seq, state),
        }),
        _ => Err(OtadataError::SequenceExhausted {
            current: active_entry(entries).map_or(0, |i| entries[i].seq),
        }),
    }
}

/// Errors from otadata helpers. Decoding a single entry never fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtadataError {
    /// The otadata buffer cannot hold both copies.
    TooShort {
        /// Bytes given.
        len: usize,
    },
    /// The requested slot does not exist.
    SlotOutOfRange {
        /// Slot requested.
        slot: u8,
        /// OTA app slots in the partition table.
        ota_app_count: u8,
    },
    /// The next sequence number would reach 0xFFFFFFFF (erased).
    SequenceExhausted {
        /// The active sequence number.
        current: u32,
    },
}

impl fmt::Display for OtadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(
                f,
                "otadata is {len} bytes, expected at least {} (two 4 KiB sectors)",
                SECTOR_SIZE as usize + ENTRY_LEN
            ),
            Self::SlotOutOfRange {
                slot,
                ota_app_count,
            } => write!(
                f,
                "slot ota_{slot} does not exist: the partition table has {ota_app_count} OTA app slots"
            ),
            Self::SequenceExhausted { current } => write!(
                f,
                "otadata sequence number 0x{current:08x} cannot be advanced without reaching 0xffffffff"
            ),
        }
    }
}

impl core::error::Error for OtadataError {}
