//! Airlift's device update engine: A/B install, verify, activate, boot guard
//! with automatic rollback, persistent boot log, anti-rollback.
//!
//! `#![no_std]`, no allocation, no `unsafe`; all I/O goes through
//! [`embedded_storage::nor_flash::NorFlash`]. The same code runs in the ESP32
//! firmware and, over a file or the simulated flash (`sim` module, feature `sim`), on a PC.
//!
//! # How a device updates
//!
//! 1. [`Device::open`] reads the partition table (row by row), otadata and
//!    Airlift's data partition.
//! 2. [`Device::boot`], the *boot guard*, runs first at every boot.
//! 3. [`Device::begin`] checks a signed manifest and returns an [`Install`]
//!    session; [`Install::write`] streams the image into the inactive slot
//!    (erase ahead, program, read back into the image verifier: one SHA-256
//!    pass); [`Install::finish`] verifies and activates it.
//! 4. After a reset the new image runs *on trial*; [`Device::confirm`] makes
//!    it permanent (when: the app's call, or the default health policy of
//!    `airlift-client`).
//!    Without confirmation, after `max_attempts` boots (3 by default) the
//!    boot guard selects the previous slot and asks for a reset.
//!
//! # What is on flash, and why it survives power cuts
//!
//! * **otadata** is read and written exactly as ESP-IDF does, through
//!   [`airlift_format::otadata`] and, on flash, [`otadata_io`] alone (the
//!   simulated bootloader uses it too): every change is one new entry (sequence
//!   number and state in one 32-byte program) written to the copy that is
//!   *not* active, so a cut during the erase or the program leaves the active
//!   copy, and the image it selects, in charge. A fresh activation is written
//!   in state UNDEFINED: an ESP-IDF bootloader without app rollback ignores
//!   the state, and one with rollback leaves UNDEFINED alone (it would turn
//!   NEW into PENDING_VERIFY and abort it after a single try); the boot
//!   counter lives in Airlift's own partition and gives N tries.
//!   Confirming appends a confirm record (the commit point), then writes a
//!   VALID entry for the same slot the same way; the boot guard redoes that
//!   write if it was cut, or if the VALID copy is ever lost. Rolling back
//!   selects the previous slot with a new VALID entry in the copy that does
//!   not hold the trial, then replaces the trial's entry with a second one,
//!   so that both copies select the good image and losing either cannot
//!   bring the rejected image back (the rejection is in the boot log).
//!   Each entry Airlift writes also carries a mark in its `seq_label` (which
//!   ESP-IDF never reads and the CRC does not cover): trial + rollback slot,
//!   or confirmed + minimum security version, so that losing Airlift's own
//!   partition neither ends a trial nor lowers the minimum.
//! * **Airlift's data partition** (label `airlift`, type data, subtype 0x40)
//!   is an append-only log of 64-byte CRC-protected records in a ring of
//!   sectors ([`store`]): trusted keys, minimum security version, image
//!   information per slot, the trial and its boot attempts, install progress
//!   (to resume), and the boot log.
//! * Install order: the slot is erased and programmed sector by sector (the
//!   running slot is never touched), progress records are appended every
//!   `checkpoint_interval` bytes, then (after verification) an activation
//!   record, then the otadata entry. The otadata write is the commit point.
//!
//! Every one of these paths is checked by cutting power before, and in the
//! middle of, every single flash operation (`sim::campaign`, behind the
//! `sim` feature).
//!
//! # Memory
//!
//! No heap. [`Device`] holds the flash handle, the layout and the replayed
//! state (1288 bytes on a 64-bit host with a reference as flash handle); an
//! [`Install`] adds the streaming image verifier and a 256-byte write buffer
//! (1040 bytes), and uses a 256-byte read-back buffer on the stack: about
//! 2.5 KiB in all, against a budget of 8 KiB that the `memory_budget` test
//! checks. Ed25519 verification (ed25519-dalek, during [`Device::begin`]
//! only) needs about 13 KiB of stack on x86_64 (measured by
//! `cargo bench -p airlift-engine`); budget for it separately.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

mod device;
mod error;
mod install;
mod layout;
pub mod otadata_io;
pub mod slot;
pub mod store;

#[cfg(feature = "sim")]
pub mod sim;

pub use device::{
    Activated, BootDecision, Config, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_MAX_ATTEMPTS, Device,
    Status, geometry_fits,
};
pub use error::Error;
pub use install::{Install, READ_BACK_LEN, WRITE_BUFFER_LEN};
pub use layout::{AppSlot, Layout, MAX_OTA_SLOTS, PartitionRows, Region};
pub use store::{BootOutcome, BootRecord, ImageTag, InstallProgress, LogPosition, Trial, Version};
