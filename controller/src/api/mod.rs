//! The operator HTTP API (DESIGN section 9): routes, shared state, and the server.

pub mod admin;
pub mod auth;
pub mod error;
pub mod events;
pub mod extract;
pub mod fleet;
pub mod lifecycle;
pub mod metrics;
pub mod nodes;
pub mod operations;
pub mod stream;
pub mod views;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, patch, post};
use axum::{middleware, Json, Router};
use metalbus_protocol::api::Health;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::config::ControllerConfig;
use crate::engine::Input;
use crate::live::LiveFeed;
use crate::store::Store;
use crate::telemetry::Telemetry;
use error::ApiError;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub telemetry: Arc<Telemetry>,
    /// True while the controller is subscribed to the broker.
    pub mqtt_connected: Arc<AtomicBool>,
    /// Changes go to the engine, the one writer of node data.
    pub engine: tokio::sync::mpsc::Sender<Input>,
    pub config: Arc<ControllerConfig>,
    pub clock: Arc<dyn Clock>,
    /// Committed changes, for the event stream.
    pub live: LiveFeed,
    /// Turns true when the controller stops: open event streams end then.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// Every route. `/api/v1/*` needs a bearer token; health and metrics do not.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/nodes", get(nodes::list).post(lifecycle::register))
        .route(
            "/nodes/:node",
            get(nodes::get)
                .patch(lifecycle::update)
                .delete(lifecycle::delete),
        )
        .route("/nodes/:node/state", patch(lifecycle::set_state))
        .route("/nodes/:node/manage", post(lifecycle::manage))
        .route("/nodes/:node/unmanage", post(lifecycle::unmanage))
        .route("/nodes/:node/retry", post(lifecycle::retry))
        .route("/nodes/:node/reboot", post(operations::reboot))
        .route("/nodes/:node/poweroff", post(operations::poweroff))
        .route("/nodes/:node/wake", post(operations::wake))
        .route("/nodes/:node/history", get(lifecycle::history))
        .route("/nodes/:node/events", get(events::list))
        .route("/nodes/:node/status", get(fleet::status))
        .route("/nodes/:node/inventory", get(fleet::inventory))
        .route("/usage", get(fleet::fleet))
        .route("/events/stream", get(stream::events))
        .route("/nodes/:node/metrics", get(metrics::get))
        .route("/plans", get(admin::plans))
        .route("/operations/:id", get(admin::operation))
        .route("/tokens", post(admin::create))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes open requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Ready when the store answers and the broker subscription is live.
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, (StatusCode, Json<Health>)> {
    let store_ok = state.store.nodes().is_ok();
    let mqtt_ok = state.mqtt_connected.load(Ordering::SeqCst);
    let status = match (store_ok, mqtt_ok) {
        (true, true) => "ok",
        (false, _) => "store unavailable",
        (true, false) => "not connected to the MQTT broker",
    };
    let body = Json(Health {
        status: status.into(),
        version: env!("CARGO_PKG_VERSION").into(),
    });
    if store_ok && mqtt_ok {
        Ok(body)
    } else {
        Err((StatusCode::SERVICE_UNAVAILABLE, body))
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.telemetry.render(),
    )
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
