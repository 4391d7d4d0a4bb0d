//! The update task: the time, check-ins, events, downloads into the
//! engine, the reset into a new image. Every decision is the client's
//! (`airlift-client`); this is the I/O around it, as the PC agent's
//! `device.rs` is.

use airlift_client::download::{self, Fetch, Interrupt};
use airlift_client::health::ServerContact;
use airlift_client::page::ApiError;
use airlift_client::status::DeviceState;
use airlift_client::text::Text;
use airlift_client::text::sha_hex;
use airlift_client::time::SyncSchedule;
use airlift_client::{Attempt, Chunk, Failure, OFFLINE_WAIT_MS, Refusal, Session};
use airlift_format::manifest::{MAX_SIGNED_LEN, SignedManifest};
use airlift_protocol::{
    CHECKIN_PATH, CheckInAnswer, EVENTS_PATH, Label, UNESCAPE_BUFFER_LEN, Update,
};
use embassy_futures::select::{Either3, select3};
use embassy_net::Stack;
use embassy_time::{Duration, Timer};
use reqwless::request::Method;

use crate::flash::Flash;
use crate::guard::Airlift;
use crate::http::{BodySink, Http};
use crate::journal::{Log, now_ms};
use crate::shared::{
    PULLED, PULLS, Pull, SharedAirlift, WAKE, attempt_ended, reset_at, show_error, show_state,
};
use crate::{shared, sntp};

/// Longest JSON the device sends (a check-in, or a batch of events).
const REQUEST_MAX: usize = 3072;

/// What a round leads to.
enum Next {
    /// The next round after this many ms.
    Wait(u64),
    /// Report what waits, then reset (into a new image).
    Reset,
}

/// The update task. Needs the network up (it waits for it).
#[embassy_executor::task]
pub async fn update(airlift: &'static SharedAirlift, stack: Stack<'static>) {
    let Some(mut http) = Http::new(stack) else {
        log::error!("airlift: the update task runs once");
        return;
    };
    let mut sync = SyncSchedule::new();
    let mut wait_ms = {
        let a = airlift.lock().await;
        a.client
            .first_wait_ms(u64::from(esp_hal::rng::Rng::new().random()))
    };
    loop {
        // A pull that ended a held check-in waits in the channel: first.
        let pull = match PULLS.try_receive() {
            Ok(pull) => Some(pull),
            Err(_) => match select3(
                Timer::after(Duration::from_millis(wait_ms)),
                WAKE.wait(),
                PULLS.receive(),
            )
            .await
            {
                Either3::Third(pull) => Some(pull),
                _ => None,
            },
        };
        if !stack.is_config_up() {
            // Without a network there is nothing to do but wait for it; a
            // reset asked for meanwhile is the supervisor's.
            stack.wait_config_up().await;
        }
        if sync.due(now_ms()) {
            let at = now_ms();
            sync.done(at, learn_time(airlift, stack).await);
        }
        // What the boot or the last round queued goes out first (the
        // server hears of a boot before the check-in it makes).
        send_events(airlift, &mut http).await;
        let next = if let Some(pull) = pull {
            let answer = install_pull(airlift, &mut http, &pull).await;
            let installed = answer.is_ok();
            PULLED.signal(answer);
            if installed {
                // The page's answer goes out before the reset.
                shared::request_reset(1_000);
                Next::Reset
            } else {
                Next::Wait(0)
            }
        } else if reset_at().is_some() {
            Next::Reset
        } else {
            round(airlift, &mut http).await
        };
        match next {
            Next::Wait(ms) => wait_ms = ms,
            Next::Reset => {
                // The install's events (downloading .. rebooting) go out now.
                send_events(airlift, &mut http).await;
                // An asked-for reset waits for the page's answer to go out.
                if let Some(at) = reset_at() {
                    Timer::after(Duration::from_millis(at.saturating_sub(now_ms()))).await;
                }
                esp_hal::system::software_reset()
            }
        }
    }
}

/// Asks the time server; with the time, dates what this power-on wrote
/// before it. Whether the time server answered.
async fn learn_time(airlift: &'static SharedAirlift, stack: Stack<'static>) -> bool {
    let server = airlift.lock().await.settings.time_server().try_into();
    let Ok(server): Result<heapless::String<64>, _> = server else {
        return false;
    };
    match sntp::query(stack, &server).await {
        Ok(unix_ms) => {
            let mut a = airlift.lock().await;
            a.wall.set(now_ms(), unix_ms);
            let clock = a.clock();
            let Airlift { device, client, .. } = &mut *a;
            if let Err(e) = client.time_known(device, clock, &mut Log) {
                log::warn!("airlift: cannot date what was written before the time: {e}");
            }
            log::info!("airlift: the time is {} (unix)", clock.unix_secs);
            true
        }
        Err(e) => {
            log::warn!("airlift: no time yet: {e}");
            false
        }
    }
}

/// One check-in and what follows.
async fn round(airlift: &'static SharedAirlift, http: &mut Http) -> Next {
    let (report, server, token) = {
        let a = airlift.lock().await;
        if !a.client.config().has_server {
            return Next::Wait(OFFLINE_WAIT_MS);
        }
        (
            a.client.check_in(),
            a.settings.server.clone(),
            a.settings.token.clone(),
        )
    };
    let Some(report) = report else {
        return Next::Wait(OFFLINE_WAIT_MS);
    };
    let mut json = [0u8; REQUEST_MAX];
    let answer = match serde_json_core::to_slice(&report, &mut json) {
        // A held check-in (a long poll) gives way to the page's pull and to
        // a wake (a confirmation to report, a reset asked for): the server
        // forgets a check-in whose connection closed.
        Ok(n) => match select3(
            check_in(http, &server, &token, &json[..n]),
            PULLS.ready_to_receive(),
            WAKE.wait(),
        )
        .await
        {
            Either3::First(answer) => answer,
            Either3::Second(()) | Either3::Third(()) => return Next::Wait(0),
        },
        Err(_) => Err(Text::from_str_cut("check-in does not fit its buffer")),
    };
    let mut a = airlift.lock().await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            log::warn!("airlift: check-in failed: {e}");
            show_error(Some(format_args!("{e}"))).await;
            return Next::Wait(a.client.check_in_failed_wait_ms());
        }
    };
    a.server = ServerContact::Answered;
    show_error(None).await;
    let unix = a.clock().unix_secs;
    if unix > 0 {
        shared::view().lock().await.last_checkin = Some(unix);
    }
    let Airlift { device, client, .. } = &mut *a;
    let answered = match client.on_answer(device, answer, &mut Log) {
        Ok(answered) => answered,
        Err(e) => {
            log::error!("airlift: {e}");
            return Next::Wait(client.check_in_failed_wait_ms());
        }
    };
    let Some(update) = answered.update else {
        return Next::Wait(answered.wait_ms);
    };
    match install_assigned(&mut a, http, &update).await {
        Ok(true) => return Next::Reset,
        Ok(false) => {}
        Err(e) => log::error!("airlift: {e}"),
    }
    Next::Wait(a.client.retry_wait_ms(answered.wait_ms))
}

/// Posts a check-in; the answer, or why there is none.
async fn check_in(
    http: &mut Http,
    server: &str,
    token: &str,
    json: &[u8],
) -> Result<CheckInAnswer, Text<96>> {
    let url = download::url(server, CHECKIN_PATH).ok_or(Text::from_str_cut("URL too long"))?;
    let answer = http
        .call(Method::POST, url.as_str(), Some(token), Some(json))
        .await
        .map_err(|e| Text::format(format_args!("cannot reach the server: {e:?}")))?;
    if !(200..300).contains(&answer.status) {
        return Err(Text::format(format_args!(
            "check-in refused ({}): {}",
            answer.status,
            core::str::from_utf8(answer.body).unwrap_or("")
        )));
    }
    let mut scratch = [0u8; UNESCAPE_BUFFER_LEN];
    serde_json_core::from_slice_escaped::<CheckInAnswer>(answer.body, &mut scratch)
        .map(|(a, _)| a)
        .map_err(|e| Text::format(format_args!("bad check-in answer: {e}")))
}

/// Sends the events the client queued, in one request (best effort: the
/// last result is repeated at every check-in).
async fn send_events(airlift: &'static SharedAirlift, http: &mut Http) {
    let (events, server, token) = {
        let mut a = airlift.lock().await;
        if !a.client.has_events() || !a.client.config().has_server {
            return;
        }
        let events = a.client.take_events(now_ms());
        (events, a.settings.server.clone(), a.settings.token.clone())
    };
    let mut json = [0u8; REQUEST_MAX];
    let written = match &events[..] {
        [one] => serde_json_core::to_slice(one, &mut json),
        many => serde_json_core::to_slice(&many, &mut json),
    };
    let (Ok(n), Some(url)) = (written, download::url(&server, EVENTS_PATH)) else {
        log::warn!("airlift: events do not fit their buffer; dropped");
        return;
    };
    match http
        .call(Method::POST, url.as_str(), Some(&token), Some(&json[..n]))
        .await
    {
        Ok(a) if (200..300).contains(&a.status) => {}
        Ok(a) => log::warn!("airlift: the server refused the events: {}", a.status),
        Err(e) => log::warn!("airlift: could not report events: {e:?}"),
    }
}

/// Installs an update the server assigned: `Ok(true)` when it was
/// activated (reset into it), `Ok(false)` when it failed (reported) or
/// must be retried.
async fn install_assigned(
    a: &mut Airlift,
    http: &mut Http,
    update: &Update,
) -> Result<bool, airlift_client::Error> {
    let clock = a.clock();
    let Some(attempt) = a
        .client
        .begin_assigned(&mut a.device, update, clock, &mut Log)?
    else {
        return Ok(false);
    };
    let Some(url) = download::url(&a.settings.server, &update.url) else {
        return Ok(false);
    };
    let (server, token) = (a.settings.server.clone(), a.settings.token.clone());
    let from = Origin {
        url: url.as_str(),
        server: &server,
        token: Some(&token),
        sha256: &update.sha256,
    };
    attempt_install(a, http, &attempt, from)
        .await
        .map(|r| r.is_ok())
}

/// Where an image is downloaded from.
#[derive(Clone, Copy)]
struct Origin<'a> {
    url: &'a str,
    /// The device's server (its base URL): only a URL there gets the token
    /// and `If-Range` ([`Fetch::request`]).
    server: &'a str,
    /// The device's token, for its server (not for a pull's URL, nor an
    /// object store's presigned one).
    token: Option<&'a str>,
    /// The image's SHA-256 in hex (the artifact's `ETag`, for `If-Range`).
    sha256: &'a str,
}

/// One update attempt to its end: activated, or failed the way the client
/// decides (`Err` of the inner result: the refusal, for a local caller).
async fn attempt_install(
    a: &mut Airlift,
    http: &mut Http,
    attempt: &Attempt,
    from: Origin<'_>,
) -> Result<Result<Label, Refusal>, airlift_client::Error> {
    show_state(DeviceState::Downloading).await;
    let result = install(a, http, attempt, from).await;
    attempt_ended(a, attempt, result).await
}

enum Stop {
    Interrupt(Interrupt),
    Failure(Failure),
}

/// Streams the image into the inactive slot through the client's session
/// and activates it (the events are queued in the client).
async fn install(
    a: &mut Airlift,
    http: &mut Http,
    attempt: &Attempt,
    from: Origin<'_>,
) -> Result<(), Failure> {
    let Airlift { device, client, .. } = a;
    let retry_ms = client.config().retry_delay_ms;
    let mut session = client.start(device, attempt, now_ms(), &mut Log)?;
    loop {
        while let Some(fetch) = session.request() {
            match stream(http, &mut session, fetch, from).await {
                Ok(None) => {}
                Ok(Some(resumed_at)) => client.restarted(attempt, resumed_at, now_ms(), &mut Log),
                Err(Stop::Failure(f)) => return Err(f),
                Err(Stop::Interrupt(why)) => {
                    session.interrupted(why)?;
                    Timer::after(Duration::from_millis(retry_ms)).await;
                }
            }
        }
        if client
            .finish_install(&mut session, attempt, now_ms(), &mut Log)?
            .is_some()
        {
            return Ok(());
        }
    }
}

/// A response's body into the session.
struct IntoSession<'s, 'd> {
    session: &'s mut Session<'d, 'static, Flash>,
    fetch: Fetch,
    restarted: Option<u32>,
}

impl BodySink for IntoSession<'_, '_> {
    type Error = Stop;

    fn start(&mut self, status: u16, content_range: Option<&str>) -> Result<(), Stop> {
        self.session
            .on_response(self.fetch, status, content_range)
            .map_err(Stop::Interrupt)
    }

    fn chunk(&mut self, data: &[u8]) -> Result<bool, Stop> {
        match self.session.on_data(data).map_err(Stop::Failure)? {
            Chunk::Written(_) => Ok(self.session.left() > 0),
            Chunk::Restarted { resumed_at } => {
                self.restarted = Some(resumed_at);
                Ok(false)
            }
        }
    }

    fn end(&mut self) -> Result<(), Stop> {
        self.session.on_end().map_err(Stop::Interrupt)
    }
}

/// One response: `Some(resumed_at)` when the session restarted from byte 0.
async fn stream(
    http: &mut Http,
    session: &mut Session<'_, 'static, Flash>,
    fetch: Fetch,
    from: Origin<'_>,
) -> Result<Option<u32>, Stop> {
    let mut sink = IntoSession {
        session,
        fetch,
        restarted: None,
    };
    let request = fetch.request(from.server, from.url, from.sha256);
    let token = from.token.filter(|_| request.token);
    http.stream(from.url, token, &request, &mut sink)
        .await
        .map_err(|e| {
            Stop::Interrupt(Interrupt::Retry(Text::format(format_args!(
                "connection dropped: {e:?}"
            ))))
        })??;
    // Ended: the body ended and the session took it (`end`), or the session
    // has every byte, or it restarted from byte 0 (fetch again).
    Ok(sink.restarted)
}

/// A pull from the device page: the manifest fetched whole, the image
/// streamed like a server's (without its token: the URLs are anyone's).
async fn install_pull(
    airlift: &'static SharedAirlift,
    http: &mut Http,
    pull: &Pull,
) -> Result<Label, ApiError> {
    let mut manifest = [0u8; MAX_SIGNED_LEN];
    let n = match http.call(Method::GET, &pull.manifest_url, None, None).await {
        Ok(a) if (200..300).contains(&a.status) && a.body.len() <= MAX_SIGNED_LEN => {
            manifest[..a.body.len()].copy_from_slice(a.body);
            a.body.len()
        }
        Ok(a) => {
            let r = Refusal::download(
                Text::<96>::format(format_args!("{} answered {}", pull.manifest_url, a.status))
                    .as_str(),
            );
            return Err(ApiError::refused(r.reason, r.message.as_str()));
        }
        Err(e) => {
            let r = Refusal::download(
                Text::<96>::format(format_args!("cannot download {}: {e:?}", pull.manifest_url))
                    .as_str(),
            );
            return Err(ApiError::refused(r.reason, r.message.as_str()));
        }
    };
    let manifest = &manifest[..n];
    let mut a = airlift.lock().await;
    let Airlift { device, client, .. } = &mut *a;
    let attempt = match client.begin_local(device, pull.source, manifest) {
        Ok(Ok(attempt)) => attempt,
        Ok(Err(r)) => return Err(ApiError::refused(r.reason, r.message.as_str())),
        Err(e) => return Err(ApiError::internal(format_args!("{e}"))),
    };
    // The manifest parsed (begin_local took it): its image's SHA-256 is
    // what If-Range names when a pull resumes.
    let sha = SignedManifest::parse(manifest)
        .map(|m| sha_hex(&m.manifest.image_sha256))
        .unwrap_or_default();
    let from = Origin {
        url: &pull.url,
        server: "",
        token: None,
        sha256: &sha,
    };
    match attempt_install(&mut a, http, &attempt, from).await {
        Ok(Ok(version)) => Ok(version),
        Ok(Err(r)) => Err(ApiError::refused(r.reason, r.message.as_str())),
        Err(e) => Err(ApiError::internal(format_args!("{e}"))),
    }
}
