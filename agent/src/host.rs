//! Where an agent's facts come from: the real machine, or (for `simulate`) an invented
//! one. The daemon only sees this trait, so simulated agents run the same protocol code.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::Timestamp;

use crate::collectors::{identity, inventory, metrics::MetricsCollector};

/// A host's identity facts, inventory and metrics. The reads may block (they are run
/// on blocking threads with deadlines).
pub trait Host: Send + Sync + 'static {
    fn hostname(&self) -> String;
    fn boot_id(&self) -> Option<String>;
    fn inventory(&self) -> Inventory;
    /// One sample; `None` when an earlier one is still running.
    fn metrics(&self) -> Option<MetricsSample>;
}

/// This machine, read from `/sys`, `/proc` and `/etc` under `root`.
pub struct RealHost {
    root: PathBuf,
    hostname: Option<String>,
    boot_id: Option<String>,
    collector: Mutex<MetricsCollector>,
}

impl RealHost {
    pub fn new(root: PathBuf) -> Self {
        let collector = Mutex::new(MetricsCollector::new(&root));
        Self {
            hostname: identity::hostname(&root),
            boot_id: identity::boot_id(&root),
            root,
            collector,
        }
    }
}

impl Host for RealHost {
    fn hostname(&self) -> String {
        self.hostname.clone().unwrap_or_default()
    }

    fn boot_id(&self) -> Option<String> {
        self.boot_id.clone()
    }

    fn inventory(&self) -> Inventory {
        inventory::collect(&self.root)
    }

    fn metrics(&self) -> Option<MetricsSample> {
        // Held by an earlier sample that is still stuck (a hung mount): skip this one.
        let mut c = self.collector.try_lock().ok()?;
        Some(c.sample(Timestamp::from(SystemTime::now())))
    }
}
