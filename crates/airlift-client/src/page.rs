//! The device page's API, as decisions: which request is which, who may
//! call it, what an upload must carry, and what each answer says. The PC
//! agent (axum) and the firmware (picoserve) both serve `web/device`
//! ([`INDEX_HTML`], the same bytes) and answer through these functions, so
//! the page sees one contract:
//!
//! | route | what |
//! |-------|------|
//! | `GET /` | the page (no password needed: it asks for it) |
//! | `GET /api/status` | [`crate::status::PageStatus`] |
//! | `POST /api/upload` | body: the `.bin`; header `X-Airlift-Manifest`: the signed manifest, base64 |
//! | `POST /api/pull` | `{"url": ..., "manifest_url": ...}`: download both, install |
//! | `POST /api/reboot` | reset the device |
//!
//! Every `/api/*` call needs the page's password: HTTP Basic (any user
//! name) or `Authorization: Bearer <password>` (what the page sends, so a
//! wrong password gets a Bearer challenge and the browser shows no login
//! dialog of its own). The device keeps only the password's SHA-256
//! ([`PagePassword`]) and compares digests in constant time. Wrong
//! passwords are throttled per client and for the password as a whole
//! ([`Gate`]), and a call that changes something must be the page's own
//! ([`own_request`]: `Bearer`, `X-Airlift-CSRF` or the page's `Origin`), so
//! a foreign page cannot ride Basic credentials a browser remembers.
//! Errors are `{"error": {"code": "...", "message": "..."}}` like the
//! server's.

// An error answer carries its message by value: there is no heap on the
// chip to box it in, and it is made once per refused request.
#![allow(clippy::result_large_err)]

use airlift_format::manifest::{KeyFileError, MAX_SIGNED_LEN, base64_decode};
use airlift_protocol::Reason;
use airlift_protocol::throttle::Rule;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::text::Text;

/// The page, embedded from `web/device/index.html`.
pub const INDEX_HTML: &str = include_str!("../../../web/device/index.html");

/// The header that carries an upload's signed manifest, base64.
pub const MANIFEST_HEADER: &str = "x-airlift-manifest";

/// A request the page's server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the page.
    Index,
    /// `GET /api/status`.
    Status,
    /// `POST /api/upload`.
    Upload,
    /// `POST /api/pull`.
    Pull,
    /// `POST /api/reboot`.
    Reboot,
    /// A known path asked with another method (405).
    MethodNotAllowed,
    /// Anything else (404).
    NotFound,
}

impl Route {
    /// Which request `method` `path` is (`path` without the query).
    pub fn of(method: &str, path: &str) -> Route {
        let (get, post) = (method == "GET" || method == "HEAD", method == "POST");
        let (ok, route) = match path {
            "/" => (get, Route::Index),
            "/api/status" => (get, Route::Status),
            "/api/upload" => (post, Route::Upload),
            "/api/pull" => (post, Route::Pull),
            "/api/reboot" => (post, Route::Reboot),
            _ => return Route::NotFound,
        };
        if ok { route } else { Route::MethodNotAllowed }
    }

    /// Whether it needs the password (every `/api/*` call; the page holds
    /// no secret).
    pub fn needs_password(self) -> bool {
        !matches!(self, Route::Index | Route::NotFound)
    }
}

/// Longest message of an [`ApiError`].
pub const MESSAGE_MAX: usize = 192;

/// An error answer: HTTP status, code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The machine-readable code (a protocol reason for a refused install).
    pub code: &'static str,
    /// What was wrong.
    pub message: Text<MESSAGE_MAX>,
    /// The `WWW-Authenticate` challenge of a 401.
    pub challenge: Option<&'static str>,
    /// Seconds for `Retry-After` (a throttled client).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: core::fmt::Arguments<'_>) -> ApiError {
        ApiError {
            status,
            code,
            message: Text::format(message),
            challenge: None,
            retry_after: None,
        }
    }

    /// Too many wrong passwords: try again in `wait_ms`.
    pub fn throttled(wait_ms: u64) -> ApiError {
        let secs = u32::try_from(wait_ms.div_ceil(1000).max(1)).unwrap_or(u32::MAX);
        let mut e = ApiError::new(
            429,
            "throttled",
            format_args!("too many wrong passwords: try again in {secs} s"),
        );
        e.retry_after = Some(secs);
        e
    }

    /// A state change that is not the page's own (see [`own_request`]).
    pub fn cross_site() -> ApiError {
        ApiError::new(
            403,
            "forbidden",
            format_args!(
                "a request that changes something must come from the device page itself \
                 (same Origin), or carry the X-Airlift-CSRF header: the guard against \
                 cross-site request forgery"
            ),
        )
    }

    /// A body larger than the route takes.
    pub fn too_large(message: core::fmt::Arguments<'_>) -> ApiError {
        ApiError::new(413, "too_large", message)
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorFields {
                code: self.code,
                message: self.message.as_str(),
            },
        }
    }

    /// The device is busy installing and cannot take another install now.
    pub fn busy() -> ApiError {
        ApiError::new(
            503,
            "busy",
            format_args!("the device is installing an update: try again when it is done"),
        )
    }

    /// The device loop is not running (the agent's page outlived it).
    pub fn stopped() -> ApiError {
        ApiError::new(503, "stopped", format_args!("the device is not running"))
    }

    /// The device reset before it could answer.
    pub fn reset() -> ApiError {
        ApiError::new(
            503,
            "reset",
            format_args!("the device reset before answering"),
        )
    }

    /// A local install was refused (`reason`, `message`: a
    /// [`Refusal`](crate::Refusal)'s): nothing was installed.
    pub fn refused(reason: Reason, message: &str) -> ApiError {
        ApiError::new(422, reason.as_str(), format_args!("{message}"))
    }

    /// The device has no page password (none was provisioned): its API
    /// stays closed.
    pub fn no_password() -> ApiError {
        let mut e = ApiError::new(
            401,
            "unauthorized",
            format_args!(
                "this device's page has no password: provision one (airlift flash provision --page-password)"
            ),
        );
        e.challenge = Some("Bearer realm=\"airlift device\"");
        e
    }

    /// The device failed (its flash): logged in full, opaque to the page.
    pub fn internal(message: core::fmt::Arguments<'_>) -> ApiError {
        ApiError::new(500, "internal", message)
    }

    /// The request's body could not be read as what the route takes.
    pub fn bad_request(message: core::fmt::Arguments<'_>) -> ApiError {
        ApiError::new(400, "bad_request", message)
    }

    /// No such route.
    pub fn not_found() -> ApiError {
        ApiError::new(404, "not_found", format_args!("no such page or API"))
    }

    /// A known route asked with another method.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "method_not_allowed",
            format_args!("this method is not allowed here"),
        )
    }
}

/// `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorFields<'a> {
    code: &'a str,
    message: &'a str,
}

/// `200 {"installed": "<version>", "rebooting": true}`: a local install
/// activated; the device resets into it.
#[derive(Debug, Serialize)]
pub struct Installed<'a> {
    /// The new version.
    pub installed: &'a str,
    /// Always true.
    pub rebooting: bool,
}

/// `202 {"rebooting": true}`.
#[derive(Debug, Serialize)]
pub struct Rebooting {
    /// Always true.
    pub rebooting: bool,
}

/// The device page's password, kept as its SHA-256.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PagePassword([u8; 32]);

impl core::fmt::Debug for PagePassword {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PagePassword(<redacted>)")
    }
}

impl PagePassword {
    /// The password `password`.
    pub fn new(password: &str) -> PagePassword {
        PagePassword(Sha256::digest(password.as_bytes()).into())
    }

    /// A password known by its SHA-256 (as provisioned).
    pub fn from_sha256(sha256: [u8; 32]) -> PagePassword {
        PagePassword(sha256)
    }

    /// Its SHA-256.
    pub fn sha256(&self) -> [u8; 32] {
        self.0
    }

    /// Whether the `Authorization` header's value grants access: `Ok`, or
    /// the 401 to answer (with the challenge matching what was tried).
    pub fn check(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        let bearer = authorization.and_then(|v| v.strip_prefix("Bearer "));
        let mut basic = [0u8; 192];
        let given = match bearer {
            Some(b) => Some(b.trim().as_bytes()),
            None => authorization.and_then(|v| basic_password(v, &mut basic)),
        };
        match given {
            Some(g) if self.matches(g) => Ok(()),
            _ => {
                let mut e = if given.is_some() {
                    ApiError::new(
                        401,
                        "unauthorized",
                        format_args!("wrong password for this device page"),
                    )
                } else {
                    ApiError::new(
                        401,
                        "unauthorized",
                        format_args!(
                            "this device page needs its password (HTTP Basic with any user name, or Bearer)"
                        ),
                    )
                };
                e.challenge = Some(if bearer.is_some() {
                    "Bearer realm=\"airlift device\""
                } else {
                    "Basic realm=\"airlift device\""
                });
                Err(e)
            }
        }
    }

    /// Digests compared in constant time: how long it takes says nothing
    /// about how much of a guess was right, nor, digests being of one
    /// length, about the password's length.
    fn matches(&self, given: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(given).into();
        digest
            .iter()
            .zip(&self.0)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

/// The password of an HTTP Basic `Authorization` value (the user name is
/// ignored), decoded into `buf`.
fn basic_password<'b>(value: &str, buf: &'b mut [u8; 192]) -> Option<&'b [u8]> {
    let encoded = value.strip_prefix("Basic ")?.trim();
    let n = base64_decode(encoded.as_bytes(), buf).ok()?;
    let text = &buf[..n];
    let colon = text.iter().position(|&b| b == b':')?;
    Some(&text[colon + 1..])
}

/// The header that marks a request as the page's own (or a script's).
pub const CSRF_HEADER: &str = "x-airlift-csrf";

/// Whether a state-changing request is the page's own: it carries `Bearer`
/// (a browser never adds it by itself) or [`CSRF_HEADER`], or its `Origin`
/// is this page's `Host`. A read (`GET`) needs none of them.
pub fn own_request(bearer: bool, csrf: bool, origin: Option<&str>, host: Option<&str>) -> bool {
    if bearer || csrf {
        return true;
    }
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

/// What an `Authorization` value tries: no password (none, or one that
/// is not Basic nor Bearer), a Bearer password, or a Basic one. Only a
/// password tried counts against the [`Gate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tried {
    /// No password.
    Nothing,
    /// `Bearer <password>`.
    Bearer,
    /// `Basic base64(<user>:<password>)`.
    Basic,
}

impl Tried {
    /// What `authorization` tries.
    pub fn of(authorization: Option<&str>) -> Tried {
        let mut buf = [0u8; 192];
        match authorization {
            Some(v) if v.starts_with("Bearer ") => Tried::Bearer,
            Some(v) if basic_password(v, &mut buf).is_some() => Tried::Basic,
            _ => Tried::Nothing,
        }
    }
}

/// Wrong passwords a client may send back to back, and how fast they are forgiven.
pub const CLIENT_RULE: Rule = Rule {
    burst: 10,
    interval_ms: 2000,
};
/// The same for the password, whoever guesses it.
pub const PASSWORD_RULE: Rule = Rule {
    burst: 30,
    interval_ms: 1000,
};

/// A client's address as 16 bytes (an IPv4 address mapped into IPv6).
pub type ClientKey = [u8; 16];

/// Wrong passwords counted per client (the `N` most recent clients; one
/// past them takes the place of the one forgiven soonest) and for the
/// password, whoever guesses it, under [`CLIENT_RULE`] and
/// [`PASSWORD_RULE`]. Times are any monotonic milliseconds above 0.
#[derive(Debug, Clone)]
pub struct Gate<const N: usize> {
    clients: [(ClientKey, u64); N],
    password: u64,
}

impl<const N: usize> Default for Gate<N> {
    fn default() -> Self {
        Gate {
            clients: [([0; 16], 0); N],
            password: 0,
        }
    }
}

/// What a wrong password used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Spent {
    /// The client's allowance: it is refused for a while.
    pub client: bool,
    /// The password's: every client is refused for a while.
    pub password: bool,
}

impl<const N: usize> Gate<N> {
    fn slot(&self, client: &ClientKey) -> Option<usize> {
        self.clients
            .iter()
            .position(|(key, at)| key == client && *at != 0)
    }

    /// Milliseconds before `client` may try a password again (0: now).
    pub fn wait_ms(&self, client: Option<&ClientKey>, now_ms: u64) -> u64 {
        let for_client = client
            .and_then(|c| self.slot(c))
            .map_or(0, |i| CLIENT_RULE.wait_ms(self.clients[i].1, now_ms));
        for_client.max(PASSWORD_RULE.wait_ms(self.password, now_ms))
    }

    /// Counts a wrong password from `client`.
    pub fn failed(&mut self, client: Option<&ClientKey>, now_ms: u64) -> Spent {
        let (next, password) = PASSWORD_RULE.fail(self.password, now_ms);
        self.password = next;
        let client = match client {
            Some(c) if N > 0 => {
                let i = self.slot(c).unwrap_or_else(|| {
                    // The place of the client forgiven soonest (an empty one first).
                    let i = (0..N).min_by_key(|&i| self.clients[i].1).unwrap_or(0);
                    self.clients[i] = (*c, 0);
                    i
                });
                let (next, spent) = CLIENT_RULE.fail(self.clients[i].1, now_ms);
                self.clients[i].1 = next;
                spent
            }
            _ => false,
        };
        Spent { client, password }
    }
}

/// Room for an upload's decoded manifest.
pub type ManifestBuffer = [u8; MAX_SIGNED_LEN + 8];

/// The signed manifest an upload carries in [`MANIFEST_HEADER`], decoded
/// into `buf`; or the 400 to answer.
pub fn upload_manifest<'b>(
    header: Option<&str>,
    buf: &'b mut ManifestBuffer,
) -> Result<&'b [u8], ApiError> {
    let Some(text) = header else {
        return Err(ApiError::new(
            400,
            "signature",
            format_args!(
                "missing X-Airlift-Manifest header: the signed manifest (airlift release sign), base64"
            ),
        ));
    };
    match base64_decode(text.trim().as_bytes(), buf) {
        Ok(n) => Ok(&buf[..n]),
        // Someone picked the image (or another big file) as the manifest.
        Err(KeyFileError::WrongLength { got }) => Err(ApiError::new(
            400,
            "signature",
            format_args!(
                "X-Airlift-Manifest holds {got} bytes but a signed manifest is at most \
                 {MAX_SIGNED_LEN}: send the manifest `airlift release sign` wrote, not the image"
            ),
        )),
        Err(e) => Err(ApiError::new(
            400,
            "signature",
            format_args!("X-Airlift-Manifest is not base64: {e}"),
        )),
    }
}

/// An upload's body must hold the image: the 400 for an empty one.
pub fn upload_body(len: usize) -> Result<(), ApiError> {
    if len == 0 {
        return Err(ApiError::new(
            400,
            "verification",
            format_args!("empty upload: send the .bin as the body"),
        ));
    }
    Ok(())
}

/// `POST /api/pull`'s body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct PullRequest {
    /// URL of the `.bin`.
    pub url: heapless::String<{ airlift_protocol::URL_MAX }>,
    /// URL of the signed manifest.
    pub manifest_url: heapless::String<{ airlift_protocol::URL_MAX }>,
}
