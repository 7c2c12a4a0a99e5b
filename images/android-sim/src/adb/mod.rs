//! Just enough of the ADB wire protocol (device side, over TCP) for a real `adb` client.

pub mod server;
pub mod wire;
