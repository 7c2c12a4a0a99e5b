//! The platform's session API (credential: the tenant's API key).

use std::time::Duration;

use api::ErrorBody;
use api::broker::{SessionExplain, SessionRequest, SessionState, SessionView};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use service_kit::http_error::{HttpError, JsonBody};

use super::{AppState, auth, bad_query};
use crate::sessions::{self, MAX_WAIT_MS, store};

const MAX_KEY_LEN: usize = 128;
const LIST_LIMIT: u32 = 1000;

fn idempotency_key(headers: &HeaderMap) -> Result<String, HttpError> {
    let value = headers.get("idempotency-key").ok_or_else(|| {
        HttpError::bad_request(
            "missing_idempotency_key",
            "send an Idempotency-Key header (for example the platform's session id)",
        )
    })?;
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.chars().all(|c| c.is_ascii_graphic()));
    key.map(str::to_string).ok_or_else(|| {
        HttpError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1-{MAX_KEY_LEN} visible ASCII characters"),
        )
    })
}

/// Places a player: 201 with an active session, or 202 with a queued one.
#[utoipa::path(
    post, path = "/v1/sessions", tag = "sessions",
    params(("Idempotency-Key" = String, Header, description = "Retries with the same key and body return the same session, for as long as the session is kept (a finished one: the broker's session retention, a day by default)")),
    request_body = SessionRequest,
    responses(
        (status = 201, description = "Placed now", body = SessionView),
        (status = 202, description = "Queued: waiting for capacity until its deadline", body = SessionView),
        (status = 200, description = "A retry of a session that has ended", body = SessionView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, description = "unknown_game", body = ErrorBody),
        (status = 409, description = "idempotency_key_reused", body = ErrorBody), (status = 429, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<SessionRequest>, HttpError>,
) -> Result<(StatusCode, Json<SessionView>), HttpError> {
    let (tenant, rate) = auth::tenant(&s.broker, &headers, "create sessions")?;
    if !s.broker.limiter.allow(&tenant, rate) {
        return Err(HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "tenant {tenant:?} is over its rate of {rate} session requests per second; retry shortly"
            ),
        ));
    }
    let key = idempotency_key(&headers)?;
    let JsonBody(request) = body?;
    let created = sessions::create(&s.broker, &tenant, &key, request).await?;
    let status = match created.state {
        SessionState::Active => StatusCode::CREATED,
        SessionState::Queued | SessionState::Placing => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(created.view)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only sessions in this state.
    state: Option<String>,
    /// At most this many sessions (1-1000, default 1000).
    limit: Option<u32>,
    /// Continue after this cursor: the `x-next-cursor` header of the previous page.
    after: Option<String>,
}

/// Header of `GET /v1/sessions` when more sessions follow the page.
pub const NEXT_CURSOR_HEADER: &str = "x-next-cursor";

/// This tenant's sessions, newest first, a page at a time.
#[utoipa::path(
    get, path = "/v1/sessions", tag = "sessions", params(ListQuery),
    responses(
        (status = 200, body = Vec<SessionView>, headers(
            ("x-next-cursor" = String, description = "Present when more sessions follow: pass it as `after` for the next page")
        )),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(s): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<(HeaderMap, Json<Vec<SessionView>>), HttpError> {
    let (tenant, _) = auth::tenant(&s.broker, &headers, "list sessions")?;
    let Query(query) = query.map_err(bad_query)?;
    let state = match query.state.as_deref() {
        None => None,
        Some(text) => Some(SessionState::parse(text).ok_or_else(|| {
            HttpError::bad_request("invalid_state", format!("unknown session state {text:?}"))
        })?),
    };
    let limit = match query.limit {
        None => LIST_LIMIT,
        Some(n @ 1..=LIST_LIMIT) => n,
        Some(n) => {
            return Err(HttpError::bad_request(
                "invalid_limit",
                format!("limit {n} is out of range: ask for 1 to {LIST_LIMIT} sessions"),
            ));
        }
    };
    let cursor = match query.after.as_deref() {
        None => None,
        Some(text) => Some(store::ListCursor::decode(text).ok_or_else(|| {
            HttpError::bad_request("invalid_cursor", "after must be an x-next-cursor header value")
        })?),
    };
    // One more than the page tells whether another page follows.
    let mut rows = store::list(&s.broker.db, &tenant, state, cursor.as_ref(), limit + 1)?;
    let mut answer_headers = HeaderMap::new();
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        if let Some(last) = rows.last()
            && let Ok(value) = store::ListCursor::after(last).encode().parse()
        {
            answer_headers.insert(NEXT_CURSOR_HEADER, value);
        }
    }
    Ok((answer_headers, Json(rows.iter().map(|r| r.view()).collect())))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Wait up to this many ms (0-30000) for the state to change before answering.
    wait_ms: Option<u64>,
}

/// One session; with `wait_ms`, answers as soon as its state changes.
#[utoipa::path(
    get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session id"), GetQuery),
    responses((status = 200, body = SessionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Json<SessionView>, HttpError> {
    let (tenant, _) = auth::tenant(&s.broker, &headers, "read sessions")?;
    let Query(query) = query.map_err(bad_query)?;
    let row = sessions::get_own(&s.broker, &tenant, &id)?;
    let wait = query.wait_ms.unwrap_or(0);
    if wait > MAX_WAIT_MS {
        return Err(HttpError::bad_request("invalid_wait", format!("wait_ms must be at most {MAX_WAIT_MS}")));
    }
    if wait == 0 || row.state.is_final() {
        return Ok(Json(row.view()));
    }
    let changed = sessions::wait_for_change(&s.broker, &id, row.state, Duration::from_millis(wait)).await?;
    Ok(Json(changed.unwrap_or(row).view()))
}

/// Keeps a session alive: extends its lease.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/heartbeat", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "session_over", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn heartbeat(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, HttpError> {
    let (tenant, _) = auth::tenant(&s.broker, &headers, "heart-beat sessions")?;
    Ok(Json(sessions::heartbeat(&s.broker, &tenant, &id)?.view()))
}

/// Ends a session and releases its instance (idempotent).
#[utoipa::path(
    delete, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn end(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, HttpError> {
    let (tenant, _) = auth::tenant(&s.broker, &headers, "end sessions")?;
    Ok(Json(sessions::end(&s.broker, &tenant, &id)?.view()))
}

/// Every scheduling decision taken for the session and every claim tried.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/explain", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionExplain), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn explain(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SessionExplain>, HttpError> {
    let (tenant, _) = auth::tenant(&s.broker, &headers, "read sessions")?;
    let row = sessions::get_own(&s.broker, &tenant, &id)?;
    let record = store::explain(&s.broker.db, &row.id)?;
    let decisions = record
        .decisions
        .iter()
        .map(|raw| serde_json::from_str(raw.get()))
        .collect::<Result<Vec<serde_json::Value>, _>>()
        .map_err(HttpError::internal)?;
    Ok(Json(SessionExplain { session: row.id, decisions, attempts: record.attempts }))
}
