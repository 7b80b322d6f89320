//! Power actions: resumed or reported after a restart, started once the receipt covers
//! their ack (or the install's `complete`), recorded as started before they run.

use metalbus_protocol::command::{CommandId, PowerAction, Work};
use metalbus_protocol::report::{JobStatus, ReportBody};
use tracing::{error, info};

use super::{Action, Core};
use crate::outbox::{PendingPower, StartedIn};
use crate::power::PowerDone;

impl Core {
    /// A power action recorded before this start. Not started yet: it waits for its
    /// ack's receipt as before. Started in another boot: the host went down as asked.
    /// Started in this boot (or the boot cannot be told): the agent died while it ran;
    /// it is reported failed and never run again.
    pub(super) fn recover_power(&mut self) -> anyhow::Result<()> {
        let Some(p) = self.store.power()? else {
            return Ok(());
        };
        let Some(started) = &p.started else {
            info!(command = %p.command_id, action = %p.action, "a power action waits for its ack's receipt");
            self.power = Some(p);
            return Ok(());
        };
        let result = match (&started.boot_id, &self.host.boot_id) {
            (Some(then), Some(now)) if then != now => Ok(()),
            (Some(_), Some(_)) => Err(format!(
                "the agent restarted while the {} action ran, in the same boot; it is not run again",
                p.action
            )),
            _ => Err(format!(
                "the agent restarted after starting the {} action and cannot read the boot id to tell whether it happened; it is not run again",
                p.action
            )),
        };
        info!(command = %p.command_id, action = %p.action, ok = result.is_ok(), "power action found after a restart");
        self.queue(power_report(p.command_id, p.action, result));
        self.store.set_power(None)
    }

    /// The argv the agent's config gives `action`.
    pub(super) fn argv(&self, action: PowerAction) -> &[String] {
        match action {
            PowerAction::Reboot => &self.settings.reboot_command,
            PowerAction::Poweroff => &self.settings.poweroff_command,
        }
    }

    /// Starts the pending power action once the receipt for its ack is in.
    pub(super) fn maybe_start_power(&mut self, actions: &mut Vec<Action>) {
        let Some(p) = self.power.as_ref().filter(|p| p.started.is_none()) else {
            return;
        };
        match self.store.receipted(p.ack_seq) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                error!(error = %e, "cannot read the outbox");
                return;
            }
        }
        let mut started = p.clone();
        started.started = Some(StartedIn {
            boot_id: self.host.boot_id.clone(),
        });
        // Recorded before it runs: whatever happens next, it never runs twice.
        if let Err(e) = self.store.set_power(Some(&started)) {
            error!(error = %e, command = %started.command_id, "cannot record the power action; not running it");
            return;
        }
        actions.push(Action::RunPower {
            command_id: started.command_id.clone(),
            action: started.action,
            argv: self.argv(started.action).to_vec(),
        });
        self.power = Some(started);
    }

    /// The action ended: report it and forget it.
    pub(super) fn on_power_done(&mut self, done: PowerDone) {
        self.queue(power_report(done.command_id, done.action, done.result));
        if let Err(e) = self.store.set_power(None) {
            error!(error = %e, "cannot clear the power action");
        }
        self.power = None;
    }

    pub(super) fn record_power(&mut self, pending: PendingPower) {
        if let Err(e) = self.store.set_power(Some(&pending)) {
            error!(error = %e, "cannot record the power action");
        }
        self.power = Some(pending);
    }

    /// An install whose plan says `reboot_after` completed: the host reboots once the
    /// controller's receipt covers the `complete` report (DESIGN section 5), through
    /// the same once-only path as a `reboot` command, under the install's command id.
    pub(super) fn reboot_after_install(&mut self, command_id: CommandId, complete_seq: u64) {
        if let Some(p) = &self.power {
            info!(command = %command_id, pending = %p.command_id, action = %p.action, "install done; a power action is already under way, so no second reboot");
            return;
        }
        info!(command = %command_id, "install done; rebooting once the controller has the report (reboot_after)");
        self.record_power(PendingPower {
            command_id,
            action: PowerAction::Reboot,
            ack_seq: complete_seq,
            started: None,
        });
    }
}

/// The `job` report that ends a power action.
fn power_report(
    command_id: CommandId,
    action: PowerAction,
    result: Result<(), String>,
) -> ReportBody {
    let (status, error) = match result {
        Ok(()) => (JobStatus::Complete, None),
        Err(e) => (JobStatus::Failed, Some(e)),
    };
    ReportBody::Job {
        command_id,
        job: Work::Power(action),
        status,
        progress: None,
        step: None,
        message: None,
        error,
    }
}
