//! Operations that never change a node's state: `reboot` and `poweroff` (commands to the
//! node's agent, ended by the agent's power report), the reboot after a `reboot_after`
//! install, and wake (an effect the engine hands to the wake task, whose outcome comes
//! back as [`Input::WakeSent`](super::Input::WakeSent)).

use metalbus_protocol::command::{CommandId, CommandKind, CommandStatus, PowerAction};
use metalbus_protocol::event::EventReason;
use metalbus_protocol::report::JobStatus;
use metalbus_protocol::{NodeId, Timestamp};
use tracing::{info, warn};

use super::batch::{Batch, Tally};
use super::calls::CallError;
use super::Engine;
use crate::store::NodeRecord;
use crate::wake::{self, WakeRequest};

/// A `job` report about a power action.
#[derive(Debug)]
pub(super) struct PowerReport {
    pub command_id: CommandId,
    pub action: PowerAction,
    pub status: JobStatus,
    pub error: Option<String>,
}

impl Engine {
    /// A `reboot` or `poweroff` command for the node's agent: stored, published, and
    /// resent until acked or expired like every command. Returns its id.
    pub(super) fn power(
        &mut self,
        node: &NodeRecord,
        action: PowerAction,
        user: Option<&str>,
        now: Timestamp,
        batch: &mut Batch,
    ) -> CommandId {
        let op = self.command(node, action.command(), None, None, now, batch);
        batch.controller(&node.id, now).normal(
            EventReason::requested(action),
            format!(
                "{action} requested by {} (operation {op})",
                user.unwrap_or("unknown")
            ),
        );
        op
    }

    /// A wake operation, `queued` until the wake task has sent the packets to the MACs
    /// of the node's stored inventory. It is never published (a wake goes to the NIC,
    /// not the agent).
    pub(super) fn wake(
        &mut self,
        node: &NodeRecord,
        user: Option<&str>,
        now: Timestamp,
        batch: &mut Batch,
    ) -> Result<CommandId, CallError> {
        let macs = match self.store.inventory(&node.id) {
            Ok(inv) => inv.map(|i| wake::macs_of(&i.inventory)).unwrap_or_default(),
            Err(e) => return Err(CallError::Store(e.to_string())),
        };
        if macs.is_empty() {
            return Err(CallError::BadRequest(format!(
                "node {} has no known MAC address to wake (no inventory yet, or no NIC with a MAC)",
                node.name
            )));
        }
        let id = self.ids.command();
        let rec = self
            .commands
            .queue(id.clone(), &node.id, CommandKind::Wake, now);
        batch.put_command(rec);
        batch.durable = true;
        info!(node = %node.id, operation = %id, macs = %macs.join(","), "wake requested");
        batch.controller(&node.id, now).normal(
            EventReason::WakeRequested,
            format!(
                "wake-on-LAN to {} requested by {} (operation {id})",
                macs.join(", "),
                user.unwrap_or("unknown")
            ),
        );
        batch.wakes.push(WakeRequest {
            operation_id: id.clone(),
            node_id: node.id.clone(),
            macs,
        });
        Ok(id)
    }

    /// The wake task sent a wake's packets (`error: None`) or could not: the operation
    /// `succeeded` or `failed`, and the call that asked for it is answered.
    pub(super) fn on_wake_sent(
        &mut self,
        operation_id: &CommandId,
        error: Option<String>,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let rec = self
            .command_record(operation_id, batch)
            .filter(|r| r.command.kind == CommandKind::Wake);
        let Some(rec) = rec else {
            warn!(operation = %operation_id, "a wake result for an operation that is not a wake, or cannot be read");
            if let Some((reply, _)) = self.waiting_wakes.remove(operation_id) {
                let why = format!("the record of wake {operation_id} cannot be read");
                batch.replies.push((reply, Err(CallError::Store(why))));
            }
            return;
        };
        let status = match &error {
            None => CommandStatus::Succeeded,
            Some(e) => {
                warn!(node = %rec.node_id, operation = %operation_id, error = %e, "wake failed");
                batch.controller(&rec.node_id, now).warning(
                    EventReason::WakeFailed,
                    format!("wake-on-LAN failed (operation {operation_id}): {e}"),
                );
                CommandStatus::Failed
            }
        };
        self.update_command(operation_id, status, error, now, batch);
        if let Some((reply, mut done)) = self.waiting_wakes.remove(operation_id) {
            done.operation = Some((operation_id.clone(), status));
            batch.replies.push((reply, Ok(done)));
        }
    }

    /// A power report: the end of an operation (`reboot`, `poweroff`), or of the reboot
    /// after a `reboot_after` install, which the agent reports under the install's id.
    /// Power actions never touch the lifecycle state.
    pub(super) fn on_power_report(
        &mut self,
        id: &NodeId,
        report: PowerReport,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let PowerReport {
            command_id, action, ..
        } = &report;
        let sent = self.sent_to(id, command_id, batch);
        let (kind, reboots_after) = match &sent {
            Some(rec) => (
                Some(rec.command.kind),
                rec.command.plan.as_ref().is_some_and(|p| p.reboot_after),
            ),
            None => (None, false),
        };
        match (kind, *action) {
            (Some(CommandKind::Install), PowerAction::Reboot) if reboots_after => {
                self.on_power_end(id, report, true, now, batch);
            }
            (Some(kind), action) if kind == action.command() => {
                self.on_power_end(id, report, false, now, batch);
            }
            _ => {
                batch.counts.add(Tally::Refused);
                warn!(node = %id, command = %command_id, %action, "power report for a command this node was not sent");
                batch.agent(id, now).warning(
                    EventReason::MessageRejected,
                    format!(
                        "report refused: no {action} command {command_id} was sent to this node"
                    ),
                );
            }
        }
    }

    /// A power action ended, `complete` (it exited 0) or `failed`: an event either way.
    /// An operation's command ends `succeeded` or `failed`. The reboot after a
    /// `reboot_after` install leaves the install `succeeded`; the node becomes `active`
    /// on its agent's first birth in a new boot.
    fn on_power_end(
        &mut self,
        id: &NodeId,
        report: PowerReport,
        after_install: bool,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let PowerReport {
            command_id,
            action,
            status,
            error,
        } = report;
        let ended = match status {
            JobStatus::Complete => Ok(()),
            JobStatus::Failed => Err(error.unwrap_or_else(|| "no reason given".into())),
            JobStatus::Started | JobStatus::Progress => return,
        };
        match &ended {
            Ok(()) => {
                info!(node = %id, command = %command_id, %action, after_install, "power action done")
            }
            Err(why) => {
                warn!(node = %id, command = %command_id, %action, after_install, error = %why, "power action failed")
            }
        }
        if !after_install {
            let (status, reason) = match &ended {
                Ok(()) => (CommandStatus::Succeeded, None),
                Err(why) => (CommandStatus::Failed, Some(why.clone())),
            };
            self.update_command(&command_id, status, reason, now, batch);
        }
        let events = batch.agent(id, now);
        match (ended, after_install) {
            (Ok(()), false) => events.normal(
                EventReason::completed(action),
                format!("{action} action ran (operation {command_id})"),
            ),
            (Ok(()), true) => events.normal(
                EventReason::completed(action),
                format!("the host rebooted after its install ({command_id})"),
            ),
            (Err(why), false) => events.warning(
                EventReason::failed(action),
                format!("{action} failed (operation {command_id}): {why}"),
            ),
            (Err(why), true) => events.warning(
                EventReason::failed(action),
                format!("the reboot after the install ({command_id}) failed: {why}; the node stays installed until its agent comes back in a new boot"),
            ),
        }
    }
}
