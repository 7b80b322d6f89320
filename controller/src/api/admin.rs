//! Fleet-wide endpoints: the configured plans and API tokens.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use metalbus_protocol::api::{
    Data, NodeRevoked, Operation, PlanView, TokenCreated, TokenKind, TokenRequest, TokenView,
    Whoami,
};
use metalbus_protocol::api::{ErrorBody, Role};
use metalbus_protocol::enroll::valid_token_id;
use metalbus_protocol::NodeId;

use super::auth::{new_token, Caller};
use super::error::ApiError;
use super::extract::{ApiJson, Checked};
use super::lifecycle::{ask, require};
use super::openapi::ReadErrors;
use super::AppState;
use crate::engine::{Input, KeyChange};
use crate::security;

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

/// `GET /whoami`: who the token is (any role).
#[utoipa::path(
    get,
    operation_id = "whoami",
    path = "/api/v1/whoami",
    tag = "admin",
    summary = "The calling token's name and role",
    responses(
        (status = 200, body = Data<Whoami>),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn whoami(Extension(caller): Extension<Caller>) -> Json<Data<Whoami>> {
    Json(Data {
        data: Whoami {
            name: caller.name,
            role: caller.role,
        },
    })
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

/// `POST /tokens` (admin): a new API token with a role (only its hash is kept), or an
/// enrollment token; either is shown once.
#[utoipa::path(
    post,
    operation_id = "createToken",
    path = "/api/v1/tokens",
    tag = "admin",
    summary = "Create an API or enrollment token (admin); it is shown once",
    request_body = TokenRequest,
    responses(
        (status = 201, body = Data<TokenCreated>),
        (status = 400, description = "Bad request (`Primus.00002`)", body = ErrorBody),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 403, description = "The token's role may not do this (`Primus.00004`)", body = ErrorBody),
        (status = 409, description = "A token with this name exists", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<(StatusCode, Json<Data<TokenCreated>>), ApiError> {
    require(&caller, Role::Admin)?;
    let now = state.clock.now();
    let created = match NewToken::check(req)? {
        NewToken::Api { name, role } => {
            let (token, hash, record) = new_token(&name, role, now);
            ask(&state, |reply| Input::Keys {
                change: KeyChange::ApiToken { hash, record },
                reply,
            })
            .await?;
            TokenCreated {
                name,
                kind: TokenKind::Api,
                role: Some(role),
                token,
                expires_at: None,
                max_uses: None,
                node: None,
            }
        }
        NewToken::Enroll {
            name,
            ttl,
            uses,
            node,
        } => {
            let expires_at = ttl.map(|t| now.plus(t));
            let (token, record) = security::new_enroll_token(
                &name,
                state.anchor,
                now,
                expires_at,
                uses,
                node.clone(),
            );
            ask(&state, |reply| Input::Keys {
                change: KeyChange::EnrollToken {
                    id: name.clone(),
                    record,
                },
                reply,
            })
            .await?;
            TokenCreated {
                name,
                kind: TokenKind::Enroll,
                role: None,
                token: token.to_string(),
                expires_at,
                max_uses: uses,
                node,
            }
        }
    };
    Ok((StatusCode::CREATED, Json(Data { data: created })))
}

/// A `POST /tokens` body, checked: the token to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewToken {
    Api {
        name: String,
        role: Role,
    },
    Enroll {
        name: String,
        ttl: Option<Duration>,
        uses: Option<u32>,
        node: Option<NodeId>,
    },
}

impl NewToken {
    /// Checks a `POST /tokens` body before anything is made or the engine is asked.
    pub fn check(req: TokenRequest) -> Result<NewToken, ApiError> {
        let name = req.name.trim().to_string();
        match req.kind.unwrap_or(TokenKind::Api) {
            TokenKind::Api => {
                if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                    return Err(ApiError::BadRequest(
                        "name must be 1 to 64 characters without control characters".into(),
                    ));
                }
                let Some(role) = req.role else {
                    return Err(ApiError::BadRequest("an API token needs a role".into()));
                };
                if req.ttl_s.is_some() || req.uses.is_some() || req.node.is_some() {
                    return Err(ApiError::BadRequest(
                        "ttl_s, uses and node are for enrollment tokens (kind \"enroll\")".into(),
                    ));
                }
                Ok(NewToken::Api { name, role })
            }
            TokenKind::Enroll => {
                if !valid_token_id(&name) {
                    return Err(ApiError::BadRequest(
                        "an enrollment token's name must be 1 to 64 lower-case letters, digits, \
                         '.', '_' or '-'"
                            .into(),
                    ));
                }
                if req.role.is_some() {
                    return Err(ApiError::BadRequest(
                        "an enrollment token has no role".into(),
                    ));
                }
                if req.uses == Some(0) || req.ttl_s == Some(0) {
                    return Err(ApiError::BadRequest(
                        "uses and ttl_s must be at least 1".into(),
                    ));
                }
                let ttl = req
                    .ttl_s
                    .filter(|s| *s <= MAX_TOKEN_TTL.as_secs())
                    .map(Duration::from_secs);
                if req.ttl_s.is_some() && ttl.is_none() {
                    return Err(ApiError::BadRequest(format!(
                        "ttl_s may be at most {} (10 years)",
                        MAX_TOKEN_TTL.as_secs()
                    )));
                }
                let node = req
                    .node
                    .map(NodeId::new)
                    .transpose()
                    .map_err(|e| ApiError::BadRequest(format!("node: {e}")))?;
                Ok(NewToken::Enroll {
                    name,
                    ttl,
                    uses: req.uses,
                    node,
                })
            }
        }
    }
}

/// Longest an enrollment token may be valid for.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `GET /tokens` (admin): every token of both kinds, without secrets.
#[utoipa::path(
    get,
    operation_id = "listTokens",
    path = "/api/v1/tokens",
    tag = "admin",
    summary = "List API and enrollment tokens (admin); secrets are never shown",
    responses(
        (status = 200, body = Data<Vec<TokenView>>),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 403, description = "The token's role may not do this (`Primus.00004`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Data<Vec<TokenView>>>, ApiError> {
    require(&caller, Role::Admin)?;
    let mut data: Vec<TokenView> = state
        .store
        .tokens()?
        .into_iter()
        .map(|(_, t)| TokenView {
            name: t.name,
            kind: TokenKind::Api,
            role: Some(t.role),
            created_at: t.created_at,
            expires_at: None,
            uses: None,
            max_uses: None,
            node: None,
        })
        .collect();
    data.extend(
        state
            .store
            .enroll_tokens()?
            .into_iter()
            .map(|(id, t)| TokenView {
                name: id,
                kind: TokenKind::Enroll,
                role: None,
                created_at: t.created_at,
                expires_at: t.expires_at,
                uses: Some(t.uses),
                max_uses: t.max_uses,
                node: t.node,
            }),
    );
    data.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
    Ok(Json(Data { data }))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenPath {
    /// The token's name.
    #[allow(dead_code)]
    name: String,
}

/// `DELETE /tokens/{name}` (admin): the token stops working at once.
#[utoipa::path(
    delete,
    operation_id = "revokeToken",
    path = "/api/v1/tokens/{name}",
    tag = "admin",
    summary = "Revoke an API or enrollment token (admin)",
    params(TokenPath),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 403, description = "The token's role may not do this (`Primus.00004`)", body = ErrorBody),
        (status = 404, description = "No token with this name (`Primus.00005`)", body = ErrorBody),
        (status = 409, description = "The token is the one making the request", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(name)): Checked<Path<String>>,
) -> Result<StatusCode, ApiError> {
    require(&caller, Role::Admin)?;
    if name == caller.name {
        return Err(ApiError::Conflict(
            "that is the token making this request; revoke it with another admin token".into(),
        ));
    }
    ask(&state, |reply| Input::Keys {
        change: KeyChange::RevokeToken { name },
        reply,
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /nodes/{node}/revoke` (admin): the node's credential ends now; its agent is
/// disconnected and enrolls again only with a token made after this.
#[utoipa::path(
    post,
    operation_id = "revokeNode",
    path = "/api/v1/nodes/{node}/revoke",
    tag = "admin",
    summary = "Revoke a node's credential (admin)",
    params(("node" = String, Path, description = "Node id or name")),
    responses(
        (status = 200, body = Data<NodeRevoked>),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 403, description = "The token's role may not do this (`Primus.00004`)", body = ErrorBody),
        (status = 404, description = "No such node (`Primus.00005`)", body = ErrorBody),
        (status = 409, description = "The node has no credential", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn revoke_node(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(key)): Checked<Path<String>>,
) -> Result<Json<Data<NodeRevoked>>, ApiError> {
    require(&caller, Role::Admin)?;
    // A node record by id or name, or else an enrolled id that never sent a birth.
    let id = match state.store.find_node(&key)? {
        Some(node) => node.id,
        None => state
            .store
            .credentials()?
            .into_iter()
            .find(|(id, _)| *id == key)
            .and_then(|(id, _)| NodeId::new(id).ok())
            .ok_or(ApiError::NodeNotFound)?,
    };
    ask(&state, |reply| Input::Keys {
        change: KeyChange::RevokeNode {
            id: id.clone(),
            user: Some(caller.name.clone()),
        },
        reply,
    })
    .await?;
    Ok(Json(Data {
        data: NodeRevoked {
            message: format!(
                "node {id}'s credential is revoked; its agent is disconnected and enrolls \
                 again only with a token made from now on"
            ),
            node_id: id,
        },
    }))
}
