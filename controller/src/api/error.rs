//! API errors and the one place they become HTTP statuses and error codes (DESIGN
//! section 9, STYLE rule 7).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use metalbus_protocol::api::{ErrorBody, ErrorCode};
use tracing::error;

use crate::engine::CallError;
use crate::store::StoreError;

/// Everything a handler can answer with instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("Forbidden")]
    Forbidden,
    #[error("node not found")]
    NodeNotFound,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request (its body included) took longer than the API allows.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Conflict(String),
    /// A request body over the API's limit.
    #[error("{0}")]
    TooLarge(String),
    /// A bound on what the API holds open at once was reached; try again later.
    #[error("{0}")]
    Busy(String),
    #[error("internal error")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::NotFound => ApiError::NodeNotFound,
            CallError::Missing(m) => ApiError::NotFound(m),
            CallError::Stale { .. } | CallError::Conflict(_) => ApiError::Conflict(e.to_string()),
            CallError::Refused(_) | CallError::BadRequest(_) => ApiError::BadRequest(e.to_string()),
            CallError::Store(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl ApiError {
    fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::Timeout(_)
            | ApiError::TooLarge(_) => ErrorCode::BadRequest,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden => ErrorCode::Forbidden,
            ApiError::NodeNotFound | ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::Store(_) | ApiError::Internal(_) | ApiError::Busy(_) => ErrorCode::Internal,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Store(e) => error!(error = %e, "API request failed in the store"),
            ApiError::Internal(e) => error!(error = %e, "API request failed"),
            _ => {}
        }
        let code = self.code();
        let status = match self {
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        };
        (status, Json(ErrorBody::new(code, self.to_string()))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_code_and_status() {
        let cases = [
            (ApiError::BadRequest("x".into()), 400, "Primus.00002"),
            (ApiError::Unauthorized("x"), 401, "Primus.00003"),
            (ApiError::Forbidden, 403, "Primus.00004"),
            (ApiError::NodeNotFound, 404, "Primus.00005"),
            (ApiError::Conflict("x".into()), 409, "Primus.00006"),
            (ApiError::MethodNotAllowed("x".into()), 405, "Primus.00002"),
            (ApiError::Timeout("x".into()), 408, "Primus.00002"),
            (ApiError::Busy("x".into()), 503, "Primus.00001"),
            (ApiError::TooLarge("x".into()), 413, "Primus.00002"),
            (
                ApiError::Store(StoreError::Schema { found: "9".into() }),
                500,
                "Primus.00001",
            ),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.code().code(), code);
            assert_eq!(err.into_response().status().as_u16(), status);
        }
        assert_eq!(ApiError::NodeNotFound.to_string(), "node not found");
        assert_eq!(ApiError::Forbidden.to_string(), "Forbidden");
    }
}
