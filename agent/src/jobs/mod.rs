//! The job runner: runs an install or deprovision plan's steps as child processes from
//! the agent's `steps_dir` only (DESIGN section 5), and reports what happens as
//! [`JobEvent`]s.
//!
//! - `run.rs`: one job, step by step: process groups, timeouts, cancel, exit status.
//! - `progress.rs`: `PROGRESS <pct> [message]` lines and the once-a-second throttle.
//! - `tail.rs`: the last 4 KiB of a step's stderr.

mod progress;
mod run;
mod tail;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use metalbus_protocol::command::{Command, CommandKind, JobKind};
use metalbus_protocol::report::JobStatus;
use metalbus_protocol::{NodeId, Timestamp};
use tokio::sync::{mpsc, watch};
use tracing::info;

/// What the runner says about a job; the daemon turns it into a report.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub command_id: String,
    pub job: JobKind,
    pub status: JobStatus,
    /// Overall percent, 0..=100, for `progress` (and 100 for `complete`).
    pub progress: Option<u8>,
    pub step: Option<String>,
    pub message: Option<String>,
    /// For `failed`: what went wrong.
    pub error: Option<String>,
}

/// The answer to a command, sent back as an ack report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub accepted: bool,
    pub reason: Option<String>,
}

impl Ack {
    fn yes() -> Self {
        Self {
            accepted: true,
            reason: None,
        }
    }

    fn no(reason: impl Into<String>) -> Self {
        Self {
            accepted: false,
            reason: Some(reason.into()),
        }
    }
}

/// The job that runs now.
struct Running {
    command_id: String,
    /// Set to `Some(reason)` to stop the job.
    cancel: watch::Sender<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts, refuses and cancels jobs; at most one runs at a time.
pub struct JobRunner {
    node_id: NodeId,
    steps_dir: PathBuf,
    events: mpsc::UnboundedSender<JobEvent>,
    running: Option<Running>,
}

impl JobRunner {
    pub fn new(
        node_id: NodeId,
        steps_dir: PathBuf,
        events: mpsc::UnboundedSender<JobEvent>,
    ) -> Self {
        Self {
            node_id,
            steps_dir,
            events,
            running: None,
        }
    }

    /// True while a job is running.
    pub fn busy(&self) -> bool {
        self.running.as_ref().is_some_and(|r| !r.task.is_finished())
    }

    /// The command id of the running job, if any.
    pub fn running(&self) -> Option<String> {
        self.running
            .as_ref()
            .filter(|r| !r.task.is_finished())
            .map(|r| r.command_id.clone())
    }

    /// Handles `install`, `deprovision` and `cancel`. Returns the ack at once; a started
    /// job runs in its own task and reports through the events channel. Must be called
    /// inside a Tokio runtime.
    pub fn handle(&mut self, cmd: &Command) -> Ack {
        if let Err(e) = cmd.validate() {
            return Ack::no(e.to_string());
        }
        if cmd.expires_at < Timestamp::from(SystemTime::now()) {
            return Ack::no("command expired");
        }
        match cmd.kind {
            CommandKind::Cancel => self.cancel(cmd),
            CommandKind::Install | CommandKind::Deprovision => self.start(cmd),
            other => Ack::no(format!("{other} is not handled by the job runner")),
        }
    }

    fn cancel(&mut self, cmd: &Command) -> Ack {
        let matches = |r: &Running| cmd.target.as_ref().is_none_or(|t| *t == r.command_id);
        match self.running.take() {
            Some(r) if !r.task.is_finished() && matches(&r) => {
                info!(job = %r.command_id, by = %cmd.command_id, "cancelling job");
                let _ = r
                    .cancel
                    .send(Some(format!("cancelled by command {}", cmd.command_id)));
                // The slot is free at once: the cancelled job's task winds down on its
                // own, and a job sent right after the cancel can start.
                Ack::yes()
            }
            other => {
                self.running = other;
                Ack {
                    accepted: true,
                    reason: Some("no such job running".into()),
                }
            }
        }
    }

    fn start(&mut self, cmd: &Command) -> Ack {
        if let Some(id) = self.running() {
            return Ack::no(format!("a job is already running: {id}"));
        }
        let (Some(job), Some(plan)) = (cmd.kind.job(), cmd.plan.as_ref()) else {
            return Ack::no(format!("a {} command needs a plan", cmd.kind));
        };
        for step in &plan.steps {
            if let Err(why) = check_script(&self.steps_dir, &step.script) {
                return Ack::no(why);
            }
        }
        let (cancel, cancelled) = watch::channel(None);
        let ctx = run::JobCtx {
            node_id: self.node_id.clone(),
            steps_dir: self.steps_dir.clone(),
            command_id: cmd.command_id.clone(),
            job,
            plan: plan.clone(),
            events: self.events.clone(),
            cancelled,
        };
        info!(job = %cmd.command_id, kind = %job, plan = %plan.name, steps = plan.steps.len(), "job starting");
        let task = tokio::spawn(run::run(ctx));
        self.running = Some(Running {
            command_id: cmd.command_id.clone(),
            cancel,
            task,
        });
        Ack::yes()
    }
}

/// The script must be a regular, executable file directly in `steps_dir`.
fn check_script(steps_dir: &Path, script: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let path = steps_dir.join(script);
    match std::fs::metadata(&path) {
        Err(_) => Err(format!("unknown script '{script}'")),
        Ok(m) if !m.is_file() => Err(format!("script '{script}' is not a regular file")),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => {
            Err(format!("script '{script}' is not executable"))
        }
        Ok(_) => Ok(()),
    }
}
