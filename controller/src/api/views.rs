//! Builds the API's node view from what the store holds: the record, the newest
//! inventory (specs) and the newest heartbeat (usage).

use metalbus_protocol::api::{ClusterStatus, NodeStatusBlock, NodeView, Specs, UsageView};
use metalbus_protocol::inventory::Inventory;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::units::{mbps, round2, GB, GIB};

use crate::store::{Heartbeat, NodeRecord, StoredInventory};

/// Memory in GiB (how RAM is sold), storage in GB (how disks are sold).
pub fn specs(inv: &Inventory) -> Specs {
    Specs {
        cpu_cores: inv.cpu.cores,
        cpu_threads: inv.cpu.threads,
        memory_gb: inv.memory.total_bytes.map(|b| round2(b as f64 / GIB)),
        storage_gb: inv.storage_bytes().map(|b| round2(b as f64 / GB)),
        architecture: inv.cpu.arch.clone(),
        vendor: inv.system.vendor.clone(),
        model: inv.system.product.clone(),
        cpu_model: inv.cpu.model.clone(),
        serial_number: inv.system.serial.clone(),
        system_uuid: inv.system.uuid.clone(),
    }
}

pub fn usage(sample: &MetricsSample) -> UsageView {
    UsageView {
        cpu_percentage: sample.cpu_percent.map(round2),
        memory_percentage: sample.memory.and_then(|m| m.percent()).map(round2),
        storage_percentage: sample.storage_percent().map(round2),
        network_in_mbps: sample.network.map(|n| round2(mbps(n.rx_bytes_per_s))),
        network_out_mbps: sample.network.map(|n| round2(mbps(n.tx_bytes_per_s))),
        uptime_hours: sample.uptime_s.map(|s| round2(s as f64 / 3600.0)),
        sampled_at: Some(sample.ts),
    }
}

pub fn node_view(
    node: NodeRecord,
    inventory: Option<&StoredInventory>,
    heartbeat: Option<&Heartbeat>,
) -> NodeView {
    let inv = inventory.map(|s| &s.inventory);
    NodeView {
        phase: node.state.phase(),
        status: NodeStatusBlock {
            cluster_status: ClusterStatus {
                phase: node.state.phase(),
            },
        },
        offline_reason: (!node.online).then_some(node.offline_reason).flatten(),
        last_seen_at: heartbeat.map(|h| h.last_seen_at),
        mac_addresses: inv.map(Inventory::mac_addresses).unwrap_or_default(),
        ip_addresses: inv.map(Inventory::ip_addresses).unwrap_or_default(),
        specs: inv.map(specs).unwrap_or_default(),
        usage: heartbeat
            .and_then(|h| h.sample.as_ref())
            .map(usage)
            .unwrap_or_default(),
        id: node.id,
        name: node.name,
        state: node.state,
        online: node.online,
        state_changed_at: node.state_changed_at,
        version: node.version,
        install_attempts: node.install_attempts,
        last_install_error: node.last_install_error,
        recovery_attempts: node.recovery_attempts,
        plan: node.plan,
        job: node.job,
        progress: node.progress,
        last_progress_at: node.last_progress_at,
        labels: node.labels,
        group: node.group,
        control_plane: node.control_plane,
        hostname: node.hostname,
        report_session: node.report_session,
        last_applied_seq: node.last_applied_seq,
        registration: node.registration,
        agent_version: node.agent_version,
        agent_protocol: node.agent_protocol,
        created_at: node.created_at,
        updated_at: node.updated_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalbus_protocol::metrics::{NetworkRates, Usage};
    use metalbus_protocol::Timestamp;

    #[test]
    fn specs_convert_units_and_keep_unknowns_null() {
        let mut inv = Inventory::default();
        inv.memory.total_bytes = Some(8 * 1024 * 1024 * 1024);
        inv.cpu.cores = Some(4);
        let s = specs(&inv);
        assert_eq!(s.memory_gb, Some(8.0));
        assert_eq!(s.cpu_cores, Some(4));
        assert_eq!(s.storage_gb, None);
        assert_eq!(s.vendor, None);
    }

    #[test]
    fn usage_is_computed_from_the_sample() {
        let sample = MetricsSample {
            ts: Timestamp::from_unix_millis(0),
            cpu_percent: Some(12.345),
            load: None,
            memory: Some(Usage {
                used_bytes: 1,
                total_bytes: 4,
            }),
            swap: None,
            filesystems: None,
            network: Some(NetworkRates {
                rx_bytes_per_s: 1_250_000.0,
                tx_bytes_per_s: 0.0,
            }),
            disk_io: None,
            uptime_s: Some(7200),
            temperatures_c: None,
            outbox: None,
            node_id: None,
        };
        let u = usage(&sample);
        assert_eq!(u.cpu_percentage, Some(12.35));
        assert_eq!(u.memory_percentage, Some(25.0));
        assert_eq!(u.network_in_mbps, Some(10.0));
        assert_eq!(u.uptime_hours, Some(2.0));
        assert_eq!(u.storage_percentage, None);
    }
}
