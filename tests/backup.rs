//! Backup and restore (issue 15): `metalbus backup` takes a consistent copy of the store
//! through the API while 200 simulated installs run; `metalbus restore` puts a copy in
//! place of a stopped controller's store. A copy taken when the fleet is quiet restores
//! to the same store (nodes, every history entry, events, commands, tokens); one taken
//! mid-install is the store as of one commit (each node's state is the end of its
//! history, and each history is the start of the final one).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use metalbus_e2e::{eventually, snapshot, Api, Controller, SimProc};
use serde_json::Value;

const NODES: usize = 200;
const WAIT: Duration = Duration::from_secs(120);

/// Runs `metalbus backup FILE` against `ctl`; its output.
fn backup(ctl: &Controller, file: &Path) -> String {
    let out = ctl.cli(&["backup", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Restores `file` into a new data dir under `dir` (with the key files of `from`'s data
/// dir, which a restore leaves alone) and starts a controller on it.
async fn restored(dir: &Path, file: &Path, from: &Controller) -> Controller {
    let data = dir.join("metalbus-data");
    let out = std::process::Command::new(metalbus_e2e::bin("metalbus"))
        .args(["restore", file.to_str().unwrap(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("{NODES} nodes")), "{said}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    for key in ["admin.token", "identity.key", "enroll.token"] {
        std::fs::copy(from.data_dir.join(key), data.join(key)).unwrap();
    }
    Controller::start(dir, &[]).await
}

async fn all_in(api: &Api, state: &str) -> Result<(), String> {
    let nodes = api.nodes().await?;
    let n = nodes.iter().filter(|n| n["state"] == state).count();
    if nodes.len() == NODES && n == NODES {
        Ok(())
    } else {
        Err(format!("{n} of {} {state}", nodes.len()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_to_a_consistent_store_and_a_quiet_one_to_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("main");
    std::fs::create_dir_all(&dir).unwrap();
    let ctl = Controller::start(&dir, &[]).await;
    let api = ctl.api();
    let _sim = SimProc::start(
        &dir,
        &ctl.broker_url(),
        NODES,
        "bk",
        &["--progress-events", "20", "--progress-every", "100ms"],
    );
    eventually(WAIT, "every node discovered", || all_in(&api, "discovered")).await;
    let viewer = api.create_token("glass", "viewer").await;

    // A viewer may not take a backup: it holds every token's hash.
    let glass = api.with_token(Some(&viewer));
    let (status, body) = glass.get("/api/v1/backup").await.unwrap();
    assert_eq!(
        (status, body["errorMessage"].as_str()),
        (403, Some("Forbidden"))
    );

    // Every node installs; a backup is taken while they do.
    let mut installs = Vec::new();
    for i in 1..=NODES {
        let (status, body) = api
            .post(&format!("/api/v1/nodes/bk-{i:04}/manage"), None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        installs.push(
            body["data"]["job"]["command_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let busy = dir.join("busy.redb");
    let said = backup(&ctl, &busy);
    assert!(said.contains(&format!("{NODES} nodes")), "{said}");
    let during = api.nodes().await.unwrap();
    let installing = during
        .iter()
        .filter(|n| n["state"] == "pending" || n["state"] == "installing")
        .count();
    eventually(WAIT, "every node active", || all_in(&api, "active")).await;

    // The fleet is quiet (installs done; samples change no record the API compares).
    // Into a directory (as the nightly timer does): a file named after the time.
    let shelf = dir.join("backups");
    std::fs::create_dir_all(&shelf).unwrap();
    backup(&ctl, &shelf);
    let quiet = std::fs::read_dir(&shelf)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let name = quiet.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("metalbus-") && name.ends_with("Z.redb"),
        "{name}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&quiet).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{name}");
    let before = snapshot(&api, &installs).await;
    // A second backup to the same file is refused, and the first is left whole.
    let out = ctl.cli(&["backup", quiet.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // The quiet copy restores to the same store.
    let second = tmp.path().join("quiet");
    std::fs::create_dir_all(&second).unwrap();
    let copy = restored(&second, &quiet, &ctl).await;
    let after = snapshot(&copy.api(), &installs).await;
    for part in ["nodes", "history", "operations", "tokens"] {
        assert_eq!(after[part], before[part], "{part} differ after the restore");
    }
    for (id, was) in before["events"].as_object().unwrap() {
        let is = after["events"][id].as_array().unwrap();
        for e in was.as_array().unwrap() {
            assert!(
                is.iter().any(|x| x["reason"] == e["reason"]
                    && x["first_timestamp"] == e["first_timestamp"]
                    && x["count"] == e["count"]),
                "{id}: {e} lost"
            );
        }
    }
    drop(copy);

    // The copy taken mid-install is the store as of one commit.
    let third = tmp.path().join("busy");
    std::fs::create_dir_all(&third).unwrap();
    let copy = restored(&third, &busy, &ctl).await;
    let mid = snapshot(&copy.api(), &[]).await;
    let mut moved = 0;
    for node in mid["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap();
        let history = mid["history"][id]["data"].as_array().unwrap();
        let total = mid["history"][id]["total"].as_u64().unwrap();
        assert_eq!(total as usize, history.len(), "{id}");
        // Newest first: the node's state is where its last transition went.
        let last = history.first().map_or(&Value::Null, |e| &e["to_state"]);
        assert_eq!(&node["state"], last, "{id}: state and history disagree");
        // And its history is the start of the final one.
        let fin = before["history"][id]["data"].as_array().unwrap();
        assert_eq!(
            history.as_slice(),
            &fin[fin.len() - history.len()..],
            "{id}"
        );
        if history.len() < fin.len() {
            moved += 1;
        }
    }
    let tokens: Vec<&Value> = mid["tokens"].as_array().unwrap().iter().collect();
    assert!(
        tokens
            .iter()
            .any(|t| t["name"] == "glass" && t["role"] == "viewer"),
        "{tokens:?}"
    );
    println!("backup under load: {installing} of {NODES} nodes installing when it was taken, {moved} moved on after it");
}

/// `metalbus restore FILE --data-dir DIR`.
fn restore_into(file: &Path, dir: &Path) -> std::process::Output {
    std::process::Command::new(metalbus_e2e::bin("metalbus"))
        .args(["restore", file.to_str().unwrap(), "--data-dir"])
        .arg(dir)
        .output()
        .unwrap()
}

/// The status an operation settles at.
async fn settled(api: &Api, op: &str) -> String {
    eventually(
        Duration::from_secs(60),
        &format!("operation {op} to settle"),
        || {
            let api = api.clone();
            let op = op.to_string();
            async move {
                let (_, body) = api.get(&format!("/api/v1/operations/{op}")).await?;
                let status = body["data"]["status"].as_str().unwrap_or("").to_string();
                if ["succeeded", "failed", "rejected", "expired"].contains(&status.as_str()) {
                    Ok(status)
                } else {
                    Err(body.to_string())
                }
            }
        },
    )
    .await
}

async fn reboot(api: &Api, node: &str) -> String {
    let (status, body) = api
        .post(&format!("/api/v1/nodes/{node}/reboot"), None)
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    body["data"]["operation_id"].as_str().unwrap().to_string()
}

/// An agent whose reports were receipted after the backup was taken holds them no
/// more: after the restore its next report comes after a gap that cannot fill. The
/// controller skips the gap (a `ReportsLost` warning on the node) instead of waiting
/// for it forever, and the node goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restore_an_agent_ahead_of_the_store_is_not_stalled() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let _sim = SimProc::start(tmp.path(), &ctl.broker_url(), 1, "rb", &[]);
    api.wait_state("rb-0001", "discovered", Duration::from_secs(30))
        .await;
    // The node has reported (its report session is in the store) before the backup.
    let first = reboot(&api, "rb-0001").await;
    assert_eq!(settled(&api, &first).await, "rejected");
    let file = tmp.path().join("b.redb");
    backup(&ctl, &file);
    // Reports the backup does not have: the agent's answer to a reboot, receipted.
    let before = reboot(&api, "rb-0001").await;
    assert_eq!(settled(&api, &before).await, "rejected");

    // While it runs, its store cannot be replaced.
    let busy = restore_into(&file, &ctl.data_dir);
    assert_eq!(busy.status.code(), Some(2), "{busy:?}");
    assert!(String::from_utf8_lossy(&busy.stderr).contains("running controller"));
    ctl.terminate();
    // What is not a Metalbus backup is refused and the store left as it was: empty,
    // garbage, and a redb file of something else.
    let junk = tmp.path().join("junk");
    for bytes in [&b""[..], &b"\x00\xffnot a store\xe2\x82\xac"[..]] {
        std::fs::write(&junk, bytes).unwrap();
        let out = restore_into(&junk, &ctl.data_dir);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }
    let other = tmp.path().join("other.redb");
    drop(redb::Database::create(&other).unwrap());
    let out = restore_into(&other, &ctl.data_dir);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a Metalbus store"),
        "{out:?}"
    );
    assert!(!ctl.data_dir.join("metalbus.redb.before-restore").exists());
    let out = std::process::Command::new(metalbus_e2e::bin("metalbus"))
        .args(["restore", file.to_str().unwrap(), "--data-dir"])
        .arg(&ctl.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ctl.data_dir.join("metalbus.redb.before-restore").exists());
    ctl.restart().await;
    let api = ctl.api();
    let (status, _) = api
        .get(&format!("/api/v1/operations/{before}"))
        .await
        .unwrap();
    assert_eq!(status, 404, "the restored store predates it");

    let after = reboot(&api, "rb-0001").await;
    assert_eq!(settled(&api, &after).await, "rejected");
    let (_, events) = api
        .get("/api/v1/nodes/rb-0001/events?type=Warning")
        .await
        .unwrap();
    assert!(
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "ReportsLost"),
        "{events}"
    );
}
