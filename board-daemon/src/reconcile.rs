//! The pure half of the reconcile loop: given what the board should run and what Docker holds,
//! decide what to do. No I/O, no clock reads: everything comes in as arguments, so every rule is
//! unit-tested here and the loop (`agent.rs`) only observes and acts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use api::InstanceSpec;

use crate::docker::{OwnedContainer, RunState, spec_hash};

/// One step to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start a container for a desired instance that has none.
    Create { instance: String },
    /// The container was made from another spec (generation or content changed): remove it and
    /// create a new one.
    Replace { instance: String, container_id: String },
    /// Start a created or exited container of the current spec.
    Start { instance: String, container_id: String },
    /// Remove a container this board owns but no longer wants.
    Remove { instance: String, container_id: String },
}

impl Action {
    /// The instance the action is about.
    pub fn instance(&self) -> &str {
        match self {
            Action::Create { instance }
            | Action::Replace { instance, .. }
            | Action::Start { instance, .. }
            | Action::Remove { instance, .. } => instance,
        }
    }
}

/// What to do now, and when to look again at the latest (a backed-off restart falls due).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub wake_at: Option<Instant>,
}

/// Decides the actions that bring `owned` containers to `desired`.
///
/// `not_before(instance)` gives the earliest moment the instance may be (re)started or created
/// again after a crash or a failed attempt; `None` means at once.
pub fn decide(
    desired: &[InstanceSpec],
    owned: &[OwnedContainer],
    not_before: impl Fn(&str) -> Option<Instant>,
    now: Instant,
) -> Decision {
    let mut decision = Decision::default();
    let wanted: HashMap<&str, &InstanceSpec> = desired.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut by_instance: HashMap<&str, Vec<&OwnedContainer>> = HashMap::new();
    for container in owned {
        by_instance.entry(container.instance.as_str()).or_default().push(container);
    }

    for (instance, containers) in &by_instance {
        let Some(spec) = wanted.get(instance) else {
            for c in containers {
                decision
                    .actions
                    .push(Action::Remove { instance: instance.to_string(), container_id: c.id.clone() });
            }
            continue;
        };
        let hash = spec_hash(spec);
        let current = |c: &&&OwnedContainer| c.generation == spec.generation && c.spec_hash == hash;
        // Keep one container of the current spec (a running one if any); everything else goes.
        let keep = containers
            .iter()
            .filter(current)
            .max_by_key(|c| c.state == RunState::Running)
            .map(|c| c.id.clone());
        match keep {
            Some(keep_id) => {
                for c in containers.iter().filter(|c| c.id != keep_id) {
                    decision
                        .actions
                        .push(Action::Remove { instance: instance.to_string(), container_id: c.id.clone() });
                }
                let kept = containers.iter().find(|c| c.id == keep_id).expect("kept container is listed");
                if matches!(kept.state, RunState::Created | RunState::Exited) {
                    match not_before(instance).filter(|due| *due > now) {
                        Some(due) => decision.wake_at = earliest(decision.wake_at, due),
                        None => decision
                            .actions
                            .push(Action::Start { instance: instance.to_string(), container_id: keep_id }),
                    }
                }
            }
            None => {
                // Only stale containers: replace the first, remove any others.
                let (first, rest) = containers.split_first().expect("grouped containers are non-empty");
                for c in rest {
                    decision
                        .actions
                        .push(Action::Remove { instance: instance.to_string(), container_id: c.id.clone() });
                }
                decision
                    .actions
                    .push(Action::Replace { instance: instance.to_string(), container_id: first.id.clone() });
            }
        }
    }

    for spec in desired {
        if by_instance.contains_key(spec.id.as_str()) {
            continue;
        }
        match not_before(&spec.id).filter(|due| *due > now) {
            Some(due) => decision.wake_at = earliest(decision.wake_at, due),
            None => decision.actions.push(Action::Create { instance: spec.id.clone() }),
        }
    }
    // Deterministic order: removals first (they free ports and memory), then by instance.
    decision.actions.sort_by(|a, b| {
        let rank = |a: &Action| if matches!(a, Action::Remove { .. }) { 0 } else { 1 };
        (rank(a), a.instance()).cmp(&(rank(b), b.instance()))
    });
    decision
}

fn earliest(current: Option<Instant>, candidate: Instant) -> Option<Instant> {
    Some(current.map_or(candidate, |c| c.min(candidate)))
}

/// Delay before the next restart after `recent_failures` failures in the crash window: the first
/// restart is immediate, then 1 s, 2 s, 4 s ... capped at 60 s.
pub fn restart_backoff(recent_failures: usize) -> Duration {
    match recent_failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 2).min(6)).min(Duration::from_secs(60)),
    }
}

/// Failures within this window count towards backoff and crash-loop detection.
pub const CRASH_WINDOW: Duration = Duration::from_secs(120);
/// This many failures within the window make a crash loop.
pub const CRASH_LOOP_THRESHOLD: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use api::{InstancePorts, Readiness};

    fn spec(id: &str, generation: u64) -> InstanceSpec {
        InstanceSpec {
            id: id.into(),
            image: "img".into(),
            generation,
            cpus: vec![],
            memory_mib: 128,
            pids_limit: 128,
            devices: vec![],
            ports: InstancePorts { adb: 20000, stream: 20001 },
            env: Default::default(),
            args: vec![],
            privileged: false,
            boot_timeout_s: 60,
            readiness: Readiness::default(),
            reset_epoch: 0,
            stream_token: None,
        }
    }

    fn container(id: &str, spec: &InstanceSpec, state: RunState) -> OwnedContainer {
        OwnedContainer {
            id: id.into(),
            instance: spec.id.clone(),
            generation: spec.generation,
            spec_hash: spec_hash(spec),
            state,
        }
    }

    fn at_once(_: &str) -> Option<Instant> {
        None
    }

    #[test]
    fn missing_instances_are_created_and_running_ones_left_alone() {
        let (a, b) = (spec("a", 1), spec("b", 1));
        let owned = vec![container("c-a", &a, RunState::Running)];
        let d = decide(&[a, b], &owned, at_once, Instant::now());
        assert_eq!(d.actions, vec![Action::Create { instance: "b".into() }]);
    }

    #[test]
    fn a_generation_change_replaces_the_container() {
        let old = spec("a", 1);
        let owned = vec![container("c-a", &old, RunState::Running)];
        let d = decide(&[spec("a", 2)], &owned, at_once, Instant::now());
        assert_eq!(d.actions, vec![Action::Replace { instance: "a".into(), container_id: "c-a".into() }]);
    }

    #[test]
    fn a_content_change_without_a_generation_bump_also_replaces() {
        let old = spec("a", 1);
        let owned = vec![container("c-a", &old, RunState::Running)];
        let d = decide(&[InstanceSpec { memory_mib: 512, ..spec("a", 1) }], &owned, at_once, Instant::now());
        assert!(matches!(d.actions[..], [Action::Replace { .. }]));
    }

    #[test]
    fn a_new_stream_token_or_reset_epoch_keeps_the_running_container() {
        let old = InstanceSpec { stream_token: Some("st_old".into()), ..spec("a", 1) };
        let owned = vec![container("c-a", &old, RunState::Running)];
        let new = InstanceSpec { stream_token: Some("st_new".into()), reset_epoch: 1, ..spec("a", 1) };
        assert_eq!(decide(&[new], &owned, at_once, Instant::now()), Decision::default());
    }

    #[test]
    fn unwanted_and_duplicate_containers_are_removed() {
        let a = spec("a", 1);
        let gone = spec("gone", 1);
        let owned = vec![
            container("c-a-exited", &a, RunState::Exited),
            container("c-a-running", &a, RunState::Running),
            container("c-gone", &gone, RunState::Running),
        ];
        let d = decide(&[a], &owned, at_once, Instant::now());
        assert_eq!(
            d.actions,
            vec![
                Action::Remove { instance: "a".into(), container_id: "c-a-exited".into() },
                Action::Remove { instance: "gone".into(), container_id: "c-gone".into() },
            ]
        );
    }

    #[test]
    fn exited_containers_restart_only_when_their_backoff_is_over() {
        let a = spec("a", 1);
        let owned = vec![container("c-a", &a, RunState::Exited)];
        let now = Instant::now();
        let later = now + Duration::from_secs(4);
        let d = decide(std::slice::from_ref(&a), &owned, |_| Some(later), now);
        assert_eq!(d, Decision { actions: vec![], wake_at: Some(later) });
        let d = decide(&[a], &owned, |_| Some(now), now);
        assert_eq!(d.actions, vec![Action::Start { instance: "a".into(), container_id: "c-a".into() }]);
    }

    #[test]
    fn a_created_but_unstarted_container_is_started_not_recreated() {
        let a = spec("a", 1);
        let owned = vec![container("c-a", &a, RunState::Created)];
        let d = decide(&[a], &owned, at_once, Instant::now());
        assert_eq!(d.actions, vec![Action::Start { instance: "a".into(), container_id: "c-a".into() }]);
    }

    #[test]
    fn transitional_containers_are_waited_for() {
        let a = spec("a", 1);
        let owned = vec![container("c-a", &a, RunState::Transitional)];
        assert_eq!(decide(&[a], &owned, at_once, Instant::now()), Decision::default());
    }

    #[test]
    fn failed_creates_are_retried_after_their_backoff() {
        let now = Instant::now();
        let due = now + Duration::from_secs(2);
        let d = decide(&[spec("a", 1)], &[], |_| Some(due), now);
        assert_eq!(d, Decision { actions: vec![], wake_at: Some(due) });
    }

    #[test]
    fn containers_without_an_instance_label_are_removed() {
        let stray = OwnedContainer {
            id: "c-x".into(),
            instance: String::new(),
            generation: 0,
            spec_hash: String::new(),
            state: RunState::Running,
        };
        let d = decide(&[], &[stray], at_once, Instant::now());
        assert_eq!(d.actions, vec![Action::Remove { instance: String::new(), container_id: "c-x".into() }]);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(restart_backoff(1), Duration::ZERO);
        assert_eq!(restart_backoff(2), Duration::from_secs(1));
        assert_eq!(restart_backoff(3), Duration::from_secs(2));
        assert_eq!(restart_backoff(5), Duration::from_secs(8));
        assert_eq!(restart_backoff(50), Duration::from_secs(60));
    }
}
