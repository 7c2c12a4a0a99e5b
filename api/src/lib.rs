//! Wire types shared by the appliance's services: plain serde structs and enums with their
//! validation rules. Nothing here performs I/O, so every service and test can depend on it.

pub mod broker;
pub mod desired;
pub mod error;
pub mod facts;
pub mod ids;
pub mod instance;
pub mod rack;
pub mod status;

pub use desired::{BoardLimits, DesiredState};
pub use error::{ErrorBody, SpecError};
pub use facts::{BoardFacts, CpuCluster, CpuTopology, DiskFacts, DockerFacts, KernelFacts, PortRange};
pub use instance::{
    CONTAINER_ADB_PORT, CONTAINER_STREAM_PORT, InstancePorts, InstanceSpec, Readiness, STREAM_TOKEN_PROP,
};
pub use status::{
    Anomaly, AnomalyKind, BoardEvent, BoardStatus, BootTimings, ExitInfo, InstancePhase, InstanceStatus,
    JournalEntry,
};
