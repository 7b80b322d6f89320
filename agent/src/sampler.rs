//! Runs the collectors off the MQTT loop. Reading `/sys` and `/proc` is quick, but a
//! `statvfs` of a hung network mount blocks forever; the loop that answers keep-alives,
//! sees SIGTERM and keeps the Will from firing must never wait on it.
//!
//! Each request runs on a blocking thread with a deadline and sends its result to the
//! session's channel. A session's channel dies with the session, so a late result never
//! lands in a newer connection.

use std::sync::Arc;
use std::time::Duration;

use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::metrics::MetricsSample;
use tokio::sync::mpsc;
use tracing::warn;

use crate::host::Host;

/// Longest an inventory read may take before it is given up.
const INVENTORY_DEADLINE: Duration = Duration::from_secs(60);

/// A collector's result.
#[derive(Debug)]
pub enum Collected {
    Inventory(Box<Inventory>),
    Metrics(Box<MetricsSample>),
}

/// Starts collections for one session.
#[derive(Clone)]
pub struct Sampler {
    host: Arc<dyn Host>,
    metrics_deadline: Duration,
    tx: mpsc::Sender<Collected>,
}

impl Sampler {
    pub fn new(
        host: Arc<dyn Host>,
        metrics_deadline: Duration,
    ) -> (Self, mpsc::Receiver<Collected>) {
        let (tx, rx) = mpsc::channel(8);
        let sampler = Self {
            host,
            metrics_deadline,
            tx,
        };
        (sampler, rx)
    }

    /// Reads the inventory in the background.
    pub fn inventory(&self) {
        let host = self.host.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || host.inventory());
            match tokio::time::timeout(INVENTORY_DEADLINE, read).await {
                Ok(Ok(inv)) => {
                    let _ = tx.send(Collected::Inventory(Box::new(inv))).await;
                }
                Ok(Err(e)) => warn!(error = %e, "inventory collection failed"),
                Err(_) => warn!("inventory collection is taking too long (a hung device?)"),
            }
        });
    }

    /// Takes a metrics sample in the background. If an earlier sample is still stuck,
    /// this one is skipped rather than queued behind it.
    pub fn metrics(&self) {
        let host = self.host.clone();
        let tx = self.tx.clone();
        let deadline = self.metrics_deadline;
        tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || host.metrics());
            match tokio::time::timeout(deadline, read).await {
                Ok(Ok(Some(sample))) => {
                    let _ = tx.send(Collected::Metrics(Box::new(sample))).await;
                }
                Ok(Ok(None)) => {
                    warn!("an earlier metrics sample is still running (a hung mount?); skipped")
                }
                Ok(Err(e)) => warn!(error = %e, "metrics sampling failed"),
                Err(_) => warn!("metrics sampling is taking too long (a hung mount?); skipped"),
            }
        });
    }
}
