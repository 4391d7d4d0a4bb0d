//! The device's local web page and API: what the ESP32 firmware serves on
//! the local network, from the same files (`web/device`, embedded here).
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

use std::sync::Arc;

use airlift_format::manifest::{KeyFileError, MAX_SIGNED_LEN, base64_decode};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use crate::device::{Command, Control, Refusal};

/// The page, embedded from `web/device/index.html`.
pub const INDEX_HTML: &str = include_str!("../../../web/device/index.html");

/// Largest upload accepted (the biggest app slot of a 16 MiB flash).
pub const MAX_UPLOAD: usize = 16 * 1024 * 1024;

#[derive(Clone)]
struct Web {
    control: Control,
    password: Arc<str>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn decode_basic(value: &str) -> Option<String> {
    let encoded = value.strip_prefix("Basic ")?.trim();
    let mut out = vec![0u8; encoded.len()];
    let n = base64_decode(encoded.as_bytes(), &mut out).ok()?;
    let text = String::from_utf8(out[..n].to_vec()).ok()?;
    text.split_once(':').map(|(_, p)| p.to_owned())
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(web): State<Web>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let bearer = authorization.and_then(|v| v.strip_prefix("Bearer "));
    let given = bearer
        .map(|t| t.trim().to_owned())
        .or_else(|| authorization.and_then(decode_basic));
    let uses_bearer = bearer.is_some();
    match given {
        Some(g) if same(g.as_bytes(), web.password.as_bytes()) => next.run(request).await,
        given => {
            // Read what the client is sending (an upload) before answering:
            // closing with the body unread makes the kernel reset the
            // connection, and the client sees "connection reset" instead
            // of this answer.
            let _ = axum::body::to_bytes(request.into_body(), MAX_UPLOAD).await;
            let message = if given.is_some() {
                "wrong password for this device page"
            } else {
                "this device page needs its password (HTTP Basic with any user name, or Bearer)"
            };
            let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
            let challenge = if uses_bearer {
                "Bearer realm=\"airlift device\""
            } else {
                "Basic realm=\"airlift device\""
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            response
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
        Ok(s) => Json(s.clone()).into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "status unavailable",
        ),
    }
}

async fn command(
    web: &Web,
    make: impl FnOnce(oneshot::Sender<Result<String, Refusal>>) -> Command,
) -> Response {
    let (tx, rx) = oneshot::channel();
    if web.control.commands.send(make(tx)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the device is not running",
        );
    }
    match rx.await {
        Ok(Ok(version)) => Json(json!({"installed": version, "rebooting": true})).into_response(),
        Ok(Err(r)) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            r.reason.as_str(),
            &r.message,
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "reset",
            "the device reset before answering",
        ),
    }
}

async fn upload(State(web): State<Web>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(text) = headers
        .get("x-airlift-manifest")
        .and_then(|v| v.to_str().ok())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "signature",
            "missing X-Airlift-Manifest header: the signed manifest (airlift release sign), base64",
        );
    };
    let mut blob = vec![0u8; MAX_SIGNED_LEN + 8];
    let manifest = match base64_decode(text.trim().as_bytes(), &mut blob) {
        Ok(n) => blob[..n].to_vec(),
        // Someone picked the image (or another big file) as the manifest.
        Err(KeyFileError::WrongLength { got }) => {
            return error(
                StatusCode::BAD_REQUEST,
                "signature",
                &format!(
                    "X-Airlift-Manifest holds {got} bytes but a signed manifest is at most \
                     {MAX_SIGNED_LEN}: send the manifest `airlift release sign` wrote, not the image"
                ),
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "signature",
                &format!("X-Airlift-Manifest is not base64: {e}"),
            );
        }
    };
    if body.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "verification",
            "empty upload: send the .bin as the body",
        );
    }
    let image = body.to_vec();
    command(&web, |reply| Command::Upload {
        image,
        manifest,
        reply,
    })
    .await
}

#[derive(Deserialize)]
struct PullRequest {
    url: String,
    manifest_url: String,
}

async fn pull(State(web): State<Web>, Json(p): Json<PullRequest>) -> Response {
    command(&web, |reply| Command::Pull {
        url: p.url,
        manifest_url: p.manifest_url,
        reply,
    })
    .await
}

async fn reboot(State(web): State<Web>) -> Response {
    if web.control.commands.send(Command::Reboot).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the device is not running",
        );
    }
    (StatusCode::ACCEPTED, Json(json!({"rebooting": true}))).into_response()
}

/// The page and API for one device.
pub fn router(control: Control, password: &str) -> Router {
    let web = Web {
        control,
        password: password.into(),
    };
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
