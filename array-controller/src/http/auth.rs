//! Who is calling: the operator, the broker, or a board (by its own credential).

use axum::http::HeaderMap;
use service_kit::auth::{bearer, constant_time_eq, hash_token};
use service_kit::http_error::HttpError;

use crate::rack::Rack;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Operator,
    Broker,
    Board(String),
}

/// Identifies the caller from its bearer token; 401 when there is none or it is unknown.
pub fn caller(rack: &Rack, headers: &HeaderMap) -> Result<Caller, HttpError> {
    let token = bearer(headers).ok_or_else(HttpError::unauthorized)?;
    if constant_time_eq(token.as_bytes(), rack.operator_token.as_bytes()) {
        return Ok(Caller::Operator);
    }
    if constant_time_eq(token.as_bytes(), rack.broker_token.as_bytes()) {
        return Ok(Caller::Broker);
    }
    let hash = hash_token(token);
    match rack.board_credentials.board(&rack.db, &hash) {
        Ok(Some(board)) => Ok(Caller::Board(board)),
        Ok(None) => Err(HttpError::unauthorized()),
        Err(err) => Err(HttpError::internal(err)),
    }
}

fn forbidden(what: &str) -> HttpError {
    HttpError::new(axum::http::StatusCode::FORBIDDEN, "forbidden", format!("this credential may not {what}"))
}

pub fn operator(rack: &Rack, headers: &HeaderMap, what: &str) -> Result<(), HttpError> {
    match caller(rack, headers)? {
        Caller::Operator => Ok(()),
        _ => Err(forbidden(what)),
    }
}

pub fn operator_or_broker(rack: &Rack, headers: &HeaderMap, what: &str) -> Result<Caller, HttpError> {
    match caller(rack, headers)? {
        c @ (Caller::Operator | Caller::Broker) => Ok(c),
        Caller::Board(_) => Err(forbidden(what)),
    }
}

/// The board itself (or the operator, for debugging).
pub fn board(rack: &Rack, headers: &HeaderMap, board_id: &str, what: &str) -> Result<(), HttpError> {
    match caller(rack, headers)? {
        Caller::Operator => Ok(()),
        Caller::Board(id) if id == board_id => Ok(()),
        _ => Err(forbidden(what)),
    }
}
