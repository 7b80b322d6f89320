//! The agent's decisions, without I/O: given its durable state and one [`Input`] (a
//! connect, a command, a receipt, a job event, a tick, a collected inventory or sample),
//! what to publish, what to store, and what the daemon must do next ([`Action`]).
//!
//! The core never sees rumqttc, a socket, a process or the system clock: messages go
//! out through a [`Publisher`], time comes from a [`Clock`], jobs go to a [`Jobs`] runner,
//! and a power action or an inventory read is handed back as an [`Action`]. Its only
//! I/O is the agent's own store (redb, in memory in tests). So every command kind in
//! every state, the at-most-once power path and `reboot_after` are unit tests.
//!
//! - Reports (acks and job events) go through the durable outbox: stored first, sent in
//!   `seq` order, sent again from the oldest unreceipted one on every connect and after
//!   `resend_after` without progress, removed only under a receipt (DESIGN section 4).
//! - A repeated command id is acked again and never run twice.
//! - A power action (`reboot`, `poweroff`, or the reboot of a `reboot_after` install)
//!   starts only once the receipt covers its ack (or the install's `complete`), is
//!   recorded as started with the boot id before it runs, and never runs twice.

mod announce;
mod commands;
mod delivery;
mod power;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use metalbus_link::Clock;
use metalbus_protocol::command::{CommandId, PowerAction};
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::proof::{self, NodeKey};
use metalbus_protocol::status::{Offline, OfflineReason, Status};
use metalbus_protocol::topic::{NodeTopic, Topics};
use metalbus_protocol::NodeId;
use tracing::{error, warn};

use crate::jobs::{JobEvent, Jobs};
use crate::outbox::{AgentStore, PendingPower};
use crate::power::PowerDone;

/// Reports read from the outbox per round.
const SEND_BATCH: usize = 64;

/// MQTT delivery guarantee of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
}

/// Where the core's MQTT messages go: rumqttc's request queue in the daemon, a list in
/// tests.
pub trait Publisher {
    /// Queues one message; false when it cannot be queued now (the queue is full).
    fn publish(&mut self, topic: String, qos: Qos, retain: bool, payload: Vec<u8>) -> bool;
}

/// Something that happened, for the core to decide on.
#[derive(Debug)]
pub enum Input {
    /// The broker accepted connection `conn`: birth, then everything unreceipted.
    Connected {
        conn: u64,
    },
    /// The connection is gone; nothing is sent until the next `Connected`.
    Disconnected,
    /// A payload on the node's `commands` topic.
    Command(Vec<u8>),
    /// A payload on the node's `receipts` topic.
    Receipt(Vec<u8>),
    /// The job runner said something.
    Job(JobEvent),
    /// A power action ended.
    PowerDone(PowerDone),
    /// The outbox tick: (re)send what is due, start a receipted power action.
    Tick,
    Inventory(Box<Inventory>),
    Metrics(Box<MetricsSample>),
}

/// What the daemon must do for the core, beyond publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the power action now: it is recorded as started.
    RunPower {
        command_id: CommandId,
        action: PowerAction,
        argv: Vec<String>,
    },
    /// Read the inventory (after a connect, `rebirth`, `refresh_inventory`).
    ReadInventory,
    /// The agent restarted during this job: kill what is left of its processes.
    KillLeftovers(CommandId),
}

/// Counters of report delivery, for tests and `simulate`.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Reports handed to MQTT (first sends and resends).
    pub sent: AtomicU64,
    /// Of those, resends.
    pub resent: AtomicU64,
    /// The newest report number given out.
    pub last_seq: AtomicU64,
    /// The newest receipt seen.
    pub receipted: AtomicU64,
    /// Commands and receipts refused because they did not prove their origin.
    pub refused: AtomicU64,
    /// Reports waiting for a receipt.
    pub pending: AtomicU64,
}

/// The settings the core decides with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Argv of the reboot action; empty refuses `reboot` (and `reboot_after` plans).
    pub reboot_command: Vec<String>,
    /// Argv of the poweroff action; empty refuses `poweroff`.
    pub poweroff_command: Vec<String>,
    /// Send unreceipted reports again after this long without progress.
    pub resend_after: Duration,
    /// Announced in the birth.
    pub metrics_interval: Duration,
}

/// What this host is, as the birth tells it.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub hostname: String,
    pub boot_id: Option<String>,
}

/// Everything a core is made of.
pub struct Parts {
    pub node_id: NodeId,
    pub topics: Topics,
    pub store: AgentStore,
    pub jobs: Box<dyn Jobs>,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    pub host: HostFacts,
    /// The node key from enrollment: seals everything the core publishes and proves
    /// every command and receipt it takes.
    pub key: NodeKey,
    /// Delivery counters, shared with whoever reports them.
    pub stats: Arc<DeliveryStats>,
}

/// The connection being served.
#[derive(Debug, Clone, Copy)]
struct Link {
    conn: u64,
    /// The newest report number handed to MQTT on this connection.
    sent_upto: u64,
    /// When a receipt last made progress (or sending started), on the monotonic clock.
    last_progress: Duration,
    /// The controller's protocol, once a receipt said it.
    controller_protocol: Option<u32>,
}

pub struct Core {
    node_id: NodeId,
    topics: Topics,
    store: AgentStore,
    jobs: Box<dyn Jobs>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    host: HostFacts,
    key: NodeKey,
    stats: Arc<DeliveryStats>,
    /// The accepted power action not finished yet (mirrors the store).
    power: Option<PendingPower>,
    /// The install running now, when its plan reboots the host after it completes
    /// (`reboot_after`). In memory only: a restart fails a running job anyway.
    reboot_after: Option<CommandId>,
    link: Option<Link>,
    /// The inventory published on this connection, so an unchanged one is not sent
    /// again.
    last_inventory: Option<Inventory>,
}

impl Core {
    /// A core over `parts`, with what a restart left behind already handled: a job that
    /// ran is reported `failed` (the returned actions kill its leftovers), and a power
    /// action is resumed or reported.
    pub fn new(parts: Parts) -> anyhow::Result<(Core, Vec<Action>)> {
        let mut core = Core {
            node_id: parts.node_id,
            topics: parts.topics,
            store: parts.store,
            jobs: parts.jobs,
            clock: parts.clock,
            settings: parts.settings,
            host: parts.host,
            key: parts.key,
            stats: parts.stats,
            power: None,
            reboot_after: None,
            link: None,
            last_inventory: None,
        };
        let mut actions = Vec::new();
        core.recover_interrupted_job(&mut actions)?;
        core.recover_power()?;
        Ok((core, actions))
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub fn session(&self) -> &str {
        self.store.session()
    }

    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.stats.clone()
    }

    /// The MQTT password that binds a connection to this node.
    pub fn broker_password(&self) -> String {
        self.key.broker_password()
    }

    /// Bumps and persists the connection counter for a new connection attempt.
    pub fn next_conn(&mut self) -> anyhow::Result<u64> {
        self.store.next_conn()
    }

    /// The Last Will of connection `conn` (`lost`): topic and payload.
    pub fn will(&self, conn: u64) -> anyhow::Result<(String, Vec<u8>)> {
        self.offline(conn, OfflineReason::Lost)
    }

    /// The clean-stop status of connection `conn` (`shutdown`): topic and payload.
    pub fn stopping(&self, conn: u64) -> anyhow::Result<(String, Vec<u8>)> {
        self.offline(conn, OfflineReason::Shutdown)
    }

    fn offline(&self, conn: u64, reason: OfflineReason) -> anyhow::Result<(String, Vec<u8>)> {
        let status = Status::Offline(Offline {
            conn,
            reason,
            session: Some(self.store.session().to_string()),
            node_id: Some(self.node_id.clone()),
        });
        let topic = self.topic(NodeTopic::Status);
        let payload = proof::seal(&self.key, &topic, &status.to_json()?)?;
        Ok((topic, payload))
    }

    /// Whether a payload on one of our inbound topics was made by our controller, for
    /// this node; logged (with why) when not.
    fn proven(&self, kind: NodeTopic, payload: &[u8]) -> bool {
        match proof::open(&self.key, &self.topic(kind), payload) {
            Ok(()) => true,
            Err(e) => {
                self.stats
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(node = %self.node_id, topic = kind.as_str(), error = %e,
                    "refused a message that does not prove it came from our controller");
                false
            }
        }
    }

    /// One of this node's topics.
    pub fn topic(&self, kind: NodeTopic) -> String {
        self.topics.node(&self.node_id, kind)
    }

    /// Decides on one input: publishes through `out`, returns what the daemon must do.
    pub fn handle(&mut self, input: Input, out: &mut dyn Publisher) -> Vec<Action> {
        let mut actions = Vec::new();
        let key = self.key.clone();
        let out = &mut Sealing { key: &key, out };
        match input {
            Input::Connected { conn } => {
                self.link = Some(Link {
                    conn,
                    sent_upto: 0,
                    last_progress: self.clock.monotonic(),
                    controller_protocol: None,
                });
                self.last_inventory = None;
                self.publish_birth(conn, out);
                // Everything unreceipted goes again, oldest first.
                self.send_backlog(out);
                actions.push(Action::ReadInventory);
            }
            Input::Disconnected => self.link = None,
            Input::Command(payload) | Input::Receipt(payload)
                if !self.proven(input_topic(&input), &payload) => {}
            Input::Command(payload) => self.on_command(&payload, out, &mut actions),
            Input::Receipt(payload) => {
                self.on_receipt(&payload);
                self.maybe_start_power(&mut actions);
            }
            Input::Job(event) => {
                self.on_job_event(event);
                self.send_backlog(out);
            }
            Input::PowerDone(done) => {
                self.on_power_done(done);
                self.send_backlog(out);
            }
            Input::Tick => {
                self.send_backlog(out);
                // After a restart the ack may have been receipted already.
                self.maybe_start_power(&mut actions);
            }
            Input::Inventory(inv) => self.publish_inventory(*inv, out),
            Input::Metrics(sample) => self.publish_metrics(*sample, out),
        }
        actions
    }
}

/// Seals every payload with the node key on its way out (DESIGN section 11).
struct Sealing<'a> {
    key: &'a NodeKey,
    out: &'a mut dyn Publisher,
}

impl Publisher for Sealing<'_> {
    fn publish(&mut self, topic: String, qos: Qos, retain: bool, payload: Vec<u8>) -> bool {
        match proof::seal(self.key, &topic, &payload) {
            Ok(sealed) => self.out.publish(topic, qos, retain, sealed),
            Err(e) => {
                error!(%topic, error = %e, "a message could not be sealed; not sent");
                true
            }
        }
    }
}

/// The topic an inbound input came on.
fn input_topic(input: &Input) -> NodeTopic {
    match input {
        Input::Receipt(_) => NodeTopic::Receipts,
        _ => NodeTopic::Commands,
    }
}

#[cfg(test)]
mod tests;
