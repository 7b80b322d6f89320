//! Node events (DESIGN section 7.5): what the controller tells an operator about a node,
//! Kubernetes-style, with a closed vocabulary of reasons.

use serde::{Deserialize, Serialize};

use crate::command::PowerAction;
use crate::names::names;
use crate::Timestamp;

names! {
    /// Normal or Warning, as in Kubernetes events.
    pub enum EventType as "event type" by variant name {
        Normal,
        Warning,
    }
}

names! {
    /// Who saw what an event tells: the controller itself, or the node's agent (a report).
    pub enum EventSource as "event source" {
        Controller = "controller",
        Agent = "agent",
    }
}

names! {
    /// Why an event was recorded. Every reason the controller uses is here, so a
    /// dashboard or an alert can list them (`EventReason::ALL`).
    pub enum EventReason as "event reason" by variant name {
        /// The agent connected (or was heard from again after silence).
        NodeOnline,
        /// The agent stopped, its connection died, or it fell silent.
        NodeOffline,
        /// A new inventory differs from the stored one; the message names the sections.
        InventoryChanged,
        /// The agent started the install.
        InstallStarted,
        /// An install attempt failed; it is sent again after a backoff.
        InstallRetry,
        /// The last install attempt failed: the node is `install_failed`.
        InstallFailed,
        InstallCompleted,
        DeprovisionCompleted,
        DeprovisionFailed,
        /// The node moved to `error` and needs an operator.
        NodeError,
        /// The agent refused a command.
        CommandRejected,
        /// A message from the node's agent was refused (ingest, or a report that does not
        /// fit the node).
        MessageRejected,
        /// The node stayed in a state past its timeout without progress.
        StuckState,
        /// Reports the agent had seen receipted were missing from the store (it was
        /// restored from a backup); they were skipped, the ones after applied.
        ReportsLost,
        /// A stuck node's job was cancelled and sent again.
        RecoveryAttempt,
        /// No agent matched a pre-registration in time.
        DiscoveryTimeout,
        /// An operator pre-registered the node.
        Registered,
        /// A new agent claimed a pre-registration.
        NodeMatched,
        RebootRequested,
        RebootCompleted,
        RebootFailed,
        PoweroffRequested,
        PoweroffCompleted,
        PoweroffFailed,
        WakeRequested,
        WakeFailed,
        /// An operator revoked the node's credential; its agent is cut off until it
        /// enrolls again with a new token.
        CredentialRevoked,
        /// A campaign started its action on the node; the message names the campaign.
        CampaignStarted,
        /// The node could not take a campaign's action; the message is the refusal.
        CampaignSkipped,
        /// A campaign's action on the node succeeded.
        CampaignSucceeded,
        /// A campaign's action on the node failed.
        CampaignFailed,
    }
}

impl EventReason {
    /// An operator asked for `action`.
    pub fn requested(action: PowerAction) -> Self {
        match action {
            PowerAction::Reboot => EventReason::RebootRequested,
            PowerAction::Poweroff => EventReason::PoweroffRequested,
        }
    }

    /// The agent ran `action` (it exited 0).
    pub fn completed(action: PowerAction) -> Self {
        match action {
            PowerAction::Reboot => EventReason::RebootCompleted,
            PowerAction::Poweroff => EventReason::PoweroffCompleted,
        }
    }

    /// `action` failed on the agent.
    pub fn failed(action: PowerAction) -> Self {
        match action {
            PowerAction::Reboot => EventReason::RebootFailed,
            PowerAction::Poweroff => EventReason::PoweroffFailed,
        }
    }
}

/// One node event (DESIGN section 7.5, seed 004's fields). A repeat of the same
/// (type, reason, message, source) bumps `count` and `last_timestamp` instead of adding
/// an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeEvent {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub reason: EventReason,
    pub message: String,
    pub source: EventSource,
    pub first_timestamp: Timestamp,
    pub last_timestamp: Timestamp,
    pub count: u64,
}

impl NodeEvent {
    /// A first occurrence at `at`.
    pub fn new(
        kind: EventType,
        reason: EventReason,
        message: impl Into<String>,
        source: EventSource,
        at: Timestamp,
    ) -> Self {
        NodeEvent {
            kind,
            reason,
            message: message.into(),
            source,
            first_timestamp: at,
            last_timestamp: at,
            count: 1,
        }
    }

    /// Whether `other` is a repeat of this event.
    pub fn same_as(&self, other: &NodeEvent) -> bool {
        self.kind == other.kind
            && self.reason == other.reason
            && self.message == other.message
            && self.source == other.source
    }
}

/// `GET /nodes/{node}/events`: newest first (by `last_timestamp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Events {
    pub data: Vec<NodeEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_reasons_are_named_after_their_action() {
        for action in PowerAction::ALL {
            let name = match action {
                PowerAction::Reboot => "Reboot",
                PowerAction::Poweroff => "Poweroff",
            };
            assert_eq!(
                EventReason::requested(action).as_str(),
                format!("{name}Requested")
            );
            assert_eq!(
                EventReason::completed(action).as_str(),
                format!("{name}Completed")
            );
            assert_eq!(
                EventReason::failed(action).as_str(),
                format!("{name}Failed")
            );
        }
    }

    #[test]
    fn the_design_reasons_are_all_there() {
        for name in [
            "NodeOnline",
            "NodeOffline",
            "InventoryChanged",
            "InstallStarted",
            "InstallRetry",
            "InstallFailed",
            "InstallCompleted",
            "StuckState",
            "RecoveryAttempt",
            "DiscoveryTimeout",
            "CommandRejected",
            "MessageRejected",
        ] {
            assert!(name.parse::<EventReason>().is_ok(), "{name}");
        }
    }
}
