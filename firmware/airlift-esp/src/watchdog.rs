//! The RTC watchdog (RWDT): a hang resets the whole chip.

use esp_hal::peripherals::RTC_TIMER;
use esp_hal::rtc_cntl::{Rtc, RwdtStage};
use esp_hal::time::Duration;

/// The armed RTC watchdog. Its first stage resets the whole system (CPU,
/// peripherals and RTC) when it is not fed within the timeout; the ESP-IDF
/// bootloader then starts again, and the boot guard counts the attempt.
pub struct Watchdog {
    rtc: Rtc<'static>,
}

impl Watchdog {
    /// Arms the watchdog with `timeout` (esp-hal's `init` disarms the one
    /// the bootloader left running).
    pub fn arm(rtc_timer: RTC_TIMER<'static>, timeout: Duration) -> Watchdog {
        let mut rtc = Rtc::new(rtc_timer);
        rtc.rwdt.set_timeout(RwdtStage::Stage0, timeout);
        rtc.rwdt.enable();
        rtc.rwdt.feed();
        Watchdog { rtc }
    }

    /// Restarts the timeout.
    pub fn feed(&mut self) {
        self.rtc.rwdt.feed();
    }

    /// Disarms the watchdog and gives the RTC back to the app.
    pub fn disarm(mut self) -> Rtc<'static> {
        self.rtc.rwdt.disable();
        self.rtc
    }
}
