//! The engine's side of metrics history: samples wait in memory and are written with
//! the heartbeat flush, in its one transaction (DESIGN section 4: metrics never slow
//! transitions; a crash loses at most the last `metrics_flush` of them).
//!
//! Each node's current minute is summed in memory; a minute is written as a rollup once
//! the clock has left it. After a restart, the minutes that have samples but no rollup
//! yet are summed again from the stored samples ([`Engine::restore_history`]).

use std::collections::{BTreeMap, HashMap};

use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::{NodeId, Timestamp};
use tracing::{debug, error};

use super::Engine;
use crate::store::{
    key_ms, Point, Rollup, StoreError, StoreReader, WriteTx, MINUTE_MS, MIN_SPACING_MS, RAW_KEEP,
    ROLLUP_KEEP,
};

/// Unwritten samples kept per node while the store refuses writes; the oldest go first.
const MAX_PENDING_PER_NODE: usize = 600;

/// Samples and finished minutes waiting for the next flush, and the open minutes.
#[derive(Default)]
pub(super) struct History {
    /// Samples not yet written, per node, oldest first.
    points: BTreeMap<NodeId, Vec<(u64, Point)>>,
    /// Finished minutes not yet written.
    rollups: BTreeMap<NodeId, Vec<(u64, Rollup)>>,
    /// Each node's open minute and its sum so far.
    open: HashMap<NodeId, (u64, Rollup)>,
    /// Each node's newest kept sample time: keys stay in order even if the clock steps
    /// back, and samples closer than `MIN_SPACING_MS` are not kept.
    last_ms: HashMap<NodeId, u64>,
}

/// What one flush writes.
#[derive(Default)]
pub(super) struct Pending {
    points: BTreeMap<NodeId, Vec<(u64, Point)>>,
    rollups: BTreeMap<NodeId, Vec<(u64, Rollup)>>,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.points.is_empty() && self.rollups.is_empty()
    }

    /// Writes the samples and rollups of nodes that still exist, and drops what each
    /// written node has past its retention. Only the expired keys are visited.
    pub(super) fn write(
        &self,
        tx: &mut WriteTx<'_>,
        exists: impl Fn(&NodeId) -> bool,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let raw_cutoff = key_ms(now.minus(RAW_KEEP).unix_millis());
        let minute_cutoff = key_ms(now.minus(ROLLUP_KEEP).unix_millis()) / MINUTE_MS;
        for (id, points) in self.points.iter().filter(|(id, _)| exists(id)) {
            tx.put_metric_points(id, points)?;
        }
        for (id, rollups) in self.rollups.iter().filter(|(id, _)| exists(id)) {
            tx.put_metric_rollups(id, rollups)?;
        }
        let mut written: Vec<&NodeId> = self.points.keys().chain(self.rollups.keys()).collect();
        written.sort();
        written.dedup();
        for id in written.into_iter().filter(|id| exists(id)) {
            tx.prune_metrics(id, raw_cutoff, minute_cutoff)?;
        }
        Ok(())
    }
}

impl History {
    /// Keeps `sample`, received at `now`, unless it comes too soon after the last one.
    pub(super) fn record(&mut self, id: &NodeId, sample: &MetricsSample, now: Timestamp) {
        let now_ms = key_ms(now.unix_millis());
        let ms = match self.last_ms.get(id) {
            Some(&last) if now_ms < last.saturating_add(MIN_SPACING_MS) => {
                if now_ms + MIN_SPACING_MS > last {
                    return; // too soon after the previous one
                }
                // The clock stepped back: keep the node's keys in order.
                last.saturating_add(MIN_SPACING_MS)
            }
            _ => now_ms,
        };
        self.last_ms.insert(id.clone(), ms);
        let point = Point::of(sample);
        self.points.entry(id.clone()).or_default().push((ms, point));
        let minute = ms / MINUTE_MS;
        match self.open.get_mut(id) {
            Some((m, sum)) if *m == minute => sum.add(&point),
            _ => {
                if let Some((m, sum)) = self.open.insert(id.clone(), (minute, Rollup::of(&point))) {
                    self.rollups.entry(id.clone()).or_default().push((m, sum));
                }
            }
        }
    }

    /// Finishes every open minute the clock has left, and hands over what waits.
    pub(super) fn take(&mut self, now: Timestamp) -> Pending {
        let minute = key_ms(now.unix_millis()) / MINUTE_MS;
        let done: Vec<NodeId> = self
            .open
            .iter()
            .filter(|(_, (m, _))| *m < minute)
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            if let Some((m, sum)) = self.open.remove(&id) {
                self.rollups.entry(id).or_default().push((m, sum));
            }
        }
        Pending {
            points: std::mem::take(&mut self.points),
            rollups: std::mem::take(&mut self.rollups),
        }
    }

    /// Puts back what a failed flush did not write, ahead of what came since; bounded.
    pub(super) fn put_back(&mut self, pending: Pending) {
        prepend(&mut self.points, pending.points);
        prepend(&mut self.rollups, pending.rollups);
    }

    /// Rebuilds a node's state from the store: its newest sample time, and the minutes
    /// after its newest rollup summed again from stored samples (the open one stays
    /// open, earlier ones wait for the next flush).
    fn restore(
        &mut self,
        store: &StoreReader,
        id: &NodeId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let (last_raw, last_minute) = store.metrics_ends(id)?;
        let Some(last_raw) = last_raw else {
            return Ok(());
        };
        self.last_ms.insert(id.clone(), last_raw);
        let from = last_minute.map_or(0, |m| (m + 1) * MINUTE_MS);
        let current = key_ms(now.unix_millis()) / MINUTE_MS;
        let mut minutes: BTreeMap<u64, Rollup> = BTreeMap::new();
        for (ms, point) in store.metric_points(id, from)? {
            minutes.entry(ms / MINUTE_MS).or_default().add(&point);
        }
        for (minute, sum) in minutes {
            if minute < current {
                self.rollups
                    .entry(id.clone())
                    .or_default()
                    .push((minute, sum));
            } else {
                self.open.insert(id.clone(), (minute, sum));
            }
        }
        Ok(())
    }
}

/// Puts each node's `older` entries ahead of the ones `into` holds, keeping the newest
/// `MAX_PENDING_PER_NODE`.
fn prepend<T>(into: &mut BTreeMap<NodeId, Vec<T>>, older: BTreeMap<NodeId, Vec<T>>) {
    for (id, mut entries) in older {
        entries.extend(into.remove(&id).unwrap_or_default());
        let excess = entries.len().saturating_sub(MAX_PENDING_PER_NODE);
        entries.drain(..excess);
        into.insert(id, entries);
    }
}

impl Engine {
    /// After a start: every node's history state, from the store.
    pub(super) fn restore_history(&mut self) -> Result<(), StoreError> {
        let now = self.clock.now();
        for id in self.fleet.nodes.keys() {
            self.heartbeats.history.restore(&self.store, id, now)?;
        }
        Ok(())
    }

    /// Drops every node's samples and rollups past their retention, also of nodes that
    /// have gone quiet (each flush prunes only the nodes it writes).
    pub(super) fn prune_history(&mut self) {
        let now = self.clock.now();
        let raw_cutoff = key_ms(now.minus(RAW_KEEP).unix_millis());
        let minute_cutoff = key_ms(now.minus(ROLLUP_KEEP).unix_millis()) / MINUTE_MS;
        let result = self.store.write(redb::Durability::None, |tx| {
            for id in self.fleet.nodes.keys() {
                tx.prune_metrics(id, raw_cutoff, minute_cutoff)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => debug!(nodes = self.fleet.nodes.len(), "pruned metrics history"),
            Err(e) => error!(error = %e, "pruning metrics history failed; will try again"),
        }
    }
}

#[cfg(test)]
mod tests;
