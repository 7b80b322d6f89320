//! Campaigns (DESIGN section 9): one action over a stored set of nodes, with a rollout
//! limit and abort rules. They live here, in the engine, so that every step (a node
//! started, judged succeeded or failed, skipped) is written in the same transaction as
//! the transitions it causes. A controller killed in the middle loads the campaign back
//! as it was committed: a node is started at most once, and no result is lost.
//!
//! After every batch's inputs (and on the engine's timer while only `max_per_minute`
//! holds a campaign back), [`Engine::step_campaigns`]
//! judges each in-flight node from its state (or its operation, for reboot and
//! poweroff), applies the abort rules, starts pending nodes as `max_concurrent` and
//! `max_per_minute` allow, and completes a campaign whose nodes are all done.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use metalbus_protocol::campaign::{
    judge, CampaignAction, CampaignCounts, CampaignNodeView, CampaignRequest, CampaignState,
    CampaignView, Outcome, ABORT_RULE, DEFAULT_CONCURRENT,
};
use metalbus_protocol::command::{CommandStatus, PowerAction};
use metalbus_protocol::event::EventReason;
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::{NodeId, Timestamp};
use tokio::sync::oneshot;
use tracing::info;

use super::batch::Batch;
use super::calls::{decide, Action, CallError, Decision};
use super::Engine;
use crate::store::{CampaignNodeRecord, CampaignRecord, Store, StoreError};

/// Where the answer to a campaign call goes: the campaign as committed.
pub type CampaignReplyTo = oneshot::Sender<Result<CampaignView, CallError>>;

/// An operator's campaign request, from the HTTP API.
#[derive(Debug)]
pub struct CampaignCall {
    pub op: CampaignOp,
    /// Who asked (the token's name).
    pub user: Option<String>,
    pub reply: CampaignReplyTo,
}

#[derive(Debug)]
pub enum CampaignOp {
    /// A new campaign over `nodes` (the selector, resolved by the API, in order).
    Create {
        request: Box<CampaignRequest>,
        nodes: Vec<(NodeId, String)>,
    },
    Pause(String),
    Resume(String),
    Cancel(String),
}

/// The window `max_per_minute` counts starts in.
const MINUTE: Duration = Duration::from_secs(60);

/// A campaign that can still change: running or paused, or finished with nodes in
/// flight.
#[derive(Debug)]
struct Live {
    rec: CampaignRecord,
    /// By place.
    nodes: Vec<CampaignNodeRecord>,
    /// The first place that may still be pending.
    cursor: usize,
    /// When the nodes started within the last minute, oldest first.
    recent: VecDeque<Timestamp>,
    /// The places of the nodes in flight (each step looks at these only).
    in_flight: BTreeSet<usize>,
}

impl Live {
    /// Whether it will never change again.
    fn settled(&self) -> bool {
        self.rec.view.state.is_final() && self.rec.view.counts.in_flight == 0
    }
}

/// The campaigns the engine is running.
#[derive(Debug, Default)]
pub(super) struct Campaigns {
    live: BTreeMap<String, Live>,
    /// Changed since the last step was written: campaigns, and nodes (campaign, place).
    dirty: BTreeSet<String>,
    dirty_nodes: Vec<(String, u32)>,
}

impl Campaigns {
    /// Every campaign of `all` that can still change, with its nodes from the store.
    pub(super) fn load(store: &Store, all: Vec<CampaignRecord>) -> Result<Self, StoreError> {
        let mut live = BTreeMap::new();
        for rec in all {
            let view = &rec.view;
            if view.state.is_final() && view.counts.in_flight == 0 {
                continue;
            }
            let nodes: Vec<CampaignNodeRecord> = store
                .campaign_nodes(&view.id, 0, usize::MAX)?
                .into_iter()
                .map(|(_, n)| n)
                .collect();
            let cursor = nodes
                .iter()
                .position(|n| n.view.outcome == Outcome::Pending)
                .unwrap_or(nodes.len());
            let mut recent: Vec<Timestamp> =
                nodes.iter().filter_map(|n| n.view.started_at).collect();
            recent.sort();
            let in_flight = nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.view.outcome == Outcome::InFlight)
                .map(|(i, _)| i)
                .collect();
            live.insert(
                view.id.clone(),
                Live {
                    rec,
                    nodes,
                    cursor,
                    recent: recent.into(),
                    in_flight,
                },
            );
        }
        Ok(Self {
            live,
            ..Self::default()
        })
    }

    /// Whether a running campaign could start a node with room to spare: only
    /// `max_per_minute` holds it, and time alone frees it (the engine's timer then steps
    /// the campaigns without inputs). Anything else that frees room is an input.
    pub(super) fn waiting(&self) -> bool {
        self.live.values().any(|c| {
            let v = &c.rec.view;
            v.state == CampaignState::Running
                && v.counts.pending > 0
                && v.counts.in_flight < v.max_concurrent
        })
    }
}

/// The node events' text: the campaign and its action.
fn label(rec: &CampaignRecord) -> String {
    match &rec.view.plan {
        Some(plan) => format!(
            "campaign {} ({} with plan {plan})",
            rec.view.id, rec.view.action
        ),
        None => format!("campaign {} ({})", rec.view.id, rec.view.action),
    }
}

impl Engine {
    pub(super) fn on_campaign(&mut self, call: CampaignCall, now: Timestamp, batch: &mut Batch) {
        let user = call.user.as_deref();
        let result = match call.op {
            CampaignOp::Create { request, nodes } => {
                self.create_campaign(*request, nodes, user, now)
            }
            CampaignOp::Pause(id) => self.control_campaign(&id, user, now, |state, reason| {
                if state != CampaignState::Running {
                    return Err(format!(
                        "campaign is {state}; only a running campaign can be paused"
                    ));
                }
                Ok((
                    CampaignState::Paused,
                    Some(format!("paused by {}", reason.unwrap_or("an operator"))),
                ))
            }),
            CampaignOp::Resume(id) => self.control_campaign(&id, user, now, |state, _| {
                if state != CampaignState::Paused {
                    return Err(format!(
                        "campaign is {state}; only a paused campaign can be resumed"
                    ));
                }
                Ok((CampaignState::Running, None))
            }),
            CampaignOp::Cancel(id) => self.cancel_campaign(&id, user, now, batch),
        };
        match result {
            Ok(id) => {
                // Stepped in this batch: a new campaign starts its first nodes at once.
                batch.campaign_replies.push((call.reply, id));
            }
            Err(e) => {
                let _ = call.reply.send(Err(e));
            }
        }
    }

    fn create_campaign(
        &mut self,
        request: CampaignRequest,
        nodes: Vec<(NodeId, String)>,
        user: Option<&str>,
        now: Timestamp,
    ) -> Result<String, CallError> {
        // The API checked the request (`CampaignRequest::check`) before it resolved the
        // selector; the plan is the engine's to pick.
        if nodes.is_empty() {
            return Err(CallError::BadRequest("the selector matches no node".into()));
        }
        let plan = match request.action {
            CampaignAction::Manage => Some(
                self.cfg
                    .controller
                    .pick_plan(request.plan.as_deref())
                    .map_err(CallError::BadRequest)?
                    .name,
            ),
            _ => None,
        };
        let id = loop {
            let id = self.ids.campaign();
            if !self.campaigns.live.contains_key(&id) && !self.campaign_states.contains_key(&id) {
                break id;
            }
        };
        let total = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
        let view = CampaignView {
            id: id.clone(),
            action: request.action,
            plan,
            force: request.force,
            selector: request.selector,
            max_concurrent: request.max_concurrent.unwrap_or(DEFAULT_CONCURRENT),
            max_per_minute: request.max_per_minute,
            abort: request.abort,
            state: CampaignState::Running,
            reason: None,
            counts: CampaignCounts {
                total,
                pending: total,
                ..CampaignCounts::default()
            },
            created_by: user.map(String::from),
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        let nodes: Vec<CampaignNodeRecord> = nodes
            .into_iter()
            .map(|(node, name)| CampaignNodeRecord {
                view: CampaignNodeView {
                    node,
                    name,
                    outcome: Outcome::Pending,
                    message: None,
                    started_at: None,
                    finished_at: None,
                    operation_id: None,
                },
                as_unmanage: false,
            })
            .collect();
        info!(campaign = %id, action = %view.action, nodes = total, user = user.unwrap_or("-"), "campaign created");
        let live = Live {
            rec: CampaignRecord {
                view,
                since: CampaignCounts::default(),
            },
            nodes,
            cursor: 0,
            recent: VecDeque::new(),
            in_flight: BTreeSet::new(),
        };
        // Every node is written once now; later only the ones that change.
        self.campaigns
            .dirty_nodes
            .extend((0..total).map(|place| (id.clone(), place)));
        self.campaigns.dirty.insert(id.clone());
        self.campaigns.live.insert(id.clone(), live);
        Ok(id)
    }

    /// Pause or resume: `change` gives the new state and reason, or why not.
    fn control_campaign(
        &mut self,
        id: &str,
        user: Option<&str>,
        now: Timestamp,
        change: impl FnOnce(
            CampaignState,
            Option<&str>,
        ) -> Result<(CampaignState, Option<String>), String>,
    ) -> Result<String, CallError> {
        let live = self.live_campaign(id)?;
        let (state, reason) = change(live.rec.view.state, user).map_err(CallError::Conflict)?;
        if state == CampaignState::Running {
            // Resumed: the abort rules judge what comes after.
            live.rec.since = live.rec.view.counts;
        }
        live.rec.view.state = state;
        live.rec.view.reason = reason;
        live.rec.view.updated_at = now;
        info!(campaign = %id, state = %state, user = user.unwrap_or("-"), "campaign changed");
        self.campaigns.dirty.insert(id.to_string());
        Ok(id.to_string())
    }

    /// Cancel: no node starts any more, pending ones are skipped, in-flight ones finish.
    /// A campaign an abort rule paused ends `aborted`, any other `cancelled`.
    fn cancel_campaign(
        &mut self,
        id: &str,
        user: Option<&str>,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<String, CallError> {
        let live = self.live_campaign(id)?;
        let view = &mut live.rec.view;
        if view.state.is_final() {
            return Err(CallError::Conflict(format!(
                "campaign is {}; only a running or paused campaign can be cancelled",
                view.state
            )));
        }
        let by_rule = view.state == CampaignState::Paused
            && view
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with(ABORT_RULE));
        let who = user.unwrap_or("an operator");
        if by_rule {
            view.state = CampaignState::Aborted;
            view.reason = Some(format!(
                "{}; cancelled by {who}",
                view.reason.clone().unwrap_or_default()
            ));
        } else {
            view.state = CampaignState::Cancelled;
            view.reason = Some(format!("cancelled by {who}"));
        }
        view.updated_at = now;
        let message = format!("the campaign was {} before this node started", view.state);
        let mut skipped = Vec::new();
        for (place, node) in live.nodes.iter_mut().enumerate() {
            if node.view.outcome == Outcome::Pending {
                node.view.outcome = Outcome::Skipped;
                node.view.message = Some(message.clone());
                node.view.finished_at = Some(now);
                live.rec.view.counts.remove(Outcome::Pending);
                live.rec.view.counts.add(Outcome::Skipped);
                skipped.push(place);
            }
        }
        live.cursor = live.nodes.len();
        info!(campaign = %id, state = %live.rec.view.state, skipped = skipped.len(), user = who, "campaign cancelled");
        let dirty: Vec<(String, u32)> = skipped
            .into_iter()
            .map(|p| (id.to_string(), u32::try_from(p).unwrap_or(u32::MAX)))
            .collect();
        batch
            .counts
            .campaign_nodes
            .extend(dirty.iter().map(|_| Outcome::Skipped));
        self.campaigns.dirty_nodes.extend(dirty);
        self.campaigns.dirty.insert(id.to_string());
        Ok(id.to_string())
    }

    fn live_campaign(&mut self, id: &str) -> Result<&mut Live, CallError> {
        if let Some(live) = self.campaigns.live.get_mut(id) {
            return Ok(live);
        }
        match self.campaign_states.get(id) {
            Some(state) => Err(CallError::Conflict(format!(
                "campaign is {state}; it cannot change any more"
            ))),
            None => Err(CallError::Missing("campaign not found".into())),
        }
    }

    /// One step of every live campaign; what changed goes into `batch`.
    pub(super) fn step_campaigns(&mut self, now: Timestamp, batch: &mut Batch) {
        let ids: Vec<String> = self.campaigns.live.keys().cloned().collect();
        for id in ids {
            self.judge_in_flight(&id, now, batch);
            self.apply_abort_rules(&id, now);
            self.start_pending(&id, now, batch);
            self.finish_if_done(&id, now);
        }
        self.write_campaigns(now, batch);
    }

    /// Records how the in-flight nodes that are done ended.
    fn judge_in_flight(&mut self, id: &str, now: Timestamp, batch: &mut Batch) {
        let Some(live) = self.campaigns.live.get(id) else {
            return;
        };
        let action = live.rec.view.action;
        let mut ended = Vec::new();
        for &place in &live.in_flight {
            let node = &live.nodes[place];
            let verdict = match action {
                // Every change of an operation's status goes through the batch that
                // makes it (`Batch::put_command`), and this step commits with it: a
                // finished operation is seen here, never later from the store.
                CampaignAction::Reboot | CampaignAction::Poweroff => {
                    node.view.operation_id.as_ref().and_then(|op| {
                        let status = batch
                            .commands
                            .iter()
                            .find(|c| c.command.command_id == *op)?
                            .status;
                        match status {
                            CommandStatus::Succeeded => Some(Ok(())),
                            CommandStatus::Failed
                            | CommandStatus::Rejected
                            | CommandStatus::Expired => {
                                Some(Err(format!("the {action} operation {op} is {status}")))
                            }
                            _ => None,
                        }
                    })
                }
                _ => match self.fleet.nodes.get(&node.view.node) {
                    None => Some(Err("the node is gone".into())),
                    Some(n) => {
                        let judged_as = if node.as_unmanage {
                            CampaignAction::Unmanage
                        } else {
                            action
                        };
                        judge(judged_as, n.state).map(|r| {
                            r.map_err(|e| match &n.last_install_error {
                                Some(last) if n.state == NodeState::InstallFailed => {
                                    format!("{e}: {last}")
                                }
                                _ => e,
                            })
                        })
                    }
                },
            };
            if let Some(verdict) = verdict {
                ended.push((place, verdict));
            }
        }
        if ended.is_empty() {
            return;
        }
        let Some(live) = self.campaigns.live.get_mut(id) else {
            return;
        };
        let label = label(&live.rec);
        for (place, verdict) in ended {
            live.in_flight.remove(&place);
            let node = &mut live.nodes[place];
            let (outcome, reason, message) = match verdict {
                Ok(()) => {
                    let reached = self
                        .fleet
                        .nodes
                        .get(&node.view.node)
                        .map(|n| format!("done: the node is {}", n.state));
                    (Outcome::Succeeded, EventReason::CampaignSucceeded, reached)
                }
                Err(e) => (Outcome::Failed, EventReason::CampaignFailed, Some(e)),
            };
            node.view.outcome = outcome;
            node.view.message = message.clone();
            node.view.finished_at = Some(now);
            live.rec.view.counts.remove(Outcome::InFlight);
            live.rec.view.counts.add(outcome);
            live.rec.view.updated_at = now;
            batch.counts.campaign_nodes.push(outcome);
            let text = format!("{label}: {}", message.unwrap_or_default());
            let id_of = node.view.node.clone();
            if self.fleet.nodes.contains_key(&id_of) {
                let rec = batch.controller(&id_of, now);
                if outcome == Outcome::Succeeded {
                    rec.normal(reason, text);
                } else {
                    rec.warning(reason, text);
                }
            }
            self.campaigns
                .dirty_nodes
                .push((id.to_string(), u32::try_from(place).unwrap_or(u32::MAX)));
        }
        self.campaigns.dirty.insert(id.to_string());
    }

    /// A running campaign whose abort rules are broken is paused, with the rule as reason.
    fn apply_abort_rules(&mut self, id: &str, now: Timestamp) {
        let Some(live) = self.campaigns.live.get_mut(id) else {
            return;
        };
        if live.rec.view.state != CampaignState::Running {
            return;
        }
        if let Some(reason) = live
            .rec
            .view
            .abort
            .broken(&live.rec.view.counts, &live.rec.since)
        {
            info!(campaign = %id, %reason, "campaign paused by its abort rules");
            live.rec.view.state = CampaignState::Paused;
            live.rec.view.reason = Some(reason);
            live.rec.view.updated_at = now;
            self.campaigns.dirty.insert(id.to_string());
        }
    }

    /// Starts pending nodes as the rollout allows.
    fn start_pending(&mut self, id: &str, now: Timestamp, batch: &mut Batch) {
        loop {
            let Some(live) = self.campaigns.live.get_mut(id) else {
                return;
            };
            let view = &live.rec.view;
            if view.state != CampaignState::Running || view.counts.in_flight >= view.max_concurrent
            {
                return;
            }
            while live
                .recent
                .front()
                .is_some_and(|t| now.unix_millis() - t.unix_millis() >= MINUTE.as_millis() as i64)
            {
                live.recent.pop_front();
            }
            if let Some(max) = view.max_per_minute {
                if live.recent.len() >= max as usize {
                    return;
                }
            }
            while live.cursor < live.nodes.len()
                && live.nodes[live.cursor].view.outcome != Outcome::Pending
            {
                live.cursor += 1;
            }
            if live.cursor >= live.nodes.len() {
                return;
            }
            let place = live.cursor;
            live.cursor += 1;
            self.start_node(id, place, now, batch);
        }
    }

    /// Carries the campaign's action out on the node at `place`: in flight, or skipped
    /// with the refusal.
    fn start_node(&mut self, id: &str, place: usize, now: Timestamp, batch: &mut Batch) {
        let Some(live) = self.campaigns.live.get(id) else {
            return;
        };
        let rec = live.rec.clone();
        let node_id = live.nodes[place].view.node.clone();
        let user = rec.view.created_by.clone();
        let label = label(&rec);
        let started = match self.fleet.nodes.get(&node_id).cloned() {
            None => Err("the node no longer exists".to_string()),
            Some(node) => {
                let action = match rec.view.action {
                    CampaignAction::Manage => Action::Manage {
                        plan: rec.view.plan.clone(),
                    },
                    CampaignAction::Unmanage => Action::Unmanage,
                    CampaignAction::Retry => Action::Retry,
                    CampaignAction::Reprovision => Action::SetState {
                        state: NodeState::Reprovision,
                        comment: Some(label.clone()),
                        force: rec.view.force,
                    },
                    CampaignAction::Reboot => Action::Power(PowerAction::Reboot),
                    CampaignAction::Poweroff => Action::Power(PowerAction::Poweroff),
                };
                let as_unmanage = rec.view.action == CampaignAction::Retry
                    && node.state == NodeState::DeprovisionFailed;
                let ready = self.machine_ready(&node, now);
                match decide(&node, &action, user.as_deref(), &self.cfg.controller, ready) {
                    Err(e) => Err(e.to_string()),
                    Ok(Decision::Machine(event, mut ctx)) => {
                        ctx.comment.get_or_insert_with(|| label.clone());
                        self.machine(&node_id, event, ctx, now, batch)
                            .map(|()| (None, as_unmanage))
                            .map_err(|r| r.to_string())
                    }
                    Ok(Decision::Power(power)) => {
                        let op = self.power(&node, power, user.as_deref(), now, batch);
                        Ok((Some(op), false))
                    }
                    Ok(Decision::Update(_) | Decision::Wake) => {
                        Err("not an action a campaign takes".to_string())
                    }
                }
            }
        };
        let Some(live) = self.campaigns.live.get_mut(id) else {
            return;
        };
        let node = &mut live.nodes[place];
        live.rec.view.counts.remove(Outcome::Pending);
        live.rec.view.updated_at = now;
        match started {
            Ok((operation, as_unmanage)) => {
                node.view.outcome = Outcome::InFlight;
                node.view.started_at = Some(now);
                node.view.operation_id = operation;
                node.as_unmanage = as_unmanage;
                live.rec.view.counts.add(Outcome::InFlight);
                live.in_flight.insert(place);
                live.recent.push_back(now);
                batch
                    .controller(&node_id, now)
                    .normal(EventReason::CampaignStarted, format!("{label}: started"));
            }
            Err(refusal) => {
                node.view.outcome = Outcome::Skipped;
                node.view.message = Some(refusal.clone());
                node.view.finished_at = Some(now);
                live.rec.view.counts.add(Outcome::Skipped);
                batch.counts.campaign_nodes.push(Outcome::Skipped);
                if self.fleet.nodes.contains_key(&node_id) {
                    batch
                        .controller(&node_id, now)
                        .warning(EventReason::CampaignSkipped, format!("{label}: {refusal}"));
                }
            }
        }
        self.campaigns
            .dirty_nodes
            .push((id.to_string(), u32::try_from(place).unwrap_or(u32::MAX)));
        self.campaigns.dirty.insert(id.to_string());
    }

    /// A running campaign with every node done is completed; a final one with nothing in
    /// flight gets its end time.
    fn finish_if_done(&mut self, id: &str, now: Timestamp) {
        let Some(live) = self.campaigns.live.get_mut(id) else {
            return;
        };
        let view = &mut live.rec.view;
        let done = view.counts.pending == 0 && view.counts.in_flight == 0;
        if !done || view.finished_at.is_some() {
            return;
        }
        match view.state {
            CampaignState::Running => {
                view.state = CampaignState::Completed;
                info!(campaign = %id, succeeded = view.counts.succeeded, failed = view.counts.failed, skipped = view.counts.skipped, "campaign completed");
            }
            CampaignState::Aborted | CampaignState::Cancelled | CampaignState::Completed => {}
            // Paused with nothing left: it stays paused until resumed or cancelled.
            CampaignState::Paused => return,
        }
        view.finished_at = Some(now);
        view.updated_at = now;
        self.campaigns.dirty.insert(id.to_string());
    }

    /// Moves this step's changes into the batch, and forgets settled campaigns.
    fn write_campaigns(&mut self, _now: Timestamp, batch: &mut Batch) {
        for (id, place) in std::mem::take(&mut self.campaigns.dirty_nodes) {
            if let Some(node) = self
                .campaigns
                .live
                .get(&id)
                .and_then(|l| l.nodes.get(place as usize))
            {
                batch.campaign_nodes.insert((id, place), node.clone());
            }
        }
        for id in std::mem::take(&mut self.campaigns.dirty) {
            if let Some(live) = self.campaigns.live.get(&id) {
                batch.campaigns.insert(id.clone(), live.rec.clone());
                if live.settled() {
                    self.campaigns.live.remove(&id);
                }
            }
        }
        if !batch.campaigns.is_empty() {
            batch.durable = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use metalbus_protocol::campaign::{AbortRules, Selector};

    use super::super::tests::{birth, rig, rig_with, Rig};
    use super::*;
    use crate::config::ControllerConfig;

    fn nid(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    /// A campaign call, and where its answer comes.
    fn campaign(
        op: CampaignOp,
    ) -> (
        super::super::Input,
        oneshot::Receiver<Result<CampaignView, CallError>>,
    ) {
        let (reply, rx) = oneshot::channel();
        let call = CampaignCall {
            op,
            user: Some("ops".into()),
            reply,
        };
        (super::super::Input::Campaign(Box::new(call)), rx)
    }

    fn manage(nodes: &[&str], max_concurrent: u32, abort: AbortRules) -> CampaignOp {
        CampaignOp::Create {
            request: Box::new(CampaignRequest {
                action: CampaignAction::Manage,
                plan: None,
                selector: Selector {
                    nodes: nodes.iter().map(|n| n.to_string()).collect(),
                    ..Selector::default()
                },
                max_concurrent: Some(max_concurrent),
                max_per_minute: None,
                abort,
                force: false,
            }),
            nodes: nodes.iter().map(|n| (nid(n), n.to_string())).collect(),
        }
    }

    /// The agent of `node` reports its install `status` (started, complete, failed).
    fn job(r: &mut Rig, node: &str, seq: u64, status: &str) {
        let cmd = r.node(node).job.unwrap().command_id;
        let report: metalbus_protocol::report::Report = serde_json::from_value(serde_json::json!({
            "session": "o", "seq": seq, "ts": "2026-01-01T00:00:00Z",
            "kind": "job", "command_id": cmd.to_string(), "job": "install",
            "status": status, "progress": 10
        }))
        .unwrap();
        r.engine.apply(vec![super::super::Input::Report {
            id: nid(node),
            report: Box::new(report),
        }]);
    }

    /// The install of `node` runs to `status` (complete or failed).
    fn install(r: &mut Rig, node: &str, status: &str) {
        job(r, node, 1, "started");
        job(r, node, 2, status);
    }

    fn states(r: &Rig, nodes: &[&str]) -> Vec<NodeState> {
        nodes.iter().map(|n| r.node(n).state).collect()
    }

    fn stored(r: &Rig, id: &str) -> CampaignView {
        r.store.campaign(id).unwrap().unwrap().view
    }

    const FIVE: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

    fn five_nodes(r: &mut Rig) {
        for n in FIVE {
            r.engine.apply(vec![birth(n, 1, "s", n)]);
        }
    }

    #[test]
    fn at_most_max_concurrent_run_and_each_end_starts_the_next() {
        let mut r = rig();
        five_nodes(&mut r);
        let (input, mut answer) = campaign(manage(&FIVE, 2, AbortRules::default()));
        r.engine.apply(vec![input]);
        let view = answer.try_recv().unwrap().unwrap();
        assert_eq!(view.state, CampaignState::Running);
        assert_eq!((view.counts.in_flight, view.counts.pending), (2, 3));
        use NodeState::*;
        assert_eq!(
            states(&r, &FIVE),
            [Pending, Pending, Discovered, Discovered, Discovered]
        );
        install(&mut r, "n1", "complete");
        assert_eq!(
            states(&r, &FIVE),
            [Active, Pending, Pending, Discovered, Discovered]
        );
        for (n, next) in [("n2", "n4"), ("n3", "n5")] {
            install(&mut r, n, "complete");
            assert_eq!(r.node(next).state, Pending);
        }
        install(&mut r, "n4", "complete");
        install(&mut r, "n5", "complete");
        let done = stored(&r, &view.id);
        assert_eq!(done.state, CampaignState::Completed);
        assert_eq!((done.counts.succeeded, done.counts.total), (5, 5));
        assert!(done.finished_at.is_some());
        let nodes = r.store.campaign_nodes(&view.id, 0, 10).unwrap();
        assert!(nodes
            .iter()
            .all(|(_, n)| n.view.outcome == Outcome::Succeeded));
        // Each node's history names the campaign.
        let history = r.store.history(&nid("n3"), 10, 0).unwrap();
        let first = history.last().unwrap();
        assert!(
            first.comment.as_deref().unwrap_or("").contains(&view.id),
            "{first:?}"
        );
    }

    #[test]
    fn a_node_that_cannot_take_the_action_is_skipped_with_the_refusal() {
        let mut r = rig();
        five_nodes(&mut r);
        // n2 is installing already: manage refuses it.
        let (input, _) = campaign(manage(&["n2"], 1, AbortRules::default()));
        r.engine.apply(vec![input]);
        let (input, mut answer) = campaign(manage(&["n1", "n2"], 5, AbortRules::default()));
        r.engine.apply(vec![input]);
        let view = answer.try_recv().unwrap().unwrap();
        assert_eq!((view.counts.in_flight, view.counts.skipped), (1, 1));
        let nodes = r.store.campaign_nodes(&view.id, 0, 10).unwrap();
        let skipped = &nodes[1].1.view;
        assert_eq!(skipped.outcome, Outcome::Skipped);
        assert!(
            skipped.message.as_deref().unwrap().contains("pending"),
            "{skipped:?}"
        );
    }

    #[test]
    fn failures_past_the_ratio_pause_the_campaign_and_nothing_more_starts() {
        let mut cfg = ControllerConfig::default();
        cfg.lifecycle.max_install_attempts = 1;
        let mut r = rig_with(cfg);
        five_nodes(&mut r);
        let rules = AbortRules {
            failure_ratio: Some(0.5),
            min_executed: Some(2),
            max_failures: None,
        };
        let (input, mut answer) = campaign(manage(&FIVE, 1, rules));
        r.engine.apply(vec![input]);
        let id = answer.try_recv().unwrap().unwrap().id;
        job(&mut r, "n1", 1, "failed");
        assert_eq!(r.node("n1").state, NodeState::InstallFailed);
        // One finished is below min_executed: n2 starts.
        assert_eq!(r.node("n2").state, NodeState::Pending);
        job(&mut r, "n2", 1, "failed");
        let view = stored(&r, &id);
        assert_eq!(view.state, CampaignState::Paused);
        assert!(
            view.reason.as_deref().unwrap().starts_with("abort rule"),
            "{view:?}"
        );
        assert_eq!(r.node("n3").state, NodeState::Discovered);
        let failed = r.store.campaign_nodes(&id, 0, 1).unwrap();
        assert!(failed[0]
            .1
            .view
            .message
            .as_deref()
            .unwrap()
            .contains("install failed"));
        // Cancelled while an abort rule holds it: aborted; the rest are skipped.
        let (input, mut answer) = campaign(CampaignOp::Cancel(id.clone()));
        r.engine.apply(vec![input]);
        let view = answer.try_recv().unwrap().unwrap();
        assert_eq!(view.state, CampaignState::Aborted);
        assert_eq!((view.counts.failed, view.counts.skipped), (2, 3));
        assert_eq!(r.node("n3").state, NodeState::Discovered);
        let (input, mut answer) = campaign(CampaignOp::Resume(id));
        r.engine.apply(vec![input]);
        assert!(matches!(
            answer.try_recv().unwrap(),
            Err(CallError::Conflict(_))
        ));
    }

    #[test]
    fn a_restarted_engine_goes_on_without_starting_a_node_twice() {
        let mut r = rig();
        five_nodes(&mut r);
        let (input, mut answer) = campaign(manage(&FIVE, 2, AbortRules::default()));
        r.engine.apply(vec![input]);
        let id = answer.try_recv().unwrap().unwrap().id;
        install(&mut r, "n1", "complete");
        let mut r = r.restart(ControllerConfig::default());
        // Nothing to judge or start until something ends.
        r.engine.apply(Vec::new());
        let view = stored(&r, &id);
        assert_eq!(
            (
                view.counts.succeeded,
                view.counts.in_flight,
                view.counts.pending
            ),
            (1, 2, 2)
        );
        for n in ["n2", "n3", "n4", "n5"] {
            install(&mut r, n, "complete");
        }
        let view = stored(&r, &id);
        assert_eq!(view.state, CampaignState::Completed);
        assert_eq!(view.counts.succeeded, 5);
        for n in FIVE {
            let history = r.store.history(&nid(n), 10, 0).unwrap();
            let starts = history
                .iter()
                .filter(|h| h.to_state == NodeState::Pending)
                .count();
            assert_eq!(starts, 1, "{n}: {history:?}");
        }
    }

    #[test]
    fn max_per_minute_spreads_the_starts_over_a_sliding_minute() {
        let mut r = rig();
        five_nodes(&mut r);
        let op = match manage(&FIVE, 10, AbortRules::default()) {
            CampaignOp::Create { mut request, nodes } => {
                request.max_per_minute = Some(2);
                CampaignOp::Create { request, nodes }
            }
            other => other,
        };
        let (input, mut answer) = campaign(op);
        r.engine.apply(vec![input]);
        let id = answer.try_recv().unwrap().unwrap().id;
        use NodeState::*;
        assert_eq!(
            states(&r, &FIVE),
            [Pending, Pending, Discovered, Discovered, Discovered]
        );
        r.clock.advance(Duration::from_secs(59));
        r.engine.apply(Vec::new());
        assert_eq!(r.node("n3").state, Discovered, "still within the minute");
        r.clock.advance(Duration::from_secs(1));
        r.engine.apply(Vec::new());
        assert_eq!(
            states(&r, &FIVE),
            [Pending, Pending, Pending, Pending, Discovered]
        );
        assert!(r.engine.campaigns.waiting(), "the timer keeps stepping it");
        r.clock.advance(Duration::from_secs(60));
        r.engine.apply(Vec::new());
        assert_eq!(r.node("n5").state, Pending);
        assert_eq!(stored(&r, &id).counts.in_flight, 5);
    }

    #[test]
    fn pause_stops_starts_and_resume_goes_on() {
        let mut r = rig();
        five_nodes(&mut r);
        let (input, mut answer) = campaign(manage(&FIVE, 1, AbortRules::default()));
        r.engine.apply(vec![input]);
        let id = answer.try_recv().unwrap().unwrap().id;
        let (input, mut answer) = campaign(CampaignOp::Pause(id.clone()));
        r.engine.apply(vec![input]);
        assert_eq!(
            answer.try_recv().unwrap().unwrap().state,
            CampaignState::Paused
        );
        install(&mut r, "n1", "complete");
        assert_eq!(r.node("n2").state, NodeState::Discovered);
        let (input, mut answer) = campaign(CampaignOp::Resume(id.clone()));
        r.engine.apply(vec![input]);
        assert_eq!(
            answer.try_recv().unwrap().unwrap().state,
            CampaignState::Running
        );
        assert_eq!(r.node("n2").state, NodeState::Pending);
        let (input, mut answer) = campaign(CampaignOp::Pause("cmp-nope".into()));
        r.engine.apply(vec![input]);
        assert!(matches!(
            answer.try_recv().unwrap(),
            Err(CallError::Missing(_))
        ));
    }
}
