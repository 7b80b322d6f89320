//! What the engine benches share: sizes from the environment, a birth, and the real
//! engine on a redb file on the build's disk, on a thread of its own as `metalbus
//! serve` runs it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use metalbus::config::ControllerConfig;
use metalbus::engine::{Engine, EngineConfig, EngineHandle, Input, Outlets};
use metalbus::live::LiveFeed;
use metalbus::publish::PublishQueue;
use metalbus::store::Store;
use metalbus::telemetry::Telemetry;
use metalbus_link::SystemClock;
use metalbus_protocol::status::Status;
use metalbus_protocol::topic::Topics;
use metalbus_protocol::NodeId;
use tokio::sync::mpsc;

/// `name` from the environment, or `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A birth of `id` in `session`, metrics every `interval_s` seconds.
pub fn birth(id: NodeId, session: String, interval_s: u32) -> Input {
    let status: Status = serde_json::from_value(serde_json::json!({
        "online": true, "conn": 1, "session": session, "agent_version": "bench",
        "hostname": id.to_string(), "boot_id": "b", "metrics_interval_s": interval_s,
        "ts": "2026-01-01T00:00:00Z",
    }))
    .expect("valid birth");
    Input::Status { id, status }
}

/// The engine on a store at `path` (call it inside a tokio runtime): its input queue of
/// `queue` places and its handle. What it publishes is read and dropped.
pub fn start_engine(
    path: &Path,
    telemetry: Arc<Telemetry>,
    queue: usize,
) -> (mpsc::Sender<Input>, EngineHandle) {
    let store = Store::open(path, telemetry.clone()).expect("store");
    let (publish, mut outbound) = PublishQueue::new();
    tokio::spawn(async move { while outbound.recv().await.is_some() {} });
    let (wake, _wakes) = mpsc::unbounded_channel();
    let engine = Engine::new(
        store,
        Outlets {
            publish,
            wake,
            live: LiveFeed::default(),
        },
        telemetry,
        Arc::new(SystemClock::new()),
        EngineConfig {
            topics: Topics::new(metalbus_protocol::DEFAULT_PREFIX.to_string()).expect("topics"),
            metrics_flush: Duration::from_secs(10),
            controller: Arc::new(ControllerConfig::default()),
            identity: metalbus::security::ephemeral_identity(),
            keyring: Default::default(),
        },
    )
    .expect("engine");
    let (tx, rx) = mpsc::channel(queue);
    let handle = engine.spawn(rx).expect("engine thread");
    (tx, handle)
}
