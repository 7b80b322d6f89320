//! Node lifecycle vocabulary: states and the phase each maps to (DESIGN section 7.1).

use crate::names::names;

names! {
    /// Where a node is in its lifecycle.
    #[derive(PartialOrd, Ord)]
    pub enum NodeState as "state" {
        Registered = "registered",
        Discovered = "discovered",
        Pending = "pending",
        Installing = "installing",
        InstallFailed = "install_failed",
        Installed = "installed",
        Active = "active",
        Reprovision = "reprovision",
        Migrating = "migrating",
        Deprovisioning = "deprovisioning",
        DeprovisionFailed = "deprovision_failed",
        Error = "error",
        Retired = "retired",
    }
}

names! {
    /// The coarse phase of the retry API's vocabulary (seed 000).
    #[derive(PartialOrd, Ord)]
    pub enum Phase as "phase" by variant name {
        Unmanaged,
        Managing,
        Managed,
        ManagedFailed,
        Unmanaging,
        UnmanagedFailed,
        Error,
    }
}

impl NodeState {
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
