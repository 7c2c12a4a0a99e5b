//! End-to-end harness: the real binaries as separate processes, the real Docker engine, real
//! sockets. Tests drive services only through their public APIs.
//!
//! - [`process`]: locate a built binary, run it with its output in a log file, SIGKILL or SIGTERM
//!   it; it is killed on drop.
//! - [`ports`]: a free listen port, and exclusive blocks of host ports so parallel tests (and
//!   parallel test processes) never publish on the same port.
//! - [`wait`]: poll a condition with a deadline; a timeout reports the last observation.
//! - [`docker`]: the engine through the `docker` CLI (inspect, list by label, build the image)
//!   and a guard that removes a test's containers.
//! - [`board`]: a typed client for the board daemon's API, a launcher, and a per-test board.
//! - [`broker`]: the session broker's launcher and typed client, racks registered with it, and
//!   a two-region setup.
//! - [`metrics`]: read a sample out of a Prometheus text exposition.
//! - [`adb`]: Debian's `adb` client on a private server port.
//! - [`service`]: a service binary restartable exactly as it was (controller, broker).
//! - [`scratch`]: a temporary directory per test, kept when the test fails.
//! - [`stream`]: a player on an instance's stream port (handshake, frames, being cut off).
//! - [`simboards`]: SIMULATED boards for the benchmarks (enrol, report every instance ready).
//! - [`pace`]: open-loop pacing for the benchmarks (request i due at i / rate).

pub mod adb;
pub mod board;
pub mod broker;
pub mod controller;
pub mod cpu;
pub mod docker;
pub mod metrics;
pub mod pace;
pub mod ports;
pub mod process;
pub mod scratch;
pub mod service;
pub mod simboards;
pub mod stream;
pub mod wait;

pub use board::{ApiError, BoardClient, BoardConfig, BoardDaemon, TestBoard, instance};
pub use docker::{
    DockerCleanup, SIM_IMAGE, board_containers, docker, docker_inspect, ensure_image, try_docker,
    try_docker_inspect,
};
pub use ports::{PortBlock, free_port};
pub use process::{Process, binary, binary_in_profile, workspace_root};
pub use scratch::TestDir;
pub use wait::{wait_until, wait_until_every};
