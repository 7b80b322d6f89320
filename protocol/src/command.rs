//! Controller → agent commands on `{p}/nodes/{id}/commands` (DESIGN section 5), and the
//! install plans they carry.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// What a command asks the agent to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Install,
    Deprovision,
    Reboot,
    Poweroff,
    /// Stop the running job and its processes.
    Cancel,
    RefreshInventory,
    /// Publish birth and inventory again.
    Rebirth,
    /// A Wake-on-LAN packet the controller sends itself. Never published to an agent
    /// (an agent refuses one); it exists so a wake is an operation like the others.
    Wake,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Install => "install",
            CommandKind::Deprovision => "deprovision",
            CommandKind::Reboot => "reboot",
            CommandKind::Poweroff => "poweroff",
            CommandKind::Cancel => "cancel",
            CommandKind::RefreshInventory => "refresh_inventory",
            CommandKind::Rebirth => "rebirth",
            CommandKind::Wake => "wake",
        }
    }

    /// The job a command starts, for `install` and `deprovision`.
    pub fn job(self) -> Option<JobKind> {
        match self {
            CommandKind::Install => Some(JobKind::Install),
            CommandKind::Deprovision => Some(JobKind::Deprovision),
            _ => None,
        }
    }

    /// The power action a command asks the agent to run, for `reboot` and `poweroff`.
    pub fn power(self) -> Option<JobKind> {
        match self {
            CommandKind::Reboot => Some(JobKind::Reboot),
            CommandKind::Poweroff => Some(JobKind::Poweroff),
            _ => None,
        }
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a `job` report is about: a plan the agent runs (`install`, `deprovision`), or
/// the power action it runs for a `reboot` or `poweroff` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Install,
    Deprovision,
    Reboot,
    Poweroff,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Install => "install",
            JobKind::Deprovision => "deprovision",
            JobKind::Reboot => "reboot",
            JobKind::Poweroff => "poweroff",
        }
    }

    /// A power action (`reboot`, `poweroff`), not a plan.
    pub fn is_power(self) -> bool {
        matches!(self, JobKind::Reboot | JobKind::Poweroff)
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
    pub command_id: String,
    pub kind: CommandKind,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// For `install` and `deprovision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// For `cancel`: the command whose job to stop (any running job when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
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
        let id_ok = !self.command_id.is_empty()
            && self.command_id.len() <= 64
            && self
                .command_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !id_ok {
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
            command_id: "bad id!".into(),
            kind: CommandKind::Reboot,
            issued_at: Timestamp::from_unix_millis(0),
            expires_at: Timestamp::from_unix_millis(0),
            plan: None,
            target: None,
        };
        assert_eq!(c.validate(), Err(CommandError::BadId));
        let c = Command {
            command_id: "c-1".into(),
            kind: CommandKind::Install,
            plan: None,
            ..c
        };
        assert!(matches!(
            c.validate(),
            Err(CommandError::MissingPlan { .. })
        ));
    }
}
