//! An external Mosquitto with the ACL `metalbus mqtt-acl` prints: the controller and a
//! real agent work through it (install, commands, receipts), and a node cannot publish
//! in another node's name.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use metalbus_e2e::{bin, eventually, steps_dir, AgentProc, Controller, Mosquitto, Watcher};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_acl_confines_each_node_to_its_own_topics() {
    let tmp = tempfile::tempdir().unwrap();
    let acl = Command::new(bin("metalbus"))
        .arg("mqtt-acl")
        .output()
        .unwrap();
    assert!(acl.status.success());
    let acl_path = tmp.path().join("metalbus.acl");
    std::fs::write(&acl_path, &acl.stdout).unwrap();
    let broker = Mosquitto::start(tmp.path(), &format!("acl_file {}", acl_path.display()));
    let ctl = Controller::with_config(
        tmp.path(),
        &Controller::quick_plan("0.5"),
        &["--broker", &broker.url()],
    )
    .await;
    let api = ctl.api();
    let steps = steps_dir(tmp.path(), &[]);
    let _agent = AgentProc::start_with(
        tmp.path(),
        &broker.url(),
        "acl-a",
        &["--steps-dir", steps.to_str().unwrap()],
    );
    api.wait_state("acl-a", "discovered", Duration::from_secs(30))
        .await;
    api.post("/api/v1/nodes/acl-a/manage", None).await.unwrap();
    let n = api
        .wait_state("acl-a", "active", Duration::from_secs(30))
        .await;
    let threads = n["specs"]["cpu_threads"].clone();
    assert!(threads.is_u64());

    // The install command's operation record says how it went.
    let (_, history) = api.get("/api/v1/nodes/acl-a").await.unwrap();
    let op = history["data"]["job"]["command_id"]
        .as_str()
        .map(String::from);
    if let Some(op) = op {
        let (status, body) = api.get(&format!("/api/v1/operations/{op}")).await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["kind"], "install");
        assert_eq!(body["data"]["status"], "succeeded");
    }
    let (status, _) = api.get("/api/v1/operations/c-nope").await.unwrap();
    assert_eq!(status, 404);

    // Node B tries to speak for node A: the broker drops it.
    let monitor =
        Watcher::start_as(broker.port, "metalbus/v1/#", Some("metalbus-controller")).await;
    let intruder = Watcher::start_as(
        broker.port,
        "metalbus/v1/nodes/acl-b/commands",
        Some("acl-b"),
    )
    .await;
    let forged = json!({"hostname": "forged", "system": {}, "cpu": {"threads": 4096}, "memory": {},
        "disks": [], "nics": [], "os": {}});
    intruder
        .publish(
            "metalbus/v1/nodes/acl-a/inventory",
            serde_json::to_vec(&forged).unwrap(),
        )
        .await;
    // The same message under its own name goes through: the ACL, not the payload, decides.
    intruder
        .publish(
            "metalbus/v1/nodes/acl-b/inventory",
            serde_json::to_vec(&forged).unwrap(),
        )
        .await;
    let forged_seen = |topic: &str| {
        monitor
            .messages()
            .iter()
            .any(|m| m.topic == topic && m.json()["hostname"] == "forged")
    };
    eventually(
        Duration::from_secs(5),
        "node B's own inventory through",
        || {
            let ok = forged_seen("metalbus/v1/nodes/acl-b/inventory");
            async move {
                if ok {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            }
        },
    )
    .await;
    assert!(
        !forged_seen("metalbus/v1/nodes/acl-a/inventory"),
        "the forged message was dropped"
    );
    let a = api.node("acl-a").await.unwrap();
    assert_eq!(
        a["specs"]["cpu_threads"], threads,
        "node A's inventory is untouched"
    );
    assert!(
        monitor
            .messages()
            .iter()
            .any(|m| m.topic == "metalbus/v1/nodes/acl-a/state" && m.retain),
        "the controller's user may read everything"
    );
}
