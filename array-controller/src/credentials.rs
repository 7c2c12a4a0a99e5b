//! Board credentials already checked. Every board sends a heartbeat and holds a long-poll, so
//! a busy rack checks hundreds of board credentials a second; each check took the database
//! lock (the lock every claim waits for) to find one row. A credential changes only when its
//! board enrols again, and that clears the whole cache.
//!
//! Entries are added and cleared only under the database lock (in [`BoardCredentials::board`]
//! and inside the enrolment's transaction), so an entry is never older than the row it was
//! read from: a lookup that read the old credential either finished before the enrolment
//! cleared the cache, or reads the new one after it commits. Only credentials that were found
//! are kept, so the cache holds at most one entry per board, whatever tokens callers try.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::db::{Db, DbError};
use crate::rows;

/// Credential hash -> board id, for the credentials found so far.
#[derive(Debug, Default)]
pub struct BoardCredentials {
    known: Mutex<HashMap<String, String>>,
}

impl BoardCredentials {
    /// The board whose credential hashes to `hash`, if any.
    pub fn board(&self, db: &Db, hash: &str) -> Result<Option<String>, DbError> {
        if let Some(board) = self.lock().get(hash) {
            return Ok(Some(board.clone()));
        }
        db.read(|conn| {
            let board = rows::board_by_credential(conn, hash)?;
            if let Some(board) = &board {
                self.lock().insert(hash.to_string(), board.clone());
            }
            Ok(board)
        })
    }

    /// Forgets every credential. Call under the database lock, in the transaction that
    /// changes a credential.
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}
