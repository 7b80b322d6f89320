//! Node lifecycle vocabulary: states and the phase each maps to (DESIGN section 7.1).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a node is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
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
    Error,
    Retired,
}

/// The coarse phase of the retry API's vocabulary (seed 000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Phase {
    Unmanaged,
    Managing,
    Managed,
    ManagedFailed,
    Unmanaging,
    UnmanagedFailed,
    Error,
}

impl NodeState {
    pub const ALL: [NodeState; 13] = [
        NodeState::Registered,
        NodeState::Discovered,
        NodeState::Pending,
        NodeState::Installing,
        NodeState::InstallFailed,
        NodeState::Installed,
        NodeState::Active,
        NodeState::Reprovision,
        NodeState::Migrating,
        NodeState::Deprovisioning,
        NodeState::DeprovisionFailed,
        NodeState::Error,
        NodeState::Retired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Registered => "registered",
            NodeState::Discovered => "discovered",
            NodeState::Pending => "pending",
            NodeState::Installing => "installing",
            NodeState::InstallFailed => "install_failed",
            NodeState::Installed => "installed",
            NodeState::Active => "active",
            NodeState::Reprovision => "reprovision",
            NodeState::Migrating => "migrating",
            NodeState::Deprovisioning => "deprovisioning",
            NodeState::DeprovisionFailed => "deprovision_failed",
            NodeState::Error => "error",
            NodeState::Retired => "retired",
        }
    }

    pub fn phase(self) -> Phase {
        match self {
            NodeState::Registered | NodeState::Discovered | NodeState::Retired => Phase::Unmanaged,
            NodeState::Pending | NodeState::Installing | NodeState::Reprovision => Phase::Managing,
            NodeState::InstallFailed => Phase::ManagedFailed,
            NodeState::Installed | NodeState::Active | NodeState::Migrating => Phase::Managed,
            NodeState::Deprovisioning => Phase::Unmanaging,
            NodeState::DeprovisionFailed => Phase::UnmanagedFailed,
            NodeState::Error => Phase::Error,
        }
    }
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Unmanaged,
        Phase::Managing,
        Phase::Managed,
        Phase::ManagedFailed,
        Phase::Unmanaging,
        Phase::UnmanagedFailed,
        Phase::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Unmanaged => "Unmanaged",
            Phase::Managing => "Managing",
            Phase::Managed => "Managed",
            Phase::ManagedFailed => "ManagedFailed",
            Phase::Unmanaging => "Unmanaging",
            Phase::UnmanagedFailed => "UnmanagedFailed",
            Phase::Error => "Error",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NodeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = NodeState::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state {s:?}; valid states: {}", all.join(", "))
            })
    }
}

impl std::str::FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown phase {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_design_7_1() {
        use NodeState::*;
        let table = [
            (Registered, "Unmanaged"),
            (Discovered, "Unmanaged"),
            (Pending, "Managing"),
            (Installing, "Managing"),
            (InstallFailed, "ManagedFailed"),
            (Installed, "Managed"),
            (Active, "Managed"),
            (Reprovision, "Managing"),
            (Migrating, "Managed"),
            (Deprovisioning, "Unmanaging"),
            (DeprovisionFailed, "UnmanagedFailed"),
            (Error, "Error"),
            (Retired, "Unmanaged"),
        ];
        assert_eq!(table.len(), NodeState::ALL.len());
        for (state, phase) in table {
            assert_eq!(state.phase().as_str(), phase, "{state}");
        }
    }

    #[test]
    fn names_round_trip_through_text_and_json() {
        for s in NodeState::ALL {
            assert_eq!(s.as_str().parse::<NodeState>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert!("installing ".parse::<NodeState>().is_err());
    }
}
