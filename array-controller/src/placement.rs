//! From rows to the packer and back: builds the packer's view of the rack from board and
//! instance rows, places instances, and checks the invariants of every board it changed before
//! the write commits.

use std::collections::HashMap;

use api::rack::{BoardState as Lifecycle, DeploymentSpec};

use crate::error::RackError;
use crate::packing::{self, BoardState, ClassRule, Placement, PlacementRequest, Policy};
use crate::rows::{BoardRow, InstanceRow};

/// What a placement round produced.
pub struct Outcome {
    pub placed: Vec<Placement>,
    /// Why the rest could not be placed (empty when all were).
    pub unplaced_reasons: Vec<String>,
}

/// The packer's view of the rack. Every instance row holds its resources, terminating ones
/// too: their containers still exist until the board removes them.
pub fn rack_view(boards: &[BoardRow], instances: &[InstanceRow], classes: &[ClassRule]) -> Vec<BoardState> {
    boards
        .iter()
        .filter_map(|board| {
            let class = packing::classify(&board.facts, classes)?;
            let mut state = BoardState::new(&board.facts, class);
            state.id = board.id.clone();
            state.cordoned = board.cordoned;
            state.schedulable = board.state == Lifecycle::Ready && board.reachable;
            state.placed = instances.iter().filter(|i| i.board_id == board.id).map(placement_of).collect();
            Some(state)
        })
        .collect()
}

fn placement_of(row: &InstanceRow) -> Placement {
    Placement {
        board_id: row.board_id.clone(),
        cpus: row.cpus.clone(),
        millicores: row.millicores,
        memory_mib: row.memory_mib,
        gpu_slots: row.gpu_slots,
        encoder_slots: row.encoder_slots,
        ports: row.ports,
        group: Some(row.deployment_id.clone()),
    }
}

/// Places the missing instances of several deployments at once: the packer orders the whole
/// demand (the most constrained games first), which packs far denser than one deployment after
/// another. Returns one outcome per entry of `short`, in order. Fails (and so aborts the write)
/// if a board would end up over-committed: that would be a packer bug, and nothing
/// half-checked is written.
pub fn place_all(
    boards: &[BoardRow],
    instances: &[InstanceRow],
    short: &[(&str, &DeploymentSpec, usize)],
    classes: &[ClassRule],
    policy: Policy,
) -> Result<Vec<Outcome>, RackError> {
    let mut view = rack_view(boards, instances, classes);
    let demand: Vec<(PlacementRequest, usize)> =
        short.iter().map(|(id, spec, n)| (PlacementRequest::for_deployment(id, spec), *n)).collect();
    let batches = packing::place_all(&mut view, &demand, policy);
    for board in
        view.iter().filter(|b| batches.iter().any(|batch| batch.placed.iter().any(|p| p.board_id == b.id)))
    {
        packing::check_board(board).map_err(|err| {
            tracing::error!(error = %err, "placement would over-commit a board; refusing it");
            RackError::conflict("overcommit", err.to_string())
        })?;
    }
    Ok(batches
        .into_iter()
        .map(|batch| Outcome {
            placed: batch.placed,
            unplaced_reasons: batch.failure.map(|f| vec![f.to_string()]).unwrap_or_default(),
        })
        .collect())
}

/// Whether placements made on an earlier snapshot of the rack still hold on the rack as it is
/// now: every board they name is still in service, and no board would be over-committed.
pub fn still_fits(
    boards: &[BoardRow],
    instances: &[InstanceRow],
    placed: &[&Placement],
    classes: &[ClassRule],
) -> Result<(), String> {
    let mut view = rack_view(boards, instances, classes);
    for p in placed {
        let Some(board) = view.iter_mut().find(|b| b.id == p.board_id) else {
            return Err(format!("board {} is gone", p.board_id));
        };
        if board.cordoned || !board.schedulable {
            return Err(format!("board {} left service", p.board_id));
        }
        board.placed.push((*p).clone());
    }
    for board in view.iter().filter(|b| placed.iter().any(|p| p.board_id == b.id)) {
        packing::check_board(board).map_err(|err| err.to_string())?;
    }
    Ok(())
}

/// What the instances of one board hold, summed (every instance row, as in [`rack_view`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub millicores: u64,
    pub memory_mib: u64,
    pub gpu_slots: u64,
    pub encoder_slots: u64,
}

/// Share of the allocatable resources of schedulable boards that is placed, per resource,
/// from each board's summed instances (`held`, by board id): no instance row is read, so the
/// database scan behind it is one grouped sum.
pub fn utilisation(
    boards: &[BoardRow],
    held: &HashMap<String, Held>,
    classes: &[ClassRule],
) -> [(&'static str, f64); 4] {
    let mut capacity = [0f64; 4];
    let mut used = [0f64; 4];
    let in_service = boards.iter().filter(|b| b.state == Lifecycle::Ready && b.reachable && !b.cordoned);
    for board in in_service {
        let Some(class) = packing::classify(&board.facts, classes) else { continue };
        let c = packing::allocatable(&board.facts, class);
        let h = held.get(&board.id).copied().unwrap_or_default();
        for (i, (cap, use_)) in [
            (f64::from(c.millicores), h.millicores as f64),
            (c.memory_mib as f64, h.memory_mib as f64),
            (f64::from(c.gpu_slots), h.gpu_slots as f64),
            (f64::from(c.encoder_slots), h.encoder_slots as f64),
        ]
        .into_iter()
        .enumerate()
        {
            capacity[i] += cap;
            used[i] += use_;
        }
    }
    let ratio = |i: usize| if capacity[i] > 0.0 { used[i] / capacity[i] } else { 0.0 };
    [("millicores", ratio(0)), ("memory", ratio(1)), ("gpu_slots", ratio(2)), ("encoder_slots", ratio(3))]
}
