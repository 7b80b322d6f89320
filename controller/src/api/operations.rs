//! Power operations: `POST /nodes/{node}/reboot`, `/poweroff` and `/wake` (202, with an
//! operation id for `GET /operations/{id}`).
//!
//! Reboot and poweroff are commands to the node's agent, through the engine like every
//! change. A wake is a Wake-on-LAN packet the controller sends itself: the engine records
//! the operation (`queued`), the wake task sends the packets to `[wake] broadcast`, and
//! the engine records the outcome (`succeeded` or `failed`) and only then answers.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use metalbus_protocol::api::{Data, OperationStarted, Role};
use metalbus_protocol::command::PowerAction;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::Checked;
use super::lifecycle::{call, require};
use super::openapi::{ChangeErrors, IfMatch, NodePath};
use super::AppState;
use crate::engine::{Action, Reply};

type Accepted = (StatusCode, Json<Data<OperationStarted>>);

fn accepted(reply: Reply) -> Result<Accepted, ApiError> {
    let (operation_id, status) = reply
        .operation
        .ok_or_else(|| ApiError::Internal("the engine started no operation".into()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Data {
            data: OperationStarted {
                id: reply.node.id,
                operation_id,
                status,
            },
        }),
    ))
}

async fn power(
    state: AppState,
    caller: Caller,
    key: String,
    headers: HeaderMap,
    action: PowerAction,
) -> Result<Accepted, ApiError> {
    require(&caller, Role::Operator)?;
    let reply = call(&state, key, Action::Power(action), &caller, &headers).await?;
    accepted(reply)
}

/// `POST /nodes/{node}/reboot` (operator): the agent runs its `reboot_command`.
#[utoipa::path(
    post,
    operation_id = "rebootNode",
    path = "/api/v1/nodes/{node}/reboot",
    tag = "operations",
    summary = "Reboot a node (its agent runs its configured reboot action)",
    params(NodePath, IfMatch),
    responses(
        (status = 202, description = "Started; follow it at /api/v1/operations/{operation_id}", body = Data<OperationStarted>),
        ChangeErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn reboot(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(key)): Checked<Path<String>>,
    headers: HeaderMap,
) -> Result<Accepted, ApiError> {
    power(state, caller, key, headers, PowerAction::Reboot).await
}

/// `POST /nodes/{node}/poweroff` (operator): the agent runs its `poweroff_command`.
#[utoipa::path(
    post,
    operation_id = "poweroffNode",
    path = "/api/v1/nodes/{node}/poweroff",
    tag = "operations",
    summary = "Power a node off (its agent runs its configured poweroff action)",
    params(NodePath, IfMatch),
    responses(
        (status = 202, description = "Started; follow it at /api/v1/operations/{operation_id}", body = Data<OperationStarted>),
        ChangeErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn poweroff(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(key)): Checked<Path<String>>,
    headers: HeaderMap,
) -> Result<Accepted, ApiError> {
    power(state, caller, key, headers, PowerAction::Poweroff).await
}

/// `POST /nodes/{node}/wake` (operator): magic packets for the node's MACs.
#[utoipa::path(
    post,
    operation_id = "wakeNode",
    path = "/api/v1/nodes/{node}/wake",
    tag = "operations",
    summary = "Send Wake-on-LAN magic packets to the node's MACs",
    params(NodePath, IfMatch),
    responses(
        (status = 202, description = "Started; follow it at /api/v1/operations/{operation_id}", body = Data<OperationStarted>),
        ChangeErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn wake(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(key)): Checked<Path<String>>,
    headers: HeaderMap,
) -> Result<Accepted, ApiError> {
    require(&caller, Role::Operator)?;
    // The engine refuses a retired node, or one without a MAC, before anything is sent,
    // and answers once the packets went out (or could not).
    let reply = call(&state, key, Action::Wake, &caller, &headers).await?;
    accepted(reply)
}
