//! What Airlift's tasks share: the engine and client behind a mutex, the
//! page's view of the device, and the signals between the tasks.

use core::cell::Cell;

use airlift_client::notes::Source;
use airlift_client::page::{ApiError, MESSAGE_MAX};
use airlift_client::settings::SERVER_MAX;
use airlift_client::status::{
    DeviceState, PageStatus, Report, RunningInfo, SMALL_STATUS_JSON_MAX, Small,
};
use airlift_client::text::Text;
use airlift_client::{Attempt, Failure, Refusal};
use airlift_protocol::{Label, URL_MAX};
use embassy_sync::blocking_mutex::Mutex as BlockingMutex;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::channel::Channel;
use embassy_sync::mutex::Mutex;
use embassy_sync::once_lock::OnceLock;
use embassy_sync::signal::Signal;
use heapless::String;
use static_cell::StaticCell;

use crate::guard::Airlift;
use crate::journal::{Log as Journal, now_ms};

/// The engine and the device's client, shared between the app, the
/// supervisor, the update task and the device page.
pub type SharedAirlift = Mutex<CriticalSectionRawMutex, Airlift>;

/// Puts the engine where every task can reach it and fills the page's view
/// of it (reading the flash: a second or so). Call once, before the tasks
/// that use it start: a second call returns `None`.
pub fn share(mut airlift: Airlift) -> Option<&'static SharedAirlift> {
    static CELL: StaticCell<SharedAirlift> = StaticCell::new();
    let state = if airlift.trial().is_some() {
        DeviceState::Trial
    } else {
        DeviceState::Idle
    };
    // Nobody else holds the view yet.
    let mut view = view().try_lock().ok()?;
    view.name = device_name(&airlift);
    view.server = Text::from_str_cut(&airlift.settings.server).0;
    fill(&mut view, &mut airlift, state);
    drop(view);
    Some(&*CELL.try_init(Mutex::new(airlift))?)
}

fn device_name(a: &Airlift) -> String<64> {
    if !a.settings.name.is_empty() {
        return Text::from_str_cut(&a.settings.name).0;
    }
    let mac = esp_hal::efuse::base_mac_address();
    let b = mac.as_bytes();
    let tail = b.get(3..6).unwrap_or(&[]);
    Text::format(format_args!("airlift-{}", airlift_client::text::Hex(tail))).0
}

/// Wakes the update task: report and check in now.
pub(crate) static WAKE: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// A reset that was asked for (the page's reboot, an installed upload):
/// the update task reports what waits and resets; the supervisor resets at
/// this uptime whatever else happens.
static RESET_AT: BlockingMutex<CriticalSectionRawMutex, Cell<Option<u64>>> =
    BlockingMutex::new(Cell::new(None));

/// Asks for a reset within `within_ms`.
pub(crate) fn request_reset(within_ms: u64) {
    let at = now_ms() + within_ms;
    RESET_AT.lock(|c| c.set(Some(c.get().map_or(at, |t| t.min(at)))));
    WAKE.signal(());
}

/// When an asked-for reset is due (uptime, ms).
pub(crate) fn reset_at() -> Option<u64> {
    RESET_AT.lock(|c| c.get())
}

/// Whether an asked-for reset is due now.
pub(crate) fn reset_due() -> bool {
    RESET_AT.lock(|c| c.get().is_some_and(|at| now_ms() >= at))
}

/// A pull the page asks for (the update task owns the HTTP client).
pub(crate) struct Pull {
    pub(crate) url: String<URL_MAX>,
    pub(crate) manifest_url: String<URL_MAX>,
    pub(crate) source: Source,
}

/// Pulls waiting for the update task.
pub(crate) static PULLS: Channel<CriticalSectionRawMutex, Pull, 1> = Channel::new();

/// The update task's answer to a pull: the installed version, or why not.
pub(crate) static PULLED: Signal<CriticalSectionRawMutex, Result<Label, ApiError>> = Signal::new();

/// What the device page shows, refreshed by the tasks that change it.
pub(crate) struct View {
    pub(crate) name: String<64>,
    pub(crate) server: String<SERVER_MAX>,
    pub(crate) state: DeviceState,
    pub(crate) running: Option<RunningInfo>,
    pub(crate) last_checkin: Option<u64>,
    pub(crate) last_error: Option<String<MESSAGE_MAX>>,
    pub(crate) report: Option<Report<Small>>,
    /// The status as JSON, written when asked for.
    pub(crate) json: [u8; SMALL_STATUS_JSON_MAX],
}

impl View {
    const fn new() -> View {
        View {
            name: String::new(),
            server: String::new(),
            state: DeviceState::Booting,
            running: None,
            last_checkin: None,
            last_error: None,
            report: None,
            json: [0; SMALL_STATUS_JSON_MAX],
        }
    }

    /// `GET /api/status` as JSON, in `self.json`: its length, or `None`
    /// when it does not fit.
    pub(crate) fn write_json(&mut self) -> Option<usize> {
        let status = PageStatus {
            name: &self.name,
            running: self.running.as_ref(),
            state: self.state,
            server: (!self.server.is_empty()).then_some(self.server.as_str()),
            last_checkin: self.last_checkin,
            last_error: self.last_error.as_deref(),
            boots: self.report.as_ref().map_or(0, |r| r.boots_logged),
            flash: self.report.as_ref(),
        };
        serde_json_core::to_slice(&status, &mut self.json).ok()
    }
}

/// The page's view of the device, set by [`share`] (a `OnceLock` keeps
/// its 20 KiB out of the image: it is zeroed RAM until then).
static VIEW: OnceLock<Mutex<CriticalSectionRawMutex, View>> = OnceLock::new();

/// The page's view of the device.
pub(crate) fn view() -> &'static Mutex<CriticalSectionRawMutex, View> {
    VIEW.get_or_init(|| Mutex::new(View::new()))
}

/// Reads what the flash says for the page (both slots are verified: a
/// second or so) and sets the state.
pub(crate) async fn refresh(a: &mut Airlift, state: DeviceState) {
    fill(&mut *view().lock().await, a, state);
}

#[inline(never)]
fn fill(view: &mut View, a: &mut Airlift, state: DeviceState) {
    view.state = state;
    view.running = a.client.running().map(RunningInfo::from);
    match Report::<Small>::read(&mut a.device, Some(&a.notes)) {
        Ok(r) => view.report = Some(r),
        Err(e) => log::warn!("airlift: cannot read the flash for the page: {e}"),
    }
}

/// An update attempt ended (`result`): a failure goes to the client,
/// which decides what it is (a refusal is the attempt's result, reported;
/// a broken download of the server's update resumes later), and the page
/// shows the device again. The new version, or the refusal.
pub(crate) async fn attempt_ended(
    a: &mut Airlift,
    attempt: &Attempt,
    result: Result<(), Failure>,
) -> Result<Result<Label, Refusal>, airlift_client::Error> {
    let outcome = match result {
        Ok(()) => Ok(attempt.version.clone()),
        Err(failure) => {
            let clock = a.clock();
            let message: Text<96> = Text::format(format_args!("{failure}"));
            let refusal =
                a.client
                    .install_failed(&mut a.device, attempt, failure, clock, &mut Journal)?;
            if refusal.is_none() {
                show_error(Some(format_args!("{message}"))).await;
            }
            Err(refusal.unwrap_or_else(|| Refusal::download(message.as_str())))
        }
    };
    let state = if a.trial().is_some() {
        DeviceState::Trial
    } else {
        DeviceState::Idle
    };
    refresh(a, state).await;
    Ok(outcome)
}

/// Sets what the page shows of the device's state only.
pub(crate) async fn show_state(state: DeviceState) {
    view().lock().await.state = state;
}

/// The last problem talking to the server (`None`: it answered).
pub(crate) async fn show_error(error: Option<core::fmt::Arguments<'_>>) {
    let mut view = view().lock().await;
    match error {
        Some(e) => view.last_error = Some(Text::format(e).0),
        None => {
            view.last_error = None;
        }
    }
}
