//! The daemon's Prometheus metrics, registered under the `board_daemon` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

fn stage_histogram() -> Histogram {
    Histogram::new(service_kit::metrics::duration_buckets())
}

/// Every metric the daemon exports.
pub struct Metrics {
    /// Instances by observed phase.
    pub instances: Family<PhaseLabels, Gauge>,
    /// Seconds from asking Docker for a container to each boot stage.
    pub boot_stage_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
    /// Reconcile passes run.
    pub reconcile_passes: Counter,
    /// Reconcile actions or observations that failed, by kind of error.
    pub reconcile_errors: Family<KindLabels, Counter>,
    /// Docker Engine API call latency by operation.
    pub docker_call_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    /// Restarts of crashed instances.
    pub restarts: Counter,
    /// Anomalies noticed, by kind.
    pub anomalies: Family<KindLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them on `registry` under `board_daemon_`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            instances: Family::default(),
            boot_stage_seconds: Family::new_with_constructor(stage_histogram),
            reconcile_passes: Counter::default(),
            reconcile_errors: Family::default(),
            docker_call_seconds: Family::new_with_constructor(stage_histogram),
            restarts: Counter::default(),
            anomalies: Family::default(),
        };
        let sub = registry.sub_registry_with_prefix("board_daemon");
        sub.register("instances", "Instances by observed phase", metrics.instances.clone());
        sub.register(
            "boot_stage_seconds",
            "Seconds from the container request to each boot stage (created, started, adb, booted, foreground)",
            metrics.boot_stage_seconds.clone(),
        );
        sub.register("reconcile_passes", "Reconcile passes run", metrics.reconcile_passes.clone());
        sub.register(
            "reconcile_errors",
            "Failed reconcile steps by error kind",
            metrics.reconcile_errors.clone(),
        );
        sub.register(
            "docker_call_seconds",
            "Docker Engine API call latency by operation",
            metrics.docker_call_seconds.clone(),
        );
        sub.register("restarts", "Restarts of crashed instances", metrics.restarts.clone());
        sub.register("anomalies", "Anomalies noticed, by kind", metrics.anomalies.clone());
        metrics
    }

    /// Records the duration of one boot stage.
    pub fn observe_stage(&self, stage: &str, seconds: f64) {
        self.boot_stage_seconds.get_or_create(&StageLabels { stage: stage.to_string() }).observe(seconds);
    }

    /// Counts a failed step.
    pub fn error(&self, kind: &str) {
        self.reconcile_errors.get_or_create(&KindLabels { kind: kind.to_string() }).inc();
    }
}
