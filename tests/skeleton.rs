//! The walking skeleton end to end: three real agents, the real controller, real MQTT on
//! loopback and a real redb file; Will, clean stop, and a controller restart.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metalbus_e2e::{eventually, AgentProc, Api, Controller, Watcher};
use serde_json::Value;

const IDS: [&str; 3] = ["e2e-node-a", "e2e-node-b", "e2e-node-c"];

/// Waits until the API shows `id` offline, and returns the node.
async fn wait_offline(api: &Api, id: &str) -> Value {
    eventually(Duration::from_secs(10), &format!("{id} offline"), || {
        let api = api.clone();
        async move {
            let n = api.node(id).await?;
            if n["online"] == false {
                Ok(n)
            } else {
                Err(n.to_string())
            }
        }
    })
    .await
}

fn by_id<'a>(nodes: &'a [Value], id: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_discovered_then_will_shutdown_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let mut agents: Vec<AgentProc> = IDS
        .iter()
        .map(|id| AgentProc::start(tmp.path(), &ctl.broker_url(), id))
        .collect();

    // Within 10 s: three discovered nodes with real cpu and memory specs.
    let nodes = eventually(
        Duration::from_secs(10),
        "three discovered nodes with specs",
        || {
            let api = api.clone();
            async move {
                let nodes = api.nodes().await?;
                let ready = IDS.iter().all(|id| {
                    by_id(&nodes, id).is_some_and(|n| {
                        n["state"] == "discovered"
                            && n["phase"] == "Unmanaged"
                            && n["specs"]["cpu_threads"].as_u64().is_some_and(|t| t > 0)
                            && n["specs"]["memory_gb"].as_f64().is_some_and(|m| m > 0.0)
                    })
                });
                if ready {
                    Ok(nodes)
                } else {
                    Err(format!("{nodes:?}"))
                }
            }
        },
    )
    .await;
    assert_eq!(nodes.len(), 3, "exactly the three agents: {nodes:?}");
    for n in &nodes {
        assert_eq!(n["online"], true);
        assert_eq!(n["status"]["clusterStatus"]["phase"], "Unmanaged");
        let threads = n["specs"]["cpu_threads"].as_u64().unwrap();
        let nproc = metalbus_e2e::nproc();
        assert_eq!(threads, nproc, "real inventory of this host");
    }
    // Same hostname on all three: names stay unique.
    let mut names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 3, "names must be unique: {names:?}");

    // Metrics flow every --metrics-interval (1 s): usage is filled and last_seen_at
    // keeps moving.
    let first = api.node(IDS[0]).await.unwrap();
    let moved = eventually(
        Duration::from_secs(10),
        "usage and a fresh heartbeat",
        || {
            let api = api.clone();
            let seen = first["last_seen_at"].clone();
            async move {
                let n = api.node(IDS[0]).await?;
                let filled = n["usage"]["cpu_percentage"].is_f64()
                    && n["usage"]["memory_percentage"].is_f64();
                if filled && n["last_seen_at"] != seen {
                    Ok(n)
                } else {
                    Err(n.to_string())
                }
            }
        },
    )
    .await;
    assert!(moved["usage"]["memory_percentage"].as_f64().unwrap() > 0.0);

    // Every node by name and by id.
    for n in &nodes {
        let by_name = api.node(n["name"].as_str().unwrap()).await.unwrap();
        assert_eq!(by_name["id"], n["id"]);
    }

    // Pagination: 2 per page covers all three exactly once.
    let (_, p1) = api.get("/api/v1/nodes?page=1&per_page=2").await.unwrap();
    let (_, p2) = api.get("/api/v1/nodes?page=2&per_page=2").await.unwrap();
    assert_eq!(p1["pagination"]["total"], 3);
    assert_eq!(p1["pagination"]["pages"], 2);
    let mut seen: Vec<String> = p1["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["data"].as_array().unwrap())
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    assert_eq!(seen, IDS.map(String::from).to_vec());

    // An independent subscriber gets each node's retained state.
    let watcher = Watcher::monitor(&ctl, "metalbus/v1/#").await;
    eventually(
        Duration::from_secs(5),
        "retained state for each node",
        || {
            let msgs = watcher.messages();
            async move {
                let missing: Vec<&str> = IDS
                    .iter()
                    .copied()
                    .filter(|id| {
                        !msgs.iter().any(|m| {
                            m.retain
                                && m.topic == format!("metalbus/v1/nodes/{id}/state")
                                && m.json()["state"] == "discovered"
                                && m.json()["id"] == *id
                        })
                    })
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("no retained state for {missing:?}"))
                }
            }
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the retained summary of 3 nodes",
        || {
            let msgs = watcher.messages();
            async move {
                msgs.iter()
                    .find(|m| {
                        m.topic == "metalbus/v1/summary" && m.retain && m.json()["total"] == 3
                    })
                    .map(|_| ())
                    .ok_or_else(|| format!("{} messages, no such summary", msgs.len()))
            }
        },
    )
    .await;

    // kill -9: the Will marks the node offline (reason lost).
    agents[0].kill9();
    let a = wait_offline(&api, IDS[0]).await;
    assert_eq!(a["offline_reason"], "lost");

    // SIGTERM: exit 0 and reason shutdown.
    let status = agents[1].terminate();
    assert!(status.success(), "agent exit status on SIGTERM: {status:?}");
    let b = wait_offline(&api, IDS[1]).await;
    assert_eq!(b["offline_reason"], "shutdown");
    let shutdown_seen = watcher.messages().iter().any(|m| {
        m.topic == format!("metalbus/v1/nodes/{}/status", IDS[1])
            && m.json()["online"] == false
            && m.json()["reason"] == "shutdown"
    });
    assert!(shutdown_seen, "the agent published reason: shutdown");

    // Restart the controller on the same data dir: everything is still there, and the
    // surviving agent comes back online on its own.
    let before = api.nodes().await.unwrap();
    assert!(
        ctl.terminate().success(),
        "controller exit status on SIGTERM"
    );
    drop(watcher);
    ctl.restart().await;
    let after = api.nodes().await.unwrap();
    assert_eq!(after.len(), 3);
    for id in IDS {
        let (b, a) = (by_id(&before, id).unwrap(), by_id(&after, id).unwrap());
        assert_eq!(a["name"], b["name"], "{id}");
        assert_eq!(
            a["specs"], b["specs"],
            "{id}: inventory survives the restart"
        );
        assert_eq!(a["created_at"], b["created_at"], "{id}");
        assert!(a["specs"]["cpu_threads"].as_u64().is_some(), "{id}");
    }
    assert_eq!(by_id(&after, IDS[0]).unwrap()["online"], false);
    // The surviving agent reconnects to the new broker by itself: a birth of its next
    // connection arrives and the node is online.
    let watcher = Watcher::monitor(&ctl, &format!("metalbus/v1/nodes/{}/status", IDS[2])).await;
    eventually(
        Duration::from_secs(20),
        "node c's birth on a new connection",
        || {
            let msgs = watcher.messages();
            async move {
                let conns: Vec<u64> = msgs
                    .iter()
                    .filter(|m| m.json()["online"] == true)
                    .filter_map(|m| m.json()["conn"].as_u64())
                    .collect();
                if conns.iter().any(|c| *c >= 2) {
                    Ok(())
                } else {
                    Err(format!("births seen with conn {conns:?}"))
                }
            }
        },
    )
    .await;
    let before_c = by_id(&before, IDS[2]).unwrap()["version"].as_u64().unwrap();
    eventually(
        Duration::from_secs(10),
        "node c's new birth applied",
        || {
            let api = api.clone();
            async move {
                let c = api.node(IDS[2]).await?;
                if c["online"] == true && c["version"].as_u64() > Some(before_c) {
                    Ok(())
                } else {
                    Err(c.to_string())
                }
            }
        },
    )
    .await;
    drop(agents);
}
