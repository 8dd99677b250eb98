//! Core errors as HTTP answers: a status per error code, `Retry-After` where the core says
//! when to come back, and OpenAI's error object as the body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mlxd_proto::{ErrorCode, WireError};

/// An error answer.
#[derive(Debug)]
pub struct ApiError(pub WireError);

impl From<WireError> for ApiError {
    fn from(error: WireError) -> Self {
        ApiError(error)
    }
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(WireError::bad_request(message))
    }
}

/// The HTTP status for a core error code.
pub fn status(error: &WireError) -> StatusCode {
    match error.code {
        ErrorCode::BadRequest
        | ErrorCode::Unsupported
        | ErrorCode::InvalidLease
        | ErrorCode::VersionMismatch
        | ErrorCode::Cancelled => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Unauthorized => StatusCode::FORBIDDEN,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Busy => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Loading | ErrorCode::OutOfMemory | ErrorCode::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
        // A failed model that will be tried again later (its circuit) is unavailable; a
        // worker that failed this one request is an internal error.
        ErrorCode::WorkerFailed if error.retry_after_ms.is_some() => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::WorkerFailed | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::NotImplemented => StatusCode::NOT_IMPLEMENTED,
    }
}

/// OpenAI's error `type` for a status.
fn kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 413 => "invalid_request_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "server_error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = self.0;
        let status = status(&error);
        let body = serde_json::json!({
            "error": {
                "message": error.message,
                "type": kind(status),
                "param": null,
                "code": error.code.as_str(),
            }
        });
        let mut response = (status, axum::Json(body)).into_response();
        retry_after(&mut response, error.retry_after_ms);
        response
    }
}

/// An error answer in Ollama's shape (`{"error": "message"}`), same statuses.
#[derive(Debug)]
pub struct OllamaError(pub WireError);

impl From<WireError> for OllamaError {
    fn from(error: WireError) -> Self {
        OllamaError(error)
    }
}

impl OllamaError {
    pub fn bad_request(message: impl Into<String>) -> OllamaError {
        OllamaError(WireError::bad_request(message))
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let error = self.0;
        let mut response = (status(&error), axum::Json(serde_json::json!({ "error": error.message }))).into_response();
        retry_after(&mut response, error.retry_after_ms);
        response
    }
}

/// `Retry-After` in whole seconds, rounded up: a client must not come back early.
fn retry_after(response: &mut Response, retry_after_ms: Option<u64>) {
    if let Some(ms) = retry_after_ms {
        if let Ok(value) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
}
