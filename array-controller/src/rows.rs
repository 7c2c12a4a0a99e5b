//! Typed rows of the controller's tables and the queries that read them.

use api::BoardFacts;
use api::InstancePorts;
use api::facts::{cpuset_string, parse_cpu_list};
use api::rack::{BoardState, BoardView, DeploymentSpec, InstanceState, InstanceView};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::db::{DbError, json_column};

/// A board row.
#[derive(Debug, Clone)]
pub struct BoardRow {
    pub id: String,
    pub state: BoardState,
    pub reason: Option<String>,
    pub class: Option<String>,
    pub arch: String,
    pub address: String,
    pub facts: BoardFacts,
    pub cordoned: bool,
    pub reachable: bool,
    pub unreachable_since_ms: Option<u64>,
    pub last_heartbeat_ms: u64,
    pub desired_generation: u64,
    pub applied_generation: u64,
    pub journal_seq: u64,
}

const BOARD_COLUMNS: &str = "id, state, reason, class, arch, address, facts, cordoned, reachable, unreachable_since_ms, \
     last_heartbeat_ms, desired_generation, applied_generation, journal_seq";

fn board_from_row(row: &Row<'_>) -> rusqlite::Result<BoardRow> {
    let state: String = row.get(1)?;
    Ok(BoardRow {
        id: row.get(0)?,
        state: BoardState::parse(&state).unwrap_or(BoardState::Quarantined),
        reason: row.get(2)?,
        class: row.get(3)?,
        arch: row.get(4)?,
        address: row.get(5)?,
        facts: json_column(&row.get::<_, String>(6)?)?,
        cordoned: row.get(7)?,
        reachable: row.get(8)?,
        unreachable_since_ms: row.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        last_heartbeat_ms: row.get::<_, i64>(10)? as u64,
        desired_generation: row.get::<_, i64>(11)? as u64,
        applied_generation: row.get::<_, i64>(12)? as u64,
        journal_seq: row.get::<_, i64>(13)? as u64,
    })
}

pub fn board(conn: &Connection, id: &str) -> Result<Option<BoardRow>, DbError> {
    let sql = format!("SELECT {BOARD_COLUMNS} FROM boards WHERE id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([id], board_from_row).optional()?)
}

pub fn boards(conn: &Connection) -> Result<Vec<BoardRow>, DbError> {
    let sql = format!("SELECT {BOARD_COLUMNS} FROM boards ORDER BY id");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([], board_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The boards named in `ids` that exist, and every instance on them: their part of the rack,
/// read without the rest.
pub fn boards_and_instances_of(
    conn: &Connection,
    ids: &std::collections::BTreeSet<&str>,
) -> Result<(Vec<BoardRow>, Vec<InstanceRow>), DbError> {
    let ids = serde_json::to_string(ids)?;
    let sql = format!(
        "SELECT {BOARD_COLUMNS} FROM boards WHERE id IN (SELECT value FROM json_each(?1)) ORDER BY id"
    );
    let boards = conn.prepare_cached(&sql)?.query_map([&ids], board_from_row)?.collect::<Result<_, _>>()?;
    let instances = instances_where(conn, "board_id IN (SELECT value FROM json_each(?1))", [&ids])?;
    Ok((boards, instances))
}

/// A board's desired generation (`None`: no such board), without reading the rest of its row.
pub fn desired_generation(conn: &Connection, board_id: &str) -> Result<Option<u64>, DbError> {
    Ok(conn
        .prepare_cached("SELECT desired_generation FROM boards WHERE id = ?1")?
        .query_row([board_id], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|g| g as u64))
}

pub fn board_by_credential(conn: &Connection, credential_hash: &str) -> Result<Option<String>, DbError> {
    Ok(conn
        .prepare_cached("SELECT id FROM boards WHERE credential_hash = ?1")?
        .query_row([credential_hash], |r| r.get(0))
        .optional()?)
}

impl BoardRow {
    pub fn view(&self, instances: u32) -> BoardView {
        BoardView {
            id: self.id.clone(),
            state: self.state,
            reason: self.reason.clone(),
            class: self.class.clone(),
            arch: self.arch.clone(),
            address: self.address.clone(),
            cordoned: self.cordoned,
            reachable: self.reachable,
            last_heartbeat_ms: self.last_heartbeat_ms,
            desired_generation: self.desired_generation,
            applied_generation: self.applied_generation,
            instances,
            facts: self.facts.clone(),
        }
    }
}

/// An instance row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub id: String,
    pub deployment_id: String,
    pub board_id: String,
    pub state: InstanceState,
    pub reason: Option<String>,
    pub generation: u64,
    pub reset_epoch: u64,
    pub millicores: u32,
    pub cpus: Vec<u32>,
    pub memory_mib: u64,
    pub gpu_slots: u32,
    pub encoder_slots: u32,
    pub ports: InstancePorts,
    pub container_id: Option<String>,
    pub claim_key: Option<String>,
    pub at_risk: bool,
    pub state_since_ms: u64,
    /// The secret the instance's stream accepts (see [`new_stream_token`]); `None` only for rows
    /// claimed when tokens were introduced. Never in views or events.
    pub stream_token: Option<String>,
}

const INSTANCE_COLUMNS: &str = "id, deployment_id, board_id, state, reason, generation, reset_epoch, millicores, cpus, \
     memory_mib, gpu_slots, encoder_slots, adb_port, stream_port, container_id, claim_key, at_risk, state_since_ms, \
     stream_token";

/// A fresh stream token. An instance gets one when its row is created and a new one whenever
/// its generation or reset epoch is bumped (a release), so whoever held the previous claim
/// cannot reach the instance's next player.
pub fn new_stream_token() -> String {
    service_kit::auth::new_token("st")
}

fn instance_from_row(row: &Row<'_>) -> rusqlite::Result<InstanceRow> {
    let state: String = row.get(3)?;
    let cpus: String = row.get(8)?;
    Ok(InstanceRow {
        id: row.get(0)?,
        deployment_id: row.get(1)?,
        board_id: row.get(2)?,
        state: InstanceState::parse(&state).unwrap_or(InstanceState::Failed),
        reason: row.get(4)?,
        generation: row.get::<_, i64>(5)? as u64,
        reset_epoch: row.get::<_, i64>(6)? as u64,
        millicores: row.get(7)?,
        cpus: parse_cpu_list(&cpus).unwrap_or_default(),
        memory_mib: row.get::<_, i64>(9)? as u64,
        gpu_slots: row.get(10)?,
        encoder_slots: row.get(11)?,
        ports: InstancePorts { adb: row.get(12)?, stream: row.get(13)? },
        container_id: row.get(14)?,
        claim_key: row.get(15)?,
        at_risk: row.get(16)?,
        state_since_ms: row.get::<_, i64>(17)? as u64,
        stream_token: row.get(18)?,
    })
}

/// Instances matching an SQL condition on the instances table (`?1`.. bound from `args`).
pub fn instances_where(
    conn: &Connection,
    condition: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<InstanceRow>, DbError> {
    let sql = format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE {condition} ORDER BY id");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(args, instance_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn instance(conn: &Connection, id: &str) -> Result<Option<InstanceRow>, DbError> {
    Ok(instances_where(conn, "id = ?1", [id])?.pop())
}

/// Inserts a new instance row.
pub fn insert_instance(conn: &Connection, row: &InstanceRow, now_ms: u64) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO instances (id, deployment_id, board_id, state, reason, generation, reset_epoch, millicores, cpus,
             memory_mib, gpu_slots, encoder_slots, adb_port, stream_port, container_id, claim_key, at_risk,
             state_since_ms, created_ms, stream_token)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?18, ?19)",
    )?
    .execute(params![
        row.id,
        row.deployment_id,
        row.board_id,
        row.state.as_str(),
        row.reason,
        row.generation as i64,
        row.reset_epoch as i64,
        row.millicores,
        cpuset_string(&row.cpus),
        row.memory_mib as i64,
        row.gpu_slots,
        row.encoder_slots,
        row.ports.adb,
        row.ports.stream,
        row.container_id,
        row.claim_key,
        row.at_risk,
        now_ms as i64,
        row.stream_token,
    ])?;
    Ok(())
}

impl InstanceRow {
    pub fn view(&self) -> InstanceView {
        InstanceView {
            id: self.id.clone(),
            deployment: self.deployment_id.clone(),
            board: self.board_id.clone(),
            state: self.state,
            reason: self.reason.clone(),
            generation: self.generation,
            cpus: self.cpus.clone(),
            memory_mib: self.memory_mib,
            ports: self.ports,
            container_id: self.container_id.clone(),
            claim_key: self.claim_key.clone(),
            at_risk: self.at_risk,
        }
    }
}

pub fn deployment(conn: &Connection, id: &str) -> Result<Option<DeploymentSpec>, DbError> {
    let spec: Option<String> = conn
        .prepare_cached("SELECT spec FROM deployments WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    Ok(spec.map(|s| serde_json::from_str(&s)).transpose()?)
}

/// Whether deployment `id` exists (without reading its spec).
pub fn deployment_exists(conn: &Connection, id: &str) -> Result<bool, DbError> {
    Ok(conn.prepare_cached("SELECT 1 FROM deployments WHERE id = ?1")?.exists([id])?)
}

pub fn deployments(conn: &Connection) -> Result<Vec<(String, DeploymentSpec)>, DbError> {
    let mut stmt = conn.prepare_cached("SELECT id, spec FROM deployments ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, json_column::<DeploymentSpec>(&r.get::<_, String>(1)?)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
