//! Lifecycle endpoints: manage, unmanage, DELETE, `PATCH .../state`, retry, `PATCH`
//! of node fields, and history. Every change goes through the engine; the handler only
//! checks the caller's role (first, as seed 000's retry order says) and shapes answers.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use metalbus_protocol::api::{
    Changed, Data, History, ManageRequest, NodeUpdateRequest, NodeView, RegisterRequest,
    Registered, RetryResponse, StateChange,
};
use metalbus_protocol::api::{ErrorBody, Role};
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::NodeId;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{ApiJson, Checked, OptionalJson};
use super::nodes::view_of;
use super::openapi::{ChangeErrors, IfMatch, NodePath, ReadErrors};
use super::AppState;
use crate::engine::{Action, Call, CallError, Input, NodeUpdate, Registration, Reply};

/// The caller must have at least `role`.
pub fn require(caller: &Caller, role: Role) -> Result<(), ApiError> {
    if caller.role >= role {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// `If-Match: 5` (also `"5"` and `W/"5"`).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::BadRequest("If-Match must be the node's version, a number".into()))
}

/// Sends an input made around a reply channel to the engine, the one writer, and waits
/// for its answer (given after the commit).
pub(super) async fn ask<T>(
    state: &AppState,
    input: impl FnOnce(oneshot::Sender<Result<T, CallError>>) -> Input,
) -> Result<T, ApiError> {
    let gone = || ApiError::Internal("the controller is shutting down".into());
    let (reply, answer) = oneshot::channel();
    state.engine.send(input(reply)).await.map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?.map_err(ApiError::from)
}

/// Sends a call to the engine and waits for its answer.
pub(super) async fn call(
    state: &AppState,
    key: String,
    action: Action,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<Reply, ApiError> {
    let if_match = if_match(headers)?;
    ask(state, |reply| {
        Input::Call(Box::new(Call {
            key,
            action,
            user: Some(caller.name.clone()),
            if_match,
            reply,
        }))
    })
    .await
}

fn transitioned(state: &AppState, reply: Reply) -> Result<Json<Changed<NodeView>>, ApiError> {
    let message = format!("Node transitioned to {}", reply.node.state);
    Ok(Json(Changed {
        data: view_of(state, reply.node)?,
        message,
    }))
}

#[utoipa::path(
    post,
    operation_id = "manageNode",
    path = "/api/v1/nodes/{node}/manage",
    tag = "lifecycle",
    summary = "Install a discovered node with a plan (the default plan if none is named)",
    params(NodePath, IfMatch),
    request_body = Option<ManageRequest>,
    responses(
        (status = 200, body = Changed<NodeView>),
        ChangeErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn manage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(key)): Checked<Path<String>>,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<ManageRequest>,
) -> Result<Json<Changed<NodeView>>, ApiError> {
    require(&caller, Role::Operator)?;
    let plan = body.plan;
    let reply = call(&state, key, Action::Manage { plan }, &caller, &headers).await?;
    transitioned(&state, reply)
}

#[utoipa::path(
    post,
    operation_id = "unmanageNode",
    path = "/api/v1/nodes/{node}/unmanage",
    tag = "lifecycle",
    summary = "Deprovision an installed or active node back to discovered",
    params(NodePath, IfMatch),
    responses(
        (status = 200, body = Changed<NodeView>),
        ChangeErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn unmanage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(key)): Checked<Path<String>>,
    headers: HeaderMap,
) -> Result<Json<Changed<NodeView>>, ApiError> {
    require(&caller, Role::Operator)?;
    let reply = call(&state, key, Action::Unmanage, &caller, &headers).await?;
    transitioned(&state, reply)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

/// `DELETE /nodes/{node}`: unmanage and retire (202), or retire now with `force=true`.
#[utoipa::path(
    delete,
    operation_id = "retireNode",
    path = "/api/v1/nodes/{node}",
    tag = "lifecycle",
    summary = "Deprovision and retire a node; force=true retires at once (admin)",
    params(NodePath, DeleteQuery),
    responses(
        (status = 202, description = "Deprovisioning (or retired, with force)", body = Changed<NodeView>),
        ChangeErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(key)): Checked<Path<String>>,
    Checked(Query(q)): Checked<Query<DeleteQuery>>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Changed<NodeView>>), ApiError> {
    require(&caller, Role::Admin)?;
    let reply = call(
        &state,
        key,
        Action::Delete { force: q.force },
        &caller,
        &headers,
    )
    .await?;
    let message = if reply.node.state == NodeState::Retired {
        "Node retired".to_string()
    } else {
        "Node deletion initiated".to_string()
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(Changed {
            data: view_of(&state, reply.node)?,
            message,
        }),
    ))
}

/// `PATCH /nodes/{node}/state`. `force` (which resets counters and allows overrides)
/// needs an admin.
#[utoipa::path(
    patch,
    operation_id = "setNodeState",
    path = "/api/v1/nodes/{node}/state",
    tag = "lifecycle",
    summary = "Move a node to a state (any admin transition; force for overrides)",
    params(NodePath, IfMatch),
    request_body = StateChange,
    responses(
        (status = 200, body = Changed<NodeView>),
        ChangeErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn set_state(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(key)): Checked<Path<String>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<StateChange>,
) -> Result<Json<Changed<NodeView>>, ApiError> {
    // Forcing, and retiring (terminal, like DELETE), are for admins.
    let needs = if body.force || body.state == NodeState::Retired {
        Role::Admin
    } else {
        Role::Operator
    };
    require(&caller, needs)?;
    let action = Action::SetState {
        state: body.state,
        comment: body.comment,
        force: body.force,
    };
    let reply = call(&state, key, action, &caller, &headers).await?;
    transitioned(&state, reply)
}

/// `POST /nodes/{node}/retry`, seed 000: permission, state, preconditions, cleanup,
/// reset and transition, then the job is sent again.
#[utoipa::path(
    post,
    operation_id = "retryNode",
    path = "/api/v1/nodes/{node}/retry",
    tag = "lifecycle",
    summary = "Retry a failed install or deprovision",
    params(NodePath, IfMatch),
    responses(
        (status = 200, body = RetryResponse),
        ChangeErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(key)): Checked<Path<String>>,
    headers: HeaderMap,
) -> Result<Json<RetryResponse>, ApiError> {
    require(&caller, Role::Operator)?;
    let reply = call(&state, key, Action::Retry, &caller, &headers).await?;
    Ok(Json(RetryResponse {
        message: "retry initiated successfully".into(),
        node_id: reply.node.id.clone(),
        previous_phase: reply.before.phase(),
        current_phase: reply.node.state.phase(),
        previous_state: reply.before,
        current_state: reply.node.state,
    }))
}

/// `POST /nodes`: pre-register a node (201); its agent claims it on arrival by MAC,
/// IP or hostname prefix (DESIGN section 8).
#[utoipa::path(
    post,
    operation_id = "registerNode",
    path = "/api/v1/nodes",
    tag = "nodes",
    summary = "Pre-register a node (matched to its agent by MAC, IP, then hostname prefix)",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered, waiting for its agent (with its one-use enrollment token when asked for)", body = Registered),
        (status = 400, description = "Bad request (`Primus.00002`)", body = ErrorBody),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 403, description = "The token's role may not do this (`Primus.00004`)", body = ErrorBody),
        (status = 409, description = "Conflict or stale version (`Primus.00006`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn register(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    require(&caller, Role::Operator)?;
    if body.enroll_token {
        // A token lets a host into the fleet: an admin's call.
        require(&caller, Role::Admin)?;
    }
    let want_token = body.enroll_token;
    let reg = registration(body)?;
    let key = reg.name.clone();
    let reply = call(&state, key, Action::Register(reg), &caller, &headers).await?;
    let enroll_token = if want_token {
        Some(registration_token(&state, &reply.node.id).await?)
    } else {
        None
    };
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            data: view_of(&state, reply.node)?,
            enroll_token,
        }),
    ))
}

/// A `POST /nodes` body, checked (its hints) before the engine sees it.
pub fn registration(body: RegisterRequest) -> Result<Registration, ApiError> {
    let hints = body.hints().map_err(ApiError::BadRequest)?;
    Ok(Registration {
        name: body.name,
        hints,
        labels: body.labels,
        group: body.group,
    })
}

/// A one-use enrollment token that claims registration `reg`, valid until its
/// discovery timeout.
async fn registration_token(state: &AppState, reg: &NodeId) -> Result<String, ApiError> {
    let now = state.clock.now();
    let id: String = format!("reg.{reg}").chars().take(64).collect();
    let expires = now.plus(state.config.lifecycle.timeouts.registered);
    let (token, mut record) =
        crate::security::new_enroll_token(&id, state.anchor, now, Some(expires), Some(1), None);
    record.registration = Some(reg.clone());
    ask(state, |reply| Input::Keys {
        change: crate::engine::KeyChange::EnrollToken { id, record },
        reply,
    })
    .await?;
    Ok(token.to_string())
}

/// `PATCH /nodes/{node}`: name, labels, group, control_plane.
#[utoipa::path(
    patch,
    operation_id = "updateNode",
    path = "/api/v1/nodes/{node}",
    tag = "nodes",
    summary = "Change labels, group, control_plane or name",
    params(NodePath, IfMatch),
    request_body = NodeUpdateRequest,
    responses(
        (status = 200, body = Data<NodeView>),
        ChangeErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(key)): Checked<Path<String>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NodeUpdateRequest>,
) -> Result<Json<Data<NodeView>>, ApiError> {
    // Clearing control_plane would lift the guard against unmanaging a control-plane
    // node: that is an admin's call.
    require(
        &caller,
        if body.control_plane.is_some() {
            Role::Admin
        } else {
            Role::Operator
        },
    )?;
    let update = NodeUpdate {
        name: body.name,
        labels: body.labels,
        group: body.group,
        control_plane: body.control_plane,
    };
    let reply = call(&state, key, Action::Update(update), &caller, &headers).await?;
    Ok(Json(Data {
        data: view_of(&state, reply.node)?,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<u32>,
    offset: Option<u64>,
}

/// `GET /nodes/{node}/history?limit=50&offset=0`, newest first.
#[utoipa::path(
    get,
    operation_id = "getNodeHistory",
    path = "/api/v1/nodes/{node}/history",
    tag = "lifecycle",
    summary = "State transitions of a node, newest first",
    params(NodePath, HistoryQuery),
    responses(
        (status = 200, body = History),
        ReadErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn history(
    State(state): State<AppState>,
    Checked(Path(key)): Checked<Path<String>>,
    Checked(Query(q)): Checked<Query<HistoryQuery>>,
) -> Result<Json<History>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 200".into(),
        ));
    }
    let offset = usize::try_from(q.offset.unwrap_or(0)).unwrap_or(usize::MAX);
    let node = state.store.find_node(&key)?.ok_or(ApiError::NodeNotFound)?;
    let data = state.store.history(&node.id, limit as usize, offset)?;
    Ok(Json(History {
        data,
        total: node.history_len,
    }))
}
