//! The embedded broker's front door (DESIGN section 11): rumqttd has no topic ACLs, so
//! every client connects here, and only what this door allows reaches the broker.
//!
//! - **CONNECT** is read first (bounded in size and time) and decides who the client is:
//!   a node (user = node id, password derived from its key), an enrolling agent (user
//!   `metalbus-enroll.<token id>`, password derived from the token), or a monitoring tool
//!   (any user, password = an API token of role viewer or above). Anyone else gets
//!   CONNACK "not authorized" and is closed.
//! - **The session**: nodes share one session with rumqttd's router, the [`hub`]; the
//!   door answers their CONNECT, SUBSCRIBE and PUBLISH itself and hands each node its
//!   own `commands` and `receipts`, and an enrolling agent its `enrolled` answer.
//!   Monitors get an in-process link of their own ([`crate::broker::Links`]), with the
//!   client id put in the client's own namespace, so no client can take over another's
//!   session. The door owns the socket:
//!   one file descriptor per client, the keep-alive, and the Will (published when a
//!   connection ends without DISCONNECT).
//! - **Each packet** from the client is decoded with rumqttd's own v4 codec: a PUBLISH or
//!   SUBSCRIBE outside the client's topics closes the connection. Packets from the broker
//!   to a client are checked too: a monitor never receives `commands` or `receipts`
//!   (what it cannot receive is dropped, and acknowledged to the broker for it).
//! - **Revocation** closes a node's connections at once: every connection of a node
//!   watches the keyring and ends when its key is gone or replaced.
//!
//! The controller's own MQTT client connects to rumqttd's internal listener directly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use metalbus_link::MAX_PACKET_BYTES;
use metalbus_protocol::api::Role;
use metalbus_protocol::enroll::ENROLL_USER_PREFIX;
use metalbus_protocol::topic::{NodeTopic, Topic, Topics};
use metalbus_protocol::NodeId;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill, Login, Packet,
    PingResp, Protocol, PubAck, PubAckReason, Publish, QoS, SubAck, SubscribeReasonCode, UnsubAck,
    UnsubAckReason,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use acks::Acks;
use hub::Hub;
pub use interest::Interest;

mod acks;
mod hub;
mod interest;

use crate::api::auth::token_hash;
use crate::broker::Links;
use crate::intake::Intake;
use crate::security::Keyring;
use crate::store::StoreReader;
use crate::telemetry::{Limit, Telemetry};

/// How long a client has to send its CONNECT.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Largest CONNECT accepted (its Will included).
const MAX_CONNECT_BYTES: usize = 64 * 1024;
/// A connection's read buffer to start with: an agent's CONNECT and its usual reports
/// fit (a metrics sample is about 600 bytes); larger packets grow it for a while.
const READ_BUFFER: usize = 1024;
/// The user the controller's own client logs in to rumqttd's internal listener with.
pub const INTERNAL_USER: &str = "metalbus-door";

/// Who a client proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    /// An enrolled node's agent.
    Node(NodeId),
    /// An agent that is enrolling.
    Enrolling,
    /// A monitoring tool, logged in with an API token.
    Monitor(Role),
}

impl Client {
    fn label(&self) -> &'static str {
        match self {
            Client::Node(_) => "node",
            Client::Enrolling => "enroll",
            Client::Monitor(_) => "monitor",
        }
    }

    /// Whether the client may publish on `topic`.
    pub fn may_publish(&self, topics: &Topics, topic: &str) -> bool {
        match (self, topics.parse(topic)) {
            (Client::Node(me), Ok(Topic::Node(id, kind))) => {
                id == *me && NodeTopic::FROM_AGENT.contains(&kind)
            }
            (Client::Enrolling, Ok(Topic::Node(_, NodeTopic::Enroll))) => true,
            _ => false,
        }
    }

    /// Whether the client may subscribe to `filter`. Nodes and enrolling agents name
    /// their exact topics; a monitor may use any filter (what it receives is checked
    /// message by message).
    pub fn may_subscribe(&self, topics: &Topics, filter: &str) -> bool {
        match (self, topics.parse(filter)) {
            (Client::Node(me), Ok(Topic::Node(id, NodeTopic::Commands | NodeTopic::Receipts))) => {
                id == *me
            }
            (Client::Enrolling, Ok(Topic::Node(_, NodeTopic::Enrolled))) => true,
            (Client::Monitor(_), _) => true,
            _ => false,
        }
    }

    /// Whether a message on `topic` may be delivered to the client.
    pub fn may_receive(&self, topics: &Topics, topic: &str) -> bool {
        match (self, topics.parse(topic)) {
            (Client::Node(me), Ok(Topic::Node(id, NodeTopic::Commands | NodeTopic::Receipts))) => {
                id == *me
            }
            (Client::Enrolling, Ok(Topic::Node(_, NodeTopic::Enrolled))) => true,
            (Client::Monitor(_), Ok(Topic::Node(_, kind))) => matches!(
                kind,
                NodeTopic::State
                    | NodeTopic::Status
                    | NodeTopic::Inventory
                    | NodeTopic::Metrics
                    | NodeTopic::Rejects
            ),
            (
                Client::Monitor(_),
                Ok(
                    Topic::Summary
                    | Topic::Transitions
                    | Topic::ControllerStatus
                    | Topic::Campaign(_),
                ),
            ) => true,
            _ => false,
        }
    }
}

/// What the door needs.
pub struct Door {
    pub topics: Topics,
    pub keys: Keyring,
    pub store: StoreReader,
    /// Sessions with rumqttd's router.
    pub links: Links,
    /// Where bounds hit are counted.
    pub telemetry: Arc<Telemetry>,
    /// One permit per open client connection (`[mqtt] max_connections`).
    pub clients: Arc<tokio::sync::Semaphore>,
    /// One permit per monitor's router session (`[mqtt] max_monitors`).
    pub monitors: Arc<tokio::sync::Semaphore>,
    /// Where what nodes publish goes: straight to the controller, not through the
    /// router (DECISIONS §73).
    pub intake: Arc<Intake>,
    /// Monitors' filters: which metrics the router needs.
    pub interest: Interest,
}

/// Largest retained status a node may leave in the broker (a birth or its Will is a few
/// hundred bytes). A larger one still reaches its subscribers, just not retained.
pub const MAX_RETAINED_STATUS: usize = 4 * 1024;
/// Largest retained inventory: the largest the controller accepts, with its proof.
pub const MAX_RETAINED_INVENTORY: usize = metalbus_protocol::MAX_PAYLOAD_BYTES + 256;

/// The most `who` may leave retained on `topic`: a node on its own status and inventory
/// (DESIGN section 3), nothing anywhere else. So the broker's retained store holds at
/// most two bounded messages per node.
fn retain_bound(who: &Client, topics: &Topics, topic: &[u8]) -> usize {
    let topic = std::str::from_utf8(topic).unwrap_or("");
    match (who, topics.parse(topic)) {
        (Client::Node(me), Ok(Topic::Node(id, NodeTopic::Status))) if id == *me => {
            MAX_RETAINED_STATUS
        }
        (Client::Node(me), Ok(Topic::Node(id, NodeTopic::Inventory))) if id == *me => {
            MAX_RETAINED_INVENTORY
        }
        _ => 0,
    }
}

/// Clears the retain flag of a publish over what `who` may retain there; true when it
/// did.
fn bound_retained(who: &Client, topics: &Topics, packet: &mut Packet) -> bool {
    match packet {
        Packet::Publish(p, _)
            if p.retain && p.payload.len() > retain_bound(who, topics, &p.topic) =>
        {
            debug!(
                client = who.label(),
                size = p.payload.len(),
                "publish not retained: over the bound"
            );
            p.retain = false;
            true
        }
        _ => false,
    }
}

/// Why a CONNECT is refused.
fn refused(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    )
}

impl Door {
    /// Decides who a CONNECT comes from, or why it is refused.
    pub fn authenticate(
        &self,
        login: Option<&Login>,
        will: Option<&LastWill>,
    ) -> Result<Client, ConnectReturnCode> {
        let login = login.ok_or(ConnectReturnCode::NotAuthorized)?;
        let client = if let Some(id) = login.username.strip_prefix(ENROLL_USER_PREFIX) {
            let known = self.keys.enroll_password(id);
            if !known.is_some_and(|p| same(p.as_bytes(), login.password.as_bytes())) {
                return Err(ConnectReturnCode::BadUserNamePassword);
            }
            Client::Enrolling
        } else if let Some(key) = NodeId::new(login.username.as_str())
            .ok()
            .and_then(|id| Some((self.keys.get(&id)?, id)))
            .filter(|(key, _)| same(key.broker_password().as_bytes(), login.password.as_bytes()))
            .map(|(_, id)| id)
        {
            Client::Node(key)
        } else {
            match self.store.token(&token_hash(&login.password)) {
                Ok(Some(record)) => Client::Monitor(record.role),
                Ok(None) => return Err(ConnectReturnCode::BadUserNamePassword),
                Err(_) => return Err(ConnectReturnCode::ServiceUnavailable),
            }
        };
        // Only a node has a Will, and only on its own status topic.
        if let Some(will) = will {
            let own = match &client {
                Client::Node(id) => {
                    will.topic == self.topics.node(id, NodeTopic::Status).as_bytes()
                }
                _ => false,
            };
            if !own {
                return Err(ConnectReturnCode::NotAuthorized);
            }
        }
        Ok(client)
    }
}

/// Compares two secrets without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs the door on its own threads until `shutdown` turns true: rumqttd's links hand
/// packets to the router with blocking sends, which must not stall the controller's own
/// runtime (the API and the engine's feeders).
pub fn spawn(
    listener: std::net::TcpListener,
    door: Arc<Door>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("mqtt-door")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("mqtt-door".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => run(listener, door, tls, shutdown).await,
                    Err(e) => warn!(error = %e, "MQTT front door cannot listen"),
                }
            })
        })?;
    Ok(())
}

/// Accepts clients until `shutdown` turns true; over TLS when `tls` is given.
pub async fn run(
    listener: TcpListener,
    door: Arc<Door>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let hub = match Hub::start(door.links.clone(), &door.topics).await {
        Ok(hub) => hub,
        Err(e) => {
            error!(error = %e, "the MQTT front door cannot start");
            return;
        }
    };
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    warn!(error = %e, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // At the cap a connection is closed at once: holding it to answer would spend
        // the very descriptors the cap protects. Agents retry with backoff.
        let Ok(permit) = door.clients.clone().try_acquire_owned() else {
            door.telemetry.count_limit(Limit::MqttConnections);
            debug!(%peer, "MQTT connection closed: at [mqtt] max_connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let door = door.clone();
        let hub = hub.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Boxed: the task holds the state of plain MQTT or of TLS, not the larger.
            let result = match tls {
                None => Box::pin(serve(stream, &door, &hub)).await,
                Some(acceptor) => Box::pin(serve_tls(acceptor, stream, &door, &hub)).await,
            };
            if let Err(why) = result {
                debug!(%peer, %why, "MQTT client closed");
            }
        });
    }
}

/// A client over TLS: the handshake, then [`serve`].
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    door: &Door,
    hub: &Arc<Hub>,
) -> Result<(), String> {
    // The handshake's state in a box of its own, freed once it is done, and the TLS
    // stream (2.4 KB of rustls state) on the heap once: held by value, it took a slot
    // in this future and another in each future it was moved into (48 MB for 10,000
    // agents, heaptrack, DECISIONS §71).
    let stream = Box::pin(handshake(acceptor, stream)).await?;
    serve(stream, door, hub).await
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
) -> Result<Box<TlsStream>, String> {
    match tokio::time::timeout(CONNECT_WAIT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
        Err(_) => Err("no TLS handshake in time".into()),
    }
}

/// Gives clients with an empty client id distinct sessions.
static ANONYMOUS: AtomicU64 = AtomicU64::new(0);

/// One client, from CONNECT to close: agents (enrolled or enrolling) through the hub
/// ([`serve_node`]), monitors with a router session of their own.
async fn serve<S>(mut client: S, door: &Door, hub: &Arc<Hub>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut cbuf = BytesMut::with_capacity(READ_BUFFER);
    // Each phase boxed: a connection's task holds only the state of the phase it is in,
    // and of the path it took, not the largest of them (DECISIONS §71).
    let accepted = Box::pin(accept(&mut client, &mut cbuf, door)).await?;
    match accepted {
        Accepted::Node(node) => Box::pin(serve_node(client, cbuf, door, hub, node)).await,
        Accepted::Monitor(monitor) => {
            let Ok(_permit) = door.monitors.clone().try_acquire_owned() else {
                door.telemetry.count_limit(Limit::MqttMonitors);
                info!(session = %monitor.session, "MQTT monitor refused: at [mqtt] max_monitors");
                let _ =
                    write_packet(&mut client, refused(ConnectReturnCode::ServiceUnavailable)).await;
                return Err("at [mqtt] max_monitors".into());
            };
            Box::pin(serve_monitor(client, cbuf, door, monitor)).await
        }
    }
}

/// Who a client is, once its CONNECT is accepted.
enum Accepted {
    Node(NodeConnection),
    Monitor(Monitor),
}

/// Reads and checks the client's CONNECT; answers a refusal itself.
async fn accept<S>(client: &mut S, cbuf: &mut BytesMut, door: &Door) -> Result<Accepted, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connect = tokio::time::timeout(CONNECT_WAIT, read_connect(client, cbuf, MAX_CONNECT_BYTES))
        .await
        .map_err(|_| "no CONNECT in time".to_string())??;
    let Packet::Connect(connect, _, will, _, login) = connect else {
        return Err("the first packet is not CONNECT".into());
    };
    let who = match door.authenticate(login.as_ref(), will.as_ref()) {
        Ok(who) => who,
        Err(code) => {
            info!(
                user = login.as_ref().map(|l| l.username.as_str()).unwrap_or(""),
                ?code,
                "MQTT client refused"
            );
            let _ = write_packet(client, refused(code)).await;
            return Err(format!("refused: {code:?}"));
        }
    };
    // As rumqttd: a client must promise to speak now and then, or it could hold a
    // session open for ever.
    if connect.keep_alive == 0 {
        let _ = write_packet(client, refused(ConnectReturnCode::ServiceUnavailable)).await;
        return Err("keep-alive 0 is not accepted".into());
    }
    // The client's session lives in its own namespace.
    let own_id = match connect.client_id.as_str() {
        "" => format!("~{}", ANONYMOUS.fetch_add(1, Ordering::Relaxed)),
        id => id.to_string(),
    };
    // MQTT 3.1.1 section 3.1.2.10: one and a half keep-alive periods without a packet.
    let idle = Duration::from_secs(u64::from(connect.keep_alive)) * 3 / 2;
    if matches!(who, Client::Node(_) | Client::Enrolling) {
        return Ok(Accepted::Node(NodeConnection {
            who,
            client_id: own_id,
            idle,
            will,
        }));
    }
    Ok(Accepted::Monitor(Monitor {
        session: format!("{}:{own_id}", who.label()),
        who,
        clean: connect.clean_session,
        idle,
    }))
}

/// What [`serve_monitor`] needs to know of a monitor's connection.
struct Monitor {
    who: Client,
    /// Its session name with the router.
    session: String,
    clean: bool,
    /// One and a half keep-alive periods.
    idle: Duration,
}

/// A monitor: a session of its own with the router.
async fn serve_monitor<S>(
    mut client: S,
    mut cbuf: BytesMut,
    door: &Door,
    monitor: Monitor,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Monitor {
        who,
        session,
        clean,
        idle,
    } = monitor;
    let (mut tx, mut rx, connack) = match open(door, session.clone(), clean).await {
        Ok(link) => link,
        Err(why) => {
            let _ = write_packet(&mut client, refused(ConnectReturnCode::ServiceUnavailable)).await;
            return Err(why);
        }
    };
    let holder = door.interest.opened(&session, clean);
    let mut acks = Acks::default();
    let mut out = BytesMut::with_capacity(4096);
    if let Some(packet) = Option::<Packet>::from(connack) {
        encode(packet, &mut out)?;
    }
    let mut keep_alive = KeepAlive::new(idle);
    // `Ok(())`: the client said DISCONNECT. `Err`: any other end, and the session is left.
    let end: Result<(), String> = async {
        write_within(&mut client, &out, idle).await?;
        loop {
            out.clear();
            tokio::select! {
                n = client.read_buf(&mut cbuf) => {
                    if n.map_err(|e| e.to_string())? == 0 {
                        return Err("closed by the client".into());
                    }
                    keep_alive.heard();
                    let said_disconnect =
                        from_client(&who, door, &session, &mut cbuf, &mut tx, &mut out, &mut acks)
                            .await?;
                    write_within(&mut client, &out, idle).await?;
                    if said_disconnect {
                        return Ok(());
                    }
                }
                n = rx.next() => {
                    // An error: the router dropped the session (taken over by a newer
                    // connection with the same client id, say).
                    let first = n.map_err(|e| format!("the broker ended the session: {e}"))?;
                    let link = (&mut rx, &mut tx);
                    let ended = to_client(&who, &door.topics, first, link, &mut out, &mut acks).await;
                    write_within(&mut client, &out, idle).await?;
                    ended?;
                }
                () = keep_alive.expired() => return Err("keep-alive expired".into()),
            }
        }
    }
    .await;
    if end.is_err() {
        // Leave the router (a monitor has no Will: `authenticate` refuses one).
        let _ = tx.send(disconnect()).await;
    }
    door.interest.closed(&session, clean, holder);
    end
}

/// What [`serve_node`] needs to know of a node's connection.
struct NodeConnection {
    /// A node, or an agent enrolling.
    who: Client,
    client_id: String,
    /// One and a half keep-alive periods.
    idle: Duration,
    will: Option<LastWill>,
}

/// A node's connection, through the [`Hub`]: the door answers CONNECT, SUBSCRIBE and
/// PUBLISH itself and hands the node only its own `commands` and `receipts`. An
/// enrolling agent's the same way: it gets the `enrolled` answer of the node id it
/// subscribed for.
async fn serve_node<S>(
    mut client: S,
    mut cbuf: BytesMut,
    door: &Door,
    hub: &Arc<Hub>,
    node: NodeConnection,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let NodeConnection {
        who,
        client_id,
        idle,
        will,
    } = node;
    let (key_at_start, mut place) = match &who {
        Client::Node(id) => (door.keys.get(id), Some(hub.attach(id, &client_id))),
        _ => (None, None),
    };
    let mut revocations = door.keys.revocations();
    let mut subscribed: Vec<String> = Vec::new();
    let mut out = BytesMut::new();
    let connack = ConnAck {
        session_present: false,
        code: ConnectReturnCode::Success,
    };
    encode(Packet::ConnAck(connack, None), &mut out)?;
    let mut keep_alive = KeepAlive::new(idle);
    let end: Result<(), String> = async {
        write_within(&mut client, &out, idle).await?;
        loop {
            out.clear();
            tokio::select! {
                n = client.read_buf(&mut cbuf) => {
                    if n.map_err(|e| e.to_string())? == 0 {
                        return Err("closed by the client".into());
                    }
                    keep_alive.heard();
                    let said_disconnect =
                        from_node(&who, door, hub, &mut cbuf, &mut out, &mut subscribed).await?;
                    if let (Client::Enrolling, None) = (&who, &place) {
                        place = enrolling_for(&door.topics, &subscribed)
                            .map(|id| hub.attach(&id, &client_id));
                    }
                    write_within(&mut client, &out, idle).await?;
                    shrink(&mut cbuf);
                    shrink(&mut out);
                    if said_disconnect {
                        return Ok(());
                    }
                }
                m = next_for(&place) => {
                    let Some(first) = m else {
                        // The same client connected again: its Will would carry the
                        // same `conn` as the birth it is about to send, and the
                        // controller would take it for the newer word. No Will.
                        debug!(client = %client_id, "taken over by a newer connection with the same client id");
                        return Ok(());
                    };
                    let mut next = Some(first);
                    while let Some(publish) = next {
                        let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
                        if subscribed.iter().any(|s| s == topic) {
                            encode(Packet::Publish(publish, None), &mut out)?;
                        }
                        next = place.as_ref().and_then(hub::Attached::try_recv);
                    }
                    write_within(&mut client, &out, idle).await?;
                }
                () = keep_alive.expired() => return Err("keep-alive expired".into()),
                r = revocations.changed(), if key_at_start.is_some() => {
                    let revoked = match (&who, r) {
                        (Client::Node(id), Ok(())) => door.keys.get(id) != key_at_start,
                        _ => true,
                    };
                    if revoked {
                        info!(client = %client_id, "credential revoked; connection closed");
                        return Err("credential revoked".into());
                    }
                }
            }
        }
    }
    .await;
    drop(place);
    if end.is_err() {
        if let Some(will) = will {
            let mut will = Packet::Publish(will_publish(will), None);
            if bound_retained(&who, &door.topics, &mut will) {
                door.telemetry.count_limit(Limit::RetainedSize);
            }
            if let Packet::Publish(p, _) = will {
                if let Err(e) = deliver(door, hub, p).await {
                    warn!(client = %client_id, error = %e, "could not publish a Will");
                }
            }
        }
    }
    end
}

/// MQTT 3.1.1 section 3.1.2.10: a client silent for `idle` (one and a half keep-alive
/// periods) is closed. One timer per connection, moved on only when it fires: a new one
/// per packet was a timer-wheel insert and removal for every message of every agent.
struct KeepAlive {
    idle: Duration,
    heard: Instant,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl KeepAlive {
    fn new(idle: Duration) -> Self {
        let heard = Instant::now();
        KeepAlive {
            idle,
            heard,
            timer: Box::pin(tokio::time::sleep_until(heard + idle)),
        }
    }

    /// The client said something.
    fn heard(&mut self) {
        self.heard = Instant::now();
    }

    /// Resolves once the client has been silent for `idle`. Cancel-safe: its state
    /// lives in `self`.
    async fn expired(&mut self) {
        loop {
            self.timer.as_mut().await;
            let due = self.heard + self.idle;
            if Instant::now() >= due {
                return;
            }
            self.timer.as_mut().reset(due);
        }
    }
}

/// Gives back a buffer that a large packet grew, once it is empty: an idle connection
/// keeps at most [`READ_BUFFER`] bytes.
fn shrink(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 4 * READ_BUFFER {
        *buf = BytesMut::with_capacity(READ_BUFFER);
    }
}

/// The next message for this connection; never, while it has no place in the hub.
async fn next_for(place: &Option<hub::Attached>) -> Option<Publish> {
    match place {
        Some(p) => p.recv().await,
        None => std::future::pending().await,
    }
}

/// The node id an enrolling agent subscribed for (`{p}/nodes/{id}/enrolled`).
fn enrolling_for(topics: &Topics, subscribed: &[String]) -> Option<NodeId> {
    subscribed.iter().find_map(|f| match topics.parse(f) {
        Ok(Topic::Node(id, NodeTopic::Enrolled)) => Some(id),
        _ => None,
    })
}

/// Checks what a node sent and answers it: its publishes go to the router through the
/// hub (acknowledged once handed over; the report stream's receipts are the end-to-end
/// acknowledgement), its subscriptions are kept here. `Ok(true)` on DISCONNECT.
async fn from_node(
    who: &Client,
    door: &Door,
    hub: &Hub,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    subscribed: &mut Vec<String>,
) -> Result<bool, String> {
    loop {
        // Only the publish is held across the wait for the hub, not a whole packet:
        // this future is part of every node connection's task.
        let (publish, pkid) = match node_step(who, door, buf, out, subscribed)? {
            NodeStep::More => return Ok(false),
            NodeStep::Disconnect => return Ok(true),
            NodeStep::Answered => continue,
            NodeStep::Publish(p, pkid) => (p, pkid),
        };
        deliver(door, hub, publish).await?;
        if let Some(pkid) = pkid {
            let reason = PubAckReason::Success;
            encode(Packet::PubAck(PubAck { pkid, reason }, None), out)?;
        }
    }
}

/// Hands what a node published to the controller ([`Intake`]), and to the router when a
/// monitor may receive it: statuses and inventories always (they are retained for
/// monitors that subscribe later), metrics while a monitor's filter matches, reports and
/// enrollment requests never (no client may receive them). The controller reads none of
/// them from the router (DECISIONS §73).
async fn deliver(door: &Door, hub: &Hub, publish: Publish) -> Result<(), String> {
    let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
    door.intake.on_message(topic, &publish.payload).await;
    let to_router = match door.topics.parse(topic) {
        Ok(Topic::Node(_, NodeTopic::Status | NodeTopic::Inventory)) => true,
        Ok(Topic::Node(_, NodeTopic::Metrics)) => door.interest.wants(topic),
        _ => false,
    };
    if to_router {
        hub.publish(owned(publish)).await?;
    }
    Ok(())
}

/// A publish with its own copy of its topic and payload. rumqttd's parser hands them out
/// as slices of the connection's read buffer; one the router keeps (retained, or in a
/// topic's log) would pin the whole buffer, a few KB per node, for as long as it is
/// kept, and make the connection allocate a new one for its next read (DECISIONS §71).
/// Through rumqttd's own serialised form: one exact-size allocation for both. Only what
/// goes to the router is copied: what intake decodes is dropped at once.
fn owned(publish: Publish) -> Publish {
    Publish::deserialize(publish.serialize())
}

/// What [`node_step`] made of the next packet.
enum NodeStep {
    /// No whole packet yet.
    More,
    Disconnect,
    /// Answered (into `out`) or ignored.
    Answered,
    /// To the router; acknowledged with this packet id once handed over (QoS 1).
    Publish(Publish, Option<u16>),
}

/// The next packet a node sent, checked; everything but a publish answered here.
fn node_step(
    who: &Client,
    door: &Door,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    subscribed: &mut Vec<String>,
) -> Result<NodeStep, String> {
    let packet = match next(buf, MAX_PACKET_BYTES)? {
        None => return Ok(NodeStep::More),
        Some(Packet::PingReq(_)) => {
            encode(Packet::PingResp(PingResp), out)?;
            return Ok(NodeStep::Answered);
        }
        Some(Packet::Disconnect(..)) => return Ok(NodeStep::Disconnect),
        Some(packet) => inbound(who, &door.topics, packet)?,
    };
    match packet {
        mut packet @ Packet::Publish(..) => {
            if bound_retained(who, &door.topics, &mut packet) {
                door.telemetry.count_limit(Limit::RetainedSize);
            }
            let Packet::Publish(p, _) = packet else {
                return Ok(NodeStep::Answered);
            };
            let (qos, pkid) = qos_and_pkid(&p);
            if qos > 1 {
                return Err("exactly-once publishes are not offered".into());
            }
            Ok(NodeStep::Publish(p, (qos == 1).then_some(pkid)))
        }
        Packet::Subscribe(s, _) => {
            for f in &s.filters {
                if !subscribed.contains(&f.path) {
                    subscribed.push(f.path.clone());
                }
            }
            // Delivered at most once (see `hub`): QoS 0 granted.
            let return_codes = s
                .filters
                .iter()
                .map(|_| SubscribeReasonCode::Success(QoS::AtMostOnce))
                .collect();
            let suback = SubAck {
                pkid: s.pkid,
                return_codes,
            };
            encode(Packet::SubAck(suback, None), out)?;
            Ok(NodeStep::Answered)
        }
        Packet::Unsubscribe(u, _) => {
            subscribed.retain(|s| !u.filters.contains(s));
            let reasons = u.filters.iter().map(|_| UnsubAckReason::Success).collect();
            let unsuback = UnsubAck {
                pkid: u.pkid,
                reasons,
            };
            encode(Packet::UnsubAck(unsuback, None), out)?;
            Ok(NodeStep::Answered)
        }
        // Acknowledgements of QoS 0 deliveries do not come; anything else a client
        // may send needs no answer.
        _ => Ok(NodeStep::Answered),
    }
}

/// Writes to the client, which must take the bytes within `limit` (its keep-alive and a
/// half): a client that stops reading is closed, instead of holding its task for ever.
async fn write_within<S: AsyncWrite + Unpin>(
    client: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), String> {
    // Nothing to say (a QoS 0 publish needs no answer): no timer.
    if bytes.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(limit, client.write_all(bytes)).await {
        Ok(written) => written.map_err(|e| e.to_string()),
        Err(_) => Err("the client stopped reading".into()),
    }
}

/// Opens the client's session with the router, off the async workers: the router
/// answers on its own thread, and a busy router must not stall other clients.
async fn open(
    door: &Door,
    session: String,
    clean: bool,
) -> Result<(LinkTx, LinkRx, Notification), String> {
    let links = door.links.clone();
    tokio::task::spawn_blocking(move || links(&session, clean))
        .await
        .map_err(|e| format!("opening a session: {e}"))?
        .map_err(|e| format!("the broker refused the session: {e}"))
}

/// The Will as a PUBLISH with its own QoS and retain flag.
fn will_publish(will: LastWill) -> Publish {
    raw_publish(will.qos as u8, will.retain, 1, &will.topic, &will.message)
}

/// A PUBLISH with the given QoS and packet id. rumqttd's `Publish` keeps those to
/// itself, so it is built from rumqttd's own serialised form (the inverse of
/// [`qos_and_pkid`]).
fn raw_publish(qos: u8, retain: bool, pkid: u16, topic: &[u8], payload: &[u8]) -> Publish {
    let mut raw = BytesMut::with_capacity(5 + topic.len() + payload.len());
    raw.put_u8(0b0011_0000 | u8::from(retain) | ((qos & 0b11) << 1));
    raw.put_u16(pkid);
    raw.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    raw.extend_from_slice(&topic[..topic.len().min(usize::from(u16::MAX))]);
    raw.extend_from_slice(payload);
    Publish::deserialize(raw.freeze())
}

/// The QoS and packet id of a publish (rumqttd keeps them to itself). Serialised without
/// its topic and payload (public fields): five bytes, not a copy of the message.
fn qos_and_pkid(publish: &Publish) -> (u8, u16) {
    let mut head = publish.clone();
    head.topic = Bytes::new();
    head.payload = Bytes::new();
    let raw = head.serialize();
    ((raw[0] >> 1) & 0b11, u16::from_be_bytes([raw[1], raw[2]]))
}

fn disconnect() -> Packet {
    Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

/// Checks what the client sent and hands it to the router in one batch; answers
/// PINGREQ itself (into `out`). `Ok(true)` when the client said DISCONNECT.
async fn from_client(
    who: &Client,
    door: &Door,
    session: &str,
    buf: &mut BytesMut,
    tx: &mut LinkTx,
    out: &mut BytesMut,
    acks: &mut Acks,
) -> Result<bool, String> {
    let mut batch = Vec::new();
    let mut said_disconnect = false;
    let checked = loop {
        match next(buf, MAX_PACKET_BYTES) {
            Ok(None) => break Ok(()),
            Ok(Some(Packet::PingReq(_))) => encode(Packet::PingResp(PingResp), out)?,
            Ok(Some(Packet::Disconnect(..))) => {
                batch.push(disconnect());
                said_disconnect = true;
                break Ok(());
            }
            // A monitor may publish nothing (`inbound` ends its connection), so nothing
            // here can be retained.
            Ok(Some(packet)) => match inbound(who, &door.topics, packet) {
                Ok(p) => {
                    match &p {
                        // To the router in the order it forwarded, with the door's own.
                        Packet::PubAck(a, _) => {
                            acks.acked(a.pkid);
                            continue;
                        }
                        // Known before the router has it: metrics for it flow at once.
                        Packet::Subscribe(s, _) => door
                            .interest
                            .subscribed(session, s.filters.iter().map(|f| f.path.as_str())),
                        Packet::Unsubscribe(u, _) => door
                            .interest
                            .unsubscribed(session, u.filters.iter().map(String::as_str)),
                        _ => {}
                    }
                    batch.push(p);
                }
                Err(why) => break Err(why),
            },
            Err(why) => break Err(why),
        }
    };
    // What came before a forbidden packet still reaches the broker, as it would have
    // over a socket.
    acks.release(&mut batch);
    to_router(tx, &mut batch).await?;
    checked.map(|()| said_disconnect)
}

/// Hands packets to the router, waking it once for the whole batch (which it empties).
async fn to_router(tx: &mut LinkTx, batch: &mut Vec<Packet>) -> Result<(), String> {
    let Some(last) = batch.pop() else {
        return Ok(());
    };
    tx.buffer().extend(batch.drain(..));
    tx.send(last)
        .await
        .map(|_| ())
        .map_err(|e| format!("the broker is gone: {e}"))
}

/// Turns what the router has for the client into bytes in `out`: the first
/// notification and every one already waiting. An error when the router ends the
/// session.
async fn to_client(
    who: &Client,
    topics: &Topics,
    first: Option<Notification>,
    (rx, tx): (&mut LinkRx, &mut LinkTx),
    out: &mut BytesMut,
    acks: &mut Acks,
) -> Result<(), String> {
    let mut unscheduled = false;
    let mut released = Vec::new();
    let mut next = first;
    loop {
        if let Some(notification) = next.take() {
            match notification {
                Notification::Forward(f) => {
                    let topic = std::str::from_utf8(&f.publish.topic).unwrap_or("");
                    let allowed = who.may_receive(topics, topic);
                    // Not for this client: acknowledged for it (in the router's order),
                    // so the router's in-flight window does not fill with what it will
                    // never get.
                    let (qos, pkid) = qos_and_pkid(&f.publish);
                    if qos > 0 {
                        acks.forwarded(pkid, !allowed)?;
                    }
                    if allowed {
                        encode(Packet::Publish(f.publish, None), out)?;
                    }
                }
                other => match Option::<Packet>::from(other) {
                    // The router paused this session while its buffer was full.
                    None => unscheduled = true,
                    Some(packet @ Packet::Disconnect(..)) => {
                        encode(packet, out)?;
                        return Err("disconnected by the broker".into());
                    }
                    Some(packet) => encode(packet, out)?,
                },
            }
        }
        // More that is already waiting, without waiting for it.
        match rx.next().now_or_never() {
            Some(Ok(n)) => next = n,
            Some(Err(e)) => return Err(format!("the broker ended the session: {e}")),
            None => break,
        }
    }
    acks.release(&mut released);
    to_router(tx, &mut released).await?;
    if unscheduled {
        // Everything it had is in `out` now: let it send more.
        rx.wake()
            .await
            .map_err(|e| format!("the broker is gone: {e}"))?;
    }
    Ok(())
}

/// The client speaks MQTT 3.1.1, which has no properties and six CONNACK codes; the
/// router's packets may carry either, which rumqttd's v4 encoder refuses by panicking.
fn without_properties(packet: Packet) -> Packet {
    use ConnectReturnCode::*;
    match packet {
        Packet::ConnAck(mut p, _) => {
            if !matches!(
                p.code,
                Success
                    | RefusedProtocolVersion
                    | ClientIdentifierNotValid
                    | ServiceUnavailable
                    | BadUserNamePassword
                    | NotAuthorized
            ) {
                p.code = ServiceUnavailable;
            }
            Packet::ConnAck(p, None)
        }
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        other => other,
    }
}

/// Checks one packet from the client; a forbidden one ends the connection.
fn inbound(who: &Client, topics: &Topics, packet: Packet) -> Result<Packet, String> {
    match packet {
        Packet::Publish(p, _) => {
            let topic = std::str::from_utf8(&p.topic).unwrap_or("");
            if who.may_publish(topics, topic) {
                Ok(Packet::Publish(p, None))
            } else {
                let topic = String::from_utf8_lossy(&p.topic);
                warn!(client = who.label(), %topic, "publish refused; connection closed");
                Err(format!("may not publish on {topic}"))
            }
        }
        Packet::Subscribe(mut s, _) => {
            for f in &mut s.filters {
                if !who.may_subscribe(topics, &f.path) {
                    warn!(client = who.label(), filter = %f.path, "subscription refused; connection closed");
                    return Err(format!("may not subscribe to {}", f.path));
                }
                // Exactly-once delivery is not offered (nothing here needs it).
                if f.qos == QoS::ExactlyOnce {
                    f.qos = QoS::AtLeastOnce;
                }
            }
            Ok(Packet::Subscribe(s, None))
        }
        Packet::Connect(..) => Err("a second CONNECT".into()),
        // What only a server sends.
        Packet::ConnAck(..) | Packet::SubAck(..) | Packet::UnsubAck(..) | Packet::PingResp(_) => {
            Err("a packet only a server sends".into())
        }
        other => Ok(without_properties(other)),
    }
}

/// The next whole packet in `buf`, `None` when more bytes are needed.
///
/// A Will's topic and message are copied out: rumqttd's parser hands them out as slices
/// of `buf`, and the connection keeps its Will for as long as it is open, which would
/// pin the read buffer (a publish is copied only on its way to the router, [`owned`]).
fn next(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, String> {
    match V4.read_mut(buf, max) {
        Ok(Packet::Connect(connect, props, mut will, will_props, login)) => {
            if let Some(w) = will.as_mut() {
                w.topic = Bytes::copy_from_slice(&w.topic);
                w.message = Bytes::copy_from_slice(&w.message);
            }
            Ok(Some(Packet::Connect(
                connect, props, will, will_props, login,
            )))
        }
        Ok(p) => Ok(Some(p)),
        Err(rumqttd::protocol::Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(format!("malformed packet: {e:?}")),
    }
}

fn encode(packet: Packet, out: &mut BytesMut) -> Result<(), String> {
    V4.write(without_properties(packet), out)
        .map(|_| ())
        .map_err(|e| format!("cannot encode: {e:?}"))
}

/// The client's first packet, which must be a CONNECT: any other first byte ends the
/// connection at once instead of waiting for the rest of a frame that is not one.
async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Packet, String> {
    loop {
        if buf.first().is_some_and(|b| b >> 4 != 1) {
            return Err("the first packet is not CONNECT".into());
        }
        if let Some(p) = next(buf, max)? {
            return Ok(p);
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before a whole packet".into());
        }
    }
}

async fn write_packet<S: AsyncWrite + Unpin>(stream: &mut S, packet: Packet) -> Result<(), String> {
    let mut out = BytesMut::new();
    encode(packet, &mut out)?;
    stream.write_all(&out).await.map_err(|e| e.to_string())
}

/// For fuzzing (`crate::fuzz`): decodes `data` as a client's packets after CONNECT,
/// checks each as a node's and as a monitor's, and encodes what passes. Never panics.
#[doc(hidden)]
pub fn fuzz_packets(data: &[u8]) {
    let topics = Topics::default();
    let who = [
        Client::Node(NodeId::new("n1").expect("a valid id")),
        Client::Monitor(Role::Viewer),
        Client::Enrolling,
    ];
    let mut buf = BytesMut::from(data);
    let mut out = BytesMut::new();
    while let Ok(Some(packet)) = next(&mut buf, MAX_PACKET_BYTES) {
        for client in &who {
            if let Ok(mut p) = inbound(client, &topics, packet.clone()) {
                bound_retained(client, &topics, &mut p);
                out.clear();
                let _ = encode(p, &mut out);
            }
        }
    }
}

#[cfg(test)]
mod tests;
