//! Campaigns: one action over many nodes, run by the engine with a rollout limit and
//! abort rules (DESIGN section 9). The request, the views the API and the CLI share, and
//! the rules that judge a campaign's progress, which are pure functions here so the
//! engine and the tests agree on them.

use serde::{Deserialize, Serialize};

use crate::command::CommandId;
use crate::lifecycle::NodeState;
use crate::names::names;
use crate::{NodeId, Timestamp};

names! {
    /// What a campaign does to each node.
    pub enum CampaignAction as "campaign action" {
        /// Install with `plan` (or the default plan), from `discovered`.
        Manage = "manage",
        /// Deprovision back to `discovered`.
        Unmanage = "unmanage",
        /// Retry a failed install or deprovision.
        Retry = "retry",
        Reboot = "reboot",
        Poweroff = "poweroff",
        /// Reinstall an `active` node.
        Reprovision = "reprovision",
    }
}

names! {
    /// Where a campaign is.
    pub enum CampaignState as "campaign state" {
        /// Starting nodes as the rollout allows.
        Running = "running",
        /// By hand, or by an abort rule (`reason` says which): no node starts, those in
        /// flight finish.
        Paused = "paused",
        /// Every node succeeded, failed or was skipped.
        Completed = "completed",
        /// Cancelled while an abort rule held it paused.
        Aborted = "aborted",
        /// Cancelled by hand: no node starts, those in flight finish.
        Cancelled = "cancelled",
    }
}

impl CampaignState {
    /// No node will start any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CampaignState::Completed | CampaignState::Aborted | CampaignState::Cancelled
        )
    }
}

names! {
    /// What became of one node of a campaign.
    pub enum Outcome as "outcome" {
        /// Not started yet.
        Pending = "pending",
        /// Started; the action is under way.
        InFlight = "in_flight",
        Succeeded = "succeeded",
        Failed = "failed",
        /// The node could not take the action (its state, control plane, gone); the
        /// message is the refusal.
        Skipped = "skipped",
    }
}

/// Which nodes a campaign covers: the node list's filters, all of which must match, or
/// an explicit list of names or ids (then the filters must be empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// `key=value` or `key`; every one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label: Vec<String>,
    /// Any of these states.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<NodeState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Case-insensitive text in the name, hostname, id, a MAC or an IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Node names or ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

impl Selector {
    /// Whether it uses any of the list's filters (as opposed to `nodes`).
    pub fn has_filters(&self) -> bool {
        !self.label.is_empty()
            || !self.state.is_empty()
            || self.group.is_some()
            || self.search.is_some()
            || self.online.is_some()
    }
}

/// How the reason of a campaign an abort rule paused begins (`--wait` and cancel look
/// for it).
pub const ABORT_RULE: &str = "abort rule";

/// When a campaign stops itself. It is paused, with the rule as its reason; nodes in
/// flight finish.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AbortRules {
    /// Pause when failed / (succeeded + failed) reaches this (0 < ratio <= 1) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_ratio: Option<f64>,
    /// ... once at least this many nodes have finished. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_executed: Option<u32>,
    /// Pause when this many nodes have failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
}

impl AbortRules {
    /// The rule `counts` break, as a reason, if any. `since` is what was counted when
    /// the campaign was last resumed: a resumed campaign is judged on what came after.
    pub fn broken(&self, counts: &CampaignCounts, since: &CampaignCounts) -> Option<String> {
        let failed = counts.failed.saturating_sub(since.failed);
        let executed =
            (counts.succeeded + counts.failed).saturating_sub(since.succeeded + since.failed);
        if let Some(max) = self.max_failures {
            if failed >= max {
                return Some(format!(
                    "{ABORT_RULE}: {failed} nodes failed (max_failures {max})"
                ));
            }
        }
        if let Some(ratio) = self.failure_ratio {
            let min = self.min_executed.unwrap_or(1).max(1);
            if executed >= min && f64::from(failed) >= ratio * f64::from(executed) {
                return Some(format!(
                    "{ABORT_RULE}: {failed} of {executed} finished nodes failed (failure_ratio {ratio} after min_executed {min})"
                ));
            }
        }
        None
    }
}

/// `POST /api/v1/campaigns`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    pub action: CampaignAction,
    /// For `manage`: the plan (default: the controller's default plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    pub selector: Selector,
    /// Nodes in flight at once. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Nodes started in any minute. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_minute: Option<u32>,
    #[serde(default)]
    pub abort: AbortRules,
    /// `reprovision` with `force` (admin only): as PATCH state's force.
    #[serde(default)]
    pub force: bool,
}

/// The most nodes a campaign may have in flight, and start per minute.
pub const MAX_CONCURRENT: u32 = 10_000;
/// The most nodes one campaign covers.
pub const MAX_NODES: usize = 100_000;
pub const DEFAULT_CONCURRENT: u32 = 10;

impl CampaignRequest {
    /// What is wrong with the request's numbers and their combination, if anything.
    pub fn check(&self) -> Result<(), String> {
        if let Some(n) = self.max_concurrent {
            if n == 0 || n > MAX_CONCURRENT {
                return Err(format!(
                    "max_concurrent must be between 1 and {MAX_CONCURRENT}"
                ));
            }
        }
        if let Some(n) = self.max_per_minute {
            if n == 0 || n > MAX_CONCURRENT {
                return Err(format!(
                    "max_per_minute must be between 1 and {MAX_CONCURRENT}"
                ));
            }
        }
        if let Some(r) = self.abort.failure_ratio {
            if !(r > 0.0 && r <= 1.0) {
                return Err("abort.failure_ratio must be more than 0 and at most 1".into());
            }
        }
        if self.abort.min_executed.is_some() && self.abort.failure_ratio.is_none() {
            return Err("abort.min_executed needs abort.failure_ratio".into());
        }
        if self.abort.max_failures == Some(0) {
            return Err("abort.max_failures must be at least 1".into());
        }
        if self.plan.is_some() && self.action != CampaignAction::Manage {
            return Err(format!("plan is for manage, not {}", self.action));
        }
        if self.force && self.action != CampaignAction::Reprovision {
            return Err(format!("force is for reprovision, not {}", self.action));
        }
        if self.selector.has_filters() && !self.selector.nodes.is_empty() {
            return Err("selector: give filters or nodes, not both".into());
        }
        if !self.selector.has_filters() && self.selector.nodes.is_empty() {
            return Err("selector: give at least one filter or node (an empty selector would take the whole fleet)".into());
        }
        if self.selector.nodes.len() > MAX_NODES {
            return Err(format!("selector: at most {MAX_NODES} nodes"));
        }
        Ok(())
    }
}

/// How many of a campaign's nodes are where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CampaignCounts {
    pub total: u32,
    pub pending: u32,
    pub in_flight: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub skipped: u32,
}

impl CampaignCounts {
    /// Nodes that ended: succeeded, failed or skipped.
    pub fn done(&self) -> u32 {
        self.succeeded + self.failed + self.skipped
    }

    pub fn add(&mut self, outcome: Outcome) {
        *self.slot(outcome) += 1;
    }

    pub fn remove(&mut self, outcome: Outcome) {
        let slot = self.slot(outcome);
        *slot = slot.saturating_sub(1);
    }

    fn slot(&mut self, outcome: Outcome) -> &mut u32 {
        match outcome {
            Outcome::Pending => &mut self.pending,
            Outcome::InFlight => &mut self.in_flight,
            Outcome::Succeeded => &mut self.succeeded,
            Outcome::Failed => &mut self.failed,
            Outcome::Skipped => &mut self.skipped,
        }
    }
}

/// A campaign, as the API shows it (and as `metalbus/v1/campaigns/{id}` carries it,
/// retained).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CampaignView {
    pub id: String,
    pub action: CampaignAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(default)]
    pub force: bool,
    pub selector: Selector,
    pub max_concurrent: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_minute: Option<u32>,
    pub abort: AbortRules,
    pub state: CampaignState,
    /// Why it is paused, aborted or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub counts: CampaignCounts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

/// One node of a campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CampaignNodeView {
    pub node: NodeId,
    pub name: String,
    pub outcome: Outcome,
    /// Why it failed or was skipped; what it reached when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The reboot or poweroff operation it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<CommandId>,
}

/// `GET /api/v1/campaigns/{id}`: the campaign, and one page of its nodes in their order
/// (`pagination` pages the nodes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CampaignDetail {
    pub data: CampaignWithNodes,
    pub pagination: crate::api::Pagination,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CampaignWithNodes {
    #[serde(flatten)]
    pub campaign: CampaignView,
    pub nodes: Vec<CampaignNodeView>,
}

/// How an in-flight node's action ended, judged from the node's state (or, for reboot
/// and poweroff, from its operation): `None` while it is still under way. A `retry` of a
/// failed deprovision is judged as `unmanage`.
pub fn judge(action: CampaignAction, state: NodeState) -> Option<Result<(), String>> {
    use NodeState::*;
    let left = |s: NodeState| Some(Err(format!("the node left the action: it is {s}")));
    match action {
        CampaignAction::Manage | CampaignAction::Retry | CampaignAction::Reprovision => match state
        {
            Pending | Installing | Reprovision => None,
            Installed | Active => Some(Ok(())),
            InstallFailed => Some(Err("the install failed".into())),
            other => left(other),
        },
        CampaignAction::Unmanage => match state {
            Deprovisioning => None,
            Discovered => Some(Ok(())),
            DeprovisionFailed => Some(Err("the deprovision failed".into())),
            other => left(other),
        },
        // Judged from the operation's status instead.
        CampaignAction::Reboot | CampaignAction::Poweroff => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(succeeded: u32, failed: u32) -> CampaignCounts {
        CampaignCounts {
            succeeded,
            failed,
            ..CampaignCounts::default()
        }
    }

    #[test]
    fn the_failure_ratio_waits_for_min_executed_and_counts_from_the_last_resume() {
        let rules = AbortRules {
            failure_ratio: Some(0.5),
            min_executed: Some(10),
            max_failures: None,
        };
        let none = CampaignCounts::default();
        assert_eq!(rules.broken(&counts(0, 9), &none), None);
        let why = rules.broken(&counts(4, 6), &none).unwrap();
        assert!(why.contains("6 of 10"), "{why}");
        assert_eq!(rules.broken(&counts(6, 4), &none), None);
        // Resumed at (4, 6): judged on what came after.
        assert_eq!(rules.broken(&counts(8, 8), &counts(4, 6)), None);
        assert!(rules.broken(&counts(8, 16), &counts(4, 6)).is_some());
    }

    #[test]
    fn max_failures_stops_at_the_count() {
        let rules = AbortRules {
            max_failures: Some(3),
            ..AbortRules::default()
        };
        let none = CampaignCounts::default();
        assert_eq!(rules.broken(&counts(100, 2), &none), None);
        assert!(rules
            .broken(&counts(0, 3), &none)
            .unwrap()
            .contains("max_failures 3"));
    }

    #[test]
    fn requests_are_checked_and_unknown_fields_refused() {
        let ok: CampaignRequest = serde_json::from_str(
            r#"{"action":"manage","plan":"demo","selector":{"label":["rack=r1"],"state":["discovered"]},
                "max_concurrent":20,"max_per_minute":120,"abort":{"failure_ratio":0.2,"min_executed":10}}"#,
        )
        .unwrap();
        ok.check().unwrap();
        for (body, why) in [
            (
                r#"{"action":"manage","selector":{"label":["a"]},"max_concurrent":0}"#,
                "max_concurrent",
            ),
            (r#"{"action":"manage","selector":{}}"#, "whole fleet"),
            (
                r#"{"action":"reboot","plan":"x","selector":{"nodes":["a"]}}"#,
                "plan is for manage",
            ),
            (
                r#"{"action":"manage","selector":{"nodes":["a"],"group":"g"}}"#,
                "not both",
            ),
            (
                r#"{"action":"manage","selector":{"nodes":["a"]},"abort":{"failure_ratio":1.5}}"#,
                "failure_ratio",
            ),
            (
                r#"{"action":"manage","selector":{"nodes":["a"]},"abort":{"failure_ratio":"NaN"}}"#,
                "",
            ),
            (
                r#"{"action":"manage","selector":{"nodes":["a"]},"force":true}"#,
                "force is for reprovision",
            ),
        ] {
            match serde_json::from_str::<CampaignRequest>(body) {
                Ok(req) => {
                    let err = req.check().unwrap_err();
                    assert!(err.contains(why), "{body}: {err}");
                }
                Err(_) => assert!(why.is_empty(), "{body} should parse"),
            }
        }
        for body in [
            r#"{"action":"explode","selector":{"nodes":["a"]}}"#,
            r#"{"action":"manage","selector":{"nodes":["a"]},"extra":1}"#,
            r#"{"action":"manage","selector":{"rack":"r1"}}"#,
            r#"{"action":"manage","selector":{"state":["nirvana"]}}"#,
        ] {
            assert!(
                serde_json::from_str::<CampaignRequest>(body).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn installs_end_installed_or_failed_and_unmanages_discovered() {
        use NodeState::*;
        assert_eq!(judge(CampaignAction::Manage, Installing), None);
        assert_eq!(judge(CampaignAction::Manage, Active), Some(Ok(())));
        assert!(judge(CampaignAction::Manage, InstallFailed)
            .unwrap()
            .is_err());
        assert!(judge(CampaignAction::Manage, Discovered).unwrap().is_err());
        assert_eq!(judge(CampaignAction::Unmanage, Discovered), Some(Ok(())));
        assert!(judge(CampaignAction::Retry, Discovered).unwrap().is_err());
        assert_eq!(judge(CampaignAction::Reboot, Active), None);
    }
}
