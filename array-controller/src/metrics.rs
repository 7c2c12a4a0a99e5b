//! The controller's Prometheus metrics, under the `array_controller` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::gauge::Gauge as FloatGaugeBase;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

/// A gauge holding a float.
pub type FloatGauge = FloatGaugeBase<f64, AtomicU64>;

pub struct Metrics {
    pub boards: Family<StateLabels, Gauge>,
    pub boards_unreachable: Gauge,
    pub instances: Family<StateLabels, Gauge>,
    pub claim_seconds: Histogram,
    pub claims: Family<OutcomeLabels, Counter>,
    pub utilisation: Family<ResourceLabels, FloatGauge>,
    pub heartbeats: Counter,
    pub broker_registrations: Family<OutcomeLabels, Counter>,
    pub broker_registered: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            boards: Family::default(),
            boards_unreachable: Gauge::default(),
            instances: Family::default(),
            claim_seconds: Histogram::new(service_kit::metrics::duration_buckets()),
            claims: Family::default(),
            utilisation: Family::default(),
            heartbeats: Counter::default(),
            broker_registrations: Family::default(),
            broker_registered: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("array_controller");
        sub.register("boards", "Boards by lifecycle state", m.boards.clone());
        sub.register("boards_unreachable", "Boards whose heartbeats stopped", m.boards_unreachable.clone());
        sub.register("instances", "Instances by lifecycle state", m.instances.clone());
        sub.register("claim_seconds", "Time to answer a claim", m.claim_seconds.clone());
        sub.register("claims", "Claim requests by outcome", m.claims.clone());
        sub.register(
            "packing_utilisation_ratio",
            "Share of the allocatable resources of schedulable boards that is placed, by resource",
            m.utilisation.clone(),
        );
        sub.register("heartbeats", "Board heartbeats received", m.heartbeats.clone());
        sub.register(
            "broker_registrations",
            "Registrations sent to the session broker, by outcome (accepted, refused, unreachable, error)",
            m.broker_registrations.clone(),
        );
        sub.register(
            "broker_registered",
            "1 while the session broker accepted the last registration, else 0",
            m.broker_registered.clone(),
        );
        m
    }

    pub fn claim_outcome(&self, outcome: &str) {
        self.claims.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
    }

    pub fn registration_outcome(&self, outcome: &str) {
        self.broker_registrations.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
        self.broker_registered.set(i64::from(outcome == "accepted"));
    }
}
