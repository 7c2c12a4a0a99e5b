//! Accepting a new desired state: every check runs before anything is written, so a refused
//! state changes nothing. Used by the local API (standalone mode) and by the controller sync.

use std::collections::BTreeSet;
use std::sync::Arc;

use api::{BoardFacts, BoardLimits, DesiredState, SpecError};
use service_kit::time::now_ms;
use tokio::sync::{Mutex, watch};

use crate::docker::DockerRuntime;
use crate::store::{Store, StoreError};

/// Why a desired state was refused.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error(transparent)]
    Invalid(#[from] SpecError),
    #[error("generation {offered} is older than the current generation {current}; send a newer generation")]
    Stale { offered: u64, current: u64 },
    #[error("generation {generation} was already accepted with different content; bump the generation")]
    GenerationReused { generation: u64 },
    #[error("instance {instance:?}: device {path} does not exist on this board")]
    DeviceMissing { instance: String, path: String },
    #[error(
        "instance {instance:?}: image {image:?} is not in this board's Docker engine; build or load it first"
    )]
    ImageMissing { instance: String, image: String },
    #[error("the Docker engine is not reachable yet, so images cannot be checked: {0}")]
    DockerUnavailable(String),
    #[error("this board is managed by its array controller; change its desired state there")]
    ManagedByController,
    #[error("cannot store the desired state: {0}")]
    Store(#[from] StoreError),
}

/// Where an offered desired state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The local API (standalone mode).
    Local,
    /// The array controller.
    Controller,
}

impl DesiredError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            DesiredError::Invalid(err) => err.code(),
            DesiredError::Stale { .. } => "stale_generation",
            DesiredError::GenerationReused { .. } => "generation_reused",
            DesiredError::DeviceMissing { .. } => "device_not_found",
            DesiredError::ImageMissing { .. } => "image_not_found",
            DesiredError::DockerUnavailable(_) => "docker_unreachable",
            DesiredError::ManagedByController => "managed_by_controller",
            DesiredError::Store(_) => "internal",
        }
    }
}

/// Whether an offered state changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored and handed to the reconcile loop.
    Applied,
    /// Identical to the current state; nothing to do.
    Unchanged,
}

/// The one place desired states come in through.
pub struct DesiredSource {
    store: Arc<Store>,
    tx: watch::Sender<DesiredState>,
    /// Offers are checked and written one at a time.
    lock: Mutex<()>,
    /// A controller manages this board: local offers are refused.
    managed: bool,
}

impl DesiredSource {
    pub fn new(store: Arc<Store>, tx: watch::Sender<DesiredState>, managed: bool) -> Self {
        DesiredSource { store, tx, lock: Mutex::new(()), managed }
    }

    /// The current desired state.
    pub fn current(&self) -> DesiredState {
        self.tx.borrow().clone()
    }

    /// Checks `offered` against the board and, if it passes, stores it and starts applying it.
    pub async fn offer(
        &self,
        offered: DesiredState,
        facts: &BoardFacts,
        docker: Option<&DockerRuntime>,
        origin: Origin,
    ) -> Result<Accepted, DesiredError> {
        if self.managed && origin == Origin::Local {
            return Err(DesiredError::ManagedByController);
        }
        let _one_at_a_time = self.lock.lock().await;
        let current = self.current();
        if offered.generation < current.generation {
            return Err(DesiredError::Stale { offered: offered.generation, current: current.generation });
        }
        if offered.generation == current.generation {
            return if offered == current {
                Ok(Accepted::Unchanged)
            } else {
                Err(DesiredError::GenerationReused { generation: offered.generation })
            };
        }
        let limits = BoardLimits {
            cpus: facts.cpu.cpus.clone(),
            memory_mib: facts.memory_mib,
            host_port_range: facts.host_port_range,
        };
        offered.validate(&limits)?;
        for spec in &offered.instances {
            if let Some(path) = spec.devices.iter().find(|d| !std::path::Path::new(d).exists()) {
                return Err(DesiredError::DeviceMissing { instance: spec.id.clone(), path: path.clone() });
            }
        }
        let docker = docker.ok_or_else(|| DesiredError::DockerUnavailable("still connecting".into()))?;
        let images: BTreeSet<(&str, &str)> =
            offered.instances.iter().map(|s| (s.image.as_str(), s.id.as_str())).collect();
        let mut checked = BTreeSet::new();
        for (image, instance) in images {
            if !checked.insert(image) {
                continue;
            }
            match docker.image_present(image).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(DesiredError::ImageMissing {
                        instance: instance.into(),
                        image: image.into(),
                    });
                }
                Err(err) => return Err(DesiredError::DockerUnavailable(err.to_string())),
            }
        }
        self.store.save_desired(&offered, now_ms())?;
        tracing::info!(
            generation = offered.generation,
            instances = offered.instances.len(),
            "desired state accepted"
        );
        self.tx.send_replace(offered);
        Ok(Accepted::Applied)
    }
}
