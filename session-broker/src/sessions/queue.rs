//! Sessions waiting for capacity, in arrival order.

use std::collections::HashSet;

use crate::scheduler;
use crate::sessions::store::ExplainRecord;

/// A session being placed or waiting to be.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub id: String,
    pub tenant: String,
    pub game: String,
    pub request: scheduler::Request,
    pub created_ms: u64,
    /// Absolute deadline (unix ms).
    pub deadline_ms: u64,
    pub explain: ExplainRecord,
    /// The (rack, deployment) asked for one more instance on the session's behalf.
    pub cold_start: Option<(String, String)>,
    /// Racks not to claim from again: a claim there timed out and is being released.
    pub skip_racks: HashSet<String>,
    /// The region the latest decision chose (or waits for).
    pub region: Option<String>,
    /// Decide again no later than this (a relaxation step), unix ms.
    pub next_decision_ms: u64,
}

/// The queue.
#[derive(Debug, Default)]
pub struct Queue {
    waiting: Vec<Waiting>,
}

impl Queue {
    pub fn push(&mut self, w: Waiting) {
        if !self.waiting.iter().any(|x| x.id == w.id) {
            self.waiting.push(w);
            self.waiting.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Waiting> {
        let i = self.waiting.iter().position(|w| w.id == id)?;
        Some(self.waiting.remove(i))
    }

    /// Takes every waiting session out (the worker puts back those still waiting).
    pub fn take_all(&mut self) -> Vec<Waiting> {
        std::mem::take(&mut self.waiting)
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The earliest time something must happen (a deadline or a relaxation step).
    pub fn next_wake_ms(&self) -> Option<u64> {
        self.waiting.iter().map(|w| w.deadline_ms.min(w.next_decision_ms)).min()
    }
}
