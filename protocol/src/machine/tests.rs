//! The state machine against its own table, pair by pair, and the semantics of DESIGN
//! 7.2 and seeds 000/001 case by case.

use super::*;

fn cid(s: &str) -> CommandId {
    CommandId::new(s).unwrap()
}

fn node(state: NodeState) -> Lifecycle {
    Lifecycle::new(state)
}

/// A report about the node's own job, in `state`.
fn own_report(state: NodeState, kind: JobKind, status: JobStatus, p: &Policy) -> Outcome {
    apply(&with_job(state, kind), job(kind, status), p).unwrap()
}

fn with_job(state: NodeState, kind: JobKind) -> Lifecycle {
    Lifecycle {
        job: Some(JobRef {
            command_id: cid("c-1"),
            kind,
        }),
        ..Lifecycle::new(state)
    }
}

fn job(kind: JobKind, status: JobStatus) -> Event {
    Event::Job {
        command_id: cid("c-1"),
        job: kind,
        status,
        error: Some("boom".into()),
    }
}

fn policy() -> Policy {
    Policy::default()
}

/// Every event the machine knows, in every variant that matters.
fn all_events() -> Vec<(Event, bool)> {
    let mut v = vec![
        (Event::Manage, false),
        (Event::Unmanage, false),
        (Event::Delete { force: false }, false),
        (Event::Delete { force: true }, true),
        (
            Event::Retry {
                machine_ready: true,
            },
            false,
        ),
        (
            Event::Retry {
                machine_ready: false,
            },
            false,
        ),
        (Event::InstallRetryDue, false),
        (Event::Reborn, false),
        (Event::AgentMatched, false),
        (Event::DiscoveryTimeout, false),
        (Event::Stuck, false),
        (Event::Fault { reason: "x".into() }, false),
    ];
    for to in NodeState::ALL {
        v.push((Event::SetState { to, force: false }, false));
        v.push((Event::SetState { to, force: true }, true));
    }
    for kind in [JobKind::Install, JobKind::Deprovision] {
        for status in [
            JobStatus::Started,
            JobStatus::Progress,
            JobStatus::Complete,
            JobStatus::Failed,
        ] {
            v.push((job(kind, status), false));
        }
    }
    v
}

fn policies() -> Vec<Policy> {
    let mut v = Vec::new();
    for auto_activate in [true, false] {
        for reboot_after in [true, false] {
            v.push(Policy {
                max_install_attempts: 3,
                auto_activate,
                reboot_after,
                max_recovery_attempts: 3,
            });
        }
    }
    v
}

/// Nodes in every state, with and without a job, at and below the attempt limits.
fn all_nodes() -> Vec<Lifecycle> {
    let mut v = Vec::new();
    for s in NodeState::ALL {
        for attempts in [0, 2, 3] {
            for after in [
                None,
                Some(AfterDeprovision::Discover),
                Some(AfterDeprovision::Retire),
            ] {
                let mut plain = node(s);
                plain.install_attempts = attempts;
                plain.recovery_attempts = attempts;
                plain.after_deprovision = after;
                v.push(plain.clone());
                for kind in [JobKind::Install, JobKind::Deprovision] {
                    let mut n = with_job(s, kind);
                    n.install_attempts = attempts;
                    n.recovery_attempts = attempts;
                    n.after_deprovision = after;
                    v.push(n);
                }
            }
        }
    }
    v
}

#[test]
fn patch_state_walks_every_pair_in_both_directions() {
    for from in NodeState::ALL {
        for to in NodeState::ALL {
            for force in [false, true] {
                let result = apply(&node(from), Event::SetState { to, force }, &policy());
                let expected = allowed(from, to, Trigger::Admin, force);
                match result {
                    Ok(out) => {
                        assert!(expected, "{from} -> {to} (force {force}) was accepted");
                        assert_eq!(
                            out.changes[0],
                            Change {
                                from,
                                to,
                                trigger: Trigger::Admin
                            }
                        );
                        let landed = if to == Reprovision { Pending } else { to };
                        assert_eq!(out.node.state, landed, "{from} -> {to}");
                    }
                    Err(Refusal::Invalid { valid, .. }) => {
                        assert!(!expected, "{from} -> {to} (force {force}) was refused");
                        assert_eq!(valid, admin_targets(from, force));
                        assert!(!valid.contains(&to));
                    }
                    Err(other) => panic!("{from} -> {to}: unexpected {other:?}"),
                }
            }
        }
    }
}

#[test]
fn valid_targets_read_like_the_design() {
    assert_eq!(
        admin_targets(Active, false),
        vec![Reprovision, Migrating, Deprovisioning]
    );
    assert_eq!(
        admin_targets(Error, false),
        vec![Discovered, Deprovisioning, Retired]
    );
    assert_eq!(admin_targets(Retired, true), Vec::<NodeState>::new());
    let err = apply(
        &node(Active),
        Event::SetState {
            to: Pending,
            force: false,
        },
        &policy(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot move a active node to pending; valid targets: reprovision, migrating, deprovisioning"
    );
}

#[test]
fn every_change_the_code_makes_is_in_the_table_and_every_row_is_reachable() {
    let mut reached: Vec<(NodeState, NodeState, Trigger, bool)> = Vec::new();
    for n in all_nodes() {
        for (event, force) in all_events() {
            for p in policies() {
                let Ok(out) = apply(&n, event.clone(), &p) else {
                    continue;
                };
                let mut at = n.state;
                for c in &out.changes {
                    assert_eq!(c.from, at, "changes chain up: {n:?} {event:?}");
                    assert!(
                        allowed(c.from, c.to, c.trigger, force),
                        "{} -> {} by {} is not in the table ({event:?})",
                        c.from,
                        c.to,
                        c.trigger
                    );
                    reached.push((c.from, c.to, c.trigger, force));
                    at = c.to;
                }
                assert_eq!(out.node.state, at);
            }
        }
    }
    for r in TRANSITIONS {
        for from in r.from {
            let hit = reached.iter().any(|(f, t, tr, force)| {
                f == from && *t == r.to && *tr == r.trigger && (*force || !r.force_only)
            });
            assert!(
                hit,
                "no event makes {from} -> {} by {} ({})",
                r.to, r.trigger, r.when
            );
        }
    }
}

#[test]
fn retired_refuses_everything() {
    for (event, _) in all_events() {
        for n in [node(Retired), with_job(Retired, JobKind::Install)] {
            let out = apply(&n, event.clone(), &policy());
            assert!(
                out.as_ref().map_or(true, |o| o.changes.is_empty()),
                "{event:?} moved a retired node: {out:?}"
            );
        }
    }
}

#[test]
fn happy_path_manage_to_active() {
    let p = policy();
    let out = apply(&node(Discovered), Event::Manage, &p).unwrap();
    assert_eq!(out.node.state, Pending);
    assert_eq!(out.effects, vec![Effect::SendJob(JobKind::Install)]);
    let mut n = out.node;
    n.job = Some(JobRef {
        command_id: cid("c-1"),
        kind: JobKind::Install,
    });
    n.install_attempts = 2; // left over from before: `started` resets it
    let out = apply(&n, job(JobKind::Install, JobStatus::Started), &p).unwrap();
    assert_eq!(out.node.state, Installing);
    assert_eq!(out.node.install_attempts, 0);
    let out = apply(&out.node, job(JobKind::Install, JobStatus::Progress), &p).unwrap();
    assert!(out.changes.is_empty());
    let out = apply(&out.node, job(JobKind::Install, JobStatus::Complete), &p).unwrap();
    let triggers: Vec<_> = out.changes.iter().map(|c| (c.to, c.trigger)).collect();
    assert_eq!(
        triggers,
        vec![(Installed, Trigger::NodeReport), (Active, Trigger::System)]
    );
    assert_eq!(out.node.job, None);
}

#[test]
fn reboot_after_plans_activate_on_the_next_birth() {
    let p = Policy {
        reboot_after: true,
        ..policy()
    };
    let out = own_report(Installing, JobKind::Install, JobStatus::Complete, &p);
    assert_eq!(out.node.state, Installed);
    let out = apply(&out.node, Event::Reborn, &p).unwrap();
    assert_eq!(out.node.state, Active);
    assert_eq!(out.changes[0].trigger, Trigger::System);
    let off = Policy {
        auto_activate: false,
        ..policy()
    };
    let out = apply(&node(Installed), Event::Reborn, &off).unwrap();
    assert_eq!(out.node.state, Installed);
}

#[test]
fn failures_below_the_limit_retry_then_install_failed() {
    let p = policy();
    let mut n = with_job(Installing, JobKind::Install);
    for attempt in 1..=2 {
        let out = apply(&n, job(JobKind::Install, JobStatus::Failed), &p).unwrap();
        assert_eq!(out.node.state, Installing, "attempt {attempt}");
        assert_eq!(out.node.install_attempts, attempt);
        assert_eq!(out.node.last_install_error.as_deref(), Some("boom"));
        assert!(out.changes.is_empty());
        assert_eq!(
            out.effects,
            vec![
                Effect::Warning {
                    reason: EventReason::InstallRetry,
                    message: format!("install attempt {attempt}/3 failed: boom"),
                },
                Effect::ScheduleInstallRetry { attempt },
            ]
        );
        // The resend: the backoff passes and the controller sends a new command.
        let resend = apply(&out.node, Event::InstallRetryDue, &p).unwrap();
        assert_eq!(resend.effects, vec![Effect::SendJob(JobKind::Install)]);
        n = out.node;
        n.job = Some(JobRef {
            command_id: cid("c-1"),
            kind: JobKind::Install,
        });
    }
    let out = apply(&n, job(JobKind::Install, JobStatus::Failed), &p).unwrap();
    assert_eq!(out.node.state, InstallFailed);
    assert_eq!(out.node.install_attempts, 3);
    assert!(out.node.job.is_some(), "kept, so retry can cancel it");
    let retry = apply(
        &out.node,
        Event::Retry {
            machine_ready: true,
        },
        &p,
    )
    .unwrap();
    assert_eq!(
        retry.effects,
        vec![
            Effect::Cancel {
                command_id: cid("c-1")
            },
            Effect::SendJob(JobKind::Install)
        ]
    );
    assert_eq!(
        out.changes,
        vec![Change {
            from: Installing,
            to: InstallFailed,
            trigger: Trigger::NodeReport
        }]
    );
}

#[test]
fn the_retry_limit_needs_force_with_the_seed_message() {
    let mut n = node(InstallFailed);
    n.install_attempts = 3;
    let err = apply(
        &n,
        Event::SetState {
            to: Pending,
            force: false,
        },
        &policy(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Max install attempts (3) exceeded. Use force=true to reset and retry."
    );
    let out = apply(
        &n,
        Event::SetState {
            to: Pending,
            force: true,
        },
        &policy(),
    )
    .unwrap();
    assert_eq!(out.node.state, Pending);
    assert_eq!(out.node.install_attempts, 0);
    assert_eq!(out.effects, vec![Effect::SendJob(JobKind::Install)]);
}

#[test]
fn retry_checks_in_the_documented_order_with_seed_messages() {
    let p = policy();
    let err = apply(
        &node(Active),
        Event::Retry {
            machine_ready: false,
        },
        &p,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "node is not in a failed state, current phase: Managed. Only ManagedFailed or UnmanagedFailed nodes can be retried"
    );
    let err = apply(
        &node(InstallFailed),
        Event::Retry {
            machine_ready: false,
        },
        &p,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "machine is not ready, please wait and try again"
    );
    let mut cp = node(DeprovisionFailed);
    cp.control_plane = true;
    let err = apply(
        &cp,
        Event::Retry {
            machine_ready: true,
        },
        &p,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "control plane node cannot be unmanaged");

    // Success: cleanup (cancel the failed job), reset, transition, resend.
    let mut failed = with_job(InstallFailed, JobKind::Install);
    failed.install_attempts = 3;
    failed.last_install_error = Some("boom".into());
    let out = apply(
        &failed,
        Event::Retry {
            machine_ready: true,
        },
        &p,
    )
    .unwrap();
    assert_eq!(out.node.state, Pending);
    assert_eq!(out.node.state.phase(), Phase::Managing);
    assert_eq!(
        (out.node.install_attempts, out.node.last_install_error),
        (0, None)
    );
    assert_eq!(
        out.effects,
        vec![
            Effect::Cancel {
                command_id: cid("c-1")
            },
            Effect::SendJob(JobKind::Install)
        ]
    );
    let mut dep = node(DeprovisionFailed);
    dep.after_deprovision = Some(AfterDeprovision::Retire);
    let out = apply(
        &dep,
        Event::Retry {
            machine_ready: false,
        },
        &p,
    )
    .unwrap();
    assert_eq!(out.node.state, Deprovisioning);
    assert_eq!(out.node.after_deprovision, Some(AfterDeprovision::Retire));
}

#[test]
fn unmanage_and_delete_end_in_discovered_and_retired() {
    let p = policy();
    for (event, then, end) in [
        (Event::Unmanage, AfterDeprovision::Discover, Discovered),
        (
            Event::Delete { force: false },
            AfterDeprovision::Retire,
            Retired,
        ),
    ] {
        let out = apply(&node(Active), event, &p).unwrap();
        assert_eq!(out.node.state, Deprovisioning);
        assert_eq!(out.node.after_deprovision, Some(then));
        assert_eq!(out.effects, vec![Effect::SendJob(JobKind::Deprovision)]);
        let mut n = out.node;
        n.job = Some(JobRef {
            command_id: cid("c-1"),
            kind: JobKind::Deprovision,
        });
        let out = apply(&n, job(JobKind::Deprovision, JobStatus::Complete), &p).unwrap();
        assert_eq!(out.node.state, end);
        assert_eq!(out.changes[0].trigger, Trigger::NodeReport);
    }
    let out = own_report(Deprovisioning, JobKind::Deprovision, JobStatus::Failed, &p);
    assert_eq!(out.node.state, DeprovisionFailed);
    // Force retires at once and cancels the running job.
    let out = apply(
        &with_job(Installing, JobKind::Install),
        Event::Delete { force: true },
        &p,
    )
    .unwrap();
    assert_eq!(out.node.state, Retired);
    assert_eq!(
        out.effects,
        vec![Effect::Cancel {
            command_id: cid("c-1")
        }]
    );
}

#[test]
fn control_plane_nodes_are_not_unmanaged() {
    let mut n = node(Active);
    n.control_plane = true;
    for event in [Event::Unmanage, Event::Delete { force: false }] {
        assert_eq!(apply(&n, event, &policy()), Err(Refusal::ControlPlane));
    }
    assert_eq!(
        apply(&n, Event::Delete { force: true }, &policy())
            .unwrap()
            .node
            .state,
        Retired
    );
}

#[test]
fn reports_for_another_command_or_state_are_refused() {
    let p = policy();
    let n = with_job(Installing, JobKind::Install);
    let other = Event::Job {
        command_id: cid("c-old"),
        job: JobKind::Install,
        status: JobStatus::Complete,
        error: None,
    };
    assert!(matches!(
        apply(&n, other, &p),
        Err(Refusal::UnexpectedReport { .. })
    ));
    assert!(matches!(
        apply(
            &node(Discovered),
            job(JobKind::Install, JobStatus::Complete),
            &p
        ),
        Err(Refusal::UnexpectedReport { .. })
    ));
    let n = with_job(Pending, JobKind::Install);
    assert!(matches!(
        apply(&n, job(JobKind::Install, JobStatus::Complete), &p),
        Err(Refusal::Inconsistent { .. })
    ));
}

#[test]
fn reprovision_passes_straight_on_to_pending() {
    let out = apply(
        &node(Active),
        Event::SetState {
            to: Reprovision,
            force: false,
        },
        &policy(),
    )
    .unwrap();
    let path: Vec<_> = out.changes.iter().map(|c| (c.to, c.trigger)).collect();
    assert_eq!(
        path,
        vec![(Reprovision, Trigger::Admin), (Pending, Trigger::System)]
    );
    assert_eq!(out.effects, vec![Effect::SendJob(JobKind::Install)]);
}

#[test]
fn lifecycle_doc_matches_the_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/LIFECYCLE.md");
    let want = markdown();
    if std::env::var_os("METALBUS_BLESS").is_some() {
        std::fs::write(path, &want).unwrap();
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/LIFECYCLE.md is out of date; run METALBUS_BLESS=1 cargo test -p metalbus-protocol lifecycle_doc"
    );
}

#[test]
fn a_refused_install_counts_as_a_failed_attempt() {
    let p = policy();
    let mut n = with_job(Pending, JobKind::Install);
    n.install_attempts = 2;
    let out = apply(&n, job(JobKind::Install, JobStatus::Failed), &p).unwrap();
    assert_eq!(out.node.state, InstallFailed);
    assert_eq!(out.changes[0].trigger, Trigger::NodeReport);
    let out = own_report(Pending, JobKind::Install, JobStatus::Failed, &p);
    assert_eq!(out.node.state, Pending);
    assert_eq!(
        out.effects.last(),
        Some(&Effect::ScheduleInstallRetry { attempt: 1 })
    );
}

#[test]
fn a_stuck_node_is_recovered_then_failed_past_the_limit() {
    let p = policy();
    for (state, kind, failed) in [
        (Pending, Some(JobKind::Install), InstallFailed),
        (Installing, Some(JobKind::Install), InstallFailed),
        (
            Deprovisioning,
            Some(JobKind::Deprovision),
            DeprovisionFailed,
        ),
        (Migrating, None, Error),
    ] {
        let mut n = match kind {
            Some(k) => with_job(state, k),
            None => node(state),
        };
        for attempt in 1..=3 {
            let out = apply(&n, Event::Stuck, &p).unwrap();
            assert_eq!(out.node.state, state, "{state}: attempt {attempt}");
            assert!(out.changes.is_empty());
            assert_eq!(out.node.recovery_attempts, attempt);
            let mut expected = Vec::new();
            if let Some(k) = kind {
                if let Some(job) = &n.job {
                    expected.push(Effect::Cancel {
                        command_id: job.command_id.clone(),
                    });
                }
                expected.push(Effect::SendJob(k));
            }
            expected.push(Effect::Recovery { attempt, max: 3 });
            assert_eq!(out.effects, expected, "{state}: attempt {attempt}");
            n = out.node;
            if let Some(k) = kind {
                // The controller records the new command as the job.
                n.job = Some(JobRef {
                    command_id: cid(&format!("c-{attempt}")),
                    kind: k,
                });
            }
        }
        let out = apply(&n, Event::Stuck, &p).unwrap();
        assert_eq!(out.node.state, failed, "{state}");
        assert_eq!(
            out.changes,
            vec![Change {
                from: state,
                to: failed,
                trigger: Trigger::System
            }]
        );
        assert_eq!(
            out.node.recovery_attempts, 3,
            "kept for the operator to see"
        );
        assert_eq!(out.node.job, None, "the stuck job is cancelled");
    }
    for state in [
        Registered,
        Discovered,
        InstallFailed,
        Installed,
        Active,
        Error,
        Retired,
    ] {
        assert!(apply(&node(state), Event::Stuck, &p).is_err(), "{state}");
    }
}

#[test]
fn entering_a_timed_state_starts_its_recovery_count_afresh() {
    let mut n = with_job(Pending, JobKind::Install);
    n.recovery_attempts = 2;
    let out = apply(&n, job(JobKind::Install, JobStatus::Started), &policy()).unwrap();
    assert_eq!(out.node.state, Installing);
    assert_eq!(out.node.recovery_attempts, 0);
}
