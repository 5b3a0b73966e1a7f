//! Every error the API returns has the same shape: `{"error": {"code", "message", "field"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

/// An error answer: status, machine code, message and the field at fault.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The field at fault, if any.
    pub field: Option<String>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid {
                code,
                field,
                message,
            } => ApiError {
                status: StatusCode::BAD_REQUEST,
                code,
                message,
                field,
            },
            Error::UnknownReference { field, message } => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "unknown_reference",
                message,
                field: Some(field),
            },
            Error::Conflict { field, message } => ApiError {
                status: StatusCode::CONFLICT,
                code: "conflict",
                message,
                field: Some(field),
            },
            Error::NotFound { what } => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            e @ (Error::Poisoned { .. } | Error::WriterStopped) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            ),
            e @ Error::NotReplicated { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_replicated",
                e.to_string(),
            ),
            e @ Error::Busy { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_busy",
                format!("{e}; nothing was written, retry"),
            ),
            e @ Error::Sqlite { .. } if is_constraint(&e) => ApiError::new(
                StatusCode::CONFLICT,
                "constraint",
                format!("refused by the store's constraints: {e}"),
            ),
            other => {
                tracing::error!(error = %chain(&other), "request failed inside the store");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the store failed; see the server log",
                )
            }
        }
    }
}

fn is_constraint(e: &Error) -> bool {
    matches!(e, Error::Sqlite { source, .. } if source.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({ "error": { "code": self.code, "message": self.message, "field": self.field } });
        (self.status, axum::Json(body)).into_response()
    }
}
