//! Which job runs now, shared by the [`JobRunner`](super::JobRunner) and the job's task.
//!
//! One mutex guards the slot and every send of a job event. So a job's final event and
//! the slot becoming free happen together: once the final event is in the channel the
//! runner is not busy, and a cancelled job can never report anything after its `failed`.

use std::sync::{Mutex, MutexGuard, PoisonError};

use metalbus_protocol::command::{CommandId, JobKind};
use metalbus_protocol::report::JobStatus;
use rustix::process::{kill_process_group, Pid, Signal};
use tokio::sync::mpsc;
use tracing::warn;

use super::JobEvent;

/// A job's claim on the slot. A job that no longer holds the slot (it was cancelled)
/// sends nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// The job that runs now.
struct Current {
    ticket: Ticket,
    command_id: CommandId,
    job: JobKind,
    /// The step that runs now, and its process group.
    step: Option<String>,
    group: Option<Pid>,
}

struct Inner {
    current: Option<Current>,
    /// Tickets handed out so far.
    issued: u64,
}

pub struct Shared {
    inner: Mutex<Inner>,
    events: mpsc::UnboundedSender<JobEvent>,
}

impl Shared {
    pub fn new(events: mpsc::UnboundedSender<JobEvent>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                current: None,
                issued: 0,
            }),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something did, the slot is still
        // consistent, so go on with it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The command id of the running job.
    pub fn running(&self) -> Option<CommandId> {
        self.lock().current.as_ref().map(|c| c.command_id.clone())
    }

    /// Takes the free slot for a job and sends its `started`, or names the job that
    /// holds the slot.
    pub fn claim(&self, command_id: &CommandId, job: JobKind) -> Result<Ticket, CommandId> {
        let mut inner = self.lock();
        if let Some(c) = &inner.current {
            return Err(c.command_id.clone());
        }
        inner.issued += 1;
        let ticket = Ticket(inner.issued);
        inner.current = Some(Current {
            ticket,
            command_id: command_id.clone(),
            job,
            step: None,
            group: None,
        });
        let _ = self.events.send(JobEvent {
            command_id: command_id.clone(),
            job,
            status: JobStatus::Started,
            progress: Some(0),
            step: None,
            message: None,
            error: None,
        });
        Ok(ticket)
    }

    /// Sends an event of the ticket's job if the job still holds the slot; a final event
    /// (`complete`, `failed`) frees the slot in the same step. False if the job lost the
    /// slot.
    pub fn emit(&self, ticket: Ticket, event: JobEvent) -> bool {
        let mut inner = self.lock();
        if !holds(&inner, ticket) {
            return false;
        }
        if matches!(event.status, JobStatus::Complete | JobStatus::Failed) {
            inner.current = None;
        }
        let _ = self.events.send(event);
        true
    }

    /// Whether the ticket's job still holds the slot.
    pub fn holds(&self, ticket: Ticket) -> bool {
        holds(&self.lock(), ticket)
    }

    /// Records the step that now runs in `group`. False if the job lost the slot in the
    /// meantime: then the caller must kill the group itself.
    pub fn step_started(&self, ticket: Ticket, step: &str, group: Option<Pid>) -> bool {
        let mut inner = self.lock();
        match inner.current.as_mut() {
            Some(c) if c.ticket == ticket => {
                c.step = Some(step.to_string());
                c.group = group;
                true
            }
            _ => false,
        }
    }

    /// Forgets the step's group once it has been killed and reaped, so that a later
    /// cancel never signals a process group id the kernel may have handed out again.
    pub fn step_ended(&self, ticket: Ticket) {
        let mut inner = self.lock();
        if let Some(c) = inner.current.as_mut().filter(|c| c.ticket == ticket) {
            c.group = None;
        }
    }

    /// Stops the running job when `target` is its command id (or `None`): kills the
    /// step's process group, sends `failed` with `error`, frees the slot. Returns the
    /// stopped job's command id; `None` when no such job runs.
    pub fn cancel(&self, target: Option<&CommandId>, error: String) -> Option<CommandId> {
        let mut inner = self.lock();
        let matches = inner
            .current
            .as_ref()
            .is_some_and(|c| target.is_none_or(|t| *t == c.command_id));
        if !matches {
            return None;
        }
        let c = inner.current.take()?;
        kill_group(c.group);
        let _ = self.events.send(JobEvent {
            command_id: c.command_id.clone(),
            job: c.job,
            status: JobStatus::Failed,
            progress: None,
            step: c.step,
            message: None,
            error: Some(error),
        });
        Some(c.command_id)
    }

    /// Kills the running job, if any, and frees the slot without an event (the runner
    /// is going away).
    pub fn abandon(&self) {
        if let Some(c) = self.lock().current.take() {
            kill_group(c.group);
        }
    }
}

fn holds(inner: &Inner, ticket: Ticket) -> bool {
    inner.current.as_ref().is_some_and(|c| c.ticket == ticket)
}

/// SIGKILL to a step's process group; a group already gone is fine.
pub fn kill_group(group: Option<Pid>) {
    let Some(pgid) = group else { return };
    match kill_process_group(pgid, Signal::KILL) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => {
            warn!(pgid = pgid.as_raw_nonzero().get(), error = %e, "could not kill a step's process group")
        }
    }
}
