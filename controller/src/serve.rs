//! `metalbus serve`: wires the store, the embedded broker, the engine, the MQTT bus, the
//! HTTP API and (optionally) a local agent, then runs until shutdown.
//!
//! Start-up order matters: the store is opened first (a second controller on the same
//! data dir fails here), then the sockets are bound, then the broker subscription is
//! confirmed; only then is systemd told READY=1.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metalbus_agent::config::AgentConfig;
use metalbus_agent::daemon::Agent;
use metalbus_agent::link::BrokerUrl;
use metalbus_protocol::topic::Topics;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::api::{self, auth, AppState};
use crate::broker;
use crate::bus::Bus;
use crate::clock::{Clock, SystemClock};
use crate::config::ControllerConfig;
use crate::engine::{Engine, EngineConfig};
use crate::publish::PublishQueue;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// How long start-up waits for the broker subscription before giving up.
const BROKER_WAIT: Duration = Duration::from_secs(15);
/// Time for the local agent's offline status to reach the engine at shutdown.
const LOCAL_AGENT_GRACE: Duration = Duration::from_millis(300);
/// How often heartbeats are made durable (DESIGN section 4's `metrics_flush`).
const METRICS_FLUSH: Duration = Duration::from_secs(10);

/// Runs the controller until `shutdown` resolves. `on_ready` is called once everything
/// is up (the binary sends sd_notify READY=1 there).
pub async fn run(
    cfg: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let topics = Topics::new(cfg.prefix.clone())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let telemetry = Arc::new(Telemetry::new());

    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting data dir {}", cfg.data_dir.display()))?;
    let store_path = cfg.data_dir.join("metalbus.redb");
    let store = Store::open(&store_path, telemetry.clone())
        .context("is another metalbus serve running on this data dir?")?;
    if auth::ensure_admin_token(&store, &cfg.data_dir, clock.now())? {
        info!(path = %cfg.data_dir.join("admin.token").display(), "generated the admin token");
    }

    broker::start(cfg.mqtt_listen, &topics)?;
    let http = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", cfg.http_listen))?;
    let broker_url = BrokerUrl {
        tls: false,
        host: connect_host(cfg.mqtt_listen),
        port: cfg.mqtt_listen.port(),
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let (publish, outbound) = PublishQueue::new();
    let (engine_tx, engine_rx) = mpsc::channel(4096);
    let engine = Engine::new(
        store.clone(),
        publish.clone(),
        telemetry.clone(),
        clock.clone(),
        EngineConfig {
            topics: topics.clone(),
            metrics_flush: METRICS_FLUSH,
        },
    )?;
    let engine_task = tokio::spawn(engine.run(engine_rx, stop_rx.clone()));

    let connected = Arc::new(AtomicBool::new(false));
    let bus = Bus {
        url: broker_url.clone(),
        topics: topics.clone(),
        telemetry: telemetry.clone(),
        engine: engine_tx,
        publish,
        connected: connected.clone(),
    };
    let (ready_tx, ready_rx) = oneshot::channel();
    let bus_task = tokio::spawn(bus.run(outbound, stop_rx.clone(), ready_tx));
    tokio::time::timeout(BROKER_WAIT, ready_rx)
        .await
        .map_err(|_| anyhow::anyhow!("the MQTT broker at {broker_url} did not accept our subscription within {BROKER_WAIT:?}"))?
        .map_err(|_| anyhow::anyhow!("the MQTT client stopped during start-up"))?;

    let state = AppState {
        store: store.clone(),
        telemetry,
        mqtt_connected: connected,
    };
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(api::serve(http, state, async move {
        let _ = http_stop.changed().await;
    }));

    let agent_task = if cfg.local_agent {
        let agent_cfg = AgentConfig {
            broker: broker_url.clone(),
            state_dir: cfg.data_dir.join("local-agent"),
            prefix: cfg.prefix.clone(),
            ..AgentConfig::default()
        };
        let agent = Agent::prepare(agent_cfg).context("starting the local agent")?;
        info!(node = %agent.node_id(), "running a local agent for this host");
        let (agent_stop, agent_stop_rx) = watch::channel(false);
        Some((agent_stop, tokio::spawn(agent.run(agent_stop_rx))))
    } else {
        None
    };

    info!(
        mqtt = %cfg.mqtt_listen,
        http = %cfg.http_listen,
        data_dir = %cfg.data_dir.display(),
        "metalbus controller ready"
    );
    on_ready();

    shutdown.await;
    info!("shutting down");
    // The local agent goes first, and its clean offline status gets a moment to travel
    // broker → bus → engine before those stop.
    if let Some((agent_stop, task)) = agent_task {
        let _ = agent_stop.send(true);
        if let Ok(Err(e)) = task.await {
            warn!(error = %e, "local agent stopped with an error");
        }
        tokio::time::sleep(LOCAL_AGENT_GRACE).await;
    }
    let _ = stop_tx.send(true);
    match http_task.await {
        Ok(Err(e)) => warn!(error = %e, "HTTP server error"),
        Err(e) => warn!(error = %e, "HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    let _ = bus_task.await;
    let _ = engine_task.await;
    info!("controller stopped");
    Ok(())
}

/// The address a local client uses to reach a listener: an unspecified address
/// (0.0.0.0 or ::) is reached on loopback.
fn connect_host(listen: std::net::SocketAddr) -> String {
    match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".into(),
        ip if ip.is_unspecified() => "::1".into(),
        ip => ip.to_string(),
    }
}
