//! Messages the controller publishes for monitoring tools and agents (DESIGN section 3).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lifecycle::{NodeState, Phase};
use crate::{NodeId, Timestamp};

/// Progress of a running job, as last reported by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Progress {
    pub percent: u8,
    pub step: Option<String>,
    pub message: Option<String>,
}

/// The retained `{p}/nodes/{id}/state`: the node's authoritative view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStateMessage {
    pub id: NodeId,
    pub name: String,
    pub state: NodeState,
    pub phase: Phase,
    pub version: u64,
    /// When the node entered `state`.
    pub since: Timestamp,
    pub online: bool,
    pub install_attempts: u32,
    pub last_error: Option<String>,
    pub progress: Option<Progress>,
}

/// The retained `{p}/summary`: fleet counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Summary {
    pub total: u64,
    pub online: u64,
    pub offline: u64,
    pub by_state: BTreeMap<NodeState, u64>,
    pub by_phase: BTreeMap<Phase, u64>,
}

/// `{p}/nodes/{id}/receipts`: every report of `session` up to `seq` is durably committed
/// at the controller (cumulative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Receipt {
    pub session: String,
    pub seq: u64,
    /// The controller's [`crate::PROTOCOL_VERSION`] (absent from controllers before the
    /// field, which speak 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
}

/// `{p}/nodes/{id}/rejects`: one refused message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reject {
    pub topic: String,
    pub error: String,
    /// The report's `seq`, when the payload had a readable one.
    pub seq: Option<u64>,
}

/// The retained `{p}/controller/status`, with the Will `{"online":false}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ControllerStatus {
    pub online: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The controller's [`crate::PROTOCOL_VERSION`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_message_has_the_design_fields() {
        let m = NodeStateMessage {
            id: NodeId::new("n1").unwrap(),
            name: "r1u7".into(),
            state: NodeState::Discovered,
            phase: NodeState::Discovered.phase(),
            version: 1,
            since: Timestamp::from_unix_millis(0),
            online: true,
            install_attempts: 0,
            last_error: None,
            progress: None,
        };
        let v = serde_json::to_value(&m).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "id",
                "install_attempts",
                "last_error",
                "name",
                "online",
                "phase",
                "progress",
                "since",
                "state",
                "version"
            ]
        );
        assert_eq!(v["phase"], "Unmanaged");
        assert_eq!(serde_json::from_value::<NodeStateMessage>(v).unwrap(), m);
    }

    #[test]
    fn summary_keys_are_state_and_phase_names() {
        let mut s = Summary::default();
        s.by_state.insert(NodeState::InstallFailed, 2);
        s.by_phase.insert(Phase::ManagedFailed, 2);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["by_state"]["install_failed"], 2);
        assert_eq!(v["by_phase"]["ManagedFailed"], 2);
    }
}
