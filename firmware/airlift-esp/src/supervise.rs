//! The supervisor task: feeds the watchdog, applies the health policy.

use airlift_client::health::{HealthPolicy, HealthVerdict};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::mutex::Mutex;
use embassy_time::{Duration, Instant, Timer};
use static_cell::StaticCell;

use crate::guard::Airlift;
use crate::watchdog::Watchdog;

/// The engine shared between the app, the supervisor and (phase 2) the
/// update task and the device page.
pub type SharedAirlift = Mutex<CriticalSectionRawMutex, Airlift>;

/// How often the supervisor feeds the watchdog and asks the policy.
const TICK: Duration = Duration::from_secs(1);

/// Puts the engine where every task can reach it. Call once: a second call
/// returns `None`.
pub fn share(airlift: Airlift) -> Option<&'static SharedAirlift> {
    static CELL: StaticCell<SharedAirlift> = StaticCell::new();
    CELL.try_init(Mutex::new(airlift)).map(|shared| &*shared)
}

/// Feeds the watchdog every second for as long as the app runs (a hang of
/// the executor stops it, and the chip resets) and, while the image is on
/// trial, confirms it or resets the chip as `policy` says.
#[embassy_executor::task]
pub async fn supervise(
    airlift: &'static SharedAirlift,
    mut watchdog: Watchdog,
    policy: HealthPolicy,
) {
    loop {
        watchdog.feed();
        {
            let mut airlift = airlift.lock().await;
            if airlift.trial().is_some() {
                let uptime_ms = Instant::now().as_millis();
                match policy.judge(uptime_ms, airlift.server_contact()) {
                    HealthVerdict::Wait => {}
                    HealthVerdict::Confirm => match airlift.confirm() {
                        Ok(_) => log::info!(
                            "airlift: {} confirmed after {} s",
                            airlift.slot(),
                            uptime_ms / 1000
                        ),
                        // Tried again next tick; never confirmed, the image
                        // rolls back after its attempts.
                        Err(e) => log::error!("airlift: cannot confirm: {e}"),
                    },
                    HealthVerdict::Fail => {
                        log::warn!(
                            "airlift: the server did not answer within {} s; trial failed, resetting",
                            uptime_ms / 1000
                        );
                        esp_hal::system::software_reset()
                    }
                }
            }
        }
        Timer::after(TICK).await;
    }
}
