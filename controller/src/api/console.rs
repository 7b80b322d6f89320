//! The web console (issue 14): one page, its three scripts and its style sheet, compiled into
//! the binary (no CDN: management networks are often offline; no JavaScript build step).
//! The page holds no secret of its own: it asks for an API token, keeps it in the
//! browser session, and calls `/api/v1` with it like any other client, so the API's
//! roles decide what it may do.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const NODE_SCRIPT: &str = include_str!("console/node.js");
const CAMPAIGNS_SCRIPT: &str = include_str!("console/campaigns.js");
const STYLE: &str = include_str!("console/console.css");

/// A strict policy: the page's own script and style only, and calls to its own origin.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; \
    base-uri 'none'";

/// `/` and its four assets.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/console.js", get(script))
        .route("/node.js", get(node_script))
        .route("/campaigns.js", get(campaigns_script))
        .route("/console.css", get(style))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn node_script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", NODE_SCRIPT)
}

async fn campaigns_script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", CAMPAIGNS_SCRIPT)
}

async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
