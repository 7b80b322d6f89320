//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` attributes and the API types' schemas, so it cannot drift from
//! the code. The test below checks that it lists exactly the router's routes.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use metalbus_protocol::api::ErrorBody;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    admin, backup, campaigns, events, fleet, lifecycle, metrics, nodes, operations, stream,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Metalbus API",
        description = "Operator API of the Metalbus controller: nodes, their lifecycle, events, metrics and operations (DESIGN section 9). Errors are `{\"errorCode\", \"errorMessage\"}` with codes Primus.00001 to Primus.00006.",
        license(name = "Apache-2.0")
    ),
    paths(
        nodes::list,
        lifecycle::register,
        nodes::get,
        lifecycle::update,
        lifecycle::delete,
        lifecycle::set_state,
        lifecycle::manage,
        lifecycle::unmanage,
        lifecycle::retry,
        operations::reboot,
        operations::poweroff,
        operations::wake,
        lifecycle::history,
        events::list,
        metrics::get,
        fleet::status,
        fleet::inventory,
        fleet::fleet,
        stream::events,
        admin::whoami,
        backup::backup,
        admin::plans,
        admin::operation,
        admin::create,
        admin::list,
        admin::revoke,
        admin::revoke_node,
        campaigns::create,
        campaigns::list,
        campaigns::get,
        campaigns::pause,
        campaigns::resume,
        campaigns::cancel,
        super::healthz,
        super::readyz,
        super::metrics,
        document,
    ),
    modifiers(&BearerToken),
    tags(
        (name = "nodes", description = "Nodes: list, show, register, update, inventory"),
        (name = "lifecycle", description = "State changes: manage, unmanage, retry, transitions, history"),
        (name = "operations", description = "Reboot, poweroff, Wake-on-LAN, and their status"),
        (name = "observability", description = "Events, metrics history, status, fleet usage, the live stream"),
        (name = "admin", description = "Plans and tokens"),
        (name = "campaigns", description = "One action over many nodes, with a rollout and abort rules"),
        (name = "health", description = "Liveness, readiness, Prometheus metrics, this document (no token)"),
    )
)]
pub struct ApiDoc;

/// The errors a read of one node can answer.
#[derive(utoipa::IntoResponses)]
pub enum ReadErrors {
    #[response(status = 400, description = "Bad request (`Primus.00002`)")]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "No or bad token (`Primus.00003`)")]
    Unauthorized(ErrorBody),
    #[response(status = 404, description = "No such node (`Primus.00005`)")]
    NotFound(ErrorBody),
}

/// The errors a change to one node can answer.
#[derive(utoipa::IntoResponses)]
pub enum ChangeErrors {
    #[response(
        status = 400,
        description = "Bad request or refused transition (`Primus.00002`)"
    )]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "No or bad token (`Primus.00003`)")]
    Unauthorized(ErrorBody),
    #[response(
        status = 403,
        description = "The token's role may not do this (`Primus.00004`)"
    )]
    Forbidden(ErrorBody),
    #[response(status = 404, description = "No such node (`Primus.00005`)")]
    NotFound(ErrorBody),
    #[response(
        status = 409,
        description = "Conflict or stale version (`Primus.00006`)"
    )]
    Conflict(ErrorBody),
}

/// The node a route is about.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NodePath {
    /// Node id or name.
    #[allow(dead_code)]
    node: String,
}

/// `If-Match` on a change: refused (409) unless the node's version is this.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfMatch {
    /// Refuse (409) unless the node's `version` is this.
    #[param(rename = "If-Match")]
    #[allow(dead_code)]
    if_match: Option<u64>,
}

/// Declares the `bearer` scheme the operations refer to.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc.to_pretty_json().unwrap_or_default()
    })
}

#[utoipa::path(
    get,
    operation_id = "openapiDocument",
    path = "/api/v1/openapi.json",
    tag = "health",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object)),
)]
pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["get", "post", "put", "patch", "delete"] {
                if item.get(method).is_some() {
                    out.insert((method.to_string(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_is_routed() {
        let routed: BTreeSet<(String, String)> = super::super::API_ROUTES
            .iter()
            .chain(super::super::OPEN_ROUTES)
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        let documented = documented();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routes without documentation: {undocumented:?}; documented but not routed: {unrouted:?}"
        );
        assert_eq!(routed.len(), 37);
    }

    #[test]
    fn api_operations_need_the_bearer_token_and_open_ones_do_not() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for (method, path) in super::super::API_ROUTES {
            let op = &doc["paths"][path][method];
            assert_eq!(
                op["security"][0]["bearer"],
                serde_json::json!([]),
                "{method} {path}"
            );
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path}: no 401"
            );
        }
        for (method, path) in super::super::OPEN_ROUTES {
            assert!(
                doc["paths"][path][method]["security"].is_null(),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn every_enum_schema_lists_the_wire_names() {
        use metalbus_protocol::api::{MetricsPeriod, Role};
        use metalbus_protocol::command::{CommandKind, CommandStatus, JobKind};
        use metalbus_protocol::event::{EventReason, EventSource, EventType};
        use metalbus_protocol::lifecycle::{NodeState, Phase};
        use metalbus_protocol::machine::Trigger;
        use metalbus_protocol::status::OfflineReason;

        fn names<T: std::fmt::Display>(all: impl IntoIterator<Item = T>) -> serde_json::Value {
            all.into_iter().map(|v| v.to_string()).collect()
        }
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let expected = [
            ("Role", names(Role::ALL)),
            ("CommandStatus", names(CommandStatus::ALL)),
            ("CommandKind", names(CommandKind::ALL)),
            ("JobKind", names(JobKind::ALL)),
            ("OfflineReason", names(OfflineReason::ALL)),
            ("NodeState", names(NodeState::ALL)),
            ("Phase", names(Phase::ALL)),
            ("Trigger", names(Trigger::ALL)),
            ("EventReason", names(EventReason::ALL)),
            ("EventSource", names(EventSource::ALL)),
            ("EventType", names(EventType::ALL)),
            ("MetricsPeriod", names(MetricsPeriod::ALL)),
        ];
        for (schema, wire) in expected {
            assert_eq!(schemas[schema]["enum"], wire, "{schema}");
        }
    }
}
