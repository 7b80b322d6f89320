//! Prometheus series the controller exports at `GET /metrics` (DESIGN section 10).

use std::time::Duration;

use metalbus_protocol::campaign::{CampaignState, Outcome};
use metalbus_protocol::command::{CommandKind, CommandStatus};
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::machine::{Trigger, TRANSITIONS};
use metalbus_protocol::topic::NodeTopic;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: String,
}

/// A bound of docs/LIMITS.md whose hits are counted in
/// `metalbus_limit_hits_total{limit}` (every label exists at 0 from the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Reports held back for a gap, per node and in all.
    HeldReports,
    /// Early inventories and births waiting for their inventory.
    EarlyInventories,
    /// Enrolled nodes no operator has taken on yet.
    WaitingNodes,
    /// Stored events of one reason per node.
    EventsPerReason,
    /// Open event streams.
    EventStreams,
    /// A retained publish over what the front door lets a client retain there.
    RetainedSize,
    /// MQTT connections to the front door.
    MqttConnections,
    MqttMonitors,
    /// HTTP connections: one waits for a place.
    HttpConnections,
    /// HTTP clients too slow with their TLS handshake, headers or request.
    HttpSlowClients,
    /// HTTP heads or bodies over their size.
    HttpTooLarge,
}

impl Limit {
    pub const ALL: [Limit; 11] = [
        Limit::HeldReports,
        Limit::EarlyInventories,
        Limit::WaitingNodes,
        Limit::EventsPerReason,
        Limit::EventStreams,
        Limit::RetainedSize,
        Limit::MqttConnections,
        Limit::MqttMonitors,
        Limit::HttpConnections,
        Limit::HttpSlowClients,
        Limit::HttpTooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::HeldReports => "held_reports",
            Limit::EarlyInventories => "early_inventories",
            Limit::WaitingNodes => "waiting_nodes",
            Limit::EventsPerReason => "events_per_reason",
            Limit::EventStreams => "event_streams",
            Limit::RetainedSize => "retained_size",
            Limit::MqttConnections => "mqtt_connections",
            Limit::MqttMonitors => "mqtt_monitors",
            Limit::HttpConnections => "http_connections",
            Limit::HttpSlowClients => "http_slow_clients",
            Limit::HttpTooLarge => "http_too_large",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub from: String,
    pub to: String,
    pub triggered_by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

impl From<NodeState> for StateLabel {
    fn from(state: NodeState) -> Self {
        Self {
            state: state.as_str().into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub kind: String,
    pub result: String,
}

/// Buckets for how long nodes stay in a state: from a second to a month.
fn state_duration_histogram() -> Histogram {
    Histogram::new([
        1.0,
        5.0,
        15.0,
        30.0,
        60.0,
        300.0,
        900.0,
        1800.0,
        3600.0,
        14_400.0,
        43_200.0,
        86_400.0,
        259_200.0,
        604_800.0,
        2_592_000.0,
    ])
}

/// Every series, registered once.
pub struct Telemetry {
    registry: Registry,
    pub ingest_messages: Family<KindLabel, Counter>,
    pub ingest_rejected: Family<ReasonLabel, Counter>,
    pub ingest_stale: Counter,
    pub limit_hits: Family<LimitLabel, Counter>,
    pub reports_refused: Counter,
    pub reports_applied: Counter,
    pub reports_duplicate: Counter,
    pub reports_held_back: Counter,
    pub commands_resent: Counter,
    pub stuck_states: Family<StateLabel, Counter>,
    pub recovery_attempts: Family<StateLabel, Counter>,
    pub transitions: Family<TransitionLabels, Counter>,
    /// Time spent in a state, observed when a node leaves it.
    pub state_duration: Family<StateLabel, Histogram, fn() -> Histogram>,
    /// Commands by kind and what became of them (sent, accepted, ..., expired).
    pub commands: Family<CommandLabels, Counter>,
    pub nodes: Family<StateLabel, Gauge>,
    pub nodes_online: Gauge,
    pub store_commit_seconds: Histogram,
    pub store_errors: Counter,
    pub mqtt_publish_errors: Counter,
    /// Campaigns in the store, by state.
    pub campaigns: Family<CampaignStateLabel, Gauge>,
    /// Campaign nodes that ended, by outcome (succeeded, failed, skipped).
    pub campaign_nodes: Family<OutcomeLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CampaignStateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// The outcomes a campaign node ends with.
const ENDED: [Outcome; 3] = [Outcome::Succeeded, Outcome::Failed, Outcome::Skipped];

impl Telemetry {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let ingest_messages = Family::<KindLabel, Counter>::default();
        let ingest_rejected = Family::<ReasonLabel, Counter>::default();
        let ingest_stale = Counter::default();
        let limit_hits = Family::<LimitLabel, Counter>::default();
        for limit in Limit::ALL {
            let _ = limit_hits.get_or_create(&LimitLabel {
                limit: limit.as_str().into(),
            });
        }
        let reports_refused = Counter::default();
        let reports_applied = Counter::default();
        let reports_duplicate = Counter::default();
        let reports_held_back = Counter::default();
        let commands_resent = Counter::default();
        let stuck_states = Family::<StateLabel, Counter>::default();
        let recovery_attempts = Family::<StateLabel, Counter>::default();
        let transitions = Family::<TransitionLabels, Counter>::default();
        let state_duration: Family<StateLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(state_duration_histogram);
        let commands = Family::<CommandLabels, Counter>::default();
        let nodes = Family::<StateLabel, Gauge>::default();
        let nodes_online = Gauge::default();
        let store_commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        // Every label value known up front exists at 0, so a series is there (and
        // `rate()` and alerts work) before its first event.
        for kind in NodeTopic::FROM_AGENT
            .map(NodeTopic::as_str)
            .into_iter()
            .chain([NodeTopic::Enroll.as_str()])
        {
            let _ = ingest_messages.get_or_create(&KindLabel { kind: kind.into() });
        }
        for rule in TRANSITIONS {
            for from in rule.from {
                let _ = transitions.get_or_create(&TransitionLabels {
                    from: from.as_str().into(),
                    to: rule.to.as_str().into(),
                    triggered_by: rule.trigger.as_str().into(),
                });
            }
        }
        for state in NodeState::ALL {
            let _ = nodes.get_or_create(&state.into());
            let _ = state_duration.get_or_create(&state.into());
        }
        for kind in CommandKind::ALL {
            for result in CommandStatus::ALL {
                let _ = commands.get_or_create(&CommandLabels {
                    kind: kind.as_str().into(),
                    result: result.as_str().into(),
                });
            }
        }
        let store_errors = Counter::default();
        let mqtt_publish_errors = Counter::default();
        let campaigns = Family::<CampaignStateLabel, Gauge>::default();
        for state in CampaignState::ALL {
            let _ = campaigns.get_or_create(&CampaignStateLabel {
                state: state.as_str().into(),
            });
        }
        let campaign_nodes = Family::<OutcomeLabel, Counter>::default();
        for outcome in ENDED {
            let _ = campaign_nodes.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().into(),
            });
        }
        registry.register(
            "metalbus_campaigns",
            "Campaigns in the store, by state",
            campaigns.clone(),
        );
        registry.register(
            "metalbus_campaign_nodes",
            "Campaign nodes that ended, by outcome (succeeded, failed, skipped)",
            campaign_nodes.clone(),
        );
        registry.register(
            "metalbus_ingest_messages",
            "Messages received from agents, by topic kind",
            ingest_messages.clone(),
        );
        registry.register(
            "metalbus_ingest_rejected",
            "Agent messages refused, by reason",
            ingest_rejected.clone(),
        );
        registry.register(
            "metalbus_limit_hits",
            "Inputs dropped or refused at a bound of docs/LIMITS.md, by limit",
            limit_hits.clone(),
        );
        registry.register(
            "metalbus_ingest_stale",
            "Status messages ignored because a newer connection of the agent was seen",
            ingest_stale.clone(),
        );
        registry.register(
            "metalbus_reports_refused",
            "Agent reports or events the state machine refused (wrong job, impossible state)",
            reports_refused.clone(),
        );
        registry.register(
            "metalbus_reports_applied",
            "Agent reports applied, in seq order",
            reports_applied.clone(),
        );
        registry.register(
            "metalbus_reports_duplicates",
            "Agent reports dropped because they were already applied",
            reports_duplicate.clone(),
        );
        registry.register(
            "metalbus_reports_held_back",
            "Agent reports that arrived after a gap and waited",
            reports_held_back.clone(),
        );
        registry.register(
            "metalbus_commands_resent",
            "Commands published again because the agent had not acknowledged them",
            commands_resent.clone(),
        );
        registry.register(
            "metalbus_stuck_states",
            "Nodes found past their state's timeout without progress, by state",
            stuck_states.clone(),
        );
        registry.register(
            "metalbus_recovery_attempts",
            "Recovery attempts for stuck nodes (the job cancelled and sent again), by state",
            recovery_attempts.clone(),
        );
        registry.register(
            "metalbus_state_transitions",
            "Committed state transitions",
            transitions.clone(),
        );
        registry.register(
            "metalbus_state_duration_seconds",
            "Time nodes spent in a state, observed when they leave it",
            state_duration.clone(),
        );
        registry.register(
            "metalbus_commands",
            "Commands to agents by kind, and each status they reached (sent, accepted, rejected, succeeded, failed, expired)",
            commands.clone(),
        );
        registry.register("metalbus_nodes", "Nodes by state", nodes.clone());
        registry.register(
            "metalbus_nodes_online",
            "Nodes whose agent is online",
            nodes_online.clone(),
        );
        registry.register(
            "metalbus_store_commit_seconds",
            "Latency of redb write-transaction commits",
            store_commit_seconds.clone(),
        );
        registry.register(
            "metalbus_store_errors",
            "Store transactions that failed",
            store_errors.clone(),
        );
        registry.register(
            "metalbus_mqtt_publish_errors",
            "Controller publishes that could not be queued",
            mqtt_publish_errors.clone(),
        );
        Self {
            registry,
            ingest_messages,
            ingest_rejected,
            ingest_stale,
            limit_hits,
            reports_refused,
            reports_applied,
            reports_duplicate,
            reports_held_back,
            commands_resent,
            stuck_states,
            recovery_attempts,
            transitions,
            state_duration,
            commands,
            nodes,
            nodes_online,
            store_commit_seconds,
            store_errors,
            mqtt_publish_errors,
            campaigns,
            campaign_nodes,
        }
    }

    pub fn set_campaigns(&self, state: CampaignState, n: usize) {
        self.campaigns
            .get_or_create(&CampaignStateLabel {
                state: state.as_str().into(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn count_campaign_node(&self, outcome: Outcome) {
        self.campaign_nodes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().into(),
            })
            .inc();
    }

    pub fn count_message(&self, kind: &str) {
        self.ingest_messages
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn count_limit(&self, limit: Limit) {
        self.limit_hits
            .get_or_create(&LimitLabel {
                limit: limit.as_str().into(),
            })
            .inc();
    }

    pub fn count_reject(&self, reason: &str) {
        self.ingest_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn count_transition(&self, from: NodeState, to: NodeState, trigger: Trigger) {
        self.transitions
            .get_or_create(&TransitionLabels {
                from: from.as_str().into(),
                to: to.as_str().into(),
                triggered_by: trigger.as_str().into(),
            })
            .inc();
    }

    /// How many messages were refused for `reason` so far.
    pub fn rejected(&self, reason: &str) -> u64 {
        self.ingest_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .get()
    }

    /// Creates the series of every refusal reason and timed state at 0 (the ones the
    /// protocol alone fixes are made in [`Telemetry::new`]).
    pub fn start_at_zero(&self, reject_reasons: &[&str], timed_states: &[&str]) {
        for reason in reject_reasons {
            let _ = self.ingest_rejected.get_or_create(&ReasonLabel {
                reason: (*reason).into(),
            });
        }
        for state in timed_states {
            let label = StateLabel {
                state: (*state).into(),
            };
            let _ = self.stuck_states.get_or_create(&label);
            let _ = self.recovery_attempts.get_or_create(&label);
        }
    }

    pub fn observe_state_duration(&self, state: NodeState, seconds: f64) {
        self.state_duration
            .get_or_create(&state.into())
            .observe(seconds.max(0.0));
    }

    pub fn count_command(&self, kind: CommandKind, result: CommandStatus) {
        self.commands
            .get_or_create(&CommandLabels {
                kind: kind.as_str().into(),
                result: result.as_str().into(),
            })
            .inc();
    }

    pub fn observe_commit(&self, took: Duration) {
        self.store_commit_seconds.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_series_exists_at_zero_from_the_start() {
        let text = Telemetry::new().render();
        let mut rows = 0;
        for rule in TRANSITIONS {
            for from in rule.from {
                let series = format!(
                    "metalbus_state_transitions_total{{from=\"{}\",to=\"{}\",triggered_by=\"{}\"}} 0",
                    from.as_str(),
                    rule.to.as_str(),
                    rule.trigger.as_str()
                );
                assert!(text.contains(&series), "{series} missing");
                rows += 1;
            }
        }
        assert!(rows > 20, "{rows}");
        for state in NodeState::ALL {
            let s = state.as_str();
            assert!(
                text.contains(&format!("metalbus_nodes{{state=\"{s}\"}} 0")),
                "{s}"
            );
            assert!(
                text.contains(&format!(
                    "metalbus_state_duration_seconds_count{{state=\"{s}\"}} 0"
                )),
                "{s}"
            );
        }
        assert!(text.contains("metalbus_ingest_messages_total{kind=\"metrics\"} 0"));
        assert!(text.contains("metalbus_ingest_messages_total{kind=\"enroll\"} 0"));
        assert!(text.contains("metalbus_commands_total{kind=\"install\",result=\"failed\"} 0"));
    }

    #[test]
    fn renders_counters_with_design_names() {
        let t = Telemetry::new();
        t.count_reject("bad_json");
        t.count_reject("bad_json");
        t.count_message("status");
        t.observe_commit(Duration::from_millis(2));
        t.observe_state_duration(NodeState::Installing, 20.0);
        t.count_command(CommandKind::Install, CommandStatus::Sent);
        let text = t.render();
        assert!(
            text.contains("metalbus_ingest_rejected_total{reason=\"bad_json\"} 2"),
            "{text}"
        );
        assert!(text.contains("metalbus_ingest_messages_total{kind=\"status\"} 1"));
        assert!(text.contains("metalbus_store_commit_seconds_count 1"));
        assert!(
            text.contains(
                "metalbus_state_duration_seconds_bucket{le=\"30.0\",state=\"installing\"} 1"
            ) || text.contains(
                "metalbus_state_duration_seconds_bucket{state=\"installing\",le=\"30.0\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("metalbus_commands_total{kind=\"install\",result=\"sent\"} 1"),
            "{text}"
        );
        assert_eq!(t.rejected("bad_json"), 2);
    }
}
