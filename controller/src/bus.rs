//! The controller's MQTT client: subscribes to the agent topics, hands messages to ingest
//! and the engine, and publishes what the engine and ingest queue.
//!
//! Two tasks: the poller drives rumqttc's event loop (and may wait on the engine, which is
//! fine), the sender drains the publish queue. They are separate because waiting for
//! room in rumqttc's request queue needs the event loop to be polled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metalbus_agent::link::{self, Backoff, BrokerUrl};
use metalbus_protocol::controller::ControllerStatus;
use metalbus_protocol::topic::{NodeTopic, Topics};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Packet, QoS, SubscribeFilter};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::engine::Input;
use crate::ingest::{self, Rejection};
use crate::publish::{Delivery, Outbound, PublishQueue};
use crate::telemetry::Telemetry;

/// Everything the bus needs.
pub struct Bus {
    pub url: BrokerUrl,
    pub topics: Topics,
    pub telemetry: Arc<Telemetry>,
    pub engine: mpsc::Sender<Input>,
    pub publish: PublishQueue,
    /// True while subscribed and connected; `/readyz` reads it.
    pub connected: Arc<AtomicBool>,
}

impl Bus {
    /// Connects and runs until shutdown. `ready` fires once the first subscriptions are
    /// acknowledged, which also proves the broker is listening.
    pub async fn run(
        self,
        outbound: mpsc::UnboundedReceiver<Outbound>,
        mut shutdown: watch::Receiver<bool>,
        ready: oneshot::Sender<()>,
    ) {
        let mut conn_no: u64 = 1;
        let (client, mut eventloop) = AsyncClient::new(self.options(conn_no), 1024);
        let sender = tokio::spawn(send_loop(client.clone(), outbound, self.telemetry.clone()));
        let mut ready = Some(ready);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut rejects = RejectLog::default();
        loop {
            let event = tokio::select! {
                _ = shutdown.changed() => break,
                e = eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    self.subscribe(&client).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    info!(broker = %self.url, "controller subscribed to agent topics");
                    self.connected.store(true, Ordering::SeqCst);
                    self.publish.push(Outbound::retained(
                        self.topics.controller_status(),
                        &ControllerStatus {
                            online: true,
                            version: Some(env!("CARGO_PKG_VERSION").into()),
                        },
                    ));
                    let _ = self.engine.send(Input::Resync).await;
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    self.on_message(&p.topic, &p.payload, &mut rejects).await;
                }
                Ok(other) => debug!(event = ?other, "mqtt"),
                Err(e) => {
                    self.connected.store(false, Ordering::SeqCst);
                    let delay = backoff.next_delay(&mut rand::thread_rng());
                    warn!(broker = %self.url, error = %e, retry_in = ?delay, "controller lost the broker");
                    // A new client id per connection: a lingering old connection's Will
                    // can then never be fired in this connection's name.
                    conn_no += 1;
                    eventloop.mqtt_options = self.options(conn_no);
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.connected.store(false, Ordering::SeqCst);
        sender.abort();
        self.stop(&client, &mut eventloop).await;
    }

    fn options(&self, conn_no: u64) -> rumqttc::MqttOptions {
        let id = format!("metalbus-controller-{}-{conn_no}", std::process::id());
        let mut opts = link::client_options(&self.url, &id);
        let will = serde_json::to_vec(&ControllerStatus {
            online: false,
            version: None,
        })
        .unwrap_or_default();
        opts.set_last_will(LastWill::new(
            self.topics.controller_status(),
            will,
            QoS::AtLeastOnce,
            true,
        ));
        opts.set_inflight(100);
        opts
    }

    async fn subscribe(&self, client: &AsyncClient) {
        let filters = NodeTopic::FROM_AGENT.iter().map(|kind| {
            let qos = if *kind == NodeTopic::Metrics {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            SubscribeFilter::new(self.topics.node_filter(*kind), qos)
        });
        if let Err(e) = client.subscribe_many(filters).await {
            warn!(error = %e, "subscribing failed");
        }
    }

    async fn on_message(&self, topic: &str, payload: &[u8], rejects: &mut RejectLog) {
        self.telemetry
            .count_message(ingest::kind_label(&self.topics, topic));
        match ingest::decode(&self.topics, topic, payload) {
            Ok(Some(input)) => {
                if self.engine.send(input).await.is_err() {
                    debug!("engine is gone; message dropped during shutdown");
                }
            }
            Ok(None) => debug!(topic, "retained message cleared"),
            Err(rejection) => self.reject(rejection, rejects),
        }
    }

    fn reject(&self, r: Rejection, log: &mut RejectLog) {
        self.telemetry.count_reject(r.reason.as_str());
        log.record(&r);
        if let Some(topic) = r.reply_topic {
            self.publish
                .push(Outbound::event(topic, &r.reject, Delivery::AtMostOnce));
        }
    }

    /// Clean stop: mark the controller offline (retained) and disconnect.
    async fn stop(&self, client: &AsyncClient, eventloop: &mut EventLoop) {
        let body = serde_json::to_vec(&ControllerStatus {
            online: false,
            version: None,
        })
        .unwrap_or_default();
        let _ = client.try_publish(
            self.topics.controller_status(),
            QoS::AtLeastOnce,
            true,
            body,
        );
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

async fn send_loop(
    client: AsyncClient,
    mut outbound: mpsc::UnboundedReceiver<Outbound>,
    telemetry: Arc<Telemetry>,
) {
    while let Some(msg) = outbound.recv().await {
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

/// Logs refusals without flooding: the first few per window in full, then a count.
#[derive(Default)]
struct RejectLog {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RejectLog {
    const WINDOW: Duration = Duration::from_secs(10);
    const PER_WINDOW: u32 = 20;

    fn record(&mut self, r: &Rejection) {
        let now = Instant::now();
        let expired = self
            .window_start
            .is_none_or(|s| now.duration_since(s) >= Self::WINDOW);
        if expired {
            if self.suppressed > 0 {
                warn!(
                    suppressed = self.suppressed,
                    "more messages were refused; see metalbus_ingest_rejected_total"
                );
            }
            self.window_start = Some(now);
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < Self::PER_WINDOW {
            self.logged += 1;
            warn!(topic = %r.reject.topic, reason = r.reason.as_str(), error = %r.reject.error, "message refused");
        } else {
            self.suppressed += 1;
        }
    }
}
