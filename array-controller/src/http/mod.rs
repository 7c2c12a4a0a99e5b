//! The controller's HTTP API.
//!
//! | method | path                              | who                         |
//! |--------|-----------------------------------|-----------------------------|
//! | GET    | /healthz, /metrics                | anyone                      |
//! | POST   | /v1/join-tokens                   | operator                    |
//! | DELETE | /v1/join-tokens/{id}              | operator                    |
//! | POST   | /v1/enrol                         | a board with a join token   |
//! | GET    | /v1/boards, /v1/boards/{id}       | operator, broker            |
//! | POST   | /v1/boards/{id}/cordon, /uncordon | operator                    |
//! | GET    | /v1/boards/{id}/desired           | that board (long-poll)      |
//! | POST   | /v1/boards/{id}/heartbeat         | that board                  |
//! | GET    | /v1/deployments[/{id}]            | operator, broker            |
//! | PUT    | /v1/deployments/{id}              | operator, broker            |
//! | DELETE | /v1/deployments/{id}[?force=true] | operator                    |
//! | GET    | /v1/instances[/{id}]              | operator, broker            |
//! | POST   | /v1/claims                        | broker, operator            |
//! | GET    | /v1/claims/{key}                  | broker, operator            |
//! | DELETE | /v1/claims/{key}                  | broker, operator            |
//! | POST   | /v1/claims/renew                  | broker, operator            |
//! | GET    | /v1/events[?kinds=..] (SSE)       | operator, broker            |

mod auth;
mod boards;
mod claims;
mod operator;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use prometheus_client::registry::Registry;
use service_kit::http_error::HttpError;

use crate::error::RackError;
use crate::rack::Rack;

/// Handler state.
#[derive(Clone)]
pub struct AppState {
    pub rack: Arc<Rack>,
    pub registry: Arc<Registry>,
}

pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }))
        .route(
            "/metrics",
            get(|axum::extract::State(s): axum::extract::State<AppState>| async move {
                service_kit::metrics::render(&s.registry)
            }),
        )
        .route("/v1/join-tokens", post(operator::create_join_token))
        .route("/v1/join-tokens/{id}", axum::routing::delete(operator::revoke_join_token))
        .route("/v1/enrol", post(boards::enrol))
        .route("/v1/boards", get(operator::list_boards))
        .route("/v1/boards/{id}", get(operator::get_board))
        .route("/v1/boards/{id}/cordon", post(operator::cordon))
        .route("/v1/boards/{id}/uncordon", post(operator::uncordon))
        .route("/v1/boards/{id}/desired", get(boards::desired))
        .route("/v1/boards/{id}/heartbeat", post(boards::heartbeat))
        .route("/v1/deployments", get(operator::list_deployments))
        .route(
            "/v1/deployments/{id}",
            put(operator::put_deployment).get(operator::get_deployment).delete(operator::delete_deployment),
        )
        .route("/v1/instances", get(operator::list_instances))
        .route("/v1/instances/{id}", get(operator::get_instance))
        .route("/v1/claims", post(claims::claim))
        .route("/v1/claims/renew", post(claims::renew))
        .route("/v1/claims/{key}", get(claims::get).delete(claims::release))
        .route("/v1/events", get(operator::events));
    service_kit::http_error::standard_answers(routes).with_state(state)
}

impl From<RackError> for HttpError {
    fn from(err: RackError) -> Self {
        match err {
            RackError::NotFound { .. } => HttpError::new(StatusCode::NOT_FOUND, "not_found", err.to_string()),
            RackError::Invalid { code, message } => HttpError::bad_request(code, message),
            RackError::Conflict { code, message } => HttpError::conflict(code, message),
            RackError::Forbidden { code, message } => HttpError::new(StatusCode::FORBIDDEN, code, message),
            RackError::BadJoinToken => {
                HttpError::new(StatusCode::UNAUTHORIZED, "invalid_join_token", err.to_string())
            }
            RackError::Db(db) => HttpError::internal(db),
        }
    }
}

/// Maps a query-string rejection onto our error body.
pub(crate) fn bad_query(rejection: axum::extract::rejection::QueryRejection) -> HttpError {
    HttpError::bad_request("invalid_query", rejection.body_text())
}
