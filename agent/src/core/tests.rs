//! The agent's core with an in-memory (or temp-dir) store, a fake clock, a recording
//! publisher and a fake job runner: no broker, no process, no system clock.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metalbus_link::FakeClock;
use metalbus_protocol::command::{
    Command, CommandId, CommandKind, JobKind, Plan, PowerAction, Step, Work,
};
use metalbus_protocol::report::{JobStatus, Report, ReportBody};
use metalbus_protocol::topic::{NodeTopic, Topics};
use metalbus_protocol::NodeId;

use super::*;
use crate::jobs::Ack;
use metalbus_protocol::proof::NodeKey;

const T0: i64 = 1_800_000_000_000;

/// What the fake job runner saw, and what it answers.
#[derive(Default)]
struct JobsLog {
    handled: Vec<(CommandKind, CommandId)>,
    /// The job it pretends to run; install and deprovision are refused meanwhile.
    busy: Option<CommandId>,
}

struct FakeJobs(Arc<Mutex<JobsLog>>);

impl Jobs for FakeJobs {
    fn handle(&mut self, cmd: &Command) -> Ack {
        let mut log = self.0.lock().unwrap();
        log.handled.push((cmd.kind, cmd.command_id.clone()));
        match (cmd.kind, &log.busy) {
            (CommandKind::Cancel, _) => Ack::yes(),
            (_, Some(running)) => Ack::no(format!("a job is already running: {running}")),
            _ => {
                log.busy = Some(cmd.command_id.clone());
                Ack::yes()
            }
        }
    }

    fn running(&self) -> Option<CommandId> {
        self.0.lock().unwrap().busy.clone()
    }
}

/// Records publishes; refuses them while `full`.
#[derive(Default)]
struct Out {
    sent: Vec<(String, Qos, bool, Vec<u8>)>,
    full: bool,
}

impl Publisher for Out {
    fn publish(&mut self, topic: String, qos: Qos, retain: bool, payload: Vec<u8>) -> bool {
        if self.full {
            return false;
        }
        self.sent.push((topic, qos, retain, payload));
        true
    }
}

impl Out {
    fn take(&mut self) -> Vec<(String, Qos, bool, Vec<u8>)> {
        std::mem::take(&mut self.sent)
    }
}

struct Rig {
    core: Core,
    out: Out,
    jobs: Arc<Mutex<JobsLog>>,
    clock: Arc<FakeClock>,
    /// Actions the core returned when it was made.
    started_with: Vec<Action>,
}

fn settings() -> Settings {
    Settings {
        reboot_command: vec!["reboot-host".into(), "--now".into()],
        poweroff_command: vec!["poweroff-host".into()],
        resend_after: Duration::from_secs(5),
        metrics_interval: Duration::from_secs(15),
    }
}

fn rig_over(store: AgentStore, settings: Settings, boot_id: Option<&str>) -> Rig {
    let jobs = Arc::new(Mutex::new(JobsLog::default()));
    let clock = Arc::new(FakeClock::at(T0));
    let (core, started_with) = Core::new(Parts {
        node_id: NodeId::new("n1").unwrap(),
        topics: Topics::default(),
        store,
        jobs: Box::new(FakeJobs(jobs.clone())),
        clock: clock.clone(),
        settings,
        host: HostFacts {
            hostname: "host-1".into(),
            boot_id: boot_id.map(String::from),
        },
        key: key(),
        stats: Arc::default(),
    })
    .unwrap();
    Rig {
        core,
        out: Out::default(),
        jobs,
        clock,
        started_with,
    }
}

/// The node key the controller and this rig share.
fn key() -> NodeKey {
    NodeKey::from_bytes([5; 32])
}

/// `payload` as the controller would send it on node n1's `kind` topic: sealed with
/// the node key (sent raw when it is not a JSON object, which cannot be sealed).
fn from_controller(kind: NodeTopic, payload: &[u8]) -> Vec<u8> {
    let topic = Topics::default().node(&NodeId::new("n1").unwrap(), kind);
    proof::seal(&key(), &topic, payload).unwrap_or_else(|_| payload.to_vec())
}

fn rig() -> Rig {
    rig_over(AgentStore::in_memory().unwrap(), settings(), Some("boot-1"))
}

fn cid(s: &str) -> CommandId {
    CommandId::new(s).unwrap()
}

fn plan(reboot_after: bool) -> Plan {
    Plan {
        name: "p".into(),
        steps: vec![Step {
            name: "s".into(),
            script: "demo-step".into(),
            args: Default::default(),
            timeout_s: 60,
        }],
        reboot_after,
    }
}

impl Rig {
    fn command(&self, kind: CommandKind, id: &str) -> Command {
        let now = self.clock.now();
        Command {
            command_id: cid(id),
            kind,
            issued_at: now,
            expires_at: now.plus(Duration::from_secs(60)),
            plan: kind.job().map(|_| plan(false)),
            target: None,
        }
    }

    /// A command payload, sealed by the controller.
    fn command_bytes(&mut self, payload: &[u8]) -> Vec<Action> {
        self.send(Input::Command(from_controller(
            NodeTopic::Commands,
            payload,
        )))
    }

    /// A receipt payload, sealed by the controller.
    fn receipt_bytes(&mut self, payload: &[u8]) -> Vec<Action> {
        self.send(Input::Receipt(from_controller(
            NodeTopic::Receipts,
            payload,
        )))
    }

    fn send(&mut self, input: Input) -> Vec<Action> {
        self.core.handle(input, &mut self.out)
    }

    fn connect(&mut self) -> Vec<Action> {
        self.send(Input::Connected { conn: 1 })
    }

    fn run(&mut self, cmd: &Command) -> Vec<Action> {
        self.command_bytes(&serde_json::to_vec(cmd).unwrap())
    }

    fn receipt(&mut self, seq: u64) -> Vec<Action> {
        let session = self.core.session().to_string();
        self.receipt_bytes(
            &serde_json::to_vec(&metalbus_protocol::controller::Receipt {
                session,
                seq,
                protocol: None,
            })
            .unwrap(),
        )
    }

    fn job(&mut self, id: &str, kind: JobKind, status: JobStatus) -> Vec<Action> {
        self.send(Input::Job(JobEvent {
            command_id: cid(id),
            job: kind,
            status,
            progress: None,
            step: None,
            message: None,
            error: None,
        }))
    }

    /// The reports published since the last call.
    fn reports(&mut self) -> Vec<Report> {
        let topic = self.core.topic(NodeTopic::Reports);
        self.out
            .take()
            .into_iter()
            .filter(|(t, ..)| *t == topic)
            .map(|(_, qos, retain, body)| {
                assert_eq!((qos, retain), (Qos::AtLeastOnce, false));
                serde_json::from_slice(&body).unwrap()
            })
            .collect()
    }

    /// The one report published since the last call.
    fn report(&mut self) -> Report {
        let mut r = self.reports();
        assert_eq!(r.len(), 1, "{r:?}");
        r.remove(0)
    }
}

fn ack_of(r: &Report) -> (bool, Option<String>) {
    match &r.body {
        ReportBody::Ack {
            accepted, reason, ..
        } => (*accepted, reason.clone()),
        other => panic!("not an ack: {other:?}"),
    }
}

fn job_of(r: &Report) -> (Work, JobStatus, Option<String>) {
    match &r.body {
        ReportBody::Job {
            job, status, error, ..
        } => (*job, *status, error.clone()),
        other => panic!("not a job report: {other:?}"),
    }
}

/// The state a command arrives in.
#[derive(Debug, Clone, Copy)]
enum Before {
    Idle,
    JobRunning,
    PowerPending,
    PowerDisabled,
}

fn prepared(before: Before) -> Rig {
    let mut r = match before {
        Before::PowerDisabled => rig_over(
            AgentStore::in_memory().unwrap(),
            Settings {
                reboot_command: vec![],
                poweroff_command: vec![],
                ..settings()
            },
            Some("boot-1"),
        ),
        _ => rig(),
    };
    r.connect();
    match before {
        Before::JobRunning => r.jobs.lock().unwrap().busy = Some(cid("c-job")),
        Before::PowerPending => {
            let cmd = r.command(CommandKind::Reboot, "c-pending");
            r.run(&cmd);
        }
        Before::Idle | Before::PowerDisabled => {}
    }
    r.out.take();
    r
}

#[test]
fn every_command_kind_in_every_state_gets_the_right_answer() {
    use Before::*;
    use CommandKind::*;
    // (state, kind) → accepted, the reason's start, whether the job runner was asked, and
    // whether an inventory read was asked for.
    const BUSY: &str = "a job is already running";
    const WAKE: &str = "wake is sent by the controller";
    const UNDER_WAY: &str = "a reboot (c-pending) is already under way";
    let table: &[(Before, CommandKind, bool, &str, bool, bool)] = &[
        (Idle, Install, true, "", true, false),
        (Idle, Deprovision, true, "", true, false),
        (Idle, Cancel, true, "", true, false),
        (Idle, Rebirth, true, "", false, true),
        (Idle, RefreshInventory, true, "", false, true),
        (Idle, Reboot, true, "", false, false),
        (Idle, Poweroff, true, "", false, false),
        (Idle, Wake, false, WAKE, false, false),
        (JobRunning, Install, false, BUSY, true, false),
        (JobRunning, Deprovision, false, BUSY, true, false),
        (JobRunning, Cancel, true, "", true, false),
        (JobRunning, Rebirth, true, "", false, true),
        (JobRunning, RefreshInventory, true, "", false, true),
        (JobRunning, Reboot, true, "", false, false),
        (JobRunning, Poweroff, true, "", false, false),
        (JobRunning, Wake, false, WAKE, false, false),
        (PowerPending, Install, true, "", true, false),
        (PowerPending, Deprovision, true, "", true, false),
        (PowerPending, Cancel, true, "", true, false),
        (PowerPending, Rebirth, true, "", false, true),
        (PowerPending, RefreshInventory, true, "", false, true),
        (PowerPending, Reboot, false, UNDER_WAY, false, false),
        (PowerPending, Poweroff, false, UNDER_WAY, false, false),
        (PowerPending, Wake, false, WAKE, false, false),
        (PowerDisabled, Install, true, "", true, false),
        (PowerDisabled, Deprovision, true, "", true, false),
        (PowerDisabled, Cancel, true, "", true, false),
        (PowerDisabled, Rebirth, true, "", false, true),
        (PowerDisabled, RefreshInventory, true, "", false, true),
        (
            PowerDisabled,
            Reboot,
            false,
            "reboot is disabled",
            false,
            false,
        ),
        (
            PowerDisabled,
            Poweroff,
            false,
            "poweroff is disabled",
            false,
            false,
        ),
        (PowerDisabled, Wake, false, WAKE, false, false),
    ];
    assert_eq!(
        table.len(),
        4 * CommandKind::ALL.len(),
        "every kind in every state"
    );
    for &(before, kind, accepted, reason, asks_runner, reads_inventory) in table {
        let mut r = prepared(before);
        let handled_before = r.jobs.lock().unwrap().handled.len();
        let cmd = r.command(kind, "c-new");
        let actions = r.run(&cmd);
        let case = format!("{kind} when {before:?}");
        let published = r.out.sent.clone();
        let ack = r
            .reports()
            .into_iter()
            .find(|rep| *rep.command_id() == cid("c-new"))
            .unwrap_or_else(|| panic!("{case}: no ack"));
        let (ok, why) = ack_of(&ack);
        assert_eq!(ok, accepted, "{case}: {why:?}");
        assert!(
            why.as_deref().unwrap_or("").starts_with(reason),
            "{case}: reason {why:?}"
        );
        let asked = r.jobs.lock().unwrap().handled.len() > handled_before;
        assert_eq!(asked, asks_runner, "{case}: job runner asked");
        assert_eq!(
            actions.contains(&Action::ReadInventory),
            reads_inventory,
            "{case}: {actions:?}"
        );
        // Nothing runs at once: a power action waits for its ack's receipt.
        assert!(
            !actions.iter().any(|a| matches!(a, Action::RunPower { .. })),
            "{case}: {actions:?}"
        );
        // A rebirth publishes the birth again, retained.
        let births = published
            .iter()
            .filter(|(t, ..)| *t == r.core.topic(NodeTopic::Status))
            .count();
        assert_eq!(births, usize::from(kind == Rebirth), "{case}");
    }
}

#[test]
fn a_repeated_command_is_acked_again_with_the_same_answer_and_never_run_twice() {
    let mut r = prepared(Before::Idle);
    let cmd = r.command(CommandKind::Install, "c-1");
    r.run(&cmd);
    assert_eq!(ack_of(&r.report()), (true, None));
    r.run(&cmd);
    assert_eq!(ack_of(&r.report()), (true, None), "acked again");
    assert_eq!(r.jobs.lock().unwrap().handled.len(), 1, "run once");
    // A refused one is refused again, with its reason.
    let wake = r.command(CommandKind::Wake, "c-2");
    r.run(&wake);
    let first = ack_of(&r.report());
    r.run(&wake);
    assert_eq!(ack_of(&r.report()), first);
}

#[test]
fn a_malformed_command_is_refused_when_it_has_an_id_and_ignored_when_not() {
    let mut r = prepared(Before::Idle);
    r.command_bytes(br#"{"command_id":"c-9","kind":"dance"}"#);
    let rep = r.report();
    assert_eq!(*rep.command_id(), cid("c-9"));
    let (ok, why) = ack_of(&rep);
    assert!(!ok);
    assert!(why.unwrap().starts_with("malformed command:"));
    r.command_bytes(b"not json");
    r.command_bytes(br#"{"command_id":7}"#);
    assert!(r.reports().is_empty());
}

#[test]
fn an_expired_power_command_is_refused() {
    let mut r = prepared(Before::Idle);
    let cmd = r.command(CommandKind::Poweroff, "c-old");
    r.clock.advance(Duration::from_secs(61));
    r.run(&cmd);
    assert_eq!(ack_of(&r.report()), (false, Some("command expired".into())));
    assert!(r.receipt(1).is_empty(), "nothing to run");
}

#[test]
fn a_power_action_runs_once_and_only_after_its_ack_is_receipted() {
    let mut r = prepared(Before::Idle);
    let cmd = r.command(CommandKind::Reboot, "c-r");
    assert!(r.run(&cmd).is_empty());
    let ack = r.report();
    assert_eq!(ack_of(&ack), (true, None));
    // Not before the receipt, however often the outbox is looked at.
    assert!(r.send(Input::Tick).is_empty());
    assert!(r.receipt(ack.seq - 1).is_empty());
    let run = r.receipt(ack.seq);
    assert_eq!(
        run,
        [Action::RunPower {
            command_id: cid("c-r"),
            action: PowerAction::Reboot,
            argv: vec!["reboot-host".into(), "--now".into()],
        }]
    );
    // Once: later receipts and ticks start nothing.
    assert!(r.receipt(ack.seq).is_empty());
    assert!(r.send(Input::Tick).is_empty());
    // The same command again is acked again, not run again.
    r.run(&cmd);
    assert_eq!(ack_of(&r.report()), (true, None));
    assert!(r.send(Input::Tick).is_empty());
    // Its end is a job report under the command's id; then a new one may run.
    r.send(Input::PowerDone(PowerDone {
        command_id: cid("c-r"),
        action: PowerAction::Reboot,
        result: Err("exited with status 3".into()),
    }));
    let end = r.report();
    assert_eq!(*end.command_id(), cid("c-r"));
    assert_eq!(
        job_of(&end),
        (
            Work::Power(PowerAction::Reboot),
            JobStatus::Failed,
            Some("exited with status 3".into())
        )
    );
    let next = r.command(CommandKind::Poweroff, "c-p");
    r.run(&next);
    let ack = r.report();
    assert_eq!(ack_of(&ack), (true, None));
    assert_eq!(
        r.receipt(ack.seq),
        [Action::RunPower {
            command_id: cid("c-p"),
            action: PowerAction::Poweroff,
            argv: vec!["poweroff-host".into()],
        }]
    );
}

/// A core over the store in `dir`, as a restarted agent builds it.
fn restarted(dir: &std::path::Path, boot_id: Option<&str>) -> Rig {
    rig_over(AgentStore::open(dir).unwrap(), settings(), boot_id)
}

/// Runs a reboot up to "started" in `dir`, then drops the core (the agent dies).
fn start_a_reboot(dir: &std::path::Path) {
    let mut r = restarted(dir, Some("boot-1"));
    r.connect();
    let cmd = r.command(CommandKind::Reboot, "c-r");
    r.run(&cmd);
    let ack = r.reports().pop().unwrap();
    assert!(matches!(r.receipt(ack.seq)[..], [Action::RunPower { .. }]));
}

#[test]
fn after_a_restart_a_power_action_is_never_run_again_and_its_end_is_told() {
    let cases = [
        (Some("boot-2"), JobStatus::Complete, None),
        (Some("boot-1"), JobStatus::Failed, Some("in the same boot")),
        (None, JobStatus::Failed, Some("cannot read the boot id")),
    ];
    for (boot, status, error) in cases {
        let dir = tempfile::tempdir().unwrap();
        start_a_reboot(dir.path());
        let mut r = restarted(dir.path(), boot);
        assert!(r.started_with.is_empty());
        r.connect();
        let end = r.reports().pop().unwrap();
        let (work, got, why) = job_of(&end);
        assert_eq!(
            (work, got),
            (Work::Power(PowerAction::Reboot), status),
            "{boot:?}"
        );
        match error {
            None => assert_eq!(why, None),
            Some(e) => assert!(why.unwrap().contains(e), "{boot:?}"),
        }
        // Receipting everything starts nothing: it ran (or may have) already.
        assert!(r.receipt(end.seq).is_empty());
        assert!(r.send(Input::Tick).is_empty());
    }
}

#[test]
fn a_power_action_acked_but_not_receipted_before_a_restart_still_waits_then_runs() {
    let dir = tempfile::tempdir().unwrap();
    let ack_seq = {
        let mut r = restarted(dir.path(), Some("boot-1"));
        r.connect();
        let cmd = r.command(CommandKind::Poweroff, "c-p");
        r.run(&cmd);
        r.reports().pop().unwrap().seq
    };
    let mut r = restarted(dir.path(), Some("boot-1"));
    r.connect();
    assert!(r.send(Input::Tick).is_empty());
    assert!(matches!(
        &r.receipt(ack_seq)[..],
        [Action::RunPower {
            action: PowerAction::Poweroff,
            ..
        }]
    ));
}

#[test]
fn reboot_after_reboots_once_the_complete_is_receipted_under_the_install_id() {
    let mut r = prepared(Before::Idle);
    let mut cmd = r.command(CommandKind::Install, "c-i");
    cmd.plan = Some(plan(true));
    r.run(&cmd);
    let ack = r.report();
    assert_eq!(ack_of(&ack), (true, None));
    assert!(
        r.receipt(ack.seq).is_empty(),
        "an install's ack starts nothing"
    );
    r.job("c-i", JobKind::Install, JobStatus::Started);
    r.job("c-i", JobKind::Install, JobStatus::Complete);
    let reports = r.reports();
    let complete = reports.last().unwrap();
    assert_eq!(job_of(complete).1, JobStatus::Complete);
    assert!(r.send(Input::Tick).is_empty(), "not before the receipt");
    assert_eq!(
        r.receipt(complete.seq),
        [Action::RunPower {
            command_id: cid("c-i"),
            action: PowerAction::Reboot,
            argv: vec!["reboot-host".into(), "--now".into()],
        }]
    );
    assert!(r.receipt(complete.seq).is_empty(), "once");
    r.send(Input::PowerDone(PowerDone {
        command_id: cid("c-i"),
        action: PowerAction::Reboot,
        result: Ok(()),
    }));
    let end = r.report();
    assert_eq!(*end.command_id(), cid("c-i"));
    assert_eq!(
        job_of(&end),
        (Work::Power(PowerAction::Reboot), JobStatus::Complete, None)
    );
}

#[test]
fn reboot_after_does_nothing_when_the_install_fails_and_is_refused_without_a_reboot_command() {
    let mut r = prepared(Before::Idle);
    let mut cmd = r.command(CommandKind::Install, "c-i");
    cmd.plan = Some(plan(true));
    r.run(&cmd);
    r.job("c-i", JobKind::Install, JobStatus::Started);
    r.job("c-i", JobKind::Install, JobStatus::Failed);
    let last = r.reports().pop().unwrap();
    assert!(
        r.receipt(last.seq).is_empty(),
        "a failed install reboots nothing"
    );

    let mut r = prepared(Before::PowerDisabled);
    let mut cmd = r.command(CommandKind::Install, "c-i");
    cmd.plan = Some(plan(true));
    r.run(&cmd);
    let (ok, why) = ack_of(&r.report());
    assert!(!ok);
    assert!(why.unwrap().contains("reboot_command = []"));
    assert!(r.jobs.lock().unwrap().handled.is_empty(), "not started");
}

#[test]
fn reboot_after_does_not_reboot_twice_when_a_reboot_is_already_under_way() {
    let mut r = prepared(Before::PowerPending);
    let mut cmd = r.command(CommandKind::Install, "c-i");
    cmd.plan = Some(plan(true));
    r.run(&cmd);
    r.job("c-i", JobKind::Install, JobStatus::Complete);
    let all = r.reports();
    let upto = all.last().unwrap().seq;
    // Only the reboot command's action runs.
    assert!(matches!(
        &r.receipt(upto)[..],
        [Action::RunPower { command_id, .. }] if *command_id == cid("c-pending")
    ));
}

#[test]
fn a_job_that_ran_when_the_agent_died_is_reported_failed_and_its_leftovers_killed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut r = restarted(dir.path(), Some("boot-1"));
        r.connect();
        r.job("c-i", JobKind::Install, JobStatus::Started);
    }
    let mut r = restarted(dir.path(), Some("boot-1"));
    assert_eq!(r.started_with, [Action::KillLeftovers(cid("c-i"))]);
    r.connect();
    let reports = r.reports();
    let last = reports.last().unwrap();
    assert_eq!(*last.command_id(), cid("c-i"));
    assert_eq!(
        job_of(last),
        (
            Work::Job(JobKind::Install),
            JobStatus::Failed,
            Some("agent restarted during job".into())
        )
    );
    // Reported once: a third start finds nothing.
    drop(r);
    assert!(restarted(dir.path(), Some("boot-1"))
        .started_with
        .is_empty());
}

#[test]
fn reports_wait_while_disconnected_then_follow_the_birth_in_order() {
    let mut r = rig();
    r.job("c-1", JobKind::Install, JobStatus::Started);
    r.job("c-1", JobKind::Install, JobStatus::Complete);
    assert!(r.out.sent.is_empty(), "not connected");
    // Counted while they wait, not only once connected.
    assert_eq!(r.core.stats().pending.load(Ordering::Relaxed), 2);
    assert_eq!(r.connect(), [Action::ReadInventory]);
    let sent = r.out.take();
    let status = r.core.topic(NodeTopic::Status);
    assert_eq!(sent[0].0, status, "birth first");
    assert!(sent[0].2, "retained");
    let birth: serde_json::Value = serde_json::from_slice(&sent[0].3).unwrap();
    assert_eq!(
        (
            birth["online"].as_bool(),
            birth["conn"].as_u64(),
            birth["hostname"].as_str()
        ),
        (Some(true), Some(1), Some("host-1"))
    );
    let seqs: Vec<u64> = sent[1..]
        .iter()
        .map(|(_, _, _, b)| serde_json::from_slice::<Report>(b).unwrap().seq)
        .collect();
    assert_eq!(seqs, [1, 2]);
    r.send(Input::Disconnected);
    r.job("c-2", JobKind::Install, JobStatus::Started);
    assert!(r.out.sent.is_empty());
}

#[test]
fn unreceipted_reports_go_again_after_resend_after_and_a_full_queue_waits() {
    let mut r = prepared(Before::Idle);
    r.job("c-1", JobKind::Install, JobStatus::Started);
    assert_eq!(r.report().seq, 1);
    r.send(Input::Tick);
    assert!(r.reports().is_empty(), "sent already, not yet due again");
    r.clock.advance(Duration::from_secs(5));
    r.send(Input::Tick);
    assert_eq!(r.report().seq, 1, "resent after resend_after");
    assert_eq!(r.core.stats().resent.load(Ordering::Relaxed), 1);
    r.receipt(1);
    r.clock.advance(Duration::from_secs(60));
    r.send(Input::Tick);
    assert!(r.reports().is_empty(), "receipted: gone");
    // The request queue is full: the report waits for the next tick.
    r.out.full = true;
    r.job("c-1", JobKind::Install, JobStatus::Complete);
    r.out.full = false;
    assert!(r.reports().is_empty());
    r.send(Input::Tick);
    assert_eq!(r.report().seq, 2);
}

#[test]
fn an_inventory_is_published_when_it_changes_and_again_on_each_connection() {
    let mut r = prepared(Before::Idle);
    let topic = r.core.topic(NodeTopic::Inventory);
    let inv = |threads| {
        let mut i = metalbus_protocol::inventory::Inventory::default();
        i.cpu.threads = Some(threads);
        Box::new(i)
    };
    let count = |r: &mut Rig| r.out.take().iter().filter(|(t, ..)| *t == topic).count();
    r.send(Input::Inventory(inv(4)));
    assert_eq!(count(&mut r), 1);
    r.send(Input::Inventory(inv(4)));
    assert_eq!(count(&mut r), 0, "unchanged");
    r.send(Input::Inventory(inv(8)));
    assert_eq!(count(&mut r), 1, "changed");
    r.connect();
    r.out.take();
    r.send(Input::Inventory(inv(8)));
    assert_eq!(count(&mut r), 1, "a new connection publishes it again");
    // A refresh forgets it too.
    let cmd = r.command(CommandKind::RefreshInventory, "c-f");
    r.run(&cmd);
    r.out.take();
    r.send(Input::Inventory(inv(8)));
    assert_eq!(count(&mut r), 1);
}

#[test]
fn the_will_and_the_clean_stop_carry_the_connection_and_session() {
    let r = rig();
    for (status, reason) in [(r.core.will(7), "lost"), (r.core.stopping(7), "shutdown")] {
        let (topic, body) = status.unwrap();
        assert_eq!(topic, r.core.topic(NodeTopic::Status));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["online"], false);
        assert_eq!(v["reason"], reason);
        assert_eq!(v["conn"], 7);
        assert_eq!(v["session"], r.core.session());
    }
}

/// A command id as it may come off the wire: unchecked.
fn wire_id(raw: &str) -> CommandId {
    serde_json::from_value(serde_json::Value::from(raw)).unwrap()
}

#[test]
fn commands_with_hostile_ids_are_dropped_unacked_unremembered_and_never_run() {
    let mut r = prepared(Before::Idle);
    let huge = "x".repeat(300 * 1024);
    for raw in [
        huge.as_str(),
        "c-\u{fc}",
        "c/../1",
        "",
        "c 1",
        "c-\u{1F600}",
    ] {
        let shown: String = raw.chars().take(20).collect();
        for kind in [
            CommandKind::Install,
            CommandKind::Reboot,
            CommandKind::Rebirth,
        ] {
            let mut cmd = r.command(kind, "c-ok");
            cmd.command_id = wire_id(raw);
            assert!(r.run(&cmd).is_empty(), "{kind} with {shown:?}");
            assert!(r.reports().is_empty(), "no ack for {shown:?}");
            assert_eq!(r.core.store.seen(&cmd.command_id).unwrap(), None);
        }
        // Malformed too: no id worth an ack.
        let junk = serde_json::json!({"command_id": raw, "kind": "dance"});
        r.command_bytes(&serde_json::to_vec(&junk).unwrap());
        assert!(r.reports().is_empty(), "no ack for malformed {shown:?}");
    }
    assert!(
        r.jobs.lock().unwrap().handled.is_empty(),
        "nothing reached the runner"
    );
    assert!(r.send(Input::Tick).is_empty());
    // Payloads that are not commands at all: nothing to answer.
    for junk in [
        &b"\xff\xfe not utf-8"[..],
        b"[]",
        b"null",
        b"{\"command_id\": 7, \"kind\": \"reboot\"}",
        &vec![b'['; 100_000][..],
    ] {
        r.command_bytes(junk);
    }
    assert!(r.reports().is_empty());
    // A well-formed command still works afterwards.
    let cmd = r.command(CommandKind::Reboot, "c-fine");
    r.run(&cmd);
    assert_eq!(ack_of(&r.report()), (true, None));
}

#[test]
fn receipts_of_another_session_or_malformed_remove_nothing_and_start_nothing() {
    let mut r = prepared(Before::Idle);
    let cmd = r.command(CommandKind::Reboot, "c-r");
    r.run(&cmd);
    let ack = r.report();
    let session = r.core.session().to_string();
    let pending = |r: &Rig| r.core.store.backlog().unwrap().0;
    assert_eq!(pending(&r), 1);
    let forged = [
        serde_json::json!({"session": "another", "seq": ack.seq}),
        serde_json::json!({"session": session, "seq": -1}),
        serde_json::json!({"session": session, "seq": "1"}),
        serde_json::json!({"seq": ack.seq}),
    ];
    for receipt in forged {
        let actions = r.receipt_bytes(&serde_json::to_vec(&receipt).unwrap());
        assert!(actions.is_empty(), "{receipt}");
        assert_eq!(pending(&r), 1, "{receipt}");
    }
    r.receipt_bytes(b"{not json");
    assert!(r.send(Input::Tick).is_empty(), "the reboot still waits");
    // The real receipt: the ack goes, the reboot starts, once.
    assert!(matches!(r.receipt(ack.seq)[..], [Action::RunPower { .. }]));
    assert_eq!(pending(&r), 0);
}

#[test]
fn commands_and_receipts_that_do_not_prove_the_controller_made_them_are_refused() {
    let mut r = prepared(Before::Idle);
    let cmd = r.command(CommandKind::Reboot, "c-forged");
    let body = serde_json::to_vec(&cmd).unwrap();
    let node = NodeId::new("n1").unwrap();
    let topics = Topics::default();
    let other_node = topics.node(&NodeId::new("n2").unwrap(), NodeTopic::Commands);
    let forged = [
        // No proof at all (what an anonymous MQTT client sends).
        body.clone(),
        // Sealed with another key (another node's, or a guess).
        proof::seal(
            &NodeKey::from_bytes([6; 32]),
            &topics.node(&node, NodeTopic::Commands),
            &body,
        )
        .unwrap(),
        // Sealed for another node's topic and replayed onto ours.
        proof::seal(&key(), &other_node, &body).unwrap(),
        // Sealed as a receipt, replayed as a command.
        proof::seal(&key(), &topics.node(&node, NodeTopic::Receipts), &body).unwrap(),
    ];
    for payload in forged {
        assert!(r.send(Input::Command(payload)).is_empty());
        assert!(r.reports().is_empty(), "a forged command was acked");
    }
    assert!(r.jobs.lock().unwrap().handled.is_empty());
    assert_eq!(r.core.store.seen(&cmd.command_id).unwrap(), None);
    assert_eq!(r.core.stats().refused.load(Ordering::Relaxed), 4);
    // The real one runs; a forged receipt for its ack starts nothing and removes nothing.
    r.run(&cmd);
    let ack = r.report();
    let receipt = serde_json::json!({"session": r.core.session(), "seq": ack.seq});
    let forged = serde_json::to_vec(&receipt).unwrap();
    assert!(r.send(Input::Receipt(forged)).is_empty());
    assert_eq!(
        r.core.store.backlog().unwrap().0,
        1,
        "the ack is still unreceipted"
    );
    assert!(matches!(r.receipt(ack.seq)[..], [Action::RunPower { .. }]));
}

#[test]
fn everything_the_core_publishes_is_sealed_for_its_topic() {
    let mut r = prepared(Before::Idle);
    let cmd = r.command(CommandKind::Reboot, "c-1");
    r.run(&cmd);
    r.send(Input::Connected { conn: 2 });
    let sent = r.out.take();
    assert!(!sent.is_empty());
    for (topic, _, _, payload) in sent {
        assert_eq!(proof::open(&key(), &topic, &payload), Ok(()), "{topic}");
    }
    let (topic, will) = r.core.will(3).unwrap();
    assert_eq!(proof::open(&key(), &topic, &will), Ok(()));
    assert!(
        proof::open(&NodeKey::from_bytes([6; 32]), &topic, &will).is_err(),
        "another key does not open it"
    );
}
