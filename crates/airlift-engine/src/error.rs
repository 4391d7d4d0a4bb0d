//! The engine's error type.

use core::fmt;

use airlift_format::image::ImageError;
use airlift_format::manifest::ManifestError;
use airlift_format::otadata::OtadataError;
use airlift_format::partition::PartitionError;
use embedded_storage::nor_flash::NorFlashErrorKind;

use crate::layout::AppSlot;

/// Everything that can go wrong in the engine. Flash errors are reduced to
/// [`NorFlashErrorKind`] so the type does not depend on the flash driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A flash operation failed (on a real device: a driver error; in the
    /// simulator: also a simulated power cut).
    Flash(NorFlashErrorKind),
    /// The flash's read, write or erase size does not fit the engine's
    /// 4-byte aligned reads, 32-byte programs and ESP-IDF's 4 KiB sectors.
    UnsupportedFlashGeometry {
        /// `ReadNorFlash::READ_SIZE`.
        read_size: usize,
        /// `NorFlash::WRITE_SIZE`.
        write_size: usize,
        /// `NorFlash::ERASE_SIZE`.
        erase_size: usize,
    },
    /// The partition table is malformed.
    PartitionTable(PartitionError),
    /// otadata could not be planned (slot out of range, sequence exhausted).
    Otadata(OtadataError),
    /// The partition table has no otadata partition.
    NoOtadata,
    /// The partition table has no OTA app slots.
    NoOtaSlots,
    /// The partition table has no `airlift` data partition (type data, subtype 0x40).
    NoDataPartition,
    /// The `airlift` data partition is smaller than two sectors.
    DataPartitionTooSmall {
        /// Its size in bytes.
        size: u32,
    },
    /// The signed manifest is malformed.
    Manifest(ManifestError),
    /// The manifest is signed by a key the device does not trust.
    UnknownKey {
        /// The key id the manifest names.
        key_id: [u8; 8],
    },
    /// The manifest's signature does not verify.
    BadSignature,
    /// The image is built for another chip.
    WrongChip {
        /// This device's chip id.
        expected: u16,
        /// The chip id of the manifest or image.
        got: u16,
    },
    /// The image does not fit the target slot.
    TooBig {
        /// Image size from the manifest.
        size: u32,
        /// Size of the target slot.
        slot_size: u32,
    },
    /// The image's security version is below the device's stored minimum.
    OlderSecurityVersion {
        /// The manifest's security version.
        got: u32,
        /// The device's minimum.
        minimum: u32,
    },
    /// The install would overwrite the slot the device runs from.
    RunningSlotTarget {
        /// The running slot.
        slot: AppSlot,
    },
    /// The target slot does not exist in the partition table.
    NoSuchSlot {
        /// The requested OTA slot.
        slot: u8,
    },
    /// The running image is still on trial: confirm it (or let it roll back)
    /// before installing another.
    RunningImageUnconfirmed,
    /// Delta updates are not supported by this engine yet.
    DeltaUnsupported,
    /// More bytes were written than the manifest announced.
    TooMuchData {
        /// The manifest's image size.
        size: u32,
    },
    /// `finish` was called before all bytes arrived.
    Truncated {
        /// Bytes received.
        got: u32,
        /// Bytes the manifest announced.
        expected: u32,
    },
    /// The image is not a well-formed ESP image.
    Image(ImageError),
    /// The image's checksum byte does not match its data.
    ChecksumMismatch,
    /// The image's appended SHA-256 digest does not match its contents.
    DigestMismatch,
    /// The SHA-256 of the image differs from the signed manifest's.
    ShaMismatch,
    /// The install session already failed; start a new one.
    SessionFailed,
    /// A resumed install did not verify. The bytes an earlier, interrupted
    /// attempt left in the slot may be what failed (that attempt may have
    /// been fed other bytes under the same manifest), so its progress is
    /// cleared: begin again, and the new session starts from byte 0. Only
    /// that retry says whether the image itself is bad.
    StaleResume {
        /// Where the failed session had resumed.
        resumed_at: u32,
    },
    /// The data partition already holds the most keys it can.
    TooManyKeys {
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Flash(kind) => write!(f, "flash operation failed: {kind:?}"),
            Error::UnsupportedFlashGeometry {
                read_size,
                write_size,
                erase_size,
            } => write!(
                f,
                "flash has read size {read_size}, write size {write_size} and erase size {erase_size}: expected a read size dividing 4, a write size dividing 32 and an erase size dividing 4096"
            ),
            Error::PartitionTable(e) => write!(f, "bad partition table: {e}"),
            Error::Otadata(e) => write!(f, "otadata: {e}"),
            Error::NoOtadata => f.write_str("partition table has no otadata partition"),
            Error::NoOtaSlots => f.write_str("partition table has no ota app slots"),
            Error::NoDataPartition => f.write_str(
                "partition table has no airlift data partition (label airlift, type data, subtype 0x40)",
            ),
            Error::DataPartitionTooSmall { size } => write!(
                f,
                "airlift data partition is {size} bytes, expected at least 8192 (two sectors)"
            ),
            Error::Manifest(e) => write!(f, "bad manifest: {e}"),
            Error::UnknownKey { key_id } => {
                f.write_str("manifest signed by unknown key ")?;
                for b in key_id {
                    write!(f, "{b:02x}")?;
                }
                f.write_str(": not among the device's trusted keys")
            }
            Error::BadSignature => f.write_str("manifest signature does not verify"),
            Error::WrongChip { expected, got } => write!(
                f,
                "image is for chip id {got}, this device is chip id {expected}"
            ),
            Error::TooBig { size, slot_size } => write!(
                f,
                "image is {size} bytes but the target slot holds {slot_size}"
            ),
            Error::OlderSecurityVersion { got, minimum } => write!(
                f,
                "image has security version {got}, below the device's minimum {minimum}"
            ),
            Error::RunningSlotTarget { slot } => {
                write!(f, "refusing to install into the running slot {slot}")
            }
            Error::NoSuchSlot { slot } => {
                write!(f, "slot ota_{slot} does not exist in the partition table")
            }
            Error::RunningImageUnconfirmed => f.write_str(
                "running image is not confirmed yet: confirm it before installing another",
            ),
            Error::DeltaUnsupported => f.write_str("delta updates are not supported yet"),
            Error::TooMuchData { size } => {
                write!(f, "more data than the manifest's image size of {size} bytes")
            }
            Error::Truncated { got, expected } => write!(
                f,
                "image truncated: received {got} bytes, the manifest announced {expected}"
            ),
            Error::Image(e) => write!(f, "invalid image: {e}"),
            Error::ChecksumMismatch => f.write_str("image checksum does not match its data"),
            Error::DigestMismatch => {
                f.write_str("image's appended sha-256 digest does not match its contents")
            }
            Error::ShaMismatch => {
                f.write_str("image sha-256 differs from the one in the signed manifest")
            }
            Error::TooManyKeys { max } => write!(
                f,
                "the device already stores {max} trusted keys, the most it can hold"
            ),
            Error::SessionFailed => {
                f.write_str("install session already failed: begin a new one")
            }
            Error::StaleResume { resumed_at } => write!(
                f,
                "image did not verify after resuming at byte {resumed_at} onto an earlier attempt's bytes; that progress is cleared: install again from byte 0"
            ),
        }
    }
}

impl core::error::Error for Error {}

impl From<OtadataError> for Error {
    fn from(e: OtadataError) -> Self {
        Error::Otadata(e)
    }
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        Error::Image(e)
    }
}

/// Reduces a flash driver error to its kind.
pub(crate) fn flash_err<E: embedded_storage::nor_flash::NorFlashError>(e: E) -> Error {
    Error::Flash(e.kind())
}
