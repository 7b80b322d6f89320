//! The controller's MQTT client: with an external broker it subscribes to the agent
//! topics and hands their messages to [`Intake`] (with the embedded broker the front door
//! does that itself); it publishes what the engine and intake queue.
//!
//! Two tasks share one rumqttc client. The poller drives the event loop; it may wait on
//! the engine (backpressure then reaches the broker through TCP). The sender drains the
//! publish queue into rumqttc, and only while connected, so it cannot fill rumqttc's
//! request queue during an outage. Nothing the poller does waits on that queue: the
//! subscription is queued from a task of its own.
//!
//! Shutdown drains in order: the poller stops ingesting and drops its intake; the
//! engine applies what it has, flushes and drops its publish queue; the sender publishes
//! the rest; only then the controller marks itself offline and disconnects.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metalbus_link::{Backoff, Endpoint};
use metalbus_protocol::controller::ControllerStatus;
use metalbus_protocol::topic::{NodeTopic, Topics};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Packet, QoS, SubscribeFilter};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::intake::Intake;
use crate::publish::{Delivery, Outbound};
use crate::security::Keyring;
use crate::telemetry::Telemetry;

/// Longest the final drain (engine, publish queue, broker acks) may take at shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Everything the bus needs.
pub struct Bus {
    pub endpoint: Endpoint,
    pub topics: Topics,
    pub telemetry: Arc<Telemetry>,
    /// Where agents' messages go; dropped at shutdown (with the door's) to close the
    /// engine's input.
    pub intake: Arc<Intake>,
    /// Whether to read the agent topics from the broker. Not with the embedded broker:
    /// its front door hands what nodes publish to intake itself (DECISIONS §73).
    pub agent_topics: bool,
    /// Node keys: commands and receipts are sealed as they go out.
    pub keys: Keyring,
    /// MQTT user name and password.
    pub login: (String, String),
    /// True while subscribed and connected; `/readyz` reads it.
    pub connected: Arc<AtomicBool>,
}

/// The retained controller status (a [`ControllerStatus`]). Built as a JSON value,
/// whose text form cannot fail: an empty retained payload would clear the topic.
fn controller_status(online: bool) -> Vec<u8> {
    let mut status = serde_json::Map::new();
    status.insert("online".into(), online.into());
    if online {
        status.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        status.insert(
            "protocol".into(),
            metalbus_protocol::PROTOCOL_VERSION.into(),
        );
    }
    serde_json::Value::Object(status).to_string().into_bytes()
}

impl Bus {
    /// Connects and runs until `shutdown`, then drains. `ready` fires once the first
    /// subscriptions are acknowledged, which also proves the broker is listening.
    pub async fn run(
        self,
        outbound: mpsc::UnboundedReceiver<Outbound>,
        mut shutdown: watch::Receiver<bool>,
        ready: oneshot::Sender<()>,
    ) {
        let Bus {
            endpoint,
            topics,
            telemetry,
            intake,
            agent_topics,
            keys,
            login,
            connected,
        } = self;
        let mut conn_no: u64 = 1;
        let (client, mut eventloop) =
            AsyncClient::new(options(&endpoint, &topics, &login, conn_no), 1024);
        let (link_up_tx, link_up) = watch::channel(false);
        let mut sender = tokio::spawn(send_loop(
            client.clone(),
            outbound,
            link_up,
            telemetry,
            Sealer {
                topics: topics.clone(),
                keys,
            },
        ));
        let mut ready = Some(ready);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        // Taken at shutdown: the engine stops once every feeder let go.
        let mut intake = Some(intake);
        loop {
            let event = tokio::select! {
                _ = shutdown.changed() => break,
                e = eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    subscribe(&client, &topics, agent_topics);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    info!(broker = %endpoint, "controller subscribed to agent topics");
                    connected.store(true, Ordering::SeqCst);
                    let _ = link_up_tx.send(true);
                    assert_online(&client, &topics);
                    if let Some(intake) = &intake {
                        intake.resync().await;
                    }
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.topic == topics.controller_status() {
                        // A Will of an earlier connection of ours can land after we came
                        // back; while we are connected, "offline" is always stale.
                        if connected.load(Ordering::SeqCst) && !p.payload.is_empty() {
                            let stale = serde_json::from_slice::<ControllerStatus>(&p.payload)
                                .is_ok_and(|s| !s.online);
                            if stale {
                                assert_online(&client, &topics);
                            }
                        }
                    } else if let Some(intake) = &intake {
                        intake.on_message(&p.topic, &p.payload).await;
                    }
                }
                Ok(other) => debug!(event = ?other, "mqtt"),
                Err(e) => {
                    connected.store(false, Ordering::SeqCst);
                    let _ = link_up_tx.send(false);
                    let delay = backoff.next_delay(&mut rand::thread_rng());
                    warn!(broker = %endpoint, error = %e, retry_in = ?delay, "controller lost the broker");
                    // A new client id per connection: a lingering old connection's Will
                    // can then never be fired in this connection's name.
                    conn_no += 1;
                    eventloop.mqtt_options = options(&endpoint, &topics, &login, conn_no);
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        connected.store(false, Ordering::SeqCst);
        // Close the engine's input and our publish handle; keep the event loop turning
        // until the sender has published everything the engine still had to say.
        drop(intake.take());
        let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
            loop {
                tokio::select! {
                    _ = &mut sender => break,
                    e = eventloop.poll() => if e.is_err() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    },
                }
            }
            while eventloop.state.inflight() > 0 {
                if eventloop.poll().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!("shutdown: not every queued message reached the broker in time");
            sender.abort();
        }
        stop(&client, &mut eventloop, &topics).await;
    }
}

fn options(
    endpoint: &Endpoint,
    topics: &Topics,
    login: &(String, String),
    conn_no: u64,
) -> rumqttc::MqttOptions {
    let id = format!("metalbus-controller-{}-{conn_no}", std::process::id());
    let mut opts = endpoint.options(&id);
    opts.set_credentials(login.0.as_str(), login.1.as_str());
    opts.set_last_will(LastWill::new(
        topics.controller_status(),
        controller_status(false),
        QoS::AtLeastOnce,
        true,
    ));
    opts.set_inflight(100);
    opts
}

/// Queues the subscription from a task of its own: the poller must never wait for room
/// in rumqttc's request queue, since only the poller makes room. The agent topics only
/// when `agent_topics`; the controller's own status always.
fn subscribe(client: &AsyncClient, topics: &Topics, agent_topics: bool) {
    let mut filters: Vec<SubscribeFilter> = NodeTopic::FROM_AGENT
        .iter()
        .filter(|_| agent_topics)
        .map(|kind| {
            let qos = if *kind == NodeTopic::Metrics {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            SubscribeFilter::new(topics.node_filter(*kind), qos)
        })
        .collect();
    if agent_topics {
        filters.push(SubscribeFilter::new(
            topics.node_filter(NodeTopic::Enroll),
            QoS::AtLeastOnce,
        ));
    }
    filters.push(SubscribeFilter::new(
        topics.controller_status(),
        QoS::AtLeastOnce,
    ));
    let client = client.clone();
    tokio::spawn(async move {
        if let Err(e) = client.subscribe_many(filters).await {
            warn!(error = %e, "subscribing failed");
        }
    });
}

/// Publishes the retained `{"online":true}` controller status.
fn assert_online(client: &AsyncClient, topics: &Topics) {
    let client = client.clone();
    let topic = topics.controller_status();
    tokio::spawn(async move {
        let _ = client
            .publish(topic, QoS::AtLeastOnce, true, controller_status(true))
            .await;
    });
}

/// Seals what goes to agents, as it goes out (so a resend after a re-enrollment
/// carries the current key).
struct Sealer {
    topics: Topics,
    keys: Keyring,
}

/// Publishes queued messages while the link is up.
async fn send_loop(
    client: AsyncClient,
    mut outbound: mpsc::UnboundedReceiver<Outbound>,
    mut link_up: watch::Receiver<bool>,
    telemetry: Arc<Telemetry>,
    sealer: Sealer,
) {
    while let Some(mut msg) = outbound.recv().await {
        if link_up.wait_for(|up| *up).await.is_err() {
            return;
        }
        match sealer
            .keys
            .outbound(&sealer.topics, &msg.topic, msg.payload)
        {
            Some(payload) => msg.payload = payload,
            None => {
                debug!(topic = %msg.topic, "not sent: the node has no credential");
                continue;
            }
        }
        let qos = match msg.delivery {
            Delivery::AtMostOnce => QoS::AtMostOnce,
            Delivery::AtLeastOnce => QoS::AtLeastOnce,
        };
        if let Err(e) = client
            .publish(msg.topic.clone(), qos, msg.retain, msg.payload)
            .await
        {
            telemetry.mqtt_publish_errors.inc();
            warn!(topic = %msg.topic, error = %e, "publish failed");
        }
    }
}

/// Clean stop: mark the controller offline (retained) and disconnect.
async fn stop(client: &AsyncClient, eventloop: &mut EventLoop, topics: &Topics) {
    let _ = client.try_publish(
        topics.controller_status(),
        QoS::AtLeastOnce,
        true,
        controller_status(false),
    );
    metalbus_link::disconnect(client, eventloop, Duration::from_secs(2)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_status_is_what_subscribers_parse() {
        for online in [true, false] {
            let status: ControllerStatus =
                serde_json::from_slice(&controller_status(online)).unwrap();
            assert_eq!(status.online, online);
            assert_eq!(status.version.is_some(), online);
        }
    }
}
