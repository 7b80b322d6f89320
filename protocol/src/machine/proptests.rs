//! Property tests of the lifecycle machine: random sequences of every event, from random
//! nodes and from the two states a node starts in, hold [`apply`] to its table and to the
//! promises of its doc comments and of DESIGN 7.2 and 7.3.
//!
//! 256 cases per property (about a second); `PROPTEST_CASES=N` runs more. A failure is
//! printed shrunk and never written into the source tree.

use proptest::prelude::*;

use super::*;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config.failure_persistence = None;
    config
}

/// The job ids the tests hand out, so that reports often name the node's job.
const POOL: [&str; 2] = ["c-1", "c-2"];

fn any_state() -> impl Strategy<Value = NodeState> {
    prop::sample::select(NodeState::ALL.to_vec())
}

fn any_command_id() -> impl Strategy<Value = CommandId> {
    prop_oneof![
        3 => prop::sample::select(POOL.to_vec()).prop_map(|s| CommandId::new(s).unwrap()),
        1 => "[A-Za-z0-9_-]{1,64}".prop_map(|s| CommandId::new(s).unwrap()),
    ]
}

fn any_kind() -> impl Strategy<Value = JobKind> {
    prop::sample::select(JobKind::ALL.to_vec())
}

fn any_status() -> impl Strategy<Value = JobStatus> {
    prop::sample::select(JobStatus::ALL.to_vec())
}

/// Mostly small, sometimes anything a `u32` holds, its largest value too.
fn any_count() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..6, 1 => any::<u32>(), 1 => Just(u32::MAX)]
}

fn any_policy() -> impl Strategy<Value = Policy> {
    (any_count(), any::<bool>(), any::<bool>(), any_count()).prop_map(
        |(max_install_attempts, auto_activate, reboot_after, max_recovery_attempts)| Policy {
            max_install_attempts,
            auto_activate,
            reboot_after,
            max_recovery_attempts,
        },
    )
}

fn any_job() -> impl Strategy<Value = Option<JobRef>> {
    prop::option::of(
        (any_command_id(), any_kind()).prop_map(|(command_id, kind)| JobRef { command_id, kind }),
    )
}

fn any_after() -> impl Strategy<Value = Option<AfterDeprovision>> {
    prop::option::of(prop::sample::select(vec![
        AfterDeprovision::Discover,
        AfterDeprovision::Retire,
    ]))
}

/// Any node the type can hold, reachable or not.
fn any_node() -> impl Strategy<Value = Lifecycle> {
    (
        any_state(),
        any_count(),
        prop::option::of(".{0,20}"),
        any_count(),
        any::<bool>(),
        any_after(),
        any_job(),
    )
        .prop_map(
            |(state, install_attempts, last_install_error, recovery_attempts, cp, after, job)| {
                Lifecycle {
                    state,
                    install_attempts,
                    last_install_error,
                    recovery_attempts,
                    control_plane: cp,
                    after_deprovision: after,
                    job,
                }
            },
        )
}

/// Every event, with any field values.
fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        1 => Just(Event::Manage),
        1 => Just(Event::Unmanage),
        1 => any::<bool>().prop_map(|force| Event::Delete { force }),
        3 => (any_state(), any::<bool>()).prop_map(|(to, force)| Event::SetState { to, force }),
        1 => any::<bool>().prop_map(|machine_ready| Event::Retry { machine_ready }),
        6 => (any_command_id(), any_kind(), any_status(), prop::option::of(".{0,20}")).prop_map(
            |(command_id, job, status, error)| Event::Job {
                command_id,
                job,
                status,
                error,
            }
        ),
        1 => Just(Event::InstallRetryDue),
        1 => Just(Event::Reborn),
        1 => Just(Event::AgentMatched),
        1 => Just(Event::DiscoveryTimeout),
        2 => Just(Event::Stuck),
        1 => ".{0,20}".prop_map(|reason| Event::Fault { reason }),
    ]
}

/// An event, or a report about the node's own job, whatever that is when it comes.
#[derive(Debug, Clone)]
enum Step {
    Event(Event),
    Own {
        status: JobStatus,
        error: Option<String>,
    },
}

fn any_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => any_event().prop_map(Step::Event),
        1 => (any_status(), prop::option::of(".{0,20}"))
            .prop_map(|(status, error)| Step::Own { status, error }),
    ]
}

/// The event `step` stands for, for `node`.
fn event_of(step: Step, node: &Lifecycle) -> Event {
    match step {
        Step::Event(event) => event,
        Step::Own { status, error } => {
            let (command_id, job) = match &node.job {
                Some(j) => (j.command_id.clone(), j.kind),
                None => (CommandId::new(POOL[0]).unwrap(), JobKind::Install),
            };
            Event::Job {
                command_id,
                job,
                status,
                error,
            }
        }
    }
}

/// The `force` an event carries (an admin override).
fn force_of(event: &Event) -> bool {
    matches!(
        event,
        Event::Delete { force: true } | Event::SetState { force: true, .. }
    )
}

/// Who causes an event: its first change has this trigger.
fn trigger_of(event: &Event) -> Trigger {
    match event {
        Event::Manage
        | Event::Unmanage
        | Event::Delete { .. }
        | Event::SetState { .. }
        | Event::Retry { .. } => Trigger::Admin,
        Event::Job { .. } => Trigger::NodeReport,
        Event::InstallRetryDue
        | Event::Reborn
        | Event::AgentMatched
        | Event::DiscoveryTimeout
        | Event::Stuck
        | Event::Fault { .. } => Trigger::System,
    }
}

/// The states with a timeout (DESIGN 7.3) that `Stuck` recovers from.
fn timed(state: NodeState) -> bool {
    matches!(state, Pending | Installing | Deprovisioning | Migrating)
}

/// What one `apply` promises, accepted or refused.
fn check(
    node: &Lifecycle,
    event: &Event,
    policy: &Policy,
    result: &Result<Outcome, Refusal>,
) -> Result<(), TestCaseError> {
    // Pure: the same input gives the same answer.
    prop_assert_eq!(result, &apply(node, event.clone(), policy));
    match result {
        Ok(out) => check_outcome(node, event, policy, out),
        Err(refusal) => check_refusal(node, event, policy, refusal),
    }
}

fn check_outcome(
    node: &Lifecycle,
    event: &Event,
    policy: &Policy,
    out: &Outcome,
) -> Result<(), TestCaseError> {
    let after = &out.node;
    let force = force_of(event);

    // Every change is a row of the table, they chain up, and the node is where the last
    // one leads. The first is caused by whoever caused the event; a second one (auto
    // activation, reprovision's pass to pending) is the system's.
    prop_assert!(out.changes.len() <= 2, "{:?}", out.changes);
    let mut at = node.state;
    for (i, c) in out.changes.iter().enumerate() {
        prop_assert_eq!(c.from, at, "changes chain up");
        prop_assert!(
            allowed(c.from, c.to, c.trigger, force),
            "{} -> {} by {} (force {}) is not in the table",
            c.from,
            c.to,
            c.trigger,
            force
        );
        let trigger = if i == 0 {
            trigger_of(event)
        } else {
            Trigger::System
        };
        prop_assert_eq!(c.trigger, trigger);
        at = c.to;
    }
    prop_assert_eq!(after.state, at, "the node is where its changes lead");

    // The machine never sets a job (the controller records the one it sends) and never
    // touches the control-plane flag.
    prop_assert!(after.job.is_none() || after.job == node.job);
    prop_assert_eq!(after.control_plane, node.control_plane);

    let sends: Vec<JobKind> = out
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::SendJob(kind) => Some(*kind),
            _ => None,
        })
        .collect();
    let cancels: Vec<&CommandId> = out
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Cancel { command_id } => Some(command_id),
            _ => None,
        })
        .collect();
    prop_assert!(sends.len() <= 1 && cancels.len() <= 1, "{:?}", out.effects);
    // A job sent leaves no job recorded: the controller records the new one.
    if let Some(kind) = sends.first() {
        prop_assert!(after.job.is_none());
        match kind {
            JobKind::Install => prop_assert!(matches!(after.state, Pending | Installing)),
            JobKind::Deprovision => prop_assert_eq!(after.state, Deprovisioning),
        }
    }
    // Only the node's own job is cancelled, and then it is gone.
    if let Some(id) = cancels.first() {
        prop_assert_eq!(node.job.as_ref().map(|j| &j.command_id), Some(*id));
        prop_assert!(after.job.is_none());
    }
    // Entering pending always sends the install; entering deprovisioning the
    // deprovision, with what follows it recorded.
    for c in &out.changes {
        if c.to == Pending {
            prop_assert!(sends.contains(&JobKind::Install), "{:?}", out.effects);
        }
        if c.to == Deprovisioning {
            prop_assert!(sends.contains(&JobKind::Deprovision), "{:?}", out.effects);
            prop_assert!(after.after_deprovision.is_some());
        }
    }

    // A report is accepted only for the node's own job.
    if let Event::Job {
        command_id, job, ..
    } = event
    {
        let own = node.job.as_ref();
        prop_assert_eq!(
            own.map(|j| (&j.command_id, j.kind)),
            Some((command_id, *job))
        );
    }

    check_counters(node, event, policy, out)
}

/// `install_attempts` and `recovery_attempts` move only as DESIGN 7.2 and 7.3 say.
fn check_counters(
    node: &Lifecycle,
    event: &Event,
    policy: &Policy,
    out: &Outcome,
) -> Result<(), TestCaseError> {
    let after = &out.node;
    let moved = !out.changes.is_empty();

    // A failed install attempt counts one, keeps its error, and either waits for the
    // resend after the backoff or, at the limit, is `install_failed`.
    let failed_install = matches!(
        event,
        Event::Job {
            job: JobKind::Install,
            status: JobStatus::Failed,
            ..
        }
    );
    if failed_install {
        let Event::Job { error, .. } = event else {
            unreachable!()
        };
        let attempt = node.install_attempts.saturating_add(1);
        prop_assert_eq!(after.install_attempts, attempt);
        let said = error.clone().unwrap_or_else(|| "install failed".into());
        prop_assert_eq!(after.last_install_error.as_ref(), Some(&said));
        if attempt >= policy.max_install_attempts {
            let to: Vec<_> = out.changes.iter().map(|c| (c.to, c.trigger)).collect();
            prop_assert_eq!(to, vec![(InstallFailed, Trigger::NodeReport)]);
        } else {
            prop_assert!(!moved);
            prop_assert!(after.job.is_none(), "the failed job is done with");
            prop_assert_eq!(
                out.effects.last(),
                Some(&Effect::ScheduleInstallRetry { attempt })
            );
            let warned = matches!(
                out.effects.first(),
                Some(Effect::Warning {
                    reason: EventReason::InstallRetry,
                    ..
                })
            );
            prop_assert!(warned, "{:?}", out.effects);
        }
    } else {
        // Otherwise the count stays, or is reset by a change.
        prop_assert!(
            after.install_attempts == node.install_attempts
                || (after.install_attempts == 0 && moved),
            "install_attempts {} -> {} without a failure ({event:?})",
            node.install_attempts,
            after.install_attempts
        );
        prop_assert!(
            after.last_install_error == node.last_install_error
                || (after.last_install_error.is_none() && moved)
        );
    }

    // A stuck node gets `max_recovery_attempts` recovery attempts, then its failure
    // state; every other event leaves the count, or starts it afresh with a change.
    let recoveries: Vec<&Effect> = out
        .effects
        .iter()
        .filter(|e| matches!(e, Effect::Recovery { .. }))
        .collect();
    if *event == Event::Stuck && node.recovery_attempts < policy.max_recovery_attempts {
        prop_assert!(!moved);
        prop_assert_eq!(after.recovery_attempts, node.recovery_attempts + 1);
        let recovery = Effect::Recovery {
            attempt: after.recovery_attempts,
            max: policy.max_recovery_attempts,
        };
        prop_assert_eq!(recoveries, vec![&recovery]);
    } else {
        prop_assert!(recoveries.is_empty());
        prop_assert!(
            after.recovery_attempts == node.recovery_attempts
                || (after.recovery_attempts == 0 && moved)
        );
        if *event == Event::Stuck {
            let failure = match node.state {
                Pending | Installing => InstallFailed,
                Deprovisioning => DeprovisionFailed,
                _ => Error,
            };
            prop_assert_eq!(
                &out.changes,
                &vec![Change {
                    from: node.state,
                    to: failure,
                    trigger: Trigger::System
                }]
            );
            prop_assert!(after.job.is_none(), "the stuck job is cancelled");
        }
    }
    // Each state with a timeout starts with its own recovery attempts.
    if out.changes.iter().any(|c| timed(c.to)) {
        prop_assert_eq!(after.recovery_attempts, 0);
    }
    // The rows that reset the counters (DESIGN 7.2) reset them.
    let admin_reset = force_of(event) || matches!(event, Event::Retry { .. });
    for c in &out.changes {
        let resets = match (c.from, c.to) {
            (Pending, Installing) => {
                prop_assert_eq!(after.install_attempts, 0, "`started` resets the count");
                false
            }
            (Installing, Installed) | (Deprovisioning, Discovered | Retired) => {
                c.trigger == Trigger::NodeReport
            }
            (InstallFailed, Pending) | (DeprovisionFailed, Deprovisioning) => admin_reset,
            _ => false,
        };
        if resets {
            let counters = (
                after.install_attempts,
                &after.last_install_error,
                after.recovery_attempts,
            );
            prop_assert_eq!(counters, (0, &None, 0), "{} -> {}", c.from, c.to);
        }
    }
    Ok(())
}

fn check_refusal(
    node: &Lifecycle,
    event: &Event,
    policy: &Policy,
    refusal: &Refusal,
) -> Result<(), TestCaseError> {
    let state = node.state;
    match refusal {
        Refusal::Invalid { from, to, valid } => {
            prop_assert_eq!(*from, state);
            // What `PATCH state` could reach, less the refused target itself.
            let reachable: Vec<NodeState> = admin_targets(state, force_of(event))
                .into_iter()
                .filter(|s| s != to)
                .collect();
            prop_assert_eq!(valid, &reachable);
            prop_assert!(!valid.contains(to));
            if let Event::SetState { to: asked, force } = event {
                prop_assert_eq!(to, asked);
                prop_assert!(!allowed(state, *to, Trigger::Admin, *force));
                prop_assert!(!valid.contains(to));
            }
        }
        Refusal::MaxInstallAttempts { max } => {
            let patch = Event::SetState {
                to: Pending,
                force: false,
            };
            prop_assert_eq!(event, &patch);
            prop_assert_eq!(state, InstallFailed);
            prop_assert_eq!(*max, policy.max_install_attempts);
            prop_assert!(node.install_attempts >= *max);
        }
        Refusal::NotFailed { phase } => {
            let retry = matches!(event, Event::Retry { .. });
            prop_assert!(retry, "{refusal} for {event:?}");
            prop_assert!(!matches!(state, InstallFailed | DeprovisionFailed));
            prop_assert_eq!(*phase, state.phase());
        }
        Refusal::MachineNotReady => {
            let retry = Event::Retry {
                machine_ready: false,
            };
            prop_assert_eq!(event, &retry);
            prop_assert_eq!(state, InstallFailed);
        }
        Refusal::ControlPlane => prop_assert!(node.control_plane),
        Refusal::UnexpectedReport { command_id, .. } => {
            let Event::Job {
                command_id: c, job, ..
            } = event
            else {
                return Err(TestCaseError::fail(format!("{refusal} for {event:?}")));
            };
            prop_assert_eq!(command_id, c);
            let own = node.job.as_ref().map(|j| (&j.command_id, j.kind));
            prop_assert_ne!(own, Some((c, *job)));
        }
        Refusal::Inconsistent {
            state: s,
            job,
            status,
        } => {
            let Event::Job {
                job: j, status: st, ..
            } = event
            else {
                return Err(TestCaseError::fail(format!("{refusal} for {event:?}")));
            };
            prop_assert_eq!((*s, *job, *status), (state, *j, *st));
        }
    }
    Ok(())
}

/// What the controller does with an outcome: it records the job it sends under a new
/// id (the tests reuse the two of [`POOL`], so later reports may be late ones).
fn as_the_controller_would(out: &Outcome, sent: &mut usize) -> Lifecycle {
    let mut node = out.node.clone();
    for effect in &out.effects {
        if let Effect::SendJob(kind) = effect {
            *sent += 1;
            node.job = Some(JobRef {
                command_id: CommandId::new(POOL[*sent % POOL.len()]).unwrap(),
                kind: *kind,
            });
        }
    }
    node
}

proptest! {
    #![proptest_config(config())]

    /// From any node, under any policy, any sequence of events: each step keeps the
    /// promises above, and a refused event leaves the node as it was.
    #[test]
    fn any_sequence_from_any_node_keeps_to_the_table(
        start in any_node(),
        policy in any_policy(),
        steps in prop::collection::vec(any_step(), 1..40),
    ) {
        let mut node = start;
        let mut sent = 0;
        for step in steps {
            let event = event_of(step, &node);
            let result = apply(&node, event.clone(), &policy);
            check(&node, &event, &policy, &result)?;
            if let Ok(out) = &result {
                node = as_the_controller_would(out, &mut sent);
            }
        }
    }

    /// From where nodes start (`registered`, `discovered`), under one policy: what every
    /// reachable node also holds to.
    #[test]
    fn reachable_nodes_keep_their_job_and_counters_in_step(
        registered in any::<bool>(),
        max_install_attempts in 1u32..5,
        max_recovery_attempts in 0u32..4,
        auto_activate in any::<bool>(),
        reboot_after in any::<bool>(),
        steps in prop::collection::vec((any_step(), any::<u8>()), 1..40),
    ) {
        let policy = Policy {
            max_install_attempts,
            auto_activate,
            reboot_after,
            max_recovery_attempts,
        };
        let mut node = Lifecycle::new(if registered { Registered } else { Discovered });
        let mut sent = 0;
        for (step, toggle) in steps {
            // The operator flips `control_plane` now and then (PATCH /nodes/{node}).
            if toggle < 16 {
                node.control_plane = !node.control_plane;
            }
            let event = event_of(step, &node);
            let result = apply(&node, event.clone(), &policy);
            check(&node, &event, &policy, &result)?;
            let Ok(out) = result else { continue };
            node = as_the_controller_would(&out, &mut sent);

            // The job, if any, is of the kind the state runs.
            let kind = node.job.as_ref().map(|j| j.kind);
            match node.state {
                Pending | Installing | InstallFailed => {
                    prop_assert!(kind.is_none() || kind == Some(JobKind::Install), "{node:?}");
                }
                Deprovisioning | DeprovisionFailed => {
                    prop_assert!(kind.is_none() || kind == Some(JobKind::Deprovision), "{node:?}");
                    prop_assert!(node.after_deprovision.is_some(), "{node:?}");
                }
                _ => prop_assert_eq!(kind, None, "{:?}", node),
            }
            // The counters stay within the policy's limits.
            prop_assert!(node.recovery_attempts <= policy.max_recovery_attempts);
            if node.state == Installing {
                prop_assert!(node.install_attempts < policy.max_install_attempts, "{node:?}");
            }
        }
    }
}

/// Found by the properties above: a refusal that names as valid the very target it
/// refuses. `manage` on an `install_failed` node answers "cannot move a install_failed
/// node to pending; valid targets: pending" (the retry path is valid, `manage` is not);
/// `unmanage` on `deprovision_failed` does the same with `deprovisioning`.
#[test]
fn a_refusal_never_lists_the_refused_target_as_valid() {
    let p = Policy::default();
    for (state, event) in [
        (InstallFailed, Event::Manage),
        (DeprovisionFailed, Event::Unmanage),
    ] {
        let Err(Refusal::Invalid { to, valid, .. }) = apply(&Lifecycle::new(state), event, &p)
        else {
            panic!("{state}: refused as invalid")
        };
        assert!(
            !valid.contains(&to),
            "{state}: refused {to}, yet lists it as valid: {valid:?}"
        );
    }
}

/// Found by the properties above: a failed install on a node whose count is at
/// `u32::MAX` overflows `install_attempts += 1` (a panic in a debug build; in a release
/// build the count wraps to 0 and the node keeps retrying below the limit). A stored
/// record with that count gets there; a real node would need 4 billion failures first.
#[test]
fn an_install_failure_at_the_largest_count_does_not_overflow() {
    let node = Lifecycle {
        install_attempts: u32::MAX,
        job: Some(JobRef {
            command_id: CommandId::new("c-1").unwrap(),
            kind: JobKind::Install,
        }),
        ..Lifecycle::new(Pending)
    };
    let failed = Event::Job {
        command_id: CommandId::new("c-1").unwrap(),
        job: JobKind::Install,
        status: JobStatus::Failed,
        error: None,
    };
    let out = apply(&node, failed, &Policy::default()).unwrap();
    assert_eq!(out.node.state, InstallFailed);
    assert!(
        out.node.install_attempts >= 3,
        "{}",
        out.node.install_attempts
    );
}
