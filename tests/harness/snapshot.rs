//! What the API shows of a whole store, to compare two stores (a fixture opened by a
//! newer build, a backup restored) through the same eyes as an operator.

use serde_json::{json, Value};

use crate::Api;

/// The fields of a node that only an operator or a job changes: what a restart, with
/// every agent gone, must not touch.
pub fn lasting(node: &Value) -> Value {
    let keep = [
        "id",
        "name",
        "state",
        "phase",
        "labels",
        "group",
        "control_plane",
        "plan",
        "install_attempts",
        "last_install_error",
        "hostname",
        "mac_addresses",
        "ip_addresses",
        "specs",
        "created_at",
        "state_changed_at",
    ];
    Value::Object(
        keep.iter()
            .map(|k| (k.to_string(), node[*k].clone()))
            .collect(),
    )
}

/// What the API shows of the store: nodes, each node's whole history and events, the
/// commands named in `operations`, and the tokens.
pub async fn snapshot(api: &Api, operations: &[String]) -> Value {
    let mut nodes = Vec::new();
    let mut histories = serde_json::Map::new();
    let mut events = serde_json::Map::new();
    for n in api.nodes().await.unwrap() {
        let id = n["id"].as_str().unwrap().to_string();
        let (_, h) = api
            .get(&format!("/api/v1/nodes/{id}/history?limit=200"))
            .await
            .unwrap();
        histories.insert(id.clone(), h);
        let (_, e) = api
            .get(&format!("/api/v1/nodes/{id}/events?limit=500"))
            .await
            .unwrap();
        events.insert(id, e["data"].clone());
        nodes.push(lasting(&n));
    }
    let mut ops = serde_json::Map::new();
    for id in operations {
        let (status, op) = api.get(&format!("/api/v1/operations/{id}")).await.unwrap();
        assert_eq!(status, 200, "{op}");
        ops.insert(id.clone(), op["data"].clone());
    }
    let (_, tokens) = api.get("/api/v1/tokens").await.unwrap();
    let tokens: Vec<Value> = tokens["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| json!({"name": t["name"], "kind": t["kind"], "role": t["role"], "created_at": t["created_at"]}))
        .collect();
    json!({"nodes": nodes, "history": histories, "events": events, "operations": ops, "tokens": tokens})
}
