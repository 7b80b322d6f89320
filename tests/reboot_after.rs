//! Plans with `reboot_after = true` (DESIGN section 5): the agent reboots the host once
//! the install's `complete` report is receipted, exactly once, and the node becomes
//! `active` when its agent comes back in a new boot. The "reboot" is a test script that
//! records itself and writes a new boot id into the agent's fixture root; the test then
//! restarts the agent, as a real reboot would. An agent that may not reboot refuses such
//! an install up front, so no node waits for a reboot that cannot happen.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use metalbus_e2e::{eventually, fixture_root, steps_dir, AgentProc, Api, Controller};
use metalbus_protocol::Timestamp;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

async fn controller(dir: &Path) -> Controller {
    Controller::with_config(
        dir,
        r#"
[lifecycle]
retry_backoff = "100ms"

[plans.rebooting]
default = true
reboot_after = true
steps = [ { name = "image", script = "quick-step", timeout_s = 60 } ]
"#,
        &[],
    )
    .await
}

/// The "reboot": one line with the command id in `marker`, and a new boot id.
fn reboot_script(dir: &Path, root: &Path, marker: &Path) -> PathBuf {
    let path = dir.join("fake-reboot");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$MB_COMMAND_ID\" >> {}\necho 9f0e3b1c-0000-4000-8000-00000000b007 > {}/proc/sys/kernel/random/boot_id\n",
            marker.display(),
            root.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn agent(dir: &Path, ctl: &Controller, id: &str, root: &Path, reboot: &Path) -> AgentProc {
    let steps = steps_dir(
        dir,
        &[("quick-step", "#!/bin/sh\necho 'PROGRESS 50 writing'\n")],
    );
    AgentProc::start_with(
        dir,
        &ctl.broker_url(),
        id,
        &[
            "--root",
            root.to_str().unwrap(),
            "--steps-dir",
            steps.to_str().unwrap(),
            "--reboot-command",
            reboot.to_str().unwrap(),
        ],
    )
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

async fn history(api: &Api, node: &str) -> Vec<Value> {
    let (_, h) = api
        .get(&format!("/api/v1/nodes/{node}/history"))
        .await
        .unwrap();
    h["data"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_reboots_once_after_its_install_and_is_active_when_back() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = controller(tmp.path()).await;
    let api = ctl.api();
    let root = fixture_root(tmp.path(), "root");
    let marker = tmp.path().join("reboots");
    let reboot = reboot_script(tmp.path(), &root, &marker);
    let mut host = agent(tmp.path(), &ctl, "rb-1", &root, &reboot);
    let discovered = api.wait_state("rb-1", "discovered", WAIT).await;
    let (status, body) = api.post("/api/v1/nodes/rb-1/manage", None).await.unwrap();
    assert_eq!(status, 200, "{body}");

    // Installed; the reboot runs once, under the install's command id, after the
    // controller committed the install (its receipt is what lets the agent go on).
    api.wait_state("rb-1", "installed", WAIT).await;
    eventually(WAIT, "the reboot to run", || {
        let n = lines(&marker).len();
        async move { (n == 1).then_some(()).ok_or(format!("{n} reboots")) }
    })
    .await;
    let install_id = lines(&marker)[0].clone();
    let (status, op) = api
        .get(&format!("/api/v1/operations/{install_id}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{op}");
    assert_eq!(
        (&op["data"]["kind"], &op["data"]["status"]),
        (&Value::from("install"), &Value::from("succeeded")),
        "the reboot ran under the install's id: {op}"
    );
    let done_at = history(&api, "rb-1").await[0]["created_at"].clone();
    let rebooted_at = Timestamp::from(std::fs::metadata(&marker).unwrap().modified().unwrap());
    assert!(
        rebooted_at >= Timestamp::parse(done_at.as_str().unwrap()).unwrap(),
        "rebooted at {rebooted_at} before the install was committed at {done_at}"
    );
    // Still the old boot: the node waits in `installed`, and says why in its events.
    eventually(WAIT, "the RebootCompleted event", || {
        let api = api.clone();
        let install_id = install_id.clone();
        async move {
            let (_, e) = api.get("/api/v1/nodes/rb-1/events").await?;
            e["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| {
                    e["reason"] == "RebootCompleted"
                        && e["message"].as_str().unwrap().contains(&install_id)
                })
                .then_some(())
                .ok_or(e.to_string())
        }
    })
    .await;
    assert_eq!(api.node("rb-1").await.unwrap()["state"], "installed");

    // The host comes back in its new boot: active, by the system.
    host.kill9();
    let mut host = agent(tmp.path(), &ctl, "rb-1", &root, &reboot);
    let active = api.wait_state("rb-1", "active", WAIT).await;
    assert_eq!(active["id"], discovered["id"]);
    let last = &history(&api, "rb-1").await[0];
    assert_eq!(
        (
            &last["from_state"],
            &last["to_state"],
            &last["triggered_by"]
        ),
        (
            &Value::from("installed"),
            &Value::from("active"),
            &Value::from("system")
        ),
        "{last}"
    );

    // Another restart in the same boot: no second reboot.
    host.terminate();
    let _host = agent(tmp.path(), &ctl, "rb-1", &root, &reboot);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lines(&marker).len(), 1, "rebooted again");
    assert_eq!(api.node("rb-1").await.unwrap()["state"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_may_not_reboot_refuses_a_rebooting_install() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = controller(tmp.path()).await;
    let api = ctl.api();
    let config = tmp.path().join("agent.toml");
    std::fs::write(&config, "reboot_command = []\n").unwrap();
    let steps = steps_dir(tmp.path(), &[("quick-step", "#!/bin/sh\nexit 0\n")]);
    let _host = AgentProc::start_configured(
        tmp.path(),
        &ctl.broker_url(),
        "rb-2",
        &config,
        &["--steps-dir", steps.to_str().unwrap()],
    );
    api.wait_state("rb-2", "discovered", WAIT).await;
    api.post("/api/v1/nodes/rb-2/manage", None).await.unwrap();
    let failed = api.wait_state("rb-2", "install_failed", WAIT).await;
    let why = failed["last_install_error"].as_str().unwrap();
    assert!(
        why.contains("reboot_after") && why.contains("reboot_command = []"),
        "{failed}"
    );
}
