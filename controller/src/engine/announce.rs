//! After a commit: the counts, the retained states and summary, the events and
//! transitions, the receipts, the answers to calls, and the effects handed on.

use metalbus_protocol::controller::{NodeStateMessage, Receipt, Summary};
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::topic::NodeTopic;
use metalbus_protocol::NodeId;
use tracing::info;

use super::batch::Batch;
use super::calls::CallError;
use super::Engine;
use crate::live::LiveEvent;
use crate::publish::{Delivery, Outbound};
use crate::store::NodeRecord;
use crate::telemetry::StateLabel;

impl Engine {
    /// After a commit (or when there was nothing to write): count, publish, answer, and
    /// hand on the effects.
    pub(super) fn announce(&mut self, batch: Batch, resync: bool) {
        batch.counts.record(&self.telemetry);
        // The summary counts every node: only worth it when one changed. A batch of
        // metrics and heartbeats changes none (it was 2 % of the controller's CPU with
        // 1,000 agents reporting ten times a second, DECISIONS §71).
        let fleet_changed = !batch.nodes.is_empty() || !batch.deleted.is_empty();
        // Keys first: an enrolled agent's birth may follow its answer at once.
        for (id, key) in batch.keys {
            match key {
                Some(key) => self.credentials.keyring.set(id, key),
                None => self.credentials.keyring.remove(&id),
            }
        }
        for (id, _) in &batch.deleted {
            self.out.live.send(LiveEvent::Removed {
                node_id: id.clone(),
            });
        }
        for (_, entry) in &batch.audits {
            info!(node = %entry.node_id, from = %entry.from_state, to = %entry.to_state, triggered_by = %entry.triggered_by, "transition");
            self.telemetry
                .count_transition(entry.from_state, entry.to_state, entry.triggered_by);
            self.out.live.send(LiveEvent::Transition(entry.clone()));
        }
        for id in batch.nodes.keys() {
            self.publish_state(id);
            if let Some(node) = self.fleet.nodes.get(id) {
                self.out
                    .live
                    .send(LiveEvent::State(Self::state_message(node)));
            }
        }
        for (id, event) in &batch.events {
            self.out.live.send(LiveEvent::Event {
                node_id: id.clone(),
                event: event.clone(),
            });
        }
        for msg in batch.outbound {
            self.out.publish.push(msg);
        }
        // Receipts only for what is now durably committed.
        for id in &batch.receipts {
            self.publish_receipt(id);
        }
        for (reply, result) in batch.replies {
            let _ = reply.send(result.and_then(|done| self.reply(done)));
        }
        for reply in batch.token_replies {
            let _ = reply.send(Ok(()));
        }
        for rec in batch.campaigns.values() {
            let view = &rec.view;
            self.out
                .publish
                .push_all(Outbound::retained(self.cfg.topics.campaign(&view.id), view));
            self.out.live.send(LiveEvent::Campaign(view.clone()));
            self.campaign_states.insert(view.id.clone(), view.state);
        }
        if !batch.campaigns.is_empty() {
            self.update_campaign_gauges();
        }
        for (reply, id) in batch.campaign_replies {
            let answer = batch
                .campaigns
                .get(&id)
                .map(|rec| rec.view.clone())
                .ok_or_else(|| CallError::Missing("campaign not found".into()));
            let _ = reply.send(answer);
        }
        for (op, reply, done) in batch.parked {
            self.waiting_wakes.insert(op, (reply, done));
        }
        for wake in batch.wakes {
            let _ = self.out.wake.send(wake);
        }
        if resync {
            let mut ids: Vec<NodeId> = self.fleet.nodes.keys().cloned().collect();
            ids.sort();
            for id in &ids {
                self.publish_state(id);
            }
            self.last_summary = None;
        }
        if fleet_changed || self.last_summary.is_none() {
            self.publish_summary();
        }
    }

    /// A node's state message, as on its retained `state` topic.
    pub fn state_message(node: &NodeRecord) -> NodeStateMessage {
        NodeStateMessage {
            id: node.id.clone(),
            name: node.name.clone(),
            state: node.state,
            phase: node.state.phase(),
            version: node.version,
            since: node.state_changed_at,
            online: node.online,
            install_attempts: node.install_attempts,
            last_error: node.last_install_error.clone(),
            progress: node.progress.clone(),
        }
    }

    pub(super) fn publish_state(&self, id: &NodeId) {
        if let Some(node) = self.fleet.nodes.get(id) {
            let topic = self.cfg.topics.node(id, NodeTopic::State);
            self.out
                .publish
                .push_all(Outbound::retained(topic, &Self::state_message(node)));
        }
    }

    /// The receipt of everything applied for node `id`.
    pub(super) fn publish_receipt(&self, id: &NodeId) {
        let Some(n) = self.fleet.nodes.get(id) else {
            return;
        };
        let Some(session) = &n.report_session else {
            return;
        };
        let receipt = Receipt {
            session: session.clone(),
            seq: n.last_applied_seq,
            protocol: Some(metalbus_protocol::PROTOCOL_VERSION),
        };
        let topic = self.cfg.topics.node(id, NodeTopic::Receipts);
        self.out
            .publish
            .push_all(Outbound::event(topic, &receipt, Delivery::AtLeastOnce));
    }

    pub(super) fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for n in self.fleet.nodes.values() {
            s.total += 1;
            if n.online {
                s.online += 1;
            } else {
                s.offline += 1;
            }
            *s.by_state.entry(n.state).or_default() += 1;
            *s.by_phase.entry(n.state.phase()).or_default() += 1;
        }
        s
    }

    pub(super) fn publish_summary(&mut self) {
        let summary = self.summary();
        if self.last_summary.as_ref() == Some(&summary) {
            return;
        }
        self.out
            .publish
            .push_all(Outbound::retained(self.cfg.topics.summary(), &summary));
        self.update_gauges(&summary);
        self.last_summary = Some(summary);
    }

    /// `metalbus_campaigns{state}`: every campaign the store holds, by state.
    pub(super) fn update_campaign_gauges(&self) {
        for state in metalbus_protocol::campaign::CampaignState::ALL {
            let n = self
                .campaign_states
                .values()
                .filter(|s| **s == state)
                .count();
            self.telemetry.set_campaigns(state, n);
        }
    }

    pub(super) fn update_gauges(&self, summary: &Summary) {
        for state in NodeState::ALL {
            let n = summary.by_state.get(&state).copied().unwrap_or(0);
            self.telemetry
                .nodes
                .get_or_create(&StateLabel::from(state))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.telemetry
            .nodes_online
            .set(i64::try_from(summary.online).unwrap_or(i64::MAX));
    }
}
