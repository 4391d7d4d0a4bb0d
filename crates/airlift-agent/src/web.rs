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

use airlift_client::page::{
    ApiError, INDEX_HTML as PAGE, Installed, MANIFEST_HEADER, ManifestBuffer, PagePassword,
    PullRequest, Rebooting, upload_body, upload_manifest,
};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
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

#[derive(Clone)]
struct Web {
    control: Control,
    password: PagePassword,
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
    response
}

async fn auth(State(web): State<Web>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match web.password.check(authorization) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            // Read what the client is sending (an upload) before answering:
            // closing with the body unread makes the kernel reset the
            // connection, and the client sees "connection reset" instead
            // of this answer.
            let _ = axum::body::to_bytes(request.into_body(), MAX_UPLOAD).await;
            error(&e)
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

async fn upload(State(web): State<Web>, headers: HeaderMap, body: Bytes) -> Response {
    let header = headers.get(MANIFEST_HEADER).and_then(|v| v.to_str().ok());
    let mut blob: ManifestBuffer = [0; _];
    let manifest = match upload_manifest(header, &mut blob) {
        Ok(m) => m.to_vec(),
        Err(e) => return error(&e),
    };
    if let Err(e) = upload_body(body.len()) {
        return error(&e);
    }
    let image = body.to_vec();
    command(&web, |reply| Command::Upload {
        image,
        manifest,
        reply,
    })
    .await
}

async fn pull(State(web): State<Web>, Json(p): Json<PullRequest>) -> Response {
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
    router_hashed(control, PagePassword::new(password))
}

/// The page and API for one device whose password is known by its SHA-256
/// (as `airlift flash provision --page-password` keeps it).
pub fn router_hashed(control: Control, password: PagePassword) -> Router {
    let web = Web { control, password };
    Router::new()
        .route("/api/status", get(status))
        .route("/api/upload", post(upload))
        .route("/api/pull", post(pull))
        .route("/api/reboot", post(reboot))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
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
