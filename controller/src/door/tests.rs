//! The front door's rules as plain functions: who a CONNECT is, and what each kind of
//! client may publish, subscribe to and receive.

use std::sync::Arc;

use metalbus_protocol::proof::NodeKey;

use super::*;
use crate::store::{Store, TokenRecord};
use crate::telemetry::Telemetry;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn door() -> (Door, Store) {
    let (door, store, _engine) = door_and_engine();
    (door, store)
}

/// A door and the engine's end of its intake.
fn door_and_engine() -> (
    Door,
    Store,
    tokio::sync::mpsc::Receiver<crate::engine::Input>,
) {
    let mut store = Store::in_memory(Arc::new(Telemetry::new())).unwrap();
    let record = TokenRecord {
        name: "grafana".into(),
        role: Role::Viewer,
        created_at: metalbus_protocol::Timestamp::from_unix_millis(0),
    };
    store
        .write(redb::Durability::Immediate, |tx| {
            tx.put_token(&token_hash("mb_viewer"), &record)
        })
        .unwrap();
    let keys = Keyring::default();
    keys.set(id("n1"), NodeKey::from_bytes([1; 32]));
    keys.set_enroll_tokens([("fleet".to_string(), "fleet-password".to_string())]);
    let telemetry = Arc::new(crate::telemetry::Telemetry::new());
    let (engine, engine_rx) = tokio::sync::mpsc::channel(64);
    let (publish, _outbound) = crate::publish::PublishQueue::new();
    let intake = Intake::new(
        Topics::default(),
        telemetry.clone(),
        engine,
        publish,
        keys.clone(),
    );
    let door = Door {
        topics: Topics::default(),
        keys,
        store: store.reader(),
        links: Arc::new(|_: &str, _: bool| Err("no broker in unit tests".to_string())),
        telemetry,
        clients: Arc::new(tokio::sync::Semaphore::new(16)),
        monitors: Arc::new(tokio::sync::Semaphore::new(4)),
        intake: Arc::new(intake),
        interest: Interest::default(),
    };
    (door, store, engine_rx)
}

fn login(u: &str, p: &str) -> Login {
    Login {
        username: u.into(),
        password: p.into(),
    }
}

#[test]
fn each_kind_of_client_is_recognised_and_strangers_are_refused() {
    let (door, _store) = door();
    let n1 = NodeKey::from_bytes([1; 32]).broker_password();
    let auth = |l: Option<Login>| door.authenticate(l.as_ref(), None);
    assert_eq!(auth(Some(login("n1", &n1))), Ok(Client::Node(id("n1"))));
    assert_eq!(
        auth(Some(login("metalbus-enroll.fleet", "fleet-password"))),
        Ok(Client::Enrolling)
    );
    assert_eq!(
        auth(Some(login("grafana", "mb_viewer"))),
        Ok(Client::Monitor(Role::Viewer))
    );
    for refused in [
        None,
        Some(login("", "")),
        Some(login("n1", "")),
        Some(login("n1", &NodeKey::from_bytes([2; 32]).broker_password())),
        Some(login("n2", &n1)),
        Some(login("metalbus-enroll.fleet", "fleet")),
        Some(login("metalbus-enroll.other", "fleet-password")),
        Some(login("metalbus-enroll", "fleet-password")),
        Some(login("grafana", "mb_wrong")),
        Some(login("metalbus-controller", "")),
        Some(login(INTERNAL_USER, "x")),
        Some(login("n1€", "€")),
    ] {
        assert!(auth(refused.clone()).is_err(), "{refused:?}");
    }
}

#[test]
fn only_a_node_may_leave_a_will_and_only_on_its_own_status() {
    let (door, _store) = door();
    let n1 = login("n1", &NodeKey::from_bytes([1; 32]).broker_password());
    let will = |topic: &str| LastWill {
        topic: topic.to_string().into(),
        message: "{}".into(),
        qos: QoS::AtLeastOnce,
        retain: true,
    };
    let own = will("metalbus/v1/nodes/n1/status");
    assert!(door.authenticate(Some(&n1), Some(&own)).is_ok());
    let other = will("metalbus/v1/nodes/n2/status");
    assert!(door.authenticate(Some(&n1), Some(&other)).is_err());
    let summary = will("metalbus/v1/summary");
    assert!(door.authenticate(Some(&n1), Some(&summary)).is_err());
    let viewer = login("grafana", "mb_viewer");
    assert!(door.authenticate(Some(&viewer), Some(&own)).is_err());
}

#[test]
fn topic_rules_by_kind_of_client() {
    let t = Topics::default();
    let node = Client::Node(id("n1"));
    let enrolling = Client::Enrolling;
    let monitor = Client::Monitor(Role::Viewer);
    let p = |k: &str| format!("metalbus/v1/nodes/n1/{k}");
    let q = |k: &str| format!("metalbus/v1/nodes/n2/{k}");
    for k in ["status", "inventory", "metrics", "reports"] {
        assert!(node.may_publish(&t, &p(k)), "{k}");
        assert!(!node.may_publish(&t, &q(k)), "{k} of another node");
        assert!(!monitor.may_publish(&t, &p(k)));
        assert!(!enrolling.may_publish(&t, &p(k)));
    }
    for k in [
        "commands", "receipts", "state", "rejects", "enroll", "enrolled",
    ] {
        assert!(!node.may_publish(&t, &p(k)), "{k}");
    }
    for topic in [
        "metalbus/v1/summary",
        "metalbus/v1/events/transitions",
        "other/x",
        "#",
        "",
    ] {
        for c in [&node, &enrolling, &monitor] {
            assert!(!c.may_publish(&t, topic), "{c:?} {topic}");
        }
    }
    assert!(enrolling.may_publish(&t, &q("enroll")));
    // Subscriptions.
    assert!(node.may_subscribe(&t, &p("commands")));
    assert!(node.may_subscribe(&t, &p("receipts")));
    for f in [
        q("commands"),
        "metalbus/v1/nodes/+/commands".into(),
        "metalbus/v1/#".into(),
        "#".into(),
    ] {
        assert!(!node.may_subscribe(&t, &f), "{f}");
        assert!(!enrolling.may_subscribe(&t, &f), "{f}");
    }
    assert!(enrolling.may_subscribe(&t, &q("enrolled")));
    assert!(!enrolling.may_subscribe(&t, "metalbus/v1/nodes/+/enrolled"));
    assert!(monitor.may_subscribe(&t, "metalbus/v1/#"));
    // What each may receive.
    for k in ["state", "status", "inventory", "metrics", "rejects"] {
        assert!(monitor.may_receive(&t, &p(k)), "{k}");
    }
    for k in ["commands", "receipts", "reports", "enroll", "enrolled"] {
        assert!(!monitor.may_receive(&t, &p(k)), "{k}");
    }
    for topic in [
        "metalbus/v1/summary",
        "metalbus/v1/events/transitions",
        "metalbus/v1/controller/status",
    ] {
        assert!(monitor.may_receive(&t, topic));
        assert!(!node.may_receive(&t, topic));
    }
    assert!(node.may_receive(&t, &p("commands")));
    assert!(!node.may_receive(&t, &q("commands")));
}

#[test]
fn after_login_a_second_connect_or_a_wildcard_publish_ends_the_connection() {
    let t = Topics::default();
    let node = Client::Node(id("n1"));
    let second = Packet::Connect(
        rumqttd::protocol::Connect {
            keep_alive: 30,
            client_id: "again".into(),
            clean_session: true,
        },
        None,
        None,
        None,
        None,
    );
    assert!(inbound(&node, &t, second).is_err());
    let publish =
        |topic: &str| Packet::Publish(Publish::new(topic.to_string(), "{}".into(), false), None);
    for topic in [
        "metalbus/v1/nodes/+/status",
        "metalbus/v1/nodes/#",
        "metalbus/v1/nodes/n1/status/x",
        "metalbus/v1/nodes/n€/status",
    ] {
        assert!(inbound(&node, &t, publish(topic)).is_err(), "{topic}");
    }
    assert!(inbound(&node, &t, publish("metalbus/v1/nodes/n1/status")).is_ok());
    // A monitor's exactly-once subscription is served at-least-once.
    let sub = Packet::Subscribe(
        rumqttd::protocol::Subscribe {
            pkid: 1,
            filters: vec![rumqttd::protocol::Filter {
                path: "metalbus/v1/#".into(),
                qos: QoS::ExactlyOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: rumqttd::protocol::RetainForwardRule::OnEverySubscribe,
            }],
        },
        None,
    );
    match inbound(&Client::Monitor(Role::Viewer), &t, sub) {
        Ok(Packet::Subscribe(s, _)) => assert_eq!(s.filters[0].qos, QoS::AtLeastOnce),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_node_retains_only_its_status_and_inventory_and_only_up_to_their_bounds() {
    let t = Topics::default();
    let node = Client::Node(id("n1"));
    let retained = |topic: &str, size: usize| {
        let payload = vec![b' '; size];
        let mut p = Packet::Publish(Publish::new(topic.as_bytes().to_vec(), payload, true), None);
        let stripped = bound_retained(&node, &t, &mut p);
        match p {
            Packet::Publish(p, _) => {
                assert_eq!(p.retain, !stripped);
                assert_eq!(p.payload.len(), size, "the payload is forwarded whole");
                p.retain
            }
            other => panic!("{other:?}"),
        }
    };
    let status = "metalbus/v1/nodes/n1/status";
    let inventory = "metalbus/v1/nodes/n1/inventory";
    assert!(retained(status, 300));
    assert!(retained(status, MAX_RETAINED_STATUS));
    assert!(!retained(status, MAX_RETAINED_STATUS + 1));
    assert!(retained(inventory, MAX_RETAINED_INVENTORY));
    assert!(!retained(inventory, MAX_RETAINED_INVENTORY + 1));
    for k in ["metrics", "reports"] {
        assert!(!retained(&format!("metalbus/v1/nodes/n1/{k}"), 10), "{k}");
    }
    // An enrolling agent retains nothing, on any node's topic.
    let mut p = Packet::Publish(
        Publish::new("metalbus/v1/nodes/x/enroll".to_string(), "{}".into(), true),
        None,
    );
    assert!(bound_retained(&Client::Enrolling, &t, &mut p));
}

#[test]
fn a_will_keeps_its_qos_retain_flag_topic_and_message() {
    for (qos, retain) in [
        (QoS::AtMostOnce, false),
        (QoS::AtLeastOnce, true),
        (QoS::ExactlyOnce, false),
    ] {
        let will = LastWill {
            topic: "metalbus/v1/nodes/n1/status".into(),
            message: "{\"online\":false,\"reason\":\"lost\"}".into(),
            qos,
            retain,
        };
        let p = will_publish(will.clone());
        assert_eq!(qos_and_pkid(&p), (qos as u8, 1));
        assert_eq!(p.retain, retain);
        assert_eq!(p.topic, will.topic);
        assert_eq!(p.payload, will.message);
        // The encoder the door writes with agrees.
        let mut out = BytesMut::new();
        encode(Packet::Publish(p, None), &mut out).unwrap();
        assert_eq!((out[0] >> 1) & 0b11, qos as u8);
        assert_eq!(out[0] & 1, u8::from(retain));
    }
}

#[test]
fn a_ping_is_answered_by_the_door_and_garbage_is_an_error_not_a_panic() {
    let mut out = BytesMut::new();
    let mut buf = BytesMut::from(&[0xC0u8, 0x00][..]);
    assert!(matches!(next(&mut buf, 1024), Ok(Some(Packet::PingReq(_)))));
    for bytes in [
        &[0xF0u8, 0x00][..],             // reserved packet type 15
        &[0x00, 0x00],                   // reserved packet type 0
        &[0xE0, 0x01, 0x00],             // DISCONNECT with a body (v5 only)
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF], // remaining length over four bytes
        &[0x82, 0x02, 0x00, 0x01],       // SUBSCRIBE with no filter
        &[0x30, 0x03, 0x00, 0x05, 0x61], // topic longer than the packet
    ] {
        let mut buf = BytesMut::from(bytes);
        assert!(next(&mut buf, 1024).is_err(), "{bytes:?}");
    }
    // Over the size limit: refused from the fixed header alone.
    let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0x7F][..]);
    assert!(next(&mut buf, 1024).is_err());
    encode(Packet::PingResp(PingResp), &mut out).unwrap();
    assert_eq!(&out[..], &[0xD0, 0x00]);
    // A v5-only CONNACK code is sent as "server unavailable", not a panic.
    out.clear();
    let ack = ConnAck {
        session_present: false,
        code: ConnectReturnCode::QuotaExceeded,
    };
    encode(Packet::ConnAck(ack, None), &mut out).unwrap();
    assert_eq!(&out[..], &[0x20, 0x02, 0x00, 0x03]);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_given_up_on() {
    let (mut door_side, _client_side) = tokio::io::duplex(64);
    let limit = Duration::from_millis(50);
    assert!(write_within(&mut door_side, &[0u8; 32], limit)
        .await
        .is_ok());
    // The client reads nothing: the pipe fills and the write gives up.
    let stuck = write_within(&mut door_side, &[0u8; 4096], limit).await;
    assert_eq!(stuck, Err("the client stopped reading".to_string()));
}

/// Bytes a client would send: `packets` encoded one after the other.
fn wire(packets: Vec<Packet>) -> BytesMut {
    let mut buf = BytesMut::new();
    for p in packets {
        V4.write(p, &mut buf).unwrap();
    }
    buf
}

fn qos1_publish(topic: &str, payload: Vec<u8>, retain: bool, pkid: u16) -> Packet {
    publish_with_qos(1, topic, payload, retain, pkid)
}

fn publish_with_qos(qos: u8, topic: &str, payload: Vec<u8>, retain: bool, pkid: u16) -> Packet {
    Packet::Publish(
        raw_publish(qos, retain, pkid, topic.as_bytes(), &payload),
        None,
    )
}

fn subscribe(path: &str) -> Packet {
    Packet::Subscribe(
        rumqttd::protocol::Subscribe {
            pkid: 7,
            filters: vec![rumqttd::protocol::Filter {
                path: path.into(),
                qos: QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: rumqttd::protocol::RetainForwardRule::OnEverySubscribe,
            }],
        },
        None,
    )
}

#[tokio::test]
async fn an_agent_through_the_hub_is_answered_by_the_door_and_bounded() {
    let (door, _store) = door();
    let (hub, mut queue) = Hub::detached(16);
    let node = Client::Node(id("n1"));
    let mut subscribed = Vec::new();
    let mut out = BytesMut::new();
    // Its own subscription is granted, its publish handed over and acknowledged; a
    // status padded past the retained bound is handed over, not retained.
    let mut buf = wire(vec![
        subscribe("metalbus/v1/nodes/n1/commands"),
        qos1_publish(
            "metalbus/v1/nodes/n1/status",
            vec![b' '; MAX_RETAINED_STATUS + 1],
            true,
            9,
        ),
    ]);
    let said = from_node(&node, &door, &hub, &mut buf, &mut out, &mut subscribed).await;
    assert_eq!(said, Ok(false));
    assert_eq!(subscribed, ["metalbus/v1/nodes/n1/commands"]);
    let mut answers = out.clone();
    assert!(matches!(next(&mut answers, 1024), Ok(Some(Packet::SubAck(s, _))) if s.pkid == 7));
    assert!(matches!(next(&mut answers, 1024), Ok(Some(Packet::PubAck(a, _))) if a.pkid == 9));
    match queue.try_recv() {
        Ok(Packet::Publish(p, _)) => assert!(!p.retain, "kept retained past the bound"),
        other => panic!("{other:?}"),
    }
    let hits = door
        .telemetry
        .limit_hits
        .get_or_create(&crate::telemetry::LimitLabel {
            limit: "retained_size".into(),
        })
        .get();
    assert_eq!(hits, 1);

    // Each of these ends the connection and hands nothing over.
    for packet in [
        qos1_publish("metalbus/v1/nodes/n2/status", b"{}".to_vec(), false, 1),
        qos1_publish("metalbus/v1/nodes/n€/status", b"{}".to_vec(), false, 1),
        subscribe("metalbus/v1/nodes/n2/commands"),
        subscribe("metalbus/v1/nodes/+/commands"),
        subscribe("metalbus/v1/#"),
    ] {
        let mut buf = wire(vec![packet.clone()]);
        let ended = from_node(&node, &door, &hub, &mut buf, &mut out, &mut subscribed).await;
        assert!(ended.is_err(), "{packet:?}");
        assert!(queue.try_recv().is_err(), "{packet:?} reached the broker");
    }
    // Exactly-once is not offered, even on its own topic.
    let exactly_once =
        publish_with_qos(2, "metalbus/v1/nodes/n1/metrics", b"{}".to_vec(), false, 3);
    let mut buf = wire(vec![exactly_once]);
    let ended = from_node(&node, &door, &hub, &mut buf, &mut out, &mut subscribed).await;
    assert!(ended.is_err());
    assert!(queue.try_recv().is_err());
    // Garbage is an error, not a panic.
    let mut garbage = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0xff][..]);
    assert!(
        from_node(&node, &door, &hub, &mut garbage, &mut out, &mut subscribed)
            .await
            .is_err()
    );
}

/// DECISIONS §73: what a node publishes reaches the controller from the door; the router
/// gets what a monitor may receive: statuses and inventories (retained), and metrics
/// only while a monitor's filter takes them.
#[tokio::test]
async fn a_nodes_messages_go_to_the_controller_and_to_the_router_only_for_monitors() {
    let (door, _store, mut engine) = door_and_engine();
    let (hub, mut router) = Hub::detached(16);
    let node = Client::Node(id("n1"));
    let sealed = |topic: &str, payload: &str| {
        metalbus_protocol::proof::seal(&NodeKey::from_bytes([1; 32]), topic, payload.as_bytes())
            .unwrap()
    };
    let metrics = "metalbus/v1/nodes/n1/metrics";
    let sample = r#"{"ts":"2026-11-29T00:00:00Z","cpu_percent":5.0,"uptime_s":1}"#;
    let send = |packets: Vec<Packet>| {
        let mut buf = wire(packets);
        let mut out = BytesMut::new();
        let mut subscribed = Vec::new();
        let (door, hub, node) = (&door, &hub, &node);
        async move {
            from_node(node, door, hub, &mut buf, &mut out, &mut subscribed)
                .await
                .unwrap();
        }
    };
    let kinds = |door: &Door| {
        ["metrics", "reports", "status", "inventory"].map(|kind| {
            door.telemetry
                .ingest_messages
                .get_or_create(&crate::telemetry::KindLabel { kind: kind.into() })
                .get()
        })
    };
    let routed = |router: &mut tokio::sync::mpsc::Receiver<Packet>| {
        let mut topics = Vec::new();
        while let Ok(Packet::Publish(p, _)) = router.try_recv() {
            topics.push(String::from_utf8(p.topic.to_vec()).unwrap());
        }
        topics
    };
    send(vec![
        publish_with_qos(0, metrics, sealed(metrics, sample), false, 0),
        qos1_publish("metalbus/v1/nodes/n1/reports", b"{}".to_vec(), false, 2),
        qos1_publish("metalbus/v1/nodes/n1/status", b"{}".to_vec(), true, 3),
        qos1_publish("metalbus/v1/nodes/n1/inventory", b"{}".to_vec(), true, 4),
    ])
    .await;
    assert_eq!(
        kinds(&door),
        [1, 1, 1, 1],
        "each reached the controller once"
    );
    assert!(
        matches!(engine.try_recv(), Ok(crate::engine::Input::Metrics { .. })),
        "the proven sample is the engine's"
    );
    assert_eq!(
        routed(&mut router),
        [
            "metalbus/v1/nodes/n1/status",
            "metalbus/v1/nodes/n1/inventory"
        ]
    );

    // A monitor takes the metrics: the router gets them, for as long as it does.
    let holder = door.interest.opened("monitor:dash", true);
    door.interest
        .subscribed("monitor:dash", ["metalbus/v1/nodes/+/metrics"]);
    send(vec![publish_with_qos(0, metrics, b"{}".to_vec(), false, 0)]).await;
    assert_eq!(routed(&mut router), [metrics]);
    door.interest.closed("monitor:dash", true, holder);
    send(vec![publish_with_qos(0, metrics, b"{}".to_vec(), false, 0)]).await;
    assert!(routed(&mut router).is_empty());
    assert_eq!(kinds(&door), [3, 1, 1, 1]);
}

#[tokio::test]
async fn an_enrolling_agent_takes_the_place_of_the_id_it_subscribed_for_only() {
    let (door, _store) = door();
    let (hub, _queue) = Hub::detached(4);
    let mut subscribed = Vec::new();
    let mut out = BytesMut::new();
    // Its own answer; but not a node's commands, or every answer.
    for (path, allowed) in [
        ("metalbus/v1/nodes/new-1/enrolled", true),
        ("metalbus/v1/nodes/new-1/commands", false),
        ("metalbus/v1/nodes/+/enrolled", false),
    ] {
        let mut buf = wire(vec![subscribe(path)]);
        let enrolling = &Client::Enrolling;
        let said = from_node(enrolling, &door, &hub, &mut buf, &mut out, &mut subscribed).await;
        if allowed {
            assert_eq!(said, Ok(false), "{path}");
        } else {
            assert!(said.is_err(), "{path}");
        }
    }
    assert_eq!(enrolling_for(&door.topics, &subscribed), Some(id("new-1")));
    assert_eq!(enrolling_for(&door.topics, &[]), None);
}

/// What a connection's task holds for as long as it is open (DECISIONS §71): 10,000
/// agents multiply it. Before the phases were boxed apart, `serve` took 3,720 bytes
/// (debug; 1,208 release) and a node's connection 2,416, a `Packet` kept in the hub's
/// send future among them.
#[test]
fn a_connection_task_stays_small() {
    let (door, _store) = door();
    let (hub, _rx) = Hub::detached(4);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let serving = serve(stream, &door, &hub);
        assert!(std::mem::size_of_val(&serving) <= 1024);
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let node = NodeConnection {
            who: Client::Enrolling,
            client_id: "x".into(),
            idle: Duration::from_secs(1),
            will: None,
        };
        let serving = serve_node(stream, BytesMut::new(), &door, &hub, node);
        assert!(std::mem::size_of_val(&serving) <= 2048);
        let publishing = hub.publish(Publish::new("a", "b", false));
        assert!(std::mem::size_of_val(&publishing) <= 512);
    });
}

/// DECISIONS §71, §73: a publish on its way to the router no longer points into the
/// connection's read buffer; one for intake alone is not copied at all.
#[test]
fn only_what_goes_to_the_router_is_copied_out_of_the_read_buffer() {
    let mut buf = wire(vec![qos1_publish(
        "metalbus/v1/nodes/n1/status",
        b"{\"online\":true}".to_vec(),
        true,
        1,
    )]);
    let Ok(Some(Packet::Publish(read, _))) = next(&mut buf, 1024) else {
        panic!("no publish")
    };
    let in_buffer = read.payload.as_ptr();
    let routed = owned(read.clone());
    assert_eq!(
        (&routed.topic, &routed.payload),
        (&read.topic, &read.payload)
    );
    assert_eq!(qos_and_pkid(&routed), (1, 1));
    assert!(routed.retain);
    assert_ne!(
        routed.payload.as_ptr(),
        in_buffer,
        "still in the read buffer"
    );
}
