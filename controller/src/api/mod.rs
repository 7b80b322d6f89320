//! The operator HTTP API (DESIGN section 9): routes, shared state, and the server.

pub mod admin;
pub mod auth;
pub mod backup;
pub mod campaigns;
pub mod console;
pub mod error;
pub mod events;
pub mod extract;
pub mod fleet;
pub mod lifecycle;
pub mod metrics;
pub mod nodes;
pub mod openapi;
pub mod operations;
pub mod stream;
pub mod views;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{middleware, Json, Router};
use metalbus_link::Clock;
use metalbus_protocol::api::Health;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::ControllerConfig;
use crate::engine::Input;
use crate::live::LiveFeed;
use crate::store::StoreReader;
use crate::telemetry::{Limit, Telemetry};
use error::ApiError;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Reads only: the engine is the one writer.
    pub store: StoreReader,
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
    /// The controller identity's anchor, which new enrollment tokens carry.
    pub anchor: [u8; 32],
    /// One permit per open event stream (`[http] max_event_streams`).
    pub streams: Arc<Semaphore>,
}

/// Declares a list of routes once: the `(method, path)` table (in OpenAPI's `{param}`
/// form) and the function that builds the axum router from the same lines, so the two
/// cannot differ. `openapi::tests` checks the table against the OpenAPI document.
macro_rules! routes {
    ($table:ident, $build:ident: $($method:ident $path:literal => $handler:path,)*) => {
        pub const $table: &[(&str, &str)] = &[$((stringify!($method), $path),)*];

        fn $build() -> Router<AppState> {
            Router::new()$(.route(&axum_path($path), axum::routing::$method($handler)))*
        }
    };
}

routes!(API_ROUTES, api_routes:
    get "/api/v1/nodes" => nodes::list,
    post "/api/v1/nodes" => lifecycle::register,
    get "/api/v1/nodes/{node}" => nodes::get,
    patch "/api/v1/nodes/{node}" => lifecycle::update,
    delete "/api/v1/nodes/{node}" => lifecycle::delete,
    patch "/api/v1/nodes/{node}/state" => lifecycle::set_state,
    post "/api/v1/nodes/{node}/manage" => lifecycle::manage,
    post "/api/v1/nodes/{node}/unmanage" => lifecycle::unmanage,
    post "/api/v1/nodes/{node}/retry" => lifecycle::retry,
    post "/api/v1/nodes/{node}/reboot" => operations::reboot,
    post "/api/v1/nodes/{node}/poweroff" => operations::poweroff,
    post "/api/v1/nodes/{node}/wake" => operations::wake,
    get "/api/v1/nodes/{node}/history" => lifecycle::history,
    get "/api/v1/nodes/{node}/events" => events::list,
    get "/api/v1/nodes/{node}/metrics" => metrics::get,
    get "/api/v1/nodes/{node}/status" => fleet::status,
    get "/api/v1/nodes/{node}/inventory" => fleet::inventory,
    get "/api/v1/usage" => fleet::fleet,
    get "/api/v1/events/stream" => stream::events,
    get "/api/v1/whoami" => admin::whoami,
    get "/api/v1/backup" => backup::backup,
    get "/api/v1/plans" => admin::plans,
    get "/api/v1/operations/{id}" => admin::operation,
    post "/api/v1/tokens" => admin::create,
    get "/api/v1/tokens" => admin::list,
    delete "/api/v1/tokens/{name}" => admin::revoke,
    post "/api/v1/nodes/{node}/revoke" => admin::revoke_node,
    post "/api/v1/campaigns" => campaigns::create,
    get "/api/v1/campaigns" => campaigns::list,
    get "/api/v1/campaigns/{id}" => campaigns::get,
    post "/api/v1/campaigns/{id}/pause" => campaigns::pause,
    post "/api/v1/campaigns/{id}/resume" => campaigns::resume,
    post "/api/v1/campaigns/{id}/cancel" => campaigns::cancel,
);

routes!(OPEN_ROUTES, open_routes:
    get "/healthz" => healthz,
    get "/readyz" => readyz,
    get "/metrics" => metrics,
    get "/api/v1/openapi.json" => openapi::document,
);

/// `/nodes/{node}` (OpenAPI) as axum 0.7 writes it: `/nodes/:node`.
fn axum_path(path: &str) -> String {
    path.replace('{', ":").replace('}', "")
}

/// Every route. The API needs a bearer token; health, metrics and the OpenAPI document
/// do not.
pub fn router(state: AppState) -> Router {
    let api = api_routes().route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    api.merge(open_routes())
        .merge(console::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.telemetry.clone(),
            request_deadline,
        ))
        .with_state(state)
}

/// How long a client has to send a request's headers; also how long an idle
/// keep-alive connection stays open (hyper starts the same timer while it waits for the
/// next request).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request must be answered (its body read, the engine asked) within this. Event
/// streams are answered at once; their body is not bounded.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP connections open at once by default (`[http] max_connections`); more wait in
/// the listen backlog until one closes, so the API cannot take every file descriptor
/// the embedded broker needs.
pub const MAX_CONNECTIONS: usize = 1024;
/// Default of `[http] max_event_streams`: event streams open at once. Each holds a
/// connection and a copy of every committed change, so they are fewer than connections.
pub const MAX_EVENT_STREAMS: usize = 256;
/// Largest request body read (413 beyond it).
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Largest request head (line and headers) read.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown`
/// resolves, then lets open requests finish. Each connection: the TLS handshake and the
/// headers within [`HEADER_TIMEOUT`], at most `[http] max_connections` at once.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(state.config.http_max_connections.max(1)));
    let telemetry = state.telemetry.clone();
    let app = router(state);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        if permits.available_permits() == 0 {
            telemetry.count_limit(Limit::HttpConnections);
        }
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let tcp = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (app, acceptor, stop) = (app.clone(), acceptor.clone(), stop_rx.clone());
        let telemetry = telemetry.clone();
        connections.spawn(async move {
            match acceptor {
                None => connection(tcp, app, stop, &telemetry).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => connection(tls, app, stop, &telemetry).await,
                        Ok(Err(_)) => {}
                        Err(_) => telemetry.count_limit(Limit::HttpSlowClients),
                    }
                }
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One HTTP/1.1 connection, until it closes or `stop` asks it to finish what it has.
async fn connection<S>(
    stream: S,
    app: Router,
    mut stop: watch::Receiver<bool>,
    telemetry: &Telemetry,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(MAX_HEAD_BYTES);
    let conn = builder
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        if e.is_timeout() {
            telemetry.count_limit(Limit::HttpSlowClients);
        } else if e.is_parse_too_large() {
            telemetry.count_limit(Limit::HttpTooLarge);
        }
    }
}

/// Answers 408 when a request is not answered within [`REQUEST_TIMEOUT`]: a client that
/// sends its body slowly, or a call the engine is slow with, holds nothing for ever.
async fn request_deadline(
    State(telemetry): State<Arc<Telemetry>>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => {
            if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
                telemetry.count_limit(Limit::HttpTooLarge);
            }
            response
        }
        Err(_) => {
            telemetry.count_limit(Limit::HttpSlowClients);
            ApiError::Timeout(format!(
                "the request was not complete within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))
            .into_response()
        }
    }
}

#[utoipa::path(
    get,
    operation_id = "healthz",
    path = "/healthz",
    tag = "health",
    summary = "Liveness",
    responses(
        (status = 200, body = Health),
    ),
)]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Ready when the store answers and the broker subscription is live.
#[utoipa::path(
    get,
    operation_id = "readyz",
    path = "/readyz",
    tag = "health",
    summary = "Readiness: the store answers and the broker subscription is live",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "Not ready, and why", body = Health),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, (StatusCode, Json<Health>)> {
    let store_ok = state.store.ping().is_ok();
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

#[utoipa::path(
    get,
    operation_id = "prometheusMetrics",
    path = "/metrics",
    tag = "health",
    summary = "Prometheus metrics (OpenMetrics text)",
    responses(
        (status = 200, description = "OpenMetrics text exposition", content_type = "application/openmetrics-text", body = String),
    ),
)]
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
