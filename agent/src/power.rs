//! Power actions: what the agent runs for a `reboot` or `poweroff` command.
//!
//! The program comes from the agent's own config (`reboot_command`, `poweroff_command`,
//! an argv, never a shell string and never anything from the wire). It runs as a child
//! process in a task of its own, so the MQTT loop never waits for it; its result comes
//! back as a [`PowerDone`].
//!
//! Order (DESIGN section 5, docs/DECISIONS.md §48): ack the command, wait until the
//! controller's receipt covers the ack, record the action as started with the current
//! boot id, then run it. A restart finds the record: started in another boot means the
//! host went down as asked (`complete`); started in this boot means the agent died while
//! the action ran, and it is not run again (`failed`).

use std::process::Stdio;
use std::time::Duration;

use metalbus_protocol::command::{CommandId, PowerAction};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How long an action may run before it counts as failed (and is killed).
pub const ACTION_TIMEOUT: Duration = Duration::from_secs(300);
/// Bytes of stderr kept for the error.
const STDERR_TAIL: usize = 4096;

/// The result of one action, for the daemon to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerDone {
    pub command_id: CommandId,
    pub action: PowerAction,
    /// `Err` says what went wrong.
    pub result: Result<(), String>,
}

/// Runs `argv` in its own task and sends the result to `done`. The action sees
/// `MB_NODE_ID` and `MB_COMMAND_ID`, like step scripts.
pub fn spawn(
    node_id: String,
    command_id: CommandId,
    action: PowerAction,
    argv: Vec<String>,
    done: mpsc::UnboundedSender<PowerDone>,
) {
    tokio::spawn(async move {
        info!(command = %command_id, %action, ?argv, "running the power action");
        let env = [
            ("MB_NODE_ID", node_id.as_str()),
            ("MB_COMMAND_ID", command_id.as_str()),
        ];
        let result = run(action, &argv, &env, ACTION_TIMEOUT).await;
        match &result {
            Ok(()) => info!(command = %command_id, %action, "power action exited 0"),
            Err(e) => warn!(command = %command_id, %action, error = %e, "power action failed"),
        }
        let _ = done.send(PowerDone {
            command_id,
            action,
            result,
        });
    });
}

/// Runs `argv` (program and arguments, no shell) with stdin closed, waits up to
/// `timeout`, and says why it failed: it did not start, it was killed, it ran too long,
/// or it exited non-zero (with the tail of its stderr).
pub async fn run(
    kind: PowerAction,
    argv: &[String],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err(format!("no {kind}_command is configured"));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{kind} command {program:?} could not be started: {e}"))?;
    let mut stderr = child.stderr.take();
    let waited = tokio::time::timeout(timeout, async {
        let mut buf = Vec::new();
        if let Some(err) = stderr.as_mut() {
            // Bounded by what the action prints; the tail is kept.
            let _ = err.read_to_end(&mut buf).await;
        }
        (child.wait().await, buf)
    })
    .await;
    let (status, buf) = match waited {
        Ok((status, buf)) => (status, buf),
        Err(_) => {
            return Err(format!(
                "{kind} command {program:?} did not finish within {timeout:?}"
            ))
        }
    };
    let status =
        status.map_err(|e| format!("waiting for the {kind} command {program:?} failed: {e}"))?;
    if status.success() {
        return Ok(());
    }
    let start = buf.len().saturating_sub(STDERR_TAIL);
    let tail = String::from_utf8_lossy(&buf[start..]).trim().to_string();
    let how = match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "was killed by a signal".to_string(),
    };
    Err(if tail.is_empty() {
        format!("{kind} command {program:?} {how}")
    } else {
        format!("{kind} command {program:?} {how}: {tail}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn exit_0_is_success() {
        let r = run(
            PowerAction::Reboot,
            &argv(&["true"]),
            &[],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(r, Ok(()));
    }

    #[tokio::test]
    async fn arguments_are_passed_without_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker; echo no");
        let r = run(
            PowerAction::Reboot,
            &argv(&["touch", marker.to_str().unwrap()]),
            &[],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(r, Ok(()));
        assert!(marker.exists(), "one argument, semicolon and all");
    }

    #[tokio::test]
    async fn the_action_sees_its_command_id() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let script = format!("echo \"$MB_NODE_ID $MB_COMMAND_ID\" > '{}'", out.display());
        let r = run(
            PowerAction::Reboot,
            &argv(&["sh", "-c", &script]),
            &[("MB_NODE_ID", "n1"), ("MB_COMMAND_ID", "c-1")],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(r, Ok(()));
        assert_eq!(std::fs::read_to_string(out).unwrap(), "n1 c-1\n");
    }

    #[tokio::test]
    async fn a_non_zero_exit_fails_with_the_status_and_stderr() {
        let r = run(
            PowerAction::Poweroff,
            &argv(&["sh", "-c", "echo 'cannot power off' >&2; exit 3"]),
            &[],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            r,
            Err("poweroff command \"sh\" exited with status 3: cannot power off".into())
        );
    }

    #[tokio::test]
    async fn a_missing_program_fails_to_start() {
        let r = run(
            PowerAction::Reboot,
            &argv(&["/nonexistent/metalbus-reboot"]),
            &[],
            Duration::from_secs(10),
        )
        .await;
        let err = r.unwrap_err();
        assert!(
            err.starts_with("reboot command \"/nonexistent/metalbus-reboot\" could not be started"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_empty_argv_and_a_hung_action_fail() {
        let r = run(PowerAction::Reboot, &[], &[], Duration::from_secs(10)).await;
        assert_eq!(r, Err("no reboot_command is configured".into()));
        let r = run(
            PowerAction::Reboot,
            &argv(&["sleep", "30"]),
            &[],
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(
            r,
            Err("reboot command \"sleep\" did not finish within 200ms".into())
        );
    }
}
