//! `GET /api/v1/events/stream`: Server-Sent Events of what the controller commits, for
//! `metalbus nodes watch` and dashboards.
//!
//! The stream opens with one `state` event per node (the current state), then `ready`,
//! then every committed change as it commits: `state`, `transition`, `event` and
//! `removed`. The reader subscribes before the snapshot is read, so a change that
//! commits in between is seen (possibly twice: states are idempotent), never missed.
//! A reader too slow to keep up gets `lagged` with the number of changes it missed.
//! At most `[http] max_event_streams` are open at once; one more is refused with 503.

use metalbus_protocol::api::ErrorBody;
use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use super::error::ApiError;
use super::AppState;
use crate::engine::Engine;
use crate::telemetry::Limit;

fn sse(name: &str, body: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(body).unwrap_or_default())
}

/// The stream: snapshot, `ready`, then live changes until the controller stops.
#[utoipa::path(
    get,
    operation_id = "streamEvents",
    path = "/api/v1/events/stream",
    tag = "observability",
    summary = "Server-Sent Events: a state per node, `ready`, then every committed change",
    responses(
        (status = 200, description = "`text/event-stream`: events `state`, `ready`, `transition`, `event`, `removed`, `campaign`, `lagged` (docs/PROTOCOL.md)", content_type = "text/event-stream", body = String),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 500, description = "Internal error (`Primus.00001`)", body = ErrorBody),
        (status = 503, description = "As many event streams are open as `[http] max_event_streams` allows (`Primus.00001`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn events(
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        state.telemetry.count_limit(Limit::EventStreams);
        return Err(ApiError::Busy(format!(
            "{} event streams are open, the most this controller allows ([http] max_event_streams); try again later",
            state.config.http_max_event_streams
        )));
    };
    let rx = state.live.subscribe();
    let mut nodes = state.store.nodes()?;
    nodes.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
    let mut snapshot: Vec<Event> = nodes
        .iter()
        .map(|n| sse("state", &Engine::state_message(n)))
        .collect();
    snapshot.push(sse("ready", &serde_json::json!({ "nodes": nodes.len() })));

    // The permit lives as long as the stream: it is freed when the client goes.
    let live = stream::unfold((rx, permit), |(mut rx, permit)| async move {
        let event = match rx.recv().await {
            Ok(ev) => sse(ev.name(), &*ev),
            Err(RecvError::Lagged(missed)) => {
                sse("lagged", &serde_json::json!({ "missed": missed }))
            }
            Err(RecvError::Closed) => return None,
        };
        Some((event, (rx, permit)))
    });
    let mut stopping = state.stopping.clone();
    let stop = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let all = stream::iter(snapshot)
        .chain(live)
        .take_until(stop)
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(all).keep_alive(KeepAlive::default()))
}
