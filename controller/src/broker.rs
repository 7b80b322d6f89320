//! The embedded MQTT broker (rumqttd): its router on its own thread, an internal loopback
//! listener for the controller's own client, and in-process links for the front door.
//!
//! rumqttd keeps nothing on disk; Metalbus' delivery guarantees live above MQTT
//! (DESIGN section 4), so an in-memory broker is enough for one management box.
//!
//! Clients of the fleet never reach a rumqttd socket: the front door ([`crate::door`])
//! owns their sockets and hands each one to the router through a local link
//! ([`Links`]), so a connected agent costs one file descriptor, not three
//! (DECISIONS section 64).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use metalbus_link::MAX_PACKET_BYTES;
use metalbus_protocol::topic::{NodeTopic, Topics};
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::{
    ConnectionSettings, LinkType, Notification, Router, RouterConfig, Server, ServerSettings,
};
use tracing::error;

/// A new session with the router: `(client id, clean session)` to its two halves and
/// the router's CONNACK. Blocks until the router answers, so call it off the async
/// workers (`spawn_blocking`).
pub type Links =
    Arc<dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync>;

/// The running embedded broker.
pub struct Embedded {
    /// The internal listener the controller's own client logs in to.
    pub internal: SocketAddr,
    /// Opens in-process sessions for the front door.
    pub links: Links,
}

/// Starts the router and the internal listener on `listen` (port 0 picks a free port).
/// Fails at once if the address cannot be bound, so a port clash is a clear start-up
/// error rather than a silent thread death. Only `user` with `password` may log in to
/// the internal listener: the controller's own client.
pub fn start(
    listen: SocketAddr,
    topics: &Topics,
    user: &str,
    password: &str,
    max_monitors: usize,
) -> anyhow::Result<Embedded> {
    // Probe the address first: rumqttd binds inside its own thread and only logs failure.
    let probe = TcpListener::bind(listen).with_context(|| {
        format!("cannot listen for MQTT on {listen} (is another broker running?)")
    })?;
    let listen = probe.local_addr()?;
    drop(probe);
    let router_tx = Router::new(0, router_config(topics, max_monitors)).spawn();
    let mut server = Server::new(
        server_settings(listen, user, password),
        router_tx.clone(),
        V4,
    );
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return error!(error = %e, "embedded MQTT broker: no runtime"),
            };
            match runtime.block_on(server.start(LinkType::Remote)) {
                Ok(()) => error!("embedded MQTT broker stopped"),
                Err(e) => error!(error = %e, "embedded MQTT broker failed"),
            }
        })
        .context("spawning the broker thread")?;
    wait_listening(listen)?;
    let links: Links = Arc::new(move |client_id: &str, clean: bool| {
        LinkBuilder::new(client_id, router_tx.clone())
            .clean_session(clean)
            // Without this rumqttd disconnects a client that publishes to a topic nobody
            // subscribed to (a monitoring topic with no monitor, say).
            .dynamic_filters(true)
            .build()
            .map_err(|e| e.to_string())
    });
    Ok(Embedded {
        internal: listen,
        links,
    })
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

fn server_settings(listen: SocketAddr, user: &str, password: &str) -> ServerSettings {
    ServerSettings {
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
            dynamic_filters: true,
        },
    }
}

/// Sessions beyond the monitors': the controller's own client, the door's node hub,
/// and room for sessions that linger a moment after their connection closed.
const EXTRA_SESSIONS: usize = 64;

fn router_config(topics: &Topics, max_monitors: usize) -> RouterConfig {
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
        topics.campaigns(),
    ]);
    RouterConfig {
        // Agents share one session (the door's node hub); each monitor has one, and the
        // door caps them (`[mqtt] max_monitors`). rumqttd sets aside room for this
        // many sessions at start.
        max_connections: max_monitors + EXTRA_SESSIONS,
        max_outgoing_packet_count: 200,
        // Each filter's log holds at most 4 segments of 1 MiB (an oversized message
        // gets a segment of its own): bounded memory per topic kind.
        max_segment_size: 1024 * 1024,
        max_segment_count: 4,
        custom_segment: None,
        initialized_filters: Some(filters),
        ..RouterConfig::default()
    }
}
