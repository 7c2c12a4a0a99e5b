//! The active sessions' leases in memory: which rack holds each one's claim and when its lease
//! ends. The lease loops read this every second instead of every active session's row (at
//! 48,000 active sessions, reading the rows took 0.3-0.6 s per pass, all of it holding the
//! database lock that placements need). The database stays the truth: it is loaded at start,
//! kept current by every change of an active session, and expiry writes only where the
//! stored lease has lapsed too, so a stale entry can delay an expiry by one pass but never
//! expire a session early.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Session id -> (rack, lease end in ms).
#[derive(Debug, Default)]
pub struct LeaseBook {
    leases: Mutex<HashMap<String, (String, u64)>>,
}

impl LeaseBook {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, u64)>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces everything (at start, from the database).
    pub fn load(&self, active: impl IntoIterator<Item = (String, String, u64)>) {
        *self.map() = active.into_iter().map(|(id, rack, until)| (id, (rack, until))).collect();
    }

    /// A session became active on `rack` with a lease until `until_ms`.
    pub fn set(&self, id: &str, rack: &str, until_ms: u64) {
        self.map().insert(id.to_string(), (rack.to_string(), until_ms));
    }

    /// A heartbeat: the lease ends at `until_ms` unless it already ends later.
    pub fn extend(&self, id: &str, until_ms: u64) {
        if let Some((_, until)) = self.map().get_mut(id) {
            *until = (*until).max(until_ms);
        }
    }

    /// The session is no longer active.
    pub fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    /// Sessions whose lease ended before `now_ms`, with their racks, by id.
    pub fn lapsed(&self, now_ms: u64) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .map()
            .iter()
            .filter(|(_, (_, until))| *until < now_ms)
            .map(|(id, (rack, _))| (id.clone(), rack.clone()))
            .collect();
        out.sort();
        out
    }

    /// Every active session's id, by rack.
    pub fn by_rack(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, (rack, _)) in self.map().iter() {
            out.entry(rack.clone()).or_default().push(id.clone());
        }
        out.values_mut().for_each(|ids| ids.sort());
        out
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_lapse_extend_and_group_by_rack() {
        let book = LeaseBook::default();
        book.load([("a".into(), "r1".into(), 100), ("b".into(), "r2".into(), 3000)]);
        book.set("c", "r1", 200);
        let pair = |id: &str, rack: &str| (id.to_string(), rack.to_string());
        assert_eq!(book.lapsed(250), [pair("a", "r1"), pair("c", "r1")]);
        book.extend("a", 1000);
        book.extend("a", 500);
        book.extend("gone", 1000);
        assert_eq!(book.lapsed(600), [pair("c", "r1")], "a heartbeat moved a's end, never back");
        book.remove("c");
        assert!(book.lapsed(600).is_empty());
        assert_eq!(book.len(), 2);
        let by_rack = book.by_rack();
        assert_eq!(by_rack["r1"], ["a"]);
        assert_eq!(by_rack["r2"], ["b"]);
    }
}
