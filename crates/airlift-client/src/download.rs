//! How an image download resumes and when it gives up.
//!
//! A download asks for the bytes from where the engine's install stands:
//! from 0 a plain GET, else `Range: bytes=N-` with `If-Range: "<sha256>"`
//! (the artifact's `ETag`), so a server whose artifact changed sends the
//! whole image instead of a wrong tail. The answer decides:
//!
//! | answer | what the device does |
//! |---|---|
//! | 206 whose `Content-Range` starts at N | writes the body |
//! | 206 starting elsewhere | gives up: the server is not answering the question |
//! | 200 | the whole image again: skips the N bytes already written |
//! | 5xx, a connection that fails or closes early | retries after a delay, resuming |
//! | any other status | gives up |
//!
//! More than [`MAX_RETRIES`] retries in one install give up too.
//!
//! The URL may be the device's own server or somewhere else (an object
//! store's presigned URL, a CDN): [`Fetch::request`] says what the request
//! carries there.

use core::fmt::Write;

use crate::text::Text;

/// Retries of one install's download before it gives up.
pub const MAX_RETRIES: u32 = 5;

/// Longest message about a download problem (the transport's own words
/// included, cut: small enough that a `Result` carrying one stays cheap to
/// move, which matters without a heap to box it in).
pub const MESSAGE_MAX: usize = 96;

/// A message about a download problem.
pub type Message = Text<MESSAGE_MAX>;

/// What to ask the server for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    /// First byte wanted (0: the whole image).
    pub from: u32,
}

impl Fetch {
    /// The `Range` header's value, when resuming.
    pub fn range(&self) -> Option<Text<24>> {
        (self.from > 0).then(|| Text::format(format_args!("bytes={}-", self.from)))
    }

    /// The `If-Range` header's value for an artifact whose `ETag` is its
    /// SHA-256 in hex, when resuming.
    pub fn if_range(&self, sha256_hex: &str) -> Option<Text<68>> {
        (self.from > 0).then(|| Text::format(format_args!("\"{sha256_hex}\"")))
    }
}

/// What a request for a [`Fetch`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Send the device's token (`Authorization: Bearer`).
    pub token: bool,
    /// The `Range` header's value, when resuming.
    pub range: Option<Text<24>>,
    /// The `If-Range` header's value, when resuming from the device's server.
    pub if_range: Option<Text<68>>,
}

impl Fetch {
    /// The request for this fetch of the image at `url` (from a check-in
    /// answer) whose SHA-256 is `sha256_hex`, for a device whose server is
    /// `server` (its configured base URL). The token and `If-Range` go only
    /// to the device's own server ([`on_server`]): anywhere else the URL
    /// itself grants access and the token would be handed to a third party,
    /// and the store's `ETag` is not the SHA-256 (an `If-Range` would never
    /// match, and every resume would start over from byte 0). An object
    /// stored under its SHA-256 does not change, and the engine checks every
    /// byte against the signed manifest all the same.
    pub fn request(&self, server: &str, url: &str, sha256_hex: &str) -> Request {
        let own = on_server(server, url);
        Request {
            token: own,
            range: self.range(),
            if_range: self.if_range(sha256_hex).filter(|_| own),
        }
    }
}

/// Whether `url` is on the server whose base URL is `server`: a path
/// (`/api/...`), or an absolute `http`/`https` URL with the same scheme,
/// host (in any case) and port. Anything else is not: another origin, a
/// URL with user information, one that cannot be read.
pub fn on_server(server: &str, url: &str) -> bool {
    if url.starts_with('/') {
        return !url.starts_with("//");
    }
    match (origin(server), origin(url)) {
        (Some((https_a, host_a, port_a)), Some((https_b, host_b, port_b))) => {
            https_a == https_b && port_a == port_b && host_a.eq_ignore_ascii_case(host_b)
        }
        _ => false,
    }
}

/// Scheme (`https`?), host and port of an absolute http(s) URL.
fn origin(url: &str) -> Option<(bool, &str, u16)> {
    let (https, rest) = match url.split_once("://")? {
        (scheme, rest) if scheme.eq_ignore_ascii_case("https") => (true, rest),
        (scheme, rest) if scheme.eq_ignore_ascii_case("http") => (false, rest),
        _ => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let default = if https { 443 } else { 80 };
    // The port follows the last ':' unless that is inside an IPv6 literal.
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => {
            let port = &authority[i + 1..];
            let port = if port.is_empty() {
                default
            } else {
                port.parse().ok()?
            };
            Some((https, &authority[..i], port))
        }
        _ => Some((https, authority, default)),
    }
}

/// Why a response cannot be used as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interrupt {
    /// Try again later, resuming.
    Retry(Message),
    /// Give up this download.
    Fatal(Message),
}

/// What to do with a response to `fetch`: how many leading bytes of its
/// body to drop, or why not to use it. `content_range` is the header's value.
pub fn accept(fetch: Fetch, status: u16, content_range: Option<&str>) -> Result<u32, Interrupt> {
    match status {
        206 => {
            let starts = content_range
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u32>().ok());
            if starts == Some(fetch.from) {
                Ok(0)
            } else {
                let mut m = Message::default();
                let _ = match starts {
                    Some(s) => write!(
                        m,
                        "server sent a range starting at Some({s}), expected {}",
                        fetch.from
                    ),
                    None => write!(
                        m,
                        "server sent a range starting at None, expected {}",
                        fetch.from
                    ),
                };
                Err(Interrupt::Fatal(m))
            }
        }
        // The whole image again: skip what is already written.
        200 => Ok(fetch.from),
        s if s >= 500 => Err(Interrupt::Retry(Text::format(format_args!(
            "server answered {s}"
        )))),
        s => Err(Interrupt::Fatal(Text::format(format_args!(
            "download refused: server answered {s}"
        )))),
    }
}

/// The part of a received chunk to write: after dropping `*skip` leading
/// bytes (counted down), at most `left` bytes.
pub fn to_write<'c>(chunk: &'c [u8], skip: &mut u32, left: u32) -> &'c [u8] {
    let n = (*skip as usize).min(chunk.len());
    *skip -= n as u32;
    let data = &chunk[n..];
    &data[..data.len().min(left as usize)]
}

/// Longest URL the client builds: a server's base URL and a path.
pub const JOINED_URL_MAX: usize = crate::settings::SERVER_MAX + airlift_protocol::URL_MAX;

/// `path` on the server at `server` (its base URL): an absolute URL (one
/// the server's answer names) stays as it is; `None` when it does not fit.
pub fn url(server: &str, path: &str) -> Option<Text<JOINED_URL_MAX>> {
    let mut out = Text::<JOINED_URL_MAX>::default();
    let fits = if path.starts_with("http://") || path.starts_with("https://") {
        out.write_str(path)
    } else {
        out.write_str(server.trim_end_matches('/'))
            .and_then(|()| out.write_str(path))
    };
    fits.is_ok().then_some(out)
}
