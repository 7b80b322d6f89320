//! The front door's rules as plain functions: who a CONNECT is, and what each kind of
//! client may publish, subscribe to and receive.

use std::sync::Arc;

use metalbus_protocol::proof::NodeKey;
use rumqttc::mqttbytes::v4::LastWill;

use super::*;
use crate::store::{Store, TokenRecord};
use crate::telemetry::Telemetry;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn door() -> (Door, Store) {
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
    let door = Door {
        topics: Topics::default(),
        keys,
        store: store.reader(),
        internal: "127.0.0.1:1".parse().unwrap(),
        internal_password: "x".into(),
    };
    (door, store)
}

fn login(u: &str, p: &str) -> Login {
    Login::new(u, p)
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
    let will = |topic: &str| LastWill::new(topic, b"{}".to_vec(), QoS::AtLeastOnce, true);
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
    let second = Packet::Connect(rumqttc::mqttbytes::v4::Connect::new("again"));
    assert!(inbound(&node, &t, second).is_err());
    let publish = |topic: &str| {
        Packet::Publish(rumqttc::mqttbytes::v4::Publish::new(
            topic,
            QoS::AtLeastOnce,
            "{}",
        ))
    };
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
    let sub = Packet::Subscribe(rumqttc::mqttbytes::v4::Subscribe::new(
        "metalbus/v1/#",
        QoS::ExactlyOnce,
    ));
    match inbound(&Client::Monitor(Role::Viewer), &t, sub) {
        Ok(Packet::Subscribe(s)) => assert_eq!(s.filters[0].qos, QoS::AtLeastOnce),
        other => panic!("{other:?}"),
    }
}
