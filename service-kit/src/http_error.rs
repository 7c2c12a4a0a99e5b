//! One error type for HTTP handlers: a status, a stable code and a message, rendered as the
//! shared [`api::ErrorBody`].

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error answer. Handlers return `Result<_, HttpError>`; the body is always JSON
/// `{"code": ..., "message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl HttpError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into() }
    }

    /// 400 with a code.
    pub fn bad_request(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: no or wrong credentials.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs a valid credential: send 'Authorization: Bearer <token>'",
        )
    }

    /// 404 for a named thing.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} {id:?} does not exist"))
    }

    /// 409 with a code.
    pub fn conflict(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 500 for a failure of the service itself; the detail is logged, not leaked.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the service log")
    }

    /// 503 when a dependency (Docker, the database) does not answer.
    pub fn unavailable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

impl From<api::SpecError> for HttpError {
    fn from(err: api::SpecError) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, err.code(), err.to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let too_large = self.status == StatusCode::PAYLOAD_TOO_LARGE;
        let mut response =
            (self.status, Json(api::ErrorBody { code: self.code, message: self.message })).into_response();
        if too_large {
            // The rest of the body is not read, so the connection cannot carry another request:
            // say so, or a client that pools connections sends its next request into one the
            // server is closing (and gets a connection error instead of an answer).
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The most a request body may hold ([`standard_answers`] sets it on every router).
pub const BODY_LIMIT_BYTES: usize = 2 * 1024 * 1024;

/// Maps axum's JSON extractor failures onto our error body, so malformed bodies and unknown
/// fields get `400 invalid_body` (an oversized body `413 body_too_large`) instead of axum's
/// plain-text answer.
pub fn json_rejection(rejection: axum::extract::rejection::JsonRejection) -> HttpError {
    use axum::extract::rejection::JsonRejection as R;
    match rejection {
        R::MissingJsonContentType(_) => HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with 'Content-Type: application/json'",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than the {} KiB this endpoint takes", BODY_LIMIT_BYTES / 1024),
        ),
        other => HttpError::bad_request("invalid_body", other.body_text()),
    }
}

/// A JSON body extractor whose rejections are [`HttpError`]s.
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// What every service's router answers alike, added after its routes: our error body for
/// unknown paths and methods, and the body limit that [`json_rejection`] reports.
pub fn standard_answers<S: Clone + Send + Sync + 'static>(router: axum::Router<S>) -> axum::Router<S> {
    router
        .fallback(no_such_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT_BYTES))
}

/// Router fallback for unknown paths.
pub async fn no_such_endpoint() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// Router fallback for a known path with the wrong method.
pub async fn method_not_allowed() -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `standard_answers` around one JSON route on loopback and sends it raw requests.
    async fn status_of(method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let (status, _, json) = exchange(method, path, body, true).await;
        (status, json)
    }

    /// One raw request (asking the server to close the connection after it, or not): the
    /// status, the response head and the JSON body. Fails when the server neither answers nor
    /// closes within 10 s.
    async fn exchange(
        method: &str,
        path: &str,
        body: &[u8],
        close: bool,
    ) -> (u16, String, serde_json::Value) {
        let routes = axum::Router::new().route(
            "/echo",
            axum::routing::post(|JsonBody(v): JsonBody<serde_json::Value>| async move { Json(v) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, standard_answers(routes)).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connection = if close { "connection: close\r\n" } else { "" };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{connection}\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // The server may answer and close before it has read all of an oversized body.
        let _ = stream.write_all(body).await;
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the server kept the connection open: {}", String::from_utf8_lossy(&answer));
        let text = String::from_utf8_lossy(&answer);
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut parts = text.splitn(2, "\r\n\r\n");
        let head = parts.next().unwrap_or_default().to_ascii_lowercase();
        let json = parts.next().and_then(|b| serde_json::from_str(b).ok());
        (status, head, json.unwrap_or_default())
    }

    /// A client that pools connections must not send its next request on the connection an
    /// oversized body was refused on: the server does not read the rest of that body, so it
    /// closes the connection, and says so in the answer.
    #[tokio::test]
    async fn an_oversized_body_is_refused_with_the_connection_closed() {
        let over = format!("\"{}\"", "x".repeat(BODY_LIMIT_BYTES));
        let (status, head, body) = exchange("POST", "/echo", over.as_bytes(), false).await;
        assert_eq!((status, body["code"].as_str()), (413, Some("body_too_large")), "{head}");
        assert!(head.lines().any(|l| l.trim() == "connection: close"), "{head}");
    }

    #[tokio::test]
    async fn every_router_answers_alike_and_takes_bodies_up_to_the_limit() {
        // A JSON string of exactly the limit passes; one byte more is 413 with our body.
        let at_limit = format!("\"{}\"", "x".repeat(BODY_LIMIT_BYTES - 2));
        assert_eq!(status_of("POST", "/echo", at_limit.as_bytes()).await.0, 200);
        let over = format!("\"{}\"", "x".repeat(BODY_LIMIT_BYTES - 1));
        let (status, body) = status_of("POST", "/echo", over.as_bytes()).await;
        assert_eq!((status, body["code"].as_str()), (413, Some("body_too_large")), "{body}");
        let (status, body) = status_of("POST", "/echo", b"{").await;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_body")), "{body}");
        let (status, body) = status_of("GET", "/nowhere", b"").await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");
        let (status, body) = status_of("GET", "/echo", b"").await;
        assert_eq!((status, body["code"].as_str()), (405, Some("method_not_allowed")), "{body}");
    }
}
