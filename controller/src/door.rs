//! The embedded broker's front door (DESIGN section 11): rumqttd has no topic ACLs, so
//! every client connects here instead, and only what this door allows reaches it.
//!
//! - **CONNECT** is read first (bounded in size and time) and decides who the client is:
//!   a node (user = node id, password derived from its key), an enrolling agent (user
//!   `metalbus-enroll.<token id>`, password derived from the token), or a monitoring tool
//!   (any user, password = an API token of role viewer or above). Anyone else gets
//!   CONNACK "not authorized" and is closed. The CONNECT is then passed to rumqttd's
//!   internal listener (loopback, a per-process password) with the client id put in the
//!   client's own namespace, so no client can take over another's session.
//! - **Each packet** from the client is decoded with rumqttc's codec: a PUBLISH or
//!   SUBSCRIBE outside the client's topics closes the connection. Packets from the broker
//!   to a client are checked too: a monitor never receives `commands` or `receipts`
//!   (what it cannot receive is dropped, and acknowledged to the broker for it).
//! - **Revocation** closes a node's connections at once: every connection of a node
//!   watches the keyring and ends when its key is gone or replaced.
//!
//! The controller's own MQTT client connects to the internal listener directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use metalbus_link::MAX_PACKET_BYTES;
use metalbus_protocol::api::Role;
use metalbus_protocol::enroll::ENROLL_USER_PREFIX;
use metalbus_protocol::topic::{NodeTopic, Topic, Topics};
use metalbus_protocol::NodeId;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Login, Packet, PubAck};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::api::auth::token_hash;
use crate::security::Keyring;
use crate::store::StoreReader;

/// How long a client has to send its CONNECT.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Largest CONNECT accepted (its Will included).
const MAX_CONNECT_BYTES: usize = 64 * 1024;
/// The user the door logs in to rumqttd with.
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
                Ok(Topic::Summary | Topic::Transitions | Topic::ControllerStatus),
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
    /// rumqttd's internal listener.
    pub internal: SocketAddr,
    /// The password of [`INTERNAL_USER`].
    pub internal_password: String,
}

/// Why a CONNECT is refused.
fn refused(code: ConnectReturnCode) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: false,
        code,
    })
}

impl Door {
    /// Decides who a CONNECT comes from, or why it is refused.
    pub fn authenticate(
        &self,
        login: Option<&Login>,
        will: Option<&rumqttc::mqttbytes::v4::LastWill>,
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
                Client::Node(id) => will.topic == self.topics.node(id, NodeTopic::Status),
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

/// Accepts clients until `shutdown` turns true; over TLS when `tls` is given.
pub async fn run(
    listener: TcpListener,
    door: Arc<Door>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
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
        let _ = stream.set_nodelay(true);
        let door = door.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                None => serve(stream, &door).await,
                Some(acceptor) => {
                    match tokio::time::timeout(CONNECT_WAIT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve(stream, &door).await,
                        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                        Err(_) => Err("no TLS handshake in time".into()),
                    }
                }
            };
            if let Err(why) = result {
                debug!(%peer, %why, "MQTT client closed");
            }
        });
    }
}

/// One client, from CONNECT to close.
async fn serve<S>(mut client: S, door: &Door) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut cbuf = BytesMut::with_capacity(4096);
    let connect = tokio::time::timeout(
        CONNECT_WAIT,
        read_connect(&mut client, &mut cbuf, MAX_CONNECT_BYTES),
    )
    .await
    .map_err(|_| "no CONNECT in time".to_string())??;
    let Packet::Connect(mut connect) = connect else {
        return Err("the first packet is not CONNECT".into());
    };
    let who = match door.authenticate(connect.login.as_ref(), connect.last_will.as_ref()) {
        Ok(who) => who,
        Err(code) => {
            info!(
                user = connect
                    .login
                    .as_ref()
                    .map(|l| l.username.as_str())
                    .unwrap_or(""),
                ?code,
                "MQTT client refused"
            );
            let _ = write_packet(&mut client, &refused(code)).await;
            return Err(format!("refused: {code:?}"));
        }
    };
    let key_at_start = match &who {
        Client::Node(id) => door.keys.get(id),
        _ => None,
    };
    let mut revocations = door.keys.revocations();
    // The client's session lives in its own namespace.
    connect.client_id = match &who {
        Client::Node(id) => format!("node:{id}:{}", connect.client_id),
        other => format!("{}:{}", other.label(), connect.client_id),
    };
    connect.login = Some(Login::new(INTERNAL_USER, door.internal_password.clone()));
    let mut broker = TcpStream::connect(door.internal)
        .await
        .map_err(|e| format!("internal broker: {e}"))?;
    let _ = broker.set_nodelay(true);
    write_packet(&mut broker, &Packet::Connect(connect)).await?;
    let mut bbuf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(4096);
    loop {
        tokio::select! {
            n = client.read_buf(&mut cbuf) => {
                if n.map_err(|e| e.to_string())? == 0 {
                    return Ok(());
                }
                out.clear();
                while let Some(packet) = next(&mut cbuf, MAX_PACKET_BYTES)? {
                    let packet = inbound(&who, &door.topics, packet)?;
                    encode(&packet, &mut out)?;
                }
                broker.write_all(&out).await.map_err(|e| e.to_string())?;
            }
            n = broker.read_buf(&mut bbuf) => {
                if n.map_err(|e| e.to_string())? == 0 {
                    return Err("the broker closed the connection".into());
                }
                out.clear();
                let mut acks = BytesMut::new();
                while let Some(packet) = next(&mut bbuf, MAX_PACKET_BYTES)? {
                    match packet {
                        Packet::Publish(p) if !who.may_receive(&door.topics, &p.topic) => {
                            if p.qos != QoS::AtMostOnce {
                                encode(&Packet::PubAck(PubAck::new(p.pkid)), &mut acks)?;
                            }
                        }
                        other => encode(&other, &mut out)?,
                    }
                }
                client.write_all(&out).await.map_err(|e| e.to_string())?;
                if !acks.is_empty() {
                    broker.write_all(&acks).await.map_err(|e| e.to_string())?;
                }
            }
            r = revocations.changed(), if key_at_start.is_some() => {
                if r.is_err() {
                    return Ok(());
                }
                if let Client::Node(id) = &who {
                    if door.keys.get(id) != key_at_start {
                        info!(node = %id, "credential revoked; connection closed");
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Checks one packet from the client; a forbidden one ends the connection.
fn inbound(who: &Client, topics: &Topics, packet: Packet) -> Result<Packet, String> {
    match packet {
        Packet::Publish(p) => {
            if who.may_publish(topics, &p.topic) {
                Ok(Packet::Publish(p))
            } else {
                warn!(client = who.label(), topic = %p.topic, "publish refused; connection closed");
                Err(format!("may not publish on {}", p.topic))
            }
        }
        Packet::Subscribe(mut s) => {
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
            Ok(Packet::Subscribe(s))
        }
        Packet::Connect(_) => Err("a second CONNECT".into()),
        other => Ok(other),
    }
}

/// The next whole packet in `buf`, `None` when more bytes are needed.
fn next(buf: &mut BytesMut, max: usize) -> Result<Option<Packet>, String> {
    match Packet::read(buf, max) {
        Ok(p) => Ok(Some(p)),
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(format!("malformed packet: {e:?}")),
    }
}

fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), String> {
    packet
        .write(out, MAX_PACKET_BYTES)
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

async fn write_packet<S: AsyncWrite + Unpin>(
    stream: &mut S,
    packet: &Packet,
) -> Result<(), String> {
    let mut out = BytesMut::new();
    encode(packet, &mut out)?;
    stream.write_all(&out).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
