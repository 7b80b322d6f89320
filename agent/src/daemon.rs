//! `metalbus-agent run`: the I/O around the agent's [`Core`]. One loop per connection
//! waits for the next [`Event`] (an MQTT packet, a job event, a finished power action, a
//! timer, a collected sample, shutdown), turns it into a core [`Input`], and carries
//! out what the core answers: its publishes go into rumqttc's queue, its [`Action`]s
//! start a power action or an inventory read.
//!
//! Every connection attempt bumps the persisted `conn` counter and gets its own client id
//! and Will, so a Will from a dead connection always carries an older `conn` than the
//! birth that replaced it (DESIGN section 3). The loop reconnects by the [`Reconnect`]
//! policy (a CONNACK wait that grows while attempts fail, full jitter on the first
//! attempt after a lost connection) and stops cleanly on shutdown: the `shutdown`
//! status, acknowledged by the broker, then DISCONNECT (which drops the Will).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metalbus_link::watchdog::Progress;
use metalbus_link::{Endpoint, Reconnect, SystemClock};
use metalbus_protocol::enroll::EnrollToken;
use metalbus_protocol::proof::NodeKey;
use metalbus_protocol::topic::{NodeTopic, Topics};
use metalbus_protocol::NodeId;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rumqttc::{AsyncClient, ConnectionError, EventLoop, LastWill, Outgoing, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::collectors::identity;
use crate::config::{self, AgentConfig};
use crate::core::{self, Action, Core, DeliveryStats, HostFacts, Input, Publisher, Qos};
use crate::credential::{self, Credential};
use crate::host::{Host, RealHost};
use crate::jobs::{self, JobEvent, JobRunner, Jobs};
use crate::outbox::AgentStore;
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

/// A prepared agent: identity resolved, store open, collectors primed.
pub struct Agent {
    cfg: AgentConfig,
    /// The broker, with its TLS settings built once.
    endpoint: Endpoint,
    host: Arc<dyn Host>,
    core: Core,
    job_events: mpsc::UnboundedReceiver<JobEvent>,
    power_done: mpsc::UnboundedSender<PowerDone>,
    power_results: mpsc::UnboundedReceiver<PowerDone>,
    link: Link,
}

/// How the agent reaches the broker again: the policy, its random draws and its counters.
struct Link {
    reconnect: Reconnect,
    rng: StdRng,
    stats: Arc<ConnectStats>,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            reconnect: Reconnect::default(),
            rng: StdRng::from_entropy(),
            stats: Arc::default(),
        }
    }
}

/// Connection counters of one agent, for `simulate`'s stats file and the fleet
/// benchmark: a start or a restart that converges shows as few attempts per agent.
#[derive(Debug, Default)]
pub struct ConnectStats {
    /// Connection attempts, each with a `conn` of its own.
    pub attempts: AtomicU64,
    /// Attempts the broker accepted (CONNACK).
    pub connected: AtomicU64,
    /// Attempts given up because the CONNACK did not come within the wait.
    pub timeouts: AtomicU64,
}

/// Everything one connection's loop waits for.
enum Event {
    Shutdown,
    Mqtt(Result<rumqttc::Event, ConnectionError>),
    Job(JobEvent),
    PowerDone(PowerDone),
    OutboxTick,
    MetricsTick,
    InventoryTick,
    Collected(Collected),
}

/// How one connection ended.
enum SessionEnd {
    Shutdown,
    /// The connection was up (CONNACK) and is gone.
    Lost(String),
    /// No CONNACK: the broker was unreachable, too slow (`Network timeout`) or the TLS
    /// handshake failed.
    Failed(String),
    /// The broker refused our login.
    Refused(rumqttc::ConnectReturnCode),
}

/// Counts publish requests against the broker's answers, so a clean stop knows when its
/// last message is through.
#[derive(Default)]
struct Flight {
    requested: u64,
    sent: u64,
}

/// The core's [`Publisher`] over rumqttc's request queue: it never waits.
struct MqttOut<'a> {
    client: &'a AsyncClient,
    flight: &'a mut Flight,
}

impl Publisher for MqttOut<'_> {
    fn publish(&mut self, topic: String, qos: Qos, retain: bool, payload: Vec<u8>) -> bool {
        let qos = match qos {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
        };
        let ok = self.client.try_publish(topic, qos, retain, payload).is_ok();
        if ok {
            self.flight.requested += 1;
        }
        ok
    }
}

/// Runs store work off the async worker when the runtime allows it: an fsync must not
/// hold up other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The broker endpoint for `cfg`: an `mqtts://` broker is checked against the
/// controller this agent enrolled with (or its token names), unless a CA file is given.
pub fn endpoint(cfg: &AgentConfig, state_dir: &std::path::Path) -> anyhow::Result<Endpoint> {
    Ok(
        match credential::anchor(state_dir, || cfg.enroll_token())? {
            Some(anchor) => Endpoint::pinned(cfg.broker.clone(), cfg.broker_ca.as_deref(), anchor)?,
            None => Endpoint::new(cfg.broker.clone(), cfg.broker_ca.as_deref())?,
        },
    )
}

impl Prepared {
    /// An agent from parts (`simulate` passes an invented host and job runner): the
    /// stored credential, or else the configured enrollment token, which is then needed.
    pub fn new(
        cfg: AgentConfig,
        endpoint: Endpoint,
        node_id: NodeId,
        host: Arc<dyn Host>,
        jobs: Box<dyn Jobs>,
        job_events: mpsc::UnboundedReceiver<JobEvent>,
    ) -> anyhow::Result<Prepared> {
        let enrollment = match credential::load(&cfg.state_dir)? {
            Some(cred) => {
                anyhow::ensure!(
                    cred.node_id == node_id,
                    "{} is for node {}, but this agent is node {node_id}; delete the file and \
                     enroll again with a token",
                    credential::path(&cfg.state_dir).display(),
                    cred.node_id
                );
                Enrollment::Enrolled(cred.key)
            }
            None => Enrollment::Pending(cfg.enroll_token()?.with_context(|| {
                format!(
                    "node {node_id} is not enrolled yet: give it an enrollment token with \
                     --enroll-token-file FILE (the controller writes one to \
                     DATA_DIR/enroll.token), --enroll-token, METALBUS_ENROLL_TOKEN or \
                     enroll_token_file in the config"
                )
            })?),
        };
        Ok(Prepared {
            cfg,
            endpoint,
            node_id,
            host,
            jobs,
            job_events,
            stats: Arc::default(),
            enrollment,
            link: Link::default(),
            progress: Progress::new(),
        })
    }

    /// What the agent's task beats while it runs: give it to
    /// `metalbus_link::watchdog::feed`.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Delivery counters, live once the agent runs.
    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.stats.clone()
    }

    /// Connection counters, live once the agent runs.
    pub fn connect_stats(&self) -> Arc<ConnectStats> {
        self.link.stats.clone()
    }

    /// Draws the reconnect jitter from `seed` instead of the system's entropy, so that a
    /// simulation with the same seed spreads its agents the same way.
    pub fn seed_reconnect(&mut self, seed: u64) {
        self.link.rng = StdRng::seed_from_u64(seed);
    }

    /// Enrolls first when needed (storing the credential), then runs the agent until
    /// `shutdown` turns true. Its progress beats while the task is polled: a step of the
    /// loop that blocks the thread (a stuck disk, a lock) stops the beats, and with them
    /// the systemd watchdog. Every wait of the loop also waits for shutdown and a timer.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let progress = self.progress.clone();
        tokio::select! {
            result = self.run_inner(shutdown) => result,
            never = progress.beating() => match never {},
        }
    }

    async fn run_inner(self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let key = match &self.enrollment {
            Enrollment::Enrolled(key) => key.clone(),
            Enrollment::Pending(token) => {
                info!(node = %self.node_id, broker = %self.cfg.broker, token = %token.id, "enrolling");
                let topics = Topics::new(self.cfg.prefix.clone())?;
                let hostname = self.host.hostname();
                let Some(done) = metalbus_link::enroll::enroll(
                    &self.endpoint,
                    &topics,
                    &self.node_id,
                    &hostname,
                    token,
                    &mut shutdown,
                )
                .await
                else {
                    return Ok(());
                };
                credential::save(
                    &self.cfg.state_dir,
                    &Credential {
                        node_id: self.node_id.clone(),
                        key: done.key.clone(),
                        identity: done.identity,
                    },
                )?;
                done.key
            }
        };
        Agent::assemble(self, key)?.run(shutdown).await
    }
}

/// An agent checked and ready to start, enrolled or holding the token to enroll with.
pub struct Prepared {
    cfg: AgentConfig,
    endpoint: Endpoint,
    node_id: NodeId,
    host: Arc<dyn Host>,
    jobs: Box<dyn Jobs>,
    job_events: mpsc::UnboundedReceiver<JobEvent>,
    stats: Arc<DeliveryStats>,
    enrollment: Enrollment,
    link: Link,
    progress: Progress,
}

/// Whether the node has its key yet.
enum Enrollment {
    Enrolled(NodeKey),
    /// Not yet: enroll with this token first.
    Pending(EnrollToken),
}

impl Agent {
    /// Everything that can fail before connecting, for this machine.
    pub fn prepare(cfg: AgentConfig) -> anyhow::Result<Prepared> {
        config::check(&cfg)?;
        let node_id = identity::node_id(cfg.node_id.as_deref(), &cfg.root)
            .context("cannot determine this node's id; set node_id in the config")?;
        let host = Arc::new(RealHost::new(cfg.root.clone()));
        let (events_tx, job_events) = mpsc::unbounded_channel();
        let runner = JobRunner::new(node_id.clone(), cfg.steps_dir.clone(), events_tx);
        let endpoint = endpoint(&cfg, &cfg.state_dir)?;
        Prepared::new(cfg, endpoint, node_id, host, Box::new(runner), job_events)
    }

    /// An enrolled agent from parts.
    fn assemble(p: Prepared, key: NodeKey) -> anyhow::Result<Agent> {
        let Prepared {
            cfg,
            endpoint,
            node_id,
            host,
            jobs,
            job_events,
            stats,
            enrollment: _,
            link,
            progress: _,
        } = p;
        let (core, actions) = Core::new(core::Parts {
            node_id,
            topics: Topics::new(cfg.prefix.clone())?,
            store: AgentStore::open(&cfg.state_dir)?,
            jobs,
            key,
            stats,
            clock: Arc::new(SystemClock::new()),
            settings: core::Settings {
                reboot_command: cfg.reboot_command.clone(),
                poweroff_command: cfg.poweroff_command.clone(),
                resend_after: cfg.resend_after,
                metrics_interval: cfg.metrics_interval,
            },
            host: HostFacts {
                hostname: host.hostname(),
                boot_id: host.boot_id(),
            },
        })?;
        for action in actions {
            if let Action::KillLeftovers(job) = action {
                kill_leftovers(&job);
            }
        }
        let (power_done, power_results) = mpsc::unbounded_channel();
        Ok(Agent {
            cfg,
            endpoint,
            host,
            core,
            job_events,
            power_done,
            power_results,
            link,
        })
    }

    pub fn node_id(&self) -> &NodeId {
        self.core.node_id()
    }

    /// Runs until `shutdown` turns true. Returns `Ok` after a clean stop.
    ///
    /// Each attempt takes the next `conn` (persisted first, so it only grows, whatever
    /// becomes of the attempt) and waits for its CONNACK as long as the policy says. An
    /// attempt that times out leaves nothing behind: its reports stay in the outbox
    /// (sent only once connected, resent on every connect until receipted), and its Will,
    /// should the broker still publish it, carries a `conn` older than the next birth.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        info!(node = %self.node_id(), broker = %self.cfg.broker, session = self.core.session(), "agent starting");
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let conn = blocking(|| self.core.next_conn())?;
            let wait = self.link.reconnect.connack_wait();
            let (client, mut eventloop) = self.client(conn, wait);
            self.link.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let end = self
                .session(conn, &client, &mut eventloop, &mut shutdown)
                .await;
            self.core.handle(Input::Disconnected, &mut Discard);
            let delay = match end {
                SessionEnd::Shutdown => {
                    info!(node = %self.node_id(), "agent stopped");
                    return Ok(());
                }
                SessionEnd::Refused(code) => {
                    // Not a network problem: the pause grows to the backoff's cap, as
                    // for an unreachable broker.
                    let delay = self.pause();
                    error!(node = %self.node_id(), ?code, retry_in = ?delay, state = %self.cfg.state_dir.display(),
                        "the broker refused this node's credential (revoked?); to enroll again, delete credential.json in the state dir and start the agent with a new enrollment token");
                    delay
                }
                SessionEnd::Lost(why) => {
                    let delay = self.pause();
                    warn!(node = %self.node_id(), conn, error = %why, retry_in = ?delay, "broker connection lost");
                    delay
                }
                SessionEnd::Failed(why) => {
                    let delay = self.pause();
                    let next_wait = self.link.reconnect.connack_wait();
                    warn!(node = %self.node_id(), conn, error = %why, connack_wait = ?wait, retry_in = ?delay,
                        next_connack_wait = ?next_wait, "could not connect to the broker");
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// The pause before the next attempt, after one that ended other than by shutdown.
    fn pause(&mut self) -> Duration {
        self.link.reconnect.next_delay(&mut self.link.rng)
    }

    /// A client for attempt `conn` that waits `connack_wait` for the broker to accept it.
    fn client(&self, conn: u64, connack_wait: Duration) -> (AsyncClient, EventLoop) {
        let client_id = format!("{}-c{}", self.node_id(), conn);
        let mut opts = self.endpoint.options(&client_id);
        // The user name is the node id and the password derives from the node key, so a
        // broker can bind the connection to the node (DESIGN section 11).
        opts.set_credentials(self.node_id().as_str(), self.core.broker_password());
        match self.core.will(conn) {
            Ok((topic, payload)) => {
                opts.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
            }
            Err(e) => error!(error = %e, "the Last Will did not serialize; connecting without one"),
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        metalbus_link::set_connack_wait(&mut eventloop, connack_wait);
        (client, eventloop)
    }

    /// Hands one input to the core and carries out its answer.
    fn feed(&mut self, input: Input, client: &AsyncClient, flight: &mut Flight, sampler: &Sampler) {
        let mut out = MqttOut { client, flight };
        let core = &mut self.core;
        let actions = blocking(|| core.handle(input, &mut out));
        for action in actions {
            match action {
                Action::RunPower {
                    command_id,
                    action,
                    argv,
                } => power::spawn(
                    self.core.node_id().to_string(),
                    command_id,
                    action,
                    argv,
                    self.power_done.clone(),
                ),
                Action::ReadInventory => sampler.inventory(),
                Action::KillLeftovers(job) => kill_leftovers(&job),
            }
        }
    }

    async fn session(
        &mut self,
        conn: u64,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        shutdown: &mut watch::Receiver<bool>,
    ) -> SessionEnd {
        let mut flight = Flight::default();
        let (sampler, mut collected) = Sampler::new(
            self.host.clone(),
            self.cfg.metrics_interval.max(Duration::from_secs(1)),
        );
        if let Err(end) = self
            .connect(client, eventloop, shutdown, &mut flight, &sampler)
            .await
        {
            return end;
        }
        info!(node = %self.node_id(), conn, "connected to broker");
        let commands = self.core.topic(NodeTopic::Commands);
        let receipts = self.core.topic(NodeTopic::Receipts);
        for topic in [&commands, &receipts] {
            if let Err(e) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                warn!(error = %e, %topic, "could not subscribe");
            }
        }
        // The first sample comes a second after connecting, so its CPU and rate figures
        // span a real interval.
        let now = tokio::time::Instant::now();
        let first = self.cfg.metrics_interval.min(FIRST_METRICS_AFTER);
        let mut metrics_tick = tokio::time::interval_at(now + first, self.cfg.metrics_interval);
        metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inventory_tick =
            tokio::time::interval_at(now + INVENTORY_RECHECK, INVENTORY_RECHECK);
        inventory_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outbox_tick = tokio::time::interval(OUTBOX_TICK);
        outbox_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.feed(Input::Connected { conn }, client, &mut flight, &sampler);
        loop {
            let event = tokio::select! {
                _ = shutdown.changed() => Event::Shutdown,
                e = eventloop.poll() => Event::Mqtt(e),
                Some(e) = self.job_events.recv() => Event::Job(e),
                Some(d) = self.power_results.recv() => Event::PowerDone(d),
                _ = outbox_tick.tick() => Event::OutboxTick,
                _ = metrics_tick.tick() => Event::MetricsTick,
                _ = inventory_tick.tick() => Event::InventoryTick,
                Some(c) = collected.recv() => Event::Collected(c),
            };
            let input = match event {
                Event::Shutdown => {
                    self.stop_cleanly(conn, client, eventloop, &mut flight)
                        .await;
                    return SessionEnd::Shutdown;
                }
                Event::Mqtt(Ok(rumqttc::Event::Incoming(Packet::Publish(p)))) => {
                    if p.topic == commands {
                        Input::Command(p.payload.to_vec())
                    } else if p.topic == receipts {
                        Input::Receipt(p.payload.to_vec())
                    } else {
                        debug!(topic = %p.topic, "message on a topic not subscribed to");
                        continue;
                    }
                }
                Event::Mqtt(Ok(rumqttc::Event::Outgoing(Outgoing::Publish(_)))) => {
                    flight.sent += 1;
                    continue;
                }
                Event::Mqtt(Ok(ev)) => {
                    debug!(?ev, "mqtt");
                    continue;
                }
                Event::Mqtt(Err(e)) => return SessionEnd::Lost(e.to_string()),
                Event::Job(e) => Input::Job(e),
                Event::PowerDone(d) => Input::PowerDone(d),
                Event::OutboxTick => Input::Tick,
                Event::MetricsTick => {
                    sampler.metrics();
                    continue;
                }
                Event::InventoryTick => {
                    sampler.inventory();
                    continue;
                }
                Event::Collected(Collected::Inventory(inv)) => Input::Inventory(inv),
                Event::Collected(Collected::Metrics(sample)) => Input::Metrics(sample),
            };
            self.feed(input, client, &mut flight, &sampler);
        }
    }

    /// Drives one connection attempt to the broker's CONNACK (`Ok`) or to its end. The
    /// attempt (TCP, TLS, CONNECT until CONNACK, within the policy's wait) lives inside
    /// rumqttc's `poll` future, so that one future is kept until it finishes: dropped for
    /// another event, it would drop the attempt, and the next `poll` would start another
    /// with the same client id, Will and `conn`, its wait begun again. Job events and
    /// power results still reach the core meanwhile, which stores the reports in the
    /// outbox and sends nothing until connected.
    async fn connect(
        &mut self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        shutdown: &mut watch::Receiver<bool>,
        flight: &mut Flight,
        sampler: &Sampler,
    ) -> Result<(), SessionEnd> {
        let attempt = eventloop.poll();
        tokio::pin!(attempt);
        let answer = loop {
            let input = tokio::select! {
                _ = shutdown.changed() => return Err(SessionEnd::Shutdown),
                answer = &mut attempt => break answer,
                Some(e) = self.job_events.recv() => Input::Job(e),
                Some(d) = self.power_results.recv() => Input::PowerDone(d),
            };
            self.feed(input, client, flight, sampler);
        };
        match answer {
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                self.link.reconnect.connected();
                self.link.stats.connected.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(other) => Err(SessionEnd::Failed(format!(
                "expected the broker's CONNACK, got {other:?}"
            ))),
            Err(ConnectionError::ConnectionRefused(
                code @ (rumqttc::ConnectReturnCode::BadUserNamePassword
                | rumqttc::ConnectReturnCode::NotAuthorized),
            )) => Err(SessionEnd::Refused(code)),
            Err(e) => {
                if let ConnectionError::NetworkTimeout = e {
                    self.link.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                Err(SessionEnd::Failed(e.to_string()))
            }
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
        let queued = match self.core.stopping(conn) {
            Ok((topic, stop)) => {
                MqttOut { client, flight }.publish(topic, Qos::AtLeastOnce, true, stop)
            }
            Err(e) => {
                error!(error = %e, "the offline status did not serialize");
                false
            }
        };
        if !queued {
            warn!("could not queue the offline status; leaving it to the Will");
            return;
        }
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while flight.sent < flight.requested || eventloop.state.inflight() > 0 {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Outgoing(Outgoing::Publish(_))) => flight.sent += 1,
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
        metalbus_link::disconnect(client, eventloop, Duration::from_secs(1)).await;
    }
}

/// Kills what is left of an interrupted job's processes.
fn kill_leftovers(job: &metalbus_protocol::command::CommandId) {
    let killed = jobs::kill_leftovers(job);
    info!(%job, killed_groups = killed, "killed what was left of the interrupted job");
}

/// A publisher for inputs that publish nothing.
struct Discard;

impl Publisher for Discard {
    fn publish(&mut self, _: String, _: Qos, _: bool, _: Vec<u8>) -> bool {
        false
    }
}

#[cfg(test)]
mod tests;
