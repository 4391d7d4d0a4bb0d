//! Airlift over-the-air updates for an esp-hal 1.x + embassy application on
//! the ESP32-C3 or ESP32-C6.
//!
//! This crate is wiring. Every decision (what to write where, when an image
//! rolls back, when it counts as healthy) is made by `airlift-engine`, which
//! is tested on the host; what is left here is what only a chip can do:
//! reach its flash, know which slot it runs from, arm its watchdog and reset.
//!
//! # Use
//!
//! ```ignore
//! #[esp_rtos::main]
//! async fn main(spawner: Spawner) -> ! {
//!     let p = esp_hal::init(esp_hal::Config::default());
//!     // First, before anything that could hang or crash: the boot guard.
//!     let booted = airlift_esp::boot_guard(p.FLASH, p.RTC_TIMER, GuardConfig::default())?;
//!     // ... heap, esp_rtos::start, the app's own setup ...
//!     let airlift = airlift_esp::share(booted.airlift);
//!     spawner.spawn(airlift_esp::supervise(airlift, booted.watchdog, HealthPolicy::DEFAULT)?);
//! }
//! ```
//!
//! 1. [`boot_guard`] arms the chip's RTC watchdog, opens the flash as the
//!    engine's `NorFlash` ([`flash`]), finds the slot the bootloader
//!    started ([`running_slot`]) and runs the engine's boot guard, which
//!    counts this boot if the image is on trial. If the image used up its
//!    attempts, the guard has selected the previous image and the chip is
//!    reset at once: this function does not return.
//! 2. [`supervise`] (an embassy task) feeds the watchdog and, while the
//!    image is on trial, applies the [health policy](airlift_engine::health):
//!    it confirms the image, or resets the chip when the trial failed. A
//!    hang stops the feeding and a panic halts the CPU: either way the
//!    watchdog resets the chip, and the next boot counts another attempt.
//!    An app that knows better confirms itself ([`Airlift::confirm`]).
//! 3. [`wifi`] (feature `wifi`) brings up a Wi-Fi station with DHCP for
//!    apps that have no network stack of their own.
//!
//! Rollback does not depend on the bootloader: Airlift activates a new image
//! in otadata state UNDEFINED, which an ESP-IDF bootloader built with or
//! without `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE` boots alike, and counts
//! attempts in its own data partition.
//!
//! # Chips
//!
//! One chip feature: `esp32c3` (target `riscv32imc-unknown-none-elf`) or
//! `esp32c6` (`riscv32imac-unknown-none-elf`). Chip-specific code is in
//! esp-hal, esp-storage and esp-bootloader-esp-idf behind these features;
//! the Xtensa chips (ESP32, ESP32-S3) would be added the same way, with
//! Espressif's Xtensa toolchain, which this project cannot build with.
//!
//! # What comes next (phase 2)
//!
//! The update task (check-in, download streamed into the engine, events),
//! the device page and its API, and the provisioned settings (Wi-Fi, server,
//! token, boot-attempt limit) come from the `airlift-client` crate: its
//! `Client::boot` replaces the plain engine boot guard in [`boot_guard`],
//! and the update task reports the server's answers to the supervisor
//! through [`Airlift::set_server_contact`].
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(not(any(feature = "esp32c3", feature = "esp32c6")))]
compile_error!("airlift-esp needs a chip feature: esp32c3 or esp32c6");
#[cfg(all(feature = "esp32c3", feature = "esp32c6"))]
compile_error!("airlift-esp builds for one chip at a time: esp32c3 or esp32c6");

pub mod flash;
mod guard;
mod supervise;
mod watchdog;
#[cfg(feature = "wifi")]
pub mod wifi;

pub use guard::{Airlift, Booted, GuardConfig, GuardError, GuardFailure, boot_guard, running_slot};
pub use supervise::{SharedAirlift, share, supervise};
pub use watchdog::Watchdog;

pub use airlift_client::health::{HealthPolicy, HealthVerdict, ServerContact};
pub use airlift_engine::{AppSlot, BootDecision};
