//! One job: its steps in order, each a child process in its own process group, with the
//! step's timeout, its PROGRESS lines, and its stderr tail on failure.
//!
//! Cancel is done by the runner (`slot.rs`): it kills the step's group and reports
//! `failed` itself. The job then finds it no longer holds the slot, reaps its child and
//! ends without another event.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use metalbus_protocol::command::{CommandId, JobKind, Plan, Step};
use metalbus_protocol::report::JobStatus;
use metalbus_protocol::NodeId;
use rustix::process::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::lines::{LineSplitter, MAX_LINE};
use super::progress::{self, Throttle};
use super::slot::{kill_group, Shared, Ticket};
use super::tail::{Tail, STDERR_TAIL};
use super::JobEvent;

/// At most one progress report per this long (DESIGN section 5).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// After a step ends and its group is killed, how long its output may take to drain (a
/// process that left the group may still hold the pipes).
const DRAIN: Duration = Duration::from_secs(1);
/// `ETXTBSY` is passing when a script was written just now and another thread's fork
/// still holds the file open; the spawn is tried again this many times.
const SPAWN_RETRIES: u32 = 5;

/// The environment variable that carries a step argument.
pub fn arg_var(arg: &str) -> String {
    format!("MB_ARG_{}", arg.to_ascii_uppercase())
}

/// A job that holds the runner's slot.
pub struct Job {
    pub shared: Arc<Shared>,
    pub ticket: Ticket,
    pub node_id: NodeId,
    pub steps_dir: PathBuf,
    pub command_id: CommandId,
    pub job: JobKind,
    pub plan: Plan,
}

impl Job {
    /// Sends an event if the job still holds the slot.
    fn emit(
        &self,
        status: JobStatus,
        progress: Option<u8>,
        step: Option<&Step>,
        message: Option<String>,
        error: Option<String>,
    ) -> bool {
        self.shared.emit(
            self.ticket,
            JobEvent {
                command_id: self.command_id.clone(),
                job: self.job,
                status,
                progress,
                step: step.map(|s| s.name.clone()),
                message,
                error,
            },
        )
    }
}

/// Runs the steps and reports `progress`, then `complete` or `failed`. (`started` was
/// sent when the job took the slot.)
pub async fn run(job: Job) {
    let mut throttle = Throttle::new(PROGRESS_EVERY);
    for (index, step) in job.plan.steps.iter().enumerate() {
        match run_step(&job, index, step, &mut throttle).await {
            Ok(()) => {}
            Err(StepError::Lost) => {
                debug!(job = %job.command_id, step = %step.name, "cancelled job has stopped");
                return;
            }
            Err(StepError::Failed(error)) => {
                warn!(job = %job.command_id, step = %step.name, %error, "job failed");
                job.emit(JobStatus::Failed, None, Some(step), None, Some(error));
                return;
            }
        }
    }
    if job.emit(JobStatus::Complete, Some(100), None, None, None) {
        info!(job = %job.command_id, "job complete");
    }
}

enum StepError {
    /// The step failed the job, for this reason.
    Failed(String),
    /// The job no longer holds the slot (cancelled); say nothing more.
    Lost,
}

/// How a step's main process ended.
enum End {
    Exited(ExitStatus),
    WaitFailed(std::io::Error),
    TimedOut,
}

/// The running step's progress: the newest value not yet reported, and its message.
struct StepProgress<'a> {
    job: &'a Job,
    step: &'a Step,
    index: usize,
    pending: Option<u8>,
    message: Option<String>,
}

impl StepProgress<'_> {
    fn line(&mut self, line: &str) {
        match progress::parse(line) {
            Some((pct, message)) => {
                let steps = self.job.plan.steps.len();
                self.pending = Some(progress::overall(self.index, steps, pct));
                if message.is_some() {
                    self.message = message;
                }
            }
            None if line.trim_start().starts_with("PROGRESS") => {
                debug!(step = %self.step.name, %line, "malformed PROGRESS line ignored");
            }
            None => debug!(step = %self.step.name, %line, "step output"),
        }
    }

    /// Reports the pending value if the throttle lets it out now.
    fn report(&mut self, throttle: &mut Throttle) {
        if self.pending.is_some() && throttle.allow(Instant::now()) {
            let pct = self.pending.take();
            self.job.emit(
                JobStatus::Progress,
                pct,
                Some(self.step),
                self.message.clone(),
                None,
            );
        }
    }
}

/// A step's two output pipes.
struct Output {
    stdout: ChildStdout,
    stderr: ChildStderr,
    out_open: bool,
    err_open: bool,
    lines: LineSplitter,
    tail: Tail,
}

impl Output {
    fn open(&self) -> bool {
        self.out_open || self.err_open
    }

    /// Reads whichever pipe has data; returns the stdout lines completed (pending
    /// forever once both pipes are closed).
    async fn read(&mut self) -> Vec<String> {
        let mut out_buf = [0u8; 4096];
        let mut err_buf = [0u8; 4096];
        tokio::select! {
            n = self.stdout.read(&mut out_buf), if self.out_open => match n {
                Ok(n) if n > 0 => self.lines.push(&out_buf[..n]),
                _ => {
                    self.out_open = false;
                    self.lines.finish().into_iter().collect()
                }
            },
            n = self.stderr.read(&mut err_buf), if self.err_open => {
                match n {
                    Ok(n) if n > 0 => self.tail.push(&err_buf[..n]),
                    _ => self.err_open = false,
                }
                Vec::new()
            }
            () = std::future::pending(), if !self.open() => Vec::new(),
        }
    }
}

async fn run_step(
    job: &Job,
    index: usize,
    step: &Step,
    throttle: &mut Throttle,
) -> Result<(), StepError> {
    let name = &step.name;
    let mut child = spawn(job, step)
        .await
        .map_err(|e| StepError::Failed(format!("step '{name}' could not start: {e}")))?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    let mut group = Group(pgid);
    if !job.shared.step_started(job.ticket, name, pgid) {
        group.kill();
        let _ = child.wait().await;
        return Err(StepError::Lost);
    }
    debug!(job = %job.command_id, step = %name, ?pgid, "step started");
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        group.kill();
        let _ = child.wait().await;
        job.shared.step_ended(job.ticket);
        return Err(StepError::Failed(format!(
            "step '{name}' has no output pipes"
        )));
    };
    let mut output = Output {
        stdout,
        stderr,
        out_open: true,
        err_open: true,
        lines: LineSplitter::new(MAX_LINE),
        tail: Tail::new(STDERR_TAIL),
    };
    let mut progress = StepProgress {
        job,
        step,
        index,
        pending: None,
        message: None,
    };
    let deadline = tokio::time::sleep(Duration::from_secs(step.timeout_s));
    tokio::pin!(deadline);

    let end = loop {
        tokio::select! {
            lines = output.read() => {
                lines.iter().for_each(|l| progress.line(l));
                progress.report(throttle);
            }
            () = tokio::time::sleep_until(throttle.next_slot()), if progress.pending.is_some() => {
                progress.report(throttle);
            }
            status = child.wait() => break match status {
                Ok(s) => End::Exited(s),
                Err(e) => End::WaitFailed(e),
            },
            () = &mut deadline => break End::TimedOut,
        }
    };
    // Whatever the end, nothing of the step outlives it: its whole group is killed (the
    // stragglers a script left in the background too), then its main process is reaped
    // (already done if it exited).
    group.kill();
    job.shared.step_ended(job.ticket);
    if !matches!(end, End::Exited(_)) {
        let _ = child.wait().await;
    }
    if !job.shared.holds(job.ticket) {
        return Err(StepError::Lost);
    }
    // What the step wrote just before it ended; the group is dead, so the pipes close.
    let _ = tokio::time::timeout(DRAIN, async {
        while output.open() {
            output.read().await.iter().for_each(|l| progress.line(l));
        }
    })
    .await;
    // The newest value, unless that would make two reports within a second.
    progress.report(throttle);

    let failed = |how: String| {
        let tail = output.tail.text();
        StepError::Failed(if tail.is_empty() {
            format!("step '{name}' {how}")
        } else {
            format!("step '{name}' {how}: {tail}")
        })
    };
    match end {
        End::Exited(s) if s.success() => Ok(()),
        End::Exited(s) => {
            use std::os::unix::process::ExitStatusExt;
            Err(failed(match (s.code(), s.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                (None, None) => format!("ended with {s}"),
            }))
        }
        End::WaitFailed(e) => Err(failed(format!("could not be waited for: {e}"))),
        End::TimedOut => Err(StepError::Failed(format!(
            "step '{name}' timed out after {}s",
            step.timeout_s
        ))),
    }
}

/// A step's process group. It is killed when the step is done with it, and also if the
/// job's task is dropped mid-step (the runtime shutting down): `kill_on_drop` alone
/// would kill only the script, not what the script started.
struct Group(Option<Pid>);

impl Group {
    fn kill(&mut self) {
        kill_group(self.0.take());
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the step's script in a process group of its own, from `steps_dir`, with the
/// agent's environment (minus stray `MB_ARG_*`) and the step's `MB_*` variables.
async fn spawn(job: &Job, step: &Step) -> std::io::Result<Child> {
    let mut cmd = tokio::process::Command::new(job.steps_dir.join(&step.script));
    cmd.current_dir(&job.steps_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // Only the plan's args may appear as MB_ARG_*, not whatever the agent inherited.
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"MB_ARG_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("MB_NODE_ID", job.node_id.as_str())
        .env("MB_JOB", job.job.as_str())
        .env("MB_STEP", &step.name)
        .env("MB_COMMAND_ID", job.command_id.as_str());
    for (arg, value) in &step.args {
        cmd.env(arg_var(arg), value);
    }
    let busy = rustix::io::Errno::TXTBSY.raw_os_error();
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(busy) && tries < SPAWN_RETRIES => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20) * tries).await;
            }
            spawned => return spawned,
        }
    }
}
