//! Airlift's demo app: an esp-hal + embassy app that adds Airlift the way
//! a user's own app would. It logs its version every 10 seconds; Airlift
//! joins the provisioned Wi-Fi network, checks in with the provisioned
//! server, installs what it is given, and serves the device page.
//!
//! Build: `cargo build --release --features esp32c3` in `firmware/` (see
//! firmware/README.md). The features `crash-before-confirm` and
//! `hang-before-confirm` make a broken release for rollback tests;
//! `next-version` a release with a higher version, for update tests.
#![no_std]
#![no_main]

use airlift_esp::{GuardConfig, Options};
use embassy_executor::Spawner;
use embassy_time::{Duration, Timer};
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::timer::timg::TimerGroup;

// The app descriptor: the crate's name and version. A broken build says so
// in its version, so a device list shows what it runs; the `next-version`
// build is the crate's version with its patch number one higher.
#[cfg(not(any(
    feature = "crash-before-confirm",
    feature = "hang-before-confirm",
    feature = "next-version"
)))]
esp_bootloader_esp_idf::esp_app_desc!();
#[cfg(any(
    feature = "crash-before-confirm",
    feature = "hang-before-confirm",
    feature = "next-version"
))]
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

#[cfg(not(any(
    feature = "crash-before-confirm",
    feature = "hang-before-confirm",
    feature = "next-version"
)))]
const VERSION: &str = env!("CARGO_PKG_VERSION");
#[cfg(feature = "crash-before-confirm")]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-crash");
#[cfg(all(feature = "hang-before-confirm", not(feature = "crash-before-confirm")))]
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-hang");
#[cfg(all(
    feature = "next-version",
    not(any(feature = "crash-before-confirm", feature = "hang-before-confirm"))
))]
const VERSION: &str = env!("AIRLIFT_DEMO_NEXT_VERSION");

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

    // Then what Wi-Fi needs: a heap and the scheduler.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    let timg0 = TimerGroup::new(p.TIMG0);
    esp_rtos::start(timg0.timer0, p.FROM_CPU_INTR0);

    // Airlift: the supervisor, the provisioned Wi-Fi network, updates and
    // the device page.
    let mut slot = None;
    if let Some(booted) = booted {
        slot = booted.airlift.slot();
        if let Err(e) = airlift_esp::start(spawner, booted, p.WIFI, Options::default()) {
            log::error!("{e}");
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
