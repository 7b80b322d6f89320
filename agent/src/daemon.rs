//! `metalbus-agent run`: the daemon loop. Connects, publishes birth (with a Last Will),
//! inventory and metrics, runs commands, delivers reports, reconnects with backoff, and
//! stops cleanly on shutdown.
//!
//! Every connection attempt bumps the persisted `conn` counter and gets its own client id
//! and Will, so a Will from a dead connection always carries an older `conn` than the
//! birth that replaced it (DESIGN section 3).
//!
//! Reports (acks and job events) go through the durable [`AgentStore`] outbox: stored
//! first, sent in `seq` order, sent again from the oldest unreceipted one on every
//! reconnect and after `resend_after` without progress, and removed only when the
//! controller's receipt covers them (DESIGN section 4). A repeated command id is acked
//! again and never run twice.
//!
//! `reboot` and `poweroff` run the configured action ([`crate::power`]) once the receipt
//! for their ack is in, in a task of their own, and report `complete` or `failed`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use metalbus_protocol::command::{Command, CommandKind, JobKind};
use metalbus_protocol::controller::Receipt;
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::metrics::{MetricsSample, OutboxStats};
use metalbus_protocol::report::{JobStatus, ReportBody};
use metalbus_protocol::status::{Birth, Offline, OfflineReason, Status};
use metalbus_protocol::topic::{NodeTopic, Topics};
use metalbus_protocol::{NodeId, Timestamp};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::collectors::identity;
use crate::config::{self, AgentConfig};
use crate::host::{Host, RealHost};
use crate::jobs::{self, Ack, JobEvent, JobRunner, Jobs};
use crate::link::{self, Backoff, Endpoint};
use crate::outbox::{AgentStore, PendingPower, Queued, RunningJob, StartedIn};
use crate::power::{self, PowerDone};
use crate::sampler::{Collected, Sampler};

/// How often the inventory is read again to catch changes (a NIC, a disk).
const INVENTORY_RECHECK: Duration = Duration::from_secs(600);
/// Delay of the first metrics sample after a connect.
const FIRST_METRICS_AFTER: Duration = Duration::from_secs(1);
/// How long a clean stop waits for the broker to acknowledge the offline status.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often the outbox is looked at for reports to (re)send.
const OUTBOX_TICK: Duration = Duration::from_millis(250);
/// Reports read from the outbox per round.
const SEND_BATCH: usize = 64;

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

/// A prepared agent: identity resolved, store open, collectors primed.
pub struct Agent {
    cfg: AgentConfig,
    /// The broker, with its TLS settings built once.
    endpoint: Endpoint,
    node_id: NodeId,
    topics: Topics,
    store: AgentStore,
    host: Arc<dyn Host>,
    jobs: Box<dyn Jobs>,
    job_events: Option<mpsc::UnboundedReceiver<JobEvent>>,
    stats: Arc<DeliveryStats>,
    /// The accepted power action not finished yet (mirrors the store).
    power: Option<PendingPower>,
    power_done: mpsc::UnboundedSender<PowerDone>,
    power_results: Option<mpsc::UnboundedReceiver<PowerDone>>,
    /// The install running now, when its plan reboots the host after it completes
    /// (`reboot_after`). In memory only: a restart fails a running job anyway.
    reboot_after: Option<String>,
}

/// What the agent's own tasks report back: job events and finished power actions.
struct Results {
    jobs: mpsc::UnboundedReceiver<JobEvent>,
    power: mpsc::UnboundedReceiver<PowerDone>,
}

/// How one connection ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Counts publish requests against the broker's answers, so a clean stop knows when its
/// last message is through.
#[derive(Default)]
struct Flight {
    requested: u64,
    sent: u64,
}

/// Per-connection delivery state.
struct Delivery {
    /// The newest report number handed to MQTT in this connection.
    sent_upto: u64,
    /// When a receipt last made progress (or sending started).
    last_progress: Instant,
}

/// Runs store work off the async worker when the runtime allows it: an fsync must not
/// hold up other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Agent {
    /// Everything that can fail before connecting, for this machine.
    pub fn prepare(cfg: AgentConfig) -> anyhow::Result<Agent> {
        config::check(&cfg)?;
        let node_id = identity::node_id(cfg.node_id.as_deref(), &cfg.root)
            .context("cannot determine this node's id; set node_id in the config")?;
        let host = Arc::new(RealHost::new(cfg.root.clone()));
        let (events_tx, job_events) = mpsc::unbounded_channel();
        let runner = JobRunner::new(node_id.clone(), cfg.steps_dir.clone(), events_tx);
        let endpoint = Endpoint::new(cfg.broker.clone(), cfg.broker_ca.as_deref())?;
        Agent::assemble(cfg, endpoint, node_id, host, Box::new(runner), job_events)
    }

    /// An agent from parts: `simulate` passes an invented host and job runner.
    pub fn assemble(
        cfg: AgentConfig,
        endpoint: Endpoint,
        node_id: NodeId,
        host: Arc<dyn Host>,
        jobs: Box<dyn Jobs>,
        job_events: mpsc::UnboundedReceiver<JobEvent>,
    ) -> anyhow::Result<Agent> {
        let topics = Topics::new(cfg.prefix.clone())?;
        let store = AgentStore::open(&cfg.state_dir)?;
        let (power_done, power_results) = mpsc::unbounded_channel();
        let mut agent = Agent {
            cfg,
            endpoint,
            node_id,
            topics,
            store,
            host,
            jobs,
            job_events: Some(job_events),
            stats: Arc::new(DeliveryStats::default()),
            power: None,
            power_done,
            power_results: Some(power_results),
            reboot_after: None,
        };
        agent.recover_interrupted_job()?;
        agent.recover_power()?;
        Ok(agent)
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.stats.clone()
    }

    /// A job that ran when the agent died: its processes are killed and it is reported
    /// `failed`, so the controller's retry logic takes over.
    fn recover_interrupted_job(&mut self) -> anyhow::Result<()> {
        let Some(job) = self.store.job()? else {
            return Ok(());
        };
        let killed = jobs::kill_leftovers(&job.command_id);
        warn!(job = %job.command_id, killed_groups = killed, "the agent restarted during a job; reporting it failed");
        self.queue(
            ReportBody::Job {
                command_id: job.command_id,
                job: job.job,
                status: JobStatus::Failed,
                progress: None,
                step: None,
                message: None,
                error: Some("agent restarted during job".into()),
            },
            0,
        );
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
            info!(command = %p.command_id, kind = %p.kind, "a power action waits for its ack's receipt");
            self.power = Some(p);
            return Ok(());
        };
        let now = self.host.boot_id();
        let result = match (&started.boot_id, &now) {
            (Some(then), Some(now)) if then != now => Ok(()),
            (Some(_), Some(_)) => Err(format!(
                "the agent restarted while the {} action ran, in the same boot; it is not run again",
                p.kind
            )),
            _ => Err(format!(
                "the agent restarted after starting the {} action and cannot read the boot id to tell whether it happened; it is not run again",
                p.kind
            )),
        };
        info!(command = %p.command_id, kind = %p.kind, ok = result.is_ok(), "power action found after a restart");
        self.queue(power_report(&p.command_id, p.kind, result), 0);
        self.store.set_power(None)
    }

    /// Starts the pending power action once the receipt for its ack is in.
    fn maybe_start_power(&mut self) {
        let Some(p) = self.power.as_ref().filter(|p| p.started.is_none()) else {
            return;
        };
        match blocking(|| self.store.receipted(p.ack_seq)) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                error!(error = %e, "cannot read the outbox");
                return;
            }
        }
        let mut started = p.clone();
        started.started = Some(StartedIn {
            boot_id: self.host.boot_id(),
        });
        // Recorded before it runs: whatever happens next, it never runs twice.
        if let Err(e) = blocking(|| self.store.set_power(Some(&started))) {
            error!(error = %e, command = %started.command_id, "cannot record the power action; not running it");
            return;
        }
        let argv = match started.kind {
            JobKind::Poweroff => self.cfg.poweroff_command.clone(),
            _ => self.cfg.reboot_command.clone(),
        };
        power::spawn(
            self.node_id.to_string(),
            started.command_id.clone(),
            started.kind,
            argv,
            self.power_done.clone(),
        );
        self.power = Some(started);
    }

    /// The action ended: report it and forget it.
    fn on_power_done(&mut self, done: PowerDone, sent_upto: u64) {
        self.queue(
            power_report(&done.command_id, done.kind, done.result),
            sent_upto,
        );
        if let Err(e) = blocking(|| self.store.set_power(None)) {
            error!(error = %e, "cannot clear the power action");
        }
        self.power = None;
    }

    /// The ack for a `reboot` or `poweroff` command.
    fn power_ack(&self, cmd: &Command, kind: JobKind) -> Ack {
        let no = |reason: String| Ack {
            accepted: false,
            reason: Some(reason),
        };
        if let Err(e) = cmd.validate() {
            return no(e.to_string());
        }
        if cmd.expires_at < Timestamp::from(SystemTime::now()) {
            return no("command expired".into());
        }
        let argv = match kind {
            JobKind::Poweroff => &self.cfg.poweroff_command,
            _ => &self.cfg.reboot_command,
        };
        if argv.is_empty() {
            return no(format!(
                "{kind} is disabled on this agent ({kind}_command = [])"
            ));
        }
        if let Some(p) = &self.power {
            return no(format!(
                "a {} ({}) is already under way",
                p.kind, p.command_id
            ));
        }
        Ack {
            accepted: true,
            reason: None,
        }
    }

    /// Runs until `shutdown` turns true. Returns `Ok` after a clean stop.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut backoff = Backoff::default();
        let (Some(jobs), Some(power)) = (self.job_events.take(), self.power_results.take()) else {
            anyhow::bail!("the agent is already running");
        };
        let mut results = Results { jobs, power };
        info!(node = %self.node_id, broker = %self.cfg.broker, session = self.store.session(), "agent starting");
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let conn = blocking(|| self.store.next_conn())?;
            let (client, mut eventloop) = self.client(conn);
            match self
                .session(
                    conn,
                    &client,
                    &mut eventloop,
                    &mut shutdown,
                    &mut backoff,
                    &mut results,
                )
                .await
            {
                SessionEnd::Shutdown => {
                    info!(node = %self.node_id, "agent stopped");
                    return Ok(());
                }
                SessionEnd::Lost(why) => {
                    let delay = backoff.next_delay(&mut rand::thread_rng());
                    warn!(node = %self.node_id, conn, error = %why, retry_in = ?delay, "broker connection lost");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
            }
        }
    }

    fn client(&self, conn: u64) -> (AsyncClient, EventLoop) {
        let client_id = format!("{}-c{}", self.node_id, conn);
        let mut opts = self.endpoint.options(&client_id);
        // The user name is the node id, so a broker ACL can confine the node to its
        // own topics (`metalbus mqtt-acl`).
        opts.set_credentials(self.node_id.as_str(), "");
        opts.set_last_will(LastWill::new(
            self.topic(NodeTopic::Status),
            self.offline(conn, OfflineReason::Lost).to_json(),
            QoS::AtLeastOnce,
            true,
        ));
        AsyncClient::new(opts, 256)
    }

    /// The status for the Will (`lost`) or a clean stop (`shutdown`) of connection `conn`.
    fn offline(&self, conn: u64, reason: OfflineReason) -> Status {
        Status::Offline(Offline {
            conn,
            reason,
            session: Some(self.store.session().to_string()),
            node_id: Some(self.node_id.clone()),
        })
    }

    fn topic(&self, kind: NodeTopic) -> String {
        self.topics.node(&self.node_id, kind)
    }

    async fn session(
        &mut self,
        conn: u64,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        shutdown: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
        results: &mut Results,
    ) -> SessionEnd {
        let mut connected = false;
        let mut flight = Flight::default();
        let mut delivery = Delivery {
            sent_upto: 0,
            last_progress: Instant::now(),
        };
        let mut last_inventory: Option<Inventory> = None;
        let (sampler, mut collected) = Sampler::new(
            self.host.clone(),
            self.cfg.metrics_interval.max(Duration::from_secs(1)),
        );
        let mut metrics_tick = tokio::time::interval(self.cfg.metrics_interval);
        metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inventory_tick = tokio::time::interval(INVENTORY_RECHECK);
        inventory_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outbox_tick = tokio::time::interval(OUTBOX_TICK);
        outbox_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let commands = self.topic(NodeTopic::Commands);
        let receipts = self.topic(NodeTopic::Receipts);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if connected {
                        self.stop_cleanly(conn, client, eventloop, &mut flight).await;
                    }
                    return SessionEnd::Shutdown;
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        backoff.reset();
                        info!(node = %self.node_id, conn, "connected to broker");
                        for topic in [&commands, &receipts] {
                            if let Err(e) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                                warn!(error = %e, %topic, "could not subscribe");
                            }
                        }
                        self.publish_birth(conn, client, &mut flight);
                        // Everything unreceipted goes again, oldest first.
                        delivery = Delivery { sent_upto: 0, last_progress: Instant::now() };
                        self.send_backlog(client, &mut flight, &mut delivery);
                        sampler.inventory();
                        // The first sample comes a second after connecting, so its
                        // CPU and rate figures span a real interval.
                        let first = self.cfg.metrics_interval.min(FIRST_METRICS_AFTER);
                        metrics_tick.reset_at(tokio::time::Instant::now() + first);
                        inventory_tick.reset();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == commands => {
                        self.on_command(&p.payload, conn, client, &mut flight, &sampler, &mut last_inventory, &mut delivery);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == receipts => {
                        self.on_receipt(&p.payload, &mut delivery);
                        self.maybe_start_power();
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(_))) => flight.sent += 1,
                    Ok(ev) => debug!(?ev, "mqtt"),
                    Err(e) => return SessionEnd::Lost(e.to_string()),
                },
                Some(event) = results.jobs.recv() => {
                    self.on_job_event(event, delivery.sent_upto);
                    if connected {
                        self.send_backlog(client, &mut flight, &mut delivery);
                    }
                }
                Some(done) = results.power.recv() => {
                    self.on_power_done(done, delivery.sent_upto);
                    if connected {
                        self.send_backlog(client, &mut flight, &mut delivery);
                    }
                }
                _ = outbox_tick.tick(), if connected => {
                    self.send_backlog(client, &mut flight, &mut delivery);
                    // After a restart the ack may have been receipted already.
                    self.maybe_start_power();
                }
                _ = metrics_tick.tick(), if connected => sampler.metrics(),
                _ = inventory_tick.tick(), if connected => sampler.inventory(),
                Some(result) = collected.recv() => match result {
                    Collected::Inventory(inv) => {
                        if let Some(published) = self.publish_inventory(client, &mut flight, *inv, last_inventory.as_ref()) {
                            last_inventory = Some(published);
                        }
                    }
                    Collected::Metrics(sample) => self.publish_metrics(client, &mut flight, *sample),
                },
            }
        }
    }

    /// Hands unsent reports to MQTT in order; after `resend_after` without a receipt
    /// making progress, starts again from the oldest unreceipted one.
    fn send_backlog(&mut self, client: &AsyncClient, flight: &mut Flight, d: &mut Delivery) {
        let (pending, oldest) = match blocking(|| self.store.backlog()) {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "cannot read the outbox");
                return;
            }
        };
        self.stats.pending.store(pending, Ordering::Relaxed);
        let Some(oldest) = oldest else {
            d.last_progress = Instant::now();
            return;
        };
        let resending = d.sent_upto >= oldest && d.last_progress.elapsed() >= self.cfg.resend_after;
        if resending {
            debug!(
                from = oldest,
                "no receipt for a while; sending the outbox again"
            );
            d.sent_upto = oldest - 1;
            d.last_progress = Instant::now();
        }
        let topic = self.topic(NodeTopic::Reports);
        loop {
            let batch = match blocking(|| self.store.pending(d.sent_upto, SEND_BATCH)) {
                Ok(b) => b,
                Err(e) => {
                    error!(error = %e, "cannot read the outbox");
                    return;
                }
            };
            if batch.is_empty() {
                return;
            }
            for report in batch {
                let body = serde_json::to_vec(&report).unwrap_or_default();
                if !publish_quiet(client, flight, topic.clone(), QoS::AtLeastOnce, false, body) {
                    return; // the request queue is full: the next tick goes on
                }
                d.sent_upto = report.seq;
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                if resending {
                    self.stats.resent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn on_receipt(&mut self, payload: &[u8], d: &mut Delivery) {
        let receipt: Receipt = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "malformed receipt ignored");
                return;
            }
        };
        match blocking(|| self.store.receipt(&receipt.session, receipt.seq)) {
            Ok(removed) if removed > 0 => {
                d.last_progress = Instant::now();
                self.stats
                    .receipted
                    .fetch_max(receipt.seq, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => error!(error = %e, "cannot apply a receipt"),
        }
    }

    fn on_job_event(&mut self, event: JobEvent, sent_upto: u64) {
        let record = match event.status {
            JobStatus::Started => Some(Some(RunningJob {
                command_id: event.command_id.clone(),
                job: event.job,
            })),
            JobStatus::Complete | JobStatus::Failed => Some(None),
            JobStatus::Progress => None,
        };
        if let Some(job) = record {
            if let Err(e) = blocking(|| self.store.set_job(job.as_ref())) {
                error!(error = %e, "cannot record the running job");
            }
        }
        let ends = matches!(event.status, JobStatus::Complete | JobStatus::Failed);
        let reboots = event.status == JobStatus::Complete
            && self.reboot_after.as_deref() == Some(event.command_id.as_str());
        let command_id = event.command_id.clone();
        let seq = self.queue(
            ReportBody::Job {
                command_id: event.command_id,
                job: event.job,
                status: event.status,
                progress: event.progress,
                step: event.step,
                message: event.message,
                error: event.error,
            },
            sent_upto,
        );
        if ends && self.reboot_after.as_deref() == Some(command_id.as_str()) {
            self.reboot_after = None;
        }
        if let (true, Some(seq)) = (reboots, seq) {
            self.reboot_after_install(command_id, seq);
        }
    }

    /// An install whose plan says `reboot_after` completed: the host reboots once the
    /// controller's receipt covers the `complete` report (DESIGN section 5), through
    /// the same once-only path as a `reboot` command, under the install's command id.
    fn reboot_after_install(&mut self, command_id: String, complete_seq: u64) {
        if let Some(p) = &self.power {
            info!(command = %command_id, pending = %p.command_id, kind = %p.kind, "install done; a power action is already under way, so no second reboot");
            return;
        }
        let pending = PendingPower {
            command_id,
            kind: JobKind::Reboot,
            ack_seq: complete_seq,
            started: None,
        };
        info!(command = %pending.command_id, "install done; rebooting once the controller has the report (reboot_after)");
        if let Err(e) = blocking(|| self.store.set_power(Some(&pending))) {
            error!(error = %e, "cannot record the reboot after the install; not rebooting");
            return;
        }
        self.power = Some(pending);
    }

    /// Stores a report in the outbox (it is sent from there); returns its number.
    fn queue(&mut self, body: ReportBody, sent_upto: u64) -> Option<u64> {
        let now = Timestamp::from(SystemTime::now());
        let node_id = self.node_id.clone();
        match blocking(|| self.store.queue(body, now, &node_id, sent_upto)) {
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

    /// A command from the controller: parse, dispatch (once per id), and ack.
    #[allow(clippy::too_many_arguments)]
    fn on_command(
        &mut self,
        payload: &[u8],
        conn: u64,
        client: &AsyncClient,
        flight: &mut Flight,
        sampler: &Sampler,
        last_inventory: &mut Option<Inventory>,
        d: &mut Delivery,
    ) {
        let cmd: Command = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                // Without a command id there is nothing to ack.
                let id = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v.get("command_id")?.as_str().map(String::from));
                warn!(error = %e, command = ?id, "malformed command refused");
                if let Some(id) = id {
                    let ack = Ack {
                        accepted: false,
                        reason: Some(format!("malformed command: {e}")),
                    };
                    self.ack(&id, ack, d.sent_upto);
                    self.send_backlog(client, flight, d);
                }
                return;
            }
        };
        match blocking(|| self.store.seen(&cmd.command_id)) {
            Ok(Some(ack)) => {
                info!(command = %cmd.command_id, "repeated command; acking it again, not running it");
                self.ack(&cmd.command_id, ack, d.sent_upto);
                self.send_backlog(client, flight, d);
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
        let ack = match cmd.kind {
            CommandKind::Install
                if cmd.plan.as_ref().is_some_and(|p| p.reboot_after)
                    && self.cfg.reboot_command.is_empty() =>
            {
                Ack {
                    accepted: false,
                    reason: Some(
                        "the plan reboots the host after the install (reboot_after), but reboot is disabled on this agent (reboot_command = [])".into(),
                    ),
                }
            }
            CommandKind::Install | CommandKind::Deprovision | CommandKind::Cancel => {
                let ack = self.jobs.handle(&cmd);
                if ack.accepted
                    && cmd.kind == CommandKind::Install
                    && cmd.plan.as_ref().is_some_and(|p| p.reboot_after)
                {
                    self.reboot_after = Some(cmd.command_id.clone());
                }
                ack
            }
            CommandKind::Rebirth => {
                self.publish_birth(conn, client, flight);
                *last_inventory = None;
                sampler.inventory();
                Ack {
                    accepted: true,
                    reason: None,
                }
            }
            CommandKind::RefreshInventory => {
                *last_inventory = None;
                sampler.inventory();
                Ack {
                    accepted: true,
                    reason: None,
                }
            }
            CommandKind::Reboot => self.power_ack(&cmd, JobKind::Reboot),
            CommandKind::Poweroff => self.power_ack(&cmd, JobKind::Poweroff),
            CommandKind::Wake => Ack {
                accepted: false,
                reason: Some("wake is sent by the controller, not run by agents".into()),
            },
        };
        if !ack.accepted {
            warn!(command = %cmd.command_id, reason = ?ack.reason, "command refused");
        }
        if let Err(e) = blocking(|| self.store.remember(&cmd.command_id, &ack)) {
            error!(error = %e, "cannot remember the command id");
        }
        let accepted = ack.accepted;
        let ack_seq = self.ack(&cmd.command_id, ack, d.sent_upto);
        if let (true, Some(kind), Some(ack_seq)) = (accepted, cmd.kind.power(), ack_seq) {
            let pending = PendingPower {
                command_id: cmd.command_id.clone(),
                kind,
                ack_seq,
                started: None,
            };
            info!(command = %cmd.command_id, %kind, "power action accepted; it runs once the ack is receipted");
            if let Err(e) = blocking(|| self.store.set_power(Some(&pending))) {
                error!(error = %e, "cannot record the power action");
            }
            self.power = Some(pending);
        }
        self.send_backlog(client, flight, d);
    }

    fn ack(&mut self, command_id: &str, ack: Ack, sent_upto: u64) -> Option<u64> {
        self.queue(
            ReportBody::Ack {
                command_id: command_id.to_string(),
                accepted: ack.accepted,
                reason: ack.reason,
            },
            sent_upto,
        )
    }

    fn publish_birth(&self, conn: u64, client: &AsyncClient, flight: &mut Flight) {
        let hostname = Some(self.host.hostname())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| self.node_id.to_string());
        let birth = Status::Birth(Birth {
            conn,
            session: self.store.session().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname,
            boot_id: self.host.boot_id(),
            metrics_interval_s: u32::try_from(self.cfg.metrics_interval.as_secs().max(1))
                .unwrap_or(u32::MAX),
            ts: Timestamp::from(SystemTime::now()),
            node_id: Some(self.node_id.clone()),
        });
        let topic = self.topic(NodeTopic::Status);
        publish(
            client,
            flight,
            topic,
            QoS::AtLeastOnce,
            true,
            birth.to_json(),
        );
    }

    /// Publishes `inv` when it differs from `previous`. Returns it when it was queued,
    /// so a failed publish is retried at the next check.
    fn publish_inventory(
        &self,
        client: &AsyncClient,
        flight: &mut Flight,
        mut inv: Inventory,
        previous: Option<&Inventory>,
    ) -> Option<Inventory> {
        inv.node_id = Some(self.node_id.clone());
        if previous == Some(&inv) {
            return None;
        }
        let body = match serde_json::to_vec(&inv) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "inventory did not serialize");
                return None;
            }
        };
        if body.len() > metalbus_protocol::MAX_PAYLOAD_BYTES {
            warn!(
                bytes = body.len(),
                limit = metalbus_protocol::MAX_PAYLOAD_BYTES,
                "inventory is larger than the controller accepts; it will be refused"
            );
        }
        if previous.is_some() {
            info!(node = %self.node_id, "inventory changed; publishing");
        }
        let topic = self.topic(NodeTopic::Inventory);
        publish(client, flight, topic, QoS::AtLeastOnce, true, body).then_some(inv)
    }

    fn publish_metrics(
        &self,
        client: &AsyncClient,
        flight: &mut Flight,
        mut sample: MetricsSample,
    ) {
        sample.node_id = Some(self.node_id.clone());
        sample.outbox = Some(OutboxStats {
            pending: self.stats.pending.load(Ordering::Relaxed),
            dropped: self.store.dropped,
        });
        match serde_json::to_vec(&sample) {
            Ok(body) => {
                let topic = self.topic(NodeTopic::Metrics);
                publish(client, flight, topic, QoS::AtMostOnce, false, body);
            }
            Err(e) => warn!(error = %e, "metrics sample did not serialize"),
        }
    }

    /// Publishes `{"online":false,"reason":"shutdown"}` and disconnects, which makes the
    /// broker drop the Will. Only once the broker has acknowledged the status: otherwise
    /// the connection is just dropped, so the Will (`lost`) still tells the truth.
    async fn stop_cleanly(
        &self,
        conn: u64,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        flight: &mut Flight,
    ) {
        let stop = self.offline(conn, OfflineReason::Shutdown).to_json();
        let topic = self.topic(NodeTopic::Status);
        if !publish(client, flight, topic, QoS::AtLeastOnce, true, stop) {
            warn!("could not queue the offline status; leaving it to the Will");
            return;
        }
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while flight.sent < flight.requested || eventloop.state.inflight() > 0 {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(_))) => flight.sent += 1,
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await;
        match drained {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "broker connection failed during clean stop; the Will reports it");
                return;
            }
            Err(_) => {
                warn!(
                    "broker did not acknowledge the offline status in time; leaving it to the Will"
                );
                return;
            }
        }
        link::disconnect(client, eventloop, Duration::from_secs(1)).await;
    }
}

/// The `job` report that ends a power action.
fn power_report(command_id: &str, kind: JobKind, result: Result<(), String>) -> ReportBody {
    let (status, error) = match result {
        Ok(()) => (JobStatus::Complete, None),
        Err(e) => (JobStatus::Failed, Some(e)),
    };
    ReportBody::Job {
        command_id: command_id.to_string(),
        job: kind,
        status,
        progress: None,
        step: None,
        message: None,
        error,
    }
}

/// Queues a publish; false (with a warning) when rumqttc's request queue is full.
fn publish(
    client: &AsyncClient,
    flight: &mut Flight,
    topic: String,
    qos: QoS,
    retain: bool,
    body: Vec<u8>,
) -> bool {
    let ok = publish_quiet(client, flight, topic.clone(), qos, retain, body);
    if !ok {
        warn!(%topic, "publish dropped: MQTT request queue is full");
    }
    ok
}

/// Like [`publish`], without the warning (the outbox retries by itself).
fn publish_quiet(
    client: &AsyncClient,
    flight: &mut Flight,
    topic: String,
    qos: QoS,
    retain: bool,
    body: Vec<u8>,
) -> bool {
    let ok = client.try_publish(topic, qos, retain, body).is_ok();
    if ok {
        flight.requested += 1;
    }
    ok
}
