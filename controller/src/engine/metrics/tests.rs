//! Metrics history in the engine: samples reach the store only with the flush, minutes
//! become rollups once the clock leaves them, and a restart sums the open minute again
//! from stored samples.

use std::sync::Arc;
use std::time::Duration;

use metalbus_link::FakeClock;
use metalbus_protocol::metrics::MetricsSample;
use metalbus_protocol::status::{Birth, Status};
use metalbus_protocol::topic::Topics;
use metalbus_protocol::{NodeId, Timestamp};
use redb::Durability;

use super::super::{Engine, EngineConfig, Input, Outlets};
use crate::publish::PublishQueue;
use crate::store::{Resource, Store, StoreReader, MINUTE_MS};
use crate::telemetry::Telemetry;

/// A minute boundary, so tests know which minute each sample falls in.
const T0: i64 = 1_700_000_040_000;

struct Rig {
    engine: Engine,
    clock: Arc<FakeClock>,
    store: StoreReader,
    telemetry: Arc<Telemetry>,
}

fn engine_on(store: Store, clock: &Arc<FakeClock>, telemetry: &Arc<Telemetry>) -> Engine {
    let (publish, _out) = PublishQueue::new();
    let (wake, _wakes) = tokio::sync::mpsc::unbounded_channel();
    Engine::new(
        store,
        Outlets {
            publish,
            wake,
            live: crate::live::LiveFeed::default(),
        },
        telemetry.clone(),
        clock.clone(),
        EngineConfig {
            topics: Topics::default(),
            metrics_flush: Duration::from_secs(10),
            controller: Arc::new(crate::config::ControllerConfig::default()),
            identity: crate::security::ephemeral_identity(),
            keyring: Default::default(),
        },
    )
    .unwrap()
}

fn rig() -> Rig {
    assert_eq!(T0 % 60_000, 0);
    let telemetry = Arc::new(Telemetry::new());
    let writer = Store::in_memory(telemetry.clone()).unwrap();
    let store = writer.reader();
    let clock = Arc::new(FakeClock::at(T0));
    let mut engine = engine_on(writer, &clock, &telemetry);
    engine.apply(vec![Input::Status {
        id: id(),
        status: Status::Birth(Birth {
            conn: 1,
            session: "s".into(),
            agent_version: "0.1.0".into(),
            hostname: "h".into(),
            boot_id: None,
            metrics_interval_s: 15,
            ts: Timestamp::from_unix_millis(T0),
            node_id: None,
            protocol: metalbus_protocol::PROTOCOL_VERSION,
        }),
    }]);
    Rig {
        engine,
        clock,
        store,
        telemetry,
    }
}

fn id() -> NodeId {
    NodeId::new("m1").unwrap()
}

fn sample(cpu: f64) -> Input {
    let sample: MetricsSample = serde_json::from_value(serde_json::json!({
        "ts": "2026-01-01T00:00:00Z", "cpu_percent": cpu, "load": null,
        "memory": {"used_bytes": 1, "total_bytes": 2}, "swap": null, "filesystems": null,
        "network": null, "disk_io": null, "uptime_s": 1, "temperatures_c": null
    }))
    .unwrap();
    Input::Metrics { id: id(), sample }
}

fn commits(t: &Telemetry) -> u64 {
    let text = t.render();
    text.lines()
        .find_map(|l| l.strip_prefix("metalbus_store_commit_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn cpu_points(store: &StoreReader) -> Vec<(u64, f64)> {
    store
        .metric_points(&id(), 0)
        .unwrap()
        .into_iter()
        .map(|(ms, p)| (ms, p.get(Resource::Cpu).unwrap()))
        .collect()
}

fn minutes(store: &StoreReader) -> Vec<(u64, u32, f64, f64)> {
    store
        .metric_rollups(&id(), 0)
        .unwrap()
        .into_iter()
        .map(|(m, r)| {
            let cpu = r.get(Resource::Cpu);
            (m, cpu.count, cpu.average().unwrap(), cpu.peak().unwrap())
        })
        .collect()
}

#[test]
fn samples_reach_the_store_only_with_the_flush_in_one_transaction() {
    let mut r = rig();
    let before = commits(&r.telemetry);
    for cpu in [10.0, 20.0, 30.0] {
        r.engine.apply(vec![sample(cpu)]);
        r.clock.advance_ms(1000);
    }
    assert_eq!(commits(&r.telemetry), before, "no transaction per sample");
    assert!(cpu_points(&r.store).is_empty());

    r.engine.flush_heartbeats(Durability::None);
    assert_eq!(
        commits(&r.telemetry),
        before + 1,
        "one transaction per flush"
    );
    let t0 = T0 as u64;
    assert_eq!(
        cpu_points(&r.store),
        vec![(t0, 10.0), (t0 + 1000, 20.0), (t0 + 2000, 30.0)]
    );
    assert!(minutes(&r.store).is_empty(), "the minute is still open");
    // Nothing new: a cheap flush writes nothing at all.
    r.engine.flush_heartbeats(Durability::None);
    assert_eq!(commits(&r.telemetry), before + 1);

    // The clock leaves the minute: the next flush writes its rollup.
    r.clock.advance_ms(60_000);
    r.engine.apply(vec![sample(90.0)]);
    r.engine.flush_heartbeats(Durability::None);
    let m0 = t0 / MINUTE_MS;
    assert_eq!(minutes(&r.store), vec![(m0, 3, 20.0, 30.0)]);
    r.clock.advance_ms(60_000);
    r.engine.flush_heartbeats(Durability::None);
    assert_eq!(
        minutes(&r.store),
        vec![(m0, 3, 20.0, 30.0), (m0 + 1, 1, 90.0, 90.0)],
        "a quiet node's minute is closed by the clock, not by its next sample"
    );
}

#[test]
fn samples_too_close_together_are_not_kept_and_a_clock_step_back_keeps_order() {
    let mut r = rig();
    r.engine.apply(vec![sample(10.0)]);
    r.clock.advance_ms(100);
    r.engine.apply(vec![sample(99.0)]); // 100 ms later: only a heartbeat
    r.clock.advance_ms(900);
    r.engine.apply(vec![sample(20.0)]);
    r.clock.advance_ms(-30_000);
    r.engine.apply(vec![sample(30.0)]); // the clock stepped back
    r.engine.flush_heartbeats(Durability::None);
    let t0 = T0 as u64;
    assert_eq!(
        cpu_points(&r.store),
        vec![(t0, 10.0), (t0 + 1000, 20.0), (t0 + 1500, 30.0)]
    );
}

#[test]
fn a_restart_sums_the_open_minute_again_from_stored_samples() {
    let mut r = rig();
    for cpu in [10.0, 20.0] {
        r.engine.apply(vec![sample(cpu)]);
        r.clock.advance_ms(1000);
    }
    r.engine.flush_heartbeats(Durability::Immediate);
    // A crash: the open minute was only in memory.
    let store = r.engine.into_store();
    let mut engine = engine_on(store, &r.clock, &r.telemetry);
    // Still the same minute: the restored minute stays open and takes new samples.
    engine.apply(vec![sample(60.0)]);
    r.clock.advance_ms(60_000);
    engine.flush_heartbeats(Durability::None);
    assert_eq!(
        minutes(&r.store),
        vec![(T0 as u64 / MINUTE_MS, 3, 30.0, 60.0)]
    );

    // A restart a minute later writes the finished minute at its first flush.
    engine.apply(vec![sample(50.0)]);
    engine.flush_heartbeats(Durability::None);
    let store = engine.into_store();
    r.clock.advance_ms(60_000);
    let mut engine = engine_on(store, &r.clock, &r.telemetry);
    engine.flush_heartbeats(Durability::None);
    assert_eq!(minutes(&r.store).len(), 2);
    assert_eq!(minutes(&r.store)[1].1, 1);
}

#[test]
fn flushes_drop_samples_past_an_hour_and_rollups_past_a_week() {
    let mut r = rig();
    r.engine.apply(vec![sample(10.0)]);
    r.engine.flush_heartbeats(Durability::None);
    r.clock.advance_ms(30 * 60_000);
    r.engine.apply(vec![sample(20.0)]);
    r.engine.flush_heartbeats(Durability::None);
    assert_eq!(cpu_points(&r.store).len(), 2);
    assert_eq!(minutes(&r.store).len(), 1);
    r.clock.advance_ms(31 * 60_000);
    r.engine.apply(vec![sample(30.0)]);
    r.engine.flush_heartbeats(Durability::None);
    let points: Vec<f64> = cpu_points(&r.store).iter().map(|p| p.1).collect();
    assert_eq!(
        points,
        vec![20.0, 30.0],
        "the sample older than 1 h is gone"
    );
    assert_eq!(minutes(&r.store).len(), 2, "rollups stay");

    // A week on, a quiet node's history goes with the hourly sweep.
    r.clock.advance_ms(7 * 24 * 3_600_000 + 2 * 60_000);
    r.engine.flush_heartbeats(Durability::None);
    r.engine.prune_history();
    assert!(cpu_points(&r.store).is_empty());
    assert!(minutes(&r.store).is_empty());
}
