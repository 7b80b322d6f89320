//! The node lifecycle state machine (DESIGN section 7.2).
//!
//! [`TRANSITIONS`] is the table, as data: the docs are printed from it ([`markdown`]) and
//! the tests hold the code to it. [`apply`] is the one function that moves a node: pure,
//! no clock, no I/O. It returns the transitions and the effects for the controller to
//! carry out (send a job, schedule a resend, cancel a job, record a warning), or a
//! [`Refusal`] that says why not and, for a bad target, which targets are valid.

use serde::{Deserialize, Serialize};

use crate::command::{CommandId, JobKind};
use crate::event::EventReason;
use crate::lifecycle::{NodeState, Phase};
use crate::names::names;
use crate::report::JobStatus;

use NodeState::*;

names! {
    /// Who caused a transition (`triggered_by` in the audit log).
    pub enum Trigger as "trigger" {
        Admin = "admin",
        System = "system",
        NodeReport = "node_report",
    }
}

/// One row of the transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub from: &'static [NodeState],
    pub to: NodeState,
    pub trigger: Trigger,
    /// Only with `force` (an admin override).
    pub force_only: bool,
    pub when: &'static str,
}

const NON_TERMINAL: &[NodeState] = &[
    Registered,
    Discovered,
    Pending,
    Installing,
    InstallFailed,
    Installed,
    Active,
    Reprovision,
    Migrating,
    Deprovisioning,
    DeprovisionFailed,
];

const fn rule(
    from: &'static [NodeState],
    to: NodeState,
    trigger: Trigger,
    when: &'static str,
) -> Rule {
    Rule {
        from,
        to,
        trigger,
        force_only: false,
        when,
    }
}

/// DESIGN section 7.2. Anything else is refused.
pub const TRANSITIONS: &[Rule] = &[
    rule(&[Registered], Discovered, Trigger::System, "agent matched"),
    rule(&[Registered], Error, Trigger::System, "discovery timeout"),
    rule(&[Discovered], Pending, Trigger::Admin, "manage"),
    rule(
        &[Pending],
        Installing,
        Trigger::NodeReport,
        "job `started`; resets install_attempts to 0",
    ),
    rule(
        &[Pending, Installing],
        InstallFailed,
        Trigger::System,
        "stuck past recovery",
    ),
    rule(
        &[Installing],
        Installed,
        Trigger::NodeReport,
        "job `complete`; resets counters",
    ),
    rule(
        &[Pending, Installing],
        InstallFailed,
        Trigger::NodeReport,
        "the max_install_attempts-th `failed` (or refused) install",
    ),
    rule(
        &[InstallFailed],
        Pending,
        Trigger::Admin,
        "`retry`, or PATCH state (force resets counters)",
    ),
    rule(
        &[Installed],
        Active,
        Trigger::System,
        "auto_activate: at once, or on the first birth after a `reboot_after` plan",
    ),
    rule(&[Installed], Active, Trigger::Admin, "activate"),
    rule(&[Active], Reprovision, Trigger::Admin, "reinstall"),
    rule(&[Active], Migrating, Trigger::Admin, "move workloads off"),
    rule(&[Reprovision], Pending, Trigger::System, "immediately"),
    rule(&[Migrating], Active, Trigger::Admin, "migration done"),
    rule(
        &[Installed, Active],
        Deprovisioning,
        Trigger::Admin,
        "`unmanage` or DELETE",
    ),
    rule(
        &[Deprovisioning],
        Discovered,
        Trigger::NodeReport,
        "job `complete` after `unmanage`",
    ),
    rule(
        &[Deprovisioning],
        Retired,
        Trigger::NodeReport,
        "job `complete` after DELETE",
    ),
    rule(
        &[Deprovisioning],
        DeprovisionFailed,
        Trigger::NodeReport,
        "job `failed`",
    ),
    rule(
        &[Deprovisioning],
        DeprovisionFailed,
        Trigger::System,
        "stuck past recovery",
    ),
    rule(
        &[DeprovisionFailed],
        Deprovisioning,
        Trigger::Admin,
        "`retry`",
    ),
    rule(&[Migrating], Error, Trigger::System, "stuck past recovery"),
    rule(
        NON_TERMINAL,
        Error,
        Trigger::System,
        "needs an operator, with a reason",
    ),
    rule(
        &[Error],
        Discovered,
        Trigger::Admin,
        "operator cleared the problem",
    ),
    rule(&[Error], Deprovisioning, Trigger::Admin, "unmanage"),
    rule(
        &[Registered, Discovered, Error],
        Retired,
        Trigger::Admin,
        "DELETE",
    ),
    Rule {
        from: &[
            Pending,
            Installing,
            InstallFailed,
            Installed,
            Active,
            Reprovision,
            Migrating,
            Deprovisioning,
            DeprovisionFailed,
        ],
        to: Retired,
        trigger: Trigger::Admin,
        force_only: true,
        when: "DELETE ?force=true: retire at once, without deprovisioning",
    },
];

/// Whether the table allows `from → to` for `trigger` (with `force` for overrides).
pub fn allowed(from: NodeState, to: NodeState, trigger: Trigger, force: bool) -> bool {
    TRANSITIONS.iter().any(|r| {
        r.trigger == trigger && r.to == to && r.from.contains(&from) && (force || !r.force_only)
    })
}

/// Where an admin may move a node from `from`.
pub fn admin_targets(from: NodeState, force: bool) -> Vec<NodeState> {
    NodeState::ALL
        .into_iter()
        .filter(|to| allowed(from, *to, Trigger::Admin, force))
        .collect()
}

/// What happens after a deprovision job completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AfterDeprovision {
    /// `unmanage`: the node goes back to `discovered`.
    Discover,
    /// DELETE: the node is retired.
    Retire,
}

/// The job a node is running (or was last sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobRef {
    pub command_id: CommandId,
    pub kind: JobKind,
}

/// The part of a node the state machine reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lifecycle {
    pub state: NodeState,
    pub install_attempts: u32,
    pub last_install_error: Option<String>,
    pub recovery_attempts: u32,
    pub control_plane: bool,
    pub after_deprovision: Option<AfterDeprovision>,
    /// The current job; reports for any other command are refused.
    pub job: Option<JobRef>,
}

impl Lifecycle {
    pub fn new(state: NodeState) -> Self {
        Self {
            state,
            install_attempts: 0,
            last_install_error: None,
            recovery_attempts: 0,
            control_plane: false,
            after_deprovision: None,
            job: None,
        }
    }

    fn reset_counters(&mut self) {
        self.install_attempts = 0;
        self.last_install_error = None;
        self.recovery_attempts = 0;
    }
}

/// Settings the machine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub max_install_attempts: u32,
    pub auto_activate: bool,
    /// The plan being installed reboots the host when done: activation then waits for
    /// the agent's next birth.
    pub reboot_after: bool,
    /// Recovery attempts for a stuck node before it moves to its failure state.
    pub max_recovery_attempts: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_install_attempts: 3,
            auto_activate: true,
            reboot_after: false,
            max_recovery_attempts: 3,
        }
    }
}

/// Something that happens to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `POST .../manage` (admin).
    Manage,
    /// `POST .../unmanage` (admin).
    Unmanage,
    /// `DELETE /nodes/{node}` (admin).
    Delete {
        force: bool,
    },
    /// `PATCH .../state` (admin).
    SetState {
        to: NodeState,
        force: bool,
    },
    /// `POST .../retry` (admin). `machine_ready`: agent online, heartbeat fresh,
    /// inventory present.
    Retry {
        machine_ready: bool,
    },
    /// A job report from the agent.
    Job {
        command_id: CommandId,
        job: JobKind,
        status: JobStatus,
        error: Option<String>,
    },
    /// The backoff after a failed install attempt has passed.
    InstallRetryDue,
    /// The agent's first birth after an install with `reboot_after`.
    Reborn,
    /// An unknown agent matched this pre-registered node.
    AgentMatched,
    DiscoveryTimeout,
    /// The state's timeout passed without progress (DESIGN 7.3): a recovery attempt
    /// (the job is cancelled and sent again), or past `max_recovery_attempts` the
    /// failure state.
    Stuck,
    /// Something needs an operator.
    Fault {
        reason: String,
    },
}

/// One state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: NodeState,
    pub to: NodeState,
    pub trigger: Trigger,
}

/// What the controller must do after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send the job's command (the controller picks the plan and the command id, and
    /// records it as the node's job).
    SendJob(JobKind),
    /// Send the install again after the backoff for this failed attempt.
    ScheduleInstallRetry { attempt: u32 },
    /// Stop a job on the agent.
    Cancel { command_id: CommandId },
    /// Record a Warning event (e.g. `InstallRetry`).
    Warning {
        reason: EventReason,
        message: String,
    },
    /// A stuck node's recovery attempt `attempt` of `max` was made.
    Recovery { attempt: u32, max: u32 },
}

/// The result of [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub node: Lifecycle,
    pub changes: Vec<Change>,
    pub effects: Vec<Effect>,
}

/// Why an event was refused. The texts of the retry errors are seed 000's, exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("cannot move a {from} node to {to}; valid targets: {}", list(valid))]
    Invalid {
        from: NodeState,
        to: NodeState,
        valid: Vec<NodeState>,
    },
    #[error("Max install attempts ({max}) exceeded. Use force=true to reset and retry.")]
    MaxInstallAttempts { max: u32 },
    #[error("node is not in a failed state, current phase: {phase}. Only ManagedFailed or UnmanagedFailed nodes can be retried")]
    NotFailed { phase: Phase },
    #[error("machine is not ready, please wait and try again")]
    MachineNotReady,
    #[error("control plane node cannot be unmanaged")]
    ControlPlane,
    #[error("report for command {command_id} does not match the node's job ({expected})")]
    UnexpectedReport {
        command_id: CommandId,
        expected: String,
    },
    #[error("a {status} report for a {job} job makes no sense in state {state}")]
    Inconsistent {
        state: NodeState,
        job: JobKind,
        status: JobStatus,
    },
}

fn list(states: &[NodeState]) -> String {
    if states.is_empty() {
        "none".into()
    } else {
        states
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Builds an outcome step by step, checking every change against the table.
struct Run {
    node: Lifecycle,
    changes: Vec<Change>,
    effects: Vec<Effect>,
}

impl Run {
    fn go(&mut self, to: NodeState, trigger: Trigger, force: bool) {
        let from = self.node.state;
        debug_assert!(
            allowed(from, to, trigger, force),
            "{from} -> {to} by {trigger}"
        );
        self.node.state = to;
        self.changes.push(Change { from, to, trigger });
        // Each state with a timeout gets its own recovery attempts.
        if matches!(to, Pending | Installing | Deprovisioning | Migrating) {
            self.node.recovery_attempts = 0;
        }
    }

    fn effect(&mut self, e: Effect) {
        self.effects.push(e);
    }

    fn done(self) -> Outcome {
        Outcome {
            node: self.node,
            changes: self.changes,
            effects: self.effects,
        }
    }

    /// Entering `pending` always sends the install.
    fn enter_pending(&mut self, trigger: Trigger, force: bool) {
        self.go(Pending, trigger, force);
        self.node.job = None;
        self.effect(Effect::SendJob(JobKind::Install));
    }

    fn enter_deprovisioning(&mut self, then: AfterDeprovision, force: bool) {
        self.cancel_job();
        self.go(Deprovisioning, Trigger::Admin, force);
        self.node.after_deprovision = Some(then);
        self.effect(Effect::SendJob(JobKind::Deprovision));
    }

    fn cancel_job(&mut self) {
        if let Some(job) = self.node.job.take() {
            self.effect(Effect::Cancel {
                command_id: job.command_id,
            });
        }
    }

    fn installed(&mut self, policy: &Policy) {
        self.go(Installed, Trigger::NodeReport, false);
        self.node.reset_counters();
        self.node.job = None;
        if policy.auto_activate && !policy.reboot_after {
            self.go(Active, Trigger::System, false);
        }
    }
}

/// Applies `event` to `node`.
pub fn apply(node: &Lifecycle, event: Event, policy: &Policy) -> Result<Outcome, Refusal> {
    let mut run = Run {
        node: node.clone(),
        changes: Vec::new(),
        effects: Vec::new(),
    };
    let state = node.state;
    // What `PATCH state` could reach, less the target this event cannot: `manage` on an
    // `install_failed` node must not answer "valid targets: pending".
    let invalid = |to: NodeState, force: bool| Refusal::Invalid {
        from: state,
        to,
        valid: admin_targets(state, force)
            .into_iter()
            .filter(|s| *s != to)
            .collect(),
    };
    match event {
        Event::Manage => match state {
            Discovered => run.enter_pending(Trigger::Admin, false),
            _ => return Err(invalid(Pending, false)),
        },
        Event::Unmanage => match state {
            Installed | Active | Error if node.control_plane => return Err(Refusal::ControlPlane),
            Installed | Active | Error => {
                run.enter_deprovisioning(AfterDeprovision::Discover, false)
            }
            _ => return Err(invalid(Deprovisioning, false)),
        },
        Event::Delete { force: true } if state != Retired => {
            run.cancel_job();
            run.go(Retired, Trigger::Admin, true);
        }
        Event::Delete { .. } => match state {
            Registered | Discovered | Error => run.go(Retired, Trigger::Admin, false),
            Installed | Active if node.control_plane => return Err(Refusal::ControlPlane),
            Installed | Active => run.enter_deprovisioning(AfterDeprovision::Retire, false),
            _ => return Err(invalid(Retired, false)),
        },
        Event::SetState { to, force } => set_state(&mut run, to, force, policy)?,
        Event::Retry { machine_ready } => match state {
            InstallFailed => {
                if !machine_ready {
                    return Err(Refusal::MachineNotReady);
                }
                run.cancel_job();
                run.node.reset_counters();
                run.enter_pending(Trigger::Admin, false);
            }
            DeprovisionFailed => {
                if node.control_plane {
                    return Err(Refusal::ControlPlane);
                }
                run.cancel_job();
                run.node.reset_counters();
                let then = node.after_deprovision.unwrap_or(AfterDeprovision::Discover);
                run.enter_deprovisioning(then, false);
            }
            _ => {
                return Err(Refusal::NotFailed {
                    phase: state.phase(),
                })
            }
        },
        Event::Job {
            command_id,
            job,
            status,
            error,
        } => on_job(&mut run, &command_id, job, status, error, policy)?,
        Event::InstallRetryDue => {
            // Only while still installing (or pending) and not already resent.
            if matches!(state, Pending | Installing) && run.node.job.is_none() {
                run.effect(Effect::SendJob(JobKind::Install));
            }
        }
        Event::Reborn => {
            if state == Installed && policy.auto_activate {
                run.go(Active, Trigger::System, false);
            }
        }
        Event::AgentMatched => match state {
            Registered => run.go(Discovered, Trigger::System, false),
            _ => return Err(invalid(Discovered, false)),
        },
        Event::DiscoveryTimeout => match state {
            Registered => run.go(Error, Trigger::System, false),
            _ => return Err(invalid(Error, false)),
        },
        Event::Stuck => {
            let (failed, resend) = match state {
                Pending | Installing => (InstallFailed, Some(JobKind::Install)),
                Deprovisioning => (DeprovisionFailed, Some(JobKind::Deprovision)),
                // No migration job yet: nothing to send again, only to count.
                Migrating => (Error, None),
                _ => return Err(invalid(Error, false)),
            };
            if node.recovery_attempts < policy.max_recovery_attempts {
                run.node.recovery_attempts += 1;
                if let Some(kind) = resend {
                    run.cancel_job();
                    run.effect(Effect::SendJob(kind));
                }
                run.effect(Effect::Recovery {
                    attempt: run.node.recovery_attempts,
                    max: policy.max_recovery_attempts,
                });
            } else {
                run.cancel_job();
                run.go(failed, Trigger::System, false);
            }
        }
        Event::Fault { .. } => {
            if state == Retired || state == Error {
                return Err(invalid(Error, false));
            }
            run.cancel_job();
            run.go(Error, Trigger::System, false);
        }
    }
    Ok(run.done())
}

/// `PATCH .../state`: any admin row of the table, with the side effects of the event it
/// stands for.
fn set_state(run: &mut Run, to: NodeState, force: bool, policy: &Policy) -> Result<(), Refusal> {
    let from = run.node.state;
    if from == InstallFailed
        && to == Pending
        && !force
        && run.node.install_attempts >= policy.max_install_attempts
    {
        return Err(Refusal::MaxInstallAttempts {
            max: policy.max_install_attempts,
        });
    }
    if !allowed(from, to, Trigger::Admin, force) {
        return Err(Refusal::Invalid {
            from,
            to,
            valid: admin_targets(from, force),
        });
    }
    if force {
        run.node.reset_counters();
    }
    match to {
        Pending => {
            run.cancel_job();
            run.enter_pending(Trigger::Admin, force);
        }
        Deprovisioning => {
            if run.node.control_plane && !force {
                return Err(Refusal::ControlPlane);
            }
            let then = match from {
                DeprovisionFailed => run
                    .node
                    .after_deprovision
                    .unwrap_or(AfterDeprovision::Discover),
                _ => AfterDeprovision::Discover,
            };
            run.enter_deprovisioning(then, force);
        }
        Reprovision => {
            run.go(Reprovision, Trigger::Admin, force);
            run.node.reset_counters();
            run.enter_pending(Trigger::System, false);
        }
        Retired | Discovered => {
            run.cancel_job();
            run.go(to, Trigger::Admin, force);
            run.node.after_deprovision = None;
        }
        _ => run.go(to, Trigger::Admin, force),
    }
    Ok(())
}

fn on_job(
    run: &mut Run,
    command_id: &CommandId,
    job: JobKind,
    status: JobStatus,
    error: Option<String>,
    policy: &Policy,
) -> Result<(), Refusal> {
    let state = run.node.state;
    match &run.node.job {
        Some(j) if j.command_id == *command_id && j.kind == job => {}
        other => {
            return Err(Refusal::UnexpectedReport {
                command_id: command_id.clone(),
                expected: other
                    .as_ref()
                    .map_or_else(|| "none".to_string(), |j| j.command_id.to_string()),
            })
        }
    }
    let inconsistent = || Refusal::Inconsistent { state, job, status };
    match (job, status, state) {
        (JobKind::Install, JobStatus::Started, Pending) => {
            run.go(Installing, Trigger::NodeReport, false);
            run.node.install_attempts = 0;
        }
        (JobKind::Install, JobStatus::Started | JobStatus::Progress, Pending | Installing) => {}
        (JobKind::Install, JobStatus::Complete, Installing) => run.installed(policy),
        // Failed while installing, or refused by the agent (a rejected ack) while pending.
        (JobKind::Install, JobStatus::Failed, Pending | Installing) => {
            run.node.install_attempts = run.node.install_attempts.saturating_add(1);
            let attempt = run.node.install_attempts;
            let error = error.unwrap_or_else(|| "install failed".to_string());
            run.node.last_install_error = Some(error.clone());
            if attempt >= policy.max_install_attempts {
                // The failed job stays the node's job, so `retry` can clean it up (seed
                // 000 step 4: a cancel for the failed job).
                run.go(InstallFailed, Trigger::NodeReport, false);
            } else {
                run.node.job = None;
                run.effect(Effect::Warning {
                    reason: EventReason::InstallRetry,
                    message: format!(
                        "install attempt {attempt}/{} failed: {error}",
                        policy.max_install_attempts
                    ),
                });
                run.effect(Effect::ScheduleInstallRetry { attempt });
            }
        }
        (JobKind::Deprovision, JobStatus::Started | JobStatus::Progress, Deprovisioning) => {}
        (JobKind::Deprovision, JobStatus::Complete, Deprovisioning) => {
            let to = match run.node.after_deprovision.take() {
                Some(AfterDeprovision::Retire) => Retired,
                _ => Discovered,
            };
            run.node.job = None;
            run.go(to, Trigger::NodeReport, false);
            run.node.reset_counters();
        }
        (JobKind::Deprovision, JobStatus::Failed, Deprovisioning) => {
            run.go(DeprovisionFailed, Trigger::NodeReport, false);
        }
        _ => return Err(inconsistent()),
    }
    Ok(())
}

/// `docs/LIFECYCLE.md`, printed from [`TRANSITIONS`] and the phase map.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Node lifecycle\n\n\
         Generated from `protocol/src/machine.rs` (`TRANSITIONS`); a test fails when this file\n\
         and the code differ. Regenerate with\n\
         `METALBUS_BLESS=1 cargo test -p metalbus-protocol lifecycle_doc`.\n\n\
         ## States and phases\n\n| state | phase |\n|---|---|\n",
    );
    for s in NodeState::ALL {
        out.push_str(&format!("| `{s}` | `{}` |\n", s.phase()));
    }
    out.push_str(
        "\n## Transitions\n\nAnything not listed is refused with the list of valid targets.\n\n\
         | from | to | triggered_by | when |\n|---|---|---|---|\n",
    );
    for r in TRANSITIONS {
        let from: Vec<String> = r.from.iter().map(|s| format!("`{s}`")).collect();
        let force = if r.force_only { " (force only)" } else { "" };
        out.push_str(&format!(
            "| {} | `{}` | {}{force} | {} |\n",
            from.join(", "),
            r.to,
            r.trigger,
            r.when
        ));
    }
    out.push_str("\n## Diagram\n\n```mermaid\nstateDiagram-v2\n");
    out.push_str("    [*] --> registered\n    [*] --> discovered\n");
    for r in TRANSITIONS {
        for from in r.from {
            let force = if r.force_only { ", force" } else { "" };
            out.push_str(&format!("    {from} --> {}: {}{force}\n", r.to, r.trigger));
        }
    }
    out.push_str("    retired --> [*]\n```\n");
    out
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
