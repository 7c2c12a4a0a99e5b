//! The broker's Prometheus metrics, under the `session_broker` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

pub struct Metrics {
    /// Sessions by state.
    pub sessions: Family<StateLabels, Gauge>,
    /// Racks by health.
    pub racks: Family<StateLabels, Gauge>,
    /// Sessions waiting in the queue.
    pub queued: Gauge,
    /// Time from a session request to its answer (placed or queued).
    pub placement_seconds: Histogram,
    /// Time a session spent queued before it was placed.
    pub queue_wait_seconds: Histogram,
    /// Scheduler decisions by outcome (place, queue, no_capacity).
    pub decisions: Family<OutcomeLabels, Counter>,
    /// Claims tried at racks by result.
    pub claims: Family<OutcomeLabels, Counter>,
    /// Lease renewals sent to racks by result.
    pub renewals: Family<OutcomeLabels, Counter>,
    /// Pool sizes sent to racks by result.
    pub pool_updates: Family<OutcomeLabels, Counter>,
    /// Finished sessions deleted by retention.
    pub sessions_pruned: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            sessions: Family::default(),
            racks: Family::default(),
            queued: Gauge::default(),
            placement_seconds: Histogram::new([
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            queue_wait_seconds: Histogram::new(service_kit::metrics::duration_buckets()),
            decisions: Family::default(),
            claims: Family::default(),
            renewals: Family::default(),
            pool_updates: Family::default(),
            sessions_pruned: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("session_broker");
        r.register("sessions", "Sessions by state", m.sessions.clone());
        r.register("racks", "Racks by health", m.racks.clone());
        r.register("queued_sessions", "Sessions waiting for capacity", m.queued.clone());
        r.register("placement_seconds", "Time to answer a session request", m.placement_seconds.clone());
        r.register(
            "queue_wait_seconds",
            "Time queued sessions waited before placement",
            m.queue_wait_seconds.clone(),
        );
        r.register("decisions", "Scheduler decisions by outcome", m.decisions.clone());
        r.register("claims", "Claims tried at racks by result", m.claims.clone());
        r.register("lease_renewals", "Lease renewal calls to racks by result", m.renewals.clone());
        r.register("pool_updates", "Pool sizes sent to racks by result", m.pool_updates.clone());
        r.register(
            "sessions_pruned",
            "Finished sessions deleted after the retention period",
            m.sessions_pruned.clone(),
        );
        m
    }

    pub fn outcome(family: &Family<OutcomeLabels, Counter>, outcome: &str) {
        family.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
    }
}
