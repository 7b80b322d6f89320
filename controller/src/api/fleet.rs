//! A node's status and inventory, and the fleet's usage (`GET /nodes/{node}/status`,
//! `/nodes/{node}/inventory`, `GET /usage`).

use axum::extract::{Path, State};
use axum::Json;
use metalbus_protocol::api::Data;
use metalbus_protocol::api::ErrorBody;
use metalbus_protocol::fleet::{
    format_uptime, CpuLoad, FleetLoad, FleetUsage, InventoryView, NetworkLoad, NodeHealth,
    NodeStatusView, NodeUsage, SpaceLoad, SystemView, UsageSummary,
};
use metalbus_protocol::lifecycle::NodeState;
use metalbus_protocol::units::{mbps, round2, GB};

use super::error::ApiError;
use super::extract::Checked;
use super::openapi::{NodePath, ReadErrors};
use super::views::{specs, usage};
use super::AppState;
use crate::store::{Heartbeat, NodeRecord, StoredInventory};

/// `GET /api/v1/nodes/{node}/status`: health, last heartbeat, uptime, kernel and OS.
#[utoipa::path(
    get,
    operation_id = "getNodeStatus",
    path = "/api/v1/nodes/{node}/status",
    tag = "observability",
    summary = "Health, last heartbeat, uptime, kernel and OS of a node",
    params(NodePath),
    responses(
        (status = 200, body = Data<NodeStatusView>),
        ReadErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn status(
    State(state): State<AppState>,
    Checked(Path(key)): Checked<Path<String>>,
) -> Result<Json<Data<NodeStatusView>>, ApiError> {
    let node = state.store.find_node(&key)?.ok_or(ApiError::NodeNotFound)?;
    let inv = state.store.inventory(&node.id)?;
    let hb = state.store.heartbeat(&node.id)?;
    Ok(Json(Data {
        data: status_view(node, inv.as_ref(), hb.as_ref()),
    }))
}

pub fn status_view(
    node: NodeRecord,
    inv: Option<&StoredInventory>,
    hb: Option<&Heartbeat>,
) -> NodeStatusView {
    let inv = inv.map(|s| &s.inventory);
    let uptime_s = hb.and_then(|h| h.sample.as_ref()).and_then(|s| s.uptime_s);
    NodeStatusView {
        health: NodeHealth::of(node.state, node.online),
        phase: node.state.phase(),
        offline_reason: (!node.online)
            .then(|| node.offline_reason.map(|r| r.as_str().to_string()))
            .flatten(),
        last_heartbeat: hb.map(|h| h.last_seen_at),
        uptime: uptime_s.map(format_uptime),
        uptime_s,
        system: SystemView {
            kernel_version: inv.and_then(|i| i.os.kernel.clone()),
            os_image: inv.and_then(|i| i.os.name.clone()),
            os_id: inv.and_then(|i| i.os.id.clone()),
            os_version: inv.and_then(|i| i.os.version.clone()),
            boot_mode: inv.and_then(|i| i.os.boot_mode),
            architecture: inv.and_then(|i| i.cpu.arch.clone()),
            hostname: node.hostname.clone(),
            agent_version: node.agent_version.clone(),
        },
        id: node.id,
        name: node.name,
        state: node.state,
        online: node.online,
        state_changed_at: node.state_changed_at,
    }
}

/// `GET /api/v1/nodes/{node}/inventory`: the newest inventory the agent sent.
#[utoipa::path(
    get,
    operation_id = "getNodeInventory",
    path = "/api/v1/nodes/{node}/inventory",
    tag = "nodes",
    summary = "The newest hardware inventory of a node",
    params(NodePath),
    responses(
        (status = 200, body = Data<InventoryView>),
        ReadErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn inventory(
    State(state): State<AppState>,
    Checked(Path(key)): Checked<Path<String>>,
) -> Result<Json<Data<InventoryView>>, ApiError> {
    let node = state.store.find_node(&key)?.ok_or(ApiError::NodeNotFound)?;
    let inv = state.store.inventory(&node.id)?.ok_or_else(|| {
        ApiError::NotFound(format!("node {} has not sent an inventory yet", node.name))
    })?;
    Ok(Json(Data {
        data: InventoryView {
            node_id: node.id,
            received_at: inv.received_at,
            inventory: inv.inventory,
        },
    }))
}

/// `GET /api/v1/usage`: fleet totals, load and counts by state.
#[utoipa::path(
    get,
    operation_id = "getUsage",
    path = "/api/v1/usage",
    tag = "observability",
    summary = "Fleet capacity, load and counts by state",
    responses(
        (status = 200, body = Data<FleetUsage>),
        (status = 401, description = "No or bad token (`Primus.00003`)", body = ErrorBody),
        (status = 500, description = "Internal error (`Primus.00001`)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn fleet(State(state): State<AppState>) -> Result<Json<Data<FleetUsage>>, ApiError> {
    let store = &state.store;
    let mut rows = Vec::new();
    for n in store.nodes()? {
        let inv = store.inventory(&n.id)?;
        let hb = store.heartbeat(&n.id)?;
        rows.push((n, inv, hb));
    }
    Ok(Json(Data {
        data: fleet_usage(rows),
    }))
}

/// Adds up the fleet: capacity from inventories, load from the newest samples of the
/// online nodes. Retired nodes are left out.
pub fn fleet_usage(
    mut rows: Vec<(NodeRecord, Option<StoredInventory>, Option<Heartbeat>)>,
) -> FleetUsage {
    rows.retain(|(n, _, _)| n.state != NodeState::Retired);
    rows.sort_by(|a, b| a.0.name.cmp(&b.0.name).then_with(|| a.0.id.cmp(&b.0.id)));
    let mut summary = UsageSummary::default();
    let mut cpu_cores = 0.0;
    let mut cpu = CpuLoad::default();
    let (mut cpu_sum, mut cpu_n) = (0.0, 0u32);
    let mut mem = SpaceLoad::default();
    let (mut mem_sum, mut mem_n) = (0.0, 0u32);
    let mut disk = SpaceLoad::default();
    let (mut disk_sum, mut disk_n) = (0.0, 0u32);
    let mut net = NetworkLoad::default();
    let mut by_node = Vec::with_capacity(rows.len());
    for (n, inv, hb) in &rows {
        summary.total_nodes += 1;
        if n.online {
            summary.online_nodes += 1;
        } else {
            summary.offline_nodes += 1;
        }
        *summary.by_state.entry(n.state).or_default() += 1;
        *summary.by_phase.entry(n.state.phase()).or_default() += 1;
        let spec = inv.as_ref().map(|i| specs(&i.inventory));
        let cores = spec.as_ref().and_then(|s| s.cpu_cores);
        summary.total_cpu_cores += u64::from(cores.unwrap_or(0));
        summary.total_memory_gb += spec.as_ref().and_then(|s| s.memory_gb).unwrap_or(0.0);
        summary.total_storage_gb += spec.as_ref().and_then(|s| s.storage_gb).unwrap_or(0.0);
        let sample = hb
            .as_ref()
            .and_then(|h| h.sample.as_ref())
            .filter(|_| n.online);
        let u = sample.map(usage).unwrap_or_default();
        if let Some(s) = sample {
            summary.reporting_nodes += 1;
            if let Some(pct) = s.cpu_percent {
                cpu_sum += pct;
                cpu_n += 1;
                if let Some(c) = cores {
                    cpu.used_cores += pct / 100.0 * f64::from(c);
                    cpu_cores += f64::from(c);
                }
            }
            if let Some(m) = s.memory.filter(|m| m.total_bytes > 0) {
                mem.used_gb += m.used_bytes as f64 / GB;
                mem.total_gb += m.total_bytes as f64 / GB;
                mem_sum += m.used_bytes as f64 * 100.0 / m.total_bytes as f64;
                mem_n += 1;
            }
            if let (Some(fss), Some(pct)) = (&s.filesystems, s.storage_percent()) {
                // Counted the way `df` (and `storage_percent`) counts: used of usable.
                for f in fss {
                    let usable = f
                        .available_bytes
                        .map_or(f.total_bytes as f64, |a| f.used_bytes as f64 + a as f64);
                    disk.used_gb += f.used_bytes as f64 / GB;
                    disk.total_gb += usable / GB;
                }
                disk_sum += pct;
                disk_n += 1;
            }
            if let Some(r) = s.network {
                net.in_mbps += mbps(r.rx_bytes_per_s);
                net.out_mbps += mbps(r.tx_bytes_per_s);
            }
        }
        by_node.push(NodeUsage {
            node_id: n.id.clone(),
            name: n.name.clone(),
            state: n.state,
            online: n.online,
            cpu_percentage: u.cpu_percentage,
            memory_percentage: u.memory_percentage,
            storage_percentage: u.storage_percentage,
            network_in_mbps: u.network_in_mbps,
            network_out_mbps: u.network_out_mbps,
        });
    }
    let mean = |sum: f64, n: u32| (n > 0).then(|| round2(sum / f64::from(n)));
    let share = |part: f64, whole: f64| (whole > 0.0).then(|| round2(part * 100.0 / whole));
    cpu.percentage = share(cpu.used_cores, cpu_cores);
    cpu.average_percentage = mean(cpu_sum, cpu_n);
    cpu.used_cores = round2(cpu.used_cores);
    mem.percentage = share(mem.used_gb, mem.total_gb);
    mem.average_percentage = mean(mem_sum, mem_n);
    disk.percentage = share(disk.used_gb, disk.total_gb);
    disk.average_percentage = mean(disk_sum, disk_n);
    for s in [&mut mem, &mut disk] {
        s.used_gb = round2(s.used_gb);
        s.total_gb = round2(s.total_gb);
    }
    net.in_mbps = round2(net.in_mbps);
    net.out_mbps = round2(net.out_mbps);
    summary.total_memory_gb = round2(summary.total_memory_gb);
    summary.total_storage_gb = round2(summary.total_storage_gb);
    FleetUsage {
        summary,
        usage: FleetLoad {
            cpu,
            memory: mem,
            storage: disk,
            network: net,
        },
        by_node,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalbus_protocol::inventory::Inventory;
    use metalbus_protocol::metrics::{Filesystem, MetricsSample, NetworkRates, Usage};
    use metalbus_protocol::{NodeId, Timestamp};

    fn row(
        name: &str,
        state: NodeState,
        online: bool,
        cores: u32,
        cpu: f64,
        mem: (u64, u64),
    ) -> (NodeRecord, Option<StoredInventory>, Option<Heartbeat>) {
        let t = Timestamp::from_unix_millis(1_000);
        let mut n = NodeRecord::discovered(NodeId::new(name).unwrap(), name.into(), t);
        n.state = state;
        n.online = online;
        let mut inv = Inventory::default();
        inv.cpu.cores = Some(cores);
        inv.memory.total_bytes = Some(mem.1);
        let sample = MetricsSample {
            ts: t,
            cpu_percent: Some(cpu),
            load: None,
            memory: Some(Usage {
                used_bytes: mem.0,
                total_bytes: mem.1,
            }),
            swap: None,
            filesystems: Some(vec![Filesystem {
                mount: "/".into(),
                fs_type: None,
                used_bytes: 30_000_000_000,
                total_bytes: 110_000_000_000,
                available_bytes: Some(70_000_000_000),
            }]),
            network: Some(NetworkRates {
                rx_bytes_per_s: 1_250_000.0,
                tx_bytes_per_s: 250_000.0,
            }),
            disk_io: None,
            uptime_s: Some(3600),
            temperatures_c: None,
            outbox: None,
            node_id: None,
        };
        let inv = StoredInventory {
            received_at: t,
            inventory: inv,
        };
        let hb = Heartbeat {
            last_seen_at: t,
            sample: Some(sample),
        };
        (n, Some(inv), Some(hb))
    }

    #[test]
    fn the_fleet_adds_up_online_samples_and_leaves_retired_nodes_out() {
        let u = fleet_usage(vec![
            row(
                "b",
                NodeState::Active,
                true,
                2,
                20.0,
                (6_000_000_000, 16_000_000_000),
            ),
            row(
                "a",
                NodeState::Discovered,
                true,
                4,
                50.0,
                (2_000_000_000, 8_000_000_000),
            ),
            row(
                "c",
                NodeState::Active,
                false,
                8,
                90.0,
                (8_000_000_000, 8_000_000_000),
            ),
            row("d", NodeState::Retired, true, 64, 99.0, (1, 2)),
        ]);
        let s = &u.summary;
        assert_eq!((s.total_nodes, s.online_nodes, s.offline_nodes), (3, 2, 1));
        assert_eq!(s.reporting_nodes, 2);
        assert_eq!(s.total_cpu_cores, 14, "capacity counts offline nodes too");
        assert_eq!(s.by_state[&NodeState::Active], 2);
        assert_eq!(s.by_state.get(&NodeState::Retired), None);
        // 50 % of 4 cores + 20 % of 2 cores = 2.4 of 6 cores; the plain mean is 35 %.
        assert_eq!(u.usage.cpu.used_cores, 2.4);
        assert_eq!(u.usage.cpu.percentage, Some(40.0));
        assert_eq!(u.usage.cpu.average_percentage, Some(35.0));
        // 8 of 24 GB; the mean of 25 % and 37.5 %.
        assert_eq!(u.usage.memory.used_gb, 8.0);
        assert_eq!(u.usage.memory.percentage, Some(33.33));
        assert_eq!(u.usage.memory.average_percentage, Some(31.25));
        // df-style: 30 used of 100 usable per node.
        assert_eq!(u.usage.storage.used_gb, 60.0);
        assert_eq!(u.usage.storage.total_gb, 200.0);
        assert_eq!(u.usage.storage.percentage, Some(30.0));
        assert_eq!(u.usage.network.in_mbps, 20.0);
        assert_eq!(u.usage.network.out_mbps, 4.0);
        let names: Vec<&str> = u.by_node.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(u.by_node[2].cpu_percentage, None, "offline: no load");
        assert_eq!(u.by_node[0].cpu_percentage, Some(50.0));
    }

    #[test]
    fn an_empty_fleet_has_no_percentages() {
        let u = fleet_usage(Vec::new());
        assert_eq!(u.summary.total_nodes, 0);
        assert_eq!(u.usage.cpu.percentage, None);
        assert_eq!(u.usage.memory.average_percentage, None);
    }

    #[test]
    fn status_reads_kernel_os_and_uptime() {
        let (n, mut inv, hb) = row("a", NodeState::Active, true, 4, 1.0, (1, 2));
        if let Some(i) = inv.as_mut() {
            i.inventory.os.kernel = Some("6.1.0-13-amd64".into());
            i.inventory.os.name = Some("Debian GNU/Linux 12 (bookworm)".into());
        }
        let v = status_view(n, inv.as_ref(), hb.as_ref());
        assert_eq!(v.health, NodeHealth::Healthy);
        assert_eq!(v.uptime.as_deref(), Some("1h 0m"));
        assert_eq!(v.system.kernel_version.as_deref(), Some("6.1.0-13-amd64"));
        assert_eq!(
            v.system.os_image.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(v.last_heartbeat, Some(Timestamp::from_unix_millis(1_000)));
    }
}
