//! Metrics history: each node's samples for an hour and one-minute rollups for seven
//! days (DESIGN section 9, `/nodes/{node}/metrics?period=`).
//!
//! Only what the API shows is kept of a sample (a [`Point`]: cpu, memory and storage
//! percentages, network in and out Mbps), under the controller's receive time. A
//! [`Rollup`] holds count, sum and max per resource, so rollups merge exactly: the
//! average of a window is the sum of sums over the sum of counts.

use std::time::Duration;

use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::units::mbps;
use metalbus_protocol::NodeId;
use redb::{ReadableDatabase, TableDefinition};

use super::{StoreError, StoreReader, WriteTx};

/// (node id, unix ms) → the [`Point`]'s values by [`Resource`] index.
pub(super) const METRICS_RAW: TableDefinition<(&str, u64), [Option<f64>; RESOURCES]> =
    TableDefinition::new("metrics_raw");
/// (node id, unix minute) → (count, sum, max) by [`Resource`] index.
pub(super) const METRICS_1M: TableDefinition<(&str, u64), RollupRow> =
    TableDefinition::new("metrics_1m");

/// How a [`Rollup`] is stored: (count, sum, max) per resource.
type RollupRow = [(u32, f64, f64); RESOURCES];

/// How long samples are kept.
pub const RAW_KEEP: Duration = Duration::from_secs(3600);
/// How long one-minute rollups are kept.
pub const ROLLUP_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// A sample that comes sooner than this after the node's previous kept one is not kept
/// (it still is the node's heartbeat): at most 7,200 samples per node and hour, whatever
/// the agent's interval.
pub const MIN_SPACING_MS: u64 = 500;
/// Milliseconds in a minute.
pub const MINUTE_MS: u64 = 60_000;

/// How many values a point has.
pub const RESOURCES: usize = 5;

/// What a point holds, in storage order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Percent of all CPUs.
    Cpu,
    /// Percent of memory used.
    Memory,
    /// Percent of all filesystems used (`MetricsSample::storage_percent`).
    Storage,
    /// Received Mbit/s.
    NetIn,
    /// Sent Mbit/s.
    NetOut,
}

impl Resource {
    pub const ALL: [Resource; RESOURCES] = [
        Resource::Cpu,
        Resource::Memory,
        Resource::Storage,
        Resource::NetIn,
        Resource::NetOut,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// One kept sample.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Point(pub [Option<f64>; RESOURCES]);

impl Point {
    /// The values the API shows, from a validated sample; `None` where the agent sent
    /// none.
    pub fn of(sample: &MetricsSample) -> Point {
        Point([
            sample.cpu_percent,
            sample.memory.and_then(|m| m.percent()),
            sample.storage_percent(),
            sample.network.map(|n| mbps(n.rx_bytes_per_s)),
            sample.network.map(|n| mbps(n.tx_bytes_per_s)),
        ])
    }

    pub fn get(&self, r: Resource) -> Option<f64> {
        self.0[r.index()]
    }
}

/// Count, sum and max of one resource's values.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Agg {
    pub count: u32,
    pub sum: f64,
    pub max: f64,
}

impl Agg {
    pub fn add(&mut self, v: f64) {
        self.merge(&Agg {
            count: 1,
            sum: v,
            max: v,
        });
    }

    pub fn merge(&mut self, other: &Agg) {
        if other.count == 0 {
            return;
        }
        self.max = if self.count == 0 {
            other.max
        } else {
            self.max.max(other.max)
        };
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
    }

    /// The mean of the values, weighted by how many each stands for.
    pub fn average(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / f64::from(self.count))
    }

    pub fn peak(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }
}

/// Count, sum and max per resource over some samples (a minute, or a whole window).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rollup(pub [Agg; RESOURCES]);

impl Rollup {
    pub fn of(point: &Point) -> Rollup {
        let mut r = Rollup::default();
        r.add(point);
        r
    }

    pub fn add(&mut self, point: &Point) {
        for (agg, v) in self.0.iter_mut().zip(point.0) {
            if let Some(v) = v {
                agg.add(v);
            }
        }
    }

    pub fn merge(&mut self, other: &Rollup) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            a.merge(b);
        }
    }

    pub fn get(&self, r: Resource) -> &Agg {
        &self.0[r.index()]
    }

    fn to_row(self) -> RollupRow {
        self.0.map(|a| (a.count, a.sum, a.max))
    }

    fn from_row(row: RollupRow) -> Rollup {
        Rollup(row.map(|(count, sum, max)| Agg { count, sum, max }))
    }
}

/// `ms` as a table key (times before 1970 count as 0).
pub fn key_ms(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0)
}

impl StoreReader {
    /// A node's samples at or after `from_ms`, oldest first.
    pub fn metric_points(
        &self,
        id: &NodeId,
        from_ms: u64,
    ) -> Result<Vec<(u64, Point)>, StoreError> {
        let txn = tryop!("begin read", self.db()?.begin_read());
        let t = tryop!("open metrics_raw", txn.open_table(METRICS_RAW));
        let key = id.as_str();
        let mut out = Vec::new();
        for entry in tryop!(
            "scan metrics_raw",
            t.range((key, from_ms)..=(key, u64::MAX))
        ) {
            let (k, v) = tryop!("scan metrics_raw", entry);
            out.push((k.value().1, Point(v.value())));
        }
        Ok(out)
    }

    /// A node's one-minute rollups from minute `from_minute` on, oldest first.
    pub fn metric_rollups(
        &self,
        id: &NodeId,
        from_minute: u64,
    ) -> Result<Vec<(u64, Rollup)>, StoreError> {
        let txn = tryop!("begin read", self.db()?.begin_read());
        let t = tryop!("open metrics_1m", txn.open_table(METRICS_1M));
        let key = id.as_str();
        let mut out = Vec::new();
        for entry in tryop!(
            "scan metrics_1m",
            t.range((key, from_minute)..=(key, u64::MAX))
        ) {
            let (k, v) = tryop!("scan metrics_1m", entry);
            out.push((k.value().1, Rollup::from_row(v.value())));
        }
        Ok(out)
    }

    /// The newest stored sample's time and the newest rollup's minute of a node.
    pub fn metrics_ends(&self, id: &NodeId) -> Result<(Option<u64>, Option<u64>), StoreError> {
        let txn = tryop!("begin read", self.db()?.begin_read());
        let key = id.as_str();
        let raw = tryop!("open metrics_raw", txn.open_table(METRICS_RAW));
        let last_raw =
            match tryop!("scan metrics_raw", raw.range((key, 0)..=(key, u64::MAX))).next_back() {
                Some(entry) => Some(tryop!("scan metrics_raw", entry).0.value().1),
                None => None,
            };
        let m = tryop!("open metrics_1m", txn.open_table(METRICS_1M));
        let last_minute =
            match tryop!("scan metrics_1m", m.range((key, 0)..=(key, u64::MAX))).next_back() {
                Some(entry) => Some(tryop!("scan metrics_1m", entry).0.value().1),
                None => None,
            };
        Ok((last_raw, last_minute))
    }
}

impl WriteTx<'_> {
    pub fn put_metric_points(
        &mut self,
        id: &NodeId,
        points: &[(u64, Point)],
    ) -> Result<(), StoreError> {
        let mut t = tryop!("open metrics_raw", self.txn.open_table(METRICS_RAW));
        for (ms, p) in points {
            tryop!("write metrics_raw", t.insert((id.as_str(), *ms), p.0));
        }
        Ok(())
    }

    pub fn put_metric_rollups(
        &mut self,
        id: &NodeId,
        rollups: &[(u64, Rollup)],
    ) -> Result<(), StoreError> {
        let mut t = tryop!("open metrics_1m", self.txn.open_table(METRICS_1M));
        for (minute, r) in rollups {
            tryop!(
                "write metrics_1m",
                t.insert((id.as_str(), *minute), r.to_row())
            );
        }
        Ok(())
    }

    /// Drops a node's samples before `raw_before_ms` and rollups before minute
    /// `rollups_before`. Only the expired keys are visited.
    pub fn prune_metrics(
        &mut self,
        id: &NodeId,
        raw_before_ms: u64,
        rollups_before: u64,
    ) -> Result<(), StoreError> {
        let key = id.as_str();
        let mut raw = tryop!("open metrics_raw", self.txn.open_table(METRICS_RAW));
        tryop!(
            "prune metrics_raw",
            raw.retain_in((key, 0)..(key, raw_before_ms), |_, _| false)
        );
        let mut m = tryop!("open metrics_1m", self.txn.open_table(METRICS_1M));
        tryop!(
            "prune metrics_1m",
            m.retain_in((key, 0)..(key, rollups_before), |_, _| false)
        );
        Ok(())
    }

    /// Everything a node has in both tables (`delete_node`).
    pub(super) fn delete_metrics(&mut self, id: &NodeId) -> Result<(), StoreError> {
        let key = id.as_str();
        let mut raw = tryop!("open metrics_raw", self.txn.open_table(METRICS_RAW));
        tryop!(
            "delete metrics_raw",
            raw.retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
        );
        let mut m = tryop!("open metrics_1m", self.txn.open_table(METRICS_1M));
        tryop!(
            "delete metrics_1m",
            m.retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use redb::Durability;

    use super::*;
    use crate::store::tests::record;
    use crate::store::Store;
    use crate::telemetry::Telemetry;

    fn p(cpu: f64, mem: Option<f64>) -> Point {
        Point([Some(cpu), mem, None, Some(1.0), Some(2.0)])
    }

    #[test]
    fn rollups_merge_into_a_count_weighted_average_and_the_max() {
        // Minute 1: cpu 10, 20, 30 (mean 20); minute 2: cpu 80 (one sample).
        let mut m1 = Rollup::default();
        for v in [10.0, 20.0, 30.0] {
            m1.add(&p(v, None));
        }
        let m2 = Rollup::of(&p(80.0, Some(50.0)));
        let mut window = Rollup::default();
        window.merge(&m1);
        window.merge(&m2);
        let cpu = window.get(Resource::Cpu);
        // (10 + 20 + 30 + 80) / 4 = 35, not the mean of the minute means (20 + 80) / 2.
        assert_eq!(cpu.average(), Some(35.0));
        assert_eq!(cpu.peak(), Some(80.0));
        assert_eq!(cpu.count, 4);
        // A resource missing from some samples counts only where present.
        assert_eq!(window.get(Resource::Memory).average(), Some(50.0));
        assert_eq!(window.get(Resource::Memory).count, 1);
        assert_eq!(window.get(Resource::Storage).average(), None);
        assert_eq!(window.get(Resource::Storage).peak(), None);
        // The max of negative-free values starts from the first, not from 0.
        let low = Rollup::of(&p(0.5, None));
        assert_eq!(low.get(Resource::Cpu).peak(), Some(0.5));
    }

    #[test]
    fn points_follow_the_sample() {
        let sample: MetricsSample = serde_json::from_str(
            r#"{"ts":"2026-01-01T00:00:00Z","cpu_percent":12.5,"load":null,
                "memory":{"used_bytes":1,"total_bytes":4},"swap":null,
                "filesystems":[{"mount":"/","fs_type":null,"used_bytes":30,"total_bytes":100,"available_bytes":70}],
                "network":{"rx_bytes_per_s":125000.0,"tx_bytes_per_s":250000.0},
                "disk_io":null,"uptime_s":1,"temperatures_c":null}"#,
        )
        .unwrap();
        assert_eq!(
            Point::of(&sample),
            Point([Some(12.5), Some(25.0), Some(30.0), Some(1.0), Some(2.0)])
        );
    }

    #[test]
    fn pruning_keeps_the_window_and_delete_node_removes_everything() {
        let mut store = Store::in_memory(Arc::new(Telemetry::new())).unwrap();
        let (a, b) = (record("a", "a"), record("b", "b"));
        store
            .write(Durability::Immediate, |tx| {
                for n in [&a, &b] {
                    tx.put_node(n, None)?;
                    let points: Vec<(u64, Point)> =
                        (0..10).map(|i| (i * 1000, p(i as f64, None))).collect();
                    tx.put_metric_points(&n.id, &points)?;
                    let rollups: Vec<(u64, Rollup)> =
                        (0..10).map(|m| (m, Rollup::of(&p(1.0, None)))).collect();
                    tx.put_metric_rollups(&n.id, &rollups)?;
                }
                tx.prune_metrics(&a.id, 4000, 7)
            })
            .unwrap();
        let raw = store.metric_points(&a.id, 0).unwrap();
        assert_eq!(raw.first().map(|r| r.0), Some(4000));
        assert_eq!(raw.len(), 6);
        let minutes: Vec<u64> = store
            .metric_rollups(&a.id, 0)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(minutes, vec![7, 8, 9]);
        assert_eq!(store.metrics_ends(&a.id).unwrap(), (Some(9000), Some(9)));
        // The other node is untouched.
        assert_eq!(store.metric_points(&b.id, 0).unwrap().len(), 10);
        assert_eq!(store.metric_points(&b.id, 5000).unwrap().len(), 5);

        store
            .write(Durability::Immediate, |tx| tx.delete_node(&b.id, "b"))
            .unwrap();
        assert!(store.metric_points(&b.id, 0).unwrap().is_empty());
        assert!(store.metric_rollups(&b.id, 0).unwrap().is_empty());
        assert_eq!(store.metrics_ends(&b.id).unwrap(), (None, None));
        assert_eq!(store.metric_points(&a.id, 0).unwrap().len(), 6);
    }
}
