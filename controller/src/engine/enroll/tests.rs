//! Enrollment decisions with an in-memory store and a fake clock: what is accepted,
//! what is refused and why, and that nothing a refusal touches is stored.

use metalbus_link::Clock;
use metalbus_protocol::enroll::{Attempt, EnrollReply, EnrollToken};
use metalbus_protocol::proof::{self, NodeKey};
use metalbus_protocol::topic::{NodeTopic, Topics};
use metalbus_protocol::{NodeId, Timestamp};
use ring::rand::SystemRandom;

use super::super::Input;
use crate::publish::Outbound;
use crate::security::{self, Keyring};

use super::super::tests::{birth, limit_hits, rig, Rig};

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// The enrollment steps on the engine tests' rig.
impl Rig {
    fn keys(&self) -> Keyring {
        self.engine.credentials.keyring.clone()
    }

    /// A token in the engine, with limits.
    fn token(&mut self, name: &str, max_uses: Option<u32>, node: Option<&str>) -> EnrollToken {
        let (token, record) = security::new_enroll_token(
            name,
            self.engine.credentials.identity().anchor(),
            self.clock.now(),
            Some(self.clock.now().plus(std::time::Duration::from_secs(3600))),
            max_uses,
            node.map(id),
        );
        self.engine.credentials.add_token(name.into(), record);
        token
    }

    /// An agent's attempt for `node` with `token`, made at agent time `ts`.
    fn attempt(&self, token: &EnrollToken, ts: Timestamp) -> Attempt {
        Attempt::new(&SystemRandom::new(), token, "host".into(), ts).unwrap()
    }

    /// Sends the attempt's request and returns the controller's answer.
    fn send(&mut self, node: &str, token: &EnrollToken, attempt: &Attempt) -> (String, Vec<u8>) {
        let topic = Topics::default().node(&id(node), NodeTopic::Enroll);
        let payload = attempt.payload(token, &topic).unwrap();
        self.send_raw(node, payload)
    }

    fn send_raw(&mut self, node: &str, payload: Vec<u8>) -> (String, Vec<u8>) {
        self.engine.apply(vec![Input::Enroll {
            id: id(node),
            payload,
        }]);
        let mut answers: Vec<Outbound> = std::iter::from_fn(|| self.out.try_recv().ok())
            .filter(|m| m.topic.ends_with("/enrolled"))
            .collect();
        assert_eq!(answers.len(), 1, "one answer per request");
        let m = answers.remove(0);
        (m.topic, m.payload)
    }

    fn enroll(
        &mut self,
        node: &str,
        token: &EnrollToken,
        ts: Timestamp,
    ) -> Result<NodeKey, String> {
        let attempt = self.attempt(token, ts);
        let (topic, answer) = self.send(node, token, &attempt);
        let reply = attempt
            .check(token, &topic, &answer)
            .map_err(|e| e.to_string())?;
        let (key, _) = attempt.finish(token, &id(node), &reply).unwrap();
        Ok(key)
    }
}

fn t(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_700_000_000_000 + ms)
}

#[test]
fn an_enrolled_key_is_stored_and_on_the_keyring_before_the_answer_goes_out() {
    let mut r = rig();
    let token = r.token("fleet", None, None);
    let key = r.enroll("n1", &token, t(0)).unwrap();
    assert_eq!(r.keys().get(&id("n1")), Some(key.clone()));
    let stored = r.store.credentials().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, "n1");
    assert_eq!(stored[0].1.key, key.to_hex());
    assert!(!stored[0].1.confirmed);
    let tokens = r.store.enroll_tokens().unwrap();
    assert_eq!(tokens[0].1.uses, 1);
    // The first proven message confirms it.
    r.engine.apply(vec![Input::Metrics {
        id: id("n1"),
        sample: serde_json::from_str(r#"{"ts":"2026-01-01T00:00:00Z"}"#).unwrap(),
    }]);
    assert!(r.store.credentials().unwrap()[0].1.confirmed);
}

#[test]
fn a_multi_use_token_cannot_grow_the_fleet_past_the_waiting_bound() {
    let mut r = rig();
    let cfg = crate::config::ControllerConfig {
        max_waiting_nodes: 2,
        ..Default::default()
    };
    r.engine.cfg.controller = std::sync::Arc::new(cfg);
    let token = r.token("fleet", None, None);
    r.enroll("w1", &token, t(0)).unwrap();
    r.enroll("w2", &token, t(0)).unwrap();
    let refused = r.enroll("w3", &token, t(0)).unwrap_err();
    assert!(refused.contains("max_waiting_nodes"), "{refused}");
    assert_eq!(r.store.credentials().unwrap().len(), 2);
    assert_eq!(limit_hits(&r, "waiting_nodes"), 1);
    // The lost answer of a waiting node may still be retried.
    r.enroll("w2", &token, t(1)).unwrap();
    // Once an operator takes one on (here: the node left `discovered`), there is room.
    r.engine.apply(vec![birth("w1", 1, "s", "w1")]);
    r.enroll("w3", &token, t(0)).unwrap_err();
    let w1 = r.engine.fleet.nodes.get_mut(&id("w1")).unwrap();
    w1.state = metalbus_protocol::lifecycle::NodeState::Pending;
    r.enroll("w3", &token, t(0)).unwrap();
}

#[test]
fn refusals_say_why_and_store_nothing() {
    let mut r = rig();
    let token = r.token("one", Some(1), None);
    let bound = r.token("for-n9", None, Some("n9"));
    let unknown = EnrollToken {
        id: "nope".into(),
        ..token.clone()
    };
    let wrong_secret = EnrollToken {
        secret: [0; 32],
        ..token.clone()
    };
    let refused =
        |r: &mut Rig, node: &str, tok: &EnrollToken| r.enroll(node, tok, t(0)).unwrap_err();
    assert!(refused(&mut r, "n1", &unknown).contains("unknown enrollment token"));
    assert!(refused(&mut r, "n1", &wrong_secret).contains("not sealed with the token's secret"));
    assert!(refused(&mut r, "n1", &bound).contains("is for node n9"));
    assert!(r.store.credentials().unwrap().is_empty());
    assert!(r.keys().is_empty());
    // One use: the first node enrolls, the second is refused.
    r.enroll("n1", &token, t(0)).unwrap();
    assert!(refused(&mut r, "n2", &token).contains("used up"));
    // The bound token enrolls its node.
    r.enroll("n9", &bound, t(0)).unwrap();
    // An expired token.
    let late = r.token("late", None, None);
    r.clock.advance(std::time::Duration::from_secs(7200));
    assert!(refused(&mut r, "n3", &late).contains("expired"));
    // A request that is not JSON is ignored without an answer.
    r.engine.apply(vec![Input::Enroll {
        id: id("n4"),
        payload: b"{not json}".to_vec(),
    }]);
    assert!(std::iter::from_fn(|| r.out.try_recv().ok())
        .next()
        .is_none());
}

#[test]
fn a_lost_answer_can_be_retried_but_a_replay_cannot_swap_the_key() {
    let mut r = rig();
    let token = r.token("fleet", None, None);
    let first = r.attempt(&token, t(1_000));
    let topic = Topics::default().node(&id("n1"), NodeTopic::Enroll);
    let first_request = first.payload(&token, &topic).unwrap();
    r.send_raw("n1", first_request.clone());
    // The answer was lost; the agent tries again, later: accepted, a new key.
    let key = r.enroll("n1", &token, t(2_000)).unwrap();
    assert_eq!(r.keys().get(&id("n1")), Some(key.clone()));
    // The first request replayed (by a broker that kept it): refused, key unchanged.
    let (reply_topic, answer) = r.send_raw("n1", first_request);
    let reply: EnrollReply = serde_json::from_slice(&answer).unwrap();
    assert!(reply.error.unwrap().contains("replayed"));
    assert_eq!(
        proof::verify_signed(
            &r.engine.credentials.identity().public_key(),
            &reply_topic,
            &answer
        ),
        Ok(())
    );
    assert_eq!(r.keys().get(&id("n1")), Some(key.clone()));
    // Once the node has spoken with its key, nobody enrolls it again, not even with a
    // newer request and the right token.
    r.engine.apply(vec![Input::Metrics {
        id: id("n1"),
        sample: serde_json::from_str(r#"{"ts":"2026-01-01T00:00:00Z"}"#).unwrap(),
    }]);
    let err = r.enroll("n1", &token, t(3_000)).unwrap_err();
    assert!(err.contains("already enrolled"), "{err}");
    assert_eq!(r.keys().get(&id("n1")), Some(key));
    assert_eq!(
        r.store.enroll_tokens().unwrap()[0].1.uses,
        1,
        "a retry is not a new use"
    );
}

#[test]
fn hostile_requests_get_a_refusal_or_nothing_and_store_nothing() {
    let mut r = rig();
    let token = r.token("fleet", None, None);
    let topic = Topics::default().node(&id("n1"), NodeTopic::Enroll);
    // A hostname of 100 KB of multibyte text, sealed with the right secret.
    let mut attempt = r.attempt(&token, t(0));
    attempt.request.hostname = "é".repeat(50_000);
    let (_, answer) = r.send_raw("n1", attempt.payload(&token, &topic).unwrap());
    let reply: EnrollReply = serde_json::from_slice(&answer).unwrap();
    assert!(reply.error.unwrap().contains("hostname is over"));
    // A reserved node id.
    let err = r.enroll("metalbus-controller", &token, t(0)).unwrap_err();
    assert!(err.contains("reserved"), "{err}");
    // Keys that are not hex or the wrong length, a nonce of another size: refused.
    for (field, value) in [("agent_key", "zz"), ("agent_key", "00"), ("nonce", "0011")] {
        let mut a = r.attempt(&token, t(0));
        match field {
            "agent_key" => a.request.agent_key = value.into(),
            _ => a.request.nonce = value.into(),
        }
        let (_, answer) = r.send_raw("n1", a.payload(&token, &topic).unwrap());
        let reply: EnrollReply = serde_json::from_slice(&answer).unwrap();
        assert!(reply.error.is_some(), "{field}={value}");
    }
    // Not an object, not JSON at all, a huge token id: no answer, or a refusal.
    for junk in [&b"[]"[..], b"\xff\xfe", b"{\"token_id\":7}"] {
        r.engine.apply(vec![Input::Enroll {
            id: id("n1"),
            payload: junk.to_vec(),
        }]);
    }
    assert!(r.store.credentials().unwrap().is_empty());
    assert!(r.keys().is_empty());
    assert_eq!(
        r.engine.credentials.tokens["fleet"].uses, 0,
        "no use was counted"
    );
}
