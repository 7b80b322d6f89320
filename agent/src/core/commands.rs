//! Commands: parse, once per id, dispatch by kind, ack.

use metalbus_protocol::command::{Command, CommandId, CommandKind, PowerAction};
use metalbus_protocol::report::ReportBody;
use tracing::{error, info, warn};

use super::{Action, Core, Publisher};
use crate::jobs::Ack;
use crate::outbox::PendingPower;

impl Core {
    /// The ack for a `reboot` or `poweroff` command (its id is checked already).
    pub(super) fn power_ack(&self, cmd: &Command, action: PowerAction) -> Ack {
        if cmd.expires_at < self.clock.now() {
            return Ack::no("command expired");
        }
        if self.argv(action).is_empty() {
            return Ack::no(format!(
                "{action} is disabled on this agent ({action}_command = [])"
            ));
        }
        if let Some(p) = &self.power {
            return Ack::no(format!(
                "a {} ({}) is already under way",
                p.action, p.command_id
            ));
        }
        Ack::yes()
    }

    /// A command from the controller: parse, dispatch (once per id), and ack.
    ///
    /// A command whose id is not a command id (too long, not ASCII, ...) is dropped
    /// without an ack: the controller never makes one, an ack carrying it could be
    /// refused by the controller and then block every later report, and remembering it
    /// would store whatever the sender put there.
    pub(super) fn on_command(
        &mut self,
        payload: &[u8],
        out: &mut dyn Publisher,
        actions: &mut Vec<Action>,
    ) {
        let cmd: Command = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                // Without a command id there is nothing to ack.
                let id = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| {
                        serde_json::from_value::<CommandId>(v.get("command_id")?.clone()).ok()
                    })
                    .filter(CommandId::is_valid);
                warn!(error = %e, command = ?id, "malformed command refused");
                if let Some(id) = id {
                    self.ack(&id, Ack::no(format!("malformed command: {e}")));
                    self.send_backlog(out);
                }
                return;
            }
        };
        if !cmd.command_id.is_valid() {
            let shown: String = cmd.command_id.as_str().chars().take(64).collect();
            warn!(command = %shown, bytes = cmd.command_id.as_str().len(), "command with a bad id dropped, not acked");
            return;
        }
        match self.store.seen(&cmd.command_id) {
            Ok(Some(ack)) => {
                info!(command = %cmd.command_id, "repeated command; acking it again, not running it");
                self.ack(&cmd.command_id, ack);
                self.send_backlog(out);
                return;
            }
            Ok(None) => {}
            Err(e) => {
                // Better not to act than to risk running a command twice.
                error!(error = %e, command = %cmd.command_id, "cannot read remembered commands; ignoring the command");
                return;
            }
        }
        info!(command = %cmd.command_id, kind = %cmd.kind, "command received");
        // Every kind is checked, not only the ones that run jobs.
        let ack = match cmd.validate() {
            Ok(()) => self.dispatch(&cmd, out, actions),
            Err(e) => Ack::no(e.to_string()),
        };
        if !ack.accepted {
            warn!(command = %cmd.command_id, reason = ?ack.reason, "command refused");
        }
        if let Err(e) = self.store.remember(&cmd.command_id, &ack) {
            error!(error = %e, "cannot remember the command id");
        }
        let accepted = ack.accepted;
        let ack_seq = self.ack(&cmd.command_id, ack);
        if let (true, Some(action), Some(ack_seq)) = (accepted, cmd.kind.power(), ack_seq) {
            info!(command = %cmd.command_id, %action, "power action accepted; it runs once the ack is receipted");
            self.record_power(PendingPower {
                command_id: cmd.command_id.clone(),
                action,
                ack_seq,
                started: None,
            });
        }
        self.send_backlog(out);
    }

    /// What a new command does, and its ack.
    pub(super) fn dispatch(
        &mut self,
        cmd: &Command,
        out: &mut dyn Publisher,
        actions: &mut Vec<Action>,
    ) -> Ack {
        let reboots_after = cmd.plan.as_ref().is_some_and(|p| p.reboot_after);
        match cmd.kind {
            CommandKind::Install if reboots_after && self.settings.reboot_command.is_empty() => {
                Ack::no("the plan reboots the host after the install (reboot_after), but reboot is disabled on this agent (reboot_command = [])")
            }
            CommandKind::Install | CommandKind::Deprovision | CommandKind::Cancel => {
                let ack = self.jobs.handle(cmd);
                if ack.accepted && cmd.kind == CommandKind::Install && reboots_after {
                    self.reboot_after = Some(cmd.command_id.clone());
                }
                ack
            }
            CommandKind::Rebirth => {
                if let Some(link) = self.link {
                    self.publish_birth(link.conn, out);
                }
                self.last_inventory = None;
                actions.push(Action::ReadInventory);
                Ack::yes()
            }
            CommandKind::RefreshInventory => {
                self.last_inventory = None;
                actions.push(Action::ReadInventory);
                Ack::yes()
            }
            CommandKind::Reboot => self.power_ack(cmd, PowerAction::Reboot),
            CommandKind::Poweroff => self.power_ack(cmd, PowerAction::Poweroff),
            CommandKind::Wake => Ack::no("wake is sent by the controller, not run by agents"),
        }
    }

    pub(super) fn ack(&mut self, command_id: &CommandId, ack: Ack) -> Option<u64> {
        self.queue(ReportBody::Ack {
            command_id: command_id.clone(),
            accepted: ack.accepted,
            reason: ack.reason,
        })
    }
}
