//! Hostile input from an enrolled node (a buggy agent, or one whose key was stolen):
//! nothing it says stops the controller or stalls its own report stream (issue 12).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metalbus_e2e::{enroll_node, eventually, Controller, Watcher};

const WAIT: Duration = Duration::from_secs(30);

fn birth(hostname: &str) -> Vec<u8> {
    serde_json::json!({
        "online": true, "conn": 1, "session": "s1", "agent_version": "0.1.0",
        "hostname": hostname, "boot_id": null, "metrics_interval_s": 15,
        "ts": "2026-01-01T00:00:00Z",
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multibyte_hostname_next_to_a_registration_does_not_stop_the_controller() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let out = ctl.cli(&["nodes", "register", "web", "--hostname", "web"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "web" is 3 bytes; in "w€b" byte 3 falls inside the euro sign.
    let key = enroll_node(&ctl, "m1").await;
    let node = Watcher::node(ctl.mqtt_port, "m1", &key, None).await;
    node.publish_as(&key, "metalbus/v1/nodes/m1/status", birth("w€b"))
        .await;
    api.wait_state("m1", "discovered", WAIT).await;
    let (status, _) = api.get("/healthz").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(api.node("m1").await.unwrap()["hostname"], "w€b");
    // The registration was not taken by it.
    let web = api.node("web").await.unwrap();
    assert_ne!(web["id"], "m1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_the_controller_refuses_is_receipted_and_the_stream_moves_on() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let key = enroll_node(&ctl, "st").await;
    let node = Watcher::node(
        ctl.mqtt_port,
        "st",
        &key,
        Some("metalbus/v1/nodes/st/receipts"),
    )
    .await;
    node.publish_as(&key, "metalbus/v1/nodes/st/status", birth("st"))
        .await;
    api.wait_state("st", "discovered", WAIT).await;
    let ack = |seq: u64, reason: &str| {
        serde_json::json!({
            "session": "o1", "seq": seq, "ts": "2026-01-01T00:00:00Z", "kind": "ack",
            "command_id": format!("c-{seq}"), "accepted": false, "reason": reason,
        })
        .to_string()
        .into_bytes()
    };
    let topic = "metalbus/v1/nodes/st/reports";
    // 1 is fine; 2 has a reason over the 8 KiB limit; 3 is over the 256 KiB payload
    // limit; 4 is fine again and must not wait behind them.
    node.publish_as(&key, topic, ack(1, "busy")).await;
    node.publish_as(&key, topic, ack(2, &"r".repeat(9_000)))
        .await;
    node.publish_as(&key, topic, ack(3, &"€".repeat(100_000)))
        .await;
    node.publish_as(&key, topic, ack(4, "busy")).await;
    eventually(WAIT, "a receipt up to 4", || {
        let seqs: Vec<u64> = node
            .messages()
            .iter()
            .filter_map(|m| m.json()["seq"].as_u64())
            .collect();
        async move {
            seqs.contains(&4)
                .then_some(())
                .ok_or_else(|| format!("receipts so far: {seqs:?}"))
        }
    })
    .await;
    let (_, events) = api
        .get("/api/v1/nodes/st/events?type=Warning")
        .await
        .unwrap();
    let text = events["data"].to_string();
    assert!(text.contains("MessageRejected"), "{text}");
    assert!(text.contains("9000 bytes"), "{text}");
    assert!(text.contains("too_large"), "{text}");
}

/// Sends a whole `GET /healthz` on a new connection and waits up to `within` for the
/// status line; `None` when no answer came in time.
async fn healthz_raw(port: u16, within: Duration) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(within, s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines().next().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_is_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ctl.http_port))
            .await
            .unwrap();
        // The headers never end.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    let started = std::time::Instant::now();
    for s in &mut slow {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a half-sent request was kept open");
    }
    // Closed by the header timeout (10 s), not at once.
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        healthz_raw(ctl.http_port, WAIT).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_are_capped_and_the_cap_frees_as_they_close() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), "[http]\nmax_connections = 4\n", &[]).await;
    // Wait until the harness's own pooled connection has been closed by the server's
    // idle timeout, so exactly the four below hold the cap.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", ctl.http_port))
            .await
            .unwrap();
        held.push(s);
    }
    // A fifth waits: no answer while the four are open.
    assert_eq!(
        healthz_raw(ctl.http_port, Duration::from_secs(2)).await,
        None
    );
    drop(held);
    assert_eq!(
        healthz_raw(ctl.http_port, WAIT).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_is_answered_408_not_held_for_ever() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ctl.http_port))
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        ctl.token()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf))
        .await
        .expect("no answer in 60 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("not complete within 30 s"), "{text}");
}
