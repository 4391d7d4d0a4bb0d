//! Dashboard sessions: the admin token is typed once into the sign-in form
//! and exchanged for a random session value in an `HttpOnly` cookie, which
//! page scripts cannot read. The server keeps the value's SHA-256; signing
//! out deletes it, so a copied cookie is worthless afterwards.
//!
//! Cookies ride along with any request the browser makes, including ones a
//! foreign page triggers (cross-site request forgery). So a request that
//! authenticates with the cookie and changes something must also carry the
//! `X-Airlift-CSRF` header, which a foreign page cannot add without the
//! CORS preflight that only [`crate::Config::cors_origins`] pass, and its
//! `Origin`, when the browser sends one, must be the server's own or one of
//! those origins. Requests with an admin token are not affected.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{hash_token, new_token};
use crate::config::{Config, SameSite};
use crate::error::{ApiError, ApiJson, ErrorBody};
use crate::store::Session;
use crate::throttle::{ClientAddr, Credential, Peer};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "airlift_session";
/// The header a cookie-authenticated request that changes something must carry.
pub const CSRF_HEADER: &str = "x-airlift-csrf";

/// The session value in a request's `Cookie` headers.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The open session a request's cookie names, if any. A cookie that names
/// none counts as a failed authentication of `client`, and a throttled
/// client is refused (429) before its cookie is looked up.
pub async fn session_of(
    state: &AppState,
    headers: &HeaderMap,
    client: Option<ClientAddr>,
) -> Result<Option<Session>, ApiError> {
    let Some(value) = session_cookie(headers) else {
        return Ok(None);
    };
    state.throttle.check(Credential::Session, client)?;
    let session = state
        .store
        .session(&hash_token(value), crate::now_ms())
        .await?;
    if session.is_none() {
        state.throttle.failed(Credential::Session, client);
    }
    Ok(session)
}

/// Refuses a cookie-authenticated request that a foreign page could have made.
pub fn check_csrf(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    if !headers.contains_key(CSRF_HEADER) {
        return Err(ApiError::Forbidden(
            "a dashboard request that changes something must carry the X-Airlift-CSRF header \
             (the guard against cross-site request forgery)"
                .into(),
        ));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    if authority.is_some_and(|a| !host.is_empty() && a == host)
        || config.cors_origins.iter().any(|o| o == origin)
    {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "requests from pages at {origin} are not allowed: add the origin to the server's \
         cors_origins (AIRLIFT_CORS_ORIGINS)"
    )))
}

/// The `Set-Cookie` value that stores `value` for `max_age` seconds (0: deletes it).
pub fn cookie(config: &Config, value: &str, max_age: u64) -> String {
    let same_site = match config.cookie_same_site {
        SameSite::Strict => "Strict",
        SameSite::None => "None",
    };
    let secure = if config.secure_cookie || config.cookie_same_site == SameSite::None {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{SESSION_COOKIE}={value}; Path=/api; Max-Age={max_age}; HttpOnly; SameSite={same_site}{secure}"
    )
}

fn set_cookie(
    config: &Config,
    value: &str,
    max_age: u64,
) -> Result<[(header::HeaderName, HeaderValue); 1], ApiError> {
    let value =
        HeaderValue::from_str(&cookie(config, value, max_age)).map_err(ApiError::internal)?;
    Ok([(header::SET_COOKIE, value)])
}

/// What signs a dashboard in.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SignIn {
    /// An admin token (`admin.token` in the server's data directory).
    pub token: String,
}

/// Whether the browser is signed in.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionState {
    /// Whether the request carried an open session.
    pub signed_in: bool,
    /// The session, when signed in.
    #[serde(flatten)]
    pub session: Option<Session>,
}

/// Signs the dashboard in: exchanges an admin token for a session cookie
/// (`HttpOnly`, `SameSite`). Needs `X-Airlift-CSRF`.
#[utoipa::path(post, path = "/api/v1/session", tag = "session",
    params(("X-Airlift-CSRF" = String, Header, description = "any value: the cross-site request forgery guard")),
    request_body = SignIn,
    responses((status = 200, description = "signed in; the answer sets the session cookie", body = SessionState),
        (status = 401, description = "not an admin token", body = ErrorBody),
        (status = 403, description = "no X-Airlift-CSRF header, or a foreign Origin", body = ErrorBody)))]
pub async fn sign_in(
    State(state): State<AppState>,
    Peer(client): Peer,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SignIn>,
) -> Result<
    (
        [(header::HeaderName, HeaderValue); 1],
        ApiJson<SessionState>,
    ),
    ApiError,
> {
    check_csrf(&state.config, &headers)?;
    state.throttle.check(Credential::Session, client)?;
    let value = new_token("al_session_").map_err(ApiError::internal)?;
    let now = crate::now_ms();
    let lifetime_secs = u64::from(state.config.session_hours) * 3600;
    let expires_at = now.saturating_add(i64::try_from(lifetime_secs * 1000).unwrap_or(i64::MAX));
    let admin = state
        .store
        .open_session(
            &hash_token(&value),
            &hash_token(request.token.trim()),
            now,
            expires_at,
        )
        .await?
        .ok_or_else(|| {
            state.throttle.failed(Credential::Session, client);
            ApiError::Unauthorized(
                "that is not an admin token: the server's first start wrote one to admin.token \
                 in its data directory"
                    .into(),
            )
        })?;
    state
        .store
        .add_audit(
            &admin,
            "POST /api/v1/session",
            "session",
            &serde_json::json!({"status": 200, "expires_at": expires_at}).to_string(),
        )
        .await?;
    state.changes.bump();
    let session = Session { admin, expires_at };
    Ok((
        set_cookie(&state.config, &value, lifetime_secs)?,
        ApiJson(SessionState {
            signed_in: true,
            session: Some(session),
        }),
    ))
}

/// Whether the browser is signed in (never 401: the dashboard asks this first).
#[utoipa::path(get, path = "/api/v1/session", tag = "session",
    responses((status = 200, body = SessionState)))]
pub async fn session_state(
    State(state): State<AppState>,
    Peer(client): Peer,
    headers: HeaderMap,
) -> Result<ApiJson<SessionState>, ApiError> {
    let session = session_of(&state, &headers, client).await?;
    Ok(ApiJson(SessionState {
        signed_in: session.is_some(),
        session,
    }))
}

/// Signs out: the session ends on the server and the cookie is deleted.
/// Needs `X-Airlift-CSRF`.
#[utoipa::path(delete, path = "/api/v1/session", tag = "session",
    params(("X-Airlift-CSRF" = String, Header, description = "any value: the cross-site request forgery guard")),
    responses((status = 204, description = "signed out (also when no session was open)"),
        (status = 403, description = "no X-Airlift-CSRF header, or a foreign Origin", body = ErrorBody)))]
pub async fn sign_out(
    State(state): State<AppState>,
    Peer(client): Peer,
    headers: HeaderMap,
) -> Result<(StatusCode, [(header::HeaderName, HeaderValue); 1]), ApiError> {
    check_csrf(&state.config, &headers)?;
    if let Some(session) = session_of(&state, &headers, client).await?
        && let Some(value) = session_cookie(&headers)
        && state.store.close_session(&hash_token(value)).await?
    {
        state
            .store
            .add_audit(
                &session.admin,
                "DELETE /api/v1/session",
                "session",
                &serde_json::json!({"status": 204}).to_string(),
            )
            .await?;
        state.changes.bump();
    }
    Ok((StatusCode::NO_CONTENT, set_cookie(&state.config, "", 0)?))
}

/// How an admin request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `Authorization: Bearer` with an admin token.
    Token,
    /// The dashboard's session cookie.
    Session,
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_session_value_is_found_among_other_cookies() {
        let check = |cookies: &[&str], expected: Option<&str>| {
            let pairs: Vec<_> = cookies.iter().map(|c| ("cookie", *c)).collect();
            assert_eq!(session_cookie(&headers(&pairs)), expected, "{cookies:?}");
        };
        check(&["airlift_session=abc"], Some("abc"));
        check(&["theme=dark; airlift_session=abc; lang=en"], Some("abc"));
        check(&["theme=dark", "airlift_session=abc"], Some("abc"));
        check(&["airlift_session="], None);
        check(&["airlift_sessionx=abc"], None);
        check(&[], None);
    }

    #[test]
    fn changes_need_the_guard_header_and_a_known_origin() {
        let config = Config {
            cors_origins: vec!["https://fleet.example.com".into()],
            ..Config::default()
        };
        let check = |pairs: &[(&'static str, &str)], allowed: bool| {
            let result = check_csrf(&config, &headers(pairs));
            assert_eq!(result.is_ok(), allowed, "{pairs:?}: {result:?}");
        };
        let guard = ("x-airlift-csrf", "1");
        check(&[], false);
        check(
            &[
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
            ],
            false,
        );
        check(&[guard], true);
        check(
            &[
                guard,
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:8080"),
            ],
            true,
        );
        check(
            &[
                guard,
                ("host", "127.0.0.1:8080"),
                ("origin", "https://fleet.example.com"),
            ],
            true,
        );
        check(
            &[
                guard,
                ("host", "127.0.0.1:8080"),
                ("origin", "http://127.0.0.1:9090"),
            ],
            false,
        );
        check(
            &[guard, ("host", "127.0.0.1:8080"), ("origin", "null")],
            false,
        );
        check(&[guard, ("origin", "http://127.0.0.1:8080")], false);
    }

    #[test]
    fn the_cookie_is_http_only_same_site_and_secure_when_asked() {
        let strict = Config::default();
        assert_eq!(
            cookie(&strict, "v", 60),
            "airlift_session=v; Path=/api; Max-Age=60; HttpOnly; SameSite=Strict"
        );
        let secure = Config {
            secure_cookie: true,
            ..Config::default()
        };
        assert!(cookie(&secure, "v", 60).ends_with("SameSite=Strict; Secure"));
        let cross_site = Config {
            cookie_same_site: SameSite::None,
            ..Config::default()
        };
        assert!(cookie(&cross_site, "v", 60).ends_with("SameSite=None; Secure"));
    }
}
