use anyhow::Context;
use board_daemon::config::{Cli, Config};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = Config::load(Cli::parse())?;
    service_kit::telemetry::init_logging(config.log_json);
    // A board has few cores and the daemon little to do: two workers are plenty.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        board_daemon::run(config, listener, service_kit::shutdown::signal()).await?;
        Ok(())
    })
}
