//! Rack credentials, registration (the controller's heartbeat) and rack health.

use api::ErrorBody;
use api::broker::{RackCredential, RackRegistration, RackView, RegistrationAck};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use service_kit::http_error::{HttpError, JsonBody};

use super::{AppState, auth};
use crate::racks;

/// Issues (or replaces) the credential a rack's controller registers with; shown once.
#[utoipa::path(
    post, path = "/v1/racks/{id}/credential", tag = "racks", params(("id" = String, Path)),
    responses((status = 201, body = RackCredential), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn issue_credential(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<RackCredential>), HttpError> {
    auth::operator(&s.broker, &headers, "issue rack credentials")?;
    Ok((StatusCode::CREATED, Json(racks::issue_credential(&s.broker, &id)?)))
}

/// Every rack and its health.
#[utoipa::path(
    get, path = "/v1/racks", tag = "racks",
    responses((status = 200, body = Vec<RackView>), (status = 401, body = ErrorBody)), security(("bearer" = []))
)]
pub async fn list(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Vec<RackView>>, HttpError> {
    auth::operator(&s.broker, &headers, "read racks")?;
    Ok(Json(racks::views(&s.broker)))
}

/// One rack.
#[utoipa::path(
    get, path = "/v1/racks/{id}", tag = "racks", params(("id" = String, Path)),
    responses((status = 200, body = RackView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<RackView>, HttpError> {
    auth::operator(&s.broker, &headers, "read racks")?;
    racks::views(&s.broker)
        .into_iter()
        .find(|r| r.id == id)
        .map(Json)
        .ok_or_else(|| HttpError::not_found("rack", &id))
}

/// A controller registers its rack, and re-registers every `heartbeat_ms` of the answer.
#[utoipa::path(
    post, path = "/v1/racks/{id}/register", tag = "racks", params(("id" = String, Path)), request_body = RackRegistration,
    responses((status = 200, body = RegistrationAck), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "unknown_region", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn register(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<JsonBody<RackRegistration>, HttpError>,
) -> Result<Json<RegistrationAck>, HttpError> {
    auth::rack(&s.broker, &headers, &id)?;
    let JsonBody(registration) = body?;
    Ok(Json(racks::register(&s.broker, &id, registration)?))
}
