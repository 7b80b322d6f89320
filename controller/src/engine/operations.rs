//! Operations that never change a node's state: `reboot` and `poweroff` (commands to the
//! node's agent, ended by the agent's power report), the reboot after a `reboot_after`
//! install, and wake (an effect the engine hands to the wake task, whose outcome comes
//! back as [`Input::WakeSent`](super::Input::WakeSent)).

use metalbus_protocol::command::{CommandId, CommandKind, CommandStatus, PowerAction};
use metalbus_protocol::event::EventReason;
use metalbus_protocol::report::JobStatus;
use metalbus_protocol::{NodeId, Timestamp};
use tracing::{info, warn};

use super::batch::Batch;
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
        batch.normal(
            &node.id,
            EventReason::requested(action),
            format!(
                "{action} requested by {} (operation {op})",
                user.unwrap_or("unknown")
            ),
            now,
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
        batch.normal(
            &node.id,
            EventReason::WakeRequested,
            format!(
                "wake-on-LAN to {} requested by {} (operation {id})",
                macs.join(", "),
                user.unwrap_or("unknown")
            ),
            now,
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
        let Some(rec) = self
            .command_record(operation_id, batch)
            .filter(|r| r.command.kind == CommandKind::Wake)
        else {
            warn!(operation = %operation_id, "a wake result for an operation that is not a wake");
            return;
        };
        let status = match &error {
            None => CommandStatus::Succeeded,
            Some(e) => {
                warn!(node = %rec.node_id, operation = %operation_id, error = %e, "wake failed");
                batch.warning(
                    &rec.node_id,
                    EventReason::WakeFailed,
                    format!("wake-on-LAN failed (operation {operation_id}): {e}"),
                    now,
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
                self.on_reboot_after_install(id, report, now, batch);
            }
            (Some(kind), action) if kind == action.command() => {
                self.on_operation_end(id, report, now, batch);
            }
            _ => {
                batch.counts.refused += 1;
                warn!(node = %id, command = %command_id, %action, "power report for a command this node was not sent");
                batch.agent_warning(
                    id,
                    EventReason::MessageRejected,
                    format!(
                        "report refused: no {action} command {command_id} was sent to this node"
                    ),
                    now,
                );
            }
        }
    }

    /// A `reboot` or `poweroff` operation ended: `succeeded` (the action exited 0) or
    /// `failed`.
    fn on_operation_end(
        &mut self,
        id: &NodeId,
        report: PowerReport,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let PowerReport {
            command_id,
            action,
            status,
            error,
        } = report;
        let command_id = &command_id;
        match status {
            JobStatus::Complete => {
                info!(node = %id, command = %command_id, %action, "power action done");
                self.update_command(command_id, CommandStatus::Succeeded, None, now, batch);
                batch.agent_normal(
                    id,
                    EventReason::completed(action),
                    format!("{action} action ran (operation {command_id})"),
                    now,
                );
            }
            JobStatus::Failed => {
                let why = error.unwrap_or_else(|| "no reason given".into());
                warn!(node = %id, command = %command_id, %action, error = %why, "power action failed");
                self.update_command(
                    command_id,
                    CommandStatus::Failed,
                    Some(why.clone()),
                    now,
                    batch,
                );
                batch.agent_warning(
                    id,
                    EventReason::failed(action),
                    format!("{action} failed (operation {command_id}): {why}"),
                    now,
                );
            }
            JobStatus::Started | JobStatus::Progress => {}
        }
    }

    /// The reboot after a `reboot_after` install: an event either way. The install
    /// itself succeeded; the node becomes `active` on its first birth of a new boot.
    fn on_reboot_after_install(
        &mut self,
        id: &NodeId,
        report: PowerReport,
        now: Timestamp,
        batch: &mut Batch,
    ) {
        let PowerReport {
            command_id,
            status,
            error,
            ..
        } = report;
        match status {
            JobStatus::Complete => {
                info!(node = %id, command = %command_id, "the host rebooted after its install");
                batch.agent_normal(
                    id,
                    EventReason::RebootCompleted,
                    format!("the host rebooted after its install ({command_id})"),
                    now,
                );
            }
            JobStatus::Failed => {
                let why = error.unwrap_or_else(|| "no reason given".into());
                warn!(node = %id, command = %command_id, error = %why, "the reboot after the install failed");
                batch.agent_warning(
                    id,
                    EventReason::RebootFailed,
                    format!("the reboot after the install ({command_id}) failed: {why}; the node stays installed until its agent comes back in a new boot"),
                    now,
                );
            }
            JobStatus::Started | JobStatus::Progress => {}
        }
    }
}
