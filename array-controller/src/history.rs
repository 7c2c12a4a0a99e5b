//! History retention: events are kept for `--event-retention-hours` (for subscribers that
//! resume) and ended claims for `--claim-retention-ms` (a retried key answers with its claim);
//! then they are deleted, so the database stays the size of recent traffic. Deletion goes in
//! batches with the database lock released in between: the first pass after a busy day would
//! otherwise hold the lock that claims need for as long as it takes to delete a day of rows.

use std::fmt::Display;

use crate::rack::Rack;

/// Rows deleted per statement (a few milliseconds of lock).
pub const BATCH: usize = 2000;

/// Deletes the events and ended claims that are past retention at `now_ms`.
pub fn prune(rack: &Rack, now_ms: u64) {
    let events_before = now_ms.saturating_sub(rack.config.event_retention.as_millis() as u64);
    let claims_before = now_ms.saturating_sub(rack.config.claim_retention.as_millis() as u64);
    report("events", in_batches(rack, |limit| crate::events::compact(&rack.db, events_before, limit)));
    report("ended claims", in_batches(rack, |limit| rack.prune_ended_claims(claims_before, limit)));
}

fn report<E: Display>(what: &str, outcome: Result<usize, E>) {
    match outcome {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "{what} past retention deleted"),
        Err(err) => tracing::error!(error = %err, "deleting {what} past retention failed"),
    }
}

/// Runs `delete` (at most `limit` rows each call) until a call comes back short or the rack
/// shuts down; returns the rows deleted.
fn in_batches<E>(rack: &Rack, mut delete: impl FnMut(usize) -> Result<usize, E>) -> Result<usize, E> {
    let mut total = 0;
    loop {
        let n = delete(BATCH)?;
        total += n;
        if n < BATCH || rack.shutdown.is_cancelled() {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use api::rack::ClaimState;

    use super::*;
    use crate::claims::tests::{rack_with_ready, request};

    #[test]
    fn only_ended_claims_and_old_events_past_retention_go_and_the_newest_event_stays() {
        let (_dir, rack) = rack_with_ready(3);
        for key in ["s1", "s2", "s3"] {
            rack.claim(request(key)).unwrap();
        }
        rack.release("s1").unwrap();
        rack.release("s2").unwrap();
        let newest = crate::events::read_after(&rack.db, 0, 1000).unwrap().last().unwrap().seq;
        let now = service_kit::time::now_ms();

        // Nothing is old enough yet.
        prune(&rack, now);
        assert_eq!(rack.claim(request("s1")).unwrap().state, ClaimState::Released, "still answered");
        assert!(crate::events::oldest_seq(&rack.db).unwrap() < newest);

        // Two days on (both retentions are a day by default).
        prune(&rack, now + 2 * 86_400_000);
        assert_eq!(crate::events::oldest_seq(&rack.db).unwrap(), newest, "only the newest event is kept");
        assert_eq!(rack.claim(request("s3")).unwrap().state, ClaimState::Active, "the active claim stays");
        assert_eq!(rack.prune_ended_claims(u64::MAX, BATCH).unwrap(), 0, "both ended claims went");
        // A retried key after retention claims anew, not the old claim: the released
        // instances are recycling and the third is claimed, so there is nothing to claim.
        let again = rack.claim(request("s1"));
        assert!(
            matches!(again, Err(crate::error::RackError::Conflict { code: "no_ready_instance", .. })),
            "{again:?}"
        );
    }

    #[test]
    fn batches_delete_at_most_their_limit() {
        let (_dir, rack) = rack_with_ready(3);
        for key in ["s1", "s2", "s3"] {
            rack.claim(request(key)).unwrap();
            rack.release(key).unwrap();
        }
        let later = service_kit::time::now_ms() + 1;
        assert_eq!(rack.prune_ended_claims(later, 2).unwrap(), 2);
        assert_eq!(rack.prune_ended_claims(later, 2).unwrap(), 1);
        assert_eq!(rack.prune_ended_claims(later, 2).unwrap(), 0);
    }
}
