//! A stand-in Android instance for tests and demos: answers the ADB wire protocol with a
//! small simulated shell and serves a synthetic video stream. Runs as PID 1 in a `FROM
//! scratch` container, so it handles SIGTERM and SIGINT itself.

pub mod adb;
pub mod config;
pub mod shell;
pub mod state;
pub mod stream;

use std::future::pending;
use std::hint::black_box;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::state::State;

/// Exit code for a clean shutdown on SIGTERM or SIGINT.
pub const EXIT_OK: i32 = 0;
/// Exit code when start-up fails (a port cannot be bound, for example).
pub const EXIT_STARTUP: i32 = 1;
/// Exit code for invalid configuration.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code of the simulated crash (`SIM_CRASH_AFTER_SECONDS`).
pub const EXIT_CRASH: i32 = 3;

/// Runs the simulator until a signal or the simulated crash; returns the process exit code.
pub fn run(config: Config) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("android-sim: cannot start the async runtime: {e}");
            return EXIT_STARTUP;
        }
    };
    runtime.block_on(async {
        match serve(config).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("android-sim: {e}");
                EXIT_STARTUP
            }
        }
    })
}

async fn serve(config: Config) -> io::Result<i32> {
    // The boot clock starts before anything slow (the ballast) happens.
    let state = Arc::new(State::new(&config));
    // PID 1 gets no default signal handling, so without these `docker stop` would wait for
    // its timeout and then SIGKILL us.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    println!(
        "android-sim: starting model={:?} display={}x{}@{} dpi={} boot={:?} crash_after={:?} hang_adb={} ballast_mib={}",
        config.model,
        config.width,
        config.height,
        config.fps,
        config.dpi,
        config.boot,
        config.crash_after,
        config.hang_adb,
        config.ballast_mib,
    );
    let ballast = ballast(config.ballast_mib);

    let adb = bind(config.adb_port, "SIM_ADB_PORT").await?;
    let stream = bind(config.stream_port, "SIM_STREAM_PORT").await?;
    println!("android-sim: adb listening on {}", adb.local_addr()?);
    println!("android-sim: stream listening on {}", stream.local_addr()?);

    let boot_state = Arc::clone(&state);
    tokio::spawn(async move {
        tokio::time::sleep(boot_state.until_booted()).await;
        println!("android-sim: boot completed");
    });
    let crash = async {
        match config.crash_after {
            Some(after) => tokio::time::sleep(after).await,
            None => pending().await,
        }
    };

    let code = tokio::select! {
        _ = adb::server::serve(adb, Arc::clone(&state), config.hang_adb) => EXIT_STARTUP,
        _ = stream::serve(stream, Arc::clone(&state)) => EXIT_STARTUP,
        _ = sigterm.recv() => {
            println!("android-sim: SIGTERM, exiting");
            EXIT_OK
        }
        _ = sigint.recv() => {
            println!("android-sim: SIGINT, exiting");
            EXIT_OK
        }
        _ = crash => {
            eprintln!(
                "android-sim: simulated crash after {}s (SIM_CRASH_AFTER_SECONDS)",
                config.crash_after.unwrap_or_default().as_secs_f64()
            );
            EXIT_CRASH
        }
    };
    drop(ballast);
    Ok(code)
}

async fn bind(port: u16, var: &str) -> io::Result<TcpListener> {
    // A socket address rather than ("0.0.0.0", port): a static glibc binary should never
    // reach for the resolver (NSS), not even by accident.
    TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on 0.0.0.0:{port} ({var}): {e}")))
}

/// Allocates `mib` MiB and touches every page so it is resident, not just reserved.
fn ballast(mib: u64) -> Vec<u8> {
    if mib == 0 {
        return Vec::new();
    }
    let len = usize::try_from(mib << 20).expect("SIM_BALLAST_MIB is capped at 1 TiB");
    let mut memory = vec![0u8; len];
    // Zeroed allocations are mapped lazily; a write per 4 KiB reaches every page whatever
    // the page size.
    for i in (0..len).step_by(4096) {
        memory[i] = 1;
    }
    println!("android-sim: ballast of {mib} MiB resident");
    black_box(memory)
}
