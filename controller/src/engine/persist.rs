//! The engine's writes: a batch in one transaction, the heartbeats and metrics history
//! with cheap durability, and the sweep of old events.

use metalbus_protocol::{NodeId, Timestamp};
use redb::Durability;
use tracing::{error, info};

use super::batch::Batch;
use super::Engine;
use crate::store::{EventBounds, StoreError};
use crate::telemetry::Limit;

impl Engine {
    /// One transaction: nodes, inventories, audit entries, commands, events and tokens.
    pub(super) fn commit(&mut self, batch: &Batch, now: Timestamp) -> Result<(), StoreError> {
        let retention = self.cfg.controller.events;
        let cutoff = now.minus(retention.max_age);
        let keep = EventBounds {
            per_node: usize::try_from(retention.max_per_node).unwrap_or(usize::MAX),
            per_reason: usize::try_from(retention.max_per_reason).unwrap_or(usize::MAX),
        };
        let mut dropped_for_reason = 0u64;
        let durability = if batch.durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        let nodes = &self.fleet.nodes;
        self.store.write(durability, |tx| {
            for (id, name) in &batch.deleted {
                tx.delete_node(id, name)?;
            }
            for (id, old_name) in &batch.nodes {
                if let Some(node) = nodes.get(id) {
                    tx.put_node(node, old_name.as_deref())?;
                }
            }
            for (id, inv) in &batch.inventories {
                tx.put_inventory(id, inv)?;
            }
            for (n, entry) in &batch.audits {
                tx.put_audit(*n, entry)?;
            }
            for rec in &batch.commands {
                tx.put_command(rec)?;
            }
            for (id, event) in &batch.events {
                dropped_for_reason += u64::from(tx.put_event(id, event, keep, cutoff)?);
            }
            for (hash, token) in &batch.tokens {
                tx.put_token(hash, token)?;
            }
            for hash in &batch.deleted_tokens {
                tx.delete_token(hash)?;
            }
            for (id, token) in &batch.enroll_tokens {
                match token {
                    Some(t) => tx.put_enroll_token(id, t)?,
                    None => tx.delete_enroll_token(id)?,
                }
            }
            for rec in batch.campaigns.values() {
                tx.put_campaign(rec)?;
            }
            for ((id, place), node) in &batch.campaign_nodes {
                tx.put_campaign_node(id, *place, node)?;
            }
            for (id, cred) in &batch.credentials {
                match cred {
                    Some(c) => tx.put_credential(id, c)?,
                    None => tx.delete_credential(id)?,
                }
            }
            Ok(())
        })?;
        for _ in 0..dropped_for_reason {
            self.telemetry.count_limit(Limit::EventsPerReason);
        }
        Ok(())
    }

    /// Drops events older than `[events] max_age`, also of nodes that no longer add any.
    pub(super) fn prune_events(&mut self) {
        let cutoff = self.clock.now().minus(self.cfg.controller.events.max_age);
        match self
            .store
            .write(Durability::None, |tx| tx.prune_events(cutoff))
        {
            Ok(0) => {}
            Ok(removed) => info!(removed, "dropped events past their max_age"),
            Err(e) => error!(error = %e, "pruning old events failed; will try again"),
        }
    }

    /// Writes the heartbeats and the metrics history that changed, in one transaction.
    pub(super) fn flush_heartbeats(&mut self, durability: Durability) {
        let now = self.clock.now();
        let dirty: Vec<NodeId> = self.heartbeats.dirty.drain().collect();
        let history = self.heartbeats.history.take(now);
        if dirty.is_empty() && history.is_empty() && matches!(durability, Durability::None) {
            return;
        }
        let (latest, nodes) = (&self.heartbeats.latest, &self.fleet.nodes);
        // An Immediate commit, even an empty one, also makes earlier cheap commits durable.
        let result = self.store.write(durability, |tx| {
            for id in &dirty {
                if let Some(hb) = latest.get(id) {
                    tx.put_heartbeat(id, hb)?;
                }
            }
            history.write(tx, |id| nodes.contains_key(id), now)
        });
        if let Err(e) = result {
            error!(error = %e, count = dirty.len(), "heartbeat flush failed; will retry");
            self.heartbeats.dirty.extend(dirty);
            self.heartbeats.history.put_back(history);
        }
    }
}
