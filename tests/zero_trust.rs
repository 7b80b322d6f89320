//! The attacks of the zero-trust issue, replayed with a plain anonymous MQTT client
//! through a Mosquitto with no ACL at all (a hostile broker, which lets anyone publish
//! anything): forged commands, a forged Will, a report stream takeover, one node
//! speaking for another, and `--local-agent`'s admin token. Each must change nothing:
//! origin proof alone stops them. Where it helps, a control sends the same message
//! sealed with the real node key and shows the path the attack aimed at is real. (The
//! embedded broker refuses these clients at its front door already: tests/front_door.rs.)

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use metalbus_e2e::{eventually, steps_dir, AgentProc, Api, Controller, Mosquitto, Watcher};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// Serves `body` for every GET (headers only for HEAD) until the test ends.
fn serve(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            if !request.starts_with("HEAD") {
                let _ = stream.write_all(&body);
            }
        }
    });
    format!("http://{addr}/image.raw")
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// An install command whose one step writes `image_url` over `target`.
fn write_image_install(id: &str, image_url: &str, sha: &str, target: &Path) -> Vec<u8> {
    let now = metalbus_protocol::Timestamp::from(std::time::SystemTime::now());
    serde_json::to_vec(
        &json!({"command_id": id, "kind": "install", "issued_at": now,
        "expires_at": "2999-01-01T00:00:00Z",
        "plan": {"name": "evil", "steps": [{"name": "img", "script": "write-image",
            "args": {"url": image_url, "sha256": sha, "target": target.display().to_string()},
            "timeout_s": 30}]}}),
    )
    .unwrap()
}

fn reboot(id: &str) -> Vec<u8> {
    let now = metalbus_protocol::Timestamp::from(std::time::SystemTime::now());
    serde_json::to_vec(
        &json!({"command_id": id, "kind": "reboot", "issued_at": now,
        "expires_at": "2999-01-01T00:00:00Z"}),
    )
    .unwrap()
}

fn acks(watcher: &Watcher, command_id: &str) -> usize {
    watcher
        .messages()
        .iter()
        .map(|m| m.json())
        .filter(|r| r["kind"] == "ack" && r["command_id"] == command_id)
        .count()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A Mosquitto that lets anyone publish anything, and a controller with a quick plan
/// using it.
async fn through_a_hostile_broker(dir: &Path) -> (Mosquitto, Controller) {
    let broker = Mosquitto::start(dir, "");
    let ctl = Controller::with_config(
        dir,
        &Controller::quick_plan("0.2"),
        &["--broker", &broker.url()],
    )
    .await;
    (broker, ctl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_commands_from_an_anonymous_client_run_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (broker, ctl) = through_a_hostile_broker(tmp.path()).await;
    let api = ctl.api();
    let marker = tmp.path().join("rebooted.txt");
    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "reboot_command = [\"/bin/sh\", \"-c\", \"echo rebooted >> {}\"]\n",
            marker.display()
        ),
    )
    .unwrap();
    let steps = steps_dir(tmp.path(), &[]);
    let agent = AgentProc::start_configured(
        tmp.path(),
        &ctl.broker_url(),
        "zt-1",
        &config,
        &["--steps-dir", steps.to_str().unwrap()],
    );
    api.wait_state("zt-1", "discovered", WAIT).await;

    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    let image = b"overwritten by an attacker\n".to_vec();
    let url = serve(image.clone());
    let sha = sha256_hex(&image);
    let reports = Watcher::start(broker.port, "metalbus/v1/nodes/zt-1/reports").await;
    let commands = "metalbus/v1/nodes/zt-1/commands";

    // The attacks: plain publishes, as anyone on the network could make them.
    reports
        .publish(
            commands,
            write_image_install("c-forged-install", &url, &sha, &victim),
        )
        .await;
    reports.publish(commands, reboot("c-forged-reboot")).await;
    eventually(WAIT, "the agent to log both refusals", || {
        let log = agent.log_text();
        async move {
            let n = log
                .matches("refused a message that does not prove it came from our controller")
                .count();
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} refusals logged"))
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(read(&victim), "precious\n", "no file written");
    assert_eq!(read(&marker), "", "no power action run");
    assert_eq!(acks(&reports, "c-forged-install"), 0, "nothing acked");
    assert_eq!(acks(&reports, "c-forged-reboot"), 0, "nothing acked");
    let (status, _) = api.get("/api/v1/operations/c-forged-reboot").await.unwrap();
    assert_eq!(status, 404);
    let n = api.node("zt-1").await.unwrap();
    assert_eq!(n["state"], "discovered");
    assert!(n["job"].is_null(), "{n}");

    // The control: the same messages sealed with the node key do run, so the refusals
    // above are the proof at work, not a path that could not have worked anyway.
    let key = agent.key();
    reports
        .publish_as(
            &key,
            commands,
            write_image_install("c-sealed-install", &url, &sha, &victim),
        )
        .await;
    eventually(WAIT, "the sealed install to write the file", || {
        let text = read(&victim);
        async move {
            if text == "overwritten by an attacker\n" {
                Ok(())
            } else {
                Err(text)
            }
        }
    })
    .await;
    reports
        .publish_as(&key, commands, reboot("c-sealed-reboot"))
        .await;
    eventually(WAIT, "the sealed reboot to run", || {
        let text = read(&marker);
        async move {
            if text.contains("rebooted") {
                Ok(())
            } else {
                Err(text)
            }
        }
    })
    .await;
}

/// A node's view that no forged message may change.
async fn snapshot(api: &Api, id: &str) -> (Value, Vec<(String, String, String)>, Value) {
    let node = api.node(id).await.unwrap();
    let history = api.transitions(id).await.unwrap();
    let (_, events) = api
        .get(&format!("/api/v1/nodes/{id}/events"))
        .await
        .unwrap();
    (node, history, events["data"].clone())
}

fn same_node(before: &Value, after: &Value) {
    for key in [
        "state",
        "online",
        "offline_reason",
        "hostname",
        "specs",
        "report_session",
        "last_applied_seq",
        "install_attempts",
    ] {
        assert_eq!(after[key], before[key], "{key} changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_status_reports_and_another_nodes_key_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (broker, ctl) = through_a_hostile_broker(tmp.path()).await;
    let api = ctl.api();
    let steps = steps_dir(tmp.path(), &[]);
    let args = ["--steps-dir", steps.to_str().unwrap()];
    let mut b = AgentProc::start_with(tmp.path(), &ctl.broker_url(), "zt-b", &args);
    let a = AgentProc::start_with(tmp.path(), &ctl.broker_url(), "zt-a", &args);
    for id in ["zt-a", "zt-b"] {
        api.wait_state(id, "discovered", WAIT).await;
    }
    // Installed, so its report stream has a session and a position.
    api.post("/api/v1/nodes/zt-b/manage", None).await.unwrap();
    let n = api.wait_state("zt-b", "active", WAIT).await;
    assert!(n["report_session"].is_string(), "{n}");
    let (before, history, events) = snapshot(&api, "zt-b").await;
    let raw = Watcher::start(broker.port, "nothing/here").await;
    let base = "metalbus/v1/nodes/zt-b";

    // A retained Will with the largest conn: it kept a healthy node offline for good.
    let will = json!({"online": false, "reason": "lost", "conn": u64::MAX});
    raw.publish_retained(
        &format!("{base}/status"),
        serde_json::to_vec(&will).unwrap(),
    )
    .await;
    // A new session's seq 1: it took over the node's report stream.
    let takeover = json!({"session": "attacker", "seq": 1, "ts": "2026-01-01T00:00:00Z",
        "kind": "job", "command_id": "c-x", "job": "install", "status": "failed", "error": "forged"});
    raw.publish(
        &format!("{base}/reports"),
        serde_json::to_vec(&takeover).unwrap(),
    )
    .await;
    // Node A's own key, used to speak for node B on every agent topic.
    let a_key = a.key();
    let offline = json!({"online": false, "reason": "shutdown", "conn": u64::MAX});
    raw.publish_as(
        &a_key,
        &format!("{base}/status"),
        serde_json::to_vec(&offline).unwrap(),
    )
    .await;
    let inventory = json!({"hostname": "forged", "system": {}, "cpu": {"threads": 4096},
        "memory": {}, "disks": [], "nics": [], "os": {}});
    raw.publish_as(
        &a_key,
        &format!("{base}/inventory"),
        serde_json::to_vec(&inventory).unwrap(),
    )
    .await;
    let metrics = json!({"ts": "2026-01-01T00:00:00Z", "cpu_percent": 99.0});
    raw.publish_as(
        &a_key,
        &format!("{base}/metrics"),
        serde_json::to_vec(&metrics).unwrap(),
    )
    .await;
    raw.publish_as(
        &a_key,
        &format!("{base}/reports"),
        serde_json::to_vec(&takeover).unwrap(),
    )
    .await;
    let ack = json!({"session": "attacker", "seq": 2, "ts": "2026-01-01T00:00:00Z",
        "kind": "ack", "command_id": "c-x", "accepted": true});
    raw.publish_as(
        &a_key,
        &format!("{base}/reports"),
        serde_json::to_vec(&ack).unwrap(),
    )
    .await;

    let api2 = api.clone();
    eventually(WAIT, "seven refusals counted", || {
        let api = api2.clone();
        async move {
            let m = api.get_text("/metrics").await?;
            let n: u64 = m
                .lines()
                .find_map(|l| {
                    l.strip_prefix("metalbus_ingest_rejected_total{reason=\"bad_proof\"} ")
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if n >= 7 {
                Ok(())
            } else {
                Err(format!("{n} bad_proof rejects"))
            }
        }
    })
    .await;
    let (after, history_after, events_after) = snapshot(&api, "zt-b").await;
    same_node(&before, &after);
    assert_eq!(after["online"], true);
    assert_eq!(history_after, history);
    assert_eq!(events_after, events);

    // The real agent reconnects (a new conn, with the forged Will still retained): it is
    // online, not "stale", and its report stream is its own: a deprovision goes through.
    assert!(b.terminate().success());
    api.wait_online("zt-b", false, WAIT).await;
    let _b = AgentProc::start_with(tmp.path(), &ctl.broker_url(), "zt-b", &args);
    api.wait_online("zt-b", true, WAIT).await;
    api.post("/api/v1/nodes/zt-b/unmanage", None).await.unwrap();
    let n = api.wait_state("zt-b", "discovered", WAIT).await;
    assert_eq!(n["report_session"], before["report_session"]);
    assert!(n["last_applied_seq"].as_u64() > before["last_applied_seq"].as_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_write_image_cannot_replace_the_local_agents_admin_token() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(tmp.path(), "");
    let mut ctl =
        Controller::start(tmp.path(), &["--local-agent", "--broker", &broker.url()]).await;
    let api = ctl.api();
    let node = eventually(WAIT, "the local agent's node", || {
        let api = api.clone();
        async move {
            let nodes = api.nodes().await?;
            nodes
                .into_iter()
                .find(|n| n["online"] == true)
                .ok_or_else(|| "no node yet".to_string())
        }
    })
    .await;
    let id = node["id"].as_str().unwrap().to_string();
    let token_file = ctl.data_dir.join("admin.token");
    let token = read(&token_file);
    let image = b"mb_attacker_token\n".to_vec();
    let url = serve(image.clone());
    let raw = Watcher::start(broker.port, "nothing/here").await;
    raw.publish(
        &format!("metalbus/v1/nodes/{id}/commands"),
        write_image_install("c-token", &url, &sha256_hex(&image), &token_file),
    )
    .await;
    eventually(WAIT, "the local agent to refuse the forgery", || {
        let log = ctl.log_text();
        async move {
            if log.contains("refused a message that does not prove it came from our controller") {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(read(&token_file), token, "admin.token unchanged");
    // After a restart the attacker's token is nothing, the real one still admin.
    ctl.terminate();
    ctl.restart().await;
    let api = ctl.api();
    let (status, _) = api.get("/api/v1/nodes").await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = api
        .with_token(Some("mb_attacker_token"))
        .get("/api/v1/nodes")
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_needs_the_tokens_secret_and_an_enrolled_node_cannot_be_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let fleet = read(&metalbus_e2e::fleet_token_file(tmp.path()));
    let mut parts: Vec<&str> = fleet.trim().split(':').collect();
    assert_eq!(parts.len(), 4, "MB1:<anchor>:<id>:<secret>");

    // The right id and anchor, a wrong secret: its login (derived from the secret) is
    // refused at the front door, nothing appears. (Through a broker without logins the
    // controller refuses the request's seal instead: engine/enroll/tests.rs.)
    let wrong_secret = "0".repeat(64);
    parts[3] = &wrong_secret;
    let forged = parts.join(":");
    let guess = AgentProc::start_with(
        tmp.path(),
        &ctl.broker_url(),
        "zt-guess",
        &["--enroll-token", &forged],
    );
    eventually(WAIT, "the refusal in the agent's log", || {
        let log = guess.log_text();
        async move {
            if log.contains("the broker refused the enrollment login") {
                Ok(())
            } else {
                Err(log)
            }
        }
    })
    .await;
    let (status, _) = api.get("/api/v1/nodes/zt-guess").await.unwrap();
    assert_eq!(status, 404);

    // A real agent enrolls; a second one claiming its id from another state dir, with
    // the same fleet token, is refused: the id is taken until an operator revokes it.
    let _real = AgentProc::start(tmp.path(), &ctl.broker_url(), "zt-real");
    api.wait_state("zt-real", "discovered", WAIT).await;
    let other = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    let thief = AgentProc::start_with(
        &other,
        &ctl.broker_url(),
        "zt-real",
        &["--enroll-token", fleet.trim()],
    );
    eventually(WAIT, "the takeover refused", || {
        let log = thief.log_text();
        async move {
            if log.contains("node zt-real is already enrolled") {
                Ok(())
            } else {
                Err(log)
            }
        }
    })
    .await;
    let n = api.node("zt-real").await.unwrap();
    assert_eq!(n["online"], true);

    // No token at all, or a malformed one: the agent stops with a clear error.
    let none = tmp.path().join("none");
    std::fs::create_dir_all(&none).unwrap();
    for (args, want) in [
        (vec![], "is not enrolled yet"),
        (
            vec!["--enroll-token", "MB1:nope"],
            "not an enrollment token",
        ),
    ] {
        let out = std::process::Command::new(metalbus_e2e::bin("metalbus-agent"))
            .args([
                "run",
                "--config",
                "/dev/null",
                "--broker",
                &ctl.broker_url(),
            ])
            .args([
                "--node-id",
                "zt-none",
                "--state-dir",
                none.to_str().unwrap(),
            ])
            .args(&args)
            .env_remove("METALBUS_ENROLL_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
        assert!(!err.contains(&wrong_secret));
    }
}
