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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlift_format::manifest::{KeyFileError, MAX_SIGNED_LEN, base64_decode};
use airlift_protocol::throttle::Rule;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::device::{Command, Control, Refusal};

/// The page, embedded from `web/device/index.html`.
pub const INDEX_HTML: &str = include_str!("../../../web/device/index.html");

/// Largest upload accepted (the biggest app slot of a 16 MiB flash).
pub const MAX_UPLOAD: usize = 16 * 1024 * 1024;

/// Failed passwords a client may send back to back, and how fast they are forgiven.
pub const CLIENT_RULE: Rule = Rule {
    burst: 10,
    interval_ms: 2000,
};
/// The same for the password, whoever guesses it.
pub const PASSWORD_RULE: Rule = Rule {
    burst: 30,
    interval_ms: 1000,
};
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
/// The header that marks a request as the page's own (or a script's).
pub const CSRF_HEADER: &str = "x-airlift-csrf";

/// Failed passwords: per client address and for the password.
#[derive(Default)]
struct Failures {
    clients: HashMap<IpAddr, u64>,
    password: u64,
}

#[derive(Clone)]
struct Web {
    control: Control,
    /// SHA-256 of the password: compared in constant time whatever its length.
    password: [u8; 32],
    failures: Arc<Mutex<Failures>>,
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

    /// Milliseconds before `client` may try a password again (0: now).
    fn wait_ms(&self, client: Option<IpAddr>) -> u64 {
        let now = self.now_ms();
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let for_client = client
            .and_then(|c| f.clients.get(&c))
            .map_or(0, |&at| CLIENT_RULE.wait_ms(at, now));
        for_client.max(PASSWORD_RULE.wait_ms(f.password, now))
    }

    fn failed(&self, client: Option<IpAddr>) {
        let now = self.now_ms();
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (next, spent_password) = PASSWORD_RULE.fail(f.password, now);
        f.password = next;
        if f.clients.len() >= 4096 {
            f.clients.retain(|_, at| *at > now);
        }
        let spent_client = match client {
            Some(c) if f.clients.len() < 4096 || f.clients.contains_key(&c) => {
                let at = f.clients.entry(c).or_insert(0);
                let (next, spent) = CLIENT_RULE.fail(*at, now);
                *at = next;
                spent
            }
            _ => false,
        };
        drop(f);
        if spent_client {
            let who = client.map_or("a client".into(), |c| c.to_string());
            self.log(&format!(
                "device page: too many wrong passwords from {who}: refusing it for a while"
            ));
        }
        if spent_password {
            self.log("device page: too many wrong passwords: refusing every client for a while");
        }
    }
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

/// Whether `given` is the password whose SHA-256 is `password`, in time
/// that depends on neither (not even on their lengths).
fn is_password(given: &str, password: &[u8; 32]) -> bool {
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    given
        .iter()
        .zip(password)
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
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

/// Whether a state-changing request is the page's own: `Bearer` (a
/// browser never adds it by itself), `X-Airlift-CSRF`, or an `Origin`
/// that is this page's.
fn own_request(headers: &HeaderMap, bearer: bool) -> bool {
    if bearer || headers.contains_key(CSRF_HEADER) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
        }
        _ => false,
    }
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
    let bearer = authorization.and_then(|v| v.strip_prefix("Bearer "));
    let given = bearer
        .map(|t| t.trim().to_owned())
        .or_else(|| authorization.and_then(decode_basic));
    let uses_bearer = bearer.is_some();
    if given.is_some() {
        let wait = web.wait_ms(client);
        if wait > 0 {
            let secs = wait.div_ceil(1000).max(1);
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                &format!("too many wrong passwords: try again in {secs} s"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return refuse(response);
        }
    }
    match given {
        Some(g) if is_password(&g, &web.password) => {
            if !request.method().is_safe() && !own_request(request.headers(), uses_bearer) {
                return refuse(error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "a request that changes something must come from the device page itself \
                     (same Origin), or carry the X-Airlift-CSRF header: the guard against \
                     cross-site request forgery",
                ));
            }
            next.run(request).await
        }
        given => {
            if given.is_some() {
                web.failed(client);
            }
            drain(request.into_body()).await;
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
            refuse(response)
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

async fn upload(State(web): State<Web>, headers: HeaderMap, body: Body) -> Response {
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
    use http_body_util::BodyExt;
    let image = match http_body_util::Limited::new(body, MAX_UPLOAD)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("the upload is larger than {MAX_UPLOAD} bytes, the largest app slot"),
            ));
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "body",
                &format!("cannot read the upload: {e}"),
            );
        }
    };
    if image.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "verification",
            "empty upload: send the .bin as the body",
        );
    }
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

async fn pull(State(web): State<Web>, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refuse(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "a pull request is {\"url\": ..., \"manifest_url\": ...}, under 16 KiB",
            ));
        }
    };
    let p: PullRequest = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_json",
                &format!("expected {{\"url\": ..., \"manifest_url\": ...}}: {e}"),
            );
        }
    };
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
    router_with_log(control, password, None)
}

/// The same, with the page's log lines (throttled clients) sent to `log`.
pub fn router_with_log(control: Control, password: &str, log: Option<Log>) -> Router {
    let web = Web {
        control,
        password: Sha256::digest(password.as_bytes()).into(),
        failures: Arc::default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_compare_by_their_digests_whatever_their_lengths() {
        let stored: [u8; 32] = Sha256::digest(b"s3cret").into();
        assert!(is_password("s3cret", &stored));
        assert!(!is_password("s3cre", &stored));
        assert!(!is_password("s3cret!", &stored));
        assert!(!is_password("", &stored));
    }

    #[test]
    fn state_changes_must_be_the_pages_own() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let host = ("host", "192.168.1.7");
        assert!(own_request(&headers(&[host]), true), "Bearer");
        assert!(own_request(&headers(&[host, (CSRF_HEADER, "1")]), false));
        assert!(own_request(
            &headers(&[host, ("origin", "http://192.168.1.7")]),
            false
        ));
        assert!(!own_request(
            &headers(&[host, ("origin", "http://evil.example")]),
            false
        ));
        assert!(!own_request(&headers(&[host, ("origin", "null")]), false));
        assert!(!own_request(&headers(&[host]), false), "Basic alone");
    }
}
