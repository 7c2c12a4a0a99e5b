//! The broker's HTTP client for a rack's controller: claims, releases, lease renewals,
//! deployments, instances and the event stream. Every call names the rack's URL and token.

use std::time::Duration;

use api::rack::{ClaimView, DeploymentSpec, DeploymentView, InstanceView, RenewResponse};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Header of the controller's instance list: the last event sequence the list reflects.
const EVENT_SEQ_HEADER: &str = "x-event-seq";

/// The controller's renew endpoint takes at most this many keys per call.
pub const RENEW_BATCH: usize = 500;

/// How a controller call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No answer: refused, reset or timed out.
    #[error("no answer: {0}")]
    Unreachable(String),
    /// An answer with an error body.
    #[error("{status} {code}: {message}")]
    Refused { status: u16, code: String, message: String },
}

impl CallError {
    /// The error code of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Refused { code, .. } => Some(code),
            CallError::Unreachable(_) => None,
        }
    }
}

/// Where a controller is and what to present to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub token: String,
}

/// One HTTP client (connection pool) for every rack.
#[derive(Clone)]
pub struct ControllerClient {
    http: reqwest::Client,
}

impl ControllerClient {
    pub fn new() -> ControllerClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .expect("the HTTP client configuration is static");
        ControllerClient { http }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        target: &Target,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", target.url))
            .bearer_auth(&target.token)
            .timeout(timeout);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| CallError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| CallError::Unreachable(e.to_string()))?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| CallError::Refused {
                status,
                code: "bad_answer".into(),
                message: format!("{path}: {e}"),
            });
        }
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Err(CallError::Refused {
            status,
            code: body["code"].as_str().unwrap_or("unknown").to_string(),
            message: body["message"].as_str().unwrap_or("").to_string(),
        })
    }

    /// `POST /v1/claims`.
    pub async fn claim(
        &self,
        target: &Target,
        deployment: &str,
        key: &str,
        lease_ms: u64,
        timeout: Duration,
    ) -> Result<ClaimView, CallError> {
        let body = json!({"deployment": deployment, "key": key, "lease_ms": lease_ms});
        self.call(target, reqwest::Method::POST, "/v1/claims", Some(body), timeout).await
    }

    /// `GET /v1/claims/{key}`; `Ok(None)` when the rack has no such claim.
    pub async fn get_claim(&self, target: &Target, key: &str) -> Result<Option<ClaimView>, CallError> {
        match self
            .call(target, reqwest::Method::GET, &format!("/v1/claims/{key}"), None, Duration::from_secs(5))
            .await
        {
            Ok(view) => Ok(Some(view)),
            Err(CallError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /v1/claims/{key}`; a claim the rack does not know is already released.
    pub async fn release(&self, target: &Target, key: &str) -> Result<(), CallError> {
        let path = format!("/v1/claims/{key}");
        match self
            .call::<ClaimView>(target, reqwest::Method::DELETE, &path, None, Duration::from_secs(5))
            .await
        {
            Ok(_) | Err(CallError::Refused { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/claims/renew` for at most [`RENEW_BATCH`] keys.
    pub async fn renew(
        &self,
        target: &Target,
        keys: &[String],
        lease_ms: u64,
    ) -> Result<RenewResponse, CallError> {
        let body = json!({"keys": keys, "lease_ms": lease_ms});
        self.call(target, reqwest::Method::POST, "/v1/claims/renew", Some(body), Duration::from_secs(5)).await
    }

    /// `PUT /v1/deployments/{id}`.
    pub async fn put_deployment(
        &self,
        target: &Target,
        id: &str,
        spec: &DeploymentSpec,
    ) -> Result<DeploymentView, CallError> {
        let body = serde_json::to_value(spec).map_err(|e| CallError::Unreachable(e.to_string()))?;
        self.call(
            target,
            reqwest::Method::PUT,
            &format!("/v1/deployments/{id}"),
            Some(body),
            Duration::from_secs(5),
        )
        .await
    }

    /// `GET /v1/deployments`.
    pub async fn deployments(&self, target: &Target) -> Result<Vec<DeploymentView>, CallError> {
        self.call(target, reqwest::Method::GET, "/v1/deployments", None, Duration::from_secs(5)).await
    }

    /// `GET /v1/instances`, and the last event sequence the list reflects (when the controller
    /// says).
    pub async fn instances(&self, target: &Target) -> Result<(Vec<InstanceView>, Option<u64>), CallError> {
        let response = self
            .http
            .get(format!("{}/v1/instances", target.url))
            .bearer_auth(&target.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let seq = response.headers().get(EVENT_SEQ_HEADER).and_then(|v| v.to_str().ok()?.parse().ok());
        let bytes = response.bytes().await.map_err(|e| CallError::Unreachable(e.to_string()))?;
        if status != 200 {
            return Err(CallError::Refused {
                status,
                code: "instances_refused".into(),
                message: String::new(),
            });
        }
        let list = serde_json::from_slice(&bytes).map_err(|e| CallError::Refused {
            status,
            code: "bad_answer".into(),
            message: format!("/v1/instances: {e}"),
        })?;
        Ok((list, seq))
    }

    /// Opens `GET /v1/events` after `after`, of the comma-separated `kinds` only.
    pub async fn events(
        &self,
        target: &Target,
        after: u64,
        kinds: &str,
    ) -> Result<reqwest::Response, CallError> {
        let response = self
            .http
            .get(format!("{}/v1/events?kinds={kinds}", target.url))
            .bearer_auth(&target.token)
            .header("last-event-id", after.to_string())
            .send()
            .await
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(CallError::Refused { status, code: "events_refused".into(), message: String::new() });
        }
        Ok(response)
    }
}

impl Default for ControllerClient {
    fn default() -> Self {
        Self::new()
    }
}
