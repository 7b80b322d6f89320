//! The engine's driver of the state machine: it runs `machine::apply` on a node, records
//! each transition with its audit entry and event, and turns the machine's effects into
//! commands, install-retry timers, recovery records and warnings.

use std::cmp::Reverse;
use std::time::Duration;

use metalbus_protocol::command::{CommandKind, JobKind, Plan};
use metalbus_protocol::event::{EventReason, EventSource, EventType};
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::machine::{apply, Change, Effect, Event, JobRef, Policy, Refusal, Trigger};
use metalbus_protocol::{NodeId, Timestamp};
use tracing::{debug, info, warn};

use super::batch::{Batch, Tally};
use super::Engine;
use crate::publish::{Delivery, Outbound};
use crate::store::{AuditEntry, NodeRecord};

/// Who and why, for the audit entries of one event.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Ctx {
    pub user: Option<String>,
    pub comment: Option<String>,
    pub force: bool,
    /// The error a failed job reported (or a fault's reason), for the audit metadata.
    pub error: Option<String>,
    /// `manage` sets the node's plan with the transition.
    pub plan: Option<String>,
    /// Why the system moved the node (`StuckState`, `DiscoveryTimeout`), for the audit
    /// metadata and the event.
    pub reason: Option<EventReason>,
}

impl Engine {
    fn policy_for(&self, node: &NodeRecord) -> Policy {
        let lc = &self.cfg.controller.lifecycle;
        let reboot_after = node
            .plan
            .as_deref()
            .and_then(|p| self.cfg.controller.plans.get(p))
            .is_some_and(|p| p.reboot_after);
        Policy {
            max_install_attempts: lc.max_install_attempts,
            auto_activate: lc.auto_activate,
            reboot_after,
            max_recovery_attempts: lc.max_recovery_attempts,
        }
    }

    /// Runs the machine and logs a refusal; true when the event was applied.
    pub(super) fn run_machine(
        &mut self,
        id: &NodeId,
        event: Event,
        ctx: Ctx,
        now: Timestamp,
        batch: &mut Batch,
    ) -> bool {
        match self.machine(id, event, ctx, now, batch) {
            Ok(()) => true,
            Err(refusal) => {
                batch.counts.add(Tally::Refused);
                if self.superseded(id, &refusal, batch) {
                    debug!(node = %id, reason = %refusal, "late report of a superseded command");
                    return false;
                }
                warn!(node = %id, reason = %refusal, "refused");
                if matches!(
                    refusal,
                    Refusal::UnexpectedReport { .. } | Refusal::Inconsistent { .. }
                ) {
                    // A report that makes no sense here changes nothing, but is shown.
                    batch.agent(id, now).warning(
                        EventReason::MessageRejected,
                        format!("report refused: {refusal}"),
                    );
                }
                false
            }
        }
    }

    /// Whether `refusal` is about a report for a command the controller sent this node
    /// and has since replaced (a cancelled job's `failed`, say): late, not wrong.
    fn superseded(&self, id: &NodeId, refusal: &Refusal, batch: &Batch) -> bool {
        let Refusal::UnexpectedReport { command_id, .. } = refusal else {
            return false;
        };
        self.sent_to(id, command_id, batch).is_some()
    }

    /// Applies `event` to node `id`: transitions with their audit entries, then effects.
    pub(super) fn machine(
        &mut self,
        id: &NodeId,
        event: Event,
        ctx: Ctx,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<(), Refusal> {
        let Some(before) = self.fleet.nodes.get(id).cloned() else {
            return Ok(());
        };
        let out = apply(&before.lifecycle(), event, &self.policy_for(&before))?;
        let mut after = before.clone();
        after.set_lifecycle(out.node);
        if let Some(plan) = ctx.plan.clone() {
            after.plan = Some(plan);
        }
        for change in &out.changes {
            self.record_change(&mut after, change, &ctx, now, batch);
        }
        for effect in out.effects {
            self.effect(&mut after, effect, now, batch);
        }
        self.replace(before, after, now, batch);
        Ok(())
    }

    /// One transition: its audit entry (stored and published), its event, and the time
    /// spent in the state it leaves.
    fn record_change(
        &self,
        node: &mut NodeRecord,
        change: &Change,
        ctx: &Ctx,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        node.history_len += 1;
        let stayed = now.unix_millis() - node.state_changed_at.unix_millis();
        batch
            .counts
            .durations
            .push((change.from, stayed as f64 / 1000.0));
        node.state_changed_at = now;
        node.progress = None;
        let entry = AuditEntry {
            id: format!("{}:{}", node.id, node.history_len),
            node_id: node.id.clone(),
            from_state: change.from,
            to_state: change.to,
            triggered_by: change.trigger,
            user: (change.trigger == Trigger::Admin)
                .then(|| ctx.user.clone())
                .flatten(),
            comment: ctx.comment.clone(),
            metadata: failure_metadata(node, change.to, ctx),
            created_at: now,
        };
        batch.publish(Outbound::event(
            self.cfg.topics.transitions(),
            &entry,
            Delivery::AtLeastOnce,
        ));
        batch.audits.push((node.history_len, entry));
        if let Some((kind, reason, message)) = transition_event(change, node, ctx) {
            let source = match change.trigger {
                Trigger::NodeReport => EventSource::Agent,
                Trigger::Admin | Trigger::System => EventSource::Controller,
            };
            batch
                .recorder(&node.id, now, source)
                .record(kind, reason, message);
        }
    }

    /// Carries out one of the machine's effects on `node` (the record being built).
    fn effect(&mut self, node: &mut NodeRecord, effect: Effect, now: Timestamp, batch: &mut Batch) {
        let id = node.id.clone();
        match effect {
            Effect::SendJob(kind) => {
                let plan = match kind {
                    JobKind::Install => match self.install_plan(node) {
                        Ok(plan) => plan,
                        Err(reason) => {
                            // Never install something else: the node needs an operator.
                            batch.followups.push((id, reason));
                            return;
                        }
                    },
                    JobKind::Deprovision => self.cfg.controller.deprovision_plan(),
                };
                let command_id = self.command(node, kind.command(), Some(plan), None, now, batch);
                node.job = Some(JobRef { command_id, kind });
            }
            Effect::Cancel { command_id } => {
                // A cancelled job's command is never sent again.
                self.commands.forget(&command_id);
                self.command(
                    node,
                    CommandKind::Cancel,
                    None,
                    Some(command_id),
                    now,
                    batch,
                );
            }
            Effect::ScheduleInstallRetry { attempt } => {
                let backoff = self.backoff(attempt);
                info!(node = %id, attempt, retry_in = ?backoff, "install will be sent again");
                self.install_retries.push(Reverse((now.plus(backoff), id)));
            }
            Effect::Recovery { attempt, max } => {
                node.recovered_at = Some(now);
                batch.counts.recoveries.push(node.state);
                let what = match &node.job {
                    Some(job) => format!("{} sent again as {}", job.kind, job.command_id),
                    None => "nothing to send again".into(),
                };
                info!(node = %id, state = %node.state, attempt, max, "recovery attempt");
                batch.controller(&id, now).normal(
                    EventReason::RecoveryAttempt,
                    format!("{what} (recovery attempt {attempt}/{max})"),
                );
            }
            Effect::Warning { reason, message } => {
                warn!(node = %id, %reason, "{message}");
                batch.controller(&id, now).warning(reason, message);
            }
        }
    }

    /// `retry_backoff`, doubled for each attempt after the first.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.cfg.controller.lifecycle.retry_backoff;
        base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
    }

    /// The plan the node was managed with; an error when the config no longer has it.
    fn install_plan(&self, node: &NodeRecord) -> Result<Plan, String> {
        let cfg = &self.cfg.controller;
        match node.plan.as_deref() {
            Some(name) => cfg
                .plans
                .get(name)
                .map(|p| p.plan(name))
                .ok_or_else(|| format!("plan '{name}' is no longer configured")),
            None => cfg.pick_plan(None),
        }
    }

    /// Sends the install again for every node whose resend is due.
    pub(super) fn fire_install_retries(&mut self, now: Timestamp, batch: &mut Batch) {
        while let Some(Reverse((due, _))) = self.install_retries.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, id))) = self.install_retries.pop() else {
                break;
            };
            self.run_machine(&id, Event::InstallRetryDue, Ctx::default(), now, batch);
        }
    }

    /// Time until the next timer. The reconciler's next pass counts as one: the engine
    /// wakes for it exactly, rather than on the next 1 s flush tick, which could make a
    /// detection almost 2 s late.
    pub(super) fn next_timer_in(&self) -> Duration {
        let next_pass = self.reconciler.next_at;
        let due = match self.install_retries.peek() {
            Some(Reverse((due, _))) => (*due).min(next_pass),
            None => next_pass,
        };
        let ms = due
            .unix_millis()
            .saturating_sub(self.clock.now().unix_millis());
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// Nodes waiting for an install resend get one at `due` (after a restart, or after a
    /// failed commit lost the timers that fired in it).
    pub(super) fn rearm_install_retries(&mut self, due: Timestamp) {
        for n in self.fleet.nodes.values() {
            if matches!(n.state, NodeState::Pending | NodeState::Installing) && n.job.is_none() {
                self.install_retries.push(Reverse((due, n.id.clone())));
            }
        }
    }
}

/// The event a transition is shown as, if any: (type, reason, message).
fn transition_event(
    change: &Change,
    node: &NodeRecord,
    ctx: &Ctx,
) -> Option<(EventType, EventReason, String)> {
    use NodeState::*;
    let error = || {
        ctx.error
            .clone()
            .or_else(|| node.last_install_error.clone())
            .unwrap_or_else(|| "no reason given".into())
    };
    let plan = node.plan.as_deref().unwrap_or("default");
    Some(match (change.from, change.to) {
        (Pending, Installing) => (
            EventType::Normal,
            EventReason::InstallStarted,
            format!("install with plan '{plan}' started"),
        ),
        (Installing, Installed) => (
            EventType::Normal,
            EventReason::InstallCompleted,
            format!("install with plan '{plan}' completed"),
        ),
        (_, InstallFailed) => (EventType::Warning, EventReason::InstallFailed, error()),
        (Deprovisioning, Discovered | Retired) => (
            EventType::Normal,
            EventReason::DeprovisionCompleted,
            "deprovisioning completed".into(),
        ),
        (_, DeprovisionFailed) => (EventType::Warning, EventReason::DeprovisionFailed, error()),
        (_, Error) => (
            EventType::Warning,
            ctx.reason
                .filter(|r| *r == EventReason::DiscoveryTimeout)
                .unwrap_or(EventReason::NodeError),
            error(),
        ),
        _ => return None,
    })
}

/// Entering a failure state records why: the error and the attempt count; a system
/// move records its reason and the recovery attempts made.
fn failure_metadata(node: &NodeRecord, to: NodeState, ctx: &Ctx) -> Option<serde_json::Value> {
    let mut meta = serde_json::Map::new();
    if matches!(to, NodeState::InstallFailed | NodeState::DeprovisionFailed) {
        let error = ctx
            .error
            .clone()
            .or_else(|| node.last_install_error.clone());
        meta.insert("error".into(), error.into());
        meta.insert("attempt".into(), node.install_attempts.into());
    }
    if let Some(reason) = ctx.reason {
        meta.insert("reason".into(), reason.as_str().into());
        meta.insert("error".into(), ctx.error.clone().into());
        meta.insert("recovery_attempts".into(), node.recovery_attempts.into());
    }
    if ctx.force {
        meta.insert("force".into(), true.into());
    }
    (!meta.is_empty()).then_some(serde_json::Value::Object(meta))
}
