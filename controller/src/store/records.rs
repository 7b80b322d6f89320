//! What the controller stores per node, as serde structs encoded to JSON in redb values.
//!
//! JSON keeps records readable and lets fields be added with `#[serde(default)]`, so an
//! older data dir opens in a newer controller.

use std::collections::BTreeMap;

use metalbus_protocol::api::{MatchHints, Role};
use metalbus_protocol::command::{Command, CommandStatus};
use metalbus_protocol::controller::Progress;
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::machine::{AfterDeprovision, JobRef, Lifecycle};
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::status::OfflineReason;
use metalbus_protocol::{NodeId, Timestamp};
use serde::{Deserialize, Serialize};

/// One node: identity, lifecycle, agent connection facts, operator metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// Unique; defaults to the hostname. API paths take the id or the name.
    pub name: String,
    pub state: NodeState,
    /// Goes up by one on every change to this record.
    pub version: u64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub state_changed_at: Timestamp,

    pub online: bool,
    #[serde(default)]
    pub offline_reason: Option<OfflineReason>,
    /// `conn` of the newest birth seen; older Wills and births are stale.
    #[serde(default)]
    pub conn: u64,
    #[serde(default)]
    pub session: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub agent_version: Option<String>,
    /// The protocol version of the agent's last birth.
    #[serde(default)]
    pub agent_protocol: Option<u32>,
    #[serde(default)]
    pub boot_id: Option<String>,
    #[serde(default)]
    pub metrics_interval_s: Option<u32>,

    #[serde(default)]
    pub install_attempts: u32,
    #[serde(default)]
    pub last_install_error: Option<String>,
    #[serde(default)]
    pub recovery_attempts: u32,
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub progress: Option<Progress>,

    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub control_plane: bool,

    /// What a running deprovision leads to.
    #[serde(default)]
    pub after_deprovision: Option<AfterDeprovision>,
    /// The job the node runs (or was last sent); reports for other commands are refused.
    #[serde(default)]
    pub job: Option<JobRef>,
    /// How many audit entries the node has; the next one gets this number + 1.
    #[serde(default)]
    pub history_len: u64,
    /// When the newest inventory arrived.
    #[serde(default)]
    pub inventory_at: Option<Timestamp>,
    /// When the newest job report arrived (any report resets the install timer).
    #[serde(default)]
    pub last_progress_at: Option<Timestamp>,
    /// When the newest recovery attempt was made; the state's timer restarts from it.
    #[serde(default)]
    pub recovered_at: Option<Timestamp>,
    /// A pre-registered node: what its agent will be matched by.
    #[serde(default)]
    pub registration: Option<MatchHints>,

    /// The agent outbox session whose reports are applied (DESIGN section 4).
    #[serde(default)]
    pub report_session: Option<String>,
    /// The newest report of `report_session` applied; committed with its effects.
    #[serde(default)]
    pub last_applied_seq: u64,
    /// Earlier sessions of this node: their late reports are dropped.
    #[serde(default)]
    pub old_sessions: Vec<String>,
}

impl NodeRecord {
    /// A node seen for the first time at `now`: `discovered`, online, and nothing else
    /// known yet (the caller fills in what its birth said).
    pub fn discovered(id: NodeId, name: String, now: Timestamp) -> Self {
        NodeRecord {
            id,
            name,
            state: NodeState::Discovered,
            version: 1,
            created_at: now,
            updated_at: now,
            state_changed_at: now,
            online: true,
            offline_reason: None,
            conn: 0,
            session: None,
            hostname: None,
            agent_version: None,
            agent_protocol: None,
            boot_id: None,
            metrics_interval_s: None,
            install_attempts: 0,
            last_install_error: None,
            recovery_attempts: 0,
            plan: None,
            progress: None,
            labels: BTreeMap::new(),
            group: None,
            control_plane: false,
            after_deprovision: None,
            job: None,
            history_len: 0,
            inventory_at: None,
            last_progress_at: None,
            recovered_at: None,
            registration: None,
            report_session: None,
            last_applied_seq: 0,
            old_sessions: Vec::new(),
        }
    }

    /// The part the state machine works on.
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            state: self.state,
            install_attempts: self.install_attempts,
            last_install_error: self.last_install_error.clone(),
            recovery_attempts: self.recovery_attempts,
            control_plane: self.control_plane,
            after_deprovision: self.after_deprovision,
            job: self.job.clone(),
        }
    }

    /// Takes the machine's result back.
    pub fn set_lifecycle(&mut self, l: Lifecycle) {
        self.state = l.state;
        self.install_attempts = l.install_attempts;
        self.last_install_error = l.last_install_error;
        self.recovery_attempts = l.recovery_attempts;
        self.control_plane = l.control_plane;
        self.after_deprovision = l.after_deprovision;
        self.job = l.job;
    }
}

pub use metalbus_protocol::api::AuditEntry;

/// A command the controller sent, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub node_id: NodeId,
    pub command: Command,
    pub status: CommandStatus,
    pub reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The newest inventory of a node, and when it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredInventory {
    pub received_at: Timestamp,
    pub inventory: Inventory,
}

/// The newest heartbeat (metrics sample) of a node. Written in batches with cheap
/// durability (DESIGN section 4: a crash may lose the last `metrics_flush` of samples).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub last_seen_at: Timestamp,
    pub sample: Option<MetricsSample>,
}

/// An API token; only its SHA-256 is stored, as the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    pub created_at: Timestamp,
}

/// An enrollment token (DESIGN section 11), keyed by its id. The secret is kept: the
/// controller checks requests sealed with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenRecord {
    /// The secret, hex.
    pub secret: String,
    pub created_at: Timestamp,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// How many enrollments it allows; unlimited when unset.
    #[serde(default)]
    pub max_uses: Option<u32>,
    #[serde(default)]
    pub uses: u32,
    /// The one node it may enroll.
    #[serde(default)]
    pub node: Option<NodeId>,
    /// The pre-registration the node it enrolls claims (`nodes register --enroll-token`).
    #[serde(default)]
    pub registration: Option<NodeId>,
}

/// A node's credential: the key it shares with the controller, from enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    /// The node key, hex.
    pub key: String,
    /// The enrollment token it came from.
    pub token: String,
    pub enrolled_at: Timestamp,
    /// Set by the first message proven with this key. Until then the same token may
    /// enroll the node again (its answer may have been lost); afterwards only after
    /// `metalbus nodes revoke`.
    #[serde(default)]
    pub confirmed: bool,
    /// Set by `metalbus nodes revoke`: the key is gone, and the node enrolls again only
    /// with a token made after this.
    #[serde(default)]
    pub revoked_at: Option<Timestamp>,
    /// The pre-registration this node claims when it first appears (from its token).
    #[serde(default)]
    pub registration: Option<NodeId>,
}

/// A campaign (DESIGN section 9): what the API shows, and what counted when it was last
/// resumed (its abort rules judge what came after).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignRecord {
    #[serde(flatten)]
    pub view: metalbus_protocol::campaign::CampaignView,
    #[serde(default)]
    pub since: metalbus_protocol::campaign::CampaignCounts,
}

/// One node of a campaign, stored under (campaign id, its place in the campaign).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignNodeRecord {
    #[serde(flatten)]
    pub view: metalbus_protocol::campaign::CampaignNodeView,
    /// A `retry` of a failed deprovision: judged as an `unmanage`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub as_unmanage: bool,
}
