//! The reconcile loop: observe (Docker list, exit details, probe reports) -> decide
//! (`reconcile::decide`, pure) -> act (create, start, replace, remove), again after every Docker
//! event, desired-state change or due restart, and at least every resync interval.
//!
//! The agent is the single writer of instance records; probes and the event watcher only send it
//! messages, so no lock is held across an await.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::{
    Anomaly, AnomalyKind, BoardEvent, BoardStatus, BootTimings, DesiredState, ExitInfo, InstancePhase,
    InstancePorts, InstanceSpec, InstanceStatus,
};
use futures_util::StreamExt;
use service_kit::time::now_ms;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::docker::{DockerError, DockerRuntime, OwnedContainer, RunState, spec_hash};
use crate::metrics::{KindLabels, Metrics, PhaseLabels};
use crate::readiness::{self, Probe, ProbeEvent, ProbeReport};
use crate::reconcile::{self, Action, CRASH_LOOP_THRESHOLD, CRASH_WINDOW, restart_backoff};
use crate::store::Store;

/// How many recent anomalies the status document keeps.
const ANOMALY_HISTORY: usize = 100;
/// Delay of the extra pass after a Docker event.
const EVENT_FOLLOW_UP: Duration = Duration::from_millis(300);
/// How many Docker actions run at once.
const ACTION_CONCURRENCY: usize = 8;

/// Everything the agent needs, handed over by `lib.rs`.
pub struct AgentParts {
    pub board_id: String,
    pub docker: DockerRuntime,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub desired: watch::Receiver<DesiredState>,
    pub status: watch::Sender<BoardStatus>,
    pub board_cpus: Vec<u32>,
    pub adb_host: IpAddr,
    pub resync: Duration,
    pub wake: Arc<Notify>,
}

/// What the agent remembers about one instance.
#[derive(Default)]
struct Record {
    generation: u64,
    phase: Option<InstancePhase>,
    reason: Option<String>,
    container_id: Option<String>,
    ports: Option<InstancePorts>,
    restarts: u32,
    failures: VecDeque<Instant>,
    not_before: Option<Instant>,
    crash_loop: bool,
    last_exit: Option<ExitInfo>,
    boot: BootTimings,
    /// When the daemon asked Docker for the current container; `None` for adopted containers,
    /// whose boot stages were not watched and so are not timed.
    op_started: Option<Instant>,
    probe: Option<(String, JoinHandle<()>)>,
    /// [`Probe::run`] of the current probe; reports of earlier probes are ignored.
    probe_run: u64,
    /// The stream token the current probe was given: it applies it before it reports the
    /// instance ready, so once ready this is the token the stream accepts. Kept in memory only:
    /// a restarted daemon probes every container again, which applies the token again.
    stream_token: Option<String>,
    /// Last fast reset applied; loaded from the store on first use.
    reset_epoch: Option<u64>,
}

impl Record {
    fn stop_probe(&mut self) {
        if let Some((_, handle)) = self.probe.take() {
            handle.abort();
        }
    }
}

/// The result of one action.
enum Outcome {
    Running {
        instance: String,
        container_id: String,
        issued: Instant,
        created: Option<Instant>,
        started: Instant,
        restart: bool,
    },
    Removed {
        instance: String,
        container_id: String,
    },
    Failed {
        instance: String,
        op: &'static str,
        error: DockerError,
    },
    /// Nothing was done (no spec for a create).
    Skipped {
        instance: String,
    },
}

pub struct Agent {
    parts: AgentParts,
    records: BTreeMap<String, Record>,
    anomalies: VecDeque<Anomaly>,
    docker_reachable: bool,
    probe_tx: mpsc::UnboundedSender<ProbeReport>,
    probe_rx: mpsc::UnboundedReceiver<ProbeReport>,
    /// Number of the last probe started.
    probe_runs: u64,
}

impl Agent {
    pub fn new(parts: AgentParts) -> Agent {
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        Agent {
            parts,
            records: BTreeMap::new(),
            anomalies: VecDeque::new(),
            docker_reachable: true,
            probe_tx,
            probe_rx,
            probe_runs: 0,
        }
    }

    /// Runs until `cancel` fires. Containers are left running on the way out.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut next_pass = tokio::time::Instant::now();
        // Docker emits `die` a moment before its container list says `exited`, so a pass
        // triggered by an event is followed by one more shortly after.
        let mut follow_up = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.parts.wake.notified() => {
                    next_pass = tokio::time::Instant::now();
                    follow_up = true;
                }
                changed = self.parts.desired.changed() => {
                    if changed.is_err() { break; }
                    next_pass = tokio::time::Instant::now();
                }
                Some(report) = self.probe_rx.recv() => {
                    self.on_probe(report);
                    self.publish();
                    continue;
                }
                _ = tokio::time::sleep_until(next_pass) => {}
            }
            if tokio::time::Instant::now() < next_pass {
                continue;
            }
            let wake_at = self.pass().await;
            let mut latest = tokio::time::Instant::now() + self.parts.resync;
            if std::mem::take(&mut follow_up) {
                latest = tokio::time::Instant::now() + EVENT_FOLLOW_UP;
            }
            next_pass = wake_at.map(tokio::time::Instant::from_std).map_or(latest, |w| w.min(latest));
        }
        for record in self.records.values_mut() {
            record.stop_probe();
        }
        tracing::info!("reconcile loop stopped; containers keep running");
    }

    /// One observe-decide-act pass. Returns when the next pass is due at the latest.
    async fn pass(&mut self) -> Option<Instant> {
        self.parts.metrics.reconcile_passes.inc();
        tracing::debug!("reconcile pass");
        let desired = self.parts.desired.borrow_and_update().clone();
        let owned = match self.parts.docker.list_owned().await {
            Ok(owned) => {
                if !self.docker_reachable {
                    tracing::info!("Docker reachable again");
                }
                self.docker_reachable = true;
                owned
            }
            Err(err) => {
                self.parts.metrics.error(err.class());
                if self.docker_reachable {
                    self.docker_reachable = false;
                    self.anomaly(AnomalyKind::DockerUnreachable, None, err.to_string());
                }
                self.publish();
                return Some(Instant::now() + Duration::from_secs(1));
            }
        };
        let specs: HashMap<&str, &InstanceSpec> =
            desired.instances.iter().map(|s| (s.id.as_str(), s)).collect();
        self.observe(&specs, &owned).await;
        self.forget_old_failures();
        let mut wake_for_reset = None;
        let mut resets_pending = Vec::new();
        for (spec, container_id) in self.resets_due(&specs, &owned) {
            if !self.fast_reset(spec, &container_id).await {
                wake_for_reset = Some(Instant::now() + Duration::from_secs(1));
                resets_pending.push(spec.id.as_str());
            }
        }
        // A fast reset applies its new token itself (it restarts the probe); a token that
        // changed on its own is applied here. One whose reset failed waits for the retry.
        for (spec, container_id) in self.tokens_due(&specs, &owned) {
            if !resets_pending.contains(&spec.id.as_str()) {
                self.apply_new_token(spec, &container_id);
            }
        }

        let now = Instant::now();
        let decision = reconcile::decide(
            &desired.instances,
            &owned,
            |id| self.records.get(id).and_then(|r| r.not_before),
            now,
        );
        for action in &decision.actions {
            if let Action::Remove { instance, .. } = action
                && !specs.contains_key(instance.as_str())
                && let Some(record) = self.records.get_mut(instance)
            {
                record.stop_probe();
                Self::set_phase(&self.parts, instance, record, InstancePhase::Terminating, None);
            }
        }
        let docker = &self.parts.docker;
        let cpus = &self.parts.board_cpus;
        let outcomes: Vec<Outcome> = futures_util::stream::iter(decision.actions)
            .map(|action| {
                let spec = specs.get(action.instance()).map(|s| (*s).clone());
                execute(docker, cpus, action, spec)
            })
            .buffer_unordered(ACTION_CONCURRENCY)
            .collect()
            .await;
        for outcome in outcomes {
            self.apply(outcome, &specs);
        }
        // Forget instances that are neither wanted nor owned any more.
        let owned_ids: Vec<&str> = owned.iter().map(|c| c.instance.as_str()).collect();
        self.records.retain(|id, r| {
            let keep = specs.contains_key(id.as_str())
                || (owned_ids.contains(&id.as_str()) && r.phase != Some(InstancePhase::Terminating));
            if !keep {
                r.stop_probe();
            }
            keep
        });
        self.publish();
        match (decision.wake_at, wake_for_reset) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Running containers of the current spec whose desired reset epoch is newer than the one
    /// applied.
    fn resets_due<'s>(
        &mut self,
        specs: &HashMap<&str, &'s InstanceSpec>,
        owned: &[OwnedContainer],
    ) -> Vec<(&'s InstanceSpec, String)> {
        let mut due = Vec::new();
        for container in owned.iter().filter(|c| c.state == RunState::Running) {
            let Some(spec) = specs.get(container.instance.as_str()) else { continue };
            if spec.reset_epoch == 0 || container.generation != spec.generation {
                continue;
            }
            let store = &self.parts.store;
            let record = self.records.entry(spec.id.clone()).or_default();
            let applied = *record.reset_epoch.get_or_insert_with(|| store.reset_epoch(&spec.id).unwrap_or(0));
            if spec.reset_epoch > applied && record.container_id.as_deref() == Some(container.id.as_str()) {
                due.push((*spec, container.id.clone()));
            }
        }
        due
    }

    /// Running containers whose probe was given another stream token than their spec now names.
    /// The controller only rotates a token with a new generation (a new container) or a fast
    /// reset; this catches any other change, such as a standalone `PUT /v1/desired`.
    fn tokens_due<'s>(
        &self,
        specs: &HashMap<&str, &'s InstanceSpec>,
        owned: &[OwnedContainer],
    ) -> Vec<(&'s InstanceSpec, String)> {
        owned
            .iter()
            .filter(|c| c.state == RunState::Running)
            .filter_map(|container| {
                let spec = *specs.get(container.instance.as_str())?;
                let record = self.records.get(&spec.id)?;
                // Without a probe on this container, `observe` starts one with the current spec.
                let probing = record.probe.as_ref().is_some_and(|(id, _)| id == &container.id);
                let due = spec.stream_token.is_some() && probing && record.stream_token != spec.stream_token;
                due.then(|| (spec, container.id.clone()))
            })
            .collect()
    }

    /// Restarts the probe of a running container so it applies the spec's new stream token; a
    /// ready instance is `booting` until it has.
    fn apply_new_token(&mut self, spec: &InstanceSpec, container_id: &str) {
        tracing::info!(instance = %spec.id, "stream token changed; applying it");
        let record = self.records.entry(spec.id.clone()).or_default();
        if record.phase == Some(InstancePhase::Ready) {
            // Not a boot: no stage timings for this round.
            record.op_started = None;
            Self::set_phase(
                &self.parts,
                &spec.id,
                record,
                InstancePhase::Booting,
                Some("stream token changed".into()),
            );
        }
        self.start_probe(spec, container_id);
    }

    /// Clears the game's data over ADB and restarts the readiness probe, which applies the spec's
    /// (new) stream token, relaunches the game and waits for it to be in the foreground again.
    /// Returns false when ADB failed (the next pass retries).
    async fn fast_reset(&mut self, spec: &InstanceSpec, container_id: &str) -> bool {
        let addr = SocketAddr::new(self.parts.adb_host, spec.ports.adb);
        if let Some(package) = spec.launch_package() {
            let cleared =
                crate::adb::shell(addr, &format!("pm clear {package}"), Duration::from_secs(5)).await;
            match cleared {
                Ok(out) if out.trim() == "Success" => {}
                outcome => {
                    self.parts.metrics.error("fast_reset");
                    tracing::warn!(instance = %spec.id, ?outcome, "fast reset failed; retrying");
                    return false;
                }
            }
        }
        if let Err(err) = self.parts.store.set_reset_epoch(&spec.id, spec.reset_epoch) {
            tracing::error!(error = %err, "cannot record a fast reset");
            return false;
        }
        tracing::info!(instance = %spec.id, epoch = spec.reset_epoch, "fast reset done");
        let record = self.records.entry(spec.id.clone()).or_default();
        record.reset_epoch = Some(spec.reset_epoch);
        record.op_started = Some(Instant::now());
        record.boot = BootTimings::default();
        Self::set_phase(&self.parts, &spec.id, record, InstancePhase::Booting, Some("fast reset".into()));
        self.start_probe(spec, container_id);
        true
    }

    /// Brings records up to date with what Docker holds.
    async fn observe(&mut self, specs: &HashMap<&str, &InstanceSpec>, owned: &[OwnedContainer]) {
        for spec in specs.values() {
            let record = self.records.entry(spec.id.clone()).or_default();
            record.ports = Some(spec.ports);
            if record.phase.is_none() {
                record.generation = spec.generation;
                Self::set_phase(&self.parts, &spec.id, record, InstancePhase::Pending, None);
            }
        }
        for container in owned {
            let Some(spec) = specs.get(container.instance.as_str()) else { continue };
            if container.generation != spec.generation || container.spec_hash != spec_hash(spec) {
                continue;
            }
            match container.state {
                RunState::Running => {
                    let record = self.records.entry(spec.id.clone()).or_default();
                    if record.container_id.as_deref() != Some(container.id.as_str()) {
                        // A running container we did not start in this life: adopt it as it is.
                        tracing::info!(instance = %spec.id, container = %container.id, "adopting running container");
                        record.container_id = Some(container.id.clone());
                        record.generation = spec.generation;
                        record.op_started = None;
                        record.boot = BootTimings::default();
                        Self::set_phase(&self.parts, &spec.id, record, InstancePhase::Starting, None);
                    }
                    if record.probe.as_ref().is_none_or(|(id, _)| id != &container.id) {
                        self.start_probe(spec, &container.id);
                    }
                }
                RunState::Exited => {
                    let exit = match self.parts.docker.exit_info(&container.id).await {
                        Ok(exit) => exit,
                        Err(err) => {
                            self.parts.metrics.error(err.class());
                            continue;
                        }
                    };
                    let record = self.records.entry(spec.id.clone()).or_default();
                    record.stop_probe();
                    record.container_id = Some(container.id.clone());
                    if record.last_exit.as_ref().is_some_and(|e| e.finished_at == exit.finished_at) {
                        continue;
                    }
                    self.on_exit(&spec.id, spec.memory_mib, exit);
                }
                RunState::Created | RunState::Transitional => {}
            }
        }
    }

    fn on_exit(&mut self, instance: &str, memory_mib: u64, exit: ExitInfo) {
        let reason = if exit.oom_killed {
            format!("killed by the OOM killer: the instance exceeded its {memory_mib} MiB memory limit")
        } else {
            format!("container exited with code {}", exit.code)
        };
        tracing::warn!(instance, code = exit.code, oom_killed = exit.oom_killed, "instance exited");
        let oom = exit.oom_killed;
        let record = self.records.entry(instance.to_string()).or_default();
        record.last_exit = Some(exit);
        Self::set_phase(&self.parts, instance, record, InstancePhase::Exited, Some(reason.clone()));
        if oom {
            self.anomaly(AnomalyKind::OomKilled, Some(instance), reason);
        }
        self.register_failure(instance);
    }

    /// Drops failures older than the crash window, so an instance that stopped failing leaves
    /// its crash loop.
    fn forget_old_failures(&mut self) {
        let now = Instant::now();
        for (id, record) in self.records.iter_mut() {
            while record.failures.front().is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW) {
                record.failures.pop_front();
            }
            if record.crash_loop && record.failures.len() < CRASH_LOOP_THRESHOLD {
                tracing::info!(instance = %id, "crash loop over");
                record.crash_loop = false;
            }
        }
    }

    /// Counts a crash or failed attempt: sets the backoff and detects crash loops.
    fn register_failure(&mut self, instance: &str) {
        let now = Instant::now();
        let record = self.records.entry(instance.to_string()).or_default();
        record.failures.push_back(now);
        while record.failures.front().is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW) {
            record.failures.pop_front();
        }
        let delay = restart_backoff(record.failures.len());
        record.not_before = Some(now + delay);
        let looping = record.failures.len() >= CRASH_LOOP_THRESHOLD;
        let entered_loop = looping && !record.crash_loop;
        record.crash_loop = looping;
        if entered_loop {
            let message = format!(
                "{} failures within {}s; restarts are backed off (next in {}s)",
                record.failures.len(),
                CRASH_WINDOW.as_secs(),
                delay.as_secs()
            );
            self.anomaly(AnomalyKind::CrashLoop, Some(instance), message);
        }
    }

    fn apply(&mut self, outcome: Outcome, specs: &HashMap<&str, &InstanceSpec>) {
        match outcome {
            Outcome::Running { instance, container_id, issued, created, started, restart } => {
                let Some(spec) = specs.get(instance.as_str()) else { return };
                let record = self.records.entry(instance.clone()).or_default();
                record.stop_probe();
                record.container_id = Some(container_id.clone());
                record.generation = spec.generation;
                record.op_started = Some(issued);
                let ms = |t: Instant| t.duration_since(issued).as_millis() as u64;
                record.boot = BootTimings {
                    created_ms: created.map(ms),
                    started_ms: Some(ms(started)),
                    ..BootTimings::default()
                };
                if let Some(created) = created {
                    self.parts.metrics.observe_stage("created", created.duration_since(issued).as_secs_f64());
                }
                self.parts.metrics.observe_stage("started", started.duration_since(issued).as_secs_f64());
                if restart {
                    record.restarts += 1;
                    self.parts.metrics.restarts.inc();
                } else {
                    // A fresh container starts with a clean slate: no crash history, nothing to reset.
                    record.failures.clear();
                    record.crash_loop = false;
                    record.not_before = None;
                    record.last_exit = None;
                    record.restarts = 0;
                    record.reset_epoch = Some(spec.reset_epoch);
                    if let Err(err) = self.parts.store.set_reset_epoch(&instance, spec.reset_epoch) {
                        tracing::error!(error = %err, "cannot record the reset epoch");
                    }
                }
                Self::set_phase(&self.parts, &instance, record, InstancePhase::Starting, None);
                self.start_probe(spec, &container_id);
            }
            Outcome::Removed { instance, container_id } => {
                tracing::info!(instance, container = %container_id, "container removed");
                if let Some(record) = self.records.get_mut(&instance)
                    && record.container_id.as_deref() == Some(container_id.as_str())
                {
                    record.stop_probe();
                    record.container_id = None;
                }
            }
            Outcome::Skipped { instance } => tracing::debug!(instance, "nothing to create"),
            Outcome::Failed { instance, op, error } => {
                self.parts.metrics.error(error.class());
                let message = format!("{op} failed: {error}");
                tracing::warn!(instance, op, error = %error, "action failed");
                if specs.contains_key(instance.as_str()) {
                    let record = self.records.entry(instance.clone()).or_default();
                    Self::set_phase(
                        &self.parts,
                        &instance,
                        record,
                        InstancePhase::Failed,
                        Some(message.clone()),
                    );
                    self.anomaly(AnomalyKind::CreateFailed, Some(&instance), message);
                    self.register_failure(&instance);
                }
            }
        }
    }

    fn start_probe(&mut self, spec: &InstanceSpec, container_id: &str) {
        self.probe_runs += 1;
        let probe = Probe {
            instance: spec.id.clone(),
            container_id: container_id.to_string(),
            adb: SocketAddr::new(self.parts.adb_host, spec.ports.adb),
            boot_timeout: Duration::from_secs(spec.boot_timeout_s.into()),
            launch: spec.readiness.launch.clone(),
            stream_token: spec.stream_token.clone(),
            run: self.probe_runs,
        };
        let handle = tokio::spawn(readiness::run(probe, self.probe_tx.clone()));
        let record = self.records.entry(spec.id.clone()).or_default();
        record.stop_probe();
        record.probe = Some((container_id.to_string(), handle));
        record.probe_run = self.probe_runs;
        record.stream_token = spec.stream_token.clone();
    }

    fn on_probe(&mut self, report: ProbeReport) {
        let desired = self.parts.desired.borrow();
        let wants_foreground = desired
            .instances
            .iter()
            .find(|s| s.id == report.instance)
            .is_some_and(|s| s.readiness.launch.is_some());
        drop(desired);
        let Some(record) = self.records.get_mut(&report.instance) else { return };
        if record.container_id.as_deref() != Some(report.container_id.as_str()) {
            return; // a report about a container that has since been replaced
        }
        if record.probe_run != report.run {
            // Sent by a probe since replaced (a fast reset or a new token): its `Booted` may
            // predate the token the instance must have before it is ready.
            return;
        }
        let elapsed = record.op_started.map(|t| t.elapsed());
        let stage = |name: &str, slot: &mut Option<u64>| {
            if let Some(elapsed) = elapsed {
                *slot = Some(elapsed.as_millis() as u64);
                self.parts.metrics.observe_stage(name, elapsed.as_secs_f64());
            }
        };
        let mut anomaly = None;
        match report.event {
            ProbeEvent::AdbAnswered => {
                stage("adb", &mut record.boot.adb_ms);
                Self::set_phase(&self.parts, &report.instance, record, InstancePhase::Booting, None);
            }
            ProbeEvent::Booted => {
                stage("booted", &mut record.boot.booted_ms);
                if !wants_foreground {
                    Self::set_phase(&self.parts, &report.instance, record, InstancePhase::Ready, None);
                }
            }
            ProbeEvent::Foreground => {
                stage("foreground", &mut record.boot.foreground_ms);
                Self::set_phase(&self.parts, &report.instance, record, InstancePhase::Ready, None);
            }
            ProbeEvent::Recovered => {
                Self::set_phase(&self.parts, &report.instance, record, InstancePhase::Ready, None);
            }
            ProbeEvent::BootTimeout { detail } => anomaly = Some((AnomalyKind::BootTimeout, detail)),
            ProbeEvent::Unresponsive { detail } => anomaly = Some((AnomalyKind::AdbUnresponsive, detail)),
        }
        if let Some((_, detail)) = &anomaly {
            Self::set_phase(
                &self.parts,
                &report.instance,
                record,
                InstancePhase::Failed,
                Some(detail.clone()),
            );
        }
        if let Some((kind, detail)) = anomaly {
            self.anomaly(kind, Some(&report.instance), detail);
        }
    }

    /// Changes a record's phase, journaling the change.
    fn set_phase(
        parts: &AgentParts,
        instance: &str,
        record: &mut Record,
        phase: InstancePhase,
        reason: Option<String>,
    ) {
        if record.phase == Some(phase) && record.reason == reason {
            return;
        }
        tracing::info!(instance, phase = phase.as_str(), reason = reason.as_deref().unwrap_or(""), "phase");
        record.phase = Some(phase);
        record.reason = reason.clone();
        let event = BoardEvent::Phase {
            instance: instance.to_string(),
            generation: record.generation,
            phase,
            container_id: record.container_id.clone(),
            reason,
        };
        if let Err(err) = parts.store.append(event, now_ms()) {
            parts.metrics.error("store");
            tracing::error!(error = %err, "cannot journal a phase change");
        }
    }

    fn anomaly(&mut self, kind: AnomalyKind, instance: Option<&str>, message: String) {
        tracing::warn!(kind = kind.as_str(), instance = instance.unwrap_or(""), message, "anomaly");
        self.parts.metrics.anomalies.get_or_create(&KindLabels { kind: kind.as_str().to_string() }).inc();
        let anomaly = Anomaly { kind, instance: instance.map(String::from), message, at_ms: now_ms() };
        if let Err(err) =
            self.parts.store.append(BoardEvent::Anomaly { anomaly: anomaly.clone() }, anomaly.at_ms)
        {
            self.parts.metrics.error("store");
            tracing::error!(error = %err, "cannot journal an anomaly");
        }
        if self.anomalies.len() == ANOMALY_HISTORY {
            self.anomalies.pop_front();
        }
        self.anomalies.push_back(anomaly);
    }

    /// Publishes the status document and the phase gauges.
    fn publish(&self) {
        let desired = self.parts.desired.borrow();
        let mut counts: HashMap<InstancePhase, i64> = InstancePhase::ALL.iter().map(|p| (*p, 0)).collect();
        let instances: Vec<InstanceStatus> = self
            .records
            .iter()
            .filter_map(|(id, r)| {
                let phase = r.phase?;
                *counts.entry(phase).or_default() += 1;
                Some(InstanceStatus {
                    id: id.clone(),
                    generation: r.generation,
                    phase,
                    reason: r.reason.clone(),
                    container_id: r.container_id.clone(),
                    ports: r.ports?,
                    restarts: r.restarts,
                    crash_loop: r.crash_loop,
                    last_exit: r.last_exit.clone(),
                    boot: r.boot.clone(),
                    reset_epoch: r.reset_epoch.unwrap_or(0),
                })
            })
            .collect();
        for (phase, count) in counts {
            self.parts
                .metrics
                .instances
                .get_or_create(&PhaseLabels { phase: phase.as_str().to_string() })
                .set(count);
        }
        let status = BoardStatus {
            board_id: self.parts.board_id.clone(),
            desired_generation: desired.generation,
            docker_reachable: self.docker_reachable,
            instances,
            anomalies: self.anomalies.iter().cloned().collect(),
        };
        self.parts.status.send_replace(status);
    }
}

/// Carries out one action against Docker.
async fn execute(
    docker: &DockerRuntime,
    cpus: &[u32],
    action: Action,
    spec: Option<InstanceSpec>,
) -> Outcome {
    let issued = Instant::now();
    match action {
        Action::Remove { instance, container_id } => match docker.remove(&container_id).await {
            Ok(()) => Outcome::Removed { instance, container_id },
            Err(error) => Outcome::Failed { instance, op: "remove", error },
        },
        Action::Start { instance, container_id } => match docker.start(&container_id).await {
            Ok(()) => Outcome::Running {
                instance,
                container_id,
                issued,
                created: None,
                started: Instant::now(),
                restart: true,
            },
            Err(error) => Outcome::Failed { instance, op: "start", error },
        },
        // `decide` only creates instances of the same desired snapshot, so there is always a
        // spec; without one there is nothing to create.
        Action::Create { instance } | Action::Replace { instance, .. } if spec.is_none() => {
            Outcome::Skipped { instance }
        }
        Action::Create { instance } => create_and_start(docker, cpus, instance, spec, issued).await,
        Action::Replace { instance, container_id } => {
            if let Err(error) = docker.remove(&container_id).await {
                return Outcome::Failed { instance, op: "remove", error };
            }
            create_and_start(docker, cpus, instance, spec, issued).await
        }
    }
}

async fn create_and_start(
    docker: &DockerRuntime,
    cpus: &[u32],
    instance: String,
    spec: Option<InstanceSpec>,
    issued: Instant,
) -> Outcome {
    let Some(spec) = spec else { return Outcome::Skipped { instance } };
    let container_id = match docker.create(&spec, cpus).await {
        Ok(id) => id,
        Err(error) => return Outcome::Failed { instance, op: "create", error },
    };
    let created = Instant::now();
    match docker.start(&container_id).await {
        Ok(()) => Outcome::Running {
            instance,
            container_id,
            issued,
            created: Some(created),
            started: Instant::now(),
            restart: false,
        },
        Err(error) => Outcome::Failed { instance, op: "start", error },
    }
}

/// Follows Docker's event stream for this board's containers and wakes the agent on each event,
/// re-opening the stream from the last event's time whenever it ends.
pub async fn watch_events(docker: DockerRuntime, wake: Arc<Notify>, cancel: CancellationToken) {
    let mut since = (now_ms() / 1000) as i64;
    loop {
        let mut stream = Box::pin(docker.events(since));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                item = stream.next() => match item {
                    Some(Ok(event)) => {
                        tracing::debug!(action = event.action.as_deref().unwrap_or(""), "Docker event");
                        if let Some(time) = event.time { since = time; }
                        wake.notify_one();
                    }
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "Docker event stream failed; re-opening");
                        break;
                    }
                    None => break,
                }
            }
        }
        // Anything missed while the stream was down is caught by the pass this triggers.
        wake.notify_one();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
