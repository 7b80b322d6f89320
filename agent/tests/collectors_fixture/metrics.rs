//! Metrics on a fixture copy whose counters the test rewrites: exact CPU share and rates
//! from known deltas, and no negative rate when counters go backwards.

use std::fs;
use std::path::Path;

use metalbus_agent::collectors::metrics::MetricsCollector;
use metalbus_protocol::metrics::{DiskIoRates, LoadAverage, NetworkRates, Temperature, Usage};
use metalbus_protocol::Timestamp;

use super::{copy_fixture, fixture};

/// `secs` seconds after `t`.
fn later(t: Timestamp, secs: i64) -> Timestamp {
    Timestamp::from_unix_millis(t.unix_millis() + secs * 1000)
}

/// Replaces the lines of `rel` for which `edit` returns a new line.
fn rewrite(root: &Path, rel: &str, edit: impl Fn(&str) -> Option<String>) {
    let path = root.join(rel);
    let text = fs::read_to_string(&path).expect("read fixture file");
    let out: String = text
        .lines()
        .map(|l| edit(l).unwrap_or_else(|| l.to_owned()) + "\n")
        .collect();
    assert_ne!(out, text, "{rel} unchanged");
    fs::write(path, out).expect("write fixture file");
}

/// A `/proc/net/dev` line in the kernel's format.
fn net_dev_line(name: &str, rx: u64, tx: u64) -> String {
    format!("{name:>6}: {rx:>7} {:>7} {z:>4} {z:>4} {z:>4} {z:>5} {z:>10} {z:>9} {tx:>8} {:>7} {z:>4} {z:>4} {z:>4} {z:>5} {z:>7} {z:>10}", 1, 1, z = 0)
}

/// A `/proc/diskstats` line in the kernel's format, with sectors read and written.
fn diskstats_line(major: u32, minor: u32, name: &str, read: u64, written: u64) -> String {
    format!("{major:>4} {minor:>7} {name} 10 0 {read} 5 10 0 {written} 5 0 10 10 0 0 0 0 0 0")
}

#[test]
fn metrics_rates_follow_the_counter_deltas() {
    let dir = copy_fixture("dell-r650");
    let root = dir.path();
    let t0 = Timestamp::from_unix_millis(1_714_392_011_000);
    let mut collector = MetricsCollector::new_at(root, t0);

    // Ten seconds later: 600 busy ticks (user, system, softirq) and 1400 idle ones
    // (idle, iowait) across the machine: 30 %.
    rewrite(root, "proc/stat", |l| {
        l.starts_with("cpu  ")
            .then(|| "cpu  139801 27 41727 123255643 11405 0 2972 0 0 0".to_owned())
    });
    // eno12399np0: +125 MB in, +25 MB out. Virtual and down NICs change too, or not, and
    // must not count.
    rewrite(root, "proc/net/dev", |l| {
        let name = l.split(':').next()?.trim();
        let (rx, tx) = match name {
            "eno12399np0" => (918_398_645_512, 403_016_038_221),
            "docker0" | "veth1a2b3c4" | "lo" => (99_999_999_999, 99_999_999_999),
            _ => return None,
        };
        Some(net_dev_line(name, rx, tx))
    });
    // nvme0n1: +20480 sectors read, +40960 written; sda: +2048 read. Partitions, loop0 and
    // zram0 move too and must not count (partitions would count the bytes twice).
    rewrite(root, "proc/diskstats", |l| {
        Some(match l.split_whitespace().nth(2)? {
            "nvme0n1" => diskstats_line(259, 0, "nvme0n1", 301_240_844, 802_259_796),
            "nvme0n1p2" => diskstats_line(259, 2, "nvme0n1p2", 301_215_964, 802_259_794),
            "sda" => diskstats_line(8, 0, "sda", 8_848_700, 1_204_488),
            "sda1" => diskstats_line(8, 1, "sda1", 8_843_060, 1_204_488),
            "loop0" => diskstats_line(7, 0, "loop0", 999_999, 999_999),
            "zram0" => diskstats_line(252, 0, "zram0", 999_999, 999_999),
            _ => return None,
        })
    });

    let t1 = later(t0, 10);
    let s = collector.sample(t1);
    s.validate().unwrap();
    assert_eq!(s.ts, t1);
    assert_eq!(s.cpu_percent, Some(30.0));
    assert_eq!(
        s.network,
        Some(NetworkRates {
            rx_bytes_per_s: 12_500_000.0,
            tx_bytes_per_s: 2_500_000.0
        })
    );
    assert_eq!(
        s.disk_io,
        Some(DiskIoRates {
            read_bytes_per_s: (20_480.0 + 2_048.0) * 512.0 / 10.0,
            write_bytes_per_s: 40_960.0 * 512.0 / 10.0,
        })
    );
    assert_eq!(
        s.load,
        Some(LoadAverage {
            one: 0.42,
            five: 0.35,
            fifteen: 0.30
        })
    );
    assert_eq!(
        s.memory,
        Some(Usage {
            used_bytes: (263_596_988 - 256_075_496) * 1024,
            total_bytes: 263_596_988 * 1024,
        })
    );
    assert_eq!(
        s.swap,
        Some(Usage {
            used_bytes: 0,
            total_bytes: 8_388_604 * 1024
        })
    );
    assert_eq!(s.uptime_s, Some(1_926_311));
    assert_eq!(s.filesystems, None, "sysinfo is used only on the host root");
    let t = |label: &str, celsius: f64| Temperature {
        label: label.into(),
        celsius,
    };
    assert_eq!(
        s.temperatures_c,
        Some(vec![
            t("Package id 0", 45.0),
            t("Core 0", 41.0),
            t("Composite", 38.85),
            t("pch_lewisburg temp1", 52.0),
        ])
    );
    assert_eq!(s.node_id, None);

    // The same instant again: no time passed, so no share and no rates.
    let same = collector.sample(t1);
    assert_eq!(
        (same.cpu_percent, same.network, same.disk_io),
        (None, None, None)
    );
    assert!(same.memory.is_some());

    // Counters going backwards (a reset): never a negative rate.
    rewrite(root, "proc/stat", |l| {
        l.starts_with("cpu  ")
            .then(|| "cpu  100 0 100 1000 0 0 0 0 0 0".to_owned())
    });
    rewrite(root, "proc/net/dev", |l| {
        (l.split(':').next()?.trim() == "eno12399np0").then(|| net_dev_line("eno12399np0", 5, 5))
    });
    let reset = collector.sample(later(t1, 10));
    reset.validate().unwrap();
    assert_eq!(reset.cpu_percent, None);
    assert_eq!(
        reset.network,
        Some(NetworkRates {
            rx_bytes_per_s: 0.0,
            tx_bytes_per_s: 0.0
        })
    );
    assert_eq!(
        reset.disk_io,
        Some(DiskIoRates {
            read_bytes_per_s: 0.0,
            write_bytes_per_s: 0.0
        })
    );
}

#[test]
fn metrics_first_reading_from_the_vm_fixture() {
    let root = fixture("virtio-vm");
    let t0 = Timestamp::from_unix_millis(1_795_460_543_000);
    let mut collector = MetricsCollector::new_at(&root, t0);
    let s = collector.sample(later(t0, 15));
    s.validate().unwrap();
    // Unchanged files: the NICs moved no bytes (a measured 0), but with no CPU tick at
    // all there is no busy share to tell.
    assert_eq!(s.cpu_percent, None, "no tick passed");
    assert_eq!(
        s.network,
        Some(NetworkRates {
            rx_bytes_per_s: 0.0,
            tx_bytes_per_s: 0.0
        })
    );
    assert_eq!(
        s.memory,
        Some(Usage {
            used_bytes: (24_684_084 - 24_311_108) * 1024,
            total_bytes: 24_684_084 * 1024
        })
    );
    assert_eq!(
        s.swap,
        Some(Usage {
            used_bytes: 0,
            total_bytes: 0
        })
    );
    assert_eq!(
        s.load,
        Some(LoadAverage {
            one: 0.91,
            five: 0.28,
            fifteen: 0.09
        })
    );
    assert_eq!(s.uptime_s, Some(942));
    assert_eq!(s.temperatures_c, None);
    assert_eq!(s.filesystems, None);
}
