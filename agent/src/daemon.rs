//! `metalbus-agent run`: the daemon loop. Connects, publishes birth (with a Last Will),
//! inventory and metrics, reconnects with backoff, and stops cleanly on shutdown.
//!
//! Every connection attempt bumps the persisted `conn` counter and gets its own client id
//! and Will, so a Will from a dead connection always carries an older `conn` than the
//! birth that replaced it (DESIGN section 3).
//!
//! Commands arrive on `{p}/nodes/{id}/commands`; jobs run in the [`JobRunner`], whose
//! events become reports (with `session` and `seq`) on `{p}/nodes/{id}/reports`. Reports
//! wait in memory while the broker is away and go out in order on reconnect.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use metalbus_protocol::command::{Command, CommandKind};
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::report::{JobStatus, Report, ReportBody};
use metalbus_protocol::status::{Birth, Offline, OfflineReason, Status};
use metalbus_protocol::topic::{NodeTopic, Topics};
use metalbus_protocol::{NodeId, Timestamp};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::collectors::{identity, metrics::MetricsCollector};
use crate::config::{self, AgentConfig};
use crate::jobs::{Ack, JobEvent, JobRunner};
use crate::link::{self, Backoff};
use crate::sampler::{Collected, Sampler};
use crate::state::AgentState;

/// How often the inventory is read again to catch changes (a NIC, a disk).
const INVENTORY_RECHECK: Duration = Duration::from_secs(600);
/// Delay of the first metrics sample after a connect.
const FIRST_METRICS_AFTER: Duration = Duration::from_secs(1);
/// Reports kept while the broker is away; beyond, the oldest progress report goes.
const MAX_PENDING_REPORTS: usize = 10_000;
/// How long a clean stop waits for the broker to acknowledge the offline status.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A prepared agent: identity resolved, state loaded, collectors primed.
pub struct Agent {
    cfg: AgentConfig,
    node_id: NodeId,
    topics: Topics,
    state: AgentState,
    /// Shared with the blocking threads that sample; see `sampler`.
    metrics: Arc<Mutex<MetricsCollector>>,
    hostname: String,
    boot_id: Option<String>,
    runner: JobRunner,
    job_events: Option<mpsc::UnboundedReceiver<JobEvent>>,
    /// Reports not yet handed to the broker, oldest first.
    pending: VecDeque<Report>,
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

impl Agent {
    /// Everything that can fail before connecting: config, identity, state dir.
    pub fn prepare(cfg: AgentConfig) -> anyhow::Result<Agent> {
        config::check(&cfg)?;
        let topics = Topics::new(cfg.prefix.clone())?;
        let node_id = identity::node_id(cfg.node_id.as_deref(), &cfg.root)
            .context("cannot determine this node's id; set node_id in the config")?;
        let state = AgentState::open(&cfg.state_dir)?;
        let hostname = identity::hostname(&cfg.root).unwrap_or_else(|| node_id.to_string());
        let boot_id = identity::boot_id(&cfg.root);
        let metrics = Arc::new(Mutex::new(MetricsCollector::new(&cfg.root)));
        let (events_tx, job_events) = mpsc::unbounded_channel();
        let runner = JobRunner::new(node_id.clone(), cfg.steps_dir.clone(), events_tx);
        Ok(Agent {
            cfg,
            node_id,
            topics,
            state,
            metrics,
            hostname,
            boot_id,
            runner,
            job_events: Some(job_events),
            pending: VecDeque::new(),
        })
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Runs until `shutdown` turns true. Returns `Ok` after a clean stop.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut backoff = Backoff::default();
        let Some(mut job_events) = self.job_events.take() else {
            anyhow::bail!("the agent is already running");
        };
        info!(node = %self.node_id, broker = %self.cfg.broker, session = self.state.session(), "agent starting");
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let conn = self.state.next_conn()?;
            let (client, mut eventloop) = self.client(conn);
            match self
                .session(
                    conn,
                    &client,
                    &mut eventloop,
                    &mut shutdown,
                    &mut backoff,
                    &mut job_events,
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
        let mut opts = link::client_options(&self.cfg.broker, &client_id);
        opts.set_last_will(LastWill::new(
            self.topic(NodeTopic::Status),
            self.offline(conn, OfflineReason::Lost).to_json(),
            QoS::AtLeastOnce,
            true,
        ));
        AsyncClient::new(opts, 64)
    }

    /// The status for the Will (`lost`) or a clean stop (`shutdown`) of connection `conn`.
    fn offline(&self, conn: u64, reason: OfflineReason) -> Status {
        Status::Offline(Offline {
            conn,
            reason,
            session: Some(self.state.session().to_string()),
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
        job_events: &mut mpsc::UnboundedReceiver<JobEvent>,
    ) -> SessionEnd {
        let mut connected = false;
        let mut flight = Flight::default();
        let mut last_inventory: Option<Inventory> = None;
        let (sampler, mut collected) = Sampler::new(
            self.cfg.root.clone(),
            self.metrics.clone(),
            self.cfg.metrics_interval.max(Duration::from_secs(1)),
        );
        let mut metrics_tick = tokio::time::interval(self.cfg.metrics_interval);
        metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inventory_tick = tokio::time::interval(INVENTORY_RECHECK);
        inventory_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                        if let Err(e) = client.try_subscribe(self.topic(NodeTopic::Commands), QoS::AtLeastOnce) {
                            warn!(error = %e, "could not subscribe to commands");
                        }
                        self.publish_birth(conn, client, &mut flight);
                        self.flush_reports(client, &mut flight);
                        sampler.inventory();
                        // The first sample comes a second after connecting, so its
                        // CPU and rate figures span a real interval.
                        let first = self.cfg.metrics_interval.min(FIRST_METRICS_AFTER);
                        metrics_tick.reset_at(tokio::time::Instant::now() + first);
                        inventory_tick.reset();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == self.topic(NodeTopic::Commands) => {
                        self.on_command(&p.payload, conn, client, &mut flight, &sampler, &mut last_inventory);
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(_))) => flight.sent += 1,
                    Ok(ev) => debug!(?ev, "mqtt"),
                    Err(e) => return SessionEnd::Lost(e.to_string()),
                },
                Some(event) = job_events.recv() => {
                    self.queue_report(ReportBody::Job {
                        command_id: event.command_id,
                        job: event.job,
                        status: event.status,
                        progress: event.progress,
                        step: event.step,
                        message: event.message,
                        error: event.error,
                    });
                    if connected {
                        self.flush_reports(client, &mut flight);
                    }
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

    /// A command from the controller: parse, dispatch, and ack.
    fn on_command(
        &mut self,
        payload: &[u8],
        conn: u64,
        client: &AsyncClient,
        flight: &mut Flight,
        sampler: &Sampler,
        last_inventory: &mut Option<Inventory>,
    ) {
        let cmd: Command = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                // Without a command id there is nothing to ack; the controller resends.
                let id = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v.get("command_id")?.as_str().map(String::from));
                warn!(error = %e, command = ?id, "malformed command refused");
                if let Some(id) = id {
                    self.ack(
                        &id,
                        Ack {
                            accepted: false,
                            reason: Some(format!("malformed command: {e}")),
                        },
                    );
                    self.flush_reports(client, flight);
                }
                return;
            }
        };
        info!(command = %cmd.command_id, kind = %cmd.kind, "command received");
        let ack = match cmd.kind {
            CommandKind::Install | CommandKind::Deprovision | CommandKind::Cancel => {
                self.runner.handle(&cmd)
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
            CommandKind::Reboot | CommandKind::Poweroff => Ack {
                accepted: false,
                reason: Some(format!(
                    "{} is not supported by this agent version",
                    cmd.kind
                )),
            },
        };
        if !ack.accepted {
            warn!(command = %cmd.command_id, reason = ?ack.reason, "command refused");
        }
        self.ack(&cmd.command_id, ack);
        self.flush_reports(client, flight);
    }

    fn ack(&mut self, command_id: &str, ack: Ack) {
        self.queue_report(ReportBody::Ack {
            command_id: command_id.to_string(),
            accepted: ack.accepted,
            reason: ack.reason,
        });
    }

    /// Numbers a report and queues it for the broker.
    fn queue_report(&mut self, body: ReportBody) {
        if self.pending.len() >= MAX_PENDING_REPORTS {
            // Only progress may go: a newer one supersedes it. Acks, `started`,
            // `complete` and `failed` are never dropped.
            let is_progress = |r: &Report| {
                matches!(
                    r.body,
                    ReportBody::Job {
                        status: JobStatus::Progress,
                        ..
                    }
                )
            };
            match self.pending.iter().position(is_progress) {
                Some(i) => {
                    self.pending.remove(i);
                }
                None if matches!(
                    body,
                    ReportBody::Job {
                        status: JobStatus::Progress,
                        ..
                    }
                ) =>
                {
                    warn!("report queue full of job results; progress report dropped");
                    return;
                }
                None => warn!("report queue full of job results; keeping this one too"),
            }
        }
        let seq = match self.state.next_seq() {
            Ok(seq) => seq,
            Err(e) => {
                warn!(error = %e, "cannot persist the report sequence; report dropped");
                return;
            }
        };
        self.pending.push_back(Report {
            session: self.state.session().to_string(),
            seq,
            ts: Timestamp::from(SystemTime::now()),
            body,
            node_id: Some(self.node_id.clone()),
        });
    }

    /// Hands queued reports to rumqttc, in order, while it has room.
    fn flush_reports(&mut self, client: &AsyncClient, flight: &mut Flight) {
        let topic = self.topic(NodeTopic::Reports);
        while let Some(report) = self.pending.front() {
            let body = serde_json::to_vec(report).unwrap_or_default();
            if !publish(client, flight, topic.clone(), QoS::AtLeastOnce, false, body) {
                break;
            }
            self.pending.pop_front();
        }
    }

    fn publish_birth(&self, conn: u64, client: &AsyncClient, flight: &mut Flight) {
        let birth = Status::Birth(Birth {
            conn,
            session: self.state.session().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: self.hostname.clone(),
            boot_id: self.boot_id.clone(),
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

/// Queues a publish; false when rumqttc's request queue is full.
fn publish(
    client: &AsyncClient,
    flight: &mut Flight,
    topic: String,
    qos: QoS,
    retain: bool,
    body: Vec<u8>,
) -> bool {
    match client.try_publish(topic.clone(), qos, retain, body) {
        Ok(()) => {
            flight.requested += 1;
            true
        }
        Err(e) => {
            warn!(%topic, error = %e, "publish dropped: MQTT request queue is full");
            false
        }
    }
}
