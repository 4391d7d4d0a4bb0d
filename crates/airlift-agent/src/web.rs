//! The device's local web page and API: what the ESP32 firmware serves on
//! the local network, from the same files (`web/device`). What each request
//! is answered with is decided in `airlift_client::page` (and the status in
//! `airlift_client::status`), which the firmware answers with too.
//!
//! | route | what |
//! |-------|------|
//! | `GET /` | the page (no password needed: it asks for it) |
//! | `GET /api/status` | [`Snapshot`](crate::device::Snapshot): running image, slots, otadata, boot counter, boot log, history |
//! | `POST /api/upload` | body: the `.bin`; header `X-Airlift-Manifest`: the signed manifest, base64 |
//! | `POST /api/pull` | `{"url": ..., "manifest_url": ...}`: download both, install |
//! | `POST /api/reboot` | reset the device |
//!
//! The page itself is the same static file on every device and is served to
//! anyone: it asks for the password and sends it with every API call. The
//! API needs the password: HTTP Basic (any user name) or
//! `Authorization: Bearer <password>` (what the page sends, so a wrong
//! password gets a Bearer challenge and the browser shows no login dialog of
//! its own). Errors are `{"error": {"code": "...", "message": "..."}}` like
//! the server's.
//!
//! Hardening (issue 16):
//! - the password is compared in constant time (SHA-256 of both, then
//!   every byte), and failures are throttled per client address and for
//!   the password as a whole ([`CLIENT_RULE`], [`PASSWORD_RULE`]): past
//!   them the answer is 429 with `Retry-After`, before the password is
//!   looked at;
//! - a request that fails authentication is answered before its body is
//!   read (at most [`DRAIN`] bytes, for at most [`DRAIN_TIME`], are read
//!   and dropped, so the client sees the answer instead of a reset);
//! - a request that changes something (`POST`) must come from the page's
//!   own origin (`Origin`), carry `X-Airlift-CSRF`, or authenticate with
//!   `Bearer`, which a browser never adds by itself: a foreign page cannot
//!   use Basic credentials the browser remembers (cross-site request
//!   forgery);
//! - [`serve`] bounds connections: at most [`MAX_CONNECTIONS`], a request
//!   head within [`HEADER_TIMEOUT`], a body that keeps coming;
//! - `/api/pull` streams the image into the slot, never more than its
//!   signed manifest's size, and says only "could not fetch" about other
//!   hosts.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlift_client::page::{
    ApiError, ClientKey, Gate, INDEX_HTML as PAGE, Installed, MANIFEST_HEADER, ManifestBuffer,
    PagePassword, PullRequest, Rebooting, Tried, own_request, upload_body, upload_manifest,
};
pub use airlift_client::page::{CLIENT_RULE, CSRF_HEADER, PASSWORD_RULE};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::oneshot;

use crate::device::{Command, Control, Refusal};

/// The page, embedded from `web/device/index.html` (by `airlift-client`,
/// which the firmware embeds it from too).
pub const INDEX_HTML: &str = PAGE;

/// Largest upload accepted (the biggest app slot of a 16 MiB flash).
pub const MAX_UPLOAD: usize = 16 * 1024 * 1024;

/// Connections the page serves at once (an ESP32 has few sockets).
pub const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send a whole request head, from the moment the
/// page waits for one (a new connection, or the end of the last answer).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause in a request body.
pub const BODY_STALL: Duration = Duration::from_secs(30);
/// Bytes of a refused request's body read (and dropped) before answering.
pub const DRAIN: usize = 64 * 1024;
/// Longest time spent on them.
pub const DRAIN_TIME: Duration = Duration::from_secs(1);
/// Clients whose wrong passwords the page counts one by one (past them,
/// the one forgiven soonest makes room).
const GATE_CLIENTS: usize = 64;

#[derive(Clone)]
struct Web {
    control: Control,
    password: PagePassword,
    gate: Arc<Mutex<Gate<GATE_CLIENTS>>>,
    started: Instant,
    log: Option<Log>,
}

/// Where the page's log lines go (`airlift device run` prints them).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

impl Web {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn log(&self, line: &str) {
        if let Some(log) = &self.log {
            log(line);
        }
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate<GATE_CLIENTS>> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn client_key(ip: IpAddr) -> ClientKey {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(e.body())).into_response();
    if let Some(challenge) = e.challenge {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    if let Some(secs) = e.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Reads at most [`DRAIN`] bytes of a refused request's body, for at most
/// [`DRAIN_TIME`], and drops them: the client is sending (an upload), and
/// closing with the body unread makes the kernel reset the connection,
/// often before the client saw the answer.
async fn drain(body: Body) {
    use http_body_util::BodyExt;
    let mut body = body;
    let read_some = async {
        let mut read = 0;
        while read < DRAIN {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read_some).await;
}

/// A refusal that closes the connection (the body is not read further).
fn refuse(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn auth(State(web): State<Web>, request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let tried = Tried::of(authorization);
    let client = client.map(client_key);
    if tried != Tried::Nothing {
        let wait = web.gate().wait_ms(client.as_ref(), web.now_ms());
        if wait > 0 {
            return refuse(error(&ApiError::throttled(wait)));
        }
    }
    match web.password.check(authorization) {
        Ok(()) => {
            let headers = request.headers();
            let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
            let own = own_request(
                tried == Tried::Bearer,
                headers.contains_key(CSRF_HEADER),
                text(header::ORIGIN),
                text(header::HOST),
            );
            if !request.method().is_safe() && !own {
                return refuse(error(&ApiError::cross_site()));
            }
            next.run(request).await
        }
        Err(e) => {
            if tried != Tried::Nothing {
                let spent = web.gate().failed(client.as_ref(), web.now_ms());
                if spent.client {
                    let who = client.map_or("a client".into(), |c| {
                        std::net::Ipv6Addr::from(c).to_canonical().to_string()
                    });
                    web.log(&format!(
                        "device page: too many wrong passwords from {who}: refusing it for a while"
                    ));
                }
                if spent.password {
                    web.log(
                        "device page: too many wrong passwords: refusing every client for a while",
                    );
                }
            }
            drain(request.into_body()).await;
            refuse(error(&e))
        }
    }
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response()
}

async fn status(State(web): State<Web>) -> Response {
    match web.control.snapshot.lock() {
        Ok(s) => Json(s.page()).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "status unavailable").into_response(),
    }
}

async fn command(
    web: &Web,
    make: impl FnOnce(oneshot::Sender<Result<String, Refusal>>) -> Command,
) -> Response {
    let (tx, rx) = oneshot::channel();
    if web.control.commands.send(make(tx)).await.is_err() {
        return error(&ApiError::stopped());
    }
    match rx.await {
        Ok(Ok(version)) => Json(Installed {
            installed: &version,
            rebooting: true,
        })
        .into_response(),
        Ok(Err(r)) => error(&ApiError::refused(r.reason, &r.message)),
        Err(_) => error(&ApiError::reset()),
    }
}

async fn upload(State(web): State<Web>, headers: HeaderMap, body: Body) -> Response {
    let header = headers.get(MANIFEST_HEADER).and_then(|v| v.to_str().ok());
    let mut blob: ManifestBuffer = [0; _];
    let manifest = match upload_manifest(header, &mut blob) {
        Ok(m) => m.to_vec(),
        Err(e) => return refuse(error(&e)),
    };
    use http_body_util::BodyExt;
    let image = match http_body_util::Limited::new(body, MAX_UPLOAD)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(error(&ApiError::too_large(format_args!(
                "the upload is larger than {MAX_UPLOAD} bytes, the largest app slot"
            ))));
        }
        Err(e) => {
            return error(&ApiError::bad_request(format_args!(
                "cannot read the upload: {e}"
            )));
        }
    };
    if let Err(e) = upload_body(image.len()) {
        return error(&e);
    }
    command(&web, |reply| Command::Upload {
        image,
        manifest,
        reply,
    })
    .await
}

async fn pull(State(web): State<Web>, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refuse(error(&ApiError::too_large(format_args!(
                "a pull request is {{\"url\": ..., \"manifest_url\": ...}}, under 16 KiB"
            ))));
        }
    };
    let p: PullRequest = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            return error(&ApiError::bad_request(format_args!(
                "expected {{\"url\": ..., \"manifest_url\": ...}}: {e}"
            )));
        }
    };
    command(&web, |reply| Command::Pull {
        url: p.url.to_string(),
        manifest_url: p.manifest_url.to_string(),
        reply,
    })
    .await
}

async fn reboot(State(web): State<Web>) -> Response {
    if web.control.commands.send(Command::Reboot).await.is_err() {
        return error(&ApiError::stopped());
    }
    (StatusCode::ACCEPTED, Json(Rebooting { rebooting: true })).into_response()
}

/// The page and API for one device.
pub fn router(control: Control, password: &str) -> Router {
    router_with_log(control, PagePassword::new(password), None)
}

/// The page and API for one device whose password is known by its SHA-256
/// (as `airlift flash provision --page-password` keeps it), with the page's
/// log lines (throttled clients) sent to `log`.
pub fn router_with_log(control: Control, password: PagePassword, log: Option<Log>) -> Router {
    let web = Web {
        control,
        password,
        gate: Arc::default(),
        started: Instant::now(),
        log,
    };
    Router::new()
        .route("/api/status", get(status))
        .route("/api/upload", post(upload))
        .route("/api/pull", post(pull))
        .route("/api/reboot", post(reboot))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_STALL,
        ))
        // route_layer: an unknown path (a browser's /favicon.ico) is a plain 404,
        // not a password challenge. Routes added after it are not behind it:
        // the page holds no secret.
        .route_layer(middleware::from_fn_with_state(web.clone(), auth))
        .route("/", get(index))
        .with_state(web)
}

/// A random password for the page (printed by `airlift device run`).
pub fn generate_password() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 9];
    getrandom::fill(&mut raw)?;
    Ok(airlift_format::manifest::base64_encode(&raw).replace(['+', '/'], "x"))
}

/// The bounds [`serve_with`] keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub connections: usize,
    /// Time to send a whole request head.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
        }
    }
}

/// Serves `router` on `listener` with the default [`Limits`].
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    serve_with(listener, router, Limits::default()).await
}

/// Serves `router` on `listener` until the listener fails, bounded: at most
/// `limits.connections` at once (one more is answered 503 and closed), a
/// request head within `limits.header_timeout` of the page waiting for it
/// (a new connection, or the end of the last answer), whatever arrives
/// meanwhile. Each request carries the client's `ConnectInfo<SocketAddr>`.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tokio::io::AsyncWriteExt;
    use tower::ServiceExt;

    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if e.kind() == std::io::ErrorKind::InvalidInput {
                    return Err(e);
                }
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= limits.connections {
            tokio::spawn(async move {
                let body = "{\"error\":{\"code\":\"busy\",\"message\":\"the device page \
                            serves few connections at once: try again shortly\"}}";
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                     retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ =
                    tokio::time::timeout(HEADER_TIMEOUT, stream.write_all(answer.as_bytes())).await;
            });
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (router, open) = (router.clone(), open.clone());
        tokio::spawn(async move {
            let service = tower::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                router.clone().oneshot(request.map(Body::new))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let service = hyper_util::service::TowerToHyperService::new(service);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
