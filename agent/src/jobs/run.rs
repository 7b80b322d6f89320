//! One job: its steps in order, each a child process in its own process group, with the
//! step's timeout, cancellation, progress lines, and the stderr tail on failure.

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use metalbus_protocol::command::{JobKind, Plan, Step};
use metalbus_protocol::report::JobStatus;
use metalbus_protocol::NodeId;
use rustix::process::{kill_process_group, Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::progress::{self, Throttle};
use super::tail::{Tail, STDERR_TAIL};
use super::JobEvent;

/// At most one progress report per this long (DESIGN section 5).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// After a step ends, how long leftover output may take to drain.
const DRAIN: Duration = Duration::from_secs(1);

pub struct JobCtx {
    pub node_id: NodeId,
    pub steps_dir: std::path::PathBuf,
    pub command_id: String,
    pub job: JobKind,
    pub plan: Plan,
    pub events: mpsc::UnboundedSender<JobEvent>,
    /// Turns `Some(reason)` when the job is cancelled.
    pub cancelled: watch::Receiver<Option<String>>,
}

impl JobCtx {
    fn emit(
        &self,
        status: JobStatus,
        progress: Option<u8>,
        step: Option<&Step>,
        message: Option<String>,
        error: Option<String>,
    ) {
        let _ = self.events.send(JobEvent {
            command_id: self.command_id.clone(),
            job: self.job,
            status,
            progress,
            step: step.map(|s| s.name.clone()),
            message,
            error,
        });
    }
}

/// Runs the whole job and reports `started`, `progress`, then `complete` or `failed`.
pub async fn run(mut ctx: JobCtx) {
    ctx.emit(JobStatus::Started, Some(0), None, None, None);
    let steps = ctx.plan.steps.clone();
    let mut throttle = Throttle::new(PROGRESS_EVERY);
    for (i, step) in steps.iter().enumerate() {
        if let Err(error) = run_step(&mut ctx, i, steps.len(), step, &mut throttle).await {
            warn!(job = %ctx.command_id, step = %step.name, %error, "job failed");
            ctx.emit(JobStatus::Failed, None, Some(step), None, Some(error));
            return;
        }
    }
    info!(job = %ctx.command_id, "job complete");
    ctx.emit(JobStatus::Complete, Some(100), steps.last(), None, None);
}

/// How a step's process ended.
enum End {
    Exited(ExitStatus),
    TimedOut,
    Cancelled(String),
}

async fn run_step(
    ctx: &mut JobCtx,
    index: usize,
    steps: usize,
    step: &Step,
    throttle: &mut Throttle,
) -> Result<(), String> {
    let name = &step.name;
    let mut cmd = tokio::process::Command::new(ctx.steps_dir.join(&step.script));
    cmd.current_dir(&ctx.steps_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .env("MB_NODE_ID", ctx.node_id.as_str())
        .env("MB_JOB", ctx.job.as_str())
        .env("MB_STEP", name)
        .env("MB_COMMAND_ID", &ctx.command_id);
    for (k, v) in &step.args {
        cmd.env(format!("MB_ARG_{}", k.to_ascii_uppercase()), v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("step '{name}' could not start: {e}"))?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);
    debug!(step = %name, pid = ?group, "step started");
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(group);
        return Err(format!("step '{name}' has no output pipes"));
    };
    let mut lines = BufReader::new(stdout).lines();
    let mut tail = Tail::new(STDERR_TAIL);
    let mut buf = vec![0u8; 4096];
    let (mut out_open, mut err_open) = (true, true);
    let mut pending: Option<(u8, Option<String>)> = None;
    let mut message: Option<String> = None;
    let deadline = tokio::time::sleep(Duration::from_secs(step.timeout_s));
    tokio::pin!(deadline);

    let end = loop {
        let slot = throttle.next_slot().unwrap_or_else(Instant::now);
        tokio::select! {
            line = lines.next_line(), if out_open => match line {
                Ok(Some(l)) => match progress::parse(&l) {
                    Some((pct, msg)) => {
                        if msg.is_some() {
                            message = msg;
                        }
                        pending = Some((progress::overall(index, steps, pct), message.clone()));
                        if throttle.allow(Instant::now()) {
                            send_progress(ctx, step, pending.take());
                        }
                    }
                    None => debug!(step = %name, line = %l, "step output"),
                },
                _ => out_open = false,
            },
            n = stderr.read(&mut buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => tail.push(&buf[..n]),
            },
            _ = tokio::time::sleep_until(slot.into()), if pending.is_some() => {
                if throttle.allow(Instant::now()) {
                    send_progress(ctx, step, pending.take());
                }
            }
            status = child.wait() => break match status {
                Ok(s) => End::Exited(s),
                Err(e) => End::Cancelled(format!("waiting for the step failed: {e}")),
            },
            _ = &mut deadline => break End::TimedOut,
            changed = ctx.cancelled.changed() => {
                let reason = match changed {
                    Ok(()) => ctx.cancelled.borrow().clone(),
                    Err(_) => Some("the agent is stopping".to_string()),
                };
                if let Some(reason) = reason {
                    break End::Cancelled(reason);
                }
            }
        }
    };
    // Whatever the end, nothing of the step may outlive it: kill its whole group, then
    // reap the main process (already reaped if it exited).
    kill_group(group);
    if !matches!(end, End::Exited(_)) {
        let _ = child.wait().await;
    }
    // Collect what is left of the output; the group is dead, so the pipes close.
    let _ = tokio::time::timeout(DRAIN, async {
        while out_open {
            match lines.next_line().await {
                Ok(Some(l)) => {
                    if let Some((pct, msg)) = progress::parse(&l) {
                        if msg.is_some() {
                            message = msg;
                        }
                        pending = Some((progress::overall(index, steps, pct), message.clone()));
                    }
                }
                _ => out_open = false,
            }
        }
        while err_open {
            match stderr.read(&mut buf).await {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => tail.push(&buf[..n]),
            }
        }
    })
    .await;
    if throttle.allow(Instant::now()) {
        send_progress(ctx, step, pending.take());
    }
    match end {
        End::Exited(s) if s.success() => Ok(()),
        End::Exited(s) => {
            use std::os::unix::process::ExitStatusExt;
            let how = match (s.code(), s.signal()) {
                (Some(code), _) => format!("exited with status {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                (None, None) => "ended abnormally".to_string(),
            };
            let text = tail.text();
            Err(if text.is_empty() {
                format!("step '{name}' {how}")
            } else {
                format!("step '{name}' {how}: {text}")
            })
        }
        End::TimedOut => Err(format!("step '{name}' timed out after {}s", step.timeout_s)),
        End::Cancelled(reason) => Err(reason),
    }
}

fn send_progress(ctx: &JobCtx, step: &Step, value: Option<(u8, Option<String>)>) {
    if let Some((pct, message)) = value {
        ctx.emit(JobStatus::Progress, Some(pct), Some(step), message, None);
    }
}

/// SIGKILL to the step's process group; a group already gone is fine.
fn kill_group(group: Option<Pid>) {
    if let Some(pgid) = group {
        if let Err(e) = kill_process_group(pgid, Signal::KILL) {
            if e != rustix::io::Errno::SRCH {
                warn!(pgid = pgid.as_raw_nonzero().get(), error = %e, "could not kill the step's process group");
            }
        }
    }
}
