//! The engine: the one task that changes node data (STYLE rule 4).
//!
//! Ingest and the HTTP API send it [`Input`]s over a channel. It applies a batch of them to
//! its in-memory copy of the nodes, commits the batch in one redb transaction (group
//! commit: transitions, their audit entries, counters and commands together, with
//! `Durability::Immediate`), and only then publishes the resulting MQTT messages and
//! answers the API. If a commit fails the copy is reloaded from the store and nothing is
//! published, so the world never sees a change the store does not hold.
//!
//! - `agent.rs`: what agents say (status, inventory, metrics, reports).
//! - `ops.rs`: the state machine, API calls, commands and timers.
//! - `reconcile.rs`: state timeouts and recovery, discovery timeouts, heartbeat staleness.
//!
//! - `metrics.rs`: metrics history (samples and one-minute rollups), buffered in memory.
//!
//! Metrics samples never cause a transaction of their own: they refresh the heartbeat and
//! go into the metrics history buffer; both are written every second with cheap
//! durability, in one transaction, and made durable every `metrics_flush` (DESIGN
//! section 4).

mod agent;
mod metrics;
mod ops;
mod reconcile;

pub use ops::{Action, Call, CallError, NodeUpdate, PowerAction, Registration, Reply};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use metalbus_protocol::api::{EventSource, EventType, NodeEvent};
use metalbus_protocol::controller::{NodeStateMessage, Summary};
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::machine::Event;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::report::Report;
use metalbus_protocol::status::{Birth, Status};
use metalbus_protocol::topic::{NodeTopic, Topics};
use metalbus_protocol::{NodeId, Timestamp};
use redb::Durability;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info};

use crate::clock::Clock;
use crate::config::ControllerConfig;
use crate::live::{LiveEvent, LiveFeed};
use crate::publish::{Outbound, PublishQueue};
use crate::store::{
    AuditEntry, CommandRecord, CommandStatus, Heartbeat, NodeRecord, Store, StoreError,
    StoredInventory,
};
use crate::telemetry::{StateLabel, Telemetry};

/// How long heartbeats may sit in memory before a cheap (non-durable) flush.
const HEARTBEAT_FLUSH: Duration = Duration::from_secs(1);
/// Inventories that arrive before their node's first birth wait here; bounded.
const MAX_EARLY_INVENTORIES: usize = 1_000;
/// Inputs of failed commits kept for retry; beyond this the oldest are dropped.
const MAX_RETRY_INPUTS: usize = 10_000;
/// Reports kept per node while waiting for a gap to fill.
const MAX_HELD_REPORTS: usize = 1024;
/// How often events past their `max_age` are swept out.
const EVENT_PRUNE: Duration = Duration::from_secs(3600);
/// Most inputs applied in one transaction.
const MAX_BATCH: usize = 512;

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
    /// The broker connection is (re)established: publish every retained message again.
    Resync,
    /// Ingest refused a message on this node's topics; recorded as a Warning event if
    /// the node is known.
    Rejected {
        id: NodeId,
        reason: &'static str,
        error: String,
    },
}

impl Input {
    /// A copy to apply again after a failed commit; `None` for what is not retried
    /// (metrics, replaced by the next sample; API calls, answered with an error instead).
    fn retry_copy(&self) -> Option<Input> {
        match self {
            Input::Status { id, status } => Some(Input::Status {
                id: id.clone(),
                status: status.clone(),
            }),
            Input::Inventory { id, inventory } => Some(Input::Inventory {
                id: id.clone(),
                inventory: inventory.clone(),
            }),
            Input::Report { id, report } => Some(Input::Report {
                id: id.clone(),
                report: report.clone(),
            }),
            Input::Metrics { .. } | Input::Call(_) | Input::Resync | Input::Rejected { .. } => None,
        }
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub topics: Topics,
    /// How often heartbeats are made durable.
    pub metrics_flush: Duration,
    /// Plans and lifecycle policy.
    pub controller: Arc<ControllerConfig>,
}

pub struct Engine {
    store: Store,
    publish: PublishQueue,
    telemetry: Arc<Telemetry>,
    clock: Arc<dyn Clock>,
    cfg: EngineConfig,
    nodes: HashMap<NodeId, NodeRecord>,
    names: HashMap<String, NodeId>,
    heartbeats: HashMap<NodeId, Heartbeat>,
    dirty_heartbeats: HashSet<NodeId>,
    /// Metrics history waiting for the next heartbeat flush.
    history: metrics::History,
    early_inventory: HashMap<NodeId, Inventory>,
    last_summary: Option<Summary>,
    /// Inputs whose commit failed, applied again before the next batch.
    retry: Vec<Input>,
    /// The copy may hold changes the store refused; reload before applying more.
    needs_reload: bool,
    /// Install resends waiting for their backoff: (due, node), earliest first.
    timers: BinaryHeap<Reverse<(Timestamp, NodeId)>>,
    /// Reports that came after a gap, per node, by seq.
    held: HashMap<NodeId, BTreeMap<u64, Report>>,
    /// Commands not yet acknowledged: id → (node, next resend, expiry).
    unacked: BTreeMap<String, (NodeId, Timestamp, Timestamp)>,
    /// When the reconciler looks at the nodes next.
    reconcile_at: Timestamp,
    /// When this engine started: no node is stale before a full window after it.
    started_at: Timestamp,
    /// Births of unknown agents waiting (briefly) for their inventory, so that they can
    /// be matched to registrations by MAC and IP.
    pending_births: HashMap<NodeId, (Birth, Timestamp)>,
    /// Committed changes, for `GET /api/v1/events/stream`.
    live: LiveFeed,
}

/// Where an API call's answer goes.
type ReplyTo = oneshot::Sender<Result<Reply, CallError>>;

/// What one batch changed, to be written and then announced.
#[derive(Default)]
struct Batch {
    /// Changed nodes and the name each had before (None if new).
    nodes: BTreeMap<NodeId, Option<String>>,
    /// Nodes that are gone (a registration a new agent claimed), with their names;
    /// deleted before the changed nodes are written.
    deleted: Vec<(NodeId, String)>,
    inventories: BTreeMap<NodeId, StoredInventory>,
    /// Early inventories this batch used; put back if the commit fails.
    used_early: Vec<(NodeId, Inventory)>,
    /// Audit entries with their per-node number.
    audits: Vec<(u64, AuditEntry)>,
    commands: Vec<CommandRecord>,
    /// Node events (DESIGN section 7.5), repeats within the batch already merged.
    events: Vec<(NodeId, NodeEvent)>,
    /// Stuck nodes found and recovery attempts made, by state; counted after the commit.
    stuck: Vec<NodeState>,
    recoveries: Vec<NodeState>,
    /// Seconds spent in each state left in this batch; observed after the commit.
    durations: Vec<(NodeState, f64)>,
    /// Commands sent and status changes, (kind, status); counted after the commit.
    command_results: Vec<(String, CommandStatus)>,
    /// Published after the commit.
    outbound: Vec<Outbound>,
    /// API answers, sent after the commit.
    replies: Vec<(ReplyTo, Result<ops::Done, CallError>)>,
    /// Anything but progress: commit with `Durability::Immediate`.
    durable: bool,
    /// Nodes that need an operator, and why; moved to `error` after the inputs.
    followups: Vec<(NodeId, String)>,
    /// Nodes whose receipt to publish after the commit.
    receipts: std::collections::BTreeSet<NodeId>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.deleted.is_empty()
            && self.inventories.is_empty()
            && self.audits.is_empty()
            && self.commands.is_empty()
            && self.events.is_empty()
    }

    /// Records an event for `id` at `now`; a repeat of one already in this batch bumps
    /// its count.
    fn event(
        &mut self,
        id: &NodeId,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
        source: EventSource,
        now: Timestamp,
    ) {
        let event = NodeEvent::new(kind, reason, message, source, now);
        debug!(node = %id, kind = kind.as_str(), reason, message = %event.message, "event");
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
}

impl Engine {
    pub fn new(
        store: Store,
        publish: PublishQueue,
        telemetry: Arc<Telemetry>,
        clock: Arc<dyn Clock>,
        cfg: EngineConfig,
    ) -> Result<Self, StoreError> {
        let mut engine = Self {
            store,
            publish,
            telemetry,
            clock,
            cfg,
            nodes: HashMap::new(),
            names: HashMap::new(),
            heartbeats: HashMap::new(),
            dirty_heartbeats: HashSet::new(),
            history: metrics::History::default(),
            early_inventory: HashMap::new(),
            last_summary: None,
            retry: Vec::new(),
            needs_reload: false,
            timers: BinaryHeap::new(),
            held: HashMap::new(),
            unacked: BTreeMap::new(),
            reconcile_at: Timestamp::from_unix_millis(0),
            started_at: Timestamp::from_unix_millis(0),
            pending_births: HashMap::new(),
            live: LiveFeed::default(),
        };
        engine.reload()?;
        for id in engine.nodes.keys() {
            if let Some(hb) = engine.store.heartbeat(id)? {
                engine.heartbeats.insert(id.clone(), hb);
            }
        }
        engine.restore_history()?;
        let now = engine.clock.now();
        engine.started_at = now;
        engine.rearm_resends(now);
        for rec in engine.store.unacked_commands()? {
            engine.unacked.insert(
                rec.command.command_id.clone(),
                (rec.node_id.clone(), now, rec.command.expires_at),
            );
        }
        Ok(engine)
    }

    /// Replaces the in-memory nodes with what the store holds. Heartbeats are the
    /// engine's own and stay.
    fn reload(&mut self) -> Result<(), StoreError> {
        let nodes = self.store.nodes()?;
        self.names = nodes
            .iter()
            .map(|n| (n.name.clone(), n.id.clone()))
            .collect();
        self.nodes = nodes.into_iter().map(|n| (n.id.clone(), n)).collect();
        self.update_gauges();
        Ok(())
    }

    /// Runs until every sender is gone (the bus drops its sender at shutdown), applies
    /// what is left, then makes everything durable.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let mut flush = tokio::time::interval(HEARTBEAT_FLUSH);
        let mut durable = tokio::time::interval(self.cfg.metrics_flush);
        let mut prune = tokio::time::interval(EVENT_PRUNE);
        loop {
            let next_timer = self.next_timer_in();
            tokio::select! {
                _ = tokio::time::sleep(next_timer) => {
                    self.apply(Vec::new());
                }
                input = rx.recv() => match input {
                    Some(first) => {
                        let mut batch = vec![first];
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(i) => batch.push(i),
                                Err(_) => break,
                            }
                        }
                        self.apply(batch);
                    }
                    None => break,
                },
                _ = flush.tick() => {
                    let now = self.clock.now();
                    if !self.retry.is_empty() || self.resends_due(now) || now >= self.reconcile_at {
                        self.apply(Vec::new());
                    }
                    self.flush_heartbeats(Durability::None);
                }
                _ = durable.tick() => self.flush_heartbeats(Durability::Immediate),
                _ = prune.tick() => {
                    self.prune_events();
                    self.prune_history();
                }
            }
        }
        if !self.retry.is_empty() {
            self.apply(Vec::new());
        }
        self.flush_heartbeats(Durability::Immediate);
        if !self.retry.is_empty() {
            error!(
                inputs = self.retry.len(),
                "stopping with changes the store refused; agents resend on reconnect"
            );
        }
        info!("engine stopped; store flushed");
    }

    /// Applies a batch: mutate the copy, commit once, then publish. If the commit fails
    /// the copy is reloaded, nothing is published, and the batch's inputs (but metrics,
    /// which the next sample replaces) are kept and applied again later.
    pub fn apply(&mut self, inputs: Vec<Input>) {
        let now = self.clock.now();
        let mut inputs = inputs;
        if !self.retry.is_empty() {
            let mut all = std::mem::take(&mut self.retry);
            all.append(&mut inputs);
            inputs = all;
        }
        if self.needs_reload {
            if let Err(e) = self.reload() {
                error!(error = %e, "store still unavailable; changes wait");
                self.keep_for_retry(inputs);
                return;
            }
            self.needs_reload = false;
        }
        let keep: Vec<Input> = inputs.iter().filter_map(Input::retry_copy).collect();
        let mut batch = Batch::default();
        let mut resync = false;
        self.fire_timers(now, &mut batch);
        self.resend_commands(now, &mut batch);
        self.reconcile(now, &mut batch);
        for input in inputs {
            match input {
                Input::Status { id, status } => self.on_status(&id, status, now, &mut batch),
                Input::Inventory { id, inventory } => {
                    self.on_inventory(&id, *inventory, now, &mut batch)
                }
                Input::Metrics { id, sample } => self.on_metrics(&id, sample, now),
                Input::Report { id, report } => {
                    self.on_sequenced_report(&id, *report, now, &mut batch)
                }
                Input::Call(call) => self.on_call(*call, now, &mut batch),
                Input::Resync => resync = true,
                Input::Rejected { id, reason, error } => {
                    if self.nodes.contains_key(&id) {
                        batch.event(
                            &id,
                            EventType::Warning,
                            "MessageRejected",
                            format!("{reason}: {error}"),
                            EventSource::Agent,
                            now,
                        );
                    }
                }
            }
        }
        for (id, reason) in std::mem::take(&mut batch.followups) {
            error!(node = %id, %reason, "node needs an operator");
            let ctx = ops::Ctx {
                error: Some(reason.clone()),
                ..ops::Ctx::default()
            };
            self.run_machine(&id, Event::Fault { reason }, ctx, now, &mut batch);
        }
        if !batch.is_empty() {
            if let Err(e) = self.commit(&batch, now) {
                error!(error = %e, inputs = keep.len(), "store commit failed; will retry the batch");
                // The copy holds the failed changes: replace it with what the store has.
                self.needs_reload = true;
                if self.reload().is_ok() {
                    self.needs_reload = false;
                }
                for (id, inv) in batch.used_early {
                    self.early_inventory.insert(id, inv);
                }
                // Resends that fired in this batch are lost with it: arm them again,
                // a second later so a failing store is not hammered.
                self.rearm_resends(Timestamp::from_unix_millis(now.unix_millis() + 1000));
                for (reply, result) in batch.replies {
                    let answer = match result {
                        Ok(_) => Err(CallError::Store(e.to_string())),
                        Err(refused) => Err(refused),
                    };
                    let _ = reply.send(answer);
                }
                self.keep_for_retry(keep);
                return;
            }
        }
        for state in &batch.stuck {
            self.telemetry
                .stuck_states
                .get_or_create(&state_label(*state))
                .inc();
        }
        for (state, seconds) in &batch.durations {
            self.telemetry
                .observe_state_duration(state.as_str(), *seconds);
        }
        for (kind, status) in &batch.command_results {
            self.telemetry.count_command(kind, status.as_str());
        }
        for state in &batch.recoveries {
            self.telemetry
                .recovery_attempts
                .get_or_create(&state_label(*state))
                .inc();
        }
        for (id, _) in &batch.deleted {
            self.live.send(LiveEvent::Removed {
                node_id: id.clone(),
            });
        }
        for (_, entry) in &batch.audits {
            info!(node = %entry.node_id, from = %entry.from_state, to = %entry.to_state, triggered_by = %entry.triggered_by, "transition");
            self.telemetry
                .count_transition(entry.from_state, entry.to_state, entry.triggered_by);
            self.live.send(LiveEvent::Transition(entry.clone()));
        }
        for id in batch.nodes.keys() {
            self.publish_state(id);
            if let Some(node) = self.nodes.get(id) {
                self.live.send(LiveEvent::State(Self::state_message(node)));
            }
        }
        for (id, event) in &batch.events {
            self.live.send(LiveEvent::Event {
                node_id: id.clone(),
                event: event.clone(),
            });
        }
        for msg in batch.outbound {
            self.publish.push(msg);
        }
        // Receipts only for what is now durably committed.
        for id in &batch.receipts {
            if let Some(n) = self.nodes.get(id) {
                if let Some(session) = &n.report_session {
                    let receipt = metalbus_protocol::controller::Receipt {
                        session: session.clone(),
                        seq: n.last_applied_seq,
                    };
                    let topic = self.cfg.topics.node(id, NodeTopic::Receipts);
                    self.publish.push(Outbound::event(
                        topic,
                        &receipt,
                        crate::publish::Delivery::AtLeastOnce,
                    ));
                }
            }
        }
        for (reply, result) in batch.replies {
            let _ = reply.send(result.and_then(|done| self.reply(done)));
        }
        if resync {
            let mut ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
            ids.sort();
            for id in &ids {
                self.publish_state(id);
            }
            self.last_summary = None;
        }
        self.publish_summary();
    }

    /// Keeps inputs (but metrics, which the next sample replaces) for the next round.
    fn keep_for_retry(&mut self, inputs: Vec<Input>) {
        self.retry
            .extend(inputs.iter().filter_map(Input::retry_copy));
        if self.retry.len() > MAX_RETRY_INPUTS {
            let excess = self.retry.len() - MAX_RETRY_INPUTS;
            error!(
                dropped = excess,
                "too many changes waiting for the store; dropping the oldest"
            );
            self.retry.drain(..excess);
        }
    }

    /// One transaction: nodes, inventories, audit entries, commands and events together.
    fn commit(&self, batch: &Batch, now: Timestamp) -> Result<(), StoreError> {
        let retention = self.cfg.controller.events;
        let cutoff = now.minus(retention.max_age);
        let max_events = usize::try_from(retention.max_per_node).unwrap_or(usize::MAX);
        let durability = if batch.durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        self.store.write(durability, |tx| {
            for (id, name) in &batch.deleted {
                tx.delete_node(id, name)?;
            }
            for (id, old_name) in &batch.nodes {
                if let Some(node) = self.nodes.get(id) {
                    tx.put_node(node, old_name.as_deref())?;
                }
            }
            for (id, inv) in &batch.inventories {
                tx.put_inventory(id, inv)?;
            }
            for (n, entry) in &batch.audits {
                tx.put_audit(*n, entry)?;
            }
            for rec in &batch.commands {
                tx.put_command(rec)?;
            }
            for (id, event) in &batch.events {
                tx.put_event(id, event, max_events, cutoff)?;
            }
            Ok(())
        })
    }

    /// Stores `after` in place of `before` if anything differs, bumping `version`.
    fn replace(
        &mut self,
        before: NodeRecord,
        mut after: NodeRecord,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        if after == before {
            return;
        }
        after.version = before.version + 1;
        after.updated_at = now;
        self.nodes.insert(after.id.clone(), after);
        batch.durable = true;
        batch
            .nodes
            .entry(before.id.clone())
            .or_insert(Some(before.name));
    }

    /// Drops events older than `[events] max_age`, also of nodes that no longer add any.
    fn prune_events(&self) {
        let cutoff = self.clock.now().minus(self.cfg.controller.events.max_age);
        match self
            .store
            .write(Durability::None, |tx| tx.prune_events(cutoff))
        {
            Ok(0) => {}
            Ok(removed) => info!(removed, "dropped events past their max_age"),
            Err(e) => error!(error = %e, "pruning old events failed; will try again"),
        }
    }

    /// Writes the heartbeats and the metrics history that changed, in one transaction.
    fn flush_heartbeats(&mut self, durability: Durability) {
        let now = self.clock.now();
        let dirty: Vec<NodeId> = self.dirty_heartbeats.drain().collect();
        let history = self.history.take(now);
        if dirty.is_empty() && history.is_empty() && matches!(durability, Durability::None) {
            return;
        }
        // An Immediate commit, even an empty one, also makes earlier cheap commits durable.
        let result = self.store.write(durability, |tx| {
            for id in &dirty {
                if let Some(hb) = self.heartbeats.get(id) {
                    tx.put_heartbeat(id, hb)?;
                }
            }
            history.write(tx, |id| self.nodes.contains_key(id), now)
        });
        if let Err(e) = result {
            error!(error = %e, count = dirty.len(), "heartbeat flush failed; will retry");
            self.dirty_heartbeats.extend(dirty);
            self.history.put_back(history);
        }
    }

    /// The feed of committed changes, for the API's event stream.
    pub fn live_feed(&self) -> LiveFeed {
        self.live.clone()
    }

    /// A node's state message, as on its retained `state` topic.
    pub fn state_message(node: &NodeRecord) -> NodeStateMessage {
        NodeStateMessage {
            id: node.id.clone(),
            name: node.name.clone(),
            state: node.state,
            phase: node.state.phase(),
            version: node.version,
            since: node.state_changed_at,
            online: node.online,
            install_attempts: node.install_attempts,
            last_error: node.last_install_error.clone(),
            progress: node.progress.clone(),
        }
    }

    fn publish_state(&self, id: &NodeId) {
        if let Some(node) = self.nodes.get(id) {
            let topic = self.cfg.topics.node(id, NodeTopic::State);
            self.publish
                .push(Outbound::retained(topic, &Self::state_message(node)));
        }
    }

    fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for n in self.nodes.values() {
            s.total += 1;
            if n.online {
                s.online += 1;
            } else {
                s.offline += 1;
            }
            *s.by_state.entry(n.state).or_default() += 1;
            *s.by_phase.entry(n.state.phase()).or_default() += 1;
        }
        s
    }

    fn publish_summary(&mut self) {
        let summary = self.summary();
        if self.last_summary.as_ref() == Some(&summary) {
            return;
        }
        self.publish
            .push(Outbound::retained(self.cfg.topics.summary(), &summary));
        self.last_summary = Some(summary);
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let summary = self.summary();
        for state in NodeState::ALL {
            let n = summary.by_state.get(&state).copied().unwrap_or(0);
            self.telemetry
                .nodes
                .get_or_create(&StateLabel {
                    state: state.as_str().into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.telemetry
            .nodes_online
            .set(i64::try_from(summary.online).unwrap_or(i64::MAX));
    }
}

fn state_label(state: NodeState) -> StateLabel {
    StateLabel {
        state: state.as_str().into(),
    }
}

#[cfg(test)]
mod tests;
