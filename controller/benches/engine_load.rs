//! Do metrics slow transitions? (Issue 6 and DESIGN section 4: metrics writes are
//! batched so that they never slow transitions.)
//!
//! The real engine runs its own loop on a redb file in a temp dir, as `metalbus serve`
//! runs it. A fleet of nodes is born, then the bench measures the latency of `manage`
//! calls (each one a durable transition with its audit entry and a command), from the
//! call entering the engine's queue to its answer. It does this idle, and again while
//! every node sends metrics samples at a steady rate through the same queue, as
//! ingest feeds them. It prints one table, with the ratios to the idle run. The store
//! lives under `target/tmp`, on the build's disk, so commits pay for a real fsync.
//!
//! `cargo bench -p metalbus --bench engine_load` (NODES and CALLS in the environment
//! change the sizes).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::env;

use metalbus::engine::{Action, Call, Input};
use metalbus::telemetry::Telemetry;
use metalbus_protocol::metrics::{Filesystem, MetricsSample, NetworkRates, Usage};
use metalbus_protocol::{NodeId, Timestamp};
use tokio::sync::oneshot;

fn node(i: usize) -> NodeId {
    NodeId::new(format!("bench-{i:05}")).expect("valid id")
}

fn birth(i: usize) -> Input {
    common::birth(node(i), format!("s{i}"), 1)
}

fn sample(n: u64) -> MetricsSample {
    let x = (n % 100) as f64;
    MetricsSample {
        ts: Timestamp::from(std::time::SystemTime::now()),
        cpu_percent: Some(x),
        load: None,
        memory: Some(Usage {
            used_bytes: 1 << 30,
            total_bytes: 8 << 30,
        }),
        swap: None,
        filesystems: Some(vec![Filesystem {
            mount: "/".into(),
            fs_type: None,
            used_bytes: 10 << 30,
            total_bytes: 100 << 30,
            available_bytes: Some(90 << 30),
        }]),
        network: Some(NetworkRates {
            rx_bytes_per_s: x * 1000.0,
            tx_bytes_per_s: x * 500.0,
        }),
        disk_io: None,
        uptime_s: Some(3600),
        temperatures_c: None,
        outbox: None,
        node_id: None,
    }
}

struct Run {
    label: String,
    latencies: Vec<Duration>,
    samples_per_s: f64,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One scenario on a fresh store: `nodes` born, metrics at `rate` samples/s in total
/// (0: none), then `calls` manage calls one after another.
async fn scenario(label: &str, nodes: usize, calls: usize, rate: usize) -> Run {
    // On the disk the build runs on (not a tmpfs /tmp, where an fsync costs nothing).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    // As `metalbus serve` runs it: on a thread of its own.
    let (tx, task) = common::start_engine(
        &dir.path().join("metalbus.redb"),
        Arc::new(Telemetry::new()),
        4096,
    );
    for i in 0..nodes {
        tx.send(birth(i)).await.expect("engine running");
    }

    // Metrics at a steady rate, spread over the fleet, for as long as the calls run.
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = (rate > 0).then(|| {
        let (tx, sent, stop) = (tx.clone(), sent.clone(), stop.clone());
        tokio::spawn(async move {
            let tick = Duration::from_millis(10);
            let per_tick = (rate / 100).max(1);
            let mut interval = tokio::time::interval(tick);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                interval.tick().await;
                for _ in 0..per_tick {
                    let id = node((n as usize) % nodes);
                    if tx
                        .send(Input::Metrics {
                            id,
                            sample: sample(n),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    n += 1;
                }
                sent.store(n, Ordering::Relaxed);
            }
        })
    });
    // Let the births commit and the metrics reach a steady state (a durable flush
    // included) before measuring.
    tokio::time::sleep(Duration::from_secs(if rate > 0 { 11 } else { 1 })).await;

    let started = Instant::now();
    let sent_before = sent.load(Ordering::Relaxed);
    let mut latencies = Vec::with_capacity(calls);
    for i in 0..calls {
        let (reply, answer) = oneshot::channel();
        let call = Call {
            key: node(i % nodes).to_string(),
            action: Action::Manage { plan: None },
            user: Some("bench".into()),
            if_match: None,
            reply,
        };
        let t = Instant::now();
        tx.send(Input::Call(Box::new(call)))
            .await
            .expect("engine running");
        let result = answer.await.expect("an answer");
        latencies.push(t.elapsed());
        assert!(result.is_ok(), "manage refused: {result:?}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let samples_per_s = (sent.load(Ordering::Relaxed) - sent_before) as f64 / elapsed;
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = feeder {
        let _ = f.await;
    }
    drop(tx);
    task.stopped().await;
    latencies.sort();
    Run {
        label: label.to_string(),
        latencies,
        samples_per_s,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let nodes = env("NODES", 1000);
    let calls = env("CALLS", 300).min(nodes);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let runs: Vec<Run> = runtime.block_on(async {
        let mut runs = Vec::new();
        for (label, rate) in [
            ("idle", 0),
            ("metrics 1/s per node", nodes),
            ("metrics 5/s per node", 5 * nodes),
        ] {
            runs.push(scenario(label, nodes, calls, rate).await);
        }
        runs
    });
    let base = &runs[0];
    println!(
        "\nmanage calls (durable transition + audit entry + command) on {nodes} nodes, {calls} calls each\n"
    );
    println!(
        "{:<22} {:>12} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "scenario", "samples/s", "p50 ms", "p99 ms", "max ms", "p50 ratio", "p99 ratio"
    );
    for r in &runs {
        let (p50, p99) = (pct(&r.latencies, 0.5), pct(&r.latencies, 0.99));
        println!(
            "{:<22} {:>12.0} {:>9} {:>9} {:>9} {:>10.2} {:>10.2}",
            r.label,
            r.samples_per_s,
            ms(p50),
            ms(p99),
            ms(*r.latencies.last().expect("calls")),
            p50.as_secs_f64() / pct(&base.latencies, 0.5).as_secs_f64(),
            p99.as_secs_f64() / pct(&base.latencies, 0.99).as_secs_f64(),
        );
    }
}
