//! Errors as HTTP responses: the status from who is at fault ([`ErrorKind`]), and a JSON
//! body `{"error": {"kind", "message", "detail"}}` whose `detail` is the error's data
//! where it has some.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{BadRequest, ErrorKind, NotFound};
use crate::Error;

/// An error a handler returns.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl<E: Into<Error>> From<E> for ApiError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

/// The HTTP status of an error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::InUse => StatusCode::CONFLICT,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        // The server never stops a request midway; if it did, the client may retry.
        ErrorKind::Interrupted => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The JSON error response for a status and message (also used for the errors axum and
/// tower-http produce themselves, see `json_errors`).
pub fn error_response(status: StatusCode, message: &str, detail: serde_json::Value) -> Response {
    let kind = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::CONFLICT => "in_use",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::MISDIRECTED_REQUEST => "misdirected",
        StatusCode::SERVICE_UNAVAILABLE => "busy",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let body = json!({"error": {"kind": kind, "message": message, "detail": detail}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.0.kind());
        let detail = match &self.0 {
            Error::BadRequest(b) => serde_json::to_value(b).unwrap_or_default(),
            Error::NotFound(n) => serde_json::to_value(n).unwrap_or_default(),
            _ => serde_json::Value::Null,
        };
        // Internal errors may name server-side files: say what failed, not where.
        let message = match self.0.kind() {
            ErrorKind::Internal => {
                eprintln!("qseek serve: internal error: {}", self.0);
                "internal error (logged by the server)".to_string()
            }
            ErrorKind::Unsupported => "not an image qseek reads".to_string(),
            _ => self.0.to_string(),
        };
        let mut response = error_response(status, &message, detail);
        if self.0.kind() == ErrorKind::Busy {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A bad request in words (a malformed parameter, body or upload).
pub fn bad_request(reason: impl Into<String>) -> ApiError {
    ApiError(
        BadRequest::Malformed {
            reason: reason.into(),
        }
        .into(),
    )
}

/// A route or resource that does not exist.
pub fn not_found(what: impl Into<String>) -> ApiError {
    ApiError(NotFound::Resource { what: what.into() }.into())
}
