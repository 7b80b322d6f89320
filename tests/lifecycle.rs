//! The install lifecycle end to end: real controller, real agents running real step
//! scripts, real MQTT, real redb. Happy path, a flaky step, a step that always fails with
//! the retry limit and the retry API, concurrent retries, and a step that times out.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metalbus_e2e::{process_with, steps_dir, AgentProc, Controller, Watcher};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A controller with short backoffs and the test plans.
async fn controller(dir: &std::path::Path, extra_lifecycle: &str) -> Controller {
    let counter = dir.join("flaky.count");
    let config = format!(
        r#"
[lifecycle]
max_install_attempts = 3
retry_backoff = "300ms"
{extra_lifecycle}

[plans.demo]
default = true
steps = [
  {{ name = "partition", script = "demo-step", args = {{ seconds = "0.6", message = "partitioning" }}, timeout_s = 30 }},
  {{ name = "image", script = "demo-step", args = {{ seconds = "1.5", message = "writing" }}, timeout_s = 30 }},
]

[plans.flaky]
steps = [ {{ name = "flaky", script = "demo-step", args = {{ seconds = "0.2", fail_times = "2", counter_file = "{}" }}, timeout_s = 30 }} ]

[plans.broken]
steps = [
  {{ name = "warmup", script = "demo-step", args = {{ seconds = "0.5" }}, timeout_s = 30 }},
  {{ name = "doomed", script = "demo-step", args = {{ fail = "always" }}, timeout_s = 30 }},
]

[plans.missing]
steps = [ {{ name = "nope", script = "no-such-script", timeout_s = 30 }} ]

[plans.hang]
steps = [ {{ name = "hang", script = "hang-step", timeout_s = 1 }} ]
"#,
        counter.display()
    );
    Controller::with_config(dir, &config, &[]).await
}

/// A script that leaves a grandchild behind and never finishes.
const HANG: &str = "#!/bin/sh\nsleep 300.4242 &\necho PROGRESS 10 hanging\nsleep 300.4243\n";

fn agent(dir: &std::path::Path, ctl: &Controller, id: &str) -> AgentProc {
    let steps = steps_dir(dir, &[("hang-step", HANG)]);
    AgentProc::start_with(
        dir,
        &ctl.broker_url(),
        id,
        &["--steps-dir", steps.to_str().unwrap()],
    )
}

fn triple(from: &str, to: &str, by: &str) -> (String, String, String) {
    (from.into(), to.into(), by.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_manage_to_active_with_progress_and_audit() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = controller(tmp.path(), "").await;
    let api = ctl.api();
    let watcher = Watcher::monitor(&ctl, "metalbus/v1/events/transitions").await;
    let _agent = agent(tmp.path(), &ctl, "happy-1");
    api.wait_state("happy-1", "discovered", WAIT).await;

    let (status, body) = api
        .post("/api/v1/nodes/happy-1/manage", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "pending");
    assert_eq!(body["data"]["plan"], "demo");
    assert_eq!(body["message"], "Node transitioned to pending");

    // Progress is visible through the API while the job runs.
    let running = metalbus_e2e::eventually(WAIT, "progress while installing", || {
        let api = api.clone();
        async move {
            let n = api.node("happy-1").await?;
            let pct = n["progress"]["percent"].as_u64().unwrap_or(0);
            if n["state"] == "installing"
                && pct > 0
                && pct < 100
                && n["progress"]["step"].is_string()
            {
                Ok(n)
            } else {
                Err(n.to_string())
            }
        }
    })
    .await;
    assert_eq!(running["phase"], "Managing");

    let done = api.wait_state("happy-1", "active", WAIT).await;
    assert_eq!(done["install_attempts"], 0);
    assert_eq!(done["progress"], Value::Null);
    assert_eq!(
        api.transitions("happy-1").await.unwrap(),
        vec![
            triple("discovered", "pending", "admin"),
            triple("pending", "installing", "node_report"),
            triple("installing", "installed", "node_report"),
            triple("installed", "active", "system"),
        ]
    );
    let (_, history) = api
        .get("/api/v1/nodes/happy-1/history?limit=1")
        .await
        .unwrap();
    assert_eq!(history["total"], 4);
    assert_eq!(history["data"].as_array().unwrap().len(), 1);
    assert_eq!(history["data"][0]["to_state"], "active", "newest first");
    let (_, first) = api.get("/api/v1/nodes/happy-1/history").await.unwrap();
    assert_eq!(first["data"][3]["user"], "admin", "the token's name");

    // Each transition was also published as it committed.
    metalbus_e2e::eventually(WAIT, "4 transition events", || {
        let n = watcher.messages().len();
        async move {
            if n >= 4 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        }
    })
    .await;
    let tos: Vec<String> = watcher
        .messages()
        .iter()
        .map(|m| {
            m.json()["to_state"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(tos, ["pending", "installing", "installed", "active"]);

    // The transition counter agrees with the history.
    let metrics = api.get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains(
            r#"metalbus_state_transitions_total{from="installed",to="active",triggered_by="system"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_step_is_retried_until_it_installs() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = controller(tmp.path(), "").await;
    let api = ctl.api();
    let states = Watcher::monitor(&ctl, "metalbus/v1/nodes/flaky-1/state").await;
    let _agent = agent(tmp.path(), &ctl, "flaky-1");
    api.wait_state("flaky-1", "discovered", WAIT).await;
    let (status, body) = api
        .post(
            "/api/v1/nodes/flaky-1/manage",
            Some(json!({"plan": "flaky"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let done = api.wait_state("flaky-1", "active", WAIT).await;
    assert_eq!(
        done["install_attempts"], 0,
        "reset by the successful install"
    );

    // Every committed change is on the retained state topic: attempts 1 and 2 were seen.
    let seen: Vec<u64> = states
        .messages()
        .iter()
        .filter_map(|m| m.json()["install_attempts"].as_u64())
        .collect();
    assert!(
        seen.contains(&1) && seen.contains(&2),
        "install_attempts seen: {seen:?}"
    );
    assert!(!seen.contains(&3));
    // Two InstallRetry warnings, in the log and as events (newest first).
    assert_eq!(
        ctl.log_text().matches("install will be sent again").count(),
        2,
        "two retries in the controller log"
    );
    let (status, warnings) = api
        .get("/api/v1/nodes/flaky-1/events?type=Warning")
        .await
        .unwrap();
    assert_eq!(status, 200, "{warnings}");
    let retries: Vec<&str> = warnings["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "InstallRetry")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(retries.len(), 2, "{warnings}");
    assert!(
        retries[0].starts_with("install attempt 2/3 failed"),
        "{retries:?}"
    );
    assert!(
        retries[1].starts_with("install attempt 1/3 failed"),
        "{retries:?}"
    );
    assert!(
        warnings["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] == "Warning"),
        "{warnings}"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("flaky.count"))
            .unwrap()
            .trim(),
        "3",
        "the step ran three times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_always_fails_ends_install_failed_and_retry_runs_it_again() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = controller(tmp.path(), "").await;
    let api = ctl.api();
    let _agent = agent(tmp.path(), &ctl, "broken-1");
    api.wait_state("broken-1", "discovered", WAIT).await;
    let (status, _) = api
        .post(
            "/api/v1/nodes/broken-1/manage",
            Some(json!({"plan": "broken"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let failed = api.wait_state("broken-1", "install_failed", WAIT).await;
    assert_eq!(failed["install_attempts"], 3);
    assert_eq!(failed["phase"], "ManagedFailed");
    assert!(failed["last_install_error"]
        .as_str()
        .is_some_and(|e| e.contains("doomed") && e.contains("simulated")));
    let (_, history) = api
        .get("/api/v1/nodes/broken-1/history?limit=1")
        .await
        .unwrap();
    let last = &history["data"][0];
    assert_eq!(
        (
            last["from_state"].as_str(),
            last["to_state"].as_str(),
            last["triggered_by"].as_str()
        ),
        (
            Some("installing"),
            Some("install_failed"),
            Some("node_report")
        )
    );
    assert_eq!(last["metadata"]["attempt"], 3);
    assert!(last["metadata"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("doomed")));

    // The retry limit: PATCH without force is refused with the seed's message.
    let (status, body) = api
        .patch("/api/v1/nodes/broken-1/state", json!({"state": "pending"}))
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(body["errorCode"], "Primus.00002");
    assert_eq!(
        body["errorMessage"],
        "Max install attempts (3) exceeded. Use force=true to reset and retry."
    );

    // The retry API: 20 at once, exactly one wins; the job runs again.
    let before = api.transitions("broken-1").await.unwrap().len();
    let calls = (0..20).map(|_| {
        let api = api.clone();
        tokio::spawn(async move {
            api.post("/api/v1/nodes/broken-1/retry", None)
                .await
                .unwrap()
        })
    });
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    let ok: Vec<&(u16, Value)> = answers.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(ok.len(), 1, "exactly one retry succeeds: {answers:?}");
    let body = &ok[0].1;
    assert_eq!(body["message"], "retry initiated successfully");
    assert_eq!(body["nodeId"], "broken-1");
    assert_eq!(body["previousPhase"], "ManagedFailed");
    assert_eq!(body["currentPhase"], "Managing");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 200) {
        assert_eq!(*status, 400, "{body}");
        assert!(body["errorMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("node is not in a failed state")));
    }
    let again = api.wait_state("broken-1", "install_failed", WAIT).await;
    assert_eq!(again["install_attempts"], 3);
    let after = api.transitions("broken-1").await.unwrap();
    assert!(
        after.len() >= before + 3,
        "retry ran the job again: {after:?}"
    );
    assert_eq!(after[before], triple("install_failed", "pending", "admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_past_its_timeout_is_killed_with_its_children() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = controller(tmp.path(), "").await;
    let api = ctl.api();
    let _agent = agent(tmp.path(), &ctl, "hang-1");
    api.wait_state("hang-1", "discovered", WAIT).await;
    let (status, _) = api
        .post("/api/v1/nodes/hang-1/manage", Some(json!({"plan": "hang"})))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let n = metalbus_e2e::eventually(WAIT, "the first timeout", || {
        let api = api.clone();
        async move {
            let n = api.node("hang-1").await?;
            if n["install_attempts"].as_u64() >= Some(1) {
                Ok(n)
            } else {
                Err(n.to_string())
            }
        }
    })
    .await;
    let err = n["last_install_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("step 'hang' timed out after 1s"), "{err}");
    // Neither the step nor the grandchild it started is left (give the kill a moment).
    metalbus_e2e::eventually(Duration::from_secs(5), "no hang-step processes", || async {
        if process_with("300.4242") || process_with("300.4243") {
            Err("still running".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    api.wait_state("hang-1", "install_failed", WAIT).await;
    assert!(!process_with("300.4242") && !process_with("300.4243"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmanage_returns_to_discovered_and_delete_retires() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = controller(tmp.path(), "").await;
    let api = ctl.api();
    let _a = agent(tmp.path(), &ctl, "gone-1");
    let _b = agent(tmp.path(), &ctl, "gone-2");
    for id in ["gone-1", "gone-2"] {
        api.wait_state(id, "discovered", WAIT).await;
        let (status, _) = api
            .post(&format!("/api/v1/nodes/{id}/manage"), None)
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    for id in ["gone-1", "gone-2"] {
        api.wait_state(id, "active", WAIT).await;
    }
    let (status, body) = api
        .post("/api/v1/nodes/gone-1/unmanage", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["data"]["state"].as_str()),
        (200, Some("deprovisioning"))
    );
    api.wait_state("gone-1", "discovered", WAIT).await;
    let h = api.transitions("gone-1").await.unwrap();
    assert_eq!(
        h[h.len() - 2..],
        [
            triple("active", "deprovisioning", "admin"),
            triple("deprovisioning", "discovered", "node_report")
        ]
    );

    let (status, body) = api.delete("/api/v1/nodes/gone-2").await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["message"], "Node deletion initiated");
    api.wait_state("gone-2", "retired", WAIT).await;
    let h = api.transitions("gone-2").await.unwrap();
    assert_eq!(
        h.last().unwrap(),
        &triple("deprovisioning", "retired", "node_report")
    );

    // Retired refuses every transition.
    for to in ["discovered", "pending", "active", "deprovisioning", "error"] {
        for force in [false, true] {
            let (status, body) = api
                .patch(
                    "/api/v1/nodes/gone-2/state",
                    json!({"state": to, "force": force}),
                )
                .await
                .unwrap();
            assert_eq!(status, 400, "{to} force={force}: {body}");
            assert!(body["errorMessage"]
                .as_str()
                .unwrap()
                .contains("valid targets: none"));
        }
    }
    for path in ["manage", "unmanage", "retry"] {
        let (status, _) = api
            .post(&format!("/api/v1/nodes/gone-2/{path}"), None)
            .await
            .unwrap();
        assert_eq!(status, 400, "{path} on a retired node");
    }
    let (status, _) = api.delete("/api/v1/nodes/gone-2?force=true").await.unwrap();
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_the_agent_refuses_counts_as_a_failed_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = controller(tmp.path(), "").await;
    let api = ctl.api();
    let _agent = agent(tmp.path(), &ctl, "refused-1");
    api.wait_state("refused-1", "discovered", WAIT).await;
    let (status, _) = api
        .post(
            "/api/v1/nodes/refused-1/manage",
            Some(json!({"plan": "missing"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let n = api.wait_state("refused-1", "install_failed", WAIT).await;
    assert_eq!(n["install_attempts"], 3);
    assert_eq!(
        n["last_install_error"],
        "agent refused the command: unknown script 'no-such-script'"
    );
    let h = api.transitions("refused-1").await.unwrap();
    assert_eq!(
        h,
        vec![
            triple("discovered", "pending", "admin"),
            triple("pending", "install_failed", "node_report"),
        ]
    );
}
