//! Join tokens and enrolment: a board presents a join token and its facts, the controller
//! classifies it, runs the preflight checks, stores it, and answers with the board's own
//! credential.

use api::rack::{BoardState, EnrolRequest, EnrolResponse, JoinToken, JoinTokenRequest, RackEventBody};
use rusqlite::{OptionalExtension, params};
use service_kit::auth::{hash_token, new_token};

use crate::error::RackError;
use crate::packing;
use crate::preflight::{self, PreflightInput};
use crate::rack::Rack;
use crate::rows;

const DEFAULT_JOIN_TTL_S: u64 = 3600;
const MAX_JOIN_TTL_S: u64 = 86_400;

impl Rack {
    /// Creates a join token; the secret is in the answer and nowhere else.
    pub fn create_join_token(&self, request: JoinTokenRequest) -> Result<JoinToken, RackError> {
        let ttl = request.ttl_s.unwrap_or(DEFAULT_JOIN_TTL_S);
        if !(1..=MAX_JOIN_TTL_S).contains(&ttl) {
            return Err(RackError::invalid(
                "invalid_ttl",
                format!("ttl_s must be between 1 and {MAX_JOIN_TTL_S}"),
            ));
        }
        let token = new_token("join");
        let hash = hash_token(&token);
        let id = hash[..12].to_string();
        self.write(|w| {
            let expires = w.now_ms + ttl * 1000;
            w.tx.execute(
                "INSERT INTO join_tokens (id, token_hash, expires_ms, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![id, hash, expires as i64, w.now_ms as i64],
            )?;
            Ok::<_, RackError>(JoinToken {
                id: id.clone(),
                token: Some(token),
                expires_at_ms: expires,
                revoked: false,
            })
        })
    }

    /// Revokes a join token (idempotent).
    pub fn revoke_join_token(&self, id: &str) -> Result<JoinToken, RackError> {
        self.write(|w| {
            w.tx.execute("UPDATE join_tokens SET revoked = 1 WHERE id = ?1", [id])?;
            let row: Option<(i64, bool)> =
                w.tx.query_row("SELECT expires_ms, revoked FROM join_tokens WHERE id = ?1", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let (expires, revoked) = row.ok_or_else(|| RackError::not_found("join token", id))?;
            Ok(JoinToken { id: id.to_string(), token: None, expires_at_ms: expires as u64, revoked })
        })
    }

    /// Enrols (or re-enrols) a board.
    pub fn enrol(&self, request: EnrolRequest) -> Result<EnrolResponse, RackError> {
        let board_id = request.facts.board_id.clone();
        if !api::ids::is_valid_id(&board_id) {
            return Err(RackError::invalid("invalid_id", format!("board id {board_id:?} is not valid")));
        }
        if request.address.trim().is_empty() || request.address.len() > 255 {
            return Err(RackError::invalid("invalid_address", "address must be a host name or IP address"));
        }
        let class = packing::classify(&request.facts, &self.config.classes);
        let now = service_kit::time::now_ms();
        let failures = preflight::check(&PreflightInput {
            facts: &request.facts,
            class: class.map(|c| c.name.as_str()),
            needs_android_kernel: class.is_some_and(|c| c.android_kernel),
            clock_skew_ms: request.now_ms as i64 - now as i64,
            limits: &self.config.preflight,
        });
        let (state, reason) = if failures.is_empty() {
            (BoardState::Ready, None)
        } else {
            (BoardState::Quarantined, Some(failures.join("; ")))
        };
        let credential = new_token("board");
        let facts_json = serde_json::to_string(&request.facts).map_err(crate::db::DbError::from)?;
        let class_name = class.map(|c| c.name.clone());

        self.write(|w| {
            // The board's credential changes below: nothing may accept its old one after this
            // commits (cleared under the lock, so no check in flight can put it back).
            self.board_credentials.forget_all();
            let token_hash = hash_token(&request.join_token);
            let valid: Option<i64> = w
                .tx
                .query_row(
                    "SELECT expires_ms FROM join_tokens WHERE token_hash = ?1 AND revoked = 0 AND expires_ms > ?2",
                    params![token_hash, w.now_ms as i64],
                    |r| r.get(0),
                )
                .optional()?;
            if valid.is_none() {
                return Err(RackError::BadJoinToken);
            }
            w.tx.execute("UPDATE join_tokens SET uses = uses + 1 WHERE token_hash = ?1", [&token_hash])?;
            let existing = rows::board(&w.tx, &board_id)?;
            let generation = existing.as_ref().map_or(0, |b| b.desired_generation).max(request.desired_generation);
            w.tx.execute(
                "INSERT INTO boards (id, state, reason, class, arch, address, facts, credential_hash, last_heartbeat_ms,
                     desired_generation, enrolled_ms)
                 VALUES (?1, 'probing', NULL, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7)
                 ON CONFLICT (id) DO UPDATE SET state = 'probing', reason = NULL, class = ?2, arch = ?3, address = ?4,
                     facts = ?5, credential_hash = ?6, last_heartbeat_ms = ?7, desired_generation = ?8,
                     reachable = 1, unreachable_since_ms = NULL",
                params![
                    board_id,
                    class_name,
                    request.facts.arch,
                    request.address,
                    facts_json,
                    hash_token(&credential),
                    w.now_ms as i64,
                    generation as i64
                ],
            )?;
            let cordoned = existing.as_ref().is_some_and(|b| b.cordoned);
            w.emit(RackEventBody::Board {
                board: board_id.clone(),
                state: BoardState::Probing,
                reachable: true,
                cordoned,
                reason: None,
            })?;
            w.tx.execute("UPDATE boards SET state = ?2, reason = ?3 WHERE id = ?1", params![board_id, state.as_str(), reason])?;
            w.emit(RackEventBody::Board { board: board_id.clone(), state, reachable: true, cordoned, reason: reason.clone() })?;
            // The controller now owns the board's desired state: continue above what it holds.
            w.touch_board(&board_id);
            Ok(())
        })?;
        tracing::info!(board = %board_id, state = state.as_str(), reason = reason.as_deref().unwrap_or(""), "board enrolled");
        self.pools_changed.notify_one();
        Ok(EnrolResponse {
            board_id,
            credential,
            state,
            reason,
            heartbeat_interval_ms: self.config.heartbeat.as_millis() as u64,
        })
    }
}
