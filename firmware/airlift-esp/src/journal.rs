//! The client's narration to the app's logger, and the clock it reads.

use core::fmt;

use airlift_client::Journal;

/// The client's journal: each line to `log` at info level.
pub(crate) struct Log;

impl Journal for Log {
    fn log(&mut self, line: fmt::Arguments<'_>) {
        log::info!("airlift: {line}");
    }
}

/// Milliseconds since power-on (the same timer embassy-time counts with
/// under esp-rtos, and readable before the scheduler starts).
pub(crate) fn now_ms() -> u64 {
    esp_hal::time::Instant::now()
        .duration_since_epoch()
        .as_millis()
}
