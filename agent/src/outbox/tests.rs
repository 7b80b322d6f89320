//! The outbox against a real redb file in a temp dir: numbering, merging, receipts,
//! restarts, remembered commands and the running job.

use metalbus_protocol::command::Work;

use super::*;

fn cid(s: &str) -> CommandId {
    CommandId::new(s).unwrap()
}

fn node() -> NodeId {
    NodeId::new("n1").unwrap()
}

fn progress(job: &str, pct: u8) -> ReportBody {
    ReportBody::Job {
        command_id: cid(job),
        job: Work::Job(JobKind::Install),
        status: JobStatus::Progress,
        progress: Some(pct),
        step: None,
        message: None,
        error: None,
    }
}

fn event(job: &str, status: JobStatus) -> ReportBody {
    ReportBody::Job {
        command_id: cid(job),
        job: Work::Job(JobKind::Install),
        status,
        progress: None,
        step: None,
        message: None,
        error: None,
    }
}

fn ts() -> Timestamp {
    Timestamp::from_unix_millis(0)
}

#[test]
fn reports_are_numbered_without_gaps_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgentStore::open(dir.path()).unwrap();
    let session = s.session().to_string();
    assert_eq!(
        s.queue(event("c1", JobStatus::Started), ts(), &node(), 0)
            .unwrap(),
        Queued::New(1)
    );
    assert_eq!(
        s.queue(progress("c1", 10), ts(), &node(), 0).unwrap(),
        Queued::New(2)
    );
    assert_eq!(s.next_conn().unwrap(), 1);
    drop(s);
    let mut s = AgentStore::open(dir.path()).unwrap();
    assert_eq!(s.session(), session);
    assert_eq!(s.next_conn().unwrap(), 2);
    let pending = s.pending(0, 10).unwrap();
    assert_eq!(
        pending.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(pending.iter().all(|r| r.session == session));
    assert_eq!(
        s.queue(event("c1", JobStatus::Complete), ts(), &node(), 2)
            .unwrap(),
        Queued::New(3)
    );
}

#[test]
fn only_unsent_progress_of_the_same_job_merges() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgentStore::open(dir.path()).unwrap();
    s.queue(event("c1", JobStatus::Started), ts(), &node(), 0)
        .unwrap();
    assert_eq!(
        s.queue(progress("c1", 10), ts(), &node(), 0).unwrap(),
        Queued::New(2)
    );
    // Unsent (sent_upto 1): merges into 2 with the newest value.
    assert_eq!(
        s.queue(progress("c1", 20), ts(), &node(), 1).unwrap(),
        Queued::Merged(2)
    );
    let p = s.pending(1, 10).unwrap();
    assert!(matches!(
        p[0].body,
        ReportBody::Job {
            progress: Some(20),
            ..
        }
    ));
    // Already sent (sent_upto 2): a new number.
    assert_eq!(
        s.queue(progress("c1", 30), ts(), &node(), 2).unwrap(),
        Queued::New(3)
    );
    // Another job's progress, or a non-progress event, never merges.
    assert_eq!(
        s.queue(progress("c2", 5), ts(), &node(), 0).unwrap(),
        Queued::New(4)
    );
    assert_eq!(
        s.queue(event("c2", JobStatus::Failed), ts(), &node(), 0)
            .unwrap(),
        Queued::New(5)
    );
    assert_eq!(
        s.queue(event("c2", JobStatus::Failed), ts(), &node(), 0)
            .unwrap(),
        Queued::New(6)
    );
}

#[test]
fn receipts_remove_only_what_they_cover_and_only_for_this_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgentStore::open(dir.path()).unwrap();
    for i in 0..5 {
        s.queue(
            event(&format!("c{i}"), JobStatus::Started),
            ts(),
            &node(),
            0,
        )
        .unwrap();
    }
    assert_eq!(s.receipt("another-session", 5).unwrap(), 0);
    let session = s.session().to_string();
    assert_eq!(s.receipt(&session, 3).unwrap(), 3);
    assert_eq!(s.backlog().unwrap(), (2, Some(4)));
    assert_eq!(
        s.receipt(&session, 3).unwrap(),
        0,
        "a repeated receipt is harmless"
    );
    assert_eq!(s.receipt(&session, 9).unwrap(), 2);
    assert_eq!(s.backlog().unwrap(), (0, None));
    // Numbering goes on after the outbox empties.
    assert_eq!(
        s.queue(event("c9", JobStatus::Started), ts(), &node(), 5)
            .unwrap(),
        Queued::New(6)
    );
}

#[test]
fn the_last_thousand_commands_are_remembered_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgentStore::open(dir.path()).unwrap();
    let yes = Ack {
        accepted: true,
        reason: None,
    };
    let no = Ack {
        accepted: false,
        reason: Some("unknown script 'x'".into()),
    };
    s.remember(&cid("first"), &no).unwrap();
    for i in 0..REMEMBERED_COMMANDS {
        s.remember(&cid(&format!("c-{i}")), &yes).unwrap();
    }
    drop(s);
    let s = AgentStore::open(dir.path()).unwrap();
    assert_eq!(
        s.seen(&cid("first")).unwrap(),
        None,
        "the oldest is forgotten"
    );
    assert_eq!(s.seen(&cid("c-0")).unwrap(), Some(yes.clone()));
    assert_eq!(
        s.seen(&cid(&format!("c-{}", REMEMBERED_COMMANDS - 1)))
            .unwrap(),
        Some(yes)
    );
    assert_eq!(s.seen(&cid("never")).unwrap(), None);
}

#[test]
fn the_running_job_is_recorded_until_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgentStore::open(dir.path()).unwrap();
    let j = RunningJob {
        command_id: cid("c-1"),
        job: JobKind::Install,
    };
    s.set_job(Some(&j)).unwrap();
    drop(s);
    let mut s = AgentStore::open(dir.path()).unwrap();
    assert_eq!(s.job().unwrap(), Some(j));
    s.set_job(None).unwrap();
    assert_eq!(s.job().unwrap(), None);
}

#[test]
fn the_old_state_file_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent-state.json"),
        br#"{"session":"0123456789abcdef01234567","conn":41,"seq":3}"#,
    )
    .unwrap();
    let mut s = AgentStore::open(dir.path()).unwrap();
    assert_eq!(s.session(), "0123456789abcdef01234567");
    assert_eq!(s.next_conn().unwrap(), 42);
    assert!(!dir.path().join("agent-state.json").exists());
}

#[test]
fn a_power_action_is_recorded_apart_from_the_job_and_receipts_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgentStore::open(dir.path()).unwrap();
    let node = NodeId::new("n1").unwrap();
    let ack = ReportBody::Ack {
        command_id: cid("c-9"),
        accepted: true,
        reason: None,
    };
    let Queued::New(seq) = s
        .queue(ack, Timestamp::from_unix_millis(0), &node, 0)
        .unwrap()
    else {
        panic!("not queued")
    };
    assert!(!s.receipted(seq).unwrap(), "waiting for its receipt");
    assert!(!s.receipted(seq + 1).unwrap(), "a number not given out yet");
    let p = PendingPower {
        command_id: cid("c-9"),
        action: PowerAction::Reboot,
        ack_seq: seq,
        started: None,
    };
    s.set_power(Some(&p)).unwrap();
    s.set_job(None).unwrap();
    let session = s.session().to_string();
    s.receipt(&session, seq).unwrap();
    assert!(s.receipted(seq).unwrap());
    drop(s);
    let mut s = AgentStore::open(dir.path()).unwrap();
    assert_eq!(s.power().unwrap(), Some(p), "clearing the job left it");
    s.set_power(None).unwrap();
    assert_eq!(s.power().unwrap(), None);
}

#[test]
fn a_report_is_queued_only_in_a_shape_the_controller_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = AgentStore::open(dir.path()).unwrap();
    let huge = "€".repeat(100_000);
    let ack = ReportBody::Ack {
        command_id: cid("c1"),
        accepted: false,
        reason: Some(huge.clone()),
    };
    s.queue(ack, ts(), &node(), 0).unwrap();
    let mut failed = event("c1", JobStatus::Failed);
    if let ReportBody::Job { error, step, .. } = &mut failed {
        *error = Some(huge.clone());
        *step = Some(huge);
    }
    s.queue(failed, ts(), &node(), 0).unwrap();
    let pending = s.pending(0, 10).unwrap();
    assert_eq!(pending.len(), 2);
    for r in pending {
        assert_eq!(r.validate(), Ok(()), "seq {}", r.seq);
        let bytes = serde_json::to_vec(&r).unwrap().len();
        assert!(
            bytes < metalbus_protocol::MAX_PAYLOAD_BYTES,
            "{bytes} bytes"
        );
    }
}
