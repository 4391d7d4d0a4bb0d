//! The device page and its API over picoserve: the same page and the same
//! answers as the PC agent's (`airlift_client::page` decides them; this is
//! the server's wiring). An upload is streamed from the request's body
//! into the engine; a pull is handed to the update task, which owns the
//! HTTP client.

use airlift_client::download::{Fetch, Interrupt};
use airlift_client::notes::Source;
use airlift_client::page::{
    ApiError, CSRF_HEADER, Gate, INDEX_HTML, Installed, MANIFEST_HEADER, ManifestBuffer,
    PagePassword, PullRequest, Rebooting, Route, Tried, own_request, upload_body, upload_manifest,
};
use airlift_client::status::DeviceState;
use airlift_client::text::Text;
use airlift_client::{Chunk, Failure, Refusal};
use airlift_protocol::UNESCAPE_BUFFER_LEN;
use embassy_executor::{SpawnError, Spawner};
use embassy_net::Stack;
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::mutex::Mutex;
use embassy_time::{Duration, with_timeout};
use picoserve::io::Read;
use picoserve::request::{Path, Request, RequestBodyConnection};
use picoserve::response::{IntoResponse, Response, ResponseWriter, StatusCode};
use picoserve::routing::PathRouterService;
use picoserve::{ResponseSent, Router};
use serde::Serialize;
use static_cell::StaticCell;

use crate::guard::Airlift;
use crate::journal::{Log, now_ms};
use crate::shared::{PULLED, PULLS, Pull, SharedAirlift, attempt_ended, request_reset, show_state};

/// The port the page is served on.
pub const PORT: u16 = 80;
/// Connections served at once (each a task with its own buffers): the
/// page's status polls go on during an upload.
pub const TASKS: usize = 2;

/// How long an upload's body may take to arrive.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a pull may take, download and install.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long an upload waits for the engine (busy with an update otherwise).
const ENGINE_WAIT: Duration = Duration::from_secs(2);

/// The page's requests, answered.
struct Page {
    airlift: &'static SharedAirlift,
    password: Option<PagePassword>,
    /// Wrong passwords, for the password as a whole: picoserve does not
    /// give the client's address, so no client is told apart.
    gate: Mutex<CriticalSectionRawMutex, Gate<0>>,
}

/// One pull at a time.
static PULLING: Mutex<CriticalSectionRawMutex, ()> = Mutex::new(());

/// What to answer: written by one call, whatever the route.
struct Reply<'b> {
    status: u16,
    content_type: &'static str,
    challenge: Option<&'static str>,
    retry_after: Option<u32>,
    body: &'b [u8],
}

impl<'b> Reply<'b> {
    /// `value` as JSON in `buf`.
    fn json<T: Serialize>(status: u16, value: &T, buf: &'b mut [u8]) -> Reply<'b> {
        let n = serde_json_core::to_slice(value, buf).unwrap_or(0);
        Reply {
            status,
            content_type: "application/json",
            challenge: None,
            retry_after: None,
            body: &buf[..n],
        }
    }

    fn error(e: &ApiError, buf: &'b mut [u8]) -> Reply<'b> {
        if e.status >= 500 {
            log::error!("airlift: page: {}", e.message);
        }
        Reply {
            challenge: e.challenge,
            retry_after: e.retry_after,
            ..Reply::json(e.status, &e.body(), buf)
        }
    }
}

impl PathRouterService<()> for Page {
    async fn call_path_router_service<R: Read, W: ResponseWriter<Error = R::Error>>(
        &self,
        _state: &(),
        _path_parameters: (),
        path: Path<'_>,
        request: Request<'_, R>,
        w: W,
    ) -> Result<ResponseSent, W::Error> {
        let route = Route::of(request.parts.method(), path.encoded());
        let headers = request.parts.headers();
        let mut body_connection = request.body_connection;
        let mut buf = [0u8; 512];
        let mut view = None;
        let reply = match self.answer(route, headers, &mut body_connection).await {
            Answer::Page => Reply {
                status: 200,
                content_type: "text/html; charset=utf-8",
                challenge: None,
                retry_after: None,
                body: INDEX_HTML.as_bytes(),
            },
            Answer::Status => {
                let mut v = crate::shared::view().lock().await;
                match v.write_json() {
                    Some(n) => {
                        view = Some((v, n));
                        Reply {
                            status: 200,
                            content_type: "application/json",
                            challenge: None,
                            retry_after: None,
                            body: &[],
                        }
                    }
                    None => Reply::error(
                        &ApiError::internal(format_args!("status does not fit its buffer")),
                        &mut buf,
                    ),
                }
            }
            Answer::Json(status, Done::Installed(version)) => Reply::json(
                status,
                &Installed {
                    installed: &version,
                    rebooting: true,
                },
                &mut buf,
            ),
            Answer::Json(status, Done::Rebooting) => {
                Reply::json(status, &Rebooting { rebooting: true }, &mut buf)
            }
            Answer::Error(e) => Reply::error(&e, &mut buf),
        };
        let body = match &view {
            Some((v, n)) => &v.json[..*n],
            None => reply.body,
        };
        // `finalize` reads what the client still sends (a refused upload)
        // before the answer, so it sees the answer, not a reset connection.
        let connection = body_connection.finalize().await?;
        let retry_after = reply
            .retry_after
            .map(|secs| Text::<12>::format(format_args!("{secs}")));
        let response = Response::new(StatusCode::new(reply.status), body)
            .with_content_type(reply.content_type)
            .with_headers(reply.challenge.map(|c| ("WWW-Authenticate", c)))
            .with_headers(retry_after.as_ref().map(|s| ("Retry-After", s.as_str())));
        response.write_to(connection, w).await
    }
}

/// What a request comes to.
enum Answer {
    Page,
    Status,
    Json(u16, Done),
    Error(ApiError),
}

enum Done {
    Installed(airlift_protocol::Label),
    Rebooting,
}

impl Page {
    async fn answer<R: Read>(
        &self,
        route: Route,
        headers: picoserve::request::Headers<'_>,
        body_connection: &mut RequestBodyConnection<'_, R>,
    ) -> Answer {
        if route.needs_password() {
            let text = |name| headers.get(name).and_then(|v| v.as_str().ok());
            let authorization = text("authorization");
            let tried = Tried::of(authorization);
            if tried != Tried::Nothing {
                let wait = self.gate.lock().await.wait_ms(None, now_ms().max(1));
                if wait > 0 {
                    return Answer::Error(ApiError::throttled(wait));
                }
            }
            let allowed = match &self.password {
                Some(p) => p.check(authorization),
                None => Err(ApiError::no_password()),
            };
            if let Err(e) = allowed {
                if tried != Tried::Nothing
                    && self
                        .gate
                        .lock()
                        .await
                        .failed(None, now_ms().max(1))
                        .password
                {
                    log::warn!(
                        "airlift: page: too many wrong passwords: refusing them for a while"
                    );
                }
                return Answer::Error(e);
            }
            let changes = matches!(route, Route::Upload | Route::Pull | Route::Reboot);
            let own = own_request(
                tried == Tried::Bearer,
                headers.get(CSRF_HEADER).is_some(),
                text("origin"),
                text("host"),
            );
            if changes && !own {
                return Answer::Error(ApiError::cross_site());
            }
        }
        let done = match route {
            Route::Index => return Answer::Page,
            Route::Status => return Answer::Status,
            Route::Upload => self.upload(headers, body_connection).await,
            Route::Pull => self.pull(body_connection).await,
            Route::Reboot => {
                request_reset(500);
                return Answer::Json(202, Done::Rebooting);
            }
            Route::MethodNotAllowed => Err(ApiError::method_not_allowed()),
            Route::NotFound => Err(ApiError::not_found()),
        };
        match done {
            Ok(version) => Answer::Json(200, Done::Installed(version)),
            Err(e) => Answer::Error(e),
        }
    }

    async fn upload<R: Read>(
        &self,
        headers: picoserve::request::Headers<'_>,
        body_connection: &mut RequestBodyConnection<'_, R>,
    ) -> Result<airlift_protocol::Label, ApiError> {
        let header = headers.get(MANIFEST_HEADER).and_then(|v| v.as_str().ok());
        let mut blob: ManifestBuffer = [0; _];
        let manifest = upload_manifest(header, &mut blob)?;
        upload_body(body_connection.content_length())?;
        let Ok(mut a) = with_timeout(ENGINE_WAIT, self.airlift.lock()).await else {
            return Err(ApiError::busy());
        };
        let reader = body_connection
            .body()
            .reader()
            .with_different_timeout(UPLOAD_TIMEOUT);
        match install_upload(&mut a, manifest, reader).await {
            Ok(Ok(version)) => {
                // Report what happened, then reset into the new image.
                request_reset(2_000);
                Ok(version)
            }
            Ok(Err(r)) => Err(ApiError::refused(r.reason, r.message.as_str())),
            Err(e) => Err(ApiError::internal(format_args!("{e}"))),
        }
    }

    async fn pull<R: Read>(
        &self,
        body_connection: &mut RequestBodyConnection<'_, R>,
    ) -> Result<airlift_protocol::Label, ApiError> {
        let body = body_connection
            .body()
            .read_all()
            .await
            .map_err(|e| ApiError::bad_request(format_args!("{e}")))?;
        let mut scratch = [0u8; UNESCAPE_BUFFER_LEN];
        let (p, _) = serde_json_core::from_slice_escaped::<PullRequest>(body, &mut scratch)
            .map_err(|e| {
                ApiError::bad_request(format_args!(
                    "the body must be {{\"url\": ..., \"manifest_url\": ...}}: {e}"
                ))
            })?;
        let Ok(_one) = PULLING.try_lock() else {
            return Err(ApiError::busy());
        };
        PULLED.reset();
        PULLS
            .try_send(Pull {
                url: p.url,
                manifest_url: p.manifest_url,
                source: Source::Pull,
            })
            .map_err(|_| ApiError::busy())?;
        with_timeout(PULL_TIMEOUT, PULLED.wait())
            .await
            .map_err(|_| ApiError::busy())?
    }
}

/// Streams an uploaded image into the engine through the client's
/// session. `Ok(Ok(version))`: activated.
async fn install_upload<B: Read>(
    a: &mut Airlift,
    manifest: &[u8],
    mut body: B,
) -> Result<Result<airlift_protocol::Label, Refusal>, airlift_client::Error> {
    let attempt = match a
        .client
        .begin_local(&mut a.device, Source::Upload, manifest)?
    {
        Ok(attempt) => attempt,
        Err(refusal) => return Ok(Err(refusal)),
    };
    show_state(DeviceState::Downloading).await;
    let written: Result<(), Failure> = async {
        let Airlift { device, client, .. } = &mut *a;
        let mut session = client.start(device, &attempt, now_ms(), &mut Log)?;
        // The body starts at byte 0: what an earlier upload left is skipped.
        let from = Fetch {
            from: session.resume_offset(),
        };
        session.on_response(from, 200, None).map_err(interrupted)?;
        let mut buf = [0u8; 2048];
        loop {
            let n = body.read(&mut buf).await.map_err(|_| {
                Failure::Download(Text::format(format_args!(
                    "the upload broke off at byte {} of {}",
                    session.resume_offset(),
                    session.size()
                )))
            })?;
            if n == 0 {
                break;
            }
            if let Chunk::Restarted { resumed_at } = session.on_data(&buf[..n])? {
                return Err(Failure::upload_again(resumed_at));
            }
        }
        session.on_end().map_err(interrupted)?;
        match client.finish_install(&mut session, &attempt, now_ms(), &mut Log)? {
            Some(_) => Ok(()),
            None => Err(Failure::upload_again(0)),
        }
    }
    .await;
    attempt_ended(a, &attempt, written).await
}

fn interrupted(i: Interrupt) -> Failure {
    match i {
        Interrupt::Retry(m) | Interrupt::Fatal(m) => Failure::Download(m),
    }
}

/// Starts serving the page on port [`PORT`] ([`TASKS`] tasks); the API
/// needs the provisioned page password, and is closed without one.
pub fn start(
    spawner: Spawner,
    airlift: &'static SharedAirlift,
    password: Option<PagePassword>,
    stack: Stack<'static>,
) -> Result<(), SpawnError> {
    static APP: StaticCell<Router<picoserve::routing::ServicePathRouter<Page>>> = StaticCell::new();
    static CONFIG: StaticCell<picoserve::Config> = StaticCell::new();
    let Some(app) = APP.try_init(Router::from_service(Page {
        airlift,
        password,
        gate: Mutex::new(Gate::default()),
    })) else {
        return Ok(());
    };
    let config = CONFIG.init(picoserve::Config::new(picoserve::Timeouts {
        start_read_request: picoserve::time::Duration::from_secs(5),
        persistent_start_read_request: picoserve::time::Duration::from_secs(1),
        read_request: picoserve::time::Duration::from_secs(10),
        write: picoserve::time::Duration::from_secs(5),
    }));
    for id in 0..TASKS {
        spawner.spawn(serve(id, stack, app, config)?);
    }
    Ok(())
}

#[embassy_executor::task(pool_size = TASKS)]
async fn serve(
    id: usize,
    stack: Stack<'static>,
    app: &'static Router<picoserve::routing::ServicePathRouter<Page>>,
    config: &'static picoserve::Config,
) -> ! {
    let (mut rx, mut tx, mut http) = ([0u8; 1536], [0u8; 1536], [0u8; 2048]);
    picoserve::Server::new(app, config, &mut http)
        .listen_and_serve(id, stack, PORT, &mut rx, &mut tx)
        .await
        .into_never()
}
