//! API bodies about a node's health and the fleet's load (DESIGN section 9, seed 004
//! names): `GET /nodes/{node}/status`, `GET /nodes/{node}/inventory` and `GET /usage`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::inventory::{BootMode, Inventory};
use crate::lifecycle::{NodeState, Phase};
use crate::{NodeId, Timestamp};

/// How a node is doing, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NodeHealth {
    /// Online, reporting, and not in a failure state.
    Healthy,
    /// Online but in a failure state (`error`, `install_failed`, `deprovision_failed`).
    Unhealthy,
    /// Its agent is gone (Will, shutdown, or silent for 3 metrics intervals).
    Offline,
    /// Pre-registered: no agent has been seen yet.
    Unknown,
}

impl NodeHealth {
    /// The health a node with this state and connectivity has.
    pub fn of(state: NodeState, online: bool) -> Self {
        if state == NodeState::Registered {
            NodeHealth::Unknown
        } else if !online {
            NodeHealth::Offline
        } else if matches!(state.phase(), Phase::ManagedFailed | Phase::UnmanagedFailed)
            || state == NodeState::Error
        {
            NodeHealth::Unhealthy
        } else {
            NodeHealth::Healthy
        }
    }
}

/// What runs on the node, from its inventory and birth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SystemView {
    pub kernel_version: Option<String>,
    /// os-release's pretty name, e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub os_image: Option<String>,
    pub os_id: Option<String>,
    pub os_version: Option<String>,
    pub boot_mode: Option<BootMode>,
    pub architecture: Option<String>,
    pub hostname: Option<String>,
    pub agent_version: Option<String>,
}

/// `GET /nodes/{node}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStatusView {
    pub id: NodeId,
    pub name: String,
    pub state: NodeState,
    pub phase: Phase,
    pub health: NodeHealth,
    pub online: bool,
    /// `lost`, `shutdown` or `stale`, when offline.
    pub offline_reason: Option<String>,
    /// When anything was last heard from the node.
    pub last_heartbeat: Option<Timestamp>,
    /// Time since boot, e.g. `7d 12h 45m`, from the newest metrics sample.
    pub uptime: Option<String>,
    pub uptime_s: Option<u64>,
    pub state_changed_at: Timestamp,
    pub system: SystemView,
}

/// `GET /nodes/{node}/inventory`: the newest inventory and when it came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InventoryView {
    pub node_id: NodeId,
    pub received_at: Timestamp,
    pub inventory: Inventory,
}

/// `GET /usage`: fleet totals, load and counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetUsage {
    pub summary: UsageSummary,
    pub usage: FleetLoad,
    pub by_node: Vec<NodeUsage>,
}

/// Counts and installed capacity of every node but retired ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageSummary {
    pub total_nodes: u64,
    pub online_nodes: u64,
    pub offline_nodes: u64,
    /// Online nodes whose newest metrics sample is counted in `usage`.
    pub reporting_nodes: u64,
    pub total_cpu_cores: u64,
    pub total_memory_gb: f64,
    pub total_storage_gb: f64,
    pub by_state: BTreeMap<NodeState, u64>,
    pub by_phase: BTreeMap<Phase, u64>,
}

/// The load of the reporting nodes, from their newest samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetLoad {
    pub cpu: CpuLoad,
    pub memory: SpaceLoad,
    pub storage: SpaceLoad,
    pub network: NetworkLoad,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CpuLoad {
    /// Busy cores: each node's CPU percentage times its cores.
    pub used_cores: f64,
    /// `used_cores` over the cores of the nodes counted.
    pub percentage: Option<f64>,
    /// The plain mean of the nodes' CPU percentages.
    pub average_percentage: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SpaceLoad {
    pub used_gb: f64,
    pub total_gb: f64,
    /// Used over total of the nodes counted.
    pub percentage: Option<f64>,
    /// The plain mean of the nodes' percentages.
    pub average_percentage: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkLoad {
    pub in_mbps: f64,
    pub out_mbps: f64,
}

/// One node's newest load; null when it is offline or has not reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeUsage {
    pub node_id: NodeId,
    pub name: String,
    pub state: NodeState,
    pub online: bool,
    pub cpu_percentage: Option<f64>,
    pub memory_percentage: Option<f64>,
    pub storage_percentage: Option<f64>,
    pub network_in_mbps: Option<f64>,
    pub network_out_mbps: Option<f64>,
}

/// `7d 12h 45m`, `3h 5m`, `42s`: the seed's uptime format, largest units first.
pub fn format_uptime(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_like_the_seed() {
        assert_eq!(
            format_uptime(7 * 86_400 + 12 * 3600 + 45 * 60 + 9),
            "7d 12h 45m"
        );
        assert_eq!(format_uptime(3 * 3600 + 5 * 60), "3h 5m");
        assert_eq!(format_uptime(61), "1m");
        assert_eq!(format_uptime(42), "42s");
        assert_eq!(format_uptime(86_400), "1d 0h 0m");
    }

    #[test]
    fn health_follows_state_and_connectivity() {
        assert_eq!(NodeHealth::of(NodeState::Active, true), NodeHealth::Healthy);
        assert_eq!(
            NodeHealth::of(NodeState::Active, false),
            NodeHealth::Offline
        );
        assert_eq!(
            NodeHealth::of(NodeState::InstallFailed, true),
            NodeHealth::Unhealthy
        );
        assert_eq!(
            NodeHealth::of(NodeState::Error, true),
            NodeHealth::Unhealthy
        );
        assert_eq!(
            NodeHealth::of(NodeState::Registered, false),
            NodeHealth::Unknown
        );
    }
}
