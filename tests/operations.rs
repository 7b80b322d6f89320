//! Power operations end to end (DESIGN section 9): reboot and poweroff run the agent's
//! configured action exactly once (test scripts that write a marker, never a real
//! reboot), and `GET /operations/{id}` follows them to `succeeded` or `failed`; a wake
//! sends real magic packets over UDP to the configured address (a loopback socket the
//! test binds), and the operation survives a controller restart. Roles and unknown nodes
//! are refused; the CLI starts and awaits operations.

#![allow(clippy::unwrap_used)]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use metalbus_e2e::{eventually, AgentProc, Api, Controller, Mosquitto, Watcher};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn fixture_root() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agent/tests/fixtures/virtio-vm"
    )
    .to_string()
}

/// An executable script `name` in `dir` with `body`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_online(api: &Api, node: &str) -> Value {
    eventually(WAIT, &format!("{node} online with its inventory"), || {
        let api = api.clone();
        let node = node.to_string();
        async move {
            let n = api.node(&node).await?;
            let macs = n["mac_addresses"].as_array().map_or(0, Vec::len);
            if n["online"] == true && macs > 0 {
                Ok(n)
            } else {
                Err(n.to_string())
            }
        }
    })
    .await
}

/// Polls the operation until it has a final status.
async fn wait_final(api: &Api, op: &str) -> Value {
    eventually(WAIT, &format!("operation {op} to end"), || {
        let api = api.clone();
        let op = op.to_string();
        async move {
            let (status, body) = api.get(&format!("/api/v1/operations/{op}")).await?;
            let s = body["data"]["status"].as_str().unwrap_or_default();
            if status == 200 && ["succeeded", "failed", "rejected", "expired"].contains(&s) {
                Ok(body["data"].clone())
            } else {
                Err(format!("HTTP {status}: {body}"))
            }
        }
    })
    .await
}

fn cli(ctl: &Controller, args: &[&str]) -> std::process::Output {
    ctl.cli(&[&["nodes"], args].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_and_poweroff_run_the_configured_action_once() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    // Through a Mosquitto without ACLs, so the test can replay a command as a broker
    // that kept a copy could (the embedded broker lets no client publish commands).
    let broker = Mosquitto::start(tmp.path(), "");
    let ctl = Controller::start(tmp.path(), &["--broker", &broker.url()]).await;
    let api = ctl.api();
    let marker = tmp.path().join("reboots");
    let reboot = script(
        tmp.path(),
        "fake-reboot",
        &format!(
            "echo \"$MB_COMMAND_ID $1\" >> '{}'\nexit 0",
            marker.display()
        ),
    );
    let poweroff = script(
        tmp.path(),
        "fake-poweroff",
        "echo 'no power today' >&2\nexit 3",
    );
    let root = fixture_root();
    let agent = AgentProc::start_with(
        tmp.path(),
        &ctl.broker_url(),
        "op-1",
        &[
            "--root",
            &root,
            "--reboot-command",
            reboot.to_str().unwrap(),
            "now",
            "--poweroff-command",
            poweroff.to_str().unwrap(),
        ],
    );
    let node = wait_online(&api, "op-1").await;
    // The agent said its protocol in its birth.
    assert_eq!(
        node["agent_protocol"],
        metalbus_protocol::PROTOCOL_VERSION,
        "{node}"
    );

    // Roles and unknown nodes first: nothing may run.
    let viewer = api.with_token(Some(&api.create_token("viewer-1", "viewer").await));
    let (status, body) = viewer
        .post("/api/v1/nodes/op-1/reboot", None)
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errorCode"], "Primus.00004", "{body}");
    let (status, body) = api.post("/api/v1/nodes/nope/reboot", None).await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errorCode"], "Primus.00005", "{body}");
    assert_eq!(body["errorMessage"], "node not found", "{body}");
    let (status, _) = api.post("/api/v1/nodes/nope/poweroff", None).await.unwrap();
    assert_eq!(status, 404);

    // An operator reboots it.
    let operator = api.with_token(Some(&api.create_token("operator-1", "operator").await));
    let (status, body) = operator
        .post("/api/v1/nodes/op-1/reboot", None)
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["id"], "op-1", "{body}");
    assert_eq!(body["data"]["status"], "sent", "{body}");
    let op = body["data"]["operation_id"].as_str().unwrap().to_string();
    let done = wait_final(&api, &op).await;
    let reboot_took = started.elapsed();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["kind"], "reboot", "{done}");
    assert_eq!(done["node_id"], "op-1", "{done}");
    assert_eq!(lines(&marker), vec![format!("{op} now")]);

    // The same command again (a resend after a lost ack): acked, never run again.
    let raw = Watcher::start(broker.port, "metalbus/v1/nodes/op-1/reports").await;
    let again = json!({"command_id": op, "kind": "reboot",
        "issued_at": done["created_at"], "expires_at": done["expires_at"]});
    // Sealed with the node key, as the controller's own resend would be.
    raw.publish_as(
        &agent.key(),
        "metalbus/v1/nodes/op-1/commands",
        serde_json::to_vec(&again).unwrap(),
    )
    .await;
    eventually(WAIT, "the repeated command to be acked", || {
        let msgs = raw.messages();
        let op = op.clone();
        async move {
            msgs.iter()
                .map(|m| m.json())
                .find(|r| r["kind"] == "ack" && r["command_id"] == op.as_str())
                .map(|_| ())
                .ok_or_else(|| format!("{} reports", msgs.len()))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        lines(&marker),
        vec![format!("{op} now")],
        "ran exactly once"
    );
    assert_eq!(wait_final(&api, &op).await["status"], "succeeded");

    // A failing poweroff ends `failed` with its exit status and stderr.
    let (status, body) = operator
        .post("/api/v1/nodes/op-1/poweroff", None)
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let off = body["data"]["operation_id"].as_str().unwrap().to_string();
    assert_ne!(off, op);
    let done = wait_final(&api, &off).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["kind"], "poweroff", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.contains("exited with status 3") && reason.contains("no power today"),
        "{reason}"
    );

    // Events show what was asked and what became of it.
    let (_, events) = api.get("/api/v1/nodes/op-1/events").await.unwrap();
    let reasons: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for want in [
        "RebootRequested",
        "RebootCompleted",
        "PoweroffRequested",
        "PoweroffFailed",
    ] {
        assert!(reasons.contains(&want), "{want} in {reasons:?}");
    }

    // The CLI: reboot and wait for the outcome.
    let out = cli(&ctl, &["reboot", "op-1", "--wait", "--timeout", "30s"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("op-1: reboot operation c-") && text.trim_end().ends_with("succeeded"),
        "{text}"
    );
    let ran = lines(&marker);
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert!(
        text.contains(ran[1].split(' ').next().unwrap()),
        "{text} {ran:?}"
    );
    // A failing one exits 6 with one line naming the failure.
    let out = cli(&ctl, &["poweroff", "op-1", "--wait"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("failed") && err.contains("status 3"), "{err}");
    eprintln!(
        "reboot succeeded {:.1}s after start; whole test {:.1}s",
        reboot_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_sends_magic_packets_to_the_configured_address_only() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut ctl = Controller::with_config(
        tmp.path(),
        &format!(
            "[wake]\nbroadcast = \"{}\"\n",
            listener.local_addr().unwrap()
        ),
        &[],
    )
    .await;
    let api = ctl.api();
    let root = fixture_root();
    let agent = AgentProc::start_with(tmp.path(), &ctl.broker_url(), "wk-1", &["--root", &root]);
    let node = wait_online(&api, "wk-1").await;
    let macs: Vec<String> = node["mac_addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    assert!(!macs.is_empty());
    let expected = |mac: &str| -> Vec<u8> {
        let bytes: Vec<u8> = mac
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect();
        assert_eq!(bytes.len(), 6, "{mac}");
        let mut p = vec![0xffu8; 6];
        for _ in 0..16 {
            p.extend_from_slice(&bytes);
        }
        p
    };
    let receive = |n: usize| -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        for _ in 0..n {
            let mut buf = [0u8; 1500];
            let (len, from) = listener.recv_from(&mut buf).unwrap();
            assert!(from.ip().is_loopback(), "{from}");
            got.push(buf[..len].to_vec());
        }
        got
    };
    let nothing_more = || {
        listener
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 1500];
        let extra = listener.recv_from(&mut buf);
        listener
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert!(extra.is_err(), "an extra datagram: {extra:?}");
    };

    let (status, body) = api.post("/api/v1/nodes/wk-1/wake", None).await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["data"]["id"], "wk-1", "{body}");
    assert_eq!(body["data"]["status"], "succeeded", "{body}");
    let op = body["data"]["operation_id"].as_str().unwrap().to_string();
    let got = receive(macs.len());
    for (packet, mac) in got.iter().zip(&macs) {
        assert_eq!(packet.len(), 102);
        assert_eq!(*packet, expected(mac), "packet for {mac}");
    }
    nothing_more();
    let done = wait_final(&api, &op).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["kind"], "wake", "{done}");

    // Refusals: no role, no node, no MAC (a registration has no inventory).
    let viewer = api.with_token(Some(&api.create_token("viewer-1", "viewer").await));
    let (status, _) = viewer.post("/api/v1/nodes/wk-1/wake", None).await.unwrap();
    assert_eq!(status, 403);
    let (status, body) = api.post("/api/v1/nodes/nope/wake", None).await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["errorCode"], "Primus.00005");
    let (status, body) = api
        .post(
            "/api/v1/nodes",
            Some(json!({"name": "spare-1", "mac": "52:54:00:00:00:99"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.post("/api/v1/nodes/spare-1/wake", None).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errorCode"], "Primus.00002");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("no known MAC address"),
        "{body}"
    );
    // Reboot of a registered node: no agent to send it to.
    let (status, body) = api
        .post("/api/v1/nodes/spare-1/reboot", None)
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errorMessage"].as_str().unwrap().contains("agent"),
        "{body}"
    );
    nothing_more();

    // The CLI, as JSON, waiting for the outcome.
    let out = cli(&ctl, &["wake", "wk-1", "--wait", "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    let cli_op: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli_op["status"], "succeeded", "{cli_op}");
    assert_eq!(cli_op["kind"], "wake", "{cli_op}");
    let got = receive(macs.len());
    assert_eq!(got, macs.iter().map(|m| expected(m)).collect::<Vec<_>>());
    nothing_more();

    // Operations are stored: they survive a controller restart.
    drop(agent);
    assert!(ctl.terminate().success());
    ctl.restart().await;
    let done = wait_final(&api, &op).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    eprintln!("whole test {:.1}s", started.elapsed().as_secs_f64());
}
