//! Plumbing every service of the appliance shares, so each one opens SQLite, reports errors,
//! checks credentials, serves metrics and shuts down the same way.

pub mod auth;
pub mod checkpoint;
pub mod files;
pub mod http_error;
pub mod listener;
pub mod metrics;
pub mod settings;
pub mod shutdown;
pub mod sqlite;
pub mod telemetry;
pub mod time;
