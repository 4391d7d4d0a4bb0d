//! Airlift over-the-air updates for an esp-hal 1.x + embassy application on
//! the ESP32-C3 or ESP32-C6.
//!
//! This crate is wiring. Every decision (what to write where, when an image
//! rolls back, when it counts as healthy, what a check-in says, how a
//! download resumes, what the device page answers) is made by
//! `airlift-engine` and `airlift-client`, which are tested on the host;
//! what is left here is what only a chip can do: reach its flash, know
//! which slot it runs from, arm its watchdog, move bytes over Wi-Fi, reset.
//!
//! # Use
//!
//! ```ignore
//! #[esp_rtos::main]
//! async fn main(spawner: Spawner) -> ! {
//!     let p = esp_hal::init(esp_hal::Config::default());
//!     // First, before anything that could hang or crash: the boot guard.
//!     let booted = airlift_esp::boot_guard(p.FLASH, p.RTC_TIMER, GuardConfig::default());
//!     esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
//!     esp_rtos::start(TimerGroup::new(p.TIMG0).timer0, p.FROM_CPU_INTR0);
//!     if let Ok(booted) = booted {
//!         airlift_esp::start(spawner, booted, p.WIFI, Options::default()).await?;
//!     }
//!     // ... the app ...
//! }
//! ```
//!
//! 1. [`boot_guard`] arms the chip's RTC watchdog, opens the flash as the
//!    engine's `NorFlash` ([`flash`]), reads the provisioned settings
//!    (Wi-Fi, server, token, attempt limit: `airlift flash provision`
//!    writes them), verifies the image the bootloader started
//!    ([`running_slot`]) and runs the client's boot: the engine's boot
//!    guard counts this boot if the image is on trial, and what the server
//!    must hear is queued. If the image used up its attempts, the guard has
//!    selected the previous image and the chip is reset at once: this
//!    function does not return.
//! 2. [`start`] shares the engine ([`share`]), starts the [`supervise`]
//!    task (it feeds the watchdog and, while the image is on trial, applies
//!    the [health policy](airlift_client::health): it confirms the image,
//!    or resets the chip when the trial failed), joins the provisioned
//!    Wi-Fi network with DHCP ([`wifi`]), and starts the [`update`] task
//!    (the time by SNTP, check-ins, events, downloads streamed into the
//!    engine, the reset into a new image) and the device page ([`page`]).
//!    A hang stops the feeding and a panic halts the CPU: either way the
//!    watchdog resets the chip, and the next boot counts another attempt.
//!    An app that knows better confirms itself ([`Airlift::confirm`]) and
//!    passes no policy.
//!
//! The pieces are public for an app with its own network stack: [`share`],
//! [`supervise`], [`update`] and [`page::start`] take an embassy-net
//! `Stack`.
//!
//! Plain HTTP only for now: TLS on the chip is not built yet, and settings
//! that ask for HTTPS leave the device offline (`Settings::check_for`).
//! Rollback does not depend on the bootloader: Airlift activates a new image in otadata state
//! UNDEFINED, which an ESP-IDF bootloader built with or without
//! `CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE` boots alike, and counts attempts
//! in its own data partition.
//!
//! # Chips
//!
//! One chip feature: `esp32c3` (target `riscv32imc-unknown-none-elf`) or
//! `esp32c6` (`riscv32imac-unknown-none-elf`). Chip-specific code is in
//! esp-hal, esp-storage, esp-radio and esp-bootloader-esp-idf behind these
//! features; the Xtensa chips (ESP32, ESP32-S3) would be added the same
//! way, with Espressif's Xtensa toolchain, which this project cannot build
//! with.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(not(any(feature = "esp32c3", feature = "esp32c6")))]
compile_error!("airlift-esp needs a chip feature: esp32c3 or esp32c6");
#[cfg(all(feature = "esp32c3", feature = "esp32c6"))]
compile_error!("airlift-esp builds for one chip at a time: esp32c3 or esp32c6");

pub mod flash;
mod guard;
mod http;
mod journal;
pub mod page;
mod shared;
mod sntp;
mod supervise;
mod update;
mod watchdog;
#[cfg(feature = "wifi")]
pub mod wifi;

use core::fmt;

use embassy_executor::{SpawnError, Spawner};

pub use guard::{Airlift, Booted, GuardConfig, GuardError, GuardFailure, boot_guard, running_slot};
pub use shared::{SharedAirlift, share};
pub use supervise::supervise;
pub use update::update;
pub use watchdog::Watchdog;

pub use airlift_client::health::{HealthPolicy, HealthVerdict, ServerContact};
pub use airlift_engine::AppSlot;

/// How [`start`] runs Airlift.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// When an image on trial is confirmed: the default policy, another, or
    /// `None` when the app calls [`Airlift::confirm`] itself.
    pub health: Option<HealthPolicy>,
}

impl Default for Options {
    /// The default health policy.
    fn default() -> Self {
        Options {
            health: Some(HealthPolicy::DEFAULT),
        }
    }
}

/// Why [`start`] stopped short.
#[derive(Debug)]
pub enum StartError {
    /// [`start`] or [`share`] was called before.
    AlreadyStarted,
    /// A task could not be spawned.
    Spawn(SpawnError),
    /// Wi-Fi did not start (the supervisor runs: the image is judged by the
    /// offline rule, or fails its trial waiting for the server).
    #[cfg(feature = "wifi")]
    Wifi(wifi::WifiStartError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::AlreadyStarted => f.write_str("airlift is already started"),
            StartError::Spawn(e) => write!(f, "airlift task: {e:?}"),
            #[cfg(feature = "wifi")]
            StartError::Wifi(e) => write!(f, "airlift: {e}"),
        }
    }
}

impl core::error::Error for StartError {}

impl From<SpawnError> for StartError {
    fn from(e: SpawnError) -> StartError {
        StartError::Spawn(e)
    }
}

/// Starts Airlift after [`boot_guard`] (and after the heap and the
/// scheduler, which Wi-Fi needs): the supervisor, then, when a Wi-Fi
/// network is provisioned, the network, the update task and the device
/// page. Returns the shared engine, for the app's own [`Airlift::confirm`].
#[cfg(feature = "wifi")]
pub fn start(
    spawner: Spawner,
    booted: Booted,
    radio: esp_hal::peripherals::WIFI<'static>,
    options: Options,
) -> Result<&'static SharedAirlift, StartError> {
    let airlift = share(booted.airlift).ok_or(StartError::AlreadyStarted)?;
    spawner.spawn(supervise(airlift, booted.watchdog, options.health)?);
    let (network, password) = {
        let a = airlift.try_lock().map_err(|_| StartError::AlreadyStarted)?;
        let s = a.settings();
        let network =
            (!s.wifi_ssid.is_empty()).then(|| (s.wifi_ssid.clone(), s.wifi_password.clone()));
        let password = s
            .page_password
            .map(airlift_client::page::PagePassword::from_sha256);
        (network, password)
    };
    let Some((ssid, wifi_password)) = network else {
        ::log::info!("airlift: no Wi-Fi network provisioned: running offline");
        return Ok(airlift);
    };
    let rng = esp_hal::rng::Rng::new();
    let seed = (u64::from(rng.random()) << 32) | u64::from(rng.random());
    let credentials = wifi::WifiCredentials {
        ssid: &ssid,
        password: &wifi_password,
    };
    let stack = wifi::start(spawner, radio, credentials, seed).map_err(StartError::Wifi)?;
    spawner.spawn(update(airlift, stack)?);
    page::start(spawner, airlift, password, stack)?;
    Ok(airlift)
}
