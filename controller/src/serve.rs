//! `metalbus serve`: wires the store, the embedded broker, the engine, the MQTT bus, the
//! HTTP API and (optionally) a local agent, then runs until shutdown.
//!
//! Start-up order matters: the store is opened first (a second controller on the same
//! data dir fails here), then the sockets are bound, then the broker subscription is
//! confirmed; only then is systemd told READY=1. The addresses actually bound (useful
//! with port 0) are written to `DATA_DIR/listen.json`.
//!
//! Shutdown runs the other way: the local agent stops (its offline status still goes
//! through the engine), then HTTP and the bus stop taking work, the engine applies what
//! it has and flushes the store, and the bus publishes what the engine said last.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use metalbus_link::{BrokerUrl, Clock, Endpoint, SystemClock};
use metalbus_protocol::topic::Topics;
use metalbus_protocol::NodeId;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::api::{self, auth, AppState};
use crate::bus::Bus;
use crate::config::ControllerConfig;
use crate::engine::{Engine, EngineConfig, Outlets};
use crate::intake::Intake;
use crate::live::LiveFeed;
use crate::publish::PublishQueue;
use crate::security::{self, Keyring};
use crate::store::{Store, StoreReader};
use crate::telemetry::Telemetry;
use crate::wake;
use crate::{broker, door};

/// How long start-up waits for the broker subscription before giving up.
const BROKER_WAIT: Duration = Duration::from_secs(15);
/// How often heartbeats are made durable (DESIGN section 4's `metrics_flush`).
const METRICS_FLUSH: Duration = Duration::from_secs(10);
/// Longest wait for the local agent's offline status to reach the store at shutdown.
const LOCAL_AGENT_GRACE: Duration = Duration::from_secs(2);

/// The addresses the controller listens on, as written to `listen.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Listening {
    /// The embedded broker; `None` with an external one.
    pub mqtt: Option<SocketAddr>,
    pub http: SocketAddr,
    /// The API's base URL (`https://` with `[http] tls`).
    pub api: String,
    /// The broker the controller and a local agent use.
    pub broker: String,
}

/// Runs the controller until `shutdown` resolves. `on_ready` is called once everything
/// is up (the binary sends sd_notify READY=1 there).
pub async fn run(
    mut cfg: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    cfg.check()?;
    anyhow::ensure!(
        !cfg.local_agent || local::AVAILABLE,
        "this metalbus was built without the local-agent feature; --local-agent is not available"
    );
    let topics = Topics::new(cfg.prefix.clone())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let telemetry = Arc::new(Telemetry::new());
    // Every label value known up front is exported at 0, so a series exists (and
    // `rate()` works) before its first event.
    telemetry.start_at_zero(
        &crate::ingest::RejectReason::ALL.map(crate::ingest::RejectReason::as_str),
        &metalbus_protocol::lifecycle::NodeState::ALL
            .into_iter()
            .filter(|s| cfg.lifecycle.timeouts.of(*s).is_some())
            .map(metalbus_protocol::lifecycle::NodeState::as_str)
            .collect::<Vec<_>>(),
    );

    // Absolute from here on: the local agent runs its steps from a dir under it, and
    // the logs should name the real place.
    cfg.data_dir = std::path::absolute(&cfg.data_dir)
        .with_context(|| format!("resolving the data dir {}", cfg.data_dir.display()))?;
    prepare_data_dir(&cfg.data_dir)?;
    let mut store = Store::open(&cfg.data_dir.join("metalbus.redb"), telemetry.clone())
        .context("is another metalbus serve running on this data dir?")?;
    if auth::ensure_admin_token(&mut store, &cfg.data_dir, clock.now())? {
        info!(path = %cfg.data_dir.join("admin.token").display(), "generated the admin token");
    }
    let identity = security::load_identity(&cfg.data_dir)?;
    if security::ensure_enroll_token(&mut store, &cfg.data_dir, &identity, clock.now())? {
        info!(path = %cfg.data_dir.join(security::ENROLL_TOKEN_FILE).display(), "generated the fleet enrollment token");
    }
    let keys = Keyring::default();

    // The embedded broker, unless an external one is configured: rumqttd on an internal
    // loopback port that only the front door and our own client may log in to, and the
    // front door on the configured address (DESIGN section 11).
    let (broker_url, mqtt_addr, bus_url, bus_login, embedded) = match &cfg.broker {
        Some(url) => {
            info!(broker = %url, ca = ?cfg.broker_ca, "using an external MQTT broker");
            // With Mosquitto accounts kept by us, we log in with our own password.
            let password = match &cfg.mosquitto_dir {
                Some(_) => security::broker_password(&cfg.data_dir)?,
                None => String::new(),
            };
            let login = (crate::acl::CONTROLLER_USER.to_string(), password);
            (url.clone(), None, url.clone(), login, None)
        }
        None => {
            let public = tokio::net::TcpListener::bind(cfg.mqtt_listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen for MQTT on {} (is another broker running?)",
                        cfg.mqtt_listen
                    )
                })?;
            let password = security::random_secret();
            let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let started = broker::start(
                loopback,
                &topics,
                door::INTERNAL_USER,
                &password,
                cfg.mqtt_max_monitors,
            )?;
            let addr = public.local_addr()?;
            let url = BrokerUrl {
                tls: cfg.mqtt_tls,
                host: connect_host(addr),
                port: addr.port(),
            };
            let bus_url = BrokerUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: started.internal.port(),
            };
            let login = (door::INTERNAL_USER.to_string(), password.clone());
            (
                url,
                Some(addr),
                bus_url,
                login,
                Some((public, started.links)),
            )
        }
    };
    let http = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", cfg.http_listen))?;
    let http_addr = http.local_addr()?;
    // One certificate for both listeners, from [tls] or the controller's own CA.
    let tls = if cfg.mqtt_tls || cfg.http_tls {
        let mut listening = vec![http_addr];
        listening.extend(mqtt_addr);
        let identity_der = std::fs::read(cfg.data_dir.join(security::IDENTITY_FILE))?;
        Some(crate::tls::server_config(
            &cfg.data_dir,
            &identity_der,
            &cfg.tls,
            &listening,
        )?)
    } else {
        None
    };
    for (what, addr, on) in [
        ("MQTT", mqtt_addr, cfg.mqtt_tls),
        ("HTTP", Some(http_addr), cfg.http_tls),
    ] {
        if let Some(addr) = addr.filter(|a| !a.ip().is_loopback() && !on) {
            warn!(%addr, "serving plain {what} on a non-loopback address (--insecure-plain): anyone on the network can read it");
        }
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let (publish, outbound) = PublishQueue::new();
    let (engine_tx, engine_rx) = mpsc::channel(4096);
    let api_engine = engine_tx.clone();
    let (wake_tx, wake_rx) = mpsc::unbounded_channel();
    let live = LiveFeed::default();
    // The engine takes the store's one write handle; everyone else reads.
    let reader = store.reader();
    let engine = Engine::new(
        store,
        Outlets {
            publish: publish.clone(),
            wake: wake_tx,
            live: live.clone(),
        },
        telemetry.clone(),
        clock.clone(),
        EngineConfig {
            topics: topics.clone(),
            metrics_flush: METRICS_FLUSH,
            controller: Arc::new(cfg.clone()),
            identity: identity.clone(),
            keyring: keys.clone(),
        },
    )?;
    // Under systemd with `WatchdogSec=`: fed only while the engine loop turns.
    metalbus_link::watchdog::feed(engine.progress(), "engine");
    let engine_task = engine
        .spawn(engine_rx)
        .context("starting the engine thread")?;
    tokio::spawn(wake::run(
        cfg.wake.broadcast,
        wake_rx,
        engine_tx.downgrade(),
    ));
    // The door and the bus feed the engine through one intake; when both have let go
    // the engine's input closes and it stops.
    let intake = Arc::new(Intake::new(
        topics.clone(),
        telemetry.clone(),
        engine_tx,
        publish,
        keys.clone(),
    ));

    if let Some(dir) = &cfg.mosquitto_dir {
        let accounts = crate::mosquitto::Accounts {
            dir: dir.clone(),
            topics: topics.clone(),
            keys: keys.clone(),
            controller_password: bus_login.1.clone(),
            reload: cfg.mosquitto_reload.clone(),
        };
        accounts.write()?;
        tokio::spawn(accounts.run(stop_rx.clone()));
    }
    // With the embedded broker the door hands nodes' messages to intake; the bus reads
    // them from an external broker.
    let agent_topics = embedded.is_none();
    if let Some((listener, links)) = embedded {
        let door = door::Door {
            topics: topics.clone(),
            keys: keys.clone(),
            store: reader.clone(),
            links,
            telemetry: telemetry.clone(),
            clients: Arc::new(tokio::sync::Semaphore::new(cfg.mqtt_max_connections)),
            monitors: Arc::new(tokio::sync::Semaphore::new(cfg.mqtt_max_monitors)),
            intake: intake.clone(),
            interest: door::Interest::default(),
        };
        let acceptor = tls
            .clone()
            .filter(|_| cfg.mqtt_tls)
            .map(tokio_rustls::TlsAcceptor::from);
        door::spawn(
            listener.into_std()?,
            Arc::new(door),
            acceptor,
            stop_rx.clone(),
        )?;
    }
    let connected = Arc::new(AtomicBool::new(false));
    let endpoint = Endpoint::new(bus_url, cfg.broker_ca.as_deref())?;
    let bus = Bus {
        endpoint,
        topics: topics.clone(),
        telemetry: telemetry.clone(),
        intake,
        agent_topics,
        keys,
        login: bus_login,
        connected: connected.clone(),
    };
    let (ready_tx, ready_rx) = oneshot::channel();
    let bus_task = tokio::spawn(bus.run(outbound, stop_rx.clone(), ready_tx));
    tokio::time::timeout(BROKER_WAIT, ready_rx)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the MQTT broker at {broker_url} did not accept our subscription within {BROKER_WAIT:?}"
            )
        })?
        .map_err(|_| anyhow::anyhow!("the MQTT client stopped during start-up"))?;

    let state = AppState {
        store: reader.clone(),
        telemetry,
        mqtt_connected: connected,
        engine: api_engine,
        config: Arc::new(cfg.clone()),
        clock: clock.clone(),
        live,
        stopping: stop_rx.clone(),
        anchor: identity.anchor(),
        streams: Arc::new(tokio::sync::Semaphore::new(cfg.http_max_event_streams)),
    };
    let mut http_stop = stop_rx.clone();
    let http_tls = tls.filter(|_| cfg.http_tls);
    let http_task = tokio::spawn(api::serve(http, state, http_tls, async move {
        let _ = http_stop.changed().await;
    }));

    let local_agent = if cfg.local_agent {
        Some(local::start(&cfg, &broker_url)?)
    } else {
        None
    };

    write_listening(
        &cfg.data_dir,
        &Listening {
            mqtt: mqtt_addr,
            http: http_addr,
            api: format!(
                "{}://{}:{}",
                if cfg.http_tls { "https" } else { "http" },
                connect_host(http_addr),
                http_addr.port()
            ),
            broker: broker_url.to_string(),
        },
    )?;
    info!(broker = %broker_url, http = %http_addr, data_dir = %cfg.data_dir.display(), "metalbus controller ready");
    on_ready();

    shutdown.await;
    info!("shutting down");
    if let Some(agent) = local_agent {
        let id = agent.stop().await;
        wait_offline(&reader, &id).await;
    }
    let _ = stop_tx.send(true);
    match http_task.await {
        Ok(Err(e)) => warn!(error = %e, "HTTP server error"),
        Err(e) => warn!(error = %e, "HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    let _ = bus_task.await;
    engine_task.stopped().await;
    info!("controller stopped");
    Ok(())
}

/// Creates the data dir private (0700). An existing dir keeps its mode (that is the
/// operator's choice), with a warning when others may read or write it: it holds the
/// store, the tokens and the identity key.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(dir = %dir.display(), mode = format!("{mode:o}"), "the data dir is open to other users; chmod 700 it");
        }
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting data dir {}", dir.display()))
}

fn write_listening(dir: &Path, l: &Listening) -> anyhow::Result<()> {
    let path = dir.join("listen.json");
    let tmp = dir.join("listen.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(l)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Waits (bounded) until the store shows `id` offline.
async fn wait_offline(store: &StoreReader, id: &NodeId) {
    let deadline = Instant::now() + LOCAL_AGENT_GRACE;
    while Instant::now() < deadline {
        match store.find_node(id.as_str()) {
            Ok(Some(n)) if n.online => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    warn!(node = %id, "the local agent's offline status did not arrive in time");
}

/// The address a local client uses to reach a listener: an unspecified address
/// (0.0.0.0 or ::) is reached on loopback.
fn connect_host(listen: SocketAddr) -> String {
    match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".into(),
        ip if ip.is_unspecified() => "::1".into(),
        ip => ip.to_string(),
    }
}

/// `--local-agent`: an agent for this host inside the controller process.
#[cfg(feature = "local-agent")]
mod local {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use anyhow::Context;
    use metalbus_agent::config::AgentConfig;
    use metalbus_agent::daemon::Agent;
    use metalbus_link::BrokerUrl;
    use metalbus_protocol::NodeId;
    use tokio::sync::watch;
    use tracing::{info, warn};

    use crate::config::ControllerConfig;

    pub const AVAILABLE: bool = true;

    /// The running local agent.
    pub struct LocalAgent {
        id: NodeId,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl LocalAgent {
        /// Stops it cleanly (its offline status still goes through the engine); returns
        /// its node id.
        pub async fn stop(self) -> NodeId {
            let _ = self.stop.send(true);
            if let Ok(Err(e)) = self.task.await {
                warn!(error = %e, "local agent stopped with an error");
            }
            self.id
        }
    }

    pub fn start(cfg: &ControllerConfig, broker: &BrokerUrl) -> anyhow::Result<LocalAgent> {
        let state_dir = cfg.data_dir.join("local-agent");
        let agent_cfg = AgentConfig {
            broker: broker.clone(),
            broker_ca: cfg.broker_ca.clone(),
            steps_dir: install_steps(&state_dir)?,
            state_dir,
            prefix: cfg.prefix.clone(),
            // The demo agent shares the controller's host: it never reboots it.
            reboot_command: Vec::new(),
            poweroff_command: Vec::new(),
            // It enrolls like any agent, with the fleet token, on its first start.
            enroll_token_file: Some(cfg.data_dir.join(crate::security::ENROLL_TOKEN_FILE)),
            ..AgentConfig::default()
        };
        let agent = Agent::prepare(agent_cfg).context("starting the local agent")?;
        let id = agent.node_id().clone();
        info!(node = %id, "running a local agent for this host");
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(agent.run(stop_rx));
        Ok(LocalAgent { id, stop, task })
    }

    /// The step scripts Metalbus ships, built into the binary so that `--local-agent` can
    /// run the demo plan on a laptop with nothing installed.
    const SHIPPED_STEPS: &[(&str, &str)] = &[
        ("demo-step", include_str!("../../systemd/steps.d/demo-step")),
        (
            "write-image",
            include_str!("../../systemd/steps.d/write-image"),
        ),
    ];

    /// Writes the shipped scripts into `dir/steps.d` (mode 0755) and returns that dir.
    fn install_steps(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
        let steps = dir.join("steps.d");
        std::fs::create_dir_all(&steps).with_context(|| format!("creating {}", steps.display()))?;
        for (name, body) in SHIPPED_STEPS {
            let path = steps.join(name);
            std::fs::write(&path, body)
                .and_then(|()| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                })
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(steps)
    }
}

/// Built without the `local-agent` feature: `--local-agent` is refused.
#[cfg(not(feature = "local-agent"))]
mod local {
    use metalbus_link::BrokerUrl;
    use metalbus_protocol::NodeId;

    use crate::config::ControllerConfig;

    pub const AVAILABLE: bool = false;

    pub enum LocalAgent {}

    impl LocalAgent {
        pub async fn stop(self) -> NodeId {
            match self {}
        }
    }

    /// Never called: `run` refuses `--local-agent` first.
    pub fn start(_: &ControllerConfig, _: &BrokerUrl) -> anyhow::Result<LocalAgent> {
        anyhow::bail!("no local agent in this build")
    }
}
