//! The instance lifecycle as a pure function: given the controller's state of an instance and
//! what its board reports, what changes. Boards report observations; only the controller moves
//! instances into and out of `claimed`, `recycling`, `draining` and `terminating`.

use api::rack::InstanceState;
use api::{InstancePhase, InstanceStatus};

/// What to do with an instance after a board report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changes.
    Stay,
    /// Move to a state, with a reason.
    To(InstanceState, Option<String>),
    /// The board no longer has it: delete the row.
    Remove,
}

/// Decides the transition of an instance in `state` (its current `generation` and `reset_epoch`)
/// given the board's report of it (`None` when the board does not list it).
pub fn observe(
    state: InstanceState,
    generation: u64,
    reset_epoch: u64,
    report: Option<&InstanceStatus>,
) -> Transition {
    use InstanceState as S;
    let Some(report) = report else {
        return if state == S::Terminating { Transition::Remove } else { Transition::Stay };
    };
    if report.generation != generation {
        // The board still shows the previous container; the new one is on its way.
        return Transition::Stay;
    }
    match state {
        S::Terminating | S::Claimed | S::Draining => Transition::Stay,
        S::Recycling => match report.phase {
            InstancePhase::Ready if report.reset_epoch >= reset_epoch => Transition::To(S::Ready, None),
            InstancePhase::Failed => Transition::To(S::Failed, report.reason.clone()),
            _ => Transition::Stay,
        },
        S::Pending | S::Starting | S::Booting | S::Ready | S::Failed => {
            let (next, reason) = match report.phase {
                InstancePhase::Pending => (S::Pending, None),
                InstancePhase::Starting => (S::Starting, None),
                InstancePhase::Booting => (S::Booting, None),
                InstancePhase::Ready => (S::Ready, None),
                // The daemon restarts exited containers itself.
                InstancePhase::Exited => (S::Starting, report.reason.clone()),
                InstancePhase::Failed => (S::Failed, report.reason.clone()),
                InstancePhase::Terminating => return Transition::Stay,
            };
            if next == state { Transition::Stay } else { Transition::To(next, reason) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceState as S;
    use api::{BootTimings, InstancePorts};

    fn report(phase: InstancePhase, generation: u64, reset_epoch: u64) -> InstanceStatus {
        InstanceStatus {
            id: "i".into(),
            generation,
            phase,
            reason: Some("why".into()),
            container_id: Some("c".into()),
            ports: InstancePorts { adb: 1, stream: 2 },
            restarts: 0,
            crash_loop: false,
            last_exit: None,
            boot: BootTimings::default(),
            reset_epoch,
        }
    }

    #[test]
    fn boot_progress_is_followed() {
        assert_eq!(
            observe(S::Pending, 1, 0, Some(&report(InstancePhase::Booting, 1, 0))),
            Transition::To(S::Booting, None)
        );
        assert_eq!(
            observe(S::Booting, 1, 0, Some(&report(InstancePhase::Ready, 1, 0))),
            Transition::To(S::Ready, None)
        );
        assert_eq!(observe(S::Ready, 1, 0, Some(&report(InstancePhase::Ready, 1, 0))), Transition::Stay);
        assert_eq!(
            observe(S::Booting, 1, 0, Some(&report(InstancePhase::Failed, 1, 0))),
            Transition::To(S::Failed, Some("why".into()))
        );
    }

    #[test]
    fn claims_are_never_changed_by_reports() {
        for phase in
            [InstancePhase::Ready, InstancePhase::Exited, InstancePhase::Failed, InstancePhase::Booting]
        {
            assert_eq!(observe(S::Claimed, 1, 0, Some(&report(phase, 1, 0))), Transition::Stay);
        }
        assert_eq!(observe(S::Claimed, 1, 0, None), Transition::Stay);
    }

    #[test]
    fn recycling_ends_only_on_the_new_container_or_reset() {
        // The old container (generation 1) still reports ready: not done.
        assert_eq!(observe(S::Recycling, 2, 0, Some(&report(InstancePhase::Ready, 1, 0))), Transition::Stay);
        assert_eq!(
            observe(S::Recycling, 2, 0, Some(&report(InstancePhase::Booting, 2, 0))),
            Transition::Stay
        );
        assert_eq!(
            observe(S::Recycling, 2, 0, Some(&report(InstancePhase::Ready, 2, 0))),
            Transition::To(S::Ready, None)
        );
        // A fast reset: same generation, the reset epoch must have been applied.
        assert_eq!(observe(S::Recycling, 2, 3, Some(&report(InstancePhase::Ready, 2, 2))), Transition::Stay);
        assert_eq!(
            observe(S::Recycling, 2, 3, Some(&report(InstancePhase::Ready, 2, 3))),
            Transition::To(S::Ready, None)
        );
    }

    #[test]
    fn terminating_instances_go_when_the_board_drops_them() {
        assert_eq!(
            observe(S::Terminating, 1, 0, Some(&report(InstancePhase::Ready, 1, 0))),
            Transition::Stay
        );
        assert_eq!(observe(S::Terminating, 1, 0, None), Transition::Remove);
        assert_eq!(observe(S::Ready, 1, 0, None), Transition::Stay);
    }

    #[test]
    fn an_exit_is_a_restart_not_a_failure() {
        assert_eq!(
            observe(S::Ready, 1, 0, Some(&report(InstancePhase::Exited, 1, 0))),
            Transition::To(S::Starting, Some("why".into()))
        );
    }
}
