//! The command lifecycle: a command is made (with an id from [`Ids`]), stored, published,
//! and published again every `resend_after` until its agent acks it or it expires; its
//! status only ever moves forward (`queued` → `sent` → `accepted`/`rejected` →
//! `succeeded`/`failed`/`expired`).
//!
//! [`Commands`] is the part that needs no store and no engine: the unacked set with its
//! resend and expiry times, and the status rule. The engine glue below it stores the
//! records, publishes, and counts, inside the engine's batch.

use std::collections::BTreeMap;
use std::time::Duration;

use metalbus_protocol::command::{Command, CommandId, CommandKind, CommandStatus, Plan};
use metalbus_protocol::machine::Event;
use metalbus_protocol::report::JobStatus;
use metalbus_protocol::topic::NodeTopic;
use metalbus_protocol::{NodeId, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, info};

use super::batch::{Batch, Tally};
use super::lifecycle::Ctx;
use super::Engine;
use crate::publish::{Delivery, Outbound};
use crate::store::{CommandRecord, NodeRecord};

/// The engine's one source of new ids: commands (operations) and registrations.
pub(super) struct Ids {
    rng: StdRng,
}

impl Ids {
    pub(super) fn new() -> Self {
        Self {
            rng: StdRng::from_entropy(),
        }
    }

    pub(super) fn command(&mut self) -> CommandId {
        CommandId::numbered(self.rng.gen())
    }

    /// `cmp-` and 12 hex digits.
    pub(super) fn campaign(&mut self) -> String {
        format!("cmp-{:012x}", self.rng.gen::<u64>() >> 16)
    }

    /// `reg-` and 12 hex digits.
    pub(super) fn registration(&mut self) -> String {
        format!("reg-{:012x}", self.rng.gen::<u64>() >> 16)
    }
}

/// A sent command waiting for its ack.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unacked {
    node: NodeId,
    resend_at: Timestamp,
    expires_at: Timestamp,
}

/// What is due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Due {
    /// Publish it again (it is already rescheduled).
    Resend { id: CommandId, node: NodeId },
    /// It expired unacked; it is no longer tracked.
    Expired { id: CommandId, node: NodeId },
}

/// The unacked commands, and the rules of a command's status.
pub(super) struct Commands {
    unacked: BTreeMap<CommandId, Unacked>,
    resend_after: Duration,
    ttl: Duration,
}

impl Commands {
    pub(super) fn new(resend_after: Duration, ttl: Duration) -> Self {
        Self {
            unacked: BTreeMap::new(),
            resend_after,
            ttl,
        }
    }

    /// Commands stored as `sent` when the controller started: each goes again at once.
    pub(super) fn restore(&mut self, stored: Vec<CommandRecord>, now: Timestamp) {
        for rec in stored
            .into_iter()
            .filter(|r| r.status == CommandStatus::Sent)
        {
            self.unacked.insert(
                rec.command.command_id,
                Unacked {
                    node: rec.node_id,
                    resend_at: now,
                    expires_at: rec.command.expires_at,
                },
            );
        }
    }

    /// A new command for `node`, `sent`, tracked until acked or expired.
    pub(super) fn issue(
        &mut self,
        id: CommandId,
        node: &NodeId,
        kind: CommandKind,
        plan: Option<Plan>,
        target: Option<CommandId>,
        now: Timestamp,
    ) -> CommandRecord {
        let rec = record(
            node,
            self.command(id, kind, now, plan, target),
            CommandStatus::Sent,
        );
        self.unacked.insert(
            rec.command.command_id.clone(),
            Unacked {
                node: node.clone(),
                resend_at: now.plus(self.resend_after),
                expires_at: rec.command.expires_at,
            },
        );
        rec
    }

    /// A new operation the controller carries out itself (a wake): `queued`, never
    /// published, so never resent.
    pub(super) fn queue(
        &mut self,
        id: CommandId,
        node: &NodeId,
        kind: CommandKind,
        now: Timestamp,
    ) -> CommandRecord {
        record(
            node,
            self.command(id, kind, now, None, None),
            CommandStatus::Queued,
        )
    }

    /// The command itself: issued now, valid for the command TTL.
    fn command(
        &self,
        id: CommandId,
        kind: CommandKind,
        now: Timestamp,
        plan: Option<Plan>,
        target: Option<CommandId>,
    ) -> Command {
        Command {
            command_id: id,
            kind,
            issued_at: now,
            expires_at: now.plus(self.ttl),
            plan,
            target,
        }
    }

    /// Moves `rec` on to `status` if that is further along; a status at or behind the
    /// current one changes nothing (a repeated ack must not undo `succeeded`). Anything
    /// past `sent` ends the resends. True when `rec` changed.
    pub(super) fn advance(
        &mut self,
        rec: &mut CommandRecord,
        status: CommandStatus,
        reason: Option<String>,
        now: Timestamp,
    ) -> bool {
        if status != CommandStatus::Sent {
            self.unacked.remove(&rec.command.command_id);
        }
        if status.rank() <= rec.status.rank() {
            return false;
        }
        rec.status = status;
        rec.reason = reason.or(rec.reason.take());
        rec.updated_at = now;
        true
    }

    /// Never send `id` again (a cancelled job's command, or one no longer `sent`).
    pub(super) fn forget(&mut self, id: &CommandId) {
        self.unacked.remove(id);
    }

    /// The node's agent has just (re)connected: its unacked commands go again now.
    pub(super) fn resend_now(&mut self, node: &NodeId, now: Timestamp) {
        for u in self.unacked.values_mut().filter(|u| u.node == *node) {
            u.resend_at = now;
        }
    }

    /// Whether anything is due at `now`.
    pub(super) fn any_due(&self, now: Timestamp) -> bool {
        self.unacked.values().any(|u| u.resend_at <= now)
    }

    /// What is due at `now`, in id order. Resends are rescheduled `resend_after` on;
    /// expired commands are dropped.
    pub(super) fn take_due(&mut self, now: Timestamp) -> Vec<Due> {
        let mut due = Vec::new();
        let every = self.resend_after;
        self.unacked.retain(|id, u| {
            if u.resend_at > now {
                return true;
            }
            if u.expires_at <= now {
                due.push(Due::Expired {
                    id: id.clone(),
                    node: u.node.clone(),
                });
                return false;
            }
            due.push(Due::Resend {
                id: id.clone(),
                node: u.node.clone(),
            });
            u.resend_at = now.plus(every);
            true
        });
        due
    }
}

/// A new record of `command` for `node`, made when the command was.
fn record(node: &NodeId, command: Command, status: CommandStatus) -> CommandRecord {
    let now = command.issued_at;
    CommandRecord {
        node_id: node.clone(),
        command,
        status,
        reason: None,
        created_at: now,
        updated_at: now,
    }
}

/// The engine's side: records go into the batch, messages into its outbound list.
impl Engine {
    /// Records a new command for `node` and queues its publication; returns its id.
    pub(super) fn command(
        &mut self,
        node: &NodeRecord,
        kind: CommandKind,
        plan: Option<Plan>,
        target: Option<CommandId>,
        now: Timestamp,
        batch: &mut Batch,
    ) -> CommandId {
        let id = self.ids.command();
        let rec = self
            .commands
            .issue(id.clone(), &node.id, kind, plan, target, now);
        let topic = self.cfg.topics.node(&node.id, NodeTopic::Commands);
        batch.publish(Outbound::event(topic, &rec.command, Delivery::AtLeastOnce));
        info!(node = %node.id, command = %id, %kind, "command sent");
        batch.counts.commands.push((kind, CommandStatus::Sent));
        batch.commands.push(rec);
        batch.durable = true;
        id
    }

    /// A command's record: as changed in this batch, else as stored.
    pub(super) fn command_record(&self, id: &CommandId, batch: &Batch) -> Option<CommandRecord> {
        match batch
            .commands
            .iter()
            .rev()
            .find(|c| c.command.command_id == *id)
        {
            Some(rec) => Some(rec.clone()),
            None => self.store.command(id.as_str()).ok().flatten(),
        }
    }

    /// A command that was sent to node `id`, if `command_id` is one.
    pub(super) fn sent_to(
        &self,
        id: &NodeId,
        command_id: &CommandId,
        batch: &Batch,
    ) -> Option<CommandRecord> {
        self.command_record(command_id, batch)
            .filter(|rec| rec.node_id == *id)
    }

    /// Moves a command's status on, if the command is known.
    pub(super) fn update_command(
        &mut self,
        command_id: &CommandId,
        status: CommandStatus,
        reason: Option<String>,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let Some(mut rec) = self.command_record(command_id, batch) else {
            return;
        };
        if self.commands.advance(&mut rec, status, reason, now) {
            batch.counts.commands.push((rec.command.kind, status));
            batch.durable = true;
            batch.put_command(rec);
        }
    }

    /// Publishes again every unacknowledged command whose time has come; one that
    /// expired unacknowledged is marked `expired`, and if it was the node's job, counts
    /// as a failed attempt.
    pub(super) fn resend_commands(&mut self, now: Timestamp, batch: &mut Batch) {
        for due in self.commands.take_due(now) {
            match due {
                Due::Expired { id, node } => {
                    self.update_command(
                        &id,
                        CommandStatus::Expired,
                        Some("not acknowledged before it expired".into()),
                        now,
                        batch,
                    );
                    let job = self
                        .fleet
                        .nodes
                        .get(&node)
                        .and_then(|n| n.job.clone())
                        .filter(|j| j.command_id == id);
                    if let Some(job) = job {
                        let error = "the agent did not acknowledge the command before it expired"
                            .to_string();
                        let ctx = Ctx {
                            error: Some(error.clone()),
                            ..Ctx::default()
                        };
                        let event = Event::Job {
                            command_id: id,
                            job: job.kind,
                            status: JobStatus::Failed,
                            error: Some(error),
                        };
                        self.run_machine(&node, event, ctx, now, batch);
                    }
                }
                Due::Resend { id, node } => match self.command_record(&id, batch) {
                    Some(rec) if rec.status == CommandStatus::Sent => {
                        debug!(%node, command = %id, "command not acknowledged yet; sending it again");
                        batch.counts.add(Tally::Resent);
                        let topic = self.cfg.topics.node(&node, NodeTopic::Commands);
                        batch.publish(Outbound::event(topic, &rec.command, Delivery::AtLeastOnce));
                    }
                    _ => self.commands.forget(&id),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESEND: Duration = Duration::from_secs(5);
    const TTL: Duration = Duration::from_secs(60);

    fn at(s: i64) -> Timestamp {
        Timestamp::from_unix_millis(s * 1000)
    }

    fn node(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn a_sent_command_is_due_every_resend_after_until_acked() {
        let mut c = Commands::new(RESEND, TTL);
        let id = CommandId::numbered(1);
        let rec = c.issue(
            id.clone(),
            &node("n1"),
            CommandKind::Reboot,
            None,
            None,
            at(0),
        );
        assert_eq!(rec.status, CommandStatus::Sent);
        assert_eq!(rec.command.expires_at, at(60));
        assert!(!c.any_due(at(4)));
        assert!(c.take_due(at(4)).is_empty());
        assert!(c.any_due(at(5)));
        let resend = Due::Resend {
            id: id.clone(),
            node: node("n1"),
        };
        assert_eq!(c.take_due(at(5)), std::slice::from_ref(&resend));
        assert!(c.take_due(at(9)).is_empty(), "rescheduled 5 s on");
        assert_eq!(c.take_due(at(10)), [resend]);
        let mut rec = rec;
        assert!(c.advance(&mut rec, CommandStatus::Accepted, None, at(11)));
        assert!(c.take_due(at(100)).is_empty(), "acked: never again");
    }

    #[test]
    fn an_unacked_command_expires_once() {
        let mut c = Commands::new(RESEND, TTL);
        let id = CommandId::numbered(2);
        c.issue(
            id.clone(),
            &node("n1"),
            CommandKind::Install,
            None,
            None,
            at(0),
        );
        let due = c.take_due(at(61));
        assert_eq!(
            due,
            [Due::Expired {
                id,
                node: node("n1")
            }]
        );
        assert!(c.take_due(at(1000)).is_empty());
    }

    #[test]
    fn statuses_only_move_forward_and_reasons_are_kept() {
        let mut c = Commands::new(RESEND, TTL);
        let mut rec = c.issue(
            CommandId::numbered(3),
            &node("n1"),
            CommandKind::Poweroff,
            None,
            None,
            at(0),
        );
        assert!(c.advance(&mut rec, CommandStatus::Accepted, None, at(1)));
        assert!(c.advance(
            &mut rec,
            CommandStatus::Failed,
            Some("exit 3".into()),
            at(2)
        ));
        // A repeated ack, or a late `sent`, changes nothing.
        assert!(!c.advance(
            &mut rec,
            CommandStatus::Accepted,
            Some("again".into()),
            at(3)
        ));
        assert!(!c.advance(&mut rec, CommandStatus::Sent, None, at(3)));
        assert!(!c.advance(&mut rec, CommandStatus::Succeeded, None, at(3)));
        assert_eq!(rec.status, CommandStatus::Failed);
        assert_eq!(rec.reason.as_deref(), Some("exit 3"));
        assert_eq!(rec.updated_at, at(2));
    }

    #[test]
    fn a_reconnect_makes_that_nodes_commands_due_now_and_a_restart_all_of_them() {
        let mut c = Commands::new(RESEND, TTL);
        let a = c.issue(
            CommandId::numbered(4),
            &node("a"),
            CommandKind::Reboot,
            None,
            None,
            at(0),
        );
        c.issue(
            CommandId::numbered(5),
            &node("b"),
            CommandKind::Reboot,
            None,
            None,
            at(0),
        );
        c.resend_now(&node("a"), at(1));
        assert_eq!(
            c.take_due(at(1)),
            [Due::Resend {
                id: CommandId::numbered(4),
                node: node("a")
            }]
        );
        let queued = c.queue(CommandId::numbered(6), &node("a"), CommandKind::Wake, at(1));
        assert_eq!(queued.status, CommandStatus::Queued);
        let mut restarted = Commands::new(RESEND, TTL);
        restarted.restore(vec![a, queued], at(7));
        assert_eq!(restarted.take_due(at(7)).len(), 1, "only the sent one");
    }

    #[test]
    fn ids_are_distinct_and_valid() {
        let mut ids = Ids::new();
        let a = ids.command();
        let b = ids.command();
        assert_ne!(a, b);
        assert!(a.is_valid() && b.is_valid());
        assert!(NodeId::new(ids.registration()).is_ok());
    }
}
