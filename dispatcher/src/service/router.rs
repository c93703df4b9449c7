//! The service's routes and its OpenAPI document, generated from the same handlers (utoipa), so
//! the document cannot list a route the service does not serve, nor miss one; and the layers
//! every request passes first.
//!
//! Every `/v1` route needs `Authorization: Bearer <token>` when the service has API tokens;
//! `/healthz`, `/metrics` and `/openapi.json` never do. Every route refuses what only another
//! site's page would send ([`super::site`]: 421 for a Host that does not name the service, 403
//! for another origin), and a `/v1` body must be JSON (415), but for an upload's bytes, so that no
//! form of a web page can reach a route. Errors are `{"error": "..."}` with a message that says
//! what to change.

use super::site::Seen;
use super::state::{ApiError, ApiState, ErrorBody, Shared, Who};
use super::{api, files, schedule_api, sessions, web};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Cuttle dispatcher service", description = "Run scripts on remote agents exactly once, follow them, and read their history."),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The router and the OpenAPI document it serves at `/openapi.json`.
pub(super) fn router(state: Arc<ApiState>) -> axum::Router {
    let (router, doc) = documented(&state);
    let doc = Arc::new(doc);
    router
        .route("/openapi.json", axum::routing::get(move || async move { Json(doc.as_ref().clone()) }))
        .merge(web::router(state.clone()))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such route; GET /openapi.json lists the routes this service has")
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), own_site))
        .with_state(state)
}

/// The documented routes, and the OpenAPI document made from them.
fn documented(state: &Arc<ApiState>) -> (axum::Router<Arc<ApiState>>, utoipa::openapi::OpenApi) {
    let v1 = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::submit))
        .routes(routes!(api::history))
        .routes(routes!(api::ticket))
        .routes(routes!(api::events))
        .routes(routes!(api::cancel))
        .routes(routes!(api::agents))
        .routes(routes!(files::put_file, files::get_file))
        .routes(routes!(schedule_api::add_schedule, schedule_api::list_schedules))
        .routes(routes!(schedule_api::remove_schedule))
        .routes(routes!(schedule_api::pause_schedule))
        .routes(routes!(schedule_api::resume_schedule))
        .routes(routes!(schedule_api::run_schedule))
        .route_layer(axum::middleware::from_fn(body_type))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
    let (router, mut doc) =
        OpenApiRouter::new().merge(v1).routes(routes!(api::healthz)).routes(routes!(api::metrics)).split_for_parts();
    doc.paths.paths.entry("/openapi.json".into()).or_insert_with(|| {
        use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
        let op = OperationBuilder::new()
            .summary(Some("This document"))
            .response("200", utoipa::openapi::ResponseBuilder::new().description("The OpenAPI document"))
            .build();
        PathItem::new(HttpMethod::Get, op)
    });
    (router, doc)
}

/// Refuses, before anything else, what no page of this service sends ([`Site::check`]): a Host
/// that does not name it (421), another site's Origin or fetch (403). Each refusal is logged: it
/// is an attack, or a name or proxy the operator has to declare.
async fn own_site(State(state): Shared, request: Request, next: Next) -> Response {
    let headers = request.headers();
    // A header that is not text is no name of ours and no origin of ours: keep it, to refuse it.
    let text = |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or("(not text)"));
    // An absolute request target names the host itself, and then a server ignores Host.
    let host = request.uri().authority().map(|a| a.as_str()).or_else(|| text(header::HOST));
    let seen = Seen {
        method: request.method(),
        host,
        origin: text(header::ORIGIN),
        fetch_site: text(header::HeaderName::from_static("sec-fetch-site")),
        fetch_mode: text(header::HeaderName::from_static("sec-fetch-mode")),
        probe: matches!(request.uri().path(), "/healthz" | "/metrics"),
    };
    if let Err(refusal) = state.site.check(&seen) {
        tracing::warn!(
            method = %request.method(),
            path = %request.uri().path(),
            origin = %seen.origin.unwrap_or("none"),
            mode = %seen.fetch_mode.unwrap_or("none"),
            "refused a request: {refusal}"
        );
        return ApiError::new(refusal.status(), refusal.to_string()).into_response();
    }
    next.run(request).await
}

/// The body a `/v1` route takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    /// `application/json` (every route but an upload; a route without a body may have none).
    Json,
    /// A file's bytes: `application/octet-stream`, or no type.
    Bytes,
}

impl BodyKind {
    fn of(method: &Method, path: &str) -> BodyKind {
        if method == Method::PUT && path == "/v1/files" {
            BodyKind::Bytes
        } else {
            BodyKind::Json
        }
    }

    /// Refuses (415) a body of another type. A browser's form can send only
    /// `application/x-www-form-urlencoded`, `multipart/form-data` and `text/plain`, and another
    /// site's `fetch` nothing else without the service's consent (CORS, which it never gives):
    /// neither can reach a route. A JSON body without a type (`fetch` of a `Blob`) is refused too.
    fn check(self, content_type: Option<&HeaderValue>, has_body: bool) -> Result<(), ApiError> {
        let given = content_type.map(|v| v.to_str().unwrap_or("(not text)"));
        // The media type without its parameters (`; charset=utf-8`).
        let media = given.map(|t| t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
        let got = match given {
            Some(given) => format!("not {:?}", given.chars().take(100).collect::<String>()),
            None => "a body without a Content-Type".to_owned(),
        };
        match (self, media.as_deref()) {
            (BodyKind::Json, Some("application/json")) => Ok(()),
            (BodyKind::Json, None) if !has_body => Ok(()),
            (BodyKind::Bytes, None | Some("application/octet-stream")) => Ok(()),
            (BodyKind::Json, _) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("this route takes a JSON body with Content-Type: application/json, {got}; nothing was run"),
            )),
            (BodyKind::Bytes, _) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "PUT /v1/files takes the file's bytes with Content-Type: application/octet-stream (or none), {got}; nothing was sent"
                ),
            )),
        }
    }
}

/// Whether a request has a body: a length above zero, or chunks.
fn has_body(headers: &HeaderMap) -> bool {
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    headers.contains_key(header::TRANSFER_ENCODING) || length.is_some_and(|n| n > 0)
}

/// Refuses a `/v1` body of another type than its route takes ([`BodyKind::check`]), before
/// anything reads it.
async fn body_type(request: Request, next: Next) -> Response {
    let kind = BodyKind::of(request.method(), request.uri().path());
    if let Err(error) = kind.check(request.headers().get(header::CONTENT_TYPE), has_body(request.headers())) {
        return error.into_response();
    }
    next.run(request).await
}

/// Requires a known bearer token when the service has tokens; passes on who asked.
/// A browser's login session counts only for reading (GET): a request that changes something
/// needs the `Authorization` header, which no other site's page can make a browser send.
async fn authenticate(State(state): Shared, mut request: Request, next: Next) -> Response {
    let who = match &state.tokens {
        None => Who("local".into()),
        Some(tokens) => {
            let bearer = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned);
            let reading = request.method() == Method::GET;
            let name = match &bearer {
                Some(token) => tokens.name_of(token).map(str::to_owned),
                None if reading => match sessions::who(&state.followers.journal, tokens, request.headers()).await {
                    Ok(name) => name,
                    Err(error) => return ApiError::from(error).into_response(),
                },
                None => None,
            };
            match name {
                Some(name) => Who(name),
                None => {
                    let message = if bearer.is_some() {
                        "the bearer token is not one of the service's API tokens"
                    } else if reading && sessions::SessionId::from_cookie(request.headers()).is_some() {
                        "this browser's login has ended (logged out, expired, or its token withdrawn): log in again at /login, or send `Authorization: Bearer <token>`"
                    } else {
                        "this service needs an API token: send `Authorization: Bearer <token>`"
                    };
                    return ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
                }
            }
        }
    };
    request.extensions_mut().insert(who);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service's state that reaches for nothing (no broker, no Redis) until asked to.
    fn offline_state() -> Arc<ApiState> {
        use crate::orchestrator::Orchestrator;
        use crate::policy::PolicyConfig;
        use crate::rpc::{RpcClient, RpcConfig};
        use crate::service::journal::Journal;
        use crate::service::lease::Leases;
        use crate::service::resume::Followers;
        use crate::service::site::Site;
        use contracts::submission::retry::Timing;
        use std::time::Duration;
        let rpc = RpcConfig {
            amqp_url: crate::DEFAULT_AMQP_URL.into(),
            connect_timeout: Duration::from_secs(1),
            trust: None,
            tls: Default::default(),
            proxy: Default::default(),
        };
        let orchestrator = Orchestrator::new(Arc::new(RpcClient::new(rpc)), Timing::default());
        let journal = Journal::open("redis://127.0.0.1:1", "offline:", Duration::from_secs(60))
            .expect("a journal that connects lazily");
        let leases = Leases::new(journal.clone(), "offline".into(), Duration::from_secs(5));
        let followers = Followers::new(orchestrator, journal, leases, Duration::from_secs(60), Default::default());
        let scheduler = crate::service::scheduler::Scheduler::new(followers.clone(), PolicyConfig::default());
        let site = Site::new("127.0.0.1:7480".parse().unwrap(), Vec::new(), None);
        Arc::new(ApiState { followers, scheduler, policies: PolicyConfig::default(), tokens: None, site })
    }

    #[test]
    fn the_openapi_document_is_pinned() {
        let (_, doc) = documented(&offline_state());
        crate::golden::check("openapi.json", &(serde_json::to_string_pretty(&doc).unwrap() + "\n"));
    }

    #[test]
    fn a_v1_body_is_json_but_an_uploads_bytes_and_never_what_a_form_sends() {
        let typed = |t: &str| Some(HeaderValue::from_str(t).unwrap());
        let json = BodyKind::of(&Method::POST, "/v1/scripts");
        assert_eq!(json, BodyKind::Json);
        assert_eq!(BodyKind::of(&Method::POST, "/v1/tickets/x/cancel"), BodyKind::Json);
        assert_eq!(BodyKind::of(&Method::PUT, "/v1/files"), BodyKind::Bytes);
        assert!(json.check(typed("application/json").as_ref(), true).is_ok());
        assert!(json.check(typed("Application/JSON; charset=utf-8").as_ref(), true).is_ok());
        assert!(json.check(None, false).is_ok(), "a cancel without a body");
        let forms = [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ];
        for form in forms {
            let refused = json.check(typed(form).as_ref(), true).unwrap_err();
            assert_eq!(refused.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{form}");
            assert!(refused.message.contains("Content-Type: application/json"), "{}", refused.message);
            assert!(BodyKind::Bytes.check(typed(form).as_ref(), true).is_err(), "{form}");
        }
        assert!(json.check(typed("text/plain").as_ref(), false).is_err(), "a form without fields");
        assert!(json.check(None, true).is_err(), "a fetch of a Blob, which has no type");
        assert!(json.check(typed("application/jsonx").as_ref(), true).is_err());
        assert!(BodyKind::Bytes.check(None, true).is_ok());
        assert!(BodyKind::Bytes.check(typed("application/octet-stream").as_ref(), true).is_ok());
        assert!(BodyKind::Bytes.check(typed("application/json").as_ref(), true).is_err());
    }

    #[test]
    fn a_body_is_a_length_above_zero_or_chunks() {
        let with = |name: header::HeaderName, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_str(value).unwrap());
            headers
        };
        assert!(!has_body(&HeaderMap::new()));
        assert!(!has_body(&with(header::CONTENT_LENGTH, "0")));
        assert!(has_body(&with(header::CONTENT_LENGTH, "2")));
        assert!(has_body(&with(header::TRANSFER_ENCODING, "chunked")));
    }
}
