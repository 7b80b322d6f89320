//! What the agent announces without the outbox: the birth, the inventory (when it
//! changed) and metrics samples.

use std::sync::atomic::Ordering;

use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::metrics::{MetricsSample, OutboxStats};
use metalbus_protocol::status::{Birth, Status};
use metalbus_protocol::topic::NodeTopic;
use tracing::{error, info, warn};

use super::{Core, Publisher, Qos};

impl Core {
    pub(super) fn publish_birth(&self, conn: u64, out: &mut dyn Publisher) {
        let hostname = Some(self.host.hostname.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| self.node_id.to_string());
        let birth = Status::Birth(Birth {
            conn,
            session: self.store.session().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname,
            boot_id: self.host.boot_id.clone(),
            metrics_interval_s: u32::try_from(self.settings.metrics_interval.as_secs().max(1))
                .unwrap_or(u32::MAX),
            ts: self.clock.now(),
            node_id: Some(self.node_id.clone()),
            protocol: metalbus_protocol::PROTOCOL_VERSION,
        });
        match birth.to_json() {
            Ok(body) => {
                publish_or_warn(
                    out,
                    self.topic(NodeTopic::Status),
                    Qos::AtLeastOnce,
                    true,
                    body,
                );
            }
            Err(e) => error!(error = %e, "the birth did not serialize; not published"),
        }
    }

    /// Publishes `inv` when it differs from the one published on this connection; a
    /// failed publish is tried again with the next read.
    pub(super) fn publish_inventory(&mut self, mut inv: Inventory, out: &mut dyn Publisher) {
        inv.node_id = Some(self.node_id.clone());
        if self.last_inventory.as_ref() == Some(&inv) {
            return;
        }
        let body = match serde_json::to_vec(&inv) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "inventory did not serialize");
                return;
            }
        };
        if body.len() > metalbus_protocol::MAX_PAYLOAD_BYTES {
            warn!(
                bytes = body.len(),
                limit = metalbus_protocol::MAX_PAYLOAD_BYTES,
                "inventory is larger than the controller accepts; it will be refused"
            );
        }
        if self.last_inventory.is_some() {
            info!(node = %self.node_id, "inventory changed; publishing");
        }
        let topic = self.topic(NodeTopic::Inventory);
        if publish_or_warn(out, topic, Qos::AtLeastOnce, true, body) {
            self.last_inventory = Some(inv);
        }
    }

    pub(super) fn publish_metrics(&self, mut sample: MetricsSample, out: &mut dyn Publisher) {
        sample.node_id = Some(self.node_id.clone());
        sample.outbox = Some(OutboxStats {
            pending: self.stats.pending.load(Ordering::Relaxed),
            dropped: self.store.dropped,
        });
        match serde_json::to_vec(&sample) {
            Ok(body) => {
                let topic = self.topic(NodeTopic::Metrics);
                publish_or_warn(out, topic, Qos::AtMostOnce, false, body);
            }
            Err(e) => warn!(error = %e, "metrics sample did not serialize"),
        }
    }
}

/// Queues a publish; false (with a warning) when the request queue is full.
fn publish_or_warn(
    out: &mut dyn Publisher,
    topic: String,
    qos: Qos,
    retain: bool,
    body: Vec<u8>,
) -> bool {
    let ok = out.publish(topic.clone(), qos, retain, body);
    if !ok {
        warn!(%topic, "publish dropped: MQTT request queue is full");
    }
    ok
}
