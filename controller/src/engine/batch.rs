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
use crate::publish::Outbound;
use crate::store::{AuditEntry, CommandRecord, StoredInventory, TokenRecord};
use crate::telemetry::Telemetry;
use crate::wake::WakeRequest;

/// Where an API call's answer goes.
pub(super) type ReplyTo = oneshot::Sender<Result<Reply, CallError>>;
/// Where the answer to a token's creation goes.
pub(super) type TokenReplyTo = oneshot::Sender<Result<(), CallError>>;

/// Counters one batch moved.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Reports (or events) the state machine refused.
    pub refused: u64,
    /// Status messages of an older connection, ignored.
    pub stale: u64,
    /// Reports already applied, dropped.
    pub duplicate: u64,
    /// Reports that came after a gap and wait.
    pub held_back: u64,
    pub applied: u64,
    /// Commands published again.
    pub resent: u64,
    /// Stuck nodes found, and recovery attempts made, by state.
    pub stuck: Vec<NodeState>,
    pub recoveries: Vec<NodeState>,
    /// Seconds spent in each state left.
    pub durations: Vec<(NodeState, f64)>,
    /// Commands sent and each status they reached.
    pub commands: Vec<(CommandKind, CommandStatus)>,
}

impl Counts {
    /// Adds everything to the telemetry: called after a successful commit only.
    pub(super) fn record(self, t: &Telemetry) {
        t.reports_refused.inc_by(self.refused);
        t.ingest_stale.inc_by(self.stale);
        t.reports_duplicate.inc_by(self.duplicate);
        t.reports_held_back.inc_by(self.held_back);
        t.reports_applied.inc_by(self.applied);
        t.commands_resent.inc_by(self.resent);
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
    pub used_early: Vec<(NodeId, Inventory)>,
    /// Audit entries with their per-node number.
    pub audits: Vec<(u64, AuditEntry)>,
    pub commands: Vec<CommandRecord>,
    /// Node events (DESIGN section 7.5), repeats within the batch already merged.
    pub events: Vec<(NodeId, NodeEvent)>,
    /// New API tokens: hash and record.
    pub tokens: Vec<(String, TokenRecord)>,
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
    pub(super) fn event(
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

    /// A Normal event seen by the controller.
    pub(super) fn normal(
        &mut self,
        id: &NodeId,
        reason: EventReason,
        message: impl Into<String>,
        now: Timestamp,
    ) {
        self.event(
            id,
            EventType::Normal,
            reason,
            message,
            EventSource::Controller,
            now,
        );
    }

    /// A Warning seen by the controller.
    pub(super) fn warning(
        &mut self,
        id: &NodeId,
        reason: EventReason,
        message: impl Into<String>,
        now: Timestamp,
    ) {
        self.event(
            id,
            EventType::Warning,
            reason,
            message,
            EventSource::Controller,
            now,
        );
    }

    /// A Normal event the node's agent reported.
    pub(super) fn agent_normal(
        &mut self,
        id: &NodeId,
        reason: EventReason,
        message: impl Into<String>,
        now: Timestamp,
    ) {
        self.event(
            id,
            EventType::Normal,
            reason,
            message,
            EventSource::Agent,
            now,
        );
    }

    /// A Warning about what the node's agent said.
    pub(super) fn agent_warning(
        &mut self,
        id: &NodeId,
        reason: EventReason,
        message: impl Into<String>,
        now: Timestamp,
    ) {
        self.event(
            id,
            EventType::Warning,
            reason,
            message,
            EventSource::Agent,
            now,
        );
    }
}
