//! What the engine is sent: agents' messages (from ingest), operators' calls and new
//! tokens (from the API), wake outcomes (from the wake task), and the bus's resync.

use metalbus_protocol::command::CommandId;
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::report::Report;
use metalbus_protocol::status::Status;
use metalbus_protocol::NodeId;

use super::batch::TokenReplyTo;
use super::campaigns::CampaignCall;
use super::Call;
use crate::ingest::Place;
use crate::store::{EnrollTokenRecord, TokenRecord};

/// What an operator changes about tokens and node credentials.
#[derive(Debug)]
pub enum KeyChange {
    /// A new API token (only its hash is stored).
    ApiToken { hash: String, record: TokenRecord },
    /// A new enrollment token.
    EnrollToken {
        id: String,
        record: EnrollTokenRecord,
    },
    /// Revoke the token named `name`, of either kind.
    RevokeToken { name: String },
    /// Revoke a node's credential.
    RevokeNode { id: NodeId, user: Option<String> },
}

/// Something for the engine to apply.
#[derive(Debug)]
pub enum Input {
    Status {
        id: NodeId,
        status: Status,
    },
    Inventory {
        id: NodeId,
        inventory: Box<Inventory>,
    },
    Metrics {
        id: NodeId,
        sample: MetricsSample,
    },
    /// An ack or job event from the agent.
    Report {
        id: NodeId,
        report: Box<Report>,
    },
    /// An operator's request from the HTTP API, answered after the commit.
    Call(Box<Call>),
    /// A campaign's creation, pause, resume or cancel, answered after the commit.
    Campaign(Box<CampaignCall>),
    /// A token or credential change from an operator, answered after the commit.
    Keys {
        change: KeyChange,
        reply: TokenReplyTo,
    },
    /// The wake task sent a wake's packets (`error: None`), or could not.
    WakeSent {
        operation_id: CommandId,
        error: Option<String>,
    },
    /// The broker connection is (re)established: publish every retained message again.
    Resync,
    /// An enrollment request (checked by the engine, which holds the tokens).
    Enroll {
        id: NodeId,
        payload: Vec<u8>,
    },
    /// Ingest refused a message on this node's topics; recorded as a Warning event if
    /// the node is known.
    Rejected {
        id: NodeId,
        error: String,
    },
    /// A report ingest refused, in its place in the node's stream: the place is taken
    /// (receipted) with a Warning event, so the reports after it move on.
    RefusedReport {
        id: NodeId,
        place: Place,
        error: String,
    },
}

impl Input {
    /// The node whose key proved this input (ingest checked it), if it came from one.
    pub(super) fn proven_from(&self) -> Option<&NodeId> {
        match self {
            Input::Status { id, .. }
            | Input::Inventory { id, .. }
            | Input::Metrics { id, .. }
            | Input::Report { id, .. }
            | Input::RefusedReport { id, .. } => Some(id),
            _ => None,
        }
    }

    /// Whether the input is applied again after a failed commit. Metrics are not (the
    /// next sample replaces them), nor calls and tokens (answered with the error), nor
    /// a resync or a reject's event.
    pub(super) fn retried(&self) -> bool {
        matches!(
            self,
            Input::Status { .. }
                | Input::Inventory { .. }
                | Input::Report { .. }
                | Input::RefusedReport { .. }
                | Input::WakeSent { .. }
        )
    }

    /// A copy of a retried input, kept while the original is applied.
    pub(super) fn retry_copy(&self) -> Option<Input> {
        Some(match self {
            Input::Status { id, status } => Input::Status {
                id: id.clone(),
                status: status.clone(),
            },
            Input::Inventory { id, inventory } => Input::Inventory {
                id: id.clone(),
                inventory: inventory.clone(),
            },
            Input::Report { id, report } => Input::Report {
                id: id.clone(),
                report: report.clone(),
            },
            Input::RefusedReport { id, place, error } => Input::RefusedReport {
                id: id.clone(),
                place: place.clone(),
                error: error.clone(),
            },
            Input::WakeSent {
                operation_id,
                error,
            } => Input::WakeSent {
                operation_id: operation_id.clone(),
                error: error.clone(),
            },
            Input::Metrics { .. }
            | Input::Call(_)
            | Input::Campaign(_)
            | Input::Keys { .. }
            | Input::Resync
            | Input::Enroll { .. }
            | Input::Rejected { .. } => return None,
        })
    }
}
