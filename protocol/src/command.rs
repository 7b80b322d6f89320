//! Controller → agent commands on `{p}/nodes/{id}/commands` (DESIGN section 5), and the
//! install plans they carry.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::names;
use crate::Timestamp;

names! {
    /// What a command asks the agent to do.
    pub enum CommandKind as "command kind" {
        Install = "install",
        Deprovision = "deprovision",
        Reboot = "reboot",
        Poweroff = "poweroff",
        /// Stop the running job and its processes.
        Cancel = "cancel",
        RefreshInventory = "refresh_inventory",
        /// Publish birth and inventory again.
        Rebirth = "rebirth",
        /// A Wake-on-LAN packet the controller sends itself. Never published to an agent
        /// (an agent refuses one); it exists so a wake is an operation like the others.
        Wake = "wake",
    }
}

impl CommandKind {
    /// The plan job a command starts, for `install` and `deprovision`.
    pub fn job(self) -> Option<JobKind> {
        match self {
            CommandKind::Install => Some(JobKind::Install),
            CommandKind::Deprovision => Some(JobKind::Deprovision),
            _ => None,
        }
    }

    /// The power action a command asks the agent to run, for `reboot` and `poweroff`.
    pub fn power(self) -> Option<PowerAction> {
        match self {
            CommandKind::Reboot => Some(PowerAction::Reboot),
            CommandKind::Poweroff => Some(PowerAction::Poweroff),
            _ => None,
        }
    }
}

names! {
    /// A plan job: the agent runs a plan's steps from its `steps_dir`.
    pub enum JobKind as "job kind" {
        Install = "install",
        Deprovision = "deprovision",
    }
}

impl JobKind {
    /// The command that starts this job.
    pub fn command(self) -> CommandKind {
        match self {
            JobKind::Install => CommandKind::Install,
            JobKind::Deprovision => CommandKind::Deprovision,
        }
    }
}

names! {
    /// A power action: the agent runs the program its own config names for it
    /// (`reboot_command`, `poweroff_command`), never a plan.
    pub enum PowerAction as "power action" {
        Reboot = "reboot",
        Poweroff = "poweroff",
    }
}

impl PowerAction {
    /// The command that asks for this action.
    pub fn command(self) -> CommandKind {
        match self {
            PowerAction::Reboot => CommandKind::Reboot,
            PowerAction::Poweroff => CommandKind::Poweroff,
        }
    }
}

/// What a `job` report is about: a plan job, or a power action (of a `reboot` or
/// `poweroff` command, or the reboot after a `reboot_after` install).
///
/// On the wire both are the report's `job` field (`install`, `deprovision`, `reboot`,
/// `poweroff`); in code they are different types, so a power action can never be taken
/// for a plan job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Work {
    Job(JobKind),
    Power(PowerAction),
}

impl Work {
    pub fn as_str(self) -> &'static str {
        match self {
            Work::Job(j) => j.as_str(),
            Work::Power(p) => p.as_str(),
        }
    }
}

impl fmt::Display for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Work {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(Work::Job)
            .or_else(|_| s.parse().map(Work::Power))
            .map_err(|_: String| {
                let all: Vec<&str> = JobKind::ALL
                    .iter()
                    .map(|j| j.as_str())
                    .chain(PowerAction::ALL.iter().map(|p| p.as_str()))
                    .collect();
                crate::names::unknown("job", s, &all)
            })
    }
}

impl Serialize for Work {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Work {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::names::deserialize(d)
    }
}

/// A command's id: what acks, job reports, cancels and operations refer to.
///
/// The controller makes ids only through [`CommandId::new`], which checks them.
/// Deserializing does not check, on purpose: a command or a report that carries a bad id
/// must still be answerable (refused with a reason, receipted); [`Command::validate`]
/// refuses the id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct CommandId(String);

impl CommandId {
    pub const MAX_LEN: usize = 64;

    /// Checks `raw`: 1 to 64 of letters, digits, `-` and `_`.
    pub fn new(raw: impl Into<String>) -> Result<Self, CommandError> {
        let id = Self(raw.into());
        if id.is_valid() {
            Ok(id)
        } else {
            Err(CommandError::BadId)
        }
    }

    /// The id `c-` and `n` in 16 hex digits: valid by construction (the controller's
    /// ids are `numbered` with random `n`).
    pub fn numbered(n: u64) -> Self {
        Self(format!("c-{n:016x}"))
    }

    pub fn is_valid(&self) -> bool {
        !self.0.is_empty()
            && self.0.len() <= Self::MAX_LEN
            && self
                .0
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

names! {
    /// Where a command (an operation) is (`GET /api/v1/operations/{id}`).
    pub enum CommandStatus as "command status" {
        /// Recorded, not sent yet (a wake before its packets went out).
        Queued = "queued",
        Sent = "sent",
        Accepted = "accepted",
        Rejected = "rejected",
        Succeeded = "succeeded",
        Failed = "failed",
        Expired = "expired",
    }
}

impl CommandStatus {
    /// How far along the status is; a command's status only moves to a higher rank.
    pub fn rank(self) -> u8 {
        match self {
            CommandStatus::Queued => 0,
            CommandStatus::Sent => 1,
            CommandStatus::Accepted | CommandStatus::Rejected => 2,
            CommandStatus::Succeeded | CommandStatus::Failed | CommandStatus::Expired => 3,
        }
    }

    /// Whether the command is over, and whether it did what it asked.
    pub fn outcome(self) -> Option<bool> {
        match self {
            CommandStatus::Succeeded => Some(true),
            CommandStatus::Failed | CommandStatus::Rejected | CommandStatus::Expired => Some(false),
            CommandStatus::Queued | CommandStatus::Sent | CommandStatus::Accepted => None,
        }
    }
}

/// One step of a plan: a script from the agent's `steps_dir`, its arguments (passed as
/// `MB_ARG_<NAME>`), and how long it may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    pub script: String,
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    pub timeout_s: u64,
}

/// A named list of steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Plan {
    pub name: String,
    pub steps: Vec<Step>,
    /// Reboot the host once the job has completed and been receipted.
    #[serde(default)]
    pub reboot_after: bool,
}

/// Why a plan cannot be run, before anything runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("step {step:?}: script name {script:?} must be a plain file name (letters, digits, '.', '_', '-')")]
    BadScript { step: String, script: String },
    #[error("step {step:?}: argument name {arg:?} must be letters, digits and '_' (it becomes MB_ARG_{upper})", upper = arg.to_ascii_uppercase())]
    BadArg { step: String, arg: String },
    #[error("step {step:?}: timeout_s must be between 1 and {max}")]
    BadTimeout { step: String, max: u64 },
    #[error("step name {step:?} must be 1 to 64 characters without control characters")]
    BadStepName { step: String },
    #[error("a plan has at most {max} steps")]
    TooManySteps { max: usize },
}

impl Plan {
    /// Longest a single step may be allowed to run: one week.
    pub const MAX_TIMEOUT_S: u64 = 7 * 24 * 3600;
    pub const MAX_STEPS: usize = 256;

    /// Checks names and limits. Script names are plain file names, so a plan can never
    /// reach outside the agent's `steps_dir`.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.steps.len() > Self::MAX_STEPS {
            return Err(PlanError::TooManySteps {
                max: Self::MAX_STEPS,
            });
        }
        for s in &self.steps {
            if s.name.is_empty() || s.name.len() > 64 || s.name.chars().any(char::is_control) {
                return Err(PlanError::BadStepName {
                    step: s.name.clone(),
                });
            }
            let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if s.script.is_empty()
                || s.script.len() > 128
                || s.script.starts_with('.')
                || !s.script.chars().all(plain)
            {
                return Err(PlanError::BadScript {
                    step: s.name.clone(),
                    script: s.script.clone(),
                });
            }
            for arg in s.args.keys() {
                let ok = !arg.is_empty()
                    && arg.len() <= 64
                    && arg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return Err(PlanError::BadArg {
                        step: s.name.clone(),
                        arg: arg.clone(),
                    });
                }
            }
            if s.timeout_s == 0 || s.timeout_s > Self::MAX_TIMEOUT_S {
                return Err(PlanError::BadTimeout {
                    step: s.name.clone(),
                    max: Self::MAX_TIMEOUT_S,
                });
            }
        }
        Ok(())
    }
}

/// One command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Command {
    pub command_id: CommandId,
    pub kind: CommandKind,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// For `install` and `deprovision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// For `cancel`: the command whose job to stop (any running job when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<CommandId>,
}

/// Why a command is malformed, beyond plain type errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command_id must be 1 to 64 characters of letters, digits, '-' and '_'")]
    BadId,
    #[error("a {kind} command needs a plan")]
    MissingPlan { kind: CommandKind },
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl Command {
    pub fn validate(&self) -> Result<(), CommandError> {
        if !self.command_id.is_valid() {
            return Err(CommandError::BadId);
        }
        match (self.kind.job(), &self.plan) {
            (Some(_), None) => Err(CommandError::MissingPlan { kind: self.kind }),
            (Some(_), Some(plan)) => Ok(plan.validate()?),
            (None, _) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(script: &str) -> Step {
        Step {
            name: "s".into(),
            script: script.into(),
            args: BTreeMap::from([("url".to_string(), "http://x".to_string())]),
            timeout_s: 60,
        }
    }

    #[test]
    fn the_design_example_parses_and_validates() {
        let json = r#"{"command_id":"c-9a","kind":"install","issued_at":"2026-01-01T00:00:00Z",
            "expires_at":"2026-01-01T01:00:00Z",
            "plan":{"name":"ubuntu-24.04","steps":[
              {"name":"partition","script":"partition","args":{"disk":"/dev/sda"},"timeout_s":600},
              {"name":"image","script":"write-image","args":{"url":"http://x","sha256":"ab"},"timeout_s":1800}]}}"#;
        let c: Command = serde_json::from_str(json).unwrap();
        c.validate().unwrap();
        assert_eq!(c.kind, CommandKind::Install);
        assert_eq!(c.plan.as_ref().unwrap().steps[1].script, "write-image");
        let again: Command = serde_json::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn scripts_cannot_escape_the_steps_dir() {
        for bad in [
            "../bin/sh",
            "/bin/sh",
            "a/b",
            "",
            ".hidden",
            "rm -rf",
            "x;y",
        ] {
            let plan = Plan {
                name: "p".into(),
                steps: vec![step(bad)],
                reboot_after: false,
            };
            assert!(
                matches!(plan.validate(), Err(PlanError::BadScript { .. })),
                "{bad:?}"
            );
        }
        let ok = Plan {
            name: "p".into(),
            steps: vec![step("write-image")],
            reboot_after: false,
        };
        ok.validate().unwrap();
    }

    #[test]
    fn bad_args_timeouts_and_ids_are_refused() {
        let mut s = step("x");
        s.args.insert("bad-name".into(), "v".into());
        let plan = Plan {
            name: "p".into(),
            steps: vec![s],
            reboot_after: false,
        };
        assert!(matches!(plan.validate(), Err(PlanError::BadArg { .. })));
        let mut s = step("x");
        s.timeout_s = 0;
        let plan = Plan {
            name: "p".into(),
            steps: vec![s],
            reboot_after: false,
        };
        assert!(matches!(plan.validate(), Err(PlanError::BadTimeout { .. })));
        let c = Command {
            command_id: CommandId("bad id!".into()),
            kind: CommandKind::Reboot,
            issued_at: Timestamp::from_unix_millis(0),
            expires_at: Timestamp::from_unix_millis(0),
            plan: None,
            target: None,
        };
        assert_eq!(c.validate(), Err(CommandError::BadId));
        let c = Command {
            command_id: CommandId::new("c-1").unwrap(),
            kind: CommandKind::Install,
            plan: None,
            ..c
        };
        assert!(matches!(
            c.validate(),
            Err(CommandError::MissingPlan { .. })
        ));
    }

    #[test]
    fn the_job_field_tells_plan_jobs_from_power_actions() {
        let cases = [
            ("install", Work::Job(JobKind::Install)),
            ("deprovision", Work::Job(JobKind::Deprovision)),
            ("reboot", Work::Power(PowerAction::Reboot)),
            ("poweroff", Work::Power(PowerAction::Poweroff)),
        ];
        for (text, work) in cases {
            let json = format!("\"{text}\"");
            assert_eq!(serde_json::from_str::<Work>(&json).unwrap(), work);
            assert_eq!(serde_json::to_string(&work).unwrap(), json);
        }
        let err = serde_json::from_str::<Work>("\"dance\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("use one of: install, deprovision, reboot, poweroff"),
            "{err}"
        );
        for job in JobKind::ALL {
            assert_eq!(job.command().job(), Some(job));
        }
        for power in PowerAction::ALL {
            assert_eq!(power.command().power(), Some(power));
        }
    }

    #[test]
    fn command_ids_are_checked_when_made_and_not_when_read() {
        assert!(CommandId::new("c-0123abcd_x").is_ok());
        for bad in ["", "a b", "x".repeat(65).as_str(), "c/1", "ä"] {
            assert_eq!(CommandId::new(bad), Err(CommandError::BadId), "{bad:?}");
        }
        assert!(CommandId::numbered(u64::MAX).is_valid());
        assert_eq!(CommandId::numbered(10).as_str(), "c-000000000000000a");
        let read: CommandId = serde_json::from_str("\"not valid!\"").unwrap();
        assert!(!read.is_valid());
    }

    #[test]
    fn statuses_only_move_forward_and_know_their_outcome() {
        use CommandStatus::*;
        assert!(Queued.rank() < Sent.rank() && Sent.rank() < Accepted.rank());
        assert_eq!(Accepted.rank(), Rejected.rank());
        assert!(Accepted.rank() < Succeeded.rank());
        let outcomes: Vec<Option<bool>> = CommandStatus::ALL.map(|s| s.outcome()).to_vec();
        assert_eq!(
            outcomes,
            [
                None,
                None,
                None,
                Some(false),
                Some(true),
                Some(false),
                Some(false)
            ]
        );
    }
}
