//! Errors of the controller's operations, each with a stable code; `http` maps them to statuses.

use crate::db::DbError;

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RackError {
    #[error("{what} {id:?} does not exist")]
    NotFound { what: &'static str, id: String },
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("the join token is unknown, expired or revoked: ask an operator for a new one")]
    BadJoinToken,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<rusqlite::Error> for RackError {
    fn from(err: rusqlite::Error) -> Self {
        RackError::Db(DbError::Sql(err))
    }
}

impl RackError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        RackError::Invalid { code, message: message.into() }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        RackError::Conflict { code, message: message.into() }
    }

    pub fn not_found(what: &'static str, id: &str) -> Self {
        RackError::NotFound { what, id: id.to_string() }
    }
}
