//! The daemon's HTTP API.
//!
//! | method | path          | credential | what                                             |
//! |--------|---------------|------------|--------------------------------------------------|
//! | GET    | /healthz      | none       | liveness                                         |
//! | GET    | /metrics      | none       | Prometheus metrics                               |
//! | GET    | /v1/status    | none       | board and instance status                        |
//! | GET    | /v1/facts     | none       | detected board facts                             |
//! | GET    | /v1/desired   | none       | current desired state, without stream tokens     |
//! | PUT    | /v1/desired   | API token  | replace the desired state (standalone mode)      |
//! | GET    | /v1/journal   | API token  | journal entries after `?after=SEQ` (`&limit=N`)  |

use std::sync::{Arc, OnceLock, RwLock};

use api::{BoardFacts, BoardStatus, DesiredState, JournalEntry};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use service_kit::auth::require_token;
use service_kit::http_error::{HttpError, JsonBody};
use tokio::sync::watch;

use crate::desired_source::{Accepted, DesiredError, DesiredSource, Origin};
use crate::docker::DockerRuntime;
use crate::store::Store;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct HttpState {
    pub api_token: Arc<str>,
    pub status: watch::Receiver<BoardStatus>,
    pub facts: Arc<RwLock<BoardFacts>>,
    pub desired: Arc<DesiredSource>,
    pub docker: Arc<OnceLock<DockerRuntime>>,
    pub registry: Arc<Registry>,
    pub store: Arc<Store>,
}

/// The router.
pub fn router(state: HttpState) -> Router {
    let routes = Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move { service_kit::metrics::render(&s.registry) }),
        )
        .route("/v1/status", get(status))
        .route("/v1/facts", get(facts))
        .route("/v1/desired", get(get_desired).put(put_desired))
        .route("/v1/journal", get(journal));
    service_kit::http_error::standard_answers(routes).with_state(state)
}

async fn status(State(s): State<HttpState>) -> Json<BoardStatus> {
    Json(s.status.borrow().clone())
}

async fn facts(State(s): State<HttpState>) -> Json<BoardFacts> {
    Json(s.facts.read().unwrap_or_else(|p| p.into_inner()).clone())
}

async fn get_desired(State(s): State<HttpState>) -> Json<DesiredState> {
    Json(without_stream_tokens(s.desired.current()))
}

/// The desired state as anyone who reaches the API may read it: stream tokens are secrets
/// (whoever holds one can watch that instance's stream) and this endpoint has no credential.
fn without_stream_tokens(mut desired: DesiredState) -> DesiredState {
    for spec in &mut desired.instances {
        spec.stream_token = None;
    }
    desired
}

/// Answer to an accepted desired state.
#[derive(Debug, Serialize, Deserialize)]
pub struct DesiredAccepted {
    pub generation: u64,
    pub changed: bool,
}

async fn put_desired(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Result<JsonBody<DesiredState>, HttpError>,
) -> Result<Response, HttpError> {
    require_token(&headers, &s.api_token)?;
    let JsonBody(desired) = body?;
    let generation = desired.generation;
    let facts = s.facts.read().unwrap_or_else(|p| p.into_inner()).clone();
    match s.desired.offer(desired, &facts, s.docker.get(), Origin::Local).await {
        Ok(accepted) => {
            let changed = accepted == Accepted::Applied;
            Ok((StatusCode::OK, Json(DesiredAccepted { generation, changed })).into_response())
        }
        Err(err) => Err(desired_error(err)),
    }
}

fn desired_error(err: DesiredError) -> HttpError {
    let status = match &err {
        DesiredError::Invalid(_) | DesiredError::DeviceMissing { .. } | DesiredError::ImageMissing { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        DesiredError::Stale { .. }
        | DesiredError::GenerationReused { .. }
        | DesiredError::ManagedByController => StatusCode::CONFLICT,
        DesiredError::DockerUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        DesiredError::Store(_) => return HttpError::internal(&err),
    };
    HttpError::new(status, err.code(), err.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JournalQuery {
    #[serde(default)]
    after: u64,
    limit: Option<u32>,
}

async fn journal(
    State(s): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<JournalQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<JournalEntry>>, HttpError> {
    require_token(&headers, &s.api_token)?;
    let Query(query) = query.map_err(|e| HttpError::bad_request("invalid_query", e.body_text()))?;
    let limit = query.limit.unwrap_or(500).clamp(1, 5000);
    s.store.journal_after(query.after, limit).map(Json).map_err(HttpError::internal)
}
