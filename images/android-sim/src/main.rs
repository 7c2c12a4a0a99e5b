//! Entry point: read the `SIM_*` configuration, then run until a signal or simulated crash.

use android_sim::config::Config;

fn main() {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("android-sim: {e}");
            std::process::exit(android_sim::EXIT_CONFIG);
        }
    };
    // Exit directly: tasks still serving clients must not delay a shutdown or crash.
    std::process::exit(android_sim::run(config));
}
