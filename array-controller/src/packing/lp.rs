//! The configuration LP: how many boards of each class hold each of its configurations
//! ([`super::configs`]) so that they cover as many instances of a demand as possible, a board
//! being allowed to hold fractions of configurations.
//!
//! Its optimum is an upper bound on what any packing of the demand on empty boards of those
//! classes places (exact when the model is: no CPU remainders, no anti-affinity), which is
//! why `bench_packing` reports it as the bound; rounded down it is most of a packing
//! ([`super::plan`]). It has a few rows (two per request, one per class) and up to some
//! thousands of columns, so a dense simplex does.

/// The LP's optimum.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// Instances covered (at most the demand's total).
    pub placed: f64,
    /// Boards holding each configuration: per class, per column in the order given.
    pub boards: Vec<Vec<f64>>,
}

impl Solution {
    /// Whether the fractional packing covers every instance of `need` (up to rounding error).
    pub fn covers(&self, need: &[u32]) -> bool {
        let total: u64 = need.iter().map(|&n| u64::from(n)).sum();
        self.placed >= total as f64 - 1e-6
    }
}

/// Solves: maximise `sum y[j]` subject to `y[j] <= need[j]`, `y[j] <=` the instances of request
/// `j` the chosen configurations hold, and at most `boards_per_class[t]` boards of class `t`;
/// `columns[t]` lists the configurations of class `t`. `None` if the simplex does not finish
/// (see [`solve_within`]): the caller goes without the plan.
pub fn solve(columns: &[Vec<Vec<u32>>], boards_per_class: &[usize], need: &[u32]) -> Option<Solution> {
    solve_within(columns, boards_per_class, need, MAX_PIVOTS)
}

/// [`solve`] in at most `max_pivots` pivots. Simplex on a dense tableau with Bland's rule
/// (no cycling, and the origin is feasible, so one phase). In floating point a pivot can still
/// find no leaving row, or rounding can make it cycle: then, or after `max_pivots`, `None`.
/// The controller packs with this: a numerical accident must cost the plan, not the pass.
fn solve_within(
    columns: &[Vec<Vec<u32>>],
    boards_per_class: &[usize],
    need: &[u32],
    max_pivots: usize,
) -> Option<Solution> {
    const EPS: f64 = 1e-9;
    let wanted: Vec<usize> = (0..need.len()).filter(|&j| need[j] > 0).collect();
    let vars: Vec<(usize, usize, &Vec<u32>)> = columns
        .iter()
        .enumerate()
        .flat_map(|(t, cs)| cs.iter().enumerate().map(move |(c, config)| (t, c, config)))
        .collect();
    // Columns: one per configuration, one `y` per wanted request, one slack per row, then the
    // right-hand side. Rows: coverage and demand per wanted request, boards per class.
    let (nx, ny) = (vars.len(), wanted.len());
    let rows = 2 * ny + columns.len();
    let width = nx + ny + rows + 1;
    let rhs = width - 1;
    let mut tab = vec![vec![0.0f64; width]; rows + 1];
    for (r, &j) in wanted.iter().enumerate() {
        // y[j] - sum(boards holding c * c[j]) <= 0
        tab[r][nx + r] = 1.0;
        for (v, (_, _, config)) in vars.iter().enumerate() {
            tab[r][v] = -f64::from(config[j]);
        }
        // y[j] <= need[j]
        tab[ny + r][nx + r] = 1.0;
        tab[ny + r][rhs] = f64::from(need[j]);
    }
    for (t, &count) in boards_per_class.iter().enumerate() {
        let row = &mut tab[2 * ny + t];
        for (v, (class, _, _)) in vars.iter().enumerate() {
            if *class == t {
                row[v] = 1.0;
            }
        }
        row[rhs] = count as f64;
    }
    for (r, row) in tab.iter_mut().take(rows).enumerate() {
        row[nx + ny + r] = 1.0;
    }
    // The objective row holds the negated objective: -1 per y (configurations cost nothing).
    for r in 0..ny {
        tab[rows][nx + r] = -1.0;
    }
    let mut basis: Vec<usize> = (nx + ny..nx + ny + rows).collect();
    let mut pivots = 0;
    while let Some(enter) = (0..rhs).find(|&j| tab[rows][j] < -EPS) {
        pivots += 1;
        if pivots > max_pivots {
            return None;
        }
        let mut leave: Option<(usize, f64)> = None;
        for r in 0..rows {
            if tab[r][enter] > EPS {
                let ratio = tab[r][rhs] / tab[r][enter];
                let better = match leave {
                    None => true,
                    Some((l, best)) => ratio < best - EPS || (ratio < best + EPS && basis[r] < basis[l]),
                };
                if better {
                    leave = Some((r, ratio));
                }
            }
        }
        // Every y is bounded by its demand and every x by its class's boards, so only rounding
        // error leaves no row.
        let (pivot, _) = leave?;
        let p = tab[pivot][enter];
        tab[pivot].iter_mut().for_each(|x| *x /= p);
        let pivot_row = tab[pivot].clone();
        for (r, row) in tab.iter_mut().enumerate() {
            let factor = row[enter];
            if r != pivot && factor.abs() > EPS {
                row.iter_mut().zip(&pivot_row).for_each(|(x, y)| *x -= factor * y);
            }
        }
        basis[pivot] = enter;
    }
    let mut boards: Vec<Vec<f64>> = columns.iter().map(|cs| vec![0.0; cs.len()]).collect();
    let mut placed = 0.0;
    for (r, &b) in basis.iter().enumerate() {
        let value = tab[r][rhs].max(0.0);
        if b < nx {
            let (t, c, _) = vars[b];
            boards[t][c] = value;
        } else if b < nx + ny {
            placed += value;
        }
    }
    Some(Solution { placed, boards })
}

/// Pivots at most: far more than the LPs of a rack take (a few hundred), few enough to stay
/// within a second.
pub const MAX_PIVOTS: usize = 20_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_the_demand_with_whole_boards_when_it_can() {
        // One class of 3 boards; a board holds 2 of request 0, or 1 of each.
        let columns = vec![vec![vec![2, 0], vec![1, 1]]];
        let s = solve(&columns, &[3], &[4, 2]).unwrap();
        assert!(s.covers(&[4, 2]), "{s:?}");
        assert!((s.boards[0][0] - 1.0).abs() < 1e-9 && (s.boards[0][1] - 2.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn the_optimum_is_a_bound_and_may_be_fractional() {
        // Two boards, each holds 1 of request 0 or 2 of request 1: demand 1 + 3 leaves half a
        // board's worth of request 1 uncovered.
        let columns = vec![vec![vec![1, 0], vec![0, 2]]];
        let s = solve(&columns, &[2], &[1, 3]).unwrap();
        assert!((s.placed - 3.5).abs() < 1e-9, "{s:?}");
        assert!(!s.covers(&[1, 3]));
        // Nothing wanted, nothing to cover.
        assert_eq!(solve(&columns, &[2], &[0, 0]).unwrap().placed, 0.0);
    }

    #[test]
    fn a_simplex_that_does_not_finish_gives_no_solution() {
        let columns = vec![vec![vec![2, 0], vec![1, 1]]];
        assert_eq!(solve_within(&columns, &[3], &[4, 2], 0), None);
        assert!(solve_within(&columns, &[3], &[4, 2], MAX_PIVOTS).is_some_and(|s| s.covers(&[4, 2])));
    }

    #[test]
    fn each_class_counts_its_own_boards() {
        // Class 0 (1 board) holds 3 of request 0; class 1 (2 boards) holds 1 of request 1.
        let columns = vec![vec![vec![3, 0]], vec![vec![0, 1]]];
        let s = solve(&columns, &[1, 2], &[3, 3]).unwrap();
        assert!((s.placed - 5.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.boards, vec![vec![1.0], vec![2.0]]);
    }
}
