//! The HTTP API: routes, authentication layers, OpenAPI document.
//!
//! Admin routes live under `/api/v1` behind [`admin_layer`] (bearer admin
//! token, or the dashboard's session cookie: see [`session`]; every call
//! that is not a `GET` is written to the audit log and announced on the
//! change stream). Device routes live under `/api/v1/device` and
//! authenticate with the device's token. The OpenAPI document is generated
//! from the handlers' annotations and is also the route registry tests walk.
//!
//! | route | who | what |
//! |-------|-----|------|
//! | `POST /api/v1/releases` | admin | upload a `.bin` (raw body; `X-Airlift-Manifest: <base64>` for an offline-signed manifest) |
//! | `GET /api/v1/releases`, `GET/DELETE /api/v1/releases/{id}` | admin | list, show (with the manifest), delete (409 while deployed) |
//! | `POST/GET /api/v1/devices` | admin | add (answers the token once), list |
//! | `GET /api/v1/devices/{name}`, `.../events` | admin | status and open assignment; event history |
//! | `DELETE /api/v1/devices/{name}`, `POST .../revoke\|rotate-token` | admin | delete (history kept as `NAME~deleted-ID`), revoke, a new token (answered once); each refuses the old token on every instance |
//! | `POST/GET /api/v1/deployments` | admin | deploy `{release, target: device:NAME \| tag:T \| all}`; list |
//! | `GET /api/v1/deployments/{id}`, `POST .../cancel` | admin | progress counts per state and per device (`?state=&limit=&offset=`); cancel |
//! | `POST/GET /api/v1/rollouts` | admin | staged rollout `{release, target, waves, soak_ms, success_threshold, failure_threshold, deadline_ms, max_parallel, penalty_failures, start}`; list |
//! | `GET /api/v1/rollouts/{id}`, `POST .../start\|pause\|resume\|advance\|cancel` | admin | plan, state, progress per wave, device set, history; operator commands |
//! | `GET /api/v1/events`, `GET /api/v1/audit` | admin | fleet events; audit log (`?before=ID`) |
//! | `GET /api/v1/fleet`, `GET /api/v1/fleet/devices` | admin | overview; device list paged, searched, filtered |
//! | `GET /api/v1/fleet/changes` | admin | server-sent change notices for open dashboards |
//! | `POST/GET/DELETE /api/v1/session` | admin token in the body | dashboard sign-in (session cookie), state, sign-out |
//! | `POST/GET /api/v1/enrollment-secrets`, `DELETE .../{name}` | admin | fleet enrolment secrets `{name, tags, name_pattern}` |
//! | `POST /api/v1/device/enroll` | enrolment secret | a device gets its token, the secret's tags, a name its pattern allows |
//! | `POST /api/v1/device/checkin` | device | report state; answer: poll interval and assigned update |
//! | `GET /api/v1/device/artifacts/{sha256}` | device | download (`Range`, `If-Range`, `ETag`) |
//! | `POST /api/v1/device/events` | device | progress and results |
//! | `GET /healthz`, `GET /metrics`, `GET /api/openapi.json` | anyone | liveness, Prometheus text, OpenAPI 3.1 |

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::{bearer, hash_token};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::throttle::{ClientAddr, Credential};

pub mod admin;
pub mod device;
pub mod fleet;
pub mod session;
mod validate;

use session::Via;
pub mod rollouts;

/// The authenticated admin of a request.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The admin token's name.
    pub name: String,
}

/// What an admin handler adds to its audit record: the object acted on and details.
#[derive(Debug, Clone)]
pub struct AuditNote {
    /// E.g. `release:3`.
    pub target: String,
    /// Details as a JSON value.
    pub detail: serde_json::Value,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Airlift update server", description = "Admin and device API of Airlift. \
        Admin calls take `Authorization: Bearer <admin token>`, or the dashboard's session cookie \
        (`POST /api/v1/session`; with it, calls that change something need `X-Airlift-CSRF`); \
        device calls the device's token. \
        Errors are `{\"error\": {\"code\": \"...\", \"message\": \"...\"}}`. Times are Unix milliseconds."),
    modifiers(&SecuritySchemes),
    components(schemas(crate::error::ErrorBody))
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in [ADMIN_SECURITY, DEVICE_SECURITY] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
        components.add_security_scheme(
            SESSION_SECURITY,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(session::SESSION_COOKIE))),
        );
    }
}

/// Adds the dashboard's session cookie as the alternative to the admin
/// token on every admin operation (the admin layer accepts either).
fn session_alternative(openapi: &mut utoipa::openapi::OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let Some(security) = operation.security.as_mut() else {
                continue;
            };
            let admin = SecurityRequirement::new(ADMIN_SECURITY, Vec::<String>::new());
            if security.contains(&admin) {
                security.push(SecurityRequirement::new(
                    SESSION_SECURITY,
                    Vec::<String>::new(),
                ));
            }
        }
    }
}

/// Name of the admin token security scheme in the OpenAPI document.
pub const ADMIN_SECURITY: &str = "admin_token";
/// Name of the device token security scheme in the OpenAPI document.
pub const DEVICE_SECURITY: &str = "device_token";
/// Name of the dashboard session cookie security scheme in the OpenAPI document.
pub const SESSION_SECURITY: &str = "session_cookie";

/// The routes and the OpenAPI document generated from them.
pub fn routes(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let admin: OpenApiRouter<AppState> = OpenApiRouter::new()
        .routes(routes!(admin::upload_release, admin::list_releases))
        .routes(routes!(admin::get_release, admin::delete_release))
        .routes(routes!(admin::create_device, admin::list_devices))
        .routes(routes!(admin::get_device, admin::delete_device))
        .routes(routes!(admin::revoke_device))
        .routes(routes!(admin::rotate_device_token))
        .routes(routes!(admin::device_events))
        .routes(routes!(admin::create_deployment, admin::list_deployments))
        .routes(routes!(admin::get_deployment))
        .routes(routes!(admin::cancel_deployment))
        .routes(routes!(rollouts::create_rollout, rollouts::list_rollouts))
        .routes(routes!(rollouts::get_rollout))
        .routes(routes!(rollouts::start_rollout))
        .routes(routes!(rollouts::pause_rollout))
        .routes(routes!(rollouts::resume_rollout))
        .routes(routes!(rollouts::advance_rollout))
        .routes(routes!(rollouts::cancel_rollout))
        .routes(routes!(admin::list_events))
        .routes(routes!(admin::list_audit))
        .routes(routes!(
            admin::create_enrollment_secret,
            admin::list_enrollment_secrets
        ))
        .routes(routes!(admin::delete_enrollment_secret))
        .routes(routes!(fleet::overview))
        .routes(routes!(fleet::devices))
        .routes(routes!(fleet::changes));
    let sessions: OpenApiRouter<AppState> = OpenApiRouter::new().routes(routes!(
        session::sign_in,
        session::session_state,
        session::sign_out
    ));
    let device: OpenApiRouter<AppState> = OpenApiRouter::new()
        .routes(routes!(device::enroll))
        .routes(routes!(device::checkin))
        .routes(routes!(device::download_artifact))
        .routes(routes!(device::post_event));
    let (router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(admin.route_layer(middleware::from_fn_with_state(state.clone(), admin_layer)))
        .merge(sessions)
        .merge(device)
        .split_for_parts();
    session_alternative(&mut openapi);
    (router, openapi)
}

/// Largest JSON body accepted (a check-in is well under 1 KiB); a larger
/// one is answered 413, before it is read when its length is declared.
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = routes(&state);
    let openapi = Arc::new(openapi);
    let router = api
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route(
            "/api/openapi.json",
            get(move || std::future::ready(Json(openapi.as_ref().clone()))),
        )
        .merge(crate::dashboard::routes())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BYTES))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            crate::connection::BODY_STALL,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe));
    let router = match cors(&state.config) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(state)
}

/// Lets the dashboard served from the configured origins call the API
/// with its session cookie; without origins, browsers get no CORS answer
/// (only same-origin pages can read the API).
fn cors(config: &crate::Config) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = config
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::CONTENT_TYPE,
                HeaderName::from_static(session::CSRF_HEADER),
                HeaderName::from_static(admin::MANIFEST_HEADER),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    use std::fmt::Write;

    let mut text = state.metrics.render();
    let _ = writeln!(
        text,
        "# HELP airlift_auth_throttled_total Requests refused for too many failed \
         authentications, per credential.\n# TYPE airlift_auth_throttled_total counter"
    );
    for (credential, count) in state.throttle.throttled() {
        let _ = writeln!(
            text,
            "airlift_auth_throttled_total{{credential=\"{}\"}} {count}",
            credential.as_str()
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
}

/// Counts failures for `/metrics` and logs every request (at debug level;
/// server errors at warn).
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let debug = tracing::enabled!(tracing::Level::DEBUG);
    let started = std::time::Instant::now();
    let what = debug.then(|| format!("{} {}", request.method(), request.uri().path()));
    let response = next.run(request).await;
    let status = response.status();
    if status.is_server_error() {
        Metrics::inc(&state.metrics.server_errors);
    } else if status == StatusCode::UNAUTHORIZED {
        Metrics::inc(&state.metrics.auth_failures);
    }
    if let Some(what) = what {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        tracing::debug!(request = %what, status = status.as_u16(), micros, "answered");
    }
    response
}

/// Authenticates an admin call and writes the audit record of a mutating one.
async fn admin_layer(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let method = request.method().clone();
    let client = request.extensions().get::<ClientAddr>().copied();
    let (name, via) = authenticate_admin(&state, &method, request.headers(), client).await?;
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let path = request.uri().path().to_owned();
    request
        .extensions_mut()
        .insert(Admin { name: name.clone() });
    let response = next.run(request).await;
    if method != Method::GET && method != Method::HEAD {
        let note = response.extensions().get::<AuditNote>().cloned();
        let (target, mut detail) = match note {
            Some(note) => (note.target, note.detail),
            None => (path, serde_json::json!({})),
        };
        if let Some(object) = detail.as_object_mut() {
            object.insert("status".into(), response.status().as_u16().into());
            if via == Via::Session {
                object.insert("via".into(), "dashboard".into());
            }
        }
        let action = format!("{method} {route}");
        state
            .store
            .add_audit(&name, &action, &target, &detail.to_string())
            .await?;
        state.changes.bump();
    }
    Ok(response)
}

/// The admin a request acts as: by its bearer admin token, or else by the
/// dashboard's session cookie (which must pass [`session::check_csrf`] to
/// change anything).
async fn authenticate_admin(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    client: Option<ClientAddr>,
) -> Result<(String, Via), ApiError> {
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        let token = bearer(Some(authorization)).ok_or_else(|| {
            ApiError::Unauthorized("missing admin token (Authorization: Bearer)".into())
        })?;
        state.throttle.check(Credential::AdminToken, client)?;
        let Some(name) = state.store.admin_token(&hash_token(token)).await? else {
            state.throttle.failed(Credential::AdminToken, client);
            return Err(ApiError::Unauthorized("unknown admin token".into()));
        };
        return Ok((name, Via::Token));
    }
    if session::session_cookie(headers).is_none() {
        return Err(ApiError::Unauthorized(
            "missing admin token (Authorization: Bearer) or dashboard session".into(),
        ));
    }
    let session = session::session_of(state, headers, client)
        .await?
        .ok_or_else(|| {
            ApiError::Unauthorized("the dashboard session has ended: sign in again".into())
        })?;
    if !method.is_safe() {
        session::check_csrf(&state.config, headers)?;
    }
    Ok((session.admin, Via::Session))
}
