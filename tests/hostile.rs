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
    // (An idle keep-alive connection closed by the same timer counts too.)
    assert!(limit_hits(&ctl, "http_slow_clients").await >= 20);
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
    assert_ne!(limit_hits(&ctl, "http_connections").await, 0);
}

/// `metalbus_limit_hits_total{limit}` of the controller.
async fn limit_hits(ctl: &Controller, limit: &str) -> u64 {
    let metrics = ctl.api().get_text("/metrics").await.unwrap();
    let series = format!("metalbus_limit_hits_total{{limit=\"{limit}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
        .trim()
        .parse()
        .unwrap()
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
    assert!(limit_hits(&ctl, "http_slow_clients").await >= 1);
}

/// Events of `node` as (reason, message), newest first, up to 100.
async fn events_of(api: &metalbus_e2e::Api, node: &str) -> Vec<(String, String)> {
    let (_, body) = api
        .get(&format!("/api/v1/nodes/{node}/events?limit=100"))
        .await
        .unwrap();
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_retains_only_bounded_messages_and_its_rejects_keep_to_their_share() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(
        tmp.path(),
        "[events]\nmax_per_node = 40\nmax_per_reason = 10\n",
        &[],
    )
    .await;
    let api = ctl.api();
    let key = enroll_node(&ctl, "rt").await;
    let node = Watcher::node(ctl.mqtt_port, "rt", &key, None).await;
    let status = "metalbus/v1/nodes/rt/status";
    let seal = |body: Vec<u8>| metalbus_protocol::proof::seal(&key, status, &body).unwrap();
    node.publish_retained(status, seal(birth("small"))).await;
    api.wait_state("rt", "discovered", WAIT).await;
    // A birth padded past the retained bound: the controller takes it, the broker does
    // not keep it.
    let mut big: serde_json::Value = serde_json::from_slice(&birth("big")).unwrap();
    big["conn"] = 2.into();
    big["pad"] = "p".repeat(6_000).into();
    node.publish_retained(status, seal(big.to_string().into_bytes()))
        .await;
    eventually(WAIT, "the padded birth applied", || {
        let api = api.clone();
        async move {
            let host = api.node("rt").await?["hostname"].clone();
            (host == "big")
                .then_some(())
                .ok_or(format!("hostname {host}"))
        }
    })
    .await;
    let late = Watcher::monitor(&ctl, status).await;
    eventually(WAIT, "the retained status", || {
        let got: Vec<serde_json::Value> = late.messages().iter().map(|m| m.json()).collect();
        async move {
            match got.as_slice() {
                [one] => Ok(one["hostname"].clone()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(late.messages()[0].json()["hostname"], "small");

    // Forty inventories refused for forty different reasons: at most ten of them are
    // kept, and the node's other events stay.
    let before: Vec<String> = events_of(&api, "rt")
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert!(before.iter().any(|r| r != "MessageRejected"), "{before:?}");
    let inventory = "metalbus/v1/nodes/rt/inventory";
    for i in 0..40 {
        // The parse error names a different column each time.
        let bad = format!("{{\"hostname\":\"rt\",\"cpu\":{}oops}}", " ".repeat(i));
        node.publish_as(&key, inventory, bad.into_bytes()).await;
    }
    eventually(WAIT, "the rejects recorded", || {
        let api = api.clone();
        async move {
            let events = events_of(&api, "rt").await;
            let rejected = events.iter().filter(|e| e.0 == "MessageRejected").count();
            (rejected == 10)
                .then_some(events)
                .ok_or(format!("{rejected} MessageRejected kept"))
        }
    })
    .await;
    let after: Vec<String> = events_of(&api, "rt")
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    for reason in before.iter().filter(|r| *r != "MessageRejected") {
        assert!(after.contains(reason), "{reason} was pushed out: {after:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_and_free_as_they_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), "[http]\nmax_event_streams = 2\n", &[]).await;
    let open = || async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ctl.http_port))
            .await
            .unwrap();
        let head = format!(
            "GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            ctl.token()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let status = String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        (s, status, String::from_utf8_lossy(&buf[..n]).to_string())
    };
    let (first, status, _) = open().await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (_second, status, _) = open().await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (_, status, text) = open().await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{text}");
    assert!(text.contains("max_event_streams"), "{text}");
    assert_eq!(limit_hits(&ctl, "event_streams").await, 1);
    // The rest of the API still answers, and a closed stream frees its place.
    assert_eq!(
        healthz_raw(ctl.http_port, WAIT).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    drop(first);
    eventually(WAIT, "a free place", || {
        let open = open();
        async move {
            let (_, status, _) = open.await;
            (status == "HTTP/1.1 200 OK").then_some(()).ok_or(status)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_fleet_token_cannot_enroll_past_the_waiting_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), "[enroll]\nmax_waiting_nodes = 2\n", &[]).await;
    let api = ctl.api();
    let key = enroll_node(&ctl, "wa").await;
    enroll_node(&ctl, "wb").await;
    // The third waits: the controller refuses it (the agent would retry slowly).
    let third = tokio::time::timeout(Duration::from_secs(5), enroll_node(&ctl, "wc")).await;
    assert!(third.is_err(), "a third node enrolled past the bound");
    assert_ne!(limit_hits(&ctl, "waiting_nodes").await, 0);
    assert!(api.node("wc").await.is_err());
    // An operator takes one on (here: retires it); then there is room.
    let node = Watcher::node(ctl.mqtt_port, "wa", &key, None).await;
    node.publish_as(&key, "metalbus/v1/nodes/wa/status", birth("wa"))
        .await;
    api.wait_state("wa", "discovered", WAIT).await;
    let out = ctl.cli(&["nodes", "retire", "wa"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    api.wait_state("wa", "retired", WAIT).await;
    enroll_node(&ctl, "wc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_clients_are_capped_and_the_cap_frees_as_they_close() {
    use tokio::io::AsyncReadExt;
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), "[mqtt]\nmax_connections = 3\n", &[]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", ctl.mqtt_port))
            .await
            .unwrap();
        held.push(s);
    }
    // Let the door accept the three before the fourth comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut fourth = tokio::net::TcpStream::connect(("127.0.0.1", ctl.mqtt_port))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(3), fourth.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth connection was not closed at once: {closed:?}"
    );
    assert_ne!(limit_hits(&ctl, "mqtt_connections").await, 0);
    drop(held);
    eventually(WAIT, "a monitor connects once the three are gone", || {
        let (port, token) = (ctl.mqtt_port, ctl.token());
        async move {
            Watcher::connect(port, Some(("monitor", token.as_str())), None)
                .await
                .map(|_| ())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_are_capped_apart_from_agents_and_the_cap_frees_as_they_close() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), "[mqtt]\nmax_monitors = 2\n", &[]).await;
    let (port, token) = (ctl.mqtt_port, ctl.token());
    let monitor = || Watcher::connect(port, Some(("monitor", token.as_str())), None);
    let first = monitor().await.unwrap();
    let _second = monitor().await.unwrap();
    let third = monitor().await;
    assert!(
        third.as_ref().is_err_and(|e| e.contains("refused")),
        "a third monitor: {:?}",
        third.map(|_| ())
    );
    assert_eq!(limit_hits(&ctl, "mqtt_monitors").await, 1);
    // Agents do not count against it: two nodes still connect (they share the hub's
    // session with the router).
    for id in ["mon-a", "mon-b"] {
        let key = enroll_node(&ctl, id).await;
        Watcher::node(
            port,
            id,
            &key,
            Some(&format!("metalbus/v1/nodes/{id}/commands")),
        )
        .await;
    }
    drop(first);
    eventually(WAIT, "a monitor connects once one is gone", || async {
        monitor().await.map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_bodies_are_refused_and_a_silent_tls_client_is_closed() {
    use tokio::io::AsyncReadExt;
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    // A head over 64 KiB.
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(100 * 1024)
    );
    assert_eq!(
        ctl.raw_status(head.as_bytes()).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // A body over 2 MiB.
    let body = format!("{{\"name\":\"{}\"}}", "n".repeat(3 * 1024 * 1024));
    let request = ctl.raw_post("/api/v1/nodes", &body);
    assert_eq!(
        ctl.raw_status(&request).await,
        "HTTP/1.1 413 Payload Too Large"
    );
    assert_eq!(limit_hits(&ctl, "http_too_large").await, 2);
    drop(ctl);

    // Over TLS: a client that never starts its handshake is closed after 10 s.
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), "[http]\ntls = true\n", &[]).await;
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", ctl.http_port))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, silent.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a silent TLS client was kept open");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(limit_hits(&ctl, "http_slow_clients").await >= 1);
}
