//! One metrics sample (DESIGN section 6): CPU busy share, load, memory, swap, filesystems,
//! network and disk I/O rates, uptime and temperatures.
//!
//! CPU share and rates are deltas between two readings of monotonic counters, so the
//! collector keeps the previous reading. Elapsed time comes from the timestamps the caller
//! passes, never from a clock read here: the daemon passes the wall clock, tests pass
//! whatever instants they like and get exact rates.

mod counters;
mod filesystems;
mod sensors;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use metalbus_protocol::metrics::{DiskIoRates, MetricsSample, NetworkRates, Usage};
use metalbus_protocol::Timestamp;

use self::counters::{Counters, CpuTimes};
use self::filesystems::Filesystems;
use super::inventory::{disks, nics, parse_meminfo};
use super::sysfs;

/// Samples the metrics of the host whose files are under `root`.
#[derive(Debug)]
pub struct MetricsCollector {
    root: PathBuf,
    /// sysinfo's mount list; only when the root is `/`, since it reads the real host.
    filesystems: Option<Filesystems>,
    previous: Reading,
}

/// The counters that rates are computed from, and when they were read.
#[derive(Debug)]
struct Reading {
    at: Timestamp,
    cpu: Option<CpuTimes>,
    /// Per interface (received, sent) bytes, all interfaces.
    net: Counters,
    /// Per block device (read, written) bytes, all devices.
    disk: Counters,
}

impl Reading {
    fn take(root: &Path, at: Timestamp) -> Self {
        let text = |rel: &str| sysfs::read_text(root, rel);
        Reading {
            at,
            cpu: text("proc/stat").and_then(|t| counters::parse_cpu_times(&t)),
            net: text("proc/net/dev")
                .map(|t| counters::parse_net_dev(&t))
                .unwrap_or_default(),
            disk: text("proc/diskstats")
                .map(|t| counters::parse_diskstats(&t))
                .unwrap_or_default(),
        }
    }
}

impl MetricsCollector {
    /// Takes a first reading of the counters, stamped with the wall clock, so the first
    /// [`sample`](Self::sample) already has rates.
    pub fn new(root: &Path) -> Self {
        Self::new_at(root, Timestamp::from(SystemTime::now()))
    }

    /// Like [`new`](Self::new), with the first reading stamped `now`.
    pub fn new_at(root: &Path, now: Timestamp) -> Self {
        let filesystems = if sysfs::is_host_root(root) {
            Filesystems::new()
        } else {
            None
        };
        MetricsCollector {
            root: root.to_path_buf(),
            filesystems,
            previous: Reading::take(root, now),
        }
    }

    /// Reads everything and computes CPU share and rates since the previous reading.
    /// Those are `None` when the previous reading lacks the counter or when no time passed
    /// between `now` and the previous reading (or the clock went back).
    pub fn sample(&mut self, now: Timestamp) -> MetricsSample {
        let root = self.root.as_path();
        let current = Reading::take(root, now);
        let elapsed_ms = now
            .unix_millis()
            .saturating_sub(self.previous.at.unix_millis());
        let elapsed_s = (elapsed_ms > 0).then(|| elapsed_ms as f64 / 1000.0);

        let cpu_percent = match (elapsed_s, self.previous.cpu, current.cpu) {
            (Some(_), Some(before), Some(after)) => counters::cpu_percent(before, after),
            _ => None,
        };
        let network = elapsed_s
            .and_then(|s| {
                counters::rates(
                    &self.previous.net,
                    &current.net,
                    &nics::physical_names(root),
                    s,
                )
            })
            .map(|(rx, tx)| NetworkRates {
                rx_bytes_per_s: rx,
                tx_bytes_per_s: tx,
            });
        let disk_io = elapsed_s
            .and_then(|s| {
                counters::rates(&self.previous.disk, &current.disk, &disks::names(root), s)
            })
            .map(|(r, w)| DiskIoRates {
                read_bytes_per_s: r,
                write_bytes_per_s: w,
            });
        self.previous = current;

        let meminfo = sysfs::read_text(root, "proc/meminfo")
            .map(|t| parse_meminfo(&t))
            .unwrap_or_default();
        let usage = |total: &str, free: &str| {
            let total = *meminfo.get(total)?;
            let free = *meminfo.get(free)?;
            Some(Usage {
                used_bytes: total.saturating_sub(free),
                total_bytes: total,
            })
        };
        MetricsSample {
            ts: now,
            cpu_percent,
            load: sysfs::read_text(root, "proc/loadavg").and_then(|t| counters::parse_loadavg(&t)),
            memory: usage("MemTotal", "MemAvailable"),
            swap: usage("SwapTotal", "SwapFree"),
            filesystems: self.filesystems.as_mut().map(Filesystems::read),
            network,
            disk_io,
            uptime_s: sysfs::read_text(root, "proc/uptime")
                .and_then(|t| counters::parse_uptime(&t)),
            temperatures_c: sensors::temperatures(root),
            outbox: None,
            node_id: None,
        }
    }
}
