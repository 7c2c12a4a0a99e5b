//! The broker's HTTP API. The router is built with `utoipa-axum`, so the OpenAPI 3.1 document
//! at `GET /openapi.json` is generated from the same route table that serves requests.
//!
//! | method | path                                   | who                 |
//! |--------|----------------------------------------|---------------------|
//! | GET    | /healthz, /metrics, /openapi.json      | anyone              |
//! | POST   | /v1/sessions (Idempotency-Key)         | tenant              |
//! | GET    | /v1/sessions[?state=]                  | tenant              |
//! | GET    | /v1/sessions/{id}[?wait_ms=]           | tenant              |
//! | POST   | /v1/sessions/{id}/heartbeat            | tenant              |
//! | DELETE | /v1/sessions/{id}                      | tenant              |
//! | GET    | /v1/sessions/{id}/explain              | tenant              |
//! | PUT/GET| /v1/regions/{id}, GET /v1/regions      | operator            |
//! | PUT/GET| /v1/games/{id}, GET /v1/games          | operator            |
//! | PUT    | /v1/games/{id}/versions/{version}      | operator            |
//! | PUT    | /v1/games/{id}/warm-targets/{region}   | operator            |
//! | POST/GET | /v1/tenants                          | operator            |
//! | POST   | /v1/tenants/{id}/keys                  | operator            |
//! | DELETE | /v1/tenants/{id}/keys/{key}            | operator            |
//! | POST   | /v1/racks/{id}/credential              | operator            |
//! | GET    | /v1/racks, /v1/racks/{id}              | operator            |
//! | POST   | /v1/racks/{id}/register                | that rack           |

mod auth;
mod operator;
mod racks;
mod sessions;

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use prometheus_client::registry::Registry;
use service_kit::http_error::HttpError;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::broker::Broker;

/// Handler state.
#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    pub registry: Arc<Registry>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Session broker",
        description = "The game platform's session API, the operator's catalog, and rack registration. \
            Every answer that is not 2xx carries {\"code\", \"message\"}.",
    ),
    modifiers(&Bearer),
    tags(
        (name = "sessions", description = "Place players, keep their sessions alive, end them (tenant API key)"),
        (name = "catalog", description = "Regions, games, versions, warm targets, tenants (operator token)"),
        (name = "racks", description = "Rack credentials, registration and health"),
    )
)]
struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The router and the OpenAPI document it describes.
pub fn router(state: AppState) -> axum::Router {
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(sessions::create, sessions::list))
        .routes(routes!(sessions::get, sessions::end))
        .routes(routes!(sessions::heartbeat))
        .routes(routes!(sessions::explain))
        .routes(routes!(operator::put_region))
        .routes(routes!(operator::list_regions))
        .routes(routes!(operator::put_game, operator::get_game))
        .routes(routes!(operator::list_games))
        .routes(routes!(operator::put_version))
        .routes(routes!(operator::put_warm_target))
        .routes(routes!(operator::create_tenant, operator::list_tenants))
        .routes(routes!(operator::create_key))
        .routes(routes!(operator::revoke_key))
        .routes(routes!(racks::issue_credential))
        .routes(routes!(racks::list))
        .routes(routes!(racks::get))
        .routes(routes!(racks::register))
        .split_for_parts();
    let openapi = Arc::new(openapi);
    let routes = router
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { service_kit::metrics::render(&s.registry) }),
        )
        .route("/openapi.json", get(move || async move { Json(openapi.as_ref().clone()) }));
    service_kit::http_error::standard_answers(routes).with_state(state)
}

/// Maps a query-string rejection onto our error body.
fn bad_query(rejection: axum::extract::rejection::QueryRejection) -> HttpError {
    HttpError::bad_request("invalid_query", rejection.body_text())
}

/// Maps a path rejection onto our error body.
fn bad_path(rejection: axum::extract::rejection::PathRejection) -> HttpError {
    HttpError::bad_request("invalid_path", rejection.body_text())
}
