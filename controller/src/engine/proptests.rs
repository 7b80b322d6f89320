//! Property tests of the engine: random sequences of what agents say (births, Wills,
//! inventories, metrics, reports in and out of order), operator calls, clock moves and
//! restarts, for three nodes, through the real engine on an in-memory store. After every
//! step the store keeps the lifecycle's promises (DESIGN 7.2, 7.4): `version` only
//! grows, and grows with every lasting change; every state change is one audit entry and
//! a row of the table; the state is where the history leads; what is published is what
//! is stored; a refused call changes nothing; of two calls with one `If-Match`, the
//! second is stale once the first changed the node.
//!
//! 64 cases of up to 60 steps; `PROPTEST_CASES=N` runs more. A failure is printed
//! shrunk and never written into the source tree.

use std::collections::BTreeMap;

use metalbus_protocol::api::AuditEntry;
use metalbus_protocol::command::JobKind;
use metalbus_protocol::lifecycle::NodeState::*;
use metalbus_protocol::machine::{allowed, Trigger};
use metalbus_protocol::{NodeId, Timestamp};
use proptest::prelude::*;

use super::tests::{rig_with, Rig};
use super::{CallError, Input};
use crate::config::ControllerConfig;
use crate::store::{CommandRecord, NodeRecord};

mod inputs;
mod steps;

use inputs::{call, input, Answer};
use steps::*;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config.failure_persistence = None;
    config
}
const TRANSITIONS: &str = "metalbus/v1/events/transitions";

/// A node as the store holds it, with its audit history (oldest first) and the stored
/// command of its job.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    rec: NodeRecord,
    history: Vec<AuditEntry>,
    job: Option<CommandRecord>,
}

fn snapshot(r: &Rig) -> BTreeMap<NodeId, Seen> {
    let mut all = BTreeMap::new();
    for rec in r.store.nodes().unwrap() {
        let mut history = r.store.history(&rec.id, usize::MAX, 0).unwrap();
        history.reverse();
        let job = rec
            .job
            .as_ref()
            .and_then(|j| r.store.command(j.command_id.as_str()).unwrap());
        all.insert(rec.id.clone(), Seen { rec, history, job });
    }
    all
}

/// The audit entries published since the last look.
fn published(r: &mut Rig) -> Vec<AuditEntry> {
    let mut entries = Vec::new();
    while let Ok(m) = r.out.try_recv() {
        if m.topic == TRANSITIONS {
            entries.push(serde_json::from_slice(&m.payload).unwrap());
        }
    }
    entries
}

/// What every stored node holds to, whatever happened before.
fn check_node(seen: &Seen, cfg: &ControllerConfig) -> Result<(), TestCaseError> {
    let n = &seen.rec;
    prop_assert!(n.version >= 1);
    prop_assert_eq!(seen.history.len() as u64, n.history_len);
    // A node starts registered or discovered; its history chains up, each entry a row
    // of the table, numbered from 1, in time order; the state is where it leads.
    let mut at = seen.history.first().map_or(n.state, |e| e.from_state);
    prop_assert!(
        matches!(at, Registered | Discovered),
        "{} started {}",
        n.id,
        at
    );
    let mut last_at = None;
    for (i, e) in seen.history.iter().enumerate() {
        prop_assert_eq!(&e.id, &format!("{}:{}", n.id, i + 1));
        prop_assert_eq!(&e.node_id, &n.id);
        prop_assert_eq!(e.from_state, at, "{}: the history does not chain up", n.id);
        let force = e
            .metadata
            .as_ref()
            .and_then(|m| m.get("force"))
            .and_then(serde_json::Value::as_bool)
            == Some(true);
        prop_assert!(
            allowed(e.from_state, e.to_state, e.triggered_by, force),
            "{}: {} -> {} by {} (force {}) is not in the table",
            n.id,
            e.from_state,
            e.to_state,
            e.triggered_by,
            force
        );
        prop_assert!(e.user.is_none() || e.triggered_by == Trigger::Admin);
        prop_assert!(last_at <= Some(e.created_at));
        last_at = Some(e.created_at);
        at = e.to_state;
    }
    prop_assert_eq!(
        n.state,
        at,
        "{}: the state is not where its history leads",
        n.id
    );

    // The job is of the kind the state runs, and a command stored for this node.
    if let Some(job) = &n.job {
        let stored = seen.job.as_ref().map(|c| (&c.node_id, c.command.kind));
        prop_assert_eq!(stored, Some((&n.id, job.kind.command())), "{:?}", job);
    }
    let kind = n.job.as_ref().map(|j| j.kind);
    match n.state {
        Pending | Installing | InstallFailed => {
            prop_assert!(kind != Some(JobKind::Deprovision), "{}", n.state);
        }
        Deprovisioning | DeprovisionFailed => {
            prop_assert!(kind != Some(JobKind::Install), "{}", n.state);
            prop_assert!(n.after_deprovision.is_some());
        }
        _ => prop_assert_eq!(kind, None, "{} has a job", n.state),
    }
    // The counters stay within the policy's limits.
    let lc = &cfg.lifecycle;
    prop_assert!(n.recovery_attempts <= lc.max_recovery_attempts);
    if n.state == Installing {
        prop_assert!(n.install_attempts < lc.max_install_attempts);
    }
    Ok(())
}

/// The record without what changes without a new version: the report position and
/// the progress of a running job (transient, DESIGN 4).
fn lasting(rec: &NodeRecord) -> NodeRecord {
    NodeRecord {
        version: 0,
        updated_at: Timestamp::from_unix_millis(0),
        last_applied_seq: 0,
        progress: None,
        last_progress_at: None,
        ..rec.clone()
    }
}

/// What a step may do to a node that was there before it.
fn check_move(was: &Seen, now: &Seen) -> Result<(), TestCaseError> {
    let id = &now.rec.id;
    let (v0, v1) = (was.rec.version, now.rec.version);
    prop_assert!(v1 >= v0, "{}: version {} -> {}", id, v0, v1);
    prop_assert!(now.history.len() >= was.history.len());
    prop_assert_eq!(
        &now.history[..was.history.len()],
        &was.history[..],
        "history is append-only"
    );
    if now.rec.state != was.rec.state || now.history.len() > was.history.len() {
        prop_assert!(
            v1 > v0,
            "{}: {} -> {} at version {}",
            id,
            was.rec.state,
            now.rec.state,
            v1
        );
    }
    if lasting(&now.rec) != lasting(&was.rec) {
        prop_assert!(v1 > v0, "{}: changed at version {}", id, v1);
    }
    if was.rec.state == Retired {
        prop_assert_eq!(now.rec.state, Retired);
    }
    Ok(())
}

/// The promises of one step, from the store before and after it.
fn check_step(
    before: &BTreeMap<NodeId, Seen>,
    after: &BTreeMap<NodeId, Seen>,
    mut published: Vec<AuditEntry>,
    cfg: &ControllerConfig,
) -> Result<(), TestCaseError> {
    let mut added = Vec::new();
    for (id, now) in after {
        check_node(now, cfg)?;
        match before.get(id) {
            Some(was) => {
                check_move(was, now)?;
                added.extend_from_slice(&now.history[was.history.len()..]);
            }
            None => added.extend_from_slice(&now.history),
        }
    }
    // Only a registration disappears: claimed by an agent, under whose id it goes on.
    for (id, was) in before {
        if !after.contains_key(id) {
            prop_assert_eq!(was.rec.state, Registered, "{} vanished", id);
            prop_assert!(was.history.is_empty());
            let claimed = after
                .iter()
                .any(|(i, s)| !before.contains_key(i) && s.rec.name == was.rec.name);
            prop_assert!(claimed, "registration {} vanished unclaimed", id);
        }
    }
    // Each stored transition was published once, and nothing else.
    let key = |e: &AuditEntry| (e.node_id.clone(), e.id.clone());
    added.sort_by_key(key);
    published.sort_by_key(key);
    prop_assert_eq!(added, published);
    Ok(())
}

/// Applies one step (but a restart) and checks the answers it gives.
fn run_step(
    r: &mut Rig,
    step: &Step,
    before: &BTreeMap<NodeId, Seen>,
) -> Result<(), TestCaseError> {
    match step {
        Step::Batch(acts) => {
            let (inputs, answers): (Vec<Input>, Vec<Option<Answer>>) =
                acts.iter().map(|a| input(r, a)).unzip();
            r.engine.apply(inputs);
            for (act, answer) in acts.iter().zip(answers) {
                let Some(mut answer) = answer else { continue };
                let Ok(result) = answer.try_recv() else {
                    return Err(TestCaseError::fail(format!("{act:?} was not answered")));
                };
                let Act::Call { node, op, .. } = act else {
                    continue;
                };
                if acts.len() > 1 {
                    continue;
                }
                let after = snapshot(r);
                match result {
                    // A refused call changes nothing.
                    Err(e) => prop_assert_eq!(&after, before, "{:?} was refused: {}", op, e),
                    // The answer is the committed node.
                    Ok(reply) if !matches!(op, Op::Register) => {
                        let now = after.get(&id(*node)).map(|s| &s.rec);
                        prop_assert_eq!(Some(&reply.node), now);
                        let was = before.get(&id(*node)).map(|s| s.rec.state);
                        prop_assert_eq!(Some(reply.before), was);
                    }
                    Ok(_) => {}
                }
            }
        }
        Step::Twice { node, op } => {
            let seen = before.get(&id(*node)).map_or(1, |s| s.rec.version);
            let (first, mut a) = call(r, *node, op, Some(seen));
            let (second, mut b) = call(r, *node, op, Some(seen));
            r.engine.apply(vec![first, second]);
            let (Ok(a), Ok(b)) = (a.try_recv(), b.try_recv()) else {
                return Err(TestCaseError::fail("a call was not answered"));
            };
            match &a {
                Ok(reply) if reply.node.version > seen => {
                    let stale = CallError::Stale {
                        given: seen,
                        current: reply.node.version,
                    };
                    prop_assert_eq!(b.err(), Some(stale));
                }
                Ok(_) => prop_assert!(b.is_ok(), "{:?}", b),
                Err(e) => {
                    let second = b.err();
                    prop_assert_eq!(second.as_ref(), Some(e));
                }
            }
        }
        Step::Advance(ms) => {
            // The engine looks at least once a minute, as its timers would have it.
            let mut left = *ms;
            loop {
                let by = left.min(60_000);
                r.clock.advance_ms(by as i64);
                r.engine.apply(Vec::new());
                left -= by;
                if left == 0 {
                    break;
                }
            }
        }
        Step::Restart => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn no_sequence_of_inputs_breaks_the_stored_lifecycle(
        cfg in any_config(),
        born in prop::collection::vec(prop::bool::weighted(0.8), NODES.len()),
        steps in prop::collection::vec(any_step(), 1..60),
    ) {
        let mut r = rig_with(cfg.clone());
        // Most nodes are there from the start, with an agent that has said everything;
        // the others come (and may claim a registration) when their birth is drawn.
        let hello: Vec<Act> = (0..NODES.len())
            .filter(|n| born[*n])
            .flat_map(|node| {
                let birth = Act::Birth { node, conn: 1, session: 0, boot: 0 };
                [birth, Act::Inventory { node, threads: 1 }, Act::Metrics { node }]
            })
            .collect();
        let hello = (!hello.is_empty()).then_some(Step::Batch(hello));
        for step in hello.iter().chain(&steps) {
            let before = snapshot(&r);
            if let Step::Restart = step {
                r = r.restart(cfg.clone());
                r.engine.apply(Vec::new());
            } else {
                run_step(&mut r, step, &before)?;
            }
            let after = snapshot(&r);
            let published = published(&mut r);
            check_step(&before, &after, published, &cfg)?;
        }
    }
}
