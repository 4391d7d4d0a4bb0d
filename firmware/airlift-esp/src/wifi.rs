//! A Wi-Fi station with DHCP (feature `wifi`), for apps without a network
//! stack of their own: esp-radio's station interface under embassy-net.
//!
//! The app sets up the heap (esp-radio allocates; 64 KiB is plenty) and
//! starts the scheduler (`esp_rtos::start`) before calling [`start`].
//! [`crate::start`] calls it with the provisioned network.

use core::fmt;

use embassy_executor::{SpawnError, Spawner};
use embassy_net::{Runner, Stack, StackResources};
use embassy_time::{Duration, Timer};
use esp_hal::peripherals::WIFI;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config, ControllerConfig, Interface, WifiController, WifiError,
};
use static_cell::StaticCell;

/// Sockets the stack has room for: DHCP, DNS, the update client's
/// connection, its time query and the device page's connections.
pub const SOCKETS: usize = 4 + crate::page::TASKS;

/// Wait between connection attempts.
const RETRY: Duration = Duration::from_secs(5);

/// The network to join.
#[derive(Clone, Copy)]
pub struct WifiCredentials<'a> {
    /// Network name.
    pub ssid: &'a str,
    /// WPA2 password; empty for an open network.
    pub password: &'a str,
}

impl fmt::Debug for WifiCredentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WifiCredentials")
            .field("ssid", &self.ssid)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why Wi-Fi did not start.
#[derive(Debug, Clone, Copy)]
pub enum WifiStartError {
    /// The network name is longer than 32 bytes.
    Ssid,
    /// The password is longer than 64 bytes.
    Password,
    /// The radio refused.
    Radio(WifiError),
    /// A task could not be spawned.
    Spawn(SpawnError),
    /// `start` was called twice.
    AlreadyStarted,
}

impl fmt::Display for WifiStartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WifiStartError::Ssid => f.write_str("wi-fi network name is longer than 32 bytes"),
            WifiStartError::Password => f.write_str("wi-fi password is longer than 64 bytes"),
            WifiStartError::Radio(e) => write!(f, "wi-fi radio: {e:?}"),
            WifiStartError::Spawn(e) => write!(f, "wi-fi task: {e:?}"),
            WifiStartError::AlreadyStarted => f.write_str("wi-fi is already started"),
        }
    }
}

impl core::error::Error for WifiStartError {}

/// Starts the station: spawns a task that keeps it connected (retrying
/// every 5 s) and the network stack's task, and returns the stack, which
/// gets its address by DHCP (`stack.wait_config_up().await`).
pub fn start(
    spawner: Spawner,
    wifi: WIFI<'static>,
    credentials: WifiCredentials<'_>,
    seed: u64,
) -> Result<Stack<'static>, WifiStartError> {
    static RESOURCES: StaticCell<StackResources<SOCKETS>> = StaticCell::new();
    let resources = RESOURCES
        .try_init(StackResources::new())
        .ok_or(WifiStartError::AlreadyStarted)?;
    let authentication = if credentials.password.is_empty() {
        AuthenticationMethodConfig::Open
    } else {
        AuthenticationMethodConfig::Wpa2Personal(
            credentials
                .password
                .try_into()
                .map_err(|_| WifiStartError::Password)?,
        )
    };
    let station = StationConfig::default()
        .with_ssid(
            credentials
                .ssid
                .try_into()
                .map_err(|_| WifiStartError::Ssid)?,
        )
        .with_authentication(authentication);
    let interface = Interface::try_station().ok_or(WifiStartError::AlreadyStarted)?;
    let controller = WifiController::new(
        wifi,
        ControllerConfig::default().with_initial_config(Config::Station(station)),
    )
    .map_err(WifiStartError::Radio)?;
    let (stack, runner) = embassy_net::new(
        interface,
        embassy_net::Config::dhcpv4(Default::default()),
        resources,
        seed,
    );
    spawner.spawn(keep_connected(controller).map_err(WifiStartError::Spawn)?);
    spawner.spawn(run_stack(runner).map_err(WifiStartError::Spawn)?);
    Ok(stack)
}

#[embassy_executor::task]
async fn keep_connected(mut controller: WifiController<'static>) {
    loop {
        match controller.connect_async().await {
            Ok(info) => {
                log::info!("wi-fi: connected to {:?}", info.ssid);
                let lost = controller.wait_for_disconnect_async().await;
                log::warn!("wi-fi: disconnected ({lost:?})");
            }
            Err(e) => log::warn!("wi-fi: cannot connect: {e:?}"),
        }
        Timer::after(RETRY).await;
    }
}

#[embassy_executor::task]
async fn run_stack(mut runner: Runner<'static, Interface>) {
    runner.run().await
}
