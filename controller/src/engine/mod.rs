//! The engine: the one task that changes stored data (STYLE rule 4).
//!
//! Ingest, the HTTP API and the wake task send it [`Input`]s over a channel. It applies a
//! batch of them to its in-memory copy of the nodes, commits the batch in one redb
//! transaction (group commit: transitions, their audit entries, events and commands
//! together, with `Durability::Immediate`), and only then publishes the resulting MQTT
//! messages, answers the API, hands on its effects (wake requests) and counts what the
//! batch did. If a commit fails the copy is reloaded from the store and nothing is
//! published or counted, so the world never sees a change the store does not hold.
//!
//! It runs on a thread of its own ([`Engine::spawn`]): a commit's fsync blocks that
//! thread, never a worker of the async runtime.
//!
//! - `batch.rs`: what one batch changed, and the counters it moves.
//! - `agent.rs`: what agents say (status, inventory, metrics, reports).
//! - `lifecycle.rs`: the state machine driver (transitions, audit, effects, retries).
//! - `commands.rs`: the command lifecycle (ids, unacked, resend, expiry, status rules).
//! - `calls.rs`: the operator's calls, decided from a node and an action.
//! - `operations.rs`: reboot, poweroff, wake, and the power reports.
//! - `reconcile.rs`: state timeouts and recovery, discovery timeouts, heartbeat staleness.
//! - `fleet.rs`: the copy of the nodes and the heartbeats.
//! - `metrics.rs`: metrics history (samples and one-minute rollups), buffered in memory.
//!
//! Metrics samples never cause a transaction of their own: they refresh the heartbeat and
//! go into the metrics history buffer; both are written every second with cheap
//! durability, in one transaction, and made durable every `metrics_flush` (DESIGN
//! section 4).

mod agent;
mod batch;
mod calls;
mod commands;
mod fleet;
mod lifecycle;
mod metrics;
mod operations;
mod reconcile;

pub use calls::{Action, Call, CallError, NodeUpdate, Registration, Reply};

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use metalbus_link::Clock;
use metalbus_protocol::command::CommandId;
use metalbus_protocol::controller::{NodeStateMessage, Receipt, Summary};
use metalbus_protocol::event::EventReason;
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::machine::Event;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::report::Report;
use metalbus_protocol::status::Status;
use metalbus_protocol::topic::{NodeTopic, Topics};
use metalbus_protocol::{NodeId, Timestamp};
use redb::Durability;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use agent::Arrivals;
use batch::{Batch, ReplyTo, TokenReplyTo};
use calls::Done;
use commands::{Commands, Ids};
use fleet::{Fleet, Heartbeats};
use lifecycle::Ctx;
use reconcile::Reconciler;

use crate::config::ControllerConfig;
use crate::ingest::RejectReason;
use crate::live::{LiveEvent, LiveFeed};
use crate::publish::{Delivery, Outbound, PublishQueue};
use crate::store::{NodeRecord, Store, StoreError, TokenRecord};
use crate::telemetry::{StateLabel, Telemetry};
use crate::wake::WakeRequest;

/// How long heartbeats may sit in memory before a cheap (non-durable) flush.
const HEARTBEAT_FLUSH: Duration = Duration::from_secs(1);
/// Inputs of failed commits kept for retry; beyond this the oldest are dropped.
const MAX_RETRY_INPUTS: usize = 10_000;
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
    /// A new API token to store (only its hash), answered after the commit.
    Token {
        hash: String,
        record: TokenRecord,
        reply: TokenReplyTo,
    },
    /// The wake task sent a wake's packets (`error: None`), or could not.
    WakeSent {
        operation_id: CommandId,
        error: Option<String>,
    },
    /// The broker connection is (re)established: publish every retained message again.
    Resync,
    /// Ingest refused a message on this node's topics; recorded as a Warning event if
    /// the node is known.
    Rejected {
        id: NodeId,
        reason: RejectReason,
        error: String,
    },
}

impl Input {
    /// A copy to apply again after a failed commit; `None` for what is not retried
    /// (metrics, replaced by the next sample; API calls and tokens, answered with an
    /// error instead).
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
            Input::WakeSent {
                operation_id,
                error,
            } => Some(Input::WakeSent {
                operation_id: operation_id.clone(),
                error: error.clone(),
            }),
            Input::Metrics { .. }
            | Input::Call(_)
            | Input::Token { .. }
            | Input::Resync
            | Input::Rejected { .. } => None,
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

/// Where the engine's output goes once a batch is committed.
#[derive(Clone)]
pub struct Outlets {
    /// MQTT messages, for the bus.
    pub publish: PublishQueue,
    /// Wake-on-LAN requests, for the wake task (which answers with `Input::WakeSent`).
    pub wake: mpsc::UnboundedSender<WakeRequest>,
    /// Committed changes, for the API's event stream.
    pub live: LiveFeed,
}

/// Inputs waiting for the store to take them again.
#[derive(Default)]
struct Retry {
    inputs: Vec<Input>,
    /// The copy may hold changes the store refused; reload before applying more.
    reload: bool,
}

pub struct Engine {
    /// The one write handle of the store.
    store: Store,
    out: Outlets,
    telemetry: Arc<Telemetry>,
    clock: Arc<dyn Clock>,
    cfg: EngineConfig,
    ids: Ids,
    fleet: Fleet,
    heartbeats: Heartbeats,
    arrivals: Arrivals,
    commands: Commands,
    /// Install resends waiting for their backoff: (due, node), earliest first.
    install_retries: BinaryHeap<Reverse<(Timestamp, NodeId)>>,
    /// Reports that came after a gap, per node, by seq.
    held: HashMap<NodeId, BTreeMap<u64, Report>>,
    /// Wake calls answered once their packets went out.
    waiting_wakes: HashMap<CommandId, (ReplyTo, Done)>,
    retry: Retry,
    reconciler: Reconciler,
    last_summary: Option<Summary>,
}

impl Engine {
    pub fn new(
        store: Store,
        out: Outlets,
        telemetry: Arc<Telemetry>,
        clock: Arc<dyn Clock>,
        cfg: EngineConfig,
    ) -> Result<Self, StoreError> {
        let lifecycle = &cfg.controller.lifecycle;
        let commands = Commands::new(lifecycle.resend_after, lifecycle.command_ttl);
        let now = clock.now();
        let mut engine = Self {
            store,
            out,
            telemetry,
            clock,
            cfg,
            ids: Ids::new(),
            fleet: Fleet::default(),
            heartbeats: Heartbeats::default(),
            arrivals: Arrivals::default(),
            commands,
            install_retries: BinaryHeap::new(),
            held: HashMap::new(),
            waiting_wakes: HashMap::new(),
            retry: Retry::default(),
            reconciler: Reconciler {
                next_at: Timestamp::from_unix_millis(0),
                started_at: now,
            },
            last_summary: None,
        };
        engine.reload()?;
        for id in engine.fleet.nodes.keys() {
            if let Some(hb) = engine.store.heartbeat(id)? {
                engine.heartbeats.latest.insert(id.clone(), hb);
            }
        }
        engine.restore_history()?;
        engine.rearm_install_retries(now);
        let sent = engine.store.unacked_commands()?;
        engine.commands.restore(sent, now);
        Ok(engine)
    }

    /// The store back, as a stopped controller leaves it (tests restart engines on it).
    #[cfg(test)]
    fn into_store(self) -> Store {
        self.store
    }

    /// Replaces the in-memory nodes with what the store holds. Heartbeats are the
    /// engine's own and stay.
    fn reload(&mut self) -> Result<(), StoreError> {
        self.fleet = Fleet::of(self.store.nodes()?);
        self.update_gauges();
        Ok(())
    }

    /// Runs the engine on a thread of its own, with a single-threaded runtime for its
    /// timers, until every sender of `rx` is gone. The handle resolves when it stopped.
    pub fn spawn(self, rx: mpsc::Receiver<Input>) -> std::io::Result<EngineHandle> {
        let (done_tx, done) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name("metalbus-engine".into())
            .spawn(move || {
                runtime.block_on(self.run(rx));
                let _ = done_tx.send(());
            })?;
        Ok(EngineHandle { done })
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
                    let due = !self.retry.inputs.is_empty()
                        || self.commands.any_due(now)
                        || now >= self.reconciler.next_at;
                    if due {
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
        if !self.retry.inputs.is_empty() {
            self.apply(Vec::new());
        }
        self.flush_heartbeats(Durability::Immediate);
        if !self.retry.inputs.is_empty() {
            error!(
                inputs = self.retry.inputs.len(),
                "stopping with changes the store refused; agents resend on reconnect"
            );
        }
        info!("engine stopped; store flushed");
    }

    /// Applies a batch: mutate the copy, commit once, then announce. If the commit fails
    /// the copy is reloaded, nothing is published or counted, and the batch's inputs
    /// (but metrics, which the next sample replaces) are kept and applied again later.
    pub fn apply(&mut self, inputs: Vec<Input>) {
        let now = self.clock.now();
        let mut inputs = inputs;
        if !self.retry.inputs.is_empty() {
            let mut all = std::mem::take(&mut self.retry.inputs);
            all.append(&mut inputs);
            inputs = all;
        }
        if self.retry.reload {
            if let Err(e) = self.reload() {
                error!(error = %e, "store still unavailable; changes wait");
                self.keep_for_retry(inputs);
                return;
            }
            self.retry.reload = false;
        }
        let keep: Vec<Input> = inputs.iter().filter_map(Input::retry_copy).collect();
        let mut batch = Batch::default();
        let mut resync = false;
        self.fire_install_retries(now, &mut batch);
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
                Input::Token {
                    hash,
                    record,
                    reply,
                } => {
                    batch.tokens.push((hash, record));
                    batch.token_replies.push(reply);
                    batch.durable = true;
                }
                Input::WakeSent {
                    operation_id,
                    error,
                } => self.on_wake_sent(&operation_id, error, now, &mut batch),
                Input::Resync => resync = true,
                Input::Rejected { id, reason, error } => {
                    if self.fleet.nodes.contains_key(&id) {
                        batch.agent(&id, now).warning(
                            EventReason::MessageRejected,
                            format!("{}: {error}", reason.as_str()),
                        );
                    }
                }
            }
        }
        for (id, reason) in std::mem::take(&mut batch.followups) {
            error!(node = %id, %reason, "node needs an operator");
            let ctx = Ctx {
                error: Some(reason.clone()),
                ..Ctx::default()
            };
            self.run_machine(&id, Event::Fault { reason }, ctx, now, &mut batch);
        }
        if !batch.is_empty() {
            if let Err(e) = self.commit(&batch, now) {
                self.refused(batch, keep, &e, now);
                return;
            }
        }
        self.announce(batch, resync);
    }

    /// A failed commit: the copy is reloaded, the calls are answered with the error,
    /// and the inputs wait for the next round.
    fn refused(&mut self, batch: Batch, keep: Vec<Input>, e: &StoreError, now: Timestamp) {
        error!(error = %e, inputs = keep.len(), "store commit failed; will retry the batch");
        // The copy holds the failed changes: replace it with what the store has.
        self.retry.reload = true;
        if self.reload().is_ok() {
            self.retry.reload = false;
        }
        for (id, inv) in batch.used_early {
            self.arrivals.early.insert(id, inv);
        }
        // Resends that fired in this batch are lost with it: arm them again, a second
        // later so a failing store is not hammered.
        self.rearm_install_retries(now.plus(Duration::from_secs(1)));
        let failed = || CallError::Store(e.to_string());
        for (reply, result) in batch.replies {
            let _ = reply.send(Err(result.err().unwrap_or_else(failed)));
        }
        for (_, reply, _) in batch.parked {
            let _ = reply.send(Err(failed()));
        }
        for reply in batch.token_replies {
            let _ = reply.send(Err(failed()));
        }
        self.keep_for_retry(keep);
    }

    /// After a commit (or when there was nothing to write): count, publish, answer, and
    /// hand on the effects.
    fn announce(&mut self, batch: Batch, resync: bool) {
        batch.counts.record(&self.telemetry);
        for (id, _) in &batch.deleted {
            self.out.live.send(LiveEvent::Removed {
                node_id: id.clone(),
            });
        }
        for (_, entry) in &batch.audits {
            info!(node = %entry.node_id, from = %entry.from_state, to = %entry.to_state, triggered_by = %entry.triggered_by, "transition");
            self.telemetry
                .count_transition(entry.from_state, entry.to_state, entry.triggered_by);
            self.out.live.send(LiveEvent::Transition(entry.clone()));
        }
        for id in batch.nodes.keys() {
            self.publish_state(id);
            if let Some(node) = self.fleet.nodes.get(id) {
                self.out
                    .live
                    .send(LiveEvent::State(Self::state_message(node)));
            }
        }
        for (id, event) in &batch.events {
            self.out.live.send(LiveEvent::Event {
                node_id: id.clone(),
                event: event.clone(),
            });
        }
        for msg in batch.outbound {
            self.out.publish.push(msg);
        }
        // Receipts only for what is now durably committed.
        for id in &batch.receipts {
            self.publish_receipt(id);
        }
        for (reply, result) in batch.replies {
            let _ = reply.send(result.and_then(|done| self.reply(done)));
        }
        for reply in batch.token_replies {
            let _ = reply.send(Ok(()));
        }
        for (op, reply, done) in batch.parked {
            self.waiting_wakes.insert(op, (reply, done));
        }
        for wake in batch.wakes {
            let _ = self.out.wake.send(wake);
        }
        if resync {
            let mut ids: Vec<NodeId> = self.fleet.nodes.keys().cloned().collect();
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
        let retry = &mut self.retry.inputs;
        retry.extend(inputs.iter().filter_map(Input::retry_copy));
        if retry.len() > MAX_RETRY_INPUTS {
            let excess = retry.len() - MAX_RETRY_INPUTS;
            error!(
                dropped = excess,
                "too many changes waiting for the store; dropping the oldest"
            );
            retry.drain(..excess);
        }
    }

    /// One transaction: nodes, inventories, audit entries, commands, events and tokens.
    fn commit(&mut self, batch: &Batch, now: Timestamp) -> Result<(), StoreError> {
        let retention = self.cfg.controller.events;
        let cutoff = now.minus(retention.max_age);
        let max_events = usize::try_from(retention.max_per_node).unwrap_or(usize::MAX);
        let durability = if batch.durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        let nodes = &self.fleet.nodes;
        self.store.write(durability, |tx| {
            for (id, name) in &batch.deleted {
                tx.delete_node(id, name)?;
            }
            for (id, old_name) in &batch.nodes {
                if let Some(node) = nodes.get(id) {
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
            for (hash, token) in &batch.tokens {
                tx.put_token(hash, token)?;
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
        self.fleet.nodes.insert(after.id.clone(), after);
        batch.durable = true;
        batch
            .nodes
            .entry(before.id.clone())
            .or_insert(Some(before.name));
    }

    /// Drops events older than `[events] max_age`, also of nodes that no longer add any.
    fn prune_events(&mut self) {
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
        let dirty: Vec<NodeId> = self.heartbeats.dirty.drain().collect();
        let history = self.heartbeats.history.take(now);
        if dirty.is_empty() && history.is_empty() && matches!(durability, Durability::None) {
            return;
        }
        let (latest, nodes) = (&self.heartbeats.latest, &self.fleet.nodes);
        // An Immediate commit, even an empty one, also makes earlier cheap commits durable.
        let result = self.store.write(durability, |tx| {
            for id in &dirty {
                if let Some(hb) = latest.get(id) {
                    tx.put_heartbeat(id, hb)?;
                }
            }
            history.write(tx, |id| nodes.contains_key(id), now)
        });
        if let Err(e) = result {
            error!(error = %e, count = dirty.len(), "heartbeat flush failed; will retry");
            self.heartbeats.dirty.extend(dirty);
            self.heartbeats.history.put_back(history);
        }
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
        if let Some(node) = self.fleet.nodes.get(id) {
            let topic = self.cfg.topics.node(id, NodeTopic::State);
            self.out
                .publish
                .push_all(Outbound::retained(topic, &Self::state_message(node)));
        }
    }

    /// The receipt of everything applied for node `id`.
    fn publish_receipt(&self, id: &NodeId) {
        let Some(n) = self.fleet.nodes.get(id) else {
            return;
        };
        let Some(session) = &n.report_session else {
            return;
        };
        let receipt = Receipt {
            session: session.clone(),
            seq: n.last_applied_seq,
        };
        let topic = self.cfg.topics.node(id, NodeTopic::Receipts);
        self.out
            .publish
            .push_all(Outbound::event(topic, &receipt, Delivery::AtLeastOnce));
    }

    fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for n in self.fleet.nodes.values() {
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
        self.out
            .publish
            .push_all(Outbound::retained(self.cfg.topics.summary(), &summary));
        self.last_summary = Some(summary);
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let summary = self.summary();
        for state in NodeState::ALL {
            let n = summary.by_state.get(&state).copied().unwrap_or(0);
            self.telemetry
                .nodes
                .get_or_create(&StateLabel::from(state))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.telemetry
            .nodes_online
            .set(i64::try_from(summary.online).unwrap_or(i64::MAX));
    }
}

/// Resolves once the engine's thread has stopped (its store flushed).
pub struct EngineHandle {
    done: oneshot::Receiver<()>,
}

impl EngineHandle {
    pub async fn stopped(self) {
        let _ = self.done.await;
    }
}

#[cfg(test)]
mod tests;
