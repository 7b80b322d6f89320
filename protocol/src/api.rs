//! HTTP API bodies and error codes (DESIGN section 9), shared by the server and the CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{CommandId, CommandKind, CommandStatus, Step};
use crate::controller::Progress;
use crate::lifecycle::{NodeState, Phase};
use crate::machine::Trigger;
use crate::names::names;
use crate::status::OfflineReason;
use crate::{NodeId, Timestamp};

/// The API's error codes, from seed 000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Internal,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::Internal,
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
    ];

    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::Internal => "Primus.00001",
            ErrorCode::BadRequest => "Primus.00002",
            ErrorCode::Unauthorized => "Primus.00003",
            ErrorCode::Forbidden => "Primus.00004",
            ErrorCode::NotFound => "Primus.00005",
            ErrorCode::Conflict => "Primus.00006",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Internal => 500,
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// Every error body: `{"errorCode":"Primus.00005","errorMessage":"node not found"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    #[serde(rename = "errorCode")]
    pub error_code: String,
    #[serde(rename = "errorMessage")]
    pub error_message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error_code: code.code().to_string(),
            error_message: message.into(),
        }
    }
}

/// `{"data": ...}`, the envelope of single-object responses (seed 004).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Data<T> {
    pub data: T,
}

/// A label filter of the node list and of a campaign's selector: `key=value`, or just
/// `key` (the node has the label), both trimmed.
pub fn parse_label_filter(s: &str) -> Result<(String, Option<String>), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => {
            Ok((k.trim().to_string(), Some(v.trim().to_string())))
        }
        None if !s.trim().is_empty() => Ok((s.trim().to_string(), None)),
        _ => Err(format!("label {s:?} must be key=value or key")),
    }
}

/// The `pagination` block of list responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Pagination {
    pub page: u32,
    pub per_page: u32,
    pub total: u64,
    pub pages: u64,
}

impl Pagination {
    /// The block for `total` items, and the index range of the page inside them.
    pub fn of(page: u32, per_page: u32, total: u64) -> (Self, std::ops::Range<usize>) {
        let per = u64::from(per_page.max(1));
        let pages = total.div_ceil(per);
        let start = (u64::from(page.max(1)) - 1).saturating_mul(per).min(total);
        let end = start.saturating_add(per).min(total);
        let range = usize::try_from(start).unwrap_or(usize::MAX)
            ..usize::try_from(end).unwrap_or(usize::MAX);
        (
            Self {
                page,
                per_page,
                total,
                pages,
            },
            range,
        )
    }
}

/// `{"data":[...],"pagination":{...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    pub data: Vec<T>,
    pub pagination: Pagination,
}

/// Hardware summary of a node, from its inventory (seed 004 names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Specs {
    pub cpu_cores: Option<u32>,
    pub cpu_threads: Option<u32>,
    pub memory_gb: Option<f64>,
    pub storage_gb: Option<f64>,
    pub architecture: Option<String>,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub cpu_model: Option<String>,
    pub serial_number: Option<String>,
    pub system_uuid: Option<String>,
}

/// Latest load of a node, from its newest metrics sample (seed 004 names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageView {
    pub cpu_percentage: Option<f64>,
    pub memory_percentage: Option<f64>,
    pub storage_percentage: Option<f64>,
    pub network_in_mbps: Option<f64>,
    pub network_out_mbps: Option<f64>,
    pub uptime_hours: Option<f64>,
    /// When the sample was taken on the node.
    pub sampled_at: Option<Timestamp>,
}

/// `status.clusterStatus.phase`, kept for seed 000's front end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStatusBlock {
    #[serde(rename = "clusterStatus")]
    pub cluster_status: ClusterStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    pub phase: Phase,
}

/// One node as the API shows it (`GET /api/v1/nodes/{node}` and list entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    pub id: NodeId,
    pub name: String,
    pub state: NodeState,
    pub phase: Phase,
    pub status: NodeStatusBlock,
    pub online: bool,
    /// Why the node went offline, when it is offline.
    pub offline_reason: Option<OfflineReason>,
    pub last_seen_at: Option<Timestamp>,
    pub state_changed_at: Timestamp,
    pub version: u64,
    pub install_attempts: u32,
    pub last_install_error: Option<String>,
    pub recovery_attempts: u32,
    pub plan: Option<String>,
    /// The job the node runs (or was last sent).
    pub job: Option<crate::machine::JobRef>,
    pub progress: Option<Progress>,
    /// When a job last reported (the `installing` timeout runs from it).
    pub last_progress_at: Option<Timestamp>,
    pub labels: BTreeMap<String, String>,
    pub group: Option<String>,
    pub control_plane: bool,
    pub hostname: Option<String>,
    pub agent_version: Option<String>,
    /// The protocol version its agent said in its last birth.
    #[serde(default)]
    pub agent_protocol: Option<u32>,
    pub mac_addresses: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub specs: Specs,
    pub usage: UsageView,
    /// The agent outbox session whose reports are applied, and the newest one applied.
    pub report_session: Option<String>,
    pub last_applied_seq: u64,
    /// For a pre-registered node: what its agent is matched by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<MatchHints>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What a pre-registered node's agent is matched by (DESIGN section 8): MAC, then IP,
/// then hostname prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MatchHints {
    /// Lower-case, colon-separated.
    pub mac: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = "ip"))]
    pub ip: Option<std::net::IpAddr>,
    /// Matches the agent's hostname, or one that continues it after `-` or `.`
    /// (`my-node` matches `my-node-k8s-worker`, not `my-nodes`).
    pub hostname: Option<String>,
}

/// `POST /nodes`: pre-register a node by any of MAC, IP and hostname.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub name: String,
    pub mac: Option<String>,
    pub ip: Option<String>,
    pub hostname: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub group: Option<String>,
    /// Also make a one-use enrollment token for exactly this host: the agent that
    /// enrolls with it claims this registration, whatever its MAC, IP or hostname.
    #[serde(default)]
    pub enroll_token: bool,
}

/// `POST /nodes`: the registration, and its one-use enrollment token when asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Registered {
    pub data: NodeView,
    /// Shown once (`MB1:...`); valid until the registration's discovery timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll_token: Option<String>,
}

impl RegisterRequest {
    /// The hints, checked: a MAC of six hex pairs (`:` or `-`), an IPv4 or IPv6 address,
    /// a hostname of letters, digits, `-` and `.`; at least one of them.
    pub fn hints(&self) -> Result<MatchHints, String> {
        let mac = match self.mac.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(m) => Some(normalize_mac(m).ok_or_else(|| {
                format!("mac {m:?} must be six hex pairs like aa:bb:cc:dd:ee:ff")
            })?),
        };
        let ip = match self.ip.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(i) => Some(
                i.parse()
                    .map_err(|_| format!("ip {i:?} is not an IPv4 or IPv6 address"))?,
            ),
        };
        let hostname = match self.hostname.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(h) => {
                let ok = h.len() <= 253
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                    && !h.starts_with(['-', '.']);
                if !ok {
                    return Err(format!(
                        "hostname {h:?} must be letters, digits, '-' and '.', not starting with '-' or '.'"
                    ));
                }
                Some(h.to_ascii_lowercase())
            }
        };
        if mac.is_none() && ip.is_none() && hostname.is_none() {
            return Err("give at least one of mac, ip and hostname to match the agent by".into());
        }
        Ok(MatchHints { mac, ip, hostname })
    }
}

/// `AA-BB-CC-DD-EE-FF` or `aa:bb:cc:dd:ee:ff` → `aa:bb:cc:dd:ee:ff`.
fn normalize_mac(m: &str) -> Option<String> {
    let parts: Vec<&str> = m.split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| parts.join(":").to_ascii_lowercase())
}

/// `{"data": ..., "message": "..."}`: the answer to a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Changed<T> {
    pub data: T,
    pub message: String,
}

/// `POST /nodes/{node}/manage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ManageRequest {
    pub plan: Option<String>,
}

/// `PATCH /nodes/{node}/state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    pub state: NodeState,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub force: bool,
}

/// `PATCH /nodes/{node}`: only the fields present change. `group: ""` clears the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeUpdateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<bool>,
}

/// `POST /nodes/{node}/retry` (seed 000's shape, plus the states).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RetryResponse {
    pub message: String,
    pub node_id: NodeId,
    pub previous_phase: Phase,
    pub current_phase: Phase,
    pub previous_state: NodeState,
    pub current_state: NodeState,
}

/// One audit entry (DESIGN section 7.4); also the payload of `{p}/events/transitions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// `{node_id}:{n}`, n counting from 1 per node.
    pub id: String,
    pub node_id: NodeId,
    pub from_state: NodeState,
    pub to_state: NodeState,
    pub triggered_by: Trigger,
    pub user: Option<String>,
    pub comment: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub created_at: Timestamp,
}

/// `GET /nodes/{node}/history`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct History {
    pub data: Vec<AuditEntry>,
    pub total: u64,
}

names! {
    /// What an API token may do; each role may do what the ones before it may.
    #[derive(PartialOrd, Ord)]
    pub enum Role as "role" {
        /// Reads everything.
        Viewer = "viewer",
        /// Also changes nodes and runs operations.
        Operator = "operator",
        /// Also creates tokens and forces transitions.
        Admin = "admin",
    }
}

/// One configured install plan (`GET /plans`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanView {
    pub name: String,
    pub default: bool,
    pub reboot_after: bool,
    pub steps: Vec<Step>,
}

names! {
    /// What a token is for.
    pub enum TokenKind as "token kind" {
        /// An API token: HTTP `Authorization: Bearer`, and the MQTT password of a
        /// monitoring tool.
        Api = "api",
        /// An enrollment token (`MB1:...`), with which an agent gets its node key.
        Enroll = "enroll",
    }
}

/// `POST /tokens`: an API token (`role`), or an enrollment token (`kind: "enroll"`,
/// optionally limited by `ttl_s`, `uses` and `node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Unique among all tokens. An enrollment token's name is its id: lower-case
    /// letters, digits, `.`, `_`, `-`, at most 64.
    pub name: String,
    /// Required for an API token; not allowed for an enrollment token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// `api` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TokenKind>,
    /// Enrollment tokens: valid for this many seconds; forever when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// Enrollment tokens: how many nodes it may enroll; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
    /// Enrollment tokens: the one node id it may enroll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The new token, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    pub name: String,
    pub kind: TokenKind,
    #[serde(default)]
    pub role: Option<Role>,
    pub token: String,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    pub max_uses: Option<u32>,
    #[serde(default)]
    pub node: Option<NodeId>,
}

/// `GET /whoami`: the calling token's name and role, so a client (the web console) shows
/// only what the role may do. The API still checks the role on every call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Whoami {
    pub name: String,
    pub role: Role,
}

/// One token as `GET /tokens` lists it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenView {
    pub name: String,
    pub kind: TokenKind,
    #[serde(default)]
    pub role: Option<Role>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// Enrollments made with it.
    #[serde(default)]
    pub uses: Option<u32>,
    #[serde(default)]
    pub max_uses: Option<u32>,
    #[serde(default)]
    pub node: Option<NodeId>,
}

/// `POST /nodes/{node}/revoke`: the node's credential is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeRevoked {
    pub node_id: NodeId,
    pub message: String,
}

/// `GET /operations/{id}`: a command and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Operation {
    pub id: CommandId,
    pub node_id: NodeId,
    pub kind: CommandKind,
    pub status: CommandStatus,
    pub reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Timestamp,
}

/// `POST /nodes/{node}/reboot`, `/poweroff`, `/wake` (202): the operation started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OperationStarted {
    /// The node's id.
    pub id: NodeId,
    /// For `GET /operations/{id}`.
    pub operation_id: CommandId,
    /// The operation's status when the call returned (`sent` for reboot and poweroff;
    /// `succeeded` or `failed` for a wake, which is over by then).
    pub status: CommandStatus,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    pub status: String,
    pub version: String,
}

names! {
    /// The window of `GET /nodes/{node}/metrics?period=`.
    #[derive(Default)]
    pub enum MetricsPeriod as "period" {
        FiveMinutes = "5m",
        #[default]
        OneHour = "1h",
        SixHours = "6h",
        OneDay = "24h",
        SevenDays = "7d",
    }
}

impl MetricsPeriod {
    pub fn seconds(self) -> u64 {
        match self {
            MetricsPeriod::FiveMinutes => 300,
            MetricsPeriod::OneHour => 3600,
            MetricsPeriod::SixHours => 6 * 3600,
            MetricsPeriod::OneDay => 24 * 3600,
            MetricsPeriod::SevenDays => 7 * 24 * 3600,
        }
    }

    /// Whether the window is read from one-minute rollups rather than samples.
    pub fn uses_rollups(self) -> bool {
        self.seconds() > 3600
    }
}

/// One point of a series: a sample, or the mean of the samples in a step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SeriesPoint {
    pub timestamp: Timestamp,
    pub value: f64,
}

/// A percentage over the window (seed 004 names). `current_percentage` is the newest
/// sample's, whatever the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PercentMetrics {
    pub current_percentage: Option<f64>,
    pub average_percentage: Option<f64>,
    pub peak_percentage: Option<f64>,
    pub series: Vec<SeriesPoint>,
}

/// `cpu`: percentages, and the newest sample's busy share in logical CPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CpuMetrics {
    #[serde(flatten)]
    pub usage: PercentMetrics,
    pub cores_used: Option<f64>,
    /// Logical CPUs (threads) from the inventory: what `cpu_percent` is a share of.
    pub cores_total: Option<u32>,
}

/// `memory` (GiB) and `storage` (GB): percentages, and the newest sample's amounts.
/// For storage, `total_gb` is the usable space (used + available), the percentage's base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpaceMetrics {
    #[serde(flatten)]
    pub usage: PercentMetrics,
    pub used_gb: Option<f64>,
    pub total_gb: Option<f64>,
}

/// One point of the network series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkPoint {
    pub timestamp: Timestamp,
    pub in_mbps: f64,
    pub out_mbps: f64,
}

/// `network`: Mbit/s received (`in`) and sent (`out`) over the physical NICs.
/// `in_mbps` and `out_mbps` are the newest sample's (seed 004 names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkMetrics {
    pub in_mbps: Option<f64>,
    pub out_mbps: Option<f64>,
    pub average_in_mbps: Option<f64>,
    pub average_out_mbps: Option<f64>,
    pub peak_in_mbps: Option<f64>,
    pub peak_out_mbps: Option<f64>,
    pub series: Vec<NetworkPoint>,
}

/// `GET /nodes/{node}/metrics?period=&metric=`: `{"data": …}`. With `metric`, only that
/// resource is present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeMetrics {
    pub node_id: NodeId,
    pub period: MetricsPeriod,
    /// The window: `to` is the controller's clock when asked.
    pub from: Timestamp,
    pub to: Timestamp,
    /// Seconds each series point stands for; `null` when each point is one sample.
    pub step_s: Option<u64>,
    /// When the newest sample (the `current` values) was taken on the node.
    pub sampled_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<SpaceMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<SpaceMetrics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMetrics>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_filters_are_trimmed_and_a_bare_equals_or_blank_is_refused() {
        assert_eq!(
            parse_label_filter(" rack = r1 "),
            Ok(("rack".into(), Some("r1".into())))
        );
        assert_eq!(parse_label_filter("gpu"), Ok(("gpu".into(), None)));
        // Only the first '=' splits: the value keeps the rest.
        assert_eq!(
            parse_label_filter("note=a=b"),
            Ok(("note".into(), Some("a=b".into())))
        );
        assert_eq!(
            parse_label_filter("empty="),
            Ok(("empty".into(), Some(String::new())))
        );
        // Multibyte and markup are text.
        assert_eq!(
            parse_label_filter("Ωé=<b>€</b>"),
            Ok(("Ωé".into(), Some("<b>€</b>".into())))
        );
        for bad in ["=x", " ", "", " = "] {
            let err = parse_label_filter(bad).unwrap_err();
            assert!(err.contains("must be key=value or key"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn codes_and_statuses_follow_design_9() {
        let table = [
            (ErrorCode::Internal, "Primus.00001", 500),
            (ErrorCode::BadRequest, "Primus.00002", 400),
            (ErrorCode::Unauthorized, "Primus.00003", 401),
            (ErrorCode::Forbidden, "Primus.00004", 403),
            (ErrorCode::NotFound, "Primus.00005", 404),
            (ErrorCode::Conflict, "Primus.00006", 409),
        ];
        assert_eq!(table.len(), ErrorCode::ALL.len());
        for (code, text, status) in table {
            assert_eq!(code.code(), text);
            assert_eq!(code.http_status(), status);
            assert_eq!(ErrorCode::from_code(text), Some(code));
        }
    }

    #[test]
    fn error_body_uses_seed_field_names() {
        let b = ErrorBody::new(ErrorCode::NotFound, "node not found");
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            serde_json::json!({"errorCode":"Primus.00005","errorMessage":"node not found"})
        );
    }

    #[test]
    fn pagination_covers_every_item_once() {
        for total in [0u64, 1, 19, 20, 21, 150] {
            for per in [1u32, 7, 20, 100] {
                let (first, _) = Pagination::of(1, per, total);
                let mut seen = 0;
                for page in 1..=first.pages.max(1) as u32 {
                    let (p, r) = Pagination::of(page, per, total);
                    assert_eq!(p.pages, total.div_ceil(u64::from(per)));
                    assert_eq!(r.start, seen);
                    seen = r.end;
                }
                assert_eq!(seen as u64, total, "total {total} per {per}");
            }
        }
        let (_, past_end) = Pagination::of(9, 20, 21);
        assert!(past_end.is_empty());
    }
}
