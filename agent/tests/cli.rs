//! The `metalbus-agent` binary's one-shot commands on this machine: `inventory` and
//! `metrics` print valid JSON with the machine's real figures.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn agent(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_metalbus-agent"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "metalbus-agent {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

#[test]
fn inventory_matches_nproc_and_meminfo() {
    let inv = agent(&["inventory"]);
    let nproc = Command::new("nproc").output().unwrap();
    let nproc: u64 = String::from_utf8_lossy(&nproc.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        inv["cpu"]["threads"].as_u64(),
        Some(nproc),
        "cpu threads vs nproc"
    );

    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let total = inv["memory"]["total_bytes"].as_f64().unwrap();
    let ratio = total / (kb * 1024.0);
    assert!(
        (0.99..=1.01).contains(&ratio),
        "memory total {total} vs MemTotal {kb} kB"
    );

    // Every section is present; unknown values are null, not 0.
    for key in ["system", "cpu", "memory", "disks", "nics", "os", "hostname"] {
        assert!(inv.get(key).is_some(), "missing {key}");
    }
    assert!(inv["os"]["kernel"].as_str().is_some_and(|k| !k.is_empty()));
}

#[test]
fn metrics_prints_one_real_sample() {
    let m = agent(&["metrics"]);
    let cpu = m["cpu_percent"]
        .as_f64()
        .expect("cpu_percent after a 0.5 s interval");
    assert!((0.0..=100.0).contains(&cpu), "{cpu}");
    assert!(m["memory"]["total_bytes"].as_u64().is_some_and(|t| t > 0));
    assert!(m["uptime_s"].as_u64().is_some_and(|u| u > 0));
    assert!(m["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[test]
fn inventory_reads_a_fixture_root() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dell-r650");
    let inv = agent(&["inventory", "--root", root]);
    assert_eq!(inv["system"]["vendor"], "Dell Inc.");
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_metalbus-agent"))
        .args(["run", "--broker", "http://nope", "--config", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid broker URL"), "{err}");
}
