//! `NodeId`: a node's stable identity, checked on construction (DESIGN section 2).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A valid node id: `^[a-z0-9][a-z0-9._-]{0,63}$`.
///
/// The only way to get one is [`NodeId::new`] (or deserializing, which calls it), so every
/// `NodeId` in the program is valid and safe to put in an MQTT topic or a URL path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct NodeId(String);

/// Why a string is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error("node id is empty")]
    Empty,
    #[error("node id is {len} characters long; the limit is 64")]
    TooLong { len: usize },
    #[error("node id must start with a lower-case letter or digit, not {found:?}")]
    BadFirst { found: char },
    #[error("node id may only hold a-z, 0-9, '.', '_' and '-'; found {found:?}")]
    BadChar { found: char },
}

impl NodeId {
    /// The longest id allowed.
    pub const MAX_LEN: usize = 64;

    /// Checks `raw` and wraps it.
    pub fn new(raw: impl Into<String>) -> Result<Self, NodeIdError> {
        let raw = raw.into();
        let mut chars = raw.chars();
        let first = chars.next().ok_or(NodeIdError::Empty)?;
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(NodeIdError::BadFirst { found: first });
        }
        if let Some(found) = chars.find(|c| !is_id_char(*c)) {
            return Err(NodeIdError::BadChar { found });
        }
        // All characters are ASCII here, so bytes == characters.
        if raw.len() > Self::MAX_LEN {
            return Err(NodeIdError::TooLong { len: raw.len() });
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `name` can be a node name: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a
/// letter or digit. Names appear in URL paths and CLI arguments, so they stay plain.
pub fn is_valid_node_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= NodeId::MAX_LEN
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        NodeId::new(raw).map_err(serde::de::Error::custom)
    }
}

/// A node id string in the OpenAPI document, with its rules.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for NodeId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(Self::MAX_LEN))
            .pattern(Some("^[a-z0-9][a-z0-9._-]*$"))
            .description(Some(
                "Node id: lower-case letters, digits, '.', '_' and '-'",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for NodeId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for ok in [
            "a",
            "0",
            "node-1",
            "rack3.u42",
            "4c4c4544-0042-3510-8052-b4c04f4e4d32",
            "aabbccddeeff",
            "x_y",
            &"a".repeat(64),
        ] {
            assert_eq!(NodeId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_bad_ids_with_the_reason() {
        let cases: &[(&str, NodeIdError)] = &[
            ("", NodeIdError::Empty),
            ("-node", NodeIdError::BadFirst { found: '-' }),
            (".node", NodeIdError::BadFirst { found: '.' }),
            ("Node", NodeIdError::BadFirst { found: 'N' }),
            ("node A", NodeIdError::BadChar { found: ' ' }),
            ("node/1", NodeIdError::BadChar { found: '/' }),
            ("node+", NodeIdError::BadChar { found: '+' }),
            ("node#", NodeIdError::BadChar { found: '#' }),
            ("nodé", NodeIdError::BadChar { found: 'é' }),
            ("UPPER", NodeIdError::BadFirst { found: 'U' }),
            ("aB", NodeIdError::BadChar { found: 'B' }),
        ];
        for (raw, want) in cases {
            assert_eq!(NodeId::new(*raw).unwrap_err(), *want, "{raw:?}");
        }
        assert_eq!(
            NodeId::new("a".repeat(65)).unwrap_err(),
            NodeIdError::TooLong { len: 65 }
        );
    }

    #[test]
    fn node_names_allow_upper_case_but_nothing_odd() {
        for ok in ["web-01", "Web01.example.com", "a", "x_y"] {
            assert!(is_valid_node_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a b", "a/b", "ü", &"a".repeat(65)] {
            assert!(!is_valid_node_name(bad), "{bad}");
        }
    }

    #[test]
    fn deserializing_checks_the_id() {
        let ok: NodeId = serde_json::from_str("\"n1\"").unwrap();
        assert_eq!(ok.as_str(), "n1");
        let err = serde_json::from_str::<NodeId>("\"N1\"").unwrap_err();
        assert!(err.to_string().contains("must start with"), "{err}");
    }
}
