//! What a property-test step is: the inputs drawn (agents' messages, operator calls,
//! clock moves, restarts) and the strategies that draw them.

use std::time::Duration;

use metalbus_protocol::command::{JobKind, PowerAction, Work};
use metalbus_protocol::lifecycle::NodeState::{self, *};
use metalbus_protocol::report::JobStatus;
use metalbus_protocol::NodeId;
use proptest::prelude::*;

use crate::config::ControllerConfig;

pub(super) const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Which command a report names.
#[derive(Debug, Clone)]
pub(super) enum Cmd {
    /// The node's job (else the newest command sent to it).
    Current,
    /// One of the commands sent to the node, oldest first.
    Sent(usize),
    Unknown,
}

/// Where in the agent's outbox stream a report sits.
#[derive(Debug, Clone)]
pub(super) enum Seq {
    Next,
    Repeat,
    /// After a gap of this many more.
    Gap(u64),
    Any(u64),
    /// The first report of outbox `o{n}` (state wiped on the host).
    NewSession(u8),
}

#[derive(Debug, Clone)]
pub(super) enum Body {
    Ack {
        cmd: Cmd,
        accepted: bool,
    },
    Job {
        cmd: Cmd,
        work: Work,
        status: JobStatus,
        error: Option<String>,
    },
    /// What a working agent says next about the node's job (`started` while pending;
    /// `progress`, `complete` or `failed` after), picked by the number.
    Follow(u8),
    /// Refused at ingest: its place is taken.
    Refused,
}

#[derive(Debug, Clone)]
pub(super) enum Op {
    Manage(Option<&'static str>),
    Unmanage,
    Delete {
        force: bool,
    },
    SetState {
        state: NodeState,
        force: bool,
    },
    Retry,
    ControlPlane(bool),
    Power(PowerAction),
    /// A registration whose hostname hint is the node's agent's.
    Register,
    /// What an operator would do next with a node in its state (`manage` a discovered
    /// node, `retry` a failed one, ...), picked by the number.
    Next(u8),
}

#[derive(Debug, Clone, Copy)]
pub(super) enum IfMatch {
    Unset,
    Current,
    Stale,
}

/// One input, resolved against the store when it is applied.
#[derive(Debug, Clone)]
pub(super) enum Act {
    Birth {
        node: usize,
        conn: u64,
        session: u8,
        boot: u8,
    },
    Offline {
        node: usize,
        conn: u64,
        session: Option<u8>,
        shutdown: bool,
    },
    Inventory {
        node: usize,
        threads: u32,
    },
    Metrics {
        node: usize,
    },
    Report {
        node: usize,
        seq: Seq,
        body: Body,
    },
    Call {
        node: usize,
        op: Op,
        if_match: IfMatch,
    },
}

#[derive(Debug, Clone)]
pub(super) enum Step {
    /// One engine batch (one transaction).
    Batch(Vec<Act>),
    /// The same call twice in one batch, both with the version the caller saw.
    Twice { node: usize, op: Op },
    /// The clock moves on (ms) and the engine's timers fire.
    Advance(u64),
    /// The controller restarts on the same store.
    Restart,
}

pub(super) fn any_node() -> impl Strategy<Value = usize> {
    0..NODES.len()
}

pub(super) fn any_cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        6 => Just(Cmd::Current),
        2 => (0usize..8).prop_map(Cmd::Sent),
        1 => Just(Cmd::Unknown),
    ]
}

pub(super) fn any_body() -> impl Strategy<Value = Body> {
    let work = prop_oneof![
        6 => Just(Work::Job(JobKind::Install)),
        3 => Just(Work::Job(JobKind::Deprovision)),
        1 => prop::sample::select(PowerAction::ALL.to_vec()).prop_map(Work::Power),
    ];
    let status = prop::sample::select(JobStatus::ALL.to_vec());
    let error = prop::option::of("[a-z ]{0,12}");
    prop_oneof![
        3 => (any_cmd(), any::<bool>()).prop_map(|(cmd, accepted)| Body::Ack { cmd, accepted }),
        4 => (any_cmd(), work, status, error).prop_map(|(cmd, work, status, error)| Body::Job {
            cmd,
            work,
            status,
            error,
        }),
        1 => Just(Body::Refused),
    ]
}

pub(super) fn any_seq() -> impl Strategy<Value = Seq> {
    prop_oneof![
        8 => Just(Seq::Next),
        1 => Just(Seq::Repeat),
        1 => (0u64..3).prop_map(Seq::Gap),
        1 => (1u64..12).prop_map(Seq::Any),
        1 => (1u8..4).prop_map(Seq::NewSession),
    ]
}

/// An operator call on an existing node.
pub(super) fn any_op() -> impl Strategy<Value = Op> {
    let plan = prop::sample::select(vec![None, None, Some("demo"), Some("reboot"), Some("nope")]);
    prop_oneof![
        3 => plan.prop_map(Op::Manage),
        2 => Just(Op::Unmanage),
        1 => any::<bool>().prop_map(|force| Op::Delete { force }),
        4 => (prop::sample::select(NodeState::ALL.to_vec()), any::<bool>())
            .prop_map(|(state, force)| Op::SetState { state, force }),
        3 => Just(Op::Retry),
        1 => any::<bool>().prop_map(Op::ControlPlane),
        1 => prop::sample::select(PowerAction::ALL.to_vec()).prop_map(Op::Power),
        20 => any::<u8>().prop_map(Op::Next),
    ]
}

/// `Op::Next` made concrete for a node in `state`.
pub(super) fn next_op(state: Option<NodeState>, pick: u8) -> Op {
    use Op::*;
    let set = |state, force| SetState { state, force };
    let ops: &[Op] = match state {
        None | Some(Registered) => &[Delete { force: false }],
        Some(Discovered) => &[Manage(None), Manage(None), Manage(Some("reboot"))],
        Some(Pending | Installing) => &[
            Power(PowerAction::Reboot),
            ControlPlane(true),
            ControlPlane(false),
            Delete { force: true },
        ],
        Some(InstallFailed) => &[Retry, Retry, set(Pending, false), set(Pending, true)],
        Some(Installed) => &[set(Active, false), Unmanage],
        Some(Active) => &[
            Unmanage,
            set(Reprovision, false),
            set(Migrating, false),
            Delete { force: false },
        ],
        Some(Migrating) => &[set(Active, false)],
        Some(Deprovisioning) => &[
            ControlPlane(true),
            ControlPlane(false),
            Delete { force: true },
        ],
        Some(DeprovisionFailed) => &[Retry, Retry, Unmanage],
        Some(Error) => &[set(Discovered, false), Unmanage, Delete { force: false }],
        Some(Reprovision | Retired) => &[Manage(None)],
    };
    ops[usize::from(pick) % ops.len()].clone()
}

pub(super) fn any_act() -> impl Strategy<Value = Act> {
    let if_match = prop_oneof![
        6 => Just(IfMatch::Unset),
        2 => Just(IfMatch::Current),
        1 => Just(IfMatch::Stale),
    ];
    prop_oneof![
        2 => (any_node(), 1u64..5, 0u8..2, 0u8..3).prop_map(|(node, conn, session, boot)| {
            Act::Birth { node, conn, session, boot }
        }),
        1 => (any_node(), 1u64..5, prop::option::of(0u8..2), any::<bool>()).prop_map(
            |(node, conn, session, shutdown)| Act::Offline { node, conn, session, shutdown }
        ),
        2 => (any_node(), 1u32..3).prop_map(|(node, threads)| Act::Inventory { node, threads }),
        2 => any_node().prop_map(|node| Act::Metrics { node }),
        // A working agent, in order.
        12 => (any_node(), any::<u8>()).prop_map(|(node, pick)| Act::Report {
            node,
            seq: Seq::Next,
            body: Body::Follow(pick),
        }),
        6 => (any_node(), any_seq(), any_body())
            .prop_map(|(node, seq, body)| Act::Report { node, seq, body }),
        7 => (any_node(), any_op(), if_match)
            .prop_map(|(node, op, if_match)| Act::Call { node, op, if_match }),
        1 => any_node().prop_map(|node| Act::Call {
            node,
            op: Op::Register,
            if_match: IfMatch::Unset,
        }),
    ]
}

pub(super) fn any_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => any_act().prop_map(|a| Step::Batch(vec![a])),
        2 => prop::collection::vec(any_act(), 2..4).prop_map(Step::Batch),
        1 => (any_node(), any_op()).prop_map(|(node, op)| Step::Twice { node, op }),
        4 => prop_oneof![
            6 => 0u64..2_000,
            3 => 2_000u64..30_000,
            1 => 30_000u64..600_000,
        ]
        .prop_map(Step::Advance),
        1 => Just(Step::Restart),
    ]
}

/// Short timeouts and backoffs, so that clock moves of minutes reach them; a second
/// plan that reboots after the install.
pub(super) fn any_config() -> impl Strategy<Value = ControllerConfig> {
    (any::<bool>(), 1u32..4, 0u32..3, 1u64..20, 10u64..120).prop_map(
        |(auto_activate, max_install, max_recovery, backoff_s, timeout_s)| {
            let mut cfg = ControllerConfig::default();
            let lc = &mut cfg.lifecycle;
            lc.auto_activate = auto_activate;
            lc.max_install_attempts = max_install;
            lc.max_recovery_attempts = max_recovery;
            lc.retry_backoff = Duration::from_secs(backoff_s);
            let t = Duration::from_secs(timeout_s);
            lc.timeouts.registered = t;
            lc.timeouts.pending = t;
            lc.timeouts.installing = t * 2;
            lc.timeouts.deprovisioning = t;
            lc.timeouts.migrating = t;
            if let Some(demo) = cfg.plans.get("demo").cloned() {
                let reboot = crate::config::PlanConfig {
                    default: false,
                    reboot_after: true,
                    ..demo
                };
                cfg.plans.insert("reboot".into(), reboot);
            }
            cfg
        },
    )
}

pub(super) fn id(node: usize) -> NodeId {
    NodeId::new(NODES[node]).unwrap()
}
