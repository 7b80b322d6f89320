//! Turning a drawn step into the engine's input, against what the store holds now.

use metalbus_protocol::api::MatchHints;
use metalbus_protocol::command::{CommandId, CommandStatus, JobKind, Work};
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::lifecycle::NodeState::*;
use metalbus_protocol::report::JobStatus::{self, *};
use metalbus_protocol::report::{Report, ReportBody};
use metalbus_protocol::status::{Birth, Offline, OfflineReason, Status};
use metalbus_protocol::Timestamp;
use tokio::sync::oneshot;

use crate::engine::tests::Rig;
use crate::engine::{Action, Call, CallError, Input, NodeUpdate, Registration, Reply};
use crate::ingest::Place;

use super::steps::*;

pub(super) fn command_for(r: &Rig, node: usize, cmd: &Cmd) -> CommandId {
    let mut sent: Vec<(Timestamp, CommandId)> = r
        .store
        .commands_in(&CommandStatus::ALL)
        .unwrap()
        .into_iter()
        .filter(|c| c.node_id == id(node))
        .map(|c| (c.created_at, c.command.command_id))
        .collect();
    sent.sort();
    let job = r
        .store
        .find_node(NODES[node])
        .unwrap()
        .and_then(|n| n.job)
        .map(|j| j.command_id);
    let picked = match cmd {
        Cmd::Current => job.or_else(|| sent.last().map(|(_, c)| c.clone())),
        Cmd::Sent(i) => sent.get(i % sent.len().max(1)).map(|(_, c)| c.clone()),
        Cmd::Unknown => None,
    };
    picked.unwrap_or_else(|| CommandId::new("c-never-sent").unwrap())
}

pub(super) type Answer = oneshot::Receiver<Result<Reply, CallError>>;

/// The input for `act`, and the answer to wait for if it is a call.
pub(super) fn input(r: &Rig, act: &Act) -> (Input, Option<Answer>) {
    let node_rec = |node: usize| r.store.find_node(NODES[node]).unwrap();
    let input = match act {
        Act::Birth {
            node,
            conn,
            session,
            boot,
        } => Input::Status {
            id: id(*node),
            status: Status::Birth(Birth {
                conn: *conn,
                session: format!("s{session}"),
                agent_version: "0.1.0".into(),
                hostname: format!("host-{node}"),
                boot_id: (*boot > 0).then(|| format!("b{boot}")),
                metrics_interval_s: 15,
                ts: Timestamp::from_unix_millis(0),
                node_id: None,
                protocol: metalbus_protocol::PROTOCOL_VERSION,
            }),
        },
        Act::Offline {
            node,
            conn,
            session,
            shutdown,
        } => Input::Status {
            id: id(*node),
            status: Status::Offline(Offline {
                conn: *conn,
                reason: if *shutdown {
                    OfflineReason::Shutdown
                } else {
                    OfflineReason::Lost
                },
                session: session.map(|s| format!("s{s}")),
                node_id: None,
            }),
        },
        Act::Inventory { node, threads } => {
            let mut inventory = Inventory::default();
            inventory.cpu.threads = Some(*threads);
            Input::Inventory {
                id: id(*node),
                inventory: Box::new(inventory),
            }
        }
        Act::Metrics { node } => Input::Metrics {
            id: id(*node),
            sample: serde_json::from_str(r#"{"ts":"2026-01-01T00:00:00Z"}"#).unwrap(),
        },
        Act::Report { node, seq, body } => {
            let rec = node_rec(*node);
            let session = rec
                .as_ref()
                .and_then(|n| n.report_session.clone())
                .unwrap_or_else(|| "o1".into());
            let last = rec.as_ref().map_or(0, |n| n.last_applied_seq);
            let (session, seq) = match seq {
                Seq::Next => (session, last + 1),
                Seq::Repeat => (session, last.max(1)),
                Seq::Gap(g) => (session, last + 2 + g),
                Seq::Any(s) => (session, *s),
                Seq::NewSession(k) => (format!("o{k}"), 1),
            };
            let body = match body {
                Body::Refused => {
                    let refused = Input::RefusedReport {
                        id: id(*node),
                        place: Place { session, seq },
                        error: "payload too large".into(),
                    };
                    return (refused, None);
                }
                Body::Ack { cmd, accepted } => ReportBody::Ack {
                    command_id: command_for(r, *node, cmd),
                    accepted: *accepted,
                    reason: (!accepted).then(|| "unknown script".into()),
                },
                Body::Job {
                    cmd,
                    work,
                    status,
                    error,
                } => job_report(command_for(r, *node, cmd), *work, *status, error.clone()),
                Body::Follow(pick) => {
                    let (state, job) = rec.map_or((Discovered, None), |n| (n.state, n.job));
                    let next: &[JobStatus] = match state {
                        Pending => &[Started, Started, Started, Failed],
                        Installing => &[Progress, Complete, Complete, Failed],
                        Deprovisioning => &[Started, Complete, Complete, Failed],
                        _ => &[Progress],
                    };
                    let status = next[usize::from(*pick) % next.len()];
                    let (command_id, kind) = match job {
                        Some(j) => (j.command_id, j.kind),
                        None => (command_for(r, *node, &Cmd::Current), JobKind::Install),
                    };
                    let error = (status == Failed).then(|| "step failed".to_string());
                    job_report(command_id, Work::Job(kind), status, error)
                }
            };
            Input::Report {
                id: id(*node),
                report: Box::new(Report {
                    session,
                    seq,
                    ts: Timestamp::from_unix_millis(0),
                    body,
                    node_id: None,
                }),
            }
        }
        Act::Call { node, op, if_match } => {
            let version = node_rec(*node).map_or(1, |n| n.version);
            let if_match = match if_match {
                IfMatch::Unset => None,
                IfMatch::Current => Some(version),
                IfMatch::Stale => Some(version + 1),
            };
            let (call, answer) = call(r, *node, op, if_match);
            return (call, Some(answer));
        }
    };
    (input, None)
}

pub(super) fn job_report(
    command_id: CommandId,
    job: Work,
    status: JobStatus,
    error: Option<String>,
) -> ReportBody {
    ReportBody::Job {
        command_id,
        job,
        status,
        progress: (status == Progress).then_some(50),
        step: None,
        message: None,
        error,
    }
}

pub(super) fn call(r: &Rig, node: usize, op: &Op, if_match: Option<u64>) -> (Input, Answer) {
    let op = match op {
        Op::Next(pick) => {
            let state = r.store.find_node(NODES[node]).unwrap().map(|n| n.state);
            next_op(state, *pick)
        }
        op => op.clone(),
    };
    let action = match &op {
        Op::Manage(plan) => Action::Manage {
            plan: plan.map(String::from),
        },
        Op::Unmanage => Action::Unmanage,
        Op::Delete { force } => Action::Delete { force: *force },
        Op::SetState { state, force } => Action::SetState {
            state: *state,
            comment: None,
            force: *force,
        },
        Op::Retry => Action::Retry,
        Op::ControlPlane(on) => Action::Update(NodeUpdate {
            control_plane: Some(*on),
            ..NodeUpdate::default()
        }),
        Op::Power(action) => Action::Power(*action),
        Op::Next(_) => unreachable!("made concrete above"),
        Op::Register => Action::Register(Registration {
            name: format!("reg-{node}"),
            hints: MatchHints {
                hostname: Some(format!("host-{node}")),
                ..MatchHints::default()
            },
            ..Registration::default()
        }),
    };
    let (reply, answer) = oneshot::channel();
    let call = Call {
        key: NODES[node].into(),
        action,
        user: Some("prop".into()),
        if_match,
        reply,
    };
    (Input::Call(Box::new(call)), answer)
}
