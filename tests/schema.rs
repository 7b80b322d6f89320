//! Store schema versions (issue 15): a store written by an earlier release opens in this
//! build, migrated forward, with every record intact. `tests/fixtures/store-schema1/`
//! holds a store that schema 1's controller wrote (nodes discovered, installed and
//! labelled, their history and events, commands, API tokens of each role) and what its
//! API showed then (`expected.json`). The fixture was made by the ignored test below;
//! it must never be made again by a later build, or it would test nothing.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use metalbus_e2e::{snapshot, Controller, SimProc};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// The data dir's files the fixture keeps: the store and the secrets that go with it
/// (test secrets, made for the fixture).
const FILES: [&str; 4] = [
    "metalbus.redb",
    "admin.token",
    "identity.key",
    "enroll.token",
];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/store-schema1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema1_store_opens_with_every_record_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("metalbus-data");
    std::fs::create_dir_all(&data).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    for file in FILES {
        std::fs::copy(fixture().join(file), data.join(file)).unwrap();
        // Git keeps no modes but the executable bit; the controller wants its secrets 0600.
        std::fs::set_permissions(data.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();

    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let operations: Vec<String> = expected["operations"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(operations.len() >= 2, "{operations:?}");
    let now = snapshot(&api, &operations).await;

    assert_eq!(now["nodes"], expected["nodes"], "nodes");
    assert_eq!(now["history"], expected["history"], "history");
    assert_eq!(now["operations"], expected["operations"], "commands");
    assert_eq!(now["tokens"], expected["tokens"], "tokens");
    // Events: every one the old store held is still there, unchanged (the new
    // controller may add its own, e.g. a node going offline, and counts repeats).
    for (id, was) in expected["events"].as_object().unwrap() {
        let is = now["events"][id].as_array().unwrap();
        for event in was.as_array().unwrap() {
            let same = |e: &&Value| {
                e["reason"] == event["reason"]
                    && e["message"] == event["message"]
                    && e["first_timestamp"] == event["first_timestamp"]
            };
            assert!(is.iter().any(|e| same(&e)), "{id}: {event} is gone");
        }
    }
    // Schema 2's step made the campaign tables: the list reads, empty.
    let (status, campaigns) = api.get("/api/v1/campaigns").await.unwrap();
    assert_eq!(
        (status, campaigns["data"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    // The fixture's own tokens still work: the viewer reads, and cannot change.
    let viewer = api.with_token(expected["viewer_token"].as_str());
    assert_eq!(viewer.get("/api/v1/nodes").await.unwrap().0, 200);
    let (status, _) = viewer
        .post("/api/v1/nodes/fx-0001/manage", None)
        .await
        .unwrap();
    assert_eq!(status, 403);
}

/// Makes `tests/fixtures/store-schema1/` (run once, by schema 1's build:
/// `cargo test --test schema -- --ignored write_the_schema1_fixture`). Never again: a
/// later build writing it would make the test above compare a store with itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the fixture; only schema 1's build may run it"]
async fn write_the_schema1_fixture() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let sim = SimProc::start(
        tmp.path(),
        &ctl.broker_url(),
        3,
        "fx",
        &["--progress-events", "5", "--progress-every", "100ms"],
    );
    for id in ["fx-0001", "fx-0002", "fx-0003"] {
        api.wait_state(id, "discovered", WAIT).await;
    }
    let (status, body) = api
        .patch(
            "/api/v1/nodes/fx-0001",
            json!({"labels": {"rack": "r1", "note": "Ωé€ <b>"}, "group": "batch-a"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, managed) = api
        .post("/api/v1/nodes/fx-0002/manage", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{managed}");
    let install = managed["data"]["job"]["command_id"]
        .as_str()
        .unwrap()
        .to_string();
    api.wait_state("fx-0002", "active", WAIT).await;
    let (status, reboot) = api
        .post("/api/v1/nodes/fx-0003/reboot", None)
        .await
        .unwrap();
    assert_eq!(status, 202, "{reboot}");
    let reboot = reboot["data"]["operation_id"].as_str().unwrap().to_string();
    let viewer = api.create_token("glass", "viewer").await;
    api.create_token("ops", "operator").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(sim);
    // Every node offline before the snapshot, as it will be when the fixture opens.
    for id in ["fx-0001", "fx-0002", "fx-0003"] {
        api.wait_online(id, false, WAIT).await;
    }
    let mut snap = snapshot(&api, &[install, reboot]).await;
    snap["viewer_token"] = json!(viewer);
    assert!(ctl.terminate().success());

    let out = fixture();
    std::fs::create_dir_all(&out).unwrap();
    for file in FILES {
        std::fs::copy(ctl.data_dir.join(file), out.join(file)).unwrap();
    }
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&snap).unwrap() + "\n",
    )
    .unwrap();
}
