//! The engine's lifecycle work: running the state machine, recording each transition
//! with its audit entry, turning effects into commands and timers, and answering the
//! operator's API calls.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use metalbus_protocol::api::{EventSource, EventType, MatchHints};
use metalbus_protocol::command::{Command, CommandKind, JobKind, Plan};
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::machine::{apply, Change, Effect, Event, JobRef, Policy, Refusal, Trigger};
use metalbus_protocol::topic::NodeTopic;
use metalbus_protocol::{is_valid_node_name, NodeId, Timestamp};
use rand::Rng;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{Batch, Engine};
use crate::publish::{Delivery, Outbound};
use crate::store::{AuditEntry, CommandRecord, CommandStatus, NodeRecord};

/// An operator's request, from the HTTP API.
#[derive(Debug)]
pub struct Call {
    /// Node id or name.
    pub key: String,
    pub action: Action,
    /// Who asked (the token's name), for the audit log.
    pub user: Option<String>,
    /// `If-Match`: the version the caller last saw.
    pub if_match: Option<u64>,
    pub reply: oneshot::Sender<Result<Reply, CallError>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Manage {
        plan: Option<String>,
    },
    Unmanage,
    Delete {
        force: bool,
    },
    SetState {
        state: NodeState,
        comment: Option<String>,
        force: bool,
    },
    Retry,
    Update(NodeUpdate),
    /// `POST /nodes`: a `registered` node for an agent not seen yet.
    Register(Registration),
    /// `POST .../reboot` and `.../poweroff`: a command to the node's agent.
    Power(PowerAction),
    /// `POST .../wake`: records a wake operation (`queued`); the API sends the packets
    /// to `macs` and reports with [`Action::WakeSent`].
    Wake {
        macs: Vec<String>,
    },
    /// The wake packets of `operation_id` went out (`error: None`) or could not.
    WakeSent {
        operation_id: String,
        error: Option<String>,
    },
}

/// What `POST .../reboot` and `.../poweroff` ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    Poweroff,
}

impl PowerAction {
    pub fn command(self) -> CommandKind {
        match self {
            PowerAction::Reboot => CommandKind::Reboot,
            PowerAction::Poweroff => CommandKind::Poweroff,
        }
    }
}

/// A pre-registration (DESIGN section 8).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Registration {
    pub name: String,
    pub hints: MatchHints,
    pub labels: BTreeMap<String, String>,
    pub group: Option<String>,
}

/// `PATCH /nodes/{node}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeUpdate {
    pub name: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    /// `Some("")` clears the group.
    pub group: Option<String>,
    pub control_plane: Option<bool>,
}

/// A successful call: the node as committed, and the state it had before.
#[derive(Debug, Clone)]
pub struct Reply {
    pub node: NodeRecord,
    pub before: NodeState,
    /// The operation a call started (reboot, poweroff, wake), and its status.
    pub operation: Option<(String, CommandStatus)>,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    NotFound,
    Stale { given: u64, current: u64 },
    Refused(Refusal),
    BadRequest(String),
    Conflict(String),
    Store(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::NotFound => f.write_str("node not found"),
            CallError::Stale { given, current } => write!(
                f,
                "version {given} is stale; the node is at version {current}"
            ),
            CallError::Refused(r) => write!(f, "{r}"),
            CallError::BadRequest(m) | CallError::Conflict(m) => f.write_str(m),
            CallError::Store(m) => write!(f, "store failure: {m}"),
        }
    }
}

/// What a call did, answered once the batch is committed.
#[derive(Debug)]
pub(super) struct Done {
    id: NodeId,
    before: NodeState,
    operation: Option<(String, CommandStatus)>,
}

/// Who and why, for the audit entries of one event.
#[derive(Debug, Clone, Default)]
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
    pub reason: Option<&'static str>,
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
                self.telemetry.reports_refused.inc();
                if self.superseded(id, &refusal) {
                    debug!(node = %id, reason = %refusal, "late report of a superseded command");
                    return false;
                }
                warn!(node = %id, reason = %refusal, "refused");
                if matches!(
                    refusal,
                    Refusal::UnexpectedReport { .. } | Refusal::Inconsistent { .. }
                ) {
                    // A report that makes no sense here changes nothing, but is shown.
                    batch.event(
                        id,
                        EventType::Warning,
                        "MessageRejected",
                        format!("report refused: {refusal}"),
                        EventSource::Agent,
                        now,
                    );
                }
                false
            }
        }
    }

    /// Whether `refusal` is about a report for a command the controller sent this node
    /// and has since replaced (a cancelled job's `failed`, say): late, not wrong.
    fn superseded(&self, id: &NodeId, refusal: &Refusal) -> bool {
        let Refusal::UnexpectedReport { command_id, .. } = refusal else {
            return false;
        };
        matches!(self.store.command(command_id), Ok(Some(c)) if c.node_id == *id)
    }

    /// Applies `event` to node `id`: transitions with their audit entries, then effects.
    fn machine(
        &mut self,
        id: &NodeId,
        event: Event,
        ctx: Ctx,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<(), Refusal> {
        let Some(before) = self.nodes.get(id).cloned() else {
            return Ok(());
        };
        let out = apply(&before.lifecycle(), event, &self.policy_for(&before))?;
        let mut after = before.clone();
        after.set_lifecycle(out.node);
        if let Some(plan) = ctx.plan.clone() {
            after.plan = Some(plan);
        }
        for change in &out.changes {
            after.history_len += 1;
            let stayed = now.unix_millis() - after.state_changed_at.unix_millis();
            batch.durations.push((change.from, stayed as f64 / 1000.0));
            after.state_changed_at = now;
            after.progress = None;
            let metadata = failure_metadata(&after, change.to, &ctx);
            let entry = AuditEntry {
                id: format!("{id}:{}", after.history_len),
                node_id: id.clone(),
                from_state: change.from,
                to_state: change.to,
                triggered_by: change.trigger,
                user: (change.trigger == Trigger::Admin)
                    .then(|| ctx.user.clone())
                    .flatten(),
                comment: ctx.comment.clone(),
                metadata,
                created_at: now,
            };
            batch.outbound.push(Outbound::event(
                self.cfg.topics.transitions(),
                &entry,
                Delivery::AtLeastOnce,
            ));
            batch.audits.push((after.history_len, entry));
            if let Some((kind, reason, message)) = transition_event(change, &after, &ctx) {
                let source = match change.trigger {
                    Trigger::NodeReport => EventSource::Agent,
                    _ => EventSource::Controller,
                };
                batch.event(id, kind, reason, message, source, now);
            }
        }
        for effect in out.effects {
            match effect {
                Effect::SendJob(kind) => {
                    let plan = match kind {
                        JobKind::Install => match self.install_plan(&after) {
                            Ok(plan) => plan,
                            Err(reason) => {
                                // Never install something else: the node needs an operator.
                                batch.followups.push((id.clone(), reason));
                                continue;
                            }
                        },
                        JobKind::Deprovision => self.cfg.controller.deprovision_plan(),
                        // The machine sends plans only; power actions are operator calls.
                        JobKind::Reboot | JobKind::Poweroff => continue,
                    };
                    let cmd =
                        self.command(&after, command_kind(kind), Some(plan), None, now, batch);
                    after.job = Some(JobRef {
                        command_id: cmd,
                        kind,
                    });
                }
                Effect::Cancel { command_id } => {
                    // A cancelled job's command is never sent again.
                    self.unacked.remove(&command_id);
                    self.command(
                        &after,
                        CommandKind::Cancel,
                        None,
                        Some(command_id),
                        now,
                        batch,
                    );
                }
                Effect::ScheduleInstallRetry { attempt } => {
                    let backoff = self.backoff(attempt);
                    let due = Timestamp::from_unix_millis(
                        now.unix_millis()
                            .saturating_add(i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX)),
                    );
                    info!(node = %id, attempt, retry_in = ?backoff, "install will be sent again");
                    self.timers.push(Reverse((due, id.clone())));
                }
                Effect::Recovery { attempt, max } => {
                    after.recovered_at = Some(now);
                    batch.recoveries.push(after.state);
                    let what = match &after.job {
                        Some(job) => format!("{} sent again as {}", job.kind, job.command_id),
                        None => "nothing to send again".into(),
                    };
                    info!(node = %id, state = %after.state, attempt, max, "recovery attempt");
                    batch.event(
                        id,
                        EventType::Normal,
                        "RecoveryAttempt",
                        format!("{what} (recovery attempt {attempt}/{max})"),
                        EventSource::Controller,
                        now,
                    );
                }
                Effect::Warning { reason, message } => {
                    warn!(node = %id, reason, "{message}");
                    batch.event(
                        id,
                        EventType::Warning,
                        reason,
                        message,
                        EventSource::Controller,
                        now,
                    );
                }
            }
        }
        self.replace(before, after, now, batch);
        Ok(())
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

    /// Records a new command for `node` and queues its publication; returns its id.
    fn command(
        &mut self,
        node: &NodeRecord,
        kind: CommandKind,
        plan: Option<Plan>,
        target: Option<String>,
        now: Timestamp,
        batch: &mut Batch,
    ) -> String {
        let id = format!("c-{:016x}", rand::thread_rng().gen::<u64>());
        let ttl = self.cfg.controller.lifecycle.command_ttl;
        let command = Command {
            command_id: id.clone(),
            kind,
            issued_at: now,
            expires_at: Timestamp::from_unix_millis(
                now.unix_millis()
                    .saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
            ),
            plan,
            target,
        };
        let topic = self.cfg.topics.node(&node.id, NodeTopic::Commands);
        batch
            .outbound
            .push(Outbound::event(topic, &command, Delivery::AtLeastOnce));
        info!(node = %node.id, command = %id, kind = %kind, "command sent");
        self.unacked.insert(
            id.clone(),
            (
                node.id.clone(),
                now.plus(self.cfg.controller.lifecycle.resend_after),
                command.expires_at,
            ),
        );
        batch
            .command_results
            .push((kind.to_string(), CommandStatus::Sent));
        batch.commands.push(CommandRecord {
            node_id: node.id.clone(),
            command,
            status: CommandStatus::Sent,
            reason: None,
            created_at: now,
            updated_at: now,
        });
        batch.durable = true;
        id
    }

    /// Moves a command's status on, if the command is known.
    pub(super) fn update_command(
        &mut self,
        command_id: &str,
        status: CommandStatus,
        reason: Option<String>,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let pending = batch
            .commands
            .iter()
            .rposition(|c| c.command.command_id == command_id);
        let mut rec = match pending {
            Some(i) => batch.commands.remove(i),
            None => match self.store.command(command_id) {
                Ok(Some(rec)) => rec,
                _ => return,
            },
        };
        if status != CommandStatus::Sent {
            self.unacked.remove(command_id);
        }
        if rank(status) <= rank(rec.status) {
            // Statuses only move forward: a repeated ack must not undo `succeeded`.
            batch.commands.push(rec);
            return;
        }
        rec.status = status;
        batch
            .command_results
            .push((rec.command.kind.to_string(), status));
        rec.reason = reason.or(rec.reason);
        rec.updated_at = now;
        batch.commands.push(rec);
        batch.durable = true;
    }

    /// Sends the install again for every node whose resend is due.
    pub(super) fn fire_timers(&mut self, now: Timestamp, batch: &mut Batch) {
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, id))) = self.timers.pop() else {
                break;
            };
            self.run_machine(&id, Event::InstallRetryDue, Ctx::default(), now, batch);
        }
    }

    /// Time until the next timer. The reconciler's next pass counts as one: the engine
    /// wakes for it exactly, rather than on the next 1 s flush tick, which could make a
    /// detection almost 2 s late.
    pub(super) fn next_timer_in(&self) -> Duration {
        let due = match self.timers.peek() {
            Some(Reverse((due, _))) => (*due).min(self.reconcile_at),
            None => self.reconcile_at,
        };
        let ms = due
            .unix_millis()
            .saturating_sub(self.clock.now().unix_millis());
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// Nodes waiting for an install resend get one at `due` (after a restart, or after a
    /// failed commit lost the timers that fired in it).
    pub(super) fn rearm_resends(&mut self, due: Timestamp) {
        for n in self.nodes.values() {
            if matches!(n.state, NodeState::Pending | NodeState::Installing) && n.job.is_none() {
                self.timers.push(Reverse((due, n.id.clone())));
            }
        }
    }

    /// Sends every unacknowledged command of `node` again now (same ids): its agent has
    /// just (re)connected.
    pub(super) fn resend_unacked(&mut self, node: &NodeRecord, now: Timestamp, batch: &mut Batch) {
        let ids: Vec<String> = self
            .unacked
            .iter()
            .filter(|(_, (n, _, _))| *n == node.id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(entry) = self.unacked.get_mut(&id) {
                entry.1 = now;
            }
        }
        self.resend_commands(now, batch);
    }

    /// Whether some unacknowledged command is due for a resend.
    pub(super) fn resends_due(&self, now: Timestamp) -> bool {
        self.unacked.values().any(|(_, due, _)| *due <= now)
    }

    /// Publishes again every unacknowledged command whose time has come; one that
    /// expired unacknowledged is marked `expired`, and if it was the node's job, counts
    /// as a failed attempt.
    pub(super) fn resend_commands(&mut self, now: Timestamp, batch: &mut Batch) {
        let due: Vec<String> = self
            .unacked
            .iter()
            .filter(|(_, (_, at, _))| *at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let every = self.cfg.controller.lifecycle.resend_after;
        for id in due {
            let Some((node_id, _, expires)) = self.unacked.get(&id).cloned() else {
                continue;
            };
            if expires <= now {
                self.unacked.remove(&id);
                self.update_command(
                    &id,
                    CommandStatus::Expired,
                    Some("not acknowledged before it expired".into()),
                    now,
                    batch,
                );
                let job = self
                    .nodes
                    .get(&node_id)
                    .and_then(|n| n.job.clone())
                    .filter(|j| j.command_id == id);
                if let Some(job) = job {
                    let error =
                        "the agent did not acknowledge the command before it expired".to_string();
                    let ctx = Ctx {
                        error: Some(error.clone()),
                        ..Ctx::default()
                    };
                    let event = Event::Job {
                        command_id: id.clone(),
                        job: job.kind,
                        status: metalbus_protocol::report::JobStatus::Failed,
                        error: Some(error),
                    };
                    self.run_machine(&node_id, event, ctx, now, batch);
                }
                continue;
            }
            let rec = match batch
                .commands
                .iter()
                .rev()
                .find(|c| c.command.command_id == id)
            {
                Some(r) => Some(r.clone()),
                None => self.store.command(&id).ok().flatten(),
            };
            match rec {
                Some(rec) if rec.status == CommandStatus::Sent => {
                    debug!(node = %node_id, command = %id, "command not acknowledged yet; sending it again");
                    self.telemetry.commands_resent.inc();
                    let topic = self.cfg.topics.node(&node_id, NodeTopic::Commands);
                    batch.outbound.push(Outbound::event(
                        topic,
                        &rec.command,
                        Delivery::AtLeastOnce,
                    ));
                    if let Some(entry) = self.unacked.get_mut(&id) {
                        entry.1 = now.plus(every);
                    }
                }
                _ => {
                    self.unacked.remove(&id);
                }
            }
        }
    }

    pub(super) fn on_call(&mut self, call: Call, now: Timestamp, batch: &mut Batch) {
        let result = self.do_call(&call, now, batch);
        batch.replies.push((call.reply, result));
    }

    fn do_call(
        &mut self,
        call: &Call,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<Done, CallError> {
        if let Action::Register(reg) = &call.action {
            return self.register(reg, call.user.as_deref(), now, batch);
        }
        let id = self.resolve(&call.key).ok_or(CallError::NotFound)?;
        let node = self.nodes.get(&id).cloned().ok_or(CallError::NotFound)?;
        if let Some(given) = call.if_match {
            if given != node.version {
                return Err(CallError::Stale {
                    given,
                    current: node.version,
                });
            }
        }
        let before = node.state;
        let mut ctx = Ctx {
            user: call.user.clone(),
            ..Ctx::default()
        };
        let event = match &call.action {
            Action::Manage { plan } => {
                let plan = self
                    .cfg
                    .controller
                    .pick_plan(plan.as_deref())
                    .map_err(CallError::BadRequest)?;
                ctx.plan = Some(plan.name);
                Event::Manage
            }
            Action::Unmanage => Event::Unmanage,
            Action::Delete { force } => {
                ctx.force = *force;
                Event::Delete { force: *force }
            }
            Action::SetState {
                state,
                comment,
                force,
            } => {
                ctx.comment = comment.clone();
                ctx.force = *force;
                Event::SetState {
                    to: *state,
                    force: *force,
                }
            }
            Action::Retry => {
                ctx.comment = Some("retry".into());
                Event::Retry {
                    machine_ready: self.machine_ready(&node, now),
                }
            }
            Action::Update(update) => {
                self.update_node(&node, update, now, batch)?;
                return Ok(Done {
                    id,
                    before,
                    operation: None,
                });
            }
            Action::Power(power) => {
                let op = self.power(&node, *power, call.user.as_deref(), now, batch)?;
                return Ok(Done {
                    id,
                    before,
                    operation: Some((op, CommandStatus::Sent)),
                });
            }
            Action::Wake { macs } => {
                let op = self.wake(&node, macs, call.user.as_deref(), now, batch)?;
                return Ok(Done {
                    id,
                    before,
                    operation: Some((op, CommandStatus::Queued)),
                });
            }
            Action::WakeSent {
                operation_id,
                error,
            } => {
                let status = self.wake_sent(&node, operation_id, error.clone(), now, batch)?;
                return Ok(Done {
                    id,
                    before,
                    operation: Some((operation_id.clone(), status)),
                });
            }
            // Handled before the node lookup; never reaches here.
            Action::Register(_) => return Err(CallError::Conflict("node exists".into())),
        };
        self.machine(&id, event, ctx, now, batch)
            .map(|()| Done {
                id,
                before,
                operation: None,
            })
            .map_err(CallError::Refused)
    }

    /// Whether `node` has an agent to send an operation to; the refusal otherwise.
    fn check_operable(node: &NodeRecord, what: &str) -> Result<(), CallError> {
        match node.state {
            NodeState::Retired => Err(CallError::BadRequest(format!(
                "node {} is retired; it cannot be sent a {what}",
                node.name
            ))),
            NodeState::Registered => Err(CallError::BadRequest(format!(
                "node {} is registered but its agent has not connected yet; there is no agent to {what} it",
                node.name
            ))),
            _ => Ok(()),
        }
    }

    /// A `reboot` or `poweroff` command for the node's agent: stored, published, and
    /// resent until acked or expired like every command. Returns its id.
    fn power(
        &mut self,
        node: &NodeRecord,
        power: PowerAction,
        user: Option<&str>,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<String, CallError> {
        let kind = power.command();
        Self::check_operable(node, kind.as_str())?;
        let op = self.command(node, kind, None, None, now, batch);
        let reason = match power {
            PowerAction::Reboot => "RebootRequested",
            PowerAction::Poweroff => "PoweroffRequested",
        };
        batch.event(
            &node.id,
            EventType::Normal,
            reason,
            format!(
                "{kind} requested by {} (operation {op})",
                user.unwrap_or("unknown")
            ),
            EventSource::Controller,
            now,
        );
        Ok(op)
    }

    /// A wake operation, `queued` until the API has sent the packets. It is never
    /// published (a wake goes to the NIC, not the agent).
    fn wake(
        &mut self,
        node: &NodeRecord,
        macs: &[String],
        user: Option<&str>,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<String, CallError> {
        if node.state == NodeState::Retired {
            return Err(CallError::BadRequest(format!(
                "node {} is retired; it cannot be woken",
                node.name
            )));
        }
        if macs.is_empty() {
            return Err(CallError::BadRequest(format!(
                "node {} has no known MAC address to wake (no inventory yet, or no NIC with a MAC)",
                node.name
            )));
        }
        let id = format!("c-{:016x}", rand::thread_rng().gen::<u64>());
        let ttl = self.cfg.controller.lifecycle.command_ttl;
        batch.commands.push(CommandRecord {
            node_id: node.id.clone(),
            command: Command {
                command_id: id.clone(),
                kind: CommandKind::Wake,
                issued_at: now,
                expires_at: now.plus(ttl),
                plan: None,
                target: None,
            },
            status: CommandStatus::Queued,
            reason: None,
            created_at: now,
            updated_at: now,
        });
        batch.durable = true;
        info!(node = %node.id, operation = %id, macs = %macs.join(","), "wake requested");
        batch.event(
            &node.id,
            EventType::Normal,
            "WakeRequested",
            format!(
                "wake-on-LAN to {} requested by {} (operation {id})",
                macs.join(", "),
                user.unwrap_or("unknown")
            ),
            EventSource::Controller,
            now,
        );
        Ok(id)
    }

    /// The result of sending a wake's packets: `succeeded`, or `failed` with the error.
    fn wake_sent(
        &mut self,
        node: &NodeRecord,
        operation_id: &str,
        error: Option<String>,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<CommandStatus, CallError> {
        let known = matches!(
            self.store.command(operation_id),
            Ok(Some(rec)) if rec.node_id == node.id && rec.command.kind == CommandKind::Wake
        );
        if !known {
            return Err(CallError::BadRequest(format!(
                "operation {operation_id} is not a wake of node {}",
                node.name
            )));
        }
        let status = match &error {
            None => CommandStatus::Succeeded,
            Some(e) => {
                warn!(node = %node.id, operation = %operation_id, error = %e, "wake failed");
                batch.event(
                    &node.id,
                    EventType::Warning,
                    "WakeFailed",
                    format!("wake-on-LAN failed (operation {operation_id}): {e}"),
                    EventSource::Controller,
                    now,
                );
                CommandStatus::Failed
            }
        };
        self.update_command(operation_id, status, error, now, batch);
        Ok(status)
    }

    /// A node by id, else by name.
    fn resolve(&self, key: &str) -> Option<NodeId> {
        NodeId::new(key)
            .ok()
            .filter(|id| self.nodes.contains_key(id))
            .or_else(|| self.names.get(key).cloned())
    }

    /// Agent online, heartbeat fresh (3 × metrics interval), inventory present.
    fn machine_ready(&self, node: &NodeRecord, now: Timestamp) -> bool {
        let interval = u64::from(node.metrics_interval_s.unwrap_or(15).max(1));
        let fresh = self
            .heartbeats
            .get(&node.id)
            .is_some_and(|hb| now.seconds_since(hb.last_seen_at) <= 3 * interval);
        node.online && fresh && node.inventory_at.is_some()
    }

    /// A new `registered` node; its agent claims it on arrival (`create_node`).
    fn register(
        &mut self,
        reg: &Registration,
        user: Option<&str>,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<Done, CallError> {
        self.check_name(&reg.name, None)?;
        check_labels(&reg.labels)?;
        let group = reg.group.as_deref().map(check_group).transpose()?.flatten();
        let id = loop {
            let candidate = format!("reg-{:012x}", rand::thread_rng().gen::<u64>() >> 16);
            let id = NodeId::new(candidate).map_err(|e| CallError::Store(e.to_string()))?;
            if !self.nodes.contains_key(&id) && !self.names.contains_key(id.as_str()) {
                break id;
            }
        };
        let node = NodeRecord {
            state: NodeState::Registered,
            online: false,
            labels: reg.labels.clone(),
            group,
            registration: Some(reg.hints.clone()),
            ..NodeRecord::discovered(id.clone(), reg.name.clone(), now)
        };
        let hints = &reg.hints;
        let by: Vec<String> = [
            hints.mac.as_ref().map(|m| format!("mac {m}")),
            hints.ip.map(|i| format!("ip {i}")),
            hints.hostname.as_ref().map(|h| format!("hostname {h}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        info!(node = %id, name = %reg.name, user = user.unwrap_or("-"), "node registered");
        batch.event(
            &id,
            EventType::Normal,
            "Registered",
            format!(
                "registered by {}; matched by {}",
                user.unwrap_or("unknown"),
                by.join(", ")
            ),
            EventSource::Controller,
            now,
        );
        self.names.insert(reg.name.clone(), id.clone());
        self.nodes.insert(id.clone(), node);
        batch.nodes.insert(id.clone(), None);
        batch.durable = true;
        Ok(Done {
            id,
            before: NodeState::Registered,
            operation: None,
        })
    }

    /// A valid name no other node has (as its name or its id).
    fn check_name(&self, name: &str, this: Option<&NodeId>) -> Result<(), CallError> {
        if !is_valid_node_name(name) {
            return Err(CallError::BadRequest(format!(
                "name {name:?} must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-', starting with a letter or digit"
            )));
        }
        let other = |id: &NodeId| Some(id) != this;
        let taken = self.names.get(name).is_some_and(other)
            || self.nodes.keys().any(|id| id.as_str() == name && other(id));
        if taken {
            return Err(CallError::Conflict(format!(
                "name {name:?} is taken by another node"
            )));
        }
        Ok(())
    }

    fn update_node(
        &mut self,
        node: &NodeRecord,
        update: &NodeUpdate,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<(), CallError> {
        let mut after = node.clone();
        if let Some(name) = &update.name {
            self.check_name(name, Some(&node.id))?;
            after.name = name.clone();
        }
        if let Some(labels) = &update.labels {
            check_labels(labels)?;
            after.labels = labels.clone();
        }
        if let Some(group) = &update.group {
            after.group = check_group(group)?;
        }
        if let Some(cp) = update.control_plane {
            after.control_plane = cp;
        }
        if after.name != node.name {
            self.names.remove(&node.name);
            self.names.insert(after.name.clone(), node.id.clone());
        }
        self.replace(node.clone(), after, now, batch);
        Ok(())
    }

    pub(super) fn reply(&self, done: Done) -> Result<Reply, CallError> {
        let node = self
            .nodes
            .get(&done.id)
            .cloned()
            .ok_or(CallError::NotFound)?;
        Ok(Reply {
            node,
            before: done.before,
            operation: done.operation,
        })
    }
}

/// How far along a command's status is.
fn rank(s: CommandStatus) -> u8 {
    match s {
        CommandStatus::Queued => 0,
        CommandStatus::Sent => 1,
        CommandStatus::Accepted | CommandStatus::Rejected => 2,
        CommandStatus::Succeeded | CommandStatus::Failed | CommandStatus::Expired => 3,
    }
}

fn command_kind(job: JobKind) -> CommandKind {
    match job {
        JobKind::Install => CommandKind::Install,
        JobKind::Deprovision => CommandKind::Deprovision,
        JobKind::Reboot => CommandKind::Reboot,
        JobKind::Poweroff => CommandKind::Poweroff,
    }
}

/// Entering a failure state records why: the error and the attempt count.
/// Label keys of 1 to 63 safe characters; values up to 256 characters, no controls.
fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), CallError> {
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if !key_ok || v.len() > 256 || v.chars().any(char::is_control) {
            return Err(CallError::BadRequest(format!(
                "label {k:?}={v:?}: keys are 1 to 63 of letters, digits, '.', '_', '-', '/'; values at most 256 characters"
            )));
        }
    }
    Ok(())
}

/// A group name; `""` clears the group.
fn check_group(group: &str) -> Result<Option<String>, CallError> {
    if group.is_empty() {
        Ok(None)
    } else if is_valid_node_name(group) {
        Ok(Some(group.to_string()))
    } else {
        Err(CallError::BadRequest(format!(
            "group {group:?} must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'"
        )))
    }
}

/// The event a transition is shown as, if any: (type, reason, message).
fn transition_event(
    change: &Change,
    node: &NodeRecord,
    ctx: &Ctx,
) -> Option<(EventType, &'static str, String)> {
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
            "InstallStarted",
            format!("install with plan '{plan}' started"),
        ),
        (Installing, Installed) => (
            EventType::Normal,
            "InstallCompleted",
            format!("install with plan '{plan}' completed"),
        ),
        (_, InstallFailed) => (EventType::Warning, "InstallFailed", error()),
        (Deprovisioning, Discovered | Retired) => (
            EventType::Normal,
            "DeprovisionCompleted",
            "deprovisioning completed".into(),
        ),
        (_, DeprovisionFailed) => (EventType::Warning, "DeprovisionFailed", error()),
        (_, Error) => (
            EventType::Warning,
            ctx.reason
                .filter(|r| *r == "DiscoveryTimeout")
                .unwrap_or("NodeError"),
            error(),
        ),
        _ => return None,
    })
}

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
        meta.insert("reason".into(), reason.into());
        meta.insert("error".into(), ctx.error.clone().into());
        meta.insert("recovery_attempts".into(), node.recovery_attempts.into());
    }
    if ctx.force {
        meta.insert("force".into(), true.into());
    }
    (!meta.is_empty()).then_some(serde_json::Value::Object(meta))
}
