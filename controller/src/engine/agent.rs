//! The engine's handling of what agents say outside their outbox: status (birth, Will,
//! clean stop), inventory and metrics; and how a new agent becomes a node (a new
//! `discovered` node, or the registration it matches).

use std::collections::{HashMap, HashSet};

use metalbus_protocol::event::{EventReason, EventType};
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::machine::Event;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::status::{Birth, Offline, OfflineReason, Status};
use metalbus_protocol::{NodeId, Timestamp};
use serde_json::Value;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::batch::{Batch, Tally};
use super::lifecycle::Ctx;
use super::Engine;
use crate::matching::{self, AgentFacts, Candidate, MatchedBy};
use crate::store::{NodeRecord, StoredInventory};
use crate::telemetry::Limit;

/// Inventories that arrive before their node's first birth wait here, and births of
/// new agents wait for their inventory: bounded in number (docs/LIMITS.md).
pub(super) const MAX_EARLY_INVENTORIES: usize = 10_000;
/// An early inventory whose birth has not come after this long is dropped: an agent
/// sends both within seconds, and sends its inventory again after every birth.
const EARLY_INVENTORY_TTL: Duration = Duration::from_secs(600);

/// New agents on their way in: births of unknown agents waiting (briefly) for their
/// inventory, so that they can be matched to registrations by MAC and IP, and
/// inventories that came before their node's birth.
#[derive(Default)]
pub(super) struct Arrivals {
    pub births: HashMap<NodeId, (Birth, Timestamp)>,
    /// With when each arrived.
    pub early: HashMap<NodeId, (Inventory, Timestamp)>,
}

impl Engine {
    pub(super) fn on_status(
        &mut self,
        id: &NodeId,
        status: Status,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        match status {
            Status::Birth(birth) => self.on_birth(id, birth, now, batch),
            Status::Offline(off) => self.on_offline(id, off, now, batch),
        }
    }

    pub(super) fn on_birth(&mut self, id: &NodeId, b: Birth, now: Timestamp, batch: &mut Batch) {
        let Some(before) = self.fleet.nodes.get(id).cloned() else {
            // An unknown agent. With registrations to match, wait (briefly) for its
            // inventory: MACs and IPs match before hostnames.
            let waiting = self.fleet.has_registrations()
                && self.token_claim(id).is_none()
                && !self.arrivals.early.contains_key(id)
                && self.arrivals.births.len() < MAX_EARLY_INVENTORIES;
            if waiting {
                debug!(node = %id, "new agent; waiting for its inventory to match registrations");
                self.arrivals.births.insert(id.clone(), (b, now));
            } else {
                self.create_node(id, b, now, batch);
            }
            return;
        };
        let same_session = before.session.as_deref() == Some(b.session.as_str());
        if same_session && b.conn < before.conn {
            Self::stale(id, "birth", b.conn, before.conn, batch);
            return;
        }
        self.reconnected.insert(id.clone());
        let mut after = before.clone();
        after.online = true;
        after.offline_reason = None;
        after.conn = b.conn;
        after.session = Some(b.session);
        after.hostname = Some(b.hostname);
        after.agent_version = Some(b.agent_version);
        after.agent_protocol = Some(b.protocol);
        newer_protocol(id, b.protocol);
        after.boot_id = b.boot_id;
        after.metrics_interval_s = Some(b.metrics_interval_s);
        if !before.online {
            info!(node = %id, conn = after.conn, "node online");
            batch
                .controller(id, now)
                .normal(EventReason::NodeOnline, "agent connected");
        }
        // A new boot of an installed host (a `reboot_after` plan) activates it.
        let rebooted = before.state == NodeState::Installed
            && (after.boot_id.is_none() || after.boot_id != before.boot_id);
        self.touch(id, now);
        // Its unacked commands go again now.
        self.commands.resend_now(id, now);
        self.resend_commands(now, batch);
        self.replace(before, after, now, batch);
        if rebooted {
            self.run_machine(id, Event::Reborn, Default::default(), now, batch);
        }
    }

    /// A node for an agent seen for the first time: the registration it matches (by
    /// MAC, IP, then hostname), or a new `discovered` node.
    pub(super) fn create_node(&mut self, id: &NodeId, b: Birth, now: Timestamp, batch: &mut Batch) {
        newer_protocol(id, b.protocol);
        let facts = AgentFacts::new(&b.hostname, self.arrivals.early.get(id).map(|(i, _)| i));
        let matched = self
            .token_claim(id)
            .map(|reg| (reg, MatchedBy::Token))
            .or_else(|| self.match_registration(&facts));
        let from_birth = |node: NodeRecord| NodeRecord {
            conn: b.conn,
            session: Some(b.session.clone()),
            hostname: Some(b.hostname.clone()),
            agent_version: Some(b.agent_version.clone()),
            agent_protocol: Some(b.protocol),
            boot_id: b.boot_id.clone(),
            metrics_interval_s: Some(b.metrics_interval_s),
            ..node
        };
        let name = match &matched {
            Some((reg_id, by)) => {
                // The registration becomes this node: its name, labels and group carry
                // over, the agent's id stays, and the record is gone as a node of its own.
                let Some(reg) = self.fleet.nodes.remove(reg_id) else {
                    return;
                };
                self.fleet.names.remove(&reg.name);
                batch.deleted.push((reg_id.clone(), reg.name.clone()));
                let node = from_birth(NodeRecord {
                    state: NodeState::Registered,
                    labels: reg.labels,
                    group: reg.group,
                    control_plane: reg.control_plane,
                    ..NodeRecord::discovered(id.clone(), reg.name.clone(), now)
                });
                info!(node = %id, name = %reg.name, registration = %reg_id, by = by.as_str(), "new agent matched a registration");
                batch.controller(id, now).normal(
                    EventReason::NodeMatched,
                    format!("matched registration {reg_id} by {}", by.as_str()),
                );
                self.fleet.nodes.insert(id.clone(), node);
                reg.name
            }
            None => {
                let name = self.fleet.unique_name(&b.hostname, id);
                info!(node = %id, %name, "new node discovered");
                self.fleet.nodes.insert(
                    id.clone(),
                    from_birth(NodeRecord::discovered(id.clone(), name.clone(), now)),
                );
                name
            }
        };
        self.fleet.names.insert(name, id.clone());
        batch.nodes.insert(id.clone(), None);
        batch.durable = true;
        batch
            .controller(id, now)
            .normal(EventReason::NodeOnline, "agent connected");
        if let Some((reg_id, by)) = matched {
            let ctx = Ctx {
                comment: Some(format!("matched registration {reg_id} by {}", by.as_str())),
                ..Ctx::default()
            };
            self.run_machine(id, Event::AgentMatched, ctx, now, batch);
        }
        self.touch(id, now);
        if let Some((inv, at)) = self.arrivals.early.remove(id) {
            batch.used_early.push((id.clone(), (inv.clone(), at)));
            self.on_inventory(id, inv, now, batch);
        }
    }

    /// The registration the agent's enrollment token names, while it waits for it.
    fn token_claim(&self, id: &NodeId) -> Option<NodeId> {
        let reg = self.credentials.claim(id)?;
        self.fleet
            .nodes
            .get(reg)
            .filter(|n| n.state == NodeState::Registered)
            .map(|n| n.id.clone())
    }

    fn match_registration(&self, facts: &AgentFacts) -> Option<(NodeId, MatchedBy)> {
        let candidates: Vec<Candidate<'_>> = self
            .fleet
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Registered)
            .filter_map(|n| {
                Some(Candidate {
                    id: &n.id,
                    hints: n.registration.as_ref()?,
                    registered_at: n.created_at,
                })
            })
            .collect();
        // A claimed record leaves `registered` at once (this engine is the only
        // writer), so none is claimed twice, however many agents arrive together.
        matching::pick(&candidates, facts, &HashSet::new())
    }

    pub(super) fn on_offline(
        &mut self,
        id: &NodeId,
        off: Offline,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let Some(before) = self.fleet.nodes.get(id).cloned() else {
            debug!(node = %id, "offline status for an unknown node; ignored");
            return;
        };
        let other_session = match (&off.session, &before.session) {
            (Some(theirs), Some(ours)) => theirs != ours,
            _ => false,
        };
        if other_session || off.conn < before.conn {
            Self::stale(id, "offline", off.conn, before.conn, batch);
            return;
        }
        let mut after = before.clone();
        after.online = false;
        after.offline_reason = Some(off.reason);
        after.conn = off.conn;
        if before.online {
            info!(node = %id, reason = off.reason.as_str(), conn = off.conn, "node offline");
            let (kind, message) = match off.reason {
                OfflineReason::Shutdown => (EventType::Normal, "agent stopped cleanly"),
                // Refused at ingest; a Will cannot say it.
                OfflineReason::Lost | OfflineReason::Stale | OfflineReason::Revoked => {
                    (EventType::Warning, "agent connection lost")
                }
            };
            batch
                .controller(id, now)
                .record(kind, EventReason::NodeOffline, message);
        }
        self.replace(before, after, now, batch);
    }

    fn stale(id: &NodeId, what: &str, got: u64, newest: u64, batch: &mut Batch) {
        batch.counts.add(Tally::Stale);
        debug!(node = %id, what, conn = got, newest, "stale status ignored");
    }

    pub(super) fn on_inventory(
        &mut self,
        id: &NodeId,
        inv: Inventory,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let Some(before) = self.fleet.nodes.get(id).cloned() else {
            if let Some((birth, _)) = self.arrivals.births.remove(id) {
                self.arrivals.early.insert(id.clone(), (inv, now));
                self.create_node(id, birth, now, batch);
                return;
            }
            let early = &mut self.arrivals.early;
            if early.len() >= MAX_EARLY_INVENTORIES {
                early.retain(|_, (_, at)| *at > now.minus(EARLY_INVENTORY_TTL));
            }
            if early.len() >= MAX_EARLY_INVENTORIES && !early.contains_key(id) {
                warn!(node = %id, limit = MAX_EARLY_INVENTORIES, "too many early inventories; this one is dropped (the agent sends it again after its birth)");
                batch.counts.limit(Limit::EarlyInventories);
                return;
            }
            early.insert(id.clone(), (inv, now));
            return;
        };
        self.touch(id, now);
        let previous = match batch.inventories.get(id) {
            Some(pending) => Some(pending.inventory.clone()),
            None => match self.store.inventory(id) {
                Ok(stored) => stored.map(|s| s.inventory),
                Err(e) => {
                    error!(node = %id, error = %e, "reading stored inventory failed");
                    None
                }
            },
        };
        if previous.as_ref() == Some(&inv) {
            return;
        }
        if let Some(old) = &previous {
            let changed = changed_sections(old, &inv);
            if !changed.is_empty() {
                batch.agent(id, now).normal(
                    EventReason::InventoryChanged,
                    format!("inventory changed: {}", changed.join(", ")),
                );
            }
        }
        batch.inventories.insert(
            id.clone(),
            StoredInventory {
                received_at: now,
                inventory: inv,
            },
        );
        // A new inventory changes the node's specs: always a new version.
        let mut after = before.clone();
        after.inventory_at = Some(now);
        after.version = before.version + 1;
        after.updated_at = now;
        self.fleet.nodes.insert(id.clone(), after);
        batch.durable = true;
        batch.nodes.entry(id.clone()).or_insert(Some(before.name));
    }

    pub(super) fn on_metrics(&mut self, id: &NodeId, sample: MetricsSample, now: Timestamp) {
        if !self.fleet.nodes.contains_key(id) {
            debug!(node = %id, "metrics for an unknown node; waiting for its birth");
            return;
        }
        self.heartbeats.sample(id, sample, now);
    }

    /// Any message from a known node proves it was alive just now.
    pub(super) fn touch(&mut self, id: &NodeId, now: Timestamp) {
        if self.fleet.nodes.contains_key(id) {
            self.heartbeats.seen(id, now);
        }
    }
}

/// Inventory keys that are not hardware facts.
const IGNORED_INVENTORY_KEYS: &[&str] = &["node_id"];

/// The top-level inventory sections that differ, by their JSON names.
fn changed_sections(old: &Inventory, new: &Inventory) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !IGNORED_INVENTORY_KEYS.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// An agent newer than this controller is served with what the controller knows: its
/// birth, reports and samples of protocol 1 are read; what is new in them is ignored.
fn newer_protocol(id: &NodeId, agent: u32) {
    if agent > metalbus_protocol::PROTOCOL_VERSION {
        warn!(
            node = %id,
            agent,
            controller = metalbus_protocol::PROTOCOL_VERSION,
            "this agent speaks a newer protocol than the controller: upgrade the controller first"
        );
    }
}
