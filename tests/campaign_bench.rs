//! Campaign benchmark (issue 16): a 2,000-node `manage` campaign with `max_concurrent`
//! 200 over simulated agents. It prints the time from creation to `completed` and the
//! controller's CPU time over that span, with the simulators on the same machine.
//! Ignored in the normal run; run it with
//! `cargo build --release -p metalbus -p metalbus-agent && cargo test --release --test campaign_bench -- --ignored --nocapture`
//! (the harness runs the binaries of the profile the test was built with).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use metalbus_e2e::{eventually, Api, Controller, SimProc};
use serde_json::json;

const NODES: usize = 2_000;
const CONCURRENT: u64 = 200;
const WAIT: Duration = Duration::from_secs(600);

/// The controller's user and system CPU time so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

async fn discovered(api: &Api) -> Result<(), String> {
    let nodes = api.nodes().await?;
    let n = nodes.iter().filter(|n| n["state"] == "discovered").count();
    if n == NODES {
        Ok(())
    } else {
        Err(format!("{n} of {NODES} discovered"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand (see the file's header)"]
async fn bench_a_2000_node_campaign_with_200_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let ctl = Controller::start(tmp.path(), &[]).await;
    let api = ctl.api();
    let half = NODES / 2;
    let _a = SimProc::start(
        tmp.path(),
        &ctl.broker_url(),
        half,
        "ba",
        &[
            "--metrics-interval",
            "15s",
            "--progress-events",
            "5",
            "--progress-every",
            "200ms",
        ],
    );
    let _b = SimProc::start(
        tmp.path(),
        &ctl.broker_url(),
        NODES - half,
        "bb",
        &[
            "--metrics-interval",
            "15s",
            "--progress-events",
            "5",
            "--progress-every",
            "200ms",
        ],
    );
    eventually(WAIT, "every node discovered", || discovered(&api)).await;

    let cpu_before = cpu_seconds(ctl.pid());
    let started = Instant::now();
    let (status, body) = api
        .post(
            "/api/v1/campaigns",
            Some(json!({
                "action": "manage",
                "selector": {"state": ["discovered"]},
                "max_concurrent": CONCURRENT,
            })),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["data"]["id"].as_str().unwrap().to_string();
    let view = eventually(WAIT, "the campaign completed", || {
        let api = api.clone();
        let id = id.clone();
        async move {
            let (_, c) = api
                .get(&format!("/api/v1/campaigns/{id}?per_page=1"))
                .await?;
            let c = c["data"].clone();
            if c["state"] == "completed" {
                Ok(c)
            } else {
                Err(format!("{}: {}", c["state"], c["counts"]))
            }
        }
    })
    .await;
    let took = started.elapsed();
    let cpu = cpu_seconds(ctl.pid()) - cpu_before;
    let counts = &view["counts"];
    assert_eq!(counts["succeeded"], NODES as u64, "{view}");

    println!();
    println!("| {NODES} nodes, max_concurrent {CONCURRENT} | value |");
    println!("|---|---|");
    println!("| time to completed | {:.1} s |", took.as_secs_f64());
    println!(
        "| nodes per second | {:.0} |",
        NODES as f64 / took.as_secs_f64()
    );
    println!(
        "| controller CPU over that time | {cpu:.1} s ({:.0} % of one core) |",
        100.0 * cpu / took.as_secs_f64()
    );
    println!(
        "| controller RSS at the end | {} MiB |",
        ctl.rss_kib().unwrap_or(0) / 1024
    );
}
