//! The `status` topic: an agent's birth, its Last Will, and its clean stop (DESIGN section 3).

use serde::{Deserialize, Serialize};

use crate::names::names;
use crate::{NodeId, Timestamp};

names! {
    /// Why an agent is offline.
    pub enum OfflineReason as "offline reason" {
        /// The broker published the agent's Last Will: the connection died.
        Lost = "lost",
        /// The agent stopped cleanly (SIGTERM).
        Shutdown = "shutdown",
        /// The controller's verdict, never an agent's: nothing heard from the agent for 3 ×
        /// its metrics interval (DESIGN 7.3). Refused in an agent's status.
        Stale = "stale",
        /// The controller's verdict, never an agent's: an operator revoked the node's
        /// credential. Refused in an agent's status.
        Revoked = "revoked",
    }
}

/// Published retained on every connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Birth {
    /// Goes up by one on every MQTT connect; persisted by the agent.
    pub conn: u64,
    /// Random, fixed for the life of the agent's outbox.
    pub session: String,
    pub agent_version: String,
    pub hostname: String,
    pub boot_id: Option<String>,
    pub metrics_interval_s: u32,
    pub ts: Timestamp,
    /// When present it must equal the topic's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    /// The agent's [`crate::PROTOCOL_VERSION`]; 1 when absent (agents before the field).
    #[serde(default = "crate::first_protocol")]
    pub protocol: u32,
}

/// The Last Will (`reason: lost`) or a clean stop (`reason: shutdown`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offline {
    pub conn: u64,
    pub reason: OfflineReason,
    /// The agent's session; lets the controller ignore a Will from an earlier incarnation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
}

/// Why a status was refused beyond plain type errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("conn must be at most {}", crate::MAX_COUNTER)]
    Conn,
    #[error("metrics_interval_s is {0}; at most {max} is accepted", max = Status::MAX_METRICS_INTERVAL_S)]
    MetricsInterval(u32),
    #[error("{field} is {len} bytes; at most {max} are accepted")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

/// A `status` payload, told apart by its `online` field.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Birth(Birth),
    Offline(Offline),
}

impl Status {
    pub fn conn(&self) -> u64 {
        match self {
            Status::Birth(b) => b.conn,
            Status::Offline(o) => o.conn,
        }
    }

    pub fn node_id(&self) -> Option<&NodeId> {
        match self {
            Status::Birth(b) => b.node_id.as_ref(),
            Status::Offline(o) => o.node_id.as_ref(),
        }
    }

    /// Bounds beyond types: counters JSON can hold exactly, text of sane length, and a
    /// metrics interval staleness can be computed from (3 x at most a day).
    pub fn validate(&self) -> Result<(), StatusError> {
        let (conn, session) = match self {
            Status::Birth(b) => (b.conn, Some(b.session.as_str())),
            Status::Offline(o) => (o.conn, o.session.as_deref()),
        };
        if conn > crate::MAX_COUNTER {
            return Err(StatusError::Conn);
        }
        let too_long = |field, len: usize, max| {
            if len > max {
                Err(StatusError::TooLong { field, len, max })
            } else {
                Ok(())
            }
        };
        too_long(
            "session",
            session.map_or(0, str::len),
            crate::MAX_SESSION_BYTES,
        )?;
        if let Status::Birth(b) = self {
            too_long("hostname", b.hostname.len(), Self::MAX_HOSTNAME)?;
            too_long("agent_version", b.agent_version.len(), Self::MAX_TEXT)?;
            too_long(
                "boot_id",
                b.boot_id.as_deref().map_or(0, str::len),
                Self::MAX_TEXT,
            )?;
            if b.metrics_interval_s > Self::MAX_METRICS_INTERVAL_S {
                return Err(StatusError::MetricsInterval(b.metrics_interval_s));
            }
        }
        Ok(())
    }

    /// A DNS name's limit.
    pub const MAX_HOSTNAME: usize = 255;
    pub const MAX_TEXT: usize = 128;
    /// One day.
    pub const MAX_METRICS_INTERVAL_S: u32 = 86_400;

    /// The payload, with `online` set. An error rather than an empty payload: an empty
    /// retained message would clear the topic.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut v = match self {
            Status::Birth(b) => serde_json::to_value(b),
            Status::Offline(o) => serde_json::to_value(o),
        }?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("online".into(), matches!(self, Status::Birth(_)).into());
        }
        serde_json::to_vec(&v)
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        match v.get("online") {
            Some(serde_json::Value::Bool(true)) => Birth::deserialize(v)
                .map(Status::Birth)
                .map_err(D::Error::custom),
            Some(serde_json::Value::Bool(false)) => Offline::deserialize(v)
                .map(Status::Offline)
                .map_err(D::Error::custom),
            Some(_) => Err(D::Error::custom("field `online` must be a boolean")),
            None => Err(D::Error::missing_field("online")),
        }
    }
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = self.to_json().map_err(serde::ser::Error::custom)?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(serde::ser::Error::custom)?;
        v.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_numbers_and_long_text_are_refused() {
        let birth = |extra: &str| {
            let json = format!(
                r#"{{"online":true,"conn":1,"session":"s","agent_version":"v","hostname":"h","boot_id":null,"metrics_interval_s":15,"ts":"2026-01-01T00:00:00Z"{extra}}}"#
            );
            serde_json::from_str::<Status>(&json).unwrap()
        };
        assert_eq!(birth("").validate(), Ok(()));
        let max = crate::MAX_COUNTER;
        let cases = [
            format!(r#","conn":{}"#, max + 1),
            format!(r#","conn":{}"#, u64::MAX),
            r#","metrics_interval_s":86401"#.to_string(),
            format!(r#","metrics_interval_s":{}"#, u32::MAX),
            format!(r#","hostname":"{}""#, "h".repeat(256)),
            format!(r#","session":"{}""#, "€".repeat(43)),
            format!(r#","agent_version":"{}""#, "v".repeat(129)),
        ];
        for extra in cases {
            assert!(birth(&extra).validate().is_err(), "{extra}");
        }
        assert_eq!(birth(&format!(r#","conn":{max}"#)).validate(), Ok(()));
        let will = format!(r#"{{"online":false,"reason":"lost","conn":{}}}"#, u64::MAX);
        let will: Status = serde_json::from_str(&will).unwrap();
        assert_eq!(will.validate(), Err(StatusError::Conn));
    }

    #[test]
    fn birth_round_trip_matches_the_design_example() {
        let json = r#"{"online":true,"conn":7,"session":"5f0c","agent_version":"0.1.0",
            "hostname":"r1u7","boot_id":"b-1","metrics_interval_s":15,
            "ts":"2026-01-01T00:00:00Z","future_field":[1,2]}"#;
        let s: Status = serde_json::from_str(json).unwrap();
        let Status::Birth(b) = &s else {
            panic!("expected birth, got {s:?}")
        };
        assert_eq!((b.conn, b.hostname.as_str()), (7, "r1u7"));
        assert_eq!(b.metrics_interval_s, 15);
        let again: Status = serde_json::from_slice(&s.to_json().unwrap()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn a_birth_says_its_protocol_and_one_without_it_speaks_the_first() {
        let old = r#"{"online":true,"conn":7,"session":"5f0c","agent_version":"0.0.9",
            "hostname":"r1u7","boot_id":null,"metrics_interval_s":15,"ts":"2026-01-01T00:00:00Z"}"#;
        let Status::Birth(b) = serde_json::from_str::<Status>(old).unwrap() else {
            panic!("a birth")
        };
        assert_eq!(b.protocol, 1);
        // A newer agent's birth is read too: its number, and nothing it added.
        let newer = old.replace("\"ts\"", "\"protocol\":7,\"ts\"");
        let Status::Birth(b) = serde_json::from_str::<Status>(&newer).unwrap() else {
            panic!("a birth")
        };
        assert_eq!(b.protocol, 7);
        // This build says its own.
        let mine = Status::Birth(Birth {
            protocol: crate::PROTOCOL_VERSION,
            ..b
        });
        let text = String::from_utf8(mine.to_json().unwrap()).unwrap();
        assert!(
            text.contains(&format!("\"protocol\":{}", crate::PROTOCOL_VERSION)),
            "{text}"
        );
        // Hostile or broken values are refused with the birth, not taken as 0 or 1.
        for bad in ["-1", "4294967296", "\"2\"", "null", "1.5"] {
            let text = old.replace("\"ts\"", &format!("\"protocol\":{bad},\"ts\""));
            assert!(serde_json::from_str::<Status>(&text).is_err(), "{bad}");
        }
        let top = old.replace("\"ts\"", "\"protocol\":4294967295,\"ts\"");
        let Status::Birth(b) = serde_json::from_str::<Status>(&top).unwrap() else {
            panic!("a birth")
        };
        assert_eq!(b.protocol, u32::MAX);
        // A receipt from a controller before the field has none.
        let r: crate::controller::Receipt =
            serde_json::from_str(r#"{"session":"s","seq":3}"#).unwrap();
        assert_eq!(r.protocol, None);
    }

    #[test]
    fn will_and_shutdown_parse() {
        let will: Status =
            serde_json::from_str(r#"{"online":false,"reason":"lost","conn":7}"#).unwrap();
        assert_eq!(
            will,
            Status::Offline(Offline {
                conn: 7,
                reason: OfflineReason::Lost,
                session: None,
                node_id: None
            })
        );
        let stop = Status::Offline(Offline {
            conn: 8,
            reason: OfflineReason::Shutdown,
            session: None,
            node_id: None,
        });
        let v: serde_json::Value = serde_json::from_slice(&stop.to_json().unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"online":false,"reason":"shutdown","conn":8})
        );
    }

    #[test]
    fn refuses_malformed_status() {
        for bad in [
            r#"{}"#,
            r#"{"online":"yes","conn":1}"#,
            r#"{"online":false,"conn":1}"#,
            r#"{"online":false,"reason":"lost","conn":-1}"#,
            r#"{"online":false,"reason":"bored","conn":1}"#,
            r#"{"online":true,"conn":1}"#,
            r#"{"online":true,"conn":1,"session":"s","agent_version":"v","hostname":"h","metrics_interval_s":15,"ts":"now"}"#,
            r#"[1,2]"#,
        ] {
            assert!(serde_json::from_str::<Status>(bad).is_err(), "{bad}");
        }
    }
}
