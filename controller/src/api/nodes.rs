//! `/api/v1/nodes` handlers: list with pagination, and one node by id or name.

use axum::extract::{Path, Query, State};
use axum::Json;
use metalbus_protocol::api::ErrorBody;
use metalbus_protocol::api::{parse_label_filter, Data, NodeView, Page, Pagination};
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::lifecycle::{NodeState, Phase};
use serde::Deserialize;

use super::error::ApiError;
pub use super::extract::Checked;
use super::openapi::{NodePath, ReadErrors};
use super::views::node_view;
use super::AppState;
use crate::store::{NodeRecord, StoreError, StoredInventory};

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    page: Option<u32>,
    per_page: Option<u32>,
    /// One state, or several separated by commas.
    state: Option<String>,
    /// One phase, or several separated by commas.
    phase: Option<String>,
    online: Option<bool>,
    /// Case-insensitive text in the name, hostname, id, a MAC or an IP address.
    search: Option<String>,
    /// `key=value` (or just `key`: has the label); several separated by commas, all of
    /// which must match.
    label: Option<String>,
    group: Option<String>,
}

pub const MAX_PER_PAGE: u32 = 100;
const DEFAULT_PER_PAGE: u32 = 20;

/// Which nodes a list returns; every part given must match.
#[derive(Debug, Default, PartialEq)]
pub struct NodeFilter {
    states: Option<Vec<NodeState>>,
    phases: Option<Vec<Phase>>,
    online: Option<bool>,
    /// Lower-case.
    search: Option<String>,
    labels: Vec<(String, Option<String>)>,
    group: Option<String>,
}

impl NodeFilter {
    /// The filter a query asks for, or what is wrong with it.
    pub fn from_query(q: &ListQuery) -> Result<Self, String> {
        fn list<T: std::str::FromStr<Err = String>>(
            s: &Option<String>,
        ) -> Result<Option<Vec<T>>, String> {
            s.as_deref()
                .map(|s| s.split(',').map(|p| p.trim().parse()).collect())
                .transpose()
        }
        let labels = q
            .label
            .as_deref()
            .map(|s| {
                s.split(',')
                    .map(parse_label_filter)
                    .collect::<Result<Vec<_>, String>>()
            })
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            states: list(&q.state)?,
            phases: list(&q.phase)?,
            online: q.online,
            search: q
                .search
                .as_deref()
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty()),
            labels,
            group: q.group.clone(),
        })
    }

    /// The filter of a campaign's selector (its `nodes` list is resolved apart).
    pub fn from_selector(sel: &metalbus_protocol::campaign::Selector) -> Result<Self, String> {
        let labels = sel
            .label
            .iter()
            .map(|l| parse_label_filter(l))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            states: (!sel.state.is_empty()).then(|| sel.state.clone()),
            phases: None,
            online: sel.online,
            search: sel
                .search
                .as_deref()
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty()),
            labels,
            group: sel.group.clone(),
        })
    }

    /// Everything but the search's MAC and IP part, which needs the inventory.
    fn matches_record(&self, n: &NodeRecord) -> bool {
        self.states.as_ref().is_none_or(|s| s.contains(&n.state))
            && self
                .phases
                .as_ref()
                .is_none_or(|p| p.contains(&n.state.phase()))
            && self.online.is_none_or(|o| n.online == o)
            && self
                .group
                .as_ref()
                .is_none_or(|g| n.group.as_ref() == Some(g))
            && self.labels.iter().all(|(k, v)| match (n.labels.get(k), v) {
                (Some(have), Some(want)) => have == want,
                (Some(_), None) => true,
                (None, _) => false,
            })
    }

    /// Whether the search text is in the name, hostname, id, a MAC or an IP.
    fn matches_search(&self, n: &NodeRecord, inv: Option<&Inventory>) -> bool {
        let Some(needle) = self.search.as_deref() else {
            return true;
        };
        let has = |s: &str| s.to_lowercase().contains(needle);
        has(&n.name)
            || has(n.id.as_str())
            || n.hostname.as_deref().is_some_and(has)
            || inv.is_some_and(|inv| {
                inv.mac_addresses().iter().any(|m| has(m))
                    || inv.ip_addresses().iter().any(|a| has(a))
            })
    }

    /// Whether `n` is in the list; reads the inventory only when a search needs it.
    pub fn matches(
        &self,
        n: &NodeRecord,
        inventory: impl FnOnce() -> Result<Option<StoredInventory>, StoreError>,
    ) -> Result<bool, StoreError> {
        if !self.matches_record(n) {
            return Ok(false);
        }
        if self.search.is_none() {
            return Ok(true);
        }
        let inv = inventory()?;
        Ok(self.matches_search(n, inv.as_ref().map(|s| &s.inventory)))
    }
}

/// `GET /api/v1/nodes`: filters, then a stable order (name, then id), then the page.
#[utoipa::path(
    get,
    operation_id = "listNodes",
    path = "/api/v1/nodes",
    tag = "nodes",
    summary = "List nodes, filtered and paginated",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of nodes, by name then id", body = Page<NodeView>),
        (status = 400, description = "Bad request (`Primus.00002`)", body = ErrorBody),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
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
    let filter = NodeFilter::from_query(&q).map_err(ApiError::BadRequest)?;
    let store = state.store.clone();
    let mut nodes = Vec::new();
    for n in store.nodes()? {
        if filter.matches(&n, || store.inventory(&n.id))? {
            nodes.push(n);
        }
    }
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
#[utoipa::path(
    get,
    operation_id = "getNode",
    path = "/api/v1/nodes/{node}",
    tag = "nodes",
    summary = "One node",
    params(NodePath),
    responses(
        (status = 200, body = Data<NodeView>),
        ReadErrors,
    ),
    security(("bearer" = [])),
)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use metalbus_protocol::inventory::Nic;
    use metalbus_protocol::{NodeId, Timestamp};

    fn q(f: impl FnOnce(&mut ListQuery)) -> NodeFilter {
        let mut q = ListQuery::default();
        f(&mut q);
        NodeFilter::from_query(&q).unwrap()
    }

    fn node(name: &str) -> NodeRecord {
        let mut n = NodeRecord::discovered(
            NodeId::new(format!("id-{name}")).unwrap(),
            name.into(),
            Timestamp::from_unix_millis(0),
        );
        n.online = true;
        n
    }

    fn inv(mac: &str, ip: &str) -> Result<Option<StoredInventory>, StoreError> {
        let mut i = Inventory::default();
        i.nics.push(Nic {
            name: "eth0".into(),
            mac: Some(mac.into()),
            ipv4: vec![ip.parse().unwrap()],
            ..Nic::default()
        });
        Ok(Some(StoredInventory {
            received_at: Timestamp::from_unix_millis(0),
            inventory: i,
        }))
    }

    fn none() -> Result<Option<StoredInventory>, StoreError> {
        Ok(None)
    }

    #[test]
    fn each_filter_part_must_match() {
        let mut n = node("web-01");
        n.labels.insert("rack".into(), "r1".into());
        n.group = Some("edge".into());
        let yes = |f: NodeFilter| assert!(f.matches(&n, none).unwrap(), "{f:?}");
        let no = |f: NodeFilter| assert!(!f.matches(&n, none).unwrap(), "{f:?}");
        yes(q(|_| {}));
        yes(q(|q| q.state = Some("installing, discovered".into())));
        no(q(|q| q.state = Some("active".into())));
        yes(q(|q| q.phase = Some("Unmanaged".into())));
        no(q(|q| q.phase = Some("Managed".into())));
        yes(q(|q| q.online = Some(true)));
        no(q(|q| q.online = Some(false)));
        yes(q(|q| q.label = Some("rack=r1".into())));
        yes(q(|q| q.label = Some("rack".into())));
        no(q(|q| q.label = Some("rack=r2".into())));
        no(q(|q| q.label = Some("rack=r1,role=db".into())));
        yes(q(|q| q.group = Some("edge".into())));
        no(q(|q| q.group = Some("core".into())));
        yes(q(|q| q.search = Some("WEB".into())));
        yes(q(|q| q.search = Some("id-web".into())));
        no(q(|q| q.search = Some("db".into())));
    }

    #[test]
    fn search_finds_macs_and_ips_in_the_inventory() {
        let n = node("x");
        let f = q(|q| q.search = Some("AA:BB".into()));
        assert!(f
            .matches(&n, || inv("aa:bb:cc:dd:ee:ff", "10.0.0.7"))
            .unwrap());
        let f = q(|q| q.search = Some("10.0.0.7".into()));
        assert!(f
            .matches(&n, || inv("aa:bb:cc:dd:ee:ff", "10.0.0.7"))
            .unwrap());
        assert!(!f.matches(&n, none).unwrap());
        // Without a search the inventory is never read.
        let f = q(|q| q.online = Some(true));
        assert!(f.matches(&n, || panic!("read the inventory")).unwrap());
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        let bad = |f: fn(&mut ListQuery)| {
            let mut q = ListQuery::default();
            f(&mut q);
            NodeFilter::from_query(&q).unwrap_err()
        };
        assert!(bad(|q| q.state = Some("bogus".into())).contains("unknown state"));
        assert!(bad(|q| q.phase = Some("bogus".into())).contains("unknown phase"));
        assert!(bad(|q| q.label = Some("=v".into())).contains("key=value"));
    }
}
