//! How many durable changes a second does the engine commit at saturation, and in how
//! many commits? (Issue 13, point 6: group commit against the disk's own fsync rate.)
//!
//! The real engine runs its own loop on a redb file under `target/tmp` (the build's
//! disk, not a tmpfs), as `metalbus serve` runs it. Every input below is queued at once,
//! so the engine is never idle:
//! - **manage**: `NODES` manage calls, each a durable transition (`discovered` →
//!   `pending`) with its audit entry and an install command;
//! - **job reports**: for every node an ack, `started`, `PROGRESS` progress reports and
//!   `complete`, interleaved across the fleet as agents send them; each report is
//!   committed before it is receipted, and three of them move the node (`installing`,
//!   `installed`, `active`).
//!
//! It prints the durable changes (calls, reports, transitions), the commits they took
//! (`metalbus_store_commit_seconds_count`), changes per second, and next to them the
//! fsync rate of the same disk measured in the same run (4 KiB written and
//! `fdatasync`ed, one after another), with the ratio.
//!
//! `cargo bench -p metalbus --bench durable` (`NODES`, `PROGRESS` change the sizes).

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::env;

use metalbus::engine::{Action, Call, CallError, Input, Reply};
use metalbus::telemetry::Telemetry;
use metalbus_protocol::command::{CommandId, JobKind, Work};
use metalbus_protocol::report::{JobStatus, Report, ReportBody};
use metalbus_protocol::{NodeId, Timestamp};
use tokio::sync::{mpsc, oneshot};

fn node(i: usize) -> NodeId {
    NodeId::new(format!("durable-{i:05}")).expect("valid id")
}

fn session(i: usize) -> String {
    format!("s{i}")
}

fn birth(i: usize) -> Input {
    common::birth(node(i), session(i), 60)
}

/// The `n`th report (from 0) of node `i` for its install command.
fn report(i: usize, n: usize, progress: usize, command_id: &CommandId) -> Input {
    let job = |status, pct: Option<u8>| ReportBody::Job {
        command_id: command_id.clone(),
        job: Work::Job(JobKind::Install),
        status,
        progress: pct,
        step: Some("image".into()),
        message: None,
        error: None,
    };
    let body = match n {
        0 => ReportBody::Ack {
            command_id: command_id.clone(),
            accepted: true,
            reason: None,
        },
        1 => job(JobStatus::Started, None),
        n if n < 2 + progress => job(
            JobStatus::Progress,
            Some(((n - 1) * 100 / (progress + 1)) as u8),
        ),
        _ => job(JobStatus::Complete, Some(100)),
    };
    Input::Report {
        id: node(i),
        report: Box::new(Report {
            session: session(i),
            seq: n as u64 + 1,
            ts: Timestamp::from(std::time::SystemTime::now()),
            body,
            node_id: None,
        }),
    }
}

/// A value from the telemetry's text exposition: the sum of a family's series.
fn metric(telemetry: &Telemetry, name: &str) -> u64 {
    telemetry
        .render()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// fsyncs a second on the disk of `dir`: 4 KiB written and `fdatasync`ed, over and over.
fn fsync_rate(dir: &std::path::Path, for_: Duration) -> f64 {
    let mut f = std::fs::File::create(dir.join("fsync-probe")).expect("probe file");
    let block = [7u8; 4096];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < for_ {
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Calls of one kind through the queue, answered after their commit.
async fn call(
    tx: &mpsc::Sender<Input>,
    key: String,
    action: Action,
) -> oneshot::Receiver<Result<Reply, CallError>> {
    let (reply, answer) = oneshot::channel();
    let call = Call {
        key,
        action,
        user: Some("bench".into()),
        if_match: None,
        reply,
    };
    tx.send(Input::Call(Box::new(call)))
        .await
        .expect("engine running");
    answer
}

struct Phase {
    label: &'static str,
    changes: u64,
    transitions: u64,
    commits: u64,
    seconds: f64,
}

fn main() {
    let nodes = env("NODES", 2000);
    let progress = env("PROGRESS", 8);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let fsyncs_before = fsync_rate(dir.path(), Duration::from_secs(2));
    let phases = runtime.block_on(async {
        let telemetry = Arc::new(Telemetry::new());
        let (tx, task) =
            common::start_engine(&dir.path().join("metalbus.redb"), telemetry.clone(), 65_536);
        for i in 0..nodes {
            tx.send(birth(i)).await.expect("engine running");
        }
        // Every birth committed: a call answers after the batch it is in.
        let _ = call(&tx, node(0).to_string(), Action::Retry).await.await;
        let mut phases = Vec::new();
        let snapshot = || {
            (
                metric(&telemetry, "metalbus_store_commit_seconds_count"),
                metric(&telemetry, "metalbus_state_transitions_total"),
            )
        };

        // Manage: every call queued at once.
        let (commits0, transitions0) = snapshot();
        let started = Instant::now();
        let mut answers = Vec::with_capacity(nodes);
        for i in 0..nodes {
            answers.push(call(&tx, node(i).to_string(), Action::Manage { plan: None }).await);
        }
        let mut commands = Vec::with_capacity(nodes);
        for answer in answers {
            let reply = answer.await.expect("an answer").expect("manage accepted");
            commands.push(reply.node.job.expect("an install job").command_id);
        }
        let seconds = started.elapsed().as_secs_f64();
        let (commits1, transitions1) = snapshot();
        phases.push(Phase {
            label: "manage calls",
            changes: nodes as u64,
            transitions: transitions1 - transitions0,
            commits: commits1 - commits0,
            seconds,
        });

        // Job reports, interleaved across the fleet.
        let per_node = progress + 3;
        let started = Instant::now();
        for n in 0..per_node {
            for (i, command_id) in commands.iter().enumerate() {
                tx.send(report(i, n, progress, command_id))
                    .await
                    .expect("engine running");
            }
        }
        // Answered once every report before it is committed.
        let last = call(&tx, node(0).to_string(), Action::Retry).await;
        let _ = last.await;
        let seconds = started.elapsed().as_secs_f64();
        let (commits2, transitions2) = snapshot();
        phases.push(Phase {
            label: "job reports",
            changes: (nodes * per_node) as u64,
            transitions: transitions2 - transitions1,
            commits: commits2 - commits1,
            seconds,
        });
        let expected = 3 * nodes as u64;
        assert_eq!(
            transitions2 - transitions1,
            expected,
            "every node installed and active (installing, installed, active)"
        );
        drop(tx);
        task.stopped().await;
        phases
    });
    let fsyncs_after = fsync_rate(dir.path(), Duration::from_secs(2));
    let fsyncs = (fsyncs_before + fsyncs_after) / 2.0;

    println!(
        "\ndurable changes at saturation, {nodes} nodes, {progress} progress reports per install; \
         disk: {fsyncs:.0} fsync/s (before {fsyncs_before:.0}, after {fsyncs_after:.0})\n"
    );
    println!(
        "{:<14} {:>9} {:>12} {:>8} {:>11} {:>9} {:>12} {:>15}",
        "phase",
        "changes",
        "transitions",
        "commits",
        "per commit",
        "seconds",
        "changes/s",
        "x fsync rate"
    );
    for p in &phases {
        let rate = p.changes as f64 / p.seconds;
        println!(
            "{:<14} {:>9} {:>12} {:>8} {:>11.1} {:>9.2} {:>12.0} {:>15.2}",
            p.label,
            p.changes,
            p.transitions,
            p.commits,
            p.changes as f64 / p.commits.max(1) as f64,
            p.seconds,
            rate,
            rate / fsyncs,
        );
    }
}
