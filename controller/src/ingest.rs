//! Turns one MQTT message from an agent into an engine [`Input`], or a [`Rejection`].
//!
//! Pure: no I/O, so every refusal rule is unit-tested with plain bytes. Every message
//! from the network is untrusted (DESIGN section 3): wrong type, missing field, bad id,
//! oversized payload, or a payload id that differs from the topic's.

use metalbus_protocol::controller::Reject;
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::proof;
use metalbus_protocol::report::Report;
use metalbus_protocol::status::{OfflineReason, Status};
use metalbus_protocol::topic::{NodeTopic, Topic, TopicError, Topics};
use metalbus_protocol::{NodeId, MAX_COUNTER, MAX_PAYLOAD_BYTES, MAX_SESSION_BYTES};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::engine::Input;
use crate::security::Keyring;

/// Why a message was refused; the label of `metalbus_ingest_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    BadTopic,
    BadNodeId,
    TooLarge,
    BadJson,
    BadPayload,
    InvalidValue,
    NodeIdMismatch,
    Unsupported,
    /// No credential for the node on the topic: it never enrolled, or was revoked.
    NotEnrolled,
    /// The payload does not prove it came from the node's credential.
    BadProof,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        RejectReason::BadTopic,
        RejectReason::BadNodeId,
        RejectReason::TooLarge,
        RejectReason::BadJson,
        RejectReason::BadPayload,
        RejectReason::InvalidValue,
        RejectReason::NodeIdMismatch,
        RejectReason::Unsupported,
        RejectReason::NotEnrolled,
        RejectReason::BadProof,
    ];

    /// Whether the refused message proved it came from the node on its topic (these are
    /// the checks made after the proof), and so says something about that node: an event
    /// of its own. Any other refusal is counted and logged only: anyone could send it.
    pub fn from_the_node(self) -> bool {
        matches!(
            self,
            RejectReason::BadJson
                | RejectReason::BadPayload
                | RejectReason::InvalidValue
                | RejectReason::NodeIdMismatch
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadTopic => "bad_topic",
            RejectReason::BadNodeId => "bad_node_id",
            RejectReason::TooLarge => "too_large",
            RejectReason::BadJson => "bad_json",
            RejectReason::BadPayload => "bad_payload",
            RejectReason::InvalidValue => "invalid_value",
            RejectReason::NodeIdMismatch => "node_id_mismatch",
            RejectReason::Unsupported => "unsupported",
            RejectReason::NotEnrolled => "not_enrolled",
            RejectReason::BadProof => "bad_proof",
        }
    }
}

/// A refused message, and where to announce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    /// `{p}/nodes/{id}/rejects`, when the topic named a node (even an invalid one).
    pub reply_topic: Option<String>,
    pub reject: Reject,
    /// For a report that proved it came from the node: its place in the node's stream.
    /// The engine takes that place (receipted, with a `MessageRejected` event), so one
    /// bad report never holds back the ones after it.
    pub place: Option<Box<Place>>,
}

impl Rejection {
    /// Whether the refused message says something about its node (see
    /// [`RejectReason::from_the_node`]); a placed report always does.
    pub fn from_the_node(&self) -> bool {
        self.reason.from_the_node() || self.place.is_some()
    }
}

/// A report's place in its node's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub session: String,
    pub seq: u64,
}

impl Place {
    /// The place a report's JSON claims, when it is one a real outbox could have made.
    fn of(value: &Value) -> Option<Place> {
        let session = value.get("session")?.as_str()?;
        let seq = value.get("seq")?.as_u64()?;
        let fits = (1..=MAX_COUNTER).contains(&seq)
            && !session.is_empty()
            && session.len() <= MAX_SESSION_BYTES;
        fits.then(|| Place {
            session: session.to_string(),
            seq,
        })
    }
}

/// The topic kind label for `metalbus_ingest_messages_total{kind}`.
pub fn kind_label(topics: &Topics, topic: &str) -> &'static str {
    match topics.parse(topic) {
        Ok(Topic::Node(_, kind)) | Err(TopicError::BadNodeId { kind, .. }) => kind.as_str(),
        _ => "other",
    }
}

/// The input a message carries, `None` for an empty payload (which clears a retained
/// message: legal MQTT, nothing to apply), or why it is refused.
///
/// Every message on a node's topics must prove it was made with that node's key
/// (`keys`), except an enrollment request, which the engine checks against its token.
pub fn decode(
    topics: &Topics,
    keys: &Keyring,
    topic: &str,
    payload: &[u8],
) -> Result<Option<Input>, Rejection> {
    let refuse = |reason, reply_topic: Option<String>, error: String, seq| Rejection {
        reason,
        reply_topic,
        reject: Reject {
            topic: topic.to_string(),
            error,
            seq,
        },
        place: None,
    };
    let (id, kind) = match topics.parse(topic) {
        Ok(Topic::Node(id, kind)) => (id, kind),
        Ok(_) => {
            return Err(refuse(
                RejectReason::BadTopic,
                None,
                "not an agent topic".into(),
                None,
            ))
        }
        Err(TopicError::BadNodeId { raw, source, .. }) => {
            return Err(refuse(
                RejectReason::BadNodeId,
                Some(topics.rejects_for_raw(&raw)),
                source.to_string(),
                None,
            ))
        }
        Err(e) => return Err(refuse(RejectReason::BadTopic, None, e.to_string(), None)),
    };
    let reply = Some(topics.node(&id, NodeTopic::Rejects));
    if !NodeTopic::FROM_AGENT.contains(&kind) && kind != NodeTopic::Enroll {
        return Err(refuse(
            RejectReason::Unsupported,
            reply,
            format!("the controller does not ingest '{kind}' messages"),
            None,
        ));
    }
    let too_large = (payload.len() > MAX_PAYLOAD_BYTES).then(|| {
        refuse(
            RejectReason::TooLarge,
            reply.clone(),
            format!(
                "payload is {} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                payload.len()
            ),
            None,
        )
    });
    // A report too large to apply still takes its place in the stream once its proof
    // holds (below); anything else too large is refused unread.
    if let Some(refusal) = too_large.clone().filter(|_| kind != NodeTopic::Reports) {
        return Err(refusal);
    }
    if payload.is_empty() {
        return Ok(None);
    }
    if kind == NodeTopic::Enroll {
        return Ok(Some(Input::Enroll {
            id,
            payload: payload.to_vec(),
        }));
    }
    let Some(key) = keys.get(&id) else {
        return Err(refuse(
            RejectReason::NotEnrolled,
            reply,
            format!("node {id} is not enrolled (or its credential was revoked)"),
            None,
        ));
    };
    if let Err(e) = proof::open(&key, topic, payload) {
        return Err(refuse(RejectReason::BadProof, reply, e.to_string(), None));
    }
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        refuse(
            RejectReason::BadJson,
            reply.clone(),
            format!("not JSON: {e}"),
            None,
        )
    })?;
    let place = (kind == NodeTopic::Reports)
        .then(|| Place::of(&value))
        .flatten()
        .map(Box::new);
    let placed = |mut r: Rejection| {
        r.place = place.clone();
        r
    };
    if let Some(refusal) = too_large {
        return Err(placed(refusal));
    }
    proven(id, kind, value, &refuse, reply).map_err(placed)
}

/// The checks after the proof held: the payload's shape, values and claimed node id.
fn proven(
    id: NodeId,
    kind: NodeTopic,
    value: Value,
    refuse: &dyn Fn(RejectReason, Option<String>, String, Option<u64>) -> Rejection,
    reply: Option<String>,
) -> Result<Option<Input>, Rejection> {
    let seq = value.get("seq").and_then(Value::as_u64);
    if !value.is_object() {
        return Err(refuse(
            RejectReason::BadPayload,
            reply,
            "payload must be a JSON object".into(),
            seq,
        ));
    }
    let bad = |e: String| refuse(RejectReason::BadPayload, reply.clone(), e, seq);
    let invalid = |e: String| refuse(RejectReason::InvalidValue, reply.clone(), e, seq);
    let (input, claimed) = match kind {
        NodeTopic::Status => {
            let status: Status = typed(value).map_err(bad)?;
            status.validate().map_err(|e| invalid(e.to_string()))?;
            if let Status::Offline(off) = &status {
                if matches!(off.reason, OfflineReason::Stale | OfflineReason::Revoked) {
                    return Err(invalid(format!(
                        "offline reason \"{}\" is the controller's verdict; agents send lost or shutdown",
                        off.reason
                    )));
                }
            }
            let claimed = status.node_id().cloned();
            (
                Input::Status {
                    id: id.clone(),
                    status,
                },
                claimed,
            )
        }
        NodeTopic::Inventory => {
            let inventory: Inventory = typed(value).map_err(bad)?;
            inventory.validate().map_err(|e| invalid(e.to_string()))?;
            let claimed = inventory.node_id.clone();
            (
                Input::Inventory {
                    id: id.clone(),
                    inventory: Box::new(inventory),
                },
                claimed,
            )
        }
        NodeTopic::Reports => {
            let report: Report = typed(value).map_err(bad)?;
            report.validate().map_err(|e| invalid(e.to_string()))?;
            let claimed = report.node_id.clone();
            (
                Input::Report {
                    id: id.clone(),
                    report: Box::new(report),
                },
                claimed,
            )
        }
        _ => {
            let sample: MetricsSample = typed(value).map_err(bad)?;
            sample.validate().map_err(|e| invalid(e.to_string()))?;
            let claimed = sample.node_id.clone();
            (
                Input::Metrics {
                    id: id.clone(),
                    sample,
                },
                claimed,
            )
        }
    };
    match claimed {
        Some(other) if other != id => Err(refuse(
            RejectReason::NodeIdMismatch,
            reply,
            format!(
                "payload node_id {other:?} differs from the topic's {:?}",
                id.as_str()
            ),
            seq,
        )),
        _ => Ok(Some(input)),
    }
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalbus_protocol::proof::NodeKey;
    use metalbus_protocol::NodeId;

    fn t() -> Topics {
        Topics::default()
    }

    fn key() -> NodeKey {
        NodeKey::from_bytes([1; 32])
    }

    /// Nodes n1 and x are enrolled, with the same test key.
    fn keys() -> Keyring {
        let ring = Keyring::default();
        for id in ["n1", "x"] {
            ring.set(NodeId::new(id).unwrap(), key());
        }
        ring
    }

    /// As the node would send it: sealed with its key, when the payload is an object.
    fn sealed(topic: &str, payload: &[u8]) -> Vec<u8> {
        proof::seal(&key(), topic, payload).unwrap_or_else(|_| payload.to_vec())
    }

    fn decode(topics: &Topics, topic: &str, payload: &[u8]) -> Result<Option<Input>, Rejection> {
        super::decode(topics, &keys(), topic, &sealed(topic, payload))
    }

    fn reject(topic: &str, payload: &[u8]) -> Rejection {
        match decode(&t(), topic, payload) {
            Err(r) => r,
            Ok(d) => panic!("expected a rejection for {topic}, got {d:?}"),
        }
    }

    const BIRTH: &str = r#"{"online":true,"conn":1,"session":"s","agent_version":"0.1.0","hostname":"h","boot_id":null,"metrics_interval_s":15,"ts":"2026-01-01T00:00:00Z"}"#;

    #[test]
    fn accepts_good_messages() {
        let ok = decode(&t(), "metalbus/v1/nodes/n1/status", BIRTH.as_bytes()).unwrap();
        assert!(matches!(ok, Some(Input::Status { ref id, .. }) if id.as_str() == "n1"));
        let metrics = r#"{"ts":"2026-01-01T00:00:00Z","cpu_percent":5.0,"load":null,"memory":null,"swap":null,"filesystems":null,"network":null,"disk_io":null,"uptime_s":1,"temperatures_c":null}"#;
        let ok = decode(&t(), "metalbus/v1/nodes/n1/metrics", metrics.as_bytes()).unwrap();
        assert!(matches!(ok, Some(Input::Metrics { .. })));
        assert!(decode(&t(), "metalbus/v1/nodes/n1/inventory", b"")
            .unwrap()
            .is_none());
    }

    #[test]
    fn refuses_each_kind_of_garbage_with_its_reason() {
        let inv = "metalbus/v1/nodes/x/inventory";
        let cases: Vec<(&str, Vec<u8>, RejectReason)> = vec![
            (inv, b"{not json}".to_vec(), RejectReason::BadJson),
            (inv, b"{\xff\xfe}".to_vec(), RejectReason::BadJson),
            // Not an object, so not sealable: no proof.
            (inv, b"[1,2,3]".to_vec(), RejectReason::BadProof),
            (inv, b"42".to_vec(), RejectReason::BadProof),
            (
                inv,
                br#"{"hostname":5,"system":{},"cpu":{},"memory":{},"disks":[],"nics":[],"os":{}}"#
                    .to_vec(),
                RejectReason::BadPayload,
            ),
            (inv, vec![b'x'; 1024 * 1024], RejectReason::TooLarge),
            (
                "metalbus/v1/nodes/stranger/status",
                BIRTH.as_bytes().to_vec(),
                RejectReason::NotEnrolled,
            ),
            (
                "metalbus/v1/nodes/x/metrics",
                br#"{"ts":"2026-01-01T00:00:00Z","cpu_percent":400}"#.to_vec(),
                RejectReason::InvalidValue,
            ),
            (
                "metalbus/v1/nodes/x/status",
                br#"{"online":false,"reason":"lost","conn":1,"node_id":"y"}"#.to_vec(),
                RejectReason::NodeIdMismatch,
            ),
            (
                "metalbus/v1/nodes/Bad!Id/inventory",
                b"{}".to_vec(),
                RejectReason::BadNodeId,
            ),
            (
                "metalbus/v1/nodes/x/reports",
                br#"{"session":"s","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"job","command_id":"c","job":"install","status":"progress","progress":150}"#.to_vec(),
                RejectReason::InvalidValue,
            ),
            (
                "metalbus/v1/nodes/x/reports",
                br#"{"session":"s","seq":1,"kind":"ack"}"#.to_vec(),
                RejectReason::BadPayload,
            ),
            (
                "metalbus/v1/nodes/x/commands",
                b"{}".to_vec(),
                RejectReason::Unsupported,
            ),
        ];
        for (topic, payload, want) in cases {
            let r = reject(topic, &payload);
            assert_eq!(
                r.reason,
                want,
                "{topic} {:?}",
                String::from_utf8_lossy(&payload[..payload.len().min(40)])
            );
            assert_eq!(r.reject.topic, topic);
            assert!(!r.reject.error.is_empty());
        }
    }

    #[test]
    fn a_proven_report_is_refused_in_its_place_and_an_unproven_one_is_not() {
        let topic = "metalbus/v1/nodes/x/reports";
        let ack = |reason: &str| {
            format!(
                r#"{{"session":"o1","seq":7,"ts":"2026-01-01T00:00:00Z","kind":"ack","command_id":"c","accepted":false,"reason":"{reason}"}}"#
            )
        };
        let placed = Some(Box::new(Place {
            session: "o1".into(),
            seq: 7,
        }));
        // A reason over 8 KiB, and a report over the 256 KiB limit: refused, placed.
        for (reason, want) in [
            ("r".repeat(9000), RejectReason::InvalidValue),
            ("r".repeat(MAX_PAYLOAD_BYTES), RejectReason::TooLarge),
        ] {
            let r = reject(topic, ack(&reason).as_bytes());
            assert_eq!((r.reason, r.place.clone()), (want, placed.clone()));
            assert!(r.from_the_node());
        }
        // The same bytes without the node's proof: no place, nothing for the node.
        let big = ack(&"r".repeat(MAX_PAYLOAD_BYTES));
        let r = super::decode(&t(), &keys(), topic, big.as_bytes()).unwrap_err();
        assert_eq!((r.reason, r.place.clone()), (RejectReason::BadProof, None));
        assert!(!r.from_the_node());
        // A place no outbox makes (seq 0, beyond 2^53, an empty or huge session) is none.
        for (session, seq) in [
            ("o1".to_string(), 0),
            ("o1".to_string(), MAX_COUNTER + 1),
            (String::new(), 1),
            ("s".repeat(MAX_SESSION_BYTES + 1), 1),
        ] {
            let report = format!(
                r#"{{"session":"{session}","seq":{seq},"ts":"2026-01-01T00:00:00Z","kind":"ack","command_id":"c","accepted":true}}"#
            );
            let r = reject(topic, report.as_bytes());
            assert_eq!(r.place, None, "{seq}");
        }
        // Other topics never get a place.
        let r = reject(
            "metalbus/v1/nodes/x/inventory",
            br#"{"session":"o1","seq":7}"#,
        );
        assert_eq!(r.place, None);
    }

    #[test]
    fn only_the_nodes_own_key_proves_a_message() {
        let topic = "metalbus/v1/nodes/n1/status";
        let raw = BIRTH.as_bytes();
        let refused = |payload: &[u8]| match super::decode(&t(), &keys(), topic, payload) {
            Err(r) => r.reason,
            Ok(i) => panic!("accepted {i:?}"),
        };
        // Unsealed (an anonymous client), sealed with another key, sealed for node x.
        assert_eq!(refused(raw), RejectReason::BadProof);
        let other = proof::seal(&NodeKey::from_bytes([2; 32]), topic, raw).unwrap();
        assert_eq!(refused(&other), RejectReason::BadProof);
        let for_x = proof::seal(&key(), "metalbus/v1/nodes/x/status", raw).unwrap();
        assert_eq!(refused(&for_x), RejectReason::BadProof);
        // The forged Will that kept a node offline for good.
        let will = br#"{"online":false,"reason":"lost","conn":18446744073709551615}"#;
        assert_eq!(refused(will), RejectReason::BadProof);
        // An enrollment request passes to the engine, which checks it against its token.
        let enroll = "metalbus/v1/nodes/new-node/enroll";
        assert!(matches!(
            super::decode(&t(), &keys(), enroll, b"{}"),
            Ok(Some(Input::Enroll { .. }))
        ));
        assert_eq!(
            super::decode(&t(), &keys(), enroll, &vec![b' '; MAX_PAYLOAD_BYTES + 1])
                .unwrap_err()
                .reason,
            RejectReason::TooLarge
        );
    }

    #[test]
    fn rejects_are_addressed_to_the_node_even_with_a_bad_id() {
        let r = reject("metalbus/v1/nodes/x/inventory", b"{nope}");
        assert_eq!(
            r.reply_topic.as_deref(),
            Some("metalbus/v1/nodes/x/rejects")
        );
        let r = reject("metalbus/v1/nodes/NOT_VALID/status", BIRTH.as_bytes());
        assert_eq!(
            r.reply_topic.as_deref(),
            Some("metalbus/v1/nodes/NOT_VALID/rejects")
        );
        assert!(
            r.reject.error.contains("must start with"),
            "{}",
            r.reject.error
        );
        let r = reject("elsewhere/nodes/x/status", BIRTH.as_bytes());
        assert_eq!((r.reason, r.reply_topic), (RejectReason::BadTopic, None));
    }

    #[test]
    fn seq_is_echoed_when_readable() {
        let r = reject(
            "metalbus/v1/nodes/x/status",
            br#"{"seq":41,"online":"maybe"}"#,
        );
        assert_eq!(r.reject.seq, Some(41));
        assert_eq!(r.reason, RejectReason::BadPayload);
    }

    #[test]
    fn only_refusals_of_proven_messages_speak_for_the_node() {
        // Too large, a bad topic, an unsupported kind: checked before the proof.
        for payload_topic in [
            ("metalbus/v1/nodes/x/inventory", vec![b'x'; 1024 * 1024]),
            ("metalbus/v1/nodes/x/commands", b"{}".to_vec()),
            (
                "metalbus/v1/nodes/stranger/status",
                BIRTH.as_bytes().to_vec(),
            ),
        ] {
            let r = reject(payload_topic.0, &payload_topic.1);
            assert!(!r.reason.from_the_node(), "{:?}", r.reason);
        }
        let r = reject("metalbus/v1/nodes/x/inventory", b"{not json}");
        assert!(r.reason.from_the_node());
        let raw = super::decode(
            &t(),
            &keys(),
            "metalbus/v1/nodes/x/status",
            BIRTH.as_bytes(),
        );
        assert!(!raw.unwrap_err().reason.from_the_node());
    }

    #[test]
    fn labels_name_the_topic_kind() {
        assert_eq!(kind_label(&t(), "metalbus/v1/nodes/a/metrics"), "metrics");
        assert_eq!(kind_label(&t(), "metalbus/v1/nodes/A!/status"), "status");
        assert_eq!(kind_label(&t(), "x/y"), "other");
    }
}
