//! MQTT topic names: one builder and one parser for every topic in DESIGN section 3.
//!
//! Topic strings are built and taken apart only here, so the layout lives in one place.

use std::fmt;

use crate::{NodeId, NodeIdError};

/// The per-node topics, `{prefix}/nodes/{id}/{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeTopic {
    /// agent birth, Will and clean stop (retained)
    Status,
    /// hardware inventory (retained)
    Inventory,
    /// one metrics sample; doubles as the heartbeat
    Metrics,
    /// the sequenced report stream (acks and job events)
    Reports,
    /// controller's cumulative receipts for reports
    Receipts,
    /// controller → agent commands
    Commands,
    /// controller's authoritative node view (retained)
    State,
    /// controller's refusals of malformed messages
    Rejects,
    /// an agent's enrollment request, sealed with the token's secret
    Enroll,
    /// the controller's signed answer to an enrollment request
    Enrolled,
}

impl NodeTopic {
    pub const ALL: [NodeTopic; 10] = [
        NodeTopic::Status,
        NodeTopic::Inventory,
        NodeTopic::Metrics,
        NodeTopic::Reports,
        NodeTopic::Receipts,
        NodeTopic::Commands,
        NodeTopic::State,
        NodeTopic::Rejects,
        NodeTopic::Enroll,
        NodeTopic::Enrolled,
    ];

    /// The topics an agent publishes and the controller ingests.
    pub const FROM_AGENT: [NodeTopic; 4] = [
        NodeTopic::Status,
        NodeTopic::Inventory,
        NodeTopic::Metrics,
        NodeTopic::Reports,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeTopic::Status => "status",
            NodeTopic::Inventory => "inventory",
            NodeTopic::Metrics => "metrics",
            NodeTopic::Reports => "reports",
            NodeTopic::Receipts => "receipts",
            NodeTopic::Commands => "commands",
            NodeTopic::State => "state",
            NodeTopic::Rejects => "rejects",
            NodeTopic::Enroll => "enroll",
            NodeTopic::Enrolled => "enrolled",
        }
    }

    fn from_segment(s: &str) -> Option<Self> {
        NodeTopic::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for NodeTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    Node(NodeId, NodeTopic),
    /// `{p}/events/transitions`
    Transitions,
    /// `{p}/summary`
    Summary,
    /// `{p}/controller/status`
    ControllerStatus,
    /// `{p}/campaigns/{id}`
    Campaign(String),
}

/// Why a topic string is not one of ours, or names a bad node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {topic:?} is outside the prefix {prefix:?}")]
    OutsidePrefix { topic: String, prefix: String },
    #[error("topic {topic:?} is not a Metalbus topic")]
    Unknown { topic: String },
    /// The shape is right but the id segment is not a valid node id. `raw` is that segment,
    /// so a caller can still answer on `{p}/nodes/{raw}/rejects`.
    #[error("topic {topic:?} has an invalid node id: {source}")]
    BadNodeId {
        topic: String,
        raw: String,
        kind: NodeTopic,
        source: NodeIdError,
    },
}

/// Why a prefix cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic prefix {prefix:?} is invalid: {why}")]
pub struct PrefixError {
    prefix: String,
    why: &'static str,
}

/// Builds and parses topics under one prefix (default `metalbus/v1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            prefix: crate::DEFAULT_PREFIX.to_string(),
        }
    }
}

impl Topics {
    /// A prefix must be non-empty, hold no wildcard or NUL, and not start or end with `/`.
    pub fn new(prefix: impl Into<String>) -> Result<Self, PrefixError> {
        let prefix = prefix.into();
        let why = if prefix.is_empty() {
            Some("it is empty")
        } else if prefix.contains(['+', '#', '\0']) {
            Some("it holds an MQTT wildcard or NUL")
        } else if prefix.starts_with('/') || prefix.ends_with('/') {
            Some("it starts or ends with '/'")
        } else if prefix.split('/').any(str::is_empty) {
            Some("it has an empty level")
        } else {
            None
        };
        match why {
            Some(why) => Err(PrefixError { prefix, why }),
            None => Ok(Self { prefix }),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{p}/nodes/{id}/{kind}`
    pub fn node(&self, id: &NodeId, kind: NodeTopic) -> String {
        format!("{}/nodes/{}/{}", self.prefix, id, kind)
    }

    /// `{p}/nodes/{raw}/rejects` for a segment that failed id validation. The segment came
    /// from a published topic, so it is a legal single topic level.
    pub fn rejects_for_raw(&self, raw: &str) -> String {
        format!("{}/nodes/{}/rejects", self.prefix, raw)
    }

    /// The subscription filter `{p}/nodes/+/{kind}`.
    pub fn node_filter(&self, kind: NodeTopic) -> String {
        format!("{}/nodes/+/{}", self.prefix, kind)
    }

    /// The subscription filter for everything, `{p}/#`.
    pub fn everything(&self) -> String {
        format!("{}/#", self.prefix)
    }

    pub fn transitions(&self) -> String {
        format!("{}/events/transitions", self.prefix)
    }

    pub fn summary(&self) -> String {
        format!("{}/summary", self.prefix)
    }

    /// A campaign's retained progress, `{p}/campaigns/{id}`.
    pub fn campaign(&self, id: &str) -> String {
        format!("{}/campaigns/{id}", self.prefix)
    }

    /// The subscription filter for every campaign, `{p}/campaigns/+`.
    pub fn campaigns(&self) -> String {
        format!("{}/campaigns/+", self.prefix)
    }

    pub fn controller_status(&self) -> String {
        format!("{}/controller/status", self.prefix)
    }

    /// The string form of a parsed topic.
    pub fn build(&self, topic: &Topic) -> String {
        match topic {
            Topic::Node(id, kind) => self.node(id, *kind),
            Topic::Transitions => self.transitions(),
            Topic::Summary => self.summary(),
            Topic::ControllerStatus => self.controller_status(),
            Topic::Campaign(id) => self.campaign(id),
        }
    }

    /// Parses a topic string under this prefix.
    pub fn parse(&self, topic: &str) -> Result<Topic, TopicError> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::OutsidePrefix {
                topic: topic.to_string(),
                prefix: self.prefix.clone(),
            })?;
        let unknown = || TopicError::Unknown {
            topic: topic.to_string(),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["events", "transitions"] => Ok(Topic::Transitions),
            ["summary"] => Ok(Topic::Summary),
            ["controller", "status"] => Ok(Topic::ControllerStatus),
            ["campaigns", id] if !id.is_empty() && id.len() <= 64 => {
                Ok(Topic::Campaign((*id).to_string()))
            }
            ["nodes", raw, kind] => {
                let kind = NodeTopic::from_segment(kind).ok_or_else(unknown)?;
                match NodeId::new(*raw) {
                    Ok(id) => Ok(Topic::Node(id, kind)),
                    Err(source) => Err(TopicError::BadNodeId {
                        topic: topic.to_string(),
                        raw: (*raw).to_string(),
                        kind,
                        source,
                    }),
                }
            }
            _ => Err(unknown()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn every_node_topic_round_trips() {
        let t = Topics::default();
        let n = id("rack1-u07");
        for kind in NodeTopic::ALL {
            let s = t.node(&n, kind);
            assert_eq!(s, format!("metalbus/v1/nodes/rack1-u07/{}", kind.as_str()));
            assert_eq!(t.parse(&s).unwrap(), Topic::Node(n.clone(), kind));
            assert_eq!(t.build(&t.parse(&s).unwrap()), s);
        }
    }

    #[test]
    fn fleet_topics_round_trip() {
        let t = Topics::new("site-a/mb").unwrap();
        for (topic, s) in [
            (Topic::Transitions, "site-a/mb/events/transitions"),
            (Topic::Summary, "site-a/mb/summary"),
            (Topic::ControllerStatus, "site-a/mb/controller/status"),
            (
                Topic::Campaign("cmp-0123456789ab".into()),
                "site-a/mb/campaigns/cmp-0123456789ab",
            ),
        ] {
            assert_eq!(t.build(&topic), s);
            assert_eq!(t.parse(s).unwrap(), topic);
        }
        assert!(t.parse("site-a/mb/campaigns/").is_err());
        assert!(t
            .parse(&format!("site-a/mb/campaigns/{}", "x".repeat(65)))
            .is_err());
    }

    #[test]
    fn filters_match_the_builder() {
        let t = Topics::default();
        assert_eq!(
            t.node_filter(NodeTopic::Status),
            "metalbus/v1/nodes/+/status"
        );
        assert_eq!(t.everything(), "metalbus/v1/#");
    }

    #[test]
    fn bad_node_id_keeps_the_raw_segment() {
        let t = Topics::default();
        match t.parse("metalbus/v1/nodes/Bad!Id/inventory") {
            Err(TopicError::BadNodeId { raw, kind, .. }) => {
                assert_eq!(raw, "Bad!Id");
                assert_eq!(kind, NodeTopic::Inventory);
                assert_eq!(t.rejects_for_raw(&raw), "metalbus/v1/nodes/Bad!Id/rejects");
            }
            other => panic!("expected BadNodeId, got {other:?}"),
        }
        assert!(matches!(
            t.parse("metalbus/v1/nodes//status"),
            Err(TopicError::BadNodeId {
                source: NodeIdError::Empty,
                ..
            })
        ));
    }

    #[test]
    fn refuses_foreign_and_malformed_topics() {
        let t = Topics::default();
        for bad in [
            "metalbus/v2/nodes/n1/status",
            "metalbus/v1",
            "metalbus/v1nodes/n1/status",
            "other/nodes/n1/status",
        ] {
            assert!(
                matches!(t.parse(bad), Err(TopicError::OutsidePrefix { .. })),
                "{bad}"
            );
        }
        for bad in [
            "metalbus/v1/nodes/n1/bogus",
            "metalbus/v1/nodes/n1/status/extra",
            "metalbus/v1/nodes/n1",
            "metalbus/v1/events",
            "metalbus/v1/",
        ] {
            assert!(
                matches!(t.parse(bad), Err(TopicError::Unknown { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn refuses_bad_prefixes() {
        for bad in ["", "/a", "a/", "a/+/b", "a/#", "a//b"] {
            assert!(Topics::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Topics::new("x").unwrap().prefix(), "x");
    }
}
