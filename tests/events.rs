//! Node events end to end (DESIGN section 7.5): a real agent's life (online, install,
//! offline, back) shows as events newest first; garbage on the node's topics collapses
//! into one counted `MessageRejected` warning; filters and the CLI read them.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metalbus_e2e::{eventually, steps_dir, AgentProc, Controller, Watcher};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

async fn reasons(api: &metalbus_e2e::Api, query: &str) -> Vec<(String, u64)> {
    let (status, body) = api
        .get(&format!("/api/v1/nodes/ev-1/events{query}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap().to_string(),
                e["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_life_is_told_by_its_events() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), &Controller::quick_plan("0.3"), &[]).await;
    let api = ctl.api();
    let steps = steps_dir(tmp.path(), &[]);
    let steps_arg = ["--steps-dir", steps.to_str().unwrap()];
    let mut agent = AgentProc::start_with(tmp.path(), &ctl.broker_url(), "ev-1", &steps_arg);
    api.wait_state("ev-1", "discovered", WAIT).await;
    api.post("/api/v1/nodes/ev-1/manage", None).await.unwrap();
    api.wait_state("ev-1", "active", WAIT).await;

    // The agent dies and comes back: NodeOffline, then NodeOnline a second time.
    agent.kill9();
    eventually(WAIT, "the node to go offline", || {
        let api = api.clone();
        async move {
            let n = api.node("ev-1").await?;
            if n["online"] == false {
                Ok(())
            } else {
                Err(n.to_string())
            }
        }
    })
    .await;
    let _agent = AgentProc::start_with(tmp.path(), &ctl.broker_url(), "ev-1", &steps_arg);
    eventually(WAIT, "NodeOnline counted twice", || {
        let api = api.clone();
        async move {
            let r = reasons(&api, "").await;
            if r.first() == Some(&("NodeOnline".to_string(), 2)) {
                Ok(r)
            } else {
                Err(format!("{r:?}"))
            }
        }
    })
    .await;
    assert_eq!(
        reasons(&api, "").await,
        vec![
            ("NodeOnline".to_string(), 2),
            ("NodeOffline".to_string(), 1),
            ("InstallCompleted".to_string(), 1),
            ("InstallStarted".to_string(), 1),
        ],
        "newest first; the repeat moved up with its count"
    );

    // Garbage from the node (made with its key, so it says something about the node)
    // three times: one Warning, counted. Unproven garbage makes no event at all.
    let _rejects = Watcher::monitor(&ctl, "metalbus/v1/nodes/ev-1/rejects").await;
    let key = metalbus_e2e::node_key(&tmp.path().join("agent-ev-1"));
    let raw = Watcher::node(ctl.mqtt_port, "ev-1", &key, None).await;
    raw.publish("metalbus/v1/nodes/ev-1/inventory", b"{not json".to_vec())
        .await;
    for _ in 0..3 {
        raw.publish_as(
            &key,
            "metalbus/v1/nodes/ev-1/inventory",
            b"{not json}".to_vec(),
        )
        .await;
    }
    eventually(WAIT, "three rejects collapsed into one event", || {
        let api = api.clone();
        async move {
            let r = reasons(&api, "?type=Warning").await;
            if r.contains(&("MessageRejected".to_string(), 3)) {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        }
    })
    .await;
    assert_eq!(
        reasons(&api, "?type=Warning").await,
        vec![
            ("MessageRejected".to_string(), 3),
            ("NodeOffline".to_string(), 1)
        ]
    );
    assert_eq!(
        reasons(&api, "?source=agent&since=1h").await,
        vec![
            ("MessageRejected".to_string(), 3),
            ("InstallCompleted".to_string(), 1),
            ("InstallStarted".to_string(), 1),
        ]
    );
    assert!(
        reasons(&api, "?since=2000-01-01T00:00:00Z&limit=1")
            .await
            .len()
            == 1
    );
    // Unknown, miscased, multibyte, huge and out-of-range values.
    let huge = format!("?type={}", "W".repeat(10_000));
    let refused = api
        .expect_bad_requests(
            &[
                "?type=Error",
                "?type=warning",
                "?source=%E2%82%AC",
                huge.as_str(),
                "?since=yesterday",
                "?since=99999999999999999999d",
                "?limit=0",
                "?limit=4294967296",
                "?limit=-1",
                "?colour=red",
            ]
            .map(|q| format!("/api/v1/nodes/ev-1/events{q}")),
        )
        .await;
    for body in &refused {
        let message = body["errorMessage"].as_str().unwrap_or_default();
        assert!(message.len() < 400, "{message:.400}");
    }
    // A `since` older than any clock can say still answers: every event.
    let (status, body) = api
        .get("/api/v1/nodes/ev-1/events?since=500000y")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = api.get("/api/v1/nodes/nope/events").await.unwrap();
    assert_eq!(status, 404);

    // The CLI: a table, and JSON with the filter.
    let cli = |args: &[&str]| {
        let out = ctl.cli(&[&["nodes", "events", "ev-1"], args].concat());
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let table = cli(&[]);
    assert!(table.starts_with("LAST SEEN"), "{table}");
    let rejected = table
        .lines()
        .find(|l| l.contains("MessageRejected"))
        .unwrap();
    assert!(
        rejected.contains("Warning") && rejected.contains(" 3 ") && rejected.contains("agent"),
        "{rejected}"
    );
    let json: Value = serde_json::from_str(&cli(&["--type", "Normal", "-o", "json"])).unwrap();
    let data = json["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{json}");
    assert!(data.iter().all(|e| e["type"] == "Normal"), "{json}");
}

/// An agent that hangs with its TCP connection open sends no Will; three silent metrics
/// intervals make its node offline all the same, and its first word makes it online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_offline_after_three_intervals_and_back_when_heard() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    // The harness's agents publish metrics every second.
    let agent = AgentProc::start(tmp.path(), &ctl.broker_url(), "ev-1");
    api.wait_state("ev-1", "discovered", WAIT).await;
    let online = |want: bool| {
        let api = api.clone();
        move || {
            let api = api.clone();
            async move {
                let n = api.node("ev-1").await?;
                if n["online"] == want {
                    Ok(n)
                } else {
                    Err(n.to_string())
                }
            }
        }
    };
    agent.freeze();
    let frozen = std::time::Instant::now();
    let n = eventually(WAIT, "the frozen agent's node offline", online(false)).await;
    let took = frozen.elapsed();
    assert_eq!(n["offline_reason"], "stale", "{n}");
    println!("frozen agent seen offline after {took:?}");
    assert!(
        took >= Duration::from_secs(2),
        "not before 3 intervals of silence: {took:?}"
    );
    let (_, body) = api.get("/api/v1/nodes/ev-1/events").await.unwrap();
    let first = &body["data"][0];
    assert_eq!(
        (&first["reason"], &first["type"], &first["message"]),
        (
            &Value::from("NodeOffline"),
            &Value::from("Warning"),
            &Value::from("nothing heard from the agent for 3s")
        ),
        "{body}"
    );
    agent.thaw();
    eventually(WAIT, "the thawed agent's node online", online(true)).await;
    let (_, body) = api.get("/api/v1/nodes/ev-1/events").await.unwrap();
    assert_eq!(body["data"][0]["reason"], "NodeOnline", "{body}");
    assert_eq!(
        body["data"][0]["message"], "agent heard from again",
        "{body}"
    );
}
