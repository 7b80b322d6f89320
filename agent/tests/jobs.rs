//! The job runner through its library API, with real child processes from a temp steps
//! dir: events in order, environment, stderr tails, timeouts and cancels that kill whole
//! process groups, refusals, and the once-a-second progress limit.
//!
//! Timing: nothing here depends on a machine being fast. Where an assertion needs a
//! second to pass between two progress lines, the script waits for a file that the test
//! creates only after it has seen the earlier event.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use metalbus_agent::jobs::{Ack, JobEvent, JobRunner};
use metalbus_protocol::command::{Command, CommandId, CommandKind, JobKind, Plan, Step};
use metalbus_protocol::report::JobStatus;
use metalbus_protocol::{NodeId, Timestamp};
use tokio::sync::mpsc::{self, error::TryRecvError, UnboundedReceiver};

/// Longest any single wait in these tests may take.
const WAIT: Duration = Duration::from_secs(30);

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn step(name: &str, script: &str, timeout_s: u64) -> Step {
    Step {
        name: name.into(),
        script: script.into(),
        args: BTreeMap::new(),
        timeout_s,
    }
}

/// A command id as the agent reads it off the wire: unchecked, so bad ones can be sent.
fn wire_id(id: &str) -> CommandId {
    serde_json::from_value(serde_json::Value::from(id)).unwrap()
}

fn command(id: &str, kind: CommandKind, steps: Vec<Step>) -> Command {
    let now = Timestamp::from(SystemTime::now()).unix_millis();
    Command {
        command_id: wire_id(id),
        kind,
        issued_at: Timestamp::from_unix_millis(now),
        expires_at: Timestamp::from_unix_millis(now + 600_000),
        plan: kind.job().map(|_| Plan {
            name: "test".into(),
            steps,
            reboot_after: false,
        }),
        target: None,
    }
}

fn cancel(id: &str, target: Option<&str>) -> Command {
    Command {
        target: target.map(|t| CommandId::new(t).unwrap()),
        ..command(id, CommandKind::Cancel, vec![])
    }
}

fn runner(dir: &Path) -> (JobRunner, UnboundedReceiver<JobEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let node = NodeId::new("node-7").unwrap();
    (JobRunner::new(node, dir.to_path_buf(), tx), rx)
}

fn accepted() -> Ack {
    Ack {
        accepted: true,
        reason: None,
    }
}

fn refused(reason: &str) -> Ack {
    Ack {
        accepted: false,
        reason: Some(reason.into()),
    }
}

fn event(id: &str, job: JobKind, status: JobStatus) -> JobEvent {
    JobEvent {
        command_id: CommandId::new(id).unwrap(),
        job,
        status,
        progress: None,
        step: None,
        message: None,
        error: None,
    }
}

fn started(id: &str, job: JobKind) -> JobEvent {
    JobEvent {
        progress: Some(0),
        ..event(id, job, JobStatus::Started)
    }
}

fn complete(id: &str, job: JobKind) -> JobEvent {
    JobEvent {
        progress: Some(100),
        ..event(id, job, JobStatus::Complete)
    }
}

fn progress(id: &str, pct: u8, step: &str, message: Option<&str>) -> JobEvent {
    JobEvent {
        progress: Some(pct),
        step: Some(step.into()),
        message: message.map(String::from),
        ..event(id, JobKind::Install, JobStatus::Progress)
    }
}

fn failed(id: &str, job: JobKind, step: &str, error: &str) -> JobEvent {
    JobEvent {
        step: Some(step.into()),
        error: Some(error.into()),
        ..event(id, job, JobStatus::Failed)
    }
}

async fn next(rx: &mut UnboundedReceiver<JobEvent>) -> JobEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no job event within 30 s")
        .expect("the runner dropped the events channel")
}

/// Every event up to and including the job's last one (complete or failed).
async fn until_done(rx: &mut UnboundedReceiver<JobEvent>) -> Vec<JobEvent> {
    let mut events = Vec::new();
    loop {
        let e = next(rx).await;
        let last = matches!(e.status, JobStatus::Complete | JobStatus::Failed);
        events.push(e);
        if last {
            return events;
        }
    }
}

/// Waits a moment, then says whether no event came.
async fn quiet(rx: &mut UnboundedReceiver<JobEvent>) -> bool {
    tokio::time::sleep(Duration::from_millis(300)).await;
    matches!(rx.try_recv(), Err(TryRecvError::Empty))
}

fn process_with(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
}

/// Whether every process whose command line holds `marker` is gone within 5 s (a
/// SIGKILLed process takes a moment to leave /proc).
async fn gone(marker: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_with(marker) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test]
async fn two_steps_report_mapped_progress_and_get_their_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    script(
        dir.path(),
        "first",
        &format!(
            "echo \"$MB_NODE_ID $MB_JOB $MB_STEP $MB_COMMAND_ID $MB_ARG_DISK $MB_ARG_IMAGE_URL $(pwd)\" > {d}/env-one\n\
             echo PROGRESS 50 halfway\n\
             echo not a progress line\n\
             echo PROGRESS lots malformed"
        ),
    );
    // Waits for the test's go-ahead and a second more, so the throttle lets it out.
    script(
        dir.path(),
        "second",
        &format!(
            "echo \"$MB_STEP ${{MB_ARG_DISK:-none}}\" > {d}/env-two\n\
             while [ ! -e {d}/go ]; do sleep 0.02; done\n\
             sleep 1.05\n\
             echo PROGRESS 50 copying"
        ),
    );
    let mut first = step("one", "first", 10);
    first.args.insert("disk".into(), "/dev/sdz".into());
    first.args.insert("Image_URL".into(), "http://x/y z".into());
    let (mut r, mut rx) = runner(dir.path());
    let cmd = command(
        "c-1",
        CommandKind::Install,
        vec![first, step("two", "second", 10)],
    );
    assert_eq!(r.handle(&cmd), accepted());
    assert!(r.busy());
    assert_eq!(r.running(), Some(CommandId::new("c-1").unwrap()));

    assert_eq!(next(&mut rx).await, started("c-1", JobKind::Install));
    assert_eq!(
        next(&mut rx).await,
        progress("c-1", 25, "one", Some("halfway"))
    );
    std::fs::write(dir.path().join("go"), "").unwrap();
    assert_eq!(
        until_done(&mut rx).await,
        vec![
            progress("c-1", 75, "two", Some("copying")),
            complete("c-1", JobKind::Install),
        ]
    );
    // Free the moment the final event is out.
    assert!(!r.busy());
    assert_eq!(r.running(), None);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("env-one"))
            .unwrap()
            .trim(),
        format!("node-7 install one c-1 /dev/sdz http://x/y z {d}")
    );
    // The other step's args are not passed on.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("env-two"))
            .unwrap()
            .trim(),
        "two none"
    );
}

#[tokio::test]
async fn a_failing_step_names_itself_with_its_stderr_and_stops_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let never = dir.path().join("never");
    script(
        dir.path(),
        "bad",
        "echo 'first line' >&2\necho 'disk /dev/sdz is gone' >&2\nexit 3",
    );
    script(dir.path(), "after", &format!("touch {}", never.display()));
    let (mut r, mut rx) = runner(dir.path());
    let cmd = command(
        "c-2",
        CommandKind::Deprovision,
        vec![step("wipe", "bad", 10), step("later", "after", 10)],
    );
    assert_eq!(r.handle(&cmd), accepted());
    assert_eq!(
        until_done(&mut rx).await,
        vec![
            started("c-2", JobKind::Deprovision),
            failed(
                "c-2",
                JobKind::Deprovision,
                "wipe",
                "step 'wipe' exited with status 3: first line\ndisk /dev/sdz is gone"
            ),
        ]
    );
    assert!(!r.busy());
    assert!(!never.exists(), "the step after a failure must not run");
}

#[tokio::test]
async fn a_step_killed_by_a_signal_says_so() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "die", "echo 'about to go' >&2\nkill -9 $$");
    let (mut r, mut rx) = runner(dir.path());
    let cmd = command("c-2k", CommandKind::Install, vec![step("d", "die", 10)]);
    assert_eq!(r.handle(&cmd), accepted());
    let events = until_done(&mut rx).await;
    assert_eq!(
        events.last().unwrap(),
        &failed(
            "c-2k",
            JobKind::Install,
            "d",
            "step 'd' killed by signal 9: about to go"
        )
    );
}

#[tokio::test]
async fn only_the_last_4_kib_of_stderr_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "noisy",
        "i=0; while [ $i -lt 500 ]; do echo \"noise line $i of the step\" >&2; i=$((i+1)); done\n\
         echo 'the real reason' >&2\nexit 1",
    );
    let (mut r, mut rx) = runner(dir.path());
    let cmd = command("c-3", CommandKind::Install, vec![step("n", "noisy", 10)]);
    assert_eq!(r.handle(&cmd), accepted());
    let events = until_done(&mut rx).await;
    let last = events.last().unwrap();
    assert_eq!(last.status, JobStatus::Failed);
    let error = last.error.clone().unwrap();
    let prefix = "step 'n' exited with status 1: ";
    assert!(error.starts_with(prefix), "{error}");
    assert!(error.ends_with("noise line 499 of the step\nthe real reason"));
    assert!(error.len() <= prefix.len() + 4096, "{} bytes", error.len());
    // ~13 KiB were written: the tail is nearly full, and its start is cut.
    assert!(error.len() > prefix.len() + 4000, "{} bytes", error.len());
    assert!(!error.contains("noise line 0 "));
}

#[tokio::test]
async fn what_a_successful_step_leaves_behind_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "leaky",
        "sleep 60.6161 &\nsleep 60.6162 >/dev/null 2>&1 &\necho PROGRESS 100 done",
    );
    let (mut r, mut rx) = runner(dir.path());
    let cmd = command("c-s", CommandKind::Install, vec![step("l", "leaky", 10)]);
    assert_eq!(r.handle(&cmd), accepted());
    assert_eq!(
        until_done(&mut rx).await,
        vec![
            started("c-s", JobKind::Install),
            progress("c-s", 100, "l", Some("done")),
            complete("c-s", JobKind::Install),
        ]
    );
    assert!(gone("60.6161").await && gone("60.6162").await);
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "hang",
        "sleep 60.7171 &\necho PROGRESS 5 hanging\nsleep 60.7172",
    );
    let (mut r, mut rx) = runner(dir.path());
    let cmd = command("c-4", CommandKind::Install, vec![step("stuck", "hang", 1)]);
    let t0 = Instant::now();
    assert_eq!(r.handle(&cmd), accepted());
    let events = until_done(&mut rx).await;
    assert!(t0.elapsed() >= Duration::from_secs(1));
    // The PROGRESS line is read long before the timeout, unless the machine stalls.
    let (progress_events, others): (Vec<_>, Vec<_>) = events
        .into_iter()
        .partition(|e| e.status == JobStatus::Progress);
    assert!(progress_events.len() <= 1);
    assert_eq!(
        others,
        vec![
            started("c-4", JobKind::Install),
            failed(
                "c-4",
                JobKind::Install,
                "stuck",
                "step 'stuck' timed out after 1s"
            ),
        ]
    );
    assert!(!r.busy());
    assert!(gone("60.7171").await, "the background grandchild is gone");
    assert!(gone("60.7172").await, "the step is gone");
}

#[tokio::test]
async fn cancel_stops_the_job_and_frees_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "long",
        "sleep 60.8181 &\necho PROGRESS 10 waiting\nsleep 60.8182",
    );
    script(dir.path(), "quick", "true");
    let (mut r, mut rx) = runner(dir.path());
    let job = command("c-5", CommandKind::Install, vec![step("long", "long", 600)]);
    assert_eq!(r.handle(&job), accepted());
    assert_eq!(next(&mut rx).await, started("c-5", JobKind::Install));
    // The step runs once it has reported.
    assert_eq!(
        next(&mut rx).await,
        progress("c-5", 10, "long", Some("waiting"))
    );

    // A cancel for another job leaves this one alone.
    assert_eq!(
        r.handle(&cancel("c-6", Some("c-other"))),
        Ack {
            accepted: true,
            reason: Some("no such job running".into())
        }
    );
    assert_eq!(r.running(), Some(CommandId::new("c-5").unwrap()));

    assert_eq!(r.handle(&cancel("c-7", Some("c-5"))), accepted());
    // The cancel has already reported and freed the runner when it is acked.
    assert!(!r.busy());
    assert_eq!(
        rx.try_recv().unwrap(),
        failed("c-5", JobKind::Install, "long", "cancelled by command c-7")
    );
    assert!(gone("60.8181").await, "the background grandchild is gone");
    assert!(gone("60.8182").await, "the step is gone");
    assert!(
        quiet(&mut rx).await,
        "nothing comes after the cancel's event"
    );

    // Nothing left to cancel.
    assert_eq!(
        r.handle(&cancel("c-8", None)),
        Ack {
            accepted: true,
            reason: Some("no such job running".into())
        }
    );
    assert!(quiet(&mut rx).await);

    // A cancel without a target stops whatever runs.
    let again = command("c-9", CommandKind::Install, vec![step("long", "long", 600)]);
    assert_eq!(r.handle(&again), accepted());
    assert_eq!(next(&mut rx).await, started("c-9", JobKind::Install));
    assert_eq!(r.handle(&cancel("c-10", None)), accepted());
    let events = until_done(&mut rx).await;
    assert_eq!(
        events.last().unwrap().error.as_deref(),
        Some("cancelled by command c-10")
    );
    assert!(gone("60.8181").await && gone("60.8182").await);

    // The runner takes a new job.
    let quick = command("c-11", CommandKind::Install, vec![step("q", "quick", 5)]);
    assert_eq!(r.handle(&quick), accepted());
    assert_eq!(
        until_done(&mut rx).await,
        vec![
            started("c-11", JobKind::Install),
            complete("c-11", JobKind::Install)
        ]
    );
    assert!(gone("60.8181").await && gone("60.8182").await);
}

#[tokio::test]
async fn bad_commands_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    script(
        dir.path(),
        "ok",
        &format!("touch {}\nsleep 60.9191", ran.display()),
    );
    std::fs::write(dir.path().join("plain"), "#!/bin/sh\ntrue\n").unwrap();
    std::fs::create_dir(dir.path().join("folder")).unwrap();
    let (mut r, mut rx) = runner(dir.path());
    let install = |id: &str, steps| command(id, CommandKind::Install, steps);

    // Every step is checked, not just the first.
    let cmd = install("c-a", vec![step("o", "ok", 5), step("w", "wipe", 5)]);
    assert_eq!(r.handle(&cmd), refused("unknown script 'wipe'"));
    let cmd = install("c-b", vec![step("p", "plain", 5)]);
    assert_eq!(r.handle(&cmd), refused("script 'plain' is not executable"));
    let cmd = install("c-c", vec![step("f", "folder", 5)]);
    assert_eq!(
        r.handle(&cmd),
        refused("script 'folder' is not a regular file")
    );

    let mut bad_arg = step("o", "ok", 5);
    bad_arg.args.insert("no-dashes".into(), "x".into());
    let ack = r.handle(&install("c-d", vec![bad_arg]));
    assert!(!ack.accepted);
    assert!(ack.reason.unwrap().contains("\"no-dashes\""));

    let mut twice = step("o", "ok", 5);
    twice.args.insert("disk".into(), "a".into());
    twice.args.insert("DISK".into(), "b".into());
    assert_eq!(
        r.handle(&install("c-e", vec![twice])),
        refused("step 'o': arguments 'DISK' and 'disk' both become MB_ARG_DISK")
    );

    let mut expired = install("c-f", vec![step("o", "ok", 5)]);
    expired.expires_at = Timestamp::from_unix_millis(0);
    assert_eq!(r.handle(&expired), refused("command expired"));

    let ack = r.handle(&install("c-g", vec![step("o", "../ok", 5)]));
    assert!(!ack.accepted && ack.reason.unwrap().contains("plain file name"));
    let ack = r.handle(&install("bad id!", vec![step("o", "ok", 5)]));
    assert!(!ack.accepted);
    let no_plan = Command {
        plan: None,
        ..install("c-h", vec![])
    };
    assert_eq!(
        r.handle(&no_plan),
        refused("a install command needs a plan")
    );
    assert_eq!(
        r.handle(&command("c-i", CommandKind::Reboot, vec![])),
        refused("reboot is not handled by the job runner")
    );

    // None of those produced an event, ran anything, or holds the runner.
    assert!(quiet(&mut rx).await);
    assert!(!ran.exists());
    assert!(!r.busy());

    assert_eq!(
        r.handle(&install("c-j", vec![step("o", "ok", 5)])),
        accepted()
    );
    assert_eq!(next(&mut rx).await, started("c-j", JobKind::Install));
    assert_eq!(
        r.handle(&install("c-k", vec![step("o", "ok", 5)])),
        refused("a job is already running: c-j")
    );
    let deprovision = command("c-l", CommandKind::Deprovision, vec![]);
    assert_eq!(
        r.handle(&deprovision),
        refused("a job is already running: c-j")
    );
    assert!(quiet(&mut rx).await, "the refused commands sent no event");
    assert_eq!(r.running(), Some(CommandId::new("c-j").unwrap()));

    assert_eq!(r.handle(&cancel("c-m", Some("c-j"))), accepted());
    assert_eq!(until_done(&mut rx).await.len(), 1);
    assert!(gone("60.9191").await);
}

#[tokio::test]
async fn progress_is_reported_at_most_once_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Fifty PROGRESS lines over about half a second, each its own write; then, a second
    // after the test's go-ahead, one more.
    script(
        dir.path(),
        "chatty",
        &format!(
            "i=1; while [ $i -le 50 ]; do echo \"PROGRESS $i line $i\"; sleep 0.01; i=$((i+1)); done\n\
             while [ ! -e {d}/go ]; do sleep 0.02; done\n\
             sleep 1.05\n\
             echo PROGRESS 90 nearly"
        ),
    );
    let (mut r, mut rx) = runner(dir.path());
    let cmd = command("c-p", CommandKind::Install, vec![step("c", "chatty", 30)]);
    let t0 = Instant::now();
    assert_eq!(r.handle(&cmd), accepted());
    assert_eq!(next(&mut rx).await, started("c-p", JobKind::Install));

    // The burst: a first value at once, then at most one a second, the newest winning,
    // until 50. Reports go out at least a second apart, all after `t0`, so however slow
    // the machine, there are at most 1 + (whole seconds from t0 to the last one); when
    // the burst takes under a second, as it does, that is 2.
    let mut burst = Vec::new();
    loop {
        let e = next(&mut rx).await;
        assert_eq!(e.status, JobStatus::Progress, "{e:?}");
        let pct = e.progress.unwrap();
        burst.push(e);
        if pct == 50 {
            break;
        }
    }
    let bound = 1 + t0.elapsed().as_secs() as usize;
    let percents: Vec<_> = burst.iter().map(|e| e.progress.unwrap()).collect();
    assert!(
        burst.len() <= bound,
        "{} reports in {:?}: {percents:?}",
        burst.len(),
        t0.elapsed()
    );
    assert!(percents.windows(2).all(|w| w[0] < w[1]), "{percents:?}");
    assert_eq!(
        burst.last().unwrap(),
        &progress("c-p", 50, "c", Some("line 50"))
    );

    // A value that comes over a second after the last report goes out, before complete.
    std::fs::write(dir.path().join("go"), "").unwrap();
    assert_eq!(
        until_done(&mut rx).await,
        vec![
            progress("c-p", 90, "c", Some("nearly")),
            complete("c-p", JobKind::Install)
        ]
    );
}

#[tokio::test]
async fn an_empty_plan_completes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, mut rx) = runner(dir.path());
    let cmd = command("c-10", CommandKind::Deprovision, vec![]);
    assert_eq!(r.handle(&cmd), accepted());
    assert_eq!(
        until_done(&mut rx).await,
        vec![
            started("c-10", JobKind::Deprovision),
            complete("c-10", JobKind::Deprovision)
        ]
    );
    assert!(!r.busy());
}
