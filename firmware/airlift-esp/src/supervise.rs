//! The supervisor task: feeds the watchdog, applies the health policy,
//! carries out an asked-for reset.

use airlift_client::health::{HealthPolicy, HealthVerdict};
use airlift_client::status::DeviceState;
use embassy_time::{Duration, Timer};

use crate::journal::now_ms;
use crate::shared::{SharedAirlift, WAKE, refresh, reset_due};
use crate::watchdog::Watchdog;

/// How often the supervisor feeds the watchdog and asks the policy.
const TICK: Duration = Duration::from_secs(1);

/// Feeds the watchdog every second for as long as the app runs (a hang of
/// the executor stops it, and the chip resets) and, while the image is on
/// trial, confirms it or resets the chip as `policy` says (`None`: the app
/// confirms itself, [`crate::Airlift::confirm`]). It never waits for the
/// engine: a tick when another task holds it (a download) only feeds.
#[embassy_executor::task]
pub async fn supervise(
    airlift: &'static SharedAirlift,
    mut watchdog: Watchdog,
    policy: Option<HealthPolicy>,
) {
    loop {
        watchdog.feed();
        if reset_due() {
            esp_hal::system::software_reset();
        }
        if let Some(policy) = policy
            && let Ok(mut a) = airlift.try_lock()
            && a.trial().is_some()
        {
            let uptime_ms = now_ms();
            match policy.judge(uptime_ms, a.server_contact()) {
                HealthVerdict::Wait => {}
                HealthVerdict::Confirm => match a.confirm() {
                    Ok(_) => {
                        log::info!("airlift: confirmed after {} s", uptime_ms / 1000);
                        refresh(&mut a, DeviceState::Idle).await;
                        // The result rides on a check-in made at once.
                        WAKE.signal(());
                    }
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
        Timer::after(TICK).await;
    }
}
