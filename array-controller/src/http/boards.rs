//! Endpoints the board daemons call: enrolment, the desired-state long-poll, heartbeats.

use std::time::Duration;

use api::rack::{EnrolRequest, EnrolResponse, Heartbeat, HeartbeatAck};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use service_kit::http_error::{HttpError, JsonBody};

use super::{AppState, auth, bad_query};

/// Longest a desired-state long-poll waits.
const MAX_WAIT_MS: u64 = 60_000;

pub async fn enrol(
    State(s): State<AppState>,
    body: Result<JsonBody<EnrolRequest>, HttpError>,
) -> Result<(StatusCode, Json<EnrolResponse>), HttpError> {
    let JsonBody(request) = body?;
    Ok((StatusCode::CREATED, Json(s.rack.enrol(request)?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredQuery {
    /// The generation the board holds.
    #[serde(default)]
    after: u64,
    /// How long to wait for a newer one.
    #[serde(default)]
    wait_ms: u64,
}

/// `200` with the desired state when it is newer than `after`; `204` when none came in time.
pub async fn desired(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<DesiredQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    auth::board(&s.rack, &headers, &id, "read another board's desired state")?;
    let Query(query) = query.map_err(bad_query)?;
    let wait = Duration::from_millis(query.wait_ms.min(MAX_WAIT_MS));
    match s.rack.wait_desired(&id, query.after, wait).await? {
        Some(desired) => Ok(Json(desired).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

pub async fn heartbeat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<JsonBody<Heartbeat>, HttpError>,
) -> Result<Json<HeartbeatAck>, HttpError> {
    auth::board(&s.rack, &headers, &id, "report for another board")?;
    let JsonBody(heartbeat) = body?;
    Ok(Json(s.rack.heartbeat(&id, heartbeat)?))
}
