//! The embedded MQTT broker (rumqttd), started on its own threads.
//!
//! rumqttd keeps nothing on disk; Metalbus' delivery guarantees live above MQTT
//! (DESIGN section 4), so an in-memory broker is enough for one management box.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use metalbus_link::MAX_PACKET_BYTES;
use metalbus_protocol::topic::{NodeTopic, Topics};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::error;

/// Starts the broker on `listen` and returns the address it listens on (port 0 picks a
/// free port). Fails at once if the address cannot be bound, so a port clash is a clear
/// start-up error rather than a silent thread death. Only `user` with `password` may
/// connect: the front door and the controller's own client.
pub fn start(
    listen: SocketAddr,
    topics: &Topics,
    user: &str,
    password: &str,
) -> anyhow::Result<SocketAddr> {
    // Probe the address first: rumqttd binds inside its own thread and only logs failure.
    let probe = TcpListener::bind(listen).with_context(|| {
        format!("cannot listen for MQTT on {listen} (is another broker running?)")
    })?;
    let listen = probe.local_addr()?;
    drop(probe);
    let mut broker = Broker::new(config(listen, topics, user, password));
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || match broker.start() {
            Ok(()) => error!("embedded MQTT broker stopped"),
            Err(e) => error!(error = %e, "embedded MQTT broker failed"),
        })
        .context("spawning the broker thread")?;
    wait_listening(listen)?;
    Ok(listen)
}

/// rumqttd binds on its own thread; wait until it accepts connections.
fn wait_listening(listen: SocketAddr) -> anyhow::Result<()> {
    let target = SocketAddr::new(
        if listen.ip().is_unspecified() {
            match listen {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            }
        } else {
            listen.ip()
        },
        listen.port(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            anyhow::bail!("the embedded MQTT broker did not start listening on {listen}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn config(listen: SocketAddr, topics: &Topics, user: &str, password: &str) -> Config {
    let server = ServerSettings {
        name: "v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: MAX_PACKET_BYTES,
            max_inflight_count: 500,
            auth: Some(HashMap::from([(user.to_string(), password.to_string())])),
            external_auth: None,
            // Without this rumqttd disconnects a client that publishes to a topic nobody
            // subscribed to (a monitoring topic with no monitor, say).
            dynamic_filters: true,
        },
    };
    // Filters for every Metalbus topic exist from the start, so their messages share one
    // bounded log per kind instead of one log per node.
    let mut filters: Vec<String> = NodeTopic::ALL
        .iter()
        .map(|k| topics.node_filter(*k))
        .collect();
    filters.extend([
        topics.summary(),
        topics.transitions(),
        topics.controller_status(),
    ]);
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 20_000,
            max_outgoing_packet_count: 200,
            // Each filter's log holds at most 4 segments of 1 MiB (an oversized message
            // gets a segment of its own): bounded memory per topic kind.
            max_segment_size: 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: Some(filters),
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..Config::default()
    }
}
