//! Airlift's demo app: an esp-hal + embassy app that adds Airlift the way
//! a user's own app would. It logs its version every 10 seconds.
//!
//! Build: `cargo build --release --features esp32c3` in `firmware/` (see
//! firmware/README.md). The features `crash-before-confirm` and
//! `hang-before-confirm` make a broken release for rollback tests.
#![no_std]
#![no_main]

use airlift_esp::wifi::{self, WifiCredentials};
use airlift_esp::{GuardConfig, HealthPolicy};
use embassy_executor::Spawner;
use embassy_time::{Duration, Timer};
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::rng::Rng;
use esp_hal::timer::timg::TimerGroup;

// The app descriptor: the crate's name and version. A broken build says so
// in its version, so a device list shows what it runs.
#[cfg(not(any(feature = "crash-before-confirm", feature = "hang-before-confirm")))]
esp_bootloader_esp_idf::esp_app_desc!();
#[cfg(any(feature = "crash-before-confirm", feature = "hang-before-confirm"))]
esp_bootloader_esp_idf::esp_app_desc!(
    VERSION,
    env!("CARGO_PKG_NAME"),
    esp_bootloader_esp_idf::BUILD_TIME,
    esp_bootloader_esp_idf::BUILD_DATE,
    esp_bootloader_esp_idf::ESP_IDF_COMPATIBLE_VERSION,
    esp_bootloader_esp_idf::MMU_PAGE_SIZE,
    0,
    u16::MAX,
    esp_bootloader_esp_idf::SECURE_VERSION
);

#[cfg(not(any(feature = "crash-before-confirm", feature = "hang-before-confirm")))]
const VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(feature = "crash-before-confirm")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-crash");
#[cfg(all(feature = "hang-before-confirm", not(feature = "crash-before-confirm")))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-hang");

/// Until phase 2 reads them from the provisioned settings, the Wi-Fi
/// network comes from the build's environment. `black_box` keeps the
/// network code in the image even when they are not set, so the image's
/// size is the size users get.
fn credentials() -> Option<WifiCredentials<'static>> {
    let ssid = core::hint::black_box(option_env!("AIRLIFT_WIFI_SSID"))?;
    let password = core::hint::black_box(option_env!("AIRLIFT_WIFI_PASSWORD")).unwrap_or("");
    Some(WifiCredentials { ssid, password })
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    esp_println::logger::init_logger_from_env();
    let p = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // First: the boot guard, with the watchdog armed.
    let booted = match airlift_esp::boot_guard(p.FLASH, p.RTC_TIMER, GuardConfig::default()) {
        Ok(booted) => Some(booted),
        Err(failure) => {
            log::error!("{}; running without updates", failure.error);
            failure.watchdog.disarm();
            None
        }
    };

    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    let timg0 = TimerGroup::new(p.TIMG0);
    esp_rtos::start(timg0.timer0, p.FROM_CPU_INTR0);

    let slot = booted.as_ref().map(|b| b.airlift.slot());
    if let Some(booted) = booted {
        match airlift_esp::share(booted.airlift) {
            Some(airlift) => {
                match airlift_esp::supervise(airlift, booted.watchdog, HealthPolicy::DEFAULT) {
                    Ok(task) => spawner.spawn(task),
                    Err(e) => log::error!("cannot start the supervisor: {e:?}"),
                }
            }
            None => log::error!("airlift is already shared"),
        }
    }

    if let Some(network) = credentials() {
        let rng = Rng::new();
        let seed = (u64::from(rng.random()) << 32) | u64::from(rng.random());
        match wifi::start(spawner, p.WIFI, network, seed) {
            Ok(stack) => {
                stack.wait_config_up().await;
                if let Some(config) = stack.config_v4() {
                    log::info!("network up: {}", config.address);
                }
            }
            Err(e) => log::error!("{e}"),
        }
    }

    let mut seconds = 0u32;
    loop {
        match slot {
            Some(slot) => log::info!("airlift-demo {VERSION} running from {slot}"),
            None => log::info!("airlift-demo {VERSION} running"),
        }
        if cfg!(any(
            feature = "crash-before-confirm",
            feature = "hang-before-confirm"
        )) && seconds >= 5
        {
            fail();
        }
        Timer::after(Duration::from_secs(10)).await;
        seconds += 10;
    }
}

/// What a broken release does before it is confirmed.
fn fail() {
    #[cfg(feature = "crash-before-confirm")]
    panic!("airlift-demo {VERSION}: crash-before-confirm build");
    #[cfg(feature = "hang-before-confirm")]
    {
        log::error!("airlift-demo {VERSION}: hang-before-confirm build, blocking the executor");
        #[allow(clippy::empty_loop)]
        loop {}
    }
}
