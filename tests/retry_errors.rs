//! The retry API's refusals, each with seed 000's code and message, and the roles.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metalbus_e2e::{steps_dir, AgentProc, Api, Controller};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

async fn controller(dir: &std::path::Path) -> Controller {
    let config = r#"
[lifecycle]
max_install_attempts = 1
retry_backoff = "200ms"
deprovision_plan = "broken"

[plans.demo]
default = true
steps = [ { name = "quick", script = "demo-step", args = { seconds = "0.2" }, timeout_s = 30 } ]

[plans.broken]
steps = [ { name = "doomed", script = "demo-step", args = { fail = "always" }, timeout_s = 30 } ]
"#;
    Controller::with_config(dir, config, &[]).await
}

fn agent(dir: &std::path::Path, ctl: &Controller, id: &str) -> AgentProc {
    let steps = steps_dir(dir, &[]);
    AgentProc::start_with(
        dir,
        &ctl.broker_url(),
        id,
        &["--steps-dir", steps.to_str().unwrap()],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_refusals_carry_the_seed_codes_and_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = controller(tmp.path()).await;
    let api = ctl.api();
    let _ok = agent(tmp.path(), &ctl, "ok-1");
    let mut doomed = agent(tmp.path(), &ctl, "doomed-1");
    let _cp = agent(tmp.path(), &ctl, "cp-1");
    for id in ["ok-1", "doomed-1", "cp-1"] {
        api.wait_state(id, "discovered", WAIT).await;
    }

    // Unknown node: 404.
    let (status, body) = api.post("/api/v1/nodes/nope/retry", None).await.unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (404, Some("Primus.00005"))
    );
    assert_eq!(body["errorMessage"], "node not found");

    // Active node: 400 with the phase in the message.
    api.post("/api/v1/nodes/ok-1/manage", None).await.unwrap();
    api.wait_state("ok-1", "active", WAIT).await;
    let (status, body) = api.post("/api/v1/nodes/ok-1/retry", None).await.unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (400, Some("Primus.00002"))
    );
    assert_eq!(
        body["errorMessage"],
        "node is not in a failed state, current phase: Managed. Only ManagedFailed or UnmanagedFailed nodes can be retried"
    );

    // A viewer may read but not retry: 403, before anything else is checked.
    let (status, created) = api
        .post(
            "/api/v1/tokens",
            Some(json!({"name": "watcher", "role": "viewer"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let viewer = api.with_token(created["data"]["token"].as_str());
    assert_eq!(viewer.get("/api/v1/nodes/ok-1").await.unwrap().0, 200);
    // Each token can ask who it is (the web console hides what its role may not do).
    assert_eq!(
        viewer.get("/api/v1/whoami").await.unwrap(),
        (200, json!({"data": {"name": "watcher", "role": "viewer"}}))
    );
    assert_eq!(
        api.get("/api/v1/whoami").await.unwrap(),
        (200, json!({"data": {"name": "admin", "role": "admin"}}))
    );
    let (status, body) = api
        .with_token(Some("mb_forged"))
        .get("/api/v1/whoami")
        .await
        .unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (401, Some("Primus.00003"))
    );
    for path in ["/api/v1/nodes/ok-1/retry", "/api/v1/nodes/nope/retry"] {
        let (status, body) = viewer.post(path, None).await.unwrap();
        assert_eq!(
            (status, body["errorCode"].as_str()),
            (403, Some("Primus.00004"))
        );
        assert_eq!(body["errorMessage"], "Forbidden");
    }
    // An operator may retry but not force.
    let (_, op) = api
        .post(
            "/api/v1/tokens",
            Some(json!({"name": "ops", "role": "operator"})),
        )
        .await
        .unwrap();
    let operator = api.with_token(op["data"]["token"].as_str());
    let (status, _) = operator
        .patch(
            "/api/v1/nodes/ok-1/state",
            json!({"state": "migrating", "force": true}),
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    // Retiring, like DELETE, and changing control_plane are for admins.
    let (status, _) = operator
        .patch("/api/v1/nodes/ok-1/state", json!({"state": "retired"}))
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, _) = operator
        .patch("/api/v1/nodes/ok-1", json!({"control_plane": true}))
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, body) = operator
        .patch("/api/v1/nodes/ok-1", json!({"labels": {"rack": "r7"}}))
        .await
        .unwrap();
    assert_eq!(
        (status, body["data"]["labels"]["rack"].as_str()),
        (200, Some("r7"))
    );

    // Hostile token requests: unknown, miscased and huge roles; empty, control-character
    // and over-long (multibyte) names; a viewer or an operator asking for a token. Each
    // is refused with a short message, and none of them makes a token.
    let huge_role = "r".repeat(1 << 20);
    let bad: [(&Api, Value, u16, &str); 8] = [
        (
            &api,
            json!({"name": "x", "role": "root"}),
            400,
            "use one of: viewer, operator, admin",
        ),
        (
            &api,
            json!({"name": "x", "role": "ADMIN"}),
            400,
            "unknown role",
        ),
        (
            &api,
            json!({"name": "x", "role": huge_role}),
            400,
            "unknown role",
        ),
        (&api, json!({"name": "x", "role": 3}), 400, "role"),
        (
            &api,
            json!({"name": "", "role": "viewer"}),
            400,
            "name must be",
        ),
        (
            &api,
            json!({"name": "a\u{7}b", "role": "viewer"}),
            400,
            "name must be",
        ),
        (
            &api,
            json!({"name": "\u{e9}".repeat(33), "role": "viewer"}),
            400,
            "name must be",
        ),
        (
            &viewer,
            json!({"name": "mine", "role": "admin"}),
            403,
            "Forbidden",
        ),
    ];
    for (client, request, want, says) in bad {
        let (status, body) = client.post("/api/v1/tokens", Some(request)).await.unwrap();
        let message = body["errorMessage"].as_str().unwrap_or_default();
        assert_eq!(status, want, "{message}");
        assert!(
            message.contains(says) && message.len() < 300,
            "{message:.300}"
        );
    }
    let (status, _) = operator
        .post(
            "/api/v1/tokens",
            Some(json!({"name": "mine", "role": "viewer"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "only admins make tokens");
    // 64 bytes of multibyte name is still a name.
    let (status, body) = api
        .post(
            "/api/v1/tokens",
            Some(json!({"name": "\u{e9}".repeat(32), "role": "viewer"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");

    // A failed install whose agent is offline: the machine is not ready.
    api.post(
        "/api/v1/nodes/doomed-1/manage",
        Some(json!({"plan": "broken"})),
    )
    .await
    .unwrap();
    api.wait_state("doomed-1", "install_failed", WAIT).await;
    doomed.kill9();
    api.wait_state("doomed-1", "install_failed", WAIT).await;
    metalbus_e2e::eventually(WAIT, "doomed-1 offline", || {
        let api = api.clone();
        async move {
            let n = api.node("doomed-1").await?;
            if n["online"] == false {
                Ok(())
            } else {
                Err(n.to_string())
            }
        }
    })
    .await;
    let (status, body) = operator
        .post("/api/v1/nodes/doomed-1/retry", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (400, Some("Primus.00002"))
    );
    assert_eq!(
        body["errorMessage"],
        "machine is not ready, please wait and try again"
    );

    // A control-plane node whose deprovision failed cannot be unmanaged.
    api.post("/api/v1/nodes/cp-1/manage", None).await.unwrap();
    api.wait_state("cp-1", "active", WAIT).await;
    api.post("/api/v1/nodes/cp-1/unmanage", None).await.unwrap();
    let failed = api.wait_state("cp-1", "deprovision_failed", WAIT).await;
    assert_eq!(failed["phase"], "UnmanagedFailed");
    let (status, body) = api
        .patch("/api/v1/nodes/cp-1", json!({"control_plane": true}))
        .await
        .unwrap();
    assert_eq!(
        (status, body["data"]["control_plane"].as_bool()),
        (200, Some(true))
    );
    let (status, body) = api.post("/api/v1/nodes/cp-1/retry", None).await.unwrap();
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (400, Some("Primus.00002"))
    );
    assert_eq!(
        body["errorMessage"],
        "control plane node cannot be unmanaged"
    );

    // If-Match: a stale version is a 409.
    let n = api.node("ok-1").await.unwrap();
    let stale = n["version"].as_u64().unwrap() - 1;
    let resp = reqwest::Client::new()
        .patch(format!("{}/api/v1/nodes/ok-1", ctl.api_base()))
        .bearer_auth(ctl.token())
        .header("If-Match", stale.to_string())
        .json(&json!({"labels": {"rack": "r1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], "Primus.00006");
}
