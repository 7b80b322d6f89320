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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metalbus_link::Clock;
use metalbus_protocol::command::{Command, CommandId, CommandKind, PowerAction, Work};
use metalbus_protocol::controller::Receipt;
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::metrics::{MetricsSample, OutboxStats};
use metalbus_protocol::report::{JobStatus, ReportBody};
use metalbus_protocol::status::{Birth, Offline, OfflineReason, Status};
use metalbus_protocol::topic::{NodeTopic, Topics};
use metalbus_protocol::NodeId;
use tracing::{debug, error, info, warn};

use crate::jobs::{Ack, JobEvent, Jobs};
use crate::outbox::{AgentStore, PendingPower, Queued, RunningJob, StartedIn};
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
}

/// The connection being served.
#[derive(Debug, Clone, Copy)]
struct Link {
    conn: u64,
    /// The newest report number handed to MQTT on this connection.
    sent_upto: u64,
    /// When a receipt last made progress (or sending started), on the monotonic clock.
    last_progress: Duration,
}

pub struct Core {
    node_id: NodeId,
    topics: Topics,
    store: AgentStore,
    jobs: Box<dyn Jobs>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    host: HostFacts,
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
            stats: Arc::new(DeliveryStats::default()),
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
        Ok((self.topic(NodeTopic::Status), status.to_json()?))
    }

    /// One of this node's topics.
    pub fn topic(&self, kind: NodeTopic) -> String {
        self.topics.node(&self.node_id, kind)
    }

    /// Decides on one input: publishes through `out`, returns what the daemon must do.
    pub fn handle(&mut self, input: Input, out: &mut dyn Publisher) -> Vec<Action> {
        let mut actions = Vec::new();
        match input {
            Input::Connected { conn } => {
                self.link = Some(Link {
                    conn,
                    sent_upto: 0,
                    last_progress: self.clock.monotonic(),
                });
                self.last_inventory = None;
                self.publish_birth(conn, out);
                // Everything unreceipted goes again, oldest first.
                self.send_backlog(out);
                actions.push(Action::ReadInventory);
            }
            Input::Disconnected => self.link = None,
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

    /// A job that ran when the agent died is reported `failed`, so the controller's
    /// retry logic takes over; its processes are killed.
    fn recover_interrupted_job(&mut self, actions: &mut Vec<Action>) -> anyhow::Result<()> {
        let Some(job) = self.store.job()? else {
            return Ok(());
        };
        warn!(job = %job.command_id, "the agent restarted during a job; reporting it failed");
        actions.push(Action::KillLeftovers(job.command_id.clone()));
        self.queue(ReportBody::Job {
            command_id: job.command_id,
            job: Work::Job(job.job),
            status: JobStatus::Failed,
            progress: None,
            step: None,
            message: None,
            error: Some("agent restarted during job".into()),
        });
        self.store.set_job(None)
    }

    /// A power action recorded before this start. Not started yet: it waits for its
    /// ack's receipt as before. Started in another boot: the host went down as asked.
    /// Started in this boot (or the boot cannot be told): the agent died while it ran;
    /// it is reported failed and never run again.
    fn recover_power(&mut self) -> anyhow::Result<()> {
        let Some(p) = self.store.power()? else {
            return Ok(());
        };
        let Some(started) = &p.started else {
            info!(command = %p.command_id, action = %p.action, "a power action waits for its ack's receipt");
            self.power = Some(p);
            return Ok(());
        };
        let result = match (&started.boot_id, &self.host.boot_id) {
            (Some(then), Some(now)) if then != now => Ok(()),
            (Some(_), Some(_)) => Err(format!(
                "the agent restarted while the {} action ran, in the same boot; it is not run again",
                p.action
            )),
            _ => Err(format!(
                "the agent restarted after starting the {} action and cannot read the boot id to tell whether it happened; it is not run again",
                p.action
            )),
        };
        info!(command = %p.command_id, action = %p.action, ok = result.is_ok(), "power action found after a restart");
        self.queue(power_report(p.command_id, p.action, result));
        self.store.set_power(None)
    }

    /// The argv the agent's config gives `action`.
    fn argv(&self, action: PowerAction) -> &[String] {
        match action {
            PowerAction::Reboot => &self.settings.reboot_command,
            PowerAction::Poweroff => &self.settings.poweroff_command,
        }
    }

    /// Starts the pending power action once the receipt for its ack is in.
    fn maybe_start_power(&mut self, actions: &mut Vec<Action>) {
        let Some(p) = self.power.as_ref().filter(|p| p.started.is_none()) else {
            return;
        };
        match self.store.receipted(p.ack_seq) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                error!(error = %e, "cannot read the outbox");
                return;
            }
        }
        let mut started = p.clone();
        started.started = Some(StartedIn {
            boot_id: self.host.boot_id.clone(),
        });
        // Recorded before it runs: whatever happens next, it never runs twice.
        if let Err(e) = self.store.set_power(Some(&started)) {
            error!(error = %e, command = %started.command_id, "cannot record the power action; not running it");
            return;
        }
        actions.push(Action::RunPower {
            command_id: started.command_id.clone(),
            action: started.action,
            argv: self.argv(started.action).to_vec(),
        });
        self.power = Some(started);
    }

    /// The action ended: report it and forget it.
    fn on_power_done(&mut self, done: PowerDone) {
        self.queue(power_report(done.command_id, done.action, done.result));
        if let Err(e) = self.store.set_power(None) {
            error!(error = %e, "cannot clear the power action");
        }
        self.power = None;
    }

    /// The ack for a `reboot` or `poweroff` command.
    fn power_ack(&self, cmd: &Command, action: PowerAction) -> Ack {
        if let Err(e) = cmd.validate() {
            return Ack::no(e.to_string());
        }
        if cmd.expires_at < self.clock.now() {
            return Ack::no("command expired");
        }
        if self.argv(action).is_empty() {
            return Ack::no(format!(
                "{action} is disabled on this agent ({action}_command = [])"
            ));
        }
        if let Some(p) = &self.power {
            return Ack::no(format!(
                "a {} ({}) is already under way",
                p.action, p.command_id
            ));
        }
        Ack::yes()
    }

    /// A command from the controller: parse, dispatch (once per id), and ack.
    fn on_command(&mut self, payload: &[u8], out: &mut dyn Publisher, actions: &mut Vec<Action>) {
        let cmd: Command = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                // Without a command id there is nothing to ack.
                let id = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| {
                        serde_json::from_value::<CommandId>(v.get("command_id")?.clone()).ok()
                    });
                warn!(error = %e, command = ?id, "malformed command refused");
                if let Some(id) = id {
                    self.ack(&id, Ack::no(format!("malformed command: {e}")));
                    self.send_backlog(out);
                }
                return;
            }
        };
        match self.store.seen(&cmd.command_id) {
            Ok(Some(ack)) => {
                info!(command = %cmd.command_id, "repeated command; acking it again, not running it");
                self.ack(&cmd.command_id, ack);
                self.send_backlog(out);
                return;
            }
            Ok(None) => {}
            Err(e) => {
                // Better not to act than to risk running a command twice.
                error!(error = %e, command = %cmd.command_id, "cannot read remembered commands; ignoring the command");
                return;
            }
        }
        info!(command = %cmd.command_id, kind = %cmd.kind, "command received");
        let ack = self.dispatch(&cmd, out, actions);
        if !ack.accepted {
            warn!(command = %cmd.command_id, reason = ?ack.reason, "command refused");
        }
        if let Err(e) = self.store.remember(&cmd.command_id, &ack) {
            error!(error = %e, "cannot remember the command id");
        }
        let accepted = ack.accepted;
        let ack_seq = self.ack(&cmd.command_id, ack);
        if let (true, Some(action), Some(ack_seq)) = (accepted, cmd.kind.power(), ack_seq) {
            info!(command = %cmd.command_id, %action, "power action accepted; it runs once the ack is receipted");
            self.record_power(PendingPower {
                command_id: cmd.command_id.clone(),
                action,
                ack_seq,
                started: None,
            });
        }
        self.send_backlog(out);
    }

    /// What a new command does, and its ack.
    fn dispatch(
        &mut self,
        cmd: &Command,
        out: &mut dyn Publisher,
        actions: &mut Vec<Action>,
    ) -> Ack {
        let reboots_after = cmd.plan.as_ref().is_some_and(|p| p.reboot_after);
        match cmd.kind {
            CommandKind::Install if reboots_after && self.settings.reboot_command.is_empty() => {
                Ack::no("the plan reboots the host after the install (reboot_after), but reboot is disabled on this agent (reboot_command = [])")
            }
            CommandKind::Install | CommandKind::Deprovision | CommandKind::Cancel => {
                let ack = self.jobs.handle(cmd);
                if ack.accepted && cmd.kind == CommandKind::Install && reboots_after {
                    self.reboot_after = Some(cmd.command_id.clone());
                }
                ack
            }
            CommandKind::Rebirth => {
                if let Some(link) = self.link {
                    self.publish_birth(link.conn, out);
                }
                self.last_inventory = None;
                actions.push(Action::ReadInventory);
                Ack::yes()
            }
            CommandKind::RefreshInventory => {
                self.last_inventory = None;
                actions.push(Action::ReadInventory);
                Ack::yes()
            }
            CommandKind::Reboot => self.power_ack(cmd, PowerAction::Reboot),
            CommandKind::Poweroff => self.power_ack(cmd, PowerAction::Poweroff),
            CommandKind::Wake => Ack::no("wake is sent by the controller, not run by agents"),
        }
    }

    fn record_power(&mut self, pending: PendingPower) {
        if let Err(e) = self.store.set_power(Some(&pending)) {
            error!(error = %e, "cannot record the power action");
        }
        self.power = Some(pending);
    }

    fn ack(&mut self, command_id: &CommandId, ack: Ack) -> Option<u64> {
        self.queue(ReportBody::Ack {
            command_id: command_id.clone(),
            accepted: ack.accepted,
            reason: ack.reason,
        })
    }

    fn on_receipt(&mut self, payload: &[u8]) {
        let receipt: Receipt = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "malformed receipt ignored");
                return;
            }
        };
        match self.store.receipt(&receipt.session, receipt.seq) {
            Ok(removed) if removed > 0 => {
                let now = self.clock.monotonic();
                if let Some(link) = self.link.as_mut() {
                    link.last_progress = now;
                }
                self.stats
                    .receipted
                    .fetch_max(receipt.seq, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => error!(error = %e, "cannot apply a receipt"),
        }
    }

    fn on_job_event(&mut self, event: JobEvent) {
        let record = match event.status {
            JobStatus::Started => Some(Some(RunningJob {
                command_id: event.command_id.clone(),
                job: event.job,
            })),
            JobStatus::Complete | JobStatus::Failed => Some(None),
            JobStatus::Progress => None,
        };
        if let Some(job) = record {
            if let Err(e) = self.store.set_job(job.as_ref()) {
                error!(error = %e, "cannot record the running job");
            }
        }
        let ours = self.reboot_after.as_ref() == Some(&event.command_id);
        let ends = matches!(event.status, JobStatus::Complete | JobStatus::Failed);
        let reboots = ours && event.status == JobStatus::Complete;
        let command_id = event.command_id.clone();
        let seq = self.queue(ReportBody::Job {
            command_id: event.command_id,
            job: Work::Job(event.job),
            status: event.status,
            progress: event.progress,
            step: event.step,
            message: event.message,
            error: event.error,
        });
        if ours && ends {
            self.reboot_after = None;
        }
        if let (true, Some(seq)) = (reboots, seq) {
            self.reboot_after_install(command_id, seq);
        }
    }

    /// An install whose plan says `reboot_after` completed: the host reboots once the
    /// controller's receipt covers the `complete` report (DESIGN section 5), through
    /// the same once-only path as a `reboot` command, under the install's command id.
    fn reboot_after_install(&mut self, command_id: CommandId, complete_seq: u64) {
        if let Some(p) = &self.power {
            info!(command = %command_id, pending = %p.command_id, action = %p.action, "install done; a power action is already under way, so no second reboot");
            return;
        }
        info!(command = %command_id, "install done; rebooting once the controller has the report (reboot_after)");
        self.record_power(PendingPower {
            command_id,
            action: PowerAction::Reboot,
            ack_seq: complete_seq,
            started: None,
        });
    }

    /// Stores a report in the outbox (it is sent from there); returns its number.
    fn queue(&mut self, body: ReportBody) -> Option<u64> {
        let now = self.clock.now();
        let sent_upto = self.link.map_or(0, |l| l.sent_upto);
        match self.store.queue(body, now, &self.node_id, sent_upto) {
            Ok(Queued::New(seq)) => {
                self.stats.last_seq.store(seq, Ordering::Relaxed);
                Some(seq)
            }
            Ok(Queued::Merged(seq)) => Some(seq),
            Ok(Queued::Dropped) => {
                warn!(
                    dropped = self.store.dropped,
                    "outbox full; progress report dropped"
                );
                None
            }
            Err(e) => {
                error!(error = %e, "cannot store a report; it is lost");
                None
            }
        }
    }

    /// Hands unsent reports to MQTT in order; after `resend_after` without a receipt
    /// making progress, starts again from the oldest unreceipted one.
    fn send_backlog(&mut self, out: &mut dyn Publisher) {
        let Some(mut link) = self.link else {
            return;
        };
        let (pending, oldest) = match self.store.backlog() {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "cannot read the outbox");
                return;
            }
        };
        self.stats.pending.store(pending, Ordering::Relaxed);
        let now = self.clock.monotonic();
        let Some(oldest) = oldest else {
            link.last_progress = now;
            self.link = Some(link);
            return;
        };
        let resending = link.sent_upto >= oldest
            && now.saturating_sub(link.last_progress) >= self.settings.resend_after;
        if resending {
            debug!(
                from = oldest,
                "no receipt for a while; sending the outbox again"
            );
            link.sent_upto = oldest - 1;
            link.last_progress = now;
        }
        let topic = self.topic(NodeTopic::Reports);
        'send: loop {
            let batch = match self.store.pending(link.sent_upto, SEND_BATCH) {
                Ok(b) => b,
                Err(e) => {
                    error!(error = %e, "cannot read the outbox");
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
            for report in batch {
                let body = match serde_json::to_vec(&report) {
                    Ok(b) => b,
                    Err(e) => {
                        error!(seq = report.seq, error = %e, "a stored report does not serialize");
                        break 'send;
                    }
                };
                if !out.publish(topic.clone(), Qos::AtLeastOnce, false, body) {
                    break 'send; // the request queue is full: the next tick goes on
                }
                link.sent_upto = report.seq;
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                if resending {
                    self.stats.resent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.link = Some(link);
    }

    fn publish_birth(&self, conn: u64, out: &mut dyn Publisher) {
        let hostname = Some(self.host.hostname.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| self.node_id.to_string());
        let birth = Status::Birth(Birth {
            conn,
            session: self.store.session().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname,
            boot_id: self.host.boot_id.clone(),
            metrics_interval_s: u32::try_from(self.settings.metrics_interval.as_secs().max(1))
                .unwrap_or(u32::MAX),
            ts: self.clock.now(),
            node_id: Some(self.node_id.clone()),
        });
        match birth.to_json() {
            Ok(body) => {
                publish_or_warn(
                    out,
                    self.topic(NodeTopic::Status),
                    Qos::AtLeastOnce,
                    true,
                    body,
                );
            }
            Err(e) => error!(error = %e, "the birth did not serialize; not published"),
        }
    }

    /// Publishes `inv` when it differs from the one published on this connection; a
    /// failed publish is tried again with the next read.
    fn publish_inventory(&mut self, mut inv: Inventory, out: &mut dyn Publisher) {
        inv.node_id = Some(self.node_id.clone());
        if self.last_inventory.as_ref() == Some(&inv) {
            return;
        }
        let body = match serde_json::to_vec(&inv) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "inventory did not serialize");
                return;
            }
        };
        if body.len() > metalbus_protocol::MAX_PAYLOAD_BYTES {
            warn!(
                bytes = body.len(),
                limit = metalbus_protocol::MAX_PAYLOAD_BYTES,
                "inventory is larger than the controller accepts; it will be refused"
            );
        }
        if self.last_inventory.is_some() {
            info!(node = %self.node_id, "inventory changed; publishing");
        }
        let topic = self.topic(NodeTopic::Inventory);
        if publish_or_warn(out, topic, Qos::AtLeastOnce, true, body) {
            self.last_inventory = Some(inv);
        }
    }

    fn publish_metrics(&self, mut sample: MetricsSample, out: &mut dyn Publisher) {
        sample.node_id = Some(self.node_id.clone());
        sample.outbox = Some(OutboxStats {
            pending: self.stats.pending.load(Ordering::Relaxed),
            dropped: self.store.dropped,
        });
        match serde_json::to_vec(&sample) {
            Ok(body) => {
                let topic = self.topic(NodeTopic::Metrics);
                publish_or_warn(out, topic, Qos::AtMostOnce, false, body);
            }
            Err(e) => warn!(error = %e, "metrics sample did not serialize"),
        }
    }
}

/// Queues a publish; false (with a warning) when the request queue is full.
fn publish_or_warn(
    out: &mut dyn Publisher,
    topic: String,
    qos: Qos,
    retain: bool,
    body: Vec<u8>,
) -> bool {
    let ok = out.publish(topic.clone(), qos, retain, body);
    if !ok {
        warn!(%topic, "publish dropped: MQTT request queue is full");
    }
    ok
}

/// The `job` report that ends a power action.
fn power_report(
    command_id: CommandId,
    action: PowerAction,
    result: Result<(), String>,
) -> ReportBody {
    let (status, error) = match result {
        Ok(()) => (JobStatus::Complete, None),
        Err(e) => (JobStatus::Failed, Some(e)),
    };
    ReportBody::Job {
        command_id,
        job: Work::Power(action),
        status,
        progress: None,
        step: None,
        message: None,
        error,
    }
}

#[cfg(test)]
mod tests;
