//! The embedded broker's front door: who may connect, and what each kind of client may
//! publish, subscribe to and receive (DESIGN section 11).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use metalbus_e2e::{enroll_node, eventually, steps_dir, AgentProc, Controller, Watcher};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// Whether `w`'s connection is still alive: a publish it may make would fail once the
/// door has closed it. Probed by a subscription round trip instead: a closed client
/// never gets its SUBACK.
async fn connected(port: u16, login: (&str, &str)) -> bool {
    Watcher::connect(port, Some(login), None).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_unknown_clients_are_refused_at_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let port = ctl.mqtt_port;
    for login in [
        None,
        Some(("someone", "")),
        Some(("someone", "mb_not_a_token")),
        Some(("metalbus-controller", "")),
        Some(("metalbus-door", "guess")),
        Some(("metalbus-enroll", "no-such-token")),
        Some(("some-node", "0000")),
    ] {
        let r = Watcher::connect(port, login, Some("metalbus/v1/#")).await;
        assert!(r.is_err(), "{login:?} was let in");
    }
    // The same port takes a monitoring tool with an API token.
    let token = ctl.token();
    assert!(connected(port, ("grafana", &token)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_the_fleet_but_no_commands_and_cannot_publish() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::with_config(tmp.path(), &Controller::quick_plan("0.3"), &[]).await;
    let api = ctl.api();
    let out = ctl.cli(&["tokens", "create", "--name", "grafana", "--role", "viewer"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let viewer = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let steps = steps_dir(tmp.path(), &[]);
    let agent = AgentProc::start_with(
        tmp.path(),
        &ctl.broker_url(),
        "fd-1",
        &["--steps-dir", steps.to_str().unwrap()],
    );
    api.wait_state("fd-1", "discovered", WAIT).await;

    let monitor = Watcher::connect(
        ctl.mqtt_port,
        Some(("grafana", &viewer)),
        Some("metalbus/v1/#"),
    )
    .await
    .unwrap();
    // An install: commands and receipts flow, but never to the monitor.
    api.post("/api/v1/nodes/fd-1/manage", None).await.unwrap();
    api.wait_state("fd-1", "active", WAIT).await;
    let seen = eventually(
        WAIT,
        "the install, status and metrics at the monitor",
        || {
            let msgs = monitor.messages();
            async move {
                let has = |suffix: &str| msgs.iter().any(|m| m.topic.ends_with(suffix));
                // Live, not retained: the monitor stayed subscribed while commands and
                // receipts for the install went past it (the door acknowledges those for
                // it, in the router's order; out of order, the router ended the session).
                let live_active = msgs.iter().any(|m| {
                    m.topic.ends_with("/fd-1/state") && !m.retain && m.json()["state"] == "active"
                });
                // Metrics reach the router only while a monitor's filter takes them
                // (DECISIONS §73): this one's does.
                if live_active && has("/summary") && has("/fd-1/status") && has("/fd-1/metrics") {
                    Ok(msgs)
                } else {
                    Err(format!(
                        "{:?}",
                        msgs.iter().map(|m| m.topic.clone()).collect::<Vec<_>>()
                    ))
                }
            }
        },
    )
    .await;
    for m in &seen {
        for hidden in ["/commands", "/receipts", "/reports", "/enroll", "/enrolled"] {
            assert!(!m.topic.ends_with(hidden), "the monitor got {}", m.topic);
        }
    }

    // Every publish the monitor makes, retained or not, on any topic: its connection is
    // closed, and nothing reaches the agent or changes what the API shows.
    let before = api.node("fd-1").await.unwrap();
    let now = metalbus_protocol::Timestamp::from(std::time::SystemTime::now());
    let reboot = json!({"command_id": "c-monitor", "kind": "reboot", "issued_at": now,
        "expires_at": "2999-01-01T00:00:00Z"});
    let attempts: Vec<(String, Vec<u8>, bool)> = vec![
        (
            "metalbus/v1/nodes/fd-1/commands".into(),
            serde_json::to_vec(&reboot).unwrap(),
            false,
        ),
        (
            "metalbus/v1/nodes/fd-1/status".into(),
            br#"{"online":false,"reason":"lost","conn":99}"#.to_vec(),
            true,
        ),
        (
            "metalbus/v1/nodes/fd-1/state".into(),
            br#"{"state":"retired"}"#.to_vec(),
            true,
        ),
        ("metalbus/v1/summary".into(), b"{}".to_vec(), true),
        ("elsewhere/entirely".into(), b"x".to_vec(), false),
    ];
    let tries = attempts.len();
    let mut publishers = Vec::new();
    for (topic, payload, retain) in attempts {
        let m = Watcher::connect(ctl.mqtt_port, Some(("grafana", &viewer)), None)
            .await
            .unwrap();
        if retain {
            m.publish_retained(&topic, payload).await;
        } else {
            m.publish(&topic, payload).await;
        }
        // Kept until the end: dropping a client could stop it before it sends.
        publishers.push(m);
    }
    eventually(WAIT, "the door to refuse every publish", || {
        let n = ctl
            .log_text()
            .matches("publish refused; connection closed")
            .count();
        async move {
            (n >= tries)
                .then_some(())
                .ok_or_else(|| format!("{n} of {tries} refused"))
        }
    })
    .await;
    let after = api.node("fd-1").await.unwrap();
    for key in ["state", "online", "version", "last_applied_seq", "job"] {
        assert_eq!(after[key], before[key], "{key} changed");
    }
    assert!(
        !agent.log_text().contains("c-monitor"),
        "the monitor's command reached the agent"
    );
    // A fresh monitor sees the real retained state, not the monitor's.
    let fresh = Watcher::monitor(&ctl, "metalbus/v1/nodes/fd-1/state").await;
    let state = eventually(WAIT, "the retained state", || {
        let msgs = fresh.messages();
        async move { msgs.last().cloned().ok_or_else(|| "none yet".to_string()) }
    })
    .await;
    assert_eq!(state.json()["state"], "active");
    // A monitor that asks for one node's metrics later gets them from then on.
    let metrics = Watcher::monitor(&ctl, "metalbus/v1/nodes/fd-1/metrics").await;
    eventually(WAIT, "a metrics sample at the late monitor", || {
        let n = metrics.messages().len();
        async move { (n > 0).then_some(()).ok_or_else(|| "none yet".to_string()) }
    })
    .await;
    drop(publishers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_credential_reaches_only_its_own_topics() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let a = AgentProc::start(tmp.path(), &ctl.broker_url(), "fd-a");
    let _b = AgentProc::start(tmp.path(), &ctl.broker_url(), "fd-b");
    for id in ["fd-a", "fd-b"] {
        api.wait_state(id, "discovered", WAIT).await;
    }
    let before = api.node("fd-b").await.unwrap();
    let history = api.transitions("fd-b").await.unwrap();
    let key = a.key();
    let password = key.broker_password();
    // As node A: subscribing to B's commands is refused.
    let sub = Watcher::connect(
        ctl.mqtt_port,
        Some(("fd-a", &password)),
        Some("metalbus/v1/nodes/fd-b/commands"),
    )
    .await;
    assert!(sub.is_err(), "A subscribed to B's commands");
    // Publishing as B on each of B's topics, even sealed with A's key: refused.
    let mut publishers = Vec::new();
    for kind in ["status", "inventory", "metrics", "reports"] {
        let w = Watcher::node(ctl.mqtt_port, "fd-a", &key, None).await;
        w.publish_as(
            &key,
            &format!("metalbus/v1/nodes/fd-b/{kind}"),
            br#"{"online":false,"reason":"lost","conn":99}"#.to_vec(),
        )
        .await;
        // Kept until the end: dropping a client could stop it before it sends.
        publishers.push(w);
    }
    eventually(WAIT, "the door to refuse A's four publishes", || {
        let n = ctl
            .log_text()
            .matches("publish refused; connection closed")
            .count();
        async move {
            (n >= 4)
                .then_some(())
                .ok_or_else(|| format!("{n} of 4 refused"))
        }
    })
    .await;
    // A cannot log in with B's name, nor leave a Will on B's status.
    assert!(!connected(ctl.mqtt_port, ("fd-b", &password)).await);
    let mut opts = rumqttc::MqttOptions::new("fd-a-will", "127.0.0.1", ctl.mqtt_port);
    opts.set_credentials("fd-a", password.as_str());
    opts.set_last_will(rumqttc::LastWill::new(
        "metalbus/v1/nodes/fd-b/status",
        metalbus_protocol::proof::seal(
            &key,
            "metalbus/v1/nodes/fd-b/status",
            br#"{"online":false,"reason":"lost","conn":99}"#,
        )
        .unwrap(),
        rumqttc::QoS::AtLeastOnce,
        true,
    ));
    let (_client, mut events) = rumqttc::AsyncClient::new(opts, 4);
    let refused = tokio::time::timeout(WAIT, events.poll()).await.unwrap();
    assert!(
        matches!(refused, Err(rumqttc::ConnectionError::ConnectionRefused(_))),
        "a Will on B's status was accepted: {refused:?}"
    );
    drop(publishers);
    let after = api.node("fd-b").await.unwrap();
    for k in ["state", "online", "version", "specs", "hostname"] {
        assert_eq!(after[k], before[k], "{k} changed");
    }
    assert_eq!(api.transitions("fd-b").await.unwrap(), history);
    let (_, events) = api
        .get("/api/v1/nodes/fd-b/events?type=Warning")
        .await
        .unwrap();
    assert_eq!(events["data"], json!([]), "no warnings on B");
}

/// A raw MQTT 3.1.1 CONNECT (clean session) with an optional login and an optional Will
/// (QoS 1, retained).
fn connect_packet(
    client_id: &str,
    keep_alive: u16,
    login: Option<(&[u8], &[u8])>,
    will: Option<(&str, &[u8])>,
) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut flags = 0b0000_0010;
    if will.is_some() {
        flags |= 0b0010_1100;
    }
    if login.is_some() {
        flags |= 0b1100_0000;
    }
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags];
    body.extend_from_slice(&keep_alive.to_be_bytes());
    field(&mut body, client_id.as_bytes());
    if let Some((topic, payload)) = will {
        field(&mut body, topic.as_bytes());
        field(&mut body, payload);
    }
    if let Some((user, password)) = login {
        field(&mut body, user);
        field(&mut body, password);
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        packet.push(b);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// Sends `bytes` on a raw TCP connection to the door and says whether it was closed
/// (read returns end of file or an error) within `within`.
async fn closed_after(port: u16, bytes: &[u8], within: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A CONNACK refusal before the close is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_at_the_door_close_that_client_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let port = ctl.mqtt_port;
    let token = ctl.token();
    // A CONNECT whose user name is multibyte and whose password is 60 KB.
    let connect = connect_packet(
        "x",
        30,
        Some(("nœud-€".as_bytes(), &vec![b'p'; 60_000])),
        None,
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "not MQTT at all",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("bytes that are no packet type", vec![0xff; 64]),
        (
            "a PUBLISH before any CONNECT",
            vec![0x30, 0x05, 0, 1, b'a', b'h', b'i'],
        ),
        (
            "a CONNECT claiming 256 MiB",
            vec![0x10, 0xff, 0xff, 0xff, 0x7f],
        ),
        ("a bad user with a huge password", connect),
    ];
    for (what, bytes) in cases {
        assert!(
            closed_after(port, &bytes, Duration::from_secs(5)).await,
            "{what}: still open"
        );
    }
    // None of it stopped the door or the controller.
    assert!(connected(port, ("grafana", &token)).await);
    let (status, _) = ctl.api().get("/healthz").await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_keeps_the_keep_alive_and_publishes_a_will_only_without_disconnect() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let key = enroll_node(&ctl, "fd-ka").await;
    let password = key.broker_password();
    let topic = "metalbus/v1/nodes/fd-ka/status";
    let monitor = Watcher::monitor(&ctl, topic).await;
    let will = |conn: u64| {
        let body = format!(r#"{{"online":false,"reason":"lost","conn":{conn}}}"#);
        metalbus_protocol::proof::seal(&key, topic, body.as_bytes()).unwrap()
    };
    let session = |client_id: &str, keep_alive: u16, conn: u64| {
        let login = ("fd-ka".as_bytes(), password.as_bytes());
        connect_packet(
            client_id,
            keep_alive,
            Some(login),
            Some((topic, &will(conn))),
        )
    };
    // A client that says DISCONNECT leaves no Will.
    let mut polite = tokio::net::TcpStream::connect(("127.0.0.1", ctl.mqtt_port))
        .await
        .unwrap();
    polite.write_all(&session("polite", 30, 1)).await.unwrap();
    connack(&mut polite).await;
    polite.write_all(&[0xE0, 0]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, polite.read_to_end(&mut rest)).await;
    // A client that goes silent: its PINGREQ is answered, then after one and a half
    // keep-alive periods the door closes it and publishes its Will.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", ctl.mqtt_port))
        .await
        .unwrap();
    silent.write_all(&session("silent", 1, 2)).await.unwrap();
    connack(&mut silent).await;
    silent.write_all(&[0xC0, 0]).await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(WAIT, silent.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong, [0xD0, 0], "PINGRESP");
    let quiet_from = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, silent.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a silent client was kept open");
    assert!(
        quiet_from.elapsed() >= Duration::from_secs(1),
        "closed before its keep-alive ran out"
    );
    eventually(WAIT, "the silent client's Will", || {
        let conns: Vec<u64> = monitor
            .messages()
            .iter()
            .filter(|m| m.topic == topic)
            .filter_map(|m| m.json()["conn"].as_u64())
            .collect();
        async move {
            (conns.contains(&2))
                .then_some(())
                .ok_or_else(|| format!("status messages seen: {conns:?}"))
        }
    })
    .await;
    let conns: Vec<u64> = monitor
        .messages()
        .iter()
        .filter_map(|m| m.json()["conn"].as_u64())
        .collect();
    assert_eq!(conns, vec![2], "only the silent client's Will");
}

/// Reads a CONNACK and checks it accepts the session.
async fn connack(s: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut ack = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut ack))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK accepted");
}
