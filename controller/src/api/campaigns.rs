//! Campaigns: one action over many nodes (DESIGN section 9). The API resolves the
//! selector against the store once, in the list's order (name, then id); the engine
//! runs the campaign (`engine/campaigns.rs`).

use std::collections::HashSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use metalbus_protocol::api::{Data, ErrorBody, Page, Pagination, Role};
use metalbus_protocol::campaign::{
    CampaignDetail, CampaignNodeView, CampaignRequest, CampaignView, CampaignWithNodes, Outcome,
};
use metalbus_protocol::NodeId;
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::extract::{ApiJson, Checked};
use super::lifecycle::{ask, require};
use super::nodes::{NodeFilter, MAX_PER_PAGE};
use super::AppState;
use crate::engine::{CampaignCall, CampaignOp, Input};

/// `?page=&per_page=` for lists, and `&outcome=` for a campaign's nodes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    page: Option<u32>,
    per_page: Option<u32>,
    /// Only nodes with this outcome (a campaign's nodes).
    outcome: Option<String>,
}

const DEFAULT_PER_PAGE: u32 = 20;

fn paging(q: &PageQuery) -> Result<(u32, u32), ApiError> {
    let page = q.page.unwrap_or(1);
    let per_page = q.per_page.unwrap_or(DEFAULT_PER_PAGE);
    if page == 0 {
        return Err(ApiError::BadRequest("page starts at 1".into()));
    }
    if per_page == 0 || per_page > MAX_PER_PAGE {
        return Err(ApiError::BadRequest(format!(
            "per_page must be between 1 and {MAX_PER_PAGE}"
        )));
    }
    Ok((page, per_page))
}

/// `POST /campaigns` (operator; `force` admin): the selector is resolved now and the set
/// stored; the first nodes start before the answer.
#[utoipa::path(
    post,
    operation_id = "createCampaign",
    path = "/api/v1/campaigns",
    tag = "campaigns",
    summary = "Start a campaign: one action over the nodes a selector picks, with a rollout and abort rules",
    request_body = CampaignRequest,
    responses(
        (status = 201, body = Data<CampaignView>),
        (status = 400, description = "Bad request, a selector that matches no node, an unknown plan (`Primus.00002`)", body = ErrorBody),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 403, description = "Viewer token, or `force` without admin (`Primus.00004`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<CampaignRequest>,
) -> Result<(StatusCode, Json<Data<CampaignView>>), ApiError> {
    require(&caller, Role::Operator)?;
    if request.force {
        require(&caller, Role::Admin)?;
    }
    request.check().map_err(ApiError::BadRequest)?;
    let nodes = resolve(&state, &request)?;
    let user = Some(caller.name.clone());
    let view = ask(&state, |reply| {
        Input::Campaign(Box::new(CampaignCall {
            op: CampaignOp::Create {
                request: Box::new(request),
                nodes,
            },
            user,
            reply,
        }))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(Data { data: view })))
}

/// The selector's nodes, in the node list's order (name, then id), each once.
fn resolve(state: &AppState, request: &CampaignRequest) -> Result<Vec<(NodeId, String)>, ApiError> {
    let sel = &request.selector;
    let mut nodes = Vec::new();
    if sel.nodes.is_empty() {
        let filter = NodeFilter::from_selector(sel).map_err(ApiError::BadRequest)?;
        let store = state.store.clone();
        for n in store.nodes()? {
            if filter.matches(&n, || store.inventory(&n.id))? {
                nodes.push(n);
            }
        }
    } else {
        let mut seen = HashSet::new();
        for key in &sel.nodes {
            let node = state.store.find_node(key)?.ok_or_else(|| {
                let shown: String = key.chars().take(64).collect();
                ApiError::BadRequest(format!("selector: no node {shown:?}"))
            })?;
            if seen.insert(node.id.clone()) {
                nodes.push(node);
            }
        }
    }
    if nodes.is_empty() {
        return Err(ApiError::BadRequest("the selector matches no node".into()));
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    Ok(nodes.into_iter().map(|n| (n.id, n.name)).collect())
}

/// `GET /campaigns`, newest first.
#[utoipa::path(
    get,
    operation_id = "listCampaigns",
    path = "/api/v1/campaigns",
    tag = "campaigns",
    summary = "List campaigns, newest first",
    params(PageQuery),
    responses(
        (status = 200, body = Page<CampaignView>),
        (status = 400, description = "Bad request (`Primus.00002`)", body = ErrorBody),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Checked(Query(q)): Checked<Query<PageQuery>>,
) -> Result<Json<Page<CampaignView>>, ApiError> {
    if q.outcome.is_some() {
        return Err(ApiError::BadRequest(
            "outcome filters a campaign's nodes, not the list".into(),
        ));
    }
    let (page, per_page) = paging(&q)?;
    let all = state.store.campaigns()?;
    let (pagination, range) = Pagination::of(page, per_page, all.len() as u64);
    let data = all
        .into_iter()
        .skip(range.start)
        .take(range.len())
        .map(|c| c.view)
        .collect();
    Ok(Json(Page { data, pagination }))
}

/// `GET /campaigns/{id}`: the campaign and one page of its nodes.
#[utoipa::path(
    get,
    operation_id = "getCampaign",
    path = "/api/v1/campaigns/{id}",
    tag = "campaigns",
    summary = "A campaign, its counts, and one page of its nodes' outcomes",
    params(("id" = String, Path, description = "Campaign id"), PageQuery),
    responses(
        (status = 200, body = CampaignDetail),
        (status = 400, description = "Bad request (`Primus.00002`)", body = ErrorBody),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 404, description = "No such campaign (`Primus.00005`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn get(
    State(state): State<AppState>,
    Checked(Path(id)): Checked<Path<String>>,
    Checked(Query(q)): Checked<Query<PageQuery>>,
) -> Result<Json<CampaignDetail>, ApiError> {
    let (page, per_page) = paging(&q)?;
    let outcome: Option<Outcome> = q
        .outcome
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let campaign = state
        .store
        .campaign(&id)?
        .ok_or_else(|| ApiError::NotFound("campaign not found".into()))?
        .view;
    let (pagination, nodes) = match outcome {
        None => {
            let total = u64::from(campaign.counts.total);
            let (pagination, range) = Pagination::of(page, per_page, total);
            let nodes = state.store.campaign_nodes(&id, range.start, range.len())?;
            (pagination, nodes.into_iter().map(|(_, n)| n.view).collect())
        }
        Some(outcome) => {
            let all: Vec<CampaignNodeView> = state
                .store
                .campaign_nodes(&id, 0, usize::MAX)?
                .into_iter()
                .map(|(_, n)| n.view)
                .filter(|n| n.outcome == outcome)
                .collect();
            let (pagination, range) = Pagination::of(page, per_page, all.len() as u64);
            (
                pagination,
                all.into_iter()
                    .skip(range.start)
                    .take(range.len())
                    .collect(),
            )
        }
    };
    Ok(Json(CampaignDetail {
        data: CampaignWithNodes { campaign, nodes },
        pagination,
    }))
}

/// Sends a pause, resume or cancel to the engine.
async fn control(
    state: &AppState,
    caller: &Caller,
    op: CampaignOp,
) -> Result<Json<Data<CampaignView>>, ApiError> {
    require(caller, Role::Operator)?;
    let user = Some(caller.name.clone());
    let view = ask(state, |reply| {
        Input::Campaign(Box::new(CampaignCall { op, user, reply }))
    })
    .await?;
    Ok(Json(Data { data: view }))
}

/// `POST /campaigns/{id}/pause` (operator).
#[utoipa::path(
    post,
    operation_id = "pauseCampaign",
    path = "/api/v1/campaigns/{id}/pause",
    tag = "campaigns",
    summary = "Pause a running campaign: no node starts, nodes in flight finish",
    params(("id" = String, Path, description = "Campaign id")),
    responses(
        (status = 200, body = Data<CampaignView>),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 403, description = "Viewer token (`Primus.00004`)", body = ErrorBody),
        (status = 404, description = "No such campaign (`Primus.00005`)", body = ErrorBody),
        (status = 409, description = "The campaign is not running (`Primus.00006`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn pause(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(id)): Checked<Path<String>>,
) -> Result<Json<Data<CampaignView>>, ApiError> {
    control(&state, &caller, CampaignOp::Pause(id)).await
}

/// `POST /campaigns/{id}/resume` (operator).
#[utoipa::path(
    post,
    operation_id = "resumeCampaign",
    path = "/api/v1/campaigns/{id}/resume",
    tag = "campaigns",
    summary = "Resume a paused campaign; its abort rules judge what comes after",
    params(("id" = String, Path, description = "Campaign id")),
    responses(
        (status = 200, body = Data<CampaignView>),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 403, description = "Viewer token (`Primus.00004`)", body = ErrorBody),
        (status = 404, description = "No such campaign (`Primus.00005`)", body = ErrorBody),
        (status = 409, description = "The campaign is not paused (`Primus.00006`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(id)): Checked<Path<String>>,
) -> Result<Json<Data<CampaignView>>, ApiError> {
    control(&state, &caller, CampaignOp::Resume(id)).await
}

/// `POST /campaigns/{id}/cancel` (operator).
#[utoipa::path(
    post,
    operation_id = "cancelCampaign",
    path = "/api/v1/campaigns/{id}/cancel",
    tag = "campaigns",
    summary = "Cancel a campaign: pending nodes are skipped, nodes in flight finish",
    params(("id" = String, Path, description = "Campaign id")),
    responses(
        (status = 200, body = Data<CampaignView>),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 403, description = "Viewer token (`Primus.00004`)", body = ErrorBody),
        (status = 404, description = "No such campaign (`Primus.00005`)", body = ErrorBody),
        (status = 409, description = "The campaign has ended (`Primus.00006`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Checked(Path(id)): Checked<Path<String>>,
) -> Result<Json<Data<CampaignView>>, ApiError> {
    control(&state, &caller, CampaignOp::Cancel(id)).await
}
