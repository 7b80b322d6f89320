//! `/api/v1/nodes` handlers: list with pagination, and one node by id or name.

use axum::extract::{Path, Query, State};
use axum::Json;
use metalbus_protocol::api::{Data, NodeView, Page, Pagination};
use metalbus_protocol::lifecycle::NodeState;
use serde::Deserialize;

use super::error::ApiError;
pub use super::extract::Checked;
use super::views::node_view;
use super::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<u32>,
    per_page: Option<u32>,
    state: Option<String>,
    search: Option<String>,
}

pub const MAX_PER_PAGE: u32 = 100;
const DEFAULT_PER_PAGE: u32 = 20;

/// `GET /api/v1/nodes`: stable order (name, then id), filters, then the page.
pub async fn list(
    State(state): State<AppState>,
    Checked(Query(q)): Checked<Query<ListQuery>>,
) -> Result<Json<Page<NodeView>>, ApiError> {
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
    let wanted_state = q
        .state
        .as_deref()
        .map(str::parse::<NodeState>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let search = q.search.map(|s| s.to_lowercase());
    let store = state.store.clone();
    let mut nodes = store.nodes()?;
    nodes.retain(|n| {
        wanted_state.is_none_or(|s| n.state == s)
            && search.as_deref().is_none_or(|needle| {
                n.name.to_lowercase().contains(needle)
                    || n.id.as_str().contains(needle)
                    || n.hostname
                        .as_deref()
                        .is_some_and(|h| h.to_lowercase().contains(needle))
            })
    });
    nodes.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    let (pagination, range) = Pagination::of(page, per_page, nodes.len() as u64);
    let mut data = Vec::with_capacity(range.len());
    for node in nodes.into_iter().skip(range.start).take(range.len()) {
        let inv = store.inventory(&node.id)?;
        let hb = store.heartbeat(&node.id)?;
        data.push(node_view(node, inv.as_ref(), hb.as_ref()));
    }
    Ok(Json(Page { data, pagination }))
}

/// The API view of a node record, with its stored inventory and heartbeat.
pub fn view_of(state: &AppState, node: crate::store::NodeRecord) -> Result<NodeView, ApiError> {
    let inv = state.store.inventory(&node.id)?;
    let hb = state.store.heartbeat(&node.id)?;
    Ok(node_view(node, inv.as_ref(), hb.as_ref()))
}

/// `GET /api/v1/nodes/{node}`, by id or name.
pub async fn get(
    State(state): State<AppState>,
    Checked(Path(key)): Checked<Path<String>>,
) -> Result<Json<Data<NodeView>>, ApiError> {
    let node = state.store.find_node(&key)?.ok_or(ApiError::NodeNotFound)?;
    let inv = state.store.inventory(&node.id)?;
    let hb = state.store.heartbeat(&node.id)?;
    Ok(Json(Data {
        data: node_view(node, inv.as_ref(), hb.as_ref()),
    }))
}
