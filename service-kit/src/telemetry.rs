//! Logging set-up shared by the binaries.

use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber: human-readable lines, or JSON when `json` is set.
/// The level comes from `RUST_LOG` (default `info`).
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second initialisation (tests starting several services) is harmless: keep the first.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
