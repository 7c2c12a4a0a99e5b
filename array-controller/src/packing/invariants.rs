//! The packing invariant, checked on every write: what is placed on a board never exceeds what
//! it offers, on any resource, and no host port is given out twice.

use std::collections::BTreeSet;
use std::fmt;

use super::BoardState;
use super::resources::BoardUsage;

/// One way a board's placements break the invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("a placement names board {0}")]
    WrongBoard(String),
    #[error("a placement has an empty cpuset")]
    EmptyCpuset,
    #[error("a placement lists CPU {0} twice")]
    DuplicateCpu(u32),
    #[error("CPU {0} is not offered to instances")]
    UnknownCpu(u32),
    #[error("CPU {cpu} carries {used} millicores, it offers {offered}")]
    Cpu { cpu: u32, used: u32, offered: u32 },
    #[error("{used} millicores placed, {allocatable} allocatable")]
    Millicores { used: u32, allocatable: u32 },
    #[error("{used} MiB of memory placed, {allocatable} MiB allocatable")]
    Memory { used: u64, allocatable: u64 },
    #[error("{used} GPU slots placed, {allocatable} exist")]
    GpuSlots { used: u32, allocatable: u32 },
    #[error("{used} encoder slots placed, {allocatable} exist")]
    EncoderSlots { used: u32, allocatable: u32 },
    #[error("host port {port} is outside the board's range {start}-{end}")]
    PortOutOfRange { port: u16, start: u16, end: u16 },
    #[error("host port {0} is used twice")]
    PortReused(u16),
}

/// A board whose placements do not fit it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overcommit {
    /// Board id.
    pub board: String,
    /// Every violation found.
    pub violations: Vec<Violation>,
}

impl fmt::Display for Overcommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.violations.iter().map(ToString::to_string).collect();
        write!(f, "board {} is over-committed: {}", self.board, list.join("; "))
    }
}

impl std::error::Error for Overcommit {}

/// Verifies that the board's placements fit its capacity: per CPU and in total, memory, GPU and
/// encoder slots, and that every host port is in the board's range and used once.
pub fn check_board(board: &BoardState) -> Result<(), Overcommit> {
    let cap = &board.capacity;
    let mut violations = Vec::new();
    let mut ports = BTreeSet::new();
    for p in &board.placed {
        if p.board_id != board.id {
            violations.push(Violation::WrongBoard(p.board_id.clone()));
        }
        if p.cpus.is_empty() {
            violations.push(Violation::EmptyCpuset);
        }
        let mut seen = BTreeSet::new();
        for &cpu in &p.cpus {
            if !seen.insert(cpu) {
                violations.push(Violation::DuplicateCpu(cpu));
            }
        }
        for port in [p.ports.adb, p.ports.stream] {
            if !cap.ports.contains(port) {
                violations.push(Violation::PortOutOfRange {
                    port,
                    start: cap.ports.start,
                    end: cap.ports.end,
                });
            }
            if !ports.insert(port) {
                violations.push(Violation::PortReused(port));
            }
        }
    }
    let usage = BoardUsage::of(&board.placed);
    for (&cpu, &used) in &usage.cpu_millicores {
        match cap.cpus.iter().find(|c| c.id == cpu) {
            None => violations.push(Violation::UnknownCpu(cpu)),
            Some(c) if used > c.millicores => {
                violations.push(Violation::Cpu { cpu, used, offered: c.millicores })
            }
            Some(_) => {}
        }
    }
    if usage.millicores > cap.millicores {
        violations.push(Violation::Millicores { used: usage.millicores, allocatable: cap.millicores });
    }
    if usage.memory_mib > cap.memory_mib {
        violations.push(Violation::Memory { used: usage.memory_mib, allocatable: cap.memory_mib });
    }
    if usage.gpu_slots > cap.gpu_slots {
        violations.push(Violation::GpuSlots { used: usage.gpu_slots, allocatable: cap.gpu_slots });
    }
    if usage.encoder_slots > cap.encoder_slots {
        violations
            .push(Violation::EncoderSlots { used: usage.encoder_slots, allocatable: cap.encoder_slots });
    }
    if violations.is_empty() { Ok(()) } else { Err(Overcommit { board: board.id.clone(), violations }) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::tests::{class, facts, placement};
    use crate::packing::{BoardState, Placement};

    fn board() -> BoardState {
        let mut f = facts("aarch64", None, 4096);
        f.host_port_range = api::facts::PortRange { start: 100, end: 109 };
        BoardState::new(&f, &class(1000, Some("mali"), 1, 1))
    }

    #[test]
    fn a_fitting_board_passes() {
        let mut b = board();
        b.placed.push(placement(&[1, 2], 1999, (100, 101)));
        check_board(&b).unwrap();
    }

    #[test]
    fn every_violation_is_found() {
        let mut b = board();
        b.placed.push(placement(&[0, 1], 1500, (100, 101)));
        b.placed.push(placement(&[1, 1], 600, (101, 200)));
        b.placed.push(placement(&[], 5000, (102, 103)));
        b.placed.push(Placement {
            board_id: "other".into(),
            memory_mib: 1000,
            ..placement(&[4], 1, (104, 105))
        });
        let err = check_board(&b).unwrap_err();
        let expected = [
            Violation::DuplicateCpu(1),
            Violation::PortReused(101),
            Violation::PortOutOfRange { port: 200, start: 100, end: 109 },
            Violation::EmptyCpuset,
            Violation::WrongBoard("other".into()),
            // CPU 0 is wholly the host's; CPU 1 carries 750 + 300 + 300.
            Violation::UnknownCpu(0),
            Violation::Cpu { cpu: 1, used: 1350, offered: 1000 },
            Violation::Millicores { used: 7101, allocatable: 7000 },
            Violation::Memory { used: 4072, allocatable: 3584 },
            Violation::GpuSlots { used: 4, allocatable: 1 },
        ];
        for v in &expected {
            assert!(err.violations.contains(v), "missing {v:?} in {err}");
        }
        assert_eq!(err.violations.len(), expected.len(), "{err}");
        assert!(err.to_string().starts_with("board b is over-committed: a placement lists CPU 1 twice; "));
    }
}
