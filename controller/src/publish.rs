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
    pub fn retained(topic: String, body: &impl serde::Serialize) -> Option<Self> {
        Self::json(topic, body, Delivery::AtLeastOnce, true)
    }

    /// A non-retained JSON message.
    pub fn event(topic: String, body: &impl serde::Serialize, delivery: Delivery) -> Option<Self> {
        Self::json(topic, body, delivery, false)
    }

    /// `None` (logged) when `body` does not serialize: never an empty payload, which on a
    /// retained topic would clear it.
    fn json(
        topic: String,
        body: &impl serde::Serialize,
        delivery: Delivery,
        retain: bool,
    ) -> Option<Self> {
        match serde_json::to_vec(body) {
            Ok(payload) => Some(Self {
                topic,
                payload,
                delivery,
                retain,
            }),
            Err(e) => {
                tracing::error!(%topic, error = %e, "a message did not serialize; not published");
                None
            }
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

    /// Pushes what there is (`None`: a message that did not serialize).
    pub fn push_all(&self, msgs: impl IntoIterator<Item = Outbound>) {
        for msg in msgs {
            self.push(msg);
        }
    }
}
