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
//! - `batch.rs`: what one batch changed, and the counters it moves; `persist.rs`: the
//!   writes; `announce.rs`: everything that happens after a commit.
//! - `agent.rs`: what agents say (status, inventory, metrics) and new agents' arrival;
//!   `reports.rs`: their acks and job events, in `seq` order.
//! - `lifecycle.rs`: the state machine driver (transitions, audit, effects, retries).
//! - `commands.rs`: the command lifecycle (ids, unacked, resend, expiry, status rules).
//! - `enroll.rs`: enrollment requests, node credentials and the keyring.
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
mod announce;
mod batch;
mod calls;
mod campaigns;
mod commands;
mod enroll;
mod fleet;
mod input;
mod lifecycle;
mod metrics;
mod operations;
mod persist;
mod reconcile;
mod reports;

pub use calls::{Action, Call, CallError, NodeUpdate, Registration, Reply};
pub use campaigns::{CampaignCall, CampaignOp};
pub use input::{Input, KeyChange};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use metalbus_link::watchdog::Progress;
use metalbus_link::Clock;
use metalbus_protocol::command::{CommandId, CommandStatus};
use metalbus_protocol::controller::Summary;
use metalbus_protocol::event::EventReason;
use metalbus_protocol::machine::Event;
use metalbus_protocol::proof::Identity;
use metalbus_protocol::topic::Topics;
use metalbus_protocol::{NodeId, Timestamp};
use redb::Durability;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use agent::Arrivals;
use batch::{Batch, ReplyTo};
use calls::Done;
use campaigns::Campaigns;
use commands::{Commands, Ids};
use enroll::Credentials;
use fleet::{Fleet, Heartbeats};
use lifecycle::Ctx;
use reconcile::Reconciler;
use reports::Sequenced;

use crate::config::ControllerConfig;
use crate::live::LiveFeed;
use crate::publish::PublishQueue;
use crate::security::Keyring;
use crate::store::{NodeRecord, Store, StoreError};
use crate::telemetry::Telemetry;
use crate::wake::WakeRequest;

/// How long heartbeats may sit in memory before a cheap (non-durable) flush.
const HEARTBEAT_FLUSH: Duration = Duration::from_secs(1);
/// Inputs of failed commits kept for retry; beyond this the oldest are dropped.
const MAX_RETRY_INPUTS: usize = 10_000;
/// How often events past their `max_age` are swept out.
const EVENT_PRUNE: Duration = Duration::from_secs(3600);
/// Most inputs applied in one transaction.
const MAX_BATCH: usize = 512;
/// How long the engine pauses after a batch before it looks for the next one, so that
/// what a busy fleet sends meanwhile makes one batch instead of a thread wake-up (and a
/// batch) per message (DECISIONS §73). An input that comes while the engine is idle is
/// applied at once.
const GATHER: Duration = Duration::from_millis(1);

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub topics: Topics,
    /// How often heartbeats are made durable.
    pub metrics_flush: Duration,
    /// Plans and lifecycle policy.
    pub controller: Arc<ControllerConfig>,
    /// Signs enrollment answers; its anchor is in every enrollment token.
    pub identity: Arc<Identity>,
    /// Node keys, for ingest and the bus; kept in step with the stored credentials.
    pub keyring: Keyring,
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
    held: reports::Held,
    /// Wake calls answered once their packets went out.
    waiting_wakes: HashMap<CommandId, (ReplyTo, Done)>,
    retry: Retry,
    reconciler: Reconciler,
    last_summary: Option<Summary>,
    credentials: Credentials,
    /// Each turn of the loop beats it; the systemd watchdog is fed only while it does.
    progress: Progress,
    /// Nodes whose agent connected and has sent no report since: its next one is the
    /// oldest it still holds (it resends from there on every connect).
    reconnected: HashSet<NodeId>,
    /// Campaigns that can still change (`campaigns.rs`).
    campaigns: Campaigns,
    /// Every campaign's state, for the `metalbus_campaigns` gauge.
    campaign_states: HashMap<String, metalbus_protocol::campaign::CampaignState>,
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
        let credentials = Credentials::new(cfg.identity.clone(), cfg.keyring.clone());
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
            held: reports::Held::default(),
            waiting_wakes: HashMap::new(),
            retry: Retry::default(),
            reconciler: Reconciler {
                next_at: Timestamp::from_unix_millis(0),
                started_at: Timestamp::from_unix_millis(0),
                mass_silence: false,
            },
            last_summary: None,
            credentials,
            progress: Progress::new(),
            reconnected: HashSet::new(),
            campaigns: Campaigns::default(),
            campaign_states: HashMap::new(),
        };
        engine.reload()?;
        for id in engine.fleet.nodes.keys() {
            if let Some(hb) = engine.store.heartbeat(id)? {
                engine.heartbeats.latest.insert(id.clone(), hb);
            }
        }
        engine.restore_history()?;
        // After loading: every node gets a full window before it can be stale.
        let now = engine.clock.now();
        engine.reconciler.started_at = now;
        engine.rearm_install_retries(now);
        let (queued, sent): (Vec<_>, Vec<_>) = engine
            .store
            .commands_in(&[CommandStatus::Queued, CommandStatus::Sent])?
            .into_iter()
            .partition(|rec| rec.status == CommandStatus::Queued);
        engine.commands.restore(sent, now);
        // A wake recorded before a restart whose outcome never came back: its packets
        // may or may not have gone out, and nobody waits for it any more.
        for rec in queued {
            engine.retry.inputs.push(Input::WakeSent {
                operation_id: rec.command.command_id,
                error: Some(
                    "the controller restarted before the wake's outcome was recorded".into(),
                ),
            });
        }
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
        self.credentials.reload(&self.store)?;
        let campaigns = self.store.campaigns()?;
        self.campaign_states = campaigns
            .iter()
            .map(|c| (c.view.id.clone(), c.view.state))
            .collect();
        self.campaigns = Campaigns::load(&self.store, campaigns)?;
        self.update_campaign_gauges();
        self.update_gauges(&self.summary());
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

    /// What the loop's turns beat: give it to `metalbus_link::watchdog::feed`.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Runs until every sender is gone (intake's feeders let go at shutdown), applies
    /// what is left, then makes everything durable.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let mut flush = tokio::time::interval(HEARTBEAT_FLUSH);
        let mut durable = tokio::time::interval(self.cfg.metrics_flush);
        let mut prune = tokio::time::interval(EVENT_PRUNE);
        loop {
            // Every turn, idle ones too: `flush` ticks every second.
            self.progress.beat();
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
                        let full = batch.len() == MAX_BATCH;
                        self.apply(batch);
                        if !full {
                            tokio::time::sleep(GATHER).await;
                        }
                    }
                    None => break,
                },
                _ = flush.tick() => {
                    let now = self.clock.now();
                    let due = !self.retry.inputs.is_empty()
                        || self.commands.any_due(now)
                        || now >= self.reconciler.next_at
                        || self.campaigns.waiting();
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
                self.keep_for_retry(inputs, &e);
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
            if let Some(id) = input.proven_from() {
                self.credentials.heard(id, &mut batch);
            }
            match input {
                Input::Status { id, status } => self.on_status(&id, status, now, &mut batch),
                Input::Inventory { id, inventory } => {
                    self.on_inventory(&id, *inventory, now, &mut batch)
                }
                Input::Metrics { id, sample } => self.on_metrics(&id, sample, now),
                Input::Report { id, report } => {
                    self.on_sequenced_report(&id, Sequenced::Report(report), now, &mut batch)
                }
                Input::RefusedReport { id, place, error } => {
                    let refused = Sequenced::Refused { place, error };
                    self.on_sequenced_report(&id, refused, now, &mut batch)
                }
                Input::Call(call) => self.on_call(*call, now, &mut batch),
                Input::Campaign(call) => self.on_campaign(*call, now, &mut batch),
                Input::Keys { change, reply } => self.on_keys(change, reply, now, &mut batch),
                Input::WakeSent {
                    operation_id,
                    error,
                } => self.on_wake_sent(&operation_id, error, now, &mut batch),
                Input::Resync => resync = true,
                Input::Enroll { id, payload } => self.on_enroll(&id, &payload, now, &mut batch),
                Input::Rejected { id, error } => {
                    if self.fleet.nodes.contains_key(&id) {
                        batch
                            .agent(&id, now)
                            .warning(EventReason::MessageRejected, error);
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
        // After every input: what the batch's transitions finished, and what may start.
        self.step_campaigns(now, &mut batch);
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
        for (id, early) in batch.used_early {
            self.arrivals.early.insert(id, early);
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
        for (reply, _) in batch.campaign_replies {
            let _ = reply.send(Err(failed()));
        }
        if matches!(e, StoreError::Encode { .. }) {
            // The same inputs would fail the same way forever.
            error!(
                inputs = keep.len(),
                "a record of this batch cannot be encoded; its inputs are dropped"
            );
            self.answer_wakes(&keep, e);
            return;
        }
        self.keep_for_retry(keep, e);
    }

    /// Keeps inputs for the next round: what can be applied again (not metrics, which
    /// the next sample replaces); calls and new tokens are answered with `e` instead.
    fn keep_for_retry(&mut self, inputs: Vec<Input>, e: &StoreError) {
        for input in inputs {
            if input.retried() {
                self.retry.inputs.push(input);
            } else {
                answer_failed(input, e);
            }
        }
        if self.retry.inputs.len() > MAX_RETRY_INPUTS {
            let excess = self.retry.inputs.len() - MAX_RETRY_INPUTS;
            error!(
                dropped = excess,
                "too many changes waiting for the store; dropping the oldest"
            );
            let dropped: Vec<Input> = self.retry.inputs.drain(..excess).collect();
            self.answer_wakes(&dropped, e);
        }
    }

    /// The calls waiting for wakes among `dropped` get `e`: their outcome will never be
    /// recorded.
    fn answer_wakes(&mut self, dropped: &[Input], e: &StoreError) {
        for input in dropped {
            if let Input::WakeSent { operation_id, .. } = input {
                if let Some((reply, _)) = self.waiting_wakes.remove(operation_id) {
                    let _ = reply.send(Err(CallError::Store(e.to_string())));
                }
            }
        }
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
}

/// Answers a call or a token request that will not be applied with the store's error.
fn answer_failed(input: Input, e: &StoreError) {
    let failed = || CallError::Store(e.to_string());
    match input {
        Input::Call(call) => {
            let _ = call.reply.send(Err(failed()));
        }
        Input::Keys { reply, .. } => {
            let _ = reply.send(Err(failed()));
        }
        _ => {}
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
mod proptests;
#[cfg(test)]
mod tests;
