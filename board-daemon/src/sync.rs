//! Controller mode: the daemon dials out to its array controller (so a board behind NAT or on a
//! weak link still works). It enrols once with a join token and keeps the credential it gets;
//! then it long-polls for desired states and sends heartbeats carrying its status and the
//! journal entries not yet acknowledged, oldest first. While the controller is away the board
//! runs on its stored desired state and the journal grows; on return the entries are replayed
//! in order and nothing is deleted by the reconnection itself.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use api::rack::{EnrolRequest, EnrolResponse, Heartbeat, HeartbeatAck, RejectedDesired};
use api::{BoardFacts, BoardStatus, DesiredState};
use reqwest::StatusCode;
use service_kit::time::now_ms;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::desired_source::{DesiredSource, Origin};
use crate::docker::DockerRuntime;
use crate::store::Store;

/// How long one desired-state long-poll waits at the controller.
const LONG_POLL: Duration = Duration::from_secs(25);
/// Journal entries per heartbeat.
const JOURNAL_BATCH: u32 = 500;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where and how to reach the controller.
#[derive(Debug, Clone)]
pub struct ControllerLink {
    pub url: String,
    pub join_token: Option<String>,
    /// Address players and the controller reach this board's ports at.
    pub advertise_address: String,
    /// File holding the board credential.
    pub credential_path: PathBuf,
}

/// Everything the sync loops share.
pub struct SyncParts {
    pub link: ControllerLink,
    pub board_id: String,
    pub store: Arc<Store>,
    pub desired: Arc<DesiredSource>,
    pub facts: Arc<RwLock<BoardFacts>>,
    pub status: watch::Receiver<BoardStatus>,
    pub docker: DockerRuntime,
    pub cancel: CancellationToken,
}

/// Why a controller call failed.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("controller unreachable: {0}")]
    Http(#[from] reqwest::Error),
    #[error("controller answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("no credential and no join token: give the daemon --join-token to enrol")]
    NoJoinToken,
    #[error("cannot store the credential: {0}")]
    Credential(std::io::Error),
}

/// Runs enrolment, the desired-state long-poll and the heartbeats until cancelled.
pub async fn run(parts: SyncParts, heartbeat_every: Duration) {
    let parts = Arc::new(parts);
    let client = match reqwest::Client::builder().connect_timeout(Duration::from_secs(3)).build() {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "cannot build the HTTP client; controller sync disabled");
            return;
        }
    };
    let credential = loop {
        match credential(&parts, &client).await {
            Ok(credential) => break credential,
            Err(err) => {
                tracing::warn!(error = %err, "cannot enrol with the controller; retrying");
                tokio::select! {
                    _ = parts.cancel.cancelled() => return,
                    _ = tokio::time::sleep(MAX_BACKOFF) => {}
                }
            }
        }
    };
    let rejected = Arc::new(Mutex::new(None));
    let poll =
        tokio::spawn(poll_desired(parts.clone(), client.clone(), credential.clone(), rejected.clone()));
    heartbeats(parts.clone(), client, credential, rejected, heartbeat_every).await;
    let _ = poll.await;
}

/// The stored credential, or a new one from enrolling.
async fn credential(parts: &SyncParts, client: &reqwest::Client) -> Result<String, SyncError> {
    if let Ok(text) = std::fs::read_to_string(&parts.link.credential_path)
        && !text.trim().is_empty()
    {
        return Ok(text.trim().to_string());
    }
    let join_token = parts.link.join_token.clone().ok_or(SyncError::NoJoinToken)?;
    let facts = parts.facts.read().unwrap_or_else(|p| p.into_inner()).clone();
    let request = EnrolRequest {
        join_token,
        facts,
        address: parts.link.advertise_address.clone(),
        now_ms: now_ms(),
        desired_generation: parts.desired.current().generation,
    };
    let response = client.post(format!("{}/v1/enrol", parts.link.url)).json(&request).send().await?;
    let response: EnrolResponse = ok_json(response).await?;
    service_kit::files::write_private(&parts.link.credential_path, &response.credential)
        .map_err(SyncError::Credential)?;
    tracing::info!(state = ?response.state, reason = response.reason.as_deref().unwrap_or(""), "enrolled with the controller");
    Ok(response.credential)
}

async fn ok_json<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, SyncError> {
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(SyncError::Status { status, body });
    }
    Ok(response.json().await?)
}

async fn poll_desired(
    parts: Arc<SyncParts>,
    client: reqwest::Client,
    credential: String,
    rejected: Arc<Mutex<Option<RejectedDesired>>>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let after = parts.desired.current().generation;
        let url = format!(
            "{}/v1/boards/{}/desired?after={after}&wait_ms={}",
            parts.link.url,
            parts.board_id,
            LONG_POLL.as_millis()
        );
        let request =
            client.get(url).bearer_auth(&credential).timeout(LONG_POLL + Duration::from_secs(10)).send();
        let outcome = tokio::select! {
            _ = parts.cancel.cancelled() => return,
            outcome = request => outcome,
        };
        let failed = match outcome {
            Ok(response) if response.status() == StatusCode::NO_CONTENT => false,
            Ok(response) => match ok_json::<DesiredState>(response).await {
                Ok(desired) => {
                    apply(&parts, desired, &rejected).await;
                    false
                }
                Err(err) => {
                    tracing::warn!(error = %err, "desired-state poll failed");
                    true
                }
            },
            Err(err) => {
                tracing::debug!(error = %err, "controller unreachable for the desired-state poll");
                true
            }
        };
        if failed {
            tokio::select! {
                _ = parts.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = Duration::from_millis(250);
        }
    }
}

async fn apply(parts: &SyncParts, desired: DesiredState, rejected: &Mutex<Option<RejectedDesired>>) {
    let generation = desired.generation;
    let facts = parts.facts.read().unwrap_or_else(|p| p.into_inner()).clone();
    match parts.desired.offer(desired, &facts, Some(&parts.docker), Origin::Controller).await {
        Ok(_) => *rejected.lock().unwrap_or_else(|p| p.into_inner()) = None,
        Err(err) => {
            tracing::warn!(generation, code = err.code(), error = %err, "refused the controller's desired state");
            *rejected.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(RejectedDesired { generation, code: err.code().to_string(), message: err.to_string() });
            // Do not spin on a state that will be refused again; the next poll waits for a newer one.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn heartbeats(
    parts: Arc<SyncParts>,
    client: reqwest::Client,
    credential: String,
    rejected: Arc<Mutex<Option<RejectedDesired>>>,
    every: Duration,
) {
    let mut acked = 0u64;
    loop {
        let journal = parts.store.journal_after(acked, JOURNAL_BATCH).unwrap_or_else(|err| {
            tracing::error!(error = %err, "cannot read the journal");
            Vec::new()
        });
        let full_batch = journal.len() == JOURNAL_BATCH as usize;
        let heartbeat = Heartbeat {
            applied_generation: parts.desired.current().generation,
            instances: parts.status.borrow().instances.clone(),
            journal,
            rejected: rejected.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        };
        let url = format!("{}/v1/boards/{}/heartbeat", parts.link.url, parts.board_id);
        let sent =
            client.post(url).bearer_auth(&credential).timeout(Duration::from_secs(5)).json(&heartbeat).send();
        let outcome = tokio::select! {
            _ = parts.cancel.cancelled() => return,
            outcome = sent => outcome,
        };
        match outcome {
            Ok(response) => match ok_json::<HeartbeatAck>(response).await {
                Ok(ack) => {
                    if ack.journal_ack > acked {
                        acked = ack.journal_ack;
                        if let Err(err) = parts.store.acknowledge(acked) {
                            tracing::error!(error = %err, "cannot trim the journal");
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "heartbeat refused"),
            },
            Err(err) => tracing::debug!(error = %err, "controller unreachable for the heartbeat"),
        }
        // A full batch means more is queued: send the next one at once.
        if full_batch {
            continue;
        }
        tokio::select! {
            _ = parts.cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
