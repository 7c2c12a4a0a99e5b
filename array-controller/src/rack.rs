//! The rack: the controller's shared state and the single path by which it changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use api::rack::RackEventBody;
use service_kit::time::now_ms;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::credentials::BoardCredentials;
use crate::db::{Db, DbError, Write};
use crate::events::EventHub;
use crate::metrics::Metrics;

/// The controller's state, shared by the API handlers and the background loops.
pub struct Rack {
    pub config: Config,
    pub db: Arc<Db>,
    pub hub: EventHub,
    pub metrics: Metrics,
    pub operator_token: String,
    pub broker_token: String,
    pub shutdown: CancellationToken,
    /// Wakes the pool reconciler (deployment changed, board became usable, instance went away).
    pub pools_changed: Notify,
    /// Wakes the broker link: a board enrolled or changed state, so the broker's view of the
    /// rack's boards is stale until the next registration.
    pub boards_changed: Notify,
    desired: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Board credentials already checked (cleared by every enrolment).
    pub board_credentials: BoardCredentials,
    /// Last placement failure per deployment (reasons, when): an unmet pool is reported when
    /// its reasons change, and retried by the timer only every [`crate::pools::UNMET_RETRY`].
    pub placement_failures: Mutex<HashMap<String, (Vec<String>, std::time::Instant)>>,
}

impl Rack {
    pub fn new(
        config: Config,
        db: Db,
        metrics: Metrics,
        operator_token: String,
        broker_token: String,
        shutdown: CancellationToken,
    ) -> Rack {
        Rack {
            config,
            db: Arc::new(db),
            hub: EventHub::default(),
            metrics,
            operator_token,
            broker_token,
            shutdown,
            pools_changed: Notify::new(),
            boards_changed: Notify::new(),
            desired: Mutex::new(HashMap::new()),
            board_credentials: BoardCredentials::default(),
            placement_failures: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` in one transaction, then publishes its events and wakes the long-polls of the
    /// boards whose desired state it changed.
    pub fn write<T, E: From<DbError>>(&self, f: impl FnOnce(&mut Write<'_>) -> Result<T, E>) -> Result<T, E> {
        let (value, committed) = self.db.write(now_ms(), f)?;
        for (board, generation) in committed.boards {
            self.desired_channel(&board).send_replace(generation);
        }
        if committed.events.iter().any(|e| matches!(e.body, RackEventBody::Board { .. })) {
            self.boards_changed.notify_one();
        }
        self.hub.publish(committed.events);
        Ok(value)
    }

    fn desired_channel(&self, board: &str) -> watch::Sender<u64> {
        let mut map = self.desired.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(board.to_string()).or_insert_with(|| watch::channel(0).0).clone()
    }

    /// A receiver that changes whenever the board's desired generation does.
    pub fn watch_desired(&self, board: &str) -> watch::Receiver<u64> {
        self.desired_channel(board).subscribe()
    }
}
