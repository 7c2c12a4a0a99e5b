//! The broker's error type and its HTTP mapping.

use axum::http::StatusCode;
use service_kit::http_error::HttpError;

use crate::db::DbError;

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{what} {id:?} does not exist")]
    NotFound { what: &'static str, id: String },
    /// 404 with its own code (`unknown_game`, `unknown_region`, `unknown_version`).
    #[error("{message}")]
    Unknown { code: &'static str, message: String },
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for BrokerError {
    fn from(err: rusqlite::Error) -> Self {
        BrokerError::Db(DbError::Sql(err))
    }
}

impl From<serde_json::Error> for BrokerError {
    fn from(err: serde_json::Error) -> Self {
        BrokerError::Db(DbError::Json(err))
    }
}

impl From<api::broker::RequestError> for BrokerError {
    fn from(err: api::broker::RequestError) -> Self {
        BrokerError::Invalid { code: err.code, message: err.message }
    }
}

impl BrokerError {
    pub fn not_found(what: &'static str, id: &str) -> Self {
        BrokerError::NotFound { what, id: id.to_string() }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        BrokerError::Invalid { code, message: message.into() }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        BrokerError::Conflict { code, message: message.into() }
    }

    pub fn unknown(code: &'static str, message: impl Into<String>) -> Self {
        BrokerError::Unknown { code, message: message.into() }
    }
}

impl From<BrokerError> for HttpError {
    fn from(err: BrokerError) -> Self {
        match err {
            BrokerError::NotFound { .. } => {
                HttpError::new(StatusCode::NOT_FOUND, "not_found", err.to_string())
            }
            BrokerError::Unknown { code, message } => HttpError::new(StatusCode::NOT_FOUND, code, message),
            BrokerError::Invalid { code, message } => HttpError::bad_request(code, message),
            BrokerError::Conflict { code, message } => HttpError::conflict(code, message),
            BrokerError::Db(db) => HttpError::internal(db),
        }
    }
}
