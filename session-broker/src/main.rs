use anyhow::Context;
use clap::Parser;
use session_broker::config::{Cli, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load(Cli::parse())?;
    service_kit::telemetry::init_logging(config.log_json);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    session_broker::run(config, listener, service_kit::shutdown::signal()).await?;
    Ok(())
}
