//! Following a rack's event stream: one task per rack. Each connection reads the rack's
//! instances with the sequence of the last event they reflect, then follows the events after
//! it, so nothing is missed and nothing replayed. Instance events keep the rack's stock current;
//! deployment events its pool sizes; a `gap` (the rack compacted events this task never saw)
//! is answered by reading every instance afresh.

use std::sync::Arc;
use std::time::Duration;

use api::rack::{InstanceState, RackEvent, RackEventBody};
use tokio::time::Instant;

use crate::broker::Broker;
use crate::racks::client::Target;
use crate::racks::registry::InstanceEntry;
use crate::racks::sse::{SseDecoder, SseEvent};

/// Silence on the stream this long means the connection is dead (the controller sends
/// keep-alives far more often).
const STREAM_SILENCE: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Starts the rack's follower unless it runs already.
pub fn ensure(broker: &Arc<Broker>, rack: &str) {
    let mut links = broker.links.lock().unwrap_or_else(|p| p.into_inner());
    if links.insert(rack.to_string()) {
        tokio::spawn(follow(broker.clone(), rack.to_string()));
    }
}

async fn follow(broker: Arc<Broker>, rack: String) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if broker.shutdown.is_cancelled() {
            return;
        }
        let target = broker.with_rack(&rack, |r| r.target.clone()).flatten();
        if let Some(target) = target {
            match stream_once(&broker, &rack, &target).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(err) => tracing::debug!(rack = %rack, error = %err, "event stream failed"),
            }
            broker.with_rack(&rack, |r| {
                if r.stream_connected {
                    r.stream_connected = false;
                    r.stream_down_since = Some(std::time::Instant::now());
                }
            });
        }
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: refresh the deployments, then apply events until the stream ends.
async fn stream_once(broker: &Arc<Broker>, rack: &str, target: &Target) -> Result<(), String> {
    let deployments = broker.controllers.deployments(target).await.map_err(|e| e.to_string())?;
    broker.with_rack(rack, |r| {
        for d in &deployments {
            r.deployments.insert(d.id.clone(), d.spec.game.clone());
            r.pool_sizes.insert(d.id.clone(), d.spec.pool_size);
        }
    });
    // Every connection starts from a snapshot of the rack's instances and follows the events
    // after it: no replay of the whole retained log after a broker restart, and a controller
    // whose log started over (a new database) is followed from its own sequence.
    resnapshot(broker, rack, target).await?;
    let after = broker.with_rack(rack, |r| r.last_event_seq).unwrap_or(0);
    let mut response =
        broker.controllers.events(target, after, FOLLOWED_KINDS).await.map_err(|e| e.to_string())?;
    broker.with_rack(rack, |r| {
        r.stream_connected = true;
        r.stream_down_since = None;
    });
    tracing::info!(rack, after, "following the rack's events");
    broker.capacity_changed.notify_one();
    let mut decoder = SseDecoder::default();
    loop {
        let chunk = tokio::select! {
            _ = broker.shutdown.cancelled() => return Ok(()),
            chunk = tokio::time::timeout_at(Instant::now() + STREAM_SILENCE, response.chunk()) => chunk,
        };
        let events = match chunk {
            Ok(Ok(Some(bytes))) => decoder.feed(&bytes),
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("the stream went silent".into()),
        };
        for SseEvent { name, data, .. } in events {
            match name.as_str() {
                "rack" => match serde_json::from_str::<RackEvent>(&data) {
                    Ok(event) => apply(broker, rack, event),
                    Err(e) => tracing::warn!(rack, error = %e, "unreadable rack event"),
                },
                "gap" => resnapshot(broker, rack, target).await?,
                _ => {}
            }
        }
    }
}

/// The event kinds [`apply`] uses: the controller skips the rest (claims the broker made
/// itself, boards' journal reports, placement failures). In `bench_sessions` claim events are
/// about a quarter of a rack's events; real boards add their journal reports.
const FOLLOWED_KINDS: &str = "instance,deployment,board";

fn apply(broker: &Broker, rack: &str, event: RackEvent) {
    let mut capacity = false;
    let mut pools = false;
    let mut boot_sample = None;
    broker.with_rack(rack, |r| {
        if event.seq <= r.last_event_seq {
            return;
        }
        r.last_event_seq = event.seq;
        match event.body {
            RackEventBody::Instance { instance, deployment, board, state, .. } => {
                match state {
                    InstanceState::Pending | InstanceState::Starting => {
                        r.booting_since.entry(instance.clone()).or_insert(event.at_ms);
                    }
                    InstanceState::Ready => {
                        if let (Some(since), Some(game)) =
                            (r.booting_since.remove(&instance), r.deployments.get(&deployment))
                        {
                            boot_sample = Some((game.clone(), event.at_ms.saturating_sub(since)));
                        }
                    }
                    InstanceState::Failed | InstanceState::Terminating => {
                        r.booting_since.remove(&instance);
                    }
                    _ => {}
                }
                capacity = r.set_instance(&instance, Some(InstanceEntry { deployment, board, state }));
                pools = true;
            }
            RackEventBody::Deployment { deployment, pool_size, deleted } => {
                if deleted {
                    r.pool_sizes.remove(&deployment);
                } else {
                    r.pool_sizes.insert(deployment, pool_size);
                }
            }
            RackEventBody::Board { .. } => capacity = true,
            _ => {}
        }
    });
    if let Some((game, ms)) = boot_sample {
        broker.demand.boot_sample(&game, ms);
    }
    if capacity {
        broker.capacity_changed.notify_one();
    }
    if pools {
        broker.pools_changed.notify_one();
    }
}

/// Reads every instance of the rack afresh (at the first connection, and after a gap in its
/// event log); events the snapshot already reflects are skipped.
async fn resnapshot(broker: &Broker, rack: &str, target: &Target) -> Result<(), String> {
    let (instances, seq) = broker.controllers.instances(target).await.map_err(|e| e.to_string())?;
    broker.with_rack(rack, |r| {
        r.reset_instances(
            instances
                .into_iter()
                .map(|i| (i.id, InstanceEntry { deployment: i.deployment, board: i.board, state: i.state })),
        );
        if let Some(seq) = seq {
            r.last_event_seq = seq;
        }
    });
    tracing::info!(rack, seq, "read the rack's instances");
    broker.capacity_changed.notify_one();
    broker.pools_changed.notify_one();
    Ok(())
}
