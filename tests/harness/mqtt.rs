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
    /// Connects anonymously to 127.0.0.1:`port`, subscribes to `filter` and waits for
    /// the SUBACK (an external broker; the embedded one refuses anonymous clients).
    pub async fn start(port: u16, filter: &str) -> Watcher {
        Self::start_as(port, filter, None).await
    }

    /// The same, with an MQTT user name (and no password).
    pub async fn start_as(port: u16, filter: &str, user: Option<&str>) -> Watcher {
        Self::connect(port, user.map(|u| (u, "")), Some(filter))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A monitoring tool on the controller's broker, logged in with its admin token.
    pub async fn monitor(ctl: &crate::Controller, filter: &str) -> Watcher {
        let token = ctl.token();
        Self::connect(
            ctl.mqtt_port,
            Some(("monitor", token.as_str())),
            Some(filter),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A client logged in as node `id` with its key, as its agent would; it subscribes
    /// to `filter` when one is given.
    pub async fn node(
        port: u16,
        id: &str,
        key: &metalbus_protocol::proof::NodeKey,
        filter: Option<&str>,
    ) -> Watcher {
        let password = key.broker_password();
        Self::connect(port, Some((id, password.as_str())), filter)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Connects with an optional login, subscribes to `filter` if given, and waits for
    /// the broker's answer (SUBACK, or CONNACK without a filter). Refused: why.
    pub async fn connect(
        port: u16,
        login: Option<(&str, &str)>,
        filter: Option<&str>,
    ) -> Result<Watcher, String> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = format!("e2e-watcher-{}-{n}", std::process::id());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
        opts.set_keep_alive(Duration::from_secs(30));
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        if let Some(filter) = filter {
            client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        }
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let mut ready_tx = Some(ready_tx);
        let wait_suback = filter.is_some();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) if !wait_suback => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => sink.lock().unwrap().push(Message {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    }),
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Watcher {
                client,
                messages,
                task,
            }),
            Ok(Ok(Err(e))) => Err(format!("the broker refused the client: {e}")),
            _ => Err("the broker did not answer in time".into()),
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
