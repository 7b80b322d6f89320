//! An external Mosquitto set up as `metalbus mosquitto-config` prints, with the password
//! and ACL files the controller keeps: every client logs in, each node's login is bound
//! to its node id (so `%u` in the ACL is the node), the controller and a real agent work
//! through it (enrollment, install, commands, receipts), and a node cannot speak or
//! listen for another node.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use metalbus_e2e::{bin, eventually, steps_dir, AgentProc, Controller, Mosquitto, Watcher};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_mosquitto_binds_each_login_to_its_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mosquitto");
    std::fs::create_dir_all(&dir).unwrap();
    // Mosquitto starts before the controller has written its accounts: empty files.
    std::fs::write(dir.join("passwd"), "").unwrap();
    std::fs::write(dir.join("acl"), "").unwrap();
    let conf = Command::new(bin("metalbus"))
        .args(["mosquitto-config", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(conf.status.success());
    let conf = String::from_utf8(conf.stdout).unwrap();
    assert!(conf.contains("allow_anonymous false"), "{conf}");
    let broker = Mosquitto::start(tmp.path(), &conf);
    let ctl = Controller::with_config(
        tmp.path(),
        &format!(
            "[broker]\nurl = \"{}\"\nmosquitto_dir = \"{}\"\nreload_command = [\"kill\", \"-HUP\", \"{}\"]\n\n{}",
            broker.url(),
            dir.display(),
            broker.pid(),
            Controller::quick_plan("0.3")
        ),
        &[],
    )
    .await;
    let api = ctl.api();
    let steps = steps_dir(tmp.path(), &[]);
    let args = ["--steps-dir", steps.to_str().unwrap()];
    // The agents enroll through Mosquitto (as metalbus-enroll.fleet), then log in as
    // themselves with their key-derived password.
    let a = AgentProc::start_with(tmp.path(), &broker.url(), "ext-a", &args);
    let _b = AgentProc::start_with(tmp.path(), &broker.url(), "ext-b", &args);
    for id in ["ext-a", "ext-b"] {
        api.wait_state(id, "discovered", WAIT).await;
    }
    api.post("/api/v1/nodes/ext-a/manage", None).await.unwrap();
    api.wait_state("ext-a", "active", WAIT).await;
    let passwd = std::fs::read_to_string(dir.join("passwd")).unwrap();
    for user in [
        "metalbus-controller:",
        "metalbus-enroll.fleet:",
        "ext-a:",
        "ext-b:",
    ] {
        assert!(
            passwd.lines().any(|l| l.starts_with(user)),
            "{user} in\n{passwd}"
        );
    }
    assert!(
        !passwd.contains(&a.key().broker_password()),
        "passwords are hashed"
    );

    // Anonymous, unknown and wrong logins are refused by Mosquitto.
    let a_password = a.key().broker_password();
    for login in [
        None,
        Some(("ext-b", a_password.as_str())),
        Some(("someone", "x")),
    ] {
        assert!(
            Watcher::connect(broker.port, login, Some("metalbus/v1/#"))
                .await
                .is_err(),
            "{login:?} was let in"
        );
    }

    // Logged in as ext-a: publishing as ext-b goes nowhere, reading ext-b's commands
    // gets nothing.
    let before = api.node("ext-b").await.unwrap();
    // A second client of the controller's own user sees everything that gets through.
    let controller_password =
        std::fs::read_to_string(ctl.data_dir.join("broker.password")).unwrap();
    let all = Watcher::connect(
        broker.port,
        Some(("metalbus-controller", controller_password.trim())),
        Some("metalbus/v1/nodes/ext-b/inventory"),
    )
    .await
    .unwrap();
    let as_a = Watcher::connect(
        broker.port,
        Some(("ext-a", a_password.as_str())),
        Some("metalbus/v1/nodes/ext-b/commands"),
    )
    .await
    .unwrap();
    let forged = json!({"hostname": "forged", "system": {}, "cpu": {"threads": 4096},
        "memory": {}, "disks": [], "nics": [], "os": {}});
    as_a.publish_as(
        &a.key(),
        "metalbus/v1/nodes/ext-b/inventory",
        serde_json::to_vec(&forged).unwrap(),
    )
    .await;
    api.post("/api/v1/nodes/ext-b/manage", None).await.unwrap();
    api.wait_state("ext-b", "active", WAIT).await;
    assert!(
        as_a.messages().is_empty(),
        "ext-a read ext-b's commands: {:?}",
        as_a.messages()
    );
    assert!(
        all.messages()
            .iter()
            .all(|m| m.json()["hostname"] != "forged"),
        "Mosquitto's ACL let ext-a publish as ext-b"
    );
    let after = api.node("ext-b").await.unwrap();
    assert_eq!(
        after["specs"], before["specs"],
        "ext-b's inventory is untouched"
    );

    // Revoked: the accounts are rewritten without ext-a, and its login is refused.
    let out = ctl.cli(&["nodes", "revoke", "ext-a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(WAIT, "ext-a's login refused", || {
        let password = a_password.clone();
        async move {
            match Watcher::connect(broker.port, Some(("ext-a", &password)), None).await {
                Err(_) => Ok(()),
                Ok(_) => Err("still accepted".to_string()),
            }
        }
    })
    .await;
}
