//! The operator's catalog API: regions, games, versions, warm targets, tenants and keys.

use api::ErrorBody;
use api::broker::{
    ApiKeyView, GameSpec, GameVersionSpec, GameView, RegionSpec, RegionView, TenantSpec, TenantView,
    WarmTargetSpec, WarmTargetView,
};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use service_kit::http_error::{HttpError, JsonBody};

use super::{AppState, auth, bad_path};
use crate::broker::Broker;
use crate::catalog::GameEntry;

fn region_views(broker: &Broker) -> Vec<RegionView> {
    let racks = broker.racks();
    broker
        .catalog
        .regions()
        .into_iter()
        .map(|(id, description)| RegionView {
            racks: racks
                .values()
                .filter(|r| r.region.as_deref() == Some(&id))
                .map(|r| r.id.clone())
                .collect(),
            id,
            description,
        })
        .collect()
}

/// Creates or updates a region.
#[utoipa::path(
    put, path = "/v1/regions/{id}", tag = "catalog", params(("id" = String, Path)), request_body = RegionSpec,
    responses((status = 200, body = RegionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn put_region(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<JsonBody<RegionSpec>, HttpError>,
) -> Result<Json<RegionView>, HttpError> {
    auth::operator(&s.broker, &headers, "change regions")?;
    let JsonBody(spec) = body?;
    s.broker.catalog.put_region(&id, &spec)?;
    let view = region_views(&s.broker)
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| HttpError::not_found("region", &id))?;
    Ok(Json(view))
}

/// Every region and its racks.
#[utoipa::path(
    get, path = "/v1/regions", tag = "catalog",
    responses((status = 200, body = Vec<RegionView>), (status = 401, body = ErrorBody)), security(("bearer" = []))
)]
pub async fn list_regions(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<RegionView>>, HttpError> {
    auth::operator(&s.broker, &headers, "read regions")?;
    Ok(Json(region_views(&s.broker)))
}

fn game_view(id: &str, g: GameEntry) -> GameView {
    GameView {
        id: id.to_string(),
        spec: g.spec,
        versions: g.versions.into_keys().collect(),
        warm_targets: g.warm_targets,
    }
}

/// Creates or updates a game (latency budget, packing, current version).
#[utoipa::path(
    put, path = "/v1/games/{id}", tag = "catalog", params(("id" = String, Path)), request_body = GameSpec,
    responses((status = 200, body = GameView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, description = "unknown_version", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn put_game(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<JsonBody<GameSpec>, HttpError>,
) -> Result<Json<GameView>, HttpError> {
    auth::operator(&s.broker, &headers, "change games")?;
    let JsonBody(spec) = body?;
    s.broker.catalog.put_game(&id, &spec)?;
    s.broker.pools_changed.notify_one();
    s.broker.capacity_changed.notify_one();
    let entry = s.broker.catalog.game(&id).ok_or_else(|| HttpError::not_found("game", &id))?;
    Ok(Json(game_view(&id, entry)))
}

/// One game.
#[utoipa::path(
    get, path = "/v1/games/{id}", tag = "catalog", params(("id" = String, Path)),
    responses((status = 200, body = GameView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_game(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<GameView>, HttpError> {
    auth::operator(&s.broker, &headers, "read games")?;
    let entry = s.broker.catalog.game(&id).ok_or_else(|| HttpError::not_found("game", &id))?;
    Ok(Json(game_view(&id, entry)))
}

/// Every game.
#[utoipa::path(
    get, path = "/v1/games", tag = "catalog",
    responses((status = 200, body = Vec<GameView>), (status = 401, body = ErrorBody)), security(("bearer" = []))
)]
pub async fn list_games(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<GameView>>, HttpError> {
    auth::operator(&s.broker, &headers, "read games")?;
    Ok(Json(s.broker.catalog.games().into_iter().map(|(id, g)| game_view(&id, g)).collect()))
}

/// A published version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionView {
    game: String,
    version: String,
    spec: GameVersionSpec,
}

/// Publishes a game version (immutable once created).
#[utoipa::path(
    put, path = "/v1/games/{id}/versions/{version}", tag = "catalog",
    params(("id" = String, Path), ("version" = String, Path)), request_body = GameVersionSpec,
    responses((status = 200, body = VersionView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "unknown_game", body = ErrorBody), (status = 409, description = "version_immutable", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn put_version(
    State(s): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<JsonBody<GameVersionSpec>, HttpError>,
) -> Result<Json<VersionView>, HttpError> {
    auth::operator(&s.broker, &headers, "publish versions")?;
    let Path((game, version)) = path.map_err(bad_path)?;
    let JsonBody(spec) = body?;
    s.broker.catalog.put_version(&game, &version, &spec)?;
    Ok(Json(VersionView { game, version, spec }))
}

/// Sets a game's warm target in a region; the broker spreads it over the region's racks.
#[utoipa::path(
    put, path = "/v1/games/{id}/warm-targets/{region}", tag = "catalog",
    params(("id" = String, Path), ("region" = String, Path)), request_body = WarmTargetSpec,
    responses((status = 200, body = WarmTargetView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn put_warm_target(
    State(s): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<JsonBody<WarmTargetSpec>, HttpError>,
) -> Result<Json<WarmTargetView>, HttpError> {
    auth::operator(&s.broker, &headers, "set warm targets")?;
    let Path((game, region)) = path.map_err(bad_path)?;
    let JsonBody(spec) = body?;
    s.broker.catalog.set_warm_target(&game, &region, &spec)?;
    s.broker.pools_changed.notify_one();
    let current =
        s.broker.catalog.scheduler_game(&game).map(|(_, v)| crate::catalog::deployment_id(&game, &v));
    let in_region: Vec<String> = s
        .broker
        .racks()
        .values()
        .filter(|r| r.region.as_deref() == Some(region.as_str()))
        .map(|r| r.id.clone())
        .collect();
    let racks = crate::pools::targets(&s.broker)
        .into_iter()
        .filter(|t| in_region.contains(&t.rack) && Some(&t.deployment) == current.as_ref())
        .map(|t| (t.rack, t.pool_size))
        .collect();
    let now = service_kit::time::now_ms();
    Ok(Json(WarmTargetView {
        effective: crate::pools::effective_target(&s.broker, &game, &region, &spec),
        arrivals_per_s: s.broker.demand.rate(&game, &region, now),
        boot_ms: s.broker.demand.boot_ms(&game),
        game,
        region,
        spec,
        racks,
    }))
}

/// Creates a tenant.
#[utoipa::path(
    post, path = "/v1/tenants", tag = "catalog", request_body = TenantSpec,
    responses((status = 201, body = TenantView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create_tenant(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonBody<TenantSpec>, HttpError>,
) -> Result<(StatusCode, Json<TenantView>), HttpError> {
    auth::operator(&s.broker, &headers, "create tenants")?;
    let JsonBody(spec) = body?;
    Ok((StatusCode::CREATED, Json(s.broker.catalog.create_tenant(&spec)?)))
}

/// Every tenant (key ids, never keys).
#[utoipa::path(
    get, path = "/v1/tenants", tag = "catalog",
    responses((status = 200, body = Vec<TenantView>), (status = 401, body = ErrorBody)), security(("bearer" = []))
)]
pub async fn list_tenants(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<TenantView>>, HttpError> {
    auth::operator(&s.broker, &headers, "read tenants")?;
    Ok(Json(s.broker.catalog.tenants()))
}

/// Issues an API key for a tenant: the key is in this answer only (stored hashed).
#[utoipa::path(
    post, path = "/v1/tenants/{id}/keys", tag = "catalog", params(("id" = String, Path)),
    responses((status = 201, body = ApiKeyView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create_key(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ApiKeyView>), HttpError> {
    auth::operator(&s.broker, &headers, "issue API keys")?;
    Ok((StatusCode::CREATED, Json(s.broker.catalog.create_key(&id)?)))
}

/// Revokes an API key at once.
#[utoipa::path(
    delete, path = "/v1/tenants/{id}/keys/{key}", tag = "catalog",
    params(("id" = String, Path), ("key" = String, Path, description = "Key id")),
    responses((status = 200, body = ApiKeyView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn revoke_key(
    State(s): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ApiKeyView>, HttpError> {
    auth::operator(&s.broker, &headers, "revoke API keys")?;
    let Path((tenant, key)) = path.map_err(bad_path)?;
    Ok(Json(s.broker.catalog.revoke_key(&tenant, &key)?))
}
