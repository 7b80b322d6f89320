//! The job runner through its library API, with real child processes from a temp
//! steps dir: events in order, env vars, stderr tails, timeouts that kill whole process
//! groups, cancel, refusals, and the once-a-second progress limit.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use metalbus_agent::jobs::{JobEvent, JobRunner};
use metalbus_protocol::command::{Command, CommandKind, JobKind, Plan, Step};
use metalbus_protocol::report::JobStatus;
use metalbus_protocol::{NodeId, Timestamp};
use tokio::sync::mpsc;

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

fn command(id: &str, kind: CommandKind, steps: Vec<Step>) -> Command {
    let now = Timestamp::from(SystemTime::now()).unix_millis();
    Command {
        command_id: id.into(),
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

fn runner(dir: &Path) -> (JobRunner, mpsc::UnboundedReceiver<JobEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        JobRunner::new(NodeId::new("node-7").unwrap(), dir.to_path_buf(), tx),
        rx,
    )
}

/// Every event until the job's last one (complete or failed), within 30 s.
async fn until_done(rx: &mut mpsc::UnboundedReceiver<JobEvent>) -> Vec<JobEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = rx.recv().await {
            let last = matches!(e.status, JobStatus::Complete | JobStatus::Failed);
            events.push(e);
            if last {
                return;
            }
        }
    })
    .await
    .expect("the job did not finish in 30 s");
    events
}

fn statuses(events: &[JobEvent]) -> Vec<JobStatus> {
    events.iter().map(|e| e.status).collect()
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

#[tokio::test]
async fn two_steps_report_mapped_progress_and_get_their_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.txt");
    script(
        dir.path(),
        "first",
        &format!(
            "echo \"$MB_NODE_ID $MB_JOB $MB_STEP $MB_COMMAND_ID $MB_ARG_DISK\" > {}\necho PROGRESS 50 halfway\necho not a progress line",
            out.display()
        ),
    );
    script(
        dir.path(),
        "second",
        "sleep 1.1\necho PROGRESS 100 done second",
    );
    let mut first = step("one", "first", 10);
    first.args.insert("disk".into(), "/dev/sdz".into());
    let (mut r, mut rx) = runner(dir.path());
    let ack = r.handle(&command(
        "c-1",
        CommandKind::Install,
        vec![first, step("two", "second", 10)],
    ));
    assert!(ack.accepted, "{ack:?}");
    let events = until_done(&mut rx).await;
    assert_eq!(events[0].status, JobStatus::Started);
    assert_eq!(events.last().unwrap().status, JobStatus::Complete);
    assert_eq!(events.last().unwrap().progress, Some(100));
    let progress: Vec<(u8, Option<&str>, Option<&str>)> = events
        .iter()
        .filter(|e| e.status == JobStatus::Progress)
        .map(|e| (e.progress.unwrap(), e.step.as_deref(), e.message.as_deref()))
        .collect();
    assert_eq!(
        progress,
        vec![
            (25, Some("one"), Some("halfway")),
            (100, Some("two"), Some("done second"))
        ]
    );
    assert!(events
        .iter()
        .all(|e| e.command_id == "c-1" && e.job == JobKind::Install));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "node-7 install one c-1 /dev/sdz"
    );
    assert!(!r.busy());
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
    assert!(
        r.handle(&command(
            "c-2",
            CommandKind::Deprovision,
            vec![step("wipe", "bad", 10), step("later", "after", 10)]
        ))
        .accepted
    );
    let events = until_done(&mut rx).await;
    let last = events.last().unwrap();
    assert_eq!(last.status, JobStatus::Failed);
    assert_eq!(last.job, JobKind::Deprovision);
    assert_eq!(last.step.as_deref(), Some("wipe"));
    assert_eq!(
        last.error.as_deref(),
        Some("step 'wipe' exited with status 3: first line\ndisk /dev/sdz is gone")
    );
    assert!(!never.exists(), "the step after a failure must not run");
}

#[tokio::test]
async fn only_the_last_4_kib_of_stderr_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "noisy",
        "i=0; while [ $i -lt 500 ]; do echo \"noise line $i of the step\" >&2; i=$((i+1)); done; echo 'the real reason' >&2; exit 1",
    );
    let (mut r, mut rx) = runner(dir.path());
    assert!(
        r.handle(&command(
            "c-3",
            CommandKind::Install,
            vec![step("n", "noisy", 10)]
        ))
        .accepted
    );
    let events = until_done(&mut rx).await;
    let error = events.last().unwrap().error.clone().unwrap();
    assert!(error.ends_with("the real reason"), "{error}");
    assert!(error.len() <= 4096 + 100, "{} bytes", error.len());
    assert!(!error.contains("noise line 0 "), "the start is cut");
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "hang",
        "sleep 300.7171 &\necho PROGRESS 5 hanging\nsleep 300.7172",
    );
    let (mut r, mut rx) = runner(dir.path());
    assert!(
        r.handle(&command(
            "c-4",
            CommandKind::Install,
            vec![step("stuck", "hang", 1)]
        ))
        .accepted
    );
    let events = until_done(&mut rx).await;
    let last = events.last().unwrap();
    assert_eq!(last.status, JobStatus::Failed);
    assert_eq!(
        last.error.as_deref(),
        Some("step 'stuck' timed out after 1s")
    );
    assert!(
        !process_with("300.7171"),
        "the background grandchild is gone"
    );
    assert!(!process_with("300.7172"), "the step is gone");
}

#[tokio::test]
async fn cancel_stops_the_job_and_frees_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "long", "sleep 300.8181");
    script(dir.path(), "quick", "true");
    let (mut r, mut rx) = runner(dir.path());
    assert!(
        r.handle(&command(
            "c-5",
            CommandKind::Install,
            vec![step("long", "long", 600)]
        ))
        .accepted
    );
    assert_eq!(rx.recv().await.unwrap().status, JobStatus::Started);
    assert_eq!(r.running().as_deref(), Some("c-5"));
    let mut cancel = command("c-6", CommandKind::Cancel, vec![]);
    cancel.target = Some("c-5".into());
    let ack = r.handle(&cancel);
    assert!(ack.accepted && ack.reason.is_none(), "{ack:?}");
    let events = until_done(&mut rx).await;
    assert_eq!(statuses(&events), vec![JobStatus::Failed]);
    assert_eq!(events[0].error.as_deref(), Some("cancelled by command c-6"));
    assert!(!process_with("300.8181"));
    assert!(!r.busy());
    // Nothing left to cancel; a new job starts.
    let nothing = r.handle(&command("c-7", CommandKind::Cancel, vec![]));
    assert_eq!(nothing.reason.as_deref(), Some("no such job running"));
    assert!(
        r.handle(&command(
            "c-8",
            CommandKind::Install,
            vec![step("q", "quick", 5)]
        ))
        .accepted
    );
    assert_eq!(
        statuses(&until_done(&mut rx).await),
        vec![JobStatus::Started, JobStatus::Complete]
    );
}

#[tokio::test]
async fn bad_commands_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "ok", "sleep 2");
    std::fs::write(dir.path().join("plain"), "#!/bin/sh\ntrue\n").unwrap();
    let (mut r, mut rx) = runner(dir.path());

    let ack = r.handle(&command(
        "c-a",
        CommandKind::Install,
        vec![step("w", "wipe", 5)],
    ));
    assert_eq!(ack.reason.as_deref(), Some("unknown script 'wipe'"));
    let ack = r.handle(&command(
        "c-b",
        CommandKind::Install,
        vec![step("p", "plain", 5)],
    ));
    assert_eq!(
        ack.reason.as_deref(),
        Some("script 'plain' is not executable")
    );
    let mut bad_arg = step("o", "ok", 5);
    bad_arg.args.insert("no-dashes".into(), "x".into());
    let ack = r.handle(&command("c-c", CommandKind::Install, vec![bad_arg]));
    assert!(!ack.accepted && ack.reason.unwrap().contains("no-dashes"));
    let mut expired = command("c-d", CommandKind::Install, vec![step("o", "ok", 5)]);
    expired.expires_at = Timestamp::from_unix_millis(0);
    assert_eq!(
        r.handle(&expired).reason.as_deref(),
        Some("command expired")
    );
    let ack = r.handle(&command(
        "c-e",
        CommandKind::Install,
        vec![step("o", "../ok", 5)],
    ));
    assert!(!ack.accepted);

    // None of those produced an event.
    assert!(rx.try_recv().is_err());

    assert!(
        r.handle(&command(
            "c-f",
            CommandKind::Install,
            vec![step("o", "ok", 5)]
        ))
        .accepted
    );
    let busy = r.handle(&command(
        "c-g",
        CommandKind::Install,
        vec![step("o", "ok", 5)],
    ));
    assert_eq!(
        busy.reason.as_deref(),
        Some("a job is already running: c-f")
    );
    let mut cancel = command("c-h", CommandKind::Cancel, vec![]);
    cancel.target = Some("c-f".into());
    assert!(r.handle(&cancel).accepted);
    until_done(&mut rx).await;
}

#[tokio::test]
async fn progress_is_reported_at_most_once_a_second() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "chatty",
        "i=1; while [ $i -le 50 ]; do echo \"PROGRESS $i step $i\"; i=$((i+1)); done; sleep 3; echo PROGRESS 90 nearly",
    );
    let (mut r, mut rx) = runner(dir.path());
    assert!(
        r.handle(&command(
            "c-9",
            CommandKind::Install,
            vec![step("c", "chatty", 30)]
        ))
        .accepted
    );
    let start = std::time::Instant::now();
    let events = until_done(&mut rx).await;
    let took = start.elapsed();
    let progress: Vec<&JobEvent> = events
        .iter()
        .filter(|e| e.status == JobStatus::Progress)
        .collect();
    // 50 lines at once (one report, then the newest a second later), then one more
    // after 3 s: never more than one report per started second of the job, and a value
    // that arrives after a quiet second goes out at once.
    let bound = took.as_secs() as usize + 1;
    assert!(
        !progress.is_empty() && progress.len() <= bound,
        "{} progress reports in {took:?}",
        progress.len()
    );
    assert_eq!(
        progress.last().unwrap().progress,
        Some(90),
        "the newest value is not lost"
    );
    assert_eq!(events.last().unwrap().status, JobStatus::Complete);
}

#[tokio::test]
async fn an_empty_plan_completes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut r, mut rx) = runner(dir.path());
    assert!(
        r.handle(&command("c-10", CommandKind::Deprovision, vec![]))
            .accepted
    );
    let events = until_done(&mut rx).await;
    assert_eq!(
        statuses(&events),
        vec![JobStatus::Started, JobStatus::Complete]
    );
}
