//! Operator (and broker) endpoints: join tokens, boards, deployments, instances, events.

use api::rack::{
    BoardView, DeploymentSpec, DeploymentView, InstanceState, InstanceView, JoinToken, JoinTokenRequest,
    RackEventBody,
};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use service_kit::http_error::{HttpError, JsonBody};

use super::{AppState, auth, bad_query};
use crate::events::KindFilter;

type QueryResult<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

pub async fn create_join_token(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<JoinTokenRequest>, HttpError>,
) -> Result<(StatusCode, Json<JoinToken>), HttpError> {
    auth::operator(&s.rack, &headers, "create join tokens")?;
    let JsonBody(request) = body?;
    Ok((StatusCode::CREATED, Json(s.rack.create_join_token(request)?)))
}

pub async fn revoke_join_token(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JoinToken>, HttpError> {
    auth::operator(&s.rack, &headers, "revoke join tokens")?;
    Ok(Json(s.rack.revoke_join_token(&id)?))
}

pub async fn list_boards(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<BoardView>>, HttpError> {
    auth::operator_or_broker(&s.rack, &headers, "list boards")?;
    Ok(Json(s.rack.board_views()?))
}

pub async fn get_board(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<BoardView>, HttpError> {
    auth::operator_or_broker(&s.rack, &headers, "read boards")?;
    Ok(Json(s.rack.board_view(&id)?))
}

pub async fn cordon(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<BoardView>, HttpError> {
    auth::operator(&s.rack, &headers, "cordon boards")?;
    Ok(Json(s.rack.set_cordon(&id, true)?))
}

pub async fn uncordon(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<BoardView>, HttpError> {
    auth::operator(&s.rack, &headers, "uncordon boards")?;
    Ok(Json(s.rack.set_cordon(&id, false)?))
}

pub async fn list_deployments(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<DeploymentView>>, HttpError> {
    auth::operator_or_broker(&s.rack, &headers, "list deployments")?;
    Ok(Json(s.rack.deployment_views()?))
}

pub async fn get_deployment(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<DeploymentView>, HttpError> {
    auth::operator_or_broker(&s.rack, &headers, "read deployments")?;
    Ok(Json(s.rack.deployment_view(&id)?))
}

pub async fn put_deployment(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<JsonBody<DeploymentSpec>, HttpError>,
) -> Result<Response, HttpError> {
    auth::operator_or_broker(&s.rack, &headers, "change deployments")?;
    let JsonBody(spec) = body?;
    let (view, created) = s.rack.put_deployment(&id, spec)?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

pub async fn delete_deployment(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: QueryResult<DeleteQuery>,
) -> Result<StatusCode, HttpError> {
    auth::operator(&s.rack, &headers, "delete deployments")?;
    let Query(query) = query.map_err(bad_query)?;
    s.rack.delete_deployment(&id, query.force)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceQuery {
    deployment: Option<String>,
    state: Option<String>,
}

pub async fn list_instances(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: QueryResult<InstanceQuery>,
) -> Result<([(&'static str, String); 1], Json<Vec<InstanceView>>), HttpError> {
    auth::operator_or_broker(&s.rack, &headers, "list instances")?;
    let Query(query) = query.map_err(bad_query)?;
    let state = match query.state.as_deref() {
        Some(text) => Some(InstanceState::parse(text).ok_or_else(|| {
            HttpError::bad_request("invalid_state", format!("unknown instance state {text:?}"))
        })?),
        None => None,
    };
    let (views, seq) = s.rack.instance_snapshot(query.deployment.as_deref(), state)?;
    // The sequence of the last event the list reflects: follow `/v1/events` after it.
    Ok(([(EVENT_SEQ_HEADER, seq.to_string())], Json(views)))
}

/// Header of `GET /v1/instances`: the last event sequence the list reflects.
pub const EVENT_SEQ_HEADER: &str = "x-event-seq";

pub async fn get_instance(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<InstanceView>, HttpError> {
    auth::operator_or_broker(&s.rack, &headers, "read instances")?;
    Ok(Json(s.rack.instance_view(&id)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<u64>,
    /// Comma-separated event kinds to send (all when absent).
    kinds: Option<String>,
}

/// Parses `?kinds=`: known kind names, comma-separated, at least one.
fn parse_kinds(text: &str) -> Result<KindFilter, HttpError> {
    let mut kinds = Vec::new();
    for name in text.split(',').map(str::trim) {
        let kind = RackEventBody::KINDS.iter().find(|k| **k == name).ok_or_else(|| {
            HttpError::bad_request(
                "invalid_kind",
                format!("unknown event kind {name:?}; kinds are {}", RackEventBody::KINDS.join(", ")),
            )
        })?;
        kinds.push(*kind);
    }
    Ok(KindFilter::Only(kinds))
}

/// Server-sent events after `Last-Event-ID` (or `?after=`), of the `?kinds=` asked for.
pub async fn events(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: QueryResult<EventsQuery>,
) -> Result<Response, HttpError> {
    auth::operator_or_broker(&s.rack, &headers, "read events")?;
    let Query(query) = query.map_err(bad_query)?;
    let last_id = match headers.get("last-event-id") {
        Some(value) => {
            Some(value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| {
                HttpError::bad_request(
                    "invalid_last_event_id",
                    "Last-Event-ID must be an event sequence number",
                )
            })?)
        }
        None => None,
    };
    let after = last_id.or(query.after).unwrap_or(0);
    let kinds = match query.kinds.as_deref() {
        Some(text) => parse_kinds(text)?,
        None => KindFilter::All,
    };
    let shutdown = s.rack.shutdown.clone();
    Ok(crate::events::stream(s.rack.db.clone(), &s.rack.hub, after, kinds, shutdown).into_response())
}
