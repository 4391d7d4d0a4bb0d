//! The fleet dashboard (`web/dashboard`): static files, embedded in the
//! binary and served at `/`. The pages talk only to the REST API; served
//! from any other static host they talk to the API named in their
//! `config.js`, which that origin may call once it is among
//! [`crate::Config::cors_origins`].
//!
//! Every file is served with a content security policy that allows only
//! this origin's scripts, styles and API, so a page that embedded foreign
//! content would stop working rather than load it.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct File {
    /// Its path under `web/dashboard` (and under `/` when served).
    pub path: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
}

macro_rules! embed {
    ($($path:literal),* $(,)?) => {
        &[$(File {
            path: $path,
            bytes: include_bytes!(concat!("../../../web/dashboard/", $path)),
        }),*]
    };
}

/// Every file of `web/dashboard` (a test checks that none is missing).
pub const FILES: &[File] = embed![
    "index.html",
    "config.js",
    "style.css",
    "app.js",
    "api.js",
    "ui.js",
    "views/overview.js",
    "views/devices.js",
    "views/device.js",
    "views/firmware.js",
    "views/deployments.js",
    "views/rollouts.js",
    "views/audit.js",
    "vendor/preact-htm.js",
    "vendor/LICENSE-htm",
    "vendor/LICENSE-preact",
    "vendor/README.md",
];

/// What the dashboard may load and call: this origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The `Content-Type` of a file, by its extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    }
}

fn respond(file: &File) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type(file.path)),
        // Revalidated on every load, so a new binary's dashboard shows at once.
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ]
    .map(|(name, value)| (name, HeaderValue::from_static(value)));
    (headers, file.bytes).into_response()
}

/// `/` (the index page) and every file under its own path.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for file in FILES {
        let handler = move || std::future::ready(respond(file));
        router = router.route(&format!("/{}", file.path), get(handler));
        if file.path == "index.html" {
            router = router.route("/", get(handler));
        }
    }
    router
}
