use anyhow::Context;
use array_controller::config::{Cli, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load(Cli::parse())?;
    service_kit::telemetry::init_logging(config.log_json);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    array_controller::run(config, listener, service_kit::shutdown::signal()).await?;
    Ok(())
}
