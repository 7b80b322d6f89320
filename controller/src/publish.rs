//! Outbound MQTT messages as values. The engine and ingest push them into a queue; the
//! bus task alone talks to the broker (STYLE rule 5: effects out, not I/O in).

use tokio::sync::mpsc;

/// MQTT delivery guarantee of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    AtMostOnce,
    AtLeastOnce,
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub topic: String,
    pub payload: Vec<u8>,
    pub delivery: Delivery,
    pub retain: bool,
}

impl Outbound {
    /// A retained QoS 1 JSON message.
    pub fn retained(topic: String, body: &impl serde::Serialize) -> Self {
        Self {
            topic,
            payload: serde_json::to_vec(body).unwrap_or_default(),
            delivery: Delivery::AtLeastOnce,
            retain: true,
        }
    }

    /// A non-retained JSON message.
    pub fn event(topic: String, body: &impl serde::Serialize, delivery: Delivery) -> Self {
        Self {
            topic,
            payload: serde_json::to_vec(body).unwrap_or_default(),
            delivery,
            retain: false,
        }
    }
}

/// The sending side of the publish queue. Unbounded on purpose: the engine must never
/// wait on the broker, or a slow broker would stall ingest, which feeds the engine.
#[derive(Clone)]
pub struct PublishQueue(mpsc::UnboundedSender<Outbound>);

impl PublishQueue {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    pub fn push(&self, msg: Outbound) {
        // The receiver lives as long as the bus task; after shutdown there is nobody left
        // to tell, so a closed queue is not an error.
        let _ = self.0.send(msg);
    }
}
