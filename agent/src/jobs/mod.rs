//! The job runner: runs an install or deprovision plan's steps as child processes, from
//! the agent's `steps_dir` only (DESIGN section 5), and reports what happens as
//! [`JobEvent`]s.
//!
//! - `slot.rs`: which job runs now; the one lock that orders events, cancel and `busy`.
//! - `run.rs`: one job, step by step: process groups, timeouts, exit status.
//! - `progress.rs`: `PROGRESS <pct> [message]` lines and the once-a-second limit.
//! - `lines.rs`: a step's stdout cut into lines, however it is written.
//! - `tail.rs`: the last 4 KiB of a step's stderr.
//!
//! Architecture Invariant: a command never names a program. A step's script is
//! `steps_dir.join(script)`, where `Plan::validate` has checked `script` to be a plain
//! file name, and it must be a regular executable file when the command arrives.

mod lines;
mod progress;
mod run;
mod slot;
mod tail;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use metalbus_protocol::command::{Command, CommandId, CommandKind, JobKind, Plan};
use metalbus_protocol::report::JobStatus;
use metalbus_protocol::{NodeId, Timestamp};
use tokio::sync::mpsc;
use tracing::info;

use slot::Shared;

/// What the runner says about a job, to be turned into a Report by the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub command_id: CommandId,
    pub job: JobKind,
    pub status: JobStatus,
    /// Overall percent, 0..=100: `Some(0)` for `started`, the job's share for
    /// `progress`, `Some(100)` for `complete`.
    pub progress: Option<u8>,
    /// The step the event is about (`progress`, and `failed` once a step ran).
    pub step: Option<String>,
    /// For `progress`: the step's last PROGRESS message.
    pub message: Option<String>,
    /// For `failed`: what went wrong, with the step's stderr tail when it exited badly.
    pub error: Option<String>,
}

/// What runs jobs: the real [`JobRunner`], or a simulated one.
pub trait Jobs: Send + Sync {
    /// Handles `install`, `deprovision` and `cancel`; returns the ack at once.
    fn handle(&mut self, cmd: &Command) -> Ack;
    /// The command id of the running job, if any.
    fn running(&self) -> Option<CommandId>;
}

impl Jobs for JobRunner {
    fn handle(&mut self, cmd: &Command) -> Ack {
        JobRunner::handle(self, cmd)
    }

    fn running(&self) -> Option<CommandId> {
        JobRunner::running(self)
    }
}

/// After an agent restart: kills whatever still runs of the job `command_id` (its step
/// processes carry `MB_COMMAND_ID` in their environment). Under systemd
/// (`KillMode=control-group`) nothing is left; this covers agents run by hand. Returns
/// how many process groups were killed.
pub fn kill_leftovers(command_id: &CommandId) -> usize {
    let marker = format!("MB_COMMAND_ID={command_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut groups = std::collections::BTreeSet::new();
    for e in entries.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                if let Ok(g) = rustix::process::getpgid(Some(p)) {
                    groups.insert(g.as_raw_nonzero().get());
                }
            }
        }
    }
    let mut killed = 0;
    for g in &groups {
        if let Some(p) = rustix::process::Pid::from_raw(*g) {
            if rustix::process::kill_process_group(p, rustix::process::Signal::KILL).is_ok() {
                killed += 1;
            }
        }
    }
    killed
}

/// The answer to a command, sent back as an ack report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub accepted: bool,
    pub reason: Option<String>,
}

impl Ack {
    pub fn yes() -> Self {
        Self {
            accepted: true,
            reason: None,
        }
    }

    pub fn no(reason: impl Into<String>) -> Self {
        Self {
            accepted: false,
            reason: Some(reason.into()),
        }
    }
}

/// Starts, refuses and cancels jobs; at most one runs at a time.
///
/// Dropping the runner kills the running job's processes; the job reports nothing more.
pub struct JobRunner {
    node_id: NodeId,
    steps_dir: PathBuf,
    shared: Arc<Shared>,
}

impl JobRunner {
    /// `events` receives every JobEvent of every job, in order. A relative `steps_dir`
    /// is made absolute now: steps run with `steps_dir` as their working directory,
    /// where a relative path to the script would no longer lead to it.
    pub fn new(
        node_id: NodeId,
        steps_dir: PathBuf,
        events: mpsc::UnboundedSender<JobEvent>,
    ) -> Self {
        Self {
            node_id,
            steps_dir: std::path::absolute(&steps_dir).unwrap_or(steps_dir),
            shared: Arc::new(Shared::new(events)),
        }
    }

    /// True while a job is running; false from the moment its final event is sent.
    pub fn busy(&self) -> bool {
        self.shared.running().is_some()
    }

    /// The command id of the running job, if any.
    pub fn running(&self) -> Option<CommandId> {
        self.shared.running()
    }

    /// Handles `install`, `deprovision` and `cancel` commands; must be called inside a
    /// Tokio runtime. Returns the ack at once; a started job then runs in its own task
    /// and reports through `events`. A refused command starts nothing and sends no event.
    ///
    /// A `cancel` whose job is not running (none runs, or another one) is accepted with
    /// the reason `no such job running`: what it asks for, that job not running, holds.
    pub fn handle(&mut self, cmd: &Command) -> Ack {
        if let Err(e) = cmd.validate() {
            return Ack::no(e.to_string());
        }
        if cmd.expires_at < Timestamp::from(SystemTime::now()) {
            return Ack::no("command expired");
        }
        match (cmd.kind, cmd.kind.job(), cmd.plan.as_ref()) {
            (CommandKind::Cancel, _, _) => self.cancel(cmd),
            (_, Some(job), Some(plan)) => self.start(cmd, job, plan),
            // `validate` refuses a job command without a plan; this arm is for the rest.
            (kind, _, _) => Ack::no(format!("{kind} is not handled by the job runner")),
        }
    }

    fn cancel(&mut self, cmd: &Command) -> Ack {
        let error = format!("cancelled by command {}", cmd.command_id);
        match self.shared.cancel(cmd.target.as_ref(), error) {
            Some(job) => {
                info!(job = %job, by = %cmd.command_id, "job cancelled");
                Ack::yes()
            }
            None => Ack {
                accepted: true,
                reason: Some("no such job running".into()),
            },
        }
    }

    fn start(&mut self, cmd: &Command, job: JobKind, plan: &Plan) -> Ack {
        // The same command again (the controller resends until it sees an ack): it is
        // already running, so acknowledge it again and start nothing.
        if self.running().as_ref() == Some(&cmd.command_id) {
            return Ack::yes();
        }
        if let Err(why) = check_plan(&self.steps_dir, plan) {
            return Ack::no(why);
        }
        let ticket = match self.shared.claim(&cmd.command_id, job) {
            Ok(t) => t,
            Err(running) => return Ack::no(format!("a job is already running: {running}")),
        };
        info!(job = %cmd.command_id, kind = %job, plan = %plan.name, steps = plan.steps.len(), "job started");
        tokio::spawn(run::run(run::Job {
            shared: self.shared.clone(),
            ticket,
            node_id: self.node_id.clone(),
            steps_dir: self.steps_dir.clone(),
            command_id: cmd.command_id.clone(),
            job,
            plan: plan.clone(),
        }));
        Ack::yes()
    }
}

impl Drop for JobRunner {
    fn drop(&mut self) {
        self.shared.abandon();
    }
}

/// What `Plan::validate` leaves to the agent: every script is a regular executable file
/// in `steps_dir`, and no two args of a step become the same variable.
fn check_plan(steps_dir: &Path, plan: &Plan) -> Result<(), String> {
    for step in &plan.steps {
        check_script(steps_dir, &step.script)?;
        let mut vars = BTreeMap::new();
        for arg in step.args.keys() {
            let var = run::arg_var(arg);
            if let Some(other) = vars.insert(var.clone(), arg) {
                return Err(format!(
                    "step '{}': arguments '{other}' and '{arg}' both become {var}",
                    step.name
                ));
            }
        }
    }
    Ok(())
}

/// A script the agent runs as its own user (root, on a real host) must be one only root
/// or that user can change: a regular file, not a symlink (whose target could be
/// swapped), owned by root or the agent's user, writable by neither group nor others,
/// in a directory with the same ownership and modes (or anyone could swap the file).
fn check_script(steps_dir: &Path, script: &str) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let trusted = |meta: &std::fs::Metadata, what: &str| -> Result<(), String> {
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != 0 && meta.uid() != me {
            return Err(format!(
                "{what} is owned by uid {}, neither root nor the agent's user; refusing to run it",
                meta.uid()
            ));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(format!(
                "{what} is writable by its group or by anyone; refusing to run it"
            ));
        }
        Ok(())
    };
    let dir = std::fs::metadata(steps_dir)
        .map_err(|e| format!("steps_dir {} cannot be read: {e}", steps_dir.display()))?;
    trusted(&dir, &format!("steps_dir {}", steps_dir.display()))?;
    let path = steps_dir.join(script);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("unknown script '{script}'"))
        }
        Err(e) => return Err(format!("script '{script}' cannot be read: {e}")),
    };
    if meta.file_type().is_symlink() {
        return Err(format!(
            "script '{script}' is a symbolic link; refusing to run it"
        ));
    }
    if !meta.is_file() {
        return Err(format!("script '{script}' is not a regular file"));
    }
    trusted(&meta, &format!("script '{script}'"))?;
    // access(2) answers for the agent's own user, which is who will run it.
    rustix::fs::access(&path, rustix::fs::Access::EXEC_OK)
        .map_err(|_| format!("script '{script}' is not executable"))
}

#[cfg(test)]
mod script_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::check_script;

    fn mode(path: &std::path::Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn only_a_script_nobody_else_can_change_is_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("steps.d");
        std::fs::create_dir(&dir).unwrap();
        mode(&dir, 0o755);
        let script = dir.join("wipe");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        mode(&script, 0o755);
        assert_eq!(check_script(&dir, "wipe"), Ok(()));
        for (m, word) in [(0o775, "group"), (0o757, "anyone"), (0o644, "executable")] {
            mode(&script, m);
            let e = check_script(&dir, "wipe").unwrap_err();
            assert!(e.contains(word), "{m:o}: {e}");
        }
        mode(&script, 0o755);
        // A symlink to a good script is refused: its target could be swapped.
        std::os::unix::fs::symlink(&script, dir.join("link")).unwrap();
        let e = check_script(&dir, "link").unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        // A directory others may write to: anyone could replace the script.
        for m in [0o775, 0o777] {
            mode(&dir, m);
            let e = check_script(&dir, "wipe").unwrap_err();
            assert!(e.contains("steps_dir"), "{m:o}: {e}");
        }
        mode(&dir, 0o755);
        assert_eq!(
            check_script(&dir, "nope").unwrap_err(),
            "unknown script 'nope'"
        );
    }
}
