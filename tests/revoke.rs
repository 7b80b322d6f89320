//! Revocation and token management through the real CLI: a revoked node is cut off at
//! once and needs a token made afterwards; `tokens create --enroll`, `tokens list` and
//! `tokens revoke` work for both kinds of token.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use metalbus_e2e::{eventually, fleet_token_file, AgentProc, Controller};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn tokens(ctl: &Controller) -> Vec<Value> {
    serde_json::from_str(&ok(ctl.cli(&["tokens", "list", "-o", "json"]))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_cut_off_at_once_and_enrolls_again_only_with_a_new_token() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let agent = AgentProc::start(tmp.path(), &ctl.broker_url(), "rv-1");
    api.wait_state("rv-1", "discovered", WAIT).await;
    api.wait_online("rv-1", true, WAIT).await;

    let lost_before = agent.log_text().matches("broker connection lost").count();
    let revoked_at = Instant::now();
    let said = ok(ctl.cli(&["nodes", "revoke", "rv-1"]));
    assert!(said.contains("revoked"), "{said}");
    // Disconnected by the door within 2 s.
    eventually(
        Duration::from_secs(2),
        "the agent's connection to close",
        || {
            let n = agent.log_text().matches("broker connection lost").count();
            async move {
                (n > lost_before)
                    .then_some(())
                    .ok_or_else(|| "still connected".to_string())
            }
        },
    )
    .await;
    println!("disconnected {:?} after the revoke", revoked_at.elapsed());
    let n = api.node("rv-1").await.unwrap();
    assert_eq!(n["online"], false, "{n}");
    assert_eq!(n["offline_reason"], "revoked", "{n}");
    let (_, events) = api
        .get("/api/v1/nodes/rv-1/events?type=Warning")
        .await
        .unwrap();
    assert_eq!(events["data"][0]["reason"], "CredentialRevoked", "{events}");
    // Refused on reconnect, with a log line that says what to do.
    eventually(WAIT, "the refusal in the agent's log", || {
        let log = agent.log_text();
        async move {
            log.contains("the broker refused this node's credential")
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_revoke_only_a_newer_token_enrolls_the_node_and_tokens_are_managed() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    {
        let _first = AgentProc::start(tmp.path(), &ctl.broker_url(), "rv-2");
        api.wait_state("rv-2", "discovered", WAIT).await;
        ok(ctl.cli(&["nodes", "revoke", "rv-2"]));
        let again = ctl.cli(&["nodes", "revoke", "rv-2"]);
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("no credential"));
    }
    // The host is reinstalled (its state dir is gone) and tries the old fleet token.
    let reinstalled = tmp.path().join("reinstalled");
    std::fs::create_dir_all(&reinstalled).unwrap();
    let fleet = fleet_token_file(tmp.path());
    let old = AgentProc::start_with(
        &reinstalled,
        &ctl.broker_url(),
        "rv-2",
        &["--enroll-token-file", fleet.to_str().unwrap()],
    );
    eventually(WAIT, "the old token refused", || {
        let log = old.log_text();
        async move {
            log.contains("was revoked at")
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        }
    })
    .await;
    drop(old);

    // A one-use token for exactly this node, made now.
    let token = ok(ctl.cli(&[
        "tokens",
        "create",
        "--enroll",
        "--name",
        "rv-2-again",
        "--uses",
        "1",
        "--node",
        "rv-2",
        "--ttl",
        "1h",
    ]));
    assert!(token.starts_with("MB1:"), "{token}");
    let file = tmp.path().join("rv-2.token");
    std::fs::write(&file, &token).unwrap();
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let _back = AgentProc::start_with(
        &fresh,
        &ctl.broker_url(),
        "rv-2",
        &["--enroll-token-file", file.to_str().unwrap()],
    );
    api.wait_online("rv-2", true, WAIT).await;

    // tokens list: both kinds, with their limits, and no secret anywhere.
    let list = tokens(&ctl);
    let by = |name: &str| list.iter().find(|t| t["name"] == name).cloned();
    let admin = by("admin").unwrap();
    assert_eq!(
        (admin["kind"].as_str(), admin["role"].as_str()),
        (Some("api"), Some("admin"))
    );
    let fleet_row = by("fleet").unwrap();
    assert_eq!(fleet_row["kind"], "enroll");
    let again = by("rv-2-again").unwrap();
    assert_eq!(
        (again["uses"].as_u64(), again["max_uses"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(again["node"], "rv-2");
    assert!(again["expires_at"].is_string());
    let text = ok(ctl.cli(&["tokens", "list"]));
    assert!(
        text.contains("rv-2-again") && text.contains("1/1"),
        "{text}"
    );
    assert!(!text.contains(token.trim()) && !text.contains("MB1:"));

    // Names are unique across kinds; an API token can be revoked by name.
    let dup = ctl.cli(&["tokens", "create", "--name", "fleet", "--role", "viewer"]);
    assert!(!dup.status.success());
    let viewer = ok(ctl.cli(&["tokens", "create", "--name", "grafana", "--role", "viewer"]));
    let as_viewer = api.with_token(Some(viewer.trim()));
    assert_eq!(as_viewer.get("/api/v1/nodes").await.unwrap().0, 200);
    ok(ctl.cli(&["tokens", "revoke", "grafana"]));
    assert_eq!(as_viewer.get("/api/v1/nodes").await.unwrap().0, 401);
    ok(ctl.cli(&["tokens", "revoke", "rv-2-again"]));
    assert!(tokens(&ctl)
        .iter()
        .all(|t| t["name"] != "rv-2-again" && t["name"] != "grafana"));
    let missing = ctl.cli(&["tokens", "revoke", "no-such"]);
    assert!(!missing.status.success());
    // The token making the request cannot revoke itself.
    let own = ctl.cli(&["tokens", "revoke", "admin"]);
    assert!(!own.status.success());
    assert!(String::from_utf8_lossy(&own.stderr).contains("making this request"));

    // Hostile bodies: refused with 400, and nothing is made.
    let before = tokens(&ctl).len();
    for body in [
        serde_json::json!({"name": "é-token", "kind": "enroll"}),
        serde_json::json!({"name": "Upper", "kind": "enroll"}),
        serde_json::json!({"name": "a".repeat(65), "kind": "enroll"}),
        serde_json::json!({"name": "x\u{0}y", "role": "viewer"}),
        serde_json::json!({"name": "a".repeat(65), "role": "viewer"}),
        serde_json::json!({"name": "t1", "kind": "enroll", "ttl_s": u64::MAX}),
        serde_json::json!({"name": "t2", "kind": "enroll", "uses": 0}),
        serde_json::json!({"name": "t3", "kind": "enroll", "node": "Not/A/Node"}),
        serde_json::json!({"name": "t4", "kind": "enroll", "role": "admin"}),
        serde_json::json!({"name": "t5", "role": "viewer", "uses": 3}),
        serde_json::json!({"name": "t6"}),
        serde_json::json!({"name": "t7", "role": "viewer", "extra": 1}),
        serde_json::json!({"name": "t8", "kind": "root"}),
    ] {
        let (status, answer) = api
            .post("/api/v1/tokens", Some(body.clone()))
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            answer["errorMessage"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    assert_eq!(tokens(&ctl).len(), before, "nothing was made");
    let (status, _) = api
        .delete(&format!("/api/v1/tokens/{}", "%E2%82%AC".repeat(300)))
        .await
        .unwrap();
    assert_eq!(status, 404);
}
