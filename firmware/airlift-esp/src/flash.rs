//! The chip's SPI flash as the engine's `NorFlash`.
//!
//! esp-storage's [`FlashStorage`] covers the whole flash (the engine reads
//! the partition table, otadata, both slots and its data partition: one
//! handle, absolute offsets). With its `embedded-storage` feature it reads
//! and programs 4-byte words and erases 4 KiB sectors; the engine needs a
//! read size that divides 4, a write size that divides 32 and an erase size
//! that divides 4096 ([`airlift_engine::geometry_fits`]), checked below when
//! this crate compiles, so a driver update that changed them would not
//! build instead of failing on the device.
//!
//! The flash is not encrypted: esp-storage's `embedded-storage` traits
//! always access it in plain text, and so does the engine.

use esp_hal::peripherals::FLASH;
pub use esp_storage::FlashStorage;

/// The flash the engine runs over.
pub type Flash = FlashStorage<'static>;

const _: () = assert!(
    airlift_engine::geometry_fits::<Flash>(),
    "esp-storage's read, write or erase size does not fit the Airlift engine"
);

/// Opens the whole SPI flash (its size is read from the chip's flash id).
pub fn open(flash: FLASH<'static>) -> Flash {
    FlashStorage::new(flash)
}
