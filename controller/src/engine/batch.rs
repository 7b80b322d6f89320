//! What one batch of inputs changed: written in one transaction, then announced (state
//! and events published, calls answered, effects handed on), and the counters it moves,
//! which reach the telemetry only once the batch is committed, so a failed commit and
//! its retry never count anything twice.

use std::collections::{BTreeMap, BTreeSet};

use metalbus_protocol::command::{CommandId, CommandKind, CommandStatus};
use metalbus_protocol::event::{EventReason, EventSource, EventType, NodeEvent};
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::{NodeId, Timestamp};
use tokio::sync::oneshot;
use tracing::debug;

use super::calls::{CallError, Done, Reply};
use super::campaigns::CampaignReplyTo;
use crate::publish::Outbound;
use crate::store::{
    AuditEntry, CampaignNodeRecord, CampaignRecord, CommandRecord, CredentialRecord,
    EnrollTokenRecord, StoredInventory, TokenRecord,
};
use crate::telemetry::{Limit, Telemetry};
use crate::wake::WakeRequest;
use metalbus_protocol::campaign::Outcome;
use metalbus_protocol::proof::NodeKey;

/// Where an API call's answer goes.
pub(super) type ReplyTo = oneshot::Sender<Result<Reply, CallError>>;
/// Where the answer to a token's creation goes.
pub(super) type TokenReplyTo = oneshot::Sender<Result<(), CallError>>;

/// What a batch counts one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tally {
    /// A report (or event) the state machine refused.
    Refused,
    /// A status message of an older connection, ignored.
    Stale,
    /// A report already applied, dropped.
    Duplicate,
    /// A report that came after a gap and waits.
    HeldBack,
    Applied,
    /// A command published again.
    Resent,
}

impl Tally {
    const ALL: [Tally; 6] = [
        Tally::Refused,
        Tally::Stale,
        Tally::Duplicate,
        Tally::HeldBack,
        Tally::Applied,
        Tally::Resent,
    ];
}

/// Counters one batch moved.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// One number per [`Tally`], in its order.
    tallies: [u64; Tally::ALL.len()],
    /// Stuck nodes found, and recovery attempts made, by state.
    pub stuck: Vec<NodeState>,
    pub recoveries: Vec<NodeState>,
    /// Seconds spent in each state left.
    pub durations: Vec<(NodeState, f64)>,
    /// Commands sent and each status they reached.
    pub commands: Vec<(CommandKind, CommandStatus)>,
    /// Inputs dropped at a bound (docs/LIMITS.md).
    pub limits: Vec<Limit>,
    /// Campaign nodes that ended, by outcome.
    pub campaign_nodes: Vec<Outcome>,
}

impl Counts {
    pub(super) fn add(&mut self, tally: Tally) {
        self.tallies[tally as usize] += 1;
    }

    pub(super) fn limit(&mut self, limit: Limit) {
        self.limits.push(limit);
    }

    /// Adds everything to the telemetry: called after a successful commit only.
    pub(super) fn record(self, t: &Telemetry) {
        for (tally, n) in Tally::ALL.into_iter().zip(self.tallies) {
            let counter = match tally {
                Tally::Refused => &t.reports_refused,
                Tally::Stale => &t.ingest_stale,
                Tally::Duplicate => &t.reports_duplicate,
                Tally::HeldBack => &t.reports_held_back,
                Tally::Applied => &t.reports_applied,
                Tally::Resent => &t.commands_resent,
            };
            counter.inc_by(n);
        }
        for state in self.stuck {
            t.stuck_states.get_or_create(&state.into()).inc();
        }
        for state in self.recoveries {
            t.recovery_attempts.get_or_create(&state.into()).inc();
        }
        for (state, seconds) in self.durations {
            t.observe_state_duration(state, seconds);
        }
        for (kind, status) in self.commands {
            t.count_command(kind, status);
        }
        for limit in self.limits {
            t.count_limit(limit);
        }
        for outcome in self.campaign_nodes {
            t.count_campaign_node(outcome);
        }
    }
}

/// What one batch changed, to be written and then announced.
#[derive(Default)]
pub(super) struct Batch {
    /// Changed nodes and the name each had before (None if new).
    pub nodes: BTreeMap<NodeId, Option<String>>,
    /// Nodes that are gone (a registration a new agent claimed), with their names;
    /// deleted before the changed nodes are written.
    pub deleted: Vec<(NodeId, String)>,
    pub inventories: BTreeMap<NodeId, StoredInventory>,
    /// Early inventories this batch used; put back if the commit fails.
    pub used_early: Vec<(NodeId, (Inventory, Timestamp))>,
    /// Audit entries with their per-node number.
    pub audits: Vec<(u64, AuditEntry)>,
    pub commands: Vec<CommandRecord>,
    /// Node events (DESIGN section 7.5), repeats within the batch already merged.
    pub events: Vec<(NodeId, NodeEvent)>,
    /// New API tokens: hash and record.
    pub tokens: Vec<(String, TokenRecord)>,
    /// Revoked API tokens, by hash.
    pub deleted_tokens: Vec<String>,
    /// Enrollment tokens written (`None`: deleted).
    pub enroll_tokens: Vec<(String, Option<EnrollTokenRecord>)>,
    /// Node credentials written (`None`: revoked).
    pub credentials: Vec<(NodeId, Option<CredentialRecord>)>,
    /// Keyring changes, made after the commit and before anything is published.
    pub keys: Vec<(NodeId, Option<NodeKey>)>,
    /// Published after the commit.
    pub outbound: Vec<Outbound>,
    /// Wake-on-LAN requests, handed to the wake task after the commit.
    pub wakes: Vec<WakeRequest>,
    /// API answers, sent after the commit.
    pub replies: Vec<(ReplyTo, Result<Done, CallError>)>,
    pub token_replies: Vec<TokenReplyTo>,
    /// Calls answered only when their operation is over (a wake, once its packets went
    /// out); parked after the commit.
    pub parked: Vec<(CommandId, ReplyTo, Done)>,
    /// Anything but progress: commit with `Durability::Immediate`.
    pub durable: bool,
    /// Nodes that need an operator, and why; moved to `error` after the inputs.
    pub followups: Vec<(NodeId, String)>,
    /// Nodes whose receipt to publish after the commit.
    pub receipts: BTreeSet<NodeId>,
    pub counts: Counts,
    /// Campaigns written, by id.
    pub campaigns: BTreeMap<String, CampaignRecord>,
    /// Campaign nodes written, by (campaign, place).
    pub campaign_nodes: BTreeMap<(String, u32), CampaignNodeRecord>,
    /// Campaign calls, answered after the commit with the campaign as written.
    pub campaign_replies: Vec<(CampaignReplyTo, String)>,
}

impl Batch {
    /// Whether there is nothing to write.
    pub(super) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.deleted.is_empty()
            && self.inventories.is_empty()
            && self.audits.is_empty()
            && self.commands.is_empty()
            && self.events.is_empty()
            && self.tokens.is_empty()
            && self.deleted_tokens.is_empty()
            && self.enroll_tokens.is_empty()
            && self.credentials.is_empty()
            && self.campaigns.is_empty()
            && self.campaign_nodes.is_empty()
    }

    /// Queues a message to publish after the commit (`None`: it did not serialize,
    /// and was logged).
    pub(super) fn publish(&mut self, msg: Option<Outbound>) {
        self.outbound.extend(msg);
    }

    /// A command record to write, replacing this batch's earlier version of it.
    pub(super) fn put_command(&mut self, rec: CommandRecord) {
        let id = &rec.command.command_id;
        self.commands.retain(|c| c.command.command_id != *id);
        self.commands.push(rec);
    }

    /// Records an event for `id` at `now`; a repeat of one already in this batch bumps
    /// its count.
    fn event(
        &mut self,
        id: &NodeId,
        kind: EventType,
        reason: EventReason,
        message: impl Into<String>,
        source: EventSource,
        now: Timestamp,
    ) {
        let event = NodeEvent::new(kind, reason, message, source, now);
        debug!(node = %id, kind = %kind, %reason, message = %event.message, "event");
        self.durable = true;
        let repeat = self
            .events
            .iter_mut()
            .rev()
            .find(|(n, e)| n == id && e.same_as(&event));
        match repeat {
            Some((_, e)) => {
                e.count += 1;
                e.last_timestamp = now;
            }
            None => self.events.push((id.clone(), event)),
        }
    }

    /// Events about node `id` that the controller saw at `now`.
    pub(super) fn controller<'a>(&'a mut self, id: &'a NodeId, now: Timestamp) -> Recorder<'a> {
        self.recorder(id, now, EventSource::Controller)
    }

    /// Events about node `id` that its agent reported (or sent) at `now`.
    pub(super) fn agent<'a>(&'a mut self, id: &'a NodeId, now: Timestamp) -> Recorder<'a> {
        self.recorder(id, now, EventSource::Agent)
    }

    pub(super) fn recorder<'a>(
        &'a mut self,
        id: &'a NodeId,
        now: Timestamp,
        source: EventSource,
    ) -> Recorder<'a> {
        Recorder {
            batch: self,
            id,
            now,
            source,
        }
    }
}

/// Records one event about a node, from one source: `batch.agent(id, now).warning(..)`.
pub(super) struct Recorder<'a> {
    batch: &'a mut Batch,
    id: &'a NodeId,
    now: Timestamp,
    source: EventSource,
}

impl Recorder<'_> {
    pub(super) fn normal(self, reason: EventReason, message: impl Into<String>) {
        self.record(EventType::Normal, reason, message);
    }

    pub(super) fn warning(self, reason: EventReason, message: impl Into<String>) {
        self.record(EventType::Warning, reason, message);
    }

    pub(super) fn record(self, kind: EventType, reason: EventReason, message: impl Into<String>) {
        let (id, now, source) = (self.id, self.now, self.source);
        self.batch.event(id, kind, reason, message, source, now);
    }
}
