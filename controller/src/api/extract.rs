//! Extractors whose failures use the API's error format (`{"errorCode","errorMessage"}`)
//! instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// An extractor rejection's full explanation (axum's `body_text`, which names the field).
pub trait RejectionText {
    fn text(&self) -> String;
}

impl RejectionText for QueryRejection {
    fn text(&self) -> String {
        self.body_text()
    }
}

impl RejectionText for PathRejection {
    fn text(&self) -> String {
        self.body_text()
    }
}

/// `Query` or `Path` whose failures use the API's error format.
pub struct Checked<E>(pub E);

#[axum::async_trait]
impl<S, E> FromRequestParts<S> for Checked<E>
where
    S: Send + Sync,
    E: FromRequestParts<S>,
    E::Rejection: RejectionText,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        E::from_request_parts(parts, state)
            .await
            .map(Checked)
            .map_err(|e| ApiError::BadRequest(e.text()))
    }
}

/// A JSON body; a bad one is a 400 that says what is wrong.
pub struct ApiJson<T>(pub T);

#[axum::async_trait]
impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| ApiJson(v))
            .map_err(|e: JsonRejection| body_refused(e.status(), e.body_text()))
    }
}

/// A JSON body that may be left out (empty); when present it must be right.
pub struct OptionalJson<T>(pub T);

#[axum::async_trait]
impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| body_refused(e.status(), e.body_text()))?;
        optional_json(&bytes).map(OptionalJson)
    }
}

/// A body axum refused: 413 when it is over the body limit (docs/LIMITS.md), else 400.
fn body_refused(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!(
            "the request body is over the limit of {} bytes",
            super::MAX_BODY_BYTES
        ))
    } else {
        ApiError::BadRequest(text)
    }
}

/// An [`OptionalJson`] body from its bytes: all whitespace (or none) is `T::default()`.
pub fn optional_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("bad JSON body: {e}")))
}
