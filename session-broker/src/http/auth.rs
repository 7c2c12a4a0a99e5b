//! Who is calling: the operator token, a tenant's API key, or a rack's credential. A request
//! without a valid credential is 401; a valid credential of another role is 403.

use axum::http::{HeaderMap, StatusCode};
use service_kit::auth::{bearer, constant_time_eq};
use service_kit::http_error::HttpError;

use crate::broker::Broker;

enum Role {
    Operator,
    Tenant(String, u32),
    Rack(String),
}

fn identify(broker: &Broker, token: &str) -> Result<Option<Role>, HttpError> {
    if constant_time_eq(token.as_bytes(), broker.operator_token.as_bytes()) {
        return Ok(Some(Role::Operator));
    }
    if let Some((tenant, rate)) = broker.catalog.tenant_for_key(token) {
        return Ok(Some(Role::Tenant(tenant, rate)));
    }
    Ok(crate::racks::rack_of_credential(broker, token)?.map(Role::Rack))
}

fn forbidden(what: &str) -> HttpError {
    HttpError::new(StatusCode::FORBIDDEN, "forbidden", format!("this credential may not {what}"))
}

fn role(broker: &Broker, headers: &HeaderMap) -> Result<Role, HttpError> {
    let token = bearer(headers).ok_or_else(HttpError::unauthorized)?;
    identify(broker, token)?.ok_or_else(HttpError::unauthorized)
}

/// The operator, and only the operator.
pub fn operator(broker: &Broker, headers: &HeaderMap, what: &str) -> Result<(), HttpError> {
    match role(broker, headers)? {
        Role::Operator => Ok(()),
        _ => Err(forbidden(what)),
    }
}

/// A tenant: its id and its rate limit.
pub fn tenant(broker: &Broker, headers: &HeaderMap, what: &str) -> Result<(String, u32), HttpError> {
    match role(broker, headers)? {
        Role::Tenant(id, rate) => Ok((id, rate)),
        _ => Err(forbidden(what)),
    }
}

/// The rack `rack` itself.
pub fn rack(broker: &Broker, headers: &HeaderMap, rack: &str) -> Result<(), HttpError> {
    match role(broker, headers)? {
        Role::Rack(id) if id == rack => Ok(()),
        _ => Err(forbidden(&format!("register rack {rack:?}"))),
    }
}
