//! Where agents' messages enter the controller: each is counted, decoded and checked
//! ([`crate::ingest`]) and handed to the engine; a refusal is counted, logged (a quota
//! per window), answered on the node's `rejects` topic and, when the node itself made
//! it, recorded on the node.
//!
//! Two feeders share it: the front door, which hands over what nodes publish on the
//! embedded broker as it reads it (DECISIONS §73), and the bus, which reads the agent
//! topics from an external broker.

use std::sync::{Arc, Mutex, PoisonError};

use metalbus_protocol::topic::{Topic, Topics};
use tokio::sync::mpsc;
use tracing::debug;

use crate::engine::Input;
use crate::ingest::{self, Rejection};
use crate::publish::{Delivery, Outbound, PublishQueue};
use crate::reject_log::RejectLog;
use crate::security::Keyring;
use crate::telemetry::Telemetry;

/// What intake needs; shared by its feeders (dropping the last closes the engine's
/// input, which is how the engine learns to stop).
pub struct Intake {
    topics: Topics,
    telemetry: Arc<Telemetry>,
    engine: mpsc::Sender<Input>,
    /// Where refusals are answered.
    publish: PublishQueue,
    /// Node keys: proofs are checked with them.
    keys: Keyring,
    rejects: Mutex<RejectLog>,
}

impl Intake {
    pub fn new(
        topics: Topics,
        telemetry: Arc<Telemetry>,
        engine: mpsc::Sender<Input>,
        publish: PublishQueue,
        keys: Keyring,
    ) -> Intake {
        Intake {
            topics,
            telemetry,
            engine,
            publish,
            keys,
            rejects: Mutex::default(),
        }
    }

    /// One message from an agent topic. Waits while the engine's input is full: the
    /// wait reaches the agent through its connection. The place in the engine's queue is
    /// taken before the message is decoded, so no decoded input waits in the caller's
    /// future (a node connection's task holds it, 10,000 times over).
    pub async fn on_message(&self, topic: &str, payload: &[u8]) {
        self.telemetry
            .count_message(ingest::kind_label(&self.topics, topic));
        let Ok(place) = self.engine.reserve().await else {
            debug!("engine is gone; message dropped during shutdown");
            return;
        };
        match ingest::decode(&self.topics, &self.keys, topic, payload) {
            Ok(Some(input)) => place.send(input),
            Ok(None) => debug!(topic, "retained message cleared"),
            Err(rejection) => self.reject(rejection, place),
        }
    }

    /// Tells the engine that the broker connection is (re)established.
    pub async fn resync(&self) {
        let _ = self.engine.send(Input::Resync).await;
    }

    fn reject(&self, r: Rejection, place: mpsc::Permit<'_, Input>) {
        self.telemetry.count_reject(r.reason.as_str());
        self.rejects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(&r);
        if let (true, Ok(Topic::Node(id, _))) =
            (r.from_the_node(), self.topics.parse(&r.reject.topic))
        {
            let error = format!("{}: {}", r.reason.as_str(), r.reject.error);
            match r.place.clone() {
                // A report takes its place in the node's stream, so it is never skipped:
                // the agent's later reports wait behind it.
                Some(at) => place.send(Input::RefusedReport {
                    id,
                    place: *at,
                    error,
                }),
                // A Warning event on a known node, for a message the node itself made.
                None => place.send(Input::Rejected { id, error }),
            }
        }
        if let Some(topic) = r.reply_topic {
            self.publish
                .push_all(Outbound::event(topic, &r.reject, Delivery::AtMostOnce));
        }
    }
}
