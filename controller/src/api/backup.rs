//! `GET /api/v1/backup` (admin): a consistent copy of the whole store, taken while the
//! controller runs, as a redb file (`metalbus backup FILE`; restore with
//! `metalbus restore FILE --data-dir DIR` while the controller is stopped).

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use metalbus_protocol::api::{ErrorBody, Role};
use tokio_util::io::ReaderStream;

use super::auth::Caller;
use super::error::ApiError;
use super::lifecycle::require;
use super::AppState;

/// `GET /backup`.
#[utoipa::path(
    get,
    operation_id = "backup",
    path = "/api/v1/backup",
    tag = "admin",
    summary = "A consistent copy of the whole store (admin), as a redb file",
    responses(
        (status = 200, description = "The store as of one commit: nodes, history, events, commands, tokens, metrics history", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 403, description = "The token's role may not do this (`Primus.00004`)", body = ErrorBody),
        (status = 500, description = "The copy failed (`Primus.00001`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn backup(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    require(&caller, Role::Admin)?;
    // Written next to the store (same disk, same permissions), streamed, then gone.
    let path = state
        .config
        .data_dir
        .join(format!(".backup-{}.redb", crate::security::random_secret()));
    let reader = state.store.clone();
    let made = path.clone();
    let info = tokio::task::spawn_blocking(move || reader.backup_to(&made))
        .await
        .map_err(|e| ApiError::Internal(format!("backup task: {e}")))?;
    let opened = match info {
        Ok(info) => tokio::fs::File::open(&path).await.map(|f| (f, info)),
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e.into());
        }
    };
    // The open file stays readable once its name is gone.
    let _ = tokio::fs::remove_file(&path).await;
    let (file, info) = opened.map_err(|e| ApiError::Internal(format!("backup file: {e}")))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    tracing::info!(by = %caller.name, nodes = info.nodes, history = info.history, bytes = len, "backup taken");
    let name = format!(
        "attachment; filename=\"metalbus-{}.redb\"",
        state.clock.now().to_string().replace(':', "")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, name),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(ReaderStream::new(file)),
    )
        .into_response())
}
