//! Serving a Prometheus registry over HTTP.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;

use crate::http_error::HttpError;

/// Renders `registry` in the Prometheus text exposition format.
pub fn render(registry: &Arc<Registry>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
            .into_response(),
        Err(err) => HttpError::internal(err).into_response(),
    }
}

/// Buckets for durations from a millisecond to two minutes.
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
        .into_iter()
}
