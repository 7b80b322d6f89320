//! `GET /nodes/{node}/metrics?period=5m|1h|6h|24h|7d&metric=`: current, average, peak
//! and a series per resource (DESIGN section 9, seed 004's shape).
//!
//! `5m` and `1h` read the stored samples; `6h`, `24h` and `7d` read one-minute rollups,
//! plus the samples of the minutes not rolled up yet. A series has at most
//! [`MAX_POINTS`] points: beyond that, points are merged into equal steps (the mean of
//! the samples in each step). Averages and peaks are over every sample of the window,
//! never over the merged points.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use metalbus_protocol::api::{
    CpuMetrics, Data, MetricsPeriod, NetworkMetrics, NetworkPoint, NodeMetrics, PercentMetrics,
    SeriesPoint, SpaceMetrics,
};
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::units::{mbps, round2, GB, GIB};
use metalbus_protocol::{NodeId, Timestamp};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::Checked;
use super::openapi::{NodePath, ReadErrors};
use super::AppState;
use crate::store::{key_ms, Agg, Resource, Rollup, MINUTE_MS};

/// Most points in one series.
pub const MAX_POINTS: u64 = 360;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    /// `5m`, `1h` (default), `6h`, `24h` or `7d`.
    period: Option<String>,
    /// Only one resource: `cpu`, `memory`, `storage` or `network` (seed 004).
    metric: Option<String>,
}

/// Which resources an answer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    All,
    Cpu,
    Memory,
    Storage,
    Network,
}

impl Only {
    fn parse(s: &str) -> Result<Only, ApiError> {
        match s {
            "cpu" => Ok(Only::Cpu),
            "memory" => Ok(Only::Memory),
            "storage" => Ok(Only::Storage),
            "network" => Ok(Only::Network),
            _ => Err(ApiError::BadRequest(format!(
                "metric must be one of cpu, memory, storage, network; got {:?}",
                s.chars().take(32).collect::<String>()
            ))),
        }
    }

    fn has(self, other: Only) -> bool {
        self == Only::All || self == other
    }
}

/// `GET /nodes/{node}/metrics`.
#[utoipa::path(
    get,
    operation_id = "getNodeMetrics",
    path = "/api/v1/nodes/{node}/metrics",
    tag = "observability",
    summary = "Metrics history of a node: current, average, peak and a series per resource",
    params(NodePath, MetricsQuery),
    responses(
        (status = 200, body = Data<NodeMetrics>),
        ReadErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn get(
    State(state): State<AppState>,
    Checked(Path(key)): Checked<Path<String>>,
    Checked(Query(q)): Checked<Query<MetricsQuery>>,
) -> Result<Json<Data<NodeMetrics>>, ApiError> {
    let period: MetricsPeriod = q
        .period
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(ApiError::BadRequest)?
        .unwrap_or_default();
    let only = q.metric.as_deref().map_or(Ok(Only::All), Only::parse)?;
    let node = state.store.find_node(&key)?.ok_or(ApiError::NodeNotFound)?;
    let now = state.clock.now();
    let window = Window::of(period, now);
    let entries = if period.uses_rollups() {
        rollup_entries(&state, &node.id, &window)?
    } else {
        state
            .store
            .metric_points(&node.id, key_ms(window.from.unix_millis()))?
            .into_iter()
            .map(|(ms, p)| (ms, Rollup::of(&p)))
            .collect()
    };
    let heartbeat = state.store.heartbeat(&node.id)?;
    let latest = heartbeat.as_ref().and_then(|h| h.sample.as_ref());
    let threads = state
        .store
        .inventory(&node.id)?
        .and_then(|i| i.inventory.cpu.threads);
    let data = build(node.id, &window, &entries, latest, threads, only);
    Ok(Json(Data { data }))
}

/// The rollups of the window's whole minutes, then the samples after the newest rollup
/// summed per minute (the minute still open in the engine, and any not flushed yet).
fn rollup_entries(
    state: &AppState,
    id: &NodeId,
    window: &Window,
) -> Result<Vec<(u64, Rollup)>, ApiError> {
    let from_ms = key_ms(window.from.unix_millis());
    let first_minute = from_ms.div_ceil(MINUTE_MS);
    let mut entries: Vec<(u64, Rollup)> = state
        .store
        .metric_rollups(id, first_minute)?
        .into_iter()
        .map(|(m, r)| (m * MINUTE_MS, r))
        .collect();
    let tail_from = entries
        .last()
        .map_or(first_minute * MINUTE_MS, |(ms, _)| ms + MINUTE_MS);
    let mut tail: BTreeMap<u64, Rollup> = BTreeMap::new();
    for (ms, p) in state.store.metric_points(id, tail_from)? {
        tail.entry(ms / MINUTE_MS * MINUTE_MS).or_default().add(&p);
    }
    entries.extend(tail);
    Ok(entries)
}

/// The time span an answer covers, and how finely its series may be.
struct Window {
    period: MetricsPeriod,
    from: Timestamp,
    to: Timestamp,
}

impl Window {
    fn of(period: MetricsPeriod, now: Timestamp) -> Window {
        Window {
            period,
            from: now.minus(std::time::Duration::from_secs(period.seconds())),
            to: now,
        }
    }

    /// The step (ms) that keeps a series within [`MAX_POINTS`]: whole seconds for
    /// samples, whole minutes for rollups.
    fn step_ms(&self) -> u64 {
        let unit = if self.period.uses_rollups() {
            MINUTE_MS
        } else {
            1000
        };
        let span = self.period.seconds() * 1000;
        (span / MAX_POINTS + 1).div_ceil(unit) * unit
    }
}

/// Entries (start ms, rollup) merged into steps when there are more than [`MAX_POINTS`];
/// returns the step in seconds when merged, else the entries' own (60 s for rollups).
fn downsample(window: &Window, entries: &[(u64, Rollup)]) -> (Vec<(u64, Rollup)>, Option<u64>) {
    let native = window.period.uses_rollups().then_some(60);
    if entries.len() as u64 <= MAX_POINTS {
        return (entries.to_vec(), native);
    }
    let step = window.step_ms();
    let origin = key_ms(window.from.unix_millis()) / step * step;
    let mut steps: BTreeMap<u64, Rollup> = BTreeMap::new();
    for (ms, r) in entries {
        let start = origin + (ms.saturating_sub(origin)) / step * step;
        steps.entry(start).or_default().merge(r);
    }
    (steps.into_iter().collect(), Some(step / 1000))
}

fn stamp(ms: u64) -> Timestamp {
    Timestamp::from_unix_millis(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn series(points: &[(u64, Rollup)], r: Resource) -> Vec<SeriesPoint> {
    points
        .iter()
        .filter_map(|(ms, roll)| {
            roll.get(r).average().map(|v| SeriesPoint {
                timestamp: stamp(*ms),
                value: round2(v),
            })
        })
        .collect()
}

fn percent(
    total: &Rollup,
    points: &[(u64, Rollup)],
    r: Resource,
    current: Option<f64>,
) -> PercentMetrics {
    let agg: &Agg = total.get(r);
    PercentMetrics {
        current_percentage: current.map(round2),
        average_percentage: agg.average().map(round2),
        peak_percentage: agg.peak().map(round2),
        series: series(points, r),
    }
}

/// The answer, from the window's entries (start ms, rollup), the newest sample and the
/// node's logical CPU count.
fn build(
    node_id: NodeId,
    window: &Window,
    entries: &[(u64, Rollup)],
    latest: Option<&MetricsSample>,
    threads: Option<u32>,
    only: Only,
) -> NodeMetrics {
    let mut total = Rollup::default();
    for (_, r) in entries {
        total.merge(r);
    }
    let (points, step_s) = downsample(window, entries);
    let cpu_now = latest.and_then(|s| s.cpu_percent);
    let memory = latest.and_then(|s| s.memory);
    let fss = latest.and_then(|s| s.filesystems.as_ref());
    let disk_used: Option<u128> = fss.map(|f| f.iter().map(|f| u128::from(f.used_bytes)).sum());
    let disk_usable: Option<u128> = fss.map(|f| {
        f.iter()
            .map(|f| match f.available_bytes {
                Some(a) => u128::from(f.used_bytes) + u128::from(a),
                None => u128::from(f.total_bytes),
            })
            .sum()
    });
    let net = latest.and_then(|s| s.network);
    let both = |ms: &u64, r: &Rollup| {
        Some(NetworkPoint {
            timestamp: stamp(*ms),
            in_mbps: round2(r.get(Resource::NetIn).average()?),
            out_mbps: round2(r.get(Resource::NetOut).average()?),
        })
    };
    NodeMetrics {
        node_id,
        period: window.period,
        from: window.from,
        to: window.to,
        step_s,
        sampled_at: latest.map(|s| s.ts),
        cpu: only.has(Only::Cpu).then(|| CpuMetrics {
            usage: percent(&total, &points, Resource::Cpu, cpu_now),
            cores_used: cpu_now
                .zip(threads)
                .map(|(pct, n)| round2(pct * f64::from(n) / 100.0)),
            cores_total: threads,
        }),
        memory: only.has(Only::Memory).then(|| SpaceMetrics {
            usage: percent(
                &total,
                &points,
                Resource::Memory,
                memory.and_then(|m| m.percent()),
            ),
            used_gb: memory.map(|m| round2(m.used_bytes as f64 / GIB)),
            total_gb: memory.map(|m| round2(m.total_bytes as f64 / GIB)),
        }),
        storage: only.has(Only::Storage).then(|| SpaceMetrics {
            usage: percent(
                &total,
                &points,
                Resource::Storage,
                latest.and_then(MetricsSample::storage_percent),
            ),
            used_gb: disk_used.map(|b| round2(b as f64 / GB)),
            total_gb: disk_usable.map(|b| round2(b as f64 / GB)),
        }),
        network: only.has(Only::Network).then(|| {
            let (inn, out) = (total.get(Resource::NetIn), total.get(Resource::NetOut));
            NetworkMetrics {
                in_mbps: net.map(|n| round2(mbps(n.rx_bytes_per_s))),
                out_mbps: net.map(|n| round2(mbps(n.tx_bytes_per_s))),
                average_in_mbps: inn.average().map(round2),
                average_out_mbps: out.average().map(round2),
                peak_in_mbps: inn.peak().map(round2),
                peak_out_mbps: out.peak().map(round2),
                series: points.iter().filter_map(|(ms, r)| both(ms, r)).collect(),
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Point;

    fn point(cpu: f64) -> Point {
        Point([Some(cpu), None, None, Some(1.0), Some(3.0)])
    }

    #[test]
    fn steps_keep_every_period_within_the_point_limit() {
        let now = Timestamp::from_unix_millis(1_700_000_000_000);
        for period in MetricsPeriod::ALL {
            let w = Window::of(period, now);
            let step = w.step_ms();
            let span = period.seconds() * 1000;
            // Steps start on a multiple of the step, so a window touches at most two more.
            assert!(span / step + 2 <= MAX_POINTS, "{period}: step {step}");
            assert!(step.is_multiple_of(1000));
        }
        assert_eq!(
            Window::of(MetricsPeriod::OneDay, now).step_ms(),
            5 * MINUTE_MS
        );
        assert_eq!(
            Window::of(MetricsPeriod::SevenDays, now).step_ms(),
            29 * MINUTE_MS
        );
    }

    #[test]
    fn a_dense_hour_is_merged_into_steps_but_totals_use_every_sample() {
        let now_ms: u64 = 1_700_000_000_000;
        let w = Window::of(MetricsPeriod::OneHour, stamp(now_ms));
        // One sample a second for an hour: cpu = i mod 100.
        let entries: Vec<(u64, Rollup)> = (0..3600u64)
            .map(|i| {
                (
                    now_ms - 3_600_000 + i * 1000,
                    Rollup::of(&point((i % 100) as f64)),
                )
            })
            .collect();
        let node = NodeId::new("n").unwrap();
        let m = build(node, &w, &entries, None, None, Only::All);
        let cpu = m.cpu.unwrap().usage;
        assert!(
            cpu.series.len() as u64 <= MAX_POINTS,
            "{}",
            cpu.series.len()
        );
        assert!(cpu.series.len() >= 300);
        assert_eq!(m.step_s, Some(11));
        let expected = (0..3600u64).map(|i| (i % 100) as f64).sum::<f64>() / 3600.0;
        assert_eq!(cpu.average_percentage, Some(round2(expected)));
        assert_eq!(cpu.peak_percentage, Some(99.0));
        assert_eq!(cpu.current_percentage, None, "no heartbeat sample");
        let net = m.network.unwrap();
        assert_eq!(
            (net.average_in_mbps, net.peak_out_mbps),
            (Some(1.0), Some(3.0))
        );
        assert_eq!(net.series.len(), cpu.series.len());
        assert!(m.memory.unwrap().usage.series.is_empty());
    }

    #[test]
    fn few_samples_are_shown_as_they_are_and_metric_picks_one_resource() {
        let now_ms: u64 = 1_700_000_000_000;
        let w = Window::of(MetricsPeriod::FiveMinutes, stamp(now_ms));
        let entries: Vec<(u64, Rollup)> = [10.0, 20.0, 60.0]
            .iter()
            .enumerate()
            .map(|(i, v)| (now_ms - 3000 + i as u64 * 1000, Rollup::of(&point(*v))))
            .collect();
        let node = NodeId::new("n").unwrap();
        let m = build(node, &w, &entries, None, Some(8), Only::Cpu);
        assert!(m.memory.is_none() && m.storage.is_none() && m.network.is_none());
        let cpu = m.cpu.unwrap();
        let values: Vec<f64> = cpu.usage.series.iter().map(|p| p.value).collect();
        assert_eq!(values, vec![10.0, 20.0, 60.0]);
        assert_eq!(cpu.usage.series[0].timestamp, stamp(now_ms - 3000));
        assert_eq!(cpu.usage.average_percentage, Some(30.0));
        assert_eq!(m.step_s, None);
        assert_eq!(cpu.cores_total, Some(8));
        assert!(Only::parse("gpu").is_err());
        assert!("2h".parse::<MetricsPeriod>().is_err());
    }
}
