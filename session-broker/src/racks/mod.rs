//! Racks: credentials, registrations (a controller dials out to the broker and re-registers
//! as its heartbeat), and one event-stream follower per rack.

pub mod client;
#[cfg(test)]
pub(crate) mod fake_controllers;
pub mod link;
pub mod registry;
pub mod sse;

use std::sync::Arc;

use api::broker::{RackCredential, RackRegistration, RackView, RegistrationAck};
use rusqlite::params;
use service_kit::auth::{hash_token, new_token};
use service_kit::time::now_ms;

use crate::broker::Broker;
use crate::error::BrokerError;
use registry::RackLive;

/// Issues (or replaces) a rack's credential; shown once.
pub fn issue_credential(broker: &Broker, rack: &str) -> Result<RackCredential, BrokerError> {
    if !api::ids::is_valid_id(rack) {
        return Err(BrokerError::invalid(
            "invalid_rack",
            format!("rack id {rack:?} is not valid: use 1-63 characters of a-z, 0-9 and '-'"),
        ));
    }
    let credential = new_token("rack");
    let hash = hash_token(&credential);
    broker.db.write(|tx| -> Result<(), BrokerError> {
        tx.execute(
            "INSERT INTO racks (id, credential_hash) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET credential_hash = excluded.credential_hash",
            params![rack, hash],
        )?;
        Ok(())
    })?;
    broker.racks().entry(rack.to_string()).or_insert_with(|| RackLive::new(rack));
    Ok(RackCredential { rack: rack.to_string(), credential })
}

/// The rack a credential belongs to.
pub fn rack_of_credential(broker: &Broker, credential: &str) -> Result<Option<String>, BrokerError> {
    let hash = hash_token(credential);
    broker.db.read(|c| {
        use rusqlite::OptionalExtension;
        Ok(c.query_row("SELECT id FROM racks WHERE credential_hash = ?1", params![hash], |r| r.get(0))
            .optional()?)
    })
}

fn check_registration(broker: &Broker, r: &RackRegistration) -> Result<(), BrokerError> {
    if !broker.catalog.has_region(&r.region) {
        return Err(BrokerError::unknown(
            "unknown_region",
            format!(
                "region {:?} does not exist: an operator must PUT /v1/regions/{} first",
                r.region, r.region
            ),
        ));
    }
    let url = r.controller_url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 500 {
        return Err(BrokerError::invalid("invalid_controller_url", "controller_url must be an http(s) URL"));
    }
    if r.controller_token.trim().is_empty() {
        return Err(BrokerError::invalid("invalid_controller_token", "controller_token must not be empty"));
    }
    if r.labels.len() > 64 || r.uplinks.len() > 64 || r.boards.len() > 10_000 {
        return Err(BrokerError::invalid("too_large", "at most 64 labels, 64 uplinks and 10000 boards"));
    }
    for (region, u) in &r.uplinks {
        if !u.rtt_ms.is_finite() || u.rtt_ms < 0.0 || !u.loss.is_finite() || !(0.0..=1.0).contains(&u.loss) {
            return Err(BrokerError::invalid(
                "invalid_uplink",
                format!("uplink to {region:?}: rtt_ms >= 0 and loss in 0..=1"),
            ));
        }
    }
    Ok(())
}

/// A registration (or heartbeat) from `rack`'s controller. Stored when what it says changed.
pub fn register(
    broker: &Arc<Broker>,
    rack: &str,
    registration: RackRegistration,
) -> Result<RegistrationAck, BrokerError> {
    check_registration(broker, &registration)?;
    let labels = serde_json::to_string(&registration.labels)?;
    let uplinks = serde_json::to_string(&registration.uplinks)?;
    let (changed, was_unreachable) = {
        let mut racks = broker.racks();
        let live = racks.entry(rack.to_string()).or_insert_with(|| RackLive::new(rack));
        let before = (
            live.region.clone(),
            live.target.clone(),
            live.player_host.clone(),
            live.labels.clone(),
            live.uplinks.clone(),
        );
        let was_unreachable =
            live.health(broker.config.rack_unreachable_after).0 == api::broker::RackHealth::Unreachable;
        live.register(&registration, now_ms());
        let after = (
            live.region.clone(),
            live.target.clone(),
            live.player_host.clone(),
            live.labels.clone(),
            live.uplinks.clone(),
        );
        (before != after, was_unreachable)
    };
    if changed {
        broker.db.write(|tx| -> Result<(), BrokerError> {
            tx.execute(
                "UPDATE racks SET region = ?2, labels = ?3, controller_url = ?4, controller_token = ?5,
                 player_host = ?6, uplinks = ?7, registered_ms = ?8 WHERE id = ?1",
                params![
                    rack,
                    registration.region,
                    labels,
                    registration.controller_url.trim_end_matches('/'),
                    registration.controller_token,
                    registration.player_host,
                    uplinks,
                    now_ms() as i64
                ],
            )?;
            Ok(())
        })?;
        tracing::info!(rack, region = %registration.region, url = %registration.controller_url, "rack registered");
    }
    link::ensure(broker, rack);
    if was_unreachable {
        broker.capacity_changed.notify_one();
        broker.pools_changed.notify_one();
    }
    Ok(RegistrationAck {
        rack: rack.to_string(),
        heartbeat_ms: broker.config.rack_heartbeat.as_millis() as u64,
    })
}

/// Loads stored racks at start (unreachable until they register again) and follows their
/// event streams.
pub fn load(broker: &Arc<Broker>) -> Result<(), BrokerError> {
    type Stored = (String, Option<String>, String, Option<String>, Option<String>, Option<String>, String);
    let rows: Vec<Stored> = broker.db.read(|c| -> Result<Vec<Stored>, BrokerError> {
        let mut stmt = c.prepare(
            "SELECT id, region, labels, controller_url, controller_token, player_host, uplinks FROM racks",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })?;
    for (id, region, labels, url, token, player_host, uplinks) in rows {
        let mut live = RackLive::new(&id);
        live.region = region;
        live.labels = serde_json::from_str(&labels)?;
        live.uplinks = serde_json::from_str(&uplinks)?;
        live.player_host = player_host;
        if let (Some(url), Some(token)) = (url, token) {
            live.target = Some(client::Target { url, token });
        }
        let follow = live.target.is_some();
        broker.racks().insert(id.clone(), live);
        if follow {
            link::ensure(broker, &id);
        }
    }
    Ok(())
}

/// Every rack as the operator sees it.
pub fn views(broker: &Broker) -> Vec<RackView> {
    let current = broker.current_deployments();
    let after = broker.config.rack_unreachable_after;
    broker.racks().values().map(|r| r.view(after, &current)).collect()
}
