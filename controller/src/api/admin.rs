//! Fleet-wide endpoints: the configured plans and API tokens.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use metalbus_protocol::api::{Data, Operation, PlanView, TokenCreated, TokenRequest};
use metalbus_protocol::api::{ErrorBody, Role};

use super::auth::{new_token, Caller};
use super::error::ApiError;
use super::extract::{ApiJson, Checked};
use super::lifecycle::{ask, require};
use super::openapi::ReadErrors;
use super::AppState;
use crate::engine::Input;

/// `GET /plans`.
#[utoipa::path(
    get,
    operation_id = "listPlans",
    path = "/api/v1/plans",
    tag = "admin",
    summary = "Configured install plans",
    responses(
        (status = 200, body = Data<Vec<PlanView>>),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn plans(State(state): State<AppState>) -> Json<Data<Vec<PlanView>>> {
    let data = state
        .config
        .plans
        .iter()
        .map(|(name, p)| PlanView {
            name: name.clone(),
            default: p.default,
            reboot_after: p.reboot_after,
            steps: p.steps.clone(),
        })
        .collect();
    Json(Data { data })
}

/// `GET /operations/{id}`: a command's status (a reboot, a wake, an install, ...).
#[utoipa::path(
    get,
    operation_id = "getOperation",
    path = "/api/v1/operations/{id}",
    tag = "operations",
    summary = "What became of a command or operation",
    params(("id" = String, Path, description = "Operation (command) id")),
    responses(
        (status = 200, body = Data<Operation>),
        ReadErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn operation(
    State(state): State<AppState>,
    Checked(Path(id)): Checked<Path<String>>,
) -> Result<Json<Data<Operation>>, ApiError> {
    let rec = state
        .store
        .command(&id)?
        .ok_or_else(|| ApiError::NotFound(format!("operation {id:?} not found")))?;
    Ok(Json(Data {
        data: Operation {
            id: rec.command.command_id.clone(),
            node_id: rec.node_id,
            kind: rec.command.kind,
            status: rec.status,
            reason: rec.reason,
            created_at: rec.created_at,
            updated_at: rec.updated_at,
            expires_at: rec.command.expires_at,
        },
    }))
}

/// `POST /tokens` (admin): a new token with a role; only its hash is kept.
#[utoipa::path(
    post,
    operation_id = "createToken",
    path = "/api/v1/tokens",
    tag = "admin",
    summary = "Create an API token (admin); it is shown once",
    request_body = TokenRequest,
    responses(
        (status = 201, body = Data<TokenCreated>),
        (status = 400, description = "Bad request (`Primus.00002`)", body = ErrorBody),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 403, description = "The token's role may not do this (`Primus.00004`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<(StatusCode, Json<Data<TokenCreated>>), ApiError> {
    require(&caller, Role::Admin)?;
    let role = req.role;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "name must be 1 to 64 characters without control characters".into(),
        ));
    }
    let (token, hash, record) = new_token(name, role, state.clock.now());
    ask(&state, |reply| Input::Token {
        hash,
        record,
        reply,
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Data {
            data: TokenCreated {
                name: name.to_string(),
                role,
                token,
            },
        }),
    ))
}
