//! `GET /nodes/{node}/events`: a node's events (DESIGN section 7.5), newest first.

use axum::extract::{Path, Query, State};
use axum::Json;
use metalbus_protocol::event::{EventSource, EventType, Events};
use metalbus_protocol::Timestamp;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::Checked;
use super::openapi::{NodePath, ReadErrors};
use super::AppState;
use crate::store::EventFilter;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(rename = "type")]
    kind: Option<EventType>,
    source: Option<EventSource>,
    /// A duration back from now (`30m`, `1h`, `7d`) or an RFC 3339 time.
    since: Option<String>,
    limit: Option<u32>,
}

/// `GET /nodes/{node}/events?type=&source=&since=&limit=`.
#[utoipa::path(
    get,
    operation_id = "getNodeEvents",
    path = "/api/v1/nodes/{node}/events",
    tag = "observability",
    summary = "Events of a node (DESIGN 7.5), newest first; repeats are counted",
    params(NodePath, EventsQuery),
    responses(
        (status = 200, body = Events),
        ReadErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Checked(Path(key)): Checked<Path<String>>,
    Checked(Query(q)): Checked<Query<EventsQuery>>,
) -> Result<Json<Events>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    let filter = EventFilter {
        kind: q.kind,
        source: q.source,
        since: q
            .since
            .as_deref()
            .map(|s| parse_since(s, state.clock.now()))
            .transpose()?,
    };
    let node = state.store.find_node(&key)?.ok_or(ApiError::NodeNotFound)?;
    let data = state.store.events(&node.id, &filter, limit as usize)?;
    Ok(Json(Events { data }))
}

/// `since`: a duration back from `now` (seed 004 says "time duration") or a timestamp.
fn parse_since(s: &str, now: Timestamp) -> Result<Timestamp, ApiError> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now.minus(d));
    }
    Timestamp::parse(s).map_err(|_| {
        ApiError::BadRequest(format!(
            "since must be a duration like 30m, 1h or 7d, or an RFC 3339 time; got {:?}",
            s.chars().take(64).collect::<String>()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_timestamp() {
        let now = Timestamp::parse("2026-01-02T00:00:00Z").unwrap();
        assert_eq!(
            parse_since("1h", now).unwrap(),
            Timestamp::parse("2026-01-01T23:00:00Z").unwrap()
        );
        assert_eq!(
            parse_since("2025-12-31T10:00:00Z", now).unwrap(),
            Timestamp::parse("2025-12-31T10:00:00Z").unwrap()
        );
        assert!(parse_since("yesterday", now).is_err());
    }
}
