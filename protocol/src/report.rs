//! Agent → controller reports on `{p}/nodes/{id}/reports` (DESIGN section 4): command
//! acks and job events, each with the agent's `session` and a gap-free `seq`.

use serde::{Deserialize, Serialize};

use crate::command::{CommandId, Work};
use crate::names::names;
use crate::{NodeId, Timestamp};

names! {
    /// Where a job (or a power action) is.
    pub enum JobStatus as "job status" {
        Started = "started",
        Progress = "progress",
        Complete = "complete",
        Failed = "failed",
    }
}

/// What a report says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReportBody {
    /// The agent took (or refused) a command.
    Ack {
        command_id: CommandId,
        accepted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A job event: of a plan job, or of a power action.
    Job {
        command_id: CommandId,
        job: Work,
        status: JobStatus,
        /// Overall percent, 0..=100, for `progress`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        progress: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// For `failed`: what went wrong (the step's stderr tail, at most 4 KiB).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// One report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub session: String,
    pub seq: u64,
    pub ts: Timestamp,
    #[serde(flatten)]
    pub body: ReportBody,
    /// When present it must equal the topic's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
}

/// Why a report was refused beyond plain type errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("progress is {0}; it must be 0..=100")]
    Progress(u8),
    #[error("seq must be 1..={}", crate::MAX_COUNTER)]
    Seq,
    #[error("session must be 1..={} bytes", crate::MAX_SESSION_BYTES)]
    Session,
    #[error("{field} is {len} bytes; at most {max} are accepted")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

impl Report {
    /// Most bytes of a job's `error` (DESIGN: the last 4 KiB of stderr) plus some slack.
    pub const MAX_ERROR: usize = 8 * 1024;
    pub const MAX_TEXT: usize = 1024;

    pub fn validate(&self) -> Result<(), ReportError> {
        if !(1..=crate::MAX_COUNTER).contains(&self.seq) {
            return Err(ReportError::Seq);
        }
        if !(1..=crate::MAX_SESSION_BYTES).contains(&self.session.len()) {
            return Err(ReportError::Session);
        }
        let too_long = |field, s: &Option<String>, max| match s {
            Some(s) if s.len() > max => Err(ReportError::TooLong {
                field,
                len: s.len(),
                max,
            }),
            _ => Ok(()),
        };
        match &self.body {
            ReportBody::Ack { reason, .. } => too_long("reason", reason, Self::MAX_ERROR),
            ReportBody::Job {
                progress,
                step,
                message,
                error,
                ..
            } => {
                if let Some(p) = progress.filter(|p| *p > 100) {
                    return Err(ReportError::Progress(p));
                }
                too_long("step", step, Self::MAX_TEXT)?;
                too_long("message", message, Self::MAX_TEXT)?;
                too_long("error", error, Self::MAX_ERROR)
            }
        }
    }

    /// Makes the report one the controller accepts, whatever its text: each text field
    /// cut to its limit (an `error` keeps its end, where the cause usually is; the rest
    /// keep their start) and progress capped at 100. An agent queues nothing it could
    /// never deliver: a refused report would be sent again for ever.
    pub fn fit(&mut self) {
        match &mut self.body {
            ReportBody::Ack { reason, .. } => cut(reason, Self::MAX_ERROR, false),
            ReportBody::Job {
                progress,
                step,
                message,
                error,
                ..
            } => {
                if let Some(p) = progress.as_mut() {
                    *p = (*p).min(100);
                }
                cut(step, Self::MAX_TEXT, false);
                cut(message, Self::MAX_TEXT, false);
                cut(error, Self::MAX_ERROR, true);
            }
        }
    }

    pub fn command_id(&self) -> &CommandId {
        match &self.body {
            ReportBody::Ack { command_id, .. } | ReportBody::Job { command_id, .. } => command_id,
        }
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marked with `…`; keeps the
/// end when `tail`, else the start.
fn cut(text: &mut Option<String>, max: usize, tail: bool) {
    const MARK: &str = "…";
    let Some(t) = text.as_mut() else { return };
    if t.len() <= max {
        return;
    }
    let room = max - MARK.len();
    *t = if tail {
        let mut from = t.len() - room;
        while !t.is_char_boundary(from) {
            from += 1;
        }
        format!("{MARK}{}", &t[from..])
    } else {
        let mut to = room;
        while !t.is_char_boundary(to) {
            to -= 1;
        }
        format!("{}{MARK}", &t[..to])
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_design_examples_parse() {
        let lines = [
            r#"{"session":"5f0c","seq":12,"ts":"2026-01-01T00:00:00Z","kind":"ack","command_id":"c-9a","accepted":true}"#,
            r#"{"session":"5f0c","seq":13,"ts":"2026-01-01T00:00:00Z","kind":"ack","command_id":"c-9b","accepted":false,"reason":"unknown script 'wipe'"}"#,
            r#"{"session":"5f0c","seq":14,"ts":"2026-01-01T00:00:00Z","kind":"job","command_id":"c-9a","job":"install","status":"started"}"#,
            r#"{"session":"5f0c","seq":15,"ts":"2026-01-01T00:00:00Z","kind":"job","command_id":"c-9a","job":"install","status":"progress","progress":40,"step":"partition","message":"writing GPT"}"#,
            r#"{"session":"5f0c","seq":16,"ts":"2026-01-01T00:00:00Z","kind":"job","command_id":"c-9a","job":"install","status":"failed","step":"image","error":"sha256 mismatch"}"#,
            r#"{"session":"5f0c","seq":17,"ts":"2026-01-01T00:00:00Z","kind":"job","command_id":"c-9c","job":"reboot","status":"failed","error":"reboot command exited with status 3"}"#,
            r#"{"session":"5f0c","seq":18,"ts":"2026-01-01T00:00:00Z","kind":"job","command_id":"c-9d","job":"poweroff","status":"complete"}"#,
        ];
        for line in lines {
            let r: Report = serde_json::from_str(line).unwrap();
            r.validate().unwrap();
            let back: serde_json::Value = serde_json::to_value(&r).unwrap();
            let mut orig: serde_json::Value = serde_json::from_str(line).unwrap();
            // Timestamps come back with milliseconds; everything else is as sent.
            orig["ts"] = back["ts"].clone();
            assert_eq!(back, orig, "round trip of {line}");
        }
    }

    #[test]
    fn refuses_bad_reports() {
        for bad in [
            r#"{"session":"s","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"job","command_id":"c","job":"install","status":"exploded"}"#,
            r#"{"session":"s","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"dance","command_id":"c"}"#,
            r#"{"session":"s","ts":"2026-01-01T00:00:00Z","kind":"ack","command_id":"c","accepted":true}"#,
            r#"{"session":"s","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"job","command_id":"c","job":"dance","status":"started"}"#,
        ] {
            assert!(serde_json::from_str::<Report>(bad).is_err(), "{bad}");
        }
        let over: Report = serde_json::from_str(
            r#"{"session":"s","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"job","command_id":"c","job":"install","status":"progress","progress":101}"#,
        )
        .unwrap();
        assert_eq!(over.validate(), Err(ReportError::Progress(101)));
        let zero: Report = serde_json::from_str(
            r#"{"session":"s","seq":0,"ts":"2026-01-01T00:00:00Z","kind":"ack","command_id":"c","accepted":true}"#,
        )
        .unwrap();
        assert_eq!(zero.validate(), Err(ReportError::Seq));
        let ack = |session: &str, seq: u64| {
            serde_json::from_str::<Report>(&format!(
                r#"{{"session":"{session}","seq":{seq},"ts":"2026-01-01T00:00:00Z","kind":"ack","command_id":"c","accepted":true}}"#
            ))
            .unwrap()
        };
        assert_eq!(ack("s", u64::MAX).validate(), Err(ReportError::Seq));
        assert_eq!(
            ack("s", crate::MAX_COUNTER + 1).validate(),
            Err(ReportError::Seq)
        );
        assert_eq!(ack("s", crate::MAX_COUNTER).validate(), Ok(()));
        assert_eq!(
            ack(&"s".repeat(129), 1).validate(),
            Err(ReportError::Session)
        );
        assert_eq!(ack("", 1).validate(), Err(ReportError::Session));
    }

    #[test]
    fn fit_makes_any_report_one_the_controller_accepts() {
        let long = "é€".repeat(10_000);
        let mut ack: Report = serde_json::from_str(
            r#"{"session":"s","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"ack","command_id":"c","accepted":false}"#,
        )
        .unwrap();
        if let ReportBody::Ack { reason, .. } = &mut ack.body {
            *reason = Some(long.clone());
        }
        assert!(ack.validate().is_err());
        ack.fit();
        assert_eq!(ack.validate(), Ok(()));
        let mut job: Report = serde_json::from_str(
            r#"{"session":"s","seq":2,"ts":"2026-01-01T00:00:00Z","kind":"job","command_id":"c","job":"install","status":"failed","progress":250}"#,
        )
        .unwrap();
        if let ReportBody::Job {
            step,
            message,
            error,
            ..
        } = &mut job.body
        {
            *step = Some(long.clone());
            *message = Some(long.clone());
            *error = Some(format!("{long}the cause"));
        }
        job.fit();
        assert_eq!(job.validate(), Ok(()));
        let ReportBody::Job {
            error, progress, ..
        } = &job.body
        else {
            unreachable!()
        };
        assert_eq!(*progress, Some(100));
        assert!(error.as_deref().unwrap().ends_with("the cause"));
        assert!(serde_json::to_vec(&job).unwrap().len() < crate::MAX_PAYLOAD_BYTES);
        // Text within its limit is left alone.
        let mut short = Some("ok".to_string());
        cut(&mut short, 8, false);
        assert_eq!(short.as_deref(), Some("ok"));
    }
}
