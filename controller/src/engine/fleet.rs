//! The engine's copy of the nodes, with the name index, and the heartbeats it keeps in
//! memory between flushes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::{is_valid_node_name, NodeId, Timestamp};

use super::calls::CallError;
use super::metrics::History;
use crate::store::{Heartbeat, NodeRecord};

/// A node is silent (offline, and not ready for a retry) when nothing was heard from it
/// for this many metrics intervals (DESIGN 7.3).
pub(super) const STALE_AFTER_INTERVALS: u32 = 3;
/// The metrics interval assumed before a node's birth says otherwise.
pub(super) const DEFAULT_METRICS_INTERVAL_S: u32 = 15;

/// How long `node` may be silent before it counts as gone.
pub(super) fn silence_limit(node: &NodeRecord) -> Duration {
    let interval = node
        .metrics_interval_s
        .unwrap_or(DEFAULT_METRICS_INTERVAL_S)
        .max(1);
    Duration::from_secs(u64::from(interval)).saturating_mul(STALE_AFTER_INTERVALS)
}

/// Every node by id, and the unique-name index.
#[derive(Default)]
pub(super) struct Fleet {
    pub nodes: HashMap<NodeId, NodeRecord>,
    pub names: HashMap<String, NodeId>,
}

impl Fleet {
    pub(super) fn of(nodes: Vec<NodeRecord>) -> Self {
        Self {
            names: nodes
                .iter()
                .map(|n| (n.name.clone(), n.id.clone()))
                .collect(),
            nodes: nodes.into_iter().map(|n| (n.id.clone(), n)).collect(),
        }
    }

    /// A node by id, else by name.
    pub(super) fn resolve(&self, key: &str) -> Option<NodeId> {
        NodeId::new(key)
            .ok()
            .filter(|id| self.nodes.contains_key(id))
            .or_else(|| self.names.get(key).cloned())
    }

    /// Whether any pre-registered node waits for its agent.
    pub(super) fn has_registrations(&self) -> bool {
        self.nodes
            .values()
            .any(|n| n.state == NodeState::Registered)
    }

    /// A valid name no other node has (as its name or its id).
    pub(super) fn check_name(&self, name: &str, this: Option<&NodeId>) -> Result<(), CallError> {
        if !is_valid_node_name(name) {
            return Err(CallError::BadRequest(format!(
                "name {name:?} must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-', starting with a letter or digit"
            )));
        }
        if !self.free(name, this) {
            return Err(CallError::Conflict(format!(
                "name {name:?} is taken by another node"
            )));
        }
        Ok(())
    }

    /// Whether no node but `this` has `name` as its name or its id.
    fn free(&self, name: &str, this: Option<&NodeId>) -> bool {
        let other = |id: &NodeId| Some(id) != this;
        !self.names.get(name).is_some_and(other)
            && !self.nodes.keys().any(|id| id.as_str() == name && other(id))
    }

    /// The hostname if it is a free, valid name; else hostname-<id prefix>; else the id,
    /// then id-2, id-3, ... A name never equals another node's id.
    pub(super) fn unique_name(&self, hostname: &str, id: &NodeId) -> String {
        let short: String = id.as_str().chars().take(8).collect();
        [
            hostname.to_string(),
            format!("{hostname}-{short}"),
            id.to_string(),
        ]
        .into_iter()
        .chain((2u64..).map(|k| format!("{id}-{k}")))
        .find(|n| is_valid_node_name(n) && !self.names.contains_key(n) && self.free(n, Some(id)))
        .unwrap_or_else(|| id.to_string())
    }
}

/// The newest heartbeat of each node, which of them changed since the last flush, and
/// the metrics history waiting for it.
#[derive(Default)]
pub(super) struct Heartbeats {
    pub latest: HashMap<NodeId, Heartbeat>,
    pub dirty: HashSet<NodeId>,
    pub history: History,
}

impl Heartbeats {
    /// Node `id` was heard from at `now`.
    pub(super) fn seen(&mut self, id: &NodeId, now: Timestamp) {
        let hb = self.latest.entry(id.clone()).or_insert(Heartbeat {
            last_seen_at: now,
            sample: None,
        });
        hb.last_seen_at = now;
        self.dirty.insert(id.clone());
    }

    /// A metrics sample from node `id`: its newest heartbeat, and history.
    pub(super) fn sample(&mut self, id: &NodeId, sample: MetricsSample, now: Timestamp) {
        self.history.record(id, &sample, now);
        self.latest.insert(
            id.clone(),
            Heartbeat {
                last_seen_at: now,
                sample: Some(sample),
            },
        );
        self.dirty.insert(id.clone());
    }

    pub(super) fn last_seen(&self, id: &NodeId) -> Option<Timestamp> {
        self.latest.get(id).map(|h| h.last_seen_at)
    }

    /// Whether `node` was heard from within its silence limit.
    pub(super) fn fresh(&self, node: &NodeRecord, now: Timestamp) -> bool {
        self.last_seen(&node.id)
            .is_some_and(|t| now < t.plus(silence_limit(node)))
    }
}
