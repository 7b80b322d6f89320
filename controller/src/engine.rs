//! The engine: the one task that changes node data (STYLE rule 4).
//!
//! Ingest and (later) the HTTP API send it [`Input`]s over a channel. It applies a batch of
//! them to its in-memory copy of the nodes, commits the batch in one redb transaction
//! (group commit), and only then pushes the resulting MQTT messages. If a commit fails the
//! copy is reloaded from the store and nothing is published, so the world never sees a
//! change the store does not hold.
//!
//! Metrics samples only refresh the heartbeat; those are flushed every second with cheap
//! durability and made durable every `metrics_flush` (DESIGN section 4).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use metalbus_protocol::controller::{NodeStateMessage, Summary};
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::status::{Birth, Offline, Status};
use metalbus_protocol::topic::{NodeTopic, Topics};
use metalbus_protocol::{is_valid_node_name, NodeId, Timestamp};
use redb::Durability;
use tokio::sync::mpsc;
use tracing::{debug, error, info};

use crate::clock::Clock;
use crate::publish::{Outbound, PublishQueue};
use crate::store::{Heartbeat, NodeRecord, Store, StoreError, StoredInventory};
use crate::telemetry::{StateLabel, Telemetry};

/// How long heartbeats may sit in memory before a cheap (non-durable) flush.
const HEARTBEAT_FLUSH: Duration = Duration::from_secs(1);
/// Inventories that arrive before their node's first birth wait here; bounded.
const MAX_EARLY_INVENTORIES: usize = 1_000;
/// Inputs of failed commits kept for retry; beyond this the oldest are dropped.
const MAX_RETRY_INPUTS: usize = 10_000;
/// Most inputs applied in one transaction.
const MAX_BATCH: usize = 512;

/// Something for the engine to apply.
#[derive(Debug, Clone)]
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
    /// The broker connection is (re)established: publish every retained message again.
    Resync,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub topics: Topics,
    /// How often heartbeats are made durable.
    pub metrics_flush: Duration,
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
    early_inventory: HashMap<NodeId, Inventory>,
    last_summary: Option<Summary>,
    /// Inputs whose commit failed, applied again before the next batch.
    retry: Vec<Input>,
    /// The copy may hold changes the store refused; reload before applying more.
    needs_reload: bool,
}

/// What one batch changed, to be written and then announced.
#[derive(Default)]
struct Batch {
    /// Changed nodes and the name each had before (None if new).
    nodes: BTreeMap<NodeId, Option<String>>,
    inventories: BTreeMap<NodeId, StoredInventory>,
    /// Early inventories this batch used; put back if the commit fails.
    used_early: Vec<(NodeId, Inventory)>,
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
            early_inventory: HashMap::new(),
            last_summary: None,
            retry: Vec::new(),
            needs_reload: false,
        };
        engine.reload()?;
        for id in engine.nodes.keys() {
            if let Some(hb) = engine.store.heartbeat(id)? {
                engine.heartbeats.insert(id.clone(), hb);
            }
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
        loop {
            tokio::select! {
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
                    if !self.retry.is_empty() {
                        self.apply(Vec::new());
                    }
                    self.flush_heartbeats(Durability::None);
                }
                _ = durable.tick() => self.flush_heartbeats(Durability::Immediate),
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
        let keep: Vec<Input> = inputs
            .iter()
            .filter(|i| !matches!(i, Input::Metrics { .. }))
            .cloned()
            .collect();
        let mut batch = Batch::default();
        let mut resync = false;
        for input in inputs {
            match input {
                Input::Status { id, status } => self.on_status(&id, status, now, &mut batch),
                Input::Inventory { id, inventory } => {
                    self.on_inventory(&id, *inventory, now, &mut batch)
                }
                Input::Metrics { id, sample } => self.on_metrics(&id, sample, now),
                Input::Resync => resync = true,
            }
        }
        if !batch.nodes.is_empty() || !batch.inventories.is_empty() {
            if let Err(e) = self.commit(&batch) {
                error!(error = %e, inputs = keep.len(), "store commit failed; will retry the batch");
                // The copy holds the failed changes: replace it with what the store has.
                self.needs_reload = true;
                if self.reload().is_ok() {
                    self.needs_reload = false;
                }
                for (id, inv) in batch.used_early {
                    self.early_inventory.insert(id, inv);
                }
                self.keep_for_retry(keep);
                return;
            }
        }
        for id in batch.nodes.keys() {
            self.publish_state(id);
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
        self.retry.extend(
            inputs
                .into_iter()
                .filter(|i| !matches!(i, Input::Metrics { .. })),
        );
        if self.retry.len() > MAX_RETRY_INPUTS {
            let excess = self.retry.len() - MAX_RETRY_INPUTS;
            error!(
                dropped = excess,
                "too many changes waiting for the store; dropping the oldest"
            );
            self.retry.drain(..excess);
        }
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.store.write(Durability::Immediate, |tx| {
            for (id, old_name) in &batch.nodes {
                if let Some(node) = self.nodes.get(id) {
                    tx.put_node(node, old_name.as_deref())?;
                }
            }
            for (id, inv) in &batch.inventories {
                tx.put_inventory(id, inv)?;
            }
            Ok(())
        })
    }

    fn on_status(&mut self, id: &NodeId, status: Status, now: Timestamp, batch: &mut Batch) {
        match status {
            Status::Birth(birth) => self.on_birth(id, birth, now, batch),
            Status::Offline(off) => self.on_offline(id, off, now, batch),
        }
    }

    fn on_birth(&mut self, id: &NodeId, b: Birth, now: Timestamp, batch: &mut Batch) {
        let Some(before) = self.nodes.get(id).cloned() else {
            let name = self.unique_name(&b.hostname, id);
            let node = NodeRecord {
                id: id.clone(),
                name: name.clone(),
                state: NodeState::Discovered,
                version: 1,
                created_at: now,
                updated_at: now,
                state_changed_at: now,
                online: true,
                offline_reason: None,
                conn: b.conn,
                session: Some(b.session),
                hostname: Some(b.hostname),
                agent_version: Some(b.agent_version),
                boot_id: b.boot_id,
                metrics_interval_s: Some(b.metrics_interval_s),
                install_attempts: 0,
                last_install_error: None,
                recovery_attempts: 0,
                plan: None,
                progress: None,
                labels: BTreeMap::new(),
                group: None,
                control_plane: false,
            };
            info!(node = %id, %name, "new node discovered");
            self.names.insert(name, id.clone());
            self.nodes.insert(id.clone(), node);
            batch.nodes.insert(id.clone(), None);
            self.touch(id, now);
            if let Some(inv) = self.early_inventory.remove(id) {
                batch.used_early.push((id.clone(), inv.clone()));
                self.on_inventory(id, inv, now, batch);
            }
            return;
        };
        let same_session = before.session.as_deref() == Some(b.session.as_str());
        if same_session && b.conn < before.conn {
            self.stale(id, "birth", b.conn, before.conn);
            return;
        }
        let mut after = before.clone();
        after.online = true;
        after.offline_reason = None;
        after.conn = b.conn;
        after.session = Some(b.session);
        after.hostname = Some(b.hostname);
        after.agent_version = Some(b.agent_version);
        after.boot_id = b.boot_id;
        after.metrics_interval_s = Some(b.metrics_interval_s);
        if !before.online {
            info!(node = %id, conn = after.conn, "node online");
        }
        self.touch(id, now);
        self.replace(before, after, now, batch);
    }

    fn on_offline(&mut self, id: &NodeId, off: Offline, now: Timestamp, batch: &mut Batch) {
        let Some(before) = self.nodes.get(id).cloned() else {
            debug!(node = %id, "offline status for an unknown node; ignored");
            return;
        };
        let other_session = match (&off.session, &before.session) {
            (Some(theirs), Some(ours)) => theirs != ours,
            _ => false,
        };
        if other_session || off.conn < before.conn {
            self.stale(id, "offline", off.conn, before.conn);
            return;
        }
        let mut after = before.clone();
        after.online = false;
        after.offline_reason = Some(off.reason);
        after.conn = off.conn;
        if before.online {
            info!(node = %id, reason = off.reason.as_str(), conn = off.conn, "node offline");
        }
        self.replace(before, after, now, batch);
    }

    fn stale(&self, id: &NodeId, what: &str, got: u64, newest: u64) {
        self.telemetry.ingest_stale.inc();
        debug!(node = %id, what, conn = got, newest, "stale status ignored");
    }

    fn on_inventory(&mut self, id: &NodeId, inv: Inventory, now: Timestamp, batch: &mut Batch) {
        let Some(before) = self.nodes.get(id).cloned() else {
            if self.early_inventory.len() >= MAX_EARLY_INVENTORIES {
                debug!(node = %id, "too many early inventories; dropping one");
                return;
            }
            self.early_inventory.insert(id.clone(), inv);
            return;
        };
        self.touch(id, now);
        let unchanged = match batch.inventories.get(id) {
            Some(pending) => pending.inventory == inv,
            None => match self.store.inventory(id) {
                Ok(stored) => stored.is_some_and(|s| s.inventory == inv),
                Err(e) => {
                    error!(node = %id, error = %e, "reading stored inventory failed");
                    false
                }
            },
        };
        if unchanged {
            return;
        }
        batch.inventories.insert(
            id.clone(),
            StoredInventory {
                received_at: now,
                inventory: inv,
            },
        );
        let mut after = before.clone();
        after.version += 1;
        after.updated_at = now;
        self.nodes.insert(id.clone(), after);
        batch.nodes.entry(id.clone()).or_insert(Some(before.name));
    }

    fn on_metrics(&mut self, id: &NodeId, sample: MetricsSample, now: Timestamp) {
        if !self.nodes.contains_key(id) {
            debug!(node = %id, "metrics for an unknown node; waiting for its birth");
            return;
        }
        self.heartbeats.insert(
            id.clone(),
            Heartbeat {
                last_seen_at: now,
                sample: Some(sample),
            },
        );
        self.dirty_heartbeats.insert(id.clone());
    }

    /// Any message from a known node proves it was alive just now.
    fn touch(&mut self, id: &NodeId, now: Timestamp) {
        if !self.nodes.contains_key(id) {
            return;
        }
        let hb = self.heartbeats.entry(id.clone()).or_insert(Heartbeat {
            last_seen_at: now,
            sample: None,
        });
        hb.last_seen_at = now;
        self.dirty_heartbeats.insert(id.clone());
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
        batch
            .nodes
            .entry(before.id.clone())
            .or_insert(Some(before.name));
    }

    /// The hostname if it is a free, valid name; else hostname-<id prefix>; else the id,
    /// then id-2, id-3, ... A name never equals another node's id.
    fn unique_name(&self, hostname: &str, id: &NodeId) -> String {
        let free = |n: &str| {
            is_valid_node_name(n)
                && !self.names.contains_key(n)
                && !self
                    .nodes
                    .keys()
                    .any(|other| other.as_str() == n && other != id)
        };
        let short: String = id.as_str().chars().take(8).collect();
        [
            hostname.to_string(),
            format!("{hostname}-{short}"),
            id.to_string(),
        ]
        .into_iter()
        .chain((2u64..).map(|k| format!("{id}-{k}")))
        .find(|n| free(n))
        .unwrap_or_else(|| id.to_string())
    }

    fn flush_heartbeats(&mut self, durability: Durability) {
        let dirty: Vec<NodeId> = self.dirty_heartbeats.drain().collect();
        if dirty.is_empty() && matches!(durability, Durability::None) {
            return;
        }
        // An Immediate commit, even an empty one, also makes earlier cheap commits durable.
        let result = self.store.write(durability, |tx| {
            for id in &dirty {
                if let Some(hb) = self.heartbeats.get(id) {
                    tx.put_heartbeat(id, hb)?;
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            error!(error = %e, count = dirty.len(), "heartbeat flush failed; will retry");
            self.dirty_heartbeats.extend(dirty);
        }
    }

    fn state_message(&self, node: &NodeRecord) -> NodeStateMessage {
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
                .push(Outbound::retained(topic, &self.state_message(node)));
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

#[cfg(test)]
mod tests;
