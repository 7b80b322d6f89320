//! An independent MQTT client, as a monitoring tool would use: it records every message
//! under a filter, with its retain flag, and can publish raw bytes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Message {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

pub struct Watcher {
    client: AsyncClient,
    messages: Arc<Mutex<Vec<Message>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Connects to 127.0.0.1:`port`, subscribes to `filter` and waits for the SUBACK.
    pub async fn start(port: u16, filter: &str) -> Watcher {
        Self::start_as(port, filter, None).await
    }

    /// The same, with an MQTT user name.
    pub async fn start_as(port: u16, filter: &str, user: Option<&str>) -> Watcher {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = format!("e2e-watcher-{}-{n}", std::process::id());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
        opts.set_keep_alive(Duration::from_secs(30));
        if let Some(u) = user {
            opts.set_credentials(u, "");
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => sink.lock().unwrap().push(Message {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    }),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("the broker did not acknowledge the subscription")
            .unwrap();
        Watcher {
            client,
            messages,
            task,
        }
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    /// Publishes `payload` sealed with `key`, as the node that holds the key would.
    pub async fn publish_as(
        &self,
        key: &metalbus_protocol::proof::NodeKey,
        topic: &str,
        payload: Vec<u8>,
    ) {
        let sealed = metalbus_protocol::proof::seal(key, topic, &payload)
            .unwrap_or_else(|e| panic!("cannot seal {topic}: {e}"));
        self.publish(topic, sealed).await
    }

    /// Publishes raw bytes, QoS 1 and retained.
    pub async fn publish_retained(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .unwrap();
    }

    /// Publishes raw bytes (QoS 1, not retained).
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
