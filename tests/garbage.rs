//! Untrusted input end to end: garbage on agent topics (unproven, or proven but
//! malformed) is refused, announced on `rejects`, counted, and ingest keeps running. Also the API's auth and error shapes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metalbus_e2e::{enroll_node, eventually, AgentProc, Api, Controller, Mosquitto, Watcher};

fn rejected_total(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("metalbus_ingest_rejected_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_refused_announced_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    // Through a Mosquitto without ACLs, so the garbage reaches the controller's own
    // checks (the embedded broker's front door refuses most of it first).
    let broker = Mosquitto::start(tmp.path(), "");
    let ctl = Controller::start(tmp.path(), &["--broker", &broker.url()]).await;
    let api = ctl.api();
    let watcher = Watcher::start(broker.port, "metalbus/v1/nodes/+/rejects").await;
    let raw = Watcher::start(broker.port, "nothing/here").await;

    // Node x is enrolled (its key proves the malformed payloads below came from it, so
    // they reach the decoder); node y is not.
    let key = enroll_node(&ctl, "x").await;
    let inv = "metalbus/v1/nodes/x/inventory";
    let wrong_types =
        br#"{"hostname":7,"system":{},"cpu":{"threads":"lots"},"memory":{},"disks":[],"nics":[],"os":{}}"#;
    let birth = br#"{"online":true,"conn":1,"session":"s","agent_version":"0","hostname":"y","boot_id":null,"metrics_interval_s":15,"ts":"2026-01-01T00:00:00Z"}"#;
    // (topic, payload, sealed with x's key, reason)
    let sent: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (inv, b"{this is not json}".to_vec(), true, "bad_json"),
        (inv, wrong_types.to_vec(), true, "bad_payload"),
        (inv, vec![b'{'; 1024 * 1024], false, "too_large"),
        (
            "metalbus/v1/nodes/NOT..VALID!/inventory",
            br#"{"system":{},"cpu":{},"memory":{},"disks":[],"nics":[],"os":{}}"#.to_vec(),
            false,
            "bad_node_id",
        ),
        (
            "metalbus/v1/nodes/y/status",
            birth.to_vec(),
            false,
            "not_enrolled",
        ),
        (
            "metalbus/v1/nodes/x/status",
            birth.to_vec(),
            false,
            "bad_proof",
        ),
    ];
    for (topic, payload, sealed, _) in &sent {
        if *sealed {
            raw.publish_as(&key, topic, payload.clone()).await;
        } else {
            raw.publish(topic, payload.clone()).await;
        }
    }

    // One reject per message, on the node's rejects topic, naming the topic.
    let rejects = eventually(Duration::from_secs(10), "six rejects", || {
        let msgs = watcher.messages();
        async move {
            if msgs.len() >= 6 {
                Ok(msgs)
            } else {
                Err(format!("{} rejects so far", msgs.len()))
            }
        }
    })
    .await;
    assert_eq!(rejects.len(), 6, "{rejects:?}");
    for (topic, _, _, _) in &sent {
        let id = topic.split('/').nth(3).unwrap();
        let r = rejects
            .iter()
            .find(|m| m.json()["topic"] == *topic)
            .unwrap_or_else(|| panic!("no reject for {topic}: {rejects:?}"));
        assert_eq!(r.topic, format!("metalbus/v1/nodes/{id}/rejects"));
        assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()));
        // None of these payloads had a readable seq: the field is there, and null.
        assert!(r.json().as_object().unwrap().contains_key("seq"));
        assert!(r.json()["seq"].is_null(), "{:?}", r.json());
    }

    // Counted by reason, visible through the API's Prometheus endpoint.
    let metrics = api.get_text("/metrics").await.unwrap();
    for (_, _, _, reason) in &sent {
        assert_eq!(rejected_total(&metrics, reason), 1, "{reason}\n{metrics}");
    }

    // Still serving, and still ingesting: a real agent registers afterwards.
    let (status, health) = api.get("/healthz").await.unwrap();
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let _agent = AgentProc::start(tmp.path(), &ctl.broker_url(), "after-garbage");
    eventually(Duration::from_secs(10), "a node after the garbage", || {
        let api = api.clone();
        async move { api.node("after-garbage").await.map(|_| ()) }
    })
    .await;
    let nodes = api.nodes().await.unwrap();
    assert!(nodes.iter().all(|n| n["id"] != "x" && n["id"] != "y"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_use_codes_and_need_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();

    let (status, body) = api.with_token(None).get("/api/v1/nodes").await.unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (401, Some("Primus.00003"))
    );
    let (status, body) = api
        .with_token(Some("mb_wrong"))
        .get("/api/v1/nodes")
        .await
        .unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (401, Some("Primus.00003"))
    );

    let (status, body) = api.get("/api/v1/nodes/no-such-node").await.unwrap();
    assert_eq!(status, 404);
    assert_eq!(body["errorCode"], "Primus.00005");
    assert_eq!(body["errorMessage"], "node not found");

    for bad in [
        "per_page=101",
        "per_page=0",
        "page=0",
        "page=abc",
        "state=bogus",
        "colour=red",
    ] {
        let (status, body) = api.get(&format!("/api/v1/nodes?{bad}")).await.unwrap();
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["errorCode"], "Primus.00002", "{bad}");
        assert!(body["errorMessage"].as_str().is_some_and(|m| !m.is_empty()));
    }

    let (status, body) = api.get("/api/v1/nodes").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["data"], serde_json::json!([]));
    assert_eq!(
        body["pagination"],
        serde_json::json!({"page":1,"per_page":20,"total":0,"pages":0})
    );

    // The admin token file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ctl.data_dir.join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Health and metrics need no token.
    let open = Api::new(&ctl.api_base(), None);
    assert_eq!(open.get("/healthz").await.unwrap().0, 200);
    // Bad bodies, wrong methods and undecodable paths get the API's error shape too.
    for (path, body) in [
        ("/api/v1/nodes/x/state", "{\"state\": 5}"),
        ("/api/v1/nodes/x/state", "not json"),
        ("/api/v1/nodes/x/manage", "{\"plna\": \"demo\"}"),
        ("/api/v1/nodes/x/manage", "{\"plan\": 5}"),
    ] {
        let method = if path.ends_with("state") {
            "PATCH"
        } else {
            "POST"
        };
        let resp = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}{path}", ctl.api_base()))
            .bearer_auth(ctl.token())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{method} {path} {body}");
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["errorCode"], "Primus.00002", "{method} {path} {body}");
    }
    let (status, body) = api.get("/api/v1/nodes/%FF").await.unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (400, Some("Primus.00002"))
    );
    let (status, body) = open.get("/nope").await.unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (404, Some("Primus.00005"))
    );
    assert!(open
        .get_text("/metrics")
        .await
        .unwrap()
        .contains("metalbus_nodes_online"));
}
