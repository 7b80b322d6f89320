//! The collectors run on fixture trees (`tests/fixtures/`, see its README) and on this
//! host, through the public library API. The fixture tests live in `collectors_fixture/`,
//! one file per collector; this file holds the shared helpers and the live-host checks.

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use metalbus_agent::collectors::inventory;
use metalbus_agent::collectors::metrics::MetricsCollector;
use metalbus_protocol::Timestamp;

#[path = "collectors_fixture/identity.rs"]
mod identity;
#[path = "collectors_fixture/inventory.rs"]
mod inventory_fixtures;
#[path = "collectors_fixture/metrics.rs"]
mod metrics;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Copies a fixture into a temp dir, symlinks as symlinks, so a test may change it.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        for entry in fs::read_dir(from).expect("read fixture dir") {
            let entry = entry.expect("fixture dir entry");
            let (src, dst) = (entry.path(), to.join(entry.file_name()));
            let kind = entry.file_type().expect("fixture file type");
            let copied = if kind.is_symlink() {
                fs::read_link(&src).and_then(|target| std::os::unix::fs::symlink(target, &dst))
            } else if kind.is_dir() {
                fs::create_dir(&dst).map(|()| copy(&src, &dst))
            } else {
                fs::copy(&src, &dst).map(drop)
            };
            copied.expect("copy fixture entry");
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    copy(&fixture(name), dir.path());
    dir
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 literal")
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 literal")
}

/// `/proc/meminfo` MemTotal of this host, in bytes, read independently of the collectors.
fn host_mem_total() -> u64 {
    let text = fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let line = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .expect("MemTotal line");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("MemTotal kB");
    kb * 1024
}

#[test]
fn live_host_inventory_matches_the_kernel() {
    let inv = inventory::collect(Path::new("/"));
    let nproc = std::process::Command::new("nproc").output().unwrap();
    let threads: u32 = String::from_utf8_lossy(&nproc.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(inv.cpu.threads, Some(threads), "threads vs nproc");
    assert_eq!(inv.memory.total_bytes, Some(host_mem_total()));
    assert!(inv.cpu.arch.is_some());
    assert!(inv.os.kernel.is_some());
    inv.validate().unwrap();
}

#[test]
fn live_host_metrics_sample() {
    let mut collector = MetricsCollector::new(Path::new("/"));
    std::thread::sleep(Duration::from_millis(300));
    let s = collector.sample(Timestamp::from(SystemTime::now()));
    s.validate().unwrap();
    let cpu = s.cpu_percent.expect("cpu_percent after 300 ms");
    assert!((0.0..=100.0).contains(&cpu), "{cpu}");
    let mem = s.memory.expect("memory");
    assert_eq!(mem.total_bytes, host_mem_total());
    assert!(mem.used_bytes > 0 && mem.used_bytes <= mem.total_bytes);
    assert!(s.filesystems.is_some(), "sysinfo filesystems on /");
    assert!(s.load.is_some() && s.uptime_s.is_some());
}
